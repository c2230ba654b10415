//! The state laid out again for other shard and router counts.

use std::sync::Arc;

use rkyv::rancor;

use super::StoreError;
use crate::core::book::router_of_order;
use crate::core::network::Network;
use crate::core::stock::{ShardImage, StockShard};
use crate::engine::{EngineSettings, EngineState};

/// The state laid out again for `settings`' shards and routers: stock
/// cells and reservations rehashed by SKU, orders moved to the router
/// their partition now belongs to.
pub(super) fn relayout(
    state: EngineState,
    settings: &EngineSettings,
    network: &Arc<Network>,
) -> Result<EngineState, StoreError> {
    let shard_count = settings.shards.max(1);
    // The same index: the counts in it do not move.
    let index = state.index.clone();
    let mut next = EngineState {
        shards: Vec::new(),
        ledgers: state.ledgers,
        routers: EngineState::empty_routers(settings, network, &index),
        index,
        feed: state.feed,
    };
    let images: Vec<ShardImage> = state.shards.iter().map(StockShard::image).collect();
    let rehashed = ShardImage::rehash(&images, shard_count);
    next.shards = rehashed
        .iter()
        .map(|image| {
            let bytes = rkyv::to_bytes::<rancor::Error>(image).expect("images always serialize");
            let archived = rkyv::access::<rkyv::Archived<ShardImage>, rancor::BoxedError>(&bytes)
                .expect("an image just serialized validates");
            StockShard::from_image(archived, next.index.clone())
        })
        .collect::<Result<_, _>>()?;
    let routers = next.routers.len();
    for router in state.routers {
        for order in router.into_orders() {
            let r = router_of_order(order.id, routers);
            next.routers[r].restore(order)?;
        }
    }
    Ok(next)
}
