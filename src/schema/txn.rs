//! The journal's records: their kinds, and [`Txn`], the one atomic change
//! every state change is journaled as. Payloads are rkyv archives of
//! these types; they name nodes, channels, markets and SKUs by the data
//! directory's ids (see the module above).

use crate::core::model::NodeIdx;
use crate::core::ops::{NodeOp, StockOp};
use crate::core::order::OrderRecord;

/// Journal record kind of a [`Txn`].
pub const KIND_TXN: u8 = 1;
/// Journal record kind of a snapshot marker (an empty record whose LSN
/// labels a snapshot taken just before it was appended).
pub const KIND_MARKER: u8 = 2;
/// Journal record kind of a routing policy reload: the channels' policies
/// as TOML. Orders after it were routed by it; recovery starts on the
/// config's policy, so replay passes over it.
pub const KIND_POLICY: u8 = 3;
/// Journal record kind of demand: a [`Txn`] with only `orders`, each a
/// rejected order as it was asked for and answered. Not state (recovery
/// passes over it, and no answer waited for it); the what-if replay routes
/// it again. Written only when the journal's queue has room.
pub const KIND_DEMAND: u8 = 4;
/// Journal record kind of lost demand: a u64 (little-endian) count of
/// rejected orders whose demand record was not written (the journal's
/// queue was full), so that the replay can say its demand is incomplete.
pub const KIND_DEMAND_LOST: u8 = 5;
/// Journal record kind of a replicated log entry's header (a replica's
/// journal is its Raft log: `replica::entry`): the entry's index, term and
/// type, and how many records follow it as the entry's body. Not state;
/// replay passes over it and applies the records.
pub const KIND_RAFT_ENTRY: u8 = 6;
/// Journal record kind of a replicated configuration change: the raft
/// entry's data (a protobuf `ConfChange`), the one record of its entry.
pub const KIND_RAFT_CONF: u8 = 7;

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
    pub fn decode(bytes: &[u8]) -> Result<Txn, TxnError> {
        let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(bytes.len());
        aligned.extend_from_slice(bytes);
        rkyv::deserialize::<Txn, rkyv::rancor::Error>(Txn::validate(&aligned)?)
            .map_err(TxnError::Undecodable)
    }

    /// Validates a journaled payload that already lies at a 16-aligned
    /// address (rkyv's alignment) and reads it in place: for readers that
    /// look at a few fields of every record, like the what-if replay.
    pub fn validate(aligned: &[u8]) -> Result<&ArchivedTxn, TxnError> {
        rkyv::access::<ArchivedTxn, rkyv::rancor::BoxedError>(aligned).map_err(TxnError::Invalid)
    }

    /// [`Txn::validate`] for a reader of many payloads: the same checks,
    /// with the shared-pointer bookkeeping kept in `seen` from one payload
    /// to the next, where rkyv's own validator builds a hash map for each
    /// (one allocation and a hash per order's shared id string).
    pub fn validate_with<'a>(
        aligned: &'a [u8],
        seen: &mut SharedSeen,
    ) -> Result<&'a ArchivedTxn, TxnError> {
        seen.0.clear();
        let mut validator = rkyv::validation::Validator::new(
            rkyv::validation::archive::ArchiveValidator::new(aligned),
            seen,
        );
        rkyv::api::access_with_context::<ArchivedTxn, _, rkyv::rancor::BoxedError>(
            aligned,
            &mut validator,
        )
        .map_err(TxnError::Invalid)
    }
}

/// A journaled payload that is not a `Txn` of this format.
#[derive(Debug, thiserror::Error)]
pub enum TxnError {
    /// Its bytes fail validation: damage, or another format.
    #[error("the record does not validate as a Txn: {0}")]
    Invalid(rkyv::rancor::BoxedError),
    /// It validates but does not deserialize.
    #[error("the record does not deserialize as a Txn: {0}")]
    Undecodable(rkyv::rancor::Error),
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
