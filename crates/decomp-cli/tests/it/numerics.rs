//! Issue 19, numbers and sizes: NaN never scores, non-finite numbers are refused on import
//! and read, absurd sizes are refused before anything is allocated. Every case runs the
//! binary and checks the exit code (1: an error, not a signal or a panic), the message and
//! that no input changed; a bounded proptest feeds mutated artifact and checkpoint bytes
//! to the readers.

use std::path::{Path, PathBuf};
use std::process::Command;

use decomp_ir::{
    BinaryHead, DecompConfig, ModelIr, ModuleIr, Op, SampleCounts, TensorData, decode_artifact,
    encode_artifact, read_artifact, write_artifact,
};
use decomp_model::ResNetConfig;
use decomp_model::train::TrainCheckpoint;
use proptest::prelude::*;

use crate::support::{cifar_file, decomp, s};
use crate::train::two_class_records;

#[path = "../../../decomp-model/tests/it/torch_zip.rs"]
mod torch_zip;

/// Runs `decomp args` and checks that it fails cleanly: exit code 1 (not a signal such as
/// SIGABRT, not a panic), every needle in stderr, and every file of `inputs` unchanged.
/// Returns stderr.
fn refused(args: &[&str], inputs: &[&Path], needles: &[&str]) -> String {
    let before: Vec<Vec<u8>> = inputs
        .iter()
        .map(|p| std::fs::read(p).expect("read input"))
        .collect();
    let out = Command::new(env!("CARGO_BIN_EXE_decomp"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run decomp");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{args:?} should fail with exit code 1: {err}"
    );
    assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    for needle in needles {
        assert!(
            err.contains(needle),
            "{args:?}: expected {needle:?} in: {err}"
        );
    }
    for (p, b) in inputs.iter().zip(before) {
        assert!(
            std::fs::read(p).expect("read input") == b,
            "{args:?} changed {}",
            p.display()
        );
    }
    err
}

/// Runs `decomp args`, expects success and returns stdout.
fn succeeds(args: &[&str]) -> String {
    let (ok, out, err) = decomp(args);
    assert!(ok, "{args:?}: {err}");
    out
}

/// One change to a model, applied before it is written.
type Change = Box<dyn Fn(&mut ModelIr)>;

/// The `which` tensor (`weight`, `bias`, `gamma`, `beta`, `running_mean`, `running_var`)
/// of node `node`.
fn tensor<'a>(m: &'a mut ModelIr, node: &str, which: &str) -> &'a mut TensorData {
    let id = m
        .graph
        .find(node)
        .unwrap_or_else(|| panic!("no node {node}"));
    match (&mut m.graph.nodes[id].op, which) {
        (Op::Conv2d { weight, .. } | Op::Linear { weight, .. }, "weight") => weight,
        (Op::Conv2d { bias: Some(b), .. } | Op::Linear { bias: Some(b), .. }, "bias") => b,
        (Op::BatchNorm2d { gamma, .. }, "gamma") => gamma,
        (Op::BatchNorm2d { beta, .. }, "beta") => beta,
        (Op::BatchNorm2d { running_mean, .. }, "running_mean") => running_mean,
        (Op::BatchNorm2d { running_var, .. }, "running_var") => running_var,
        (op, _) => panic!("node {node} ({}) has no {which}", op.kind()),
    }
}

/// A ResNet-8 for 10 classes with one change, written (valid header and hash) to `path`.
fn crafted(path: &Path, change: impl FnOnce(&mut ModelIr)) -> PathBuf {
    let mut m = ResNetConfig::new(8, 10).build().expect("build");
    change(&mut m);
    write_artifact(path, &m).expect("write crafted model");
    path.to_path_buf()
}

#[test]
fn absurd_sizes_are_refused_before_allocating() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let out = d.join("m.ir");
    let start = std::time::Instant::now();
    for (args, needle) in [
        (vec!["--arch", "resnet600002"], "limits::MAX_PARAMS"),
        (
            vec!["--arch", "resnet20", "--classes", "100000000000"],
            "limits::MAX_CLASSES",
        ),
    ] {
        let mut a = vec!["new-model", "--out", s(&out)];
        a.extend(args);
        refused(&a, &[], &[needle]);
        assert!(!out.exists(), "{a:?} wrote {}", out.display());
    }
    let data = d.join("records.bin");
    cifar_file(&data, 20);
    refused(
        &[
            "train",
            "--arch",
            "resnet8",
            "--data-file",
            s(&data),
            "--resize",
            "100000",
            "--epochs",
            "1",
            "--out-dir",
            s(&d.join("run")),
        ],
        &[&data],
        &[
            "--arch resnet8 for 10 classes of 3x100000x100000 images",
            "limits::MAX_SPATIAL",
        ],
    );
    assert!(!d.join("run/last.ckpt").exists());
    // Refused from the configuration alone: no 4 GB allocation first.
    assert!(start.elapsed().as_secs() < 60, "took {:?}", start.elapsed());
}

#[test]
fn crafted_models_with_huge_sizes_are_refused_on_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let data = d.join("records.bin");
    cifar_file(&data, 10);
    let on = |node: &'static str, f: fn(&mut Op)| {
        move |m: &mut ModelIr| {
            let id = m.graph.find(node).expect(node);
            f(&mut m.graph.nodes[id].op);
        }
    };
    let cases: Vec<(&str, Change, &str)> = vec![
        (
            "input",
            Box::new(on("input", |op| {
                *op = Op::Input {
                    shape: [3, 100_000, 100_000],
                }
            })),
            "node 0 (input, input): output shape [3, 100000, 100000] holds more than 67108864 values per image (limits::MAX_NODE_VALUES)",
        ),
        (
            "wide-input",
            Box::new(on("input", |op| {
                *op = Op::Input {
                    shape: [1, 1, 1 << 20],
                }
            })),
            "limits::MAX_SPATIAL",
        ),
        (
            "padding",
            Box::new(on("conv1", |op| {
                if let Op::Conv2d { padding, .. } = op {
                    *padding = [1 << 40, 1 << 40];
                }
            })),
            "(conv1, conv2d): padding [1099511627776, 1099511627776] is larger than 4096 (limits::MAX_SPATIAL)",
        ),
        (
            "padded-output",
            Box::new(on("conv1", |op| {
                if let Op::Conv2d { padding, .. } = op {
                    *padding = [4000, 4000];
                }
            })),
            "(conv1, conv2d): the zero-padded input [3, 8032, 8032] holds more than 67108864 values",
        ),
        (
            "stride",
            Box::new(on("conv1", |op| {
                if let Op::Conv2d { stride, .. } = op {
                    *stride = [usize::MAX, 1];
                }
            })),
            "stride [18446744073709551615, 1] is larger than 4096",
        ),
        (
            "shortcut",
            Box::new(on("layer2.0.shortcut", |op| {
                if let Op::ShortcutA { pad_after, .. } = op {
                    *pad_after = 1 << 40;
                }
            })),
            "(layer2.0.shortcut, shortcut_a): output shape",
        ),
    ];
    for (name, change, needle) in cases {
        let path = crafted(&d.join(format!("{name}.ir")), change);
        for cmd in [
            vec!["eval", "--weights", s(&path), "--data-file", s(&data)],
            vec!["inspect", s(&path)],
        ] {
            refused(&cmd, &[&path, &data], &[s(&path), needle]);
        }
    }
}

#[test]
fn non_finite_numbers_are_refused_on_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let data = d.join("records.bin");
    cifar_file(&data, 10);
    let value = |node: &'static str, which: &'static str, v: f32| {
        move |m: &mut ModelIr| tensor(m, node, which).data[3] = v
    };
    let eps = |v: f64| {
        move |m: &mut ModelIr| {
            let id = m.graph.find("layer1.0.bn2").expect("bn");
            if let Op::BatchNorm2d { eps, .. } = &mut m.graph.nodes[id].op {
                *eps = v;
            }
        }
    };
    let cases: Vec<(&str, Change, &str)> = vec![
        (
            "nan-bias",
            Box::new(value("linear", "bias", f32::NAN)),
            "(linear, linear): bias: value 3 is NaN, expected a finite number",
        ),
        (
            "inf-weight",
            Box::new(value("conv1", "weight", f32::NEG_INFINITY)),
            "(conv1, conv2d): weight: value 3 is -inf",
        ),
        (
            "inf-var",
            Box::new(value("bn1", "running_var", f32::INFINITY)),
            "(bn1, batchnorm2d): running_var: value 3 is inf",
        ),
        (
            "nan-mean",
            Box::new(value("layer3.0.bn1", "running_mean", f32::NAN)),
            "(layer3.0.bn1, batchnorm2d): running_mean: value 3 is NaN",
        ),
        (
            "nan-gamma",
            Box::new(value("layer2.0.bn2", "gamma", f32::NAN)),
            "(layer2.0.bn2, batchnorm2d): gamma: value 3 is NaN",
        ),
        (
            "inf-eps",
            Box::new(eps(f64::INFINITY)),
            "(layer1.0.bn2, batchnorm2d): eps is inf, expected a finite positive number",
        ),
        (
            "nan-eps",
            Box::new(eps(f64::NAN)),
            "eps is NaN, expected a finite positive number",
        ),
        (
            "zero-eps",
            Box::new(eps(0.0)),
            "eps is 0, expected a finite positive number",
        ),
        (
            "negative-eps",
            Box::new(eps(-1e-5)),
            "eps is -0.00001, expected a finite positive number",
        ),
        (
            "nan-norm",
            Box::new(|m: &mut ModelIr| m.meta.input_norm.mean[1] = f32::NAN),
            "input normalization must have finite means and finite positive stds",
        ),
        (
            "inf-std",
            Box::new(|m: &mut ModelIr| m.meta.input_norm.std[0] = f32::INFINITY),
            "finite positive stds",
        ),
    ];
    for (name, change, needle) in cases {
        let path = crafted(&d.join(format!("{name}.ir")), change);
        refused(
            &["eval", "--weights", s(&path), "--data-file", s(&data)],
            &[&path, &data],
            &[s(&path), needle],
        );
    }
    // A module carries its model: the same check on `.mod` files, and on the head.
    let model = ResNetConfig::new(8, 10).build().expect("build");
    let mut bad = model.clone();
    tensor(&mut bad, "layer1.0.conv1", "weight").data[0] = f32::NAN;
    let write = |name: &str, m: &ModuleIr| {
        let p = d.join(name);
        write_artifact(&p, m).expect("write module");
        p
    };
    let ok0 = write("ok0.mod", &module(&model, 0, [0.0, 0.0]));
    let ok1 = write("ok1.mod", &module(&model, 1, [0.0, 0.0]));
    let bad0 = write("bad0.mod", &module(&bad, 0, [0.0, 0.0]));
    let bad1 = write("bad1.mod", &module(&model, 1, [0.0, f32::INFINITY]));
    for (pair, culprit, needle) in [
        (
            [&bad0, &ok1],
            &bad0,
            "(layer1.0.conv1, conv2d): weight: value 0 is NaN",
        ),
        ([&ok0, &bad1], &bad1, "head bias: value 1 is inf"),
    ] {
        refused(
            &[
                "compose",
                s(pair[0]),
                s(pair[1]),
                "--data-file",
                s(&data),
                "--classes",
                "0,1",
            ],
            &[pair[0], pair[1], &data],
            &[s(culprit), needle],
        );
        refused(&["inspect", s(culprit)], &[culprit], &[needle]);
    }
}

/// A module of `model` for `class` with no mask: the model's own logit of `class` against
/// the mean of the others, plus `bias`.
fn module(model: &ModelIr, class: usize, bias: [f32; 2]) -> ModuleIr {
    let out = &model.graph.nodes[model.graph.output];
    let Op::Linear { weight, .. } = &out.op else {
        panic!("linear head")
    };
    let (k, f) = (weight.shape[0], weight.shape[1]);
    let mine = &weight.data[class * f..(class + 1) * f];
    let other: Vec<f32> = (0..f)
        .map(|j| {
            (0..k)
                .filter(|&c| c != class)
                .map(|c| weight.data[c * f + j])
                .sum::<f32>()
                / (k - 1) as f32
        })
        .collect();
    ModuleIr {
        class,
        class_name: model.meta.class_names[class].clone(),
        model_hash: model.content_hash(),
        model_path: "crafted".into(),
        model: model.clone(),
        masks: vec![],
        dead: vec![],
        head: BinaryHead {
            input: out.inputs[0],
            weight: TensorData::new(vec![2, f], [mine, &other].concat()).expect("head weight"),
            bias: TensorData::new(vec![2], bias.to_vec()).expect("head bias"),
        },
        config: DecompConfig::default(),
        counts: SampleCounts {
            positives: 1,
            unconcerned: 1,
            unconcerned_per_class: 1,
        },
        provenance: "crafted".into(),
    }
}

/// `input -> flatten -> linear` over 32x32 RGB images whose weights are finite but so
/// large that the logits of class 0 and 1 overflow to +inf and -inf on any image with
/// some non-zero pixel.
fn overflowing_model() -> ModelIr {
    let mut m = ResNetConfig::new(8, 10).build().expect("build");
    let mut g = decomp_ir::Graph::new([3, 32, 32]);
    let flat = g.push("flatten", Op::Flatten, vec![0]);
    let mut w = vec![0.0f32; 10 * 3072];
    w[..3072].fill(3e38);
    w[3072..2 * 3072].fill(-3e38);
    let weight = TensorData::new(vec![10, 3072], w).expect("weight");
    g.push(
        "linear",
        Op::Linear {
            weight,
            bias: Some(TensorData::zeros(vec![10])),
        },
        vec![flat],
    );
    m.graph = g;
    m.check().expect("finite weights pass the checks");
    m
}

#[test]
fn overflowing_logits_stop_eval_naming_image_and_node() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let data = d.join("records.bin");
    cifar_file(&data, 10);
    let m = d.join("overflow.ir");
    write_artifact(&m, &overflowing_model()).expect("write");
    refused(
        &[
            "eval",
            "--weights",
            s(&m),
            "--data-file",
            s(&data),
            "--batch-size",
            "4",
        ],
        &[&m, &data],
        &["image 0: score 0 of node linear is inf, expected a finite number"],
    );
}

#[test]
fn overflowing_margins_stop_compose_and_vote() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let data = d.join("records.bin");
    cifar_file(&data, 20);
    let model = ResNetConfig::new(8, 10).build().expect("build");
    // Finite head biases whose difference overflows: the margin is +inf on every image.
    let (m0, m1) = (d.join("m0.mod"), d.join("m1.mod"));
    write_artifact(&m0, &module(&model, 0, [0.0, 0.0])).expect("write");
    write_artifact(&m1, &module(&model, 1, [3e38, -3e38])).expect("write");
    let compose = [
        "compose",
        s(&m0),
        s(&m1),
        "--data-file",
        s(&data),
        "--classes",
        "0,1",
    ];
    let margins = d.join("margins.json");
    let mut args = compose.to_vec();
    args.extend(["--save-margins", s(&margins)]);
    refused(
        &args,
        &[&m0, &m1, &data],
        &["image 0: the margin of module 1 of node linear is inf, expected a finite number"],
    );
    assert!(!margins.exists(), "no margins file from a failed run");
    let mut naive = compose.to_vec();
    naive.push("--naive");
    refused(
        &naive,
        &[&m0, &m1, &data],
        &["image 0: the margin of module 1 of node linear is inf"],
    );

    // Saved margins: JSON has no NaN, but 1e39 reads as an infinite f32.
    let ok = d.join("m1-ok.mod");
    write_artifact(&ok, &module(&model, 1, [0.0, 0.0])).expect("write");
    succeeds(&[
        "compose",
        s(&m0),
        s(&ok),
        "--data-file",
        s(&data),
        "--classes",
        "0,1",
        "--save-margins",
        s(&margins),
    ]);
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&margins).expect("read")).expect("json");
    succeeds(&["vote", "--margins", s(&margins), "--pick", "0:0,0:1"]);
    v["margins"][3][1] = serde_json::json!(1e39);
    let bad = d.join("bad.json");
    std::fs::write(&bad, serde_json::to_string(&v).expect("json")).expect("write");
    refused(
        &["vote", "--margins", s(&bad), "--pick", "0:0,0:1"],
        &[&bad],
        &[
            s(&bad),
            "image 3: the margin of module 1 (",
            "m1-ok.mod) is inf, expected a finite number",
        ],
    );
}

#[test]
fn non_finite_training_stops_and_keeps_the_last_checkpoint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let data = d.join("records.bin");
    two_class_records(&data, 32);
    let run = d.join("run");
    let train = |epochs: &'static str, resume: bool| {
        let mut a = vec![
            "train",
            "--arch",
            "resnet8",
            "--data-file",
            s(&data),
            "--classes",
            "0,1",
            "--recipe",
            "he2016",
            "--epochs",
            epochs,
            "--batch-size",
            "16",
            "--seed",
            "3",
            "--out-dir",
            s(&run),
        ];
        if resume {
            a.push("--resume");
        }
        a.into_iter().map(String::from).collect::<Vec<String>>()
    };
    let args = train("1", false);
    succeeds(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let ckpt_path = run.join("last.ckpt");
    let good: TrainCheckpoint = read_artifact(&ckpt_path).expect("checkpoint");
    assert_eq!(good.epochs_done, 1);
    let resume = train("2", true);
    let resume: Vec<&str> = resume.iter().map(String::as_str).collect();
    let best = run.join("best.ir");
    for (name, change, needles) in [
        (
            // Finite parameters whose forward overflows: the logits are +inf / -inf.
            "logits",
            Box::new(|m: &mut ModelIr| {
                tensor(m, "layer3.0.bn2", "beta").data.fill(1e30);
                let w = tensor(m, "linear", "weight");
                let f = w.shape[1];
                w.data[..f].fill(3e38);
                w.data[f..].fill(-3e38);
            }) as Change,
            &["epoch 2 step 0, image 0: logit 0 of node linear is inf, expected a finite number"][..],
        ),
        (
            // Finite logits 6e38 apart: the cross-entropy overflows.
            "loss",
            Box::new(|m: &mut ModelIr| {
                tensor(m, "linear", "bias")
                    .data
                    .copy_from_slice(&[3e38, -3e38])
            }),
            &["epoch 2 step 0: diverged: loss inf"][..],
        ),
        (
            "nan",
            Box::new(|m: &mut ModelIr| tensor(m, "layer1.0.conv2", "weight").data[7] = f32::NAN),
            &[
                "last.ckpt",
                "(layer1.0.conv2, conv2d): weight: value 7 is NaN",
            ][..],
        ),
    ] {
        let mut ckpt = good.clone();
        change(&mut ckpt.model);
        write_artifact(&ckpt_path, &ckpt).expect("write crafted checkpoint");
        let err = refused(&resume, &[&ckpt_path, &best, &data], needles);
        assert!(err.contains("error:"), "{name}: {err}");
    }
}

/// `../shared` beside the workspace (or `$DECOMP_SHARED_DIR`) when it holds the pretrained
/// ResNet-20 and the CIFAR-10 test batch; otherwise `None`, saying why.
fn shared() -> Option<(PathBuf, PathBuf)> {
    let dir = std::env::var_os("DECOMP_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared")));
    let weights = dir.join("models/cifar10/resnet20-12fca82f.th");
    let data = dir.join("datasets/cifar-10-batches-bin/test_batch.bin");
    if weights.is_file() && data.is_file() {
        Some((weights, data))
    } else {
        eprintln!(
            "skipping: {} or {} not found (set DECOMP_SHARED_DIR to the shared data folder)",
            weights.display(),
            data.display()
        );
        None
    }
}

/// The pretrained ResNet-20 with a NaN final bias: refused on import (as a PyTorch
/// checkpoint, naming the tensor) and on read (as `.ir`, naming the node), where it used to
/// score 100% top-1; with finite weights whose logits overflow, eval stops naming the
/// image and the node. The clean model still evaluates.
#[test]
fn real_resnet20_with_nan_bias_never_scores() {
    let Some((weights, data)) = shared() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let eval = |w: &Path| -> Vec<String> {
        [
            "eval",
            "--weights",
            s(w),
            "--data-file",
            s(&data),
            "--limit",
            "64",
            "--batch-size",
            "32",
        ]
        .map(String::from)
        .to_vec()
    };
    let clean = d.join("r20.ir");
    succeeds(&["import", "--weights", s(&weights), "--out", s(&clean)]);
    let out = succeeds(&eval(&clean).iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.contains("64 images"), "{out}");

    // The checkpoint's bytes with linear.bias[3] set to NaN (found by its 10 values).
    let model: ModelIr = read_artifact(&clean).expect("clean model");
    let mut nan_model = model.clone();
    let bias = tensor(&mut nan_model, "linear", "bias");
    let needle: Vec<u8> = bias.data.iter().flat_map(|v| v.to_le_bytes()).collect();
    let mut bytes = std::fs::read(&weights).expect("read checkpoint");
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle.as_slice())
        .expect("linear.bias in the checkpoint");
    bytes[at + 12..at + 16].copy_from_slice(&f32::NAN.to_le_bytes());
    let th = d.join("nan-bias.th");
    std::fs::write(&th, &bytes).expect("write");
    let ir = d.join("nan.ir");
    refused(
        &["import", "--weights", s(&th), "--out", s(&ir)],
        &[&th],
        &[
            "nan-bias.th",
            "linear.bias: value 3 is NaN, expected a finite number",
        ],
    );
    assert!(!ir.exists());
    let args = eval(&th);
    refused(
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        &[&th, &data],
        &["linear.bias: value 3 is NaN"],
    );

    bias.data[3] = f32::NAN;
    write_artifact(&ir, &nan_model).expect("write");
    let args = eval(&ir);
    refused(
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        &[&ir, &data],
        &["(linear, linear): bias: value 3 is NaN"],
    );

    let mut big = model;
    tensor(&mut big, "linear", "weight")
        .data
        .iter_mut()
        .for_each(|v| *v = v.signum() * 3e38);
    let big_path = d.join("overflow.ir");
    write_artifact(&big_path, &big).expect("write");
    let args = eval(&big_path);
    refused(
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        &[&big_path, &data],
        &["image 0: score ", " of node linear is "],
    );
}

/// Artifact bytes with a valid header and SHA-256 over `payload`.
fn envelope(kind_and_version: &[u8], payload: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    let mut out = kind_and_version[..12].to_vec();
    out.extend((payload.len() as u64).to_le_bytes());
    out.extend(sha2::Sha256::digest(payload));
    out.extend(payload);
    out
}

/// A value (weight, statistic, eps, size) a crafted artifact or checkpoint may carry.
fn odd_f32() -> impl Strategy<Value = f32> {
    prop_oneof![
        Just(f32::NAN),
        Just(f32::INFINITY),
        Just(f32::NEG_INFINITY),
        Just(-f32::NAN)
    ]
}

fn huge() -> impl Strategy<Value = usize> {
    prop_oneof![
        Just(usize::MAX),
        Just(1usize << 40),
        Just(1usize << 32),
        4097usize..1 << 24,
        Just(0usize)
    ]
}

/// Sets `values[i % len] = v`.
fn set<T>(values: &mut [T], i: usize, v: T) {
    let n = values.len();
    values[i % n] = v;
}

/// One change to a valid ResNet-8: a non-finite value in some tensor, an odd eps, or a
/// huge size in some shape field. Returns a description for failure messages.
fn mutate(m: &mut ModelIr, pick: usize, index: usize, v: f32, size: usize, which: u8) -> String {
    let n = m.graph.nodes.len();
    let node = &mut m.graph.nodes[pick % n];
    let name = node.name.clone();
    match (&mut node.op, which % 4) {
        (Op::Input { shape }, _) => set(shape, index, size),
        (Op::Conv2d { weight, .. } | Op::Linear { weight, .. }, 0) => {
            set(&mut weight.data, index, v)
        }
        (
            Op::Conv2d {
                padding, stride, ..
            },
            1,
        ) => {
            padding[index % 2] = size;
            stride[(index / 2) % 2] = size.max(1);
        }
        (Op::Conv2d { weight, .. } | Op::Linear { weight, .. }, _) => {
            set(&mut weight.shape, index, size)
        }
        (Op::BatchNorm2d { running_var, .. }, 0) => set(&mut running_var.data, index, v),
        (Op::BatchNorm2d { eps, .. }, 1) => *eps = f64::from(v),
        (Op::BatchNorm2d { gamma, .. }, _) => set(&mut gamma.data, index, v),
        (Op::ShortcutA { pad_before, .. }, _) => *pad_before = size,
        (_, _) => return format!("{name}: unchanged"),
    }
    format!("{name}: pick {pick} index {index} value {v} size {size} which {which}")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// A changed model re-encoded with a valid hash: decoding never panics and never
    /// accepts a non-finite value or a size over the limits.
    #[test]
    fn crafted_artifacts_are_refused_cleanly(pick in 0usize..64, index in 0usize..4096, v in odd_f32(), size in huge(), which in 0u8..4) {
        let mut m = ResNetConfig::new(8, 3).build().expect("build");
        let what = mutate(&mut m, pick, index, v, size, which);
        let (bytes, _) = encode_artifact(&m).expect("encode");
        match decode_artifact::<ModelIr>(&bytes, Path::new("crafted.ir")) {
            Ok(back) => prop_assert!(what.ends_with("unchanged") || back.check().is_ok(), "{what}: accepted"),
            Err(e) => {
                let msg = e.to_string();
                prop_assert!(!what.ends_with("unchanged"), "{what}: refused a valid model: {msg}");
                prop_assert!(msg.starts_with("crafted.ir: invalid model: "), "{what}: {msg}");
                prop_assert!(!msg.ends_with('.'), "{msg}");
            }
        }
    }

    /// Raw payload bytes overwritten (NaN patterns, huge bincode lengths, noise) under a
    /// recomputed SHA-256: the decoder and validator refuse or accept, never panic or abort.
    #[test]
    fn artifact_bytes_never_panic(offset in 0usize..400_000, patch in prop_oneof![
        Just(f32::NAN.to_le_bytes().to_vec()),
        Just(f32::INFINITY.to_le_bytes().to_vec()),
        Just([vec![0xfd], u64::MAX.to_le_bytes().to_vec()].concat()),
        Just([vec![0xfd], (1u64 << 40).to_le_bytes().to_vec()].concat()),
        Just([vec![0xfc], u32::MAX.to_le_bytes().to_vec()].concat()),
        proptest::collection::vec(any::<u8>(), 1..16),
    ]) {
        let m = ResNetConfig::new(8, 3).build().expect("build");
        let (bytes, _) = encode_artifact(&m).expect("encode");
        let mut payload = bytes[decomp_ir::artifact::HEADER_LEN..].to_vec();
        let at = offset % payload.len();
        let end = (at + patch.len()).min(payload.len());
        payload[at..end].copy_from_slice(&patch[..end - at]);
        let crafted = envelope(&bytes, &payload);
        match decode_artifact::<ModelIr>(&crafted, Path::new("x.ir")) {
            Ok(back) => prop_assert!(back.check().is_ok()),
            Err(e) => prop_assert!(e.to_string().starts_with("x.ir: "), "{e}"),
        }
    }

    /// A PyTorch zip checkpoint with a non-finite value or a huge declared shape in some
    /// tensor: import refuses it, naming the tensor, and never panics or aborts.
    #[test]
    fn crafted_checkpoints_are_refused_on_import(pick in 0usize..64, index in 0usize..4096, v in odd_f32(), size in huge(), shape in any::<bool>()) {
        let dir = tempfile::tempdir().expect("tempdir");
        let m = ResNetConfig::new(8, 10).build().expect("build");
        let mut tensors: Vec<(String, TensorData)> =
            torch_zip::state_dict(&m, "").into_iter().map(|(n, t)| (n, t.clone())).collect();
        let k = pick % tensors.len();
        let name = tensors[k].0.clone();
        let t = &mut tensors[k].1;
        if shape {
            set(&mut t.shape, index, size);
        } else {
            set(&mut t.data, index, v);
        }
        let path = dir.path().join("x.pt");
        let refs: Vec<(String, &TensorData)> = tensors.iter().map(|(n, t)| (n.clone(), t)).collect();
        torch_zip::write_zip_tensors(&path, &refs);
        let result = decomp_model::import::import_resnet(&path, None, decomp_model::import::akamaster_norm(), None);
        let msg = result.expect_err("a changed checkpoint must be refused").to_string();
        prop_assert!(msg.contains("x.pt"), "{msg}");
        prop_assert!(
            msg.contains(name.as_str()) || msg.contains("wrong shape") || msg.contains("limits::") || msg.contains("not a CIFAR ResNet")
                || msg.contains("pickle"),
            "{name}: {msg}"
        );
    }
}
