//! The ops a journal record carries to shards and node ledgers, and what
//! applying one means: the one definition the actors, recovery, the replay
//! and the synchronous driver all use.

use super::capacity::NodeLedger;
use super::events::NodeEvent;
use super::model::{NodeIdx, OrderId, SkuId};
use super::stock::{Bumped, StockError, StockShard};

/// A fire-and-forget change for a shard. Every op but `Abort` changes
/// journaled state: in the daemon it is journaled first and applied in
/// journal order, and replayed alike at restart.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum StockOp {
    /// A journaled decision's units: the hold becomes a reservation (see
    /// [`StockShard::reserve`]).
    Reserve {
        order: OrderId,
        sku: SkuId,
        node: NodeIdx,
        qty: u32,
    },
    /// A failed attempt gives back its holds (never journaled: holds are not).
    Abort(OrderId),
    ReleaseOrder(OrderId),
    Release {
        order: OrderId,
        sku: SkuId,
        node: NodeIdx,
        qty: u32,
    },
    /// Units left the building for the order.
    Ship {
        order: OrderId,
        sku: SkuId,
        node: NodeIdx,
        qty: u32,
    },
    Restock {
        sku: SkuId,
        node: NodeIdx,
        qty: u32,
    },
    /// A count (WMS feed, or a node's correction when it rejects).
    Set {
        sku: SkuId,
        node: NodeIdx,
        on_hand: u32,
        safety_stock: Option<u32>,
    },
    Adjust {
        sku: SkuId,
        node: NodeIdx,
        delta: i64,
    },
}

impl StockOp {
    /// The SKU the op touches, if one (which names its shard).
    pub fn sku(&self) -> Option<SkuId> {
        match *self {
            StockOp::Reserve { sku, .. }
            | StockOp::Release { sku, .. }
            | StockOp::Ship { sku, .. }
            | StockOp::Restock { sku, .. }
            | StockOp::Set { sku, .. }
            | StockOp::Adjust { sku, .. } => Some(sku),
            StockOp::Abort(_) | StockOp::ReleaseOrder(_) => None,
        }
    }
}

/// A fire-and-forget change for a node ledger; all are journaled.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum NodeOp {
    /// Tell the node's subscribers (and its log) what changed for it.
    Event(NodeEvent),
    /// A journaled decision uses the node: one allocation of capacity on the
    /// day of `at_ms` (already taken live by the hold; taken here on replay).
    Take { order: OrderId, at_ms: u64 },
    /// The order no longer uses the node (or a failed attempt gives back
    /// what it took); today's capacity comes back.
    Release(OrderId),
    /// The order's units at the node all shipped: forget it, capacity stays used.
    Finish(OrderId),
    /// The node goes online or offline.
    Online(bool),
}
/// Applies one op to a shard; shared with the shard actor and recovery.
/// Reservations it takes back are added to `bumped`.
#[inline]
pub fn apply_stock_op(
    shard: &mut StockShard,
    op: StockOp,
    bumped: &mut Vec<Bumped>,
) -> Result<(), StockError> {
    match op {
        StockOp::Reserve {
            order,
            sku,
            node,
            qty,
        } => bumped.extend(shard.reserve(order, sku, node, qty)),
        StockOp::Abort(order) => shard.abort(order),
        StockOp::ReleaseOrder(order) => {
            shard.release_order(order);
        }
        StockOp::Release {
            order,
            sku,
            node,
            qty,
        } => {
            shard.release(order, sku, node, qty);
        }
        StockOp::Ship {
            order,
            sku,
            node,
            qty,
        } => shard.ship(order, sku, node, qty)?,
        StockOp::Restock { sku, node, qty } => shard.restock(sku, node, qty)?,
        StockOp::Set {
            sku,
            node,
            on_hand,
            safety_stock,
        } => bumped.extend(shard.set(sku, node, on_hand, safety_stock)),
        StockOp::Adjust { sku, node, delta } => bumped.extend(shard.adjust(sku, node, delta)?),
    }
    Ok(())
}

/// What applying a node op produced, for the shell to pass on.
pub enum NodeEffect {
    None,
    /// A logged event with its cursor, for live subscribers.
    Event(u64, std::sync::Arc<NodeEvent>),
    /// The node went offline while serving these orders: re-route them.
    Offline(Vec<OrderId>),
}

/// Applies one op to a node ledger; shared with the node actor and recovery.
#[inline]
pub fn apply_node_op(ledger: &mut NodeLedger, op: NodeOp) -> NodeEffect {
    match op {
        NodeOp::Take { order, at_ms } => ledger.take(order, at_ms),
        NodeOp::Release(order) => ledger.release(order),
        NodeOp::Finish(order) => ledger.finish(order),
        NodeOp::Event(event) => {
            let (cursor, event) = ledger.record_event(event);
            return NodeEffect::Event(cursor, event);
        }
        NodeOp::Online(online) => return NodeEffect::Offline(ledger.set_online(online)),
    }
    NodeEffect::None
}
