//! Throughput of plan + reserve through the actor engine on the sample
//! network (1 to 3 lines), of one hot SKU, and of the sans-IO core alone,
//! so that the cost of the actor shell can be read off as a ratio; and of
//! the planner alone on a line in stock and on one sold out everywhere (a
//! flash sale's buyers after the sell-out).
//!
//! Run: `cargo bench --bench engine`. Each iteration routes `ROUND` orders
//! from `SUBMITTERS` concurrent callers in batches of `BATCH`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use omniroute::config::{Config, ValidConfig};
use omniroute::core::geo::GeoPoint;
use omniroute::core::model::{FulfilmentMethod, LineRequest, OrderRequest, ShipTo};
use omniroute::core::policy::{plan, Method, PlanLine, PlanRequest};
use omniroute::engine::{Engine, StockUpdate, SystemClock};
use omniroute::sample::SampleOrders;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SUBMITTERS: usize = 4;
const BATCH: usize = 1024;
const ROUND: usize = SUBMITTERS * BATCH;
/// Added to every stocked cell so that a long bench never runs dry and
/// measures routing, not rejection.
const DEEP_STOCK: i64 = 100_000_000;

fn sample_config() -> ValidConfig {
    Config::default_config().validate().expect("default config")
}

async fn start_engine(config: &ValidConfig) -> Engine {
    let mut settings = config.engine.clone();
    settings.expiry_tick_ms = 0;
    let engine = Engine::start(&settings, config.network.clone(), Arc::new(SystemClock))
        .await
        .unwrap();
    let mut config = config.clone();
    config.deepen_stock(DEEP_STOCK as u32);
    engine.load_stock(&config.stock).await.unwrap();
    engine
}

/// Routes `rounds` rounds of pre-built orders and returns the time taken.
async fn route_rounds(engine: &Engine, mut orders: Vec<OrderRequest>) -> Duration {
    let per_submitter = orders.len() / SUBMITTERS;
    let mut shares = Vec::new();
    for _ in 0..SUBMITTERS {
        let rest = orders.split_off(per_submitter);
        shares.push(std::mem::replace(&mut orders, rest));
    }
    let started = Instant::now();
    let tasks: Vec<_> = shares
        .into_iter()
        .map(|mut share| {
            let engine = engine.clone();
            tokio::spawn(async move {
                while !share.is_empty() {
                    let rest = share.split_off(share.len().min(BATCH));
                    let batch = std::mem::replace(&mut share, rest);
                    engine.submit_batch(batch).await.unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    started.elapsed()
}

fn engine_plan_reserve(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let config = sample_config();
    let engine = runtime.block_on(start_engine(&config));
    let skus = engine.index().sku_count();
    let mut group = c.benchmark_group("engine_plan_reserve");
    group.throughput(Throughput::Elements(ROUND as u64));
    group.sample_size(20);
    for lines in 1..=3 {
        let mut generator = SampleOrders::new(
            lines as u64,
            skus,
            "SKU-",
            "web",
            &format!("bench-{lines}-"),
        );
        group.bench_with_input(BenchmarkId::new("lines", lines), &lines, |b, &lines| {
            b.iter_custom(|rounds| {
                let orders: Vec<OrderRequest> = (0..rounds as usize * ROUND)
                    .map(|_| generator.next_order(lines))
                    .collect();
                runtime.block_on(route_rounds(&engine, orders))
            })
        });
    }
    group.finish();
    engine.shutdown();
}

fn hot_sku(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let config = sample_config();
    let engine = runtime.block_on(start_engine(&config));
    let hot: Vec<StockUpdate> = config
        .network
        .nodes
        .iter()
        .map(|n| StockUpdate::Set {
            sku: "HOT".into(),
            node: n.id.clone(),
            on_hand: 1_000_000_000,
            safety_stock: None,
        })
        .collect();
    runtime.block_on(engine.update_stock(&hot)).unwrap();
    let mut group = c.benchmark_group("hot_sku");
    group.throughput(Throughput::Elements(ROUND as u64));
    group.sample_size(20);
    let mut next_id = 0u64;
    group.bench_function("single_line_in_stock", |b| {
        b.iter_custom(|rounds| {
            let orders: Vec<OrderRequest> = (0..rounds as usize * ROUND)
                .map(|_| {
                    next_id += 1;
                    OrderRequest {
                        channel: "web".into(),
                        client_order_id: format!("hot-{next_id}"),
                        lines: vec![LineRequest {
                            sku: "HOT".into(),
                            qty: 1,
                        }],
                        ship_to: ShipTo {
                            lat: 48.86,
                            lon: 2.35,
                            market: Some("FR".into()),
                        },
                        method: FulfilmentMethod::Ship,
                        hold_ttl_ms: None,
                    }
                })
                .collect();
            runtime.block_on(route_rounds(&engine, orders))
        })
    });
    group.finish();
    engine.shutdown();
}

fn core_only(c: &mut Criterion) {
    let mut config = sample_config();
    config.deepen_stock(DEEP_STOCK as u32);
    let mut local = omniroute::sample::local_engine(&config, 0);
    let skus = local.index.sku_count();
    let mut group = c.benchmark_group("core_single_thread");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.sample_size(20);
    for lines in [1usize, 3] {
        let mut generator = SampleOrders::new(
            10 + lines as u64,
            skus,
            "SKU-",
            "web",
            &format!("core-{lines}-"),
        );
        group.bench_with_input(BenchmarkId::new("lines", lines), &lines, |b, &lines| {
            b.iter_custom(|rounds| {
                let batches: Vec<Vec<OrderRequest>> = (0..rounds)
                    .map(|_| (0..BATCH).map(|_| generator.next_order(lines)).collect())
                    .collect();
                let started = Instant::now();
                for batch in &batches {
                    local.submit_batch(batch, 0);
                }
                started.elapsed()
            })
        });
    }
    group.finish();
}

fn planner(c: &mut Criterion) {
    let config = sample_config();
    let local = omniroute::sample::local_engine(&config, 0);
    let sold_out = local.index.intern("SOLD-OUT").expect("a catalog slot");
    let network = &local.network;
    let web = network
        .channel_idx("web")
        .expect("the sample's web channel");
    let policy = network.policy(web);
    let berlin = GeoPoint::new(52.52, 13.40).expect("a point");
    let mut group = c.benchmark_group("planner_one_line");
    group.throughput(Throughput::Elements(PLANS));
    let stocked = (0..local.index.sku_count() as u32)
        .find(|&sku| local.index.atp_total(sku) > 0)
        .expect("a stocked sample SKU");
    for (name, sku) in [("in_stock", stocked), ("sold_out", sold_out)] {
        let lines = [PlanLine {
            line: 0,
            sku,
            qty: 1,
        }];
        let request = PlanRequest {
            order: 1,
            lines: &lines,
            ship_to: berlin,
            market: None,
            method: Method::Ship,
            excluded: &[],
            widen: false,
        };
        group.bench_function(name, |b| {
            b.iter(|| {
                for _ in 0..PLANS {
                    std::hint::black_box(plan(network, policy, &local.index, &request).is_ok());
                }
            })
        });
    }
    group.finish();
}

/// Plans per iteration of the planner bench.
const PLANS: u64 = 1024;

criterion_group!(benches, engine_plan_reserve, hot_sku, core_only, planner);
criterion_main!(benches);
