//! The reader thread: checks each journal record in place, counts the
//! recorded side, lists the events it makes the what-if world do, and
//! plans new orders ahead with a stamp.

use std::path::Path;

use super::report::{recorded_outcome, OutcomeCounts};
use super::world::{attempt, ship_to, Planned};
use super::{BadRecord, ReplayError};
use crate::core::book::{partition_of_order, PARTITIONS};
use crate::core::index::AvailabilityIndex;
use crate::core::model::{ArchivedOrderState, NodeIdx, OrderId};
use crate::core::network::Network;
use crate::core::ops::{ArchivedNodeOp, ArchivedStockOp, StockOp};
use crate::core::order::{ArchivedOrderRecord, RecordedDecision};
use crate::core::placement::Attempt;
use crate::core::policy::{plan, PlanStamp};
use crate::engine::sequencer::{
    ArchivedTxn, SharedSeen, Txn, KIND_DEMAND, KIND_DEMAND_LOST, KIND_POLICY, KIND_TXN,
};
use crate::journal::RecordFormat;
use crate::journal::VisitError;

/// One record the reader has checked.
pub(super) struct ReadRecord {
    pub(super) lsn: u64,
    pub(super) kind: u8,
    /// The payload's place in the batch's arena (empty for a policy record).
    pub(super) payload: std::ops::Range<usize>,
    /// Its new orders' place in the batch's `fresh`, `attempts` and `plans`.
    pub(super) fresh: std::ops::Range<usize>,
    /// What it asks of the what-if world before its new orders are placed:
    /// its place in the batch's `events`.
    pub(super) events: std::ops::Range<usize>,
}

/// What a record makes the what-if world do, in record order, as the
/// reader found it: the placer then never reads the record itself (its
/// bytes were written on the reader's core, and walking them was most of
/// applying), and skips the follow-ups that change nothing (confirms,
/// partial shipments), which it used to look up one by one.
pub(super) enum Event {
    /// A count or restock from the outside world.
    Stock(StockOp),
    NodeOnline(NodeIdx, bool),
    /// A recorded cancel or expiry (`shipped` false) or completed shipment
    /// of an order seen before.
    Close {
        order: OrderId,
        shipped: bool,
    },
}

/// A new order as the reader prepared it (its id and ship-to are its
/// attempt's, kept beside it in the batch).
pub(super) struct PreparedOrder {
    pub(super) recorded: RecordedDecision,
    /// Taken before its plan was made ahead (None: none was).
    pub(super) stamp: Option<PlanStamp>,
    /// A rejected order's demand record: it has no follow-ups.
    pub(super) demand: bool,
}

/// Records the reader thread has checked: each `Txn` payload copied to a
/// 16-aligned offset of `arena` (rkyv's alignment) and validated there,
/// and each new order prepared for placing.
#[derive(Default)]
pub(super) struct Batch {
    pub(super) arena: rkyv::util::AlignedVec<16>,
    pub(super) records: Vec<ReadRecord>,
    pub(super) fresh: Vec<PreparedOrder>,
    /// One per fresh order; contiguous per record, as placing takes them.
    pub(super) attempts: Vec<Attempt>,
    pub(super) plans: Vec<Option<Planned>>,
    pub(super) events: Vec<Event>,
}

impl Batch {
    pub(super) fn emptied(mut self) -> Batch {
        self.arena.clear();
        self.records.clear();
        self.fresh.clear();
        self.attempts.clear();
        self.plans.clear();
        self.events.clear();
        self
    }
}

/// Orders the reader has seen, by the same dense slots as [`OpenOrders`]:
/// the first record of an order is its submit.
#[derive(Default)]
pub(super) struct SeenOrders {
    /// Per partition, one bit per sequence.
    by_partition: Vec<Vec<u64>>,
}

impl SeenOrders {
    /// True the first time `id` is seen.
    fn first_sight(&mut self, id: OrderId) -> bool {
        let (partition, sequence) = (partition_of_order(id), (id / PARTITIONS as u64) as usize);
        if self.by_partition.len() <= partition {
            self.by_partition.resize_with(partition + 1, Vec::new);
        }
        let bits = &mut self.by_partition[partition];
        let (word, bit) = (sequence / 64, 1u64 << (sequence % 64));
        if bits.len() <= word {
            bits.resize(word + 1, 0);
        }
        let first = bits[word] & bit == 0;
        bits[word] |= bit;
        first
    }
}

/// What the reader thread came to.
pub(super) struct ReaderOutcome {
    pub(super) summary: Result<crate::journal::ReadSummary, crate::journal::JournalError>,
    /// The first LSN, if the journal does not start at 1.
    pub(super) incomplete: Option<u64>,
    /// A record the reader could not prepare.
    pub(super) failed: Option<ReplayError>,
    pub(super) recorded: OutcomeCounts,
    pub(super) demand_missing: u64,
}

/// The reader thread's state: it reads ahead of the placer and plans ahead
/// against the what-if index, which the placer is changing meanwhile.
pub(super) struct Reader<'a> {
    pub(super) network: &'a Network,
    pub(super) recorded_network: &'a Network,
    pub(super) index: &'a AvailabilityIndex,
    pub(super) seen: SeenOrders,
    /// Validation's shared-pointer list, kept from record to record.
    pub(super) shared: SharedSeen,
    /// The recorded side is counted here, off the placer's thread.
    pub(super) recorded: OutcomeCounts,
    pub(super) failed: Option<ReplayError>,
    /// Rejected orders the journal says it has no demand record of.
    pub(super) demand_missing: u64,
    /// How the journal's records are laid out (a directory of an older
    /// format is read as it is: the replay never upgrades it).
    pub(super) format: RecordFormat,
}

impl Reader<'_> {
    /// Reads and prepares the journal into batches of `batch_records`, in
    /// LSN order, handing each full one to `hand_over`, which gives back an
    /// empty one to fill, or None when the placer has stopped.
    pub(super) fn run(
        mut self,
        dir: &Path,
        batch_records: usize,
        mut hand_over: impl FnMut(Batch) -> Option<Batch>,
    ) -> ReaderOutcome {
        let mut incomplete = None;
        let mut first = true;
        let format = self.format;
        let mut batch = Batch::default();
        let summary = crate::journal::read(dir, format, |lsn, kind, payload| {
            if first {
                first = false;
                if lsn != 1 {
                    incomplete = Some(lsn);
                    return Err(VisitError::Stopped);
                }
            }
            if kind == KIND_DEMAND_LOST {
                let count = <[u8; 8]>::try_from(payload).map_err(|_| {
                    VisitError::BadPayload(format!(
                        "LSN {lsn}: a lost-demand record of {} bytes",
                        payload.len()
                    ))
                })?;
                self.demand_missing += u64::from_le_bytes(count);
                return Ok(());
            }
            if !matches!(kind, KIND_TXN | KIND_POLICY | KIND_DEMAND) {
                return Ok(());
            }
            if let Err(e) = self.push(&mut batch, lsn, kind, payload) {
                self.failed = Some(e);
                return Err(VisitError::Stopped);
            }
            if batch.records.len() == batch_records {
                batch = hand_over(std::mem::take(&mut batch)).ok_or(VisitError::Stopped)?;
            }
            Ok(())
        });
        if summary.is_ok() && !batch.records.is_empty() {
            let _ = hand_over(batch);
        }
        ReaderOutcome {
            summary,
            incomplete,
            failed: self.failed,
            recorded: self.recorded,
            demand_missing: self.demand_missing,
        }
    }

    /// Adds a record the replay reads, with its new orders prepared. A
    /// `Txn` that does not validate is an error (the journal's checksums
    /// passed, so it is not torn: corrupt).
    fn push(
        &mut self,
        batch: &mut Batch,
        lsn: u64,
        kind: u8,
        payload: &[u8],
    ) -> Result<(), ReplayError> {
        let failed = |cause: BadRecord| ReplayError::Record { lsn, cause };
        let Batch {
            arena,
            records,
            fresh,
            attempts,
            plans,
            events,
        } = batch;
        let (first_fresh, first_event) = (fresh.len(), events.len());
        let place = if kind == KIND_TXN || kind == KIND_DEMAND {
            let start = arena.len().next_multiple_of(16);
            arena.resize(start, 0);
            arena.extend_from_slice(payload);
            let txn = Txn::validate_with(&arena[start..], &mut self.shared)
                .map_err(|e| failed(e.into()))?;
            self.events(txn, events).map_err(failed)?;
            for record in txn.orders.iter() {
                let id = record.id.to_native();
                // Demand is always new, and its id is not an order's (an
                // id a rejected order used may be given out again after a
                // restart).
                if kind == KIND_DEMAND {
                    let (new, attempt, made) = self.prepare(record).map_err(failed)?;
                    fresh.push(PreparedOrder {
                        demand: true,
                        ..new
                    });
                    attempts.push(attempt);
                    plans.push(made);
                } else if self.seen.first_sight(id) {
                    let (new, attempt, made) = self.prepare(record).map_err(failed)?;
                    fresh.push(new);
                    attempts.push(attempt);
                    plans.push(made);
                } else {
                    let shipped = match record.state {
                        ArchivedOrderState::Cancelled | ArchivedOrderState::Expired => false,
                        ArchivedOrderState::Shipped => true,
                        _ => continue,
                    };
                    events.push(Event::Close { order: id, shipped });
                }
            }
            start..arena.len()
        } else {
            0..0
        };
        records.push(ReadRecord {
            lsn,
            kind,
            payload: place,
            fresh: first_fresh..fresh.len(),
            events: first_event..events.len(),
        });
        Ok(())
    }

    /// Interns the SKUs a record added (here, in LSN order, so that the
    /// plans made ahead know them) and lists what the outside world did:
    /// stock counts, restocks from returns, nodes going on and offline.
    /// The recorded decisions' own ops (reserve, release, ...) are the
    /// recorded side, not the what-if's.
    fn events(&self, txn: &ArchivedTxn, events: &mut Vec<Event>) -> Result<(), BadRecord> {
        for pair in txn.skus.iter() {
            let (id, name) = (pair.0.to_native(), pair.1.as_str());
            let got = self.index.intern(name)?;
            if got != id {
                return Err(BadRecord::SkuMoved {
                    name: name.to_string(),
                    id,
                    got,
                });
            }
        }
        for pair in txn.stock.iter() {
            if matches!(
                pair.1,
                ArchivedStockOp::Set { .. }
                    | ArchivedStockOp::Adjust { .. }
                    | ArchivedStockOp::Restock { .. }
            ) {
                let op = rkyv::deserialize::<StockOp, rkyv::rancor::Error>(&pair.1).map_err(
                    |cause| BadRecord::Undecodable {
                        what: "stock op",
                        cause,
                    },
                )?;
                events.push(Event::Stock(op));
            }
        }
        for pair in txn.nodes.iter() {
            if let ArchivedNodeOp::Online(online) = &pair.1 {
                events.push(Event::NodeOnline(pair.0.to_native(), *online));
            }
        }
        Ok(())
    }

    /// Counts a new order's recorded decision and plans its first try
    /// under the what-if policy, stamped.
    fn prepare(
        &mut self,
        record: &ArchivedOrderRecord,
    ) -> Result<(PreparedOrder, Attempt, Option<Planned>), BadRecord> {
        let point = ship_to(record)?;
        let attempt = attempt(record, point)?;
        let recorded = record.recorded_decision()?;
        self.recorded
            .count(self.recorded_network, point, recorded_outcome(&recorded));
        let policy = self.network.policy(attempt.channel);
        let stamp = PlanStamp::take(policy, self.index, &attempt.lines);
        // The stamp is taken first: a count that changes while planning
        // changes the stamp's versions too.
        let made = stamp.as_ref().map(|_| {
            let request = attempt.request(&attempt.excluded, false);
            plan(self.network, policy, self.index, &request)
        });
        let new = PreparedOrder {
            recorded,
            stamp,
            demand: false,
        };
        Ok((new, attempt, made))
    }
}
