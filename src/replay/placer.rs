//! The placer: applies each record's events in LSN order and places its
//! new orders, using a plan made ahead only while its stamp holds.

use super::reader::{Batch, Event, PreparedOrder, ReadRecord};
use super::report::{describe, outcome, placement_outcome, same_decision, Report};
use super::world::{OpenOrders, Planned, WhatIfWorld};
use super::{BadRecord, ReplayError, MAX_LISTED_DIFFERENCES};
use crate::core::order::OrderRecord;
use crate::core::placement::{unplanned, Attempt, Placement};
use crate::engine::sequencer::{ArchivedTxn, KIND_POLICY};

/// The what-if world and its side's counts, fed record by record.
pub(super) struct Placer<'a> {
    pub(super) world: &'a WhatIfWorld,
    /// What the what-if gave each order so far (None: nothing).
    pub(super) open: OpenOrders,
    pub(super) report: &'a mut Report,
}

impl Placer<'_> {
    pub(super) fn apply_batch(&mut self, batch: &mut Batch) -> Result<(), ReplayError> {
        let Batch {
            arena,
            records,
            fresh,
            attempts,
            plans,
            events,
        } = batch;
        for record in records.iter() {
            if record.kind == KIND_POLICY {
                self.report.recorded_policy_reloads += 1;
                continue;
            }
            let new = record.fresh.clone();
            self.apply(
                record,
                arena,
                &events[record.events.clone()],
                &fresh[new.clone()],
                &attempts[new.clone()],
                &mut plans[new],
            )?;
        }
        Ok(())
    }

    /// Applies one record to the what-if world, in LSN order (its `events`,
    /// as the reader found them), and places its new orders (`fresh`, as
    /// the reader prepared them). The record's bytes in `arena` are read
    /// only to tell the story of a difference.
    fn apply(
        &mut self,
        record: &ReadRecord,
        arena: &[u8],
        events: &[Event],
        fresh: &[PreparedOrder],
        attempts: &[Attempt],
        plans: &mut [Option<Planned>],
    ) -> Result<(), ReplayError> {
        let failed = |cause: BadRecord| ReplayError::Record {
            lsn: record.lsn,
            cause,
        };
        self.apply_events(events).map_err(failed)?;
        if fresh.is_empty() {
            return Ok(());
        }
        self.keep_plans_that_hold(fresh, attempts, plans);
        let placements = self.place(attempts, plans);
        for ((new, attempt), placement) in fresh.iter().zip(attempts).zip(&placements) {
            self.count(record, arena, new, attempt, placement)
                .map_err(failed)?;
        }
        Ok(())
    }

    /// The outside world's changes of one record, in order.
    fn apply_events(&mut self, events: &[Event]) -> Result<(), BadRecord> {
        for event in events {
            match event {
                Event::Stock(op) => self.world.stock(op.clone()),
                &Event::NodeOnline(node, online) => self.world.node_online(node, online),
                &Event::Close { order, shipped } => {
                    let Some(given) = self.open.get_mut(order) else {
                        return Err(BadRecord::NeverPlaced(order));
                    };
                    if let Some(given) = given.take() {
                        self.world.close(order, &given, shipped);
                        if shipped {
                            self.report.ships_applied += 1;
                        } else {
                            self.report.releases_applied += 1;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Drops each plan made ahead whose stamp no longer holds (it is made
    /// again in line), counting both.
    fn keep_plans_that_hold(
        &mut self,
        fresh: &[PreparedOrder],
        attempts: &[Attempt],
        plans: &mut [Option<Planned>],
    ) {
        for ((new, attempt), made) in fresh.iter().zip(attempts).zip(plans.iter_mut()) {
            let holds = new
                .stamp
                .as_ref()
                .is_some_and(|stamp| stamp.holds(&self.world.index, &attempt.lines));
            if holds {
                self.report.plans_ahead_used += 1;
            } else {
                *made = None;
                self.report.plans_in_line += 1;
            }
        }
    }

    /// When every plan made ahead still holds and failed, those are the
    /// placements (`unplanned`, as `place` would say): most orders for a
    /// sold-out SKU end here, without a round through `place`, which
    /// handles a record of mixed new orders the same way itself.
    fn place(&self, attempts: &[Attempt], plans: &mut [Option<Planned>]) -> Vec<Placement> {
        if plans.iter().all(|p| matches!(p, Some(Err(_)))) {
            attempts
                .iter()
                .zip(plans.iter_mut())
                .map(|(attempt, made)| {
                    let error = made.take().and_then(Result::err);
                    unplanned(attempt, error.expect("every plan failed, as checked"))
                })
                .collect()
        } else {
            self.world.place(attempts, plans)
        }
    }

    /// Counts one new order's what-if outcome against the recorded one,
    /// and keeps what it was given for its follow-ups.
    fn count(
        &mut self,
        record: &ReadRecord,
        arena: &[u8],
        new: &PreparedOrder,
        attempt: &Attempt,
        placement: &Placement,
    ) -> Result<(), BadRecord> {
        let report = &mut *self.report;
        report.what_if.count(
            &self.world.network,
            attempt.ship_to,
            placement_outcome(placement),
        );
        if same_decision(&new.recorded, placement) {
            report.same_decisions += 1;
        } else {
            report.different_decisions += 1;
            if report.differences.len() < MAX_LISTED_DIFFERENCES {
                let story = self.difference(record, arena, attempt, placement)?;
                self.report.differences.push(story);
            }
        }
        if new.demand {
            // Nothing follows a rejected order: what the what-if gave it
            // stays taken.
            return Ok(());
        }
        let given = match placement {
            Placement::Placed { allocations, .. } if !allocations.is_empty() => {
                Some(allocations.iter().map(|a| (a.node, a.sku, a.qty)).collect())
            }
            _ => None,
        };
        if !self.open.insert(attempt.order, given) {
            return Err(BadRecord::PlacedTwice(attempt.order));
        }
        Ok(())
    }

    /// "key: recorded -> what-if" for a listed difference. Rare, so the
    /// whole record is found and decoded for its story.
    fn difference(
        &self,
        record: &ReadRecord,
        arena: &[u8],
        attempt: &Attempt,
        placement: &Placement,
    ) -> Result<String, BadRecord> {
        // SAFETY: the reader thread validated exactly these bytes as a
        // `Txn` (`Reader::push`), and a batch is not written again until it
        // is handed back.
        let txn = unsafe { rkyv::access_unchecked::<ArchivedTxn>(&arena[record.payload.clone()]) };
        let archived = txn
            .orders
            .iter()
            .find(|r| r.id.to_native() == attempt.order)
            .ok_or(BadRecord::NotInRecord(attempt.order))?;
        let whole =
            rkyv::deserialize::<OrderRecord, rkyv::rancor::Error>(archived).map_err(|cause| {
                BadRecord::Undecodable {
                    what: "order",
                    cause,
                }
            })?;
        let network = &self.world.network;
        Ok(format!(
            "{}: {} -> {}",
            whole.client_order_id,
            describe(network, outcome(&whole.decision())),
            describe(network, placement_outcome(placement))
        ))
    }
}
