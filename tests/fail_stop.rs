//! Memory is never ahead of the journal, in process: a failed journal
//! write leaves nothing answered from memory (a resubmission, a read), a
//! feed that would overfill the catalog interns none of its SKUs, and
//! follow-up steps too big for one record are journaled in runs.
//!
//! These tests inject faults through the process-wide failpoint registry,
//! so they run one at a time (`SERIAL`).

mod common;

use std::path::Path;
use std::sync::Arc;

use common::{channel, config, order, stock, TempDir};
use omniroute::config::ValidConfig;
use omniroute::core::model::{Decision, OrderState};
use omniroute::core::router::OrderRef;
use omniroute::engine::{Engine, EngineError, ManualClock, StockUpdate};

const T0_MS: u64 = 1_800_000_000_000;

/// One test at a time: failpoints are process-wide.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A failpoint set for as long as it is held, removed even if the test
/// fails (the registry outlives it).
struct Failpoint(&'static str);

impl Failpoint {
    fn set(name: &'static str, actions: &str) -> Failpoint {
        fail::cfg(name, actions).expect("failpoint actions parse");
        Failpoint(name)
    }
}

impl Drop for Failpoint {
    fn drop(&mut self) {
        fail::remove(self.0);
    }
}

fn fixture() -> ValidConfig {
    config(&format!(
        "{}{}",
        channel("web", &["nearest"]),
        stock(&[("SKU-1", "WH-N", 1000), ("SKU-2", "WH-N", 1000)])
    ))
}

async fn open(dir: &Path, config: &ValidConfig, clock: Arc<ManualClock>) -> Engine {
    let mut config = config.clone();
    config.server.data_dir = dir.to_path_buf();
    omniroute::daemon::recover(&config, clock)
        .await
        .expect("the directory opens")
        .engine
}

fn key(id: &str) -> OrderRef {
    OrderRef::Key {
        channel: "web".into(),
        client_order_id: id.into(),
    }
}

async fn submit(engine: &Engine, id: &str, qty: u32) -> Result<Decision, EngineError> {
    engine
        .submit_batch(vec![order("web", id, &[("SKU-1", qty)])])
        .await
        .map(|mut d| d.remove(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_write_is_never_answered_from_memory() {
    // Proves that once a journal write fails, the order it carried is answered Unavailable,
    // and so is its resubmission and a read of it (memory has it; the disk does not), the
    // engine reports the storage failure, and a restart has exactly the orders answered.
    let _serial = SERIAL.lock().await;
    let dir = TempDir::new("fail-stop");
    let config = fixture();
    let clock = Arc::new(ManualClock::new(T0_MS));
    let engine = open(&dir.0, &config, clock.clone()).await;
    assert!(submit(&engine, "kept", 3).await.unwrap().is_routed());

    let fault = Failpoint::set(omniroute::faults::points::JOURNAL_WRITE, "return(ENOSPC)");
    let lost = submit(&engine, "lost", 5).await;
    assert!(matches!(lost, Err(EngineError::Unavailable)), "{lost:?}");
    let again = submit(&engine, "lost", 5).await;
    assert!(
        matches!(again, Err(EngineError::Unavailable)),
        "a resubmission is not answered from memory: {again:?}"
    );
    let read = engine.get(key("lost")).await;
    assert!(matches!(read, Err(EngineError::Unavailable)), "{read:?}");
    let failure = engine.health().failure().expect("the engine has failed");
    assert!(failure.contains("No space left on device"), "{failure}");
    let confirm = engine.confirm(key("kept")).await;
    assert!(
        matches!(confirm, Err(EngineError::Unavailable)),
        "{confirm:?}"
    );
    engine.shutdown();
    drop(fault);

    let engine = open(&dir.0, &config, clock).await;
    assert_eq!(
        engine.get(key("kept")).await.unwrap().state,
        OrderState::Held
    );
    assert!(
        engine.get(key("lost")).await.is_err(),
        "never durable, never there"
    );
    assert_eq!(engine.cell("SKU-1", "WH-N").await.unwrap().reserved, 3);
    engine.check_invariants().await.unwrap();
    engine.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feed_that_overfills_the_catalog_interns_none_of_its_skus() {
    // Proves that a stock feed whose new SKUs do not all fit is refused before any is
    // interned, so a later feed's SKU ids match the journal and the directory reopens.
    let _serial = SERIAL.lock().await;
    let dir = TempDir::new("catalog");
    let mut config = fixture();
    config.engine.max_skus = 4;
    let clock = Arc::new(ManualClock::new(T0_MS));
    let engine = open(&dir.0, &config, clock.clone()).await;
    let set = |sku: &str| StockUpdate::Set {
        sku: sku.into(),
        node: "WH-N".into(),
        on_hand: 7,
        safety_stock: None,
    };
    let refused = engine
        .update_stock(&[set("NEW-1"), set("NEW-2"), set("NEW-3")])
        .await;
    assert!(
        matches!(refused, Err(EngineError::CatalogFull(_))),
        "{refused:?}"
    );
    assert_eq!(
        engine.index().sku_count(),
        2,
        "none of the refused SKUs was interned"
    );
    engine.update_stock(&[set("NEW-9")]).await.unwrap();
    engine.shutdown();

    let engine = open(&dir.0, &config, clock).await;
    assert_eq!(engine.cell("NEW-9", "WH-N").await.unwrap().on_hand, 7);
    assert!(engine.cell("NEW-1", "WH-N").await.is_err());
    engine.shutdown();
}

/// SKUs of the mass tests: 32 lines an order make about a kilobyte of
/// record, so `MASS_ORDERS` of them are far past the 32 MiB a record may
/// hold.
fn mass_skus() -> Vec<String> {
    (0..32).map(|s| format!("M-{s}")).collect()
}

const MASS_ORDERS: usize = 40_000;

/// A config with a million of each mass SKU at each of `nodes`.
fn mass_config(nodes: &[&str]) -> ValidConfig {
    let skus = mass_skus();
    let entries: Vec<(&str, &str, u32)> = skus
        .iter()
        .flat_map(|s| nodes.iter().map(move |n| (s.as_str(), *n, 1_000_000)))
        .collect();
    config(&format!(
        "{}{}",
        channel("web", &["nearest"]),
        stock(&entries)
    ))
}

/// Submits `MASS_ORDERS` orders of one unit of every mass SKU, ids
/// `{prefix}-{batch}-{i}`, each held `hold_ttl_ms`; all must route.
async fn submit_mass(engine: &Engine, prefix: &str, hold_ttl_ms: Option<u64>) {
    let skus = mass_skus();
    let lines: Vec<(&str, u32)> = skus.iter().map(|s| (s.as_str(), 1)).collect();
    for batch in 0..MASS_ORDERS / 1000 {
        let orders = (0..1000)
            .map(|i| {
                let mut o = order("web", &format!("{prefix}-{batch}-{i}"), &lines);
                o.hold_ttl_ms = hold_ttl_ms;
                o
            })
            .collect();
        let decisions = engine.submit_batch(orders).await.unwrap();
        assert!(decisions.iter().all(Decision::is_routed));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mass_expiry_is_journaled_in_runs_that_each_fit_a_record() {
    // Proves that holds expiring together, more than one journal record may hold, all
    // expire durably: before, the one record was refused after memory changed.
    let _serial = SERIAL.lock().await;
    let dir = TempDir::new("mass-expiry");
    let config = mass_config(&["WH-N"]);
    let clock = Arc::new(ManualClock::new(T0_MS));
    let engine = open(&dir.0, &config, clock.clone()).await;
    submit_mass(&engine, "m", Some(60_000)).await;
    clock.advance(120_000);
    assert_eq!(engine.tick().await, MASS_ORDERS);
    assert!(
        engine.health().failure().is_none(),
        "{:?}",
        engine.health().failure()
    );
    engine.shutdown();

    let engine = open(&dir.0, &config, clock).await;
    assert_eq!(
        engine.get(key("m-39-999")).await.unwrap().state,
        OrderState::Expired
    );
    assert_eq!(engine.cell("M-0", "WH-N").await.unwrap().reserved, 0);
    engine.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_node_going_offline_is_journaled_in_runs() {
    // Proves that a node going offline with more open orders than one journal record may
    // hold re-routes them all durably: before, the one record was refused after memory
    // changed.
    let _serial = SERIAL.lock().await;
    let dir = TempDir::new("mass-offline");
    let config = mass_config(&["WH-N", "WH-S"]);
    let clock = Arc::new(ManualClock::new(T0_MS));
    let engine = open(&dir.0, &config, clock.clone()).await;
    submit_mass(&engine, "o", None).await;
    let held_at =
        |e: Engine, node: &'static str| async move { e.cell("M-0", node).await.unwrap().reserved };
    let before = held_at(engine.clone(), "WH-N").await;
    assert!(before > 0, "the nearest node took orders");
    engine.set_node_online("WH-N", false).await.unwrap();
    assert!(
        engine.health().failure().is_none(),
        "{:?}",
        engine.health().failure()
    );
    assert_eq!(held_at(engine.clone(), "WH-N").await, 0);
    engine.shutdown();

    let engine = open(&dir.0, &config, clock).await;
    assert_eq!(
        held_at(engine.clone(), "WH-N").await,
        0,
        "the re-route was journaled"
    );
    assert_eq!(held_at(engine.clone(), "WH-S").await, MASS_ORDERS as u32);
    engine.shutdown();
}
