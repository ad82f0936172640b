//! Where datasets live: the one resolution every command and every experiment uses.
//!
//! [`DataRoot::resolve`] picks the data folder: `--data-dir`, else `$DECOMP_DATA_DIR`, else
//! `../shared/datasets` (or `$DECOMP_SHARED_DIR/datasets`) when it exists, else the user cache
//! `$DECOMP_CACHE_DIR/datasets` (default `~/.cache/decomp/datasets`). [`DataRoot::ensure`]
//! returns a complete dataset folder, downloading it from its official source when it is
//! missing (verified, unpacked atomically, once: a lock file keeps two processes from
//! downloading the same archive), unless downloads are off ([`crate::fetch::is_offline`]).
//! A shared folder is never written to: what it lacks goes to the cache.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::fetch::{self, RemoteFile};
use crate::subset::SubsetSpec;
use crate::{DATA_DIR_ENV, DataError, DatasetKind};

/// Environment variable naming the shared folder (default `../shared`) whose `datasets/` is
/// used when no data folder is named.
pub const SHARED_DIR_ENV: &str = "DECOMP_SHARED_DIR";

/// `$DECOMP_SHARED_DIR`, else `base/../shared`: the read-only folder of datasets and models
/// beside a checkout, from variable lookups (the programs pass `std::env::var_os`).
pub fn shared_dir_from(base: &Path, var: impl Fn(&str) -> Option<OsString>) -> PathBuf {
    var(SHARED_DIR_ENV)
        .filter(|v| !v.is_empty())
        .map_or_else(|| base.join("..").join("shared"), PathBuf::from)
}

/// How the data folder was chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// `--data-dir`.
    Flag,
    /// `$DECOMP_DATA_DIR`.
    Env,
    /// `../shared/datasets` (read only here; downloads go to the cache).
    Shared,
    /// The user cache.
    Cache,
}

/// The data folder, and where datasets missing from it are downloaded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataRoot {
    /// Searched first.
    pub dir: PathBuf,
    pub origin: Origin,
    /// Where a missing dataset is downloaded (also searched): `dir`, except for a shared
    /// folder, whose missing datasets go to the cache.
    pub download_dir: PathBuf,
    /// Download nothing: a missing dataset is an error ([`crate::fetch::is_offline`] when
    /// resolved).
    pub offline: bool,
}

/// A dataset folder to find or fetch: its format and its folder name (the official one, or a
/// derived dataset such as `tiny-imagenet-subset20`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DatasetFolder {
    pub kind: DatasetKind,
    pub name: String,
}

impl DatasetFolder {
    /// The official folder of `kind` (`cifar-10-batches-bin`, ...).
    pub fn official(kind: DatasetKind) -> Self {
        DatasetFolder {
            kind,
            name: kind.folder_name().to_string(),
        }
    }

    /// The folder `name` holding a dataset in `kind`'s format.
    pub fn named(kind: DatasetKind, name: &str) -> Self {
        DatasetFolder {
            kind,
            name: name.to_string(),
        }
    }

    /// Where it comes from when missing: the official archives, a subset built from them, or
    /// nothing known.
    pub fn source(&self) -> Option<Source> {
        if self.name == self.kind.folder_name() {
            return Some(Source::Official(fetch::official_archives(self.kind)));
        }
        crate::subset::known_subsets()
            .into_iter()
            .find(|s| s.name == self.name && s.kind == self.kind)
            .map(|spec| Source::Subset {
                base: fetch::official_archives(spec.kind),
                spec,
            })
    }
}

/// How a missing dataset folder is obtained.
#[derive(Clone, Debug)]
pub enum Source {
    /// Official archive(s), unpacked to the official folder.
    Official(Vec<RemoteFile>),
    /// A documented selection from the official dataset (`base`: its archives).
    Subset {
        spec: SubsetSpec,
        base: Vec<RemoteFile>,
    },
}

impl DataRoot {
    /// The folder `dir` itself, read from and downloaded into (tests, a folder named outright).
    pub fn at(dir: &Path) -> DataRoot {
        DataRoot {
            dir: dir.to_path_buf(),
            origin: Origin::Flag,
            download_dir: dir.to_path_buf(),
            offline: fetch::is_offline(),
        }
    }

    /// The data folder from `flag` and variable lookups (the programs pass
    /// `std::env::var_os`): `flag`, else `$DECOMP_DATA_DIR`, else `../shared/datasets` beside
    /// `base` (the workspace root, or the working directory) when it exists, else the cache.
    pub fn resolve_from(
        flag: Option<&Path>,
        base: &Path,
        var: impl Fn(&str) -> Option<OsString>,
    ) -> DataRoot {
        let non_empty = |k: &str| var(k).filter(|v| !v.is_empty()).map(PathBuf::from);
        let offline = fetch::is_offline();
        let same = |dir: PathBuf, origin| DataRoot {
            download_dir: dir.clone(),
            dir,
            origin,
            offline,
        };
        if let Some(dir) = flag {
            return same(dir.to_path_buf(), Origin::Flag);
        }
        if let Some(dir) = non_empty(DATA_DIR_ENV) {
            return same(dir, Origin::Env);
        }
        let cache = fetch::cache_dir_from(&var).join("datasets");
        let shared = shared_dir_from(base, &var).join("datasets");
        if shared.is_dir() {
            return DataRoot {
                dir: shared,
                origin: Origin::Shared,
                download_dir: cache,
                offline,
            };
        }
        same(cache, Origin::Cache)
    }

    /// The folders searched for a dataset, in order.
    pub fn search(&self) -> Vec<&Path> {
        if self.dir == self.download_dir {
            vec![&self.dir]
        } else {
            vec![&self.dir, &self.download_dir]
        }
    }

    /// The complete folder `want` in one of the searched folders.
    pub fn find(&self, want: &DatasetFolder) -> Option<PathBuf> {
        self.search()
            .into_iter()
            .map(|d| d.join(&want.name))
            .find(|f| f.is_dir() && fetch::missing_files(want.kind, f).is_empty())
    }

    /// The complete folder `want`, downloaded from its official source when missing.
    pub fn ensure(&self, want: &DatasetFolder) -> Result<PathBuf, DataError> {
        match want.source() {
            Some(source) => self.ensure_from(want, &source),
            None => self.find(want).ok_or_else(|| self.missing(want, false)),
        }
    }

    /// [`DataRoot::ensure`] with the source given (tests serve their own archives).
    pub fn ensure_from(&self, want: &DatasetFolder, source: &Source) -> Result<PathBuf, DataError> {
        if let Some(found) = self.find(want) {
            return Ok(found);
        }
        if self.offline {
            return Err(self.missing(want, true));
        }
        self.obtain(want, source).map_err(|e| match e {
            // Bad local state (an incomplete folder, a full disk) is reported as it is.
            DataError::Download { .. } | DataError::Checksum { .. } | DataError::Archive { .. } => {
                DataError::FetchFailed {
                    dataset: want.name.clone(),
                    cause: e.to_string(),
                    fix: self.fix_hint(want),
                }
            }
            other => other,
        })
    }

    /// Downloads `want` from `source` into the download folder (a subset: its official
    /// dataset first, when it is not found).
    fn obtain(&self, want: &DatasetFolder, source: &Source) -> Result<PathBuf, DataError> {
        match source {
            Source::Official(archives) => {
                fetch::download_dataset_from(want.kind, &self.download_dir, archives)
            }
            Source::Subset { spec, base } => {
                let official = DatasetFolder::official(spec.kind);
                let base_folder = match self.find(&official) {
                    Some(found) => found,
                    None => self.obtain(&official, &Source::Official(base.clone()))?,
                };
                crate::subset::build(spec, &base_folder, &self.download_dir)
            }
        }
    }

    /// The two ways out when a dataset cannot be downloaded.
    pub fn fix_hint(&self, want: &DatasetFolder) -> String {
        format!(
            "fix: run where the internet is reachable (it is downloaded once, into {}), \
             or point at a local copy: --data-dir DIR or {DATA_DIR_ENV}=DIR, DIR holding {}/",
            self.download_dir.display(),
            want.name
        )
    }

    /// Today's missing-dataset error: what is expected where and how to get it.
    fn missing(&self, want: &DatasetFolder, offline: bool) -> DataError {
        let folder = self.dir.join(&want.name);
        let missing = if folder.is_dir() {
            fetch::missing_files(want.kind, &folder)
        } else {
            vec![format!("{}/ folder", want.name)]
        };
        let mut help = want.kind.missing_help(&folder);
        if offline {
            help.push_str(&format!(
                "\ndownloads are off (--offline or DECOMP_OFFLINE): run without them to download \
                 and verify it into {}",
                self.download_dir.display()
            ));
        } else {
            help.push_str(&format!(
                "\nno download is known for a folder named {:?}",
                want.name
            ));
        }
        DataError::DatasetMissing {
            dataset: want.kind.to_string(),
            split: "train and test".to_string(),
            folder,
            missing,
            help,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<OsString> {
        move |k: &str| pairs.iter().find(|p| p.0 == k).map(|p| p.1.into())
    }

    #[test]
    fn precedence_flag_env_shared_cache() {
        let base = tempfile::tempdir().expect("tempdir");
        let repo = base.path().join("repo");
        std::fs::create_dir_all(&repo).expect("mkdir");
        let flag = Path::new("/flag");
        let all = env(&[("DECOMP_DATA_DIR", "/env"), ("DECOMP_CACHE_DIR", "/cache")]);
        let r = DataRoot::resolve_from(Some(flag), &repo, &all);
        assert_eq!((r.dir.as_path(), r.origin), (flag, Origin::Flag));
        assert_eq!(r.download_dir, flag);
        let r = DataRoot::resolve_from(None, &repo, &all);
        assert_eq!((r.dir, r.origin), (PathBuf::from("/env"), Origin::Env));
        // no ../shared: the cache
        let cache_only = env(&[("DECOMP_DATA_DIR", ""), ("DECOMP_CACHE_DIR", "/cache")]);
        let r = DataRoot::resolve_from(None, &repo, &cache_only);
        assert_eq!(r.origin, Origin::Cache);
        assert_eq!(r.dir, PathBuf::from("/cache/datasets"));
        assert_eq!(r.search(), vec![Path::new("/cache/datasets")]);
        // ../shared/datasets present: read there, download into the cache
        std::fs::create_dir_all(base.path().join("shared/datasets")).expect("mkdir");
        let r = DataRoot::resolve_from(None, &repo, &cache_only);
        assert_eq!(r.origin, Origin::Shared);
        assert_eq!(r.dir, repo.join("../shared/datasets"));
        assert_eq!(r.download_dir, PathBuf::from("/cache/datasets"));
        assert_eq!(r.search().len(), 2);
    }

    #[test]
    fn sources() {
        let c = DatasetFolder::official(DatasetKind::Cifar100 { coarse: true });
        assert!(matches!(c.source(), Some(Source::Official(a)) if a.len() == 1));
        let s = DatasetFolder::named(DatasetKind::TinyImageNet, "tiny-imagenet-subset20");
        assert!(matches!(s.source(), Some(Source::Subset { .. })));
        assert!(
            DatasetFolder::named(DatasetKind::Cifar10, "mine")
                .source()
                .is_none()
        );
    }
}
