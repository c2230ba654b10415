//! Routes sample orders through the in-memory core on one thread, for perf.
use std::sync::Arc;
use std::time::Instant;

use omniroute::config::Config;
use omniroute::core::index::AvailabilityIndex;
use omniroute::core::local::LocalEngine;
use omniroute::engine::StockUpdate;
use omniroute::sample::SampleOrders;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let lines: usize = std::env::args().nth(1).map_or(1, |a| a.parse().unwrap());
    let orders: usize = std::env::args()
        .nth(2)
        .map_or(1_000_000, |a| a.parse().unwrap());
    let config = Config::default_config().validate().unwrap();
    let index = Arc::new(AvailabilityIndex::new(
        config.network.nodes.len(),
        config.engine.max_skus,
    ));
    let mut local = LocalEngine::new(
        Arc::new(config.network.clone()),
        index,
        config.engine.shards,
        0,
    );
    for update in &config.stock {
        if let StockUpdate::Set {
            sku, node, on_hand, ..
        } = update
        {
            local.stock_set(
                sku,
                config.network.node_idx(node).unwrap(),
                on_hand + 100_000_000,
                None,
                0,
            );
        }
    }
    let mut generator = SampleOrders::new(5, local.index.sku_count(), "SKU-", "web", "p-");
    let batches: Vec<Vec<_>> = (0..orders / 1024)
        .map(|_| (0..1024).map(|_| generator.next_order(lines)).collect())
        .collect();
    let started = Instant::now();
    let mut routed = 0;
    for batch in &batches {
        routed += local
            .submit_batch(batch, 0)
            .iter()
            .filter(|d| d.is_routed())
            .count();
    }
    let elapsed = started.elapsed();
    println!(
        "{routed} routed of {} in {:.0} ms: {:.0} orders/s on one thread",
        batches.len() * 1024,
        elapsed.as_secs_f64() * 1e3,
        (batches.len() * 1024) as f64 / elapsed.as_secs_f64()
    );
}
