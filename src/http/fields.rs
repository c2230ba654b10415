//! What each field of a body, query or path may hold: the one statement of
//! the gateway's bounds. The decoders (`body.rs`, `events.rs`) check these
//! and nothing else, and `docs/openapi.json` states each of them where
//! [`DOCUMENTED`] says (`tests/openapi_document.rs` compares the two both
//! ways), so that a client generated from the document sends only what the
//! server takes, and the server refuses only what the document refuses.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};

use crate::limits::{
    MAX_HOLD_TTL_MS, MAX_ID_BYTES, MAX_NEAREST_NODES, MAX_ON_HAND_UNITS, MAX_ORDERS_PER_PAGE,
    MAX_QTY_PER_LINE,
};
use omniroute_protocol::{MAX_COUNTS_PER_REJECT, MAX_LINES_PER_ORDER, MAX_STOCK_ENTRIES_PER_FRAME};

/// An inclusive range of whole numbers.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Whole {
    pub min: i64,
    pub max: i64,
}

/// An inclusive range of coordinates, in degrees.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Degrees {
    pub min: f64,
    pub max: f64,
}

/// Units of one order line, and of one ship or return.
pub const QTY: Whole = Whole {
    min: 1,
    max: MAX_QTY_PER_LINE as i64,
};
/// A count of units on a shelf: `on_hand`, `safety_stock`, a node's count.
pub const UNITS: Whole = Whole {
    min: 0,
    max: MAX_ON_HAND_UNITS as i64,
};
/// A stock adjustment, either way.
pub const DELTA: Whole = Whole {
    min: -(MAX_ON_HAND_UNITS as i64),
    max: MAX_ON_HAND_UNITS as i64,
};
/// The least units a nearest-nodes query asks each node for.
pub const MIN_QTY: Whole = Whole {
    min: 1,
    max: MAX_ON_HAND_UNITS as i64,
};
/// A hold's time to live, in ms.
pub const HOLD_TTL_MS: Whole = Whole {
    min: 1,
    max: MAX_HOLD_TTL_MS as i64,
};
/// Nodes a nearest-nodes query lists.
pub const NEAREST: Whole = Whole {
    min: 1,
    max: MAX_NEAREST_NODES as i64,
};
/// Orders per listing page.
pub const PAGE: Whole = Whole {
    min: 1,
    max: MAX_ORDERS_PER_PAGE as i64,
};
/// A listing's `after` or a stream's `from`: any cursor a `u64` holds.
/// Stated as a string of digits where it travels as text (`Last-Event-ID`).
pub const CURSOR: Whole = Whole {
    min: 0,
    max: i64::MAX,
};
/// Lines of one order.
pub const LINES: Whole = Whole {
    min: 1,
    max: MAX_LINES_PER_ORDER as i64,
};
/// Entries of one stock feed.
pub const ENTRIES: Whole = Whole {
    min: 0,
    max: MAX_STOCK_ENTRIES_PER_FRAME as i64,
};
/// Counts a node's reject carries.
pub const COUNTS: Whole = Whole {
    min: 0,
    max: MAX_COUNTS_PER_REJECT as i64,
};
pub const LATITUDE: Degrees = Degrees {
    min: -90.0,
    max: 90.0,
};
pub const LONGITUDE: Degrees = Degrees {
    min: -180.0,
    max: 180.0,
};

/// Characters a name may have when any of them is outside ASCII: the
/// wire's bound is bytes, and this many characters of up to 4 bytes each
/// always fit it. JSON Schema counts characters, so the document can state
/// "128 ASCII characters, or 32 of any kind" and mean what the server
/// checks, where "128 bytes" it cannot state at all.
pub const MAX_NAME_CHARS: usize = MAX_ID_BYTES / 4;

/// A name (channel, node, SKU, market, store, client order id), as the
/// document's pattern states it: 1 to 128 printable ASCII characters, or
/// 1 to [`MAX_NAME_CHARS`] characters of any kind but control characters.
pub const NAME_PATTERN: &str = "^(?:[ -~]{1,128}|[^\\x00-\\x1F\\x7F-\\x9F]{1,32})$";

/// A cursor sent as text (`Last-Event-ID`): digits only, at most 18 of
/// them, so that it and the next one fit [`CURSOR`].
pub const CURSOR_TEXT_PATTERN: &str = "^[0-9]{1,18}$";

/// A time bound of a listing: Unix ms (digits, at most 15: past the year
/// 30 000), or an ISO 8601 UTC time from 1970 on, to the second or finer,
/// on a day every month has or the 29th to 31st of a month that has it (a
/// 29 February as Unix ms).
pub const TIME_PATTERN: &str = "^(?:[0-9]{1,15}|(?:19[7-9][0-9]|[2-9][0-9]{3})-(?:(?:0[1-9]|1[0-2])-(?:0[1-9]|1[0-9]|2[0-8])|(?:0[13-9]|1[0-2])-(?:29|30)|(?:0[13578]|1[02])-31)T(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\\.[0-9]{1,9})?Z)$";

/// How a field is bounded, as the document states it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Bound {
    /// An integer (JSON `1.0` included) within the range.
    Whole(Whole),
    /// A number within the range.
    Degrees(Degrees),
    /// A string matching [`NAME_PATTERN`].
    Name,
    /// A string matching [`TIME_PATTERN`].
    Time,
    /// A string matching [`CURSOR_TEXT_PATTERN`].
    CursorText,
    /// An array of at most (and at least) this many items.
    Items(Whole),
}

/// Every field the gateway reads, by where `docs/openapi.json` states it
/// (a JSON pointer; parameters by their index in the operation), and its
/// bound. A field the decoders read and this list leaves out, or a bound
/// the document states otherwise, fails `tests/openapi_document.rs`.
pub const DOCUMENTED: &[(&str, Bound)] = &[
    ("/components/schemas/Line/properties/sku", Bound::Name),
    ("/components/schemas/Line/properties/qty", Bound::Whole(QTY)),
    (
        "/components/schemas/Point/properties/lat",
        Bound::Degrees(LATITUDE),
    ),
    (
        "/components/schemas/Point/properties/lon",
        Bound::Degrees(LONGITUDE),
    ),
    (
        "/components/schemas/SubmitOrder/properties/channel",
        Bound::Name,
    ),
    ("/components/schemas/SubmitOrder/properties/id", Bound::Name),
    (
        "/components/schemas/SubmitOrder/properties/lines",
        Bound::Items(LINES),
    ),
    (
        "/components/schemas/SubmitOrder/properties/market",
        Bound::Name,
    ),
    (
        "/components/schemas/SubmitOrder/properties/pickup_store",
        Bound::Name,
    ),
    (
        "/components/schemas/SubmitOrder/properties/hold_ttl_ms",
        Bound::Whole(HOLD_TTL_MS),
    ),
    (
        "/components/schemas/StockSet/properties/entries",
        Bound::Items(ENTRIES),
    ),
    ("/components/schemas/SetEntry/properties/sku", Bound::Name),
    ("/components/schemas/SetEntry/properties/node", Bound::Name),
    (
        "/components/schemas/SetEntry/properties/on_hand",
        Bound::Whole(UNITS),
    ),
    (
        "/components/schemas/SetEntry/properties/safety_stock",
        Bound::Whole(UNITS),
    ),
    (
        "/components/schemas/StockAdjust/properties/entries",
        Bound::Items(ENTRIES),
    ),
    (
        "/components/schemas/AdjustEntry/properties/sku",
        Bound::Name,
    ),
    (
        "/components/schemas/AdjustEntry/properties/node",
        Bound::Name,
    ),
    (
        "/components/schemas/AdjustEntry/properties/delta",
        Bound::Whole(DELTA),
    ),
    ("/components/schemas/Units/properties/channel", Bound::Name),
    ("/components/schemas/Units/properties/id", Bound::Name),
    ("/components/schemas/Units/properties/sku", Bound::Name),
    (
        "/components/schemas/Units/properties/qty",
        Bound::Whole(QTY),
    ),
    ("/components/schemas/Reject/properties/channel", Bound::Name),
    ("/components/schemas/Reject/properties/id", Bound::Name),
    (
        "/components/schemas/Reject/properties/counts",
        Bound::Items(COUNTS),
    ),
    ("/components/schemas/Count/properties/sku", Bound::Name),
    (
        "/components/schemas/Count/properties/on_hand",
        Bound::Whole(UNITS),
    ),
    ("/components/parameters/Channel/schema", Bound::Name),
    ("/components/parameters/OrderId/schema", Bound::Name),
    ("/components/parameters/Node/schema", Bound::Name),
    ("/components/parameters/Sku/schema", Bound::Name),
    ("/components/parameters/NodeFilter/schema", Bound::Name),
    ("/components/parameters/CreatedFrom/schema", Bound::Time),
    ("/components/parameters/CreatedTo/schema", Bound::Time),
    ("/components/parameters/After/schema", Bound::Whole(CURSOR)),
    ("/components/parameters/Limit/schema", Bound::Whole(PAGE)),
    ("/components/parameters/From/schema", Bound::Whole(CURSOR)),
    (
        "/components/parameters/LastEventId/schema",
        Bound::CursorText,
    ),
    (
        "/components/parameters/Near/schema/properties/lat",
        Bound::Degrees(LATITUDE),
    ),
    (
        "/components/parameters/Near/schema/properties/lon",
        Bound::Degrees(LONGITUDE),
    ),
    (
        "/components/parameters/Near/schema/properties/count",
        Bound::Whole(NEAREST),
    ),
    (
        "/components/parameters/Near/schema/properties/min_qty",
        Bound::Whole(MIN_QTY),
    ),
];

/// A field that breaks its bound: named, with why.
#[derive(Debug, thiserror::Error)]
#[error("{field}: {why}")]
pub struct BadField {
    pub field: String,
    pub why: String,
}

pub fn bad(field: impl Into<String>, why: impl Into<String>) -> BadField {
    BadField {
        field: field.into(),
        why: why.into(),
    }
}

/// `value` if it is within `range`.
pub fn whole(field: &str, value: i64, range: Whole) -> Result<i64, BadField> {
    if value < range.min || value > range.max {
        return Err(bad(
            field,
            format!("{value} is outside {} to {}", range.min, range.max),
        ));
    }
    Ok(value)
}

/// `value` if it is within `range`.
pub fn degrees(field: &str, value: f64, range: Degrees) -> Result<f64, BadField> {
    if !(range.min..=range.max).contains(&value) {
        return Err(bad(
            field,
            format!("{value} is outside {} to {} degrees", range.min, range.max),
        ));
    }
    Ok(value)
}

/// `items` if there are at most (and at least) as many as `range` says.
pub fn items<'a, T>(field: &str, items: &'a [T], range: Whole) -> Result<&'a [T], BadField> {
    let count = items.len() as i64;
    if count < range.min || count > range.max {
        return Err(bad(
            field,
            format!("{count} entries; {} to {}", range.min, range.max),
        ));
    }
    Ok(items)
}

/// `value` if it is a name: see [`NAME_PATTERN`]. Always within the wire's
/// [`MAX_ID_BYTES`].
pub fn name(field: &str, value: &str) -> Result<(), BadField> {
    let printable_ascii = |c: char| (' '..='~').contains(&c);
    let chars = value.chars().count();
    let fits = if value.chars().all(printable_ascii) {
        (1..=MAX_ID_BYTES).contains(&chars)
    } else {
        (1..=MAX_NAME_CHARS).contains(&chars) && !value.chars().any(char::is_control)
    };
    if !fits {
        return Err(bad(
            field,
            format!(
                "a name is 1 to {MAX_ID_BYTES} printable ASCII characters, or 1 to \
                 {MAX_NAME_CHARS} characters of any kind but control characters"
            ),
        ));
    }
    Ok(())
}

/// A cursor sent as text: see [`CURSOR_TEXT_PATTERN`].
pub fn cursor_text(field: &str, value: &str) -> Result<u64, BadField> {
    let digits = value.len() <= 18 && !value.is_empty();
    match value.parse::<u64>() {
        Ok(cursor) if digits && value.bytes().all(|b| b.is_ascii_digit()) => Ok(cursor),
        _ => Err(bad(field, "a cursor is 1 to 18 digits")),
    }
}

/// A time bound: see [`TIME_PATTERN`]; Unix ms.
pub fn time(field: &str, value: &str) -> Result<u64, BadField> {
    let iso = value.len() >= 20 && value.as_bytes()[10] == b'T' && value.ends_with('Z');
    let ms = !value.is_empty() && value.len() <= 15 && value.bytes().all(|b| b.is_ascii_digit());
    if !ms && !iso {
        return Err(bad(
            field,
            format!(
                "{value:?} is neither Unix ms nor an ISO 8601 UTC time like 2026-12-05T13:48:36Z"
            ),
        ));
    }
    crate::timefmt::parse_time_ms(value).map_err(|why| bad(field, why))
}

/// Deserializes a whole number as JSON Schema's `integer` reads one: `3`
/// and `3.0` alike; `3.5` is refused with a message that says so. Its range
/// is the decoder's to check ([`whole`]).
pub fn deserialize_whole<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    d.deserialize_any(WholeVisitor)
}

/// [`deserialize_whole`] for an optional field.
pub fn deserialize_whole_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    deserialize_whole(d).map(Some)
}

struct WholeVisitor;

/// The largest magnitude an `f64` holds exactly as a whole number's
/// neighbour: past 2^63 a float no longer fits an `i64`.
const I64_SPAN_AS_F64: f64 = 9_223_372_036_854_775_808.0;

impl Visitor<'_> for WholeVisitor {
    type Value = i64;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a whole number")
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<i64, E> {
        Ok(v)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<i64, E> {
        i64::try_from(v).map_err(|_| E::custom(format!("{v} is too large")))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<i64, E> {
        if v.fract() != 0.0 || !v.is_finite() {
            return Err(E::custom(format!("{v} is not a whole number")));
        }
        if v.abs() >= I64_SPAN_AS_F64 {
            return Err(E::custom(format!("{v} is too large")));
        }
        Ok(v as i64)
    }
}
