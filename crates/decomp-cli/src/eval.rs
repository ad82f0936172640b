//! `decomp eval`: top-1 / top-5 / per-class accuracy of a model on a dataset split.

use std::time::Instant;

use anyhow::{Context, Result, bail};
use decomp_data::{Dataset, Split};
use decomp_eval::report::ModelEval;
use decomp_eval::{Accumulator, most_confused};
use decomp_model::{Executor, ExecutorSource, to_vec};

use crate::args::{DataArgs, ModelArgs, runtime};
use crate::data::{data_file, open_dataset};

#[derive(clap::Args)]
pub struct EvalArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    data: DataArgs,
    /// Evaluate on these classes only (names or indices, comma-separated), relabelled
    /// 0..k-1 in the order given: the test images of a model trained with `decomp train
    /// --classes`. `--limit` counts images before this selection, as in `compose`. Without
    /// it, a model whose class names are some of the dataset's (one trained with `--classes`)
    /// is evaluated on the images of its classes.
    #[arg(long, value_delimiter = ',')]
    classes: Vec<String>,
    /// Print one JSON object on stdout instead of a table.
    #[arg(long)]
    json: bool,
    /// Also write every image's label and label rank (`per_image` in the JSON, in image
    /// order), for paired comparisons with another evaluation of the same images.
    #[arg(long, requires = "json")]
    per_image: bool,
    /// Images per forward pass.
    #[arg(long, default_value_t = 128, value_parser = crate::flags::positive_usize)]
    batch_size: usize,
    /// Device: cpu, or cuda[:N] / wgpu when built with those features.
    #[arg(long, default_value = "cpu")]
    device: String,
}

/// Runs `model` over `ds` and accumulates accuracy and the confusion matrix, with a
/// progress bar on stderr; with `per_image`, also every image's label and label rank.
pub fn evaluate(
    exec: &Executor,
    ds: &Dataset,
    classes: usize,
    batch_size: usize,
    per_image: bool,
) -> Result<Accumulator> {
    if batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let bar = crate::progress::images_bar(ds.len() as u64, "eval");
    let mut acc = Accumulator::new(classes).for_node(exec.output_name());
    if per_image {
        acc = acc.keep_images();
    }
    for batch in ds.batches(batch_size) {
        let batch = batch?;
        let n = batch.labels.len();
        let x = exec.input_tensor(batch.images, n)?;
        let logits = to_vec(exec.forward(x)?);
        acc.add(&logits, &batch.labels)?;
        bar.inc(n as u64);
    }
    bar.finish_and_clear();
    Ok(acc)
}

pub fn run(a: EvalArgs) -> Result<()> {
    let model = crate::model_source::load_model(&a.model)?;
    let mut ds = open_dataset(&a.data, &model)?;
    if a.classes.is_empty() {
        // A model of some of the dataset's classes: their images.
        ds = crate::data::model_classes(ds, &model)?;
    } else {
        let idx = crate::flags::resolve_classes(
            "--classes",
            &a.classes,
            ds.class_names(),
            ds.num_classes(),
        )?;
        ds = ds.subset_classes(&idx)?;
        if ds.is_empty() {
            bail!(
                "{}: no image of --classes {} in the {} split",
                crate::data::describe_source(&a.data),
                a.classes.join(","),
                a.data.split.unwrap_or(Split::Test)
            );
        }
    }
    let classes = model.num_classes();
    if ds.num_classes() > classes {
        bail!(
            "dataset {} has {} classes, the model predicts {classes}",
            a.data.dataset,
            ds.num_classes()
        );
    }
    let exec = runtime(&a.device)?.executor(&model)?;
    let start = Instant::now();
    let acc = evaluate(&exec, &ds, classes, a.batch_size, a.per_image)
        .with_context(|| format!("evaluating {} on {}", model.meta.arch, a.data.dataset))?;
    let report = acc.finish();
    let seconds = start.elapsed().as_secs_f64();
    let out = ModelEval {
        model: model.meta.arch.clone(),
        weights: a.model.weights.clone(),
        dataset: a.data.dataset.clone(),
        split: if data_file(&a.data).is_some() {
            "file"
        } else {
            a.data.split.unwrap_or(Split::Test).name()
        }
        .to_string(),
        top1: report.top1,
        top5: report.top5,
        n: report.n,
        per_class: report.per_class,
        per_class_n: report.per_class_n,
        class_names: model.meta.class_names.clone(),
        seconds,
        images_per_second: report.n as f64 / seconds.max(1e-9),
        per_image: acc.per_image().cloned(),
        confusion: acc.confusion(),
    };
    if a.json {
        outln!("{}", serde_json::to_string(&out)?);
        return Ok(());
    }
    outln!(
        "{} on {} ({}): {} images, {:.1} s ({:.0} images/s)",
        out.model,
        out.dataset,
        out.split,
        out.n,
        seconds,
        out.images_per_second
    );
    outln!("top-1 {:.2}%  top-5 {:.2}%", out.top1, out.top5);
    outln!(
        "{:<16} {:>7} {:>8}  {}",
        "class",
        "images",
        "top-1 %",
        "most often predicted instead (images)"
    );
    for (c, ((name, n), acc)) in out
        .class_names
        .iter()
        .zip(&out.per_class_n)
        .zip(&out.per_class)
        .enumerate()
    {
        let confused = out
            .confusion
            .as_ref()
            .and_then(|m| most_confused(&m[c], c))
            .map_or(String::new(), |(p, k)| {
                format!(
                    "{} ({k})",
                    out.class_names.get(p).map_or("?", |s| s.as_str())
                )
            });
        outln!("{name:<16} {n:>7} {acc:>8.2}  {confused}");
    }
    Ok(())
}
