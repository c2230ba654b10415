//! The supervisor of every engine actor, and the engine's health: failed
//! when an actor panics or storage fails. Its state is gone with an actor
//! that panics (a shard's counts, a node's ledger, a router's open
//! orders), so nothing restarts it in place: the watchdog names it, marks
//! the engine failed, and the daemon stops without a final snapshot; the
//! journal holds every answered change and recovery rebuilds from it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::sync::watch;

/// Whether every actor is alive, and if not, which one failed and why.
pub struct Health {
    failure: watch::Sender<Option<String>>,
    /// What an operator calls each actor ("shard 2", "node WH-DE-HAM").
    names: Mutex<HashMap<ActorId, String>>,
}

impl Health {
    pub fn new() -> Arc<Health> {
        Arc::new(Health {
            failure: watch::channel(None).0,
            names: Mutex::new(HashMap::new()),
        })
    }

    /// Names a supervised actor for the failure message.
    pub fn name(&self, id: ActorId, name: String) {
        self.names
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, name);
    }

    /// The first failure, if an actor has failed.
    pub fn failure(&self) -> Option<String> {
        self.failure.borrow().clone()
    }

    /// Whether an actor or the storage has failed (no copy of the cause).
    pub fn is_failed(&self) -> bool {
        self.failure.borrow().is_some()
    }

    /// Resolves when an actor fails, with the failure.
    pub async fn failed(&self) -> String {
        let mut seen = self.failure.subscribe();
        let failure = seen.wait_for(Option::is_some).await;
        // The sender lives in `self`, so the channel cannot close under us.
        failure.map_or_else(|_| String::new(), |f| f.clone().unwrap_or_default())
    }

    /// Marks the engine failed for a storage fault (the journal or a
    /// snapshot could not be written): nothing more is durable, so the
    /// daemon answers `Unavailable`, health turns 503 and it stops. The
    /// journal logged the cause with its path.
    pub fn fail_storage(&self, failure: String) {
        self.failure.send_if_modified(|current| {
            current.is_none() && {
                *current = Some(failure);
                true
            }
        });
    }

    fn fail(&self, id: ActorId, why: String) {
        let name = self
            .names
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .cloned()
            .unwrap_or_else(|| format!("actor {id}"));
        let failure = format!("{name} failed: {why}");
        // Marked before it is logged: whoever reads the log line then
        // finds /healthz failing. The first failure is the cause; later
        // ones follow from it.
        self.failure.send_if_modified(|current| {
            current.is_none() && {
                *current = Some(failure.clone());
                true
            }
        });
        tracing::error!(
            "{failure}; the daemon stops (its state is rebuilt from the journal at the next start)"
        );
    }
}

pub struct Watchdog;

impl Actor for Watchdog {
    type Msg = ();
    type State = Arc<Health>;
    type Arguments = Arc<Health>;

    async fn pre_start(
        &self,
        _: ActorRef<()>,
        health: Arc<Health>,
    ) -> Result<Arc<Health>, ActorProcessingErr> {
        Ok(health)
    }

    /// A failure is recorded; an actor stopped by the engine's shutdown is
    /// not one. Never stops itself, unlike ractor's default.
    async fn handle_supervisor_evt(
        &self,
        _: ActorRef<()>,
        event: SupervisionEvent,
        health: &mut Arc<Health>,
    ) -> Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ActorFailed(who, why) = event {
            health.fail(who.get_id(), why.to_string());
        }
        Ok(())
    }
}
