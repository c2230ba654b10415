//! A queue to an actor that counts what waits in it: ractor's mailboxes
//! are unbounded and say nothing of their depth.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use ractor::{ActorRef, RpcReplyPort};

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
pub(super) fn count_taken(depth: &AtomicI64) {
    depth.fetch_sub(1, Ordering::Relaxed);
}
