//! A replica's state while it does not lead: one thread applies the
//! committed log, in order, to an [`EngineState`] of its own, exactly as
//! recovery replays a journal (a follower is a recovery that never ends).
//! It reads the entries from raft-rs's log (shared, not copied) up to the
//! index the driver has applied, so nothing is queued twice and the
//! driver never waits on it.
//!
//! It starts from the replica's snapshot set (`local_snapshot`), or an
//! empty state without one, and writes a new set now and then (which lets
//! the driver compact the log before it).
//!
//! Promotion takes the state (`hand_over`): the leader's engine starts on
//! it. A step-down gives nothing back, since the engine's memory is ahead
//! of the commit point: `rebuild` starts again from the snapshot set and
//! the committed log after it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use raft::eraftpb::Entry;
use raft::{GetEntriesContext, Storage};

use super::entry::body_records;
use super::local_snapshot::{self, LocalSnapshots};
use super::raft_point::RaftPoint;
use super::storage::ReplicaStorage;
use crate::core::network::Network;
use crate::engine::{EngineSettings, EngineState};
use crate::schema::txn::KIND_MARKER;
use crate::store::apply::{apply_payload, Applied};

/// Entries read from the log under one lock at most.
const ENTRIES_PER_READ: u64 = 256;

/// The payload of the marker record a new cluster's first leader appends
/// once the config's stock is committed: a leader promoted on a log
/// without it loads the stock (again: setting a count twice is setting it
/// once), since the one before may have died part way.
pub const STOCK_LOADED: &[u8] = b"cluster: the config's stock is loaded";

/// A state handed over at promotion.
pub struct HandedOver {
    pub state: EngineState,
    /// The log has no [`STOCK_LOADED`] marker: the cluster is new (or its
    /// first leader died while loading), and this leader loads the stock.
    pub fresh: bool,
}

enum Control {
    HandOver(
        u64,
        tokio::sync::oneshot::Sender<Result<HandedOver, String>>,
    ),
    Rebuild,
    /// A set received from the leader is in place: start from it.
    Restore,
    Stop,
}

/// The apply thread's handle.
pub struct Follower {
    control: Sender<Control>,
    wake: Sender<()>,
    /// The index the driver has applied through (the apply thread's bound).
    applied: Arc<AtomicU64>,
    /// Sets being installed from the leader that the thread has not
    /// started from yet: meanwhile the log may start past what it applied.
    restores: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The apply thread's own state.
struct Applier {
    log: ReplicaStorage,
    settings: EngineSettings,
    network: Arc<Network>,
    state: Option<EngineState>,
    /// How far `state` has applied (or had, when it was handed over).
    point: ApplyPoint,
    /// The LSN each actor of `state` held when it was loaded: the records
    /// applied after the set are applied to those older than them.
    filter: Applied,
    snapshots: Option<LocalSnapshots>,
    /// When the last snapshot set was written or loaded (after a load,
    /// put off by this replica's phase), the `next_lsn` it was at, and the
    /// records the next is put off by (the phase, until one is written).
    last_snapshot: (Instant, u64, u64),
    /// The log applied so far holds the [`STOCK_LOADED`] marker.
    stock_loaded: bool,
    failed: Option<String>,
    on_failure: Box<dyn Fn(String) + Send>,
    /// [`Follower::restores`].
    restores: Arc<AtomicU64>,
}

impl Follower {
    /// Starts the apply thread on `log`, from the snapshot set `snapshots`
    /// names (if any, and it has one: else an empty state); `on_failure`
    /// is told once if an entry does not apply or the set does not load
    /// (the replica must stop: its state is no longer the log's).
    pub fn start(
        log: ReplicaStorage,
        settings: EngineSettings,
        network: Arc<Network>,
        snapshots: Option<LocalSnapshots>,
        on_failure: Box<dyn Fn(String) + Send>,
    ) -> Follower {
        let (control, control_rx) = crossbeam_channel::unbounded();
        let (wake, wake_rx) = crossbeam_channel::bounded(1);
        let applied = Arc::new(AtomicU64::new(0));
        let restores = Arc::new(AtomicU64::new(0));
        let mut applier = Applier {
            log,
            settings,
            network,
            state: None,
            point: ApplyPoint::START,
            // Set by `reset`, before anything is applied.
            filter: Applied::default(),
            snapshots,
            last_snapshot: (Instant::now(), 1, 0),
            stock_loaded: false,
            failed: None,
            on_failure,
            restores: restores.clone(),
        };
        let bound = applied.clone();
        let thread = std::thread::Builder::new()
            .name("replica-apply".into())
            .spawn(move || {
                applier.reset();
                applier.run(&control_rx, &wake_rx, &bound)
            })
            .expect("spawn the apply thread");
        Follower {
            control,
            wake,
            applied,
            restores,
            thread: Some(thread),
        }
    }

    /// A set received from the leader is being installed: the log is about
    /// to start after it, past what the thread may have applied. Told
    /// before the log is cut.
    pub fn restoring(&self) {
        self.restores.fetch_add(1, Ordering::AcqRel);
    }

    /// The set is in place and holds the log through `index`: the thread
    /// starts from it (told before the bound is raised past it).
    pub fn restored(&self, index: u64) {
        let _ = self.control.send(Control::Restore);
        self.applied(index);
    }

    /// The driver has applied every entry up to `index`: never waits.
    pub fn applied(&self, index: u64) {
        self.applied.fetch_max(index, Ordering::AcqRel);
        let _ = self.wake.try_send(());
    }

    /// The state with every entry up to `through` applied, once it is.
    pub async fn hand_over(&self, through: u64) -> Result<HandedOver, String> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.control
            .send(Control::HandOver(through, reply))
            .map_err(|_| "the apply thread has stopped".to_string())?;
        answer
            .await
            .map_err(|_| "the apply thread has stopped".to_string())?
    }

    /// Starts again from the snapshot set and the committed log after it.
    pub fn rebuild(&self) {
        let _ = self.control.send(Control::Rebuild);
    }
}

/// How far a state has applied its log: the last entry applied, and the
/// LSN its successor's header has in the journal. Every replica numbers
/// the records it journals alike (`entry::body_records`), so a record is
/// applied at the LSN its journal gave it: the LSN a snapshot's labels
/// are compared with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApplyPoint {
    pub index: u64,
    pub next_lsn: u64,
}

impl ApplyPoint {
    /// Nothing applied: entry 1's header is the journal's first record.
    pub const START: ApplyPoint = ApplyPoint {
        index: 0,
        next_lsn: 1,
    };
}

/// Applies `log`'s entries after `point` up to `to` to `state` (to the
/// actors `filter` says are older than each record), a few hundred per
/// read, moving `point` past each one applied; whether any held the
/// [`STOCK_LOADED`] marker.
pub(crate) fn apply_log(
    log: &ReplicaStorage,
    state: &mut EngineState,
    filter: &Applied,
    point: &mut ApplyPoint,
    to: u64,
) -> Result<bool, String> {
    let mut stock_loaded = false;
    while point.index < to {
        let (low, high) = (
            point.index + 1,
            (point.index + 1 + ENTRIES_PER_READ).min(to + 1),
        );
        let context = GetEntriesContext::empty(false);
        let entries = (log.entries(low, high, u64::MAX, context))
            .map_err(|e| format!("entries {low}..{high}: {e}"))?;
        for entry in entries {
            let (loaded, records) = apply_entry(state, filter, point.next_lsn, &entry)
                .map_err(|e| format!("entry {}: {e}", entry.index))?;
            stock_loaded |= loaded;
            *point = ApplyPoint {
                index: entry.index,
                next_lsn: point.next_lsn + 1 + records,
            };
        }
    }
    Ok(stock_loaded)
}

/// Applies a committed entry, whose header is journaled at `header_lsn`,
/// to `state`, each record at the LSN after it (to the actors `filter`
/// says are older): whether it holds the [`STOCK_LOADED`] marker, and how
/// many records it has.
pub(crate) fn apply_entry(
    state: &mut EngineState,
    filter: &Applied,
    header_lsn: u64,
    entry: &Entry,
) -> Result<(bool, u64), String> {
    let records = body_records(entry).map_err(|e| e.to_string())?;
    let mut bumped = Vec::new();
    let mut stock_loaded = false;
    for (lsn, (kind, range)) in (header_lsn + 1..).zip(&records) {
        let payload = &entry.data[range.clone()];
        stock_loaded |= *kind == KIND_MARKER && payload == STOCK_LOADED;
        apply_payload(*kind, payload, lsn, state, filter, &mut bumped)
            .map_err(|e| e.to_string())?;
    }
    Ok((stock_loaded, records.len() as u64))
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.control.send(Control::Stop);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Applier {
    fn run(&mut self, control: &Receiver<Control>, wake: &Receiver<()>, bound: &AtomicU64) {
        loop {
            // Control first: a restore is queued before the bound is
            // raised past the set it starts from.
            while let Ok(message) = control.try_recv() {
                if !self.control(message) {
                    return;
                }
            }
            // While a set from the leader is being installed the log may
            // start past this state: nothing is applied or written from it.
            let restoring = self.restores.load(Ordering::Acquire) > 0;
            if self.state.is_some() && !restoring {
                self.apply_to(bound.load(Ordering::Acquire));
                self.snapshot_if_due();
            }
            crossbeam_channel::select! {
                recv(wake) -> _ => {}
                recv(control) -> message => match message {
                    Ok(message) => if !self.control(message) { return },
                    Err(_) => return,
                },
            }
        }
    }

    /// Handles one control message; false to stop.
    fn control(&mut self, message: Control) -> bool {
        match message {
            Control::HandOver(through, reply) => {
                let _ = reply.send(self.hand_over(through));
            }
            Control::Rebuild => self.reset(),
            Control::Restore => {
                self.reset();
                self.restores.fetch_sub(1, Ordering::AcqRel);
            }
            Control::Stop => return false,
        }
        true
    }

    /// The snapshot set's state (an empty one without a set), nothing
    /// after it applied; read while no one else may write the set (an
    /// install is short: waited for).
    fn reset(&mut self) {
        self.state = None;
        let _hold = self.snapshots.as_ref().map(|s| loop {
            match s.sets.try_hold() {
                Some(hold) => break hold,
                None => std::thread::sleep(Duration::from_millis(5)),
            }
        });
        let dir = self.snapshots.as_ref().map(|s| s.dir.clone());
        let now_ms = crate::admin::unix_ms();
        match local_snapshot::start(dir.as_deref(), &self.settings, &self.network, now_ms) {
            Ok(start) => {
                self.state = Some(start.state);
                self.filter = start.filter;
                self.point = start.point;
                self.stock_loaded = start.stock_loaded;
            }
            Err(reason) => self.fail(reason),
        }
        self.last_snapshot = self.first_snapshot_after();
    }

    /// When the first snapshot after a reset is counted from: now and the
    /// point, and the records it is put off by, by this replica's phase.
    fn first_snapshot_after(&self) -> (Instant, u64, u64) {
        let now = (Instant::now(), self.point.next_lsn, 0);
        let Some(snapshots) = &self.snapshots else {
            return now;
        };
        let (place, of) = snapshots.phase;
        let share = |whole: u64| whole.saturating_mul(place) / of.max(1);
        let later = Duration::from_millis(share(snapshots.interval_ms));
        (now.0 + later, now.1, share(snapshots.every_records))
    }

    /// Writes the state as the replica's snapshot set once enough records
    /// or time have passed since the last; a set that cannot be written is
    /// said and tried again later (the log still holds everything).
    fn snapshot_if_due(&mut self) {
        let (Some(snapshots), Some(state), None) = (&self.snapshots, &self.state, &self.failed)
        else {
            return;
        };
        let records = self.point.next_lsn - self.last_snapshot.1;
        let by_count = snapshots.every_records > 0
            && records >= snapshots.every_records.saturating_add(self.last_snapshot.2);
        let by_time = snapshots.interval_ms > 0
            && self.last_snapshot.0.elapsed() >= Duration::from_millis(snapshots.interval_ms);
        if records == 0 || !(by_count || by_time) {
            return;
        }
        // The set is this thread's while it is held, and the log is cut
        // only by an install, which holds it: a restore under way is seen
        // here, and none starts until the set is written.
        let Some(hold) = snapshots.sets.try_hold() else {
            return;
        };
        if self.restores.load(Ordering::Acquire) > 0 {
            return;
        }
        let point = match self.raft_point() {
            Ok(point) => point,
            Err(reason) => return self.fail(reason),
        };
        let started = Instant::now();
        self.last_snapshot = (started, self.point.next_lsn, 0);
        match local_snapshot::write_and_pin(snapshots, state, &point, hold) {
            Ok(Some(descriptor)) => {
                tracing::info!(
                    "replica snapshot at entry {} (LSN {}): written in {} ms",
                    point.index,
                    point.next_lsn - 1,
                    started.elapsed().as_millis()
                );
                (snapshots.written)(&point, descriptor);
            }
            Ok(None) => {}
            Err(reason) => tracing::error!("replica snapshot: {reason}; the log is kept whole"),
        }
    }

    /// Where the state stands in the log.
    fn raft_point(&self) -> Result<RaftPoint, String> {
        let index = self.point.index;
        let term = (self.log.term(index)).map_err(|e| format!("the term of entry {index}: {e}"))?;
        let conf = (self.log.initial_state())
            .map_err(|e| format!("the configuration: {e}"))?
            .conf_state;
        Ok(RaftPoint {
            index,
            term,
            next_lsn: self.point.next_lsn,
            voters: conf.voters,
            learners: conf.learners,
            stock_loaded: self.stock_loaded,
        })
    }

    fn hand_over(&mut self, through: u64) -> Result<HandedOver, String> {
        if self.state.is_some() {
            self.apply_to(through);
        }
        if let Some(failed) = &self.failed {
            return Err(failed.clone());
        }
        if self.point.index < through {
            return Err(format!(
                "the state has applied entry {} of {through} (a set from the leader is not in place yet)",
                self.point.index
            ));
        }
        let state = self
            .state
            .take()
            .ok_or("the state was handed over already")?;
        Ok(HandedOver {
            state,
            fresh: !self.stock_loaded,
        })
    }

    /// Applies the log's entries after `index` up to `to`.
    fn apply_to(&mut self, to: u64) {
        if self.failed.is_some() {
            return;
        }
        let state = self.state.as_mut().expect("applied only with a state");
        match apply_log(&self.log, state, &self.filter, &mut self.point, to) {
            Ok(loaded) => self.stock_loaded |= loaded,
            // The log was cut for a set from the leader, which this thread
            // starts from once it is in place: not a failure.
            Err(_) if self.restores.load(Ordering::Acquire) > 0 => {}
            Err(reason) => self.fail(reason),
        }
    }

    fn fail(&mut self, reason: String) {
        if self.failed.is_none() {
            tracing::error!("replica apply: {reason}; this replica's state is no longer its log's");
            (self.on_failure)(reason.clone());
            self.failed = Some(reason);
        }
    }
}
