//! The audit after a run: the starting stock, the stock left, and every
//! routed order read back and checked against what it was answered.

use std::collections::BTreeMap;
use std::time::Duration;

use omniroute_client::protocol::{order_states, ErrorCode};
use omniroute_client::ClientError;
use omniroute_loadtest::{Audit, Cell, Scenario};

use crate::admin::Admin;
use crate::drive;

/// Orders asked back per batch in the missing-order audit.
pub(crate) const AUDIT_BATCH: usize = 4096;

/// The stock the audit counts from: the scenario's own, or, when it sets
/// none, each of its SKUs' ATP at the daemon before the run.
pub(crate) async fn starting_stock(
    admin: &Admin,
    scenario: &Scenario,
) -> Result<BTreeMap<Cell, u64>, String> {
    let mut starting = BTreeMap::new();
    if !scenario.stock.is_empty() {
        for s in &scenario.stock {
            *starting.entry((s.sku.clone(), s.node.clone())).or_default() += u64::from(s.on_hand);
        }
        return Ok(starting);
    }
    let skus: Vec<String> = match &scenario.orders.sku_range {
        Some(range) => (1..=range.count)
            .map(|i| format!("{}{i}", range.prefix))
            .collect(),
        None => scenario.orders.skus.clone(),
    };
    read_atp(admin, &skus, &mut starting).await?;
    Ok(starting)
}

/// Each SKU's ATP per node at the daemon, into `into`.
pub(crate) async fn read_atp(
    admin: &Admin,
    skus: &[String],
    into: &mut BTreeMap<Cell, u64>,
) -> Result<(), String> {
    for chunk in skus.chunks(AUDIT_BATCH) {
        let answers =
            futures::future::join_all(chunk.iter().map(|sku| admin.availability(sku, None))).await;
        for (sku, answer) in chunk.iter().zip(answers) {
            match answer {
                Ok(nodes) => {
                    for node in nodes {
                        into.insert((sku.clone(), node.node), u64::from(node.atp));
                    }
                }
                // A SKU the daemon does not know has no stock to oversell.
                Err(ClientError::Server { .. }) => {}
                Err(e) => return Err(format!("reading the stock of {sku}: {e}")),
            }
        }
    }
    Ok(())
}

/// What reading back the routed orders found.
#[derive(Default)]
pub(crate) struct ReadBack {
    /// Answered routed, unknown to the daemon.
    pub(super) missing: u64,
    /// Expired although their own deadline had not come when read.
    pub(super) early_expiries: u64,
    /// Closed and retired (`[orders] retention_ms`) by the time they were
    /// read: counted from what their acknowledged follow-ups did.
    pub(super) archived: u64,
    /// Found, but with other allocations than the answer gave (checked
    /// with `RunOrders::compare_allocations`).
    pub(super) allocation_mismatches: u64,
}

/// Reads every routed order back, then every SKU's ATP, into `audit`. A
/// hold that expires between the two reads shows as a mismatch that is
/// not one, so a mismatch is read again (from the audit as the run left
/// it), at most `AUDIT_READS` times, a hold's length apart at most.
pub(crate) async fn read_back_settled(
    admin: &Admin,
    orders: &RunOrders<'_>,
    run: Audit,
) -> Result<(Audit, ReadBack), String> {
    let mut skus: Vec<String> = run
        .starting
        .keys()
        .chain(run.told.keys())
        .map(|(sku, _)| sku.clone())
        .collect();
    skus.sort();
    skus.dedup();
    let mut read = 0;
    loop {
        read += 1;
        let mut audit = run.clone();
        let found = read_back_orders(admin, orders, &mut audit).await;
        let mut final_atp = BTreeMap::new();
        read_atp(admin, &skus, &mut final_atp).await?;
        audit.final_atp = final_atp;
        if audit.stock_mismatch_units() == 0 || read == AUDIT_READS {
            return Ok((audit, found));
        }
        println!("audit: stock moved while it was read (a hold ran out in between); reading again");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Times the audit reads orders and stock before a mismatch stands.
pub(crate) const AUDIT_READS: u32 = 3;

/// What the run knows of the orders it routed, for reading them back.
pub(crate) struct RunOrders<'a> {
    pub(super) channel: &'a str,
    /// Of every client order id of the run: the key of request `id` is
    /// `{prefix}{id}`.
    pub(super) prefix: &'a str,
    /// (request id, the daemon's order id) of each routed order.
    pub(super) routed: &'a [(u64, u64)],
    /// What each order was told, by request id (when kept).
    pub(super) promises: &'a std::collections::HashMap<u64, Vec<(String, String, u32)>>,
    pub(super) endings: &'a drive::Endings,
    /// Check each order's allocations against what it was told (a
    /// cluster's run: a failover must not change an answered decision).
    /// Only where nothing re-routes orders (no node events).
    pub(super) compare_allocations: bool,
}

/// Asks the daemon for every routed order: how many it does not know, what
/// it holds for the others now, per cell, and (where `promises` were kept)
/// the units it took back from what each order was told: expired with
/// its hold, or taken back otherwise.
pub(crate) async fn read_back_orders(
    admin: &Admin,
    orders: &RunOrders<'_>,
    audit: &mut Audit,
) -> ReadBack {
    let RunOrders {
        channel,
        prefix,
        routed,
        promises,
        ..
    } = *orders;
    let mut found = ReadBack::default();
    for chunk in routed.chunks(AUDIT_BATCH) {
        // By the id each was answered with: an id tells an archived order
        // from a lost one for good (a key only while it is remembered).
        let answers = futures::future::join_all(
            chunk
                .iter()
                .map(|&(_, order_id)| admin.get_order_by_id(channel, order_id)),
        )
        .await;
        // After the answers: an order expired by now must be past its deadline.
        let read_at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        for ((id, _), answer) in chunk.iter().zip(answers) {
            match answer {
                Ok(view) if view.client_order_id != format!("{prefix}{id}") => {
                    println!(
                        "audit: order {} is {:?}, answered for {prefix}{id}",
                        view.order_id, view.client_order_id
                    );
                    found.missing += 1;
                }
                Ok(view) => {
                    if orders.compare_allocations
                        && !same_allocations(&view, promises.get(id).map_or(&[], |p| p))
                    {
                        println!(
                            "audit: order {} ({prefix}{id}) holds {:?}, answered {:?}",
                            view.order_id,
                            view.allocations,
                            promises.get(id)
                        );
                        found.allocation_mismatches += 1;
                    }
                    let expired = view.state == order_states::EXPIRED;
                    if expired && view.expires_at_ms > read_at_ms {
                        found.early_expiries += 1;
                    }
                    let mut held: BTreeMap<&str, u64> = BTreeMap::new();
                    for a in &view.allocations {
                        let units = u64::from(a.open) + u64::from(a.shipped);
                        audit.hold_now(&a.sku, &a.node, units);
                        *held.entry(a.sku.as_str()).or_default() += units;
                    }
                    for (sku, node, told) in promises.get(id).into_iter().flatten() {
                        let left = held.entry(sku.as_str()).or_default();
                        let kept = (*left).min(u64::from(*told));
                        *left -= kept;
                        let given_back = u64::from(*told) - kept;
                        if expired {
                            audit.expire(sku, node, given_back);
                        } else {
                            audit.withdraw(sku, node, given_back);
                        }
                    }
                }
                Err(ClientError::Server { code, .. }) if code == ErrorCode::Archived as u16 => {
                    found.archived += 1;
                    archived(*id, orders, audit);
                }
                Err(_) => found.missing += 1,
            }
        }
    }
    found
}

/// Whether `view` holds what the order was told: the same (SKU, node)
/// pairs and, while its units are not given back (expired, cancelled),
/// the same units of each.
fn same_allocations(view: &omniroute_client::OrderView, told: &[(String, String, u32)]) -> bool {
    let mut held: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    for a in &view.allocations {
        let units = u64::from(a.open) + u64::from(a.shipped) + u64::from(a.returned);
        *held.entry((a.sku.as_str(), a.node.as_str())).or_default() += units;
    }
    let mut answered: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    for (sku, node, qty) in told {
        *answered.entry((sku.as_str(), node.as_str())).or_default() += u64::from(*qty);
    }
    let given_back = view.state == order_states::EXPIRED || view.state == order_states::CANCELLED;
    if given_back {
        held.is_empty() || held.keys().eq(answered.keys())
    } else {
        held == answered
    }
}

/// Counts an archived order (closed, retired) by its follow-ups: what
/// was acknowledged shipped is held for good; unless it was cancelled
/// (counted when acknowledged), the rest of what it was told expired.
pub(crate) fn archived(id: u64, orders: &RunOrders<'_>, audit: &mut Audit) {
    let RunOrders {
        promises, endings, ..
    } = *orders;
    let mut shipped: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    for (sku, node, qty) in endings.shipped.get(&id).into_iter().flatten() {
        audit.hold_now(sku, node, u64::from(*qty));
        *shipped.entry((sku, node)).or_default() += u64::from(*qty);
    }
    if endings.cancelled.contains(&id) {
        return;
    }
    for (sku, node, told) in promises.get(&id).into_iter().flatten() {
        let left = shipped.entry((sku, node)).or_default();
        let kept = (*left).min(u64::from(*told));
        *left -= kept;
        audit.expire(sku, node, u64::from(*told) - kept);
    }
}
