//! One connection: its role, its streams, and the framing of each stream.
//!
//! Each stream has a reader (this task) and a writer task. The reader
//! decodes every whole frame it has in one go, answers what needs no engine
//! at once, and hands the rest to a task of its own, so that answers come
//! back as they complete, out of order, while reading goes on. A connection
//! has at most `max_inflight_per_connection` requests in process; past that
//! the reader waits, and QUIC flow control pushes back on the client.

use std::sync::{Arc, OnceLock};

use futures::future::join_all;
use omniroute_protocol::{
    batch_too_large, check_frame, close_codes, length_prefix, split_frame, DecodeError, ErrorCode,
    Request, Response, LENGTH_BYTES, MIN_FRAME_BYTES, PROTOCOL_VERSION, UNFRAMED_REQUEST_ID,
};
use tokio::sync::{mpsc, Semaphore};

use super::requests::{allowed, execute, forbidden};
use super::submits::Submits;
use super::{wire, Role};
use crate::engine::{Engine, EngineError, Subscription};

/// Bytes read from a stream at once.
const READ_CHUNK_BYTES: usize = 64 * 1024;
/// Encoded batches queued for a stream's writer before producers wait.
const WRITE_QUEUE_BATCHES: usize = 1024;

pub struct Shared {
    pub engine: Engine,
    pub tokens: Arc<super::Tokens>,
    pub max_inflight_per_connection: usize,
    /// Cancelled at shutdown: stop reading, answer what was read.
    pub stop: tokio_util::sync::CancellationToken,
    /// Every connection, stream and request task, for the shutdown to wait on.
    pub tracker: tokio_util::task::TaskTracker,
}

/// What a connection is allowed to do, and how much it has in flight.
struct Session {
    /// Set by the first successful `Hello`; fixed for the connection's life.
    role: OnceLock<Role>,
    inflight: Arc<Semaphore>,
    /// Counts this connection under its role (unauthenticated until Hello).
    gauge: std::sync::Mutex<crate::telemetry::ConnectionGauge>,
}

/// What the reader or a worker hands the stream's writer.
enum Out {
    Frames(Vec<u8>),
    /// Reset the stream with this application code and stop writing.
    Reset(u32),
}

pub async fn serve_connection(incoming: quinn::Incoming, shared: Arc<Shared>) {
    let Ok(connection) = incoming.await else {
        return;
    };
    let session = Arc::new(Session {
        role: OnceLock::new(),
        inflight: Arc::new(Semaphore::new(shared.max_inflight_per_connection)),
        gauge: std::sync::Mutex::new(crate::telemetry::ConnectionGauge::new("unauthenticated")),
    });
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shared.stop.cancelled() => break,
            accepted = connection.accept_bi() => accepted,
        };
        let Ok((send, recv)) = accepted else { break };
        shared.tracker.spawn(serve_stream(
            send,
            recv,
            connection.clone(),
            session.clone(),
            shared.clone(),
        ));
    }
}

async fn write_loop(mut send: quinn::SendStream, mut queue: mpsc::Receiver<Out>) {
    while let Some(out) = queue.recv().await {
        match out {
            Out::Frames(mut bytes) => {
                // Coalesce what is already queued into one write.
                while bytes.len() < READ_CHUNK_BYTES {
                    match queue.try_recv() {
                        Ok(Out::Frames(more)) => bytes.extend_from_slice(&more),
                        Ok(Out::Reset(code)) => {
                            let _ = send.write_all(&bytes).await;
                            let _ = send.reset(code.into());
                            return;
                        }
                        Err(_) => break,
                    }
                }
                if send.write_all(&bytes).await.is_err() {
                    return;
                }
            }
            Out::Reset(code) => {
                let _ = send.reset(code.into());
                return;
            }
        }
    }
    let _ = send.finish();
    // Until the peer has every byte: a shutdown closes the connection after
    // this, and a close drops whatever was still unsent or unacknowledged.
    let _ = send.stopped().await;
}

async fn serve_stream(
    send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    connection: quinn::Connection,
    session: Arc<Session>,
    shared: Arc<Shared>,
) {
    let (out, queue) = mpsc::channel(WRITE_QUEUE_BATCHES);
    let writer = tokio::spawn(write_loop(send, queue));
    // This stream's request tasks: the answer to bytes that cannot be
    // framed waits for them, so that every whole frame before is answered.
    let requests = tokio_util::task::TaskTracker::new();
    let mut buffer: Vec<u8> = Vec::with_capacity(READ_CHUNK_BYTES);
    loop {
        let read = tokio::select! {
            biased;
            // Shutting down: what was read is answered below; nothing more is read.
            _ = shared.stop.cancelled() => break,
            read = recv.read_chunk(READ_CHUNK_BYTES, true) => read,
        };
        match read {
            Ok(Some(chunk)) => buffer.extend_from_slice(&chunk.bytes),
            Ok(None) => {
                if !buffer.is_empty() {
                    let why = truncated(&buffer);
                    unframeable_after(&requests, &out, &buffer, why).await;
                }
                break;
            }
            Err(_) => break,
        }
        let mut consumed = 0;
        let mut frames: Vec<(u64, Result<Option<Request>, DecodeError>)> = Vec::new();
        let mut broken = None;
        loop {
            match check_frame(&buffer[consumed..]) {
                Ok(Some(length)) => {
                    let (kind, id, payload) = split_frame(&buffer[consumed..consumed + length]);
                    frames.push((id, Request::decode(kind, payload)));
                    consumed += length;
                }
                Ok(None) => break,
                Err(error) => {
                    broken = Some(error);
                    break;
                }
            }
        }
        buffer.drain(..consumed);
        let stream = Stream {
            connection: &connection,
            session: &session,
            shared: &shared,
            out: &out,
            requests: &requests,
        };
        if !frames.is_empty() && !dispatch(frames, &stream).await {
            break;
        }
        if let Some(error) = broken {
            let code = error.close_code();
            let _ = recv.stop(code.into());
            let why = format!("{error}; the server reads no further (close code {code:#x})");
            unframeable_after(&requests, &out, &buffer, why).await;
            break;
        }
    }
    drop(out);
    let _ = writer.await;
}

/// Why the stream's last bytes, `rest`, are no whole frame.
fn truncated(rest: &[u8]) -> String {
    let frame = length_prefix(rest).map(|length| LENGTH_BYTES + length);
    let of = frame.map_or_else(String::new, |bytes| format!(" of {bytes} bytes"));
    format!(
        "the stream ended {} bytes into a frame{of} (close code {:#x})",
        rest.len(),
        close_codes::TRUNCATED
    )
}

/// Answers bytes that cannot be framed once every request task already
/// spawned for the stream has queued its answers; the caller then stops,
/// and the writer ends the stream. Not a reset: a QUIC reset discards
/// whatever the peer has not read yet, the answers before it included.
async fn unframeable_after(
    requests: &tokio_util::task::TaskTracker,
    out: &mpsc::Sender<Out>,
    rest: &[u8],
    why: String,
) {
    requests.close();
    requests.wait().await;
    // The frame's own id when its header came whole, so a client can match it.
    let id = rest
        .get(..LENGTH_BYTES + MIN_FRAME_BYTES)
        .map_or(UNFRAMED_REQUEST_ID, |header| split_frame(header).1);
    let answer = [(id, Response::error(ErrorCode::Unframeable, why))];
    let _ = out.send(Out::Frames(encode(&answer))).await;
}

/// What one stream's batches are dispatched with.
struct Stream<'a> {
    connection: &'a quinn::Connection,
    session: &'a Arc<Session>,
    shared: &'a Arc<Shared>,
    out: &'a mpsc::Sender<Out>,
    /// The stream's request tasks (not its subscriptions, which live on).
    requests: &'a tokio_util::task::TaskTracker,
}

fn encode(responses: &[(u64, Response)]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(responses.len() * 64);
    for (id, response) in responses {
        response.encode(*id, &mut bytes);
    }
    bytes
}

/// Handles one decoded batch. Returns false when the connection is closed.
async fn dispatch(
    frames: Vec<(u64, Result<Option<Request>, DecodeError>)>,
    stream: &Stream<'_>,
) -> bool {
    let Stream {
        connection,
        session,
        shared,
        out,
        requests,
    } = *stream;
    let mut immediate: Vec<(u64, Response)> = Vec::new();
    let mut submits = Submits::default();
    let mut others = Vec::new();
    for (id, decoded) in frames {
        let request = match decoded {
            Err(error) => {
                let code = if batch_too_large(&error) {
                    ErrorCode::TooLarge
                } else {
                    ErrorCode::Malformed
                };
                immediate.push((id, Response::error(code, error.to_string())));
                continue;
            }
            Ok(None) => {
                immediate.push((
                    id,
                    Response::error(ErrorCode::UnknownKind, "unknown request kind"),
                ));
                continue;
            }
            Ok(Some(request)) => request,
        };
        if let Request::Hello { version, token } = &request {
            if *version != PROTOCOL_VERSION {
                let reason = format!("protocol version {version} is not supported; this server speaks {PROTOCOL_VERSION}");
                connection.close(close_codes::VERSION_MISMATCH.into(), reason.as_bytes());
                return false;
            }
            immediate.push((id, hello(session, shared, token)));
            continue;
        }
        let Some(role) = session.role.get() else {
            immediate.push((
                id,
                Response::error(ErrorCode::NotAuthenticated, "send Hello with a token first"),
            ));
            continue;
        };
        if !allowed(role, &request) {
            immediate.push((id, forbidden(role)));
            continue;
        }
        match request {
            Request::Submit(order) => submits.single(id, order),
            Request::SubmitBatch(entries) => submits.batch(id, entries, role),
            Request::Subscribe { node, from_cursor } => {
                let engine = shared.engine.clone();
                let events = async move { engine.subscribe(&node, from_cursor).await };
                let pump = pump(
                    &shared.engine,
                    id,
                    events,
                    from_cursor,
                    out,
                    |e, c, event| Response::Event(wire::event(e, c, event)),
                );
                let stop = shared.stop.clone();
                shared.tracker.spawn(stop.run_until_cancelled_owned(pump));
            }
            Request::FollowOrders {
                channel,
                from_cursor,
            } => {
                let engine = shared.engine.clone();
                let statuses = async move { engine.follow_orders(&channel, from_cursor).await };
                let pump = pump(&shared.engine, id, statuses, from_cursor, out, |e, c, s| {
                    wire::order_status(e, c, s)
                });
                let stop = shared.stop.clone();
                shared.tracker.spawn(stop.run_until_cancelled_owned(pump));
            }
            other => others.push((id, other)),
        }
    }
    if !immediate.is_empty() && out.send(Out::Frames(encode(&immediate))).await.is_err() {
        return false;
    }
    let work = submits.len() + others.len();
    if work == 0 && submits.is_empty() {
        return true;
    }
    let permits = work.clamp(1, shared.max_inflight_per_connection) as u32;
    let Ok(permit) = session.inflight.clone().acquire_many_owned(permits).await else {
        return false;
    };
    let (engine, out) = (shared.engine.clone(), out.clone());
    shared.tracker.spawn(requests.track_future(async move {
        let mut responses = submits.answer(&engine).await;
        let answered = join_all(others.into_iter().map(|(id, request)| {
            let engine = engine.clone();
            async move { (id, execute(&engine, request).await) }
        }))
        .await;
        responses.extend(answered);
        let _ = out.send(Out::Frames(encode(&responses))).await;
        drop(permit);
    }));
    true
}

fn hello(session: &Session, shared: &Shared, token: &str) -> Response {
    let Some(role) = shared.tokens.role(token) else {
        return Response::error(ErrorCode::BadToken, "unknown token");
    };
    match session.role.get() {
        Some(current) if *current != role => Response::error(
            ErrorCode::Forbidden,
            format!("connection is already {}", current.name()),
        ),
        _ => {
            if session.role.set(role.clone()).is_ok() {
                *session.gauge.lock().expect("gauge lock") =
                    crate::telemetry::ConnectionGauge::new(&role.name());
            }
            Response::HelloOk { role: role.name() }
        }
    }
}

/// Streams a node's events, or a channel's statuses, on this stream:
/// `Subscribed`, the backlog from the cursor, then live ones, each frame
/// carrying the request id. A follower too slow for its queue is dropped
/// and the stream reset with `SLOW_CONSUMER`; it resumes from its cursor.
fn pump<E: Send + Sync + 'static>(
    engine: &Engine,
    id: u64,
    subscribe: impl std::future::Future<Output = Result<Subscription<E>, EngineError>> + Send + 'static,
    from_cursor: u64,
    out: &mpsc::Sender<Out>,
    frame: impl Fn(&Engine, u64, &E) -> Response + Send + 'static,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let (engine, out) = (engine.clone(), out.clone());
    async move {
        let Subscription { backlog, mut live } = match subscribe.await {
            Ok(subscription) => subscription,
            Err(error) => {
                let _ = out
                    .send(Out::Frames(encode(&[(id, wire::error(&error))])))
                    .await;
                return;
            }
        };
        let next_cursor = backlog
            .first()
            .map_or_else(|| from_cursor.max(1), |(c, _)| *c);
        let mut frames = vec![(id, Response::Subscribed { next_cursor })];
        frames.extend(
            backlog
                .iter()
                .map(|(cursor, event)| (id, frame(&engine, *cursor, event))),
        );
        for chunk in frames.chunks(1024) {
            if out.send(Out::Frames(encode(chunk))).await.is_err() {
                return;
            }
        }
        while let Some((cursor, event)) = live.recv().await {
            let bytes = encode(&[(id, frame(&engine, cursor, &event))]);
            if out.send(Out::Frames(bytes)).await.is_err() {
                return;
            }
        }
        // The actor dropped this follower: it fell too far behind.
        let _ = out.send(Out::Reset(close_codes::SLOW_CONSUMER)).await;
    }
}
