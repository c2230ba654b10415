//! The engine: spawns the actors and is the handle everything else (the
//! daemon, the QUIC ingress, tests, benches) drives. It translates names to
//! indices, groups work by router and shard, and bounds what is in flight.
//!
//! - The handle's calls, by what they act on: `orders.rs`, `stock.rs`,
//!   `nodes.rs`, `snapshot.rs`; this file keeps the handle itself and its
//!   upkeep (reload, repair, tick, stop).
//! - The actors, one file each with its messages: `router.rs`, `shard.rs`,
//!   `node.rs`, `feed.rs` (the channels' status logs); `participants.rs` is how a router's placement reaches them,
//!   `mailbox.rs` the queue that counts its depth, `watchdog.rs` their
//!   supervisor, [`sequencer`] the journal's single writer in front of them.
//! - Their start: `spawn.rs` on an [`EngineState`] (`state.rs`), with
//!   `settings.rs`, a `clock.rs`, and `images.rs` for snapshots.

mod clock;
mod demand;
mod error;
mod feed;
mod images;
mod mailbox;
mod node;
mod nodes;
mod orders;
mod participants;
mod router;
pub mod sequencer;
mod settings;
mod shard;
mod snapshot;
mod spawn;
mod state;
mod stock;
mod watchdog;

use std::sync::Arc;

use futures::future::join_all;
use tokio::sync::Semaphore;

use self::images::ImagePace;
use self::mailbox::Mailbox;
use self::participants::ActorParticipants;
use self::router::RouterMsg;
use self::sequencer::{Done, Sequencer, Txn};
use self::shard::ShardMsg;
use crate::core::error::InvariantError;
use crate::core::index::AvailabilityIndex;
use crate::core::model::{NodeIdx, SkuId};
use crate::core::network::Network;
use crate::core::ops::StockOp;
use crate::core::stock::{Bumped, StockShard};

pub use clock::{Clock, ManualClock, SystemClock};
pub use error::EngineError;
pub use images::{book_channel, BookPart, BookParts, BookSink, Image, Imaged};
pub use node::{NodeStats, Subscription, SUBSCRIBER_QUEUE_EVENTS};
pub use orders::OrderQuery;
pub use router::ORDERS_PER_IMAGE_STEP;
pub use settings::EngineSettings;
pub use state::EngineState;
pub use stock::{NodeStock, StockReport, StockUpdate};
pub use watchdog::Health;

/// Messages waiting in each actor's mailbox, by actor index.
#[derive(Clone, Debug, Default)]
pub struct QueueDepths {
    pub routers: Vec<i64>,
    pub shards: Vec<i64>,
    pub nodes: Vec<i64>,
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
    /// ListOrders in process (`MAX_LISTINGS_IN_FLIGHT`), from any ingress.
    listings: Semaphore,
    tasks: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
    image_pace: ImagePace,
    /// Demand of the orders sessions answered sold out themselves.
    session_demand: demand::SessionDemand,
    health: Arc<Health>,
    /// Supervises every actor above; stopped last.
    watchdog: ractor::ActorRef<()>,
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
    /// Whether changes are journaled (a data directory) or memory only.
    pub fn is_durable(&self) -> bool {
        self.inner.sequencer.is_durable()
    }

    /// Orders admitted at once (`engine.max_inflight`).
    pub fn max_inflight(&self) -> usize {
        self.inner.max_inflight as usize
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
        let weak = Arc::downgrade(&self.inner);
        let done: Done = Box::new(move |result| {
            let Ok(lsn) = result else { return };
            // The sessions' network first: a session answering from the
            // index never plans on an older policy than the routers.
            if let Some(inner) = weak.upgrade() {
                inner.network.store(next.clone());
            }
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
        metrics::gauge!(crate::telemetry::POLICY_LSN).set(lsn as f64);
        Ok(lsn)
    }

    pub fn sequencer(&self) -> &Sequencer {
        &self.inner.sequencer
    }

    pub fn router_count(&self) -> usize {
        self.inner.routers.len()
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

    /// Runs hold expiry now. The timer calls this; tests with a manual clock
    /// call it after moving the clock. Returns how many orders expired.
    pub async fn tick(&self) -> usize {
        let now_ms = self.now_ms();
        let expired = join_all(
            self.inner
                .routers
                .iter()
                .map(|r| call_committed(r, |reply| RouterMsg::Expire { now_ms, reply })),
        )
        .await;
        self.inner
            .session_demand
            .flush(&self.inner.sequencer, &self.inner.metrics);
        let occupancy = self.inner.index.keys().occupancy();
        metrics::gauge!(crate::telemetry::KEY_FILTER_OCCUPANCY).set(occupancy);
        expired.into_iter().map(|e| e.unwrap_or(0)).sum()
    }

    /// Journals the rejected orders' demand the routers gathered (at a
    /// stop; the expiry tick does it otherwise).
    pub async fn flush_demand(&self) {
        for router in &self.inner.routers {
            let _ = call_committed(router, RouterMsg::FlushDemand).await;
        }
        self.inner
            .session_demand
            .flush(&self.inner.sequencer, &self.inner.metrics);
    }

    /// Checks every shard and router invariant (O(state)); for tests and
    /// diagnostics. Waits for all earlier messages to be applied first.
    pub async fn check_invariants(&self) -> Result<(), InvariantError> {
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
        self.inner.participants.feed.stop();
        self.inner.watchdog.stop(None);
        // Whatever was queued is written; nothing after this is answered.
        if let Some(journal) = self.inner.sequencer.journal() {
            journal.close();
        }
    }
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
