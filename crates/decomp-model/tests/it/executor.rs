use decomp_ir::{BitSet, NodeMask, Op};
use decomp_model::burn_resnet::ResNet;
use decomp_model::{Device, Engine, Executor, Probe, ResNetConfig, Shortcut, Tensor, to_vec};

fn random_input(device: &Device, n: usize, shape: [usize; 3]) -> Tensor<4> {
    let len = n * shape.iter().product::<usize>();
    let data: Vec<f32> = (0..len)
        .map(|i| ((i as f32) * 0.7311).sin() * 1.5)
        .collect();
    Tensor::from_data(
        burn::tensor::TensorData::new(data, [n, shape[0], shape[1], shape[2]]),
        device,
    )
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Every builder variant runs, and the IR executor equals the plain burn module.
#[test]
fn executor_matches_plain_burn_module() {
    let device = Device::flex();
    let cases = [
        ResNetConfig::new(20, 10),
        ResNetConfig::new(20, 7).with_batch_norm(false),
        ResNetConfig::new(8, 3).with_shortcut(Shortcut::B),
        ResNetConfig::new(8, 5)
            .with_input([3, 64, 64])
            .with_batch_norm(false)
            .with_shortcut(Shortcut::B),
        ResNetConfig::new(14, 4).with_input([1, 28, 28]),
    ];
    for cfg in cases {
        let mut model = cfg.clone().with_seed(3).build().expect("build");
        // Non-trivial BatchNorm statistics, so the comparison exercises them.
        for node in &mut model.graph.nodes {
            if let Op::BatchNorm2d {
                running_mean,
                running_var,
                beta,
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
            }
        }
        let exec = Executor::new(&model, &device).expect("executor");
        let net = ResNet::from_ir(&model, &device).expect("burn module");
        let x = random_input(&device, 3, cfg.input);
        let a = to_vec(exec.forward(x.clone()).expect("forward"));
        let b = to_vec(net.forward(x));
        assert_eq!(a.len(), 3 * cfg.num_classes);
        let d = max_abs_diff(&a, &b);
        assert!(d < 1e-5, "{cfg:?}: executor and burn module differ by {d}");
        assert!(a.iter().all(|v| v.is_finite()));
    }
}

#[test]
fn capture_and_masks() {
    let device = Device::flex();
    let model = ResNetConfig::new(8, 4).with_seed(1).build().expect("build");
    let exec = Executor::new(&model, &device).expect("executor");
    let sites = model.graph.relu_inputs();
    // bn1, layer1.0.bn1, layer1.0.add, layer2.0.bn1, layer2.0.add, layer3.0.bn1, layer3.0.add
    assert_eq!(sites.len(), 7);
    let x = random_input(&device, 2, [3, 32, 32]);
    let plain = exec
        .forward_probe(
            x.clone(),
            &Probe {
                capture: &sites,
                masks: None,
            },
        )
        .expect("forward");
    for (site, t) in sites.iter().zip(&plain.captured) {
        let numel: usize = exec.shapes()[*site].iter().product();
        assert_eq!(t.dims(), [2, numel], "site {site}");
    }
    let bn1 = sites[0];
    let pre = to_vec(plain.captured[0].clone());
    assert!(pre.iter().any(|&v| v < 0.0) && pre.iter().any(|&v| v > 0.0));

    // An empty mask changes nothing.
    let n0: usize = exec.shapes()[bn1].iter().product();
    let empty = exec
        .compile_masks(&[NodeMask {
            node: bn1,
            zeroed: BitSet::new(n0),
        }])
        .expect("masks");
    let same = exec
        .forward_probe(
            x.clone(),
            &Probe {
                capture: &[],
                masks: Some(&empty),
            },
        )
        .expect("forward");
    assert_eq!(to_vec(same.logits), to_vec(plain.logits.clone()));

    // Zeroing channel 0 of bn1 zeroes exactly those outputs, and the logits move.
    let mut zeroed = BitSet::new(n0);
    for i in 0..32 * 32 {
        zeroed.set(i, true);
    }
    let masks = exec
        .compile_masks(&[NodeMask { node: bn1, zeroed }])
        .expect("masks");
    let out = exec
        .forward_probe(
            x,
            &Probe {
                capture: &[bn1],
                masks: Some(&masks),
            },
        )
        .expect("forward");
    let v = to_vec(out.captured[0].clone());
    for b in 0..2 {
        assert!(v[b * n0..b * n0 + 1024].iter().all(|&x| x == 0.0));
        assert_eq!(
            &v[b * n0 + 1024..(b + 1) * n0],
            &pre[b * n0 + 1024..(b + 1) * n0]
        );
    }
    assert_ne!(to_vec(out.logits), to_vec(plain.logits));

    // A mask of the wrong size is an error naming the node.
    let err = exec
        .compile_masks(&[NodeMask {
            node: bn1,
            zeroed: BitSet::new(5),
        }])
        .err()
        .expect("wrong size")
        .to_string();
    assert!(err.contains("bn1") && err.contains("5 bits"), "{err}");
}

#[test]
fn wrong_input_shape_is_an_error() {
    let device = Device::flex();
    let model = ResNetConfig::new(8, 4).build().expect("build");
    let exec = Executor::new(&model, &device).expect("executor");
    let err = exec
        .forward(random_input(&device, 1, [3, 16, 16]))
        .expect_err("shape error");
    assert!(err.to_string().contains("[1, 3, 16, 16]"), "{err}");
    assert!(ResNetConfig::new(21, 10).build().is_err());
}

#[test]
fn burnpack_export_writes_a_file() {
    let device = Device::flex();
    let model = ResNetConfig::new(8, 4).build().expect("build");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("m.bpk");
    ResNet::from_ir(&model, &device)
        .expect("module")
        .export(&path)
        .expect("export");
    assert!(std::fs::metadata(&path).expect("written").len() > 4 * model.graph.num_params() as u64);
}

/// The last ReLU feeds global pooling and the linear head, so the margin is linear in it and
/// its gate gradient has a closed form: `(w0 - w1)[c] * (mean over positions of x[b, c] -
/// mean[c])`. Earlier gates must equal a finite difference of the margin in the gate.
#[test]
fn gate_gradients_are_the_margin_sensitivity() {
    let device = Device::flex();
    let model = ResNetConfig::new(8, 2).with_seed(3).build().expect("build");
    let exec = Executor::with_engine(&model, &device.clone().autodiff(), Engine::Burn)
        .expect("autodiff executor");
    let g = &model.graph;
    let relus: Vec<usize> = (0..g.nodes.len())
        .filter(|&i| matches!(g.nodes[i].op, Op::Relu))
        .collect();
    let last = *relus.last().expect("relus");
    let c = exec.shapes()[last][0];
    let hw: usize = exec.shapes()[last][1..].iter().product();
    let mean: Vec<f32> = (0..c).map(|k| 0.05 * k as f32).collect();
    let x = random_input(&device, 3, [3, 32, 32]);
    let grads = exec
        .gate_gradients(x.clone(), None, &[(last, &mean)])
        .expect("gradients");
    let plain = Executor::new(&model, &device).expect("executor");
    let act = to_vec(
        plain
            .forward_probe(
                x,
                &Probe {
                    capture: &[last],
                    masks: None,
                },
            )
            .expect("forward")
            .captured[0]
            .clone(),
    );
    let Op::Linear { weight, .. } = &g.nodes[g.output].op else {
        panic!("linear head")
    };
    for b in 0..3 {
        for k in 0..c {
            let m: f32 = act[(b * c + k) * hw..(b * c + k + 1) * hw]
                .iter()
                .sum::<f32>()
                / hw as f32;
            let want = (weight.data[k] - weight.data[c + k]) * (m - mean[k]);
            let got = grads[0][b * c + k];
            assert!(
                (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
                "image {b} channel {k}: {got} vs {want}"
            );
        }
    }
    // A two-output graph is required.
    let four = ResNetConfig::new(8, 4).with_seed(3).build().expect("build");
    let e4 = Executor::with_engine(&four, &device.clone().autodiff(), Engine::Burn).expect("exec");
    let err = e4
        .gate_gradients(random_input(&device, 1, [3, 32, 32]), None, &[])
        .expect_err("four outputs refused");
    assert!(err.to_string().contains("two-output"), "{err}");
}
