//! A replica's own snapshot set: the state its apply thread made of the
//! committed log, written whole at one point of the log, with the raft
//! point written last (`raft_point`). A replica starts from it, and steps
//! down to it, instead of from the log's first entry; once it is in place
//! the log before it can be compacted (docs/RAFT-SNAPSHOTS.md, 3.2).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::follower::ApplyPoint;
use super::raft_point::{self, RaftPoint};
use crate::core::network::Network;
use crate::engine::{EngineSettings, EngineState};
use crate::schema::Layout;
use crate::store::apply::Applied;
use crate::store::{self, layout};

/// Where and when the apply thread writes its snapshot sets.
pub struct LocalSnapshots {
    /// The replica's data directory (its sets are `DIR/snapshots-G`).
    pub dir: PathBuf,
    /// The configured shards and routers: a set is written and read
    /// under them.
    pub layout: Layout,
    /// Snapshot at least this often while entries are applied (0: never
    /// by time).
    pub interval_ms: u64,
    /// And once this many journal records were applied since the last
    /// (0: never by count).
    pub every_records: u64,
    /// This replica's place among the voters and their count: its first
    /// snapshot after a start is put off by that share of the interval
    /// and of the record count, so that the replicas, which apply the same
    /// log at the same pace, do not all write theirs at once (a commit
    /// needs a majority's fsyncs, and every set written beside them slows
    /// them down).
    pub phase: (u64, u64),
    /// Who writes the set in use, one at a time.
    pub sets: Arc<SnapshotSets>,
    /// Told of each set once it is in place and pinned, with its
    /// descriptor (the driver offers it to peers and compacts the log
    /// before it).
    pub written: Written,
}

/// Told of a set in place and pinned: its point and descriptor.
pub type Written = Box<dyn Fn(&RaftPoint, Vec<u8>) + Send>;

/// Who may write a replica's set in use: its apply thread (a new set), its
/// leader's engine (in place), or its driver (a set received from the
/// leader), one at a time. A writer that finds it held skips its turn and
/// tries again later; it is a flag, never waited on, so holding it across
/// an `.await` blocks no one.
#[derive(Default)]
pub struct SnapshotSets {
    busy: AtomicBool,
    /// A leader's engine snapshots into the set in place for as long as
    /// its loop runs: no set may be installed under it.
    engine: AtomicBool,
}

/// The set in use is this holder's to write until dropped.
pub struct SetsHold(Arc<SnapshotSets>);

impl SnapshotSets {
    /// The set to write, unless another writer has it.
    pub fn try_hold(self: &Arc<Self>) -> Option<SetsHold> {
        let free = self
            .busy
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire);
        free.ok().map(|_| SetsHold(self.clone()))
    }

    /// The set to replace by one received, unless another writer has it
    /// or a leader's engine snapshots into it.
    pub fn try_hold_for_install(self: &Arc<Self>) -> Option<SetsHold> {
        let hold = self.try_hold()?;
        (!self.engine.load(Ordering::Acquire)).then_some(hold)
    }

    /// A leader's snapshot loop starts (true) or has ended (false).
    pub fn engine_snapshots(&self, running: bool) {
        self.engine.store(running, Ordering::Release);
    }
}

impl Drop for SetsHold {
    fn drop(&mut self) {
        self.0.busy.store(false, Ordering::Release);
    }
}

/// The set in use, if it was written by a replica (it has a raft point):
/// its state, the LSN each actor holds, and its point. A set of another
/// layout than `settings`' is refused: the replica's shards and routers
/// are not changed by editing the config.
pub(crate) fn load(
    dir: &Path,
    settings: &EngineSettings,
    network: &Arc<Network>,
) -> Result<Option<(EngineState, Applied, RaftPoint)>, String> {
    let Some(point) = linked_point(dir)? else {
        return Ok(None);
    };
    let configured = settings.layout();
    let written = layout::read_layout(dir).map_err(|e| e.to_string())?;
    if written != Some(configured) {
        return Err(format!(
            "the snapshot set in {} was written for {written:?}, the config has {configured:?}: a replica's shards and routers cannot change",
            dir.display()
        ));
    }
    let now_ms = crate::admin::unix_ms();
    let (state, applied) = store::load_replica_set(dir, settings, network, now_ms)
        .map_err(|e| format!("the snapshot set at entry {}: {e}", point.index))?;
    Ok(Some((state, applied, point)))
}

/// A state to apply the log to, and where in the log it stands.
pub(crate) struct Start {
    pub state: EngineState,
    /// The LSN each actor holds: records after it apply to it.
    pub filter: Applied,
    pub point: ApplyPoint,
    /// The log through `point` holds the `STOCK_LOADED` marker.
    pub stock_loaded: bool,
}

/// The state of the set in use in `dir` (see [`load`]), or, without one
/// (or without a directory), an empty state made at `now_ms` that has
/// applied nothing.
pub(crate) fn start(
    dir: Option<&Path>,
    settings: &EngineSettings,
    network: &Arc<Network>,
    now_ms: u64,
) -> Result<Start, String> {
    if let Some((state, filter, point)) = dir
        .map(|dir| load(dir, settings, network))
        .transpose()?
        .flatten()
    {
        tracing::info!(
            "replica apply: starting from the snapshot set at entry {} (LSN {})",
            point.index,
            point.next_lsn - 1
        );
        return Ok(Start {
            state,
            filter,
            point: ApplyPoint {
                index: point.index,
                next_lsn: point.next_lsn,
            },
            stock_loaded: point.stock_loaded,
        });
    }
    let state = EngineState::fresh(settings, network, now_ms)
        .map_err(|e| format!("an empty state could not be made: {e}"))?;
    Ok(Start {
        filter: Applied::none(&state),
        state,
        point: ApplyPoint::START,
        stock_loaded: false,
    })
}

/// The raft point of the set in use, if it has one.
pub fn linked_point(dir: &Path) -> Result<Option<RaftPoint>, String> {
    let set = store::snapshot_dir(dir);
    raft_point::read(&set)
}

/// Writes `state`, which has applied the log through `point`, as the
/// replica's snapshot set, every actor labelled at the LSN before the
/// point's next, the point last; then puts it in place of the old set.
pub fn write(
    dir: &Path,
    state: &EngineState,
    point: &RaftPoint,
    layout: Layout,
) -> Result<(), String> {
    let lsn = point.next_lsn - 1;
    store::write_replica_set(dir, state, lsn, layout, |set| raft_point::write(set, point))
        .map_err(|e| format!("writing the snapshot set at entry {}: {e}", point.index))
}

/// [`write`], under `_hold`, if the set in use holds less of the log (a
/// set installed from the leader meanwhile is newer: never replaced by an
/// older one), then pins it: its descriptor, or `None` if it was not
/// written.
pub fn write_and_pin(
    snapshots: &LocalSnapshots,
    state: &EngineState,
    point: &RaftPoint,
    _hold: SetsHold,
) -> Result<Option<Vec<u8>>, String> {
    let dir = &snapshots.dir;
    if linked_point(dir)?.is_some_and(|linked| linked.index >= point.index) {
        return Ok(None);
    }
    write(dir, state, point, snapshots.layout)?;
    let descriptor = super::snapshot_files::pin(dir, point)?;
    Ok(Some(descriptor.encode()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::network::Network;
    use crate::faults::points;
    use crate::scratch::Scratch;

    fn point(index: u64) -> RaftPoint {
        RaftPoint {
            index,
            term: 2,
            next_lsn: index * 3 + 1,
            voters: vec![1, 2, 3],
            learners: vec![],
            stock_loaded: true,
        }
    }

    #[test]
    fn a_set_whose_write_fails_at_any_call_leaves_a_whole_set_in_use() {
        // Proves that a snapshot set whose writing fails at any open, write, fsync, rename or
        // directory fsync leaves the set in use whole and loadable: the old one, or (a failure
        // after the link was swapped) the new one, never a mix; and a later start removes
        // what the failed write left.
        crate::faults::alone(
            module_path!(),
            "a_set_whose_write_fails_at_any_call_leaves_a_whole_set_in_use",
            || {
                let scratch = Scratch::new("replica-set-faults");
                let dir = scratch.0.clone();
                let settings = EngineSettings {
                    max_skus: 16,
                    ..EngineSettings::default()
                };
                let layout = settings.layout();
                let network = Arc::new(Network::new(Vec::new(), Vec::new(), Vec::new()));
                let state = EngineState::fresh(&settings, &network, 0).expect("a state");
                store::layout::prepare_snapshot_sets(&dir).expect("sets");
                let (old, new) = (point(5), point(9));
                let mut failed = 0;
                for fault in [
                    points::SNAPSHOT_OPEN,
                    points::SNAPSHOT_WRITE,
                    points::SNAPSHOT_FSYNC,
                    points::SNAPSHOT_RENAME,
                    points::SNAPSHOT_DIR_FSYNC,
                ] {
                    for calls_before in 0.. {
                        write(&dir, &state, &old, layout).expect("the old set");
                        fail::cfg(fault, &format!("{calls_before}*off->1*return(EIO)->off"))
                            .expect("a failpoint");
                        let written = write(&dir, &state, &new, layout);
                        fail::remove(fault);
                        store::layout::prepare_snapshot_sets(&dir).expect("a start");
                        let (_, _, loaded) = load(&dir, &settings, &network)
                            .expect("the set in use loads")
                            .expect("it has a point");
                        if written.is_ok() {
                            assert_eq!(loaded, new);
                            break;
                        }
                        failed += 1;
                        let swapped = fault == points::SNAPSHOT_DIR_FSYNC && loaded == new;
                        assert!(loaded == old || swapped, "{fault} after {calls_before}");
                        let sets = std::fs::read_dir(&dir)
                            .expect("the data directory")
                            .flatten()
                            .filter(|e| e.file_name().to_string_lossy().starts_with("snapshots-"))
                            .count();
                        assert_eq!(sets, 1, "{fault} after {calls_before}: one set left");
                    }
                }
                assert!(failed >= 10, "only {failed} calls failed");
            },
        );
    }
}
