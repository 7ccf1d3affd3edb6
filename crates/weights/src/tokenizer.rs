//! The CLIP tokenizer of Stable Diffusion pipelines (`transformers.CLIPTokenizer` as diffusers
//! calls it: `padding="max_length"`, `max_length=77`, `truncation=True`), on the `tokenizers`
//! crate reading a pipeline's `tokenizer.json`.
//!
//! The prompt is encoded without special tokens, then `<|startoftext|>` is put first and
//! `<|endoftext|>` after the text; a prompt longer than `max_length - 2` tokens is cut so that the
//! end token stays last (diffusers warns with the removed text, so [`Encoded`] carries it), and
//! the rest is filled with the pad token. The pad token is not in `tokenizer.json`: SD 1.x pads
//! with `<|endoftext|>`, SDXL's second tokenizer with `!` (id 0), as `tokenizer_config.json`'s
//! `pad_token` says ([`pad_token_from_config`] reads it).
//!
//! Works on bytes only, so the browser build uses it as is (the `tokenizers` crate's
//! `unstable_wasm` feature: fancy-regex instead of onig).

use tokenizers::Tokenizer;

/// CLIP's context length: what every SD text encoder takes.
pub const CLIP_MAX_LENGTH: usize = 77;

/// CLIP's start-of-text token.
pub const BOS_TOKEN: &str = "<|startoftext|>";

/// CLIP's end-of-text token (also SD 1.x's pad token).
pub const EOS_TOKEN: &str = "<|endoftext|>";

/// What can go wrong building the tokenizer or encoding a prompt.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenizerError {
    /// `tokenizer.json` could not be parsed or configured.
    #[error("tokenizer.json: {reason}")]
    Load {
        /// The `tokenizers` crate's message.
        reason: String,
    },
    /// A token the tokenizer needs is not in its vocabulary.
    #[error("tokenizer.json has no token `{token}` (needed as the {role} token)")]
    MissingToken {
        /// The token's text.
        token: String,
        /// What it is used for (`start`, `end`, `pad`).
        role: &'static str,
    },
    /// A pad token id outside the vocabulary.
    #[error("pad token id {id} is outside the vocabulary of {vocab_size} tokens")]
    PadId {
        /// The id given.
        id: u32,
        /// The vocabulary's size (added tokens included).
        vocab_size: usize,
    },
    /// `tokenizer_config.json` is not valid or has an unexpected `pad_token`.
    #[error("tokenizer_config.json: {reason}")]
    Config {
        /// What is wrong.
        reason: String,
    },
    /// A `max_length` with no room for the start and end tokens.
    #[error(
        "max_length {max_length} is too small: it must leave room for the start and end tokens"
    )]
    MaxLength {
        /// The length asked for.
        max_length: usize,
    },
    /// The prompt could not be tokenized.
    #[error("cannot tokenize the prompt: {reason}")]
    Encode {
        /// The `tokenizers` crate's message.
        reason: String,
    },
    /// A folder with only the slow tokenizer's `vocab.json` and `merges.txt` whose vocabulary is
    /// not CLIP's, so the built-in `tokenizer.json` cannot stand in for it.
    #[error("{file}: {reason}; add the tokenizer's tokenizer.json to the folder")]
    SlowTokenizer {
        /// `vocab.json` or `merges.txt`.
        file: &'static str,
        /// What differs.
        reason: String,
    },
}

/// CLIP's BPE tokenizer as transformers' fast tokenizer saves it (`tokenizer.json`): the
/// vocabulary of SD 1.x's CLIP ViT-L and of the OpenCLIP encoders of SD 2.x and SDXL. The
/// built-in model's copy; it stands in for single-file checkpoints, which carry no tokenizer,
/// and for folders that keep only the slow tokenizer's files ([`clip_tokenizer_json_for`]).
pub const CLIP_TOKENIZER_JSON: &[u8] = include_bytes!("../../sd/model/tokenizer/tokenizer.json");

/// The `tokenizer.json` for a pipeline tokenizer folder that transformers' slow
/// `CLIPTokenizer` saved (`vocab.json` + `merges.txt`, no `tokenizer.json`: how the hub's
/// Stable Diffusion repositories keep it): [`CLIP_TOKENIZER_JSON`], after checking that the
/// folder's vocabulary and merges are exactly CLIP's, so the stand-in tokenizes the same.
///
/// # Errors
///
/// [`TokenizerError::SlowTokenizer`] naming the file that is not valid or not CLIP's.
pub fn clip_tokenizer_json_for(
    vocab_json: &[u8],
    merges_txt: &[u8],
) -> Result<&'static [u8], TokenizerError> {
    let differs = |file, reason: String| TokenizerError::SlowTokenizer { file, reason };
    let builtin: serde_json::Value = serde_json::from_slice(CLIP_TOKENIZER_JSON)
        .map_err(|e| differs("vocab.json", format!("the built-in tokenizer.json: {e}")))?;
    let vocab: serde_json::Value = serde_json::from_slice(vocab_json)
        .map_err(|e| differs("vocab.json", format!("not JSON: {e}")))?;
    if vocab != builtin["model"]["vocab"] {
        return Err(differs(
            "vocab.json",
            "the vocabulary is not CLIP's 49408 tokens".into(),
        ));
    }
    let merges = std::str::from_utf8(merges_txt)
        .map_err(|_| differs("merges.txt", "not UTF-8 text".into()))?;
    // merges.txt: a `#version` line, then one `left right` pair per line.
    let theirs = merges
        .lines()
        .filter(|line| !line.starts_with("#version") && !line.is_empty());
    let ours = builtin["model"]["merges"]
        .as_array()
        .map_or(&[][..], Vec::as_slice);
    let mut count = 0;
    for (line, pair) in theirs.zip(
        ours.iter()
            .chain(std::iter::repeat(&serde_json::Value::Null)),
    ) {
        let expected = match pair {
            serde_json::Value::Array(parts) => parts
                .iter()
                .filter_map(serde_json::Value::as_str)
                .collect::<Vec<_>>()
                .join(" "),
            serde_json::Value::String(text) => text.clone(),
            _ => String::new(),
        };
        if line != expected {
            return Err(differs(
                "merges.txt",
                format!("merge {} is `{line}`, CLIP's is `{expected}`", count + 1),
            ));
        }
        count += 1;
    }
    if count != ours.len() {
        return Err(differs(
            "merges.txt",
            format!("{count} merges, CLIP has {}", ours.len()),
        ));
    }
    Ok(CLIP_TOKENIZER_JSON)
}

/// The pad token, by id or by its text (looked up in the vocabulary).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PadToken {
    /// A token id.
    Id(u32),
    /// A token's text, e.g. `"!"` or `"<|endoftext|>"`.
    Token(String),
}

/// A tokenized prompt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Encoded {
    /// Exactly `max_length` ids: start token, the prompt's tokens, end token, then pad tokens.
    pub ids: Vec<u32>,
    /// How many ids are not padding (start and end tokens included); the end token is at
    /// `tokens_used - 1`.
    pub tokens_used: usize,
    /// Whether the prompt was cut to fit.
    pub truncated: bool,
    /// How many of the prompt's tokens were cut (0 unless `truncated`).
    pub removed_tokens: usize,
    /// The prompt's text that was cut (from the first removed token on), for the warning
    /// diffusers gives: "The following part of your input was truncated ...".
    pub removed_text: String,
}

/// A CLIP tokenizer: `tokenizer.json` plus the pad token and the length to pad to.
#[derive(Clone, Debug)]
pub struct ClipTokenizer {
    inner: Tokenizer,
    bos: u32,
    eos: u32,
    pad: u32,
    max_length: usize,
}

impl ClipTokenizer {
    /// Builds the tokenizer from `tokenizer.json`'s bytes and the pad token, padding to
    /// [`CLIP_MAX_LENGTH`].
    pub fn from_bytes(tokenizer_json: &[u8], pad: PadToken) -> Result<Self, TokenizerError> {
        let mut inner =
            Tokenizer::from_bytes(tokenizer_json).map_err(|e| TokenizerError::Load {
                reason: e.to_string(),
            })?;
        // Truncation and padding are done here, whatever the file says.
        inner
            .with_truncation(None)
            .map_err(|e| TokenizerError::Load {
                reason: e.to_string(),
            })?;
        inner.with_padding(None);
        let id = |token: &str, role| {
            inner
                .token_to_id(token)
                .ok_or_else(|| TokenizerError::MissingToken {
                    token: token.to_owned(),
                    role,
                })
        };
        let bos = id(BOS_TOKEN, "start")?;
        let eos = id(EOS_TOKEN, "end")?;
        let pad = match pad {
            PadToken::Token(token) => id(&token, "pad")?,
            PadToken::Id(pad) => {
                let vocab_size = inner.get_vocab_size(true);
                if usize::try_from(pad).map_or(true, |p| p >= vocab_size) {
                    return Err(TokenizerError::PadId {
                        id: pad,
                        vocab_size,
                    });
                }
                pad
            }
        };
        Ok(Self {
            inner,
            bos,
            eos,
            pad,
            max_length: CLIP_MAX_LENGTH,
        })
    }

    /// Builds the tokenizer from a pipeline's `tokenizer/` files: `tokenizer.json`, and
    /// `tokenizer_config.json` when there is one, for its `pad_token` (default: the end token,
    /// SD 1.x's choice).
    pub fn from_pipeline_files(
        tokenizer_json: &[u8],
        tokenizer_config_json: Option<&[u8]>,
    ) -> Result<Self, TokenizerError> {
        let pad = match tokenizer_config_json {
            Some(bytes) => pad_token_from_config(bytes)?,
            None => None,
        };
        Self::from_bytes(
            tokenizer_json,
            PadToken::Token(pad.unwrap_or_else(|| EOS_TOKEN.to_owned())),
        )
    }

    /// The same tokenizer padding to `max_length` ids (at least 2).
    pub fn with_max_length(mut self, max_length: usize) -> Result<Self, TokenizerError> {
        if max_length < 2 {
            return Err(TokenizerError::MaxLength { max_length });
        }
        self.max_length = max_length;
        Ok(self)
    }

    /// The length every encoding has.
    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// The start token's id.
    pub fn bos_id(&self) -> u32 {
        self.bos
    }

    /// The end token's id.
    pub fn eos_id(&self) -> u32 {
        self.eos
    }

    /// The pad token's id.
    pub fn pad_id(&self) -> u32 {
        self.pad
    }

    /// The number of token ids (added tokens included): ids are below this.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Tokenizes `prompt` into exactly [`ClipTokenizer::max_length`] ids.
    pub fn encode(&self, prompt: &str) -> Result<Encoded, TokenizerError> {
        let encoding = self
            .inner
            .encode(prompt, false)
            .map_err(|e| TokenizerError::Encode {
                reason: e.to_string(),
            })?;
        let tokens = encoding.get_ids();
        let room = self.max_length - 2;
        let kept = tokens.len().min(room);
        let removed_tokens = tokens.len() - kept;
        let removed_text = match encoding.get_offsets().get(kept) {
            Some(&(start, _)) if removed_tokens > 0 => {
                prompt.get(start..).unwrap_or_default().trim().to_owned()
            }
            _ => String::new(),
        };
        let mut ids = Vec::with_capacity(self.max_length);
        ids.push(self.bos);
        ids.extend_from_slice(&tokens[..kept]);
        ids.push(self.eos);
        let tokens_used = ids.len();
        ids.resize(self.max_length, self.pad);
        Ok(Encoded {
            ids,
            tokens_used,
            truncated: removed_tokens > 0,
            removed_tokens,
            removed_text,
        })
    }
}

/// Reads `pad_token` from `tokenizer_config.json`'s bytes: a string (`"!"`), an object with
/// `content` (an `AddedToken`), or absent / `null` (`None`).
pub fn pad_token_from_config(bytes: &[u8]) -> Result<Option<String>, TokenizerError> {
    let json: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| TokenizerError::Config {
            reason: e.to_string(),
        })?;
    match json.get("pad_token") {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
        Some(serde_json::Value::Object(o)) => match o.get("content") {
            Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
            _ => Err(TokenizerError::Config {
                reason: "`pad_token` is an object without a string `content`".to_owned(),
            }),
        },
        Some(other) => Err(TokenizerError::Config {
            reason: format!("`pad_token` is {other}, expected a string or an object"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pad_token_forms() -> Result<(), TokenizerError> {
        assert_eq!(
            pad_token_from_config(br#"{"pad_token": "!"}"#)?.as_deref(),
            Some("!")
        );
        assert_eq!(
            pad_token_from_config(
                br#"{"pad_token": {"content": "<|endoftext|>", "lstrip": false}}"#
            )?
            .as_deref(),
            Some(EOS_TOKEN)
        );
        assert_eq!(pad_token_from_config(br#"{"pad_token": null}"#)?, None);
        assert_eq!(pad_token_from_config(b"{}")?, None);
        assert!(pad_token_from_config(br#"{"pad_token": 3}"#).is_err());
        assert!(pad_token_from_config(br#"{"pad_token": {"x": 1}}"#).is_err());
        assert!(pad_token_from_config(b"not json").is_err());
        Ok(())
    }
}
