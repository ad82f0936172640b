//! The one error type of the crate.

use std::path::PathBuf;

/// Everything that can go wrong while locating, reading, decoding or downloading a dataset.
///
/// Every variant that concerns a file names its path and, where relevant, the record index and
/// byte offset, and states what was expected and what was found. Messages have no trailing
/// period; the binary prints the whole chain.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    /// An I/O error on a file or folder.
    #[error("cannot {action} {path}: {source}")]
    Io {
        /// What was being done ("read", "create", "rename .. to", ...).
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A dataset (or one split of it) is not where it was looked for.
    ///
    /// The message lists the files expected in the folder, the official download URL and the
    /// `--data-dir` / `DECOMP_DATA_DIR` options (and, from [`crate::locate`], how to download it).
    #[error("{dataset} {split} split not found in {folder}: missing {missing}\n{help}", missing = missing.join(", "))]
    DatasetMissing {
        /// The dataset name (as [`crate::DatasetKind`] displays it).
        dataset: String,
        /// The split that was asked for.
        split: String,
        /// The dataset folder that was searched.
        folder: PathBuf,
        /// What is missing, relative to `folder` (folders end in `/`, e.g. `train/ folder`).
        missing: Vec<String>,
        /// Which files are expected where, where to get them, and how to point the tools at them.
        help: String,
    },

    /// A single file that must exist does not.
    #[error("missing file {path}: expected {expected}")]
    MissingFile { path: PathBuf, expected: String },

    /// The file size is not a multiple of the fixed record size.
    #[error(
        "{path}: truncated record {record} at byte offset {offset}: expected {expected} bytes per record, found {found} bytes"
    )]
    TruncatedRecord {
        path: PathBuf,
        /// Index of the incomplete record.
        record: usize,
        /// Byte offset at which the incomplete record starts.
        offset: u64,
        /// The record size.
        expected: usize,
        /// The number of bytes left for the last record.
        found: usize,
    },

    /// A file whose size disagrees with its format or header.
    #[error("{path}: wrong file size: expected {expected}, found {found} bytes")]
    WrongFileSize {
        path: PathBuf,
        expected: String,
        found: u64,
    },

    /// A label byte outside `0..num_classes`.
    #[error(
        "{path}: record {record} at byte offset {offset}: label {label} out of range, expected a label below {num_classes}"
    )]
    LabelOutOfRange {
        path: PathBuf,
        record: usize,
        offset: u64,
        label: usize,
        num_classes: usize,
    },

    /// An IDX (MNIST-style) header that does not describe the expected data.
    #[error("{path}: bad IDX {field}: expected {expected}, found {found}")]
    BadIdx {
        path: PathBuf,
        field: &'static str,
        expected: String,
        found: String,
    },

    /// An image file that cannot be decoded.
    #[error("cannot decode image {path}: {source}")]
    Image {
        path: PathBuf,
        #[source]
        source: image::ImageError,
    },

    /// A decoded image whose size differs from the dataset's image size.
    #[error("{path}: image is {found_w}x{found_h}, expected {expected_w}x{expected_h}")]
    ImageSize {
        path: PathBuf,
        expected_w: usize,
        expected_h: usize,
        found_w: usize,
        found_h: usize,
    },

    /// A malformed line in a text file (annotations, class lists).
    #[error("{path}:{line}: expected {expected}, found {found:?}")]
    Parse {
        path: PathBuf,
        line: usize,
        expected: String,
        found: String,
    },

    /// A class-name file whose length disagrees with the labels.
    #[error("{path}: expected {expected} class names (one per line), found {found}")]
    ClassNames {
        path: PathBuf,
        expected: usize,
        found: usize,
    },

    /// A file longer than the limit for its kind (`crate::read`).
    #[error("{path}: larger than the limit of {limit} bytes for this kind of file")]
    TooLarge { path: PathBuf, limit: u64 },

    /// A position outside a dataset view.
    #[error("index {index} out of range for a dataset view of {len} items")]
    IndexOutOfRange { index: usize, len: usize },

    /// A class id outside `0..num_classes`, or given twice.
    #[error("class {class} {problem} (dataset has {num_classes} classes)")]
    BadClass {
        class: usize,
        num_classes: usize,
        problem: &'static str,
    },

    /// A transformation or argument that cannot apply.
    #[error("{0}")]
    InvalidArgument(String),

    /// An unknown dataset name.
    #[error("unknown dataset {name:?}, expected one of: {known}")]
    UnknownDataset { name: String, known: String },

    /// An unknown split name.
    #[error("unknown split {name:?}, expected train, test or val")]
    UnknownSplit { name: String },

    /// An HTTP request that failed.
    #[error("cannot download {url}: {message}")]
    Download { url: String, message: String },

    /// A downloaded file whose checksum differs from the published one.
    #[error("checksum mismatch for {url}: expected {expected}, found {found}")]
    Checksum {
        url: String,
        expected: String,
        found: String,
    },

    /// An archive that cannot be unpacked or lacks the expected files.
    #[error("cannot unpack {path}: {message}")]
    Archive { path: PathBuf, message: String },

    /// A missing dataset whose download failed: the one-line reason, then the two ways out.
    #[error("cannot get {dataset}: {cause}\n{fix}")]
    FetchFailed {
        dataset: String,
        /// What failed (DNS, connection, HTTP status, checksum, archive), one line.
        cause: String,
        /// How to fix it: network, or a local copy.
        fix: String,
    },

    /// A file that must be downloaded while downloads are off.
    #[error(
        "{what} is not in {dest} and downloads are off (--offline or DECOMP_OFFLINE): \
         run once without them, or copy the file there"
    )]
    Offline { what: String, dest: PathBuf },

    /// A pretrained-weights name that [`crate::fetch::pretrained`] does not know.
    #[error("unknown pretrained weights {name:?}, known: {known}")]
    UnknownWeights { name: String, known: String },
}

impl DataError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        DataError::Io {
            action,
            path: path.into(),
            source,
        }
    }
}
