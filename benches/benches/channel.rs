//! Inference time of a physically small channel module against its full model (issue 6):
//! ResNet-20 (He-initialized, BatchNorm, option-A shortcuts) and the module keeping the
//! first 60% of the channels of every channel space (residual streams and block insides),
//! with mean-activation compensation folded into bias maps, on the CPU plan and on burn
//! ops. With `DECOMP_BENCH_MODULE=<channel module file>` and
//! `DECOMP_BENCH_MODEL=<.ir model>` it times that module against that model instead.
//! The FLOPs ratio is printed for comparison with the measured time ratio.
//!
//! Run: `cargo bench -p decomp-benches --profile dev --bench channel`

use burn::tensor::{Device, Tensor, TensorData};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use decomp_ir::analysis::cost;
use decomp_ir::channel::{ChannelPlan, channel_spaces, extract};
use decomp_ir::{ChannelModule, ModelIr, read_artifact};
use decomp_model::{Engine, Executor, ResNetConfig, to_vec};

const BATCH: usize = 128;
const KEEP: f64 = 0.6;

fn input(device: &Device) -> Tensor<4> {
    let n = BATCH * 3 * 32 * 32;
    let data: Vec<f32> = (0..n).map(|i| ((i as f32) * 0.618).sin()).collect();
    Tensor::from_data(TensorData::new(data, [BATCH, 3, 32, 32]), device)
}

/// The model and the module's graph.
fn pair() -> (ModelIr, ModelIr) {
    if let (Ok(m), Ok(w)) = (
        std::env::var("DECOMP_BENCH_MODULE"),
        std::env::var("DECOMP_BENCH_MODEL"),
    ) {
        let module: ChannelModule = read_artifact(m.as_ref()).expect("channel module");
        let model: ModelIr = read_artifact(w.as_ref()).expect("model");
        return (model, module.module);
    }
    let model = ResNetConfig::new(20, 10)
        .with_seed(7)
        .build()
        .expect("build");
    let shapes = model.check().expect("valid");
    let spaces = channel_spaces(&model.graph, &shapes).expect("spaces");
    let mut plan = ChannelPlan::keep_all(&spaces);
    for g in &mut plan.groups {
        let n = g.kept.len();
        let keep = ((n as f64 * KEEP).round() as usize).max(1);
        for c in 0..n {
            g.kept.set(c, c < keep);
        }
        for f in &mut g.fill {
            f.iter_mut()
                .enumerate()
                .for_each(|(c, v)| *v = 0.1 + 0.01 * c as f32);
        }
    }
    let head = decomp_tangle::binary_head(&model, 0).expect("head");
    let module = extract(&model, &head, 0, &plan).expect("extract");
    (model, module)
}

fn channel_module(c: &mut Criterion) {
    let device = Device::flex();
    let (model, module) = pair();
    let (cm, cs) = (
        cost(&model.graph, &model.check().expect("valid")),
        cost(&module.graph, &module.check().expect("valid")),
    );
    eprintln!(
        "module FLOPs {:.1}% of the model ({} / {}), parameters {:.1}%",
        100.0 * cs.flops as f64 / cm.flops as f64,
        cs.flops,
        cm.flops,
        100.0 * cs.params as f64 / cm.params as f64
    );
    let x = input(&device);
    let mut g = c.benchmark_group("channel_module_flex");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.sample_size(10);
    for (engine, name) in [(Engine::Cpu, "cpu"), (Engine::Burn, "burn")] {
        let full = Executor::with_engine(&model, &device, engine).expect("model executor");
        let small = Executor::with_engine(&module, &device, engine).expect("module executor");
        g.bench_function(BenchmarkId::new(format!("model_{name}"), BATCH), |b| {
            b.iter(|| to_vec(full.forward(x.clone()).expect("forward")))
        });
        g.bench_function(BenchmarkId::new(format!("module_{name}"), BATCH), |b| {
            b.iter(|| to_vec(small.forward(x.clone()).expect("forward")))
        });
    }
    g.finish();
}

criterion_group!(benches, channel_module);
criterion_main!(benches);
