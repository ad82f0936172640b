//! Real pretrained checkpoints from `../shared` (skipped with a message when absent).

use decomp_data::{Dataset, DatasetKind, Normalization};
use decomp_eval::Accumulator;
use decomp_model::import::{StateDict, akamaster_norm, import_resnet};
use decomp_model::{Device, Executor, ResNetConfig, to_vec};

use crate::shared_dir;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/fixtures");

fn lossless(shared: &std::path::Path) -> Dataset {
    let file = shared.join("datasets/cifar-10-train-first4000-lossless/train_first4000.bin");
    let n = akamaster_norm();
    Dataset::from_cifar_file(DatasetKind::Cifar10, &file)
        .expect("lossless file")
        .with_normalization(Normalization::new(&n.mean, &n.std))
}

/// Logits agree to 1e-4 with `scripts/reference_resnet.py` (numpy, float64, its own
/// checkpoint reader) on the first images of the lossless file.
#[test]
fn logits_match_numpy_reference() {
    let Some(shared) = shared_dir() else { return };
    for (fixture, ckpt) in [
        ("resnet20_first32_logits.json", "resnet20-12fca82f.th"),
        ("resnet56_first8_logits.json", "resnet56-4bfd9763.th"),
    ] {
        let text = std::fs::read_to_string(format!("{FIXTURES}/{fixture}")).expect("fixture");
        let v: serde_json::Value = serde_json::from_str(&text).expect("json");
        let expected: Vec<Vec<f64>> = serde_json::from_value(v["logits"].clone()).expect("logits");
        let model = import_resnet(
            &shared.join("models/cifar10").join(ckpt),
            None,
            akamaster_norm(),
            None,
        )
        .expect("import");
        let device = Device::flex();
        let exec = Executor::new(&model, &device).expect("executor");
        let batch = lossless(&shared).batch(0..expected.len()).expect("batch");
        let x = exec
            .input_tensor(batch.images, expected.len())
            .expect("input");
        let got = to_vec(exec.forward(x).expect("forward"));
        let mut worst = 0.0f64;
        for (i, row) in expected.iter().enumerate() {
            for (j, e) in row.iter().enumerate() {
                worst = worst.max((got[i * 10 + j] as f64 - e).abs());
            }
        }
        eprintln!("{ckpt}: max |logit - numpy reference| = {worst:.2e}");
        assert!(
            worst < 1e-4,
            "{ckpt}: logits differ from the numpy reference by {worst}"
        );
    }
}

/// The pretrained ResNet-20 recognizes the training images it was trained on.
#[test]
fn resnet20_on_lossless_training_images() {
    let Some(shared) = shared_dir() else { return };
    let model = import_resnet(
        &shared.join("models/cifar10/resnet20-12fca82f.th"),
        Some(&ResNetConfig::new(20, 10)),
        akamaster_norm(),
        None,
    )
    .expect("import");
    assert_eq!(model.graph.num_params(), 269_722);
    let exec = Executor::new(&model, &Device::flex()).expect("executor");
    let ds = lossless(&shared);
    let mut acc = Accumulator::new(10);
    for b in ds.batches(200) {
        let b = b.expect("batch");
        let n = b.labels.len();
        let logits = to_vec(
            exec.forward(exec.input_tensor(b.images, n).expect("input"))
                .expect("forward"),
        );
        acc.add(&logits, &b.labels).expect("metrics");
    }
    let r = acc.finish();
    eprintln!(
        "resnet20 on 4000 lossless training images: top-1 {:.2}% top-5 {:.2}%",
        r.top1, r.top5
    );
    assert_eq!(r.n, 4000);
    assert!(r.top1 >= 99.5, "top-1 {}", r.top1);
}

/// Importing with the wrong architecture lists what is missing and what is extra.
#[test]
fn wrong_architecture_lists_mismatches() {
    let Some(shared) = shared_dir() else { return };
    let path = shared.join("models/cifar10/resnet20-12fca82f.th");
    let err = import_resnet(
        &path,
        Some(&ResNetConfig::new(32, 10)),
        akamaster_norm(),
        None,
    )
    .expect_err("resnet20 weights are not a resnet32")
    .to_string();
    assert!(err.contains("missing from the checkpoint (60)"), "{err}");
    assert!(
        err.contains("layer1.3.conv1.weight [16, 16, 3, 3]"),
        "{err}"
    );
    let err = import_resnet(
        &path,
        Some(&ResNetConfig::new(20, 100)),
        akamaster_norm(),
        None,
    )
    .expect_err("wrong class count")
    .to_string();
    assert!(
        err.contains("linear.weight: checkpoint [10, 64], model [100, 64]"),
        "{err}"
    );
    let sd = StateDict::read(&path).expect("read");
    let cfg = sd.detect_resnet().expect("detected");
    assert_eq!((cfg.depth, cfg.num_classes, cfg.batch_norm), (20, 10, true));
}

#[test]
fn unreadable_checkpoint_names_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("junk.th");
    std::fs::write(&path, b"definitely not a checkpoint").expect("write");
    let err = StateDict::read(&path).err().expect("junk").to_string();
    assert!(err.contains("junk.th"), "{err}");
    let err = StateDict::read(&dir.path().join("none.th"))
        .err()
        .expect("missing")
        .to_string();
    assert!(
        err.contains("none.th") && err.contains("no such file"),
        "{err}"
    );
}
