//! The engine: spawns the actors and is the handle everything else (the
//! daemon, the QUIC ingress, tests, benches) drives. It translates names to
//! indices, groups work by router and shard, and bounds what is in flight.

mod images;
mod mailbox;
mod node;
mod participants;
mod router;
pub mod sequencer;
mod shard;
mod watchdog;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::future::join_all;
use ractor::Actor;
use rustc_hash::FxHashMap;
use smallvec::SmallVec;
use tokio::sync::Semaphore;

use images::ImagePace;
pub use images::{book_channel, BookPart, BookParts, BookSink, Image};
use mailbox::Mailbox;
use node::{NodeActor, NodeMsg};
pub use node::{Subscription, SUBSCRIBER_QUEUE_EVENTS};
use participants::{ActorParticipants, JournaledParticipants};
pub use router::ORDERS_PER_IMAGE_STEP;
use router::{RouterActor, RouterMsg, RouterState};
use sequencer::{Done, Sequencer, Txn, KIND_MARKER};
use shard::{ShardActor, ShardMsg, ShardState};
pub use watchdog::Health;
use watchdog::Watchdog;

use crate::core::book::{router_of_key, router_of_order, MAX_ROUTERS};
use crate::core::capacity::NodeLedger;
use crate::core::events::CursorOutOfRange;
use crate::core::geo::GeoPoint;
use crate::core::index::{AvailabilityIndex, CatalogFull};
use crate::core::model::{Decision, NodeIdx, OrderRequest, SkuId};
use crate::core::network::Network;
use crate::core::ops::{NodeOp, StockOp};
use crate::core::order::OrderRecord;
use crate::core::router::{OpError, OrderRef, RouterCore};
use crate::core::stock::{Bumped, Cell, ImageMemory, StockError, StockShard};
use crate::limits::{
    MAX_NEAREST_NODES, MAX_ON_HAND_UNITS, MAX_ORDERS_PER_BATCH, MAX_STOCK_UPDATES_PER_BATCH,
};

/// Where the engine reads the time. Tests use [`ManualClock`] so that hold
/// expiry happens exactly when they say.
pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> u64;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }
}

/// A clock that moves only when told.
#[derive(Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    pub fn new(now_ms: u64) -> ManualClock {
        ManualClock(AtomicU64::new(now_ms))
    }

    pub fn advance(&self, by_ms: u64) {
        self.0.fetch_add(by_ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Sizes of the engine, from `[engine]` in the config.
#[derive(Clone, Debug, PartialEq)]
pub struct EngineSettings {
    pub shards: u32,
    pub routers: u32,
    pub max_skus: usize,
    /// Orders (and other requests) admitted at once; beyond this, callers
    /// wait or, with the `try_` methods, are told `Overloaded`.
    pub max_inflight: u32,
    /// How often the expiry timer runs; 0 disables it (tests call `tick`).
    pub expiry_tick_ms: u64,
    /// How long a closed order stays in memory (`[orders] retention_ms`).
    pub order_retention_ms: u64,
}

impl Default for EngineSettings {
    fn default() -> EngineSettings {
        EngineSettings {
            shards: 4,
            routers: 4,
            max_skus: 1 << 18,
            max_inflight: 65_536,
            expiry_tick_ms: 100,
            order_retention_ms: crate::limits::DEFAULT_ORDER_RETENTION_MS,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("could not spawn an actor: {0}")]
    Spawn(String),
    #[error("routers must be 1..={MAX_ROUTERS}")]
    Routers,
    #[error("a reload cannot add, remove or rename channels (now: {now}; asked: {asked}); restart for that")]
    Channels { now: String, asked: String },
    #[error("a running daemon only adds nodes; a node removed or renamed needs a restart")]
    NodesChanged,
    #[error("{asked} nodes to add, but {free} spare node slots; restart to add more")]
    NodeSlots { asked: usize, free: usize },
    #[error("the engine is overloaded; retry later")]
    Overloaded,
    #[error("batch of {0} exceeds the limit")]
    BatchTooLarge(usize),
    #[error("unknown node {0:?}")]
    UnknownNode(String),
    #[error("unknown sku {0:?}")]
    UnknownSku(String),
    /// A stock feed entry's count is out of range; the feed changed nothing.
    #[error("stock entry {entry} ({sku}@{node}): {reason}")]
    StockQuantity {
        entry: usize,
        sku: String,
        node: String,
        reason: String,
    },
    #[error(transparent)]
    CatalogFull(#[from] CatalogFull),
    #[error(transparent)]
    Order(#[from] OpError),
    #[error(transparent)]
    Cursor(#[from] CursorOutOfRange),
    /// The journal failed (disk full, I/O error): nothing more can be made
    /// durable, so nothing more is answered yes.
    #[error("the journal cannot make changes durable; the daemon must be restarted")]
    Unavailable,
}

/// One entry of a WMS/ERP feed, by external names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StockUpdate {
    Set {
        sku: String,
        node: String,
        on_hand: u32,
        safety_stock: Option<u32>,
    },
    Adjust {
        sku: String,
        node: String,
        delta: i64,
    },
}

/// Refuses a feed with a count no cell may take, before anything changes:
/// on_hand and safety stock at most [`MAX_ON_HAND_UNITS`] (a count sets
/// on_hand, so the wire's 0xFFFFFFFF "unchanged" is for safety stock only),
/// and an adjustment no larger than that either way. An adjustment that
/// would take a cell past the limit is the shard's to refuse (it alone
/// knows the count), as an entry error that changes nothing.
fn check_stock_quantities(updates: &[StockUpdate]) -> Result<(), EngineError> {
    let limit = i64::from(MAX_ON_HAND_UNITS);
    for (entry, update) in updates.iter().enumerate() {
        let reason = match update {
            StockUpdate::Set { on_hand, .. } if *on_hand == u32::MAX => {
                "on_hand 0xFFFFFFFF: a count sets on_hand (only safety_stock takes 0xFFFFFFFF as unchanged)".to_string()
            }
            StockUpdate::Set { on_hand, .. } if *on_hand > MAX_ON_HAND_UNITS => {
                format!("on_hand {on_hand} is above the limit of {MAX_ON_HAND_UNITS}")
            }
            StockUpdate::Set {
                safety_stock: Some(safety),
                ..
            } if *safety > MAX_ON_HAND_UNITS => {
                format!("safety_stock {safety} is above the limit of {MAX_ON_HAND_UNITS}")
            }
            StockUpdate::Adjust { delta, .. } if !(-limit..=limit).contains(delta) => {
                format!("adjustment {delta:+} is beyond ±{MAX_ON_HAND_UNITS}")
            }
            _ => continue,
        };
        let (StockUpdate::Set { sku, node, .. } | StockUpdate::Adjust { sku, node, .. }) = update;
        return Err(EngineError::StockQuantity {
            entry,
            sku: sku.clone(),
            node: node.clone(),
            reason,
        });
    }
    Ok(())
}

/// Messages waiting in each actor's mailbox, by actor index.
#[derive(Clone, Debug, Default)]
pub struct QueueDepths {
    pub routers: Vec<i64>,
    pub shards: Vec<i64>,
    pub nodes: Vec<i64>,
}

/// What a stock update batch did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StockReport {
    pub applied: usize,
    /// Reservations that no longer fit and were routed again.
    pub bumped: Vec<Bumped>,
    pub errors: Vec<StockError>,
}

/// A node that holds a SKU, for availability answers.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeStock {
    pub node: NodeIdx,
    pub atp: u32,
    pub distance_km: Option<f64>,
}

struct Inner {
    /// Replaced whole when nodes are added or policies reloaded; read
    /// without a lock on every order.
    network: arc_swap::ArcSwap<Network>,
    index: Arc<AvailabilityIndex>,
    routers: Vec<Mailbox<RouterMsg>>,
    participants: ActorParticipants,
    metrics: Arc<crate::telemetry::EngineMetrics>,
    sequencer: Arc<Sequencer>,
    /// Serializes catalog growth with its journal record, so that SKU ids
    /// are journaled in the order they were given.
    feed_lock: std::sync::Mutex<()>,
    clock: Arc<dyn Clock>,
    admission: Arc<Semaphore>,
    max_inflight: u32,
    tasks: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
    image_pace: ImagePace,
    health: Arc<Health>,
    /// Supervises every actor above; stopped last.
    watchdog: ractor::ActorRef<()>,
}

/// Everything the actors own, as plain core values: fresh from a config,
/// or rebuilt by recovery from snapshots and the journal.
pub struct EngineState {
    pub index: Arc<AvailabilityIndex>,
    pub shards: Vec<StockShard>,
    pub ledgers: Vec<NodeLedger>,
    pub routers: Vec<RouterCore>,
}

impl EngineState {
    /// Empty shards and books; nodes with their configured online flag.
    pub fn fresh(
        settings: &EngineSettings,
        network: &Arc<Network>,
        now_ms: u64,
    ) -> Result<EngineState, EngineError> {
        if settings.routers == 0 || settings.routers as usize > MAX_ROUTERS {
            return Err(EngineError::Routers);
        }
        // Spare slots beyond the network: nodes a reload may add.
        let slots = crate::limits::node_slots(network.nodes.len());
        let index = Arc::new(AvailabilityIndex::with_slots(
            network.nodes.len(),
            slots,
            settings.max_skus,
        ));
        let shard_count = settings.shards.max(1);
        Ok(EngineState {
            shards: (0..shard_count)
                .map(|s| StockShard::new(s, shard_count, index.clone()))
                .collect(),
            ledgers: (0..slots)
                .map(|i| {
                    // A spare slot: offline, no capacity, until a node is added.
                    let (capacity, online) = network
                        .nodes
                        .get(i)
                        .map_or((0, false), |node| (node.daily_capacity, node.online));
                    NodeLedger::new(i as NodeIdx, capacity, online, index.clone(), now_ms)
                })
                .collect(),
            routers: EngineState::empty_routers(settings, network, &index),
            index,
        })
    }

    /// `settings.routers` routers with empty books, planning on `index`.
    pub fn empty_routers(
        settings: &EngineSettings,
        network: &Arc<Network>,
        index: &Arc<AvailabilityIndex>,
    ) -> Vec<RouterCore> {
        let (routers, shards) = (settings.routers as usize, settings.shards.max(1));
        (0..routers)
            .map(|r| {
                let mut core = RouterCore::new(r, routers, network.clone(), index.clone(), shards);
                core.set_retention_ms(settings.order_retention_ms);
                core
            })
            .collect()
    }
}

/// Batches of bumped reservations queued from the shards to the forwarder
/// that hands them to their routers; a shard waits when it is full.
const BUMP_QUEUE_BATCHES: usize = 1024;

/// Cheap to clone; every clone drives the same actors.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl Engine {
    /// Spawns every actor on empty state, changes sequenced in memory only
    /// (nothing durable: tests and benches of the engine alone). The nodes
    /// start with the config's online flag and no stock; load stock with
    /// [`Engine::update_stock`].
    pub async fn start(
        settings: &EngineSettings,
        network: Network,
        clock: Arc<dyn Clock>,
    ) -> Result<Engine, EngineError> {
        let network = Arc::new(network);
        let state = EngineState::fresh(settings, &network, clock.now_ms())?;
        Engine::start_with(settings, network, state, Sequencer::memory(), clock).await
    }

    /// Spawns every actor on `state`, sequencing changes with `sequencer`.
    pub async fn start_with(
        settings: &EngineSettings,
        network: Arc<Network>,
        state: EngineState,
        sequencer: Sequencer,
        clock: Arc<dyn Clock>,
    ) -> Result<Engine, EngineError> {
        let spawn_error = |e: ractor::SpawnErr| EngineError::Spawn(e.to_string());
        let EngineState {
            index,
            shards: shard_states,
            ledgers,
            routers: cores,
        } = state;
        let sequencer = Arc::new(sequencer);
        let health = Health::new();
        let watchdog = Actor::spawn(None, Watchdog, health.clone())
            .await
            .map_err(spawn_error)?
            .0;
        let (bumps, mut bump_queue) = tokio::sync::mpsc::channel::<Vec<Bumped>>(BUMP_QUEUE_BATCHES);
        let mut shards = Vec::new();
        for shard in shard_states {
            let depth = Arc::new(std::sync::atomic::AtomicI64::new(0));
            let state = ShardState {
                shard,
                bumps: bumps.clone(),
                depth: depth.clone(),
            };
            let index = shards.len();
            let actor = Actor::spawn_linked(None, ShardActor, state, watchdog.get_cell())
                .await
                .map_err(spawn_error)?
                .0;
            health.name(actor.get_id(), format!("shard {index}"));
            shards.push(Mailbox::new(actor, depth));
        }
        let mut nodes = Vec::new();
        for ledger in ledgers {
            let depth = Arc::new(std::sync::atomic::AtomicI64::new(0));
            let name = match network.nodes.get(nodes.len()) {
                Some(node) => format!("node {}", node.id),
                None => format!("node slot {}", nodes.len()),
            };
            let actor = Actor::spawn_linked(
                None,
                NodeActor,
                (ledger, depth.clone()),
                watchdog.get_cell(),
            )
            .await
            .map_err(spawn_error)?
            .0;
            health.name(actor.get_id(), name);
            nodes.push(Mailbox::new(actor, depth));
        }
        let participants = ActorParticipants {
            shards: shards.into(),
            nodes: nodes.into(),
        };
        let metrics = Arc::new(crate::telemetry::EngineMetrics::new(&network));
        let mut routers = Vec::new();
        for mut core in cores {
            // Only a journal keeps demand.
            core.set_record_demand(sequencer.is_durable());
            let depth = Arc::new(std::sync::atomic::AtomicI64::new(0));
            let state = RouterState {
                core,
                participants: JournaledParticipants::new(participants.clone()),
                sequencer: sequencer.clone(),
                depth: depth.clone(),
                metrics: metrics.clone(),
                imaging: 0,
                demand_lost: 0,
            };
            let index = routers.len();
            let actor = Actor::spawn_linked(None, RouterActor, state, watchdog.get_cell())
                .await
                .map_err(spawn_error)?
                .0;
            health.name(actor.get_id(), format!("router {index}"));
            routers.push(Mailbox::new(actor, depth));
        }
        let engine = Engine {
            inner: Arc::new(Inner {
                network: arc_swap::ArcSwap::new(network),
                index,
                routers,
                participants,
                metrics,
                sequencer,
                feed_lock: std::sync::Mutex::new(()),
                clock,
                admission: Arc::new(Semaphore::new(settings.max_inflight as usize)),
                max_inflight: settings.max_inflight,
                tasks: std::sync::Mutex::new(Vec::new()),
                image_pace: ImagePace::default(),
                health,
                watchdog,
            }),
        };
        // Reservations that journaled ops took back (a count fell below
        // them) go to their routers to be placed again.
        let weak = Arc::downgrade(&engine.inner);
        let forwarder = tokio::spawn(async move {
            while let Some(bumped) = bump_queue.recv().await {
                let Some(inner) = weak.upgrade() else { break };
                let engine = Engine { inner };
                engine.forward_bumps(bumped, engine.now_ms());
            }
        });
        engine
            .inner
            .tasks
            .lock()
            .expect("tasks lock")
            .push(forwarder);
        if settings.expiry_tick_ms > 0 {
            let weak = Arc::downgrade(&engine.inner);
            let period = Duration::from_millis(settings.expiry_tick_ms);
            let ticker = tokio::spawn(async move {
                let mut interval = tokio::time::interval(period);
                interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    interval.tick().await;
                    let Some(inner) = weak.upgrade() else { break };
                    Engine { inner }.tick().await;
                }
            });
            engine.inner.tasks.lock().expect("tasks lock").push(ticker);
        }
        Ok(engine)
    }

    /// Whether changes are journaled (a data directory) or memory only.
    pub fn is_durable(&self) -> bool {
        self.inner.sequencer.is_durable()
    }

    /// Orders admitted and not yet answered.
    pub fn orders_in_flight(&self) -> usize {
        (self.inner.max_inflight as usize).saturating_sub(self.inner.admission.available_permits())
    }

    /// Messages waiting in each router's, shard's and node's mailbox.
    pub fn queue_depths(&self) -> QueueDepths {
        let participants = &self.inner.participants;
        QueueDepths {
            routers: self.inner.routers.iter().map(Mailbox::depth).collect(),
            shards: participants.shards.iter().map(Mailbox::depth).collect(),
            nodes: participants.nodes.iter().map(Mailbox::depth).collect(),
        }
    }

    /// Routes orders by new policies for the same channels: journals them
    /// (as `toml`), then hands them to every router in LSN order, so every
    /// order submitted after this returns is routed by them. Returns the LSN.
    pub async fn reload_policies(
        &self,
        channels: Vec<crate::core::network::Channel>,
        toml: String,
    ) -> Result<u64, EngineError> {
        let current = self.network_arc();
        let names = |c: &mut dyn Iterator<Item = &crate::core::network::Channel>| -> Vec<String> {
            let mut names: Vec<String> = c.map(|c| c.name.clone()).collect();
            names.sort();
            names
        };
        let now = names(&mut current.channels.iter().filter(|c| !c.retired));
        let asked = names(&mut channels.iter());
        if now != asked {
            return Err(EngineError::Channels {
                now: now.join(", "),
                asked: asked.join(", "),
            });
        }
        // The channels keep their ids: each takes its new policy by name.
        let mut by_name: std::collections::HashMap<String, crate::core::network::Channel> =
            channels.into_iter().map(|c| (c.name.clone(), c)).collect();
        let channels = current
            .channels
            .iter()
            .map(|c| by_name.remove(&c.name).unwrap_or_else(|| c.clone()))
            .collect();
        let network = Arc::new(Network::new(
            current.nodes.clone(),
            current.markets.clone(),
            channels,
        ));
        let routers = self.inner.routers.clone();
        let (sent, applied) = tokio::sync::oneshot::channel();
        let next = network.clone();
        let done: Done = Box::new(move |result| {
            let Ok(lsn) = result else { return };
            for router in &routers {
                let _ = router.cast(RouterMsg::SetNetwork(next.clone()));
            }
            let _ = sent.send(lsn);
        });
        self.inner
            .sequencer
            .append_raw(sequencer::KIND_POLICY, || toml.into_bytes(), done)
            .await;
        let lsn = applied.await.map_err(|_| EngineError::Unavailable)?;
        self.inner.network.store(network);
        metrics::gauge!(crate::telemetry::POLICY_LSN).set(lsn as f64);
        Ok(lsn)
    }

    pub fn sequencer(&self) -> &Sequencer {
        &self.inner.sequencer
    }

    /// Snapshots image at full speed from now on, the one under way
    /// included: nothing else waits (the daemon is stopping).
    pub fn hurry_snapshots(&self) {
        self.inner.image_pace.hurry();
    }

    pub fn router_count(&self) -> usize {
        self.inner.routers.len()
    }

    /// Images every actor with the LSN it has applied, without stopping
    /// the others: routers image their books in order with their changes,
    /// and a marker record tells every shard and node when to image theirs.
    /// The catalog is imaged at the marker too (it may hold SKUs journaled
    /// just after it, which replay accepts as already known). The routers'
    /// books go to `books` a chunk at a time, while they image; their
    /// images here only label them.
    pub async fn take_snapshot(&self, books: BookSink) -> Result<Vec<(u64, Image)>, EngineError> {
        let (sink, mut images) = tokio::sync::mpsc::unbounded_channel();
        let expected = self.inner.routers.len()
            + self.inner.participants.shards.len()
            + self.inner.participants.nodes.len()
            + 1;
        for router in &self.inner.routers {
            let sink = sink.clone();
            let books = books.clone();
            let pace = self.inner.image_pace.clone();
            call(router, move |reply| {
                RouterMsg::Snapshot(sink, books, pace, reply)
            })
            .await;
        }
        drop(books);
        let participants = self.inner.participants.clone();
        let index = self.inner.index.clone();
        // The shards' image memory, touched here on a blocking thread, so
        // that the shards (which hold their orders while they image) do
        // not fault it in. Sized for an even share of the catalog.
        let shards = participants.shards.len();
        let skus_per_shard = index.sku_count().div_ceil(shards.max(1)) * 17 / 16;
        let node_count = index.node_count();
        let memories = tokio::task::spawn_blocking(move || {
            (0..shards)
                .map(|_| ImageMemory::touched(skus_per_shard, node_count))
                .collect::<Vec<_>>()
        })
        .await
        .map_err(|_| EngineError::Unavailable)?;
        let marker_sink = sink.clone();
        let done: Done = Box::new(move |result| {
            let Ok(lsn) = result else { return };
            for (shard, memory) in participants.shards.iter().zip(memories) {
                let _ = shard.cast(ShardMsg::Snapshot(lsn, marker_sink.clone(), memory));
            }
            for node in participants.nodes.iter() {
                let _ = node.cast(NodeMsg::Snapshot(lsn, marker_sink.clone()));
            }
            let _ = marker_sink.send((lsn, Image::Catalog(index.sku_names())));
        });
        self.inner
            .sequencer
            .append_raw(KIND_MARKER, Vec::new, done)
            .await;
        drop(sink);
        let mut taken = Vec::with_capacity(expected);
        while let Some(image) = images.recv().await {
            taken.push(image);
        }
        if taken.len() != expected {
            return Err(EngineError::Unavailable);
        }
        Ok(taken)
    }

    /// Puts right what recovery found out of step: units a book still
    /// gives an order that its shard took back (their re-route was not
    /// journaled before the crash) are placed again; reservations no book
    /// knows are released.
    pub async fn repair(
        &self,
        bumps: Vec<Bumped>,
        orphans: Vec<(u64, SkuId, NodeIdx, u32)>,
    ) -> Result<(), EngineError> {
        if !orphans.is_empty() {
            let shard_count = self.inner.participants.shards.len() as u32;
            let txn = Txn {
                stock: orphans
                    .iter()
                    .map(|&(order, sku, node, qty)| {
                        let op = StockOp::Release {
                            order,
                            sku,
                            node,
                            qty,
                        };
                        (StockShard::shard_of(sku, shard_count), op)
                    })
                    .collect(),
                ..Txn::default()
            };
            let participants = self.inner.participants.clone();
            let (reply, answer) = tokio::sync::oneshot::channel::<()>();
            self.inner
                .sequencer
                .append(txn, move |txn| {
                    participants.dispatch(txn.stock, Vec::new());
                    let _ = reply.send(());
                })
                .await;
            answer.await.map_err(|_| EngineError::Unavailable)?;
        }
        self.dispatch_bumps(bumps, self.now_ms()).await
    }

    /// The network as it is now (nodes may be added while running), for
    /// a quick look: never keep it across an await (see [`Engine::network_arc`]).
    pub fn network(&self) -> arc_swap::Guard<Arc<Network>> {
        self.inner.network.load()
    }

    /// The network as it is now, to keep.
    pub fn network_arc(&self) -> Arc<Network> {
        self.inner.network.load_full()
    }

    /// Adds `network`'s nodes beyond the current ones to the running
    /// daemon: each takes a spare node slot, gets its daily capacity, and
    /// its online flag is journaled; then every router plans with
    /// `network`. The caller has made the new ids durable in the data
    /// directory's names first. Returns the added nodes' ids.
    pub async fn add_nodes(&self, network: Arc<Network>) -> Result<Vec<String>, EngineError> {
        let current = self.network_arc();
        let slots = self.inner.participants.nodes.len();
        let first = current.nodes.len();
        let same_ids = network.nodes.len() >= first
            && current
                .nodes
                .iter()
                .zip(&network.nodes)
                .all(|(a, b)| a.id == b.id);
        if !same_ids {
            return Err(EngineError::NodesChanged);
        }
        if network.nodes.len() > slots {
            return Err(EngineError::NodeSlots {
                asked: network.nodes.len() - first,
                free: slots - first,
            });
        }
        let added = &network.nodes[first..];
        // Room in the index and the shards first: nothing names the new
        // nodes until the routers have the network, last.
        self.inner.index.grow_nodes(network.nodes.len());
        for shard in self.inner.participants.shards.iter() {
            call_committed(shard, |reply| ShardMsg::Widen(network.nodes.len(), reply)).await?;
        }
        for (n, node) in (first..).zip(added) {
            let actor = &self.inner.participants.nodes[n];
            call_committed(actor, |reply| NodeMsg::Configure {
                daily_capacity: node.daily_capacity,
                reply,
            })
            .await?;
            self.inner
                .health
                .name(actor.id(), format!("node {}", node.id));
        }
        let ops: Vec<(NodeIdx, NodeOp)> = (first..)
            .zip(added)
            .map(|(n, node)| (n as NodeIdx, NodeOp::Online(node.online)))
            .collect();
        let txn = Txn {
            nodes: ops.clone(),
            ..Txn::default()
        };
        let actors = self.inner.participants.nodes.clone();
        let routers = self.inner.routers.clone();
        let next = network.clone();
        let (sent, applied) = tokio::sync::oneshot::channel();
        self.inner
            .sequencer
            .append(txn, move |_| {
                // Each node is online before any router can plan with it.
                for (n, op) in ops {
                    let _ = actors[n as usize].cast(NodeMsg::Ops(vec![op], None));
                }
                for router in &routers {
                    let _ = router.cast(RouterMsg::SetNetwork(next.clone()));
                }
                let _ = sent.send(());
            })
            .await;
        applied.await.map_err(|_| EngineError::Unavailable)?;
        let ids = added.iter().map(|n| n.id.clone()).collect();
        self.inner.network.store(network);
        Ok(ids)
    }

    pub fn index(&self) -> &AvailabilityIndex {
        &self.inner.index
    }

    pub fn now_ms(&self) -> u64 {
        self.inner.clock.now_ms()
    }

    fn node_idx(&self, id: &str) -> Result<NodeIdx, EngineError> {
        self.inner
            .network
            .load()
            .node_idx(id)
            .ok_or_else(|| EngineError::UnknownNode(id.to_string()))
    }

    fn sku_id(&self, name: &str) -> Result<SkuId, EngineError> {
        self.inner
            .index
            .lookup(name)
            .ok_or_else(|| EngineError::UnknownSku(name.to_string()))
    }

    fn router_for(&self, order: &OrderRef) -> &Mailbox<RouterMsg> {
        let routers = &self.inner.routers;
        match order {
            OrderRef::Id(id) => &routers[router_of_order(*id, routers.len())],
            OrderRef::Key {
                channel,
                client_order_id,
            } => &routers[router_of_key(channel, client_order_id, routers.len())],
        }
    }

    async fn admit(&self, count: usize) -> tokio::sync::SemaphorePermit<'_> {
        let count = count.min(self.inner.max_inflight as usize) as u32;
        self.inner
            .admission
            .acquire_many(count)
            .await
            .expect("admission semaphore is never closed")
    }

    /// Routes one order.
    /// Routes one order. Panics if the journal failed; the daemon uses
    /// the batch calls, which answer that as an error.
    pub async fn submit(&self, order: OrderRequest) -> Decision {
        self.submit_batch(vec![order])
            .await
            .map(|mut d| d.remove(0))
            .expect("a batch of one is routed")
    }

    /// Routes many orders at once: one message per router, one hold message
    /// per shard and node touched. Waits while the engine is full.
    pub async fn submit_batch(
        &self,
        orders: Vec<OrderRequest>,
    ) -> Result<Vec<Decision>, EngineError> {
        check_batch(&orders)?;
        let _permit = self.admit(orders.len()).await;
        self.route(orders).await
    }

    /// Like [`Engine::submit_batch`], but answers `Overloaded` at once
    /// instead of waiting when too much is in flight.
    pub async fn try_submit_batch(
        &self,
        orders: Vec<OrderRequest>,
    ) -> Result<Vec<Decision>, EngineError> {
        check_batch(&orders)?;
        let count = orders.len().min(self.inner.max_inflight as usize) as u32;
        let Ok(_permit) = self.inner.admission.try_acquire_many(count) else {
            for order in &orders {
                self.inner.metrics.overloaded(self.channel_slot(order));
            }
            return Err(EngineError::Overloaded);
        };
        self.route(orders).await
    }

    fn channel_slot(&self, order: &OrderRequest) -> Option<usize> {
        self.inner
            .network
            .load()
            .channel_idx(&order.channel)
            .map(usize::from)
    }

    async fn route(&self, orders: Vec<OrderRequest>) -> Result<Vec<Decision>, EngineError> {
        let started = std::time::Instant::now();
        let channels: SmallVec<[Option<usize>; 16]> =
            orders.iter().map(|o| self.channel_slot(o)).collect();
        let routers = &self.inner.routers;
        let now_ms = self.now_ms();
        let mut by_router: Vec<(Vec<OrderRequest>, Vec<usize>)> =
            vec![(Vec::new(), Vec::new()); routers.len()];
        for (i, order) in orders.into_iter().enumerate() {
            let r = router_of_key(&order.channel, &order.client_order_id, routers.len());
            by_router[r].0.push(order);
            by_router[r].1.push(i);
        }
        let total: usize = by_router.iter().map(|(o, _)| o.len()).sum();
        let calls = by_router
            .into_iter()
            .enumerate()
            .filter(|(_, (o, _))| !o.is_empty())
            .map(|(r, (orders, slots))| async move {
                let decisions = call_committed(&routers[r], |reply| {
                    RouterMsg::Submit(orders, now_ms, reply)
                })
                .await;
                (slots, decisions)
            });
        let mut answers: Vec<Option<Decision>> = vec![None; total];
        for (slots, decisions) in join_all(calls).await {
            for (slot, decision) in slots.into_iter().zip(decisions?) {
                answers[slot] = Some(decision);
            }
        }
        let metrics = &self.inner.metrics;
        metrics.latency(started.elapsed(), total);
        Ok(answers
            .into_iter()
            .zip(channels)
            .map(|(d, channel)| {
                let decision = d.expect("every order answered");
                metrics.answered(channel, &decision);
                decision
            })
            .collect())
    }

    /// The order as it is now; `Archived` once it closed and retired.
    pub async fn get(&self, order: OrderRef) -> Result<OrderRecord, EngineError> {
        let router = self.router_for(&order);
        Ok(call(router, |reply| RouterMsg::Get(order, reply)).await?)
    }

    pub async fn confirm(&self, order: OrderRef) -> Result<OrderRecord, EngineError> {
        let _permit = self.admit(1).await;
        let router = self.router_for(&order);
        call_committed(router, |reply| RouterMsg::Confirm(order, reply))
            .await?
            .map_err(Into::into)
    }

    pub async fn cancel(&self, order: OrderRef) -> Result<OrderRecord, EngineError> {
        let _permit = self.admit(1).await;
        let router = self.router_for(&order);
        call_committed(router, |reply| RouterMsg::Cancel(order, reply))
            .await?
            .map_err(Into::into)
    }

    /// A node shipped `qty` units of `sku` for the order.
    pub async fn ship(
        &self,
        order: OrderRef,
        node: &str,
        sku: &str,
        qty: u32,
    ) -> Result<OrderRecord, EngineError> {
        let (node, sku) = (self.node_idx(node)?, self.sku_id(sku)?);
        let _permit = self.admit(1).await;
        let router = self.router_for(&order);
        call_committed(router, |reply| RouterMsg::Ship {
            order,
            node,
            sku,
            qty,
            reply,
        })
        .await?
        .map_err(Into::into)
    }

    /// A customer returned units at `node`, which puts them back in stock.
    pub async fn return_units(
        &self,
        order: OrderRef,
        node: &str,
        sku: &str,
        qty: u32,
    ) -> Result<OrderRecord, EngineError> {
        let (node, sku) = (self.node_idx(node)?, self.sku_id(sku)?);
        let _permit = self.admit(1).await;
        let router = self.router_for(&order);
        call_committed(router, |reply| RouterMsg::Return {
            order,
            node,
            sku,
            qty,
            reply,
        })
        .await?
        .map_err(Into::into)
    }

    /// A node refuses its allocation of the order, optionally reporting its
    /// true counts of some SKUs; the units are routed elsewhere.
    pub async fn node_reject(
        &self,
        order: OrderRef,
        node: &str,
        counts: &[(&str, u32)],
    ) -> Result<OrderRecord, EngineError> {
        let node = self.node_idx(node)?;
        let counts = counts
            .iter()
            .map(|(sku, n)| Ok((self.sku_id(sku)?, *n)))
            .collect::<Result<Vec<_>, EngineError>>()?;
        let _permit = self.admit(1).await;
        let now_ms = self.now_ms();
        let router = self.router_for(&order);
        call_committed(router, |reply| RouterMsg::Reject {
            order,
            node,
            counts,
            now_ms,
            reply,
        })
        .await?
        .map_err(Into::into)
    }

    /// Sets a node online or offline. Offline re-routes every unshipped
    /// allocation it had; returns how many orders were re-routed.
    pub async fn set_node_online(&self, node: &str, online: bool) -> Result<usize, EngineError> {
        let node = self.node_idx(node)?;
        let _permit = self.admit(1).await;
        let now_ms = self.now_ms();
        let txn = Txn {
            nodes: vec![(node, NodeOp::Online(online))],
            ..Txn::default()
        };
        let (reply, answer) = tokio::sync::oneshot::channel();
        let actor = self.inner.participants.nodes[node as usize].clone();
        self.inner
            .sequencer
            .append(txn, move |_| {
                let _ = actor.cast(NodeMsg::Ops(vec![NodeOp::Online(online)], Some(reply)));
            })
            .await;
        let orders = answer.await.map_err(|_| EngineError::Unavailable)?;
        let count = orders.len();
        let routers = &self.inner.routers;
        for result in join_all(
            self.by_router(orders, |o| *o)
                .into_iter()
                .map(|(r, orders)| {
                    call_committed(&routers[r], move |reply| RouterMsg::NodeOffline {
                        orders,
                        node,
                        now_ms,
                        reply,
                    })
                }),
        )
        .await
        {
            result?;
        }
        Ok(count)
    }

    /// Loads a whole starting stock (a config's, any size) in batches of
    /// `MAX_STOCK_UPDATES_PER_BATCH`.
    pub async fn load_stock(&self, updates: &[StockUpdate]) -> Result<(), EngineError> {
        for chunk in updates.chunks(MAX_STOCK_UPDATES_PER_BATCH) {
            self.update_stock(chunk).await?;
        }
        Ok(())
    }

    /// Applies a WMS/ERP feed: sets and adjustments, journaled as one
    /// record, then applied per shard. Unknown nodes refuse the whole batch
    /// before anything changes; new SKUs are added to the catalog.
    pub async fn update_stock(&self, updates: &[StockUpdate]) -> Result<StockReport, EngineError> {
        if updates.len() > MAX_STOCK_UPDATES_PER_BATCH {
            return Err(EngineError::BatchTooLarge(updates.len()));
        }
        check_stock_quantities(updates)?;
        // Every node is resolved before any SKU is interned, so that an
        // unknown node refuses the batch with nothing changed.
        let nodes = updates
            .iter()
            .map(|update| {
                let (StockUpdate::Set { node, .. } | StockUpdate::Adjust { node, .. }) = update;
                self.node_idx(node)
            })
            .collect::<Result<Vec<NodeIdx>, EngineError>>()?;
        let _permit = self.admit(1).await;
        let shards = self.inner.participants.shards.clone();
        let shard_count = shards.len() as u32;
        let mut txn = Txn::default();
        let mut by_shard: Vec<Vec<StockOp>> = vec![Vec::new(); shards.len()];
        let mut answers = Vec::new();
        // Before the feed lock, which is not held across a wait.
        let place = self.inner.sequencer.reserve().await;
        {
            let _feed = self.inner.feed_lock.lock().expect("feed lock");
            let index = &self.inner.index;
            let intern = |name: &str, txn: &mut Txn| -> Result<SkuId, EngineError> {
                if let Some(id) = index.lookup(name) {
                    return Ok(id);
                }
                let id = index.intern(name)?;
                txn.skus.push((id, name.to_string()));
                Ok(id)
            };
            for (update, node) in updates.iter().zip(nodes) {
                let op = match update {
                    StockUpdate::Set {
                        sku,
                        on_hand,
                        safety_stock,
                        ..
                    } => StockOp::Set {
                        sku: intern(sku, &mut txn)?,
                        node,
                        on_hand: *on_hand,
                        safety_stock: *safety_stock,
                    },
                    StockUpdate::Adjust { sku, delta, .. } => StockOp::Adjust {
                        sku: intern(sku, &mut txn)?,
                        node,
                        delta: *delta,
                    },
                };
                let shard = StockShard::shard_of(op.sku().expect("a cell op"), shard_count);
                txn.stock.push((shard, op.clone()));
                by_shard[shard as usize].push(op);
            }
            let mut sends = Vec::new();
            for (shard, ops) in by_shard.into_iter().enumerate() {
                if !ops.is_empty() {
                    let (reply, answer) = tokio::sync::oneshot::channel();
                    answers.push(answer);
                    sends.push((shard, ops, reply));
                }
            }
            self.inner.sequencer.append_in(place, txn, move |_| {
                for (shard, ops, reply) in sends {
                    let _ = shards[shard].cast(ShardMsg::Apply(ops, Some(reply)));
                }
            });
        }
        let mut report = StockReport {
            applied: updates.len(),
            ..StockReport::default()
        };
        for answer in answers {
            let (bumped, errors) = answer.await.map_err(|_| EngineError::Unavailable)?;
            report.bumped.extend(bumped);
            report.applied -= errors.len();
            report.errors.extend(errors);
        }
        self.dispatch_bumps(report.bumped.clone(), self.now_ms())
            .await?;
        Ok(report)
    }

    /// `items` grouped by the router that owns each one's order.
    fn by_router<T>(&self, items: Vec<T>, order: impl Fn(&T) -> u64) -> FxHashMap<usize, Vec<T>> {
        let routers = self.inner.routers.len();
        let mut grouped: FxHashMap<usize, Vec<T>> = FxHashMap::default();
        for item in items {
            grouped
                .entry(router_of_order(order(&item), routers))
                .or_default()
                .push(item);
        }
        grouped
    }

    /// Sends bumps to their routers and waits until they are placed again.
    async fn dispatch_bumps(&self, bumps: Vec<Bumped>, now_ms: u64) -> Result<(), EngineError> {
        let routers = &self.inner.routers;
        let grouped = self.by_router(bumps, |b| b.order);
        for result in join_all(grouped.into_iter().map(|(r, bumps)| {
            call_committed(&routers[r], move |reply| {
                RouterMsg::Bumped(bumps, now_ms, Some(reply))
            })
        }))
        .await
        {
            result?;
        }
        Ok(())
    }

    /// Sends bumps to their routers without waiting.
    fn forward_bumps(&self, bumps: Vec<Bumped>, now_ms: u64) {
        for (r, bumps) in self.by_router(bumps, |b| b.order) {
            let _ = self.inner.routers[r].cast(RouterMsg::Bumped(bumps, now_ms, None));
        }
    }

    /// ATP of a SKU at every node that has some, from the index.
    pub fn availability(&self, sku: &str) -> Result<Vec<NodeStock>, EngineError> {
        let sku = self.sku_id(sku)?;
        let index = &self.inner.index;
        Ok((0..index.node_count() as NodeIdx)
            .map(|node| NodeStock {
                node,
                atp: index.atp(sku, node),
                distance_km: None,
            })
            .filter(|s| s.atp > 0)
            .collect())
    }

    /// The nearest online nodes to a point with at least `min_qty` of a SKU
    /// available (endless aisle), at most `count` (capped at MAX_NEAREST_NODES).
    pub fn nearest(
        &self,
        sku: &str,
        point: GeoPoint,
        min_qty: u32,
        count: usize,
    ) -> Result<Vec<NodeStock>, EngineError> {
        let network = self.network_arc();
        let mut found: Vec<NodeStock> = self
            .availability(sku)?
            .into_iter()
            .filter(|s| s.atp >= min_qty.max(1) && self.inner.index.node_online(s.node))
            .map(|s| NodeStock {
                distance_km: Some(point.distance_km(&network.node(s.node).location)),
                ..s
            })
            .collect();
        found.sort_by(|a, b| {
            a.distance_km
                .partial_cmp(&b.distance_km)
                .unwrap_or(std::cmp::Ordering::Equal)
                .then(a.node.cmp(&b.node))
        });
        found.truncate(count.min(MAX_NEAREST_NODES));
        Ok(found)
    }

    /// The exact cell, asked of its shard.
    pub async fn cell(&self, sku: &str, node: &str) -> Result<Cell, EngineError> {
        let (sku, node) = (self.sku_id(sku)?, self.node_idx(node)?);
        let shards = &self.inner.participants.shards;
        let shard = StockShard::shard_of(sku, shards.len() as u32);
        Ok(call(&shards[shard as usize], |reply| {
            ShardMsg::Cell(sku, node, reply)
        })
        .await)
    }

    /// A node's events from `from_cursor` (0: the oldest kept), then live.
    pub async fn subscribe(
        &self,
        node: &str,
        from_cursor: u64,
    ) -> Result<Subscription, EngineError> {
        let node = self.node_idx(node)?;
        let nodes = &self.inner.participants.nodes;
        Ok(call(&nodes[node as usize], |reply| {
            NodeMsg::Subscribe(from_cursor, reply)
        })
        .await?)
    }

    /// (online, allocations used today, open orders) of a node.
    pub async fn node_stats(&self, node: &str) -> Result<(bool, u32, usize), EngineError> {
        let node = self.node_idx(node)?;
        Ok(call(
            &self.inner.participants.nodes[node as usize],
            NodeMsg::Stats,
        )
        .await)
    }

    /// Runs hold expiry now. The timer calls this; tests with a manual clock
    /// call it after moving the clock. Returns how many orders expired.
    pub async fn tick(&self) -> usize {
        let now_ms = self.now_ms();
        let expired = join_all(
            self.inner
                .routers
                .iter()
                .map(|r| call_committed(r, |reply| RouterMsg::Expire(now_ms, reply))),
        )
        .await;
        expired.into_iter().map(|e| e.unwrap_or(0)).sum()
    }

    /// Checks every shard and router invariant (O(state)); for tests and
    /// diagnostics. Waits for all earlier messages to be applied first.
    pub async fn check_invariants(&self) -> Result<(), String> {
        for shard in self.inner.participants.shards.iter() {
            call(shard, ShardMsg::Check).await?;
        }
        for router in &self.inner.routers {
            call(router, RouterMsg::Check).await?;
        }
        Ok(())
    }

    /// Whether every actor is alive; [`Health::failed`] waits for one not to be.
    pub fn health(&self) -> Arc<Health> {
        self.inner.health.clone()
    }

    /// Stops every actor. Requests after this panic in the caller.
    pub fn shutdown(&self) {
        for task in self.inner.tasks.lock().expect("tasks lock").drain(..) {
            task.abort();
        }
        for router in &self.inner.routers {
            router.stop();
        }
        for shard in self.inner.participants.shards.iter() {
            shard.stop();
        }
        for node in self.inner.participants.nodes.iter() {
            node.stop();
        }
        self.inner.watchdog.stop(None);
        // Whatever was queued is written; nothing after this is answered.
        if let Some(journal) = self.inner.sequencer.journal() {
            journal.close();
        }
    }
}

fn check_batch(orders: &[OrderRequest]) -> Result<(), EngineError> {
    if orders.len() > MAX_ORDERS_PER_BATCH {
        return Err(EngineError::BatchTooLarge(orders.len()));
    }
    Ok(())
}

/// Calls a router for a change that is answered only once journaled: no
/// answer means the journal failed.
async fn call_committed<M: ractor::Message, T: Send + 'static>(
    actor: &Mailbox<M>,
    build: impl FnOnce(ractor::RpcReplyPort<T>) -> M,
) -> Result<T, EngineError> {
    match actor.call(build, None).await {
        Ok(ractor::rpc::CallResult::Success(value)) => Ok(value),
        _ => Err(EngineError::Unavailable),
    }
}

/// Calls an actor that must answer: actors stop only at shutdown or when a
/// core invariant failed, and neither leaves anything sensible to do.
async fn call<M: ractor::Message, T: Send + 'static>(
    actor: &Mailbox<M>,
    build: impl FnOnce(ractor::RpcReplyPort<T>) -> M,
) -> T {
    match actor.call(build, None).await {
        Ok(ractor::rpc::CallResult::Success(value)) => value,
        _ => panic!("actor {:?} stopped; the engine cannot continue", actor.id()),
    }
}
