//! `decomp eval`: top-1 / top-5 / per-class accuracy of a model on a dataset split.

use std::time::Instant;

use anyhow::{Context, Result, bail};
use decomp_data::{DataRoot, Dataset, DatasetFolder, DatasetKind, Normalization, Split};
use decomp_eval::{Accumulator, EvalReport};
use decomp_ir::ModelIr;
use decomp_model::{Executor, parse_device, to_vec};
use serde::Serialize;

use crate::{DataArgs, ModelArgs};

#[derive(clap::Args)]
pub struct EvalArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    data: DataArgs,
    /// Print one JSON object on stdout instead of a table.
    #[arg(long)]
    json: bool,
    /// Images per forward pass.
    #[arg(long, default_value_t = 128, value_parser = crate::flags::positive_usize)]
    batch_size: usize,
    /// Device: cpu, or cuda[:N] / wgpu when built with those features.
    #[arg(long, default_value = "cpu")]
    device: String,
}

#[derive(Serialize)]
struct EvalOutput<'a> {
    model: &'a str,
    weights: &'a str,
    dataset: String,
    split: &'a str,
    top1: f64,
    top5: f64,
    n: usize,
    per_class: &'a [f64],
    per_class_n: &'a [usize],
    class_names: &'a [String],
    seconds: f64,
    images_per_second: f64,
}

/// Opens the dataset the flags describe, as stored (native shape and statistics); the split
/// defaults to test. The data folder is resolved by `decomp_data::locate` (the same for every
/// command and the xtask); a missing dataset is downloaded unless `--offline`. Registers what
/// it reads as inputs of the command (`crate::files`).
pub fn open_raw_dataset(args: &DataArgs) -> Result<Dataset> {
    let kind = DatasetKind::parse(&args.dataset)?;
    let split = args.split.unwrap_or(Split::Test);
    register_inputs(args)?;
    Ok(if let Some(file) = data_file(args) {
        Dataset::from_cifar_file(kind, file)?
    } else if let Some(folder) = &args.dataset_path {
        // A folder named outright is fetched only when its name says what it is (the official
        // folder name or a known subset); otherwise its error gives no download advice.
        let name = folder.file_name().map(|n| n.to_string_lossy().to_string());
        let want = name.map(|n| DatasetFolder::named(kind, &n));
        if let (Some(want), Some(parent)) = (want.filter(|w| w.source().is_some() && !folder.exists()), folder.parent()) {
            DataRoot::at(parent).ensure(&want)?;
        }
        Dataset::load_folder(kind, folder, split)?
    } else {
        let folder = data_root(args.data_dir.as_deref())?.ensure(&DatasetFolder::official(kind))?;
        crate::files::input_tree(&folder);
        Dataset::load_folder(kind, &folder, split)?
    })
}

/// `--data-file`, or a `--data-dir` that is a file of records.
fn data_file(args: &DataArgs) -> Option<&std::path::PathBuf> {
    args.data_file.as_ref().or(args.data_dir.as_ref().filter(|d| d.is_file()))
}

/// The data folder: `--data-dir`, else $DECOMP_DATA_DIR, else `../shared/datasets` beside the
/// working directory when present, else the user cache.
pub fn data_root(flag: Option<&std::path::Path>) -> Result<DataRoot> {
    let cwd = std::env::current_dir().context("reading the working directory")?;
    Ok(DataRoot::resolve(flag, &cwd))
}

/// Registers the files and folders `args` reads as inputs of the command (`crate::files`),
/// so that no output can replace them; call it before checking outputs.
pub fn register_inputs(args: &DataArgs) -> Result<()> {
    let kind = DatasetKind::parse(&args.dataset)?;
    if let Some(file) = data_file(args) {
        crate::files::input(file);
    } else if let Some(folder) = &args.dataset_path {
        crate::files::input_tree(folder);
    } else {
        let root = data_root(args.data_dir.as_deref())?;
        let want = DatasetFolder::official(kind);
        crate::files::input_tree(&root.find(&want).unwrap_or_else(|| root.dir.join(&want.name)));
    }
    Ok(())
}

/// Where the images of `args` come from, for messages.
pub fn describe_source(args: &DataArgs) -> String {
    match (&args.data_file, &args.dataset_path, &args.data_dir) {
        (Some(f), _, _) => f.display().to_string(),
        (None, Some(p), _) => p.display().to_string(),
        (None, None, Some(d)) => format!("{} in {}", args.dataset, d.display()),
        (None, None, None) => format!("{} in the default data folder", args.dataset),
    }
}

/// Converts `ds` to the channels and size `model` takes, normalized the way it expects.
pub fn fit_to_model(ds: Dataset, model: &ModelIr) -> Result<Dataset> {
    let [c, h, w] = model.graph.input_shape()?;
    let mut ds = ds;
    if ds.image_shape()[0] != c {
        ds = ds.with_channels(c)?;
    }
    if ds.image_shape()[1..] != [h, w] {
        ds = ds.with_resize(h, w)?;
    }
    let norm = Normalization::new(&model.meta.input_norm.mean, &model.meta.input_norm.std);
    Ok(ds.with_normalization(norm))
}

/// Opens the dataset the flags describe, normalized the way `model` expects; the first
/// `--limit` images. An empty result is an error, never "0 images, top-1 0.00%".
pub fn open_dataset(args: &DataArgs, model: &ModelIr) -> Result<Dataset> {
    let ds = fit_to_model(open_raw_dataset(args)?, model)?;
    let ds = match args.limit {
        Some(n) => ds.take(n),
        None => ds,
    };
    if ds.is_empty() {
        bail!("{}: no images in the {} split", describe_source(args), args.split.unwrap_or(Split::Test));
    }
    Ok(ds)
}

/// Runs `model` over `ds` and accumulates accuracy, with a progress bar on stderr.
pub fn evaluate(exec: &Executor, ds: &Dataset, classes: usize, batch_size: usize) -> Result<EvalReport> {
    if batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let bar = indicatif::ProgressBar::new(ds.len() as u64).with_style(
        indicatif::ProgressStyle::with_template(
            "{prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} images ({per_sec}, eta {eta})",
        )
        .expect("valid template"),
    );
    bar.set_prefix("eval");
    let mut acc = Accumulator::new(classes).for_node(exec.output_name());
    for batch in ds.batches(batch_size) {
        let batch = batch?;
        let n = batch.labels.len();
        let x = exec.input_tensor(batch.images, n)?;
        let logits = to_vec(exec.forward(x)?);
        acc.add(&logits, &batch.labels)?;
        bar.inc(n as u64);
    }
    bar.finish_and_clear();
    Ok(acc.finish())
}

pub fn run(a: EvalArgs) -> Result<()> {
    let model = crate::model_source::load_model(&a.model)?;
    let ds = open_dataset(&a.data, &model)?;
    let classes = model.num_classes();
    if ds.num_classes() > classes {
        bail!(
            "dataset {} has {} classes, the model predicts {classes}",
            a.data.dataset,
            ds.num_classes()
        );
    }
    let device = parse_device(&a.device)?;
    let exec = Executor::new(&model, &device)?;
    let start = Instant::now();
    let report = evaluate(&exec, &ds, classes, a.batch_size)
        .with_context(|| format!("evaluating {} on {}", model.meta.arch, a.data.dataset))?;
    let seconds = start.elapsed().as_secs_f64();
    let out = EvalOutput {
        model: &model.meta.arch,
        weights: &a.model.weights,
        dataset: a.data.dataset.clone(),
        split: if data_file(&a.data).is_some() { "file" } else { a.data.split.unwrap_or(Split::Test).name() },
        top1: report.top1,
        top5: report.top5,
        n: report.n,
        per_class: &report.per_class,
        per_class_n: &report.per_class_n,
        class_names: &model.meta.class_names,
        seconds,
        images_per_second: report.n as f64 / seconds.max(1e-9),
    };
    if a.json {
        outln!("{}", serde_json::to_string(&out)?);
        return Ok(());
    }
    outln!("{} on {} ({}): {} images, {:.1} s ({:.0} images/s)", out.model, out.dataset, out.split, out.n, seconds, out.images_per_second);
    outln!("top-1 {:.2}%  top-5 {:.2}%", out.top1, out.top5);
    outln!("{:<16} {:>7} {:>8}", "class", "images", "top-1 %");
    for ((name, n), acc) in out.class_names.iter().zip(out.per_class_n).zip(out.per_class) {
        outln!("{name:<16} {n:>7} {acc:>8.2}");
    }
    Ok(())
}
