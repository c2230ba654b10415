//! Rejected orders journaled as demand for `omniroute replay`: gathered in
//! runs and appended only when the journal's queue has room now, so that
//! no answer waits on them and none is held up by them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::router::MAX_PENDING_DEMAND_ORDERS;
use super::sequencer::{Sequencer, Txn, KIND_DEMAND, KIND_DEMAND_LOST};
use crate::core::order::OrderRecord;
use crate::telemetry::EngineMetrics;

/// How many rejected orders a second may be journaled as demand, across
/// the routers and the sessions (`[journal] max_demand_orders_per_s`).
/// A sold-out flash sale rejects orders as fast as buyers send them; all
/// of them journaled is about 11 MB/s at 64 000 orders/s, which a cluster
/// replicates and fsyncs on every replica, and which `keep_segments` keeps
/// forever. Past the budget they are counted, as demand without room is.
///
/// A bucket of `per_s` orders that refills continuously (so a flood's
/// sample spreads over each second, not its first milliseconds), on a
/// monotonic clock (a wall clock stepped back would refill it).
pub(super) struct DemandBudget {
    per_s: u64,
    started: std::time::Instant,
    /// (milliseconds since `started` when last refilled, thousandths of
    /// an order in the bucket)
    bucket: Mutex<(u64, u64)>,
}

impl DemandBudget {
    pub(super) fn new(per_s: u64) -> DemandBudget {
        DemandBudget {
            per_s,
            started: std::time::Instant::now(),
            bucket: Mutex::new((0, per_s.saturating_mul(1000))),
        }
    }

    /// Milliseconds on the budget's clock.
    pub(super) fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// How many of `count` orders may be journaled at `now_ms`.
    pub(super) fn take(&self, count: u64, now_ms: u64) -> u64 {
        let mut bucket = self.bucket.lock().expect("demand budget lock");
        let elapsed_ms = now_ms.saturating_sub(bucket.0);
        bucket.0 = bucket.0.max(now_ms);
        bucket.1 = self.full().min(
            bucket
                .1
                .saturating_add(elapsed_ms.saturating_mul(self.per_s)),
        );
        let granted = count.min(bucket.1 / 1000);
        bucket.1 -= granted * 1000;
        granted
    }

    /// Gives back orders granted but not journaled (the queue was full).
    pub(super) fn refund(&self, count: u64) {
        let mut bucket = self.bucket.lock().expect("demand budget lock");
        bucket.1 = self
            .full()
            .min(bucket.1.saturating_add(count.saturating_mul(1000)));
    }

    /// A full bucket, in thousandths of an order: one second's worth.
    fn full(&self) -> u64 {
        self.per_s.saturating_mul(1000)
    }
}

/// Journals `demand` if the budget allows and the journal's queue has
/// room. Demand that did not go in is counted in `lost`, and the count
/// journaled once there is room, so the replay knows what it misses.
pub(super) fn journal_demand(
    sequencer: &Sequencer,
    mut demand: Vec<OrderRecord>,
    lost: &mut u64,
    budget: &DemandBudget,
    metrics: &EngineMetrics,
) {
    // Even with no demand now: at a stop this is the last chance.
    if *lost > 0 {
        let count = *lost;
        if sequencer.try_append_unawaited(KIND_DEMAND_LOST, || count.to_le_bytes().to_vec()) {
            *lost = 0;
        }
    }
    if demand.is_empty() {
        return;
    }
    let count = demand.len() as u64;
    // Behind a count not journaled yet, nothing goes in before it.
    let granted = if *lost > 0 {
        0
    } else {
        budget.take(count, budget.now_ms())
    };
    demand.truncate(granted as usize);
    let journaled = !demand.is_empty() && {
        let txn = Txn {
            orders: demand,
            ..Txn::default()
        };
        sequencer.try_append_unawaited(KIND_DEMAND, || txn.encode())
    };
    if !journaled {
        budget.refund(granted);
    }
    let missed = if journaled { count - granted } else { count };
    if missed > 0 {
        *lost += missed;
        metrics.demand_lost.increment(missed);
    }
}

/// The demand of orders the sessions answered themselves (sold out by the
/// index), gathered across sessions: a lock held for a push, never across
/// an await.
pub(super) struct SessionDemand {
    pending: Mutex<Vec<OrderRecord>>,
    lost: AtomicU64,
    /// Ids given out so far, counted down from `u64::MAX`.
    given: AtomicU64,
    /// Shared with the routers.
    budget: Arc<DemandBudget>,
}

impl SessionDemand {
    pub(super) fn new(budget: Arc<DemandBudget>) -> SessionDemand {
        SessionDemand {
            pending: Mutex::default(),
            lost: AtomicU64::new(0),
            given: AtomicU64::new(0),
            budget,
        }
    }

    /// Keeps `records`; journals what is gathered once there are
    /// [`MAX_PENDING_DEMAND_ORDERS`], on the caller's task.
    pub(super) fn push(
        &self,
        records: impl IntoIterator<Item = OrderRecord>,
        sequencer: &Sequencer,
        metrics: &EngineMetrics,
    ) {
        let full = {
            let mut pending = self.pending.lock().expect("demand lock");
            pending.extend(records);
            (pending.len() >= MAX_PENDING_DEMAND_ORDERS).then(|| std::mem::take(&mut *pending))
        };
        if let Some(demand) = full {
            self.journal(demand, sequencer, metrics);
        }
    }

    /// Journals whatever is gathered (the expiry tick and the stop).
    pub(super) fn flush(&self, sequencer: &Sequencer, metrics: &EngineMetrics) {
        let demand = std::mem::take(&mut *self.pending.lock().expect("demand lock"));
        self.journal(demand, sequencer, metrics);
    }

    fn journal(
        &self,
        mut demand: Vec<OrderRecord>,
        sequencer: &Sequencer,
        metrics: &EngineMetrics,
    ) {
        // No router gave these an id. The replay treats demand as new
        // orders but keys what it places for them by id: each gets its own,
        // from the top of the id space, where no order's sequence reaches
        // (a book's stays below u32::MAX).
        let first = self.given.fetch_add(demand.len() as u64, Ordering::Relaxed);
        for (i, record) in demand.iter_mut().enumerate() {
            record.id = u64::MAX - first - i as u64;
        }
        let mut lost = self.lost.swap(0, Ordering::AcqRel);
        journal_demand(sequencer, demand, &mut lost, &self.budget, metrics);
        self.lost.fetch_add(lost, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::model::OrderState;
    use crate::journal::{recover, Durability, Journal, DEFAULT_SEGMENT_BYTES};

    fn rejected_order() -> OrderRecord {
        OrderRecord {
            id: 1,
            fingerprint: 0,
            expires_at_ms: 0,
            client_order_id: Arc::from("o"),
            lines: Box::new([]),
            ship_to: (0.0, 0.0),
            allocations: smallvec::SmallVec::new(),
            extra: None,
            key_next: 0,
            channel: 0,
            market: None,
            method: crate::core::policy::Method::Ship,
            state: OrderState::Rejected,
            created_s: 0,
        }
    }

    #[test]
    fn the_budget_grants_its_orders_per_second_refilling_as_time_passes() {
        // Proves the bucket starts full, never grants past what it holds, refills at its
        // rate up to one second's worth, takes back a refund, and that neither a clock
        // read out of order nor a zero budget grants anything extra.
        let budget = DemandBudget::new(300);
        assert_eq!(budget.take(256, 0), 256);
        assert_eq!(budget.take(256, 0), 44);
        assert_eq!(budget.take(10, 0), 0);
        assert_eq!(budget.take(256, 500), 150);
        assert_eq!(budget.take(10, 400), 0);
        budget.refund(20);
        assert_eq!(budget.take(256, 500), 20);
        assert_eq!(budget.take(1_000, 60_000), 300);
        assert_eq!(DemandBudget::new(0).take(1, 10_000), 0);
    }

    #[test]
    fn demand_past_the_budget_is_counted_and_the_count_journaled() {
        // Proves orders past the budget are not journaled as demand but
        // counted, and that the count goes into the journal at the next
        // call, so the replay knows what it misses.
        let dir = crate::scratch::Scratch::new("demand-budget");
        let journal =
            Journal::start(&dir.0, 1, Durability::Fsync, DEFAULT_SEGMENT_BYTES).expect("journal");
        let sequencer = Sequencer::Journal(journal);
        let network = crate::core::network::Network::new(Vec::new(), Vec::new(), Vec::new());
        let metrics = EngineMetrics::new(&network);
        let budget = DemandBudget::new(3);
        let mut lost = 0;
        let demand = vec![rejected_order(); 5];
        journal_demand(&sequencer, demand, &mut lost, &budget, &metrics);
        assert_eq!(lost, 2);
        journal_demand(&sequencer, Vec::new(), &mut lost, &budget, &metrics);
        assert_eq!(lost, 0);
        sequencer.journal().expect("a journal").close();
        let records = recover(&dir.0, 0).expect("recover").records;
        let kinds: Vec<u8> = records.iter().map(|r| r.kind).collect();
        assert_eq!(kinds, [KIND_DEMAND, KIND_DEMAND_LOST]);
        let demand = Txn::decode(&records[0].payload).expect("a demand record");
        assert_eq!(demand.orders.len(), 3);
        assert_eq!(records[1].payload, 2u64.to_le_bytes());
    }
}
