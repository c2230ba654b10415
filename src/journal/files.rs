//! Segment files, the group-commit writer thread, and recovery.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use super::record::{self, End};

/// Appends queued for the writer before `reserve` waits (and `append`
/// blocks): the writer's backpressure on the engine.
pub const MAX_PENDING_APPENDS: usize = 65_536;
/// Records written (and fsynced) together at most.
pub const MAX_RECORDS_PER_COMMIT: usize = 8192;
/// A segment is closed and a new one begun past this size.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 << 20;
const SEGMENT_SUFFIX: &str = ".wal";
/// The next segment, zero-filled and fsynced ahead of need by the spare
/// thread, renamed into place at rotation. Appending into blocks that are
/// already written keeps the file's size and block map unchanged, so each
/// commit's fdatasync writes the data alone (no inode), and a rotation no
/// longer stalls the writer on creating and extending a file.
const SPARE_NAME: &str = "next-segment.spare";
/// Zeros written per call while preparing a spare, and how often it is
/// synced on the way (so that its flush never arrives as one burst).
const SPARE_CHUNK_BYTES: usize = 1 << 20;
const SPARE_SYNC_EVERY_BYTES: u64 = 8 << 20;

/// Whether an append is acknowledged only after fsync.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// The default: a record is acknowledged after the fsync covering it.
    Fsync,
    /// For benchmarks: acknowledged after the write, before any fsync.
    None,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum JournalError {
    #[error("journal I/O on {path}: {message}")]
    Io { path: PathBuf, message: String },
    /// Damage before the tail: starting would lose or invent state.
    #[error("journal {path} is corrupt at byte {offset}: {reason}; refusing to start (restore the data directory from a backup)")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error(
        "the journal writer has stopped after an earlier error; nothing more can be made durable"
    )]
    Stopped,
    #[error("a record of {0} bytes exceeds MAX_RECORD_PAYLOAD_BYTES")]
    TooLarge(usize),
}

fn io_error(path: &Path, error: impl std::fmt::Display) -> JournalError {
    JournalError::Io {
        path: path.to_path_buf(),
        message: error.to_string(),
    }
}

/// A record read back at recovery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecoveredRecord {
    pub lsn: u64,
    pub kind: u8,
    pub payload: Vec<u8>,
}

/// Bytes cut from the end of the last segment at recovery.
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
}

fn segment_paths(dir: &Path) -> Result<Vec<(u64, PathBuf)>, JournalError> {
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

fn segment_path(dir: &Path, first_lsn: u64) -> PathBuf {
    dir.join(format!("{first_lsn:020}{SEGMENT_SUFFIX}"))
}

/// Reads every segment in `dir`, returns the records after `after_lsn`, and
/// cuts a torn tail off the last segment (on disk, fsynced). Damage
/// anywhere else is an error naming the file and the offset.
pub fn recover(dir: &Path, after_lsn: u64) -> Result<Recovered, JournalError> {
    let segments = segment_paths(dir)?;
    let mut recovered = Recovered {
        next_lsn: after_lsn + 1,
        ..Recovered::default()
    };
    let mut expected: Option<u64> = None;
    for (i, (first_lsn, path)) in segments.iter().enumerate() {
        let bytes = std::fs::read(path).map_err(|e| io_error(path, e))?;
        let scan = record::scan(&bytes, Some(expected.unwrap_or(*first_lsn)));
        for found in &scan.records {
            if found.lsn > after_lsn {
                recovered.records.push(RecoveredRecord {
                    lsn: found.lsn,
                    kind: found.kind,
                    payload: bytes[found.payload.clone()].to_vec(),
                });
            }
        }
        let next = scan
            .records
            .last()
            .map_or(expected.unwrap_or(*first_lsn), |r| r.lsn + 1);
        match scan.end {
            End::Clean => {}
            End::Corrupt { offset, reason } => {
                return Err(JournalError::Corrupt {
                    path: path.clone(),
                    offset: offset as u64,
                    reason,
                })
            }
            End::Torn { offset } if i + 1 < segments.len() => {
                let reason = "a torn record before the last segment".to_string();
                return Err(JournalError::Corrupt {
                    path: path.clone(),
                    offset: offset as u64,
                    reason,
                });
            }
            End::Torn { offset } => {
                let file = OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(|e| io_error(path, e))?;
                file.set_len(offset as u64).map_err(|e| io_error(path, e))?;
                file.sync_all().map_err(|e| io_error(path, e))?;
                recovered.torn_tail = Some(TornTail {
                    path: path.clone(),
                    offset: offset as u64,
                    bytes: (bytes.len() - offset) as u64,
                });
            }
        }
        expected = Some(next);
    }
    recovered.next_lsn = recovered.next_lsn.max(expected.unwrap_or(1));
    Ok(recovered)
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

/// Reads every record of the journal in `dir`, in LSN order, without
/// changing anything (a torn tail is reported, not cut): for tools that
/// read a data directory offline, such as `omniroute replay`.
pub fn read(
    dir: &Path,
    mut visit: impl FnMut(u64, u8, &[u8]) -> Result<(), String>,
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
        let mut last_lsn = None;
        // Streamed: each record is visited as soon as its checksum passes,
        // so a reader on another thread is not left waiting while a whole
        // segment is checked first.
        let end = record::scan_each(&bytes, Some(expected.unwrap_or(*first_lsn)), |found| {
            if summary.records == 0 {
                summary.first_lsn = found.lsn;
            }
            summary.records += 1;
            last_lsn = Some(found.lsn);
            visit(found.lsn, found.kind, &bytes[found.payload.clone()]).map_err(|reason| {
                JournalError::Corrupt {
                    path: path.clone(),
                    offset: found.payload.start as u64,
                    reason,
                }
            })
        })?;
        let corrupt = |offset: usize, reason: String| JournalError::Corrupt {
            path: path.clone(),
            offset: offset as u64,
            reason,
        };
        match end {
            End::Clean => {}
            End::Corrupt { offset, reason } => return Err(corrupt(offset, reason)),
            End::Torn { offset } if i + 1 < segments.len() => {
                return Err(corrupt(
                    offset,
                    "a torn record before the last segment".into(),
                ))
            }
            End::Torn { .. } => summary.torn_tail = true,
        }
        expected = Some(last_lsn.map_or(expected.unwrap_or(*first_lsn), |lsn| lsn + 1));
    }
    Ok(summary)
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

/// Called with the LSN once the record is durable (or with the error).
pub type Done = Box<dyn FnOnce(Result<u64, JournalError>) + Send>;

/// A commit that failed: the callbacks to tell, and why.
type CommitFailed = (Vec<Done>, JournalError);

struct Append {
    /// None: a barrier, written as nothing; its `done` runs once all
    /// queued before it is durable.
    kind: Option<u8>,
    payload: Vec<u8>,
    done: Done,
    /// Its place in the queue, given back once the commit that takes it is
    /// durable: a journal with every place free has nothing in flight.
    slot: Slot,
}

/// A place in the journal's queue, taken before a record is built: async
/// code waits for one without parking its thread, and the append that
/// uses it never blocks.
pub struct Slot {
    _permit: tokio::sync::OwnedSemaphorePermit,
}

/// Counters of the writer, for metrics and the benchmarks.
#[derive(Default, Debug)]
pub struct JournalStats {
    pub commits: AtomicU64,
    pub records: AtomicU64,
    pub largest_commit: AtomicU64,
    pub fsync_us_total: AtomicU64,
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
}

/// Work for the spare thread.
enum SpareJob {
    /// Zero-fill and fsync the next segment.
    Prepare,
    /// Sync a segment the writer has left (off the writer's path; with
    /// `fsync` its data is already durable, with `none` nothing waits on it).
    Retire(File, PathBuf),
}

fn prepare_spare(dir: &Path, segment_bytes: u64) -> Result<(File, PathBuf), JournalError> {
    let path = dir.join(SPARE_NAME);
    let file = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(&path)
        .map_err(|e| io_error(&path, e))?;
    let zeros = vec![0u8; SPARE_CHUNK_BYTES];
    let mut written = 0u64;
    while written < segment_bytes {
        let n = (segment_bytes - written).min(SPARE_CHUNK_BYTES as u64) as usize;
        file.write_all_at(&zeros[..n], written)
            .map_err(|e| io_error(&path, e))?;
        written += n as u64;
        if written.is_multiple_of(SPARE_SYNC_EVERY_BYTES) {
            file.sync_data().map_err(|e| io_error(&path, e))?;
        }
    }
    file.sync_all().map_err(|e| io_error(&path, e))?;
    Ok((file, path))
}

fn run_spares(
    dir: PathBuf,
    segment_bytes: u64,
    jobs: crossbeam_channel::Receiver<SpareJob>,
    ready: crossbeam_channel::Sender<(File, PathBuf)>,
) {
    for job in jobs {
        match job {
            SpareJob::Prepare => match prepare_spare(&dir, segment_bytes) {
                Ok(spare) => {
                    if ready.send(spare).is_err() {
                        return;
                    }
                }
                // The writer falls back to creating segments as it goes.
                Err(e) => tracing::warn!("journal: cannot prepare the next segment: {e}"),
            },
            SpareJob::Retire(file, path) => {
                if let Err(e) = file.sync_all() {
                    tracing::warn!("journal: syncing {}: {e}", path.display());
                }
            }
        }
    }
}

struct Writer {
    dir: PathBuf,
    file: File,
    path: PathBuf,
    size: u64,
    next_lsn: u64,
    segment_bytes: u64,
    durability: Durability,
    stats: Arc<JournalStats>,
    fsync_seconds: metrics::Histogram,
    commit_records: metrics::Histogram,
    spare_jobs: crossbeam_channel::Sender<SpareJob>,
    spares: crossbeam_channel::Receiver<(File, PathBuf)>,
    /// Whether the current segment was prepared; a plain one (the first of
    /// a new directory, or one made when no spare was ready) is left as
    /// soon as a spare is.
    prepared: bool,
}

/// Opens the last segment (or a new one) at the end of its records: a
/// prepared segment is longer than what was written into it. Returns the
/// file, its path, where its records end, and whether it was prepared.
fn open_segment(dir: &Path, first_lsn: u64) -> Result<(File, PathBuf, u64, bool), JournalError> {
    let path = match segment_paths(dir)?.last() {
        Some((_, last)) => last.clone(),
        None => segment_path(dir, first_lsn),
    };
    let file = OpenOptions::new()
        .create(true)
        .read(true)
        .write(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| io_error(&path, e))?;
    let bytes = std::fs::read(&path).map_err(|e| io_error(&path, e))?;
    let size = record::scan(&bytes, None)
        .records
        .last()
        .map_or(0, |r| r.payload.end as u64);
    sync_dir(dir)?;
    Ok((file, path, size, bytes.len() as u64 > size))
}

/// A new file's name is durable only once its directory is fsynced.
fn sync_dir(dir: &Path) -> Result<(), JournalError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error(dir, e))
}

impl Writer {
    fn commit(
        &mut self,
        batch: Vec<Append>,
        buffer: &mut Vec<u8>,
    ) -> Result<Vec<(Done, u64)>, CommitFailed> {
        buffer.clear();
        let mut acks = Vec::with_capacity(batch.len());
        let mut slots = Vec::with_capacity(batch.len());
        let mut records = 0;
        for append in batch {
            slots.push(append.slot);
            let Some(kind) = append.kind else {
                // Durable with everything before it: the last LSN so far.
                acks.push((append.done, self.next_lsn - 1));
                continue;
            };
            record::encode(kind, self.next_lsn, &append.payload, buffer);
            acks.push((append.done, self.next_lsn));
            self.next_lsn += 1;
            records += 1;
        }
        let fail = |acks: Vec<(Done, u64)>, error| {
            (acks.into_iter().map(|(d, _)| d).collect::<Vec<_>>(), error)
        };
        if records == 0 {
            // Barriers only: everything before them is durable already.
            return Ok(acks);
        }
        if let Err(e) = self.file.write_all_at(buffer, self.size) {
            return Err(fail(acks, io_error(&self.path, e)));
        }
        if self.durability == Durability::Fsync {
            let started = std::time::Instant::now();
            if let Err(e) = self.file.sync_data() {
                return Err(fail(acks, io_error(&self.path, e)));
            }
            let elapsed = started.elapsed();
            self.stats
                .fsync_us_total
                .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
            self.fsync_seconds.record(elapsed.as_secs_f64());
        }
        drop(slots);
        self.commit_records.record(records as f64);
        self.size += buffer.len() as u64;
        self.stats.commits.fetch_add(1, Ordering::Relaxed);
        self.stats.records.fetch_add(records, Ordering::Relaxed);
        self.stats
            .largest_commit
            .fetch_max(records, Ordering::Relaxed);
        if self.size >= self.segment_bytes || (!self.prepared && !self.spares.is_empty()) {
            self.rotate().map_err(|e| fail(Vec::new(), e))?;
        }
        Ok(acks)
    }

    fn rotate(&mut self) -> Result<(), JournalError> {
        let path = segment_path(&self.dir, self.next_lsn);
        let (file, prepared) = match self.spares.try_recv() {
            Ok((file, spare)) => {
                std::fs::rename(&spare, &path).map_err(|e| io_error(&path, e))?;
                (file, true)
            }
            // Not ready (a burst outran the spare thread): a plain file.
            Err(_) => {
                let file = OpenOptions::new()
                    .create(true)
                    .write(true)
                    .truncate(false)
                    .open(&path)
                    .map_err(|e| io_error(&path, e))?;
                (file, false)
            }
        };
        self.prepared = prepared;
        let old = std::mem::replace(&mut self.file, file);
        let old_path = std::mem::replace(&mut self.path, path);
        self.size = 0;
        sync_dir(&self.dir)?;
        let _ = self.spare_jobs.send(SpareJob::Retire(old, old_path));
        if prepared {
            let _ = self.spare_jobs.send(SpareJob::Prepare);
        }
        Ok(())
    }

    fn run(
        mut self,
        queue: crossbeam_channel::Receiver<Append>,
        paused: Arc<std::sync::Mutex<()>>,
    ) {
        let mut buffer = Vec::with_capacity(1 << 20);
        while let Ok(first) = queue.recv() {
            let mut batch = vec![first];
            // Uncontended but for a test's pause: one atomic per commit.
            let pause = paused.lock().unwrap_or_else(|e| e.into_inner());
            batch.extend(queue.try_iter().take(MAX_RECORDS_PER_COMMIT - 1));
            let committed = self.commit(batch, &mut buffer);
            drop(pause);
            match committed {
                Ok(acks) => acks.into_iter().for_each(|(done, lsn)| done(Ok(lsn))),
                Err((dones, error)) => {
                    // A failed write or fsync is never retried: the kernel may
                    // have dropped the dirty pages. Everything after fails too.
                    tracing::error!("journal writer stopped: {error}");
                    dones.into_iter().for_each(|done| done(Err(error.clone())));
                    queue
                        .iter()
                        .for_each(|a| (a.done)(Err(JournalError::Stopped)));
                    return;
                }
            }
        }
    }
}

impl Journal {
    /// Starts the writer on `dir`, appending from `next_lsn` (what
    /// [`recover`] returned). Creates the directory if needed.
    pub fn start(
        dir: &Path,
        next_lsn: u64,
        durability: Durability,
        segment_bytes: u64,
    ) -> Result<Journal, JournalError> {
        std::fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;
        let (file, path, size, prepared) = open_segment(dir, next_lsn)?;
        let stats = Arc::new(JournalStats::default());
        let segment_bytes = segment_bytes.max(1);
        let (spare_jobs, jobs) = crossbeam_channel::unbounded();
        let (ready, spares) = crossbeam_channel::bounded(1);
        let spare_dir = dir.to_path_buf();
        let spare_thread = std::thread::Builder::new()
            .name("journal-spare".into())
            .spawn(move || run_spares(spare_dir, segment_bytes, jobs, ready))
            .map_err(|e| io_error(dir, e))?;
        let _ = spare_jobs.send(SpareJob::Prepare);
        let writer = Writer {
            dir: dir.to_path_buf(),
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
        })
    }

    /// Waits, without blocking the thread, for a place in the queue while
    /// `MAX_PENDING_APPENDS` records are queued (backpressure).
    pub async fn reserve(&self) -> Slot {
        let slots = self.slots.clone();
        // Never closed: the semaphore lives as long as the journal.
        let permit = slots.acquire_owned().await;
        Slot {
            _permit: permit.expect("journal slots are never closed"),
        }
    }

    /// A place in the queue if one is free now; never waits.
    pub fn try_reserve(&self) -> Option<Slot> {
        let permit = self.slots.clone().try_acquire_owned().ok()?;
        Some(Slot { _permit: permit })
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
        if payload.len() > record::MAX_RECORD_PAYLOAD_BYTES {
            return Err(JournalError::TooLarge(payload.len()));
        }
        self.queue_append(slot, Some(kind), payload, done)
    }

    /// Holds the writer before its next commit until the guard is dropped,
    /// so that what is appended meanwhile stays in flight: for tests of
    /// what waits for durability. Blocks while a commit is under way.
    pub fn pause(&self) -> std::sync::MutexGuard<'_, ()> {
        self.paused.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether nothing is queued, being written or about to be: every
    /// record appended so far is durable.
    pub fn quiet(&self) -> bool {
        self.slots.available_permits() == MAX_PENDING_APPENDS
    }

    /// Queues a barrier in `slot`: nothing is written, and `done` runs on
    /// the writer thread once every record queued before it is durable.
    pub fn barrier_in(&self, slot: Slot, done: Done) -> Result<(), JournalError> {
        self.queue_append(slot, None, Vec::new(), done)
    }

    fn queue_append(
        &self,
        slot: Slot,
        kind: Option<u8>,
        payload: Vec<u8>,
        done: Done,
    ) -> Result<(), JournalError> {
        let queue = self.queue.read().expect("journal queue lock");
        let append = Append {
            kind,
            payload,
            done,
            slot,
        };
        // A slot guarantees room: this send does not wait.
        queue
            .as_ref()
            .ok_or(JournalError::Stopped)?
            .send(append)
            .map_err(|_| JournalError::Stopped)
    }

    /// [`Journal::reserve`] and [`Journal::append_in`] for a plain thread
    /// (never a tokio worker): blocks while the queue is full.
    pub fn append(&self, kind: u8, payload: Vec<u8>, done: Done) -> Result<(), JournalError> {
        let slot = futures::executor::block_on(self.reserve());
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
