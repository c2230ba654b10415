//! Holds, then journal, then apply: every change to journaled state leaves
//! an actor as a [`Txn`], which the sequencer gives an LSN and makes durable
//! before the ops in it reach the shards and nodes, in LSN order, and before
//! the caller is answered.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::journal::Journal;
use crate::replica::proposer::{ProposalSlot, Proposer};

pub use crate::journal::Done;
pub use crate::schema::txn::{
    ArchivedTxn, SharedSeen, Txn, KIND_DEMAND, KIND_DEMAND_LOST, KIND_MARKER, KIND_POLICY, KIND_TXN,
};

/// Where changes are sequenced: a journal on disk, the replicated log of
/// a cluster's leader, or (for tests and benches of the engine alone) a
/// counter that makes nothing durable.
pub enum Sequencer {
    Memory(AtomicU64),
    Journal(Journal),
    /// A replica that leads: a record is durable once its entry is
    /// committed (on a majority's disk) in this leader's term. `storage`
    /// is the replica's own journal, for its fault only: the replica
    /// writes it, and the engine never closes it.
    Replicated {
        proposer: Proposer,
        storage: std::sync::Arc<Journal>,
    },
}

/// A place in the sequence's queue (nothing in memory).
pub struct Place(PlaceIn);

enum PlaceIn {
    Memory,
    Journal(crate::journal::Slot),
    Replicated(ProposalSlot),
}

impl Sequencer {
    pub fn memory() -> Sequencer {
        Sequencer::Memory(AtomicU64::new(1))
    }

    pub fn is_durable(&self) -> bool {
        !matches!(self, Sequencer::Memory(_))
    }

    /// A place in the journal's (or driver's) queue, waited for without
    /// parking the thread when it is full; in memory, at once.
    pub async fn reserve(&self) -> Place {
        match self {
            Sequencer::Memory(_) => Place(PlaceIn::Memory),
            Sequencer::Journal(journal) => Place(PlaceIn::Journal(journal.reserve().await)),
            Sequencer::Replicated { proposer, .. } => {
                Place(PlaceIn::Replicated(proposer.reserve().await))
            }
        }
    }

    /// Sequences `txn` (encoded only when journaled); `apply` gets it back
    /// once it is durable, in LSN order. In memory that is at once, on the
    /// caller's thread. If the journal fails, `apply` never runs.
    pub async fn append(&self, txn: Txn, apply: impl FnOnce(Txn) + Send + 'static) {
        let place = self.reserve().await;
        self.append_in(place, txn, apply);
    }

    /// [`Sequencer::append`] in a place reserved before; never waits.
    pub fn append_in(&self, place: Place, txn: Txn, apply: impl FnOnce(Txn) + Send + 'static) {
        let payload = if self.is_durable() {
            txn.encode()
        } else {
            Vec::new()
        };
        let done: Done = Box::new(move |result| {
            if result.is_ok() {
                apply(txn);
            }
        });
        self.append_raw_in(place, KIND_TXN, || payload, done)
    }

    /// Runs `answer` once every change sequenced so far is durable: at
    /// once when nothing is in flight (the usual case for an answer that
    /// changed nothing, such as a sold-out SKU's rejection), else behind a
    /// barrier that writes nothing. If the journal fails, never.
    pub async fn after_durable(&self, answer: impl FnOnce() + Send + 'static) {
        if let Sequencer::Replicated { proposer, .. } = self {
            // Never at once: what this leader saw is only true once it is
            // confirmed to lead still (a read-index round), and everything
            // proposed before is committed.
            let slot = proposer.reserve().await;
            let done: Done = Box::new(move |result| {
                if result.is_ok() {
                    answer();
                }
            });
            return proposer.barrier_in(slot, done);
        }
        let journal = match self {
            // What it saw may be ahead of the disk for good: dropping the
            // answer drops the caller's reply port, which answers
            // `Unavailable`, never a false yes.
            Sequencer::Journal(journal) if journal.has_failed() => return,
            Sequencer::Journal(journal) if !journal.quiet() => journal,
            _ => return answer(),
        };
        let slot = journal.reserve().await;
        let done: Done = Box::new(move |result| {
            if result.is_ok() {
                answer();
            }
        });
        if let Err(e) = journal.barrier_in(slot, done) {
            tracing::debug!("journal barrier refused: {e}");
        }
    }

    /// Appends a record nobody waits for, if the journal's queue has room
    /// now; false if it had none (or there is no journal). No answer waits
    /// on it: [`Sequencer::after_durable`] looks past it.
    pub fn try_append_unawaited(&self, kind: u8, payload: impl FnOnce() -> Vec<u8>) -> bool {
        if let Sequencer::Replicated { proposer, .. } = self {
            let Some(slot) = proposer.try_reserve() else {
                return false;
            };
            proposer.propose_in(slot, kind, payload(), Box::new(|_| {}));
            return true;
        }
        let Sequencer::Journal(journal) = self else {
            return false;
        };
        let Some(slot) = journal.try_reserve_unvouched() else {
            return false;
        };
        journal
            .append_in(slot, kind, payload(), Box::new(|_| {}))
            .is_ok()
    }

    pub async fn append_raw(&self, kind: u8, payload: impl FnOnce() -> Vec<u8>, done: Done) {
        let place = self.reserve().await;
        self.append_raw_in(place, kind, payload, done);
    }

    pub fn append_raw_in(
        &self,
        place: Place,
        kind: u8,
        payload: impl FnOnce() -> Vec<u8>,
        done: Done,
    ) {
        match (self, place.0) {
            (Sequencer::Memory(lsn), _) => done(Ok(lsn.fetch_add(1, Ordering::Relaxed))),
            (Sequencer::Replicated { proposer, .. }, PlaceIn::Replicated(slot)) => {
                proposer.propose_in(slot, kind, payload(), done)
            }
            (Sequencer::Journal(journal), PlaceIn::Journal(slot)) => {
                // A stopped writer drops `done`, and with it the caller's
                // reply port: the caller gets an error, never a false yes.
                if let Err(e) = journal.append_in(slot, kind, payload(), done) {
                    // The fault that stopped the journal was logged once.
                    tracing::debug!("journal append refused: {e}");
                }
            }
            (Sequencer::Journal(_) | Sequencer::Replicated { .. }, _) => {
                unreachable!("a place comes from its own sequencer's reserve")
            }
        }
    }

    /// The single node's journal (not a replica's: the engine neither
    /// snapshots nor closes that one).
    pub fn journal(&self) -> Option<&Journal> {
        match self {
            Sequencer::Journal(j) => Some(j),
            Sequencer::Memory(_) | Sequencer::Replicated { .. } => None,
        }
    }

    /// The journal whose storage fault stops the engine: the single
    /// node's, or the replica's own.
    pub fn storage(&self) -> Option<&Journal> {
        match self {
            Sequencer::Journal(j) => Some(j),
            Sequencer::Replicated { storage, .. } => Some(storage),
            Sequencer::Memory(_) => None,
        }
    }
}
