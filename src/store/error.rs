//! What can be wrong with the files of a data directory, by what was read:
//! a snapshot, or one journal record. Either refuses the start; neither is
//! ever a panic.

use crate::core::error::RestoreError;
use crate::core::index::CatalogFull;
use crate::core::model::{NodeIdx, SkuId};
use crate::schema::txn::TxnError;

/// Why a snapshot file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// Fewer bytes than a snapshot header.
    #[error("{0} bytes is shorter than the header")]
    Short(usize),
    /// The first bytes are not a snapshot's magic.
    #[error("not an omniroute snapshot (bad magic)")]
    BadMagic,
    /// The body is not as long as the header says.
    #[error("body is {actual} bytes, the header says {stated}")]
    Length { actual: usize, stated: u64 },
    /// The checksum over LSN, length and body does not match.
    #[error("checksum mismatch")]
    Checksum,
    /// The body does not validate as the archive its name says.
    #[error("the archive does not validate: {0}")]
    Archive(#[from] rkyv::rancor::BoxedError),
    /// The body validates but does not deserialize.
    #[error("the archive does not deserialize: {0}")]
    Undecodable(#[from] rkyv::rancor::Error),
    /// An image or order that contradicts itself or the directory.
    #[error(transparent)]
    Restore(#[from] RestoreError),
    /// The catalog has more SKUs than the index can hold.
    #[error(transparent)]
    CatalogFull(#[from] CatalogFull),
    /// A SKU of the catalog got another id than it had.
    #[error("sku {name:?} interned as {got}, not {id}")]
    SkuMoved { name: String, id: usize, got: SkuId },
    /// A file holding another actor's image than its name says.
    #[error("it is another {0}'s")]
    AnotherActors(&'static str),
    /// A file name that names no actor.
    #[error("{0} is not a snapshot name")]
    Name(String),
    /// A router's book ends inside a chunk header.
    #[error("{0} bytes left, short of a chunk header")]
    ShortChunkHeader(usize),
    /// A chunk of a router's book runs past the end of the file.
    #[error("a chunk of {0} bytes runs past the end")]
    ChunkPastEnd(u64),
    /// A chunk holds another number of orders than its header says.
    #[error("a chunk holds {holds} orders, its header says {stated}")]
    ChunkCount { holds: usize, stated: u64 },
}

/// Why a journal record cannot be replayed.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// A record kind this build does not know.
    #[error("unknown record kind {0}")]
    UnknownKind(u8),
    /// The payload is not a `Txn`.
    #[error(transparent)]
    Txn(#[from] TxnError),
    /// An order in it that cannot be restored.
    #[error(transparent)]
    Restore(#[from] RestoreError),
    /// The catalog is full.
    #[error(transparent)]
    CatalogFull(#[from] CatalogFull),
    /// A SKU interned under another id than the journal gave it.
    #[error("sku {name:?} interned as {got}, journaled as {id}")]
    SkuMoved { name: String, id: SkuId, got: SkuId },
    /// A stock op for a shard or SKU outside the layout.
    #[error("stock op {op} for shard {shard} does not fit the layout")]
    OutsideLayout { op: String, shard: u32 },
    /// A node op for a node beyond the configured nodes.
    #[error("node {0} beyond the configured nodes")]
    UnknownNode(NodeIdx),
}
