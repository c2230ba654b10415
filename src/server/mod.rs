//! The QUIC ingress: a quinn endpoint in front of the [`Engine`]. Thin:
//! framing and access control here, everything else in the engine.

mod backlog;
mod follows;
mod hello;
mod listings;
pub mod requests;
mod session;
mod submits;
pub mod tls;
mod tokens;
mod waiting;
pub mod wire;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::engine::Engine;
use crate::limits::CONNECTION_SHARE_OF_ENGINE_INFLIGHT;
pub use tokens::Tokens;

/// What a token lets a connection do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// Everything.
    Admin,
    /// Submit, confirm, cancel and read the orders of one channel; ask availability.
    Channel(String),
    /// Subscribe to, reject and ship one node's allocations; feed its stock;
    /// take returns at it.
    Node(String),
}

impl Role {
    /// Parses `admin`, `channel:<name>` or `node:<id>`.
    pub fn parse(text: &str) -> Option<Role> {
        match text.split_once(':') {
            None if text == "admin" => Some(Role::Admin),
            Some(("channel", name)) if !name.is_empty() => Some(Role::Channel(name.to_string())),
            Some(("node", id)) if !id.is_empty() => Some(Role::Node(id.to_string())),
            _ => None,
        }
    }

    pub fn name(&self) -> String {
        match self {
            Role::Admin => "admin".into(),
            Role::Channel(name) => format!("channel:{name}"),
            Role::Node(id) => format!("node:{id}"),
        }
    }
}

/// Most authenticated connections, and most connections waiting for a
/// `Hello`, a config may ask for (each a task and QUIC state).
pub const MAX_CONNECTIONS: usize = 4096;

#[derive(Clone, Debug)]
pub struct ServerSettings {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// Certificate and key (PEM); without them a self-signed pair is made
    /// in `data_dir`.
    pub cert: Option<(PathBuf, PathBuf)>,
    /// The live token table, shared with the admin port's reload.
    pub tokens: Arc<Tokens>,
    /// Connections with a successful `Hello` at once; a `Hello` beyond it
    /// is answered `Overloaded`.
    pub max_connections: usize,
    /// Requests of one connection being processed at once; beyond it the
    /// server stops reading that connection (QUIC flow control pushes back).
    /// At most 1/`CONNECTION_SHARE_OF_ENGINE_INFLIGHT` of `engine.max_inflight`.
    pub max_inflight_per_connection: usize,
    /// Bidirectional streams one connection may have open.
    pub max_streams_per_connection: u32,
    /// Threads of the daemon's async runtime (see [`runtime`]).
    pub worker_threads: usize,
    /// A connection without a successful `Hello` this long is closed.
    pub hello_timeout_ms: u64,
    /// Connections waiting for their `Hello` at once, apart from
    /// `max_connections`; one more closes the oldest of them.
    pub max_unauthenticated_connections: usize,
}

/// Most runtime worker threads a config may ask for.
pub const MAX_WORKER_THREADS: usize = 256;

/// The daemon's async runtime, on `worker_threads` threads. On 2 cores
/// shared with a load generator, one worker spent 7.6 µs of CPU per
/// flash-sale order against 9.3 µs with two (fewer wake-ups handing work
/// between threads), at the same latency: hence one fewer than the CPUs.
pub fn runtime(worker_threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(worker_threads.max(1))
        .enable_all()
        .build()
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("cannot listen on {addr}: {message}")]
    Bind { addr: SocketAddr, message: String },
}

/// Longest a shutdown waits for accepted requests to be answered (a client
/// that stopped reading could hold its answers back for ever).
pub const SHUTDOWN_DRAIN_MS: u64 = 10_000;
/// Longest a shutdown waits for the peers to see the close.
const SHUTDOWN_CLOSE_MS: u64 = 2_000;

/// A running ingress.
pub struct RunningServer {
    pub addr: SocketAddr,
    pub cert_path: PathBuf,
    pub fingerprint: String,
    endpoint: quinn::Endpoint,
    accept: tokio::task::JoinHandle<()>,
    stop: CancellationToken,
    tracker: TaskTracker,
}

/// What a graceful shutdown did.
#[derive(Debug)]
pub struct Drained {
    /// Whether every accepted request was answered within `SHUTDOWN_DRAIN_MS`.
    pub complete: bool,
    pub elapsed_ms: u128,
}

impl RunningServer {
    /// Stops accepting connections, streams and requests; answers every
    /// request already read (each is journaled before its answer); then
    /// closes every connection with `SHUTDOWN`.
    pub async fn shutdown(self) -> Drained {
        let started = std::time::Instant::now();
        self.endpoint.set_server_config(None);
        self.accept.abort();
        self.stop.cancel();
        self.tracker.close();
        let complete = tokio::time::timeout(
            std::time::Duration::from_millis(SHUTDOWN_DRAIN_MS),
            self.tracker.wait(),
        )
        .await
        .is_ok();
        self.endpoint.close(
            omniroute_protocol::close_codes::SHUTDOWN.into(),
            b"server shutting down",
        );
        let _ = tokio::time::timeout(
            std::time::Duration::from_millis(SHUTDOWN_CLOSE_MS),
            self.endpoint.wait_idle(),
        )
        .await;
        Drained {
            complete,
            elapsed_ms: started.elapsed().as_millis(),
        }
    }
}

/// Binds the endpoint and starts accepting connections, for `engine`
/// alone (a single node).
pub async fn start(
    engine: Engine,
    settings: &ServerSettings,
) -> Result<RunningServer, ServerError> {
    let max_inflight = engine.max_inflight();
    let serving = Arc::new(crate::replica::serving::Serving::single(engine));
    start_serving(serving, max_inflight, settings).await
}

/// Binds the endpoint and starts accepting connections, answered by the
/// engine `serving` has at the time (a replica's while it leads), whose
/// `engine.max_inflight` is `max_inflight`.
pub async fn start_serving(
    serving: Arc<crate::replica::serving::Serving>,
    max_inflight: usize,
    settings: &ServerSettings,
) -> Result<RunningServer, ServerError> {
    let cert = settings
        .cert
        .as_ref()
        .map(|(c, k)| (c.as_path(), k.as_path()));
    let identity = tls::load_or_create(cert, &settings.data_dir)?;
    let config = tls::quic_server_config(&identity)?;
    let endpoint =
        quinn::Endpoint::server(config, settings.listen).map_err(|e| ServerError::Bind {
            addr: settings.listen,
            message: e.to_string(),
        })?;
    let addr = endpoint.local_addr().map_err(|e| ServerError::Bind {
        addr: settings.listen,
        message: e.to_string(),
    })?;
    let stop = CancellationToken::new();
    let tracker = TaskTracker::new();
    let max_connections = settings.max_connections.clamp(1, MAX_CONNECTIONS);
    // One connection cannot hold all of the engine's in-flight orders.
    let engine_share = (max_inflight / CONNECTION_SHARE_OF_ENGINE_INFLIGHT).max(1);
    let shared = Arc::new(session::Shared {
        serving,
        tokens: settings.tokens.clone(),
        max_inflight_per_connection: settings.max_inflight_per_connection.clamp(1, engine_share),
        max_streams_per_connection: settings.max_streams_per_connection.max(1),
        connections: Arc::new(Semaphore::new(max_connections)),
        max_connections,
        waiting: waiting::Waiting::new(
            settings
                .max_unauthenticated_connections
                .clamp(1, MAX_CONNECTIONS),
        ),
        hello_timeout_ms: settings.hello_timeout_ms.max(1),
        stop: stop.clone(),
        tracker: tracker.clone(),
    });
    let accepting = endpoint.clone();
    let accept = tokio::spawn(async move {
        while let Some(incoming) = accepting.accept().await {
            // Never refused for want of room: the oldest waiting one goes.
            let place = shared.waiting.admit();
            let shared = shared.clone();
            shared
                .tracker
                .clone()
                .spawn(session::serve_connection(incoming, place, shared));
        }
    });
    Ok(RunningServer {
        addr,
        cert_path: identity.cert_path,
        fingerprint: identity.fingerprint,
        endpoint,
        accept,
        stop,
        tracker,
    })
}
