//! The CPU training engine's loss, gradients and BatchNorm running statistics against burn
//! autodiff on the same batch (`burn_resnet::ResNet` on `flex`'s autodiff device, the
//! module `train` trains), and SGD / Adam steps against `train::Trainer::step`.

use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::GradientsParams;
use burn::tensor::{Int, TensorData as BurnData};
use decomp_data::{Batch, Dataset, DatasetKind, Normalization};
use decomp_ir::{ModelIr, Op};
use decomp_model::burn_resnet::{ResNet, param_id};
use decomp_model::import::{akamaster_norm, import_resnet};
use decomp_model::train::{AugmentConfig, OptimizerConfig, Schedule, TrainConfig, Trainer};
use decomp_model::{
    CpuOptimizer, CpuTuning, Device, Engine, GradEngine, ResNetConfig, Shortcut, Tensor, to_vec,
};

use crate::shared_dir;

/// burn's loss and gradients of `net` on `batch`: the gradients as burn holds them (for its
/// optimizer) and, in IR layout, the ones named in `names` (with their ranks).
fn burn_gradients(
    net: &ResNet,
    batch: &Batch,
    names: &[(String, usize)],
) -> (f64, GradientsParams, Vec<Vec<f32>>) {
    let ad = Device::flex().autodiff();
    let n = batch.labels.len();
    let x = Tensor::<4>::from_data(BurnData::new(batch.images.clone(), batch.shape), &ad);
    let targets: Vec<i64> = batch.labels.iter().map(|&l| l as i64).collect();
    let y = Tensor::<1, Int>::from_data(BurnData::new(targets, [n]), &ad);
    let logits = net.forward(x);
    let loss = CrossEntropyLossConfig::new().init(&ad).forward(logits, y);
    let loss_value = f64::from(to_vec(loss.clone().detach())[0]);
    let grads = GradientsParams::from_grads(loss.backward(), net);
    let got = names
        .iter()
        .map(|(name, rank)| {
            let id = param_id(name);
            if name == "linear.weight" {
                // burn's linear weight is `[in, out]`.
                let g = grads.get::<2>(id).expect("linear weight gradient");
                to_vec(g.transpose())
            } else if *rank == 4 {
                to_vec(grads.get::<4>(id).expect("weight gradient"))
            } else {
                to_vec(
                    grads
                        .get::<1>(id)
                        .unwrap_or_else(|| panic!("no burn gradient for {name}")),
                )
            }
        })
        .collect();
    (loss_value, grads, got)
}

/// burn's loss, every parameter gradient (IR layout, by name) and the model with the
/// running statistics after the step.
fn burn_reference(
    model: &ModelIr,
    batch: &Batch,
    names: &[(String, usize)],
) -> (f64, Vec<Vec<f32>>, ModelIr) {
    let net = ResNet::from_ir(model, &Device::flex().autodiff()).expect("burn module");
    let (loss, _, got) = burn_gradients(&net, batch, names);
    let mut after = model.clone();
    net.write_into(&mut after).expect("write back");
    (loss, got, after)
}

/// Worst errors of one comparison: the largest absolute difference, and the largest
/// relative difference among elements where the absolute one exceeds `abs_tol`.
#[derive(Default, Debug)]
struct Worst {
    abs: f64,
    rel: f64,
    rel_at: String,
}

impl Worst {
    fn add(&mut self, what: &str, got: &[f32], want: &[f32], abs_tol: f64) {
        assert_eq!(got.len(), want.len(), "{what}: lengths");
        for (i, (&a, &b)) in got.iter().zip(want).enumerate() {
            let d = (f64::from(a) - f64::from(b)).abs();
            assert!(d.is_finite(), "{what}[{i}]: {a} vs {b}");
            self.abs = self.abs.max(d);
            if d > abs_tol {
                let rel = d / f64::from(b).abs();
                if rel > self.rel {
                    self.rel = rel;
                    self.rel_at = format!("{what}[{i}]: {a} vs burn {b}");
                }
            }
        }
    }
}

/// How far the engine's step is from burn's.
struct Report {
    loss_rel: f64,
    grads: Worst,
    /// Largest `max |a - b| / max |b|` over the parameter tensors.
    grads_scaled: f64,
    stats: Worst,
}

/// Every element of a gradient or running statistic within `REL` relative or `ABS` absolute
/// (for values near zero) of burn's, and the loss within `REL`.
const REL: f64 = 1e-4;
const ABS: f64 = 1e-6;

/// The engine's loss, gradients and running statistics after one step on `batch`, against
/// burn's (printed).
fn compare(label: &str, model: &ModelIr, batch: &Batch, tuning: CpuTuning) -> Report {
    let mut engine = GradEngine::new(model.clone())
        .expect("engine")
        .with_tuning(tuning);
    let step = engine
        .gradients(&batch.images, &batch.labels)
        .expect("gradients");
    let names: Vec<(String, usize)> = step
        .params
        .iter()
        .map(|p| (p.name.clone(), p.grad.shape.len()))
        .collect();
    let expected_params: usize = model
        .graph
        .nodes
        .iter()
        .map(|n| match &n.op {
            Op::Conv2d { bias, .. } | Op::Linear { bias, .. } => 1 + usize::from(bias.is_some()),
            Op::BatchNorm2d { .. } => 2,
            _ => 0,
        })
        .sum();
    assert_eq!(
        names.len(),
        expected_params,
        "{label}: one gradient per parameter"
    );
    let (loss, want, after) = burn_reference(model, batch, &names);
    let mut r = Report {
        loss_rel: (step.loss - loss).abs() / loss.abs(),
        grads: Worst::default(),
        grads_scaled: 0.0,
        stats: Worst::default(),
    };
    for (p, w) in step.params.iter().zip(&want) {
        r.grads.add(&p.name, &p.grad.data, w, ABS);
        let mut one = Worst::default();
        one.add(&p.name, &p.grad.data, w, ABS);
        let scale = w.iter().fold(0.0f64, |m, v| m.max(f64::from(v.abs())));
        r.grads_scaled = r.grads_scaled.max(one.abs / scale.max(f64::MIN_POSITIVE));
    }
    for (mine, theirs) in engine.model().graph.nodes.iter().zip(&after.graph.nodes) {
        if let (
            Op::BatchNorm2d {
                running_mean: m1,
                running_var: v1,
                ..
            },
            Op::BatchNorm2d {
                running_mean: m2,
                running_var: v2,
                ..
            },
        ) = (&mine.op, &theirs.op)
        {
            r.stats.add(
                &format!("{}.running_mean", mine.name),
                &m1.data,
                &m2.data,
                ABS,
            );
            r.stats.add(
                &format!("{}.running_var", mine.name),
                &v1.data,
                &v2.data,
                ABS,
            );
        }
    }
    eprintln!(
        "{label}: loss {:.6} (burn {loss:.6}, rel {:.1e}); {} gradients: max abs {:.2e}, \
         max rel (beyond {ABS:.0e} abs) {:.2e} at {}, max abs / tensor max {:.2e}; \
         running stats: max abs {:.2e}, max rel {:.2e}",
        step.loss,
        r.loss_rel,
        names.len(),
        r.grads.abs,
        r.grads.rel,
        r.grads.rel_at,
        r.grads_scaled,
        r.stats.abs,
        r.stats.rel
    );
    r
}

/// The strict check: loss, every gradient element and every running statistic within
/// `REL` relative or `ABS` absolute.
fn check(label: &str, model: &ModelIr, batch: &Batch, tuning: CpuTuning) {
    let r = compare(label, model, batch, tuning);
    assert!(
        r.loss_rel < REL,
        "{label}: loss differs by {:.2e}",
        r.loss_rel
    );
    assert!(r.grads.rel <= REL, "{label}: gradient {}", r.grads.rel_at);
    assert!(
        r.grads_scaled <= REL,
        "{label}: gradients differ by {:.2e} of their tensor's largest value",
        r.grads_scaled
    );
    assert!(
        r.stats.rel <= REL,
        "{label}: running statistic {}",
        r.stats.rel_at
    );
}

fn tunings() -> [(&'static str, CpuTuning); 2] {
    [
        ("winograd", CpuTuning::default()),
        (
            "im2col",
            CpuTuning {
                winograd: false,
                tile: 3,
                ..CpuTuning::default()
            },
        ),
    ]
}

fn synthetic(input: [usize; 3], classes: usize, n: usize) -> Batch {
    let ds = Dataset::synthetic(classes, n.div_ceil(classes), input, 7);
    ds.shuffled(3).batch(0..n).expect("batch")
}

/// A ResNet-20 without BatchNorm (the paper's setting; convolutions carry biases).
#[test]
fn no_batch_norm_resnet20_gradients_equal_burn() {
    let model = ResNetConfig::new(20, 10)
        .with_batch_norm(false)
        .with_seed(3)
        .build()
        .expect("build");
    let batch = synthetic([3, 32, 32], 10, 10);
    for (name, tuning) in tunings() {
        check(&format!("resnet20 no-bn ({name})"), &model, &batch, tuning);
    }
}

/// Option-B shortcuts (1x1 strided convolution + BatchNorm), 64x64 inputs, 5 classes.
#[test]
fn option_b_64px_gradients_equal_burn() {
    let model = ResNetConfig::new(8, 5)
        .with_shortcut(Shortcut::B)
        .with_input([3, 64, 64])
        .with_seed(4)
        .build()
        .expect("build");
    let batch = synthetic([3, 64, 64], 5, 6);
    for (name, tuning) in tunings() {
        check(
            &format!("resnet8 option-B 64px ({name})"),
            &model,
            &batch,
            tuning,
        );
    }
}

/// The pretrained ResNet-20 and the first CIFAR-10 training file, normalized as it was
/// trained.
fn pretrained(shared: &std::path::Path) -> (ModelIr, Dataset) {
    let model = import_resnet(
        &shared.join("models/cifar10/resnet20-12fca82f.th"),
        Some(&ResNetConfig::new(20, 10)),
        akamaster_norm(),
        None,
    )
    .expect("import");
    let norm = akamaster_norm();
    let data = Dataset::from_cifar_file(
        DatasetKind::Cifar10,
        &shared.join("datasets/cifar-10-batches-bin/data_batch_1.bin"),
    )
    .expect("CIFAR-10 batch")
    .with_normalization(Normalization::new(&norm.mean, &norm.std));
    (model, data)
}

/// The pretrained ResNet-20 (BatchNorm, option-A shortcuts) on real CIFAR-10 images.
#[test]
fn pretrained_resnet20_gradients_equal_burn() {
    let Some(shared) = shared_dir() else { return };
    let (model, data) = pretrained(&shared);
    let batch = data.batch(0..32).expect("batch");
    let [(_, winograd), (_, im2col)] = tunings();
    // The engine's default path (Winograd forward and data gradients): strict.
    check("pretrained resnet20 (winograd)", &model, &batch, winograd);
    // The im2col path rounds differently, and on this batch one of the 131,072 inputs of
    // `layer3.2.relu1` lands on the other side of zero than in burn's forward (the engine's
    // two paths differ in exactly that ReLU mask): the gradient of that one position flows
    // back through every layer, a kink of the loss, not an error of the backward pass. The
    // loss and running statistics stay strict; gradients are checked against each tensor's
    // largest value.
    let r = compare("pretrained resnet20 (im2col)", &model, &batch, im2col);
    assert!(r.loss_rel < REL, "loss differs by {:.2e}", r.loss_rel);
    assert!(r.stats.rel <= REL, "running statistic {}", r.stats.rel_at);
    assert!(
        r.grads_scaled < 1e-2,
        "gradients differ by {:.2e} of their tensor's largest value",
        r.grads_scaled
    );
}

/// Every parameter and running statistic of a model, by name.
fn tensors(model: &ModelIr) -> Vec<(String, Vec<f32>)> {
    let mut out = Vec::new();
    for n in &model.graph.nodes {
        let mut push = |what: &str, t: &decomp_ir::TensorData| {
            out.push((format!("{}.{what}", n.name), t.data.clone()));
        };
        match &n.op {
            Op::Conv2d { weight, bias, .. } | Op::Linear { weight, bias } => {
                push("weight", weight);
                if let Some(b) = bias {
                    push("bias", b);
                }
            }
            Op::BatchNorm2d {
                gamma,
                beta,
                running_mean,
                running_var,
                ..
            } => {
                push("weight", gamma);
                push("bias", beta);
                push("running_mean", running_mean);
                push("running_var", running_var);
            }
            _ => {}
        }
    }
    out
}

/// `steps` optimizer steps on `batch` on the engine and through `Trainer::step` (burn)
/// leave every parameter within 1e-5 of each other.
fn check_optimizer(
    label: &str,
    model: &ModelIr,
    batch: &Batch,
    optimizer: OptimizerConfig,
    lr: f64,
    steps: usize,
    tuning: CpuTuning,
    adam_floor: Option<f64>,
) {
    let n = batch.labels.len();
    let config = TrainConfig {
        optimizer: optimizer.clone(),
        lr,
        schedule: Schedule::Constant,
        epochs: 1,
        batch_size: n,
        augment: AugmentConfig::default(),
        seed: 0,
        eval_batch_size: n,
    };
    // Adam divides each step by `sqrt(v) + eps`, so where the decayed gradient `g + wd w` is
    // within a few `eps` of zero a rounding-level difference of `g` (which the gradient tests
    // bound) becomes a difference of a good part of `lr`. Those elements (burn's gradient at
    // the start, one step) only have to move by at most `lr`; every other one within 1e-5.
    let sensitive: Option<std::collections::HashMap<String, Vec<bool>>> = adam_floor.map(|floor| {
        assert_eq!(steps, 1, "the Adam floor uses the first step's gradients");
        let OptimizerConfig::Adam { weight_decay, .. } = &optimizer else {
            panic!("adam_floor is for Adam")
        };
        let mut probe = GradEngine::new(model.clone()).expect("engine");
        let names: Vec<(String, usize)> = probe
            .gradients(&batch.images, &batch.labels)
            .expect("gradients")
            .params
            .iter()
            .map(|p| (p.name.clone(), p.grad.shape.len()))
            .collect();
        let (_, grads, _) = burn_reference(model, batch, &names);
        let start: std::collections::HashMap<String, Vec<f32>> =
            tensors(model).into_iter().collect();
        names
            .iter()
            .zip(grads)
            .map(|((name, _), g)| {
                let w = &start[name];
                let flags = g
                    .iter()
                    .zip(w)
                    .map(|(&g, &w)| (f64::from(g) + *weight_decay * f64::from(w)).abs() < floor)
                    .collect();
                (name.clone(), flags)
            })
            .collect()
    });
    let mut burn = Trainer::with_engine(
        model.clone(),
        config,
        "grad-test".into(),
        &Device::flex(),
        Engine::Burn,
    )
    .expect("trainer");
    let mut engine = GradEngine::new(model.clone())
        .expect("engine")
        .with_tuning(tuning);
    let mut opt = CpuOptimizer::new(optimizer);
    for step in 0..steps {
        let (want_loss, want_right) = burn.step(batch.clone(), lr).expect("burn step");
        let (loss, right) = engine
            .step(&mut opt, &batch.images, &batch.labels, lr)
            .expect("engine step");
        assert!(
            (loss - want_loss).abs() <= REL * want_loss.abs(),
            "{label} step {step}: loss {loss} vs burn {want_loss}"
        );
        assert_eq!(right, want_right, "{label} step {step}: images right");
    }
    let want = tensors(&burn.model_ir().expect("burn model"));
    let got = tensors(engine.model());
    assert_eq!(got.len(), want.len());
    let (mut worst, mut at, mut loose) = (0.0f64, String::new(), 0usize);
    for ((name, a), (_, b)) in got.iter().zip(&want) {
        let flags = sensitive.as_ref().and_then(|m| m.get(name));
        for (i, (&x, &y)) in a.iter().zip(b).enumerate() {
            let d = (f64::from(x) - f64::from(y)).abs();
            if flags.is_some_and(|f| f[i]) {
                loose += 1;
                assert!(
                    d <= lr,
                    "{label}: {name}[{i}] moved {d:.2e} from burn's, beyond lr"
                );
                continue;
            }
            if d > worst {
                worst = d;
                at = format!("{name}[{i}]: {x} vs burn {y}");
            }
        }
    }
    eprintln!(
        "{label}: after {steps} steps, max |parameter - burn's| {worst:.2e} ({at}); \
         {loose} Adam-sensitive elements within lr"
    );
    assert!(worst <= 1e-5, "{label}: {at}");
}

fn he2016_sgd() -> OptimizerConfig {
    OptimizerConfig::Sgd {
        momentum: 0.9,
        dampening: 0.0,
        nesterov: false,
        weight_decay: 1e-4,
    }
}

fn keras_adam() -> OptimizerConfig {
    OptimizerConfig::Adam {
        beta1: 0.9,
        beta2: 0.999,
        epsilon: 1e-7,
        weight_decay: 1e-4,
    }
}

/// SGD (he2016's settings, and Nesterov with dampening) and Adam (paper-keras's) steps
/// equal burn's optimizer path on small models.
#[test]
fn optimizer_steps_equal_burn() {
    let no_bn = ResNetConfig::new(20, 10)
        .with_batch_norm(false)
        .with_seed(3)
        .build()
        .expect("build");
    let batch = synthetic([3, 32, 32], 10, 8);
    // One Adam step; elements whose decayed gradient is below 10 eps are Adam-sensitive
    // (see `check_optimizer`; here e.g. `layer3.2.conv2.weight[11536]` moves 3.71e-4 vs
    // burn's 3.18e-4 with Winograd weight gradients).
    let default = CpuTuning::default();
    let adam = keras_adam();
    check_optimizer(
        "no-bn resnet20 adam",
        &no_bn,
        &batch,
        adam,
        1e-3,
        1,
        default,
        Some(1e-6),
    );
    check_optimizer(
        "no-bn resnet20 sgd",
        &no_bn,
        &batch,
        he2016_sgd(),
        0.01,
        2,
        default,
        None,
    );
    let bn = ResNetConfig::new(8, 5)
        .with_shortcut(Shortcut::B)
        .with_seed(4)
        .build()
        .expect("build");
    let batch = synthetic([3, 32, 32], 5, 10);
    let nesterov = OptimizerConfig::Sgd {
        momentum: 0.8,
        dampening: 0.1,
        nesterov: true,
        weight_decay: 5e-4,
    };
    check_optimizer(
        "resnet8 option-B sgd nesterov",
        &bn,
        &batch,
        nesterov,
        0.1,
        3,
        default,
        None,
    );
    // Adam on a BatchNorm model is checked by `optimizer_arithmetic_equals_burn` instead:
    // Adam divides by `sqrt(v) + eps`, so where a gradient is near `eps` (here
    // `layer3.0.conv2.weight[22100]`: -5.19e-8 vs burn's -5.75e-8, of a tensor whose
    // largest gradient is 6.7e-2), a rounding-level difference becomes a 2.3e-5 difference
    // of the step (with L2 decay the same happens where decay cancels the gradient).
}

/// he2016's SGD on the pretrained ResNet-20 and real images.
#[test]
fn pretrained_resnet20_sgd_steps_equal_burn() {
    let Some(shared) = shared_dir() else { return };
    let (model, data) = pretrained(&shared);
    let batch = data.batch(32..64).expect("batch");
    check_optimizer(
        "pretrained resnet20 sgd",
        &model,
        &batch,
        he2016_sgd(),
        0.1,
        2,
        CpuTuning::default(),
        None,
    );
}

/// The optimizer arithmetic alone: fed burn's own gradients for three steps (so momentum
/// and Adam's moments carry state), `CpuOptimizer` moves every parameter as burn's
/// optimizer does.
#[test]
fn optimizer_arithmetic_equals_burn() {
    use burn::optim::decay::WeightDecayConfig;
    use burn::optim::momentum::MomentumConfig;
    use burn::optim::{AdamConfig, SgdConfig};
    use decomp_model::{ParamGrad, StepGradients};

    let model = ResNetConfig::new(8, 5)
        .with_shortcut(Shortcut::B)
        .with_seed(4)
        .build()
        .expect("build");
    let batch = synthetic([3, 32, 32], 5, 10);
    let names: Vec<(String, usize)> = GradEngine::new(model.clone())
        .expect("engine")
        .gradients(&batch.images, &batch.labels)
        .expect("gradients")
        .params
        .iter()
        .map(|p| (p.name.clone(), p.grad.shape.len()))
        .collect();
    let cases = [
        (
            "sgd nesterov",
            OptimizerConfig::Sgd {
                momentum: 0.8,
                dampening: 0.1,
                nesterov: true,
                weight_decay: 5e-4,
            },
            SgdConfig::new()
                .with_momentum(Some(MomentumConfig {
                    momentum: 0.8,
                    dampening: 0.1,
                    nesterov: true,
                }))
                .with_weight_decay(Some(WeightDecayConfig::new(5e-4)))
                .init(),
            0.1,
        ),
        (
            "adam",
            keras_adam(),
            AdamConfig::new()
                .with_beta_1(0.9)
                .with_beta_2(0.999)
                .with_epsilon(1e-7)
                .with_weight_decay(Some(WeightDecayConfig::new(1e-4)))
                .init(),
            1e-3,
        ),
    ];
    for (label, config, mut burn_opt, lr) in cases {
        let mut net = ResNet::from_ir(&model, &Device::flex().autodiff()).expect("burn module");
        let mut mine = model.clone();
        let mut opt = CpuOptimizer::new(config);
        for _ in 0..3 {
            let (loss, grads, values) = burn_gradients(&net, &batch, &names);
            let params = names
                .iter()
                .zip(values)
                .map(|((name, _), data)| {
                    let node_name = name.rsplit_once('.').expect("suffix").0;
                    let node = mine.graph.find(node_name).expect("node");
                    let shape = match &mine.graph.nodes[node].op {
                        Op::Conv2d { weight, .. } | Op::Linear { weight, .. }
                            if name.ends_with(".weight") =>
                        {
                            weight.shape.clone()
                        }
                        _ => vec![data.len()],
                    };
                    ParamGrad {
                        node,
                        name: name.clone(),
                        grad: decomp_ir::TensorData { shape, data },
                    }
                })
                .collect();
            let step = StepGradients {
                loss,
                correct: 0,
                params,
            };
            net = burn_opt.step(lr, net, grads);
            opt.step(&mut mine, &step, lr).expect("step");
        }
        let mut want = model.clone();
        net.write_into(&mut want).expect("write back");
        let (mut worst, mut at) = (0.0f64, String::new());
        for ((name, a), (_, b)) in tensors(&mine).iter().zip(&tensors(&want)) {
            if name.contains("running_") {
                continue;
            }
            for (i, (&x, &y)) in a.iter().zip(b).enumerate() {
                let d = (f64::from(x) - f64::from(y)).abs();
                if d > worst {
                    worst = d;
                    at = format!("{name}[{i}]: {x} vs burn {y}");
                }
            }
        }
        eprintln!(
            "{label} on burn's gradients, 3 steps: max |parameter - burn's| {worst:.2e} {at}"
        );
        assert!(worst <= 1e-6, "{label}: {at}");
    }
}

/// A weight whose loss gradient is zero decays through the subnormal range under weight
/// decay (Adam's most of all); a step sets parameters below 1e-20 to zero, subnormal ones
/// included, so the convolution kernels never meet one (each such FMA is a microcode assist
/// on x86), while the other weights move as before.
#[test]
fn steps_zero_negligible_parameters() {
    use decomp_model::{ParamGrad, StepGradients};

    let model = ResNetConfig::new(8, 3).with_seed(5).build().expect("build");
    let conv = model
        .graph
        .nodes
        .iter()
        .position(|n| matches!(n.op, Op::Conv2d { .. }))
        .expect("a convolution");
    let name = format!("{}.weight", model.graph.nodes[conv].name);
    let tiny = f32::from_bits(1 << 20); // about 1.5e-39
    assert!(tiny.is_subnormal());
    for (label, config, lr) in [("sgd", he2016_sgd(), 0.1), ("adam", keras_adam(), 1e-5)] {
        let mut m = model.clone();
        *param_value(&mut m, conv, &name, 0) = tiny;
        *param_value(&mut m, conv, &name, 1) = -1e-25;
        *param_value(&mut m, conv, &name, 3) = 1e-12;
        let normal = *param_value(&mut m, conv, &name, 2);
        let Op::Conv2d { weight, .. } = &m.graph.nodes[conv].op else {
            unreachable!()
        };
        let mut data = vec![0.0f32; weight.data.len()];
        data[2] = 0.5;
        let step = StepGradients {
            loss: 1.0,
            correct: 0,
            params: vec![ParamGrad {
                node: conv,
                name: name.clone(),
                grad: decomp_ir::TensorData {
                    shape: weight.shape.clone(),
                    data,
                },
            }],
        };
        let mut opt = CpuOptimizer::new(config);
        for _ in 0..3 {
            opt.step(&mut m, &step, lr).expect("step");
        }
        assert_eq!(*param_value(&mut m, conv, &name, 0), 0.0, "{label}");
        assert_eq!(*param_value(&mut m, conv, &name, 1), 0.0, "{label}");
        let moved = *param_value(&mut m, conv, &name, 2);
        assert!(
            moved < normal && moved.is_normal(),
            "{label}: {normal} -> {moved}"
        );
        let small = *param_value(&mut m, conv, &name, 3);
        assert!(small > 1e-13, "{label}: 1e-12 -> {small}");
        let subnormal = tensors(&m)
            .iter()
            .flat_map(|(_, v)| v.iter())
            .filter(|v| v.is_subnormal())
            .count();
        assert_eq!(subnormal, 0, "{label}");
    }
}

/// The parameter value `index` of gradient `name` (`<node>.weight` / `<node>.bias`) of node
/// `node`, mutable.
fn param_value<'a>(model: &'a mut ModelIr, node: usize, name: &str, index: usize) -> &'a mut f32 {
    let weight = name.ends_with(".weight");
    let t = match &mut model.graph.nodes[node].op {
        Op::Conv2d {
            weight: w, bias, ..
        }
        | Op::Linear { weight: w, bias } => {
            if weight {
                w
            } else {
                bias.as_mut().expect("a bias")
            }
        }
        Op::BatchNorm2d { gamma, beta, .. } => {
            if weight {
                gamma
            } else {
                beta
            }
        }
        op => panic!("{name}: no parameter in a {}", op.kind()),
    };
    &mut t.data[index]
}

/// A BatchNorm ResNet-8 (4 classes, running statistics that are not the identity), the
/// binary head of its class 1 and a channel plan dropping a third of every channel group,
/// with non-zero fills.
fn channel_setup() -> (
    ModelIr,
    decomp_ir::BinaryHead,
    decomp_ir::channel::ChannelPlan,
) {
    use decomp_ir::channel::{ChannelPlan, channel_spaces};
    use decomp_ir::{BinaryHead, TensorData};

    let mut model = ResNetConfig::new(8, 4).with_seed(5).build().expect("build");
    // Running statistics that are not the identity, so frozen BatchNorms matter.
    for (i, node) in model.graph.nodes.iter_mut().enumerate() {
        if let Op::BatchNorm2d {
            running_mean,
            running_var,
            ..
        } = &mut node.op
        {
            for (j, (m, v)) in running_mean
                .data
                .iter_mut()
                .zip(running_var.data.iter_mut())
                .enumerate()
            {
                let s = ((i * 31 + j * 7) as f32 * 0.37).sin();
                *m = 0.2 * s;
                *v = 0.6 + 0.5 * s.abs();
            }
        }
    }
    let shapes = model.check().expect("valid");
    let spaces = channel_spaces(&model.graph, &shapes).expect("spaces");
    let mut plan = ChannelPlan::keep_all(&spaces);
    for (gi, g) in plan.groups.iter_mut().enumerate() {
        for c in 0..g.kept.len() {
            if (c + gi) % 3 == 1 {
                g.kept.set(c, false);
            }
        }
        for (si, f) in g.fill.iter_mut().enumerate() {
            for (c, v) in f.iter_mut().enumerate() {
                *v = 0.05 * ((c + si) % 4) as f32;
            }
        }
    }
    let out = model.graph.output;
    let Op::Linear { weight, bias } = &model.graph.nodes[out].op else {
        panic!("a linear head")
    };
    let f = weight.shape[1];
    let mut w = weight.data[f..2 * f].to_vec();
    w.extend(weight.data[2 * f..3 * f].iter());
    let head = BinaryHead {
        input: model.graph.nodes[out].inputs[0],
        weight: TensorData {
            shape: vec![2, f],
            data: w,
        },
        bias: TensorData {
            shape: vec![2],
            data: bias.as_ref().expect("bias").data[1..3].to_vec(),
        },
    };
    (model, head, plan)
}

/// [`channel_setup`]'s channel module: its convolutions have 10-11, 21-22 and 42-43
/// channels, none a multiple of 8.
fn channel_module() -> ModelIr {
    let (model, head, plan) = channel_setup();
    decomp_ir::channel::extract(&model, &head, 1, &plan).expect("extract")
}

/// Channel selection's gate gradients on the CPU engine equal burn autodiff's: the masked
/// reference of [`channel_setup`] (masks at BatchNorm and residual-sum sites, frozen
/// BatchNorms), a gate with non-zero means on every ReLU; with the fills added back by bias
/// maps, and with zero fills (no bias maps: BatchNorms and their ReLUs fuse in the engine).
#[test]
fn gate_gradients_equal_burn() {
    use decomp_model::Executor;
    let (model, head, plan) = channel_setup();
    let mut zero_fills = plan.clone();
    for g in &mut zero_fills.groups {
        g.fill.iter_mut().for_each(|f| f.fill(0.0));
    }
    for (fills, plan, zero) in [("fills", &plan, false), ("zero fills", &zero_fills, true)] {
        let (refm, masks) =
            decomp_ir::channel::reference(&model, &head, 1, plan).expect("reference");
        let bias_maps = refm
            .graph
            .nodes
            .iter()
            .filter(|n| matches!(n.op, Op::BiasMap { .. }))
            .count();
        assert_eq!(bias_maps == 0, zero, "{fills}: {bias_maps} bias maps");
        assert!(masks.len() >= 5, "masks at every site");
        let shapes = refm.check().expect("valid");
        let means: Vec<(usize, Vec<f32>)> = refm
            .graph
            .nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| matches!(n.op, Op::Relu))
            .map(|(i, _)| {
                let c = shapes[i][0];
                (i, (0..c).map(|k| 0.03 * ((k + i) % 5) as f32).collect())
            })
            .collect();
        let gated: Vec<(usize, &[f32])> = means.iter().map(|(i, m)| (*i, m.as_slice())).collect();
        let batch = synthetic([3, 32, 32], 2, 10);
        let device = Device::flex();
        let exec = Executor::with_engine(&refm, &device.clone().autodiff(), Engine::Burn)
            .expect("autodiff executor");
        let compiled = exec.compile_masks(&masks).expect("masks");
        let want = exec
            .gate_gradients(
                exec.input_tensor(batch.images.clone(), 10).expect("input"),
                Some(&compiled),
                &gated,
            )
            .expect("burn gate gradients");
        for (label, tuning) in tunings() {
            let label = format!("{fills}, {label}");
            let engine = GradEngine::new(refm.clone())
                .expect("engine")
                .with_tuning(tuning);
            let got = engine
                .gate_gradients(&batch.images, &masks, &gated)
                .expect("cpu gate gradients");
            assert_eq!(got.len(), want.len());
            for ((node, _), (g, w)) in gated.iter().zip(got.iter().zip(&want)) {
                assert_eq!(g.len(), w.len(), "{label}: node {node}");
                let scale = w.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-6);
                let worst = g
                    .iter()
                    .zip(w)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0f32, f32::max);
                assert!(
                    worst <= 1e-4 * scale + 1e-6,
                    "{label}: node {node} ({}): worst difference {worst} of {scale}",
                    refm.graph.nodes[*node].name
                );
            }
            // The masks matter: without them the gradients differ.
            let unmasked = engine
                .gate_gradients(&batch.images, &[], &gated)
                .expect("unmasked");
            assert_ne!(unmasked, got, "{label}: masks change the gate gradients");
        }
    }
}

/// The channel module's gradients (its convolutions' widths are not multiples of 8, so the
/// register-blocked weight gradients run on zero-padded channels) equal those of the `gemm`
/// crate's path without the register-blocked kernels.
#[test]
fn odd_width_gradients_equal_the_gemm_path() {
    use decomp_model::Target;
    let module = channel_module();
    let widths: Vec<usize> = module
        .graph
        .nodes
        .iter()
        .filter_map(|n| match &n.op {
            Op::Conv2d { weight, .. } => Some(weight.shape[1]),
            _ => None,
        })
        .collect();
    assert!(
        widths.iter().filter(|w| !w.is_multiple_of(8)).count() >= 5,
        "{widths:?}"
    );
    let batch = synthetic([3, 32, 32], 4, 6);
    let targets: Vec<f32> = (0..6).map(|i| (i as f32 * 1.3).sin() * 2.0).collect();
    let target = Target::Margins {
        targets: &targets,
        floors: None,
    };
    let grads = |tuning: CpuTuning| {
        GradEngine::new(module.clone())
            .expect("differentiable")
            .with_frozen_batch_norm(true)
            .with_tuning(tuning)
            .gradients_for(&batch.images, target)
            .expect("gradients")
    };
    let fast = grads(CpuTuning::default());
    let gemm = grads(CpuTuning {
        small_kernels: false,
        ..CpuTuning::default()
    });
    assert!((fast.loss - gemm.loss).abs() <= 1e-6 * gemm.loss.abs().max(1.0));
    assert_eq!(fast.params.len(), gemm.params.len());
    for (a, b) in fast.params.iter().zip(&gemm.params) {
        assert_eq!(a.name, b.name);
        let top = b.grad.data.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        for (i, (x, y)) in a.grad.data.iter().zip(&b.grad.data).enumerate() {
            assert!(
                (x - y).abs() <= 1e-4 * y.abs() + 1e-6 * top.max(1.0),
                "{}[{i}]: {x} vs {y}",
                a.name
            );
        }
    }
}

/// A channel module of a small BatchNorm ResNet (some channels removed with fill values:
/// `ChannelGather` shortcuts and `BiasMap` constants), trained towards margins (plain and
/// with floors) with frozen BatchNorms: every parameter tensor's gradient at a few entries
/// equals the central difference of the loss, the running statistics stay, and labels are
/// refused.
#[test]
fn channel_module_margin_gradients_equal_finite_differences() {
    use decomp_model::Target;

    let module = channel_module();
    let kinds: Vec<&str> = module.graph.nodes.iter().map(|n| n.op.kind()).collect();
    assert!(
        kinds.contains(&"channel_gather") && kinds.contains(&"bias_map"),
        "{kinds:?}"
    );

    let batch = synthetic([3, 32, 32], 4, 6);
    let targets: Vec<f32> = (0..6).map(|i| (i as f32 * 1.3).sin() * 2.0).collect();
    // Even images: the target under its floor (one-sided error), odd ones above it.
    let floors: Vec<f32> = targets
        .iter()
        .enumerate()
        .map(|(i, t)| if i % 2 == 0 { t + 0.5 } else { t - 1.0 })
        .collect();
    let mut checked = 0;
    for floors in [None, Some(&floors[..])] {
        let target = Target::Margins {
            targets: &targets,
            floors,
        };
        let mut engine = GradEngine::new(module.clone())
            .expect("differentiable")
            .with_frozen_batch_norm(true);
        let grads = engine
            .gradients_for(&batch.images, target)
            .expect("gradients");
        assert_eq!(
            engine.model(),
            &module,
            "frozen BatchNorms keep their statistics"
        );
        for p in &grads.params {
            let len = p.grad.data.len();
            for index in [0, len / 2, len - 1] {
                let at = |delta: f32, e: &mut GradEngine| {
                    let v = param_value(e.model_mut(), p.node, &p.name, index);
                    let old = *v;
                    *v = old + delta;
                    let l = e.gradients_for(&batch.images, target).expect("loss").loss;
                    *param_value(e.model_mut(), p.node, &p.name, index) = old;
                    l
                };
                let h = 1e-3;
                let numeric = (at(h, &mut engine) - at(-h, &mut engine)) / (2.0 * f64::from(h));
                let analytic = f64::from(p.grad.data[index]);
                assert!(
                    (numeric - analytic).abs() <= 2e-2 * numeric.abs().max(analytic.abs()) + 2e-3,
                    "{}[{index}] (floors {}): analytic {analytic}, central difference {numeric}",
                    p.name,
                    floors.is_some()
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 2 * 3 * 10, "{checked} entries checked");
    let mut engine = GradEngine::new(module).expect("differentiable");
    assert!(
        engine
            .gradients_for(&batch.images, Target::Labels(&batch.labels))
            .is_err(),
        "labels 0..4 on a two-logit module"
    );
}
