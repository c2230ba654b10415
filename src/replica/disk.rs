//! A replica's log on its own disk. The journal holds the entries (see
//! [`super::entry`]); the hard-state file holds term, vote, commit and the
//! configuration. [`load`] reads both back at start into raft-rs's
//! in-memory storage, finishing a cut a crash interrupted and dropping an
//! entry a crash cut short. [`Persister`] queues each Ready's writes on
//! the journal's writer thread in the order raft-rs's promises need: a
//! cut's intent durable before the cut, entries durable before the hard
//! state that counts them, and the caller told only after both (it sends
//! the messages that vouch for them then, never before). The driver
//! writes through [`Persist`], which the simulation's disk implements too.

use std::path::Path;
use std::sync::{Arc, Mutex};

use raft::eraftpb::{ConfState, Entry, EntryType, HardState};

use super::entry::{body_records, encode_body, EntryError, EntryHeader};
use super::hard_state::{DurableState, HardStateError, HardStateFile, Intent};
use super::log_index::{EntryPos, LogIndex, LogIndexError};
use super::raft_point::RaftPoint;
use super::storage::ReplicaStorage;
use crate::journal::{self, Journal, JournalError, RecoveredRecord};
use crate::schema::txn::KIND_RAFT_ENTRY;

/// Why a replica's log cannot be loaded or written.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(transparent)]
    HardState(#[from] HardStateError),
    #[error(transparent)]
    Log(#[from] LogIndexError),
    #[error("entry {index}: {cause}")]
    Entry { index: u64, cause: EntryError },
    #[error("the replica's raft state says entry {commit} is committed, but its journal ends at entry {last}: committed entries are missing; refusing to start. Restore the data directory from a backup, or remove this replica from the cluster and add it back with an empty one")]
    CommitPastLog { commit: u64, last: u64 },
    #[error("the snapshot set holds the log through entry {index} of term {term}, but the journal has that entry in term {journal}: the set is not this log's; refusing to start")]
    PointTerm { index: u64, term: u64, journal: u64 },
    #[error("installing a snapshot set: {0}")]
    Install(String),
    #[error("this replica's voters are {stored:?} but the config names {configured:?}: membership does not change by editing the config; put the old [cluster] peers back")]
    Voters {
        stored: Vec<u64>,
        configured: Vec<u64>,
    },
}

/// What a replica's disk held at start.
pub struct Loaded<P = Persister> {
    /// The log, hard state and configuration, as raft-rs reads them.
    pub storage: ReplicaStorage,
    /// Where the log's writes go on from.
    pub persister: P,
    /// The last entry, and its term, the state starts with applied: the
    /// snapshot set's point (0, 0 without one).
    pub applied: (u64, u64),
}

/// Loads the replica whose journal is in `journal_dir` and hard state at
/// `state_path`, on the snapshot set at `point` if it has one (the log
/// goes on from there: the journal may begin earlier, never later); a
/// fresh one (nothing written yet) gets `voters`.
pub fn load(
    journal_dir: &Path,
    state_path: &Path,
    voters: &[u64],
    segment_bytes: u64,
    point: Option<&RaftPoint>,
) -> Result<Loaded, DiskError> {
    let (mut file, mut state) = HardStateFile::open(state_path)?;
    check_voters(&mut state, voters)?;
    match state.intent {
        Intent::TruncateFrom { lsn } => {
            journal::truncate_from(journal_dir, lsn)?;
            state.intent = Intent::None;
            file.write(&state, true)?;
        }
        Intent::Install { index, term, .. } => {
            finish_install(journal_dir, &mut state, point, (index, term))?;
            file.write(&state, true)?;
        }
        Intent::None => {}
    }
    let mut recovered = journal::recover(journal_dir, 0)?;
    if let Some(point) = point.filter(|_| recovered.records.is_empty()) {
        // Emptied by an install: the log goes on after the set's point.
        recovered.next_lsn = recovered.next_lsn.max(point.next_lsn);
    }
    let applied = point.map_or((0, 0), |p| (p.index, p.term));
    let mut index = LogIndex::build(&recovered.records, applied.0 + 1)?;
    if let Some(lsn) = index.unfinished_from {
        tracing::warn!(
            "journal: the last replicated entry (from LSN {lsn}) was cut short by a crash and never reported written; dropped"
        );
        journal::truncate_from(journal_dir, lsn)?;
        recovered.records.retain(|r| r.lsn < lsn);
        recovered.next_lsn = lsn;
        index.unfinished_from = None;
    }
    let entries = entries_of(&index, &recovered.records)?;
    check_point_term(&index.entries, applied)?;
    // Entries the set holds were committed; the commit index on disk may
    // be older (it is synced only with other writes).
    state.hard.commit = state.hard.commit.max(applied.0);
    let storage = storage_of(&state, &entries, applied)?;
    let journal = Journal::start(
        journal_dir,
        recovered.next_lsn,
        journal::Durability::Fsync,
        segment_bytes,
    )?;
    let persister = Persister {
        journal: Arc::new(journal),
        dir: journal_dir.to_path_buf(),
        removing: Mutex::new(None),
        file: Arc::new(Mutex::new(file)),
        state,
        positions: index.entries,
        next_lsn: recovered.next_lsn,
    };
    Ok(Loaded {
        storage,
        persister,
        applied,
    })
}

/// Finishes an install a crash cut short: if the set received is in use
/// (its point is the intent's), the journal is emptied, as the install
/// was about to; if not, the set was never put in place, and the old set
/// and journal stand. Either way the intent is cleared in `state`.
fn finish_install(
    journal_dir: &Path,
    state: &mut DurableState,
    point: Option<&RaftPoint>,
    (index, term): (u64, u64),
) -> Result<(), DiskError> {
    if point.is_some_and(|p| (p.index, p.term) == (index, term)) {
        let removed = journal::remove_all_segments(journal_dir)?;
        tracing::warn!(
            "replica: finishing the install of the snapshot set at entry {index} a crash cut short ({removed} journal segments removed)"
        );
        state.snap_index = index;
        state.snap_term = term;
    } else {
        tracing::warn!(
            "replica: the install of a snapshot set at entry {index} was cut short before the set was in place; the set and log in use stand"
        );
    }
    state.intent = Intent::None;
    Ok(())
}

/// The journal's entry at the snapshot set's point, if it still holds it,
/// has the point's term.
fn check_point_term(entries: &[EntryPos], (index, term): (u64, u64)) -> Result<(), DiskError> {
    let first = entries.first().map_or(u64::MAX, |e| e.index);
    let at = index
        .checked_sub(first)
        .and_then(|at| entries.get(at as usize));
    match at {
        Some(entry) if entry.term != term => Err(DiskError::PointTerm {
            index,
            term,
            journal: entry.term,
        }),
        _ => Ok(()),
    }
}

/// raft-rs's storage of a log read back at start: `entries` follow or
/// overlap the snapshot set's point `applied` (index, term). The first of
/// them at or before the point stands in for the compacted log before it
/// (its term is what raft-rs asks of it). A commit past the log's end is
/// refused: committed entries are missing, and raft-rs would panic on them.
pub(crate) fn storage_of(
    state: &DurableState,
    entries: &[Entry],
    applied: (u64, u64),
) -> Result<ReplicaStorage, DiskError> {
    let (base, held) = match entries.first() {
        Some(first) if first.index <= applied.0 => ((first.index, first.term), &entries[1..]),
        _ => (applied, entries),
    };
    let last = held.last().map_or(base.0, |e| e.index);
    if state.hard.commit > last {
        return Err(DiskError::CommitPastLog {
            commit: state.hard.commit,
            last,
        });
    }
    ReplicaStorage::new(base.0, base.1, held, state.hard.clone(), state.conf.clone())
        .map_err(|e| raft_storage_bug(&e))
}

/// A fresh replica takes the configured voters; one that has its own must
/// be configured with the same (membership is static).
fn check_voters(state: &mut DurableState, voters: &[u64]) -> Result<(), DiskError> {
    let mut configured = voters.to_vec();
    configured.sort_unstable();
    if state.conf.voters.is_empty() {
        state.conf = ConfState::from((configured, vec![]));
        return Ok(());
    }
    let mut stored = state.conf.voters.clone();
    stored.sort_unstable();
    if stored != configured {
        return Err(DiskError::Voters { stored, configured });
    }
    Ok(())
}

/// The raft entries of the journal's records, as raft-rs gave them.
fn entries_of(index: &LogIndex, records: &[RecoveredRecord]) -> Result<Vec<Entry>, DiskError> {
    let first_lsn = records.first().map_or(0, |r| r.lsn);
    index
        .entries
        .iter()
        .map(|pos| {
            let body = &records[(pos.header_lsn + 1 - first_lsn) as usize..][..pos.records()];
            let mut entry = Entry {
                index: pos.index,
                term: pos.term,
                ..Entry::default()
            };
            entry.set_entry_type(entry_type(pos.entry_type));
            entry.data = if entry.get_entry_type() == EntryType::EntryNormal {
                encode_body(body.iter().map(|r| (r.kind, r.payload.as_slice()))).into()
            } else {
                body.first()
                    .map(|r| r.payload.clone())
                    .unwrap_or_default()
                    .into()
            };
            Ok(entry)
        })
        .collect()
}

fn entry_type(number: u8) -> EntryType {
    match number {
        1 => EntryType::EntryConfChange,
        2 => EntryType::EntryConfChangeV2,
        _ => EntryType::EntryNormal,
    }
}

/// raft-rs's storage refuses only entries that leave a hole, which a checked log
/// index never has.
fn raft_storage_bug(error: &raft::Error) -> DiskError {
    DiskError::Log(LogIndexError {
        lsn: 0,
        reason: format!("raft-rs refused the loaded entries: {error}"),
    })
}

/// Called on the journal's writer thread once a Ready's writes are durable,
/// or with the error that stopped them.
pub type Persisted = Box<dyn FnOnce(Result<(), DiskError>) + Send>;

/// What the ready loop needs of a replica's disk: [`Persister`] on the
/// journal, or the simulation's disk, so the simulation runs the very
/// loop production runs.
pub trait Persist {
    /// Queues one Ready's writes: `entries` (overwriting the log from the
    /// first one's index on, if it has that index already), then `hard` if
    /// it changed, synced only if its term or vote did (raft-rs's
    /// `must_sync` is not needed: the entries are synced anyway, and a
    /// commit index alone need not be). `then` runs once they are
    /// durable, after every earlier Ready's. Blocks while the queue is
    /// full (backpressure on the driver).
    fn persist(
        &mut self,
        entries: &[Entry],
        hard: Option<&HardState>,
        must_sync: bool,
        then: Persisted,
    ) -> Result<(), DiskError>;

    /// The LSN of the header record of entry `index`, queued before (0 if
    /// it was not: a bug of the caller's).
    fn header_lsn(&self, index: u64) -> u64;

    /// The last entry queued whose records are all at or below `lsn`: its
    /// index, term and the LSN after it.
    fn entry_through(&self, lsn: u64) -> Option<(u64, u64, u64)>;

    /// Forgets the entries before `index`, which a snapshot set holds:
    /// removes the journal segments that hold nothing from it on (off the
    /// caller's thread; `close` waits for it).
    fn compact(&mut self, index: u64);

    /// Puts the snapshot set staged in `staged`, which holds the log
    /// through `point`, in place of the set in use, and empties the
    /// journal to go on after it; durably, and before anything queued
    /// after it is written. Waits for it. The set's descriptor once it is
    /// pinned to be sent on (`None` if the pin failed: said, not fatal).
    fn install(&mut self, point: &RaftPoint, staged: &Path) -> Result<Option<Vec<u8>>, DiskError> {
        let _ = (point, staged);
        Err(DiskError::Install(
            "this disk does not install snapshots".into(),
        ))
    }

    /// Waits for everything queued, then stops the writer.
    fn close(&self);
}

/// Queues a replica's writes on the journal's writer thread. Owned by the
/// thread that drives raft-rs; the writer thread alone writes the files.
pub struct Persister {
    journal: Arc<Journal>,
    /// The journal's directory (compaction removes its segments).
    dir: std::path::PathBuf,
    /// The last removal of segments, on a thread of its own: unlinking
    /// and the directory's fsync must not hold up the ready loop.
    removing: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Written only from the writer thread's callbacks, one at a time.
    file: Arc<Mutex<HardStateFile>>,
    /// The state as queued (durable once the queue has been written).
    state: DurableState,
    /// Every entry queued, with the LSNs it takes.
    positions: Vec<EntryPos>,
    /// The LSN the next entry's header takes.
    next_lsn: u64,
}

impl Persist for Persister {
    fn persist(
        &mut self,
        entries: &[Entry],
        hard: Option<&HardState>,
        _must_sync: bool,
        then: Persisted,
    ) -> Result<(), DiskError> {
        let groups = entries
            .iter()
            .map(records_of)
            .collect::<Result<Vec<_>, DiskError>>()?;
        if let Some(first) = entries.first() {
            self.cut_before(first.index)?;
        }
        for (entry, records) in entries.iter().zip(groups) {
            let header = self.next_lsn;
            self.next_lsn += records.len() as u64;
            self.positions.push(EntryPos {
                index: entry.index,
                term: entry.term,
                entry_type: entry.get_entry_type() as u8,
                header_lsn: header,
                end_lsn: self.next_lsn,
            });
            let slot = self.journal.reserve_blocking();
            self.journal
                .append_group_in(slot, records, Box::new(|_| ()))?;
        }
        // raft-rs's `_must_sync` asks for the entries (the journal's fsync
        // below covers them) and for term and vote, which the file syncs
        // on its own whenever they change; a commit index alone is not
        // synced (a lost one is told again). One fsync per Ready, not two.
        let write = hard.map(|hard| {
            self.state.hard = hard.clone();
            self.write_state(false)
        });
        let slot = self.journal.reserve_blocking();
        self.journal.barrier_in(
            slot,
            Box::new(move |written| {
                let written = written.map_err(DiskError::from);
                then(written.and_then(|_| write.map_or(Ok(()), |write| write())))
            }),
        )?;
        Ok(())
    }

    fn header_lsn(&self, index: u64) -> u64 {
        self.position(index).map_or(0, |p| p.header_lsn)
    }

    fn entry_through(&self, lsn: u64) -> Option<(u64, u64, u64)> {
        let after = self.positions.partition_point(|p| p.end_lsn <= lsn + 1);
        let entry = self.positions.get(after.checked_sub(1)?)?;
        Some((entry.index, entry.term, entry.end_lsn))
    }

    fn compact(&mut self, index: u64) {
        let Some(lsn) = self.position(index).map(|p| p.header_lsn) else {
            return;
        };
        let first = self.positions.first().map_or(index, |p| p.index);
        self.positions.drain(..(index - first) as usize);
        let mut removing = self.removing.lock().unwrap_or_else(|e| e.into_inner());
        // One removal at a time, never waited for here: while one is under
        // way (a slow disk) this one is left to the next compaction, which
        // removes every segment behind it.
        if removing.as_ref().is_some_and(|last| !last.is_finished()) {
            return;
        }
        if let Some(last) = removing.take() {
            let _ = last.join();
        }
        let dir = self.dir.clone();
        let spawned = std::thread::Builder::new()
            .name("log-compaction".into())
            .spawn(move || {
                if let Err(e) = journal::remove_segments_through(&dir, lsn - 1) {
                    // Segments left behind cost disk, not correctness.
                    tracing::warn!("replica log compaction before LSN {lsn}: {e}");
                }
            });
        match spawned {
            Ok(thread) => *removing = Some(thread),
            Err(e) => tracing::warn!("replica log compaction: no thread: {e}"),
        }
    }

    fn install(&mut self, point: &RaftPoint, staged: &Path) -> Result<Option<Vec<u8>>, DiskError> {
        // A compaction's removal of segments must not race the reset's.
        self.wait_for_removal();
        let data_dir = (self.dir.parent())
            .ok_or_else(|| DiskError::Install("the journal has no data directory".into()))?
            .to_path_buf();
        // The intent first: a crash from here on is finished at start.
        self.state.intent = Intent::Install {
            index: point.index,
            term: point.term,
            generation: 0,
        };
        let intent = self.write_state(true);
        self.wait_on_writer(|journal, slot, done| journal.barrier_in(slot, done), intent)?;
        crate::store::layout::install_snapshot_set(&data_dir, staged)
            .map_err(|e| DiskError::Install(e.to_string()))?;
        self.state.intent = Intent::None;
        self.state.snap_index = point.index;
        self.state.snap_term = point.term;
        self.state.hard.commit = self.state.hard.commit.max(point.index);
        let cleared = self.write_state(true);
        let next_lsn = point.next_lsn;
        self.wait_on_writer(
            |journal, slot, done| journal.reset_in(slot, next_lsn, done),
            cleared,
        )?;
        self.positions.clear();
        self.next_lsn = next_lsn;
        match super::snapshot_files::pin(&data_dir, point) {
            Ok(descriptor) => Ok(Some(descriptor.encode())),
            Err(e) => {
                tracing::warn!("{e}; the set is offered to peers once the next is written");
                Ok(None)
            }
        }
    }

    fn close(&self) {
        self.journal.close();
        self.wait_for_removal();
    }
}

impl Persister {
    /// The LSN after entry `index`'s last record, if it was queued.
    pub fn end_lsn(&self, index: u64) -> Option<u64> {
        self.position(index).map(|p| p.end_lsn)
    }

    /// Where entry `index` was queued, if it was.
    fn position(&self, index: u64) -> Option<&EntryPos> {
        // Entries are queued at consecutive indexes from the first one.
        let first = self.positions.first()?.index;
        let at = usize::try_from(index.checked_sub(first)?).ok()?;
        self.positions.get(at).filter(|p| p.index == index)
    }

    /// Queues the cut of every entry from `index` on, if there are any:
    /// its intent made durable first, so a crash part way is finished at
    /// the next start.
    fn cut_before(&mut self, index: u64) -> Result<(), DiskError> {
        let Some(at) = self.positions.iter().position(|p| p.index >= index) else {
            return Ok(());
        };
        let lsn = self.positions[at].header_lsn;
        self.positions.truncate(at);
        self.next_lsn = lsn;
        self.state.intent = Intent::TruncateFrom { lsn };
        let intent = self.write_state(true);
        let slot = self.journal.reserve_blocking();
        self.journal.barrier_in(
            slot,
            Box::new(move |written| {
                // A failed write stops the journal (in `write_state`), so
                // the cut and everything after it are not made; a barrier
                // that failed means it has stopped already.
                if written.is_ok() {
                    let _ = intent();
                }
            }),
        )?;
        self.state.intent = Intent::None;
        // Cleared as soon as the cut is made, on the writer thread before
        // anything after it is written: an intent left on disk would cut
        // entries written after it at the next start.
        let cleared = self.write_state(true);
        let slot = self.journal.reserve_blocking();
        self.journal.cut_from_in(
            slot,
            lsn,
            Box::new(move |cut| {
                if cut.is_ok() {
                    let _ = cleared();
                }
            }),
        )?;
        Ok(())
    }

    /// A write of the state as queued now, to run on the writer thread; a
    /// failure stops the journal (nothing after it may be written).
    fn write_state(&self, sync: bool) -> impl FnOnce() -> Result<(), DiskError> + Send {
        let (file, state, journal) = (self.file.clone(), self.state.clone(), self.journal.clone());
        move || {
            let mut file = file.lock().unwrap_or_else(|e| e.into_inner());
            let path = file.path().to_path_buf();
            let written = file.write(&state, sync);
            written.map_err(|error| {
                journal.fail(JournalError::Io {
                    path: path.clone(),
                    message: error.to_string(),
                });
                DiskError::from(error)
            })
        }
    }

    /// Waits for the last compaction's removal of segments, if one runs.
    fn wait_for_removal(&self) {
        let removing = self
            .removing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(thread) = removing {
            let _ = thread.join();
        }
    }

    /// Queues `work` on the writer thread, then `after` once it is
    /// durable, and waits for both.
    fn wait_on_writer(
        &self,
        work: impl FnOnce(&Journal, journal::Slot, journal::Done) -> Result<(), JournalError>,
        after: impl FnOnce() -> Result<(), DiskError> + Send + 'static,
    ) -> Result<(), DiskError> {
        let (tell, told) = crossbeam_channel::bounded(1);
        let slot = self.journal.reserve_blocking();
        work(
            &self.journal,
            slot,
            Box::new(move |done| {
                let _ = tell.send(done.map_err(DiskError::from).and_then(|_| after()));
            }),
        )?;
        told.recv()
            .map_err(|_| DiskError::Install("the journal stopped".into()))?
    }

    /// The journal the log is written to (for its stats and its fault).
    pub fn journal(&self) -> &Arc<Journal> {
        &self.journal
    }
}

/// The records an entry is written as: its header, then its body's
/// records (a normal entry), or its data as one record (a configuration
/// change). The body came from the leader: checked before anything is
/// queued.
fn records_of(entry: &Entry) -> Result<Vec<(u8, Vec<u8>)>, DiskError> {
    let body: Vec<(u8, Vec<u8>)> = body_records(entry)
        .map_err(|cause| DiskError::Entry {
            index: entry.index,
            cause,
        })?
        .into_iter()
        .map(|(kind, range)| (kind, entry.data[range].to_vec()))
        .collect();
    let header = EntryHeader {
        index: entry.index,
        term: entry.term,
        entry_type: entry.get_entry_type() as u8,
        records: body.len() as u32,
    };
    let mut records = Vec::with_capacity(body.len() + 1);
    records.push((KIND_RAFT_ENTRY, header.encode()));
    records.extend(body);
    Ok(records)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::mpsc;

    use raft::Storage;

    use super::*;
    use crate::schema::txn::KIND_TXN;
    use crate::scratch::Scratch;

    const SEGMENT_BYTES: u64 = 8 << 10;
    const VOTERS: [u64; 3] = [1, 2, 3];

    struct Paths {
        _scratch: Scratch,
        journal: PathBuf,
        state: PathBuf,
    }

    fn paths(name: &str) -> Paths {
        let scratch = Scratch::new(name);
        Paths {
            journal: scratch.0.join("journal"),
            state: scratch.0.join("raft-state"),
            _scratch: scratch,
        }
    }

    fn open(paths: &Paths) -> Result<Loaded, DiskError> {
        load(&paths.journal, &paths.state, &VOTERS, SEGMENT_BYTES, None)
    }

    /// A normal entry of `records` small records naming it.
    fn entry(index: u64, term: u64, records: usize) -> Entry {
        let payloads: Vec<Vec<u8>> = (0..records)
            .map(|r| format!("{index}.{term}.{r}").into_bytes())
            .collect();
        let mut entry = Entry {
            index,
            term,
            ..Entry::default()
        };
        entry.data = encode_body(payloads.iter().map(|p| (KIND_TXN, p.as_slice()))).into();
        entry
    }

    fn hard(term: u64, vote: u64, commit: u64) -> HardState {
        HardState {
            term,
            vote,
            commit,
            ..HardState::default()
        }
    }

    /// Persists and waits until it is durable.
    fn persist(persister: &mut Persister, entries: &[Entry], hs: Option<HardState>) {
        let (sender, receiver) = mpsc::channel();
        let then: Persisted = Box::new(move |r| sender.send(r.map_err(|e| e.to_string())).unwrap());
        persister
            .persist(entries, hs.as_ref(), true, then)
            .expect("queued");
        receiver.recv().expect("an answer").expect("durable");
    }

    fn log_of(storage: &ReplicaStorage) -> Vec<Entry> {
        let last = storage.last_index().expect("a last index");
        if last == 0 {
            return Vec::new();
        }
        storage
            .entries(1, last + 1, None, raft::GetEntriesContext::empty(false))
            .expect("entries")
    }

    #[test]
    fn the_apply_numbers_records_at_the_lsns_the_journal_gave_them() {
        // Proves the apply's count of LSNs meets the journal's after every entry, as read back
        // at a start: normal entries of 0 to 3 records, an empty one (a new leader's first), a
        // configuration change, and a tail a later term overwrote.
        use crate::engine::{EngineSettings, EngineState};
        use crate::replica::follower::{apply_log, ApplyPoint};
        use crate::schema::txn::KIND_DEMAND;
        let paths = paths("disk-apply-lsns");
        let mut loaded = open(&paths).expect("a fresh replica");
        let demand = |index: u64, term: u64, records: u64| {
            let payloads: Vec<Vec<u8>> = (0..records).map(|r| vec![r as u8; 3]).collect();
            let mut entry = entry(index, term, 0);
            entry.data = encode_body(payloads.iter().map(|p| (KIND_DEMAND, p.as_slice()))).into();
            entry
        };
        let mut first: Vec<Entry> = (1..=12).map(|i| demand(i, 1, i % 4)).collect();
        first[4].data = Default::default();
        first[7].set_entry_type(EntryType::EntryConfChange);
        first[7].data = b"a configuration change".to_vec().into();
        persist(&mut loaded.persister, &first, Some(hard(1, 1, 12)));
        let second: Vec<Entry> = (10..=14).map(|i| demand(i, 2, 2)).collect();
        persist(&mut loaded.persister, &second, Some(hard(2, 1, 14)));
        loaded.persister.close();
        drop(loaded);
        let again = open(&paths).expect("reloads");
        let network = Arc::new(crate::core::network::Network::new(
            Vec::new(),
            Vec::new(),
            Vec::new(),
        ));
        let settings = EngineSettings {
            max_skus: 16,
            ..EngineSettings::default()
        };
        let mut state = EngineState::fresh(&settings, &network, 0).expect("a state");
        let mut point = ApplyPoint::START;
        let filter = crate::store::apply::Applied::none(&state);
        for index in 1..=14 {
            apply_log(&again.storage, &mut state, &filter, &mut point, index).expect("applies");
            let journaled = again.persister.end_lsn(index);
            assert_eq!(Some(point.next_lsn), journaled, "after entry {index}");
        }
    }

    #[test]
    fn a_log_overwritten_by_a_new_leader_loads_as_raft_wrote_it() {
        // Proves entries, cuts where a later term overwrites the tail (one in a Ready with no
        // hard state, whose intent must not outlive it), and the hard state come back at the
        // next start exactly as raft-rs handed them to be persisted.
        let paths = paths("disk-overwrite");
        let mut loaded = open(&paths).expect("a fresh replica");
        assert_eq!(log_of(&loaded.storage), Vec::<Entry>::new());
        let first: Vec<Entry> = (1..=40).map(|i| entry(i, 1, (i % 4) as usize)).collect();
        persist(&mut loaded.persister, &first, Some(hard(1, 2, 20)));
        let second: Vec<Entry> = (25..=31).map(|i| entry(i, 2, 2)).collect();
        persist(&mut loaded.persister, &second, Some(hard(2, 3, 26)));
        // A cut in a Ready with no hard state: its intent must not outlive it.
        let third: Vec<Entry> = (31..=33).map(|i| entry(i, 3, 1)).collect();
        persist(&mut loaded.persister, &third, None);
        loaded.persister.close();
        drop(loaded);
        let again = open(&paths).expect("reloads");
        let mut expected = first[..24].to_vec();
        expected.extend_from_slice(&second[..6]);
        expected.extend(third);
        assert_eq!(log_of(&again.storage), expected);
        let state = again.storage.initial_state().expect("a state");
        assert_eq!(state.hard_state, hard(2, 3, 26));
        assert_eq!(state.conf_state.voters, VOTERS);
    }

    #[test]
    fn a_cut_whose_intent_was_written_is_finished_at_the_next_start() {
        // Proves a crash after a cut's intent is durable but before the cut is made (or part
        // way) leaves the journal cut at the next start, and the intent cleared.
        let paths = paths("disk-intent");
        let mut loaded = open(&paths).expect("a fresh replica");
        let log: Vec<Entry> = (1..=30).map(|i| entry(i, 1, 3)).collect();
        persist(&mut loaded.persister, &log, Some(hard(1, 1, 10)));
        let cut_lsn = loaded.persister.positions[14].header_lsn;
        loaded.persister.close();
        drop(loaded);
        let (mut file, mut state) = HardStateFile::open(&paths.state).expect("the state");
        state.intent = Intent::TruncateFrom { lsn: cut_lsn };
        file.write(&state, true).expect("the intent");
        drop(file);
        let again = open(&paths).expect("reloads");
        assert_eq!(log_of(&again.storage), log[..14].to_vec());
        again.persister.close();
        let (_, state) = HardStateFile::open(&paths.state).expect("the state");
        assert_eq!(state.intent, Intent::None);
    }

    #[test]
    fn an_entry_a_crash_cut_short_is_dropped_and_a_commit_past_the_log_refused() {
        // Proves the last entry whose records stop short (a group commit a crash cut) is
        // dropped at start and its LSNs reused, and that a hard state committing past the
        // log's end refuses to start.
        let paths = paths("disk-short");
        let mut loaded = open(&paths).expect("a fresh replica");
        persist(
            &mut loaded.persister,
            &[entry(1, 1, 2), entry(2, 1, 2)],
            Some(hard(1, 1, 2)),
        );
        let header = EntryHeader {
            index: 3,
            term: 1,
            entry_type: 0,
            records: 5,
        };
        let short = vec![
            (KIND_RAFT_ENTRY, header.encode()),
            (KIND_TXN, b"x".to_vec()),
        ];
        let slot = loaded.persister.journal.reserve_blocking();
        let (sender, receiver) = mpsc::channel();
        let done = Box::new(move |r| sender.send(r).unwrap());
        loaded
            .persister
            .journal
            .append_group_in(slot, short, done)
            .expect("queued");
        receiver.recv().expect("an answer").expect("durable");
        loaded.persister.close();
        drop(loaded);
        let mut again = open(&paths).expect("reloads");
        assert_eq!(log_of(&again.storage), vec![entry(1, 1, 2), entry(2, 1, 2)]);
        persist(&mut again.persister, &[entry(3, 1, 1)], Some(hard(1, 1, 3)));
        again.persister.close();
        drop(again);
        let third = open(&paths).expect("reloads");
        assert_eq!(log_of(&third.storage).len(), 3);
        third.persister.close();
        drop(third);
        let (mut file, mut state) = HardStateFile::open(&paths.state).expect("the state");
        state.hard.commit = 9;
        file.write(&state, true).expect("a commit past the log");
        drop(file);
        let refused = open(&paths).err().expect("refused");
        assert!(
            matches!(refused, DiskError::CommitPastLog { commit: 9, last: 3 }),
            "{refused}"
        );
    }

    #[test]
    fn a_hard_state_that_cannot_be_written_stops_the_journal() {
        // Proves a failed write of the hard state is reported to the Ready's caller (who then
        // sends nothing) and stops the journal, so no later entry is written either.
        crate::faults::alone(
            module_path!(),
            "a_hard_state_that_cannot_be_written_stops_the_journal",
            || {
                let paths = paths("disk-fault");
                let mut loaded = open(&paths).expect("a fresh replica");
                persist(
                    &mut loaded.persister,
                    &[entry(1, 1, 1)],
                    Some(hard(1, 1, 0)),
                );
                fail::cfg(crate::faults::points::RAFT_STATE_FSYNC, "return(EIO)")
                    .expect("a failpoint");
                let (sender, receiver) = mpsc::channel();
                let then: Persisted = Box::new(move |r| sender.send(r.is_ok()).unwrap());
                loaded
                    .persister
                    .persist(&[entry(2, 2, 1)], Some(&hard(2, 2, 1)), true, then)
                    .expect("queued");
                let written = receiver.recv().expect("an answer");
                fail::remove(crate::faults::points::RAFT_STATE_FSYNC);
                assert!(!written, "a failed hard state reported written");
                assert!(loaded.persister.journal().has_failed());
            },
        );
    }

    #[test]
    fn a_body_that_is_not_one_is_refused_before_anything_is_queued() {
        // Proves an entry whose data does not decode (bytes from a peer) is refused whole.
        let paths = paths("disk-body");
        let mut loaded = open(&paths).expect("a fresh replica");
        let mut bad = entry(1, 1, 2);
        bad.data = bad.data[..bad.data.len() - 1].to_vec().into();
        let then: Persisted = Box::new(|_| panic!("nothing was queued"));
        let refused = loaded
            .persister
            .persist(&[entry(1, 1, 1), bad], None, true, then);
        assert!(
            matches!(refused, Err(DiskError::Entry { index: 1, .. })),
            "{refused:?}"
        );
        assert_eq!(loaded.persister.next_lsn, 1);
    }

    #[test]
    fn a_compacted_log_loads_from_its_snapshot_point_and_refuses_one_past_its_start() {
        // Proves that after compaction removes the segments before an entry, the log loads on
        // a snapshot point at or after the journal's new start: raft-rs's log starts after the
        // first entry the journal still holds (or the point), the commit index is at least the
        // point, and the entries after it are as written; a point whose entry the journal has
        // in another term, and a journal that begins after the point, are refused.
        use super::super::raft_point::RaftPoint;
        let paths = paths("disk-compacted");
        let mut loaded = open(&paths).expect("a fresh replica");
        let entries: Vec<Entry> = (1..=60).map(|i| entry(i, 2, 20)).collect();
        // A few at a time: one group commit is written into one segment.
        for chunk in entries.chunks(5) {
            persist(&mut loaded.persister, chunk, Some(hard(2, 1, 10)));
        }
        let next_lsn_after = |persister: &Persister, index: u64| persister.end_lsn(index).unwrap();
        let point_at = |index: u64, term: u64, next_lsn: u64| RaftPoint {
            index,
            term,
            next_lsn,
            voters: VOTERS.to_vec(),
            learners: vec![],
            stock_loaded: true,
        };
        let point = point_at(40, 2, next_lsn_after(&loaded.persister, 40));
        loaded.persister.compact(35);
        assert_eq!(loaded.persister.header_lsn(34), 0, "forgotten");
        loaded.persister.close();
        drop(loaded);
        let first = journal::recover(&paths.journal, 0)
            .expect("recovers")
            .records[0]
            .lsn;
        assert!(first > 1, "segments before entry 35 were removed");

        let again = load(
            &paths.journal,
            &paths.state,
            &VOTERS,
            SEGMENT_BYTES,
            Some(&point),
        )
        .expect("loads on the point");
        assert_eq!(again.applied, (40, 2));
        let storage = &again.storage;
        let e0 = storage.first_index().unwrap() - 1;
        assert!(
            (1..=35).contains(&e0),
            "starts after the journal's first entry: {e0}"
        );
        assert_eq!(storage.last_index().unwrap(), 60);
        assert!(storage.initial_state().unwrap().hard_state.commit >= 40);
        let held = storage
            .entries(41, 61, None, raft::GetEntriesContext::empty(false))
            .unwrap();
        assert_eq!(held, entries[40..].to_vec());
        again.persister.close();
        drop(again);

        let wrong_term = point_at(40, 3, point.next_lsn);
        let refused = load(
            &paths.journal,
            &paths.state,
            &VOTERS,
            SEGMENT_BYTES,
            Some(&wrong_term),
        );
        assert!(
            matches!(refused, Err(DiskError::PointTerm { .. })),
            "another term"
        );
        let refused = load(&paths.journal, &paths.state, &VOTERS, SEGMENT_BYTES, None);
        assert!(
            matches!(refused, Err(DiskError::Log(_))),
            "no point: entry 1 is missing"
        );
    }

    #[test]
    fn an_install_cut_short_at_any_step_starts_on_the_old_log_or_the_new_set_never_a_mix() {
        // Proves that a snapshot install a crash cut short after its intent but before its set
        // was in place starts on the old set and the whole old log; one cut short after the
        // set was in place starts on the new set with the journal emptied, going on at the
        // set's next LSN; and a whole install does the same, its later entries kept across a
        // restart. Each start clears the intent.
        use super::super::hard_state::HardStateFile;
        use super::super::raft_point::{self, RaftPoint};
        use crate::store::layout;
        let paths = paths("disk-install");
        let data = paths.journal.parent().unwrap().to_path_buf();
        layout::prepare_snapshot_sets(&data).expect("sets");
        let at = |index: u64, term: u64, next_lsn: u64| RaftPoint {
            index,
            term,
            next_lsn,
            voters: VOTERS.to_vec(),
            learners: vec![],
            stock_loaded: true,
        };
        let old = at(0, 0, 1);
        let new = at(80, 3, 500);
        let stage = |name: &str| {
            let staged = data.join(name);
            std::fs::create_dir_all(&staged).unwrap();
            raft_point::write(&staged, &new).unwrap();
            staged
        };
        let reload = |point: &RaftPoint| {
            let point = (point.index > 0).then_some(point);
            load(&paths.journal, &paths.state, &VOTERS, SEGMENT_BYTES, point).expect("loads")
        };
        let mut loaded = open(&paths).expect("a fresh replica");
        let entries: Vec<Entry> = (1..=60).map(|i| entry(i, 2, 3)).collect();
        persist(&mut loaded.persister, &entries, Some(hard(2, 1, 50)));
        loaded.persister.close();
        drop(loaded);
        let intend = || {
            let (mut file, mut state) = HardStateFile::open(&paths.state).unwrap();
            state.intent = Intent::Install {
                index: new.index,
                term: new.term,
                generation: 0,
            };
            file.write(&state, true).unwrap();
        };
        let intent_cleared = || HardStateFile::open(&paths.state).unwrap().1.intent == Intent::None;

        // Cut short before the set was in place: the old log, whole.
        intend();
        let again = reload(&old);
        assert_eq!(log_of(&again.storage), entries);
        assert!(intent_cleared());
        again.persister.close();
        drop(again);

        // Cut short after the set was in place: the journal emptied, on from the set.
        intend();
        layout::install_snapshot_set(&data, &stage("staged-1")).expect("in place");
        let again = reload(&new);
        assert_eq!(again.storage.first_index().unwrap(), 81);
        assert_eq!(again.storage.last_index().unwrap(), 80);
        assert!(again.storage.initial_state().unwrap().hard_state.commit >= 80);
        assert_eq!(again.persister.next_lsn, 500);
        assert!(intent_cleared());
        again.persister.close();
        drop(again);

        // A whole install, then entries after it, across a restart.
        let mut loaded = reload(&new);
        let newer = at(90, 4, 700);
        let staged = data.join("staged-2");
        std::fs::create_dir_all(&staged).unwrap();
        raft_point::write(&staged, &newer).unwrap();
        loaded.persister.install(&newer, &staged).expect("installs");
        let after: Vec<Entry> = (91..=95).map(|i| entry(i, 4, 2)).collect();
        persist(&mut loaded.persister, &after, Some(hard(4, 1, 95)));
        assert_eq!(loaded.persister.header_lsn(91), 700);
        loaded.persister.close();
        drop(loaded);
        let linked = crate::replica::local_snapshot::linked_point(&data).unwrap();
        assert_eq!(linked.as_ref(), Some(&newer));
        let again = reload(&newer);
        assert_eq!(again.storage.first_index().unwrap(), 91);
        let held = (again.storage)
            .entries(91, 96, None, raft::GetEntriesContext::empty(false))
            .unwrap();
        assert_eq!(held, after);
        assert_eq!(again.persister.header_lsn(91), 700);
        assert!(intent_cleared());
        again.persister.close();
    }
}
