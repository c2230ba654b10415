//! One connection: its streams, and the framing of each stream (its way
//! in, the `Hello`, is `hello.rs`).
//!
//! Each stream has a reader (this task) and a writer task. The reader
//! decodes every whole frame it has in one go, answers what needs no engine
//! at once, and hands the rest to a task of its own, so that answers come
//! back as they complete, out of order, while reading goes on. A connection
//! has at most `max_inflight_per_connection` requests in process, and
//! `MAX_QUEUED_ANSWER_BYTES_PER_CONNECTION` of answers its client has not
//! read; past either the reader waits, and QUIC flow control pushes back
//! on the client.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures::stream::{self, StreamExt};
use omniroute_protocol::{
    batch_too_large, check_frame, close_codes, kinds, length_prefix, split_frame, DecodeError,
    ErrorCode, Request, Response, LENGTH_BYTES, MIN_FRAME_BYTES, PROTOCOL_VERSION,
    UNFRAMED_REQUEST_ID,
};
use tokio::sync::{mpsc, Semaphore};

use super::backlog::Backlog;
use super::hello::{self, Admission};
use super::requests::{allowed, execute, forbidden};
use super::submits::Submits;
use super::waiting::{Place, Waiting};
use super::{follows, listings, wire, Role};
use crate::engine::Engine;
use crate::limits::{
    MAX_FOLLOWS_PER_CONNECTION, MAX_LISTINGS_PER_CONNECTION,
    MAX_QUEUED_ANSWER_BYTES_PER_CONNECTION, MAX_UNAUTHENTICATED_FRAME_BYTES,
};
use crate::replica::serving::Serving;

/// Bytes read from a stream at once.
const READ_CHUNK_BYTES: usize = 64 * 1024;
/// Encoded batches queued for a stream's writer before producers wait.
const WRITE_QUEUE_BATCHES: usize = 1024;

pub struct Shared {
    /// The engine that answers here (always, on a single node; while it
    /// leads, on a replica).
    pub serving: Arc<Serving>,
    pub tokens: Arc<super::Tokens>,
    /// Orders (and other requests) of one connection in process at once:
    /// `server.max_inflight_per_connection`, at most a share of the engine's.
    pub max_inflight_per_connection: usize,
    /// Streams of an authenticated connection.
    pub max_streams_per_connection: u32,
    /// Slots of authenticated connections (`server.max_connections`).
    pub connections: Arc<Semaphore>,
    pub max_connections: usize,
    /// Connections waiting for their `Hello`, apart from the others.
    pub waiting: Arc<Waiting>,
    /// How long a connection may take to say a valid `Hello`.
    pub hello_timeout_ms: u64,
    /// Cancelled at shutdown: stop reading, answer what was read.
    pub stop: tokio_util::sync::CancellationToken,
    /// Every connection, stream and request task, for the shutdown to wait on.
    pub tracker: tokio_util::task::TaskTracker,
}

/// What a connection is allowed to do, and how much it has in flight.
pub struct Session {
    /// Set by the first successful `Hello`; fixed for the connection's life.
    pub role: OnceLock<Role>,
    /// Waiting for a `Hello`, or admitted; changed only by a `Hello`.
    pub admission: Mutex<Admission>,
    inflight: Arc<Semaphore>,
    /// Its Subscribe and FollowOrders streams (`MAX_FOLLOWS_PER_CONNECTION`).
    pub follows: Arc<Semaphore>,
    /// Its ListOrders in process (`MAX_LISTINGS_PER_CONNECTION`).
    pub listings: Arc<Semaphore>,
    /// Its answers not yet handed to QUIC, over all its streams.
    backlog: Arc<Backlog>,
    /// Counts this connection under its role (unauthenticated until Hello).
    pub gauge: Mutex<crate::telemetry::ConnectionGauge>,
}

impl Session {
    fn new(shared: &Shared, place: Place) -> Session {
        Session {
            role: OnceLock::new(),
            admission: Mutex::new(Admission::Waiting(place)),
            inflight: Arc::new(Semaphore::new(shared.max_inflight_per_connection)),
            follows: Arc::new(Semaphore::new(MAX_FOLLOWS_PER_CONNECTION)),
            listings: Arc::new(Semaphore::new(MAX_LISTINGS_PER_CONNECTION)),
            backlog: Arc::new(Backlog::new(MAX_QUEUED_ANSWER_BYTES_PER_CONNECTION)),
            gauge: Mutex::new(crate::telemetry::ConnectionGauge::new("unauthenticated")),
        }
    }
}

/// Round trips after which a live peer has acknowledged what was written
/// (QUIC acknowledges within one, plus its ack delay; a lost packet is
/// resent within a few).
const ACK_ROUND_TRIPS: u32 = 4;
/// The least a stream's end waits for its last answers to be acknowledged,
/// whatever the measured round trip (loopback's is microseconds).
const MIN_ACK_WAIT: std::time::Duration = std::time::Duration::from_millis(100);

/// What the reader or a worker hands the stream's writer.
enum Out {
    Frames(Vec<u8>),
    /// Reset the stream with this application code and stop writing.
    Reset(u32),
}

/// A stream's way to its writer, counting what it queues in the
/// connection's backlog.
#[derive(Clone)]
pub struct Answers {
    queue: mpsc::Sender<Out>,
    backlog: Arc<Backlog>,
    /// Cancelled when what is left to write on the stream need not reach
    /// the peer (see [`Answers::abandon`]).
    abandon: tokio_util::sync::CancellationToken,
}

/// The writer is gone: its stream ended.
pub struct Gone;

impl Answers {
    /// Queues these answer frames for the stream's writer.
    pub async fn frames(&self, responses: &[(u64, Response)]) -> Result<(), Gone> {
        let bytes = encode(responses);
        let count = bytes.len();
        self.backlog.queued(count);
        if self.queue.send(Out::Frames(bytes)).await.is_err() {
            self.backlog.written(count);
            return Err(Gone);
        }
        Ok(())
    }

    /// Resets the stream with `code` after what is queued.
    pub async fn reset(&self, code: u32) {
        let _ = self.queue.send(Out::Reset(code)).await;
    }

    /// The server stops and nothing still to be written on this stream is
    /// an answer (a follow's statuses and events stay in their logs; the
    /// follower resumes from its cursor): the writer resets the stream
    /// with `SHUTDOWN` at once, instead of waiting, up to the drain's
    /// bound, for a peer that may be gone to read and acknowledge it.
    pub fn abandon(&self) {
        self.abandon.cancel();
    }
}

pub async fn serve_connection(incoming: quinn::Incoming, place: Place, shared: Arc<Shared>) {
    let evicted = place.evicted();
    let deadline = tokio::time::sleep(Duration::from_millis(shared.hello_timeout_ms));
    tokio::pin!(deadline);
    // The handshake counts against the time a Hello may take.
    let connection = tokio::select! {
        biased;
        _ = shared.stop.cancelled() => return,
        _ = evicted.cancelled() => return,
        _ = &mut deadline => return,
        connection = incoming => match connection {
            Ok(connection) => connection,
            Err(_) => return,
        },
    };
    let session = Arc::new(Session::new(&shared, place));
    loop {
        let waiting = session.role.get().is_none();
        let accepted = tokio::select! {
            biased;
            _ = shared.stop.cancelled() => break,
            _ = evicted.cancelled(), if waiting => {
                hello::close_evicted(&connection, shared.waiting.capacity());
                break;
            }
            _ = &mut deadline, if waiting => {
                if session.role.get().is_some() {
                    continue;
                }
                hello::close_late(&connection, shared.hello_timeout_ms);
                break;
            }
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

/// Writes what the stream's producers queue; then gives back the backlog
/// of whatever it could not write, so that the connection reads on.
async fn write_loop(
    mut send: quinn::SendStream,
    mut queue: mpsc::Receiver<Out>,
    backlog: Arc<Backlog>,
    abandon: tokio_util::sync::CancellationToken,
    connection: quinn::Connection,
) {
    let abandoned = tokio::select! {
        biased;
        () = write_queued(&mut send, &mut queue, &backlog, &connection) => false,
        () = abandon.cancelled() => true,
    };
    if abandoned {
        let _ = send.reset(omniroute_protocol::close_codes::SHUTDOWN.into());
    }
    queue.close();
    while let Ok(out) = queue.try_recv() {
        if let Out::Frames(bytes) = out {
            backlog.written(bytes.len());
        }
    }
}

async fn write_queued(
    send: &mut quinn::SendStream,
    queue: &mut mpsc::Receiver<Out>,
    backlog: &Backlog,
    connection: &quinn::Connection,
) {
    let mut last_write: Option<std::time::Instant> = None;
    while let Some(out) = queue.recv().await {
        match out {
            Out::Frames(mut bytes) => {
                // Coalesce what is already queued into one write.
                let mut reset = None;
                while bytes.len() < READ_CHUNK_BYTES {
                    match queue.try_recv() {
                        Ok(Out::Frames(more)) => bytes.extend_from_slice(&more),
                        Ok(Out::Reset(code)) => {
                            reset = Some(code);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                let written = send.write_all(&bytes).await;
                last_write = Some(std::time::Instant::now());
                backlog.written(bytes.len());
                if let Some(code) = reset {
                    let _ = send.reset(code.into());
                    return;
                }
                if written.is_err() {
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
    // Bytes written longer ago than a few round trips a live peer has
    // acknowledged already; waiting on the end-of-stream's own
    // acknowledgement would let a peer that is gone (killed without
    // closing) hold a stop until the drain gives up.
    let acknowledged_within = (connection.rtt() * ACK_ROUND_TRIPS).max(MIN_ACK_WAIT);
    if last_write.is_some_and(|at| at.elapsed() < acknowledged_within) {
        let _ = send.stopped().await;
    }
}

async fn serve_stream(
    send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    connection: quinn::Connection,
    session: Arc<Session>,
    shared: Arc<Shared>,
) {
    let (queue, queued) = mpsc::channel(WRITE_QUEUE_BATCHES);
    let backlog = session.backlog.clone();
    let abandon = tokio_util::sync::CancellationToken::new();
    let writer = tokio::spawn(write_loop(
        send,
        queued,
        backlog.clone(),
        abandon.clone(),
        connection.clone(),
    ));
    let out = Answers {
        queue,
        backlog,
        abandon,
    };
    // This stream's request tasks: the answer to bytes that cannot be
    // framed waits for them, so that every whole frame before is answered.
    let requests = tokio_util::task::TaskTracker::new();
    // Grown as frames come: before a Hello, to MAX_UNAUTHENTICATED_FRAME_BYTES at most.
    let mut buffer: Vec<u8> = Vec::new();
    let stream = Stream {
        connection: &connection,
        session: &session,
        shared: &shared,
        out: &out,
        requests: &requests,
    };
    'reading: loop {
        let read = tokio::select! {
            biased;
            // Shutting down: what was read is answered below; nothing more is read.
            _ = shared.stop.cancelled() => break,
            // Not while the client leaves too many answers unread.
            read = async {
                session.backlog.room().await;
                recv.read_chunk(READ_CHUNK_BYTES, true).await
            } => read,
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
        // Frames up to a Hello go before the rest is framed: a Hello
        // changes how long a frame may be.
        loop {
            let taken = take_frames(&buffer, session.role.get().is_some());
            buffer.drain(..taken.consumed);
            if !taken.frames.is_empty() && !dispatch(taken.frames, &stream).await {
                break 'reading;
            }
            if let Some((code, why)) = taken.broken {
                let _ = recv.stop(code.into());
                unframeable_after(&requests, &out, &buffer, why).await;
                break 'reading;
            }
            if !taken.at_hello {
                break;
            }
        }
    }
    drop(out);
    let _ = writer.await;
}

/// The whole frames at the start of a stream's buffer.
struct Taken {
    frames: Vec<(u64, Result<Option<Request>, DecodeError>)>,
    consumed: usize,
    /// The bytes from `consumed` on cannot be framed: the close code and why.
    broken: Option<(u32, String)>,
    /// Stopped after a Hello of an unauthenticated connection: frame the
    /// rest once it is answered.
    at_hello: bool,
}

/// Frames what `buffer` holds whole. Before a successful Hello a frame may
/// be `MAX_UNAUTHENTICATED_FRAME_BYTES` long, after it `MAX_FRAME_BYTES`.
fn take_frames(buffer: &[u8], authenticated: bool) -> Taken {
    let mut taken = Taken {
        frames: Vec::new(),
        consumed: 0,
        broken: None,
        at_hello: false,
    };
    loop {
        let rest = &buffer[taken.consumed..];
        if !authenticated {
            if let Some(length) =
                length_prefix(rest).filter(|l| *l > MAX_UNAUTHENTICATED_FRAME_BYTES)
            {
                let code = close_codes::FRAME_TOO_LARGE;
                taken.broken = Some((code, format!(
                    "frame length {length} exceeds MAX_UNAUTHENTICATED_FRAME_BYTES ({MAX_UNAUTHENTICATED_FRAME_BYTES}) before a successful Hello; the server reads no further (close code {code:#x})"
                )));
                return taken;
            }
        }
        match check_frame(rest) {
            Ok(Some(length)) => {
                let (kind, id, payload) = split_frame(&rest[..length]);
                taken.frames.push((id, Request::decode(kind, payload)));
                taken.consumed += length;
                if !authenticated && kind == kinds::HELLO {
                    taken.at_hello = true;
                    return taken;
                }
            }
            Ok(None) => return taken,
            Err(error) => {
                let code = error.close_code();
                taken.broken = Some((
                    code,
                    format!("{error}; the server reads no further (close code {code:#x})"),
                ));
                return taken;
            }
        }
    }
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
    out: &Answers,
    rest: &[u8],
    why: String,
) {
    requests.close();
    requests.wait().await;
    // The frame's own id when its header came whole, so a client can match it.
    let id = rest
        .get(..LENGTH_BYTES + MIN_FRAME_BYTES)
        .map_or(UNFRAMED_REQUEST_ID, |header| split_frame(header).1);
    let _ = out
        .frames(&[(id, Response::error(ErrorCode::Unframeable, why))])
        .await;
}

/// What one stream's batches are dispatched with.
struct Stream<'a> {
    connection: &'a quinn::Connection,
    session: &'a Arc<Session>,
    shared: &'a Arc<Shared>,
    out: &'a Answers,
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

/// A decoded batch's requests, sorted by how they are answered.
#[derive(Default)]
struct Sorted {
    /// Answered without the engine, at once.
    immediate: Vec<(u64, Response)>,
    /// Orders, routed together.
    submits: Submits,
    /// Other engine requests, answered with the orders.
    others: Vec<(u64, Request)>,
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
    let mut sorted = Sorted::default();
    // Once per read: a replica that stops leading mid-read answers the
    // rest from the engine it read with, whose answers `deposed` checks.
    let engine = shared.serving.engine();
    for (id, decoded) in frames {
        let request = match decoded {
            Err(error) => {
                let code = if batch_too_large(&error) {
                    ErrorCode::TooLarge
                } else {
                    ErrorCode::Malformed
                };
                sorted
                    .immediate
                    .push((id, Response::error(code, error.to_string())));
                continue;
            }
            Ok(None) => {
                sorted.immediate.push((
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
            let answer = hello::hello(session, shared, connection, token);
            sorted.immediate.push((id, answer));
            continue;
        }
        let Some(role) = session.role.get() else {
            sorted.immediate.push((
                id,
                Response::error(ErrorCode::NotAuthenticated, "send Hello with a token first"),
            ));
            continue;
        };
        if !allowed(role, &request) {
            sorted.immediate.push((id, forbidden(role)));
            continue;
        }
        match &engine {
            Ok(engine) => sort(id, request, role, engine, stream, &mut sorted),
            Err(not) => sorted.immediate.push((id, wire::not_leader(not))),
        }
    }
    let Sorted {
        immediate,
        submits,
        others,
    } = sorted;
    if !immediate.is_empty() && out.frames(&immediate).await.is_err() {
        return false;
    }
    let work = submits.len() + others.len();
    if work == 0 && submits.is_empty() {
        return true;
    }
    let Ok(engine) = engine else {
        unreachable!("requests for the engine are sorted only when it serves")
    };
    // The read's work holds this many of the connection's permits, and
    // (routed at most that many at a time) as many of the engine's at most:
    // a read of more requests than the connection's share is answered in
    // turns, not at the expense of other connections.
    let permits = work.clamp(1, shared.max_inflight_per_connection);
    let Ok(permit) = session
        .inflight
        .clone()
        .acquire_many_owned(permits as u32)
        .await
    else {
        return false;
    };
    let (serving, out) = (shared.serving.clone(), out.clone());
    shared.tracker.spawn(requests.track_future(async move {
        let mut responses = submits.answer(&engine, permits).await;
        let answered: Vec<(u64, Response)> = stream::iter(others)
            .map(|(id, request)| {
                let engine = engine.clone();
                async move { (id, execute(&engine, request).await) }
            })
            .buffer_unordered(permits)
            .collect()
            .await;
        responses.extend(answered);
        wire::deposed(&serving, &mut responses);
        let _ = out.frames(&responses).await;
        drop(permit);
    }));
    true
}

/// Puts one request the role may make where it is answered: with the
/// read's orders, or in a follow or a listing of its own (each admitted
/// against the connection's limits first).
fn sort(
    id: u64,
    request: Request,
    role: &Role,
    engine: &Engine,
    stream: &Stream<'_>,
    sorted: &mut Sorted,
) {
    let Stream {
        session,
        shared,
        out,
        requests,
        ..
    } = *stream;
    match request {
        Request::Submit(order) => sorted.submits.single(id, order),
        Request::SubmitBatch(entries) => sorted.submits.batch(id, entries, role),
        Request::Subscribe { node, from_cursor } => match follows::admit(session) {
            Err(_) => sorted.immediate.push((id, follows::refused())),
            Ok(place) => {
                let subscriber = engine.clone();
                let events = async move { subscriber.subscribe(&node, from_cursor).await };
                follows::spawn(
                    shared,
                    engine,
                    place,
                    id,
                    events,
                    from_cursor,
                    out,
                    |e, c, event| Response::Event(wire::event(e, c, event)),
                );
            }
        },
        Request::FollowOrders {
            channel,
            from_cursor,
        } => match follows::admit(session) {
            Err(_) => sorted.immediate.push((id, follows::refused())),
            Ok(place) => {
                let follower = engine.clone();
                let statuses = async move { follower.follow_orders(&channel, from_cursor).await };
                follows::spawn(
                    shared,
                    engine,
                    place,
                    id,
                    statuses,
                    from_cursor,
                    out,
                    wire::order_status,
                );
            }
        },
        Request::ListOrders(query) => match listings::admit(session) {
            Err(_) => sorted.immediate.push((id, listings::refused())),
            Ok(turn) => listings::spawn(shared, engine, requests, turn, id, query, out),
        },
        other => sorted.others.push((id, other)),
    }
}
