//! Tangling identification and concern modularization (stage crate, METHOD.md 2.2-2.3).
//!
//! - [`unconcerned_sample`] draws the 1:1 unconcerned images, spread evenly over the other
//!   classes; [`untangle`] brings back every masked position active for any of them.
//! - [`binary_head`] turns the K-way output layer into the 2-way mine/other head.
//! - [`modularize`] applies the variant (`ci-ti-mc`, `mc-bln`, `mc-bln-bi`) and returns the
//!   module's masks; [`build_module`] assembles the [`ModuleIr`] artifact value.
//! - Channel level: [`channel_untangle`] (unconcerned statistics), [`channel_plan`]
//!   (thresholds, residual-stream unions, compensation constants), [`build_channel_module`]
//!   (the physically small [`decomp_ir::ChannelModule`]).

mod channel;
mod fit;

pub use channel::{FitData, build_channel_module, channel_plan, channel_untangle};
use decomp_data::Dataset;
use decomp_ir::analysis::propagate_dead;
use decomp_ir::{
    BinaryHead, BitSet, BlnRule, ClassConcern, DecompConfig, ModelIr, ModuleIr, NodeId, NodeMask, Op, SampleCounts,
    TensorData, Variant,
};
use decomp_model::Executor;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

/// Errors of tangling identification and modularization.
#[derive(Debug, thiserror::Error)]
pub enum TangleError {
    #[error(transparent)]
    Model(#[from] decomp_model::ModelError),
    #[error(transparent)]
    Data(#[from] decomp_data::DataError),
    #[error(transparent)]
    Ir(#[from] decomp_ir::IrError),
    #[error("the model's output node {0} is not a Linear layer: no head to modularize")]
    NoHead(String),
    #[error("concern masks do not fit the model: {0}")]
    Masks(String),
}

/// Unconcerned images for `class`: `max(1, positives / (K - 1))` from each other class,
/// chosen with the config seed. `extra` adds images of further datasets (continuous
/// learning) by index into `train`.
pub fn unconcerned_sample(train: &Dataset, class: usize, positives: usize, seed: u64) -> (Vec<usize>, usize) {
    let k = train.num_classes();
    let per_class = (positives / (k - 1).max(1)).max(1);
    let mut out = Vec::new();
    for other in (0..k).filter(|&o| o != class) {
        let mut idx = train.indices_of_class(other);
        let salt = (class as u64) << 32 | other as u64;
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ salt.wrapping_mul(0xD1B5_4A32_D192_ED03) ^ 0x7461_6e67);
        idx.shuffle(&mut rng);
        out.extend(idx.into_iter().take(per_class));
    }
    (out, per_class)
}

/// Tangling identification: removes from `concern`'s inactive masks every position that
/// is active for any image of `unconcerned` (indices into `train`).
pub fn untangle(
    exec: &Executor,
    train: &Dataset,
    concern: &ClassConcern,
    unconcerned: &[usize],
    batch_size: usize,
    progress: &mut dyn FnMut(usize),
) -> Result<Vec<NodeMask>, TangleError> {
    let span = tracing::info_span!("tangle", class = concern.class);
    let _enter = span.enter();
    let sites: Vec<NodeId> = concern.inactive.masks.iter().map(|m| m.node).collect();
    let shapes = exec.shapes();
    for m in &concern.inactive.masks {
        let n: usize = shapes.get(m.node).map_or(0, |s| s.iter().product());
        if n != m.zeroed.len() {
            return Err(TangleError::Masks(format!("node {} has {n} outputs, mask {} bits", m.node, m.zeroed.len())));
        }
    }
    let mut active: Vec<BitSet> = sites.iter().map(|&s| BitSet::new(shapes[s].iter().product())).collect();
    let view = train.select(unconcerned)?;
    for batch in view.batches(batch_size.max(1)) {
        let b = batch?;
        let n = b.labels.len();
        let out = exec.forward_active(exec.input_tensor(b.images, n)?, &sites)?;
        exec.accumulate(&out, None, &mut active);
        progress(n);
    }
    Ok(concern
        .inactive
        .masks
        .iter()
        .zip(&active)
        .map(|(m, a)| {
            let mut z = m.zeroed.clone();
            z.intersect_with(&a.complement());
            NodeMask { node: m.node, zeroed: z }
        })
        .collect())
}

/// The output layer and the node feeding it.
fn output_linear(model: &ModelIr) -> Result<(NodeId, &TensorData, Option<&TensorData>), TangleError> {
    let g = &model.graph;
    let node = &g.nodes[g.output];
    match &node.op {
        Op::Linear { weight, bias } => Ok((node.inputs[0], weight, bias.as_ref())),
        _ => Err(TangleError::NoHead(node.name.clone())),
    }
}

/// The 2-way head of class `class`: mine = `W[c]`, other = mean of the other rows; same for
/// the bias (METHOD.md 2.3).
pub fn binary_head(model: &ModelIr, class: usize) -> Result<BinaryHead, TangleError> {
    let (input, w, b) = output_linear(model)?;
    let (k, f) = (w.shape[0], w.shape[1]);
    let mut weight = vec![0.0f32; 2 * f];
    let mut bias = [0.0f32; 2];
    for row in 0..k {
        let r = &w.data[row * f..(row + 1) * f];
        let bv = b.map_or(0.0, |b| b.data[row]);
        if row == class {
            weight[..f].copy_from_slice(r);
            bias[0] = bv;
        } else {
            for (o, v) in weight[f..].iter_mut().zip(r) {
                *o += v / (k - 1) as f32;
            }
            bias[1] += bv / (k - 1) as f32;
        }
    }
    Ok(BinaryHead {
        input,
        weight: TensorData { shape: vec![2, f], data: weight },
        bias: TensorData { shape: vec![2], data: bias.to_vec() },
    })
}

/// Head input units MC-BLN marks inactive.
pub fn bln_units(head: &BinaryHead, rule: BlnRule, delta: f32) -> Vec<usize> {
    let f = head.weight.shape[1];
    let (mine, other) = head.weight.data.split_at(f);
    (0..f)
        .filter(|&u| match rule {
            BlnRule::Algorithm2 => other[u] <= -delta && mine[u] >= delta,
            BlnRule::OnlyOther => mine[u].abs() < delta && other[u].abs() >= delta,
        })
        .collect()
}

/// Concern modularization for `cfg.variant`: the masks applied at inference, the dead
/// positions found by backtracking, and the head.
///
/// `ci-ti-mc` keeps the untangled masks and the plain head. `mc-bln` removes the head
/// inputs chosen by [`bln_units`] (their head weights become zero, which is the same as
/// zeroing the units) and pushes the removal back (flatten, pooling, ReLU, Add) to the
/// positions that produced them, stopping at the last conv layer. `mc-bln-bi` pushes every
/// mask and removed input back through convolutions (and BatchNorm, Add, pooling) to the
/// input. Backtracked positions land only where every consumer of a
/// node agrees, so they cannot change the module's output: they are recorded as `dead`.
pub fn modularize(
    model: &ModelIr,
    untangled: &[NodeMask],
    mut head: BinaryHead,
    cfg: &DecompConfig,
) -> Result<(Vec<NodeMask>, Vec<NodeMask>, BinaryHead), TangleError> {
    let nonempty = |v: Vec<NodeMask>| -> Vec<NodeMask> { v.into_iter().filter(|m| m.zeroed.count_ones() > 0).collect() };
    let masks = nonempty(untangled.to_vec());
    if cfg.variant == Variant::CiTiMc {
        return Ok((masks, Vec::new(), head));
    }
    let shapes = model.check()?;
    let f: usize = shapes[head.input].iter().product();
    let mut units = BitSet::new(f);
    for u in bln_units(&head, cfg.bln_rule, cfg.bln_delta) {
        units.set(u, true);
        head.weight.data[u] = 0.0;
        head.weight.data[f + u] = 0.0;
    }
    // MC-BLN backtracks only the removed head inputs, and not through convolutions (to the
    // last conv layer); MC-BI backtracks every mask and removed input through convolutions.
    let bi = cfg.variant == Variant::McBlnBi;
    let mut seeds = if bi { masks.clone() } else { Vec::new() };
    seeds.push(NodeMask { node: head.input, zeroed: units });
    let dead = propagate_dead(&model.graph, &shapes, &seeds, bi);
    let g = &model.graph;
    let dead = dead
        .into_iter()
        .enumerate()
        // ReLU / clip / concat / pooling / flatten outputs follow from their inputs; the input is not a layer.
        .filter(|(id, _)| !matches!(g.nodes[*id].op, Op::Input { .. } | Op::Relu | Op::Clip { .. } | Op::Concat | Op::GlobalAvgPool | Op::Flatten))
        .map(|(node, mut zeroed)| {
            // Positions already masked are not "dead" in addition.
            if let Some(m) = masks.iter().find(|m| m.node == node) {
                zeroed.intersect_with(&m.zeroed.complement());
            }
            NodeMask { node, zeroed }
        })
        .collect();
    Ok((masks, nonempty(dead), head))
}

/// Everything a module artifact records besides masks and head.
pub struct ModuleOrigin<'a> {
    pub model_hash: &'a str,
    pub model_path: &'a str,
    pub provenance: String,
}

/// Assembles the module of `concern.class`.
pub fn build_module(
    model: &ModelIr,
    concern: &ClassConcern,
    untangled: &[NodeMask],
    unconcerned: usize,
    per_class: usize,
    cfg: &DecompConfig,
    origin: &ModuleOrigin<'_>,
) -> Result<ModuleIr, TangleError> {
    let (masks, dead, head) = modularize(model, untangled, binary_head(model, concern.class)?, cfg)?;
    Ok(ModuleIr {
        class: concern.class,
        class_name: model.meta.class_names.get(concern.class).cloned().unwrap_or_default(),
        model_hash: origin.model_hash.to_string(),
        model_path: origin.model_path.to_string(),
        model: model.clone(),
        masks,
        dead,
        head,
        config: cfg.clone(),
        counts: SampleCounts {
            positives: concern.positives.len(),
            unconcerned,
            unconcerned_per_class: per_class,
        },
        provenance: origin.provenance.clone(),
    })
}
