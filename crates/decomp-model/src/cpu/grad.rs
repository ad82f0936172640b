//! Training-mode forward and backward passes on the CPU plan's kernels: the loss of one batch
//! and the gradient of every parameter, without burn.
//!
//! [`GradEngine`] holds a model as IR (its parameters and BatchNorm running statistics are
//! the state) and computes, per batch, the loss towards a [`Target`] (softmax cross-entropy
//! of labels, or the squared error of a two-logit margin, which distils a source model's
//! margin into a channel module) and every parameter's gradient in IR layout
//! ([`StepGradients`]). Channel modules' own ops (`ChannelGather` shortcuts, `BiasMap`
//! constants) are differentiated too, and BatchNorms can be frozen (running statistics,
//! as when fine-tuning part of a trained model). Each step compiles an unfolded plan
//! (`CpuPlan::unfolded`: every BatchNorm its own node) from the current parameters and runs
//! it tile by tile (a few images per rayon task, as inference does):
//! - forward: convolutions, ReLU, Add, shortcuts, pooling and the head through the plan's own
//!   `apply` (Winograd for 3x3 stride-1 padding-1 convolutions, im2col + products
//!   otherwise); BatchNorm with the batch's statistics (mean and biased variance over all
//!   images and pixels, reduced across tiles in `f64`), after which the running statistics
//!   move by [`GradEngine::bn_momentum`] towards the batch's mean and biased variance, as
//!   burn's `BatchNorm` does. Only the values the backward pass reads are kept (inputs of
//!   convolutions, BatchNorms and linear layers, ReLU outputs); the others go to their last
//!   reader, which reuses the buffer (ReLU and Add in place), or are freed.
//! - backward, in reverse node order: a convolution's weight gradient is `im2col(x)^T x dY`
//!   per tile (products `dY^T [cout, rows] x col [rows, K]`), summed over tiles in tile
//!   order; its data gradient is the Winograd forward of the flipped, transposed kernel for
//!   3x3 stride-1 padding-1 convolutions, `col2im(dY x W^T)` otherwise; BatchNorm's backward
//!   is the usual two-reduction form; ReLU masks by its output.
//!
//! Everything is channels-last inside; gradients leave in IR layout (convolutions
//! `[out, in, kh, kw]`, linear `[out, in]`) under PyTorch's parameter names
//! (`<node>.weight`, `<node>.bias`; a BatchNorm's `gamma` is its `weight`, `beta` its
//! `bias`), which are also `burn_resnet`'s parameter names.

use decomp_ir::TensorData;

use super::conv::{col2im, im2col};
use super::elementwise::{
    add_into, affine, affine2, bn_grad_sums, channel_sq_dev, channel_sum, relu_mask,
};
use super::*;
use crate::ModelError;
use crate::executor::check_finite;

mod gates;
use gates::gate_sums;

/// The gradient of one parameter, in IR layout.
#[derive(Clone, Debug)]
pub struct ParamGrad {
    /// The node holding the parameter.
    pub node: NodeId,
    /// `<node name>.weight` or `<node name>.bias` (PyTorch's state-dict name).
    pub name: String,
    pub grad: TensorData,
}

/// What one training-mode pass over a batch computed.
#[derive(Clone, Debug)]
pub struct StepGradients {
    /// The batch's mean loss: softmax cross-entropy for labels, squared margin error for
    /// margins ([`Target`]).
    pub loss: f64,
    /// Images whose largest logit is their label, or whose margin has the sign of its target
    /// (before any update).
    pub correct: usize,
    /// Every parameter's gradient, in node order (weight before bias).
    pub params: Vec<ParamGrad>,
}

/// Loss and gradients of a model on the CPU plan's kernels; see the module docs.
pub struct GradEngine {
    model: ModelIr,
    shapes: Vec<Shape>,
    tuning: CpuTuning,
    /// Weight of the batch statistics in the running-statistics update
    /// (`running = (1 - m) running + m batch`); burn's `BatchNormConfig` default.
    pub bn_momentum: f64,
    /// BatchNorms normalize with their running statistics (inference mode, as when
    /// fine-tuning part of a trained model), which stay as they are; `gamma` and `beta` still
    /// train.
    frozen_batch_norm: bool,
}

/// What a batch is trained towards.
#[derive(Clone, Copy, Debug)]
pub enum Target<'a> {
    /// One class label per image: mean softmax cross-entropy.
    Labels(&'a [usize]),
    /// One margin per image for a two-logit output: mean squared error of `z_0 - z_1`
    /// against it (distillation of a source model's margin into a module). With `floors`,
    /// an image whose target is below its floor only asks the margin to stay at or below
    /// the floor (error `max(0, margin - floor)`): where the target does not matter beyond
    /// being low, it is not fitted.
    Margins {
        targets: &'a [f32],
        floors: Option<&'a [f32]>,
    },
}

impl Target<'_> {
    fn len(&self) -> usize {
        match self {
            Target::Labels(l) => l.len(),
            Target::Margins { targets, .. } => targets.len(),
        }
    }
}

/// A BatchNorm's batch statistics, kept for its backward pass.
struct BnSaved {
    mean: Vec<f32>,
    inv_std: Vec<f32>,
}

/// Per-tile buffers of one node's values or gradients (channels-last).
type Tiles = Vec<Vec<f32>>;

/// One tile's share of a convolution's gradients: data gradient (when needed), weight
/// gradient sums (see `conv_backward`).
type TileConvGrads = (Option<Vec<f32>>, Vec<f32>);

/// A convolution's backward beside its tiles (see `Pass::conv_prep`).
struct ConvPrep {
    /// `[cout][k]`: the weights transposed, for the im2col data gradient.
    wt: Vec<f32>,
    /// `wt` as column chunks `(first column, width, [cout][width])` for `small_product`.
    wt_chunks: Vec<(usize, usize, Vec<f32>)>,
    wino_dw: bool,
    tn_dw: bool,
    /// Input channels of the Winograd weight gradient (`wino_dw`): `cin` rounded up to a
    /// multiple of 8 (zero channels), so that the register-blocked `tn_product` takes any
    /// channel count up to 64, as channel modules have.
    cin_pad: usize,
    /// Columns of the im2col weight gradient (`tn_dw`): `cout` rounded up the same way.
    cout_pad: usize,
    need_dx: bool,
}

impl ConvPrep {
    /// Length of one tile's weight sums: `[16][cout][cin_pad]` (Winograd), `[k][cout_pad]`
    /// (`tn_dw`) or `[cout][k]`.
    fn sums_len(&self, c: &Conv) -> usize {
        let k = c.kernel[0] * c.kernel[1] * c.cin;
        if self.wino_dw {
            16 * c.cout * self.cin_pad
        } else if self.tn_dw {
            k * self.cout_pad
        } else {
            c.cout * k
        }
    }
}

/// `n` rounded up to a multiple of 8 when at most 64 (the register-blocked kernels' widths);
/// larger counts as they are (those kernels take multiples of 64).
fn padded_width(n: usize) -> usize {
    if n <= 64 { n.div_ceil(8) * 8 } else { n }
}

/// One tile's work in a backward stretch: the gradients of the stretch's nodes and of the
/// nodes below it that it reaches, each convolution's weight sums and bias sums, the sums
/// of the BatchNorm below.
#[derive(Default)]
struct TileJob {
    grads: Vec<Option<Vec<f32>>>,
    below: Vec<Option<Vec<f32>>>,
    convs: Vec<(NodeId, Vec<f32>, Option<Vec<f64>>)>,
    sums: Option<(Vec<f64>, Vec<f64>)>,
    /// Gate sums of the stretch's gated nodes (`Pass::gates`), `[images][channels]`.
    gates: Vec<(NodeId, Vec<f32>)>,
}

impl GradEngine {
    /// Checks that every node is one this engine differentiates (convolutions without
    /// groups, BatchNorm, ReLU, Add, option-A shortcuts, global average pooling, flatten of
    /// a vector, linear) and that the output is a vector of logits.
    pub fn new(model: ModelIr) -> Result<Self, ModelError> {
        let shapes = model.check()?;
        let g = &model.graph;
        for (id, node) in g.nodes.iter().enumerate() {
            let ok = match &node.op {
                Op::Input { .. }
                | Op::BatchNorm2d { .. }
                | Op::Relu
                | Op::Add
                | Op::ShortcutA { .. }
                | Op::GlobalAvgPool
                | Op::BiasMap { .. }
                | Op::ChannelGather { .. }
                | Op::Linear { .. } => true,
                Op::Conv2d { groups, .. } => *groups == 1,
                Op::Flatten => chw(&shapes[node.inputs[0]])[1..] == [1, 1],
                _ => false,
            };
            if !ok {
                return Err(ModelError::Config(format!(
                    "the CPU training engine cannot differentiate node {id} ({}, {})",
                    node.name,
                    node.op.kind()
                )));
            }
        }
        if shapes[g.output].len() != 1 {
            return Err(ModelError::Config(format!(
                "the CPU training engine needs logits as output, node {} has shape {:?}",
                g.output, shapes[g.output]
            )));
        }
        Ok(Self {
            model,
            shapes,
            tuning: CpuTuning::default(),
            bn_momentum: 0.1,
            frozen_batch_norm: false,
        })
    }

    /// BatchNorms in inference mode ([`GradEngine`]'s `frozen_batch_norm`): for training a
    /// module carved out of a trained model, whose BatchNorms (and the constants folded after
    /// them) belong to the model's statistics.
    pub fn with_frozen_batch_norm(mut self, frozen: bool) -> Self {
        self.frozen_batch_norm = frozen;
        self
    }

    pub fn with_tuning(mut self, tuning: CpuTuning) -> Self {
        self.tuning = CpuTuning {
            tile: tuning.tile.max(1),
            block: tuning.block.max(1),
            ..tuning
        };
        self
    }

    /// The model: current parameters and BatchNorm running statistics.
    pub fn model(&self) -> &ModelIr {
        &self.model
    }

    /// The model, mutable: the optimizer writes parameters here.
    pub fn model_mut(&mut self) -> &mut ModelIr {
        &mut self.model
    }

    pub fn into_model(self) -> ModelIr {
        self.model
    }

    /// One training-mode forward and backward pass over `images` (`[n, c, h, w]`
    /// channel-first, normalized) with `labels`: the loss and every parameter's gradient.
    /// BatchNorm running statistics are updated, parameters are not.
    pub fn gradients(
        &mut self,
        images: &[f32],
        labels: &[usize],
    ) -> Result<StepGradients, ModelError> {
        self.gradients_for(images, Target::Labels(labels))
    }

    /// [`Self::gradients`] towards any [`Target`].
    pub fn gradients_for(
        &mut self,
        images: &[f32],
        target: Target<'_>,
    ) -> Result<StepGradients, ModelError> {
        // Inside the thread pool: every parallel pass of the step (a few hundred) then starts
        // from a worker instead of waking one from outside and sleeping until it is done
        // (futex wake-ups: 5% of a one-thread step). Runs inline when already inside.
        rayon::scope(|_| self.gradients_in_pool(images, target, true))
    }

    /// The loss and the count of [`StepGradients::correct`] images of the forward pass that
    /// [`Self::gradients_for`] runs (BatchNorms on the batch's statistics unless frozen),
    /// without the backward pass: nothing changes. Measures a model while it trains (module
    /// training's hold-out checks) at a third of a step's cost.
    pub fn loss_for(
        &mut self,
        images: &[f32],
        target: Target<'_>,
    ) -> Result<(f64, usize), ModelError> {
        let g = rayon::scope(|_| self.gradients_in_pool(images, target, false))?;
        Ok((g.loss, g.correct))
    }

    /// A training pass of this engine's model over tiles of `sizes` images on `plan`: no
    /// masks, no gates.
    fn pass<'a>(&'a self, plan: &'a CpuPlan, sizes: &'a [usize]) -> Pass<'a> {
        Pass {
            plan,
            model: &self.model,
            shapes: &self.shapes,
            sizes,
            tuning: self.tuning,
            frozen_batch_norm: self.frozen_batch_norm,
            masks: &[],
            gates: &[],
        }
    }

    /// The unfolded plan of the current parameters and the tile sizes of `n` images.
    fn plan_for(&self, n: usize) -> Result<(CpuPlan, Vec<usize>), ModelError> {
        let plan = CpuPlan::unfolded(&self.model, &self.shapes, self.tuning).ok_or_else(|| {
            ModelError::Config("the CPU plan cannot compile this model unfolded".into())
        })?;
        let tile = self.tuning.tile;
        Ok((
            plan,
            (0..n).step_by(tile).map(|s| tile.min(n - s)).collect(),
        ))
    }

    /// [`Self::gradients_for`]; with `backward` false, the forward pass and the loss only
    /// (no gradients, BatchNorm statistics unchanged: [`Self::loss_for`]).
    fn gradients_in_pool(
        &mut self,
        images: &[f32],
        target: Target<'_>,
        backward: bool,
    ) -> Result<StepGradients, ModelError> {
        let n = target.len();
        let in_shape = self.shapes[0].clone();
        let per = numel(&in_shape);
        if n == 0 || images.len() != n * per {
            return Err(ModelError::Train(format!(
                "{} image values for {n} targets, expected {per} per image ({in_shape:?})",
                images.len()
            )));
        }
        let classes = self.shapes[self.model.graph.output][0];
        match target {
            Target::Labels(labels) => {
                if let Some(&bad) = labels.iter().find(|&&l| l >= classes) {
                    return Err(ModelError::Train(format!(
                        "label {bad} out of range for {classes} classes"
                    )));
                }
            }
            Target::Margins { targets: m, floors } => {
                if floors.is_some_and(|f| f.len() != m.len() || f.iter().any(|v| !v.is_finite())) {
                    return Err(ModelError::Train(format!(
                        "margin floors: one finite value per image ({} targets) expected",
                        m.len()
                    )));
                }
                if classes != 2 {
                    return Err(ModelError::Train(format!(
                        "margin targets need two logits, the model has {classes}"
                    )));
                }
                if let Some(i) = m.iter().position(|v| !v.is_finite()) {
                    return Err(ModelError::Train(format!(
                        "margin target of image {i} is {}",
                        m[i]
                    )));
                }
            }
        }
        let (plan, sizes) = self.plan_for(n)?;
        let pass = self.pass(&plan, &sizes);
        let (values, saved) = pass.forward(images, per);
        let out = self.model.graph.output;
        // A NaN or infinite logit names its image and the output node, as burn's path does.
        let mut first = 0;
        for (t, &k) in values[out].iter().zip(&sizes) {
            check_finite(
                t,
                classes,
                first,
                &self.model.graph.nodes[out].name,
                "logit",
            )?;
            first += k;
        }
        let (loss, correct, dlogits) = match target {
            Target::Labels(labels) => cross_entropy(&values[out], &sizes, labels, classes),
            Target::Margins { targets, floors } => margin_error(&values[out], targets, floors),
        };
        if !backward {
            // The pass's buffers go back to the pool, as the backward pass gives them back.
            values.into_iter().for_each(pool::give_tiles);
            pool::give_tiles(dlogits);
            return Ok(StepGradients {
                loss,
                correct,
                params: Vec::new(),
            });
        }
        let (saved, vars): (Vec<_>, Vec<_>) = saved
            .into_iter()
            .map(|s| s.map_or((None, None), |(s, v)| (Some(s), Some(v))))
            .unzip();
        let params = pass.backward(values, &saved, out, dlogits).params;
        // Running statistics, as burn updates them: `running * (1 - m) + batch * m` in f32
        // (frozen BatchNorms keep theirs).
        let m = self.bn_momentum;
        let moving = !self.frozen_batch_norm;
        for (id, (s, var)) in saved.iter().zip(&vars).enumerate().filter(|_| moving) {
            let (Some(s), Some(var)) = (s, var) else {
                continue;
            };
            if let Op::BatchNorm2d {
                running_mean,
                running_var,
                ..
            } = &mut self.model.graph.nodes[id].op
            {
                for (r, &b) in running_mean.data.iter_mut().zip(&s.mean) {
                    *r = *r * (1.0 - m) as f32 + b * m as f32;
                }
                for (r, &b) in running_var.data.iter_mut().zip(var) {
                    *r = *r * (1.0 - m) as f32 + b * m as f32;
                }
            }
        }
        Ok(StepGradients {
            loss,
            correct,
            params,
        })
    }
}

/// One pass over a batch: the compiled plan and the tile sizes.
struct Pass<'a> {
    plan: &'a CpuPlan,
    model: &'a ModelIr,
    shapes: &'a [Shape],
    sizes: &'a [usize],
    tuning: CpuTuning,
    frozen_batch_norm: bool,
    /// Per node (or empty: none), the positions of one image's output (storage order) that
    /// are zeroed, as a probe's node masks zero them; the gradient there is zero too.
    masks: &'a [Option<Vec<bool>>],
    /// Per node (or empty: none), the channel means of a gate on a ReLU's output whose
    /// gradient the backward pass sums ([`GradEngine::gate_gradients`]).
    gates: &'a [Option<&'a [f32]>],
}

/// What the backward pass computed: every parameter's gradient and, per gated node, its
/// tiles' gate sums (`[images][channels]` each).
struct Backward {
    params: Vec<ParamGrad>,
    gates: Vec<Vec<Vec<f32>>>,
}

/// Zeroes the positions `zeroed` marks in every image of `v` (storage order).
fn zero_masked(v: &mut [f32], zeroed: &[bool]) {
    for img in v.chunks_exact_mut(zeroed.len()) {
        for (x, &z) in img.iter_mut().zip(zeroed) {
            if z {
                *x = 0.0;
            }
        }
    }
}

impl Pass<'_> {
    /// Every node's output per tile, and each BatchNorm's batch statistics (with the biased
    /// variance).
    ///
    /// Between two BatchNorms every node works on one tile at a time, so the graph runs
    /// tile-major there: one parallel job per tile runs the whole stretch (the BatchNorm's
    /// normalization that opens it, its rectifier, the convolutions, Adds and shortcuts up
    /// to the next BatchNorm), and a node reads the previous one's output while it is still
    /// in the core's cache. Node by node, every pass streamed the whole batch's maps (8 MB
    /// per map of a ResNet's first stage at batch 128) through the shared cache. Only a
    /// BatchNorm's batch statistics wait for every tile.
    #[allow(clippy::type_complexity)]
    fn forward(
        &self,
        images: &[f32],
        per: usize,
    ) -> (Vec<Tiles>, Vec<Option<(BnSaved, Vec<f32>)>>) {
        let g = &self.model.graph;
        let count = g.nodes.len();
        let mut values: Vec<Tiles> = vec![Vec::new(); count];
        let mut saved: Vec<Option<(BnSaved, Vec<f32>)>> = (0..count).map(|_| None).collect();
        // What the backward pass reads: inputs of convolutions, BatchNorms and linear
        // layers, ReLU outputs, the logits. Every other value is handed to its last reader
        // (an in-place ReLU or Add) or freed after it.
        let mut kept = vec![false; count];
        let mut last = vec![0usize; count];
        for (id, node) in g.nodes.iter().enumerate() {
            match node.op {
                Op::Conv2d { .. } | Op::BatchNorm2d { .. } | Op::Linear { .. } => {
                    node.inputs.iter().for_each(|&i| kept[i] = true);
                }
                Op::Relu => kept[id] = true,
                _ => {}
            }
            node.inputs.iter().for_each(|&i| last[i] = last[i].max(id));
        }
        kept[g.output] = true;
        let fused = fused_relus(g);
        // Outputs a BatchNorm normalizes with batch statistics: their channel count. The
        // stretch that computes one takes its per-channel sums per tile while it is in cache
        // (the squared deviations need the batch mean: they wait for every tile).
        let mut normalized: Vec<Option<usize>> = vec![None; count];
        for node in &g.nodes {
            if let Op::BatchNorm2d { gamma, .. } = &node.op
                && !self.frozen_batch_norm
            {
                normalized[node.inputs[0]] = Some(gamma.numel());
            }
        }
        let mut partial: Vec<Option<Vec<Vec<f64>>>> = (0..count).map(|_| None).collect();
        // A value its reader may overwrite: read once by it, its last reader, not kept.
        let movable = |i: NodeId, reader: NodeId| {
            let once = g.nodes[reader].inputs.iter().filter(|&&j| j == i).count() == 1;
            once && !kept[i] && last[i] == reader
        };
        let mut id = 0;
        while id < count {
            if let Op::Input { .. } = g.nodes[id].op {
                let mut at = 0;
                let starts: Vec<usize> = self
                    .sizes
                    .iter()
                    .map(|&k| {
                        at += k;
                        at - k
                    })
                    .collect();
                values[id] = starts
                    .par_iter()
                    .zip(self.sizes)
                    .map(|(&s, &k)| {
                        let mut v = pool::take(k * per);
                        for (src, dst) in images[s * per..(s + k) * per]
                            .chunks_exact(per)
                            .zip(v.chunks_exact_mut(per))
                        {
                            to_storage(&self.shapes[0], src, dst);
                        }
                        v
                    })
                    .collect();
                id += 1;
                continue;
            }
            // The stretch `id..end`: up to the next BatchNorm (or input).
            let end = (id + 1..count)
                .find(|&j| matches!(g.nodes[j].op, Op::BatchNorm2d { .. } | Op::Input { .. }))
                .unwrap_or(count);
            // A BatchNorm opening it: its batch statistics (every tile of its input is done).
            let norm = match &g.nodes[id].op {
                Op::BatchNorm2d {
                    gamma,
                    beta,
                    eps,
                    running_mean,
                    running_var,
                } => {
                    let x = &values[g.nodes[id].inputs[0]];
                    let (s, var) = if self.frozen_batch_norm {
                        let inv_std = running_var
                            .data
                            .iter()
                            .map(|&v| (1.0 / (f64::from(v) + eps).sqrt()) as f32)
                            .collect();
                        let saved = BnSaved {
                            mean: running_mean.data.clone(),
                            inv_std,
                        };
                        (saved, running_var.data.clone())
                    } else {
                        match partial[g.nodes[id].inputs[0]].take() {
                            Some(sums) => bn_stats_from(x, sums, gamma.numel(), *eps),
                            None => bn_stats(x, gamma.numel(), *eps),
                        }
                    };
                    let scale: Vec<f32> = gamma
                        .data
                        .iter()
                        .zip(&s.inv_std)
                        .map(|(g, i)| g * i)
                        .collect();
                    let shift: Vec<f32> = beta
                        .data
                        .iter()
                        .zip(&s.mean)
                        .zip(&scale)
                        .map(|((b, m), sc)| b - m * sc)
                        .collect();
                    saved[id] = Some((s, var));
                    Some((scale, shift))
                }
                _ => None,
            };
            // Inputs from before the stretch that a node in it may overwrite: moved into the
            // tile jobs (per tile, by node).
            let mut outside: Vec<Vec<(NodeId, Vec<f32>)>> = vec![Vec::new(); self.sizes.len()];
            for j in id..end {
                for &i in &g.nodes[j].inputs {
                    if i < id && movable(i, j) {
                        for (o, v) in outside.iter_mut().zip(std::mem::take(&mut values[i])) {
                            o.push((i, v));
                        }
                    }
                }
            }
            let values_ref = &values;
            let normalized = &normalized;
            #[allow(clippy::type_complexity)]
            let columns: Vec<(Vec<Option<Vec<f32>>>, Vec<(NodeId, Vec<f64>)>)> = outside
                .into_par_iter()
                .enumerate()
                .map(|(t, mut outside)| {
                    // This tile's outputs of the stretch's nodes, `j - id`.
                    let mut local: Vec<Option<Vec<f32>>> = vec![None; end - id];
                    let mut stats = Vec::new();
                    for j in id..end {
                        let node = &g.nodes[j];
                        let mut out = if let (Some((scale, shift)), true) = (&norm, j == id) {
                            let x = &values_ref[node.inputs[0]][t];
                            let mut v = pool::take_empty(x.len());
                            affine(x, scale, shift, fused[j].is_some(), &mut v);
                            v
                        } else if matches!(node.op, Op::Relu) && fused[node.inputs[0]] == Some(j) {
                            // Its BatchNorm already wrote the rectified values.
                            local[node.inputs[0] - id]
                                .take()
                                .expect("the BatchNorm opens the stretch")
                        } else {
                            let mut owned: Vec<Option<Vec<f32>>> = node
                                .inputs
                                .iter()
                                .map(|&i| {
                                    if !movable(i, j) {
                                        None
                                    } else if i >= id {
                                        local[i - id].take()
                                    } else {
                                        let at = outside.iter().position(|(k, _)| *k == i);
                                        at.map(|at| outside.swap_remove(at).1)
                                    }
                                })
                                .collect();
                            let args = node
                                .inputs
                                .iter()
                                .zip(owned.iter_mut())
                                .map(|(&i, o)| match o.take() {
                                    Some(v) => Arg::Owned(v),
                                    None if i >= id => Arg::Borrowed(
                                        local[i - id].as_deref().expect("computed in order"),
                                    ),
                                    // Moved here for a later reader of the stretch.
                                    None => match outside.iter().find(|(k, _)| *k == i) {
                                        Some((_, v)) => Arg::Borrowed(v),
                                        None => Arg::Borrowed(&values_ref[i][t]),
                                    },
                                })
                                .collect();
                            pool::with_scratch(|s| self.plan.apply(j, args, self.sizes[t], s))
                        };
                        if let Some(Some(zeroed)) = self.masks.get(j) {
                            zero_masked(&mut out, zeroed);
                        }
                        // Outputs of the stretch read for the last time, not kept: freed.
                        for &i in &node.inputs {
                            if i >= id
                                && !kept[i]
                                && last[i] == j
                                && let Some(v) = local[i - id].take()
                            {
                                pool::give(v);
                            }
                        }
                        if let Some(c) = normalized[j] {
                            let mut sum = vec![0.0f64; c];
                            channel_sum(&out, &mut sum);
                            stats.push((j, sum));
                        }
                        local[j - id] = Some(out);
                    }
                    (local, stats)
                })
                .collect();
            // Back to node-major; inputs from before the stretch read for the last time here
            // (and not moved) are freed.
            let (mut columns, stats): (Vec<_>, Vec<_>) = columns.into_iter().unzip();
            for tile in stats {
                for (j, st) in tile {
                    partial[j].get_or_insert_with(Vec::new).push(st);
                }
            }
            for j in id..end {
                values[j] = columns
                    .iter_mut()
                    .filter_map(|c| c[j - id].take())
                    .collect();
                for &i in &g.nodes[j].inputs {
                    if i < id && !kept[i] && last[i] == j {
                        pool::give_tiles(std::mem::take(&mut values[i]));
                    }
                }
            }
            id = end;
        }
        (values, saved)
    }

    /// Gradients of every parameter given the logits' gradient, consuming the forward
    /// values.
    ///
    /// Tile-major between BatchNorms, as the forward pass: one parallel job per tile runs a
    /// stretch of nodes from the top down (a BatchNorm's data gradient that opens it, the
    /// convolutions' data gradients and per-tile weight sums, masks, Adds, shortcuts) and
    /// ends with the per-tile sums of the BatchNorm below it, while its output gradient is
    /// still in the core's cache. Only a BatchNorm's sums over the batch, the weight
    /// gradients' sums over tiles (in tile order: the same result whatever the threads) and
    /// the linear head wait for every tile.
    fn backward(
        &self,
        mut values: Vec<Tiles>,
        saved: &[Option<BnSaved>],
        out: NodeId,
        dlogits: Tiles,
    ) -> Backward {
        let g = &self.model.graph;
        let count = g.nodes.len();
        let mut gates: Vec<Vec<Vec<f32>>> = vec![Vec::new(); count];
        let mut grads: Vec<Option<Tiles>> = vec![None; count];
        grads[out] = Some(dlogits);
        let mut params = Vec::new();
        let needs_grad = |i: NodeId| !matches!(g.nodes[i].op, Op::Input { .. });
        let fused = fused_relus(g);
        // The data gradient of a 3x3 stride-1 padding-1 convolution is the same convolution
        // of `dy` with the kernel flipped and in/out swapped: run as Winograd, compiled for
        // every such convolution at once.
        let flipped: Vec<Option<Conv>> = (0..count)
            .into_par_iter()
            .map(|id| match (&g.nodes[id].op, &self.plan.nodes[id].op) {
                (Op::Conv2d { weight, .. }, POp::Conv(c))
                    if c.wino.is_some()
                        && self.tuning.winograd
                        && needs_grad(g.nodes[id].inputs[0]) =>
                {
                    Some(flipped_conv(c, weight))
                }
                _ => None,
            })
            .collect();
        // A BatchNorm's data-gradient coefficients, from its sums over the batch.
        let mut norm: Vec<Option<BnCoefficients>> = (0..count).map(|_| None).collect();
        let mut top = count;
        while top > 0 {
            let hi = top - 1;
            // The linear head: its weight gradient sums over tiles in order, node by node.
            if let Op::Linear { weight, bias } = &g.nodes[hi].op {
                if let Some(dy) = grads[hi].take() {
                    let i = g.nodes[hi].inputs[0];
                    let (dw, db, dx) = linear_backward(weight, &dy, &values[i]);
                    let db = bias.is_some().then_some(db);
                    let shape = vec![weight.shape[0], weight.shape[1]];
                    params.extend(weight_and_bias(hi, &g.nodes[hi].name, shape, dw, db));
                    pool::give_tiles(dy);
                    if needs_grad(i) {
                        accumulate(&mut grads[i], dx);
                    } else {
                        pool::give_tiles(dx);
                    }
                }
                pool::give_tiles(std::mem::take(&mut values[hi]));
                top = hi;
                continue;
            }
            // The stretch `lo + 1..=hi`, ending at the BatchNorm (or linear layer or input)
            // `lo` below it; a BatchNorm at `hi` contributes only its data gradient here.
            let lo = (0..hi).rev().find(|&j| {
                matches!(
                    g.nodes[j].op,
                    Op::BatchNorm2d { .. } | Op::Linear { .. } | Op::Input { .. }
                )
            });
            let first = lo.map_or(0, |l| l + 1);
            let sink = lo.filter(|&l| matches!(g.nodes[l].op, Op::BatchNorm2d { .. }));
            // Nodes below the stretch that it sends gradients to (the BatchNorm `lo` too):
            // their gradients so far move into the tile jobs, so that every sum adds in the
            // same order as node by node.
            let mut below: Vec<NodeId> = (first..=hi)
                .flat_map(|j| g.nodes[j].inputs.iter().copied())
                .filter(|&i| i < first && needs_grad(i))
                .collect();
            // The BatchNorm below sums its output gradient in the jobs, wherever it came from.
            below.extend(sink);
            below.sort_unstable();
            below.dedup();
            // A BatchNorm opening the stretch whose sums no job took (nothing above it ran
            // tile-major): its sums over the batch now.
            if let (Op::BatchNorm2d { .. }, Some(s), Some(dy), None) =
                (&g.nodes[hi].op, &saved[hi], &grads[hi], &norm[hi])
            {
                let x = &values[g.nodes[hi].inputs[0]];
                let sums: Vec<(Vec<f64>, Vec<f64>)> = (0..dy.len())
                    .into_par_iter()
                    .map(|t| {
                        let mask = fused[hi].map(|r| values[r][t].as_slice());
                        bn_tile_sums(&x[t], &dy[t], mask, &s.mean)
                    })
                    .collect();
                norm[hi] = Some(self.bn_backward(hi, &sums, x, s, &mut params));
            }
            let nt = self.sizes.len();
            let take_tiles = |slot: Option<Tiles>| -> Vec<Option<Vec<f32>>> {
                match slot {
                    Some(tiles) => tiles.into_iter().map(Some).collect(),
                    None => vec![None; nt],
                }
            };
            let mut jobs: Vec<TileJob> = (0..nt).map(|_| TileJob::default()).collect();
            for slot in &mut grads[first..=hi] {
                for (job, v) in jobs.iter_mut().zip(take_tiles(slot.take())) {
                    job.grads.push(v);
                }
            }
            for &i in &below {
                for (job, v) in jobs.iter_mut().zip(take_tiles(grads[i].take())) {
                    job.below.push(v);
                }
            }
            // Per-convolution preparation (transposed weights for the im2col data gradient).
            let prep: Vec<Option<ConvPrep>> = (first..=hi)
                .map(|j| match (&g.nodes[j].op, &self.plan.nodes[j].op) {
                    (Op::Conv2d { weight, .. }, POp::Conv(c)) => Some(self.conv_prep(
                        c,
                        flipped[j].as_ref(),
                        weight,
                        needs_grad(g.nodes[j].inputs[0]),
                    )),
                    _ => None,
                })
                .collect();
            let values_ref = &values;
            let (norm_ref, prep_ref, flipped_ref) = (&norm, &prep, &flipped);
            let below_ref = &below;
            jobs.par_iter_mut().enumerate().for_each(|(t, job)| {
                let n = self.sizes[t];
                let give = |job: &mut TileJob, i: NodeId, v: Vec<f32>| {
                    let s = if i >= first {
                        &mut job.grads[i - first]
                    } else {
                        let at = below_ref.binary_search(&i).expect("listed above");
                        &mut job.below[at]
                    };
                    accumulate_tile(s, v);
                };
                for j in (first..=hi).rev() {
                    let node = &g.nodes[j];
                    let Some(mut dy) = job.grads[j - first].take() else {
                        continue;
                    };
                    // A gate on this node's (masked) output, then its mask (the forward's
                    // order).
                    if let Some(Some(mean)) = self.gates.get(j) {
                        job.gates
                            .push((j, gate_sums(&dy, &values_ref[j][t], mean, n)));
                    }
                    if let Some(Some(zeroed)) = self.masks.get(j) {
                        zero_masked(&mut dy, zeroed);
                    }
                    // A ReLU fused with its BatchNorm: the BatchNorm's backward masks by
                    // this node's output, so the gradient passes unmasked.
                    if matches!(node.op, Op::Relu) && fused[node.inputs[0]] == Some(j) {
                        give(job, node.inputs[0], dy);
                        continue;
                    }
                    let i = node.inputs[0];
                    match &node.op {
                        Op::BatchNorm2d { .. } => {
                            let k = norm_ref[j].as_ref().expect("sums over the batch first");
                            let mask = fused[j].map(|r| values_ref[r][t].as_slice());
                            let mut dx = dy;
                            affine2(&mut dx, &values_ref[i][t], mask, &k.scale, &k.k1, &k.k0);
                            give(job, i, dx);
                        }
                        Op::Conv2d { bias, .. } => {
                            let POp::Conv(c) = &self.plan.nodes[j].op else {
                                unreachable!("an unfolded plan keeps every convolution")
                            };
                            let p = prep_ref[j - first].as_ref().expect("prepared");
                            // The bias gradient only where the convolution has a bias (not
                            // before a BatchNorm): per-channel sums of the output gradient.
                            let db = bias.is_some().then(|| {
                                let mut acc = vec![0.0f64; c.cout];
                                channel_sum(&dy, &mut acc);
                                acc
                            });
                            let (dx, dw) = self.conv_tile(
                                c,
                                flipped_ref[j].as_ref(),
                                p,
                                &values_ref[i][t],
                                &dy,
                                n,
                            );
                            pool::give(dy);
                            job.convs.push((j, dw, db));
                            if let Some(dx) = dx {
                                give(job, i, dx);
                            }
                        }
                        Op::Relu => {
                            let mut dy = dy;
                            relu_mask(&mut dy, &values_ref[j][t]);
                            give(job, i, dy);
                        }
                        Op::Add => {
                            for &k in &node.inputs[1..] {
                                let mut v = pool::take(dy.len());
                                v.copy_from_slice(&dy);
                                give(job, k, v);
                            }
                            give(job, i, dy);
                        }
                        Op::ShortcutA {
                            stride, pad_before, ..
                        } => {
                            let c = self.shapes[i][0];
                            let dx = self.strided_scatter(i, j, &dy, n, *stride, |src, dst| {
                                dst.copy_from_slice(&src[*pad_before..][..c]);
                            });
                            pool::give(dy);
                            give(job, i, dx);
                        }
                        Op::GlobalAvgPool => {
                            let [c, h, w] = chw(&self.shapes[i]);
                            let hw = h * w;
                            let mut dx = pool::take_empty(dy.len() / c * hw * c);
                            for img in dy.chunks_exact(c) {
                                let g: Vec<f32> = img.iter().map(|v| v / hw as f32).collect();
                                for _ in 0..hw {
                                    dx.extend_from_slice(&g);
                                }
                            }
                            pool::give(dy);
                            give(job, i, dx);
                        }
                        // A constant added: the gradient passes.
                        Op::BiasMap { .. } => give(job, i, dy),
                        Op::ChannelGather {
                            stride, sources, ..
                        } => {
                            let dx = self.strided_scatter(i, j, &dy, n, *stride, |src, dst| {
                                for (&g, s) in src.iter().zip(sources) {
                                    if let Some(s) = *s {
                                        dst[s] += g;
                                    }
                                }
                            });
                            pool::give(dy);
                            give(job, i, dx);
                        }
                        // A flatten of `[c, 1, 1]`: the same values (checked in `new`).
                        Op::Flatten => give(job, i, dy),
                        _ => unreachable!("ops checked in GradEngine::new"),
                    }
                }
                // The BatchNorm below: its per-tile sums while its output gradient is warm.
                if let Some(b) = sink {
                    let at = below_ref.binary_search(&b).ok();
                    if let (Some(at), Some(s)) = (at, saved[b].as_ref())
                        && let Some(dy) = job.below[at].as_ref()
                    {
                        let mask = fused[b].map(|r| values_ref[r][t].as_slice());
                        let x = &values_ref[g.nodes[b].inputs[0]][t];
                        job.sums = Some(bn_tile_sums(x, dy, mask, &s.mean));
                    }
                }
            });
            for job in jobs.iter_mut() {
                for (j, sums) in std::mem::take(&mut job.gates) {
                    gates[j].push(sums);
                }
            }
            // Back to node by node: gradients of the nodes below, weight gradients summed
            // over tiles in tile order, the BatchNorm's sums.
            for (at, &i) in below.iter().enumerate() {
                let tiles: Vec<Vec<f32>> = jobs
                    .iter_mut()
                    .filter_map(|job| job.below[at].take())
                    .collect();
                if !tiles.is_empty() {
                    grads[i] = Some(tiles);
                }
            }
            // Per convolution: its tiles' weight sums and its bias sums.
            let mut per_conv: Vec<(NodeId, Tiles, Option<Vec<f64>>)> = Vec::new();
            for job in jobs.iter_mut() {
                for (k, (j, dw, db)) in std::mem::take(&mut job.convs).into_iter().enumerate() {
                    if per_conv.len() <= k {
                        per_conv.push((j, Vec::new(), db.as_ref().map(|d| vec![0.0; d.len()])));
                    }
                    let entry = &mut per_conv[k];
                    debug_assert_eq!(entry.0, j, "every tile runs the same nodes");
                    entry.1.push(dw);
                    if let (Some(acc), Some(db)) = (entry.2.as_mut(), db) {
                        acc.iter_mut().zip(db).for_each(|(a, b)| *a += b);
                    }
                }
            }
            for (j, parts, db) in per_conv {
                let (Op::Conv2d { weight, .. }, POp::Conv(c)) =
                    (&g.nodes[j].op, &self.plan.nodes[j].op)
                else {
                    unreachable!("collected from convolutions")
                };
                let p = prep[j - first].as_ref().expect("prepared");
                let dw = self.conv_finish(c, p, parts);
                let db = db.map(|d| d.iter().map(|&v| v as f32).collect());
                params.extend(weight_and_bias(
                    j,
                    &g.nodes[j].name,
                    weight.shape.clone(),
                    dw,
                    db,
                ));
            }
            if let Some(b) = sink
                && grads[b].is_some()
                && let Some(s) = &saved[b]
            {
                let sums: Vec<(Vec<f64>, Vec<f64>)> = jobs
                    .iter_mut()
                    .map(|job| job.sums.take().expect("every tile summed"))
                    .collect();
                let x = &values[g.nodes[b].inputs[0]];
                norm[b] = Some(self.bn_backward(b, &sums, x, s, &mut params));
            }
            // The stretch's values are read no more (a fused ReLU's output masks its
            // BatchNorm below until that one's data gradient is done, in the next stretch).
            for j in first..=hi {
                if sink.is_some_and(|b| fused[b] == Some(j)) {
                    continue;
                }
                pool::give_tiles(std::mem::take(&mut values[j]));
                if let Op::BatchNorm2d { .. } = g.nodes[j].op
                    && let Some(r) = fused[j]
                {
                    pool::give_tiles(std::mem::take(&mut values[r]));
                }
            }
            top = first;
        }
        // Node order, weight before bias: the order the nodes hold them.
        params.sort_by_key(|p| (p.node, !p.name.ends_with(".weight")));
        Backward { params, gates }
    }

    /// The data gradient of a subsampling node `id` for one tile of `n` images (every
    /// `stride`-th row and column of input `i`, channels mapped per pixel: option-A
    /// shortcuts, channel gathers): zeros, with `scatter(dy pixel, dx pixel)` at every kept
    /// input pixel.
    #[allow(clippy::too_many_arguments)]
    fn strided_scatter(
        &self,
        i: NodeId,
        id: NodeId,
        d: &[f32],
        n: usize,
        stride: usize,
        scatter: impl Fn(&[f32], &mut [f32]),
    ) -> Vec<f32> {
        let [c, h, w] = chw(&self.shapes[i]);
        let [co, ho, wo] = chw(&self.shapes[id]);
        let mut dx = pool::take_zeroed(n * h * w * c);
        for img in 0..n {
            for oy in 0..ho {
                for ox in 0..wo {
                    let src = &d[((img * ho + oy) * wo + ox) * co..][..co];
                    let at = ((img * h + oy * stride) * w + ox * stride) * c;
                    scatter(src, &mut dx[at..][..c]);
                }
            }
        }
        dx
    }

    /// What a convolution's backward needs beside each tile: the transposed weights of the
    /// im2col data gradient and the paths its products take.
    fn conv_prep(
        &self,
        c: &Conv,
        flipped: Option<&Conv>,
        weight: &TensorData,
        need_dx: bool,
    ) -> ConvPrep {
        let [kh, kw] = c.kernel;
        let (cin, cout) = (c.cin, c.cout);
        let k = kh * kw * cin;
        // `wt[co][(ky * kw + kx) * cin + ci]`: the product's weights transposed, for the
        // im2col data gradient.
        let mut wt = Vec::new();
        if need_dx && flipped.is_none() {
            wt = vec![0.0f32; cout * k];
            for co in 0..cout {
                for ci in 0..cin {
                    for ky in 0..kh {
                        for kx in 0..kw {
                            wt[co * k + (ky * kw + kx) * cin + ci] =
                                weight.data[((co * cin + ci) * kh + ky) * kw + kx];
                        }
                    }
                }
            }
        }
        // `wt` again as column chunks of up to 64 (`[cout][width]` each) for the register-
        // blocked product, where `k` splits so; else the `gemm` crate takes `wt` whole.
        let wt_chunks: Vec<(usize, usize, Vec<f32>)> = if !wt.is_empty()
            && self.tuning.small_kernels
            && fma_available()
            && k.is_multiple_of(8)
        {
            (0..k)
                .step_by(64)
                .map(|c0| {
                    let wd = (k - c0).min(64);
                    let mut m = vec![0.0f32; cout * wd];
                    for (co, row) in m.chunks_exact_mut(wd).enumerate() {
                        row.copy_from_slice(&wt[co * k + c0..][..wd]);
                    }
                    (c0, wd, m)
                })
                .collect()
        } else {
            Vec::new()
        };
        let (cin_pad, cout_pad) = (padded_width(cin), padded_width(cout));
        ConvPrep {
            wt,
            wt_chunks,
            cin_pad,
            cout_pad,
            // The weight gradient of a Winograd convolution in the Winograd domain too: sums
            // of transformed output gradients times transformed inputs, then `G^T du G`.
            wino_dw: c.wino.is_some()
                && self.tuning.winograd
                && self.tuning.small_kernels
                && fma_available()
                && kernel_width(cin_pad),
            // The im2col weight gradient as `[k][cout_pad]` through `tn_product` (see below).
            tn_dw: self.tuning.small_kernels && fma_available() && kernel_width(cout_pad),
            need_dx,
        }
    }

    /// One tile's share of a convolution's gradients: its data gradient (when needed) and
    /// weight sums, `[16][cout][cin]` (Winograd), `[k][cout]` (`tn_dw`) or `[cout][k]`.
    fn conv_tile(
        &self,
        c: &Conv,
        flipped: Option<&Conv>,
        p: &ConvPrep,
        x: &[f32],
        d: &[f32],
        n: usize,
    ) -> TileConvGrads {
        let [kh, kw] = c.kernel;
        let (cin, cout) = (c.cin, c.cout);
        let k = kh * kw * cin;
        let pointwise = c.kernel == [1, 1] && c.stride == [1, 1] && c.pad == [0, 0];
        let [ho, wo] = c.out_hw;
        let block = (self.tuning.block / k).max(1);
        pool::with_scratch(|scratch| {
            let rows = n * ho * wo;
            if p.wino_dw {
                let du = self.wino_weight_sums(c, p.cin_pad, x, d, n, scratch);
                let dx = flipped.map(|f| {
                    let u = f.wino.as_ref().expect("3x3 stride-1 padding-1");
                    self.plan.winograd(f, u, d, n, scratch)
                });
                return (dx, du);
            }
            let mut dwt = pool::take_zeroed(p.sums_len(c));
            let mut dyt = Vec::new();
            // `dy` rows widened to `cout_pad` columns (zeros beyond `cout`) where `cout` is
            // not a kernel width.
            let mut dyp = Vec::new();
            // Through `flipped`, the data gradient is a new Winograd output instead.
            let mut dx = (p.need_dx && flipped.is_none()).then(|| pool::take_zeroed(x.len()));
            for r0 in (0..rows).step_by(block) {
                let r1 = (r0 + block).min(rows);
                let rb = r1 - r0;
                // The thread's scratch holds the block's im2col columns and, for the data
                // gradient, their gradient (each written whole before it is read).
                let col_len = if pointwise { 0 } else { rb * k };
                let dcol_len = if dx.is_some() { rb * k } else { 0 };
                let (col_buf, dcol_buf) =
                    pool::scratch_of(scratch, col_len + dcol_len).split_at_mut(col_len);
                let col: &[f32] = if pointwise {
                    &x[r0 * k..r1 * k]
                } else {
                    im2col(c, x, r0, r1, col_buf);
                    col_buf
                };
                let dyb = &d[r0 * cout..r1 * cout];
                // dW [k, cout] += col^T [k, rb] x dY [rb, cout] with the register-blocked
                // kernel where `cout` suits it (`tn_dw`), else dW^T [cout, k] += dY^T
                // [cout, rb] x col [rb, k] through `gemm` (m = cout is small: slower).
                let cw = p.cout_pad;
                let tn = Tn {
                    rows: k,
                    k: rb,
                    lhs_rs: k,
                    rhs_rs: cw,
                    dst_rs: cw,
                };
                let dyw: &[f32] = if p.tn_dw && cw != cout {
                    dyp.clear();
                    dyp.resize(rb * cw, 0.0);
                    for (w, px) in dyp.chunks_exact_mut(cw).zip(dyb.chunks_exact(cout)) {
                        w[..cout].copy_from_slice(px);
                    }
                    &dyp
                } else {
                    dyb
                };
                if p.tn_dw {
                    let done = tn_product(tn, cw, col, dyw, &mut dwt);
                    assert!(done, "`tn_dw` checked the width and FMA");
                } else {
                    dyt.resize(cout * rb, 0.0);
                    for (r, px) in dyb.chunks_exact(cout).enumerate() {
                        for (co, &v) in px.iter().enumerate() {
                            dyt[co * rb + r] = v;
                        }
                    }
                    let gm = Gemm {
                        m: cout,
                        n: k,
                        k: rb,
                        lhs_rs: rb,
                        rhs_rs: k,
                        dst_rs: k,
                    };
                    sgemm(gm, &mut dwt, &dyt, col, true).expect("weight-gradient shapes");
                }
                if flipped.is_none()
                    && let Some(dx) = dx.as_mut()
                {
                    // dcol [rb, k] = dY [rb, cout] x W^T [cout, k], then col2im (both
                    // products write every element).
                    let dcol = &mut dcol_buf[..rb * k];
                    if p.wt_chunks.is_empty() {
                        let gm = Gemm {
                            m: rb,
                            n: k,
                            k: cout,
                            lhs_rs: cout,
                            rhs_rs: k,
                            dst_rs: k,
                        };
                        sgemm(gm, dcol, dyb, &p.wt, false).expect("data-gradient shapes");
                    }
                    for (c0, wd, m) in &p.wt_chunks {
                        let g = Small {
                            rows: rb,
                            k: cout,
                            lhs_rs: cout,
                            dst_rs: k,
                            accumulate: false,
                        };
                        let done = small_product(g, *wd, dyb, m, &mut dcol[*c0..]);
                        assert!(done, "widths checked with the chunks");
                    }
                    if pointwise {
                        for (a, b) in dx[r0 * k..r1 * k].iter_mut().zip(&*dcol) {
                            *a += b;
                        }
                    } else {
                        col2im(c, dcol, r0, r1, dx);
                    }
                }
            }
            if let Some(f) = flipped {
                let u = f.wino.as_ref().expect("3x3 stride-1 padding-1");
                dx = Some(self.plan.winograd(f, u, d, n, scratch));
            }
            (dx, dwt)
        })
    }

    /// A convolution's weight gradient from its tiles' weight sums (summed in tile order:
    /// the same result whatever the threads, in parallel over chunks of the sums).
    fn conv_finish(&self, c: &Conv, p: &ConvPrep, parts: Vec<Vec<f32>>) -> Vec<f32> {
        let [kh, kw] = c.kernel;
        let (cin, cout) = (c.cin, c.cout);
        let k = kh * kw * cin;
        let mut dwt = vec![0.0f32; p.sums_len(c)];
        const CHUNK: usize = 4096;
        dwt.par_chunks_mut(CHUNK).enumerate().for_each(|(i, acc)| {
            for pw in &parts {
                add_into(acc, &pw[i * CHUNK..][..acc.len()]);
            }
        });
        pool::give_tiles(parts);
        let mut dw = vec![0.0f32; cout * k];
        if p.wino_dw {
            dw.par_chunks_mut(cin * 9).enumerate().for_each(|(co, dw)| {
                for (ci, dw) in dw.chunks_exact_mut(9).enumerate() {
                    let du: [f32; 16] =
                        std::array::from_fn(|xi| dwt[(xi * cout + co) * p.cin_pad + ci]);
                    dw.copy_from_slice(&wino_weight_grad(&du));
                }
            });
            return dw;
        }
        for co in 0..cout {
            for ci in 0..cin {
                for ky in 0..kh {
                    for kx in 0..kw {
                        let kk = (ky * kw + kx) * cin + ci;
                        dw[((co * cin + ci) * kh + ky) * kw + kx] = if p.tn_dw {
                            dwt[kk * p.cout_pad + co]
                        } else {
                            dwt[co * k + kk]
                        };
                    }
                }
            }
        }
        dw
    }
}

impl Pass<'_> {
    /// One tile's Winograd-domain weight-gradient sums of a 3x3 stride-1 padding-1
    /// convolution, `du[xi][co][ci] = sum over 2x2 output tiles of (A dy A^T)[xi][co] (B^T x
    /// B)[xi][ci]` for the tile's `n` images (input `x`, output gradient `dy`, channels-last;
    /// `ci` up to `cin_pad`, see [`ConvPrep::cin_pad`]):
    /// [`wino_weight_grad`] of each `(co, ci)` column is that pair's kernel gradient.
    fn wino_weight_sums(
        &self,
        c: &Conv,
        cin_pad: usize,
        x: &[f32],
        dy: &[f32],
        n: usize,
        scratch: &mut Vec<f32>,
    ) -> Vec<f32> {
        let [h, w] = c.in_hw;
        // The input widened to `cin_pad` channels (zeros beyond `cin`) where `cin` is not a
        // kernel width: the sums of the zero channels are zero and never read.
        let widened = (cin_pad != c.cin).then(|| {
            let mut xp = pool::take(x.len() / c.cin * cin_pad);
            for (d, px) in xp.chunks_exact_mut(cin_pad).zip(x.chunks_exact(c.cin)) {
                d[..c.cin].copy_from_slice(px);
                d[c.cin..].fill(0.0);
            }
            xp
        });
        let x = widened.as_deref().unwrap_or(x);
        let (cin, cout) = (cin_pad, c.cout);
        let (th, tw) = (h.div_ceil(2), w.div_ceil(2));
        let tiles = n * th * tw;
        let geo = Wino {
            h,
            w,
            cin,
            cout,
            cp: cout,
            th,
            tw,
        };
        let tb = (self.tuning.block / (16 * (cin + cout))).clamp(1, tiles);
        let (v, m) = pool::scratch_of(scratch, tb * 16 * (cin + cout)).split_at_mut(tb * 16 * cin);
        let zero = vec![0.0f32; 4 * cin];
        let mut tmp = vec![0.0f32; 32 * cin.max(cout)];
        let mut du = pool::take_zeroed(16 * cout * cin);
        for t0 in (0..tiles).step_by(tb) {
            let t1 = (t0 + tb).min(tiles);
            let rows = t1 - t0;
            wino_input(geo, x, t0, t1, v, &mut tmp, &zero);
            wino_grad_output(geo, dy, t0, t1, m, &mut tmp);
            for xi in 0..16 {
                let g = Tn {
                    rows: cout,
                    k: rows,
                    lhs_rs: cout,
                    rhs_rs: 16 * cin,
                    dst_rs: cin,
                };
                let done = tn_product(
                    g,
                    cin,
                    &m[xi * rows * cout..][..rows * cout],
                    &v[xi * cin..],
                    &mut du[xi * cout * cin..(xi + 1) * cout * cin],
                );
                assert!(done, "channel counts checked by the caller");
            }
        }
        if let Some(xp) = widened {
            pool::give(xp);
        }
        du
    }
}

/// Convolution `c` (3x3, stride 1, padding 1, IR weights `weight`) with its kernel flipped
/// and its input and output channels swapped: its data gradient as a forward convolution.
fn flipped_conv(c: &Conv, weight: &TensorData) -> Conv {
    let (cin, cout) = (c.cin, c.cout);
    let mut w = vec![0.0f32; cin * cout * 9];
    for co in 0..cout {
        for ci in 0..cin {
            for ky in 0..3 {
                for kx in 0..3 {
                    w[((ci * cout + co) * 3 + 2 - ky) * 3 + 2 - kx] =
                        weight.data[((co * cin + ci) * 3 + ky) * 3 + kx];
                }
            }
        }
    }
    let op = Op::Conv2d {
        weight: TensorData {
            shape: vec![cin, cout, 3, 3],
            data: w,
        },
        bias: None,
        stride: [1, 1],
        padding: [1, 1],
        groups: 1,
    };
    let [h, w] = c.in_hw;
    compile::conv(&op, &vec![cout, h, w], &vec![cin, h, w], None, false)
        .expect("a flipped 3x3 convolution compiles")
}

/// The gradients of node `id`'s weight (of `shape`) and bias (when it has one).
fn weight_and_bias(
    id: NodeId,
    node: &str,
    shape: Vec<usize>,
    dw: Vec<f32>,
    db: Option<Vec<f32>>,
) -> impl Iterator<Item = ParamGrad> {
    let bias = db.map(|db| ParamGrad {
        node: id,
        name: format!("{node}.bias"),
        grad: TensorData {
            shape: vec![db.len()],
            data: db,
        },
    });
    let weight = ParamGrad {
        node: id,
        name: format!("{node}.weight"),
        grad: TensorData { shape, data: dw },
    };
    std::iter::once(weight).chain(bias)
}

/// For each BatchNorm whose only reader is a ReLU, that ReLU: the pair runs as one pass
/// forward (`max(a x + b, 0)`) and one backward (the mask inside BatchNorm's backward).
fn fused_relus(g: &decomp_ir::Graph) -> Vec<Option<NodeId>> {
    let mut readers = vec![Vec::new(); g.nodes.len()];
    for (id, node) in g.nodes.iter().enumerate() {
        node.inputs.iter().for_each(|&i| readers[i].push(id));
    }
    g.nodes
        .iter()
        .enumerate()
        .map(|(id, node)| match (&node.op, readers[id].as_slice()) {
            (Op::BatchNorm2d { .. }, &[r])
                if matches!(g.nodes[r].op, Op::Relu) && id != g.output =>
            {
                Some(r)
            }
            _ => None,
        })
        .collect()
}

/// Adds `g` into a node's gradient (sets it when the node has none yet).
fn accumulate(slot: &mut Option<Tiles>, g: Tiles) {
    match slot {
        None => *slot = Some(g),
        Some(acc) => {
            acc.par_iter_mut().zip(&g).for_each(|(a, b)| add_into(a, b));
            pool::give_tiles(g);
        }
    }
}

/// Per-channel mean and `1 / sqrt(var + eps)` of channels-last tiles over every image and
/// pixel (sums in `f64`), and the biased variance itself.
fn bn_stats(x: &Tiles, c: usize, eps: f64) -> (BnSaved, Vec<f32>) {
    bn_stats_from(x, per_tile(x, c, channel_sum), c, eps)
}

/// [`bn_stats`] given each tile's per-channel sums (added in tile order): the mean, then the
/// squared deviations from it over every tile.
fn bn_stats_from(x: &Tiles, sums: Vec<Vec<f64>>, c: usize, eps: f64) -> (BnSaved, Vec<f32>) {
    let count: usize = x.iter().map(|t| t.len() / c).sum();
    let sum = in_tile_order(sums, c);
    let mean: Vec<f32> = sum.iter().map(|s| (s / count as f64) as f32).collect();
    let sq = reduce(x, c, |t, acc| channel_sq_dev(t, &mean, acc));
    let var: Vec<f64> = sq.iter().map(|s| s / count as f64).collect();
    (
        BnSaved {
            mean,
            inv_std: var
                .iter()
                .map(|&v| (1.0 / (v + eps).sqrt()) as f32)
                .collect(),
        },
        var.iter().map(|&v| v as f32).collect(),
    )
}

/// Sum over tiles (in tile order) of `c` per-channel `f64` accumulators filled by `f`.
fn reduce(x: &Tiles, c: usize, f: impl Fn(&[f32], &mut [f64]) + Sync) -> Vec<f64> {
    in_tile_order(per_tile(x, c, f), c)
}

/// Per tile, in parallel: `c` per-channel `f64` accumulators filled by `f`.
fn per_tile(x: &Tiles, c: usize, f: impl Fn(&[f32], &mut [f64]) + Sync) -> Vec<Vec<f64>> {
    x.par_iter()
        .map(|t| {
            let mut acc = vec![0.0f64; c];
            f(t, &mut acc);
            acc
        })
        .collect()
}

/// Per-channel sums added tile after tile (the same bits whatever the threads).
fn in_tile_order(parts: Vec<Vec<f64>>, c: usize) -> Vec<f64> {
    let mut total = vec![0.0f64; c];
    for p in parts {
        for (a, b) in total.iter_mut().zip(p) {
            *a += b;
        }
    }
    total
}

/// One tile's BatchNorm backward sums: `sum(dy)` and `sum(dy (x - mean))` per channel
/// (`dy` masked by the fused ReLU's output where there is one), in `f64`.
fn bn_tile_sums(x: &[f32], dy: &[f32], mask: Option<&[f32]>, mean: &[f32]) -> (Vec<f64>, Vec<f64>) {
    let c = mean.len();
    let (mut sd, mut sdx) = (vec![0.0f64; c], vec![0.0f64; c]);
    bn_grad_sums(x, dy, mask, mean, &mut sd, &mut sdx);
    (sd, sdx)
}

/// What a BatchNorm's data gradient applies per tile, and its parameter gradients.
struct BnCoefficients {
    scale: Vec<f32>,
    k1: Vec<f32>,
    k0: Vec<f32>,
}

impl Pass<'_> {
    /// BatchNorm `b`'s training-mode backward from its tiles' sums ([`bn_tile_sums`], added
    /// in tile order) over its input `x`: `dgamma = sum(dy xhat)` and `dbeta = sum(dy)` go to
    /// `params`, and `dx = gamma inv_std (dy - mean(dy) - xhat mean(dy xhat))` is returned as
    /// `scale dy + k1 x + k0` per channel, with `xhat = (x - mean) inv_std` recomputed from the
    /// input; frozen statistics (constants): `dx = gamma inv_std dy`.
    fn bn_backward(
        &self,
        b: NodeId,
        sums: &[(Vec<f64>, Vec<f64>)],
        x: &Tiles,
        s: &BnSaved,
        params: &mut Vec<ParamGrad>,
    ) -> BnCoefficients {
        let node = &self.model.graph.nodes[b];
        let Op::BatchNorm2d { gamma, .. } = &node.op else {
            unreachable!("called for BatchNorms")
        };
        let gamma = &gamma.data;
        let c = gamma.len();
        let count: usize = x.iter().map(|t| t.len() / c).sum();
        let frozen = self.frozen_batch_norm;
        let (mut sd, mut sdx) = (vec![0.0f64; c], vec![0.0f64; c]);
        for (d, dx) in sums {
            for ch in 0..c {
                sd[ch] += d[ch];
                sdx[ch] += dx[ch];
            }
        }
        // sum(dy xhat) = inv_std sum(dy (x - mean)).
        for (v, &i) in sdx.iter_mut().zip(&s.inv_std) {
            *v *= f64::from(i);
        }
        // dx = scale (dy - mean_d - xhat mean_dx) = scale dy + k1 x + k0 per channel, with
        // k1 = -scale inv_std mean_dx and k0 = scale (mean inv_std mean_dx - mean_d).
        let (mut scale, mut k1, mut k0) = (vec![0.0f32; c], vec![0.0f32; c], vec![0.0f32; c]);
        for ch in 0..c {
            let (md, mdx) = (sd[ch] / count as f64, sdx[ch] / count as f64);
            let inv = f64::from(s.inv_std[ch]);
            let sc = f64::from(gamma[ch]) * inv;
            scale[ch] = sc as f32;
            if !frozen {
                k1[ch] = (-sc * inv * mdx) as f32;
                k0[ch] = (sc * (f64::from(s.mean[ch]) * inv * mdx - md)) as f32;
            }
        }
        let dgamma = sdx.iter().map(|&v| v as f32).collect();
        let dbeta = sd.iter().map(|&v| v as f32).collect();
        params.extend(weight_and_bias(b, &node.name, vec![c], dgamma, Some(dbeta)));
        BnCoefficients { scale, k1, k0 }
    }
}

/// The linear layer's gradients, tile by tile in order: weight `[o][k]`, bias, and each
/// tile's data gradient.
fn linear_backward(weight: &TensorData, dy: &Tiles, x: &Tiles) -> (Vec<f32>, Vec<f32>, Tiles) {
    let (o, k) = (weight.shape[0], weight.shape[1]);
    let mut dw = vec![0.0f32; o * k];
    let mut db = vec![0.0f32; o];
    let mut dx_tiles = Vec::with_capacity(dy.len());
    for (d, x) in dy.iter().zip(x) {
        let mut dx = pool::take_zeroed(x.len());
        for ((drow, xrow), dxrow) in d
            .chunks_exact(o)
            .zip(x.chunks_exact(k))
            .zip(dx.chunks_exact_mut(k))
        {
            for (oi, &dv) in drow.iter().enumerate() {
                db[oi] += dv;
                let wrow = &weight.data[oi * k..(oi + 1) * k];
                for ((gw, &xv), (gx, &wv)) in dw[oi * k..(oi + 1) * k]
                    .iter_mut()
                    .zip(xrow)
                    .zip(dxrow.iter_mut().zip(wrow))
                {
                    *gw += dv * xv;
                    *gx += dv * wv;
                }
            }
        }
        dx_tiles.push(dx);
    }
    (dw, db, dx_tiles)
}

/// Adds `g` into one tile's gradient (sets it when there is none yet).
fn accumulate_tile(slot: &mut Option<Vec<f32>>, g: Vec<f32>) {
    match slot {
        None => *slot = Some(g),
        Some(acc) => {
            add_into(acc, &g);
            pool::give(g);
        }
    }
}

/// Mean softmax cross-entropy of per-tile logits (infinite when one image's loss overflows
/// an f32), images right, and the logits' gradient `(softmax - onehot) / n`.
fn cross_entropy(
    logits: &Tiles,
    sizes: &[usize],
    labels: &[usize],
    classes: usize,
) -> (f64, usize, Tiles) {
    let n = labels.len();
    let (mut loss, mut correct) = (0.0f64, 0usize);
    let mut grads = Vec::with_capacity(logits.len());
    let mut img = 0;
    for (t, &k) in logits.iter().zip(sizes) {
        // Every value is written below.
        let mut g = pool::take(k * classes);
        for (row, grow) in t.chunks_exact(classes).zip(g.chunks_exact_mut(classes)) {
            let label = labels[img];
            img += 1;
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let sum: f64 = row.iter().map(|&v| f64::from(v - max).exp()).sum();
            let l = sum.ln() + f64::from(max) - f64::from(row[label]);
            // An image's loss an f32 cannot hold overflows, as in burn's f32 cross-entropy.
            loss += if (l as f32).is_finite() {
                l
            } else {
                f64::INFINITY
            };
            let arg = decomp_eval::argmax(row);
            correct += usize::from(arg == label);
            for (j, (gv, &v)) in grow.iter_mut().zip(row).enumerate() {
                let p = f64::from(v - max).exp() / sum;
                *gv = ((p - f64::from(u8::from(j == label))) / n as f64) as f32;
            }
        }
        grads.push(g);
    }
    (loss / n as f64, correct, grads)
}

/// Mean squared error of per-tile two-logit margins `z_0 - z_1` against `targets` (one per
/// image, in tile order; below a floor, one-sided against the floor: see
/// [`Target::Margins`]), images whose margin has the target's sign, and the logits'
/// gradient (`+-2 error / n`).
fn margin_error(logits: &Tiles, targets: &[f32], floors: Option<&[f32]>) -> (f64, usize, Tiles) {
    let n = targets.len();
    let (mut loss, mut correct) = (0.0f64, 0usize);
    let mut img = 0;
    let grads = logits
        .iter()
        .map(|t| {
            // Every value is written below.
            let mut g = pool::take(t.len());
            for (z, gz) in t.chunks_exact(2).zip(g.chunks_exact_mut(2)) {
                let (m, want) = (f64::from(z[0] - z[1]), f64::from(targets[img]));
                let e = match floors.map(|f| f64::from(f[img])) {
                    Some(floor) if want < floor => (m - floor).max(0.0),
                    _ => m - want,
                };
                img += 1;
                loss += e * e;
                correct += usize::from((m > 0.0) == (want > 0.0));
                let d = (2.0 * e / n as f64) as f32;
                gz[0] = d;
                gz[1] = -d;
            }
            g
        })
        .collect();
    (loss / n as f64, correct, grads)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ResNetConfig, Shortcut};

    /// A ResNet-8 (3 classes) and a batch of 5 fixed images with labels.
    fn resnet8(bn: bool, shortcut: Shortcut) -> (GradEngine, Vec<f32>, [usize; 5]) {
        let model = ResNetConfig::new(8, 3)
            .with_batch_norm(bn)
            .with_shortcut(shortcut)
            .with_seed(3)
            .build()
            .expect("resnet-8");
        let images = (0..5 * 3 * 32 * 32)
            .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
            .collect();
        let engine = GradEngine::new(model).expect("supported");
        (engine, images, [0, 1, 2, 1, 0])
    }

    /// Recycled buffers ([`pool`]) hold NaN in unit tests: a kernel that reads a value it
    /// did not write would change the second pass over the same batch.
    #[test]
    fn a_second_pass_on_recycled_buffers_gives_the_same_gradients() {
        let _serial = pool::TEST_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        for bn in [true, false] {
            let (mut engine, images, labels) = resnet8(bn, Shortcut::A);
            let first = engine.gradients(&images, &labels).expect("first pass");
            let second = engine.gradients(&images, &labels).expect("second pass");
            assert!(first.loss.is_finite());
            assert_eq!(first.loss, second.loss, "batch norm {bn}");
            for (a, b) in first.params.iter().zip(&second.params) {
                assert_eq!(a.name, b.name);
                assert!(a.grad.data.iter().all(|v| v.is_finite()), "{}", a.name);
                assert_eq!(a.grad.data, b.grad.data, "{} (batch norm {bn})", a.name);
            }
        }
    }

    /// A forward-only measurement gives the loss and count of the full pass and changes
    /// nothing: not the parameters, not the BatchNorm statistics (which a training-mode
    /// pass of a non-frozen model moves), so the next full pass is the one it would have been.
    #[test]
    fn loss_for_is_the_full_pass_loss_and_changes_nothing() {
        let _serial = pool::TEST_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        for bn in [true, false] {
            // Labels: the three-class ResNet-8 (margin targets take two logits; module
            // training's use is tested with its modules in decomp-cli).
            let (mut engine, images, labels) = resnet8(bn, Shortcut::A);
            let before = engine.model().clone();
            let (loss, correct) = engine
                .loss_for(&images, Target::Labels(&labels))
                .expect("measure");
            assert!(
                engine.model() == &before,
                "batch norm {bn}: the measurement changed the model"
            );
            let full = engine
                .gradients_for(&images, Target::Labels(&labels))
                .expect("full pass");
            assert_eq!(loss, full.loss, "batch norm {bn}");
            assert_eq!(correct, full.correct, "batch norm {bn}");
            assert!(loss.is_finite() && loss > 0.0);
        }
    }

    /// Every buffer a pass gives back to the pool came from it, and every buffer it takes
    /// comes back: after four passes (which fill the pool), it neither grows nor allocates,
    /// with and without BatchNorm and for both shortcut options. A buffer allocated outside
    /// the pool and given back grows it by one per pass until it holds `CAP_BYTES` (a
    /// no-BatchNorm ResNet-32 training held 20,000 buffers, and each request scanned them);
    /// one taken and dropped is allocated, and its pages cleared, again at every pass.
    #[test]
    fn passes_give_back_only_what_they_took() {
        let _serial = pool::TEST_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        for (bn, shortcut) in [
            (true, Shortcut::A),
            (false, Shortcut::A),
            (false, Shortcut::B),
        ] {
            let (mut engine, images, labels) = resnet8(bn, shortcut);
            let mut pass = || {
                engine.gradients(&images, &labels).expect("pass");
                engine
                    .loss_for(&images, Target::Labels(&labels))
                    .expect("forward-only pass");
            };
            (0..4).for_each(|_| pass());
            let fresh = pool::fresh_allocations();
            let held: Vec<usize> = (0..8)
                .map(|_| {
                    pass();
                    pool::held()
                })
                .collect();
            // Not constant: a request may take a buffer up to a quarter larger, so the count
            // can alternate between passes; a leak makes it climb.
            let (early, late) = held.split_at(4);
            assert!(
                late.iter().max() <= early.iter().max(),
                "batch norm {bn}, shortcut {shortcut:?}: buffers held after each pass {held:?}"
            );
            assert_eq!(
                pool::fresh_allocations(),
                fresh,
                "batch norm {bn}, shortcut {shortcut:?}: buffers allocated by 8 passes"
            );
        }
    }
}
