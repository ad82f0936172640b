//! ResNet training throughput (one SGD step per batch: forward, backward, update) through
//! decomp's `Trainer`, printing one JSON line in the format of the `infer` probe, so
//! `scripts/bench_frameworks.py compare --train --decomp-train target/debug/train_probe`
//! times it interleaved with PyTorch and TensorFlow training steps.
//!
//! `cargo run -p decomp-benches --bin train_probe -- [--depth 20] [--batch 128] [--iters 5]
//!  [--warmup 2]`
//!
//! Same recipe as the Python probes: SGD lr 0.1, momentum 0.9, weight decay 1e-4, random
//! labels, BatchNorm ResNet, 32x32 inputs. Threads: `RAYON_NUM_THREADS`; training engine:
//! `DECOMP_ENGINE` (on `flex` the CPU engine by default, `burn` for burn autodiff).

use decomp_data::Batch;
use decomp_model::train::{AugmentConfig, OptimizerConfig, Schedule, TrainConfig, Trainer};
use decomp_model::{Device, ResNetConfig, Runtime};

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
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (depth, batch, iters, warmup) = (
        flag(&args, "--depth", 20),
        flag(&args, "--batch", 128),
        flag(&args, "--iters", 5),
        flag(&args, "--warmup", 2),
    );
    let model = ResNetConfig::new(depth, 10)
        .with_seed(7)
        .build()
        .unwrap_or_else(|e| {
            eprintln!("error: {e}");
            std::process::exit(2)
        });
    let config = TrainConfig {
        optimizer: OptimizerConfig::Sgd {
            momentum: 0.9,
            dampening: 0.0,
            nesterov: false,
            weight_decay: 1e-4,
        },
        lr: 0.1,
        schedule: Schedule::Constant,
        epochs: 1,
        batch_size: batch,
        augment: AugmentConfig::default(),
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
    let make = |k: usize| Batch {
        images: (0..batch * 3 * 32 * 32)
            .map(|i| ((i + k) as f32 * 0.618).sin())
            .collect(),
        labels: (0..batch).map(|i| (i * 7 + k) % 10).collect(),
        shape: [batch, 3, 32, 32],
    };
    for k in 0..warmup {
        trainer.step(make(k), 0.1).expect("step");
    }
    // Building the synthetic batch (a few ms) is timed with the step (about 2 s).
    decomp_benches::time_and_report("train", depth, batch, iters, |k| {
        trainer.step(make(warmup + k), 0.1).expect("step");
    });
}
