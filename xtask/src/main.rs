//! Orchestration: `cargo xtask run-experiment [NAME]`. Dependency-light by design: it
//! spawns the `decomp` binary and links no burn.
//!
//! `eval` and `table1` are written out here; every other experiment is a manifest under
//! `experiments/` run by the stage engine (`engine.rs`, `scenarios.rs`).

mod engine;
mod frontier;
mod manifest;
mod plot;
mod scenarios;
mod slurm;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use decomp_data::{DataRoot, DatasetFolder, DatasetKind};
use serde_json::Value;

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run an experiment end to end and write its report under `results/<name>/`.
    ///
    /// Experiments: `default` (no argument): `experiments/default.toml`, Tables 4, 6 and 2 and
    /// the CO2e comparison at reduced settings, sharing one decomposition of ResNet-20. `eval`: the four pretrained
    /// CIFAR-10 ResNets on the lossless training images and the test split. `table1`: the
    /// paper's Table 1. Any `experiments/<name>.toml` (table2..table6, co2e), or a path to a
    /// manifest. Finished stage artifacts under `runs/store` are reused.
    RunExperiment {
        /// Experiment name, or a path to a manifest `.toml`.
        #[arg(default_value = "default")]
        name: String,
        /// Recompute this stage and every later one (earlier ones must be finished).
        #[arg(long, conflicts_with = "only")]
        from: Option<String>,
        /// Recompute only this stage (earlier ones must be finished; later ones are not run).
        #[arg(long)]
        only: Option<String>,
        /// Run only shard I of N of the per-class work (`--shard 0/2`); a final run without
        /// `--shard` on the merged store builds the report.
        #[arg(long)]
        shard: Option<String>,
        /// The `decomp` binary to run (default: build decomp-cli, then target/debug/decomp).
        #[arg(long, env = "DECOMP_BIN")]
        decomp_bin: Option<PathBuf>,
        /// Folder holding the dataset folders (`cifar-10-batches-bin/`, ...). Default:
        /// $DECOMP_DATA_DIR, else `../shared/datasets` when it exists, else the user cache
        /// ($DECOMP_CACHE_DIR/datasets, default ~/.cache/decomp/datasets). A missing dataset is
        /// downloaded from its official source (verified) unless --offline.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Folder holding the `resnet*.th` checkpoints. Default: `../shared/models/cifar10`
        /// when it exists, else the cache ($DECOMP_CACHE_DIR), where the known pretrained
        /// checkpoints are downloaded (verified) unless --offline.
        #[arg(long)]
        models_dir: Option<PathBuf>,
        /// Fetch the datasets and weights the experiment needs, then stop (before a long run
        /// on a machine without internet).
        #[arg(long)]
        fetch_only: bool,
        /// Download nothing (also DECOMP_OFFLINE=1): a missing dataset or checkpoint is an
        /// error that says what is missing where.
        #[arg(long)]
        offline: bool,
        /// Where reports go.
        #[arg(long, default_value = "results")]
        out: PathBuf,
        /// Cargo features for the decomp binary (e.g. `cuda`).
        #[arg(long)]
        features: Option<String>,
        /// Device passed to every stage (cpu, cuda, wgpu).
        #[arg(long, default_value = "cpu")]
        device: String,
        /// Evaluate only the first N images of each split (quick runs).
        #[arg(long)]
        limit: Option<usize>,
        /// Where intermediate artifacts go (modules, concern sets); finished artifacts are
        /// reused on a rerun.
        #[arg(long, default_value = "runs")]
        runs: PathBuf,
        #[command(flatten)]
        slurm: slurm::SlurmArgs,
    },
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::RunExperiment {
            name,
            from,
            only,
            shard,
            decomp_bin,
            data_dir,
            models_dir,
            fetch_only,
            offline,
            out,
            features,
            device,
            limit,
            runs,
            slurm,
        } => {
            if offline {
                decomp_data::fetch::set_offline();
            }
            let data = DataRoot::resolve(data_dir.as_deref(), &engine::root());
            let models_dir = models_dir.unwrap_or_else(|| {
                let d = decomp_data::locate::shared_dir(&engine::root()).join("models/cifar10");
                if d.is_dir() {
                    d
                } else {
                    decomp_data::fetch::default_cache_dir()
                }
            });
            // Everything the experiment reads is fetched first: a missing dataset fails here,
            // in a second, not after a build.
            let (data_dir, fetched) = fetch_needs(&name, &data, &models_dir)?;
            if fetch_only {
                for p in fetched {
                    println!("{}", p.display());
                }
                return Ok(());
            }
            let models_dir = Some(models_dir);
            let ctx = Ctx {
                features,
                device,
                limit,
            };
            if matches!(name.as_str(), "eval" | "table1" | "frontier") && slurm.active()? {
                bail!("{name} is not a manifest experiment: --slurm runs experiments/*.toml only");
            }
            match name.as_str() {
                "eval" => eval_experiment(
                    &ctx,
                    &data_dir,
                    models_dir.as_deref(),
                    &engine::root().join(out).join("eval"),
                ),
                "table1" => table1(
                    &ctx,
                    &data_dir,
                    models_dir.as_deref(),
                    &engine::root().join(&out).join("table1"),
                    &engine::root().join(runs),
                ),
                "frontier" => frontier::run(
                    &ctx,
                    &data_dir,
                    models_dir.as_deref(),
                    &engine::root().join(&out).join("frontier"),
                    &engine::root().join(runs),
                ),
                manifest_name => {
                    let sel = engine::Selection {
                        only,
                        from,
                        shard: shard
                            .as_deref()
                            .map(engine::Selection::parse_shard)
                            .transpose()?,
                    };
                    let built = match decomp_bin {
                        Some(b) => b,
                        None => build_decomp(ctx.features.as_deref())?,
                    };
                    let runs = engine::root().join(runs);
                    if slurm.active()? {
                        // Tasks find the data as this process did: the same flag or defaults.
                        let data_flag = (data.origin == decomp_data::locate::Origin::Flag)
                            .then(|| data.dir.clone());
                        let job = slurm::Job::new(
                            manifest_name,
                            &engine::root(),
                            built,
                            runs,
                            data_flag,
                            models_dir,
                            engine::root().join(out),
                            ctx.device,
                            sel,
                        )?;
                        return slurm::run(&slurm, &job);
                    }
                    // A Slurm task already runs a private copy (under runs/bin): use it as is.
                    let private = built.parent() == Some(runs.join("bin").as_path());
                    let decomp = if private {
                        built.clone()
                    } else {
                        snapshot_decomp(&built, &runs)?
                    };
                    let env = scenarios::Env {
                        root: engine::root(),
                        data,
                        models_dir,
                        results: engine::root().join(out),
                    };
                    let eng = engine::Engine::new(
                        decomp.clone(),
                        ctx.device.clone(),
                        runs.join("store"),
                        sel,
                    );
                    let result = scenarios::run_manifest(&eng, &env, manifest_name);
                    if !private {
                        let _ = std::fs::remove_file(&decomp);
                    }
                    result
                }
            }
        }
    }
}

/// Fetches (unless present) the datasets and checkpoints experiment `name` reads; returns the
/// folder holding its CIFAR-10 folder (for the experiments written out here) and every path.
fn fetch_needs(name: &str, data: &DataRoot, models_dir: &Path) -> Result<(PathBuf, Vec<PathBuf>)> {
    let (datasets, weights): (Vec<(String, Option<String>)>, Vec<String>) = match name {
        "eval" | "table1" | "frontier" => (
            vec![("cifar10".to_string(), None)],
            ARCHS
                .iter()
                .filter(|a| name != "frontier" || matches!(a.0, "resnet20" | "resnet56"))
                .map(|a| format!("models:{}", a.1))
                .collect(),
        ),
        manifest_name => {
            let needs = manifest::Manifest::needs(&engine::root(), manifest_name)?;
            (
                needs
                    .data
                    .into_iter()
                    .map(|d| (d.dataset, d.path))
                    .collect(),
                needs.weights,
            )
        }
    };
    let mut fetched = Vec::new();
    let mut cifar_parent = None;
    for (dataset, path) in datasets {
        let kind = DatasetKind::parse(&dataset)?;
        let want = match &path {
            Some(p) => DatasetFolder::named(kind, p),
            None => DatasetFolder::official(kind),
        };
        let folder = data.ensure(&want)?;
        if kind == DatasetKind::Cifar10 && path.is_none() {
            cifar_parent = folder.parent().map(Path::to_path_buf);
        }
        fetched.push(folder);
    }
    for w in weights {
        let file = match w.strip_prefix("models:") {
            Some(file) => {
                if !models_dir.join(file).is_file() {
                    let remote = decomp_data::fetch::pretrained_file(file).with_context(|| {
                        format!(
                            "{file} is not in {} and is not a known pretrained checkpoint",
                            models_dir.display()
                        )
                    })?;
                    decomp_data::fetch::download_verified_locked(&remote, models_dir)?;
                }
                models_dir.join(file)
            }
            None if decomp_data::fetch::pretrained(&w).is_some() => {
                decomp_data::fetch::fetch_weights(&w, &decomp_data::fetch::default_cache_dir())?
            }
            None => PathBuf::from(w),
        };
        fetched.push(file);
    }
    let data_dir = cifar_parent.unwrap_or_else(|| data.dir.clone());
    Ok((data_dir, fetched))
}

/// Builds the `decomp` binary once and returns its path (stages run it directly, without
/// cargo's per-call overhead).
fn build_decomp(features: Option<&str>) -> Result<PathBuf> {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(engine::root()).args([
        "build",
        "--quiet",
        "--package",
        "decomp-cli",
        "--bin",
        "decomp",
    ]);
    if let Some(f) = features {
        cmd.args(["--features", f]);
    }
    let status = cmd.status().context("spawning cargo build -p decomp-cli")?;
    if !status.success() {
        bail!("cargo build -p decomp-cli failed ({status})");
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| engine::root().join("target"), PathBuf::from);
    Ok(target.join("debug").join("decomp"))
}

/// A private copy of the `decomp` binary for this run, so a rebuild of the workspace while
/// a long experiment runs cannot change the program under it.
fn snapshot_decomp(bin: &Path, runs: &Path) -> Result<PathBuf> {
    let dir = runs.join("bin");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let copy = dir.join(format!("decomp-{}", std::process::id()));
    std::fs::copy(bin, &copy)
        .with_context(|| format!("copying {} to {}", bin.display(), copy.display()))?;
    Ok(copy)
}

struct Ctx {
    features: Option<String>,
    device: String,
    limit: Option<usize>,
}

impl Ctx {
    /// Runs `decomp <args>` through cargo and returns its stdout.
    fn decomp(&self, args: &[String]) -> Result<String> {
        let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cmd.current_dir(engine::root()).args([
            "run",
            "--quiet",
            "--package",
            "decomp-cli",
            "--bin",
            "decomp",
        ]);
        if let Some(f) = &self.features {
            cmd.args(["--features", f]);
        }
        cmd.arg("--").args(args);
        eprintln!("+ decomp {}", args.join(" "));
        let out = cmd
            .stderr(std::process::Stdio::inherit())
            .output()
            .context("spawning cargo run -p decomp-cli")?;
        if !out.status.success() {
            bail!("decomp {} failed ({})", args.join(" "), out.status);
        }
        Ok(String::from_utf8(out.stdout)?)
    }
}

const ARCHS: [(&str, &str); 4] = [
    ("resnet20", "resnet20-12fca82f.th"),
    ("resnet32", "resnet32-d509ac18.th"),
    ("resnet44", "resnet44-014dd654.th"),
    ("resnet56", "resnet56-4bfd9763.th"),
];

fn eval_experiment(
    ctx: &Ctx,
    data_dir: &Path,
    models_dir: Option<&Path>,
    out: &Path,
) -> Result<()> {
    std::fs::create_dir_all(out)?;
    let lossless = data_dir.join("cifar-10-train-first4000-lossless/train_first4000.bin");
    let mut rows = Vec::new();
    for (arch, file) in ARCHS {
        let weights = match models_dir {
            Some(d) => d.join(file).display().to_string(),
            None => format!("akamaster/{arch}"),
        };
        let mut evals: Vec<(String, Vec<String>)> = vec![(
            "test".into(),
            vec![
                "--data-dir".into(),
                data_dir.display().to_string(),
                "--split".into(),
                "test".into(),
            ],
        )];
        if lossless.is_file() {
            evals.insert(
                0,
                (
                    "train_first4000_lossless".into(),
                    vec!["--data-file".into(), lossless.display().to_string()],
                ),
            );
        }
        for (split, extra) in evals {
            let mut args: Vec<String> = [
                "eval",
                "--arch",
                arch,
                "--weights",
                &weights,
                "--dataset",
                "cifar10",
                "--json",
                "--device",
                &ctx.device,
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            args.extend(extra);
            if let Some(n) = ctx.limit {
                args.extend(["--limit".into(), n.to_string()]);
            }
            let v: Value = serde_json::from_str(ctx.decomp(&args)?.trim())?;
            rows.push((arch, split, v));
        }
    }
    let mut md = String::from(
        "# Pretrained CIFAR-10 ResNets evaluated by decomp\n\n\
         Generated by `cargo xtask run-experiment eval`. Weights: akamaster/pytorch_resnet_cifar10.\n\
         The test split is the JPEG-derived rebuild in `shared/datasets` (about 10 points below the\n\
         published accuracies); `train_first4000_lossless` are original training images (expect ~100%).\n\n\
         | model | images | n | top-1 % | top-5 % | images/s |\n|---|---|---|---|---|---|\n",
    );
    let mut json = Vec::new();
    for (arch, split, v) in &rows {
        md.push_str(&format!(
            "| {arch} | {split} | {} | {:.2} | {:.2} | {:.0} |\n",
            v["n"],
            v["top1"].as_f64().unwrap_or(f64::NAN),
            v["top5"].as_f64().unwrap_or(f64::NAN),
            v["images_per_second"].as_f64().unwrap_or(f64::NAN)
        ));
        json.push(serde_json::json!({"model": arch, "images": split, "result": v}));
    }
    crate::engine::write_report(&out.join("report.md"), &md)?;
    crate::engine::write_report(
        &out.join("eval.json"),
        &serde_json::to_string_pretty(&json)?,
    )?;
    println!("report: {}", out.join("report.md").display());
    Ok(())
}

/// The paper's Table 1 (MC-BLN, CIFAR-10): model top-1/top-5, modules top-1/top-5, JI.
const PAPER_TABLE1: [(&str, f64, f64, f64, f64, f64); 3] = [
    ("resnet20", 87.1, 99.5, 87.0, 99.4, 0.75),
    ("resnet32", 85.3, 99.2, 78.6, 98.1, 0.51),
    ("resnet56", 86.7, 99.4, 84.5, 98.9, 0.41),
];

const VARIANTS: [&str; 3] = ["ci-ti-mc", "mc-bln", "mc-bln-bi"];

fn table1(
    ctx: &Ctx,
    data_dir: &Path,
    models_dir: Option<&Path>,
    out: &Path,
    runs: &Path,
) -> Result<()> {
    std::fs::create_dir_all(out)?;
    let mut rows = Vec::new();
    // The four models with the default configuration, then ablations on ResNet-20: the
    // paper's literal mask site (every conv output, also before residual adds)...
    // (architecture, checkpoint file, run name, extra flags, variants)
    #[allow(clippy::type_complexity)]
    let mut runs_list: Vec<(&str, &str, String, Vec<&str>, Vec<&str>)> = ARCHS
        .iter()
        .map(|&(arch, file)| (arch, file, arch.to_string(), Vec::new(), VARIANTS.to_vec()))
        .collect();
    runs_list.push((
        "resnet20",
        ARCHS[0].1,
        "resnet20-conv-output".into(),
        vec!["--mask-site", "conv-output"],
        vec!["mc-bln"],
    ));
    // ...and a smaller MC-BLN threshold: at the default 0.5 no head input of these models
    // meets Algorithm 2's rule, so mc-bln equals ci-ti-mc.
    runs_list.push((
        "resnet20",
        ARCHS[0].1,
        "resnet20-bln-delta-0.1".into(),
        vec!["--bln-delta", "0.1"],
        vec!["mc-bln"],
    ));
    for (arch, file, name, extra, variants) in runs_list {
        let weights = match models_dir {
            Some(d) => d.join(file).display().to_string(),
            None => format!("akamaster/{arch}"),
        };
        let dir = runs.join("table1").join(&name);
        let summary_path = dir.join("summary.json");
        if !summary_path.is_file() {
            let mut args: Vec<String> = [
                "decompose",
                "--weights",
                &weights,
                "--dataset",
                "cifar10",
                "--data-dir",
                &data_dir.display().to_string(),
                "--variants",
                &variants.join(","),
                "--device",
                &ctx.device,
                "--out-dir",
                &dir.display().to_string(),
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            args.extend(extra.iter().map(|s| s.to_string()));
            ctx.decomp(&args)?;
        } else {
            eprintln!("reusing {}", summary_path.display());
        }
        let summary: Value = serde_json::from_str(&std::fs::read_to_string(&summary_path)?)?;
        let decompose_seconds = summary["concern_seconds"].as_f64().unwrap_or(f64::NAN)
            + summary["tangle_seconds"].as_f64().unwrap_or(f64::NAN);
        for &variant in &variants {
            let vdir = dir.join(variant);
            let result = vdir.join("compose.json");
            if !result.is_file() {
                let mut mods: Vec<String> = std::fs::read_dir(&vdir)
                    .with_context(|| format!("listing {}", vdir.display()))?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|e| e == "mod"))
                    .map(|p| p.display().to_string())
                    .collect();
                mods.sort();
                let mut args = vec!["compose".to_string()];
                args.extend(mods);
                args.extend(
                    [
                        "--dataset",
                        "cifar10",
                        "--data-dir",
                        &data_dir.display().to_string(),
                        "--split",
                        "test",
                        "--device",
                        &ctx.device,
                        "--out",
                        &result.display().to_string(),
                    ]
                    .iter()
                    .map(|s| s.to_string()),
                );
                if let Some(n) = ctx.limit {
                    args.extend(["--limit".into(), n.to_string()]);
                }
                ctx.decomp(&args)?;
            } else {
                eprintln!("reusing {}", result.display());
            }
            let v: Value = serde_json::from_str(&std::fs::read_to_string(&result)?)?;
            let label = if extra.is_empty() {
                variant.to_string()
            } else {
                format!("{variant} ({})", extra.join(" "))
            };
            rows.push(serde_json::json!({
                "model": arch,
                "variant": label,
                "n": v["n"],
                "model_top1": v["model_top1"],
                "model_top5": v["model_top5"],
                "composed_top1": v["composed_top1"],
                "composed_top5": v["composed_top5"],
                "module_size": v["mean_module_size"],
                "mean_overlap": v["mean_overlap"],
                "decompose_seconds": decompose_seconds,
                "compose_seconds": v["seconds"],
                "config": v["config"],
            }));
        }
    }
    crate::engine::write_report(
        &out.join("table1.json"),
        &serde_json::to_string_pretty(&rows)?,
    )?;
    let f = |v: &Value| v.as_f64().map_or("-".to_string(), |x| format!("{x:.2}"));
    let mut csv = String::from(
        "model,variant,n,model_top1,model_top5,composed_top1,composed_top5,module_size,mean_overlap,decompose_seconds,compose_seconds\n",
    );
    let mut md = String::from(
        "# Table 1: CIFAR-10 ResNets decomposed into modules and recomposed\n\n\
         Generated by `cargo xtask run-experiment table1` on the CIFAR-10 test split in `shared/datasets`\n\
         (a JPEG-derived rebuild: models score about 10 points below their published accuracy; compare\n\
         modules with their model on the same images). Pretrained weights: akamaster/pytorch_resnet_cifar10\n\
         (BatchNorm, option-A shortcuts). Module size = fraction of the model's layer positions a module\n\
         keeps (conv outputs and residual adds), averaged over modules; the paper's JI is not directly\n\
         comparable. `decompose s` = concern + tangling identification for all 10 classes (all three\n\
         variants share it), on this machine's CPU.\n\n\
         | model | variant | model top-1 | model top-5 | composed top-1 | composed top-5 | Δ top-1 | module size | decompose s | compose s |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in &rows {
        let d = r["composed_top1"]
            .as_f64()
            .zip(r["model_top1"].as_f64())
            .map_or("-".into(), |(a, b)| format!("{:+.2}", a - b));
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {d} | {:.3} | {:.0} | {:.0} |\n",
            r["model"].as_str().unwrap_or(""),
            r["variant"].as_str().unwrap_or(""),
            f(&r["model_top1"]),
            f(&r["model_top5"]),
            f(&r["composed_top1"]),
            f(&r["composed_top5"]),
            r["module_size"].as_f64().unwrap_or(f64::NAN),
            r["decompose_seconds"].as_f64().unwrap_or(f64::NAN),
            r["compose_seconds"].as_f64().unwrap_or(f64::NAN),
        ));
        csv.push_str(&format!(
            "{},{},{},{},{},{},{},{},{},{},{}\n",
            r["model"].as_str().unwrap_or(""),
            r["variant"].as_str().unwrap_or(""),
            r["n"],
            r["model_top1"],
            r["model_top5"],
            r["composed_top1"],
            r["composed_top5"],
            r["module_size"],
            r["mean_overlap"],
            r["decompose_seconds"],
            r["compose_seconds"],
        ));
    }
    md.push_str("\n## The paper's numbers (MC-BLN, its own models without BatchNorm, original test set)\n\n| model | model top-1 | model top-5 | modules top-1 | modules top-5 | JI |\n|---|---|---|---|---|---|\n");
    for (m, a, b, c, d, ji) in PAPER_TABLE1 {
        md.push_str(&format!("| {m} | {a} | {b} | {c} | {d} | {ji} |\n"));
    }
    md.push_str("\nConfiguration of every row (METHOD.md knobs): see `config` in `table1.json`.\n");
    crate::engine::write_report(&out.join("table1.md"), &md)?;
    crate::engine::write_report(&out.join("table1.csv"), &csv)?;
    println!("report: {}", out.join("table1.md").display());
    Ok(())
}
