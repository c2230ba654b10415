//! The logic of the load generator, apart from its I/O so that it can be
//! tested: the open-loop schedule, latency recording, the stock audit, the
//! scenario file and the JSON summary.

pub mod chart;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Highest latency the histograms record; slower answers are clamped here.
pub const MAX_LATENCY_US: u64 = 60_000_000;

/// When each request is meant to leave: request `i` at `start + i / rate`,
/// whatever happened to the ones before (open loop, as wrk2).
#[derive(Clone, Copy, Debug)]
pub struct Schedule {
    pub start: Instant,
    pub rate_per_s: f64,
}

impl Schedule {
    pub fn intended(&self, i: u64) -> Instant {
        self.start + Duration::from_secs_f64(i as f64 / self.rate_per_s)
    }

    /// How many requests are due by `now` (requests 0..n).
    pub fn due(&self, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.start).as_secs_f64();
        (elapsed * self.rate_per_s).floor() as u64 + 1
    }
}

/// How one request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Routed,
    Short,
    /// Rejected for another reason; the code is counted separately.
    Rejected,
    Overloaded,
    TimedOut,
    Error,
}

/// Latencies from intended send time (corrected for coordinated omission)
/// and from actual send time (uncorrected), and outcome counts.
pub struct Recorder {
    pub corrected: Histogram<u64>,
    pub uncorrected: Histogram<u64>,
    pub outcomes: BTreeMap<Outcome, u64>,
    pub reject_codes: BTreeMap<u16, u64>,
}

impl Default for Recorder {
    fn default() -> Recorder {
        Recorder::new()
    }
}

impl Recorder {
    pub fn new() -> Recorder {
        let histogram =
            || Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid histogram bounds");
        Recorder {
            corrected: histogram(),
            uncorrected: histogram(),
            outcomes: BTreeMap::new(),
            reject_codes: BTreeMap::new(),
        }
    }

    pub fn record(&mut self, intended: Instant, sent: Instant, done: Instant, outcome: Outcome) {
        let micros = |from: Instant| {
            done.saturating_duration_since(from)
                .as_micros()
                .clamp(1, u128::from(MAX_LATENCY_US)) as u64
        };
        self.corrected
            .record(micros(intended))
            .expect("clamped into bounds");
        self.uncorrected
            .record(micros(sent))
            .expect("clamped into bounds");
        *self.outcomes.entry(outcome).or_default() += 1;
    }

    pub fn count(&self, outcome: Outcome) -> u64 {
        self.outcomes.get(&outcome).copied().unwrap_or(0)
    }

    pub fn total(&self) -> u64 {
        self.outcomes.values().sum()
    }
}

/// A stock cell: (sku, node). The Redis side keeps one key per SKU and
/// uses [`ANY_NODE`] as the node.
pub type Cell = (String, String);

/// The node of a Redis stock key, which holds a SKU's units over all nodes.
pub const ANY_NODE: &str = "*";

/// The stock a run had against what buyers were told and what the daemon
/// holds at the end. Every figure is measured: `told` from the answers,
/// `released` from acknowledged cancels, `restocked` from acknowledged feed
/// updates, `held_now` and `final_atp` read back from the daemon.
#[derive(Default, Debug, Clone)]
pub struct Audit {
    pub starting: BTreeMap<Cell, u64>,
    pub restocked: BTreeMap<Cell, u64>,
    pub told: BTreeMap<Cell, u64>,
    pub released: BTreeMap<Cell, u64>,
    /// Units promised that the daemon took back (an order re-routed after
    /// its node went offline and found short), per cell as told; read back
    /// order by order.
    pub withdrawn: BTreeMap<Cell, u64>,
    /// Units promised whose hold ran out unconfirmed, so that the daemon
    /// put them back on sale; per cell as told, from orders the read-back
    /// finds expired.
    pub expired: BTreeMap<Cell, u64>,
    /// Units of every answered order as the daemon holds them at the end
    /// (open + shipped, after any re-route), per cell.
    pub held_now: BTreeMap<Cell, u64>,
    /// ATP per cell read back at the end.
    pub final_atp: BTreeMap<Cell, u64>,
}

fn add(map: &mut BTreeMap<Cell, u64>, sku: &str, node: &str, units: u64) {
    *map.entry((sku.to_string(), node.to_string())).or_default() += units;
}

fn by_sku(map: &BTreeMap<Cell, u64>) -> BTreeMap<&str, u64> {
    let mut out = BTreeMap::new();
    for ((sku, _), units) in map {
        *out.entry(sku.as_str()).or_default() += units;
    }
    out
}

impl Audit {
    pub fn tell(&mut self, sku: &str, node: &str, units: u32) {
        add(&mut self.told, sku, node, u64::from(units));
    }

    pub fn release(&mut self, sku: &str, node: &str, units: u32) {
        add(&mut self.released, sku, node, u64::from(units));
    }

    pub fn withdraw(&mut self, sku: &str, node: &str, units: u64) {
        add(&mut self.withdrawn, sku, node, units);
    }

    pub fn expire(&mut self, sku: &str, node: &str, units: u64) {
        add(&mut self.expired, sku, node, units);
    }

    pub fn restock(&mut self, sku: &str, node: &str, units: u64) {
        add(&mut self.restocked, sku, node, units);
    }

    pub fn hold_now(&mut self, sku: &str, node: &str, units: u64) {
        add(&mut self.held_now, sku, node, units);
    }

    /// Units a cell had to sell over the run: its starting stock and what
    /// the feed added.
    pub fn stock(&self, cell: &Cell) -> u64 {
        self.starting.get(cell).copied().unwrap_or(0)
            + self.restocked.get(cell).copied().unwrap_or(0)
    }

    /// Units promised to buyers (net of their cancels, of promises the
    /// daemon took back and of holds that expired) beyond the stock of
    /// their SKU, summed over SKUs. Per SKU, because a re-route moves a
    /// promise from one node to another. An expired unit may be promised
    /// again, so `told` alone may exceed the stock.
    pub fn oversold_told(&self) -> u64 {
        let stock_map = self.stock_map();
        let stock = by_sku(&stock_map);
        let taken_back = self.taken_back();
        by_sku(&self.told)
            .into_iter()
            .map(|(sku, told)| {
                let net = told.saturating_sub(taken_back.get(sku).copied().unwrap_or(0));
                net.saturating_sub(stock.get(sku).copied().unwrap_or(0))
            })
            .sum()
    }

    /// Units per SKU promised and then given back: cancelled, taken back by
    /// the daemon, or expired. Summed once for all SKUs: a run may touch
    /// ten thousand.
    fn taken_back(&self) -> BTreeMap<&str, u64> {
        let mut out = BTreeMap::new();
        for map in [&self.released, &self.withdrawn, &self.expired] {
            for (sku, units) in by_sku(map) {
                *out.entry(sku).or_default() += units;
            }
        }
        out
    }

    /// Units the daemon holds for the run's orders at the end beyond the
    /// stock of their cell, summed over cells. Cells the run never stocked
    /// count from zero.
    pub fn oversold_held(&self) -> u64 {
        self.held_now
            .iter()
            .map(|(cell, held)| held.saturating_sub(self.stock(cell)))
            .sum()
    }

    /// What `oversold_units` reports: both views must be zero.
    pub fn oversold_units(&self) -> u64 {
        self.oversold_told() + self.oversold_held()
    }

    /// Units by which the daemon's final ATP differs from the stock less
    /// what it holds for the run's orders, over the cells it reported.
    pub fn stock_mismatch_units(&self) -> u64 {
        self.final_atp
            .iter()
            .map(|(cell, atp)| {
                let expected = self
                    .stock(cell)
                    .saturating_sub(self.held_now.get(cell).copied().unwrap_or(0));
                atp.abs_diff(expected)
            })
            .sum()
    }

    fn stock_map(&self) -> BTreeMap<Cell, u64> {
        let mut out = self.starting.clone();
        for (cell, units) in &self.restocked {
            *out.entry(cell.clone()).or_default() += units;
        }
        out
    }

    /// Units of a SKU still promisable at the end if nothing was oversold.
    pub fn expected_left(&self, sku: &str) -> u64 {
        let stock = by_sku(&self.stock_map()).get(sku).copied().unwrap_or(0);

        let told = by_sku(&self.told).get(sku).copied().unwrap_or(0);
        let taken_back = self.taken_back().get(sku).copied().unwrap_or(0);
        stock.saturating_sub(told.saturating_sub(taken_back))
    }
}

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

/// The JSON summary `--json` writes.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Summary {
    /// "omniroute", or "redis" for the side-by-side run.
    pub target: String,
    pub scenario: String,
    pub duration_s: f64,
    pub rate_offered: f64,
    pub rate_achieved: f64,
    pub requests: u64,
    pub outcomes: BTreeMap<Outcome, u64>,
    pub reject_codes: BTreeMap<u16, u64>,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub uncorrected_p50_us: u64,
    pub uncorrected_p90_us: u64,
    pub uncorrected_p99_us: u64,
    pub uncorrected_p999_us: u64,
    pub uncorrected_max_us: u64,
    /// Failed, timed-out and overloaded requests.
    pub errors: u64,
    pub oversold_units: u64,
    /// Its two views: units told to buyers beyond their SKU's stock, and
    /// units the daemon holds at the end beyond their cell's stock.
    pub oversold_told_units: u64,
    pub oversold_held_units: u64,
    /// Units the daemon took back from what buyers were told (re-routed
    /// and found short after a node outage).
    pub withdrawn_units: u64,
    /// Units whose hold expired unconfirmed and went back on sale, from
    /// the orders the read-back finds expired.
    pub expired_units: u64,
    /// Orders the daemon reports expired before their own deadline; must
    /// be 0.
    pub early_expiries: u64,
    pub missing_orders: u64,
    /// Routed orders the daemon had closed and retired (`[orders]
    /// retention_ms`) when read back: audited from their follow-ups, not
    /// missing.
    pub archived_orders: u64,
    /// With --rss-every: the spawned daemon's resident memory, (seconds
    /// since the run started, MiB), and its growth over the second half.
    pub rss_mib: Vec<(f64, f64)>,
    pub rss_growth_second_half_percent: Option<f64>,
    /// With --kill-restart: milliseconds from the SIGKILLed daemon's
    /// restart until it listened again.
    pub restart_ms: Option<f64>,
    pub stock_mismatch_units: u64,
    /// Confirms, cancels and ships that followed routed orders, by result.
    pub follow_ups: BTreeMap<String, u64>,
    /// Stock units the feed added (acknowledged), and feed requests refused.
    pub restocked_units: u64,
    pub feed_errors: u64,
    /// Orders the daemon re-routed when scenario events took nodes offline.
    pub rerouted_orders: u64,
    /// With --find-max: the highest offered rate that held its bounds, and
    /// the p99 of a run at half of it.
    pub highest_sustainable_rate: Option<f64>,
    pub p99_at_half_max_us: Option<u64>,
    /// How the target kept what it answered: "fsync" or "none". For the
    /// daemon --spawn-server started, what it was started with; for Redis,
    /// its settings as read back from the server; None for a daemon this
    /// run did not start.
    pub durability: Option<String>,
    /// With --compare-redis: the same work against Redis, and omniroute's
    /// highest sustainable rate over Redis's.
    pub redis: Option<Box<Summary>>,
    pub ratio_vs_redis: Option<f64>,
}

impl Summary {
    /// Rates, outcomes and latencies of one measured phase; the audit
    /// fields start at zero.
    pub fn new(
        target: &str,
        scenario: &str,
        duration: Duration,
        rate_offered: f64,
        recorder: &Recorder,
    ) -> Summary {
        let seconds = duration.as_secs_f64().max(f64::EPSILON);
        let c = &recorder.corrected;
        let u = &recorder.uncorrected;
        Summary {
            target: target.to_string(),
            scenario: scenario.to_string(),
            duration_s: seconds,
            rate_offered,
            rate_achieved: recorder.total() as f64 / seconds,
            requests: recorder.total(),
            outcomes: recorder.outcomes.clone(),
            reject_codes: recorder.reject_codes.clone(),
            p50_us: c.value_at_quantile(0.50),
            p90_us: c.value_at_quantile(0.90),
            p99_us: c.value_at_quantile(0.99),
            p999_us: c.value_at_quantile(0.999),
            max_us: c.max(),
            uncorrected_p50_us: u.value_at_quantile(0.50),
            uncorrected_p90_us: u.value_at_quantile(0.90),
            uncorrected_p99_us: u.value_at_quantile(0.99),
            uncorrected_p999_us: u.value_at_quantile(0.999),
            uncorrected_max_us: u.max(),
            errors: recorder.count(Outcome::Error)
                + recorder.count(Outcome::TimedOut)
                + recorder.count(Outcome::Overloaded),
            ..Summary::default()
        }
    }

    /// Whether a find-max step held its bounds: nearly all of the offered
    /// rate answered, p99 within the bound, and no errors.
    pub fn sustained(&self, max_p99_us: u64) -> bool {
        self.rate_achieved >= SUSTAINED_FRACTION * self.rate_offered
            && self.p99_us <= max_p99_us
            && self.errors == 0
    }
}

/// The share of the offered rate a find-max step must achieve.
pub const SUSTAINED_FRACTION: f64 = 0.95;

/// omniroute's highest sustainable rate over Redis's, when both found one.
pub fn ratio(omniroute: Option<f64>, redis: Option<f64>) -> Option<f64> {
    match (omniroute, redis) {
        (Some(o), Some(r)) if r > 0.0 => Some(o / r),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_is_open_loop() {
        // Proves request i is due at start + i/rate and the count due grows with time only.
        let start = Instant::now();
        let schedule = Schedule {
            start,
            rate_per_s: 1000.0,
        };
        assert_eq!(schedule.intended(0), start);
        assert_eq!(schedule.intended(1000), start + Duration::from_secs(1));
        assert_eq!(schedule.intended(1), start + Duration::from_millis(1));
        assert_eq!(schedule.due(start), 1);
        assert_eq!(schedule.due(start + Duration::from_micros(2500)), 3);
        let odd = Schedule {
            start,
            rate_per_s: 3.0,
        };
        assert_eq!(odd.intended(3), start + Duration::from_secs(1));
    }

    #[test]
    fn latency_is_measured_from_the_intended_time() {
        // Proves a request sent late counts its wait in the corrected histogram only.
        let start = Instant::now();
        let mut recorder = Recorder::new();
        recorder.record(
            start,
            start + Duration::from_millis(90),
            start + Duration::from_millis(100),
            Outcome::Routed,
        );
        assert!((99_000..=101_000).contains(&recorder.corrected.max()));
        assert!((9_900..=10_100).contains(&recorder.uncorrected.max()));
        assert_eq!(recorder.count(Outcome::Routed), 1);
    }

    #[test]
    fn oversold_units_count_only_what_exceeds_each_cell() {
        // Proves the audit sums, per cell, units told beyond the starting stock, and that a
        // cell the generator never stocked starts from zero.
        let mut audit = Audit::default();
        audit.starting.insert(("A".into(), "N1".into()), 10);
        audit.starting.insert(("A".into(), "N2".into()), 5);
        audit.tell("A", "N1", 10);
        audit.tell("A", "N2", 3);
        assert_eq!(audit.oversold_units(), 0);
        assert_eq!(audit.expected_left("A"), 2);
        audit.tell("A", "N2", 4);
        audit.tell("B", "N1", 1);
        assert_eq!(audit.oversold_units(), 2 + 1);
    }

    #[test]
    fn restocks_cancels_and_withdrawals_move_the_audit() {
        // Proves restocked units raise a cell's stock, cancelled and withdrawn units leave the
        // told view, the held view counts per cell, and the final read-back is checked.
        let mut audit = Audit::default();
        audit.starting.insert(("A".into(), "N1".into()), 5);
        audit.restock("A", "N1", 3);
        audit.tell("A", "N1", 8);
        assert_eq!(audit.oversold_units(), 0);
        audit.tell("A", "N2", 2);
        assert_eq!(audit.oversold_told(), 2, "two units beyond A's 8");
        audit.release("A", "N1", 1);
        audit.withdraw("A", "N2", 1);
        assert_eq!(audit.oversold_told(), 0);
        // N1 went offline: its order moved to N2, which had no stock.
        audit.hold_now("A", "N1", 7);
        audit.hold_now("A", "N2", 1);
        assert_eq!(audit.oversold_held(), 1);
        assert_eq!(audit.oversold_units(), 1);
        audit.final_atp.insert(("A".into(), "N1".into()), 1);
        assert_eq!(audit.stock_mismatch_units(), 0, "8 stock - 7 held = 1");
        audit.final_atp.insert(("A".into(), "N1".into()), 4);
        assert_eq!(audit.stock_mismatch_units(), 3);
    }

    #[test]
    fn follow_ups_split_by_their_fractions() {
        // Proves the first roll picks confirm, cancel or nothing by the fractions, and the
        // second whether a confirmed order ships.
        let mix = FollowUpMix {
            confirm: 0.6,
            cancel: 0.1,
            ship: 0.5,
        };
        assert_eq!(mix.decide(0.0, 0.2), FollowUp::Confirm { then_ship: true });
        assert_eq!(
            mix.decide(0.59, 0.7),
            FollowUp::Confirm { then_ship: false }
        );
        assert_eq!(mix.decide(0.6, 0.0), FollowUp::Cancel);
        assert_eq!(mix.decide(0.69, 0.0), FollowUp::Cancel);
        assert_eq!(mix.decide(0.7, 0.0), FollowUp::Nothing);
    }

    #[test]
    fn find_max_steps_hold_only_within_their_bounds() {
        // Proves a step is sustained only at >= 95 % of offered, p99 within the bound and no
        // errors, and that the ratio needs both rates.
        let mut summary = Summary {
            rate_offered: 1000.0,
            rate_achieved: 960.0,
            p99_us: 900,
            ..Summary::default()
        };
        assert!(summary.sustained(1000));
        assert!(!summary.sustained(800));
        summary.rate_achieved = 940.0;
        assert!(!summary.sustained(1000));
        summary.rate_achieved = 1000.0;
        summary.errors = 1;
        assert!(!summary.sustained(1000));
        assert_eq!(ratio(Some(300.0), Some(100.0)), Some(3.0));
        assert_eq!(ratio(None, Some(100.0)), None);
        assert_eq!(ratio(Some(1.0), Some(0.0)), None);
    }

    #[test]
    fn every_shipped_scenario_parses() {
        // Proves the four scenario files are valid and carry what makes each one what it is.
        let storm = Scenario::parse(include_str!("../scenarios/restock-storm.toml")).unwrap();
        assert!(storm.feed.is_some() && !storm.stock.is_empty());
        let outage = Scenario::parse(include_str!("../scenarios/node-outage.toml")).unwrap();
        assert!(outage.events.iter().any(|e| !e.online));
        let mix = Scenario::parse(include_str!("../scenarios/omnichannel-mix.toml")).unwrap();
        assert!(mix.follow_up.is_some());
        let feed_without_stock = "name = \"x\"\nchannel = \"web\"\n[orders]\nskus = [\"A\"]\nlines_min = 1\nlines_max = 1\nqty_min = 1\nqty_max = 1\npoints = [[1.0, 2.0]]\n[feed]\nupdates_per_s = 10.0\nbatch = 1\ndelta_min = 1\ndelta_max = 1\n";
        assert!(Scenario::parse(feed_without_stock)
            .unwrap_err()
            .to_string()
            .contains("feed"));
    }

    #[test]
    fn the_json_summary_has_the_documented_keys() {
        // Proves the keys other tools read are present and numeric.
        let start = Instant::now();
        let mut recorder = Recorder::new();
        recorder.record(
            start,
            start,
            start + Duration::from_micros(250),
            Outcome::Routed,
        );
        let mut summary = Summary::new(
            "omniroute",
            "flash-sale",
            Duration::from_secs(1),
            1.0,
            &recorder,
        );
        summary.redis = Some(Box::new(summary.clone()));
        summary.ratio_vs_redis = ratio(Some(2.0), Some(1.0));
        let json: serde_json::Value = serde_json::to_value(&summary).unwrap();
        for key in [
            "rate_offered",
            "rate_achieved",
            "p50_us",
            "p99_us",
            "p999_us",
            "max_us",
            "errors",
            "oversold_units",
            "missing_orders",
            "stock_mismatch_units",
            "ratio_vs_redis",
        ] {
            assert!(json[key].is_number(), "{key} missing in {json}");
        }
        assert!(json["redis"]["p99_us"].is_number(), "{json}");
        assert_eq!(json["outcomes"]["routed"], 1);
    }

    #[test]
    fn the_soak_scenario_parses_and_every_routed_order_ends() {
        // Proves the shipped soak scenario is valid, feeds its SKU range, and leaves no routed
        // order open for good: every confirm ships, and the rest cancel or expire within a run.
        let scenario = Scenario::parse(include_str!("../scenarios/soak.toml")).unwrap();
        assert!(scenario.stock.is_empty() && scenario.feed.is_some());
        let follow_up = scenario.follow_up.clone().unwrap();
        assert_eq!(follow_up.ship, 1.0);
        assert!(scenario.holds_expire_in_runs());
    }

    #[test]
    fn the_omnichannel_scenario_parses() {
        // Proves the shipped omnichannel scenario is valid and uses a Zipf range.
        let scenario = Scenario::parse(include_str!("../scenarios/omnichannel-mix.toml")).unwrap();
        assert_eq!(
            scenario.orders.sku_range.as_ref().map(|r| r.count),
            Some(10_000)
        );
        assert!(Scenario::parse("name = \"x\"\nchannel = \"web\"\n[orders]\nlines_min = 1\nlines_max = 1\nqty_min = 1\nqty_max = 1\npoints = [[1.0, 2.0]]\n").is_err());
    }

    #[test]
    fn the_flash_sale_scenario_parses() {
        // Proves the shipped scenario file is valid.
        let text = include_str!("../scenarios/flash-sale.toml");
        let scenario = Scenario::parse(text).unwrap();
        assert_eq!(scenario.name, "flash-sale");
        assert!(!scenario.stock.is_empty());
        assert!(
            scenario.holds_expire_in_runs(),
            "the issue asks for holds that expire"
        );
        let storm = Scenario::parse(include_str!("../scenarios/restock-storm.toml")).unwrap();
        assert!(!storm.holds_expire_in_runs());
    }

    #[test]
    fn expired_holds_give_their_units_back_to_the_told_view() {
        // Proves a unit told twice, once to a buyer whose hold expired and once to the next,
        // is not oversold, while a unit told beyond the stock with no expiry still is.
        let mut audit = Audit::default();
        audit.starting.insert(("F".into(), "W".into()), 3);
        audit.tell("F", "W", 3);
        audit.expire("F", "W", 2);
        audit.tell("F", "W", 2);
        assert_eq!(
            audit.oversold_told(),
            0,
            "5 told, 2 of them expired, stock 3"
        );
        assert_eq!(audit.expected_left("F"), 0);
        audit.tell("F", "W", 1);
        assert_eq!(audit.oversold_told(), 1);
        // What the daemon holds at the end is checked on its own: 3 held of 3.
        audit.hold_now("F", "W", 3);
        assert_eq!(audit.oversold_held(), 0);
        audit.final_atp.insert(("F".into(), "W".into()), 0);
        assert_eq!(audit.stock_mismatch_units(), 0);
    }
}
