//! Tiny ImageNet (CS231N) in its official folder layout:
//!
//! ```text
//! tiny-imagenet-200/
//!   wnids.txt                      class order = line order
//!   words.txt                      wnid \t comma-separated names (optional here)
//!   train/<wnid>/images/*.JPEG     500 per class
//!   val/val_annotations.txt        file \t wnid \t x0 \t y0 \t x1 \t y1
//!   val/images/*.JPEG
//! ```
//!
//! Only paths and labels are kept; JPEGs are decoded per batch (grayscale ones to RGB).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use crate::source::{Pixels, Source};
use crate::{DataError, DatasetKind, Split};

pub(crate) fn load_folder(folder: &Path, split: Split) -> Result<(Source, Vec<String>), DataError> {
    let kind = DatasetKind::TinyImageNet;
    let missing: Vec<String> = kind
        .expected_files(split)
        .into_iter()
        .filter_map(|f| match f.strip_suffix('/') {
            Some(dir) => (!folder.join(dir).is_dir()).then(|| format!("{f} folder")),
            None => (!folder.join(&f).is_file()).then_some(f),
        })
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
    let wnids = read_wnids(&folder.join("wnids.txt"))?;
    let index: HashMap<&str, usize> = wnids
        .iter()
        .enumerate()
        .map(|(i, w)| (w.as_str(), i))
        .collect();
    let names = class_names(&folder.join("words.txt"), &wnids)?;
    let (paths, labels) = match split {
        Split::Train => train_items(folder, &wnids)?,
        Split::Test => val_items(folder, &index)?,
    };
    let description = format!("{kind} {split} from {}", folder.display());
    Ok((
        Source {
            description,
            shape: kind.image_shape(),
            labels,
            pixels: Pixels::Files(paths),
        },
        names,
    ))
}

fn read_wnids(path: &Path) -> Result<Vec<String>, DataError> {
    let text = crate::read::read_text(path)?;
    let mut wnids: Vec<String> = Vec::new();
    for (line, wnid) in text.lines().enumerate().map(|(i, l)| (i + 1, l.trim())) {
        if wnid.is_empty() {
            continue;
        }
        if wnids.iter().any(|w| w == wnid) {
            return Err(DataError::Parse {
                path: path.to_path_buf(),
                line,
                expected: "a WordNet id not listed before".to_string(),
                found: wnid.to_string(),
            });
        }
        wnids.push(wnid.to_string());
    }
    if wnids.is_empty() {
        return Err(DataError::Parse {
            path: path.to_path_buf(),
            line: 1,
            expected: "one WordNet id per line".to_string(),
            found: String::new(),
        });
    }
    Ok(wnids)
}

/// The first name `words.txt` gives each wnid; the wnid itself when absent.
fn class_names(words: &Path, wnids: &[String]) -> Result<Vec<String>, DataError> {
    let text = if words.exists() {
        crate::read::read_text(words)?
    } else {
        String::new()
    };
    let wanted: HashSet<&str> = wnids.iter().map(String::as_str).collect();
    let mut first_names: HashMap<&str, &str> = HashMap::new();
    for line in text.lines() {
        let Some((wnid, names)) = line.split_once('\t') else {
            continue;
        };
        let wnid = wnid.trim();
        let first = names.split(',').next().unwrap_or("").trim();
        if wanted.contains(wnid) && !first.is_empty() {
            first_names.entry(wnid).or_insert(first);
        }
    }
    Ok(wnids
        .iter()
        .map(|w| {
            first_names
                .get(w.as_str())
                .map_or_else(|| w.clone(), |name| (*name).to_string())
        })
        .collect())
}

fn is_image_file(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| ["jpeg", "jpg", "png"].contains(&e.to_ascii_lowercase().as_str()))
}

/// `train/<wnid>/images/*.JPEG` for every wnid, file names sorted within a class.
fn train_items(folder: &Path, wnids: &[String]) -> Result<(Vec<PathBuf>, Vec<usize>), DataError> {
    let mut paths = Vec::new();
    let mut labels = Vec::new();
    for (label, wnid) in wnids.iter().enumerate() {
        let dir = folder.join("train").join(wnid).join("images");
        if !dir.is_dir() {
            return Err(DataError::MissingFile {
                path: dir,
                expected: format!(
                    "the folder of training images of class {wnid} (line {} of wnids.txt)",
                    label + 1
                ),
            });
        }
        let entries = std::fs::read_dir(&dir).map_err(|e| DataError::io("list", &dir, e))?;
        let mut files = Vec::new();
        for entry in entries {
            let path = entry.map_err(|e| DataError::io("list", &dir, e))?.path();
            if is_image_file(&path) && path.is_file() {
                files.push(path);
            }
        }
        files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
        labels.extend(std::iter::repeat_n(label, files.len()));
        paths.extend(files);
    }
    Ok((paths, labels))
}

/// `val/images/<file>` for every line of `val/val_annotations.txt`, in file order.
fn val_items(
    folder: &Path,
    index: &HashMap<&str, usize>,
) -> Result<(Vec<PathBuf>, Vec<usize>), DataError> {
    let annotations = folder.join("val").join("val_annotations.txt");
    let images = folder.join("val").join("images");
    let text = crate::read::read_text(&annotations)?;
    let mut paths = Vec::new();
    let mut labels = Vec::new();
    for (line, content) in text.lines().enumerate().map(|(i, l)| (i + 1, l)) {
        if content.trim().is_empty() {
            continue;
        }
        let mut fields = content.split('\t').map(str::trim);
        let (Some(file), Some(wnid)) = (fields.next().filter(|f| !f.is_empty()), fields.next())
        else {
            return Err(DataError::Parse {
                path: annotations,
                line,
                expected: "file<TAB>wnid<TAB>x0<TAB>y0<TAB>x1<TAB>y1".to_string(),
                found: content.to_string(),
            });
        };
        let Some(&label) = index.get(wnid) else {
            return Err(DataError::Parse {
                path: annotations,
                line,
                expected: "a WordNet id listed in wnids.txt".to_string(),
                found: wnid.to_string(),
            });
        };
        // A plain file name: an absolute path or `..` would read outside the dataset.
        let plain = Path::new(file)
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)))
            && Path::new(file).components().count() == 1;
        if !plain {
            return Err(DataError::Parse {
                path: annotations,
                line,
                expected:
                    "a plain image file name inside val/images (no folder, no absolute path, no ..)"
                        .to_string(),
                found: file.to_string(),
            });
        }
        let path = images.join(file);
        if !path.is_file() {
            return Err(DataError::MissingFile {
                path,
                expected: format!(
                    "the image named on line {line} of {}",
                    annotations.display()
                ),
            });
        }
        paths.push(path);
        labels.push(label);
    }
    Ok((paths, labels))
}
