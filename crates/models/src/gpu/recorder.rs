//! The GPU recorder: each op of the networks becomes kernel dispatches in one [`Batch`].
//!
//! Tensors are laid out as the planner's [`chunk_layout`] says, so the executor binds exactly
//! the buffers the plan checked: a tensor that fits one binding is one buffer; a larger one is
//! per batch item a list of channel (NCHW) or token (token-major) ranges. Elementwise and
//! per-row ops run once per piece of the finest common split of their operands, copying a piece
//! out (and back) only where an operand is split differently (the feed-forward's input rows,
//! an upsampler's input channels). Convolutions read input chunks one after the other,
//! accumulating, into each output chunk. Layout changes, concatenation and embeddings run on
//! whole tensors only, as the planner requires.

use std::collections::HashMap;

use sd_kernels::ops::{
    self, Activation, AttentionShape, Conv2dChunk, Conv2dLayouts, Conv2dShape, GroupNormShape,
    Residual, TokenFeatures,
};
use sd_kernels::{Batch, DType, Tensor};

use crate::plan::{ChunkSpec, PlanError, Shape, chunk_group_size, chunk_layout};
use crate::record::{self, Conv2d, GroupNorm, Heads, InputNorm, Recorder, Sinusoids, shapes};
use crate::{ModelError, Result};

/// A model part's weights on the GPU by key (`down_blocks.0.resnets.0.conv1.weight`).
pub type Weights = HashMap<String, Tensor>;

/// An activation on the GPU: its logical shape and its buffers.
#[derive(Debug, Clone)]
pub struct GpuTensor {
    shape: Shape,
    chunks: Vec<(ChunkSpec, Tensor)>,
}

impl GpuTensor {
    /// The logical shape.
    pub fn shape(&self) -> Shape {
        self.shape
    }

    /// The buffer when the tensor is one.
    fn single(&self, path: &str) -> Result<&Tensor> {
        match self.chunks.as_slice() {
            [(_, t)] if self.chunks[0].0.item.is_none() => Ok(t),
            _ => Err(ModelError::Unsupported {
                part: "gpu",
                what: format!("{path} on a tensor split into {} chunks", self.chunks.len()),
            }),
        }
    }
}

/// What one op issued: its path and the commands (dispatches and copies) it recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    /// The op's path in the part.
    pub path: String,
    /// Commands recorded.
    pub commands: usize,
}

/// Records the ops of one model part into a batch.
#[derive(Debug)]
pub struct GpuRecorder<'b, 'c> {
    batch: &'b mut Batch<'c>,
    weights: &'b Weights,
    part: &'static str,
    norm_groups: usize,
    max_binding: u64,
    inputs: HashMap<String, Tensor>,
    host_ids: Option<&'b [u32]>,
    outputs: HashMap<String, Tensor>,
    issued: Vec<Issued>,
}

/// How a piece of an operand is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Use {
    Read,
    Write,
    Update,
}

/// One piece of the finest common split: batch item (`None`: every item, unsplit) and range
/// along the split axis.
#[derive(Debug, Clone, Copy)]
struct Piece {
    item: Option<usize>,
    start: usize,
    end: usize,
}

impl<'b, 'c> GpuRecorder<'b, 'c> {
    /// A convolution's weight, bias and stride/padding.
    fn conv2d_weights(
        &self,
        path: &str,
        conv: Conv2d,
    ) -> Result<(&'b Tensor, &'b Tensor, Conv2dShape)> {
        let shape = Conv2dShape {
            stride: conv.stride,
            pad_begin: conv.padding.before,
            pad_end: conv.padding.after,
        };
        Ok((
            self.weight(format!("{path}.weight"))?,
            self.weight(format!("{path}.bias"))?,
            shape,
        ))
    }

    /// A convolution's output (allocated, NCHW), weight, bias and stride/padding.
    fn conv2d_parts(
        &self,
        path: &str,
        x_shape: Shape,
        conv: Conv2d,
    ) -> Result<(GpuTensor, &'b Tensor, &'b Tensor, Conv2dShape)> {
        let y = self.alloc(path, shapes::conv2d(path, x_shape, &conv)?)?;
        let (w, bias, shape) = self.conv2d_weights(path, conv)?;
        Ok((y, w, bias, shape))
    }

    /// `nn.Conv2d`, with the residual connection fused into the GEMM where every tensor is one
    /// buffer.
    fn conv2d_with(
        &mut self,
        path: &str,
        x: &GpuTensor,
        conv: Conv2d,
        residual: Option<(&GpuTensor, f64)>,
    ) -> Result<GpuTensor> {
        self.traced(path, |r| {
            let (y, w, bias, shape) = r.conv2d_parts(path, x.shape, conv)?;
            if let Some((res, _)) = residual
                && res.shape != y.shape
            {
                return Err(mismatch(
                    path,
                    format!("{} and {} differ", y.shape, res.shape),
                ));
            }
            // Every tensor one buffer: one dispatch, the residual added by the epilogue.
            let residual_whole = residual.is_none_or(|(res, _)| res.single(path).is_ok());
            if let (Ok(xs), Ok(ys), true) = (x.single(path), y.single(path), residual_whole) {
                let fused = match residual {
                    Some((res, scale)) => Some(Residual {
                        tensor: res.single(path)?,
                        factor: scale as f32,
                    }),
                    None => None,
                };
                let whole = Conv2dChunk::WHOLE;
                ops::conv2d_with_residual(r.batch, xs, w, Some(bias), ys, shape, whole, fused)?;
                return Ok(y);
            }
            for item in 0..x.shape.batch() {
                let inputs = r.item_pieces(x, item, true)?;
                for (oc_offset, out, exact) in r.item_pieces(&y, item, false)? {
                    for (i, (ic_offset, input, _)) in inputs.iter().enumerate() {
                        let chunk = Conv2dChunk {
                            ic_offset: *ic_offset,
                            oc_offset,
                            accumulate: i > 0,
                        };
                        ops::conv2d(r.batch, input, w, Some(bias), &out, shape, chunk)?;
                    }
                    if !exact {
                        let piece = Piece {
                            item: Some(item),
                            start: 0,
                            end: axis_len(y.shape),
                        };
                        r.copy(&y, piece, &out, false)?;
                    }
                }
            }
            // Split tensors: the residual connection as a pass of its own, piece by piece.
            if let Some((res, scale)) = residual {
                r.per_piece(&[(&y, Use::Update), (res, Use::Read)], |batch, t, _| {
                    Ok(ops::residual_add(batch, &t[1], &t[0], scale as f32)?)
                })?;
            }
            Ok(y)
        })
    }

    /// The weights of a layer norm that a projection applies to its input.
    fn input_layer_norm(&self, norm: InputNorm<'_>) -> Result<ops::InputLayerNorm<'b>> {
        Ok(ops::InputLayerNorm {
            gamma: self.weight(format!("{}.weight", norm.path))?,
            beta: self.weight(format!("{}.bias", norm.path))?,
            eps: norm.eps as f32,
        })
    }

    /// `nn.Linear`, with the residual connection fused into the GEMM.
    fn linear_with(
        &mut self,
        path: &str,
        x: &GpuTensor,
        out_features: usize,
        bias: bool,
        (residual, norm): (Option<(&GpuTensor, f64)>, Option<InputNorm<'_>>),
    ) -> Result<GpuTensor> {
        self.traced(path, |r| {
            let y = r.alloc(path, shapes::linear(path, x.shape, out_features)?)?;
            let w = r.weight(format!("{path}.weight"))?;
            let b = if bias {
                Some(r.weight(format!("{path}.bias"))?)
            } else {
                None
            };
            let norm = norm.map(|n| r.input_layer_norm(n)).transpose()?;
            if norm.is_some() && residual.is_some() {
                return Err(mismatch(
                    path,
                    "a layer norm and a residual in one linear".into(),
                ));
            }
            match residual {
                None => r.per_piece(&[(x, Use::Read), (&y, Use::Write)], |batch, t, _| {
                    match norm {
                        Some(n) => ops::linear_with_layer_norm(batch, &t[0], n, w, b, &t[1])?,
                        None => ops::linear(batch, &t[0], w, b, &t[1])?,
                    }
                    Ok(())
                })?,
                Some((res, scale)) => {
                    if res.shape != y.shape {
                        return Err(mismatch(
                            path,
                            format!("{} and {} differ", y.shape, res.shape),
                        ));
                    }
                    let operands = [(x, Use::Read), (&y, Use::Write), (res, Use::Read)];
                    r.per_piece(&operands, |batch, t, _| {
                        let residual = Residual {
                            tensor: &t[2],
                            factor: scale as f32,
                        };
                        Ok(ops::linear_with_residual(
                            batch,
                            &t[0],
                            w,
                            b,
                            &t[1],
                            Some(residual),
                        )?)
                    })?;
                }
            }
            Ok(y)
        })
    }

    /// A recorder for `part` (`unet`, `vae`, `text_encoder`) with its weights, splitting
    /// tensors as the planner does for `norm_groups` and this context's chunk budget.
    pub fn new(
        batch: &'b mut Batch<'c>,
        weights: &'b Weights,
        part: &'static str,
        norm_groups: usize,
    ) -> Self {
        let max_binding = batch.context().chunk_budget();
        Self {
            batch,
            weights,
            part,
            norm_groups,
            max_binding,
            inputs: HashMap::new(),
            host_ids: None,
            outputs: HashMap::new(),
            issued: Vec::new(),
        }
    }

    /// Gives the part's input `name`.
    pub fn with_input(mut self, name: impl Into<String>, t: Tensor) -> Self {
        self.inputs.insert(name.into(), t);
        self
    }

    /// Gives the CPU copy of the token ids (checked against the vocabulary).
    pub fn with_host_ids(mut self, ids: &'b [u32]) -> Self {
        self.host_ids = Some(ids);
        self
    }

    /// The output `name` the walk produced.
    pub fn take_output(&mut self, name: &str) -> Result<Tensor> {
        self.outputs
            .remove(name)
            .ok_or_else(|| mismatch(self.part, format!("no output `{name}`")))
    }

    /// What each op issued, in order.
    pub fn issued(&self) -> &[Issued] {
        &self.issued
    }

    fn weight(&self, name: String) -> Result<&'b Tensor> {
        self.weights
            .get(&name)
            .ok_or(ModelError::NotLoaded { name })
    }

    /// A new tensor of `shape`, split as the planner splits it.
    fn alloc(&self, path: &str, shape: Shape) -> Result<GpuTensor> {
        let name = format!("{}.{path}", self.part);
        let specs = chunk_layout(&name, &shape, self.norm_groups, self.max_binding)?;
        let ctx = self.batch.context();
        let chunks = specs
            .into_iter()
            .map(|spec| Ok((spec, ctx.empty(&piece_dims(shape, spec), DType::F32)?)))
            .collect::<Result<_>>()?;
        Ok(GpuTensor { shape, chunks })
    }

    /// Runs `op` on `path`, noting the commands it recorded.
    fn traced<T>(&mut self, path: &str, op: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        let before = self.batch.len();
        let out = op(self)?;
        self.issued.push(Issued {
            path: path.to_owned(),
            commands: self.batch.len() - before,
        });
        Ok(out)
    }

    /// Calls `f` once per piece of the finest common split of `operands` (which share batch
    /// size and split axis length) with each operand's buffer for that piece, copying pieces in
    /// and out where an operand is split otherwise.
    fn per_piece(
        &mut self,
        operands: &[(&GpuTensor, Use)],
        mut f: impl FnMut(&mut Batch<'c>, &[Tensor], Piece) -> Result<()>,
    ) -> Result<()> {
        if operands
            .iter()
            .all(|(t, _)| t.chunks.len() == 1 && t.chunks[0].0.item.is_none())
        {
            let whole: Vec<Tensor> = operands
                .iter()
                .map(|(t, _)| t.chunks[0].1.clone())
                .collect();
            let axis = axis_len(operands[0].0.shape);
            return f(
                self.batch,
                &whole,
                Piece {
                    item: None,
                    start: 0,
                    end: axis,
                },
            );
        }
        let (n, axis) = (operands[0].0.shape.batch(), axis_len(operands[0].0.shape));
        for item in 0..n {
            let mut cuts = vec![0, axis];
            for (t, _) in operands {
                for (spec, _) in &t.chunks {
                    if spec.item == Some(item) {
                        cuts.extend([spec.start, spec.end]);
                    }
                }
            }
            cuts.sort_unstable();
            cuts.dedup();
            for range in cuts.windows(2) {
                let piece = Piece {
                    item: Some(item),
                    start: range[0],
                    end: range[1],
                };
                let mut views = Vec::with_capacity(operands.len());
                let mut copies_back = Vec::new();
                for (i, (t, use_)) in operands.iter().enumerate() {
                    let (view, exact) = self.view(t, piece)?;
                    if !exact && *use_ != Use::Write {
                        self.copy(t, piece, &view, true)?;
                    }
                    if !exact && *use_ != Use::Read {
                        copies_back.push(i);
                    }
                    views.push(view);
                }
                f(self.batch, &views, piece)?;
                for i in copies_back {
                    self.copy(operands[i].0, piece, &views[i], false)?;
                }
            }
        }
        Ok(())
    }

    /// The buffer holding exactly `piece` of `t` (`true`), or a new one of its size (`false`).
    fn view(&self, t: &GpuTensor, piece: Piece) -> Result<(Tensor, bool)> {
        for (spec, tensor) in &t.chunks {
            let whole_single_item = spec.item.is_none() && t.shape.batch() == 1;
            let same = (spec.item == piece.item || whole_single_item)
                && (spec.start, spec.end) == (piece.start, piece.end);
            if same {
                let dims = piece_dims(t.shape, item_spec(piece));
                return Ok((tensor.reshape(&dims)?, true));
            }
        }
        let dims = piece_dims(t.shape, item_spec(piece));
        Ok((self.batch.context().empty(&dims, DType::F32)?, false))
    }

    /// Copies `piece` of `t` into `buffer` (`into_piece`) or back from it.
    fn copy(
        &mut self,
        t: &GpuTensor,
        piece: Piece,
        buffer: &Tensor,
        into_piece: bool,
    ) -> Result<()> {
        let unit = unit_len(t.shape);
        let item = piece.item.unwrap_or(0);
        let (chunk_spec, chunk) = t
            .chunks
            .iter()
            .find(|(spec, _)| {
                (spec.item.is_none() || spec.item == Some(item))
                    && spec.start <= piece.start
                    && piece.end <= spec.end
            })
            .ok_or_else(|| {
                mismatch("chunks", format!("no chunk holds {piece:?} of {}", t.shape))
            })?;
        let offset = match chunk_spec.item {
            None => (item * axis_len(t.shape) + piece.start) * unit,
            Some(_) => (piece.start - chunk_spec.start) * unit,
        };
        let len = (piece.end - piece.start) * unit;
        if into_piece {
            self.batch.copy_f32(chunk, offset, buffer, 0, len)?;
        } else {
            self.batch.copy_f32(buffer, 0, chunk, offset, len)?;
        }
        Ok(())
    }

    /// The pieces of item `item` of `t` along its split axis as `(start, buffer, exact)`; when
    /// `t` is one buffer holding several items, the item is a new buffer (`exact` false),
    /// filled from `t` when `read`.
    fn item_pieces(
        &mut self,
        t: &GpuTensor,
        item: usize,
        read: bool,
    ) -> Result<Vec<(usize, Tensor, bool)>> {
        let mut pieces = Vec::new();
        for (spec, tensor) in &t.chunks {
            match spec.item {
                Some(i) if i == item => pieces.push((spec.start, tensor.clone(), true)),
                Some(_) => {}
                None if t.shape.batch() == 1 => pieces.push((0, tensor.clone(), true)),
                None => {
                    let piece = Piece {
                        item: Some(item),
                        start: 0,
                        end: axis_len(t.shape),
                    };
                    let (view, _) = self.view(t, piece)?;
                    if read {
                        self.copy(t, piece, &view, true)?;
                    }
                    pieces.push((0, view, false));
                }
            }
        }
        Ok(pieces)
    }
}

impl<'c> Recorder for GpuRecorder<'_, 'c> {
    type Tensor = GpuTensor;
    type Error = ModelError;

    fn shape(&self, t: &GpuTensor) -> Shape {
        t.shape
    }

    fn input(&mut self, name: &str, shape: Shape) -> Result<GpuTensor> {
        let t = self
            .inputs
            .get(name)
            .ok_or_else(|| ModelError::MissingInput {
                part: self.part,
                name: name.to_owned(),
            })?;
        let dims = piece_dims(shape, whole_spec(shape));
        let t = t.reshape(&dims).map_err(|_| {
            mismatch(
                self.part,
                format!("the input `{name}` is {:?}, expected {shape}", t.shape()),
            )
        })?;
        let layout = chunk_layout(name, &shape, self.norm_groups, self.max_binding)?;
        if layout.len() > 1 {
            return Err(PlanError::Limit {
                name: format!("{}.{name}", self.part),
                needed: shape.bytes(),
                max: self.max_binding,
            }
            .into());
        }
        Ok(GpuTensor {
            shape,
            chunks: vec![(whole_spec(shape), t)],
        })
    }

    fn output(&mut self, name: &str, t: &GpuTensor) -> Result<()> {
        let whole = match t.single(name) {
            Ok(whole) => whole.clone(),
            Err(_) => {
                // A result bigger than one binding is read back, never bound: join its chunks.
                let dims = piece_dims(t.shape, whole_spec(t.shape));
                let joined = self.batch.context().empty(&dims, DType::F32)?;
                let unit = unit_len(t.shape);
                let axis = axis_len(t.shape);
                for (spec, chunk) in &t.chunks {
                    let item = spec.item.unwrap_or(0);
                    let offset = (item * axis + spec.start) * unit;
                    self.batch
                        .copy_f32(chunk, 0, &joined, offset, chunk.len())?;
                }
                joined
            }
        };
        self.outputs.insert(name.to_owned(), whole);
        Ok(())
    }

    fn conv2d(&mut self, path: &str, x: &GpuTensor, conv: Conv2d) -> Result<GpuTensor> {
        self.conv2d_with(path, x, conv, None)
    }

    fn conv2d_residual(
        &mut self,
        path: &str,
        x: &GpuTensor,
        conv: Conv2d,
        r: &GpuTensor,
        scale: f64,
    ) -> Result<GpuTensor> {
        self.conv2d_with(path, x, conv, Some((r, scale)))
    }

    fn conv2d_to_tokens(&mut self, path: &str, x: &GpuTensor, conv: Conv2d) -> Result<GpuTensor> {
        self.traced(path, |r| {
            let (w, bias, shape) = r.conv2d_weights(path, conv)?;
            let Shape::Nchw { n, c, h, w: width } = shapes::conv2d(path, x.shape, &conv)? else {
                return Err(mismatch(
                    path,
                    "the convolution's output is not NCHW".into(),
                ));
            };
            let y = r.alloc(
                path,
                Shape::Tokens {
                    n,
                    l: h * width,
                    d: c,
                },
            )?;
            let channels_last = y.single(path)?.reshape(&[n, h, width, c])?;
            let layouts = Conv2dLayouts {
                x_tokens: false,
                y_tokens: true,
            };
            let xs = x.single(path)?;
            ops::conv2d_in_layouts(
                r.batch,
                xs,
                w,
                Some(bias),
                &channels_last,
                shape,
                layouts,
                None,
            )?;
            Ok(y)
        })
    }

    fn conv2d_residual_from_tokens(
        &mut self,
        path: &str,
        x: &GpuTensor,
        size: (usize, usize),
        conv: Conv2d,
        res: &GpuTensor,
        scale: f64,
    ) -> Result<GpuTensor> {
        self.traced(path, |r| {
            let Shape::Nchw { n, c, h, w: width } = shapes::to_nchw(path, x.shape, size)? else {
                return Err(mismatch(path, "the tokens are not an image".into()));
            };
            let nchw = Shape::Nchw { n, c, h, w: width };
            let (y, w, bias, shape) = r.conv2d_parts(path, nchw, conv)?;
            if res.shape != y.shape {
                return Err(mismatch(
                    path,
                    format!("{} and {} differ", y.shape, res.shape),
                ));
            }
            let channels_last = x.single(path)?.reshape(&[n, h, width, c])?;
            let layouts = Conv2dLayouts {
                x_tokens: true,
                y_tokens: false,
            };
            let residual = Residual {
                tensor: res.single(path)?,
                factor: scale as f32,
            };
            let ys = y.single(path)?;
            let fused = Some(residual);
            ops::conv2d_in_layouts(
                r.batch,
                &channels_last,
                w,
                Some(bias),
                ys,
                shape,
                layouts,
                fused,
            )?;
            Ok(y)
        })
    }

    fn conv2d_channel_bias(
        &mut self,
        path: &str,
        x: &GpuTensor,
        conv: Conv2d,
        (t, offset): (&GpuTensor, usize),
    ) -> Result<GpuTensor> {
        self.traced(path, |r| {
            let (y, w, bias, shape) = r.conv2d_parts(path, x.shape, conv)?;
            let tensor = t.single(path)?;
            let (xs, ys) = (x.single(path)?, y.single(path)?);
            let channel_bias = ops::ChannelBias { tensor, offset };
            ops::conv2d_with_channel_bias(r.batch, xs, w, Some(bias), ys, shape, channel_bias)?;
            Ok(y)
        })
    }

    fn linear(
        &mut self,
        path: &str,
        x: &GpuTensor,
        out_features: usize,
        bias: bool,
    ) -> Result<GpuTensor> {
        self.linear_with(path, x, out_features, bias, (None, None))
    }

    fn linear_residual(
        &mut self,
        path: &str,
        x: &GpuTensor,
        out_features: usize,
        bias: bool,
        residual: (&GpuTensor, f64),
    ) -> Result<GpuTensor> {
        self.linear_with(path, x, out_features, bias, (Some(residual), None))
    }

    fn group_norm(&mut self, path: &str, x: &GpuTensor, norm: GroupNorm) -> Result<GpuTensor> {
        self.traced(path, |r| {
            let (_, c, _, _) = record::nchw(r, path, x)?;
            let y = r.alloc(path, x.shape)?;
            let gamma = r.weight(format!("{path}.weight"))?;
            let beta = r.weight(format!("{path}.bias"))?;
            let group_size = c / norm.groups.max(1);
            if group_size == 0 || chunk_group_size(c, norm.groups) != group_size {
                return Err(PlanError::Architecture {
                    part: "group norm",
                    message: format!("{path}: {} groups do not divide {c} channels", norm.groups),
                }
                .into());
            }
            r.per_piece(&[(x, Use::Read), (&y, Use::Write)], |batch, t, piece| {
                if (piece.end - piece.start) % group_size != 0 {
                    return Err(mismatch(path, format!("{piece:?} holds part of a group")));
                }
                let shape = GroupNormShape {
                    groups: (piece.end - piece.start) / group_size,
                    eps: norm.eps as f32,
                    silu: norm.silu,
                    c_offset: piece.start,
                };
                Ok(ops::group_norm(batch, &t[0], gamma, beta, &t[1], shape)?)
            })?;
            Ok(y)
        })
    }

    fn group_norm_of_concat(
        &mut self,
        path: &str,
        [a, b]: [&GpuTensor; 2],
        norm: GroupNorm,
    ) -> Result<GpuTensor> {
        self.traced(path, |r| {
            // The launcher checks the groups (the planner refused bad ones already).
            let y = r.alloc(path, shapes::concat(path, a.shape, b.shape)?)?;
            let gamma = r.weight(format!("{path}.weight"))?;
            let beta = r.weight(format!("{path}.bias"))?;
            let shape = GroupNormShape {
                groups: norm.groups,
                eps: norm.eps as f32,
                silu: norm.silu,
                c_offset: 0,
            };
            let ab = [a.single(path)?, b.single(path)?];
            ops::group_norm_of_concat(r.batch, ab, gamma, beta, y.single(path)?, shape)?;
            Ok(y)
        })
    }

    fn conv2d_of_concat(
        &mut self,
        path: &str,
        [a, b]: [&GpuTensor; 2],
        conv: Conv2d,
    ) -> Result<GpuTensor> {
        self.traced(path, |r| {
            let (y, w, bias, shape) =
                r.conv2d_parts(path, shapes::concat(path, a.shape, b.shape)?, conv)?;
            let ab = [a.single(path)?, b.single(path)?];
            ops::conv2d_of_concat(r.batch, ab, w, Some(bias), y.single(path)?, shape)?;
            Ok(y)
        })
    }

    fn linear_stacked(
        &mut self,
        path: &str,
        x: &GpuTensor,
        layers: &[(&str, usize)],
        bias: bool,
        norm: Option<InputNorm<'_>>,
    ) -> Result<GpuTensor> {
        // The loader stacked the layers' weights as `<path>.weight` and `<path>.bias`.
        let out = layers.iter().map(|(_, o)| o).sum();
        match norm {
            Some(n) => self.linear_normed(path, x, out, bias, n),
            None => self.linear_with(path, x, out, bias, (None, None)),
        }
    }

    fn linear_normed(
        &mut self,
        path: &str,
        x: &GpuTensor,
        out_features: usize,
        bias: bool,
        norm: InputNorm<'_>,
    ) -> Result<GpuTensor> {
        self.linear_with(path, x, out_features, bias, (None, Some(norm)))
    }

    fn layer_norm(&mut self, path: &str, x: &GpuTensor, eps: f64) -> Result<GpuTensor> {
        self.traced(path, |r| {
            let y = r.alloc(path, x.shape)?;
            let gamma = r.weight(format!("{path}.weight"))?;
            let beta = r.weight(format!("{path}.bias"))?;
            r.per_piece(&[(x, Use::Read), (&y, Use::Write)], |batch, t, _| {
                Ok(ops::layer_norm(
                    batch, &t[0], gamma, beta, &t[1], eps as f32,
                )?)
            })?;
            Ok(y)
        })
    }

    fn activation(&mut self, path: &str, x: &GpuTensor, f: Activation) -> Result<GpuTensor> {
        self.traced(path, |r| {
            let y = r.alloc(path, x.shape)?;
            r.per_piece(&[(x, Use::Read), (&y, Use::Write)], |batch, t, _| {
                Ok(ops::activation(batch, f, &t[0], &t[1])?)
            })?;
            Ok(y)
        })
    }

    fn residual_add(
        &mut self,
        path: &str,
        x: GpuTensor,
        r: &GpuTensor,
        scale: f64,
    ) -> Result<GpuTensor> {
        self.traced(path, |rec| {
            if x.shape != r.shape {
                return Err(mismatch(
                    path,
                    format!("{} and {} differ", x.shape, r.shape),
                ));
            }
            rec.per_piece(&[(&x, Use::Update), (r, Use::Read)], |batch, t, _| {
                Ok(ops::residual_add(batch, &t[1], &t[0], scale as f32)?)
            })?;
            Ok(x)
        })
    }

    fn to_tokens(&mut self, path: &str, x: &GpuTensor) -> Result<GpuTensor> {
        self.traced(path, |r| {
            let y = r.alloc(path, shapes::to_tokens(path, x.shape)?)?;
            ops::layout_nchw_to_nlc(r.batch, x.single(path)?, y.single(path)?)?;
            Ok(y)
        })
    }

    fn to_nchw(&mut self, path: &str, x: &GpuTensor, size: (usize, usize)) -> Result<GpuTensor> {
        self.traced(path, |r| {
            let y = r.alloc(path, shapes::to_nchw(path, x.shape, size)?)?;
            let Shape::Nchw { n, c, h, w } = y.shape else {
                return Err(mismatch(path, "the output is not NCHW".into()));
            };
            let flat = y.single(path)?.reshape(&[n, c, h * w])?;
            ops::layout_nlc_to_nchw(r.batch, x.single(path)?, &flat)?;
            Ok(y)
        })
    }

    fn concat(&mut self, path: &str, a: &GpuTensor, b: &GpuTensor) -> Result<GpuTensor> {
        self.traced(path, |r| {
            let y = r.alloc(path, shapes::concat(path, a.shape, b.shape)?)?;
            // Token-major tensors concatenate along features: rows of `[n * l, d]`.
            let rows = |t: &GpuTensor| -> Result<Tensor> {
                let whole = t.single(path)?;
                Ok(match t.shape {
                    Shape::Tokens { n, l, d } => whole.reshape(&[n * l, d])?,
                    _ => whole.clone(),
                })
            };
            ops::concat_channels(r.batch, &rows(a)?, &rows(b)?, &rows(&y)?)?;
            Ok(y)
        })
    }

    fn upsample_nearest(
        &mut self,
        path: &str,
        x: &GpuTensor,
        size: (usize, usize),
    ) -> Result<GpuTensor> {
        self.traced(path, |r| {
            let y = r.alloc(path, shapes::upsample(path, x.shape, size)?)?;
            r.per_piece(&[(x, Use::Read), (&y, Use::Write)], |batch, t, _| {
                Ok(ops::upsample_nearest(batch, &t[0], &t[1])?)
            })?;
            Ok(y)
        })
    }

    fn attention_kv(
        &mut self,
        path: &str,
        q: &GpuTensor,
        kv: &GpuTensor,
        heads: Heads,
    ) -> Result<GpuTensor> {
        self.traced(path, |r| {
            let (n, q_len, width) = record::tokens(r, path, q)?;
            let (_, kv_len, _) = record::tokens(r, path, kv)?;
            let o = r.alloc(path, q.shape)?;
            let kv_tensor = kv.single(path)?;
            let features = [
                TokenFeatures::all(q.single(path)?, width),
                TokenFeatures {
                    tensor: kv_tensor,
                    offset: 0,
                    stride: 2 * width,
                },
                TokenFeatures {
                    tensor: kv_tensor,
                    offset: width,
                    stride: 2 * width,
                },
            ];
            let shape = attention_shape(heads, n, q_len, kv_len);
            ops::attention_of_features(r.batch, features, o.single(path)?, shape)?;
            Ok(o)
        })
    }

    fn attention_packed(&mut self, path: &str, qkv: &GpuTensor, heads: Heads) -> Result<GpuTensor> {
        self.traced(path, |r| {
            let (n, l, _) = record::tokens(r, path, qkv)?;
            let o = r.alloc(path, shapes::attention_packed(path, qkv.shape)?)?;
            let width = heads.heads * heads.head_dim;
            let packed = qkv.single(path)?;
            let features = [0, 1, 2].map(|i| TokenFeatures {
                tensor: packed,
                offset: i * width,
                stride: 3 * width,
            });
            let shape = attention_shape(heads, n, l, l);
            ops::attention_of_features(r.batch, features, o.single(path)?, shape)?;
            Ok(o)
        })
    }

    fn attention(
        &mut self,
        path: &str,
        [q, k, v]: [&GpuTensor; 3],
        heads: Heads,
    ) -> Result<GpuTensor> {
        self.traced(path, |r| {
            let (n, _, _) = record::tokens(r, path, q)?;
            let (_, kv_len, _) = record::tokens(r, path, k)?;
            let o = r.alloc(path, q.shape)?;
            if let (Ok(qs), Ok(ks), Ok(vs), Ok(os)) = (
                q.single(path),
                k.single(path),
                v.single(path),
                o.single(path),
            ) {
                let (_, q_len, _) = record::tokens(r, path, q)?;
                let shape = attention_shape(heads, n, q_len, kv_len);
                ops::attention(r.batch, qs, ks, vs, os, shape)?;
                return Ok(o);
            }
            // Per item: keys and values whole (the planner requires it), queries in chunks.
            let mut keys = Vec::with_capacity(n);
            for item in 0..n {
                let k_item = r.item_pieces(k, item, true)?;
                let v_item = r.item_pieces(v, item, true)?;
                let ([(_, k_item, _)], [(_, v_item, _)]) = (k_item.as_slice(), v_item.as_slice())
                else {
                    return Err(mismatch(
                        path,
                        "keys and values must be whole per item".into(),
                    ));
                };
                keys.push((k_item.clone(), v_item.clone()));
            }
            r.per_piece(&[(q, Use::Read), (&o, Use::Write)], |batch, t, piece| {
                if heads.causal && piece.start > 0 {
                    return Err(ModelError::Unsupported {
                        part: "gpu",
                        what: format!("{path}: causal attention on query chunks"),
                    });
                }
                let (k_item, v_item) = &keys[piece.item.unwrap_or(0)];
                let shape = attention_shape(heads, 1, piece.end - piece.start, kv_len);
                Ok(ops::attention(batch, &t[0], k_item, v_item, &t[1], shape)?)
            })?;
            Ok(o)
        })
    }

    fn linear_geglu(
        &mut self,
        path: &str,
        x: &GpuTensor,
        out_features: usize,
        norm: Option<InputNorm<'_>>,
    ) -> Result<GpuTensor> {
        self.traced(path, |r| {
            let y = r.alloc(path, shapes::linear(path, x.shape, out_features)?)?;
            // The loader put the projection's value and gate rows in pairs.
            let w = r.weight(format!("{path}.proj.paired_weight"))?;
            let b = r.weight(format!("{path}.proj.paired_bias"))?;
            let norm = norm.map(|n| r.input_layer_norm(n)).transpose()?;
            r.per_piece(&[(x, Use::Read), (&y, Use::Write)], |batch, t, _| {
                Ok(ops::linear_geglu(batch, &t[0], norm, w, Some(b), &t[1])?)
            })?;
            Ok(y)
        })
    }

    fn sinusoids(&mut self, path: &str, t: &GpuTensor, spec: Sinusoids) -> Result<GpuTensor> {
        self.traced(path, |r| {
            let y = r.alloc(path, shapes::sinusoids(path, t.shape, &spec)?)?;
            let values = t.single(path)?;
            let rows = y.single(path)?.reshape(&[values.len(), spec.dim])?;
            ops::timestep_embedding(
                r.batch,
                values,
                &rows,
                spec.flip_sin_to_cos,
                spec.freq_shift as f32,
            )?;
            Ok(y)
        })
    }

    fn embedding(
        &mut self,
        path: &str,
        ids: &GpuTensor,
        _vocab: usize,
        len: usize,
        dim: usize,
    ) -> Result<GpuTensor> {
        self.traced(path, |r| {
            let y = r.alloc(path, shapes::embedding(path, ids.shape, len, dim)?)?;
            let table = r.weight(format!("{path}.token_embedding.weight"))?;
            let positions = r.weight(format!("{path}.position_embedding.weight"))?;
            let host = r.host_ids.ok_or_else(|| ModelError::MissingInput {
                part: r.part,
                name: "input_ids (host copy)".into(),
            })?;
            let ids = ids.single(path)?;
            let ids = ids.reshape(&[ids.len() / len.max(1), len])?;
            ops::embedding(r.batch, &ids, host, table, positions, y.single(path)?)?;
            Ok(y)
        })
    }

    fn gather_rows(&mut self, path: &str, x: &GpuTensor, rows: &[usize]) -> Result<GpuTensor> {
        self.traced(path, |r| {
            let y = r.alloc(path, shapes::gather_rows(path, x.shape, rows)?)?;
            let Shape::Tokens { l, d, .. } = x.shape else {
                return Err(mismatch(path, "the input is not token-major".into()));
            };
            let (src, dst) = (x.single(path)?, y.single(path)?);
            for (item, &row) in rows.iter().enumerate() {
                r.batch
                    .copy_f32(src, (item * l + row) * d, dst, item * d, d)?;
            }
            Ok(y)
        })
    }
}

/// Tensors that do not fit `op`.
fn mismatch(op: &str, message: String) -> ModelError {
    ModelError::Mismatch {
        op: op.to_owned(),
        message,
    }
}

/// The spec of an unsplit tensor.
fn whole_spec(shape: Shape) -> ChunkSpec {
    ChunkSpec {
        item: None,
        start: 0,
        end: axis_len(shape),
        bytes: shape.bytes(),
    }
}

/// The spec of a piece (for its dims only).
fn item_spec(piece: Piece) -> ChunkSpec {
    ChunkSpec {
        item: Some(piece.item.unwrap_or(0)),
        start: piece.start,
        end: piece.end,
        bytes: 0,
    }
}

/// Length of the split axis: channels (NCHW), tokens, or elements (flat).
fn axis_len(shape: Shape) -> usize {
    match shape {
        Shape::Nchw { c, .. } => c,
        Shape::Tokens { l, .. } => l,
        Shape::Flat { len } => len,
    }
}

/// Elements per step along the split axis.
fn unit_len(shape: Shape) -> usize {
    match shape {
        Shape::Nchw { h, w, .. } => h * w,
        Shape::Tokens { d, .. } => d,
        Shape::Flat { .. } => 1,
    }
}

/// The dims of the buffer holding `spec` of a tensor of `shape`.
fn piece_dims(shape: Shape, spec: ChunkSpec) -> Vec<usize> {
    let n = if spec.item.is_some() {
        1
    } else {
        shape.batch()
    };
    let len = spec.end - spec.start;
    match shape {
        Shape::Nchw { h, w, .. } => vec![n, len, h, w],
        Shape::Tokens { d, .. } => vec![n, len, d],
        Shape::Flat { .. } => vec![len],
    }
}

/// One attention call's sizes, scaled by `1 / sqrt(head_dim)`.
fn attention_shape(heads: Heads, batch: usize, q_len: usize, kv_len: usize) -> AttentionShape {
    AttentionShape {
        batch,
        heads: heads.heads,
        head_dim: heads.head_dim,
        q_len,
        kv_len,
        causal: heads.causal,
        scale: 1.0 / (heads.head_dim as f32).sqrt(),
    }
}
