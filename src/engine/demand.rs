//! Rejected orders journaled as demand for `omniroute replay`: gathered in
//! runs and appended only when the journal's queue has room now, so that
//! no answer waits on them and none is held up by them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use super::router::MAX_PENDING_DEMAND_ORDERS;
use super::sequencer::{Sequencer, Txn, KIND_DEMAND, KIND_DEMAND_LOST};
use crate::core::order::OrderRecord;
use crate::telemetry::EngineMetrics;

/// Journals `demand` if the journal's queue has room. Demand that found no
/// room is counted in `lost`, and the count journaled once there is room,
/// so the replay knows what it misses.
pub(super) fn journal_demand(
    sequencer: &Sequencer,
    demand: Vec<OrderRecord>,
    lost: &mut u64,
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
    let txn = Txn {
        orders: demand,
        ..Txn::default()
    };
    if *lost > 0 || !sequencer.try_append_unawaited(KIND_DEMAND, || txn.encode()) {
        *lost += count;
        metrics.demand_lost.increment(count);
    }
}

/// The demand of orders the sessions answered themselves (sold out by the
/// index), gathered across sessions: a lock held for a push, never across
/// an await.
#[derive(Default)]
pub(super) struct SessionDemand {
    pending: Mutex<Vec<OrderRecord>>,
    lost: AtomicU64,
    /// Ids given out so far, counted down from `u64::MAX`.
    given: AtomicU64,
}

impl SessionDemand {
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
        journal_demand(sequencer, demand, &mut lost, metrics);
        self.lost.fetch_add(lost, Ordering::AcqRel);
    }
}
