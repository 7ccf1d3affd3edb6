//! The crate's error type: every variant names the file or tensor it is about and what was
//! expected, so a message alone tells the user which download or which checkpoint is wrong.

use std::path::PathBuf;

/// Everything that can go wrong reading, checking or converting weights.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WeightError {
    /// Reading or writing a file failed.
    #[error("{}: {source}", .path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },

    /// The bytes are not a valid safetensors file (bad header length, JSON, offsets, ...).
    #[error("{file}: not a valid safetensors file: {reason}")]
    Format {
        /// The file's label (its path, or the name the caller gave the bytes).
        file: String,
        /// What is wrong, from the parser.
        reason: String,
    },

    /// The header describes more data than the file holds: an interrupted download or copy.
    #[error(
        "{file}: truncated: its header describes {expected} bytes but the file has only {got} \
         (an interrupted download or copy?)"
    )]
    Truncated {
        /// The file's label.
        file: String,
        /// The size the header implies (8-byte length + header + tensor data).
        expected: u64,
        /// The size of the bytes given.
        got: u64,
    },

    /// The file is longer than its header accounts for.
    #[error("{file}: {got} bytes, but its header accounts for only {expected}: trailing data")]
    TrailingBytes {
        /// The file's label.
        file: String,
        /// The size the header implies.
        expected: u64,
        /// The size of the bytes given.
        got: u64,
    },

    /// A tensor's element type cannot be converted to what was asked for.
    #[error("{file}: tensor `{tensor}` is {dtype}, expected {expected}")]
    Dtype {
        /// The file's label.
        file: String,
        /// The tensor's name in the file.
        tensor: String,
        /// Its element type, as safetensors spells it (`I64`, `F8_E4M3`, ...).
        dtype: String,
        /// The element types that would have worked.
        expected: &'static str,
    },

    /// A weight the model needs is not in the checkpoint.
    #[error("{component}: tensor `{name}` not found{}", suggestions_text(.suggestions))]
    Missing {
        /// The model component (`unet`, `text_encoder`, or a file label).
        component: String,
        /// The full (normalised) tensor name that was asked for.
        name: String,
        /// Present names that look like what was meant (same ending), best first.
        suggestions: Vec<String>,
    },

    /// A weight has a different shape than the model's configuration implies.
    #[error("{component}: tensor `{name}` has shape {got:?}, expected {expected:?}")]
    Shape {
        /// The model component.
        component: String,
        /// The full (normalised) tensor name.
        name: String,
        /// The shape the model needs.
        expected: Vec<usize>,
        /// The shape in the file.
        got: Vec<usize>,
    },

    /// Two tensors end up with the same name (in two shards, or after renaming).
    #[error("{component}: tensor `{name}` appears twice: as {first} and as {second}")]
    Duplicate {
        /// The model component.
        component: String,
        /// The (normalised) name both have.
        name: String,
        /// Where the first one is (`file: original name`).
        first: String,
        /// Where the second one is.
        second: String,
    },

    /// A component's folder holds no safetensors weights under any name we know.
    #[error(
        "{}: no safetensors weights for `{component}`: looked for {}{}",
        .dir.display(),
        .looked_for.join(", "),
        present_text(.present)
    )]
    MissingFile {
        /// The component's folder.
        dir: PathBuf,
        /// The component (`unet`, `text_encoder`, ...).
        component: String,
        /// Every file name that would have been accepted, in order of preference.
        looked_for: Vec<String>,
        /// The files the folder does have (empty if it does not exist).
        present: Vec<String>,
    },

    /// A sharded checkpoint's `*.safetensors.index.json` is malformed or disagrees with its
    /// shards.
    #[error("{file}: invalid shard index: {reason}")]
    Index {
        /// The index file.
        file: String,
        /// What is wrong.
        reason: String,
    },

    /// Writing a safetensors file failed.
    #[error("{file}: cannot serialise: {reason}")]
    Serialize {
        /// The file being written.
        file: String,
        /// The serialiser's message.
        reason: String,
    },

    /// A conversion was asked to write somewhere it must not (into its own source folder).
    #[error("{}: {reason}", .path.display())]
    Destination {
        /// The destination folder.
        path: PathBuf,
        /// Why it was refused.
        reason: String,
    },

    /// A pickle checkpoint (`.ckpt`, `.pt`, `.pth`, `.bin`): refused, never unpickled, since
    /// loading a pickle can run arbitrary code.
    #[error(
        "{}: pickle checkpoints (.ckpt, .pt, .pth, .bin) are refused: unpickling can run \
         arbitrary code. Use the .safetensors version of the model, or convert it with a \
         trusted tool",
        .path.display()
    )]
    Pickle {
        /// The file.
        path: PathBuf,
    },

    /// A single-file checkpoint that is not a Stable Diffusion model this crate can read, or
    /// lacks a part (UNet, VAE, a text encoder).
    #[error("{file}: {reason}")]
    SingleFile {
        /// The checkpoint (its path or label).
        file: String,
        /// What is wrong (naming the missing part and the key prefix looked for).
        reason: String,
    },

    /// A web model's `manifest.json` is not one this version reads.
    #[error("{file}: invalid web model manifest: {reason}")]
    Manifest {
        /// The manifest (its path or URL).
        file: String,
        /// What is wrong.
        reason: String,
    },

    /// A web model's shard is not the file the manifest describes: damaged or partly written.
    #[error(
        "{file}: {what} is {got}, but the manifest says {expected} (a damaged or partial download?)"
    )]
    Integrity {
        /// The shard.
        file: String,
        /// `size` or `SHA-256`.
        what: &'static str,
        /// The manifest's value.
        expected: String,
        /// The file's value.
        got: String,
    },
}

fn suggestions_text(suggestions: &[String]) -> String {
    if suggestions.is_empty() {
        String::new()
    } else {
        format!("; similar names present: {}", suggestions.join(", "))
    }
}

fn present_text(present: &[String]) -> String {
    if present.is_empty() {
        " (the folder is missing or empty)".to_owned()
    } else {
        format!("; the folder has: {}", present.join(", "))
    }
}

/// The crate's result type.
pub type Result<T, E = WeightError> = std::result::Result<T, E>;
