//! Applying a committed transaction to the engine state: what recovery
//! does for every record after a snapshot, and what a follower replica
//! will do for every entry it is sent. Nothing here reads a clock or the
//! config: a record carries its effects already decided, so a state is a
//! function of the records applied to it.

use super::error::RecordError;
use super::StoreError;
use crate::core::book::router_of_order;
use crate::core::ops::{apply_node_op, apply_stock_op};
use crate::core::status::statuses_of;
use crate::core::stock::{Bumped, StockShard};
use crate::engine::sequencer::{
    Txn, KIND_DEMAND, KIND_DEMAND_LOST, KIND_MARKER, KIND_POLICY, KIND_TXN,
};
use crate::engine::EngineState;
use crate::journal::RecoveredRecord;
use crate::schema::txn::{KIND_RAFT_CONF, KIND_RAFT_ENTRY};

/// The LSN each actor's snapshot had applied: 0 with no snapshot, and
/// `u64::MAX` for a node new since the last start (nothing to replay).
/// A record at a higher LSN is applied to that actor, others skip it.
#[derive(Default)]
pub(crate) struct Applied {
    pub(super) catalog: u64,
    pub(super) shards: Vec<u64>,
    pub(super) routers: Vec<u64>,
    pub(super) nodes: Vec<u64>,
    /// The channels' status logs: a directory written before they were
    /// snapshotted starts them empty at the oldest of the others' LSNs.
    pub(super) feed: u64,
}

impl Applied {
    /// Nothing applied yet: every record applies to every actor of
    /// `state` (a replica's state, built from its log alone).
    pub(crate) fn none(state: &EngineState) -> Applied {
        Applied {
            catalog: 0,
            shards: vec![0; state.shards.len()],
            routers: vec![0; state.routers.len()],
            nodes: vec![0; state.ledgers.len()],
            feed: 0,
        }
    }

    /// Where the journal is read from: the oldest snapshot's LSN.
    pub(super) fn oldest(&self) -> u64 {
        [self.catalog]
            .iter()
            .chain(&self.shards)
            .chain(&self.nodes)
            .chain(&self.routers)
            .chain([&self.feed])
            .copied()
            .filter(|&lsn| lsn != u64::MAX)
            .min()
            .unwrap_or(0)
    }
}

/// Applies one journal record to the actors whose snapshot is older than
/// it. Whether it was a state change (demand, markers and policy reloads
/// are not: the what-if replay and the live daemon read those).
pub(crate) fn apply_record(
    record: &RecoveredRecord,
    state: &mut EngineState,
    applied: &Applied,
    bumped: &mut Vec<Bumped>,
) -> Result<bool, StoreError> {
    let lsn = record.lsn;
    apply_payload(record.kind, &record.payload, lsn, state, applied, bumped)
        .map_err(|cause| StoreError::Replay { lsn, cause })
}

/// [`apply_record`] of a record's kind and payload, journaled at `lsn`.
pub(crate) fn apply_payload(
    kind: u8,
    payload: &[u8],
    lsn: u64,
    state: &mut EngineState,
    applied: &Applied,
    bumped: &mut Vec<Bumped>,
) -> Result<bool, RecordError> {
    match kind {
        KIND_MARKER | KIND_POLICY | KIND_DEMAND | KIND_DEMAND_LOST | KIND_RAFT_ENTRY
        | KIND_RAFT_CONF => return Ok(false),
        KIND_TXN => {}
        other => return Err(RecordError::UnknownKind(other)),
    }
    let txn = Txn::decode(payload)?;
    apply_txn(txn, lsn, state, applied, bumped)?;
    Ok(true)
}

/// Applies a decoded transaction journaled at `lsn` to the actors of
/// `state` that `applied` says have not seen it. A transaction that names
/// a shard or node outside the state's layout, or a SKU the catalog does
/// not have, is refused before the feed, a router, shard or node changed.
pub(crate) fn apply_txn(
    txn: Txn,
    lsn: u64,
    state: &mut EngineState,
    applied: &Applied,
    bumped: &mut Vec<Bumped>,
) -> Result<(), RecordError> {
    if lsn > applied.catalog {
        for (id, name) in &txn.skus {
            let got = state.index.intern(name)?;
            if got != *id {
                return Err(RecordError::SkuMoved {
                    name: name.clone(),
                    id: *id,
                    got,
                });
            }
        }
    }
    check_layout(&txn, state)?;
    if lsn > applied.feed {
        for status in statuses_of(&txn.orders, &txn.stock, &txn.nodes) {
            state.feed.append(status);
        }
    }
    for order in txn.orders {
        let r = router_of_order(order.id, state.routers.len());
        if lsn > applied.routers[r] {
            state.routers[r].restore(order)?;
        }
    }
    for (shard, op) in txn.stock {
        if lsn > applied.shards[shard as usize] {
            // Errors (an overflowing adjust) failed alike when live.
            let _ = apply_stock_op(&mut state.shards[shard as usize], op, bumped);
        }
    }
    for (node, op) in txn.nodes {
        if lsn > applied.nodes[node as usize] {
            let _ = apply_node_op(&mut state.ledgers[node as usize], op);
        }
    }
    Ok(())
}

/// Every stock op on a shard of the layout that owns its SKU, a SKU the
/// catalog has, and every node op on a known node.
fn check_layout(txn: &Txn, state: &EngineState) -> Result<(), RecordError> {
    let shard_count = state.shards.len();
    for (shard, op) in &txn.stock {
        let s = *shard as usize;
        let valid = s < shard_count
            && op.sku().is_none_or(|sku| {
                StockShard::shard_of(sku, shard_count as u32) == *shard
                    && (sku as usize) < state.index.sku_count()
            });
        if !valid {
            return Err(RecordError::OutsideLayout {
                op: format!("{op:?}"),
                shard: *shard,
            });
        }
    }
    if let Some((node, _)) = txn
        .nodes
        .iter()
        .find(|(n, _)| *n as usize >= state.ledgers.len())
    {
        return Err(RecordError::UnknownNode(*node));
    }
    Ok(())
}
