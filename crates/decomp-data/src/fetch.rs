//! Verified downloads: dataset archives (unpacked atomically) and pretrained weights.
//!
//! Every file is streamed to a temporary file in its destination folder while its checksum is
//! computed; only a file whose checksum matches the published one is renamed into place, so an
//! interrupted or corrupted download never leaves a file behind. Datasets are unpacked into a
//! temporary folder inside the data directory and renamed to `kind.folder_name()` only when
//! complete. Progress is reported as `tracing` events.

use std::fmt;
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use md5::{Digest, Md5};
use sha2::Sha256;

use crate::{DataError, DatasetKind, Split};

/// Environment variable naming the cache folder for pretrained weights.
pub const CACHE_DIR_ENV: &str = "DECOMP_CACHE_DIR";

/// A published checksum, as lowercase or uppercase hex.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Checksum {
    /// MD5, as published for the classic datasets (integrity only, not security).
    Md5(String),
    /// SHA-256.
    Sha256(String),
}

impl Checksum {
    fn expected_hex(&self) -> String {
        match self {
            Checksum::Md5(h) | Checksum::Sha256(h) => h.trim().to_ascii_lowercase(),
        }
    }

    fn hasher(&self) -> Hasher {
        match self {
            Checksum::Md5(_) => Hasher::Md5(Md5::new()),
            Checksum::Sha256(_) => Hasher::Sha256(Sha256::new()),
        }
    }
}

impl fmt::Display for Checksum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Checksum::Md5(h) => write!(f, "md5 {h}"),
            Checksum::Sha256(h) => write!(f, "sha256 {h}"),
        }
    }
}

enum Hasher {
    Md5(Md5),
    Sha256(Sha256),
}

impl Hasher {
    fn update(&mut self, bytes: &[u8]) {
        match self {
            Hasher::Md5(h) => h.update(bytes),
            Hasher::Sha256(h) => h.update(bytes),
        }
    }

    fn finish_hex(self) -> String {
        match self {
            Hasher::Md5(h) => hex::encode(h.finalize()),
            Hasher::Sha256(h) => hex::encode(h.finalize()),
        }
    }
}

/// A file to download: where from, its published checksum, and its local file name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteFile {
    /// `http://` or `https://` URL.
    pub url: String,
    /// The published checksum of the file's bytes.
    pub checksum: Checksum,
    /// The plain file name to save it under (no folders).
    pub file_name: String,
}

impl RemoteFile {
    /// A remote file from its parts.
    pub fn new(url: impl Into<String>, checksum: Checksum, file_name: impl Into<String>) -> Self {
        RemoteFile {
            url: url.into(),
            checksum,
            file_name: file_name.into(),
        }
    }
}

/// Bytes between two progress events.
const PROGRESS_EVERY: u64 = 16 << 20;
/// Connection timeout; a stalled transfer fails after `READ_TIMEOUT` without data.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
const READ_TIMEOUT: Duration = Duration::from_secs(120);

/// The checksum of a file on disk.
fn file_checksum(path: &Path, checksum: &Checksum) -> Result<String, DataError> {
    let mut file = File::open(path).map_err(|e| DataError::io("open", path, e))?;
    let mut hasher = checksum.hasher();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| DataError::io("read", path, e))?;
        if n == 0 {
            return Ok(hasher.finish_hex());
        }
        hasher.update(&buf[..n]);
    }
}

fn check_file_name(remote: &RemoteFile) -> Result<(), DataError> {
    let name = &remote.file_name;
    let plain = Path::new(name)
        .file_name()
        .is_some_and(|f| f == name.as_str());
    if plain && name != "." && name != ".." {
        Ok(())
    } else {
        Err(DataError::InvalidArgument(format!(
            "file name {name:?} for {} is not a plain file name, expected a name without folders",
            remote.url
        )))
    }
}

/// Downloads `remote` into `dest_dir/remote.file_name` and returns that path.
///
/// The bytes are streamed to a temporary file in `dest_dir` while the checksum is computed; a
/// mismatch is an error naming the URL, the expected and the found checksum, and deletes the
/// temporary file. A match renames it into place (atomic on one file system). A file already
/// at the destination with the right checksum is kept and nothing is downloaded.
#[tracing::instrument(level = "info", skip_all, fields(url = %remote.url))]
pub fn download_verified(remote: &RemoteFile, dest_dir: &Path) -> Result<PathBuf, DataError> {
    check_file_name(remote)?;
    let dest = dest_dir.join(&remote.file_name);
    let expected = remote.checksum.expected_hex();
    if dest.is_file() {
        if file_checksum(&dest, &remote.checksum)? == expected {
            tracing::info!(path = %dest.display(), "already downloaded, checksum matches");
            return Ok(dest);
        }
        tracing::warn!(path = %dest.display(), "existing file has the wrong checksum, downloading again");
    }
    let created = !dest_dir.exists();
    std::fs::create_dir_all(dest_dir).map_err(|e| DataError::io("create", dest_dir, e))?;
    let result = stream_to(remote, dest_dir, &dest);
    if result.is_err() && created {
        // Leave nothing behind, not even the (now empty) folder created for the download.
        std::fs::remove_dir(dest_dir).ok();
    }
    result
}

/// Streams `remote` into a temporary file in `dest_dir`, verifies it and renames it to `dest`.
fn stream_to(remote: &RemoteFile, dest_dir: &Path, dest: &Path) -> Result<PathBuf, DataError> {
    let expected = remote.checksum.expected_hex();
    let temp = tempfile::Builder::new()
        .prefix(&format!(".{}.", remote.file_name))
        .suffix(".part")
        .tempfile_in(dest_dir)
        .map_err(|e| DataError::io("create a temporary file in", dest_dir, e))?;

    let download_err = |message: String| DataError::Download {
        url: remote.url.clone(),
        message,
    };
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(CONNECT_TIMEOUT))
        // A stall (no byte for READ_TIMEOUT) fails; a slow but steady transfer never does.
        .timeout_per_read(Some(READ_TIMEOUT))
        .timeout_recv_response(Some(READ_TIMEOUT))
        .build()
        .into();
    let response = agent
        .get(&remote.url)
        // The checksum is of the bytes as published: ask for them as they are.
        .header("accept-encoding", "identity")
        .call()
        .map_err(|e| download_err(e.to_string()))?;
    let total = response.body().content_length();
    tracing::info!(total_bytes = total, dest = %dest.display(), "downloading");
    let mut reader = response.into_body().into_reader();
    let mut hasher = remote.checksum.hasher();
    let mut writer = BufWriter::new(temp.as_file());
    let mut buf = vec![0u8; 1 << 16];
    let (mut done, mut next_report, started) = (0u64, PROGRESS_EVERY, Instant::now());
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(download_err(format!("after {done} bytes: {e}"))),
        };
        hasher.update(&buf[..n]);
        writer
            .write_all(&buf[..n])
            .map_err(|e| DataError::io("write", temp.path(), e))?;
        done += n as u64;
        if done >= next_report {
            next_report += PROGRESS_EVERY;
            let mib_s = done as f64 / (1 << 20) as f64 / started.elapsed().as_secs_f64().max(1e-3);
            tracing::info!(
                done_bytes = done,
                total_bytes = total,
                mib_per_s = format!("{mib_s:.1}"),
                "download progress"
            );
        }
    }
    writer
        .flush()
        .map_err(|e| DataError::io("write", temp.path(), e))?;
    drop(writer);
    if let Some(total) = total.filter(|&t| t != done) {
        return Err(download_err(format!(
            "expected {total} bytes, received {done}"
        )));
    }
    let found = hasher.finish_hex();
    if found != expected {
        // `temp` is deleted when dropped here.
        return Err(DataError::Checksum {
            url: remote.url.clone(),
            expected: remote.checksum.to_string(),
            found: found_display(&remote.checksum, &found),
        });
    }
    temp.as_file()
        .sync_all()
        .map_err(|e| DataError::io("sync", temp.path(), e))?;
    temp.persist(dest)
        .map_err(|e| DataError::io("rename a temporary file to", dest, e.error))?;
    tracing::info!(bytes = done, path = %dest.display(), "downloaded and verified");
    Ok(dest.to_path_buf())
}

fn found_display(checksum: &Checksum, found: &str) -> String {
    match checksum {
        Checksum::Md5(_) => format!("md5 {found}"),
        Checksum::Sha256(_) => format!("sha256 {found}"),
    }
}

/// The official archive(s) of `kind`, with the checksums published by the dataset authors
/// (or, for MNIST and Fashion-MNIST, the ones torchvision checks).
///
/// * CIFAR-10 / CIFAR-100: `https://www.cs.toronto.edu/~kriz/`, md5 from the CIFAR page.
/// * Tiny ImageNet: `http://cs231n.stanford.edu/tiny-imagenet-200.zip`, md5
///   `90528d7ca1a48142e341f4ef8d21d0de`. The CS231N page publishes no checksum; this value is
///   the one checked by many public loaders (e.g. Avalanche's `TinyImagenet`, several
///   `TinyImageNet(VisionDataset)` classes) and one public log records it matching a fresh
///   download (248,100,043 bytes).
/// * Fashion-MNIST: the four `.gz` files from the Zalando S3 bucket the repository links.
///   (The Debian package recompresses them, so its `.gz` files have other md5s.)
/// * MNIST: torchvision's mirror `https://ossci-datasets.s3.amazonaws.com/mnist/` (the original
///   site often refuses scripted downloads); the md5s are those of the original files.
pub fn official_archives(kind: DatasetKind) -> Vec<RemoteFile> {
    let files: &[(&str, &str, &str)] = match kind {
        DatasetKind::Cifar10 => &[(
            "https://www.cs.toronto.edu/~kriz/",
            "cifar-10-binary.tar.gz",
            "c32a1d4ab5d03f1284b67883e8d87530",
        )],
        DatasetKind::Cifar100 { .. } => &[(
            "https://www.cs.toronto.edu/~kriz/",
            "cifar-100-binary.tar.gz",
            "03b5dce01913d631647c71ecec9e9cb8",
        )],
        DatasetKind::TinyImageNet => &[(
            "http://cs231n.stanford.edu/",
            "tiny-imagenet-200.zip",
            "90528d7ca1a48142e341f4ef8d21d0de",
        )],
        DatasetKind::FashionMnist => &[
            (
                FASHION_MNIST_URL,
                "train-images-idx3-ubyte.gz",
                "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            ),
            (
                FASHION_MNIST_URL,
                "train-labels-idx1-ubyte.gz",
                "25c81989df183df01b3e8a0aad5dffbe",
            ),
            (
                FASHION_MNIST_URL,
                "t10k-images-idx3-ubyte.gz",
                "bef4ecab320f06d8554ea6380940ec79",
            ),
            (
                FASHION_MNIST_URL,
                "t10k-labels-idx1-ubyte.gz",
                "bb300cfdad3c16e7a12a480ee83cd310",
            ),
        ],
        DatasetKind::Mnist => &[
            (
                MNIST_URL,
                "train-images-idx3-ubyte.gz",
                "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            ),
            (
                MNIST_URL,
                "train-labels-idx1-ubyte.gz",
                "d53e105ee54ea40749a09fcbcd1e9432",
            ),
            (
                MNIST_URL,
                "t10k-images-idx3-ubyte.gz",
                "9fb629c4189551a2d022fa330f9573f3",
            ),
            (
                MNIST_URL,
                "t10k-labels-idx1-ubyte.gz",
                "ec29112dd5afa0611ce80d1b7f02629c",
            ),
        ],
    };
    files
        .iter()
        .map(|(base, name, md5)| {
            RemoteFile::new(
                format!("{base}{name}"),
                Checksum::Md5(md5.to_string()),
                *name,
            )
        })
        .collect()
}

const FASHION_MNIST_URL: &str = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/";
const MNIST_URL: &str = "https://ossci-datasets.s3.amazonaws.com/mnist/";

/// Downloads the official archive(s) of `kind` (see [`official_archives`]) and unpacks them
/// into `data_dir/kind.folder_name()`, which is returned. Does nothing if that folder already
/// holds the dataset.
pub fn download_dataset(kind: DatasetKind, data_dir: &Path) -> Result<PathBuf, DataError> {
    download_dataset_from(kind, data_dir, &official_archives(kind))
}

/// Whether `folder` holds every file of both splits (relative names from
/// [`DatasetKind::expected_files`]); returns the missing ones.
fn missing_files(kind: DatasetKind, folder: &Path) -> Vec<String> {
    let gz_ok = matches!(kind, DatasetKind::FashionMnist | DatasetKind::Mnist);
    [Split::Train, Split::Test]
        .into_iter()
        .flat_map(|s| kind.expected_files(s))
        .filter(|f| match f.strip_suffix('/') {
            Some(dir) => !folder.join(dir).is_dir(),
            None => {
                !(folder.join(f).is_file() || (gz_ok && folder.join(format!("{f}.gz")).is_file()))
            }
        })
        .collect()
}

/// Like [`download_dataset`], with the archive URLs and checksums supplied.
///
/// `.tar.gz`/`.tgz` and `.zip` archives are unpacked and must contain `kind.folder_name()/`;
/// other files (the `.gz` IDX files) are placed in the folder as they are. Everything happens
/// in a temporary folder inside `data_dir`, renamed to `kind.folder_name()` only once the
/// expected files are all there; on any error nothing is left behind.
#[tracing::instrument(level = "info", skip_all, fields(kind = %kind, data_dir = %data_dir.display()))]
pub fn download_dataset_from(
    kind: DatasetKind,
    data_dir: &Path,
    archives: &[RemoteFile],
) -> Result<PathBuf, DataError> {
    let folder = data_dir.join(kind.folder_name());
    if folder.exists() {
        let missing = missing_files(kind, &folder);
        if missing.is_empty() {
            tracing::info!(folder = %folder.display(), "dataset already present, not downloading");
            return Ok(folder);
        }
        return Err(DataError::InvalidArgument(format!(
            "{} exists but is incomplete (missing {}), expected the complete {kind} dataset; \
             remove it to download again",
            folder.display(),
            missing.join(", ")
        )));
    }
    std::fs::create_dir_all(data_dir).map_err(|e| DataError::io("create", data_dir, e))?;
    let staging = tempfile::Builder::new()
        .prefix(&format!(".{}.download.", kind.folder_name()))
        .tempdir_in(data_dir)
        .map_err(|e| DataError::io("create a temporary folder in", data_dir, e))?;
    let downloads = staging.path().join("archives");
    let unpacked = staging.path().join("unpacked");
    let staged = unpacked.join(kind.folder_name());
    std::fs::create_dir_all(&staged).map_err(|e| DataError::io("create", &staged, e))?;
    for remote in archives {
        let file = download_verified(remote, &downloads)?;
        let name = remote.file_name.to_ascii_lowercase();
        if name.ends_with(".tar.gz") || name.ends_with(".tgz") {
            unpack_tar_gz(&file, &unpacked)?;
        } else if name.ends_with(".zip") {
            unpack_zip(&file, &unpacked)?;
        } else {
            let to = staged.join(&remote.file_name);
            std::fs::rename(&file, &to).map_err(|e| DataError::io("move a download to", &to, e))?;
        }
        std::fs::remove_file(&file).ok();
    }
    let missing = missing_files(kind, &staged);
    if !missing.is_empty() {
        return Err(DataError::Archive {
            path: downloads,
            message: format!(
                "the archives do not contain {}/{}, expected the official layout",
                kind.folder_name(),
                missing.join(&format!(", {}/", kind.folder_name()))
            ),
        });
    }
    if let Err(e) = std::fs::rename(&staged, &folder) {
        // Another process may have finished the same download first.
        if folder.is_dir() && missing_files(kind, &folder).is_empty() {
            tracing::info!(folder = %folder.display(), "dataset appeared meanwhile, keeping it");
            return Ok(folder);
        }
        return Err(DataError::io("rename the unpacked dataset to", &folder, e));
    }
    tracing::info!(folder = %folder.display(), "dataset downloaded and unpacked");
    Ok(folder)
}

fn unpack_tar_gz(file: &Path, into: &Path) -> Result<(), DataError> {
    tracing::info!(archive = %file.display(), "unpacking");
    let reader = File::open(file).map_err(|e| DataError::io("open", file, e))?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(std::io::BufReader::new(
        reader,
    )));
    archive.set_preserve_permissions(false);
    // `unpack` refuses entries that would land outside `into`.
    archive.unpack(into).map_err(|e| DataError::Archive {
        path: file.to_path_buf(),
        message: e.to_string(),
    })
}

fn unpack_zip(file: &Path, into: &Path) -> Result<(), DataError> {
    tracing::info!(archive = %file.display(), "unpacking");
    let reader = File::open(file).map_err(|e| DataError::io("open", file, e))?;
    let archive_err = |e: zip::result::ZipError| DataError::Archive {
        path: file.to_path_buf(),
        message: e.to_string(),
    };
    let mut archive = zip::ZipArchive::new(std::io::BufReader::new(reader)).map_err(archive_err)?;
    // `extract` sanitizes entry names and keeps everything inside `into`.
    archive.extract(into).map_err(archive_err)
}

/// Pretrained weights this crate knows, by name.
const PRETRAINED: [(&str, &str, &str); 4] = [
    (
        "akamaster/resnet20",
        "resnet20-12fca82f.th",
        "12fca82f0bebc4135bf1f32f6e3710e61d5108578464b84fd6d7f5c1b04036c8",
    ),
    (
        "akamaster/resnet32",
        "resnet32-d509ac18.th",
        "d509ac1820d7f25398913559d7e81a13229b1e7adc5648e3bfa5e22dc137f850",
    ),
    (
        "akamaster/resnet44",
        "resnet44-014dd654.th",
        "014dd6541728a1c700b1642ab640e211dc6eb8ed507d70697458dc8f8a0ae2e4",
    ),
    (
        "akamaster/resnet56",
        "resnet56-4bfd9763.th",
        "4bfd97631478d6b638d2764fd2baff3edb1d7d82252d54439343b6596b9b5367",
    ),
];

const AKAMASTER_URL: &str =
    "https://github.com/akamaster/pytorch_resnet_cifar10/raw/master/pretrained_models/";

/// Names accepted by [`pretrained`] and [`fetch_weights`].
pub fn known_weights() -> Vec<&'static str> {
    PRETRAINED.iter().map(|p| p.0).collect()
}

/// The download of known pretrained weights: `akamaster/resnet20`, `akamaster/resnet32`,
/// `akamaster/resnet44`, `akamaster/resnet56` (CIFAR-10 ResNets of
/// `github.com/akamaster/pytorch_resnet_cifar10`, BSD 2-Clause, with their sha256).
pub fn pretrained(name: &str) -> Option<RemoteFile> {
    PRETRAINED
        .iter()
        .find(|p| p.0 == name)
        .map(|(_, file, sha)| {
            RemoteFile::new(
                format!("{AKAMASTER_URL}{file}"),
                Checksum::Sha256(sha.to_string()),
                *file,
            )
        })
}

/// The local path of the weights called `name`, downloaded into `cache_dir` unless a file with
/// the right sha256 is already there. An unknown name is an error listing the known ones.
pub fn fetch_weights(name: &str, cache_dir: &Path) -> Result<PathBuf, DataError> {
    let remote = pretrained(name).ok_or_else(|| DataError::UnknownWeights {
        name: name.to_string(),
        known: known_weights().join(", "),
    })?;
    download_verified(&remote, cache_dir)
}

/// `$DECOMP_CACHE_DIR`, else `$XDG_CACHE_HOME/decomp`, else `~/.cache/decomp` (else
/// `decomp-cache` in the temporary folder when there is no home).
pub fn default_cache_dir() -> PathBuf {
    cache_dir_from(|k| std::env::var_os(k))
}

fn cache_dir_from(var: impl Fn(&str) -> Option<std::ffi::OsString>) -> PathBuf {
    let non_empty = |k: &str| var(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(dir) = non_empty(CACHE_DIR_ENV) {
        dir
    } else if let Some(xdg) = non_empty("XDG_CACHE_HOME") {
        xdg.join("decomp")
    } else if let Some(home) = non_empty("HOME") {
        home.join(".cache").join("decomp")
    } else {
        std::env::temp_dir().join("decomp-cache")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_dir_precedence() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| pairs.iter().find(|p| p.0 == k).map(|p| p.1.into())
        };
        assert_eq!(
            cache_dir_from(env(&[
                ("DECOMP_CACHE_DIR", "/c"),
                ("XDG_CACHE_HOME", "/x"),
                ("HOME", "/h")
            ])),
            PathBuf::from("/c")
        );
        assert_eq!(
            cache_dir_from(env(&[("DECOMP_CACHE_DIR", ""), ("XDG_CACHE_HOME", "/x")])),
            PathBuf::from("/x/decomp")
        );
        assert_eq!(
            cache_dir_from(env(&[("HOME", "/h")])),
            PathBuf::from("/h/.cache/decomp")
        );
    }

    #[test]
    fn pretrained_names() {
        let r = pretrained("akamaster/resnet20").expect("known");
        assert_eq!(
            r.url,
            "https://github.com/akamaster/pytorch_resnet_cifar10/raw/master/pretrained_models/resnet20-12fca82f.th"
        );
        assert_eq!(r.file_name, "resnet20-12fca82f.th");
        for name in known_weights() {
            let r = pretrained(name).expect("known");
            let Checksum::Sha256(sha) = &r.checksum else {
                panic!("sha256 expected")
            };
            // torch.hub convention: the 8 hex digits in the name start the sha256
            let tag = r.file_name.split(['-', '.']).nth(1).expect("hash in name");
            assert!(sha.starts_with(tag), "{name}");
            assert_eq!(sha.len(), 64);
        }
        assert!(pretrained("resnet20").is_none());
        let err = fetch_weights("nope", Path::new("/nonexistent")).expect_err("unknown");
        assert!(err.to_string().contains("akamaster/resnet56"), "{err}");
    }

    #[test]
    fn plain_file_names_only() {
        for bad in ["../x", "a/b", "", ".", ".."] {
            let r = RemoteFile::new("http://127.0.0.1:1/x", Checksum::Md5(String::new()), bad);
            assert!(check_file_name(&r).is_err(), "{bad:?}");
        }
        assert!(
            check_file_name(&RemoteFile::new(
                "u",
                Checksum::Md5(String::new()),
                "a.tar.gz"
            ))
            .is_ok()
        );
    }

    #[test]
    fn official_archives_are_complete() {
        for kind in DatasetKind::ALL {
            let files = official_archives(kind);
            assert!(!files.is_empty());
            for f in files {
                assert!(f.url.ends_with(&f.file_name));
                let Checksum::Md5(h) = &f.checksum else {
                    panic!("md5 expected")
                };
                assert_eq!(h.len(), 32, "{}", f.url);
            }
        }
    }
}
