//! The HTTP/JSON gateway, for integrations that cannot speak QUIC: the
//! same requests under `/v1/`, the same tokens (as `Authorization: Bearer`),
//! roles, limits, codes and messages, answered by the same code as the
//! QUIC session ([`crate::server::requests`]). `docs/openapi.json`
//! describes every route.
//!
//! `body.rs` reads and checks JSON bodies and queries, `reply.rs` writes
//! answers as JSON, `routes.rs` has the routes, `events.rs` a channel's
//! order statuses as Server-Sent Events. `serve.rs` serves a port (this
//! one and the admin port) within its connection cap and stop grace, and
//! `conn.rs` bounds each connection's header, body and idle time.

mod body;
mod conn;
mod events;
pub mod fields;
mod leader;
mod reply;

/// The gateway's error answer (status and `{"error": {...}}` body) for a
/// protocol code: also what the admin port answers at its limit.
pub fn error_body(
    code: omniroute_protocol::ErrorCode,
    message: &str,
) -> (axum::http::StatusCode, serde_json::Value) {
    reply::error(code as u16, message)
}
mod routes;
pub mod serve;

pub use conn::BodyTimedOut;
pub use serve::HttpLimits;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use tokio_util::sync::CancellationToken;

use crate::engine::Engine;
use crate::replica::serving::Serving;
use crate::server::Tokens;

/// Largest request body: a QUIC frame's bound, so that both ingresses take
/// the same requests (a stock feed of thousands of entries fits).
pub const MAX_HTTP_BODY_BYTES: usize = omniroute_protocol::MAX_FRAME_BYTES;

/// What every route reads.
#[derive(Clone)]
pub struct App {
    /// The engine that answers here (a replica's only while it leads).
    serving: Arc<Serving>,
    tokens: Arc<Tokens>,
    /// Cancelled at shutdown: open event streams end.
    stop: CancellationToken,
    /// How often a quiet event stream sends a comment: within the idle
    /// timeout, so that a follower of a quiet channel is never idle.
    keep_alive_ms: u64,
}

impl App {
    /// The engine to answer with; a replica that stopped leading since
    /// the request was let in answers `NotLeader`.
    fn engine(&self) -> Result<Engine, routes::Reply> {
        self.serving.engine().map_err(|not| {
            let answer = crate::server::wire::not_leader(&not);
            let (status, body) = reply::reply(answer);
            (status, axum::Json(body))
        })
    }
}

/// The gateway's port cannot be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen for HTTP on {addr}: {message}")]
pub struct HttpError {
    pub addr: SocketAddr,
    pub message: String,
}

pub struct RunningHttp {
    pub addr: SocketAddr,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl RunningHttp {
    /// Ends the event streams, lets requests under way finish (for at most
    /// the limits' `shutdown_grace_ms`), and stops.
    pub async fn shutdown(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// Every route, as `docs/openapi.json` must list it (its test checks both
/// that list and the live server against this one). Keep in step with
/// the router below.
pub const ROUTES: [(&str, &str); 13] = [
    ("post", "/v1/orders"),
    ("get", "/v1/orders/{channel}/{id}"),
    ("post", "/v1/orders/{channel}/{id}/confirm"),
    ("post", "/v1/orders/{channel}/{id}/cancel"),
    ("get", "/v1/channels/{channel}/orders"),
    ("get", "/v1/channels/{channel}/events"),
    ("get", "/v1/availability/{sku}"),
    ("post", "/v1/stock/set"),
    ("post", "/v1/stock/adjust"),
    ("post", "/v1/nodes/{node}/ship"),
    ("post", "/v1/nodes/{node}/return"),
    ("post", "/v1/nodes/{node}/reject"),
    ("post", "/v1/nodes/{node}/online"),
];

fn router(app: App) -> Router {
    Router::new()
        .route("/v1/orders", post(routes::submit))
        .route("/v1/orders/{channel}/{id}", get(routes::get_order))
        .route("/v1/orders/{channel}/{id}/confirm", post(routes::confirm))
        .route("/v1/orders/{channel}/{id}/cancel", post(routes::cancel))
        .route("/v1/channels/{channel}/orders", get(routes::list))
        .route("/v1/channels/{channel}/events", get(events::follow))
        .route("/v1/availability/{sku}", get(routes::availability))
        .route("/v1/stock/set", post(routes::stock_set))
        .route("/v1/stock/adjust", post(routes::stock_adjust))
        .route("/v1/nodes/{node}/ship", post(routes::ship))
        .route("/v1/nodes/{node}/return", post(routes::take_back))
        .route("/v1/nodes/{node}/reject", post(routes::reject))
        .route("/v1/nodes/{node}/online", post(routes::online))
        .method_not_allowed_fallback(routes::wrong_method)
        .fallback(routes::no_route)
        .layer(DefaultBodyLimit::max(MAX_HTTP_BODY_BYTES))
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            leader::leader_only,
        ))
        .layer(axum::middleware::from_fn(routes::json_by_default))
        .layer(axum::middleware::from_fn(routes::declared_length))
        .with_state(app)
}

/// Binds `addr` and serves the gateway on `engine`, with `tokens`, within
/// `limits`.
pub async fn start(
    engine: Engine,
    tokens: Arc<Tokens>,
    addr: SocketAddr,
    limits: HttpLimits,
) -> Result<RunningHttp, HttpError> {
    start_serving(Arc::new(Serving::single(engine)), tokens, addr, limits).await
}

/// [`start`] for the engine `serving` has at the time: a replica's gateway
/// redirects to the leader's while it does not lead.
pub async fn start_serving(
    serving: Arc<Serving>,
    tokens: Arc<Tokens>,
    addr: SocketAddr,
    limits: HttpLimits,
) -> Result<RunningHttp, HttpError> {
    let failed = |e: std::io::Error| HttpError {
        addr,
        message: e.to_string(),
    };
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(failed)?;
    let addr = listener.local_addr().map_err(failed)?;
    let stop = CancellationToken::new();
    let app = App {
        serving,
        tokens,
        stop: stop.clone(),
        keep_alive_ms: events::keep_alive_ms(limits.idle_timeout_ms),
    };
    let message = format!(
        "the server is at its connection limit ({}); retry shortly",
        limits.max_connections
    );
    let (_, body) = reply::error(omniroute_protocol::ErrorCode::Overloaded as u16, &message);
    let at_capacity = serve::at_capacity_response("application/json", &body.to_string());
    let task = serve::spawn(
        listener,
        router(app),
        limits,
        at_capacity,
        "the HTTP gateway",
        stop.clone(),
    );
    Ok(RunningHttp { addr, stop, task })
}
