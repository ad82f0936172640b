//! `cargo xtask run-experiment` on a tiny synthetic setup: a CIFAR-format dataset of
//! coloured blobs and untrained ResNet-8s, so whole experiments run in seconds.
//!
//! - a killed run resumes from its finished units, never reads a partial one, and ends with
//!   the report of an uninterrupted run;
//! - `--shard 0/2` + `--shard 1/2` + a merge run give the report of an unsharded run.

mod experiments;
mod fetch;
mod slurm;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// CIFAR-10 records: class `k` is a bright square at a class-dependent place and colour on
/// a noisy background (deterministic from the record index).
fn records(n: usize, offset: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n * 3073);
    for i in 0..n {
        let label = i % 10;
        out.push(label as u8);
        let (cx, cy) = (4 + (label % 5) * 5, 6 + (label / 5) * 14);
        for c in 0..3 {
            for y in 0..32 {
                for x in 0..32 {
                    let noise = ((i + offset) * 7919 + c * 104_729 + y * 131 + x * 31) % 61;
                    let inside = x >= cx && x < cx + 8 && y >= cy && y < cy + 8;
                    let v = if inside {
                        120 + ((label * 37 + c * 70) % 130)
                    } else {
                        noise
                    };
                    out.push(v as u8);
                }
            }
        }
    }
    out
}

/// Dataset and models of the tiny setup in `dir`; returns the manifest folder.
fn fixture(dir: &Path) -> PathBuf {
    let data = dir.join("data/cifar-10-batches-bin");
    std::fs::create_dir_all(&data).expect("mkdir");
    for f in 1..=5 {
        std::fs::write(
            data.join(format!("data_batch_{f}.bin")),
            records(40, f * 1000),
        )
        .expect("write");
    }
    std::fs::write(data.join("test_batch.bin"), records(60, 0)).expect("write");
    std::fs::write(
        data.join("batches.meta.txt"),
        "airplane\nautomobile\nbird\ncat\ndeer\ndog\nfrog\nhorse\nship\ntruck\n",
    )
    .expect("write");
    let decomp = decomp_bin();
    for (name, seed) in [("weak.ir", "1"), ("strong.ir", "2")] {
        let st = Command::new(&decomp)
            .args(["new-model", "--arch", "resnet8", "--seed", seed, "--out"])
            .arg(dir.join(name))
            .stdout(Stdio::null())
            .status()
            .expect("decomp new-model");
        assert!(st.success());
    }
    let common = |scenario: &str| {
        format!(
            "scenario = \"{scenario}\"\ntitle = \"tiny {scenario}\"\n\
             validity_gate = false\n\
             [data.main]\ndataset = \"cifar10\"\npath = \"cifar-10-batches-bin\"\n\
             [decompose]\npositives = 4\nargs = [\"--positive-filter\", \"all\", \"--batch-size\", \"16\"]\n"
        )
    };
    let m = dir.join("manifests");
    std::fs::create_dir_all(&m).expect("mkdir");
    let weak = dir.join("weak.ir").display().to_string();
    let strong = dir.join("strong.ir").display().to_string();
    std::fs::write(
        m.join("reuse.toml"),
        format!(
            "{}[models.base]\nweights = \"{weak}\"\n[select]\nclasses = 3\nseed = 5\n\
             [tma]\narch = \"resnet8\"\nepochs = 1\nbatch_size = 16\ntrain_limit = 24\nval_fraction = 0.25\n",
            common("intra-reuse")
        ),
    )
    .expect("write");
    std::fs::write(
        m.join("replace.toml"),
        format!(
            "{}[models.weak]\nweights = \"{weak}\"\n[models.strong]\nweights = \"{strong}\"\n",
            common("intra-replace")
        ),
    )
    .expect("write");
    m
}

/// The `decomp` binary beside the xtask binary, built once per test process.
fn decomp_bin() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        let st = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args([
                "build",
                "--quiet",
                "--package",
                "decomp-cli",
                "--bin",
                "decomp",
            ])
            .status()
            .expect("cargo build");
        assert!(st.success());
        PathBuf::from(env!("CARGO_BIN_EXE_xtask")).with_file_name("decomp")
    })
    .clone()
}

fn xtask(dir: &Path, store: &str, results: &str, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_xtask"));
    c.arg("run-experiment")
        .args(args)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--runs")
        .arg(dir.join(store))
        .arg("--out")
        .arg(dir.join(results))
        .env("DECOMP_BIN", decomp_bin())
        .env("RUST_LOG", "error");
    c
}

fn run_ok(mut c: Command) -> String {
    let out = c.output().expect("spawn xtask");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "xtask failed: {stderr}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every folder of a stage is either a finished unit (with `unit.json`) or a work folder.
fn finished_units(store: &Path) -> Vec<PathBuf> {
    let mut done = Vec::new();
    for stage in std::fs::read_dir(store.join("store"))
        .into_iter()
        .flatten()
        .flatten()
    {
        for u in std::fs::read_dir(stage.path()).expect("stage").flatten() {
            let name = u.file_name().to_string_lossy().to_string();
            if name.contains(".tmp-") || name.ends_with(".partial") {
                continue;
            }
            assert!(
                u.path().join("unit.json").is_file(),
                "{} is a unit folder without unit.json",
                u.path().display()
            );
            done.push(u.path());
        }
    }
    done.sort();
    done
}

/// Work folders of killed or running units.
fn work_folders(store: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    for stage in std::fs::read_dir(store.join("store"))
        .into_iter()
        .flatten()
        .flatten()
    {
        for u in std::fs::read_dir(stage.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            if u.file_name().to_string_lossy().contains(".tmp-") {
                v.push(u.path());
            }
        }
    }
    v
}

fn read(p: PathBuf) -> String {
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn killed_run_resumes_from_finished_units() {
    let t = tempfile::tempdir().expect("tempdir");
    let d = t.path();
    let m = fixture(d);
    let manifest = m.join("reuse.toml").display().to_string();
    // Reference: one uninterrupted run.
    let out = run_ok(xtask(d, "ref-runs", "ref-results", &[&manifest]));
    assert!(out.contains("report:"), "{out}");

    // Interrupted run: kill it (SIGKILL to that one process, by its id) while a finished
    // work folder waits for its rename, after at least two units are in place. The xtask
    // is then between two `decomp` runs, so no child outlives it.
    let mut c = xtask(d, "runs", "results", &[&manifest]);
    c.env("DECOMP_XTASK_RENAME_DELAY_MS", "300");
    let mut child = c
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let start = Instant::now();
    let mut pending = None;
    while pending.is_none() && start.elapsed() < Duration::from_secs(300) {
        if finished_units(&d.join("runs")).len() >= 2 {
            pending = work_folders(&d.join("runs"))
                .into_iter()
                .find(|w| w.join("unit.json").is_file());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().expect("kill the xtask run");
    let _ = child.wait();
    let pending = pending.expect("a work folder waiting for its rename");
    let before = finished_units(&d.join("runs"));
    assert!(before.len() >= 2, "{before:?}");
    assert!(
        !d.join("results/reuse/report.md").exists(),
        "the run was killed before its report"
    );
    // The killed unit's work folder is complete but was never renamed: a rerun must not use
    // it. Make that visible: corrupt its artifacts.
    assert!(pending.exists());
    for f in std::fs::read_dir(&pending).expect("work folder").flatten() {
        if f.path().is_file() {
            std::fs::write(f.path(), "garbage").expect("corrupt");
        }
    }
    let stamps: Vec<String> = before.iter().map(|u| read(u.join("unit.json"))).collect();

    run_ok(xtask(d, "runs", "results", &[&manifest]));
    assert!(
        !pending.exists(),
        "the killed unit's work folder is removed on rerun"
    );
    assert!(work_folders(&d.join("runs")).is_empty());
    for (u, s) in before.iter().zip(&stamps) {
        assert_eq!(
            &read(u.join("unit.json")),
            s,
            "{} was recomputed",
            u.display()
        );
    }
    assert_eq!(
        read(d.join("results/reuse/report.md")),
        read(d.join("ref-results/reuse/report.md"))
    );
    assert_eq!(
        read(d.join("results/reuse/reuse.csv")),
        read(d.join("ref-results/reuse/reuse.csv"))
    );
    finished_units(&d.join("runs"));
}

#[test]
fn sharded_runs_merge_into_the_unsharded_report() {
    let t = tempfile::tempdir().expect("tempdir");
    let d = t.path();
    let m = fixture(d);
    for name in ["replace", "reuse"] {
        let manifest = m.join(format!("{name}.toml")).display().to_string();
        run_ok(xtask(d, "one", "one-results", &[&manifest]));
        let s0 = run_ok(xtask(
            d,
            "sharded",
            "sharded-results",
            &[&manifest, "--shard", "0/2"],
        ));
        assert!(s0.contains("no report"), "{s0}");
        run_ok(xtask(
            d,
            "sharded",
            "sharded-results",
            &[&manifest, "--shard", "1/2"],
        ));
        assert!(!d.join(format!("sharded-results/{name}/report.md")).exists());
        // The shards split the per-class units between them.
        let decomposed = std::fs::read_dir(d.join("sharded/store/decompose"))
            .expect("decompose units")
            .count();
        assert!(decomposed >= 3, "{decomposed}");
        run_ok(xtask(d, "sharded", "sharded-results", &[&manifest]));
        if name == "reuse" {
            // Table 2 carries each pair's MA - TMA with its paired bootstrap interval, and
            // the mean's.
            let v: serde_json::Value =
                serde_json::from_str(&read(d.join("one-results/reuse/reuse.json"))).expect("json");
            let pairs = v["pairs"].as_array().expect("pairs");
            assert_eq!(pairs.len(), 3);
            let ci = |x: &serde_json::Value| -> [f64; 3] {
                ["diff", "lo", "hi"].map(|k| x[k].as_f64().unwrap_or_else(|| panic!("{k}: {x}")))
            };
            for p in pairs.iter().chain([&v["mean"]]) {
                let [diff, lo, hi] = ci(&p["delta_ci"]);
                assert!(
                    (diff - p["delta"].as_f64().expect("delta")).abs() < 1e-9,
                    "{p}"
                );
                assert!(lo <= diff && diff <= hi, "{p}");
            }
            assert!(read(d.join("one-results/reuse/report.md")).contains("MA − TMA [95% CI]"));
        }
        for f in ["report.md".to_string(), format!("{name}.csv")] {
            assert_eq!(
                read(d.join(format!("sharded-results/{name}/{f}"))),
                read(d.join(format!("one-results/{name}/{f}"))),
                "{name}/{f}"
            );
        }
    }
    // Stage selection: --only report rebuilds the report from artifacts alone.
    let manifest = m.join("replace.toml").display().to_string();
    let first = read(d.join("one-results/replace/report.md"));
    run_ok(xtask(
        d,
        "one",
        "one-results",
        &[&manifest, "--only", "report"],
    ));
    assert_eq!(read(d.join("one-results/replace/report.md")), first);
    let mut c = xtask(d, "empty", "empty-results", &[&manifest, "--only", "vote"]);
    let out = c.output().expect("spawn");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no finished artifact"));
}

/// Committed reports hold no absolute path of the machine that wrote them: every JSON string
/// under results/ that names a path is relative (to the repository or to its run folder).
#[test]
fn committed_results_hold_no_absolute_paths() {
    fn strings<'a>(v: &'a serde_json::Value, out: &mut Vec<&'a str>) {
        match v {
            serde_json::Value::String(s) => out.push(s),
            serde_json::Value::Array(a) => a.iter().for_each(|x| strings(x, out)),
            serde_json::Value::Object(o) => o.values().for_each(|x| strings(x, out)),
            _ => {}
        }
    }
    fn walk(dir: &Path, bad: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).expect("results folder") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                walk(&p, bad);
            } else if p.extension().is_some_and(|x| x == "json") {
                let text = std::fs::read_to_string(&p).expect("read");
                let v: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
                let mut all = Vec::new();
                strings(&v, &mut all);
                bad.extend(
                    all.into_iter()
                        .filter(|s| s.len() > 1 && Path::new(s).is_absolute())
                        .map(|s| format!("{}: {s}", p.display())),
                );
            }
        }
    }
    let results = Path::new(env!("CARGO_MANIFEST_DIR")).join("../results");
    let mut bad = Vec::new();
    walk(&results, &mut bad);
    assert!(
        bad.is_empty(),
        "absolute paths in committed results: {bad:#?}"
    );
}
