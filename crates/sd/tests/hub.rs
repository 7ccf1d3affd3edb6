//! Hub presets against a stand-in hub on 127.0.0.1 serving the digits fixture as the `sd15`
//! preset's repository: the first load downloads with progress and generates, the next makes
//! no request, offline mode names what the cache lacks, and a download cut short is resumed
//! with the right bytes.

use sd_test_support::hub_mirror;
use sd_test_support::judge;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use hub_mirror::{COMMIT, Mirror};
use judge::{Judged, judge_rgb};
use sd_test_support::fixtures;
use sd_wgsl::models::ModelSource;
use sd_wgsl::{
    DownloadProgress, Error, HubConfig, LoadOptions, Model, ModelPaths, Options, PRESETS, Preset,
    download_preset, is_downloaded, list_models_with, missing_files,
};

const UNET: &str = "unet/diffusion_pytorch_model.fp16.safetensors";

fn sd15() -> &'static Preset {
    PRESETS
        .iter()
        .find(|p| p.name == "sd15")
        .expect("the sd15 preset")
}

fn repo() -> &'static str {
    sd15().hub.expect("a hub preset").repo
}

/// The fixture served as the sd15 repository.
fn mirror() -> Mirror {
    Mirror::serve(repo(), &fixtures().join("tiny-sd-digits"))
}

fn config(mirror: &Mirror, home: &Path) -> HubConfig {
    HubConfig {
        endpoint: mirror.url.clone(),
        cache_dir: home.join("hub"),
        offline: false,
        token: None,
    }
}

/// `(file, downloaded, total)` of each progress event.
fn download(config: &HubConfig) -> (sd_wgsl::Result<PathBuf>, Vec<(String, u64, u64)>) {
    let mut events = Vec::new();
    let result = download_preset(sd15(), config, &mut |p: &DownloadProgress| {
        assert_eq!(p.preset, "sd15");
        events.push((p.file.to_string(), p.downloaded, p.total));
    });
    (result, events)
}

#[test]
fn a_preset_downloads_once_with_progress_then_loads_from_the_cache() {
    let mirror = mirror();
    let home = tempfile::tempdir().expect("temp dir");
    let config = config(&mirror, home.path());
    let hub = sd15().hub.expect("hub");
    assert!(!is_downloaded(sd15(), &config));
    assert_eq!(missing_files(&hub, &config), hub.files);

    // Cold: every file is fetched, its progress reaching its size.
    let (snapshot, events) = download(&config);
    let snapshot = snapshot.expect("the download");
    assert_eq!(
        snapshot,
        home.path()
            .join("hub/models--stable-diffusion-v1-5--stable-diffusion-v1-5/snapshots")
            .join(COMMIT),
        "the hub's cache layout"
    );
    for file in hub.files {
        let served = mirror.bytes_of(file);
        let last = events
            .iter()
            .rev()
            .find(|(f, ..)| f == file)
            .unwrap_or_else(|| panic!("no progress for {file}"));
        assert_eq!(
            (last.1, last.2),
            (served.len() as u64, served.len() as u64),
            "{file}"
        );
        let cached = std::fs::read(snapshot.join(file)).expect("the cached file");
        assert!(cached == served, "{file}: the cached bytes differ");
        assert!(
            mirror.requests().iter().any(|r| r.contains(file)),
            "{file} was not requested"
        );
    }
    let big_file_events = events.iter().filter(|(f, ..)| f == UNET).count();
    println!(
        "cold: {} requests, {} progress events ({big_file_events} for the UNet)",
        mirror.requests().len(),
        events.len()
    );
    assert!(
        big_file_events > 1,
        "progress arrives while a file downloads"
    );
    // The hub ships the slow tokenizer's vocab.json + merges.txt only, and the cache holds
    // just what was served: the loader stands CLIP's tokenizer.json in for them.
    assert!(snapshot.join("tokenizer/vocab.json").is_file());
    assert!(!snapshot.join("tokenizer/tokenizer.json").exists());
    assert!(is_downloaded(sd15(), &config));
    let listed = list_models_with(&ModelPaths::default(), &config);
    let downloaded: Vec<(&str, bool)> = listed
        .iter()
        .map(|m| (m.name.as_str(), m.downloaded))
        .collect();
    assert_eq!(
        &downloaded[..3],
        [("digits", true), ("sd15", true), ("sd21", false)]
    );

    // Warm: no request at all, no progress.
    mirror.clear_requests();
    let (again, events) = download(&config);
    assert_eq!(again.expect("from the cache"), snapshot);
    assert_eq!(
        mirror.requests(),
        Vec::<String>::new(),
        "a warm load asks nothing"
    );
    assert!(events.is_empty());

    // The snapshot is a diffusers folder with fp16 variants: it loads and generates.
    let ctx = pollster::block_on(sd_wgsl::kernels::GpuContext::new(
        sd_wgsl::kernels::ContextOptions::from_env().expect("context options"),
    ))
    .expect("a GPU");
    let source = ModelSource::Folder {
        path: snapshot,
        variant: hub.variant.map(String::from),
    };
    let model = Model::from_source(Arc::new(ctx), &source, "sd15", &LoadOptions::new())
        .expect("the downloaded model loads");
    let images = model
        .generate(
            "a red digit seven on a blue background",
            &Options::new()
                .steps(20)
                .guidance_scale(5.0)
                .seed(7)
                .sampler("Euler a"),
        )
        .expect("generate");
    let judged = judge_rgb(images.images()[0].as_raw(), 64, 64);
    println!("generated: {judged}");
    assert_eq!(
        judged,
        Judged {
            digit: 7,
            fg: "red",
            bg: "blue"
        }
    );
}

#[test]
fn offline_names_the_files_the_cache_lacks_and_asks_nothing() {
    let mirror = mirror();
    let home = tempfile::tempdir().expect("temp dir");
    let online = config(&mirror, home.path());
    let offline = HubConfig {
        offline: true,
        ..online.clone()
    };

    let (result, _) = download(&offline);
    match result {
        Err(
            ref e @ Error::Offline {
                ref preset,
                ref missing,
                ..
            },
        ) => {
            assert_eq!(preset, "sd15");
            assert_eq!(missing.len(), sd15().hub.expect("hub").files.len());
            let message = e.to_string();
            println!("{message}");
            for want in ["sd15", "HF_HUB_OFFLINE", UNET, repo()] {
                assert!(message.contains(want), "{message} lacks {want}");
            }
        }
        other => panic!("offline and empty: {other:?}"),
    }
    assert!(mirror.requests().is_empty(), "offline asks nothing");

    // Everything but the UNet in the cache: the UNet alone is named.
    let (snapshot, _) = download(&online);
    let snapshot = snapshot.expect("download");
    std::fs::remove_file(snapshot.join(UNET)).expect("remove the UNet's link");
    mirror.clear_requests();
    let (result, _) = download(&offline);
    match result {
        Err(Error::Offline { missing, .. }) => assert_eq!(missing, [UNET]),
        other => panic!("offline without the UNet: {other:?}"),
    }
    assert!(!is_downloaded(sd15(), &offline));

    // Online again, only the missing file is fetched; then offline loads from the cache.
    let (result, events) = download(&online);
    result.expect("the UNet again");
    assert!(events.iter().all(|(f, ..)| f == UNET), "only the UNet");
    assert!(mirror.requests().iter().all(|r| r.contains(UNET)));
    mirror.clear_requests();
    let (result, _) = download(&offline);
    assert_eq!(result.expect("offline from the cache"), snapshot);
    assert!(mirror.requests().is_empty());
}

#[test]
fn a_download_cut_short_is_resumed_with_the_right_bytes() {
    let mirror = mirror();
    let served = mirror.bytes_of(UNET);
    let cut = 1 << 20;

    // Cut once: the same call asks for the rest.
    let home = tempfile::tempdir().expect("temp dir");
    let config = config(&mirror, home.path());
    mirror.cut_short(UNET, cut, 1);
    let (snapshot, events) = download(&config);
    let snapshot = snapshot.expect("resumed within the call");
    assert!(std::fs::read(snapshot.join(UNET)).expect("the UNet") == served);
    let resumed = format!("bytes={cut}-");
    assert!(
        mirror
            .requests()
            .iter()
            .any(|r| r.contains(UNET) && r.ends_with(&resumed)),
        "no request for the rest: {:?}",
        mirror.requests()
    );
    let last = events
        .iter()
        .rev()
        .find(|(f, ..)| f == UNET)
        .expect("progress");
    assert_eq!((last.1, last.2), (served.len() as u64, served.len() as u64));

    // Cut on every attempt of a call: the call fails naming the file; the next one resumes
    // from what the cache kept.
    let home = tempfile::tempdir().expect("temp dir");
    let config = self::config(&mirror, home.path());
    mirror.clear_requests();
    mirror.cut_short(UNET, cut, 3);
    let (result, _) = download(&config);
    match result {
        Err(ref e @ Error::Download { ref file, .. }) => {
            assert_eq!(file, UNET);
            println!("{e}");
        }
        other => panic!("three cuts: {other:?}"),
    }
    let (snapshot, _) = download(&config);
    let snapshot = snapshot.expect("the next call resumes");
    assert!(std::fs::read(snapshot.join(UNET)).expect("the UNet") == served);
    let resumed = format!("bytes={}-", 3 * cut);
    assert!(
        mirror
            .requests()
            .iter()
            .any(|r| r.contains(UNET) && r.ends_with(&resumed)),
        "the next call asks for the rest only: {:?}",
        mirror.requests()
    );
}

#[test]
fn the_hub_settings_come_from_the_environment_as_huggingface_hub_reads_them() {
    let vars = |pairs: &'static [(&'static str, &'static str)]| {
        move |name: &str| {
            pairs
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.to_string())
        }
    };
    let config = HubConfig::from_vars(vars(&[
        ("HOME", "/home/u"),
        ("HF_ENDPOINT", "http://mirror:8080/"),
    ]));
    assert_eq!(config.endpoint, "http://mirror:8080");
    assert_eq!(
        config.cache_dir,
        Path::new("/home/u/.cache/huggingface/hub")
    );
    assert!(!config.offline);
    let config = HubConfig::from_vars(vars(&[
        ("HOME", "/home/u"),
        ("XDG_CACHE_HOME", "/xdg"),
        ("HF_HUB_OFFLINE", "true"),
    ]));
    assert_eq!(config.cache_dir, Path::new("/xdg/huggingface/hub"));
    assert!(config.offline);
    let config = HubConfig::from_vars(vars(&[
        ("HF_HOME", "/hf"),
        ("HF_HUB_CACHE", "/elsewhere"),
        ("HF_HUB_OFFLINE", "0"),
        ("HF_TOKEN", "hf_x"),
    ]));
    assert_eq!(config.cache_dir, Path::new("/elsewhere"));
    assert!(!config.offline);
    assert_eq!(config.token.as_deref(), Some("hf_x"));
}

#[test]
fn every_hub_preset_names_a_complete_diffusers_folder() {
    for preset in PRESETS {
        let Some(hub) = preset.hub else {
            assert_eq!(preset.name, "digits");
            continue;
        };
        let has = |f: &str| hub.files.contains(&f);
        assert!(has("model_index.json"), "{}", preset.name);
        assert!(has("scheduler/scheduler_config.json"), "{}", preset.name);
        for part in ["text_encoder", "unet", "vae"] {
            assert!(
                has(&format!("{part}/config.json")),
                "{} {part}",
                preset.name
            );
            let weights = hub
                .files
                .iter()
                .filter(|f| f.starts_with(&format!("{part}/")) && f.ends_with(".safetensors"))
                .count();
            assert_eq!(weights, 1, "{} {part}: one weights file", preset.name);
        }
        assert!(
            hub.files
                .iter()
                .filter(|f| f.ends_with(".safetensors"))
                .all(|f| f.contains(".fp16.") == (hub.variant == Some("fp16"))),
            "{}: the weights are the variant",
            preset.name
        );
        assert!(has("tokenizer/vocab.json") && has("tokenizer/merges.txt"));
        let xl = preset.name.starts_with("sdxl");
        assert_eq!(has("text_encoder_2/config.json"), xl, "{}", preset.name);
        assert_eq!(has("tokenizer_2/vocab.json"), xl, "{}", preset.name);
        assert_eq!(hub.revision, "main");
        assert!(preset.native_size.0 >= 512 && preset.description.contains('x'));
    }
}
