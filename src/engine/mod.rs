//! The engine: spawns the actors and is the handle everything else (the
//! daemon, the QUIC ingress, tests, benches) drives. It translates names to
//! indices, groups work by router and shard, and bounds what is in flight.

mod actors;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::future::join_all;
use ractor::{Actor, ActorRef};
use rustc_hash::FxHashMap;
use tokio::sync::Semaphore;

use actors::{
    ActorParticipants, NodeActor, NodeMsg, RouterActor, RouterMsg, RouterState, ShardActor,
    ShardMsg,
};
pub use actors::{StockChange, Subscription, SUBSCRIBER_QUEUE_EVENTS};

use crate::core::capacity::NodeLedger;
use crate::core::events::CursorOutOfRange;
use crate::core::geo::GeoPoint;
use crate::core::index::{AvailabilityIndex, CatalogFull};
use crate::core::model::{Decision, NodeIdx, OrderRequest, SkuId};
use crate::core::network::Network;
use crate::core::router::{
    router_of_key, router_of_order, OpError, OrderRecord, OrderRef, RouterCore, MAX_ROUTERS,
};
use crate::core::stock::{Bumped, Cell, StockError, StockShard};
use crate::limits::{MAX_NEAREST_NODES, MAX_ORDERS_PER_BATCH, MAX_STOCK_UPDATES_PER_BATCH};

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
}

impl Default for EngineSettings {
    fn default() -> EngineSettings {
        EngineSettings {
            shards: 4,
            routers: 4,
            max_skus: 1 << 18,
            max_inflight: 65_536,
            expiry_tick_ms: 100,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("could not spawn an actor: {0}")]
    Spawn(String),
    #[error("routers must be 1..={MAX_ROUTERS}")]
    Routers,
    #[error("the engine is overloaded; retry later")]
    Overloaded,
    #[error("batch of {0} exceeds the limit")]
    BatchTooLarge(usize),
    #[error("unknown node {0:?}")]
    UnknownNode(String),
    #[error("unknown sku {0:?}")]
    UnknownSku(String),
    #[error(transparent)]
    CatalogFull(#[from] CatalogFull),
    #[error(transparent)]
    Order(#[from] OpError),
    #[error(transparent)]
    Cursor(#[from] CursorOutOfRange),
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
    network: Arc<Network>,
    index: Arc<AvailabilityIndex>,
    routers: Vec<ActorRef<RouterMsg>>,
    participants: ActorParticipants,
    clock: Arc<dyn Clock>,
    admission: Arc<Semaphore>,
    max_inflight: u32,
    ticker: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// Cheap to clone; every clone drives the same actors.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl Engine {
    /// Spawns every actor. The network's nodes start with the online flag
    /// from the config and no stock; load stock with [`Engine::update_stock`].
    pub async fn start(
        settings: &EngineSettings,
        network: Network,
        clock: Arc<dyn Clock>,
    ) -> Result<Engine, EngineError> {
        if settings.routers == 0 || settings.routers as usize > MAX_ROUTERS {
            return Err(EngineError::Routers);
        }
        let network = Arc::new(network);
        let index = Arc::new(AvailabilityIndex::new(
            network.nodes.len(),
            settings.max_skus,
        ));
        let now_ms = clock.now_ms();
        let spawn_error = |e: ractor::SpawnErr| EngineError::Spawn(e.to_string());
        let mut shards = Vec::new();
        for s in 0..settings.shards.max(1) {
            let shard = StockShard::new(s, settings.shards.max(1), index.clone());
            shards.push(
                Actor::spawn(None, ShardActor, shard)
                    .await
                    .map_err(spawn_error)?
                    .0,
            );
        }
        let mut nodes = Vec::new();
        for (i, node) in network.nodes.iter().enumerate() {
            let ledger = NodeLedger::new(
                i as NodeIdx,
                node.daily_capacity,
                node.online,
                index.clone(),
                now_ms,
            );
            nodes.push(
                Actor::spawn(None, NodeActor, ledger)
                    .await
                    .map_err(spawn_error)?
                    .0,
            );
        }
        let participants = ActorParticipants {
            shards: shards.into(),
            nodes: nodes.into(),
        };
        let mut routers = Vec::new();
        for r in 0..settings.routers as usize {
            let core = RouterCore::new(r, network.clone(), index.clone(), settings.shards.max(1));
            let state = RouterState {
                core,
                participants: participants.clone(),
            };
            routers.push(
                Actor::spawn(None, RouterActor, state)
                    .await
                    .map_err(spawn_error)?
                    .0,
            );
        }
        let engine = Engine {
            inner: Arc::new(Inner {
                network,
                index,
                routers,
                participants,
                clock,
                admission: Arc::new(Semaphore::new(settings.max_inflight as usize)),
                max_inflight: settings.max_inflight,
                ticker: std::sync::Mutex::new(None),
            }),
        };
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
            *engine.inner.ticker.lock().expect("ticker lock") = Some(ticker);
        }
        Ok(engine)
    }

    pub fn network(&self) -> &Network {
        &self.inner.network
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
            .node_idx(id)
            .ok_or_else(|| EngineError::UnknownNode(id.to_string()))
    }

    fn sku_id(&self, name: &str) -> Result<SkuId, EngineError> {
        self.inner
            .index
            .lookup(name)
            .ok_or_else(|| EngineError::UnknownSku(name.to_string()))
    }

    fn router_for(&self, order: &OrderRef) -> &ActorRef<RouterMsg> {
        let routers = &self.inner.routers;
        match order {
            OrderRef::Id(id) => &routers[router_of_order(*id) % routers.len()],
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
    pub async fn submit(&self, order: OrderRequest) -> Decision {
        self.submit_batch(vec![order])
            .await
            .map(|mut d| d.remove(0))
            .expect("a batch of one fits")
    }

    /// Routes many orders at once: one message per router, one hold message
    /// per shard and node touched. Waits while the engine is full.
    pub async fn submit_batch(
        &self,
        orders: Vec<OrderRequest>,
    ) -> Result<Vec<Decision>, EngineError> {
        check_batch(&orders)?;
        let _permit = self.admit(orders.len()).await;
        Ok(self.route(orders).await)
    }

    /// Like [`Engine::submit_batch`], but answers `Overloaded` at once
    /// instead of waiting when too much is in flight.
    pub async fn try_submit_batch(
        &self,
        orders: Vec<OrderRequest>,
    ) -> Result<Vec<Decision>, EngineError> {
        check_batch(&orders)?;
        let count = orders.len().min(self.inner.max_inflight as usize) as u32;
        let _permit = self
            .inner
            .admission
            .try_acquire_many(count)
            .map_err(|_| EngineError::Overloaded)?;
        Ok(self.route(orders).await)
    }

    async fn route(&self, orders: Vec<OrderRequest>) -> Vec<Decision> {
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
                let decisions = call(&routers[r], |reply| {
                    RouterMsg::Submit(orders, now_ms, reply)
                })
                .await;
                (slots, decisions)
            });
        let mut answers: Vec<Option<Decision>> = vec![None; total];
        for (slots, decisions) in join_all(calls).await {
            for (slot, decision) in slots.into_iter().zip(decisions) {
                answers[slot] = Some(decision);
            }
        }
        answers
            .into_iter()
            .map(|d| d.expect("every order answered"))
            .collect()
    }

    pub async fn get(&self, order: OrderRef) -> Option<OrderRecord> {
        let router = self.router_for(&order);
        call(router, |reply| RouterMsg::Get(order, reply)).await
    }

    pub async fn confirm(&self, order: OrderRef) -> Result<OrderRecord, EngineError> {
        let _permit = self.admit(1).await;
        let router = self.router_for(&order);
        Ok(call(router, |reply| RouterMsg::Confirm(order, reply)).await?)
    }

    pub async fn cancel(&self, order: OrderRef) -> Result<OrderRecord, EngineError> {
        let _permit = self.admit(1).await;
        let router = self.router_for(&order);
        Ok(call(router, |reply| RouterMsg::Cancel(order, reply)).await?)
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
        Ok(call(router, |reply| RouterMsg::Ship {
            order,
            node,
            sku,
            qty,
            reply,
        })
        .await?)
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
        Ok(call(router, |reply| RouterMsg::Return {
            order,
            node,
            sku,
            qty,
            reply,
        })
        .await?)
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
        let (record, bumped) = call(router, |reply| RouterMsg::Reject {
            order,
            node,
            counts,
            now_ms,
            reply,
        })
        .await?;
        self.dispatch_bumps(bumped, now_ms).await;
        Ok(record)
    }

    /// Sets a node online or offline. Offline re-routes every unshipped
    /// allocation it had; returns how many orders were re-routed.
    pub async fn set_node_online(&self, node: &str, online: bool) -> Result<usize, EngineError> {
        let node = self.node_idx(node)?;
        let _permit = self.admit(1).await;
        let now_ms = self.now_ms();
        let orders = call(&self.inner.participants.nodes[node as usize], |reply| {
            NodeMsg::SetOnline(online, reply)
        })
        .await;
        let count = orders.len();
        let routers = &self.inner.routers;
        let mut by_router: FxHashMap<usize, Vec<u64>> = FxHashMap::default();
        for order in orders {
            by_router
                .entry(router_of_order(order) % routers.len())
                .or_default()
                .push(order);
        }
        join_all(by_router.into_iter().map(|(r, orders)| {
            call(&routers[r], move |reply| RouterMsg::NodeOffline {
                orders,
                node,
                now_ms,
                reply,
            })
        }))
        .await;
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

    /// Applies a WMS/ERP feed: sets and adjustments, grouped per shard.
    /// Unknown nodes refuse the whole batch before anything changes; new
    /// SKUs are added to the catalog.
    pub async fn update_stock(&self, updates: &[StockUpdate]) -> Result<StockReport, EngineError> {
        if updates.len() > MAX_STOCK_UPDATES_PER_BATCH {
            return Err(EngineError::BatchTooLarge(updates.len()));
        }
        // Every node is resolved before any SKU is interned, so that an
        // unknown node refuses the batch with nothing changed.
        let nodes = updates
            .iter()
            .map(|update| {
                let (StockUpdate::Set { node, .. } | StockUpdate::Adjust { node, .. }) = update;
                self.node_idx(node)
            })
            .collect::<Result<Vec<NodeIdx>, EngineError>>()?;
        let shard_count = self.inner.participants.shards.len() as u32;
        let mut by_shard: FxHashMap<u32, Vec<StockChange>> = FxHashMap::default();
        for (update, node) in updates.iter().zip(nodes) {
            let change = match update {
                StockUpdate::Set {
                    sku,
                    on_hand,
                    safety_stock,
                    ..
                } => StockChange::Set {
                    sku: self.inner.index.intern(sku)?,
                    node,
                    on_hand: *on_hand,
                    safety_stock: *safety_stock,
                },
                StockUpdate::Adjust { sku, delta, .. } => StockChange::Adjust {
                    sku: self.inner.index.intern(sku)?,
                    node,
                    delta: *delta,
                },
            };
            let sku = match change {
                StockChange::Set { sku, .. } | StockChange::Adjust { sku, .. } => sku,
            };
            by_shard
                .entry(StockShard::shard_of(sku, shard_count))
                .or_default()
                .push(change);
        }
        let _permit = self.admit(1).await;
        let shards = &self.inner.participants.shards;
        let replies = join_all(by_shard.into_iter().map(|(s, changes)| {
            call(&shards[s as usize], move |reply| {
                ShardMsg::Update(changes, reply)
            })
        }))
        .await;
        let mut report = StockReport {
            applied: updates.len(),
            ..StockReport::default()
        };
        for (bumped, errors) in replies {
            report.bumped.extend(bumped);
            report.applied -= errors.len();
            report.errors.extend(errors);
        }
        self.dispatch_bumps(report.bumped.clone(), self.now_ms())
            .await;
        Ok(report)
    }

    async fn dispatch_bumps(&self, bumps: Vec<Bumped>, now_ms: u64) {
        let routers = &self.inner.routers;
        let mut by_router: FxHashMap<usize, Vec<Bumped>> = FxHashMap::default();
        for bump in bumps {
            by_router
                .entry(router_of_order(bump.order) % routers.len())
                .or_default()
                .push(bump);
        }
        join_all(by_router.into_iter().map(|(r, bumps)| {
            call(&routers[r], move |reply| {
                RouterMsg::Bumped(bumps, now_ms, reply)
            })
        }))
        .await;
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
        let mut found: Vec<NodeStock> = self
            .availability(sku)?
            .into_iter()
            .filter(|s| s.atp >= min_qty.max(1) && self.inner.index.node_online(s.node))
            .map(|s| NodeStock {
                distance_km: Some(point.distance_km(&self.inner.network.node(s.node).location)),
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
                .map(|r| call(r, |reply| RouterMsg::Expire(now_ms, reply))),
        )
        .await;
        expired.into_iter().sum()
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

    /// Stops every actor. Requests after this panic in the caller.
    pub fn shutdown(&self) {
        if let Some(ticker) = self.inner.ticker.lock().expect("ticker lock").take() {
            ticker.abort();
        }
        for router in &self.inner.routers {
            router.stop(None);
        }
        for shard in self.inner.participants.shards.iter() {
            shard.stop(None);
        }
        for node in self.inner.participants.nodes.iter() {
            node.stop(None);
        }
    }
}

fn check_batch(orders: &[OrderRequest]) -> Result<(), EngineError> {
    if orders.len() > MAX_ORDERS_PER_BATCH {
        return Err(EngineError::BatchTooLarge(orders.len()));
    }
    Ok(())
}

/// Calls an actor that must answer: actors stop only at shutdown or when a
/// core invariant failed, and neither leaves anything sensible to do.
async fn call<M: ractor::Message, T: Send + 'static>(
    actor: &ActorRef<M>,
    build: impl FnOnce(ractor::RpcReplyPort<T>) -> M,
) -> T {
    match actor.call(build, None).await {
        Ok(ractor::rpc::CallResult::Success(value)) => value,
        _ => panic!(
            "actor {:?} stopped; the engine cannot continue",
            actor.get_id()
        ),
    }
}
