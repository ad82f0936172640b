//! burn tensor ops: each IR op compiled for a device ([`ExecOp`]) and applied to node
//! values ([`Executor::apply`]), the reference implementation every engine is checked against.

use burn::tensor::module::{avg_pool2d, batch_norm, conv2d, linear, max_pool2d};
use burn::tensor::ops::{AvgPoolOptions, ConvOptions, MaxPoolOptions};
use burn::tensor::{Device, Tensor, TensorData as BurnData, s};
use decomp_ir::{NodeId, Op};

use super::{Executor, upload};

#[allow(clippy::large_enum_variant)] // a few per graph, built once
pub(super) enum ExecOp {
    Input,
    Conv {
        weight: Tensor<4>,
        bias: Option<Tensor<1>>,
        options: ConvOptions<2>,
    },
    BatchNorm {
        gamma: Tensor<1>,
        beta: Tensor<1>,
        mean: Tensor<1>,
        var: Tensor<1>,
        eps: f64,
    },
    Relu,
    Add,
    MaxPool(MaxPoolOptions<2>),
    AvgPool(AvgPoolOptions<2>),
    GlobalAvgPool,
    Flatten,
    /// Weight transposed to burn's `[in, out]`.
    Linear {
        weight: Tensor<2>,
        bias: Option<Tensor<1>>,
    },
    ShortcutA {
        stride: usize,
        pad_before: usize,
        pad_after: usize,
    },
    /// `[1, c, h, w]`, broadcast over the batch.
    BiasMap(Tensor<4>),
    /// Channel gather: source index per output channel (0 where the channel is a constant),
    /// 1/0 keep factors and the constants, both `[1, out, 1, 1]`.
    Gather {
        stride: usize,
        index: Tensor<1, burn::tensor::Int>,
        keep: Tensor<4>,
        fill: Tensor<4>,
    },
    /// `min(max(x, min), max)`.
    Clip {
        min: f32,
        max: f32,
    },
    /// Concatenation along the channel axis (axis 1 of maps and of vectors).
    Concat,
}

/// A node's value during a forward pass.
#[derive(Clone)]
pub(super) enum Value {
    /// `[batch, c, h, w]`
    Map(Tensor<4>),
    /// `[batch, n]`
    Vec(Tensor<2>),
}

impl Value {
    pub(super) fn map(self) -> Tensor<4> {
        match self {
            Value::Map(t) => t,
            Value::Vec(t) => {
                let [b, n] = t.dims();
                t.reshape([b, n, 1, 1])
            }
        }
    }

    pub(super) fn flat(self) -> Tensor<2> {
        match self {
            Value::Vec(t) => t,
            Value::Map(t) => {
                let [b, c, h, w] = t.dims();
                t.reshape([b, c * h * w])
            }
        }
    }

    pub(super) fn mul(self, m: &Tensor<2>) -> Value {
        match self {
            Value::Vec(t) => Value::Vec(t * m.clone()),
            Value::Map(t) => {
                let [b, c, h, w] = t.dims();
                Value::Map(t * m.clone().reshape([1, c, h, w]).expand([b, c, h, w]))
            }
        }
    }
}

impl ExecOp {
    /// The op of one IR node with its parameters uploaded to `device`.
    pub(super) fn compile(op: &Op, device: &Device) -> Self {
        match op {
            Op::Input { .. } => ExecOp::Input,
            Op::Conv2d {
                weight,
                bias,
                stride,
                padding,
                groups,
            } => ExecOp::Conv {
                weight: upload(weight, device),
                bias: bias.as_ref().map(|b| upload(b, device)),
                options: ConvOptions::new(*stride, *padding, [1, 1], *groups),
            },
            Op::BatchNorm2d {
                gamma,
                beta,
                running_mean,
                running_var,
                eps,
            } => ExecOp::BatchNorm {
                gamma: upload(gamma, device),
                beta: upload(beta, device),
                mean: upload(running_mean, device),
                var: upload(running_var, device),
                eps: *eps,
            },
            Op::Relu => ExecOp::Relu,
            Op::Add => ExecOp::Add,
            Op::MaxPool2d {
                kernel,
                stride,
                padding,
            } => ExecOp::MaxPool(
                MaxPoolOptions::new(*kernel)
                    .with_stride(*stride)
                    .with_padding(*padding),
            ),
            Op::AvgPool2d {
                kernel,
                stride,
                padding,
            } => ExecOp::AvgPool(
                AvgPoolOptions::new(*kernel)
                    .with_stride(*stride)
                    .with_padding(*padding),
            ),
            Op::GlobalAvgPool => ExecOp::GlobalAvgPool,
            Op::Flatten => ExecOp::Flatten,
            Op::Linear { weight, bias } => ExecOp::Linear {
                weight: upload::<2>(weight, device).transpose(),
                bias: bias.as_ref().map(|b| upload(b, device)),
            },
            Op::ShortcutA {
                stride,
                pad_before,
                pad_after,
            } => ExecOp::ShortcutA {
                stride: *stride,
                pad_before: *pad_before,
                pad_after: *pad_after,
            },
            Op::BiasMap { bias } => ExecOp::BiasMap(upload::<3>(bias, device).unsqueeze()),
            Op::ChannelGather {
                stride,
                sources,
                fill,
            } => {
                let o = sources.len();
                let index: Vec<i64> = sources.iter().map(|s| s.unwrap_or(0) as i64).collect();
                let keep: Vec<f32> = sources
                    .iter()
                    .map(|s| if s.is_some() { 1.0 } else { 0.0 })
                    .collect();
                ExecOp::Gather {
                    stride: *stride,
                    index: Tensor::from_data(BurnData::new(index, [o]), device),
                    keep: Tensor::from_data(BurnData::new(keep, [1, o, 1, 1]), device),
                    fill: Tensor::from_data(BurnData::new(fill.clone(), [1, o, 1, 1]), device),
                }
            }
            Op::Clip { min, max } => ExecOp::Clip {
                min: *min,
                max: *max,
            },
            Op::Concat => ExecOp::Concat,
        }
    }
}

impl Executor {
    /// Applies node `id`'s op to its argument values (any batch size).
    pub(super) fn apply(&self, id: NodeId, args: Vec<Value>) -> Value {
        if let ExecOp::Concat = self.ops[id] {
            return concat(args);
        }
        let mut args = args.into_iter();
        let mut arg = |_k: usize| args.next().expect("arity checked by validation");
        match &self.ops[id] {
            ExecOp::Input => unreachable!("the input node has no op to apply"),
            ExecOp::Conv {
                weight,
                bias,
                options,
            } => Value::Map(conv2d(
                arg(0).map(),
                weight.clone(),
                bias.clone(),
                options.clone(),
            )),
            ExecOp::BatchNorm {
                gamma,
                beta,
                mean,
                var,
                eps,
            } => Value::Map(batch_norm(
                arg(0).map(),
                gamma.clone(),
                beta.clone(),
                mean.clone(),
                var.clone(),
                *eps,
            )),
            ExecOp::Relu => match arg(0) {
                Value::Map(t) => Value::Map(burn::tensor::activation::relu(t)),
                Value::Vec(t) => Value::Vec(burn::tensor::activation::relu(t)),
            },
            ExecOp::Add => match (arg(0), arg(1)) {
                (Value::Vec(a), b) => Value::Vec(a + b.flat()),
                (a, b) => Value::Map(a.map() + b.map()),
            },
            ExecOp::MaxPool(o) => Value::Map(max_pool2d(arg(0).map(), o.clone())),
            ExecOp::AvgPool(o) => Value::Map(avg_pool2d(arg(0).map(), o.clone())),
            ExecOp::GlobalAvgPool => {
                let t = arg(0).map(); // [b, c, h, w]
                Value::Map(t.mean_dim(3).mean_dim(2)) // [b, c, 1, 1]
            }
            ExecOp::Flatten => Value::Vec(arg(0).flat()),
            ExecOp::Linear { weight, bias } => {
                Value::Vec(linear(arg(0).flat(), weight.clone(), bias.clone()))
            }
            ExecOp::ShortcutA {
                stride,
                pad_before,
                pad_after,
            } => {
                let t = arg(0).map();
                let st = *stride as isize;
                let t = if *stride > 1 {
                    t.slice(s![.., .., ..;st, ..;st])
                } else {
                    t
                };
                let [b, _, h, w] = t.dims();
                let mut parts = Vec::with_capacity(3);
                if *pad_before > 0 {
                    parts.push(Tensor::zeros([b, *pad_before, h, w], &self.device));
                }
                parts.push(t);
                if *pad_after > 0 {
                    parts.push(Tensor::zeros([b, *pad_after, h, w], &self.device));
                }
                Value::Map(Tensor::cat(parts, 1))
            }
            ExecOp::BiasMap(bias) => {
                let t = arg(0).map();
                let dims = t.dims();
                Value::Map(t + bias.clone().expand(dims))
            }
            ExecOp::Clip { min, max } => match arg(0) {
                Value::Map(t) => Value::Map(t.clamp(*min, *max)),
                Value::Vec(t) => Value::Vec(t.clamp(*min, *max)),
            },
            ExecOp::Concat => unreachable!("concatenation is applied above"),
            ExecOp::Gather {
                stride,
                index,
                keep,
                fill,
            } => {
                let t = arg(0).map();
                let st = *stride as isize;
                let t = if *stride > 1 {
                    t.slice(s![.., .., ..;st, ..;st])
                } else {
                    t
                };
                let t = t.select(1, index.clone()); // [b, out, h', w']
                let dims = t.dims();
                Value::Map(t * keep.clone().expand(dims) + fill.clone().expand(dims))
            }
        }
    }
}

/// Concatenation of maps (or of vectors) along the channel axis; validation guarantees that
/// all inputs are of one kind.
fn concat(args: Vec<Value>) -> Value {
    if matches!(args.first(), Some(Value::Vec(_))) {
        Value::Vec(Tensor::cat(args.into_iter().map(Value::flat).collect(), 1))
    } else {
        Value::Map(Tensor::cat(args.into_iter().map(Value::map).collect(), 1))
    }
}
