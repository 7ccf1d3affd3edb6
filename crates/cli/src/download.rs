//! A hub preset's download as the command line shows it: a byte bar per file on a terminal,
//! else a line per file on stderr (logs and tests read those).

use std::io::IsTerminal;

use indicatif::{HumanBytes, ProgressBar, ProgressStyle};
use sd_wgsl::DownloadProgress;

/// Shows download events on `bar` (which it restyles; the caller restyles it after).
#[derive(Debug)]
pub struct DownloadReporter {
    bar: ProgressBar,
    terminal: bool,
    /// `(index, reported done)` of the file being fetched.
    current: Option<(usize, bool)>,
}

impl DownloadReporter {
    /// Reports on `bar`, drawn only when stderr is a terminal; otherwise plain lines.
    pub fn new(bar: ProgressBar) -> Self {
        Self {
            bar,
            terminal: std::io::stderr().is_terminal(),
            current: None,
        }
    }

    /// One event of [`sd_wgsl::Model::load_with_download_progress`].
    pub fn update(&mut self, p: &DownloadProgress) {
        let first = self.current.is_none_or(|(index, _)| index != p.index);
        if first {
            self.current = Some((p.index, false));
            if self.terminal {
                // A constant template: nothing here can fail to parse.
                if let Ok(style) = ProgressStyle::with_template(
                    "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}, ETA {eta}",
                ) {
                    self.bar.set_style(style.progress_chars("=> "));
                }
                self.bar
                    .set_message(format!("{} {} [{}/{}]", p.preset, p.file, p.index, p.count));
            } else {
                eprintln!(
                    "downloading {} {} ({}) [{}/{}]",
                    p.preset,
                    p.file,
                    HumanBytes(p.total),
                    p.index,
                    p.count
                );
            }
        }
        if self.terminal {
            self.bar.set_length(p.total);
            self.bar.set_position(p.downloaded);
        } else if p.downloaded == p.total && self.current == Some((p.index, false)) {
            self.current = Some((p.index, true));
            eprintln!("downloaded {} ({} bytes)", p.file, p.total);
        }
    }
}
