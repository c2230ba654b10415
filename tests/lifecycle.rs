//! The order lifecycle through the actor engine: submit, idempotent
//! resubmit, all-or-nothing, confirm, cancel, expiry, ship, node reject,
//! node offline, return, bulk stock feeds and availability queries.

mod common;

use common::*;
use omniroute::core::geo::GeoPoint;
use omniroute::core::model::{Decision, InvalidOrder, OrderState, RejectReason};
use omniroute::core::router::{OpError, OrderRef};
use omniroute::engine::{EngineError, StockUpdate};

fn key(id: &str) -> OrderRef {
    OrderRef::Key {
        channel: "c".into(),
        client_order_id: id.into(),
    }
}

/// `nearest` over the fixture network; SKU-1 at every node, SKU-2 and SKU-3 at the warehouses.
fn fixture() -> omniroute::config::ValidConfig {
    let mut entries: Vec<(&str, &str, u32)> = NODE_IDS.iter().map(|n| ("SKU-1", *n, 10)).collect();
    entries.extend([
        ("SKU-2", "WH-N", 4),
        ("SKU-2", "WH-S", 4),
        ("SKU-3", "WH-N", 1),
    ]);
    config(&format!(
        "{}{}",
        channel("c", &["nearest"]),
        stock(&entries)
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_line_order_is_all_or_nothing() {
    // Proves a 3-line order whose third line is short reserves nothing at all, across shards.
    let (engine, _) = engine(&fixture(), None).await;
    let decision = engine
        .submit(order(
            "c",
            "o-1",
            &[("SKU-1", 2), ("SKU-2", 3), ("SKU-3", 5)],
        ))
        .await;
    let Decision::Rejected(RejectReason::Short { lines }) = &decision else {
        panic!("{decision:?}")
    };
    assert_eq!(lines.len(), 1);
    assert_eq!(
        (lines[0].line, lines[0].requested, lines[0].available),
        (2, 5, 1)
    );
    for node in NODE_IDS {
        for sku in ["SKU-1", "SKU-2", "SKU-3"] {
            assert_eq!(
                engine.cell(sku, node).await.unwrap().reserved,
                0,
                "{sku} at {node}"
            );
        }
    }
    engine.check_invariants().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resubmission_returns_the_same_decision() {
    // Proves the client order id is an idempotency key: the same body gets the same
    // decision and reserves nothing more; a different body is refused.
    let (engine, _) = engine(&fixture(), None).await;
    let first = engine.submit(order("c", "o-1", &[("SKU-1", 2)])).await;
    assert!(first.is_routed());
    let again = engine.submit(order("c", "o-1", &[("SKU-1", 2)])).await;
    assert_eq!(first, again);
    assert_eq!(engine.cell("SKU-1", "ST-1").await.unwrap().reserved, 2);
    let changed = engine.submit(order("c", "o-1", &[("SKU-1", 3)])).await;
    assert_eq!(changed, Decision::Rejected(RejectReason::DuplicateMismatch));
    // The same id twice in one batch: one placement, one answer.
    let batch = engine
        .submit_batch(vec![
            order("c", "o-2", &[("SKU-1", 1)]),
            order("c", "o-2", &[("SKU-1", 1)]),
        ])
        .await
        .unwrap();
    assert_eq!(batch[0], batch[1]);
    assert_eq!(engine.cell("SKU-1", "ST-1").await.unwrap().reserved, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_orders_get_a_reason_and_change_nothing() {
    // Proves malformed orders are answered with a precise reason and reserve nothing.
    let (engine, _) = engine(&fixture(), None).await;
    let cases = [
        (order("c", "o-1", &[]), InvalidOrder::NoLines),
        (
            order("c", "o-2", &[("SKU-1", 0)]),
            InvalidOrder::BadQuantity { line: 0 },
        ),
        (
            order("c", "o-3", &[("SKU-1", 1), ("NOPE", 1)]),
            InvalidOrder::UnknownSku { line: 1 },
        ),
        (
            order("c", "o-4", &[("SKU-1", 1), ("SKU-1", 1)]),
            InvalidOrder::DuplicateSku { line: 1 },
        ),
        (
            order("zz", "o-5", &[("SKU-1", 1)]),
            InvalidOrder::UnknownChannel,
        ),
        (order("c", "", &[("SKU-1", 1)]), InvalidOrder::BadOrderId),
    ];
    for (request, reason) in cases {
        assert_eq!(
            engine.submit(request).await,
            Decision::Rejected(RejectReason::Invalid(reason))
        );
    }
    let mut bad_point = order("c", "o-6", &[("SKU-1", 1)]);
    bad_point.ship_to.lat = 123.0;
    assert_eq!(
        engine.submit(bad_point).await,
        Decision::Rejected(RejectReason::Invalid(InvalidOrder::BadShipTo))
    );
    let lines: Vec<(&str, u32)> = (0..65).map(|_| ("SKU-1", 1)).collect();
    assert_eq!(
        engine.submit(order("c", "o-7", &lines)).await,
        Decision::Rejected(RejectReason::Invalid(InvalidOrder::TooManyLines(65)))
    );
    assert_eq!(engine.cell("SKU-1", "ST-1").await.unwrap().reserved, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirm_and_cancel() {
    // Proves confirm makes a hold firm (it no longer expires) and cancel releases every unit.
    let (engine, clock) = engine(&fixture(), None).await;
    engine.submit(order("c", "o-1", &[("SKU-1", 3)])).await;
    let confirmed = engine.confirm(key("o-1")).await.unwrap();
    assert_eq!(confirmed.state, OrderState::Confirmed);
    clock.advance(24 * 3_600_000);
    assert_eq!(engine.tick().await, 0);
    assert_eq!(engine.cell("SKU-1", "ST-1").await.unwrap().reserved, 3);
    let cancelled = engine.cancel(key("o-1")).await.unwrap();
    assert_eq!(cancelled.state, OrderState::Cancelled);
    assert_eq!(engine.cell("SKU-1", "ST-1").await.unwrap().reserved, 0);
    assert!(matches!(
        engine.cancel(key("o-1")).await,
        Err(EngineError::Order(OpError::NotOpen(OrderState::Cancelled)))
    ));
    assert!(matches!(
        engine.confirm(key("nope")).await,
        Err(EngineError::Order(OpError::UnknownOrder))
    ));
    engine.check_invariants().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unconfirmed_holds_expire_on_time() {
    // Proves a hold is released by the expiry timer exactly when its TTL has passed, not before.
    let (engine, clock) = engine(&fixture(), None).await;
    let mut request = order("c", "o-1", &[("SKU-1", 4)]);
    request.hold_ttl_ms = Some(60_000);
    engine.submit(request).await;
    clock.advance(59_999);
    assert_eq!(engine.tick().await, 0);
    assert_eq!(engine.cell("SKU-1", "ST-1").await.unwrap().reserved, 4);
    clock.advance(1);
    assert_eq!(engine.tick().await, 1);
    assert_eq!(engine.cell("SKU-1", "ST-1").await.unwrap().reserved, 0);
    assert_eq!(
        engine.get(key("o-1")).await.unwrap().state,
        OrderState::Expired
    );
    assert!(engine.confirm(key("o-1")).await.is_err());
    engine.check_invariants().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ship_in_parts_then_return() {
    // Proves shipping takes units out of on_hand and reserved, in parts, and a return
    // restocks the node that received it.
    let (engine, _) = engine(&fixture(), None).await;
    engine.submit(order("c", "o-1", &[("SKU-1", 5)])).await;
    assert!(matches!(
        engine.ship(key("o-1"), "ST-1", "SKU-1", 1).await,
        Err(EngineError::Order(OpError::NotConfirmed))
    ));
    engine.confirm(key("o-1")).await.unwrap();
    engine.ship(key("o-1"), "ST-1", "SKU-1", 2).await.unwrap();
    let cell = engine.cell("SKU-1", "ST-1").await.unwrap();
    assert_eq!((cell.on_hand, cell.reserved), (8, 3));
    assert!(matches!(
        engine.ship(key("o-1"), "ST-1", "SKU-1", 4).await,
        Err(EngineError::Order(OpError::ExceedsOpen {
            requested: 4,
            limit: 3
        }))
    ));
    assert!(matches!(
        engine.ship(key("o-1"), "WH-N", "SKU-1", 1).await,
        Err(EngineError::Order(OpError::NoSuchAllocation))
    ));
    let record = engine.ship(key("o-1"), "ST-1", "SKU-1", 3).await.unwrap();
    assert_eq!(record.state, OrderState::Shipped);
    let cell = engine.cell("SKU-1", "ST-1").await.unwrap();
    assert_eq!((cell.on_hand, cell.reserved), (5, 0));
    // Returned at the other store: that store's shelf grows.
    engine
        .return_units(key("o-1"), "ST-2", "SKU-1", 2)
        .await
        .unwrap();
    assert_eq!(engine.cell("SKU-1", "ST-2").await.unwrap().on_hand, 12);
    assert!(matches!(
        engine.return_units(key("o-1"), "ST-2", "SKU-1", 4).await,
        Err(EngineError::Order(OpError::ExceedsShipped {
            requested: 4,
            limit: 3
        }))
    ));
    engine.check_invariants().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_rejection_reroutes_and_corrects_stock() {
    // Proves a node rejection releases the units there, sets the node's reported count,
    // and routes the units to the next node by policy, never back to the rejecting node.
    let (engine, _) = engine(&fixture(), None).await;
    engine.submit(order("c", "o-1", &[("SKU-1", 3)])).await;
    let record = engine
        .node_reject(key("o-1"), "ST-1", &[("SKU-1", 0)])
        .await
        .unwrap();
    let open: Vec<(u16, u32)> = record
        .allocations
        .iter()
        .filter(|a| a.open > 0)
        .map(|a| (a.node, a.open))
        .collect();
    assert_eq!(open, vec![(ST_2, 3)]);
    let st1 = engine.cell("SKU-1", "ST-1").await.unwrap();
    assert_eq!((st1.on_hand, st1.reserved), (0, 0));
    assert_eq!(engine.cell("SKU-1", "ST-2").await.unwrap().reserved, 3);
    // Stock comes back at ST-1, ST-2 rejects too: ST-1 is excluded for this order for good.
    engine
        .update_stock(&[StockUpdate::Set {
            sku: "SKU-1".into(),
            node: "ST-1".into(),
            on_hand: 10,
            safety_stock: None,
        }])
        .await
        .unwrap();
    let record = engine.node_reject(key("o-1"), "ST-2", &[]).await.unwrap();
    let open: Vec<u16> = record
        .allocations
        .iter()
        .filter(|a| a.open > 0)
        .map(|a| a.node)
        .collect();
    assert_eq!(open, vec![WH_N]);
    assert!(matches!(
        engine.node_reject(key("o-1"), "ST-2", &[]).await,
        Err(EngineError::Order(OpError::NoSuchAllocation))
    ));
    engine.check_invariants().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_offline_reroutes_unshipped_allocations() {
    // Proves taking a node offline moves every unshipped allocation it had elsewhere and
    // keeps new orders away from it until it is back online.
    let (engine, _) = engine(&fixture(), None).await;
    for i in 0..4 {
        engine
            .submit(order("c", &format!("o-{i}"), &[("SKU-1", 2)]))
            .await;
    }
    assert_eq!(engine.cell("SKU-1", "ST-1").await.unwrap().reserved, 8);
    assert_eq!(engine.set_node_online("ST-1", false).await.unwrap(), 4);
    assert_eq!(engine.cell("SKU-1", "ST-1").await.unwrap().reserved, 0);
    assert_eq!(engine.cell("SKU-1", "ST-2").await.unwrap().reserved, 8);
    let fresh = engine.submit(order("c", "o-9", &[("SKU-1", 1)])).await;
    assert_eq!(fresh.allocations()[0].node, ST_2);
    engine.set_node_online("ST-1", true).await.unwrap();
    let back = engine.submit(order("c", "o-10", &[("SKU-1", 1)])).await;
    assert_eq!(back.allocations()[0].node, ST_1);
    assert!(engine.node_stats("ST-1").await.unwrap().online);
    engine.check_invariants().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_feed_in_bulk_sets_adjusts_and_bumps() {
    // Proves bulk set and adjust from a WMS feed, new SKUs joining the catalog, a count
    // below what is reserved re-routing the reservations that no longer fit, and an
    // unknown node refusing the whole batch.
    let (engine, _) = engine(&fixture(), None).await;
    engine.submit(order("c", "o-1", &[("SKU-1", 6)])).await;
    let report = engine
        .update_stock(&[
            StockUpdate::Set {
                sku: "SKU-NEW".into(),
                node: "WH-S".into(),
                on_hand: 7,
                safety_stock: Some(2),
            },
            StockUpdate::Adjust {
                sku: "SKU-1".into(),
                node: "WH-N".into(),
                delta: -4,
            },
            StockUpdate::Set {
                sku: "SKU-1".into(),
                node: "ST-1".into(),
                on_hand: 2,
                safety_stock: None,
            },
        ])
        .await
        .unwrap();
    assert_eq!(report.applied, 3);
    assert_eq!(report.bumped.iter().map(|b| b.qty).sum::<u32>(), 4);
    assert_eq!(engine.cell("SKU-NEW", "WH-S").await.unwrap().atp(), 5);
    assert_eq!(engine.cell("SKU-1", "WH-N").await.unwrap().on_hand, 6);
    let record = engine.get(key("o-1")).await.unwrap();
    let open: u32 = record.allocations.iter().map(|a| a.open).sum();
    assert_eq!(open, 6, "the bumped units were placed again: {record:?}");
    assert_eq!(engine.cell("SKU-1", "ST-1").await.unwrap().reserved, 2);
    let refused = engine
        .update_stock(&[StockUpdate::Set {
            sku: "SKU-1".into(),
            node: "NOWHERE".into(),
            on_hand: 1,
            safety_stock: None,
        }])
        .await;
    assert!(matches!(refused, Err(EngineError::UnknownNode(_))));
    engine.check_invariants().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn availability_and_nearest_nodes() {
    // Proves the endless-aisle queries: ATP of a SKU across nodes, in node_priority order
    // (WH-S is priority 1, WH-N 2), and the nearest N nodes to a point that have it,
    // nearest first.
    let (engine, _) = engine(&fixture(), None).await;
    let all = engine.availability("SKU-2").unwrap();
    assert_eq!(
        all.iter().map(|s| (s.node, s.atp)).collect::<Vec<_>>(),
        vec![(WH_S, 4), (WH_N, 4)]
    );
    let point = GeoPoint::new(50.0, 10.0).unwrap();
    let nearest = engine.nearest("SKU-1", point, 1, 3).unwrap();
    assert_eq!(
        nearest.iter().map(|s| s.node).collect::<Vec<_>>(),
        vec![ST_1, ST_2, WH_N]
    );
    assert!(engine.nearest("SKU-2", point, 5, 3).unwrap().is_empty());
    assert!(matches!(
        engine.availability("NOPE"),
        Err(EngineError::UnknownSku(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_is_told_its_orders_changes_without_a_journal() {
    // Proves an engine with no journal (its orders never copied for a record) still tells
    // the channel each change, read from the book: routed, then confirmed, with cursors 1, 2.
    let (engine, _) = engine(&fixture(), None).await;
    let mut statuses = engine.follow_orders("c", 0).await.unwrap();
    assert!(engine
        .submit(order("c", "o-1", &[("SKU-1", 2)]))
        .await
        .is_routed());
    engine.confirm(key("o-1")).await.unwrap();
    let mut told = Vec::new();
    for _ in 0..2 {
        let next = statuses.live.recv();
        let (cursor, status) = tokio::time::timeout(std::time::Duration::from_secs(10), next)
            .await
            .expect("a status within 10 s")
            .unwrap();
        told.push((cursor, status.change, status.state));
    }
    use omniroute::core::status::OrderChange;
    assert_eq!(
        told,
        vec![
            (1, OrderChange::Routed, OrderState::Held),
            (2, OrderChange::Confirmed, OrderState::Confirmed),
        ]
    );
}

/// One thread: the actors run only while the test awaits, so the order in
/// which messages reach a router's mailbox is the order the test sends them.
#[tokio::test(flavor = "current_thread")]
async fn a_listing_lets_what_is_queued_behind_it_go_before_its_page() {
    // Proves a router lists a big book in steps with the messages that came meanwhile in
    // between: an order submitted after a listing began is answered while the listing is
    // still under way, and a confirm sent after it began, of an order the page shows, is
    // applied before the page is taken (the page shows it confirmed), where one pass over
    // the book in one turn would answer the page before either.
    use omniroute::limits::{MAX_ORDERS_PER_BATCH, MAX_ORDERS_SCANNED_PER_LIST_STEP};
    let config = config(&format!(
        "{}{}",
        channel("c", &["nearest"]),
        stock(&[("SKU-1", "WH-S", 100_000)])
    ));
    let mut settings = config.engine.clone();
    settings.routers = 1;
    let (engine, _) = engine(&config, Some(settings)).await;
    let count = 3 * MAX_ORDERS_SCANNED_PER_LIST_STEP;
    let names: Vec<String> = (0..count).map(|i| format!("o-{i}")).collect();
    for batch in names.chunks(MAX_ORDERS_PER_BATCH) {
        let orders = batch
            .iter()
            .map(|n| order("c", n, &[("SKU-1", 1)]))
            .collect();
        let decisions = engine.submit_batch(orders).await.unwrap();
        assert!(decisions.iter().all(Decision::is_routed));
    }
    let query = |limit| omniroute::engine::OrderQuery {
        channel: "c",
        state: None,
        node: None,
        created_from_ms: 0,
        created_to_ms: 0,
        after: 0,
        limit,
    };
    let (first, _) = engine.list_orders(query(1)).await.unwrap();
    let first = first[0].id;

    let listing = engine.list_orders(query(10));
    tokio::pin!(listing);
    assert!(
        futures::poll!(&mut listing).is_pending(),
        "the listing is sent"
    );
    let confirm = engine.confirm(OrderRef::Id(first));
    tokio::pin!(confirm);
    assert!(
        futures::poll!(&mut confirm).is_pending(),
        "queued behind it"
    );
    let submit = engine.submit_batch(vec![order("c", "late", &[("SKU-1", 1)])]);
    tokio::pin!(submit);
    assert!(
        futures::poll!(&mut submit).is_pending(),
        "queued behind it too"
    );
    let decided = tokio::select! {
        biased;
        _ = &mut listing => panic!("the page came before the order queued behind it"),
        decided = &mut submit => decided.unwrap(),
    };
    assert!(decided[0].is_routed());
    let (listed, confirmed) = tokio::join!(listing, confirm);
    assert_eq!(confirmed.unwrap().state, OrderState::Confirmed);
    let (page, next) = listed.unwrap();
    assert_eq!(page.len(), 10);
    assert!(next.is_some());
    assert_eq!(page[0].id, first);
    assert_eq!(
        page[0].state,
        OrderState::Confirmed,
        "the confirm queued behind the listing went before its last step"
    );
}
