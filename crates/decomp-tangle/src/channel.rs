//! Channel-level tangling identification and modularization: statistics of the
//! unconcerned sample ([`channel_untangle`]), the thresholds ([`channel_plan`]) and the
//! physically small module ([`build_channel_module`]).

use std::time::Instant;

use decomp_data::Dataset;
use decomp_ir::channel::{ChannelGroup, ChannelPlan, channel_spaces, extract};
use decomp_ir::{
    BitSet, ChannelConcernSet, ChannelConfig, ChannelModule, ChannelStats, ClassChannels,
    Compensation, DecompConfig, ModelIr, NodeId, SampleCounts, UnconcernedStats, analysis,
};
use decomp_model::{ChannelAccumulator, Executor, ExecutorSource, Probe};

use crate::fit::{FitJob, budget_plan, fit_head, reconstruct};

use crate::{ModuleOrigin, TangleError, binary_head, unconcerned_sample};

/// Channel statistics at `sites` of the images `unconcerned` (indices into `train`).
pub fn channel_untangle(
    exec: &Executor,
    train: &Dataset,
    sites: &[NodeId],
    unconcerned: &[usize],
    batch_size: usize,
    progress: &mut dyn FnMut(usize),
) -> Result<ChannelStats, TangleError> {
    let mut acc = ChannelAccumulator::new(sites, exec.shapes());
    let view = train.select(unconcerned)?;
    for batch in view.batches(batch_size.max(1)) {
        let b = batch?;
        let n = b.labels.len();
        let out = exec.forward_probe(
            exec.input_tensor(b.images, n)?,
            &Probe {
                capture: sites,
                masks: None,
            },
        )?;
        acc.add(&out.captured, None);
        progress(n);
    }
    Ok(acc.finish())
}

/// Fills in the unconcerned statistics of every class of `set` that lacks them: one
/// [`channel_untangle`] pass over each such class's seeded unconcerned sample of `train`
/// ([`unconcerned_sample`] with the set's seed), its seconds added to `set.tangle_seconds`.
/// `progress(class, images)` is called after every batch.
pub fn channel_untangle_set(
    exec: &Executor,
    train: &Dataset,
    set: &mut ChannelConcernSet,
    batch_size: usize,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(), TangleError> {
    let start = Instant::now();
    let seed = set.config.seed;
    for c in set.classes.iter_mut().filter(|c| c.unconcerned.is_none()) {
        let class = c.class;
        let (images, per_class) = unconcerned_sample(train, class, c.positives.len(), seed);
        let stats = channel_untangle(exec, train, &set.sites, &images, batch_size, &mut |n| {
            progress(class, n)
        })?;
        c.unconcerned = Some(UnconcernedStats {
            images,
            per_class,
            stats,
        });
    }
    set.tangle_seconds += start.elapsed().as_secs_f64();
    Ok(())
}

/// The channels a module keeps: per site, a channel is kept when its concerned rate is
/// `>= tau` (and `> 0`), or brought back when its unconcerned rate is `>= tau_neg` (and
/// `> 0`); a channel space (a residual stream joins several sites) keeps the union over its
/// sites, and at least its most active channel. Removed channels are held at their mean
/// post-ReLU activation per `cfg.compensation`.
pub fn channel_plan(
    model: &ModelIr,
    concerned: &ChannelStats,
    unconcerned: Option<&ChannelStats>,
    cfg: &ChannelConfig,
) -> Result<ChannelPlan, TangleError> {
    let shapes = model.check()?;
    let spaces = channel_spaces(&model.graph, &shapes)?;
    let missing = |what: &str, node: NodeId| {
        TangleError::Masks(format!("{what} statistics lack mask site {node}"))
    };
    let mut groups = Vec::new();
    for s in spaces.prunable() {
        let sp = &spaces.spaces[s];
        let mut kept = BitSet::new(sp.channels);
        let mut best = (f32::NEG_INFINITY, 0usize);
        let mut fill = Vec::with_capacity(sp.sites.len());
        for &site in &sp.sites {
            let pos = concerned
                .site(site)
                .ok_or_else(|| missing("concerned", site))?;
            let neg = match unconcerned {
                Some(u) => Some(u.site(site).ok_or_else(|| missing("unconcerned", site))?),
                None => None,
            };
            if pos.any_active.len() != sp.channels {
                return Err(TangleError::Masks(format!(
                    "site {site}: {} channel statistics, the node has {} channels",
                    pos.any_active.len(),
                    sp.channels
                )));
            }
            let rn = neg.map(|n| n.rate(cfg.rate));
            for (c, &r) in pos.rate(cfg.rate).iter().enumerate() {
                let keep_pos = r > 0.0 && r >= cfg.tau;
                let keep_neg = rn
                    .as_ref()
                    .is_some_and(|n| n[c] > 0.0 && n[c] >= cfg.tau_neg);
                if keep_pos || keep_neg {
                    kept.set(c, true);
                }
                if r > best.0 {
                    best = (r, c);
                }
            }
            let (np, nn) = (
                concerned.images as f32,
                unconcerned.map_or(0, |u| u.images) as f32,
            );
            fill.push(
                (0..sp.channels)
                    .map(|c| match (cfg.compensation, neg) {
                        (Compensation::Off, _) => 0.0,
                        (Compensation::Concerned, _) | (Compensation::Sample, None) => {
                            pos.mean_relu[c]
                        }
                        (Compensation::Sample, Some(n)) => {
                            (pos.mean_relu[c] * np + n.mean_relu[c] * nn) / (np + nn).max(1.0)
                        }
                    })
                    .collect(),
            );
        }
        if kept.count_ones() == 0 {
            kept.set(best.1, true);
        }
        groups.push(ChannelGroup {
            sites: sp.sites.clone(),
            kept,
            fill,
        });
    }
    Ok(ChannelPlan { groups })
}

/// The training data budget selection and reconstruction read (the split the concern
/// statistics came from), and where to run them: a [`decomp_model::Runtime`], or a plain
/// device with the default engine configuration.
pub struct FitData<'a> {
    pub train: &'a Dataset,
    pub device: &'a dyn ExecutorSource,
    pub batch_size: usize,
}

/// The module's sample for budget selection and reconstruction: up to `n / 2` positives
/// and `n - n / 2` unconcerned images, evenly spaced over both lists.
fn fit_sample(concern: &ClassChannels, n: usize, train: &Dataset) -> Result<Dataset, TangleError> {
    fn spaced(v: &[usize], k: usize) -> impl Iterator<Item = usize> + '_ {
        let k = k.min(v.len());
        (0..k).map(move |i| v[i * v.len() / k])
    }
    let neg = concern
        .unconcerned
        .as_ref()
        .map_or(&[][..], |u| u.images.as_slice());
    let half = n / 2;
    let mut idx: Vec<usize> = spaced(&concern.positives, half).collect();
    idx.extend(spaced(neg, n - half));
    if idx.is_empty() {
        return Err(TangleError::Masks(format!(
            "class {}: no images to fit on",
            concern.class
        )));
    }
    Ok(train.select(&idx)?)
}

/// Assembles the channel module of `concern.class`: the CI+TI+MC binary head (no BLN) on
/// the graph extracted for [`channel_plan`]'s channels, or, with a budget, for
/// [`budget_plan`]'s; reconstructed by least squares when configured. Budget selection and
/// reconstruction need `fit`.
pub fn build_channel_module(
    model: &ModelIr,
    concern: &ClassChannels,
    cfg: &DecompConfig,
    channel: &ChannelConfig,
    origin: &ModuleOrigin<'_>,
    fit: Option<&FitData<'_>>,
) -> Result<ChannelModule, TangleError> {
    let mut plan = channel_plan(
        model,
        &concern.concerned,
        concern.unconcerned.as_ref().map(|u| &u.stats),
        channel,
    )?;
    let head = binary_head(model, concern.class)?;
    let needs_data = channel.budget.is_some() || channel.reconstruct || channel.fit_head;
    let sample = match (needs_data, fit) {
        (false, _) => None,
        (true, None) => {
            return Err(TangleError::Masks(
                "budget selection, reconstruction and head fitting need the training images".into(),
            ));
        }
        (true, Some(f)) => Some((f, fit_sample(concern, channel.fit_images, f.train)?)),
    };
    let start = std::time::Instant::now();
    let job = sample.as_ref().map(|(f, s)| FitJob {
        model,
        head: &head,
        class: concern.class,
        sample: s,
        batch_size: f.batch_size,
        device: f.device,
    });
    if let (Some(budget), Some(job)) = (channel.budget, &job) {
        for g in &mut plan.groups {
            g.kept = BitSet::full(g.kept.len());
        }
        plan = budget_plan(job, plan, budget)?;
    }
    let selected = start.elapsed().as_secs_f64();
    let source = match (&job, channel.reconstruct) {
        (Some(job), true) => {
            std::borrow::Cow::Owned(reconstruct(job, &plan, channel.relu_passes.max(1))?)
        }
        _ => std::borrow::Cow::Borrowed(model),
    };
    if needs_data {
        tracing::info!(
            class = concern.class,
            select_s = selected,
            reconstruct_s = start.elapsed().as_secs_f64() - selected,
            "channel module fitted"
        );
    }
    let mut module = extract(&source, &head, concern.class, &plan)?;
    if let (Some(job), true) = (&job, channel.fit_head) {
        fit_head(job, &mut module)?;
    }
    let shapes = module.check()?;
    let model_shapes = model.check()?;
    Ok(ChannelModule {
        class: concern.class,
        class_name: model
            .meta
            .class_names
            .get(concern.class)
            .cloned()
            .unwrap_or_default(),
        model_hash: origin.model_hash.to_string(),
        model_path: origin.model_path.to_string(),
        cost: analysis::cost(&module.graph, &shapes),
        model_cost: analysis::cost(&model.graph, &model_shapes),
        module,
        plan,
        config: cfg.clone(),
        channel: channel.clone(),
        counts: SampleCounts {
            positives: concern.positives.len(),
            unconcerned: concern.unconcerned.as_ref().map_or(0, |u| u.images.len()),
            unconcerned_per_class: concern.unconcerned.as_ref().map_or(0, |u| u.per_class),
        },
        provenance: origin.provenance.clone(),
        training: None,
    })
}
