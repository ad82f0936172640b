//! ONNX import of models no one here wrote (`scripts/export_onnx.py`): the committed
//! fixtures in `tests/fixtures/onnx` and the trained models in the workspace's `models/onnx`
//! (sha256 in each folder's `SHA256SUMS`) against onnxruntime's logits, and the ResNet-20
//! export against the `.th` import of the same checkpoint.

use std::path::{Path, PathBuf};

use decomp_data::{Dataset, DatasetKind, Normalization};
use decomp_ir::{ModelIr, Op};
use decomp_model::import::{akamaster_norm, import_resnet};
use decomp_model::onnx::{OnnxOptions, import_onnx};
use decomp_model::{Device, Engine, Executor, to_vec};
use sha2::{Digest, Sha256};

use crate::shared_dir;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/onnx");
/// The trained VGG-11-BN and MobileNetV2 that Table 1 decomposes (`models/onnx/README.md`).
const MODELS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../models/onnx");

fn fixture(name: &str) -> PathBuf {
    Path::new(FIXTURES).join(name)
}

fn sha256(path: &Path) -> String {
    let bytes = std::fs::read(path).expect("fixture");
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Every committed fixture and trained model matches its line in its folder's `SHA256SUMS`.
#[test]
fn fixtures_match_their_checksums() {
    for (dir, at_least) in [(FIXTURES, 4), (MODELS, 2)] {
        let dir = Path::new(dir);
        let sums = std::fs::read_to_string(dir.join("SHA256SUMS")).expect("SHA256SUMS");
        let mut n = 0;
        for line in sums.lines().filter(|l| !l.trim().is_empty()) {
            let (hash, name) = line.split_once("  ").expect("'<sha256>  <file>' lines");
            assert_eq!(
                sha256(&dir.join(name)),
                hash,
                "{}",
                dir.join(name).display()
            );
            n += 1;
        }
        assert!(n >= at_least, "{}: {n} files listed", dir.display());
    }
}

/// The ResNet-20 checkpoint exported to ONNX imports as the same graph as the `.th`
/// import: same ops, same wiring, parameterized nodes named alike, and every stored value
/// (weights, biases, BatchNorm statistics and epsilon) equal bit for bit.
#[test]
fn resnet20_onnx_equals_th_import_bit_for_bit() {
    let Some(shared) = shared_dir() else { return };
    let th = import_resnet(
        &shared.join("models/cifar10/resnet20-12fca82f.th"),
        None,
        akamaster_norm(),
        None,
    )
    .expect("th import");
    let onnx =
        import_onnx(&fixture("resnet20.onnx"), &OnnxOptions::default()).expect("onnx import");
    assert_eq!(
        onnx.meta.input_norm, th.meta.input_norm,
        "normalization from the metadata"
    );
    assert_eq!(onnx.graph.nodes.len(), th.graph.nodes.len());
    assert_eq!(onnx.graph.output, th.graph.output);
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    let mut tensors = 0;
    for (a, b) in onnx.graph.nodes.iter().zip(&th.graph.nodes) {
        assert_eq!(a.inputs, b.inputs, "{} / {}: wiring", a.name, b.name);
        assert_eq!(a.op.kind(), b.op.kind(), "{} / {}", a.name, b.name);
        if a.op.num_params() > 0 {
            assert_eq!(a.name, b.name, "parameterized nodes carry the module path");
        }
        let (ta, tb) = (stored(&a.op), stored(&b.op));
        assert_eq!(ta.len(), tb.len());
        for (x, y) in ta.iter().zip(&tb) {
            assert_eq!(x.0, y.0, "{}: shape", a.name);
            assert_eq!(bits(x.1), bits(y.1), "{}: values", a.name);
            tensors += 1;
        }
        match (&a.op, &b.op) {
            (Op::BatchNorm2d { eps: x, .. }, Op::BatchNorm2d { eps: y, .. }) => {
                assert_eq!(x.to_bits(), y.to_bits(), "{}: eps", a.name)
            }
            (x, y) if a.op.num_params() == 0 => assert_eq!(x, y, "{}: op", a.name),
            _ => {}
        }
    }
    assert_eq!(
        tensors,
        19 * 5 + 2,
        "19 conv + BatchNorm pairs, the linear layer"
    );
}

/// `(shape, values)` of every tensor an op stores, in a fixed order.
fn stored(op: &Op) -> Vec<(&[usize], &[f32])> {
    fn t(t: &decomp_ir::TensorData) -> (&[usize], &[f32]) {
        (t.shape.as_slice(), t.data.as_slice())
    }
    match op {
        Op::Conv2d { weight, bias, .. } | Op::Linear { weight, bias } => std::iter::once(t(weight))
            .chain(bias.iter().map(t))
            .collect(),
        Op::BatchNorm2d {
            gamma,
            beta,
            running_mean,
            running_var,
            ..
        } => vec![t(gamma), t(beta), t(running_mean), t(running_var)],
        _ => vec![],
    }
}

/// The first `n` images of the CIFAR-10 test batch, normalized as `model` expects.
fn test_images(shared: &Path, model: &ModelIr, n: usize) -> Vec<f32> {
    let file = shared.join("datasets/cifar-10-batches-bin/test_batch.bin");
    let norm = &model.meta.input_norm;
    Dataset::from_cifar_file(DatasetKind::Cifar10, &file)
        .expect("test batch")
        .with_normalization(Normalization::new(&norm.mean, &norm.std))
        .batch(0..n)
        .expect("batch")
        .images
}

/// Logits of every fixture model equal onnxruntime's (`scripts/export_onnx.py reference`)
/// within 1e-4 on real test images, on both engines where the CPU plan runs the graph.
#[test]
fn onnx_models_match_onnxruntime_logits() {
    let Some(shared) = shared_dir() else { return };
    let models = [
        (FIXTURES, "resnet20"),
        (FIXTURES, "vgg11_bn_w8"),
        (FIXTURES, "mobilenet_v2_w025"),
        (FIXTURES, "ops"),
        (MODELS, "vgg11_bn"),
        (MODELS, "mobilenet_v2_w05"),
    ];
    for (dir, name) in models {
        let dir = Path::new(dir);
        let reference = dir.join(format!("{name}.logits.json"));
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&reference).expect("reference"))
                .expect("json");
        let path = dir.join(format!("{name}.onnx"));
        assert_eq!(
            v["model_sha256"].as_str(),
            Some(sha256(&path).as_str()),
            "{name}: the reference was computed on this file"
        );
        let expected: Vec<Vec<f64>> = serde_json::from_value(v["logits"].clone()).expect("logits");
        let model = import_onnx(&path, &OnnxOptions::default()).expect("import");
        let k = model.num_classes();
        let n = expected.len();
        let images = test_images(&shared, &model, n);
        for engine in [Engine::Burn, Engine::Auto] {
            let exec = Executor::with_engine(&model, &Device::flex(), engine).expect("executor");
            let x = exec.input_tensor(images.clone(), n).expect("input");
            let got = to_vec(exec.forward(x).expect("forward"));
            let mut worst = 0.0f64;
            for (i, row) in expected.iter().enumerate() {
                assert_eq!(row.len(), k);
                for (j, e) in row.iter().enumerate() {
                    worst = worst.max((f64::from(got[i * k + j]) - e).abs());
                }
            }
            eprintln!(
                "{name} ({:?} engine): max |logit - onnxruntime| = {worst:.2e} over {n} images",
                exec.engine()
            );
            assert!(
                worst < 1e-4,
                "{name} ({engine:?}): logits differ from onnxruntime by {worst}"
            );
        }
    }
}

/// What the importer makes of the VGG and MobileNetV2 fixtures: the ops of issue 20, with
/// the dropout layers gone and ReLU6 as a clip whose input is a mask site.
#[test]
fn vgg_and_mobilenet_fixtures_import_as_expected() {
    let count =
        |m: &ModelIr, kind: &str| m.graph.nodes.iter().filter(|n| n.op.kind() == kind).count();
    let vgg = import_onnx(&fixture("vgg11_bn_w8.onnx"), &OnnxOptions::default()).expect("vgg");
    assert_eq!(
        [
            count(&vgg, "conv2d"),
            count(&vgg, "batchnorm2d"),
            count(&vgg, "maxpool2d"),
            count(&vgg, "linear")
        ],
        [8, 8, 5, 3]
    );
    assert_eq!(vgg.meta.class_names[0], "airplane");
    let mnv2 =
        import_onnx(&fixture("mobilenet_v2_w025.onnx"), &OnnxOptions::default()).expect("mnv2");
    let depthwise = mnv2
        .graph
        .nodes
        .iter()
        .filter(|n| matches!(&n.op, Op::Conv2d { groups, weight, .. } if *groups > 1 && weight.shape[1] == 1))
        .count();
    assert_eq!(
        depthwise, 17,
        "one depthwise convolution per inverted residual block"
    );
    // At width 0.25 every block whose stride is 1 has as many input as output channels
    // (torchvision rounds widths to multiples of 8), so 12 of the 17 blocks are residual.
    assert_eq!(count(&mnv2, "add"), 12, "residual connections");
    assert_eq!(
        count(&mnv2, "clip"),
        35,
        "ReLU6 after every expansion, depthwise and the last conv"
    );
    let sites = mnv2.graph.relu_inputs();
    assert_eq!(sites.len(), 35, "every ReLU6 input is a mask site");
    assert!(
        sites
            .iter()
            .all(|&s| matches!(mnv2.graph.nodes[s].op, Op::BatchNorm2d { .. }))
    );
}
