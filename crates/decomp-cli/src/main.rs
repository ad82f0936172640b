//! `decomp`: the command-line front of the pipeline. It is the only crate that picks the
//! device, reads the engine settings of the environment (`args::runtime`), knows file
//! locations and installs a tracing subscriber; every subcommand is one stage runnable on
//! the artifacts of the previous one.
//!
//! Modules: `args` (flag groups shared by commands), `data` (finding and opening images),
//! `files` (the output policy), `progress` (bars), `flags` (value parsers); one module per
//! command or group of commands (`eval`, `decompose` for concern/tangle/decompose,
//! `compose`, `vote`, `mix`, `train`, `model_source` for import/export/new-model,
//! `inspect`), each with its element and channel arms where both exist.

/// mimalloc keeps freed pages for the next training step instead of returning them to the
/// kernel (see the workspace's Cargo.toml and `decomp_model::keep_freed_pages`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[macro_use]
mod files;
mod args;
mod compose;
mod data;
mod decompose;
mod energy;
mod eval;
mod flags;
mod inspect;
mod mix;
mod model_source;
mod plot;
mod progress;
mod train;
mod vote;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "decomp",
    version,
    about = "Decompose trained CNN classifiers into per-class modules and recompose them"
)]
struct Cli {
    /// Download nothing (also DECOMP_OFFLINE=1): a missing dataset or checkpoint is an error
    /// that says what is missing where.
    #[arg(long, global = true)]
    offline: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Evaluate a model on a dataset split: top-1, top-5 and per-class accuracy.
    Eval(eval::EvalArgs),
    /// Concern identification: per class, the positions inactive for all its images.
    Concern(decompose::ConcernArgs),
    /// Tangling identification + concern modularization: module files from a concern set.
    Tangle(decompose::TangleArgs),
    /// Concern identification, then tangling identification and modularization.
    Decompose(decompose::DecomposeArgs),
    /// Compose module files (of one or several models) and evaluate them by voting.
    Compose(compose::ComposeArgs),
    /// Compose any selection of modules from margins saved by `compose --save-margins`.
    Vote(vote::VoteArgs),
    /// Write one class from each of several datasets as one small CIFAR-format dataset.
    Mix(mix::MixArgs),
    /// Write a freshly initialized (untrained) CIFAR ResNet as a `.ir` model (tests, fixtures).
    NewModel(model_source::NewModelArgs),
    /// Train a ResNet from scratch or fine-tune imported weights (resumable run directory).
    Train(train::TrainArgs),
    /// Convert a PyTorch checkpoint into a decomp `.ir` model artifact.
    Import(model_source::ImportArgs),
    /// Write a model in burn's own record format (burnpack `.bpk`).
    Export(model_source::ExportArgs),
    /// Download a dataset into the data folder (verified, once) and print its folder.
    FetchData {
        /// Dataset: cifar10, cifar100, tiny-imagenet, fashion-mnist, mnist.
        #[arg(long)]
        dataset: String,
        /// The folder to fetch when not the official one: `tiny-imagenet-subset20` (the
        /// 20-class subset the experiments use, built from the official zip).
        #[arg(long)]
        folder: Option<String>,
        /// Data folder (default as for every command: $DECOMP_DATA_DIR, ../shared/datasets,
        /// the user cache).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Print what an artifact holds.
    Inspect {
        /// A model (`.ir`), module (`.mod`) or concern-set (`.cs`) artifact.
        path: PathBuf,
    },
}

fn main() {
    decomp_model::keep_freed_pages();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e}");
        for cause in e.chain().skip(1) {
            eprintln!("  caused by: {cause}");
        }
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    // The one place the CLI's downloads read the environment (DECOMP_OFFLINE, DECOMP_MIRROR).
    decomp_data::fetch::configure(decomp_data::fetch::FetchSettings::from_vars(|k| {
        std::env::var_os(k)
    }));
    if cli.offline {
        decomp_data::fetch::set_offline();
    }
    match cli.command {
        Command::Eval(a) => eval::run(a),
        Command::Concern(a) => decompose::concern(a),
        Command::Tangle(a) => decompose::tangle(a),
        Command::Decompose(a) => decompose::decompose(a),
        Command::Compose(a) => compose::run(a),
        Command::Vote(a) => vote::run(a),
        Command::Mix(a) => mix::run(a),
        Command::NewModel(a) => model_source::new_model(a),
        Command::Train(a) => train::run(a),
        Command::Import(a) => model_source::import(a),
        Command::Export(a) => model_source::export(a),
        Command::FetchData {
            dataset,
            folder,
            data_dir,
        } => {
            let kind = decomp_data::DatasetKind::parse(&dataset)?;
            let want = match &folder {
                Some(name) => decomp_data::DatasetFolder::named(kind, name),
                None => decomp_data::DatasetFolder::official(kind),
            };
            let dir = data::data_root(data_dir.as_deref())?.ensure(&want)?;
            outln!("{}", dir.display());
            Ok(())
        }
        Command::Inspect { path } => inspect::inspect(&path),
    }
}
