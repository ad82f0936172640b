//! ResNet-20 inference throughput: the IR executor on its CPU plan (`Engine::Cpu`) and on
//! burn ops (`Engine::Burn`) against a plain burn `Module` with the same weights, same device,
//! same batch. All read the logits back to the host, which synchronizes the device before
//! the clock stops. `DECOMP_CPU_TILE` / `DECOMP_CPU_BLOCK` change the CPU plan's tuning.
//!
//! Run: `cargo bench -p decomp-benches --profile dev --bench executor`

use burn::tensor::{Device, Tensor, TensorData};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use decomp_model::burn_resnet::ResNet;
use decomp_model::{CpuTuning, Engine, Executor, ResNetConfig, to_vec};

const BATCH: usize = 128;

fn input(device: &Device) -> Tensor<4> {
    let n = BATCH * 3 * 32 * 32;
    let data: Vec<f32> = (0..n).map(|i| ((i as f32) * 0.618).sin()).collect();
    Tensor::from_data(TensorData::new(data, [BATCH, 3, 32, 32]), device)
}

fn resnet20(c: &mut Criterion) {
    let device = Device::flex();
    let model = ResNetConfig::new(20, 10)
        .with_seed(7)
        .build()
        .expect("build");
    let tuning = CpuTuning::from_vars(|k| std::env::var(k).ok());
    let fast = Executor::with_tuning(&model, &device, Engine::Cpu, tuning).expect("executor");
    let exec = Executor::with_engine(&model, &device, Engine::Burn).expect("executor");
    let net = ResNet::from_ir(&model, &device).expect("module");
    let x = input(&device);
    let mut g = c.benchmark_group("resnet20_inference_flex");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.sample_size(20);
    g.bench_function(BenchmarkId::new("ir_executor_cpu", BATCH), |b| {
        b.iter(|| to_vec(fast.forward(x.clone()).expect("forward")))
    });
    g.bench_function(BenchmarkId::new("ir_executor_burn", BATCH), |b| {
        b.iter(|| to_vec(exec.forward(x.clone()).expect("forward")))
    });
    g.bench_function(BenchmarkId::new("burn_module", BATCH), |b| {
        b.iter(|| to_vec(net.forward(x.clone())))
    });
    g.finish();
}

criterion_group!(benches, resnet20);
criterion_main!(benches);
