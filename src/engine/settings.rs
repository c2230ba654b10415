//! The engine's sizes, from `[engine]` in the config.

/// Sizes of the engine, from `[engine]` in the config.
#[derive(Clone, Debug, PartialEq)]
pub struct EngineSettings {
    pub shards: u32,
    pub routers: u32,
    pub max_skus: usize,
    /// Orders (and other requests) admitted at once; beyond this, callers
    /// wait or, with the `try_` methods, are told `Overloaded`.
    pub max_inflight: u32,
    /// How often the expiry timer runs; 0 disables it (tests call `tick`).
    pub expiry_tick_ms: u64,
    /// How long a closed order stays in memory (`[orders] retention_ms`).
    pub order_retention_ms: u64,
    /// Rejected orders journaled as demand per second at most
    /// (`[journal] max_demand_orders_per_s`); the rest are counted.
    pub max_demand_orders_per_s: u64,
}

impl EngineSettings {
    /// The shards and routers a data directory's snapshots are written
    /// for (at least one shard).
    pub fn layout(&self) -> crate::schema::Layout {
        crate::schema::Layout {
            shards: self.shards.max(1),
            routers: self.routers,
        }
    }
}

impl Default for EngineSettings {
    fn default() -> EngineSettings {
        EngineSettings {
            shards: 4,
            routers: 4,
            max_skus: 1 << 18,
            max_inflight: 65_536,
            expiry_tick_ms: 100,
            order_retention_ms: crate::limits::DEFAULT_ORDER_RETENTION_MS,
            max_demand_orders_per_s: crate::limits::DEFAULT_MAX_DEMAND_ORDERS_PER_S,
        }
    }
}
