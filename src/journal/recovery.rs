//! Reading the journal back: recovery after a crash (a torn tail is erased,
//! anything else damaged refuses), and a read of every record for tools.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use std::os::unix::fs::FileExt;

use super::record::{self, End, Found};
use super::record_v2;
use super::segment_header::{self, SEGMENT_HEADER_BYTES};
use super::segments::{check_header, scan_segment, segment_path, segment_paths};
use super::{io_error, JournalError, VisitError};

/// A record read back at recovery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecoveredRecord {
    pub lsn: u64,
    pub kind: u8,
    pub payload: Vec<u8>,
}

/// A torn record erased from the end of the last segment at recovery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TornTail {
    pub path: PathBuf,
    pub offset: u64,
    pub bytes: u64,
}

#[derive(Clone, Debug, Default)]
pub struct Recovered {
    /// Records with an LSN above the one asked for, in LSN order.
    pub records: Vec<RecoveredRecord>,
    /// The LSN the next append gets.
    pub next_lsn: u64,
    pub torn_tail: Option<TornTail>,
    /// The LSN the first segment begins at (`None`: no segments): the
    /// oldest record the journal can still replay.
    pub first_lsn: Option<u64>,
    /// The LSN after the last record of the segments (the first segment's
    /// first LSN if they hold none): how far the journal reaches.
    pub end_lsn: u64,
}

/// Reads every segment in `dir`, returns the records after `after_lsn`, and
/// erases a torn tail at the end of the last segment (on disk, fsynced). Damage
/// anywhere else, or records missing between segments, is an error naming
/// the file and the offset or the LSNs.
pub fn recover(dir: &Path, after_lsn: u64) -> Result<Recovered, JournalError> {
    let segments = segment_paths(dir)?;
    let mut recovered = Recovered {
        next_lsn: after_lsn + 1,
        first_lsn: segments.first().map(|(first, _)| *first),
        ..Recovered::default()
    };
    let mut expected: Option<u64> = None;
    for (i, (first_lsn, path)) in segments.iter().enumerate() {
        let due = due_lsn(expected, *first_lsn, path)?;
        let bytes = std::fs::read(path).map_err(|e| io_error(path, e))?;
        let later_segments = segments.len() - i - 1;
        let prepared = check_header(&bytes, path, later_segments)?;
        let scan = scan_segment(&bytes, Some(due));
        for found in &scan.records {
            if found.lsn > after_lsn {
                recovered.records.push(RecoveredRecord {
                    lsn: found.lsn,
                    kind: found.kind,
                    payload: bytes[found.payload.clone()].to_vec(),
                });
            }
        }
        if let Some(offset) = torn_offset(path, scan.end, later_segments)? {
            let erased = erase_torn_tail(path, &bytes, offset, prepared)?;
            recovered.torn_tail = Some(TornTail {
                path: path.clone(),
                offset: offset as u64,
                bytes: erased,
            });
        }
        expected = Some(scan.records.last().map_or(due, |r| r.lsn + 1));
    }
    recovered.end_lsn = expected.unwrap_or(after_lsn + 1);
    recovered.next_lsn = recovered.next_lsn.max(recovered.end_lsn);
    Ok(recovered)
}

/// Erases a torn tail on disk (fsynced): zeros from `offset` to the last
/// byte written, and a file a write grew past its prepared size cut back
/// to that size (or to `offset`, if later). Zeroed, not cut: a segment
/// never becomes shorter than its header says, which is how a cut made
/// by anything else is told from this one. Returns the bytes erased.
fn erase_torn_tail(
    path: &Path,
    bytes: &[u8],
    offset: usize,
    prepared: u64,
) -> Result<u64, JournalError> {
    let written_end = bytes
        .iter()
        .rposition(|b| *b != 0)
        .map_or(offset, |last| last + 1)
        .max(offset);
    let keep = (prepared as usize).max(offset);
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| io_error(path, e))?;
    let zero_end = written_end.min(keep);
    if zero_end > offset {
        file.write_all_at(&vec![0u8; zero_end - offset], offset as u64)
            .map_err(|e| io_error(path, e))?;
    }
    if bytes.len() > keep {
        file.set_len(keep as u64).map_err(|e| io_error(path, e))?;
    }
    file.sync_all().map_err(|e| io_error(path, e))?;
    Ok((written_end - offset) as u64)
}

/// The LSN a segment's first record must carry: the one after the
/// previous segment's last, which the segment's name must also say.
fn due_lsn(expected: Option<u64>, named: u64, path: &Path) -> Result<u64, JournalError> {
    let Some(expected) = expected else {
        return Ok(named);
    };
    if named > expected {
        return Err(JournalError::Gap {
            first_missing: expected,
            last_missing: named - 1,
            what: format!(
                "the segment before {} ends at LSN {}, and it begins at {named}",
                path.display(),
                expected - 1
            ),
            missing_segment: segment_path(path.parent().unwrap_or(Path::new(".")), expected)
                .display()
                .to_string(),
        });
    }
    if named < expected {
        return Err(JournalError::Corrupt {
            path: path.to_path_buf(),
            offset: 0,
            reason: format!(
                "its name says it begins at LSN {named}, but the segment before it reaches LSN {}",
                expected - 1
            ),
            later_segments: 0,
        });
    }
    Ok(expected)
}

/// Where a segment whose scan ended so is torn (`None`: it is not);
/// an error for corruption, or for a torn record before the last segment.
fn torn_offset(
    path: &Path,
    end: End,
    later_segments: usize,
) -> Result<Option<usize>, JournalError> {
    let corrupt = |offset: usize, reason: String| JournalError::Corrupt {
        path: path.to_path_buf(),
        offset: offset as u64,
        reason,
        later_segments,
    };
    match end {
        End::Clean => Ok(None),
        End::Sealed { .. } if later_segments > 0 => Ok(None),
        End::Sealed { next_lsn } => Err(JournalError::LastSegmentMissing {
            path: path.to_path_buf(),
            next_lsn,
            missing_segment: segment_path(path.parent().unwrap_or(Path::new(".")), next_lsn)
                .display()
                .to_string(),
        }),
        End::Corrupt { offset, reason } => Err(corrupt(offset, reason)),
        End::Torn { offset } if later_segments > 0 => Err(corrupt(
            offset,
            "a record cut short in a segment that is not the last: the segments after it were written later".into(),
        )),
        End::Torn { offset } => Ok(Some(offset)),
    }
}

/// What [`read`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReadSummary {
    /// LSN of the first record (0: no records).
    pub first_lsn: u64,
    pub records: u64,
    /// A torn record ended the last segment (a write a crash interrupted).
    pub torn_tail: bool,
}

/// How the records of a journal's segments are laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordFormat {
    /// Format 3 on: a header with a checksum of its own (`record.rs`), in
    /// segments that begin with a header of their own
    /// (`segment_header.rs`).
    HeaderChecksum,
    /// Data directories of format 2 and older, not yet upgraded by a
    /// daemon's start (`record_v2.rs`). A segment that begins with a segment
    /// header is read in the new format: an upgrade a crash interrupted
    /// rewrote it already.
    BeforeHeaderChecksum,
}

/// Reads every record of the journal in `dir` (laid out as `format`), in
/// LSN order, without changing anything (a torn tail is reported, not
/// cut): for tools that read a data directory offline, such as `omniroute
/// replay`.
pub fn read(
    dir: &Path,
    format: RecordFormat,
    mut visit: impl FnMut(u64, u8, &[u8]) -> Result<(), VisitError>,
) -> Result<ReadSummary, JournalError> {
    let segments = segment_paths(dir)?;
    let mut summary = ReadSummary::default();
    let mut expected: Option<u64> = None;
    for (i, (first_lsn, path)) in segments.iter().enumerate() {
        let file = File::open(path).map_err(|e| io_error(path, e))?;
        // Mapped, not read: a segment is 64 MiB, and reading it into fresh
        // memory cost a replay more in page zeroing than in decoding.
        // SAFETY: the replay's data directory is not written while it runs
        // (it is offline by contract); a file changing under the map could
        // only give bytes the checksums then refuse.
        let bytes = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| io_error(path, e))?;
        let due = due_lsn(expected, *first_lsn, path)?;
        let mut last_lsn = None;
        // Streamed: each record is visited as soon as its checksum passes,
        // so a reader on another thread is not left waiting while a whole
        // segment is checked first.
        let mut on = |found: Found| {
            if summary.records == 0 {
                summary.first_lsn = found.lsn;
            }
            summary.records += 1;
            last_lsn = Some(found.lsn);
            visit(found.lsn, found.kind, &bytes[found.payload.clone()]).map_err(|e| match e {
                VisitError::Stopped => JournalError::ReaderStopped,
                VisitError::BadPayload(reason) => JournalError::Corrupt {
                    path: path.clone(),
                    offset: found.offset as u64,
                    reason,
                    later_segments: segments.len() - i - 1,
                },
            })
        };
        let old =
            format == RecordFormat::BeforeHeaderChecksum && !segment_header::has_magic(&bytes);
        let end = if old {
            record_v2::scan_each(&bytes, Some(due), &mut on)?
        } else {
            check_header(&bytes, path, segments.len() - i - 1)?;
            record::scan_each(&bytes, SEGMENT_HEADER_BYTES, Some(due), &mut on)?
        };
        if torn_offset(path, end, segments.len() - i - 1)?.is_some() {
            summary.torn_tail = true;
        }
        expected = Some(last_lsn.map_or(due, |lsn| lsn + 1));
    }
    Ok(summary)
}
