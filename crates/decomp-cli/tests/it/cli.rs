//! The `decomp` binary's contract: `eval --json` output and error messages.

use std::path::Path;
use std::process::Command;

fn decomp(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_decomp")).args(args).env("RUST_LOG", "warn").output().expect("run decomp");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

/// Writes `n` CIFAR-10 records (label i % 10, pixels from i).
fn cifar_file(path: &Path, n: usize) {
    let mut bytes = Vec::with_capacity(n * 3073);
    for i in 0..n {
        bytes.push((i % 10) as u8);
        bytes.extend((0..3072).map(|p| ((p * 7 + i * 13) % 256) as u8));
    }
    std::fs::write(path, bytes).expect("write records");
}

#[test]
fn eval_json_and_pipeline_on_generated_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = decomp_model::ResNetConfig::new(8, 10).build().expect("build");
    let mpath = dir.path().join("m.ir");
    decomp_ir::write_artifact(&mpath, &model).expect("write model");
    let data = dir.path().join("records.bin");
    cifar_file(&data, 30);
    let m = mpath.to_str().expect("utf8");
    let (ok, stdout, stderr) = decomp(&["eval", "--weights", m, "--dataset", "cifar10", "--data-dir", data.to_str().expect("utf8"), "--json"]);
    assert!(ok, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
    assert_eq!(v["n"], 30);
    for key in ["top1", "top5"] {
        let x = v[key].as_f64().expect(key);
        assert!((0.0..=100.0).contains(&x));
    }
    assert_eq!(v["per_class"].as_array().expect("per_class").len(), 10);
}

#[test]
fn errors_name_the_culprit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let empty = dir.path().to_str().expect("utf8");
    let model = decomp_model::ResNetConfig::new(8, 10).build().expect("build");
    let mpath = dir.path().join("m.ir");
    decomp_ir::write_artifact(&mpath, &model).expect("write model");
    // Missing dataset: expected files, the official URL and --download.
    let (ok, _, err) = decomp(&["eval", "--weights", mpath.to_str().expect("utf8"), "--data-dir", empty, "--split", "test"]);
    assert!(!ok);
    assert!(err.contains("test_batch.bin") && err.contains("cs.toronto.edu") && err.contains("--download"), "{err}");
    // Unknown weights name.
    let (ok, _, err) = decomp(&["eval", "--weights", "nope/resnet7", "--data-dir", empty]);
    assert!(!ok);
    assert!(err.contains("nope/resnet7") && err.contains("akamaster/resnet20"), "{err}");
    // A truncated record file.
    let bad = dir.path().join("bad.bin");
    std::fs::write(&bad, vec![1u8; 3073 + 100]).expect("write");
    let (ok, _, err) = decomp(&["eval", "--weights", mpath.to_str().expect("utf8"), "--data-file", bad.to_str().expect("utf8")]);
    assert!(!ok);
    assert!(err.contains("bad.bin"), "{err}");
}
