//! The actors: thin shells that own one piece of core state each and apply
//! messages to it one at a time. All logic lives in `core`.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use rkyv::util::AlignedVec;
use smallvec::SmallVec;
use tokio::sync::{mpsc, oneshot};

use super::sequencer::{Done, Sequencer, Txn, KIND_DEMAND, KIND_DEMAND_LOST, KIND_MARKER};
use crate::core::book::BookCursor;
use crate::core::capacity::{CapacityOutcome, LedgerImage, NodeLedger};
use crate::core::events::{CursorOutOfRange, NodeEvent};
use crate::core::model::{Decision, NodeIdx, OrderId, OrderRequest, SkuId};
use crate::core::ops::{apply_node_op, apply_stock_op, NodeEffect, NodeOp, StockOp};
use crate::core::order::{BookChunk, OrderRecord};
use crate::core::placement::Participants;
use crate::core::router::{OpError, OrderRef, RouterCore};
use crate::core::stock::{
    Bumped, Cell, HoldItem, HoldOutcome, ImageMemory, ShardImage, StockError, StockShard,
};

/// What a shard answers for ops applied with a reply: the reservations
/// they bumped and the ops that could not apply.
pub type Applied = (Vec<Bumped>, Vec<StockError>);

pub enum ShardMsg {
    Hold(Vec<HoldItem>, RpcReplyPort<Vec<HoldOutcome>>),
    /// Holds of failed attempts to give back: not journaled, sent directly.
    Abort(Vec<StockOp>),
    /// Journaled ops, in LSN order. Without a reply port, bumps go to the
    /// routers through the engine's bump channel.
    Apply(Vec<StockOp>, Option<oneshot::Sender<Applied>>),
    Cell(SkuId, NodeIdx, RpcReplyPort<Cell>),
    Check(RpcReplyPort<Result<(), String>>),
    /// Every op up to this LSN is applied and none after: image the shard
    /// (into memory the snapshot touched beforehand).
    Snapshot(u64, ImageSink, ImageMemory),
    /// Nodes were added: rows take a cell for each of this many nodes.
    Widen(usize, RpcReplyPort<()>),
}

/// An actor's state at an LSN, on its way to a snapshot file.
#[derive(Debug, PartialEq)]
pub enum Image {
    Catalog(Vec<String>),
    Shard(u32, ShardImage),
    Node(NodeIdx, LedgerImage),
    /// The router's book went to the [`BookSink`], a chunk at a time; this
    /// labels it with its LSN.
    Router(usize),
}

pub type ImageSink = mpsc::UnboundedSender<(u64, Image)>;

/// Chunks of books waiting for the writer (about 100 KiB each); past this
/// a router holds its next chunk and tries again `BOOK_RETRY_MS` later.
const BOOK_QUEUE_CHUNKS: usize = 32;
/// How long a router waits for room in a full book queue. Trying again at
/// once spun the router's worker and starved the writer.
const BOOK_RETRY_MS: u64 = 2;
/// The share of a worker one router spends encoding its book while it
/// images: after each step it rests for the rest. Encoding at full speed
/// took the workers from the orders for a quarter of a second (p99 50 ms
/// in that second at 20 k orders/s); at 10 % that second was 15-55 ms, at
/// 5 % 12-18 ms, within the run's noise. Imaging takes longer instead
/// (1.5-1.8 s for 0.8 M orders).
const IMAGE_DUTY_PERCENT: u32 = 5;

/// How fast the routers image their books: paced while orders flow
/// (`IMAGE_DUTY_PERCENT` of a worker per router), at full speed once a stop
/// has begun. Shared by every snapshot of an engine, so that a stop hurries
/// one already under way.
#[derive(Clone, Debug, Default)]
pub struct ImagePace(Arc<std::sync::atomic::AtomicBool>);

impl ImagePace {
    /// From now on, image at full speed.
    pub fn hurry(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    fn full_speed(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// One run of a router's book, archived (see [`BookChunk`]).
pub struct BookPart {
    pub router: usize,
    pub orders: u32,
    pub bytes: AlignedVec,
}

/// Where routers stream their books while they image them. Buffers come
/// back through `spare` once written, so a snapshot of any size touches a
/// few chunks of fresh memory, not a copy of every book.
#[derive(Clone)]
pub struct BookSink {
    parts: crossbeam_channel::Sender<BookPart>,
    spare: crossbeam_channel::Receiver<AlignedVec>,
}

/// The receiving end of a [`BookSink`]: a snapshot writer, or a test.
pub struct BookParts {
    parts: crossbeam_channel::Receiver<BookPart>,
    spare: crossbeam_channel::Sender<AlignedVec>,
}

/// A bounded queue of book chunks, and the way back for their buffers.
pub fn book_channel() -> (BookSink, BookParts) {
    let (parts_tx, parts_rx) = crossbeam_channel::bounded(BOOK_QUEUE_CHUNKS);
    let (spare_tx, spare_rx) = crossbeam_channel::bounded(BOOK_QUEUE_CHUNKS);
    (
        BookSink {
            parts: parts_tx,
            spare: spare_rx,
        },
        BookParts {
            parts: parts_rx,
            spare: spare_tx,
        },
    )
}

impl BookParts {
    /// The next chunk, waiting for it; `None` once every sink is gone.
    pub fn recv(&self) -> Option<BookPart> {
        self.parts.recv().ok()
    }

    /// Hands a written chunk's buffer back for the next one.
    pub fn recycle(&self, bytes: AlignedVec) {
        let _ = self.spare.try_send(bytes);
    }
}

/// An actor and how many messages wait in its mailbox (ractor does not
/// say): every send goes through here and counts up, and the actor counts
/// down as it takes each message. Read by the `omniroute_queue_depth` gauge.
pub struct Mailbox<M: ractor::Message> {
    actor: ActorRef<M>,
    depth: Arc<AtomicI64>,
}

impl<M: ractor::Message> Clone for Mailbox<M> {
    fn clone(&self) -> Self {
        Mailbox {
            actor: self.actor.clone(),
            depth: self.depth.clone(),
        }
    }
}

impl<M: ractor::Message> Mailbox<M> {
    pub fn new(actor: ActorRef<M>, depth: Arc<AtomicI64>) -> Mailbox<M> {
        Mailbox { actor, depth }
    }

    pub fn cast(&self, message: M) -> Result<(), ractor::MessagingErr<M>> {
        self.depth.fetch_add(1, Ordering::Relaxed);
        let sent = self.actor.cast(message);
        if sent.is_err() {
            self.depth.fetch_sub(1, Ordering::Relaxed);
        }
        sent
    }

    pub async fn call<T: Send + 'static>(
        &self,
        build: impl FnOnce(RpcReplyPort<T>) -> M,
        timeout: Option<std::time::Duration>,
    ) -> Result<ractor::rpc::CallResult<T>, ractor::MessagingErr<M>> {
        self.depth.fetch_add(1, Ordering::Relaxed);
        self.actor.call(build, timeout).await
    }

    pub fn depth(&self) -> i64 {
        self.depth.load(Ordering::Relaxed).max(0)
    }

    pub fn stop(&self) {
        self.actor.stop(None);
    }

    pub fn id(&self) -> ractor::ActorId {
        self.actor.get_id()
    }
}

/// Counts one message taken from a mailbox.
fn took(depth: &AtomicI64) {
    depth.fetch_sub(1, Ordering::Relaxed);
}

pub struct ShardActor;

pub struct ShardState {
    pub shard: StockShard,
    /// Bounded: a full queue holds the shard back until the forwarder
    /// (which only casts to routers, never waits on a shard) catches up.
    pub bumps: mpsc::Sender<Vec<Bumped>>,
    pub depth: Arc<AtomicI64>,
}

impl Actor for ShardActor {
    type Msg = ShardMsg;
    type State = ShardState;
    type Arguments = ShardState;

    async fn pre_start(
        &self,
        _: ActorRef<ShardMsg>,
        state: ShardState,
    ) -> Result<ShardState, ActorProcessingErr> {
        Ok(state)
    }

    async fn handle(
        &self,
        _: ActorRef<ShardMsg>,
        message: ShardMsg,
        state: &mut ShardState,
    ) -> Result<(), ActorProcessingErr> {
        took(&state.depth);
        let shard = &mut state.shard;
        // A reply port whose caller went away is not an error of the shard.
        match message {
            ShardMsg::Hold(items, reply) => {
                let _ = reply.send(shard.hold(&items));
            }
            ShardMsg::Abort(ops) => {
                let mut bumped = Vec::new();
                for op in ops {
                    let _ = apply_stock_op(shard, op, &mut bumped);
                }
            }
            ShardMsg::Apply(ops, reply) => {
                let mut bumped = Vec::new();
                let mut errors = Vec::new();
                for op in ops {
                    if let Err(e) = apply_stock_op(shard, op, &mut bumped) {
                        errors.push(e);
                    }
                }
                match reply {
                    Some(reply) => {
                        let _ = reply.send((bumped, errors));
                    }
                    None if !bumped.is_empty() => {
                        let _ = state.bumps.send(bumped).await;
                    }
                    None => {}
                }
            }
            ShardMsg::Cell(sku, node, reply) => {
                let _ = reply.send(shard.cell(sku, node));
            }
            ShardMsg::Check(reply) => {
                let _ = reply.send(shard.check_invariants());
            }
            ShardMsg::Widen(node_count, reply) => {
                shard.widen(node_count);
                let _ = reply.send(());
            }
            ShardMsg::Snapshot(lsn, sink, memory) => {
                let started = std::time::Instant::now();
                let image = shard.image_into(memory);
                tracing::debug!(
                    "shard {} imaged in {} us",
                    shard.shard_id(),
                    started.elapsed().as_micros()
                );
                let _ = sink.send((lsn, Image::Shard(shard.shard_id(), image)));
            }
        }
        Ok(())
    }
}

/// Events from a cursor, and the live rest of them.
pub type Subscription = (
    Vec<(u64, Arc<NodeEvent>)>,
    mpsc::Receiver<(u64, Arc<NodeEvent>)>,
);

/// Events queued for one subscriber before it counts as too slow and is
/// dropped (it resumes from its last cursor).
pub const SUBSCRIBER_QUEUE_EVENTS: usize = 65_536;

pub enum NodeMsg {
    Hold(Vec<OrderId>, u64, RpcReplyPort<Vec<CapacityOutcome>>),
    Subscribe(u64, RpcReplyPort<Result<Subscription, CursorOutOfRange>>),
    /// Journaled ops, in LSN order; the reply gets the orders a switch to
    /// offline leaves to re-route.
    Ops(Vec<NodeOp>, Option<oneshot::Sender<Vec<OrderId>>>),
    /// (online, used today, open orders)
    Stats(RpcReplyPort<(bool, u32, usize)>),
    Snapshot(u64, ImageSink),
    /// A node added to the running daemon takes this spare ledger: its
    /// daily capacity (the config's, not journaled, as at every start).
    Configure {
        daily_capacity: u32,
        reply: RpcReplyPort<()>,
    },
}

pub struct NodeActor;

/// A node's ledger and the live subscribers to its events.
pub struct NodeState {
    ledger: NodeLedger,
    subscribers: Vec<mpsc::Sender<(u64, Arc<NodeEvent>)>>,
    depth: Arc<AtomicI64>,
}

impl Actor for NodeActor {
    type Msg = NodeMsg;
    type State = NodeState;
    /// The ledger, and its mailbox's depth counter.
    type Arguments = (NodeLedger, Arc<AtomicI64>);

    async fn pre_start(
        &self,
        _: ActorRef<NodeMsg>,
        (ledger, depth): (NodeLedger, Arc<AtomicI64>),
    ) -> Result<NodeState, ActorProcessingErr> {
        Ok(NodeState {
            ledger,
            subscribers: Vec::new(),
            depth,
        })
    }

    async fn handle(
        &self,
        _: ActorRef<NodeMsg>,
        message: NodeMsg,
        state: &mut NodeState,
    ) -> Result<(), ActorProcessingErr> {
        took(&state.depth);
        let NodeState {
            ledger,
            subscribers,
            ..
        } = state;
        match message {
            NodeMsg::Hold(orders, now_ms, reply) => {
                let _ = reply.send(orders.into_iter().map(|o| ledger.hold(o, now_ms)).collect());
            }
            NodeMsg::Ops(ops, reply) => {
                // Fault injection (FAILPOINTS="node-ops=panic"): how the
                // tests make an actor fail. Off, it is one map lookup per
                // batch of a node's ops.
                fail::fail_point!("node-ops");
                let mut offline = Vec::new();
                for op in ops {
                    match apply_node_op(ledger, op) {
                        NodeEffect::Event(cursor, event) => {
                            // A full queue means a subscriber that cannot keep
                            // up: drop it rather than let it hold the node back.
                            subscribers.retain(|s| s.try_send((cursor, event.clone())).is_ok());
                        }
                        NodeEffect::Offline(orders) => offline = orders,
                        NodeEffect::None => {}
                    }
                }
                if let Some(reply) = reply {
                    let _ = reply.send(offline);
                }
            }
            NodeMsg::Subscribe(cursor, reply) => {
                let answer = ledger.events_since(cursor).map(|backlog| {
                    let (sender, receiver) = mpsc::channel(SUBSCRIBER_QUEUE_EVENTS);
                    subscribers.push(sender);
                    (backlog, receiver)
                });
                let _ = reply.send(answer);
            }
            NodeMsg::Snapshot(lsn, sink) => {
                let started = std::time::Instant::now();
                let image = ledger.image();
                tracing::debug!(
                    "node {} imaged in {} us",
                    image.node,
                    started.elapsed().as_micros()
                );
                let _ = sink.send((lsn, Image::Node(image.node, image)));
            }
            NodeMsg::Configure {
                daily_capacity,
                reply,
            } => {
                ledger.set_daily_capacity(daily_capacity);
                let _ = reply.send(());
            }
            NodeMsg::Stats(reply) => {
                let _ = reply.send((
                    ledger.is_online(),
                    ledger.used_today(),
                    ledger.open_orders(),
                ));
            }
        }
        Ok(())
    }
}

/// The shards and nodes as a router reaches them: by message.
#[derive(Clone)]
pub struct ActorParticipants {
    pub shards: Arc<[Mailbox<ShardMsg>]>,
    pub nodes: Arc<[Mailbox<NodeMsg>]>,
}

/// A shard or node actor only stops when the engine shuts down or a core
/// invariant failed (an `assert!` panicked inside it); either way nothing
/// sensible can continue, so the router stops too.
fn answered<T>(result: Result<ractor::rpc::CallResult<T>, impl std::fmt::Debug>, who: &str) -> T {
    match result {
        Ok(ractor::rpc::CallResult::Success(value)) => value,
        other => panic!("{who} did not answer: {:?}", other.err()),
    }
}

impl ActorParticipants {
    /// Sends journaled ops to their actors, one message per actor, keeping
    /// their order. Called in LSN order, so every actor applies in LSN order.
    pub fn dispatch(&self, stock: Vec<(u32, StockOp)>, nodes: Vec<(NodeIdx, NodeOp)>) {
        let mut by_shard: SmallVec<[(u32, Vec<StockOp>); 4]> = SmallVec::new();
        for (shard, op) in stock {
            match by_shard.iter_mut().find(|(s, _)| *s == shard) {
                Some((_, ops)) => ops.push(op),
                None => by_shard.push((shard, vec![op])),
            }
        }
        for (shard, ops) in by_shard {
            // A stopped actor means the engine is shutting down.
            let _ = self.shards[shard as usize].cast(ShardMsg::Apply(ops, None));
        }
        let mut by_node: SmallVec<[(NodeIdx, Vec<NodeOp>); 4]> = SmallVec::new();
        for (node, op) in nodes {
            match by_node.iter_mut().find(|(n, _)| *n == node) {
                Some((_, ops)) => ops.push(op),
                None => by_node.push((node, vec![op])),
            }
        }
        for (node, ops) in by_node {
            let _ = self.nodes[node as usize].cast(NodeMsg::Ops(ops, None));
        }
    }
}

/// Ops kept for a journal record: (shard, op) and (node, op).
type Effects = (Vec<(u32, StockOp)>, Vec<(NodeIdx, NodeOp)>);

/// What a router's placement and lifecycle code sees: holds go to the
/// actors at once; every other op is kept for the router's next [`Txn`].
pub struct JournaledParticipants {
    pub actors: ActorParticipants,
    stock: Mutex<Vec<(u32, StockOp)>>,
    nodes: Mutex<Vec<(NodeIdx, NodeOp)>>,
}

impl JournaledParticipants {
    pub fn new(actors: ActorParticipants) -> JournaledParticipants {
        JournaledParticipants {
            actors,
            stock: Mutex::new(Vec::new()),
            nodes: Mutex::new(Vec::new()),
        }
    }

    fn take(&self) -> Effects {
        (
            std::mem::take(&mut *self.stock.lock().expect("ops lock")),
            std::mem::take(&mut *self.nodes.lock().expect("ops lock")),
        )
    }
}

impl Participants for JournaledParticipants {
    async fn hold_stock(&self, shard: u32, items: Vec<HoldItem>) -> Vec<HoldOutcome> {
        answered(
            self.actors.shards[shard as usize]
                .call(|reply| ShardMsg::Hold(items, reply), None)
                .await,
            "shard",
        )
    }

    async fn hold_capacity(
        &self,
        node: NodeIdx,
        orders: Vec<OrderId>,
        now_ms: u64,
    ) -> Vec<CapacityOutcome> {
        answered(
            self.actors.nodes[node as usize]
                .call(|reply| NodeMsg::Hold(orders, now_ms, reply), None)
                .await,
            "node",
        )
    }

    fn stock_ops(&self, shard: u32, ops: Vec<StockOp>) {
        let (aborts, journaled): (Vec<StockOp>, Vec<StockOp>) = ops
            .into_iter()
            .partition(|op| matches!(op, StockOp::Abort(_)));
        if !aborts.is_empty() {
            self.actors.shards[shard as usize]
                .cast(ShardMsg::Abort(aborts))
                .expect("shard actor is running");
        }
        self.stock
            .lock()
            .expect("ops lock")
            .extend(journaled.into_iter().map(|op| (shard, op)));
    }

    fn node_ops(&self, node: NodeIdx, ops: Vec<NodeOp>) {
        self.nodes
            .lock()
            .expect("ops lock")
            .extend(ops.into_iter().map(|op| (node, op)));
    }
}

type Reply<T> = RpcReplyPort<Result<T, OpError>>;

pub enum RouterMsg {
    Submit(Vec<OrderRequest>, u64, RpcReplyPort<Vec<Decision>>),
    Get(OrderRef, Reply<OrderRecord>),
    Confirm(OrderRef, Reply<OrderRecord>),
    Cancel(OrderRef, Reply<OrderRecord>),
    Ship {
        order: OrderRef,
        node: NodeIdx,
        sku: SkuId,
        qty: u32,
        reply: Reply<OrderRecord>,
    },
    Return {
        order: OrderRef,
        node: NodeIdx,
        sku: SkuId,
        qty: u32,
        reply: Reply<OrderRecord>,
    },
    Reject {
        order: OrderRef,
        node: NodeIdx,
        counts: Vec<(SkuId, u32)>,
        now_ms: u64,
        reply: Reply<OrderRecord>,
    },
    NodeOffline {
        orders: Vec<OrderId>,
        node: NodeIdx,
        now_ms: u64,
        reply: RpcReplyPort<()>,
    },
    Bumped(Vec<Bumped>, u64, Option<RpcReplyPort<()>>),
    Expire(u64, RpcReplyPort<usize>),
    Check(RpcReplyPort<Result<(), String>>),
    /// Snapshot the book, `ORDERS_PER_IMAGE_STEP` orders per message so that
    /// orders keep flowing in between (see `RouterState::image_step`).
    Snapshot(ImageSink, BookSink, ImagePace, RpcReplyPort<()>),
    ImageStep(Box<BookImage>),
    /// A journaled policy reload: route by these channels' policies from now on.
    SetNetwork(Arc<crate::core::network::Network>),
}

pub struct RouterActor;

/// Orders a router copies into its snapshot image per message: about a
/// millisecond of work, then the orders queued behind it go first.
pub const ORDERS_PER_IMAGE_STEP: usize = 512;

/// A router's book image under way.
pub struct BookImage {
    sink: ImageSink,
    books: BookSink,
    pace: ImagePace,
    /// Where the encoding has come to.
    cursor: BookCursor,
    /// Every book has been passed.
    finished: bool,
    /// A chunk the full queue did not take yet; it goes before the next.
    pending: Option<BookPart>,
    /// LSN of the marker sent when imaging started: the label of the image.
    start_lsn: Arc<std::sync::OnceLock<u64>>,
}

pub struct RouterState {
    pub core: RouterCore,
    pub participants: JournaledParticipants,
    pub sequencer: Arc<Sequencer>,
    pub depth: Arc<AtomicI64>,
    pub metrics: Arc<crate::telemetry::EngineMetrics>,
    /// Book images under way (a snapshot walks the books by place).
    pub imaging: u32,
    /// Rejected orders whose demand record found no room in the journal
    /// and whose count is not journaled yet.
    pub demand_lost: u64,
}

impl RouterState {
    /// Sequences what the last step changed; `answer` runs once it is
    /// durable and its ops are on their way (never if the journal failed,
    /// which drops the caller's reply port: an error, never a false yes).
    async fn commit(&mut self, answer: impl FnOnce() + Send + 'static) {
        // Before anything is taken: a full journal queue waits here.
        let place = self.sequencer.reserve().await;
        let (stock, nodes) = self.participants.take();
        // Only a journal needs the changed orders; in memory they are not copied.
        let orders = if self.sequencer.is_durable() {
            self.core.take_dirty()
        } else {
            self.core.clear_dirty();
            Vec::new()
        };
        let txn = Txn {
            skus: Vec::new(),
            orders,
            stock,
            nodes,
        };
        let actors = self.participants.actors.clone();
        self.sequencer.append_in(place, txn, move |txn| {
            actors.dispatch(txn.stock, txn.nodes);
            answer();
        });
    }

    /// Like `commit`, but a step that changed nothing (the usual expiry
    /// tick) writes no record. Only for steps whose answer does not vouch
    /// for earlier changes being durable.
    async fn commit_if_changed(&mut self, answer: impl FnOnce() + Send + 'static) {
        if self.changed() {
            self.commit(answer).await;
        } else {
            answer();
        }
    }

    /// Journals the orders just rejected as demand, for the what-if
    /// replay, if the journal's queue has room now: no answer waits for
    /// it, and none is held up by it. Demand that found no room is counted
    /// and the count journaled once there is, so the replay knows.
    fn record_demand(&mut self) {
        let demand = self.core.take_demand();
        if demand.is_empty() {
            return;
        }
        if self.demand_lost > 0 {
            let lost = self.demand_lost;
            if self
                .sequencer
                .try_append_unawaited(KIND_DEMAND_LOST, || lost.to_le_bytes().to_vec())
            {
                self.demand_lost = 0;
            }
        }
        let count = demand.len() as u64;
        let txn = Txn {
            orders: demand,
            ..Txn::default()
        };
        if self.demand_lost > 0
            || !self
                .sequencer
                .try_append_unawaited(KIND_DEMAND, || txn.encode())
        {
            self.demand_lost += count;
            self.metrics.demand_lost.increment(count);
        }
    }

    /// Whether the last step changed journaled state.
    fn changed(&self) -> bool {
        self.core.has_dirty()
            || !self.participants.stock.lock().expect("ops lock").is_empty()
            || !self.participants.nodes.lock().expect("ops lock").is_empty()
    }

    /// Copies the next orders into the image; at the end, a second marker
    /// follows every change the router made while imaging, and once it is
    /// durable the image goes out labelled with the *first* marker's LSN.
    /// An order changed during imaging may be in the image in a newer
    /// version than at that LSN; replay from there rewrites every such
    /// order with its whole journaled record, in order, so recovery ends
    /// the same. The second marker makes sure no version in the image is
    /// one that a crash could lose.
    ///
    /// Each step encodes the next run of orders where they lie and queues
    /// it for the writer. When the queue is full the step waits its turn
    /// again; when the writer is gone the image is dropped, and the
    /// snapshot fails for want of it.
    async fn image_step(&mut self, mut image: Box<BookImage>, myself: &ActorRef<RouterMsg>) {
        let started = std::time::Instant::now();
        let router = self.core.router_id();
        if image.pending.is_none() {
            let orders = self
                .core
                .next_orders(&mut image.cursor, ORDERS_PER_IMAGE_STEP);
            image.finished = orders.is_empty();
            if !orders.is_empty() {
                let buffer = image.books.spare.try_recv().unwrap_or_default();
                image.pending = Some(BookPart {
                    router,
                    orders: orders.len() as u32,
                    bytes: BookChunk(orders).encode(buffer),
                });
            }
        }
        if let Some(part) = image.pending.take() {
            match image.books.parts.try_send(part) {
                Ok(()) => {}
                Err(crossbeam_channel::TrySendError::Full(part)) => image.pending = Some(part),
                Err(crossbeam_channel::TrySendError::Disconnected(_)) => {
                    self.imaging -= 1;
                    return;
                }
            }
        }
        let wait = if image.pending.is_some() {
            std::time::Duration::from_millis(BOOK_RETRY_MS)
        } else if !image.finished {
            if image.pace.full_speed() {
                std::time::Duration::ZERO
            } else {
                started.elapsed() * (100 - IMAGE_DUTY_PERCENT) / IMAGE_DUTY_PERCENT
            }
        } else {
            return self.book_imaged(image).await;
        };
        let mailbox = Mailbox::new(myself.clone(), self.depth.clone());
        // Stopped actors take no more messages: the engine is going down.
        if wait.is_zero() {
            let _ = mailbox.cast(RouterMsg::ImageStep(image));
        } else {
            tokio::spawn(async move {
                tokio::time::sleep(wait).await;
                let _ = mailbox.cast(RouterMsg::ImageStep(image));
            });
        }
    }

    /// Every chunk of the book is queued: a closing marker follows, and the
    /// book is labelled once that is durable (see `image_step`).
    async fn book_imaged(&mut self, image: Box<BookImage>) {
        // Every order is in the image: the books may move again.
        self.imaging -= 1;
        let router = self.core.router_id();
        let done: Done = Box::new(move |result| {
            let BookImage {
                sink,
                books,
                start_lsn,
                ..
            } = *image;
            // Every chunk is queued: the writer may end once all are in.
            drop(books);
            if let (Ok(_), Some(&lsn)) = (result, start_lsn.get()) {
                let _ = sink.send((lsn, Image::Router(router)));
            }
        });
        self.sequencer.append_raw(KIND_MARKER, Vec::new, done).await;
    }

    /// Answers a step that changed nothing (it failed validation).
    fn discard(&mut self) {
        self.core.clear_dirty();
        let (stock, nodes) = self.participants.take();
        debug_assert!(
            stock.is_empty() && nodes.is_empty(),
            "a failed step sent ops"
        );
    }

    /// Commits a lifecycle step's outcome, or answers its error at once.
    async fn finish<T: Send + 'static>(&mut self, result: Result<T, OpError>, reply: Reply<T>) {
        match result {
            Ok(value) => {
                self.commit(move || {
                    let _ = reply.send(Ok(value));
                })
                .await
            }
            Err(e) => {
                self.discard();
                let _ = reply.send(Err(e));
            }
        }
    }
}

impl Actor for RouterActor {
    type Msg = RouterMsg;
    type State = RouterState;
    type Arguments = RouterState;

    async fn pre_start(
        &self,
        _: ActorRef<RouterMsg>,
        state: RouterState,
    ) -> Result<RouterState, ActorProcessingErr> {
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<RouterMsg>,
        message: RouterMsg,
        state: &mut RouterState,
    ) -> Result<(), ActorProcessingErr> {
        took(&state.depth);
        match message {
            RouterMsg::Submit(orders, now_ms, reply) => {
                let decisions = state
                    .core
                    .submit(&orders, now_ms, &state.participants)
                    .await;
                let answer = move || {
                    let _ = reply.send(decisions);
                };
                if state.changed() {
                    state.commit(answer).await;
                } else {
                    // Rejections (and resubmissions) changed nothing; what
                    // they saw must still be durable before they are told.
                    state.sequencer.after_durable(answer).await;
                }
                state.record_demand();
            }
            RouterMsg::Get(order, reply) => {
                let _ = reply.send(state.core.get(&order).cloned());
            }
            RouterMsg::Confirm(order, reply) => {
                let result = state.core.confirm(&order).cloned();
                state.finish(result, reply).await;
            }
            RouterMsg::Cancel(order, reply) => {
                let result = state.core.cancel(&order, &state.participants).cloned();
                state.finish(result, reply).await;
            }
            RouterMsg::Ship {
                order,
                node,
                sku,
                qty,
                reply,
            } => {
                let result = state
                    .core
                    .ship(&order, node, sku, qty, &state.participants)
                    .cloned();
                state.finish(result, reply).await;
            }
            RouterMsg::Return {
                order,
                node,
                sku,
                qty,
                reply,
            } => {
                let result = state
                    .core
                    .return_units(&order, node, sku, qty, &state.participants)
                    .cloned();
                state.finish(result, reply).await;
            }
            RouterMsg::Reject {
                order,
                node,
                counts,
                now_ms,
                reply,
            } => {
                let result = state
                    .core
                    .node_reject(&order, node, &counts, now_ms, &state.participants)
                    .await
                    .cloned();
                if result.is_ok() {
                    state.metrics.rerouted_node_rejected.increment(1);
                }
                state.finish(result, reply).await;
            }
            RouterMsg::NodeOffline {
                orders,
                node,
                now_ms,
                reply,
            } => {
                state
                    .metrics
                    .rerouted_node_offline
                    .increment(orders.len() as u64);
                for order in orders {
                    state
                        .core
                        .node_offline(order, node, now_ms, &state.participants)
                        .await;
                }
                state
                    .commit(move || {
                        let _ = reply.send(());
                    })
                    .await;
            }
            RouterMsg::Bumped(bumps, now_ms, reply) => {
                state.metrics.rerouted_bumped.increment(bumps.len() as u64);
                state.core.bumped(&bumps, now_ms, &state.participants).await;
                state
                    .commit_if_changed(move || {
                        if let Some(reply) = reply {
                            let _ = reply.send(());
                        }
                    })
                    .await;
            }
            RouterMsg::Expire(now_ms, reply) => {
                let expired = state.core.expire_due(now_ms, &state.participants);
                // A snapshot walking the books must find every order where
                // it was: none retires meanwhile.
                let retired = state.core.retire_due(now_ms, state.imaging == 0);
                state.metrics.orders_retired.increment(retired as u64);
                state.metrics.holds_expired.increment(expired as u64);
                state
                    .commit_if_changed(move || {
                        let _ = reply.send(expired);
                    })
                    .await;
            }
            RouterMsg::Check(reply) => {
                let _ = reply.send(state.core.check_invariants());
            }
            RouterMsg::Snapshot(sink, books, pace, reply) => {
                let start_lsn = Arc::new(std::sync::OnceLock::new());
                let label = start_lsn.clone();
                let done: Done = Box::new(move |result| {
                    if let Ok(lsn) = result {
                        let _ = label.set(lsn);
                    }
                });
                state
                    .sequencer
                    .append_raw(KIND_MARKER, Vec::new, done)
                    .await;
                state.imaging += 1;
                let image = Box::new(BookImage {
                    sink,
                    books,
                    pace,
                    cursor: BookCursor::default(),
                    finished: false,
                    pending: None,
                    start_lsn,
                });
                state.image_step(image, &myself).await;
                let _ = reply.send(());
            }
            RouterMsg::SetNetwork(network) => state.core.set_network(network),
            RouterMsg::ImageStep(image) => {
                state.image_step(image, &myself).await;
                // Back to the scheduler between steps: the next step is
                // already in the mailbox, and without a yield this actor
                // would run step after step (tokio's budget allows 128
                // receives) while the ingress and the other actors on its
                // worker wait. Measured: 0.4-2 s stalls while imaging
                // 0.7-1.7 M orders, gone with the yield.
                tokio::task::yield_now().await;
            }
        }
        Ok(())
    }
}
