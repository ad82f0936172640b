//! Concern identification (stage crate, METHOD.md 2.1).
//!
//! [`identify`] runs each class's concerned training images through the unmodified model
//! and keeps, per mask site, the positions whose pre-activation is `<= 0` for every one of
//! them (with `DecompConfig::min_active_fraction` q > 0: for all but at most a fraction q of
//! them; counts per position, [`decomp_ir::ActivityCounts`]). Sites are IR nodes ([`mask_sites`]), so any graph the executor runs works; the
//! statistics are reduced batch by batch ([`Executor::forward_active`]: to one bit per
//! position while each image tile is computed on the CPU engine), never stored per image.
//! [`identify_channels`] records per-channel activation statistics instead (channel-level
//! decomposition). A [`ConcernRun`] runs either over the chosen classes and returns the
//! stage's artifact value ([`ConcernRun::concern_set`], [`ConcernRun::channel_concern_set`]).

mod channel;

use std::time::Instant;

pub use channel::{ClassStats, identify_channels};
use decomp_data::Dataset;
use decomp_ir::{
    ActivityCounts, ClassConcern, ConcernSet, DecompConfig, MaskSite, ModelIr, NodeId, NodeMask,
    Op, PositiveFilter, SiteMasks,
};
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
    #[error(
        "--granularity channel records statistics at ReLU inputs only (--mask-site relu-input)"
    )]
    ChannelSite,
}

/// Where a concern set's model and images come from, as its artifact records them.
#[derive(Clone, Copy, Debug)]
pub struct SetOrigin<'a> {
    /// The model as the user named it (`--weights`).
    pub model_path: &'a str,
    /// The dataset's name.
    pub dataset: &'a str,
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
    let mut rng =
        ChaCha8Rng::seed_from_u64(seed ^ (class as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ salt);
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
        let fwd = exec.forward_probe(
            x,
            &Probe {
                capture: sites,
                masks: None,
            },
        )?;
        Ok((to_vec(fwd.logits), fwd.captured))
    };
    positives_loop(
        exec,
        train,
        cfg,
        class,
        batch_size,
        progress,
        &mut forward,
        &mut |c: &Vec<_>, rows| sink(c, rows),
    )
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
                    PositiveFilter::Confident(t) => {
                        argmax(row) == class && softmax_prob(row, class) > t
                    }
                }
            })
            .take(want - positives.len())
            .collect();
        sink(&value, &rows);
        positives.extend(rows.iter().map(|&r| chunk[r]));
        progress(class, n);
    }
    if positives.is_empty() {
        return Err(ConcernError::NoPositives {
            class,
            available: order.len(),
            filter: cfg.positive_filter,
        });
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
    let sites = mask_sites(model, cfg.mask_site);
    let shapes = exec.shapes();
    let out = each_class(model, train, classes, |class| {
        let span = tracing::info_span!("concern", class);
        let _enter = span.enter();
        let mut counts = ActivityCounts::new(sites.iter().map(|&s| shapes[s].iter().product()));
        // Activity reduced to bits while each image tile is computed (CPU engine), not
        // captured as values.
        let mut forward = |x| {
            let mut fwd = exec.forward_active(x, &sites)?;
            Ok((std::mem::take(&mut fwd.logits), fwd))
        };
        let positives = positives_loop(
            exec,
            train,
            cfg,
            class,
            batch_size,
            progress,
            &mut forward,
            &mut |fwd, rows| exec.count(fwd, Some(rows), &mut counts),
        )?;
        let active = counts.active(cfg.min_active_fraction);
        tracing::debug!(positives = positives.len(), "concern identified");
        Ok(ClassConcern {
            class,
            inactive: SiteMasks {
                masks: sites
                    .iter()
                    .zip(&active)
                    .map(|(&node, a)| NodeMask {
                        node,
                        zeroed: a.complement(),
                    })
                    .collect(),
            },
            positives,
        })
    })?;
    Ok((sites, out))
}

/// Checks that `train` has `model`'s classes, then runs `per_class` on each of `classes`
/// in order, refusing a class the model does not have when its turn comes.
pub(crate) fn each_class<T>(
    model: &ModelIr,
    train: &Dataset,
    classes: &[usize],
    mut per_class: impl FnMut(usize) -> Result<T, ConcernError>,
) -> Result<Vec<T>, ConcernError> {
    let k = model.num_classes();
    if train.num_classes() != k {
        return Err(ConcernError::Classes {
            dataset: train.num_classes(),
            model: k,
        });
    }
    classes
        .iter()
        .map(|&class| {
            if class >= k {
                Err(ConcernError::Class { class, classes: k })
            } else {
                per_class(class)
            }
        })
        .collect()
}

/// One concern identification: the model and its executor, the training images, the
/// method's configuration, the classes to identify and the images per forward pass.
#[derive(Clone, Copy)]
pub struct ConcernRun<'a> {
    pub exec: &'a Executor,
    pub model: &'a ModelIr,
    pub train: &'a Dataset,
    pub cfg: &'a DecompConfig,
    pub classes: &'a [usize],
    pub batch_size: usize,
}

impl ConcernRun<'_> {
    /// Concern identification ([`identify`]) as the concern-set artifact of the stage: the
    /// model's hash, `origin`, the configuration and the seconds it took.
    /// `progress(class, images)` is called after every batch.
    pub fn concern_set(
        &self,
        origin: SetOrigin<'_>,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<ConcernSet, ConcernError> {
        let start = Instant::now();
        let (sites, concerns) = identify(
            self.exec,
            self.model,
            self.train,
            self.cfg,
            self.classes,
            self.batch_size,
            progress,
        )?;
        Ok(ConcernSet {
            model_hash: self.model.content_hash(),
            model_path: origin.model_path.to_string(),
            dataset: origin.dataset.to_string(),
            config: self.cfg.clone(),
            sites,
            classes: concerns,
            seconds: start.elapsed().as_secs_f64(),
        })
    }
}

#[cfg(test)]
mod tests {
    use decomp_data::Dataset;
    use decomp_ir::{BitSet, DecompConfig, MaskSite, ModelIr, PositiveFilter};
    use decomp_model::{Device, Executor, Probe, ResNetConfig, to_vec};

    use super::*;

    /// An untrained 3-class ResNet-8 on 3x8x8 images, and 8 synthetic images per class.
    fn setup() -> (ModelIr, Dataset, Executor) {
        let model = ResNetConfig::new(8, 3)
            .with_input([3, 8, 8])
            .with_seed(3)
            .build()
            .expect("model");
        let data = Dataset::synthetic(3, 8, [3, 8, 8], 5);
        let exec = Executor::new(&model, &Device::flex()).expect("executor");
        (model, data, exec)
    }

    fn cfg(positives: usize) -> DecompConfig {
        DecompConfig {
            positives_per_class: positives,
            positive_filter: PositiveFilter::All,
            ..DecompConfig::default()
        }
    }

    /// Per site, the positions `> 0` on more than `fraction` of `images` (indices into
    /// `data`; 0: on any one), from values captured by a plain forward pass: the reduction
    /// the stage does on activity bits.
    fn active(
        exec: &Executor,
        data: &Dataset,
        sites: &[NodeId],
        images: &[usize],
        fraction: f32,
    ) -> Vec<BitSet> {
        let b = data
            .select(images)
            .expect("select")
            .batch(0..images.len())
            .expect("batch");
        let out = exec
            .forward_probe(
                exec.input_tensor(b.images, images.len()).expect("input"),
                &Probe {
                    capture: sites,
                    masks: None,
                },
            )
            .expect("forward");
        let values: Vec<Vec<f32>> = out.captured.into_iter().map(to_vec).collect();
        let mut counts = ActivityCounts::new(values.iter().map(|v| v.len() / images.len()));
        counts.add_values(&values);
        counts.active(fraction)
    }

    /// A position is inactive exactly when it is `<= 0` for every positive, and the positives
    /// are `positives_per_class` images of the class in the seeded order.
    #[test]
    fn inactive_positions_are_those_no_positive_activates() {
        let (model, data, exec) = setup();
        let (sites, concerns) =
            identify(&exec, &model, &data, &cfg(5), &[0, 2], 2, &mut |_, _| {}).expect("identify");
        assert_eq!(sites, mask_sites(&model, MaskSite::ReluInput));
        assert_eq!(
            concerns.iter().map(|c| c.class).collect::<Vec<_>>(),
            vec![0, 2]
        );
        for c in &concerns {
            assert_eq!(c.positives, class_order(&data, c.class, 0, 0)[..5].to_vec());
            assert!(c.positives.iter().all(|&i| data.label(i) == c.class));
            let want = active(&exec, &data, &sites, &c.positives, 0.0);
            for (m, a) in c.inactive.masks.iter().zip(&want) {
                assert_eq!(
                    m.zeroed,
                    a.complement(),
                    "class {} node {}",
                    c.class,
                    m.node
                );
            }
            let zeroed: usize = c.inactive.masks.iter().map(|m| m.zeroed.count_ones()).sum();
            let total: usize = c.inactive.masks.iter().map(|m| m.zeroed.len()).sum();
            assert!(
                zeroed > 0 && zeroed < total,
                "masks neither empty nor full: {zeroed} of {total}"
            );
        }
    }

    /// With `min_active_fraction` q, a position is inactive when at most q of the positives
    /// activate it: the masks hold the paper's and more (positions only a few positives use).
    #[test]
    fn rare_activity_is_masked_with_a_fraction() {
        let (model, data, exec) = setup();
        let run = |q: f32| {
            let cfg = DecompConfig {
                min_active_fraction: q,
                ..cfg(5)
            };
            identify(&exec, &model, &data, &cfg, &[1], 2, &mut |_, _| {}).expect("identify")
        };
        let (sites, paper) = run(0.0);
        let (_, rare) = run(0.25);
        assert_eq!(rare[0].positives, paper[0].positives);
        let want = active(&exec, &data, &sites, &rare[0].positives, 0.25);
        let mut grew = false;
        for ((r, p), a) in rare[0]
            .inactive
            .masks
            .iter()
            .zip(&paper[0].inactive.masks)
            .zip(&want)
        {
            assert_eq!(r.zeroed, a.complement(), "node {}", r.node);
            let mut both = r.zeroed.clone();
            both.intersect_with(&p.zeroed);
            assert_eq!(
                both, p.zeroed,
                "node {}: the paper's mask lies inside",
                r.node
            );
            grew |= r.zeroed != p.zeroed;
        }
        assert!(grew, "some position is active on only 1 of the 5 positives");
    }

    /// More positives only ever activate more positions; `min(N, available)` are used.
    #[test]
    fn more_positives_mask_less() {
        let (model, data, exec) = setup();
        let one = identify(&exec, &model, &data, &cfg(1), &[1], 8, &mut |_, _| {})
            .expect("one")
            .1;
        let all = identify(&exec, &model, &data, &cfg(100), &[1], 8, &mut |_, _| {})
            .expect("all")
            .1;
        assert_eq!((one[0].positives.len(), all[0].positives.len()), (1, 8));
        for (a, b) in one[0].inactive.masks.iter().zip(&all[0].inactive.masks) {
            let mut both = a.zeroed.clone();
            both.intersect_with(&b.zeroed);
            assert_eq!(
                both, b.zeroed,
                "node {}: the 8-image mask lies inside the 1-image mask",
                a.node
            );
        }
        assert!(
            one[0]
                .inactive
                .masks
                .iter()
                .zip(&all[0].inactive.masks)
                .any(|(a, b)| a.zeroed != b.zeroed)
        );
    }

    #[test]
    fn conv_output_sites_are_the_batchnorms_after_convolutions() {
        let (model, ..) = setup();
        let g = &model.graph;
        let sites = mask_sites(&model, MaskSite::ConvOutput);
        let convs = g
            .nodes
            .iter()
            .filter(|n| matches!(n.op, Op::Conv2d { .. }))
            .count();
        assert_eq!(sites.len(), convs);
        assert!(
            sites
                .iter()
                .all(|&s| matches!(g.nodes[s].op, Op::BatchNorm2d { .. }))
        );
    }

    #[test]
    fn bad_requests_are_errors() {
        let (model, data, exec) = setup();
        let err =
            identify(&exec, &model, &data, &cfg(2), &[3], 8, &mut |_, _| {}).expect_err("class 3");
        assert!(
            matches!(
                err,
                ConcernError::Class {
                    class: 3,
                    classes: 3
                }
            ),
            "{err}"
        );
        let two = data.subset_classes(&[0, 1]).expect("subset");
        let err =
            identify(&exec, &model, &two, &cfg(2), &[0], 8, &mut |_, _| {}).expect_err("2 classes");
        assert!(
            matches!(
                err,
                ConcernError::Classes {
                    dataset: 2,
                    model: 3
                }
            ),
            "{err}"
        );
        let conv = DecompConfig {
            mask_site: MaskSite::ConvOutput,
            ..cfg(2)
        };
        let origin = SetOrigin {
            model_path: "m",
            dataset: "d",
        };
        let run = ConcernRun {
            exec: &exec,
            model: &model,
            train: &data,
            cfg: &conv,
            classes: &[0],
            batch_size: 8,
        };
        let err = run
            .channel_concern_set(origin, &mut |_, _| {})
            .expect_err("site");
        assert!(matches!(err, ConcernError::ChannelSite), "{err}");
    }

    /// The artifact values carry the model's hash, the origin and the configuration, and the
    /// channel set's per-class statistics cover the same positives as element level.
    #[test]
    fn concern_sets_record_their_origin() {
        let (model, data, exec) = setup();
        let origin = SetOrigin {
            model_path: "m.ir",
            dataset: "synthetic",
        };
        let cfg = cfg(3);
        let run = ConcernRun {
            exec: &exec,
            model: &model,
            train: &data,
            cfg: &cfg,
            classes: &[1],
            batch_size: 8,
        };
        let set = run.concern_set(origin, &mut |_, _| {}).expect("set");
        assert_eq!(
            (set.model_hash.as_str(), set.model_path.as_str()),
            (model.content_hash().as_str(), "m.ir")
        );
        assert_eq!(
            (set.dataset.as_str(), set.config.positives_per_class),
            ("synthetic", 3)
        );
        let ch = run
            .channel_concern_set(origin, &mut |_, _| {})
            .expect("channel");
        assert_eq!(ch.sites, set.sites);
        assert_eq!(ch.classes[0].positives, set.classes[0].positives);
        assert_eq!(ch.classes[0].concerned.images, 3);
        assert!(ch.classes[0].unconcerned.is_none());
        assert_eq!(ch.tangle_seconds, 0.0);
    }
}
