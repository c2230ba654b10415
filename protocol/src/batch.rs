//! `SubmitBatch` and its answer, `Decisions`: many orders in one frame,
//! each judged on its own.
//!
//! Each order sits in the batch behind its own `u16` length, so that one
//! order whose bytes do not decode is answered alone (`MALFORMED`) and the
//! orders around it are still routed. The answer lists one entry per
//! order, in the batch's order.

use crate::codec::{DecodeError, Reader, Writer};
use crate::messages::{
    bounded_message, decode_decision, decode_order, encode_decision, encode_order,
};
use crate::{Decision, ErrorCode, Order, MAX_MESSAGE_BYTES};

/// Most orders one `SubmitBatch` frame carries; a frame announcing more
/// is refused whole with `TOO_LARGE`.
pub const MAX_ORDERS_PER_SUBMIT_BATCH: usize = 1024;

/// One order of a batch as read: the order, or why its bytes are not one.
pub type BatchOrder = Result<Order, DecodeError>;

/// The answer to one order of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Judged {
    Decision(Decision),
    /// The order was not judged: its bytes were malformed, or the server
    /// could not take it (`OVERLOADED`, `SHUTTING_DOWN`, ...).
    Error {
        code: u16,
        message: String,
    },
}

impl Judged {
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Judged {
        Judged::Error {
            code: code as u16,
            message: bounded_message(message.into()),
        }
    }
}

/// Whether a decode error is the batch's count over its limit: the whole
/// frame is refused with `TOO_LARGE` then, not answered order by order.
pub fn batch_too_large(error: &DecodeError) -> bool {
    matches!(
        error,
        DecodeError::TooMany {
            what: "orders in the batch",
            ..
        }
    )
}

pub(crate) fn decode_batch(r: &mut Reader) -> Result<Vec<BatchOrder>, DecodeError> {
    let count = r.count_u16(MAX_ORDERS_PER_SUBMIT_BATCH, "orders in the batch")?;
    let mut orders = Vec::with_capacity(count);
    for _ in 0..count {
        let length = r.u16("batch entry length")? as usize;
        let bytes = r.slice(length, "batch entry")?;
        let mut entry = Reader::new(bytes);
        orders.push(decode_order(&mut entry).and_then(|order| entry.finish().map(|()| order)));
    }
    Ok(orders)
}

/// An entry that failed to decode is written empty (it decodes as
/// malformed again): a client never encodes one, tests do.
pub(crate) fn encode_batch(w: &mut Writer, orders: &[BatchOrder]) {
    w.u16(orders.len() as u16);
    for order in orders {
        w.sized_u16(|w| {
            if let Ok(order) = order {
                encode_order(w, order);
            }
        });
    }
}

pub(crate) fn decode_judged(r: &mut Reader) -> Result<Vec<Judged>, DecodeError> {
    let count = r.count_u16(MAX_ORDERS_PER_SUBMIT_BATCH, "decisions")?;
    let mut judged = Vec::with_capacity(count);
    for _ in 0..count {
        judged.push(match r.u8("entry")? {
            0 => Judged::Decision(decode_decision(r)?),
            1 => Judged::Error {
                code: r.u16("code")?,
                message: r.string(MAX_MESSAGE_BYTES, "message")?,
            },
            other => {
                return Err(DecodeError::NotOneOf {
                    what: "entry",
                    value: other.into(),
                    allowed: "0 (decision) or 1 (error)",
                })
            }
        });
    }
    Ok(judged)
}

pub(crate) fn encode_judged(w: &mut Writer, judged: &[Judged]) {
    w.u16(judged.len() as u16);
    for entry in judged {
        match entry {
            Judged::Decision(decision) => {
                w.u8(0);
                encode_decision(w, decision);
            }
            Judged::Error { code, message } => {
                w.u8(1).u16(*code).string(message);
            }
        }
    }
}
