//! The orders a run offers: drawn from the scenario's mix, each with a key
//! of the run's prefix.

use omniroute_client::Order;
use omniroute_loadtest::Scenario;
use rand::{Rng, SeedableRng};

use crate::drive::OrderSource;

/// Builds the scenario's orders, reproducibly: the same seed gives the
/// same orders to omniroute and to Redis.
pub(crate) struct Orders {
    scenario: Scenario,
    rng: rand::rngs::StdRng,
    prefix: String,
    /// Popularity of a SKU range (rank 1 most popular).
    zipf: Option<rand_distr::Zipf<f64>>,
}

impl Orders {
    pub(crate) fn new(scenario: &Scenario, seed: u64, prefix: &str) -> Orders {
        Orders {
            scenario: scenario.clone(),
            rng: rand::rngs::StdRng::seed_from_u64(seed),
            prefix: prefix.to_string(),
            zipf: scenario.orders.sku_range.as_ref().map(|r| {
                rand_distr::Zipf::new(r.count as f64, r.zipf_exponent)
                    .expect("validated Zipf parameters")
            }),
        }
    }
}

impl OrderSource for Orders {
    fn order(&mut self, id: u64) -> Order {
        let mix = &self.scenario.orders;
        let lines = self.rng.random_range(mix.lines_min..=mix.lines_max);
        let mut skus: Vec<String> = Vec::with_capacity(lines);
        while skus.len() < lines {
            let sku = match (&mix.sku_range, &self.zipf) {
                (Some(range), Some(zipf)) => {
                    format!("{}{}", range.prefix, self.rng.sample(zipf) as u64)
                }
                _ => mix.skus[self.rng.random_range(0..mix.skus.len())].clone(),
            };
            if !skus.contains(&sku) {
                skus.push(sku);
            }
        }
        let method = match &mix.methods {
            None => omniroute_client::Method::Ship,
            Some(m) => {
                let roll = self.rng.random_range(0.0..m.ship + m.pickup + m.same_day);
                if roll < m.ship {
                    omniroute_client::Method::Ship
                } else if roll < m.ship + m.pickup {
                    let store = mix.pickup_stores
                        [self.rng.random_range(0..mix.pickup_stores.len())]
                    .clone();
                    omniroute_client::Method::Pickup { store }
                } else {
                    omniroute_client::Method::SameDay
                }
            }
        };
        let [lat, lon] = mix.points[self.rng.random_range(0..mix.points.len())];
        Order {
            channel: self.scenario.channel.clone(),
            client_order_id: format!("{}{id}", self.prefix),
            lat: lat + self.rng.random_range(-0.05..0.05),
            lon: lon + self.rng.random_range(-0.05..0.05),
            market: None,
            method,
            hold_ttl_ms: mix.hold_ttl_ms,
            lines: skus
                .into_iter()
                .map(|s| (s, self.rng.random_range(mix.qty_min..=mix.qty_max)))
                .collect(),
        }
    }
}
