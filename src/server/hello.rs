//! A connection's way in. Until a valid `Hello` it holds a place among the
//! waiting connections (`waiting.rs`), a deadline (`server.hello_timeout_ms`,
//! counted from its first packet, the handshake included), few streams and
//! a small receive window. The `Hello` gives it a role, a slot among
//! `server.max_connections`, and the full streams and window.

use std::sync::Mutex;

use omniroute_protocol::{close_codes, ErrorCode, Response};
use tokio::sync::OwnedSemaphorePermit;

use super::session::{Session, Shared};
use super::tls::RECEIVE_WINDOW_BYTES;
use super::waiting::Place;

/// Where a connection stands.
pub enum Admission {
    /// No valid `Hello` yet: its place among the waiting connections.
    Waiting(Place),
    /// Authenticated, with its slot among `max_connections`, held while
    /// it is open.
    Authenticated { _slot: OwnedSemaphorePermit },
}

/// Answers a `Hello` with `token`: the first valid one admits the
/// connection, a later one must name the same role.
pub fn hello(
    session: &Session,
    shared: &Shared,
    connection: &quinn::Connection,
    token: &str,
) -> Response {
    let Some(role) = shared.tokens.role(token) else {
        return Response::error(ErrorCode::BadToken, "unknown token");
    };
    // Held while deciding: two Hellos on two streams admit it once.
    let mut admission = lock(&session.admission);
    if let Some(current) = session.role.get() {
        return if *current == role {
            Response::HelloOk { role: role.name() }
        } else {
            Response::error(
                ErrorCode::Forbidden,
                format!("connection is already {}", current.name()),
            )
        };
    }
    let Ok(permit) = shared.connections.clone().try_acquire_owned() else {
        return Response::error(
            ErrorCode::Overloaded,
            format!(
                "the server has its server.max_connections ({}) authenticated connections open; try again later",
                shared.max_connections
            ),
        );
    };
    if let Admission::Waiting(place) = &*admission {
        if !place.leave() {
            return Response::error(
                ErrorCode::NotAuthenticated,
                "the connection is being closed: a newer one took its place",
            );
        }
    }
    *admission = Admission::Authenticated { _slot: permit };
    let _ = session.role.set(role.clone());
    *lock(&session.gauge) = crate::telemetry::ConnectionGauge::new(&role.name());
    connection.set_receive_window(RECEIVE_WINDOW_BYTES.into());
    connection.set_max_concurrent_bi_streams(shared.max_streams_per_connection.into());
    Response::HelloOk { role: role.name() }
}

/// Closes a connection whose `Hello` did not come in time.
pub fn close_late(connection: &quinn::Connection, hello_timeout_ms: u64) {
    let reason = format!(
        "no valid Hello within server.hello_timeout_ms ({hello_timeout_ms} ms) of connecting"
    );
    connection.close(close_codes::NO_HELLO.into(), reason.as_bytes());
}

/// Closes a waiting connection whose place a newer one took.
pub fn close_evicted(connection: &quinn::Connection, capacity: usize) {
    let reason = format!(
        "no valid Hello yet, and the oldest of server.max_unauthenticated_connections ({capacity}) connections waiting for one when another arrived"
    );
    connection.close(close_codes::NO_HELLO.into(), reason.as_bytes());
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
