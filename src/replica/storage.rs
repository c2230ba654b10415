//! The log as raft-rs reads it: raft-rs's in-memory storage, which may
//! start after a snapshot set's point, with two differences.
//! - Compaction keeps the term of the entry before the first it keeps,
//!   which raft-rs asks for (of its commit index, and of the entry before
//!   the next it sends), and never empties the log: compacting past the
//!   last entry does nothing. raft-rs's memory storage answers only its
//!   last snapshot's term below its first entry.
//! - `snapshot` never invents one. raft-rs's memory storage answers with
//!   its commit index and no data, which a follower would install as if it
//!   held that state. Here it answers with the newest pinned snapshot set
//!   (`snapshot_files`), its descriptor as the data, or, before one is
//!   pinned, "temporarily unavailable", the one answer raft-rs retries
//!   (any other error is fatal to it).
//!
//! Shared, not copied: the driver writes it, the apply thread reads it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::storage::{MemStorage, RaftState};
use raft::{GetEntriesContext, Storage, StorageError};

use super::raft_point::RaftPoint;

/// A replica's in-memory raft log.
#[derive(Clone, Default)]
pub struct ReplicaStorage {
    mem: MemStorage,
    /// The entry before the first one held since the last compaction, and
    /// its term (0, 0: none).
    before_first: Arc<std::sync::RwLock<(u64, u64)>>,
    /// Times a peer needed entries this log no longer holds.
    snapshots_wanted: Arc<AtomicU64>,
    /// The newest pinned snapshot set, as raft-rs sends it.
    pinned: Arc<std::sync::RwLock<Option<Snapshot>>>,
}

impl ReplicaStorage {
    /// A log that starts after entry `index` of term `term` (0, 0: from
    /// the first entry), holding `entries` (which must follow it), with
    /// raft-rs's `hard` and `conf` state.
    pub fn new(
        index: u64,
        term: u64,
        entries: &[Entry],
        hard: HardState,
        conf: ConfState,
    ) -> raft::Result<ReplicaStorage> {
        let storage = ReplicaStorage::default();
        {
            let mut core = storage.mem.wl();
            if index > 0 {
                let mut snapshot = Snapshot::default();
                snapshot.set_metadata(SnapshotMetadata {
                    index,
                    term,
                    conf_state: Some(conf.clone()).into(),
                    ..SnapshotMetadata::default()
                });
                core.apply_snapshot(snapshot)?;
            }
            core.set_hardstate(hard);
            core.set_conf_state(conf);
            core.append(entries)?;
        }
        Ok(storage)
    }

    /// Appends `entries`, replacing any it holds from the first one's
    /// index on (a new leader's log overwriting an uncommitted tail).
    pub fn append(&self, entries: &[Entry]) -> raft::Result<()> {
        self.mem.wl().append(entries)
    }

    pub fn set_hardstate(&self, hard: HardState) {
        self.mem.wl().set_hardstate(hard);
    }

    /// The hard state as last set.
    pub fn hard_state(&self) -> HardState {
        self.mem.rl().hard_state().clone()
    }

    /// Forgets the entries before `index`, keeping the term of the one
    /// before it. An index at or before the first held, or past the last,
    /// changes nothing.
    pub fn compact(&self, index: u64) {
        // Only the driver writes the log, so it cannot move between these
        // reads and the compaction.
        let first = self.mem.first_index().unwrap_or(1);
        let last = self.mem.last_index().unwrap_or(0);
        if index <= first || index > last {
            return;
        }
        let term = self.mem.term(index - 1).expect("a term within the log");
        *self.before_first.write().unwrap_or_else(|e| e.into_inner()) = (index - 1, term);
        (self.mem.wl().compact(index)).expect("compaction within the log");
    }

    /// Offers the snapshot set pinned at `point` (described by
    /// `descriptor`) to peers behind this log's start.
    pub fn set_pinned(&self, point: &RaftPoint, descriptor: Vec<u8>) {
        let mut snapshot = Snapshot::default();
        snapshot.set_metadata(SnapshotMetadata {
            index: point.index,
            term: point.term,
            conf_state: Some(ConfState::from((
                point.voters.clone(),
                point.learners.clone(),
            )))
            .into(),
            ..SnapshotMetadata::default()
        });
        snapshot.data = descriptor.into();
        let mut pinned = self.pinned.write().unwrap_or_else(|e| e.into_inner());
        // A pin told late (queued before an install) never replaces a newer.
        if pinned
            .as_ref()
            .is_none_or(|p| p.get_metadata().index <= point.index)
        {
            *pinned = Some(snapshot);
        }
    }

    /// Installs a snapshot raft-rs accepted: the log now starts after its
    /// point, and holds nothing before.
    pub fn apply_snapshot(&self, snapshot: Snapshot) -> raft::Result<()> {
        let point = snapshot.get_metadata();
        *self.before_first.write().unwrap_or_else(|e| e.into_inner()) = (point.index, point.term);
        self.mem.wl().apply_snapshot(snapshot)
    }

    /// Times a peer needed entries before this log's start.
    pub fn snapshots_wanted(&self) -> u64 {
        self.snapshots_wanted.load(Ordering::Relaxed)
    }
}

impl Storage for ReplicaStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        self.mem.initial_state()
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        self.mem.entries(low, high, max_size, context)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        let (before, term) = *self.before_first.read().unwrap_or_else(|e| e.into_inner());
        if idx == before && idx > 0 {
            return Ok(term);
        }
        self.mem.term(idx)
    }

    fn first_index(&self) -> raft::Result<u64> {
        self.mem.first_index()
    }

    fn last_index(&self) -> raft::Result<u64> {
        self.mem.last_index()
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        let wanted = self.snapshots_wanted.fetch_add(1, Ordering::Relaxed);
        let pinned = self.pinned.read().unwrap_or_else(|e| e.into_inner());
        // Only a snapshot the log goes on from: never one older than the
        // entry before the log's first (the follower would need entries
        // that are gone, and ask again), nor than what the peer asked for.
        let first = self.mem.first_index().unwrap_or(1);
        let usable = pinned.as_ref().filter(|s| {
            let index = s.get_metadata().index;
            index >= request_index && index + 1 >= first
        });
        if let Some(snapshot) = usable {
            tracing::info!(
                "replica {to} is behind the start of this replica's log: sending it the snapshot at entry {}",
                snapshot.get_metadata().index
            );
            return Ok(snapshot.clone());
        }
        // raft-rs asks again at every heartbeat response: said once in a
        // while, not every time.
        if wanted.is_multiple_of(100) {
            tracing::warn!(
                "replica {to} is behind the start of this replica's log, and no snapshot set is pinned yet to send it"
            );
        }
        Err(raft::Error::Store(
            StorageError::SnapshotTemporarilyUnavailable,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            ..Entry::default()
        }
    }

    /// A log after `base` holding entries `first..=last` (none if last < first).
    fn log(base: (u64, u64), first: u64, last: u64) -> ReplicaStorage {
        let entries: Vec<Entry> = (first..=last).map(|i| entry(i, 2)).collect();
        let hard = HardState {
            term: 2,
            commit: base.0,
            ..HardState::default()
        };
        let conf = ConfState::from((vec![1, 2, 3], vec![]));
        ReplicaStorage::new(base.0, base.1, &entries, hard, conf).expect("a log")
    }

    #[test]
    fn a_log_after_a_point_answers_the_points_term_and_nothing_before() {
        // Proves a log that starts after a snapshot set's point answers that entry's term
        // (raft-rs asks it of the entry before the first), says `Compacted` for entries before
        // it, and holds the entries after it.
        let storage = log((40, 1), 41, 45);
        assert_eq!(storage.first_index().unwrap(), 41);
        assert_eq!(storage.last_index().unwrap(), 45);
        assert_eq!(storage.term(40).unwrap(), 1);
        assert_eq!(storage.term(43).unwrap(), 2);
        let compacted = raft::Error::Store(StorageError::Compacted);
        assert_eq!(storage.term(39).unwrap_err(), compacted);
        let context = || GetEntriesContext::empty(false);
        assert_eq!(
            storage.entries(40, 42, None, context()).unwrap_err(),
            compacted
        );
        assert_eq!(storage.entries(41, 46, None, context()).unwrap().len(), 5);
        let empty = log((40, 1), 41, 40);
        assert_eq!(empty.first_index().unwrap(), 41);
        assert_eq!(empty.last_index().unwrap(), 40);
    }

    #[test]
    fn compaction_keeps_the_term_before_the_first_entry_and_never_empties_the_log() {
        // Proves compacting to an entry forgets only those before it and still answers the
        // term of the one before it (raft-rs asks it of its commit index, which may be
        // there), and that compacting past the last entry changes nothing rather than empty
        // the log.
        let storage = log((0, 0), 1, 10);
        storage.compact(6);
        assert_eq!(storage.first_index().unwrap(), 6);
        assert_eq!(storage.term(6).unwrap(), 2);
        assert_eq!(storage.term(5).unwrap(), 2, "the entry before the first");
        assert!(storage.term(4).is_err());
        storage.compact(11);
        assert_eq!(storage.first_index().unwrap(), 6);
        assert_eq!(storage.last_index().unwrap(), 10);
        storage.compact(3);
        assert_eq!(storage.first_index().unwrap(), 6);
    }

    #[test]
    fn a_snapshot_is_never_made_up() {
        // Proves the log answers a request for a snapshot only with the error raft-rs
        // retries (any other is fatal to it, and raft-rs's memory storage would answer with
        // an empty one a follower would install), and counts each request.
        let storage = log((40, 1), 41, 45);
        for asked in 1..=3 {
            let error = storage.snapshot(41, 2).unwrap_err();
            let retried = raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable);
            assert_eq!(error, retried);
            assert_eq!(storage.snapshots_wanted(), asked);
        }
    }

    #[test]
    fn a_pinned_snapshot_is_offered_only_if_the_log_goes_on_from_it() {
        // Proves the log answers a request for a snapshot with the pinned set once one is
        // pinned at or after the entry before its first (its point, conf and descriptor as
        // given), and with the retried error for one older than that (the peer would need
        // entries that are gone) or older than the peer asked for.
        let storage = log((0, 0), 1, 50);
        storage.compact(31);
        let point = |index| RaftPoint {
            index,
            term: 2,
            next_lsn: index * 3 + 1,
            voters: vec![1, 2, 3],
            learners: vec![],
            stock_loaded: true,
        };
        let retried = raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable);
        storage.set_pinned(&point(20), b"old".to_vec());
        assert_eq!(storage.snapshot(0, 2).unwrap_err(), retried);
        storage.set_pinned(&point(30), b"descriptor".to_vec());
        let snapshot = storage.snapshot(0, 2).expect("the pinned set");
        assert_eq!(snapshot.get_metadata().index, 30);
        assert_eq!(snapshot.get_metadata().term, 2);
        assert_eq!(
            snapshot.get_metadata().get_conf_state().voters,
            vec![1, 2, 3]
        );
        assert_eq!(&snapshot.data[..], b"descriptor");
        assert_eq!(storage.snapshot(31, 2).unwrap_err(), retried);
    }
}
