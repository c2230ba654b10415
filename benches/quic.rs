//! Orders per second over QUIC on loopback: the daemon's engine and ingress
//! in process, one client connection pipelining on its request stream.
//!
//! Run: `cargo bench --bench quic`. Each iteration sends `ROUND` orders at
//! once on one stream and waits for every answer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use futures::future::join_all;
use omniroute::config::Config;
use omniroute::engine::{Engine, SystemClock};
use omniroute_client::{Client, Order, Trust};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ROUND: usize = 8192;
const CONNECTIONS: usize = 2;

fn bench_quic(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let data_dir =
        std::env::temp_dir().join(format!("omniroute-bench-quic-{}", std::process::id()));
    let mut config = Config::default_config().validate().unwrap();
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    config.server.data_dir = data_dir.clone();
    config.engine.expiry_tick_ms = 0;
    config.deepen_stock(100_000_000);
    let (engine, server) = runtime.block_on(async {
        let engine = Engine::start(
            &config.engine,
            config.network.clone(),
            Arc::new(SystemClock),
        )
        .await
        .unwrap();

        engine.load_stock(&config.stock).await.unwrap();
        let server = omniroute::server::start(engine.clone(), &config.server)
            .await
            .unwrap();
        (engine, server)
    });
    let clients: Vec<Client> = runtime.block_on(async {
        let mut clients = Vec::new();
        for _ in 0..CONNECTIONS {
            clients.push(
                Client::connect(
                    server.addr,
                    "localhost",
                    Trust::CaFile(server.cert_path.clone()),
                    "dev-web-token",
                )
                .await
                .unwrap(),
            );
        }
        clients
    });
    let skus = engine.index().sku_count();
    let mut group = c.benchmark_group("quic_pipelined");
    group.throughput(Throughput::Elements(ROUND as u64));
    group.sample_size(15);
    group.measurement_time(Duration::from_secs(8));
    for lines in [1usize, 3] {
        let mut generator = omniroute::sample::SampleOrders::new(
            lines as u64,
            skus,
            "SKU-",
            "web",
            &format!("q{lines}-"),
        );
        group.bench_with_input(BenchmarkId::new("lines", lines), &lines, |b, &lines| {
            b.iter_custom(|rounds| {
                let orders: Vec<Order> = (0..rounds as usize * ROUND)
                    .map(|_| {
                        let o = generator.next_order(lines);
                        Order {
                            channel: o.channel,
                            client_order_id: o.client_order_id,
                            lat: o.ship_to.lat,
                            lon: o.ship_to.lon,
                            market: o.ship_to.market,
                            method: omniroute_client::Method::Ship,
                            hold_ttl_ms: None,
                            lines: o.lines.into_iter().map(|l| (l.sku, l.qty)).collect(),
                        }
                    })
                    .collect();
                runtime.block_on(async {
                    let started = Instant::now();
                    for round in orders.chunks(ROUND) {
                        let per_client = round.len().div_ceil(CONNECTIONS);
                        let sends =
                            round
                                .chunks(per_client)
                                .zip(&clients)
                                .flat_map(|(part, client)| {
                                    part.iter().map(move |o| client.submit(o.clone()))
                                });
                        for answer in join_all(sends).await {
                            answer.unwrap();
                        }
                    }
                    started.elapsed()
                })
            })
        });
    }
    group.finish();
    runtime.block_on(async move {
        for client in clients {
            client.close().await;
        }
        server.shutdown().await;
    });
    engine.shutdown();
    let _ = std::fs::remove_dir_all(data_dir);
}

criterion_group!(benches, bench_quic);
criterion_main!(benches);
