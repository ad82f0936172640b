//! CIFAR-10 / CIFAR-100 binary files generated in a temp dir.

use decomp_data::{DataError, Dataset, DatasetKind, Split};
use proptest::prelude::*;

use crate::common::{
    check_err, cifar_record, cifar10_records, tempdir, write, write_cifar10_folder,
};

#[test]
fn cifar10_folder_loads_both_splits_in_file_order() {
    let dir = tempdir();
    write_cifar10_folder(&dir.path().join("cifar-10-batches-bin"), 3, 4);
    let train = Dataset::load(DatasetKind::Cifar10, dir.path(), Split::Train).expect("train");
    assert_eq!(train.len(), 15);
    // file f (1..=5) holds labels (f + k) % 10
    let expected: Vec<usize> = (1..=5)
        .flat_map(|f| (0..3).map(move |k| (f + k) % 10))
        .collect();
    assert_eq!(train.labels(), expected);
    assert_eq!(train.class_names()[0], "airplane");
    assert_eq!(train.image_shape(), [3, 32, 32]);
    assert_eq!(train.num_classes(), 10);
    // the 4th item is record 0 of data_batch_2: R = 0, G = 100, B = i % 256
    let raw = train.raw_u8(3).expect("raw");
    assert_eq!(raw.len(), 3072);
    assert_eq!((raw[0], raw[1024], raw[2048 + 300]), (0, 100, 44));
    let raw = train.raw_u8(5).expect("raw");
    assert_eq!((raw[5], raw[1024 + 5]), (2, 102));

    let test = Dataset::load(DatasetKind::Cifar10, dir.path(), Split::Test).expect("test");
    assert_eq!(test.labels(), vec![0, 1, 2, 3]);
}

#[test]
fn batch_is_normalized_nchw() {
    let dir = tempdir();
    let file = dir.path().join("x.bin");
    write(&file, &cifar10_records(&[7, 3]));
    let data = Dataset::from_cifar_file(DatasetKind::Cifar10, &file).expect("load");
    let n = data.normalization().clone();
    assert_eq!(n, DatasetKind::Cifar10.default_normalization());
    let batch = data.batch(0..2).expect("batch");
    assert_eq!(batch.shape, [2, 3, 32, 32]);
    assert_eq!(batch.labels, vec![7, 3]);
    assert_eq!(batch.images.len(), 2 * 3072);
    let expect = |p: u8, c: usize| (f32::from(p) / 255.0 - n.mean[c]) / n.std[c];
    // image 1: R = 1, G = 101, B = i % 256
    let image1 = &batch.images[3072..];
    assert!((image1[0] - expect(1, 0)).abs() < 1e-6);
    assert!((image1[1024] - expect(101, 1)).abs() < 1e-6);
    assert!((image1[2048 + 255] - expect(255, 2)).abs() < 1e-6);
}

#[test]
fn cifar_file_class_names_from_meta_or_generic() {
    let dir = tempdir();
    let file = dir.path().join("train_first2.bin");
    write(&file, &cifar10_records(&[0, 9]));
    let data = Dataset::from_cifar_file(DatasetKind::Cifar10, &file).expect("load");
    assert_eq!(data.class_names()[9], "class_9");
    write(
        &dir.path().join("batches.meta.txt"),
        b"a\nb\nc\nd\ne\nf\ng\nh\ni\nj\n\n",
    );
    let data = Dataset::from_cifar_file(DatasetKind::Cifar10, &file).expect("load");
    assert_eq!(data.class_names()[9], "j");
    assert_eq!(data.len(), 2);
}

fn cifar100_records(labels: &[(u8, u8)]) -> Vec<u8> {
    labels
        .iter()
        .flat_map(|&(c, f)| cifar_record(&[c, f], |ch, _| (ch * 10 + usize::from(f)) as u8))
        .collect()
}

#[test]
fn cifar100_fine_and_coarse_labels() {
    let dir = tempdir();
    let folder = dir.path().join("cifar-100-binary");
    write(
        &folder.join("train.bin"),
        &cifar100_records(&[(19, 99), (0, 4), (3, 50)]),
    );
    write(&folder.join("test.bin"), &cifar100_records(&[(1, 2)]));
    let fine = Dataset::load(
        DatasetKind::Cifar100 { coarse: false },
        dir.path(),
        Split::Train,
    )
    .expect("fine");
    assert_eq!(fine.labels(), vec![99, 4, 50]);
    assert_eq!(fine.num_classes(), 100);
    assert_eq!(fine.class_names()[99], "worm"); // built-in names when the files are absent
    assert_eq!(fine.raw_u8(0).expect("raw")[1024], 109);
    let coarse = Dataset::load(
        DatasetKind::Cifar100 { coarse: true },
        dir.path(),
        Split::Train,
    )
    .expect("coarse");
    assert_eq!(coarse.labels(), vec![19, 0, 3]);
    assert_eq!(coarse.num_classes(), 20);
    assert_eq!(coarse.class_names()[19], "vehicles_2");

    let names: String = (0..100).map(|i| format!("fine{i}\n")).collect();
    write(&folder.join("fine_label_names.txt"), names.as_bytes());
    let names: String = (0..20).map(|i| format!("coarse{i}\n")).collect();
    write(&folder.join("coarse_label_names.txt"), names.as_bytes());
    let test = Dataset::load(
        DatasetKind::Cifar100 { coarse: false },
        dir.path(),
        Split::Test,
    )
    .expect("test");
    assert_eq!(
        (test.labels(), test.class_names()[2].as_str()),
        (vec![2], "fine2")
    );
    let test = Dataset::load(
        DatasetKind::Cifar100 { coarse: true },
        dir.path(),
        Split::Test,
    )
    .expect("test");
    assert_eq!(
        (test.labels(), test.class_names()[1].as_str()),
        (vec![1], "coarse1")
    );
    // a single CIFAR-100 file
    let one = Dataset::from_cifar_file(
        DatasetKind::Cifar100 { coarse: false },
        &folder.join("train.bin"),
    )
    .expect("file");
    assert_eq!((one.len(), one.class_names()[4].as_str()), (3, "fine4"));
}

#[test]
fn truncated_record_names_file_record_offset_and_size() {
    let dir = tempdir();
    let file = dir.path().join("cut.bin");
    let mut bytes = cifar10_records(&[1, 2]);
    bytes.extend([5u8; 100]);
    write(&file, &bytes);
    let err = check_err(
        Dataset::from_cifar_file(DatasetKind::Cifar10, &file),
        &[
            "cut.bin",
            "record 2",
            "offset 6146",
            "3073 bytes per record",
            "found 100 bytes",
        ],
    );
    assert!(matches!(
        err,
        DataError::TruncatedRecord {
            record: 2,
            offset: 6146,
            expected: 3073,
            found: 100,
            ..
        }
    ));
    // CIFAR-100 records are 3074 bytes: a CIFAR-10 file of 2 records is truncated for it
    check_err(
        Dataset::from_cifar_file(DatasetKind::Cifar100 { coarse: false }, &file),
        &["cut.bin", "3074 bytes per record"],
    );
}

#[test]
fn truncated_file_in_folder() {
    let dir = tempdir();
    let folder = dir.path().join("cifar-10-batches-bin");
    write_cifar10_folder(&folder, 2, 2);
    let bytes = cifar10_records(&[1, 2]);
    write(&folder.join("data_batch_4.bin"), &bytes[..3073 + 10]);
    check_err(
        Dataset::load(DatasetKind::Cifar10, dir.path(), Split::Train),
        &["data_batch_4.bin", "record 1", "offset 3073"],
    );
}

#[test]
fn label_out_of_range_names_record_offset_label() {
    let dir = tempdir();
    let file = dir.path().join("bad.bin");
    write(&file, &cifar10_records(&[1, 10, 2]));
    let err = check_err(
        Dataset::from_cifar_file(DatasetKind::Cifar10, &file),
        &["bad.bin", "record 1", "offset 3073", "label 10", "below 10"],
    );
    assert!(matches!(
        err,
        DataError::LabelOutOfRange {
            record: 1,
            offset: 3073,
            label: 10,
            num_classes: 10,
            ..
        }
    ));

    // CIFAR-100: the fine byte is the second one of the record
    write(&file, &cifar100_records(&[(0, 0), (0, 0), (5, 100)]));
    let err = check_err(
        Dataset::from_cifar_file(DatasetKind::Cifar100 { coarse: true }, &file),
        &["record 2", "offset 6149", "label 100", "below 100"],
    );
    assert!(matches!(
        err,
        DataError::LabelOutOfRange { offset: 6149, .. }
    ));
    write(&file, &cifar100_records(&[(20, 0)]));
    check_err(
        Dataset::from_cifar_file(DatasetKind::Cifar100 { coarse: false }, &file),
        &["offset 0", "label 20", "below 20"],
    );
}

#[test]
fn empty_file_is_wrong_size() {
    let dir = tempdir();
    let file = dir.path().join("empty.bin");
    write(&file, b"");
    let err = check_err(
        Dataset::from_cifar_file(DatasetKind::Cifar10, &file),
        &["empty.bin", "wrong file size", "3073-byte"],
    );
    assert!(matches!(err, DataError::WrongFileSize { found: 0, .. }));
}

#[test]
fn missing_file_and_wrong_kind() {
    let dir = tempdir();
    let file = dir.path().join("nope.bin");
    let err = check_err(
        Dataset::from_cifar_file(DatasetKind::Cifar10, &file),
        &["nope.bin", "missing file"],
    );
    assert!(matches!(err, DataError::MissingFile { .. }));
    write(&file, &cifar10_records(&[1]));
    check_err(
        Dataset::from_cifar_file(DatasetKind::Mnist, &file),
        &["mnist is not a CIFAR dataset"],
    );
}

#[test]
fn missing_dataset_explains_where_and_how() {
    let dir = tempdir();
    let err = check_err(
        Dataset::load(DatasetKind::Cifar10, dir.path(), Split::Train),
        &[
            "cifar10 train split not found",
            "cifar-10-batches-bin",
            "data_batch_1.bin",
            "test_batch.bin",
            "https://www.cs.toronto.edu/~kriz/cifar.html",
            "--data-dir",
            "DECOMP_DATA_DIR",
        ],
    );
    assert!(matches!(err, DataError::DatasetMissing { .. }));
    check_err(
        Dataset::load(
            DatasetKind::Cifar100 { coarse: false },
            dir.path(),
            Split::Test,
        ),
        &[
            "cifar-100-binary",
            "test.bin",
            "https://www.cs.toronto.edu/~kriz/cifar.html",
        ],
    );

    // one file gone from an otherwise complete folder
    let folder = dir.path().join("cifar-10-batches-bin");
    write_cifar10_folder(&folder, 1, 1);
    std::fs::remove_file(folder.join("data_batch_3.bin")).expect("rm");
    let err = Dataset::load(DatasetKind::Cifar10, dir.path(), Split::Train).expect_err("missing");
    let DataError::DatasetMissing { missing, .. } = &err else {
        panic!("{err}")
    };
    assert_eq!(missing, &["data_batch_3.bin"]);
    // the test split is still there
    assert_eq!(
        Dataset::load(DatasetKind::Cifar10, dir.path(), Split::Test)
            .expect("test")
            .len(),
        1
    );
}

#[test]
fn class_name_file_with_wrong_count() {
    let dir = tempdir();
    let folder = dir.path().join("cifar-10-batches-bin");
    write_cifar10_folder(&folder, 1, 1);
    write(&folder.join("batches.meta.txt"), b"a\nb\n");
    let err = check_err(
        Dataset::load(DatasetKind::Cifar10, dir.path(), Split::Test),
        &["batches.meta.txt", "expected 10 class names", "found 2"],
    );
    assert!(matches!(
        err,
        DataError::ClassNames {
            expected: 10,
            found: 2,
            ..
        }
    ));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..Default::default() })]

    /// Arbitrary bytes never panic: they load (and decode) or give an error.
    #[test]
    fn arbitrary_cifar_bytes_never_panic(records in 0usize..3, extra in 0usize..5, label in any::<u8>(), fine in any::<u8>()) {
        let dir = tempdir();
        let file = dir.path().join("x.bin");
        let mut bytes: Vec<u8> = (0..records).flat_map(|_| cifar_record(&[label, fine], |c, i| (c + i) as u8)).collect();
        bytes.extend(std::iter::repeat_n(7u8, extra));
        write(&file, &bytes);
        for kind in [DatasetKind::Cifar10, DatasetKind::Cifar100 { coarse: false }, DatasetKind::Cifar100 { coarse: true }] {
            if let Ok(d) = Dataset::from_cifar_file(kind, &file) {
                let b = d.batch(0..d.len()).expect("decodes");
                prop_assert!(b.labels.iter().all(|&l| l < d.num_classes()));
            }
        }
    }
}
