//! Meaning end to end: ten prompts in the digits model's grammar (every digit, every colour as
//! foreground and as background, fg != bg), each with its own fixed seed (our `NoiseRng`, not
//! diffusers' `init_latents`), go through `sd_cli::generate::run` exactly as `sd generate` runs
//! them (embedded f16 model, default sampler `euler_a`, 20 steps, guidance 5.0 as the model was
//! evaluated). The PNGs are read back from disk and the fixtures' judge reads (digit, fg, bg) off
//! each: on the CPU backend at least 9 of 10 must be right in all three (diffusers measured
//! 96.7 % for the model); on the WGSL path three of them, all right.
//! Each PNG carries the `parameters` text chunk with its prompt and seed.

mod support;

use std::time::Instant;

use sd_cli::generate::{GenerateArgs, run};
use sd_wgsl::Device;
use support::judge::{DIGIT_WORDS, Judged, judge_png};

/// (digit, fg, bg, seed): none of these is one of the refs' prompts.
const CASES: [(u8, &str, &str, u64); 10] = [
    (0, "red", "black", 40_117),
    (1, "green", "yellow", 51_923),
    (2, "blue", "white", 62_401),
    (3, "yellow", "blue", 73_058),
    (4, "white", "green", 84_671),
    (5, "black", "red", 95_236),
    (6, "red", "yellow", 106_889),
    (7, "green", "black", 117_342),
    (8, "white", "blue", 128_765),
    (9, "yellow", "red", 139_510),
];

fn prompt(digit: u8, fg: &str, bg: &str) -> String {
    format!(
        "a {fg} digit {} on a {bg} background",
        DIGIT_WORDS[usize::from(digit)]
    )
}

/// Three of the ten on the WGSL path, all right: between them every colour is a foreground or a
/// background. (All ten took 305 s on lavapipe, 10/10 right; the WGSL pipeline's numbers are
/// proven against diffusers' in `crates/models/tests/pipeline.rs`.)
#[test]
fn three_prompts_come_out_as_asked() {
    prompts_on(Device::Gpu, &[CASES[0], CASES[3], CASES[4]], 3);
}

/// The ten prompts on the CPU backend (`--device cpu`): candle's networks under the same
/// pipeline; at least 9 right.
#[test]
fn ten_prompts_come_out_as_asked_on_the_cpu() {
    prompts_on(Device::Cpu, &CASES, 9);
}

fn prompts_on(device: Device, cases: &[(u8, &'static str, &'static str, u64)], at_least: usize) {
    let dir = tempfile::tempdir().expect("a temp dir");
    let mut right = 0;
    let mut table = Vec::new();
    let all = Instant::now();
    for (i, &(digit, fg, bg, seed)) in cases.iter().enumerate() {
        let prompt = prompt(digit, fg, bg);
        let args = GenerateArgs {
            prompt: prompt.clone(),
            negative_prompt: String::new(),
            steps: Some(20),
            guidance: Some(5.0),
            seed: Some(seed),
            sampler: Some("euler_a".into()),
            width: None,
            height: None,
            count: 1,
            out: dir.path().join(format!("{i}.png")),
            model: None,
            latents: None,
            init_image: None,
            strength: 0.8,
            mask: None,
            init_sample: false,
            f32_weights: false,
            model_config: None,
            device,
        };
        let start = Instant::now();
        let report = run(&args, false).unwrap_or_else(|e| panic!("{prompt}: {e:#}"));
        let took = start.elapsed();
        assert_eq!(
            report.files,
            std::slice::from_ref(&args.out),
            "{prompt}: the PNG written"
        );
        assert_eq!(report.seeds, [seed], "{prompt}: the seed used");

        let text = support::parameters_chunk(&report.files[0]);
        assert_eq!(
            text.lines().next(),
            Some(prompt.as_str()),
            "{prompt}: the parameters start with the prompt: {text:?}"
        );
        for part in [
            format!("Seed: {seed},"),
            "Steps: 20,".into(),
            "Sampler: Euler a,".into(),
            "CFG scale: 5,".into(),
            "Size: 64x64,".into(),
        ] {
            assert!(text.contains(&part), "{prompt}: {text:?} lacks {part:?}");
        }

        let judged = judge_png(&report.files[0]);
        let ok = judged == Judged { digit, fg, bg };
        right += usize::from(ok);
        table.push(format!(
            "{prompt:<44} seed {seed:>6} -> {:<16} {} ({:.1} s)",
            judged.to_string(),
            if ok { "right" } else { "WRONG" },
            took.as_secs_f64()
        ));
    }
    println!("{}", table.join("\n"));
    println!(
        "{device}: {right}/{} right, {:.1} s in all",
        cases.len(),
        all.elapsed().as_secs_f64()
    );
    assert!(
        right >= at_least,
        "only {right}/{} pictures judged right (at least {at_least} must be):\n{}",
        cases.len(),
        table.join("\n")
    );
}

/// img2img and inpainting through `sd generate`'s code path (embedded f16 model, `euler_a`,
/// 20 steps, guidance 5), judged: a strong repaint turns the red 7 on blue into what the prompt
/// asks, a light one keeps it, and an inpainted square over the digit draws the new digit
/// while the blue around it stays (and the outer border stays the input's).
///
/// On the CPU backend: img2img and inpainting are pipeline code, the same on either backend,
/// and the WGSL path's img2img and inpainting are proven against diffusers' runs in
/// `crates/models/tests/img2img.rs`; lavapipe would take minutes for these pictures.
#[test]
fn img2img_and_inpainting_come_out_as_asked() {
    use support::inputs::{border_difference, input_png, input_rgb, square_mask_png};
    use support::judge::read_png_rgb;

    let dir = tempfile::tempdir().expect("a temp dir");
    let mask = dir.path().join("mask.png");
    std::fs::write(&mask, square_mask_png()).expect("write the mask");
    let base = |name: &str, prompt: &str, strength: f32, seed: u64| GenerateArgs {
        prompt: prompt.into(),
        negative_prompt: String::new(),
        steps: Some(20),
        guidance: Some(5.0),
        seed: Some(seed),
        sampler: Some("euler_a".into()),
        width: None,
        height: None,
        count: 1,
        out: dir.path().join(format!("{name}.png")),
        model: None,
        latents: None,
        init_image: Some(input_png()),
        strength,
        mask: None,
        init_sample: false,
        f32_weights: false,
        model_config: None,
        device: Device::Cpu,
    };
    let cases = [
        (
            base(
                "strong",
                "a yellow digit zero on a green background",
                0.9,
                5,
            ),
            Judged {
                digit: 0,
                fg: "yellow",
                bg: "green",
            },
        ),
        (
            base("light", "a red digit seven on a blue background", 0.3, 5),
            Judged {
                digit: 7,
                fg: "red",
                bg: "blue",
            },
        ),
        (
            GenerateArgs {
                mask: Some(mask.clone()),
                ..base("inpaint", "a red digit three on a blue background", 1.0, 5)
            },
            Judged {
                digit: 3,
                fg: "red",
                bg: "blue",
            },
        ),
    ];
    let input = input_rgb();
    for (args, want) in cases {
        let report = run(&args, false).unwrap_or_else(|e| panic!("{}: {e:#}", args.prompt));
        let (rgb, w, h) = read_png_rgb(&report.files[0]);
        assert_eq!((w, h), (64, 64), "the input's size");
        let judged = support::judge::judge_rgb(&rgb, w, h);
        let border = border_difference(&rgb, &input, 4);
        println!(
            "{} (strength {}, mask {}): {judged}, border moved {border:.4}",
            args.prompt,
            args.strength,
            args.mask.is_some()
        );
        assert_eq!(judged, want, "{}", args.prompt);
        if args.mask.is_some() {
            assert!(border <= 0.05, "the unmasked border moved {border}");
        }
    }
}

/// Every sampler draws what the prompt asks (embedded f16 model, guidance 5): 20 steps, 10 for
/// the samplers that call the model twice a step, 8 for LCM (as diffusers' reference run). DPM2
/// ancestral also gets 20: at 10 its fresh noise is not removed by this model (3 seeds of 4 came
/// out as noise, and diffusers' own 10-step `dpm2_a` reference picture is a barely legible 7). The
/// prompts rotate through the three of the references; the seeds are fixed. The model itself is
/// right 96.7 % of the time, so one miss in the 19 is allowed.
///
/// On the CPU backend: the samplers are pipeline code, the same on either backend; each one's
/// steps are proven against diffusers' in `crates/core/tests`, and whole runs on the GPU in
/// `crates/models/tests/pipeline.rs`; lavapipe would take many minutes for these 19 pictures.
#[test]
fn every_sampler_draws_the_prompt() {
    use sd_core::sampler::{Algorithm, SamplerKind};

    let prompts = [
        (7, "red", "blue"),
        (3, "white", "black"),
        (0, "yellow", "green"),
    ];
    let dir = tempfile::tempdir().expect("a temp dir");
    let mut table = Vec::new();
    let mut wrong = Vec::new();
    for (i, kind) in SamplerKind::ALL.into_iter().enumerate() {
        let (digit, fg, bg) = prompts[i % prompts.len()];
        let steps = match kind.algorithm {
            Algorithm::Lcm => 8,
            Algorithm::Dpm2Ancestral => 20,
            _ if kind.order() == 2 => 10,
            _ => 20,
        };
        let args = GenerateArgs {
            prompt: prompt(digit, fg, bg),
            negative_prompt: String::new(),
            steps: Some(steps),
            guidance: Some(5.0),
            seed: Some(2024 + i as u64),
            sampler: Some(kind.name().into()),
            width: None,
            height: None,
            count: 1,
            out: dir.path().join(format!("{i}.png")),
            model: None,
            latents: None,
            init_image: None,
            strength: 0.8,
            mask: None,
            init_sample: false,
            f32_weights: false,
            model_config: None,
            device: Device::Cpu,
        };
        let start = Instant::now();
        let report = run(&args, false).unwrap_or_else(|e| panic!("{kind}: {e:#}"));
        let judged = judge_png(&report.files[0]);
        let ok = judged == Judged { digit, fg, bg };
        if !ok {
            wrong.push(kind.name());
        }
        table.push(format!(
            "{:<18} {steps:>2} steps: {:<44} -> {:<16} {} ({:.1} s)",
            kind.name(),
            args.prompt,
            judged.to_string(),
            if ok { "right" } else { "WRONG" },
            start.elapsed().as_secs_f64()
        ));
    }
    println!("{}", table.join("\n"));
    assert!(
        wrong.len() <= 1,
        "judged wrong: {wrong:?}\n{}",
        table.join("\n")
    );
}
