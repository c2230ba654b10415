//! Hostile and broken QUIC clients against the real daemon binary: silent
//! connections that never say Hello, streams left in the middle of a frame,
//! a client that pipelines requests and never reads the answers. An honest
//! client with a token is served all along, the silent ones are closed
//! after the Hello deadline, the daemon's memory stays bounded, and SIGTERM
//! still stops it within its grace period.

mod common;

use std::time::{Duration, Instant};

use common::daemon::Daemon;
use common::*;
use omniroute_client::protocol::{
    check_frame, close_codes, split_frame, ErrorCode, OrderQuery, Request, Response,
    PROTOCOL_VERSION,
};
use omniroute_client::quinn;
use omniroute_client::{order, Client, Trust};

/// The Hello deadline of these tests: short, so that the test waits little.
const HELLO_TIMEOUT_MS: u64 = 5_000;
/// Connections waiting for a Hello at once: fewer than the silent ones,
/// so that the newest push the oldest out.
const MAX_WAITING: usize = 256;
const SILENT_CONNECTIONS: usize = 300;
const HALF_FRAME_CONNECTIONS: usize = 20;
/// Streams the pipelining client writes on without reading.
const PIPELINED_STREAMS: usize = 4;
/// The daemon's resident memory may grow by at most this much over what it
/// had before the hostile clients came. Measured: about 80 MiB (most of it
/// the 32 MiB QUIC window of requests the pipelining client fills, and its
/// answers); without the bound on unread answers, 280 MiB after 4 s and
/// growing for as long as the client writes.
const RSS_GROWTH_BOUND_MIB: u64 = 160;
/// SHUTDOWN_DRAIN_MS (10 s, for the client that does not read) and
/// SHUTDOWN_CLOSE_MS (2 s), then the final snapshot.
const GRACE_PERIOD_S: u64 = 20;

/// Authenticated connections: far fewer than the silent ones, which must
/// not count against them.
const MAX_CONNECTIONS: usize = 16;

/// The embedded config with a short Hello deadline, a small waiting room
/// and few authenticated connections, written to `dir`.
fn hostile_config(dir: &TempDir) -> std::path::PathBuf {
    let text = omniroute::config::DEFAULT_CONFIG_TOML
        .replacen(
            "max_connections = 1024",
            &format!("max_connections = {MAX_CONNECTIONS}"),
            1,
        )
        .replacen(
        "[server]\n",
        &format!(
            "[server]\nhello_timeout_ms = {HELLO_TIMEOUT_MS}\nmax_unauthenticated_connections = {MAX_WAITING}\n"
        ),
        1,
    );
    let path = dir.0.join("omniroute.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("VmRSS");
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib / 1024
}

/// A raw QUIC connection to the daemon (handshake done, nothing said),
/// with the endpoint it needs kept alive beside it.
struct Raw {
    connection: quinn::Connection,
    _endpoint: quinn::Endpoint,
}

async fn raw(daemon: &Daemon) -> Raw {
    let trust = Trust::CaFile(daemon.cert.clone());
    let connecting = omniroute_client::connect_quic(daemon.addr, "localhost", &trust);
    let (endpoint, connection) = tokio::time::timeout(Duration::from_secs(10), connecting)
        .await
        .expect("the handshake completes within 10 s")
        .expect("the handshake succeeds");
    Raw {
        connection,
        _endpoint: endpoint,
    }
}

/// `count` raw connections, opened 25 at a time.
async fn many_raw(daemon: &Daemon, count: usize) -> Vec<Raw> {
    let mut all = Vec::with_capacity(count);
    while all.len() < count {
        let batch = (count - all.len()).min(25);
        all.extend(futures::future::join_all((0..batch).map(|_| raw(daemon))).await);
    }
    all
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

/// Why the server closed `connection`: its application code and reason.
async fn close_of(connection: &quinn::Connection, within: Duration) -> (u64, String) {
    let error = tokio::time::timeout(within, connection.closed())
        .await
        .expect("the server closes the connection in time");
    match error {
        quinn::ConnectionError::ApplicationClosed(close) => (
            close.error_code.into_inner(),
            String::from_utf8_lossy(&close.reason).into_owned(),
        ),
        other => panic!("expected an application close, got {other}"),
    }
}

/// An honest channel client: a new connection with its Hello, then an
/// order and an availability read, each answered within 5 s.
async fn honest_round(daemon: &Daemon, n: usize) {
    let client = tokio::time::timeout(Duration::from_secs(5), daemon.client("dev-web-token"))
        .await
        .expect("a client with a token connects within 5 s");
    let decision = tokio::time::timeout(
        Duration::from_secs(5),
        client.submit(order(
            "web",
            &format!("honest-{n}"),
            52.52,
            13.40,
            &[("SKU-1", 1)],
        )),
    )
    .await
    .expect("answered within 5 s")
    .expect("an order is decided");
    let _ = decision;
    tokio::time::timeout(Duration::from_secs(5), client.availability("SKU-2", None))
        .await
        .expect("answered within 5 s")
        .expect("availability answered");
}

/// Writes Availability requests on `streams` streams of an authenticated
/// connection for `duration`, never reading an answer. Returns the bytes
/// the server took.
async fn pipeline_without_reading(
    connection: &quinn::Connection,
    streams: usize,
    duration: Duration,
) -> (u64, Vec<quinn::RecvStream>) {
    let (mut send, mut recv) = connection.open_bi().await.unwrap();
    send.write_all(&hello("dev-web-token")).await.unwrap();
    let mut answer = vec![0u8; 64];
    // The HelloOk only: read so that the connection is authenticated first.
    let _ = tokio::time::timeout(Duration::from_secs(5), recv.read(&mut answer)).await;
    let request = encoded(
        &Request::Availability {
            sku: "SKU-1".into(),
            near: None,
            with_state: true,
        },
        7,
    );
    let chunk: Vec<u8> = request.repeat(4096);
    let deadline = tokio::time::Instant::now() + duration;
    let mut writers = Vec::new();
    let mut readers = vec![recv];
    for _ in 0..streams {
        let (mut send, recv) = connection.open_bi().await.unwrap();
        readers.push(recv);
        let chunk = chunk.clone();
        writers.push(tokio::spawn(async move {
            let mut written = 0u64;
            while tokio::time::timeout_at(deadline, send.write_all(&chunk))
                .await
                .is_ok_and(|w| w.is_ok())
            {
                written += chunk.len() as u64;
            }
            (written, send)
        }));
    }
    let mut total = 0;
    for writer in writers {
        let (written, send) = writer.await.unwrap();
        total += written;
        // Kept open: dropping it would finish the stream.
        std::mem::forget(send);
    }
    (total, readers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_half_open_and_unread_connections_cost_an_honest_client_nothing() {
    // Proves that 300 silent connections, streams left mid-frame and a
    // client that pipelines without reading neither lock out nor slow an
    // honest client with a token, that the silent ones are closed with
    // NO_HELLO (by the deadline, or oldest first when the waiting room is
    // full), that the daemon's RSS stays within RSS_GROWTH_BOUND_MIB of
    // where it started, and that SIGTERM stops it within its grace period.
    let dir = TempDir::new("hostile-quic");
    let config = hostile_config(&dir);
    let mut daemon = Daemon::start(&dir.0.join("data"), Some(&config), "off").await;
    let pid = daemon.child.id().unwrap();
    honest_round(&daemon, 0).await;
    let rss_before = rss_mib(pid);

    let mut silent = Vec::new();
    while silent.len() < SILENT_CONNECTIONS {
        silent.extend(many_raw(&daemon, 100).await);
        honest_round(&daemon, silent.len()).await;
    }
    // Streams left in the middle of a frame, and one frame too long for a
    // connection that has not said Hello.
    let mut half_open = Vec::new();
    for _ in 0..HALF_FRAME_CONNECTIONS {
        let connection = raw(&daemon).await;
        let (mut send, _recv) = connection.connection.open_bi().await.unwrap();
        let partial = hello("dev-web-token");
        send.write_all(&partial[..partial.len() - 3]).await.unwrap();
        half_open.push((connection, send, _recv));
    }
    let too_long = raw(&daemon).await;
    let (mut send, mut recv) = too_long.connection.open_bi().await.unwrap();
    send.write_all(&(64u32 * 1024).to_le_bytes()).await.unwrap();
    send.write_all(&[0x06; 512]).await.unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(5), recv.read_to_end(4096))
        .await
        .expect("answered at once")
        .expect("the stream ends");
    let length = check_frame(&answer).unwrap().expect("a whole answer");
    let (kind, _, payload) = split_frame(&answer[..length]);
    match Response::decode(kind, payload).unwrap().unwrap() {
        Response::Error { code, message } => {
            assert_eq!(code, ErrorCode::Unframeable as u16);
            assert!(
                message.contains("MAX_UNAUTHENTICATED_FRAME_BYTES"),
                "{message}"
            );
        }
        other => panic!("expected Unframeable, got {other:?}"),
    }

    // A client with a token that pipelines and never reads.
    let greedy = raw(&daemon).await;
    let pipelined = tokio::spawn({
        let greedy = greedy.connection.clone();
        async move { pipeline_without_reading(&greedy, PIPELINED_STREAMS, Duration::from_secs(4)).await }
    });
    let mut rss_peak = rss_mib(pid);
    for n in 0..8 {
        honest_round(&daemon, 1000 + n).await;
        rss_peak = rss_peak.max(rss_mib(pid));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let (written, _readers) = pipelined.await.unwrap();
    rss_peak = rss_peak.max(rss_mib(pid));
    eprintln!(
        "RSS {rss_before} MiB before, {rss_peak} MiB at most; the pipelining client got {} MiB of requests in",
        written >> 20
    );
    assert!(
        rss_peak <= rss_before + RSS_GROWTH_BOUND_MIB,
        "RSS grew from {rss_before} MiB to {rss_peak} MiB"
    );

    // Every silent and half-open connection is closed with NO_HELLO: the
    // newest by the deadline, the oldest when newer ones needed the room.
    let within = Duration::from_millis(HELLO_TIMEOUT_MS + 5_000);
    let (mut late, mut evicted) = (0, 0);
    let waiting = silent.iter().chain(half_open.iter().map(|(c, _, _)| c));
    for connection in waiting {
        let (code, reason) = close_of(&connection.connection, within).await;
        assert_eq!(code, u64::from(close_codes::NO_HELLO), "{reason}");
        if reason.contains("hello_timeout_ms") {
            late += 1;
        } else {
            assert!(
                reason.contains("max_unauthenticated_connections"),
                "{reason}"
            );
            evicted += 1;
        }
    }
    eprintln!("closed: {late} by the Hello deadline, {evicted} for newer connections");
    assert!(late > 0 && evicted > 0, "{late} late, {evicted} evicted");
    honest_round(&daemon, 2000).await;

    // A stop with fresh silent connections and the unread client still open.
    let _more_silent = many_raw(&daemon, 100).await;
    let started = Instant::now();
    let status = tokio::time::timeout(Duration::from_secs(GRACE_PERIOD_S), async {
        daemon.signal(libc::SIGTERM);
        daemon.child.wait().await
    })
    .await
    .expect("the daemon stops within its grace period")
    .unwrap();
    assert!(status.success(), "{status}");
    eprintln!("stopped in {} ms", started.elapsed().as_millis());
    drop(greedy);
}

#[tokio::test]
async fn a_connection_cannot_hold_more_follows_or_listings_than_its_share() {
    // Proves the per-connection limits: the 17th follow on one connection
    // is answered Overloaded while 16 stay open, and a second ListOrders
    // in process on one connection is answered Overloaded.
    let dir = TempDir::new("hostile-quic-limits");
    let config = web_config_file(&dir);
    let mut daemon = Daemon::start(&dir.0.join("data"), Some(&config), "off").await;
    let raw = raw(&daemon).await;
    let connection = &raw.connection;
    let (mut send, mut recv) = connection.open_bi().await.unwrap();
    send.write_all(&hello(CHANNEL_WEB_TOKEN)).await.unwrap();
    match next_frame(&mut recv).await {
        (_, Response::HelloOk { .. }) => {}
        other => panic!("expected HelloOk, got {other:?}"),
    }
    let mut follows = Vec::new();
    let follow = |id| {
        encoded(
            &Request::FollowOrders {
                channel: "web".into(),
                from_cursor: 0,
            },
            id,
        )
    };
    for id in 1..=16 {
        let (mut send, recv) = connection.open_bi().await.unwrap();
        send.write_all(&follow(id)).await.unwrap();
        follows.push((send, recv));
    }
    for (_, recv) in &mut follows {
        match next_frame(recv).await {
            (_, Response::Subscribed { .. }) => {}
            other => panic!("expected Subscribed, got {other:?}"),
        }
    }
    send.write_all(&follow(17)).await.unwrap();
    let (id, refused) = next_frame(&mut recv).await;
    assert_eq!(id, 17);
    assert!(
        matches!(&refused, Response::Error { code, message } if *code == ErrorCode::Overloaded as u16 && message.contains("MAX_FOLLOWS_PER_CONNECTION")),
        "{refused:?}"
    );
    let list = |id| {
        encoded(
            &Request::ListOrders(OrderQuery {
                channel: "web".into(),
                state: 0,
                node: String::new(),
                created_from_ms: 0,
                created_to_ms: 0,
                after: 0,
                limit: 10,
            }),
            id,
        )
    };
    let mut both = list(20);
    both.extend(list(21));
    send.write_all(&both).await.unwrap();
    let (first, second) = (next_frame(&mut recv).await, next_frame(&mut recv).await);
    let (listed, refused) = if first.0 == 20 {
        (first, second)
    } else {
        (second, first)
    };
    assert!(
        matches!(listed, (20, Response::OrderPage { .. })),
        "{listed:?}"
    );
    assert!(
        matches!(&refused, (21, Response::Error { code, message }) if *code == ErrorCode::Overloaded as u16 && message.contains("MAX_LISTINGS_PER_CONNECTION")),
        "{refused:?}"
    );
    let client = Client::connect(
        daemon.addr,
        "localhost",
        Trust::CaFile(daemon.cert.clone()),
        CHANNEL_WEB_TOKEN,
    )
    .await
    .expect("another connection is not limited by this one's follows");
    let _ = client.availability("SKU-1", None).await.unwrap();
    daemon.terminate().await;
}

/// The next whole frame on `recv`, within 5 s.
async fn next_frame(recv: &mut quinn::RecvStream) -> (u64, Response) {
    let mut buffer = Vec::new();
    loop {
        if let Ok(Some(length)) = check_frame(&buffer) {
            let (kind, id, payload) = split_frame(&buffer[..length]);
            return (id, Response::decode(kind, payload).unwrap().unwrap());
        }
        let mut byte = [0u8; 1];
        tokio::time::timeout(Duration::from_secs(5), recv.read_exact(&mut byte))
            .await
            .expect("a frame within 5 s")
            .expect("the stream goes on");
        buffer.push(byte[0]);
    }
}

#[tokio::test]
async fn the_development_tokens_are_refused_beyond_loopback() {
    // Proves a daemon on the embedded config refuses to listen on
    // 0.0.0.0, exits non-zero before binding anything, and says why and
    // how to set real tokens.
    let dir = TempDir::new("hostile-quic-dev-tokens");
    let output = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_omniroute"))
            .arg("--data-dir")
            .arg(dir.0.join("data"))
            .args([
                "--listen",
                "0.0.0.0:0",
                "--admin",
                "127.0.0.1:0",
                "--http",
                "127.0.0.1:0",
            ])
            .output(),
    )
    .await
    .expect("the daemon exits at once")
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "it started: {stderr}");
    assert!(
        stderr.contains("0.0.0.0:0") && stderr.contains("not a loopback address"),
        "{stderr}"
    );
    assert!(
        stderr.contains("development tokens") && stderr.contains("[[server.tokens]]"),
        "{stderr}"
    );
    assert!(
        !String::from_utf8_lossy(&output.stdout).contains("listening on"),
        "it listened"
    );
}
