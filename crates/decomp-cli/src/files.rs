//! Every file a command reads or writes goes through here.
//!
//! - Inputs are registered as they are resolved ([`input`], [`input_tree`] for dataset
//!   folders); an output that is one of them (same canonical path or the same file under
//!   another name), or lies inside an input folder, is refused before anything is written
//!   ([`check_output`]), so `--out` never destroys what the command reads.
//! - Writes follow `decomp_ir::output`'s policy (regular files only, through symlinks,
//!   umask honoured, atomic).
//! - Text inputs (margins, specs, recipes) are read with a size limit ([`read_text`]).
//! - stdout closed early (`decomp inspect x | head -1`) ends printing quietly ([`outln!`]).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, bail};
use decomp_ir::output::FileId;

/// The inputs of this command: (as named, identity, whether a folder whose contents are all
/// inputs).
static INPUTS: Mutex<Vec<(PathBuf, FileId, bool)>> = Mutex::new(Vec::new());

fn register(path: &Path, tree: bool) {
    if let Some(id) = FileId::of(path) {
        INPUTS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((path.to_path_buf(), id, tree));
    }
}

/// Registers an input file of this command (ignored when it does not exist: reading it
/// will fail with its own message).
pub fn input(path: &Path) {
    register(path, false);
}

/// Registers a folder all of whose files are inputs (a dataset folder).
pub fn input_tree(path: &Path) {
    register(path, true);
}

/// Refuses `path` as an output when it is a special file or folder, or when it is (or, for
/// a registered folder, lies inside) an input of this command.
pub fn check_output(path: &Path) -> Result<()> {
    let target = decomp_ir::output::resolve_output(path)?;
    let Some(out) = FileId::of_output(&target) else {
        return Ok(());
    };
    let inputs = INPUTS.lock().unwrap_or_else(|e| e.into_inner());
    for (name, id, tree) in inputs.iter() {
        if id.same(&out) {
            bail!(
                "{}: is also an input of this command ({}); writing it would destroy the input: choose another output path",
                path.display(),
                name.display()
            );
        }
        if *tree && id.contains(&out) {
            bail!(
                "{}: lies inside {}, an input folder of this command: choose an output outside it",
                path.display(),
                name.display()
            );
        }
    }
    Ok(())
}

/// Checks an output folder: not a file or special file, and not an input or inside one.
/// Every file later written into it is checked again by [`write_atomic`].
pub fn check_out_dir(dir: &Path, flag: &str) -> Result<()> {
    if let Ok(meta) = std::fs::metadata(dir)
        && !meta.is_dir()
    {
        bail!(
            "{flag} {}: is a file, expected a folder (it is created when missing)",
            dir.display()
        );
    }
    let Some(out) = FileId::of_output(dir) else {
        return Ok(());
    };
    let inputs = INPUTS.lock().unwrap_or_else(|e| e.into_inner());
    for (name, id, tree) in inputs.iter() {
        if *tree && id.contains(&out) {
            bail!(
                "{flag} {}: lies inside {}, an input folder of this command: choose an output folder outside it",
                dir.display(),
                name.display()
            );
        }
    }
    Ok(())
}

/// Writes `bytes` to `path` after [`check_output`].
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    check_output(path)?;
    decomp_ir::write_atomic(path, bytes)?;
    Ok(())
}

/// Writes an artifact to `path` after [`check_output`]; returns the payload SHA-256.
pub fn write_artifact<T: decomp_ir::Artifact>(path: &Path, value: &T) -> Result<[u8; 32]> {
    check_output(path)?;
    Ok(decomp_ir::write_artifact(path, value)?)
}

/// Reads an artifact and registers it as an input.
pub fn read_artifact<T: decomp_ir::Artifact>(path: &Path) -> Result<T> {
    input(path);
    Ok(decomp_ir::read_artifact(path)?)
}

/// Reads a UTF-8 text file of at most `limit` bytes (`/dev/zero` or a huge file is refused
/// once `limit` bytes have been read, not after memory runs out); registers it as an input.
pub fn read_text(path: &Path, limit: u64, what: &str) -> Result<String> {
    input(path);
    read_text_unregistered(path, limit, what)
}

/// [`read_text`] of a file the command also writes (its own run stamp).
fn read_text_unregistered(path: &Path, limit: u64, what: &str) -> Result<String> {
    let f =
        std::fs::File::open(path).with_context(|| format!("reading {what} {}", path.display()))?;
    let mut bytes = Vec::new();
    f.take(limit + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("reading {what} {}", path.display()))?;
    if bytes.len() as u64 > limit {
        bail!(
            "{what} {}: larger than the limit of {limit} bytes",
            path.display()
        );
    }
    String::from_utf8(bytes).map_err(|e| {
        anyhow::anyhow!(
            "{what} {}: not UTF-8 text (invalid byte at offset {})",
            path.display(),
            e.utf8_error().valid_up_to()
        )
    })
}

/// Set once stdout's reader has gone away: later lines are dropped.
static STDOUT_CLOSED: AtomicBool = AtomicBool::new(false);

/// Writes one line to stdout; a closed pipe (`| head -1`) ends printing quietly instead of
/// panicking as `println!` does, and the command goes on to finish its files.
pub fn print_line(args: std::fmt::Arguments<'_>) {
    if STDOUT_CLOSED.load(Ordering::Relaxed) {
        return;
    }
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.write_all(b"\n")) {
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            eprintln!("warning: writing to stdout: {e}");
        }
        STDOUT_CLOSED.store(true, Ordering::Relaxed);
    }
}

/// `println!` that survives a closed stdout (see [`print_line`]).
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::files::print_line(format_args!($($arg)*))
    };
}

/// The file in an output folder naming the model and configuration its artifacts come from.
pub const RUN_STAMP: &str = "decomp-run.json";

/// What [`RUN_STAMP`] records.
#[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
struct RunStamp {
    model_hash: String,
    config: String,
}

/// Whether `dir` (or a folder directly inside it) holds decomp artifacts.
fn holds_artifacts(dir: &Path) -> Option<PathBuf> {
    let is_artifact = |p: &Path| {
        p.is_file()
            && (p
                .extension()
                .is_some_and(|e| e == "mod" || e == "cs" || e == "ccs")
                || p.file_name().is_some_and(|n| n == "summary.json"))
    };
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        if is_artifact(&p) {
            return Some(p);
        }
        if p.is_dir()
            && let Some(found) = std::fs::read_dir(&p)
                .ok()?
                .flatten()
                .map(|x| x.path())
                .find(|x| is_artifact(x))
        {
            return Some(found);
        }
    }
    None
}

/// Module files (`module_*.mod`) in `dir` and the folders directly inside it.
fn module_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut scan = |d: &Path| {
        for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
            let p = e.path();
            let name = e.file_name();
            let name = name.to_string_lossy();
            if p.is_file() && name.starts_with("module_") && name.ends_with(".mod") {
                out.push(p);
            }
        }
    };
    scan(dir);
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.path().is_dir() {
            scan(&e.path());
        }
    }
    out
}

/// Takes `dir` as the output folder of a run of `model_hash` with `config`: refused when it
/// is a file, an input folder, or holds artifacts of another model or configuration (or of
/// a run that recorded neither), unless `force`, which first removes the module files there
/// so that a glob over the folder never mixes two runs. Records the run in [`RUN_STAMP`].
pub fn claim_out_dir(dir: &Path, model_hash: &str, config: &str, force: bool) -> Result<()> {
    check_out_dir(dir, "--out-dir")?;
    let stamp_path = dir.join(RUN_STAMP);
    let want = RunStamp {
        model_hash: model_hash.to_string(),
        config: config.to_string(),
    };
    let conflict = if stamp_path.is_file() {
        let text = read_text_unregistered(&stamp_path, 1 << 20, "run stamp")?;
        match serde_json::from_str::<RunStamp>(&text) {
            Ok(have) if have == want => return Ok(()),
            Ok(have) => Some(format!(
                "holds the artifacts of another run (model {}, {}), this run is model {model_hash}, {config}",
                have.model_hash, have.config
            )),
            Err(e) => Some(format!("{RUN_STAMP} does not parse ({e})")),
        }
    } else {
        holds_artifacts(dir).map(|p| {
            format!(
                "holds artifacts ({}) of a run that did not record its model and configuration",
                p.display()
            )
        })
    };
    if let Some(why) = conflict {
        if !force {
            bail!(
                "--out-dir {}: {why}; choose another --out-dir, or pass --force to remove its module files and reuse it",
                dir.display()
            );
        }
        for p in module_files(dir) {
            check_output(&p)?;
            std::fs::remove_file(&p)
                .with_context(|| format!("--force: removing {}", p.display()))?;
        }
    }
    write_atomic(&stamp_path, serde_json::to_string_pretty(&want)?.as_bytes())
}
