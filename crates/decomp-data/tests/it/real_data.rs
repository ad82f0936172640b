//! Checks on the real datasets in `shared/datasets` (and the Debian Fashion-MNIST package);
//! each test prints `skipping: ...` and passes when its data is absent.

use std::path::PathBuf;

use decomp_data::{Dataset, DatasetKind, Normalization, Split};

use crate::common::{check_err, shared};

/// Per-channel mean on `[0, 1]` over the whole view, streamed in batches.
fn channel_means(d: &Dataset) -> Vec<f64> {
    let d = d
        .clone()
        .with_normalization(Normalization::unit(d.image_shape()[0]));
    let [c, h, w] = d.image_shape();
    let mut sums = vec![0f64; c];
    for batch in d.batches(1000) {
        for (k, plane) in batch.expect("batch").images.chunks_exact(h * w).enumerate() {
            sums[k % c] += plane.iter().map(|&x| f64::from(x)).sum::<f64>();
        }
    }
    sums.iter().map(|s| s / (d.len() * h * w) as f64).collect()
}

#[test]
fn cifar10_test_split() {
    let Some(dir) = shared("datasets") else {
        return;
    };
    if !dir.join("cifar-10-batches-bin").exists() {
        println!("skipping: no cifar-10-batches-bin in {}", dir.display());
        return;
    }
    let test = Dataset::load(DatasetKind::Cifar10, &dir, Split::Test).expect("test");
    assert_eq!(test.len(), 10_000);
    assert_eq!(test.class_counts(), vec![1000; 10]);
    assert_eq!(test.class_names()[0], "airplane");
    assert_eq!(test.class_names()[9], "truck");
}

#[test]
fn cifar10_train_split_labels_and_mean() {
    let Some(dir) = shared("datasets/cifar-10-batches-bin") else {
        return;
    };
    let train = Dataset::load_folder(DatasetKind::Cifar10, &dir, Split::Train).expect("train");
    assert_eq!(train.len(), 50_000);
    assert_eq!(train.labels()[..10], [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]);
    assert_eq!(train.class_counts(), vec![5000; 10]);
    // data_batch_1 class counts from the README
    assert_eq!(
        train.take(10_000).class_counts(),
        vec![1005, 974, 1032, 1016, 999, 937, 1030, 1001, 1025, 981]
    );
    // Every image: the full mean is within 0.001 of the published one, a random subset of a
    // few thousand images is not (per-image means vary too much), and streaming 50,000 images
    // takes well under a second.
    let means = channel_means(&train);
    for (m, expected) in means.iter().zip([0.4913, 0.4821, 0.4465]) {
        assert!((m - expected).abs() < 0.001, "means {means:?}");
    }
}

#[test]
fn cifar10_lossless_first4000() {
    let Some(dir) = shared("datasets/cifar-10-train-first4000-lossless") else {
        return;
    };
    let data = Dataset::from_cifar_file(DatasetKind::Cifar10, &dir.join("train_first4000.bin"))
        .expect("load");
    assert_eq!(data.len(), 4000);
    assert_eq!(
        data.class_counts(),
        vec![396, 366, 420, 384, 422, 393, 414, 385, 407, 413]
    );
    assert_eq!(data.labels()[..10], [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]);
    assert_eq!(data.class_names()[6], "frog"); // from batches.meta.txt beside the file
    // official pixel values (README): image 0 R plane starts 59 43 50 68 98, B plane ends 140 84 72
    let img0 = data.raw_u8(0).expect("raw");
    assert_eq!(img0[..5], [59, 43, 50, 68, 98]);
    assert_eq!(img0[3072 - 3..], [140, 84, 72]);
    let img1 = data.raw_u8(1).expect("raw");
    assert_eq!(
        (&img1[..3], &img1[3072 - 3..]),
        (&[154u8, 126, 105][..], &[139u8, 142, 144][..])
    );
    // the same images (lossy) open the JPEG-derived copy, with the same labels
    if let Some(lossy) = shared("datasets/cifar-10-batches-bin") {
        let train =
            Dataset::load_folder(DatasetKind::Cifar10, &lossy, Split::Train).expect("train");
        assert_eq!(train.take(4000).labels(), data.labels());
    }
}

#[test]
fn tiny_imagenet_subset20() {
    let Some(folder) = shared("datasets/tiny-imagenet-subset20") else {
        return;
    };
    let train =
        Dataset::load_folder(DatasetKind::TinyImageNet, &folder, Split::Train).expect("train");
    let val = Dataset::load_folder(DatasetKind::TinyImageNet, &folder, Split::Test).expect("val");
    assert_eq!((train.len(), val.len()), (10_000, 1_000));
    assert_eq!((train.num_classes(), val.num_classes()), (20, 20));
    assert_eq!(train.class_counts(), vec![500; 20]);
    assert_eq!(val.class_counts(), vec![50; 20]);
    assert!(
        train.class_names().iter().any(|n| n == "Egyptian cat"),
        "{:?}",
        train.class_names()
    );
    assert_eq!(train.image_shape(), [3, 64, 64]);
    // decode all of val (grayscale JPEGs included) and a spread of train, resized to 32x32
    let small = val.clone().with_resize(32, 32).expect("32x32");
    let mut n = 0;
    for batch in small.batches(250) {
        let batch = batch.expect("decode");
        assert_eq!(&batch.shape[1..], &[3, 32, 32]);
        assert!(batch.images.iter().all(|x| x.is_finite()));
        n += batch.len();
    }
    assert_eq!(n, 1000);
    let spread: Vec<usize> = (0..train.len()).step_by(97).collect();
    let b = train
        .select(&spread)
        .expect("select")
        .batch(0..spread.len())
        .expect("decode");
    assert_eq!(b.shape, [spread.len(), 3, 64, 64]);
}

#[test]
fn tiny_imagenet_200_val_only() {
    let Some(folder) = shared("datasets/tiny-imagenet-200-val") else {
        return;
    };
    let val = Dataset::load_folder(DatasetKind::TinyImageNet, &folder, Split::Test).expect("val");
    assert_eq!(val.num_classes(), 202);
    assert_eq!(val.len(), 10_100);
    assert_eq!(val.class_counts(), vec![50; 202]);
    assert_eq!(
        val.take(64).batch(0..64).expect("decode").shape,
        [64, 3, 64, 64]
    );
    check_err(
        Dataset::load_folder(DatasetKind::TinyImageNet, &folder, Split::Train),
        &[
            "tiny-imagenet train split not found",
            "missing train/ folder",
            "tiny-imagenet-200.zip",
        ],
    );
}

#[test]
fn fashion_mnist_debian_package() {
    let dir = PathBuf::from(decomp_data::DEBIAN_FASHION_MNIST_DIR);
    if !dir.exists() {
        println!(
            "skipping: {} not installed (apt-get install dataset-fashion-mnist)",
            dir.display()
        );
        return;
    }
    let train = Dataset::load_folder(DatasetKind::FashionMnist, &dir, Split::Train).expect("train");
    let test = Dataset::load(
        DatasetKind::FashionMnist,
        dir.parent().expect("parent"),
        Split::Test,
    )
    .expect("test");
    assert_eq!((train.len(), test.len()), (60_000, 10_000));
    assert_eq!(train.labels()[..10], [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]);
    assert_eq!(train.class_counts(), vec![6000; 10]);
    let mean = channel_means(&train)[0];
    assert!((mean - 0.2860).abs() < 0.0005, "{mean}");
    let rgb = test
        .take(8)
        .with_channels(3)
        .expect("1 -> 3")
        .with_resize(32, 32)
        .expect("32x32");
    assert_eq!(rgb.batch(0..8).expect("batch").shape, [8, 3, 32, 32]);
}
