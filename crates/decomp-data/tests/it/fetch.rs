//! Downloads from a local HTTP server on 127.0.0.1: verification, atomic placement, unpacking.

use decomp_data::fetch::{Checksum, RemoteFile, download_dataset_from, download_verified};
use decomp_data::{DataError, Dataset, DatasetKind, IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC, Split};

use crate::common::{
    Server, check_err, cifar10_records, files_below, gzip, idx_images, idx_labels, md5_hex,
    sha256_hex, tar_gz, tempdir, zip,
};

/// A CIFAR-10 archive in the official layout: 2 records per train file, 3 test records.
fn cifar10_archive() -> Vec<u8> {
    let mut entries = Vec::new();
    for f in 1..=5 {
        entries.push((
            format!("cifar-10-batches-bin/data_batch_{f}.bin"),
            cifar10_records(&[f as u8, 0]),
        ));
    }
    entries.push((
        "cifar-10-batches-bin/test_batch.bin".to_string(),
        cifar10_records(&[9, 8, 7]),
    ));
    entries.push((
        "cifar-10-batches-bin/batches.meta.txt".to_string(),
        decomp_data::CIFAR10_CLASSES.join("\n").into_bytes(),
    ));
    entries.push((
        "cifar-10-batches-bin/readme.html".to_string(),
        b"<html></html>".to_vec(),
    ));
    tar_gz(&entries)
}

#[test]
fn cifar10_download_verify_unpack_load_and_skip_second_time() {
    let archive = cifar10_archive();
    let server = Server::start(vec![(
        "cifar-10-binary.tar.gz".to_string(),
        archive.clone(),
    )]);
    let remote = RemoteFile::new(
        server.url("cifar-10-binary.tar.gz"),
        Checksum::Md5(md5_hex(&archive)),
        "cifar-10-binary.tar.gz",
    );
    let dir = tempdir();
    let data_dir = dir.path().join("data");
    let folder = download_dataset_from(
        DatasetKind::Cifar10,
        &data_dir,
        std::slice::from_ref(&remote),
    )
    .expect("download");
    assert_eq!(folder, data_dir.join("cifar-10-batches-bin"));
    assert_eq!(server.hits(), 1);
    // only the dataset folder (and the download's lock file) is left: no archive, no
    // temporary folder
    let entries: Vec<_> = std::fs::read_dir(&data_dir)
        .expect("list")
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| !n.to_string_lossy().ends_with(".lock"))
        .collect();
    assert_eq!(entries, vec!["cifar-10-batches-bin"]);
    let train = Dataset::load(DatasetKind::Cifar10, &data_dir, Split::Train).expect("train");
    assert_eq!(train.labels(), vec![1, 0, 2, 0, 3, 0, 4, 0, 5, 0]);
    let test = Dataset::load(DatasetKind::Cifar10, &data_dir, Split::Test).expect("test");
    assert_eq!(test.labels(), vec![9, 8, 7]);

    // second call: already there, nothing downloaded
    let again = download_dataset_from(DatasetKind::Cifar10, &data_dir, &[remote]).expect("again");
    assert_eq!(again, folder);
    assert_eq!(server.hits(), 1);
}

#[test]
fn wrong_checksum_leaves_nothing_behind() {
    let archive = cifar10_archive();
    let server = Server::start(vec![("c.tar.gz".to_string(), archive)]);
    let bad = "0123456789abcdef0123456789abcdef";
    let remote = RemoteFile::new(
        server.url("c.tar.gz"),
        Checksum::Md5(bad.to_string()),
        "c.tar.gz",
    );
    let dir = tempdir();
    let err = check_err(
        download_dataset_from(
            DatasetKind::Cifar10,
            dir.path(),
            std::slice::from_ref(&remote),
        ),
        &["checksum mismatch", &remote.url, bad, "found md5 "],
    );
    assert!(matches!(err, DataError::Checksum { .. }));
    // only the (empty, hidden) lock file of the dataset download stays
    assert_eq!(files_below(dir.path()), vec![".cifar-10-batches-bin.lock"]);
    assert_eq!(
        std::fs::read_dir(dir.path()).expect("list").count(),
        1,
        "no folders either"
    );
    std::fs::remove_file(dir.path().join(".cifar-10-batches-bin.lock")).expect("rm");

    // the same for a single file
    let err = download_verified(&remote, &dir.path().join("dl")).expect_err("mismatch");
    assert!(matches!(err, DataError::Checksum { .. }));
    assert_eq!(
        std::fs::read_dir(dir.path()).expect("list").count(),
        0,
        "not even the dl/ folder"
    );
    // into an existing folder: only the temporary file was there, and it is gone
    let err = download_verified(&remote, dir.path()).expect_err("mismatch");
    assert!(matches!(err, DataError::Checksum { .. }));
    assert_eq!(std::fs::read_dir(dir.path()).expect("list").count(), 0);
}

#[test]
fn download_verified_sha256_and_reuse() {
    let body: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let server = Server::start(vec![("w/resnet.th".to_string(), body.clone())]);
    let remote = RemoteFile::new(
        server.url("w/resnet.th"),
        Checksum::Sha256(sha256_hex(&body).to_uppercase()),
        "resnet.th",
    );
    let dir = tempdir();
    let path = download_verified(&remote, dir.path()).expect("download");
    assert_eq!(path, dir.path().join("resnet.th"));
    assert_eq!(std::fs::read(&path).expect("read"), body);
    assert_eq!(files_below(dir.path()), vec!["resnet.th"]);
    // present with the right checksum: no request
    download_verified(&remote, dir.path()).expect("again");
    assert_eq!(server.hits(), 1);
    // corrupted local copy: downloaded again
    std::fs::write(&path, b"garbage").expect("write");
    download_verified(&remote, dir.path()).expect("repair");
    assert_eq!(server.hits(), 2);
    assert_eq!(std::fs::read(&path).expect("read"), body);
}

#[test]
fn http_errors_name_the_url() {
    let server = Server::start(vec![]);
    let remote = RemoteFile::new(
        server.url("missing.bin"),
        Checksum::Md5("00".repeat(16)),
        "missing.bin",
    );
    let dir = tempdir();
    let err = check_err(
        download_verified(&remote, dir.path()),
        &["cannot download", "missing.bin", "404"],
    );
    assert!(matches!(err, DataError::Download { .. }));
    assert_eq!(files_below(dir.path()), Vec::<String>::new());
    // nothing listens there
    let closed = RemoteFile::new(
        "http://127.0.0.1:9/x.bin",
        Checksum::Md5("00".repeat(16)),
        "x.bin",
    );
    check_err(
        download_verified(&closed, dir.path()),
        &["cannot download http://127.0.0.1:9/x.bin"],
    );
}

#[test]
fn archive_without_the_dataset_folder_is_rejected() {
    let archive = tar_gz(&[("other/data_batch_1.bin".to_string(), cifar10_records(&[1]))]);
    let server = Server::start(vec![("a.tar.gz".to_string(), archive.clone())]);
    let remote = RemoteFile::new(
        server.url("a.tar.gz"),
        Checksum::Md5(md5_hex(&archive)),
        "a.tar.gz",
    );
    let dir = tempdir();
    check_err(
        download_dataset_from(DatasetKind::Cifar10, dir.path(), &[remote]),
        &[
            "cannot unpack",
            "cifar-10-batches-bin/data_batch_1.bin",
            "test_batch.bin",
        ],
    );
    assert_eq!(files_below(dir.path()), vec![".cifar-10-batches-bin.lock"]);
    assert_eq!(std::fs::read_dir(dir.path()).expect("list").count(), 1);
}

#[test]
fn incomplete_existing_folder_is_not_overwritten() {
    let dir = tempdir();
    std::fs::create_dir_all(dir.path().join("cifar-10-batches-bin")).expect("mkdir");
    let remote = RemoteFile::new(
        "http://127.0.0.1:9/never",
        Checksum::Md5("00".repeat(16)),
        "c.tar.gz",
    );
    check_err(
        download_dataset_from(DatasetKind::Cifar10, dir.path(), &[remote]),
        &["incomplete", "data_batch_1.bin", "remove it"],
    );
}

#[test]
fn tiny_imagenet_zip_download_and_load() {
    let archive = zip(&crate::locate::tiny_entries(b"n002\ttwo, deux\n"));
    let server = Server::start(vec![("tiny-imagenet-200.zip".to_string(), archive.clone())]);
    let remote = RemoteFile::new(
        server.url("tiny-imagenet-200.zip"),
        Checksum::Md5(md5_hex(&archive)),
        "tiny-imagenet-200.zip",
    );
    let dir = tempdir();
    download_dataset_from(DatasetKind::TinyImageNet, dir.path(), &[remote]).expect("download");
    let train = Dataset::load(DatasetKind::TinyImageNet, dir.path(), Split::Train).expect("train");
    assert_eq!(train.labels(), vec![0, 0, 1, 1, 2, 2]);
    assert_eq!(train.class_names(), &["n001", "two", "n003"]);
    assert_eq!(train.batch(0..6).expect("decode").shape, [6, 3, 64, 64]);
    let val = Dataset::load(DatasetKind::TinyImageNet, dir.path(), Split::Test).expect("val");
    assert_eq!(val.labels(), vec![0, 1, 2]);
}

#[test]
fn idx_gz_files_download_into_the_folder() {
    let files = [
        (
            "train-images-idx3-ubyte.gz",
            gzip(&idx_images(IDX_IMAGES_MAGIC, 3, 28, 28)),
        ),
        (
            "train-labels-idx1-ubyte.gz",
            gzip(&idx_labels(IDX_LABELS_MAGIC, &[4, 5, 6])),
        ),
        (
            "t10k-images-idx3-ubyte.gz",
            gzip(&idx_images(IDX_IMAGES_MAGIC, 1, 28, 28)),
        ),
        (
            "t10k-labels-idx1-ubyte.gz",
            gzip(&idx_labels(IDX_LABELS_MAGIC, &[9])),
        ),
    ];
    let server = Server::start(
        files
            .iter()
            .map(|(n, b)| (format!("mnist/{n}"), b.clone()))
            .collect(),
    );
    let remotes: Vec<RemoteFile> = files
        .iter()
        .map(|(n, b)| {
            RemoteFile::new(
                server.url(&format!("mnist/{n}")),
                Checksum::Md5(md5_hex(b)),
                *n,
            )
        })
        .collect();
    let dir = tempdir();
    let folder = download_dataset_from(DatasetKind::Mnist, dir.path(), &remotes).expect("download");
    let mut names = files_below(&folder);
    names.sort();
    assert_eq!(names.len(), 4);
    assert!(names.iter().all(|n| n.ends_with(".gz")));
    assert_eq!(
        Dataset::load(DatasetKind::Mnist, dir.path(), Split::Train)
            .expect("train")
            .labels(),
        vec![4, 5, 6]
    );
    assert_eq!(
        Dataset::load(DatasetKind::Mnist, dir.path(), Split::Test)
            .expect("test")
            .len(),
        1
    );
    assert_eq!(server.hits(), 4);
}
