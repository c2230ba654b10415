//! Exhausted descriptors in the real daemon: with a low descriptor limit
//! and more silent HTTP connections than it allows, the journal keeps
//! rotating, snapshots keep being written, an honest client is answered,
//! and the daemon stops cleanly.

mod common;

use std::path::Path;
use std::time::Duration;

use common::daemon::Daemon;
use omniroute_protocol::{Decision, Method, Order, StockSet};

/// The daemon's descriptor limit: far below what 600 connections and the
/// default caps (1024 gateway, 64 admin) would take.
const NOFILE: u64 = 420;
const SILENT_CONNECTIONS: usize = 600;
/// Enough orders for several 1 MiB segments and snapshots.
const ORDERS: usize = 12_000;

fn write_config(dir: &Path) -> std::path::PathBuf {
    let text = include_str!("../config/default.toml")
        .replace("segment_bytes = 67108864", "segment_bytes = 1048576")
        .replace(
            "snapshot_interval_ms = 60000",
            "snapshot_interval_ms = 1000",
        )
        .replace("skus = 10000", "skus = 10");
    let path = dir.join("descriptors.toml");
    std::fs::write(&path, text).expect("config written");
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_cannot_take_the_journals_descriptors() {
    // Proves that a daemon limited to 420 descriptors, with 600 silent HTTP connections
    // open, lowers its connection caps, keeps rotating segments and writing snapshots, answers
    // every order routed, and stops with status 0.
    omniroute::descriptors::raise_to_hard_limit();
    let dir = common::TempDir::new("descriptors");
    let config = write_config(&dir.0);
    let mut daemon =
        Daemon::start_limited(&dir.0, Some(&config), "127.0.0.1:0", &[], Some(NOFILE)).await;
    let lowered = daemon.log_line_with("lowered").await;
    assert!(lowered.contains("http.max_connections"), "{lowered}");
    let mut silent = Vec::new();
    for _ in 0..SILENT_CONNECTIONS {
        if let Ok(stream) = tokio::net::TcpStream::connect(daemon.http).await {
            silent.push(stream);
        }
    }
    let admin = daemon.client("dev-admin-token").await;
    let stock = (0..4)
        .map(|s| StockSet {
            sku: format!("D-{s}"),
            node: "WH-DE-HAM".into(),
            on_hand: 1_000_000,
            safety_stock: Some(0),
        })
        .collect();
    admin.stock_set(stock).await.expect("stock");
    let web = daemon.client("dev-web-token").await;
    let orders: Vec<Order> = (0..ORDERS)
        .map(|i| Order {
            channel: "web".into(),
            client_order_id: format!("d-{i}"),
            lat: 53.55,
            lon: 10.0,
            market: Some("DE".into()),
            method: Method::Ship,
            hold_ttl_ms: Some(600_000),
            lines: vec![(format!("D-{}", i % 4), 1)],
        })
        .collect();
    for chunk in orders.chunks(500) {
        let decisions = web.submit_batch(chunk.to_vec()).await.expect("answered");
        for decision in decisions {
            let decision = decision.expect("an order's answer");
            assert!(matches!(decision, Decision::Routed { .. }), "{decision:?}");
        }
    }
    // One snapshot a second: one written while the connections are held.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let snapshot = daemon.log_line_with("snapshot at LSN").await;
    assert!(snapshot.contains("written in"), "{snapshot}");
    let readiness = ureq::get(&format!("http://{}/readyz", daemon.admin())).call();
    assert!(readiness.is_ok(), "ready throughout: {readiness:?}");
    drop(silent);
    let status = daemon.terminate().await;
    assert!(status.success(), "the daemon stops cleanly ({status})");
}
