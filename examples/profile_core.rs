//! Routes sample orders through the in-memory core on one thread, for perf.
use std::time::Instant;

use omniroute::config::Config;
use omniroute::sample::SampleOrders;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let lines: usize = std::env::args().nth(1).map_or(1, |a| a.parse().unwrap());
    let orders: usize = std::env::args()
        .nth(2)
        .map_or(1_000_000, |a| a.parse().unwrap());
    let mut config = Config::default_config().validate().unwrap();
    config.deepen_stock(100_000_000);
    let mut local = omniroute::sample::local_engine(&config, 0);
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
