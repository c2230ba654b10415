//! The open-loop schedule and the latency recorder (HDR histograms, from
//! each request's intended and actual send time).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

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
    /// Rejections other than short, and errors, by their code's name.
    pub reject_codes: BTreeMap<String, u64>,
    pub error_codes: BTreeMap<String, u64>,
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
            error_codes: BTreeMap::new(),
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

    /// Counts a rejection's or an error's code by its name.
    pub fn record_code(&mut self, outcome: Outcome, code: u16) {
        let (map, name) = if outcome == Outcome::Rejected {
            (&mut self.reject_codes, reject_name(code))
        } else {
            (&mut self.error_codes, error_name(code))
        };
        *map.entry(name).or_default() += 1;
    }

    pub fn count(&self, outcome: Outcome) -> u64 {
        self.outcomes.get(&outcome).copied().unwrap_or(0)
    }

    pub fn total(&self) -> u64 {
        self.outcomes.values().sum()
    }
}

/// A reject code's name (`no_eligible_node`), or `code_N` if unknown.
pub fn reject_name(code: u16) -> String {
    match omniroute_client::protocol::reject_codes::name(code) {
        "unknown" => format!("code_{code}"),
        name => name.to_string(),
    }
}

/// An error code's name in snake case (`overloaded`, `too_large`).
pub fn error_name(code: u16) -> String {
    let Some(known) = omniroute_client::protocol::ErrorCode::from_u16(code) else {
        return format!("code_{code}");
    };
    let mut name = String::new();
    for (i, c) in format!("{known:?}").chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            name.push('_');
        }
        name.push(c.to_ascii_lowercase());
    }
    name
}
