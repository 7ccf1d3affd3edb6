//! The plan recorder: each op of the networks becomes an [`Op`](super::Op) with the buffers it
//! binds, as the GPU recorder will bind them (the same chunk layouts, the same in-place
//! residual adds, the same extra buffers such as group-norm statistics). Ops the GPU recorder
//! cannot split (layout changes, concatenation, embeddings) require unchunked operands here,
//! so a plan that passes is one the executor can run.

use super::PlanError;
use super::graph::{
    Graph, OpKind, Shape, TensorId, WeightDtype, read, update, weight as weight_arg, write,
};
use crate::record::{self, Conv2d, GroupNorm, Heads, InputNorm, Recorder, Sinusoids, shapes};
use sd_kernels::ops::Activation;

impl Recorder for Graph {
    type Tensor = TensorId;
    type Error = PlanError;

    fn shape(&self, t: &TensorId) -> Shape {
        Graph::shape(self, *t)
    }

    fn input(&mut self, name: &str, shape: Shape) -> Result<TensorId, PlanError> {
        let t = self.tensor(name, shape)?;
        self.op(
            &format!("inputs.{name}"),
            OpKind::Input,
            vec![write("input", t)],
        )?;
        Ok(t)
    }

    fn output(&mut self, name: &str, t: &TensorId) -> Result<(), PlanError> {
        self.op(
            &format!("outputs.{name}"),
            OpKind::Output,
            vec![read("output", *t)],
        )
    }

    fn conv2d(&mut self, path: &str, x: &TensorId, conv: Conv2d) -> Result<TensorId, PlanError> {
        self.conv2d_op(path, &[*x], conv, ConvEpilogue::None, (None, false))
    }

    fn conv2d_residual(
        &mut self,
        path: &str,
        x: &TensorId,
        conv: Conv2d,
        r: &TensorId,
        scale: f64,
    ) -> Result<TensorId, PlanError> {
        self.conv2d_op(
            path,
            &[*x],
            conv,
            ConvEpilogue::Residual(*r, scale),
            (None, false),
        )
    }

    fn conv2d_to_tokens(
        &mut self,
        path: &str,
        x: &TensorId,
        conv: Conv2d,
    ) -> Result<TensorId, PlanError> {
        self.conv2d_op(path, &[*x], conv, ConvEpilogue::None, (None, true))
    }

    fn conv2d_residual_from_tokens(
        &mut self,
        path: &str,
        x: &TensorId,
        size: (usize, usize),
        conv: Conv2d,
        r: &TensorId,
        scale: f64,
    ) -> Result<TensorId, PlanError> {
        self.require_single(path, "r", *r)?;
        let epilogue = ConvEpilogue::Residual(*r, scale);
        self.conv2d_op(path, &[*x], conv, epilogue, (Some(size), false))
    }

    fn conv2d_channel_bias(
        &mut self,
        path: &str,
        x: &TensorId,
        conv: Conv2d,
        (t, offset): (&TensorId, usize),
    ) -> Result<TensorId, PlanError> {
        // The executor adds the channel bias on whole tensors only.
        self.require_single(path, "x", *x)?;
        let epilogue = ConvEpilogue::ChannelBias(*t, offset);
        self.conv2d_op(path, &[*x], conv, epilogue, (None, false))
    }

    fn linear(
        &mut self,
        path: &str,
        x: &TensorId,
        out_features: usize,
        bias: bool,
    ) -> Result<TensorId, PlanError> {
        self.linear_op(path, x, out_features, bias, LinearWeights::File, None, None)
    }

    fn linear_residual(
        &mut self,
        path: &str,
        x: &TensorId,
        out_features: usize,
        bias: bool,
        (r, scale): (&TensorId, f64),
    ) -> Result<TensorId, PlanError> {
        let weights = LinearWeights::File;
        self.linear_op(
            path,
            x,
            out_features,
            bias,
            weights,
            Some((*r, scale)),
            None,
        )
    }

    fn group_norm(
        &mut self,
        path: &str,
        x: &TensorId,
        norm: GroupNorm,
    ) -> Result<TensorId, PlanError> {
        self.group_norm_op(path, &[*x], norm)
    }

    fn group_norm_of_concat(
        &mut self,
        path: &str,
        [a, b]: [&TensorId; 2],
        norm: GroupNorm,
    ) -> Result<TensorId, PlanError> {
        self.group_norm_op(path, &[*a, *b], norm)
    }

    fn conv2d_of_concat(
        &mut self,
        path: &str,
        [a, b]: [&TensorId; 2],
        conv: Conv2d,
    ) -> Result<TensorId, PlanError> {
        self.conv2d_op(path, &[*a, *b], conv, ConvEpilogue::None, (None, false))
    }

    fn linear_stacked(
        &mut self,
        path: &str,
        x: &TensorId,
        layers: &[(&str, usize)],
        bias: bool,
        norm: Option<InputNorm<'_>>,
    ) -> Result<TensorId, PlanError> {
        let out = layers.iter().map(|(_, o)| o).sum();
        let weights = LinearWeights::Stacked(layers);
        self.linear_op(path, x, out, bias, weights, None, norm)
    }

    fn linear_normed(
        &mut self,
        path: &str,
        x: &TensorId,
        out_features: usize,
        bias: bool,
        norm: InputNorm<'_>,
    ) -> Result<TensorId, PlanError> {
        let weights = LinearWeights::File;
        self.linear_op(path, x, out_features, bias, weights, None, Some(norm))
    }

    fn layer_norm(&mut self, path: &str, x: &TensorId, eps: f64) -> Result<TensorId, PlanError> {
        let (_, _, d) = record::tokens(self, path, x)?;
        let y = self.tensor(path, self.shape(*x))?;
        let gamma = self.weight(format!("{path}.weight"), &[d]);
        let beta = self.weight(format!("{path}.bias"), &[d]);
        self.op(
            path,
            OpKind::LayerNorm { eps },
            vec![
                read("x", *x),
                weight_arg("gamma", gamma),
                weight_arg("beta", beta),
                write("y", y),
            ],
        )?;
        Ok(y)
    }

    fn activation(
        &mut self,
        path: &str,
        x: &TensorId,
        f: Activation,
    ) -> Result<TensorId, PlanError> {
        let y = self.tensor(path, self.shape(*x))?;
        self.op(
            path,
            OpKind::Activation(f),
            vec![read("x", *x), write("y", y)],
        )?;
        Ok(y)
    }

    fn residual_add(
        &mut self,
        path: &str,
        x: TensorId,
        r: &TensorId,
        scale: f64,
    ) -> Result<TensorId, PlanError> {
        self.same_shape(path, x, *r)?;
        self.op(
            path,
            OpKind::ResidualAdd { scale },
            vec![update("x", x), read("r", *r)],
        )?;
        Ok(x)
    }

    fn to_tokens(&mut self, path: &str, x: &TensorId) -> Result<TensorId, PlanError> {
        self.require_single(path, "x", *x)?;
        let y = self.tensor(path, shapes::to_tokens(path, self.shape(*x))?)?;
        self.require_single(path, "y", y)?;
        self.op(
            path,
            OpKind::NchwToTokens,
            vec![read("x", *x), write("y", y)],
        )?;
        Ok(y)
    }

    fn to_nchw(
        &mut self,
        path: &str,
        x: &TensorId,
        size: (usize, usize),
    ) -> Result<TensorId, PlanError> {
        self.require_single(path, "x", *x)?;
        let y = self.tensor(path, shapes::to_nchw(path, self.shape(*x), size)?)?;
        self.require_single(path, "y", y)?;
        self.op(
            path,
            OpKind::TokensToNchw,
            vec![read("x", *x), write("y", y)],
        )?;
        Ok(y)
    }

    fn concat(&mut self, path: &str, a: &TensorId, b: &TensorId) -> Result<TensorId, PlanError> {
        let y = self.tensor(path, shapes::concat(path, self.shape(*a), self.shape(*b))?)?;
        for (role, t) in [("a", *a), ("b", *b), ("y", y)] {
            self.require_single(path, role, t)?;
        }
        self.op(
            path,
            OpKind::Concat,
            vec![read("a", *a), read("b", *b), write("y", y)],
        )?;
        Ok(y)
    }

    fn upsample_nearest(
        &mut self,
        path: &str,
        x: &TensorId,
        size: (usize, usize),
    ) -> Result<TensorId, PlanError> {
        let y = self.tensor(path, shapes::upsample(path, self.shape(*x), size)?)?;
        self.op(
            path,
            OpKind::UpsampleNearest,
            vec![read("x", *x), write("y", y)],
        )?;
        Ok(y)
    }

    fn attention_kv(
        &mut self,
        path: &str,
        q: &TensorId,
        kv: &TensorId,
        heads: Heads,
    ) -> Result<TensorId, PlanError> {
        // The kernel reads q whole and k, v at offsets within each token of one buffer.
        self.require_single(path, "q", *q)?;
        self.require_single(path, "kv", *kv)?;
        let o = self.tensor(path, self.shape(*q))?;
        self.require_single(path, "o", o)?;
        let kind = OpKind::Attention {
            heads: heads.heads,
            head_dim: heads.head_dim,
            causal: heads.causal,
        };
        let args = vec![read("q", *q), read("kv", *kv), write("o", o)];
        self.op(path, kind, args)?;
        Ok(o)
    }

    fn attention_packed(
        &mut self,
        path: &str,
        qkv: &TensorId,
        heads: Heads,
    ) -> Result<TensorId, PlanError> {
        // The kernel reads q, k and v at offsets within each token: one buffer.
        self.require_single(path, "qkv", *qkv)?;
        let o = self.tensor(path, shapes::attention_packed(path, self.shape(*qkv))?)?;
        let kind = OpKind::Attention {
            heads: heads.heads,
            head_dim: heads.head_dim,
            causal: heads.causal,
        };
        self.op(path, kind, vec![read("qkv", *qkv), write("o", o)])?;
        Ok(o)
    }

    fn attention(
        &mut self,
        path: &str,
        [q, k, v]: [&TensorId; 3],
        heads: Heads,
    ) -> Result<TensorId, PlanError> {
        self.require_whole_items(path, "k", *k)?;
        self.require_whole_items(path, "v", *v)?;
        let o = self.tensor(path, self.shape(*q))?;
        let kind = OpKind::Attention {
            heads: heads.heads,
            head_dim: heads.head_dim,
            causal: heads.causal,
        };
        let args = vec![read("q", *q), read("k", *k), read("v", *v), write("o", o)];
        self.op(path, kind, args)?;
        Ok(o)
    }

    fn linear_geglu(
        &mut self,
        path: &str,
        x: &TensorId,
        out_features: usize,
        norm: Option<InputNorm<'_>>,
    ) -> Result<TensorId, PlanError> {
        let weights = LinearWeights::GegluPairs;
        self.linear_op(path, x, out_features, true, weights, None, norm)
    }

    fn sinusoids(
        &mut self,
        path: &str,
        t: &TensorId,
        spec: Sinusoids,
    ) -> Result<TensorId, PlanError> {
        let y = self.tensor(path, shapes::sinusoids(path, self.shape(*t), &spec)?)?;
        self.require_single(path, "y", y)?;
        let kind = OpKind::TimestepEmbedding {
            dim: spec.dim,
            flip_sin_to_cos: spec.flip_sin_to_cos,
            freq_shift: spec.freq_shift,
        };
        self.op(path, kind, vec![read("t", *t), write("y", y)])?;
        Ok(y)
    }

    fn embedding(
        &mut self,
        path: &str,
        ids: &TensorId,
        vocab: usize,
        len: usize,
        dim: usize,
    ) -> Result<TensorId, PlanError> {
        let y = self.tensor(path, shapes::embedding(path, self.shape(*ids), len, dim)?)?;
        self.require_single(path, "y", y)?;
        let table = self.weight(format!("{path}.token_embedding.weight"), &[vocab, dim]);
        // Positions are added in f32, as transformers does.
        let positions = self.weight_as(
            format!("{path}.position_embedding.weight"),
            &[len, dim],
            WeightDtype::F32,
        );
        let args = vec![
            read("ids", *ids),
            weight_arg("table", table),
            weight_arg("positions", positions),
            write("y", y),
        ];
        self.op(path, OpKind::Embedding, args)?;
        Ok(y)
    }

    fn gather_rows(
        &mut self,
        path: &str,
        x: &TensorId,
        rows: &[usize],
    ) -> Result<TensorId, PlanError> {
        self.require_single(path, "hidden", *x)?;
        let y = self.tensor(path, shapes::gather_rows(path, self.shape(*x), rows)?)?;
        self.op(
            path,
            OpKind::GatherRows,
            vec![read("hidden", *x), write("y", y)],
        )?;
        Ok(y)
    }
}

/// What a planned convolution's epilogue reads besides its own output.
#[derive(Debug, Clone, Copy)]
enum ConvEpilogue {
    /// Nothing.
    None,
    /// A residual connection, `(y + r) * scale`.
    Residual(TensorId, f64),
    /// A per-(item, channel) bias from columns `offset..` of `t`.
    ChannelBias(TensorId, usize),
}

impl Graph {
    /// `nn.GroupNorm` of `xs`: one tensor, or two read in place as their concatenation
    /// (bound whole).
    fn group_norm_op(
        &mut self,
        path: &str,
        xs: &[TensorId],
        norm: GroupNorm,
    ) -> Result<TensorId, PlanError> {
        let x_shape = match *xs {
            [x] => self.shape(x),
            [a, b] => shapes::concat(path, self.shape(a), self.shape(b))?,
            _ => unreachable!("one input or a pair"),
        };
        let Shape::Nchw { n, c, .. } = x_shape else {
            return Err(PlanError::Architecture {
                part: "group norm",
                message: format!("{}: the input is {x_shape}, not NCHW", self.name(path)),
            });
        };
        let GroupNorm { groups, eps, silu } = norm;
        if groups == 0 || !c.is_multiple_of(groups) {
            return Err(PlanError::Architecture {
                part: "group norm",
                message: format!(
                    "{}: {groups} groups do not divide {c} channels",
                    self.name(path)
                ),
            });
        }
        let inputs: Vec<_> = ["x", "x2"]
            .into_iter()
            .zip(xs)
            .map(|(role, &t)| read(role, t))
            .collect();
        let stats_path = format!("{path}.stats");
        let stats = self.tensor(
            &stats_path,
            Shape::Flat {
                len: n * groups * 2,
            },
        )?;
        let mut args = inputs.clone();
        args.push(write("stats", stats));
        self.op(&stats_path, OpKind::GroupNormStats { groups, eps }, args)?;
        let gamma = self.weight(format!("{path}.weight"), &[c]);
        let beta = self.weight(format!("{path}.bias"), &[c]);
        let y = self.tensor(path, x_shape)?;
        if xs.len() > 1 {
            // A concatenation is read in place whole, and normalized into one buffer.
            for (role, &t) in ["x", "x2"].iter().zip(xs) {
                self.require_single(path, role, t)?;
            }
            self.require_single(path, "y", y)?;
        }
        let mut args = inputs;
        args.extend([
            read("stats", stats),
            weight_arg("gamma", gamma),
            weight_arg("beta", beta),
            write("y", y),
        ]);
        self.op(path, OpKind::GroupNormApply { groups, eps, silu }, args)?;
        Ok(y)
    }

    /// `nn.Conv2d` of `xs` (one tensor, or two read in place as their concatenation) with its
    /// fusions: a residual connection or a channel bias in the epilogue, and channels-last
    /// input or output (`layouts`: the input's NCHW size when it is token-major, and whether the
    /// output is).
    fn conv2d_op(
        &mut self,
        path: &str,
        xs: &[TensorId],
        conv: Conv2d,
        epilogue: ConvEpilogue,
        (x_size, y_tokens): (Option<(usize, usize)>, bool),
    ) -> Result<TensorId, PlanError> {
        let (x, x2) = match *xs {
            [x] => (x, None),
            [a, b] => (a, Some(b)),
            _ => unreachable!("one input or a pair"),
        };
        let x_shape = match (x_size, x2) {
            (Some(_), Some(_)) => {
                return Err(PlanError::Unsupported {
                    part: "conv2d",
                    what: format!("{}: a token-major concatenation", self.name(path)),
                });
            }
            (Some(size), None) => shapes::to_nchw(path, self.shape(x), size)?,
            (None, Some(b)) => shapes::concat(path, self.shape(x), self.shape(b))?,
            (None, None) => self.shape(x),
        };
        let Shape::Nchw { c, .. } = x_shape else {
            return Err(PlanError::Architecture {
                part: "conv2d",
                message: format!("{}: the input is {x_shape}, not NCHW", self.name(path)),
            });
        };
        let y_shape = shapes::conv2d(path, x_shape, &conv)?;
        let y_shape = if y_tokens {
            shapes::to_tokens(path, y_shape)?
        } else {
            y_shape
        };
        let y = self.tensor(path, y_shape)?;
        if x_size.is_some() || y_tokens || x2.is_some() {
            // Channels-last tensors, and a concatenation read in place, are bound whole.
            self.require_single(path, "x", x)?;
            self.require_single(path, "y", y)?;
        }
        let k = conv.kernel;
        let w = self.weight(format!("{path}.weight"), &[conv.out_channels, c, k, k]);
        let bias = self.weight(format!("{path}.bias"), &[conv.out_channels]);
        let kind = OpKind::Conv2d {
            kernel: k,
            stride: conv.stride,
            padding: conv.padding,
            residual: match epilogue {
                ConvEpilogue::Residual(_, scale) => Some(scale),
                _ => None,
            },
            channel_bias: matches!(epilogue, ConvEpilogue::ChannelBias(..)),
            x_tokens: x_size.is_some(),
            y_tokens,
        };
        let mut args = vec![read("x", x)];
        if let Some(b) = x2 {
            self.require_single(path, "x2", b)?;
            args.push(read("x2", b));
        }
        args.extend([weight_arg("w", w), weight_arg("bias", bias), write("y", y)]);
        if let ConvEpilogue::Residual(r, _) = epilogue {
            self.same_shape(path, y, r)?;
            args.push(read("r", r));
        }
        if let ConvEpilogue::ChannelBias(t, offset) = epilogue {
            let (n, oc) = (x_shape.batch(), conv.out_channels);
            let fits = matches!(self.shape(t), Shape::Tokens { n: tn, l: 1, d } if tn == n && offset + oc <= d);
            if !fits {
                return Err(PlanError::Architecture {
                    part: "resnet",
                    message: format!(
                        "{}: the channel bias is {}, expected [{n}, 1, d] with columns {offset}..{}",
                        self.name(path),
                        self.shape(t),
                        offset + oc
                    ),
                });
            }
            // The kernel indexes `t[n, offset + c]` over the whole output: it must not be split.
            self.require_single(path, "y", y)?;
            args.push(read("t", t));
        }
        self.op(path, kind, args)?;
        Ok(y)
    }

    /// `nn.Linear` producing `out_features` per row, its weights as `weights` says, with a fused
    /// residual connection and an input layer norm where asked.
    #[allow(clippy::too_many_arguments)] // the linear's four, plus its weights and fusions
    fn linear_op(
        &mut self,
        path: &str,
        x: &TensorId,
        out_features: usize,
        bias: bool,
        weights: LinearWeights<'_>,
        residual: Option<(TensorId, f64)>,
        norm: Option<InputNorm<'_>>,
    ) -> Result<TensorId, PlanError> {
        let (_, _, d) = record::tokens(self, path, x)?;
        let y = self.tensor(path, shapes::linear(path, self.shape(*x), out_features)?)?;
        let geglu = matches!(weights, LinearWeights::GegluPairs);
        let rows = if geglu {
            2 * out_features
        } else {
            out_features
        };
        let assembled = |g: &mut Self, kind: &str, shape: &[usize]| match weights {
            LinearWeights::File => Ok(g.weight(format!("{path}.{kind}"), shape)),
            LinearWeights::Stacked(layers) => {
                let parts = layers
                    .iter()
                    .map(|(layer, o)| {
                        let mut part = shape.to_vec();
                        part[0] = *o;
                        (format!("{layer}.{kind}"), part)
                    })
                    .collect();
                g.weight_stack(format!("{path}.{kind}"), parts)
            }
            LinearWeights::GegluPairs => Ok(g.weight_geglu_pairs(
                format!("{path}.proj.paired_{kind}"),
                format!("{path}.proj.{kind}"),
                shape,
            )),
        };
        let w = assembled(self, "weight", &[rows, d])?;
        let mut args = vec![read("x", *x), weight_arg("w", w)];
        if bias {
            let b = assembled(self, "bias", &[rows])?;
            args.push(weight_arg("bias", b));
        }
        if let Some(n) = norm {
            let gamma = self.weight(format!("{}.weight", n.path), &[d]);
            let beta = self.weight(format!("{}.bias", n.path), &[d]);
            args.extend([weight_arg("gamma", gamma), weight_arg("beta", beta)]);
        }
        args.push(write("y", y));
        if let Some((r, _)) = residual {
            self.same_shape(path, y, r)?;
            args.push(read("r", r));
        }
        let kind = OpKind::Linear {
            bias,
            residual: residual.map(|(_, scale)| scale),
            geglu,
            layer_norm: norm.map(|n| n.eps),
        };
        self.op(path, kind, args)?;
        Ok(y)
    }

    /// Checks that `t` is one buffer: `path` is an op the executor runs on whole tensors only.
    fn require_single(&self, path: &str, role: &str, t: TensorId) -> Result<(), PlanError> {
        match self.planned(t) {
            Some(tensor) if tensor.chunks.len() > 1 => Err(PlanError::Limit {
                name: format!(
                    "{}: {role} `{}` (this op does not split)",
                    self.name(path),
                    tensor.name
                ),
                needed: tensor.shape.bytes(),
                max: self.limits().max_storage_binding,
            }),
            _ => Ok(()),
        }
    }

    /// Fails unless `a` and `b` have the same shape (a residual connection's two sides).
    fn same_shape(&self, path: &str, a: TensorId, b: TensorId) -> Result<(), PlanError> {
        if self.shape(a) == self.shape(b) {
            return Ok(());
        }
        Err(PlanError::Architecture {
            part: "residual",
            message: format!(
                "{}: {} and {} differ",
                self.name(path),
                self.shape(a),
                self.shape(b)
            ),
        })
    }
}

/// Where a linear layer's weight and bias come from.
#[derive(Clone, Copy)]
enum LinearWeights<'a> {
    /// `<path>.weight` and `<path>.bias` of the file.
    File,
    /// These layers' (path, out features), stacked by rows.
    Stacked(&'a [(&'a str, usize)]),
    /// GEGLU's `<path>.proj`, its value and gate rows in pairs.
    GegluPairs,
}
