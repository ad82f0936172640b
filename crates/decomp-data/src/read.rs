//! Bounded file reads: every file a dataset reads has a size limit, checked before memory is
//! allocated for it (`/dev/zero` or a runaway file is refused, not read until memory runs
//! out).

use std::io::Read;
use std::path::Path;

use crate::DataError;

/// Largest binary data file read whole (CIFAR-100's training file is 150 MB, a decompressed
/// Fashion-MNIST training file 47 MB): 2 GiB.
pub const MAX_DATA_FILE: u64 = 2 << 30;
/// Largest text file (class lists, annotations; Tiny ImageNet's `words.txt` is 2 MB): 64 MiB.
pub const MAX_TEXT_FILE: u64 = 64 << 20;
/// Largest image file (a 64x64 JPEG is a few kB): 64 MiB.
pub const MAX_IMAGE_FILE: u64 = 64 << 20;

/// Reads at most `limit` bytes of `path`; a longer file is an error naming it.
pub(crate) fn read_limited(path: &Path, limit: u64) -> Result<Vec<u8>, DataError> {
    let f = std::fs::File::open(path).map_err(|e| DataError::io("read", path, e))?;
    let hint = f.metadata().map(|m| m.len()).unwrap_or(0).min(limit);
    read_to_limit(f, path, limit, "read", hint as usize)
}

/// Everything `reader` yields (the bytes of `path`, read or decompressed: `action` names
/// which in errors), refused once it passes `limit` bytes.
pub(crate) fn read_to_limit(
    reader: impl Read,
    path: &Path,
    limit: u64,
    action: &'static str,
    capacity: usize,
) -> Result<Vec<u8>, DataError> {
    let mut bytes = Vec::with_capacity(capacity);
    reader
        .take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| DataError::io(action, path, e))?;
    if bytes.len() as u64 > limit {
        return Err(DataError::TooLarge {
            path: path.to_path_buf(),
            limit,
        });
    }
    Ok(bytes)
}

/// Reads a UTF-8 text file of at most [`MAX_TEXT_FILE`] bytes.
pub(crate) fn read_text(path: &Path) -> Result<String, DataError> {
    let bytes = read_limited(path, MAX_TEXT_FILE)?;
    String::from_utf8(bytes).map_err(|e| {
        DataError::io(
            "read",
            path,
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "not UTF-8 text (invalid byte at offset {})",
                    e.utf8_error().valid_up_to()
                ),
            ),
        )
    })
}
