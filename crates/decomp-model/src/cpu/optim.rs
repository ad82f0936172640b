//! SGD and Adam steps on the parameters of a [`ModelIr`] given [`StepGradients`], with the
//! arithmetic of burn's optimizers (the path `train` uses), so both paths mean the same by a
//! recipe.
//!
//! Per parameter `p` with gradient `g` (every parameter, BatchNorm's and biases included,
//! as burn's `ModuleOptimizer` does), all in `f32` with burn's order of operations:
//! - weight decay (L2 added to the gradient): `g = p * wd + g`;
//! - SGD with momentum `mu` and dampening `d`: the first step's velocity is `g`, later ones
//!   `v = g * (1 - d) + v * mu`; the step uses `v`, or `v * mu + g` with Nesterov; then
//!   `p = p - step * lr`;
//! - Adam: `m = m * b1 + g * (1 - b1)`, `v = v * b2 + g * g * (1 - b2)` (the first step
//!   starts from zero moments), `c2 = sqrt(1 - b2^t)`, and `p = p - (m * (c2 / (1 - b1^t))
//!   / (sqrt(v) + eps * c2)) * lr`.
//!
//! The state serializes ([`CpuOptimizer::to_bytes`]) for `TrainCheckpoint`'s `optimizer`
//! field: [`STATE_MAGIC`], then bincode (standard config) of the per-parameter states sorted
//! by name. burn's optimizer records never start with the magic, so the bytes say which
//! training engine wrote them ([`CpuOptimizer::owns`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use decomp_ir::TensorData;

use super::grad::StepGradients;
use super::*;
use crate::ModelError;
use crate::train::OptimizerConfig;

/// First bytes of a serialized [`CpuOptimizer`] state (the trailing byte is its version).
pub const STATE_MAGIC: &[u8; 16] = b"decomp-cpu-optm\x01";

/// One parameter's optimizer state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
enum State {
    Sgd {
        velocity: Vec<f32>,
    },
    Adam {
        time: i32,
        m1: Vec<f32>,
        m2: Vec<f32>,
    },
}

/// An optimizer over a model's parameters, state keyed by parameter name; see the module
/// docs.
#[derive(Clone, Debug)]
pub struct CpuOptimizer {
    config: OptimizerConfig,
    state: BTreeMap<String, State>,
}

impl CpuOptimizer {
    pub fn new(config: OptimizerConfig) -> Self {
        Self {
            config,
            state: BTreeMap::new(),
        }
    }

    /// True when `bytes` are a state [`CpuOptimizer::to_bytes`] wrote (not burn's record).
    pub fn owns(bytes: &[u8]) -> bool {
        bytes.starts_with(STATE_MAGIC)
    }

    /// The state (per-parameter momentum or Adam moments and time step), for a checkpoint.
    pub fn to_bytes(&self) -> Result<Vec<u8>, ModelError> {
        let mut out = STATE_MAGIC.to_vec();
        bincode::serde::encode_into_std_write(&self.state, &mut out, bincode::config::standard())
            .map_err(|e| ModelError::Config(format!("serializing the optimizer state: {e}")))?;
        Ok(out)
    }

    /// An optimizer for `config` continuing from a state [`CpuOptimizer::to_bytes`] wrote.
    /// A state of the other optimizer kind (SGD against Adam) is an error.
    pub fn from_bytes(config: OptimizerConfig, bytes: &[u8]) -> Result<Self, ModelError> {
        let bad =
            |msg: String| ModelError::Config(format!("optimizer state in the checkpoint: {msg}"));
        let payload = bytes
            .strip_prefix(STATE_MAGIC.as_slice())
            .ok_or_else(|| bad("not written by the CPU training engine".into()))?;
        let (state, used): (BTreeMap<String, State>, usize) =
            bincode::serde::decode_from_slice(payload, bincode::config::standard())
                .map_err(|e| bad(e.to_string()))?;
        if used != payload.len() {
            return Err(bad(format!("{} trailing bytes", payload.len() - used)));
        }
        let adam = matches!(config, OptimizerConfig::Adam { .. });
        if let Some((name, _)) = state
            .iter()
            .find(|(_, s)| matches!(s, State::Adam { .. }) != adam)
        {
            return Err(bad(format!(
                "parameter {name} has the other optimizer's state (the configuration says {})",
                if adam { "Adam" } else { "SGD" }
            )));
        }
        Ok(Self { config, state })
    }

    /// Moves every parameter of `model` named in `grads` by one step at learning rate `lr`.
    pub fn step(
        &mut self,
        model: &mut ModelIr,
        grads: &StepGradients,
        lr: f64,
    ) -> Result<(), ModelError> {
        let lr = lr as f32;
        for p in &grads.params {
            let node = model
                .graph
                .nodes
                .get_mut(p.node)
                .ok_or(ModelError::NoSuchNode(p.node))?;
            let weight = p.name.ends_with(".weight");
            let Some(param) = param_mut(&mut node.op, weight) else {
                return Err(ModelError::Config(format!(
                    "gradient {} has no parameter in node {} ({})",
                    p.name, p.node, node.name
                )));
            };
            if param.data.len() != p.grad.data.len() {
                return Err(ModelError::Config(format!(
                    "gradient {} has {} values, the parameter {}",
                    p.name,
                    p.grad.data.len(),
                    param.data.len()
                )));
            }
            let state = self.state.remove(&p.name);
            let mut state = update(&self.config, &mut param.data, &p.grad.data, state, lr);
            zero_below(&mut param.data, NEGLIGIBLE_PARAMETER);
            state.zero_subnormals();
            self.state.insert(p.name.clone(), state);
        }
        Ok(())
    }
}

/// The parameter a gradient named `<node>.weight` (`weight`) or `<node>.bias` belongs to.
fn param_mut(op: &mut Op, weight: bool) -> Option<&mut TensorData> {
    match op {
        Op::Conv2d {
            weight: w, bias, ..
        }
        | Op::Linear { weight: w, bias } => {
            if weight {
                Some(w)
            } else {
                bias.as_mut()
            }
        }
        Op::BatchNorm2d { gamma, beta, .. } => Some(if weight { gamma } else { beta }),
        _ => None,
    }
}

/// Parameters below this magnitude are set to zero after each step (see [`zero_below`]).
///
/// Under Adam with L2 weight decay, a weight whose loss gradient is zero (a dead channel's)
/// shrinks by the factor `1 - lr * weight_decay / epsilon` per step once `weight_decay * |w|`
/// is below `epsilon` (1% per step at `paper-keras`'s last learning rate), down into the
/// subnormal range, where it stays once the step is below half its spacing. Such weights, and
/// the Winograd transforms and products made from them, are subnormal operands or results,
/// and each FMA of the convolution kernels that touches one takes a microcode assist on x86.
/// A no-BatchNorm ResNet-32 after 24 epochs of `paper-keras` held 1.7% of its convolution
/// weights subnormal and 2% more below 1e-30, and trained at 147 images/s where a fresh one
/// runs at about 360. A parameter below 1e-20 moves no output by more than 1e-20 times an
/// input (activations are far below 1e4), 1e-16 of a unit output, below f32's resolution.
const NEGLIGIBLE_PARAMETER: f32 = 1e-20;

/// Sets the values of `x` below `floor` in magnitude to zero.
fn zero_below(x: &mut [f32], floor: f32) {
    for v in x.iter_mut().filter(|v| v.abs() < floor) {
        *v = 0.0;
    }
}

impl State {
    /// Sets the subnormal moments and velocities to zero ([`NEGLIGIBLE_PARAMETER`] says why):
    /// only those, since a moment's size is relative to `epsilon`, not to the parameter.
    fn zero_subnormals(&mut self) {
        let floor = f32::MIN_POSITIVE;
        match self {
            State::Sgd { velocity } => zero_below(velocity, floor),
            State::Adam { m1, m2, .. } => {
                zero_below(m1, floor);
                zero_below(m2, floor);
            }
        }
    }
}

/// One step of one parameter; returns its new state.
fn update(
    config: &OptimizerConfig,
    p: &mut [f32],
    grad: &[f32],
    state: Option<State>,
    lr: f32,
) -> State {
    let decayed = |wd: f64| -> Vec<f32> {
        if wd > 0.0 {
            let wd = wd as f32;
            p.iter().zip(grad).map(|(&p, &g)| p * wd + g).collect()
        } else {
            grad.to_vec()
        }
    };
    match *config {
        OptimizerConfig::Sgd {
            momentum,
            dampening,
            nesterov,
            weight_decay,
        } => {
            let g = decayed(weight_decay);
            if momentum <= 0.0 {
                for (p, g) in p.iter_mut().zip(&g) {
                    *p -= g * lr;
                }
                return State::Sgd {
                    velocity: Vec::new(),
                };
            }
            let (mu, keep) = (momentum as f32, (1.0 - dampening) as f32);
            let velocity = match state {
                Some(State::Sgd { mut velocity }) if velocity.len() == g.len() => {
                    for (v, &g) in velocity.iter_mut().zip(&g) {
                        *v = g * keep + *v * mu;
                    }
                    velocity
                }
                _ => g.clone(),
            };
            for ((p, &v), &g) in p.iter_mut().zip(&velocity).zip(&g) {
                let step = if nesterov { v * mu + g } else { v };
                *p -= step * lr;
            }
            State::Sgd { velocity }
        }
        OptimizerConfig::Adam {
            beta1,
            beta2,
            epsilon,
            weight_decay,
        } => {
            let g = decayed(weight_decay);
            let (b1, b2, eps) = (beta1 as f32, beta2 as f32, epsilon as f32);
            let (time, m1, m2) = match state {
                Some(State::Adam {
                    time,
                    mut m1,
                    mut m2,
                }) if m1.len() == g.len() => {
                    for ((m1, m2), &g) in m1.iter_mut().zip(m2.iter_mut()).zip(&g) {
                        *m1 = *m1 * b1 + g * (1.0 - b1);
                        *m2 = *m2 * b2 + g * g * (1.0 - b2);
                    }
                    (time + 1, m1, m2)
                }
                _ => (
                    1,
                    g.iter().map(|&g| g * (1.0 - b1)).collect(),
                    g.iter().map(|&g| g * g * (1.0 - b2)).collect(),
                ),
            };
            let c2 = (1.0 - b2.powi(time)).sqrt();
            let factor = c2 / (1.0 - b1.powi(time));
            for ((p, &m1), &m2) in p.iter_mut().zip(&m1).zip(&m2) {
                *p -= (m1 * factor) / (m2.sqrt() + eps * c2) * lr;
            }
            State::Adam { time, m1, m2 }
        }
    }
}

impl super::grad::GradEngine {
    /// One training step on a batch: gradients, then `optimizer`'s update at learning rate
    /// `lr`. Returns the batch's mean cross-entropy and the images right before the update,
    /// as `Trainer::step` does; a loss that is not a finite `f32` is an error and changes no
    /// parameter.
    pub fn step(
        &mut self,
        optimizer: &mut CpuOptimizer,
        images: &[f32],
        labels: &[usize],
        lr: f64,
    ) -> Result<(f64, usize), ModelError> {
        self.step_for(optimizer, images, super::grad::Target::Labels(labels), lr)
    }

    /// [`Self::step`] towards any [`super::grad::Target`].
    pub fn step_for(
        &mut self,
        optimizer: &mut CpuOptimizer,
        images: &[f32],
        target: super::grad::Target<'_>,
        lr: f64,
    ) -> Result<(f64, usize), ModelError> {
        // The whole step inside the thread pool (see `gradients_for`).
        rayon::scope(|_| self.step_in_pool(optimizer, images, target, lr))
    }

    fn step_in_pool(
        &mut self,
        optimizer: &mut CpuOptimizer,
        images: &[f32],
        target: super::grad::Target<'_>,
        lr: f64,
    ) -> Result<(f64, usize), ModelError> {
        let grads = self.gradients_for(images, target)?;
        // The loss is summed in f64; one an f32 cannot hold (as burn's f32 loss could not)
        // has diverged too.
        let loss = grads.loss as f32;
        if !loss.is_finite() {
            return Err(ModelError::Train(format!(
                "diverged: loss {loss} (lower the learning rate)"
            )));
        }
        optimizer.step(self.model_mut(), &grads, lr)?;
        Ok((grads.loss, grads.correct))
    }
}
