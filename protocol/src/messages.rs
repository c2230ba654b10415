//! Requests and responses, with their kinds, layouts and codes.

use crate::batch::{decode_batch, decode_judged, encode_batch, encode_judged, BatchOrder, Judged};
use crate::codec::{DecodeError, Reader, Writer};
use crate::{
    MAX_COUNTS_PER_REJECT, MAX_ID_BYTES, MAX_LINES_PER_ORDER, MAX_MESSAGE_BYTES,
    MAX_NODES_PER_ANSWER, MAX_STOCK_ENTRIES_PER_FRAME, MAX_TOKEN_BYTES,
};

/// Request kinds (client to server).
pub mod kinds {
    pub const HELLO: u8 = 0x01;
    pub const SUBMIT: u8 = 0x02;
    pub const CONFIRM: u8 = 0x03;
    pub const CANCEL: u8 = 0x04;
    pub const GET_ORDER: u8 = 0x05;
    pub const AVAILABILITY: u8 = 0x06;
    pub const STOCK_SET: u8 = 0x07;
    pub const STOCK_ADJUST: u8 = 0x08;
    pub const NODE_REJECT: u8 = 0x09;
    pub const NODE_SHIP: u8 = 0x0A;
    pub const RETURN: u8 = 0x0B;
    pub const SUBSCRIBE: u8 = 0x0C;
    pub const SET_NODE_ONLINE: u8 = 0x0D;
    pub const GET_ORDER_BY_ID: u8 = 0x0E;
    pub const FOLLOW_ORDERS: u8 = 0x0F;
    pub const LIST_ORDERS: u8 = 0x10;
    pub const SUBMIT_BATCH: u8 = 0x11;
    pub const STOCK_SET_KNOWN: u8 = 0x12;
    pub const STOCK_ADJUST_KNOWN: u8 = 0x13;
    // Response kinds (server to client).
    pub const HELLO_OK: u8 = 0x81;
    pub const DECISION: u8 = 0x82;
    pub const ORDER: u8 = 0x83;
    pub const AVAILABILITY_ANSWER: u8 = 0x84;
    pub const STOCK_RESULT: u8 = 0x85;
    pub const NODE_ONLINE_RESULT: u8 = 0x86;
    pub const SUBSCRIBED: u8 = 0x87;
    pub const EVENT: u8 = 0x88;
    pub const ORDER_STATUS: u8 = 0x89;
    pub const ORDER_PAGE: u8 = 0x8A;
    pub const NODE_AVAILABILITY: u8 = 0x8B;
    pub const DECISIONS: u8 = 0x8C;
    pub const ERROR: u8 = 0xFF;
}

/// Codes of `Error` responses. Nothing was changed by a request that got one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum ErrorCode {
    /// The payload does not decode (the message says which field).
    Malformed = 1,
    /// The kind byte names no request.
    UnknownKind = 2,
    /// No successful `Hello` on this connection yet.
    NotAuthenticated = 3,
    /// The connection's role may not make this request.
    Forbidden = 4,
    /// `Hello` carried a token the server does not know.
    BadToken = 5,
    /// `Hello` asked for another protocol version.
    UnsupportedVersion = 6,
    /// The server is at its in-flight limit; retry later.
    Overloaded = 7,
    UnknownOrder = 8,
    /// The order's state does not allow the request (message says why).
    InvalidState = 9,
    UnknownSku = 10,
    UnknownNode = 11,
    /// A quantity outside 1..=1 000 000 (or beyond what is open or shipped).
    InvalidQuantity = 12,
    /// A subscription cursor older than the node's kept events.
    CursorTooOld = 13,
    /// A batch beyond its limit.
    TooLarge = 14,
    Internal = 15,
    /// The bytes from here on cannot be framed (the message says why and
    /// names the close code); every whole frame before them was answered,
    /// and the server ends the stream after this answer.
    Unframeable = 16,
    /// The order closed and was retired after the daemon's retention
    /// window (`[orders] retention_ms`): it is no longer kept, and its
    /// client order id may be used again.
    Archived = 17,
    /// No channel has that name.
    UnknownChannel = 18,
    /// The daemon cannot make changes durable (its journal or snapshot
    /// storage failed: a full disk, an I/O error) and is stopping; nothing
    /// it could not vouch for is shown. A change whose write reached the
    /// disk before its fsync failed may be there after the restart, as
    /// after a crash: resubmit with the same client order id to learn.
    Unavailable = 19,
    /// A replica that does not lead the cluster (or stopped leading before
    /// the request was decided): nothing was decided here. The message is
    /// exactly the leader's client address (`host:port`), or empty while
    /// no leader is known; resubmit there with the same client order id.
    NotLeader = 20,
}

impl ErrorCode {
    pub fn from_u16(code: u16) -> Option<ErrorCode> {
        use ErrorCode::*;
        [
            Malformed,
            UnknownKind,
            NotAuthenticated,
            Forbidden,
            BadToken,
            UnsupportedVersion,
            Overloaded,
            UnknownOrder,
            InvalidState,
            UnknownSku,
            UnknownNode,
            InvalidQuantity,
            CursorTooOld,
            TooLarge,
            Internal,
            Unframeable,
            Archived,
            UnknownChannel,
            Unavailable,
            NotLeader,
        ]
        .into_iter()
        .find(|c| *c as u16 == code)
    }
}

/// Codes of a rejected decision.
pub mod reject_codes {
    pub const SHORT: u16 = 1;
    pub const NO_ELIGIBLE_NODE: u16 = 2;
    pub const TOO_MANY_SHIPMENTS: u16 = 3;
    /// The order is invalid; `detail` says how (see `invalid_codes`).
    pub const INVALID: u16 = 4;
    pub const DUPLICATE_MISMATCH: u16 = 5;
    pub const CONTENTION: u16 = 6;

    /// The code's name, as the CLI and the HTTP gateway write it.
    pub fn name(code: u16) -> &'static str {
        match code {
            SHORT => "short",
            NO_ELIGIBLE_NODE => "no_eligible_node",
            TOO_MANY_SHIPMENTS => "too_many_shipments",
            INVALID => "invalid",
            DUPLICATE_MISMATCH => "duplicate_mismatch",
            CONTENTION => "contention",
            _ => "unknown",
        }
    }
}

/// `detail` of an `INVALID` rejection.
pub mod invalid_codes {
    pub const NO_LINES: u16 = 1;
    pub const TOO_MANY_LINES: u16 = 2;
    pub const BAD_QUANTITY: u16 = 3;
    pub const UNKNOWN_SKU: u16 = 4;
    pub const DUPLICATE_SKU: u16 = 5;
    pub const UNKNOWN_CHANNEL: u16 = 6;
    pub const BAD_SHIP_TO: u16 = 7;
    pub const UNKNOWN_MARKET: u16 = 8;
    pub const UNKNOWN_PICKUP_STORE: u16 = 9;
    pub const BAD_ORDER_ID: u16 = 10;
    pub const BAD_HOLD_TTL: u16 = 11;
    /// The pickup store is a node without the pickup capability.
    pub const NOT_A_PICKUP_STORE: u16 = 12;
}

/// Names an order: the channel and the client's id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderKey {
    pub channel: String,
    pub client_order_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Method {
    Ship,
    Pickup { store: String },
    SameDay,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Order {
    pub channel: String,
    pub client_order_id: String,
    pub lat: f64,
    pub lon: f64,
    /// Empty on the wire means none.
    pub market: Option<String>,
    pub method: Method,
    /// 0 on the wire means the channel's default.
    pub hold_ttl_ms: Option<u32>,
    pub lines: Vec<(String, u32)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StockSet {
    pub sku: String,
    pub node: String,
    pub on_hand: u32,
    /// `u32::MAX` on the wire means unchanged.
    pub safety_stock: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StockAdjust {
    pub sku: String,
    pub node: String,
    pub delta: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Near {
    pub lat: f64,
    pub lon: f64,
    pub count: u16,
    pub min_qty: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    Hello {
        version: u16,
        token: String,
    },
    Submit(Order),
    /// Many orders in one frame, each judged on its own: answered by one
    /// `Decisions` frame with an entry per order, in order.
    SubmitBatch(Vec<BatchOrder>),
    Confirm(OrderKey),
    Cancel(OrderKey),
    GetOrder(OrderKey),
    /// An order by the id its routed decision carried: unlike a key, an id
    /// tells an archived order from one that never was, for as long as the
    /// daemon runs on its data directory.
    GetOrderById {
        channel: String,
        order_id: u64,
    },
    Availability {
        sku: String,
        near: Option<Near>,
        /// Answer `NodeAvailability` (each node's online flag and priority
        /// too) instead of `Availability`: modes 2 and 3 on the wire.
        with_state: bool,
    },
    StockSet(Vec<StockSet>),
    StockAdjust(Vec<StockAdjust>),
    /// As `StockSet`, but for SKUs the daemon already knows: an unknown
    /// one refuses the whole feed (`UnknownSku`) instead of adding it.
    StockSetKnown(Vec<StockSet>),
    /// As `StockAdjust`, for SKUs the daemon already knows.
    StockAdjustKnown(Vec<StockAdjust>),
    NodeReject {
        node: String,
        order: OrderKey,
        counts: Vec<(String, u32)>,
    },
    NodeShip {
        node: String,
        order: OrderKey,
        sku: String,
        qty: u32,
    },
    Return {
        node: String,
        order: OrderKey,
        sku: String,
        qty: u32,
    },
    Subscribe {
        node: String,
        from_cursor: u64,
    },
    SetNodeOnline {
        node: String,
        online: bool,
    },
    /// Every change of the channel's orders from a cursor (0: the oldest
    /// kept), then live: answered `Subscribed`, then `OrderStatus` frames.
    FollowOrders {
        channel: String,
        from_cursor: u64,
    },
    /// One page of the channel's orders, in order id order.
    ListOrders(OrderQuery),
}

/// Which of a channel's orders a listing wants, and where its page starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderQuery {
    pub channel: String,
    /// An `order_states` value; 0: any state.
    pub state: u8,
    /// Orders with units at this node; empty: any node.
    pub node: String,
    /// Orders routed at or after this (Unix ms; 0: no bound).
    pub created_from_ms: u64,
    /// Orders routed before this (Unix ms; 0: no bound).
    pub created_to_ms: u64,
    /// Orders with an id above this one: 0 for the first page, then the
    /// page's `next_after`.
    pub after: u64,
    /// Orders on this page, 1..=MAX_ORDERS_PER_PAGE.
    pub limit: u16,
}

/// An order on a listing's page, with when it was routed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedOrder {
    pub order: OrderView,
    /// Unix ms, to the second; 0: not recorded (an order routed before
    /// the daemon kept the time).
    pub created_at_ms: u64,
}

/// Most orders one `ListOrders` page holds.
pub const MAX_ORDERS_PER_PAGE: usize = 1000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    pub line: u16,
    pub sku: String,
    pub node: String,
    pub qty: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Short {
    pub line: u16,
    pub sku: String,
    pub requested: u32,
    pub available: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Routed {
        order_id: u64,
        expires_at_ms: u64,
        allocations: Vec<Allocation>,
        short: Vec<Short>,
    },
    Rejected {
        code: u16,
        detail: u16,
        message: String,
        short: Vec<Short>,
    },
}

/// States of an order on the wire.
pub mod order_states {
    pub const HELD: u8 = 1;
    pub const CONFIRMED: u8 = 2;
    pub const SHIPPED: u8 = 3;
    pub const CANCELLED: u8 = 4;
    pub const EXPIRED: u8 = 5;
    pub const REJECTED: u8 = 6;

    /// Each state's name, as the CLI and the HTTP gateway write it.
    pub const NAMES: [(&str, u8); 6] = [
        ("held", HELD),
        ("confirmed", CONFIRMED),
        ("shipped", SHIPPED),
        ("cancelled", CANCELLED),
        ("expired", EXPIRED),
        ("rejected", REJECTED),
    ];

    pub fn name(state: u8) -> &'static str {
        NAMES
            .iter()
            .find(|(_, code)| *code == state)
            .map_or("unknown", |(name, _)| name)
    }

    /// The state a listing may filter by (every one but rejected, which
    /// is never kept).
    pub fn listable(name: &str) -> Option<u8> {
        NAMES
            .iter()
            .find(|(n, code)| *n == name && *code != REJECTED)
            .map(|(_, code)| *code)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllocationView {
    pub line: u16,
    pub sku: String,
    pub node: String,
    pub open: u32,
    pub shipped: u32,
    pub returned: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderView {
    pub order_id: u64,
    pub channel: String,
    pub client_order_id: String,
    pub state: u8,
    pub expires_at_ms: u64,
    pub allocations: Vec<AllocationView>,
    pub short: Vec<Short>,
}

/// A node's units of a SKU with what routing sees of the node.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeState {
    pub node: String,
    pub atp: u32,
    pub distance_km: Option<f64>,
    /// An offline node takes no orders, whatever its stock.
    pub online: bool,
    /// Its rank for the `node_priority` rule (1 before 2).
    pub priority: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NodeStock {
    pub node: String,
    pub atp: u32,
    /// NaN on the wire means not asked (no point given).
    pub distance_km: Option<f64>,
}

/// What happened to a node's allocation.
pub mod event_kinds {
    pub const ALLOCATED: u8 = 1;
    pub const RELEASED: u8 = 2;
}

/// What changed for an order, in an `OrderStatus` frame.
pub mod order_changes {
    pub const ROUTED: u8 = 1;
    pub const CONFIRMED: u8 = 2;
    pub const CANCELLED: u8 = 3;
    pub const EXPIRED: u8 = 4;
    pub const SHIPPED: u8 = 5;
    pub const PARTLY_SHIPPED: u8 = 6;
    pub const RETURNED: u8 = 7;
    /// A node rejected the order; its units there were placed elsewhere.
    pub const REROUTED_NODE_REJECTED: u8 = 8;
    /// A stock count took units from the order; they were placed elsewhere.
    pub const REROUTED_STOCK_COUNT: u8 = 9;
    /// Units were taken from the order and no other node had them.
    pub const SHORT: u8 = 10;
    /// A node serving the order went offline; its units there were placed
    /// elsewhere.
    pub const REROUTED_NODE_OFFLINE: u8 = 11;

    /// The change's name, as the CLI and the HTTP gateway print it.
    pub fn name(change: u8) -> &'static str {
        match change {
            ROUTED => "routed",
            CONFIRMED => "confirmed",
            CANCELLED => "cancelled",
            EXPIRED => "expired",
            SHIPPED => "shipped",
            PARTLY_SHIPPED => "partly_shipped",
            RETURNED => "returned",
            REROUTED_NODE_REJECTED => "rerouted_node_rejected",
            REROUTED_STOCK_COUNT => "rerouted_stock_count",
            SHORT => "short",
            REROUTED_NODE_OFFLINE => "rerouted_node_offline",
            _ => "unknown",
        }
    }
}

/// One change of one of a channel's orders, with the order as it now is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderStatus {
    /// Per channel, from 1, without gaps: resume with the last one seen + 1.
    pub cursor: u64,
    /// An `order_changes` value.
    pub change: u8,
    /// Nodes the change took units from (re-routes, short).
    pub released_from: Vec<String>,
    pub order: OrderView,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Per node, from 1, without gaps: resume with the last one seen + 1.
    pub cursor: u64,
    pub kind: u8,
    pub order_id: u64,
    pub channel: String,
    pub client_order_id: String,
    /// (line, sku, units)
    pub lines: Vec<(u16, String, u32)>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Response {
    HelloOk {
        role: String,
    },
    Decision(Decision),
    /// The answer to a `SubmitBatch`: one entry per order, in order.
    Decisions(Vec<Judged>),
    Order(OrderView),
    Availability(Vec<NodeStock>),
    NodeAvailability(Vec<NodeState>),
    StockResult {
        applied: u32,
        bumped_units: u32,
        errors: u32,
    },
    NodeOnline {
        rerouted: u32,
    },
    Subscribed {
        next_cursor: u64,
    },
    Event(Event),
    OrderStatus(OrderStatus),
    OrderPage {
        orders: Vec<ListedOrder>,
        /// Pass as `after` for the next page; 0: this was the last.
        next_after: u64,
    },
    Error {
        code: u16,
        message: String,
    },
}

fn id(reader: &mut Reader, what: &'static str) -> Result<String, DecodeError> {
    reader.string(MAX_ID_BYTES, what)
}

fn order_key(reader: &mut Reader) -> Result<OrderKey, DecodeError> {
    Ok(OrderKey {
        channel: id(reader, "channel")?,
        client_order_id: id(reader, "client order id")?,
    })
}

fn write_key(w: &mut Writer, key: &OrderKey) {
    w.string(&key.channel).string(&key.client_order_id);
}

impl Request {
    pub fn kind(&self) -> u8 {
        use kinds::*;
        match self {
            Request::Hello { .. } => HELLO,
            Request::Submit(_) => SUBMIT,
            Request::SubmitBatch(_) => SUBMIT_BATCH,
            Request::Confirm(_) => CONFIRM,
            Request::Cancel(_) => CANCEL,
            Request::GetOrder(_) => GET_ORDER,
            Request::GetOrderById { .. } => GET_ORDER_BY_ID,
            Request::Availability { .. } => AVAILABILITY,
            Request::StockSet(_) => STOCK_SET,
            Request::StockAdjust(_) => STOCK_ADJUST,
            Request::StockSetKnown(_) => STOCK_SET_KNOWN,
            Request::StockAdjustKnown(_) => STOCK_ADJUST_KNOWN,
            Request::NodeReject { .. } => NODE_REJECT,
            Request::NodeShip { .. } => NODE_SHIP,
            Request::Return { .. } => RETURN,
            Request::Subscribe { .. } => SUBSCRIBE,
            Request::SetNodeOnline { .. } => SET_NODE_ONLINE,
            Request::FollowOrders { .. } => FOLLOW_ORDERS,
            Request::ListOrders(_) => LIST_ORDERS,
        }
    }

    /// Decodes the payload of a request frame. `Ok(None)`: unknown kind.
    pub fn decode(kind: u8, payload: &[u8]) -> Result<Option<Request>, DecodeError> {
        let mut r = Reader::new(payload);
        let request = match kind {
            kinds::HELLO => Request::Hello {
                version: r.u16("version")?,
                token: r.string(MAX_TOKEN_BYTES, "token")?,
            },
            kinds::SUBMIT => Request::Submit(decode_order(&mut r)?),
            kinds::SUBMIT_BATCH => Request::SubmitBatch(decode_batch(&mut r)?),
            kinds::CONFIRM => Request::Confirm(order_key(&mut r)?),
            kinds::CANCEL => Request::Cancel(order_key(&mut r)?),
            kinds::GET_ORDER => Request::GetOrder(order_key(&mut r)?),
            kinds::GET_ORDER_BY_ID => Request::GetOrderById {
                channel: id(&mut r, "channel")?,
                order_id: r.u64("order id")?,
            },
            kinds::AVAILABILITY => {
                let sku = id(&mut r, "sku")?;
                let mode = r.u8("mode")?;
                let near = match mode {
                    0 | 2 => None,
                    1 | 3 => Some(Near {
                        lat: r.f64("lat")?,
                        lon: r.f64("lon")?,
                        count: r.u16("count")?,
                        min_qty: r.u32("min qty")?,
                    }),
                    other => {
                        return Err(DecodeError::NotOneOf {
                            what: "availability mode",
                            value: other.into(),
                            allowed: "0, 1, 2 or 3",
                        })
                    }
                };
                Request::Availability {
                    sku,
                    near,
                    with_state: mode >= 2,
                }
            }
            kinds::STOCK_SET | kinds::STOCK_SET_KNOWN => {
                let count = r.count_u32(MAX_STOCK_ENTRIES_PER_FRAME, "stock entries")?;
                let mut entries = Vec::with_capacity(count.min(1024));
                for _ in 0..count {
                    let (sku, node, on_hand, safety) = (
                        id(&mut r, "sku")?,
                        id(&mut r, "node")?,
                        r.u32("on hand")?,
                        r.u32("safety stock")?,
                    );
                    entries.push(StockSet {
                        sku,
                        node,
                        on_hand,
                        safety_stock: (safety != u32::MAX).then_some(safety),
                    });
                }
                if kind == kinds::STOCK_SET {
                    Request::StockSet(entries)
                } else {
                    Request::StockSetKnown(entries)
                }
            }
            kinds::STOCK_ADJUST | kinds::STOCK_ADJUST_KNOWN => {
                let count = r.count_u32(MAX_STOCK_ENTRIES_PER_FRAME, "stock entries")?;
                let mut entries = Vec::with_capacity(count.min(1024));
                for _ in 0..count {
                    entries.push(StockAdjust {
                        sku: id(&mut r, "sku")?,
                        node: id(&mut r, "node")?,
                        delta: r.i64("delta")?,
                    });
                }
                if kind == kinds::STOCK_ADJUST {
                    Request::StockAdjust(entries)
                } else {
                    Request::StockAdjustKnown(entries)
                }
            }
            kinds::NODE_REJECT => {
                let node = id(&mut r, "node")?;
                let order = order_key(&mut r)?;
                let count = r.count_u16(MAX_COUNTS_PER_REJECT, "counts")?;
                let mut counts = Vec::with_capacity(count);
                for _ in 0..count {
                    counts.push((id(&mut r, "sku")?, r.u32("on hand")?));
                }
                Request::NodeReject {
                    node,
                    order,
                    counts,
                }
            }
            kinds::NODE_SHIP => Request::NodeShip {
                node: id(&mut r, "node")?,
                order: order_key(&mut r)?,
                sku: id(&mut r, "sku")?,
                qty: r.u32("qty")?,
            },
            kinds::RETURN => Request::Return {
                node: id(&mut r, "node")?,
                order: order_key(&mut r)?,
                sku: id(&mut r, "sku")?,
                qty: r.u32("qty")?,
            },
            kinds::SUBSCRIBE => Request::Subscribe {
                node: id(&mut r, "node")?,
                from_cursor: r.u64("cursor")?,
            },
            kinds::FOLLOW_ORDERS => Request::FollowOrders {
                channel: id(&mut r, "channel")?,
                from_cursor: r.u64("cursor")?,
            },
            kinds::LIST_ORDERS => Request::ListOrders(OrderQuery {
                channel: id(&mut r, "channel")?,
                state: r.u8("state")?,
                node: id(&mut r, "node")?,
                created_from_ms: r.u64("created from")?,
                created_to_ms: r.u64("created to")?,
                after: r.u64("after")?,
                limit: r.u16("limit")?,
            }),
            kinds::SET_NODE_ONLINE => Request::SetNodeOnline {
                node: id(&mut r, "node")?,
                online: r.flag("online flag")?,
            },
            _ => return Ok(None),
        };
        r.finish()?;
        Ok(Some(request))
    }

    /// Appends the whole frame to `out`.
    pub fn encode(&self, request_id: u64, out: &mut Vec<u8>) {
        let mut w = Writer::frame(out, self.kind(), request_id);
        match self {
            Request::Hello { version, token } => {
                w.u16(*version).string(token);
            }
            Request::Submit(order) => encode_order(&mut w, order),
            Request::SubmitBatch(orders) => encode_batch(&mut w, orders),
            Request::Confirm(key) | Request::Cancel(key) | Request::GetOrder(key) => {
                write_key(&mut w, key)
            }
            Request::GetOrderById { channel, order_id } => {
                w.string(channel).u64(*order_id);
            }
            Request::Availability {
                sku,
                near,
                with_state,
            } => {
                w.string(sku);
                let state = if *with_state { 2 } else { 0 };
                match near {
                    None => {
                        w.u8(state);
                    }
                    Some(n) => {
                        w.u8(state + 1)
                            .f64(n.lat)
                            .f64(n.lon)
                            .u16(n.count)
                            .u32(n.min_qty);
                    }
                }
            }
            Request::StockSet(entries) | Request::StockSetKnown(entries) => {
                w.u32(entries.len() as u32);
                for e in entries {
                    w.string(&e.sku)
                        .string(&e.node)
                        .u32(e.on_hand)
                        .u32(e.safety_stock.unwrap_or(u32::MAX));
                }
            }
            Request::StockAdjust(entries) | Request::StockAdjustKnown(entries) => {
                w.u32(entries.len() as u32);
                for e in entries {
                    w.string(&e.sku).string(&e.node).i64(e.delta);
                }
            }
            Request::NodeReject {
                node,
                order,
                counts,
            } => {
                w.string(node);
                write_key(&mut w, order);
                w.u16(counts.len() as u16);
                for (sku, on_hand) in counts {
                    w.string(sku).u32(*on_hand);
                }
            }
            Request::NodeShip {
                node,
                order,
                sku,
                qty,
            }
            | Request::Return {
                node,
                order,
                sku,
                qty,
            } => {
                w.string(node);
                write_key(&mut w, order);
                w.string(sku).u32(*qty);
            }
            Request::Subscribe { node, from_cursor } => {
                w.string(node).u64(*from_cursor);
            }
            Request::SetNodeOnline { node, online } => {
                w.string(node).u8(u8::from(*online));
            }
            Request::FollowOrders {
                channel,
                from_cursor,
            } => {
                w.string(channel).u64(*from_cursor);
            }
            Request::ListOrders(q) => {
                w.string(&q.channel)
                    .u8(q.state)
                    .string(&q.node)
                    .u64(q.created_from_ms)
                    .u64(q.created_to_ms)
                    .u64(q.after)
                    .u16(q.limit);
            }
        }
    }
}

pub(crate) fn decode_order(r: &mut Reader) -> Result<Order, DecodeError> {
    let channel = id(r, "channel")?;
    let client_order_id = id(r, "client order id")?;
    let (lat, lon) = (r.f64("lat")?, r.f64("lon")?);
    let market = id(r, "market")?;
    let method = match r.u8("method")? {
        0 => Method::Ship,
        1 => Method::Pickup {
            store: id(r, "pickup store")?,
        },
        2 => Method::SameDay,
        other => {
            return Err(DecodeError::NotOneOf {
                what: "method",
                value: other.into(),
                allowed: "0 (ship), 1 (pickup) or 2 (same day)",
            })
        }
    };
    let hold_ttl_ms = r.u32("hold ttl")?;
    let count = r.count_u16(MAX_LINES_PER_ORDER, "lines")?;
    let mut lines = Vec::with_capacity(count);
    for _ in 0..count {
        lines.push((id(r, "sku")?, r.u32("qty")?));
    }
    Ok(Order {
        channel,
        client_order_id,
        lat,
        lon,
        market: (!market.is_empty()).then_some(market),
        method,
        hold_ttl_ms: (hold_ttl_ms != 0).then_some(hold_ttl_ms),
        lines,
    })
}

pub(crate) fn encode_order(w: &mut Writer, order: &Order) {
    w.string(&order.channel)
        .string(&order.client_order_id)
        .f64(order.lat)
        .f64(order.lon);
    w.string(order.market.as_deref().unwrap_or(""));
    match &order.method {
        Method::Ship => {
            w.u8(0);
        }
        Method::Pickup { store } => {
            w.u8(1).string(store);
        }
        Method::SameDay => {
            w.u8(2);
        }
    }
    w.u32(order.hold_ttl_ms.unwrap_or(0));
    w.u16(order.lines.len() as u16);
    for (sku, qty) in &order.lines {
        w.string(sku).u32(*qty);
    }
}

/// An error's message cut to `MAX_MESSAGE_BYTES`, on a char boundary.
pub(crate) fn bounded_message(mut message: String) -> String {
    if message.len() > MAX_MESSAGE_BYTES {
        let mut cut = MAX_MESSAGE_BYTES;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
    }
    message
}

pub(crate) fn decode_decision(r: &mut Reader) -> Result<Decision, DecodeError> {
    Ok(match r.u8("outcome")? {
        0 => {
            let (order_id, expires_at_ms) = (r.u64("order id")?, r.u64("expires at")?);
            let count = r.count_u16(MAX_ALLOCATIONS_PER_ANSWER, "allocations")?;
            let allocations = (0..count)
                .map(|_| {
                    Ok(Allocation {
                        line: r.u16("line")?,
                        sku: id(r, "sku")?,
                        node: id(r, "node")?,
                        qty: r.u32("qty")?,
                    })
                })
                .collect::<Result<_, DecodeError>>()?;
            Decision::Routed {
                order_id,
                expires_at_ms,
                allocations,
                short: decode_shorts(r)?,
            }
        }
        1 => Decision::Rejected {
            code: r.u16("code")?,
            detail: r.u16("detail")?,
            message: r.string(MAX_MESSAGE_BYTES, "message")?,
            short: decode_shorts(r)?,
        },
        other => {
            return Err(DecodeError::NotOneOf {
                what: "outcome",
                value: other.into(),
                allowed: "0 or 1",
            })
        }
    })
}

pub(crate) fn encode_decision(w: &mut Writer, decision: &Decision) {
    match decision {
        Decision::Routed {
            order_id,
            expires_at_ms,
            allocations,
            short,
        } => {
            w.u8(0)
                .u64(*order_id)
                .u64(*expires_at_ms)
                .u16(allocations.len() as u16);
            for a in allocations {
                w.u16(a.line).string(&a.sku).string(&a.node).u32(a.qty);
            }
            encode_shorts(w, short);
        }
        Decision::Rejected {
            code,
            detail,
            message,
            short,
        } => {
            w.u8(1).u16(*code).u16(*detail).string(message);
            encode_shorts(w, short);
        }
    }
}

fn decode_shorts(r: &mut Reader) -> Result<Vec<Short>, DecodeError> {
    let count = r.count_u16(MAX_LINES_PER_ORDER, "short lines")?;
    (0..count)
        .map(|_| {
            Ok(Short {
                line: r.u16("line")?,
                sku: id(r, "sku")?,
                requested: r.u32("requested")?,
                available: r.u32("available")?,
            })
        })
        .collect()
}

fn encode_shorts(w: &mut Writer, shorts: &[Short]) {
    w.u16(shorts.len() as u16);
    for s in shorts {
        w.u16(s.line)
            .string(&s.sku)
            .u32(s.requested)
            .u32(s.available);
    }
}

fn decode_order_view(r: &mut Reader) -> Result<OrderView, DecodeError> {
    let (order_id, channel, client_order_id) = (
        r.u64("order id")?,
        id(r, "channel")?,
        id(r, "client order id")?,
    );
    let (state, expires_at_ms) = (r.u8("state")?, r.u64("expires at")?);
    let count = r.count_u16(MAX_ALLOCATIONS_PER_ANSWER, "allocations")?;
    let allocations = (0..count)
        .map(|_| {
            Ok(AllocationView {
                line: r.u16("line")?,
                sku: id(r, "sku")?,
                node: id(r, "node")?,
                open: r.u32("open")?,
                shipped: r.u32("shipped")?,
                returned: r.u32("returned")?,
            })
        })
        .collect::<Result<_, DecodeError>>()?;
    Ok(OrderView {
        order_id,
        channel,
        client_order_id,
        state,
        expires_at_ms,
        allocations,
        short: decode_shorts(r)?,
    })
}

fn encode_order_view(w: &mut Writer, view: &OrderView) {
    w.u64(view.order_id)
        .string(&view.channel)
        .string(&view.client_order_id)
        .u8(view.state)
        .u64(view.expires_at_ms);
    w.u16(view.allocations.len() as u16);
    for a in &view.allocations {
        w.u16(a.line)
            .string(&a.sku)
            .string(&a.node)
            .u32(a.open)
            .u32(a.shipped)
            .u32(a.returned);
    }
    encode_shorts(w, &view.short);
}

/// Most allocations one answer lists: every line split over the most nodes.
const MAX_ALLOCATIONS_PER_ANSWER: usize = MAX_LINES_PER_ORDER * 16 * 4;

impl Response {
    pub fn kind(&self) -> u8 {
        use kinds::*;
        match self {
            Response::HelloOk { .. } => HELLO_OK,
            Response::Decision(_) => DECISION,
            Response::Decisions(_) => DECISIONS,
            Response::Order(_) => ORDER,
            Response::Availability(_) => AVAILABILITY_ANSWER,
            Response::NodeAvailability(_) => NODE_AVAILABILITY,
            Response::StockResult { .. } => STOCK_RESULT,
            Response::NodeOnline { .. } => NODE_ONLINE_RESULT,
            Response::Subscribed { .. } => SUBSCRIBED,
            Response::Event(_) => EVENT,
            Response::OrderStatus(_) => ORDER_STATUS,
            Response::OrderPage { .. } => ORDER_PAGE,
            Response::Error { .. } => ERROR,
        }
    }

    pub fn error(code: ErrorCode, message: impl Into<String>) -> Response {
        Response::Error {
            code: code as u16,
            message: bounded_message(message.into()),
        }
    }

    pub fn decode(kind: u8, payload: &[u8]) -> Result<Option<Response>, DecodeError> {
        let mut r = Reader::new(payload);
        let response = match kind {
            kinds::HELLO_OK => Response::HelloOk {
                role: r.string(MAX_ID_BYTES + 16, "role")?,
            },
            kinds::DECISION => Response::Decision(decode_decision(&mut r)?),
            kinds::DECISIONS => Response::Decisions(decode_judged(&mut r)?),
            kinds::ORDER => Response::Order(decode_order_view(&mut r)?),
            kinds::ORDER_STATUS => {
                let (cursor, change) = (r.u64("cursor")?, r.u8("change")?);
                let count = r.count_u16(MAX_ALLOCATIONS_PER_ANSWER, "released from")?;
                let released_from = (0..count)
                    .map(|_| id(&mut r, "node"))
                    .collect::<Result<_, DecodeError>>()?;
                Response::OrderStatus(OrderStatus {
                    cursor,
                    change,
                    released_from,
                    order: decode_order_view(&mut r)?,
                })
            }
            kinds::ORDER_PAGE => {
                let next_after = r.u64("next after")?;
                let count = r.count_u16(MAX_ORDERS_PER_PAGE, "orders")?;
                let orders = (0..count)
                    .map(|_| {
                        Ok(ListedOrder {
                            order: decode_order_view(&mut r)?,
                            created_at_ms: r.u64("created at")?,
                        })
                    })
                    .collect::<Result<_, DecodeError>>()?;
                Response::OrderPage { orders, next_after }
            }
            kinds::AVAILABILITY_ANSWER => {
                let count = r.count_u32(MAX_NODES_PER_ANSWER, "nodes")?;
                let nodes = (0..count)
                    .map(|_| {
                        let (node, atp, distance) =
                            (id(&mut r, "node")?, r.u32("atp")?, r.f64("distance")?);
                        Ok(NodeStock {
                            node,
                            atp,
                            distance_km: (!distance.is_nan()).then_some(distance),
                        })
                    })
                    .collect::<Result<_, DecodeError>>()?;
                Response::Availability(nodes)
            }
            kinds::NODE_AVAILABILITY => {
                let count = r.count_u32(MAX_NODES_PER_ANSWER, "nodes")?;
                let nodes = (0..count)
                    .map(|_| {
                        let (node, atp, distance) =
                            (id(&mut r, "node")?, r.u32("atp")?, r.f64("distance")?);
                        Ok(NodeState {
                            node,
                            atp,
                            distance_km: (!distance.is_nan()).then_some(distance),
                            online: r.flag("online flag")?,
                            priority: r.u32("priority")?,
                        })
                    })
                    .collect::<Result<_, DecodeError>>()?;
                Response::NodeAvailability(nodes)
            }
            kinds::STOCK_RESULT => Response::StockResult {
                applied: r.u32("applied")?,
                bumped_units: r.u32("bumped")?,
                errors: r.u32("errors")?,
            },
            kinds::NODE_ONLINE_RESULT => Response::NodeOnline {
                rerouted: r.u32("rerouted")?,
            },
            kinds::SUBSCRIBED => Response::Subscribed {
                next_cursor: r.u64("cursor")?,
            },
            kinds::EVENT => {
                let (cursor, kind, order_id) =
                    (r.u64("cursor")?, r.u8("event kind")?, r.u64("order id")?);
                let (channel, client_order_id) =
                    (id(&mut r, "channel")?, id(&mut r, "client order id")?);
                let count = r.count_u16(MAX_ALLOCATIONS_PER_ANSWER, "lines")?;
                let lines = (0..count)
                    .map(|_| Ok((r.u16("line")?, id(&mut r, "sku")?, r.u32("qty")?)))
                    .collect::<Result<_, DecodeError>>()?;
                Response::Event(Event {
                    cursor,
                    kind,
                    order_id,
                    channel,
                    client_order_id,
                    lines,
                })
            }
            kinds::ERROR => Response::Error {
                code: r.u16("code")?,
                message: r.string(MAX_MESSAGE_BYTES, "message")?,
            },
            _ => return Ok(None),
        };
        r.finish()?;
        Ok(Some(response))
    }

    pub fn encode(&self, request_id: u64, out: &mut Vec<u8>) {
        let mut w = Writer::frame(out, self.kind(), request_id);
        match self {
            Response::HelloOk { role } => {
                w.string(role);
            }
            Response::Decision(decision) => encode_decision(&mut w, decision),
            Response::Decisions(judged) => encode_judged(&mut w, judged),
            Response::Order(view) => encode_order_view(&mut w, view),
            Response::OrderStatus(status) => {
                w.u64(status.cursor)
                    .u8(status.change)
                    .u16(status.released_from.len() as u16);
                for node in &status.released_from {
                    w.string(node);
                }
                encode_order_view(&mut w, &status.order);
            }
            Response::OrderPage { orders, next_after } => {
                w.u64(*next_after).u16(orders.len() as u16);
                for listed in orders {
                    encode_order_view(&mut w, &listed.order);
                    w.u64(listed.created_at_ms);
                }
            }
            Response::Availability(nodes) => {
                w.u32(nodes.len() as u32);
                for n in nodes {
                    w.string(&n.node)
                        .u32(n.atp)
                        .f64(n.distance_km.unwrap_or(f64::NAN));
                }
            }
            Response::NodeAvailability(nodes) => {
                w.u32(nodes.len() as u32);
                for n in nodes {
                    w.string(&n.node)
                        .u32(n.atp)
                        .f64(n.distance_km.unwrap_or(f64::NAN))
                        .u8(u8::from(n.online))
                        .u32(n.priority);
                }
            }
            Response::StockResult {
                applied,
                bumped_units,
                errors,
            } => {
                w.u32(*applied).u32(*bumped_units).u32(*errors);
            }
            Response::NodeOnline { rerouted } => {
                w.u32(*rerouted);
            }
            Response::Subscribed { next_cursor } => {
                w.u64(*next_cursor);
            }
            Response::Event(e) => {
                w.u64(e.cursor)
                    .u8(e.kind)
                    .u64(e.order_id)
                    .string(&e.channel)
                    .string(&e.client_order_id)
                    .u16(e.lines.len() as u16);
                for (line, sku, qty) in &e.lines {
                    w.u16(*line).string(sku).u32(*qty);
                }
            }
            Response::Error { code, message } => {
                w.u16(*code).string(message);
            }
        }
    }
}
