//! A channel's order statuses as Server-Sent Events: `id` is the cursor,
//! so a browser's `EventSource` (or any client sending `Last-Event-ID`)
//! resumes exactly where it stopped.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::stream::{self, Stream, StreamExt};
use omniroute_protocol::{close_codes, ErrorCode, Request};

use super::body::EventsQuery;
use super::reply::{error, reply, status_json};
use super::routes::{refuse, role};
use super::App;
use crate::server::requests::{allowed, forbidden};
use crate::server::wire;

/// A comment line this often keeps proxies from closing a quiet stream.
const KEEP_ALIVE_MS: u64 = 15_000;

/// How often a quiet stream sends a comment: `KEEP_ALIVE_MS`, or more
/// often if the port's idle timeout would otherwise close the stream of a
/// follower that reads but has nothing to read.
pub(super) fn keep_alive_ms(idle_timeout_ms: u64) -> u64 {
    KEEP_ALIVE_MS.min(idle_timeout_ms / 3).max(1)
}

pub async fn follow(
    State(app): State<App>,
    headers: HeaderMap,
    Path(channel): Path<String>,
    q: Result<Query<EventsQuery>, QueryRejection>,
) -> Response {
    match open(&app, &headers, channel, q).await {
        Ok(sse) => sse.into_response(),
        Err((status, body)) => (status, body).into_response(),
    }
}

/// The first cursor to send: after the `Last-Event-ID` a reconnecting
/// client sends, else the query's `from`.
fn first_cursor(headers: &HeaderMap, query: &EventsQuery) -> Result<u64, super::routes::Reply> {
    let refused = |e: super::fields::BadField| refuse(ErrorCode::Malformed, &e.to_string());
    // `from` is checked even when the header wins: a bad query is refused
    // whatever else the request says.
    let from = super::body::cursor("from", query.from).map_err(refused)?;
    match headers.get("last-event-id") {
        // A cursor is at most 18 digits: the next one always fits.
        Some(value) => super::fields::cursor_text("Last-Event-ID", value.to_str().unwrap_or(""))
            .map(|last| last + 1)
            .map_err(refused),
        None => Ok(from),
    }
}

async fn open(
    app: &App,
    headers: &HeaderMap,
    channel: String,
    q: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, super::routes::Reply> {
    let role = role(app, headers)?;
    let Query(query) = q.map_err(|r| refuse(ErrorCode::Malformed, &r.body_text()))?;
    let from_cursor = first_cursor(headers, &query)?;
    let request = Request::FollowOrders {
        channel: channel.clone(),
        from_cursor,
    };
    if !allowed(&role, &request) {
        let (status, body) = reply(forbidden(&role));
        return Err((status, Json(body)));
    }
    let engine = app.engine()?;
    let subscription = engine
        .follow_orders(&channel, from_cursor)
        .await
        .map_err(|e| {
            let (status, body) = reply(wire::error(&e));
            (status, Json(body))
        })?;
    let as_event = move |(cursor, status): (u64, std::sync::Arc<_>)| {
        let frame = wire::order_status(&engine, cursor, &status);
        let omniroute_protocol::Response::OrderStatus(status) = frame else {
            unreachable!("order_status makes a status")
        };
        let event = Event::default()
            .id(cursor.to_string())
            .event(omniroute_protocol::order_changes::name(status.change));
        Ok::<_, Infallible>(match event.json_data(status_json(&status)) {
            Ok(event) => event,
            Err(_) => Event::default().comment("a status did not encode"),
        })
    };
    let backlog = stream::iter(subscription.backlog);
    let live = stream::unfold(subscription.live, |mut live| async move {
        live.recv().await.map(|item| (item, live))
    });
    // The feed drops a follower that falls too far behind: say so, as the
    // QUIC stream's reset does, before the stream ends.
    let (_, slow) = error(
        ErrorCode::CursorTooOld as u16,
        "this follower fell too far behind and was dropped; reconnect with the last cursor",
    );
    let dropped = stream::once(async move {
        Ok(Event::default().event("error").data(format!(
            "{{\"close_code\":{},\"error\":{}}}",
            close_codes::SLOW_CONSUMER,
            slow["error"]
        )))
    });
    let stop = app.stop.clone();
    let statuses = backlog
        .chain(live)
        .map(as_event)
        .chain(dropped)
        .take_until(async move { stop.cancelled().await });
    Ok(Sse::new(statuses)
        .keep_alive(KeepAlive::new().interval(Duration::from_millis(app.keep_alive_ms))))
}
