//! A replica's own snapshot set: the state its apply thread made of the
//! committed log, written whole at one point of the log, with the raft
//! point written last (`raft_point`). A replica starts from it, and steps
//! down to it, instead of from the log's first entry; once it is in place
//! the log before it can be compacted (docs/RAFT-SNAPSHOTS.md, 3.2).

use std::path::{Path, PathBuf};
use std::sync::Arc;

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
    /// Told of each set once it is in place (the driver compacts the log
    /// before it).
    pub written: Box<dyn Fn(&RaftPoint) + Send>,
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
    let configured = Layout {
        shards: settings.shards.max(1),
        routers: settings.routers,
    };
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
