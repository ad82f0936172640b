//! Runs any valid IR graph on a burn [`Device`].

use std::collections::HashMap;

use burn::tensor::module::{avg_pool2d, batch_norm, conv2d, linear, max_pool2d};
use burn::tensor::ops::{AvgPoolOptions, ConvOptions, MaxPoolOptions};
use burn::tensor::{Device, Tensor, TensorData as BurnData, s};
use decomp_ir::{ModelIr, NodeId, NodeMask, Op, Shape, TensorData};

use crate::ModelError;
use crate::cpu::{CpuPlan, CpuTuning, HostMasks, HostModuleMasks};

/// Which implementation an [`Executor`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Engine {
    /// The CPU plan ([`Engine::Cpu`]) on the `flex` device when it supports the graph,
    /// otherwise burn ops ([`Engine::Burn`]). The binary's `DECOMP_ENGINE=burn` (or `cpu`)
    /// picks another ([`crate::Runtime`]).
    #[default]
    Auto,
    /// burn tensor ops on the executor's device: every device; the reference.
    Burn,
    /// The compiled CPU plan (`flex` device only): BatchNorm folded into convolutions,
    /// channels-last, im2col + GEMM, parallel over image tiles. Equal to `Burn` within
    /// float rounding.
    Cpu,
}

impl std::str::FromStr for Engine {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self, ModelError> {
        match s {
            "auto" | "" => Ok(Engine::Auto),
            "burn" => Ok(Engine::Burn),
            "cpu" | "fast" => Ok(Engine::Cpu),
            _ => Err(ModelError::Config(format!(
                "unknown engine {s:?}: expected auto, burn or cpu"
            ))),
        }
    }
}

/// A compiled graph: IR ops with their parameters uploaded to one device.
pub struct Executor {
    device: Device,
    ops: Vec<ExecOp>,
    inputs: Vec<Vec<NodeId>>,
    names: Vec<String>,
    shapes: Vec<Shape>,
    output: NodeId,
    /// For every node, the last node that reads it (intermediates are dropped after it).
    last_use: Vec<NodeId>,
    /// The compiled CPU plan, when this executor runs [`Engine::Cpu`].
    cpu: Option<CpuPlan>,
}

#[allow(clippy::large_enum_variant)] // a few per graph, built once
enum ExecOp {
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
}

/// A node's value during a forward pass.
#[derive(Clone)]
enum Value {
    /// `[batch, c, h, w]`
    Map(Tensor<4>),
    /// `[batch, n]`
    Vec(Tensor<2>),
}

impl Value {
    fn map(self) -> Tensor<4> {
        match self {
            Value::Map(t) => t,
            Value::Vec(t) => {
                let [b, n] = t.dims();
                t.reshape([b, n, 1, 1])
            }
        }
    }

    fn flat(self) -> Tensor<2> {
        match self {
            Value::Vec(t) => t,
            Value::Map(t) => {
                let [b, c, h, w] = t.dims();
                t.reshape([b, c * h * w])
            }
        }
    }

    fn mul(self, m: &Tensor<2>) -> Value {
        match self {
            Value::Vec(t) => Value::Vec(t * m.clone()),
            Value::Map(t) => {
                let [b, c, h, w] = t.dims();
                Value::Map(t * m.clone().reshape([1, c, h, w]).expand([b, c, h, w]))
            }
        }
    }
}

/// Masks compiled for one executor: per node, a `[1, positions]` tensor of 1 (keep) and 0
/// (zeroed), multiplied into the node's output.
pub struct CompiledMasks {
    by_node: HashMap<NodeId, Tensor<2>>,
    /// The same masks for the CPU plan (`None`: a mask sits on a node the plan folds away).
    host: Option<HostMasks>,
}

/// What a forward pass should do besides computing logits.
#[derive(Default)]
pub struct Probe<'a> {
    /// Nodes whose outputs to return, flattened to `[batch, positions]`.
    pub capture: &'a [NodeId],
    /// Output positions to zero, applied right after each masked node.
    pub masks: Option<&'a CompiledMasks>,
}

/// Logits and the captured node outputs of one forward pass.
pub struct ForwardOutput {
    /// `[batch, classes]`
    pub logits: Tensor<2>,
    /// Captured outputs in the order of [`Probe::capture`], each `[batch, positions]`.
    pub captured: Vec<Tensor<2>>,
}

fn upload<const D: usize>(t: &TensorData, device: &Device) -> Tensor<D> {
    Tensor::from_data(BurnData::new(t.data.clone(), t.shape.clone()), device)
}

impl Executor {
    /// Validates `model` and uploads its parameters to `device`; the engine is
    /// [`Engine::Auto`] (the CPU plan on `flex`, burn ops elsewhere) with the default
    /// [`CpuTuning`]. A configured [`crate::Runtime`] builds it with its own settings.
    pub fn new(model: &ModelIr, device: &Device) -> Result<Self, ModelError> {
        Self::with_engine(model, device, Engine::Auto)
    }

    /// Like [`Executor::new`] with an explicit engine. [`Engine::Cpu`] needs the `flex`
    /// device and a graph the plan supports.
    pub fn with_engine(
        model: &ModelIr,
        device: &Device,
        engine: Engine,
    ) -> Result<Self, ModelError> {
        Self::with_tuning(model, device, engine, CpuTuning::default())
    }

    /// Like [`Executor::with_engine`], the CPU plan compiled with `tuning`.
    pub fn with_tuning(
        model: &ModelIr,
        device: &Device,
        engine: Engine,
        tuning: CpuTuning,
    ) -> Result<Self, ModelError> {
        let shapes = model.check()?;
        let is_flex = *device == Device::flex();
        let cpu = match engine {
            Engine::Burn => None,
            Engine::Auto if !is_flex => None,
            Engine::Auto => CpuPlan::new(model, &shapes, tuning),
            Engine::Cpu if !is_flex => {
                return Err(ModelError::Config(format!(
                    "the cpu engine runs on the flex device only, not {device:?}"
                )));
            }
            Engine::Cpu => Some(CpuPlan::new(model, &shapes, tuning).ok_or_else(|| {
                ModelError::Config("the cpu engine does not support this graph (grouped convolution or a newer op)".into())
            })?),
        };
        let graph = &model.graph;
        let mut ops = Vec::with_capacity(graph.nodes.len());
        for node in &graph.nodes {
            ops.push(match &node.op {
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
                Op::ChannelGather { stride, sources, fill } => {
                    let o = sources.len();
                    let index: Vec<i64> = sources.iter().map(|s| s.unwrap_or(0) as i64).collect();
                    let keep: Vec<f32> = sources.iter().map(|s| if s.is_some() { 1.0 } else { 0.0 }).collect();
                    ExecOp::Gather {
                        stride: *stride,
                        index: Tensor::from_data(BurnData::new(index, [o]), device),
                        keep: Tensor::from_data(BurnData::new(keep, [1, o, 1, 1]), device),
                        fill: Tensor::from_data(BurnData::new(fill.clone(), [1, o, 1, 1]), device),
                    }
                }
            });
        }
        let mut last_use: Vec<NodeId> = (0..graph.nodes.len()).collect();
        for (id, node) in graph.nodes.iter().enumerate() {
            for &i in &node.inputs {
                last_use[i] = last_use[i].max(id);
            }
        }
        last_use[graph.output] = usize::MAX;
        Ok(Self {
            device: device.clone(),
            ops,
            inputs: graph.nodes.iter().map(|n| n.inputs.clone()).collect(),
            names: graph.nodes.iter().map(|n| n.name.clone()).collect(),
            shapes,
            output: graph.output,
            last_use,
            cpu,
        })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The engine this executor runs: [`Engine::Cpu`] or [`Engine::Burn`].
    pub fn engine(&self) -> Engine {
        if self.cpu.is_some() {
            Engine::Cpu
        } else {
            Engine::Burn
        }
    }

    /// Tile size and im2col block of the CPU plan (`None` on the burn engine).
    pub fn cpu_tuning(&self) -> Option<CpuTuning> {
        self.cpu.as_ref().map(CpuPlan::tuning)
    }

    /// Changes the CPU plan's tuning (no effect on the burn engine).
    pub fn set_cpu_tuning(&mut self, tuning: CpuTuning) {
        if let Some(p) = self.cpu.as_mut() {
            p.set_tuning(tuning);
        }
    }

    /// Name of the output node, the one [`Executor::forward`] returns.
    pub fn output_name(&self) -> &str {
        &self.names[self.output]
    }

    /// Checks logits of [`Executor::forward`] read back as row-major `[batch, classes]`:
    /// a NaN or infinite logit is a [`ModelError::NonFinite`] naming the image
    /// (`first_image` + its row) and the output node.
    pub fn check_logits(&self, logits: &[f32], first_image: usize) -> Result<(), ModelError> {
        let width = self.shapes[self.output].iter().product();
        check_finite(logits, width, first_image, self.output_name(), "logit")
    }

    /// Output shape of every node (batch axis excluded).
    pub fn shapes(&self) -> &[Shape] {
        &self.shapes
    }

    /// Uploads a `[batch, c, h, w]` batch given as row-major values.
    pub fn input_tensor(&self, values: Vec<f32>, batch: usize) -> Result<Tensor<4>, ModelError> {
        let s = &self.shapes[0];
        let per: usize = s.iter().product();
        if values.len() != batch * per {
            return Err(ModelError::InputShape {
                found: vec![values.len()],
                expected: s.clone(),
            });
        }
        Ok(Tensor::from_data(
            BurnData::new(values, [batch, s[0], s[1], s[2]]),
            &self.device,
        ))
    }

    /// Checks node masks against node shapes and uploads them as 0/1 multipliers.
    pub fn compile_masks(&self, masks: &[NodeMask]) -> Result<CompiledMasks, ModelError> {
        let mut by_node = HashMap::new();
        for m in masks {
            let shape = self
                .shapes
                .get(m.node)
                .ok_or(ModelError::NoSuchNode(m.node))?;
            let n: usize = shape.iter().product();
            if m.zeroed.len() != n {
                return Err(ModelError::MaskShape {
                    node: m.node,
                    name: self.names[m.node].clone(),
                    found: m.zeroed.len(),
                    expected: n,
                });
            }
            let keep: Vec<f32> = (0..n)
                .map(|i| if m.zeroed.get(i) { 0.0 } else { 1.0 })
                .collect();
            by_node.insert(
                m.node,
                Tensor::from_data(BurnData::new(keep, [1, n]), &self.device),
            );
        }
        let host = self.cpu.as_ref().and_then(|p| p.host_masks(masks));
        Ok(CompiledMasks { by_node, host })
    }

    /// Logits `[batch, classes]` of a `[batch, c, h, w]` input.
    pub fn forward(&self, x: Tensor<4>) -> Result<Tensor<2>, ModelError> {
        Ok(self.forward_probe(x, &Probe::default())?.logits)
    }

    /// Forward pass that can also capture node outputs and apply masks.
    pub fn forward_probe(
        &self,
        x: Tensor<4>,
        probe: &Probe<'_>,
    ) -> Result<ForwardOutput, ModelError> {
        let dims = x.dims();
        if dims[1..] != self.shapes[0][..] {
            return Err(ModelError::InputShape {
                found: dims.to_vec(),
                expected: self.shapes[0].clone(),
            });
        }
        if let Some(&bad) = probe.capture.iter().find(|&&c| c >= self.ops.len()) {
            return Err(ModelError::NoSuchNode(bad));
        }
        if let Some(plan) = &self.cpu
            && probe.capture.iter().all(|&c| plan.materialized(c))
            && probe.masks.is_none_or(|m| m.host.is_some())
        {
            let batch = dims[0];
            let (logits, captured) = plan.forward(
                &to_vec(x),
                batch,
                probe.capture,
                probe.masks.and_then(|m| m.host.as_ref()),
            );
            let upload2 = |v: Vec<f32>| {
                let per = v.len().checked_div(batch).unwrap_or(0);
                Tensor::<2>::from_data(BurnData::new(v, [batch, per]), &self.device)
            };
            return Ok(ForwardOutput {
                logits: upload2(logits),
                captured: captured.into_iter().map(upload2).collect(),
            });
        }
        self.forward_burn(x, probe, None)
    }

    /// The burn-ops forward pass, with optional per-image channel gates.
    fn forward_burn(
        &self,
        x: Tensor<4>,
        probe: &Probe<'_>,
        gates: Option<&HashMap<NodeId, (Tensor<4>, Tensor<4>)>>,
    ) -> Result<ForwardOutput, ModelError> {
        let mut values: Vec<Option<Value>> = vec![None; self.ops.len()];
        let mut captured: Vec<Option<Tensor<2>>> = vec![None; probe.capture.len()];
        let mut input = Some(x);
        for id in 0..self.ops.len() {
            // Move a value into its last reader so burn can reuse its buffer in place.
            let ins = &self.inputs[id];
            let args: Vec<Value> = ins
                .iter()
                .enumerate()
                .map(|(k, &i)| {
                    let last = self.last_use[i] == id && !ins[k + 1..].contains(&i);
                    let v = if last {
                        values[i].take()
                    } else {
                        values[i].clone()
                    };
                    v.expect("validated graph: inputs computed before use")
                })
                .collect();
            let mut v = match self.ops[id] {
                ExecOp::Input => Value::Map(input.take().expect("single input node")),
                _ => self.apply(id, args),
            };
            if let Some(m) = probe.masks.and_then(|m| m.by_node.get(&id)) {
                v = v.mul(m);
            }
            if let Some((g, mean)) = gates.and_then(|g| g.get(&id)) {
                let t = v.map();
                let dims = t.dims();
                let mean = mean.clone().expand(dims);
                v = Value::Map(mean.clone() + g.clone().expand(dims) * (t - mean));
            }
            for (slot, &c) in captured.iter_mut().zip(probe.capture) {
                if c == id {
                    *slot = Some(v.clone().flat());
                }
            }
            self.release(id, &mut values);
            values[id] = Some(v);
        }
        let logits = values[self.output].take().expect("output computed").flat();
        Ok(ForwardOutput {
            logits,
            captured: captured
                .into_iter()
                .map(|c| c.expect("every captured node is computed"))
                .collect(),
        })
    }

    /// Drops the values whose last reader is `id`.
    fn release<T>(&self, id: NodeId, values: &mut [Option<T>]) {
        for &i in &self.inputs[id] {
            if self.last_use[i] == id {
                values[i] = None;
            }
        }
    }

    /// Applies node `id`'s op to its argument values (any batch size).
    fn apply(&self, id: NodeId, args: Vec<Value>) -> Value {
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

/// Masks of several modules (at most 64) over one model, compiled for
/// [`Executor::forward_modules`]. Identical masks are stored once.
pub struct ModuleMasks {
    modules: usize,
    /// Per masked node: its distinct masks, each with the set of modules using it (bit m =
    /// module m) and its `[1, positions]` indicator (1 = zeroed).
    by_node: HashMap<NodeId, Vec<(u64, Tensor<2>)>>,
    /// Nodes whose consumers are all ReLUs: there a mask changes nothing on an image whose
    /// masked positions are all `<= 0`.
    relu_fed: Vec<bool>,
    /// The same masks for the CPU plan (`None` off the CPU engine, or when a mask sits on a
    /// node the plan folds away).
    host: Option<HostModuleMasks>,
}

impl ModuleMasks {
    pub fn modules(&self) -> usize {
        self.modules
    }
}

/// Rows of some images that share one value for a set of modules: row `i` of `value` is
/// image `rows[i]` as seen by every module in the bit set `members[i]`.
#[derive(Clone)]
struct Branch {
    rows: Vec<usize>,
    members: Vec<u64>,
    value: Value,
}

fn select_rows(v: &Value, pos: &[usize], device: &Device) -> Value {
    let idx: Vec<i64> = pos.iter().map(|&p| p as i64).collect();
    let idx = Tensor::<1, burn::tensor::Int>::from_data(BurnData::new(idx, [pos.len()]), device);
    match v {
        Value::Map(t) => Value::Map(t.clone().select(0, idx)),
        Value::Vec(t) => Value::Vec(t.clone().select(0, idx)),
    }
}

impl Executor {
    /// Compiles the masks of `modules.len()` modules (each a list of node masks).
    pub fn compile_module_masks(&self, modules: &[&[NodeMask]]) -> Result<ModuleMasks, ModelError> {
        if modules.len() > 64 {
            return Err(ModelError::Config(format!(
                "at most 64 modules of one model run together, found {}",
                modules.len()
            )));
        }
        let mut by_node: HashMap<NodeId, Vec<(u64, decomp_ir::BitSet)>> = HashMap::new();
        for (m, masks) in modules.iter().enumerate() {
            self.compile_masks(masks)?; // validates node ids and lengths
            for nm in masks.iter().filter(|nm| nm.zeroed.count_ones() > 0) {
                let entry = by_node.entry(nm.node).or_default();
                match entry.iter_mut().find(|(_, b)| *b == nm.zeroed) {
                    Some((set, _)) => *set |= 1 << m,
                    None => entry.push((1 << m, nm.zeroed.clone())),
                }
            }
        }
        let relu_fed: Vec<bool> = (0..self.ops.len())
            .map(|id| {
                let cons: Vec<usize> = (0..self.ops.len())
                    .filter(|&j| self.inputs[j].contains(&id))
                    .collect();
                !cons.is_empty() && cons.iter().all(|&j| matches!(self.ops[j], ExecOp::Relu))
            })
            .collect();
        let host = self
            .cpu
            .as_ref()
            .and_then(|p| p.host_module_masks(modules.len(), &by_node, relu_fed.clone()));
        let by_node = by_node
            .into_iter()
            .map(|(node, distinct)| {
                let compiled = distinct
                    .into_iter()
                    .map(|(set, b)| {
                        let ind: Vec<f32> = (0..b.len())
                            .map(|i| if b.get(i) { 1.0 } else { 0.0 })
                            .collect();
                        (
                            set,
                            Tensor::from_data(BurnData::new(ind, [1, b.len()]), &self.device),
                        )
                    })
                    .collect();
                (node, compiled)
            })
            .collect();
        Ok(ModuleMasks {
            modules: modules.len(),
            by_node,
            relu_fed,
            host,
        })
    }

    /// The output of `node` for every module, each `[batch * positions]` row-major on the
    /// host, from one forward pass over all modules.
    ///
    /// Work is shared wherever modules agree: all modules start as one branch over the
    /// whole batch; at a masked node, only the images on which a mask changes something
    /// split off into a new branch for the modules using that mask (a mask on a node that
    /// only feeds ReLUs changes nothing on an image whose masked positions are all `<= 0`).
    /// Each branch is a batch of its own, so the modules' masks are stacked along the batch
    /// axis with shared weights, and an image costs one pass per distinct behaviour.
    pub fn forward_modules(
        &self,
        x: Tensor<4>,
        masks: &ModuleMasks,
        node: NodeId,
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        let dims = x.dims();
        if dims[1..] != self.shapes[0][..] {
            return Err(ModelError::InputShape {
                found: dims.to_vec(),
                expected: self.shapes[0].clone(),
            });
        }
        if node >= self.ops.len() {
            return Err(ModelError::NoSuchNode(node));
        }
        let batch = dims[0];
        if let (Some(plan), Some(host)) = (&self.cpu, &masks.host)
            && plan.materialized(node)
        {
            return Ok(plan.forward_modules(&to_vec(x), batch, host, node, masks.modules));
        }
        let all: u64 = if masks.modules == 64 {
            u64::MAX
        } else {
            (1u64 << masks.modules) - 1
        };
        let mut values: Vec<Option<Vec<Branch>>> = vec![None; self.ops.len()];
        let mut input = Some(x);
        for id in 0..=node {
            let mut branches = if let ExecOp::Input = self.ops[id] {
                vec![Branch {
                    rows: (0..batch).collect(),
                    members: vec![all; batch],
                    value: Value::Map(input.take().expect("single input node")),
                }]
            } else {
                let args: Vec<&Vec<Branch>> = self.inputs[id]
                    .iter()
                    .map(|&i| values[i].as_ref().expect("inputs computed before use"))
                    .collect();
                match args.as_slice() {
                    [one] => one
                        .iter()
                        .map(|b| Branch {
                            rows: b.rows.clone(),
                            members: b.members.clone(),
                            value: self.apply(id, vec![b.value.clone()]),
                        })
                        .collect(),
                    _ => self.join(id, &args),
                }
            };
            if let Some(distinct) = masks.by_node.get(&id) {
                let mut out = Vec::new();
                for mut b in branches {
                    for (set, ind) in distinct {
                        let hit: Vec<usize> = (0..b.rows.len())
                            .filter(|&i| b.members[i] & set != 0)
                            .collect();
                        if hit.is_empty() {
                            continue;
                        }
                        let flat = b.value.clone().flat(); // [rows, p]
                        let p = flat.dims()[1];
                        let changed: Vec<usize> = if masks.relu_fed[id] {
                            let s = to_vec(
                                (burn::tensor::activation::relu(flat.clone())
                                    * ind.clone().expand([b.rows.len(), p]))
                                .sum_dim(1),
                            );
                            hit.into_iter().filter(|&i| s[i] > 0.0).collect()
                        } else {
                            hit
                        };
                        if changed.is_empty() {
                            continue;
                        }
                        let sub = select_rows(&b.value, &changed, &self.device).flat();
                        let keep = Tensor::ones([1, p], &self.device) - ind.clone();
                        let masked = sub * keep.expand([changed.len(), p]);
                        let shape = &self.shapes[id];
                        let value = if shape.len() == 3 {
                            Value::Map(masked.reshape([
                                changed.len(),
                                shape[0],
                                shape[1],
                                shape[2],
                            ]))
                        } else {
                            Value::Vec(masked)
                        };
                        out.push(Branch {
                            rows: changed.iter().map(|&i| b.rows[i]).collect(),
                            members: changed.iter().map(|&i| b.members[i] & set).collect(),
                            value,
                        });
                        for &i in &changed {
                            b.members[i] &= !set;
                        }
                    }
                    let live: Vec<usize> =
                        (0..b.rows.len()).filter(|&i| b.members[i] != 0).collect();
                    if live.len() == b.rows.len() {
                        out.push(b);
                    } else if !live.is_empty() {
                        out.push(Branch {
                            value: select_rows(&b.value, &live, &self.device),
                            rows: live.iter().map(|&i| b.rows[i]).collect(),
                            members: live.iter().map(|&i| b.members[i]).collect(),
                        });
                    }
                }
                branches = out;
            }
            if id < node {
                self.release(id, &mut values);
            }
            values[id] = Some(branches);
        }
        let per: usize = self.shapes[node].iter().product();
        let mut result = vec![vec![0.0f32; batch * per]; masks.modules];
        for b in values[node].take().expect("node computed") {
            let data = to_vec(b.value.flat());
            for (i, (&r, &set)) in b.rows.iter().zip(&b.members).enumerate() {
                for (m, out) in result.iter_mut().enumerate() {
                    if set >> m & 1 == 1 {
                        out[r * per..(r + 1) * per].copy_from_slice(&data[i * per..(i + 1) * per]);
                    }
                }
            }
        }
        Ok(result)
    }

    /// Applies a two-input op to branched inputs: one branch per distinct pair of input
    /// branches that share an image and a module.
    fn join(&self, id: NodeId, args: &[&Vec<Branch>]) -> Vec<Branch> {
        let (a, b) = (args[0], args[1]);
        // (branch of a, branch of b) -> rows (positions in each) and members.
        // (image, position in a, position in b, shared members) per pair of branches.
        type Rows = Vec<(usize, usize, usize, u64)>;
        let mut pairs: Vec<((usize, usize), Rows)> = Vec::new();
        let mut where_b: HashMap<usize, Vec<(usize, usize)>> = HashMap::new();
        for (j, bb) in b.iter().enumerate() {
            for (pos, &r) in bb.rows.iter().enumerate() {
                where_b.entry(r).or_default().push((j, pos));
            }
        }
        for (i, ba) in a.iter().enumerate() {
            for (pa, &r) in ba.rows.iter().enumerate() {
                for &(j, pb) in where_b.get(&r).map(Vec::as_slice).unwrap_or(&[]) {
                    let m = ba.members[pa] & b[j].members[pb];
                    if m == 0 {
                        continue;
                    }
                    match pairs.iter_mut().find(|(k, _)| *k == (i, j)) {
                        Some((_, v)) => v.push((r, pa, pb, m)),
                        None => pairs.push(((i, j), vec![(r, pa, pb, m)])),
                    }
                }
            }
        }
        pairs
            .into_iter()
            .map(|((i, j), rows)| {
                let pa: Vec<usize> = rows.iter().map(|x| x.1).collect();
                let pb: Vec<usize> = rows.iter().map(|x| x.2).collect();
                let full = |br: &Branch, p: &[usize]| {
                    if p.len() == br.rows.len() && p.iter().enumerate().all(|(k, &x)| k == x) {
                        br.value.clone()
                    } else {
                        select_rows(&br.value, p, &self.device)
                    }
                };
                let va = full(&a[i], &pa);
                let vb = full(&b[j], &pb);
                Branch {
                    rows: rows.iter().map(|x| x.0).collect(),
                    members: rows.iter().map(|x| x.3).collect(),
                    value: self.apply(id, vec![va, vb]),
                }
            })
            .collect()
    }
}

/// Marks in `active` (one bitset per captured site) every position whose value is `> 0`
/// for at least one of the chosen rows (all rows when `rows` is `None`). The reduction runs
/// on the device; only one row per site comes back to the host.
pub fn accumulate_active(
    captured: &[Tensor<2>],
    rows: Option<&[usize]>,
    active: &mut [decomp_ir::BitSet],
) {
    if rows.is_some_and(<[usize]>::is_empty) {
        return;
    }
    for (t, acc) in captured.iter().zip(active.iter_mut()) {
        let t = match rows {
            Some(r) => {
                let idx: Vec<i64> = r.iter().map(|&i| i as i64).collect();
                let idx = Tensor::<1, burn::tensor::Int>::from_data(
                    BurnData::new(idx, [r.len()]),
                    &t.device(),
                );
                t.clone().select(0, idx)
            }
            None => t.clone(),
        };
        let max = to_vec(t.max_dim(0));
        for (i, v) in max.iter().enumerate() {
            if *v > 0.0 {
                acc.set(i, true);
            }
        }
    }
}

impl Executor {
    /// First-order sensitivity of the margin `logit 0 - logit 1` (a module's `mine - other`)
    /// to holding channels at their mean: every node of `gated` (a `[c, h, w]` node, e.g. a
    /// ReLU) gets a per-image, per-channel gate `g` applied as `mean + g * (x - mean)`, and
    /// the result is `d margin / d g` at `g = 1`, per gated node `[batch * c]` row-major.
    /// So entry `(b, c)` is `sum over positions of d margin / d x * (x - mean)` on image `b`:
    /// the first-order change of image `b`'s margin when channel `c` is replaced by its mean.
    /// The executor must run on an autodiff device ([`Device::autodiff`]) with burn ops;
    /// `masks` are applied as in [`Executor::forward_probe`].
    pub fn gate_gradients(
        &self,
        x: Tensor<4>,
        masks: Option<&CompiledMasks>,
        gated: &[(NodeId, &[f32])],
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        let x = x.to_device(&self.device);
        let batch = x.dims()[0];
        let mut gates = HashMap::new();
        let mut leaves = Vec::with_capacity(gated.len());
        for &(node, mean) in gated {
            let shape = self.shapes.get(node).ok_or(ModelError::NoSuchNode(node))?;
            if shape.len() != 3 || shape[0] != mean.len() {
                return Err(ModelError::Config(format!(
                    "gate on node {node}: {} means for a node of shape {shape:?}",
                    mean.len()
                )));
            }
            let c = shape[0];
            let g = Tensor::<2>::ones([batch, c], &self.device).require_grad();
            leaves.push(g.clone());
            let m = Tensor::<1>::from_data(BurnData::new(mean.to_vec(), [c]), &self.device)
                .reshape([1, c, 1, 1]);
            gates.insert(node, (g.reshape([batch, c, 1, 1]), m));
        }
        let out = self.forward_burn(
            x,
            &Probe {
                capture: &[],
                masks,
            },
            Some(&gates),
        )?;
        let [_, k] = out.logits.dims();
        if k != 2 {
            return Err(ModelError::Config(format!(
                "gate gradients need a two-output graph (mine, other), this one has {k} outputs"
            )));
        }
        let margin = out.logits.clone().slice(s![.., 0..1]) - out.logits.slice(s![.., 1..2]);
        let grads = margin.sum().backward();
        leaves
            .iter()
            .map(|g| {
                g.grad(&grads).map(to_vec).ok_or_else(|| {
                    ModelError::Config(
                        "gate gradients: the executor's device does not record gradients \
                         (build it on device.autodiff())"
                            .into(),
                    )
                })
            })
            .collect()
    }
}

/// Checks row-major `[images, width]` values of node `node`: the first NaN or infinite one
/// is a [`ModelError::NonFinite`] naming image `first_image + row` and `{what} {column}`.
pub fn check_finite(
    values: &[f32],
    width: usize,
    first_image: usize,
    node: &str,
    what: &str,
) -> Result<(), ModelError> {
    match values.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(i) => Err(ModelError::NonFinite {
            image: first_image + i / width.max(1),
            node: node.to_string(),
            what: format!("{what} {}", i % width.max(1)),
            value: values[i],
        }),
    }
}

/// Copies a burn tensor back into row-major `f32` values.
pub fn to_vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("f32 data after conversion")
}

/// Which positions of some nodes are active (`> 0`) on each image of one batch, from
/// [`Executor::forward_active`]: what concern and tangling identification reduce.
pub struct ActiveBatch {
    /// `[batch * classes]` row-major, on the host.
    pub logits: Vec<f32>,
    batch: usize,
    sites: Vec<NodeId>,
    inner: ActiveInner,
}

enum ActiveInner {
    /// CPU plan: one bit per image and position, storage order, per site.
    Bits(Vec<Vec<u64>>),
    /// Burn engine: the captured outputs, reduced on the device.
    Captured(Vec<Tensor<2>>),
}

impl Executor {
    /// Logits of `x` and, for every node of `sites`, which positions are `> 0` on each image,
    /// for [`ActiveBatch::accumulate`]. On the CPU engine the site outputs are reduced to one
    /// bit per position while each image tile is computed, never stored as values.
    pub fn forward_active(
        &self,
        x: Tensor<4>,
        sites: &[NodeId],
    ) -> Result<ActiveBatch, ModelError> {
        let dims = x.dims();
        if dims[1..] != self.shapes[0][..] {
            return Err(ModelError::InputShape {
                found: dims.to_vec(),
                expected: self.shapes[0].clone(),
            });
        }
        if let Some(&bad) = sites.iter().find(|&&c| c >= self.ops.len()) {
            return Err(ModelError::NoSuchNode(bad));
        }
        let batch = dims[0];
        if let Some(plan) = &self.cpu
            && sites.iter().all(|&c| plan.materialized(c))
        {
            let (logits, bits) = plan.forward_active(&to_vec(x), batch, sites);
            return Ok(ActiveBatch {
                logits,
                batch,
                sites: sites.to_vec(),
                inner: ActiveInner::Bits(bits),
            });
        }
        let out = self.forward_probe(
            x,
            &Probe {
                capture: sites,
                masks: None,
            },
        )?;
        Ok(ActiveBatch {
            logits: to_vec(out.logits),
            batch,
            sites: sites.to_vec(),
            inner: ActiveInner::Captured(out.captured),
        })
    }

    /// Marks in `active` (one bitset per site of `batch`, channel-first positions) every
    /// position that is `> 0` on at least one of the chosen rows (all rows when `None`).
    pub fn accumulate(
        &self,
        batch: &ActiveBatch,
        rows: Option<&[usize]>,
        active: &mut [decomp_ir::BitSet],
    ) {
        if rows.is_some_and(<[usize]>::is_empty) {
            return;
        }
        match (&batch.inner, &self.cpu) {
            (ActiveInner::Bits(bits), Some(plan)) => {
                plan.accumulate_bits(&batch.sites, bits, batch.batch, rows, active)
            }
            (ActiveInner::Captured(c), _) => accumulate_active(c, rows, active),
            (ActiveInner::Bits(_), None) => unreachable!("bits come from the CPU plan"),
        }
    }
}
