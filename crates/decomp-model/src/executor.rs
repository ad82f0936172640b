//! Runs any valid IR graph on a burn [`Device`].

use std::collections::HashMap;

use burn::tensor::module::{avg_pool2d, batch_norm, conv2d, linear, max_pool2d};
use burn::tensor::ops::{AvgPoolOptions, ConvOptions, MaxPoolOptions};
use burn::tensor::{Device, Tensor, TensorData as BurnData, s};
use decomp_ir::{ModelIr, NodeId, NodeMask, Op, Shape, TensorData};

use crate::ModelError;

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
}

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
    /// Validates `model` and uploads its parameters to `device`.
    pub fn new(model: &ModelIr, device: &Device) -> Result<Self, ModelError> {
        let shapes = model.check()?;
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
        })
    }

    pub fn device(&self) -> &Device {
        &self.device
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
            let shape = self.shapes.get(m.node).ok_or(ModelError::NoSuchNode(m.node))?;
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
        Ok(CompiledMasks { by_node })
    }

    /// Logits `[batch, classes]` of a `[batch, c, h, w]` input.
    pub fn forward(&self, x: Tensor<4>) -> Result<Tensor<2>, ModelError> {
        Ok(self.forward_probe(x, &Probe::default())?.logits)
    }

    /// Forward pass that can also capture node outputs and apply masks.
    pub fn forward_probe(&self, x: Tensor<4>, probe: &Probe<'_>) -> Result<ForwardOutput, ModelError> {
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
                    let v = if last { values[i].take() } else { values[i].clone() };
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
            for (slot, &c) in captured.iter_mut().zip(probe.capture) {
                if c == id {
                    *slot = Some(v.clone().flat());
                }
            }
            self.release(id, &mut values);
            values[id] = Some(v);
        }
        let logits = values[self.output]
            .take()
            .expect("output computed")
            .flat();
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
            } => Value::Map(conv2d(arg(0).map(), weight.clone(), bias.clone(), options.clone())),
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
                let t = if *stride > 1 { t.slice(s![.., .., ..;st, ..;st]) } else { t };
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
        }
    }
}

/// Masks of several modules over one model, compiled for [`Executor::forward_modules`].
/// Identical masks are stored once, so modules that zero the same positions share work.
pub struct ModuleMasks {
    modules: usize,
    /// Per masked node: for each module the index of its mask in `distinct`, if any.
    by_node: HashMap<NodeId, (Vec<Option<usize>>, Vec<Tensor<2>>)>,
}

impl ModuleMasks {
    pub fn modules(&self) -> usize {
        self.modules
    }
}

/// A value shared by groups of modules: `tensor` holds `groups` blocks of `batch` rows,
/// module `m` reads block `group_of[m]`.
#[derive(Clone)]
struct Grouped {
    group_of: Vec<usize>,
    groups: usize,
    value: Value,
}

/// Renumbers per-module keys into dense group ids in order of first appearance.
fn regroup<K: PartialEq + Clone>(keys: &[K]) -> (Vec<usize>, Vec<K>) {
    let mut seen: Vec<K> = Vec::new();
    let ids = keys
        .iter()
        .map(|k| match seen.iter().position(|s| s == k) {
            Some(i) => i,
            None => {
                seen.push(k.clone());
                seen.len() - 1
            }
        })
        .collect();
    (ids, seen)
}

impl Executor {
    /// Compiles the masks of `modules.len()` modules (each a list of node masks).
    pub fn compile_module_masks(&self, modules: &[&[NodeMask]]) -> Result<ModuleMasks, ModelError> {
        let mut by_node: HashMap<NodeId, (Vec<Option<usize>>, Vec<decomp_ir::BitSet>)> = HashMap::new();
        for (m, masks) in modules.iter().enumerate() {
            self.compile_masks(masks)?; // validates node ids and lengths
            for nm in *masks {
                let entry = by_node
                    .entry(nm.node)
                    .or_insert_with(|| (vec![None; modules.len()], Vec::new()));
                if nm.zeroed.count_ones() == 0 {
                    continue;
                }
                let idx = match entry.1.iter().position(|b| *b == nm.zeroed) {
                    Some(i) => i,
                    None => {
                        entry.1.push(nm.zeroed.clone());
                        entry.1.len() - 1
                    }
                };
                entry.0[m] = Some(idx);
            }
        }
        let by_node = by_node
            .into_iter()
            .filter(|(_, (which, _))| which.iter().any(Option::is_some))
            .map(|(node, (which, distinct))| {
                let tensors = distinct
                    .iter()
                    .map(|b| {
                        let keep: Vec<f32> = (0..b.len()).map(|i| if b.get(i) { 0.0 } else { 1.0 }).collect();
                        Tensor::from_data(BurnData::new(keep, [1, b.len()]), &self.device)
                    })
                    .collect();
                (node, (which, tensors))
            })
            .collect();
        Ok(ModuleMasks {
            modules: modules.len(),
            by_node,
        })
    }

    /// One batched forward pass for several modules of this model: the output of `node`
    /// for every module, each `[batch, positions]`.
    ///
    /// Modules are grouped by the masks they have applied so far; each group is computed
    /// once, and groups are stacked along the batch axis, so shared weights run as one
    /// large batch and modules with identical masks cost nothing extra.
    pub fn forward_modules(&self, x: Tensor<4>, masks: &ModuleMasks, node: NodeId) -> Result<Vec<Tensor<2>>, ModelError> {
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
        let k = masks.modules;
        let mut values: Vec<Option<Grouped>> = vec![None; self.ops.len()];
        let mut input = Some(x);
        for id in 0..=node {
            let mut g = if let ExecOp::Input = self.ops[id] {
                Grouped {
                    group_of: vec![0; k],
                    groups: 1,
                    value: Value::Map(input.take().expect("single input node")),
                }
            } else {
                let args: Vec<&Grouped> = self.inputs[id]
                    .iter()
                    .map(|&i| values[i].as_ref().expect("inputs computed before use"))
                    .collect();
                // Groups of the result: distinct combinations of the inputs' groups.
                let keys: Vec<Vec<usize>> = (0..k).map(|m| args.iter().map(|a| a.group_of[m]).collect()).collect();
                let (group_of, combos) = regroup(&keys);
                let vals = args
                    .iter()
                    .enumerate()
                    .map(|(j, a)| {
                        let pick: Vec<usize> = combos.iter().map(|c| c[j]).collect();
                        gather(&a.value, a.groups, &pick, batch, &self.device)
                    })
                    .collect();
                Grouped {
                    groups: combos.len(),
                    group_of,
                    value: self.apply(id, vals),
                }
            };
            if let Some((which, tensors)) = masks.by_node.get(&id) {
                let keys: Vec<(usize, Option<usize>)> = (0..k).map(|m| (g.group_of[m], which[m])).collect();
                let (group_of, combos) = regroup(&keys);
                let pick: Vec<usize> = combos.iter().map(|c| c.0).collect();
                let v = gather(&g.value, g.groups, &pick, batch, &self.device);
                let n = tensors[0].dims()[1];
                let ones = Tensor::ones([1, n], &self.device);
                let rows: Vec<Tensor<2>> = combos
                    .iter()
                    .map(|c| c.1.map_or_else(|| ones.clone(), |i| tensors[i].clone()))
                    .collect();
                let stacked: Tensor<2> = Tensor::cat(rows, 0); // [groups, n]
                let groups = combos.len();
                let flat = v.flat(); // [groups * batch, n]
                let masked = flat.reshape([groups, batch, n]) * stacked.reshape([groups, 1, n]).expand([groups, batch, n]);
                let masked = masked.reshape([groups * batch, n]);
                let shape = &self.shapes[id];
                g = Grouped {
                    group_of,
                    groups,
                    value: if shape.len() == 3 {
                        Value::Map(masked.reshape([groups * batch, shape[0], shape[1], shape[2]]))
                    } else {
                        Value::Vec(masked)
                    },
                };
            }
            if id < node {
                self.release(id, &mut values);
            }
            values[id] = Some(g);
        }
        let g = values[node].take().expect("node computed");
        let flat = g.value.flat();
        Ok((0..k)
            .map(|m| flat.clone().narrow(0, g.group_of[m] * batch, batch))
            .collect())
    }
}

/// Reorders the `groups` blocks of `batch` rows of `v` into the blocks listed in `pick`.
fn gather(v: &Value, groups: usize, pick: &[usize], batch: usize, device: &Device) -> Value {
    if pick.len() == groups && pick.iter().enumerate().all(|(i, &p)| i == p) {
        return v.clone();
    }
    let idx: Vec<i64> = pick
        .iter()
        .flat_map(|&p| (p * batch..(p + 1) * batch).map(|r| r as i64))
        .collect();
    let idx = Tensor::<1, burn::tensor::Int>::from_data(BurnData::new(idx, [pick.len() * batch]), device);
    match v {
        Value::Map(t) => Value::Map(t.clone().select(0, idx)),
        Value::Vec(t) => Value::Vec(t.clone().select(0, idx)),
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
                let idx = Tensor::<1, burn::tensor::Int>::from_data(BurnData::new(idx, [r.len()]), &t.device());
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

/// Copies a burn tensor back into row-major `f32` values.
pub fn to_vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("f32 data after conversion")
}
