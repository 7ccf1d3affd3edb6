//! A sampler step as a value: per-element expressions over the step's inputs, compiled to a
//! small bytecode that the host ([`Bytecode::run`]) and the GPU (`sd_kernels::ops::step_program`)
//! both interpret, so a denoising loop can keep its latents on the GPU and still run exactly
//! the samplers' own arithmetic.
//!
//! A sampler writes its step with [`Expr`]'s operators, operation by operation in diffusers'
//! order; every scalar (sigmas, coefficients) is computed on the CPU in float32 as before and
//! enters as an [`Expr::Scalar`]. The host interpreter runs the same float32 operations in the
//! same order as the closures it replaced, so its results are bit for bit those of before; the
//! GPU may differ by a rounding where its compiler fuses a multiply-add or divides less exactly.
//!
//! The opcodes, as the WGSL interpreter (`shaders/step_program.wgsl`) reads them, one
//! `[op, dst, a, b]` per instruction:
//!
//! | op | name | does |
//! | --- | --- | --- |
//! | 0..=6 | `LOAD` | `r[dst] = ` the [`Input`] numbered `op` at this element |
//! | 7 | `CONST` | `r[dst] = constants[a]` |
//! | 8..=11 | `ADD`, `SUB`, `MUL`, `DIV` | `r[dst] = r[a] op r[b]` |
//! | 12 | `CLAMP` | `r[dst] = clamp(r[a], -constants[b], constants[b])` |
//! | 13 | `STORE_NEXT` | the next latents are `r[a]` |
//! | 14 | `STORE_KEPT` | kept buffer `dst` becomes `r[a]` |

use alloc::boxed::Box;
use alloc::vec;
use alloc::vec::Vec;
use core::ops;

use super::{SamplerError, check_len};

/// The most instructions a program may compile to (the GPU's uniform holds this many).
pub const MAX_INSTRUCTIONS: usize = 64;
/// The most scalars a program may use.
pub const MAX_CONSTANTS: usize = 32;
/// The interpreter's registers: the deepest expression needs its depth plus one.
pub const MAX_REGISTERS: usize = 16;
/// The most buffers a sampler keeps between calls (PNDM: four outputs and a sample).
pub const MAX_KEPT: usize = 5;

/// `LOAD` of [`Input::Sample`].
pub const OP_LOAD_SAMPLE: u32 = 0;
/// `LOAD` of [`Input::Output`].
pub const OP_LOAD_OUTPUT: u32 = 1;
/// `LOAD` of [`Input::Noise`].
pub const OP_LOAD_NOISE: u32 = 2;
/// `LOAD` of [`Input::Kept`].
pub const OP_LOAD_KEPT: u32 = 3;
/// `LOAD` of [`Input::Image`].
pub const OP_LOAD_IMAGE: u32 = 4;
/// `LOAD` of [`Input::StartNoise`].
pub const OP_LOAD_START_NOISE: u32 = 5;
/// `LOAD` of [`Input::Mask`].
pub const OP_LOAD_MASK: u32 = 6;
/// `CONST` opcode.
pub const OP_CONST: u32 = 7;
/// `ADD` opcode.
pub const OP_ADD: u32 = 8;
/// `SUB` opcode.
pub const OP_SUB: u32 = 9;
/// `MUL` opcode.
pub const OP_MUL: u32 = 10;
/// `DIV` opcode.
pub const OP_DIV: u32 = 11;
/// `CLAMP` opcode.
pub const OP_CLAMP: u32 = 12;
/// `STORE_NEXT` opcode.
pub const OP_STORE_NEXT: u32 = 13;
/// `STORE_KEPT` opcode.
pub const OP_STORE_KEPT: u32 = 14;

/// A per-element input of a step program (its number is its `LOAD` opcode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// The latents the call starts from (`sample`).
    Sample,
    /// The model output after classifier-free guidance.
    Output,
    /// Fresh standard normal noise, one draw of the latents' length per call.
    Noise,
    /// A buffer kept from the sampler's earlier calls (`kept[k]`).
    Kept(u8),
    /// The clean input latents (img2img, inpainting).
    Image,
    /// The noise the image started from (inpainting).
    StartNoise,
    /// The inpainting mask, one value per pixel, the same for every channel.
    Mask,
}

impl Input {
    fn opcode(self) -> (u32, u32) {
        match self {
            Input::Sample => (OP_LOAD_SAMPLE, 0),
            Input::Output => (OP_LOAD_OUTPUT, 0),
            Input::Noise => (OP_LOAD_NOISE, 0),
            Input::Kept(k) => (OP_LOAD_KEPT, u32::from(k)),
            Input::Image => (OP_LOAD_IMAGE, 0),
            Input::StartNoise => (OP_LOAD_START_NOISE, 0),
            Input::Mask => (OP_LOAD_MASK, 0),
        }
    }
}

/// A binary operation of float32 arithmetic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
}

/// One element's value in a step, as a tree. Build it with the operators (`Expr` with `Expr`
/// or `f32` on either side); each node is one float32 operation.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// An input at this element.
    Input(Input),
    /// A scalar of this call, computed on the CPU.
    Scalar(f32),
    /// `a op b`.
    Binary(BinaryOp, Box<Expr>, Box<Expr>),
    /// `a.clamp(-range, range)`.
    Clamp(Box<Expr>, f32),
}

/// The latents the call starts from.
pub const SAMPLE: Expr = Expr::Input(Input::Sample);
/// The model output after guidance.
pub const OUTPUT: Expr = Expr::Input(Input::Output);
/// Fresh standard normal noise.
pub const NOISE: Expr = Expr::Input(Input::Noise);

/// Kept buffer `k`.
pub fn kept(k: u8) -> Expr {
    Expr::Input(Input::Kept(k))
}

impl Expr {
    /// `self.clamp(-range, range)`.
    pub fn clamp(self, range: f32) -> Expr {
        Expr::Clamp(Box::new(self), range)
    }

    fn binary(op: BinaryOp, a: Expr, b: Expr) -> Expr {
        Expr::Binary(op, Box::new(a), Box::new(b))
    }
}

macro_rules! binary_operator {
    ($trait:ident, $method:ident, $op:expr) => {
        impl ops::$trait<Expr> for Expr {
            type Output = Expr;
            fn $method(self, rhs: Expr) -> Expr {
                Expr::binary($op, self, rhs)
            }
        }
        impl ops::$trait<f32> for Expr {
            type Output = Expr;
            fn $method(self, rhs: f32) -> Expr {
                Expr::binary($op, self, Expr::Scalar(rhs))
            }
        }
        impl ops::$trait<Expr> for f32 {
            type Output = Expr;
            fn $method(self, rhs: Expr) -> Expr {
                Expr::binary($op, Expr::Scalar(self), rhs)
            }
        }
    };
}
binary_operator!(Add, add, BinaryOp::Add);
binary_operator!(Sub, sub, BinaryOp::Sub);
binary_operator!(Mul, mul, BinaryOp::Mul);
binary_operator!(Div, div, BinaryOp::Div);

/// What one model call of a sampler computes per element: the next latents, and the buffers it
/// keeps for its later calls (all of them: `keep[k]` becomes `kept(k)` of the next call, what
/// is not listed is dropped). Every expression reads the inputs as they were before the call.
#[derive(Debug, Clone, PartialEq)]
pub struct StepProgram {
    /// The latents after the call.
    pub next: Expr,
    /// The buffers kept after the call.
    pub keep: Vec<Expr>,
}

impl StepProgram {
    /// A call that keeps nothing.
    pub fn next(next: Expr) -> Self {
        Self {
            next,
            keep: Vec::new(),
        }
    }

    /// This call also keeping `keep`.
    pub fn keeping(self, keep: Vec<Expr>) -> Self {
        Self { keep, ..self }
    }

    /// Compiles the program to [`Bytecode`].
    ///
    /// # Errors
    ///
    /// [`SamplerError::ProgramTooLarge`] past [`MAX_INSTRUCTIONS`], [`MAX_CONSTANTS`],
    /// [`MAX_REGISTERS`] or [`MAX_KEPT`] (a sampler bug, never an input's fault).
    pub fn compile(&self) -> Result<Bytecode, SamplerError> {
        let mut code = Bytecode::default();
        code.emit_expr(&self.next, 0)?;
        code.push([OP_STORE_NEXT, 0, 0, 0])?;
        if self.keep.len() > MAX_KEPT {
            return Err(SamplerError::ProgramTooLarge("kept buffers"));
        }
        for (k, expr) in self.keep.iter().enumerate() {
            code.emit_expr(expr, 0)?;
            code.push([OP_STORE_KEPT, k as u32, 0, 0])?;
        }
        code.keeps = self.keep.len();
        Ok(code)
    }
}

/// A compiled [`StepProgram`]: instructions `[op, dst, a, b]` and the scalars they load. Only
/// [`StepProgram::compile`] makes one, so the host interpreter runs only well-formed code.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Bytecode {
    instructions: Vec<[u32; 4]>,
    constants: Vec<f32>,
    keeps: usize,
    /// One more than the highest kept buffer it reads (0: none).
    reads_kept: usize,
    /// The inputs it reads, one bit per `LOAD` opcode.
    read_bits: u32,
}

impl Bytecode {
    fn push(&mut self, instruction: [u32; 4]) -> Result<(), SamplerError> {
        if self.instructions.len() == MAX_INSTRUCTIONS {
            return Err(SamplerError::ProgramTooLarge("instructions"));
        }
        self.instructions.push(instruction);
        Ok(())
    }

    fn constant(&mut self, value: f32) -> Result<u32, SamplerError> {
        if self.constants.len() == MAX_CONSTANTS {
            return Err(SamplerError::ProgramTooLarge("constants"));
        }
        self.constants.push(value);
        Ok(self.constants.len() as u32 - 1)
    }

    /// Emits `expr` into register `dst`, using the registers above it as scratch.
    fn emit_expr(&mut self, expr: &Expr, dst: u32) -> Result<(), SamplerError> {
        if dst as usize >= MAX_REGISTERS {
            return Err(SamplerError::ProgramTooLarge("registers"));
        }
        match expr {
            Expr::Input(input) => {
                let (op, k) = input.opcode();
                if let Input::Kept(k) = input {
                    self.reads_kept = self.reads_kept.max(usize::from(*k) + 1);
                }
                self.read_bits |= 1 << op;
                self.push([op, dst, k, 0])
            }
            Expr::Scalar(value) => {
                let c = self.constant(*value)?;
                self.push([OP_CONST, dst, c, 0])
            }
            Expr::Binary(op, a, b) => {
                self.emit_expr(a, dst)?;
                self.emit_expr(b, dst + 1)?;
                let op = match op {
                    BinaryOp::Add => OP_ADD,
                    BinaryOp::Sub => OP_SUB,
                    BinaryOp::Mul => OP_MUL,
                    BinaryOp::Div => OP_DIV,
                };
                self.push([op, dst, dst, dst + 1])
            }
            Expr::Clamp(a, range) => {
                self.emit_expr(a, dst)?;
                let c = self.constant(*range)?;
                self.push([OP_CLAMP, dst, dst, c])
            }
        }
    }

    /// The instructions, in order.
    pub fn instructions(&self) -> &[[u32; 4]] {
        &self.instructions
    }

    /// The scalars `CONST` and `CLAMP` read.
    pub fn constants(&self) -> &[f32] {
        &self.constants
    }

    /// How many kept buffers the program writes (all of them replace the kept ones).
    pub fn keeps(&self) -> usize {
        self.keeps
    }

    /// Whether the program reads `input` (any kept buffer for [`Input::Kept`]).
    pub fn reads(&self, input: Input) -> bool {
        self.read_bits & (1 << input.opcode().0) != 0
    }

    /// Runs the program on the host: `inputs` per element, the kept buffers replaced by the
    /// ones it keeps; returns the next latents.
    ///
    /// # Errors
    ///
    /// [`SamplerError::Length`] for inputs of another length than `sample` (a missing kept
    /// buffer, noise, or image input is one of length 0).
    pub fn run(
        &self,
        inputs: &HostInputs<'_>,
        kept: &mut Vec<Vec<f32>>,
    ) -> Result<Vec<f32>, SamplerError> {
        let n = inputs.sample.len();
        for (input, what, values) in [
            (Input::Output, "model_output", inputs.output),
            (Input::Noise, "noise", inputs.noise),
            (Input::Image, "image", inputs.image),
            (Input::StartNoise, "start_noise", inputs.start_noise),
        ] {
            if self.reads(input) {
                check_len(what, n, values.len())?;
            }
        }
        if self.reads_kept > kept.len() {
            return Err(SamplerError::Length {
                what: "kept buffers",
                expected: self.reads_kept,
                found: kept.len(),
            });
        }
        for buffer in &kept[..self.reads_kept] {
            check_len("sample", buffer.len(), n)?;
        }
        if self.reads(Input::Mask)
            && (inputs.mask.is_empty() || !n.is_multiple_of(inputs.mask.len()))
        {
            return Err(SamplerError::Length {
                what: "mask",
                expected: n,
                found: inputs.mask.len(),
            });
        }
        let mut next = vec![0.0; n];
        let mut keep = vec![vec![0.0; n]; self.keeps];
        let mut r = [0.0_f32; MAX_REGISTERS];
        for i in 0..n {
            for &[op, dst, a, b] in &self.instructions {
                let (dst, a, b) = (dst as usize, a as usize, b as usize);
                match op {
                    OP_LOAD_SAMPLE => r[dst] = inputs.sample[i],
                    OP_LOAD_OUTPUT => r[dst] = inputs.output[i],
                    OP_LOAD_NOISE => r[dst] = inputs.noise[i],
                    OP_LOAD_KEPT => r[dst] = kept[a][i],
                    OP_LOAD_IMAGE => r[dst] = inputs.image[i],
                    OP_LOAD_START_NOISE => r[dst] = inputs.start_noise[i],
                    OP_LOAD_MASK => r[dst] = inputs.mask[i % inputs.mask.len()],
                    OP_CONST => r[dst] = self.constants[a],
                    OP_ADD => r[dst] = r[a] + r[b],
                    OP_SUB => r[dst] = r[a] - r[b],
                    OP_MUL => r[dst] = r[a] * r[b],
                    OP_DIV => r[dst] = r[a] / r[b],
                    OP_CLAMP => r[dst] = r[a].clamp(-self.constants[b], self.constants[b]),
                    OP_STORE_NEXT => next[i] = r[a],
                    _ => keep[dst][i] = r[a],
                }
            }
        }
        *kept = keep;
        Ok(next)
    }
}

/// The per-element inputs of a host-run step; the ones a program does not read may be empty.
#[derive(Debug, Clone, Copy, Default)]
pub struct HostInputs<'a> {
    /// The latents the call starts from.
    pub sample: &'a [f32],
    /// The model output after guidance.
    pub output: &'a [f32],
    /// This call's fresh noise.
    pub noise: &'a [f32],
    /// The clean input latents.
    pub image: &'a [f32],
    /// The noise the image started from.
    pub start_noise: &'a [f32],
    /// One mask value per pixel.
    pub mask: &'a [f32],
}
