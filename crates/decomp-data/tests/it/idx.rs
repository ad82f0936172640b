//! MNIST / Fashion-MNIST IDX files generated in a temp dir.

use std::path::Path;

use decomp_data::{DataError, Dataset, DatasetKind, IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC, Split};
use proptest::prelude::*;

use crate::common::{check_err, gzip, idx_images, idx_labels, tempdir, write};

/// Writes the four files of a 28x28 IDX dataset (`train_n` and 2 test images), optionally gzipped.
fn write_idx_folder(folder: &Path, train_n: u32, gz: bool) {
    let suffix = if gz { ".gz" } else { "" };
    let pack = |b: Vec<u8>| if gz { gzip(&b) } else { b };
    let labels: Vec<u8> = (0..train_n).map(|k| (k % 10) as u8).collect();
    write(
        &folder.join(format!("train-images-idx3-ubyte{suffix}")),
        &pack(idx_images(IDX_IMAGES_MAGIC, train_n, 28, 28)),
    );
    write(
        &folder.join(format!("train-labels-idx1-ubyte{suffix}")),
        &pack(idx_labels(IDX_LABELS_MAGIC, &labels)),
    );
    write(
        &folder.join(format!("t10k-images-idx3-ubyte{suffix}")),
        &pack(idx_images(IDX_IMAGES_MAGIC, 2, 28, 28)),
    );
    write(
        &folder.join(format!("t10k-labels-idx1-ubyte{suffix}")),
        &pack(idx_labels(IDX_LABELS_MAGIC, &[7, 1])),
    );
}

#[test]
fn plain_and_gzipped_idx_load_the_same() {
    for gz in [false, true] {
        let dir = tempdir();
        write_idx_folder(&dir.path().join("mnist"), 12, gz);
        let train = Dataset::load(DatasetKind::Mnist, dir.path(), Split::Train).expect("train");
        assert_eq!(train.len(), 12);
        assert_eq!(train.label(11), 1);
        assert_eq!(train.image_shape(), [1, 28, 28]);
        assert_eq!(train.class_names()[3], "3");
        let raw = train.raw_u8(3).expect("raw");
        assert_eq!(raw.len(), 784);
        assert_eq!(&raw[..8], &[30, 31, 32, 33, 34, 35, 36, 30]);
        let test = Dataset::load(DatasetKind::Mnist, dir.path(), Split::Test).expect("test");
        assert_eq!(test.labels(), vec![7, 1]);
        let batch = test.batch(0..2).expect("batch");
        assert_eq!(batch.shape, [2, 1, 28, 28]);
        let n = DatasetKind::Mnist.default_normalization();
        assert!((batch.images[784 + 1] - (11.0 / 255.0 - n.mean[0]) / n.std[0]).abs() < 1e-6);
    }
}

#[test]
fn fashion_mnist_names_and_folder() {
    let dir = tempdir();
    write_idx_folder(&dir.path().join("fashion-mnist"), 3, true);
    let data = Dataset::load(DatasetKind::FashionMnist, dir.path(), Split::Train).expect("load");
    assert_eq!(data.class_names()[9], "Ankle boot");
    assert_eq!(data.normalization().mean, vec![0.2860]);
}

/// Replaces one file of a valid folder and returns the load error.
fn load_with(file: &str, bytes: Vec<u8>) -> Result<Dataset, DataError> {
    let dir = tempdir();
    let folder = dir.path().join("mnist");
    write_idx_folder(&folder, 5, false);
    write(&folder.join(file), &bytes);
    Dataset::load(DatasetKind::Mnist, dir.path(), Split::Train)
}

#[test]
fn bad_magic_numbers() {
    let err = check_err(
        load_with(
            "train-images-idx3-ubyte",
            idx_images(IDX_LABELS_MAGIC, 5, 28, 28),
        ),
        &[
            "train-images-idx3-ubyte",
            "magic number",
            "expected 0x00000803",
            "found 0x00000801",
        ],
    );
    assert!(matches!(
        err,
        DataError::BadIdx {
            field: "magic number",
            ..
        }
    ));
    check_err(
        load_with(
            "train-labels-idx1-ubyte",
            idx_labels(0x0000_0802, &[1, 2, 3, 4, 5]),
        ),
        &[
            "train-labels-idx1-ubyte",
            "expected 0x00000801",
            "found 0x00000802",
        ],
    );
}

#[test]
fn bad_dims_and_counts() {
    check_err(
        load_with(
            "train-images-idx3-ubyte",
            idx_images(IDX_IMAGES_MAGIC, 5, 27, 28),
        ),
        &[
            "train-images-idx3-ubyte",
            "image dimensions",
            "expected 28x28",
            "found 27x28",
        ],
    );
    check_err(
        load_with(
            "train-labels-idx1-ubyte",
            idx_labels(IDX_LABELS_MAGIC, &[1, 2, 3, 4]),
        ),
        &[
            "train-labels-idx1-ubyte",
            "label count",
            "expected 5",
            "found 4",
        ],
    );
}

#[test]
fn wrong_sizes() {
    let mut images = idx_images(IDX_IMAGES_MAGIC, 5, 28, 28);
    images.truncate(16 + 4 * 784 + 100);
    let err = check_err(
        load_with("train-images-idx3-ubyte", images),
        &[
            "train-images-idx3-ubyte",
            "wrong file size",
            "3936 bytes",
            "found 3252",
        ],
    );
    assert!(matches!(err, DataError::WrongFileSize { found: 3252, .. }));
    check_err(
        load_with("train-images-idx3-ubyte", vec![0, 0, 8]),
        &["16-byte IDX3 header", "found 3 bytes"],
    );
    let mut labels = idx_labels(IDX_LABELS_MAGIC, &[1, 2, 3, 4, 5]);
    labels.push(0);
    check_err(
        load_with("train-labels-idx1-ubyte", labels),
        &["train-labels-idx1-ubyte", "13 bytes", "found 14"],
    );
    // not valid gzip despite the magic
    check_err(
        load_with("train-labels-idx1-ubyte", vec![0x1f, 0x8b, 1, 2, 3]),
        &["gunzip", "train-labels-idx1-ubyte"],
    );
}

#[test]
fn idx_label_out_of_range() {
    let err = check_err(
        load_with(
            "train-labels-idx1-ubyte",
            idx_labels(IDX_LABELS_MAGIC, &[1, 2, 3, 12, 5]),
        ),
        &[
            "train-labels-idx1-ubyte",
            "record 3",
            "offset 11",
            "label 12",
            "below 10",
        ],
    );
    assert!(matches!(
        err,
        DataError::LabelOutOfRange {
            record: 3,
            offset: 11,
            label: 12,
            ..
        }
    ));
}

#[test]
fn missing_idx_dataset_explains_sources() {
    let dir = tempdir();
    check_err(
        Dataset::load(DatasetKind::FashionMnist, dir.path(), Split::Train),
        &[
            "fashion-mnist train split not found",
            "train-images-idx3-ubyte[.gz]",
            "https://github.com/zalandoresearch/fashion-mnist",
            "apt-get install dataset-fashion-mnist",
            "/usr/share/datasets/fashion-mnist",
            "DECOMP_DATA_DIR",
        ],
    );
    check_err(
        Dataset::load(DatasetKind::Mnist, dir.path(), Split::Test),
        &[
            "mnist test split not found",
            "t10k-labels-idx1-ubyte",
            "yann.lecun.com",
            "--data-dir",
        ],
    );
    // only the labels missing
    let folder = dir.path().join("mnist");
    write_idx_folder(&folder, 2, true);
    std::fs::remove_file(folder.join("t10k-labels-idx1-ubyte.gz")).expect("rm");
    let err = Dataset::load(DatasetKind::Mnist, dir.path(), Split::Test).expect_err("missing");
    let DataError::DatasetMissing { missing, .. } = &err else {
        panic!("{err}")
    };
    assert_eq!(missing, &["t10k-labels-idx1-ubyte[.gz]"]);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..Default::default() })]

    /// Arbitrary headers and lengths never panic: they load or give an error.
    #[test]
    fn arbitrary_idx_headers_never_panic(
        header in prop::array::uniform4(prop_oneof![Just(0x803u32), Just(28u32), Just(2u32), any::<u32>()]),
        body_len in 0usize..2000,
        label_header in prop::array::uniform2(prop_oneof![Just(0x801u32), Just(2u32), any::<u32>()]),
        labels in prop::collection::vec(any::<u8>(), 0..4),
    ) {
        let mut images: Vec<u8> = header.iter().flat_map(|v| v.to_be_bytes()).collect();
        images.extend((0..body_len).map(|i| i as u8));
        let mut label_file: Vec<u8> = label_header.iter().flat_map(|v| v.to_be_bytes()).collect();
        label_file.extend(labels);
        let dir = tempdir();
        let folder = dir.path().join("mnist");
        write_idx_folder(&folder, 2, false);
        write(&folder.join("train-images-idx3-ubyte"), &images);
        write(&folder.join("train-labels-idx1-ubyte"), &label_file);
        if let Ok(d) = Dataset::load(DatasetKind::Mnist, dir.path(), Split::Train) {
            for b in d.batches(3) {
                b.expect("a loaded dataset decodes");
            }
        }
    }
}
