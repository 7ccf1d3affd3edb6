//! The fixtures' judge (`shared/fixtures/README.md`, "The judge"): reads (digit, foreground,
//! background) off a 64x64 RGB picture of the digits model, so end-to-end tests check meaning,
//! not bytes.
//!
//! 1. Every pixel gets its nearest palette colour (squared RGB distance, ties to the lower
//!    palette index); the most frequent is the background, the second the foreground (count
//!    ties: lower palette index first).
//! 2. Per pixel t = d_bg / (d_fg + d_bg + 1e-6) (Euclidean RGB distances).
//! 3. The 48x48 centre (pixels 8..56) is averaged in 6x6 blocks to 8x8 and multiplied by 16.
//! 4. 3-nearest-neighbours (Euclidean) over `digits.csv`: the majority label, or the nearest
//!    one when all three differ.

use std::fmt;
use std::path::Path;
use std::sync::OnceLock;

use crate::fixtures;

/// The palette, in the judge's order (the order breaks ties).
pub const PALETTE: [(&str, [f64; 3]); 6] = [
    ("red", [220.0, 40.0, 40.0]),
    ("green", [40.0, 180.0, 60.0]),
    ("blue", [40.0, 70.0, 220.0]),
    ("yellow", [240.0, 220.0, 40.0]),
    ("white", [245.0, 245.0, 245.0]),
    ("black", [15.0, 15.0, 15.0]),
];

/// The digit words of the prompt grammar, indexed by digit.
pub const DIGIT_WORDS: [&str; 10] = [
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
];

/// What the judge reads off a picture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Judged {
    pub digit: u8,
    pub fg: &'static str,
    pub bg: &'static str,
}

impl fmt::Display for Judged {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.digit, self.fg, self.bg)
    }
}

/// One labelled 8x8 digit (values 0..16).
struct Sample {
    label: u8,
    pixels: [f64; 64],
}

fn digits() -> &'static [Sample] {
    static DIGITS: OnceLock<Vec<Sample>> = OnceLock::new();
    DIGITS.get_or_init(|| {
        let path = fixtures().join("tiny-sd-digits-refs/digits.csv");
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        let samples: Vec<Sample> = text
            .lines()
            .skip(1) // header: label,p0..p63
            .filter(|line| !line.trim().is_empty())
            .map(|line| {
                let values: Vec<f64> = line
                    .split(',')
                    .map(|v| v.trim().parse::<f64>().expect("digits.csv holds numbers"))
                    .collect();
                assert_eq!(values.len(), 65, "digits.csv row: label + 64 pixels");
                let mut pixels = [0.0; 64];
                pixels.copy_from_slice(&values[1..]);
                Sample {
                    label: values[0] as u8,
                    pixels,
                }
            })
            .collect();
        assert_eq!(
            samples.len(),
            1797,
            "digits.csv has scikit-learn's 1797 digits"
        );
        samples
    })
}

fn squared_distance(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

/// Judges an 8-bit RGB image, row-major, `width * height * 3` bytes (64x64 expected).
pub fn judge_rgb(pixels: &[u8], width: usize, height: usize) -> Judged {
    assert_eq!(pixels.len(), width * height * 3, "RGB bytes");
    assert!(
        width >= 56 && height >= 56,
        "the judge reads the 48x48 centre of a 64x64 picture; got {width}x{height}"
    );
    let rgb: Vec<[f64; 3]> = pixels
        .chunks_exact(3)
        .map(|p| [f64::from(p[0]), f64::from(p[1]), f64::from(p[2])])
        .collect();

    // 1. Nearest palette colour per pixel; background = most frequent, foreground = second.
    let mut counts = [0usize; PALETTE.len()];
    for p in &rgb {
        let mut best = 0;
        let mut best_d = f64::INFINITY;
        for (i, (_, colour)) in PALETTE.iter().enumerate() {
            let d = squared_distance(p, colour);
            if d < best_d {
                best = i;
                best_d = d;
            }
        }
        counts[best] += 1;
    }
    let mut order: Vec<usize> = (0..PALETTE.len()).collect();
    // Stable sort by count, descending: equal counts keep the lower palette index first.
    order.sort_by(|a, b| counts[*b].cmp(&counts[*a]));
    let (bg, fg) = (order[0], order[1]);
    let (bg_rgb, fg_rgb) = (PALETTE[bg].1, PALETTE[fg].1);

    // 2. t per pixel.
    let t: Vec<f64> = rgb
        .iter()
        .map(|p| {
            let d_bg = squared_distance(p, &bg_rgb).sqrt();
            let d_fg = squared_distance(p, &fg_rgb).sqrt();
            d_bg / (d_fg + d_bg + 1e-6)
        })
        .collect();

    // 3. The 48x48 centre in 6x6 blocks, times 16.
    let mut features = [0.0f64; 64];
    for (by, row) in features.chunks_mut(8).enumerate() {
        for (bx, value) in row.iter_mut().enumerate() {
            let mut sum = 0.0;
            for y in 8 + by * 6..8 + by * 6 + 6 {
                for x in 8 + bx * 6..8 + bx * 6 + 6 {
                    sum += t[y * width + x];
                }
            }
            *value = sum / 36.0 * 16.0;
        }
    }

    // 4. 3-NN over digits.csv.
    let mut nearest: Vec<(f64, u8)> = digits()
        .iter()
        .map(|s| (squared_distance(&features, &s.pixels), s.label))
        .collect();
    nearest.sort_by(|a, b| a.0.total_cmp(&b.0));
    let labels = [nearest[0].1, nearest[1].1, nearest[2].1];
    let digit = if labels[1] == labels[2] {
        labels[1]
    } else {
        // labels[0] is in every other majority, and the nearest when all three differ.
        labels[0]
    };
    Judged {
        digit,
        fg: PALETTE[fg].0,
        bg: PALETTE[bg].0,
    }
}

/// Reads an 8-bit RGB or RGBA PNG file: (RGB bytes, width, height).
pub fn read_png_rgb(path: &Path) -> (Vec<u8>, usize, usize) {
    let bytes =
        std::fs::read(path).unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
    decode_png_rgb(&bytes, &path.display().to_string())
}

/// Decodes an 8-bit RGB or RGBA PNG from memory (`label` names it in panics): (RGB bytes,
/// width, height).
pub fn decode_png_rgb(bytes: &[u8], label: &str) -> (Vec<u8>, usize, usize) {
    let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    let mut reader = decoder
        .read_info()
        .unwrap_or_else(|e| panic!("{label}: not a PNG: {e}"));
    let size = reader
        .output_buffer_size()
        .expect("the PNG's frame size fits in memory");
    let mut buf = vec![0; size];
    let info = reader
        .next_frame(&mut buf)
        .unwrap_or_else(|e| panic!("{label}: cannot decode: {e}"));
    assert_eq!(
        info.bit_depth,
        png::BitDepth::Eight,
        "{label}: 8-bit PNG expected"
    );
    let (w, h) = (info.width as usize, info.height as usize);
    let bytes = &buf[..info.buffer_size()];
    let rgb = match info.color_type {
        png::ColorType::Rgb => bytes.to_vec(),
        png::ColorType::Rgba => bytes
            .chunks_exact(4)
            .flat_map(|p| [p[0], p[1], p[2]])
            .collect(),
        other => panic!("{label}: RGB(A) PNG expected, got {other:?}"),
    };
    (rgb, w, h)
}

/// Judges a PNG file.
pub fn judge_png(path: &Path) -> Judged {
    let (rgb, w, h) = read_png_rgb(path);
    judge_rgb(&rgb, w, h)
}
