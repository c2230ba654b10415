//! The lifecycle of one router's orders: submit (validation, idempotency,
//! placement), confirm, cancel, hold expiry, ship, return, node rejection,
//! node offline, re-routing of bumped units, and retirement. Each method is
//! one step of the state machine; the router actor calls them one message
//! at a time, so its books ([`super::book`]) have a single writer.
//!
//! This file keeps the router's state, lookups and restore; the steps are
//! in `submit.rs`, `follow_up.rs` (confirm, cancel, expiry, retirement,
//! ship, return) and `reroute.rs` (node rejection, node offline, bumps);
//! `list.rs` finds a channel's orders a page at a time; `in_session.rs`
//! what a session answers without a router.

mod follow_up;
mod in_session;
mod list;
mod reroute;
mod submit;

pub use in_session::{answer_from_index, IndexAnswer};
pub use list::{ListPage, Listing, OrderFilter};

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::Arc;

use rustc_hash::FxHashMap;
use smallvec::SmallVec;

use super::book::{
    key_fingerprint, partition_of_key, ArchivedKeys, BookCursor, Books, MAX_ROUTERS,
};
use super::error::{InvariantError, RestoreError};
use super::events::{EventKind, NodeEvent};
use super::geo::GeoPoint;
use super::index::AvailabilityIndex;
use super::model::{Allocation, ChannelIdx, MarketIdx, NodeIdx, OrderId, OrderState, SkuId};
use super::network::Network;
use super::ops::NodeOp;
use super::order::{AllocationState, OrderRecord};
use super::placement::PlanContext;
use super::policy::{Method, PlanLine};
use super::stock::{StockError, StockShard};
use crate::limits::{ARCHIVED_KEYS_KEPT, DEFAULT_ORDER_RETENTION_MS, MAX_QTY_PER_LINE};

/// How a caller names an order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OrderRef {
    Id(OrderId),
    Key {
        channel: String,
        client_order_id: String,
    },
}

/// An order operation that cannot be applied. Nothing changed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OpError {
    #[error("no such order")]
    UnknownOrder,
    #[error("the order closed and was retired after its retention window; it is archived")]
    Archived,
    #[error("the order is {0:?}; the operation needs an open order")]
    NotOpen(OrderState),
    #[error("the order must be confirmed before it ships")]
    NotConfirmed,
    #[error("the order has no open allocation of that sku at that node")]
    NoSuchAllocation,
    #[error("quantity {requested} exceeds the {limit} units open for it")]
    ExceedsOpen { requested: u32, limit: u32 },
    #[error("quantity {requested} exceeds the {limit} units shipped and not yet returned")]
    ExceedsShipped { requested: u32, limit: u32 },
    #[error("the quantity must be between 1 and {max}", max = crate::limits::MAX_QTY_PER_LINE)]
    BadQuantity,
    #[error("unknown node")]
    UnknownNode,
    #[error("unknown sku")]
    UnknownSku,
    #[error("stock: {0}")]
    Stock(#[from] StockError),
}

/// A validated order, resolved to indices.
struct Resolved {
    channel: ChannelIdx,
    lines: SmallVec<[PlanLine; 4]>,
    ship_to: GeoPoint,
    market: Option<MarketIdx>,
    method: Method,
    hold_ttl_ms: u64,
    fingerprint: u64,
}

pub struct RouterCore {
    network: Arc<Network>,
    index: Arc<AvailabilityIndex>,
    shard_count: u32,
    orders: Books,
    /// (expires_at_ms, order); stale entries (confirmed, re-held) are skipped
    /// when popped.
    expiries: BinaryHeap<Reverse<(u64, OrderId)>>,
    /// How long a closed order stays in the book (and its key answers
    /// resubmissions with its decision) before it retires.
    retention_ms: u64,
    /// Orders closed since the last [`RouterCore::retire_due`], which
    /// gives them their time to retire.
    closed: Vec<OrderId>,
    /// (retire at ms, order), in time order.
    retiring: VecDeque<(u64, OrderId)>,
    archived: ArchivedKeys,
    /// Whether rejected orders are kept as demand for the journal.
    record_demand: bool,
    /// Orders rejected since the last [`RouterCore::take_demand`].
    demand: Vec<OrderRecord>,
}

impl RouterCore {
    /// Router `router` of `routers`: it owns the partitions `p` with
    /// `p % routers == router`.
    pub fn new(
        router: usize,
        routers: usize,
        network: Arc<Network>,
        index: Arc<AvailabilityIndex>,
        shard_count: u32,
    ) -> RouterCore {
        assert!(router < routers && routers <= MAX_ROUTERS);
        RouterCore {
            network,
            orders: Books::new(router, routers, index.clone()),
            index,
            shard_count,
            expiries: BinaryHeap::new(),
            retention_ms: DEFAULT_ORDER_RETENTION_MS,
            closed: Vec::new(),
            retiring: VecDeque::new(),
            archived: ArchivedKeys::new(ARCHIVED_KEYS_KEPT.div_ceil(routers)),
            record_demand: false,
            demand: Vec::new(),
        }
    }

    /// Keeps each rejected order as demand until [`RouterCore::take_demand`]
    /// (for a journal; the book never keeps it).
    pub fn set_record_demand(&mut self, record: bool) {
        self.record_demand = record;
    }

    /// The orders rejected since the last call, as demand records: each as
    /// asked for, with its rejection.
    /// Rejected orders recorded since the last `take_demand`.
    pub fn demand_len(&self) -> usize {
        self.demand.len()
    }

    pub fn take_demand(&mut self) -> Vec<OrderRecord> {
        std::mem::take(&mut self.demand)
    }

    /// Keeps closed orders `retention_ms` before they retire.
    pub fn set_retention_ms(&mut self, retention_ms: u64) {
        self.retention_ms = retention_ms;
    }

    /// Routes from now on by `network` (a reload): other policies, and
    /// nodes added after the ones it had. A node is never moved or removed
    /// (ids are stable), and the channels are the same.
    pub fn set_network(&mut self, network: Arc<Network>) {
        debug_assert!(network.nodes.len() >= self.network.nodes.len());
        debug_assert!(self
            .network
            .nodes
            .iter()
            .zip(&network.nodes)
            .all(|(was, is)| was.id == is.id));
        debug_assert_eq!(network.channels.len(), self.network.channels.len());
        self.network = network;
    }

    fn context(&self) -> PlanContext<'_> {
        PlanContext {
            network: &self.network,
            index: &self.index,
            shard_count: self.shard_count,
        }
    }

    fn shard_of(&self, sku: SkuId) -> u32 {
        StockShard::shard_of(sku, self.shard_count)
    }

    pub fn router_id(&self) -> usize {
        self.orders.router
    }

    pub fn order_count(&self) -> usize {
        self.orders.len()
    }

    pub fn orders(&self) -> impl Iterator<Item = &OrderRecord> {
        self.orders.values()
    }

    /// The next run of up to `max` orders after `cursor`, as they lie in
    /// the books (a run stops at the end of a segment), moving the cursor
    /// past it: what a snapshot step encodes. Empty once every book is
    /// passed.
    pub fn next_orders(&self, cursor: &mut BookCursor, max: usize) -> &[OrderRecord] {
        self.orders.next_run(cursor, max)
    }

    /// Every order, the book given up (a relayout moves them elsewhere).
    pub fn into_orders(self) -> impl Iterator<Item = OrderRecord> {
        self.orders.into_orders()
    }

    /// The orders changed since the last call, as they are now: the order
    /// part of the next journal record.
    pub fn take_dirty(&mut self) -> Vec<OrderRecord> {
        let mut ids = std::mem::take(&mut self.orders.dirty);
        ids.sort_unstable();
        ids.dedup();
        ids.iter()
            .filter_map(|id| self.orders.get(id).cloned())
            .collect()
    }

    pub fn has_dirty(&self) -> bool {
        !self.orders.dirty.is_empty()
    }

    /// Makes room for `orders` more orders at once (restoring a snapshot).
    pub fn reserve(&mut self, orders: usize) {
        self.orders.reserve(orders);
    }

    /// Forgets which orders changed (nothing is journaled).
    pub fn clear_dirty(&mut self) {
        self.orders.dirty.clear();
    }

    /// Puts a journaled or snapshotted order into the book as it was
    /// written: a new one must be the next id, a known one is replaced.
    pub fn restore(&mut self, record: OrderRecord) -> Result<(), RestoreError> {
        let expiry =
            (record.state == OrderState::Held).then_some((record.expires_at_ms, record.id));
        let closed = !record.state.is_open() && record.state != OrderState::Rejected;
        let id = record.id;
        self.orders.restore(record)?;
        if let Some(expiry) = expiry {
            self.expiries.push(Reverse(expiry));
        }
        if closed {
            // Its close time is not kept: the retention counts from now.
            self.closed.push(id);
        }
        Ok(())
    }

    /// The id of a kept order. A retired order is `Archived`: by id always,
    /// by key while its key is among the last [`ARCHIVED_KEYS_KEPT`].
    /// Anything else is `UnknownOrder`.
    fn lookup(&self, order: &OrderRef) -> Result<OrderId, OpError> {
        match order {
            OrderRef::Id(id) if self.orders.contains_key(id) => Ok(*id),
            // An id given out and no longer kept was retired (a rejected
            // order's id is never told).
            OrderRef::Id(id) if self.orders.given_out(*id) => Err(OpError::Archived),
            OrderRef::Id(_) => Err(OpError::UnknownOrder),
            OrderRef::Key {
                channel,
                client_order_id,
            } => {
                let idx = self
                    .network
                    .channel_idx(channel)
                    .ok_or(OpError::UnknownOrder)?;
                let partition = partition_of_key(channel, client_order_id);
                match self.orders.find_key(partition, idx, client_order_id) {
                    Some(id) => Ok(id),
                    None if self
                        .archived
                        .contains(key_fingerprint(idx, client_order_id)) =>
                    {
                        Err(OpError::Archived)
                    }
                    None => Err(OpError::UnknownOrder),
                }
            }
        }
    }

    pub fn get(&self, order: &OrderRef) -> Result<&OrderRecord, OpError> {
        let id = self.lookup(order)?;
        Ok(&self.orders[&id])
    }

    /// Checks the book against itself; for tests.
    pub fn check_invariants(&self) -> Result<(), InvariantError> {
        for record in self.orders.values() {
            for line in record.lines.iter() {
                let placed: u32 = record
                    .allocations
                    .iter()
                    .filter(|a| a.line == line.line)
                    .map(|a| a.open + a.shipped)
                    .sum();
                if record.state.is_open() && placed > line.qty {
                    return Err(InvariantError::OverPlaced {
                        order: record.id,
                        line: line.line,
                        placed,
                        qty: line.qty,
                    });
                }
            }
            if !record.state.is_open() && record.allocations.iter().any(|a| a.open > 0) {
                return Err(InvariantError::ClosedWithOpenUnits {
                    order: record.id,
                    state: record.state,
                });
            }
            if record.allocations.iter().any(|a| a.returned > a.shipped) {
                return Err(InvariantError::ReturnedAboveShipped { order: record.id });
            }
            let key = key_fingerprint(record.channel, &record.client_order_id);
            if !self.index.keys().may_hold(key) {
                return Err(InvariantError::KeyNotMarked { order: record.id });
            }
        }
        Ok(())
    }
}

/// (line, sku, units) of one event.
type EventLines = SmallVec<[(u16, SkuId, u32); 1]>;

/// Adds to `nodes` one event per node for the given units of an order:
/// (node, line, sku, units).
fn announce(
    nodes: &mut FxHashMap<NodeIdx, Vec<NodeOp>>,
    kind: EventKind,
    record: &OrderRecord,
    units: impl IntoIterator<Item = (NodeIdx, u16, SkuId, u32)>,
) {
    let mut by_node: SmallVec<[(NodeIdx, EventLines); 2]> = SmallVec::new();
    for (node, line, sku, qty) in units {
        match by_node.iter_mut().find(|(n, _)| *n == node) {
            Some((_, lines)) => lines.push((line, sku, qty)),
            None => by_node.push((node, smallvec::smallvec![(line, sku, qty)])),
        }
    }
    for (node, lines) in by_node {
        let event = NodeEvent {
            kind,
            order: record.id,
            channel: record.channel,
            client_order_id: record.client_order_id.clone(),
            lines,
        };
        nodes.entry(node).or_default().push(NodeOp::Event(event));
    }
}

fn open_allocation(allocation: Allocation) -> AllocationState {
    AllocationState {
        line: allocation.line,
        sku: allocation.sku,
        node: allocation.node,
        initial: 0,
        open: allocation.qty,
        shipped: 0,
        returned: 0,
    }
}

/// A ship or return quantity must be 1..=MAX_QTY_PER_LINE.
fn check_quantity(qty: u32) -> Result<(), OpError> {
    if qty == 0 || qty > MAX_QTY_PER_LINE {
        return Err(OpError::BadQuantity);
    }
    Ok(())
}

/// Distinct nodes of an order.
fn nodes_of(allocations: &[AllocationState]) -> SmallVec<[NodeIdx; 4]> {
    let mut nodes: SmallVec<[NodeIdx; 4]> = allocations.iter().map(|a| a.node).collect();
    nodes.sort_unstable();
    nodes.dedup();
    nodes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn a_router_takes_a_network_with_nodes_added_after_its_own() {
        // Proves a reload that adds a store reaches a router without tripping its checks (a
        // debug build asserted the node count unchanged and stopped the daemon), and that the
        // router then knows the added node.
        let network = Config::default_config().validate().unwrap().network;
        let index = Arc::new(AvailabilityIndex::new(network.nodes.len() + 1, 16));
        let mut router = RouterCore::new(0, 1, Arc::new(network.clone()), index, 1);
        let mut nodes = network.nodes.clone();
        let mut added = nodes[0].clone();
        added.id = "ST-NEW".into();
        nodes.push(added);
        let grown = Network::new(nodes, network.markets.clone(), network.channels.clone());
        router.set_network(Arc::new(grown));
        assert_eq!(router.network.nodes.len(), network.nodes.len() + 1);
        assert_eq!(
            router.network.node_idx("ST-NEW"),
            Some(network.nodes.len() as NodeIdx)
        );
    }
}
