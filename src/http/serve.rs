//! Serving an HTTP port (the gateway, the admin port) with every client
//! bounded: at most `max_connections` at once, each closed by the watch in
//! [`super::conn`] when it stalls, and a stop that ends within
//! `shutdown_grace_ms` whatever the clients do.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::limits::{HTTP_ACCEPT_RETRY_MS, HTTP_REFUSAL_LINGER_MS, MAX_HTTP_REFUSALS_IN_FLIGHT};

/// How one HTTP port bounds its clients (`[http]`; the admin port takes
/// the same timeouts and its own `admin.max_connections`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpLimits {
    /// Connections served at once; the next ones are answered 503.
    pub max_connections: usize,
    /// Connections past the cap being answered 503 at once (each holds a
    /// descriptor for `HTTP_REFUSAL_LINGER_MS`); beyond, they are dropped.
    pub max_refusals_in_flight: usize,
    /// From a request head's first byte until it is whole.
    pub header_read_timeout_ms: u64,
    /// From a request's head until its body is whole.
    pub body_read_timeout_ms: u64,
    /// A connection on which no byte moves either way is closed after this.
    pub idle_timeout_ms: u64,
    /// How long a stop lets requests under way finish before it closes
    /// the connections still open.
    pub shutdown_grace_ms: u64,
}

impl Default for HttpLimits {
    fn default() -> HttpLimits {
        HttpLimits {
            // As many as the QUIC port's `server.max_connections`: each
            // costs a task and hyper's buffers (8 KiB idle, up to 400 KiB
            // busy), so 1024 stay under half a GiB at worst.
            max_connections: 1024,
            max_refusals_in_flight: MAX_HTTP_REFUSALS_IN_FLIGHT,
            // A header is a few hundred bytes: ten seconds is generous on
            // any link that can carry an order at all.
            header_read_timeout_ms: 10_000,
            // A 1 MiB body (the largest) at 50 KiB/s.
            body_read_timeout_ms: 30_000,
            // Proxies keep idle upstream connections about a minute; event
            // streams send a comment well within it (`events.rs`).
            idle_timeout_ms: 60_000,
            // The gateway stops first and the QUIC port may take its 12 s
            // after it: with the final snapshot this keeps a stop within
            // the 30 s of OPERATIONS.md's `TimeoutStopSec`.
            shutdown_grace_ms: 5_000,
        }
    }
}

/// The whole answer to a connection past the cap, written before it is
/// closed: a 503 with `body` (of `content_type`) and `Connection: close`.
pub fn at_capacity_response(content_type: &str, body: &str) -> Arc<[u8]> {
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
    .into()
}

/// Serves `router` on `listener` within `limits` until `stop`; `port`
/// names it in the log. The task ends once every connection has.
pub fn spawn(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    at_capacity: Arc<[u8]>,
    port: &'static str,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let tracker = TaskTracker::new();
        let force = CancellationToken::new();
        let limits = Arc::new(limits);
        let slots = Arc::new(Semaphore::new(limits.max_connections));
        let refusals = Arc::new(Semaphore::new(limits.max_refusals_in_flight));
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = stop.cancelled() => break,
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, most likely: wait for some
                    // to close rather than spin.
                    tracing::warn!("{port}: cannot accept a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(HTTP_ACCEPT_RETRY_MS)).await;
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                // Past the cap: answered by a task of its own while there
                // are few of those; beyond them the connection is dropped.
                if let Ok(refusing) = refusals.clone().try_acquire_owned() {
                    let (answer, force) = (at_capacity.clone(), force.clone());
                    tracker.spawn(async move {
                        tokio::select! {
                            () = refuse(stream, &answer) => {}
                            () = force.cancelled() => {}
                        }
                        drop(refusing);
                    });
                }
                continue;
            };
            let (router, limits) = (router.clone(), limits.clone());
            let (stop, force) = (stop.clone(), force.clone());
            tracker.spawn(async move {
                super::conn::serve(stream, router, limits, stop, force).await;
                drop(slot);
            });
        }
        drop(listener);
        stop_connections(&tracker, &force, &limits, port).await;
    })
}

/// Waits for the connections to finish what they were doing, for at most
/// the grace, then closes the rest.
async fn stop_connections(
    tracker: &TaskTracker,
    force: &CancellationToken,
    limits: &HttpLimits,
    port: &str,
) {
    tracker.close();
    let grace = Duration::from_millis(limits.shutdown_grace_ms);
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tracing::warn!(
            "{port}: {} connections still open after the {} ms grace (clients not sending or not reading); closing them",
            tracker.len(),
            limits.shutdown_grace_ms
        );
        force.cancel();
        tracker.wait().await;
    }
}

/// Answers a connection past the cap with `answer`, then reads what the
/// client sent until it closes (so that closing with its request unread
/// does not reset the connection before it reads the 503), for at most
/// `HTTP_REFUSAL_LINGER_MS`.
async fn refuse(mut stream: TcpStream, answer: &[u8]) {
    let linger = async {
        stream.write_all(answer).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 1024];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<(), std::io::Error>(())
    };
    let _ = tokio::time::timeout(Duration::from_millis(HTTP_REFUSAL_LINGER_MS), linger).await;
}
