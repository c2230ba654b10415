//! The router actor: a pool member that owns the books of its partitions,
//! runs each order step on its RouterCore, commits through the sequencer,
//! and streams its book to a snapshot and lists its orders in paced steps.

use std::sync::atomic::AtomicI64;
use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use super::demand::{journal_demand, DemandBudget};
use super::images::{
    BookPart, BookSink, ImagePace, ImageSink, Imaged, BOOK_RETRY_MS, IMAGE_DUTY_PERCENT,
};
use super::mailbox::{count_taken, Mailbox};
use super::participants::JournaledParticipants;
use crate::core::book::BookCursor;
use crate::core::error::InvariantError;
use crate::core::model::{Decision, NodeIdx, OrderId, OrderRequest, SkuId};
use crate::core::order::{BookChunk, OrderRecord};
use crate::core::router::{ListPage, Listing, OpError, OrderFilter, OrderRef, RouterCore};
use crate::core::status::statuses_of;
use crate::core::stock::Bumped;
use crate::engine::sequencer::{Done, Sequencer, Txn, KIND_MARKER};
use crate::limits::{MAX_ORDERS_PER_FOLLOW_UP_RECORD, MAX_ORDERS_SCANNED_PER_LIST_STEP};

pub(super) type Reply<T> = RpcReplyPort<Result<T, OpError>>;

pub enum RouterMsg {
    Submit {
        orders: Vec<OrderRequest>,
        now_ms: u64,
        reply: RpcReplyPort<Vec<Decision>>,
    },
    Get {
        order: OrderRef,
        reply: Reply<OrderRecord>,
    },
    /// A listing's first step; the next ones are `ListStep`s.
    List {
        filter: OrderFilter,
        reply: RpcReplyPort<ListPage>,
    },
    /// A listing's next step, queued behind whatever came meanwhile.
    ListStep(Box<ListingStep>),
    Confirm {
        order: OrderRef,
        reply: Reply<OrderRecord>,
    },
    Cancel {
        order: OrderRef,
        reply: Reply<OrderRecord>,
    },
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
    Bumped {
        bumps: Vec<Bumped>,
        now_ms: u64,
        reply: Option<RpcReplyPort<()>>,
    },
    Expire {
        now_ms: u64,
        reply: RpcReplyPort<usize>,
    },
    Check(RpcReplyPort<Result<(), InvariantError>>),
    /// Journal the demand gathered so far (the daemon's stop).
    FlushDemand(RpcReplyPort<()>),
    /// Snapshot the book, `ORDERS_PER_IMAGE_STEP` orders per message so that
    /// orders keep flowing in between (see `RouterState::image_step`).
    Snapshot {
        images: ImageSink,
        books: BookSink,
        pace: ImagePace,
        reply: RpcReplyPort<()>,
    },
    ImageStep(Box<BookImage>),
    /// A journaled policy reload, or nodes added by a reload: route on this
    /// network from now on.
    SetNetwork(Arc<crate::core::network::Network>),
}

pub struct RouterActor;

/// Rejected orders a router gathers before it journals them as one demand
/// record (the expiry tick journals fewer): a sold-out SKU's rejections
/// then cost the journal one hand-off per this many, not one per batch.
/// Gathering 4096 took the daemon from 3.9 to 3.3 µs of CPU per order at
/// 200 000 flash-sale orders/s, but encoding that many at once held the
/// worker long enough to show in p99; 256 keeps most of the saving (7.7-7.9
/// to 5.8-6.3 µs at 50 000/s) in bursts too short to show.
pub const MAX_PENDING_DEMAND_ORDERS: usize = 256;

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

/// A listing under way and who waits for its page.
pub struct ListingStep {
    listing: Listing,
    reply: RpcReplyPort<ListPage>,
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
    /// Shared with the other routers and the sessions.
    pub demand_budget: Arc<DemandBudget>,
}

impl RouterState {
    /// Sequences what the last step changed; `answer` runs once it is
    /// durable and its ops are on their way (never if the journal failed,
    /// which drops the caller's reply port: an error, never a false yes).
    async fn commit(&mut self, answer: impl FnOnce() + Send + 'static) {
        // Before anything is taken: a full journal queue waits here.
        let place = self.sequencer.reserve().await;
        let (stock, nodes) = self.participants.take();
        let orders = self.core.take_dirty();
        // Derived here, off the journal's thread, from what it will apply.
        let statuses = statuses_of(&orders, &stock, &nodes);
        let txn = Txn {
            skus: Vec::new(),
            orders,
            stock,
            nodes,
        };
        let actors = self.participants.actors.clone();
        self.sequencer.append_in(place, txn, move |txn| {
            actors.dispatch(txn.stock, txn.nodes);
            actors.tell_channels(statuses);
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

    /// Journals demand once `MAX_PENDING_DEMAND_ORDERS` rejected orders
    /// have gathered; the expiry tick and the stop journal the rest.
    fn record_demand_if_full(&mut self) {
        if self.core.demand_len() >= MAX_PENDING_DEMAND_ORDERS {
            self.record_demand();
        }
    }

    /// Journals the orders rejected so far as demand, for the what-if
    /// replay, if the journal's queue has room now: no answer waits for
    /// it, and none is held up by it. Demand that found no room is counted
    /// and the count journaled once there is, so the replay knows.
    fn record_demand(&mut self) {
        let demand = self.core.take_demand();
        journal_demand(
            &self.sequencer,
            demand,
            &mut self.demand_lost,
            &self.demand_budget,
            &self.metrics,
        );
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
                let _ = sink.send((lsn, Imaged::Router(router)));
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

/// The steps of the handler that take more than a line.
impl RouterState {
    async fn submit(
        &mut self,
        orders: Vec<OrderRequest>,
        now_ms: u64,
        reply: RpcReplyPort<Vec<Decision>>,
    ) {
        let decisions = self.core.submit(&orders, now_ms, &self.participants).await;
        let answer = move || {
            let _ = reply.send(decisions);
        };
        if self.changed() {
            self.commit(answer).await;
        } else {
            // Rejections (and resubmissions) changed nothing; what they saw
            // must still be durable before they are told.
            self.sequencer.after_durable(answer).await;
        }
        self.record_demand_if_full();
    }

    async fn node_offline(
        &mut self,
        orders: Vec<OrderId>,
        node: NodeIdx,
        now_ms: u64,
        reply: RpcReplyPort<()>,
    ) {
        self.metrics
            .rerouted_node_offline
            .increment(orders.len() as u64);
        // A record per run of orders: a big node's outage re-routes more
        // than one record may hold.
        for run in orders.chunks(MAX_ORDERS_PER_FOLLOW_UP_RECORD) {
            for &order in run {
                self.core
                    .node_offline(order, node, now_ms, &self.participants)
                    .await;
            }
            self.commit_if_changed(|| {}).await;
        }
        // Answered once every run before it is durable.
        self.sequencer
            .after_durable(move || {
                let _ = reply.send(());
            })
            .await;
    }

    async fn bumped(&mut self, bumps: Vec<Bumped>, now_ms: u64, reply: Option<RpcReplyPort<()>>) {
        self.metrics.rerouted_bumped.increment(bumps.len() as u64);
        for run in bumps.chunks(MAX_ORDERS_PER_FOLLOW_UP_RECORD) {
            self.core.bumped(run, now_ms, &self.participants).await;
            self.commit_if_changed(|| {}).await;
        }
        if let Some(reply) = reply {
            self.sequencer
                .after_durable(move || {
                    let _ = reply.send(());
                })
                .await;
        }
    }

    async fn expire(&mut self, now_ms: u64, reply: RpcReplyPort<usize>) {
        self.record_demand();
        // A record per run of expired orders (see the limit's reason).
        let mut expired = 0;
        loop {
            let run =
                self.core
                    .expire_due(now_ms, MAX_ORDERS_PER_FOLLOW_UP_RECORD, &self.participants);
            expired += run;
            if run < MAX_ORDERS_PER_FOLLOW_UP_RECORD {
                break;
            }
            self.commit_if_changed(|| {}).await;
        }
        // A snapshot walking the books must find every order where it was:
        // none retires meanwhile.
        let retired = self.core.retire_due(now_ms, self.imaging == 0);
        self.metrics.orders_retired.increment(retired as u64);
        self.metrics.holds_expired.increment(expired as u64);
        self.commit_if_changed(move || {
            let _ = reply.send(expired);
        })
        .await;
    }

    /// Passes the next `MAX_ORDERS_SCANNED_PER_LIST_STEP` orders of a
    /// listing. Once every book is passed the page is answered, when what
    /// it shows is durable; until then the next step goes to the back of
    /// the mailbox, so that the batches and lifecycle steps that came
    /// meanwhile go first (`Listing` says what a page shows of the changes
    /// they make).
    async fn list_step(&mut self, mut step: ListingStep, myself: &ActorRef<RouterMsg>) {
        match self
            .core
            .list_step(&mut step.listing, MAX_ORDERS_SCANNED_PER_LIST_STEP)
        {
            Some(page) => {
                let reply = step.reply;
                self.sequencer
                    .after_durable(move || {
                        let _ = reply.send(page);
                    })
                    .await;
            }
            None => {
                let mailbox = Mailbox::new(myself.clone(), self.depth.clone());
                // A stopped actor takes no more: the engine is going down,
                // and the dropped reply port answers the caller an error.
                let _ = mailbox.cast(RouterMsg::ListStep(Box::new(step)));
            }
        }
    }

    /// Appends the snapshot's opening marker and takes the first step of
    /// streaming the book; the marker's LSN labels the book once durable.
    async fn start_image(
        &mut self,
        sink: ImageSink,
        books: BookSink,
        pace: ImagePace,
        myself: &ActorRef<RouterMsg>,
    ) {
        let start_lsn = Arc::new(std::sync::OnceLock::new());
        let label = start_lsn.clone();
        let done: Done = Box::new(move |result| {
            if let Ok(lsn) = result {
                let _ = label.set(lsn);
            }
        });
        self.sequencer.append_raw(KIND_MARKER, Vec::new, done).await;
        self.imaging += 1;
        let image = Box::new(BookImage {
            sink,
            books,
            pace,
            cursor: BookCursor::default(),
            finished: false,
            pending: None,
            start_lsn,
        });
        self.image_step(image, myself).await;
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
        count_taken(&state.depth);
        match message {
            RouterMsg::Submit {
                orders,
                now_ms,
                reply,
            } => state.submit(orders, now_ms, reply).await,
            // Reads answer once what they show is durable: an order whose
            // record is still being written (or never will be, if the
            // journal failed) is not shown ahead of the disk.
            RouterMsg::Get { order, reply } => {
                let found = state.core.get(&order).cloned();
                state
                    .sequencer
                    .after_durable(move || {
                        let _ = reply.send(found);
                    })
                    .await;
            }
            RouterMsg::List { filter, reply } => {
                let listing = state.core.start_listing(filter);
                state
                    .list_step(ListingStep { listing, reply }, &myself)
                    .await;
            }
            RouterMsg::ListStep(step) => {
                state.list_step(*step, &myself).await;
                // Back to the scheduler between steps, as for `ImageStep`.
                tokio::task::yield_now().await;
            }
            RouterMsg::Confirm { order, reply } => {
                let result = state.core.confirm(&order).cloned();
                state.finish(result, reply).await;
            }
            RouterMsg::Cancel { order, reply } => {
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
            } => state.node_offline(orders, node, now_ms, reply).await,
            RouterMsg::Bumped {
                bumps,
                now_ms,
                reply,
            } => state.bumped(bumps, now_ms, reply).await,
            RouterMsg::Expire { now_ms, reply } => state.expire(now_ms, reply).await,
            RouterMsg::FlushDemand(reply) => {
                state.record_demand();
                let _ = reply.send(());
            }
            RouterMsg::Check(reply) => {
                let _ = reply.send(state.core.check_invariants());
            }
            RouterMsg::Snapshot {
                images: sink,
                books,
                pace,
                reply,
            } => {
                state.start_image(sink, books, pace, &myself).await;
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
