//! What the core reports when state it is given or keeps does not hold
//! together. Neither is an answer to a caller: a [`RestoreError`] refuses a
//! start on damaged files, an [`InvariantError`] is a bug that the checks of
//! the tests and the debug endpoint find.

use super::model::{NodeIdx, OrderId, OrderState, SkuId};

/// A snapshot image or a stored order that cannot be restored.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RestoreError {
    /// The image has more node columns than the data directory's names.
    #[error("the snapshot has {image} nodes, the data directory's names {known}")]
    MoreNodes { image: usize, known: usize },
    /// A shard image whose id, shard count and cell table disagree.
    #[error("the shard snapshot's dimensions do not agree")]
    Dimensions,
    /// A row of SKUs beyond what the catalog can hold.
    #[error("row {row} is beyond the catalog")]
    RowBeyondCatalog { row: usize },
    /// A cell with more units reserved than on hand.
    #[error("row {row} has reserved above on_hand")]
    ReservedAboveOnHand { row: usize },
    /// A reservation at a cell the shard does not own, or of no units.
    #[error("the reservation of order {order} names a cell outside the shard")]
    CellOutsideShard { order: OrderId },
    /// A cell whose reservations do not add up to its reserved units.
    #[error("sku {sku} node {node}: reservations {sum} != reserved {reserved}")]
    SumsDisagree {
        sku: SkuId,
        node: NodeIdx,
        sum: u64,
        reserved: u32,
    },
    /// An order in a partition another router owns.
    #[error(
        "order {order} is in partition {partition}, of router {owner} of {routers}, not {router}"
    )]
    WrongRouter {
        order: OrderId,
        partition: usize,
        owner: usize,
        routers: usize,
        router: usize,
    },
    /// An order id whose sequence is 0 or past the last a book gives out.
    #[error("order id {order} is out of range")]
    IdOutOfRange { order: OrderId },
    /// A rejected order's record without its reason.
    #[error("order {order}: rejected without a reason")]
    RejectedWithoutReason { order: OrderId },
    /// An archived rejection reason that does not deserialize.
    #[error("order {order}: its rejection reason cannot be read: {reason}")]
    UnreadableReason { order: OrderId, reason: String },
}

/// A broken invariant of live core state: a bug, never bad input.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvariantError {
    /// A reservation of no units kept for an order.
    #[error("order {order} keeps a zero reservation")]
    ZeroReservation { order: OrderId },
    /// A cell with more units reserved than on hand.
    #[error("sku {sku} node {node}: reserved {reserved} > on_hand {on_hand}")]
    ReservedAboveOnHand {
        sku: SkuId,
        node: NodeIdx,
        reserved: u32,
        on_hand: u32,
    },
    /// A cell's ATP other than its counts give.
    #[error("sku {sku} node {node}: atp {atp} != {expected}")]
    AtpWrong {
        sku: SkuId,
        node: NodeIdx,
        atp: u32,
        expected: i64,
    },
    /// The index shows another ATP than the cell that owns it.
    #[error("sku {sku} node {node}: index atp {index} != cell atp {cell}")]
    IndexDisagrees {
        sku: SkuId,
        node: NodeIdx,
        index: u32,
        cell: u32,
    },
    /// A cell whose reservations and holds do not add up to its counts.
    #[error("sku {sku} node {node}: reservations sum {reserved_sum}+{held_sum} held != reserved {reserved} + held {held}")]
    SumsDisagree {
        sku: SkuId,
        node: NodeIdx,
        reserved_sum: u64,
        held_sum: u64,
        reserved: u32,
        held: u32,
    },
    /// Reservations at a cell the shard does not have.
    #[error("reservations of ({reserved_sum}, {held_sum}) at unknown cell sku {sku} node {node}")]
    UnknownCell {
        sku: SkuId,
        node: NodeIdx,
        reserved_sum: u64,
        held_sum: u64,
    },
    /// An open order's line placed beyond what it asked for.
    #[error("order {order}: line {line} placed {placed} > {qty}")]
    OverPlaced {
        order: OrderId,
        line: u16,
        placed: u32,
        qty: u32,
    },
    /// A closed order that still keeps open units.
    #[error("order {order} is {state:?} but keeps open units")]
    ClosedWithOpenUnits { order: OrderId, state: OrderState },
    /// An allocation with more units returned than shipped.
    #[error("order {order} returned more than shipped")]
    ReturnedAboveShipped { order: OrderId },
    /// A kept order whose key the key filter says no book holds: a
    /// session could answer a resubmission of it as a new order.
    #[error("order {order} is kept but its key is not marked")]
    KeyNotMarked { order: OrderId },
}
