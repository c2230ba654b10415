//! Starting an engine: the index, the sequencer, and every actor spawned on
//! the state it was given, supervised by the watchdog.

use std::sync::Arc;
use std::time::Duration;

use ractor::Actor;
use tokio::sync::Semaphore;

use super::clock::Clock;
use super::error::EngineError;
use super::images::ImagePace;
use super::mailbox::Mailbox;
use super::node::NodeActor;
use super::participants::{ActorParticipants, JournaledParticipants};
use super::router::{RouterActor, RouterState};
use super::sequencer::Sequencer;
use super::settings::EngineSettings;
use super::shard::{ShardActor, ShardState};
use super::state::EngineState;
use super::watchdog::{Health, Watchdog};
use super::{Engine, Inner, BUMP_QUEUE_BATCHES};
use crate::core::network::Network;
use crate::core::stock::Bumped;

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
}
