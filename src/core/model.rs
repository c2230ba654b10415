//! The domain: nodes, SKUs, orders and the decisions made about them.
//! Inside the core everything is a compact index (`NodeIdx`, `SkuId`,
//! `OrderId`); names live at the edges.

use smallvec::SmallVec;

use super::geo::GeoPoint;

/// Index of a fulfillment node in the network (dense, from 0).
pub type NodeIdx = u16;
/// Interned SKU (dense, from 0).
pub type SkuId = u32;
/// Index of a sales channel in the config (dense, from 0).
pub type ChannelIdx = u16;
/// Index of a market / region name (dense, from 0).
pub type MarketIdx = u16;
/// The daemon's own id of an order; the client's id is the idempotency key.
pub type OrderId = u64;

/// What a fulfillment node is. Kinds differ in the capabilities they usually
/// have, never in how the core treats them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeKind {
    Warehouse,
    Store,
    #[serde(rename = "3pl")]
    ThirdPartyLogistics,
    DarkStore,
}

/// What a node can do, as bit flags so that eligibility is one AND.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Capabilities(u8);

impl Capabilities {
    pub const SHIP: Capabilities = Capabilities(1);
    pub const PICKUP: Capabilities = Capabilities(2);
    pub const SAME_DAY: Capabilities = Capabilities(4);
    pub const SHIP_FROM_STORE: Capabilities = Capabilities(8);

    /// Parses a config name; `None` names an unknown capability.
    pub fn from_name(name: &str) -> Option<Capabilities> {
        match name {
            "ship" => Some(Self::SHIP),
            "pickup" => Some(Self::PICKUP),
            "same_day" => Some(Self::SAME_DAY),
            "ship_from_store" => Some(Self::SHIP_FROM_STORE),
            _ => None,
        }
    }

    pub fn union(self, other: Capabilities) -> Capabilities {
        Capabilities(self.0 | other.0)
    }

    pub fn intersects(self, other: Capabilities) -> bool {
        self.0 & other.0 != 0
    }
}

/// Static description of a fulfillment node. Its changing state (capacity
/// use, online) belongs to the node's ledger.
#[derive(Clone, Debug)]
pub struct Node {
    /// External id used by feeds, the wire and the config (`WH-BER`).
    pub id: String,
    /// Human name for reports.
    pub name: String,
    pub kind: NodeKind,
    pub location: GeoPoint,
    pub market: MarketIdx,
    pub capabilities: Capabilities,
    /// Allocations (order shipments) the node accepts per day.
    pub daily_capacity: u32,
    /// Rank for the `node_priority` rule: 1 is preferred over 2.
    pub priority: u32,
    /// Shipping cost of one shipment: `base + per_km * distance`, in cents.
    pub cost_base_cents: u32,
    pub cost_per_km_cents: f64,
    /// Time from allocation to hand-over to the carrier or the customer.
    pub lead_time_minutes: u32,
    /// Online at start.
    pub online: bool,
    /// Gone from the config but known to the data directory: it keeps its
    /// id so stored orders that name it still read right, and takes no
    /// orders, stock or capacity.
    pub retired: bool,
}

impl Node {
    /// The stand-in for a node the config no longer has: offline and
    /// without capabilities, so no filter ever lets it through. Its
    /// capacity is unbounded only so that what its ledger used before it
    /// was retired still fits.
    pub fn retired(id: &str, market: MarketIdx) -> Node {
        Node {
            id: id.to_string(),
            name: id.to_string(),
            kind: NodeKind::Warehouse,
            location: GeoPoint::new(0.0, 0.0).expect("the origin is a point"),
            market,
            capabilities: Capabilities::default(),
            daily_capacity: u32::MAX,
            priority: u32::MAX,
            cost_base_cents: 0,
            cost_per_km_cents: 0.0,
            lead_time_minutes: 0,
            online: false,
            retired: true,
        }
    }

    /// Shipping cost in cents of one shipment over `distance_km`.
    pub fn shipping_cost_cents(&self, distance_km: f64) -> f64 {
        f64::from(self.cost_base_cents) + self.cost_per_km_cents * distance_km
    }
}

/// How the customer receives the order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FulfilmentMethod {
    Ship,
    /// Pickup at the named store; the policy decides whether another store
    /// may stand in when that one lacks stock.
    Pickup {
        store: String,
    },
    SameDay,
}

/// One requested line, as the client sends it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LineRequest {
    pub sku: String,
    pub qty: u32,
}

/// Where the order goes. `market` is optional: without it the `same_market`
/// filter and rule treat the order as belonging to no market.
#[derive(Clone, Debug, PartialEq)]
pub struct ShipTo {
    pub lat: f64,
    pub lon: f64,
    pub market: Option<String>,
}

/// An order as a channel submits it.
#[derive(Clone, Debug, PartialEq)]
pub struct OrderRequest {
    /// Sales channel; selects the routing policy.
    pub channel: String,
    /// The client's id, unique per channel: the idempotency key.
    pub client_order_id: String,
    pub lines: Vec<LineRequest>,
    pub ship_to: ShipTo,
    pub method: FulfilmentMethod,
    /// How long an unconfirmed reservation lives; the channel default if absent.
    pub hold_ttl_ms: Option<u64>,
}

/// Units of one line placed at one node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Allocation {
    /// Index of the line in the order.
    pub line: u16,
    pub sku: SkuId,
    pub node: NodeIdx,
    pub qty: u32,
}

/// A line that could not be (fully) allocated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct ShortLine {
    pub line: u16,
    pub sku: SkuId,
    pub requested: u32,
    /// Units the eligible nodes had available when the shard answered.
    pub available: u32,
}

/// Why an order was not routed.
#[derive(
    Clone, Debug, PartialEq, Eq, thiserror::Error, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
pub enum RejectReason {
    /// Some lines lack stock at eligible nodes (all-or-nothing policy).
    #[error("short: {} line(s) lack stock", lines.len())]
    Short { lines: Vec<ShortLine> },
    /// No node passes the policy's filters for this order; `filter` is
    /// the one that removed the last node.
    #[error("no eligible node: {filter}")]
    NoEligibleNode { filter: LastFilter },
    /// The order could not fit in the policy's maximum number of shipments.
    #[error("order needs more than {max_shipments} shipments")]
    TooManyShipments { max_shipments: u8 },
    /// The order is malformed; nothing was reserved.
    #[error("invalid order: {0}")]
    Invalid(#[from] InvalidOrder),
    /// The client order id was used before with a different body.
    #[error("order id was used with a different body")]
    DuplicateMismatch,
    /// Stock kept moving under this order for every allowed attempt.
    #[error("contention: gave up after {attempts} hold attempts")]
    Contention { attempts: u32 },
}

/// The filter that removed the last node an order could use, in the order
/// the planner applies them. Its place is the wire's NO_ELIGIBLE_NODE
/// detail; `Unrecorded` (0) is what a rejection stored before the filter
/// was recorded reads as.
#[derive(Clone, Copy, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum LastFilter {
    Unrecorded,
    /// No node has the capability the method needs.
    Capability,
    /// Every node that could serve it rejected the order or went offline.
    Excluded,
    /// The pickup store cannot serve it, and the policy allows no other.
    PickupStore,
    /// `same_market`, and the order has no market.
    NoMarket,
    /// `same_market`, and no node of the order's market can serve it.
    SameMarket,
    /// Every node left is offline.
    Offline,
    /// `max_distance_km` (or, for same day, `same_day_max_km`).
    Distance,
}

impl std::fmt::Display for LastFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LastFilter::Unrecorded => "no node passes the channel's filters",
            LastFilter::Capability => {
                "capabilities: no node offers the order's method (ship, pickup or same day)"
            }
            LastFilter::Excluded => {
                "excluded: every node that could serve it rejected the order or went offline"
            }
            LastFilter::PickupStore => {
                "pickup_alternatives: the pickup store cannot serve it and the policy allows no other store"
            }
            LastFilter::NoMarket => {
                "same_market: the order has no market; pass --market or a ship-to inside one"
            }
            LastFilter::SameMarket => "same_market: no node in the order's market can serve it",
            LastFilter::Offline => "online: every node that passes the filters is offline",
            LastFilter::Distance => {
                "max_distance_km: no node is within the policy's distance of the ship-to point"
            }
        })
    }
}

/// Why an order is malformed. Each variant maps to one wire error code.
#[derive(
    Clone, Debug, PartialEq, Eq, thiserror::Error, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
pub enum InvalidOrder {
    #[error("order has no lines")]
    NoLines,
    #[error("order has {0} lines; an order may have at most {max}", max = crate::limits::MAX_LINES_PER_ORDER)]
    TooManyLines(usize),
    #[error("line {line}: the quantity must be between 1 and {max}", max = crate::limits::MAX_QTY_PER_LINE)]
    BadQuantity { line: u16 },
    #[error("line {line}: unknown sku")]
    UnknownSku { line: u16 },
    #[error("line {line}: sku repeats an earlier line")]
    DuplicateSku { line: u16 },
    #[error("unknown channel")]
    UnknownChannel,
    #[error("ship-to point is not a valid latitude/longitude")]
    BadShipTo,
    #[error("ship-to market is not a known market")]
    UnknownMarket,
    #[error("pickup store is not a known node")]
    UnknownPickupStore,
    #[error("the client order id must be 1 to {max} bytes long", max = crate::limits::MAX_ID_BYTES)]
    BadOrderId,
    #[error("the hold time must be between 1 ms and {max} ms (24 hours)", max = crate::limits::MAX_HOLD_TTL_MS)]
    BadHoldTtl,
    #[error("the pickup store is a node without the pickup capability")]
    NotAPickupStore,
}

/// Lifecycle state of an accepted order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum OrderState {
    /// Reserved, waiting for confirmation; released at `expires_at_ms`.
    Held,
    /// Reserved with no expiry.
    Confirmed,
    /// Every allocated unit has shipped.
    Shipped,
    Cancelled,
    Expired,
    /// Never routed; kept so that a resubmission gets the same answer.
    Rejected,
}

impl OrderState {
    /// Open orders still own reservations.
    pub fn is_open(self) -> bool {
        matches!(self, OrderState::Held | OrderState::Confirmed)
    }
}

/// The answer to a submit: the same value is returned for a resubmission.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Routed {
        order_id: OrderId,
        allocations: Vec<Allocation>,
        /// Lines left (partly) unallocated under a partial-allocation policy.
        short: Vec<ShortLine>,
        /// Absent when the order was confirmed at submit (ttl 0 is not allowed).
        expires_at_ms: u64,
    },
    Rejected(RejectReason),
}

impl Decision {
    pub fn is_routed(&self) -> bool {
        matches!(self, Decision::Routed { .. })
    }

    pub fn allocations(&self) -> &[Allocation] {
        match self {
            Decision::Routed { allocations, .. } => allocations,
            Decision::Rejected(_) => &[],
        }
    }

    /// Distinct nodes, i.e. shipments, of a routed order.
    pub fn shipments(&self) -> usize {
        let mut nodes: SmallVec<[NodeIdx; 8]> = self.allocations().iter().map(|a| a.node).collect();
        nodes.sort_unstable();
        nodes.dedup();
        nodes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `RejectReason` as it was before `NoEligibleNode` named its filter.
    #[derive(rkyv::Archive, rkyv::Serialize)]
    #[allow(dead_code)]
    enum RejectReasonBefore {
        Short { lines: Vec<ShortLine> },
        NoEligibleNode,
        TooManyShipments { max_shipments: u8 },
        Invalid(InvalidOrder),
        DuplicateMismatch,
        Contention { attempts: u32 },
    }

    #[test]
    fn a_rejection_stored_before_the_filter_was_named_still_reads() {
        // Proves journaled rejections (demand records) written before NoEligibleNode carried
        // its filter validate and read back, as the filter `Unrecorded`, and the others unchanged.
        let old = [
            RejectReasonBefore::NoEligibleNode,
            RejectReasonBefore::Contention { attempts: 7 },
            RejectReasonBefore::Invalid(InvalidOrder::TooManyLines(70)),
        ];
        let new = [
            RejectReason::NoEligibleNode {
                filter: LastFilter::Unrecorded,
            },
            RejectReason::Contention { attempts: 7 },
            RejectReason::Invalid(InvalidOrder::TooManyLines(70)),
        ];
        for (old, new) in old.iter().zip(new) {
            let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(old).unwrap();
            let read = rkyv::from_bytes::<RejectReason, rkyv::rancor::Error>(&bytes).unwrap();
            assert_eq!(read, new);
        }
    }
}
