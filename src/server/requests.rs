//! One request answered: which role may make it, and the engine call that
//! answers it. Shared by the QUIC session and the HTTP gateway, so both
//! give the same answers, codes and messages.

use omniroute_protocol::{ErrorCode, ListedOrder, Request, Response, MAX_FRAME_BYTES};

use super::submits::Submits;
use super::{wire, Role};
use crate::core::geo::GeoPoint;
use crate::core::router::{OpError, OrderRef};
use crate::engine::{Engine, EngineError, OrderQuery, StockUpdate};
use crate::limits::{MAX_ID_BYTES, MAX_ORDERS_PER_BATCH, MAX_ORDERS_PER_PAGE};

/// Answers one request made as `role`: `Forbidden` if the role may not
/// make it, else the engine's answer. A submit is a batch of one (QUIC
/// batches what a stream read holds). Not for `Hello`, `Subscribe` and
/// `FollowOrders`, whose answers are a connection's state or a stream.
pub async fn answer(engine: &Engine, role: &Role, request: Request) -> Response {
    if !allowed(role, &request) {
        return forbidden(role);
    }
    match request {
        Request::Submit(order) => submit(engine, |s| s.single(0, order)).await,
        Request::SubmitBatch(entries) => submit(engine, |s| s.batch(0, entries, role)).await,
        other => execute(engine, other).await,
    }
}

/// The answer to one submit frame, single or batch.
async fn submit(engine: &Engine, take: impl FnOnce(&mut Submits)) -> Response {
    let mut submits = Submits::default();
    take(&mut submits);
    let mut answers = submits.answer(engine, MAX_ORDERS_PER_BATCH).await;
    answers.pop().map_or_else(
        || Response::error(ErrorCode::Internal, "no answer for the order"),
        |(_, response)| response,
    )
}

/// The answer to a request the role may not make.
pub fn forbidden(role: &Role) -> Response {
    Response::error(
        ErrorCode::Forbidden,
        format!("role {} may not make this request", role.name()),
    )
}

/// Whether `role` may submit orders to `channel`.
pub fn may_submit(role: &Role, channel: &str) -> bool {
    matches!(role, Role::Admin) || matches!(role, Role::Channel(c) if c == channel)
}

/// Which requests each role may make. A batch's orders are each checked
/// against the role's channel on their own (`submits::Submits::batch`).
pub fn allowed(role: &Role, request: &Request) -> bool {
    let own_channel = |channel: &str| may_submit(role, channel);
    let own_node =
        |node: &str| matches!(role, Role::Admin) || matches!(role, Role::Node(n) if n == node);
    match request {
        Request::Hello { .. } => true,
        Request::Submit(order) => own_channel(&order.channel),
        Request::SubmitBatch(_) => matches!(role, Role::Admin | Role::Channel(_)),
        Request::Confirm(key) | Request::Cancel(key) | Request::GetOrder(key) => {
            own_channel(&key.channel)
        }
        Request::GetOrderById { channel, .. } => own_channel(channel),
        Request::Availability { .. } => matches!(role, Role::Admin | Role::Channel(_)),
        Request::StockSet(entries) | Request::StockSetKnown(entries) => {
            entries.iter().all(|e| own_node(&e.node))
        }
        Request::StockAdjust(entries) | Request::StockAdjustKnown(entries) => {
            entries.iter().all(|e| own_node(&e.node))
        }
        Request::NodeReject { node, .. }
        | Request::NodeShip { node, .. }
        | Request::Return { node, .. } => own_node(node),
        Request::Subscribe { node, .. } | Request::SetNodeOnline { node, .. } => own_node(node),
        Request::FollowOrders { channel, .. } => own_channel(channel),
        Request::ListOrders(query) => own_channel(&query.channel),
    }
}

pub async fn execute(engine: &Engine, request: Request) -> Response {
    let result = match request {
        Request::Confirm(key) => engine
            .confirm(wire::order_ref(key))
            .await
            .map(|r| Response::Order(wire::order_view(engine, &r))),
        Request::Cancel(key) => engine
            .cancel(wire::order_ref(key))
            .await
            .map(|r| Response::Order(wire::order_view(engine, &r))),
        Request::GetOrder(key) => engine
            .get(wire::order_ref(key))
            .await
            .map(|r| Response::Order(wire::order_view(engine, &r))),
        Request::GetOrderById { channel, order_id } => engine
            .get(OrderRef::Id(order_id))
            .await
            .map(|r| wire::order_view(engine, &r))
            .and_then(|view| {
                // Another channel's order is not this caller's to see.
                if view.channel == channel {
                    Ok(Response::Order(view))
                } else {
                    Err(EngineError::Order(OpError::UnknownOrder))
                }
            }),
        Request::Availability {
            sku,
            near,
            with_state,
        } => availability(engine, &sku, near, with_state),
        Request::StockSet(entries) => stock_result(engine, &sets(entries), NewSkus::Add).await,
        Request::StockAdjust(entries) => {
            stock_result(engine, &adjusts(entries), NewSkus::Add).await
        }
        Request::StockSetKnown(entries) => {
            stock_result(engine, &sets(entries), NewSkus::Refuse).await
        }
        Request::StockAdjustKnown(entries) => {
            stock_result(engine, &adjusts(entries), NewSkus::Refuse).await
        }
        Request::NodeReject {
            node,
            order,
            counts,
        } => {
            let counts: Vec<(&str, u32)> =
                counts.iter().map(|(sku, n)| (sku.as_str(), *n)).collect();
            engine
                .node_reject(wire::order_ref(order), &node, &counts)
                .await
                .map(|r| Response::Order(wire::order_view(engine, &r)))
        }
        Request::NodeShip {
            node,
            order,
            sku,
            qty,
        } => engine
            .ship(wire::order_ref(order), &node, &sku, qty)
            .await
            .map(|r| Response::Order(wire::order_view(engine, &r))),
        Request::Return {
            node,
            order,
            sku,
            qty,
        } => engine
            .return_units(wire::order_ref(order), &node, &sku, qty)
            .await
            .map(|r| Response::Order(wire::order_view(engine, &r))),
        Request::SetNodeOnline { node, online } => engine
            .set_node_online(&node, online)
            .await
            .map(|n| Response::NodeOnline { rerouted: n as u32 }),
        Request::ListOrders(query) => list_orders(engine, query).await,
        Request::Hello { .. }
        | Request::Submit(_)
        | Request::SubmitBatch(_)
        | Request::Subscribe { .. }
        | Request::FollowOrders { .. } => {
            unreachable!("handled by dispatch")
        }
    };
    result.unwrap_or_else(|error| wire::error(&error))
}

/// Every node's units of `sku`, or with `near` the nearest; with each
/// node's state when `with_state`.
fn availability(
    engine: &Engine,
    sku: &str,
    near: Option<omniroute_protocol::Near>,
    with_state: bool,
) -> Result<Response, EngineError> {
    let stock = match near {
        None => engine.availability(sku)?,
        Some(near) => {
            let Some(point) = GeoPoint::new(near.lat, near.lon) else {
                return Ok(Response::error(
                    ErrorCode::Malformed,
                    "point is not a valid latitude/longitude",
                ));
            };
            engine.nearest(sku, point, near.min_qty, near.count as usize)?
        }
    };
    Ok(if with_state {
        Response::NodeAvailability(wire::node_states(engine, &stock))
    } else {
        Response::Availability(wire::node_stock(engine, &stock))
    })
}

/// What a stock feed does with a SKU the daemon does not know.
enum NewSkus {
    /// Adds it to the catalog (StockSet, StockAdjust: a WMS feed's meaning).
    Add,
    /// Refuses the feed, naming it (StockSetKnown, StockAdjustKnown).
    Refuse,
}

fn sets(entries: Vec<omniroute_protocol::StockSet>) -> Vec<StockUpdate> {
    entries
        .into_iter()
        .map(|e| StockUpdate::Set {
            sku: e.sku,
            node: e.node,
            on_hand: e.on_hand,
            safety_stock: e.safety_stock,
        })
        .collect()
}

fn adjusts(entries: Vec<omniroute_protocol::StockAdjust>) -> Vec<StockUpdate> {
    entries
        .into_iter()
        .map(|e| StockUpdate::Adjust {
            sku: e.sku,
            node: e.node,
            delta: e.delta,
        })
        .collect()
}

async fn stock_result(
    engine: &Engine,
    updates: &[StockUpdate],
    new_skus: NewSkus,
) -> Result<Response, crate::engine::EngineError> {
    let report = match new_skus {
        NewSkus::Add => engine.update_stock(updates).await?,
        NewSkus::Refuse => engine.update_known_stock(updates).await?,
    };
    Ok(Response::StockResult {
        applied: report.applied as u32,
        bumped_units: report.bumped.iter().map(|b| b.qty).sum(),
        errors: report.errors.len() as u32,
    })
}

/// One page of a channel's orders, cut short of `MAX_FRAME_BYTES` if its
/// orders are large (the next page starts after the last one sent).
async fn list_orders(
    engine: &Engine,
    query: omniroute_protocol::OrderQuery,
) -> Result<Response, crate::engine::EngineError> {
    let Some(state) = wire::state_of_code(query.state) else {
        return Ok(Response::error(
            ErrorCode::Malformed,
            format!("state {} is not 0 (any) or 1..=5", query.state),
        ));
    };
    if !(1..=MAX_ORDERS_PER_PAGE).contains(&(query.limit as usize)) {
        return Ok(Response::error(
            ErrorCode::TooLarge,
            format!(
                "limit {} is outside 1 to {MAX_ORDERS_PER_PAGE} orders per page",
                query.limit
            ),
        ));
    }
    let (records, mut next) = engine
        .list_orders(OrderQuery {
            channel: &query.channel,
            state,
            node: (!query.node.is_empty()).then_some(query.node.as_str()),
            created_from_ms: query.created_from_ms,
            created_to_ms: query.created_to_ms,
            after: query.after,
            limit: query.limit as usize,
        })
        .await?;
    let mut orders: Vec<ListedOrder> = Vec::with_capacity(records.len());
    let mut bytes = 0;
    for record in &records {
        let view = wire::order_view(engine, record);
        // A view's size, roughly: what its strings and counts take.
        bytes += 64 + view.allocations.len() * (24 + MAX_ID_BYTES) + view.short.len() * 80;
        if bytes > MAX_FRAME_BYTES / 2 && !orders.is_empty() {
            next = Some(orders.last().map_or(0, |o| o.order.order_id));
            break;
        }
        orders.push(ListedOrder {
            order: view,
            created_at_ms: record.created_at_ms().unwrap_or(0),
        });
    }
    Ok(Response::OrderPage {
        orders,
        next_after: next.unwrap_or(0),
    })
}
