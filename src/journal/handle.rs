//! The journal handle: bounded slots, appends queued to the writer thread,
//! barriers, and a clean stop.

use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use super::fault::{Fault, Watcher};
use super::record::{self};
use super::segments::{open_dir, open_segment, prepared_bytes, run_spares, SpareJob};
use super::writer::Writer;
use super::{io_error, Durability, JournalError};

/// Appends queued for the writer before `reserve` waits (and `append`
/// blocks): the writer's backpressure on the engine.
pub const MAX_PENDING_APPENDS: usize = 65_536;
/// Records written (and fsynced) together at most.
pub const MAX_RECORDS_PER_COMMIT: usize = 8192;
/// How long the writer gathers unvouched records (rejected orders'
/// demand, which nothing waits on) before writing them, unless a vouched
/// record comes first: a sold-out SKU's rejections then cost the writer
/// one wake-up per this long, not one per batch.
pub const UNVOUCHED_LINGER_US: u64 = 2_000;
/// Bytes of unvouched records the writer leaves unsynced at most: past
/// this it fsyncs them anyway. Unbounded, a sold-out flash sale (only
/// rejected orders' demand, about 11 MB/s at 64 000 orders/s) piled
/// seconds of dirty pages onto the next vouched commit's fsync: measured
/// 24 ms for the first order routed when held units expired 5 s later.
/// A sync this size takes a fraction of a millisecond here.
pub const MAX_UNSYNCED_BYTES: u64 = 256 << 10;

/// Called with the LSN once the record is durable (or with the error).
pub type Done = Box<dyn FnOnce(Result<u64, JournalError>) + Send>;

/// A commit that failed: the callbacks to tell, and why.
pub(super) type CommitFailed = (Vec<Done>, JournalError);

/// What an append asks of the writer.
pub(super) enum Work {
    /// One record: a kind and its payload.
    Record(u8, Vec<u8>),
    /// Nothing written; its `done` runs once all queued before it is durable.
    Barrier,
    /// Records at consecutive LSNs, written in one commit and one segment
    /// (a replicated entry); `done` is told the first one's LSN.
    Group(Vec<(u8, Vec<u8>)>),
    /// Every record from this LSN on removed, durably, before anything
    /// queued after it is written ([`super::truncate_from`]).
    Cut(u64),
    /// Every segment removed, durably, and the next record written at this
    /// LSN in a new one (a replica that installed a snapshot set holding
    /// everything before it).
    Reset(u64),
}

pub(super) struct Append {
    pub(super) work: Work,
    pub(super) done: Done,
    /// Its place in the queue, given back once the commit that takes it is
    /// durable: a journal with every place free has nothing in flight.
    pub(super) slot: Slot,
}

impl Work {
    /// A cut or reset: made between commits, never inside one.
    pub(super) fn between_commits(&self) -> bool {
        matches!(self, Work::Cut(_) | Work::Reset(_))
    }
}

impl Append {
    /// The records it writes.
    pub(super) fn records(&self) -> usize {
        match &self.work {
            Work::Record(..) => 1,
            Work::Group(group) => group.len(),
            Work::Barrier | Work::Cut(_) | Work::Reset(_) => 0,
        }
    }

    /// Whether an answer may wait on this append (all but demand): a
    /// commit of none such is written without an fsync.
    pub(super) fn vouched(&self) -> bool {
        self.slot.vouched.is_some()
    }
}

/// A place in the journal's queue, taken before a record is built: async
/// code waits for one without parking its thread, and the append that
/// uses it never blocks.
pub struct Slot {
    _permit: tokio::sync::OwnedSemaphorePermit,
    /// The journal's count of records an answer may wait for, when this
    /// slot is one of them; given back with the slot, once durable.
    vouched: Option<Arc<AtomicUsize>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(count) = &self.vouched {
            count.fetch_sub(1, Ordering::Release);
        }
    }
}

/// Counters of the writer, for metrics and the benchmarks.
#[derive(Default, Debug)]
pub struct JournalStats {
    pub commits: AtomicU64,
    pub records: AtomicU64,
    pub largest_commit: AtomicU64,
    /// Fsyncs of the segments, and the time they took.
    pub fsyncs: AtomicU64,
    pub fsync_us_total: AtomicU64,
    /// The snapshot loop's records trigger, checked once per commit.
    pub mark: super::RecordMark,
}

/// The journal's writing side. Cheap to share; one writer thread owns the files.
pub struct Journal {
    /// Taken out by [`Journal::close`]; a read lock per append is
    /// uncontended except against that one close.
    queue: std::sync::RwLock<Option<crossbeam_channel::Sender<Append>>>,
    /// `MAX_PENDING_APPENDS` places in the queue; the queue holds as many,
    /// so that an append with a slot always finds room.
    slots: Arc<tokio::sync::Semaphore>,
    /// The writer, then the spare thread (which ends when the writer drops
    /// its job queue; joined so that no spare is still being written when
    /// the directory is opened again).
    writer: std::sync::Mutex<Vec<JoinHandle<()>>>,
    pub stats: Arc<JournalStats>,
    /// Taken by the writer around each commit; see [`Journal::pause`].
    paused: Arc<std::sync::Mutex<()>>,
    /// Records and barriers queued or being written that an answer may
    /// vouch for: all but the unvouched ones (rejected orders' demand),
    /// which no answer waits on. See [`Journal::quiet`].
    vouched: Arc<AtomicUsize>,
    /// The first storage error; see [`Journal::failure`].
    fault: Arc<Fault>,
}

impl Journal {
    /// Starts the writer on `dir`, appending from `next_lsn` (what
    /// [`recover`](super::recover) returned). Creates the directory if needed.
    pub fn start(
        dir: &Path,
        next_lsn: u64,
        durability: Durability,
        segment_bytes: u64,
    ) -> Result<Journal, JournalError> {
        crate::private_files::create_dir_all(dir).map_err(|e| io_error(dir, e))?;
        let segment_bytes = prepared_bytes(segment_bytes);
        let (file, path, size, prepared) = open_segment(dir, next_lsn, segment_bytes)?;
        let dir_file = open_dir(dir)?;
        let fault = Arc::new(Fault::default());
        let stats = Arc::new(JournalStats::default());
        let (spare_jobs, jobs) = crossbeam_channel::unbounded();
        let (ready, spares) = crossbeam_channel::bounded(1);
        let (spare_dir, spare_fault) = (dir.to_path_buf(), fault.clone());
        let spare_thread = std::thread::Builder::new()
            .name("journal-spare".into())
            .spawn(move || run_spares(spare_dir, segment_bytes, jobs, ready, spare_fault))
            .map_err(|e| io_error(dir, e))?;
        let _ = spare_jobs.send(SpareJob::Prepare);
        let writer = Writer {
            dir: dir.to_path_buf(),
            dir_file,
            fault: fault.clone(),
            file,
            path,
            size,
            next_lsn,
            segment_bytes,
            durability,
            stats: stats.clone(),
            fsync_seconds: metrics::histogram!(crate::telemetry::JOURNAL_FSYNC_SECONDS),
            commit_records: metrics::histogram!(crate::telemetry::JOURNAL_COMMIT_RECORDS),
            spare_jobs,
            spares,
            prepared,
            unsynced_bytes: 0,
        };
        let (queue, receiver) = crossbeam_channel::bounded(MAX_PENDING_APPENDS);
        let paused = Arc::new(std::sync::Mutex::new(()));
        let writer_paused = paused.clone();
        let thread = std::thread::Builder::new()
            .name("journal-writer".into())
            .spawn(move || writer.run(receiver, writer_paused))
            .map_err(|e| io_error(dir, e))?;
        Ok(Journal {
            queue: std::sync::RwLock::new(Some(queue)),
            slots: Arc::new(tokio::sync::Semaphore::new(MAX_PENDING_APPENDS)),
            writer: std::sync::Mutex::new(vec![thread, spare_thread]),
            stats,
            paused,
            vouched: Arc::new(AtomicUsize::new(0)),
            fault,
        })
    }

    /// Waits, without blocking the thread, for a place in the queue while
    /// `MAX_PENDING_APPENDS` records are queued (backpressure).
    pub async fn reserve(&self) -> Slot {
        let slots = self.slots.clone();
        // Never closed: the semaphore lives as long as the journal.
        let permit = slots.acquire_owned().await;
        self.vouched.fetch_add(1, Ordering::AcqRel);
        Slot {
            _permit: permit.expect("journal slots are never closed"),
            vouched: Some(self.vouched.clone()),
        }
    }

    /// A place in the queue if one is free now, never waiting, for a
    /// record no answer vouches for: [`Journal::quiet`] does not wait on it.
    pub fn try_reserve_unvouched(&self) -> Option<Slot> {
        let permit = self.slots.clone().try_acquire_owned().ok()?;
        Some(Slot {
            _permit: permit,
            vouched: None,
        })
    }

    /// Queues a record in `slot`, at once; `done` runs on the writer thread
    /// once it is durable.
    pub fn append_in(
        &self,
        slot: Slot,
        kind: u8,
        payload: Vec<u8>,
        done: Done,
    ) -> Result<(), JournalError> {
        self.refuse_over_max(payload.len())?;
        self.queue_append(slot, Work::Record(kind, payload), done)
    }

    /// Queues records to be written together, at consecutive LSNs, in one
    /// commit and one segment; `done` runs with the first one's LSN once
    /// they are durable. At most `MAX_RECORDS_PER_COMMIT` records.
    pub fn append_group_in(
        &self,
        slot: Slot,
        records: Vec<(u8, Vec<u8>)>,
        done: Done,
    ) -> Result<(), JournalError> {
        if records.is_empty() || records.len() > MAX_RECORDS_PER_COMMIT {
            // None would be told an LSN it does not take; more would not
            // fit one commit. A bug of the caller's, and loud.
            let error = JournalError::TooLarge(records.len());
            self.fault.raise(error.clone());
            return Err(error);
        }
        for (_, payload) in &records {
            self.refuse_over_max(payload.len())?;
        }
        self.queue_append(slot, Work::Group(records), done)
    }

    /// Queues a cut: every record from `lsn` on is removed, durably, and
    /// the next append takes `lsn`; `done` runs once it is, with the LSN
    /// the next append takes (`lsn`, or less if the journal ended before).
    /// What was queued before is written first. The caller makes the cut's
    /// intent durable before, since a crash part way leaves a journal
    /// recovery refuses until [`super::truncate_from`] is run again.
    pub fn cut_from_in(&self, slot: Slot, lsn: u64, done: Done) -> Result<(), JournalError> {
        self.queue_append(slot, Work::Cut(lsn), done)
    }

    /// Queues a reset: every segment is removed, durably, and the next
    /// append takes `lsn`, in a new segment; `done` runs once it is. What
    /// was queued before is written first. The caller makes its intent
    /// durable before: a crash part way leaves a journal with some, or
    /// none, of its segments.
    pub fn reset_in(&self, slot: Slot, lsn: u64, done: Done) -> Result<(), JournalError> {
        self.queue_append(slot, Work::Reset(lsn), done)
    }

    /// A payload over the maximum: the step that built it has changed
    /// memory already, so going on would answer from state no record
    /// holds. A bug, and loud.
    fn refuse_over_max(&self, bytes: usize) -> Result<(), JournalError> {
        if bytes <= record::MAX_RECORD_PAYLOAD_BYTES {
            return Ok(());
        }
        let error = JournalError::TooLarge(bytes);
        self.fault.raise(error.clone());
        Err(error)
    }

    /// The storage error that stopped the journal, if one has: from then
    /// on nothing is made durable, and nothing may be answered yes.
    pub fn failure(&self) -> Option<JournalError> {
        self.fault.error()
    }

    /// Whether the journal has failed: one atomic load, for answer paths.
    pub fn has_failed(&self) -> bool {
        self.fault.is_raised()
    }

    /// Stops the journal for a storage error found outside it (a snapshot
    /// that could not be written): nothing more is made durable, and
    /// whoever watches [`Journal::on_failure`] is told.
    pub fn fail(&self, error: JournalError) {
        self.fault.raise(error);
    }

    /// Runs `watcher` with the storage error once the journal fails (at
    /// once if it has).
    pub fn on_failure(&self, watcher: Watcher) {
        self.fault.watch(watcher);
    }

    /// Holds the writer before its next commit until the guard is dropped,
    /// so that what is appended meanwhile stays in flight: for tests of
    /// what waits for durability. Blocks while a commit is under way.
    pub fn pause(&self) -> std::sync::MutexGuard<'_, ()> {
        self.paused.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether every record an answer may vouch for is durable: nothing
    /// but unvouched records (demand) is queued or being written. A
    /// sold-out SKU's rejection is answered at once then, even while the
    /// writer is busy with the demand of the rejections before it.
    pub fn quiet(&self) -> bool {
        self.vouched.load(Ordering::Acquire) == 0
    }

    /// Queues a barrier in `slot`: nothing is written, and `done` runs on
    /// the writer thread once every record queued before it is durable.
    pub fn barrier_in(&self, slot: Slot, done: Done) -> Result<(), JournalError> {
        self.queue_append(slot, Work::Barrier, done)
    }

    fn queue_append(&self, slot: Slot, work: Work, done: Done) -> Result<(), JournalError> {
        let queue = self.queue.read().expect("journal queue lock");
        let append = Append { work, done, slot };
        // A slot guarantees room: this send does not wait.
        queue
            .as_ref()
            .ok_or(JournalError::Stopped)?
            .send(append)
            .map_err(|_| JournalError::Stopped)
    }

    /// [`Journal::reserve`] for a plain thread (never a tokio worker):
    /// blocks while the queue is full.
    pub fn reserve_blocking(&self) -> Slot {
        futures::executor::block_on(self.reserve())
    }

    /// [`Journal::reserve`] and [`Journal::append_in`] for a plain thread
    /// (never a tokio worker): blocks while the queue is full.
    pub fn append(&self, kind: u8, payload: Vec<u8>, done: Done) -> Result<(), JournalError> {
        let slot = self.reserve_blocking();
        self.append_in(slot, kind, payload, done)
    }

    /// Waits for everything queued to be written, then stops the writer;
    /// appends after this fail with `Stopped`.
    pub fn close(&self) {
        self.queue.write().expect("journal queue lock").take();
        let threads = std::mem::take(&mut *self.writer.lock().expect("journal writer lock"));
        for thread in threads {
            let _ = thread.join();
        }
    }

    pub fn shutdown(self) {
        self.close();
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        self.close();
    }
}
