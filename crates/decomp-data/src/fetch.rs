//! Verified downloads: dataset archives (unpacked atomically) and pretrained weights.
//!
//! Every file is streamed to a temporary file in its destination folder while its checksum is
//! computed; only a file whose checksum matches the published one is renamed into place, so an
//! interrupted or corrupted download never leaves a file behind. Datasets are unpacked into a
//! temporary folder inside the data directory and renamed to `kind.folder_name()` only when
//! complete. Progress is a progress bar on stderr (bytes and rate; drawn only on a terminal)
//! and `tracing` events.
//!
//! * [`MIRROR_ENV`] (`DECOMP_MIRROR`) replaces the host of every download with a mirror that
//!   keeps the official host and path below it (`$DECOMP_MIRROR/www.cs.toronto.edu/~kriz/..`).
//! * [`OFFLINE_ENV`] (`DECOMP_OFFLINE=1`) and the tools' `--offline` turn downloads off; see
//!   [`crate::locate`], which decides where data lives and when to download.
//! * A download that fails says what failed in one line: the DNS lookup, the connection, the
//!   HTTP status, a stall, or the checksum. The connection and name lookup time out after
//!   [`CONNECT_TIMEOUT`], so a machine without network fails at once, not after minutes.

use std::fmt;
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use md5::{Digest, Md5};
use sha2::Sha256;

use crate::{DataError, DatasetKind, Split};

/// Environment variable naming the cache folder (pretrained weights; datasets under
/// `datasets/` when no other data folder is named).
pub const CACHE_DIR_ENV: &str = "DECOMP_CACHE_DIR";

/// Environment variable naming a mirror of the official download hosts: a URL
/// `https://host/path` is fetched from `$DECOMP_MIRROR/host/path` instead.
pub const MIRROR_ENV: &str = "DECOMP_MIRROR";

/// Environment variable that turns downloads off when set to anything but empty, `0` or
/// `false` (the tools' `--offline`).
pub const OFFLINE_ENV: &str = "DECOMP_OFFLINE";

/// How downloads behave in this process. The library reads no environment: the programs
/// (the CLI, xtask) build this from their flags and [`FetchSettings::from_vars`] and hand it
/// over with [`configure`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FetchSettings {
    /// Download nothing: a missing file is an error saying what is missing where.
    pub offline: bool,
    /// A mirror of the official hosts: `https://host/path` is fetched from `mirror/host/path`.
    pub mirror: Option<String>,
}

impl FetchSettings {
    /// From variable lookups (the programs pass `std::env::var_os`): [`OFFLINE_ENV`] set to
    /// anything but empty, `0`, `false` or `no` turns downloads off; a non-empty
    /// [`MIRROR_ENV`] names the mirror.
    pub fn from_vars(var: impl Fn(&str) -> Option<std::ffi::OsString>) -> Self {
        let text = |k: &str| var(k).map(|v| v.to_string_lossy().trim().to_string());
        FetchSettings {
            offline: text(OFFLINE_ENV).is_some_and(|v| {
                !matches!(v.to_ascii_lowercase().as_str(), "" | "0" | "false" | "no")
            }),
            mirror: text(MIRROR_ENV).filter(|m| !m.is_empty()),
        }
    }
}

static SETTINGS: std::sync::RwLock<FetchSettings> = std::sync::RwLock::new(FetchSettings {
    offline: false,
    mirror: None,
});

fn settings() -> FetchSettings {
    SETTINGS.read().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Sets how downloads behave for the rest of the process (see [`FetchSettings`]).
pub fn configure(s: FetchSettings) {
    *SETTINGS.write().unwrap_or_else(|e| e.into_inner()) = s;
}

/// Turns downloads off for the rest of the process (the tools' `--offline`).
pub fn set_offline() {
    SETTINGS.write().unwrap_or_else(|e| e.into_inner()).offline = true;
}

/// Whether downloads are off ([`configure`], [`set_offline`]).
pub fn is_offline() -> bool {
    settings().offline
}

/// `url` as fetched: under the configured mirror when there is one (see [`FetchSettings`]).
pub fn effective_url(url: &str) -> String {
    match settings().mirror {
        Some(m) => {
            let rest = url.split_once("://").map_or(url, |(_, r)| r);
            format!("{}/{rest}", m.trim_end_matches('/'))
        }
        None => url.to_string(),
    }
}

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
/// Time allowed for the name lookup and, separately, for the connection. Short on purpose: a
/// machine without network gets its error at once (an unreachable or refused address fails
/// immediately anyway); a stalled transfer fails after `READ_TIMEOUT` without data.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const READ_TIMEOUT: Duration = Duration::from_secs(120);

/// One HTTP agent for the process, so many small files reuse connections.
fn agent() -> &'static ureq::Agent {
    static AGENT: std::sync::OnceLock<ureq::Agent> = std::sync::OnceLock::new();
    AGENT.get_or_init(|| {
        ureq::Agent::config_builder()
            .timeout_resolve(Some(CONNECT_TIMEOUT))
            .timeout_connect(Some(CONNECT_TIMEOUT))
            // A stall (no byte for READ_TIMEOUT) fails; a slow but steady transfer never does.
            .timeout_per_read(Some(READ_TIMEOUT))
            .timeout_recv_response(Some(READ_TIMEOUT))
            .build()
            .into()
    })
}

/// What failed, in a few words: DNS, connection, HTTP status, timeout.
fn describe(err: &ureq::Error, url: &str) -> String {
    let host = url
        .split_once("://")
        .map_or(url, |(_, r)| r)
        .split('/')
        .next()
        .unwrap_or(url);
    let host_name = host.rsplit_once(':').map_or(host, |(h, _)| h);
    match err {
        ureq::Error::StatusCode(code) => format!("HTTP status {code}"),
        ureq::Error::HostNotFound => {
            format!("DNS lookup of {host_name} failed (no network, or no such host)")
        }
        ureq::Error::Timeout(t) => format!("timed out ({t}) talking to {host}"),
        ureq::Error::Io(e) => match e.kind() {
            std::io::ErrorKind::ConnectionRefused => format!("connection to {host} refused"),
            std::io::ErrorKind::NetworkUnreachable | std::io::ErrorKind::HostUnreachable => {
                format!("{host} is unreachable (no network?)")
            }
            _ if e.to_string().contains("lookup address")
                || e.to_string().contains("name resolution")
                || e.to_string().contains("Name or service") =>
            {
                format!("DNS lookup of {host_name} failed (no network, or no such host): {e}")
            }
            _ => e.to_string(),
        },
        ureq::Error::ConnectionFailed => format!("cannot connect to {host}"),
        other => other.to_string(),
    }
}

/// An exclusive lock on `dir/.<name>.lock`, held until the returned file is dropped, so that
/// two processes never download the same thing at once. Waits for the holder, saying so.
pub(crate) fn lock(dir: &Path, name: &str) -> Result<File, DataError> {
    std::fs::create_dir_all(dir).map_err(|e| DataError::io("create", dir, e))?;
    let path = dir.join(format!(".{name}.lock"));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| DataError::io("open the lock file", &path, e))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            tracing::info!(lock = %path.display(), "another process is downloading {name}; waiting for it");
            file.lock().map_err(|e| DataError::io("lock", &path, e))?;
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(DataError::io("lock", &path, e)),
    }
    Ok(file)
}

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
    if is_offline() {
        return Err(DataError::Offline {
            what: format!("{} ({})", remote.file_name, remote.url),
            dest: dest.clone(),
        });
    }
    let created = !dest_dir.exists();
    std::fs::create_dir_all(dest_dir).map_err(|e| DataError::io("create", dest_dir, e))?;
    let result = stream_to(remote, Some(&remote.checksum), dest_dir, &dest);
    if result.is_err() && created {
        // Leave nothing behind, not even the (now empty) folder created for the download.
        std::fs::remove_dir(dest_dir).ok();
    }
    result
}

/// Like [`download_verified`], but only one process at a time downloads `remote` into
/// `dest_dir` (a lock file beside it); a process that waited finds the file there and
/// downloads nothing.
pub fn download_verified_locked(
    remote: &RemoteFile,
    dest_dir: &Path,
) -> Result<PathBuf, DataError> {
    check_file_name(remote)?;
    // The (empty, hidden) lock file stays: removing it could let a third process lock a new
    // file while a second still holds the old one.
    let _guard = lock(dest_dir, &remote.file_name)?;
    download_verified(remote, dest_dir)
}

/// Downloads `url` to `dest` (through a temporary file beside it) without a checksum: only for
/// files that are verified together afterwards (the tree hash of a built subset).
pub(crate) fn download_unverified(url: &str, dest: &Path) -> Result<(), DataError> {
    let name = dest
        .file_name()
        .map_or(String::new(), |n| n.to_string_lossy().to_string());
    let dir = dest.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| DataError::io("create", dir, e))?;
    let remote = RemoteFile::new(url, Checksum::Sha256(String::new()), name);
    stream_to(&remote, None, dir, dest).map(drop)
}

/// Streams `remote` into a temporary file in `dest_dir`, verifies it against `checksum` (when
/// given) and renames it to `dest`.
fn stream_to(
    remote: &RemoteFile,
    checksum: Option<&Checksum>,
    dest_dir: &Path,
    dest: &Path,
) -> Result<PathBuf, DataError> {
    let temp = tempfile::Builder::new()
        .prefix(&format!(".{}.", remote.file_name))
        .suffix(".part")
        .tempfile_in(dest_dir)
        .map_err(|e| DataError::io("create a temporary file in", dest_dir, e))?;

    let url = effective_url(&remote.url);
    let download_err = |message: String| DataError::Download {
        url: url.clone(),
        message,
    };
    let response = agent()
        .get(&url)
        // The checksum is of the bytes as published: ask for them as they are.
        .header("accept-encoding", "identity")
        .call()
        .map_err(|e| download_err(describe(&e, &url)))?;
    let total = response.body().content_length();
    if checksum.is_some() {
        tracing::info!(total_bytes = total, dest = %dest.display(), "downloading");
    }
    let mut reader = response.into_body().into_reader();
    let mut hasher = remote.checksum.hasher();
    let quiet = checksum.is_none();
    let mut writer = BufWriter::new(temp.as_file());
    let mut buf = vec![0u8; 1 << 16];
    let (mut done, mut next_report, started) = (0u64, PROGRESS_EVERY, Instant::now());
    let bar = if quiet {
        indicatif::ProgressBar::hidden()
    } else {
        progress_bar(total, &remote.file_name)
    };
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
        bar.set_position(done);
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
    bar.finish_and_clear();
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
    if let Some(checksum) = checksum.filter(|c| found != c.expected_hex()) {
        // `temp` is deleted when dropped here.
        return Err(DataError::Checksum {
            url: url.clone(),
            expected: checksum.to_string(),
            found: found_display(checksum, &found),
        });
    }
    temp.as_file()
        .sync_all()
        .map_err(|e| DataError::io("sync", temp.path(), e))?;
    temp.persist(dest)
        .map_err(|e| DataError::io("rename a temporary file to", dest, e.error))?;
    if checksum.is_some() {
        tracing::info!(bytes = done, path = %dest.display(), "downloaded and verified");
    }
    Ok(dest.to_path_buf())
}

/// A progress bar on stderr with bytes, total, rate and time left (hidden when stderr is not
/// a terminal; the `tracing` events still report progress there).
fn progress_bar(total: Option<u64>, name: &str) -> indicatif::ProgressBar {
    let bar =
        indicatif::ProgressBar::with_draw_target(total, indicatif::ProgressDrawTarget::stderr());
    let template = if total.is_some() {
        "{prefix} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} ({binary_bytes_per_sec}, eta {eta})"
    } else {
        "{prefix} [{elapsed_precise}] {bytes} ({binary_bytes_per_sec})"
    };
    if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar.set_prefix(format!("downloading {name}"));
    bar
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
pub(crate) fn missing_files(kind: DatasetKind, folder: &Path) -> Vec<String> {
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
    if present(kind, &folder)? {
        return Ok(folder);
    }
    // One process downloads; another one waits here and then finds the folder complete.
    let _guard = lock(data_dir, kind.folder_name())?;
    if present(kind, &folder)? {
        return Ok(folder);
    }
    remove_stale_staging(data_dir, kind.folder_name());
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

/// Whether `folder` holds the complete dataset (`false` when it does not exist); an incomplete
/// folder is an error and is left as it is.
fn present(kind: DatasetKind, folder: &Path) -> Result<bool, DataError> {
    if !folder.exists() {
        return Ok(false);
    }
    let missing = missing_files(kind, folder);
    if missing.is_empty() {
        tracing::info!(folder = %folder.display(), "dataset already present, not downloading");
        return Ok(true);
    }
    Err(DataError::InvalidArgument(format!(
        "{} exists but is incomplete (missing {}), expected the complete {kind} dataset; \
         remove it to download again",
        folder.display(),
        missing.join(", ")
    )))
}

/// Removes the temporary folders that a killed download of `name` left in `dir` (only called
/// with the lock held, so none of them belongs to a running download).
pub(crate) fn remove_stale_staging(dir: &Path, name: &str) {
    let prefix = format!(".{name}.download.");
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            tracing::info!(path = %entry.path().display(), "removing what an interrupted download left");
            std::fs::remove_dir_all(entry.path()).ok();
        }
    }
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

/// The known pretrained checkpoint whose file is `file_name` (`resnet20-12fca82f.th`, ...).
pub fn pretrained_file(file_name: &str) -> Option<RemoteFile> {
    PRETRAINED
        .iter()
        .find(|p| p.1 == file_name)
        .and_then(|p| pretrained(p.0))
}

/// The local path of the weights called `name`, downloaded into `cache_dir` unless a file with
/// the right sha256 is already there. An unknown name is an error listing the known ones.
pub fn fetch_weights(name: &str, cache_dir: &Path) -> Result<PathBuf, DataError> {
    let remote = pretrained(name).ok_or_else(|| DataError::UnknownWeights {
        name: name.to_string(),
        known: known_weights().join(", "),
    })?;
    download_verified_locked(&remote, cache_dir)
}

/// `$DECOMP_CACHE_DIR`, else `$XDG_CACHE_HOME/decomp`, else `~/.cache/decomp` (else
/// `decomp-cache` in the temporary folder when there is no home), from variable lookups (the
/// programs pass `std::env::var_os`).
pub fn cache_dir_from(var: impl Fn(&str) -> Option<std::ffi::OsString>) -> PathBuf {
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
