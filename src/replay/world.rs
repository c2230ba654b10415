//! The what-if world: a core's shards, ledgers and index under the other
//! policy, and the orders open in it.

use std::future::Future;
use std::sync::Arc;

use futures::executor::block_on;
use smallvec::SmallVec;

use super::{BadRecord, REPLAY_NOW_MS, WHAT_IF_SHARDS};
use crate::config::ValidConfig;
use crate::core::book::{partition_of_order, PARTITIONS};
use crate::core::geo::GeoPoint;
use crate::core::index::AvailabilityIndex;
use crate::core::model::{NodeIdx, OrderId};
use crate::core::network::Network;
use crate::core::ops::{apply_node_op, apply_stock_op, NodeOp, StockOp};
use crate::core::order::ArchivedOrderRecord;
use crate::core::placement::{place_planned, Attempt, Placement, PlanContext};
use crate::core::policy::{Method, Plan, PlanError, PlanLine};
use crate::core::sim::LocalParticipants;
use crate::core::stock::StockShard;

/// The what-if world: the core's shards and ledgers as plain values.
pub(super) struct WhatIfWorld {
    pub(super) network: Arc<Network>,
    pub(super) index: Arc<AvailabilityIndex>,
    participants: LocalParticipants,
}

impl WhatIfWorld {
    pub(super) fn new(config: &ValidConfig, network: Network) -> WhatIfWorld {
        let index = Arc::new(AvailabilityIndex::new(
            network.nodes.len(),
            config.engine.max_skus,
        ));
        let participants = LocalParticipants::new(&network, &index, WHAT_IF_SHARDS, REPLAY_NOW_MS);
        WhatIfWorld {
            network: Arc::new(network),
            index,
            participants,
        }
    }

    /// Applies what the outside world did to stock: a count or a restock
    /// (the caller picks those out of each record). The shard is the
    /// world's own (the journal's may differ in count).
    pub(super) fn stock(&self, op: StockOp) {
        let Some(sku) = op.sku() else {
            return;
        };
        let shard = StockShard::shard_of(sku, WHAT_IF_SHARDS) as usize;
        let mut bumped = self.participants.bumped.borrow_mut();
        let _ = apply_stock_op(
            &mut self.participants.shards.borrow_mut()[shard],
            op,
            &mut bumped,
        );
        // A count that falls below what-if reservations takes them back;
        // the what-if does not route them again (see the module docs).
        bumped.clear();
    }

    /// A node went online or offline.
    pub(super) fn node_online(&self, node: NodeIdx, online: bool) {
        let ledger = &mut self.participants.nodes.borrow_mut()[node as usize];
        let _ = apply_node_op(ledger, NodeOp::Online(online));
    }

    /// Closes an order the record says was cancelled or expired (`shipped`
    /// false: its units go back) or has shipped (its units leave stock and
    /// its nodes' work is done), on the what-if allocation `given`.
    pub(super) fn close(&self, order: OrderId, given: &WhatIfUnits, shipped: bool) {
        let mut shards = self.participants.shards.borrow_mut();
        let mut bumped = self.participants.bumped.borrow_mut();
        let mut ledgers = self.participants.nodes.borrow_mut();
        for &(node, sku, qty) in given {
            let shard = StockShard::shard_of(sku, WHAT_IF_SHARDS) as usize;
            let (stock, work) = if shipped {
                (
                    StockOp::Ship {
                        order,
                        sku,
                        node,
                        qty,
                    },
                    NodeOp::Finish(order),
                )
            } else {
                (
                    StockOp::Release {
                        order,
                        sku,
                        node,
                        qty,
                    },
                    NodeOp::Release(order),
                )
            };
            // A count may have taken some of it back already: that part is
            // refused, the rest goes.
            let _ = apply_stock_op(&mut shards[shard], stock, &mut bumped);
            let _ = apply_node_op(&mut ledgers[node as usize], work);
        }
        bumped.clear();
    }

    pub(super) fn place(
        &self,
        attempts: &[Attempt],
        planned: &mut [Option<Planned>],
    ) -> Vec<Placement> {
        let context = PlanContext {
            network: &self.network,
            index: &self.index,
            shard_count: WHAT_IF_SHARDS,
        };
        // Polled where it is made: the future is over 1.5 KB, and
        // `block_on` moving it in was 8 % of the placer's time. Local
        // participants answer at once, so one poll ends it.
        let mut placing = std::pin::pin!(place_planned(
            &context,
            attempts,
            planned,
            REPLAY_NOW_MS,
            &self.participants,
        ));
        let mut waker = std::task::Context::from_waker(futures::task::noop_waker_ref());
        match placing.as_mut().poll(&mut waker) {
            std::task::Poll::Ready(placements) => placements,
            std::task::Poll::Pending => block_on(placing),
        }
    }
}

/// A plan made ahead, or why none can be.
pub(super) type Planned = Result<Plan, PlanError>;

/// What the what-if gave an open order: (node, sku, units) per allocation.
pub(super) type WhatIfUnits = SmallVec<[(NodeIdx, u32, u32); 2]>;

/// What the what-if did with each order seen so far. Order ids are dense per
/// partition (sequence × `PARTITIONS` + partition), so a table per partition indexed
/// by sequence replaces a hash map: growing a map of a million orders was a
/// tenth of a replay (rehashing and zeroing fresh pages). The table grows
/// by whole chunks, so nothing is ever copied.
#[derive(Default)]
pub(super) struct OpenOrders {
    /// Per partition, chunks of `OPEN_CHUNK` sequences.
    by_partition: Vec<Vec<Box<[WhatIfEntry]>>>,
}

/// One order in [`OpenOrders`]: None = not seen; Some(None) = seen, nothing
/// given (rejected, or closed since); Some(Some(g)) = what it holds.
pub(super) type WhatIfEntry = Option<Option<WhatIfUnits>>;

/// Sequences per chunk of [`OpenOrders`].
pub(super) const OPEN_CHUNK: usize = 1 << 16;

impl OpenOrders {
    fn slot(id: OrderId) -> (usize, usize, usize) {
        let sequence = (id / PARTITIONS as u64) as usize;
        (
            partition_of_order(id),
            sequence / OPEN_CHUNK,
            sequence % OPEN_CHUNK,
        )
    }

    pub(super) fn get_mut(&mut self, id: OrderId) -> Option<&mut Option<WhatIfUnits>> {
        let (partition, chunk, at) = Self::slot(id);
        self.by_partition.get_mut(partition)?.get_mut(chunk)?[at].as_mut()
    }

    /// Records what `id` was given; false if it had been placed before.
    pub(super) fn insert(&mut self, id: OrderId, given: Option<WhatIfUnits>) -> bool {
        let (partition, chunk, at) = Self::slot(id);
        if self.by_partition.len() <= partition {
            self.by_partition.resize_with(partition + 1, Vec::new);
        }
        let chunks = &mut self.by_partition[partition];
        while chunks.len() <= chunk {
            chunks.push((0..OPEN_CHUNK).map(|_| None).collect());
        }
        chunks[chunk][at].replace(given).is_none()
    }
}

/// The attempt a journaled new order makes under the what-if policy.
pub(super) fn attempt(
    record: &ArchivedOrderRecord,
    ship_to: GeoPoint,
) -> Result<Attempt, BadRecord> {
    let undecodable = |what| move |cause| BadRecord::Undecodable { what, cause };
    let lines = record
        .lines
        .iter()
        .map(rkyv::deserialize::<PlanLine, rkyv::rancor::Error>)
        .collect::<Result<_, _>>()
        .map_err(undecodable("line"))?;
    Ok(Attempt {
        order: record.id.to_native(),
        lines,
        ship_to,
        market: record.market.as_ref().map(|m| m.to_native()),
        method: rkyv::deserialize::<Method, rkyv::rancor::Error>(&record.method)
            .map_err(undecodable("method"))?,
        channel: record.channel.to_native(),
        excluded: SmallVec::new(),
    })
}

pub(super) fn ship_to(record: &ArchivedOrderRecord) -> Result<GeoPoint, BadRecord> {
    let (lat, lon) = (record.ship_to.0.to_native(), record.ship_to.1.to_native());
    GeoPoint::new(lat, lon).ok_or(BadRecord::BadShipTo {
        order: record.id.to_native(),
        lat,
        lon,
    })
}
