//! Metrics: their names, the handles the hot paths keep, and the
//! Prometheus recorder the admin port renders. The `metrics` facade is
//! process-wide, so the recorder is installed once, by the first daemon.
//!
//! Counters on hot paths are resolved to handles once (per channel and
//! outcome) so that counting an order is an atomic add, not a registry
//! lookup. Values owned elsewhere (journal totals, queue depths, snapshot
//! age) are read when scraped, not pushed.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{counter, gauge, histogram, Counter, Gauge, Histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::core::model::{Decision, RejectReason};
use crate::core::network::Network;

pub const ORDERS_TOTAL: &str = "omniroute_orders_total";
pub const ROUTING_LATENCY_SECONDS: &str = "omniroute_routing_latency_seconds";
pub const REROUTES_TOTAL: &str = "omniroute_reroutes_total";
pub const HOLDS_EXPIRED_TOTAL: &str = "omniroute_holds_expired_total";
pub const ORDERS_RETIRED_TOTAL: &str = "omniroute_orders_retired_total";
pub const DEMAND_LOST_TOTAL: &str = "omniroute_demand_lost_total";
pub const ANSWERED_IN_SESSION_TOTAL: &str = "omniroute_orders_answered_in_session_total";
pub const KEY_FILTER_OCCUPANCY: &str = "omniroute_key_filter_occupancy_ratio";
pub const QUEUE_DEPTH: &str = "omniroute_queue_depth";
pub const ORDERS_IN_FLIGHT: &str = "omniroute_orders_in_flight";
pub const JOURNAL_FSYNC_SECONDS: &str = "omniroute_journal_fsync_seconds";
pub const JOURNAL_COMMIT_RECORDS: &str = "omniroute_journal_commit_records";
pub const JOURNAL_RECORDS_TOTAL: &str = "omniroute_journal_records_total";
pub const JOURNAL_COMMITS_TOTAL: &str = "omniroute_journal_commits_total";
pub const SNAPSHOT_AGE_SECONDS: &str = "omniroute_snapshot_age_seconds";
pub const SNAPSHOTS_TOTAL: &str = "omniroute_snapshots_total";
pub const SNAPSHOTS_STARTED_TOTAL: &str = "omniroute_snapshots_started_total";
pub const CONNECTIONS: &str = "omniroute_connections";
pub const POLICY_RELOADS_TOTAL: &str = "omniroute_policy_reloads_total";
pub const POLICY_LSN: &str = "omniroute_policy_lsn";
pub const READY: &str = "omniroute_ready";
pub const REPLICA_MESSAGES_SENT_TOTAL: &str = "omniroute_replica_messages_sent_total";
pub const REPLICA_MESSAGES_RECEIVED_TOTAL: &str = "omniroute_replica_messages_received_total";
pub const REPLICA_MESSAGES_DROPPED_TOTAL: &str = "omniroute_replica_messages_dropped_total";
pub const REPLICA_CONNECTIONS_TOTAL: &str = "omniroute_replica_connections_total";
pub const REPLICA_CONNECTIONS_REFUSED_TOTAL: &str = "omniroute_replica_connections_refused_total";
pub const REPLICA_SNAPSHOTS_SENT_TOTAL: &str = "omniroute_replica_snapshots_sent_total";
pub const REPLICA_SNAPSHOTS_RECEIVED_TOTAL: &str = "omniroute_replica_snapshots_received_total";
pub const REPLICA_SNAPSHOTS_INSTALLED_TOTAL: &str = "omniroute_replica_snapshots_installed_total";
pub const REPLICA_ROLE: &str = "omniroute_replica_role";
pub const REPLICA_TERM: &str = "omniroute_replica_term";
pub const REPLICA_LEADER: &str = "omniroute_replica_leader";
pub const REPLICA_LEADER_CHANGES_TOTAL: &str = "omniroute_replica_leader_changes_total";
pub const REPLICA_APPLIED_INDEX: &str = "omniroute_replica_applied_index";
pub const REPLICA_COMMIT_INDEX: &str = "omniroute_replica_commit_index";
pub const REPLICA_FOLLOWER_LAG_ENTRIES: &str = "omniroute_replica_follower_lag_entries";

/// Histogram bounds of the routing latency, in seconds: 50 µs to 1 s.
const LATENCY_BUCKETS_SECONDS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0,
];
/// Records per group commit.
const COMMIT_RECORDS_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0,
];
/// How often histogram samples are folded into their buckets, so that a
/// daemon nobody scrapes does not keep its samples.
pub const UPKEEP_INTERVAL_MS: u64 = 5_000;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// A log filter the running process cannot take.
#[derive(Debug, thiserror::Error)]
#[error("log level {level:?} refused: {reason}")]
pub struct LogLevelError {
    pub level: String,
    /// What the logger said of it.
    pub reason: String,
}

/// Sets the running process's log filter.
pub type LogLevelControl = Box<dyn Fn(&str) -> Result<(), LogLevelError> + Send + Sync>;

/// How a reload changes the log level, given by the binary that installed
/// the logger (none when `RUST_LOG` set the filter: it wins).
static LOG_LEVEL_CONTROL: OnceLock<LogLevelControl> = OnceLock::new();

/// Lets [`set_log_level`] change the filter of the installed logger.
pub fn control_log_level(control: LogLevelControl) {
    let _ = LOG_LEVEL_CONTROL.set(control);
}

/// Logs at `level` (a tracing filter) from now on. `Ok(false)`: the level
/// is not this process's to change (`RUST_LOG` set it, or no logger).
pub fn set_log_level(level: &str) -> Result<bool, LogLevelError> {
    match LOG_LEVEL_CONTROL.get() {
        Some(control) => control(level).map(|()| true),
        None => Ok(false),
    }
}

/// Installs the Prometheus recorder (once per process) and returns the
/// handle that renders it.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Suffix("_seconds".into()),
                    LATENCY_BUCKETS_SECONDS,
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        metrics_exporter_prometheus::Matcher::Full(JOURNAL_COMMIT_RECORDS.into()),
                        COMMIT_RECORDS_BUCKETS,
                    )
                })
                .expect("bucket lists are not empty")
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder (a test harness's) may already be global; the
            // handle then renders an empty page rather than failing the start.
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
            }
            describe();
            let upkeep = handle.clone();
            std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || loop {
                    std::thread::sleep(Duration::from_millis(UPKEEP_INTERVAL_MS));
                    upkeep.run_upkeep();
                })
                .expect("spawn the metrics upkeep thread");
            handle
        })
        .clone()
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        ORDERS_TOTAL,
        "Orders answered, by channel and outcome (routed, partial, or the reject code)"
    );
    describe_histogram!(
        ROUTING_LATENCY_SECONDS,
        Unit::Seconds,
        "From admission to decision, per order (journaled before answered)"
    );
    describe_counter!(
        REROUTES_TOTAL,
        "Orders routed again, by cause (bumped by a stock count, node_rejected, node_offline)"
    );
    describe_counter!(
        HOLDS_EXPIRED_TOTAL,
        "Unconfirmed holds released at their TTL"
    );
    describe_counter!(
        ORDERS_RETIRED_TOTAL,
        "Closed orders that left memory after [orders] retention_ms"
    );
    describe_counter!(
        DEMAND_LOST_TOTAL,
        "Rejected orders not journaled as demand (the journal queue was full)"
    );
    describe_gauge!(
        QUEUE_DEPTH,
        "Messages sent to an actor and not yet handled, by queue (router, shard) and id"
    );
    describe_gauge!(ORDERS_IN_FLIGHT, "Orders admitted and not yet answered");
    describe_histogram!(
        JOURNAL_FSYNC_SECONDS,
        Unit::Seconds,
        "Time of one group commit's write and fsync"
    );
    describe_histogram!(
        JOURNAL_COMMIT_RECORDS,
        "Records made durable by one group commit"
    );
    describe_counter!(JOURNAL_RECORDS_TOTAL, "Records journaled since start");
    describe_counter!(JOURNAL_COMMITS_TOTAL, "Group commits since start");
    describe_gauge!(
        SNAPSHOT_AGE_SECONDS,
        Unit::Seconds,
        "Since the newest snapshot was written"
    );
    describe_counter!(SNAPSHOTS_TOTAL, "Snapshots written since start");
    describe_counter!(
        SNAPSHOTS_STARTED_TOTAL,
        "Snapshots begun since start: one is under way while this exceeds omniroute_snapshots_total"
    );
    describe_gauge!(CONNECTIONS, "Open QUIC connections, by role");
    describe_counter!(
        POLICY_RELOADS_TOTAL,
        "Routing policy reloads, by result (applied, refused)"
    );
    describe_gauge!(
        POLICY_LSN,
        "Journal LSN of the policy in force (0: the one the daemon started with)"
    );
    describe_gauge!(READY, "1 once recovery is done and orders are accepted");
    describe_counter!(
        REPLICA_MESSAGES_SENT_TOTAL,
        "Raft messages written to a peer's stream"
    );
    describe_counter!(
        REPLICA_SNAPSHOTS_SENT_TOTAL,
        "Snapshot sets streamed to a follower behind the log's start, by outcome (delivered, failed)"
    );
    describe_counter!(
        REPLICA_SNAPSHOTS_RECEIVED_TOTAL,
        "Snapshot sets received from the leader, by outcome (staged, refused, busy)"
    );
    describe_counter!(
        REPLICA_SNAPSHOTS_INSTALLED_TOTAL,
        "Snapshot sets installed in place of this replica's state and log"
    );
    describe_counter!(
        REPLICA_MESSAGES_RECEIVED_TOTAL,
        "Raft messages from peers handed to the replica's driver"
    );
    describe_counter!(
        REPLICA_MESSAGES_DROPPED_TOTAL,
        "Raft messages dropped, by reason (queue_full, unknown_peer, too_large, peer_down, wrong_peer, inbox_full); raft-rs resends what matters"
    );
    describe_counter!(
        REPLICA_CONNECTIONS_TOTAL,
        "Connections between replicas established, by direction (outbound, inbound)"
    );
    describe_counter!(
        REPLICA_CONNECTIONS_REFUSED_TOTAL,
        "Connections from replicas closed, by reason (busy, handshake, unknown_peer, frame_too_large, malformed)"
    );
    describe_gauge!(
        REPLICA_ROLE,
        "A replica's role: 0 follower, 1 candidate, 2 leader"
    );
    describe_gauge!(REPLICA_TERM, "A replica's Raft term");
    describe_gauge!(
        REPLICA_LEADER,
        "The leader's id as this replica knows it (0: none)"
    );
    describe_counter!(
        REPLICA_LEADER_CHANGES_TOTAL,
        "Changes of the leader this replica has seen (an election, or losing the leader)"
    );
    describe_gauge!(
        REPLICA_APPLIED_INDEX,
        "The last entry of the replicated log this replica has applied"
    );
    describe_gauge!(
        REPLICA_COMMIT_INDEX,
        "The last entry of the replicated log this replica knows is committed"
    );
    describe_gauge!(
        REPLICA_FOLLOWER_LAG_ENTRIES,
        "On the leader, entries a peer has yet to match (its last index minus the peer's); 0 on a replica that does not lead"
    );
}

/// Outcome labels of [`ORDERS_TOTAL`], in the order of `outcome_of`.
pub const OUTCOMES: [&str; 9] = [
    "routed",
    "partial",
    "short",
    "no_eligible_node",
    "too_many_shipments",
    "invalid",
    "duplicate_mismatch",
    "contention",
    "overloaded",
];
const OVERLOADED: usize = 8;

fn outcome_of(decision: &Decision) -> usize {
    match decision {
        Decision::Routed { short, .. } if short.is_empty() => 0,
        Decision::Routed { .. } => 1,
        Decision::Rejected(reason) => match reason {
            RejectReason::Short { .. } => 2,
            RejectReason::NoEligibleNode { .. } => 3,
            RejectReason::TooManyShipments { .. } => 4,
            RejectReason::Invalid(_) => 5,
            RejectReason::DuplicateMismatch => 6,
            RejectReason::Contention { .. } => 7,
        },
    }
}

/// The label of orders whose channel is not configured.
const UNKNOWN_CHANNEL: &str = "unknown";

/// Handles of the engine's hot-path metrics, resolved once.
pub struct EngineMetrics {
    /// One row per channel, then one for unknown channels.
    outcomes: Vec<[Counter; OUTCOMES.len()]>,
    latency: Histogram,
    pub rerouted_bumped: Counter,
    pub rerouted_node_rejected: Counter,
    pub rerouted_node_offline: Counter,
    pub holds_expired: Counter,
    pub orders_retired: Counter,
    pub demand_lost: Counter,
    answered_in_session: Counter,
}

impl EngineMetrics {
    pub fn new(network: &Network) -> EngineMetrics {
        let row = |channel: &str| {
            OUTCOMES.map(|outcome| {
                counter!(ORDERS_TOTAL, "channel" => channel.to_string(), "outcome" => outcome)
            })
        };
        let mut outcomes: Vec<_> = network.channels.iter().map(|c| row(&c.name)).collect();
        outcomes.push(row(UNKNOWN_CHANNEL));
        let rerouted = |cause: &'static str| counter!(REROUTES_TOTAL, "cause" => cause);
        EngineMetrics {
            outcomes,
            latency: histogram!(ROUTING_LATENCY_SECONDS),
            rerouted_bumped: rerouted("bumped"),
            rerouted_node_rejected: rerouted("node_rejected"),
            rerouted_node_offline: rerouted("node_offline"),
            holds_expired: counter!(HOLDS_EXPIRED_TOTAL),
            orders_retired: counter!(ORDERS_RETIRED_TOTAL),
            demand_lost: counter!(DEMAND_LOST_TOTAL),
            answered_in_session: counter!(ANSWERED_IN_SESSION_TOTAL),
        }
    }

    fn row(&self, channel: Option<usize>) -> &[Counter; OUTCOMES.len()] {
        let unknown = self.outcomes.len() - 1;
        &self.outcomes[channel.unwrap_or(unknown).min(unknown)]
    }

    /// Counts one answered order and its latency.
    pub fn answered(&self, channel: Option<usize>, decision: &Decision) {
        self.row(channel)[outcome_of(decision)].increment(1);
    }

    /// Orders the session answered from the index, without a router.
    pub fn answered_in_session(&self, orders: usize) {
        self.answered_in_session.increment(orders as u64);
    }

    pub fn latency(&self, elapsed: Duration, orders: usize) {
        self.latency.record_many(elapsed.as_secs_f64(), orders);
    }

    pub fn overloaded(&self, channel: Option<usize>) {
        self.row(channel)[OVERLOADED].increment(1);
    }
}

/// Open connections of one role; the gauge goes down when this is dropped.
pub struct ConnectionGauge(Gauge);

impl ConnectionGauge {
    pub fn new(role: &str) -> ConnectionGauge {
        let gauge = gauge!(CONNECTIONS, "role" => role.to_string());
        gauge.increment(1.0);
        ConnectionGauge(gauge)
    }
}

impl Drop for ConnectionGauge {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}
