//! Everything the actors own, as plain core values: fresh from a config, or
//! rebuilt by recovery.

use std::sync::Arc;

use super::error::EngineError;
use super::settings::EngineSettings;
use crate::core::book::MAX_ROUTERS;
use crate::core::capacity::NodeLedger;
use crate::core::index::AvailabilityIndex;
use crate::core::model::NodeIdx;
use crate::core::network::Network;
use crate::core::router::RouterCore;
use crate::core::status::StatusFeed;
use crate::core::stock::StockShard;

/// Everything the actors own, as plain core values: fresh from a config,
/// or rebuilt by recovery from snapshots and the journal.
pub struct EngineState {
    pub index: Arc<AvailabilityIndex>,
    pub shards: Vec<StockShard>,
    pub ledgers: Vec<NodeLedger>,
    pub routers: Vec<RouterCore>,
    /// Every channel's status log.
    pub feed: StatusFeed,
}

impl EngineState {
    /// Empty shards and books; nodes with their configured online flag.
    pub fn fresh(
        settings: &EngineSettings,
        network: &Arc<Network>,
        now_ms: u64,
    ) -> Result<EngineState, EngineError> {
        if settings.routers == 0 || settings.routers as usize > MAX_ROUTERS {
            return Err(EngineError::Routers);
        }
        // Spare slots beyond the network: nodes a reload may add.
        let slots = crate::limits::node_slots(network.nodes.len());
        let index = Arc::new(AvailabilityIndex::with_slots(
            network.nodes.len(),
            slots,
            settings.max_skus,
        ));
        let shard_count = settings.shards.max(1);
        Ok(EngineState {
            shards: (0..shard_count)
                .map(|s| StockShard::new(s, shard_count, index.clone()))
                .collect(),
            ledgers: (0..slots)
                .map(|i| {
                    // A spare slot: offline, no capacity, until a node is added.
                    let (capacity, online) = network
                        .nodes
                        .get(i)
                        .map_or((0, false), |node| (node.daily_capacity, node.online));
                    NodeLedger::new(i as NodeIdx, capacity, online, index.clone(), now_ms)
                })
                .collect(),
            routers: EngineState::empty_routers(settings, network, &index),
            index,
            feed: StatusFeed::new(),
        })
    }

    /// `settings.routers` routers with empty books, planning on `index`.
    pub fn empty_routers(
        settings: &EngineSettings,
        network: &Arc<Network>,
        index: &Arc<AvailabilityIndex>,
    ) -> Vec<RouterCore> {
        let (routers, shards) = (settings.routers as usize, settings.shards.max(1));
        (0..routers)
            .map(|r| {
                let mut core = RouterCore::new(r, routers, network.clone(), index.clone(), shards);
                core.set_retention_ms(settings.order_retention_ms);
                core
            })
            .collect()
    }
}
