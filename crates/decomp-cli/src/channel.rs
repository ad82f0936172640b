//! Channel-level decomposition in the CLI: `concern`/`tangle`/`decompose --granularity
//! channel`, composing channel modules, and inspecting them.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use decomp_compose::{compose_channel, union_cost};
use decomp_data::Dataset;
use decomp_eval::Accumulator;
use decomp_ir::analysis::Cost;
use decomp_ir::{ActivationRate, ArtifactKind, ChannelConcernSet, ChannelConfig, ChannelModule, ClassChannels, Compensation, DecompConfig, ModelIr, UnconcernedStats, Variant, encode_artifact};
use crate::files::{read_artifact, write_artifact, write_atomic};
use decomp_model::{Executor, parse_device};
use serde::Serialize;

use crate::decompose::{RunArgs, bar, training_data};
use crate::eval::open_dataset;
use crate::{DataArgs, ModelArgs};

/// Granularity of decomposition and the channel-level choices (issue 6; definitions in
/// `decomp_ir::ChannelConfig`).
#[derive(clap::Args, Clone, Debug)]
pub struct ChannelArgs {
    /// `element`: the paper's masks over positions (modules keep the whole model);
    /// `channel`: keep or remove whole channels and write physically small modules.
    #[arg(long, default_value = "element")]
    pub granularity: String,
    /// Channel level: keep a channel whose activation rate on the concerned images is >= tau
    /// (and > 0; 0 keeps every channel that is ever active).
    #[arg(long, default_value_t = 0.0, value_parser = crate::flags::finite_f32)]
    pub tau: f32,
    /// Channel level: bring back a channel whose rate on the unconcerned sample is >= this
    /// (and > 0); above 1 brings back nothing.
    #[arg(long, default_value_t = 0.0, value_parser = crate::flags::finite_f32)]
    pub tau_neg: f32,
    /// Channel level: `mean-positions` (fraction of positions > 0, averaged over images),
    /// `any-position` (fraction of images with any position > 0) or `deviation` (standard
    /// deviation of the post-ReLU output relative to the largest at its site).
    #[arg(long, default_value = "mean-positions")]
    pub rate: String,
    /// Channel level: what a removed channel outputs after its ReLU: `off` (zero),
    /// `concerned` (its mean on the concerned images) or `sample` (its mean on the concerned
    /// and unconcerned images), folded exactly into the next layer.
    #[arg(long, default_value = "sample")]
    pub compensation: String,
    /// Channel level: select channels by first-order importance for the module's margin
    /// (per FLOP saved) until the module has at most this fraction of the model's FLOPs,
    /// instead of the rate thresholds (`--tau`, `--tau-neg`, `--rate` are then unused).
    #[arg(long, value_parser = crate::flags::finite_f32)]
    pub budget: Option<f32>,
    /// Channel level: refit the convolutions of the pruned module by closed-form least
    /// squares so that it reproduces the model's own pre-activations on the module's sample
    /// (no labels, no gradient steps; the binary head is the model's).
    #[arg(long)]
    pub reconstruct: bool,
    /// Channel level, with `--reconstruct`: least-squares passes per convolution. 1 = plain
    /// least squares; each further pass is ReLU-aware (where the model's pre-activation is
    /// <= 0, any prediction <= 0 is as good, so the target becomes min(prediction, 0)).
    #[arg(long, default_value_t = 3)]
    pub relu_passes: u32,
    /// Channel level, TRAINING: fit the module's binary head (closed-form least squares) so
    /// that its margin reproduces the model's on the module's sample. Off by default.
    #[arg(long)]
    pub fit_head: bool,
    /// Channel level: images of the module's sample (half concerned, half unconcerned) that
    /// `--budget` and `--reconstruct` look at.
    #[arg(long, default_value_t = 512)]
    pub fit_images: usize,
}

impl ChannelArgs {
    /// The channel configuration, or `None` for element granularity.
    pub fn config(&self) -> Result<Option<ChannelConfig>> {
        match self.granularity.as_str() {
            "element" => {
                let set: Vec<&str> = [
                    ("--tau", self.tau != 0.0),
                    ("--tau-neg", self.tau_neg != 0.0),
                    ("--rate", self.rate != "mean-positions"),
                    ("--compensation", self.compensation != "sample"),
                    ("--budget", self.budget.is_some()),
                    ("--reconstruct", self.reconstruct),
                    ("--relu-passes", self.relu_passes != 3),
                    ("--fit-head", self.fit_head),
                    ("--fit-images", self.fit_images != 512),
                ]
                .into_iter()
                .filter_map(|(flag, given)| given.then_some(flag))
                .collect();
                if !set.is_empty() {
                    bail!("{} apply to --granularity channel only (this run is element-level)", set.join(", "));
                }
                return Ok(None);
            }
            "channel" => {}
            g => bail!("--granularity {g:?}: expected element or channel"),
        }
        let rate = ActivationRate::parse(&self.rate).with_context(|| {
            format!(
                "--rate {:?}: expected mean-positions, any-position or deviation",
                self.rate
            )
        })?;
        let compensation = Compensation::parse(&self.compensation).with_context(|| {
            format!(
                "--compensation {:?}: expected off, concerned or sample",
                self.compensation
            )
        })?;
        for (name, v) in [("--tau", self.tau), ("--tau-neg", self.tau_neg)] {
            if !v.is_finite() || v < 0.0 {
                bail!("{name} {v}: expected a rate >= 0");
            }
        }
        if let Some(b) = self.budget
            && !(b > 0.0 && b <= 1.0)
        {
            bail!("--budget {b}: expected a fraction of the model's FLOPs in (0, 1]");
        }
        if (self.budget.is_some() || self.reconstruct || self.fit_head) && self.fit_images < 2 {
            bail!("--fit-images {}: expected at least 2", self.fit_images);
        }
        if !(1..=16).contains(&self.relu_passes) {
            bail!("--relu-passes {}: expected 1 to 16", self.relu_passes);
        }
        Ok(Some(ChannelConfig {
            tau: self.tau,
            tau_neg: self.tau_neg,
            rate,
            compensation,
            budget: self.budget,
            reconstruct: self.reconstruct,
            relu_passes: self.relu_passes,
            fit_head: self.fit_head,
            fit_images: self.fit_images,
        }))
    }
}

/// Channel-level concern identification: statistics of every class's positives.
pub fn run_concern(
    model: &ModelIr,
    model_path: &str,
    train: &Dataset,
    cfg: &DecompConfig,
    run: &RunArgs,
    dataset: &str,
) -> Result<ChannelConcernSet> {
    if cfg.mask_site != decomp_ir::MaskSite::ReluInput {
        bail!(
            "--granularity channel records statistics at ReLU inputs only (--mask-site relu-input)"
        );
    }
    let device = parse_device(&run.device)?;
    let exec = Executor::new(model, &device)?;
    let classes = run.class_list(model)?;
    let start = Instant::now();
    let b = bar(
        (classes.len() * cfg.positives_per_class) as u64,
        "concern".into(),
    );
    let (sites, per_class) = decomp_concern::identify_channels(
        &exec,
        model,
        train,
        cfg,
        &classes,
        run.batch_size,
        &mut |c, n| {
            b.set_message(format!("class {c}"));
            b.inc(n as u64)
        },
    )?;
    b.finish_and_clear();
    Ok(ChannelConcernSet {
        model_hash: model.content_hash(),
        model_path: model_path.to_string(),
        dataset: dataset.to_string(),
        config: cfg.clone(),
        sites,
        classes: per_class
            .into_iter()
            .map(|(class, positives, concerned)| ClassChannels {
                class,
                positives,
                concerned,
                unconcerned: None,
            })
            .collect(),
        seconds: start.elapsed().as_secs_f64(),
        tangle_seconds: 0.0,
    })
}

pub fn concern(
    model: &ModelArgs,
    data: &DataArgs,
    cfg: &DecompConfig,
    run: &RunArgs,
    out: &Path,
) -> Result<()> {
    let m = crate::model_source::load_model(model)?;
    let train = training_data(data, &m)?;
    let set = run_concern(&m, &model.weights, &train, cfg, run, &data.dataset)?;
    write_artifact(out, &set)?;
    eprintln!(
        "channel concern set for {} classes in {:.1} s: {}",
        set.classes.len(),
        set.seconds,
        out.display()
    );
    Ok(())
}

/// Fills in the unconcerned statistics of every class that lacks them (one pass over each
/// class's unconcerned sample); returns whether anything was computed.
fn untangle(
    model: &ModelIr,
    train: &Dataset,
    set: &mut ChannelConcernSet,
    run: &RunArgs,
) -> Result<bool> {
    let todo: Vec<usize> = (0..set.classes.len())
        .filter(|&i| set.classes[i].unconcerned.is_none())
        .collect();
    if todo.is_empty() {
        return Ok(false);
    }
    let device = parse_device(&run.device)?;
    let exec = Executor::new(model, &device)?;
    let start = Instant::now();
    let total: usize = todo.iter().map(|&i| set.classes[i].positives.len()).sum();
    let b = bar(total as u64, "tangle".into());
    for i in todo {
        let c = &mut set.classes[i];
        let (images, per_class) =
            decomp_tangle::unconcerned_sample(train, c.class, c.positives.len(), set.config.seed);
        b.set_message(format!("class {}", c.class));
        let stats = decomp_tangle::channel_untangle(
            &exec,
            train,
            &set.sites,
            &images,
            run.batch_size,
            &mut |n| b.inc(n as u64),
        )?;
        c.unconcerned = Some(UnconcernedStats {
            images,
            per_class,
            stats,
        });
    }
    b.finish_and_clear();
    set.tangle_seconds += start.elapsed().as_secs_f64();
    Ok(true)
}

/// What channel-level `tangle` / `decompose` print and write as `summary.json`.
#[derive(Serialize)]
struct ChannelSummary {
    model: String,
    model_hash: String,
    concern_seconds: f64,
    tangle_seconds: f64,
    /// Seconds of thresholding and extraction for all modules.
    extract_seconds: f64,
    rates: String,
    channel: ChannelConfig,
    model_cost: Cost,
    modules: Vec<String>,
    /// Per module: FLOPs and parameters as % of the model's.
    flops_percent: Vec<f64>,
    params_percent: Vec<f64>,
    mean_flops_percent: f64,
    mean_params_percent: f64,
}

fn pct(a: u64, b: u64) -> f64 {
    100.0 * a as f64 / b.max(1) as f64
}

/// Thresholds the statistics and writes one physical module per class into `out_dir`.
fn write_modules(
    model: &ModelIr,
    set: &ChannelConcernSet,
    ccfg: &ChannelConfig,
    out_dir: &Path,
    rates: &Path,
    fit: Option<&decomp_tangle::FitData<'_>>,
) -> Result<()> {
    let start = Instant::now();
    let cfg = DecompConfig {
        variant: Variant::CiTiMc,
        ..set.config.clone()
    };
    let origin = decomp_tangle::ModuleOrigin {
        model_hash: &set.model_hash,
        model_path: &set.model_path,
        provenance: format!(
            "decomp {} ; dataset {} ; channel statistics {} ; concern {:.1} s, tangle {:.1} s",
            env!("CARGO_PKG_VERSION"),
            set.dataset,
            rates.display(),
            set.seconds,
            set.tangle_seconds
        ),
    };
    let mut modules = Vec::new();
    let (mut fp, mut pp) = (Vec::new(), Vec::new());
    let mut model_cost = Cost::default();
    for c in &set.classes {
        let m = decomp_tangle::build_channel_module(model, c, &cfg, ccfg, &origin, fit)
            .with_context(|| format!("class {}", c.class))?;
        let path = out_dir.join(format!("module_{:03}.mod", c.class));
        write_artifact(&path, &m)?;
        fp.push(pct(m.cost.flops, m.model_cost.flops));
        pp.push(pct(m.cost.params, m.model_cost.params));
        model_cost = m.model_cost;
        modules.push(path.display().to_string());
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let s = ChannelSummary {
        model: set.model_path.clone(),
        model_hash: set.model_hash.clone(),
        concern_seconds: set.seconds,
        tangle_seconds: set.tangle_seconds,
        extract_seconds: start.elapsed().as_secs_f64(),
        rates: rates.display().to_string(),
        channel: ccfg.clone(),
        model_cost,
        modules,
        mean_flops_percent: mean(&fp),
        mean_params_percent: mean(&pp),
        flops_percent: fp,
        params_percent: pp,
    };
    write_atomic(
        &out_dir.join("summary.json"),
        serde_json::to_string_pretty(&s)?.as_bytes(),
    )?;
    outln!("{}", serde_json::to_string(&s)?);
    Ok(())
}

/// `tangle --granularity channel`: unconcerned statistics where missing (written, with the
/// concerned ones, to `<out-dir>/channel-rates.ccs` for reuse by a threshold sweep), then
/// the modules (of `--classes` only, when given).
pub fn tangle(
    model: &ModelArgs,
    data: &DataArgs,
    concern: &Path,
    ccfg: &ChannelConfig,
    run: &RunArgs,
    out_dir: &Path,
) -> Result<()> {
    let m = crate::model_source::load_model(model)?;
    let mut set: ChannelConcernSet = read_artifact(concern)
        .with_context(|| format!("reading channel concern set {}", concern.display()))?;
    let hash = m.content_hash();
    if hash != set.model_hash {
        bail!(
            "{}: channel concern set was computed for model {} ({}), --weights is {hash}",
            concern.display(),
            set.model_path,
            set.model_hash
        );
    }
    if set.classes.is_empty() {
        bail!("{}: the channel concern set holds no class", concern.display());
    }
    if let Some(c) = set.classes.iter().find(|c| c.class >= m.num_classes()) {
        bail!("{}: class {} is beyond the model's {} classes", concern.display(), c.class, m.num_classes());
    }
    if let Some(want) = run.classes_of_set(&m)? {
        if let Some(c) = want
            .iter()
            .find(|&&c| !set.classes.iter().any(|k| k.class == c))
        {
            bail!(
                "--classes {c}: the channel concern set {} has no class {c}",
                concern.display()
            );
        }
        set.classes.retain(|k| want.contains(&k.class));
    }
    crate::files::claim_out_dir(out_dir, &hash, &stamp_config(&set.config, ccfg), run.force)?;
    let rates = out_dir.join("channel-rates.ccs");
    let needs_data = ccfg.budget.is_some() || ccfg.reconstruct || ccfg.fit_head;
    let missing = set.classes.iter().any(|c| c.unconcerned.is_none());
    let train = if missing || needs_data {
        Some(training_data(data, &m)?)
    } else {
        None
    };
    let rates = match &train {
        Some(train) if missing => {
            untangle(&m, train, &mut set, run)?;
            write_artifact(&rates, &set)?;
            rates
        }
        _ => concern.to_path_buf(),
    };
    let device = parse_device(&run.device)?;
    let fit = train.as_ref().map(|train| decomp_tangle::FitData {
        train,
        device: &device,
        batch_size: run.batch_size,
    });
    write_modules(&m, &set, ccfg, out_dir, &rates, fit.as_ref())
}

/// `decompose --granularity channel`: concern and tangling statistics (one pass each, kept
/// in `<out-dir>/channel-rates.ccs`), then the modules.
pub fn decompose(
    model: &ModelArgs,
    data: &DataArgs,
    cfg: &DecompConfig,
    ccfg: &ChannelConfig,
    run: &RunArgs,
    out_dir: &Path,
) -> Result<()> {
    let m = crate::model_source::load_model(model)?;
    let train = training_data(data, &m)?;
    crate::files::claim_out_dir(out_dir, &m.content_hash(), &stamp_config(cfg, ccfg), run.force)?;
    let mut set = run_concern(&m, &model.weights, &train, cfg, run, &data.dataset)?;
    untangle(&m, &train, &mut set, run)?;
    let rates = out_dir.join("channel-rates.ccs");
    write_artifact(&rates, &set)?;
    let device = parse_device(&run.device)?;
    let fit = decomp_tangle::FitData {
        train: &train,
        device: &device,
        batch_size: run.batch_size,
    };
    write_modules(&m, &set, ccfg, out_dir, &rates, Some(&fit))
}

/// The configuration a channel output folder's run stamp records.
fn stamp_config(cfg: &DecompConfig, ccfg: &ChannelConfig) -> String {
    format!("{:?} ; {ccfg:?}", DecompConfig { variant: Variant::CiTiMc, ..cfg.clone() })
}

/// Kind of an artifact file, read from its header alone.
pub fn artifact_kind(path: &Path) -> Result<Option<ArtifactKind>> {
    Ok(decomp_ir::artifact::peek_kind(path)?)
}

/// One module's line of the channel compose report.
#[derive(Serialize)]
struct ModuleReport {
    path: String,
    class: usize,
    class_name: String,
    cost: Cost,
    flops_percent: f64,
    params_percent: f64,
    /// Size of the module file.
    bytes: u64,
    /// Forward-pass seconds over all images, and relative to the reference model's.
    seconds: f64,
    time_ratio: Option<f64>,
    kept_channels: usize,
    total_channels: usize,
}

#[derive(Serialize)]
struct ChannelComposeOutput {
    granularity: &'static str,
    classes: Vec<String>,
    config: DecompConfig,
    channel: ChannelConfig,
    n: usize,
    composed_top1: f64,
    composed_top5: f64,
    composed_per_class: Vec<f64>,
    model_top1: Option<f64>,
    model_top5: Option<f64>,
    model_cost: Cost,
    /// Size of the reference model as a `.ir` artifact.
    model_bytes: Option<u64>,
    model_seconds: Option<f64>,
    per_module: Vec<ModuleReport>,
    mean_flops_percent: f64,
    mean_params_percent: f64,
    mean_bytes: f64,
    mean_time_ratio: Option<f64>,
    /// How the modules ran: separate passes, and the FLOPs of the alternative (one pass over
    /// the union of their channels, branching per module after the shared stem).
    passes: &'static str,
    separate_flops: u64,
    union_flops: Option<u64>,
    seconds: f64,
}

/// Arguments of `compose` the channel path needs.
pub struct ComposeInputs<'a> {
    pub modules: &'a [PathBuf],
    pub data: &'a DataArgs,
    pub classes: Option<&'a [String]>,
    pub batch_size: usize,
    pub device: &'a str,
    pub reference: Option<&'a str>,
    pub json: bool,
    pub out: Option<&'a Path>,
    /// Margins of every module on every image, for `decomp vote`.
    pub save_margins: Option<&'a Path>,
    /// `--naive`: refused (channel modules always run as separate passes).
    pub naive: bool,
}

/// `compose` of channel modules: each runs as its own small graph; voting as before.
pub fn compose(a: ComposeInputs<'_>) -> Result<()> {
    if a.naive {
        bail!(
            "--naive applies to element modules (one pass per module instead of one batched pass); channel modules always run as separate passes"
        );
    }
    let mut modules = Vec::with_capacity(a.modules.len());
    for p in a.modules {
        if artifact_kind(p)? != Some(ArtifactKind::ChannelModule) {
            bail!(
                "{}: not a channel module; channel and element modules cannot be composed together",
                p.display()
            );
        }
        let m: ChannelModule =
            read_artifact(p).with_context(|| format!("reading module {}", p.display()))?;
        modules.push(m);
    }
    for (p, m) in a.modules.iter().zip(&modules) {
        if m.module.meta.input_norm != modules[0].module.meta.input_norm {
            bail!(
                "{}: input normalization differs from {}'s",
                p.display(),
                a.modules[0].display()
            );
        }
    }
    let reference = match a.reference {
        Some(w) => {
            let m = crate::model_source::load_model(&ModelArgs {
                arch: None,
                weights: w.to_string(),
                cache_dir: None,
                onnx: Default::default(),
            })?;
            let h = m.content_hash();
            if let Some((p, _)) = a
                .modules
                .iter()
                .zip(&modules)
                .find(|(_, x)| x.model_hash != h)
            {
                bail!(
                    "{}: module comes from model {}, --reference-model {w} is {h}",
                    p.display(),
                    modules[0].model_hash
                );
            }
            Some(m)
        }
        None => None,
    };
    let full = open_dataset(a.data, &modules[0].module)?;
    let own: Vec<(usize, &str)> = modules.iter().map(|m| (m.class, m.class_name.as_str())).collect();
    let classes = crate::decompose::module_classes(a.classes, &own, a.modules, &full, a.data)?;
    let identity =
        classes.len() == full.num_classes() && classes.iter().enumerate().all(|(i, &c)| i == c);
    let data = if identity {
        full
    } else {
        full.subset_classes(&classes)?
    };
    if data.is_empty() {
        bail!("{}: no image of the modules' classes {classes:?}", crate::eval::describe_source(a.data));
    }
    let device = parse_device(a.device)?;
    let start = Instant::now();
    let b = bar(data.len() as u64, format!("compose {}", modules.len()));
    let reference_ok = reference
        .as_ref()
        .filter(|m| m.num_classes() == modules.len() && identity);
    let r = compose_channel(
        &modules,
        &data,
        &device,
        a.batch_size,
        modules[0].config.top5_ranking,
        reference_ok,
        &mut |n| b.inc(n as u64),
    )?;
    b.finish_and_clear();
    let seconds = start.elapsed().as_secs_f64();
    let k = modules.len();
    let mut acc = Accumulator::new(k);
    for (&l, &rank) in r.run.labels.iter().zip(&r.run.label_rank) {
        acc.add_rank(l, rank)?;
    }
    let composed = acc.finish();
    let model_acc = r.run.model_rank.as_ref().map(|ranks| {
        let mut acc = Accumulator::new(k);
        for (&l, &rank) in r.run.labels.iter().zip(ranks) {
            acc.add_rank(l, rank).expect("labels checked above");
        }
        acc.finish()
    });
    let model_cost = modules[0].model_cost;
    let per_module: Vec<ModuleReport> = modules
        .iter()
        .zip(a.modules)
        .zip(&r.module_seconds)
        .map(|((m, p), &s)| {
            let (kept, total) = m.plan.kept_channels();
            ModuleReport {
                path: p.display().to_string(),
                class: m.class,
                class_name: m.class_name.clone(),
                cost: m.cost,
                flops_percent: pct(m.cost.flops, m.model_cost.flops),
                params_percent: pct(m.cost.params, m.model_cost.params),
                bytes: std::fs::metadata(p).map_or(0, |x| x.len()),
                seconds: s,
                time_ratio: r.model_seconds.map(|t| s / t),
                kept_channels: kept,
                total_channels: total,
            }
        })
        .collect();
    let mean = |f: &dyn Fn(&ModuleReport) -> f64| per_module.iter().map(f).sum::<f64>() / k as f64;
    let union = match &reference {
        Some(m)
            if modules
                .iter()
                .all(|x| x.model_hash == modules[0].model_hash) =>
        {
            Some(union_cost(m, &modules)?.flops)
        }
        _ => None,
    };
    let out = ChannelComposeOutput {
        granularity: "channel",
        classes: modules.iter().map(|m| m.class_name.clone()).collect(),
        config: modules[0].config.clone(),
        channel: modules[0].channel.clone(),
        n: composed.n,
        composed_top1: composed.top1,
        composed_top5: composed.top5,
        composed_per_class: composed.per_class.clone(),
        model_top1: model_acc.as_ref().map(|m| m.top1),
        model_top5: model_acc.as_ref().map(|m| m.top5),
        model_cost,
        model_bytes: reference
            .as_ref()
            .map(|m| encode_artifact(m).map_or(0, |(b, _)| b.len() as u64)),
        model_seconds: r.model_seconds,
        mean_flops_percent: mean(&|m| m.flops_percent),
        mean_params_percent: mean(&|m| m.params_percent),
        mean_bytes: mean(&|m| m.bytes as f64),
        mean_time_ratio: r
            .model_seconds
            .map(|_| mean(&|m| m.time_ratio.unwrap_or(f64::NAN))),
        passes: "separate",
        separate_flops: modules.iter().map(|m| m.cost.flops).sum(),
        union_flops: union,
        per_module,
        seconds,
    };
    if let Some(p) = a.save_margins {
        let columns = modules
            .iter()
            .zip(a.modules)
            .map(|(m, p)| crate::vote::MarginModule::new(p, m.class, &m.class_name, &m.model_hash));
        crate::vote::save_margins(
            p,
            crate::vote::image_set(a.data, &classes),
            data.class_names(),
            columns.collect(),
            &r.run,
            model_acc.as_ref(),
            seconds,
        )?;
    }
    let text = serde_json::to_string(&out)?;
    if let Some(p) = a.out {
        write_atomic(p, text.as_bytes())?;
    }
    if a.json {
        outln!("{text}");
    } else {
        outln!(
            "{k} channel modules on {} images ({seconds:.1} s, separate passes)",
            out.n
        );
        if let (Some(t1), Some(t5)) = (out.model_top1, out.model_top5) {
            outln!("model     top-1 {t1:.2}%  top-5 {t5:.2}%");
        }
        outln!(
            "composed  top-1 {:.2}%  top-5 {:.2}%",
            out.composed_top1, out.composed_top5
        );
        outln!(
            "mean module FLOPs {:.1}% of the model, parameters {:.1}%, file {:.0} bytes",
            out.mean_flops_percent, out.mean_params_percent, out.mean_bytes
        );
        if let Some(t) = out.mean_time_ratio {
            outln!("mean module time {:.2}x the model's", t);
        }
    }
    Ok(())
}

/// `inspect` of channel artifacts; `false` when `path` is neither kind.
pub fn inspect(path: &Path) -> Result<bool> {
    match artifact_kind(path)? {
        Some(ArtifactKind::ChannelModule) => {
            let m: ChannelModule = read_artifact(path)?;
            outln!(
                "channel module of class {} ({}) from {} ({})",
                m.class, m.class_name, m.model_path, m.model_hash
            );
            outln!("config: {:?}", m.config);
            outln!("channel: {:?}", m.channel);
            outln!("samples: {:?}", m.counts);
            outln!("provenance: {}", m.provenance);
            let (kept, total) = m.plan.kept_channels();
            outln!("channels kept: {kept} of {total}");
            for g in &m.plan.groups {
                let names: Vec<String> = g.sites.iter().map(|s| s.to_string()).collect();
                outln!(
                    "  sites [{}]: {} of {} channels",
                    names.join(", "),
                    g.kept.count_ones(),
                    g.kept.len()
                );
            }
            outln!(
                "parameters: {} ({:.1}% of the model's {})",
                m.cost.params,
                pct(m.cost.params, m.model_cost.params),
                m.model_cost.params
            );
            outln!(
                "FLOPs: {} ({:.1}% of the model's {})",
                m.cost.flops,
                pct(m.cost.flops, m.model_cost.flops),
                m.model_cost.flops
            );
            outln!(
                "MACs: {} ({:.1}%)",
                m.cost.macs,
                pct(m.cost.macs, m.model_cost.macs)
            );
            outln!("bytes on disk: {}", std::fs::metadata(path)?.len());
            Ok(true)
        }
        Some(ArtifactKind::ChannelConcernSet) => {
            let s: ChannelConcernSet = read_artifact(path)?;
            outln!(
                "channel concern set of {} ({}) on {}",
                s.model_path, s.model_hash, s.dataset
            );
            outln!("config: {:?}", s.config);
            outln!(
                "sites: {:?}; concern {:.1} s, tangle {:.1} s",
                s.sites, s.seconds, s.tangle_seconds
            );
            for c in &s.classes {
                let mean_rate = |st: &decomp_ir::ChannelStats| {
                    let v: Vec<f32> = st
                        .sites
                        .iter()
                        .flat_map(|x| x.frac_active.iter().copied())
                        .collect();
                    v.iter().sum::<f32>() / v.len().max(1) as f32
                };
                let neg =
                    c.unconcerned
                        .as_ref()
                        .map_or("no unconcerned statistics".to_string(), |u| {
                            format!(
                                "{} unconcerned, mean rate {:.3}",
                                u.images.len(),
                                mean_rate(&u.stats)
                            )
                        });
                outln!(
                    "class {:3}: {} positives, mean rate {:.3}; {neg}",
                    c.class,
                    c.positives.len(),
                    mean_rate(&c.concerned)
                );
            }
            Ok(true)
        }
        _ => Ok(false),
    }
}
