//! The diffusers configs: the first byte picks the file (UNet, VAE, CLIP, model_index,
//! scheduler), the rest is its JSON. A scheduler config that parses builds every sampler for a
//! step count from the second byte and walks its whole schedule.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sd_core::config::{
    AutoencoderKLConfig, CLIPTextConfig, ModelIndex, SchedulerConfig, UNet2DConditionConfig,
};
use sd_core::sampler::SamplerKind;

fuzz_target!(|data: &[u8]| {
    let [kind, steps, rest @ ..] = data else {
        return;
    };
    let Ok(json) = std::str::from_utf8(rest) else {
        return;
    };
    match kind % 5 {
        0 => drop(UNet2DConditionConfig::from_json("unet/config.json", json)),
        1 => drop(AutoencoderKLConfig::from_json("vae/config.json", json)),
        2 => drop(CLIPTextConfig::from_json("text_encoder/config.json", json)),
        3 => drop(ModelIndex::from_json("model_index.json", json)),
        _ => {
            let Ok(config) = SchedulerConfig::from_json("scheduler/scheduler_config.json", json)
            else {
                return;
            };
            let steps = usize::from(*steps % 64) + 1;
            for sampler in SamplerKind::ALL {
                if let Ok(mut sampler) = sampler.build(&config, steps) {
                    let calls = sampler.timesteps().len();
                    for step in 0..calls {
                        let _ = sampler.program(step);
                    }
                }
            }
        }
    }
});
