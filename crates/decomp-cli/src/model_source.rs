//! Resolving `--weights` into an IR model, and the import/export/new-model commands.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use decomp_ir::ModelIr;
use decomp_model::import::akamaster_norm;
use decomp_model::{ResNetConfig, parse_device};

use crate::args::{ModelArgs, OnnxFlags};
use crate::files::{read_artifact, write_artifact};

/// Parses `resnetNN` into a CIFAR-10-shaped config.
pub fn parse_arch(arch: &str, num_classes: usize) -> Result<ResNetConfig> {
    let depth = arch
        .strip_prefix("resnet")
        .and_then(|d| d.parse::<usize>().ok())
        .with_context(|| format!("unknown architecture {arch:?}: expected resnet20, resnet32, resnet44, resnet56 or another resnet(6n+2)"))?;
    let cfg = ResNetConfig::new(depth, num_classes);
    cfg.blocks_per_stage()?;
    Ok(cfg)
}

/// Loads the model `--weights` names: an `.ir` artifact, an ONNX model, a PyTorch checkpoint,
/// or a known pretrained name fetched into the cache.
pub fn load_model(args: &ModelArgs) -> Result<ModelIr> {
    let path = resolve_weights(args)?;
    crate::files::input(&path);
    if is_onnx(&path)? {
        return decomp_model::onnx::import_onnx(&path, &args.onnx.options()?)
            .with_context(|| format!("importing {}", path.display()));
    }
    if args.onnx.given() {
        bail!(
            "--input-mean, --input-std, --class-names and --input-shape apply to ONNX models, {} is not one",
            path.display()
        );
    }
    if decomp_ir::artifact::has_magic(&path)? {
        let model: ModelIr = read_artifact(&path)?;
        if let Some(arch) = &args.arch
            && &model.meta.arch != arch
        {
            bail!(
                "{}: model is {}, --arch says {arch}",
                path.display(),
                model.meta.arch
            );
        }
        return Ok(model);
    }
    let sd = decomp_model::import::StateDict::read(&path)?;
    let detected = sd.detect_resnet();
    // `--arch` asserts the depth; BatchNorm, shortcut, input and classes come from the
    // checkpoint itself.
    let expected = match &args.arch {
        Some(a) => {
            let mut cfg = parse_arch(a, detected.as_ref().map_or(10, |c| c.num_classes))?;
            if let Some(d) = &detected {
                cfg = cfg
                    .with_batch_norm(d.batch_norm)
                    .with_shortcut(d.shortcut)
                    .with_input(d.input);
            }
            Some(cfg)
        }
        None => None,
    };
    // PyTorch state dicts carry no class names; the supported checkpoints are CIFAR-10's.
    let classes = expected
        .as_ref()
        .or(detected.as_ref())
        .map_or(0, |c| c.num_classes);
    let names = (classes == decomp_data::CIFAR10_CLASSES.len()).then(|| {
        decomp_data::CIFAR10_CLASSES
            .iter()
            .map(|s| s.to_string())
            .collect()
    });
    sd.to_resnet(&path, expected.as_ref(), akamaster_norm(), names)
        .with_context(|| format!("importing {}", path.display()))
}

fn resolve_weights(args: &ModelArgs) -> Result<PathBuf> {
    let p = PathBuf::from(&args.weights);
    if p.exists() {
        return Ok(p);
    }
    if decomp_data::fetch::pretrained(&args.weights).is_some() {
        let cache = args
            .cache_dir
            .clone()
            .unwrap_or_else(|| decomp_data::fetch::cache_dir_from(|k| std::env::var_os(k)));
        return Ok(decomp_data::fetch::fetch_weights(&args.weights, &cache)?);
    }
    bail!(
        "{}: no such file, and not a known pretrained name (known: {})",
        args.weights,
        decomp_data::fetch::known_weights().join(", ")
    )
}

/// An ONNX model: a `.onnx` file, or a protobuf that starts like one.
fn is_onnx(path: &Path) -> Result<bool> {
    use std::io::Read;
    let mut head = [0u8; 2];
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let n = f
        .read(&mut head)
        .with_context(|| format!("reading {}", path.display()))?;
    Ok(decomp_model::onnx::looks_like_onnx(path, &head[..n]))
}

#[derive(clap::Args)]
pub struct ImportArgs {
    /// Architecture of a PyTorch checkpoint (see `--weights`); ignored for ONNX models.
    #[arg(long)]
    arch: Option<String>,
    /// The model: a PyTorch checkpoint, an ONNX model, an `.ir` file or a known name.
    #[arg(long, required_unless_present = "onnx", conflicts_with = "onnx")]
    weights: Option<String>,
    /// An ONNX model (same as `--weights model.onnx`).
    #[arg(long)]
    onnx: Option<PathBuf>,
    /// Cache folder for downloaded weights.
    #[arg(long, env = "DECOMP_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
    #[command(flatten)]
    onnx_flags: OnnxFlags,
    /// Output `.ir` file.
    #[arg(long)]
    out: PathBuf,
}

pub fn import(a: ImportArgs) -> Result<()> {
    let model = match &a.onnx {
        Some(p) => {
            crate::files::input(p);
            decomp_model::onnx::import_onnx(p, &a.onnx_flags.options()?)
                .with_context(|| format!("importing {}", p.display()))?
        }
        None => load_model(&ModelArgs {
            arch: a.arch.clone(),
            weights: a.weights.clone().unwrap_or_default(),
            cache_dir: a.cache_dir.clone(),
            onnx: a.onnx_flags.clone(),
        })?,
    };
    crate::files::check_output(&a.out)?;
    let hash = write_artifact(&a.out, &model)?;
    outln!(
        "{}: {} ({} nodes, {} parameters, sha256 {})",
        a.out.display(),
        model.meta.arch,
        model.graph.nodes.len(),
        model.graph.num_params(),
        decomp_ir::hex_hash(&hash)
    );
    Ok(())
}

#[derive(clap::Args)]
pub struct NewModelArgs {
    /// Architecture: resnet8, resnet20, ... (any resnet(6n+2)).
    #[arg(long)]
    arch: String,
    /// Number of classes.
    #[arg(long, default_value_t = 10)]
    classes: usize,
    /// Without BatchNorm.
    #[arg(long)]
    no_batch_norm: bool,
    /// Seed of the He initialization.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output `.ir` file.
    #[arg(long)]
    out: PathBuf,
}

pub fn new_model(a: NewModelArgs) -> Result<()> {
    if a.classes < 2 {
        bail!(
            "--classes {}: a classifier needs at least 2 classes",
            a.classes
        );
    }
    let cfg = parse_arch(&a.arch, a.classes)?
        .with_batch_norm(!a.no_batch_norm)
        .with_seed(a.seed);
    let mut model = cfg.build()?;
    if a.classes == decomp_data::CIFAR10_CLASSES.len() {
        model.meta.class_names = decomp_data::CIFAR10_CLASSES
            .iter()
            .map(|s| s.to_string())
            .collect();
    }
    let hash = write_artifact(&a.out, &model)?;
    outln!(
        "{}: {} untrained (seed {}), sha256 {}",
        a.out.display(),
        model.meta.arch,
        a.seed,
        decomp_ir::hex_hash(&hash)
    );
    Ok(())
}

#[derive(clap::Args)]
pub struct ExportArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Output burnpack file (`.bpk`).
    #[arg(long)]
    out: PathBuf,
}

pub fn export(a: ExportArgs) -> Result<()> {
    let model = load_model(&a.model)?;
    crate::files::check_output(&a.out)?;
    let device = parse_device("cpu")?;
    let net = decomp_model::burn_resnet::ResNet::from_ir(&model, &device)?;
    // burn writes the record itself: into a private folder, then under the output policy.
    let staging = tempfile::tempdir().context("creating a staging folder for the export")?;
    let staged = staging.path().join("model.bpk");
    net.export(&staged)?;
    let bytes = std::fs::read(&staged)
        .with_context(|| format!("reading the staged export {}", staged.display()))?;
    crate::files::write_atomic(&a.out, &bytes)?;
    outln!("{}", a.out.display());
    Ok(())
}
