//! Helpers shared by the integration tests: generated files in official formats, the
//! `shared/` data folder, and a tiny local HTTP server.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use decomp_data::DataError;

/// `shared/` (env `DECOMP_SHARED_DIR`, else beside the workspace), or `None` with a
/// `skipping:` line when `sub` is absent.
pub fn shared(sub: &str) -> Option<PathBuf> {
    let root = std::env::var_os("DECOMP_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared")));
    let path = root.join(sub);
    if path.exists() {
        Some(path)
    } else {
        println!(
            "skipping: {} not found (set DECOMP_SHARED_DIR to the shared folder)",
            path.display()
        );
        None
    }
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

pub fn write(path: &Path, bytes: &[u8]) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("create dir");
    }
    std::fs::write(path, bytes).expect("write file");
}

/// One CIFAR record: the label bytes, then R, G, B planes filled with `pixel(channel, index)`.
pub fn cifar_record(labels: &[u8], pixel: impl Fn(usize, usize) -> u8) -> Vec<u8> {
    let mut r = labels.to_vec();
    for c in 0..3 {
        r.extend((0..1024).map(|i| pixel(c, i)));
    }
    r
}

/// CIFAR-10 records with the given labels; record `k` has R = k, G = 100 + k, B = pixel index % 256.
pub fn cifar10_records(labels: &[u8]) -> Vec<u8> {
    labels
        .iter()
        .enumerate()
        .flat_map(|(k, &l)| cifar_record(&[l], |c, i| [k as u8, 100 + k as u8, (i % 256) as u8][c]))
        .collect()
}

/// A CIFAR-10 folder: 5 train files with `per_file` records (labels `(file + k) % 10`), a test
/// file with `test` records (labels `k % 10`) and `batches.meta.txt`.
pub fn write_cifar10_folder(folder: &Path, per_file: usize, test: usize) {
    for f in 1..=5 {
        let labels: Vec<u8> = (0..per_file).map(|k| ((f + k) % 10) as u8).collect();
        write(
            &folder.join(format!("data_batch_{f}.bin")),
            &cifar10_records(&labels),
        );
    }
    let labels: Vec<u8> = (0..test).map(|k| (k % 10) as u8).collect();
    write(&folder.join("test_batch.bin"), &cifar10_records(&labels));
    write(
        &folder.join("batches.meta.txt"),
        decomp_data::CIFAR10_CLASSES.join("\n").as_bytes(),
    );
}

/// An IDX3 image file of `n` images `rows x cols` (image k filled with k, pixel index added).
pub fn idx_images(magic: u32, n: u32, rows: u32, cols: u32) -> Vec<u8> {
    let mut b = Vec::new();
    for v in [magic, n, rows, cols] {
        b.extend(v.to_be_bytes());
    }
    for k in 0..n {
        b.extend((0..rows * cols).map(|i| (k * 10 + i % 7) as u8));
    }
    b
}

pub fn idx_labels(magic: u32, labels: &[u8]) -> Vec<u8> {
    let mut b = magic.to_be_bytes().to_vec();
    b.extend((labels.len() as u32).to_be_bytes());
    b.extend(labels);
    b
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).expect("gzip");
    e.finish().expect("gzip")
}

/// A `.tar.gz` of `(path, bytes)` entries.
pub fn tar_gz(entries: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, bytes) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        builder
            .append_data(&mut header, path, bytes.as_slice())
            .expect("tar entry");
    }
    gzip(&builder.into_inner().expect("tar"))
}

/// A `.zip` of `(path, bytes)` entries (deflated).
pub fn zip(entries: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for (path, bytes) in entries {
        w.start_file(path.as_str(), options).expect("zip entry");
        w.write_all(bytes).expect("zip write");
    }
    w.finish().expect("zip").into_inner()
}

/// Every file (not folder) below `dir`, relative, sorted.
pub fn files_below(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).expect("list").flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                out.push(
                    path.strip_prefix(root)
                        .expect("below")
                        .display()
                        .to_string(),
                );
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// Checks that `result` failed and that its message contains every fragment.
#[track_caller]
pub fn check_err<T: std::fmt::Debug>(
    result: Result<T, DataError>,
    fragments: &[&str],
) -> DataError {
    let err = result.expect_err("expected an error");
    let msg = err.to_string();
    for f in fragments {
        assert!(msg.contains(f), "error message lacks {f:?}:\n{msg}");
    }
    assert!(
        !msg.ends_with('.'),
        "error message ends with a period: {msg}"
    );
    err
}

/// A tiny HTTP/1.1 server on 127.0.0.1 serving fixed files by path (404 otherwise). It stops
/// by itself after 60 s at the latest, and when dropped.
pub struct Server {
    pub base: String,
    hits: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Server {
    pub fn start(files: Vec<(String, Vec<u8>)>) -> Server {
        Self::start_slow(files, Duration::ZERO)
    }

    /// Like [`Server::start`], answering each request after `delay` (so that concurrent
    /// clients overlap; nothing is timed).
    pub fn start_slow(files: Vec<(String, Vec<u8>)>, delay: Duration) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let hits = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (h, s) = (hits.clone(), stop.clone());
        let handle = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(60);
            while !s.load(Ordering::SeqCst) && Instant::now() < deadline {
                match listener.accept() {
                    Ok((stream, _)) => {
                        h.fetch_add(1, Ordering::SeqCst);
                        std::thread::sleep(delay);
                        respond(stream, &files);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Server {
            base,
            hits,
            stop,
            handle: Some(handle),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}/{path}", self.base)
    }

    /// Number of requests received so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

fn respond(stream: TcpStream, files: &[(String, Vec<u8>)]) {
    stream.set_nonblocking(false).ok();
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok();
    let mut reader = BufReader::new(stream);
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    // Skip the headers (bounded).
    for _ in 0..100 {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) if line == "\r\n" || line == "\n" => break,
            Ok(_) => {}
        }
    }
    let path = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .trim_start_matches('/');
    let mut stream = reader.into_inner();
    let response = match files.iter().find(|(p, _)| p == path) {
        Some((_, body)) => {
            let mut r = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n",
                body.len()
            )
            .into_bytes();
            r.extend(body);
            r
        }
        None => {
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\nConnection: close\r\n\r\nnot found"
                .to_vec()
        }
    };
    stream.write_all(&response).ok();
    stream.flush().ok();
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            h.join().ok();
        }
    }
}

pub fn md5_hex(bytes: &[u8]) -> String {
    use md5::Digest;
    hex::encode(md5::Md5::digest(bytes))
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}
