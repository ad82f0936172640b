//! [`Dataset`] views, [`Batch`]es and the streaming [`Batches`] iterator.

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use crate::source::Source;
use crate::{DataError, DatasetKind, Normalization, Split, transform};

/// Largest height or width [`Dataset::with_resize`] accepts: 4,096 pixels (a 3-channel
/// image that size is 48 MiB of `u8` and 192 MiB of normalized `f32`), the same as the
/// largest feature map a graph may hold (`decomp_ir::limits::MAX_SPATIAL`).
pub const MAX_IMAGE_SIDE: usize = 4096;

/// An immutable view of a loaded dataset split: the shared raw items (an `Arc`), the list of
/// items in this view, a label map and the decode settings (normalization, resize, channels).
///
/// Cloning is cheap and never copies pixels. Every method that narrows or reorders the view
/// (`subset_classes`, `select`, `shuffled`, `split_at_fraction`, `take`) returns a new view
/// of the same storage. Pixels are decoded only by [`Dataset::batch`], [`Dataset::batches`]
/// and [`Dataset::raw_u8`].
#[derive(Clone)]
pub struct Dataset {
    source: Arc<Source>,
    /// Source item of each position of this view.
    items: Arc<[usize]>,
    /// Source label -> label of this view. Entries of classes that were dropped by
    /// `subset_classes` hold `usize::MAX`; no item of this view has such a label.
    label_map: Arc<[usize]>,
    class_names: Arc<[String]>,
    normalization: Normalization,
    /// Output `[channels, height, width]`.
    shape: [usize; 3],
}

impl std::fmt::Debug for Dataset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dataset")
            .field("source", &self.source)
            .field("len", &self.len())
            .field("num_classes", &self.num_classes())
            .field("image_shape", &self.shape)
            .field("normalization", &self.normalization)
            .finish_non_exhaustive()
    }
}

/// A decoded batch: normalized `f32` images in NCHW order plus their labels.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    /// `[n, c, h, w]` row-major, normalized with the dataset's [`Normalization`].
    pub images: Vec<f32>,
    /// One label per image, in `0..num_classes`.
    pub labels: Vec<usize>,
    /// `[n, c, h, w]`.
    pub shape: [usize; 4],
}

impl Batch {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the batch holds no image.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

impl Dataset {
    /// Loads `split` of `kind` from `data_dir/kind.folder_name()`.
    ///
    /// A missing folder or file gives [`DataError::DatasetMissing`], whose message says which
    /// files are expected where and how to download them.
    pub fn load(kind: DatasetKind, data_dir: &Path, split: Split) -> Result<Dataset, DataError> {
        Self::load_folder(kind, &data_dir.join(kind.folder_name()), split)
    }

    /// Loads `split` of `kind` from `folder`, the dataset folder itself (which may have any
    /// name, e.g. `.../tiny-imagenet-subset20`).
    #[tracing::instrument(level = "debug", skip_all, fields(kind = %kind, split = %split, folder = %folder.display()))]
    pub fn load_folder(
        kind: DatasetKind,
        folder: &Path,
        split: Split,
    ) -> Result<Dataset, DataError> {
        let loaded = match kind {
            DatasetKind::Cifar10 | DatasetKind::Cifar100 { .. } => {
                crate::cifar::load_folder(kind, folder, split)?
            }
            DatasetKind::TinyImageNet => crate::tiny::load_folder(folder, split)?,
            DatasetKind::FashionMnist | DatasetKind::Mnist => {
                crate::idx::load_folder(kind, folder, split)?
            }
        };
        tracing::debug!(items = loaded.0.len(), "loaded");
        Ok(Self::from_source(
            loaded.0,
            loaded.1,
            kind.default_normalization(),
        ))
    }

    /// Loads ONE file of CIFAR records (3073-byte CIFAR-10 records for
    /// [`DatasetKind::Cifar10`], 3074-byte CIFAR-100 records for [`DatasetKind::Cifar100`]),
    /// e.g. `train_first4000.bin`. Any number of records is accepted.
    ///
    /// Class names come from `batches.meta.txt` (CIFAR-10) or `fine_label_names.txt` /
    /// `coarse_label_names.txt` (CIFAR-100) beside the file when present, else `class_i`.
    pub fn from_cifar_file(kind: DatasetKind, file: &Path) -> Result<Dataset, DataError> {
        let (source, names) = crate::cifar::load_file(kind, file)?;
        Ok(Self::from_source(
            source,
            names,
            kind.default_normalization(),
        ))
    }

    /// In-memory images for tests: `per_class` images of each of `num_classes` classes with
    /// shape `[c, h, w]`, deterministic from `seed` (ChaCha8).
    ///
    /// Class `k` of `K` is a soft round blob whose centre sits on a circle around the image
    /// centre at angle `2 pi k / K` and whose colour is a hue at the same angle (a brightness
    /// level for gray images), on a dark noisy background; each image jitters the blob and adds
    /// per-pixel noise, so a tiny CNN learns the classes quickly but not trivially.
    /// Items are interleaved by class (item `i` has label `i % num_classes`), class names are
    /// `class_i`, and the normalization is the exact per-channel statistics of the pixels.
    pub fn synthetic(
        num_classes: usize,
        per_class: usize,
        shape: [usize; 3],
        seed: u64,
    ) -> Dataset {
        let (source, names, normalization) =
            crate::synthetic::generate(num_classes, per_class, shape, seed);
        Self::from_source(source, names, normalization)
    }

    pub(crate) fn from_source(
        source: Source,
        class_names: Vec<String>,
        normalization: Normalization,
    ) -> Dataset {
        let shape = source.shape;
        let num_classes = class_names.len();
        Dataset {
            items: (0..source.len()).collect(),
            label_map: (0..num_classes).collect(),
            class_names: class_names.into(),
            normalization,
            shape,
            source: Arc::new(source),
        }
    }

    /// Number of items in this view.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether the view holds no item.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Number of classes of this view (labels are in `0..num_classes()`).
    pub fn num_classes(&self) -> usize {
        self.class_names.len()
    }

    /// Class names; `class_names()[label]` names `label`.
    pub fn class_names(&self) -> &[String] {
        &self.class_names
    }

    /// `[channels, height, width]` of decoded images (after resize and channel conversion).
    pub fn image_shape(&self) -> [usize; 3] {
        self.shape
    }

    /// Label of the item at position `i`.
    ///
    /// # Panics
    /// If `i >= self.len()` (like slice indexing).
    pub fn label(&self, i: usize) -> usize {
        self.label_map[self.source.labels[self.items[i]]]
    }

    /// Labels of all items, in view order.
    pub fn labels(&self) -> Vec<usize> {
        self.items
            .iter()
            .map(|&s| self.label_map[self.source.labels[s]])
            .collect()
    }

    /// Number of items of each class.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.num_classes()];
        for label in self.labels() {
            counts[label] += 1;
        }
        counts
    }

    /// The normalization applied by [`Dataset::batch`].
    pub fn normalization(&self) -> &Normalization {
        &self.normalization
    }

    /// Uses `n` instead of the current normalization. It must have one entry per channel of
    /// [`Dataset::image_shape`] (checked when decoding a batch).
    pub fn with_normalization(mut self, n: Normalization) -> Self {
        self.normalization = n;
        self
    }

    /// Resizes decoded images to `h x w`: area resampling when shrinking (a 2x2 mean for
    /// 64 -> 32), bilinear (half-pixel centres) when enlarging. A zero size is ignored; a
    /// side over [`MAX_IMAGE_SIDE`] is an error (before any image is decoded).
    pub fn with_resize(mut self, h: usize, w: usize) -> Result<Self, DataError> {
        if h.max(w) > MAX_IMAGE_SIDE {
            return Err(DataError::InvalidArgument(format!(
                "resize to {h}x{w}: images are at most {MAX_IMAGE_SIDE} pixels on a side (decomp_data::MAX_IMAGE_SIDE)"
            )));
        }
        if h > 0 && w > 0 {
            self.shape[1] = h;
            self.shape[2] = w;
        }
        Ok(self)
    }

    /// Converts decoded images to `c` channels: 1 -> 3 replicates the gray plane, 3 -> 1 takes
    /// the ITU-R BT.601 luminance. The normalization follows (replicated, or
    /// luminance-weighted: an approximation). Other conversions are an error.
    pub fn with_channels(mut self, c: usize) -> Result<Self, DataError> {
        let native = self.source.shape[0];
        if c != native && !matches!((native, c), (1, 3) | (3, 1)) {
            return Err(DataError::InvalidArgument(format!(
                "cannot convert {native}-channel images to {c} channels, expected 1 -> 3, 3 -> 1 or no change"
            )));
        }
        let current = self.shape[0];
        self.normalization = self.normalization.convert_channels(current, c);
        self.shape[0] = c;
        Ok(self)
    }

    /// Keeps only the items of `classes` and relabels them `0..classes.len()` in the given
    /// order; class names follow.
    pub fn subset_classes(&self, classes: &[usize]) -> Result<Dataset, DataError> {
        let num_classes = self.num_classes();
        // new label of each current label
        let mut new_of_old = vec![usize::MAX; num_classes];
        for (new, &old) in classes.iter().enumerate() {
            match new_of_old.get_mut(old) {
                None => {
                    return Err(DataError::BadClass {
                        class: old,
                        num_classes,
                        problem: "out of range",
                    });
                }
                Some(slot) if *slot != usize::MAX => {
                    return Err(DataError::BadClass {
                        class: old,
                        num_classes,
                        problem: "given twice",
                    });
                }
                Some(slot) => *slot = new,
            }
        }
        let label_map: Arc<[usize]> = self
            .label_map
            .iter()
            .map(|&old| new_of_old.get(old).copied().unwrap_or(usize::MAX))
            .collect();
        let items: Arc<[usize]> = self
            .items
            .iter()
            .copied()
            .filter(|&s| label_map[self.source.labels[s]] != usize::MAX)
            .collect();
        Ok(Dataset {
            items,
            label_map,
            class_names: classes
                .iter()
                .map(|&c| self.class_names[c].clone())
                .collect(),
            ..self.clone()
        })
    }

    /// The view of the items at `indices` (positions into this view, in the given order;
    /// repeats allowed).
    pub fn select(&self, indices: &[usize]) -> Result<Dataset, DataError> {
        let items = indices
            .iter()
            .map(|&i| {
                self.items
                    .get(i)
                    .copied()
                    .ok_or(DataError::IndexOutOfRange {
                        index: i,
                        len: self.len(),
                    })
            })
            .collect::<Result<Arc<[usize]>, _>>()?;
        Ok(self.with_items(items))
    }

    fn with_items(&self, items: Arc<[usize]>) -> Dataset {
        Dataset {
            items,
            ..self.clone()
        }
    }

    /// Positions (in this view) of the items labelled `class`.
    pub fn indices_of_class(&self, class: usize) -> Vec<usize> {
        (0..self.len())
            .filter(|&i| self.label(i) == class)
            .collect()
    }

    /// The view in a random order, deterministic from `seed` (ChaCha8 Fisher-Yates).
    pub fn shuffled(&self, seed: u64) -> Dataset {
        let mut items = self.items.to_vec();
        items.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
        self.with_items(items.into())
    }

    /// A stratified split into `(train, validation)`: from each class, `round(n_class *
    /// val_fraction)` items chosen at random (deterministic from `seed`) go to validation.
    /// Both parts keep the order of this view. `val_fraction` is clamped to `[0, 1]`.
    pub fn split_at_fraction(&self, val_fraction: f64, seed: u64) -> (Dataset, Dataset) {
        let fraction = if val_fraction.is_nan() {
            0.0
        } else {
            val_fraction.clamp(0.0, 1.0)
        };
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut is_val = vec![false; self.len()];
        let mut by_class = vec![Vec::new(); self.num_classes()];
        for (pos, label) in self.labels().into_iter().enumerate() {
            by_class[label].push(pos);
        }
        for mut positions in by_class {
            let n_val = (positions.len() as f64 * fraction).round() as usize;
            positions.shuffle(&mut rng);
            for &p in &positions[..n_val.min(positions.len())] {
                is_val[p] = true;
            }
        }
        let pick = |val: bool| -> Arc<[usize]> {
            self.items
                .iter()
                .zip(&is_val)
                .filter(|(_, v)| **v == val)
                .map(|(s, _)| *s)
                .collect()
        };
        (self.with_items(pick(false)), self.with_items(pick(true)))
    }

    /// The first `n` items (all of them if fewer).
    pub fn take(&self, n: usize) -> Dataset {
        self.with_items(self.items[..n.min(self.len())].into())
    }

    /// CHW `u8` pixels of the item at position `i`, after channel conversion and resize.
    pub fn raw_u8(&self, i: usize) -> Result<Vec<u8>, DataError> {
        let &item = self.items.get(i).ok_or(DataError::IndexOutOfRange {
            index: i,
            len: self.len(),
        })?;
        let mut native = Vec::new();
        self.source.decode_into(item, &mut native)?;
        let [c0, h0, w0] = self.source.shape;
        let [c, h, w] = self.shape;
        let converted = if c != c0 {
            transform::convert_channels(&native, c0, c, h0 * w0)
        } else {
            native
        };
        if (h, w) == (h0, w0) {
            return Ok(converted);
        }
        Ok(transform::resize(&converted, c, [h0, w0], [h, w]))
    }

    /// Decodes the items at positions `range` into a normalized batch.
    pub fn batch(&self, range: Range<usize>) -> Result<Batch, DataError> {
        if range.start > range.end || range.end > self.len() {
            return Err(DataError::IndexOutOfRange {
                index: range.end.max(range.start),
                len: self.len(),
            });
        }
        let [c, h, w] = self.shape;
        self.normalization.validate(c)?;
        let tables = self.normalization.tables();
        let n = range.len();
        let plane = h * w;
        let mut images = Vec::with_capacity(n * c * plane);
        for i in range.clone() {
            let pixels = self.raw_u8(i)?;
            for (ch, table) in pixels.chunks_exact(plane).zip(&tables) {
                images.extend(ch.iter().map(|&p| table[usize::from(p)]));
            }
        }
        Ok(Batch {
            images,
            labels: range.map(|i| self.label(i)).collect(),
            shape: [n, c, h, w],
        })
    }

    /// Streams the view as consecutive batches of `batch_size` items (the last one may be
    /// smaller), decoding one batch at a time. A `batch_size` of 0 yields one error. A batch
    /// that fails to decode is yielded as an error and iteration goes on with the next one.
    pub fn batches(&self, batch_size: usize) -> Batches<'_> {
        Batches {
            dataset: self,
            batch_size,
            next: 0,
            failed: false,
        }
    }
}

/// Iterator over the batches of a [`Dataset`]; see [`Dataset::batches`].
#[derive(Debug)]
pub struct Batches<'a> {
    dataset: &'a Dataset,
    batch_size: usize,
    next: usize,
    failed: bool,
}

impl Iterator for Batches<'_> {
    type Item = Result<Batch, DataError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.next >= self.dataset.len() {
            return None;
        }
        if self.batch_size == 0 {
            self.failed = true;
            return Some(Err(DataError::InvalidArgument(
                "batch size 0, expected at least 1".to_string(),
            )));
        }
        let end = (self.next + self.batch_size).min(self.dataset.len());
        let batch = self.dataset.batch(self.next..end);
        // After a decoding error the iterator goes on with the next batch: the caller decides
        // whether to stop (collecting into a `Result` stops at the first error).
        self.next = end;
        Some(batch)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.dataset.len().saturating_sub(self.next);
        let n = match (self.failed, self.batch_size) {
            (true, _) => 0,
            (false, 0) => usize::from(left > 0),
            (false, b) => left.div_ceil(b),
        };
        (n, Some(n))
    }
}

impl ExactSizeIterator for Batches<'_> {}

impl std::iter::FusedIterator for Batches<'_> {}
