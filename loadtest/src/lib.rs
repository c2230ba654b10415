//! The logic of the load generator, apart from its I/O so that it can be
//! tested: the open-loop schedule, latency recording, the stock audit, the
//! scenario file and the JSON summary.

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

/// Units told to buyers per (sku, node) against the stock there was.
#[derive(Default, Debug, Clone)]
pub struct Audit {
    pub starting: BTreeMap<(String, String), u64>,
    pub told: BTreeMap<(String, String), u64>,
}

impl Audit {
    pub fn tell(&mut self, sku: &str, node: &str, units: u32) {
        *self
            .told
            .entry((sku.to_string(), node.to_string()))
            .or_default() += u64::from(units);
    }

    /// Units promised beyond the starting stock of their cell, summed over
    /// cells: what a flash sale must keep at zero. Cells the generator did
    /// not stock count as starting from zero.
    pub fn oversold_units(&self) -> u64 {
        self.told
            .iter()
            .map(|(cell, told)| told.saturating_sub(self.starting.get(cell).copied().unwrap_or(0)))
            .sum()
    }

    /// Units of a SKU still promisable at the end if nothing was oversold.
    pub fn expected_left(&self, sku: &str) -> u64 {
        let start: u64 = self
            .starting
            .iter()
            .filter(|((s, _), _)| s == sku)
            .map(|(_, v)| v)
            .sum();
        let told: u64 = self
            .told
            .iter()
            .filter(|((s, _), _)| s == sku)
            .map(|(_, v)| v)
            .sum();
        start.saturating_sub(told)
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

impl Scenario {
    pub fn parse(text: &str) -> Result<Scenario, String> {
        let scenario: Scenario = toml::from_str(text).map_err(|e| e.to_string())?;
        let o = &scenario.orders;
        let sku_count =
            match (&o.sku_range, o.skus.is_empty()) {
                (Some(range), true) if range.count > 0 && range.zipf_exponent > 0.0 => range.count,
                (None, false) => o.skus.len(),
                _ => return Err(
                    "give either orders.skus or orders.sku_range (count > 0, zipf_exponent > 0)"
                        .into(),
                ),
            };
        if o.points.is_empty() {
            return Err("orders.points must not be empty".into());
        }
        if let Some(m) = &o.methods {
            let weights = [m.ship, m.pickup, m.same_day];
            if weights.iter().any(|w| !w.is_finite() || *w < 0.0)
                || weights.iter().sum::<f64>() <= 0.0
            {
                return Err("orders.methods weights must be >= 0 and not all 0".into());
            }
            if m.pickup > 0.0 && o.pickup_stores.is_empty() {
                return Err("orders.methods.pickup needs orders.pickup_stores".into());
            }
        }
        if o.lines_min == 0 || o.lines_min > o.lines_max || o.lines_max > sku_count {
            return Err("orders.lines_min..=lines_max must be within 1..=number of skus".into());
        }
        if o.qty_min == 0 || o.qty_min > o.qty_max {
            return Err("orders.qty_min..=qty_max must be within 1..".into());
        }
        Ok(scenario)
    }
}

/// The JSON summary `--json` writes.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
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
    pub uncorrected_p99_us: u64,
    pub uncorrected_max_us: u64,
    pub errors: u64,
    pub oversold_units: u64,
    pub missing_orders: u64,
    /// With --find-max: the highest offered rate that held its bounds.
    pub highest_sustainable_rate: Option<f64>,
}

impl Summary {
    pub fn new(
        scenario: &str,
        duration: Duration,
        rate_offered: f64,
        recorder: &Recorder,
        oversold_units: u64,
        missing_orders: u64,
    ) -> Summary {
        let seconds = duration.as_secs_f64().max(f64::EPSILON);
        let c = &recorder.corrected;
        let u = &recorder.uncorrected;
        Summary {
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
            uncorrected_p99_us: u.value_at_quantile(0.99),
            uncorrected_max_us: u.max(),
            errors: recorder.count(Outcome::Error) + recorder.count(Outcome::TimedOut),
            oversold_units,
            missing_orders,
            highest_sustainable_rate: None,
        }
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
        let summary = Summary::new("flash-sale", Duration::from_secs(1), 1.0, &recorder, 0, 0);
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
        ] {
            assert!(json[key].is_number(), "{key} missing in {json}");
        }
        assert_eq!(json["outcomes"]["routed"], 1);
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
    }
}
