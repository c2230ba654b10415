//! Submitting: an order validated and resolved to indices, a resubmission
//! answered from the book, new orders placed together and recorded.

use std::cmp::Reverse;
use std::sync::Arc;

use rustc_hash::FxHashMap;
use smallvec::SmallVec;

use super::{announce, open_allocation, Resolved, RouterCore};
use crate::core::book::partition_of_key;
use crate::core::events::EventKind;
use crate::core::geo::GeoPoint;
use crate::core::index::AvailabilityIndex;
use crate::core::model::{
    Capabilities, ChannelIdx, Decision, FulfilmentMethod, InvalidOrder, NodeIdx, OrderId,
    OrderRequest, OrderState, RejectReason,
};
use crate::core::network::Network;
use crate::core::ops::NodeOp;
use crate::core::order::{created_s, request_fingerprint, AllocationState, OrderRecord};
use crate::core::placement::{place, send_ops, Attempt, Participants, Placement};
use crate::core::policy::{Method, PlanLine};
use crate::limits::{MAX_HOLD_TTL_MS, MAX_ID_BYTES, MAX_LINES_PER_ORDER, MAX_QTY_PER_LINE};

/// An order checked against the network and the catalog, with its names
/// turned into indices: what a router and a session both start from.
pub(super) fn resolve(
    network: &Network,
    index: &AvailabilityIndex,
    request: &OrderRequest,
) -> Result<Resolved, InvalidOrder> {
    let channel = network
        .channel_idx(&request.channel)
        .ok_or(InvalidOrder::UnknownChannel)?;
    if request.client_order_id.is_empty() || request.client_order_id.len() > MAX_ID_BYTES {
        return Err(InvalidOrder::BadOrderId);
    }
    if request.lines.is_empty() {
        return Err(InvalidOrder::NoLines);
    }
    if request.lines.len() > MAX_LINES_PER_ORDER {
        return Err(InvalidOrder::TooManyLines(request.lines.len()));
    }
    let mut lines: SmallVec<[PlanLine; 4]> = SmallVec::with_capacity(request.lines.len());
    for (i, line) in request.lines.iter().enumerate() {
        let line_no = i as u16;
        if line.qty == 0 || line.qty > MAX_QTY_PER_LINE {
            return Err(InvalidOrder::BadQuantity { line: line_no });
        }
        let sku = index
            .lookup(&line.sku)
            .ok_or(InvalidOrder::UnknownSku { line: line_no })?;
        if lines.iter().any(|l| l.sku == sku) {
            return Err(InvalidOrder::DuplicateSku { line: line_no });
        }
        lines.push(PlanLine {
            line: line_no,
            sku,
            qty: line.qty,
        });
    }
    let market = match &request.ship_to.market {
        Some(name) => Some(
            network
                .market_idx(name)
                .ok_or(InvalidOrder::UnknownMarket)?,
        ),
        None => None,
    };
    let method = match &request.method {
        FulfilmentMethod::Ship => Method::Ship,
        FulfilmentMethod::SameDay => Method::SameDay,
        FulfilmentMethod::Pickup { store } => {
            let store = network
                .node_idx(store)
                .ok_or(InvalidOrder::UnknownPickupStore)?;
            let capabilities = network.nodes[store as usize].capabilities;
            if !capabilities.intersects(Capabilities::PICKUP) {
                return Err(InvalidOrder::NotAPickupStore);
            }
            Method::Pickup { store }
        }
    };
    let ship_to = ship_to_of(request, method, network)?;
    let hold_ttl_ms = match request.hold_ttl_ms {
        Some(ttl) if ttl == 0 || ttl > MAX_HOLD_TTL_MS => return Err(InvalidOrder::BadHoldTtl),
        Some(ttl) => ttl,
        None => network.policy(channel).hold_ttl_ms,
    };
    // The market as asked: a retry must match whatever the regions
    // say after a reload.
    let fingerprint = request_fingerprint(
        &lines,
        (request.ship_to.lat, request.ship_to.lon),
        market,
        hold_ttl_ms,
        method,
    );
    let market = market.or_else(|| network.market_at(&ship_to));
    Ok(Resolved {
        channel,
        lines,
        ship_to,
        market,
        method,
        hold_ttl_ms,
        fingerprint,
    })
}

impl RouterCore {
    /// Routes a batch of orders: validates, answers resubmissions from the
    /// book, places the new ones together, records and answers them.
    pub async fn submit<P: Participants>(
        &mut self,
        requests: &[OrderRequest],
        now_ms: u64,
        participants: &P,
    ) -> Vec<Decision> {
        let mut decisions: Vec<Option<Decision>> = vec![None; requests.len()];
        let mut attempts: Vec<Attempt> = Vec::new();
        // (request index, hold ttl, fingerprint) of each attempt.
        let mut fresh: Vec<(usize, u64, u64)> = Vec::new();
        let mut in_batch: FxHashMap<(ChannelIdx, &str), (usize, u64)> = FxHashMap::default();
        // New orders of this batch so far, per partition.
        let mut taken: FxHashMap<usize, u64> = FxHashMap::default();
        // (request, first request with the same key, same body as that one)
        let mut repeats: Vec<(usize, usize, bool)> = Vec::new();
        for (i, request) in requests.iter().enumerate() {
            let resolved = match resolve(&self.network, &self.index, request) {
                Ok(resolved) => resolved,
                Err(invalid) => {
                    decisions[i] = Some(Decision::Rejected(RejectReason::Invalid(invalid)));
                    continue;
                }
            };
            let key = (resolved.channel, request.client_order_id.as_str());
            let partition = partition_of_key(&request.channel, key.1);
            if let Some(id) = self.orders.find_key(partition, key.0, key.1) {
                let record = &self.orders[&id];
                let same = record.fingerprint == resolved.fingerprint;
                decisions[i] = Some(if same {
                    record.decision()
                } else {
                    Decision::Rejected(RejectReason::DuplicateMismatch)
                });
                continue;
            }
            if let Some(&(first, fingerprint)) = in_batch.get(&key) {
                repeats.push((i, first, fingerprint == resolved.fingerprint));
                continue;
            }
            in_batch.insert(key, (i, resolved.fingerprint));
            // Ids of this batch's new orders, in their partitions' order.
            let earlier = taken.entry(partition).or_insert(0);
            let order = self.orders.next_id(partition, *earlier);
            *earlier += 1;
            fresh.push((i, resolved.hold_ttl_ms, resolved.fingerprint));
            attempts.push(resolved.into_attempt(order));
        }
        let placements = place(&self.context(), &attempts, now_ms, participants).await;
        // Every id handed out is used up, kept or not: a rejected order's
        // holds are being aborted under it.
        for attempt in &attempts {
            self.orders.used_up_to(attempt.order);
        }
        let mut events: FxHashMap<NodeIdx, Vec<NodeOp>> = FxHashMap::default();
        for ((attempt, placement), &(i, hold_ttl_ms, fingerprint)) in
            attempts.iter().zip(placements).zip(&fresh)
        {
            let decision = self.record_new(
                &requests[i],
                attempt,
                placement,
                hold_ttl_ms,
                fingerprint,
                now_ms,
            );
            if let Decision::Routed { allocations, .. } = &decision {
                let units = allocations.iter().map(|a| (a.node, a.line, a.sku, a.qty));
                announce(
                    &mut events,
                    EventKind::Allocated,
                    &self.orders[&attempt.order],
                    units,
                );
            }
            decisions[i] = Some(decision);
        }
        send_ops(participants, FxHashMap::default(), events);
        for (i, first, same) in repeats {
            decisions[i] = Some(if same {
                decisions[first].clone().expect("first answered")
            } else {
                Decision::Rejected(RejectReason::DuplicateMismatch)
            });
        }
        decisions
            .into_iter()
            .map(|d| d.expect("every request answered"))
            .collect()
    }

    /// Keeps a routed order and answers it; a rejected one reserved
    /// nothing and is not kept (a resubmission is evaluated again).
    fn record_new(
        &mut self,
        request: &OrderRequest,
        attempt: &Attempt,
        placement: Placement,
        hold_ttl_ms: u64,
        fingerprint: u64,
        now_ms: u64,
    ) -> Decision {
        let mut record = new_record(request, attempt, hold_ttl_ms, fingerprint, now_ms);
        let expires_at_ms = record.expires_at_ms;
        let (allocations, short) = match placement {
            Placement::Placed { allocations, short } => (allocations, short),
            Placement::Failed(reason) => {
                if self.record_demand {
                    self.demand.push(rejected(record, &reason));
                }
                return Decision::Rejected(reason);
            }
        };
        record.allocations = allocations
            .iter()
            .map(|a| AllocationState {
                initial: a.qty,
                ..open_allocation(*a)
            })
            .collect();
        if !short.is_empty() {
            let extra = record.extra_mut();
            extra.short = short.clone();
            extra.short_at_decision = short.clone();
        }
        self.expiries.push(Reverse((expires_at_ms, attempt.order)));
        self.orders.insert(record);
        Decision::Routed {
            order_id: attempt.order,
            allocations,
            short,
            expires_at_ms,
        }
    }
}

impl Resolved {
    /// A new order's first attempt, under `order` (0 where none is given out yet).
    pub(super) fn into_attempt(self, order: OrderId) -> Attempt {
        Attempt {
            order,
            lines: self.lines,
            ship_to: self.ship_to,
            market: self.market,
            method: self.method,
            channel: self.channel,
            excluded: SmallVec::new(),
        }
    }
}

/// The record of a new order as asked, held, before its placement is known.
pub(super) fn new_record(
    request: &OrderRequest,
    attempt: &Attempt,
    hold_ttl_ms: u64,
    fingerprint: u64,
    now_ms: u64,
) -> OrderRecord {
    OrderRecord {
        id: attempt.order,
        fingerprint,
        expires_at_ms: now_ms + hold_ttl_ms,
        client_order_id: Arc::from(request.client_order_id.as_str()),
        lines: attempt.lines.iter().copied().collect(),
        ship_to: (attempt.ship_to.lat, attempt.ship_to.lon),
        allocations: SmallVec::new(),
        extra: None,
        key_next: 0,
        channel: attempt.channel,
        market: attempt.market,
        method: attempt.method,
        state: OrderState::Held,
        created_s: created_s(now_ms),
    }
}

/// A new order's record as demand: rejected, with its reason.
pub(super) fn rejected(mut record: OrderRecord, reason: &RejectReason) -> OrderRecord {
    record.state = OrderState::Rejected;
    record.extra_mut().rejection = Some(reason.clone());
    record
}

/// Where the order goes: its ship-to, or for a pickup order given none
/// (both coordinates NaN) the store's own location, which is where the
/// customer collects it.
fn ship_to_of(
    request: &OrderRequest,
    method: Method,
    network: &Network,
) -> Result<GeoPoint, InvalidOrder> {
    let (lat, lon) = (request.ship_to.lat, request.ship_to.lon);
    match method {
        Method::Pickup { store } if lat.is_nan() && lon.is_nan() => {
            Ok(network.nodes[store as usize].location)
        }
        _ => GeoPoint::new(lat, lon).ok_or(InvalidOrder::BadShipTo),
    }
}
