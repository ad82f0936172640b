//! Models no one here wrote, brought as ONNX (issue 20): the committed VGG-11-BN and
//! MobileNetV2 fixtures (`decomp-model/tests/fixtures/onnx`, trained briefly on CIFAR-10 by
//! `scripts/export_onnx.py`) through import, eval, decompose and compose, the soundness of
//! their mask sites, and the channel path's refusal.

use std::path::{Path, PathBuf};

use decomp_data::Dataset;
use decomp_ir::{DecompConfig, ModelIr, PositiveFilter};
use decomp_model::onnx::{OnnxOptions, import_onnx};
use decomp_model::{Device, Engine, Executor, Probe, to_vec};

use crate::support::{cifar_file, decomp, s};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../decomp-model/tests/fixtures/onnx")
        .join(name)
}

/// `import --onnx`, then `eval`, `decompose` (all three variants) and `compose` on the
/// ONNX file itself (`--weights x.onnx`), for both architectures.
#[test]
fn onnx_models_import_decompose_and_compose() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let data = d.join("records.bin");
    cifar_file(&data, 30);
    for name in ["vgg11_bn_w8", "mobilenet_v2_w025"] {
        let onnx = fixture(&format!("{name}.onnx"));
        let ir = d.join(format!("{name}.ir"));
        let (ok, out, err) = decomp(&["import", "--onnx", s(&onnx), "--out", s(&ir)]);
        assert!(ok, "{name}: {err}");
        assert!(out.contains("parameters"), "{out}");
        let model: ModelIr = decomp_ir::read_artifact(&ir).expect("imported model");
        assert_eq!(
            model.meta.class_names[3], "cat",
            "class names from the ONNX metadata"
        );

        let (ok, out, err) = decomp(&[
            "eval",
            "--weights",
            s(&onnx),
            "--data-file",
            s(&data),
            "--json",
        ]);
        assert!(ok, "{name}: {err}");
        let v: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
        assert!(v["top1"].is_number(), "{v}");

        let run = d.join(name);
        let (ok, _, err) = decomp(&[
            "decompose",
            "--weights",
            s(&onnx),
            "--data-file",
            s(&data),
            "--positives",
            "3",
            "--positive-filter",
            "all",
            "--variants",
            "ci-ti-mc,mc-bln,mc-bln-bi",
            "--batch-size",
            "8",
            "--out-dir",
            s(&run),
        ]);
        assert!(ok, "{name}: {err}");
        for variant in ["ci-ti-mc", "mc-bln", "mc-bln-bi"] {
            let mods: Vec<String> = (0..10)
                .map(|c| s(&run.join(format!("{variant}/module_{c:03}.mod"))).to_string())
                .collect();
            let mut args: Vec<&str> = vec!["compose"];
            args.extend(mods.iter().map(String::as_str));
            args.extend(["--data-file", s(&data), "--json"]);
            let (ok, out, err) = decomp(&args);
            assert!(ok, "{name} {variant}: {err}");
            let v: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
            assert_eq!(v["n"], 30);
            for key in [
                "composed_top1",
                "composed_top5",
                "model_top1",
                "mean_module_size",
            ] {
                assert!(v[key].is_number(), "{name} {variant}: {key} missing: {v}");
            }
        }
    }
}

/// Masks recorded at the rectifier inputs (ReLU in VGG, ReLU6 in MobileNetV2, whose
/// depthwise blocks and linear projections have no site of their own) change nothing on
/// the images they were recorded on: every masked position is `<= 0` there, and a rectifier
/// gives 0 for 0 and for any value `<= 0`. So a class's concern masks reproduce the model's
/// logits exactly on its positives, on both engines.
#[test]
fn concern_masks_are_exact_on_their_positives() {
    for name in ["vgg11_bn_w8", "mobilenet_v2_w025"] {
        let model = import_onnx(&fixture(&format!("{name}.onnx")), &OnnxOptions::default())
            .expect("import");
        let data = Dataset::synthetic(10, 6, [3, 32, 32], 3);
        let cfg = DecompConfig {
            positives_per_class: 4,
            positive_filter: PositiveFilter::All,
            ..DecompConfig::default()
        };
        for engine in [Engine::Auto, Engine::Burn] {
            let exec = Executor::with_engine(&model, &Device::flex(), engine).expect("executor");
            let (sites, concerns) =
                decomp_concern::identify(&exec, &model, &data, &cfg, &[2, 7], 8, &mut |_, _| {})
                    .expect("concern");
            assert_eq!(sites, model.graph.relu_inputs());
            for c in &concerns {
                let masked: usize = c.inactive.masks.iter().map(|m| m.zeroed.count_ones()).sum();
                assert!(masked > 0, "{name}: class {} masks nothing", c.class);
                let b = data
                    .select(&c.positives)
                    .expect("view")
                    .batch(0..c.positives.len())
                    .expect("batch");
                let x = exec
                    .input_tensor(b.images, c.positives.len())
                    .expect("input");
                let plain = to_vec(exec.forward(x.clone()).expect("forward"));
                let m = exec.compile_masks(&c.inactive.masks).expect("masks");
                let out = exec
                    .forward_probe(
                        x,
                        &Probe {
                            capture: &[],
                            masks: Some(&m),
                        },
                    )
                    .expect("masked");
                assert_eq!(
                    to_vec(out.logits),
                    plain,
                    "{name} ({engine:?}): class {}",
                    c.class
                );
            }
        }
    }
}

/// The channel path says why it cannot prune these graphs instead of guessing.
#[test]
fn channel_granularity_refuses_with_the_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("records.bin");
    cifar_file(&data, 20);
    for (name, reason) in [
        ("vgg11_bn_w8", "hidden dense layers are not supported"),
        ("mobilenet_v2_w025", "clip (ReLU6) sites are not supported"),
    ] {
        let out = dir.path().join(name);
        let (ok, _, err) = decomp(&[
            "decompose",
            "--granularity",
            "channel",
            "--weights",
            s(&fixture(&format!("{name}.onnx"))),
            "--data-file",
            s(&data),
            "--positives",
            "2",
            "--positive-filter",
            "all",
            "--out-dir",
            s(&out),
        ]);
        assert!(!ok, "{name}: channel decomposition succeeded");
        assert!(err.contains(reason), "{name}: {err}");
    }
}

/// ONNX flags: class names override the metadata; normalization needs both halves; the
/// flags are refused for other model files.
#[test]
fn onnx_flags_override_metadata_and_are_checked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("m.ir");
    let onnx = fixture("vgg11_bn_w8.onnx");
    let names = "a,b,c,d,e,f,g,h,i,j";
    let (ok, _, err) = decomp(&[
        "import",
        "--onnx",
        s(&onnx),
        "--class-names",
        names,
        "--out",
        s(&out),
    ]);
    assert!(ok, "{err}");
    let m: ModelIr = decomp_ir::read_artifact(&out).expect("model");
    assert_eq!(m.meta.class_names.join(","), names);
    let (ok, _, err) = decomp(&[
        "import",
        "--onnx",
        s(&onnx),
        "--input-mean",
        "0.5,0.5,0.5",
        "--out",
        s(&out),
    ]);
    assert!(!ok && err.contains("--input-std"), "{err}");
    let (ok, _, err) = decomp(&[
        "import",
        "--onnx",
        s(&onnx),
        "--class-names",
        "a,b",
        "--out",
        s(&out),
    ]);
    assert!(
        !ok && err.contains("2 class names for a model with 10 logits"),
        "{err}"
    );
    let (ok, _, err) = decomp(&[
        "eval",
        "--weights",
        s(&out),
        "--class-names",
        names,
        "--data-file",
        s(&onnx),
    ]);
    assert!(!ok && err.contains("apply to ONNX models"), "{err}");
}
