//! Which nodes may serve a request (filters over the network and the
//! index) and their ranking keys (the policy's rules, then weighted cost).

use smallvec::SmallVec;

use super::plan::{method_capabilities, selected_store};
use super::{Method, PlanError, PlanLine, PlanRequest, Policy, Rule};
use crate::core::index::{AtpRow, AvailabilityIndex, STOCKED_WORD_NODES};
use crate::core::model::{LastFilter, Node, NodeIdx};
use crate::core::network::Network;
use crate::limits::MAX_RULES;

/// A node that passed the filters, with its ranking key.
#[derive(Clone, Copy)]
pub(super) struct Ranked {
    pub(super) node: NodeIdx,
    /// Lines (bit i = line i of the request) the index says it covers fully.
    pub(super) covers: u64,
    pub(super) key: [u64; MAX_RULES + 2],
}

/// A node that passed the filters and has some of the order (or any node
/// that passed, when widening), before ranking.
pub(super) struct Eligible {
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
pub(super) fn eligible_nodes(
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
            return Err(PlanError::NoEligibleNode(last_filter(
                network, policy, index, request,
            )));
        }
    }
    Ok(stocked_lines)
}

/// A filter as `last_filter` applies it: whether it keeps a node.
type Keeps<'a> = dyn Fn(NodeIdx, &Node) -> bool + 'a;

/// The filter that removed the last node: the filters applied one after
/// another, in `eligible_nodes`' order, until none is left. Only for an
/// order no node can serve, so it may walk the network a few times.
fn last_filter(
    network: &Network,
    policy: &Policy,
    index: &AvailabilityIndex,
    request: &PlanRequest,
) -> LastFilter {
    let wanted = method_capabilities(request.method);
    let selected_store = selected_store(request.method);
    let filters = &policy.filters;
    let max_distance_km = max_distance_km(policy, request.method);
    let mut left: Vec<(NodeIdx, &Node)> = (0..)
        .zip(network.nodes.iter())
        .filter(|(_, node)| !node.retired)
        .collect();
    let market_filter = if request.market.is_none() {
        LastFilter::NoMarket
    } else {
        LastFilter::SameMarket
    };
    let steps: [(LastFilter, &Keeps); 6] = [
        (LastFilter::Capability, &|_, node| {
            node.capabilities.intersects(wanted)
        }),
        (LastFilter::Excluded, &|idx, _| {
            !request.excluded.contains(&idx)
        }),
        (LastFilter::PickupStore, &|idx, _| {
            selected_store.is_none_or(|s| s == idx) || filters.pickup_alternatives
        }),
        (market_filter, &|_, node| {
            !filters.same_market || request.market == Some(node.market)
        }),
        (LastFilter::Offline, &|idx, _| index.node_open(idx)),
        (LastFilter::Distance, &|_, node| {
            max_distance_km.is_none_or(|max| request.ship_to.distance_km(&node.location) <= max)
        }),
    ];
    for (filter, keeps) in steps {
        left.retain(|(idx, node)| keeps(*idx, node));
        if left.is_empty() {
            return filter;
        }
    }
    LastFilter::Unrecorded
}

/// What node `idx` has of `lines` by the index: the lines it covers fully
/// and those it has some of (bit i = line i), and its units summed.
pub(super) fn line_counts(lines: &[PlanLine], rows: &[AtpRow], idx: NodeIdx) -> (u64, u64, u64) {
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
pub(super) fn max_distance_km(policy: &Policy, method: Method) -> Option<f64> {
    let filters = &policy.filters;
    match (filters.max_distance_km, method) {
        (limit, Method::SameDay) => {
            Some(limit.map_or(filters.same_day_max_km, |l| l.min(filters.same_day_max_km)))
        }
        (limit, _) => limit,
    }
}

/// Computes each eligible node's ranking key, into `ranked`.
pub(super) fn rank_nodes(
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
    use crate::core::geo::GeoPoint;
    use crate::core::model::MarketIdx;

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
            return Err(PlanError::NoEligibleNode(last_filter(
                network, policy, index, request,
            )));
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
