//! Starting an engine: the index, the sequencer, and every actor spawned on
//! the state it was given, supervised by the watchdog.

use std::sync::atomic::AtomicI64;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorRef};
use tokio::sync::{mpsc, Semaphore};

use super::clock::Clock;
use super::demand::{DemandBudget, SessionDemand};
use super::error::EngineError;
use super::feed::FeedActor;
use super::images::ImagePace;
use super::mailbox::Mailbox;
use super::node::{NodeActor, NodeMsg};
use super::participants::{ActorParticipants, JournaledParticipants};
use super::router::{RouterActor, RouterMsg, RouterState};
use super::sequencer::Sequencer;
use super::settings::EngineSettings;
use super::shard::{ShardActor, ShardMsg, ShardState};
use super::state::EngineState;
use super::watchdog::{Health, Watchdog};
use super::{Engine, Inner, BUMP_QUEUE_BATCHES};
use crate::core::capacity::NodeLedger;
use crate::core::network::Network;
use crate::core::router::RouterCore;
use crate::core::stock::{Bumped, StockShard};
use crate::telemetry::EngineMetrics;

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
        let EngineState {
            index,
            shards,
            ledgers,
            routers,
            feed,
        } = state;
        let sequencer = Arc::new(sequencer);
        let health = Health::new();
        if let Some(journal) = sequencer.storage() {
            // A storage fault fails the engine as an actor's panic does:
            // health turns 503 and the daemon stops.
            let failed = health.clone();
            journal.on_failure(Box::new(move |error| {
                failed.fail_storage(format!("storage failed: {error}"));
            }));
        }
        let watchdog = Actor::spawn(None, Watchdog, health.clone())
            .await
            .map_err(|e| EngineError::Spawn(e.to_string()))?
            .0;
        let supervisor = Supervisor {
            watchdog: &watchdog,
            health: &health,
        };
        let (bumps, bump_queue) = mpsc::channel::<Vec<Bumped>>(BUMP_QUEUE_BATCHES);
        let participants = ActorParticipants {
            shards: spawn_shards(shards, bumps, &supervisor).await?.into(),
            nodes: spawn_nodes(ledgers, &network, &supervisor).await?.into(),
            feed: {
                let depth = Arc::new(AtomicI64::new(0));
                let args = (feed, depth.clone());
                supervisor
                    .spawn(FeedActor, args, depth, "feed".into())
                    .await?
            },
        };
        let metrics = Arc::new(crate::telemetry::EngineMetrics::new(&network));
        let demand_budget = Arc::new(DemandBudget::new(settings.max_demand_orders_per_s));
        let routers = spawn_routers(
            routers,
            &participants,
            &sequencer,
            &metrics,
            &demand_budget,
            &supervisor,
        )
        .await?;
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
                listings: Semaphore::new(crate::limits::MAX_LISTINGS_IN_FLIGHT),
                tasks: std::sync::Mutex::new(Vec::new()),
                image_pace: ImagePace::default(),
                session_demand: SessionDemand::new(demand_budget),
                health,
                watchdog,
            }),
        };
        engine.start_tasks(bump_queue, settings.expiry_tick_ms);
        Ok(engine)
    }

    /// The engine's own tasks: the forwarder that hands reservations
    /// journaled ops took back (a count fell below them) to their routers,
    /// and the expiry ticker. Both hold the engine weakly and end with it.
    fn start_tasks(&self, mut bump_queue: mpsc::Receiver<Vec<Bumped>>, expiry_tick_ms: u64) {
        let mut tasks = self.inner.tasks.lock().expect("tasks lock");
        let weak = Arc::downgrade(&self.inner);
        tasks.push(tokio::spawn(async move {
            while let Some(bumped) = bump_queue.recv().await {
                let Some(inner) = weak.upgrade() else { break };
                let engine = Engine { inner };
                engine.forward_bumps(bumped, engine.now_ms());
            }
        }));
        if expiry_tick_ms > 0 {
            let weak = Arc::downgrade(&self.inner);
            let period = Duration::from_millis(expiry_tick_ms);
            tasks.push(tokio::spawn(async move {
                let mut interval = tokio::time::interval(period);
                interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    interval.tick().await;
                    let Some(inner) = weak.upgrade() else { break };
                    Engine { inner }.tick().await;
                }
            }));
        }
    }
}

/// Spawns actors linked to the watchdog, each named for the health report.
struct Supervisor<'a> {
    watchdog: &'a ActorRef<()>,
    health: &'a Health,
}

impl Supervisor<'_> {
    /// Spawns `actor` on `args`; `depth` is the count its mailbox keeps.
    async fn spawn<A: Actor>(
        &self,
        actor: A,
        args: A::Arguments,
        depth: Arc<AtomicI64>,
        name: String,
    ) -> Result<Mailbox<A::Msg>, EngineError> {
        let (actor, _) = Actor::spawn_linked(None, actor, args, self.watchdog.get_cell())
            .await
            .map_err(|e| EngineError::Spawn(e.to_string()))?;
        self.health.name(actor.get_id(), name);
        Ok(Mailbox::new(actor, depth))
    }
}

/// One actor per shard.
async fn spawn_shards(
    shards: Vec<StockShard>,
    bumps: mpsc::Sender<Vec<Bumped>>,
    supervisor: &Supervisor<'_>,
) -> Result<Vec<Mailbox<ShardMsg>>, EngineError> {
    let mut mailboxes = Vec::new();
    for shard in shards {
        let depth = Arc::new(AtomicI64::new(0));
        let state = ShardState {
            shard,
            bumps: bumps.clone(),
            depth: depth.clone(),
            imaging: None,
        };
        let name = format!("shard {}", mailboxes.len());
        mailboxes.push(supervisor.spawn(ShardActor, state, depth, name).await?);
    }
    Ok(mailboxes)
}

/// One actor per node slot (the network's nodes and the spare slots).
async fn spawn_nodes(
    ledgers: Vec<NodeLedger>,
    network: &Network,
    supervisor: &Supervisor<'_>,
) -> Result<Vec<Mailbox<NodeMsg>>, EngineError> {
    let mut mailboxes = Vec::new();
    for ledger in ledgers {
        let depth = Arc::new(AtomicI64::new(0));
        let name = match network.nodes.get(mailboxes.len()) {
            Some(node) => format!("node {}", node.id),
            None => format!("node slot {}", mailboxes.len()),
        };
        let args = (ledger, depth.clone());
        mailboxes.push(supervisor.spawn(NodeActor, args, depth, name).await?);
    }
    Ok(mailboxes)
}

/// One actor per router core, each placing through the shard and node
/// actors and committing through the shared sequencer.
async fn spawn_routers(
    cores: Vec<RouterCore>,
    participants: &ActorParticipants,
    sequencer: &Arc<Sequencer>,
    metrics: &Arc<EngineMetrics>,
    demand_budget: &Arc<DemandBudget>,
    supervisor: &Supervisor<'_>,
) -> Result<Vec<Mailbox<RouterMsg>>, EngineError> {
    let mut mailboxes = Vec::new();
    for mut core in cores {
        // Only a journal keeps demand.
        core.set_record_demand(sequencer.is_durable());
        let depth = Arc::new(AtomicI64::new(0));
        let state = RouterState {
            core,
            participants: JournaledParticipants::new(participants.clone()),
            sequencer: sequencer.clone(),
            depth: depth.clone(),
            metrics: metrics.clone(),
            imaging: 0,
            demand_lost: 0,
            demand_budget: demand_budget.clone(),
        };
        let name = format!("router {}", mailboxes.len());
        mailboxes.push(supervisor.spawn(RouterActor, state, depth, name).await?);
    }
    Ok(mailboxes)
}
