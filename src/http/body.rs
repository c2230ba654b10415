//! The JSON bodies and query strings the gateway takes, and their checks:
//! the wire's limits, each broken one named by its field, before anything
//! reaches the engine. Each becomes the protocol request QUIC would carry.

use omniroute_protocol::{
    Method, Near, Order, OrderKey, OrderQuery, Request, StockAdjust, StockSet,
    MAX_COUNTS_PER_REJECT, MAX_ID_BYTES, MAX_LINES_PER_ORDER, MAX_STOCK_ENTRIES_PER_FRAME,
};
use serde::Deserialize;

/// A field that breaks a limit: named, with why.
#[derive(Debug, thiserror::Error)]
#[error("{field}: {why}")]
pub struct BadField {
    pub field: String,
    pub why: String,
}

fn bad(field: impl Into<String>, why: impl Into<String>) -> BadField {
    BadField {
        field: field.into(),
        why: why.into(),
    }
}

/// An id (channel, node, SKU, client order id) within the wire's bound.
fn id(field: &str, value: &str) -> Result<(), BadField> {
    if value.len() > MAX_ID_BYTES {
        return Err(bad(field, format!("longer than {MAX_ID_BYTES} bytes")));
    }
    Ok(())
}

fn at_most<T>(field: &str, items: &[T], max: usize) -> Result<(), BadField> {
    if items.len() > max {
        return Err(bad(
            field,
            format!("{} entries; at most {max}", items.len()),
        ));
    }
    Ok(())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Line {
    pub sku: String,
    pub qty: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Point {
    pub lat: f64,
    pub lon: f64,
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum MethodName {
    #[default]
    Ship,
    SameDay,
    Pickup,
}

/// `POST /v1/orders`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitBody {
    pub channel: String,
    /// The client order id: the idempotency key, unique per channel.
    pub id: String,
    pub lines: Vec<Line>,
    pub ship_to: Point,
    pub market: Option<String>,
    #[serde(default)]
    pub method: MethodName,
    /// The store, when `method` is `pickup`.
    pub pickup_store: Option<String>,
    pub hold_ttl_ms: Option<u32>,
}

impl SubmitBody {
    pub fn request(self) -> Result<Request, BadField> {
        id("channel", &self.channel)?;
        id("id", &self.id)?;
        at_most("lines", &self.lines, MAX_LINES_PER_ORDER)?;
        for (i, line) in self.lines.iter().enumerate() {
            id(&format!("lines[{i}].sku"), &line.sku)?;
        }
        if let Some(market) = &self.market {
            id("market", market)?;
        }
        let method = match (self.method, self.pickup_store) {
            (MethodName::Pickup, Some(store)) => {
                id("pickup_store", &store)?;
                Method::Pickup { store }
            }
            (MethodName::Pickup, None) => {
                return Err(bad("pickup_store", "required when method is pickup"))
            }
            (_, Some(_)) => return Err(bad("pickup_store", "only with method pickup")),
            (MethodName::Ship, None) => Method::Ship,
            (MethodName::SameDay, None) => Method::SameDay,
        };
        Ok(Request::Submit(Order {
            channel: self.channel,
            client_order_id: self.id,
            lat: self.ship_to.lat,
            lon: self.ship_to.lon,
            market: self.market,
            method,
            hold_ttl_ms: self.hold_ttl_ms,
            lines: self.lines.into_iter().map(|l| (l.sku, l.qty)).collect(),
        }))
    }
}

/// An order by its key, from the path.
pub fn order_key(channel: String, id_: String) -> Result<OrderKey, BadField> {
    id("channel", &channel)?;
    id("id", &id_)?;
    Ok(OrderKey {
        channel,
        client_order_id: id_,
    })
}

/// `GET /v1/channels/{channel}/orders` query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// held, confirmed, shipped, cancelled or expired; absent: any.
    pub state: Option<String>,
    pub node: Option<String>,
    /// Orders routed at or after this: ISO 8601 (UTC) or Unix ms.
    pub created_from: Option<String>,
    /// Orders routed before this: ISO 8601 (UTC) or Unix ms.
    pub created_to: Option<String>,
    #[serde(default)]
    pub after: u64,
    pub limit: Option<u16>,
}

/// Orders per page when a listing names no limit.
pub const DEFAULT_PAGE_ORDERS: u16 = 100;

impl ListQuery {
    pub fn request(self, channel: String) -> Result<Request, BadField> {
        id("channel", &channel)?;
        let state = match self.state.as_deref() {
            None => 0,
            Some(name) => omniroute_protocol::order_states::listable(name).ok_or_else(|| {
                bad(
                    "state",
                    "not held, confirmed, shipped, cancelled or expired",
                )
            })?,
        };
        let node = self.node.unwrap_or_default();
        id("node", &node)?;
        let time = |field: &str, value: Option<String>| match value {
            None => Ok(0),
            Some(text) => crate::timefmt::parse_time_ms(&text).map_err(|why| bad(field, why)),
        };
        Ok(Request::ListOrders(OrderQuery {
            channel,
            state,
            node,
            created_from_ms: time("created_from", self.created_from)?,
            created_to_ms: time("created_to", self.created_to)?,
            after: self.after,
            limit: self.limit.unwrap_or(DEFAULT_PAGE_ORDERS),
        }))
    }
}

/// `GET /v1/availability/{sku}` query: with `lat` and `lon`, the nearest
/// nodes with at least `min_qty`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AvailabilityQuery {
    pub lat: Option<f64>,
    pub lon: Option<f64>,
    pub count: Option<u16>,
    pub min_qty: Option<u32>,
}

/// Nodes a nearest query lists when it names no count.
pub const DEFAULT_NEAREST_NODES: u16 = 5;

impl AvailabilityQuery {
    pub fn request(self, sku: String) -> Result<Request, BadField> {
        id("sku", &sku)?;
        let near = match (self.lat, self.lon) {
            (Some(lat), Some(lon)) => Some(Near {
                lat,
                lon,
                count: self.count.unwrap_or(DEFAULT_NEAREST_NODES),
                min_qty: self.min_qty.unwrap_or(1),
            }),
            (None, None) if self.count.is_none() && self.min_qty.is_none() => None,
            (None, None) => return Err(bad("lat", "count and min_qty need lat and lon")),
            (Some(_), None) => return Err(bad("lon", "required with lat")),
            (None, Some(_)) => return Err(bad("lat", "required with lon")),
        };
        Ok(Request::Availability {
            sku,
            near,
            with_state: true,
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetEntry {
    pub sku: String,
    pub node: String,
    pub on_hand: u32,
    pub safety_stock: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdjustEntry {
    pub sku: String,
    pub node: String,
    pub delta: i64,
}

/// `POST /v1/stock/set` and `/v1/stock/adjust`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StockBody<E> {
    pub entries: Vec<E>,
}

fn entry_ids(i: usize, sku: &str, node: &str) -> Result<(), BadField> {
    id(&format!("entries[{i}].sku"), sku)?;
    id(&format!("entries[{i}].node"), node)
}

impl StockBody<SetEntry> {
    pub fn request(self) -> Result<Request, BadField> {
        at_most("entries", &self.entries, MAX_STOCK_ENTRIES_PER_FRAME)?;
        for (i, e) in self.entries.iter().enumerate() {
            entry_ids(i, &e.sku, &e.node)?;
        }
        Ok(Request::StockSet(
            self.entries
                .into_iter()
                .map(|e| StockSet {
                    sku: e.sku,
                    node: e.node,
                    on_hand: e.on_hand,
                    safety_stock: e.safety_stock,
                })
                .collect(),
        ))
    }
}

impl StockBody<AdjustEntry> {
    pub fn request(self) -> Result<Request, BadField> {
        at_most("entries", &self.entries, MAX_STOCK_ENTRIES_PER_FRAME)?;
        for (i, e) in self.entries.iter().enumerate() {
            entry_ids(i, &e.sku, &e.node)?;
        }
        Ok(Request::StockAdjust(
            self.entries
                .into_iter()
                .map(|e| StockAdjust {
                    sku: e.sku,
                    node: e.node,
                    delta: e.delta,
                })
                .collect(),
        ))
    }
}

/// `POST /v1/nodes/{node}/ship` and `/return`: units of one order's SKU.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnitsBody {
    pub channel: String,
    pub id: String,
    pub sku: String,
    pub qty: u32,
}

/// Which of the node requests a [`UnitsBody`] makes.
pub enum UnitsOp {
    Ship,
    Return,
}

impl UnitsBody {
    pub fn request(self, node: String, op: UnitsOp) -> Result<Request, BadField> {
        id("node", &node)?;
        id("sku", &self.sku)?;
        let order = order_key(self.channel, self.id)?;
        let (sku, qty) = (self.sku, self.qty);
        Ok(match op {
            UnitsOp::Ship => Request::NodeShip {
                node,
                order,
                sku,
                qty,
            },
            UnitsOp::Return => Request::Return {
                node,
                order,
                sku,
                qty,
            },
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Count {
    pub sku: String,
    pub on_hand: u32,
}

/// `POST /v1/nodes/{node}/reject`: the node will not serve the order; the
/// counts it took at the shelf, if any, correct its stock.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RejectBody {
    pub channel: String,
    pub id: String,
    #[serde(default)]
    pub counts: Vec<Count>,
}

impl RejectBody {
    pub fn request(self, node: String) -> Result<Request, BadField> {
        id("node", &node)?;
        at_most("counts", &self.counts, MAX_COUNTS_PER_REJECT)?;
        for (i, c) in self.counts.iter().enumerate() {
            id(&format!("counts[{i}].sku"), &c.sku)?;
        }
        Ok(Request::NodeReject {
            node,
            order: order_key(self.channel, self.id)?,
            counts: self
                .counts
                .into_iter()
                .map(|c| (c.sku, c.on_hand))
                .collect(),
        })
    }
}

/// `POST /v1/nodes/{node}/online`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnlineBody {
    pub online: bool,
}

/// `GET /v1/channels/{channel}/events` query: the cursor to start at (a
/// `Last-Event-ID` header, the last one seen, wins over it).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    #[serde(default)]
    pub from: u64,
}
