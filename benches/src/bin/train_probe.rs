//! ResNet training throughput (one SGD step per batch: forward, backward, update) through
//! decomp's `Trainer`, printing one JSON line in the format of the `infer` probe, so
//! `scripts/bench_frameworks.py compare --train --decomp-train target/debug/train_probe`
//! times it interleaved with PyTorch and TensorFlow training steps.
//!
//! `cargo run -p decomp-benches --bin train_probe -- [--depth 20] [--batch 128] [--iters 5]
//!  [--warmup 2] [--no-bn] [--adam] [--augment]`
//!
//! `--module FILE.mod` times issue 17's module training instead: the channel module's
//! training step (frozen BatchNorm, Adam without weight decay, margin targets, no
//! augmentation) as `decomp tangle --train` runs it, at `--batch` (its default there: 64),
//! with the CPU plan's `DECOMP_CPU_*` tuning variables.
//!
//! Same recipes as the Python probes, on random labels and 32x32 inputs: by default he2016's
//! optimizer (SGD lr 0.1, momentum 0.9, weight decay 1e-4) on a BatchNorm ResNet; `--adam`
//! paper-keras's (Adam lr 1e-3, betas 0.9/0.999, eps 1e-7, L2 1e-4); `--no-bn` without
//! BatchNorm; `--augment` the recipe's augmentation inside the timed step (he2016: 4-pixel
//! pad + crop and flips; with `--adam`, paper-keras: shifts of 10% and flips). Threads:
//! `RAYON_NUM_THREADS`; training engine: `DECOMP_ENGINE` (on `flex` the CPU engine by
//! default, `burn` for burn autodiff).

/// The allocator `decomp` runs with (mimalloc, keeping freed pages), so the probe times what
/// users run.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use decomp_data::{Augmentation, Batch, DatasetKind};
use decomp_ir::{ChannelModule, read_artifact};
use decomp_model::train::{AugmentConfig, OptimizerConfig, Schedule, TrainConfig, Trainer};
use decomp_model::{CpuOptimizer, CpuTuning, GradEngine, Target};
use decomp_model::{Device, ResNetConfig, Runtime};
use rand::SeedableRng;

fn flag(args: &[String], name: &str, default: usize) -> usize {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map_or(default, |v| {
            v.parse().unwrap_or_else(|e| {
                eprintln!("error: {name} {v}: {e}");
                std::process::exit(2)
            })
        })
}

fn main() {
    decomp_model::keep_freed_pages();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (depth, batch, iters, warmup) = (
        flag(&args, "--depth", 20),
        flag(&args, "--batch", 128),
        flag(&args, "--iters", 5),
        flag(&args, "--warmup", 2),
    );
    let on = |name: &str| args.iter().any(|a| a == name);
    if let Some(i) = args.iter().position(|a| a == "--module") {
        let Some(path) = args.get(i + 1) else {
            eprintln!("error: --module needs a module file");
            std::process::exit(2)
        };
        module_training(std::path::Path::new(path), batch, iters, warmup);
        return;
    }
    let (no_bn, adam, augment) = (on("--no-bn"), on("--adam"), on("--augment"));
    let model = ResNetConfig::new(depth, 10)
        .with_batch_norm(!no_bn)
        .with_seed(7)
        .build()
        .unwrap_or_else(|e| {
            eprintln!("error: {e}");
            std::process::exit(2)
        });
    let (optimizer, lr) = if adam {
        let adam = OptimizerConfig::Adam {
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-7,
            weight_decay: 1e-4,
        };
        (adam, 1e-3)
    } else {
        let sgd = OptimizerConfig::Sgd {
            momentum: 0.9,
            dampening: 0.0,
            nesterov: false,
            weight_decay: 1e-4,
        };
        (sgd, 0.1)
    };
    let augmentation = match (augment, adam) {
        (false, _) => AugmentConfig::default(),
        (true, false) => AugmentConfig {
            pad_crop: 4,
            shift: 0.0,
            flip: true,
        },
        (true, true) => AugmentConfig {
            pad_crop: 0,
            shift: 0.1,
            flip: true,
        },
    };
    let config = TrainConfig {
        optimizer,
        lr,
        schedule: Schedule::Constant,
        epochs: 1,
        batch_size: batch,
        augment: augmentation,
        seed: 0,
        eval_batch_size: batch,
    };
    let runtime =
        Runtime::from_vars(Device::flex(), |k| std::env::var(k).ok()).unwrap_or_else(|err| {
            eprintln!("error: {err}");
            std::process::exit(2)
        });
    let mut trainer = Trainer::with_runtime(model, config, "probe".into(), &runtime)
        .expect("a valid training configuration");
    let norm = DatasetKind::Cifar10.default_normalization();
    let aug = Augmentation::from(augmentation);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let mut make = |k: usize| {
        let mut b = Batch {
            images: (0..batch * 3 * 32 * 32)
                .map(|i| ((i + k) as f32 * 0.618).sin())
                .collect(),
            labels: (0..batch).map(|i| (i * 7 + k) % 10).collect(),
            shape: [batch, 3, 32, 32],
        };
        aug.apply(&mut b, &norm, &mut rng);
        b
    };
    for k in 0..warmup {
        trainer.step(make(k), lr).expect("step");
    }
    // Building the synthetic batch (a few ms) and augmenting it are timed with the step.
    let engine = format!(
        "train{}{}{}",
        if no_bn { "-nobn" } else { "" },
        if adam { "-adam" } else { "-sgd" },
        if augment { "-aug" } else { "" }
    );
    decomp_benches::time_and_report(&engine, depth, batch, iters, |k| {
        trainer.step(make(warmup + k), lr).expect("step");
    });
}

/// Times [`GradEngine::step_for`] on the channel module in `path` as module training runs
/// it (`decomp_tangle::train`), on synthetic images and margin targets.
fn module_training(path: &std::path::Path, batch: usize, iters: usize, warmup: usize) {
    let module: ChannelModule = read_artifact(path).unwrap_or_else(|e| {
        eprintln!("error: {}: {e}", path.display());
        std::process::exit(2)
    });
    let [c, h, w] = module.module.graph.input_shape().unwrap_or_else(|e| {
        eprintln!("error: {}: {e}", path.display());
        std::process::exit(2)
    });
    let mut engine = GradEngine::new(module.module)
        .expect("a trainable module")
        .with_frozen_batch_norm(true)
        .with_tuning(CpuTuning::from_vars(|k| std::env::var(k).ok()));
    let mut optimizer = CpuOptimizer::new(OptimizerConfig::Adam {
        beta1: 0.9,
        beta2: 0.999,
        epsilon: 1e-8,
        weight_decay: 0.0,
    });
    let images = |k: usize| -> Vec<f32> {
        (0..batch * c * h * w)
            .map(|i| ((i + k) as f32 * 0.618).sin())
            .collect()
    };
    let targets: Vec<f32> = (0..batch).map(|i| (i as f32 * 0.37).sin() * 4.0).collect();
    let mut step = |k: usize| {
        let target = Target::Margins {
            targets: &targets,
            floors: None,
        };
        engine
            .step_for(&mut optimizer, &images(k), target, 1e-4)
            .expect("step");
    };
    for k in 0..warmup {
        step(k);
    }
    let name = format!(
        "module-train-{}pct",
        (module.cost.macs * 100).div_ceil(module.model_cost.macs.max(1))
    );
    decomp_benches::time_and_report(&name, 0, batch, iters, |k| step(warmup + k));
}
