//! Generation parameters: every bad field gives an error naming it and what is allowed; the
//! progress events' JSON.

use sd_core::params::{GenerationParams, ParamField, ParamLimits};
use sd_core::progress::{Progress, Stage};
use sd_core::sampler::SamplerKind;

fn good() -> GenerationParams {
    GenerationParams {
        prompt: "a red digit seven on a blue background".into(),
        negative_prompt: String::new(),
        steps: 20,
        guidance_scale: 5.0,
        seed: 1,
        sampler: SamplerKind::EULER,
        width: 64,
        height: 96,
        count: 2,
        strength: 0.5,
        sample_init_latents: false,
        latents_len: Some(4 * 12 * 8 * 2),
    }
}

#[test]
fn good_params_pass() -> Result<(), Box<dyn std::error::Error>> {
    good().validate()?;
    GenerationParams::default().validate()?;
    let edge = GenerationParams {
        prompt: String::new(),
        steps: 1,
        guidance_scale: 0.0,
        width: 2048,
        height: 64,
        count: 16,
        strength: 1.0,
        latents_len: None,
        ..good()
    };
    edge.validate()?;
    assert!(!edge.uses_cfg());
    assert!(
        !GenerationParams {
            guidance_scale: 1.0,
            ..good()
        }
        .uses_cfg()
    );
    assert!(good().uses_cfg());
    assert_eq!(good().latents_len_needed(), 4 * 12 * 8 * 2);
    assert_eq!(GenerationParams::default().sampler, SamplerKind::EULER_A);
    Ok(())
}

#[test]
fn each_bad_field_is_named() {
    type Edit = fn(&mut GenerationParams);
    let cases: [(Edit, ParamField, &str); 18] = [
        (
            |p| p.width = 60,
            ParamField::Width,
            "multiple of 8 from 64 to 2048",
        ),
        (|p| p.width = 100, ParamField::Width, "100 is not allowed"),
        (|p| p.width = 2056, ParamField::Width, "2056"),
        (|p| p.height = 0, ParamField::Height, "from 64 to 2048"),
        (|p| p.height = 4096, ParamField::Height, "4096"),
        (|p| p.steps = 0, ParamField::Steps, "from 1 to 150"),
        (|p| p.steps = 151, ParamField::Steps, "151"),
        (
            |p| p.guidance_scale = -0.5,
            ParamField::GuidanceScale,
            ">= 0",
        ),
        (
            |p| p.guidance_scale = f32::NAN,
            ParamField::GuidanceScale,
            "finite",
        ),
        (
            |p| p.guidance_scale = f32::INFINITY,
            ParamField::GuidanceScale,
            "finite",
        ),
        (|p| p.count = 0, ParamField::Count, "from 1 to 16"),
        (|p| p.count = 17, ParamField::Count, "17"),
        (|p| p.strength = -0.1, ParamField::Strength, "from 0 to 1"),
        (|p| p.strength = f32::NAN, ParamField::Strength, "NaN"),
        (
            |p| p.latents_len = Some(0),
            ParamField::Latents,
            "768 needed",
        ),
        (
            |p| p.latents_len = Some(4 * 12 * 8),
            ParamField::Latents,
            "2 images",
        ),
        // The latents length follows the size and count.
        (|p| p.width = 72, ParamField::Latents, "864 needed"),
        (|p| p.count = 1, ParamField::Latents, "384 needed"),
    ];
    for (edit, field, needle) in cases {
        let mut params = good();
        edit(&mut params);
        let err = params.validate().expect_err("invalid");
        assert_eq!(err.field, field, "{err}");
        let message = err.to_string();
        assert!(
            message.starts_with(&format!("`{}`", field.name())),
            "{message}"
        );
        assert!(message.contains(needle), "{message} lacks {needle}");
    }
}

#[test]
fn limits_are_configurable() {
    let browser = ParamLimits {
        max_size: 768,
        ..ParamLimits::default()
    };
    let big = GenerationParams {
        width: 1024,
        strength: GenerationParams::default().strength,
        sample_init_latents: false,
        latents_len: None,
        ..good()
    };
    assert!(big.validate().is_ok());
    let err = big
        .validate_with(&browser)
        .expect_err("too big for the browser");
    assert_eq!(err.field, ParamField::Width);
    assert!(err.to_string().contains("from 64 to 768"), "{err}");
}

#[test]
fn progress_events() -> Result<(), Box<dyn std::error::Error>> {
    let event = Progress::new(Stage::Diffusion { step: 3, total: 20 }, 812.5);
    assert_eq!(
        serde_json::to_string(&event)?,
        r#"{"stage":"diffusion","step":3,"total":20,"elapsed_ms":812.5}"#
    );
    assert_eq!(
        serde_json::to_string(&Progress::new(Stage::Load, 0.0))?,
        r#"{"stage":"load","elapsed_ms":0.0}"#
    );
    assert_eq!(event.to_string(), "diffusion 3/20 (812 ms)");
    assert_eq!(event.diffusion_fraction(), 0.15);
    assert_eq!(Progress::new(Stage::Encode, 1.0).diffusion_fraction(), 0.0);
    assert_eq!(Progress::new(Stage::Done, 1.0).diffusion_fraction(), 1.0);
    assert_eq!(Stage::Decode.name(), "decode");
    Ok(())
}
