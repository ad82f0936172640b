//! `decomp train` through the binary: a run killed mid-epoch and resumed ends exactly where
//! an uninterrupted run ends; errors name the culprit.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// Writes `n` CIFAR-10 records of two classes (labels 0 and 1) whose pixels tell them apart
/// (class 0 dark at the top, class 1 dark at the bottom) with per-image noise.
pub(crate) fn two_class_records(path: &Path, n: usize) {
    let mut bytes = Vec::with_capacity(n * 3073);
    for i in 0..n {
        let label = (i % 2) as u8;
        bytes.push(label);
        for p in 0..3072 {
            let row = (p % 1024) / 32;
            let dark = (row < 16) == (label == 0);
            let noise = ((p * 31 + i * 17) % 61) as u8;
            bytes.push(if dark { 40 + noise } else { 150 + noise });
        }
    }
    std::fs::write(path, bytes).expect("write records");
}

fn train_args<'a>(data: &'a str, out: &'a str) -> Vec<&'a str> {
    vec![
        "train",
        "--arch",
        "resnet8",
        "--data-file",
        data,
        "--classes",
        "0,1",
        "--recipe",
        "he2016",
        "--epochs",
        "3",
        "--batch-size",
        "16",
        "--seed",
        "3",
        "--out-dir",
        out,
    ]
}

fn run(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_decomp"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run decomp");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// metrics.json without the wall-clock fields.
fn arithmetic(dir: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(dir.join("metrics.json")).expect("metrics.json");
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    v["epochs"]
        .as_array()
        .expect("epochs")
        .iter()
        .map(|e| {
            let mut e = e.clone();
            for k in ["wall_s", "images_per_s", "energy_j"] {
                e.as_object_mut().expect("row").remove(k);
            }
            e
        })
        .collect()
}

#[test]
fn killed_run_resumes_to_the_same_result() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let data = d.join("records.bin");
    two_class_records(&data, 480);
    let s = |p: &Path| p.to_str().expect("utf8").to_string();
    let (data_s, straight, killed) = (s(&data), d.join("straight"), d.join("killed"));

    let (ok, err) = run(&train_args(&data_s, &s(&straight)));
    assert!(ok, "{err}");

    // Start the same run, kill it as soon as epoch 1's checkpoint exists (mid-epoch 2).
    let killed_s = s(&killed);
    let mut child = Command::new(env!("CARGO_BIN_EXE_decomp"))
        .args(train_args(&data_s, &killed_s))
        .env("RUST_LOG", "warn")
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let start = Instant::now();
    while !killed.join("last.ckpt").exists() {
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "no checkpoint after 300 s"
        );
        assert!(
            child.try_wait().expect("poll").is_none(),
            "the run ended before its first checkpoint"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().expect("kill");
    child.wait().expect("reap");
    let ckpt: decomp_model::train::TrainCheckpoint =
        decomp_ir::read_artifact(&killed.join("last.ckpt")).expect("checkpoint");
    assert!(
        ckpt.epochs_done < 3,
        "killed after the run finished; the test needs a longer epoch"
    );

    // Without --resume the run directory is not overwritten.
    let (ok, err) = run(&train_args(&data_s, &killed_s));
    assert!(!ok && err.contains("--resume"), "{err}");

    let mut args = train_args(&data_s, &killed_s);
    args.push("--resume");
    let (ok, err) = run(&args);
    assert!(ok, "{err}");

    assert_eq!(arithmetic(&killed), arithmetic(&straight));
    assert_eq!(arithmetic(&straight).len(), 3);
    let a: decomp_ir::ModelIr = decomp_ir::read_artifact(&straight.join("best.ir")).expect("best");
    let b: decomp_ir::ModelIr = decomp_ir::read_artifact(&killed.join("best.ir")).expect("best");
    assert_eq!(a.graph, b.graph);
    for f in ["metrics.csv", "curves.svg", "last.ckpt"] {
        assert!(killed.join(f).is_file(), "{f}");
    }
    // The trained model learned the (easy) task.
    let v: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(straight.join("metrics.json")).expect("read"),
    )
    .expect("json");
    assert!(v["best_val_acc"].as_f64().expect("best") > 0.9, "{v}");
}

#[test]
fn train_errors_name_the_culprit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let data = d.join("records.bin");
    two_class_records(&data, 20);
    let data_s = data.to_str().expect("utf8");
    let out = d.join("run");
    let out_s = out.to_str().expect("utf8");
    let cases: [(Vec<&str>, &str); 6] = [
        (vec!["--recipe", "nope"], "no recipe named \"nope\""),
        (
            vec!["--batch-size", "1000"],
            "batch size 1000 is larger than the training split",
        ),
        (vec!["--classes", "0,zebra"], "no class named \"zebra\""),
        (vec!["--val-fraction", "1.5"], "--val-fraction"),
        (vec!["--lr=-1"], "lr"),
        (vec!["--resume"], "last.ckpt"),
    ];
    for (extra, needle) in cases {
        let mut args = vec![
            "train",
            "--arch",
            "resnet8",
            "--data-file",
            data_s,
            "--epochs",
            "1",
            "--out-dir",
            out_s,
        ];
        args.extend(extra);
        let (ok, err) = run(&args);
        assert!(!ok && err.contains(needle), "{needle}: {err}");
    }
    // A bad recipes file names itself.
    let recipes = d.join("r.toml");
    std::fs::write(&recipes, "[recipes.x]\noptimizer = \"sgd\"\n").expect("write");
    let (ok, err) = run(&[
        "train",
        "--data-file",
        data_s,
        "--recipes",
        recipes.to_str().expect("utf8"),
        "--recipe",
        "x",
        "--out-dir",
        out_s,
    ]);
    assert!(!ok && err.contains("r.toml"), "{err}");
    // --init with another class count.
    let m = d.join("m.ir");
    decomp_ir::write_artifact(
        &m,
        &decomp_model::ResNetConfig::new(8, 10)
            .build()
            .expect("build"),
    )
    .expect("write");
    let (ok, err) = run(&[
        "train",
        "--init",
        m.to_str().expect("utf8"),
        "--data-file",
        data_s,
        "--classes",
        "0,1",
        "--out-dir",
        out_s,
    ]);
    assert!(
        !ok && err.contains("predicts 10 classes") && err.contains("--new-head"),
        "{err}"
    );
    // With --new-head the classifier is replaced for the data's two classes (the rest
    // starts from m's weights).
    let new = d.join("new-head");
    let (ok, err) = run(&[
        "train",
        "--init",
        m.to_str().expect("utf8"),
        "--new-head",
        "--data-file",
        data_s,
        "--classes",
        "0,1",
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--out-dir",
        new.to_str().expect("utf8"),
    ]);
    assert!(ok, "{err}");
    let best: decomp_ir::ModelIr = decomp_ir::read_artifact(&new.join("best.ir")).expect("best");
    assert_eq!(best.num_classes(), 2);
    assert_eq!(best.meta.class_names, ["class_0", "class_1"]);
    // --new-head needs --init.
    let (ok, err) = run(&[
        "train",
        "--new-head",
        "--data-file",
        data_s,
        "--out-dir",
        out_s,
    ]);
    assert!(!ok && err.contains("--init"), "{err}");
}

/// A model trained on some of a dataset's classes is evaluated on their images (by its class
/// names), with its confusion matrix, without `--classes`: the images of other classes are
/// left out instead of being refused ("the model predicts 2 classes").
#[test]
fn a_subset_model_evaluates_on_its_own_classes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    // Labels 3 and 5 told apart by their pixels, plus 10 records of class 7 (a file without
    // class names: its classes are `class_<label>`).
    let two = d.join("two.bin");
    two_class_records(&two, 60);
    let mut bytes = std::fs::read(&two).expect("read");
    for rec in bytes.chunks_exact_mut(3073) {
        rec[0] = if rec[0] == 0 { 3 } else { 5 };
    }
    let mut horse = bytes[..3073].to_vec();
    horse[0] = 7;
    for _ in 0..10 {
        bytes.extend_from_slice(&horse);
    }
    let data = d.join("data.bin");
    std::fs::write(&data, &bytes).expect("write");
    let out = d.join("run");
    let mut args = train_args(data.to_str().expect("utf-8"), out.to_str().expect("utf-8"));
    let at = args.iter().position(|a| *a == "0,1").expect("--classes");
    args[at] = "3,5";
    let at = args.iter().position(|a| *a == "3").expect("--epochs 3");
    args[at] = "1";
    let (ok, err) = run(&args);
    assert!(ok, "{err}");
    let best = out.join("best.ir");
    let res = Command::new(env!("CARGO_BIN_EXE_decomp"))
        .args([
            "eval",
            "--weights",
            best.to_str().expect("utf-8"),
            "--data-file",
        ])
        .arg(&data)
        .arg("--json")
        .env("RUST_LOG", "warn")
        .output()
        .expect("run decomp");
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&res.stdout).expect("json");
    assert_eq!(v["n"], 60, "{v}");
    assert_eq!(
        v["class_names"],
        serde_json::json!(["class_3", "class_5"]),
        "{v}"
    );
    let m = v["confusion"].as_array().expect("confusion matrix");
    assert_eq!(m.len(), 2, "{v}");
    let total: u64 = m
        .iter()
        .flat_map(|r| r.as_array().expect("row"))
        .map(|x| x.as_u64().expect("count"))
        .sum();
    assert_eq!(total, 60, "{v}");
}
