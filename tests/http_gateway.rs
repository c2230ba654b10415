//! The HTTP/JSON gateway over the real daemon binary with a real HTTP
//! client: every route with good input, bad JSON, wrong roles and
//! oversized bodies answered with the protocol's codes, the status stream
//! as Server-Sent Events, and docs/openapi.json checked against the server.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::time::Duration;

use common::daemon::Daemon;
use common::*;
use serde_json::{json, Value};

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(20)))
        .build()
        .into()
}

/// (status, JSON body) of a request with `token` and, for a POST, `body`
/// (raw text, so that tests can send broken JSON).
fn call(
    http: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, Value) {
    let url = format!("http://{http}{path}");
    let agent = agent();
    let auth = token.map(|t| format!("Bearer {t}"));
    let sent = match method {
        "GET" => {
            let mut request = agent.get(&url);
            if let Some(auth) = &auth {
                request = request.header("Authorization", auth);
            }
            request.call()
        }
        _ => {
            let mut request = agent.post(&url).header("Content-Type", "application/json");
            if let Some(auth) = &auth {
                request = request.header("Authorization", auth);
            }
            request.send(body.unwrap_or("{}"))
        }
    };
    let mut response = sent.unwrap_or_else(|e| {
        panic!(
            "{method} {path} {:?}: {e}",
            body.map(|b| &b[..b.len().min(80)])
        )
    });
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().unwrap_or_default();
    let value = serde_json::from_str(&text).unwrap_or_else(|_| json!({ "text": text }));
    (status, value)
}

/// Runs `call` on a blocking thread.
async fn http(
    addr: SocketAddr,
    method: &'static str,
    path: String,
    token: Option<&'static str>,
    body: Option<String>,
) -> (u16, Value) {
    tokio::task::spawn_blocking(move || call(addr, method, &path, token, body.as_deref()))
        .await
        .unwrap()
}

/// A POST that declares a 2 MiB body and sends none: the gateway must
/// refuse it from the length alone. (Sending the bytes races the refusal:
/// the server closes a connection whose body it will not read, and the
/// client's writes then fail before it reads the answer.)
fn declared_too_large(http: SocketAddr) -> (u16, Value) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(http).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let head = format!(
        "POST /v1/orders HTTP/1.1\r\nHost: {http}\r\nAuthorization: Bearer {CHANNEL_WEB_TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        2 << 20
    );
    stream.write_all(head.as_bytes()).unwrap();
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    // Up to the end of the JSON body (the connection stays open).
    while !answer.ends_with(b"}}") {
        let n = stream.read(&mut chunk).unwrap();
        assert!(n > 0, "the gateway closed without an answer");
        answer.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&answer);
    let status = text[9..12].parse().unwrap();
    let body = text.split("\r\n\r\n").nth(1).unwrap();
    (status, serde_json::from_str(body).unwrap())
}

fn order_body(id: &str, qty: u32) -> String {
    json!({"channel": "web", "id": id, "lines": [{"sku": "SKU-1", "qty": qty}],
           "ship_to": {"lat": 50.0, "lon": 10.0}})
    .to_string()
}

/// The error code name of an error body.
fn code(body: &Value) -> &str {
    body["error"]["name"].as_str().unwrap_or("")
}

/// The message of an error body.
fn message(body: &Value) -> &str {
    body["error"]["message"].as_str().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_good_input_as_quic_does() {
    // Proves each /v1/ route does what its QUIC request does (submit, idempotent resubmit,
    // get, confirm, list, availability and nearest, stock set and adjust, ship, return,
    // reject, node online, cancel, a pickup without ship_to), with the answers and codes of
    // the protocol.
    let dir = TempDir::new("http-routes");
    let config = web_config_file(&dir);
    let mut daemon = Daemon::start(&dir.0.join("data"), Some(&config), "off").await;
    let h = daemon.http;
    let web = Some(CHANNEL_WEB_TOKEN);
    let admin = Some(ADMIN_TOKEN);

    let (status, routed) = http(
        h,
        "POST",
        "/v1/orders".into(),
        web,
        Some(order_body("h-1", 2)),
    )
    .await;
    assert_eq!(status, 200, "{routed}");
    assert_eq!(routed["outcome"], "routed");
    assert_eq!(routed["allocations"][0]["node"], "ST-1", "nearest first");
    assert!(routed["expires_at"].as_str().unwrap().ends_with('Z'));
    let (_, again) = http(
        h,
        "POST",
        "/v1/orders".into(),
        web,
        Some(order_body("h-1", 2)),
    )
    .await;
    assert_eq!(
        again["order_id"], routed["order_id"],
        "a resubmission gets the same decision"
    );

    let (status, order) = http(h, "GET", "/v1/orders/web/h-1".into(), web, None).await;
    assert_eq!(
        (status, order["state"].as_str()),
        (200, Some("held")),
        "{order}"
    );
    let (status, order) = http(h, "POST", "/v1/orders/web/h-1/confirm".into(), web, None).await;
    assert_eq!((status, order["state"].as_str()), (200, Some("confirmed")));
    let (status, page) = http(
        h,
        "GET",
        "/v1/channels/web/orders?state=confirmed&limit=10".into(),
        web,
        None,
    )
    .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["orders"].as_array().unwrap().len(), 1);
    assert_eq!(page["next_after"], Value::Null);

    let since = "/v1/channels/web/orders?created_from=2024-06-01T00:00:00Z".to_string();
    let (status, page) = http(h, "GET", since, web, None).await;
    assert_eq!(status, 200, "{page}");
    assert!(page["orders"][0]["created_at"]
        .as_str()
        .unwrap()
        .starts_with("20"));
    let (_, none) = http(
        h,
        "GET",
        "/v1/channels/web/orders?created_to=1718000000000".into(),
        web,
        None,
    )
    .await;
    assert_eq!(
        none["orders"].as_array().unwrap().len(),
        0,
        "nothing was routed before mid-2024"
    );
    let (status, all) = http(h, "GET", "/v1/availability/SKU-1".into(), web, None).await;
    assert_eq!(status, 200, "{all}");
    assert_eq!(all["nodes"].as_array().unwrap().len(), 3);
    let (_, near) = http(
        h,
        "GET",
        "/v1/availability/SKU-1?lat=50.0&lon=10.0&count=1".into(),
        web,
        None,
    )
    .await;
    assert_eq!(near["nodes"][0]["node"], "ST-1");
    assert!(near["nodes"][0]["distance_km"].as_f64().unwrap() < 20.0);

    let set = json!({"entries": [{"sku": "SKU-1", "node": "ST-1", "on_hand": 10}]}).to_string();
    let (status, result) = http(
        h,
        "POST",
        "/v1/stock/set".into(),
        Some(NODE_ST1_TOKEN),
        Some(set),
    )
    .await;
    assert_eq!((status, &result["applied"]), (200, &json!(1)), "{result}");
    let adjust = json!({"entries": [{"sku": "SKU-1", "node": "WH-N", "delta": -1}]}).to_string();
    let (status, result) = http(h, "POST", "/v1/stock/adjust".into(), admin, Some(adjust)).await;
    assert_eq!((status, &result["applied"]), (200, &json!(1)), "{result}");

    let units = json!({"channel": "web", "id": "h-1", "sku": "SKU-1", "qty": 1}).to_string();
    let (status, shipped) = http(
        h,
        "POST",
        "/v1/nodes/ST-1/ship".into(),
        admin,
        Some(units.clone()),
    )
    .await;
    assert_eq!(status, 200, "{shipped}");
    assert_eq!(shipped["allocations"][0]["shipped"], 1);
    let (status, back) = http(
        h,
        "POST",
        "/v1/nodes/ST-1/return".into(),
        admin,
        Some(units),
    )
    .await;
    assert_eq!(
        (status, &back["allocations"][0]["returned"]),
        (200, &json!(1))
    );
    let reject = json!({"channel": "web", "id": "h-1", "counts": [{"sku": "SKU-1", "on_hand": 0}]})
        .to_string();
    let (status, moved) = http(
        h,
        "POST",
        "/v1/nodes/ST-1/reject".into(),
        admin,
        Some(reject),
    )
    .await;
    assert_eq!(status, 200, "{moved}");
    let elsewhere = moved["allocations"]
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a["node"] != "ST-1" && a["open"] == 1);
    assert!(elsewhere, "the rejected unit moved: {moved}");

    http(
        h,
        "POST",
        "/v1/orders".into(),
        web,
        Some(order_body("h-2", 1)),
    )
    .await;
    let (status, off) = http(
        h,
        "POST",
        "/v1/nodes/WH-N/online".into(),
        admin,
        Some(r#"{"online": false}"#.into()),
    )
    .await;
    assert_eq!(status, 200, "{off}");
    assert!(off["rerouted_orders"].is_u64());
    // Availability lists nodes by priority and marks the offline one.
    let (_, listed) = http(h, "GET", "/v1/availability/SKU-1".into(), web, None).await;
    let nodes: Vec<(&str, bool)> = listed["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["node"].as_str().unwrap(), n["online"].as_bool().unwrap()))
        .collect();
    // (ST-1 counted none when it rejected h-1.)
    assert_eq!(nodes, vec![("WH-S", true), ("WH-N", false)]);
    let restock = json!({"entries": [{"sku": "SKU-1", "node": "ST-1", "on_hand": 5}]}).to_string();
    http(h, "POST", "/v1/stock/set".into(), admin, Some(restock)).await;
    // A pickup needs no ship_to (the store's location stands for it); an order shipped does.
    let ship = json!({"channel": "web", "id": "h-4", "lines": [{"sku": "SKU-1", "qty": 1}]});
    let (status, refused) = http(h, "POST", "/v1/orders".into(), web, Some(ship.to_string())).await;
    assert_eq!(status, 400, "{refused}");
    assert!(message(&refused).contains("ship_to"), "{refused}");
    // A pickup at a store without the units goes to another store, marked.
    let pickup = json!({"channel": "web", "id": "h-3", "lines": [{"sku": "SKU-1", "qty": 1}],
                        "method": "pickup", "pickup_store": "ST-2"});
    let (status, routed) = http(
        h,
        "POST",
        "/v1/orders".into(),
        web,
        Some(pickup.to_string()),
    )
    .await;
    assert_eq!(status, 200, "{routed}");
    assert_eq!(routed["allocations"][0]["node"], "ST-1");
    assert_eq!(routed["allocations"][0]["substitute_for"], "ST-2");
    let (status, cancelled) = http(h, "POST", "/v1/orders/web/h-2/cancel".into(), web, None).await;
    assert_eq!(
        (status, cancelled["state"].as_str()),
        (200, Some("cancelled"))
    );
    assert!(daemon.terminate().await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_the_protocols_code_and_names_the_field() {
    // Proves broken JSON, missing, unknown and mistyped fields, values past the wire's
    // limits, oversized bodies, missing or unknown tokens and wrong roles each get one
    // clear error (status, code name, message naming the field), and change nothing.
    let dir = TempDir::new("http-bad");
    let config = web_config_file(&dir);
    let mut daemon = Daemon::start(&dir.0.join("data"), Some(&config), "off").await;
    let h = daemon.http;
    let web = Some(CHANNEL_WEB_TOKEN);
    let post = |body: String| http(h, "POST", "/v1/orders".into(), web, Some(body));

    let (status, body) = post("{\"channel\": ".into()).await;
    assert_eq!((status, code(&body)), (400, "Malformed"), "{body}");
    let (status, body) =
        post(json!({"channel": "web", "id": "x", "ship_to": {"lat": 1.0, "lon": 2.0}}).to_string())
            .await;
    assert_eq!((status, code(&body)), (400, "Malformed"));
    assert!(message(&body).contains("lines"), "{body}");
    let mistyped = json!({"channel": "web", "id": "x", "lines": [{"sku": "SKU-1", "qty": "two"}], "ship_to": {"lat": 1.0, "lon": 2.0}});
    let (status, body) = post(mistyped.to_string()).await;
    assert_eq!(status, 400);
    assert!(message(&body).contains("lines[0].qty"), "{body}");
    let unknown = json!({"channel": "web", "id": "x", "lines": [], "ship_to": {"lat": 1.0, "lon": 2.0}, "colour": "red"});
    let (status, body) = post(unknown.to_string()).await;
    assert_eq!(status, 400);
    assert!(message(&body).contains("colour"), "{body}");
    let long_id = "x".repeat(129);
    let (status, body) = post(order_body(&long_id, 1)).await;
    assert_eq!(status, 400);
    assert!(
        message(&body).starts_with("id: a name is 1 to 128"),
        "{body}"
    );
    let lines: Vec<Value> = (0..65)
        .map(|i| json!({"sku": format!("S-{i}"), "qty": 1}))
        .collect();
    let many =
        json!({"channel": "web", "id": "m", "lines": lines, "ship_to": {"lat": 1.0, "lon": 2.0}});
    let (status, body) = post(many.to_string()).await;
    assert_eq!(status, 400);
    assert!(message(&body).contains("65 entries; 1 to 64"), "{body}");
    let (status, body) = tokio::task::spawn_blocking(move || declared_too_large(h))
        .await
        .unwrap();
    assert_eq!((status, code(&body)), (413, "TooLarge"), "{body}");

    let (status, rejected) = post(order_body("big", 1000)).await;
    assert_eq!(status, 422, "{rejected}");
    assert_eq!(
        (rejected["outcome"].as_str(), rejected["reason"].as_str()),
        (Some("rejected"), Some("short"))
    );
    let (status, body) = http(
        h,
        "POST",
        "/v1/orders".into(),
        None,
        Some(order_body("n", 1)),
    )
    .await;
    assert_eq!((status, code(&body)), (401, "NotAuthenticated"));
    let (status, body) = http(
        h,
        "POST",
        "/v1/orders".into(),
        Some("not-a-token-at-all"),
        Some(order_body("n", 1)),
    )
    .await;
    assert_eq!((status, code(&body)), (401, "BadToken"));
    let other = order_body("c-1", 1).replace("\"web\"", "\"c\"");
    let (status, body) = http(h, "POST", "/v1/orders".into(), web, Some(other)).await;
    assert_eq!((status, code(&body)), (403, "Forbidden"));
    assert_eq!(
        body["error"]["message"],
        "role channel:web may not make this request"
    );
    let set = json!({"entries": [{"sku": "SKU-1", "node": "WH-N", "on_hand": 1}]}).to_string();
    let (status, body) = http(
        h,
        "POST",
        "/v1/stock/set".into(),
        Some(NODE_ST1_TOKEN),
        Some(set),
    )
    .await;
    assert_eq!((status, code(&body)), (403, "Forbidden"));
    let (status, body) = http(h, "GET", "/v1/orders/web/nothing".into(), web, None).await;
    assert_eq!((status, code(&body)), (404, "UnknownOrder"));
    let (status, body) = http(
        h,
        "GET",
        "/v1/channels/web/orders?limit=5000".into(),
        web,
        None,
    )
    .await;
    assert_eq!((status, code(&body)), (413, "TooLarge"));
    let (status, body) = http(
        h,
        "GET",
        "/v1/channels/web/orders?state=lost".into(),
        web,
        None,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(message(&body).starts_with("state:"), "{body}");
    let (status, body) = http(
        h,
        "GET",
        "/v1/channels/web/orders?created_from=yesterday".into(),
        web,
        None,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(message(&body).starts_with("created_from:"), "{body}");
    let (status, body) = http(h, "GET", "/v1/nowhere".into(), web, None).await;
    assert_eq!(status, 404, "{body}");
    assert!(message(&body).contains("openapi"));
    let (_, page) = http(h, "GET", "/v1/channels/web/orders".into(), web, None).await;
    assert_eq!(
        page["orders"].as_array().unwrap().len(),
        0,
        "nothing bad was taken"
    );
    assert!(daemon.terminate().await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_numbers_may_have_a_zero_fraction_and_every_bound_is_refused_as_malformed() {
    // Proves what docs/openapi.json states is what the gateway takes: an integer written 2.0
    // is 2 and 1.5 is refused by name; quantities, counts, adjustments, names and cursors
    // past the bounds the document states are each refused 400 naming the field.
    let dir = TempDir::new("http-bounds");
    let config = web_config_file(&dir);
    let mut daemon = Daemon::start(&dir.0.join("data"), Some(&config), "off").await;
    let h = daemon.http;
    let admin = Some(ADMIN_TOKEN);
    let post =
        |path: &str, body: &Value| http(h, "POST", path.into(), admin, Some(body.to_string()));
    let order = |id: &str, qty: Value| {
        json!({"channel": "web", "id": id, "lines": [{"sku": "SKU-1", "qty": qty}],
               "ship_to": {"lat": 50.0, "lon": 10.0}, "hold_ttl_ms": 60000.0})
    };
    let (status, body) = post("/v1/orders", &order("whole-1", json!(2.0))).await;
    assert_eq!(
        (status, body["outcome"].as_str()),
        (200, Some("routed")),
        "{body}"
    );
    assert_eq!(body["allocations"][0]["qty"], 2, "{body}");
    let (status, body) = post("/v1/orders", &order("half-1", json!(1.5))).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        message(&body).contains("lines[0].qty: 1.5 is not a whole number"),
        "{body}"
    );
    let units = |qty: i64| json!({"channel": "web", "id": "whole-1", "sku": "SKU-1", "qty": qty});
    let cell = |field: &str, value: i64| {
        let mut entry = json!({"sku": "SKU-1", "node": "ST-1", "on_hand": 1});
        entry[field] = json!(value);
        json!({ "entries": [entry] })
    };
    let adjust = json!({"entries": [{"sku": "SKU-1", "node": "ST-1", "delta": -1_000_000_001}]});
    let count = json!({"channel": "web", "id": "whole-1", "counts": [{"sku": "SKU-1", "on_hand": 1_000_000_001}]});
    let refused = [
        (
            "/v1/nodes/ST-1/ship",
            units(0),
            "qty: 0 is outside 1 to 1000000",
        ),
        (
            "/v1/nodes/ST-1/return",
            units(1_000_001),
            "qty: 1000001 is outside",
        ),
        (
            "/v1/stock/adjust",
            adjust,
            "entries[0].delta: -1000000001 is outside",
        ),
        (
            "/v1/stock/set",
            cell("safety_stock", 1_000_000_001),
            "entries[0].safety_stock: 1000000001 is outside",
        ),
        (
            "/v1/stock/set",
            cell("on_hand", 1_000_000_001),
            "entries[0].on_hand: 1000000001 is outside",
        ),
        (
            "/v1/nodes/ST-1/reject",
            count,
            "counts[0].on_hand: 1000000001 is outside",
        ),
        (
            "/v1/orders",
            order(&"é".repeat(33), json!(1)),
            "id: a name is",
        ),
        ("/v1/orders", order("bell\u{7}", json!(1)), "id: a name is"),
    ];
    for (path, body, why) in &refused {
        let (status, answer) = post(path, body).await;
        assert_eq!(
            (status, code(&answer)),
            (400, "Malformed"),
            "{path} {body}: {answer}"
        );
        assert!(message(&answer).starts_with(why), "{path} {body}: {answer}");
    }
    // 32 characters of any kind, or 128 of ASCII: names the document allows.
    for id in ["é".repeat(32), "x".repeat(128)] {
        let (status, answer) = post("/v1/orders", &order(&id, json!(1))).await;
        assert_eq!(status, 200, "{id}: {answer}");
    }
    for query in [
        "?lat=91&lon=0",
        "?lat=50&lon=10&count=257",
        "?lat=50&lon=10&min_qty=0",
    ] {
        let path = format!("/v1/availability/SKU-1{query}");
        let (status, answer) = http(h, "GET", path.clone(), admin, None).await;
        assert_eq!(status, 400, "{path}: {answer}");
    }
    let after = format!("/v1/channels/web/orders?after={}", u64::MAX);
    let (status, answer) = http(h, "GET", after, admin, None).await;
    assert_eq!(status, 400, "{answer}");
    assert!(message(&answer).starts_with("after:"), "{answer}");
    assert!(daemon.terminate().await.success());
}

/// Reads SSE events (id, event, data) from a stream until `count` came.
fn read_events(reader: &mut impl BufRead, count: usize) -> Vec<(u64, String, Value)> {
    let mut events = Vec::new();
    let (mut id, mut name, mut data) = (0, String::new(), String::new());
    let mut line = String::new();
    while events.len() < count {
        line.clear();
        assert!(reader.read_line(&mut line).unwrap() > 0, "the stream ended");
        let line = line.trim_end();
        if let Some(v) = line.strip_prefix("id: ").or(line.strip_prefix("id:")) {
            id = v.trim().parse().unwrap();
        } else if let Some(v) = line.strip_prefix("event: ").or(line.strip_prefix("event:")) {
            name = v.trim().to_string();
        } else if let Some(v) = line.strip_prefix("data: ").or(line.strip_prefix("data:")) {
            data.push_str(v);
        } else if line.is_empty() && !data.is_empty() {
            events.push((
                id,
                std::mem::take(&mut name),
                serde_json::from_str(&data).unwrap(),
            ));
            data.clear();
        }
    }
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_stream_is_server_sent_events_that_resume_by_last_event_id() {
    // Proves GET /v1/channels/web/events streams each change as an SSE event whose id is
    // the cursor, and that a client resuming with Last-Event-ID gets the rest exactly once.
    let dir = TempDir::new("http-sse");
    let config = web_config_file(&dir);
    let mut daemon = Daemon::start(&dir.0.join("data"), Some(&config), "off").await;
    let h = daemon.http;
    for i in 0..3 {
        http(
            h,
            "POST",
            "/v1/orders".into(),
            Some(CHANNEL_WEB_TOKEN),
            Some(order_body(&format!("s-{i}"), 1)),
        )
        .await;
    }
    http(
        h,
        "POST",
        "/v1/orders/web/s-1/confirm".into(),
        Some(CHANNEL_WEB_TOKEN),
        None,
    )
    .await;
    let stream = |last: Option<u64>, count: usize| {
        tokio::task::spawn_blocking(move || {
            let mut request = agent()
                .get(format!("http://{h}/v1/channels/web/events"))
                .header("Authorization", &format!("Bearer {CHANNEL_WEB_TOKEN}"));
            if let Some(last) = last {
                request = request.header("Last-Event-ID", &last.to_string());
            }
            let mut response = request.call().unwrap();
            assert_eq!(response.status().as_u16(), 200);
            let mut reader = BufReader::new(response.body_mut().as_reader());
            read_events(&mut reader, count)
        })
    };
    let first = stream(None, 2).await.unwrap();
    assert_eq!(first.iter().map(|e| e.0).collect::<Vec<_>>(), vec![1, 2]);
    assert_eq!(first[0].1, "routed");
    assert_eq!(first[0].2["order"]["id"], "s-0");
    let rest = stream(Some(2), 2).await.unwrap();
    assert_eq!(rest.iter().map(|e| e.0).collect::<Vec<_>>(), vec![3, 4]);
    assert_eq!(
        (rest[1].1.as_str(), &rest[1].2["order"]["id"]),
        ("confirmed", &json!("s-1"))
    );
    let (status, body) = http(
        h,
        "GET",
        "/v1/channels/c/events".into(),
        Some(CHANNEL_WEB_TOKEN),
        None,
    )
    .await;
    assert_eq!((status, code(&body)), (403, "Forbidden"));
    let (status, body) = http(
        h,
        "GET",
        "/v1/channels/web/events?from=99".into(),
        Some(CHANNEL_WEB_TOKEN),
        None,
    )
    .await;
    assert_eq!((status, code(&body)), (410, "CursorTooOld"));
    // An open stream does not hold the daemon's stop up.
    let open = tokio::task::spawn_blocking(move || {
        let mut response = agent()
            .get(format!("http://{h}/v1/channels/web/events"))
            .header("Authorization", &format!("Bearer {CHANNEL_WEB_TOKEN}"))
            .call()
            .unwrap();
        let mut sink = Vec::new();
        let _ = std::io::Read::read_to_end(&mut response.body_mut().as_reader(), &mut sink);
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = std::time::Instant::now();
    assert!(daemon.terminate().await.success());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the stop did not wait on the stream"
    );
    open.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_matches_the_live_server() {
    // Proves docs/openapi.json lists exactly the gateway's routes, and that each documented
    // route, called on the live server, answers with a status the document lists for it.
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json")).unwrap();
    let doc: Value = serde_json::from_str(&text).unwrap();
    let mut documented: Vec<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, methods)| {
            methods
                .as_object()
                .unwrap()
                .keys()
                .map(move |m| (m.clone(), path.clone()))
        })
        .collect();
    documented.sort();
    let mut served: Vec<(String, String)> = omniroute::http::ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    served.sort();
    assert_eq!(documented, served);

    let dir = TempDir::new("http-openapi");
    let config = web_config_file(&dir);
    let mut daemon = Daemon::start(&dir.0.join("data"), Some(&config), "off").await;
    let h = daemon.http;
    http(
        h,
        "POST",
        "/v1/orders".into(),
        Some(ADMIN_TOKEN),
        Some(order_body("api-1", 1)),
    )
    .await;
    for (method, path) in &documented {
        let operation = &doc["paths"][path][method];
        let example =
            operation["requestBody"]["content"]["application/json"]["example"].to_string();
        let concrete = path
            .replace("{channel}", "web")
            .replace("{id}", "api-1")
            .replace("{node}", "ST-1")
            .replace("{sku}", "SKU-1");
        let concrete = if concrete.ends_with("/events") {
            // A stream never ends by itself: ask for a cursor it does not have.
            format!("{concrete}?from=99")
        } else {
            concrete
        };
        let body = (example != "null").then_some(example);
        let (status, answer) = http(
            h,
            if method == "get" { "GET" } else { "POST" },
            concrete.clone(),
            Some(ADMIN_TOKEN),
            body,
        )
        .await;
        let listed = operation["responses"].as_object().unwrap();
        assert!(
            listed.contains_key(&status.to_string()),
            "{method} {concrete}: {status} is not among {:?}: {answer}",
            listed.keys().collect::<Vec<_>>()
        );
        assert_ne!(
            code(&answer),
            "UnknownKind",
            "{method} {path} is not served"
        );
    }
    assert!(daemon.terminate().await.success());
}

/// (status, JSON body, Allow header) of `request`, sent as raw bytes on a
/// connection that closes after the answer.
fn raw(http: SocketAddr, request: &str) -> (u16, Value, Option<String>) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(http).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    let status = head[9..12].parse().unwrap();
    let allow = head.lines().find_map(|l| {
        l.to_ascii_lowercase()
            .strip_prefix("allow: ")
            .map(String::from)
    });
    let body = serde_json::from_str(body).unwrap_or_else(|_| json!({ "text": body }));
    (status, body, allow)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_without_content_type_is_json_and_a_wrong_method_is_explained() {
    // Proves a POST whose body has no Content-Type is read as JSON (routed), one whose
    // Content-Type names another format is 415 with an error body, and a route asked with a
    // method it does not take is 405 with an error body naming the method.
    let dir = TempDir::new("http-media");
    let config = web_config_file(&dir);
    let mut daemon = Daemon::start(&dir.0.join("data"), Some(&config), "off").await;
    let http = daemon.http;
    let body = order_body("no-type-1", 1);
    let post = |content_type: &str| {
        format!(
            "POST /v1/orders HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {CHANNEL_WEB_TOKEN}\r\n\
             {content_type}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    let (status, answer, _) = tokio::task::spawn_blocking({
        let request = post("");
        move || raw(http, &request)
    })
    .await
    .unwrap();
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["outcome"], "routed", "{answer}");
    let (status, answer, _) = tokio::task::spawn_blocking({
        let request = post("Content-Type: text/plain\r\n");
        move || raw(http, &request)
    })
    .await
    .unwrap();
    assert_eq!(status, 415, "{answer}");
    assert!(message(&answer).contains("application/json"), "{answer}");
    let request = format!(
        "DELETE /v1/orders HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {CHANNEL_WEB_TOKEN}\r\n\
         Connection: close\r\n\r\n"
    );
    let (status, answer, _) = tokio::task::spawn_blocking(move || raw(http, &request))
        .await
        .unwrap();
    assert_eq!(status, 405, "{answer}");
    assert!(message(&answer).contains("DELETE"), "{answer}");
    assert!(daemon.terminate().await.success());
}
