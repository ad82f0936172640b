//! Concern identification (stage crate, METHOD.md 2.1).
//!
//! [`identify`] runs each class's concerned training images through the unmodified model
//! and keeps, per mask site, the positions whose pre-activation is `<= 0` for every one of
//! them. Sites are IR nodes ([`mask_sites`]), so any graph the executor runs works; the
//! statistics are reduced batch by batch ([`Executor::forward_active`]: to one bit per
//! position while each image tile is computed on the CPU engine), never stored per image.
//! [`identify_channels`] records per-channel activation statistics instead (channel-level
//! decomposition).

mod channel;

pub use channel::{ClassStats, identify_channels};
use decomp_data::Dataset;
use decomp_ir::{BitSet, ClassConcern, DecompConfig, MaskSite, ModelIr, NodeId, NodeMask, Op, PositiveFilter, SiteMasks};
use decomp_model::{Executor, Probe, to_vec};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

/// Errors of concern identification.
#[derive(Debug, thiserror::Error)]
pub enum ConcernError {
    #[error(transparent)]
    Model(#[from] decomp_model::ModelError),
    #[error(transparent)]
    Data(#[from] decomp_data::DataError),
    #[error("class {class} is out of range for a {classes}-class model")]
    Class { class: usize, classes: usize },
    #[error("class {class} has no usable positive images ({available} images, filter {filter:?})")]
    NoPositives {
        class: usize,
        available: usize,
        filter: PositiveFilter,
    },
    #[error("dataset has {dataset} classes, the model {model}")]
    Classes { dataset: usize, model: usize },
}

/// The nodes where masks are recorded and applied for `site`.
pub fn mask_sites(model: &ModelIr, site: MaskSite) -> Vec<NodeId> {
    let g = &model.graph;
    match site {
        MaskSite::ReluInput => g.relu_inputs(),
        MaskSite::ConvOutput => g
            .nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| matches!(n.op, Op::Conv2d { .. }))
            .map(|(id, _)| match g.consumers(id).as_slice() {
                [bn] if matches!(g.nodes[*bn].op, Op::BatchNorm2d { .. }) => *bn,
                _ => id,
            })
            .collect(),
    }
}

/// Deterministic order of the images of `class`, derived from the config seed.
pub fn class_order(data: &Dataset, class: usize, seed: u64, salt: u64) -> Vec<usize> {
    let mut idx = data.indices_of_class(class);
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ (class as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ salt);
    idx.shuffle(&mut rng);
    idx
}

fn softmax_prob(row: &[f32], class: usize) -> f32 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = row.iter().map(|v| (v - max).exp()).sum();
    (row[class] - max).exp() / sum
}

fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best
}

/// Runs the positives of `class` (chosen by `cfg`: seeded order, positive filter, at most
/// `positives_per_class`) through the unmodified model, capturing `sites`; `sink(captured,
/// rows)` sees each batch's captured outputs and the rows that are positives. Returns the
/// dataset indices of the positives.
#[allow(clippy::too_many_arguments)]
pub(crate) fn positives_pass(
    exec: &Executor,
    train: &Dataset,
    cfg: &DecompConfig,
    class: usize,
    sites: &[NodeId],
    batch_size: usize,
    progress: &mut dyn FnMut(usize, usize),
    sink: &mut dyn FnMut(&[decomp_model::Tensor<2>], &[usize]),
) -> Result<Vec<usize>, ConcernError> {
    let mut forward = |x| {
        let fwd = exec.forward_probe(x, &Probe { capture: sites, masks: None })?;
        Ok((to_vec(fwd.logits), fwd.captured))
    };
    positives_loop(exec, train, cfg, class, batch_size, progress, &mut forward, &mut |c: &Vec<_>, rows| sink(c, rows))
}

/// The loop of [`positives_pass`] over any forward pass returning `(logits, per-batch
/// value)`; `sink(value, rows)` sees the rows that are positives.
#[allow(clippy::too_many_arguments)]
fn positives_loop<T>(
    exec: &Executor,
    train: &Dataset,
    cfg: &DecompConfig,
    class: usize,
    batch_size: usize,
    progress: &mut dyn FnMut(usize, usize),
    forward: &mut dyn FnMut(decomp_model::Tensor<4>) -> Result<(Vec<f32>, T), ConcernError>,
    sink: &mut dyn FnMut(&T, &[usize]),
) -> Result<Vec<usize>, ConcernError> {
    let k = train.num_classes();
    let order = class_order(train, class, cfg.seed, 0);
    let mut positives = Vec::new();
    let want = cfg.positives_per_class;
    let mut start = 0;
    while positives.len() < want && start < order.len() {
        // Ask for what is still missing (plus slack for filtered-out images).
        let take = (want - positives.len()).max(1).min(batch_size.max(1));
        let chunk = &order[start..(start + take).min(order.len())];
        start += chunk.len();
        let b = train.select(chunk)?.batch(0..chunk.len())?;
        let n = b.labels.len();
        let (logits, value) = forward(exec.input_tensor(b.images, n)?)?;
        let rows: Vec<usize> = (0..n)
            .filter(|&i| {
                let row = &logits[i * k..(i + 1) * k];
                match cfg.positive_filter {
                    PositiveFilter::All => true,
                    PositiveFilter::Correct => argmax(row) == class,
                    PositiveFilter::Confident(t) => argmax(row) == class && softmax_prob(row, class) > t,
                }
            })
            .take(want - positives.len())
            .collect();
        sink(&value, &rows);
        positives.extend(rows.iter().map(|&r| chunk[r]));
        progress(class, n);
    }
    if positives.is_empty() {
        return Err(ConcernError::NoPositives { class, available: order.len(), filter: cfg.positive_filter });
    }
    Ok(positives)
}

/// Concern identification for `classes` of `model` on its training data `train`.
/// `progress(class, images)` is called after every batch.
pub fn identify(
    exec: &Executor,
    model: &ModelIr,
    train: &Dataset,
    cfg: &DecompConfig,
    classes: &[usize],
    batch_size: usize,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(Vec<NodeId>, Vec<ClassConcern>), ConcernError> {
    let k = model.num_classes();
    if train.num_classes() != k {
        return Err(ConcernError::Classes { dataset: train.num_classes(), model: k });
    }
    let sites = mask_sites(model, cfg.mask_site);
    let shapes = exec.shapes();
    let mut out = Vec::with_capacity(classes.len());
    for &class in classes {
        if class >= k {
            return Err(ConcernError::Class { class, classes: k });
        }
        let span = tracing::info_span!("concern", class);
        let _enter = span.enter();
        let mut active: Vec<BitSet> = sites.iter().map(|&s| BitSet::new(shapes[s].iter().product())).collect();
        // Activity reduced to bits while each image tile is computed (CPU engine), not
        // captured as values.
        let mut forward = |x| {
            let mut fwd = exec.forward_active(x, &sites)?;
            Ok((std::mem::take(&mut fwd.logits), fwd))
        };
        let positives = positives_loop(exec, train, cfg, class, batch_size, progress, &mut forward, &mut |fwd, rows| {
            exec.accumulate(fwd, Some(rows), &mut active)
        })?;
        tracing::debug!(positives = positives.len(), "concern identified");
        out.push(ClassConcern {
            class,
            inactive: SiteMasks {
                masks: sites
                    .iter()
                    .zip(&active)
                    .map(|(&node, a)| NodeMask { node, zeroed: a.complement() })
                    .collect(),
            },
            positives,
        });
    }
    Ok((sites, out))
}
