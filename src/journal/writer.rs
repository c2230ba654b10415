//! The writer thread: takes queued appends, writes a commit's records at
//! once, one fsync (group commit), then runs each record's continuation in
//! LSN order.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::fault::Fault;
use super::handle::{
    Append, CommitFailed, Done, JournalStats, Work, MAX_RECORDS_PER_COMMIT, MAX_UNSYNCED_BYTES,
    UNVOUCHED_LINGER_US,
};
use super::record::{self};
use super::segment_header::SEGMENT_HEADER_BYTES;
use super::segments::{open_segment, plain_segment, remove_all_segments, segment_path, SpareJob};
use super::truncate::truncate_from;
use super::{io_error, Durability, JournalError};
use crate::faults::{self, points};

pub(super) struct Writer {
    pub(super) dir: PathBuf,
    /// The journal directory, open for the writer's life: its fsync after
    /// a rotation needs no new descriptor.
    pub(super) dir_file: File,
    /// Raised at the first failed write, fsync or rotation (or by the
    /// snapshot path): no commit is written after it.
    pub(super) fault: Arc<Fault>,
    pub(super) file: File,
    pub(super) path: PathBuf,
    pub(super) size: u64,
    pub(super) next_lsn: u64,
    pub(super) segment_bytes: u64,
    pub(super) durability: Durability,
    pub(super) stats: Arc<JournalStats>,
    pub(super) fsync_seconds: metrics::Histogram,
    pub(super) commit_records: metrics::Histogram,
    pub(super) spare_jobs: crossbeam_channel::Sender<SpareJob>,
    pub(super) spares: crossbeam_channel::Receiver<(File, PathBuf)>,
    /// Whether the current segment was prepared; a plain one (the first of
    /// a new directory, or one made when no spare was ready) is left as
    /// soon as a spare is.
    pub(super) prepared: bool,
    /// Bytes written by commits of unvouched records only, not fsynced
    /// yet: the next vouched commit's fsync, a rotation, the close, or
    /// their passing `MAX_UNSYNCED_BYTES` makes them durable.
    pub(super) unsynced_bytes: u64,
}

impl Writer {
    /// Writes one commit; the acks to run once it is durable, or, if it
    /// failed, the callbacks to tell. The fault is raised before the
    /// commit's slots are given back: no reader finds the journal quiet
    /// and healthy while what it answered from is not on disk.
    fn commit(
        &mut self,
        batch: Vec<Append>,
        buffer: &mut Vec<u8>,
    ) -> Result<Vec<(Done, u64)>, CommitFailed> {
        buffer.clear();
        let mut acks = Vec::with_capacity(batch.len());
        let mut slots = Vec::with_capacity(batch.len());
        let mut records = 0;
        let vouched = batch.iter().any(Append::vouched);
        for append in batch {
            slots.push(append.slot);
            acks.push((append.done, self.next_lsn));
            match append.work {
                Work::Record(kind, payload) => {
                    record::encode(kind, self.next_lsn, &payload, buffer);
                    self.next_lsn += 1;
                    records += 1;
                }
                Work::Group(group) => {
                    for (kind, payload) in group {
                        record::encode(kind, self.next_lsn, &payload, buffer);
                        self.next_lsn += 1;
                        records += 1;
                    }
                }
                // Durable with everything before it: the last LSN so far.
                Work::Barrier => acks.last_mut().expect("pushed").1 -= 1,
                Work::Cut(_) | Work::Reset(_) => unreachable!("a cut is made between commits"),
            }
        }
        let written = match self.fault.error() {
            // Raised elsewhere (the snapshot path, the spare thread).
            Some(error) => Err(error),
            None => self.write_commit(buffer, records, vouched),
        };
        if let Err(error) = written {
            self.fault.raise(error.clone());
            drop(slots);
            return Err((acks.into_iter().map(|(d, _)| d).collect(), error));
        }
        // The commit is durable: its callers are answered even if the
        // rotation after it fails, which stops every commit after it.
        if self.size >= self.segment_bytes || (!self.prepared && !self.spares.is_empty()) {
            // Only the last segment may end torn: the one left is synced.
            if let Err(error) = self.sync_unvouched().and_then(|()| self.rotate()) {
                self.fault.raise(error);
            }
        }
        drop(slots);
        Ok(acks)
    }

    /// Writes a commit's encoded records and fsyncs them if an answer
    /// waits on them, or if unvouched bytes left unsynced pass
    /// `MAX_UNSYNCED_BYTES`.
    fn write_commit(
        &mut self,
        buffer: &[u8],
        records: u64,
        vouched: bool,
    ) -> Result<(), JournalError> {
        if records == 0 && self.unsynced_bytes == 0 {
            // Barriers only: everything before them is durable already.
            return Ok(());
        }
        let (file, path) = (&self.file, &self.path);
        faults::io(points::JOURNAL_WRITE, || {
            file.write_all_at(buffer, self.size)
        })
        .map_err(|e| io_error(path, e))?;
        let unsynced_bytes = self.unsynced_bytes + buffer.len() as u64;
        if vouched || unsynced_bytes > MAX_UNSYNCED_BYTES {
            self.sync()?;
        } else {
            self.unsynced_bytes = unsynced_bytes;
        }
        self.commit_records.record(records as f64);
        self.size += buffer.len() as u64;
        self.stats.commits.fetch_add(1, Ordering::Relaxed);
        let written = self.stats.records.fetch_add(records, Ordering::SeqCst) + records;
        self.stats.mark.reached(written);
        self.stats
            .largest_commit
            .fetch_max(records, Ordering::Relaxed);
        Ok(())
    }

    /// Makes durable what unvouched commits wrote, if anything.
    fn sync_unvouched(&mut self) -> Result<(), JournalError> {
        if self.unsynced_bytes > 0 {
            self.sync()?;
        }
        Ok(())
    }

    /// Fsyncs the segment (unless durability is none), timed and counted.
    fn sync(&mut self) -> Result<(), JournalError> {
        if self.durability != Durability::Fsync {
            self.unsynced_bytes = 0;
            return Ok(());
        }
        let (file, path) = (&self.file, &self.path);
        let started = std::time::Instant::now();
        faults::io(points::JOURNAL_FSYNC, || file.sync_data()).map_err(|e| io_error(path, e))?;
        self.unsynced_bytes = 0;
        let elapsed = started.elapsed();
        self.stats.fsyncs.fetch_add(1, Ordering::Relaxed);
        self.stats
            .fsync_us_total
            .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
        self.fsync_seconds.record(elapsed.as_secs_f64());
        Ok(())
    }

    /// Leaves a full segment for the next: the prepared spare renamed into
    /// place, or a plain new file. Needs no new descriptor when a spare is
    /// ready (the directory's is held open), so a daemon short of file
    /// descriptors still rotates.
    fn rotate(&mut self) -> Result<(), JournalError> {
        let path = segment_path(&self.dir, self.next_lsn);
        let (file, prepared) = match self.spares.try_recv() {
            Ok((file, spare)) => {
                faults::io(points::JOURNAL_RENAME, || std::fs::rename(&spare, &path))
                    .map_err(|e| io_error(&path, e))?;
                (file, true)
            }
            // Not ready (a burst outran the spare thread): one made now.
            Err(_) => {
                let (file, plain) = plain_segment(&self.dir, self.segment_bytes)?;
                faults::io(points::JOURNAL_RENAME, || std::fs::rename(&plain, &path))
                    .map_err(|e| io_error(&path, e))?;
                (file, false)
            }
        };
        let dir_file = &self.dir_file;
        faults::io(points::JOURNAL_DIR_FSYNC, || dir_file.sync_all())
            .map_err(|e| io_error(&self.dir, e))?;
        // The next segment is in place: only now may the old one say the
        // journal goes on there (a crash before leaves it unsealed and the
        // new one empty, which recovery reads as the end it is).
        self.seal()?;
        self.prepared = prepared;
        let old = std::mem::replace(&mut self.file, file);
        let old_path = std::mem::replace(&mut self.path, path);
        self.size = SEGMENT_HEADER_BYTES as u64;
        // Synced by the spare thread, with the segment's last records.
        let _ = self.spare_jobs.send(SpareJob::Retire(old, old_path));
        if prepared {
            let _ = self.spare_jobs.send(SpareJob::Prepare);
        }
        Ok(())
    }

    /// Appends the seal to the current segment: the next LSN, taken by no
    /// record of its own (see [`record::KIND_SEAL`]).
    fn seal(&mut self) -> Result<(), JournalError> {
        let mut seal = Vec::with_capacity(record::RECORD_HEADER_BYTES);
        record::encode(record::KIND_SEAL, self.next_lsn, &[], &mut seal);
        let (file, size) = (&self.file, self.size);
        faults::io(points::JOURNAL_WRITE, || file.write_all_at(&seal, size))
            .map_err(|e| io_error(&self.path, e))
    }

    /// Commits `batch` in order, each cut made between two commits; a
    /// part's callers are told as soon as it is durable, so what waits on
    /// a barrier before a cut runs before the cut. On a failure, the
    /// callbacks of the part that failed and of every part after it.
    fn write_batch(
        &mut self,
        batch: Vec<Append>,
        buffer: &mut Vec<u8>,
        paused: &std::sync::Mutex<()>,
    ) -> Result<(), CommitFailed> {
        let mut rest = batch.into_iter().peekable();
        while rest.peek().is_some() {
            let part: Vec<Append> =
                std::iter::from_fn(|| rest.next_if(|a| !a.work.between_commits())).collect();
            let failed = if part.is_empty() {
                let cut = rest.next().expect("a cut is next");
                let pause = paused.lock().unwrap_or_else(|e| e.into_inner());
                let made = match cut.work {
                    Work::Cut(lsn) => self.cut(lsn),
                    Work::Reset(lsn) => self.reset(lsn),
                    _ => unreachable!("matched a cut"),
                };
                drop(pause);
                match made {
                    Ok(()) => {
                        (cut.done)(Ok(self.next_lsn));
                        continue;
                    }
                    Err(error) => (vec![cut.done], error),
                }
            } else {
                // Uncontended but for a test's pause: one atomic per commit.
                let pause = paused.lock().unwrap_or_else(|e| e.into_inner());
                let committed = self.commit(part, buffer);
                drop(pause);
                match committed {
                    Ok(acks) => {
                        acks.into_iter().for_each(|(done, lsn)| done(Ok(lsn)));
                        continue;
                    }
                    Err(failed) => failed,
                }
            };
            let (mut dones, error) = failed;
            dones.extend(rest.map(|a| a.done));
            return Err((dones, error));
        }
        Ok(())
    }

    /// Removes every record from `lsn` on and writes on from there, as a
    /// start after recovery would. A cut at or past the end is nothing.
    fn cut(&mut self, lsn: u64) -> Result<(), JournalError> {
        if let Some(error) = self.fault.error() {
            return Err(error);
        }
        if lsn >= self.next_lsn {
            return Ok(());
        }
        let started = std::time::Instant::now();
        let cut = self
            .sync_unvouched()
            .and_then(|()| truncate_from(&self.dir, lsn))
            .and_then(|_| open_segment(&self.dir, lsn, self.segment_bytes));
        tracing::info!(
            "journal: records from LSN {lsn} on removed (a replica's log overwritten by its leader) in {} ms",
            started.elapsed().as_millis()
        );
        self.write_on_at(cut, lsn)
    }

    /// Writes on at `lsn` in the segment a cut or reset `opened`; a
    /// failure stops the journal.
    fn write_on_at(
        &mut self,
        opened: Result<(File, PathBuf, u64, bool), JournalError>,
        lsn: u64,
    ) -> Result<(), JournalError> {
        let (file, path, size, prepared) = match opened {
            Ok(opened) => opened,
            Err(error) => {
                self.fault.raise(error.clone());
                return Err(error);
            }
        };
        self.file = file;
        self.path = path;
        self.size = size;
        self.prepared = prepared;
        self.next_lsn = lsn;
        Ok(())
    }

    /// Removes every segment and writes on at `lsn` in a new one: the
    /// replica's snapshot set now holds everything before it.
    fn reset(&mut self, lsn: u64) -> Result<(), JournalError> {
        if let Some(error) = self.fault.error() {
            return Err(error);
        }
        let reset = self
            .sync_unvouched()
            .and_then(|()| remove_all_segments(&self.dir))
            .and_then(|_| open_segment(&self.dir, lsn, self.segment_bytes));
        if reset.is_ok() {
            tracing::info!("journal: every segment removed; the next record is LSN {lsn}");
        }
        self.write_on_at(reset, lsn)
    }

    pub(super) fn run(
        mut self,
        queue: crossbeam_channel::Receiver<Append>,
        paused: Arc<std::sync::Mutex<()>>,
    ) {
        let mut buffer = Vec::with_capacity(1 << 20);
        while let Ok(first) = queue.recv() {
            let mut batch = vec![first];
            linger_while_unvouched(&queue, &mut batch);
            let mut records: usize = batch.iter().map(Append::records).sum();
            while records < MAX_RECORDS_PER_COMMIT {
                let Ok(append) = queue.try_recv() else {
                    break;
                };
                records += append.records();
                batch.push(append);
            }
            let written = self.write_batch(batch, &mut buffer, &paused);
            match written {
                Ok(()) => {
                    if let Some(error) = self.fault.error() {
                        // A rotation failed after a durable commit, or the
                        // fault came from elsewhere: nothing more is written.
                        queue.iter().for_each(|a| (a.done)(Err(error.clone())));
                        return;
                    }
                }
                Err((dones, error)) => {
                    // A failed write or fsync is never retried: the kernel may
                    // have dropped the dirty pages. Everything after fails
                    // too, and the fault (raised by `commit`) stops the daemon.
                    dones.into_iter().for_each(|done| done(Err(error.clone())));
                    queue
                        .iter()
                        .for_each(|a| (a.done)(Err(JournalError::Stopped)));
                    return;
                }
            }
        }
        if self.fault.is_raised() {
            return;
        }
        if let Err(error) = self.sync_unvouched() {
            self.fault.raise(error);
        }
    }
}

/// Gathers more appends while all taken are unvouched, for at most
/// `UNVOUCHED_LINGER_US`; a vouched one ends the wait at once.
fn linger_while_unvouched(queue: &crossbeam_channel::Receiver<Append>, batch: &mut Vec<Append>) {
    let deadline =
        std::time::Instant::now() + std::time::Duration::from_micros(UNVOUCHED_LINGER_US);
    if batch.iter().any(Append::vouched) {
        return;
    }
    while batch.len() < MAX_RECORDS_PER_COMMIT {
        let Ok(append) = queue.recv_deadline(deadline) else {
            return;
        };
        let vouched = append.vouched();
        batch.push(append);
        if vouched {
            return;
        }
    }
}
