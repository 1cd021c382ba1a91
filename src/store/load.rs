//! Reading one record file back, and setting aside the ones that cannot be trusted.
//!
//! Everything on disk is treated as possibly damaged or planted: the file is opened without
//! following symlinks, must be a regular file of bounded size, must carry a format version this
//! build understands and must hold the record of the pod its name says.

use std::fs::{self, OpenOptions};
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use nix::fcntl::OFlag;
use serde::Deserialize;

use super::{
    BAD_MARKER, FORMAT_VERSION, MAX_FILE_BYTES, OLDEST_FORMAT_VERSION, PodRecord, StoreError,
};

#[derive(Deserialize)]
struct FileVersion {
    version: u32,
}

#[derive(Deserialize)]
struct FileIn {
    record: PodRecord,
}

pub(super) fn read_record(path: &Path, uid: &str) -> Result<PodRecord, StoreError> {
    let file_path = || path.to_path_buf();
    let read_err = |source| StoreError::Read {
        file: file_path(),
        source,
    };
    // O_NOFOLLOW closes the race with the check below; O_NONBLOCK keeps a FIFO from hanging us.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags((OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK).bits())
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(nix::libc::ELOOP) {
                StoreError::Symlink { file: file_path() }
            } else {
                read_err(e)
            }
        })?;
    let meta = file.metadata().map_err(read_err)?;
    if !meta.is_file() {
        return Err(StoreError::NotAFile { file: file_path() });
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(StoreError::TooLarge {
            file: file_path(),
            size: meta.len(),
            max: MAX_FILE_BYTES,
        });
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.take(MAX_FILE_BYTES)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;

    decode_record(path, uid, &bytes)
}

/// Decodes the content of record file `file`, which by its name holds pod `uid`: the format
/// version must be one this build reads, and the record must be consistent and be that pod's.
/// Public so that the fuzz targets and the hostile-input tests reach exactly what `load_all`
/// runs on a file's bytes.
pub fn decode_record(file: &Path, uid: &str, bytes: &[u8]) -> Result<PodRecord, StoreError> {
    let file_path = || file.to_path_buf();
    let corrupt = |reason: String| StoreError::Corrupt {
        file: file_path(),
        reason,
    };
    let FileVersion { version } =
        serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
    if version > FORMAT_VERSION {
        return Err(StoreError::FutureVersion {
            file: file_path(),
            version,
            supported: FORMAT_VERSION,
        });
    }
    if version == 0 {
        return Err(corrupt("format version 0".to_owned()));
    }
    let FileIn { mut record } =
        serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
    if version == OLDEST_FORMAT_VERSION {
        record.rekey_by_interface();
    }
    if record.uid != uid {
        return Err(corrupt(format!("holds pod uid {:?}", record.uid)));
    }
    record.check().map_err(corrupt)?;
    Ok(record)
}

/// Renames a bad record file to `<file>.bad-<unix seconds>` (with `-<n>` if that name is taken).
pub(super) fn move_aside(path: &Path) -> Option<PathBuf> {
    let seconds = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let base = format!("{}{BAD_MARKER}{seconds}", path.display());
    (0..100)
        .map(|n| match n {
            0 => PathBuf::from(&base),
            n => PathBuf::from(format!("{base}-{n}")),
        })
        .find(|candidate| fs::symlink_metadata(candidate).is_err())
        .and_then(|target| fs::rename(path, &target).ok().map(|()| target))
}
