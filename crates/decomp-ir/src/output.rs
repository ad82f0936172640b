//! The output policy every file decomp writes goes through ([`write_atomic`]):
//!
//! - **Only regular files are replaced.** A path naming a character or block device, a FIFO,
//!   a socket or a folder is refused ([`resolve_output`]), so `--out /dev/null` run as root
//!   never renames a file over a device node.
//! - **Symlinks are written through**: the link is followed (every hop) and the file it names
//!   is replaced; the link itself stays.
//! - **The umask is honoured**: a new file gets `0o666 & !umask`; a replaced file keeps its
//!   mode.
//! - **Atomic**: bytes go to `.<name>.tmp-<pid>-<random>` beside the target, are synced and
//!   renamed into place. Such a file left by a killed process (its pid no longer runs) is
//!   removed by the next write of the same target.
//! - **Inputs are never outputs**: [`FileId`] identifies a file by canonical path and, on
//!   Unix, device and inode, so a command can refuse an output that is one of its inputs
//!   under another name ([`FileId::of`], [`FileId::contains`]).

use std::io::Write;
use std::path::{Component, Path, PathBuf};

use crate::error::IrError;

/// Symlink hops [`resolve_output`] follows before giving up (Linux's `MAXSYMLINKS`).
pub const MAX_SYMLINK_HOPS: usize = 40;

fn refused(path: &Path, msg: impl Into<String>) -> IrError {
    IrError::Output {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

/// What kind of non-regular file `meta` describes, for error messages.
fn special_kind(meta: &std::fs::Metadata) -> Option<&'static str> {
    let t = meta.file_type();
    if t.is_file() {
        return None;
    }
    if t.is_dir() {
        return Some("a folder");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_char_device() {
            return Some("a character device");
        }
        if t.is_block_device() {
            return Some("a block device");
        }
        if t.is_fifo() {
            return Some("a FIFO");
        }
        if t.is_socket() {
            return Some("a socket");
        }
    }
    Some("not a regular file")
}

/// The file a write to `path` must replace: `path` itself, or, when it is a symlink, the
/// file at the end of its chain (which may not exist yet). Refuses anything that exists and
/// is not a regular file, and symlink loops.
pub fn resolve_output(path: &Path) -> Result<PathBuf, IrError> {
    let mut current = path.to_path_buf();
    for _ in 0..=MAX_SYMLINK_HOPS {
        let meta = match std::fs::symlink_metadata(&current) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(current),
            Err(source) => {
                return Err(IrError::Io {
                    path: current,
                    source,
                });
            }
        };
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&current).map_err(|source| IrError::Io {
                path: current.clone(),
                source,
            })?;
            current = match current.parent() {
                Some(dir) if target.is_relative() => dir.join(target),
                _ => target,
            };
            continue;
        }
        if let Some(kind) = special_kind(&meta) {
            let via = if current == path {
                String::new()
            } else {
                format!(" (the symlink leads to {})", current.display())
            };
            return Err(refused(
                path,
                format!("is {kind}{via}; decomp only writes regular files: choose a file path"),
            ));
        }
        return Ok(current);
    }
    Err(refused(
        path,
        format!("more than {MAX_SYMLINK_HOPS} symlink hops (a loop?)"),
    ))
}

/// Prefix of the temporary files of writes to a target named `name`.
fn temp_prefix(name: &str) -> String {
    format!(".{name}.tmp-")
}

/// Whether process `pid` runs, when this system can tell (`/proc`); `None` elsewhere.
fn pid_alive(pid: u32) -> Option<bool> {
    Path::new("/proc/self")
        .exists()
        .then(|| Path::new("/proc").join(pid.to_string()).exists())
}

/// Removes temporary files of earlier writes to `dir/name` whose process no longer runs
/// (where that cannot be told: those older than a day). Best effort: a file that cannot be
/// removed is left alone.
fn remove_stale_temps(dir: &Path, name: &str) {
    let prefix = temp_prefix(name);
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let file_name = e.file_name();
        let Some(rest) = file_name.to_str().and_then(|n| n.strip_prefix(&prefix)) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        let stale = match pid_alive(pid) {
            Some(alive) => !alive,
            None => e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age.as_secs() > 24 * 3600),
        };
        if stale && e.file_type().is_ok_and(|t| t.is_file()) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Writes `bytes` to `path` under the output policy of this module: regular files only,
/// through symlinks, umask honoured (a replaced file keeps its mode), synced temporary file
/// renamed into place, stale temporary files of the same target removed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), IrError> {
    let target = resolve_output(path)?;
    let io = |source| IrError::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = target
        .file_name()
        .ok_or_else(|| refused(path, "names no file"))?
        .to_string_lossy()
        .into_owned();
    std::fs::create_dir_all(dir).map_err(|source| {
        let hint = if dir.is_file() || dir.ancestors().any(|a| a.is_file()) {
            format!(
                "cannot create the folder {}: a file of that name (or above it) exists",
                dir.display()
            )
        } else {
            format!("cannot create the folder {}: {source}", dir.display())
        };
        refused(path, hint)
    })?;
    remove_stale_temps(dir, &name);
    let existing_mode = std::fs::metadata(&target).ok().map(|m| m.permissions());
    let mut builder = tempfile::Builder::new();
    let prefix = format!("{}{}-", temp_prefix(&name), std::process::id());
    builder.prefix(&prefix);
    #[cfg(unix)]
    let new_mode = {
        use std::os::unix::fs::PermissionsExt;
        std::fs::Permissions::from_mode(0o666)
    };
    #[cfg(unix)]
    builder.permissions(new_mode);
    let mut tmp = builder.tempfile_in(dir).map_err(io)?;
    if let Some(p) = existing_mode {
        tmp.as_file().set_permissions(p).map_err(io)?;
    }
    tmp.write_all(bytes).map_err(io)?;
    tmp.as_file().sync_all().map_err(io)?;
    tmp.persist(&target).map_err(|e| io(e.error))?;
    Ok(())
}

/// A file's identity: its canonical path and, on Unix, its device and inode, so that two
/// names of one file (a relative path, a symlink, a hard link) compare equal.
#[derive(Clone, Debug)]
pub struct FileId {
    canonical: PathBuf,
    dev_ino: Option<(u64, u64)>,
}

impl FileId {
    /// The identity of an existing file or folder (symlinks followed); `None` when `path`
    /// does not exist.
    pub fn of(path: &Path) -> Option<FileId> {
        let canonical = std::fs::canonicalize(path).ok()?;
        #[cfg(unix)]
        let dev_ino = {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata(&canonical)
                .ok()
                .map(|m| (m.dev(), m.ino()))
        };
        #[cfg(not(unix))]
        let dev_ino = None;
        Some(FileId { canonical, dev_ino })
    }

    /// The identity `path` would have: [`FileId::of`] when it exists, else its absolute,
    /// lexically normalized path under its canonical parent (`..` and `.` resolved).
    pub fn of_output(path: &Path) -> Option<FileId> {
        if let Some(id) = FileId::of(path) {
            return Some(id);
        }
        let abs = std::path::absolute(path).ok()?;
        let mut norm = PathBuf::new();
        for c in abs.components() {
            match c {
                Component::ParentDir => {
                    norm.pop();
                }
                Component::CurDir => {}
                other => norm.push(other),
            }
        }
        let canonical = match (norm.parent(), norm.file_name()) {
            (Some(dir), Some(name)) => {
                std::fs::canonicalize(dir).map_or(norm.clone(), |d| d.join(name))
            }
            _ => norm,
        };
        Some(FileId {
            canonical,
            dev_ino: None,
        })
    }

    /// The canonical path.
    pub fn path(&self) -> &Path {
        &self.canonical
    }

    /// Whether both name the same file.
    pub fn same(&self, other: &FileId) -> bool {
        match (self.dev_ino, other.dev_ino) {
            (Some(a), Some(b)) => a == b,
            _ => self.canonical == other.canonical,
        }
    }

    /// Whether `other` is this folder or lies inside it (canonical paths).
    pub fn contains(&self, other: &FileId) -> bool {
        self.same(other) || other.canonical.starts_with(&self.canonical)
    }
}
