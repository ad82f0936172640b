//! Table 1 (METHOD.md section 7): every pretrained and zoo model decomposed with the three
//! variants (models without BatchNorm at both mask sites), all modules composed on the test
//! split, against the model on the same images, with a paired bootstrap interval of each
//! difference, JI as METHOD.md defines it and module-vs-module overlap; the paper's rows
//! beside ours.
//!
//! Units: `import` per pretrained model, `decompose` per (model, mask site or ablation,
//! class), `margins` per (model, site, variant): `decomp compose --save-margins` of all
//! modules, whose margins file carries the per-image ranks of the label (composed and
//! model) that the intervals resample.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use decomp_eval::report::{ComposeReport, Margins};
use decomp_ir::DecompConfig;
use serde_json::json;

use super::format::signed;
use super::paper::PAPER_TABLE1;
use super::units::Split;
use super::{Model, Run};
use crate::engine::{Kind, read, unit_wall_s};
use crate::manifest::{DecomposeSpec, Manifest, Table1Spec};
use crate::stats::{Interval, paired_bootstrap};

/// The paper's mean loss from decomposition over its 9 models, MC-BLN (top-1, top-5) and
/// plain CI+TI+MC (METHOD.md section 7).
const PAPER_MEAN_LOSS: [(&str, f64, f64); 2] = [("mc-bln", 1.77, 0.85), ("ci-ti-mc", 3.46, 2.54)];

/// Issue 15's goal: mean composed top-1 loss over the no-BN CIFAR-10 R20/R32/R56, MC-BLN.
const GOAL_LOSS: f64 = 0.5;

/// One row of the table (`table1.json`).
#[derive(serde::Serialize)]
struct Row {
    model: String,
    source: &'static str,
    dataset: String,
    batch_norm: bool,
    /// Mask site, or an ablation's flags.
    mask_site: String,
    ablation: bool,
    variant: String,
    n: usize,
    model_top1: f64,
    model_top5: f64,
    composed_top1: f64,
    composed_top5: f64,
    /// Composed minus model, points, with the 95% paired bootstrap interval.
    delta_top1: Interval,
    delta_top5: Interval,
    /// METHOD.md's JI: mean fraction of the model's layer positions a module keeps.
    ji: f64,
    /// Per module.
    module_size: Vec<f64>,
    mean_overlap: f64,
    decompose_seconds: f64,
    compose_seconds: f64,
    /// The METHOD.md knobs of the modules.
    config: DecompConfig,
}

/// A model of the table.
struct Entry {
    /// Role or zoo run name.
    label: String,
    /// `pretrained` or `zoo`.
    source: &'static str,
    /// Dataset (and input size) in words.
    dataset: String,
    model: Model,
    batch_norm: bool,
}

/// One decomposition setting of one model: mask site, or an ablation's flags.
struct Setting {
    /// `relu-input`, `conv-output`, or the ablation's flags.
    label: String,
    spec: DecomposeSpec,
    variants: Vec<String>,
    ablation: bool,
}

pub fn table1(r: &Run) -> Result<()> {
    let spec =
        r.m.table1
            .clone()
            .context("a table1 manifest needs [table1]")?;
    let (entries, untrained) = entries(r, &spec)?;
    let mut index = 0;
    let mut rows = Vec::new();
    let mut complete = true;
    for e in &entries {
        let k = e.model.data.num_classes;
        let classes: Vec<usize> = (0..k).collect();
        for set in settings(r, &spec, e) {
            let mut units = Vec::new();
            for c in 0..k {
                let name = format!("{}-{}-class{c:03}", e.label, set.label.replace(' ', ""));
                units.push(r.decompose_class(&e.model, c, index, &set.spec, &name)?);
                index += 1;
            }
            for v in &set.variants {
                let idx = index;
                index += 1;
                let Some(units) = units.iter().cloned().collect::<Option<Vec<PathBuf>>>() else {
                    complete = false;
                    continue;
                };
                let modules: Vec<PathBuf> = units
                    .iter()
                    .enumerate()
                    .map(|(c, u)| u.join(v).join(format!("module_{c:03}.mod")))
                    .collect();
                let hashes = r.hashes(&modules)?;
                // `ranks`: the margins file must carry per-image ranks (older ones do not).
                let key = json!({ "modules": hashes, "data": e.model.data.key, "classes": classes, "limit": r.limit(), "ranks": true });
                let name = format!("{}-{}-{v}", e.label, set.label.replace(' ', ""));
                let Some(margins) = r.margins_unit(
                    &name,
                    &modules,
                    &e.model.data,
                    &classes,
                    Kind::PerUnit,
                    idx,
                    &key,
                    Split::Test,
                )?
                else {
                    complete = false;
                    continue;
                };
                let decompose_s: f64 = units.iter().map(|u| unit_wall_s(u)).sum::<Result<f64>>()?;
                rows.push((
                    e,
                    set.label.clone(),
                    set.ablation,
                    v.clone(),
                    margins,
                    decompose_s,
                ));
            }
        }
    }
    if !complete || !r.reporting()? {
        return Ok(());
    }
    let mut js = Vec::new();
    let mut gated = Vec::new();
    for (e, site, ablation, variant, margins, decompose_s) in &rows {
        let compose: ComposeReport = read(&margins.with_file_name("compose.json"))?;
        let m: Margins = read(margins)?;
        if !gated.contains(&e.label) {
            let what = format!("{} ({} model {})", e.label, e.source, e.model.ir.display());
            r.gate_compose(&what, &compose, e.model.data.num_classes)?;
            gated.push(e.label.clone());
        }
        let (t1, t5) = intervals(margins, &m, &compose, &spec)?;
        let acc = &compose.accuracy;
        js.push(Row {
            model: e.label.clone(),
            source: e.source,
            dataset: e.dataset.clone(),
            batch_norm: e.batch_norm,
            mask_site: site.clone(),
            ablation: *ablation,
            variant: variant.clone(),
            n: acc.n,
            model_top1: acc.model_top1.unwrap_or(f64::NAN),
            model_top5: acc.model_top5.unwrap_or(f64::NAN),
            composed_top1: acc.composed_top1,
            composed_top5: acc.composed_top5,
            delta_top1: t1,
            delta_top5: t5,
            ji: compose.mean_module_size,
            mean_overlap: compose.mean_overlap,
            module_size: compose.module_size,
            decompose_seconds: *decompose_s,
            compose_seconds: compose.seconds,
            config: compose.config,
        });
    }
    report(r, &spec, &js, &untrained)
}

/// The models of the table: `[models.*]` (pretrained checkpoints and ONNX models, imported),
/// then the zoo's trained runs; and the zoo runs without weights yet.
fn entries(r: &Run, spec: &Table1Spec) -> Result<(Vec<Entry>, Vec<String>)> {
    let mut out = Vec::new();
    for role in r.m.models.keys() {
        let Some(model) = r.model(role)? else {
            continue;
        };
        let spec = &r.m.models[role];
        let ds = &r.m.data[&spec.data];
        // An ONNX model a user brings (issue 20), or a pretrained checkpoint.
        let onnx = spec.weights.as_ref().is_some_and(|w| {
            std::path::Path::new(w)
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("onnx"))
        });
        let source = if onnx { "onnx" } else { "pretrained" };
        out.push(entry(role, source, model, &ds.dataset)?);
    }
    let mut untrained = Vec::new();
    if let Some(zoo_name) = &spec.zoo {
        let (_, zoo) = Manifest::load(&r.env.root, zoo_name)?;
        let dir = super::zoo::weights_dir(&r.env.root, &zoo);
        for (name, ms) in &zoo.models {
            let ir = dir.join(format!("{name}.ir"));
            let ds = zoo.data.get(&ms.data).with_context(|| {
                format!(
                    "zoo manifest {zoo_name}: [models.{name}] reads [data.{}], which is missing",
                    ms.data
                )
            })?;
            let data = r.data_of(ds)?;
            // Only the model the zoo trains now: weights of an earlier configuration of the
            // run (retraining with more epochs) are not its.
            let current = match &ms.train {
                Some(t) => {
                    let key = r.train_key(&data, None, t)?;
                    super::zoo::published_is_current(r, &dir, name, &key)?
                }
                None => ir.is_file(),
            };
            if !current {
                untrained.push(name.clone());
                continue;
            }
            let arch = ms.train.as_ref().map_or(name.clone(), |t| t.arch.clone());
            let model = Model {
                hash: r.eng.file_hash(&ir)?,
                ir,
                data,
                arch,
            };
            out.push(entry(name, "zoo", model, &ds.dataset)?);
        }
    }
    Ok((out, untrained))
}

fn entry(label: &str, source: &'static str, model: Model, dataset: &str) -> Result<Entry> {
    let ir: decomp_ir::ModelIr = decomp_ir::read_artifact(&model.ir)
        .with_context(|| format!("reading model {}", model.ir.display()))?;
    let batch_norm = ir
        .graph
        .nodes
        .iter()
        .any(|n| matches!(n.op, decomp_ir::Op::BatchNorm2d { .. }));
    let [_, h, w] = ir.graph.input_shape()?;
    Ok(Entry {
        label: label.to_string(),
        source,
        dataset: format!("{dataset} {h}x{w}"),
        batch_norm,
        model,
    })
}

/// The decompositions of one model: every mask site (one for BatchNorm models), then the
/// ablations that name it.
fn settings(r: &Run, spec: &Table1Spec, e: &Entry) -> Vec<Setting> {
    let base = |args: Vec<String>, variants: &[String]| DecomposeSpec {
        variant: variants.join(","),
        positives: r.m.decompose.positives,
        args: r.m.decompose.args.iter().cloned().chain(args).collect(),
    };
    let mut out = Vec::new();
    if e.batch_norm {
        out.push(Setting {
            label: "relu-input".into(),
            spec: base(Vec::new(), &spec.variants),
            variants: spec.variants.clone(),
            ablation: false,
        });
    } else {
        for site in &spec.no_bn_mask_sites {
            out.push(Setting {
                label: site.clone(),
                spec: base(vec!["--mask-site".into(), site.clone()], &spec.variants),
                variants: spec.variants.clone(),
                ablation: false,
            });
        }
    }
    for a in spec.ablations.iter().filter(|a| a.model == e.label) {
        out.push(Setting {
            label: a.args.join(" "),
            spec: base(a.args.clone(), &a.variants),
            variants: a.variants.clone(),
            ablation: true,
        });
    }
    out
}

/// Per-image label ranks (composed, model) of a margins file, checked against the
/// compose report of the same run; the 95% paired bootstrap intervals of composed minus
/// model, top-1 and top-5.
fn intervals(
    path: &Path,
    m: &Margins,
    compose: &ComposeReport,
    spec: &Table1Spec,
) -> Result<(Interval, Interval)> {
    let ranks = |field: &str, r: &Option<Vec<usize>>| -> Result<Vec<usize>> {
        r.clone().with_context(|| {
            format!(
                "{}: no per-image `{field}` (a margins file of an older decomp, or modules that do not cover their model's classes): rerun with --only margins",
                path.display()
            )
        })
    };
    let (c, mo) = (
        ranks("composed_rank", &m.composed_rank)?,
        ranks("model_rank", &m.model_rank)?,
    );
    let n = c.len();
    if mo.len() != n || n == 0 {
        bail!(
            "{}: {} composed and {} model ranks, expected one per image",
            path.display(),
            n,
            mo.len()
        );
    }
    for (what, r, want) in [
        ("composed", &c, Some(compose.accuracy.composed_top1)),
        ("model", &mo, compose.accuracy.model_top1),
    ] {
        let top1 = 100.0 * r.iter().filter(|&&x| x == 0).count() as f64 / n as f64;
        if want.is_none_or(|w| (top1 - w).abs() > 1e-6) {
            bail!(
                "{}: {what} top-1 from the per-image ranks is {top1}, the compose report says {want:?}",
                path.display()
            );
        }
    }
    let hit = |r: &[usize], k: usize| r.iter().map(|&x| x < k).collect::<Vec<bool>>();
    Ok((
        paired_bootstrap(
            &hit(&mo, 1),
            &hit(&c, 1),
            spec.bootstrap,
            spec.bootstrap_seed,
        )?,
        paired_bootstrap(
            &hit(&mo, 5),
            &hit(&c, 5),
            spec.bootstrap,
            spec.bootstrap_seed,
        )?,
    ))
}

fn ci(i: &Interval) -> String {
    format!("{} [{}, {}]", signed(i.diff), signed(i.lo), signed(i.hi))
}

fn report(r: &Run, spec: &Table1Spec, rows: &[Row], untrained: &[String]) -> Result<()> {
    let mut md = format!(
        "# {}\n\nGenerated by `cargo xtask run-experiment {}` from the artifacts of the experiment (manifest `{}`); \
         {} positives per class{}.\n\n",
        r.m.title,
        r.name,
        r.manifest,
        r.m.decompose.positives,
        if r.m.decompose.args.is_empty() {
            String::new()
        } else {
            format!(", flags `{}`", r.m.decompose.args.join(" "))
        }
    );
    if !r.m.notes.trim().is_empty() {
        let _ = writeln!(md, "{}\n", r.m.notes.trim());
    }
    let _ = writeln!(
        md,
        "Every model is decomposed per class with the listed variants (models without BatchNorm at both mask sites: \
         `relu-input`, the default, masks where a ReLU follows; `conv-output`, the paper's literal reading, every \
         convolution output, also before residual adds) and all its modules are composed by voting on the test split, \
         against the model on the same images. Δ = composed − model in points, with its 95% interval from a paired \
         bootstrap over the test images ({} resamples, seed {}). JI = the fraction of the model's layer positions a \
         module keeps (METHOD.md's definition, averaged over modules; the paper does not define JI for CNNs, so its \
         0.30-0.75 are not directly comparable); overlap = mean Jaccard index of the active positions of two modules \
         of the same model. `decompose s` = the per-class decomposition units' wall time (all variants at once), \
         `compose s` = the composition's; on this machine's CPU.\n",
        spec.bootstrap, spec.bootstrap_seed
    );
    md.push_str("| model | source | dataset | BN | mask site / flags | variant | n | model top-1 | model top-5 | composed top-1 | composed top-5 | Δ top-1 [95% CI] | Δ top-5 [95% CI] | JI | overlap | decompose s | compose s |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    let mut csv = String::from(
        "model,source,dataset,batch_norm,mask_site,variant,n,model_top1,model_top5,composed_top1,composed_top5,delta_top1,delta_top1_lo,delta_top1_hi,delta_top5,delta_top5_lo,delta_top5_hi,ji,mean_overlap,decompose_seconds,compose_seconds\n",
    );
    for x in rows {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {} | {:.3} | {:.3} | {:.0} | {:.0} |",
            x.model,
            x.source,
            x.dataset,
            if x.batch_norm { "yes" } else { "no" },
            x.mask_site,
            x.variant,
            x.n,
            x.model_top1,
            x.model_top5,
            x.composed_top1,
            x.composed_top5,
            ci(&x.delta_top1),
            ci(&x.delta_top5),
            x.ji,
            x.mean_overlap,
            x.decompose_seconds,
            x.compose_seconds,
        );
        let _ = writeln!(
            csv,
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
            x.model,
            x.source,
            x.dataset,
            x.batch_norm,
            x.mask_site,
            x.variant,
            x.n,
            x.model_top1,
            x.model_top5,
            x.composed_top1,
            x.composed_top5,
            x.delta_top1.diff,
            x.delta_top1.lo,
            x.delta_top1.hi,
            x.delta_top5.diff,
            x.delta_top5.lo,
            x.delta_top5.hi,
            x.ji,
            x.mean_overlap,
            x.decompose_seconds,
            x.compose_seconds,
        );
    }
    if !untrained.is_empty() {
        let _ = writeln!(
            md,
            "\nZoo models not trained yet in their current configuration (no weights in the zoo's weights \
             folder, or weights of an earlier configuration: see the zoo's report), so not in the table: {}.",
            untrained
                .iter()
                .map(|n| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    // The paper's setting: no BatchNorm, CIFAR-10, MC-BLN.
    md.push_str("\n## The paper's setting: no BatchNorm, CIFAR-10, MC-BLN\n\n");
    let paper_c10: Vec<f64> = PAPER_TABLE1[..3].iter().map(|p| p.4 - p.2).collect();
    let paper_mean = paper_c10.iter().sum::<f64>() / 3.0;
    md.push_str("| mask site | models | mean Δ top-1 (ours) | goal | the paper's mean Δ top-1 (C10 R20/R32/R56) |\n|---|---|---|---|---|\n");
    for site in &spec.no_bn_mask_sites {
        let ours: Vec<&Row> = rows
            .iter()
            .filter(|x| {
                !x.batch_norm
                    && x.dataset.starts_with("cifar10 ")
                    && x.variant == "mc-bln"
                    && x.mask_site == *site
                    && !x.ablation
            })
            .collect();
        let mean = ours.iter().map(|x| x.delta_top1.diff).sum::<f64>() / ours.len().max(1) as f64;
        let _ = writeln!(
            md,
            "| {site} | {} | {} | ≥ {:+.1} (loss ≤ {GOAL_LOSS}) | {paper_mean:+.2} |",
            if ours.is_empty() {
                "none trained yet".into()
            } else {
                ours.iter()
                    .map(|x| x.model.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            },
            if ours.is_empty() {
                "-".into()
            } else {
                signed(mean)
            },
            -GOAL_LOSS,
        );
    }
    md.push_str(
        "\n## The paper's numbers (its Table 1, MC-BLN, its own models without BatchNorm, the original test sets; METHOD.md section 7)\n\n\
         | dataset (paper) | model | model top-1 | model top-5 | modules top-1 | modules top-5 | Δ top-1 | JI |\n|---|---|---|---|---|---|---|---|\n",
    );
    for (d, m, a, b, c, e, ji) in PAPER_TABLE1 {
        let _ = writeln!(
            md,
            "| {d} | {m} | {a:.1} | {b:.1} | {c:.1} | {e:.1} | {:+.1} | {ji:.2} |",
            c - a
        );
    }
    for (v, t1, t5) in PAPER_MEAN_LOSS {
        let _ = writeln!(
            md,
            "\nThe paper's mean loss over its 9 models, {v}: {t1} points top-1, {t5} points top-5."
        );
    }
    md.push_str(
        "\nOur Tiny ImageNet models classify the 20-class subset in `../shared` (chance 5%), the paper's 200 classes \
         (chance 0.5%): compare the Δ columns, not the accuracies. CIFAR-100 is not available here.\n\n\
         Configuration of every row (METHOD.md knobs): see `config` in `table1.json`.\n",
    );
    let out = r.out_dir();
    crate::engine::write_report(
        &out.join("table1.json"),
        &serde_json::to_string_pretty(rows)?,
    )?;
    crate::engine::write_report(&out.join("table1.csv"), &csv)?;
    crate::engine::write_report(&out.join("table1.md"), &md)?;
    crate::engine::write_report(
        &out.join("manifest.json"),
        &serde_json::to_string_pretty(&r.m)?,
    )?;
    Ok(())
}
