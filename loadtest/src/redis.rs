//! The same schedule against a Redis Lua script, for the comparison.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use omniroute_loadtest::{Cell, Scenario, Summary, ANY_NODE};

use super::args::Args;
use super::orders::Orders;
use super::run::{measure, Target};
use crate::drive::Collector;
use crate::{drive, sinks};

/// What the Redis side does not do, or how it is durable, for the report.
pub(crate) fn redis_side_note(args: &Args) -> &'static str {
    if args.redis_fsync {
        "no routing; append-only file fsynced on every write"
    } else {
        "no routing, no fsync"
    }
}

/// What the Redis side sends per round trip, in words.
pub(crate) fn redis_batching() -> String {
    format!(
        "what is due each tick, on as few connections as carry {} orders each: one pipeline of EVALSHA calls",
        sinks::MIN_ORDERS_PER_CONNECTION_SEND
    )
}

/// The same orders, rate steps and connections against Redis with the
/// reservation script; stock per SKU as omniroute started with.
pub(crate) async fn compare_redis(
    args: &Args,
    scenario: &Scenario,
    starting: &BTreeMap<Cell, u64>,
    seed: u64,
    prefix: &str,
) -> Result<(Summary, hdrhistogram::Histogram<u64>, String), String> {
    println!(
        "redis: the same orders, rate steps and connections against redis-server with an all-or-nothing Lua reservation script ({})",
        redis_side_note(args)
    );
    let server = sinks::start_redis(args.redis_fsync).await?;
    let mut per_sku: BTreeMap<String, u64> = BTreeMap::new();
    for ((sku, _), units) in starting {
        *per_sku.entry(sku.clone()).or_default() += units;
    }
    let stock: Vec<(String, u64)> = per_sku.iter().map(|(s, u)| (s.clone(), *u)).collect();
    let (events, receiver) = drive::channel();
    let outstanding = Arc::new(AtomicU64::new(0));
    let (sink, mut admin) = sinks::redis(&server, args.connections, &stock, &events).await?;
    let collector = Collector::spawn(receiver, outstanding.clone(), None, false, "redis");
    let target = Target {
        label: "redis",
        sink,
        events,
        outstanding,
        collector,
        server_pid: server.pid(),
    };
    let measured = measure(
        target,
        Orders::new(scenario, seed, prefix),
        &scenario.name,
        args,
    )
    .await?;
    let mut audit = measured.run.audit;
    audit.starting = per_sku
        .iter()
        .map(|(s, u)| ((s.clone(), ANY_NODE.to_string()), *u))
        .collect();
    let mut skus: Vec<String> = per_sku.keys().cloned().collect();
    for (sku, _) in audit.told.keys() {
        if !per_sku.contains_key(sku) {
            skus.push(sku.clone());
        }
    }
    let left = sinks::redis_stock(&mut admin, &skus).await?;
    for (sku, units) in skus.iter().zip(left) {
        audit
            .final_atp
            .insert((sku.clone(), ANY_NODE.to_string()), units);
    }
    audit.held_now = audit.told.clone();
    let mut summary = measured.report;
    summary.whole_run.covers =
        "the whole Redis run: warmup and every step, audited by reading each SKU's stock back"
            .to_string();
    summary.over_time.covers = "not recorded for the Redis side".to_string();
    summary.whole_run.oversold_units = audit.oversold_units();
    summary.whole_run.stock_mismatch_units = audit.stock_mismatch_units();
    summary.highest_sustainable_rate = measured.highest;
    summary.p99_at_half_max_us = measured.p99_at_half_us;
    summary.durability = Some(sinks::redis_durability(&mut admin).await?);
    let version = sinks::redis_version(&mut admin).await?;
    Ok((summary, measured.histogram, version))
}
