//! Where the orders go: omniroute over QUIC (raw pipelined frames on one
//! stream per connection) or Redis (an all-or-nothing Lua reservation
//! script, pipelined per tick). Both answer into the same collector.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use omniroute_client::protocol::{
    check_frame, reject_codes, split_frame, Decision, ErrorCode, Judged, Request, Response,
};
use omniroute_client::{Client, Order};
use omniroute_loadtest::{Outcome, ANY_NODE};
use tokio::io::AsyncBufReadExt;
use tokio::sync::mpsc;

use crate::drive::{Answer, Event};

/// Bytes read from a stream at once.
const CHUNK_BYTES: usize = 64 * 1024;
/// Encoded batches queued per connection before the scheduler waits.
const WRITE_QUEUE_BATCHES: usize = 4096;

#[derive(Clone)]
pub enum Sink {
    Quic {
        writers: Vec<mpsc::Sender<Vec<u8>>>,
        handle: tokio::runtime::Handle,
        /// Orders per `SubmitBatch` frame; 0: one `Submit` frame each.
        batch: usize,
        rotor: Rotor,
    },
    /// A cluster's replicas: the follower task (`leader.rs`) sends to the
    /// leader and sends again what a move left undecided.
    Leader {
        inbox: mpsc::Sender<crate::leader::Input>,
        handle: tokio::runtime::Handle,
    },
    Redis {
        connections: Vec<redis::aio::MultiplexedConnection>,
        sha: String,
        events: mpsc::Sender<Event>,
        handle: tokio::runtime::Handle,
        rotor: Rotor,
    },
}

/// A tick's orders go to as few connections as carry them, at least
/// `MIN_ORDERS_PER_CONNECTION_SEND` each, starting one connection further
/// every tick: at a low rate each tick is one datagram on one connection,
/// not a sliver on each. The same for both targets, so the comparison
/// stays fair.
pub const MIN_ORDERS_PER_CONNECTION_SEND: usize = 64;

/// The connection the next tick starts at.
#[derive(Clone, Default)]
pub struct Rotor(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl Rotor {
    /// Splits `batch` into contiguous runs, each with the connection it goes to.
    fn spread<T>(&self, batch: &mut Vec<T>, connections: usize) -> Vec<(usize, Vec<T>)> {
        let connections = connections.max(1);
        let parts = batch
            .len()
            .div_ceil(MIN_ORDERS_PER_CONNECTION_SEND)
            .clamp(1, connections);
        let start = self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        chunks(batch, parts)
            .into_iter()
            .enumerate()
            .map(|(i, part)| ((start + i) % connections, part))
            .collect()
    }
}

/// The key of a SKU's stock on the Redis side.
pub fn redis_key(sku: &str) -> String {
    format!("stock:{sku}")
}

/// All or nothing: every line's key must hold its units, then all are
/// taken. 1 when taken, 0 when short. Redis runs a script atomically, so
/// this is the usual way to reserve across keys without overselling.
pub const RESERVE_SCRIPT: &str = r#"
for i = 1, #KEYS do
  local left = tonumber(redis.call('GET', KEYS[i]) or '0')
  if left < tonumber(ARGV[i]) then return 0 end
end
for i = 1, #KEYS do
  redis.call('DECRBY', KEYS[i], ARGV[i])
end
return 1
"#;

fn chunks<T>(batch: &mut Vec<T>, parts: usize) -> Vec<Vec<T>> {
    let size = batch.len().div_ceil(parts.max(1)).max(1);
    let mut out = Vec::new();
    while !batch.is_empty() {
        let rest = batch.split_off(size.min(batch.len()));
        out.push(std::mem::replace(batch, rest));
    }
    out
}

impl Sink {
    /// Sends a tick's orders, spread over the connections in contiguous
    /// runs. Called from the scheduler thread; waits when a queue is full.
    pub fn send_orders(&self, batch: &mut Vec<(u64, Order)>) {
        match self {
            Sink::Quic {
                writers,
                batch: per_frame,
                rotor,
                ..
            } => {
                for (connection, part) in rotor.spread(batch, writers.len()) {
                    let _ = writers[connection].blocking_send(encode_orders(part, *per_frame));
                }
            }
            Sink::Leader { inbox, .. } => {
                let orders = std::mem::take(batch);
                let _ = inbox.blocking_send(crate::leader::Input::Orders(orders));
            }
            Sink::Redis {
                connections,
                sha,
                events,
                handle,
                rotor,
            } => {
                for (connection, part) in rotor.spread(batch, connections.len()) {
                    let connection = &connections[connection];
                    let mut pipe = redis::pipe();
                    let mut lines = Vec::with_capacity(part.len());
                    for (id, order) in part {
                        let command = pipe.cmd("EVALSHA").arg(sha).arg(order.lines.len());
                        for (sku, _) in &order.lines {
                            command.arg(redis_key(sku));
                        }
                        for (_, qty) in &order.lines {
                            command.arg(*qty);
                        }
                        lines.push((id, order.lines));
                    }
                    let mut connection = connection.clone();
                    let events = events.clone();
                    handle.spawn(async move {
                        let result: redis::RedisResult<Vec<i64>> =
                            pipe.query_async(&mut connection).await;
                        let done = Instant::now();
                        let answers = match result {
                            Ok(taken) => lines
                                .into_iter()
                                .zip(taken)
                                .map(|((id, lines), taken)| Answer {
                                    id,
                                    done,
                                    outcome: if taken == 1 {
                                        Outcome::Routed
                                    } else {
                                        Outcome::Short
                                    },
                                    code: None,
                                    order_id: 0,
                                    allocations: if taken == 1 {
                                        lines
                                            .into_iter()
                                            .map(|(sku, qty)| (sku, ANY_NODE.to_string(), qty))
                                            .collect()
                                    } else {
                                        Vec::new()
                                    },
                                })
                                .collect(),
                            Err(_) => lines
                                .into_iter()
                                .map(|(id, _)| Answer {
                                    id,
                                    done,
                                    outcome: Outcome::Error,
                                    code: None,
                                    order_id: 0,
                                    allocations: Vec::new(),
                                })
                                .collect(),
                        };
                        let _ = events.send(Event::Answers(answers)).await;
                    });
                }
            }
        }
    }

    /// Sends follow-up requests (QUIC only). Called from the collector, so
    /// it never waits: a full queue hands the batch to a task.
    pub fn send_requests(&self, requests: Vec<(u64, Request)>) {
        if let Sink::Leader { inbox, handle } = self {
            let input = crate::leader::Input::Requests(requests);
            if let Err(mpsc::error::TrySendError::Full(input)) = inbox.try_send(input) {
                let inbox = inbox.clone();
                handle.spawn(async move { inbox.send(input).await });
            }
            return;
        }
        let Sink::Quic {
            writers, handle, ..
        } = self
        else {
            return;
        };
        let mut bytes = Vec::with_capacity(requests.len() * 96);
        for (id, request) in &requests {
            request.encode(*id, &mut bytes);
        }
        let writer = &writers[(requests[0].0 as usize) % writers.len()];
        if let Err(mpsc::error::TrySendError::Full(bytes)) = writer.try_send(bytes) {
            let writer = writer.clone();
            handle.spawn(async move { writer.send(bytes).await });
        }
    }
}

/// A run of orders with contiguous ids as frames: `SubmitBatch` frames of
/// at most `per_frame` orders, each with its first order's id (the answer's
/// entries follow on from it), or with `per_frame` 0 a `Submit` frame each.
fn encode_orders(part: Vec<(u64, Order)>, per_frame: usize) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(part.len() * 128);
    if per_frame == 0 {
        for (id, order) in part {
            Request::Submit(order).encode(id, &mut bytes);
        }
        return bytes;
    }
    let mut part = part.into_iter().peekable();
    while let Some(&(first, _)) = part.peek() {
        let orders: Vec<_> = part.by_ref().take(per_frame).map(|(_, o)| Ok(o)).collect();
        Request::SubmitBatch(orders).encode(first, &mut bytes);
    }
    bytes
}

/// The answers a frame carries: one, or a `Decisions` frame's entries,
/// which answer the ids from the frame's on.
fn answers_of(id: u64, done: Instant, response: Response, out: &mut Vec<Answer>) {
    match response {
        Response::Decisions(entries) => {
            for (i, entry) in entries.into_iter().enumerate() {
                let response = match entry {
                    Judged::Decision(decision) => Response::Decision(decision),
                    Judged::Error { code, message } => Response::Error { code, message },
                };
                out.push(answer(id + i as u64, done, response));
            }
        }
        other => out.push(answer(id, done, other)),
    }
}

pub(crate) fn answer(id: u64, done: Instant, response: Response) -> Answer {
    let order_id = match &response {
        Response::Decision(Decision::Routed { order_id, .. }) => *order_id,
        _ => 0,
    };
    let (outcome, code, allocations) = match response {
        Response::Decision(Decision::Routed { allocations, .. }) => (
            Outcome::Routed,
            None,
            allocations
                .into_iter()
                .map(|a| (a.sku, a.node, a.qty))
                .collect(),
        ),
        Response::Decision(Decision::Rejected { code, .. }) if code == reject_codes::SHORT => {
            (Outcome::Short, None, Vec::new())
        }
        Response::Decision(Decision::Rejected { code, .. }) => {
            (Outcome::Rejected, Some(code), Vec::new())
        }
        Response::Error { code, .. } if code == ErrorCode::Overloaded as u16 => {
            (Outcome::Overloaded, Some(code), Vec::new())
        }
        Response::Error { code, .. } => (Outcome::Error, Some(code), Vec::new()),
        // A confirm, cancel or ship answers with the order.
        _ => (Outcome::Routed, None, Vec::new()),
    };
    Answer {
        id,
        done,
        outcome,
        code,
        allocations,
        order_id,
    }
}

async fn read_frames(mut recv: omniroute_client::quinn::RecvStream, events: mpsc::Sender<Event>) {
    let mut buffer = Vec::with_capacity(CHUNK_BYTES);
    loop {
        match recv.read_chunk(CHUNK_BYTES, true).await {
            Ok(Some(chunk)) => buffer.extend_from_slice(&chunk.bytes),
            _ => return,
        }
        let done = Instant::now();
        let mut consumed = 0;
        let mut answers = Vec::new();
        while let Ok(Some(length)) = check_frame(&buffer[consumed..]) {
            let (kind, id, payload) = split_frame(&buffer[consumed..consumed + length]);
            consumed += length;
            match Response::decode(kind, payload) {
                Ok(Some(response)) => answers_of(id, done, response, &mut answers),
                _ => eprintln!("omniroute-loadtest: undecodable answer of kind {kind:#x}"),
            }
        }
        buffer.drain(..consumed);
        if !answers.is_empty() && events.send(Event::Answers(answers)).await.is_err() {
            return;
        }
    }
}

/// One stream per connection, on the clients' authenticated connections.
pub async fn quic(
    clients: &[Client],
    events: &mpsc::Sender<Event>,
    batch: usize,
) -> Result<Sink, String> {
    let mut writers = Vec::new();
    for client in clients {
        let (send, recv) = client
            .connection()
            .open_bi()
            .await
            .map_err(|e| e.to_string())?;
        let (writer, queue) = mpsc::channel(WRITE_QUEUE_BATCHES);
        tokio::spawn(omniroute_client::write_frames(send, queue));
        tokio::spawn(read_frames(recv, events.clone()));
        writers.push(writer);
    }
    Ok(Sink::Quic {
        writers,
        handle: tokio::runtime::Handle::current(),
        batch,
        rotor: Rotor::default(),
    })
}

/// A `redis-server` of our own on a free loopback port, with no
/// persistence or (`fsync`) an append-only file fsynced on every write in
/// a directory of its own; stopped, and the directory removed, when dropped.
pub struct RedisServer {
    child: tokio::process::Child,
    pub port: u16,
    dir: PathBuf,
}

impl RedisServer {
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        // Before its directory goes (kill_on_drop would come after).
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub async fn start_redis(fsync: bool) -> Result<RedisServer, String> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| e.to_string())?
        .port();
    let dir = std::env::temp_dir().join(format!(
        "omniroute-loadtest-redis-{}-{port}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let persistence: &[&str] = if fsync {
        &["--appendonly", "yes", "--appendfsync", "always"]
    } else {
        &["--appendonly", "no"]
    };
    let mut child = tokio::process::Command::new("redis-server")
        .args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--save", "", "--protected-mode", "yes"])
        .args(persistence)
        .arg("--dir")
        .arg(&dir)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            format!("cannot start redis-server ({e}); install the Debian package: apt-get install redis-server")
        })?;
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    tokio::time::timeout(Duration::from_secs(20), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("Ready to accept connections") {
                return Ok(());
            }
        }
        Err("redis-server exited before it was ready".to_string())
    })
    .await
    .map_err(|_| "redis-server did not start within 20 s".to_string())??;
    // Keep draining its log so that it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(RedisServer { child, port, dir })
}

/// Connections to the Redis side, the script loaded, and the scenario's
/// stock set per SKU.
pub async fn redis(
    server: &RedisServer,
    connections: usize,
    stock: &[(String, u64)],
    events: &mpsc::Sender<Event>,
) -> Result<(Sink, redis::aio::MultiplexedConnection), String> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{}/", server.port))
        .map_err(|e| e.to_string())?;
    let mut all = Vec::new();
    for _ in 0..connections.max(1) {
        all.push(
            client
                .get_multiplexed_async_connection()
                .await
                .map_err(|e| format!("redis: {e}"))?,
        );
    }
    let mut admin = client
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| format!("redis: {e}"))?;
    let sha: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(RESERVE_SCRIPT)
        .query_async(&mut admin)
        .await
        .map_err(|e| format!("redis SCRIPT LOAD: {e}"))?;
    for part in stock.chunks(1024) {
        let mut pipe = redis::pipe();
        for (sku, units) in part {
            pipe.cmd("SET").arg(redis_key(sku)).arg(*units).ignore();
        }
        let () = pipe
            .query_async(&mut admin)
            .await
            .map_err(|e| format!("redis SET: {e}"))?;
    }
    Ok((
        Sink::Redis {
            connections: all,
            sha,
            events: events.clone(),
            handle: tokio::runtime::Handle::current(),
            rotor: Rotor::default(),
        },
        admin,
    ))
}

/// How the Redis server keeps writes, read back from it: "fsync" (an
/// append-only file fsynced on every write), "none" (no append-only file),
/// or the `appendfsync` policy it has otherwise.
pub async fn redis_durability(
    admin: &mut redis::aio::MultiplexedConnection,
) -> Result<String, String> {
    let append_only = config_get(admin, "appendonly").await?;
    let policy = config_get(admin, "appendfsync").await?;
    Ok(match (append_only.as_str(), policy.as_str()) {
        ("no", _) => "none".to_string(),
        (_, "always") => "fsync".to_string(),
        (_, other) => format!("appendfsync {other}"),
    })
}

/// The server's version, from `INFO server`.
pub async fn redis_version(
    admin: &mut redis::aio::MultiplexedConnection,
) -> Result<String, String> {
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(admin)
        .await
        .map_err(|e| format!("redis INFO: {e}"))?;
    Ok(info
        .lines()
        .find_map(|line| line.strip_prefix("redis_version:"))
        .unwrap_or("unknown")
        .trim()
        .to_string())
}

/// One setting of the Redis server, as `CONFIG GET` answers it.
async fn config_get(
    admin: &mut redis::aio::MultiplexedConnection,
    name: &str,
) -> Result<String, String> {
    let pair: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg(name)
        .query_async(admin)
        .await
        .map_err(|e| format!("redis CONFIG GET {name}: {e}"))?;
    pair.get(1)
        .cloned()
        .ok_or_else(|| format!("redis CONFIG GET {name}: no value"))
}

/// The final stock of each SKU on the Redis side.
pub async fn redis_stock(
    admin: &mut redis::aio::MultiplexedConnection,
    skus: &[String],
) -> Result<Vec<u64>, String> {
    let mut out = Vec::with_capacity(skus.len());
    for part in skus.chunks(1024) {
        let mut pipe = redis::pipe();
        for sku in part {
            pipe.cmd("GET").arg(redis_key(sku));
        }
        let values: Vec<Option<i64>> = pipe
            .query_async(admin)
            .await
            .map_err(|e| format!("redis GET: {e}"))?;
        out.extend(values.into_iter().map(|v| v.unwrap_or(0).max(0) as u64));
    }
    Ok(out)
}
