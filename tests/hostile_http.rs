//! Hostile and broken clients of the HTTP ports, against the real daemon
//! binary over raw TCP: silent connections past the cap, clients that
//! trickle a header or stop half-way through a body, an event-stream
//! follower that never reads, and a stop with a half-sent request open.
//! An honest client must be served through all of it, the slow ones closed
//! by the timeouts, the daemon's memory bounded and SIGTERM prompt.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::daemon::Daemon;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// The test values of the `[http]` knobs: small, so that every timeout
/// fires within seconds. The idle timeout is the longest, so that a
/// trickled header or body meets its own timeout first.
const HEADER_READ_TIMEOUT_MS: u64 = 800;
const BODY_READ_TIMEOUT_MS: u64 = 800;
const IDLE_TIMEOUT_MS: u64 = 1_500;
const MAX_CONNECTIONS: usize = 100;
const ADMIN_MAX_CONNECTIONS: usize = 8;

/// Longest any one client of these tests waits for an answer or a close.
const WAIT_S: u64 = 10;

/// The fixture network with web's SKU-1 stocked deep (every order routes)
/// and `http` as the `[http]` section's knobs, in `dir`.
fn config_file(dir: &TempDir, http: &str) -> std::path::PathBuf {
    let path = dir.0.join("omniroute.toml");
    let text = format!(
        "{NODES}\n{}{}{}{}\n[http]\n{http}\n[admin]\nmax_connections = {ADMIN_MAX_CONNECTIONS}\n",
        server_section(&dir.0.join("data")),
        channel("web", &["nearest"]),
        channel("c", &["nearest"]),
        deep_stock(),
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// Lines of each order the stuck-follower test sends: each status then
/// carries this many allocations (some 3 KiB of JSON).
const LINES_PER_ORDER: usize = 40;

/// SKU-1..=SKU-40 at WH-S, a million units each: every order routes.
fn deep_stock() -> String {
    let skus: Vec<String> = (1..=LINES_PER_ORDER).map(|i| format!("SKU-{i}")).collect();
    let entries: Vec<(&str, &str, u32)> = skus
        .iter()
        .map(|s| (s.as_str(), "WH-S", 1_000_000))
        .collect();
    stock(&entries)
}

fn short_timeouts() -> String {
    format!(
        "max_connections = {MAX_CONNECTIONS}\nheader_read_timeout_ms = {HEADER_READ_TIMEOUT_MS}\n\
         body_read_timeout_ms = {BODY_READ_TIMEOUT_MS}\nidle_timeout_ms = {IDLE_TIMEOUT_MS}\n\
         shutdown_grace_ms = 1000\n"
    )
}

/// The daemon's resident memory, from /proc.
fn rss_kib(daemon: &Daemon) -> u64 {
    let pid = daemon.child.id().expect("running");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// One whole request with `Connection: close`; the answer's status, or
/// None when the connection closed with no answer.
async fn request(addr: SocketAddr, path: &str) -> Option<u16> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        let head = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {CHANNEL_WEB_TOKEN}\r\n\
             Connection: close\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await.ok()?;
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer).await;
        let text = String::from_utf8_lossy(&answer);
        text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
    };
    tokio::time::timeout(Duration::from_secs(WAIT_S), exchange)
        .await
        .expect("an honest request is answered or closed, never left hanging")
}

/// What a well-behaved client asks: SKU-1's availability.
async fn honest(addr: SocketAddr) -> Option<u16> {
    request(addr, "/v1/availability/SKU-1").await
}

/// Retries an honest request until it is served (200), for at most `WAIT_S`.
async fn served_soon(addr: SocketAddr, path: &str) {
    let deadline = Instant::now() + Duration::from_secs(WAIT_S);
    loop {
        let status = request(addr, path).await;
        if status == Some(200) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{path} not served within {WAIT_S} s (last: {status:?})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reads what the server sends until it closes the connection; None if
/// it is still open after `WAIT_S`.
async fn read_until_closed(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut seen = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(WAIT_S);
    loop {
        match tokio::time::timeout_at(deadline.into(), stream.read(&mut chunk)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(seen),
            Ok(Ok(n)) => seen.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Opens `count` connections to `addr` that send nothing, and returns
/// tasks that each tell what the server sent before it closed (None: not
/// closed within `WAIT_S`).
async fn silent(addr: SocketAddr, count: usize) -> Vec<tokio::task::JoinHandle<Option<Vec<u8>>>> {
    let mut readers = Vec::new();
    for _ in 0..count {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        readers.push(tokio::spawn(
            async move { read_until_closed(&mut stream).await },
        ));
    }
    readers
}

/// Asserts every silent connection was closed by the server, and that at
/// least one past the cap was told so with a 503.
async fn closed_and_refused(readers: Vec<tokio::task::JoinHandle<Option<Vec<u8>>>>, what: &str) {
    let mut refused = 0;
    for reader in readers {
        let seen = reader
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("a silent {what} connection is still open after {WAIT_S} s"));
        let text = String::from_utf8_lossy(&seen);
        if text.starts_with("HTTP/1.1 503") {
            assert!(text.contains("connection limit"), "{text}");
            refused += 1;
        }
    }
    assert!(refused > 0, "no {what} connection past the cap got a 503");
}

/// A client that sends a request head one byte every 200 ms; returns
/// whether the server closed it within `WAIT_S`.
async fn slowloris(addr: SocketAddr) -> bool {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let head = b"GET /v1/availability/SKU-1 HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let deadline = Instant::now() + Duration::from_secs(WAIT_S);
    for byte in head.iter().cycle() {
        if Instant::now() > deadline {
            return false;
        }
        if stream.write_all(&[*byte]).await.is_err() {
            return true;
        }
        let mut probe = [0u8; 64];
        match tokio::time::timeout(Duration::from_millis(200), stream.read(&mut probe)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) | Err(_) => {}
        }
    }
    unreachable!("the head repeats")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn silent_and_slow_clients_are_closed_and_an_honest_client_is_served() {
    // Proves that 300 silent connections (cap 100) get 503s past the cap and are all closed by
    // the idle timeout, that header tricklers are closed by the header timeout and a stalled
    // body is answered 408 and closed, that the admin port is capped and timed out alike, and
    // that through all of it an honest client is answered and then served, with RSS bounded.
    let dir = TempDir::new("hostile-http");
    let config = config_file(&dir, &short_timeouts());
    let daemon = Daemon::start(&dir.0.join("data"), Some(&config), "127.0.0.1:0").await;
    let (http, admin) = (daemon.http, daemon.admin());
    assert_eq!(honest(http).await, Some(200));
    let rss_before = rss_kib(&daemon);

    let gateway_silent = silent(http, 300).await;
    let admin_silent = silent(admin, 3 * ADMIN_MAX_CONNECTIONS).await;
    let during = honest(http).await;
    assert!(
        matches!(during, Some(200 | 503)),
        "at the cap an honest client is answered 200 or 503, got {during:?}"
    );
    closed_and_refused(gateway_silent, "gateway").await;
    closed_and_refused(admin_silent, "admin").await;
    served_soon(http, "/v1/availability/SKU-1").await;
    served_soon(admin, "/healthz").await;

    let slow: Vec<_> = (0..20).map(|_| tokio::spawn(slowloris(http))).collect();
    let stalled_body = tokio::spawn(partial_body(http));
    // Twenty slow clients are well under the cap: the honest one is served meanwhile.
    for _ in 0..5 {
        assert_eq!(honest(http).await, Some(200));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for client in slow {
        assert!(client.await.unwrap(), "a header trickler was not closed");
    }
    let answer = stalled_body.await.unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 408"),
        "a stalled body is answered 408, got {answer:?}"
    );
    assert!(answer.contains("did not arrive within"), "{answer}");
    assert_eq!(honest(http).await, Some(200));

    let grown_kib = rss_kib(&daemon).saturating_sub(rss_before);
    eprintln!("RSS {rss_before} KiB before, grew {grown_kib} KiB");
    assert!(
        grown_kib < 64 * 1024,
        "RSS grew {grown_kib} KiB under the hostile clients"
    );
    let mut daemon = daemon;
    assert!(daemon.terminate().await.success());
}

/// A POST that declares 200 body bytes and sends 20; what the server sent
/// before it closed the connection.
async fn partial_body(addr: SocketAddr) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /v1/orders HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {CHANNEL_WEB_TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: 200\r\n\r\n{{\"channel\": \"web\", "
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let seen = read_until_closed(&mut stream)
        .await
        .expect("the server closes a connection whose body stalled");
    String::from_utf8_lossy(&seen).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_event_follower_that_never_reads_is_closed_and_memory_stays_bounded() {
    // Proves that a follower of the status stream that stops reading (a tiny receive buffer it
    // never drains) while 4 MiB of statuses are sent is closed once nothing moves for the
    // idle timeout, that the daemon's RSS stays bounded meanwhile, and that honest clients are
    // served throughout.
    let dir = TempDir::new("hostile-sse");
    let config = config_file(&dir, &short_timeouts());
    let mut daemon = Daemon::start(&dir.0.join("data"), Some(&config), "off").await;
    let http = daemon.http;
    let rss_before = rss_kib(&daemon);
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut follower = socket.connect(http).await.unwrap();
    let head = format!(
        "GET /v1/channels/web/events HTTP/1.1\r\nHost: {http}\r\n\
         Authorization: Bearer {CHANNEL_WEB_TOKEN}\r\n\r\n"
    );
    follower.write_all(head.as_bytes()).await.unwrap();
    // Some 4 MiB of statuses, more than the follower's socket buffers
    // take, sent by 8 clients at once so that commits are shared.
    let senders: Vec<_> = (0..8)
        .map(|c| tokio::spawn(send_orders(http, c, 160)))
        .collect();
    for sender in senders {
        sender.await.unwrap();
    }
    assert_eq!(honest(http).await, Some(200));
    let grown_kib = rss_kib(&daemon).saturating_sub(rss_before);
    eprintln!("RSS {rss_before} KiB before, grew {grown_kib} KiB");
    assert!(
        grown_kib < 64 * 1024,
        "RSS grew {grown_kib} KiB with a stuck follower"
    );
    // Nothing can move now: once the idle timeout passes the server closes the follower, whose
    // reads then drain what the kernel held and end.
    tokio::time::sleep(Duration::from_millis(IDLE_TIMEOUT_MS * 2)).await;
    assert!(
        read_until_closed(&mut follower).await.is_some(),
        "the stuck follower is still connected"
    );
    assert_eq!(honest(http).await, Some(200));
    assert!(daemon.terminate().await.success());
}

/// Sends `count` orders of `LINES_PER_ORDER` lines, ids `o-{client}-N`, one
/// after another on one keep-alive connection.
async fn send_orders(http: SocketAddr, client: usize, count: usize) {
    let lines: Vec<String> = (1..=LINES_PER_ORDER)
        .map(|i| format!("{{\"sku\": \"SKU-{i}\", \"qty\": 1}}"))
        .collect();
    let lines = lines.join(", ");
    let mut orders = TcpStream::connect(http).await.unwrap();
    for i in 0..count {
        let body = format!(
            "{{\"channel\": \"web\", \"id\": \"o-{client}-{i}\", \"lines\": [{lines}], \
             \"ship_to\": {{\"lat\": 50.0, \"lon\": 10.0}}}}"
        );
        let post = format!(
            "POST /v1/orders HTTP/1.1\r\nHost: {http}\r\nAuthorization: Bearer {CHANNEL_WEB_TOKEN}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        orders.write_all(post.as_bytes()).await.unwrap();
        read_one_answer(&mut orders).await;
    }
}

/// Reads one answer with a JSON body off a keep-alive connection.
async fn read_one_answer(stream: &mut TcpStream) {
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    let read = async {
        loop {
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the order connection closed");
            answer.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&answer);
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                assert!(head.starts_with("HTTP/1.1 200"), "{text}");
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .expect("a length")
                    .parse()
                    .unwrap();
                if body.len() >= length {
                    return;
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(WAIT_S), read)
        .await
        .expect("an order is answered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_ends_within_the_grace_with_half_sent_requests_open() {
    // Proves that with timeouts far longer than the test, a half-sent head, a half-sent body
    // and a trickling client do not hold a stop: SIGTERM closes them after the 1 s grace and
    // the daemon exits 0 well within its stop grace.
    let dir = TempDir::new("hostile-stop");
    let long = "header_read_timeout_ms = 600000\nbody_read_timeout_ms = 600000\n\
                idle_timeout_ms = 600000\nshutdown_grace_ms = 1000\n";
    let config = config_file(&dir, long);
    let mut daemon = Daemon::start(&dir.0.join("data"), Some(&config), "127.0.0.1:0").await;
    let http = daemon.http;
    let mut half_head = TcpStream::connect(http).await.unwrap();
    half_head
        .write_all(b"GET /v1/availability/SKU-1 HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut half_admin = TcpStream::connect(daemon.admin()).await.unwrap();
    half_admin.write_all(b"GET /metri").await.unwrap();
    let mut half_body = TcpStream::connect(http).await.unwrap();
    let head = format!(
        "POST /v1/orders HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {CHANNEL_WEB_TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: 200\r\n\r\n{{"
    );
    half_body.write_all(head.as_bytes()).await.unwrap();
    let trickler = tokio::spawn(slowloris(http));
    assert_eq!(honest(http).await, Some(200));
    tokio::time::sleep(Duration::from_millis(300)).await;

    let stopping = Instant::now();
    daemon.signal(libc::SIGTERM);
    let exited = tokio::time::timeout(Duration::from_secs(20), daemon.child.wait())
        .await
        .expect("the daemon exits within 20 s of SIGTERM with half-sent requests open")
        .unwrap();
    assert!(exited.success(), "{exited:?}");
    daemon
        .log_line_with("still open after the 1000 ms grace")
        .await;
    eprintln!("stopped in {} ms", stopping.elapsed().as_millis());
    assert!(trickler.await.unwrap(), "the trickler was closed");
    for stream in [&mut half_head, &mut half_admin, &mut half_body] {
        assert!(read_until_closed(stream).await.is_some());
    }
}
