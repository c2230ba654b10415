//! What an engine call can fail with.

use crate::core::book::MAX_ROUTERS;
use crate::core::events::CursorOutOfRange;
use crate::core::index::CatalogFull;
use crate::core::router::OpError;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("could not spawn an actor: {0}")]
    Spawn(String),
    #[error("routers must be 1..={MAX_ROUTERS}")]
    Routers,
    #[error("a reload cannot add, remove or rename channels (now: {now}; asked: {asked}); restart for that")]
    Channels { now: String, asked: String },
    #[error("a running daemon only adds nodes; a node removed or renamed needs a restart")]
    NodesChanged,
    #[error("{asked} nodes to add, but {free} spare node slots; restart to add more")]
    NodeSlots { asked: usize, free: usize },
    #[error("the engine is overloaded; retry later")]
    Overloaded,
    #[error("batch of {0} exceeds the limit")]
    BatchTooLarge(usize),
    #[error("unknown node {0:?}")]
    UnknownNode(String),
    #[error("unknown sku {0:?}")]
    UnknownSku(String),
    #[error("unknown channel {0:?}")]
    UnknownChannel(String),
    /// A stock feed entry's count is out of range; the feed changed nothing.
    #[error("stock entry {entry} ({sku}@{node}): {reason}")]
    StockQuantity {
        entry: usize,
        sku: String,
        node: String,
        reason: String,
    },
    #[error(transparent)]
    CatalogFull(#[from] CatalogFull),
    #[error(transparent)]
    Order(#[from] OpError),
    #[error(transparent)]
    Cursor(#[from] CursorOutOfRange),
    /// The storage failed (disk full, I/O error, no descriptors): nothing
    /// more can be made durable, so nothing more is answered yes.
    #[error("the daemon cannot make changes durable (its storage failed; /healthz names the cause) and is stopping: retry on the restarted daemon (a resubmission with the same client order id gets the durable outcome)")]
    Unavailable,
}
