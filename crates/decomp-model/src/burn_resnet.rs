//! A plain burn `Module` implementation of the CIFAR ResNet, loaded from IR.
//!
//! Two uses: the reference the IR [`Executor`](crate::Executor) is benchmarked against
//! (same math, written the ordinary burn way), and export of a model to burn's own record
//! format (burnpack, `.bpk`) for users who want to continue in burn without decomp.
//! It is also the module [`crate::train`] trains: [`ResNet::from_ir`] loads an IR model,
//! [`ResNet::write_into`] writes the trained parameters (and BatchNorm running statistics)
//! back into it.
//!
//! Parameter ids are derived from node names (not drawn at random), so an optimizer state
//! saved in one process applies to the same model rebuilt in another (training resume).

use std::path::Path;

use burn::module::{Module, Param, ParamId, RunningState};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor, TensorData as BurnData, s};
use decomp_ir::{ModelIr, Op, TensorData};

use crate::ModelError;
use crate::executor::to_vec;

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

/// The id of the parameter named `name` (`layer1.0.conv1.weight`, `linear.bias`, ...): a
/// stable hash (FNV-1a) of the name, so gradients and optimizer state can be looked up by name.
pub fn param_id(name: &str) -> ParamId {
    let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    ParamId::from(hash)
}

/// A trainable parameter whose id is [`param_id`] of `name`.
fn param<const D: usize>(name: &str, value: Tensor<D>) -> Param<Tensor<D>> {
    let mut p = Param::from_tensor(value);
    p.id = param_id(name);
    p
}

fn host(t: Tensor<1>) -> TensorData {
    let n = t.dims()[0];
    TensorData {
        shape: vec![n],
        data: to_vec(t),
    }
}

fn host4(t: Tensor<4>) -> TensorData {
    TensorData {
        shape: t.dims().to_vec(),
        data: to_vec(t),
    }
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
        conv.weight = param(&format!("{name}.weight"), t(weight, self.device));
        conv.bias = bias
            .as_ref()
            .map(|b| param(&format!("{name}.bias"), t(b, self.device)));
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
        bn.gamma = param(&format!("{name}.weight"), t(gamma, self.device));
        bn.beta = param(&format!("{name}.bias"), t(beta, self.device));
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
        // Transposed on the host, so the parameter is a contiguous `[in, out]` tensor like
        // the ones the optimizer produces (a strided view would change the matmul's
        // summation order, and a resumed run would drift from an uninterrupted one).
        let (o, i) = (weight.shape[0], weight.shape[1]);
        let transposed: Vec<f32> = (0..i * o)
            .map(|k| weight.data[(k % o) * i + k / o])
            .collect();
        linear.weight = param(
            "linear.weight",
            Tensor::from_data(BurnData::new(transposed, [i, o]), device),
        );
        linear.bias = bias.as_ref().map(|b| param("linear.bias", t(b, device)));
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

    /// Writes the current parameters and BatchNorm running statistics into the nodes of
    /// `model` with the same names (the IR model this one was built from, or a copy).
    pub fn write_into(&self, model: &mut ModelIr) -> Result<(), ModelError> {
        let mut w = Writer { model };
        w.conv("conv1", &self.conv1)?;
        w.bn("bn1", self.bn1.as_ref())?;
        let mut names = Vec::new();
        for stage in 1..=3 {
            for i in 0.. {
                let p = format!("layer{stage}.{i}");
                if w.model.graph.find(&format!("{p}.conv1")).is_none() {
                    break;
                }
                names.push(p);
            }
        }
        if names.len() != self.blocks.len() {
            return Err(ModelError::Config(format!(
                "the IR model has {} residual blocks, the trained module {}",
                names.len(),
                self.blocks.len()
            )));
        }
        for (p, b) in names.iter().zip(&self.blocks) {
            w.conv(&format!("{p}.conv1"), &b.conv1)?;
            w.bn(&format!("{p}.bn1"), b.bn1.as_ref())?;
            w.conv(&format!("{p}.conv2"), &b.conv2)?;
            w.bn(&format!("{p}.bn2"), b.bn2.as_ref())?;
            if let Some(proj) = &b.proj {
                w.conv(&format!("{p}.shortcut.0"), proj)?;
                w.bn(&format!("{p}.shortcut.1"), b.proj_bn.as_ref())?;
            }
        }
        let node = w.node("linear")?;
        let Op::Linear { weight, bias } = node else {
            return Err(ModelError::Config(
                "node linear is not a linear layer".into(),
            ));
        };
        let lw = self.linear.weight.val().transpose();
        let [o, i] = lw.dims();
        *weight = TensorData {
            shape: vec![o, i],
            data: to_vec(lw),
        };
        if let (Some(b), Some(lb)) = (bias.as_mut(), &self.linear.bias) {
            *b = host(lb.val());
        }
        Ok(())
    }

    /// Writes the parameters in burn's record format (burnpack).
    pub fn export(self, path: &Path) -> Result<(), ModelError> {
        self.save_file(path).map_err(|e| ModelError::Export {
            path: path.to_path_buf(),
            msg: e.to_string(),
        })
    }
}

struct Writer<'a> {
    model: &'a mut ModelIr,
}

impl Writer<'_> {
    fn node(&mut self, name: &str) -> Result<&mut Op, ModelError> {
        let i =
            self.model.graph.find(name).ok_or_else(|| {
                ModelError::Config(format!("no node named {name} in the IR model"))
            })?;
        Ok(&mut self.model.graph.nodes[i].op)
    }

    fn conv(&mut self, name: &str, conv: &Conv2d) -> Result<(), ModelError> {
        let Op::Conv2d { weight, bias, .. } = self.node(name)? else {
            return Err(ModelError::Config(format!("node {name} is not a conv2d")));
        };
        *weight = host4(conv.weight.val());
        if let (Some(b), Some(cb)) = (bias.as_mut(), &conv.bias) {
            *b = host(cb.val());
        }
        Ok(())
    }

    fn bn(&mut self, name: &str, bn: Option<&BatchNorm>) -> Result<(), ModelError> {
        let Some(bn) = bn else { return Ok(()) };
        let Op::BatchNorm2d {
            gamma,
            beta,
            running_mean,
            running_var,
            ..
        } = self.node(name)?
        else {
            return Err(ModelError::Config(format!(
                "node {name} is not a batch norm"
            )));
        };
        *gamma = host(bn.gamma.val());
        *beta = host(bn.beta.val());
        *running_mean = host(bn.running_mean.value_sync());
        *running_var = host(bn.running_var.value_sync());
        Ok(())
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
