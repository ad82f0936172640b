//! Dataset views on synthetic data: subsets, selection, shuffling, splitting, batching,
//! normalization and transforms.

use std::collections::BTreeMap;

use decomp_data::{DataError, Dataset, DatasetKind, Normalization, Split};
use proptest::prelude::*;

use crate::common::check_err;

fn data() -> Dataset {
    Dataset::synthetic(4, 6, [3, 8, 8], 11)
}

/// Every raw image of a view, in order.
fn raws(d: &Dataset) -> Vec<Vec<u8>> {
    (0..d.len()).map(|i| d.raw_u8(i).expect("raw")).collect()
}

#[test]
fn synthetic_is_deterministic_and_interleaved() {
    let a = data();
    assert_eq!(
        (a.len(), a.num_classes(), a.image_shape()),
        (24, 4, [3, 8, 8])
    );
    assert_eq!(a.labels()[..6], [0, 1, 2, 3, 0, 1]);
    assert_eq!(a.class_names()[3], "class_3");
    assert_eq!(raws(&a), raws(&data()));
    assert_ne!(raws(&a), raws(&Dataset::synthetic(4, 6, [3, 8, 8], 12)));
    assert_eq!(a.normalization().channels(), 3);
    assert!(a.normalization().std.iter().all(|&s| s > 0.05));
    // the normalization is the data's own: a batch of everything has mean ~0, std ~1 per channel
    let b = a.batch(0..a.len()).expect("batch");
    for c in 0..3 {
        let v: Vec<f32> = b
            .images
            .chunks_exact(64)
            .skip(c)
            .step_by(3)
            .flatten()
            .copied()
            .collect();
        let mean = v.iter().sum::<f32>() / v.len() as f32;
        let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / v.len() as f32;
        assert!(
            mean.abs() < 1e-3 && (var.sqrt() - 1.0).abs() < 1e-2,
            "channel {c}: {mean} {var}"
        );
    }
}

#[test]
fn synthetic_classes_differ_more_between_than_within() {
    let d = Dataset::synthetic(3, 20, [3, 16, 16], 5);
    let mean_image = |class: usize| -> Vec<f32> {
        let idx = d.indices_of_class(class);
        let mut acc = vec![0f32; 3 * 256];
        for &i in &idx {
            for (a, p) in acc.iter_mut().zip(d.raw_u8(i).expect("raw")) {
                *a += f32::from(p) / idx.len() as f32;
            }
        }
        acc
    };
    let dist = |a: &[f32], b: &[f32]| {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).powi(2))
            .sum::<f32>()
            .sqrt()
    };
    let means: Vec<Vec<f32>> = (0..3).map(mean_image).collect();
    // a nearest-class-mean classifier is right on (almost) every image
    let correct = (0..d.len())
        .filter(|&i| {
            let x: Vec<f32> = d
                .raw_u8(i)
                .expect("raw")
                .into_iter()
                .map(f32::from)
                .collect();
            let best = (0..3).min_by(|&a, &b| dist(&x, &means[a]).total_cmp(&dist(&x, &means[b])));
            best == Some(d.label(i))
        })
        .count();
    assert!(correct >= d.len() - 2, "{correct} of {}", d.len());
    // gray synthetic images are learnable too
    let g = Dataset::synthetic(4, 2, [1, 12, 12], 1);
    assert_eq!(g.raw_u8(0).expect("raw").len(), 144);
}

#[test]
fn subset_classes_relabels_in_given_order() {
    let d = data();
    let s = d.subset_classes(&[2, 0]).expect("subset");
    assert_eq!(s.len(), 12);
    assert_eq!(s.num_classes(), 2);
    assert_eq!(s.class_names(), &["class_2", "class_0"]);
    assert_eq!(s.labels()[..4], [1, 0, 1, 0]); // source order: class 0 first, then class 2
    // pixels follow the items
    assert_eq!(s.raw_u8(1).expect("raw"), d.raw_u8(2).expect("raw"));
    // a subset of a subset composes
    let ss = s.subset_classes(&[0]).expect("subset");
    assert_eq!(
        (ss.len(), ss.class_names()),
        (6, &["class_2".to_string()][..])
    );
    assert!(ss.labels().iter().all(|&l| l == 0));
    assert_eq!(ss.raw_u8(0).expect("raw"), d.raw_u8(2).expect("raw"));
    // errors
    let err = check_err(
        d.subset_classes(&[1, 4]),
        &["class 4 out of range", "4 classes"],
    );
    assert!(matches!(err, DataError::BadClass { class: 4, .. }));
    check_err(d.subset_classes(&[1, 1]), &["class 1 given twice"]);
    check_err(
        s.subset_classes(&[2]),
        &["class 2 out of range", "2 classes"],
    );
    // empty subset is an empty view
    assert!(d.subset_classes(&[]).expect("empty").is_empty());
}

#[test]
fn select_take_and_indices_of_class() {
    let d = data();
    let s = d.select(&[5, 0, 5]).expect("select");
    assert_eq!(s.labels(), vec![1, 0, 1]);
    assert_eq!(s.raw_u8(2).expect("raw"), d.raw_u8(5).expect("raw"));
    let err = check_err(d.select(&[1, 24]), &["index 24 out of range", "24 items"]);
    assert!(matches!(
        err,
        DataError::IndexOutOfRange { index: 24, len: 24 }
    ));
    assert_eq!(d.take(5).len(), 5);
    assert_eq!(d.take(100).len(), 24);
    assert!(d.take(0).is_empty());
    assert_eq!(d.indices_of_class(3), vec![3, 7, 11, 15, 19, 23]);
    assert_eq!(d.class_counts(), vec![6; 4]);
    check_err(d.raw_u8(24), &["index 24 out of range"]);
}

#[test]
fn shuffle_is_deterministic_permutation() {
    let d = data();
    let a = d.shuffled(1);
    let b = d.shuffled(1);
    let c = d.shuffled(2);
    assert_eq!(raws(&a), raws(&b));
    assert_eq!(a.labels(), b.labels());
    assert_ne!(raws(&a), raws(&c));
    assert_ne!(raws(&a), raws(&d));
    let mut sorted = raws(&a);
    sorted.sort();
    let mut orig = raws(&d);
    orig.sort();
    assert_eq!(sorted, orig);
}

#[test]
fn stratified_split_sizes() {
    let d = Dataset::synthetic(3, 10, [1, 4, 4], 0);
    let (train, val) = d.split_at_fraction(0.2, 9);
    assert_eq!((train.len(), val.len()), (24, 6));
    assert_eq!(val.class_counts(), vec![2, 2, 2]);
    assert_eq!(train.class_counts(), vec![8, 8, 8]);
    // deterministic, and seed-dependent
    let (_, val2) = d.split_at_fraction(0.2, 9);
    assert_eq!(raws(&val), raws(&val2));
    let (_, val3) = d.split_at_fraction(0.2, 10);
    assert_ne!(raws(&val), raws(&val3));
    // disjoint and complete
    let mut all = raws(&train);
    all.extend(raws(&val));
    all.sort();
    let mut orig = raws(&d);
    orig.sort();
    assert_eq!(all, orig);
    // rounding per class, and the extremes
    let (t, v) = d.split_at_fraction(0.25, 0);
    assert_eq!(v.class_counts(), vec![3, 3, 3]); // round(2.5) = 3
    assert_eq!(t.len(), 21);
    assert_eq!(d.split_at_fraction(0.0, 0).1.len(), 0);
    assert_eq!(d.split_at_fraction(1.0, 0).0.len(), 0);
    assert_eq!(d.split_at_fraction(f64::NAN, 0).1.len(), 0);
    assert_eq!(d.split_at_fraction(7.0, 0).1.len(), 30);
}

/// Checks that streaming `d` in batches of `size` yields every item exactly once, in order,
/// with the same values as decoding each item alone.
fn check_batches_cover(d: &Dataset, size: usize) {
    let batches: Vec<_> = d.batches(size).collect::<Result<_, _>>().expect("batches");
    assert_eq!(batches.len(), d.len().div_ceil(size), "batch size {size}");
    assert_eq!(d.batches(size).len(), batches.len());
    let [c, h, w] = d.image_shape();
    let mut labels: Vec<usize> = Vec::new();
    let mut images: Vec<f32> = Vec::new();
    for b in &batches {
        assert!(b.len() <= size && !b.is_empty());
        assert_eq!(b.shape, [b.len(), c, h, w]);
        assert_eq!(b.images.len(), b.len() * c * h * w);
        labels.extend(&b.labels);
        images.extend(&b.images);
    }
    assert_eq!(labels, d.labels());
    let singles: Vec<f32> = (0..d.len())
        .flat_map(|i| d.batch(i..i + 1).expect("one").images)
        .collect();
    assert_eq!(images, singles);
}

#[test]
fn batches_cover_every_item_exactly_once() {
    let d = data().shuffled(3);
    for size in [1, 5, 7, 24, 100] {
        check_batches_cover(&d, size);
    }
    check_batches_cover(&d.subset_classes(&[3, 1]).expect("subset"), 5);
    // each item exactly once: positions tracked through `select`
    let mut seen = BTreeMap::new();
    for (k, b) in d.batches(5).enumerate() {
        let b = b.expect("batch");
        for j in 0..b.len() {
            *seen.entry(k * 5 + j).or_insert(0) += 1;
        }
    }
    assert_eq!(seen.len(), 24);
    assert!(seen.values().all(|&n| n == 1));
    // empty view: no batches; size 0: one error
    assert_eq!(d.take(0).batches(4).count(), 0);
    let zero: Vec<_> = d.batches(0).collect();
    assert_eq!(zero.len(), 1);
    check_err(zero.into_iter().next().expect("one"), &["batch size 0"]);
}

#[test]
fn batch_ranges_and_normalization() {
    let d = data();
    check_err(d.batch(20..25), &["index 25 out of range"]);
    assert_eq!(d.batch(3..3).expect("empty").shape, [0, 3, 8, 8]);
    let unit = d.clone().with_normalization(Normalization::unit(3));
    let b = unit.batch(2..3).expect("batch");
    let raw = d.raw_u8(2).expect("raw");
    assert!(
        b.images
            .iter()
            .zip(&raw)
            .all(|(x, &p)| (x - f32::from(p) / 255.0).abs() < 1e-7)
    );
    let custom = Normalization::new(&[0.5, 0.25, 0.0], &[0.5, 2.0, 1.0]);
    let b = d
        .clone()
        .with_normalization(custom.clone())
        .batch(2..3)
        .expect("batch");
    assert!((b.images[0] - (f32::from(raw[0]) / 255.0 - 0.5) / 0.5).abs() < 1e-6);
    assert!((b.images[64] - (f32::from(raw[64]) / 255.0 - 0.25) / 2.0).abs() < 1e-6);
    check_err(
        d.clone()
            .with_normalization(Normalization::unit(1))
            .batch(0..1),
        &["1 means", "expected 3"],
    );
    check_err(
        d.clone()
            .with_normalization(Normalization::new(&[0.0; 3], &[1.0, 0.0, 1.0]))
            .batch(0..1),
        &["std 0"],
    );
}

#[test]
fn channel_conversion_and_resize() {
    let gray = Dataset::synthetic(2, 2, [1, 6, 6], 3);
    let rgb = gray.clone().with_channels(3).expect("1 -> 3");
    assert_eq!(rgb.image_shape(), [3, 6, 6]);
    let (g, c) = (gray.raw_u8(1).expect("raw"), rgb.raw_u8(1).expect("raw"));
    assert_eq!(c, [g.clone(), g.clone(), g].concat());
    let n = rgb.normalization();
    assert_eq!(
        (n.mean.len(), n.mean[0], n.mean[2]),
        (
            3,
            gray.normalization().mean[0],
            gray.normalization().mean[0]
        )
    );
    assert_eq!(rgb.batch(0..4).expect("batch").shape, [4, 3, 6, 6]);
    // back to 1 channel: luminance of equal planes is the plane
    let back = rgb.with_channels(1).expect("3 -> 1");
    assert_eq!(back.raw_u8(1).expect("raw"), gray.raw_u8(1).expect("raw"));

    let colour = data();
    let luma = colour.clone().with_channels(1).expect("3 -> 1");
    assert_eq!(luma.image_shape(), [1, 8, 8]);
    let (src, y) = (colour.raw_u8(0).expect("raw"), luma.raw_u8(0).expect("raw"));
    let expected = (0.299 * f32::from(src[5])
        + 0.587 * f32::from(src[64 + 5])
        + 0.114 * f32::from(src[128 + 5]))
    .round();
    assert_eq!(f32::from(y[5]), expected);
    assert_eq!(luma.normalization().channels(), 1);
    check_err(
        colour.clone().with_channels(2),
        &["3-channel images to 2 channels"],
    );

    let big = colour.clone().with_resize(16, 12).expect("16x12");
    assert_eq!(big.image_shape(), [3, 16, 12]);
    assert_eq!(big.raw_u8(0).expect("raw").len(), 3 * 16 * 12);
    let small = colour.clone().with_resize(4, 4).expect("4x4");
    let (s, src) = (
        small.raw_u8(0).expect("raw"),
        colour.raw_u8(0).expect("raw"),
    );
    let mean2x2 = (u32::from(src[0]) + u32::from(src[1]) + u32::from(src[8]) + u32::from(src[9]))
        as f32
        / 4.0;
    assert!(
        (f32::from(s[0]) - mean2x2).abs() <= 0.5 + 1e-3,
        "{} vs {mean2x2}",
        s[0]
    );
    // resize and channels combine
    let both = colour
        .with_resize(4, 4)
        .expect("4x4")
        .with_channels(1)
        .expect("3 -> 1");
    assert_eq!(both.batch(0..2).expect("batch").shape, [2, 1, 4, 4]);
}

#[test]
fn kinds_and_splits_parse_and_display() {
    let cases = [
        (
            "cifar10",
            DatasetKind::Cifar10,
            "cifar-10-batches-bin",
            10,
            [3, 32, 32],
        ),
        (
            "cifar100",
            DatasetKind::Cifar100 { coarse: false },
            "cifar-100-binary",
            100,
            [3, 32, 32],
        ),
        (
            "cifar100-coarse",
            DatasetKind::Cifar100 { coarse: true },
            "cifar-100-binary",
            20,
            [3, 32, 32],
        ),
        (
            "tiny-imagenet",
            DatasetKind::TinyImageNet,
            "tiny-imagenet-200",
            200,
            [3, 64, 64],
        ),
        (
            "fashion-mnist",
            DatasetKind::FashionMnist,
            "fashion-mnist",
            10,
            [1, 28, 28],
        ),
        ("mnist", DatasetKind::Mnist, "mnist", 10, [1, 28, 28]),
    ];
    for (name, kind, folder, classes, shape) in cases {
        assert_eq!(name.parse::<DatasetKind>().expect("parse"), kind);
        assert_eq!(DatasetKind::parse(name).expect("parse"), kind);
        assert_eq!(kind.to_string(), name);
        assert_eq!(kind.folder_name(), folder);
        assert_eq!(kind.num_classes(), classes);
        assert_eq!(kind.image_shape(), shape);
        let n = kind.default_normalization();
        assert_eq!((n.mean.len(), n.std.len()), (shape[0], shape[0]));
        n.validate(shape[0]).expect("valid");
    }
    assert_eq!(
        "Tiny_ImageNet".parse::<DatasetKind>().expect("lenient"),
        DatasetKind::TinyImageNet
    );
    check_err(
        "imagenet".parse::<DatasetKind>(),
        &["unknown dataset \"imagenet\"", "cifar100-coarse"],
    );
    assert_eq!(
        DatasetKind::Cifar10.default_normalization(),
        Normalization::new(&[0.4914, 0.4822, 0.4465], &[0.2470, 0.2435, 0.2616])
    );
    for (s, split) in [
        ("train", Split::Train),
        ("test", Split::Test),
        ("val", Split::Test),
        ("TRAIN", Split::Train),
    ] {
        assert_eq!(s.parse::<Split>().expect("split"), split);
    }
    assert_eq!(Split::Test.to_string(), "test");
    check_err("dev".parse::<Split>(), &["unknown split \"dev\""]);
}

#[test]
fn views_share_storage_and_clone_cheaply() {
    let d = data();
    let copy = d.clone();
    assert_eq!(raws(&copy), raws(&d));
    // Debug is a summary, not the bytes
    let dbg = format!("{d:?}");
    assert!(dbg.contains("synthetic") && dbg.len() < 2000, "{dbg}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn split_partitions_each_class(classes in 1usize..5, per_class in 0usize..12, fraction in 0.0f64..1.0, seed: u64) {
        let d = Dataset::synthetic(classes, per_class, [1, 2, 2], seed);
        let (train, val) = d.split_at_fraction(fraction, seed);
        prop_assert_eq!(train.len() + val.len(), d.len());
        let expected_val = (per_class as f64 * fraction).round() as usize;
        prop_assert_eq!(val.class_counts(), vec![expected_val; classes]);
        prop_assert_eq!(train.class_counts(), vec![per_class - expected_val; classes]);
    }

    #[test]
    fn shuffle_and_subset_keep_counts(per_class in 0usize..8, seed: u64, keep in proptest::sample::subsequence(vec![0usize, 1, 2, 3, 4], 0..=5)) {
        let d = Dataset::synthetic(5, per_class, [1, 2, 2], 0);
        let s = d.shuffled(seed);
        prop_assert_eq!(s.class_counts(), d.class_counts());
        let sub = s.subset_classes(&keep).expect("subset");
        prop_assert_eq!(sub.len(), keep.len() * per_class);
        prop_assert_eq!(sub.class_counts(), vec![per_class; keep.len()]);
    }
}
