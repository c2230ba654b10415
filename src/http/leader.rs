//! A replica that does not lead sends HTTP clients to the leader's
//! gateway: `307 Temporary Redirect` to the same path and query there
//! (the method and body are kept by a 307), or `503` with `NotLeader`
//! while no leader with a gateway is known. A single node always serves.

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use omniroute_protocol::ErrorCode;

use super::reply::error;
use super::App;

/// Runs the route if an engine serves here; else redirects or refuses.
pub async fn leader_only(
    State(app): State<App>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let Err(not) = app.serving.engine() else {
        return next.run(request).await;
    };
    let gateway = not.leader.and_then(|leader| leader.http);
    let (_, body) = error(
        ErrorCode::NotLeader as u16,
        &gateway.map(|a| a.to_string()).unwrap_or_default(),
    );
    let Some(gateway) = gateway else {
        return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    };
    let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
    let location = format!("http://{gateway}{path}");
    match HeaderValue::from_str(&location) {
        Ok(location) => (
            StatusCode::TEMPORARY_REDIRECT,
            [(header::LOCATION, location)],
            Json(body),
        )
            .into_response(),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response(),
    }
}
