//! The zoo's committed models (issue 15) reproduce the check the zoo experiment recorded
//! beside each (`models/zoo/<run>.check.json`): the model file is the one checksummed, and
//! decomposing its first classes with few positives and composing them on the first test
//! images gives the composed accuracy the experiment measured.

use std::path::{Path, PathBuf};

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::support::{decomp, s};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The shared data folder (`$DECOMP_SHARED_DIR/datasets`, else `../shared/datasets` beside
/// the workspace), if present.
fn datasets() -> Option<PathBuf> {
    let shared = std::env::var_os("DECOMP_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("../shared"));
    let d = shared.join("datasets");
    d.is_dir().then_some(d)
}

#[test]
fn zoo_models_reproduce_their_committed_check() {
    let zoo = workspace().join("models/zoo");
    let mut checks: Vec<PathBuf> = std::fs::read_dir(&zoo)
        .expect("models/zoo")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with(".check.json"))
        .collect();
    checks.sort();
    assert!(!checks.is_empty(), "no models/zoo/*.check.json");
    let Some(datasets) = datasets() else {
        eprintln!("skipping: no shared data folder (set DECOMP_SHARED_DIR)");
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut ran = 0;
    for check in &checks {
        let c: Value =
            serde_json::from_str(&std::fs::read_to_string(check).expect("read")).expect("json");
        let field = |k: &str| {
            c[k].as_str()
                .unwrap_or_else(|| panic!("{k} in {}", check.display()))
        };
        let model = zoo.join(field("model"));
        let bytes = std::fs::read(&model).expect("the checked model");
        let hex: String = Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(hex, field("sha256"), "{}", model.display());
        let mut data = vec!["--dataset".to_string(), field("dataset").to_string()];
        match c["dataset_path"].as_str() {
            Some(p) => {
                let folder = datasets.join(p);
                if !folder.is_dir() {
                    eprintln!(
                        "skipping {}: {} not found",
                        check.display(),
                        folder.display()
                    );
                    continue;
                }
                data.extend(["--dataset-path".into(), folder.display().to_string()]);
            }
            None => data.extend(["--data-dir".into(), datasets.display().to_string()]),
        }
        let num = |k: &str| c[k].as_u64().unwrap_or_else(|| panic!("{k}")) as usize;
        let classes: Vec<usize> = c["classes"]
            .as_array()
            .expect("classes")
            .iter()
            .map(|v| v.as_u64().expect("class") as usize)
            .collect();
        let variant = field("variant");
        let out = tmp.path().join(field("model"));
        let list = classes
            .iter()
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let positives = num("positives").to_string();
        let mut args: Vec<&str> = vec!["decompose", "--weights", s(&model)];
        args.extend(data.iter().map(String::as_str));
        args.extend([
            "--classes",
            &list,
            "--variants",
            variant,
            "--positives",
            &positives,
        ]);
        let extra: Vec<&str> = c["args"]
            .as_array()
            .expect("args")
            .iter()
            .map(|a| a.as_str().expect("a flag"))
            .collect();
        args.extend(extra);
        args.extend(["--out-dir", s(&out)]);
        let (ok, _, err) = decomp(&args);
        assert!(ok, "decompose {}: {err}", model.display());
        let modules: Vec<PathBuf> = classes
            .iter()
            .map(|c| out.join(variant).join(format!("module_{c:03}.mod")))
            .collect();
        let composed = out.join("compose.json");
        let limit = num("limit").to_string();
        let mut args: Vec<&str> = vec!["compose"];
        args.extend(modules.iter().map(|m| s(m)));
        args.extend(data.iter().map(String::as_str));
        args.extend(["--split", "test", "--limit", &limit, "--out", s(&composed)]);
        let (ok, _, err) = decomp(&args);
        assert!(ok, "compose {}: {err}", model.display());
        let got: Value =
            serde_json::from_str(&std::fs::read_to_string(&composed).expect("read")).expect("json");
        let n = num("images");
        assert_eq!(got["n"].as_u64(), Some(n as u64), "{}", check.display());
        // One image of slack: another CPU's SIMD width may round a margin differently.
        for k in ["composed_top1", "composed_top5"] {
            let (want, have) = (c[k].as_f64().expect(k), got[k].as_f64().expect(k));
            assert!(
                (want - have).abs() <= 100.0 / n as f64 + 1e-9,
                "{}: {k} {have}, the zoo experiment measured {want}",
                check.display()
            );
        }
        ran += 1;
    }
    eprintln!("{ran} of {} zoo checks ran", checks.len());
}
