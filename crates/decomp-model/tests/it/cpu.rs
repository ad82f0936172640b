//! The CPU plan (`Engine::Cpu`) against the burn reference (`Engine::Burn`): logits, captures,
//! masks, module passes and activity bits, on tiny synthetic models that state their whole
//! input, and on the real pretrained ResNet-20.

use decomp_ir::{
    ActivityCounts, BitSet, Graph, InputNorm, ModelIr, ModelMeta, NodeId, NodeMask, Op, TensorData,
};
use decomp_model::import::{akamaster_norm, import_resnet};
use decomp_model::{
    CpuTuning, Device, Engine, Executor, Probe, ResNetConfig, Shortcut, Tensor, to_vec,
};

use crate::shared_dir;

const TOL: f32 = 1e-4;

fn input(n: usize, shape: [usize; 3], seed: f32) -> Tensor<4> {
    let len = n * shape.iter().product::<usize>();
    let data: Vec<f32> = (0..len)
        .map(|i| ((i as f32) * 0.7311 + seed).sin() * 1.5)
        .collect();
    Tensor::from_data(
        burn::tensor::TensorData::new(data, [n, shape[0], shape[1], shape[2]]),
        &Device::flex(),
    )
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Both engines of one model, the CPU one with its default tuning.
fn engines(model: &ModelIr) -> (Executor, Executor) {
    engines_with(model, CpuTuning::default())
}

/// CPU tunings every probe is checked with: defaults; a small tile and block so batches
/// span several tiles and products several blocks (and the register-blocked kernels run
/// their remainder rows); no Winograd (im2col + gemm everywhere).
fn tunings() -> [CpuTuning; 3] {
    let d = CpuTuning::default();
    [
        d,
        CpuTuning {
            tile: 2,
            block: 1000,
            ..d
        },
        CpuTuning {
            winograd: false,
            small_kernels: false,
            ..d
        },
    ]
}

fn engines_with(model: &ModelIr, tuning: CpuTuning) -> (Executor, Executor) {
    let device = Device::flex();
    let mut cpu = Executor::with_engine(model, &device, Engine::Cpu).expect("cpu engine");
    cpu.set_cpu_tuning(tuning);
    assert_eq!(cpu.cpu_tuning(), Some(tuning));
    let burn = Executor::with_engine(model, &device, Engine::Burn).expect("burn engine");
    assert_eq!((cpu.engine(), burn.engine()), (Engine::Cpu, Engine::Burn));
    (cpu, burn)
}

/// Non-trivial BatchNorm statistics, so folding them is exercised.
fn perturb_batch_norm(model: &mut ModelIr) {
    for node in &mut model.graph.nodes {
        if let Op::BatchNorm2d {
            running_mean,
            running_var,
            beta,
            gamma,
            ..
        } = &mut node.op
        {
            for (i, v) in running_mean.data.iter_mut().enumerate() {
                *v = (i as f32 * 0.1).sin() * 0.2;
            }
            for (i, v) in running_var.data.iter_mut().enumerate() {
                *v = 0.5 + (i as f32 * 0.3).cos().abs();
            }
            for (i, v) in beta.data.iter_mut().enumerate() {
                *v = (i as f32 * 0.5).cos() * 0.1;
            }
            for (i, v) in gamma.data.iter_mut().enumerate() {
                *v = 1.0 + (i as f32 * 0.7).sin() * 0.3;
            }
        }
    }
}

/// A mask zeroing every position `i` with `(i * stride + offset).is_multiple_of(3)`.
fn pattern_mask(exec: &Executor, node: NodeId, stride: usize, offset: usize) -> NodeMask {
    let n: usize = exec.shapes()[node].iter().product();
    let mut zeroed = BitSet::new(n);
    for i in 0..n {
        zeroed.set(i, (i * stride + offset).is_multiple_of(3));
    }
    NodeMask { node, zeroed }
}

/// Logits and captures of `sites` under `masks` agree between the engines.
fn check_probe(model: &ModelIr, batch: usize, sites: &[NodeId], masks: &[NodeMask], what: &str) {
    for tuning in tunings() {
        let what = &format!("{what}, {tuning:?}");
        let (cpu, burn) = engines_with(model, tuning);
        let x = input(batch, model.graph.input_shape().expect("input"), 0.3);
        let (mc, mb) = (
            cpu.compile_masks(masks).expect("masks"),
            burn.compile_masks(masks).expect("masks"),
        );
        let run = |e: &Executor, m| {
            let probe = Probe {
                capture: sites,
                masks: if masks.is_empty() { None } else { Some(m) },
            };
            e.forward_probe(x.clone(), &probe).expect("forward")
        };
        let (a, b) = (run(&cpu, &mc), run(&burn, &mb));
        let d = max_abs_diff(&to_vec(a.logits), &to_vec(b.logits));
        assert!(d < TOL, "{what}: logits differ by {d}");
        for ((s, ca), cb) in sites.iter().zip(a.captured).zip(b.captured) {
            assert_eq!(ca.dims(), cb.dims(), "{what}: capture of node {s}");
            let d = max_abs_diff(&to_vec(ca), &to_vec(cb));
            assert!(d < TOL, "{what}: capture of node {s} differs by {d}");
        }
    }
}

#[test]
fn resnets_agree_with_burn_engine() {
    let cases = [
        ResNetConfig::new(8, 4),
        ResNetConfig::new(20, 10),
        ResNetConfig::new(8, 3).with_shortcut(Shortcut::B),
        ResNetConfig::new(8, 5)
            .with_input([3, 20, 24])
            .with_batch_norm(false),
        ResNetConfig::new(14, 4).with_input([1, 28, 28]),
    ];
    for cfg in cases {
        let mut model = cfg.clone().with_seed(5).build().expect("build");
        perturb_batch_norm(&mut model);
        let what = format!("{cfg:?}");
        let (cpu, _) = engines(&model);
        let relu_inputs = model.graph.relu_inputs();
        let all: Vec<NodeId> = (0..model.graph.nodes.len()).collect();
        check_probe(&model, 5, &[], &[], &what);
        check_probe(
            &model,
            3,
            &relu_inputs,
            &[],
            &format!("{what}, relu inputs"),
        );
        // Capturing every node includes convolutions the plan folds into their BatchNorm.
        check_probe(&model, 2, &all, &[], &format!("{what}, all nodes"));
        let masks: Vec<NodeMask> = relu_inputs
            .iter()
            .enumerate()
            .map(|(k, &s)| pattern_mask(&cpu, s, k + 1, k))
            .collect();
        check_probe(&model, 3, &relu_inputs, &masks, &format!("{what}, masked"));
    }
}

/// Ops and layouts ResNets do not exercise: a BatchNorm that cannot be folded (its
/// convolution has two readers), max and average pooling with padding, a strided 1x1
/// convolution, flattening a map wider than 1x1, a residual Add of two BatchNorms, option-A
/// shortcut with uneven padding, masks on several kinds of node.
/// Deterministic test values `sin(0.37 i + seed) / 2`.
fn wave(shape: Vec<usize>, seed: f32) -> TensorData {
    let n = shape.iter().product::<usize>();
    TensorData::new(
        shape,
        (0..n)
            .map(|i| ((i as f32) * 0.37 + seed).sin() * 0.5)
            .collect(),
    )
    .expect("tensor")
}

/// Positive test values (BatchNorm scales and variances).
fn positive(n: usize, seed: f32) -> TensorData {
    TensorData::new(
        vec![n],
        (0..n)
            .map(|i| 0.6 + ((i as f32) + seed).cos().abs())
            .collect(),
    )
    .expect("tensor")
}

/// A `k`x`k` convolution from `i` to `o` channels in `g` groups.
#[allow(clippy::too_many_arguments)]
fn conv_op(
    o: usize,
    i: usize,
    k: usize,
    s: usize,
    p: usize,
    g: usize,
    seed: f32,
    bias: bool,
) -> Op {
    Op::Conv2d {
        weight: wave(vec![o, i / g, k, k], seed),
        bias: bias.then(|| wave(vec![o], seed + 1.0)),
        stride: [s, s],
        padding: [p, p],
        groups: g,
    }
}

fn bn_op(c: usize, seed: f32) -> Op {
    Op::BatchNorm2d {
        gamma: positive(c, seed),
        beta: wave(vec![c], seed + 2.0),
        running_mean: wave(vec![c], seed + 3.0),
        running_var: positive(c, seed + 4.0),
        eps: 1e-5,
    }
}

#[test]
fn odd_graph_agrees_with_burn_engine() {
    let t = wave;
    let conv = |o, i, k, s, p, seed, bias| conv_op(o, i, k, s, p, 1, seed, bias);
    let bn = bn_op;
    let mut g = Graph::new([3, 11, 9]);
    let c1 = g.push("c1", conv(6, 3, 3, 1, 1, 0.1, true), vec![0]); // [6, 11, 9]
    let b1 = g.push("b1", bn(6, 0.2), vec![c1]); // c1 has two readers: not folded
    let r1 = g.push("r1", Op::Relu, vec![b1]);
    let mp = g.push(
        "mp",
        Op::MaxPool2d {
            kernel: [3, 3],
            stride: [2, 2],
            padding: [1, 1],
        },
        vec![r1],
    ); // [6, 6, 5]
    let side = g.push("side", conv(6, 6, 1, 1, 0, 0.3, false), vec![c1]); // [6, 11, 9], reads c1 too
    let ap = g.push(
        "ap",
        Op::AvgPool2d {
            kernel: [3, 3],
            stride: [2, 2],
            padding: [1, 1],
        },
        vec![side],
    ); // [6, 6, 5]
    let add = g.push("add", Op::Add, vec![mp, ap]);
    let c2 = g.push("c2", conv(8, 6, 1, 2, 0, 0.4, true), vec![add]); // strided 1x1: [8, 3, 3]
    let b2 = g.push("b2", bn(8, 0.5), vec![c2]);
    let c3 = g.push("c3", conv(8, 6, 3, 2, 1, 0.6, false), vec![add]); // [8, 3, 3]
    let b3 = g.push("b3", bn(8, 0.7), vec![c3]);
    let add2 = g.push("add2", Op::Add, vec![b2, b3]);
    let r2 = g.push("r2", Op::Relu, vec![add2]);
    let sa = g.push(
        "sa",
        Op::ShortcutA {
            stride: 2,
            pad_before: 1,
            pad_after: 3,
        },
        vec![r2],
    ); // [12, 2, 2]
    let fl = g.push("fl", Op::Flatten, vec![sa]); // [48]
    let fc = g.push(
        "fc",
        Op::Linear {
            weight: t(vec![7, 48], 0.8),
            bias: Some(t(vec![7], 0.9)),
        },
        vec![fl],
    );
    let r3 = g.push("r3", Op::Relu, vec![fc]);
    g.push(
        "head",
        Op::Linear {
            weight: t(vec![4, 7], 1.0),
            bias: None,
        },
        vec![r3],
    );
    let model = ModelIr {
        meta: ModelMeta {
            arch: "odd".into(),
            class_names: (0..4).map(|i| format!("c{i}")).collect(),
            input_norm: InputNorm {
                mean: vec![0.0; 3],
                std: vec![1.0; 3],
            },
            source: "test".into(),
        },
        graph: g,
    };
    let (cpu, _) = engines(&model);
    // c2 and c3 are folded into b2 and b3: capturing them runs the probe on burn ops, so
    // the CPU plan is checked on every other node.
    let all: Vec<NodeId> = (0..model.graph.nodes.len()).collect();
    let materialized: Vec<NodeId> = all
        .iter()
        .copied()
        .filter(|&i| i != c2 && i != c3)
        .collect();
    check_probe(&model, 5, &materialized, &[], "odd graph");
    check_probe(
        &model,
        2,
        &all,
        &[],
        "odd graph, folded convolutions captured",
    );
    let masks: Vec<NodeMask> = [b1, add, b3, add2, sa, fc]
        .iter()
        .enumerate()
        .map(|(k, &s)| pattern_mask(&cpu, s, k + 2, k))
        .collect();
    check_probe(&model, 3, &materialized, &masks, "odd graph, masked");
    let _ = r1;
}

/// K modules in one branching pass agree between the engines, and with one masked pass
/// per module.
#[test]
fn forward_modules_agree_with_burn_engine() {
    for cfg in [
        ResNetConfig::new(8, 4),
        ResNetConfig::new(8, 3).with_shortcut(Shortcut::B),
    ] {
        let mut model = cfg.with_seed(9).build().expect("build");
        perturb_batch_norm(&mut model);
        let (cpu, burn) = engines(&model);
        let sites = model.graph.relu_inputs();
        let head_input = model.graph.nodes[model.graph.output].inputs[0];
        // Module 0: no masks; 1 and 2: the same masks (stored once); 3: other masks; 4: one site.
        let a: Vec<NodeMask> = sites
            .iter()
            .enumerate()
            .map(|(k, &s)| pattern_mask(&cpu, s, k + 1, 0))
            .collect();
        let b: Vec<NodeMask> = sites
            .iter()
            .enumerate()
            .map(|(k, &s)| pattern_mask(&cpu, s, k + 2, 1))
            .collect();
        let c = vec![pattern_mask(&cpu, sites[2], 1, 2)];
        let modules: Vec<&[NodeMask]> = vec![&[], &a, &a, &b, &c];
        let x = input(7, [3, 32, 32], 1.1);
        let mc = cpu.compile_module_masks(&modules).expect("masks");
        let mb = burn.compile_module_masks(&modules).expect("masks");
        let got = cpu
            .forward_modules(x.clone(), &mc, head_input)
            .expect("forward");
        let want = burn
            .forward_modules(x.clone(), &mb, head_input)
            .expect("forward");
        assert_eq!(got.len(), modules.len());
        for (m, (g, w)) in got.iter().zip(&want).enumerate() {
            let d = max_abs_diff(g, w);
            assert!(d < TOL, "module {m}: engines differ by {d}");
            // One ordinary masked pass per module gives the same values.
            let masks = cpu.compile_masks(modules[m]).expect("masks");
            let one = cpu
                .forward_probe(
                    x.clone(),
                    &Probe {
                        capture: &[head_input],
                        masks: Some(&masks),
                    },
                )
                .expect("forward");
            let d = max_abs_diff(g, &to_vec(one.captured[0].clone()));
            assert!(
                d < TOL,
                "module {m}: branching and masked pass differ by {d}"
            );
        }
        assert!(
            max_abs_diff(&got[0], &got[3]) > 1e-3,
            "masks must change something"
        );
    }
}

/// Activity counted on the fly (bits per image and position) equals the burn engine's
/// captured-then-reduced counts, for all rows and for a subset; counting a batch twice
/// doubles the counts, and the counts are the ones the captured values give.
#[test]
fn forward_active_agrees_with_burn_engine() {
    let mut model = ResNetConfig::new(8, 4).with_seed(2).build().expect("build");
    perturb_batch_norm(&mut model);
    let (cpu, burn) = engines(&model);
    let sites = model.graph.relu_inputs();
    let x = input(5, [3, 32, 32], 0.7);
    let captured = burn
        .forward_probe(
            x.clone(),
            &Probe {
                capture: &sites,
                masks: None,
            },
        )
        .expect("probe");
    let values: Vec<Vec<f32>> = captured.captured.into_iter().map(to_vec).collect();
    for rows in [None, Some(&[1usize, 4][..]), Some(&[][..])] {
        let mut acc = Vec::new();
        for e in [&cpu, &burn] {
            let out = e.forward_active(x.clone(), &sites).expect("forward");
            assert_eq!(out.logits.len(), 5 * 4);
            let mut counts =
                ActivityCounts::new(sites.iter().map(|&s| e.shapes()[s].iter().product()));
            e.count(&out, rows, &mut counts);
            let once = counts.clone();
            e.count(&out, rows, &mut counts);
            for (two, one) in counts.counts.iter().zip(&once.counts) {
                assert!(two.iter().zip(one).all(|(&a, &b)| a == 2 * b));
            }
            assert_eq!(counts.images, 2 * once.images);
            acc.push((out.logits, once));
        }
        assert!(max_abs_diff(&acc[0].0, &acc[1].0) < TOL);
        assert_eq!(acc[0].1, acc[1].1, "rows {rows:?}");
        let chosen: Vec<usize> = rows.map_or((0..5).collect(), <[usize]>::to_vec);
        assert_eq!(acc[0].1.images, chosen.len());
        let picked: Vec<Vec<f32>> = values
            .iter()
            .map(|v| {
                let per = v.len() / 5;
                chosen
                    .iter()
                    .flat_map(|&r| v[r * per..(r + 1) * per].iter().copied())
                    .collect()
            })
            .collect();
        let mut want = ActivityCounts::new(sites.iter().map(|&s| cpu.shapes()[s].iter().product()));
        want.add_values(&picked);
        assert_eq!(acc[0].1, want);
        let ones: usize = acc[0].1.active(0.0).iter().map(BitSet::count_ones).sum();
        assert_eq!(
            ones == 0,
            rows.is_some_and(<[usize]>::is_empty),
            "rows {rows:?}: {ones} active"
        );
    }
}

/// The ops of issue 20 (grouped and depthwise convolutions, ReLU6 clips, channel and vector
/// concatenations) on both engines: logits, captures of every node, masks at the clip
/// inputs, one branching pass over several modules, and activity bits.
#[test]
fn grouped_depthwise_clip_and_concat_agree_with_burn_engine() {
    let (t, conv, bn) = (wave, conv_op, bn_op);
    let relu6 = Op::Clip { min: 0.0, max: 6.0 };
    let mut g = Graph::new([3, 13, 11]);
    let c1 = g.push("c1", conv(12, 3, 3, 1, 1, 1, 0.1, false), vec![0]); // [12, 13, 11]
    let b1 = g.push("b1", bn(12, 0.2), vec![c1]);
    let r1 = g.push("r1", relu6.clone(), vec![b1]);
    let dw = g.push("dw", conv(12, 12, 3, 2, 1, 12, 0.3, false), vec![r1]); // depthwise, stride 2: [12, 7, 6]
    let b2 = g.push("b2", bn(12, 0.4), vec![dw]);
    let r2 = g.push("r2", relu6.clone(), vec![b2]);
    let gc = g.push("gc", conv(8, 12, 1, 1, 0, 4, 0.5, true), vec![r2]); // 4 groups of 3 -> 2: [8, 7, 6]
    let dwb = g.push("dwb", conv(12, 12, 5, 1, 2, 12, 0.6, true), vec![r2]); // depthwise 5x5 with bias
    let cat = g.push("cat", Op::Concat, vec![gc, dwb, r2]); // [32, 7, 6]
    let r3 = g.push("r3", Op::Relu, vec![cat]);
    let proj = g.push("proj", conv(12, 32, 1, 1, 0, 1, 0.7, false), vec![r3]); // linear projection
    let b3 = g.push("b3", bn(12, 0.8), vec![proj]);
    let add = g.push("add", Op::Add, vec![b3, r2]);
    let gx = g.push("g6", conv(12, 12, 3, 1, 1, 3, 0.9, false), vec![add]); // 3 groups of 4 -> 4
    let gp = g.push("gp", Op::GlobalAvgPool, vec![gx]);
    let fl = g.push("fl", Op::Flatten, vec![gp]); // [12]
    let fc = g.push(
        "fc",
        Op::Linear {
            weight: t(vec![6, 12], 1.0),
            bias: Some(t(vec![6], 1.1)),
        },
        vec![fl],
    );
    let clip = g.push(
        "clip",
        Op::Clip {
            min: -0.2,
            max: 0.3,
        },
        vec![fc],
    );
    let vcat = g.push("vcat", Op::Concat, vec![clip, fl, fc]); // [24]
    g.push(
        "head",
        Op::Linear {
            weight: t(vec![4, 24], 1.2),
            bias: None,
        },
        vec![vcat],
    );
    let model = ModelIr {
        meta: ModelMeta {
            arch: "mobile".into(),
            class_names: (0..4).map(|i| format!("c{i}")).collect(),
            input_norm: InputNorm {
                mean: vec![0.0; 3],
                std: vec![1.0; 3],
            },
            source: "test".into(),
        },
        graph: g,
    };
    let (cpu, burn) = engines(&model);
    let all: Vec<NodeId> = (0..model.graph.nodes.len()).filter(|&i| i != c1).collect(); // c1 folds into b1
    check_probe(&model, 5, &all, &[], "mobile graph");
    let sites = model.graph.relu_inputs();
    assert_eq!(
        sites,
        vec![b1, b2, cat],
        "clip at 0 and ReLU inputs; the [-0.2, 0.3] clip is no site"
    );
    let masks: Vec<NodeMask> = sites
        .iter()
        .enumerate()
        .map(|(k, &s)| pattern_mask(&cpu, s, k + 2, k))
        .collect();
    check_probe(&model, 3, &all, &masks, "mobile graph, masked");
    let x = input(6, [3, 13, 11], 0.4);
    let other: Vec<NodeMask> = vec![pattern_mask(&cpu, cat, 1, 1)];
    let modules: Vec<&[NodeMask]> = vec![&[], &masks, &other];
    let (mc, mb) = (
        cpu.compile_module_masks(&modules).expect("m"),
        burn.compile_module_masks(&modules).expect("m"),
    );
    let got = cpu
        .forward_modules(x.clone(), &mc, vcat)
        .expect("cpu modules");
    let want = burn
        .forward_modules(x.clone(), &mb, vcat)
        .expect("burn modules");
    for (m, (a, b)) in got.iter().zip(&want).enumerate() {
        let d = max_abs_diff(a, b);
        assert!(d < TOL, "module {m}: engines differ by {d}");
    }
    assert!(
        max_abs_diff(&got[0], &got[1]) > 1e-3,
        "masks must change something"
    );
    let (fa, fb) = (
        cpu.forward_active(x.clone(), &sites).expect("a"),
        burn.forward_active(x, &sites).expect("b"),
    );
    let mut acc = Vec::new();
    for (e, f) in [(&cpu, &fa), (&burn, &fb)] {
        let mut counts = ActivityCounts::new(sites.iter().map(|&s| e.shapes()[s].iter().product()));
        e.count(f, None, &mut counts);
        acc.push(counts);
    }
    assert_eq!(acc[0], acc[1]);
}

/// The pretrained ResNet-20: the CPU plan equals the burn reference within 1e-4 on real
/// images (logits, mask-site captures, activity bits, masked logits).
#[test]
fn real_resnet20_agrees_with_burn_engine() {
    let Some(shared) = shared_dir() else { return };
    let model = import_resnet(
        &shared.join("models/cifar10/resnet20-12fca82f.th"),
        None,
        akamaster_norm(),
        None,
    )
    .expect("import");
    let n = akamaster_norm();
    let ds = decomp_data::Dataset::from_cifar_file(
        decomp_data::DatasetKind::Cifar10,
        &shared.join("datasets/cifar-10-train-first4000-lossless/train_first4000.bin"),
    )
    .expect("lossless file")
    .with_normalization(decomp_data::Normalization::new(&n.mean, &n.std));
    let (cpu, burn) = engines(&model);
    let b = ds.batch(0..64).expect("batch");
    let x = cpu.input_tensor(b.images, 64).expect("input");
    let sites = model.graph.relu_inputs();
    let masks: Vec<NodeMask> = sites
        .iter()
        .enumerate()
        .map(|(k, &s)| pattern_mask(&cpu, s, k + 1, k))
        .collect();
    let mut worst = 0.0f32;
    for masks in [&[][..], &masks[..]] {
        let (mc, mb) = (
            cpu.compile_masks(masks).expect("masks"),
            burn.compile_masks(masks).expect("masks"),
        );
        let probe = |m| Probe {
            capture: &sites,
            masks: Some(m),
        };
        let a = cpu.forward_probe(x.clone(), &probe(&mc)).expect("forward");
        let bb = burn.forward_probe(x.clone(), &probe(&mb)).expect("forward");
        worst = worst.max(max_abs_diff(&to_vec(a.logits), &to_vec(bb.logits)));
        for (ca, cb) in a.captured.into_iter().zip(bb.captured) {
            worst = worst.max(max_abs_diff(&to_vec(ca), &to_vec(cb)));
        }
    }
    eprintln!("resnet20: max |cpu plan - burn| over logits and captures = {worst:.2e}");
    assert!(worst < TOL, "cpu plan and burn differ by {worst}");
    let mut actives = Vec::new();
    for e in [&cpu, &burn] {
        let out = e.forward_active(x.clone(), &sites).expect("forward");
        let mut counts = ActivityCounts::new(sites.iter().map(|&s| e.shapes()[s].iter().product()));
        e.count(&out, Some(&[0, 3, 5, 60]), &mut counts);
        actives.push(counts.active(0.0));
    }
    // A position can sit within rounding of 0 on one engine and not the other: allow a few.
    let differ: usize = actives[0]
        .iter()
        .zip(&actives[1])
        .map(|(a, b)| (0..a.len()).filter(|&i| a.get(i) != b.get(i)).count())
        .sum();
    let total: usize = actives[0].iter().map(BitSet::len).sum();
    eprintln!("resnet20: activity bits differing between engines: {differ} of {total}");
    assert!(
        differ * 10_000 < total,
        "{differ} of {total} activity bits differ"
    );
}
