//! Sample traffic against the sample network: orders from the four markets'
//! cities for random SKUs. Used by `omniroute demo`, the benches and tests.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::config::ValidConfig;
use crate::core::model::{FulfilmentMethod, LineRequest, OrderRequest, ShipTo};
use crate::core::sim::LocalEngine;
use crate::engine::StockUpdate;

/// Customer locations: (lat, lon, market) of a few cities per market.
const CUSTOMERS: &[(f64, f64, &str)] = &[
    (52.52, 13.40, "DE"),
    (48.14, 11.58, "DE"),
    (50.94, 6.96, "DE"),
    (53.55, 10.00, "DE"),
    (48.86, 2.35, "FR"),
    (45.76, 4.84, "FR"),
    (43.30, 5.37, "FR"),
    (51.51, -0.13, "UK"),
    (53.48, -2.24, "UK"),
    (55.95, -3.19, "UK"),
    (52.37, 4.90, "NL"),
    (51.92, 4.48, "NL"),
];

pub struct SampleOrders {
    rng: StdRng,
    skus: usize,
    sku_prefix: String,
    channel: String,
    next_id: u64,
    id_prefix: String,
}

impl SampleOrders {
    /// Orders for SKUs `prefix1..=prefix{skus}` on `channel`; ids are
    /// `{id_prefix}{n}` so that several generators never collide.
    pub fn new(
        seed: u64,
        skus: usize,
        sku_prefix: &str,
        channel: &str,
        id_prefix: &str,
    ) -> SampleOrders {
        SampleOrders {
            rng: StdRng::seed_from_u64(seed),
            skus,
            sku_prefix: sku_prefix.into(),
            channel: channel.into(),
            next_id: 1,
            id_prefix: id_prefix.into(),
        }
    }

    /// One ship order with `lines` distinct random SKUs of 1..=2 units each.
    pub fn next_order(&mut self, lines: usize) -> OrderRequest {
        let (lat, lon, market) = CUSTOMERS[self.rng.random_range(0..CUSTOMERS.len())];
        let mut chosen: Vec<usize> = Vec::with_capacity(lines);
        while chosen.len() < lines.min(self.skus) {
            let sku = self.rng.random_range(1..=self.skus);
            if !chosen.contains(&sku) {
                chosen.push(sku);
            }
        }
        let id = self.next_id;
        self.next_id += 1;
        OrderRequest {
            channel: self.channel.clone(),
            client_order_id: format!("{}{id}", self.id_prefix),
            lines: chosen
                .into_iter()
                .map(|s| LineRequest {
                    sku: format!("{}{s}", self.sku_prefix),
                    qty: self.rng.random_range(1..=2),
                })
                .collect(),
            ship_to: ShipTo {
                lat: lat + self.rng.random_range(-0.2..0.2),
                lon: lon + self.rng.random_range(-0.2..0.2),
                market: Some(market.to_string()),
            },
            method: FulfilmentMethod::Ship,
            hold_ttl_ms: None,
        }
    }
}

/// The in-memory core driver over this config's network, with its stock
/// loaded, at `now_ms`: for tests, simulations and profiling.
pub fn local_engine(config: &ValidConfig, now_ms: u64) -> LocalEngine {
    let index = std::sync::Arc::new(crate::core::index::AvailabilityIndex::new(
        config.network.nodes.len(),
        config.engine.max_skus,
    ));
    let network = std::sync::Arc::new(config.network.clone());
    let mut engine = LocalEngine::new(network, index, config.engine.shards, now_ms);
    for update in &config.stock {
        if let StockUpdate::Set {
            sku,
            node,
            on_hand,
            safety_stock,
        } = update
        {
            let node = config.network.node_idx(node).expect("validated node");
            engine.stock_set(sku, node, *on_hand, *safety_stock, now_ms);
        }
    }
    engine
}
