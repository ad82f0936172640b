//! `decomp concern`, `decomp tangle`, `decomp decompose` and `decomp compose`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use decomp_compose::{Mode, compose, sizes};
use decomp_data::Dataset;
use decomp_eval::Accumulator;
use decomp_ir::{BlnRule, ConcernSet, DecompConfig, MaskSite, ModelIr, ModuleIr, PositiveFilter, Top5Ranking, Variant};
use crate::files::{read_artifact, write_artifact, write_atomic};
use decomp_model::{Executor, parse_device};
use serde::Serialize;

use crate::eval::open_dataset;
use crate::{DataArgs, ModelArgs};

/// Every open choice of the method, as flags (defaults from METHOD.md).
#[derive(clap::Args, Clone, Debug)]
pub struct ConfigArgs {
    /// Concerned images per class (`min(N, available)`).
    #[arg(long, default_value_t = 1000)]
    positives: usize,
    /// Which concerned images count: `correct` (classified correctly), `all`, or
    /// `confident:T` (correct with softmax confidence > T).
    #[arg(long, default_value = "correct")]
    positive_filter: String,
    /// Where masks are recorded and applied: `relu-input` or `conv-output`.
    #[arg(long, default_value = "relu-input")]
    mask_site: String,
    /// MC-BLN rule: `algorithm2` (paper's Algorithm 2) or `only-other` (paper's prose).
    #[arg(long, default_value = "algorithm2")]
    bln_rule: String,
    /// MC-BLN threshold (finite, >= 0).
    #[arg(long, default_value_t = 0.5, value_parser = crate::flags::finite_f32)]
    bln_delta: f32,
    /// Top-5 ranking: `voters-first` or `confidence`.
    #[arg(long, default_value = "voters-first")]
    top5_ranking: String,
    /// Seed of every sampling choice.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

impl ConfigArgs {
    pub fn config(&self, variant: Variant) -> Result<DecompConfig> {
        let positive_filter = match self.positive_filter.as_str() {
            "correct" => PositiveFilter::Correct,
            "all" => PositiveFilter::All,
            s => match s.strip_prefix("confident:").and_then(|t| t.parse::<f32>().ok()) {
                Some(t) if (0.0..1.0).contains(&t) => PositiveFilter::Confident(t),
                _ => bail!("--positive-filter {s:?}: expected correct, all or confident:T with 0 <= T < 1"),
            },
        };
        let mask_site = match self.mask_site.as_str() {
            "relu-input" => MaskSite::ReluInput,
            "conv-output" => MaskSite::ConvOutput,
            s => bail!("--mask-site {s:?}: expected relu-input or conv-output"),
        };
        let bln_rule = match self.bln_rule.as_str() {
            "algorithm2" => BlnRule::Algorithm2,
            "only-other" => BlnRule::OnlyOther,
            s => bail!("--bln-rule {s:?}: expected algorithm2 or only-other"),
        };
        let top5_ranking = match self.top5_ranking.as_str() {
            "voters-first" => Top5Ranking::VotersFirst,
            "confidence" => Top5Ranking::Confidence,
            s => bail!("--top5-ranking {s:?}: expected voters-first or confidence"),
        };
        if self.positives == 0 {
            bail!("--positives must be at least 1");
        }
        if self.bln_delta < 0.0 {
            bail!("--bln-delta {}: expected a threshold >= 0", self.bln_delta);
        }
        Ok(DecompConfig {
            variant,
            positives_per_class: self.positives,
            positive_filter,
            mask_site,
            bln_rule,
            bln_delta: self.bln_delta,
            top5_ranking,
            seed: self.seed,
        })
    }
}

/// Flags shared by the stages that run a model over training data.
#[derive(clap::Args, Clone, Debug)]
pub struct RunArgs {
    /// Classes to decompose (names or indices, comma-separated); default all.
    #[arg(long, value_delimiter = ',')]
    pub(crate) classes: Option<Vec<String>>,
    /// Reuse an `--out-dir` that holds modules of another model or configuration: its module
    /// files are removed first.
    #[arg(long)]
    pub(crate) force: bool,
    /// Images per forward pass (at least 1).
    #[arg(long, default_value_t = 128, value_parser = crate::flags::positive_usize)]
    pub(crate) batch_size: usize,
    #[arg(long, default_value = "cpu")]
    pub(crate) device: String,
}

pub(crate) fn bar(len: u64, prefix: String) -> indicatif::ProgressBar {
    let b = indicatif::ProgressBar::new(len).with_style(
        indicatif::ProgressStyle::with_template("{prefix:>12} {msg:>9} [{elapsed_precise}] {wide_bar} {pos}/{len} ({per_sec}, eta {eta})")
            .expect("valid template"),
    );
    b.set_prefix(prefix);
    b
}

impl RunArgs {
    /// The classes `--classes` names (indices into `model`'s classes), or all of them.
    pub(crate) fn class_list(&self, model: &ModelIr) -> Result<Vec<usize>> {
        match &self.classes {
            Some(c) => crate::flags::resolve_classes("--classes", c, &model.meta.class_names, model.num_classes()),
            None => Ok((0..model.num_classes()).collect()),
        }
    }

    /// `--classes` for a stage that reads a concern set: names resolve against `model`'s,
    /// indices are taken as given, so that one the set lacks is refused naming the set.
    pub(crate) fn classes_of_set(&self, model: &ModelIr) -> Result<Option<Vec<usize>>> {
        self.classes
            .as_ref()
            .map(|c| crate::flags::resolve_classes("--classes", c, &model.meta.class_names, usize::MAX))
            .transpose()
    }
}

/// The images the decomposition stages look at: `--split` (default train), the first
/// `--limit` of them.
pub(crate) fn training_data(data: &DataArgs, model: &ModelIr) -> Result<Dataset> {
    let mut d = data.clone();
    d.split = Some(d.split.unwrap_or(decomp_data::Split::Train));
    open_dataset(&d, model)
}

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
    channel: crate::channel::ChannelArgs,
    /// Output concern-set artifact.
    #[arg(long)]
    out: PathBuf,
}

fn run_concern(model: &ModelIr, model_path: &str, train: &Dataset, cfg: &DecompConfig, run: &RunArgs, dataset: &str) -> Result<ConcernSet> {
    let device = parse_device(&run.device)?;
    let exec = Executor::new(model, &device)?;
    let classes = run.class_list(model)?;
    let start = Instant::now();
    let b = bar((classes.len() * cfg.positives_per_class) as u64, "concern".into());
    let (sites, concerns) = decomp_concern::identify(&exec, model, train, cfg, &classes, run.batch_size, &mut |c, n| {
        b.set_message(format!("class {c}"));
        b.inc(n as u64)
    })?;
    b.finish_and_clear();
    Ok(ConcernSet {
        model_hash: model.content_hash(),
        model_path: model_path.to_string(),
        dataset: dataset.to_string(),
        config: cfg.clone(),
        sites,
        classes: concerns,
        seconds: start.elapsed().as_secs_f64(),
    })
}

pub fn concern(a: ConcernArgs) -> Result<()> {
    let model = crate::model_source::load_model(&a.model)?;
    let train = training_data(&a.data, &model)?;
    let cfg = a.config.config(Variant::McBln)?;
    a.run.class_list(&model)?;
    crate::files::check_output(&a.out)?;
    if a.channel.config()?.is_some() {
        return crate::channel::concern(&a.model, &a.data, &cfg, &a.run, &a.out);
    }
    let set = run_concern(&model, &a.model.weights, &train, &cfg, &a.run, &a.data.dataset)?;
    write_artifact(&a.out, &set)?;
    eprintln!("concern set for {} classes in {:.1} s: {}", set.classes.len(), set.seconds, a.out.display());
    Ok(())
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
    /// Variants to build (comma-separated): ci-ti-mc, mc-bln, mc-bln-bi.
    #[arg(long, value_delimiter = ',', default_value = "mc-bln")]
    variants: Vec<String>,
    #[command(flatten)]
    run: RunArgs,
    #[command(flatten)]
    channel: crate::channel::ChannelArgs,
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

/// What `tangle` / `decompose` print and write as `summary.json`.
#[derive(Serialize)]
struct DecomposeSummary {
    model: String,
    model_hash: String,
    concern_seconds: f64,
    tangle_seconds: f64,
    variants: Vec<String>,
    modules: Vec<String>,
}

/// The configuration an output folder's run stamp records (the variant aside: each variant
/// has its own subfolder).
fn stamp_config(cfg: &DecompConfig) -> String {
    format!("{:?}", DecompConfig { variant: Variant::McBln, ..cfg.clone() })
}

fn parse_variants(v: &[String]) -> Result<Vec<Variant>> {
    crate::flags::no_duplicates("--variants", v)?;
    v.iter()
        .map(|s| Variant::parse(s).with_context(|| format!("unknown variant {s:?}: expected ci-ti-mc, mc-bln or mc-bln-bi")))
        .collect()
}

/// Extra unconcerned images for continuous learning, fitted to `model`.
fn extra_unconcerned(a: &TangleArgs, model: &ModelIr, seed: u64) -> Result<Option<(Dataset, String)>> {
    let Some(file) = &a.extra_unconcerned else { return Ok(None) };
    crate::files::input(file);
    let mut ds = Dataset::from_cifar_file(decomp_data::DatasetKind::Cifar10, file)?;
    if let Some(c) = &a.extra_classes {
        let c = crate::flags::resolve_classes("--extra-classes", c, ds.class_names(), ds.num_classes())?;
        ds = ds.subset_classes(&c)?;
    }
    if let Some(n) = a.extra_limit {
        ds = ds.shuffled(seed).take(n);
    }
    if ds.is_empty() {
        bail!("--extra-unconcerned {}: no image left after --extra-classes/--extra-limit", file.display());
    }
    let what = format!("{} images of {}", ds.len(), file.display());
    Ok(Some((crate::eval::fit_to_model(ds, model)?, what)))
}

fn run_tangle(model: &ModelIr, train: &Dataset, set: &ConcernSet, variants: &[Variant], run: &RunArgs, out_dir: &Path) -> Result<(Vec<String>, f64)> {
    run_tangle_extra(model, train, set, variants, run, out_dir, None)
}

fn run_tangle_extra(
    model: &ModelIr,
    train: &Dataset,
    set: &ConcernSet,
    variants: &[Variant],
    run: &RunArgs,
    out_dir: &Path,
    extra: Option<&(Dataset, String)>,
) -> Result<(Vec<String>, f64)> {
    let device = parse_device(&run.device)?;
    let exec = Executor::new(model, &device)?;
    let start = Instant::now();
    let mut written = Vec::new();
    let total: usize = set.classes.iter().map(|c| c.positives.len()).sum();
    let b = bar(total as u64, "tangle".into());
    for concern in &set.classes {
        let (sample, per_class) = decomp_tangle::unconcerned_sample(train, concern.class, concern.positives.len(), set.config.seed);
        b.set_message(format!("class {}", concern.class));
        let mut untangled = decomp_tangle::untangle(&exec, train, concern, &sample, run.batch_size, &mut |n| b.inc(n as u64))?;
        let mut unconcerned = sample.len();
        let mut learned = String::new();
        if let Some((x, what)) = extra {
            // Continuous learning: the extra images bring back every position they activate.
            let refined = decomp_ir::ClassConcern {
                class: concern.class,
                inactive: decomp_ir::SiteMasks { masks: untangled.clone() },
                positives: Vec::new(),
            };
            let all: Vec<usize> = (0..x.len()).collect();
            untangled = decomp_tangle::untangle(&exec, x, &refined, &all, run.batch_size, &mut |_| {})?;
            unconcerned += x.len();
            learned = format!(" ; continuous learning: {what} as extra unconcerned inputs");
        }
        for &variant in variants {
            let cfg = DecompConfig { variant, ..set.config.clone() };
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
            let module = decomp_tangle::build_module(model, concern, &untangled, unconcerned, per_class, &cfg, &origin)?;
            let path = out_dir.join(variant.name()).join(format!("module_{:03}.mod", concern.class));
            write_artifact(&path, &module)?;
            written.push(path.display().to_string());
        }
    }
    b.finish_and_clear();
    Ok((written, start.elapsed().as_secs_f64()))
}

fn write_summary(out_dir: &Path, s: &DecomposeSummary) -> Result<()> {
    write_atomic(&out_dir.join("summary.json"), serde_json::to_string_pretty(s)?.as_bytes())?;
    outln!("{}", serde_json::to_string(s)?);
    Ok(())
}

pub fn tangle(a: TangleArgs) -> Result<()> {
    if let Some(c) = a.channel.config()? {
        if a.extra_unconcerned.is_some() {
            bail!("--extra-unconcerned (continuous learning) is not implemented for channel-level modules");
        }
        return crate::channel::tangle(&a.model, &a.data, &a.concern, &c, &a.run, &a.out_dir);
    }
    let model = crate::model_source::load_model(&a.model)?;
    let mut set: ConcernSet = read_artifact(&a.concern)?;
    let hash = model.content_hash();
    if hash != set.model_hash {
        bail!("{}: concern set was computed for model {} ({}), --weights is {hash}", a.concern.display(), set.model_path, set.model_hash);
    }
    set.check_against(&model).map_err(|e| anyhow::anyhow!("{}: {e}", a.concern.display()))?;
    if let Some(want) = a.run.classes_of_set(&model)? {
        if let Some(c) = want.iter().find(|&&c| !set.classes.iter().any(|k| k.class == c)) {
            bail!("--classes {c}: the concern set {} has no class {c}", a.concern.display());
        }
        set.classes.retain(|k| want.contains(&k.class));
    }
    let variants = parse_variants(&a.variants)?;
    let train = training_data(&a.data, &model)?;
    let extra = extra_unconcerned(&a, &model, set.config.seed)?;
    crate::files::claim_out_dir(&a.out_dir, &hash, &stamp_config(&set.config), a.run.force)?;
    let (modules, secs) = run_tangle_extra(&model, &train, &set, &variants, &a.run, &a.out_dir, extra.as_ref())?;
    write_summary(&a.out_dir, &DecomposeSummary {
        model: set.model_path.clone(),
        model_hash: hash,
        concern_seconds: set.seconds,
        tangle_seconds: secs,
        variants: a.variants.clone(),
        modules,
    })
}

#[derive(clap::Args)]
pub struct DecomposeArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    data: DataArgs,
    #[command(flatten)]
    config: ConfigArgs,
    /// Variants to build (comma-separated): ci-ti-mc, mc-bln, mc-bln-bi.
    #[arg(long, value_delimiter = ',', default_value = "mc-bln")]
    variants: Vec<String>,
    #[command(flatten)]
    run: RunArgs,
    #[command(flatten)]
    channel: crate::channel::ChannelArgs,
    /// Output folder: `concern.cs`, `<variant>/module_<class>.mod`, `summary.json`.
    #[arg(long)]
    out_dir: PathBuf,
}

pub fn decompose(a: DecomposeArgs) -> Result<()> {
    let model = crate::model_source::load_model(&a.model)?;
    let train = training_data(&a.data, &model)?;
    let variants = parse_variants(&a.variants)?;
    let cfg = a.config.config(variants.first().copied().unwrap_or(Variant::McBln))?;
    a.run.class_list(&model)?;
    if let Some(c) = a.channel.config()? {
        return crate::channel::decompose(&a.model, &a.data, &cfg, &c, &a.run, &a.out_dir);
    }
    crate::files::claim_out_dir(&a.out_dir, &model.content_hash(), &stamp_config(&cfg), a.run.force)?;
    let set = run_concern(&model, &a.model.weights, &train, &cfg, &a.run, &a.data.dataset)?;
    write_artifact(&a.out_dir.join("concern.cs"), &set)?;
    let (modules, secs) = run_tangle(&model, &train, &set, &variants, &a.run, &a.out_dir)?;
    write_summary(&a.out_dir, &DecomposeSummary {
        model: a.model.weights.clone(),
        model_hash: set.model_hash.clone(),
        concern_seconds: set.seconds,
        tangle_seconds: secs,
        variants: a.variants.clone(),
        modules,
    })
}

#[derive(clap::Args)]
pub struct ComposeArgs {
    /// Module files; composed class i is the class of the i-th module.
    #[arg(required = true)]
    modules: Vec<PathBuf>,
    /// Dataset and split to evaluate on. The dataset's classes are matched to the modules'
    /// classes by index (`--classes` selects and orders them).
    #[command(flatten)]
    data: DataArgs,
    /// Dataset class of each module, in module order, as names or indices (default: each
    /// module's own class, which must carry the same name in the dataset).
    #[arg(long, value_delimiter = ',')]
    classes: Option<Vec<String>>,
    #[arg(long, default_value_t = 128, value_parser = crate::flags::positive_usize)]
    batch_size: usize,
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Run one forward pass per module instead of one batched pass (reference path).
    #[arg(long)]
    naive: bool,
    /// Print one JSON object on stdout.
    #[arg(long)]
    json: bool,
    /// Also write the JSON here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Channel modules: also run their source model (weights, `.ir` or known name) on the
    /// same batches, for its accuracy and the measured time ratio.
    #[arg(long)]
    reference_model: Option<String>,
    /// Write every module's margin on every image (and the labels) here, for `decomp vote`
    /// to compose any selection of these modules without running a model again.
    #[arg(long)]
    save_margins: Option<PathBuf>,
}

#[derive(Serialize)]
struct ComposeOutput {
    modules: Vec<String>,
    classes: Vec<String>,
    variant: String,
    config: DecompConfig,
    n: usize,
    composed_top1: f64,
    composed_top5: f64,
    composed_per_class: Vec<f64>,
    model_top1: Option<f64>,
    model_top5: Option<f64>,
    model_per_class: Option<Vec<f64>>,
    module_size: Vec<f64>,
    mean_module_size: f64,
    mean_overlap: f64,
    overlap: Vec<Vec<Option<f64>>>,
    seconds: f64,
    mode: String,
}

/// The dataset class of each module: `--classes` (names or indices of the dataset's
/// classes), or each module's own class, which must exist in the dataset under the same
/// name (CIFAR modules on Tiny ImageNet images are refused, as `eval` refuses them).
pub(crate) fn module_classes(given: Option<&[String]>, modules: &[(usize, &str)], paths: &[PathBuf], ds: &Dataset, data: &DataArgs) -> Result<Vec<usize>> {
    if let Some(c) = given {
        let classes = crate::flags::resolve_classes("--classes", c, ds.class_names(), ds.num_classes())?;
        if classes.len() != modules.len() {
            bail!("--classes lists {} classes for {} modules", classes.len(), modules.len());
        }
        return Ok(classes);
    }
    let names = ds.class_names();
    for ((class, name), p) in modules.iter().zip(paths) {
        match names.get(*class) {
            None => bail!(
                "{}: module of class {class} ({name}), but {} has {} classes: pass --classes to map modules to dataset classes",
                p.display(),
                crate::eval::describe_source(data),
                ds.num_classes()
            ),
            Some(n) if !n.is_empty() && !name.is_empty() && n != name && *n != decomp_data::placeholder_class_name(*class) => bail!(
                "{}: module of class {class} ({name}), but class {class} of {} is {n:?}: pass --classes to map modules to dataset classes",
                p.display(),
                crate::eval::describe_source(data)
            ),
            Some(_) => {}
        }
    }
    let classes: Vec<usize> = modules.iter().map(|m| m.0).collect();
    if let Some(i) = (1..classes.len()).find(|&i| classes[..i].contains(&classes[i])) {
        bail!("{}: a second module of class {}: pass --classes to map modules to dataset classes", paths[i].display(), classes[i]);
    }
    Ok(classes)
}

pub fn compose_cmd(a: ComposeArgs) -> Result<()> {
    for p in &a.modules {
        crate::files::input(p);
    }
    crate::eval::register_inputs(&a.data)?;
    for out in a.out.iter().chain(&a.save_margins) {
        crate::files::check_output(out)?;
    }
    if let (Some(o), Some(m)) = (&a.out, &a.save_margins)
        && decomp_ir::output::FileId::of_output(o).zip(decomp_ir::output::FileId::of_output(m)).is_some_and(|(x, y)| x.same(&y))
    {
        bail!("--out and --save-margins name the same file {}", o.display());
    }
    if crate::channel::artifact_kind(&a.modules[0])? == Some(decomp_ir::ArtifactKind::ChannelModule) {
        return crate::channel::compose(crate::channel::ComposeInputs {
            modules: &a.modules,
            data: &a.data,
            classes: a.classes.as_deref(),
            batch_size: a.batch_size,
            device: &a.device,
            reference: a.reference_model.as_deref(),
            json: a.json,
            out: a.out.as_deref(),
            save_margins: a.save_margins.as_deref(),
            naive: a.naive,
        });
    }
    if a.reference_model.is_some() {
        bail!("--reference-model applies to channel modules; element modules carry their whole model, whose accuracy compose reports anyway");
    }
    let modules: Vec<ModuleIr> = a
        .modules
        .iter()
        .map(|p| read_artifact(p).with_context(|| format!("reading module {}", p.display())))
        .collect::<Result<_>>()?;
    let full = open_dataset(&a.data, &modules[0].model)?;
    let own: Vec<(usize, &str)> = modules.iter().map(|m| (m.class, m.class_name.as_str())).collect();
    let classes = module_classes(a.classes.as_deref(), &own, &a.modules, &full, &a.data)?;
    let identity = classes.len() == full.num_classes() && classes.iter().enumerate().all(|(i, &c)| i == c);
    let data = if identity { full } else { full.subset_classes(&classes)? };
    if data.is_empty() {
        bail!("{}: no image of the modules' classes {classes:?}", crate::eval::describe_source(&a.data));
    }
    let device = parse_device(&a.device)?;
    let start = Instant::now();
    let b = bar(data.len() as u64, format!("compose {}", modules.len()));
    let mode = if a.naive { Mode::Naive } else { Mode::Batched };
    let ranking = modules[0].config.top5_ranking;
    let run = compose(&modules, &data, &device, a.batch_size, ranking, mode, &mut |n| b.inc(n as u64))?;
    b.finish_and_clear();
    let seconds = start.elapsed().as_secs_f64();
    let k = modules.len();
    let mut acc = Accumulator::new(k);
    for (&l, &r) in run.labels.iter().zip(&run.label_rank) {
        acc.add_rank(l, r)?;
    }
    let composed = acc.finish();
    let model = run.model_rank.as_ref().map(|ranks| {
        let mut acc = Accumulator::new(k);
        for (&l, &r) in run.labels.iter().zip(ranks) {
            acc.add_rank(l, r).expect("labels checked above");
        }
        acc.finish()
    });
    let s = sizes(&modules)?;
    let out = ComposeOutput {
        modules: a.modules.iter().map(|p| p.display().to_string()).collect(),
        classes: modules.iter().map(|m| m.class_name.clone()).collect(),
        variant: modules[0].config.variant.name().into(),
        config: modules[0].config.clone(),
        n: composed.n,
        composed_top1: composed.top1,
        composed_top5: composed.top5,
        composed_per_class: composed.per_class.clone(),
        model_top1: model.as_ref().map(|m| m.top1),
        model_top5: model.as_ref().map(|m| m.top5),
        model_per_class: model.as_ref().map(|m| m.per_class.clone()),
        module_size: s.per_module,
        mean_module_size: s.mean,
        mean_overlap: s.mean_overlap,
        overlap: s.overlap,
        seconds,
        mode: format!("{mode:?}").to_lowercase(),
    };
    if let Some(p) = &a.save_margins {
        let columns = modules.iter().zip(&a.modules).map(|(m, p)| {
            crate::vote::MarginModule::new(p, m.class, &m.class_name, &m.model_hash)
        });
        crate::vote::save_margins(
            p,
            crate::vote::image_set(&a.data, &classes),
            data.class_names(),
            columns.collect(),
            &run,
            model.as_ref(),
            seconds,
        )?;
    }
    let text = serde_json::to_string(&out)?;
    if let Some(p) = &a.out {
        write_atomic(p, text.as_bytes())?;
    }
    if a.json {
        outln!("{text}");
    } else {
        outln!("{} modules on {} images ({:.1} s, {})", k, out.n, seconds, out.mode);
        if let (Some(t1), Some(t5)) = (out.model_top1, out.model_top5) {
            outln!("model     top-1 {t1:.2}%  top-5 {t5:.2}%");
        }
        outln!("composed  top-1 {:.2}%  top-5 {:.2}%", out.composed_top1, out.composed_top5);
        outln!("module size mean {:.3}, mean pairwise overlap {:.3}", out.mean_module_size, out.mean_overlap);
    }
    Ok(())
}
