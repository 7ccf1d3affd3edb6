//! A sampler step on the GPU (shaders/step_program.wgsl): the bytecode of
//! `sd_core::sampler::program` interpreted per latent element, so the denoising loop keeps its
//! latents on the GPU and runs the samplers' own arithmetic.

use super::{expect_f32, to_u32};
use crate::batch::grid_1d;
use crate::kernel::{Binding, Entry, Kernel, Uniform, no_consts, uniform};
use crate::{Batch, DType, KernelError, Result, ShaderVariant, Tensor};

const WG: u32 = 256;
/// The most instructions a program may have (the uniform's `code`).
pub const STEP_PROGRAM_MAX_INSTRUCTIONS: usize = 64;
/// The most constants (the uniform's `constants`).
pub const STEP_PROGRAM_MAX_CONSTANTS: usize = 32;
/// The interpreter's registers (`var r: array<f32, 16>`).
pub const STEP_PROGRAM_REGISTERS: u32 = 16;
/// The most kept buffers a program reads or writes.
pub const STEP_PROGRAM_MAX_KEPT: u32 = 5;

uniform! {
    struct StepParams {
        len: u32,
        instructions: u32,
        mask_len: u32,
        guided: u32,
        cond_offset: u32,
        uncond_offset: u32,
        guidance: f32,
        _pad: u32,
        code: [[u32; 4]; STEP_PROGRAM_MAX_INSTRUCTIONS],
        constants: [f32; STEP_PROGRAM_MAX_CONSTANTS],
    }
}

pub(crate) static STEP_PROGRAM: Kernel = Kernel {
    file: "step_program.wgsl",
    source: include_str!("../shaders/step_program.wgsl"),
    params: StepParams::LAYOUT,
    bindings: &[
        Binding::read("sample"),
        Binding::read("prediction"),
        Binding::read("noise"),
        Binding::read("kept"),
        Binding::read("image"),
        Binding::write("next"),
        Binding::write("kept_out"),
    ],
    entries: &[Entry {
        name: "step_program",
        bindings: 7,
    }],
    reads_weights: false,
    consts: no_consts,
};

/// A compiled step program: `[op, dst, a, b]` instructions and their constants (see
/// `sd_core::sampler::program` for the opcodes).
#[derive(Clone, Copy, Debug)]
pub struct StepCode<'a> {
    pub instructions: &'a [[u32; 4]],
    pub constants: &'a [f32],
}

/// Where the model output of one image is read: its rows of a UNet prediction, guided or not.
#[derive(Clone, Copy, Debug)]
pub struct ModelOutput<'t> {
    /// The UNet's prediction `[B, 4, h, w]`.
    pub prediction: &'t Tensor,
    /// The element where this image's (conditional) prediction starts.
    pub cond_offset: usize,
    /// Classifier-free guidance: the element where its unconditional prediction starts, and
    /// the guidance scale; `uncond + scale * (cond - uncond)`.
    pub guidance: Option<(usize, f32)>,
}

/// The tensors a step program reads besides the model output; those it does not read may be
/// `None`.
#[derive(Clone, Copy, Debug)]
pub struct StepInputs<'t> {
    /// The latents the call starts from, `len` elements.
    pub sample: &'t Tensor,
    /// Fresh noise, `len` elements.
    pub noise: Option<&'t Tensor>,
    /// The kept buffers, packed (`k * len` elements).
    pub kept: Option<&'t Tensor>,
    /// The clean image latents, their starting noise (`len` each), then the mask: one value
    /// per pixel, `mask_len` of them.
    pub image: Option<(&'t Tensor, usize)>,
}

/// What one instruction reads and writes, for the checks.
#[derive(Default)]
struct Reads {
    output: bool,
    noise: bool,
    kept: usize,
    image: bool,
    mask: bool,
    writes_kept: usize,
}

/// Checks every instruction (opcode, registers, constants) and says what the program reads.
fn scan(code: &StepCode<'_>) -> std::result::Result<Reads, String> {
    if code.instructions.len() > STEP_PROGRAM_MAX_INSTRUCTIONS {
        return Err(format!(
            "{} instructions (at most {STEP_PROGRAM_MAX_INSTRUCTIONS})",
            code.instructions.len()
        ));
    }
    if code.constants.len() > STEP_PROGRAM_MAX_CONSTANTS {
        return Err(format!(
            "{} constants (at most {STEP_PROGRAM_MAX_CONSTANTS})",
            code.constants.len()
        ));
    }
    let mut reads = Reads::default();
    let register = |r: u32| match r < STEP_PROGRAM_REGISTERS {
        true => Ok(()),
        false => Err(format!("register {r} (there are {STEP_PROGRAM_REGISTERS})")),
    };
    let kept = |k: u32| match k < STEP_PROGRAM_MAX_KEPT {
        true => Ok(k as usize + 1),
        false => Err(format!("kept buffer {k} (at most {STEP_PROGRAM_MAX_KEPT})")),
    };
    let constant = |c: u32| match (c as usize) < code.constants.len() {
        true => Ok(()),
        false => Err(format!("constant {c} of {}", code.constants.len())),
    };
    for (pc, &[op, dst, a, b]) in code.instructions.iter().enumerate() {
        let checked = match op {
            0..=12 => register(dst),
            _ => Ok(()),
        };
        let checked = checked.and_then(|()| match op {
            3 => kept(a).map(|k| reads.kept = reads.kept.max(k)),
            0..=6 => {
                match op {
                    1 => reads.output = true,
                    2 => reads.noise = true,
                    4 | 5 => reads.image = true,
                    6 => reads.mask = true,
                    _ => {}
                }
                Ok(())
            }
            7 => constant(a),
            8..=11 => register(a).and_then(|()| register(b)),
            12 => register(a).and_then(|()| constant(b)),
            13 => register(a),
            14 => kept(dst).and_then(|k| {
                reads.writes_kept = reads.writes_kept.max(k);
                register(a)
            }),
            _ => Err(format!("opcode {op}")),
        });
        checked.map_err(|e| format!("instruction {pc}: {e}"))?;
    }
    Ok(reads)
}

/// Records one sampler step: the program `code` per element of `inputs.sample`, the model
/// output read from `output`; writes the next latents to `next` and the kept buffers to
/// `kept_out` (packed, as `inputs.kept`). Every tensor the program reads must be given and
/// large enough; a malformed program is a [`KernelError::Shape`] error.
pub fn step_program(
    batch: &mut Batch<'_>,
    code: StepCode<'_>,
    output: Option<ModelOutput<'_>>,
    inputs: StepInputs<'_>,
    next: &Tensor,
    kept_out: Option<&Tensor>,
) -> Result<()> {
    const OP: &str = "step_program";
    let reads = scan(&code).map_err(|e| KernelError::shape(OP, e))?;
    let len = inputs.sample.len();
    expect_f32(OP, "sample", inputs.sample, len)?;
    expect_f32(OP, "next", next, len)?;
    let at_least = |name: &str, t: Option<&Tensor>, needed: usize, read: bool| -> Result<()> {
        match t {
            Some(t) if t.dtype() == DType::F32 && t.len() >= needed => Ok(()),
            Some(t) => Err(KernelError::shape(
                OP,
                format!(
                    "{name} must be f32 with at least {needed} elements, is {:?} {:?}",
                    t.dtype(),
                    t.shape()
                ),
            )),
            None if read => Err(KernelError::shape(
                OP,
                format!("the program reads {name}, which was not given"),
            )),
            None => Ok(()),
        }
    };
    let (prediction, cond_offset, guidance) = match output {
        Some(o) => (Some(o.prediction), o.cond_offset, o.guidance),
        None => (None, 0, None),
    };
    let needed = guidance.map_or(cond_offset, |(u, _)| u.max(cond_offset)) + len;
    at_least("prediction", prediction, needed, reads.output)?;
    at_least("noise", inputs.noise, len, reads.noise)?;
    at_least("kept", inputs.kept, reads.kept * len, reads.kept > 0)?;
    let (image, mask_len) = match inputs.image {
        Some((t, mask_len)) => (Some(t), mask_len),
        None => (None, 0),
    };
    if reads.mask && (mask_len == 0 || !len.is_multiple_of(mask_len)) {
        return Err(KernelError::shape(
            OP,
            format!("the mask has {mask_len} values, which do not divide the {len} latents"),
        ));
    }
    at_least(
        "image",
        image,
        2 * len + mask_len,
        reads.image || reads.mask,
    )?;
    at_least(
        "kept_out",
        kept_out,
        reads.writes_kept * len,
        reads.writes_kept > 0,
    )?;
    // A written binding may not also be read (WebGPU refuses it at submission, far from here).
    let read = [
        Some(inputs.sample),
        prediction,
        inputs.noise,
        inputs.kept,
        image,
    ];
    for (name, written) in [("next", Some(next)), ("kept_out", kept_out)] {
        let Some(written) = written else { continue };
        if read
            .iter()
            .flatten()
            .any(|r| r.buffer() == written.buffer())
        {
            return Err(KernelError::shape(
                OP,
                format!("{name} is also an input: the step writes a tensor of its own"),
            ));
        }
    }

    let mut params = StepParams {
        len: to_u32(OP, len)?,
        instructions: code.instructions.len() as u32,
        mask_len: to_u32(OP, mask_len)?,
        guided: u32::from(guidance.is_some()),
        cond_offset: to_u32(OP, cond_offset)?,
        uncond_offset: to_u32(OP, guidance.map_or(0, |(u, _)| u))?,
        guidance: guidance.map_or(0.0, |(_, g)| g),
        _pad: 0,
        code: [[0; 4]; STEP_PROGRAM_MAX_INSTRUCTIONS],
        constants: [0.0; STEP_PROGRAM_MAX_CONSTANTS],
    };
    params.code[..code.instructions.len()].copy_from_slice(code.instructions);
    params.constants[..code.constants.len()].copy_from_slice(code.constants);
    let ctx = batch.context();
    let placeholder = ctx.placeholder();
    let or = |t: Option<&'_ Tensor>| t.unwrap_or(placeholder).clone();
    let (prediction, noise, kept, image) =
        (or(prediction), or(inputs.noise), or(inputs.kept), or(image));
    // A written binding may not be the read-only placeholder too.
    let kept_out = match kept_out {
        Some(t) => t.clone(),
        None => ctx.empty(&[1], DType::F32)?,
    };
    batch.dispatch(
        &STEP_PROGRAM,
        STEP_PROGRAM.key("step_program", ShaderVariant::NoWeights),
        &params,
        &[
            inputs.sample,
            &prediction,
            &noise,
            &kept,
            &image,
            next,
            &kept_out,
        ],
        grid_1d(len, WG),
    )
}
