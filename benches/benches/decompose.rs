//! Decomposition benches on the pretrained ResNet-20 (from `../shared`, or
//! `$DECOMP_SHARED_DIR`; a random ResNet-20 on synthetic images when absent):
//! - concern identification throughput (images/s through the capture + reduce path);
//! - composed evaluation of the 10 modules: one batched forward vs one pass per module.
//!
//! Run: `cargo bench -p decomp-benches --bench decompose`

use std::path::PathBuf;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use decomp_compose::{Mode, compose};
use decomp_data::{Dataset, DatasetKind, Normalization};
use decomp_ir::{DecompConfig, ModelIr, ModuleIr, Top5Ranking, Variant};
use decomp_model::import::{akamaster_norm, import_resnet};
use decomp_model::{Device, Executor, ResNetConfig};

fn shared() -> Option<PathBuf> {
    let d = std::env::var_os("DECOMP_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared")));
    d.join("models/cifar10").is_dir().then_some(d)
}

/// The pretrained ResNet-20 and CIFAR-10 train/test images, or stand-ins.
fn setup() -> (ModelIr, Dataset, Dataset) {
    if let Some(s) = shared() {
        let model = import_resnet(
            &s.join("models/cifar10/resnet20-12fca82f.th"),
            None,
            akamaster_norm(),
            None,
        )
        .expect("import");
        let n = akamaster_norm();
        let norm = Normalization::new(&n.mean, &n.std);
        let dir = s.join("datasets");
        let train = Dataset::load(DatasetKind::Cifar10, &dir, decomp_data::Split::Train)
            .expect("train")
            .with_normalization(norm.clone());
        let test = Dataset::load(DatasetKind::Cifar10, &dir, decomp_data::Split::Test)
            .expect("test")
            .with_normalization(norm);
        (model, train, test.take(1000))
    } else {
        eprintln!("no ../shared: benchmarking a random ResNet-20 on synthetic images");
        let model = ResNetConfig::new(20, 10).build().expect("build");
        (
            model,
            Dataset::synthetic(10, 200, [3, 32, 32], 1),
            Dataset::synthetic(10, 100, [3, 32, 32], 2),
        )
    }
}

fn modules(model: &ModelIr, train: &Dataset, exec: &Executor, cfg: &DecompConfig) -> Vec<ModuleIr> {
    let classes: Vec<usize> = (0..10).collect();
    let (_, concerns) =
        decomp_concern::identify(exec, model, train, cfg, &classes, 128, &mut |_, _| {})
            .expect("concern");
    concerns
        .iter()
        .map(|c| {
            let (sample, per) =
                decomp_tangle::unconcerned_sample(train, c.class, c.positives.len(), cfg.seed);
            let u = decomp_tangle::untangle(
                exec,
                train,
                c,
                &sample,
                cfg.min_active_fraction,
                128,
                &mut |_| {},
            )
            .expect("tangle");
            let origin = decomp_tangle::ModuleOrigin {
                model_hash: "bench",
                model_path: "bench",
                provenance: String::new(),
            };
            decomp_tangle::build_module(model, c, &u, sample.len(), per, cfg, &origin)
                .expect("module")
        })
        .collect()
}

fn benches(c: &mut Criterion) {
    let device = Device::flex();
    let (model, train, test) = setup();
    let exec = Executor::new(&model, &device).expect("executor");
    let classes: Vec<usize> = (0..10).collect();

    let per_class = 64;
    let cfg = DecompConfig {
        positives_per_class: per_class,
        positive_filter: decomp_ir::PositiveFilter::All,
        ..DecompConfig::default()
    };
    let mut g = c.benchmark_group("concern_identification");
    g.sample_size(10);
    g.throughput(Throughput::Elements((per_class * classes.len()) as u64));
    g.bench_function("resnet20_10_classes", |b| {
        b.iter(|| {
            decomp_concern::identify(&exec, &model, &train, &cfg, &classes, 128, &mut |_, _| {})
                .expect("concern")
        })
    });
    g.finish();

    // Modules as the paper builds them (1000 positives per class, MC-BLN).
    let cfg = DecompConfig {
        variant: Variant::McBln,
        ..DecompConfig::default()
    };
    let mods = modules(&model, &train, &exec, &cfg);
    let test = test.take(256);
    let mut g = c.benchmark_group("composed_eval_10_modules");
    g.sample_size(10);
    g.throughput(Throughput::Elements(test.len() as u64));
    for (name, mode) in [("batched", Mode::Batched), ("naive", Mode::Naive)] {
        g.bench_function(name, |b| {
            b.iter(|| {
                compose(
                    &mods,
                    &test,
                    &device,
                    128,
                    Top5Ranking::VotersFirst,
                    mode,
                    &mut |_| {},
                )
                .expect("compose")
            })
        });
    }
    g.finish();
}

criterion_group!(decompose, benches);
criterion_main!(decompose);
