//! `run-experiment --slurm` on a real single-node Slurm (`scripts/slurm-local.sh`: munged,
//! slurmctld and slurmd started for the test): a 2-task array, one task killed with SIGKILL
//! while a unit's work folder waits for its rename, the resubmitted task finishing it, the
//! merge step as a dependent job, and the merged report byte-identical to a local unsharded
//! run.
//!
//! Skips, saying why, when Slurm is not installed, unless `DECOMP_SLURM_REQUIRED` is set
//! (`.ci/run` sets it when it could install Slurm): then a missing Slurm is a failure.

use std::io::Read as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{finished_units, fixture, read, run_ok, work_folders, xtask};

/// Like `eprintln!`, but past the test harness's capture (straight to the process's
/// stderr), so skip reasons and wall times show in the CI log of passing tests too.
macro_rules! say {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($t)*);
    }};
}

/// One local Slurm at a time (tests of this binary run in parallel threads).
static SERIAL: Mutex<()> = Mutex::new(());

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/slurm-local.sh")
}

/// A running single-node Slurm, stopped on drop; the only one while it lives.
struct Cluster {
    dir: tempfile::TempDir,
    _serial: std::sync::MutexGuard<'static, ()>,
}

/// Two consecutive free TCP ports (slurmctld, slurmd).
fn free_ports() -> u16 {
    for _ in 0..100 {
        let a = TcpListener::bind("127.0.0.1:0").expect("bind");
        let p = a.local_addr().expect("addr").port();
        if p < u16::MAX && TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
            return p;
        }
    }
    panic!("no two consecutive free ports");
}

impl Cluster {
    fn start() -> Option<Cluster> {
        let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let dir = tempfile::Builder::new()
            .prefix("decomp-slurm-")
            .tempdir()
            .expect("tempdir");
        let out = Command::new("bash")
            .arg(script())
            .arg("start")
            .arg(dir.path())
            .env("SLURM_LOCAL_PORT", free_ports().to_string())
            .output()
            .expect("running scripts/slurm-local.sh");
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.code() == Some(3) && std::env::var_os("DECOMP_SLURM_REQUIRED").is_none() {
            say!("skipping the Slurm test: {}", stderr.trim());
            return None;
        }
        assert!(
            out.status.success(),
            "slurm-local.sh start failed: {stderr}"
        );
        Some(Cluster {
            dir,
            _serial: serial,
        })
    }

    fn conf(&self) -> PathBuf {
        self.dir.path().join("slurm.conf")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(script())
            .arg("stop")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .status();
    }
}

/// The log of shard 1's first attempt, once it exists: (array job id, path).
fn shard1_log(runs: &Path) -> Option<(String, PathBuf)> {
    for sub in std::fs::read_dir(runs.join("slurm")).ok()?.flatten() {
        for f in std::fs::read_dir(sub.path().join("logs")).ok()?.flatten() {
            let name = f.file_name().to_string_lossy().to_string();
            if let Some(job) = name.strip_suffix("_1.log") {
                return Some((job.to_string(), f.path()));
            }
        }
    }
    None
}

/// The unit folder shard 1 is working on in `stage`, from its log line
/// `[stage] name: running (<folder>)`, and its work folder once it exists, while the rename
/// is still at least `delay_ms / 2` away (its `unit.json` is missing or younger than that).
fn running_unit(log: &Path, stage: &str, delay_ms: u32) -> Option<(PathBuf, PathBuf)> {
    let text = std::fs::read_to_string(log).ok()?;
    let line = text
        .lines()
        .rev()
        .find(|l| l.starts_with(&format!("[{stage}]")) && l.contains(": running ("))?;
    let unit = PathBuf::from(line.rsplit_once(" (")?.1.strip_suffix(')')?);
    if unit.join("unit.json").is_file() {
        return None;
    }
    let prefix = format!("{}.tmp-", unit.file_name()?.to_string_lossy());
    let work = std::fs::read_dir(unit.parent()?)
        .ok()?
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with(&prefix))?
        .path();
    if let Ok(done) = std::fs::metadata(work.join("unit.json")) {
        let age = done.modified().ok()?.elapsed().unwrap_or_default();
        if age > Duration::from_millis(u64::from(delay_ms / 2)) {
            return None;
        }
    }
    Some((unit, work))
}

/// Runs `manifest` unsharded here (`one`) and as a 2-task Slurm array (`sl`), killing shard
/// 1 in the middle of its first `stage` unit; checks the resubmission, the store and that
/// both reports are identical. `extra`: further run-experiment flags of both runs;
/// `delay_ms`: how long every unit waits between its finished work folder and the rename
/// (a wider window for the kill).
fn killed_task_is_redone(
    cluster: &Cluster,
    d: &Path,
    manifest: &str,
    short: &str,
    extra: &[&str],
    files: &[&str],
    delay_ms: u32,
) {
    let started = Instant::now();
    let mut one = vec![manifest];
    one.extend(extra);
    run_ok(xtask(d, "one", "one-results", &one));
    say!(
        "{short}: unsharded local run in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let started = Instant::now();
    let mut args = vec![manifest, "--slurm", "--array", "2", "--poll", "0.5"];
    args.extend(extra);
    let mut c = xtask(d, "sl", "sl-results", &args);
    let follow_log = d.join("follow.log");
    let mut child = c
        .env("SLURM_CONF", cluster.conf())
        .env("DECOMP_XTASK_RENAME_DELAY_MS", delay_ms.to_string())
        .stdout(std::fs::File::create(&follow_log).expect("log"))
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn xtask --slurm");
    let runs = d.join("sl");
    let mut killed = None;
    while killed.is_none() && started.elapsed() < Duration::from_secs(600) {
        if let Some((job, log)) = shard1_log(&runs)
            && let Some((unit, work)) = running_unit(&log, "decompose", delay_ms)
        {
            let st = Command::new("scancel")
                .args(["--signal=KILL", "--full", &format!("{job}_1")])
                .env("SLURM_CONF", cluster.conf())
                .status()
                .expect("scancel");
            assert!(st.success());
            say!(
                "{short}: killed shard 1 (job {job}_1) in unit {} ({})",
                unit.display(),
                if work.join("unit.json").is_file() {
                    "its work folder complete, not renamed"
                } else {
                    "while computing it"
                }
            );
            killed = Some((unit, work, log));
        }
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let (unit, work, log) = killed.expect("shard 1 never ran a decompose unit");
    // The killed unit is not in place; its work folder is: make any read of it visible.
    std::thread::sleep(Duration::from_millis(500));
    assert!(!unit.exists(), "the killed unit must not be in place");
    for f in std::fs::read_dir(&work).into_iter().flatten().flatten() {
        if f.path().is_file() {
            std::fs::write(f.path(), "garbage").expect("corrupt");
        }
    }
    let mut stderr = String::new();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if started.elapsed() > Duration::from_secs(900) {
            let _ = child.kill();
            panic!("xtask --slurm did not finish in 900 s");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("stderr");
    let follow = read(follow_log);
    eprintln!("{follow}"); // shown when the test fails
    assert!(status.success(), "xtask --slurm failed: {stderr}\n{follow}");
    say!(
        "{short}: 2-task Slurm array with a killed task, resubmission and merge job in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(follow.contains("shard 1/2"), "{follow}");
    assert!(
        follow.contains("failed ("),
        "the kill is reported: {follow}"
    );
    assert!(
        follow.contains(&format!("log: {}", log.display())),
        "{follow}"
    );
    assert!(follow.contains("resubmitted shards 1 as job"), "{follow}");
    assert!(
        follow.contains("merge job") && follow.contains("report: "),
        "{follow}"
    );
    assert!(
        unit.join("unit.json").is_file(),
        "the killed unit was redone"
    );
    assert!(!work.exists(), "the killed task's work folder is removed");
    assert!(work_folders(&runs).is_empty(), "{:?}", work_folders(&runs));
    finished_units(&runs);
    for f in files {
        assert_eq!(
            read(d.join(format!("sl-results/{short}/{f}"))),
            read(d.join(format!("one-results/{short}/{f}"))),
            "{short}/{f}"
        );
    }
    // The private binaries of the submission are gone.
    let left: Vec<_> = std::fs::read_dir(runs.join("bin"))
        .expect("bin")
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn slurm_array_with_a_killed_task_merges_into_the_unsharded_report() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let t = tempfile::tempdir().expect("tempdir");
    let d = t.path();
    let m = fixture(d);
    let manifest = m.join("reuse.toml").display().to_string();
    killed_task_is_redone(
        &cluster,
        d,
        &manifest,
        "reuse",
        &[],
        &["report.md", "reuse.csv"],
        // Tiny units end in milliseconds: a 2 s window before each rename catches one.
        2000,
    );
}

/// `--wait` (the merge step runs here) with `--task-runs` (every task has its own store,
/// merged by the merge step) on the tiny replace manifest: the report of an unsharded run.
#[test]
fn slurm_wait_with_task_runs_merges_here() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let t = tempfile::tempdir().expect("tempdir");
    let d = t.path();
    let manifest = fixture(d).join("replace.toml").display().to_string();
    run_ok(xtask(d, "one", "one-results", &[&manifest]));
    let started = Instant::now();
    let mut c = xtask(
        d,
        "sl",
        "sl-results",
        &[
            &manifest,
            "--slurm",
            "--array",
            "2",
            "--wait",
            "--task-runs",
            "--poll",
            "0.5",
        ],
    );
    c.env("SLURM_CONF", cluster.conf());
    let out = run_ok(c);
    say!(
        "replace: 2-task Slurm array, --wait --task-runs, merged here in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(out.contains("merge step here"), "{out}");
    for shard in ["0", "1"] {
        let units = finished_units(&d.join("sl/tasks").join(shard));
        assert!(units.len() >= 10, "shard {shard}: {units:?}");
    }
    finished_units(&d.join("sl"));
    for f in ["report.md", "replace.csv"] {
        assert_eq!(
            read(d.join(format!("sl-results/replace/{f}"))),
            read(d.join(format!("one-results/replace/{f}"))),
            "replace/{f}"
        );
    }
}

/// The real thing: `experiments/slurm-r20.toml` (pretrained ResNet-20, CIFAR-10 from
/// `../shared`), decomposed and composed by a 2-task array.
#[test]
fn slurm_array_decomposes_real_resnet20() {
    let shared = std::env::var_os("DECOMP_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared"));
    let (data, models) = (shared.join("datasets"), shared.join("models/cifar10"));
    if !data.join("cifar-10-batches-bin").is_dir() || !models.join("resnet20-12fca82f.th").is_file()
    {
        say!(
            "skipping: no CIFAR-10 and ResNet-20 under {} (set DECOMP_SHARED_DIR)",
            shared.display()
        );
        return;
    }
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let t = tempfile::tempdir().expect("tempdir");
    let d = t.path();
    // xtask() names the tiny fixture's data folder; the real one replaces it.
    std::os::unix::fs::symlink(&data, d.join("data")).expect("symlink");
    let models = models.display().to_string();
    killed_task_is_redone(
        &cluster,
        d,
        "slurm-r20",
        "slurm-r20",
        &["--models-dir", &models],
        &["report.md", "slurm-r20.csv"],
        // Units take seconds here: the kill lands while one is being computed.
        200,
    );
}
