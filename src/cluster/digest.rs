//! A replica's state as its committed log makes it, reduced to one number:
//! replicas whose digests are equal hold the same stock and the same
//! orders. Read offline, from a stopped replica's data directory.

use std::sync::Arc;

use raft::Storage;
use sha2::{Digest, Sha256};

use crate::config::ValidConfig;
use crate::engine::EngineState;
use crate::replica::disk::{self, Persist};
use crate::replica::follower::apply_log;
use crate::replica::local_snapshot;
use crate::store;

/// Replays the committed log of the replica `config` names (stopped: its
/// directory's lock is taken) into an empty state: the last committed
/// index, and a digest of every stock cell and order.
pub fn digest(config: &ValidConfig) -> Result<(u64, u64), String> {
    digest_through(config, u64::MAX)
}

/// [`digest`] of the committed log up to `through` at most (replicas that
/// stopped at different commit indexes compare at the lowest).
pub fn digest_through(config: &ValidConfig, through: u64) -> Result<(u64, u64), String> {
    let cluster = config
        .cluster
        .as_ref()
        .ok_or("the config has no [cluster]")?;
    let dir = &config.server.data_dir;
    let _lock = store::lock::lock(dir, store::Access::Write).map_err(|e| e.to_string())?;
    let point = local_snapshot::linked_point(dir)?;
    let loaded = disk::load(
        &store::journal_dir(dir),
        &dir.join("raft-state"),
        &cluster.voters(),
        config.store.segment_bytes,
        point.as_ref(),
    )
    .map_err(|e| e.to_string())?;
    let log = loaded.storage;
    let commit = log
        .initial_state()
        .map_err(|e| e.to_string())?
        .hard_state
        .commit;
    let commit = commit.min(through);
    loaded.persister.close();
    let network = Arc::new(config.network.clone());
    let start = local_snapshot::start(Some(dir), &config.engine, &network, 0)?;
    let (mut state, filter, mut point) = (start.state, start.filter, start.point);
    if point.index > commit {
        return Err(format!(
            "the replica's snapshot set holds the log through entry {}, past entry {commit}: compare at a later entry",
            point.index
        ));
    }
    let from_set = point.index;
    apply_log(&log, &mut state, &filter, &mut point, commit)?;
    // The LSNs the apply counted are the journal's (a snapshot's labels
    // are compared with them); the set's own point was checked when the
    // set was written, and its entry may be compacted away.
    let journaled = loaded.persister.end_lsn(commit);
    let unchecked = commit == 0 || (commit == from_set && journaled.is_none());
    if !unchecked && journaled != Some(point.next_lsn) {
        return Err(format!(
            "applying through entry {commit} counted its records up to LSN {}, the journal has {journaled:?}",
            point.next_lsn
        ));
    }
    Ok((commit, state_digest(&state)))
}

/// Every cell (SKU, node, counts) and order, in a fixed order, hashed.
fn state_digest(state: &EngineState) -> u64 {
    let mut cells: Vec<String> = (state.shards.iter())
        .flat_map(|shard| shard.cells())
        .map(|(sku, node, cell)| format!("{sku}@{node}={cell:?}"))
        .collect();
    cells.sort_unstable();
    let mut orders: Vec<(u64, String)> = (state.routers.iter())
        .flat_map(|router| router.orders())
        .map(|order| (order.id, format!("{order:?}")))
        .collect();
    orders.sort_unstable();
    let mut hasher = Sha256::new();
    for cell in cells {
        hasher.update(cell.as_bytes());
    }
    for (_, order) in orders {
        hasher.update(order.as_bytes());
    }
    let hash = hasher.finalize();
    u64::from_le_bytes(hash[..8].try_into().expect("8 bytes"))
}
