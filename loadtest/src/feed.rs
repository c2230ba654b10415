//! What changes under a run besides orders: the stock feed and node events.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use omniroute_client::{ClientError, StockAdjust};
use omniroute_loadtest::{Cell, Scenario};
use rand::{Rng, SeedableRng};

use super::orders::Orders;
use crate::admin::Admin;
use crate::drive::OrderSource;

/// The scenario's feed: restocks at a constant rate over its stock cells,
/// until `stop`. Returns the units acknowledged per cell and the requests
/// refused.
pub(crate) async fn feed(
    admin: Arc<Admin>,
    scenario: Scenario,
    starting: BTreeMap<Cell, u64>,
    seed: u64,
    stop: Arc<AtomicBool>,
) -> (BTreeMap<Cell, u64>, u64) {
    let feed = scenario.feed.clone().expect("a feed");
    let mut cells = FeedCells::new(&scenario, &starting, seed ^ 3);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let schedule = omniroute_loadtest::Schedule {
        start: Instant::now(),
        rate_per_s: feed.updates_per_s / feed.batch as f64,
    };
    let mut ticker = tokio::time::interval(Duration::from_millis(5));
    let mut requests = futures::stream::FuturesUnordered::new();
    let mut sent = 0;
    let mut restocked = BTreeMap::new();
    let mut errors = 0u64;
    let mut tally =
        |result: Result<(u32, u32, u32), ClientError>, entries: Vec<StockAdjust>| match result {
            Ok((_, _, 0)) => {
                for e in entries {
                    *restocked.entry((e.sku, e.node)).or_default() += e.delta as u64;
                }
            }
            _ => errors += 1,
        };
    use futures::StreamExt;
    while !stop.load(Ordering::Relaxed) {
        tokio::select! {
            _ = ticker.tick() => {
                while sent < schedule.due(Instant::now()) {
                    let entries: Vec<StockAdjust> = (0..feed.batch)
                        .map(|_| {
                            let (sku, node) = cells.next();
                            StockAdjust { sku, node, delta: i64::from(rng.random_range(feed.delta_min..=feed.delta_max)) }
                        })
                        .collect();
                    let admin = admin.clone();
                    requests.push(async move { (admin.stock_adjust(entries.clone()).await, entries) });
                    sent += 1;
                }
            }
            Some((result, entries)) = requests.next(), if !requests.is_empty() => tally(result, entries),
        }
    }
    while let Some((result, entries)) = requests.next().await {
        tally(result, entries);
    }
    (restocked, errors)
}

/// The cells a feed restocks: the scenario's own stock cells, uniformly;
/// or, for a scenario over the daemon's stock (a SKU range), a SKU drawn
/// as the orders draw theirs (so the feed follows demand) at one of the
/// nodes that stocked it at the start.
pub(crate) struct FeedCells {
    listed: Vec<Cell>,
    by_sku: BTreeMap<String, Vec<String>>,
    orders: Option<Orders>,
    rng: rand::rngs::StdRng,
}

impl FeedCells {
    fn new(scenario: &Scenario, starting: &BTreeMap<Cell, u64>, seed: u64) -> FeedCells {
        let listed: Vec<Cell> = scenario
            .stock
            .iter()
            .map(|s| (s.sku.clone(), s.node.clone()))
            .collect();
        let mut by_sku: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (sku, node) in starting.keys() {
            by_sku.entry(sku.clone()).or_default().push(node.clone());
        }
        FeedCells {
            orders: listed
                .is_empty()
                .then(|| Orders::new(scenario, seed, "feed-")),
            listed,
            by_sku,
            rng: rand::rngs::StdRng::seed_from_u64(seed),
        }
    }

    fn next(&mut self) -> Cell {
        let Some(orders) = self.orders.as_mut() else {
            return self.listed[self.rng.random_range(0..self.listed.len())].clone();
        };
        loop {
            let sku = orders.order(0).lines.swap_remove(0).0;
            if let Some(nodes) = self.by_sku.get(&sku) {
                return (sku, nodes[self.rng.random_range(0..nodes.len())].clone());
            }
        }
    }
}

/// The scenario's node events, `delay` plus each event's time from now.
pub(crate) async fn node_events(
    admin: Arc<Admin>,
    scenario: Scenario,
    delay: Duration,
) -> (u64, Vec<NodeEventDone>) {
    let start = tokio::time::Instant::now() + delay;
    let mut rerouted = 0;
    let mut done = Vec::new();
    for event in &scenario.events {
        tokio::time::sleep_until(start + Duration::from_secs_f64(event.at_s)).await;
        match admin.set_node_online(&event.node, event.online).await {
            Ok(count) => {
                println!(
                    "event: {} {} ({count} orders re-routed)",
                    event.node,
                    if event.online { "online" } else { "offline" }
                );
                rerouted += u64::from(count);
                done.push(NodeEventDone {
                    at: std::time::Instant::now(),
                    event: event.clone(),
                    rerouted: count,
                });
            }
            Err(e) => eprintln!("event: setting {} online={}: {e}", event.node, event.online),
        }
    }
    (rerouted, done)
}

/// A scenario's node event as the daemon acknowledged it.
pub(crate) struct NodeEventDone {
    /// When the daemon answered it.
    pub(crate) at: std::time::Instant,
    pub(crate) event: omniroute_loadtest::NodeEvent,
    /// Orders it re-routed.
    pub(crate) rerouted: u32,
}
