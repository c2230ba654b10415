//! A run's JSON summary and the comparison with Redis.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use super::recorder::{Outcome, Recorder};

/// The JSON summary `--json` writes. Its counts are grouped by the window
/// of time they cover, each group saying which: the reported step
/// (`measured`), each second of every measured step (`over_time`), and the
/// whole run with the audit after it (`whole_run`).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Summary {
    /// "omniroute", or "redis" for the side-by-side run.
    pub target: String,
    pub scenario: String,
    pub measured: MeasuredStep,
    pub over_time: OverTime,
    pub whole_run: WholeRun,
    /// What the side sends per round trip, in words.
    pub batching: String,
    /// With --find-max: the highest offered rate that held its bounds, and
    /// the p99 of a run at half of it.
    pub highest_sustainable_rate: Option<f64>,
    pub p99_at_half_max_us: Option<u64>,
    /// How the target kept what it answered: "fsync" or "none". For the
    /// daemon --spawn-server started, what it was started with; for Redis,
    /// its settings as read back from the server; None for a daemon this
    /// run did not start.
    pub durability: Option<String>,
    /// With --kill-restart: milliseconds from the SIGKILLed daemon's
    /// restart, after the run, until it listened again.
    pub restart_ms: Option<f64>,
    /// Against a cluster (several addresses, or --spawn-cluster): its
    /// failovers and what the audit found across them.
    pub cluster: Option<ClusterRun>,
    /// With --compare-redis: the same work against Redis, and omniroute's
    /// highest sustainable rate over Redis's.
    pub redis: Option<Box<Summary>>,
    pub ratio_vs_redis: Option<f64>,
    /// What ran: when, which versions, with which settings.
    pub run: Option<RunInfo>,
    /// With --threshold: each bound and whether the reported step held it.
    pub thresholds: Vec<ThresholdResult>,
}

/// The reported step alone: the run's one measured step, or under
/// --find-max the highest sustainable one (else the last). Warmup, the
/// other steps and what followed the step are not in it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct MeasuredStep {
    /// Which window this is, in words.
    pub covers: String,
    pub duration_s: f64,
    pub rate_offered: f64,
    pub rate_achieved: f64,
    pub requests: u64,
    pub outcomes: BTreeMap<Outcome, u64>,
    /// Rejections other than short, and errors, by their code's name.
    pub reject_codes: BTreeMap<String, u64>,
    pub error_codes: BTreeMap<String, u64>,
    /// Failed, timed-out and overloaded requests.
    pub errors: u64,
    /// Latency from each request's intended send time (corrected for
    /// coordinated omission).
    pub min_us: u64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p95_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub p9999_us: u64,
    pub max_us: u64,
    /// Latency from its actual send time.
    pub uncorrected_min_us: u64,
    pub uncorrected_mean_us: f64,
    pub uncorrected_p50_us: u64,
    pub uncorrected_p90_us: u64,
    pub uncorrected_p95_us: u64,
    pub uncorrected_p99_us: u64,
    pub uncorrected_p999_us: u64,
    pub uncorrected_p9999_us: u64,
    pub uncorrected_max_us: u64,
    /// CPU time (user + system, from /proc) over the step per answered
    /// request: of the server (the spawned daemon, or redis-server) and of
    /// this generator; and the server's cores busy.
    pub server_cpu_us_per_order: Option<f64>,
    pub server_cpu_cores: Option<f64>,
    pub generator_cpu_us_per_order: Option<f64>,
}

/// Every measured step second by second, on one time axis from the first
/// step's start, and what happened along it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct OverTime {
    /// Which window this is, in words.
    pub covers: String,
    pub seconds: Vec<Second>,
    pub events: Vec<RunEvent>,
    /// Each measured step's seconds that held a snapshot against the
    /// step's median second; empty when the daemon's /metrics was not read.
    pub snapshot_stalls: Vec<SnapshotStall>,
}

/// One measured step (under --find-max each step and the run at half the
/// highest rate; else the run's one step): the worst per-second p99 of
/// its seconds that held a snapshot, against the median per-second p99 of
/// all its seconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct SnapshotStall {
    /// The step's offered rate (`5000/s`) and when it began, in seconds
    /// since the first measured step began.
    pub step: String,
    pub from_s: f64,
    /// Its seconds, and the median of their p99s.
    pub seconds: u64,
    pub median_p99_us: f64,
    /// Its seconds that a snapshot's span (`over_time.events`) touches,
    /// and the worst p99 among them.
    pub snapshot_seconds: u64,
    pub worst_snapshot_p99_us: Option<u64>,
    /// That worst p99 over the median; None with no snapshot second.
    pub snapshot_p99_ratio: Option<f64>,
}

/// A run against a cluster's replicas, the orders following the leader.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ClusterRun {
    /// The replicas' client addresses.
    pub replicas: Vec<String>,
    /// With --kill-leader-every: each SIGKILL of the leader, in order.
    pub failovers: Vec<Failover>,
    /// The failovers' median and longest `failover_ms` (those that ended).
    pub failover_p50_ms: Option<f64>,
    pub failover_max_ms: Option<f64>,
    /// Orders answered routed that the final leader does not know, or
    /// holds with other allocations than they were answered with.
    pub lost_orders: u64,
    /// Of those, orders known with other allocations (nodes, SKUs or
    /// units) than the answer gave.
    pub allocation_mismatches: u64,
    /// Whether every replica, stopped, replayed to the same state (the same
    /// committed index and digest of stock and orders); None when not
    /// compared (the reason is in `digests`).
    pub replicas_equal: Option<bool>,
    /// Each replica's "id: index N digest D", or why it was not read.
    pub digests: Vec<String>,
    /// Snapshot sets a follower behind the leader's log was sent and
    /// installed, as the replicas' logs say.
    pub snapshots_installed: u64,
}

/// One SIGKILL of the leader and the failover after it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Failover {
    /// Seconds since the first measured step began (negative: in the warmup).
    pub at_s: f64,
    /// The replica killed.
    pub replica: u64,
    /// From the kill to the first order decided (routed or rejected) by
    /// another replica; None if none was before the run ended.
    pub failover_ms: Option<f64>,
    /// From the kill to the killed replica listening again on its directory.
    pub restart_ms: f64,
}

/// Something that happened during the measured steps: at a moment, or
/// over a span (`until_s`).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct RunEvent {
    /// Seconds since the first measured step began.
    pub at_s: f64,
    pub until_s: Option<f64>,
    pub what: String,
}

/// From the first order of the warmup to the end of the audit: what the
/// follow-ups, the feed and the node events did, and what reading every
/// order and cell back found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct WholeRun {
    /// Which window this is, in words.
    pub covers: String,
    /// Confirms, cancels and ships that followed routed orders, by result.
    pub follow_ups: BTreeMap<String, u64>,
    /// Stock units the feed added (acknowledged), and feed requests refused.
    pub restocked_units: u64,
    pub feed_errors: u64,
    /// Orders the daemon re-routed when scenario events took nodes offline.
    pub rerouted_orders: u64,
    /// With --follow: what the channel's status stream carried.
    pub status_stream: Option<StatusStream>,
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
    pub stock_mismatch_units: u64,
    /// With --rss-every: the spawned daemon's resident memory, (seconds
    /// since the run started, MiB), and its growth over the second half.
    pub rss_mib: Vec<(f64, f64)>,
    pub rss_growth_second_half_percent: Option<f64>,
}

/// What ran, for whoever reads the JSON later.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RunInfo {
    /// RFC 3339, UTC.
    pub timestamp: String,
    pub loadtest_version: String,
    /// The daemon's version when this run spawned it (built from the same
    /// sources as the generator), else None.
    pub omniroute_version: Option<String>,
    pub redis_version: Option<String>,
    pub scenario: String,
    pub rate: f64,
    pub connections: usize,
    pub warmup_s: f64,
    pub duration_s: f64,
    pub tick_us: u64,
    pub durability: Option<String>,
    /// Orders per `SubmitBatch` frame; 0: one `Submit` frame per order.
    pub submit_batch: usize,
    pub find_max: bool,
    /// Runtime threads of the spawned daemon and of the generator.
    pub server_threads: Option<usize>,
    pub generator_threads: usize,
    /// CPUs this process may run on (generator and spawned servers share them).
    pub cores: usize,
    pub command_line: Vec<String>,
}

/// One second of a measured step. Answers are counted in the second they
/// came back in; the step's last second also holds those that came back
/// while it drained.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Second {
    /// Since the first measured step began.
    pub offset_s: f64,
    /// 1, or less for the last second of a fractional step.
    pub length_s: f64,
    pub offered_per_s: f64,
    pub achieved_per_s: f64,
    /// Answers in it (counts, not rates): routed, rejected by reason,
    /// failed by reason.
    pub routed: u64,
    pub rejected: BTreeMap<String, u64>,
    pub failed: BTreeMap<String, u64>,
    /// All failed answers.
    pub errors: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
    /// From the daemon's /metrics, when the run could read it: holds that
    /// expired and snapshots written in this second.
    pub holds_expired: Option<u64>,
    pub snapshots: Option<u64>,
}

/// A `--threshold` and what the run measured against it.
#[derive(Clone, Debug, Serialize)]
pub struct ThresholdResult {
    pub threshold: String,
    pub measured: f64,
    pub passed: bool,
}

/// What a follower of the scenario's channel saw (`--follow`): each change
/// of the run's orders once, across one reconnect.
#[derive(Clone, Debug, Default, Serialize)]
pub struct StatusStream {
    pub statuses: u64,
    /// Statuses by change (`routed`, `confirmed`, `rerouted_node_offline`, ...).
    pub changes: BTreeMap<String, u64>,
    pub reconnects: u32,
    /// Statuses whose cursor was not the last one + 1; must be 0.
    pub cursor_gaps: u64,
    /// Orders the run had routed that the stream did not say `routed`
    /// for exactly once; must be 0.
    pub routed_orders_without_one_routed_status: u64,
}

impl StatusStream {
    /// Whether the stream carried every change once.
    pub fn exact(&self) -> bool {
        self.cursor_gaps == 0 && self.routed_orders_without_one_routed_status == 0
    }
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
        Summary {
            target: target.to_string(),
            scenario: scenario.to_string(),
            measured: MeasuredStep::new(duration, rate_offered, recorder),
            ..Summary::default()
        }
    }

    /// Whether a find-max step held its bounds: nearly all of the offered
    /// rate answered, p99 within the bound, and no errors.
    pub fn sustained(&self, max_p99_us: u64) -> bool {
        let step = &self.measured;
        step.rate_achieved >= SUSTAINED_FRACTION * step.rate_offered
            && step.p99_us <= max_p99_us
            && step.errors == 0
    }
}

impl MeasuredStep {
    /// Rates, outcomes and latencies of one step, from its recorder.
    pub fn new(duration: Duration, rate_offered: f64, recorder: &Recorder) -> MeasuredStep {
        let seconds = duration.as_secs_f64().max(f64::EPSILON);
        let c = &recorder.corrected;
        let u = &recorder.uncorrected;
        MeasuredStep {
            covers: format!("one measured step: {seconds:.1} s at {rate_offered:.0}/s offered, with the answers that came back while it drained; not the warmup"),
            duration_s: seconds,
            rate_offered,
            rate_achieved: recorder.total() as f64 / seconds,
            requests: recorder.total(),
            outcomes: recorder.outcomes.clone(),
            reject_codes: recorder.reject_codes.clone(),
            error_codes: recorder.error_codes.clone(),
            errors: recorder.count(Outcome::Error)
                + recorder.count(Outcome::TimedOut)
                + recorder.count(Outcome::Overloaded),
            min_us: c.min(),
            mean_us: c.mean(),
            p50_us: c.value_at_quantile(0.50),
            p90_us: c.value_at_quantile(0.90),
            p95_us: c.value_at_quantile(0.95),
            p99_us: c.value_at_quantile(0.99),
            p999_us: c.value_at_quantile(0.999),
            p9999_us: c.value_at_quantile(0.9999),
            max_us: c.max(),
            uncorrected_min_us: u.min(),
            uncorrected_mean_us: u.mean(),
            uncorrected_p50_us: u.value_at_quantile(0.50),
            uncorrected_p90_us: u.value_at_quantile(0.90),
            uncorrected_p95_us: u.value_at_quantile(0.95),
            uncorrected_p99_us: u.value_at_quantile(0.99),
            uncorrected_p999_us: u.value_at_quantile(0.999),
            uncorrected_p9999_us: u.value_at_quantile(0.9999),
            uncorrected_max_us: u.max(),
            ..MeasuredStep::default()
        }
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
