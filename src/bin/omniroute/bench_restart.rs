//! `omniroute bench-restart`: builds a data directory with the given cells
//! and reservations, snapshots it, and times a cold restart in a fresh
//! process (recovery, then the engine ready to accept orders).

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use futures::executor::block_on;
use omniroute::config::{Config, ValidConfig};
use omniroute::core::book::router_of_key;
use omniroute::core::sim::LocalParticipants;
use omniroute::engine::SystemClock;
use omniroute::journal::Durability;
use omniroute::limits::MAX_ORDERS_PER_BATCH;
use omniroute::sample::SampleOrders;
use omniroute::store;

/// Units in every built cell: orders never run a cell dry.
const UNITS_PER_CELL: u32 = 100;

fn bench_config(cells: u64) -> Result<ValidConfig, String> {
    let mut config = Config::default_config()
        .validate()
        .map_err(|e| e.to_string())?;
    let nodes = config.network.nodes.len() as u64;
    let skus = cells.div_ceil(nodes) as usize;
    config.engine.max_skus = config.engine.max_skus.max(skus + 1);
    config.engine.expiry_tick_ms = 0;
    config.store.durability = Durability::Fsync;
    // Capacity is not what this measures.
    for node in &mut config.network.nodes {
        node.daily_capacity = u32::MAX / 2;
    }
    Ok(config)
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// Builds the state in `dir`: `cells` stocked cells over the sample
/// network, `reservations` one-line orders routed by the real core, then
/// one snapshot per actor.
fn build(dir: &Path, config: &ValidConfig, cells: u64, reservations: u64) -> Result<(), String> {
    let network = Arc::new(config.network.clone());
    let now_ms = omniroute::engine::Clock::now_ms(&SystemClock);
    let lock = store::lock::lock(dir, store::Access::Write).map_err(|e| e.to_string())?;
    let opened = store::open(lock, &config.store, &config.engine, &network, now_ms)
        .map_err(|e| e.to_string())?;
    let mut state = opened.state;
    drop(opened.sequencer);
    let nodes = network.nodes.len() as u64;
    let skus = cells.div_ceil(nodes);
    let shard_count = state.shards.len() as u32;
    let mut made = 0u64;
    for s in 1..=skus {
        let sku = state
            .index
            .intern(&format!("B-{s}"))
            .map_err(|e| e.to_string())?;
        let shard = &mut state.shards[(sku % shard_count) as usize];
        for node in 0..nodes {
            if made == cells {
                break;
            }
            shard.set(sku, node as u16, UNITS_PER_CELL, Some(0));
            made += 1;
        }
    }
    let participants = LocalParticipants {
        shards: RefCell::new(std::mem::take(&mut state.shards)),
        nodes: RefCell::new(std::mem::take(&mut state.ledgers)),
        bumped: RefCell::new(Vec::new()),
    };
    let mut generator = SampleOrders::new(7, skus as usize, "B-", "web", "bench-");
    let routers = state.routers.len();
    let mut routed = 0u64;
    while routed < reservations {
        let want = (reservations - routed).min(MAX_ORDERS_PER_BATCH as u64) as usize;
        let mut by_router = vec![Vec::new(); routers];
        for _ in 0..want {
            let order = generator.next_order(1);
            by_router[router_of_key(&order.channel, &order.client_order_id, routers)].push(order);
        }
        for (r, batch) in by_router.into_iter().enumerate() {
            let decisions = block_on(state.routers[r].submit(&batch, now_ms, &participants));
            routed += decisions.iter().filter(|d| d.is_routed()).count() as u64;
        }
    }
    state.shards = participants.shards.into_inner();
    state.ledgers = participants.nodes.into_inner();
    store::write_state(dir, &state, 0).map_err(|e| e.to_string())
}

/// The build, in its own process.
pub fn build_child(dir: &Path, cells: u64, reservations: u64) -> Result<(), String> {
    let config = bench_config(cells)?;
    build(dir, &config, cells, reservations)
}

/// The timed part, in a fresh process: recover and start the engine.
pub async fn child(dir: &Path, cells: u64) -> Result<(), String> {
    let mut config = bench_config(cells)?;
    config.server.data_dir = dir.to_path_buf();
    let before = rss_bytes();
    let started = Instant::now();
    let omniroute::daemon::Recovery {
        engine,
        report,
        lock: _lock,
    } = omniroute::daemon::recover(&config, Arc::new(SystemClock))
        .await
        .map_err(|e| e.to_string())?;
    let recovered_ms = report.elapsed_ms;
    crate::return_freed_memory();
    let restart_ms = started.elapsed().as_millis();
    let used = rss_bytes().saturating_sub(before);
    println!(
        "recovered {} snapshots, {} orders, {} journal records in {recovered_ms} ms; engine ready at {restart_ms} ms",
        report.snapshots_loaded, report.orders, report.records_replayed
    );
    println!(
        "memory {} MiB for {cells} cells and {} orders: bytes_per_cell={:.1}",
        used >> 20,
        report.orders,
        used as f64 / cells as f64
    );
    println!("restart_ms={restart_ms}");
    engine.shutdown();
    Ok(())
}

pub async fn run(cells: u64, reservations: u64, keep: Option<PathBuf>) -> Result<(), String> {
    if cells == 0 {
        return Err("--cells must be at least 1".into());
    }
    let temporary = keep.is_none();
    let dir = keep.unwrap_or_else(|| {
        std::env::temp_dir().join(format!("omniroute-bench-restart-{}", std::process::id()))
    });
    let _ = std::fs::remove_dir_all(&dir);
    let config = bench_config(cells)?;
    let started = Instant::now();
    // The build runs in its own process too, so that its memory is given
    // back before the timed restart starts.
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let status = tokio::process::Command::new(&exe)
        .arg("bench-restart-build")
        .arg("--dir")
        .arg(&dir)
        .arg("--cells")
        .arg(cells.to_string())
        .arg("--reservations")
        .arg(reservations.to_string())
        .status()
        .await
        .map_err(|e| e.to_string())?;
    if !status.success() {
        return Err(format!("building the state failed: {status}"));
    }
    let _ = config;
    let size: u64 = std::fs::read_dir(store::snapshot_dir(&dir))
        .map_err(|e| e.to_string())?
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum();
    println!(
        "built {cells} cells and {reservations} reservations in {} ms; snapshots {} MiB in {}",
        started.elapsed().as_millis(),
        size >> 20,
        dir.display()
    );
    let status = tokio::process::Command::new(exe)
        .arg("bench-restart-child")
        .arg("--dir")
        .arg(&dir)
        .arg("--cells")
        .arg(cells.to_string())
        .status()
        .await
        .map_err(|e| e.to_string())?;
    if temporary {
        let _ = std::fs::remove_dir_all(&dir);
    }
    if !status.success() {
        return Err(format!("the restart failed: {status}"));
    }
    Ok(())
}
