//! One HTTP connection, bounded in time: hyper's HTTP/1 connection with
//! axum's router as its service, and a watch over it that closes it when
//! the client stalls. A connection is closed when
//!
//! - no byte moved either way for `idle_timeout_ms` (a keep-alive
//!   connection with no request, a silent connection, a client that stopped
//!   reading its answer or its event stream);
//! - a request's head began but is not whole within `header_read_timeout_ms`
//!   (a client trickling its header, byte by byte);
//!
//! and a request's body that is not whole within `body_read_timeout_ms` of
//! its head fails (the route answers 408 and the connection closes).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::Router;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tower_service::Service;

use super::serve::HttpLimits;

/// `head_started_ms` when no head is being read.
const NO_HEAD: u64 = u64::MAX;

/// What the watch knows of one connection: written by its reads and writes
/// and by its requests, all on the connection's own task.
struct Watch {
    born: Instant,
    /// When a byte last moved, either way (ms since `born`).
    last_moved_ms: AtomicU64,
    /// When the first byte of the head being read arrived, or `NO_HEAD`.
    head_started_ms: AtomicU64,
    /// Requests whose head was read and whose answer is not all written.
    open_requests: AtomicU32,
}

/// Why the watch closed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expired {
    Idle,
    Header,
}

impl Watch {
    fn new() -> Watch {
        Watch {
            born: Instant::now(),
            last_moved_ms: AtomicU64::new(0),
            head_started_ms: AtomicU64::new(NO_HEAD),
            open_requests: AtomicU32::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        self.born.elapsed().as_millis() as u64
    }

    /// Bytes moved; `read` ones between requests start a head.
    fn moved(&self, read: bool) {
        let now = self.now_ms();
        self.last_moved_ms.store(now, Ordering::Relaxed);
        if read
            && self.open_requests.load(Ordering::Relaxed) == 0
            && self.head_started_ms.load(Ordering::Relaxed) == NO_HEAD
        {
            self.head_started_ms.store(now, Ordering::Relaxed);
        }
    }

    fn request_began(&self) {
        self.open_requests.fetch_add(1, Ordering::Relaxed);
        self.head_started_ms.store(NO_HEAD, Ordering::Relaxed);
    }

    fn request_ended(&self) {
        self.open_requests.fetch_sub(1, Ordering::Relaxed);
    }

    /// Why the connection must close now, or when to look again (ms since
    /// `born`). A head that begins while the watch sleeps is looked at
    /// within a quarter of its timeout.
    fn verdict(&self, limits: &HttpLimits) -> Result<u64, Expired> {
        let now = self.now_ms();
        let idle_at = self.last_moved_ms.load(Ordering::Relaxed) + limits.idle_timeout_ms;
        if now >= idle_at {
            return Err(Expired::Idle);
        }
        let mut next = idle_at.min(now + limits.header_read_timeout_ms / 4);
        let head = self.head_started_ms.load(Ordering::Relaxed);
        if head != NO_HEAD && self.open_requests.load(Ordering::Relaxed) == 0 {
            let header_at = head + limits.header_read_timeout_ms;
            if now >= header_at {
                return Err(Expired::Header);
            }
            next = next.min(header_at);
        }
        Ok(next)
    }

    /// Resolves when the connection is to be closed.
    async fn expired(&self, limits: &HttpLimits) -> Expired {
        loop {
            match self.verdict(limits) {
                Err(expired) => return expired,
                Ok(at_ms) => {
                    let at = self.born + Duration::from_millis(at_ms);
                    tokio::time::sleep_until(at.into()).await;
                }
            }
        }
    }
}

/// Serves one accepted connection until it ends, the watch closes it, or
/// the port stops: at `stop` it finishes the request under way (hyper's
/// graceful shutdown), and at `force` it is dropped as it stands.
pub(super) async fn serve(
    stream: TcpStream,
    router: Router,
    limits: Arc<HttpLimits>,
    stop: CancellationToken,
    force: CancellationToken,
) {
    let watch = Arc::new(Watch::new());
    let io = TokioIo::new(Watched {
        inner: stream,
        watch: watch.clone(),
    });
    let service = {
        let watch = watch.clone();
        let body_timeout_ms = limits.body_read_timeout_ms;
        hyper::service::service_fn(move |request| {
            respond(router.clone(), request, watch.clone(), body_timeout_ms)
        })
    };
    // The watch bounds heads, so hyper's own header timer stays off.
    let connection = hyper::server::conn::http1::Builder::new()
        .header_read_timeout(None)
        .serve_connection(io, service);
    tokio::pin!(connection);
    let mut stopping = false;
    loop {
        tokio::select! {
            served = connection.as_mut() => {
                if let Err(e) = served {
                    tracing::debug!("an HTTP connection ended: {e}");
                }
                return;
            }
            expired = watch.expired(&limits) => {
                let why = match expired {
                    Expired::Idle => "no byte moved within idle_timeout_ms",
                    Expired::Header => "its request head was not whole within header_read_timeout_ms",
                };
                tracing::debug!("closed an HTTP connection: {why}");
                return;
            }
            () = stop.cancelled(), if !stopping => {
                stopping = true;
                connection.as_mut().graceful_shutdown();
            }
            () = force.cancelled() => return,
        }
    }
}

/// One request through the router: its body bounded in time, and counted
/// open until its answer's last byte is written.
async fn respond(
    mut router: Router,
    request: hyper::Request<Incoming>,
    watch: Arc<Watch>,
    body_timeout_ms: u64,
) -> Result<hyper::Response<Body>, std::convert::Infallible> {
    let open = OpenRequest::new(watch);
    let deadline = tokio::time::Instant::now() + Duration::from_millis(body_timeout_ms);
    let request = request.map(|body| {
        Body::new(Deadline {
            body,
            deadline,
            timeout_ms: body_timeout_ms,
            sleep: None,
        })
    });
    let response = router.call(request).await?;
    Ok(response.map(|body| Body::new(Counted { body, _open: open })))
}

/// A request counted open while it lives.
struct OpenRequest(Arc<Watch>);

impl OpenRequest {
    fn new(watch: Arc<Watch>) -> OpenRequest {
        watch.request_began();
        OpenRequest(watch)
    }
}

impl Drop for OpenRequest {
    fn drop(&mut self) {
        self.0.request_ended();
    }
}

/// An answer's body that keeps its request open until hyper drops it,
/// after its last byte.
struct Counted {
    body: Body,
    _open: OpenRequest,
}

impl http_body::Body for Counted {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A request body that fails once its deadline passes with bytes still
/// to come.
struct Deadline {
    body: Incoming,
    deadline: tokio::time::Instant,
    timeout_ms: u64,
    /// Made at the first wait: most bodies arrive with their head.
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// A request body that was not whole within `body_read_timeout_ms`.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {timeout_ms} ms")]
pub struct BodyTimedOut {
    pub timeout_ms: u64,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl http_body::Body for Deadline {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.body).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(BoxError::from)));
        }
        let deadline = self.deadline;
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => {
                let timeout_ms = self.timeout_ms;
                Poll::Ready(Some(Err(Box::new(BodyTimedOut { timeout_ms }))))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The socket, telling the watch of every byte that moves.
struct Watched {
    inner: TcpStream,
    watch: Arc<Watch>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.watch.moved(true);
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bytes: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, bytes);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.watch.moved(false);
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bytes: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bytes);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.watch.moved(false);
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> HttpLimits {
        HttpLimits {
            header_read_timeout_ms: 1_000,
            idle_timeout_ms: 5_000,
            ..HttpLimits::default()
        }
    }

    #[test]
    fn a_head_is_timed_from_its_first_byte_and_a_request_stops_the_clock() {
        // Proves the verdicts: idle counts from the last byte, a head from
        // its first byte between requests, and an open request has no head.
        let mut watch = Watch::new();
        watch.born -= Duration::from_secs(60);
        watch.last_moved_ms.store(watch.now_ms(), Ordering::Relaxed);
        let limits = limits();
        assert!(watch.verdict(&limits).is_ok());
        watch.moved(true);
        let head = watch.head_started_ms.load(Ordering::Relaxed);
        assert_ne!(head, NO_HEAD, "a byte between requests starts a head");
        watch
            .head_started_ms
            .store(watch.now_ms() - 1_000, Ordering::Relaxed);
        watch.last_moved_ms.store(watch.now_ms(), Ordering::Relaxed);
        assert_eq!(watch.verdict(&limits), Err(Expired::Header));
        watch.request_began();
        assert!(
            watch.verdict(&limits).is_ok(),
            "a head read is no longer timed"
        );
        watch.moved(true);
        assert_eq!(
            watch.head_started_ms.load(Ordering::Relaxed),
            NO_HEAD,
            "body bytes start no head"
        );
        watch.request_ended();
        watch
            .last_moved_ms
            .store(watch.now_ms() - 5_000, Ordering::Relaxed);
        assert_eq!(watch.verdict(&limits), Err(Expired::Idle));
    }
}
