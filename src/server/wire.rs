//! Translation between the engine's types and the wire's: indices become
//! names on the way out, names become requests on the way in.

use omniroute_protocol as wire;
use omniroute_protocol::{invalid_codes, order_states, reject_codes, ErrorCode, Judged};

use crate::core::events::{EventKind, NodeEvent};
use crate::core::model::{
    Decision, FulfilmentMethod, InvalidOrder, LineRequest, OrderRequest, OrderState, RejectReason,
    ShipTo, ShortLine,
};
use crate::core::order::{AllocationState, OrderRecord};
use crate::core::router::{OpError, OrderRef};
use crate::core::status::{OrderChange, OrderStatus};
use crate::engine::{Engine, EngineError, NodeStock};

pub fn order_request(order: wire::Order) -> OrderRequest {
    OrderRequest {
        channel: order.channel,
        client_order_id: order.client_order_id,
        lines: order
            .lines
            .into_iter()
            .map(|(sku, qty)| LineRequest { sku, qty })
            .collect(),
        ship_to: ShipTo {
            lat: order.lat,
            lon: order.lon,
            market: order.market,
        },
        method: match order.method {
            wire::Method::Ship => FulfilmentMethod::Ship,
            wire::Method::Pickup { store } => FulfilmentMethod::Pickup { store },
            wire::Method::SameDay => FulfilmentMethod::SameDay,
        },
        hold_ttl_ms: order.hold_ttl_ms.map(u64::from),
    }
}

pub fn order_ref(key: wire::OrderKey) -> OrderRef {
    OrderRef::Key {
        channel: key.channel,
        client_order_id: key.client_order_id,
    }
}

fn sku_name(engine: &Engine, sku: u32) -> String {
    engine.index().sku_name(sku).unwrap_or("?").to_string()
}

fn node_name(engine: &Engine, node: u16) -> String {
    engine.network().node(node).id.clone()
}

fn shorts(engine: &Engine, short: &[ShortLine]) -> Vec<wire::Short> {
    short
        .iter()
        .map(|s| wire::Short {
            line: s.line,
            sku: sku_name(engine, s.sku),
            requested: s.requested,
            available: s.available,
        })
        .collect()
}

fn invalid_code(invalid: &InvalidOrder) -> u16 {
    match invalid {
        InvalidOrder::NoLines => invalid_codes::NO_LINES,
        InvalidOrder::TooManyLines(_) => invalid_codes::TOO_MANY_LINES,
        InvalidOrder::BadQuantity { .. } => invalid_codes::BAD_QUANTITY,
        InvalidOrder::UnknownSku { .. } => invalid_codes::UNKNOWN_SKU,
        InvalidOrder::DuplicateSku { .. } => invalid_codes::DUPLICATE_SKU,
        InvalidOrder::UnknownChannel => invalid_codes::UNKNOWN_CHANNEL,
        InvalidOrder::BadShipTo => invalid_codes::BAD_SHIP_TO,
        InvalidOrder::UnknownMarket => invalid_codes::UNKNOWN_MARKET,
        InvalidOrder::UnknownPickupStore => invalid_codes::UNKNOWN_PICKUP_STORE,
        InvalidOrder::BadOrderId => invalid_codes::BAD_ORDER_ID,
        InvalidOrder::BadHoldTtl => invalid_codes::BAD_HOLD_TTL,
        InvalidOrder::NotAPickupStore => invalid_codes::NOT_A_PICKUP_STORE,
    }
}

pub fn decision(engine: &Engine, decision: &Decision) -> wire::Decision {
    match decision {
        Decision::Routed {
            order_id,
            allocations,
            short,
            expires_at_ms,
        } => wire::Decision::Routed {
            order_id: *order_id,
            expires_at_ms: *expires_at_ms,
            allocations: allocations
                .iter()
                .map(|a| wire::Allocation {
                    line: a.line,
                    sku: sku_name(engine, a.sku),
                    node: node_name(engine, a.node),
                    qty: a.qty,
                })
                .collect(),
            short: shorts(engine, short),
        },
        Decision::Rejected(reason) => {
            let (code, detail, short) = match reason {
                RejectReason::Short { lines } => (reject_codes::SHORT, 0, shorts(engine, lines)),
                RejectReason::NoEligibleNode { filter } => {
                    (reject_codes::NO_ELIGIBLE_NODE, *filter as u16, Vec::new())
                }
                RejectReason::TooManyShipments { .. } => {
                    (reject_codes::TOO_MANY_SHIPMENTS, 0, Vec::new())
                }
                RejectReason::Invalid(invalid) => {
                    (reject_codes::INVALID, invalid_code(invalid), Vec::new())
                }
                RejectReason::DuplicateMismatch => {
                    (reject_codes::DUPLICATE_MISMATCH, 0, Vec::new())
                }
                RejectReason::Contention { .. } => (reject_codes::CONTENTION, 0, Vec::new()),
            };
            wire::Decision::Rejected {
                code,
                detail,
                message: reason.to_string(),
                short,
            }
        }
    }
}

fn state_code(state: OrderState) -> u8 {
    match state {
        OrderState::Held => order_states::HELD,
        OrderState::Confirmed => order_states::CONFIRMED,
        OrderState::Shipped => order_states::SHIPPED,
        OrderState::Cancelled => order_states::CANCELLED,
        OrderState::Expired => order_states::EXPIRED,
        OrderState::Rejected => order_states::REJECTED,
    }
}

pub fn order_view(engine: &Engine, record: &OrderRecord) -> wire::OrderView {
    view(
        engine,
        Viewed {
            id: record.id,
            channel: record.channel,
            client_order_id: &record.client_order_id,
            state: record.state,
            expires_at_ms: record.expires_at_ms,
            allocations: &record.allocations,
            short: record.short(),
        },
    )
}

/// The state a wire code names, for a listing's filter; 0 is any state.
pub fn state_of_code(code: u8) -> Option<Option<OrderState>> {
    match code {
        0 => Some(None),
        order_states::HELD => Some(Some(OrderState::Held)),
        order_states::CONFIRMED => Some(Some(OrderState::Confirmed)),
        order_states::SHIPPED => Some(Some(OrderState::Shipped)),
        order_states::CANCELLED => Some(Some(OrderState::Cancelled)),
        order_states::EXPIRED => Some(Some(OrderState::Expired)),
        _ => None,
    }
}

/// The parts of an order a view shows, from a record or a status.
struct Viewed<'a> {
    id: u64,
    channel: crate::core::model::ChannelIdx,
    client_order_id: &'a str,
    state: OrderState,
    expires_at_ms: u64,
    allocations: &'a [AllocationState],
    short: &'a [crate::core::model::ShortLine],
}

fn view(engine: &Engine, order: Viewed<'_>) -> wire::OrderView {
    wire::OrderView {
        order_id: order.id,
        channel: engine.network().channels[order.channel as usize]
            .name
            .clone(),
        client_order_id: order.client_order_id.to_string(),
        state: state_code(order.state),
        expires_at_ms: order.expires_at_ms,
        allocations: order
            .allocations
            .iter()
            .map(|a| wire::AllocationView {
                line: a.line,
                sku: sku_name(engine, a.sku),
                node: node_name(engine, a.node),
                open: a.open,
                shipped: a.shipped,
                returned: a.returned,
            })
            .collect(),
        short: shorts(engine, order.short),
    }
}

/// A channel's status frame.
pub fn order_status(engine: &Engine, cursor: u64, status: &OrderStatus) -> wire::Response {
    let order = view(
        engine,
        Viewed {
            id: status.order,
            channel: status.channel,
            client_order_id: &status.client_order_id,
            state: status.state,
            expires_at_ms: status.expires_at_ms,
            allocations: &status.allocations,
            short: &status.short,
        },
    );
    wire::Response::OrderStatus(wire::OrderStatus {
        cursor,
        change: change_code(status.change),
        released_from: status
            .released_from
            .iter()
            .map(|&node| node_name(engine, node))
            .collect(),
        order,
    })
}

fn change_code(change: OrderChange) -> u8 {
    use wire::order_changes::*;
    match change {
        OrderChange::Routed => ROUTED,
        OrderChange::Confirmed => CONFIRMED,
        OrderChange::Cancelled => CANCELLED,
        OrderChange::Expired => EXPIRED,
        OrderChange::Shipped => SHIPPED,
        OrderChange::PartlyShipped => PARTLY_SHIPPED,
        OrderChange::Returned => RETURNED,
        OrderChange::ReroutedNodeRejected => REROUTED_NODE_REJECTED,
        OrderChange::ReroutedStockCount => REROUTED_STOCK_COUNT,
        OrderChange::Short => SHORT,
        OrderChange::ReroutedNodeOffline => REROUTED_NODE_OFFLINE,
    }
}

/// Availability with each node's online flag and priority.
pub fn node_states(engine: &Engine, stock: &[NodeStock]) -> Vec<wire::NodeState> {
    let network = engine.network();
    stock
        .iter()
        .map(|s| wire::NodeState {
            node: node_name(engine, s.node),
            atp: s.atp,
            distance_km: s.distance_km,
            online: s.online,
            priority: network.node(s.node).priority,
        })
        .collect()
}

pub fn node_stock(engine: &Engine, stock: &[NodeStock]) -> Vec<wire::NodeStock> {
    stock
        .iter()
        .map(|s| wire::NodeStock {
            node: node_name(engine, s.node),
            atp: s.atp,
            distance_km: s.distance_km,
        })
        .collect()
}

pub fn event(engine: &Engine, cursor: u64, event: &NodeEvent) -> wire::Event {
    wire::Event {
        cursor,
        kind: match event.kind {
            EventKind::Allocated => wire::event_kinds::ALLOCATED,
            EventKind::Released | EventKind::Rejected => wire::event_kinds::RELEASED,
        },
        order_id: event.order,
        channel: engine.network().channels[event.channel as usize]
            .name
            .clone(),
        client_order_id: event.client_order_id.to_string(),
        lines: event
            .lines
            .iter()
            .map(|(line, sku, qty)| (*line, sku_name(engine, *sku), *qty))
            .collect(),
    }
}

pub fn error(error: &EngineError) -> wire::Response {
    let code = match error {
        EngineError::Overloaded => ErrorCode::Overloaded,
        EngineError::Unavailable => ErrorCode::Unavailable,
        EngineError::BatchTooLarge(_) | EngineError::CatalogFull(_) => ErrorCode::TooLarge,
        EngineError::UnknownNode(_) => ErrorCode::UnknownNode,
        EngineError::UnknownSku(_) => ErrorCode::UnknownSku,
        EngineError::UnknownChannel(_) => ErrorCode::UnknownChannel,
        EngineError::StockQuantity { .. } => ErrorCode::InvalidQuantity,
        EngineError::Cursor(_) => ErrorCode::CursorTooOld,
        EngineError::Order(op) => match op {
            OpError::UnknownOrder => ErrorCode::UnknownOrder,
            OpError::Archived => ErrorCode::Archived,
            OpError::NotOpen(_)
            | OpError::NotConfirmed
            | OpError::NoSuchAllocation
            | OpError::Stock(_) => ErrorCode::InvalidState,
            OpError::ExceedsOpen { .. } | OpError::ExceedsShipped { .. } | OpError::BadQuantity => {
                ErrorCode::InvalidQuantity
            }
            OpError::UnknownNode => ErrorCode::UnknownNode,
            OpError::UnknownSku => ErrorCode::UnknownSku,
        },
        EngineError::Spawn(_)
        | EngineError::Routers
        | EngineError::Channels { .. }
        | EngineError::NodesChanged
        | EngineError::NodeSlots { .. } => ErrorCode::Internal,
    };
    wire::Response::error(code, error.to_string())
}

/// The answer of a replica that does not serve: `NotLeader`, naming the
/// leader's QUIC address if one is known.
pub fn not_leader(not: &crate::replica::serving::NotServing) -> wire::Response {
    let leader = not.leader.map(|a| a.quic.to_string()).unwrap_or_default();
    wire::Response::error(ErrorCode::NotLeader, leader)
}

/// Answers of an engine that stopped serving while deciding them: those it
/// could not vouch for (`Unavailable`: their entries were not committed in
/// its term) become `NotLeader`, so the client resubmits to the leader.
pub fn deposed(
    serving: &crate::replica::serving::Serving,
    responses: &mut [(u64, wire::Response)],
) {
    let Err(not) = serving.engine() else {
        return;
    };
    let unavailable = ErrorCode::Unavailable as u16;
    let leader = not.leader.map(|a| a.quic.to_string()).unwrap_or_default();
    for (_, response) in responses.iter_mut() {
        match response {
            wire::Response::Error { code, .. } if *code == unavailable => {
                *response = not_leader(&not);
            }
            wire::Response::Decisions(judged) => {
                for one in judged.iter_mut() {
                    if matches!(one, Judged::Error { code, .. } if *code == unavailable) {
                        *one = Judged::error(ErrorCode::NotLeader, leader.clone());
                    }
                }
            }
            _ => {}
        }
    }
}
