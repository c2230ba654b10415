//! Journal segment files: naming and listing them, a spare next segment
//! prepared ahead (so a rollover never waits on allocation), and deleting
//! the segments a snapshot has passed.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::fault::Fault;
use super::record::{self};
use super::segment_header::{self, HeaderFault, SEGMENT_HEADER_BYTES};
use super::{io_error, JournalError};
use crate::faults::{self, points};

/// A segment is closed and a new one begun past this size.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 << 20;
pub(super) const SEGMENT_SUFFIX: &str = ".wal";
/// The next segment, zero-filled and fsynced ahead of need by the spare
/// thread, renamed into place at rotation. Appending into blocks that are
/// already written keeps the file's size and block map unchanged, so each
/// commit's fdatasync writes the data alone (no inode), and a rotation no
/// longer stalls the writer on creating and extending a file.
pub(super) const SPARE_NAME: &str = "next-segment.spare";
/// The temporary name of a segment made on the spot (see [`plain_segment`]).
pub(super) const PLAIN_NAME: &str = "next-segment.plain";
/// Zeros written per call while preparing a spare, and how often it is
/// synced on the way. Small, so that a commit's fdatasync never queues
/// behind much of the spare's writeback: on this project's test machine,
/// fdatasync of a small commit took 2.0 ms at the median (6.8 ms p99) while
/// a spare was zeroed with a sync every 8 MiB, 0.23 ms (0.43 ms p99) with
/// one every 256 KiB, as with no spare at all (0.21 ms), and the zeros
/// still went at 1.3 GB/s. Three replicas rotating on one disk made
/// seconds with a p99 of 20 to 50 ms out of the 8 MiB bursts.
pub(super) const SPARE_CHUNK_BYTES: usize = 256 << 10;
pub(super) const SPARE_SYNC_EVERY_BYTES: u64 = SPARE_CHUNK_BYTES as u64;

pub(super) fn segment_paths(dir: &Path) -> Result<Vec<(u64, PathBuf)>, JournalError> {
    let mut segments = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(segments),
        Err(e) => return Err(io_error(dir, e)),
    };
    for entry in entries {
        let path = entry.map_err(|e| io_error(dir, e))?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if let Some(first) = name
            .strip_suffix(SEGMENT_SUFFIX)
            .and_then(|n| n.parse::<u64>().ok())
        {
            segments.push((first, path));
        }
    }
    segments.sort();
    Ok(segments)
}

pub(super) fn segment_path(dir: &Path, first_lsn: u64) -> PathBuf {
    dir.join(format!("{first_lsn:020}{SEGMENT_SUFFIX}"))
}

/// Deletes the segments whose every record has an LSN at or below `lsn`
/// (every actor's snapshot has passed them). The last segment always stays:
/// the writer appends to it. Returns the segments deleted.
pub fn remove_segments_through(dir: &Path, lsn: u64) -> Result<usize, JournalError> {
    let segments = segment_paths(dir)?;
    let mut removed = 0;
    for pair in segments.windows(2) {
        let (_, path) = &pair[0];
        let (next_first, _) = pair[1];
        if next_first <= lsn + 1 {
            std::fs::remove_file(path).map_err(|e| io_error(path, e))?;
            removed += 1;
        }
    }
    if removed > 0 {
        sync_dir(dir)?;
    }
    Ok(removed)
}

/// Deletes every segment (the last first, so a crash part way leaves the
/// first ones, in order), durably. Returns how many.
pub fn remove_all_segments(dir: &Path) -> Result<usize, JournalError> {
    let segments = segment_paths(dir)?;
    for (_, path) in segments.iter().rev() {
        match faults::io(points::JOURNAL_WRITE, || std::fs::remove_file(path)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io_error(path, e)),
            _ => {}
        }
    }
    if !segments.is_empty() {
        sync_dir(dir)?;
    }
    Ok(segments.len())
}

/// Work for the spare thread.
pub(super) enum SpareJob {
    /// Zero-fill and fsync the next segment.
    Prepare,
    /// Sync a segment the writer has left (off the writer's path; with
    /// `fsync` its data is already durable, with `none` nothing waits on it).
    Retire(File, PathBuf),
}

pub(super) fn prepare_spare(
    dir: &Path,
    segment_bytes: u64,
) -> Result<(File, PathBuf), JournalError> {
    let path = dir.join(SPARE_NAME);
    let file = create_segment_file(&path, segment_bytes)?;
    let zeros = vec![0u8; SPARE_CHUNK_BYTES];
    let mut written = SEGMENT_HEADER_BYTES as u64;
    while written < segment_bytes {
        // Up to the next chunk boundary: the header took the first bytes.
        let chunk_end = (written / SPARE_CHUNK_BYTES as u64 + 1) * SPARE_CHUNK_BYTES as u64;
        let n = (chunk_end.min(segment_bytes) - written) as usize;
        faults::io(points::JOURNAL_ALLOCATE, || {
            file.write_all_at(&zeros[..n], written)
        })
        .map_err(|e| io_error(&path, e))?;
        written += n as u64;
        if written.is_multiple_of(SPARE_SYNC_EVERY_BYTES) {
            faults::io(points::JOURNAL_FSYNC, || file.sync_data())
                .map_err(|e| io_error(&path, e))?;
        }
    }
    faults::io(points::JOURNAL_FSYNC, || file.sync_all()).map_err(|e| io_error(&path, e))?;
    Ok((file, path))
}

/// A segment made on the spot, when no prepared spare is ready (a new
/// directory's first, or a burst that outran the spare thread): its
/// header and its full length set at once, the length without writing
/// the zeros (a sparse file reads as zeros; its first writes cost block
/// allocations, which is why it is left as soon as a spare is ready).
/// Made under a temporary name and renamed into place by the caller, so
/// that a crash never leaves a segment without its header.
pub(super) fn plain_segment(
    dir: &Path,
    segment_bytes: u64,
) -> Result<(File, PathBuf), JournalError> {
    let path = dir.join(PLAIN_NAME);
    let file = create_segment_file(&path, segment_bytes)?;
    faults::io(points::JOURNAL_ALLOCATE, || file.set_len(segment_bytes))
        .map_err(|e| io_error(&path, e))?;
    faults::io(points::JOURNAL_FSYNC, || file.sync_all()).map_err(|e| io_error(&path, e))?;
    Ok((file, path))
}

/// Creates (or empties) the file at `path` and writes a segment header
/// saying it is `segment_bytes` long.
fn create_segment_file(path: &Path, segment_bytes: u64) -> Result<File, JournalError> {
    let file = faults::io(points::JOURNAL_OPEN, || {
        crate::private_files::options()
            .create(true)
            .read(true)
            .write(true)
            .truncate(true)
            .open(path)
    })
    .map_err(|e| io_error(path, e))?;
    let header = segment_header::encode(segment_bytes);
    faults::io(points::JOURNAL_WRITE, || file.write_all_at(&header, 0))
        .map_err(|e| io_error(path, e))?;
    Ok(file)
}

/// The size a segment is prepared to: `segment_bytes`, and room for its
/// header and a record at the least.
pub(super) fn prepared_bytes(segment_bytes: u64) -> u64 {
    segment_bytes.max((SEGMENT_HEADER_BYTES + record::RECORD_HEADER_BYTES) as u64)
}

/// The records of a segment's bytes, after its header (not checked here:
/// see [`segment_header::check`]); for tools and tests that look inside.
pub fn scan_segment(bytes: &[u8], expected_lsn: Option<u64>) -> record::Scan {
    record::scan_from(bytes, SEGMENT_HEADER_BYTES, expected_lsn)
}

/// The size a segment's header says it was prepared to, or the damage
/// that refuses it (a bad header, or a file shorter than that).
pub(super) fn check_header(
    bytes: &[u8],
    path: &Path,
    later_segments: usize,
) -> Result<u64, JournalError> {
    segment_header::check(bytes).map_err(|fault| match fault {
        HeaderFault::Damaged(reason) => JournalError::Corrupt {
            path: path.to_path_buf(),
            offset: 0,
            reason,
            later_segments,
        },
        HeaderFault::Cut { length, prepared } => JournalError::Cut {
            path: path.to_path_buf(),
            length,
            prepared,
        },
    })
}

/// The spare thread. A spare that cannot be prepared (the disk is full,
/// no descriptor is left) raises the fault: the journal stops while every
/// answered record is on disk, not at the first commit that finds no room.
/// A retired segment that cannot be synced may have lost records written
/// without their own fsync: that raises it too.
pub(super) fn run_spares(
    dir: PathBuf,
    segment_bytes: u64,
    jobs: crossbeam_channel::Receiver<SpareJob>,
    ready: crossbeam_channel::Sender<(File, PathBuf)>,
    fault: Arc<Fault>,
) {
    for job in jobs {
        match job {
            SpareJob::Prepare => match prepare_spare(&dir, segment_bytes) {
                Ok(spare) => {
                    if ready.send(spare).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    fault.raise(e);
                    return;
                }
            },
            SpareJob::Retire(file, path) => {
                if let Err(e) = faults::io(points::JOURNAL_FSYNC, || file.sync_all()) {
                    fault.raise(io_error(&path, e));
                    return;
                }
            }
        }
    }
}

/// Opens the last segment (or makes the first) at the end of its records:
/// a prepared segment is longer than what was written into it. Returns
/// the file, its path, where its records end, and whether it has room
/// prepared past them.
pub(super) fn open_segment(
    dir: &Path,
    first_lsn: u64,
    segment_bytes: u64,
) -> Result<(File, PathBuf, u64, bool), JournalError> {
    let path = match segment_paths(dir)?.last() {
        Some((_, last)) => last.clone(),
        None => {
            let (file, plain) = plain_segment(dir, segment_bytes)?;
            let path = segment_path(dir, first_lsn);
            faults::io(points::JOURNAL_RENAME, || std::fs::rename(&plain, &path))
                .map_err(|e| io_error(&path, e))?;
            sync_dir(dir)?;
            return Ok((file, path, SEGMENT_HEADER_BYTES as u64, false));
        }
    };
    let file = faults::io(points::JOURNAL_OPEN, || {
        crate::private_files::options()
            .read(true)
            .write(true)
            .open(&path)
    })
    .map_err(|e| io_error(&path, e))?;
    let bytes = std::fs::read(&path).map_err(|e| io_error(&path, e))?;
    check_header(&bytes, &path, 0)?;
    let size = scan_segment(&bytes, None)
        .records
        .last()
        .map_or(SEGMENT_HEADER_BYTES, |r| r.payload.end) as u64;
    sync_dir(dir)?;
    Ok((file, path, size, bytes.len() as u64 > size))
}

/// Segments of room the journal needs free to start: the one it writes
/// and the spare prepared behind it.
pub const FREE_SEGMENTS_TO_START: u64 = 2;

/// Refuses to start a journal on a file system without room for
/// [`FREE_SEGMENTS_TO_START`] segments: a daemon restarted on a disk that
/// is still full says so at once instead of failing at its first rotation.
/// The spare already on disk counts as room.
pub fn check_free_space(dir: &Path, segment_bytes: u64) -> Result<(), JournalError> {
    let Some(free) = free_bytes(dir) else {
        return Ok(());
    };
    let spare = std::fs::metadata(dir.join(SPARE_NAME)).map_or(0, |m| m.len());
    let needed = FREE_SEGMENTS_TO_START * segment_bytes;
    if free + spare >= needed {
        return Ok(());
    }
    Err(JournalError::NoSpace {
        path: dir.to_path_buf(),
        free_bytes: free + spare,
        needed_bytes: needed,
    })
}

/// Bytes an unprivileged writer may still use on the file system that
/// holds `dir`, or will hold it (its nearest existing ancestor's).
pub fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let existing = dir.ancestors().find(|a| a.exists())?;
    let path = std::ffi::CString::new(existing.as_os_str().as_bytes()).ok()?;
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a NUL-terminated string that outlives the call, and
    // `stat` is a properly sized, writable statvfs the call fills in.
    let failed = unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0;
    (!failed).then(|| stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// A new file's name is durable only once its directory is fsynced.
pub(super) fn sync_dir(dir: &Path) -> Result<(), JournalError> {
    open_dir(dir)?;
    Ok(())
}

/// Opens the journal directory and fsyncs it; the open file is kept by
/// the writer for the fsyncs of its rotations.
pub(super) fn open_dir(dir: &Path) -> Result<File, JournalError> {
    let file =
        faults::io(points::JOURNAL_OPEN, || File::open(dir)).map_err(|e| io_error(dir, e))?;
    faults::io(points::JOURNAL_DIR_FSYNC, || file.sync_all()).map_err(|e| io_error(dir, e))?;
    Ok(file)
}
