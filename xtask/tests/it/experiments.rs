//! The zoo, Table 1 and the validity gate on the tiny synthetic setup of `main.rs`.

use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{decomp_bin, finished_units, fixture, read, run_ok, xtask};

fn json(p: &Path) -> Value {
    serde_json::from_str(&read(p.to_path_buf())).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// A zoo manifest of two tiny training runs whose weights go to `weights`.
fn zoo_manifest(d: &Path, name: &str, weights: &Path) -> String {
    let p = d.join("manifests").join(format!("{name}.toml"));
    let run = |seed: u32| {
        format!(
            "data = \"main\"\ntrain = {{ arch = \"resnet8\", recipe = \"he2016\", epochs = 2, batch_size = 16, train_limit = 80, val_fraction = 0.25, seed = {seed} }}\n"
        )
    };
    std::fs::write(
        &p,
        format!(
            "scenario = \"zoo\"\ntitle = \"tiny zoo\"\nvalidity_gate = false\n\
             [data.main]\ndataset = \"cifar10\"\npath = \"cifar-10-batches-bin\"\n\
             [decompose]\nargs = [\"--positive-filter\", \"all\", \"--batch-size\", \"16\"]\n\
             [zoo]\nweights_dir = \"{}\"\n[models.r8-a]\n{}[models.r8-b]\n{}",
            weights.display(),
            run(0),
            run(1)
        ),
    )
    .expect("write");
    p.display().to_string()
}

/// [`run_ok`]'s stdout and stderr together (the engine says what it reuses on stderr).
fn run_all(mut c: std::process::Command) -> String {
    let out = c.output().expect("spawn xtask");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "xtask failed: {stderr}");
    format!("{}{stderr}", String::from_utf8_lossy(&out.stdout))
}

fn sha256(p: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(p).expect("read")))
}

#[test]
fn zoo_runs_pause_resume_shard_and_publish_checked_weights() {
    let t = tempfile::tempdir().expect("tempdir");
    let d = t.path();
    fixture(d);
    let weights = d.join("zoo-weights");
    let zoo = zoo_manifest(d, "zoo", &weights);
    // One epoch now: both runs pause; the report lists them in progress, no weights yet.
    let out = run_ok(xtask(d, "runs", "results", &[&zoo, "--epochs-now", "1"]));
    assert!(out.contains("paused"), "{out}");
    let md = read(d.join("results/zoo/report.md"));
    assert_eq!(md.matches("in progress (1/2 epochs)").count(), 2, "{md}");
    assert!(!weights.exists());
    assert!(d.join("results/zoo/r8-a/curves.svg").is_file());
    // The next invocation continues them to the end.
    run_ok(xtask(d, "runs", "results", &[&zoo]));
    let md = read(d.join("results/zoo/report.md"));
    assert_eq!(md.matches("| finished |").count(), 2, "{md}");
    let sums = read(weights.join("SHA256SUMS"));
    for run in ["r8-a", "r8-b"] {
        let ir = weights.join(format!("{run}.ir"));
        assert!(
            sums.contains(&format!("{}  {run}.ir", sha256(&ir))),
            "{sums}"
        );
        // Beside it, the reproduction check CI runs: the same model, a composed accuracy.
        let check = json(&weights.join(format!("{run}.check.json")));
        assert_eq!(check["sha256"].as_str(), Some(sha256(&ir).as_str()));
        let top1 = check["composed_top1"].as_f64().expect("composed top-1");
        assert!((0.0..=100.0).contains(&top1), "{check}");
        assert!(check["images"].as_u64().expect("images") > 0, "{check}");
    }
    let rows = json(&d.join("results/zoo/zoo.json"));
    for r in rows.as_array().expect("rows") {
        let m = json(&d.join(format!(
            "results/zoo/{}/metrics.json",
            r["name"].as_str().expect("name")
        )));
        assert_eq!(
            r["test"]["top1"], m["test_top1"],
            "decomp eval reproduces the recorded accuracy"
        );
        assert_eq!(r["epochs_done"], 2);
        assert!(r["convergence"].is_object(), "{r}");
    }
    // A fresh checkout (no run folders): the published models and committed metrics stand
    // in for the training units, and their test accuracy is checked again.
    let out = run_all(xtask(
        d,
        "fresh-runs",
        "results",
        &[&zoo, "--epochs-now", "0"],
    ));
    assert_eq!(out.matches(": adopted (").count(), 2, "{out}");
    assert!(!out.contains("decomp train"), "{out}");
    let md = read(d.join("results/zoo/report.md"));
    assert_eq!(md.matches("| finished |").count(), 2, "{md}");
    // A record whose model no longer has its hash is not adopted: that run trains again.
    std::fs::write(weights.join("r8-b.ir"), b"not the model").expect("tamper");
    let out = run_all(xtask(
        d,
        "fresh-runs-2",
        "results",
        &[&zoo, "--epochs-now", "0"],
    ));
    assert_eq!(out.matches(": adopted (").count(), 1, "{out}");
    assert!(out.contains("not reused"), "{out}");
    let md = read(d.join("results/zoo/report.md"));
    assert_eq!(md.matches("| finished |").count(), 1, "{md}");
    // The first run folder still has both: publishing again restores the model.
    run_ok(xtask(d, "runs", "results", &[&zoo]));
    assert_eq!(
        read(weights.join("SHA256SUMS")).matches(".ir").count(),
        2,
        "republished"
    );
    // Sharded and uninterrupted: the same weights (training resumes exactly).
    let ref_weights = d.join("ref-weights");
    let zoo_ref = zoo_manifest(d, "zoo-ref", &ref_weights);
    for shard in ["0/2", "1/2"] {
        let out = run_ok(xtask(
            d,
            "ref-runs",
            "ref-results",
            &[&zoo_ref, "--shard", shard],
        ));
        assert!(out.contains("no report"), "{out}");
    }
    let trained = std::fs::read_dir(d.join("ref-runs/store/train"))
        .expect("train units")
        .count();
    assert_eq!(trained, 2, "the two shards trained one run each");
    run_ok(xtask(d, "ref-runs", "ref-results", &[&zoo_ref]));
    for run in ["r8-a", "r8-b"] {
        assert_eq!(
            std::fs::read(weights.join(format!("{run}.ir"))).expect("weights"),
            std::fs::read(ref_weights.join(format!("{run}.ir"))).expect("weights"),
            "{run}: paused and resumed vs uninterrupted"
        );
    }
}

/// `table1.json` without the timing fields (which differ between two runs).
fn untimed(p: &Path) -> Value {
    let mut v = json(p);
    for r in v.as_array_mut().expect("rows") {
        let o = r.as_object_mut().expect("row");
        o.remove("decompose_seconds");
        o.remove("compose_seconds");
    }
    v
}

#[test]
fn table1_covers_sites_zoo_and_ablations_and_shards_and_resumes() {
    let t = tempfile::tempdir().expect("tempdir");
    let d = t.path();
    let m = fixture(d);
    // A zoo with one "trained" model without BatchNorm (its weights in place) and one not.
    let zoo_weights = d.join("t1-zoo");
    std::fs::create_dir_all(&zoo_weights).expect("mkdir");
    let st = Command::new(decomp_bin())
        .args([
            "new-model",
            "--arch",
            "resnet8",
            "--no-batch-norm",
            "--seed",
            "3",
            "--out",
        ])
        .arg(zoo_weights.join("nobn-r8.ir"))
        .stdout(Stdio::null())
        .status()
        .expect("decomp new-model");
    assert!(st.success());
    // A third whose weights are those of an earlier configuration of the run (a record with
    // another training key, as a run retrained with more epochs leaves until it publishes).
    std::fs::copy(
        zoo_weights.join("nobn-r8.ir"),
        zoo_weights.join("stale-r8.ir"),
    )
    .expect("copy");
    std::fs::write(
        zoo_weights.join("stale-r8.train.json"),
        r#"{"key": {"train": "an earlier configuration"}, "sha256": "0"}"#,
    )
    .expect("write");
    let train = "train = { arch = \"resnet8\", recipe = \"paper-keras\", epochs = 1 }\n";
    let zoo = m.join("t1-zoo.toml");
    std::fs::write(
        &zoo,
        format!(
            "scenario = \"zoo\"\ntitle = \"z\"\n[data.main]\ndataset = \"cifar10\"\npath = \"cifar-10-batches-bin\"\n\
             [zoo]\nweights_dir = \"{}\"\n[models.nobn-r8]\ndata = \"main\"\n{train}[models.missing-r8]\ndata = \"main\"\n{train}\
             [models.stale-r8]\ndata = \"main\"\n{train}",
            zoo_weights.display()
        ),
    )
    .expect("write");
    let manifest = m.join("t1.toml");
    std::fs::write(
        &manifest,
        format!(
            "scenario = \"table1\"\ntitle = \"tiny table1\"\nvalidity_gate = false\n\
             [models.weak]\nweights = \"{}\"\n\
             [data.main]\ndataset = \"cifar10\"\npath = \"cifar-10-batches-bin\"\n\
             [decompose]\npositives = 4\nargs = [\"--positive-filter\", \"all\", \"--batch-size\", \"16\"]\n\
             [table1]\nvariants = [\"ci-ti-mc\", \"mc-bln\"]\nzoo = \"{}\"\nbootstrap = 200\n\
             ablations = [{{ model = \"weak\", args = [\"--bln-delta\", \"0.1\"], variants = [\"mc-bln\"] }}]\n",
            d.join("weak.ir").display(),
            zoo.display()
        ),
    )
    .expect("write");
    let manifest = manifest.display().to_string();
    run_ok(xtask(d, "one", "one-results", &[&manifest]));
    let rows = json(&d.join("one-results/t1/table1.json"));
    let rows = rows.as_array().expect("rows");
    let label = |r: &Value| {
        format!(
            "{} {} {}",
            r["model"].as_str().expect("model"),
            r["mask_site"].as_str().expect("site"),
            r["variant"].as_str().expect("variant")
        )
    };
    assert_eq!(
        rows.iter().map(label).collect::<Vec<_>>(),
        [
            "weak relu-input ci-ti-mc",
            "weak relu-input mc-bln",
            "weak --bln-delta 0.1 mc-bln",
            "nobn-r8 relu-input ci-ti-mc",
            "nobn-r8 relu-input mc-bln",
            "nobn-r8 conv-output ci-ti-mc",
            "nobn-r8 conv-output mc-bln",
        ]
    );
    for r in rows {
        let (d1, lo, hi) = (
            &r["delta_top1"]["diff"],
            &r["delta_top1"]["lo"],
            &r["delta_top1"]["hi"],
        );
        let (d1, lo, hi) = (
            d1.as_f64().expect("diff"),
            lo.as_f64().expect("lo"),
            hi.as_f64().expect("hi"),
        );
        let direct = r["composed_top1"].as_f64().expect("c") - r["model_top1"].as_f64().expect("m");
        assert!((d1 - direct).abs() < 1e-9 && lo <= d1 && d1 <= hi, "{r}");
        assert!(r["ji"].as_f64().is_some_and(|x| x > 0.0 && x <= 1.0), "{r}");
    }
    assert_eq!(rows[3]["batch_norm"], false);
    let md = read(d.join("one-results/t1/table1.md"));
    assert!(
        md.contains("Zoo models not trained yet")
            && md.contains("`missing-r8`")
            && md.contains("`stale-r8`"),
        "{md}"
    );
    assert!(
        md.contains("| TinyImageNet | resnet56 | 32.1 | 58.7 | 31.0 | 57.8 | -1.1 | 0.71 |"),
        "{md}"
    );

    // Sharded: two shards and a merge run give the same table.
    for shard in ["0/2", "1/2"] {
        let out = run_ok(xtask(
            d,
            "sharded",
            "sharded-results",
            &[&manifest, "--shard", shard],
        ));
        assert!(out.contains("no report"), "{out}");
    }
    assert!(!d.join("sharded-results/t1/table1.json").exists());
    run_ok(xtask(d, "sharded", "sharded-results", &[&manifest]));
    assert_eq!(
        untimed(&d.join("sharded-results/t1/table1.json")),
        untimed(&d.join("one-results/t1/table1.json"))
    );

    // Resumed: a lost composition is recomputed alone; every other unit is reused.
    let units = finished_units(&d.join("one"));
    let stamps: Vec<String> = units.iter().map(|u| read(u.join("unit.json"))).collect();
    let lost = units
        .iter()
        .position(|u| {
            u.to_string_lossy()
                .contains("/margins/nobn-r8-conv-output-mc-bln-")
        })
        .expect("a margins unit");
    std::fs::remove_dir_all(&units[lost]).expect("remove");
    run_ok(xtask(d, "one", "one-results", &[&manifest]));
    for (i, (u, s)) in units.iter().zip(&stamps).enumerate() {
        if i != lost {
            assert_eq!(
                &read(u.join("unit.json")),
                s,
                "{} was recomputed",
                u.display()
            );
        }
    }
    assert!(units[lost].join("unit.json").is_file());
    assert_eq!(
        untimed(&d.join("one-results/t1/table1.json"))
            .as_array()
            .expect("rows")
            .iter()
            .map(|r| (r["delta_top1"].clone(), r["composed_top5"].clone()))
            .collect::<Vec<_>>(),
        untimed(&d.join("sharded-results/t1/table1.json"))
            .as_array()
            .expect("rows")
            .iter()
            .map(|r| (r["delta_top1"].clone(), r["composed_top5"].clone()))
            .collect::<Vec<_>>()
    );
}

#[test]
fn validity_gate_fails_the_experiment_on_an_untrained_model() {
    let t = tempfile::tempdir().expect("tempdir");
    let d = t.path();
    let m = fixture(d);
    // The fixture's models are untrained: with the gate on (the default), Table 4 fails
    // naming the recipient model instead of writing a report.
    let text = read(m.join("replace.toml")).replace("validity_gate = false\n", "");
    let manifest = m.join("gated.toml");
    std::fs::write(&manifest, text).expect("write");
    let out = xtask(d, "runs", "results", &[&manifest.display().to_string()])
        .output()
        .expect("spawn");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("validity gate: the recipient model"),
        "{stderr}"
    );
    assert!(!d.join("results/gated/report.md").exists());
}

#[test]
fn frontier_runs_its_points_as_units() {
    let t = tempfile::tempdir().expect("tempdir");
    let d = t.path();
    let m = fixture(d);
    let manifest = m.join("frontier.toml");
    std::fs::write(
        &manifest,
        format!(
            "scenario = \"frontier\"\ntitle = \"tiny frontier\"\nvalidity_gate = false\n\
             [models.weak]\nweights = \"{}\"\narch = \"resnet8\"\n\
             [data.main]\ndataset = \"cifar10\"\npath = \"cifar-10-batches-bin\"\n\
             [decompose]\npositives = 4\nargs = [\"--positive-filter\", \"all\", \"--batch-size\", \"16\"]\n\
             [select]\nclasses = 2\nseed = 3\n\
             [tma]\narch = \"resnet20\"\nepochs = 1\nbatch_size = 16\nval_fraction = 0.25\n\
             [bootstrap]\nresamples = 200\n\
             [[frontier]]\nmodel = \"weak\"\npoints = [{{ tau_neg = 0.0 }}, {{ tau = 0.2, compensation = \"sample\", whole_split = true }}, \
             {{ rate = \"importance\", compensation = \"sample\", budget = 0.6, reconstruct = true, train = {{ budget = 20.0 }} }}]\n",
            d.join("weak.ir").display()
        ),
    )
    .expect("write");
    let manifest = manifest.display().to_string();
    run_ok(xtask(d, "runs", "results", &[&manifest, "--limit", "20"]));
    let rows = json(&d.join("results/frontier/frontier.json"));
    let rows = rows.as_array().expect("rows");
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0]["n"], 20, "--limit");
    assert_eq!(rows[1]["whole_split"]["n"], 60, "the whole test split");
    // Its paired interval: the vote of the saved margins against the model, image by image.
    let w = &rows[1]["whole_split"];
    let diff =
        w["composed_top1"].as_f64().expect("composed") - w["model_top1"].as_f64().expect("model");
    let ci = &w["delta_ci"];
    assert!(
        (ci["diff"].as_f64().expect("diff") - diff).abs() < 1e-9,
        "{w}"
    );
    assert!(
        ci["lo"].as_f64().expect("lo") <= diff && diff <= ci["hi"].as_f64().expect("hi"),
        "{w}"
    );
    // A trained point: one tangle unit per class, each module's training recorded.
    let runs = rows[2]["run"].as_array().expect("one run folder per class");
    assert_eq!(
        runs.len(),
        rows[2]["per_module"].as_array().expect("modules").len()
    );
    assert!(
        rows[2]["train"]["model_epochs"].as_f64().expect("spent") > 0.0,
        "{}",
        rows[2]
    );
    assert!(d.join("results/frontier/frontier.svg").is_file());
    // Table 2's pairs from the trained point: the element-level modules and the trained
    // point against a TMA of the model's own architecture, on the same images.
    let pairs = json(&d.join("results/frontier/pairs.json"));
    let p = &pairs.as_array().expect("one entry per model")[0];
    assert_eq!(
        p["tma"]["spec"]["arch"], "resnet8",
        "the model's architecture"
    );
    assert_eq!(
        p["class_names"].as_array().expect("names").len(),
        p["classes"].as_array().expect("classes").len(),
        "a name per selected class"
    );
    let approaches = p["approaches"].as_array().expect("approaches");
    assert_eq!(
        approaches.len(),
        2,
        "element-level modules + the trained point"
    );
    assert!(
        approaches[1]["module_flops_percent"]
            .as_f64()
            .expect("flops")
            < 100.0
    );
    for a in approaches {
        let rows = a["pairs"].as_array().expect("pairs");
        assert_eq!(rows.len(), 1, "2 classes: one pair");
        let n = rows[0]["n"].as_u64().expect("n");
        assert_eq!(n, p["tma"]["pairs"][0]["n"].as_u64().expect("tma n"));
        assert!(rows[0]["ms_per_image"].as_f64().expect("time") > 0.0, "{a}");
        let ci = &a["mean_delta_ci"];
        let (lo, hi) = (
            ci["lo"].as_f64().expect("lo"),
            ci["hi"].as_f64().expect("hi"),
        );
        let diff = a["mean_delta_vs_tma"].as_f64().expect("diff");
        assert!(lo <= diff && diff <= hi, "{a}");
    }
    assert!(
        read(d.join("results/frontier/frontier.md"))
            .contains("## Table 2's pairs from resnet8's modules")
    );
    // A rerun reuses every unit and rebuilds the same report.
    let before = read(d.join("results/frontier/frontier.csv"));
    let stamps: Vec<String> = finished_units(&d.join("runs"))
        .iter()
        .map(|u| read(u.join("unit.json")))
        .collect();
    run_ok(xtask(d, "runs", "results", &[&manifest, "--limit", "20"]));
    assert_eq!(read(d.join("results/frontier/frontier.csv")), before);
    let again: Vec<String> = finished_units(&d.join("runs"))
        .iter()
        .map(|u| read(u.join("unit.json")))
        .collect();
    assert_eq!(stamps, again);
    // The first point must be the statistics point.
    let bad = m.join("bad.toml");
    std::fs::write(
        &bad,
        read(m.join("frontier.toml")).replace("{ tau_neg = 0.0 }, ", ""),
    )
    .expect("write");
    let out = xtask(d, "runs", "results", &[&bad.display().to_string()])
        .output()
        .expect("spawn");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("the first point must be tau = tau_neg = 0")
    );
}

/// Tables 3 and 5 with a given second model (the zoo's case): every pair of the 2 x 2
/// classes (Table 5: `cases = "cross"`, all 4 combinations), each difference with its paired
/// bootstrap interval, the mean's, and the paper's numbers beside them.
#[test]
fn inter_scenarios_with_a_given_second_model_carry_paired_intervals() {
    let t = tempfile::tempdir().expect("tempdir");
    let d = t.path();
    let m = fixture(d);
    let (weak, strong) = (d.join("weak.ir"), d.join("strong.ir"));
    let manifest = |scenario: &str, extra: &str| {
        format!(
            "scenario = \"{scenario}\"\ntitle = \"tiny {scenario}\"\nvalidity_gate = false\n\
             [data.main]\ndataset = \"cifar10\"\npath = \"cifar-10-batches-bin\"\n\
             [data.second]\ndataset = \"cifar10\"\npath = \"cifar-10-batches-bin\"\n\
             [models.base]\nweights = \"{}\"\n\
             [models.second]\ndata = \"second\"\nweights = \"{}\"\narch = \"resnet8\"\n\
             [decompose]\npositives = 4\nargs = [\"--positive-filter\", \"all\", \"--batch-size\", \"16\"]\n\
             [select]\nclasses = 2\nsecond_classes = 2\nseed = 3\n{extra}\
             [tma]\narch = \"resnet8\"\nepochs = 1\nbatch_size = 16\nval_fraction = 0.25\n\
             [bootstrap]\nresamples = 200\n",
            weak.display(),
            strong.display()
        )
    };
    let ci = |x: &Value, k: &str| -> [f64; 3] {
        ["diff", "lo", "hi"].map(|f| x[k][f].as_f64().unwrap_or_else(|| panic!("{k}.{f}: {x}")))
    };
    // The scaled vote (ours, `[compose] scale_second`), per pair or case: a factor from the
    // training images with a paired interval against the trained baseline and against the
    // paper's vote, or (the toy models' margins are near 0) why not.
    let scaled_rows = |v: &Value, md: &str| {
        let scaled = v["scaled"]["rows"].as_array().expect("scaled rows");
        assert_eq!(scaled.len(), 4, "{v}");
        for s in scaled {
            match s["factor"].as_f64() {
                Some(f) => {
                    assert!(f > 0.0, "{s}");
                    for k in ["vs_trained_top1_ci", "minus_paper_top1_ci"] {
                        let [d, lo, hi] = ci(s, k);
                        assert!(lo <= d && d <= hi, "{k}: {s}");
                    }
                }
                None => {
                    let why = s["not_voted"].as_str().expect("a reason");
                    assert!(why.contains("not both positive"), "{s}");
                    assert!(md.contains("not voted, the median margins"), "{md}");
                }
            }
        }
    };
    let check = |x: &Value, diff: &str| {
        let [d, lo, hi] = ci(x, &format!("{diff}_ci"));
        let want = x[diff].as_f64().expect("difference");
        assert!((d - want).abs() < 1e-9, "{diff}: {x}");
        assert!(lo <= d && d <= hi, "{diff}: {x}");
    };

    let reuse = m.join("inter-reuse.toml");
    std::fs::write(
        &reuse,
        manifest("inter-reuse", "[compose]\nscale_second = true\n"),
    )
    .expect("write");
    run_ok(xtask(d, "runs", "results", &[&reuse.display().to_string()]));
    let v = json(&d.join("results/inter-reuse/inter-reuse.json"));
    let pairs = v["pairs"].as_array().expect("pairs");
    assert_eq!(pairs.len(), 4, "2 x 2 pairs");
    for p in pairs.iter().chain([&v["mean"]]) {
        check(p, "tma_minus_ma");
        check(p, "tma_minus_mma");
    }
    check(&v["mean"], "mma_minus_ma");
    let md = read(d.join("results/inter-reuse/report.md"));
    for want in [
        "Continuous learning (MMA − MA): mean ",
        "against the paper's **+5.08**",
        "TMA − MA [95% CI]",
        "TMA − MMA [95% CI]",
        "TMA − MA = **12.7** points",
        "Ours: mean TMA − MA",
        "(`resnet8-cifar10`, given, not trained by this experiment)",
        "## MA with the second model's module's margins scaled (ours, not the paper's)",
        "| TMA − scaled MA top-1 [95% CI] |",
        "Why MA's vote goes the way it does",
    ] {
        assert!(md.contains(want), "{want}: {md}");
    }
    scaled_rows(&v, &md);
    // The given second model's modules are of its own classes (the drawn ones), decomposed
    // once each.
    let second = v["second_classes"].as_array().expect("second classes");
    for c in second {
        let name = format!("resnet8-cifar10-class{:03}-", c.as_u64().expect("class"));
        let n = std::fs::read_dir(d.join("runs/store/decompose"))
            .expect("decompose units")
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(&name))
            .count();
        assert_eq!(n, 1, "{name}");
    }

    let replace = m.join("inter-replace.toml");
    std::fs::write(
        &replace,
        manifest(
            "inter-replace",
            "cases = \"cross\"\n[compose]\nscale_second = true\n",
        ),
    )
    .expect("write");
    run_ok(xtask(
        d,
        "runs",
        "results",
        &[&replace.display().to_string()],
    ));
    let v = json(&d.join("results/inter-replace/inter-replace.json"));
    let rows = v["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 4, "every combination of 2 x 2");
    for r in rows.iter().chain([&v["mean"]]) {
        check(r, "d_minus_m_top1");
        check(r, "d_minus_m_top5");
    }
    let md = read(d.join("results/inter-replace/report.md"));
    for want in [
        "D − M top-1 [95% CI]",
        "D − M top-5 [95% CI]",
        "**+2.55 top-1, -7.06 top-5**",
        "Ours: mean D − M top-5",
        "## D with the second model's module's margins scaled (ours, not the paper's)",
        "Why D's vote goes the way it does",
    ] {
        assert!(md.contains(want), "{want}: {md}");
    }
    scaled_rows(&v, &md);
}

/// Tables 4 and 6 carry paired intervals for every change; Table 6 fixes each class of
/// `[motivating] classes` by all four options, option 2 with a 2-class model trained on the
/// class and the one the recipient most often predicts for its training images.
#[test]
fn replace_scenarios_carry_intervals_and_table6_runs_all_four_options() {
    let t = tempfile::tempdir().expect("tempdir");
    let d = t.path();
    let m = fixture(d);
    let ci_holds = |x: &Value, diff: &str| {
        let c = &x[format!("{diff}_ci")];
        let [lo, hi] = ["lo", "hi"].map(|f| c[f].as_f64().unwrap_or_else(|| panic!("{diff}: {x}")));
        let v = x[diff].as_f64().expect("difference");
        assert!(
            (c["diff"].as_f64().expect("diff") - v).abs() < 1e-9,
            "{diff}: {x}"
        );
        assert!(lo <= v && v <= hi, "{diff}: {x}");
    };
    let replace = m.join("replace.toml").display().to_string();
    run_ok(xtask(d, "runs", "results", &[&replace]));
    let v = json(&d.join("results/replace/replace.json"));
    let rows = v["replace"].as_array().expect("rows");
    assert_eq!(rows.len(), 10);
    for r in rows.iter().chain([&v]) {
        let key = if r.get("x").is_some() {
            "delta_top1"
        } else {
            "mean_delta_top1"
        };
        ci_holds(r, key);
    }

    let text = read(m.join("replace.toml")).replace("intra-replace", "motivating")
        + "[motivating]\nclasses = [\"weakest\", \"bird\"]\n\
           pair = { arch = \"resnet8\", epochs = 1, batch_size = 16, train_limit = 24, val_fraction = 0.25, \
           args = [\"--init\", \"models:weak.ir\", \"--new-head\"] }\n\
           scale_pair = true\n\
           [bootstrap]\nresamples = 200\n";
    let manifest = m.join("motivating.toml");
    std::fs::write(&manifest, text).expect("write");
    // The 2-class models start from the recipient (`models:` resolves in --models-dir) with
    // a new 2-class head.
    run_ok(xtask(
        d,
        "runs",
        "results",
        &[
            &manifest.display().to_string(),
            "--models-dir",
            &d.display().to_string(),
        ],
    ));
    let v = json(&d.join("results/motivating/motivating.json"));
    let classes = v["classes"].as_array().expect("classes");
    assert!(!classes.is_empty() && classes.len() <= 2, "{v}");
    assert!(classes.iter().any(|c| c["class_name"] == "bird"), "{v}");
    let rows = v["rows"].as_array().expect("rows");
    let md = read(d.join("results/motivating/report.md"));
    for c in classes {
        let options: Vec<&str> = rows
            .iter()
            .filter(|r| r["class"] == c["class"])
            .map(|r| r["option"].as_str().expect("option"))
            .collect();
        let want: &[&str] = if c["partner"].is_null() {
            assert!(c["no_pair"].is_string(), "{c}");
            &["replace", "remove", "reverify"]
        } else if options.contains(&"pair-scaled") {
            // The scaled 2-class module (scale_pair), when both medians are positive.
            assert!(md.contains("Row 2b (ours, not the paper's) scales"), "{md}");
            &["replace", "pair", "pair-scaled", "remove", "reverify"]
        } else {
            assert_ne!(c["partner"], c["class"]);
            assert!(md.contains("Row 2b (ours) did not run"), "{md}");
            &["replace", "pair", "remove", "reverify"]
        };
        assert_eq!(options, want, "{c}");
    }
    for r in rows.iter().filter(|r| r["option"] != "remove") {
        ci_holds(r, "delta_top1");
        ci_holds(r, "delta_top5");
    }
    assert!(
        md.contains("fine-tuned from `models:weak.ir` with a freshly initialized head"),
        "{md}"
    );
    assert!(
        md.contains("chosen on the recipient's training images"),
        "{md}"
    );
    // Option 2's models were trained and decomposed as units of their own.
    let units = |stage: &str, prefix: &str| {
        std::fs::read_dir(d.join("runs/store").join(stage))
            .expect("units")
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
            .count()
    };
    let pairs = classes.iter().filter(|c| !c["partner"].is_null()).count();
    assert_eq!(units("train", "pair-"), pairs);
    assert_eq!(units("decompose", "pair-"), pairs);
    // scale_pair: the factors come from margins on the training split, one unit per 2-class
    // set and one for the recipient's.
    let train_margins = std::fs::read_dir(d.join("runs/store/margins"))
        .expect("units")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("-all-train-"))
        .count();
    assert_eq!(train_margins, pairs + usize::from(pairs > 0));
    // scale_pair without a 2-class model to scale is refused by name.
    let lone = m.join("lone.toml");
    std::fs::write(
        &lone,
        read(m.join("replace.toml")).replace("intra-replace", "motivating")
            + "[motivating]\nscale_pair = true\n",
    )
    .expect("write");
    let out = xtask(d, "runs", "results", &[&lone.display().to_string()])
        .output()
        .expect("spawn");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("scale_pair") && stderr.contains("needs `pair`"),
        "{stderr}"
    );
}
