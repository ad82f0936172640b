//! Reuse/replace plumbing: `compose --save-margins` + `vote` agree with `compose` on a
//! subset, `mix` writes a small CIFAR-format dataset, and continuous learning (`tangle
//! --extra-unconcerned`) only brings positions back.

use std::path::Path;
use std::process::Command;

fn decomp(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_decomp"))
        .args(args)
        .env("RUST_LOG", "error")
        .output()
        .expect("run decomp");
    assert!(
        out.status.success(),
        "decomp {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf8 path")
}

/// CIFAR-10 records, label `i % 10`, pixels from the index.
fn records(n: usize, salt: usize) -> Vec<u8> {
    let mut b = Vec::new();
    for i in 0..n {
        b.push((i % 10) as u8);
        b.extend((0..3072).map(|p| ((p * (i % 10 + 3) + i * 13 + salt) % 256) as u8));
    }
    b
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text.trim()).expect("one JSON object")
}

#[test]
fn vote_on_saved_margins_equals_compose_on_the_subset() {
    let t = tempfile::tempdir().expect("tempdir");
    let d = t.path();
    let m = d.join("m.ir");
    decomp(&[
        "new-model",
        "--arch",
        "resnet8",
        "--seed",
        "3",
        "--out",
        s(&m),
    ]);
    let data = d.join("records.bin");
    std::fs::write(&data, records(60, 0)).expect("write");
    let mods = d.join("mods");
    decomp(&[
        "decompose",
        "--weights",
        s(&m),
        "--data-file",
        s(&data),
        "--positives",
        "3",
        "--positive-filter",
        "all",
        "--out-dir",
        s(&mods),
    ]);
    let paths: Vec<String> = (0..10)
        .map(|c| {
            mods.join(format!("mc-bln/module_{c:03}.mod"))
                .display()
                .to_string()
        })
        .collect();
    let margins = d.join("margins.json");
    let mut args: Vec<&str> = vec!["compose"];
    args.extend(paths.iter().map(String::as_str));
    args.extend([
        "--data-file",
        s(&data),
        "--save-margins",
        s(&margins),
        "--json",
    ]);
    let all = json(&decomp(&args));
    // All ten modules, from the margins.
    let v = json(&decomp(&[
        "vote",
        "--margins",
        s(&margins),
        "--pick",
        "0:0,0:1,0:2,0:3,0:4,0:5,0:6,0:7,0:8,0:9",
        "--json",
    ]));
    assert_eq!(
        (v["n"].clone(), v["top1"].clone(), v["top5"].clone()),
        (
            all["n"].clone(),
            all["composed_top1"].clone(),
            all["composed_top5"].clone()
        )
    );
    // A pair, composed for real on its images and voted from the margins.
    let pair = json(&decomp(&[
        "compose",
        &paths[2],
        &paths[7],
        "--data-file",
        s(&data),
        "--classes",
        "2,7",
        "--json",
    ]));
    let v = json(&decomp(&[
        "vote",
        "--margins",
        s(&margins),
        "--pick",
        "0:2,0:7",
        "--json",
    ]));
    assert_eq!(v["n"], 12);
    assert_eq!(
        (v["n"].clone(), v["top1"].clone(), v["per_class"].clone()),
        (
            pair["n"].clone(),
            pair["composed_top1"].clone(),
            pair["composed_per_class"].clone()
        )
    );
    // A scaled module: margins set here so that module 2 loses every image at its own
    // scale (1 against 2 or 2.5) and wins every image at three times it (3 against 2 or 2.5).
    let mut saved = json(&std::fs::read_to_string(&margins).expect("margins"));
    let labels: Vec<u64> = saved["labels"]
        .as_array()
        .expect("labels")
        .iter()
        .map(|l| l.as_u64().expect("label"))
        .collect();
    for (row, l) in saved["margins"]
        .as_array_mut()
        .expect("margins")
        .iter_mut()
        .zip(&labels)
    {
        row[2] = serde_json::json!(1.0);
        row[7] = serde_json::json!(if *l == 2 { 2.0 } else { 2.5 });
    }
    let crafted = d.join("crafted.json");
    std::fs::write(&crafted, saved.to_string()).expect("write");
    let per_class = |pick: &str| {
        let v = json(&decomp(&[
            "vote",
            "--margins",
            s(&crafted),
            "--pick",
            pick,
            "--json",
        ]));
        v["per_class"].clone()
    };
    assert_eq!(per_class("0:2,0:7"), serde_json::json!([0.0, 100.0]));
    assert_eq!(per_class("0:2*3,0:7"), serde_json::json!([100.0, 0.0]));
    // Bad picks name the problem.
    for (pick, needle) in [
        ("0:2,1:7", "file index 1"),
        ("0:2*0,0:7", "expected a finite number > 0"),
        ("0:2*x,0:7", "scale \"x\" is not a number"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_decomp"))
            .args(["vote", "--margins", s(&margins), "--pick", pick])
            .output()
            .expect("run");
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{pick}: {err}");
    }
}

#[test]
fn mix_and_continuous_learning() {
    let t = tempfile::tempdir().expect("tempdir");
    let d = t.path();
    let folder = d.join("cifar-10-batches-bin");
    std::fs::create_dir_all(&folder).expect("mkdir");
    for f in 1..=5 {
        std::fs::write(folder.join(format!("data_batch_{f}.bin")), records(20, f)).expect("write");
    }
    std::fs::write(folder.join("test_batch.bin"), records(30, 9)).expect("write");
    std::fs::write(
        folder.join("batches.meta.txt"),
        "airplane\nautomobile\nbird\ncat\ndeer\ndog\nfrog\nhorse\nship\ntruck\n",
    )
    .expect("write");
    let spec = d.join("spec.json");
    let dir = d.to_str().expect("utf8");
    std::fs::write(&spec, format!(r#"{{"parts": [{{"dataset": "cifar10", "data_dir": "{dir}", "class": 3}}, {{"dataset": "cifar10", "data_dir": "{dir}", "class": 8}}]}}"#)).expect("write");
    let mixed = d.join("mixed");
    decomp(&["mix", "--spec", s(&spec), "--out-dir", s(&mixed)]);
    // 10 training images of each class (2 per file), 3 test images each; labels 0 and 1.
    let train = std::fs::read(mixed.join("train.bin")).expect("train.bin");
    assert_eq!(train.len(), 20 * 3073);
    assert_eq!(
        train.chunks(3073).map(|r| r[0]).collect::<Vec<_>>(),
        [vec![0u8; 10], vec![1u8; 10]].concat()
    );
    assert_eq!(
        std::fs::read_to_string(mixed.join("batches.meta.txt")).expect("names"),
        "cat\nship\n"
    );
    // The first mixed image is the first cat of the training files, byte for byte.
    let first_cat = records(20, 1)
        .chunks(3073)
        .find(|r| r[0] == 3)
        .expect("a cat")
        .to_vec();
    assert_eq!(&train[1..3073], &first_cat[1..]);
    // A 2-class model evaluates on the mixed test records.
    let m2 = d.join("m2.ir");
    decomp(&[
        "new-model",
        "--arch",
        "resnet8",
        "--classes",
        "2",
        "--out",
        s(&m2),
    ]);
    let e = json(&decomp(&[
        "eval",
        "--weights",
        s(&m2),
        "--data-file",
        s(&mixed.join("test.bin")),
        "--json",
    ]));
    assert_eq!(e["n"], 6);

    // Continuous learning on a 10-class model: extra unconcerned images only bring positions back.
    let m = d.join("m.ir");
    decomp(&[
        "new-model",
        "--arch",
        "resnet8",
        "--seed",
        "4",
        "--out",
        s(&m),
    ]);
    let cs = d.join("c.cs");
    let common = [
        "--weights",
        s(&m),
        "--dataset",
        "cifar10",
        "--data-dir",
        dir,
    ];
    let mut a = vec![
        "concern",
        "--classes",
        "1",
        "--positives",
        "4",
        "--positive-filter",
        "all",
        "--out",
        s(&cs),
    ];
    a.extend(common);
    decomp(&a);
    let (plain, learned) = (d.join("plain"), d.join("learned"));
    let mut a = vec!["tangle", "--concern", s(&cs), "--out-dir", s(&plain)];
    a.extend(common);
    decomp(&a);
    let extra = mixed.join("train.bin");
    let mut a = vec![
        "tangle",
        "--concern",
        s(&cs),
        "--out-dir",
        s(&learned),
        "--extra-unconcerned",
        s(&extra),
        "--extra-classes",
        "1",
    ];
    a.extend(common);
    decomp(&a);
    let p: decomp_ir::ModuleIr =
        decomp_ir::read_artifact(&plain.join("mc-bln/module_001.mod")).expect("plain module");
    let l: decomp_ir::ModuleIr =
        decomp_ir::read_artifact(&learned.join("mc-bln/module_001.mod")).expect("learned module");
    assert_eq!(l.counts.unconcerned, p.counts.unconcerned + 10);
    assert!(
        l.provenance.contains("continuous learning"),
        "{}",
        l.provenance
    );
    for (a, b) in p.masks.iter().zip(&l.masks) {
        assert_eq!(a.node, b.node);
        let mut inter = a.zeroed.clone();
        inter.intersect_with(&b.zeroed);
        assert_eq!(
            inter, b.zeroed,
            "node {}: continuous learning masked a position plain tangling kept",
            a.node
        );
    }
}
