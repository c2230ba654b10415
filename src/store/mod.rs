//! The data directory: the journal, one snapshot per actor, and the layout
//! they were written under. Opening it is recovery: load each snapshot,
//! replay the journal after each one's LSN, and hand back the engine state.
//!
//! ```text
//! DIR/lock                      the single writer's lock (see [`lock`])
//! DIR/names.toml                format version, ids of channels, markets, nodes
//! DIR/journal/{lsn:020}.wal     journal segments
//! DIR/snapshots -> snapshots-N  the snapshot set in use (see [`layout`])
//! DIR/snapshots-N/layout.toml   the shards and routers the set was written for
//! DIR/snapshots-N/{actor}.snap  magic | lsn | body length | crc32c | rkyv body
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::core::error::RestoreError;
use crate::core::model::{NodeIdx, OrderId, SkuId};
use crate::core::network::Network;
use crate::core::stock::Bumped;
use crate::engine::sequencer::Sequencer;
use crate::engine::{EngineError, EngineState};
use crate::journal::{self, Durability, JournalError, TornTail};

pub(crate) mod apply;
pub mod layout;
pub mod lock;
pub use lock::{Access, DirLock, LockError};

/// How the data directory is written, from `[journal]` in the config.
#[derive(Clone, Debug, PartialEq)]
pub struct StoreSettings {
    pub durability: Durability,
    pub segment_bytes: u64,
    /// Snapshot at least this often (0: only at shutdown).
    pub snapshot_interval_ms: u64,
    /// Snapshot after this many journal records (0: no record trigger).
    pub snapshot_every_records: u64,
    /// Keep journal segments after a snapshot has passed them, so that
    /// `omniroute replay` can re-run the whole history.
    pub keep_segments: bool,
    /// After a storage fault, how long the daemon keeps answering
    /// `Unavailable` and 503 before it stops: long enough for a load
    /// balancer's health check and the clients to see why.
    pub fault_linger_ms: u64,
}

/// The default of `[journal] fault_linger_ms`: a second, about one health
/// check of a typical load balancer; a supervisor restarts the daemon
/// right after.
pub const DEFAULT_FAULT_LINGER_MS: u64 = 1_000;

/// The longest `[journal] fault_linger_ms`: a daemon that cannot write
/// should not look alive for long.
pub const MAX_FAULT_LINGER_MS: u64 = 60_000;

impl Default for StoreSettings {
    fn default() -> StoreSettings {
        StoreSettings {
            durability: Durability::Fsync,
            segment_bytes: journal::DEFAULT_SEGMENT_BYTES,
            snapshot_interval_ms: 60_000,
            snapshot_every_records: 250_000,
            keep_segments: false,
            fault_linger_ms: DEFAULT_FAULT_LINGER_MS,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {message}")]
    Io { path: PathBuf, message: String },
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error("snapshot {path} is damaged: {cause}; refusing to start (restore the data directory from a backup)")]
    Snapshot {
        path: PathBuf,
        #[source]
        cause: SnapshotError,
    },
    /// The directory's own files say it cannot be read by this build.
    #[error("the data directory {dir} cannot be opened: {reason}")]
    Format { dir: PathBuf, reason: String },
    /// The config dropped a node or channel that still has open work.
    #[error("{what} is gone from the config, but the data directory {dir} still has {has}; {fix}")]
    Retired {
        dir: PathBuf,
        /// "node WH-1" or "channel web".
        what: String,
        /// What it still has, counted.
        has: String,
        /// How to retire it.
        fix: &'static str,
    },
    /// The snapshots and the journal no longer hold every change.
    #[error("{why}, but {have}; refusing to start (answered orders would be lost). Restore the data directory from a backup: its snapshots and journal segments together")]
    Unreachable {
        /// What an actor needs of the journal, and which file says so.
        why: String,
        /// What the journal has.
        have: String,
    },
    #[error("journal record {lsn} cannot be replayed: {cause}; refusing to start")]
    Replay {
        lsn: u64,
        #[source]
        cause: RecordError,
    },
    /// The state cannot be laid out again for the configured shards and
    /// routers.
    #[error("the state cannot be laid out again: {0}")]
    Relayout(#[from] RestoreError),
    #[error(transparent)]
    Engine(#[from] EngineError),
}

pub(super) fn io(path: &Path, e: impl std::fmt::Display) -> StoreError {
    StoreError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// What recovery did, for the log and the tests.
#[derive(Debug, Default)]
pub struct RecoveryReport {
    pub snapshots_loaded: usize,
    pub snapshot_lsn_min: u64,
    pub records_replayed: usize,
    pub next_lsn: u64,
    pub torn_tail: Option<TornTail>,
    pub orders: usize,
    pub elapsed_ms: u64,
}

/// An opened data directory: the state to start the engine on, the journal
/// to continue, and what replay found out of step (see [`crate::engine::Engine::repair`]).
pub struct Recovered {
    pub state: EngineState,
    /// The network under the data directory's ids: start the engine on it.
    pub network: Arc<Network>,
    pub sequencer: Sequencer,
    /// Nothing was ever written here: load the config's starting stock.
    pub fresh: bool,
    pub report: RecoveryReport,
    pub bumps: Vec<Bumped>,
    pub orphans: Vec<Orphan>,
    /// This process's hold on the directory: keep it while writing there.
    pub lock: DirLock,
}

/// A reservation no open order accounts for: (order, sku, node, units).
pub type Orphan = (OrderId, SkuId, NodeIdx, u32);

/// Checks a snapshot file's frame and checksum as a start would, without
/// loading it (a set received from a leader, before it is installed).
pub fn check_snapshot_file(path: &Path) -> Result<(), String> {
    let map = durable::map_file(path).map_err(|e| e.to_string())?;
    frame::parse_snapshot(&map)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

pub fn journal_dir(dir: &Path) -> PathBuf {
    dir.join("journal")
}

pub fn snapshot_dir(dir: &Path) -> PathBuf {
    dir.join("snapshots")
}

mod chain;
mod due;
mod durable;
mod error;
mod frame;
mod reconcile;
pub use due::SnapshotDue;
pub(crate) use durable::write_durably;
pub(crate) use reconcile::reconcile;
mod recover;
mod relayout;
mod snapshot;
mod upgrade;

pub use error::{RecordError, SnapshotError};
pub use frame::{
    book_body, book_snapshot_bytes, parse_snapshot, snapshot_bytes, verify_snapshot_bytes,
};
pub(crate) use recover::load_replica_set;
pub use recover::open;
pub(crate) use snapshot::write_replica_set;
pub use snapshot::{
    encode_image, newest_snapshot_unix_ms, remove_segments_through, snapshot, write_snapshot_files,
    write_snapshots, write_state, BookWriter, Snapshotted,
};
pub use upgrade::journal_record_format;
