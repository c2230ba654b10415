//! The orders one stream read carries, from single `Submit` frames and
//! from `SubmitBatch` entries alike, routed in as few engine calls as fit
//! (`MAX_ORDERS_PER_BATCH` each, and no more than the connection's share
//! of the engine), and each decision put back where it was asked: a
//! `Decision` frame per `Submit`, one `Decisions` frame per batch.

use omniroute_protocol::{BatchOrder, ErrorCode, Judged, Order, Response};

use super::requests::may_submit;
use super::{wire, Role};
use crate::core::model::OrderRequest;
use crate::engine::Engine;
use crate::limits::MAX_ORDERS_PER_BATCH;

/// Where one order's decision goes.
enum Place {
    Frame(u64),
    Entry { batch: usize, entry: usize },
}

/// A read's orders, gathered before one spawned task routes them all.
#[derive(Default)]
pub struct Submits {
    orders: Vec<OrderRequest>,
    /// Index-aligned with `orders`.
    places: Vec<Place>,
    /// Each batch frame's request id and its answers so far: the entries
    /// judged without the engine (malformed, not the role's channel) are
    /// filled at once.
    batches: Vec<(u64, Vec<Option<Judged>>)>,
}

impl Submits {
    /// Orders that go to the engine.
    pub fn len(&self) -> usize {
        self.orders.len()
    }

    /// Whether there is nothing to answer.
    pub fn is_empty(&self) -> bool {
        self.orders.is_empty() && self.batches.is_empty()
    }

    pub fn single(&mut self, id: u64, order: Order) {
        self.orders.push(wire::order_request(order));
        self.places.push(Place::Frame(id));
    }

    /// Takes a batch's entries: each is routed, or answered alone when it
    /// did not decode or belongs to a channel the role may not submit to.
    pub fn batch(&mut self, id: u64, entries: Vec<BatchOrder>, role: &Role) {
        let batch = self.batches.len();
        let mut answers = Vec::with_capacity(entries.len());
        for (entry, order) in entries.into_iter().enumerate() {
            answers.push(match order {
                Err(error) => Some(Judged::error(
                    ErrorCode::Malformed,
                    format!("order {entry} of the batch: {error}"),
                )),
                Ok(order) if !may_submit(role, &order.channel) => Some(Judged::error(
                    ErrorCode::Forbidden,
                    format!(
                        "order {entry} of the batch: role {} may not submit to channel {:?}",
                        role.name(),
                        order.channel
                    ),
                )),
                Ok(order) => {
                    self.orders.push(wire::order_request(order));
                    self.places.push(Place::Entry { batch, entry });
                    None
                }
            });
        }
        self.batches.push((id, answers));
    }

    /// Routes every order, at most `at_once` in one engine call (and
    /// `MAX_ORDERS_PER_BATCH`), and returns the answer frames. A caller
    /// that holds `at_once` of its connection's in-flight permits so takes
    /// no more of the engine's in-flight orders than that.
    pub async fn answer(self, engine: &Engine, at_once: usize) -> Vec<(u64, Response)> {
        let Submits {
            mut orders,
            places,
            mut batches,
        } = self;
        let mut judged: Vec<Judged> = Vec::with_capacity(orders.len());
        while !orders.is_empty() {
            let rest = orders.split_off(orders.len().min(at_once.clamp(1, MAX_ORDERS_PER_BATCH)));
            let chunk = std::mem::replace(&mut orders, rest);
            let count = chunk.len();
            match engine.try_submit_batch(chunk).await {
                Ok(decisions) => judged.extend(
                    decisions
                        .iter()
                        .map(|d| Judged::Decision(wire::decision(engine, d))),
                ),
                Err(error) => {
                    let Response::Error { code, message } = wire::error(&error) else {
                        unreachable!("wire::error answers an error")
                    };
                    judged.extend((0..count).map(|_| Judged::Error {
                        code,
                        message: message.clone(),
                    }));
                }
            }
        }
        let mut responses = Vec::new();
        for (place, answer) in places.into_iter().zip(judged) {
            match place {
                Place::Frame(id) => responses.push((id, single(answer))),
                Place::Entry { batch, entry } => batches[batch].1[entry] = Some(answer),
            }
        }
        for (id, answers) in batches {
            let answers = answers
                .into_iter()
                .map(|a| a.expect("every entry of a batch is answered"))
                .collect();
            responses.push((id, Response::Decisions(answers)));
        }
        responses
    }
}

/// A single `Submit`'s answer frame.
fn single(answer: Judged) -> Response {
    match answer {
        Judged::Decision(decision) => Response::Decision(decision),
        Judged::Error { code, message } => Response::Error { code, message },
    }
}
