//! The command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    name = "omniroute-loadtest",
    version,
    about = "Open-loop load generator for omniroute"
)]
pub(crate) struct Args {
    /// Orders per second offered.
    #[arg(long, default_value_t = 10_000.0)]
    pub(super) rate: f64,
    /// Measured run, e.g. 20s or 500ms.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub(super) duration: Duration,
    /// Unmeasured run before it.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub(super) warmup: Duration,
    /// QUIC connections the orders are spread over.
    #[arg(long, default_value_t = 4)]
    pub(super) connections: usize,
    /// A built-in scenario by name (flash-sale, omnichannel-mix,
    /// restock-storm, node-outage, soak) or a scenario file.
    #[arg(long, default_value = "flash-sale")]
    pub(super) scenario: String,
    /// Daemon address (ignored with --spawn-server), or a cluster's
    /// replicas' addresses comma-separated (`a,b,c`): with more than one
    /// the orders follow the leader.
    #[arg(
        long,
        visible_alias = "addr",
        default_value = "127.0.0.1:4433",
        value_delimiter = ',',
        num_args = 1
    )]
    pub(super) target: Vec<SocketAddr>,
    /// Token the orders are sent with.
    #[arg(long, default_value = "dev-admin-token")]
    pub(super) token: String,
    /// Token that sets the scenario's stock and reads orders back.
    #[arg(long, default_value = "dev-admin-token")]
    pub(super) admin_token: String,
    /// Certificate to trust (default: the daemon's omniroute-data/cert.pem).
    #[arg(long)]
    pub(super) ca: Option<PathBuf>,
    /// The daemon's admin port (ignored with --spawn-server, which knows
    /// it): its /metrics is read through the run, and the chart marks the
    /// snapshots and hold expiries it counts.
    #[arg(long)]
    pub(super) metrics_addr: Option<SocketAddr>,
    /// Accept any certificate (local development only).
    #[arg(long)]
    pub(super) insecure: bool,
    /// Start a daemon on a temporary data directory, in a child process, and stop it at the end.
    #[arg(long)]
    pub(super) spawn_server: bool,
    /// Start a cluster of this many replicas on loopback, in child
    /// processes on temporary directories (certificates, free ports, the
    /// embedded config's network and stock, durability fsync), drive it
    /// following its leader, audit that every replica ends equal, and stop
    /// them at the end.
    #[arg(long, conflicts_with = "spawn_server", value_parser = clap::value_parser!(u64).range(1..=7))]
    pub(super) spawn_cluster: Option<u64>,
    /// With --spawn-cluster: SIGKILL the leader this often (and restart it
    /// on its directory at once); the report gives each failover, from the
    /// kill to the first order another replica decided.
    #[arg(long, requires = "spawn_cluster", value_parser = parse_duration)]
    pub(super) kill_leader_every: Option<Duration>,
    /// Write the measured latency intervals as an HdrHistogram log here.
    #[arg(long)]
    pub(super) hlog: Option<PathBuf>,
    /// Write the summary as JSON here.
    #[arg(long)]
    pub(super) json: Option<PathBuf>,
    /// An answer later than this counts as timed out.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub(super) timeout: Duration,
    /// Step the rate up (×--step-factor, one --duration each) until p99
    /// passes --max-p99-ms or the achieved rate falls below 95 % of offered;
    /// report the highest sustainable rate.
    #[arg(long)]
    pub(super) find_max: bool,
    #[arg(long, default_value_t = 10.0)]
    pub(super) max_p99_ms: f64,
    #[arg(long, default_value_t = 1.5)]
    pub(super) step_factor: f64,
    /// Write an SVG chart here: latency percentiles over time and the
    /// percentile distribution (with Redis's, under --compare-redis).
    #[arg(long)]
    pub(super) chart: Option<PathBuf>,
    /// Run the same orders, rate steps and connections against a local
    /// redis-server with an all-or-nothing Lua reservation script, and
    /// report omniroute's highest sustainable rate over Redis's.
    #[arg(long)]
    pub(super) compare_redis: bool,
    /// With --compare-redis: Redis durable too, its append-only file
    /// fsynced on every write (`appendfsync always`) in a temporary
    /// directory. Without it Redis keeps nothing on disk, as such
    /// comparisons are usually run.
    #[arg(long, requires = "compare_redis")]
    pub(super) redis_fsync: bool,
    /// How often the scheduler sends what is due.
    #[arg(long, default_value = "250us", value_parser = parse_duration)]
    pub(super) tick: Duration,
    /// Journal durability of the --spawn-server daemon: "fsync" (the
    /// default, as in production) or "none" (answers before the fsync).
    #[arg(long, default_value = "fsync")]
    pub(super) durability: String,
    /// `[orders] retention_ms` of the --spawn-server daemon: how long its
    /// closed orders stay in memory (the embedded config's day if not given).
    #[arg(long)]
    pub(super) retention_ms: Option<u64>,
    /// `[journal] snapshot_interval_ms` of the --spawn-server daemon (or
    /// of each --spawn-cluster replica): how often it writes a snapshot
    /// (the embedded config's minute if not given); the chart marks each
    /// one of a --spawn-server daemon.
    #[arg(long)]
    pub(super) snapshot_interval_ms: Option<u64>,
    /// `[cluster] log_hold_entries` and `laggard_hold_entries` of each
    /// --spawn-cluster replica: how many entries behind its snapshot a
    /// replica keeps for a follower behind it (the config's defaults if not
    /// given); 0 sends a restarted replica the leader's snapshot set.
    #[arg(long)]
    pub(super) log_hold_entries: Option<u64>,
    /// With --spawn-server: print the daemon's resident memory this often
    /// (from /proc), and its growth over the second half of the run.
    #[arg(long, value_parser = parse_duration)]
    pub(super) rss_every: Option<Duration>,
    /// With --spawn-server: after the run and its audit, kill the daemon
    /// with SIGKILL and time its restart on the same data directory.
    #[arg(long, requires = "spawn_server")]
    pub(super) kill_restart: bool,
    /// Follow the scenario's channel's order statuses through the run, on
    /// a connection that drops half way and resumes from its last cursor,
    /// and check that each change came once (the summary's status_stream).
    #[arg(long)]
    pub(super) follow: bool,
    /// Orders per `SubmitBatch` frame: what is due per tick and connection
    /// goes in frames of up to this many (at most 1024). 0: one `Submit`
    /// frame per order.
    #[arg(long, default_value_t = omniroute_client::protocol::MAX_ORDERS_PER_SUBMIT_BATCH,
          value_parser = parse_submit_batch)]
    pub(super) submit_batch: usize,
    /// Fail the run (exit 4) unless the reported step holds this bound,
    /// e.g. 'p99<2ms', 'p99.9<=5ms', 'errors<1', 'rate>=50000'. Latencies:
    /// min, mean, p50, p90, p95, p99, p99.9, p99.99, max. Repeatable.
    /// 'snapshot_p99_ratio<2' holds when, in every measured step, no second
    /// that held a snapshot has a p99 of 2x the step's median per-second
    /// p99 or more; it misses when no second held one.
    #[arg(long, value_parser = omniroute_loadtest::Threshold::parse)]
    pub(super) threshold: Vec<omniroute_loadtest::Threshold>,
    /// With --spawn-server: the daemon's runtime threads (its
    /// `server.worker_threads`); 0: as its config says (one fewer than the
    /// CPUs).
    #[arg(long, default_value_t = 0)]
    pub(super) server_threads: usize,
    /// Threads of the generator's async runtime (its connections, readers
    /// and collector; the scheduler has a thread of its own).
    #[arg(long, default_value_t = 1)]
    pub(super) generator_threads: usize,
    /// Internal: run a replica for --spawn-cluster in this process, on
    /// this config.
    #[arg(long, hide = true)]
    pub(super) serve_replica: Option<PathBuf>,
    /// Internal: run the daemon for --spawn-server in this process.
    #[arg(long, hide = true)]
    pub(super) serve_child: Option<PathBuf>,
}

fn parse_submit_batch(text: &str) -> Result<usize, String> {
    let max = omniroute_client::protocol::MAX_ORDERS_PER_SUBMIT_BATCH;
    match text.parse::<usize>() {
        Ok(n) if n <= max => Ok(n),
        _ => Err(format!("{text:?}: give 0 (single Submit frames) to {max}")),
    }
}

pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = text
        .find(|c: char| c.is_ascii_alphabetic())
        .map_or((text, "s"), |i| text.split_at(i));
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 20s or 500ms"))?;
    let seconds = match unit {
        "us" => value / 1_000_000.0,
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        _ => return Err(format!("unknown unit {unit:?}; use us, ms, s or m")),
    };
    if !(seconds.is_finite() && seconds >= 0.0) {
        return Err(format!("{text:?} is not a duration"));
    }
    Ok(Duration::from_secs_f64(seconds))
}
