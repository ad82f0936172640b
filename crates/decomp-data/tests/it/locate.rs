//! The one data resolution, on a loopback HTTP server serving small generated archives in
//! each official layout: the first run downloads and loads, the second downloads nothing, a
//! corrupt archive is refused and removed, two concurrent runs download once, offline never
//! touches the network, and failures say what failed in one line.

use std::path::Path;

use decomp_data::fetch::{Checksum, RemoteFile};
use decomp_data::locate::{DataRoot, DatasetFolder, Source};
use decomp_data::subset::{SUBSET20_TREE_SHA256, SubsetSpec, select, tree_sha256};
use decomp_data::{DataError, Dataset, DatasetKind, IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC, Split};

use crate::common::{
    Server, cifar_record, cifar10_records, files_below, gzip, idx_images, idx_labels, md5_hex,
    shared, tar_gz, tempdir, zip,
};
use crate::tiny::{WNIDS, jpeg};

/// An official layout: the dataset, its archives (served name, bytes), and what loading the
/// result must give (train labels, test labels).
struct Layout {
    kind: DatasetKind,
    archives: Vec<(String, Vec<u8>)>,
    train: Vec<usize>,
    test: Vec<usize>,
}

fn cifar10() -> Layout {
    let mut entries: Vec<(String, Vec<u8>)> = (1..=5)
        .map(|f| {
            (
                format!("cifar-10-batches-bin/data_batch_{f}.bin"),
                cifar10_records(&[f as u8]),
            )
        })
        .collect();
    entries.push((
        "cifar-10-batches-bin/test_batch.bin".into(),
        cifar10_records(&[9, 8]),
    ));
    entries.push((
        "cifar-10-batches-bin/batches.meta.txt".into(),
        decomp_data::CIFAR10_CLASSES.join("\n").into_bytes(),
    ));
    Layout {
        kind: DatasetKind::Cifar10,
        archives: vec![("cifar-10-binary.tar.gz".into(), tar_gz(&entries))],
        train: vec![1, 2, 3, 4, 5],
        test: vec![9, 8],
    }
}

fn cifar100() -> Layout {
    // <coarse><fine><3072 pixels>
    let records = |fine: &[u8]| -> Vec<u8> {
        fine.iter()
            .flat_map(|&f| cifar_record(&[f / 5, f], |_, i| (i % 251) as u8))
            .collect()
    };
    let entries = vec![
        (
            "cifar-100-binary/train.bin".to_string(),
            records(&[3, 99, 42]),
        ),
        ("cifar-100-binary/test.bin".to_string(), records(&[7])),
    ];
    Layout {
        kind: DatasetKind::Cifar100 { coarse: false },
        archives: vec![("cifar-100-binary.tar.gz".into(), tar_gz(&entries))],
        train: vec![3, 99, 42],
        test: vec![7],
    }
}

fn fashion_mnist() -> Layout {
    Layout {
        kind: DatasetKind::FashionMnist,
        archives: vec![
            (
                "train-images-idx3-ubyte.gz".into(),
                gzip(&idx_images(IDX_IMAGES_MAGIC, 2, 28, 28)),
            ),
            (
                "train-labels-idx1-ubyte.gz".into(),
                gzip(&idx_labels(IDX_LABELS_MAGIC, &[4, 5])),
            ),
            (
                "t10k-images-idx3-ubyte.gz".into(),
                gzip(&idx_images(IDX_IMAGES_MAGIC, 1, 28, 28)),
            ),
            (
                "t10k-labels-idx1-ubyte.gz".into(),
                gzip(&idx_labels(IDX_LABELS_MAGIC, &[9])),
            ),
        ],
        train: vec![4, 5],
        test: vec![9],
    }
}

/// The official zip layout of classes `tiny::WNIDS`: 2 train images per class (plus a boxes
/// file), 1 val image each, and `words`.
pub fn tiny_entries(words: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut entries = vec![
        (
            "tiny-imagenet-200/wnids.txt".to_string(),
            WNIDS.join("\n").into_bytes(),
        ),
        ("tiny-imagenet-200/words.txt".to_string(), words.to_vec()),
    ];
    let mut annotations = String::new();
    for (c, wnid) in WNIDS.iter().enumerate() {
        for k in 0..2 {
            entries.push((
                format!("tiny-imagenet-200/train/{wnid}/images/{wnid}_{k}.JPEG"),
                jpeg(64, [c as u8 * 100, k as u8, 0], false),
            ));
        }
        entries.push((
            format!("tiny-imagenet-200/train/{wnid}/{wnid}_boxes.txt"),
            b"x".to_vec(),
        ));
        annotations.push_str(&format!("val_{c}.JPEG\t{wnid}\t0\t0\t1\t1\n"));
        entries.push((
            format!("tiny-imagenet-200/val/images/val_{c}.JPEG"),
            jpeg(64, [0; 3], true),
        ));
    }
    entries.push((
        "tiny-imagenet-200/val/val_annotations.txt".to_string(),
        annotations.into_bytes(),
    ));
    entries
}

fn tiny() -> Layout {
    Layout {
        kind: DatasetKind::TinyImageNet,
        // (words.txt also names a class that is not in the zip, as the official one names all
        // of WordNet)
        archives: vec![(
            "tiny-imagenet-200.zip".into(),
            zip(&tiny_entries(
                b"n001\tone\nn002\ttwo, deux\nn003\tthree\nn009\tnine, gorilla\n",
            )),
        )],
        train: vec![0, 0, 1, 1, 2, 2],
        test: vec![0, 1, 2],
    }
}

/// The archives of `layout` as served by `server` (under `prefix/`), with their md5s.
fn remotes(server: &Server, prefix: &str, archives: &[(String, Vec<u8>)]) -> Vec<RemoteFile> {
    archives
        .iter()
        .map(|(name, bytes)| {
            RemoteFile::new(
                server.url(&format!("{prefix}/{name}")),
                Checksum::Md5(md5_hex(bytes)),
                name.clone(),
            )
        })
        .collect()
}

fn serve(layouts: &[&Layout]) -> Server {
    serve_slow(layouts, std::time::Duration::ZERO)
}

/// [`serve`], answering after `delay`: a download takes that long, so concurrent runs overlap.
fn serve_slow(layouts: &[&Layout], delay: std::time::Duration) -> Server {
    Server::start_slow(
        layouts
            .iter()
            .flat_map(|l| {
                l.archives
                    .iter()
                    .map(|(n, b)| (format!("{}/{n}", l.kind), b.clone()))
            })
            .collect(),
        delay,
    )
}

/// A data folder where downloads happen (downloads on, whatever the environment says).
fn root(dir: &Path) -> DataRoot {
    DataRoot {
        offline: false,
        ..DataRoot::at(dir)
    }
}

/// Files below `dir` that a later run could take for data: everything but lock files.
fn data_files(dir: &Path) -> Vec<String> {
    if !dir.exists() {
        return Vec::new();
    }
    files_below(dir)
        .into_iter()
        .filter(|f| !f.ends_with(".lock"))
        .collect()
}

#[test]
fn first_run_downloads_and_loads_second_run_downloads_nothing() {
    let layouts = [cifar10(), cifar100(), fashion_mnist(), tiny()];
    let server = serve(&layouts.iter().collect::<Vec<_>>());
    let dir = tempdir();
    let data = root(&dir.path().join("cache/datasets"));
    let mut hits = 0;
    for l in &layouts {
        let want = DatasetFolder::official(l.kind);
        let source = Source::Official(remotes(&server, l.kind.name(), &l.archives));
        let folder = data.ensure_from(&want, &source).expect("first run");
        hits += l.archives.len();
        assert_eq!(server.hits(), hits, "{}: one request per archive", l.kind);
        assert_eq!(folder, data.download_dir.join(l.kind.folder_name()));
        // ...and it runs: both splits load with the archive's labels
        let train = Dataset::load_folder(l.kind, &folder, Split::Train).expect("train");
        assert_eq!(train.labels(), l.train, "{}", l.kind);
        let test = Dataset::load_folder(l.kind, &folder, Split::Test).expect("test");
        assert_eq!(test.labels(), l.test, "{}", l.kind);
        assert!(train.batch(0..1).is_ok());
        // second run: found, nothing requested
        assert_eq!(
            data.ensure_from(&want, &source).expect("second run"),
            folder
        );
        assert_eq!(
            server.hits(),
            hits,
            "{}: second run downloads nothing",
            l.kind
        );
    }
    // only the dataset folders (and lock files) remain: no archive, no temporary folder
    let mut top: Vec<String> = std::fs::read_dir(&data.download_dir)
        .expect("list")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".lock"))
        .collect();
    top.sort();
    assert_eq!(
        top,
        [
            "cifar-10-batches-bin",
            "cifar-100-binary",
            "fashion-mnist",
            "tiny-imagenet-200"
        ]
    );
}

#[test]
fn corrupt_archive_is_refused_and_removed() {
    for l in [cifar10(), tiny(), fashion_mnist()] {
        let mut corrupt = l.archives.clone();
        let last = corrupt.len() - 1;
        let middle = corrupt[last].1.len() / 2;
        corrupt[last].1[middle] ^= 0xff;
        let server = Server::start(
            corrupt
                .iter()
                .map(|(n, b)| (format!("x/{n}"), b.clone()))
                .collect(),
        );
        let dir = tempdir();
        let data = root(&dir.path().join("datasets"));
        let want = DatasetFolder::official(l.kind);
        // the published md5s are those of the intact archives
        let source = Source::Official(remotes(&server, "x", &l.archives));
        let err = data.ensure_from(&want, &source).expect_err("corrupt");
        let msg = err.to_string();
        assert!(matches!(err, DataError::FetchFailed { .. }), "{msg}");
        let first = msg.lines().next().expect("a line");
        assert!(
            first.contains("checksum mismatch") && first.contains(&corrupt[last].0),
            "{msg}"
        );
        assert_eq!(
            data_files(dir.path()),
            Vec::<String>::new(),
            "{}: nothing left",
            l.kind
        );
        assert!(data.find(&want).is_none());
    }
}

#[test]
fn what_a_killed_download_left_is_not_data_and_is_cleared() {
    let l = cifar10();
    let server = serve(&[&l]);
    let dir = tempdir();
    let data = root(dir.path());
    // a download killed while unpacking: a staging folder and a partial archive
    let stale = dir.path().join(".cifar-10-batches-bin.download.XyZ12");
    let inside = stale.join("unpacked/cifar-10-batches-bin");
    std::fs::create_dir_all(&inside).expect("mkdir");
    std::fs::write(inside.join("data_batch_1.bin"), cifar10_records(&[1])).expect("write");
    std::fs::create_dir_all(stale.join("archives")).expect("mkdir");
    std::fs::write(
        stale.join("archives/.cifar-10-binary.tar.gz.abc.part"),
        b"half",
    )
    .expect("write");
    let want = DatasetFolder::official(l.kind);
    assert!(
        data.find(&want).is_none(),
        "a staging folder is never taken for the dataset"
    );
    let source = Source::Official(remotes(&server, "cifar10", &l.archives));
    let folder = data.ensure_from(&want, &source).expect("download");
    assert!(
        !stale.exists(),
        "the next download removes what the killed one left"
    );
    assert_eq!(
        Dataset::load_folder(l.kind, &folder, Split::Train)
            .expect("train")
            .labels(),
        l.train
    );
    assert_eq!(server.hits(), 1);
}

#[test]
fn two_concurrent_runs_download_once() {
    let l = cifar10();
    let server = serve_slow(&[&l], std::time::Duration::from_millis(300));
    let dir = tempdir();
    let data_dir = dir.path().join("datasets");
    let source = Source::Official(remotes(&server, "cifar10", &l.archives));
    let want = DatasetFolder::official(l.kind);
    let start = std::sync::Barrier::new(2);
    let folders: Vec<_> = std::thread::scope(|s| {
        let runs: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(|| {
                    // each run resolves its own root, as two processes would
                    let data = root(&data_dir);
                    start.wait();
                    data.ensure_from(&want, &source)
                })
            })
            .collect();
        runs.into_iter()
            .map(|h| h.join().expect("thread").expect("run"))
            .collect()
    });
    assert_eq!(folders[0], folders[1]);
    assert_eq!(server.hits(), 1, "the archive was downloaded once");
    assert_eq!(
        Dataset::load_folder(l.kind, &folders[0], Split::Test)
            .expect("test")
            .labels(),
        l.test
    );
}

/// The archive URL and md5, and the data folder, handed to [`download_in_a_child_process`].
const CHILD_ENV: [&str; 3] = [
    "DECOMP_TEST_CHILD_URL",
    "DECOMP_TEST_CHILD_MD5",
    "DECOMP_TEST_CHILD_DIR",
];

/// Not a test of its own: the body of one of the two processes of
/// [`two_concurrent_processes_download_once`] (run by it with `--ignored --exact`).
#[test]
#[ignore = "run as a child process by two_concurrent_processes_download_once"]
fn download_in_a_child_process() {
    let [url, md5, dir] = CHILD_ENV.map(|k| std::env::var(k).expect(k));
    let source = Source::Official(vec![RemoteFile::new(
        url,
        Checksum::Md5(md5),
        "cifar-10-binary.tar.gz",
    )]);
    let folder = root(Path::new(&dir))
        .ensure_from(&DatasetFolder::official(DatasetKind::Cifar10), &source)
        .expect("child run");
    println!("folder {}", folder.display());
}

#[test]
fn two_concurrent_processes_download_once() {
    let l = cifar10();
    let server = serve_slow(&[&l], std::time::Duration::from_millis(500));
    let dir = tempdir();
    let remote = &remotes(&server, "cifar10", &l.archives)[0];
    let Checksum::Md5(md5) = &remote.checksum else {
        panic!("md5")
    };
    let children: Vec<_> = (0..2)
        .map(|_| {
            std::process::Command::new(std::env::current_exe().expect("test binary"))
                .args([
                    "--ignored",
                    "--exact",
                    "locate::download_in_a_child_process",
                    "--nocapture",
                    "--test-threads",
                    "1",
                ])
                .env(CHILD_ENV[0], &remote.url)
                .env(CHILD_ENV[1], md5)
                .env(CHILD_ENV[2], dir.path())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("spawn")
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().expect("wait");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains(&format!(
                "folder {}",
                dir.path().join("cifar-10-batches-bin").display()
            )),
            "{stdout}"
        );
    }
    assert_eq!(server.hits(), 1, "two processes, one download");
}

#[test]
fn offline_errors_without_touching_the_network() {
    let l = cifar10();
    let server = serve(&[&l]);
    let dir = tempdir();
    let data = DataRoot {
        offline: true,
        ..root(dir.path())
    };
    let source = Source::Official(remotes(&server, "cifar10", &l.archives));
    let err = data
        .ensure_from(&DatasetFolder::official(l.kind), &source)
        .expect_err("offline");
    let msg = err.to_string();
    assert!(matches!(err, DataError::DatasetMissing { .. }), "{msg}");
    for part in [
        "cifar-10-batches-bin",
        "data_batch_1.bin",
        "cs.toronto.edu",
        "--data-dir",
        "downloads are off",
    ] {
        assert!(msg.contains(part), "lacks {part:?}: {msg}");
    }
    assert_eq!(server.hits(), 0);
    assert_eq!(
        std::fs::read_dir(dir.path()).expect("list").count(),
        0,
        "nothing written"
    );
}

/// A failed download says what failed in its first line and the two ways out after it.
#[track_caller]
fn check_failure(err: DataError, what: &str) {
    let msg = err.to_string();
    let lines: Vec<&str> = msg.lines().collect();
    assert_eq!(lines.len(), 2, "{msg}");
    assert!(
        lines[0].starts_with("cannot get cifar-10-batches-bin: cannot download")
            && lines[0].contains(what),
        "{msg}"
    );
    assert!(
        lines[1].starts_with("fix:")
            && lines[1].contains("--data-dir DIR")
            && lines[1].contains("DECOMP_DATA_DIR"),
        "{msg}"
    );
}

#[test]
fn failures_say_what_failed_in_one_line() {
    let dir = tempdir();
    let data = root(&dir.path().join("datasets"));
    let want = DatasetFolder::official(DatasetKind::Cifar10);
    let at = |url: String| {
        Source::Official(vec![RemoteFile::new(
            url,
            Checksum::Md5("0".repeat(32)),
            "c.tar.gz",
        )])
    };
    // HTTP status
    let server = Server::start(vec![]);
    check_failure(
        data.ensure_from(&want, &at(server.url("c.tar.gz")))
            .expect_err("404"),
        "HTTP status 404",
    );
    // nothing listens on the port
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    check_failure(
        data.ensure_from(&want, &at(format!("http://127.0.0.1:{port}/c.tar.gz")))
            .expect_err("refused"),
        "refused",
    );
    // a name that does not resolve (`.invalid` never does)
    check_failure(
        data.ensure_from(&want, &at("http://no-such-host.invalid/c.tar.gz".into()))
            .expect_err("dns"),
        "DNS lookup of no-such-host.invalid failed",
    );
    assert_eq!(data_files(dir.path()), Vec::<String>::new());
}

#[test]
fn a_folder_without_a_known_source_is_not_downloaded() {
    let dir = tempdir();
    let err = root(dir.path())
        .ensure(&DatasetFolder::named(DatasetKind::Cifar10, "my-cifar"))
        .expect_err("unknown");
    let msg = err.to_string();
    assert!(
        msg.contains("no download is known for a folder named \"my-cifar\"")
            && !msg.contains("--download"),
        "{msg}"
    );
}

/// The subset spec of the generated Tiny ImageNet: two official classes and one extra class
/// (`n009`) from a second URL, with the extra annotations file (CRLF lines, as the authors').
fn subset_spec(server: &Server, tree: Option<String>) -> SubsetSpec {
    SubsetSpec {
        name: "tiny-subset".into(),
        kind: DatasetKind::TinyImageNet,
        wnids: vec!["n003".into(), "n001".into(), "n009".into()],
        extra_url: server.url("authors/"),
        extra_classes: vec!["n009".into()],
        extra_train_images: 2,
        extra_annotations: true,
        tree_sha256: tree,
    }
}

fn authors_files() -> Vec<(String, Vec<u8>)> {
    let mut files = vec![(
        "authors/val/val_annotations.txt".to_string(),
        b"val_0.JPEG\tn001\t0\t0\t1\t1\nval_1.JPEG\tn002\t0\t0\t1\t1\nval_2.JPEG\tn003\t0\t0\t1\t1\nval_10.JPEG\tn009\t1\t2\t3\t4\r\nval_11.JPEG\tn009\t1\t2\t3\t4".to_vec(),
    )];
    for k in 0..2 {
        files.push((
            format!("authors/train/n009/images/n009_{k}.JPEG"),
            jpeg(64, [7, k, 7], false),
        ));
    }
    for v in [10, 11] {
        files.push((
            format!("authors/val/images/val_{v}.JPEG"),
            jpeg(64, [v, 0, 0], false),
        ));
    }
    files
}

#[test]
fn subset_is_built_from_the_official_zip_by_the_documented_selection() {
    let l = tiny();
    let mut files: Vec<(String, Vec<u8>)> = l
        .archives
        .iter()
        .map(|(n, b)| (format!("tiny/{n}"), b.clone()))
        .collect();
    files.extend(authors_files());
    let server = Server::start(files);
    let dir = tempdir();
    let data = root(dir.path());
    let base = remotes(&server, "tiny", &l.archives);
    let spec = subset_spec(&server, None);
    let want = DatasetFolder::named(DatasetKind::TinyImageNet, &spec.name);
    let source = Source::Subset {
        spec: spec.clone(),
        base: base.clone(),
    };
    let folder = data.ensure_from(&want, &source).expect("build");
    assert_eq!(folder, dir.path().join("tiny-subset"));
    let read = |rel: &str| std::fs::read_to_string(folder.join(rel)).expect(rel);
    assert_eq!(read("wnids.txt"), "n003\nn001\nn009\n");
    assert_eq!(
        read("words.txt"),
        "n001\tone\nn003\tthree\nn009\tnine, gorilla\n"
    );
    // annotations: the authors' lines of the kept classes, in their order, bytes unchanged
    assert_eq!(
        read("val/val_annotations.txt"),
        "val_0.JPEG\tn001\t0\t0\t1\t1\nval_2.JPEG\tn003\t0\t0\t1\t1\nval_10.JPEG\tn009\t1\t2\t3\t4\r\nval_11.JPEG\tn009\t1\t2\t3\t4\n"
    );
    let mut names = files_below(&folder);
    names.sort();
    assert_eq!(names.len(), 3 + 4 + 2 * 3 + 2, "{names:?}");
    assert!(names.contains(&"train/n003/n003_boxes.txt".to_string()));
    let train =
        Dataset::load_folder(DatasetKind::TinyImageNet, &folder, Split::Train).expect("train");
    assert_eq!(train.labels(), vec![0, 0, 1, 1, 2, 2]);
    assert_eq!(train.class_names(), ["three", "one", "nine"]);
    let val = Dataset::load_folder(DatasetKind::TinyImageNet, &folder, Split::Test).expect("val");
    assert_eq!(val.labels(), vec![1, 0, 2, 2]);
    let requests = server.hits();
    assert_eq!(
        requests,
        1 + 1 + 2 + 2,
        "zip, annotations, 2 train + 2 val images"
    );
    // second run: nothing requested
    data.ensure_from(&want, &source).expect("again");
    assert_eq!(server.hits(), requests);

    // the same build with a pinned tree hash: accepted when equal, refused and removed if not
    let tree = tree_sha256(&folder).expect("tree");
    let other = tempdir();
    let pinned = root(other.path());
    let ok = Source::Subset {
        spec: subset_spec(&server, Some(tree.clone())),
        base: base.clone(),
    };
    // (the official zip is unpacked in `other` first, then the subset is cut from it)
    let built = pinned.ensure_from(&want, &ok).expect("pinned");
    assert_eq!(tree_sha256(&built).expect("tree"), tree);
    let bad = Source::Subset {
        spec: subset_spec(&server, Some("0".repeat(64))),
        base,
    };
    let third = tempdir();
    let err = root(third.path())
        .ensure_from(&want, &bad)
        .expect_err("wrong tree");
    let msg = err.to_string();
    assert!(
        msg.lines()
            .next()
            .is_some_and(|l| l.contains("checksum mismatch") && l.contains("tree sha256")),
        "{msg}"
    );
    assert!(!third.path().join("tiny-subset").exists());
    let left: Vec<String> = std::fs::read_dir(third.path())
        .expect("list")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".lock"))
        .collect();
    assert_eq!(
        left,
        ["tiny-imagenet-200"],
        "only the verified official dataset stays"
    );
}

/// The documented selection, run on the authors' files in `shared/`, gives the folder the
/// experiments use, byte for byte (its pinned tree hash).
#[test]
fn real_subset20_selection_equals_the_experiments_folder() {
    let (Some(subset), Some(val)) = (
        shared("datasets/tiny-imagenet-subset20"),
        shared("datasets/tiny-imagenet-200-val"),
    ) else {
        eprintln!(
            "skipping: ../shared/datasets/tiny-imagenet-subset20 or tiny-imagenet-200-val not found"
        );
        return;
    };
    assert_eq!(tree_sha256(&subset).expect("tree"), SUBSET20_TREE_SHA256);
    let spec = decomp_data::subset::known_subsets().remove(0);
    assert_eq!(spec.name, "tiny-imagenet-subset20");
    let dir = tempdir();
    let out = dir.path().join("subset");
    // words.txt, the annotations and the val images from the authors' full val folder (202
    // classes); train folders from the subset (shared/ holds no other copy of them)
    select(&spec, &[val.as_path(), subset.as_path()], &out).expect("select");
    assert_eq!(tree_sha256(&out).expect("tree"), SUBSET20_TREE_SHA256);
}
