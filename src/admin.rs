//! The admin HTTP port: Prometheus `/metrics`, `/healthz`, `/readyz`, and
//! `POST /policy/reload`. It starts before recovery, so that an operator
//! (or an orchestrator) can tell "alive but recovering" from "ready".

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::config::{Config, ConfigSource};
use crate::config_diff::{changed_keys, nodes_only_added, scope, Scope};
use crate::core::network::Network;
use crate::engine::{Engine, EngineError};
use crate::server::Tokens;
use crate::telemetry;

/// What the admin port and the daemon share.
pub struct Status {
    ready: AtomicBool,
    /// When the newest snapshot was written (Unix ms; 0: none yet).
    last_snapshot_unix_ms: AtomicU64,
    engine: OnceLock<Engine>,
    /// A replica's role and failure (a cluster's replica only).
    replica: OnceLock<Box<dyn ReplicaProbe>>,
    /// The config file a reload reads again, and its keys at start (what a
    /// restart-only change is measured against); None on the embedded config.
    config_file: Option<(PathBuf, toml::Table)>,
    /// The live token table, the QUIC server's too: a reload must carry a
    /// token of the `admin` role, and replaces the table.
    tokens: Arc<Tokens>,
    /// One reload at a time, so that their records and their effects keep one order.
    reloading: tokio::sync::Mutex<()>,
    /// The listeners the daemon serves on, set at start (see
    /// [`Status::set_listeners`]).
    listeners: OnceLock<crate::dev_tokens::Listeners>,
    /// The data directory, whose names a reload that adds nodes extends.
    data_dir: PathBuf,
    /// The `nodes` array in force: the start file's, then each reload's
    /// that added nodes. A reload may only add to it live.
    nodes_in_force: std::sync::Mutex<Option<toml::Value>>,
}

pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Why a reload was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(
        "the daemon runs on its embedded config; start it with --config FILE to reload policies"
    )]
    NoConfigFile,
    #[error("cannot read {path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("the daemon is not ready (recovering or stopping)")]
    NotReady,
    /// The data directory's names could not take the added nodes.
    #[error("cannot record the added nodes' ids: {0}")]
    Names(String),
    #[error(transparent)]
    Engine(#[from] EngineError),
}

impl ReloadError {
    /// A stable code for scripts, next to the message.
    pub fn code(&self) -> &'static str {
        match self {
            ReloadError::NoConfigFile => "no_config_file",
            ReloadError::Read { .. } => "unreadable",
            ReloadError::Invalid { .. } => "invalid_policy",
            ReloadError::NotReady => "not_ready",
            ReloadError::Names(_) => "unavailable",
            ReloadError::Engine(EngineError::Channels { .. }) => "channels_changed",
            ReloadError::Engine(EngineError::NodeSlots { .. }) => "node_slots_full",
            ReloadError::Engine(_) => "unavailable",
        }
    }
}

/// A reload that took effect, and what it could not do.
#[derive(Debug, serde::Serialize)]
pub struct Reloaded {
    /// Journal LSN of the reload; orders after it are routed by the new policies.
    pub lsn: u64,
    pub channels: Vec<String>,
    /// Changed keys now in force (`channels.NAME`, `server.tokens`).
    pub applied: Vec<String>,
    /// Keys that differ from the config the daemon started on and take
    /// effect only at the next start.
    pub restart_required: Vec<String>,
    /// Nodes this reload added to the running daemon (`nodes` is then
    /// under `applied`): they take stock and orders at once.
    pub nodes_added: Vec<String>,
    /// Changed keys read only when a data directory is created.
    pub new_directory_only: Vec<String>,
}

impl Status {
    pub fn new(source: Option<ConfigSource>, tokens: Arc<Tokens>, data_dir: PathBuf) -> Status {
        // The text was parsed when the daemon loaded it; it parses again.
        let config_file: Option<(PathBuf, toml::Table)> =
            source.map(|s| (s.path, s.text.parse().unwrap_or_default()));
        let nodes_in_force = config_file
            .as_ref()
            .and_then(|(_, keys)| keys.get("nodes").cloned());
        Status {
            ready: AtomicBool::new(false),
            last_snapshot_unix_ms: AtomicU64::new(0),
            engine: OnceLock::new(),
            replica: OnceLock::new(),
            config_file,
            tokens,
            reloading: tokio::sync::Mutex::new(()),
            listeners: OnceLock::new(),
            data_dir,
            nodes_in_force: std::sync::Mutex::new(nodes_in_force),
        }
    }

    /// The daemon's listeners: a reload is refused a token table with the
    /// embedded development tokens while one of them is not loopback.
    pub fn set_listeners(&self, listeners: crate::dev_tokens::Listeners) {
        let _ = self.listeners.set(listeners);
    }

    /// This daemon is a replica: `/readyz` and `/healthz` ask `probe`.
    pub fn set_replica(&self, probe: Box<dyn ReplicaProbe>) {
        let _ = self.replica.set(probe);
    }

    /// The engine is up (recovery is done): metrics can read it.
    pub fn engine_started(&self, engine: Engine) {
        let _ = self.engine.set(engine);
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
        metrics::gauge!(telemetry::READY).set(if ready { 1.0 } else { 0.0 });
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// Where snapshot age counts from when this run has written none: the
    /// newest snapshot file, or the start of a directory that has none.
    pub fn snapshot_baseline(&self, at_unix_ms: u64) {
        self.last_snapshot_unix_ms
            .fetch_max(at_unix_ms, Ordering::Relaxed);
    }

    pub fn snapshot_written(&self, at_unix_ms: u64) {
        self.last_snapshot_unix_ms
            .fetch_max(at_unix_ms, Ordering::Relaxed);
        metrics::counter!(telemetry::SNAPSHOTS_TOTAL).increment(1);
    }

    /// Reads the config file again, validates all of it, and routes by its
    /// channels' policies from the reload's LSN on. Anything wrong leaves
    /// the policies in force as they were.
    pub async fn reload_policy(&self) -> Result<Reloaded, ReloadError> {
        let result = self.try_reload().await;
        let outcome = if result.is_ok() { "applied" } else { "refused" };
        metrics::counter!(telemetry::POLICY_RELOADS_TOTAL, "result" => outcome).increment(1);
        match &result {
            Ok(r) => {
                tracing::info!(
                    "reload at LSN {} applied [{}] (channels {})",
                    r.lsn,
                    r.applied.join(", "),
                    r.channels.join(", ")
                );
                if !r.restart_required.is_empty() {
                    tracing::warn!(
                        "reload: changed keys take effect only at the next start: {}",
                        r.restart_required.join(", ")
                    );
                }
                if !r.new_directory_only.is_empty() {
                    tracing::warn!(
                        "reload: changed keys are read only into a new data directory: {}",
                        r.new_directory_only.join(", ")
                    );
                }
            }
            Err(e) => tracing::warn!("policy reload refused, the old policies stay: {e}"),
        }
        result
    }

    async fn try_reload(&self) -> Result<Reloaded, ReloadError> {
        let _one = self.reloading.lock().await;
        let (path, started) = self.config_file.as_ref().ok_or(ReloadError::NoConfigFile)?;
        let path = path.clone();
        let engine = match (self.engine.get(), self.is_ready()) {
            (Some(engine), true) => engine,
            _ => return Err(ReloadError::NotReady),
        };
        let text = std::fs::read_to_string(&path).map_err(|e| ReloadError::Read {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let invalid = |message: String| ReloadError::Invalid {
            path: path.clone(),
            message,
        };
        let config = Config::from_toml(&text).map_err(|e| invalid(e.to_string()))?;
        let policies = config.policies().map_err(|e| invalid(e.to_string()))?;
        let keys: toml::Table = text.parse().map_err(|e| invalid(format!("{e}")))?;
        let channels = policies
            .network
            .channels
            .iter()
            .map(|c| c.name.clone())
            .collect();
        // Before anything changes: the start's check holds for the table
        // the reload would put in force too.
        if let Some(listeners) = self.listeners.get() {
            crate::dev_tokens::refuse_tokens(&policies.tokens, listeners)
                .map_err(|e| invalid(e.to_string()))?;
        }
        let lsn = engine
            .reload_policies(policies.network.channels.clone(), policies.toml)
            .await?;
        self.tokens.replace(policies.tokens);
        let in_force = self
            .nodes_in_force
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let growing = nodes_only_added(in_force.as_ref(), keys.get("nodes"));
        // Nodes as in force (the start file's, or added live since).
        let nodes_live = growing || in_force.as_ref() == keys.get("nodes");
        let nodes_added = if growing {
            let added = self.add_nodes(engine, &policies.network).await?;
            *self
                .nodes_in_force
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = keys.get("nodes").cloned();
            added
        } else {
            Vec::new()
        };
        let mut reloaded = Reloaded {
            lsn,
            channels,
            applied: Vec::new(),
            restart_required: Vec::new(),
            nodes_added,
            new_directory_only: Vec::new(),
        };
        for key in changed_keys(started, &keys) {
            if key == "nodes" && nodes_live {
                reloaded.applied.push(key);
                continue;
            }
            if key == "log.level" && telemetry::set_log_level(&config.log.level).unwrap_or(false) {
                reloaded.applied.push(key);
                continue;
            }
            match scope(&key) {
                Scope::Live => reloaded.applied.push(key),
                Scope::Restart => reloaded.restart_required.push(key),
                Scope::NewDirectoryOnly => reloaded.new_directory_only.push(key),
            }
        }
        Ok(reloaded)
    }

    /// Adds the nodes `file` (the reloaded file's network) has beyond the
    /// running one: their ids go into the data directory's names first
    /// (durably, before any record can use them), then into the engine.
    async fn add_nodes(&self, engine: &Engine, file: &Network) -> Result<Vec<String>, ReloadError> {
        let current = engine.network_arc();
        let (network, names) = file.with_names(&current.names());
        if network.nodes.len() == current.nodes.len() {
            return Ok(Vec::new());
        }
        let dir = self.data_dir.clone();
        tokio::task::spawn_blocking(move || crate::store::layout::write_names(&dir, &names))
            .await
            .map_err(|e| ReloadError::Names(e.to_string()))?
            .map_err(|e| ReloadError::Names(e.to_string()))?;
        let added = engine.add_nodes(Arc::new(network)).await?;
        tracing::info!("reload added nodes {}", added.join(", "));
        Ok(added)
    }

    /// Sets the gauges whose values live elsewhere, just before a scrape.
    fn refresh_gauges(&self) {
        let snapshot_at = self.last_snapshot_unix_ms.load(Ordering::Relaxed);
        if snapshot_at > 0 {
            let age_ms = unix_ms().saturating_sub(snapshot_at);
            metrics::gauge!(telemetry::SNAPSHOT_AGE_SECONDS).set(age_ms as f64 / 1e3);
        }
        metrics::gauge!(telemetry::READY).set(if self.is_ready() { 1.0 } else { 0.0 });
        let Some(engine) = self.engine.get() else {
            return;
        };
        metrics::gauge!(telemetry::ORDERS_IN_FLIGHT).set(engine.orders_in_flight() as f64);
        let depths = engine.queue_depths();
        for (queue, depths) in [("router", depths.routers), ("shard", depths.shards)] {
            for (id, depth) in depths.into_iter().enumerate() {
                metrics::gauge!(telemetry::QUEUE_DEPTH, "queue" => queue, "id" => id.to_string())
                    .set(depth as f64);
            }
        }
        // Nodes by their configured id, which is what an operator looks for.
        for (node, depth) in engine.network().nodes.iter().zip(depths.nodes) {
            metrics::gauge!(telemetry::QUEUE_DEPTH, "queue" => "node", "id" => node.id.clone())
                .set(depth as f64);
        }
        if let Some(journal) = engine.sequencer().journal() {
            let stats = &journal.stats;
            metrics::counter!(telemetry::JOURNAL_RECORDS_TOTAL)
                .absolute(stats.records.load(Ordering::Relaxed));
            metrics::counter!(telemetry::JOURNAL_COMMITS_TOTAL)
                .absolute(stats.commits.load(Ordering::Relaxed));
        }
    }
}

/// What a replica tells its admin port (see `crate::cluster`).
pub trait ReplicaProbe: Send + Sync {
    /// Why the replica cannot go on, if it cannot (`/healthz` 503).
    fn failure(&self) -> Option<String>;
    /// Whether it is ready (it leads and serves, or follows a known
    /// leader it sends clients to), and its role in words for `/readyz`.
    fn role(&self) -> (bool, String);
}

/// A running admin port.
pub struct AdminServer {
    pub addr: SocketAddr,
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl AdminServer {
    pub async fn shutdown(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

struct AdminState {
    status: Arc<Status>,
    metrics: PrometheusHandle,
}

/// Why the admin port cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The address cannot be bound (taken, or not this host's).
    #[error("admin port: cannot listen on {addr}: {cause}")]
    Listen {
        addr: SocketAddr,
        #[source]
        cause: std::io::Error,
    },
    /// The bound socket does not tell its address.
    #[error("admin port: {0}")]
    Address(#[source] std::io::Error),
}

/// Binds `addr` and serves the admin endpoints within `limits`.
pub async fn start(
    addr: SocketAddr,
    status: Arc<Status>,
    metrics: PrometheusHandle,
    limits: crate::http::HttpLimits,
) -> Result<AdminServer, AdminError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|cause| AdminError::Listen { addr, cause })?;
    let addr = listener.local_addr().map_err(AdminError::Address)?;
    let app = Router::new()
        .route("/metrics", get(metrics_page))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/policy/reload", post(reload))
        .with_state(Arc::new(AdminState { status, metrics }));
    let message = format!(
        "the admin port is at its connection limit ({}); retry shortly",
        limits.max_connections
    );
    // The gateway's own answer at its limit, word for word but the port.
    let (_, body) = crate::http::error_body(omniroute_protocol::ErrorCode::Overloaded, &message);
    let at_capacity =
        crate::http::serve::at_capacity_response("application/json", &body.to_string());
    let stop = tokio_util::sync::CancellationToken::new();
    let task = crate::http::serve::spawn(
        listener,
        app,
        limits,
        at_capacity,
        "the admin port",
        stop.clone(),
    );
    Ok(AdminServer { addr, stop, task })
}

async fn metrics_page(State(state): State<Arc<AdminState>>) -> Response {
    state.status.refresh_gauges();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

/// Alive unless an actor or the storage has failed (the daemon is then
/// stopping); the body names the cause.
async fn healthz(State(state): State<Arc<AdminState>>) -> Response {
    let replica = state.status.replica.get().and_then(|r| r.failure());
    match replica.or_else(|| state.status.engine.get().and_then(|e| e.health().failure())) {
        Some(failure) => (StatusCode::SERVICE_UNAVAILABLE, format!("{failure}\n")).into_response(),
        None => (StatusCode::OK, "ok\n").into_response(),
    }
}

/// Ready once recovered and serving, until the stop begins or the engine
/// fails (a storage fault: nothing more can be made durable).
async fn readyz(State(state): State<Arc<AdminState>>) -> Response {
    if let Some(failure) = state.status.engine.get().and_then(|e| e.health().failure()) {
        return (StatusCode::SERVICE_UNAVAILABLE, format!("{failure}\n")).into_response();
    }
    if let (Some(replica), true) = (state.status.replica.get(), state.status.is_ready()) {
        let (ready, role) = replica.role();
        let status = if ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        return (status, format!("{role}\n")).into_response();
    }
    if state.status.is_ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

/// An error answer in the HTTP gateway's shape, `{"error": {"name",
/// "message"}}`: one shape for a client of either port. The admin port's
/// names (`invalid_policy`, `not_authorized`, ...) are its own; it has no
/// protocol codes.
fn json_error(status: StatusCode, name: &str, message: String) -> Response {
    let body = serde_json::json!({ "error": { "name": name, "message": message } });
    (status, axum::Json(body)).into_response()
}

async fn reload(State(state): State<Arc<AdminState>>, headers: HeaderMap) -> Response {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    // No token, or one the daemon does not know: 401. A known token of
    // another role: 403, naming its role (it is valid, not enough).
    match token.map(|token| state.status.tokens.role(token)) {
        Some(Some(crate::server::Role::Admin)) => {}
        Some(Some(role)) => {
            return json_error(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!(
                    "a token of the role {} may not reload the policy; use a token of the admin role",
                    role.name()
                ),
            );
        }
        _ => {
            return json_error(
                StatusCode::UNAUTHORIZED,
                "not_authorized",
                "send 'Authorization: Bearer <token>' with a token of the admin role".into(),
            );
        }
    }
    match state.status.reload_policy().await {
        Ok(reloaded) => (StatusCode::OK, axum::Json(reloaded)).into_response(),
        Err(e) => {
            let status = match e {
                ReloadError::NotReady | ReloadError::Engine(EngineError::Unavailable) => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
                _ => StatusCode::BAD_REQUEST,
            };
            json_error(status, e.code(), e.to_string())
        }
    }
}
