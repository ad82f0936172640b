//! Datasets in their official on-disk formats, streamed as normalized NCHW `f32` batches.
//!
//! * [`DatasetKind`] names a dataset (CIFAR-10, CIFAR-100 fine/coarse, Tiny ImageNet,
//!   Fashion-MNIST, MNIST) and knows its folder name, classes, image shape and published
//!   normalization; [`Split`] picks train or test (Tiny ImageNet's labelled `val`).
//! * [`Dataset`] is an immutable, cheaply cloned *view*: shared raw storage (the raw file
//!   bytes for CIFAR/IDX, the list of JPEG paths for Tiny ImageNet, or in-memory
//!   [`Dataset::synthetic`] images for tests), the list of items in the view and a label map.
//!   Views are narrowed and reordered without copying pixels ([`Dataset::subset_classes`],
//!   [`Dataset::select`], [`Dataset::shuffled`], [`Dataset::split_at_fraction`],
//!   [`Dataset::take`]) and decoded on demand ([`Dataset::batch`], the streaming
//!   [`Dataset::batches`] iterator of [`Batch`]es, [`Dataset::raw_u8`]), after the optional
//!   [`Dataset::with_resize`] / [`Dataset::with_channels`] transforms and the
//!   [`Normalization`] `x = (pixel / 255 - mean) / std`.
//! * [`Augmentation`] applies the training augmentations (pad + random crop, shift, flip)
//!   to a decoded batch, drawing from a caller-seeded generator.
//! * [`fetch`] downloads official archives and pretrained weights with checksum verification
//!   and atomic placement.
//! * [`locate`] is the one data-folder resolution (`--data-dir`, `$DECOMP_DATA_DIR`,
//!   `../shared/datasets`, the user cache) and fetches a missing dataset once, under a lock;
//!   [`subset`] builds the documented Tiny ImageNet subset the experiments use.
//! * [`DataError`] is the one error type; it names the file, record and byte offset at fault.
//!
//! The crate knows nothing of tensors: the model crate turns a [`Batch`] into one.
//!
//! Memory: a loaded dataset holds at most its raw files (CIFAR, IDX) or paths (Tiny
//! ImageNet); only one batch is decoded at a time. Nothing panics on malformed data.
//!
//! ```
//! use decomp_data::Dataset;
//!
//! let data = Dataset::synthetic(3, 4, [3, 8, 8], 7);
//! let (train, val) = data.split_at_fraction(0.25, 0);
//! assert_eq!((train.len(), val.len()), (9, 3));
//! for batch in train.shuffled(1).batches(4) {
//!     let batch = batch?;
//!     assert_eq!(batch.images.len(), batch.shape.iter().product::<usize>());
//! }
//! # Ok::<(), decomp_data::DataError>(())
//! ```

pub mod augment;
mod cifar;
mod dataset;
mod error;
pub mod fetch;
mod idx;
mod kind;
pub mod locate;
pub mod read;
mod source;
pub mod subset;
mod synthetic;
mod tiny;
mod transform;

pub use augment::Augmentation;
pub use cifar::{CIFAR10_CLASSES, CIFAR100_COARSE_CLASSES, CIFAR100_FINE_CLASSES};
pub use dataset::{Batch, Batches, Dataset, MAX_IMAGE_SIDE};
pub use error::DataError;
pub use idx::{FASHION_MNIST_CLASSES, IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC, MNIST_CLASSES};
pub use kind::{DATA_DIR_ENV, DEBIAN_FASHION_MNIST_DIR, DatasetKind, Normalization, Split};
pub use locate::{DataRoot, DatasetFolder};

/// The name a class gets when its dataset names none (a single file of records without a
/// class-name file beside it): `class_<i>`. Comparisons of class names skip such names.
pub fn placeholder_class_name(i: usize) -> String {
    format!("class_{i}")
}

#[cfg(test)]
mod tests {
    /// Views are shared across threads (data-loading workers, evaluation in parallel).
    #[test]
    fn public_types_are_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<crate::Dataset>();
        check::<crate::Batch>();
        check::<crate::DataError>();
        check::<crate::Normalization>();
    }
}
