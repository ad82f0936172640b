//! The immutable storage behind every [`crate::Dataset`] view: raw file bytes or file paths,
//! plus one label per item. Pixels are decoded only on request.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::DataError;

/// Raw items of one loaded dataset split. Shared (in an `Arc`) by all views.
pub(crate) struct Source {
    /// What was loaded, for `Debug` ("cifar10 train from /data/cifar-10-batches-bin").
    pub description: String,
    /// Native `[channels, height, width]` of every item.
    pub shape: [usize; 3],
    /// One label per item, in `0..class_names.len()` of the loader (validated at load time).
    pub labels: Vec<usize>,
    /// Where the pixels are.
    pub pixels: Pixels,
}

pub(crate) enum Pixels {
    /// Fixed-size records holding CHW `u8` pixels (CIFAR, IDX, synthetic), one or more chunks.
    Records(Vec<RecordChunk>),
    /// One encoded image file per item (Tiny ImageNet JPEGs), decoded on request.
    Files(Vec<PathBuf>),
}

/// One file's worth of fixed-size records: item `first_item + j` has its pixels at
/// `header + j * stride + pixel_offset`.
pub(crate) struct RecordChunk {
    /// The file the bytes came from (`<synthetic>` for generated data).
    pub path: PathBuf,
    /// The whole (decompressed) file.
    pub bytes: Vec<u8>,
    /// Bytes before the first record (IDX header).
    pub header: usize,
    /// Bytes per record.
    pub stride: usize,
    /// Offset of the pixels within a record (the label bytes come first in CIFAR).
    pub pixel_offset: usize,
    /// Index (in the source) of the chunk's first record.
    pub first_item: usize,
    /// Number of records in this chunk.
    pub count: usize,
}

impl Source {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Appends the native CHW `u8` pixels of source item `item` to `out`.
    pub fn decode_into(&self, item: usize, out: &mut Vec<u8>) -> Result<(), DataError> {
        let [c, h, w] = self.shape;
        let size = c * h * w;
        match &self.pixels {
            Pixels::Records(chunks) => {
                // Chunks are sorted by `first_item`: find the last one starting at or before `item`.
                let k = chunks.partition_point(|ch| ch.first_item <= item);
                let chunk = k
                    .checked_sub(1)
                    .and_then(|k| chunks.get(k))
                    .filter(|ch| item - ch.first_item < ch.count)
                    .ok_or(DataError::IndexOutOfRange {
                        index: item,
                        len: self.len(),
                    })?;
                let start =
                    chunk.header + (item - chunk.first_item) * chunk.stride + chunk.pixel_offset;
                let pixels = chunk.bytes.get(start..start + size).ok_or_else(|| {
                    DataError::WrongFileSize {
                        path: chunk.path.clone(),
                        expected: format!(
                            "at least {} bytes for record {}",
                            start + size,
                            item - chunk.first_item
                        ),
                        found: chunk.bytes.len() as u64,
                    }
                })?;
                out.extend_from_slice(pixels);
                Ok(())
            }
            Pixels::Files(paths) => {
                let path = paths.get(item).ok_or(DataError::IndexOutOfRange {
                    index: item,
                    len: self.len(),
                })?;
                decode_image_file(path, [c, h, w], out)
            }
        }
    }
}

/// Decodes an image file to CHW `u8` with `shape` (grayscale is converted to RGB, RGB to
/// luminance, following the requested channel count).
fn decode_image_file(path: &Path, shape: [usize; 3], out: &mut Vec<u8>) -> Result<(), DataError> {
    let [c, h, w] = shape;
    let bytes = crate::read::read_limited(path, crate::read::MAX_IMAGE_FILE)?;
    let image = image::load_from_memory(&bytes).map_err(|source| DataError::Image {
        path: path.to_path_buf(),
        source,
    })?;
    let (found_w, found_h) = (image.width() as usize, image.height() as usize);
    if (found_w, found_h) != (w, h) {
        return Err(DataError::ImageSize {
            path: path.to_path_buf(),
            expected_w: w,
            expected_h: h,
            found_w,
            found_h,
        });
    }
    match c {
        1 => out.extend_from_slice(image.to_luma8().as_raw()),
        3 => {
            let rgb = image.to_rgb8();
            let hwc = rgb.as_raw();
            for ch in 0..3 {
                out.extend(hwc.iter().skip(ch).step_by(3));
            }
        }
        _ => {
            return Err(DataError::InvalidArgument(format!(
                "{}: cannot decode an image to {c} channels, expected 1 or 3",
                path.display()
            )));
        }
    }
    Ok(())
}

impl fmt::Debug for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let storage = match &self.pixels {
            Pixels::Records(chunks) => format!(
                "{} record file(s), {} bytes",
                chunks.len(),
                chunks.iter().map(|c| c.bytes.len()).sum::<usize>()
            ),
            Pixels::Files(paths) => format!("{} image files", paths.len()),
        };
        f.debug_struct("Source")
            .field("description", &self.description)
            .field("items", &self.len())
            .field("shape", &self.shape)
            .field("storage", &storage)
            .finish()
    }
}
