//! `decomp concern`, `decomp tangle` and `decomp decompose`: each loads the model (and the
//! training images) once, then runs its element-level arm (the paper's masks) or its
//! channel-level arm (`--granularity channel`: physically small modules). The stage logic
//! lives in `decomp_concern` and `decomp_tangle`; here are the files and progress bars.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use decomp_concern::{ConcernRun, SetOrigin};
use decomp_data::Dataset;
use decomp_eval::report::{ChannelSummary, DecomposeSummary, mean, percent};
use decomp_ir::analysis::Cost;
use decomp_ir::{ChannelConcernSet, ChannelConfig, ConcernSet, DecompConfig, ModelIr, Variant};
use decomp_model::{Executor, ExecutorSource};

use crate::args::{ChannelArgs, ConfigArgs, DataArgs, ModelArgs, RunArgs, VariantArgs, runtime};
use crate::data::training_data;
use crate::files::{claim_out_dir, read_artifact, write_artifact, write_atomic};
use crate::progress::{bar, per_class};

#[derive(clap::Args)]
pub struct ConcernArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    data: DataArgs,
    #[command(flatten)]
    config: ConfigArgs,
    #[command(flatten)]
    run: RunArgs,
    #[command(flatten)]
    channel: ChannelArgs,
    /// Output concern-set artifact.
    #[arg(long)]
    out: PathBuf,
}

#[derive(clap::Args)]
pub struct TangleArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    data: DataArgs,
    /// Concern-set artifact from `decomp concern` (its configuration is reused).
    #[arg(long)]
    concern: PathBuf,
    #[command(flatten)]
    variants: VariantArgs,
    #[command(flatten)]
    run: RunArgs,
    #[command(flatten)]
    channel: ChannelArgs,
    /// Output folder: one `<variant>/module_<class>.mod` per class and variant.
    #[arg(long)]
    out_dir: PathBuf,
    /// Continuous learning (METHOD.md section 4): a file of CIFAR-format records (e.g. from
    /// `decomp mix`, any source dataset resized to the model's input) whose images are
    /// further unconcerned inputs of every class's tangling identification.
    #[arg(long)]
    extra_unconcerned: Option<PathBuf>,
    /// Labels of `--extra-unconcerned` to use (names or indices, comma-separated; default
    /// all).
    #[arg(long, value_delimiter = ',', requires = "extra_unconcerned")]
    extra_classes: Option<Vec<String>>,
    /// At most this many extra images (a seeded sample).
    #[arg(long, requires = "extra_unconcerned", value_parser = crate::flags::positive_usize)]
    extra_limit: Option<usize>,
}

#[derive(clap::Args)]
pub struct DecomposeArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    data: DataArgs,
    #[command(flatten)]
    config: ConfigArgs,
    #[command(flatten)]
    variants: VariantArgs,
    #[command(flatten)]
    run: RunArgs,
    #[command(flatten)]
    channel: ChannelArgs,
    /// Output folder: `concern.cs`, `<variant>/module_<class>.mod`, `summary.json` (channel
    /// level: `channel-rates.ccs`, `module_<class>.mod`, `summary.json`).
    #[arg(long)]
    out_dir: PathBuf,
}

/// Either concern set, as the concern stage produces it.
enum AnySet {
    Element(ConcernSet),
    Channel(ChannelConcernSet),
}

/// Concern identification (element level, or channel statistics with `channel`), with a
/// progress bar.
fn run_concern(run: &ConcernRun<'_>, origin: SetOrigin<'_>, channel: bool) -> Result<AnySet> {
    if channel && run.cfg.min_active_fraction > 0.0 {
        bail!(
            "--min-active-fraction applies to element masks; channel-level modules have their own rate thresholds (--tau, --tau-neg)"
        );
    }
    let b = bar(
        (run.classes.len() * run.cfg.positives_per_class) as u64,
        "concern".into(),
    );
    let mut progress = per_class(&b);
    let set = if channel {
        AnySet::Channel(run.channel_concern_set(origin, &mut progress)?)
    } else {
        AnySet::Element(run.concern_set(origin, &mut progress)?)
    };
    b.finish_and_clear();
    Ok(set)
}

pub fn concern(a: ConcernArgs) -> Result<()> {
    let model = crate::model_source::load_model(&a.model)?;
    let train = training_data(&a.data, &model)?;
    let cfg = a.config.config(Variant::McBln)?;
    let classes = a.run.class_list(&model)?;
    crate::files::check_output(&a.out)?;
    let channel = a.channel.config()?.is_some();
    let exec = runtime(&a.run.device)?.executor(&model)?;
    let run = ConcernRun {
        exec: &exec,
        model: &model,
        train: &train,
        cfg: &cfg,
        classes: &classes,
        batch_size: a.run.batch_size,
    };
    let origin = SetOrigin {
        model_path: &a.model.weights,
        dataset: &a.data.dataset,
    };
    match run_concern(&run, origin, channel)? {
        AnySet::Element(set) => {
            write_artifact(&a.out, &set)?;
            eprintln!(
                "concern set for {} classes in {:.1} s: {}",
                set.classes.len(),
                set.seconds,
                a.out.display()
            );
        }
        AnySet::Channel(set) => {
            write_artifact(&a.out, &set)?;
            eprintln!(
                "channel concern set for {} classes in {:.1} s: {}",
                set.classes.len(),
                set.seconds,
                a.out.display()
            );
        }
    }
    Ok(())
}

/// The configuration an output folder's run stamp records (the variant aside: each variant
/// has its own subfolder; channel level: with the channel configuration).
fn stamp_config(cfg: &DecompConfig, channel: Option<&ChannelConfig>) -> String {
    match channel {
        None => format!(
            "{:?}",
            DecompConfig {
                variant: Variant::McBln,
                ..cfg.clone()
            }
        ),
        Some(c) => format!(
            "{:?} ; {c:?}",
            DecompConfig {
                variant: Variant::CiTiMc,
                ..cfg.clone()
            }
        ),
    }
}

/// Tangling identification and modularization of every class of `set`, one module file
/// per class and variant under `out_dir`; with `extra` (images and their description),
/// continuous learning. Returns the files and the seconds.
#[allow(clippy::too_many_arguments)]
fn element_modules(
    exec: &Executor,
    model: &ModelIr,
    train: &Dataset,
    set: &ConcernSet,
    variants: &[Variant],
    run: &RunArgs,
    out_dir: &Path,
    extra: Option<&(Dataset, String)>,
) -> Result<(Vec<String>, f64)> {
    let start = Instant::now();
    let mut written = Vec::new();
    let total: usize = set.classes.iter().map(|c| c.positives.len()).sum();
    let b = bar(total as u64, "tangle".into());
    let learned = extra.map_or(String::new(), |(_, what)| {
        format!(" ; continuous learning: {what} as extra unconcerned inputs")
    });
    for concern in &set.classes {
        b.set_message(format!("class {}", concern.class));
        let x = extra.map(|(x, _)| x);
        let u = decomp_tangle::untangle_class(
            exec,
            train,
            concern,
            &set.config,
            x,
            run.batch_size,
            &mut |n| b.inc(n as u64),
        )?;
        for &variant in variants {
            let cfg = DecompConfig {
                variant,
                ..set.config.clone()
            };
            let origin = decomp_tangle::ModuleOrigin {
                model_hash: &set.model_hash,
                model_path: &set.model_path,
                provenance: format!(
                    "decomp {} ; dataset {} ; concern identification {:.1} s{learned}",
                    env!("CARGO_PKG_VERSION"),
                    set.dataset,
                    set.seconds
                ),
            };
            let module = decomp_tangle::build_module(
                model,
                concern,
                &u.masks,
                u.unconcerned,
                u.per_class,
                &cfg,
                &origin,
            )?;
            let path = out_dir
                .join(variant.name())
                .join(format!("module_{:03}.mod", concern.class));
            write_artifact(&path, &module)?;
            written.push(path.display().to_string());
        }
    }
    b.finish_and_clear();
    Ok((written, start.elapsed().as_secs_f64()))
}

/// Unconcerned statistics of every class of `set` that lacks them, with a progress bar.
fn channel_untangle(
    exec: &Executor,
    train: &Dataset,
    set: &mut ChannelConcernSet,
    run: &RunArgs,
) -> Result<()> {
    let total: usize = set
        .classes
        .iter()
        .filter(|c| c.unconcerned.is_none())
        .map(|c| c.positives.len())
        .sum();
    let b = bar(total as u64, "tangle".into());
    decomp_tangle::channel_untangle_set(exec, train, set, run.batch_size, &mut per_class(&b))?;
    b.finish_and_clear();
    Ok(())
}

/// Thresholds the statistics of `set` and writes one physical module per class into
/// `out_dir`, then `summary.json`; `rates` names the statistics file.
fn channel_modules(
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
    // Module training's targets: the model's logits on the training images, once for all
    // modules.
    let teacher = match (&ccfg.train, fit) {
        (None, _) => None,
        (Some(_), None) => bail!("module training needs the training images"),
        (Some(_), Some(f)) => {
            tracing::info!(images = f.train.len(), "model logits for module training");
            Some(decomp_tangle::ModelLogits::compute(
                model,
                f.train,
                f.device,
                f.batch_size,
            )?)
        }
    };
    let meter = crate::energy::EnergyMeter::for_device("cpu");
    for c in &set.classes {
        let mut m = decomp_tangle::build_channel_module(model, c, &cfg, ccfg, &origin, fit)
            .with_context(|| format!("class {}", c.class))?;
        if let (Some(tc), Some(teacher), Some(f)) = (&ccfg.train, &teacher, fit) {
            let reading = meter.start();
            decomp_tangle::train_channel_module(&mut m, teacher, f.train, tc)?;
            if let Some(t) = m.training.as_mut() {
                t.energy_j = meter.joules_since(&reading);
                tracing::info!(
                    class = c.class,
                    images = t.images,
                    seconds = t.seconds,
                    validation = ?t.validation,
                    "module trained"
                );
            }
        }
        let path = out_dir.join(format!("module_{:03}.mod", c.class));
        write_artifact(&path, &m)?;
        fp.push(percent(m.cost.flops, m.model_cost.flops));
        pp.push(percent(m.cost.params, m.model_cost.params));
        model_cost = m.model_cost;
        modules.push(path.display().to_string());
    }
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
    write_summary(out_dir, &s)
}

/// Writes `summary.json` into `out_dir` and prints it as one line.
fn write_summary<S: serde::Serialize>(out_dir: &Path, s: &S) -> Result<()> {
    write_atomic(
        &out_dir.join("summary.json"),
        serde_json::to_string_pretty(s)?.as_bytes(),
    )?;
    outln!("{}", serde_json::to_string(s)?);
    Ok(())
}

pub fn tangle(a: TangleArgs) -> Result<()> {
    let channel = a.channel.config()?;
    if channel.is_some() && a.extra_unconcerned.is_some() {
        bail!(
            "--extra-unconcerned (continuous learning) is not implemented for channel-level modules"
        );
    }
    let model = crate::model_source::load_model(&a.model)?;
    match channel {
        None => tangle_element(&a, &model),
        Some(c) => tangle_channel(&a, &model, &c),
    }
}

fn tangle_element(a: &TangleArgs, model: &ModelIr) -> Result<()> {
    let mut set: ConcernSet = read_artifact(&a.concern)?;
    let hash = model.content_hash();
    if hash != set.model_hash {
        bail!(
            "{}: concern set was computed for model {} ({}), --weights is {hash}",
            a.concern.display(),
            set.model_path,
            set.model_hash
        );
    }
    set.check_against(model)
        .map_err(|e| anyhow::anyhow!("{}: {e}", a.concern.display()))?;
    if let Some(want) = a.run.classes_of_set(model)? {
        if let Some(c) = want
            .iter()
            .find(|&&c| !set.classes.iter().any(|k| k.class == c))
        {
            bail!(
                "--classes {c}: the concern set {} has no class {c}",
                a.concern.display()
            );
        }
        set.classes.retain(|k| want.contains(&k.class));
    }
    let variants = a.variants.variants()?;
    let train = training_data(&a.data, model)?;
    let extra = match &a.extra_unconcerned {
        Some(file) => Some(crate::data::extra_unconcerned(
            file,
            a.extra_classes.as_deref(),
            a.extra_limit,
            model,
            set.config.seed,
        )?),
        None => None,
    };
    claim_out_dir(
        &a.out_dir,
        &hash,
        &stamp_config(&set.config, None),
        a.run.force,
    )?;
    let exec = runtime(&a.run.device)?.executor(model)?;
    let (modules, secs) = element_modules(
        &exec,
        model,
        &train,
        &set,
        &variants,
        &a.run,
        &a.out_dir,
        extra.as_ref(),
    )?;
    write_summary(
        &a.out_dir,
        &DecomposeSummary {
            model: set.model_path.clone(),
            model_hash: hash,
            concern_seconds: set.seconds,
            tangle_seconds: secs,
            variants: a.variants.names.clone(),
            modules,
        },
    )
}

/// `tangle --granularity channel`: unconcerned statistics where missing (written, with the
/// concerned ones, to `<out-dir>/channel-rates.ccs` for reuse by a threshold sweep), then
/// the modules (of `--classes` only, when given).
fn tangle_channel(a: &TangleArgs, model: &ModelIr, ccfg: &ChannelConfig) -> Result<()> {
    let concern = &a.concern;
    let mut set: ChannelConcernSet = read_artifact(concern)
        .with_context(|| format!("reading channel concern set {}", concern.display()))?;
    let hash = model.content_hash();
    if hash != set.model_hash {
        bail!(
            "{}: channel concern set was computed for model {} ({}), --weights is {hash}",
            concern.display(),
            set.model_path,
            set.model_hash
        );
    }
    if set.classes.is_empty() {
        bail!(
            "{}: the channel concern set holds no class",
            concern.display()
        );
    }
    if let Some(c) = set.classes.iter().find(|c| c.class >= model.num_classes()) {
        bail!(
            "{}: class {} is beyond the model's {} classes",
            concern.display(),
            c.class,
            model.num_classes()
        );
    }
    if let Some(want) = a.run.classes_of_set(model)? {
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
    claim_out_dir(
        &a.out_dir,
        &hash,
        &stamp_config(&set.config, Some(ccfg)),
        a.run.force,
    )?;
    let needs_data =
        ccfg.budget.is_some() || ccfg.reconstruct || ccfg.fit_head || ccfg.train.is_some();
    let missing = set.classes.iter().any(|c| c.unconcerned.is_none());
    let train = if missing || needs_data {
        Some(training_data(&a.data, model)?)
    } else {
        None
    };
    let rt = runtime(&a.run.device)?;
    let rates = match &train {
        Some(train) if missing => {
            channel_untangle(&rt.executor(model)?, train, &mut set, &a.run)?;
            let rates = a.out_dir.join("channel-rates.ccs");
            write_artifact(&rates, &set)?;
            rates
        }
        _ => concern.clone(),
    };
    let fit = train.as_ref().map(|train| decomp_tangle::FitData {
        train,
        device: &rt,
        batch_size: a.run.batch_size,
    });
    channel_modules(model, &set, ccfg, &a.out_dir, &rates, fit.as_ref())
}

pub fn decompose(a: DecomposeArgs) -> Result<()> {
    let model = crate::model_source::load_model(&a.model)?;
    let train = training_data(&a.data, &model)?;
    let variants = a.variants.variants()?;
    let cfg = a
        .config
        .config(variants.first().copied().unwrap_or(Variant::McBln))?;
    let classes = a.run.class_list(&model)?;
    let channel = a.channel.config()?;
    claim_out_dir(
        &a.out_dir,
        &model.content_hash(),
        &stamp_config(&cfg, channel.as_ref()),
        a.run.force,
    )?;
    let rt = runtime(&a.run.device)?;
    let exec = rt.executor(&model)?;
    let run = ConcernRun {
        exec: &exec,
        model: &model,
        train: &train,
        cfg: &cfg,
        classes: &classes,
        batch_size: a.run.batch_size,
    };
    let origin = SetOrigin {
        model_path: &a.model.weights,
        dataset: &a.data.dataset,
    };
    match run_concern(&run, origin, channel.is_some())? {
        AnySet::Element(set) => {
            write_artifact(&a.out_dir.join("concern.cs"), &set)?;
            let (modules, secs) = element_modules(
                &exec, &model, &train, &set, &variants, &a.run, &a.out_dir, None,
            )?;
            write_summary(
                &a.out_dir,
                &DecomposeSummary {
                    model: a.model.weights.clone(),
                    model_hash: set.model_hash.clone(),
                    concern_seconds: set.seconds,
                    tangle_seconds: secs,
                    variants: a.variants.names.clone(),
                    modules,
                },
            )
        }
        AnySet::Channel(mut set) => {
            let ccfg = channel.expect("channel set from a channel configuration");
            channel_untangle(&exec, &train, &mut set, &a.run)?;
            let rates = a.out_dir.join("channel-rates.ccs");
            write_artifact(&rates, &set)?;
            let fit = decomp_tangle::FitData {
                train: &train,
                device: &rt,
                batch_size: a.run.batch_size,
            };
            channel_modules(&model, &set, &ccfg, &a.out_dir, &rates, Some(&fit))
        }
    }
}
