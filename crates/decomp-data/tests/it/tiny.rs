//! Tiny ImageNet folders generated in a temp dir (JPEG files written with `image`).

use std::path::Path;

use decomp_data::{DataError, Dataset, DatasetKind, Split};
use image::ImageFormat;

use crate::common::{check_err, tempdir, write};

/// Encodes a `size x size` JPEG: RGB filled with `rgb`, or gray `rgb[0]` when `gray`.
pub fn jpeg(size: u32, rgb: [u8; 3], gray: bool) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    if gray {
        let img = image::GrayImage::from_pixel(size, size, image::Luma([rgb[0]]));
        img.write_to(&mut out, ImageFormat::Jpeg).expect("encode");
    } else {
        let img = image::RgbImage::from_pixel(size, size, image::Rgb(rgb));
        img.write_to(&mut out, ImageFormat::Jpeg).expect("encode");
    }
    out.into_inner()
}

pub const WNIDS: [&str; 3] = ["n001", "n002", "n003"];

/// A tiny-imagenet layout: 3 classes with 3, 2, 2 train images (class 2's second image gray),
/// 4 val images, words.txt naming two of the classes.
pub fn write_tiny_folder(folder: &Path) {
    write(
        &folder.join("wnids.txt"),
        format!("{}\n", WNIDS.join("\n")).as_bytes(),
    );
    write(
        &folder.join("words.txt"),
        b"n000\tnot used\nn001\tgoldfish, Carassius auratus\nn003\tgroom, bridegroom\nn999\tother\n",
    );
    let colours = [[200, 10, 10], [10, 200, 10], [10, 10, 200]];
    for (c, wnid) in WNIDS.iter().enumerate() {
        let n = if c == 0 { 3 } else { 2 };
        for k in 0..n {
            let gray = c == 2 && k == 1;
            let path = folder
                .join("train")
                .join(wnid)
                .join("images")
                .join(format!("{wnid}_{k}.JPEG"));
            write(&path, &jpeg(64, colours[c], gray));
        }
        write(
            &folder
                .join("train")
                .join(wnid)
                .join(format!("{wnid}_boxes.txt")),
            b"ignored\n",
        );
    }
    let val = [
        ("val_0.JPEG", "n003"),
        ("val_1.JPEG", "n001"),
        ("val_2.JPEG", "n001"),
        ("val_3.JPEG", "n002"),
    ];
    let mut annotations = String::new();
    for (file, wnid) in val {
        annotations.push_str(&format!("{file}\t{wnid}\t0\t0\t63\t63\n"));
        let c = WNIDS.iter().position(|w| *w == wnid).expect("known");
        write(
            &folder.join("val").join("images").join(file),
            &jpeg(64, colours[c], false),
        );
    }
    write(
        &folder.join("val").join("val_annotations.txt"),
        annotations.as_bytes(),
    );
}

#[test]
fn loads_train_and_val_with_names_and_order() {
    let dir = tempdir();
    let folder = dir.path().join("tiny-imagenet-200");
    write_tiny_folder(&folder);
    let train = Dataset::load(DatasetKind::TinyImageNet, dir.path(), Split::Train).expect("train");
    assert_eq!(train.labels(), vec![0, 0, 0, 1, 1, 2, 2]);
    assert_eq!(train.class_names(), &["goldfish", "n002", "groom"]);
    assert_eq!(train.image_shape(), [3, 64, 64]);
    // colour survives JPEG closely; the gray JPEG becomes three equal planes
    let red = train.raw_u8(0).expect("decode");
    assert_eq!(red.len(), 3 * 64 * 64);
    assert!(
        red[0] > 180 && red[4096] < 40 && red[8192] < 40,
        "{} {} {}",
        red[0],
        red[4096],
        red[8192]
    );
    let gray = train.raw_u8(6).expect("decode gray");
    assert_eq!(gray.len(), 3 * 64 * 64);
    assert!(gray[..4096] == gray[4096..8192] && gray[..4096] == gray[8192..]);

    let val = Dataset::load_folder(DatasetKind::TinyImageNet, &folder, Split::Test).expect("val");
    assert_eq!(val.labels(), vec![2, 0, 0, 1]);
    let batch = val.batch(0..4).expect("batch");
    assert_eq!(batch.shape, [4, 3, 64, 64]);

    // resize 64 -> 32 (area) keeps flat colours
    let small = val.clone().with_resize(32, 32).expect("32x32");
    assert_eq!(small.image_shape(), [3, 32, 32]);
    let b = small.batch(1..3).expect("batch");
    assert_eq!(b.shape, [2, 3, 32, 32]);
    let raw = small.raw_u8(0).expect("raw");
    assert_eq!(raw.len(), 3 * 32 * 32);
    assert!(raw[2 * 1024 + 500] > 180, "blue plane of the blue image");
}

#[test]
fn unreadable_jpeg_names_the_file() {
    let dir = tempdir();
    let folder = dir.path().join("tiny-imagenet-200");
    write_tiny_folder(&folder);
    let bad = folder.join("train/n002/images/n002_1.JPEG");
    write(&bad, b"this is not a jpeg");
    let train =
        Dataset::load_folder(DatasetKind::TinyImageNet, &folder, Split::Train).expect("paths only");
    assert!(
        train.batch(0..4).is_ok(),
        "items before the bad file decode"
    );
    let err = check_err(train.batch(3..5), &["cannot decode image", "n002_1.JPEG"]);
    assert!(matches!(err, DataError::Image { .. }));
    // the streaming iterator reports the failing batch and goes on
    let results: Vec<bool> = train.batches(2).map(|b| b.is_ok()).collect();
    assert_eq!(results, vec![true, true, false, true]);
}

#[test]
fn wrong_image_size_is_an_error() {
    let dir = tempdir();
    let folder = dir.path().join("t");
    write_tiny_folder(&folder);
    write(
        &folder.join("val/images/val_2.JPEG"),
        &jpeg(32, [1, 2, 3], false),
    );
    let val = Dataset::load_folder(DatasetKind::TinyImageNet, &folder, Split::Test).expect("load");
    let err = check_err(val.raw_u8(2), &["val_2.JPEG", "32x32", "expected 64x64"]);
    assert!(matches!(err, DataError::ImageSize { found_w: 32, .. }));
}

#[test]
fn val_only_copy_has_no_train_split() {
    let dir = tempdir();
    let folder = dir.path().join("tiny-imagenet-200-val");
    write_tiny_folder(&folder);
    std::fs::remove_dir_all(folder.join("train")).expect("rm");
    assert_eq!(
        Dataset::load_folder(DatasetKind::TinyImageNet, &folder, Split::Test)
            .expect("val")
            .len(),
        4
    );
    let err = check_err(
        Dataset::load_folder(DatasetKind::TinyImageNet, &folder, Split::Train),
        &[
            "tiny-imagenet train split not found",
            "missing train/ folder",
            "http://cs231n.stanford.edu/tiny-imagenet-200.zip",
        ],
    );
    assert!(matches!(err, DataError::DatasetMissing { .. }));
}

#[test]
fn missing_class_folder_or_val_image() {
    let dir = tempdir();
    let folder = dir.path().join("t");
    write_tiny_folder(&folder);
    std::fs::remove_dir_all(folder.join("train/n002")).expect("rm");
    check_err(
        Dataset::load_folder(DatasetKind::TinyImageNet, &folder, Split::Train),
        &[
            "missing file",
            "train/n002/images",
            "class n002",
            "line 2 of wnids.txt",
        ],
    );
    std::fs::remove_file(folder.join("val/images/val_3.JPEG")).expect("rm");
    check_err(
        Dataset::load_folder(DatasetKind::TinyImageNet, &folder, Split::Test),
        &["val_3.JPEG", "line 4", "val_annotations.txt"],
    );
}

#[test]
fn bad_annotations() {
    let dir = tempdir();
    let folder = dir.path().join("t");
    write_tiny_folder(&folder);
    let path = folder.join("val/val_annotations.txt");
    write(
        &path,
        b"val_0.JPEG\tn003\t0\t0\t1\t1\nval_1.JPEG\tn777\t0\t0\t1\t1\n",
    );
    let err = check_err(
        Dataset::load_folder(DatasetKind::TinyImageNet, &folder, Split::Test),
        &["val_annotations.txt:2", "listed in wnids.txt", "n777"],
    );
    assert!(matches!(err, DataError::Parse { line: 2, .. }));
    write(&path, b"just-one-field\n");
    check_err(
        Dataset::load_folder(DatasetKind::TinyImageNet, &folder, Split::Test),
        &["val_annotations.txt:1", "file<TAB>wnid"],
    );
    write(&folder.join("wnids.txt"), b"n001\nn001\n");
    check_err(
        Dataset::load_folder(DatasetKind::TinyImageNet, &folder, Split::Test),
        &["wnids.txt:2", "n001"],
    );
}
