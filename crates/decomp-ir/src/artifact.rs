//! The on-disk envelope shared by every artifact: magic, format version, kind, payload
//! length and SHA-256, then the bincode payload.
//!
//! ```text
//! offset  size  field
//! 0       8     magic "DECOMPIR"
//! 8       2     format version (u16 LE)
//! 10      2     artifact kind (u16 LE)
//! 12      8     payload length in bytes (u64 LE)
//! 20      32    SHA-256 of the payload
//! 52      n     payload: bincode 2 (standard config) of the serde value
//! ```
//!
//! Writes go through [`crate::output::write_atomic`]: a synced temporary file in the
//! destination folder renamed over the destination (regular files only, symlinks followed),
//! so a reader never sees a partial artifact.

use std::io::Read;
use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use crate::error::IrError;
pub use crate::kind::ArtifactKind;

/// First bytes of every artifact.
pub const MAGIC: &[u8; 8] = b"DECOMPIR";
/// Format version written by this build. Version 2: channel modules record
/// `ChannelConfig::relu_passes`; version 3: channel modules record module training
/// (`ChannelConfig::train`, `ChannelModule::training`); version 4: module training's
/// learning-rate warmup (`ModuleTrainConfig::warmup`); version 5: the method's configuration
/// records `DecompConfig::min_active_fraction` (older payloads read it as 0); version 6: module
/// training's hold-out checks (`ModuleTrainConfig::checks`, `ModuleTraining::checks`,
/// `kept_step`, `steps`; older payloads read as trained without checks, keeping the end).
/// Channel-module payloads older than version 4 are not read; models' payloads are unchanged
/// from version 1.
pub const FORMAT_VERSION: u16 = 6;
/// Oldest format version this build reads.
pub const MIN_FORMAT_VERSION: u16 = 1;
/// Header size in bytes.
pub const HEADER_LEN: usize = 52;
/// Default largest artifact [`read_artifact`] accepts: 2 GiB.
pub const DEFAULT_SIZE_LIMIT: u64 = 2 << 30;
/// Hard ceiling bincode enforces while decoding (bytes claimed by containers).
const DECODE_LIMIT: usize = 4 << 30;

/// A value that can be stored as an artifact file.
pub trait Artifact: Serialize + DeserializeOwned {
    const KIND: ArtifactKind;
    /// Oldest format version whose payload of this kind this build decodes.
    const MIN_VERSION: u16 = MIN_FORMAT_VERSION;
    /// Checks invariants after decoding; the default accepts everything.
    fn validate(&self) -> Result<(), String> {
        Ok(())
    }
}

thread_local! {
    static DECODING: std::cell::Cell<u16> = const { std::cell::Cell::new(FORMAT_VERSION) };
}

/// The format version of the artifact this thread is decoding ([`FORMAT_VERSION`] outside
/// [`decode_artifact`]): payload types whose fields changed decode older layouts by it.
pub fn decoding_version() -> u16 {
    DECODING.with(std::cell::Cell::get)
}

/// Sets [`decoding_version`] until dropped.
struct DecodingVersion(u16);

impl DecodingVersion {
    fn set(version: u16) -> Self {
        Self(DECODING.with(|d| d.replace(version)))
    }
}

impl Drop for DecodingVersion {
    fn drop(&mut self) {
        DECODING.with(|d| d.set(self.0));
    }
}

fn bincode_config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<DECODE_LIMIT>()
}

/// Serializes `value` with its header. Returns the bytes and the payload's SHA-256.
pub fn encode_artifact<T: Artifact>(value: &T) -> Result<(Vec<u8>, [u8; 32]), String> {
    let payload =
        bincode::serde::encode_to_vec(value, bincode_config()).map_err(|e| e.to_string())?;
    let hash: [u8; 32] = Sha256::digest(&payload).into();
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(T::KIND as u16).to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&hash);
    out.extend_from_slice(&payload);
    Ok((out, hash))
}

/// Parses artifact bytes; `origin` only names the source in errors.
pub fn decode_artifact<T: Artifact>(bytes: &[u8], origin: &Path) -> Result<T, IrError> {
    let corrupt = |msg: String| IrError::Corrupt {
        path: origin.to_path_buf(),
        msg,
    };
    if bytes.len() < HEADER_LEN {
        if !bytes.starts_with(&MAGIC[..bytes.len().min(8)]) || bytes.len() < 8 {
            return Err(IrError::BadMagic {
                path: origin.to_path_buf(),
                expected: "DECOMPIR",
            });
        }
        return Err(corrupt(format!(
            "truncated header: {} bytes, expected at least {HEADER_LEN}",
            bytes.len()
        )));
    }
    if &bytes[..8] != MAGIC {
        return Err(IrError::BadMagic {
            path: origin.to_path_buf(),
            expected: "DECOMPIR",
        });
    }
    let version = u16::from_le_bytes([bytes[8], bytes[9]]);
    if !(MIN_FORMAT_VERSION..=FORMAT_VERSION).contains(&version) {
        return Err(IrError::Version {
            path: origin.to_path_buf(),
            found: version,
            min: MIN_FORMAT_VERSION,
            max: FORMAT_VERSION,
        });
    }
    let kind = u16::from_le_bytes([bytes[10], bytes[11]]);
    if kind != T::KIND as u16 {
        return Err(IrError::WrongKind {
            path: origin.to_path_buf(),
            found: ArtifactKind::from_u16(kind)
                .map_or_else(|| format!("unknown ({kind})"), |k| k.to_string()),
            expected: T::KIND,
        });
    }
    if version < T::MIN_VERSION {
        return Err(IrError::Version {
            path: origin.to_path_buf(),
            found: version,
            min: T::MIN_VERSION,
            max: FORMAT_VERSION,
        });
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&bytes[12..20]);
    let len = u64::from_le_bytes(len);
    let payload = &bytes[HEADER_LEN..];
    if len != payload.len() as u64 {
        return Err(corrupt(format!(
            "header at offset 12 declares a {len}-byte payload, the file holds {} bytes after the {HEADER_LEN}-byte header",
            payload.len()
        )));
    }
    let hash: [u8; 32] = Sha256::digest(payload).into();
    if hash[..] != bytes[20..52] {
        return Err(corrupt(
            "payload SHA-256 does not match the header (offset 20): the file is damaged".into(),
        ));
    }
    let decoded = {
        let _version = DecodingVersion::set(version);
        bincode::serde::decode_from_slice(payload, bincode_config())
    };
    let (value, used): (T, usize) =
        decoded.map_err(|e| corrupt(format!("payload does not decode: {e}")))?;
    if used != payload.len() {
        return Err(corrupt(format!(
            "{} trailing bytes after the payload at offset {}",
            payload.len() - used,
            HEADER_LEN + used
        )));
    }
    value
        .validate()
        .map_err(|msg| corrupt(format!("invalid {}: {msg}", T::KIND)))?;
    Ok(value)
}

/// Writes `value` to `path` atomically (temp file + rename). Returns the payload SHA-256.
pub fn write_artifact<T: Artifact>(path: &Path, value: &T) -> Result<[u8; 32], IrError> {
    let (bytes, hash) = encode_artifact(value).map_err(|msg| IrError::Encode {
        path: path.to_path_buf(),
        msg,
    })?;
    write_atomic(path, &bytes)?;
    Ok(hash)
}

pub use crate::output::write_atomic;

/// Reads an artifact of at most [`DEFAULT_SIZE_LIMIT`] bytes.
pub fn read_artifact<T: Artifact>(path: &Path) -> Result<T, IrError> {
    read_artifact_limited(path, DEFAULT_SIZE_LIMIT)
}

/// Reads an artifact, refusing files larger than `limit` bytes before reading them.
pub fn read_artifact_limited<T: Artifact>(path: &Path, limit: u64) -> Result<T, IrError> {
    let io = |source| IrError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let size = file.metadata().map_err(io)?.len();
    if size > limit {
        return Err(IrError::TooLarge {
            path: path.to_path_buf(),
            size,
            limit,
        });
    }
    let mut bytes = Vec::with_capacity(size as usize);
    file.take(limit).read_to_end(&mut bytes).map_err(io)?;
    decode_artifact(&bytes, path)
}

/// Lowercase hex of a hash.
pub fn hex_hash(hash: &[u8; 32]) -> String {
    hex::encode(hash)
}

/// Up to the first `N` bytes of `path` (fewer when the file is shorter).
fn head<const N: usize>(path: &Path) -> Result<Vec<u8>, IrError> {
    let io = |source| IrError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut bytes = Vec::with_capacity(N);
    std::fs::File::open(path)
        .map_err(io)?
        .take(N as u64)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    Ok(bytes)
}

/// Whether `path` starts with the artifact magic: an artifact of any kind or version (or a
/// damaged one, which reading then describes), as opposed to some other file format.
pub fn has_magic(path: &Path) -> Result<bool, IrError> {
    Ok(head::<8>(path)?.as_slice() == MAGIC)
}

/// The kind recorded in an artifact file's header, read from its first 12 bytes alone;
/// `None` when the file is not an artifact (too short, other magic, unknown kind).
pub fn peek_kind(path: &Path) -> Result<Option<ArtifactKind>, IrError> {
    let head = head::<12>(path)?;
    if head.len() < 12 || &head[..8] != MAGIC {
        return Ok(None);
    }
    Ok(ArtifactKind::from_u16(u16::from_le_bytes([
        head[10], head[11],
    ])))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kind a header can name is peeked as itself (4 and 5 included); an unknown kind,
    /// a short file and another format are `None`, and only the magic makes an artifact.
    #[test]
    fn peek_kind_reads_every_kind() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = |name: &str, bytes: &[u8]| {
            let p = dir.path().join(name);
            std::fs::write(&p, bytes).expect("write");
            p
        };
        let header = |kind: u16| {
            let mut h = MAGIC.to_vec();
            h.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
            h.extend_from_slice(&kind.to_le_bytes());
            h
        };
        let kinds = [
            ArtifactKind::Model,
            ArtifactKind::Module,
            ArtifactKind::ConcernSet,
            ArtifactKind::Report,
            ArtifactKind::TrainCheckpoint,
            ArtifactKind::ChannelConcernSet,
            ArtifactKind::ChannelModule,
        ];
        for (i, kind) in kinds.into_iter().enumerate() {
            assert_eq!(kind as u16, i as u16 + 1);
            let p = file(&format!("k{i}"), &header(kind as u16));
            assert_eq!(peek_kind(&p).expect("peek"), Some(kind), "{kind}");
            assert!(has_magic(&p).expect("magic"));
        }
        let unknown = file("unknown", &header(99));
        assert_eq!(peek_kind(&unknown).expect("peek"), None);
        assert!(
            has_magic(&unknown).expect("magic"),
            "an unknown kind is still an artifact"
        );
        let short = file("short", &header(1)[..11]);
        assert_eq!(peek_kind(&short).expect("peek"), None);
        let pickle = file("model.th", b"\x80\x02PK not an artifact");
        assert_eq!(peek_kind(&pickle).expect("peek"), None);
        assert!(!has_magic(&pickle).expect("magic"));
        assert!(!has_magic(&file("empty", b"")).expect("magic"));
        assert!(
            peek_kind(&dir.path().join("missing")).is_err(),
            "a missing file is an error"
        );
    }
}
