//! `cargo xtask carry save|restore`: work that outlives the machine.
//!
//! A long training runs as a resumable unit in `runs/store/train/<unit>.partial` (see
//! `engine.rs`) and finished units are reused from `runs/store/<stage>/<unit>/`; `runs/` is
//! not versioned, so a new machine or a fresh checkout starts them again. `carry save` copies
//! to a versioned folder (`models/carry/` by default), to be committed:
//! - every paused training run folder (the checkpoint, the best model so far, the metrics);
//! - every finished unit of any stage whose work took at least `min_wall_s` (a model an
//!   experiment trained for a later stage, trained modules), without a finished training
//!   unit's `last.ckpt` (only a paused run needs it);
//!
//! and `carry restore` puts them back in the store, where the next `run-experiment` reuses
//! the finished units and continues the paused ones (`decomp train --resume`). Units whose
//! model is published and reused from there are never carried: those adopted from it
//! (`adopted_from` in their `unit.json`) and those whose key a `<run>.train.json` record of
//! the published folder (`published`, the zoo's weights) holds.
//!
//! Neither direction replaces progress by less of it: a carried run folder is only replaced
//! by one with at least as many epochs, and a store folder only by a carried one with more;
//! a finished unit drops the carried copy of its `.partial`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// Epochs a run folder has finished (`metrics.json`'s epoch list; 0 without one).
fn epochs(dir: &Path) -> Result<usize> {
    let m = dir.join("metrics.json");
    if !m.is_file() {
        return Ok(0);
    }
    let v: Value = crate::engine::read(&m)?;
    Ok(v["epochs"].as_array().map_or(0, Vec::len))
}

/// The keys of the published models' records (`<published>/*.train.json`).
fn published_keys(published: &Path) -> Result<Vec<Value>> {
    let mut keys = Vec::new();
    let Ok(entries) = std::fs::read_dir(published) else {
        return Ok(keys);
    };
    for e in entries {
        let p = e?.path();
        if p.to_string_lossy().ends_with(".train.json") {
            let v: Value = crate::engine::read(&p)?;
            keys.push(v["key"].clone());
        }
    }
    Ok(keys)
}

/// What `save` does with one store folder.
#[derive(Debug, PartialEq)]
enum Pick {
    Partial,
    Finished,
    Skip,
}

fn pick(dir: &Path, min_wall_s: f64, published: &[Value]) -> Pick {
    let name = name_of(dir).unwrap_or_default();
    if !dir.is_dir() || name.contains(".tmp-") || name.contains(".old-") {
        return Pick::Skip;
    }
    if name.ends_with(".partial") {
        return if dir.join("last.ckpt").is_file() {
            Pick::Partial
        } else {
            Pick::Skip
        };
    }
    let Ok(unit) = crate::engine::read::<Value>(&dir.join("unit.json")) else {
        return Pick::Skip;
    };
    let long = unit["wall_s"].as_f64().is_some_and(|w| w >= min_wall_s);
    if long && unit["adopted_from"].is_null() && !published.contains(&unit["key"]) {
        Pick::Finished
    } else {
        Pick::Skip
    }
}

/// Copies folder `from` (recursively; without files named in `skip`) to `to` through a
/// temporary folder and a rename, so that `to` is never half written.
fn copy_folder(from: &Path, to: &Path, skip: &[&str]) -> Result<()> {
    fn copy(from: &Path, to: &Path, skip: &[&str]) -> Result<()> {
        std::fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
        for e in std::fs::read_dir(from).with_context(|| format!("listing {}", from.display()))? {
            let p = e?.path();
            let name = p.file_name().context("named")?;
            if p.is_dir() {
                copy(&p, &to.join(name), skip)?;
            } else if p.is_file() {
                if !skip.iter().any(|s| name == *s) {
                    std::fs::copy(&p, to.join(name))
                        .with_context(|| format!("copying {} to {}", p.display(), to.display()))?;
                }
            } else {
                bail!("{}: not a file or folder", p.display());
            }
        }
        Ok(())
    }
    let tmp = PathBuf::from(format!("{}.tmp-{}", to.display(), std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    copy(from, &tmp, skip)?;
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

/// The folders in `dir`, sorted (none when `dir` does not exist).
fn subfolders(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    };
    let mut out = Vec::new();
    for e in entries {
        let p = e
            .with_context(|| format!("listing {}", dir.display()))?
            .path();
        if p.is_dir() {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

/// A folder's last name.
fn name_of(p: &Path) -> Result<String> {
    Ok(p.file_name()
        .with_context(|| format!("{} has no name", p.display()))?
        .to_string_lossy()
        .to_string())
}

/// `carry save`: the store's paused runs and long finished units to `carry`. Returns one
/// line per folder.
pub fn save(store: &Path, carry: &Path, min_wall_s: f64, published: &Path) -> Result<Vec<String>> {
    let keys = published_keys(published)?;
    let mut lines = Vec::new();
    for src in subfolders(store)? {
        let stage = name_of(&src)?;
        let dst = carry.join(&stage);
        for dir in subfolders(&src)? {
            // A unit whose paused run is carried is carried once finished, however short its
            // last slice was (its `wall_s` counts that slice only): else dropping the carried
            // run below would lose the work.
            let slices = dst.join(format!("{}.partial", name_of(&dir)?)).is_dir();
            let what = pick(&dir, if slices { 0.0 } else { min_wall_s }, &keys);
            if what == Pick::Skip {
                continue;
            }
            let name = name_of(&dir)?;
            let to = dst.join(&name);
            if what == Pick::Partial {
                let (have, kept) = (epochs(&dir)?, epochs(&to)?);
                if to.exists() && have < kept {
                    lines.push(format!(
                        "{stage}/{name}: kept the carried copy ({kept} epochs; the store has {have}: run `carry restore` first)"
                    ));
                    continue;
                }
                copy_folder(&dir, &to, &[])?;
                lines.push(format!("{stage}/{name}: saved ({have} epochs)"));
            } else if !to.join("unit.json").is_file() {
                copy_folder(&dir, &to, &["last.ckpt"])?;
                lines.push(format!("{stage}/{name}: saved (finished)"));
            }
        }
        // A carried `.partial` whose unit has finished is done with.
        for p in subfolders(&dst)? {
            let name = name_of(&p)?;
            if let Some(f) = finished_name(&name)
                && (src.join(f).join("unit.json").is_file()
                    || dst.join(f).join("unit.json").is_file())
            {
                std::fs::remove_dir_all(&p).with_context(|| format!("removing {}", p.display()))?;
                lines.push(format!("{stage}/{name}: dropped (the unit has finished)"));
            }
        }
    }
    Ok(lines)
}

/// `carry restore`: carried folders back into the store, where it has less of them.
pub fn restore(store: &Path, carry: &Path) -> Result<Vec<String>> {
    let mut lines = Vec::new();
    for src in subfolders(carry)? {
        let stage = name_of(&src)?;
        let dst = store.join(&stage);
        std::fs::create_dir_all(&dst).with_context(|| format!("creating {}", dst.display()))?;
        for dir in subfolders(&src)? {
            let name = name_of(&dir)?;
            if name.contains(".tmp-") {
                continue;
            }
            let to = dst.join(&name);
            let unit = finished_name(&name).unwrap_or(&name);
            if dst.join(unit).join("unit.json").is_file() {
                lines.push(format!("{stage}/{name}: the store has the finished unit"));
                continue;
            }
            if name.ends_with(".partial") {
                let (have, carried) = (epochs(&to)?, epochs(&dir)?);
                if to.exists() && have >= carried {
                    lines.push(format!(
                        "{stage}/{name}: the store is as far or further ({have} epochs, carried {carried})"
                    ));
                    continue;
                }
                copy_folder(&dir, &to, &[])?;
                lines.push(format!("{stage}/{name}: restored ({carried} epochs)"));
            } else {
                copy_folder(&dir, &to, &[])?;
                lines.push(format!("{stage}/{name}: restored (finished)"));
            }
        }
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

    fn finished(dir: &Path, unit: Value) {
        std::fs::create_dir_all(dir.join("modules")).expect("mkdir");
        std::fs::write(dir.join("unit.json"), unit.to_string()).expect("unit");
        std::fs::write(dir.join("last.ckpt"), "ckpt").expect("ckpt");
        std::fs::write(dir.join("modules/m.mod"), "module").expect("module");
    }

    fn ckpt(dir: &Path) -> String {
        std::fs::read_to_string(dir.join("last.ckpt")).expect("ckpt")
    }

    #[test]
    fn progress_goes_both_ways_and_never_backwards() {
        let t = tempfile::tempdir().expect("tmp");
        let (store, carry, zoo) = (
            t.path().join("store"),
            t.path().join("carry"),
            t.path().join("zoo"),
        );
        let run = store.join("train/a-1.partial");
        run_folder(&run, 3);
        // Work folders of running processes, short units, units adopted from a published
        // model and units a published record names are not carried; long ones are.
        std::fs::create_dir_all(store.join("train/b-2.tmp-host-1")).expect("tmp");
        finished(
            &store.join("tangle/short-1"),
            serde_json::json!({ "wall_s": 5.0, "key": 1 }),
        );
        finished(
            &store.join("tangle/long-2"),
            serde_json::json!({ "wall_s": 900.0, "key": 2 }),
        );
        finished(
            &store.join("train/adopted-3"),
            serde_json::json!({ "wall_s": 0.0, "key": 3, "adopted_from": ["x"] }),
        );
        finished(
            &store.join("train/zoo-4"),
            serde_json::json!({ "wall_s": 900.0, "key": 4 }),
        );
        std::fs::create_dir_all(&zoo).expect("mkdir");
        std::fs::write(zoo.join("zoo.train.json"), r#"{"key": 4, "sha256": "0"}"#).expect("rec");
        save(&store, &carry, 600.0, &zoo).expect("save");
        let carried = carry.join("train/a-1.partial");
        assert_eq!(ckpt(&carried), "ckpt 3");
        for gone in [
            "train/b-2.tmp-host-1",
            "tangle/short-1",
            "train/adopted-3",
            "train/zoo-4",
        ] {
            assert!(!carry.join(gone).exists(), "{gone} carried");
        }
        let long = carry.join("tangle/long-2");
        assert!(long.join("modules/m.mod").is_file());
        assert!(
            !long.join("last.ckpt").exists(),
            "a finished unit's checkpoint is not carried"
        );

        // A new machine: the store is empty; restore brings both back.
        std::fs::remove_dir_all(&store).expect("rm");
        let lines = restore(&store, &carry).expect("restore");
        assert_eq!(ckpt(&run), "ckpt 3", "{lines:?}");
        assert!(store.join("tangle/long-2/unit.json").is_file());

        // Saving a store that is behind the carried copy keeps the carried copy.
        run_folder(&run, 1);
        save(&store, &carry, 600.0, &zoo).expect("save");
        assert_eq!(ckpt(&carried), "ckpt 3");
        // ... and restoring brings the store forward, never back.
        restore(&store, &carry).expect("restore");
        assert_eq!(ckpt(&run), "ckpt 3");
        run_folder(&run, 5);
        restore(&store, &carry).expect("restore");
        assert_eq!(ckpt(&run), "ckpt 5");

        // Once the unit finishes, its carried `.partial` is dropped and not restored.
        finished(
            &store.join("train/a-1"),
            serde_json::json!({ "wall_s": 10.0, "key": 5 }),
        );
        std::fs::remove_dir_all(&run).expect("rm");
        restore(&store, &carry).expect("restore");
        assert!(!run.exists());
        save(&store, &carry, 600.0, &zoo).expect("save");
        assert!(!carried.exists());
        assert!(
            carry.join("train/a-1/unit.json").is_file(),
            "the finished unit replaces its carried run, however short its last slice"
        );
    }
}
