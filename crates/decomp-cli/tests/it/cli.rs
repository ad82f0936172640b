//! The `decomp` binary's contract: `eval --json` output and error messages.

use std::path::Path;
use std::process::Command;

use crate::support::{cifar_file, decomp};

/// An untrained 10-class ResNet-8 written as `dir/m.ir`.
fn model_file(dir: &Path) -> std::path::PathBuf {
    let model = decomp_model::ResNetConfig::new(8, 10)
        .build()
        .expect("build");
    let path = dir.join("m.ir");
    decomp_ir::write_artifact(&path, &model).expect("write model");
    path
}

#[test]
fn eval_json_and_pipeline_on_generated_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mpath = model_file(dir.path());
    let data = dir.path().join("records.bin");
    cifar_file(&data, 30);
    let m = mpath.to_str().expect("utf8");
    let (ok, stdout, stderr) = decomp(&[
        "eval",
        "--weights",
        m,
        "--dataset",
        "cifar10",
        "--data-dir",
        data.to_str().expect("utf8"),
        "--json",
    ]);
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
    let mpath = model_file(dir.path());
    // Missing dataset, downloads off: expected files, the official URL, how to download.
    let (ok, _, err) = decomp(&[
        "eval",
        "--offline",
        "--weights",
        mpath.to_str().expect("utf8"),
        "--data-dir",
        empty,
        "--split",
        "test",
    ]);
    assert!(!ok);
    assert!(
        err.contains("test_batch.bin")
            && err.contains("cs.toronto.edu")
            && err.contains("run without them to download"),
        "{err}"
    );
    // Unknown weights name.
    let (ok, _, err) = decomp(&["eval", "--weights", "nope/resnet7", "--data-dir", empty]);
    assert!(!ok);
    assert!(
        err.contains("nope/resnet7") && err.contains("akamaster/resnet20"),
        "{err}"
    );
    // A truncated record file.
    let bad = dir.path().join("bad.bin");
    std::fs::write(&bad, vec![1u8; 3073 + 100]).expect("write");
    let (ok, _, err) = decomp(&[
        "eval",
        "--weights",
        mpath.to_str().expect("utf8"),
        "--data-file",
        bad.to_str().expect("utf8"),
    ]);
    assert!(!ok);
    assert!(err.contains("bad.bin"), "{err}");
}

/// Stage by stage through the binary: concern -> tangle -> compose, each reading the
/// previous stage's files, and `decompose` giving the same modules in one go.
#[test]
fn stages_run_alone_on_previous_artifacts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let model = decomp_model::ResNetConfig::new(8, 10)
        .build()
        .expect("build");
    let m = d.join("m.ir");
    decomp_ir::write_artifact(&m, &model).expect("write model");
    let data = d.join("records.bin");
    cifar_file(&data, 40);
    let s = |p: &Path| p.to_str().expect("utf8").to_string();
    let common = [
        "--weights",
        &s(&m),
        "--data-file",
        &s(&data),
        "--batch-size",
        "8",
    ];
    let cfg = ["--positives", "3", "--positive-filter", "all"];

    let cs = d.join("c.cs");
    let mut args = vec!["concern"];
    args.extend(common);
    args.extend(cfg);
    args.extend(["--out", cs.to_str().expect("utf8")]);
    let (ok, _, err) = decomp(&args);
    assert!(ok, "{err}");

    let staged = d.join("staged");
    let mut args = vec![
        "tangle",
        "--concern",
        cs.to_str().expect("utf8"),
        "--variants",
        "mc-bln,ci-ti-mc",
    ];
    args.extend(common);
    args.extend(["--out-dir", staged.to_str().expect("utf8")]);
    let (ok, _, err) = decomp(&args);
    assert!(ok, "{err}");

    let one_go = d.join("one");
    let mut args = vec!["decompose", "--variants", "mc-bln"];
    args.extend(common);
    args.extend(cfg);
    args.extend(["--out-dir", one_go.to_str().expect("utf8")]);
    let (ok, _, err) = decomp(&args);
    assert!(ok, "{err}");
    for c in 0..10 {
        let name = format!("mc-bln/module_{c:03}.mod");
        let a: decomp_ir::ModuleIr =
            decomp_ir::read_artifact(&staged.join(&name)).expect("staged module");
        let b: decomp_ir::ModuleIr =
            decomp_ir::read_artifact(&one_go.join(&name)).expect("one-go module");
        assert_eq!(
            (a.masks, a.head, a.counts),
            (b.masks, b.head, b.counts),
            "class {c}"
        );
    }

    let mods: Vec<String> = (0..10)
        .map(|c| s(&staged.join(format!("mc-bln/module_{c:03}.mod"))))
        .collect();
    let mut args: Vec<&str> = vec!["compose"];
    args.extend(mods.iter().map(String::as_str));
    let data_s = s(&data);
    args.extend(["--data-file", &data_s, "--json"]);
    let (ok, out, err) = decomp(&args);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
    assert_eq!(v["n"], 40);
    assert_eq!(v["variant"], "mc-bln");
    for key in [
        "composed_top1",
        "composed_top5",
        "model_top1",
        "mean_module_size",
    ] {
        assert!(v[key].is_number(), "{key} missing: {v}");
    }

    // A concern set does not go with another model.
    let other = decomp_model::ResNetConfig::new(8, 10)
        .with_seed(1)
        .build()
        .expect("build");
    let m2 = d.join("m2.ir");
    decomp_ir::write_artifact(&m2, &other).expect("write");
    let (ok, _, err) = decomp(&[
        "tangle",
        "--concern",
        &s(&cs),
        "--weights",
        &s(&m2),
        "--data-file",
        &s(&data),
        "--out-dir",
        &s(&d.join("x")),
    ]);
    assert!(!ok);
    assert!(err.contains("concern set was computed for model"), "{err}");
}

/// `decomp eval` with everything pointing at an empty machine: no data folder named, no
/// `../shared`, an empty cache, and every download going to a loopback mirror that counts
/// connections.
fn fresh_machine(dir: &Path, mirror: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_decomp"))
        .args(args)
        .current_dir(dir)
        .env_remove("DECOMP_DATA_DIR")
        .env_remove("DECOMP_OFFLINE")
        .env("DECOMP_SHARED_DIR", dir.join("no-shared"))
        .env("DECOMP_CACHE_DIR", dir.join("cache"))
        .env("DECOMP_MIRROR", mirror)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run decomp");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn offline_errors_without_touching_the_network() {
    let dir = tempfile::tempdir().expect("tempdir");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let mirror = format!("http://{}", listener.local_addr().expect("addr"));
    let mpath = model_file(dir.path());
    let m = mpath.to_str().expect("utf8");
    for args in [
        vec!["--offline", "eval", "--weights", m],
        vec!["eval", "--weights", m, "--offline"],
    ] {
        let (ok, _, err) = fresh_machine(dir.path(), &mirror, &args);
        assert!(!ok);
        for part in [
            "cifar10 train and test split not found",
            "cifar-10-batches-bin",
            "cs.toronto.edu",
            "--data-dir",
            "downloads are off",
        ] {
            assert!(err.contains(part), "lacks {part:?}: {err}");
        }
        assert!(
            err.contains(&dir.path().join("cache/datasets").display().to_string()),
            "names where it would download: {err}"
        );
    }
    // DECOMP_OFFLINE=1 does the same, for weights too
    let out = Command::new(env!("CARGO_BIN_EXE_decomp"))
        .args(["eval", "--weights", "akamaster/resnet20"])
        .env("DECOMP_OFFLINE", "1")
        .env("DECOMP_CACHE_DIR", dir.path().join("cache"))
        .env("DECOMP_MIRROR", &mirror)
        .output()
        .expect("run decomp");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("resnet20-12fca82f.th")
            && err.contains("downloads are off"),
        "{err}"
    );
    // not one connection was made
    assert_eq!(
        listener.accept().map_err(|e| e.kind()).err(),
        Some(std::io::ErrorKind::WouldBlock)
    );
    assert!(
        !dir.path()
            .join("cache/datasets/cifar-10-batches-bin")
            .exists()
    );
}

#[test]
fn a_folder_named_with_dataset_path_gets_no_download_advice() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mpath = model_file(dir.path());
    let mine = dir.path().join("my-cifar");
    // (--download is still accepted from old scripts, and changes nothing)
    let (ok, _, err) = fresh_machine(
        dir.path(),
        "http://127.0.0.1:9",
        &[
            "eval",
            "--weights",
            mpath.to_str().expect("utf8"),
            "--dataset-path",
            mine.to_str().expect("utf8"),
            "--download",
        ],
    );
    assert!(!ok);
    assert!(
        err.contains("my-cifar") && err.contains("test_batch.bin"),
        "{err}"
    );
    assert!(
        !err.contains("--download")
            && !err.contains("downloads are off")
            && !err.contains("cannot download"),
        "{err}"
    );
}
