//! The leader's engine hands its records to the driver here, as it hands
//! them to the journal on a single node: a bounded number of places, taken
//! before a record is built (async code waits for one without parking its
//! thread), so that queueing a record never blocks. The driver gathers
//! what is queued into entries, one per pass (the replicated group commit).

use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::journal::{Done, JournalError};

/// Records and barriers queued for the driver at most; `reserve` waits
/// while this many are (backpressure on the engine, as the journal's
/// `MAX_PENDING_APPENDS`).
pub const MAX_PENDING_PROPOSALS: usize = 65_536;

/// What the engine asks of the driver.
pub enum Proposal {
    /// A record for the log; `done` is told its LSN once its entry is
    /// committed in the term it was proposed in and applied in order.
    Record {
        kind: u8,
        payload: Vec<u8>,
        done: Done,
    },
    /// Nothing written; `done` runs once everything proposed before it is
    /// applied and this node is confirmed to lead (a read-index round).
    Barrier(Done),
}

/// A place in the driver's queue (see [`Proposer::reserve`]), held until
/// the proposal's `done` has run.
pub struct ProposalSlot {
    _permit: OwnedSemaphorePermit,
}

/// The engine's side of the driver's proposal queue. Cheap to clone: each
/// leader term's engine gets a clone.
#[derive(Clone)]
pub struct Proposer {
    queue: Sender<Proposal>,
    slots: Arc<Semaphore>,
}

impl Proposer {
    /// A proposer and the queue the driver reads.
    pub fn channel() -> (Proposer, Receiver<Proposal>) {
        // As many as there are places: a send with a place never waits.
        let (queue, receiver) = crossbeam_channel::bounded(MAX_PENDING_PROPOSALS);
        let slots = Arc::new(Semaphore::new(MAX_PENDING_PROPOSALS));
        (Proposer { queue, slots }, receiver)
    }

    /// Waits, without blocking the thread, for a place in the queue.
    pub async fn reserve(&self) -> ProposalSlot {
        let permit = self.slots.clone().acquire_owned().await;
        let _permit = permit.expect("proposal slots are never closed");
        ProposalSlot { _permit }
    }

    /// A place if one is free now, never waiting.
    pub fn try_reserve(&self) -> Option<ProposalSlot> {
        let _permit = self.slots.clone().try_acquire_owned().ok()?;
        Some(ProposalSlot { _permit })
    }

    /// Queues a record in `slot`, at once. A driver that has stopped
    /// drops `done`, and with it the caller's reply port: an error,
    /// never a false yes.
    pub fn propose_in(&self, slot: ProposalSlot, kind: u8, payload: Vec<u8>, done: Done) {
        let done = freeing(slot, done);
        let _ = self.queue.send(Proposal::Record {
            kind,
            payload,
            done,
        });
    }

    /// Queues a barrier in `slot`, at once.
    pub fn barrier_in(&self, slot: ProposalSlot, done: Done) {
        let _ = self.queue.send(Proposal::Barrier(freeing(slot, done)));
    }
}

/// `done`, giving its place back once it has run (or is dropped).
fn freeing(slot: ProposalSlot, done: Done) -> Done {
    Box::new(move |result: Result<u64, JournalError>| {
        done(result);
        drop(slot);
    })
}
