//! The protocol's answers as JSON, with the HTTP status each one means.
//! Codes and messages are the protocol's own; only their dress changes.

use axum::http::StatusCode;
use omniroute_protocol::{
    order_changes, order_states, reject_codes, Decision, ErrorCode, OrderStatus, OrderView,
    Response, Short,
};
use serde_json::{json, Value};

use crate::timefmt::iso;

/// The HTTP status and JSON body of a protocol answer.
pub fn reply(response: Response) -> (StatusCode, Value) {
    match response {
        Response::Decision(decision) => decision_json(decision),
        Response::Order(view) => (StatusCode::OK, order_json(&view)),
        Response::Availability(nodes) => {
            let nodes: Vec<Value> = nodes
                .iter()
                .map(|n| json!({"node": n.node, "atp": n.atp, "distance_km": n.distance_km}))
                .collect();
            (StatusCode::OK, json!({ "nodes": nodes }))
        }
        Response::NodeAvailability(nodes) => {
            let nodes: Vec<Value> = nodes
                .iter()
                .map(|n| {
                    json!({"node": n.node, "atp": n.atp, "distance_km": n.distance_km,
                           "online": n.online, "priority": n.priority})
                })
                .collect();
            (StatusCode::OK, json!({ "nodes": nodes }))
        }
        Response::StockResult {
            applied,
            bumped_units,
            errors,
        } => (
            StatusCode::OK,
            json!({"applied": applied, "rerouted_units": bumped_units, "errors": errors}),
        ),
        Response::NodeOnline { rerouted } => {
            (StatusCode::OK, json!({ "rerouted_orders": rerouted }))
        }
        Response::OrderPage { orders, next_after } => {
            let orders: Vec<Value> = orders
                .iter()
                .map(|listed| {
                    let mut order = order_json(&listed.order);
                    let at = listed.created_at_ms;
                    order["created_at_ms"] = json!((at != 0).then_some(at));
                    order["created_at"] = json!((at != 0).then(|| iso(at)));
                    order
                })
                .collect();
            let next = (next_after != 0).then_some(next_after);
            (
                StatusCode::OK,
                json!({"orders": orders, "next_after": next}),
            )
        }
        Response::OrderStatus(status) => (StatusCode::OK, status_json(&status)),
        Response::Error { code, message } => error(code, &message),
        other => error(
            ErrorCode::Internal as u16,
            &format!("unexpected answer of kind {}", other.kind()),
        ),
    }
}

/// An error body: the protocol's code, its name and the message.
pub fn error(code: u16, message: &str) -> (StatusCode, Value) {
    use ErrorCode::*;
    let known = ErrorCode::from_u16(code);
    let status = match known {
        Some(Malformed | Unframeable) => StatusCode::BAD_REQUEST,
        Some(NotAuthenticated | BadToken) => StatusCode::UNAUTHORIZED,
        Some(Forbidden) => StatusCode::FORBIDDEN,
        Some(Overloaded | Unavailable | NotLeader) => StatusCode::SERVICE_UNAVAILABLE,
        Some(UnknownOrder | UnknownSku | UnknownNode | UnknownChannel) => StatusCode::NOT_FOUND,
        Some(InvalidState) => StatusCode::CONFLICT,
        Some(InvalidQuantity) => StatusCode::UNPROCESSABLE_ENTITY,
        Some(CursorTooOld | Archived) => StatusCode::GONE,
        Some(TooLarge) => StatusCode::PAYLOAD_TOO_LARGE,
        Some(UnknownKind | UnsupportedVersion | Internal) | None => {
            StatusCode::INTERNAL_SERVER_ERROR
        }
    };
    let name = known.map_or_else(|| "Unknown".to_string(), |c| format!("{c:?}"));
    let body = json!({"error": {"code": code, "name": name, "message": message}});
    (status, body)
}

fn shorts_json(short: &[Short]) -> Vec<Value> {
    short
        .iter()
        .map(|s| {
            json!({"line": s.line, "sku": s.sku, "requested": s.requested, "available": s.available})
        })
        .collect()
}

/// Routed: 200. Rejected: 422, with the protocol's code, detail and message.
fn decision_json(decision: Decision) -> (StatusCode, Value) {
    match decision {
        Decision::Routed {
            order_id,
            expires_at_ms,
            allocations,
            short,
        } => {
            let allocations: Vec<Value> = allocations
                .iter()
                .map(|a| json!({"line": a.line, "sku": a.sku, "node": a.node, "qty": a.qty}))
                .collect();
            let body = json!({
                "outcome": "routed",
                "order_id": order_id,
                "expires_at_ms": expires_at_ms,
                "expires_at": iso(expires_at_ms),
                "allocations": allocations,
                "short": shorts_json(&short),
            });
            (StatusCode::OK, body)
        }
        Decision::Rejected {
            code,
            detail,
            message,
            short,
        } => {
            let body = json!({
                "outcome": "rejected",
                "code": code,
                "reason": reject_codes::name(code),
                "detail": detail,
                "message": message,
                "short": shorts_json(&short),
            });
            (StatusCode::UNPROCESSABLE_ENTITY, body)
        }
    }
}

pub fn order_json(view: &OrderView) -> Value {
    let allocations: Vec<Value> = view
        .allocations
        .iter()
        .map(|a| {
            json!({"line": a.line, "sku": a.sku, "node": a.node, "open": a.open,
                   "shipped": a.shipped, "returned": a.returned})
        })
        .collect();
    json!({
        "order_id": view.order_id,
        "channel": view.channel,
        "id": view.client_order_id,
        "state": order_states::name(view.state),
        "expires_at_ms": view.expires_at_ms,
        "expires_at": iso(view.expires_at_ms),
        "allocations": allocations,
        "short": shorts_json(&view.short),
    })
}

pub fn status_json(status: &OrderStatus) -> Value {
    json!({
        "cursor": status.cursor,
        "change": order_changes::name(status.change),
        "released_from": status.released_from,
        "order": order_json(&status.order),
    })
}
