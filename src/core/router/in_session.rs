//! What a session may answer without a router: an order the index alone
//! settles (invalid, or sold out at every eligible node), exactly as the
//! router would, so that a flash sale's "short" answers cost no hop.

use std::sync::atomic::{fence, Ordering};

use super::submit::{new_record, rejected, resolve};
use crate::core::book::key_fingerprint;
use crate::core::index::AvailabilityIndex;
use crate::core::model::{Decision, OrderRequest, RejectReason};
use crate::core::network::Network;
use crate::core::order::OrderRecord;
use crate::core::placement::settled_by_plan;
use crate::core::policy::plan;

/// An order answered from the index.
#[derive(Debug)]
pub struct IndexAnswer {
    pub decision: Decision,
    /// The rejection as the demand record a router would keep for the
    /// replay (its id is not an order's); none for an invalid order.
    pub demand: Option<OrderRecord>,
}

/// The router's answer to `request`, if the index alone settles it and no
/// book holds its key nor is a router on its way to; `None`: ask the
/// router (always, for an order whose every line has units somewhere).
/// The caller answers under the router's rule for a rejection (once every
/// record queued so far is durable), and leaves orders whose key comes
/// twice in a batch to the router.
///
/// Exact because it is the router's own first step: the same resolve, the
/// same plan over the same index, the same rejection when the plan alone
/// settles it (`settled_by_plan`), before any unit is held. A resubmission
/// of a kept or coming order is never answered here: the engine marks a
/// key ([`crate::core::keys::KeyFilter`]) before it sends the order to its
/// router and a book while it keeps it, the index publishes counts with
/// release stores, and this reads the key after the counts, so counts
/// emptied by that order's holds come with its mark.
pub fn answer_from_index(
    network: &Network,
    index: &AvailabilityIndex,
    request: &OrderRequest,
    now_ms: u64,
) -> Option<IndexAnswer> {
    // A quick look first, so that an order with stock (most of them) pays
    // a lookup per line here and is planned once, by its router: is any
    // line's SKU unknown, or without units at any node?
    let hopeless = request.lines.iter().any(|line| {
        index
            .lookup(&line.sku)
            .is_none_or(|sku| index.atp_row(sku).none_stocked())
    });
    if !hopeless {
        return None;
    }
    let resolved = match resolve(network, index, request) {
        Ok(resolved) => resolved,
        // A router answers these before it looks the key up, too.
        Err(invalid) => {
            return Some(IndexAnswer {
                decision: Decision::Rejected(RejectReason::Invalid(invalid)),
                demand: None,
            })
        }
    };
    let (hold_ttl_ms, fingerprint) = (resolved.hold_ttl_ms, resolved.fingerprint);
    let attempt = resolved.into_attempt(0);
    let policy = network.policy(attempt.channel);
    let planned = plan(network, policy, index, &attempt.request(&[], false));
    let reason = settled_by_plan(network, &attempt, planned).err()?;
    fence(Ordering::Acquire);
    let key = key_fingerprint(attempt.channel, &request.client_order_id);
    if index.keys().may_hold(key) {
        return None;
    }
    let record = new_record(request, &attempt, hold_ttl_ms, fingerprint, now_ms);
    Some(IndexAnswer {
        demand: Some(rejected(record, &reason)),
        decision: Decision::Rejected(reason),
    })
}
