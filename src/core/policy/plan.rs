//! The planner: for one request, the hold items (one per line) with their
//! candidates in policy order, and the greedy consolidation that picks a
//! primary node per line to keep shipments few.

use smallvec::SmallVec;

use super::rank::{eligible_nodes, rank_nodes, Ranked};
use super::{Method, OnShort, PlanRequest, Policy, Rule};
use crate::core::index::{AtpRow, AvailabilityIndex};
use crate::core::model::{Capabilities, NodeIdx};
use crate::core::network::Network;
use crate::core::stock::HoldItem;
use crate::limits::{MAX_CANDIDATES_FIRST_TRY, MAX_CANDIDATES_PER_LINE, MAX_LINES_PER_ORDER};

/// Why no hold can be planned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PlanError {
    NoEligibleNode(crate::core::model::LastFilter),
    /// All or nothing, and these lines (positions in the request) have no
    /// units at any eligible node by the index: the order is short whatever
    /// the ranking, so none is made (most buyers of a sold-out SKU).
    Unavailable {
        lines: SmallVec<[usize; 4]>,
    },
}

/// The store a pickup order names, if any.
pub(super) fn selected_store(method: Method) -> Option<NodeIdx> {
    match method {
        Method::Pickup { store } => Some(store),
        _ => None,
    }
}

pub(super) fn method_capabilities(method: Method) -> Capabilities {
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

/// Greedy set cover: repeatedly pick the best node by the rules, with
/// "fewest shipments" scored on the lines still unplaced, and give it every
/// unplaced line it covers. Lines no single node covers stay without a
/// primary and are split by the shard.
pub(super) fn choose_consolidation(
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
