//! Presets hosted on the Hugging Face hub: where the hub's cache is, whether a preset is in it
//! (no network), and its download (with the `hub` feature) into that same cache, the layout
//! `huggingface_hub` and the `hf-hub` crate share (`models--{org}--{name}/refs/{revision}`,
//! `snapshots/{commit}/{file}` links to `blobs/{etag}`), so a model fetched by one is found
//! by the other.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::resolve::Preset;

/// A preset's files on the hub: a diffusers pipeline folder, only the parts it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HubRepo {
    /// `org/name`.
    pub repo: &'static str,
    /// A branch, tag or commit.
    pub revision: &'static str,
    /// The files to fetch, as paths inside the repository: `model_index.json`, the scheduler,
    /// tokenizer(s) and component configs, and one set of weights per component.
    pub files: &'static [&'static str],
    /// The weights' variant (`fp16`: `*.fp16.safetensors`), when the repository has one.
    pub variant: Option<&'static str>,
}

/// Where the hub is and where its downloads go: `HF_ENDPOINT`, `HF_HOME`, `HF_HUB_CACHE`,
/// `HF_HUB_OFFLINE` and `HF_TOKEN`, read as `huggingface_hub` reads them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubConfig {
    /// The hub's address (default `https://huggingface.co`; `HF_ENDPOINT`).
    pub endpoint: String,
    /// The cache folder: `HF_HUB_CACHE`, else `HF_HOME/hub`, else
    /// `XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub`.
    pub cache_dir: PathBuf,
    /// `HF_HUB_OFFLINE` set (`1`, `true`, `yes`, `on`): no request at all, only the cache.
    pub offline: bool,
    /// `HF_TOKEN`, else the `token` file beside the cache (`HF_HOME/token`), for gated models.
    pub token: Option<String>,
}

impl HubConfig {
    /// The settings of this process's environment.
    pub fn from_env() -> Self {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// The settings `var` (an environment variable's value by name) gives. Empty values count
    /// as unset.
    ///
    /// ```
    /// use sd_wgsl::HubConfig;
    ///
    /// let config = HubConfig::from_vars(|name| match name {
    ///     "HF_HOME" => Some("/data/hf".into()),
    ///     "HF_HUB_OFFLINE" => Some("1".into()),
    ///     _ => None,
    /// });
    /// assert_eq!(config.cache_dir, std::path::Path::new("/data/hf/hub"));
    /// assert_eq!(config.endpoint, "https://huggingface.co");
    /// assert!(config.offline);
    /// ```
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Self {
        let var = |name: &str| var(name).filter(|v| !v.trim().is_empty());
        let home = var("HF_HOME").map(PathBuf::from).unwrap_or_else(|| {
            let cache = var("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| var("HOME").map(|home| Path::new(&home).join(".cache")))
                .unwrap_or_else(|| PathBuf::from(".cache"));
            cache.join("huggingface")
        });
        let cache_dir = var("HF_HUB_CACHE")
            .or_else(|| var("HUGGINGFACE_HUB_CACHE"))
            .map(PathBuf::from)
            .unwrap_or_else(|| home.join("hub"));
        let token = var("HF_TOKEN").or_else(|| {
            std::fs::read_to_string(home.join("token"))
                .ok()
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty())
        });
        Self {
            endpoint: var("HF_ENDPOINT")
                .map(|e| e.trim_end_matches('/').to_string())
                .unwrap_or_else(|| "https://huggingface.co".into()),
            cache_dir,
            offline: var("HF_HUB_OFFLINE").is_some_and(|v| {
                matches!(
                    v.trim().to_ascii_lowercase().as_str(),
                    "1" | "true" | "yes" | "on"
                )
            }),
            token,
        }
    }
}

/// One moment of a preset's download.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownloadProgress<'a> {
    /// The preset.
    pub preset: &'a str,
    /// The file, as a path inside the repository.
    pub file: &'a str,
    /// Which file of the download this is, from 1.
    pub index: usize,
    /// Files this download fetches (those not in the cache).
    pub count: usize,
    /// Bytes of this file so far (a resumed download starts at what it already had).
    pub downloaded: u64,
    /// The file's size.
    pub total: u64,
}

/// The preset's repository folder in the cache.
fn repo_dir(hub: &HubRepo, config: &HubConfig) -> PathBuf {
    config
        .cache_dir
        .join(format!("models--{}", hub.repo.replace('/', "--")))
}

/// The snapshot folder the cache's ref for the preset's revision points to, if any.
fn snapshot_dir(hub: &HubRepo, config: &HubConfig) -> Option<PathBuf> {
    let repo = repo_dir(hub, config);
    let commit = std::fs::read_to_string(repo.join("refs").join(hub.revision)).ok()?;
    let commit = commit.trim();
    // A ref names a commit folder; anything else would lead out of the snapshots.
    if commit.is_empty() || !commit.chars().all(|c| c.is_ascii_alphanumeric()) {
        return None;
    }
    Some(repo.join("snapshots").join(commit))
}

/// The preset's files missing from the cache (all of them when its revision was never
/// fetched), asking no server.
pub fn missing_files(hub: &HubRepo, config: &HubConfig) -> Vec<&'static str> {
    match snapshot_dir(hub, config) {
        Some(dir) => hub
            .files
            .iter()
            .copied()
            .filter(|file| !dir.join(file).is_file())
            .collect(),
        None => hub.files.to_vec(),
    }
}

/// Whether `preset` loads without a download: built in, or every file of it in the cache.
pub fn is_downloaded(preset: &Preset, config: &HubConfig) -> bool {
    preset
        .hub
        .is_none_or(|hub| missing_files(&hub, config).is_empty())
}

/// The snapshot folder of `hub`, once every file of it is in the cache. (Its tokenizers are
/// the slow tokenizer's `vocab.json` + `merges.txt`; the loader stands CLIP's `tokenizer.json`
/// in for them after checking that they are CLIP's.)
fn complete_snapshot(preset: &Preset, hub: &HubRepo, config: &HubConfig) -> Result<PathBuf> {
    let missing = missing_files(hub, config);
    let dir = snapshot_dir(hub, config);
    match (missing.first(), dir) {
        (None, Some(dir)) => Ok(dir),
        (first, _) => Err(Error::Download {
            preset: preset.name.into(),
            file: first.unwrap_or(&"model_index.json").to_string(),
            message: format!(
                "not in the hub cache at {} after the download",
                repo_dir(hub, config).display()
            ),
        }),
    }
}

/// The snapshot folder of `preset` (a diffusers folder), downloading the files the cache
/// lacks from `config.endpoint`; `on_progress` hears each file's bytes as they arrive. A
/// preset whose files are all in the cache makes no request at all; an interrupted download
/// leaves its part in the cache and the next call resumes it.
///
/// # Errors
///
/// [`Error::Offline`] when `config.offline` and a file is not in the cache (naming it);
/// [`Error::Download`] naming the file that could not be fetched; [`Error::ModelName`] for
/// the built-in preset, which has no files to fetch.
#[cfg(feature = "hub")]
pub fn download_preset(
    preset: &Preset,
    config: &HubConfig,
    on_progress: &mut dyn FnMut(&DownloadProgress),
) -> Result<PathBuf> {
    let Some(hub) = preset.hub else {
        return Err(Error::ModelName {
            name: preset.name.into(),
            reason: "built in: nothing to download".into(),
        });
    };
    let missing = missing_files(&hub, config);
    if missing.is_empty() {
        return complete_snapshot(preset, &hub, config);
    }
    if config.offline {
        return Err(offline_error(preset, &hub, config, &missing));
    }
    let api =
        hf_hub::api::sync::ApiBuilder::from_cache(hf_hub::Cache::new(config.cache_dir.clone()))
            .with_endpoint(config.endpoint.clone())
            .with_token(config.token.clone())
            .with_progress(false)
            // hf-hub's own retries report failure after a last retry that succeeded, leaving a
            // complete part file it can never finish; the loop below retries instead.
            .with_retries(0)
            .build()
            .map_err(|e| Error::Download {
                preset: preset.name.into(),
                file: missing[0].into(),
                message: format!("cannot set up the hub client: {e}"),
            })?;
    let repo = api.repo(hf_hub::Repo::with_revision(
        hub.repo.into(),
        hf_hub::RepoType::Model,
        hub.revision.into(),
    ));
    for (i, file) in missing.iter().enumerate() {
        let mut attempt = 1;
        loop {
            let reporter = Reporter {
                preset: preset.name,
                file,
                index: i + 1,
                count: missing.len(),
                downloaded: 0,
                total: 0,
                on_progress: &mut *on_progress,
            };
            match repo.download_with_progress(file, reporter) {
                Ok(_) => break,
                // A dropped connection leaves the bytes so far in the cache's part file; the
                // next attempt asks for the rest only.
                Err(_) if attempt < DOWNLOAD_ATTEMPTS => attempt += 1,
                Err(e) => {
                    return Err(Error::Download {
                        preset: preset.name.into(),
                        file: (*file).into(),
                        message: format!(
                            "{} from {} ({attempt} attempts): {e}",
                            hub.repo, config.endpoint
                        ),
                    });
                }
            }
        }
    }
    complete_snapshot(preset, &hub, config)
}

/// The snapshot folder of `preset` if the cache holds all of it, without asking any server.
///
/// # Errors
///
/// [`Error::Offline`] naming the files absent from the cache.
pub fn cached_preset(preset: &Preset, config: &HubConfig) -> Result<Option<PathBuf>> {
    let Some(hub) = preset.hub else {
        return Ok(None);
    };
    let missing = missing_files(&hub, config);
    if missing.is_empty() {
        complete_snapshot(preset, &hub, config).map(Some)
    } else {
        Err(offline_error(preset, &hub, config, &missing))
    }
}

fn offline_error(preset: &Preset, hub: &HubRepo, config: &HubConfig, missing: &[&str]) -> Error {
    Error::Offline {
        preset: preset.name.into(),
        repo: hub.repo.into(),
        missing: missing.iter().map(|f| (*f).to_string()).collect(),
        cache: repo_dir(hub, config),
    }
}

/// Tries per file within one [`download_preset`] call; a later call resumes again.
#[cfg(feature = "hub")]
const DOWNLOAD_ATTEMPTS: usize = 3;

/// hf-hub's progress callbacks, as [`DownloadProgress`] events.
#[cfg(feature = "hub")]
struct Reporter<'a> {
    preset: &'a str,
    file: &'a str,
    index: usize,
    count: usize,
    downloaded: u64,
    total: u64,
    on_progress: &'a mut dyn FnMut(&DownloadProgress),
}

#[cfg(feature = "hub")]
impl Reporter<'_> {
    fn report(&mut self) {
        (self.on_progress)(&DownloadProgress {
            preset: self.preset,
            file: self.file,
            index: self.index,
            count: self.count,
            downloaded: self.downloaded,
            total: self.total,
        });
    }
}

#[cfg(feature = "hub")]
impl hf_hub::api::Progress for Reporter<'_> {
    // Called again when a download resumes, before the bytes it already had are counted.
    fn init(&mut self, size: usize, _filename: &str) {
        self.total = size as u64;
        self.downloaded = 0;
    }

    fn update(&mut self, size: usize) {
        self.downloaded += size as u64;
        self.report();
    }

    fn finish(&mut self) {}
}
