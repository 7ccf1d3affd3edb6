//! sd-weights against the shared fixtures (`shared/fixtures/`): the digits model's diffusers
//! folder, the tiny architectures (f16, with and without the `text_model.` prefix), the
//! reference token ids; plus variants, shards, truncated files and the f16 converter on copies
//! in temporary folders.

use sd_test_support::fixtures;
use std::collections::BTreeMap;
use std::error::Error;
use std::path::{Path, PathBuf};

use half::f16;
use sd_weights::{
    ClipTokenizer, Dtype, PadToken, Renamer, SafetensorsFile, WeightError, WeightSource,
    convert_folder_f16, open_component, open_component_with, tokenizer,
};

type TestResult = Result<(), Box<dyn Error>>;

fn digits() -> PathBuf {
    fixtures().join("tiny-sd-digits")
}

/// Copies one file into `dir/component/name`.
fn place(src: &Path, dir: &Path, component: &str, name: &str) -> Result<PathBuf, Box<dyn Error>> {
    let target = dir.join(component);
    std::fs::create_dir_all(&target)?;
    let path = target.join(name);
    std::fs::copy(src, &path)?;
    Ok(path)
}

#[test]
fn unet_scopes_and_unused() -> TestResult {
    let unet = open_component(&digits(), "unet", None)?;
    assert!(unet.files.note.is_none());
    assert_eq!(unet.files.base, "diffusion_pytorch_model");
    let source = &unet.source;
    assert_eq!(source.len(), 494);
    assert_eq!(source.dtype("conv_in.weight")?, Dtype::F32);
    let w = source.root().tensor_f32("conv_in.weight", &[32, 4, 3, 3])?;
    assert_eq!(w.len(), 32 * 4 * 9);
    let resnet = source.scope("down_blocks").at(0).scope("resnets").at(1);
    let conv1 = resnet.tensor_f16("conv1.weight", &[32, 32, 3, 3])?;
    let conv1_f32 = resnet.tensor_f32("conv1.weight", &[32, 32, 3, 3])?;
    for (h, x) in conv1.iter().zip(&conv1_f32) {
        assert_eq!(*h, f16::from_f32(*x));
    }
    let err = resnet
        .tensor_f32("conv1.weight", &[32, 32, 1, 1])
        .expect_err("wrong shape");
    let msg = err.to_string();
    assert!(
        msg.contains("unet") && msg.contains("down_blocks.0.resnets.1.conv1.weight"),
        "{msg}"
    );
    assert!(
        msg.contains("[32, 32, 3, 3]") && msg.contains("[32, 32, 1, 1]"),
        "{msg}"
    );
    let err = source
        .scope("down_blocks")
        .at(0)
        .scope("resnets")
        .at(2)
        .tensor_f32("conv1.weight", &[32, 32, 3, 3])
        .expect_err("there are two resnets per block");
    let msg = err.to_string();
    assert!(
        msg.contains("`down_blocks.0.resnets.2.conv1.weight` not found"),
        "{msg}"
    );
    assert!(
        msg.contains("down_blocks.0.resnets.1.conv1.weight"),
        "{msg}"
    );

    // Reading every tensor leaves none unused.
    let unused_before = source.unused().len();
    assert_eq!(unused_before, 494 - 2);
    let names: Vec<String> = source.names().map(str::to_owned).collect();
    for name in &names {
        let shape = source.shape(name)?.to_vec();
        source.tensor(name, &shape)?;
    }
    assert!(source.unused().is_empty());
    Ok(())
}

#[test]
fn text_encoder_names_with_and_without_prefix() -> TestResult {
    // transformers 5 (no prefix) and transformers 4 (`text_model.`): the same names.
    let plain = open_component(&digits(), "text_encoder", None)?;
    let prefixed = open_component(&fixtures().join("tiny-arch/sd2-v"), "text_encoder", None)?;
    for source in [&plain.source, &prefixed.source] {
        assert!(source.names().all(|n| !n.starts_with("text_model.")));
        assert!(source.contains("embeddings.token_embedding.weight"));
        assert!(source.contains("final_layer_norm.weight"));
        let layer = source.scope("encoder").scope("layers").at(0);
        assert!(layer.contains("self_attn.q_proj.weight"));
    }
    let hidden = 64;
    plain
        .source
        .scope("embeddings")
        .tensor_f32("token_embedding.weight", &[49408, hidden])?;
    // Without the renamer the prefixed names stay, and a miss suggests them.
    let raw = open_component_with(
        &fixtures().join("tiny-arch/sd2-v"),
        "text_encoder",
        None,
        &Renamer::identity(),
    )?;
    let err = raw
        .source
        .tensor_f32("final_layer_norm.weight", &[hidden])
        .expect_err("prefixed");
    let WeightError::Missing { suggestions, .. } = &err else {
        return Err(format!("expected Missing, got {err}").into());
    };
    assert_eq!(suggestions, &["text_model.final_layer_norm.weight"]);
    // SDXL's second encoder: `text_projection.weight` has no prefix, the rest has.
    let te2 = open_component(&fixtures().join("tiny-arch/sdxl"), "text_encoder_2", None)?;
    assert!(te2.source.contains("text_projection.weight"));
    assert!(te2.source.contains("final_layer_norm.weight"));
    assert_eq!(te2.source.dtype("final_layer_norm.weight")?, Dtype::F16);
    Ok(())
}

#[test]
fn variants_and_missing_files() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    let fp32 = digits().join("unet/diffusion_pytorch_model.safetensors");
    let fp16 = fixtures().join("tiny-arch/inpaint9/unet/diffusion_pytorch_model.safetensors");

    // Only the fp16 variant: used whether asked for or not (with a note when not).
    place(
        &fp16,
        dir,
        "unet",
        "diffusion_pytorch_model.fp16.safetensors",
    )?;
    let asked = open_component(dir, "unet", Some("fp16"))?;
    assert_eq!(asked.files.variant.as_deref(), Some("fp16"));
    assert!(asked.files.note.is_none());
    let fallback = open_component(dir, "unet", None)?;
    assert_eq!(fallback.files.variant.as_deref(), Some("fp16"));
    let note = fallback.files.note.ok_or("a note for the fallback")?;
    assert!(
        note.contains("diffusion_pytorch_model.fp16.safetensors"),
        "{note}"
    );

    // Both: each request gets its own.
    place(&fp32, dir, "unet", "diffusion_pytorch_model.safetensors")?;
    let plain = open_component(dir, "unet", None)?;
    assert_eq!(plain.files.variant, None);
    assert_eq!(plain.source.dtype("conv_in.weight")?, Dtype::F32);
    let half = open_component(dir, "unet", Some("fp16"))?;
    assert_eq!(half.source.dtype("conv_in.weight")?, Dtype::F16);

    // Only the plain file, fp16 asked: the plain one, with a note.
    std::fs::remove_file(dir.join("unet/diffusion_pytorch_model.fp16.safetensors"))?;
    let fallback = open_component(dir, "unet", Some("fp16"))?;
    assert_eq!(fallback.files.variant, None);
    assert!(fallback.files.note.is_some());

    // The text encoder's stem is `model`.
    place(
        &digits().join("text_encoder/model.safetensors"),
        dir,
        "text_encoder",
        "model.fp16.safetensors",
    )?;
    let te = open_component(dir, "text_encoder", Some("fp16"))?;
    assert_eq!(te.files.base, "model");

    // Nothing there: the error names the folder and what was looked for.
    std::fs::create_dir_all(dir.join("vae"))?;
    std::fs::write(dir.join("vae/diffusion_pytorch_model.bin"), b"pickle")?;
    let err = open_component(dir, "vae", Some("fp16")).expect_err("no safetensors");
    let msg = err.to_string();
    assert!(
        msg.contains(&dir.join("vae").display().to_string()),
        "{msg}"
    );
    assert!(
        msg.contains("diffusion_pytorch_model.fp16.safetensors"),
        "{msg}"
    );
    assert!(msg.contains("model.safetensors.index.json"), "{msg}");
    assert!(msg.contains("diffusion_pytorch_model.bin"), "{msg}");
    let err = open_component(dir, "controlnet", None).expect_err("no folder");
    assert!(matches!(err, WeightError::MissingFile { ref present, .. } if present.is_empty()));
    Ok(())
}

#[test]
fn truncated_file_is_a_clear_error() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let path = place(
        &digits().join("vae/diffusion_pytorch_model.safetensors"),
        tmp.path(),
        "vae",
        "diffusion_pytorch_model.safetensors",
    )?;
    let full = std::fs::metadata(&path)?.len();
    let file = std::fs::OpenOptions::new().write(true).open(&path)?;
    file.set_len(full - 1000)?;
    drop(file);
    let err = open_component(tmp.path(), "vae", None).expect_err("truncated");
    let msg = err.to_string();
    assert!(
        matches!(err, WeightError::Truncated { expected, got, .. } if expected == full && got == full - 1000),
        "{msg}"
    );
    assert!(
        msg.contains(&path.display().to_string()) && msg.contains("truncated"),
        "{msg}"
    );
    Ok(())
}

/// Writes `tensors` of `file` as a safetensors file (same dtype and bytes).
fn write_subset(file: &SafetensorsFile, names: &[&str], path: &Path) -> TestResult {
    struct T<'a>(sd_weights::TensorData<'a>);
    impl safetensors::View for &T<'_> {
        fn dtype(&self) -> Dtype {
            self.0.dtype()
        }
        fn shape(&self) -> &[usize] {
            self.0.shape()
        }
        fn data(&self) -> std::borrow::Cow<'_, [u8]> {
            self.0.bytes().into()
        }
        fn data_len(&self) -> usize {
            self.0.bytes().len()
        }
    }
    let tensors: Vec<(&str, T<'_>)> = names
        .iter()
        .map(|n| Ok((*n, T(file.tensor(n).ok_or("present")?))))
        .collect::<Result<_, Box<dyn Error>>>()?;
    std::fs::write(
        path,
        safetensors::serialize(tensors.iter().map(|(n, t)| (*n, t)), None)?,
    )?;
    Ok(())
}

#[test]
fn sharded_checkpoint() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("unet");
    std::fs::create_dir_all(&dir)?;
    let whole = SafetensorsFile::read(&digits().join("unet/diffusion_pytorch_model.safetensors"))?;
    let names: Vec<&str> = whole.names().collect();
    let (first, second) = names.split_at(names.len() / 2);
    let shard = |i| format!("diffusion_pytorch_model.fp16-0000{i}-of-00002.safetensors");
    write_subset(&whole, first, &dir.join(shard(1)))?;
    write_subset(&whole, second, &dir.join(shard(2)))?;
    let mut map = BTreeMap::new();
    for n in first {
        map.insert(*n, shard(1));
    }
    for n in second {
        map.insert(*n, shard(2));
    }
    let index = serde_json::json!({"metadata": {"total_size": 0}, "weight_map": map});
    let index_path = dir.join("diffusion_pytorch_model.fp16.safetensors.index.json");
    std::fs::write(&index_path, serde_json::to_vec(&index)?)?;

    let sharded = open_component(tmp.path(), "unet", Some("fp16"))?;
    assert_eq!(sharded.files.files.len(), 2);
    assert_eq!(sharded.files.index.as_deref(), Some(index_path.as_path()));
    assert_eq!(sharded.source.len(), whole.len());
    for t in whole.tensors() {
        assert_eq!(
            sharded.source.tensor_f32(t.name(), t.shape())?,
            t.to_f32()?,
            "{}",
            t.name()
        );
    }

    // An index that sends a tensor to the wrong shard.
    map.insert(first[0], shard(2));
    let index = serde_json::json!({"weight_map": map});
    std::fs::write(&index_path, serde_json::to_vec(&index)?)?;
    let err = open_component(tmp.path(), "unet", Some("fp16")).expect_err("bad map");
    let msg = err.to_string();
    assert!(matches!(err, WeightError::Index { .. }), "{msg}");
    assert!(msg.contains(first[0]), "{msg}");
    Ok(())
}

/// Every file under `dir`, relative path -> bytes.
fn tree(dir: &Path) -> Result<BTreeMap<PathBuf, Vec<u8>>, Box<dyn Error>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.insert(path.strip_prefix(dir)?.to_owned(), std::fs::read(&path)?);
            }
        }
    }
    Ok(out)
}

#[test]
fn converts_a_pipeline_folder_to_f16_deterministically() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let report = convert_folder_f16(&digits(), &a, None)?;
    convert_folder_f16(&digits(), &b, None)?;
    let components: Vec<&str> = report
        .components
        .iter()
        .map(|c| c.component.as_str())
        .collect();
    assert_eq!(components, ["text_encoder", "unet", "vae"]);
    assert!(report.skipped.is_empty(), "{:?}", report.skipped);
    assert!(
        report
            .components
            .iter()
            .all(|c| c.overflowed.is_empty() && c.kept.is_empty())
    );

    let (tree_a, tree_b) = (tree(&a)?, tree(&b)?);
    assert!(tree_a == tree_b, "converting twice gave different bytes");
    let original = tree(&digits())?;
    assert_eq!(
        tree_a.keys().collect::<Vec<_>>(),
        original.keys().collect::<Vec<_>>(),
        "same file names (single-file components keep their names)"
    );
    for (rel, bytes) in &original {
        let converted = tree_a.get(rel).ok_or("converted file")?;
        if rel.extension().is_some_and(|e| e == "safetensors") {
            let before = SafetensorsFile::from_vec("before", bytes.clone())?;
            let after = SafetensorsFile::from_vec("after", converted.clone())?;
            assert_eq!(
                before.names().collect::<Vec<_>>(),
                after.names().collect::<Vec<_>>()
            );
            assert_eq!(
                after.metadata().get("format").map(String::as_str),
                Some("pt")
            );
            for t in before.tensors() {
                let c = after.tensor(t.name()).ok_or("converted tensor")?;
                assert_eq!(c.dtype(), Dtype::F16);
                assert_eq!(c.shape(), t.shape());
                let want: Vec<u16> = t
                    .to_f32()?
                    .iter()
                    .map(|&x| f16::from_f32(x).to_bits())
                    .collect();
                let got: Vec<u16> = c.to_f16()?.iter().map(|h| h.to_bits()).collect();
                assert!(want == got, "{}: {} differs", rel.display(), t.name());
            }
        } else {
            assert!(converted == bytes, "{} was not copied as is", rel.display());
        }
    }

    // The converted folder loads like the original.
    let unet = open_component(&a, "unet", None)?;
    assert_eq!(unet.source.dtype("conv_in.weight")?, Dtype::F16);

    // Converting into the source folder is refused.
    let err = convert_folder_f16(&a, &a.join("unet/out"), None).expect_err("inside the source");
    assert!(matches!(err, WeightError::Destination { .. }), "{err}");
    Ok(())
}

#[test]
fn converts_already_f16_checkpoints_unchanged() -> TestResult {
    let path = fixtures().join("tiny-arch/sdxl/unet/diffusion_pytorch_model.safetensors");
    let file = SafetensorsFile::read(&path)?;
    let converted = sd_weights::to_f16_safetensors("out", std::slice::from_ref(&file))?;
    let out = SafetensorsFile::from_vec("out", converted.bytes)?;
    assert_eq!(converted.tensors, file.len());
    for t in file.tensors() {
        assert_eq!(out.tensor(t.name()).ok_or("present")?.bytes(), t.bytes());
    }
    // The same tensors twice are refused.
    let err = sd_weights::to_f16_safetensors("out", &[file.clone(), file]).expect_err("duplicates");
    assert!(matches!(err, WeightError::Duplicate { .. }), "{err}");
    Ok(())
}

#[test]
fn unused_tensors_after_a_partial_load() -> TestResult {
    let vae = open_component(&digits(), "vae", None)?;
    let decoder = vae.source.scope("decoder");
    decoder.tensor_f32("conv_in.bias", &[64])?;
    let unused = vae.source.unused();
    assert_eq!(unused.len(), vae.source.len() - 1);
    assert!(!unused.contains(&"decoder.conv_in.bias"));
    assert!(unused.contains(&"encoder.conv_in.weight"));
    let single = WeightSource::from_file("vae", vae.source.files()[0].clone())?;
    assert_eq!(single.unused().len(), single.len());
    Ok(())
}

// ---- tokenizer -------------------------------------------------------------------------------

fn digits_tokenizer() -> Result<ClipTokenizer, Box<dyn Error>> {
    let dir = digits().join("tokenizer");
    Ok(ClipTokenizer::from_pipeline_files(
        &std::fs::read(dir.join("tokenizer.json"))?,
        Some(&std::fs::read(dir.join("tokenizer_config.json"))?),
    )?)
}

#[test]
fn token_ids_match_diffusers() -> TestResult {
    let refs_dir = fixtures().join("tiny-sd-digits-refs");
    let refs = SafetensorsFile::read(&refs_dir.join("refs.safetensors"))?;
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(refs_dir.join("refs.json"))?)?;
    let tok = digits_tokenizer()?;
    assert_eq!(
        (tok.bos_id(), tok.eos_id(), tok.pad_id()),
        (49406, 49407, 49407)
    );
    for i in 0..4 {
        let prompt = json["prompts"][i.to_string()].as_str().ok_or("prompt")?;
        let want = refs
            .tensor(&format!("token_ids_{i}"))
            .ok_or("token ids")?
            .to_i64()?;
        let got = tok.encode(prompt)?;
        let ids: Vec<i64> = got.ids.iter().map(|&x| i64::from(x)).collect();
        assert_eq!(ids, want, "prompt {i}: {prompt:?}");
        assert!(!got.truncated);
        assert_eq!(got.ids[got.tokens_used - 1], 49407);
    }
    Ok(())
}

#[test]
fn long_and_empty_prompts() -> TestResult {
    let tok = digits_tokenizer()?;
    let empty = tok.encode("")?;
    assert_eq!(empty.ids.len(), 77);
    assert_eq!(&empty.ids[..2], &[49406, 49407]);
    assert!(empty.ids[2..].iter().all(|&id| id == 49407));
    assert_eq!((empty.tokens_used, empty.truncated), (2, false));
    assert!(empty.removed_text.is_empty());

    let words: Vec<String> = (0..100)
        .map(|i| format!("red{}", ["cat", "dog"][i % 2]))
        .collect();
    let sentence = words.join(" ");
    let long = tok.encode(&sentence)?;
    let full = tok.with_max_length(1000)?.encode(&sentence)?;
    let content = full.tokens_used - 2;
    assert!(content > 100, "{content} tokens");
    assert_eq!(long.ids.len(), 77);
    assert!(long.truncated);
    assert_eq!(long.tokens_used, 77);
    assert_eq!(long.ids[0], 49406);
    assert_eq!(long.ids[76], 49407);
    assert_eq!(long.removed_tokens, content - 75);
    assert_eq!(&long.ids[..76], &full.ids[..76]);
    assert!(sentence.ends_with(&long.removed_text) && !long.removed_text.is_empty());
    // The removed text re-tokenizes to the removed tokens.
    let rest = digits_tokenizer()?
        .with_max_length(1000)?
        .encode(&long.removed_text)?;
    assert_eq!(rest.tokens_used - 2, long.removed_tokens);
    Ok(())
}

#[test]
fn sdxl_second_tokenizer_pads_with_exclamation_mark() -> TestResult {
    let dir = fixtures().join("tiny-arch/sdxl/tokenizer_2");
    let json = std::fs::read(dir.join("tokenizer.json"))?;
    let config = std::fs::read(dir.join("tokenizer_config.json"))?;
    assert_eq!(
        tokenizer::pad_token_from_config(&config)?.as_deref(),
        Some("!")
    );
    let tok = ClipTokenizer::from_pipeline_files(&json, Some(&config))?;
    assert_eq!(tok.pad_id(), 0);
    let enc = tok.encode("a red digit seven")?;
    assert_eq!(enc.ids[enc.tokens_used - 1], 49407);
    assert!(enc.ids[enc.tokens_used..].iter().all(|&id| id == 0));
    let by_id = ClipTokenizer::from_bytes(&json, PadToken::Id(0))?;
    assert_eq!(by_id.encode("a red digit seven")?, enc);
    assert!(ClipTokenizer::from_bytes(&json, PadToken::Id(1 << 20)).is_err());
    assert!(ClipTokenizer::from_bytes(&json, PadToken::Token("<|nope|>".into())).is_err());
    assert!(ClipTokenizer::from_bytes(b"{}", PadToken::Id(0)).is_err());
    Ok(())
}

/// A folder saved by transformers' slow `CLIPTokenizer` has `vocab.json` + `merges.txt` only
/// (the hub's SD repositories): the built-in CLIP `tokenizer.json` stands in for exactly CLIP's
/// vocabulary and merges, and anything else is refused naming the file.
#[test]
fn the_slow_tokenizer_files_get_clips_tokenizer_json_only_when_they_are_clips() -> TestResult {
    let dir = fixtures().join("tiny-sd-digits/tokenizer");
    let vocab = std::fs::read(dir.join("vocab.json"))?;
    let merges = std::fs::read(dir.join("merges.txt"))?;
    let json = tokenizer::clip_tokenizer_json_for(&vocab, &merges)?;
    assert_eq!(json, tokenizer::CLIP_TOKENIZER_JSON);
    let stand_in = ClipTokenizer::from_bytes(json, PadToken::Token(tokenizer::EOS_TOKEN.into()))?;
    let own = ClipTokenizer::from_bytes(
        &std::fs::read(dir.join("tokenizer.json"))?,
        PadToken::Token(tokenizer::EOS_TOKEN.into()),
    )?;
    let prompt = "a red digit seven on a blue background, photo-realistic!";
    assert_eq!(stand_in.encode(prompt)?, own.encode(prompt)?);

    let other_vocab = String::from_utf8(vocab.clone())?.replacen("\"a</w>\"", "\"b</w>\"", 1);
    let err = tokenizer::clip_tokenizer_json_for(other_vocab.as_bytes(), &merges)
        .expect_err("another vocabulary");
    assert!(err.to_string().starts_with("vocab.json"), "{err}");

    let text = String::from_utf8(merges)?;
    let mut lines: Vec<&str> = text.lines().collect();
    lines.swap(1, 2);
    let err = tokenizer::clip_tokenizer_json_for(&vocab, lines.join("\n").as_bytes())
        .expect_err("other merges");
    assert!(err.to_string().starts_with("merges.txt"), "{err}");
    let err = tokenizer::clip_tokenizer_json_for(
        &vocab,
        text.lines()
            .take(100)
            .collect::<Vec<_>>()
            .join("\n")
            .as_bytes(),
    )
    .expect_err("fewer merges");
    assert!(err.to_string().contains("merges"), "{err}");
    Ok(())
}
