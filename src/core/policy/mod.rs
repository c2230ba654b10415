//! Routing policy and the planner: which nodes may serve an order
//! (filters), in which order of preference (rules, then weighted cost), and
//! the hold items that carry that preference to the shards.
//!
//! The planner reads only the availability index, which may be a moment
//! stale: it ranks, it does not decide. The shard that owns a SKU takes the
//! first candidate that truly has the units.

use super::geo::GeoPoint;
use super::model::{MarketIdx, NodeIdx, OrderId, SkuId};

/// A named routing rule. Each breaks the ties left by the ones before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// The store the customer chose for pickup before any other.
    PickupAtSelectedStore,
    /// Nodes in the order's market before others.
    SameMarket,
    /// Nodes that can ship more of the order in one shipment first.
    FewestShipments,
    /// Shortest distance to the ship-to point.
    Nearest,
    /// Lowest shipping cost (base + per km).
    Cheapest,
    /// Shortest lead time.
    Fastest,
    /// Lowest priority rank.
    NodePriority,
    /// Most units of the ordered SKUs.
    MostStock,
    /// Lowest share of today's capacity used.
    LeastLoaded,
}

/// What to do when stock is short for some lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnShort {
    /// All or nothing: reserve nothing and reject with the short lines.
    Reject,
    /// Keep what can be reserved; the decision lists the short lines.
    Partial,
}

/// Which nodes may serve an order at all.
#[derive(Clone, Debug, PartialEq)]
pub struct Filters {
    /// Only nodes in the order's market.
    pub same_market: bool,
    /// Only nodes within this distance of the ship-to point.
    pub max_distance_km: Option<f64>,
    /// Same-day orders only go to same-day nodes within this distance.
    pub same_day_max_km: f64,
    /// A pickup order may be served by another pickup store when the chosen
    /// one lacks stock (the rule `pickup_at_selected_store` still prefers it).
    pub pickup_alternatives: bool,
}

/// Weights of the last tie-breaker: a cost summed over these terms.
#[derive(Clone, Debug, PartialEq)]
pub struct Weights {
    pub distance_km: f64,
    pub cost_cents: f64,
    pub lead_time_minutes: f64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    pub rules: Vec<Rule>,
    pub filters: Filters,
    pub weights: Weights,
    /// Most distinct nodes one order may ship from.
    pub max_shipments: u8,
    pub on_short: OnShort,
    /// Hold lifetime when the order does not say.
    pub hold_ttl_ms: u64,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            rules: vec![Rule::FewestShipments, Rule::Nearest],
            filters: Filters {
                same_market: false,
                max_distance_km: None,
                same_day_max_km: 50.0,
                pickup_alternatives: true,
            },
            weights: Weights {
                distance_km: 1.0,
                cost_cents: 0.0,
                lead_time_minutes: 0.0,
            },
            max_shipments: 3,
            on_short: OnShort::Reject,
            hold_ttl_ms: 15 * 60 * 1000,
        }
    }
}

/// How the order reaches the customer, resolved to indices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum Method {
    Ship,
    Pickup { store: NodeIdx },
    SameDay,
}

/// One line to place: its index in the order, SKU and units.
#[derive(Clone, Copy, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct PlanLine {
    pub line: u16,
    pub sku: SkuId,
    pub qty: u32,
}

/// Everything the planner needs about one order (or the re-routed rest of one).
#[derive(Clone, Debug)]
pub struct PlanRequest<'a> {
    pub order: OrderId,
    pub lines: &'a [PlanLine],
    pub ship_to: GeoPoint,
    pub market: Option<MarketIdx>,
    pub method: Method,
    /// Nodes that must not serve this order (rejected it, went offline,
    /// were full in an earlier attempt).
    pub excluded: &'a [NodeIdx],
    /// Offer every eligible node as a candidate, even those the index shows
    /// without stock (used after a short answer, in case the index lagged).
    pub widen: bool,
}

mod plan;
mod rank;
mod stamp;

pub use plan::{plan, Plan, PlanError};
pub use stamp::PlanStamp;
