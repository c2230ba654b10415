//! Submits batched by the client itself, as TigerBeetle's clients do:
//! while one batch is in flight, concurrent submits queue; when its answer
//! comes, everything queued goes as the next `SubmitBatch` frame. A lone
//! submit goes at once, as a plain `Submit`; under load the frames fill.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use omniroute_protocol::{Judged, Order, Request, Response, MAX_ORDERS_PER_SUBMIT_BATCH};
use tokio::sync::oneshot;

use crate::{unexpected, ClientError, Decision, RequestStream};

type Answer = Result<Decision, ClientError>;

/// An order queued with where its answer goes.
type Waiting = (Order, oneshot::Sender<Answer>);

#[derive(Default)]
struct Queue {
    waiting: Vec<Waiting>,
    /// A batch is on the wire; what queues now waits for its answer.
    in_flight: bool,
}

#[derive(Clone)]
pub(crate) struct Batcher {
    queue: Arc<Mutex<Queue>>,
    stream: RequestStream,
    /// Frames sent so far (`Submit` or `SubmitBatch`).
    pub(crate) frames: Arc<AtomicU64>,
}

impl Batcher {
    pub(crate) fn new(stream: RequestStream) -> Batcher {
        Batcher {
            queue: Arc::default(),
            stream,
            frames: Arc::default(),
        }
    }

    /// Routes one order, in whichever batch it lands.
    pub(crate) async fn submit(&self, order: Order) -> Answer {
        let (caller, answer) = oneshot::channel();
        let first = {
            let mut queue = self.queue.lock().expect("batch queue lock");
            queue.waiting.push((order, caller));
            if queue.in_flight {
                None
            } else {
                queue.in_flight = true;
                Some(take(&mut queue.waiting))
            }
        };
        if let Some(batch) = first {
            tokio::spawn(self.clone().run(batch));
        }
        answer
            .await
            .map_err(|_| ClientError::Closed("the batch's sender went away".into()))?
    }

    /// Sends batches until the queue is empty.
    async fn run(self, mut batch: Vec<Waiting>) {
        loop {
            self.send(batch).await;
            let mut queue = self.queue.lock().expect("batch queue lock");
            if queue.waiting.is_empty() {
                queue.in_flight = false;
                return;
            }
            batch = take(&mut queue.waiting);
        }
    }

    /// One frame for the batch; each caller gets its own answer.
    async fn send(&self, batch: Vec<Waiting>) {
        let (orders, callers): (Vec<Order>, Vec<_>) = batch.into_iter().unzip();
        self.frames.fetch_add(1, Ordering::Relaxed);
        let request = if orders.len() == 1 {
            Request::Submit(orders.into_iter().next().expect("one order"))
        } else {
            Request::SubmitBatch(orders.into_iter().map(Ok).collect())
        };
        let answers: Vec<Answer> = match self.stream.request(&request).await {
            Ok(Response::Decision(decision)) => vec![Ok(decision)],
            Ok(Response::Decisions(entries)) if entries.len() == callers.len() => {
                entries.into_iter().map(judged).collect()
            }
            Ok(other) => vec![Err(unexpected(other)); callers.len()],
            Err(error) => vec![Err(error); callers.len()],
        };
        for (caller, answer) in callers.into_iter().zip(answers) {
            let _ = caller.send(answer);
        }
    }
}

/// One entry of a `Decisions` answer as a call's result.
pub(crate) fn judged(entry: Judged) -> Answer {
    match entry {
        Judged::Decision(decision) => Ok(decision),
        Judged::Error { code, message } => Err(ClientError::Server { code, message }),
    }
}

/// The next batch: the oldest queued, at most a frame's worth.
fn take(waiting: &mut Vec<Waiting>) -> Vec<Waiting> {
    let count = waiting.len().min(MAX_ORDERS_PER_SUBMIT_BATCH);
    waiting.drain(..count).collect()
}
