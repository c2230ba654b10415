//! Durable file writes: a file is the old one or the new one, whole, after
//! a crash; snapshot data leaves the page cache as it is flushed.

use std::fs::File;
use std::io::Write;
use std::path::Path;

use super::snapshot::SNAPSHOT_FLUSH_BYTES;
use super::{io, StoreError};
use crate::faults::{self, points};

/// Writes a file so that after a crash it is either the old one or the new
/// one, whole: temporary file, fsync, rename, fsync of the directory.
pub(crate) fn write_durably(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    write_parts_durably(path, &[bytes])
}

/// `write_durably` of the parts one after another, without joining them
/// (a snapshot's header and its body of hundreds of MiB).
pub(super) fn write_parts_durably(path: &Path, parts: &[&[u8]]) -> Result<(), StoreError> {
    let tmp = path.with_extension("tmp");
    let mut file = create_private(&tmp)?;
    // Flushed a slice at a time: a journal fsync behind one big dirty file
    // would wait for all of it, and every order waiting on that fsync too.
    for chunk in parts.iter().flat_map(|p| p.chunks(SNAPSHOT_FLUSH_BYTES)) {
        faults::io(points::SNAPSHOT_WRITE, || file.write_all(chunk)).map_err(|e| io(&tmp, e))?;
        flush_uncached(&file, &tmp)?;
    }
    faults::io(points::SNAPSHOT_FSYNC, || file.sync_all()).map_err(|e| io(&tmp, e))?;
    drop(file);
    publish(&tmp, path)
}

/// Creates (or empties) a file only the daemon's user may read.
pub(super) fn create_private(path: &Path) -> Result<File, StoreError> {
    faults::io(points::SNAPSHOT_OPEN, || crate::private_files::create(path))
        .map_err(|e| io(path, e))
}

/// Flushes what was written to `file` so far, then lets the page cache
/// drop it: a snapshot is read back only at the next start, and keeping
/// hundreds of MiB of it cached grew the cache (fresh pages, each zeroed
/// or faulted in on first use) while the daemon was answering orders.
pub(super) fn flush_uncached(file: &File, path: &Path) -> Result<(), StoreError> {
    faults::io(points::SNAPSHOT_FSYNC, || file.sync_data()).map_err(|e| io(path, e))?;
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: a hint about a file descriptor this function borrows; it
        // changes no memory of ours and no data of the file's.
        unsafe {
            libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED);
        }
    }
    Ok(())
}

/// Puts a whole, synced temporary file in place of `path`, durably.
pub(super) fn publish(tmp: &Path, path: &Path) -> Result<(), StoreError> {
    faults::io(points::SNAPSHOT_RENAME, || std::fs::rename(tmp, path)).map_err(|e| io(path, e))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    faults::io(points::SNAPSHOT_DIR_FSYNC, || {
        File::open(dir).and_then(|d| d.sync_all())
    })
    .map_err(|e| io(dir, e))
}

/// Makes what was renamed or created in `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    faults::io(points::SNAPSHOT_DIR_FSYNC, || {
        File::open(dir).and_then(|d| d.sync_all())
    })
    .map_err(|e| io(dir, e))
}

/// Maps a snapshot file: page-aligned, so the body (at a multiple of 16)
/// is aligned as rkyv's validated access needs, and nothing is copied to
/// the heap that the restored state does not keep.
pub(super) fn map_file(path: &Path) -> Result<memmap2::Mmap, StoreError> {
    let file = File::open(path).map_err(|e| io(path, e))?;
    // SAFETY: the data directory is this daemon's alone (its layout file
    // and journal say so); nothing truncates a snapshot while it is mapped,
    // since new ones are written to a temporary file and renamed over.
    unsafe { memmap2::Mmap::map(&file) }.map_err(|e| io(path, e))
}
