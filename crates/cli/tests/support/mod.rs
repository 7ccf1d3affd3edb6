//! Code shared by the integration tests (`mod support;`).

// Each test binary uses a different part of the support code.
#![allow(dead_code)]

pub mod inputs;
pub use sd_test_support::judge;

/// The PNG's `parameters` text chunk.
pub fn parameters_chunk(path: &std::path::Path) -> String {
    let file = std::fs::File::open(path).expect("open the PNG");
    let reader = png::Decoder::new(std::io::BufReader::new(file))
        .read_info()
        .expect("a PNG");
    let info = reader.info();
    info.uncompressed_latin1_text
        .iter()
        .find(|t| t.keyword == "parameters")
        .map(|t| t.text.clone())
        .or_else(|| {
            info.utf8_text
                .iter()
                .find(|t| t.keyword == "parameters")
                .map(|t| t.get_text().expect("iTXt text"))
        })
        .unwrap_or_else(|| panic!("{}: no `parameters` text chunk", path.display()))
}

/// A process's stdout then stderr, as text.
pub fn output_text(output: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}
