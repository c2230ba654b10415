//! The lifecycle of one router's orders: submit (validation, idempotency,
//! placement), confirm, cancel, hold expiry, ship, return, node rejection,
//! node offline, re-routing of bumped units, and retirement. Each method is
//! one step of the state machine; the router actor calls them one message
//! at a time, so its books ([`super::book`]) have a single writer.

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
use super::model::{
    Allocation, ChannelIdx, Decision, FulfilmentMethod, InvalidOrder, MarketIdx, NodeIdx, OrderId,
    OrderRequest, OrderState, RejectReason, ShortLine, SkuId,
};
use super::network::Network;
use super::ops::{NodeOp, StockOp};
use super::order::{request_fingerprint, AllocationState, OrderRecord};
use super::placement::{place, send_ops, Attempt, Participants, Placement, PlanContext};
use super::policy::{Method, PlanLine};
use super::stock::{Bumped, StockError, StockShard};
use crate::limits::{
    ARCHIVED_KEYS_KEPT, DEFAULT_ORDER_RETENTION_MS, MAX_HOLD_TTL_MS, MAX_ID_BYTES,
    MAX_LINES_PER_ORDER, MAX_QTY_PER_LINE,
};

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
    #[error("quantity must be 1..=MAX_QTY_PER_LINE")]
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
            index,
            shard_count,
            orders: Books::new(router, routers),
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
    pub fn take_demand(&mut self) -> Vec<OrderRecord> {
        std::mem::take(&mut self.demand)
    }

    /// Keeps closed orders `retention_ms` before they retire.
    pub fn set_retention_ms(&mut self, retention_ms: u64) {
        self.retention_ms = retention_ms;
    }

    /// Routes from now on by `network`'s policies (a reload): the same
    /// nodes, markets and channels, other rules.
    pub fn set_network(&mut self, network: Arc<Network>) {
        debug_assert_eq!(network.nodes.len(), self.network.nodes.len());
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

    fn resolve(&self, request: &OrderRequest) -> Result<Resolved, InvalidOrder> {
        let channel = self
            .network
            .channel_idx(&request.channel)
            .ok_or(InvalidOrder::UnknownChannel)?;
        if request.client_order_id.is_empty() || request.client_order_id.len() > MAX_ID_BYTES {
            return Err(InvalidOrder::BadOrderId);
        }
        if request.lines.is_empty() {
            return Err(InvalidOrder::NoLines);
        }
        if request.lines.len() > MAX_LINES_PER_ORDER {
            return Err(InvalidOrder::TooManyLines(request.lines.len()));
        }
        let mut lines: SmallVec<[PlanLine; 4]> = SmallVec::with_capacity(request.lines.len());
        for (i, line) in request.lines.iter().enumerate() {
            let line_no = i as u16;
            if line.qty == 0 || line.qty > MAX_QTY_PER_LINE {
                return Err(InvalidOrder::BadQuantity { line: line_no });
            }
            let sku = self
                .index
                .lookup(&line.sku)
                .ok_or(InvalidOrder::UnknownSku { line: line_no })?;
            if lines.iter().any(|l| l.sku == sku) {
                return Err(InvalidOrder::DuplicateSku { line: line_no });
            }
            lines.push(PlanLine {
                line: line_no,
                sku,
                qty: line.qty,
            });
        }
        let ship_to = GeoPoint::new(request.ship_to.lat, request.ship_to.lon)
            .ok_or(InvalidOrder::BadShipTo)?;
        let market = match &request.ship_to.market {
            Some(name) => Some(
                self.network
                    .market_idx(name)
                    .ok_or(InvalidOrder::UnknownMarket)?,
            ),
            None => None,
        };
        let method = match &request.method {
            FulfilmentMethod::Ship => Method::Ship,
            FulfilmentMethod::SameDay => Method::SameDay,
            FulfilmentMethod::Pickup { store } => Method::Pickup {
                store: self
                    .network
                    .node_idx(store)
                    .ok_or(InvalidOrder::UnknownPickupStore)?,
            },
        };
        let hold_ttl_ms = match request.hold_ttl_ms {
            Some(ttl) if ttl == 0 || ttl > MAX_HOLD_TTL_MS => return Err(InvalidOrder::BadHoldTtl),
            Some(ttl) => ttl,
            None => self.network.policy(channel).hold_ttl_ms,
        };
        let fingerprint = request_fingerprint(
            &lines,
            (request.ship_to.lat, request.ship_to.lon),
            market,
            hold_ttl_ms,
            method,
        );
        Ok(Resolved {
            channel,
            lines,
            ship_to,
            market,
            method,
            hold_ttl_ms,
            fingerprint,
        })
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

    /// Routes a batch of orders: validates, answers resubmissions from the
    /// book, places the new ones together, records and answers them.
    pub async fn submit<P: Participants>(
        &mut self,
        requests: &[OrderRequest],
        now_ms: u64,
        participants: &P,
    ) -> Vec<Decision> {
        let mut decisions: Vec<Option<Decision>> = vec![None; requests.len()];
        let mut attempts: Vec<Attempt> = Vec::new();
        // (request index, hold ttl, fingerprint) of each attempt.
        let mut fresh: Vec<(usize, u64, u64)> = Vec::new();
        let mut in_batch: FxHashMap<(ChannelIdx, &str), (usize, u64)> = FxHashMap::default();
        // New orders of this batch so far, per partition.
        let mut taken: FxHashMap<usize, u64> = FxHashMap::default();
        // (request, first request with the same key, same body as that one)
        let mut repeats: Vec<(usize, usize, bool)> = Vec::new();
        for (i, request) in requests.iter().enumerate() {
            let resolved = match self.resolve(request) {
                Ok(resolved) => resolved,
                Err(invalid) => {
                    decisions[i] = Some(Decision::Rejected(RejectReason::Invalid(invalid)));
                    continue;
                }
            };
            let key = (resolved.channel, request.client_order_id.as_str());
            let partition = partition_of_key(&request.channel, key.1);
            if let Some(id) = self.orders.find_key(partition, key.0, key.1) {
                let record = &self.orders[&id];
                let same = record.fingerprint == resolved.fingerprint;
                decisions[i] = Some(if same {
                    record.decision()
                } else {
                    Decision::Rejected(RejectReason::DuplicateMismatch)
                });
                continue;
            }
            if let Some(&(first, fingerprint)) = in_batch.get(&key) {
                repeats.push((i, first, fingerprint == resolved.fingerprint));
                continue;
            }
            in_batch.insert(key, (i, resolved.fingerprint));
            // Ids of this batch's new orders, in their partitions' order.
            let earlier = taken.entry(partition).or_insert(0);
            let order = self.orders.next_id(partition, *earlier);
            *earlier += 1;
            attempts.push(Attempt {
                order,
                lines: resolved.lines,
                ship_to: resolved.ship_to,
                market: resolved.market,
                method: resolved.method,
                channel: resolved.channel,
                excluded: SmallVec::new(),
            });
            fresh.push((i, resolved.hold_ttl_ms, resolved.fingerprint));
        }
        let placements = place(&self.context(), &attempts, now_ms, participants).await;
        // Every id handed out is used up, kept or not: a rejected order's
        // holds are being aborted under it.
        for attempt in &attempts {
            self.orders.used_up_to(attempt.order);
        }
        let mut events: FxHashMap<NodeIdx, Vec<NodeOp>> = FxHashMap::default();
        for ((attempt, placement), &(i, hold_ttl_ms, fingerprint)) in
            attempts.iter().zip(placements).zip(&fresh)
        {
            let decision = self.record_new(
                &requests[i],
                attempt,
                placement,
                hold_ttl_ms,
                fingerprint,
                now_ms,
            );
            if let Decision::Routed { allocations, .. } = &decision {
                let units = allocations.iter().map(|a| (a.node, a.line, a.sku, a.qty));
                announce(
                    &mut events,
                    EventKind::Allocated,
                    &self.orders[&attempt.order],
                    units,
                );
            }
            decisions[i] = Some(decision);
        }
        send_ops(participants, FxHashMap::default(), events);
        for (i, first, same) in repeats {
            decisions[i] = Some(if same {
                decisions[first].clone().expect("first answered")
            } else {
                Decision::Rejected(RejectReason::DuplicateMismatch)
            });
        }
        decisions
            .into_iter()
            .map(|d| d.expect("every request answered"))
            .collect()
    }

    /// Keeps a routed order and answers it; a rejected one reserved
    /// nothing and is not kept (a resubmission is evaluated again).
    fn record_new(
        &mut self,
        request: &OrderRequest,
        attempt: &Attempt,
        placement: Placement,
        hold_ttl_ms: u64,
        fingerprint: u64,
        now_ms: u64,
    ) -> Decision {
        let expires_at_ms = now_ms + hold_ttl_ms;
        let mut record = OrderRecord {
            id: attempt.order,
            fingerprint,
            expires_at_ms,
            client_order_id: Arc::from(request.client_order_id.as_str()),
            lines: attempt.lines.iter().copied().collect(),
            ship_to: (attempt.ship_to.lat, attempt.ship_to.lon),
            allocations: SmallVec::new(),
            extra: None,
            key_next: 0,
            channel: attempt.channel,
            market: attempt.market,
            method: attempt.method,
            state: OrderState::Held,
        };
        let (allocations, short) = match placement {
            Placement::Placed { allocations, short } => (allocations, short),
            Placement::Failed(reason) => {
                if self.record_demand {
                    record.state = OrderState::Rejected;
                    record.extra_mut().rejection = Some(reason.clone());
                    self.demand.push(record);
                }
                return Decision::Rejected(reason);
            }
        };
        record.allocations = allocations
            .iter()
            .map(|a| AllocationState {
                initial: a.qty,
                ..open_allocation(*a)
            })
            .collect();
        if !short.is_empty() {
            let extra = record.extra_mut();
            extra.short = short.clone();
            extra.short_at_decision = short.clone();
        }
        self.expiries.push(Reverse((expires_at_ms, attempt.order)));
        self.orders.insert(record);
        Decision::Routed {
            order_id: attempt.order,
            allocations,
            short,
            expires_at_ms,
        }
    }

    fn open_record(&mut self, order: &OrderRef) -> Result<&mut OrderRecord, OpError> {
        let id = self.lookup(order)?;
        let record = self.orders.get_mut(&id).expect("looked up");
        if !record.state.is_open() {
            return Err(OpError::NotOpen(record.state));
        }
        Ok(record)
    }

    /// The customer paid: the hold becomes firm and no longer expires.
    pub fn confirm(&mut self, order: &OrderRef) -> Result<&OrderRecord, OpError> {
        let record = self.open_record(order)?;
        record.state = OrderState::Confirmed;
        Ok(record)
    }

    /// Releases every open unit of the order and closes it as `state`.
    fn close<P: Participants>(&mut self, id: OrderId, state: OrderState, participants: &P) {
        self.closed.push(id);
        let record = self.orders.get_mut(&id).expect("closing a known order");
        record.state = state;
        let mut stock: FxHashMap<u32, Vec<StockOp>> = FxHashMap::default();
        let mut nodes: FxHashMap<NodeIdx, Vec<NodeOp>> = FxHashMap::default();
        let released = record
            .allocations
            .iter()
            .filter(|a| a.open > 0)
            .map(|a| (a.node, a.line, a.sku, a.open));
        announce(
            &mut nodes,
            EventKind::Released,
            record,
            released.collect::<SmallVec<[_; 4]>>(),
        );
        for allocation in &mut record.allocations {
            if allocation.open > 0 {
                let op = StockOp::Release {
                    order: id,
                    sku: allocation.sku,
                    node: allocation.node,
                    qty: allocation.open,
                };
                stock
                    .entry(StockShard::shard_of(allocation.sku, self.shard_count))
                    .or_default()
                    .push(op);
                allocation.open = 0;
            }
        }
        for node in nodes_of(&record.allocations) {
            nodes.entry(node).or_default().push(record.leave(node));
        }
        send_ops(participants, stock, nodes);
    }

    pub fn cancel<P: Participants>(
        &mut self,
        order: &OrderRef,
        participants: &P,
    ) -> Result<&OrderRecord, OpError> {
        let id = self.open_record(order)?.id;
        self.close(id, OrderState::Cancelled, participants);
        Ok(&self.orders[&id])
    }

    /// Releases every unconfirmed hold whose time has come. Returns how many
    /// orders expired.
    pub fn expire_due<P: Participants>(&mut self, now_ms: u64, participants: &P) -> usize {
        let mut expired = 0;
        while let Some(&Reverse((at, id))) = self.expiries.peek() {
            if at > now_ms {
                break;
            }
            self.expiries.pop();
            let due = self
                .orders
                .get(&id)
                .is_some_and(|r| r.state == OrderState::Held && r.expires_at_ms == at);
            if due {
                self.close(id, OrderState::Expired, participants);
                expired += 1;
            }
        }
        expired
    }

    /// Gives the orders closed since the last call their time to retire
    /// (`retention_ms` from now), and, when `may_remove` (no snapshot is
    /// walking the books, whose places a removal moves), retires those
    /// whose time has come. Returns how many retired.
    pub fn retire_due(&mut self, now_ms: u64, may_remove: bool) -> usize {
        let at = now_ms.saturating_add(self.retention_ms);
        self.retiring
            .extend(self.closed.drain(..).map(|id| (at, id)));
        if !may_remove {
            return 0;
        }
        let mut retired = 0;
        let mut kept_newest: SmallVec<[OrderId; 4]> = SmallVec::new();
        while let Some(&(due, id)) = self.retiring.front() {
            if due > now_ms {
                break;
            }
            self.retiring.pop_front();
            let closed = self.orders.get(&id).is_some_and(|r| !r.state.is_open());
            if !closed {
                continue;
            }
            match self.orders.retire(id) {
                Some(record) => {
                    let fingerprint = key_fingerprint(record.channel, &record.client_order_id);
                    self.archived.add(fingerprint);
                    retired += 1;
                }
                None => kept_newest.push(id),
            }
        }
        // Its partition's newest order stays until a newer one comes.
        self.retiring
            .extend(kept_newest.into_iter().map(|id| (at, id)));
        retired
    }

    /// A node shipped units of an order: they leave on_hand and the
    /// reservation. Partial shipments are allowed.
    pub fn ship<P: Participants>(
        &mut self,
        order: &OrderRef,
        node: NodeIdx,
        sku: SkuId,
        qty: u32,
        participants: &P,
    ) -> Result<&OrderRecord, OpError> {
        check_quantity(qty)?;
        let record = self.open_record(order)?;
        if record.state != OrderState::Confirmed {
            return Err(OpError::NotConfirmed);
        }
        let id = record.id;
        let open: u32 = record
            .allocations
            .iter()
            .filter(|a| a.node == node && a.sku == sku)
            .map(|a| a.open)
            .sum();
        if open == 0 {
            return Err(OpError::NoSuchAllocation);
        }
        if qty > open {
            return Err(OpError::ExceedsOpen {
                requested: qty,
                limit: open,
            });
        }
        participants.stock_ops(
            self.shard_of(sku),
            vec![StockOp::Ship {
                order: id,
                sku,
                node,
                qty,
            }],
        );
        let record = self.orders.get_mut(&id).expect("known order");
        let mut left = qty;
        for allocation in record
            .allocations
            .iter_mut()
            .filter(|a| a.node == node && a.sku == sku)
        {
            let part = allocation.open.min(left);
            allocation.open -= part;
            allocation.shipped += part;
            left -= part;
        }
        let node_done = !record
            .allocations
            .iter()
            .any(|a| a.node == node && a.open > 0);
        if node_done {
            participants.node_ops(node, vec![NodeOp::Finish(id)]);
        }
        let all_done = record.allocations.iter().all(|a| a.open == 0) && record.short().is_empty();
        if all_done {
            record.state = OrderState::Shipped;
            self.closed.push(id);
        }
        Ok(&self.orders[&id])
    }

    /// A customer returned shipped units at `node`: they go back on its shelf.
    pub fn return_units<P: Participants>(
        &mut self,
        order: &OrderRef,
        node: NodeIdx,
        sku: SkuId,
        qty: u32,
        participants: &P,
    ) -> Result<&OrderRecord, OpError> {
        check_quantity(qty)?;
        if node as usize >= self.network.nodes.len() {
            return Err(OpError::UnknownNode);
        }
        let id = self.lookup(order)?;
        let record = self.orders.get_mut(&id).expect("looked up");
        let returnable: u32 = record
            .allocations
            .iter()
            .filter(|a| a.sku == sku)
            .map(|a| a.shipped - a.returned)
            .sum();
        if qty > returnable {
            return Err(OpError::ExceedsShipped {
                requested: qty,
                limit: returnable,
            });
        }
        let mut left = qty;
        for allocation in record.allocations.iter_mut().filter(|a| a.sku == sku) {
            let part = (allocation.shipped - allocation.returned).min(left);
            allocation.returned += part;
            left -= part;
        }
        participants.stock_ops(
            self.shard_of(sku),
            vec![StockOp::Restock { sku, node, qty }],
        );
        Ok(&self.orders[&id])
    }

    /// A node refused its allocation of an order. Its units there are
    /// released, the node's counts (if it reported any) become the cells'
    /// on_hand, and the units are routed again elsewhere. Reservations of
    /// other orders that the corrected counts bump come back as bumps.
    pub async fn node_reject<P: Participants>(
        &mut self,
        order: &OrderRef,
        node: NodeIdx,
        counts: &[(SkuId, u32)],
        now_ms: u64,
        participants: &P,
    ) -> Result<&OrderRecord, OpError> {
        let record = self.open_record(order)?;
        if !record
            .allocations
            .iter()
            .any(|a| a.node == node && a.open > 0)
        {
            return Err(OpError::NoSuchAllocation);
        }
        let id = record.id;
        let moved = self.take_back(id, node, true, participants);
        for &(sku, on_hand) in counts {
            let op = StockOp::Set {
                sku,
                node,
                on_hand,
                safety_stock: None,
            };
            participants.stock_ops(self.shard_of(sku), vec![op]);
        }
        self.place_again(id, moved, now_ms, participants).await;
        Ok(&self.orders[&id])
    }

    /// A node went offline: move the order's unshipped units there elsewhere.
    pub async fn node_offline<P: Participants>(
        &mut self,
        id: OrderId,
        node: NodeIdx,
        now_ms: u64,
        participants: &P,
    ) {
        let open = self.orders.get(&id).is_some_and(|r| {
            r.state.is_open() && r.allocations.iter().any(|a| a.node == node && a.open > 0)
        });
        if open {
            let moved = self.take_back(id, node, true, participants);
            self.place_again(id, moved, now_ms, participants).await;
        }
    }

    /// Reservations a shard took back (a stock count fell below reserved):
    /// the shard already freed the units; route them again.
    pub async fn bumped<P: Participants>(
        &mut self,
        bumps: &[Bumped],
        now_ms: u64,
        participants: &P,
    ) {
        for bump in bumps {
            let Some(record) = self.orders.get_mut(&bump.order) else {
                continue;
            };
            let mut moved: SmallVec<[PlanLine; 4]> = SmallVec::new();
            let mut left = bump.qty;
            for allocation in record
                .allocations
                .iter_mut()
                .filter(|a| a.node == bump.node && a.sku == bump.sku)
            {
                let part = allocation.open.min(left);
                allocation.open -= part;
                left -= part;
                if part > 0 {
                    moved.push(PlanLine {
                        line: allocation.line,
                        sku: allocation.sku,
                        qty: part,
                    });
                }
            }
            if !record
                .allocations
                .iter()
                .any(|a| a.node == bump.node && a.open > 0)
            {
                participants.node_ops(bump.node, vec![record.leave(bump.node)]);
            }
            let mut nodes = FxHashMap::default();
            let released = moved.iter().map(|m| (bump.node, m.line, m.sku, m.qty));
            announce(&mut nodes, EventKind::Released, record, released);
            send_ops(participants, FxHashMap::default(), nodes);
            if record.state.is_open() {
                self.place_again(bump.order, moved, now_ms, participants)
                    .await;
            }
        }
    }

    /// Frees the order's open units at `node` (and excludes the node from
    /// now on when `exclude`). Returns the lines to place again.
    fn take_back<P: Participants>(
        &mut self,
        id: OrderId,
        node: NodeIdx,
        exclude: bool,
        participants: &P,
    ) -> SmallVec<[PlanLine; 4]> {
        let record = self.orders.get_mut(&id).expect("known order");
        let mut moved: SmallVec<[PlanLine; 4]> = SmallVec::new();
        let mut stock: FxHashMap<u32, Vec<StockOp>> = FxHashMap::default();
        for allocation in record
            .allocations
            .iter_mut()
            .filter(|a| a.node == node && a.open > 0)
        {
            let op = StockOp::Release {
                order: id,
                sku: allocation.sku,
                node,
                qty: allocation.open,
            };
            stock
                .entry(StockShard::shard_of(allocation.sku, self.shard_count))
                .or_default()
                .push(op);
            match moved.iter_mut().find(|m| m.line == allocation.line) {
                Some(line) => line.qty += allocation.open,
                None => moved.push(PlanLine {
                    line: allocation.line,
                    sku: allocation.sku,
                    qty: allocation.open,
                }),
            }
            allocation.open = 0;
        }
        if exclude && !record.excluded().contains(&node) {
            record.extra_mut().excluded.push(node);
        }
        let node_op = record.leave(node);
        let mut nodes = FxHashMap::default();
        let released = moved.iter().map(|m| (node, m.line, m.sku, m.qty));
        announce(&mut nodes, EventKind::Released, record, released);
        nodes.entry(node).or_default().push(node_op);
        send_ops(participants, stock, nodes);
        moved
    }

    /// Routes `lines` of an open order again, avoiding its excluded nodes,
    /// and merges the result into the record.
    async fn place_again<P: Participants>(
        &mut self,
        id: OrderId,
        lines: SmallVec<[PlanLine; 4]>,
        now_ms: u64,
        participants: &P,
    ) {
        if lines.is_empty() {
            return;
        }
        let record = &self.orders[&id];
        let attempt = Attempt {
            order: id,
            lines: lines.clone(),
            ship_to: GeoPoint::new(record.ship_to.0, record.ship_to.1)
                .expect("validated at submit"),
            market: record.market,
            method: record.method,
            channel: record.channel,
            excluded: record.excluded().into(),
        };
        let placement = place(
            &self.context(),
            std::slice::from_ref(&attempt),
            now_ms,
            participants,
        )
        .await
        .remove(0);
        let record = self.orders.get_mut(&id).expect("known order");
        let (allocations, short) = match placement {
            Placement::Placed { allocations, short } => (allocations, short),
            Placement::Failed(_) => {
                let short = lines
                    .iter()
                    .map(|l| ShortLine {
                        line: l.line,
                        sku: l.sku,
                        requested: l.qty,
                        available: 0,
                    })
                    .collect();
                (Vec::new(), short)
            }
        };
        let mut events = FxHashMap::default();
        let units = allocations.iter().map(|a| (a.node, a.line, a.sku, a.qty));
        announce(&mut events, EventKind::Allocated, record, units);
        send_ops(participants, FxHashMap::default(), events);
        for allocation in allocations {
            match record
                .allocations
                .iter_mut()
                .find(|a| a.line == allocation.line && a.node == allocation.node)
            {
                Some(existing) => existing.open += allocation.qty,
                None => record.allocations.push(open_allocation(allocation)),
            }
        }
        for line in short {
            let extra = record.extra_mut();
            extra.short.retain(|s| s.line != line.line);
            extra.short.push(line);
        }
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
