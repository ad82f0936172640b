//! CIFAR-10 / CIFAR-100 binary versions: fixed-size records `<label byte(s)><1024 R><1024 G><1024 B>`.
//!
//! The whole file is kept in memory (30 MB per CIFAR-10 batch); pixels are sliced out on
//! decode. Labels are read and range-checked at load time.

use std::path::{Path, PathBuf};

use crate::source::{Pixels, RecordChunk, Source};
use crate::{DataError, DatasetKind, Split};

const PIXELS: usize = 3 * 32 * 32;

/// The official CIFAR-10 class names (`batches.meta.txt`).
pub const CIFAR10_CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// The official CIFAR-100 fine class names (`fine_label_names.txt`), label order.
pub const CIFAR100_FINE_CLASSES: [&str; 100] = [
    "apple",
    "aquarium_fish",
    "baby",
    "bear",
    "beaver",
    "bed",
    "bee",
    "beetle",
    "bicycle",
    "bottle",
    "bowl",
    "boy",
    "bridge",
    "bus",
    "butterfly",
    "camel",
    "can",
    "castle",
    "caterpillar",
    "cattle",
    "chair",
    "chimpanzee",
    "clock",
    "cloud",
    "cockroach",
    "couch",
    "crab",
    "crocodile",
    "cup",
    "dinosaur",
    "dolphin",
    "elephant",
    "flatfish",
    "forest",
    "fox",
    "girl",
    "hamster",
    "house",
    "kangaroo",
    "keyboard",
    "lamp",
    "lawn_mower",
    "leopard",
    "lion",
    "lizard",
    "lobster",
    "man",
    "maple_tree",
    "motorcycle",
    "mountain",
    "mouse",
    "mushroom",
    "oak_tree",
    "orange",
    "orchid",
    "otter",
    "palm_tree",
    "pear",
    "pickup_truck",
    "pine_tree",
    "plain",
    "plate",
    "poppy",
    "porcupine",
    "possum",
    "rabbit",
    "raccoon",
    "ray",
    "road",
    "rocket",
    "rose",
    "sea",
    "seal",
    "shark",
    "shrew",
    "skunk",
    "skyscraper",
    "snail",
    "snake",
    "spider",
    "squirrel",
    "streetcar",
    "sunflower",
    "sweet_pepper",
    "table",
    "tank",
    "telephone",
    "television",
    "tiger",
    "tractor",
    "train",
    "trout",
    "tulip",
    "turtle",
    "wardrobe",
    "whale",
    "willow_tree",
    "wolf",
    "woman",
    "worm",
];

/// The official CIFAR-100 coarse class names (`coarse_label_names.txt`), label order.
pub const CIFAR100_COARSE_CLASSES: [&str; 20] = [
    "aquatic_mammals",
    "fish",
    "flowers",
    "food_containers",
    "fruit_and_vegetables",
    "household_electrical_devices",
    "household_furniture",
    "insects",
    "large_carnivores",
    "large_man-made_outdoor_things",
    "large_natural_outdoor_scenes",
    "large_omnivores_and_herbivores",
    "medium_mammals",
    "non-insect_invertebrates",
    "people",
    "reptiles",
    "small_mammals",
    "trees",
    "vehicles_1",
    "vehicles_2",
];

/// Record layout of one CIFAR kind.
struct Layout {
    /// Bytes per record.
    record: usize,
    /// Label bytes at the start of each record and the number of classes each may take.
    label_bytes: &'static [usize],
    /// Which label byte is the label.
    label_index: usize,
    /// File holding the class names, beside the data.
    names_file: &'static str,
    builtin_names: &'static [&'static str],
}

fn layout(kind: DatasetKind) -> Result<Layout, DataError> {
    match kind {
        DatasetKind::Cifar10 => Ok(Layout {
            record: 1 + PIXELS,
            label_bytes: &[10],
            label_index: 0,
            names_file: "batches.meta.txt",
            builtin_names: &CIFAR10_CLASSES,
        }),
        DatasetKind::Cifar100 { coarse } => Ok(Layout {
            record: 2 + PIXELS,
            label_bytes: &[20, 100],
            label_index: usize::from(!coarse),
            names_file: if coarse {
                "coarse_label_names.txt"
            } else {
                "fine_label_names.txt"
            },
            builtin_names: if coarse {
                &CIFAR100_COARSE_CLASSES
            } else {
                &CIFAR100_FINE_CLASSES
            },
        }),
        other => Err(DataError::InvalidArgument(format!(
            "{other} is not a CIFAR dataset, expected cifar10, cifar100 or cifar100-coarse"
        ))),
    }
}

/// Loads the official files of `split` from the dataset folder.
pub(crate) fn load_folder(
    kind: DatasetKind,
    folder: &Path,
    split: Split,
) -> Result<(Source, Vec<String>), DataError> {
    let layout = layout(kind)?;
    let files = kind.expected_files(split);
    let missing: Vec<String> = files
        .iter()
        .filter(|f| !folder.join(f).is_file())
        .cloned()
        .collect();
    if !missing.is_empty() {
        return Err(DataError::DatasetMissing {
            dataset: kind.to_string(),
            split: split.to_string(),
            folder: folder.to_path_buf(),
            missing,
            help: kind.missing_help(folder),
        });
    }
    let official_records = match (kind, split) {
        (DatasetKind::Cifar100 { .. }, Split::Train) => 50_000,
        _ => 10_000,
    };
    let mut chunks = Vec::new();
    let mut labels = Vec::new();
    for file in &files {
        let chunk = read_records(&layout, &folder.join(file), labels.len(), &mut labels)?;
        if chunk.count != official_records {
            tracing::warn!(
                path = %chunk.path.display(),
                records = chunk.count,
                expected = official_records,
                "CIFAR file does not have the official record count (a reduced copy?)"
            );
        }
        chunks.push(chunk);
    }
    let names_path = folder.join(layout.names_file);
    let names = if names_path.is_file() {
        read_class_names(&names_path, layout.builtin_names.len())?
    } else {
        layout.builtin_names.iter().map(|s| s.to_string()).collect()
    };
    let description = format!("{kind} {split} from {}", folder.display());
    Ok((
        Source {
            description,
            shape: [3, 32, 32],
            labels,
            pixels: Pixels::Records(chunks),
        },
        names,
    ))
}

/// Loads a single file of records; names from the class-name file beside it, else `class_i`.
pub(crate) fn load_file(
    kind: DatasetKind,
    file: &Path,
) -> Result<(Source, Vec<String>), DataError> {
    let layout = layout(kind)?;
    if !file.is_file() {
        return Err(DataError::MissingFile {
            path: file.to_path_buf(),
            expected: format!("a file of {}-byte {kind} records", layout.record),
        });
    }
    let mut labels = Vec::new();
    let chunk = read_records(&layout, file, 0, &mut labels)?;
    let num_classes = layout.builtin_names.len();
    let names_path = file
        .parent()
        .unwrap_or(Path::new("."))
        .join(layout.names_file);
    let names = if names_path.is_file() {
        // A single file may hold fewer classes than the official dataset (e.g. a mix of
        // classes of several datasets written by `decomp mix`): the names file says how
        // many, and every label must name one of them.
        let names = read_class_names_up_to(&names_path, num_classes)?;
        if let Some((r, &label)) = labels.iter().enumerate().find(|&(_, &l)| l >= names.len()) {
            return Err(DataError::LabelOutOfRange {
                path: file.to_path_buf(),
                record: r,
                offset: (r * layout.record + layout.label_index) as u64,
                label,
                num_classes: names.len(),
            });
        }
        names
    } else {
        (0..num_classes)
            .map(crate::placeholder_class_name)
            .collect()
    };
    let description = format!("{kind} records from {}", file.display());
    Ok((
        Source {
            description,
            shape: [3, 32, 32],
            labels,
            pixels: Pixels::Records(vec![chunk]),
        },
        names,
    ))
}

/// Reads one file of records, checks its size and every label byte, and appends the labels.
fn read_records(
    layout: &Layout,
    path: &Path,
    first_item: usize,
    labels: &mut Vec<usize>,
) -> Result<RecordChunk, DataError> {
    let bytes = crate::read::read_limited(path, crate::read::MAX_DATA_FILE)?;
    let rs = layout.record;
    if bytes.is_empty() {
        return Err(DataError::WrongFileSize {
            path: path.to_path_buf(),
            expected: format!("at least one {rs}-byte record"),
            found: 0,
        });
    }
    let count = bytes.len() / rs;
    if bytes.len() % rs != 0 {
        return Err(DataError::TruncatedRecord {
            path: path.to_path_buf(),
            record: count,
            offset: (count * rs) as u64,
            expected: rs,
            found: bytes.len() % rs,
        });
    }
    labels.reserve(count);
    for (r, record) in bytes.chunks_exact(rs).enumerate() {
        for (b, &num_classes) in layout.label_bytes.iter().enumerate() {
            let label = usize::from(record[b]);
            if label >= num_classes {
                return Err(DataError::LabelOutOfRange {
                    path: path.to_path_buf(),
                    record: r,
                    offset: (r * rs + b) as u64,
                    label,
                    num_classes,
                });
            }
        }
        labels.push(usize::from(record[layout.label_index]));
    }
    let pixel_offset = layout.label_bytes.len();
    Ok(RecordChunk {
        path: path.to_path_buf(),
        bytes,
        header: 0,
        stride: rs,
        pixel_offset,
        first_item,
        count,
    })
}

/// Reads a class-name file of 1 to `max` names (one per non-empty line).
fn read_class_names_up_to(path: &Path, max: usize) -> Result<Vec<String>, DataError> {
    let text = crate::read::read_text(path)?;
    let names: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    if names.is_empty() || names.len() > max {
        return Err(DataError::ClassNames {
            path: PathBuf::from(path),
            expected: max,
            found: names.len(),
        });
    }
    Ok(names)
}

/// Reads a class-name file: one name per non-empty line, exactly `expected` of them.
pub(crate) fn read_class_names(path: &Path, expected: usize) -> Result<Vec<String>, DataError> {
    let text = crate::read::read_text(path)?;
    let names: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    if names.len() != expected {
        return Err(DataError::ClassNames {
            path: PathBuf::from(path),
            expected,
            found: names.len(),
        });
    }
    Ok(names)
}
