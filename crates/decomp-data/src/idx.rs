//! MNIST / Fashion-MNIST IDX files (`*-idx3-ubyte` images, `*-idx1-ubyte` labels), plain or
//! gzip-compressed. The decompressed image file is kept in memory and sliced on decode.

use std::path::{Path, PathBuf};

use flate2::read::MultiGzDecoder;

use crate::source::{Pixels, RecordChunk, Source};
use crate::{DataError, DatasetKind, Split};

/// IDX magic of an unsigned-byte 3-dimensional array (images).
pub const IDX_IMAGES_MAGIC: u32 = 0x0000_0803;
/// IDX magic of an unsigned-byte 1-dimensional array (labels).
pub const IDX_LABELS_MAGIC: u32 = 0x0000_0801;

/// The Fashion-MNIST class names, label order.
pub const FASHION_MNIST_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// The MNIST class names (the digits).
pub const MNIST_CLASSES: [&str; 10] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];

/// Loads `split` from the dataset folder; each file may be plain or end in `.gz`.
pub(crate) fn load_folder(
    kind: DatasetKind,
    folder: &Path,
    split: Split,
) -> Result<(Source, Vec<String>), DataError> {
    let names = kind.expected_files(split);
    let found: Vec<Option<PathBuf>> = names.iter().map(|n| find_plain_or_gz(folder, n)).collect();
    let missing: Vec<String> = names
        .iter()
        .zip(&found)
        .filter(|(_, f)| f.is_none())
        .map(|(n, _)| format!("{n}[.gz]"))
        .collect();
    let (Some(Some(images_path)), Some(Some(labels_path)), true) =
        (found.first(), found.get(1), missing.is_empty())
    else {
        return Err(DataError::DatasetMissing {
            dataset: kind.to_string(),
            split: split.to_string(),
            folder: folder.to_path_buf(),
            missing,
            help: kind.missing_help(folder),
        });
    };
    let [_, rows, cols] = kind.image_shape();
    let images = read_maybe_gz(images_path)?;
    let count = check_images_header(images_path, &images, [rows, cols])?;
    let labels_bytes = read_maybe_gz(labels_path)?;
    let labels = parse_labels(labels_path, &labels_bytes, count, kind.num_classes())?;
    let chunk = RecordChunk {
        path: images_path.clone(),
        bytes: images,
        header: 16,
        stride: rows * cols,
        pixel_offset: 0,
        first_item: 0,
        count,
    };
    let class_names = match kind {
        DatasetKind::FashionMnist => FASHION_MNIST_CLASSES,
        _ => MNIST_CLASSES,
    };
    let description = format!("{kind} {split} from {}", folder.display());
    Ok((
        Source {
            description,
            shape: [1, rows, cols],
            labels,
            pixels: Pixels::Records(vec![chunk]),
        },
        class_names.iter().map(|s| s.to_string()).collect(),
    ))
}

fn find_plain_or_gz(folder: &Path, name: &str) -> Option<PathBuf> {
    [folder.join(name), folder.join(format!("{name}.gz"))]
        .into_iter()
        .find(|p| p.is_file())
}

/// Reads a file, gunzipping it when it starts with the gzip magic (whatever its name).
pub(crate) fn read_maybe_gz(path: &Path) -> Result<Vec<u8>, DataError> {
    let bytes = crate::read::read_limited(path, crate::read::MAX_DATA_FILE)?;
    if !bytes.starts_with(&[0x1f, 0x8b]) {
        return Ok(bytes);
    }
    crate::read::read_to_limit(
        MultiGzDecoder::new(bytes.as_slice()),
        path,
        crate::read::MAX_DATA_FILE,
        "gunzip",
        bytes.len() * 4,
    )
}

fn be_u32(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_be_bytes(word)
}

/// Checks an IDX3 image file (magic, image size, length) and returns the image count.
fn check_images_header(
    path: &Path,
    bytes: &[u8],
    [rows, cols]: [usize; 2],
) -> Result<usize, DataError> {
    if bytes.len() < 16 {
        return Err(DataError::WrongFileSize {
            path: path.to_path_buf(),
            expected: "at least a 16-byte IDX3 header".to_string(),
            found: bytes.len() as u64,
        });
    }
    let magic = be_u32(bytes, 0);
    if magic != IDX_IMAGES_MAGIC {
        return Err(bad_magic(
            path,
            IDX_IMAGES_MAGIC,
            magic,
            "unsigned bytes, 3 dimensions",
        ));
    }
    let (n, r, c) = (
        be_u32(bytes, 4) as usize,
        be_u32(bytes, 8) as usize,
        be_u32(bytes, 12) as usize,
    );
    if (r, c) != (rows, cols) {
        return Err(DataError::BadIdx {
            path: path.to_path_buf(),
            field: "image dimensions",
            expected: format!("{rows}x{cols}"),
            found: format!("{r}x{c}"),
        });
    }
    let expected = n.checked_mul(r * c).and_then(|p| p.checked_add(16));
    if expected != Some(bytes.len()) {
        return Err(DataError::WrongFileSize {
            path: path.to_path_buf(),
            expected: format!(
                "{} bytes (16-byte header + {n} images of {r}x{c} as the header says)",
                expected.map_or_else(|| "more than 2^64".to_string(), |e| e.to_string())
            ),
            found: bytes.len() as u64,
        });
    }
    Ok(n)
}

/// Parses an IDX1 label file holding `count` labels below `num_classes`.
fn parse_labels(
    path: &Path,
    bytes: &[u8],
    count: usize,
    num_classes: usize,
) -> Result<Vec<usize>, DataError> {
    if bytes.len() < 8 {
        return Err(DataError::WrongFileSize {
            path: path.to_path_buf(),
            expected: "at least an 8-byte IDX1 header".to_string(),
            found: bytes.len() as u64,
        });
    }
    let magic = be_u32(bytes, 0);
    if magic != IDX_LABELS_MAGIC {
        return Err(bad_magic(
            path,
            IDX_LABELS_MAGIC,
            magic,
            "unsigned bytes, 1 dimension",
        ));
    }
    let n = be_u32(bytes, 4) as usize;
    if n != count {
        return Err(DataError::BadIdx {
            path: path.to_path_buf(),
            field: "label count",
            expected: format!("{count} (the number of images)"),
            found: n.to_string(),
        });
    }
    if bytes.len() != 8 + n {
        return Err(DataError::WrongFileSize {
            path: path.to_path_buf(),
            expected: format!("{} bytes (8-byte header + {n} labels)", 8 + n),
            found: bytes.len() as u64,
        });
    }
    bytes[8..]
        .iter()
        .enumerate()
        .map(|(r, &l)| {
            let label = usize::from(l);
            if label < num_classes {
                Ok(label)
            } else {
                Err(DataError::LabelOutOfRange {
                    path: path.to_path_buf(),
                    record: r,
                    offset: (8 + r) as u64,
                    label,
                    num_classes,
                })
            }
        })
        .collect()
}

fn bad_magic(path: &Path, expected: u32, found: u32, meaning: &str) -> DataError {
    DataError::BadIdx {
        path: path.to_path_buf(),
        field: "magic number",
        expected: format!("{expected:#010x} ({meaning})"),
        found: format!("{found:#010x}"),
    }
}
