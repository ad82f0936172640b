//! ResNet-20 training-step throughput (BatchNorm, option-A shortcuts, batch 128, he2016's
//! SGD: momentum 0.9, L2 1e-4, lr 0.1): the CPU training engine (`GradEngine` +
//! `CpuOptimizer`, forward and backward on the CPU plan's kernels) against burn autodiff
//! on `flex` (`train::Trainer::step`, what `decomp train` runs today). Same initial weights,
//! same batch; both return the loss on the host, so every step has finished when the clock
//! stops.
//!
//! Run: `cargo bench -p decomp-benches --profile dev --bench train`

use std::time::Duration;

use burn::tensor::Device;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use decomp_data::Batch;
use decomp_model::train::{AugmentConfig, OptimizerConfig, Schedule, TrainConfig, Trainer};
use decomp_model::{CpuOptimizer, Engine, GradEngine, ResNetConfig};

const BATCH: usize = 128;
const LR: f64 = 0.1;

fn batch() -> Batch {
    let n = BATCH * 3 * 32 * 32;
    Batch {
        images: (0..n).map(|i| ((i as f32) * 0.618).sin()).collect(),
        labels: (0..BATCH).map(|i| (i * 7) % 10).collect(),
        shape: [BATCH, 3, 32, 32],
    }
}

fn sgd() -> OptimizerConfig {
    OptimizerConfig::Sgd {
        momentum: 0.9,
        dampening: 0.0,
        nesterov: false,
        weight_decay: 1e-4,
    }
}

fn resnet20_train(c: &mut Criterion) {
    let model = ResNetConfig::new(20, 10)
        .with_seed(7)
        .build()
        .expect("build");
    let data = batch();
    let config = TrainConfig {
        optimizer: sgd(),
        lr: LR,
        schedule: Schedule::Constant,
        epochs: 1,
        batch_size: BATCH,
        augment: AugmentConfig::default(),
        seed: 0,
        eval_batch_size: BATCH,
    };
    let mut g = c.benchmark_group("resnet20_train_step_flex");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(20));
    let mut engine = GradEngine::new(model.clone()).expect("engine");
    let mut opt = CpuOptimizer::new(sgd());
    g.bench_function(BenchmarkId::new("cpu_engine", BATCH), |b| {
        b.iter(|| {
            engine
                .step(&mut opt, &data.images, &data.labels, LR)
                .expect("step")
        })
    });
    let mut trainer =
        Trainer::with_engine(model, config, "bench".into(), &Device::flex(), Engine::Burn)
            .expect("trainer");
    g.bench_function(BenchmarkId::new("burn_autodiff", BATCH), |b| {
        b.iter(|| trainer.step(data.clone(), LR).expect("step"))
    });
    g.finish();
}

criterion_group!(benches, resnet20_train);
criterion_main!(benches);
