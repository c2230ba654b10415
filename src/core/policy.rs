//! Routing policy and the planner: which nodes may serve an order
//! (filters), in which order of preference (rules, then weighted cost), and
//! the hold items that carry that preference to the shards.
//!
//! The planner reads only the availability index, which may be a moment
//! stale: it ranks, it does not decide. The shard that owns a SKU takes the
//! first candidate that truly has the units.

use smallvec::SmallVec;

use super::geo::GeoPoint;
use super::index::{AtpRow, AvailabilityIndex, STOCKED_WORD_NODES, WATCHED_BELOW_UNITS};
use super::model::{Capabilities, MarketIdx, Node, NodeIdx, OrderId, SkuId};
use super::network::Network;
use super::stock::HoldItem;
use crate::limits::{
    MAX_CANDIDATES_FIRST_TRY, MAX_CANDIDATES_PER_LINE, MAX_LINES_PER_ORDER, MAX_RULES,
};

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

/// A node that passed the filters, with its ranking key.
#[derive(Clone, Copy)]
struct Ranked {
    node: NodeIdx,
    /// Lines (bit i = line i of the request) the index says it covers fully.
    covers: u64,
    key: [u64; MAX_RULES + 2],
}

/// Why no hold can be planned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PlanError {
    NoEligibleNode,
    /// All or nothing, and these lines (positions in the request) have no
    /// units at any eligible node by the index: the order is short whatever
    /// the ranking, so none is made (most buyers of a sold-out SKU).
    Unavailable {
        lines: SmallVec<[usize; 4]>,
    },
}

/// The store a pickup order names, if any.
fn selected_store(method: Method) -> Option<NodeIdx> {
    match method {
        Method::Pickup { store } => Some(store),
        _ => None,
    }
}

fn method_capabilities(method: Method) -> Capabilities {
    match method {
        Method::Ship => Capabilities::SHIP.union(Capabilities::SHIP_FROM_STORE),
        Method::Pickup { .. } => Capabilities::PICKUP,
        Method::SameDay => Capabilities::SAME_DAY,
    }
}

/// The hold items of one request, one per line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub items: SmallVec<[HoldItem; 4]>,
    /// Some line had more candidates than were sent: a widened attempt
    /// could still find units the first one did not offer.
    pub truncated: bool,
}

/// Plans the hold items of one request: one item per line, candidates in
/// policy order. Items come out in line order; the caller groups them by shard.
pub fn plan(
    network: &Network,
    policy: &Policy,
    index: &AvailabilityIndex,
    request: &PlanRequest,
) -> Result<Plan, PlanError> {
    assert!(request.lines.len() <= MAX_LINES_PER_ORDER);
    let rows: SmallVec<[AtpRow; 4]> = request.lines.iter().map(|l| index.atp_row(l.sku)).collect();
    // Filled in place: returned, these lists (kilobytes on the stack) were
    // copied on the way out, and the copies were a fifth of planning.
    let mut eligible = SmallVec::new();
    let stocked_lines = eligible_nodes(network, policy, index, request, &rows, &mut eligible)?;
    let all_lines = if request.lines.len() == 64 {
        u64::MAX
    } else {
        (1u64 << request.lines.len()) - 1
    };
    if !request.widen && policy.on_short == OnShort::Reject && stocked_lines != all_lines {
        let lines = (0..request.lines.len())
            .filter(|&i| stocked_lines & (1 << i) == 0)
            .collect();
        return Err(PlanError::Unavailable { lines });
    }
    let mut ranked = SmallVec::new();
    rank_nodes(network, policy, index, request, &eligible, &mut ranked);
    let fewest_position = policy
        .rules
        .iter()
        .position(|r| *r == Rule::FewestShipments);
    let mut primary: SmallVec<[Option<NodeIdx>; 8]> =
        SmallVec::from_elem(None, request.lines.len());
    if let (Some(position), true) = (fewest_position, request.lines.len() > 1) {
        choose_consolidation(&mut ranked, position, policy.max_shipments, &mut primary);
    }
    let limit = if request.widen {
        MAX_CANDIDATES_PER_LINE
    } else {
        MAX_CANDIDATES_FIRST_TRY
    };
    // Sort positions, not the wide keys themselves. A single line only ever
    // sends the best `limit` (every ranked node has some of its SKU), so
    // those are selected first and only they are sorted.
    let mut order: SmallVec<[u16; 32]> = (0..ranked.len() as u16).collect();
    let by_key = |a: &u16, b: &u16| ranked[*a as usize].key.cmp(&ranked[*b as usize].key);
    let mut truncated = false;
    if request.lines.len() == 1 && !request.widen && order.len() > limit {
        order.select_nth_unstable_by(limit - 1, by_key);
        order.truncate(limit);
        truncated = true;
    }
    order.sort_unstable_by(by_key);
    let max_parts = policy.max_shipments.max(1);
    let partial = policy.on_short == OnShort::Partial;
    let items = request
        .lines
        .iter()
        .zip(&primary)
        .zip(&rows)
        .map(|((line, first), row)| {
            let mut candidates: SmallVec<[NodeIdx; 8]> = SmallVec::new();
            candidates.extend(*first);
            let mut others = order
                .iter()
                .map(|&position| ranked[position as usize].node)
                .filter(|&node| Some(node) != *first && (request.widen || row.get(node) > 0));
            candidates.extend(others.by_ref().take(limit.saturating_sub(candidates.len())));
            truncated |= others.next().is_some();
            HoldItem {
                order: request.order,
                line: line.line,
                sku: line.sku,
                qty: line.qty,
                candidates,
                max_parts,
                partial,
            }
        })
        .collect();
    Ok(Plan { items, truncated })
}

/// What a first-try plan read from the index, taken before planning, so
/// that a plan made ahead on another thread can be checked before use: if
/// the stamp still holds, `plan` would make the same plan now.
///
/// A first-try plan reads the index only as "node online with capacity
/// left" and, per line and node, "has some" and "covers the line". With
/// every line at most [`WATCHED_BELOW_UNITS`] units, a count can change
/// either answer only by being or going under that bound, which bumps its
/// SKU's low version. Rules that read exact counts or loads (`most_stock`,
/// `least_loaded`) cannot be stamped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanStamp {
    node_epoch: u64,
    low_versions: SmallVec<[u64; 4]>,
}

impl PlanStamp {
    /// Stamps the index for a first try of `lines` under `policy`; None
    /// when such a plan cannot be checked by a stamp.
    pub fn take(policy: &Policy, index: &AvailabilityIndex, lines: &[PlanLine]) -> Option<Self> {
        if policy
            .rules
            .iter()
            .any(|r| matches!(r, Rule::MostStock | Rule::LeastLoaded))
            || lines.iter().any(|l| l.qty > WATCHED_BELOW_UNITS)
        {
            return None;
        }
        let node_epoch = index.node_epoch();
        let low_versions = lines
            .iter()
            .map(|l| index.low_version(l.sku))
            .collect::<Option<_>>()?;
        Some(PlanStamp {
            node_epoch,
            low_versions,
        })
    }

    /// Whether a plan made after this stamp is still the plan for `lines`.
    pub fn holds(&self, index: &AvailabilityIndex, lines: &[PlanLine]) -> bool {
        self.node_epoch == index.node_epoch()
            && lines.len() == self.low_versions.len()
            && lines
                .iter()
                .zip(&self.low_versions)
                .all(|(l, &v)| index.low_version(l.sku) == Some(v))
    }
}

/// Greedy set cover: repeatedly pick the best node by the rules, with
/// "fewest shipments" scored on the lines still unplaced, and give it every
/// unplaced line it covers. Lines no single node covers stay without a
/// primary and are split by the shard.
fn choose_consolidation(
    ranked: &mut [Ranked],
    position: usize,
    max_shipments: u8,
    primary: &mut [Option<NodeIdx>],
) {
    let mut remaining: u64 = if primary.len() == 64 {
        u64::MAX
    } else {
        (1u64 << primary.len()) - 1
    };
    for _ in 0..max_shipments {
        if remaining == 0 {
            break;
        }
        for r in ranked.iter_mut() {
            r.key[position] = u64::from(64 - (r.covers & remaining).count_ones());
        }
        let Some(best) = ranked.iter().min_by(|a, b| a.key.cmp(&b.key)) else {
            break;
        };
        let newly = best.covers & remaining;
        if newly == 0 {
            break;
        }
        for (i, slot) in primary.iter_mut().enumerate() {
            if newly & (1 << i) != 0 {
                *slot = Some(best.node);
            }
        }
        remaining &= !newly;
    }
    // Leave the final ranking on coverage of the whole order.
    for r in ranked.iter_mut() {
        r.key[position] = u64::from(64 - r.covers.count_ones());
    }
}

/// A node that passed the filters and has some of the order (or any node
/// that passed, when widening), before ranking.
struct Eligible {
    node: NodeIdx,
    /// Lines (bit i = line i of the request) the index says it covers fully.
    covers: u64,
    /// Units of the order's SKUs it has, summed over the lines.
    stock: u64,
    /// Measured already when a distance filter applies.
    distance_km: Option<f64>,
}

/// Applies the filters. Puts the nodes to rank in `eligible` and returns
/// the lines (bit i = line i) some of them have units of.
fn eligible_nodes(
    network: &Network,
    policy: &Policy,
    index: &AvailabilityIndex,
    request: &PlanRequest,
    rows: &[AtpRow],
    eligible: &mut SmallVec<[Eligible; 64]>,
) -> Result<u64, PlanError> {
    let wanted = method_capabilities(request.method);
    let selected_store = selected_store(request.method);
    let filters = &policy.filters;
    let max_distance_km = max_distance_km(policy, request.method);
    // The filters but distance, cheapest first.
    let passes = |idx: NodeIdx, node: &Node| {
        node.capabilities.intersects(wanted)
            && !request.excluded.contains(&idx)
            && (selected_store.is_none_or(|s| s == idx) || filters.pickup_alternatives)
            && (!filters.same_market || request.market == Some(node.market))
            && index.node_open(idx)
    };
    // None: too far; Some(None): no distance filter applies.
    let within = |node: &Node| match max_distance_km {
        Some(max) => {
            let distance_km = request.ship_to.distance_km(&node.location);
            (distance_km <= max).then_some(Some(distance_km))
        }
        None => Some(None),
    };
    let mut stocked_lines = 0u64;
    let mut consider = |idx: NodeIdx, node: &Node, eligible: &mut SmallVec<[Eligible; 64]>| {
        let (covers, stocked, stock) = line_counts(request.lines, rows, idx);
        // A stocked bit may run ahead of its count (both are a moment
        // stale); a node with none is not eligible unless widening.
        if stock == 0 && !request.widen {
            return;
        }
        let Some(distance_km) = within(node) else {
            return;
        };
        stocked_lines |= stocked;
        eligible.push(Eligible {
            node: idx,
            covers,
            stock,
            distance_km,
        });
    };
    if request.widen {
        for (i, node) in network.nodes.iter().enumerate() {
            let idx = i as NodeIdx;
            if passes(idx, node) {
                consider(idx, node, eligible);
            }
        }
    } else {
        // Only a node with some of a line can be eligible, and most nodes
        // hold none of a given SKU: walk the lines' stocked bits, not the
        // network.
        for word in 0..network.nodes.len().div_ceil(STOCKED_WORD_NODES) {
            let mut bits = rows
                .iter()
                .fold(0u32, |bits, row| bits | row.stocked_word(word));
            while bits != 0 {
                let i = word * STOCKED_WORD_NODES + bits.trailing_zeros() as usize;
                bits &= bits - 1;
                let Some(node) = network.nodes.get(i) else {
                    break;
                };
                let idx = i as NodeIdx;
                if passes(idx, node) {
                    consider(idx, node, eligible);
                }
            }
        }
    }
    if eligible.is_empty() {
        // None has any of the order (most buyers of a sold-out SKU): short
        // if some node passes the filters, else no node is eligible at all.
        let any = network
            .nodes
            .iter()
            .enumerate()
            .any(|(i, node)| passes(i as NodeIdx, node) && within(node).is_some());
        if !any {
            return Err(PlanError::NoEligibleNode);
        }
    }
    Ok(stocked_lines)
}

/// What node `idx` has of `lines` by the index: the lines it covers fully
/// and those it has some of (bit i = line i), and its units summed.
fn line_counts(lines: &[PlanLine], rows: &[AtpRow], idx: NodeIdx) -> (u64, u64, u64) {
    let (mut covers, mut stocked, mut stock) = (0u64, 0u64, 0u64);
    for (bit, (line, row)) in lines.iter().zip(rows).enumerate() {
        let atp = row.get(idx);
        stock += u64::from(atp);
        if atp > 0 {
            stocked |= 1 << bit;
        }
        if atp >= line.qty {
            covers |= 1 << bit;
        }
    }
    (covers, stocked, stock)
}

/// The distance filter of `policy` for `method`, if any.
fn max_distance_km(policy: &Policy, method: Method) -> Option<f64> {
    let filters = &policy.filters;
    match (filters.max_distance_km, method) {
        (limit, Method::SameDay) => {
            Some(limit.map_or(filters.same_day_max_km, |l| l.min(filters.same_day_max_km)))
        }
        (limit, _) => limit,
    }
}

/// Computes each eligible node's ranking key, into `ranked`.
fn rank_nodes(
    network: &Network,
    policy: &Policy,
    index: &AvailabilityIndex,
    request: &PlanRequest,
    eligible: &[Eligible],
    ranked: &mut SmallVec<[Ranked; 16]>,
) {
    let selected_store = selected_store(request.method);
    ranked.reserve(eligible.len());
    for found in eligible {
        let (idx, covers, stock) = (found.node, found.covers, found.stock);
        let node = network.node(idx);
        let distance_km = found
            .distance_km
            .unwrap_or_else(|| request.ship_to.distance_km(&node.location));
        let mut key = [0u64; MAX_RULES + 2];
        for (slot, rule) in key.iter_mut().zip(&policy.rules) {
            *slot = match rule {
                Rule::PickupAtSelectedStore => u64::from(selected_store != Some(idx)),
                Rule::SameMarket => u64::from(request.market != Some(node.market)),
                Rule::FewestShipments => u64::from(64 - covers.count_ones()),
                Rule::Nearest => (distance_km * 1000.0) as u64,
                Rule::Cheapest => (node.shipping_cost_cents(distance_km) * 100.0) as u64,
                Rule::Fastest => u64::from(node.lead_time_minutes),
                Rule::NodePriority => u64::from(node.priority),
                Rule::MostStock => u64::MAX - stock,
                Rule::LeastLoaded => {
                    let used = u64::from(index.capacity_used(idx));
                    used * 1_000_000 / u64::from(node.daily_capacity.max(1))
                }
            };
        }
        let weights = &policy.weights;
        let weighted = weights.distance_km * distance_km
            + weights.cost_cents * node.shipping_cost_cents(distance_km)
            + weights.lead_time_minutes * f64::from(node.lead_time_minutes);
        key[policy.rules.len()] = (weighted.max(0.0) * 1000.0) as u64;
        key[policy.rules.len() + 1] = u64::from(idx);
        ranked.push(Ranked {
            node: idx,
            covers,
            key,
        });
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::config::Config;

    /// An eligible node as compared: (node, covers, stock, distance's bits).
    type Found = (NodeIdx, u64, u64, Option<u64>);

    /// The walk `eligible_nodes` made before it followed the stocked bits:
    /// every node of the network, in order. The oracle for the test below.
    fn eligible_by_walking_every_node(
        network: &Network,
        policy: &Policy,
        index: &AvailabilityIndex,
        request: &PlanRequest,
        rows: &[AtpRow],
    ) -> Result<(Vec<Found>, u64), PlanError> {
        let wanted = method_capabilities(request.method);
        let selected_store = selected_store(request.method);
        let filters = &policy.filters;
        let max_distance_km = max_distance_km(policy, request.method);
        let (mut eligible, mut stocked_lines, mut any_eligible) = (Vec::new(), 0u64, false);
        for (i, node) in network.nodes.iter().enumerate() {
            let idx = i as NodeIdx;
            if !node.capabilities.intersects(wanted)
                || request.excluded.contains(&idx)
                || (selected_store.is_some_and(|s| s != idx) && !filters.pickup_alternatives)
                || (filters.same_market && request.market != Some(node.market))
                || !index.node_open(idx)
            {
                continue;
            }
            let (covers, stocked, stock) = line_counts(request.lines, rows, idx);
            let distance_km = request.ship_to.distance_km(&node.location);
            if max_distance_km.is_some_and(|max| distance_km > max) {
                continue;
            }
            any_eligible = true;
            if stock == 0 && !request.widen {
                continue;
            }
            stocked_lines |= stocked;
            let measured = max_distance_km.map(|_| distance_km.to_bits());
            eligible.push((idx, covers, stock, measured));
        }
        if !any_eligible {
            return Err(PlanError::NoEligibleNode);
        }
        Ok((eligible, stocked_lines))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        #[test]
        fn the_stocked_bits_find_the_nodes_a_walk_of_every_node_finds(
            counts in prop::collection::vec((0u32..4, 0u16..60, prop_oneof![Just(0u32), 1u32..6]), 0..300),
            closed in prop::collection::vec(0u16..60, 0..20),
            lines in prop::collection::vec((0u32..4, 1u32..4), 1..4),
            excluded in prop::collection::vec(0u16..60, 0..4),
            channel in 0u16..4,
            method in 0u8..3,
            store in 0u16..60,
            point in 0usize..4,
            widen in any::<bool>(),
        ) {
            // Proves the planner's walk over the lines' stocked bits gives exactly the eligible
            // nodes (in order, with covers, stock and distance) and the error that walking every
            // node gives, over counts going to and from zero, closed nodes and every filter.
            let network = Config::default_config().validate().unwrap().network;
            let index = AvailabilityIndex::new(network.nodes.len(), 4);
            for sku in 0..4 {
                index.intern(&format!("SKU-{sku}")).unwrap();
            }
            for node in 0..network.nodes.len() as NodeIdx {
                let open = !closed.contains(&node);
                index.publish_node(node, open, 0, if open { 100 } else { 0 });
            }
            for (sku, node, atp) in counts {
                index.publish_atp(sku, node % network.nodes.len() as NodeIdx, atp);
            }
            let mut seen = Vec::new();
            let lines: Vec<PlanLine> = lines
                .into_iter()
                .filter(|(sku, _)| {
                    let new = !seen.contains(sku);
                    seen.push(*sku);
                    new
                })
                .enumerate()
                .map(|(i, (sku, qty))| PlanLine { line: i as u16, sku, qty })
                .collect();
            let points = [(52.52, 13.40), (48.86, 2.35), (51.51, -0.13), (40.0, -3.7)];
            let request = PlanRequest {
                order: 1,
                lines: &lines,
                ship_to: GeoPoint::new(points[point].0, points[point].1).unwrap(),
                market: Some((point % 3) as MarketIdx),
                method: match method {
                    0 => Method::Ship,
                    1 => Method::Pickup { store: store % network.nodes.len() as NodeIdx },
                    _ => Method::SameDay,
                },
                excluded: &excluded,
                widen,
            };
            let policy = network.policy(channel % network.channels.len() as u16);
            let rows: SmallVec<[AtpRow; 4]> = lines.iter().map(|l| index.atp_row(l.sku)).collect();
            let mut eligible = SmallVec::new();
            let got = eligible_nodes(&network, policy, &index, &request, &rows, &mut eligible)
                .map(|stocked_lines| {
                    let found = eligible
                        .iter()
                        .map(|e| (e.node, e.covers, e.stock, e.distance_km.map(f64::to_bits)))
                        .collect::<Vec<_>>();
                    (found, stocked_lines)
                });
            let expected = eligible_by_walking_every_node(&network, policy, &index, &request, &rows);
            prop_assert_eq!(got, expected);
        }
    }
}
