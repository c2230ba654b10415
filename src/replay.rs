//! What-if replay: the order stream a journal recorded, routed again under
//! another policy, offline and in process, with the recorded outcome and the
//! what-if outcome side by side.
//!
//! The replay starts from the journal's first record (a fresh directory's
//! stock load), so it needs every segment: `journal.keep_segments = true`.
//! It applies what the outside world did, in LSN order: stock counts,
//! restocks from returns, nodes going on and offline, each recorded cancel
//! or expiry (which frees the what-if allocation of that order) and each
//! order that shipped in full (its what-if units leave stock). Each
//! journal record's new orders are placed together, as the router that
//! recorded them placed them, by the same core code (`place`).
//!
//! Two threads share the work. The reader reads, checks and validates the
//! records a batch ahead, counts the recorded side, interns new SKUs,
//! lists what each record makes the what-if world do (outside-world stock
//! and node ops, closes of orders seen before), and plans each new order's
//! first try against the what-if index as it is then, with a
//! [`PlanStamp`]. The placer applies those events in LSN order and places
//! the new orders, using a plan made ahead only while its stamp still holds
//! (else it plans again): the decisions are those of planning in line.
//! Records are read in place, never decoded whole.
//!
//! With `--threads 1` one thread does both in turn, a record at a time:
//! the same decisions and report, at about half the speed, leaving the
//! other core to a daemon on the same host.
//!
//! Not replayed: re-routes (node rejections, bumps), which depend on what
//! the nodes did with the recorded allocation. Capacity is counted as one
//! day for the whole journal.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use futures::executor::block_on;
use smallvec::SmallVec;

use crate::config::ValidConfig;
use crate::core::book::{partition_of_order, PARTITIONS};
use crate::core::geo::GeoPoint;
use crate::core::index::AvailabilityIndex;
use crate::core::model::{
    Allocation, ArchivedOrderState, Decision, NodeIdx, OrderId, RejectReason,
};
use crate::core::network::{Channel, Network};
use crate::core::ops::{
    apply_node_op, apply_stock_op, ArchivedNodeOp, ArchivedStockOp, NodeOp, StockOp,
};
use crate::core::order::{ArchivedOrderRecord, OrderRecord, RecordedDecision};
use crate::core::placement::{place_planned, unplanned, Attempt, Placement, PlanContext};
use crate::core::policy::{plan, Method, Plan, PlanError, PlanLine, PlanStamp};
use crate::core::sim::LocalParticipants;
use crate::core::stock::StockShard;
use crate::engine::sequencer::{
    ArchivedTxn, SharedSeen, Txn, KIND_DEMAND, KIND_DEMAND_LOST, KIND_POLICY, KIND_TXN,
};
use crate::store;

/// Threads a replay can use: one reads and plans ahead, one places.
pub const MAX_REPLAY_THREADS: usize = 2;

/// How a replay shares its work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Threads {
    /// One thread reads, plans and places, a record at a time.
    One,
    /// [`MAX_REPLAY_THREADS`]: one reads and plans ahead, the other places.
    Two,
}

impl Threads {
    pub fn count(self) -> usize {
        match self {
            Threads::One => 1,
            Threads::Two => MAX_REPLAY_THREADS,
        }
    }
}
/// Differences listed by example in the report.
pub const MAX_LISTED_DIFFERENCES: usize = 10;
/// The replay's clock: capacity is one day for the whole journal.
const REPLAY_NOW_MS: u64 = 0;
/// Shards of the what-if world, whatever the journal's count. Placement
/// decides the same with any count (a shard only groups the holds it is
/// sent), and one saves a hold request, its lists and its reservation map
/// per extra shard an order touches.
const WHAT_IF_SHARDS: u32 = 1;

/// One side of the comparison.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Side {
    pub orders: u64,
    pub routed: u64,
    /// Routed with some lines short (partial policies).
    pub partial: u64,
    /// Rejected for lack of stock.
    pub short: u64,
    /// Rejected for another reason (no eligible node, too many shipments, ...).
    pub rejected_other: u64,
    /// Distinct nodes per routed order, summed.
    pub shipments: u64,
    /// Routed orders shipped from more than one node.
    pub split_orders: u64,
    pub units: u64,
    /// Node to ship-to, summed over shipments.
    pub distance_km_total: f64,
    /// `cost_base + per_km * distance` per shipment, summed.
    pub shipping_cost_cents_total: f64,
    /// Shipments per node id.
    pub node_shipments: BTreeMap<String, u64>,
    /// Shipments per node index while counting: named once at the end
    /// (`name_nodes`), as a name per shipment was a string clone and a map
    /// lookup on every order.
    #[serde(skip)]
    by_node: Vec<u64>,
}

impl Side {
    pub fn shipments_per_order(&self) -> f64 {
        self.shipments as f64 / self.routed.max(1) as f64
    }

    pub fn split_rate(&self) -> f64 {
        self.split_orders as f64 / self.routed.max(1) as f64
    }

    pub fn mean_distance_km(&self) -> f64 {
        self.distance_km_total / self.shipments.max(1) as f64
    }

    fn count(&mut self, network: &Network, ship_to: GeoPoint, decision: Outcome<'_>) {
        self.orders += 1;
        let allocations = match decision {
            Outcome::Routed { allocations, short } => {
                self.routed += 1;
                if short {
                    self.partial += 1;
                }
                allocations
            }
            Outcome::Rejected(RejectReason::Short { .. }) => {
                self.short += 1;
                return;
            }
            Outcome::Rejected(_) => {
                self.rejected_other += 1;
                return;
            }
        };
        let mut nodes: SmallVec<[NodeIdx; 4]> = allocations.iter().map(|a| a.node).collect();
        nodes.sort_unstable();
        nodes.dedup();
        self.shipments += nodes.len() as u64;
        if nodes.len() > 1 {
            self.split_orders += 1;
        }
        self.units += allocations.iter().map(|a| u64::from(a.qty)).sum::<u64>();
        for node in nodes {
            let node_idx = usize::from(node);
            let node = network.node(node);
            let distance_km = node.location.distance_km(&ship_to);
            self.distance_km_total += distance_km;
            self.shipping_cost_cents_total += node.shipping_cost_cents(distance_km);
            if self.by_node.len() <= node_idx {
                self.by_node.resize(node_idx + 1, 0);
            }
            self.by_node[node_idx] += 1;
        }
    }

    /// Moves the per-index shipment counts into `node_shipments`.
    fn name_nodes(&mut self, network: &Network) {
        for (idx, count) in std::mem::take(&mut self.by_node).into_iter().enumerate() {
            if count > 0 {
                let id = network.node(idx as NodeIdx).id.clone();
                *self.node_shipments.entry(id).or_default() += count;
            }
        }
    }
}

enum Outcome<'a> {
    Routed {
        allocations: &'a [Allocation],
        short: bool,
    },
    Rejected(&'a RejectReason),
}

fn outcome(decision: &Decision) -> Outcome<'_> {
    match decision {
        Decision::Routed {
            allocations, short, ..
        } => Outcome::Routed {
            allocations,
            short: !short.is_empty(),
        },
        Decision::Rejected(reason) => Outcome::Rejected(reason),
    }
}

fn recorded_outcome(decision: &RecordedDecision) -> Outcome<'_> {
    match &decision.rejection {
        Some(reason) => Outcome::Rejected(reason),
        None => Outcome::Routed {
            allocations: &decision.allocations,
            short: decision.short_lines > 0,
        },
    }
}

fn placement_outcome(placement: &Placement) -> Outcome<'_> {
    match placement {
        Placement::Placed { allocations, short } => Outcome::Routed {
            allocations,
            short: !short.is_empty(),
        },
        Placement::Failed(reason) => Outcome::Rejected(reason),
    }
}

/// Whether a what-if placement is the recorded decision: the same units
/// from the same nodes per line, the same number of short lines, or the
/// same kind of rejection.
fn same_decision(recorded: &RecordedDecision, what_if: &Placement) -> bool {
    fn sorted(allocations: &[Allocation]) -> SmallVec<[(u16, NodeIdx, u32); 8]> {
        let mut v: SmallVec<[_; 8]> = allocations
            .iter()
            .map(|a| (a.line, a.node, a.qty))
            .collect();
        v.sort_unstable();
        v
    }
    match (&recorded.rejection, what_if) {
        (None, Placement::Placed { allocations, short }) => {
            sorted(&recorded.allocations) == sorted(allocations)
                && recorded.short_lines == short.len()
        }
        (Some(a), Placement::Failed(b)) => std::mem::discriminant(a) == std::mem::discriminant(b),
        _ => false,
    }
}

/// The outcome of a replay.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Report {
    pub journal_records: u64,
    pub first_lsn: u64,
    pub recorded: Side,
    pub what_if: Side,
    /// Orders whose what-if decision is exactly the recorded one.
    pub same_decisions: u64,
    pub different_decisions: u64,
    /// The first few orders decided differently: "client id: recorded -> what-if".
    pub differences: Vec<String>,
    /// Recorded cancels and expiries applied (each frees a what-if allocation).
    pub releases_applied: u64,
    /// Recorded completed shipments applied (each ships the what-if allocation).
    pub ships_applied: u64,
    /// Policy reloads the journal recorded (the what-if policy replaces them all).
    pub recorded_policy_reloads: u64,
    /// Rejected orders the daemon answered but could not journal as demand
    /// (its journal queue was full): missing from both sides.
    pub demand_missing: u64,
    /// First-try plans the reader made ahead that the placer used: their
    /// stamp still held.
    pub plans_ahead_used: u64,
    /// Plans made ahead whose stamp no longer held (planned again in line),
    /// or that could not be made ahead (rules that read exact counts, large
    /// lines, unknown SKUs).
    pub plans_in_line: u64,
    pub torn_tail: bool,
    /// Threads the replay ran on.
    pub threads: usize,
    pub elapsed_ms: f64,
    pub orders_per_second: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("{0}")]
    Journal(#[from] crate::journal::JournalError),
    #[error("the journal in {dir} starts at LSN {first_lsn}: older segments were deleted after a snapshot, so the starting stock is gone. Run the daemon with journal.keep_segments = true to keep a replayable history")]
    Incomplete { dir: String, first_lsn: u64 },
    #[error("the journal in {0} has no records")]
    Empty(String),
    #[error("LSN {lsn}: {reason}")]
    Record { lsn: u64, reason: String },
    /// A daemon writes the directory: its journal moves under the reader.
    #[error(transparent)]
    Lock(#[from] store::LockError),
}

/// The what-if world: the core's shards and ledgers as plain values.
struct World {
    network: Arc<Network>,
    index: Arc<AvailabilityIndex>,
    participants: LocalParticipants,
}

impl World {
    fn new(config: &ValidConfig, network: Network) -> World {
        let index = Arc::new(AvailabilityIndex::new(
            network.nodes.len(),
            config.engine.max_skus,
        ));
        let participants = LocalParticipants::new(&network, &index, WHAT_IF_SHARDS, REPLAY_NOW_MS);
        World {
            network: Arc::new(network),
            index,
            participants,
        }
    }

    /// Applies what the outside world did to stock: a count or a restock
    /// (the caller picks those out of each record). The shard is the
    /// world's own (the journal's may differ in count).
    fn stock(&self, op: StockOp) {
        let Some(sku) = op.sku() else {
            return;
        };
        let shard = StockShard::shard_of(sku, WHAT_IF_SHARDS) as usize;
        let mut bumped = self.participants.bumped.borrow_mut();
        let _ = apply_stock_op(
            &mut self.participants.shards.borrow_mut()[shard],
            op,
            &mut bumped,
        );
        // A count that falls below what-if reservations takes them back;
        // the what-if does not route them again (see the module docs).
        bumped.clear();
    }

    /// A node went online or offline.
    fn node_online(&self, node: NodeIdx, online: bool) {
        let ledger = &mut self.participants.nodes.borrow_mut()[node as usize];
        let _ = apply_node_op(ledger, NodeOp::Online(online));
    }

    /// Closes an order the record says was cancelled or expired (`shipped`
    /// false: its units go back) or has shipped (its units leave stock and
    /// its nodes' work is done), on the what-if allocation `given`.
    fn close(&self, order: OrderId, given: &Given, shipped: bool) {
        let mut shards = self.participants.shards.borrow_mut();
        let mut bumped = self.participants.bumped.borrow_mut();
        let mut ledgers = self.participants.nodes.borrow_mut();
        for &(node, sku, qty) in given {
            let shard = StockShard::shard_of(sku, WHAT_IF_SHARDS) as usize;
            let (stock, work) = if shipped {
                (
                    StockOp::Ship {
                        order,
                        sku,
                        node,
                        qty,
                    },
                    NodeOp::Finish(order),
                )
            } else {
                (
                    StockOp::Release {
                        order,
                        sku,
                        node,
                        qty,
                    },
                    NodeOp::Release(order),
                )
            };
            // A count may have taken some of it back already: that part is
            // refused, the rest goes.
            let _ = apply_stock_op(&mut shards[shard], stock, &mut bumped);
            let _ = apply_node_op(&mut ledgers[node as usize], work);
        }
        bumped.clear();
    }

    fn place(&self, attempts: &[Attempt], planned: &mut [Option<Planned>]) -> Vec<Placement> {
        let context = PlanContext {
            network: &self.network,
            index: &self.index,
            shard_count: WHAT_IF_SHARDS,
        };
        // Polled where it is made: the future is over 1.5 KB, and
        // `block_on` moving it in was 8 % of the placer's time. Local
        // participants answer at once, so one poll ends it.
        let mut placing = std::pin::pin!(place_planned(
            &context,
            attempts,
            planned,
            REPLAY_NOW_MS,
            &self.participants,
        ));
        let mut waker = std::task::Context::from_waker(futures::task::noop_waker_ref());
        match placing.as_mut().poll(&mut waker) {
            std::task::Poll::Ready(placements) => placements,
            std::task::Poll::Pending => block_on(placing),
        }
    }
}

/// A plan made ahead, or why none can be.
type Planned = Result<Plan, PlanError>;

/// What the what-if gave an open order: (node, sku, units) per allocation.
type Given = SmallVec<[(NodeIdx, u32, u32); 2]>;

/// What the what-if did with each order seen so far. Order ids are dense per
/// partition (sequence × `PARTITIONS` + partition), so a table per partition indexed
/// by sequence replaces a hash map: growing a map of a million orders was a
/// tenth of a replay (rehashing and zeroing fresh pages). The table grows
/// by whole chunks, so nothing is ever copied.
#[derive(Default)]
struct OpenOrders {
    /// Per partition, chunks of `OPEN_CHUNK` sequences.
    by_partition: Vec<Vec<Box<[Seen]>>>,
}

/// One order in [`OpenOrders`]: None = not seen; Some(None) = seen, nothing
/// given (rejected, or closed since); Some(Some(g)) = what it holds.
type Seen = Option<Option<Given>>;

/// Sequences per chunk of [`OpenOrders`].
const OPEN_CHUNK: usize = 1 << 16;

impl OpenOrders {
    fn slot(id: OrderId) -> (usize, usize, usize) {
        let sequence = (id / PARTITIONS as u64) as usize;
        (
            partition_of_order(id),
            sequence / OPEN_CHUNK,
            sequence % OPEN_CHUNK,
        )
    }

    fn get_mut(&mut self, id: OrderId) -> Option<&mut Option<Given>> {
        let (partition, chunk, at) = Self::slot(id);
        self.by_partition.get_mut(partition)?.get_mut(chunk)?[at].as_mut()
    }

    /// Records what `id` was given; false if it had been placed before.
    fn insert(&mut self, id: OrderId, given: Option<Given>) -> bool {
        let (partition, chunk, at) = Self::slot(id);
        if self.by_partition.len() <= partition {
            self.by_partition.resize_with(partition + 1, Vec::new);
        }
        let chunks = &mut self.by_partition[partition];
        while chunks.len() <= chunk {
            chunks.push((0..OPEN_CHUNK).map(|_| None).collect());
        }
        chunks[chunk][at].replace(given).is_none()
    }
}

/// The attempt a journaled new order makes under the what-if policy.
fn attempt(record: &ArchivedOrderRecord, ship_to: GeoPoint) -> Result<Attempt, String> {
    let lines = record
        .lines
        .iter()
        .map(rkyv::deserialize::<PlanLine, rkyv::rancor::Error>)
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    Ok(Attempt {
        order: record.id.to_native(),
        lines,
        ship_to,
        market: record.market.as_ref().map(|m| m.to_native()),
        method: rkyv::deserialize::<Method, rkyv::rancor::Error>(&record.method)
            .map_err(|e| e.to_string())?,
        channel: record.channel.to_native(),
        excluded: SmallVec::new(),
    })
}

fn ship_to(record: &ArchivedOrderRecord) -> Result<GeoPoint, String> {
    let (lat, lon) = (record.ship_to.0.to_native(), record.ship_to.1.to_native());
    GeoPoint::new(lat, lon).ok_or_else(|| {
        format!(
            "order {}: ship-to ({lat}, {lon}) is not a point",
            record.id.to_native()
        )
    })
}

/// Replays the journal of `data_dir` (recorded under `config`'s network)
/// with `what_if` policies for its channels.
pub fn replay(
    data_dir: &Path,
    config: &ValidConfig,
    what_if: Vec<Channel>,
    threads: Threads,
) -> Result<Report, ReplayError> {
    // Shared: readers may run side by side, but not beside the daemon.
    let _lock = store::lock::lock(data_dir, store::Access::Read)?;
    let recorded_network = &config.network;
    let world = World::new(
        config,
        Network::new(
            recorded_network.nodes.clone(),
            recorded_network.markets.clone(),
            what_if,
        ),
    );
    let mut report = Report::default();
    // Timed from here: building the world (sizing the index) is not replay.
    let started = Instant::now();
    let dir = store::journal_dir(data_dir);
    let dir_name = dir.display().to_string();
    let mut placer = Placer {
        world: &world,
        open: OpenOrders::default(),
        report: &mut report,
    };
    let mut failed = None;
    let reader = Reader {
        network: &world.network,
        recorded_network,
        index: &world.index,
        seen: SeenOrders::default(),
        shared: SharedSeen::default(),
        recorded: Side::default(),
        failed: None,
        demand_missing: 0,
    };
    let read = if threads == Threads::One {
        // Each record is placed as soon as it is read: the plan made for it
        // is still fresh, and nothing is read ahead that would go stale.
        reader.run(&dir, 1, |mut batch| {
            if let Err(e) = placer.apply_batch(&mut batch) {
                failed = Some(e);
                return None;
            }
            Some(batch.emptied())
        })
    } else {
        // The batches are handed over whole and come back to be refilled,
        // so nothing is freed across threads (a first reader thread, which
        // sent each record decoded whole, was slower than reading in line).
        let (full_tx, full_rx) = crossbeam_channel::bounded::<Batch>(READ_AHEAD_BATCHES);
        let (empty_tx, empty_rx) = crossbeam_channel::bounded::<Batch>(READ_AHEAD_BATCHES + 2);
        let dir = &dir;
        std::thread::scope(|scope| {
            let reader = std::thread::Builder::new()
                .name("replay-reader".into())
                // Moved in: the placer's loop ends when this sender drops.
                .spawn_scoped(scope, move || {
                    reader.run(dir, READ_BATCH_RECORDS, move |batch| {
                        full_tx.send(batch).ok()?;
                        Some(empty_rx.try_recv().unwrap_or_default())
                    })
                })
                .expect("spawn the replay's reader thread");
            for mut batch in full_rx {
                if let Err(e) = placer.apply_batch(&mut batch) {
                    failed = Some(e);
                    // Dropping the queue stops the reader.
                    break;
                }
                let _ = empty_tx.try_send(batch.emptied());
            }
            reader.join().expect("the replay's reader thread panicked")
        })
    };
    if let Some(e) = failed {
        return Err(e);
    }
    let Read {
        summary,
        incomplete,
        failed,
        recorded,
        demand_missing,
    } = read;
    if let Some(e) = failed {
        return Err(e);
    }
    let summary = summary.map_err(|e| match incomplete {
        Some(first_lsn) => ReplayError::Incomplete {
            dir: dir_name.clone(),
            first_lsn,
        },
        None => e.into(),
    })?;
    if summary.records == 0 {
        return Err(ReplayError::Empty(dir_name));
    }
    report.recorded = recorded;
    report.demand_missing = demand_missing;
    report.recorded.name_nodes(recorded_network);
    report.what_if.name_nodes(&world.network);
    report.journal_records = summary.records;
    report.first_lsn = summary.first_lsn;
    report.torn_tail = summary.torn_tail;
    report.threads = threads.count();
    let elapsed = started.elapsed().as_secs_f64();
    report.elapsed_ms = elapsed * 1e3;
    report.orders_per_second = report.recorded.orders as f64 / elapsed.max(1e-9);
    Ok(report)
}

/// Records per batch the reader hands over: enough that the handoff is
/// rare, few enough that the plans made ahead are still fresh when placed.
const READ_BATCH_RECORDS: usize = 128;
/// Batches read ahead of placing; past this the reader waits.
const READ_AHEAD_BATCHES: usize = 2;

/// One record the reader has checked.
struct ReadRecord {
    lsn: u64,
    kind: u8,
    /// The payload's place in the batch's arena (empty for a policy record).
    payload: std::ops::Range<usize>,
    /// Its new orders' place in the batch's `fresh`, `attempts` and `plans`.
    fresh: std::ops::Range<usize>,
    /// What it asks of the what-if world before its new orders are placed:
    /// its place in the batch's `events`.
    events: std::ops::Range<usize>,
}

/// What a record makes the what-if world do, in record order, as the
/// reader found it: the placer then never reads the record itself (its
/// bytes were written on the reader's core, and walking them was most of
/// applying), and skips the follow-ups that change nothing (confirms,
/// partial shipments), which it used to look up one by one.
enum Event {
    /// A count or restock from the outside world.
    Stock(StockOp),
    NodeOnline(NodeIdx, bool),
    /// A recorded cancel or expiry (`shipped` false) or completed shipment
    /// of an order seen before.
    Close {
        order: OrderId,
        shipped: bool,
    },
}

/// A new order as the reader prepared it (its id and ship-to are its
/// attempt's, kept beside it in the batch).
struct Fresh {
    recorded: RecordedDecision,
    /// Taken before its plan was made ahead (None: none was).
    stamp: Option<PlanStamp>,
    /// A rejected order's demand record: it has no follow-ups.
    demand: bool,
}

/// Records the reader thread has checked: each `Txn` payload copied to a
/// 16-aligned offset of `arena` (rkyv's alignment) and validated there,
/// and each new order prepared for placing.
#[derive(Default)]
struct Batch {
    arena: rkyv::util::AlignedVec<16>,
    records: Vec<ReadRecord>,
    fresh: Vec<Fresh>,
    /// One per fresh order; contiguous per record, as placing takes them.
    attempts: Vec<Attempt>,
    plans: Vec<Option<Planned>>,
    events: Vec<Event>,
}

impl Batch {
    fn emptied(mut self) -> Batch {
        self.arena.clear();
        self.records.clear();
        self.fresh.clear();
        self.attempts.clear();
        self.plans.clear();
        self.events.clear();
        self
    }
}

/// Orders the reader has seen, by the same dense slots as [`OpenOrders`]:
/// the first record of an order is its submit.
#[derive(Default)]
struct SeenOrders {
    /// Per partition, one bit per sequence.
    by_partition: Vec<Vec<u64>>,
}

impl SeenOrders {
    /// True the first time `id` is seen.
    fn first_sight(&mut self, id: OrderId) -> bool {
        let (partition, sequence) = (partition_of_order(id), (id / PARTITIONS as u64) as usize);
        if self.by_partition.len() <= partition {
            self.by_partition.resize_with(partition + 1, Vec::new);
        }
        let bits = &mut self.by_partition[partition];
        let (word, bit) = (sequence / 64, 1u64 << (sequence % 64));
        if bits.len() <= word {
            bits.resize(word + 1, 0);
        }
        let first = bits[word] & bit == 0;
        bits[word] |= bit;
        first
    }
}

/// What the reader thread came to.
struct Read {
    summary: Result<crate::journal::ReadSummary, crate::journal::JournalError>,
    /// The first LSN, if the journal does not start at 1.
    incomplete: Option<u64>,
    /// A record the reader could not prepare.
    failed: Option<ReplayError>,
    recorded: Side,
    demand_missing: u64,
}

/// The reader thread's state: it reads ahead of the placer and plans ahead
/// against the what-if index, which the placer is changing meanwhile.
struct Reader<'a> {
    network: &'a Network,
    recorded_network: &'a Network,
    index: &'a AvailabilityIndex,
    seen: SeenOrders,
    /// Validation's shared-pointer list, kept from record to record.
    shared: SharedSeen,
    /// The recorded side is counted here, off the placer's thread.
    recorded: Side,
    failed: Option<ReplayError>,
    /// Rejected orders the journal says it has no demand record of.
    demand_missing: u64,
}

impl Reader<'_> {
    /// Reads and prepares the journal into batches of `batch_records`, in
    /// LSN order, handing each full one to `hand_over`, which gives back an
    /// empty one to fill, or None when the placer has stopped.
    fn run(
        mut self,
        dir: &Path,
        batch_records: usize,
        mut hand_over: impl FnMut(Batch) -> Option<Batch>,
    ) -> Read {
        let mut incomplete = None;
        let mut first = true;
        let mut batch = Batch::default();
        let summary = crate::journal::read(dir, |lsn, kind, payload| {
            if first {
                first = false;
                if lsn != 1 {
                    incomplete = Some(lsn);
                    return Err(String::new());
                }
            }
            if kind == KIND_DEMAND_LOST {
                let count = <[u8; 8]>::try_from(payload).map_err(|_| {
                    format!("LSN {lsn}: a lost-demand record of {} bytes", payload.len())
                })?;
                self.demand_missing += u64::from_le_bytes(count);
                return Ok(());
            }
            if !matches!(kind, KIND_TXN | KIND_POLICY | KIND_DEMAND) {
                return Ok(());
            }
            if let Err(e) = self.push(&mut batch, lsn, kind, payload) {
                self.failed = Some(e);
                return Err("the replay stopped".into());
            }
            if batch.records.len() == batch_records {
                batch = hand_over(std::mem::take(&mut batch))
                    .ok_or_else(|| "the replay stopped".to_string())?;
            }
            Ok(())
        });
        if summary.is_ok() && !batch.records.is_empty() {
            let _ = hand_over(batch);
        }
        Read {
            summary,
            incomplete,
            failed: self.failed,
            recorded: self.recorded,
            demand_missing: self.demand_missing,
        }
    }

    /// Adds a record the replay reads, with its new orders prepared. A
    /// `Txn` that does not validate is an error (the journal's checksums
    /// passed, so it is not torn: corrupt).
    fn push(
        &mut self,
        batch: &mut Batch,
        lsn: u64,
        kind: u8,
        payload: &[u8],
    ) -> Result<(), ReplayError> {
        let failed = |reason: String| ReplayError::Record { lsn, reason };
        let Batch {
            arena,
            records,
            fresh,
            attempts,
            plans,
            events,
        } = batch;
        let (first_fresh, first_event) = (fresh.len(), events.len());
        let place = if kind == KIND_TXN || kind == KIND_DEMAND {
            let start = arena.len().next_multiple_of(16);
            arena.resize(start, 0);
            arena.extend_from_slice(payload);
            let txn = Txn::validate_with(&arena[start..], &mut self.shared).map_err(failed)?;
            self.events(txn, events).map_err(failed)?;
            for record in txn.orders.iter() {
                let id = record.id.to_native();
                // Demand is always new, and its id is not an order's (an
                // id a rejected order used may be given out again after a
                // restart).
                if kind == KIND_DEMAND {
                    let (new, attempt, made) = self.prepare(record).map_err(failed)?;
                    fresh.push(Fresh {
                        demand: true,
                        ..new
                    });
                    attempts.push(attempt);
                    plans.push(made);
                } else if self.seen.first_sight(id) {
                    let (new, attempt, made) = self.prepare(record).map_err(failed)?;
                    fresh.push(new);
                    attempts.push(attempt);
                    plans.push(made);
                } else {
                    let shipped = match record.state {
                        ArchivedOrderState::Cancelled | ArchivedOrderState::Expired => false,
                        ArchivedOrderState::Shipped => true,
                        _ => continue,
                    };
                    events.push(Event::Close { order: id, shipped });
                }
            }
            start..arena.len()
        } else {
            0..0
        };
        records.push(ReadRecord {
            lsn,
            kind,
            payload: place,
            fresh: first_fresh..fresh.len(),
            events: first_event..events.len(),
        });
        Ok(())
    }

    /// Interns the SKUs a record added (here, in LSN order, so that the
    /// plans made ahead know them) and lists what the outside world did:
    /// stock counts, restocks from returns, nodes going on and offline.
    /// The recorded decisions' own ops (reserve, release, ...) are the
    /// recorded side, not the what-if's.
    fn events(&self, txn: &ArchivedTxn, events: &mut Vec<Event>) -> Result<(), String> {
        for pair in txn.skus.iter() {
            let (id, name) = (pair.0.to_native(), pair.1.as_str());
            let got = self.index.intern(name).map_err(|e| e.to_string())?;
            if got != id {
                return Err(format!("SKU {name:?} was id {id}, the replay gave {got}"));
            }
        }
        for pair in txn.stock.iter() {
            if matches!(
                pair.1,
                ArchivedStockOp::Set { .. }
                    | ArchivedStockOp::Adjust { .. }
                    | ArchivedStockOp::Restock { .. }
            ) {
                let op = rkyv::deserialize::<StockOp, rkyv::rancor::Error>(&pair.1)
                    .map_err(|e| e.to_string())?;
                events.push(Event::Stock(op));
            }
        }
        for pair in txn.nodes.iter() {
            if let ArchivedNodeOp::Online(online) = &pair.1 {
                events.push(Event::NodeOnline(pair.0.to_native(), *online));
            }
        }
        Ok(())
    }

    /// Counts a new order's recorded decision and plans its first try
    /// under the what-if policy, stamped.
    fn prepare(
        &mut self,
        record: &ArchivedOrderRecord,
    ) -> Result<(Fresh, Attempt, Option<Planned>), String> {
        let point = ship_to(record)?;
        let attempt = attempt(record, point)?;
        let recorded = record.recorded_decision()?;
        self.recorded
            .count(self.recorded_network, point, recorded_outcome(&recorded));
        let policy = self.network.policy(attempt.channel);
        let stamp = PlanStamp::take(policy, self.index, &attempt.lines);
        // The stamp is taken first: a count that changes while planning
        // changes the stamp's versions too.
        let made = stamp.as_ref().map(|_| {
            let request = attempt.request(&attempt.excluded, false);
            plan(self.network, policy, self.index, &request)
        });
        let new = Fresh {
            recorded,
            stamp,
            demand: false,
        };
        Ok((new, attempt, made))
    }
}

/// The what-if world and its side's counts, fed record by record.
struct Placer<'a> {
    world: &'a World,
    /// What the what-if gave each order so far (None: nothing).
    open: OpenOrders,
    report: &'a mut Report,
}

impl Placer<'_> {
    fn apply_batch(&mut self, batch: &mut Batch) -> Result<(), ReplayError> {
        let Batch {
            arena,
            records,
            fresh,
            attempts,
            plans,
            events,
        } = batch;
        for record in records.iter() {
            if record.kind == KIND_POLICY {
                self.report.recorded_policy_reloads += 1;
                continue;
            }
            let new = record.fresh.clone();
            self.apply(
                record,
                arena,
                &events[record.events.clone()],
                &fresh[new.clone()],
                &attempts[new.clone()],
                &mut plans[new],
            )?;
        }
        Ok(())
    }

    /// Applies one record to the what-if world, in LSN order (its `events`,
    /// as the reader found them), and places its new orders (`fresh`, as
    /// the reader prepared them). The record's bytes in `arena` are read
    /// only to tell the story of a difference.
    fn apply(
        &mut self,
        record: &ReadRecord,
        arena: &[u8],
        events: &[Event],
        fresh: &[Fresh],
        attempts: &[Attempt],
        plans: &mut [Option<Planned>],
    ) -> Result<(), ReplayError> {
        let (world, report) = (self.world, &mut *self.report);
        let open = &mut self.open;
        let failed = |reason: String| ReplayError::Record {
            lsn: record.lsn,
            reason,
        };
        for event in events {
            match event {
                Event::Stock(op) => world.stock(op.clone()),
                &Event::NodeOnline(node, online) => world.node_online(node, online),
                &Event::Close { order, shipped } => {
                    let Some(given) = open.get_mut(order) else {
                        return Err(failed(format!(
                            "order {order}: a follow-up of an order the replay never placed"
                        )));
                    };
                    if let Some(given) = given.take() {
                        world.close(order, &given, shipped);
                        if shipped {
                            report.ships_applied += 1;
                        } else {
                            report.releases_applied += 1;
                        }
                    }
                }
            }
        }
        if fresh.is_empty() {
            return Ok(());
        }
        for ((new, attempt), made) in fresh.iter().zip(attempts).zip(plans.iter_mut()) {
            let holds = new
                .stamp
                .as_ref()
                .is_some_and(|stamp| stamp.holds(&world.index, &attempt.lines));
            if holds {
                report.plans_ahead_used += 1;
            } else {
                *made = None;
                report.plans_in_line += 1;
            }
        }
        // When every plan made ahead still holds and failed, those are the
        // placements (`unplanned`, as `place` would say): most orders for a
        // sold-out SKU end here, without a round through `place`, which
        // handles a record of mixed new orders the same way itself.
        let placements: Vec<Placement> = if plans.iter().all(|p| matches!(p, Some(Err(_)))) {
            attempts
                .iter()
                .zip(plans.iter_mut())
                .map(|(attempt, made)| {
                    let error = made.take().and_then(Result::err);
                    unplanned(attempt, error.expect("every plan failed, as checked"))
                })
                .collect()
        } else {
            world.place(attempts, plans)
        };
        for ((new, attempt), placement) in fresh.iter().zip(attempts).zip(&placements) {
            report.what_if.count(
                &world.network,
                attempt.ship_to,
                placement_outcome(placement),
            );
            if same_decision(&new.recorded, placement) {
                report.same_decisions += 1;
            } else {
                report.different_decisions += 1;
                if report.differences.len() < MAX_LISTED_DIFFERENCES {
                    // Rare, so the whole record is found and decoded for
                    // its story.
                    // SAFETY: the reader thread validated exactly these
                    // bytes as a `Txn` (`Reader::push`), and a batch is not
                    // written again until it is handed back.
                    let txn = unsafe {
                        rkyv::access_unchecked::<ArchivedTxn>(&arena[record.payload.clone()])
                    };
                    let archived = txn
                        .orders
                        .iter()
                        .find(|r| r.id.to_native() == attempt.order)
                        .ok_or_else(|| {
                            failed(format!("order {}: not in its record", attempt.order))
                        })?;
                    let whole = rkyv::deserialize::<OrderRecord, rkyv::rancor::Error>(archived)
                        .map_err(|e| failed(e.to_string()))?;
                    report.differences.push(format!(
                        "{}: {} -> {}",
                        whole.client_order_id,
                        describe(&world.network, outcome(&whole.decision())),
                        describe(&world.network, placement_outcome(placement))
                    ));
                }
            }
            if new.demand {
                // Nothing follows a rejected order: what the what-if gave it
                // stays taken.
                continue;
            }
            let given = match placement {
                Placement::Placed { allocations, .. } if !allocations.is_empty() => {
                    Some(allocations.iter().map(|a| (a.node, a.sku, a.qty)).collect())
                }
                _ => None,
            };
            if !open.insert(attempt.order, given) {
                return Err(failed(format!("order {}: placed twice", attempt.order)));
            }
        }
        Ok(())
    }
}

fn describe(network: &Network, outcome: Outcome<'_>) -> String {
    match outcome {
        Outcome::Routed { allocations, .. } => allocations
            .iter()
            .map(|a| format!("{}x{}", network.node(a.node).id, a.qty))
            .collect::<Vec<_>>()
            .join("+"),
        Outcome::Rejected(reason) => format!("rejected ({reason})"),
    }
}

impl Report {
    /// The side-by-side table `omniroute replay` prints.
    pub fn table(&self) -> String {
        let (r, w) = (&self.recorded, &self.what_if);
        let mut out = String::new();
        let row = |out: &mut String, name: &str, a: String, b: String| {
            out.push_str(&format!("{name:<28}{a:>14}{b:>14}\n"));
        };
        row(&mut out, "", "recorded".into(), "what-if".into());
        type Figure = fn(&Side) -> String;
        let figures: [(&str, Figure); 11] = [
            ("orders", |s| s.orders.to_string()),
            ("routed", |s| s.routed.to_string()),
            ("  of them partial", |s| s.partial.to_string()),
            ("short", |s| s.short.to_string()),
            ("rejected otherwise", |s| s.rejected_other.to_string()),
            ("units allocated", |s| s.units.to_string()),
            ("shipments per order", |s| {
                format!("{:.3}", s.shipments_per_order())
            }),
            ("split rate", |s| format!("{:.2} %", s.split_rate() * 100.0)),
            ("mean distance km", |s| {
                format!("{:.1}", s.mean_distance_km())
            }),
            ("shipping cost total", |s| {
                format!("{:.2}", s.shipping_cost_cents_total / 100.0)
            }),
            ("shipments", |s| s.shipments.to_string()),
        ];
        for (name, figure) in figures {
            row(&mut out, name, figure(r), figure(w));
        }
        out.push_str("shipments per node:\n");
        let nodes: std::collections::BTreeSet<&String> = r
            .node_shipments
            .keys()
            .chain(w.node_shipments.keys())
            .collect();
        for node in nodes {
            let count = |side: &Side| side.node_shipments.get(node).copied().unwrap_or(0);
            row(
                &mut out,
                &format!("  {node}"),
                count(r).to_string(),
                count(w).to_string(),
            );
        }
        out.push_str(&format!(
            "decisions: {} the same, {} different\n",
            self.same_decisions, self.different_decisions
        ));
        for difference in &self.differences {
            out.push_str(&format!("  {difference}\n"));
        }
        if self.demand_missing > 0 {
            out.push_str(&format!(
                "demand missing: {} rejected orders were answered but not journaled (the journal's queue was full); neither side has them\n",
                self.demand_missing
            ));
        }
        out
    }

    /// The report as JSON, with the derived ratios of each side.
    pub fn json(&self) -> serde_json::Value {
        let mut value = serde_json::to_value(self).expect("a report serializes");
        for (key, side) in [("recorded", &self.recorded), ("what_if", &self.what_if)] {
            let object = value[key].as_object_mut().expect("a side is an object");
            object.insert(
                "shipments_per_order".into(),
                side.shipments_per_order().into(),
            );
            object.insert("split_rate".into(), side.split_rate().into());
            object.insert("mean_distance_km".into(), side.mean_distance_km().into());
        }
        value
    }
}
