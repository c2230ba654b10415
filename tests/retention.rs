//! Bounded state: a rejected order is not kept and is evaluated again when
//! resubmitted, its answer waits for the state it saw to be durable, and a
//! closed order retires after `[orders] retention_ms` (the idempotency
//! window, which a restart keeps), answering ARCHIVED after it.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::{channel, config, order, stock, TempDir};
use omniroute::config::ValidConfig;
use omniroute::core::book::partition_of_key;
use omniroute::core::model::{Decision, OrderState, RejectReason};
use omniroute::core::router::{OpError, OrderRef};
use omniroute::engine::{Engine, EngineError, ManualClock, StockUpdate};

const T0_MS: u64 = 1_800_000_000_000;
const RETENTION_MS: u64 = 60_000;

fn fixture() -> ValidConfig {
    let mut config = config(&format!(
        "{}{}",
        channel("web", &["nearest"]),
        stock(&[("SKU-1", "WH-N", 50), ("SKU-3", "WH-B", 5)])
    ));
    config.engine.order_retention_ms = RETENTION_MS;
    // Ticks come from the test, on its clock.
    config.engine.expiry_tick_ms = 0;
    config
}

/// Recovers `dir` and starts the engine on it, as the daemon does.
async fn open(dir: &Path, config: &ValidConfig, clock: Arc<ManualClock>) -> Engine {
    let mut config = config.clone();
    config.server.data_dir = dir.to_path_buf();
    omniroute::daemon::recover(&config, clock)
        .await
        .expect("the directory recovers")
        .engine
}

fn key(id: &str) -> OrderRef {
    OrderRef::Key {
        channel: "web".into(),
        client_order_id: id.into(),
    }
}

fn order_id(decision: &Decision) -> u64 {
    match decision {
        Decision::Routed { order_id, .. } => *order_id,
        other => panic!("expected routed, got {other:?}"),
    }
}

/// A client order id whose key falls in the same partition as `id`'s: a
/// partition's newest order is kept past its window (so ids are never
/// given out twice), so a test that retires `id` submits one of these after it.
fn same_partition_as(id: &str) -> String {
    let partition = partition_of_key("web", id);
    (0..)
        .map(|i| format!("later-{i}"))
        .find(|other| partition_of_key("web", other) == partition)
        .expect("some key shares the partition")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_order_retires_after_its_window_and_then_answers_archived() {
    // Proves a cancelled order answers resubmissions with its decision inside the window, leaves
    // memory after it (GetOrder then says ARCHIVED, not unknown, and the key is free again), while
    // an open order stays however long it is open.
    let dir = TempDir::new("retention-window");
    let clock = Arc::new(ManualClock::new(T0_MS));
    let engine = open(&dir.0, &fixture(), clock.clone()).await;
    let first = engine.submit(order("web", "o-1", &[("SKU-1", 1)])).await;
    let kept = engine.submit(order("web", "o-2", &[("SKU-1", 1)])).await;
    engine.confirm(key("o-2")).await.unwrap();
    engine.cancel(key("o-1")).await.unwrap();
    let later = same_partition_as("o-1");
    order_id(&engine.submit(order("web", &later, &[("SKU-1", 1)])).await);
    engine.tick().await;

    clock.advance(RETENTION_MS - 1);
    engine.tick().await;
    let again = engine.submit(order("web", "o-1", &[("SKU-1", 1)])).await;
    assert_eq!(
        again, first,
        "inside the window a resubmission gets the decision"
    );
    assert_eq!(
        engine.get(key("o-1")).await.unwrap().state,
        OrderState::Cancelled
    );

    clock.advance(2);
    engine.tick().await;
    match engine.get(key("o-1")).await {
        Err(EngineError::Order(OpError::Archived)) => {}
        other => panic!("o-1 after its window: {other:?}"),
    }
    match engine.get(key("never-sent")).await {
        Err(EngineError::Order(OpError::UnknownOrder)) => {}
        other => panic!("an order never sent: {other:?}"),
    }
    assert!(matches!(
        engine.cancel(key("o-1")).await,
        Err(EngineError::Order(OpError::Archived))
    ));
    match engine.get(OrderRef::Id(order_id(&first))).await {
        Err(EngineError::Order(OpError::Archived)) => {}
        other => panic!("o-1 by id after its window: {other:?}"),
    }
    let never_given = order_id(&first) + 1_000_000 * 256;
    assert!(matches!(
        engine.get(OrderRef::Id(never_given)).await,
        Err(EngineError::Order(OpError::UnknownOrder))
    ));

    clock.advance(10 * RETENTION_MS);
    engine.tick().await;
    let open_one = engine.get(key("o-2")).await.unwrap();
    assert_eq!(open_one.state, OrderState::Confirmed, "an open order stays");
    assert_eq!(open_one.id, order_id(&kept));

    let reused = engine.submit(order("web", "o-1", &[("SKU-1", 1)])).await;
    assert_ne!(
        order_id(&reused),
        order_id(&first),
        "the key is free: a new order"
    );
    engine.check_invariants().await.unwrap();
    engine.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_order_is_not_kept_and_is_evaluated_again_when_resubmitted() {
    // Proves a rejection reserves nothing and is not kept: GetOrder does not know it, and the same
    // order resubmitted after a restock is routed instead of answered SHORT again.
    let dir = TempDir::new("retention-rejected");
    let clock = Arc::new(ManualClock::new(T0_MS));
    let engine = open(&dir.0, &fixture(), clock.clone()).await;
    let short = engine.submit(order("web", "big", &[("SKU-3", 6)])).await;
    assert!(
        matches!(short, Decision::Rejected(RejectReason::Short { .. })),
        "{short:?}"
    );
    assert!(matches!(
        engine.get(key("big")).await,
        Err(EngineError::Order(OpError::UnknownOrder))
    ));
    let again = engine.submit(order("web", "big", &[("SKU-3", 6)])).await;
    assert!(matches!(
        again,
        Decision::Rejected(RejectReason::Short { .. })
    ));

    engine
        .update_stock(&[StockUpdate::Set {
            sku: "SKU-3".into(),
            node: "WH-B".into(),
            on_hand: 10,
            safety_stock: None,
        }])
        .await
        .unwrap();
    let routed = engine.submit(order("web", "big", &[("SKU-3", 6)])).await;
    order_id(&routed);
    assert_eq!(
        engine.get(key("big")).await.unwrap().state,
        OrderState::Held
    );
    engine.shutdown();
}

// The pause is a lock only the journal's writer thread takes, never a task.
#[allow(clippy::await_holding_lock)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejection_is_answered_only_once_the_state_it_saw_is_durable() {
    // Proves a buyer told SHORT because another order holds the last units is not told before
    // that order's record is durable: a crash in between would bring the units back and make the
    // answer false. The journal's writer is held while both orders are submitted.
    let dir = TempDir::new("retention-durable");
    let clock = Arc::new(ManualClock::new(T0_MS));
    let engine = open(&dir.0, &fixture(), clock.clone()).await;
    let journal = engine.sequencer().journal().expect("a journal");
    let held = journal.pause();

    let first = tokio::spawn({
        let engine = engine.clone();
        async move {
            engine
                .submit(order("web", "all-five", &[("SKU-3", 5)]))
                .await
        }
    });
    // The first order holds every unit and waits for its record.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while engine.cell("SKU-3", "WH-B").await.unwrap().held < 5 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the hold never came"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let second = tokio::spawn({
        let engine = engine.clone();
        async move {
            engine
                .submit(order("web", "one-more", &[("SKU-3", 1)]))
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !first.is_finished(),
        "the routed order waits for its record"
    );
    assert!(
        !second.is_finished(),
        "the rejection was answered before the order it saw was durable"
    );

    drop(held);
    order_id(&first.await.unwrap());
    let second = second.await.unwrap();
    assert!(
        matches!(second, Decision::Rejected(RejectReason::Short { .. })),
        "{second:?}"
    );
    engine.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resubmission_inside_the_window_gets_the_decision_across_a_restart() {
    // Proves the idempotency window survives a restart (from a snapshot and from the journal): a
    // shipped order resubmitted after it gets its decision and reserves nothing more, and the
    // window then runs from the restart.
    let dir = TempDir::new("retention-restart");
    let clock = Arc::new(ManualClock::new(T0_MS));
    let config = fixture();
    let engine = open(&dir.0, &config, clock.clone()).await;
    let shipped = engine.submit(order("web", "s-1", &[("SKU-1", 2)])).await;
    engine.confirm(key("s-1")).await.unwrap();
    let node = engine.get(key("s-1")).await.unwrap().allocations[0].node;
    let node = engine.network().nodes[node as usize].id.clone();
    engine.ship(key("s-1"), &node, "SKU-1", 2).await.unwrap();
    omniroute::store::snapshot(&engine, &dir.0, false)
        .await
        .unwrap();
    let cancelled = engine.submit(order("web", "c-1", &[("SKU-1", 1)])).await;
    engine.cancel(key("c-1")).await.unwrap();
    engine.tick().await;
    let atp_before = engine.cell("SKU-1", &node).await.unwrap();
    engine.shutdown();
    drop(engine);

    clock.advance(RETENTION_MS / 2);
    let engine = open(&dir.0, &config, clock.clone()).await;
    for (id, decision) in [("s-1", &shipped), ("c-1", &cancelled)] {
        let lines: &[(&str, u32)] = if id == "s-1" {
            &[("SKU-1", 2)]
        } else {
            &[("SKU-1", 1)]
        };
        let again = engine.submit(order("web", id, lines)).await;
        assert_eq!(&again, decision, "{id} after the restart");
    }
    assert_eq!(
        engine.cell("SKU-1", &node).await.unwrap(),
        atp_before,
        "nothing reserved again"
    );
    assert_eq!(
        engine.get(key("s-1")).await.unwrap().state,
        OrderState::Shipped
    );

    // Retention counts from the restart for the orders it found closed.
    engine.tick().await;
    for id in ["s-1", "c-1"] {
        engine
            .submit(order("web", &same_partition_as(id), &[("SKU-1", 1)]))
            .await;
    }
    clock.advance(RETENTION_MS + 1);
    engine.tick().await;
    for id in ["s-1", "c-1"] {
        assert!(
            matches!(
                engine.get(key(id)).await,
                Err(EngineError::Order(OpError::Archived))
            ),
            "{id} retires a window after the restart"
        );
    }
    engine.shutdown();
}
