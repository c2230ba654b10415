//! After replay: the order books compared with the shards' reservations.

use super::Orphan;
use crate::core::book::router_of_order;
use crate::core::model::{NodeIdx, SkuId};
use crate::core::order::OrderRecord;
use crate::core::stock::{Bumped, StockShard};
use crate::engine::EngineState;

/// Compares every open order's units with its shards' reservations. A book
/// above its shard means a bump whose re-route was never journaled; a shard
/// above its book (or an order no book keeps open) would be a reservation
/// without an owner. Looks up the maps the state already has: no new index
/// of a million reservations on the restart path.
pub(crate) fn reconcile(state: &EngineState) -> (Vec<Bumped>, Vec<Orphan>) {
    let shard_count = state.shards.len() as u32;
    let shard_of = |sku: SkuId| &state.shards[StockShard::shard_of(sku, shard_count) as usize];
    let open_units = |order: &OrderRecord, sku: SkuId, node: NodeIdx| -> u32 {
        order
            .allocations
            .iter()
            .filter(|a| a.sku == sku && a.node == node)
            .map(|a| a.open)
            .sum()
    };
    let mut bumps = Vec::new();
    for router in &state.routers {
        for order in router.orders().filter(|o| o.state.is_open()) {
            for (i, a) in order.allocations.iter().enumerate() {
                let first = order.allocations[..i]
                    .iter()
                    .all(|b| (b.sku, b.node) != (a.sku, a.node));
                if !first {
                    continue;
                }
                let units = open_units(order, a.sku, a.node);
                let held = shard_of(a.sku).reserved_for(order.id, a.sku, a.node);
                if units > held {
                    bumps.push(Bumped {
                        order: order.id,
                        sku: a.sku,
                        node: a.node,
                        qty: units - held,
                    });
                }
            }
        }
    }
    let mut orphans = Vec::new();
    for shard in &state.shards {
        for (order, sku, node, qty) in shard.committed() {
            let r = router_of_order(order, state.routers.len());
            let book = state
                .routers
                .get(r)
                .and_then(|router| router.get(&crate::core::router::OrderRef::Id(order)).ok())
                .filter(|o| o.state.is_open())
                .map_or(0, |o| open_units(o, sku, node));
            if qty > book {
                orphans.push((order, sku, node, qty - book));
            }
        }
    }
    orphans.sort_unstable();
    bumps.sort_unstable_by_key(|b| (b.order, b.sku, b.node));
    (bumps, orphans)
}
