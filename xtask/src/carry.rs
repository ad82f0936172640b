//! `cargo xtask carry save|restore`: training progress that outlives the machine.
//!
//! A long training runs as a resumable unit in `runs/store/train/<unit>.partial` (see
//! `engine.rs`); `runs/` is not versioned, so a new machine or a fresh checkout starts it
//! again from epoch 0. `carry save` copies every such run folder (the checkpoint, the best
//! model so far, the metrics) to a versioned folder (`models/carry/` by default) to be
//! committed; `carry restore` puts them back in the store, where the next
//! `run-experiment` continues them (`decomp train --resume`). With `--finished`, finished
//! training units are carried too (a model an experiment trained for a later stage).
//! Units whose model was published and is reused from there (`adopted_from` in their
//! `unit.json`) are never carried.
//!
//! Neither direction replaces progress by less of it: a carried run folder is only
//! replaced by one with at least as many epochs, and a store folder only by a carried one
//! with more; a finished unit drops the carried copy of its `.partial`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// The stage whose units carry (the resumable one).
const STAGE: &str = "train";

/// Epochs a run folder has finished (`metrics.json`'s epoch list; 0 without one).
fn epochs(dir: &Path) -> Result<usize> {
    let m = dir.join("metrics.json");
    if !m.is_file() {
        return Ok(0);
    }
    let v: Value = crate::engine::read(&m)?;
    Ok(v["epochs"].as_array().map_or(0, Vec::len))
}

/// Whether `dir` is a finished unit put in place from a published model.
fn adopted(dir: &Path) -> bool {
    crate::engine::read::<Value>(&dir.join("unit.json")).is_ok_and(|v| !v["adopted_from"].is_null())
}

/// The run folders of `stage_dir` to carry: `.partial` folders with a checkpoint, and
/// (with `finished`) finished units not adopted from a published model.
fn carried_folders(stage_dir: &Path, finished: bool) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(stage_dir) else {
        return Ok(out);
    };
    for e in entries {
        let p = e?.path();
        let name = p.file_name().map(|n| n.to_string_lossy().to_string());
        let Some(name) = name else { continue };
        if !p.is_dir() || name.contains(".tmp-") || name.contains(".old-") {
            continue;
        }
        let keep = if name.ends_with(".partial") {
            p.join("last.ckpt").is_file()
        } else {
            finished && p.join("unit.json").is_file() && !adopted(&p)
        };
        if keep {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

/// Copies the files of `from` (a flat run folder) to `to` through a temporary folder and
/// a rename, so that `to` is never half written.
fn copy_folder(from: &Path, to: &Path) -> Result<()> {
    let tmp = PathBuf::from(format!("{}.tmp-{}", to.display(), std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    for e in std::fs::read_dir(from).with_context(|| format!("listing {}", from.display()))? {
        let p = e?.path();
        if p.is_dir() {
            bail!(
                "{}: a run folder holds only files, found the folder {}",
                from.display(),
                p.display()
            );
        }
        let name = p.file_name().context("named")?;
        std::fs::copy(&p, tmp.join(name))
            .with_context(|| format!("copying {} to {}", p.display(), tmp.display()))?;
    }
    if to.exists() {
        std::fs::remove_dir_all(to).with_context(|| format!("removing {}", to.display()))?;
    }
    std::fs::rename(&tmp, to)
        .with_context(|| format!("renaming {} to {}", tmp.display(), to.display()))?;
    Ok(())
}

/// The finished unit folder of a `.partial` folder name (`x.partial` -> `x`).
fn finished_name(name: &str) -> Option<&str> {
    name.strip_suffix(".partial")
}

/// `carry save`: the store's run folders to `carry`. Returns one line per folder.
pub fn save(store: &Path, carry: &Path, finished: bool) -> Result<Vec<String>> {
    let src = store.join(STAGE);
    let dst = carry.join(STAGE);
    std::fs::create_dir_all(&dst).with_context(|| format!("creating {}", dst.display()))?;
    let mut lines = Vec::new();
    for dir in carried_folders(&src, finished)? {
        let name = dir
            .file_name()
            .context("named")?
            .to_string_lossy()
            .to_string();
        let to = dst.join(&name);
        let (have, kept) = (epochs(&dir)?, epochs(&to)?);
        if to.exists() && have < kept {
            lines.push(format!(
                "{name}: kept the carried copy ({kept} epochs; the store has {have}: run `carry restore` first)"
            ));
            continue;
        }
        copy_folder(&dir, &to)?;
        lines.push(format!("{name}: saved ({have} epochs)"));
    }
    // A carried `.partial` whose unit has finished in the store is done with.
    for e in std::fs::read_dir(&dst).with_context(|| format!("listing {}", dst.display()))? {
        let p = e?.path();
        let name = p
            .file_name()
            .context("named")?
            .to_string_lossy()
            .to_string();
        if let Some(f) = finished_name(&name)
            && src.join(f).join("unit.json").is_file()
        {
            std::fs::remove_dir_all(&p).with_context(|| format!("removing {}", p.display()))?;
            lines.push(format!("{name}: dropped (the unit has finished)"));
        }
    }
    Ok(lines)
}

/// `carry restore`: carried run folders back into the store, where it has less of them.
pub fn restore(store: &Path, carry: &Path) -> Result<Vec<String>> {
    let src = carry.join(STAGE);
    let dst = store.join(STAGE);
    let mut lines = Vec::new();
    if !src.is_dir() {
        return Ok(lines);
    }
    std::fs::create_dir_all(&dst).with_context(|| format!("creating {}", dst.display()))?;
    for dir in carried_folders(&src, true)? {
        let name = dir
            .file_name()
            .context("named")?
            .to_string_lossy()
            .to_string();
        let to = dst.join(&name);
        let finished =
            finished_name(&name).is_some_and(|f| dst.join(f).join("unit.json").is_file());
        if finished || (!name.ends_with(".partial") && to.join("unit.json").is_file()) {
            lines.push(format!("{name}: the store has the finished unit"));
            continue;
        }
        let (have, carried) = (epochs(&to)?, epochs(&dir)?);
        if to.exists() && have >= carried {
            lines.push(format!(
                "{name}: the store is as far or further ({have} epochs, carried {carried})"
            ));
            continue;
        }
        copy_folder(&dir, &to)?;
        lines.push(format!("{name}: restored ({carried} epochs)"));
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_folder(dir: &Path, epochs: usize) {
        std::fs::create_dir_all(dir).expect("mkdir");
        std::fs::write(dir.join("last.ckpt"), format!("ckpt {epochs}")).expect("ckpt");
        let e: Vec<Value> = (0..epochs)
            .map(|i| serde_json::json!({ "epoch": i }))
            .collect();
        std::fs::write(
            dir.join("metrics.json"),
            serde_json::json!({ "epochs": e }).to_string(),
        )
        .expect("metrics");
    }

    fn ckpt(dir: &Path) -> String {
        std::fs::read_to_string(dir.join("last.ckpt")).expect("ckpt")
    }

    #[test]
    fn progress_goes_both_ways_and_never_backwards() {
        let t = tempfile::tempdir().expect("tmp");
        let (store, carry) = (t.path().join("store"), t.path().join("carry"));
        let run = store.join("train/a-1.partial");
        run_folder(&run, 3);
        // Work folders of running processes and adopted units are not carried.
        std::fs::create_dir_all(store.join("train/b-2.tmp-host-1")).expect("tmp");
        let adopted = store.join("train/c-3");
        std::fs::create_dir_all(&adopted).expect("mkdir");
        std::fs::write(adopted.join("unit.json"), r#"{"adopted_from": ["x"]}"#).expect("unit");
        save(&store, &carry, true).expect("save");
        let carried = carry.join("train/a-1.partial");
        assert_eq!(ckpt(&carried), "ckpt 3");
        assert!(!carry.join("train/b-2.tmp-host-1").exists());
        assert!(!carry.join("train/c-3").exists());

        // A new machine: the store is empty; restore brings the run back.
        std::fs::remove_dir_all(&store).expect("rm");
        let lines = restore(&store, &carry).expect("restore");
        assert_eq!(ckpt(&run), "ckpt 3", "{lines:?}");

        // Saving a store that is behind the carried copy keeps the carried copy.
        run_folder(&run, 1);
        save(&store, &carry, false).expect("save");
        assert_eq!(ckpt(&carried), "ckpt 3");
        // ... and restoring brings the store forward, never back.
        restore(&store, &carry).expect("restore");
        assert_eq!(ckpt(&run), "ckpt 3");
        run_folder(&run, 5);
        restore(&store, &carry).expect("restore");
        assert_eq!(ckpt(&run), "ckpt 5");

        // Once the unit finishes, its carried `.partial` is dropped and not restored.
        std::fs::create_dir_all(store.join("train/a-1")).expect("mkdir");
        std::fs::write(store.join("train/a-1/unit.json"), "{}").expect("unit");
        std::fs::remove_dir_all(&run).expect("rm");
        restore(&store, &carry).expect("restore");
        assert!(!run.exists());
        save(&store, &carry, false).expect("save");
        assert!(!carried.exists());
    }
}
