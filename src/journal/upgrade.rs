//! Rewrites the segments of a journal written before format 3 (records
//! without a header checksum, `record_v2.rs`) in the current record
//! format, once, when a directory of that format is opened.
//!
//! Crash-safe and idempotent: each segment is read by the old format's
//! rules (a torn tail of the last segment is cut, as that format's recovery
//! did; damage elsewhere refuses), its records are encoded anew into a
//! temporary file beside it, which is fsynced, renamed over the segment,
//! and the directory fsynced. A crash leaves each segment old or new,
//! never half, and the version in `names.toml` is bumped only after every
//! segment is new. Which a segment is shows in its first bytes: a new one
//! begins with a segment header (`segment_header.rs`), an old one with a
//! record or zeros. A new segment is exactly as long as its header and
//! records: the header says so, and a cut is found like any other.

use std::fs::File;
use std::io::Write;
use std::path::Path;

use super::record::{self, End};
use super::record_v2;
use super::segment_header::{self, SEGMENT_HEADER_BYTES};
use super::segments::{segment_paths, sync_dir};
use super::{io_error, JournalError};

/// The temporary file a segment is rewritten into.
const UPGRADE_SUFFIX: &str = ".upgrade-tmp";

/// Rewrites every old-format segment in `dir`; returns how many were.
pub fn upgrade_segments(dir: &Path) -> Result<usize, JournalError> {
    let segments = segment_paths(dir)?;
    let mut rewritten = 0;
    for (i, (_, path)) in segments.iter().enumerate() {
        let bytes = std::fs::read(path).map_err(|e| io_error(path, e))?;
        if segment_header::has_magic(&bytes) {
            continue;
        }
        let old = record_v2::scan(&bytes, None);
        let later_segments = segments.len() - i - 1;
        let corrupt = |offset: usize, reason: String| JournalError::Corrupt {
            path: path.clone(),
            offset: offset as u64,
            reason: format!("{reason} (read as a format-2 segment, to upgrade it)"),
            later_segments,
        };
        match old.end {
            End::Clean | End::Sealed { .. } => {}
            End::Torn { .. } if later_segments == 0 => {}
            End::Torn { offset } => {
                return Err(corrupt(
                    offset,
                    "a record cut short before the last segment".into(),
                ))
            }
            End::Corrupt { offset, reason } => return Err(corrupt(offset, reason)),
        }
        let records_bytes: usize = old
            .records
            .iter()
            .map(|r| record::RECORD_HEADER_BYTES + r.payload.len())
            .sum();
        let length = SEGMENT_HEADER_BYTES + records_bytes;
        let mut out = Vec::with_capacity(length);
        out.extend_from_slice(&segment_header::encode(length as u64));
        for found in &old.records {
            record::encode(
                found.kind,
                found.lsn,
                &bytes[found.payload.clone()],
                &mut out,
            );
        }
        replace_durably(path, &out)?;
        rewritten += 1;
    }
    if rewritten > 0 {
        sync_dir(dir)?;
    }
    Ok(rewritten)
}

/// Puts `bytes` in place of the file at `path` in one step: written to a
/// temporary file, fsynced, renamed over it.
fn replace_durably(path: &Path, bytes: &[u8]) -> Result<(), JournalError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(UPGRADE_SUFFIX);
    let tmp = std::path::PathBuf::from(tmp);
    let mut file = File::create(&tmp).map_err(|e| io_error(&tmp, e))?;
    file.write_all(bytes).map_err(|e| io_error(&tmp, e))?;
    file.sync_all().map_err(|e| io_error(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| io_error(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::recover;
    use crate::journal::segments::segment_path;

    #[test]
    fn old_segments_are_rewritten_once_and_read_whole() {
        // Proves a journal of format-2 segments (the last with a torn tail and
        // the zeros of a prepared segment) is rewritten in the new format with
        // every record, that a second run changes nothing, and that recovery
        // then reads every record.
        let dir = std::env::temp_dir().join(format!("omniroute-upgrade-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut first = Vec::new();
        for lsn in 1..=40 {
            record_v2::encode(1, lsn, format!("order {lsn}").as_bytes(), &mut first);
        }
        let mut last = Vec::new();
        for lsn in 41..=60 {
            record_v2::encode(1, lsn, format!("order {lsn}").as_bytes(), &mut last);
        }
        let torn_from = last.len();
        record_v2::encode(1, 61, b"never answered", &mut last);
        last.truncate(torn_from + 10);
        last.resize(last.len() + 4096, 0);
        std::fs::write(segment_path(&dir, 1), &first).unwrap();
        std::fs::write(segment_path(&dir, 41), &last).unwrap();
        assert!(
            recover(&dir, 0).is_err(),
            "the new format reads the old as damage"
        );
        assert_eq!(upgrade_segments(&dir).unwrap(), 2);
        let converted = std::fs::read(segment_path(&dir, 41)).unwrap();
        assert_eq!(upgrade_segments(&dir).unwrap(), 0, "already upgraded");
        assert_eq!(std::fs::read(segment_path(&dir, 41)).unwrap(), converted);
        let recovered = recover(&dir, 0).unwrap();
        let lsns: Vec<u64> = recovered.records.iter().map(|r| r.lsn).collect();
        assert_eq!(lsns, (1..=60).collect::<Vec<_>>());
        assert_eq!(recovered.records[59].payload, b"order 60");
        assert!(recovered.torn_tail.is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
