//! The QUIC ingress end to end over loopback: pipelining, roles, and the
//! node allocation stream across a reconnect.

mod common;

use std::collections::HashMap;

use common::*;
use futures::future::join_all;
use omniroute_client::protocol::{event_kinds, ErrorCode, Request, Response};
use omniroute_client::{order, ClientError, Decision, OrderKey, StockSet};

fn key(channel: &str, id: &str) -> OrderKey {
    OrderKey {
        channel: channel.into(),
        client_order_id: id.into(),
    }
}

fn fixture_stock() -> String {
    let mut entries: Vec<(String, &str, u32)> = Vec::new();
    for s in 0..50 {
        entries.push((format!("P-{s}"), "WH-N", 1_000_000));
    }
    let entries: Vec<(&str, &str, u32)> = entries
        .iter()
        .map(|(s, n, q)| (s.as_str(), *n, *q))
        .collect();
    format!(
        "{}{}{}",
        channel("c", &["nearest"]),
        channel("web", &["nearest"]),
        stock(&entries)
    )
}

fn server_code(result: Result<impl std::fmt::Debug, ClientError>) -> u16 {
    match result {
        Err(ClientError::Server { code, .. }) => code,
        other => panic!("expected a server error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_pipelined_orders_on_one_stream() {
    // Proves 10 000 single Submit frames sent at once on one stream each get their own
    // answer: every decision carries the SKU and quantity of the order with the same request
    // id. (Raw frames: the client's own submit would batch them.)
    let dir = TempDir::new("pipeline");
    let (engine, server) = quic_server(&fixture_stock(), &dir).await;
    let client = client(&server, CHANNEL_C_TOKEN).await;
    let orders = fixture_orders("p");
    let stream = client.stream();
    let decisions = join_all(orders.iter().cloned().map(|o| async move {
        match stream.request(&Request::Submit(o)).await? {
            Response::Decision(decision) => Ok(decision),
            other => panic!("{other:?}"),
        }
    }))
    .await;
    check_each_answered(&engine, &orders, decisions).await;
    client.close().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_submits_on_one_client_travel_in_few_batch_frames() {
    // Proves the client batches concurrent submits by itself: 10 000 submitted at once are
    // each answered with their own order's allocation, in far fewer frames than orders.
    let dir = TempDir::new("auto-batch");
    let (engine, server) = quic_server(&fixture_stock(), &dir).await;
    let client = client(&server, CHANNEL_C_TOKEN).await;
    let orders = fixture_orders("b");
    let decisions = join_all(orders.iter().cloned().map(|o| client.submit(o))).await;
    check_each_answered(&engine, &orders, decisions).await;
    let frames = client.submit_frames();
    assert!(
        (10..=1_000).contains(&frames),
        "{frames} submit frames for 10 000 orders"
    );
    client.close().await;
    server.shutdown().await;
}

/// 10 000 orders of channel c over the fixture's 50 SKUs, 1 to 7 units.
fn fixture_orders(prefix: &str) -> Vec<omniroute_client::Order> {
    (0..10_000u32)
        .map(|i| {
            order(
                "c",
                &format!("{prefix}-{i}"),
                50.0,
                10.0,
                &[(&format!("P-{}", i % 50), 1 + i % 7)],
            )
        })
        .collect()
}

/// Each order routed with its own SKU and quantity, under its own id, and
/// the stock reserved adds up.
async fn check_each_answered(
    engine: &omniroute::engine::Engine,
    orders: &[omniroute_client::Order],
    decisions: Vec<Result<Decision, ClientError>>,
) {
    let mut ids = std::collections::HashSet::new();
    for (request, decision) in orders.iter().zip(decisions) {
        let Decision::Routed {
            order_id,
            allocations,
            ..
        } = decision.expect("answered")
        else {
            panic!("not routed")
        };
        assert!(ids.insert(order_id), "two orders got the same id");
        assert_eq!(allocations.len(), 1);
        assert_eq!(
            (allocations[0].sku.as_str(), allocations[0].qty),
            (request.lines[0].0.as_str(), request.lines[0].1),
            "{}",
            request.client_order_id
        );
    }
    let reserved: u64 = {
        let mut total = 0;
        for s in 0..50 {
            total += u64::from(
                engine
                    .cell(&format!("P-{s}"), "WH-N")
                    .await
                    .unwrap()
                    .reserved,
            );
        }
        total
    };
    assert_eq!(
        reserved,
        orders.iter().map(|o| u64::from(o.lines[0].1)).sum::<u64>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_role_is_allowed_its_requests_and_refused_the_rest() {
    // Proves the role matrix: a channel works its own orders only, a node its own stock
    // and allocations only, admin everything, and a refused request changes nothing.
    let dir = TempDir::new("roles");
    let stock_text = format!(
        "{}{}{}",
        channel("c", &["nearest"]),
        channel("web", &["nearest"]),
        stock(&[("SKU-1", "ST-1", 10)])
    );
    let (engine, server) = quic_server(&stock_text, &dir).await;
    let channel_c = client(&server, CHANNEL_C_TOKEN).await;
    let channel_web = client(&server, CHANNEL_WEB_TOKEN).await;
    let node = client(&server, NODE_ST1_TOKEN).await;
    let admin = client(&server, ADMIN_TOKEN).await;
    assert_eq!(
        (
            channel_c.role.as_str(),
            node.role.as_str(),
            admin.role.as_str()
        ),
        ("channel:c", "node:ST-1", "admin")
    );

    assert!(matches!(
        channel_c
            .submit(order("c", "o-1", 50.0, 10.0, &[("SKU-1", 2)]))
            .await
            .unwrap(),
        Decision::Routed { .. }
    ));
    let forbidden = ErrorCode::Forbidden as u16;
    assert_eq!(
        server_code(
            channel_web
                .submit(order("c", "o-2", 50.0, 10.0, &[("SKU-1", 1)]))
                .await
        ),
        forbidden
    );
    assert_eq!(
        server_code(channel_web.get_order(key("c", "o-1")).await),
        forbidden
    );
    assert_eq!(
        server_code(
            node.submit(order("c", "o-3", 50.0, 10.0, &[("SKU-1", 1)]))
                .await
        ),
        forbidden
    );
    assert_eq!(
        server_code(
            channel_c
                .stock_set(vec![StockSet {
                    sku: "SKU-1".into(),
                    node: "ST-1".into(),
                    on_hand: 99,
                    safety_stock: None
                }])
                .await
        ),
        forbidden
    );
    assert_eq!(
        server_code(
            node.stock_set(vec![StockSet {
                sku: "SKU-1".into(),
                node: "ST-2".into(),
                on_hand: 99,
                safety_stock: None
            }])
            .await
        ),
        forbidden
    );
    assert_eq!(
        server_code(node.subscribe("ST-2", 0).await.map(|_| ())),
        forbidden
    );
    assert_eq!(
        server_code(channel_c.set_node_online("ST-1", false).await),
        forbidden
    );
    assert_eq!(engine.cell("SKU-1", "ST-1").await.unwrap().on_hand, 10);
    assert_eq!(engine.cell("SKU-1", "ST-1").await.unwrap().reserved, 2);

    assert_eq!(
        channel_c
            .confirm(key("c", "o-1"))
            .await
            .unwrap()
            .client_order_id,
        "o-1"
    );
    assert_eq!(
        node.stock_set(vec![StockSet {
            sku: "SKU-1".into(),
            node: "ST-1".into(),
            on_hand: 12,
            safety_stock: None
        }])
        .await
        .unwrap(),
        (1, 0, 0)
    );
    assert_eq!(
        node.node_ship("ST-1", key("c", "o-1"), "SKU-1", 2)
            .await
            .unwrap()
            .allocations[0]
            .shipped,
        2
    );
    assert_eq!(
        admin.get_order(key("c", "o-1")).await.unwrap().state,
        omniroute_client::protocol::order_states::SHIPPED
    );
    assert!(!channel_c
        .availability("SKU-1", None)
        .await
        .unwrap()
        .is_empty());
    let bad = omniroute_client::Client::connect(
        server.addr,
        "localhost",
        omniroute_client::Trust::CaFile(server.cert_path.clone()),
        "no-such-token",
    )
    .await;
    assert_eq!(server_code(bad.map(|_| ())), ErrorCode::BadToken as u16);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_stream_delivers_every_allocation_once_across_a_reconnect() {
    // Proves a node's subscriber sees every allocation exactly once, in cursor order,
    // when it disconnects halfway and resumes from the last cursor it saw.
    let dir = TempDir::new("subscribe");
    let stock_text = format!(
        "{}{}{}",
        channel("c", &["nearest"]),
        channel("web", &["nearest"]),
        stock(&[("SKU-1", "ST-1", 100_000)])
    );
    let (_engine, server) = quic_server(&stock_text, &dir).await;
    let shop = client(&server, CHANNEL_C_TOKEN).await;
    let node = client(&server, NODE_ST1_TOKEN).await;
    let mut feed = node.subscribe("ST-1", 0).await.unwrap();
    assert_eq!(feed.next_cursor, 1);
    for i in 0..200 {
        shop.submit(order("c", &format!("a-{i}"), 50.0, 10.0, &[("SKU-1", 1)]))
            .await
            .unwrap();
    }
    let mut seen: HashMap<String, u64> = HashMap::new();
    let mut last_cursor = 0;
    while seen.len() < 120 {
        let event = feed.next().await.unwrap().unwrap();
        assert_eq!(event.cursor, last_cursor + 1, "cursors are gapless");
        assert_eq!(event.kind, event_kinds::ALLOCATED);
        assert!(
            seen.insert(event.client_order_id.clone(), event.cursor)
                .is_none(),
            "{} twice",
            event.client_order_id
        );
        last_cursor = event.cursor;
    }
    node.close().await;
    for i in 200..300 {
        shop.submit(order("c", &format!("a-{i}"), 50.0, 10.0, &[("SKU-1", 1)]))
            .await
            .unwrap();
    }
    let node = client(&server, NODE_ST1_TOKEN).await;
    let mut feed = node.subscribe("ST-1", last_cursor + 1).await.unwrap();
    assert_eq!(feed.next_cursor, last_cursor + 1);
    while seen.len() < 300 {
        let event = feed.next().await.unwrap().unwrap();
        assert_eq!(
            event.cursor,
            last_cursor + 1,
            "resumed without gap or repeat"
        );
        assert!(
            seen.insert(event.client_order_id.clone(), event.cursor)
                .is_none(),
            "{} twice",
            event.client_order_id
        );
        last_cursor = event.cursor;
    }
    assert_eq!(seen.len(), 300);
    // A release reaches the node too.
    shop.cancel(key("c", "a-0")).await.unwrap();
    let event = feed.next().await.unwrap().unwrap();
    assert_eq!(
        (event.kind, event.client_order_id.as_str()),
        (event_kinds::RELEASED, "a-0")
    );
    assert_eq!(
        server_code(node.subscribe("ST-1", last_cursor + 50).await.map(|_| ())),
        ErrorCode::CursorTooOld as u16
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_after_the_connection_closed_fails_at_once() {
    // Proves a client whose connection the server closed answers later requests with an
    // error instead of waiting forever for an answer nobody will send.
    let dir = TempDir::new("closed-client");
    let (engine, server) = quic_server(&fixture_stock(), &dir).await;
    let client = client(&server, CHANNEL_C_TOKEN).await;
    server.shutdown().await;
    // The client's reader sees the close and ends.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let answer = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        client.get_order(key("c", "nobody")),
    )
    .await
    .expect("an answer, not a hang");
    assert!(matches!(answer, Err(ClientError::Closed(_))), "{answer:?}");
    engine.shutdown();
}
