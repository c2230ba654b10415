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
    pub(super) fn apply(
        &mut self,
        record: &ReadRecord,
        arena: &[u8],
        events: &[Event],
        fresh: &[PreparedOrder],
        attempts: &[Attempt],
        plans: &mut [Option<Planned>],
    ) -> Result<(), ReplayError> {
        let (world, report) = (self.world, &mut *self.report);
        let open = &mut self.open;
        let failed = |cause: BadRecord| ReplayError::Record {
            lsn: record.lsn,
            cause,
        };
        for event in events {
            match event {
                Event::Stock(op) => world.stock(op.clone()),
                &Event::NodeOnline(node, online) => world.node_online(node, online),
                &Event::Close { order, shipped } => {
                    let Some(given) = open.get_mut(order) else {
                        return Err(failed(BadRecord::NeverPlaced(order)));
                    };
                    if let Some(given) = given.take() {
                        world.close(order, &given, shipped);
                        if shipped {
                            report.ships_applied += 1;
                        } else {
                            report.releases_applied += 1;
                        }
                    }
                }
            }
        }
        if fresh.is_empty() {
            return Ok(());
        }
        for ((new, attempt), made) in fresh.iter().zip(attempts).zip(plans.iter_mut()) {
            let holds = new
                .stamp
                .as_ref()
                .is_some_and(|stamp| stamp.holds(&world.index, &attempt.lines));
            if holds {
                report.plans_ahead_used += 1;
            } else {
                *made = None;
                report.plans_in_line += 1;
            }
        }
        // When every plan made ahead still holds and failed, those are the
        // placements (`unplanned`, as `place` would say): most orders for a
        // sold-out SKU end here, without a round through `place`, which
        // handles a record of mixed new orders the same way itself.
        let placements: Vec<Placement> = if plans.iter().all(|p| matches!(p, Some(Err(_)))) {
            attempts
                .iter()
                .zip(plans.iter_mut())
                .map(|(attempt, made)| {
                    let error = made.take().and_then(Result::err);
                    unplanned(attempt, error.expect("every plan failed, as checked"))
                })
                .collect()
        } else {
            world.place(attempts, plans)
        };
        for ((new, attempt), placement) in fresh.iter().zip(attempts).zip(&placements) {
            report.what_if.count(
                &world.network,
                attempt.ship_to,
                placement_outcome(placement),
            );
            if same_decision(&new.recorded, placement) {
                report.same_decisions += 1;
            } else {
                report.different_decisions += 1;
                if report.differences.len() < MAX_LISTED_DIFFERENCES {
                    // Rare, so the whole record is found and decoded for
                    // its story.
                    // SAFETY: the reader thread validated exactly these
                    // bytes as a `Txn` (`Reader::push`), and a batch is not
                    // written again until it is handed back.
                    let txn = unsafe {
                        rkyv::access_unchecked::<ArchivedTxn>(&arena[record.payload.clone()])
                    };
                    let archived = txn
                        .orders
                        .iter()
                        .find(|r| r.id.to_native() == attempt.order)
                        .ok_or_else(|| failed(BadRecord::NotInRecord(attempt.order)))?;
                    let whole = rkyv::deserialize::<OrderRecord, rkyv::rancor::Error>(archived)
                        .map_err(|cause| {
                            failed(BadRecord::Undecodable {
                                what: "order",
                                cause,
                            })
                        })?;
                    report.differences.push(format!(
                        "{}: {} -> {}",
                        whole.client_order_id,
                        describe(&world.network, outcome(&whole.decision())),
                        describe(&world.network, placement_outcome(placement))
                    ));
                }
            }
            if new.demand {
                // Nothing follows a rejected order: what the what-if gave it
                // stays taken.
                continue;
            }
            let given = match placement {
                Placement::Placed { allocations, .. } if !allocations.is_empty() => {
                    Some(allocations.iter().map(|a| (a.node, a.sku, a.qty)).collect())
                }
                _ => None,
            };
            if !open.insert(attempt.order, given) {
                return Err(failed(BadRecord::PlacedTwice(attempt.order)));
            }
        }
        Ok(())
    }
}
