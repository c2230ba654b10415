//! What one QUIC connection may hold of the server, over real connections
//! to the server in process: before its Hello, few streams and a small
//! receive window (raised by the Hello); after it, no more than its share
//! of the engine's in-flight orders, however many requests it pipelines.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use futures::FutureExt;
use omniroute::limits::{
    CONNECTION_SHARE_OF_ENGINE_INFLIGHT, MAX_UNAUTHENTICATED_STREAMS,
    UNAUTHENTICATED_RECEIVE_WINDOW_BYTES,
};
use omniroute_client::protocol::{
    check_frame, split_frame, ErrorCode, OrderKey, Request, Response, PROTOCOL_VERSION,
};
use omniroute_client::{quinn, Client, Trust};

/// The engine's in-flight orders in these tests: small, so that a share
/// of it is a handful.
const ENGINE_MAX_INFLIGHT: usize = 8;
/// Streams of an authenticated connection in these tests.
const MAX_STREAMS: u32 = 32;

/// The fixture network with channels web (and its stock) and c, the test tokens,
/// `engine.max_inflight = ENGINE_MAX_INFLIGHT`, and a per-connection
/// in-flight bound far above the engine's (`server_section`'s 16 384).
fn admission_config(dir: &TempDir) -> omniroute::config::ValidConfig {
    let text = format!(
        "{}\n{}{}{}{}",
        NODES.replacen(
            "[engine]\n",
            &format!("[engine]\nmax_inflight = {ENGINE_MAX_INFLIGHT}\n"),
            1
        ),
        server_section(&dir.0.join("data")).replacen(
            "[server]\n",
            &format!("[server]\nmax_streams_per_connection = {MAX_STREAMS}\n"),
            1
        ),
        channel("web", &["nearest"]),
        channel("c", &["nearest"]),
        stock(&[("SKU-1", "WH-S", 10_000)])
    );
    omniroute::config::Config::from_toml(&text)
        .expect("test config parses")
        .validate()
        .expect("test config validates")
}

/// A raw QUIC connection (handshake done, nothing said), with the endpoint
/// it needs kept alive beside it.
struct Raw {
    connection: quinn::Connection,
    _endpoint: quinn::Endpoint,
}

async fn raw(server: &omniroute::server::RunningServer) -> Raw {
    let trust = Trust::CaFile(server.cert_path.clone());
    let connecting = omniroute_client::connect_quic(server.addr, "localhost", &trust);
    let (endpoint, connection) = tokio::time::timeout(Duration::from_secs(10), connecting)
        .await
        .expect("the handshake completes within 10 s")
        .expect("the handshake succeeds");
    Raw {
        connection,
        _endpoint: endpoint,
    }
}

fn encoded(request: &Request, id: u64) -> Vec<u8> {
    let mut bytes = Vec::new();
    request.encode(id, &mut bytes);
    bytes
}

fn hello(token: &str) -> Vec<u8> {
    let hello = Request::Hello {
        version: PROTOCOL_VERSION,
        token: token.into(),
    };
    encoded(&hello, 0)
}

/// The next whole frame on `recv`, within 10 s.
async fn next_frame(recv: &mut quinn::RecvStream) -> (u64, Response) {
    let mut buffer = Vec::new();
    loop {
        if let Ok(Some(length)) = check_frame(&buffer) {
            let (kind, id, payload) = split_frame(&buffer[..length]);
            return (id, Response::decode(kind, payload).unwrap().unwrap());
        }
        let mut byte = [0u8; 1];
        tokio::time::timeout(Duration::from_secs(10), recv.read_exact(&mut byte))
            .await
            .expect("a frame within 10 s")
            .expect("the stream goes on");
        buffer.push(byte[0]);
    }
}

/// Says Hello as channel web on a new stream of `connection`; the stream
/// stays open (kept in `open`), so that the count of streams stays put.
async fn say_hello(connection: &quinn::Connection, open: &mut Vec<quinn::SendStream>) {
    let (mut send, mut recv) = connection.open_bi().await.unwrap();
    send.write_all(&hello(CHANNEL_WEB_TOKEN)).await.unwrap();
    match next_frame(&mut recv).await {
        (_, Response::HelloOk { .. }) => {}
        other => panic!("expected HelloOk, got {other:?}"),
    }
    open.push(send);
}

/// Polls `done` every 10 ms until it holds, for at most 10 s.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "{what} within 10 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A failpoint set for as long as it is held (removing it wakes a paused
/// thread), removed even if the test fails.
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_holds_no_more_than_its_share_of_the_engine() {
    // Proves a connection that pipelines many orders on several streams holds at most
    // engine.max_inflight / CONNECTION_SHARE_OF_ENGINE_INFLIGHT of the engine's in-flight
    // orders, however high server.max_inflight_per_connection is: with every commit held at
    // its fsync, what is in flight stays at that share, and another connection's order is
    // admitted beside it (not answered Overloaded); once the disk moves on, every order of
    // both is decided.
    let dir = TempDir::new("quic-share");
    let config = admission_config(&dir);
    let clock = Arc::new(omniroute::engine::SystemClock);
    let engine = omniroute::daemon::recover(&config, clock)
        .await
        .expect("the data directory opens")
        .engine;
    let server = omniroute::server::start(engine.clone(), &config.server)
        .await
        .expect("server starts");
    let share = ENGINE_MAX_INFLIGHT / CONNECTION_SHARE_OF_ENGINE_INFLIGHT;

    // Every commit waits at its fsync until the failpoint goes.
    let held = Failpoint::set(omniroute::faults::points::JOURNAL_FSYNC, "pause");
    let greedy = raw(&server).await;
    let mut open = Vec::new();
    say_hello(&greedy.connection, &mut open).await;
    let (streams, per_stream) = (4, 30);
    let mut answers = Vec::new();
    for stream in 0..streams {
        let (mut send, recv) = greedy.connection.open_bi().await.unwrap();
        let mut frames = Vec::new();
        for n in 0..per_stream {
            let id = (stream * per_stream + n + 1) as u64;
            let order = omniroute_client::order(
                "web",
                &format!("greedy-{id}"),
                50.0,
                10.0,
                &[("SKU-1", 1)],
            );
            frames.extend(encoded(&Request::Submit(order), id));
        }
        send.write_all(&frames).await.unwrap();
        open.push(send);
        answers.push(recv);
    }
    until("the greedy connection's orders in flight", || {
        engine.orders_in_flight() >= share
    })
    .await;
    // Time for more to be admitted, if anything let them in.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        engine.orders_in_flight(),
        share,
        "one connection holds its share of engine.max_inflight ({ENGINE_MAX_INFLIGHT}), no more"
    );

    let other = Client::connect(
        server.addr,
        "localhost",
        Trust::CaFile(server.cert_path.clone()),
        CHANNEL_WEB_TOKEN,
    )
    .await
    .expect("another connection says Hello");
    let other = Arc::new(other);
    let beside = tokio::spawn({
        let other = other.clone();
        async move {
            let order = omniroute_client::order("web", "beside", 50.0, 10.0, &[("SKU-1", 1)]);
            other.submit(order).await
        }
    });
    until(
        "the other connection's order in flight, or its answer",
        || engine.orders_in_flight() > share || beside.is_finished(),
    )
    .await;
    drop(held);
    let decision = tokio::time::timeout(Duration::from_secs(10), beside)
        .await
        .expect("answered within 10 s")
        .unwrap();
    assert!(
        decision.is_ok(),
        "the other connection was admitted beside the greedy one: {decision:?}"
    );

    let mut decided = 0;
    for recv in &mut answers {
        for _ in 0..per_stream {
            match next_frame(recv).await {
                (_, Response::Decision(_)) => decided += 1,
                (id, other) => panic!("order {id}: expected a decision, got {other:?}"),
            }
        }
    }
    assert_eq!(decided, streams * per_stream);
    drop(open);
    server.shutdown().await;
    engine.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn before_its_hello_a_connection_gets_few_streams_and_a_small_window() {
    // Proves the limits of a connection without a Hello, as its peer's QUIC stack sees them:
    // MAX_UNAUTHENTICATED_STREAMS streams open at once and no more, and at most
    // UNAUTHENTICATED_RECEIVE_WINDOW_BYTES taken ahead of what the server has read; and that
    // the Hello raises both, to server.max_streams_per_connection streams (and no more)
    // and a window that takes far more at once.
    let dir = TempDir::new("quic-pre-hello");
    let config = admission_config(&dir);
    let (engine, _) = engine(&config, None).await;
    let server = omniroute::server::start(engine.clone(), &config.server)
        .await
        .expect("server starts");
    let peer = raw(&server).await;
    let connection = &peer.connection;

    let mut streams = Vec::new();
    for n in 0..MAX_UNAUTHENTICATED_STREAMS {
        let opened = connection.open_bi().now_or_never();
        let opened = opened.unwrap_or_else(|| panic!("stream {n} opens at once"));
        streams.push(opened.unwrap());
    }
    assert!(
        connection.open_bi().now_or_never().is_none(),
        "one more stream than MAX_UNAUTHENTICATED_STREAMS waits for the server's leave"
    );
    // Requests the server answers NotAuthenticated, far more than the window.
    let key = OrderKey {
        channel: "web".into(),
        client_order_id: "o-1".into(),
    };
    let requests = encoded(&Request::GetOrder(key), 1).repeat(1 << 15);
    let taken = streams[1].0.write(&requests).now_or_never();
    let taken = taken
        .expect("a write takes what the window allows at once")
        .unwrap();
    assert!(
        taken <= UNAUTHENTICATED_RECEIVE_WINDOW_BYTES as usize,
        "{taken} bytes taken before the server read any"
    );

    // The Hello goes once the server read some of those and gave the window back.
    let (mut send, mut recv) = streams.remove(0);
    tokio::time::timeout(
        Duration::from_secs(10),
        send.write_all(&hello(CHANNEL_WEB_TOKEN)),
    )
    .await
    .expect("the Hello is sent within 10 s")
    .unwrap();
    let (_, answer) = next_frame(&mut recv).await;
    assert!(matches!(answer, Response::HelloOk { .. }), "{answer:?}");
    streams.insert(0, (send, recv));

    let more = tokio::time::timeout(Duration::from_secs(10), connection.open_bi())
        .await
        .expect("the Hello lets one more stream open")
        .unwrap();
    streams.push(more);
    while streams.len() < MAX_STREAMS as usize {
        let next = tokio::time::timeout(Duration::from_secs(10), connection.open_bi())
            .await
            .expect("streams up to server.max_streams_per_connection open")
            .unwrap();
        streams.push(next);
    }
    assert!(
        connection.open_bi().now_or_never().is_none(),
        "one more than server.max_streams_per_connection waits"
    );
    // One frame of an unknown kind, as long as a frame may be: taken at
    // once, as soon as the Hello's window reached this side.
    let mut frame = ((1u32 << 19) + 9).to_le_bytes().to_vec();
    frame.push(0xEE);
    frame.extend(7u64.to_le_bytes());
    frame.resize(frame.len() + (1 << 19), 0);
    let (send, recv) = streams.last_mut().unwrap();
    let mut sent = 0;
    let mut most = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while most <= UNAUTHENTICATED_RECEIVE_WINDOW_BYTES as usize {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a write took at most {most} bytes at once after the Hello"
        );
        if let Some(taken) = send.write(&frame[sent..]).now_or_never() {
            let taken = taken.unwrap();
            sent += taken;
            most = most.max(taken);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    send.write_all(&frame[sent..]).await.unwrap();
    match next_frame(recv).await {
        (7, Response::Error { code, .. }) => assert_eq!(code, ErrorCode::UnknownKind as u16),
        other => panic!("expected UnknownKind, got {other:?}"),
    }
    drop(streams);
    server.shutdown().await;
    engine.shutdown();
}
