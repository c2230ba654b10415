//! The gateway's routes: each reads its token and body, builds the request
//! QUIC would carry, and has it answered by the same code
//! ([`crate::server::requests::answer`]).

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::Json;
use omniroute_protocol::{ErrorCode, Request};
use serde_json::Value;

use super::body::{
    order_key, AdjustEntry, AvailabilityQuery, BadField, ListQuery, OnlineBody, RejectBody,
    SetEntry, StockBody, SubmitBody, UnitsBody, UnitsOp,
};
use super::reply::{error, reply};
use super::App;
use crate::server::requests::answer;
use crate::server::Role;

/// A status and a JSON body: every route's answer, success or not.
pub type Reply = (StatusCode, Json<Value>);

pub fn refuse(code: ErrorCode, message: &str) -> Reply {
    let (status, body) = error(code as u16, message);
    (status, Json(body))
}

fn bad_field(error: BadField) -> Reply {
    refuse(ErrorCode::Malformed, &error.to_string())
}

/// The role of the request's `Authorization: Bearer TOKEN`.
pub fn role(app: &App, headers: &HeaderMap) -> Result<Role, Reply> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| {
            refuse(
                ErrorCode::NotAuthenticated,
                "send the header Authorization: Bearer TOKEN",
            )
        })?;
    app.tokens
        .role(token.trim())
        .ok_or_else(|| refuse(ErrorCode::BadToken, "unknown token"))
}

/// A JSON body, or the protocol's error for it: `TooLarge` past the body
/// limit, 408 with `Malformed` for a body that did not arrive in time,
/// else `Malformed` naming the field serde stopped at.
fn json<T>(body: Result<Json<T>, JsonRejection>) -> Result<T, Reply> {
    body.map(|Json(value)| value).map_err(|rejection| {
        if let Some(late) = timed_out(&rejection) {
            let (_, body) = error(ErrorCode::Malformed as u16, &late.to_string());
            (StatusCode::REQUEST_TIMEOUT, Json(body))
        } else if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            let message = format!("the body is over {} bytes", super::MAX_HTTP_BODY_BYTES);
            refuse(ErrorCode::TooLarge, &message)
        } else if matches!(rejection, JsonRejection::MissingJsonContentType(_)) {
            // Only a Content-Type that says another format comes here: a
            // body without one is taken as JSON (`json_by_default`).
            let (_, body) = error(
                ErrorCode::Malformed as u16,
                "the body must be JSON: send Content-Type: application/json, or none",
            );
            (StatusCode::UNSUPPORTED_MEDIA_TYPE, Json(body))
        } else {
            refuse(ErrorCode::Malformed, &rejection.body_text())
        }
    })
}

/// The body timeout behind a rejection, if that is why it failed.
fn timed_out(rejection: &JsonRejection) -> Option<&super::BodyTimedOut> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(rejection);
    while let Some(error) = cause {
        if let Some(late) = error.downcast_ref::<super::BodyTimedOut>() {
            return Some(late);
        }
        cause = error.source();
    }
    None
}

fn query<T>(query: Result<Query<T>, QueryRejection>) -> Result<T, Reply> {
    query
        .map(|Query(value)| value)
        .map_err(|rejection| refuse(ErrorCode::Malformed, &rejection.body_text()))
}

/// Answers `request` as the caller's role.
async fn respond(app: &App, headers: &HeaderMap, request: Result<Request, Reply>) -> Reply {
    let role = match role(app, headers) {
        Ok(role) => role,
        Err(refused) => return refused,
    };
    match request {
        Ok(request) => {
            let engine = match app.engine() {
                Ok(engine) => engine,
                Err(refused) => return refused,
            };
            let mut answered = [(0, answer(&engine, &role, request).await)];
            crate::server::wire::deposed(&app.serving, &mut answered);
            let [(_, answered)] = answered;
            let (status, body) = reply(answered);
            (status, Json(body))
        }
        Err(refused) => refused,
    }
}

pub async fn submit(
    State(app): State<App>,
    headers: HeaderMap,
    body: Result<Json<SubmitBody>, JsonRejection>,
) -> Reply {
    let request = json(body).and_then(|b| b.request().map_err(bad_field));
    let store = match &request {
        Ok(Request::Submit(order)) => match &order.method {
            omniroute_protocol::Method::Pickup { store } => Some(store.clone()),
            _ => None,
        },
        _ => None,
    };
    let (status, Json(mut answer)) = respond(&app, &headers, request).await;
    if let Some(store) = store {
        mark_substitutes(&mut answer, &store);
    }
    (status, Json(answer))
}

/// Marks each allocation of a pickup order at another store than the one
/// chosen (the policy's `pickup_alternatives` allowed it) with the store
/// it stands in for.
fn mark_substitutes(answer: &mut Value, store: &str) {
    let Some(allocations) = answer["allocations"].as_array_mut() else {
        return;
    };
    for allocation in allocations {
        if allocation["node"] != store {
            allocation["substitute_for"] = Value::String(store.to_string());
        }
    }
}

/// Answers a request about one order named by its key in the path.
async fn by_key(
    app: &App,
    headers: &HeaderMap,
    (channel, id): (String, String),
    request: fn(omniroute_protocol::OrderKey) -> Request,
) -> Reply {
    let request = order_key(channel, id).map(request).map_err(bad_field);
    respond(app, headers, request).await
}

pub async fn get_order(
    State(app): State<App>,
    headers: HeaderMap,
    Path(key): Path<(String, String)>,
) -> Reply {
    by_key(&app, &headers, key, Request::GetOrder).await
}

pub async fn confirm(
    State(app): State<App>,
    headers: HeaderMap,
    Path(key): Path<(String, String)>,
) -> Reply {
    by_key(&app, &headers, key, Request::Confirm).await
}

pub async fn cancel(
    State(app): State<App>,
    headers: HeaderMap,
    Path(key): Path<(String, String)>,
) -> Reply {
    by_key(&app, &headers, key, Request::Cancel).await
}

pub async fn list(
    State(app): State<App>,
    headers: HeaderMap,
    Path(channel): Path<String>,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Reply {
    let request = query(q).and_then(|q| q.request(channel).map_err(bad_field));
    respond(&app, &headers, request).await
}

pub async fn availability(
    State(app): State<App>,
    headers: HeaderMap,
    Path(sku): Path<String>,
    q: Result<Query<AvailabilityQuery>, QueryRejection>,
) -> Reply {
    let request = query(q).and_then(|q| q.request(sku).map_err(bad_field));
    respond(&app, &headers, request).await
}

pub async fn stock_set(
    State(app): State<App>,
    headers: HeaderMap,
    body: Result<Json<StockBody<SetEntry>>, JsonRejection>,
) -> Reply {
    let request = json(body).and_then(|b| b.request().map_err(bad_field));
    respond(&app, &headers, request).await
}

pub async fn stock_adjust(
    State(app): State<App>,
    headers: HeaderMap,
    body: Result<Json<StockBody<AdjustEntry>>, JsonRejection>,
) -> Reply {
    let request = json(body).and_then(|b| b.request().map_err(bad_field));
    respond(&app, &headers, request).await
}

pub async fn ship(
    State(app): State<App>,
    headers: HeaderMap,
    Path(node): Path<String>,
    body: Result<Json<UnitsBody>, JsonRejection>,
) -> Reply {
    let request = json(body).and_then(|b| b.request(node, UnitsOp::Ship).map_err(bad_field));
    respond(&app, &headers, request).await
}

pub async fn take_back(
    State(app): State<App>,
    headers: HeaderMap,
    Path(node): Path<String>,
    body: Result<Json<UnitsBody>, JsonRejection>,
) -> Reply {
    let request = json(body).and_then(|b| b.request(node, UnitsOp::Return).map_err(bad_field));
    respond(&app, &headers, request).await
}

pub async fn reject(
    State(app): State<App>,
    headers: HeaderMap,
    Path(node): Path<String>,
    body: Result<Json<RejectBody>, JsonRejection>,
) -> Reply {
    let request = json(body).and_then(|b| b.request(node).map_err(bad_field));
    respond(&app, &headers, request).await
}

pub async fn online(
    State(app): State<App>,
    headers: HeaderMap,
    Path(node): Path<String>,
    body: Result<Json<OnlineBody>, JsonRejection>,
) -> Reply {
    let request = json(body).and_then(|b| b.request(node).map_err(bad_field));
    respond(&app, &headers, request).await
}

/// Refuses a body whose declared length is over the limit before reading
/// any of it: a client that sent `Expect: 100-continue` (curl does, for
/// large bodies) then sends nothing, and none gets a reset mid-upload.
/// Bodies without a length are cut at the limit as they are read.
pub async fn declared_length(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    match declared {
        Some(length) if length > super::MAX_HTTP_BODY_BYTES => {
            let message = format!(
                "the body's {length} bytes are over {}",
                super::MAX_HTTP_BODY_BYTES
            );
            refuse(ErrorCode::TooLarge, &message).into_response()
        }
        _ => next.run(request).await,
    }
}

/// Any other path: a JSON 404 that says where the routes are listed.
/// A body sent without a Content-Type is JSON: the only format the
/// gateway reads (curl's `-d` and hand-written clients often send none).
pub async fn json_by_default(
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    if !request.headers().contains_key(header::CONTENT_TYPE) {
        request.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/json"),
        );
    }
    next.run(request).await
}

/// A route asked with a method it does not take: 405 with an error body
/// like every other answer, not an empty one.
pub async fn wrong_method(method: Method, uri: Uri) -> Reply {
    let message = format!(
        "{method} is not a method of {}; docs/openapi.json lists each route's",
        uri.path()
    );
    let (_, body) = error(ErrorCode::UnknownKind as u16, &message);
    (StatusCode::METHOD_NOT_ALLOWED, Json(body))
}

pub async fn no_route(method: Method, uri: Uri) -> Reply {
    let message = format!("no route {method} {uri}; docs/openapi.json lists them");
    let (_, body) = error(ErrorCode::UnknownKind as u16, &message);
    (StatusCode::NOT_FOUND, Json(body))
}
