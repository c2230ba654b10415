//! The journal: every state change as a record with an LSN, appended by one
//! writer thread in group commits (many records per fsync), and recovered
//! at start with a torn tail erased and corruption refused.
//!
//! Records are opaque here (a kind byte and a payload); what they hold and
//! how they are replayed is `engine::sequencer` and `store`.
//!
//! The trap the wiring had to design around: replay must reproduce state
//! from records alone, but a stock count that falls below `reserved` bumps
//! reservations, and the first cut could bump a *pending* hold whose
//! decision is journaled later (or never). Replayed, the count would bump
//! different orders and the later decision could reserve above on_hand. So
//! counts bump only journaled reservations, a journaled reserve grants only
//! what is free (bumping the rest), and shards apply journaled ops in LSN
//! order.

mod fault;
mod handle;
mod mark;
pub mod record;
pub mod record_v2;
mod recovery;
pub mod segment_header;
mod segments;
mod truncate;
mod upgrade;
mod writer;

use std::path::{Path, PathBuf};

pub use fault::Watcher;
pub use handle::{Done, Journal, JournalStats, Slot, MAX_RECORDS_PER_COMMIT, MAX_UNSYNCED_BYTES};
pub use mark::RecordMark;
pub use recovery::{
    read, recover, ReadSummary, RecordFormat, Recovered, RecoveredRecord, TornTail,
};
pub use segments::{
    check_free_space, free_bytes, remove_all_segments, remove_segments_through, scan_segment,
    DEFAULT_SEGMENT_BYTES, FREE_SEGMENTS_TO_START,
};
pub use truncate::{truncate_from, Truncated};
pub use upgrade::upgrade_segments;

/// Whether an append is acknowledged only after fsync.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// The default: a record is acknowledged after the fsync covering it.
    Fsync,
    /// For benchmarks: acknowledged after the write, before any fsync.
    None,
}

/// What can go wrong with the journal.
#[derive(Debug, Clone, thiserror::Error)]
pub enum JournalError {
    /// A file of the journal could not be read, written or synced.
    #[error("journal I/O on {path}: {message}")]
    Io { path: PathBuf, message: String },
    /// Too little free space to start writing.
    #[error("the file system of {path} has {} MiB free; the journal needs {} MiB (two segments of journal.segment_bytes) to run: free space there, or move the data directory, then start again", free_bytes >> 20, needed_bytes >> 20)]
    NoSpace {
        path: PathBuf,
        free_bytes: u64,
        needed_bytes: u64,
    },
    /// Damage that is not a torn tail: starting would lose or invent state.
    #[error("journal {path} is corrupt at byte {offset}: {reason}; refusing to start. {}", corrupt_remedy(path, *offset, *later_segments))]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
        /// Segments after this one (they would go too if it were cut).
        later_segments: usize,
    },
    /// A segment shorter than it was prepared: something other than the
    /// writer cut it, and records after the cut may have been answered.
    #[error("journal {path} is {length} bytes, shorter than the {prepared} it was prepared to: it was cut, and records that stood after byte {length} may have been answered; refusing to start. Restore the data directory from a backup; or, only if you know that nothing answered stood there, give the file back its length (zeros) with `truncate -s {prepared} {}` and start again", path.display())]
    Cut {
        path: PathBuf,
        length: u64,
        prepared: u64,
    },
    /// Records missing between two segments, or before the first.
    #[error("journal records {first_missing}..={last_missing} are missing: {what}; refusing to start. Restore the data directory from a backup (the journal segment that held them, {missing_segment}, is gone)")]
    Gap {
        first_missing: u64,
        last_missing: u64,
        /// Where the gap shows.
        what: String,
        /// The file name the first missing record's segment had.
        missing_segment: String,
    },
    /// The last segment is sealed: the writer went on to a segment that is
    /// gone, and every record in it with it.
    #[error("journal {path} ends in a seal: the writer went on to {missing_segment} (records from LSN {next_lsn} on), which is missing; refusing to start. Restore the data directory from a backup")]
    LastSegmentMissing {
        path: PathBuf,
        next_lsn: u64,
        missing_segment: String,
    },
    /// The writer thread stopped after an earlier error.
    #[error(
        "the journal writer has stopped after an earlier error; nothing more can be made durable"
    )]
    Stopped,
    /// A payload larger than a record may be.
    #[error("a record of {0} bytes exceeds MAX_RECORD_PAYLOAD_BYTES")]
    TooLarge(usize),
    /// A snapshot could not be written: the storage under the data
    /// directory failed, so the journal stops too (see [`Journal::fail`]).
    #[error("a snapshot could not be written: {0}")]
    Snapshot(String),
    /// A reader's visitor stopped the read early (see [`VisitError::Stopped`]).
    #[error("the reader stopped the read")]
    ReaderStopped,
    /// Replicated: this replica does not lead (or stopped leading before
    /// the record committed in its term), so nothing was decided here;
    /// `leader` is the one it knows of (0: none). Not a storage fault.
    #[error("not the leader (the leader is replica {leader})")]
    NotLeader { leader: u64 },
}

/// What a visitor of [`read`] answers instead of going on.
#[derive(Debug, Clone, thiserror::Error)]
pub enum VisitError {
    /// The reader has what it needs, or gave up for a reason it keeps itself.
    #[error("the reader stopped")]
    Stopped,
    /// The record's payload is not what its kind promises; the read reports
    /// it as corruption at that record.
    #[error("{0}")]
    BadPayload(String),
}

/// What an operator can do about a corrupt segment.
fn corrupt_remedy(path: &Path, offset: u64, later_segments: usize) -> String {
    let also = if later_segments > 0 {
        format!(" and remove the {later_segments} segment files after it in the same directory")
    } else {
        String::new()
    };
    format!(
        "Restore the data directory from a backup; or, only if you know that the records from byte {offset} on were never answered (a write the crash interrupted), zero them (a segment keeps its length) with `size=$(stat -c %s {path}); truncate -s {offset} {path}; truncate -s \"$size\" {path}`{also}, and start again",
        path = path.display()
    )
}

pub(crate) fn io_error(path: &Path, error: impl std::fmt::Display) -> JournalError {
    JournalError::Io {
        path: path.to_path_buf(),
        message: error.to_string(),
    }
}
