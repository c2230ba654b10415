//! Operating the real daemon: the admin port's metrics and health, a
//! graceful SIGTERM under load, and policy reload by SIGHUP and by HTTP.

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::daemon::Daemon;
use common::TempDir;
use omniroute_client::{Client, ClientError};
use omniroute_protocol::{Decision, Method, Order, OrderKey};

fn http() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into()
}

/// (status, body) of a GET.
fn get(admin: SocketAddr, path: &str) -> Result<(u16, String), ureq::Error> {
    let mut response = http().get(format!("http://{admin}{path}")).call()?;
    let status = response.status().as_u16();
    Ok((status, response.body_mut().read_to_string()?))
}

fn post(admin: SocketAddr, path: &str, token: Option<&str>) -> (u16, serde_json::Value) {
    let mut request = http().post(format!("http://{admin}{path}"));
    if let Some(token) = token {
        request = request.header("Authorization", &format!("Bearer {token}"));
    }
    let mut response = request.send_empty().expect("the admin port answers");
    let status = response.status().as_u16();
    let body = response.body_mut().read_to_string().unwrap();
    (status, serde_json::from_str(&body).expect("a JSON body"))
}

/// Whether the JSON answer's array `field` holds `key`.
fn lists(body: &serde_json::Value, field: &str, key: &str) -> bool {
    body[field]
        .as_array()
        .is_some_and(|keys| keys.iter().any(|k| k == key))
}

/// The value of the sample `name{labels}` (labels as rendered), or 0 when absent.
fn sample(page: &str, series: &str) -> f64 {
    page.lines()
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == series).then(|| value.parse().unwrap())
        })
        .unwrap_or(0.0)
}

fn order(id: &str, sku: &str, qty: u32, lat: f64, lon: f64, hold_ttl_ms: Option<u32>) -> Order {
    Order {
        channel: "web".into(),
        client_order_id: id.into(),
        lat,
        lon,
        market: None,
        method: Method::Ship,
        hold_ttl_ms,
        lines: vec![(sku.into(), qty)],
    }
}

fn key(id: &str) -> OrderKey {
    OrderKey {
        channel: "web".into(),
        client_order_id: id.into(),
    }
}

const BERLIN: (f64, f64) = (52.52, 13.40);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_expose_every_family_and_move_with_orders() {
    // Proves /metrics has the families operators alert on, and that orders, latency, expired
    // holds, re-routes, the journal and connections move them.
    let dir = TempDir::new("ops-metrics");
    let daemon = Daemon::start(&dir.0, None, "127.0.0.1:0").await;
    let web = daemon.client("dev-web-token").await;
    let node = daemon.client("dev-node-wh-de-ham").await;
    let (status, before) = get(daemon.admin(), "/metrics").unwrap();
    assert_eq!(status, 200);
    for family in [
        "omniroute_orders_total",
        "omniroute_routing_latency_seconds",
        "omniroute_reroutes_total",
        "omniroute_holds_expired_total",
        "omniroute_queue_depth",
        "omniroute_orders_in_flight",
        "omniroute_journal_fsync_seconds",
        "omniroute_journal_commit_records",
        "omniroute_snapshot_age_seconds",
        "omniroute_connections",
        "omniroute_ready",
    ] {
        assert!(
            before.contains(&format!("# TYPE {family} ")),
            "{family} missing from:\n{before}"
        );
    }
    assert_eq!(
        sample(&before, r#"omniroute_connections{role="channel:web"}"#),
        1.0
    );
    assert_eq!(
        sample(&before, r#"omniroute_queue_depth{queue="shard",id="3"}"#),
        0.0
    );
    // Node mailboxes are counted too, named by node id.
    assert!(
        before.contains(r#"omniroute_queue_depth{queue="node",id="WH-DE-HAM"} "#),
        "no node queue depth in:\n{before}"
    );
    let routed = r#"omniroute_orders_total{channel="web",outcome="routed"}"#;
    let short = r#"omniroute_orders_total{channel="web",outcome="short"}"#;
    // 20 orders that route, one that cannot (more units than the network has), one with a hold
    // of 1 ms that the expiry tick releases, one that its node rejects (saying it has none of
    // the SKU, which also moves the 20 others held there: bumped by the count).
    for i in 0..20 {
        let decision = web
            .submit(order(
                &format!("m-{i}"),
                "SKU-1",
                1,
                BERLIN.0,
                BERLIN.1,
                None,
            ))
            .await
            .unwrap();
        assert!(matches!(decision, Decision::Routed { .. }), "{decision:?}");
    }
    let decision = web
        .submit(order(
            "m-short", "SKU-2", 1_000_000, BERLIN.0, BERLIN.1, None,
        ))
        .await
        .unwrap();
    assert!(
        matches!(decision, Decision::Rejected { .. }),
        "{decision:?}"
    );
    web.submit(order("m-expire", "SKU-3", 1, BERLIN.0, BERLIN.1, Some(1)))
        .await
        .unwrap();
    let Decision::Routed { allocations, .. } = web
        .submit(order("m-reject", "SKU-1", 1, 53.55, 9.99, None))
        .await
        .unwrap()
    else {
        panic!("an order next to Hamburg routes");
    };
    assert_eq!(allocations[0].node, "WH-DE-HAM");
    node.node_reject("WH-DE-HAM", key("m-reject"), vec![("SKU-1".into(), 0)])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, after) = get(daemon.admin(), "/metrics").unwrap();
    assert_eq!(sample(&after, routed) - sample(&before, routed), 22.0);
    assert_eq!(sample(&after, short) - sample(&before, short), 1.0);
    let latency = "omniroute_routing_latency_seconds_count";
    assert_eq!(sample(&after, latency) - sample(&before, latency), 23.0);
    assert!(sample(&after, "omniroute_holds_expired_total") >= 1.0);
    assert_eq!(
        sample(&after, r#"omniroute_reroutes_total{cause="node_rejected"}"#),
        1.0
    );
    assert_eq!(
        sample(&after, r#"omniroute_reroutes_total{cause="bumped"}"#),
        20.0
    );
    let records = "omniroute_journal_records_total";
    assert!(sample(&after, records) >= sample(&before, records) + 23.0);
    assert!(
        sample(&after, "omniroute_journal_fsync_seconds_count")
            > sample(&before, "omniroute_journal_fsync_seconds_count")
    );
    assert_eq!(
        sample(&after, r#"omniroute_connections{role="node:WH-DE-HAM"}"#),
        1.0
    );
    assert_eq!(
        get(daemon.admin(), "/healthz").unwrap(),
        (200, "ok\n".into())
    );
    assert_eq!(get(daemon.admin(), "/readyz").unwrap().0, 200);
}

/// A port nothing listens on now (bound, read, released).
fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_written_to_a_pipe_carry_no_colour_codes() {
    // Proves the daemon's log lines, written to a pipe (as to a file or a service manager's
    // journal), hold no terminal escape codes (colour is for a terminal only), and that a
    // SIGTERM sent as soon as the daemon says it listens is a graceful stop (exit 0), not the
    // default disposition's kill.
    let dir = TempDir::new("plain-logs");
    let mut daemon = Daemon::start(&dir.0, None, "127.0.0.1:0").await;
    let line = daemon.log_line_with("recovered").await;
    assert!(!line.contains('\u{1b}'), "escape codes in {line:?}");
    let status = daemon.terminate().await;
    assert!(status.success(), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_false_during_recovery_and_true_after() {
    // Proves the admin port answers while the daemon replays its journal, /readyz says 503
    // then, and 200 once orders are accepted.
    let dir = TempDir::new("ops-ready");
    // A large sample stock, never snapshotted: a restart replays ~2 M journaled cells.
    let config = common::embedded_config_with(
        &dir.0,
        "big.toml",
        &[
            ("skus = 10000", "skus = 100000".into()),
            (
                "snapshot_interval_ms = 60000",
                "snapshot_interval_ms = 0".into(),
            ),
            (
                "snapshot_every_records = 250000",
                "snapshot_every_records = 0".into(),
            ),
        ],
    );
    let mut first = Daemon::start(&dir.0, Some(&config), "127.0.0.1:0").await;
    first.child.kill().await.unwrap();
    let admin = free_port();
    let polling = tokio::task::spawn_blocking(move || {
        let mut seen = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            match get(admin, "/readyz") {
                Ok((status, _)) => {
                    if seen.last() != Some(&status) {
                        seen.push(status);
                    }
                    if status == 200 {
                        break;
                    }
                }
                Err(_) => std::thread::sleep(Duration::from_millis(2)),
            }
        }
        seen
    });
    let second = Daemon::start(&dir.0, Some(&config), &admin.to_string()).await;
    let seen = polling.await.unwrap();
    assert!(
        second.records_replayed() > 0,
        "{}",
        second.startup.join("\n")
    );
    assert_eq!(seen, vec![503, 200], "readiness answers in order");
    assert_eq!(get(admin, "/healthz").unwrap().0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_answers_every_accepted_order_and_the_next_start_replays_nothing() {
    // Proves a SIGTERM in the middle of pipelined traffic exits 0, every order the daemon
    // decided was answered to its client, and the restart finds a final snapshot and no
    // journal records to replay.
    let dir = TempDir::new("ops-sigterm");
    let mut daemon = Daemon::start(&dir.0, None, "127.0.0.1:0").await;
    let sent: Arc<Mutex<Vec<String>>> = Arc::default();
    let answered: Arc<Mutex<HashSet<String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..4 {
        let client = Arc::new(daemon.client("dev-web-token").await);
        let (sent, answered, stop) = (sent.clone(), answered.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let mut in_flight = tokio::task::JoinSet::new();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                while in_flight.len() < 64 {
                    let id = format!("t-{w}-{i}");
                    i += 1;
                    sent.lock().unwrap().push(id.clone());
                    let client = client.clone();
                    let sku = format!("SKU-{}", 1 + i % 50);
                    in_flight.spawn(async move {
                        let result = client.submit(order(&id, &sku, 1, 48.1, 11.6, None)).await;
                        (id, result)
                    });
                }
                let Some(done) = in_flight.join_next().await else {
                    break;
                };
                let (id, result) = done.unwrap();
                match result {
                    // A rejected order is answered but not kept: only a
                    // routed one must be there after the restart.
                    Ok(Decision::Rejected { .. }) => {}
                    Ok(_) => {
                        answered.lock().unwrap().insert(id);
                    }
                    Err(ClientError::Server { .. }) => panic!("{id}: an error answer"),
                    Err(_) => stop.store(true, Ordering::Relaxed),
                }
            }
            while let Some(done) = in_flight.join_next().await {
                if let (id, Ok(Decision::Routed { .. })) = done.unwrap() {
                    answered.lock().unwrap().insert(id);
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let answered_before = answered.lock().unwrap().len();
    assert!(answered_before > 500, "load was flowing: {answered_before}");
    let status = daemon.terminate().await;
    assert!(status.success(), "exit status {status:?}");
    daemon.line_with("shutting down").await;
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        tokio::time::timeout(Duration::from_secs(60), worker)
            .await
            .expect("clients notice the close")
            .unwrap();
    }
    let restarted = Daemon::start(&dir.0, None, "127.0.0.1:0").await;
    assert_eq!(
        restarted.records_replayed(),
        0,
        "{}",
        restarted.startup.join("\n")
    );
    let reader = restarted.client("dev-web-token").await;
    let sent = sent.lock().unwrap().clone();
    let answered = answered.lock().unwrap().clone();
    let (mut known, mut unknown) = (0, 0);
    for id in &sent {
        match reader.get_order(key(id)).await {
            Ok(_) => {
                known += 1;
                assert!(answered.contains(id), "{id} was decided but never answered");
            }
            Err(ClientError::Server { .. }) => {
                unknown += 1;
                assert!(!answered.contains(id), "{id} was answered but is lost");
            }
            Err(e) => panic!("reading {id}: {e}"),
        }
    }
    assert_eq!(known, answered.len());
    // How many of those were answered after the signal is reported, not
    // asserted: on a starved machine the daemon may have read none of the
    // requests in flight before it stopped accepting (seen once, 33 939
    // known, all answered before the signal), and that is not a fault.
    eprintln!(
        "{known} orders decided and answered ({} of them from just before the signal on), {unknown} never accepted",
        known - answered_before
    );
}

/// The fixture network with channel `web` routed by `rules` (and `c`, which
/// the fixture's tokens name).
fn policy_config(dir: &Path, rules: &[&str]) -> String {
    format!(
        "{}\n{}\n{}\n{}\n{}",
        common::NODES,
        common::server_section(dir),
        common::channel("web", rules),
        common::channel("c", &["nearest"]),
        common::stock(&[("P-1", "WH-S", 100), ("P-1", "ST-1", 100)])
    )
}

async fn node_of(client: &Client, id: &str) -> String {
    match client
        .submit(order(id, "P-1", 1, 50.0, 10.0, None))
        .await
        .unwrap()
    {
        Decision::Routed { allocations, .. } => allocations[0].node.clone(),
        other => panic!("{id}: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_reload_by_sighup_and_http_changes_the_next_order_and_a_broken_file_changes_nothing()
{
    // Proves a SIGHUP applies the config file's new rules to the next order, the reload is
    // journaled, and a broken file (by HTTP or by SIGHUP) is refused with its reason while the
    // policy in force stays.
    let dir = TempDir::new("ops-reload");
    let path = dir.0.join("omniroute.toml");
    std::fs::write(&path, policy_config(&dir.0, &["nearest"])).unwrap();
    let mut daemon = Daemon::start(&dir.0, Some(&path), "127.0.0.1:0").await;
    let web = daemon.client(common::CHANNEL_WEB_TOKEN).await;
    assert_eq!(
        node_of(&web, "r-1").await,
        "ST-1",
        "nearest: the store 11 km away"
    );

    std::fs::write(&path, policy_config(&dir.0, &["cheapest"])).unwrap();
    daemon.signal(libc::SIGHUP);
    let reloaded = daemon.line_with("policy reload").await;
    assert!(reloaded.starts_with("policy reloaded at LSN"), "{reloaded}");
    assert_eq!(node_of(&web, "r-2").await, "WH-S", "cheapest: 355 cents");

    let broken = policy_config(&dir.0, &["cheapest"]).replace("\"cheapest\"", "\"cheapest_ever\"");
    std::fs::write(&path, broken).unwrap();
    let (status, body) = post(daemon.admin(), "/policy/reload", None);
    assert_eq!(status, 401, "{body}");
    let (status, body) = post(daemon.admin(), "/policy/reload", Some("no-such-token"));
    assert_eq!(status, 401, "{body}");
    // A valid token of another role is forbidden, not unauthenticated.
    let (status, body) = post(
        daemon.admin(),
        "/policy/reload",
        Some(common::CHANNEL_WEB_TOKEN),
    );
    assert_eq!(
        (status, body["error"]["name"].as_str()),
        (403, Some("forbidden")),
        "{body}"
    );
    let (status, body) = post(daemon.admin(), "/policy/reload", Some(common::ADMIN_TOKEN));
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["name"], "invalid_policy");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("channels.web") && message.contains("cheapest_ever"),
        "{message}"
    );
    daemon.signal(libc::SIGHUP);
    let refused = daemon.line_with("policy reload").await;
    assert!(refused.contains("refused (invalid_policy)"), "{refused}");
    assert_eq!(node_of(&web, "r-3").await, "WH-S", "the old policy stays");

    std::fs::write(&path, policy_config(&dir.0, &["nearest"])).unwrap();
    let (status, body) = post(daemon.admin(), "/policy/reload", Some(common::ADMIN_TOKEN));
    assert_eq!(status, 200, "{body}");
    assert!(body["lsn"].as_u64().unwrap() > 0);
    assert_eq!(node_of(&web, "r-4").await, "ST-1", "reloaded by HTTP");
    let (_, page) = get(daemon.admin(), "/metrics").unwrap();
    assert_eq!(
        sample(&page, r#"omniroute_policy_reloads_total{result="applied"}"#),
        2.0
    );
    assert_eq!(
        sample(&page, r#"omniroute_policy_reloads_total{result="refused"}"#),
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_lets_a_new_token_in_at_once_and_names_the_keys_that_need_a_restart() {
    // Proves a token added to the config file is let in by the next Hello after a reload (and
    // refused again once removed), and a changed engine.shards is named as needing a restart,
    // by HTTP and by SIGHUP, instead of a silent 200.
    const NEW_TOKEN: &str = "reloaded-web-token";
    let dir = TempDir::new("ops-reload-keys");
    let path = dir.0.join("omniroute.toml");
    let base = policy_config(&dir.0, &["nearest"]);
    std::fs::write(&path, &base).unwrap();
    let mut daemon = Daemon::start(&dir.0, Some(&path), "127.0.0.1:0").await;
    let bad_token = |answer: Result<Client, ClientError>| match answer {
        Err(ClientError::Server { code, .. }) => {
            assert_eq!(code, omniroute_protocol::ErrorCode::BadToken as u16)
        }
        Err(other) => panic!("expected BadToken, got {other}"),
        Ok(_) => panic!("expected BadToken, the token was let in"),
    };
    bad_token(daemon.try_client(NEW_TOKEN).await);

    assert!(base.contains("shards = 2\n"));
    let grown = format!(
        "{}\n[[server.tokens]]\ntoken = \"{NEW_TOKEN}\"\nrole = \"channel:web\"\n",
        base.replacen("shards = 2\n", "shards = 3\n", 1)
    );
    std::fs::write(&path, &grown).unwrap();
    let (status, body) = post(daemon.admin(), "/policy/reload", Some(common::ADMIN_TOKEN));
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["applied"],
        serde_json::json!(["server.tokens"]),
        "{body}"
    );
    assert_eq!(
        body["restart_required"],
        serde_json::json!(["engine.shards"]),
        "{body}"
    );
    let web = daemon
        .try_client(NEW_TOKEN)
        .await
        .expect("the new token is let in");
    assert_eq!(node_of(&web, "k-1").await, "ST-1");

    daemon.signal(libc::SIGHUP);
    let line = daemon.line_with("policy reload").await;
    assert!(line.contains("need a restart: engine.shards"), "{line}");

    std::fs::write(&path, &base).unwrap();
    let (status, body) = post(daemon.admin(), "/policy/reload", Some(common::ADMIN_TOKEN));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["restart_required"], serde_json::json!([]), "{body}");
    bad_token(daemon.try_client(NEW_TOKEN).await);
    // The connection it already opened keeps its role.
    assert_eq!(node_of(&web, "k-2").await, "ST-1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_actor_that_panics_stops_the_daemon_non_zero_naming_it_and_loses_no_order() {
    // Proves a panic injected into a node actor makes /healthz fail (while the process is
    // still up to answer), ends the daemon with a non-zero exit and a log line naming the
    // actor, and a restart still finds the order answered before.
    let dir = TempDir::new("ops-actor-panic");
    let faults = [("FAILPOINTS", "node-ops=panic")];
    let mut daemon = Daemon::start_with_env(&dir.0, None, "127.0.0.1:0", &faults).await;
    let web = daemon.client("dev-web-token").await;
    let admin = daemon.client("dev-admin-token").await;
    // Healthy before any node ops: p-1's own ops (applied once it is
    // answered) are the first a node gets, and they may already panic.
    assert_eq!(get(daemon.admin(), "/healthz").unwrap().0, 200);
    let Decision::Routed { order_id, .. } = web
        .submit(order("p-1", "SKU-1", 1, 52.52, 13.40, Some(3_600_000)))
        .await
        .unwrap()
    else {
        panic!("p-1 routes");
    };
    // The node's ops batch panics in the actor (if p-1's did not already);
    // the answer may or may not come.
    let _ = tokio::time::timeout(
        Duration::from_secs(10),
        admin.set_node_online("WH-DE-HAM", false),
    )
    .await;
    let line = daemon.log_line_with("failed").await;
    assert!(line.contains("node WH-DE-HAM failed"), "{line}");
    // Until the process is gone, /healthz says so.
    let health = get(daemon.admin(), "/healthz");
    eprintln!("/healthz after the failure: {health:?}");
    if let Ok((status, body)) = &health {
        assert_eq!(*status, 503, "{body}");
        assert!(body.contains("node WH-DE-HAM"), "{body}");
    }
    let exit = tokio::time::timeout(Duration::from_secs(60), daemon.child.wait())
        .await
        .expect("the daemon stops by itself")
        .unwrap();
    assert!(!exit.success(), "{exit}");

    let mut restarted = Daemon::start(&dir.0, None, "off").await;
    let web = restarted.client("dev-web-token").await;
    let key = OrderKey {
        channel: "web".into(),
        client_order_id: "p-1".into(),
    };
    assert_eq!(web.get_order(key).await.unwrap().order_id, order_id);
    web.close().await;
    restarted.child.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_added_by_reload_takes_stock_and_orders_at_once_and_keeps_them_after_a_crash() {
    // Proves a reload of a config file with one more [[nodes]] entry adds the store to the
    // running daemon (named in the answer, `nodes` applied), that it takes a stock count and
    // an order at once, and that after a kill -9 the restart on the same file finds the
    // order at the store and its count; and that a reload that changes an existing node
    // adds nothing and names `nodes` as needing a restart, while a changed log level applies.
    const STORE: &str = "ST-DE-LIVE";
    /// The embedded config's admin token.
    const LIVE_ADMIN: &str = "dev-admin-token";
    let block = format!(
        "\n[[nodes]]\nid = \"{STORE}\"\nkind = \"store\"\nlat = 52.52\nlon = 13.40\nmarket = \"DE\"\ncapabilities = [\"ship\"]\ndaily_capacity = 100\npriority = 1\n"
    );
    let dir = TempDir::new("ops-live-node");
    let path = dir.0.join("omniroute.toml");
    let base = omniroute::config::DEFAULT_CONFIG_TOML.to_string();
    std::fs::write(&path, &base).unwrap();
    let mut daemon = Daemon::start(&dir.0, Some(&path), "127.0.0.1:0").await;
    let admin = daemon.client(LIVE_ADMIN).await;
    std::fs::write(&path, format!("{base}{block}")).unwrap();
    let (status, body) = post(daemon.admin(), "/policy/reload", Some(LIVE_ADMIN));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["nodes_added"], serde_json::json!([STORE]), "{body}");
    assert!(lists(&body, "applied", "nodes"), "{body}");
    let set = omniroute_protocol::StockSet {
        sku: "SKU-LIVE".into(),
        node: STORE.into(),
        on_hand: 5,
        safety_stock: Some(0),
    };
    assert_eq!(admin.stock_set(vec![set]).await.unwrap(), (1, 0, 0));
    let Decision::Routed { allocations, .. } = admin
        .submit(order(
            "live-1",
            "SKU-LIVE",
            2,
            BERLIN.0,
            BERLIN.1,
            Some(3_600_000),
        ))
        .await
        .unwrap()
    else {
        panic!("an order for the new store's SKU routes");
    };
    assert!(
        allocations.iter().all(|a| a.node == STORE),
        "{allocations:?}"
    );

    // A changed node is not applied live; a changed log level is.
    let moved = format!("{base}{}", block.replace("lat = 52.52", "lat = 52.0")).replacen(
        "level = \"info\"",
        "level = \"warn\"",
        1,
    );
    std::fs::write(&path, &moved).unwrap();
    let (status, body) = post(daemon.admin(), "/policy/reload", Some(LIVE_ADMIN));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["nodes_added"], serde_json::json!([]), "{body}");
    if std::env::var_os("RUST_LOG").is_none() {
        assert!(lists(&body, "applied", "log.level"), "{body}");
    }
    assert!(lists(&body, "restart_required", "nodes"), "{body}");
    std::fs::write(&path, format!("{base}{block}")).unwrap();
    admin.close().await;
    daemon.child.kill().await.unwrap();

    let mut restarted = Daemon::start(&dir.0, Some(&path), "off").await;
    let admin = restarted.client(LIVE_ADMIN).await;
    let key = OrderKey {
        channel: "web".into(),
        client_order_id: "live-1".into(),
    };
    let view = admin.get_order(key).await.unwrap();
    assert!(
        view.allocations
            .iter()
            .all(|a| a.node == STORE && a.open == 2),
        "{view:?}"
    );
    let stock = admin.availability("SKU-LIVE", None).await.unwrap();
    assert_eq!(stock.len(), 1, "{stock:?}");
    assert_eq!((stock[0].node.as_str(), stock[0].atp), (STORE, 3));
    admin.close().await;
    restarted.child.kill().await.unwrap();
}
