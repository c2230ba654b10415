//! The JSON bodies and query strings the gateway takes, and their checks:
//! each field against its bound in `fields.rs` (the bounds
//! `docs/openapi.json` states), each broken one named by its field, before
//! anything reaches the engine. Each becomes the protocol request QUIC
//! would carry.

use omniroute_protocol::{
    Method, Near, Order, OrderKey, OrderQuery, Request, StockAdjust, StockSet, NO_SHIP_TO,
};
use serde::Deserialize;

pub use super::fields::BadField;
use super::fields::{
    self, bad, deserialize_whole, deserialize_whole_opt, items, name as id, whole, COUNTS, CURSOR,
    DELTA, ENTRIES, HOLD_TTL_MS, LATITUDE, LINES, LONGITUDE, MIN_QTY, NEAREST, QTY, UNITS,
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Line {
    pub sku: String,
    #[serde(deserialize_with = "deserialize_whole")]
    pub qty: i64,
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
    /// Required unless `method` is `pickup`: a pickup order without one is
    /// collected at the store, whose location stands for it.
    #[serde(default, deserialize_with = "deserialize_point")]
    pub ship_to: Option<Point>,
    #[serde(default, deserialize_with = "deserialize_present")]
    pub market: Option<String>,
    #[serde(default)]
    pub method: MethodName,
    /// The store, when `method` is `pickup`.
    #[serde(default, deserialize_with = "deserialize_present")]
    pub pickup_store: Option<String>,
    #[serde(default, deserialize_with = "deserialize_whole_opt")]
    pub hold_ttl_ms: Option<i64>,
}

/// An optional string that, when present, is a string: `null` is refused,
/// as the document's `"type": "string"` says (absent is the way to leave
/// it out).
fn deserialize_present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    String::deserialize(d).map(Some)
}

/// An optional point that, when present, is a point (`null` is refused).
fn deserialize_point<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Point>, D::Error> {
    Point::deserialize(d).map(Some)
}

impl SubmitBody {
    pub fn request(self) -> Result<Request, BadField> {
        id("channel", &self.channel)?;
        id("id", &self.id)?;
        items("lines", &self.lines, LINES)?;
        for (i, line) in self.lines.iter().enumerate() {
            id(&format!("lines[{i}].sku"), &line.sku)?;
            whole(&format!("lines[{i}].qty"), line.qty, QTY)?;
        }
        if let Some(point) = &self.ship_to {
            fields::degrees("ship_to.lat", point.lat, LATITUDE)?;
            fields::degrees("ship_to.lon", point.lon, LONGITUDE)?;
        }
        if let Some(market) = &self.market {
            id("market", market)?;
        }
        let hold_ttl_ms = match self.hold_ttl_ms {
            Some(ms) => Some(whole("hold_ttl_ms", ms, HOLD_TTL_MS)? as u32),
            None => None,
        };
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
        let (lat, lon) = match (&self.ship_to, &method) {
            (Some(point), _) => (point.lat, point.lon),
            (None, Method::Pickup { .. }) => (NO_SHIP_TO, NO_SHIP_TO),
            (None, _) => return Err(bad("ship_to", "required unless method is pickup")),
        };
        Ok(Request::Submit(Order {
            channel: self.channel,
            client_order_id: self.id,
            lat,
            lon,
            market: self.market,
            method,
            hold_ttl_ms,
            // Each qty is within QTY, checked above.
            lines: self
                .lines
                .into_iter()
                .map(|l| (l.sku, l.qty as u32))
                .collect(),
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

/// `value` if it is within [`CURSOR`] (a query reads it as a `u64`).
pub fn cursor(field: &str, value: u64) -> Result<u64, BadField> {
    let outside = || bad(field, format!("{value} is outside 0 to {}", CURSOR.max));
    let value = i64::try_from(value).map_err(|_| outside())?;
    whole(field, value, CURSOR).map(|v| v as u64)
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
        if let Some(node) = &self.node {
            id("node", node)?;
        }
        let node = self.node.unwrap_or_default();
        cursor("after", self.after)?;
        // A limit outside PAGE is the protocol's TooLarge (413), answered
        // where QUIC's is (`server::requests`), not a malformed request.
        let limit = self.limit.unwrap_or(DEFAULT_PAGE_ORDERS);
        let time = |field: &str, value: Option<String>| match value {
            None => Ok(0),
            Some(text) => fields::time(field, &text),
        };
        Ok(Request::ListOrders(OrderQuery {
            channel,
            state,
            node,
            created_from_ms: time("created_from", self.created_from)?,
            created_to_ms: time("created_to", self.created_to)?,
            after: self.after,
            limit,
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
                lat: fields::degrees("lat", lat, LATITUDE)?,
                lon: fields::degrees("lon", lon, LONGITUDE)?,
                count: whole(
                    "count",
                    self.count.unwrap_or(DEFAULT_NEAREST_NODES).into(),
                    NEAREST,
                )? as u16,
                min_qty: whole("min_qty", self.min_qty.unwrap_or(1).into(), MIN_QTY)? as u32,
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
    #[serde(deserialize_with = "deserialize_whole")]
    pub on_hand: i64,
    #[serde(default, deserialize_with = "deserialize_whole_opt")]
    pub safety_stock: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdjustEntry {
    pub sku: String,
    pub node: String,
    #[serde(deserialize_with = "deserialize_whole")]
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
        items("entries", &self.entries, ENTRIES)?;
        for (i, e) in self.entries.iter().enumerate() {
            entry_ids(i, &e.sku, &e.node)?;
            whole(&format!("entries[{i}].on_hand"), e.on_hand, UNITS)?;
            if let Some(safety) = e.safety_stock {
                whole(&format!("entries[{i}].safety_stock"), safety, UNITS)?;
            }
        }
        Ok(Request::StockSet(
            self.entries
                .into_iter()
                .map(|e| StockSet {
                    sku: e.sku,
                    node: e.node,
                    // Both within UNITS, checked above.
                    on_hand: e.on_hand as u32,
                    safety_stock: e.safety_stock.map(|s| s as u32),
                })
                .collect(),
        ))
    }
}

impl StockBody<AdjustEntry> {
    pub fn request(self) -> Result<Request, BadField> {
        items("entries", &self.entries, ENTRIES)?;
        for (i, e) in self.entries.iter().enumerate() {
            entry_ids(i, &e.sku, &e.node)?;
            whole(&format!("entries[{i}].delta"), e.delta, DELTA)?;
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
    #[serde(deserialize_with = "deserialize_whole")]
    pub qty: i64,
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
        let qty = whole("qty", self.qty, QTY)? as u32;
        let order = order_key(self.channel, self.id)?;
        let sku = self.sku;
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
    #[serde(deserialize_with = "deserialize_whole")]
    pub on_hand: i64,
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
        items("counts", &self.counts, COUNTS)?;
        for (i, c) in self.counts.iter().enumerate() {
            id(&format!("counts[{i}].sku"), &c.sku)?;
            whole(&format!("counts[{i}].on_hand"), c.on_hand, UNITS)?;
        }
        Ok(Request::NodeReject {
            node,
            order: order_key(self.channel, self.id)?,
            counts: self
                .counts
                .into_iter()
                // Each within UNITS, checked above.
                .map(|c| (c.sku, c.on_hand as u32))
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

impl OnlineBody {
    pub fn request(self, node: String) -> Result<Request, BadField> {
        id("node", &node)?;
        Ok(Request::SetNodeOnline {
            node,
            online: self.online,
        })
    }
}

/// `GET /v1/channels/{channel}/events` query: the cursor to start at (a
/// `Last-Event-ID` header, the last one seen, wins over it).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    #[serde(default)]
    pub from: u64,
}
