//! The order book of one router: every order whose key hashes here, its
//! lifecycle, idempotency and hold expiry. Each method is one step of the
//! state machine; the router actor calls them one message at a time, so the
//! book has a single writer.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use rustc_hash::{FxHashMap, FxHasher};
use smallvec::SmallVec;

use super::events::{EventKind, NodeEvent};
use super::geo::GeoPoint;
use super::index::AvailabilityIndex;
use super::model::{
    Allocation, ArchivedOrderState, ArchivedRejectReason, ChannelIdx, Decision, FulfilmentMethod,
    InvalidOrder, MarketIdx, NodeIdx, OrderId, OrderRequest, OrderState, RejectReason, ShortLine,
    SkuId,
};
use super::network::Network;
use super::placement::{
    place, send_ops, Attempt, NodeOp, Participants, Placement, PlanContext, StockOp,
};
use super::policy::{Method, PlanLine};
use super::stock::{Bumped, StockError, StockShard};

use crate::limits::{
    ARCHIVED_KEYS_KEPT, DEFAULT_ORDER_RETENTION_MS, MAX_HOLD_TTL_MS, MAX_ID_BYTES,
    MAX_LINES_PER_ORDER, MAX_QTY_PER_LINE,
};

/// Partitions of the order key space. An order key hashes to one of them
/// for good, an order id keeps it in its low byte, and a router owns the
/// partitions `p` with `p % routers == router`: so the router count can
/// change and every order is still found by key and by id.
pub const PARTITIONS: usize = 256;
/// Routers in one daemon: each owns at least one partition.
pub const MAX_ROUTERS: usize = PARTITIONS;

/// The partition of an order key. Deterministic across restarts and builds
/// (the data directory depends on it; a test pins it).
pub fn partition_of_key(channel: &str, client_order_id: &str) -> usize {
    let mut hasher = FxHasher::default();
    channel.hash(&mut hasher);
    client_order_id.hash(&mut hasher);
    (hasher.finish() % PARTITIONS as u64) as usize
}

/// The partition of an order id.
pub fn partition_of_order(order: OrderId) -> usize {
    (order % PARTITIONS as u64) as usize
}

/// The router of `routers` that owns an order id.
pub fn router_of_order(order: OrderId, routers: usize) -> usize {
    partition_of_order(order) % routers
}

/// The router of `routers` that owns a client order key.
pub fn router_of_key(channel: &str, client_order_id: &str, routers: usize) -> usize {
    partition_of_key(channel, client_order_id) % routers
}

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

/// One line's units at one node over the order's life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct AllocationState {
    pub line: u16,
    pub node: NodeIdx,
    pub sku: SkuId,
    /// Units the decision at submit placed here (0 for units a re-route
    /// brought later); the submit decision is rebuilt from these.
    pub initial: u32,
    /// Reserved and not yet shipped.
    pub open: u32,
    pub shipped: u32,
    pub returned: u32,
}

/// The parts of an order that most orders never need, boxed so that the
/// common record stays small (a daemon keeps millions of them).
#[derive(Clone, Debug, Default, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct Extra {
    /// Lines (partly) unallocated now: at submit under a partial policy, or
    /// after a re-route found no other node.
    short: Vec<ShortLine>,
    /// The short lines the submit decision reported.
    short_at_decision: Vec<ShortLine>,
    /// Nodes that rejected the order or went offline while serving it.
    excluded: SmallVec<[NodeIdx; 4]>,
    /// Why the order was rejected at submit.
    rejection: Option<RejectReason>,
}

/// An order as the book keeps it.
#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct OrderRecord {
    pub id: OrderId,
    /// Hash of the request body, to tell a retry from a conflicting reuse.
    fingerprint: u64,
    pub expires_at_ms: u64,
    pub client_order_id: Arc<str>,
    pub lines: Box<[PlanLine]>,
    /// Ship-to latitude and longitude, in degrees.
    pub ship_to: (f64, f64),
    pub allocations: SmallVec<[AllocationState; 1]>,
    extra: Option<Box<Extra>>,
    /// The next older order whose key has the same hash, as sequence + 1
    /// (0: none). Keys are found by hash, and collisions chain through here.
    /// Rebuilt on load, so never stored.
    #[rkyv(with = rkyv::with::Skip)]
    key_next: u32,
    pub channel: ChannelIdx,
    pub market: Option<MarketIdx>,
    pub method: Method,
    pub state: OrderState,
}

/// A run of a book's orders, archived as a `Vec<OrderRecord>` straight
/// from where they lie: a snapshot encodes the book a run at a time and
/// never copies the orders on the heap (the copies of a first snapshot of
/// a million orders were fresh memory, and zeroing it stalled routing).
pub struct BookChunk<'a>(pub &'a [OrderRecord]);

impl rkyv::Archive for BookChunk<'_> {
    type Archived = rkyv::vec::ArchivedVec<ArchivedOrderRecord>;
    type Resolver = rkyv::vec::VecResolver;

    fn resolve(&self, resolver: Self::Resolver, out: rkyv::Place<Self::Archived>) {
        rkyv::vec::ArchivedVec::resolve_from_len(self.0.len(), resolver, out);
    }
}

impl<S> rkyv::Serialize<S> for BookChunk<'_>
where
    S: rkyv::rancor::Fallible + rkyv::ser::Allocator + rkyv::ser::Writer + ?Sized,
    OrderRecord: rkyv::Serialize<S>,
{
    fn serialize(&self, serializer: &mut S) -> Result<Self::Resolver, S::Error> {
        rkyv::vec::ArchivedVec::serialize_from_slice(self.0, serializer)
    }
}

impl BookChunk<'_> {
    /// The archive of these orders, written into `out` (emptied first, so a
    /// buffer can serve one chunk after another).
    pub fn encode(&self, mut out: rkyv::util::AlignedVec) -> rkyv::util::AlignedVec {
        out.clear();
        rkyv::api::high::to_bytes_in::<_, rkyv::rancor::Error>(self, out)
            .expect("orders always serialize")
    }
}

impl OrderRecord {
    /// Lines (partly) unallocated now.
    pub fn short(&self) -> &[ShortLine] {
        self.extra.as_ref().map_or(&[], |e| &e.short)
    }

    /// Nodes this order must not use any more.
    pub fn excluded(&self) -> &[NodeIdx] {
        self.extra.as_ref().map_or(&[], |e| &e.excluded)
    }

    /// What tells `node` the order no longer needs it: `Finish` when units
    /// shipped from there (the day's capacity was used), else `Release`.
    fn leave(&self, node: NodeIdx) -> NodeOp {
        if self
            .allocations
            .iter()
            .any(|a| a.node == node && a.shipped > 0)
        {
            NodeOp::Finish(self.id)
        } else {
            NodeOp::Release(self.id)
        }
    }

    fn extra_mut(&mut self) -> &mut Extra {
        self.extra.get_or_insert_with(Default::default)
    }

    /// The answer given at submit, rebuilt for a resubmission.
    pub fn decision(&self) -> Decision {
        if self.state == OrderState::Rejected {
            let reason = self.extra.as_ref().and_then(|e| e.rejection.clone());
            return Decision::Rejected(reason.expect("a rejected order keeps its reason"));
        }
        Decision::Routed {
            order_id: self.id,
            allocations: self
                .allocations
                .iter()
                .filter(|a| a.initial > 0)
                .map(|a| Allocation {
                    line: a.line,
                    sku: a.sku,
                    node: a.node,
                    qty: a.initial,
                })
                .collect(),
            short: self
                .extra
                .as_ref()
                .map_or_else(Vec::new, |e| e.short_at_decision.clone()),
            expires_at_ms: self.expires_at_ms,
        }
    }
}

/// A journaled submit decision as the what-if replay compares it, read in
/// place from the archived record: the common order needs no allocation.
#[derive(Clone, Debug, PartialEq)]
pub struct RecordedDecision {
    /// The units placed at submit (as [`OrderRecord::decision`] lists them).
    pub allocations: SmallVec<[Allocation; 4]>,
    /// Lines reported short: at submit under a partial policy, or the
    /// lines of a short rejection.
    pub short_lines: usize,
    /// Why it was rejected, if it was. A short rejection comes without its
    /// lines (`short_lines` counts them): the replay compares kinds.
    pub rejection: Option<RejectReason>,
}

impl ArchivedOrderRecord {
    /// The submit decision journaled with this record; a rejected record
    /// without its reason is damage, reported, never a panic.
    pub fn recorded_decision(&self) -> Result<RecordedDecision, String> {
        let extra = self.extra.as_ref();
        if matches!(self.state, ArchivedOrderState::Rejected) {
            let Some(reason) = extra.and_then(|e| e.rejection.as_ref()) else {
                return Err(format!(
                    "order {}: rejected without a reason",
                    self.id.to_native()
                ));
            };
            let (rejection, short_lines) = match reason {
                ArchivedRejectReason::Short { lines } => {
                    (RejectReason::Short { lines: Vec::new() }, lines.len())
                }
                other => (
                    rkyv::deserialize::<RejectReason, rkyv::rancor::Error>(other)
                        .map_err(|e| e.to_string())?,
                    0,
                ),
            };
            return Ok(RecordedDecision {
                allocations: SmallVec::new(),
                short_lines,
                rejection: Some(rejection),
            });
        }
        Ok(RecordedDecision {
            allocations: self
                .allocations
                .iter()
                .filter(|a| a.initial.to_native() > 0)
                .map(|a| Allocation {
                    line: a.line.to_native(),
                    sku: a.sku.to_native(),
                    node: a.node.to_native(),
                    qty: a.initial.to_native(),
                })
                .collect(),
            short_lines: extra.map_or(0, |e| e.short_at_decision.len()),
            rejection: None,
        })
    }
}

/// Records per segment of the order book. Growth adds a segment and never
/// moves the ones before it: no pause to copy a million records.
const ORDERS_PER_SEGMENT: usize = 4096;

/// The orders of one partition, kept dense in segments: an order id is
/// `sequence * PARTITIONS + partition`, a small map finds an order's place
/// by its sequence, and a retired order's place is taken by the last one,
/// so memory follows the orders kept, not the orders ever taken.
struct OrderBook {
    partition: u64,
    segments: Vec<Vec<OrderRecord>>,
    count: usize,
    /// The sequence the next new order gets. Ids are handed out before a
    /// placement is known, so a rejected order uses one up; it only grows.
    next_sequence: u32,
    /// The highest sequence kept: never retired, so that a restart (which
    /// counts on from the orders it finds) never gives out a kept or
    /// retired order's id again.
    newest: u32,
    /// Sequence to place in `segments`.
    by_sequence: FxHashMap<u32, u32>,
    /// Hash of (channel, client order id) to a place + 1 with it.
    /// (32 bits of hash: collisions chain through `key_next` anyway, and
    /// half-size entries matter at millions of orders.)
    by_key: FxHashMap<u32, u32>,
}

fn key_hash(channel: ChannelIdx, client_order_id: &str) -> u32 {
    let hash = key_fingerprint(channel, client_order_id);
    (hash ^ (hash >> 32)) as u32
}

/// 64 bits of (channel, client order id): what the archive of retired
/// keys keeps of an order.
fn key_fingerprint(channel: ChannelIdx, client_order_id: &str) -> u64 {
    let mut hasher = FxHasher::default();
    channel.hash(&mut hasher);
    client_order_id.hash(&mut hasher);
    hasher.finish()
}

fn sequence_of(id: OrderId) -> u64 {
    id / PARTITIONS as u64
}

impl OrderBook {
    fn new(partition: usize) -> OrderBook {
        OrderBook {
            partition: partition as u64,
            segments: Vec::new(),
            count: 0,
            next_sequence: 1,
            newest: 0,
            by_sequence: FxHashMap::default(),
            by_key: FxHashMap::default(),
        }
    }

    fn place(&self, id: OrderId) -> Option<usize> {
        if id % PARTITIONS as u64 != self.partition {
            return None;
        }
        let sequence = u32::try_from(sequence_of(id)).ok()?;
        self.by_sequence.get(&sequence).map(|&place| place as usize)
    }

    fn at(&self, place: usize) -> &OrderRecord {
        &self.segments[place / ORDERS_PER_SEGMENT][place % ORDERS_PER_SEGMENT]
    }

    fn at_mut(&mut self, place: usize) -> &mut OrderRecord {
        &mut self.segments[place / ORDERS_PER_SEGMENT][place % ORDERS_PER_SEGMENT]
    }

    /// The id of the `earlier`-th new order after the next one.
    fn next_id(&self, earlier: u64) -> OrderId {
        (u64::from(self.next_sequence) + earlier) * PARTITIONS as u64 + self.partition
    }

    /// Ids up to `id` are given out (kept or not).
    fn used_up_to(&mut self, id: OrderId) {
        let next =
            u32::try_from(sequence_of(id) + 1).expect("at most u32::MAX orders per partition");
        self.next_sequence = self.next_sequence.max(next);
    }

    fn find_key(&self, channel: ChannelIdx, client_order_id: &str) -> Option<usize> {
        let mut next = self
            .by_key
            .get(&key_hash(channel, client_order_id))
            .copied()
            .unwrap_or(0);
        while next != 0 {
            let record = self.at(next as usize - 1);
            if record.channel == channel && &*record.client_order_id == client_order_id {
                return Some(next as usize - 1);
            }
            next = record.key_next;
        }
        None
    }

    /// Keeps a new order (any sequence not kept yet), at the end.
    fn insert(&mut self, mut record: OrderRecord) {
        let sequence =
            u32::try_from(sequence_of(record.id)).expect("at most u32::MAX orders per partition");
        let place = self.count;
        let link = u32::try_from(place + 1).expect("at most u32::MAX orders per partition");
        let hash = key_hash(record.channel, &record.client_order_id);
        record.key_next = self.by_key.insert(hash, link).unwrap_or(0);
        if place == self.segments.len() * ORDERS_PER_SEGMENT {
            // The first segment grows as it fills: a router owns many
            // partitions, most of them small in a small shop.
            self.segments.push(if self.segments.is_empty() {
                Vec::new()
            } else {
                Vec::with_capacity(ORDERS_PER_SEGMENT)
            });
        }
        self.segments[place / ORDERS_PER_SEGMENT].push(record);
        self.by_sequence.insert(sequence, place as u32);
        self.count += 1;
        self.newest = self.newest.max(sequence);
        self.next_sequence = self.next_sequence.max(sequence + 1);
    }

    /// Points the key chain link that leads to `from` (a place + 1) at `to`.
    fn relink(&mut self, hash: u32, from: u32, to: u32) {
        let head = self.by_key.get_mut(&hash).expect("a kept key has a chain");
        if *head == from {
            if to == 0 {
                self.by_key.remove(&hash);
            } else {
                *head = to;
            }
            return;
        }
        let mut at = *head;
        while at != 0 {
            let record = self.at_mut(at as usize - 1);
            if record.key_next == from {
                record.key_next = to;
                return;
            }
            at = record.key_next;
        }
        unreachable!("a kept order is on its key's chain");
    }

    /// Forgets the order at `place`; the last order moves into its place.
    fn remove(&mut self, place: usize) -> OrderRecord {
        let link = place as u32 + 1;
        let (hash, next, sequence) = {
            let record = self.at(place);
            let hash = key_hash(record.channel, &record.client_order_id);
            (hash, record.key_next, sequence_of(record.id) as u32)
        };
        self.relink(hash, link, next);
        self.by_sequence.remove(&sequence);
        let last = self.count - 1;
        if place != last {
            let (last_hash, last_sequence) = {
                let record = self.at(last);
                let hash = key_hash(record.channel, &record.client_order_id);
                (hash, sequence_of(record.id) as u32)
            };
            self.relink(last_hash, last as u32 + 1, link);
            self.by_sequence.insert(last_sequence, place as u32);
        }
        let moved = self.segments[last / ORDERS_PER_SEGMENT]
            .pop()
            .expect("the last order");
        self.count -= 1;
        let removed = if place == last {
            moved
        } else {
            std::mem::replace(self.at_mut(place), moved)
        };
        // An empty segment goes, but one spare stays: orders coming and
        // going at a segment's edge would otherwise allocate each time.
        while self.segments.len() * ORDERS_PER_SEGMENT >= self.count + 2 * ORDERS_PER_SEGMENT {
            self.segments.pop();
        }
        removed
    }
}

/// How far a snapshot has come through a router's books: a book, and the
/// orders of it done. Books only grow at their ends, so the cursor stays
/// right while orders arrive between snapshot steps.
#[derive(Clone, Copy, Debug, Default)]
pub struct BookCursor {
    book: usize,
    done: usize,
}

/// The orders of one router: a book per partition it owns.
struct Books {
    router: usize,
    routers: usize,
    /// Partition `p`'s book at `p / routers`.
    books: Vec<OrderBook>,
    count: usize,
    /// Orders changed since the last [`RouterCore::take_dirty`]: what the
    /// next journal record must carry.
    dirty: Vec<OrderId>,
}

impl Books {
    fn new(router: usize, routers: usize) -> Books {
        Books {
            router,
            routers,
            books: (router..PARTITIONS)
                .step_by(routers)
                .map(OrderBook::new)
                .collect(),
            count: 0,
            dirty: Vec::new(),
        }
    }

    /// The book of `partition`, if this router owns it.
    fn book(&self, partition: usize) -> Option<&OrderBook> {
        (partition % self.routers == self.router).then(|| &self.books[partition / self.routers])
    }

    fn book_mut(&mut self, partition: usize) -> Option<&mut OrderBook> {
        (partition % self.routers == self.router).then(|| &mut self.books[partition / self.routers])
    }

    fn get(&self, id: &OrderId) -> Option<&OrderRecord> {
        let book = self.book(partition_of_order(*id))?;
        book.place(*id).map(|place| book.at(place))
    }

    fn get_mut(&mut self, id: &OrderId) -> Option<&mut OrderRecord> {
        if self.dirty.last() != Some(id) {
            self.dirty.push(*id);
        }
        let book = self.book_mut(partition_of_order(*id))?;
        let place = book.place(*id)?;
        Some(book.at_mut(place))
    }

    fn contains_key(&self, id: &OrderId) -> bool {
        self.get(id).is_some()
    }

    fn len(&self) -> usize {
        self.count
    }

    fn values(&self) -> impl Iterator<Item = &OrderRecord> {
        self.books.iter().flat_map(|b| b.segments.iter().flatten())
    }

    /// The id of the `earlier`-th new order after the next in `partition`
    /// (which this router owns).
    fn next_id(&self, partition: usize, earlier: u64) -> OrderId {
        self.book(partition)
            .expect("a partition of this router")
            .next_id(earlier)
    }

    /// Whether `id` (of a partition this router owns) was given out.
    fn given_out(&self, id: OrderId) -> bool {
        let sequence = sequence_of(id);
        self.book(partition_of_order(id))
            .is_some_and(|book| sequence >= 1 && sequence < u64::from(book.next_sequence))
    }

    /// Ids of `partition` up to `id` are given out.
    fn used_up_to(&mut self, id: OrderId) {
        self.book_mut(partition_of_order(id))
            .expect("a partition of this router")
            .used_up_to(id);
    }

    /// The order of a key in `partition` (the key's, see [`partition_of_key`]).
    fn find_key(
        &self,
        partition: usize,
        channel: ChannelIdx,
        client_order_id: &str,
    ) -> Option<OrderId> {
        let book = self.book(partition)?;
        let place = book.find_key(channel, client_order_id)?;
        Some(book.at(place).id)
    }

    fn insert(&mut self, record: OrderRecord) {
        self.dirty.push(record.id);
        self.book_mut(partition_of_order(record.id))
            .expect("a partition of this router")
            .insert(record);
        self.count += 1;
    }

    /// Forgets a closed order, unless it is its partition's newest (kept
    /// so that ids are never given out twice). Returns whether it went.
    fn retire(&mut self, id: OrderId) -> Option<OrderRecord> {
        let book = self.book_mut(partition_of_order(id))?;
        let place = book.place(id)?;
        if sequence_of(id) == u64::from(book.newest) {
            return None;
        }
        let record = book.remove(place);
        self.count -= 1;
        Some(record)
    }

    /// Puts a journaled or snapshotted order in its book as it was
    /// written, without marking it changed: a known one is replaced. A
    /// rejected order (which a format-1 directory kept) only uses up its id.
    fn restore(&mut self, mut record: OrderRecord) -> Result<(), String> {
        let partition = partition_of_order(record.id);
        let (router, routers) = (self.router, self.routers);
        let Some(book) = self.book_mut(partition) else {
            return Err(format!(
                "order {} is in partition {partition}, of router {} of {routers}, not {router}",
                record.id,
                partition % routers,
            ));
        };
        if sequence_of(record.id) == 0 || sequence_of(record.id) > u64::from(u32::MAX - 1) {
            return Err(format!("order id {} is out of range", record.id));
        }
        if record.state == OrderState::Rejected {
            book.used_up_to(record.id);
        } else if let Some(place) = book.place(record.id) {
            let existing = book.at_mut(place);
            record.key_next = existing.key_next;
            *existing = record;
        } else {
            book.insert(record);
            self.count += 1;
        }
        Ok(())
    }
}

impl std::ops::Index<&OrderId> for Books {
    type Output = OrderRecord;

    fn index(&self, id: &OrderId) -> &OrderRecord {
        self.get(id).expect("a known order id")
    }
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

/// Keys of the most recently retired orders, at most `capacity`: enough
/// to answer "archived" rather than "unknown" for an order that closed a
/// while ago, in bounded memory.
struct ArchivedKeys {
    capacity: usize,
    order: VecDeque<u64>,
    kept: FxHashMap<u64, u32>,
}

impl ArchivedKeys {
    fn new(capacity: usize) -> ArchivedKeys {
        ArchivedKeys {
            capacity,
            order: VecDeque::new(),
            kept: FxHashMap::default(),
        }
    }

    fn add(&mut self, fingerprint: u64) {
        if self.capacity == 0 {
            return;
        }
        if self.order.len() == self.capacity {
            let oldest = self.order.pop_front().expect("full");
            if let Some(count) = self.kept.get_mut(&oldest) {
                *count -= 1;
                if *count == 0 {
                    self.kept.remove(&oldest);
                }
            }
        }
        self.order.push_back(fingerprint);
        *self.kept.entry(fingerprint).or_insert(0) += 1;
    }

    fn contains(&self, fingerprint: u64) -> bool {
        self.kept.contains_key(&fingerprint)
    }
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
        while let Some(book) = self.orders.books.get(cursor.book) {
            if cursor.done < book.count {
                let segment = &book.segments[cursor.done / ORDERS_PER_SEGMENT];
                let start = cursor.done % ORDERS_PER_SEGMENT;
                let run = &segment[start..segment.len().min(start + max)];
                cursor.done += run.len();
                return run;
            }
            cursor.book += 1;
            cursor.done = 0;
        }
        &[]
    }

    /// Every order, the book given up (a relayout moves them elsewhere).
    pub fn into_orders(self) -> impl Iterator<Item = OrderRecord> {
        self.orders
            .books
            .into_iter()
            .flat_map(|b| b.segments.into_iter().flatten())
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
        let per_book = orders.div_ceil(self.orders.books.len());
        for book in &mut self.orders.books {
            book.by_key.reserve(per_book);
            book.by_sequence.reserve(per_book);
        }
    }

    /// Forgets which orders changed (nothing is journaled).
    pub fn clear_dirty(&mut self) {
        self.orders.dirty.clear();
    }

    /// Puts a journaled or snapshotted order into the book as it was
    /// written: a new one must be the next id, a known one is replaced.
    pub fn restore(&mut self, record: OrderRecord) -> Result<(), String> {
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
        let mut hasher = FxHasher::default();
        for line in &lines {
            (line.sku, line.qty).hash(&mut hasher);
        }
        (
            request.ship_to.lat.to_bits(),
            request.ship_to.lon.to_bits(),
            market,
            hold_ttl_ms,
        )
            .hash(&mut hasher);
        match method {
            Method::Ship => 0u32.hash(&mut hasher),
            Method::SameDay => 1u32.hash(&mut hasher),
            Method::Pickup { store } => (2u32, store).hash(&mut hasher),
        }
        Ok(Resolved {
            channel,
            lines,
            ship_to,
            market,
            method,
            hold_ttl_ms,
            fingerprint: hasher.finish(),
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
    pub fn check_invariants(&self) -> Result<(), String> {
        for record in self.orders.values() {
            for line in record.lines.iter() {
                let placed: u32 = record
                    .allocations
                    .iter()
                    .filter(|a| a.line == line.line)
                    .map(|a| a.open + a.shipped)
                    .sum();
                if record.state.is_open() && placed > line.qty {
                    return Err(format!(
                        "order {}: line {} placed {placed} > {}",
                        record.id, line.line, line.qty
                    ));
                }
            }
            if !record.state.is_open() && record.allocations.iter().any(|a| a.open > 0) {
                return Err(format!(
                    "order {} is {:?} but keeps open units",
                    record.id, record.state
                ));
            }
            if record.allocations.iter().any(|a| a.returned > a.shipped) {
                return Err(format!("order {} returned more than shipped", record.id));
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

    #[test]
    fn order_keys_hash_to_the_partitions_they_always_did() {
        // Proves the partition of an order key is what it was when these values were taken:
        // stored order ids carry it and key lookups recompute it, so a change of hasher (a
        // crate update) would strand every stored order. If this fails, the data directory
        // format must change with it.
        let keys = [
            ("web", "o-1"),
            ("web", "o-2"),
            ("marketplace", "MP-000042"),
            ("app", ""),
            ("store", "ü-ßé-😀"),
        ];
        let partitions = keys.map(|(channel, id)| partition_of_key(channel, id));
        assert_eq!(partitions, PINNED, "partitions of {keys:?}");
        assert_eq!(router_of_key("web", "o-1", 3), PINNED[0] % 3);
        assert_eq!(partition_of_order(7 * PARTITIONS as u64 + 5), 5);
        assert_eq!(router_of_order(7 * PARTITIONS as u64 + 5, 2), 1);
    }

    const PINNED: [usize; 5] = [158, 247, 116, 135, 253];

    fn record(partition: usize, sequence: u64, key: &str) -> OrderRecord {
        OrderRecord {
            id: sequence * PARTITIONS as u64 + partition as u64,
            fingerprint: 0,
            expires_at_ms: 0,
            client_order_id: Arc::from(key),
            lines: Box::new([]),
            ship_to: (0.0, 0.0),
            allocations: SmallVec::new(),
            extra: None,
            key_next: 0,
            channel: (sequence % 3) as ChannelIdx,
            market: None,
            method: Method::Ship,
            state: OrderState::Cancelled,
        }
    }

    #[test]
    fn a_book_finds_every_kept_order_by_id_and_key_after_removals() {
        // Proves removing orders (the last one moving into the hole) keeps every other order
        // findable by id and by key, across segments and colliding key chains, and frees the
        // segments it no longer needs.
        let partition = 7;
        let mut book = OrderBook::new(partition);
        let total = 3 * ORDERS_PER_SEGMENT as u64 + 17;
        // Keys repeat across channels, so chains of the same text exist.
        let key = |sequence: u64| format!("k-{}", sequence / 3);
        for sequence in 1..=total {
            book.insert(record(partition, sequence, &key(sequence)));
        }
        let mut kept: Vec<u64> = (1..=total).collect();
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        while kept.len() > 100 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let sequence = kept.swap_remove((state % kept.len() as u64) as usize);
            let id = sequence * PARTITIONS as u64 + partition as u64;
            let removed = book.remove(book.place(id).expect("kept"));
            assert_eq!(removed.id, id);
            assert!(book.place(id).is_none());
        }
        assert_eq!(book.count, kept.len());
        assert!(
            book.segments.len() <= 2,
            "{} segments for 100 orders",
            book.segments.len()
        );
        for &sequence in &kept {
            let id = sequence * PARTITIONS as u64 + partition as u64;
            let place = book.place(id).expect("kept by id");
            assert_eq!(book.at(place).id, id);
            let channel = (sequence % 3) as ChannelIdx;
            assert_eq!(
                book.find_key(channel, &key(sequence)),
                Some(place),
                "by key"
            );
        }
        assert_eq!(
            book.next_id(0) / PARTITIONS as u64,
            total + 1,
            "ids are never reused"
        );
    }
}
