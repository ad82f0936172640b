//! Tangling identification and concern modularization (stage crate, METHOD.md 2.2-2.3).
//!
//! - [`unconcerned_sample`] draws the 1:1 unconcerned images, spread evenly over the other
//!   classes; [`untangle`] brings back every masked position active for any of them;
//!   [`untangle_class`] does both for one class, plus continuous learning's extra
//!   unconcerned images.
//! - [`binary_head`] turns the K-way output layer into the 2-way mine/other head.
//! - [`modularize`] applies the variant (`ci-ti-mc`, `mc-bln`, `mc-bln-bi`) and returns the
//!   module's masks; [`build_module`] assembles the [`ModuleIr`] artifact value.
//! - Channel level: [`channel_untangle`] (unconcerned statistics; [`channel_untangle_set`]
//!   for every class of a set that lacks them), [`channel_plan`]
//!   (thresholds, residual-stream unions, compensation constants), [`build_channel_module`]
//!   (the physically small [`decomp_ir::ChannelModule`]).

mod channel;
mod fit;
mod train;

pub use channel::{
    FitData, build_channel_module, channel_plan, channel_untangle, channel_untangle_set,
};
use decomp_data::Dataset;
use decomp_ir::analysis::propagate_dead;
use decomp_ir::{
    ActivityCounts, BinaryHead, BitSet, BlnRule, ClassConcern, DecompConfig, ModelIr, ModuleIr,
    NodeId, NodeMask, Op, SampleCounts, SiteMasks, TensorData, Variant,
};
use decomp_model::Executor;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
pub use train::{ModelLogits, train_channel_module};

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
    #[error("module training of class {class}: {reason}")]
    Train { class: usize, reason: String },
}

/// Unconcerned images for `class` (indices into `train`): `max(1, positives / (K - 1))`
/// from each other class, chosen with the config seed; also returns that count per class.
/// Images of further datasets (continuous learning) are not drawn here: [`untangle_class`]
/// takes them as `extra`.
pub fn unconcerned_sample(
    train: &Dataset,
    class: usize,
    positives: usize,
    seed: u64,
) -> (Vec<usize>, usize) {
    let k = train.num_classes();
    let per_class = (positives / (k - 1).max(1)).max(1);
    let mut out = Vec::new();
    for other in (0..k).filter(|&o| o != class) {
        let mut idx = train.indices_of_class(other);
        let salt = (class as u64) << 32 | other as u64;
        let mut rng = ChaCha8Rng::seed_from_u64(
            seed ^ salt.wrapping_mul(0xD1B5_4A32_D192_ED03) ^ 0x7461_6e67,
        );
        idx.shuffle(&mut rng);
        out.extend(idx.into_iter().take(per_class));
    }
    (out, per_class)
}

/// Tangling identification: removes from `concern`'s inactive masks every position that
/// is active (`> 0`) on more than `min_active_fraction` of the images of `unconcerned`
/// (indices into `train`); with 0 (the paper), on any one of them.
pub fn untangle(
    exec: &Executor,
    train: &Dataset,
    concern: &ClassConcern,
    unconcerned: &[usize],
    min_active_fraction: f32,
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
            return Err(TangleError::Masks(format!(
                "node {} has {n} outputs, mask {} bits",
                m.node,
                m.zeroed.len()
            )));
        }
    }
    let mut counts = ActivityCounts::new(sites.iter().map(|&s| shapes[s].iter().product()));
    let view = train.select(unconcerned)?;
    for batch in view.batches(batch_size.max(1)) {
        let b = batch?;
        let n = b.labels.len();
        let out = exec.forward_active(exec.input_tensor(b.images, n)?, &sites)?;
        exec.count(&out, None, &mut counts);
        progress(n);
    }
    let active = counts.active(min_active_fraction);
    Ok(concern
        .inactive
        .masks
        .iter()
        .zip(&active)
        .map(|(m, a)| {
            let mut z = m.zeroed.clone();
            z.intersect_with(&a.complement());
            NodeMask {
                node: m.node,
                zeroed: z,
            }
        })
        .collect())
}

/// A class's untangled masks and the unconcerned images behind them.
#[derive(Clone, Debug)]
pub struct Untangled {
    pub masks: Vec<NodeMask>,
    /// Unconcerned images looked at: the sample, plus every extra image.
    pub unconcerned: usize,
    /// Sample images drawn from each other class.
    pub per_class: usize,
}

/// Tangling identification of one class: [`untangle`] on its seeded unconcerned sample of
/// `train` ([`unconcerned_sample`] with `cfg.seed`), then, for continuous learning (METHOD.md
/// section 4), on every image of `extra` (fitted to the model, any labels): each set brings
/// back every position it activates (on more than `cfg.min_active_fraction` of its images).
/// `progress(images)` follows the sample only.
pub fn untangle_class(
    exec: &Executor,
    train: &Dataset,
    concern: &ClassConcern,
    cfg: &DecompConfig,
    extra: Option<&Dataset>,
    batch_size: usize,
    progress: &mut dyn FnMut(usize),
) -> Result<Untangled, TangleError> {
    let (sample, per_class) =
        unconcerned_sample(train, concern.class, concern.positives.len(), cfg.seed);
    let q = cfg.min_active_fraction;
    let mut masks = untangle(exec, train, concern, &sample, q, batch_size, progress)?;
    let mut unconcerned = sample.len();
    if let Some(x) = extra {
        let refined = ClassConcern {
            class: concern.class,
            inactive: SiteMasks { masks },
            positives: Vec::new(),
        };
        let all: Vec<usize> = (0..x.len()).collect();
        masks = untangle(exec, x, &refined, &all, q, batch_size, &mut |_| {})?;
        unconcerned += x.len();
    }
    Ok(Untangled {
        masks,
        unconcerned,
        per_class,
    })
}

/// The output layer and the node feeding it.
fn output_linear(
    model: &ModelIr,
) -> Result<(NodeId, &TensorData, Option<&TensorData>), TangleError> {
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
        weight: TensorData {
            shape: vec![2, f],
            data: weight,
        },
        bias: TensorData {
            shape: vec![2],
            data: bias.to_vec(),
        },
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
    let nonempty = |v: Vec<NodeMask>| -> Vec<NodeMask> {
        v.into_iter()
            .filter(|m| m.zeroed.count_ones() > 0)
            .collect()
    };
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
    seeds.push(NodeMask {
        node: head.input,
        zeroed: units,
    });
    let dead = propagate_dead(&model.graph, &shapes, &seeds, bi);
    let g = &model.graph;
    let dead = dead
        .into_iter()
        .enumerate()
        // ReLU / clip / concat / pooling / flatten outputs follow from their inputs; the
        // input is not a layer.
        .filter(|(id, _)| {
            !matches!(
                g.nodes[*id].op,
                Op::Input { .. }
                    | Op::Relu
                    | Op::Clip { .. }
                    | Op::Concat
                    | Op::GlobalAvgPool
                    | Op::Flatten
            )
        })
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
    let (masks, dead, head) =
        modularize(model, untangled, binary_head(model, concern.class)?, cfg)?;
    Ok(ModuleIr {
        class: concern.class,
        class_name: model
            .meta
            .class_names
            .get(concern.class)
            .cloned()
            .unwrap_or_default(),
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

#[cfg(test)]
mod tests {
    use decomp_ir::{
        ChannelConcernSet, ClassChannels, Graph, InputNorm, MaskSite, ModelMeta, PositiveFilter,
    };
    use decomp_model::{Device, Probe, ResNetConfig, to_vec};

    use super::*;

    /// An untrained 3-class ResNet-8 on 3x8x8 images, 8 synthetic images per class, and the
    /// mask sites.
    fn setup() -> (ModelIr, Dataset, Executor, Vec<NodeId>) {
        let model = ResNetConfig::new(8, 3)
            .with_input([3, 8, 8])
            .with_seed(4)
            .build()
            .expect("model");
        let data = Dataset::synthetic(3, 8, [3, 8, 8], 6);
        let exec = Executor::new(&model, &Device::flex()).expect("executor");
        let sites = model.graph.relu_inputs();
        (model, data, exec, sites)
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

    /// A concern of `class` whose masks zero every position (so untangling alone decides).
    fn full_concern(
        exec: &Executor,
        sites: &[NodeId],
        class: usize,
        positives: usize,
    ) -> ClassConcern {
        let masks = sites
            .iter()
            .map(|&node| NodeMask {
                node,
                zeroed: BitSet::full(exec.shapes()[node].iter().product()),
            })
            .collect();
        ClassConcern {
            class,
            inactive: SiteMasks { masks },
            positives: (0..positives).collect(),
        }
    }

    #[test]
    fn unconcerned_sample_is_even_over_the_other_classes() {
        let (_, data, ..) = setup();
        let (sample, per_class) = unconcerned_sample(&data, 1, 5, 9);
        assert_eq!(per_class, 2, "5 positives over 2 other classes");
        let mut counts = [0usize; 3];
        sample.iter().for_each(|&i| counts[data.label(i)] += 1);
        assert_eq!(counts, [2, 0, 2]);
        assert_eq!(unconcerned_sample(&data, 1, 5, 9).0, sample, "seeded");
        assert_eq!(
            unconcerned_sample(&data, 1, 1, 9).1,
            1,
            "at least one per class"
        );
        let others: Vec<Vec<usize>> = (0..4)
            .map(|seed| unconcerned_sample(&data, 1, 5, seed).0)
            .collect();
        assert!(
            others.iter().any(|s| *s != sample),
            "the seed changes the sample"
        );
    }

    /// Untangling removes from the masks exactly the positions some unconcerned image
    /// activates; extra images (continuous learning) only remove more.
    #[test]
    fn untangling_brings_back_what_unconcerned_images_activate() {
        let (_, data, exec, sites) = setup();
        let concern = full_concern(&exec, &sites, 0, 4);
        let (sample, _) = unconcerned_sample(&data, 0, 4, 0);
        let masks =
            untangle(&exec, &data, &concern, &sample, 0.0, 3, &mut |_| {}).expect("untangle");
        for (m, a) in masks.iter().zip(active(&exec, &data, &sites, &sample, 0.0)) {
            assert_eq!(m.zeroed, a.complement(), "node {}", m.node);
        }
        let cfg = DecompConfig::default();
        let u = untangle_class(&exec, &data, &concern, &cfg, None, 3, &mut |_| {}).expect("class");
        assert_eq!(
            (u.masks.clone(), u.unconcerned, u.per_class),
            (masks.clone(), sample.len(), 2)
        );
        let extra = Dataset::synthetic(3, 2, [3, 8, 8], 77);
        let x = untangle_class(&exec, &data, &concern, &cfg, Some(&extra), 3, &mut |_| {})
            .expect("extra");
        assert_eq!(x.unconcerned, sample.len() + extra.len());
        let all: Vec<usize> = (0..extra.len()).collect();
        let more = active(&exec, &extra, &sites, &all, 0.0);
        for ((with, without), a) in x.masks.iter().zip(&masks).zip(&more) {
            let mut want = without.zeroed.clone();
            want.intersect_with(&a.complement());
            assert_eq!(with.zeroed, want, "node {}", with.node);
        }
        assert!(
            x.masks
                .iter()
                .zip(&masks)
                .any(|(a, b)| a.zeroed != b.zeroed),
            "the extra images change something"
        );
    }

    /// With `min_active_fraction` q, only positions active on more than q of the unconcerned
    /// images come back: the masks hold the paper's and more.
    #[test]
    fn a_fraction_brings_back_only_common_activity() {
        let (_, data, exec, sites) = setup();
        let concern = full_concern(&exec, &sites, 0, 4);
        let cfg = |q| DecompConfig {
            min_active_fraction: q,
            ..DecompConfig::default()
        };
        let paper =
            untangle_class(&exec, &data, &concern, &cfg(0.0), None, 3, &mut |_| {}).expect("paper");
        let rare =
            untangle_class(&exec, &data, &concern, &cfg(0.3), None, 3, &mut |_| {}).expect("rare");
        let (sample, _) = unconcerned_sample(&data, 0, 4, 0);
        let want = active(&exec, &data, &sites, &sample, 0.3);
        let mut grew = false;
        for ((r, p), a) in rare.masks.iter().zip(&paper.masks).zip(&want) {
            assert_eq!(r.zeroed, a.complement(), "node {}", r.node);
            let mut both = r.zeroed.clone();
            both.intersect_with(&p.zeroed);
            assert_eq!(both, p.zeroed, "node {}", r.node);
            grew |= r.zeroed != p.zeroed;
        }
        assert!(
            grew,
            "some position is active on only 1 of the 4 unconcerned images"
        );
    }

    #[test]
    fn masks_of_another_graph_are_refused() {
        let (_, data, exec, sites) = setup();
        let mut concern = full_concern(&exec, &sites, 0, 2);
        concern.inactive.masks[0].zeroed = BitSet::new(3);
        let err =
            untangle(&exec, &data, &concern, &[1, 2], 0.0, 8, &mut |_| {}).expect_err("wrong size");
        assert!(matches!(err, TangleError::Masks(_)), "{err}");
    }

    /// A 3-input, 3-class linear classifier with known weights.
    fn linear_model() -> ModelIr {
        let mut g = Graph::new([3, 1, 1]);
        let flat = g.push("flatten", Op::Flatten, vec![0]);
        let weight = TensorData {
            shape: vec![3, 3],
            data: vec![1., 2., 3., 4., 5., 6., -2., -1., 0.],
        };
        let bias = Some(TensorData {
            shape: vec![3],
            data: vec![0.5, 1.0, 2.0],
        });
        g.output = g.push("fc", Op::Linear { weight, bias }, vec![flat]);
        ModelIr {
            meta: ModelMeta {
                arch: "linear".into(),
                class_names: vec!["a".into(), "b".into(), "c".into()],
                input_norm: InputNorm {
                    mean: vec![0.0; 3],
                    std: vec![1.0; 3],
                },
                source: "test".into(),
            },
            graph: g,
        }
    }

    #[test]
    fn binary_head_is_mine_against_the_mean_of_the_others() {
        let h = binary_head(&linear_model(), 1).expect("head");
        assert_eq!(h.input, 1);
        assert_eq!(h.weight.shape, vec![2, 3]);
        assert_eq!(h.weight.data, vec![4., 5., 6., -0.5, 0.5, 1.5]);
        assert_eq!(h.bias.data, vec![1.0, 1.25]);
    }

    #[test]
    fn bln_rules_pick_their_units() {
        let head = BinaryHead {
            input: 0,
            // mine: [1.0, 0.1, -1.0, 0.6]; other: [-1.0, 0.9, -1.0, -0.5]
            weight: TensorData {
                shape: vec![2, 4],
                data: vec![1.0, 0.1, -1.0, 0.6, -1.0, 0.9, -1.0, -0.5],
            },
            bias: TensorData {
                shape: vec![2],
                data: vec![0.0, 0.0],
            },
        };
        assert_eq!(bln_units(&head, BlnRule::Algorithm2, 0.5), vec![0, 3]);
        assert_eq!(bln_units(&head, BlnRule::OnlyOther, 0.5), vec![1]);
        assert!(bln_units(&head, BlnRule::Algorithm2, 2.0).is_empty());
    }

    /// `ci-ti-mc` keeps masks and head; `mc-bln` zeroes the chosen head inputs and records
    /// what they made dead; `mc-bln-bi` marks at least as much dead.
    #[test]
    fn variants_modularize_as_documented() {
        let (model, _, exec, sites) = setup();
        let untangled: Vec<NodeMask> = full_concern(&exec, &sites, 0, 1).inactive.masks;
        let head = binary_head(&model, 0).expect("head");
        let cfg = |variant, delta| DecompConfig {
            variant,
            bln_delta: delta,
            ..DecompConfig::default()
        };
        let (masks, dead, h) =
            modularize(&model, &untangled, head.clone(), &cfg(Variant::CiTiMc, 0.0)).expect("ci");
        assert_eq!((masks.len(), dead.len(), &h), (untangled.len(), 0, &head));
        let units = bln_units(&head, BlnRule::Algorithm2, 0.01);
        assert!(
            !units.is_empty(),
            "an untrained head has units to remove at delta 0.01"
        );
        let (_, dead, h) =
            modularize(&model, &[], head.clone(), &cfg(Variant::McBln, 0.01)).expect("bln");
        let f = head.weight.shape[1];
        for u in 0..f {
            let removed = units.contains(&u);
            assert_eq!(
                h.weight.data[u] == 0.0 && h.weight.data[f + u] == 0.0,
                removed,
                "unit {u}"
            );
        }
        let dead_bln: usize = dead.iter().map(|m| m.zeroed.count_ones()).sum();
        assert!(
            dead_bln >= units.len(),
            "{dead_bln} dead positions for {} removed units",
            units.len()
        );
        let (_, dead_bi, _) =
            modularize(&model, &[], head, &cfg(Variant::McBlnBi, 0.01)).expect("bi");
        assert!(dead_bi.iter().map(|m| m.zeroed.count_ones()).sum::<usize>() >= dead_bln);
    }

    /// Statistics are computed for the classes that lack them only, on each class's seeded
    /// sample, and their time is added.
    #[test]
    fn channel_untangle_set_fills_what_is_missing() {
        let (model, data, exec, sites) = setup();
        let cfg = DecompConfig {
            positive_filter: PositiveFilter::All,
            mask_site: MaskSite::ReluInput,
            ..DecompConfig::default()
        };
        let stats = |images: &[usize]| {
            channel_untangle(&exec, &data, &sites, images, 4, &mut |_| {}).expect("stats")
        };
        let kept = decomp_ir::UnconcernedStats {
            images: vec![0],
            per_class: 1,
            stats: stats(&[0]),
        };
        let class = |class: usize, unconcerned| ClassChannels {
            class,
            positives: vec![0, 1, 2, 3],
            concerned: stats(&[1]),
            unconcerned,
        };
        let mut set = ChannelConcernSet {
            model_hash: model.content_hash(),
            model_path: "m".into(),
            dataset: "d".into(),
            config: cfg,
            sites: sites.clone(),
            classes: vec![class(0, None), class(2, Some(kept.clone()))],
            seconds: 1.0,
            tangle_seconds: 2.0,
        };
        let mut seen = Vec::new();
        channel_untangle_set(&exec, &data, &mut set, 4, &mut |c, n| seen.push((c, n)))
            .expect("untangle");
        let (sample, per_class) = unconcerned_sample(&data, 0, 4, 0);
        let u = set.classes[0].unconcerned.as_ref().expect("filled");
        assert_eq!((&u.images, u.per_class), (&sample, per_class));
        assert_eq!(u.stats, stats(&sample));
        assert_eq!(
            set.classes[1].unconcerned.as_ref(),
            Some(&kept),
            "present statistics are kept"
        );
        assert!(
            seen.iter().all(|&(c, _)| c == 0)
                && seen.iter().map(|s| s.1).sum::<usize>() == sample.len()
        );
        assert!(set.tangle_seconds > 2.0);
    }
}
