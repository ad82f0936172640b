//! Training: it learns, write-back round trips, and a resumed run equals an uninterrupted one.

use decomp_data::Dataset;
use decomp_ir::{ModelIr, decode_artifact, encode_artifact};
use decomp_model::burn_resnet::ResNet;
use decomp_model::train::{
    AugmentConfig, OptimizerConfig, Schedule, TrainCheckpoint, TrainConfig, Trainer,
};
use decomp_model::{Device, Engine, ResNetConfig};

fn config(optimizer: OptimizerConfig, epochs: usize) -> TrainConfig {
    TrainConfig {
        optimizer,
        lr: 0.05,
        schedule: Schedule::Step {
            milestones: vec![0.5],
            factors: vec![0.1],
        },
        epochs,
        batch_size: 8,
        augment: AugmentConfig {
            pad_crop: 2,
            shift: 0.0,
            flip: true,
        },
        seed: 11,
        eval_batch_size: 16,
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

fn setup(bn: bool) -> (ModelIr, Dataset, Dataset) {
    let model = ResNetConfig::new(8, 3)
        .with_input([3, 16, 16])
        .with_batch_norm(bn)
        .with_seed(5)
        .build()
        .expect("build");
    let data = Dataset::synthetic(3, 24, [3, 16, 16], 4);
    let (train, val) = data.split_at_fraction(0.25, 1);
    (model, train, val)
}

/// A metrics row without the wall-clock fields: epoch, lr, train loss/acc, val loss/acc.
type Row = (usize, f64, f64, f64, Option<f64>, Option<f64>);

/// Everything the metrics rows hold except the wall-clock fields.
fn arithmetic(t: &Trainer) -> Vec<Row> {
    t.history()
        .iter()
        .map(|m| {
            (
                m.epoch,
                m.lr,
                m.train_loss,
                m.train_acc,
                m.val_loss,
                m.val_acc,
            )
        })
        .collect()
}

/// The graph with every parameter and statistic (PartialEq on floats: bit-for-bit here,
/// as no parameter is NaN).
fn params(m: &ModelIr) -> decomp_ir::Graph {
    m.graph.clone()
}

#[test]
fn write_back_round_trips_the_model() {
    let device = Device::flex();
    for bn in [true, false] {
        let (model, _, _) = setup(bn);
        let module = ResNet::from_ir(&model, &device).expect("load");
        let mut copy = model.clone();
        module.write_into(&mut copy).expect("write back");
        assert_eq!(params(&copy), params(&model), "bn={bn}");
    }
}

#[test]
fn training_learns_the_synthetic_classes() {
    let device = Device::flex();
    let (model, train, val) = setup(true);
    let mut t =
        Trainer::new(model, config(sgd(), 6), "synthetic".into(), &device).expect("trainer");
    while !t.finished() {
        t.run_epoch(&train, &val, &mut |_, _| {}).expect("epoch");
    }
    let h = t.history();
    assert!(
        h.last().expect("rows").train_loss < h[0].train_loss,
        "{h:?}"
    );
    let best = t.best().expect("best");
    assert!(
        best.accuracy > 0.6,
        "best validation accuracy {best:?} (chance is 1/3)"
    );
    // The best checkpoint's accuracy is what `evaluate` reports for it.
    assert_eq!(h[best.epoch - 1].val_acc, Some(best.accuracy));
}

/// A run interrupted after epoch 1 (its in-memory state lost mid-epoch 2) and resumed from
/// the serialized checkpoint computes the same epochs, bit for bit, as one that never
/// stopped; for both optimizers, with and without BatchNorm, on both training engines
/// (resumed under `Engine::Auto`, which picks the engine that wrote the checkpoint).
#[test]
fn resume_equals_uninterrupted() {
    for engine in [Engine::Cpu, Engine::Burn] {
        resume_equals_uninterrupted_on(engine);
    }
}

fn resume_equals_uninterrupted_on(engine: Engine) {
    let device = Device::flex();
    let adam = OptimizerConfig::Adam {
        beta1: 0.9,
        beta2: 0.999,
        epsilon: 1e-7,
        weight_decay: 1e-4,
    };
    for (optimizer, bn) in [(sgd(), true), (adam, false)] {
        let (model, train, val) = setup(bn);
        let cfg = TrainConfig {
            lr: if bn { 0.05 } else { 1e-3 },
            ..config(optimizer, 3)
        };
        let new = |m: ModelIr| {
            Trainer::with_engine(m, cfg.clone(), "d".into(), &device, engine).expect("trainer")
        };
        let mut straight = new(model.clone());
        assert_eq!(straight.engine(), engine);
        while !straight.finished() {
            straight
                .run_epoch(&train, &val, &mut |_, _| {})
                .expect("epoch");
        }

        let mut first = new(model);
        first
            .run_epoch(&train, &val, &mut |_, _| {})
            .expect("epoch 1");
        let (bytes, _) = encode_artifact(&first.checkpoint().expect("checkpoint")).expect("encode");
        // Epoch 2 starts, then the process "dies": half an epoch of updates is lost.
        let half = train.take(train.len() / 2);
        first
            .run_epoch(&half, &val, &mut |_, _| {})
            .expect("partial epoch");
        drop(first);

        let ckpt: TrainCheckpoint = decode_artifact(&bytes, "last.ckpt".as_ref()).expect("decode");
        assert_eq!(ckpt.epochs_done, 1);
        let mut resumed =
            Trainer::resume_with_engine(ckpt, &cfg, "d", &device, Engine::Auto).expect("resume");
        assert_eq!(resumed.engine(), engine);
        while !resumed.finished() {
            resumed
                .run_epoch(&train, &val, &mut |_, _| {})
                .expect("epoch");
        }
        assert_eq!(
            arithmetic(&resumed),
            arithmetic(&straight),
            "{engine:?} bn={bn}"
        );
        let (a, b) = (
            params(&resumed.model_ir().expect("ir")),
            params(&straight.model_ir().expect("ir")),
        );
        for (x, y) in a.nodes.iter().zip(&b.nodes) {
            assert_eq!(x, y, "{engine:?} bn={bn}: node {} differs", x.name);
        }
        assert_eq!(resumed.best(), straight.best());
    }
}

/// On `flex` the default training engine is the CPU engine; it learns, and its first
/// epoch's loss is burn autodiff's within float drift over the epoch's steps.
#[test]
fn cpu_engine_learns_like_burn() {
    let device = Device::flex();
    for bn in [true, false] {
        let (model, train, val) = setup(bn);
        let cfg = TrainConfig {
            lr: if bn { 0.05 } else { 0.02 },
            ..config(sgd(), 6)
        };
        let run = |engine: Engine, epochs: usize| {
            let mut t =
                Trainer::with_engine(model.clone(), cfg.clone(), "s".into(), &device, engine)
                    .expect("trainer");
            for _ in 0..epochs {
                t.run_epoch(&train, &val, &mut |_, _| {}).expect("epoch");
            }
            t
        };
        let cpu = run(Engine::Auto, 6);
        assert_eq!(
            cpu.engine(),
            Engine::Cpu,
            "Auto on flex trains on the CPU engine"
        );
        let burn = run(Engine::Burn, 1);
        let (a, b) = (cpu.history()[0].train_loss, burn.history()[0].train_loss);
        assert!(
            (a - b).abs() <= 1e-3 * b.abs(),
            "bn={bn}: first epoch loss {a} vs burn {b}"
        );
        let best = cpu.best().expect("best");
        assert!(
            best.accuracy > 0.6,
            "bn={bn}: best validation accuracy {best:?} (chance is 1/3)"
        );
    }
}

/// A checkpoint resumes only on the training engine that wrote it.
#[test]
fn resume_refuses_the_other_engine() {
    let device = Device::flex();
    let (model, train, val) = setup(true);
    let cfg = config(sgd(), 2);
    for (wrote, other) in [(Engine::Cpu, Engine::Burn), (Engine::Burn, Engine::Cpu)] {
        let mut t = Trainer::with_engine(model.clone(), cfg.clone(), "d".into(), &device, wrote)
            .expect("trainer");
        t.run_epoch(&train, &val, &mut |_, _| {}).expect("epoch");
        let ckpt = t.checkpoint().expect("checkpoint");
        let err = Trainer::resume_with_engine(ckpt.clone(), &cfg, "d", &device, other)
            .err()
            .expect("refused");
        assert!(
            err.to_string().contains("training engine"),
            "{wrote:?}: {err}"
        );
        let t = Trainer::resume_with_engine(ckpt, &cfg, "d", &device, wrote).expect("resume");
        assert_eq!((t.engine(), t.epochs_done()), (wrote, 1));
    }
}

#[test]
fn resume_refuses_other_settings() {
    let device = Device::flex();
    let (model, train, val) = setup(true);
    let cfg = config(sgd(), 2);
    let mut t = Trainer::new(model, cfg.clone(), "data-a".into(), &device).expect("trainer");
    t.run_epoch(&train, &val, &mut |_, _| {}).expect("epoch");
    let ckpt = t.checkpoint().expect("checkpoint");
    let other = TrainConfig {
        lr: 0.2,
        ..cfg.clone()
    };
    let err = Trainer::resume(ckpt.clone(), &other, "data-a", &device)
        .err()
        .expect("refused");
    assert!(
        err.to_string().contains("different training configuration"),
        "{err}"
    );
    let err = Trainer::resume(ckpt.clone(), &cfg, "data-b", &device)
        .err()
        .expect("refused");
    assert!(err.to_string().contains("other training data"), "{err}");
    // Training longer is allowed.
    let longer = TrainConfig { epochs: 4, ..cfg };
    let t = Trainer::resume(ckpt, &longer, "data-a", &device).expect("longer run");
    assert_eq!((t.epochs_done(), t.finished()), (1, false));
}

#[test]
fn schedules_and_config_errors() {
    let mut cfg = config(sgd(), 10);
    cfg.lr = 0.1;
    cfg.schedule = Schedule::Step {
        milestones: vec![0.5, 0.75],
        factors: vec![0.1, 0.01],
    };
    let lrs: Vec<f64> = (0..10).map(|e| cfg.lr_at(e, 0, 5)).collect();
    let expect = [0.1, 0.1, 0.1, 0.1, 0.1, 0.01, 0.01, 0.01, 0.001, 0.001];
    for (a, b) in lrs.iter().zip(expect) {
        assert!((a - b).abs() < 1e-12, "{lrs:?}");
    }
    cfg.schedule = Schedule::Cosine { min_factor: 0.0 };
    assert!((cfg.lr_at(0, 0, 5) - 0.1).abs() < 1e-12);
    assert!((cfg.lr_at(5, 0, 5) - 0.05).abs() < 1e-12);
    assert!(cfg.lr_at(9, 4, 5) < 0.001);

    let bad = [
        (
            TrainConfig {
                lr: -1.0,
                ..config(sgd(), 1)
            },
            "lr",
        ),
        (
            TrainConfig {
                epochs: 0,
                ..config(sgd(), 1)
            },
            "epochs",
        ),
        (
            TrainConfig {
                batch_size: 0,
                ..config(sgd(), 1)
            },
            "batch_size",
        ),
        (
            TrainConfig {
                schedule: Schedule::Step {
                    milestones: vec![0.5],
                    factors: vec![],
                },
                ..config(sgd(), 1)
            },
            "one factor per milestone",
        ),
    ];
    for (cfg, needle) in bad {
        let err = cfg.validate().expect_err("invalid");
        assert!(err.to_string().contains(needle), "{err}");
    }
}
