//! `decomp train`: trains a ResNet from scratch or fine-tunes imported weights, writing a
//! run directory that a killed run resumes from.
//!
//! Run directory:
//! - `last.ckpt`: the resumable state after the last finished epoch (written every epoch);
//! - `best.ir`: the model of the best epoch by validation accuracy (an ordinary model
//!   artifact: `decomp eval --weights RUN/best.ir`);
//! - `metrics.csv`, `metrics.json`: one row per epoch plus a summary (best epoch, wall time,
//!   energy and where it was measured, test accuracy with `--eval-test`);
//! - `curves.svg`: loss and accuracy curves.
//!
//! Order of writes at the end of an epoch: `best.ir` (if improved), then `last.ckpt`, then
//! metrics; each atomically. A run killed at any point resumes from the last checkpoint and
//! recomputes the epochs after it exactly.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use decomp_data::{Dataset, DatasetKind, Split};
use decomp_eval::report::TrainMetrics;
use decomp_ir::{InputNorm, ModelIr};
use decomp_model::ExecutorSource;
use decomp_model::train::{
    AugmentConfig, OptimizerConfig, Schedule, TrainCheckpoint, TrainConfig, Trainer,
};
use serde::Deserialize;

use crate::args::{DataArgs, ModelArgs, runtime};
use crate::data::{fit_to_model, open_raw_dataset};
use crate::energy::EnergyMeter;
use crate::eval::evaluate;
use crate::files::{write_artifact, write_atomic};

/// The recipes shipped with decomp (`experiments/recipes.toml`), used unless `--recipes`
/// names another file.
const BUILTIN_RECIPES: &str = include_str!("../../../experiments/recipes.toml");
/// Largest recipes file read: 1 MiB.
const RECIPES_SIZE_LIMIT: u64 = 1 << 20;

#[derive(clap::Args)]
pub struct TrainArgs {
    /// Architecture to train from scratch (`resnet20`, `resnet32`, ...; default resnet20).
    /// With `--init`, checked against that model's.
    #[arg(long)]
    arch: Option<String>,
    /// Start from these weights instead (fine-tuning): an `.ir` model, a PyTorch checkpoint
    /// or a known name (`akamaster/resnet20`). Its class count must match the data's, unless
    /// `--new-head`.
    #[arg(long)]
    init: Option<String>,
    /// With `--init`: replace its classifier by a freshly initialized one (seeded by `--seed`)
    /// for the training data's classes and fine-tune everything from there (transfer to other
    /// classes, e.g. a 2-class model from a 10-class one).
    #[arg(long, requires = "init")]
    new_head: bool,
    /// Cache folder for downloaded weights.
    #[arg(long, env = "DECOMP_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
    /// Dataset: cifar10, cifar100, cifar100-coarse, tiny-imagenet, fashion-mnist, mnist.
    #[arg(long, default_value = "cifar10")]
    dataset: String,
    /// Folder holding the dataset folder (default as for every command: $DECOMP_DATA_DIR,
    /// `../shared/datasets`, the user cache; a missing dataset is downloaded unless --offline).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The dataset folder itself, overriding `--data-dir`'s naming convention.
    #[arg(long)]
    dataset_path: Option<PathBuf>,
    /// Train on one file of CIFAR records instead of the dataset's training split.
    #[arg(long, conflicts_with = "dataset_path")]
    data_file: Option<PathBuf>,
    /// Accepted for old scripts: a missing dataset is always downloaded unless --offline.
    #[arg(long, hide = true)]
    download: bool,
    /// Train on these classes only (names or indices, comma-separated), relabelled 0..k-1
    /// in the order given.
    #[arg(long, value_delimiter = ',')]
    classes: Vec<String>,
    /// Resize images to this height and width (e.g. 32 for Tiny ImageNet next to CIFAR).
    #[arg(long)]
    resize: Option<usize>,
    /// Use only the first N training images (after the class selection, before the split).
    #[arg(long, value_parser = crate::flags::positive_usize)]
    train_limit: Option<usize>,
    /// Fraction of the training images held out (stratified) for validation and
    /// best-checkpoint selection; 0 selects on training accuracy.
    #[arg(long, default_value_t = 0.1, value_parser = crate::flags::finite_f64)]
    val_fraction: f64,
    /// Recipe name from the recipes file (he2016, paper-keras, finetune).
    #[arg(long, default_value = "he2016")]
    recipe: String,
    /// A recipes file (TOML, as `experiments/recipes.toml`) instead of the built-in one.
    #[arg(long)]
    recipes: Option<PathBuf>,
    /// Override the recipe's number of epochs (a short run keeps the schedule's shape).
    #[arg(long, value_parser = crate::flags::positive_usize)]
    epochs: Option<usize>,
    /// Override the recipe's base learning rate.
    #[arg(long, value_parser = crate::flags::positive_f64)]
    lr: Option<f64>,
    /// Override the recipe's batch size.
    #[arg(long, value_parser = crate::flags::positive_usize)]
    batch_size: Option<usize>,
    /// Seed of the initialization, the validation split, shuffling and augmentation.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Run directory (checkpoints, best model, metrics, curves).
    #[arg(long)]
    out_dir: PathBuf,
    /// Continue the run in `--out-dir` from its last checkpoint.
    #[arg(long)]
    resume: bool,
    /// After training, evaluate the best model on the test split and record it.
    #[arg(long)]
    eval_test: bool,
    /// Stop after this many epochs of this invocation (the run can be resumed later).
    #[arg(long, value_parser = crate::flags::positive_usize)]
    max_epochs_now: Option<usize>,
    /// Device: cpu, or cuda[:N] / wgpu when built with those features.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Declared average power of the device in watts, used for energy estimates when no
    /// meter is readable (see `co2e`); recorded in metrics.json.
    #[arg(long, value_parser = crate::flags::positive_f64)]
    declared_power_w: Option<f64>,
}

/// One recipe of the recipes file (flat, as written in TOML).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Recipe {
    optimizer: String,
    lr: f64,
    #[serde(default)]
    momentum: f64,
    #[serde(default)]
    dampening: f64,
    #[serde(default)]
    nesterov: bool,
    #[serde(default = "default_beta1")]
    beta1: f64,
    #[serde(default = "default_beta2")]
    beta2: f64,
    #[serde(default = "default_epsilon")]
    epsilon: f64,
    #[serde(default)]
    weight_decay: f64,
    schedule: String,
    #[serde(default)]
    milestones: Vec<f64>,
    #[serde(default)]
    factors: Vec<f64>,
    #[serde(default)]
    min_factor: f64,
    epochs: usize,
    batch_size: usize,
    batch_norm: bool,
    #[serde(default)]
    pad_crop: usize,
    #[serde(default)]
    shift: f32,
    #[serde(default)]
    flip: bool,
}

fn default_beta1() -> f64 {
    0.9
}
fn default_beta2() -> f64 {
    0.999
}
fn default_epsilon() -> f64 {
    1e-7
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RecipesFile {
    recipes: BTreeMap<String, Recipe>,
}

/// Reads recipe `name` from `file` (or the built-in recipes).
fn load_recipe(file: Option<&Path>, name: &str) -> Result<Recipe> {
    let (text, origin) = match file {
        Some(p) => (
            crate::files::read_text(p, RECIPES_SIZE_LIMIT, "recipes")?,
            p.display().to_string(),
        ),
        None => (
            BUILTIN_RECIPES.to_string(),
            "built-in experiments/recipes.toml".to_string(),
        ),
    };
    let parsed: RecipesFile =
        toml::from_str(&text).with_context(|| format!("{origin}: not a valid recipes file"))?;
    parsed.recipes.get(name).cloned().with_context(|| {
        format!(
            "{origin}: no recipe named {name:?}, expected one of: {}",
            parsed
                .recipes
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        )
    })
}

impl Recipe {
    fn config(&self, a: &TrainArgs) -> Result<TrainConfig> {
        let optimizer = match self.optimizer.as_str() {
            "sgd" => OptimizerConfig::Sgd {
                momentum: self.momentum,
                dampening: self.dampening,
                nesterov: self.nesterov,
                weight_decay: self.weight_decay,
            },
            "adam" => OptimizerConfig::Adam {
                beta1: self.beta1,
                beta2: self.beta2,
                epsilon: self.epsilon,
                weight_decay: self.weight_decay,
            },
            other => bail!(
                "recipe {}: optimizer {other:?}, expected \"sgd\" or \"adam\"",
                a.recipe
            ),
        };
        let schedule = match self.schedule.as_str() {
            "constant" => Schedule::Constant,
            "step" => Schedule::Step {
                milestones: self.milestones.clone(),
                factors: self.factors.clone(),
            },
            "cosine" => Schedule::Cosine {
                min_factor: self.min_factor,
            },
            other => bail!(
                "recipe {}: schedule {other:?}, expected \"constant\", \"step\" or \"cosine\"",
                a.recipe
            ),
        };
        let cfg = TrainConfig {
            optimizer,
            lr: a.lr.unwrap_or(self.lr),
            schedule,
            epochs: a.epochs.unwrap_or(self.epochs),
            batch_size: a.batch_size.unwrap_or(self.batch_size),
            augment: AugmentConfig {
                pad_crop: self.pad_crop,
                shift: self.shift,
                flip: self.flip,
            },
            seed: a.seed,
            eval_batch_size: 256,
        };
        cfg.validate()
            .with_context(|| format!("recipe {}", a.recipe))?;
        Ok(cfg)
    }
}

fn data_args(a: &TrainArgs, split: Split) -> DataArgs {
    DataArgs {
        dataset: a.dataset.clone(),
        data_dir: a.data_dir.clone(),
        dataset_path: a.dataset_path.clone(),
        data_file: if split == Split::Train {
            a.data_file.clone()
        } else {
            None
        },
        split: Some(split),
        download: a.download,
        limit: None,
    }
}

/// The split's images restricted to `--classes` (relabelled in the order given), as stored.
fn open_raw(a: &TrainArgs, split: Split) -> Result<Dataset> {
    let ds = open_raw_dataset(&data_args(a, split))?;
    if a.classes.is_empty() {
        return Ok(ds);
    }
    let idx =
        crate::flags::resolve_classes("--classes", &a.classes, ds.class_names(), ds.num_classes())?;
    Ok(ds.subset_classes(&idx)?)
}

/// The model training starts from: imported weights, or a fresh initialization shaped for
/// the data `raw` (classes, channels, `--resize`) and normalized with the dataset's
/// published statistics.
fn initial_model(
    a: &TrainArgs,
    raw: &Dataset,
    batch_norm: bool,
) -> Result<(ModelIr, Option<String>)> {
    if let Some(init) = &a.init {
        if a.resize.is_some() {
            bail!(
                "--resize applies to training from scratch: with --init the images take the input size of {init}"
            );
        }
        let model = crate::model_source::load_model(&ModelArgs {
            arch: a.arch.clone(),
            weights: init.clone(),
            cache_dir: a.cache_dir.clone(),
            onnx: Default::default(),
        })?;
        if a.new_head {
            let model =
                decomp_model::resnet::with_new_head(&model, raw.class_names().to_vec(), a.seed)
                    .with_context(|| format!("--new-head on --init {init}"))?;
            return Ok((model, Some(format!("{init} (new head)"))));
        }
        return Ok((model, Some(init.clone())));
    }
    let kind = DatasetKind::parse(&a.dataset)?;
    let names = raw.class_names().to_vec();
    let [c, h, w] = raw.image_shape();
    let (h, w) = a.resize.map_or((h, w), |s| (s, s));
    let arch = a.arch.as_deref().unwrap_or("resnet20");
    let mut model = crate::model_source::parse_arch(arch, names.len())?
        .with_batch_norm(batch_norm)
        .with_input([c, h, w])
        .with_seed(a.seed)
        .build()
        .with_context(|| {
            format!(
                "--arch {arch} for {} classes of {c}x{h}x{w} images",
                names.len()
            )
        })?;
    let norm = kind.default_normalization();
    model.meta.input_norm = InputNorm {
        mean: norm.mean.clone(),
        std: norm.std.clone(),
    };
    model.meta.class_names = names;
    Ok((model, None))
}

pub fn run(a: TrainArgs) -> Result<()> {
    if !(0.0..1.0).contains(&a.val_fraction) {
        bail!(
            "--val-fraction {}: expected a fraction in [0, 1)",
            a.val_fraction
        );
    }
    let recipe = load_recipe(a.recipes.as_deref(), &a.recipe)?;
    let config = recipe.config(&a)?;
    let rt = runtime(&a.device)?;
    let ckpt_path = a.out_dir.join("last.ckpt");

    let raw = open_raw(&a, Split::Train)?;
    let (init, init_name) = initial_model(&a, &raw, recipe.batch_norm)?;
    // After every input is registered: the run folder is no input and lies in none.
    crate::files::check_out_dir(&a.out_dir, "--out-dir")?;
    for name in [
        "best.ir",
        "last.ckpt",
        "metrics.json",
        "metrics.csv",
        "curves.svg",
    ] {
        crate::files::check_output(&a.out_dir.join(name))?;
    }
    std::fs::create_dir_all(&a.out_dir)
        .with_context(|| format!("creating --out-dir {}", a.out_dir.display()))?;
    let arch = init.meta.arch.clone();
    let all = fit_to_model(raw, &init)?;
    let all = match a.train_limit {
        Some(n) => all.shuffled(a.seed).take(n),
        None => all,
    };
    if init.num_classes() != all.num_classes() {
        bail!(
            "the model predicts {} classes, the training data has {} ({}): pick matching --classes, another --init, or --new-head",
            init.num_classes(),
            all.num_classes(),
            all.class_names().join(", ")
        );
    }
    let (train, val) = all.split_at_fraction(a.val_fraction, a.seed);
    let data_id = format!(
        "dataset={} file={:?} classes={:?} resize={:?} limit={:?} val_fraction={} seed={} train={} val={} init={}",
        a.dataset,
        a.data_file,
        all.class_names(),
        a.resize,
        a.train_limit,
        a.val_fraction,
        a.seed,
        train.len(),
        val.len(),
        init.content_hash()
    );

    let mut trainer = if a.resume {
        // The run's own state: read and rewritten in place by design (not an input).
        let ckpt: TrainCheckpoint = decomp_ir::read_artifact(&ckpt_path).with_context(|| {
            format!(
                "--resume: reading the checkpoint {} (run without --resume to start)",
                ckpt_path.display()
            )
        })?;
        tracing::info!(
            epochs_done = ckpt.epochs_done,
            "resuming from {}",
            ckpt_path.display()
        );
        Trainer::resume_with_runtime(ckpt, &config, &data_id, &rt)?
    } else {
        if ckpt_path.exists() {
            bail!(
                "{} exists: pass --resume to continue that run, or choose another --out-dir",
                ckpt_path.display()
            );
        }
        Trainer::with_runtime(init, config.clone(), data_id, &rt)?
    };
    tracing::info!(
        train = train.len(),
        val = val.len(),
        epochs = config.epochs,
        engine = ?trainer.engine(),
        "training {arch} ({} classes)",
        all.num_classes()
    );

    let meter = EnergyMeter::for_device(&a.device);
    let run = RunInfo {
        arch,
        init: init_name.as_deref(),
        classes: all.class_names(),
        train_images: train.len(),
        val_images: val.len(),
        energy_source: meter.source(),
    };
    let mut this_call = 0;
    while !trainer.finished() && a.max_epochs_now.is_none_or(|m| this_call < m) {
        let epoch = trainer.epochs_done() + 1;
        let bar = crate::progress::bar(
            train.len() as u64,
            format!("epoch {epoch}/{}", config.epochs),
        );
        let reading = meter.start();
        let outcome =
            trainer.run_epoch(&train, &val, &mut |done, _| bar.set_position(done as u64))?;
        bar.finish_and_clear();
        trainer.set_last_energy(meter.joules_since(&reading));
        // The checkpoint's model is the current model: written as best.ir first when it
        // improved, so a checkpoint never names a best epoch whose model is missing.
        let checkpoint = trainer.checkpoint()?;
        if outcome.improved {
            write_artifact(&a.out_dir.join("best.ir"), &checkpoint.model)?;
        }
        write_artifact(&ckpt_path, &checkpoint)?;
        write_metrics(&a, &trainer, &run, None)?;
        let m = &outcome.metrics;
        eprintln!(
            "epoch {epoch}: loss {:.4} train {:.2}% val {} lr {:.3e} {:.0} img/s {:.0} s",
            m.train_loss,
            100.0 * m.train_acc,
            m.val_acc
                .map_or("-".to_string(), |v| format!("{:.2}%", 100.0 * v)),
            m.lr,
            m.images_per_s,
            m.wall_s
        );
        this_call += 1;
    }
    let test = if a.eval_test && trainer.finished() {
        let best: ModelIr = decomp_ir::read_artifact(&a.out_dir.join("best.ir"))?;
        let test = fit_to_model(open_raw(&a, Split::Test)?, &best)?;
        let exec = rt.executor(&best)?;
        let report = evaluate(&exec, &test, best.num_classes(), 256, false)?.finish();
        outln!(
            "test top-1 {:.2}% top-5 {:.2}% on {} images",
            report.top1,
            report.top5,
            report.n
        );
        Some(report)
    } else {
        None
    };
    write_metrics(&a, &trainer, &run, test.as_ref())?;
    outln!("{}", a.out_dir.display());
    Ok(())
}

/// What `metrics.json` says about the run besides the trainer's history.
struct RunInfo<'a> {
    arch: String,
    init: Option<&'a str>,
    classes: &'a [String],
    train_images: usize,
    val_images: usize,
    energy_source: &'static str,
}

fn write_metrics(
    a: &TrainArgs,
    t: &Trainer,
    run: &RunInfo,
    test: Option<&decomp_eval::EvalReport>,
) -> Result<()> {
    let h = t.history();
    let best = t.best();
    let energy: Option<f64> = h.iter().map(|m| m.energy_j).sum();
    let model = &run.arch;
    let file = TrainMetrics {
        recipe: a.recipe.clone(),
        config: t.config(),
        model: model.clone(),
        init: run.init.map(str::to_string),
        dataset: a.dataset.clone(),
        classes: run.classes.to_vec(),
        train_images: run.train_images,
        val_images: run.val_images,
        epochs: h.to_vec(),
        best_epoch: best.map(|b| b.epoch),
        best_val_acc: best.map(|b| b.accuracy),
        wall_s: h.iter().map(|m| m.wall_s).sum(),
        wall_s_to_best: best.map(|b| h.iter().take(b.epoch).map(|m| m.wall_s).sum()),
        energy_j: energy,
        energy_source: run.energy_source.to_string(),
        power_w_declared: a.declared_power_w,
        test_top1: test.map(|r| r.top1),
        test_top5: test.map(|r| r.top5),
        test_images: test.map(|r| r.n),
        device: a.device.clone(),
    };
    write_atomic(
        &a.out_dir.join("metrics.json"),
        serde_json::to_string_pretty(&file)?.as_bytes(),
    )?;
    let mut csv = String::from(
        "epoch,lr,train_loss,train_acc,val_loss,val_acc,wall_s,images_per_s,energy_j\n",
    );
    let opt = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v}"));
    for m in h {
        csv.push_str(&format!(
            "{},{},{},{},{},{},{},{},{}\n",
            m.epoch,
            m.lr,
            m.train_loss,
            m.train_acc,
            opt(m.val_loss),
            opt(m.val_acc),
            m.wall_s,
            m.images_per_s,
            opt(m.energy_j)
        ));
    }
    write_atomic(&a.out_dir.join("metrics.csv"), csv.as_bytes())?;
    crate::plot::learning_curves(
        &a.out_dir.join("curves.svg"),
        &format!("{model} {} ({})", a.recipe, a.dataset),
        h,
    )
}
