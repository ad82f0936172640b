//! Issue 19 through the binary: outputs never destroy inputs or special files, every flag is
//! honoured or refused, empty inputs and duplicates are errors, reused output folders never
//! mix runs, a closed stdout ends quietly. Each case checks the exit code, the message, and
//! that no input (or special file) changed. Special files are made in a temp folder (FIFOs
//! with `mkfifo`, device nodes with `mknod` where the test runs as root), never the real ones.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use decomp_ir::{ConcernSet, ModelIr, read_artifact, write_artifact};

use crate::support::{cifar_file, decomp, decomp_sh, s};

/// A small untrained CIFAR-10-shaped ResNet-8 with the CIFAR-10 class names.
fn model_file(dir: &Path, name: &str, seed: u64) -> PathBuf {
    let mut m = decomp_model::ResNetConfig::new(8, 10)
        .with_seed(seed)
        .build()
        .expect("build");
    m.meta.class_names = decomp_data::CIFAR10_CLASSES
        .iter()
        .map(|c| c.to_string())
        .collect();
    let p = dir.join(name);
    write_artifact(&p, &m).expect("write model");
    p
}

/// The files of a folder (relative names) and their bytes: what "nothing changed" compares.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir").flatten() {
            let t = e.file_type().expect("file type");
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() {
                out.push((
                    e.path().strip_prefix(dir).expect("inside").to_path_buf(),
                    std::fs::read(e.path()).expect("read"),
                ));
            } else {
                out.push((
                    e.path().strip_prefix(dir).expect("inside").to_path_buf(),
                    Vec::new(),
                ));
            }
        }
    }
    out.sort();
    out
}

/// Asserts a refused run: non-zero exit, every `needles` in stderr, no panic.
fn refused(r: (bool, String, String), needles: &[&str]) -> String {
    let (ok, _, err) = r;
    assert!(
        !ok,
        "expected a refusal mentioning {needles:?}, the command succeeded: {err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    for n in needles {
        assert!(err.contains(n), "expected {n:?} in: {err}");
    }
    err
}

fn ok(r: (bool, String, String)) -> String {
    let (ok, out, err) = r;
    assert!(ok, "{err}");
    out
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn mkfifo(path: &Path) -> bool {
    Command::new("mkfifo")
        .arg(path)
        .status()
        .is_ok_and(|s| s.success())
}

/// A character device (`/dev/null` is 1 3, `/dev/zero` 1 5) made in `dir`, when this test
/// may make one (root with CAP_MKNOD).
fn char_device(dir: &Path, name: &str, minor: &str) -> Option<PathBuf> {
    let p = dir.join(name);
    (is_root()
        && Command::new("mknod")
            .arg(&p)
            .args(["c", "1", minor])
            .status()
            .is_ok_and(|s| s.success()))
    .then_some(p)
}

/// A CIFAR-10 dataset folder (`<dir>/cifar-10-batches-bin`) with `per_file` records in each
/// training file and `test` records in the test file; the test records differ from the
/// training ones.
fn cifar_dir(dir: &Path, per_file: usize, test: usize) -> PathBuf {
    let folder = dir.join("cifar-10-batches-bin");
    std::fs::create_dir_all(&folder).expect("mkdir");
    for i in 1..=5 {
        cifar_file(&folder.join(format!("data_batch_{i}.bin")), per_file);
    }
    let mut bytes = Vec::new();
    for i in 0..test {
        bytes.push(((i + 3) % 10) as u8);
        bytes.extend((0..3072).map(|p| ((p * 11 + i * 7) % 256) as u8));
    }
    std::fs::write(folder.join("test_batch.bin"), bytes).expect("write test batch");
    std::fs::write(
        folder.join("batches.meta.txt"),
        decomp_data::CIFAR10_CLASSES.join("\n"),
    )
    .expect("meta");
    dir.to_path_buf()
}

/// A Tiny ImageNet folder of two classes whose val split lists `annotations`; the files the
/// lines name exist (their bytes are never decoded by the cases that use this).
fn tiny_dir(dir: &Path, annotations: &str) -> PathBuf {
    let f = dir.join("tiny");
    std::fs::create_dir_all(f.join("val/images")).expect("mkdir");
    std::fs::create_dir_all(f.join("train/n01/images")).expect("mkdir");
    std::fs::create_dir_all(f.join("train/n02/images")).expect("mkdir");
    std::fs::write(f.join("wnids.txt"), "n01\nn02\n").expect("wnids");
    std::fs::write(f.join("words.txt"), "n01\tgorilla\nn02\tgroom\n").expect("words");
    std::fs::write(f.join("val/images/val_0.JPEG"), b"not decoded").expect("image");
    std::fs::write(f.join("val/images/val_1.JPEG"), b"not decoded").expect("image");
    std::fs::write(f.join("val/val_annotations.txt"), annotations).expect("annotations");
    f
}

#[test]
fn special_files_are_never_replaced() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let new_model = |out: &Path| decomp(&["new-model", "--arch", "resnet8", "--out", s(out)]);
    // A FIFO (no reader: opening it for writing would block, so it must not be opened).
    let fifo = d.join("fifo");
    assert!(mkfifo(&fifo), "mkfifo");
    refused(new_model(&fifo), &["fifo", "is a FIFO", "regular files"]);
    assert!(
        std::fs::symlink_metadata(&fifo)
            .expect("fifo")
            .file_type()
            .is_fifo()
    );
    // A folder.
    std::fs::create_dir(d.join("folder")).expect("mkdir");
    refused(new_model(&d.join("folder")), &["is a folder"]);
    assert!(d.join("folder").is_dir());
    // A symlink to a FIFO.
    std::os::unix::fs::symlink(&fifo, d.join("to-fifo")).expect("symlink");
    refused(
        new_model(&d.join("to-fifo")),
        &["to-fifo", "is a FIFO", "the symlink leads to"],
    );
    // A character device (as root, as CI and containers run): the issue's /dev/null case.
    match char_device(d, "null", "3") {
        Some(null) => {
            refused(new_model(&null), &["is a character device"]);
            assert!(
                std::fs::symlink_metadata(&null)
                    .expect("null")
                    .file_type()
                    .is_char_device()
            );
            // Also as another command's --out and as --save-margins.
            let m = model_file(d, "m.ir", 0);
            let data = d.join("r.bin");
            cifar_file(&data, 20);
            refused(
                decomp(&[
                    "concern",
                    "--weights",
                    s(&m),
                    "--data-file",
                    s(&data),
                    "--out",
                    s(&null),
                ]),
                &["character device"],
            );
            assert!(
                std::fs::symlink_metadata(&null)
                    .expect("null")
                    .file_type()
                    .is_char_device()
            );
        }
        None => eprintln!("skipping the character-device case: not root, mknod needs CAP_MKNOD"),
    }
    // Nothing but the special files and the model is left (no temp file).
    let names: Vec<String> = std::fs::read_dir(d)
        .expect("ls")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.contains(".tmp-")), "{names:?}");
}

#[test]
fn symlinks_are_written_through_and_modes_follow_the_umask() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    // A symlink as --out: the file it names is replaced, the link stays a link.
    std::fs::write(d.join("target.ir"), b"old").expect("write");
    std::os::unix::fs::symlink("target.ir", d.join("link.ir")).expect("symlink");
    ok(decomp(&[
        "new-model",
        "--arch",
        "resnet8",
        "--out",
        s(&d.join("link.ir")),
    ]));
    assert!(
        std::fs::symlink_metadata(d.join("link.ir"))
            .expect("link")
            .file_type()
            .is_symlink()
    );
    let m: ModelIr =
        read_artifact(&d.join("target.ir")).expect("the link's target holds the model");
    assert_eq!(m.meta.arch, "resnet8");
    // A dangling symlink: its target is created.
    std::os::unix::fs::symlink("sub/new.ir", d.join("dangling.ir")).expect("symlink");
    ok(decomp(&[
        "new-model",
        "--arch",
        "resnet8",
        "--out",
        s(&d.join("dangling.ir")),
    ]));
    assert!(d.join("sub/new.ir").is_file());
    // New files get 0o666 & !umask.
    for (umask, mode) in [("022", 0o644), ("077", 0o600), ("002", 0o664)] {
        let p = d.join(format!("u{umask}.ir"));
        ok(decomp_sh(
            &format!("umask {umask}"),
            &["new-model", "--arch", "resnet8", "--out", s(&p)],
        ));
        assert_eq!(
            std::fs::metadata(&p).expect("meta").permissions().mode() & 0o777,
            mode,
            "umask {umask}"
        );
    }
    // A replaced file keeps its mode.
    let p = d.join("kept.ir");
    std::fs::write(&p, b"x").expect("write");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    ok(decomp_sh(
        "umask 077",
        &["new-model", "--arch", "resnet8", "--out", s(&p)],
    ));
    assert_eq!(
        std::fs::metadata(&p).expect("meta").permissions().mode() & 0o777,
        0o640
    );
}

#[test]
fn stale_temp_files_of_a_killed_write_are_removed_by_the_next_write() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    // What `kill -9` during a write leaves: a full-size temp file of a process that is gone
    // (pid above Linux's largest pid_max), and one of a process that still runs (this test).
    let dead = d.join(".m.ir.tmp-4294967-abc123");
    let live = d.join(format!(".m.ir.tmp-{}-def456", std::process::id()));
    let other = d.join(".other.ir.tmp-4294967-abc123");
    for p in [&dead, &live, &other] {
        std::fs::write(p, vec![7u8; 4096]).expect("write");
    }
    ok(decomp(&[
        "new-model",
        "--arch",
        "resnet8",
        "--out",
        s(&d.join("m.ir")),
    ]));
    assert!(!dead.exists(), "the dead process's temp file is removed");
    assert!(live.exists(), "a running process's temp file is left alone");
    assert!(other.exists(), "another target's temp file is left alone");
}

#[test]
fn an_output_that_is_an_input_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let m = model_file(d, "m.ir", 0);
    let data = d.join("r.bin");
    cifar_file(&data, 40);
    let common = |v: &mut Vec<String>| {
        v.extend(
            [
                "--data-file",
                s(&data),
                "--batch-size",
                "8",
                "--positives",
                "3",
                "--positive-filter",
                "all",
            ]
            .map(String::from),
        )
    };
    // Modules to compose.
    let mut a: Vec<String> = [
        "decompose",
        "--weights",
        s(&m),
        "--classes",
        "0,1",
        "--out-dir",
        s(&d.join("run")),
    ]
    .map(String::from)
    .to_vec();
    common(&mut a);
    ok(decomp(&a.iter().map(String::as_str).collect::<Vec<_>>()));
    let ma = d.join("run/mc-bln/module_000.mod");
    let mb = d.join("run/mc-bln/module_001.mod");
    let before = snapshot(d);
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "concern",
                "--weights",
                s(&m),
                "--data-file",
                s(&data),
                "--out",
                s(&m),
            ],
            "m.ir",
        ),
        (
            vec![
                "compose",
                s(&ma),
                s(&mb),
                "--data-file",
                s(&data),
                "--out",
                s(&ma),
            ],
            "module_000.mod",
        ),
        (
            vec![
                "compose",
                s(&ma),
                s(&mb),
                "--data-file",
                s(&data),
                "--save-margins",
                s(&mb),
            ],
            "module_001.mod",
        ),
        (
            vec![
                "compose",
                s(&ma),
                s(&mb),
                "--data-file",
                s(&data),
                "--out",
                s(&data),
            ],
            "r.bin",
        ),
        (vec!["import", "--weights", s(&m), "--out", s(&m)], "m.ir"),
        (vec!["export", "--weights", s(&m), "--out", s(&m)], "m.ir"),
    ];
    for (args, name) in cases {
        refused(decomp(&args), &[name, "is also an input of this command"]);
        assert_eq!(snapshot(d), before, "{args:?} changed a file");
    }
    // The same file under another name: a symlink, a relative path, a hard link.
    std::os::unix::fs::symlink(&m, d.join("alias.ir")).expect("symlink");
    std::fs::hard_link(&m, d.join("hard.ir")).expect("hard link");
    let before = snapshot(d);
    for out in [d.join("alias.ir"), d.join("hard.ir"), d.join("run/../m.ir")] {
        refused(
            decomp(&["import", "--weights", s(&m), "--out", s(&out)]),
            &["is also an input of this command"],
        );
        assert_eq!(snapshot(d), before);
    }
    // An output inside an input dataset folder.
    let cd = cifar_dir(&d.join("data"), 2, 20);
    let target = cd.join("cifar-10-batches-bin/test_batch.bin");
    let before = snapshot(&cd);
    refused(
        decomp(&[
            "compose",
            s(&ma),
            s(&mb),
            "--data-dir",
            s(&cd),
            "--classes",
            "0,1",
            "--out",
            s(&target),
        ]),
        &["test_batch.bin", "an input folder of this command"],
    );
    refused(
        decomp(&[
            "compose",
            s(&ma),
            s(&mb),
            "--data-dir",
            s(&cd),
            "--classes",
            "0,1",
            "--out",
            s(&cd.join("cifar-10-batches-bin/new.json")),
        ]),
        &["an input folder of this command"],
    );
    refused(
        decomp(&[
            "decompose",
            "--weights",
            s(&m),
            "--data-dir",
            s(&cd),
            "--out-dir",
            s(&cd.join("cifar-10-batches-bin/run")),
        ]),
        &["--out-dir", "an input folder of this command"],
    );
    assert_eq!(snapshot(&cd), before);
    // --out and --save-margins naming one file.
    refused(
        decomp(&[
            "compose",
            s(&ma),
            s(&mb),
            "--data-file",
            s(&data),
            "--out",
            s(&d.join("x.json")),
            "--save-margins",
            s(&d.join("x.json")),
        ]),
        &["--out and --save-margins name the same file"],
    );
}

#[test]
fn real_checkpoint_import_refuses_to_overwrite_itself() {
    let shared = std::env::var_os("DECOMP_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("../../../shared"));
    let src = shared.join("models/cifar10/resnet20-12fca82f.th");
    if !src.is_file() {
        eprintln!(
            "skipping: {} not found (set DECOMP_SHARED_DIR)",
            src.display()
        );
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let th = dir.path().join("x.th");
    std::fs::copy(&src, &th).expect("copy to a temp folder");
    let before = std::fs::read(&th).expect("read");
    refused(
        decomp(&["import", "--weights", s(&th), "--out", s(&th)]),
        &["x.th", "is also an input of this command"],
    );
    assert_eq!(std::fs::read(&th).expect("read"), before);
}

#[test]
fn reused_out_dir_never_mixes_runs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let m0 = model_file(d, "m0.ir", 0);
    let m1 = model_file(d, "m1.ir", 1);
    let data = d.join("r.bin");
    cifar_file(&data, 40);
    let out = d.join("run");
    let run = |m: &Path, classes: &str, extra: &[&str]| {
        let mut a = vec![
            "decompose",
            "--weights",
            s(m),
            "--data-file",
            s(&data),
            "--batch-size",
            "8",
            "--positives",
            "3",
        ];
        a.extend([
            "--positive-filter",
            "all",
            "--classes",
            classes,
            "--out-dir",
            s(&out),
        ]);
        a.extend(extra);
        decomp(&a)
    };
    ok(run(&m0, "0,1,2", &[]));
    // The same model and configuration again (a rerun, other classes): allowed.
    ok(run(&m0, "3", &[]));
    let mods = |dir: &Path| {
        let mut v: Vec<String> = std::fs::read_dir(dir.join("mc-bln"))
            .expect("ls")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        mods(&out),
        [
            "module_000.mod",
            "module_001.mod",
            "module_002.mod",
            "module_003.mod"
        ]
    );
    let before = snapshot(&out);
    // Another model: refused, nothing changed.
    refused(run(&m1, "0", &[]), &["--out-dir", "another run", "--force"]);
    assert_eq!(snapshot(&out), before);
    // Another configuration of the same model: refused.
    refused(
        run(&m0, "0", &["--bln-delta", "0.25"]),
        &["another run", "--force"],
    );
    assert_eq!(snapshot(&out), before);
    // --force: the earlier modules are removed, so a glob sees this run's only.
    ok(run(&m1, "0", &["--force"]));
    assert_eq!(mods(&out), ["module_000.mod"]);
    // A folder of artifacts from a run that recorded nothing (an earlier build).
    let legacy = d.join("legacy");
    std::fs::create_dir_all(legacy.join("mc-bln")).expect("mkdir");
    std::fs::copy(
        out.join("mc-bln/module_000.mod"),
        legacy.join("mc-bln/module_007.mod"),
    )
    .expect("copy");
    let before = snapshot(&legacy);
    let mut a = vec![
        "decompose",
        "--weights",
        s(&m0),
        "--data-file",
        s(&data),
        "--positives",
        "3",
        "--out-dir",
        s(&legacy),
    ];
    a.extend(["--classes", "0"]);
    refused(decomp(&a), &["did not record its model", "--force"]);
    assert_eq!(snapshot(&legacy), before);
    // --out-dir naming a file.
    let f = d.join("afile");
    std::fs::write(&f, b"keep").expect("write");
    refused(
        decomp(&[
            "decompose",
            "--weights",
            s(&m0),
            "--data-file",
            s(&data),
            "--out-dir",
            s(&f),
        ]),
        &["afile", "is a file, expected a folder"],
    );
    refused(
        decomp(&[
            "train",
            "--arch",
            "resnet8",
            "--data-file",
            s(&data),
            "--epochs",
            "1",
            "--out-dir",
            s(&f),
        ]),
        &["afile", "is a file, expected a folder"],
    );
    assert_eq!(std::fs::read(&f).expect("read"), b"keep");
}

#[test]
fn flags_are_honoured_or_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let m = model_file(d, "m.ir", 0);
    let cd = cifar_dir(&d.join("data"), 4, 30);
    let data = d.join("r.bin");
    cifar_file(&data, 40);
    let base = |cmd: &'static str| -> Vec<String> {
        [
            cmd,
            "--weights",
            s(&m),
            "--data-dir",
            s(&cd),
            "--batch-size",
            "8",
            "--positives",
            "1000",
            "--positive-filter",
            "all",
        ]
        .map(String::from)
        .to_vec()
    };
    let run = |mut a: Vec<String>, extra: &[&str]| {
        a.extend(extra.iter().map(|x| x.to_string()));
        decomp(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let positives = |p: &Path| -> usize {
        let set: ConcernSet = read_artifact(p).expect("concern set");
        set.classes.iter().map(|c| c.positives.len()).sum()
    };
    // --limit and --split on concern: the first N images of the split asked for.
    let cs = d.join("c.cs");
    // (Training files hold labels 0..3; the test file 3 images of each class.)
    let four = ["--classes", "0,1,2,3"];
    ok(run(
        base("concern"),
        &[&four[..], &["--limit", "7", "--out", s(&cs)]].concat(),
    ));
    assert_eq!(
        positives(&cs),
        7,
        "--limit 7: every image is a positive of its class"
    );
    ok(run(
        base("concern"),
        &[&four[..], &["--out", s(&cs)]].concat(),
    ));
    assert_eq!(positives(&cs), 20, "the train split: 5 files of 4 records");
    ok(run(
        base("concern"),
        &[&four[..], &["--split", "test", "--out", s(&cs)]].concat(),
    ));
    assert_eq!(
        positives(&cs),
        12,
        "--split test: 3 test records of each of the 4 classes"
    );
    refused(
        run(base("concern"), &["--split", "bogus", "--out", s(&cs)]),
        &["--split", "bogus"],
    );
    // --limit on decompose.
    ok(run(
        base("decompose"),
        &[
            "--limit",
            "5",
            "--classes",
            "0",
            "--out-dir",
            s(&d.join("lim")),
        ],
    ));
    assert_eq!(
        positives(&d.join("lim/concern.cs")),
        2,
        "class 0 among the first 5 images: records 0 and 4"
    );
    // tangle --classes builds only those classes.
    ok(run(
        base("concern"),
        &[&four[..], &["--out", s(&cs)]].concat(),
    ));
    let mut a = vec![
        "tangle",
        "--weights",
        s(&m),
        "--data-dir",
        s(&cd),
        "--concern",
        s(&cs),
    ];
    let tc = d.join("tc");
    a.extend(["--classes", "1,airplane", "--out-dir", s(&tc)]);
    ok(decomp(&a));
    let mut built: Vec<String> = std::fs::read_dir(d.join("tc/mc-bln"))
        .expect("ls")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    built.sort();
    assert_eq!(built, ["module_000.mod", "module_001.mod"]);
    // Class names wherever classes are taken; unknown names and duplicates refused.
    ok(run(
        base("concern"),
        &["--classes", "cat,dog", "--split", "test", "--out", s(&cs)],
    ));
    let set: ConcernSet = read_artifact(&cs).expect("concern set");
    assert_eq!(
        set.classes.iter().map(|c| c.class).collect::<Vec<_>>(),
        [3, 5]
    );
    refused(
        run(
            base("decompose"),
            &["--classes", "kat", "--out-dir", s(&d.join("x"))],
        ),
        &["--classes", "no class named \"kat\"", "cat"],
    );
    refused(
        run(
            base("decompose"),
            &["--classes", "3,3", "--out-dir", s(&d.join("x"))],
        ),
        &["--classes", "listed twice"],
    );
    refused(
        run(
            base("decompose"),
            &["--classes", "3,cat", "--out-dir", s(&d.join("x"))],
        ),
        &["--classes", "listed twice"],
    );
    refused(
        run(
            base("decompose"),
            &["--variants", "mc-bln,mc-bln", "--out-dir", s(&d.join("x"))],
        ),
        &["--variants", "listed twice"],
    );
    assert!(!d.join("x").exists(), "refused before anything was written");
    // Float flags: NaN and inf refused by the parser, with the flag named.
    let t_out = d.join("t");
    for bad in ["nan", "inf", "NaN", "infinity"] {
        refused(
            run(base("concern"), &["--bln-delta", bad, "--out", s(&cs)]),
            &["--bln-delta"],
        );
        refused(
            run(
                base("concern"),
                &["--granularity", "channel", "--tau", bad, "--out", s(&cs)],
            ),
            &["--tau"],
        );
        let t = [
            "train",
            "--arch",
            "resnet8",
            "--data-file",
            s(&data),
            "--epochs",
            "1",
            "--out-dir",
            s(&t_out),
        ];
        refused(decomp(&[&t[..], &["--lr", bad]].concat()), &["--lr"]);
        refused(
            decomp(&[&t[..], &["--val-fraction", bad]].concat()),
            &["--val-fraction"],
        );
        refused(
            decomp(&[&t[..], &["--declared-power-w", bad]].concat()),
            &["--declared-power-w"],
        );
    }
    refused(
        run(base("concern"), &["--bln-delta=-0.5", "--out", s(&cs)]),
        &["--bln-delta"],
    );
    let rare = d.join("rare.cs");
    for bad in ["nan", "1", "1.5", "-0.1"] {
        let flag = format!("--min-active-fraction={bad}");
        refused(
            run(base("concern"), &[&flag, "--out", s(&rare)]),
            &["--min-active-fraction"],
        );
    }
    refused(
        run(
            base("concern"),
            &[
                "--granularity",
                "channel",
                "--min-active-fraction",
                "0.1",
                "--out",
                s(&rare),
            ],
        ),
        &["--min-active-fraction", "--tau"],
    );
    assert!(!rare.exists(), "nothing written by a refused concern run");
    // --limit 0 and --batch-size 0 do nothing: refused.
    refused(
        decomp(&[
            "eval",
            "--weights",
            s(&m),
            "--data-file",
            s(&data),
            "--limit",
            "0",
        ]),
        &["--limit"],
    );
    refused(
        decomp(&[
            "eval",
            "--weights",
            s(&m),
            "--data-file",
            s(&data),
            "--batch-size",
            "0",
        ]),
        &["--batch-size"],
    );
    refused(
        run(base("concern"), &["--batch-size", "0", "--out", s(&cs)]),
        &["--batch-size"],
    );
    // Two sources of images at once.
    refused(
        decomp(&[
            "eval",
            "--weights",
            s(&m),
            "--data-file",
            s(&data),
            "--dataset-path",
            s(&cd),
        ]),
        &["--data-file", "--dataset-path"],
    );
    // Channel-level flags on an element-level run, and --reference-model on element modules.
    refused(
        run(
            base("decompose"),
            &[
                "--budget",
                "0.4",
                "--reconstruct",
                "--out-dir",
                s(&d.join("x")),
            ],
        ),
        &["--budget, --reconstruct", "--granularity channel"],
    );
    // Module training's flags: only with --train, and a warmup is a fraction of the steps.
    let x = d.join("x");
    let channel = ["--granularity", "channel", "--out-dir", s(&x)];
    refused(
        run(
            base("decompose"),
            &[&channel[..], &["--train-warmup", "0.2"]].concat(),
        ),
        &["--train-warmup applies with --train only"],
    );
    refused(
        run(
            base("decompose"),
            &[&channel[..], &["--train", "--train-warmup", "1.5"]].concat(),
        ),
        &["--train-warmup 1.5", "[0, 1]"],
    );
    ok(run(
        base("decompose"),
        &[&four[..], &["--out-dir", s(&d.join("el"))]].concat(),
    ));
    let (m0, m1) = (
        d.join("el/mc-bln/module_000.mod"),
        d.join("el/mc-bln/module_001.mod"),
    );
    refused(
        decomp(&[
            "compose",
            s(&m0),
            s(&m1),
            "--data-dir",
            s(&cd),
            "--reference-model",
            s(&m),
        ]),
        &["--reference-model applies to channel modules"],
    );
    // train: --resize and a different --arch with --init (they were ignored).
    let t = [
        "train",
        "--init",
        s(&m),
        "--data-file",
        s(&data),
        "--epochs",
        "1",
        "--out-dir",
        s(&t_out),
    ];
    refused(
        decomp(&[&t[..], &["--resize", "16"]].concat()),
        &["--resize applies to training from scratch"],
    );
    refused(
        decomp(&[&t[..], &["--arch", "resnet20"]].concat()),
        &["model is resnet8, --arch says resnet20"],
    );
    refused(
        decomp(&[&t[..], &["--max-epochs-now", "0"]].concat()),
        &["--max-epochs-now"],
    );
    assert!(
        !d.join("x").exists() && !t_out.exists(),
        "refused before anything was written"
    );
}

#[test]
fn empty_inputs_and_mismatches_are_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let m = model_file(d, "m.ir", 0);
    let data = d.join("r.bin");
    cifar_file(&data, 40);
    // An empty split: no "0 images, top-1 0.00%".
    let empty = tiny_dir(d, "");
    refused(
        decomp(&[
            "eval",
            "--weights",
            s(&m),
            "--dataset",
            "tiny-imagenet",
            "--dataset-path",
            s(&empty),
        ]),
        &["no images"],
    );
    // A concern set naming a class the model lacks (a crafted file whose model hash is
    // right), and one with no class: refused, no module written.
    let cs = d.join("c.cs");
    ok(decomp(&[
        "concern",
        "--weights",
        s(&m),
        "--data-file",
        s(&data),
        "--positives",
        "2",
        "--positive-filter",
        "all",
        "--classes",
        "0,1",
        "--out",
        s(&cs),
    ]));
    let mut set: ConcernSet = read_artifact(&cs).expect("read");
    set.classes[1].class = 99;
    let bad = d.join("bad.cs");
    write_artifact(&bad, &set).expect("write");
    refused(
        decomp(&[
            "tangle",
            "--weights",
            s(&m),
            "--data-file",
            s(&data),
            "--concern",
            s(&bad),
            "--out-dir",
            s(&d.join("t1")),
        ]),
        &["bad.cs", "class 99 is beyond the model's 10 classes"],
    );
    assert!(!d.join("t1").exists());
    set.classes.clear();
    write_artifact(&bad, &set).expect("write");
    refused(
        decomp(&[
            "tangle",
            "--weights",
            s(&m),
            "--data-file",
            s(&data),
            "--concern",
            s(&bad),
            "--out-dir",
            s(&d.join("t2")),
        ]),
        &["bad.cs", "holds no class"],
    );
    assert!(!d.join("t2").exists());
    // tangle --classes naming a class the set lacks.
    refused(
        decomp(&[
            "tangle",
            "--weights",
            s(&m),
            "--data-file",
            s(&data),
            "--concern",
            s(&cs),
            "--classes",
            "5",
            "--out-dir",
            s(&d.join("t3")),
        ]),
        &["--classes 5", "has no class 5"],
    );
    // CIFAR modules on Tiny ImageNet images: refused as eval refuses them.
    ok(decomp(&[
        "tangle",
        "--weights",
        s(&m),
        "--data-file",
        s(&data),
        "--concern",
        s(&cs),
        "--out-dir",
        s(&d.join("t")),
    ]));
    let tiny = tiny_dir(
        &d.join("ti"),
        "val_0.JPEG\tn01\t0\t0\t1\t1\nval_1.JPEG\tn02\t0\t0\t1\t1\n",
    );
    let (ma, mb) = (
        d.join("t/mc-bln/module_000.mod"),
        d.join("t/mc-bln/module_001.mod"),
    );
    refused(
        decomp(&[
            "compose",
            s(&ma),
            s(&mb),
            "--dataset",
            "tiny-imagenet",
            "--dataset-path",
            s(&tiny),
        ]),
        &["module_000.mod", "airplane", "gorilla", "--classes"],
    );
    // A Tiny ImageNet annotation line naming a file outside the dataset folder.
    std::fs::write(d.join("ti/secret.JPEG"), b"outside").expect("write");
    for line in ["../../secret.JPEG", "/etc/passwd", "sub/val_0.JPEG"] {
        let t = tiny_dir(
            &d.join(format!("bad{}", line.len())),
            &format!("{line}\tn01\t0\t0\t1\t1\n"),
        );
        refused(
            decomp(&[
                "eval",
                "--weights",
                s(&m),
                "--dataset",
                "tiny-imagenet",
                "--dataset-path",
                s(&t),
            ]),
            &["val_annotations.txt:1", "plain image file name", line],
        );
    }
    // Size limits on the text files commands read (a FIFO-free stand-in for /dev/zero: the
    // device itself when root may make one, else a file over the limit).
    let zero = match char_device(d, "zero", "5") {
        Some(p) => p,
        None => {
            let p = d.join("zero");
            std::fs::write(&p, vec![0u8; (1 << 20) + 10]).expect("write");
            p
        }
    };
    refused(
        decomp(&["mix", "--spec", s(&zero), "--out-dir", s(&d.join("mix"))]),
        &["mix spec", "larger than the limit"],
    );
    refused(
        decomp(&[
            "train",
            "--arch",
            "resnet8",
            "--data-file",
            s(&data),
            "--recipes",
            s(&zero),
            "--out-dir",
            s(&d.join("tr")),
        ]),
        &["recipes", "larger than the limit"],
    );
    if std::fs::metadata(&zero)
        .expect("zero")
        .file_type()
        .is_char_device()
    {
        refused(
            decomp(&["vote", "--margins", s(&zero), "--pick", "0:0"]),
            &["margins file", "larger than the limit"],
        );
    }
}

#[test]
fn inspect_names_every_kind_and_survives_a_closed_pipe() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let m = model_file(d, "m.ir", 0);
    // `decomp inspect m.ir | head -1`: the reader goes away. Closed before the first line
    // is written, so every write meets a closed pipe (a pipe buffer would otherwise take
    // the whole output of a small model before `head` exits).
    let mut child = Command::new(env!("CARGO_BIN_EXE_decomp"))
        .args(["inspect", s(&m)])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("wait");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        !err.contains("panicked") && !err.contains("Broken pipe"),
        "{err}"
    );
    // A training checkpoint is shown as one, not "expected concern-set".
    let data = d.join("r.bin");
    cifar_file(&data, 40);
    let run = d.join("train");
    ok(decomp(&[
        "train",
        "--arch",
        "resnet8",
        "--data-file",
        s(&data),
        "--classes",
        "0,1",
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--out-dir",
        s(&run),
    ]));
    let out = ok(decomp(&["inspect", s(&run.join("last.ckpt"))]));
    assert!(
        out.contains("training checkpoint") && out.contains("epochs done: 1 of 1"),
        "{out}"
    );
    // Not an artifact at all.
    refused(
        decomp(&["inspect", s(&data)]),
        &["r.bin", "not a decomp artifact"],
    );
}
