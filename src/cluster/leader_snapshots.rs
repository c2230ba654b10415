//! A leader's snapshots. While a replica leads, its apply thread holds no
//! state (the engine took it), so the engine snapshots as a single node's
//! does: each actor imaged at a marker of its own and written in place
//! into the snapshot set in use, the journal kept. The driver then says
//! which entry every actor holds (the last one wholly at or below the
//! lowest label), that point is written last, and the log before it may
//! be compacted (docs/RAFT-SNAPSHOTS.md, 3.2).
//!
//! Until the point is written, the set's old point still holds: every
//! actor file, old or new, is labelled at or after it, and a start
//! applies the log after the old point to the actors older than each
//! record, as recovery does.
//!
//! Nothing else writes the set meanwhile: the apply thread has no state
//! while the engine serves, a step-down waits for this loop to end
//! ([`LeaderSnapshots::stop`]) before it rebuilds from the set, and the
//! driver installs no set from a new leader until then
//! ([`SnapshotSets::engine_snapshots`]).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use tokio::sync::Notify;

use crate::engine::Engine;
use crate::journal::Journal;
use crate::replica::driver::Event;
use crate::replica::local_snapshot::SnapshotSets;
use crate::replica::raft_point::{self, RaftPoint};
use crate::replica::snapshot_files;
use crate::schema::Layout;
use crate::store::{self, SnapshotDue, StoreSettings};

/// How long a step-down waits for a snapshot under way to end before it
/// gives up on the replica (its set could be written to while rebuilt).
const STOP_TIMEOUT_MS: u64 = 60_000;

/// The snapshot loop of one leader term.
pub(super) struct LeaderSnapshots {
    stop: Arc<Notify>,
    stopping: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
    sets: Arc<SnapshotSets>,
}

impl LeaderSnapshots {
    /// Snapshots `engine` into the set of `dir` whenever `settings` say
    /// one is due, counted on the replica's journal `storage`.
    pub(super) fn start(
        engine: Engine,
        dir: PathBuf,
        settings: StoreSettings,
        layout: Layout,
        storage: Arc<Journal>,
        events: Sender<Event>,
        sets: Arc<SnapshotSets>,
    ) -> LeaderSnapshots {
        sets.engine_snapshots(true);
        let stop = Arc::new(Notify::new());
        let stopping = Arc::new(AtomicBool::new(false));
        let stopped = Stop {
            notify: stop.clone(),
            stopping: stopping.clone(),
        };
        let writer = Writer {
            engine,
            dir,
            layout,
            events,
            sets: sets.clone(),
        };
        let task = tokio::spawn(run(writer, settings, storage, stopped));
        LeaderSnapshots {
            stop,
            stopping,
            task,
            sets,
        }
    }

    /// Asks the loop to end: a snapshot under way that fails from now on
    /// (the engine is stopped under it) is not a fault.
    pub(super) fn stopping(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.stop.notify_one();
    }

    /// Ends the loop once a snapshot under way is done; an error if it
    /// does not end in time.
    pub(super) async fn stop(mut self) -> Result<(), String> {
        self.stopping();
        let wait = Duration::from_millis(STOP_TIMEOUT_MS);
        match tokio::time::timeout(wait, &mut self.task).await {
            Ok(_) => {
                self.sets.engine_snapshots(false);
                Ok(())
            }
            Err(_) => {
                // Not left running on its own (its blocking writes end
                // when they end; no point follows them: the driver is
                // asked through the loop, which is gone).
                self.task.abort();
                Err(format!(
                    "the leader's snapshot did not end within {STOP_TIMEOUT_MS} ms of the step-down"
                ))
            }
        }
    }
}

/// The loop's side of [`LeaderSnapshots::stop`].
struct Stop {
    notify: Arc<Notify>,
    stopping: Arc<AtomicBool>,
}

/// What a snapshot is taken of, where it goes, and whom it is told.
struct Writer {
    engine: Engine,
    dir: PathBuf,
    /// The configured shards and routers, written with the set's first
    /// snapshot (a new replica's set has no layout yet).
    layout: Layout,
    events: Sender<Event>,
    sets: Arc<SnapshotSets>,
}

async fn run(writer: Writer, settings: StoreSettings, storage: Arc<Journal>, stop: Stop) {
    let mut due = SnapshotDue::new(storage.stats.clone(), &settings);
    while due.wait(&stop.notify).await {
        let started = Instant::now();
        match writer.snapshot().await {
            Ok(Some(point)) => tracing::info!(
                "replica snapshot at entry {} (LSN {}): written in {} ms",
                point.index,
                point.next_lsn - 1,
                started.elapsed().as_millis()
            ),
            Ok(None) => {}
            // A step-down stops the engine under it: not a fault.
            Err(_) if stop.stopping.load(Ordering::SeqCst) => return,
            // Said, and tried again when the next is due, as a follower
            // does: the log is kept whole meanwhile, so nothing is lost,
            // and a leadership lost under it fails its markers (not the
            // disk). A disk that cannot write stops the journal anyway.
            Err(e) => tracing::error!("replica snapshot: {e}; the log is kept whole"),
        }
        due.taken();
    }
}

impl Writer {
    /// One snapshot: the actors written, the driver asked for their point,
    /// the point written, the driver told to compact. `None`: no entry is
    /// wholly held yet (or the driver's inbox is full, or it stopped).
    async fn snapshot(&self) -> Result<Option<RaftPoint>, String> {
        // A flag others skip their turn on, never waited for.
        let Some(_hold) = self.sets.try_hold() else {
            return Ok(None);
        };
        let snapped = store::snapshot(&self.engine, &self.dir, true)
            .await
            .map_err(|e| e.to_string())?;
        let (reply, point) = tokio::sync::oneshot::channel();
        // Never waits on a full inbox (a tokio worker runs this): the set's
        // old point holds until the next snapshot.
        let asked = Event::PointThrough(snapped.lsn, reply);
        if self.events.try_send(asked).is_err() {
            return Ok(None);
        }
        let Ok(Some(point)) = point.await else {
            return Ok(None);
        };
        let (dir, layout, written) = (self.dir.clone(), self.layout, point.clone());
        let descriptor = tokio::task::spawn_blocking(move || {
            write_point(&dir, layout, &written)?;
            snapshot_files::pin(&dir, &written)
        })
        .await
        .map_err(|e| e.to_string())??;
        let pinned = Event::Pinned(Box::new(point.clone()), descriptor.encode());
        let _ = self.events.try_send(pinned);
        Ok(Some(point))
    }
}

/// Writes `point` into the set in use, last (with the set's layout first
/// if it has none yet).
fn write_point(dir: &std::path::Path, layout: Layout, point: &RaftPoint) -> Result<(), String> {
    let set = store::snapshot_dir(dir);
    if store::layout::read_layout(dir)
        .map_err(|e| e.to_string())?
        .is_none()
    {
        store::layout::write_layout(&set, layout).map_err(|e| e.to_string())?;
    }
    raft_point::write(&set, point).map_err(|e| e.to_string())
}
