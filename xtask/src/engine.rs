//! The stage engine: content-addressed unit artifacts, resumption, stage selection, shards.
//!
//! A *unit* is one piece of work of one stage (decompose class 3 of a model, train the TMA
//! of pair (2, 7), compute the margins of a model's modules on the test set). Its *key* is
//! a JSON value holding everything that changes its output: the configuration, the content
//! hashes of the files it reads (models, modules, dataset files) and the keys of the units
//! it consumes. The unit's artifacts live in `<store>/<stage>/<name>-<hash of key>/`.
//!
//! **Invariant:** a unit folder exists only when complete. Work happens in a private
//! `<folder>.tmp-<host>-<pid>` folder, `unit.json` is written last, and the folder is renamed
//! into place; a killed run leaves only `.tmp-*` folders, which are never read and are removed
//! when the unit runs again. Training units work in `<folder>.partial` instead, so a killed
//! training run resumes from its last checkpoint (`decomp train --resume`).
//!
//! Equal keys share artifacts across experiments (table4 and table6 decompose the same
//! models once).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// How a stage's units are distributed over shards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Cheap, needed by every shard (importing a model): runs everywhere.
    Shared,
    /// Per-class work: unit `i` of the stage runs in shard `i mod n`.
    PerUnit,
    /// Needs every per-unit artifact (margins over the test set, votes, the report): runs
    /// only without `--shard`, i.e. in the merge step.
    Merge,
}

/// Which stages run: `--only`, `--from`, `--shard`.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    pub only: Option<String>,
    pub from: Option<String>,
    pub shard: Option<(usize, usize)>,
}

impl Selection {
    pub fn parse_shard(s: &str) -> Result<(usize, usize)> {
        let (i, n) = s
            .split_once('/')
            .with_context(|| format!("--shard {s:?}: expected I/N, e.g. 0/2"))?;
        let i: usize = i
            .parse()
            .with_context(|| format!("--shard {s:?}: {i:?} is not a number"))?;
        let n: usize = n
            .parse()
            .with_context(|| format!("--shard {s:?}: {n:?} is not a number"))?;
        if n == 0 || i >= n {
            bail!("--shard {s:?}: expected 0 <= I < N");
        }
        Ok((i, n))
    }
}

pub struct Engine {
    /// The `decomp` binary.
    pub decomp: PathBuf,
    pub device: String,
    pub store: PathBuf,
    pub sel: Selection,
    /// Stage names of the running experiment, in order (for `--from` / `--only` checks).
    pub stages: Vec<&'static str>,
    /// Content hashes of files read so far (path, length, mtime) -> sha256.
    hashes: Mutex<HashMap<(PathBuf, u64, std::time::SystemTime), String>>,
    /// Units run (not reused) by this process, for the closing summary.
    pub ran: Mutex<Vec<String>>,
    /// Resumable units this process advanced without finishing (`--epochs-now`): their
    /// work folders hold the progress; a later run continues them.
    pub paused: Mutex<Vec<String>>,
    /// `--epochs-now N`: training units run at most N epochs in this process, then pause.
    pub epochs_now: Option<usize>,
    /// The index a per-unit unit was first asked for with, shared by the engines of one
    /// suite: a unit that two members ask for under different indices (table2 decomposes
    /// classes table4 also does) stays with one shard, so two shards never compute it.
    first_index: std::sync::Arc<Mutex<HashMap<PathBuf, usize>>>,
}

/// Stages whose units work in `<folder>.partial` and continue there after a kill or a
/// pause (`decomp train --resume`), instead of a private `.tmp-*` folder started afresh.
pub const RESUMABLE: &[&str] = &["train"];

/// What a resumable unit's work reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// The artifacts are complete: the unit folder is put in place.
    Finished,
    /// Stopped early on purpose (`--epochs-now`); the work folder continues next time.
    Paused,
}

/// What `unit.json` holds.
pub fn unit_record(stage: &str, name: &str, key: &Value, wall_s: f64) -> Value {
    json!({ "stage": stage, "name": name, "key": key, "wall_s": wall_s })
}

/// The part of `unit.json` ([`unit_record`]) read back.
#[derive(Clone, Debug, serde::Deserialize)]
pub struct UnitRecord {
    /// Seconds the unit's work took.
    pub wall_s: f64,
}

/// The wall time recorded in unit folder `dir`.
pub fn unit_wall_s(dir: &Path) -> Result<f64> {
    Ok(read::<UnitRecord>(&dir.join("unit.json"))?.wall_s)
}

impl Engine {
    pub fn new(decomp: PathBuf, device: String, store: PathBuf, sel: Selection) -> Self {
        Self {
            decomp,
            device,
            store,
            sel,
            stages: Vec::new(),
            hashes: Mutex::new(HashMap::new()),
            ran: Mutex::new(Vec::new()),
            paused: Mutex::new(Vec::new()),
            epochs_now: None,
            first_index: Default::default(),
        }
    }

    /// A fresh engine with the same binary, device, store and selection.
    pub fn clone_settings(&self) -> Self {
        let mut e = Self::new(
            self.decomp.clone(),
            self.device.clone(),
            self.store.clone(),
            self.sel.clone(),
        );
        e.first_index = self.first_index.clone();
        e.epochs_now = self.epochs_now;
        e
    }

    /// SHA-256 of a file's bytes (memoized by path, length and modification time).
    pub fn file_hash(&self, path: &Path) -> Result<String> {
        let meta =
            std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
        let id = (path.to_path_buf(), meta.len(), meta.modified()?);
        if let Some(h) = self.hashes.lock().expect("hash cache").get(&id) {
            return Ok(h.clone());
        }
        let mut f =
            std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let mut h = Sha256::new();
        std::io::copy(&mut f, &mut h).with_context(|| format!("reading {}", path.display()))?;
        let hex = hex::encode(h.finalize());
        self.hashes
            .lock()
            .expect("hash cache")
            .insert(id, hex.clone());
        Ok(hex)
    }

    /// One hash over every file under `dir` (relative names and contents), in name order.
    pub fn tree_hash(&self, dir: &Path) -> Result<String> {
        let mut files = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).with_context(|| format!("listing {}", d.display()))? {
                let p = e?.path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    files.push(p);
                }
            }
        }
        files.sort();
        let mut h = Sha256::new();
        for f in &files {
            h.update(
                f.strip_prefix(dir)
                    .unwrap_or(f)
                    .to_string_lossy()
                    .as_bytes(),
            );
            h.update(self.file_hash(f)?.as_bytes());
        }
        Ok(hex::encode(h.finalize()))
    }

    fn position(&self, stage: &str) -> Option<usize> {
        self.stages.iter().position(|s| *s == stage)
    }

    /// Whether `--only` / `--from` ask to (re)compute `stage`, and whether it may run at all.
    fn decide(&self, stage: &str) -> Result<(bool, bool)> {
        for s in [&self.sel.only, &self.sel.from].into_iter().flatten() {
            if self.position(s).is_none() {
                bail!(
                    "no stage {s:?} in this experiment; stages: {}",
                    self.stages.join(", ")
                );
            }
        }
        let here = self.position(stage).unwrap_or(0);
        Ok(match (&self.sel.only, &self.sel.from) {
            (Some(o), _) => (o == stage, o == stage),
            (None, Some(f)) => {
                let from = self.position(f).unwrap_or(0);
                (here >= from, here >= from)
            }
            (None, None) => (false, true),
        })
    }

    /// The work folder of a resumable unit (a paused or killed run's progress).
    pub fn partial_dir(&self, stage: &str, name: &str, key: &Value) -> PathBuf {
        partial(&self.unit_dir(stage, name, key))
    }

    /// The folder of a unit (complete or not).
    pub fn unit_dir(&self, stage: &str, name: &str, key: &Value) -> PathBuf {
        let h = hex::encode(Sha256::digest(key.to_string().as_bytes()));
        self.store.join(stage).join(format!("{name}-{}", &h[..16]))
    }

    /// Ensures the unit exists and returns its folder, or `None` when this process must not
    /// run it (another shard's unit, a merge stage under `--shard`).
    ///
    /// `make` builds the artifacts in the folder it is given. `index` orders the units of a
    /// per-unit stage for sharding.
    pub fn unit(
        &self,
        stage: &'static str,
        kind: Kind,
        index: usize,
        name: &str,
        key: &Value,
        make: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<Option<PathBuf>> {
        self.resumable_unit(stage, kind, index, name, key, |work| {
            make(work).map(|()| Progress::Finished)
        })
    }

    /// [`Engine::unit`] for work that may stop before it is finished (training with
    /// `--epochs-now`): when `make` returns [`Progress::Paused`], the work folder
    /// (`<folder>.partial`, never read as a finished unit) keeps the progress for the next
    /// run, the unit is listed in [`Engine::paused`] and `None` is returned.
    pub fn resumable_unit(
        &self,
        stage: &'static str,
        kind: Kind,
        index: usize,
        name: &str,
        key: &Value,
        make: impl FnOnce(&Path) -> Result<Progress>,
    ) -> Result<Option<PathBuf>> {
        let dir = self.unit_dir(stage, name, key);
        let done = dir.join("unit.json").is_file();
        let (force, may_run) = self.decide(stage)?;
        let mine = match (kind, self.sel.shard) {
            (_, None) | (Kind::Shared, _) => true,
            (Kind::PerUnit, Some((i, n))) => {
                let mut first = self.first_index.lock().expect("first index");
                *first.entry(dir.clone()).or_insert(index) % n == i
            }
            (Kind::Merge, Some(_)) => false,
        };
        if !mine {
            return Ok(done.then_some(dir));
        }
        if done && !force {
            return Ok(Some(dir));
        }
        if !may_run {
            bail!(
                "stage {stage:?} unit {name} has no finished artifact ({}); run the experiment without --only/--from, or with --only {stage}",
                dir.display()
            );
        }
        let parent = dir.parent().expect("unit folders live in a stage folder");
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
        let resumable = RESUMABLE.contains(&stage);
        let work = if resumable {
            partial(&dir)
        } else {
            PathBuf::from(format!("{}.tmp-{}", dir.display(), work_owner()))
        };
        // Leftovers of killed runs of this unit (never read): remove them.
        if let Ok(entries) = std::fs::read_dir(parent) {
            let prefix = format!("{}.tmp-", dir.file_name().expect("named").to_string_lossy());
            for e in entries.flatten() {
                let n = e.file_name().to_string_lossy().to_string();
                if n.starts_with(&prefix) && e.path() != work && stale(&n[prefix.len()..]) {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        if !resumable && work.exists() {
            std::fs::remove_dir_all(&work)?;
        }
        std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
        eprintln!("[{stage}] {name}: running ({})", dir.display());
        let start = Instant::now();
        let progress = make(&work).with_context(|| format!("stage {stage}, unit {name}"))?;
        if progress == Progress::Paused {
            if !resumable {
                bail!("stage {stage}, unit {name}: paused, but only {RESUMABLE:?} units resume");
            }
            eprintln!(
                "[{stage}] {name}: paused after {:.1} s; a later run continues {}",
                start.elapsed().as_secs_f64(),
                work.display()
            );
            self.paused
                .lock()
                .expect("paused")
                .push(format!("{stage}/{name}"));
            return Ok(None);
        }
        let record = unit_record(stage, name, key, start.elapsed().as_secs_f64());
        write_atomic(
            &work.join("unit.json"),
            &serde_json::to_string_pretty(&record)?,
        )?;
        // Tests widen the window between a finished work folder and its rename, so that a
        // kill lands exactly there.
        if let Some(ms) = std::env::var("DECOMP_XTASK_RENAME_DELAY_MS")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
        {
            std::thread::sleep(std::time::Duration::from_millis(ms));
        }
        if done {
            // Forced rerun: move the old result aside first.
            let old = PathBuf::from(format!("{}.old-{}", dir.display(), std::process::id()));
            std::fs::rename(&dir, &old)?;
            std::fs::remove_dir_all(&old)?;
        }
        if let Err(e) = std::fs::rename(&work, &dir) {
            // Another process finished the same unit first: keep its (identical-key) result.
            if dir.join("unit.json").is_file() {
                std::fs::remove_dir_all(&work)?;
            } else {
                return Err(e)
                    .with_context(|| format!("renaming {} to {}", work.display(), dir.display()));
            }
        }
        eprintln!(
            "[{stage}] {name}: done in {:.1} s",
            start.elapsed().as_secs_f64()
        );
        self.ran
            .lock()
            .expect("ran")
            .push(format!("{stage}/{name}"));
        Ok(Some(dir))
    }

    /// Puts a finished unit in place from artifacts kept elsewhere (a published model and
    /// its committed metrics) instead of computing it: each `(source, name)` is copied into
    /// the unit folder, whose `unit.json` records the key and where the files came from.
    /// A unit that is already finished is left as it is.
    pub fn adopt(
        &self,
        stage: &str,
        name: &str,
        key: &Value,
        files: &[(PathBuf, &str)],
    ) -> Result<PathBuf> {
        let dir = self.unit_dir(stage, name, key);
        if dir.join("unit.json").is_file() {
            return Ok(dir);
        }
        let work = PathBuf::from(format!("{}.tmp-{}", dir.display(), work_owner()));
        if work.exists() {
            std::fs::remove_dir_all(&work)?;
        }
        std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
        for (src, to) in files {
            std::fs::copy(src, work.join(to))
                .with_context(|| format!("copying {} into {}", src.display(), work.display()))?;
        }
        let mut record = unit_record(stage, name, key, 0.0);
        record["adopted_from"] = json!(
            files
                .iter()
                .map(|(p, _)| portable(&p.display().to_string(), &root()))
                .collect::<Vec<_>>()
        );
        write_atomic(
            &work.join("unit.json"),
            &serde_json::to_string_pretty(&record)?,
        )?;
        std::fs::rename(&work, &dir)
            .with_context(|| format!("renaming {} to {}", work.display(), dir.display()))?;
        eprintln!("[{stage}] {name}: adopted ({})", dir.display());
        Ok(dir)
    }

    /// Runs `decomp <args>` and returns its stdout; stderr goes to the terminal.
    pub fn decomp(&self, args: &[String]) -> Result<String> {
        eprintln!("+ decomp {}", args.join(" "));
        let out = Command::new(&self.decomp)
            .args(args)
            .stderr(std::process::Stdio::inherit())
            .output()
            .with_context(|| format!("spawning {}", self.decomp.display()))?;
        if !out.status.success() {
            bail!("decomp {} failed ({})", args.join(" "), out.status);
        }
        Ok(String::from_utf8(out.stdout)?)
    }
}

/// `<folder>.partial` (appended: unit names may hold dots).
fn partial(dir: &Path) -> PathBuf {
    PathBuf::from(format!("{}.partial", dir.display()))
}

/// `<host>-<pid>`: the suffix of this process's work folders. With the host in the name,
/// processes on different machines sharing one store (Slurm tasks) never pick the same
/// folder, and a process only judges the folders of its own machine.
fn work_owner() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().replace(['/', '-'], "_"))
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    format!("{host}-{}", std::process::id())
}

/// Whether a work folder with this suffix was left by a process of this machine that no
/// longer runs. Folders of other machines are left alone here (their process may still
/// run); the Slurm merge step removes them once no task runs.
fn stale(owner: &str) -> bool {
    match owner.rsplit_once('-') {
        Some((host, pid)) => {
            work_owner().rsplit_once('-').map(|(h, _)| h) == Some(host) && !pid_alive(pid)
        }
        // A folder of an older xtask: `.tmp-<pid>`.
        None => !pid_alive(owner),
    }
}

/// Whether a process with this id (a `.tmp-<pid>` suffix) still runs (Linux `/proc`).
fn pid_alive(pid: &str) -> bool {
    pid.parse::<u32>()
        .is_ok_and(|p| p != std::process::id() && Path::new(&format!("/proc/{p}")).exists())
}

/// Writes through a synced temporary file and a rename, so a file is never half written,
/// under the output policy of every decomp write (`decomp_ir::output`: regular files only,
/// through symlinks, umask honoured). The one writer of xtask's reports.
pub fn write_atomic(path: &Path, text: &str) -> Result<()> {
    decomp_ir::write_atomic(path, text.as_bytes())?;
    Ok(())
}

/// The workspace root (the folder above `xtask/`).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// `text` with this machine's absolute paths made relative to the workspace root: `<root>/x`
/// becomes `x`, `<root's parent>/y` becomes `../y` (`../shared/...`), so a committed report
/// is the same when the experiment is rerun in another checkout.
pub fn portable(text: &str, root: &Path) -> String {
    let mut out = text.replace(&format!("{}/", root.display()), "");
    if let Some(parent) = root.parent().filter(|p| p.components().count() > 1) {
        out = out.replace(&format!("{}/", parent.display()), "../");
    }
    out
}

/// Writes a committed report (`results/`): [`write_atomic`] of [`portable`] text.
pub fn write_report(path: &Path, text: &str) -> Result<()> {
    write_atomic(path, &portable(text, &root()))
}

/// Reads a JSON file as `T` (a stage output type of `decomp_eval::report`).
pub fn read<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| {
        format!(
            "{}: not a valid {}",
            path.display(),
            std::any::type_name::<T>()
                .rsplit("::")
                .next()
                .unwrap_or("report")
        )
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn reports_hold_no_absolute_paths_of_this_machine() {
        let root = Path::new("/home/u/decomp");
        let text = r#"{"m": "/home/u/decomp/runs/store/a.mod", "w": "/home/u/decomp/../shared/x.th", "s": "/home/u/shared/y", "o": "/opt/z"}"#;
        assert_eq!(
            super::portable(text, root),
            r#"{"m": "runs/store/a.mod", "w": "../shared/x.th", "s": "../shared/y", "o": "/opt/z"}"#
        );
        // A checkout at the file-system root keeps every other path as it is.
        assert_eq!(super::portable("/r/a /b", Path::new("/r")), "a /b");
    }

    use super::*;

    fn engine(store: &Path, sel: Selection) -> Engine {
        let mut e = Engine::new("decomp".into(), "cpu".into(), store.to_path_buf(), sel);
        e.stages = vec!["a", "b"];
        e
    }

    #[test]
    fn units_are_reused_forced_and_sharded() {
        let t = tempfile::tempdir().expect("tempdir");
        let e = engine(t.path(), Selection::default());
        let key = json!({"x": 1});
        let mut runs = 0;
        for _ in 0..2 {
            let d = e
                .unit("a", Kind::PerUnit, 0, "u", &key, |w| {
                    runs += 1;
                    std::fs::write(w.join("out"), "1").map_err(Into::into)
                })
                .expect("unit")
                .expect("dir");
            assert_eq!(std::fs::read_to_string(d.join("out")).expect("out"), "1");
        }
        assert_eq!(runs, 1, "the second call reuses the artifact");
        // A failed unit leaves no unit folder.
        let err = e.unit("a", Kind::PerUnit, 0, "v", &key, |_| bail!("boom"));
        assert!(err.is_err());
        assert!(!e.unit_dir("a", "v", &key).exists());
        // --only a forces; --only b refuses to build a missing `a` unit.
        let forced = engine(
            t.path(),
            Selection {
                only: Some("a".into()),
                ..Default::default()
            },
        );
        let mut again = false;
        forced
            .unit("a", Kind::PerUnit, 0, "u", &key, |_| {
                again = true;
                Ok(())
            })
            .expect("forced");
        assert!(again);
        let only_b = engine(
            t.path(),
            Selection {
                only: Some("b".into()),
                ..Default::default()
            },
        );
        let e2 = only_b.unit("a", Kind::PerUnit, 0, "w", &key, |_| Ok(()));
        assert!(e2.expect_err("missing").to_string().contains("--only a"));
        // Shard 1/2 skips unit 0 and merge stages.
        let s = engine(
            t.path(),
            Selection {
                shard: Some((1, 2)),
                ..Default::default()
            },
        );
        assert!(
            s.unit("a", Kind::PerUnit, 2, "x", &key, |_| Ok(()))
                .expect("skip")
                .is_none()
        );
        assert!(
            s.unit("b", Kind::Merge, 1, "y", &key, |_| Ok(()))
                .expect("skip")
                .is_none()
        );
        assert!(
            s.unit("a", Kind::PerUnit, 3, "z", &key, |_| Ok(()))
                .expect("run")
                .is_some()
        );
        // A unit asked for again under another index (by another suite member) keeps the
        // shard of its first index: first 4 (shard 0's), then 1, so shard 1 never runs it.
        let late = json!({"x": 2});
        let mut member = s.clone_settings();
        member.stages = vec!["a", "b"];
        let never = |_: &Path| -> Result<()> { panic!("shard 0's unit run by shard 1") };
        assert!(
            s.unit("a", Kind::PerUnit, 4, "late", &late, never)
                .expect("skip")
                .is_none()
        );
        assert!(
            member
                .unit("a", Kind::PerUnit, 1, "late", &late, never)
                .expect("skip")
                .is_none()
        );
        assert!(Selection::parse_shard("2/2").is_err());
        assert_eq!(Selection::parse_shard("1/3").expect("ok"), (1, 3));
    }

    #[test]
    fn only_dead_work_folders_of_this_host_are_stale() {
        let me = work_owner();
        let (host, _) = me.rsplit_once('-').expect("host-pid");
        // Above the largest pid Linux hands out (pid_max <= 2^22).
        assert!(stale(&format!("{host}-4194999")));
        assert!(!stale(&format!("{host}-1")), "pid 1 runs");
        assert!(!stale("another_host-4194999"), "another machine's folder");
        assert!(stale("4194999"), "an older xtask's .tmp-<pid>");
        assert!(!host.contains('-'));
    }
}
