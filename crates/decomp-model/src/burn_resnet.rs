//! A plain burn `Module` implementation of the CIFAR ResNet, loaded from IR.
//!
//! Two uses: the reference the IR [`Executor`](crate::Executor) is benchmarked against
//! (same math, written the ordinary burn way), and export of a model to burn's own record
//! format (burnpack, `.bpk`) for users who want to continue in burn without decomp.

use std::path::Path;

use burn::module::{Module, Param, RunningState};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor, TensorData as BurnData, s};
use decomp_ir::{ModelIr, Op, TensorData};

use crate::ModelError;

/// One residual block.
#[derive(Module, Debug)]
pub struct BasicBlock {
    conv1: Conv2d,
    bn1: Option<BatchNorm>,
    conv2: Conv2d,
    bn2: Option<BatchNorm>,
    /// Option-B projection (absent for identity and option-A shortcuts).
    proj: Option<Conv2d>,
    proj_bn: Option<BatchNorm>,
    /// Option-A shortcut: subsampling stride (1 = identity) and zero channels added.
    stride: usize,
    pad_before: usize,
    pad_after: usize,
}

/// A CIFAR ResNet as a burn module tree.
#[derive(Module, Debug)]
pub struct ResNet {
    conv1: Conv2d,
    bn1: Option<BatchNorm>,
    blocks: Vec<BasicBlock>,
    linear: Linear,
}

fn t<const D: usize>(d: &TensorData, device: &Device) -> Tensor<D> {
    Tensor::from_data(BurnData::new(d.data.clone(), d.shape.clone()), device)
}

struct Loader<'a> {
    model: &'a ModelIr,
    device: &'a Device,
}

impl Loader<'_> {
    fn op(&self, name: &str) -> Option<&Op> {
        self.model
            .graph
            .find(name)
            .map(|i| &self.model.graph.nodes[i].op)
    }

    fn conv(&self, name: &str) -> Result<Conv2d, ModelError> {
        let Some(Op::Conv2d {
            weight,
            bias,
            stride,
            padding,
            groups,
        }) = self.op(name)
        else {
            return Err(ModelError::Config(format!("no conv2d node named {name}")));
        };
        let [o, i, kh, kw] = [
            weight.shape[0],
            weight.shape[1],
            weight.shape[2],
            weight.shape[3],
        ];
        let mut conv = Conv2dConfig::new([i * groups, o], [kh, kw])
            .with_stride(*stride)
            .with_groups(*groups)
            .with_padding(PaddingConfig2d::Explicit(
                padding[0], padding[1], padding[0], padding[1],
            ))
            .with_bias(bias.is_some())
            .init(self.device);
        conv.weight = Param::from_tensor(t(weight, self.device));
        conv.bias = bias.as_ref().map(|b| Param::from_tensor(t(b, self.device)));
        Ok(conv)
    }

    fn bn(&self, name: &str) -> Result<Option<BatchNorm>, ModelError> {
        let Some(Op::BatchNorm2d {
            gamma,
            beta,
            running_mean,
            running_var,
            eps,
        }) = self.op(name)
        else {
            return Ok(None);
        };
        let mut bn = BatchNormConfig::new(gamma.numel())
            .with_epsilon(*eps)
            .init(self.device);
        bn.gamma = Param::from_tensor(t(gamma, self.device));
        bn.beta = Param::from_tensor(t(beta, self.device));
        bn.running_mean = RunningState::new(t(running_mean, self.device));
        bn.running_var = RunningState::new(t(running_var, self.device));
        Ok(Some(bn))
    }
}

impl ResNet {
    /// Builds the module tree from an IR model made by [`crate::ResNetConfig`] (node names
    /// `conv1`, `layer{s}.{i}.conv1`, ..., `linear`).
    pub fn from_ir(model: &ModelIr, device: &Device) -> Result<Self, ModelError> {
        model.check()?;
        let l = Loader { model, device };
        let mut blocks = Vec::new();
        for stage in 1..=3 {
            for i in 0.. {
                let p = format!("layer{stage}.{i}");
                if l.op(&format!("{p}.conv1")).is_none() {
                    break;
                }
                let (stride, pad_before, pad_after) = match l.op(&format!("{p}.shortcut")) {
                    Some(Op::ShortcutA {
                        stride,
                        pad_before,
                        pad_after,
                    }) => (*stride, *pad_before, *pad_after),
                    _ => (1, 0, 0),
                };
                let proj = l
                    .op(&format!("{p}.shortcut.0"))
                    .map(|_| l.conv(&format!("{p}.shortcut.0")))
                    .transpose()?;
                blocks.push(BasicBlock {
                    conv1: l.conv(&format!("{p}.conv1"))?,
                    bn1: l.bn(&format!("{p}.bn1"))?,
                    conv2: l.conv(&format!("{p}.conv2"))?,
                    bn2: l.bn(&format!("{p}.bn2"))?,
                    proj,
                    proj_bn: l.bn(&format!("{p}.shortcut.1"))?,
                    stride,
                    pad_before,
                    pad_after,
                });
            }
        }
        let Some(Op::Linear { weight, bias }) = l.op("linear") else {
            return Err(ModelError::Config("no linear node named linear".into()));
        };
        let mut linear = LinearConfig::new(weight.shape[1], weight.shape[0])
            .with_bias(bias.is_some())
            .init(device);
        linear.weight = Param::from_tensor(t::<2>(weight, device).transpose());
        linear.bias = bias.as_ref().map(|b| Param::from_tensor(t(b, device)));
        Ok(Self {
            conv1: l.conv("conv1")?,
            bn1: l.bn("bn1")?,
            blocks,
            linear,
        })
    }

    /// Logits `[batch, classes]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let mut x = self.conv1.forward(x);
        if let Some(bn) = &self.bn1 {
            x = bn.forward(x);
        }
        x = relu(x);
        for b in &self.blocks {
            x = b.forward(x);
        }
        let [n, c, _, _] = x.dims();
        let x = x.mean_dim(3).mean_dim(2).reshape([n, c]);
        self.linear.forward(x)
    }

    /// Writes the parameters in burn's record format (burnpack).
    pub fn export(self, path: &Path) -> Result<(), ModelError> {
        self.save_file(path).map_err(|e| ModelError::Export {
            path: path.to_path_buf(),
            msg: e.to_string(),
        })
    }
}

impl BasicBlock {
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let mut y = self.conv1.forward(x.clone());
        if let Some(bn) = &self.bn1 {
            y = bn.forward(y);
        }
        y = relu(y);
        y = self.conv2.forward(y);
        if let Some(bn) = &self.bn2 {
            y = bn.forward(y);
        }
        let short = if let Some(p) = &self.proj {
            let s = p.forward(x);
            match &self.proj_bn {
                Some(bn) => bn.forward(s),
                None => s,
            }
        } else if self.stride > 1 || self.pad_before + self.pad_after > 0 {
            let st = self.stride as isize;
            let x = x.slice(s![.., .., ..;st, ..;st]);
            let [b, _, h, w] = x.dims();
            let device = x.device();
            Tensor::cat(
                vec![
                    Tensor::zeros([b, self.pad_before, h, w], &device),
                    x,
                    Tensor::zeros([b, self.pad_after, h, w], &device),
                ],
                1,
            )
        } else {
            x
        };
        relu(y + short)
    }
}
