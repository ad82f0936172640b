//! `decomp compose`: composes module files (of one or several models) and evaluates them by
//! voting. Element modules run as one batched pass per model, channel modules (physically
//! small graphs) as separate timed passes; everything around the run (reading the modules,
//! the `--classes` check and class subset, progress, accuracy, margins, JSON) is shared.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use decomp_compose::{
    ChannelRun, ComposedRun, Mode, channel_compose_report, compose, compose_channel, compose_report,
};
use decomp_eval::EvalReport;
use decomp_eval::report::{
    ChannelComposeReport, ComposeReport, ComposedAccuracy, MarginModule, Margins,
};
use decomp_ir::{ArtifactKind, ChannelModule, ModelIr, ModuleIr};

use crate::args::{DataArgs, ModelArgs, runtime};
use crate::data::{composed_data, image_set};
use crate::files::{read_artifact, write_atomic};

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

/// The modules of one `compose`, read and checked.
enum Modules {
    Element(Vec<ModuleIr>),
    /// Channel modules, and the source model when `--reference-model` names it.
    Channel(Vec<ChannelModule>, Option<ModelIr>),
}

impl Modules {
    /// Reads `paths`: channel modules when the first is one (all must be), else element
    /// modules. Refuses the flags the kind has no use for.
    fn read(a: &ComposeArgs) -> Result<Self> {
        let channel =
            decomp_ir::artifact::peek_kind(&a.modules[0])? == Some(ArtifactKind::ChannelModule);
        if !channel {
            if a.reference_model.is_some() {
                bail!(
                    "--reference-model applies to channel modules; element modules carry their whole model, whose accuracy compose reports anyway"
                );
            }
            let modules = a
                .modules
                .iter()
                .map(|p| {
                    read_artifact(p).with_context(|| format!("reading module {}", p.display()))
                })
                .collect::<Result<_>>()?;
            return Ok(Self::Element(modules));
        }
        if a.naive {
            bail!(
                "--naive applies to element modules (one pass per module instead of one batched pass); channel modules always run as separate passes"
            );
        }
        let mut modules: Vec<ChannelModule> = Vec::with_capacity(a.modules.len());
        for p in &a.modules {
            if decomp_ir::artifact::peek_kind(p)? != Some(ArtifactKind::ChannelModule) {
                bail!(
                    "{}: not a channel module; channel and element modules cannot be composed together",
                    p.display()
                );
            }
            modules
                .push(read_artifact(p).with_context(|| format!("reading module {}", p.display()))?);
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
        let reference = match &a.reference_model {
            Some(w) => {
                let m = crate::model_source::load_model(&ModelArgs {
                    arch: None,
                    weights: w.clone(),
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
        Ok(Self::Channel(modules, reference))
    }

    fn len(&self) -> usize {
        match self {
            Self::Element(m) => m.len(),
            Self::Channel(m, _) => m.len(),
        }
    }

    /// Each module's class, class name and source model hash.
    fn columns(&self) -> Vec<(usize, &str, &str)> {
        match self {
            Self::Element(m) => m
                .iter()
                .map(|m| (m.class, m.class_name.as_str(), m.model_hash.as_str()))
                .collect(),
            Self::Channel(m, _) => m
                .iter()
                .map(|m| (m.class, m.class_name.as_str(), m.model_hash.as_str()))
                .collect(),
        }
    }

    /// The graph whose input the images are fitted to (the first module's).
    fn input_model(&self) -> &ModelIr {
        match self {
            Self::Element(m) => &m[0].model,
            Self::Channel(m, _) => &m[0].module,
        }
    }

    fn ranking(&self) -> decomp_ir::Top5Ranking {
        match self {
            Self::Element(m) => m[0].config.top5_ranking,
            Self::Channel(m, _) => m[0].config.top5_ranking,
        }
    }
}

/// The outcome of either kind of run.
enum Ran {
    Element(ComposedRun),
    Channel(ChannelRun),
}

impl Ran {
    fn run(&self) -> &ComposedRun {
        match self {
            Self::Element(r) => r,
            Self::Channel(r) => &r.run,
        }
    }
}

/// The report of either kind.
enum Report {
    Element(ComposeReport),
    Channel(ChannelComposeReport),
}

pub fn run(a: ComposeArgs) -> Result<()> {
    for p in &a.modules {
        crate::files::input(p);
    }
    crate::data::register_inputs(&a.data)?;
    for out in a.out.iter().chain(&a.save_margins) {
        crate::files::check_output(out)?;
    }
    if let (Some(o), Some(m)) = (&a.out, &a.save_margins)
        && decomp_ir::output::FileId::of_output(o)
            .zip(decomp_ir::output::FileId::of_output(m))
            .is_some_and(|(x, y)| x.same(&y))
    {
        bail!(
            "--out and --save-margins name the same file {}",
            o.display()
        );
    }
    let modules = Modules::read(&a)?;
    let columns = modules.columns();
    let own: Vec<(usize, &str)> = columns.iter().map(|&(c, n, _)| (c, n)).collect();
    let (classes, data, identity) = composed_data(
        a.classes.as_deref(),
        &own,
        &a.modules,
        modules.input_model(),
        &a.data,
    )?;
    let rt = runtime(&a.device)?;
    let k = modules.len();
    let start = Instant::now();
    let b = crate::progress::bar(data.len() as u64, format!("compose {k}"));
    let progress = &mut |n: usize| b.inc(n as u64);
    let mode = if a.naive { Mode::Naive } else { Mode::Batched };
    let ranking = modules.ranking();
    let ran = match &modules {
        Modules::Element(m) => Ran::Element(compose(
            m,
            &data,
            &rt,
            a.batch_size,
            ranking,
            mode,
            progress,
        )?),
        Modules::Channel(m, reference) => {
            let reference = reference
                .as_ref()
                .filter(|r| r.num_classes() == k && identity);
            Ran::Channel(compose_channel(
                m,
                &data,
                &rt,
                a.batch_size,
                ranking,
                reference,
                progress,
            )?)
        }
    };
    b.finish_and_clear();
    let seconds = start.elapsed().as_secs_f64();
    let run = ran.run();
    let (composed, model) = run.accuracy(k)?;
    let paths: Vec<String> = a.modules.iter().map(|p| p.display().to_string()).collect();
    let report = match (&modules, &ran) {
        (Modules::Channel(m, reference), Ran::Channel(r)) => {
            let bytes: Vec<u64> = a
                .modules
                .iter()
                .map(|p| std::fs::metadata(p).map_or(0, |x| x.len()))
                .collect();
            let reference = reference.as_ref();
            Report::Channel(channel_compose_report(
                m,
                &paths,
                &bytes,
                r,
                &composed,
                model.as_ref(),
                reference,
                seconds,
            )?)
        }
        (Modules::Element(m), _) => Report::Element(compose_report(
            m,
            paths.clone(),
            &composed,
            model.as_ref(),
            seconds,
            mode,
        )?),
        (Modules::Channel(..), Ran::Element(_)) => {
            unreachable!("channel modules run as channel modules")
        }
    };
    if let Some(p) = &a.save_margins {
        let columns = columns
            .iter()
            .zip(&paths)
            .map(|(&(class, name, hash), path)| MarginModule {
                path: path.clone(),
                class,
                class_name: name.to_string(),
                model_hash: hash.to_string(),
            })
            .collect();
        save_margins(
            p,
            image_set(&a.data, &classes),
            data.class_names(),
            columns,
            run,
            model.as_ref(),
            seconds,
        )?;
    }
    let text = match &report {
        Report::Element(r) => serde_json::to_string(r)?,
        Report::Channel(r) => serde_json::to_string(r)?,
    };
    if let Some(p) = &a.out {
        write_atomic(p, text.as_bytes())?;
    }
    if a.json {
        outln!("{text}");
        return Ok(());
    }
    match &report {
        Report::Element(out) => {
            outln!(
                "{} modules on {} images ({:.1} s, {})",
                k,
                out.accuracy.n,
                seconds,
                out.mode
            );
            print_accuracy(&out.accuracy);
            outln!(
                "module size mean {:.3}, mean pairwise overlap {:.3}",
                out.mean_module_size,
                out.mean_overlap
            );
        }
        Report::Channel(out) => {
            outln!(
                "{k} channel modules on {} images ({seconds:.1} s, separate passes)",
                out.accuracy.n
            );
            print_accuracy(&out.accuracy);
            outln!(
                "mean module FLOPs {:.1}% of the model, parameters {:.1}%, file {:.0} bytes",
                out.mean_flops_percent,
                out.mean_params_percent,
                out.mean_bytes
            );
            if let Some(t) = out.mean_time_ratio {
                outln!("mean module time {:.2}x the model's", t);
            }
        }
    }
    Ok(())
}

fn print_accuracy(a: &ComposedAccuracy) {
    if let (Some(t1), Some(t5)) = (a.model_top1, a.model_top5) {
        outln!("model     top-1 {t1:.2}%  top-5 {t5:.2}%");
    }
    outln!(
        "composed  top-1 {:.2}%  top-5 {:.2}%",
        a.composed_top1,
        a.composed_top5
    );
}

/// Writes the margins file of `compose --save-margins` (element and channel modules alike):
/// `run`'s labels and margins over `images` ([`image_set`]), one `modules` entry per
/// column, the source model's accuracy on the same images when it ran, and each image's
/// label rank (composed and model) for paired statistics.
fn save_margins(
    path: &Path,
    images: String,
    class_names: &[String],
    modules: Vec<MarginModule>,
    run: &ComposedRun,
    model: Option<&EvalReport>,
    seconds: f64,
) -> Result<()> {
    let m = Margins {
        composed_rank: Some(run.label_rank.clone()),
        model_rank: run.model_rank.clone(),
        ..Margins::new(
            images,
            class_names.to_vec(),
            modules,
            run.labels.clone(),
            run.margins.clone(),
            model,
            seconds,
        )
    };
    write_atomic(path, serde_json::to_string(&m)?.as_bytes())
}
