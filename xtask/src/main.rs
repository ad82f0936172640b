//! Orchestration: `cargo xtask run-experiment [NAME]`. Dependency-light by design: it
//! spawns the `decomp` binary and links no burn.
//!
//! Every experiment is a manifest under `experiments/` run by the stage engine
//! (`engine.rs`) through a scenario (`scenarios/`).

mod carry;
mod engine;
mod gate;
mod manifest;
mod plot;
mod scenarios;
mod slurm;
mod stats;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use decomp_data::{DataRoot, DatasetFolder, DatasetKind};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

// Parsed once per process: the size of the large variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Cmd {
    /// Run an experiment end to end and write its report under `results/<name>/`.
    ///
    /// Experiments: `default` (no argument): `experiments/default.toml`, Tables 4, 6 and 2 and
    /// the CO2e comparison at reduced settings, sharing one decomposition of ResNet-20. `eval`:
    /// the four pretrained CIFAR-10 ResNets on the lossless training images and the test
    /// split. `table1`: the paper's Table 1 over the pretrained and the zoo models. `zoo`:
    /// trains the model zoo. `frontier`: channel-level modules. Any `experiments/<name>.toml`
    /// (table2..table6, co2e), or a path to a manifest. Finished stage artifacts under
    /// `runs/store` are reused.
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
        /// Evaluate only the first N images of each split (quick runs; `eval`, `table1`,
        /// `frontier`; part of every affected unit's key).
        #[arg(long)]
        limit: Option<usize>,
        /// Training units run at most N epochs in this process, then pause (their run folder
        /// `runs/store/train/<unit>.partial` keeps the progress and a later run continues it);
        /// reports that need a paused unit are not written until it is finished (the zoo's
        /// lists it as in progress). 0 trains nothing: `run-experiment zoo --epochs-now 0`
        /// writes the zoo report of what is finished.
        #[arg(long)]
        epochs_now: Option<usize>,
        /// Where intermediate artifacts go (modules, concern sets); finished artifacts are
        /// reused on a rerun.
        #[arg(long, default_value = "runs")]
        runs: PathBuf,
        #[command(flatten)]
        slurm: slurm::SlurmArgs,
    },
    /// Keep work across machines: `save` copies the run folders of paused training units
    /// (`runs/store/train/*.partial`: checkpoint, best model, metrics) and finished units
    /// that took long (`--min-wall-s`) to a versioned folder to commit; `restore` puts them
    /// back, and the next `run-experiment` continues and reuses them. Neither direction
    /// replaces a run folder by one with fewer epochs; the zoo's published models are not
    /// carried.
    Carry {
        #[arg(value_enum)]
        action: CarryAction,
        /// Where `run-experiment` keeps its artifacts (its `--runs`).
        #[arg(long, default_value = "runs")]
        runs: PathBuf,
        /// The versioned folder, relative to the workspace root unless absolute.
        #[arg(long, default_value = "models/carry")]
        dir: PathBuf,
        /// `save` also carries finished units of any stage whose work took at least this
        /// many seconds (a model an experiment trained for a later stage, trained modules).
        #[arg(long, default_value_t = 600.0)]
        min_wall_s: f64,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum CarryAction {
    Save,
    Restore,
}

fn main() -> Result<()> {
    // The one place xtask's downloads read the environment (DECOMP_OFFLINE, DECOMP_MIRROR).
    decomp_data::fetch::configure(decomp_data::fetch::FetchSettings::from_vars(|k| {
        std::env::var_os(k)
    }));
    match Cli::parse().cmd {
        Cmd::Carry {
            action,
            runs,
            dir,
            min_wall_s,
        } => {
            let (store, dir) = (
                engine::root().join(runs).join("store"),
                engine::root().join(dir),
            );
            let lines = match action {
                CarryAction::Save => {
                    carry::save(&store, &dir, min_wall_s, &engine::root().join("models/zoo"))?
                }
                CarryAction::Restore => carry::restore(&store, &dir)?,
            };
            for l in &lines {
                println!("{l}");
            }
            if lines.is_empty() {
                println!("carry: nothing to move");
            }
            Ok(())
        }
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
            epochs_now,
            runs,
            slurm,
        } => {
            let env = |k: &str| std::env::var_os(k);
            if offline {
                decomp_data::fetch::set_offline();
            }
            let data = DataRoot::resolve_from(data_dir.as_deref(), &engine::root(), env);
            let models_dir = models_dir.unwrap_or_else(|| {
                let d = decomp_data::locate::shared_dir_from(&engine::root(), env)
                    .join("models/cifar10");
                if d.is_dir() {
                    d
                } else {
                    decomp_data::fetch::cache_dir_from(env)
                }
            });
            // Everything the experiment reads is fetched first: a missing dataset fails here,
            // in a second, not after a build.
            let fetched = fetch_needs(&name, &data, &models_dir)?;
            if fetch_only {
                for p in fetched {
                    println!("{}", p.display());
                }
                return Ok(());
            }
            let models_dir = Some(models_dir);
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
                None => build_decomp(features.as_deref())?,
            };
            let runs = engine::root().join(runs);
            if slurm.active()? {
                // Tasks find the data as this process did: the same flag or defaults.
                let data_flag =
                    (data.origin == decomp_data::locate::Origin::Flag).then(|| data.dir.clone());
                let mut job = slurm::Job::new(
                    &name,
                    &engine::root(),
                    built,
                    runs,
                    data_flag,
                    models_dir,
                    engine::root().join(out),
                    device,
                    sel,
                )?;
                job.limit = limit;
                job.epochs_now = epochs_now;
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
                limit,
            };
            let mut eng = engine::Engine::new(decomp.clone(), device, runs.join("store"), sel);
            eng.epochs_now = epochs_now;
            let result = scenarios::run_manifest(&eng, &env, &name);
            if !private {
                let _ = std::fs::remove_file(&decomp);
            }
            result
        }
    }
}

/// Fetches (unless present) the datasets and checkpoints experiment `name` reads (with
/// its members); returns every path. Optional dataset folders that are absent are skipped.
fn fetch_needs(name: &str, data: &DataRoot, models_dir: &Path) -> Result<Vec<PathBuf>> {
    let needs = manifest::Manifest::needs(&engine::root(), name)?;
    let mut fetched = Vec::new();
    for d in needs.data {
        if d.optional {
            fetched.extend(scenarios::optional_folder(data, &d));
            continue;
        }
        let kind = DatasetKind::parse(&d.dataset)?;
        let want = match &d.path {
            Some(p) => DatasetFolder::named(kind, p),
            None => DatasetFolder::official(kind),
        };
        fetched.push(data.ensure(&want)?);
    }
    for w in needs.weights {
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
                decomp_data::fetch::fetch_weights(
                    &w,
                    &decomp_data::fetch::cache_dir_from(|k| std::env::var_os(k)),
                )?
            }
            None => engine::root().join(w),
        };
        fetched.push(file);
    }
    Ok(fetched)
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
