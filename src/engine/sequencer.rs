//! Holds, then journal, then apply: every change to journaled state leaves
//! an actor as a [`Txn`], which the sequencer gives an LSN and makes durable
//! before the ops in it reach the shards and nodes, in LSN order, and before
//! the caller is answered.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::core::model::NodeIdx;
use crate::core::placement::{NodeOp, StockOp};
use crate::core::router::OrderRecord;
pub use crate::journal::Done;
use crate::journal::Journal;

/// Journal record kind of a [`Txn`].
pub const KIND_TXN: u8 = 1;
/// Journal record kind of a snapshot marker (an empty record whose LSN
/// labels a snapshot taken just before it was appended).
pub const KIND_MARKER: u8 = 2;
/// Journal record kind of a routing policy reload: the channels' policies
/// as TOML. Orders after it were routed by it; recovery starts on the
/// config's policy, so replay passes over it.
pub const KIND_POLICY: u8 = 3;

/// One atomic change: the orders it rewrote (whole, as the book now has
/// them) and the ops it sends to shards and nodes. Replay applies it alike.
#[derive(Default, Debug, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Txn {
    /// SKUs this change added to the catalog: (id, name), in id order.
    pub skus: Vec<(u32, String)>,
    pub orders: Vec<OrderRecord>,
    /// (shard, op)
    pub stock: Vec<(u32, StockOp)>,
    pub nodes: Vec<(NodeIdx, NodeOp)>,
}

impl Txn {
    pub fn encode(&self) -> Vec<u8> {
        rkyv::to_bytes::<rkyv::rancor::Error>(self)
            .expect("a txn always serializes")
            .into_vec()
    }

    /// Validates and decodes a journaled payload; damage is an error, never
    /// a panic.
    pub fn decode(bytes: &[u8]) -> Result<Txn, String> {
        let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(bytes.len());
        aligned.extend_from_slice(bytes);
        rkyv::deserialize::<Txn, rkyv::rancor::Error>(Txn::validate(&aligned)?)
            .map_err(|e| e.to_string())
    }

    /// Validates a journaled payload that already lies at a 16-aligned
    /// address (rkyv's alignment) and reads it in place: for readers that
    /// look at a few fields of every record, like the what-if replay.
    pub fn validate(aligned: &[u8]) -> Result<&ArchivedTxn, String> {
        rkyv::access::<ArchivedTxn, rkyv::rancor::BoxedError>(aligned).map_err(|e| e.to_string())
    }

    /// [`Txn::validate`] for a reader of many payloads: the same checks,
    /// with the shared-pointer bookkeeping kept in `seen` from one payload
    /// to the next, where rkyv's own validator builds a hash map for each
    /// (one allocation and a hash per order's shared id string).
    pub fn validate_with<'a>(
        aligned: &'a [u8],
        seen: &mut SharedSeen,
    ) -> Result<&'a ArchivedTxn, String> {
        seen.0.clear();
        let mut validator = rkyv::validation::Validator::new(
            rkyv::validation::archive::ArchiveValidator::new(aligned),
            seen,
        );
        rkyv::api::access_with_context::<ArchivedTxn, _, rkyv::rancor::BoxedError>(
            aligned,
            &mut validator,
        )
        .map_err(|e| e.to_string())
    }
}

/// The shared pointers one payload's validation has met: (address, type,
/// metadata, finished). A payload holds a few (one id string per order),
/// so a short list searched in place beats a map.
#[derive(Default)]
pub struct SharedSeen(Vec<(usize, std::any::TypeId, rkyv::de::Metadata, bool)>);

/// Why a payload's shared pointers do not check: the rules of rkyv's own
/// `SharedValidator`, which this follows.
#[derive(Debug, thiserror::Error)]
enum SharedMismatch {
    #[error("a shared pointer is read as two types")]
    Type,
    #[error("a shared pointer has two lengths")]
    Metadata,
    #[error("a shared pointer finished before it started")]
    NotStarted,
    #[error("a shared pointer finished twice")]
    Finished,
}

impl<E: rkyv::rancor::Source> rkyv::validation::SharedContext<E> for &mut SharedSeen {
    fn start_shared(
        &mut self,
        shared_type_id: std::any::TypeId,
        ptr: rkyv::de::ErasedPtr,
        metadata_is_eq: unsafe fn(rkyv::de::Metadata, rkyv::de::Metadata) -> bool,
    ) -> Result<rkyv::validation::shared::ValidationState, E> {
        use rkyv::validation::shared::ValidationState;
        let address = ptr.data_address() as usize;
        let Some(&(_, type_id, metadata, finished)) = self.0.iter().find(|(a, ..)| *a == address)
        else {
            self.0
                .push((address, shared_type_id, ptr.metadata(), false));
            return Ok(ValidationState::Started);
        };
        if type_id != shared_type_id {
            return Err(E::new(SharedMismatch::Type));
        }
        // SAFETY: both metadata were taken from pointers of this type
        // (the type ids are equal), as rkyv's own validator relies on.
        if !unsafe { metadata_is_eq(ptr.metadata(), metadata) } {
            return Err(E::new(SharedMismatch::Metadata));
        }
        Ok(if finished {
            ValidationState::Finished
        } else {
            ValidationState::Pending
        })
    }

    fn finish_shared(
        &mut self,
        _shared_type_id: std::any::TypeId,
        ptr: rkyv::de::ErasedPtr,
    ) -> Result<(), E> {
        let address = ptr.data_address() as usize;
        match self.0.iter_mut().find(|(a, ..)| *a == address) {
            None => Err(E::new(SharedMismatch::NotStarted)),
            Some((.., true)) => Err(E::new(SharedMismatch::Finished)),
            Some((.., finished)) => {
                *finished = true;
                Ok(())
            }
        }
    }
}

/// Where changes are sequenced: a journal on disk, or (for tests and
/// benches of the engine alone) a counter that makes nothing durable.
pub enum Sequencer {
    Memory(AtomicU64),
    Journal(Journal),
}

/// A place in the sequence's queue (a journal slot; nothing in memory).
pub struct Place(Option<crate::journal::Slot>);

impl Sequencer {
    pub fn memory() -> Sequencer {
        Sequencer::Memory(AtomicU64::new(1))
    }

    pub fn is_durable(&self) -> bool {
        matches!(self, Sequencer::Journal(_))
    }

    /// A place in the journal's queue, waited for without parking the
    /// thread when it is full; in memory, at once.
    pub async fn reserve(&self) -> Place {
        match self {
            Sequencer::Memory(_) => Place(None),
            Sequencer::Journal(journal) => Place(Some(journal.reserve().await)),
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
            (Sequencer::Journal(journal), Some(slot)) => {
                // A stopped writer drops `done`, and with it the caller's
                // reply port: the caller gets an error, never a false yes.
                if let Err(e) = journal.append_in(slot, kind, payload(), done) {
                    tracing::error!("journal append failed: {e}");
                }
            }
            (Sequencer::Journal(_), None) => {
                unreachable!("a journal's place comes from its own reserve")
            }
        }
    }

    pub fn journal(&self) -> Option<&Journal> {
        match self {
            Sequencer::Journal(j) => Some(j),
            Sequencer::Memory(_) => None,
        }
    }
}
