//! `channel::extract` against its definition `channel::reference`, evaluated by a plain f64
//! interpreter of the few ops a small residual network uses (no tensor library here): the
//! physically smaller graph must compute what the masked full model computes, with removed
//! channels held at their fill values after their ReLUs.

use decomp_ir::channel::{ChannelPlan, channel_spaces, extract, reference};
use decomp_ir::{
    BinaryHead, Graph, InputNorm, ModelIr, ModelMeta, NodeMask, Op, Shape, TensorData,
};

fn noise(i: usize, seed: f32) -> f32 {
    ((i as f32 * 0.731 + seed) * 1.37).sin()
}

fn t(shape: &[usize], seed: f32, scale: f32) -> TensorData {
    let n = shape.iter().product();
    TensorData {
        shape: shape.to_vec(),
        data: (0..n).map(|i| scale * noise(i, seed)).collect(),
    }
}

fn bn(c: usize, seed: f32) -> Op {
    Op::BatchNorm2d {
        gamma: t(&[c], seed, 0.5).map_add(1.0),
        beta: t(&[c], seed + 1.0, 0.2),
        running_mean: t(&[c], seed + 2.0, 0.1),
        running_var: t(&[c], seed + 3.0, 0.3).map_add(1.0),
        eps: 1e-5,
    }
}

trait MapAdd {
    fn map_add(self, v: f32) -> Self;
}

impl MapAdd for TensorData {
    fn map_add(mut self, v: f32) -> Self {
        self.data.iter_mut().for_each(|x| *x += v);
        self
    }
}

fn conv(cout: usize, cin: usize, stride: usize, seed: f32) -> Op {
    Op::Conv2d {
        weight: t(&[cout, cin, 3, 3], seed, 0.4),
        bias: None,
        stride: [stride; 2],
        padding: [1, 1],
        groups: 1,
    }
}

/// Input 2x6x6; a 4-channel stem with one identity residual block (one channel space of 4
/// channels with two mask sites: the stem's BatchNorm and the residual sum), then a
/// stride-2 3-channel convolution (a second space), pooling and a 3-class output layer.
fn model() -> ModelIr {
    let mut g = Graph::new([2, 6, 6]);
    let c1 = g.push("conv1", conv(4, 2, 1, 1.0), vec![0]);
    let b1 = g.push("bn1", bn(4, 2.0), vec![c1]);
    let r1 = g.push("relu1", Op::Relu, vec![b1]);
    let c2 = g.push("conv2", conv(4, 4, 1, 3.0), vec![r1]);
    let b2 = g.push("bn2", bn(4, 4.0), vec![c2]);
    let add = g.push("add", Op::Add, vec![b2, r1]);
    let r2 = g.push("relu2", Op::Relu, vec![add]);
    let c3 = g.push("conv3", conv(3, 4, 2, 5.0), vec![r2]);
    let b3 = g.push("bn3", bn(3, 6.0), vec![c3]);
    let r3 = g.push("relu3", Op::Relu, vec![b3]);
    let gap = g.push("pool", Op::GlobalAvgPool, vec![r3]);
    let flat = g.push("flatten", Op::Flatten, vec![gap]);
    g.output = g.push(
        "fc",
        Op::Linear {
            weight: t(&[3, 3], 7.0, 1.0),
            bias: Some(t(&[3], 8.0, 0.1)),
        },
        vec![flat],
    );
    ModelIr {
        meta: ModelMeta {
            arch: "tiny-resnet".into(),
            class_names: vec!["a".into(), "b".into(), "c".into()],
            input_norm: InputNorm {
                mean: vec![0.0; 2],
                std: vec![1.0; 2],
            },
            source: "test".into(),
        },
        graph: g,
    }
}

fn head(m: &ModelIr) -> BinaryHead {
    BinaryHead {
        input: m.graph.nodes[m.graph.output].inputs[0],
        weight: t(&[2, 3], 9.0, 1.0),
        bias: t(&[2], 10.0, 0.1),
    }
}

fn get(t: &TensorData, i: usize) -> f64 {
    f64::from(t.data[i])
}

/// Output of `m` on one image `x` (channel-first), with `masks` zeroing node outputs.
fn eval(m: &ModelIr, masks: &[NodeMask], x: &[f64]) -> Vec<f64> {
    let shapes: Vec<Shape> = m.check().expect("valid graph");
    let mut vals: Vec<Vec<f64>> = Vec::with_capacity(m.graph.nodes.len());
    for (id, node) in m.graph.nodes.iter().enumerate() {
        let s = &shapes[id];
        let input = |k: usize| &vals[node.inputs[k]];
        let hw = |s: &Shape| s.iter().skip(1).product::<usize>().max(1);
        let mut v: Vec<f64> = match &node.op {
            Op::Input { .. } => x.to_vec(),
            Op::Conv2d {
                weight,
                bias,
                stride,
                padding,
                groups: 1,
            } => {
                let si = &shapes[node.inputs[0]];
                let [cout, cin, kh, kw] = [
                    weight.shape[0],
                    weight.shape[1],
                    weight.shape[2],
                    weight.shape[3],
                ];
                let (oh, ow) = (s[1], s[2]);
                let mut out = vec![0.0; cout * oh * ow];
                for o in 0..cout {
                    for y in 0..oh {
                        for xo in 0..ow {
                            let mut acc = bias.as_ref().map_or(0.0, |b| get(b, o));
                            for c in 0..cin {
                                for ky in 0..kh {
                                    for kx in 0..kw {
                                        let iy =
                                            (y * stride[0] + ky) as isize - padding[0] as isize;
                                        let ix =
                                            (xo * stride[1] + kx) as isize - padding[1] as isize;
                                        if iy < 0
                                            || ix < 0
                                            || iy >= si[1] as isize
                                            || ix >= si[2] as isize
                                        {
                                            continue;
                                        }
                                        let xi = input(0)
                                            [(c * si[1] + iy as usize) * si[2] + ix as usize];
                                        acc +=
                                            get(weight, ((o * cin + c) * kh + ky) * kw + kx) * xi;
                                    }
                                }
                            }
                            out[(o * oh + y) * ow + xo] = acc;
                        }
                    }
                }
                out
            }
            Op::BatchNorm2d {
                gamma,
                beta,
                running_mean,
                running_var,
                eps,
            } => {
                let p = hw(s);
                input(0)
                    .iter()
                    .enumerate()
                    .map(|(i, &v)| {
                        let c = i / p;
                        get(gamma, c) * (v - get(running_mean, c))
                            / (get(running_var, c) + eps).sqrt()
                            + get(beta, c)
                    })
                    .collect()
            }
            Op::BiasMap { bias } => input(0)
                .iter()
                .enumerate()
                .map(|(i, &v)| v + get(bias, i))
                .collect(),
            Op::Relu => input(0).iter().map(|&v| v.max(0.0)).collect(),
            Op::Add => input(0).iter().zip(input(1)).map(|(a, b)| a + b).collect(),
            Op::GlobalAvgPool => {
                let p = hw(&shapes[node.inputs[0]]);
                input(0)
                    .chunks(p)
                    .map(|c| c.iter().sum::<f64>() / p as f64)
                    .collect()
            }
            Op::Flatten => input(0).clone(),
            Op::Linear { weight, bias } => {
                let (k, f) = (weight.shape[0], weight.shape[1]);
                (0..k)
                    .map(|o| {
                        (0..f)
                            .map(|u| get(weight, o * f + u) * input(0)[u])
                            .sum::<f64>()
                            + bias.as_ref().map_or(0.0, |b| get(b, o))
                    })
                    .collect()
            }
            op => panic!("node {id}: the test interpreter does not run {}", op.kind()),
        };
        for m in masks.iter().filter(|m| m.node == id) {
            for (i, v) in v.iter_mut().enumerate() {
                if m.zeroed.get(i) {
                    *v = 0.0;
                }
            }
        }
        vals.push(v);
    }
    vals.swap_remove(m.graph.output)
}

fn conv_shape(m: &ModelIr, name: &str) -> Vec<usize> {
    let n = m.graph.nodes.iter().find(|n| n.name == name).expect("node");
    match &n.op {
        Op::Conv2d { weight, .. } => weight.shape.clone(),
        _ => panic!("{name} is not a convolution"),
    }
}

/// Removing channels (with and without fill values) gives a smaller graph that computes
/// what the masked full model computes; keeping all of them only swaps the head.
#[test]
fn extract_equals_the_masked_full_model() {
    let m = model();
    let h = head(&m);
    let shapes = m.check().expect("valid");
    let spaces = channel_spaces(&m.graph, &shapes).expect("spaces");
    let prunable = spaces.prunable();
    assert_eq!(
        prunable.len(),
        2,
        "the residual stream and the last convolution"
    );
    assert_eq!(
        spaces.spaces[prunable[0]].sites.len(),
        2,
        "stem BatchNorm and residual sum"
    );
    let images: Vec<Vec<f64>> = (0..3)
        .map(|s| {
            (0..72)
                .map(|i| f64::from(noise(i, 20.0 + s as f32)))
                .collect()
        })
        .collect();
    for fills in [false, true] {
        let mut plan = ChannelPlan::keep_all(&spaces);
        let keep = [
            [true, false, true, true].as_slice(),
            [false, true, false].as_slice(),
        ];
        for (g, k) in plan.groups.iter_mut().zip(keep) {
            for (c, &on) in k.iter().enumerate() {
                g.kept.set(c, on);
            }
            if fills {
                for (si, f) in g.fill.iter_mut().enumerate() {
                    f.iter_mut()
                        .enumerate()
                        .for_each(|(c, v)| *v = 0.1 + 0.2 * (c + si) as f32);
                }
            }
        }
        let small = extract(&m, &h, 1, &plan).expect("extract");
        let (refm, masks) = reference(&m, &h, 1, &plan).expect("reference");
        assert_eq!(conv_shape(&small, "conv1"), vec![3, 2, 3, 3]);
        assert_eq!(conv_shape(&small, "conv2"), vec![3, 3, 3, 3]);
        assert_eq!(conv_shape(&small, "conv3"), vec![1, 3, 3, 3]);
        assert_eq!(
            small.meta.class_names,
            vec!["b".to_string(), "other".into()]
        );
        let mut seen = 0.0f64;
        for x in &images {
            let (a, b) = (eval(&small, &[], x), eval(&refm, &masks, x));
            assert_eq!(a.len(), 2);
            for (p, q) in a.iter().zip(&b) {
                assert!(
                    (p - q).abs() <= 1e-4 * (1.0 + q.abs()),
                    "fills {fills}: extracted {a:?}, reference {b:?}"
                );
                seen += (p - q).abs();
            }
        }
        assert!(seen.is_finite());
        // The removed channels matter: without their masks the reference differs.
        let full = eval(&refm, &[], &images[0]);
        assert!(
            full.iter()
                .zip(&eval(&small, &[], &images[0]))
                .any(|(p, q)| (p - q).abs() > 1e-3),
            "fills {fills}"
        );
    }
    let all = extract(&m, &h, 0, &ChannelPlan::keep_all(&spaces)).expect("keep all");
    assert_eq!(conv_shape(&all, "conv1"), vec![4, 2, 3, 3]);
    let mut swapped = m.clone();
    swapped.graph.nodes[m.graph.output].op = Op::Linear {
        weight: h.weight.clone(),
        bias: Some(h.bias.clone()),
    };
    swapped.meta.class_names.truncate(2);
    for x in &images {
        let (a, b) = (eval(&all, &[], x), eval(&swapped, &[], x));
        assert!(
            a.iter()
                .zip(&b)
                .all(|(p, q)| (p - q).abs() <= 1e-5 * (1.0 + q.abs())),
            "{a:?} vs {b:?}"
        );
    }
}

/// A plan that does not fit the graph is refused, never cut.
#[test]
fn extract_refuses_a_plan_of_another_graph() {
    let m = model();
    let shapes = m.check().expect("valid");
    let spaces = channel_spaces(&m.graph, &shapes).expect("spaces");
    let mut plan = ChannelPlan::keep_all(&spaces);
    plan.groups.pop();
    let err = extract(&m, &head(&m), 0, &plan).expect_err("one group short");
    assert!(err.to_string().contains("channel plan"), "{err}");
    let mut wrong = head(&m);
    wrong.input = 0;
    assert!(
        extract(&m, &wrong, 0, &ChannelPlan::keep_all(&spaces)).is_err(),
        "a head reading the input"
    );
}
