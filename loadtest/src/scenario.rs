//! The scenario file: the order mix, follow-ups, the feed, node events and
//! starting stock, parsed and checked.

use serde::Deserialize;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    pub channel: String,
    pub orders: OrderMix,
    #[serde(default)]
    pub stock: Vec<ScenarioStock>,
    /// What happens to routed orders next.
    pub follow_up: Option<FollowUpMix>,
    /// A WMS feed of stock updates sent while orders flow.
    pub feed: Option<Feed>,
    /// Node outages and returns, timed from the start of the measured run.
    #[serde(default)]
    pub events: Vec<NodeEvent>,
}

/// Fractions of routed orders that are confirmed or cancelled, and of
/// confirmed orders whose lines are then shipped by their nodes.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FollowUpMix {
    pub confirm: f64,
    pub cancel: f64,
    pub ship: f64,
}

/// What the generator does with one routed order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FollowUp {
    Confirm { then_ship: bool },
    Cancel,
    Nothing,
}

impl FollowUpMix {
    /// The follow-up for two uniform rolls in [0, 1): the first picks
    /// confirm, cancel or nothing, the second whether a confirm ships.
    pub fn decide(&self, roll: f64, ship_roll: f64) -> FollowUp {
        if roll < self.confirm {
            FollowUp::Confirm {
                then_ship: ship_roll < self.ship,
            }
        } else if roll < self.confirm + self.cancel {
            FollowUp::Cancel
        } else {
            FollowUp::Nothing
        }
    }
}

/// Stock increases (deliveries counted in by a WMS) at a constant rate,
/// spread uniformly over the scenario's stock cells.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Feed {
    /// Cell updates per second.
    pub updates_per_s: f64,
    /// Updates per StockAdjust request.
    pub batch: usize,
    pub delta_min: u32,
    pub delta_max: u32,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeEvent {
    pub at_s: f64,
    pub node: String,
    pub online: bool,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderMix {
    /// SKUs picked uniformly; or use `sku_range`.
    #[serde(default)]
    pub skus: Vec<String>,
    /// `prefix1..=prefix{count}`, picked with Zipf popularity.
    pub sku_range: Option<SkuRange>,
    /// Weights of the fulfilment methods; all ship when absent.
    pub methods: Option<MethodMix>,
    /// Stores a pickup order names, picked uniformly.
    #[serde(default)]
    pub pickup_stores: Vec<String>,
    pub lines_min: usize,
    pub lines_max: usize,
    pub qty_min: u32,
    pub qty_max: u32,
    pub hold_ttl_ms: Option<u32>,
    pub points: Vec<[f64; 2]>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SkuRange {
    pub prefix: String,
    pub count: usize,
    /// 1.0 is the classic Zipf: the most popular SKU sells twice the second.
    pub zipf_exponent: f64,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MethodMix {
    pub ship: f64,
    pub pickup: f64,
    pub same_day: f64,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScenarioStock {
    pub sku: String,
    pub node: String,
    pub on_hand: u32,
}

/// A hold TTL at least this long never runs out within a load test (runs
/// last minutes), so what each order was told need not be kept for the
/// audit. Without a TTL the channel's policy decides (15 min in the sample).
pub const HOLDS_OUTLIVE_RUNS_MS: u32 = 3_600_000;

/// A scenario file that cannot be run.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// It is not TOML of the scenario's shape.
    #[error(transparent)]
    Toml(#[from] toml::de::Error),
    /// A setting outside what it may be; the message names it and its rule.
    #[error("{0}")]
    Invalid(&'static str),
}

impl Scenario {
    /// Whether a routed order's hold may run out during a run, giving its
    /// units back for sale (the audit must then know what it was told).
    pub fn holds_expire_in_runs(&self) -> bool {
        self.orders
            .hold_ttl_ms
            .is_some_and(|ttl| ttl < HOLDS_OUTLIVE_RUNS_MS)
    }

    pub fn parse(text: &str) -> Result<Scenario, ScenarioError> {
        let scenario: Scenario = toml::from_str(text)?;
        let o = &scenario.orders;
        let sku_count =
            match (&o.sku_range, o.skus.is_empty()) {
                (Some(range), true) if range.count > 0 && range.zipf_exponent > 0.0 => range.count,
                (None, false) => o.skus.len(),
                _ => return Err(ScenarioError::Invalid(
                    "give either orders.skus or orders.sku_range (count > 0, zipf_exponent > 0)",
                )),
            };
        if o.points.is_empty() {
            return Err(ScenarioError::Invalid("orders.points must not be empty"));
        }
        if let Some(m) = &o.methods {
            let weights = [m.ship, m.pickup, m.same_day];
            if weights.iter().any(|w| !w.is_finite() || *w < 0.0)
                || weights.iter().sum::<f64>() <= 0.0
            {
                return Err(ScenarioError::Invalid(
                    "orders.methods weights must be >= 0 and not all 0",
                ));
            }
            if m.pickup > 0.0 && o.pickup_stores.is_empty() {
                return Err(ScenarioError::Invalid(
                    "orders.methods.pickup needs orders.pickup_stores",
                ));
            }
        }
        if o.lines_min == 0 || o.lines_min > o.lines_max || o.lines_max > sku_count {
            return Err(ScenarioError::Invalid(
                "orders.lines_min..=lines_max must be within 1..=number of skus",
            ));
        }
        if o.qty_min == 0 || o.qty_min > o.qty_max {
            return Err(ScenarioError::Invalid(
                "orders.qty_min..=qty_max must be within 1..",
            ));
        }
        if let Some(f) = &scenario.follow_up {
            let fractions = [f.confirm, f.cancel, f.ship];
            if fractions.iter().any(|x| !(0.0..=1.0).contains(x)) || f.confirm + f.cancel > 1.0 {
                return Err(ScenarioError::Invalid(
                    "follow_up fractions must be within 0..=1 and confirm + cancel <= 1",
                ));
            }
        }
        if let Some(feed) = &scenario.feed {
            if scenario.stock.is_empty() && o.sku_range.is_none() {
                return Err(ScenarioError::Invalid("a feed updates the scenario's [[stock]] cells, or the stocked cells of its orders.sku_range; give one"));
            }
            if !(feed.updates_per_s.is_finite() && feed.updates_per_s > 0.0)
                || feed.batch == 0
                || feed.delta_min == 0
                || feed.delta_min > feed.delta_max
            {
                return Err(ScenarioError::Invalid(
                    "feed needs updates_per_s > 0, batch > 0 and 1 <= delta_min <= delta_max",
                ));
            }
        }
        if scenario
            .events
            .iter()
            .any(|e| !(e.at_s.is_finite() && e.at_s >= 0.0))
        {
            return Err(ScenarioError::Invalid(
                "events[].at_s must be a time >= 0 in seconds",
            ));
        }
        Ok(scenario)
    }
}
