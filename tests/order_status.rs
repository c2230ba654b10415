//! A channel's order-status stream and order listing over the real daemon
//! binary: every change of a node outage and a stock count storm seen
//! exactly once across a reconnect and a restart, and pages that together
//! list every order once.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::daemon::Daemon;
use common::*;
use omniroute_client::protocol::{order_changes, order_states, ErrorCode};
use omniroute_client::{Client, ClientError, OrderKey, OrderQuery, OrderStatus, StockSet};

/// How long a follower waits for the next status before it counts the
/// stream as caught up.
const QUIET_MS: u64 = 1500;

fn key(id: &str) -> OrderKey {
    OrderKey {
        channel: "web".into(),
        client_order_id: id.into(),
    }
}

/// Reads statuses until `count` arrived (or, with `None`, until none came
/// for `QUIET_MS`).
async fn read(
    statuses: &mut omniroute_client::Subscription<OrderStatus>,
    count: Option<usize>,
) -> Vec<OrderStatus> {
    let mut seen = Vec::new();
    while count.is_none_or(|n| seen.len() < n) {
        let wait = if count.is_some() { 20_000 } else { QUIET_MS };
        match tokio::time::timeout(Duration::from_millis(wait), statuses.next()).await {
            Ok(Some(status)) => seen.push(status.expect("a status")),
            Ok(None) => panic!("the status stream ended"),
            Err(_) if count.is_none() => break,
            Err(_) => panic!("only {} of {count:?} statuses came", seen.len()),
        }
    }
    seen
}

/// (cursor, order, change) of each status: what "the same stream" means.
fn trace(statuses: &[OrderStatus]) -> Vec<(u64, String, &'static str)> {
    statuses
        .iter()
        .map(|s| {
            let change = order_changes::name(s.change);
            (s.cursor, s.order.client_order_id.clone(), change)
        })
        .collect()
}

async fn submit_eight(admin: &Client) {
    for i in 0..8 {
        let order = omniroute_client::order("web", &format!("o-{i}"), 50.0, 10.0, &[("SKU-1", 1)]);
        let decision = admin.submit(order).await.unwrap();
        assert!(matches!(
            decision,
            omniroute_client::Decision::Routed { .. }
        ));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_sees_every_change_once_across_a_reconnect_and_a_restart() {
    // Proves the channel stream carries each change of its orders (routed, confirmed, a
    // node outage's re-routes, a rejection's, a stock count's re-routes or shortfalls,
    // ship, return, cancel) exactly once, with gapless cursors, to a follower that disconnects and
    // resumes from its last cursor, and that a restart keeps the same cursors.
    let dir = TempDir::new("order-status");
    let config = web_config_file(&dir);
    let data = dir.0.join("data");
    let mut daemon = Daemon::start(&data, Some(&config), "off").await;
    let admin = daemon.client(ADMIN_TOKEN).await;
    let web = daemon.client(CHANNEL_WEB_TOKEN).await;
    let mut first = web.follow_orders("web", 0).await.unwrap();
    assert_eq!(first.next_cursor, 1);

    // Eight orders: nearest first puts four at ST-1, then WH-N and WH-S.
    submit_eight(&admin).await;
    for i in 0..4 {
        admin.confirm(key(&format!("o-{i}"))).await.unwrap();
    }
    // The outage: ST-1's four orders move elsewhere.
    assert_eq!(admin.set_node_online("ST-1", false).await.unwrap(), 4);
    let seen_first = read(&mut first, Some(8 + 4 + 4)).await;
    web.close().await;

    // While the follower is away: a node rejects an order, a count takes
    // WH-N's units back, an order ships, some come back, one is cancelled.
    let refused = admin.get_order(key("o-5")).await.unwrap();
    let at = refused.allocations.iter().find(|a| a.open > 0).unwrap();
    admin
        .node_reject(&at.node.clone(), key("o-5"), vec![])
        .await
        .unwrap();
    let count = StockSet {
        sku: "SKU-1".into(),
        node: "WH-N".into(),
        on_hand: 0,
        safety_stock: None,
    };
    admin.stock_set(vec![count]).await.unwrap();
    let shipped = admin.get_order(key("o-0")).await.unwrap();
    let at = shipped.allocations.iter().find(|a| a.open > 0).unwrap();
    let (node, sku) = (at.node.clone(), at.sku.clone());
    admin.node_ship(&node, key("o-0"), &sku, 1).await.unwrap();
    admin
        .return_units(&node, key("o-0"), &sku, 1)
        .await
        .unwrap();
    admin.cancel(key("o-7")).await.unwrap();

    let resume = seen_first.last().unwrap().cursor + 1;
    let web = daemon.client(CHANNEL_WEB_TOKEN).await;
    let mut again = web.follow_orders("web", resume).await.unwrap();
    assert_eq!(again.next_cursor, resume);
    let mut whole = web.follow_orders("web", 0).await.unwrap();
    let all = read(&mut whole, None).await;
    let rest = read(&mut again, Some(all.len() + 1 - resume as usize)).await;
    let both: Vec<_> = seen_first.iter().chain(&rest).cloned().collect();
    assert_eq!(
        trace(&both),
        trace(&all),
        "the resumed stream is the whole stream"
    );
    let cursors: Vec<u64> = all.iter().map(|s| s.cursor).collect();
    assert_eq!(cursors, (1..=all.len() as u64).collect::<Vec<_>>());

    // Each step told, once, as what it was.
    let mut changes: HashMap<(String, &str), usize> = HashMap::new();
    for (_, order, change) in trace(&all) {
        *changes.entry((order, change)).or_default() += 1;
    }
    let of = |order: &str, change: u8| {
        changes
            .get(&(order.to_string(), order_changes::name(change)))
            .copied()
            .unwrap_or(0)
    };
    for i in 0..8 {
        assert_eq!(of(&format!("o-{i}"), order_changes::ROUTED), 1, "o-{i}");
    }
    for i in 0..4 {
        let order = format!("o-{i}");
        assert_eq!(of(&order, order_changes::CONFIRMED), 1, "{order}");
        assert_eq!(of(&order, order_changes::REROUTED_NODE_OFFLINE), 1);
    }
    let away = all
        .iter()
        .find(|s| s.change == order_changes::REROUTED_NODE_OFFLINE)
        .unwrap();
    assert_eq!(away.released_from, vec!["ST-1".to_string()]);
    let counted = all
        .iter()
        .filter(|s| {
            s.change == order_changes::REROUTED_STOCK_COUNT || s.change == order_changes::SHORT
        })
        .count();
    assert!(
        counted > 0,
        "the count at WH-N moved orders: {:?}",
        trace(&all)
    );
    assert!(all
        .iter()
        .filter(|s| s.change == order_changes::SHORT)
        .all(|s| !s.order.short.is_empty()));
    assert_eq!(
        of("o-0", order_changes::PARTLY_SHIPPED) + of("o-0", order_changes::SHIPPED),
        1
    );
    assert_eq!(of("o-0", order_changes::RETURNED), 1);
    assert_eq!(of("o-7", order_changes::CANCELLED), 1);
    assert_eq!(of("o-5", order_changes::REROUTED_NODE_REJECTED), 1);
    let last = all.last().unwrap();
    assert_eq!(last.order.state, order_states::CANCELLED);
    web.close().await;
    admin.close().await;

    // A restart keeps every cursor, and the next change follows on.
    assert!(daemon.terminate().await.success());
    let daemon = Daemon::start(&data, Some(&config), "off").await;
    let web = daemon.client(CHANNEL_WEB_TOKEN).await;
    let mut after = web.follow_orders("web", 0).await.unwrap();
    let kept = read(&mut after, Some(all.len())).await;
    assert_eq!(trace(&kept), trace(&all));
    web.confirm(key("o-4")).await.unwrap();
    let next = read(&mut after, Some(1)).await;
    assert_eq!(next[0].cursor, all.len() as u64 + 1);
    assert_eq!(next[0].change, order_changes::CONFIRMED);
    web.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_list_every_order_once_and_filters_hold() {
    // Proves pages of a channel's orders together list each order exactly once, in id
    // order, that state, node and time filters hold on every page, and that a bad limit, an
    // unknown channel, a node or another channel's token get clear errors.
    let dir = TempDir::new("order-list");
    let config = web_config_file(&dir);
    let mut daemon = Daemon::start(&dir.0.join("data"), Some(&config), "off").await;
    let admin = daemon.client(ADMIN_TOKEN).await;
    submit_eight(&admin).await;
    for i in [1, 3, 5] {
        admin.confirm(key(&format!("o-{i}"))).await.unwrap();
    }
    let web = daemon.client(CHANNEL_WEB_TOKEN).await;
    let query = |state: u8, node: &str, after: u64, limit: u16| OrderQuery {
        channel: "web".into(),
        state,
        node: node.into(),
        created_from_ms: 0,
        created_to_ms: 0,
        after,
        limit,
    };
    let list_all = |state: u8, node: &'static str| {
        let web = &web;
        async move {
            let (mut ids, mut after, mut pages) = (Vec::new(), 0, 0);
            loop {
                let (orders, next) = web.list_orders(query(state, node, after, 3)).await.unwrap();
                assert!(orders.len() <= 3);
                ids.extend(orders.iter().map(|listed| {
                    let o = &listed.order;
                    (o.order_id, o.client_order_id.clone(), o.state)
                }));
                pages += 1;
                if next == 0 {
                    return (ids, pages);
                }
                after = next;
            }
        }
    };
    let (every, pages) = list_all(0, "").await;
    assert_eq!(pages, 3);
    let mut names: Vec<String> = every.iter().map(|(_, name, _)| name.clone()).collect();
    names.sort();
    assert_eq!(names, (0..8).map(|i| format!("o-{i}")).collect::<Vec<_>>());
    assert!(every.windows(2).all(|w| w[0].0 < w[1].0), "in id order");
    let (confirmed, _) = list_all(order_states::CONFIRMED, "").await;
    let confirmed: Vec<&str> = confirmed.iter().map(|(_, n, _)| n.as_str()).collect();
    assert_eq!(confirmed.len(), 3);
    assert!(confirmed.iter().all(|n| ["o-1", "o-3", "o-5"].contains(n)));
    let (at_st1, _) = list_all(0, "ST-1").await;
    assert_eq!(at_st1.len(), 4, "nearest first filled ST-1's four units");

    // By time: every order was routed within the last minute, none after now.
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let mut recent = query(0, "", 0, 100);
    recent.created_from_ms = now_ms - 60_000;
    let (orders, _) = web.list_orders(recent.clone()).await.unwrap();
    assert_eq!(orders.len(), 8);
    assert!(orders
        .iter()
        .all(|o| (now_ms - 60_000..now_ms + 1_000).contains(&o.created_at_ms)));
    recent.created_from_ms = now_ms + 2_000;
    assert!(web.list_orders(recent.clone()).await.unwrap().0.is_empty());
    recent.created_from_ms = 0;
    recent.created_to_ms = now_ms - 60_000;
    assert!(web.list_orders(recent).await.unwrap().0.is_empty());

    let refused =
        |result: Result<(Vec<omniroute_client::ListedOrder>, u64), ClientError>| match result {
            Err(ClientError::Server { code, message }) => (code, message),
            other => panic!("expected a refusal, got {other:?}"),
        };
    let (code, message) = refused(web.list_orders(query(0, "", 0, 1001)).await);
    assert_eq!(code, ErrorCode::TooLarge as u16);
    assert!(message.contains("1 to 1000 orders per page"), "{message}");
    let (code, _) = refused(web.list_orders(query(0, "", 0, 0)).await);
    assert_eq!(code, ErrorCode::TooLarge as u16);
    let (code, message) = refused(web.list_orders(query(9, "", 0, 5)).await);
    assert_eq!(code, ErrorCode::Malformed as u16, "{message}");
    let (code, _) = refused(web.list_orders(query(0, "NOWHERE", 0, 5)).await);
    assert_eq!(code, ErrorCode::UnknownNode as u16);
    let mut elsewhere = query(0, "", 0, 5);
    elsewhere.channel = "c".into();
    let (code, _) = refused(web.list_orders(elsewhere.clone()).await);
    assert_eq!(code, ErrorCode::Forbidden as u16);
    let (none, next) = admin.list_orders(elsewhere.clone()).await.unwrap();
    assert!(
        none.is_empty() && next == 0,
        "channel c has no orders, which is no error"
    );
    elsewhere.channel = "nowhere".into();
    let (code, _) = refused(admin.list_orders(elsewhere).await);
    assert_eq!(code, ErrorCode::UnknownChannel as u16);
    web.close().await;
    admin.close().await;
    assert!(daemon.terminate().await.success());
}
