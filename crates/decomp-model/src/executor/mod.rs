//! Runs any valid IR graph on a burn [`Device`].
//!
//! Files: this one holds the [`Executor`] (compilation, engine choice, probes: captures and
//! masks); `ops` the burn op of every IR op, `branch` the branching pass over many modules
//! ([`Executor::forward_modules`]), `activity` the per-position activity counts concern and
//! tangling identification reduce ([`Executor::forward_active`]), `gates` the gate gradients
//! of channel selection on burn autodiff.

use std::collections::HashMap;

use burn::tensor::{Device, Tensor, TensorData as BurnData};
use decomp_ir::{ModelIr, NodeId, NodeMask, Shape, TensorData};

use crate::ModelError;
use crate::cpu::{CpuPlan, CpuTuning, HostMasks};

mod activity;
mod branch;
mod gates;
mod ops;

pub use activity::ActiveBatch;
pub use branch::ModuleMasks;
use ops::{ExecOp, Value};

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

pub(super) fn upload<const D: usize>(t: &TensorData, device: &Device) -> Tensor<D> {
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
                ModelError::Config(
                    "the cpu engine does not support this graph (an op added after the plan)"
                        .into(),
                )
            })?),
        };
        let graph = &model.graph;
        let mut ops = Vec::with_capacity(graph.nodes.len());
        for node in &graph.nodes {
            ops.push(ExecOp::compile(&node.op, device));
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
