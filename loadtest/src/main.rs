//! `omniroute-loadtest`: an open-loop load generator for omniroute.
//!
//! Requests leave at a constant rate whatever the answers do; latency is
//! measured from each request's intended send time (coordinated omission
//! corrected, as wrk2) and from its actual send time, into HDR histograms.
//! At the end the generator audits the stock it set against what buyers
//! were told, and asks the daemon for every routed order.

mod drive;
mod sinks;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use omniroute_client::protocol::{order_states, ErrorCode};
use omniroute_client::{Client, ClientError, Order, StockAdjust, StockSet, Trust};
use omniroute_loadtest::chart::{write_chart, ChartData};
use omniroute_loadtest::{ratio, Audit, Cell, Scenario, Summary, ANY_NODE};
use rand::{Rng, SeedableRng};

use tokio::io::AsyncBufReadExt;
use tokio::sync::{mpsc, oneshot};

use drive::{Collector, Event, FollowUps, Interval, OrderSource, RunResult};
use sinks::Sink;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Orders asked back per batch in the missing-order audit.
const AUDIT_BATCH: usize = 4096;

#[derive(Parser, Debug)]
#[command(
    name = "omniroute-loadtest",
    version,
    about = "Open-loop load generator for omniroute"
)]
struct Args {
    /// Orders per second offered.
    #[arg(long, default_value_t = 10_000.0)]
    rate: f64,
    /// Measured run, e.g. 20s or 500ms.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Unmeasured run before it.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    warmup: Duration,
    /// QUIC connections the orders are spread over.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    #[arg(long, default_value = "loadtest/scenarios/flash-sale.toml")]
    scenario: PathBuf,
    /// Daemon address (ignored with --spawn-server).
    #[arg(long, default_value = "127.0.0.1:4433")]
    target: SocketAddr,
    /// Token the orders are sent with.
    #[arg(long, default_value = "dev-admin-token")]
    token: String,
    /// Token that sets the scenario's stock and reads orders back.
    #[arg(long, default_value = "dev-admin-token")]
    admin_token: String,
    /// Certificate to trust (default: the daemon's omniroute-data/cert.pem).
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Accept any certificate (local development only).
    #[arg(long)]
    insecure: bool,
    /// Start a daemon on a temporary data directory, in a child process, and stop it at the end.
    #[arg(long)]
    spawn_server: bool,
    /// Write the measured latency intervals as an HdrHistogram log here.
    #[arg(long)]
    hlog: Option<PathBuf>,
    /// Write the summary as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// An answer later than this counts as timed out.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    timeout: Duration,
    /// Step the rate up (×--step-factor, one --duration each) until p99
    /// passes --max-p99-ms or the achieved rate falls below 95 % of offered;
    /// report the highest sustainable rate.
    #[arg(long)]
    find_max: bool,
    #[arg(long, default_value_t = 10.0)]
    max_p99_ms: f64,
    #[arg(long, default_value_t = 1.5)]
    step_factor: f64,
    /// Write an SVG chart here: latency percentiles over time and the
    /// percentile distribution (with Redis's, under --compare-redis).
    #[arg(long)]
    chart: Option<PathBuf>,
    /// Run the same orders, rate steps and connections against a local
    /// redis-server with an all-or-nothing Lua reservation script, and
    /// report omniroute's highest sustainable rate over Redis's.
    #[arg(long)]
    compare_redis: bool,
    /// With --compare-redis: Redis durable too, its append-only file
    /// fsynced on every write (`appendfsync always`) in a temporary
    /// directory. Without it Redis keeps nothing on disk, as such
    /// comparisons are usually run.
    #[arg(long, requires = "compare_redis")]
    redis_fsync: bool,
    /// How often the scheduler sends what is due.
    #[arg(long, default_value = "250us", value_parser = parse_duration)]
    tick: Duration,
    /// Journal durability of the --spawn-server daemon: "fsync" (the
    /// default, as in production) or "none" (answers before the fsync).
    #[arg(long, default_value = "fsync")]
    durability: String,
    /// `[orders] retention_ms` of the --spawn-server daemon: how long its
    /// closed orders stay in memory (the embedded config's day if not given).
    #[arg(long)]
    retention_ms: Option<u64>,
    /// With --spawn-server: print the daemon's resident memory this often
    /// (from /proc), and its growth over the second half of the run.
    #[arg(long, value_parser = parse_duration)]
    rss_every: Option<Duration>,
    /// With --spawn-server: after the run and its audit, kill the daemon
    /// with SIGKILL and time its restart on the same data directory.
    #[arg(long, requires = "spawn_server")]
    kill_restart: bool,
    /// Internal: run the daemon for --spawn-server in this process.
    #[arg(long, hide = true)]
    serve_child: Option<PathBuf>,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
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

/// The daemon side of --spawn-server: the embedded default config on a
/// random loopback port; prints `LISTENING <addr> <cert>` when ready.
async fn serve_child(
    data_dir: &Path,
    durability: &str,
    retention_ms: Option<u64>,
) -> Result<(), String> {
    let mut config = omniroute::config::Config::default_config()
        .validate()
        .map_err(|e| e.to_string())?;
    config.server.listen = "127.0.0.1:0".parse().expect("address");
    config.server.data_dir = data_dir.to_path_buf();
    config.store.durability = match durability {
        "fsync" => omniroute::journal::Durability::Fsync,
        "none" => omniroute::journal::Durability::None,
        other => return Err(format!("--durability {other:?} is not fsync or none")),
    };
    if let Some(retention_ms) = retention_ms {
        config.engine.order_retention_ms = retention_ms;
    }
    // A free port: the spawned server must not take an operator's 9090.
    config.admin = Some("127.0.0.1:0".parse().expect("address"));
    let daemon = omniroute::daemon::start(&config, None).await?;
    if let Some(admin) = &daemon.admin {
        eprintln!("spawned server: metrics on http://{}/metrics", admin.addr);
    }
    println!(
        "LISTENING {} {}",
        daemon.server.addr,
        daemon.server.cert_path.display()
    );
    // Stop when the parent closes our stdin (or dies).
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(_)) = stdin.next_line().await {}
    if let Some(journal) = daemon.journal_summary() {
        eprintln!("daemon {journal}");
    }
    daemon.shutdown().await
}

struct Spawned {
    child: tokio::process::Child,
    addr: SocketAddr,
    cert: PathBuf,
    data_dir: PathBuf,
}

/// Starts the daemon for --spawn-server in a child process on `data_dir`
/// (a new temporary one if None) and waits until it listens.
async fn spawn_server(args: &Args, data_dir: Option<PathBuf>) -> Result<Spawned, String> {
    let data_dir = data_dir.unwrap_or_else(|| {
        std::env::temp_dir().join(format!("omniroute-loadtest-{}", std::process::id()))
    });
    std::fs::create_dir_all(&data_dir).map_err(|e| e.to_string())?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut command = tokio::process::Command::new(exe);
    command
        .arg("--serve-child")
        .arg(&data_dir)
        .arg("--durability")
        .arg(&args.durability);
    if let Some(retention_ms) = args.retention_ms {
        command.arg("--retention-ms").arg(retention_ms.to_string());
    }
    let mut child = command
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start the daemon: {e}"))?;
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let ready = tokio::time::timeout(Duration::from_secs(60), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(rest) = line.strip_prefix("LISTENING ") {
                let (addr, cert) = rest.split_once(' ').ok_or("bad LISTENING line")?;
                return Ok((
                    addr.parse::<SocketAddr>().map_err(|e| e.to_string())?,
                    PathBuf::from(cert),
                ));
            }
        }
        Err("the daemon exited before it listened".to_string())
    })
    .await
    .map_err(|_| "the daemon did not start within 60 s".to_string())??;
    Ok(Spawned {
        child,
        addr: ready.0,
        cert: ready.1,
        data_dir,
    })
}

/// Builds the scenario's orders, reproducibly: the same seed gives the
/// same orders to omniroute and to Redis.
struct Orders {
    scenario: Scenario,
    rng: rand::rngs::StdRng,
    prefix: String,
    /// Popularity of a SKU range (rank 1 most popular).
    zipf: Option<rand_distr::Zipf<f64>>,
}

impl Orders {
    fn new(scenario: &Scenario, seed: u64, prefix: &str) -> Orders {
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

/// Writes the measured intervals as an HdrHistogram interval log (V2,
/// compressed), readable by HdrHistogram's log tools.
fn write_hlog(path: &Path, intervals: &[Interval]) -> Result<(), String> {
    use hdrhistogram::serialization::interval_log::IntervalLogWriterBuilder;
    use hdrhistogram::serialization::V2DeflateSerializer;
    let Some(first) = intervals.first().map(|i| i.wall) else {
        return Ok(());
    };
    let mut file = std::io::BufWriter::new(
        std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?,
    );
    let mut serializer = V2DeflateSerializer::new();
    let mut log = IntervalLogWriterBuilder::new()
        .add_comment("omniroute-loadtest: latency from intended send time, microseconds")
        .with_start_time(first)
        .with_base_time(first)
        .begin_log_with(&mut file, &mut serializer)
        .map_err(|e| e.to_string())?;
    for interval in intervals {
        let offset = interval.wall.duration_since(first).unwrap_or_default();
        log.write_histogram(&interval.histogram, offset, interval.length, None)
            .map_err(|e| format!("{e:?}"))?;
    }
    Ok(())
}

/// The stock the audit counts from: the scenario's own, or, when it sets
/// none, each of its SKUs' ATP at the daemon before the run.
async fn starting_stock(
    admin: &Client,
    scenario: &Scenario,
) -> Result<BTreeMap<Cell, u64>, String> {
    let mut starting = BTreeMap::new();
    if !scenario.stock.is_empty() {
        for s in &scenario.stock {
            *starting.entry((s.sku.clone(), s.node.clone())).or_default() += u64::from(s.on_hand);
        }
        return Ok(starting);
    }
    let skus: Vec<String> = match &scenario.orders.sku_range {
        Some(range) => (1..=range.count)
            .map(|i| format!("{}{i}", range.prefix))
            .collect(),
        None => scenario.orders.skus.clone(),
    };
    read_atp(admin, &skus, &mut starting).await?;
    Ok(starting)
}

/// Each SKU's ATP per node at the daemon, into `into`.
async fn read_atp(
    admin: &Client,
    skus: &[String],
    into: &mut BTreeMap<Cell, u64>,
) -> Result<(), String> {
    for chunk in skus.chunks(AUDIT_BATCH) {
        let answers =
            futures::future::join_all(chunk.iter().map(|sku| admin.availability(sku, None))).await;
        for (sku, answer) in chunk.iter().zip(answers) {
            match answer {
                Ok(nodes) => {
                    for node in nodes {
                        into.insert((sku.clone(), node.node), u64::from(node.atp));
                    }
                }
                // A SKU the daemon does not know has no stock to oversell.
                Err(ClientError::Server { .. }) => {}
                Err(e) => return Err(format!("reading the stock of {sku}: {e}")),
            }
        }
    }
    Ok(())
}

/// What reading back the routed orders found.
#[derive(Default)]
struct ReadBack {
    /// Answered routed, unknown to the daemon.
    missing: u64,
    /// Expired although their own deadline had not come when read.
    early_expiries: u64,
    /// Closed and retired (`[orders] retention_ms`) by the time they were
    /// read: counted from what their acknowledged follow-ups did.
    archived: u64,
}

/// Reads every routed order back, then every SKU's ATP, into `audit`. A
/// hold that expires between the two reads shows as a mismatch that is
/// not one, so a mismatch is read again (from the audit as the run left
/// it), at most `AUDIT_READS` times, a hold's length apart at most.
async fn read_back_settled(
    admin: &Client,
    orders: &RunOrders<'_>,
    run: Audit,
) -> Result<(Audit, ReadBack), String> {
    let mut skus: Vec<String> = run
        .starting
        .keys()
        .chain(run.told.keys())
        .map(|(sku, _)| sku.clone())
        .collect();
    skus.sort();
    skus.dedup();
    let mut read = 0;
    loop {
        read += 1;
        let mut audit = run.clone();
        let found = read_back_orders(admin, orders, &mut audit).await;
        let mut final_atp = BTreeMap::new();
        read_atp(admin, &skus, &mut final_atp).await?;
        audit.final_atp = final_atp;
        if audit.stock_mismatch_units() == 0 || read == AUDIT_READS {
            return Ok((audit, found));
        }
        println!("audit: stock moved while it was read (a hold ran out in between); reading again");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Times the audit reads orders and stock before a mismatch stands.
const AUDIT_READS: u32 = 3;

/// What the run knows of the orders it routed, for reading them back.
struct RunOrders<'a> {
    channel: &'a str,
    /// Of every client order id of the run: the key of request `id` is
    /// `{prefix}{id}`.
    prefix: &'a str,
    /// (request id, the daemon's order id) of each routed order.
    routed: &'a [(u64, u64)],
    /// What each order was told, by request id (when kept).
    promises: &'a std::collections::HashMap<u64, Vec<(String, String, u32)>>,
    endings: &'a drive::Endings,
}

/// Asks the daemon for every routed order: how many it does not know, what
/// it holds for the others now, per cell, and (where `promises` were kept)
/// the units it took back from what each order was told: expired with
/// its hold, or taken back otherwise.
async fn read_back_orders(admin: &Client, orders: &RunOrders<'_>, audit: &mut Audit) -> ReadBack {
    let RunOrders {
        channel,
        prefix,
        routed,
        promises,
        ..
    } = *orders;
    let mut found = ReadBack::default();
    for chunk in routed.chunks(AUDIT_BATCH) {
        // By the id each was answered with: an id tells an archived order
        // from a lost one for good (a key only while it is remembered).
        let answers = futures::future::join_all(
            chunk
                .iter()
                .map(|&(_, order_id)| admin.get_order_by_id(channel, order_id)),
        )
        .await;
        // After the answers: an order expired by now must be past its deadline.
        let read_at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        for ((id, _), answer) in chunk.iter().zip(answers) {
            match answer {
                Ok(view) if view.client_order_id != format!("{prefix}{id}") => {
                    println!(
                        "audit: order {} is {:?}, answered for {prefix}{id}",
                        view.order_id, view.client_order_id
                    );
                    found.missing += 1;
                }
                Ok(view) => {
                    let expired = view.state == order_states::EXPIRED;
                    if expired && view.expires_at_ms > read_at_ms {
                        found.early_expiries += 1;
                    }
                    let mut held: BTreeMap<&str, u64> = BTreeMap::new();
                    for a in &view.allocations {
                        let units = u64::from(a.open) + u64::from(a.shipped);
                        audit.hold_now(&a.sku, &a.node, units);
                        *held.entry(a.sku.as_str()).or_default() += units;
                    }
                    for (sku, node, told) in promises.get(id).into_iter().flatten() {
                        let left = held.entry(sku.as_str()).or_default();
                        let kept = (*left).min(u64::from(*told));
                        *left -= kept;
                        let given_back = u64::from(*told) - kept;
                        if expired {
                            audit.expire(sku, node, given_back);
                        } else {
                            audit.withdraw(sku, node, given_back);
                        }
                    }
                }
                Err(ClientError::Server { code, .. }) if code == ErrorCode::Archived as u16 => {
                    found.archived += 1;
                    archived(*id, orders, audit);
                }
                Err(_) => found.missing += 1,
            }
        }
    }
    found
}

/// Counts an archived order (closed, retired) by its follow-ups: what
/// was acknowledged shipped is held for good; unless it was cancelled
/// (counted when acknowledged), the rest of what it was told expired.
fn archived(id: u64, orders: &RunOrders<'_>, audit: &mut Audit) {
    let RunOrders {
        promises, endings, ..
    } = *orders;
    let mut shipped: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    for (sku, node, qty) in endings.shipped.get(&id).into_iter().flatten() {
        audit.hold_now(sku, node, u64::from(*qty));
        *shipped.entry((sku, node)).or_default() += u64::from(*qty);
    }
    if endings.cancelled.contains(&id) {
        return;
    }
    for (sku, node, told) in promises.get(&id).into_iter().flatten() {
        let left = shipped.entry((sku, node)).or_default();
        let kept = (*left).min(u64::from(*told));
        *left -= kept;
        audit.expire(sku, node, u64::from(*told) - kept);
    }
}

/// The scenario's feed: restocks at a constant rate over its stock cells,
/// until `stop`. Returns the units acknowledged per cell and the requests
/// refused.
async fn feed(
    admin: Arc<Client>,
    scenario: Scenario,
    starting: BTreeMap<Cell, u64>,
    seed: u64,
    stop: Arc<AtomicBool>,
) -> (BTreeMap<Cell, u64>, u64) {
    let feed = scenario.feed.clone().expect("a feed");
    let mut cells = FeedCells::new(&scenario, &starting, seed ^ 3);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let schedule = omniroute_loadtest::Schedule {
        start: Instant::now(),
        rate_per_s: feed.updates_per_s / feed.batch as f64,
    };
    let mut ticker = tokio::time::interval(Duration::from_millis(5));
    let mut requests = futures::stream::FuturesUnordered::new();
    let mut sent = 0;
    let mut restocked = BTreeMap::new();
    let mut errors = 0u64;
    let mut tally =
        |result: Result<(u32, u32, u32), ClientError>, entries: Vec<StockAdjust>| match result {
            Ok((_, _, 0)) => {
                for e in entries {
                    *restocked.entry((e.sku, e.node)).or_default() += e.delta as u64;
                }
            }
            _ => errors += 1,
        };
    use futures::StreamExt;
    while !stop.load(Ordering::Relaxed) {
        tokio::select! {
            _ = ticker.tick() => {
                while sent < schedule.due(Instant::now()) {
                    let entries: Vec<StockAdjust> = (0..feed.batch)
                        .map(|_| {
                            let (sku, node) = cells.next();
                            StockAdjust { sku, node, delta: i64::from(rng.random_range(feed.delta_min..=feed.delta_max)) }
                        })
                        .collect();
                    let admin = admin.clone();
                    requests.push(async move { (admin.stock_adjust(entries.clone()).await, entries) });
                    sent += 1;
                }
            }
            Some((result, entries)) = requests.next(), if !requests.is_empty() => tally(result, entries),
        }
    }
    while let Some((result, entries)) = requests.next().await {
        tally(result, entries);
    }
    (restocked, errors)
}

/// The cells a feed restocks: the scenario's own stock cells, uniformly;
/// or, for a scenario over the daemon's stock (a SKU range), a SKU drawn
/// as the orders draw theirs (so the feed follows demand) at one of the
/// nodes that stocked it at the start.
struct FeedCells {
    listed: Vec<Cell>,
    by_sku: BTreeMap<String, Vec<String>>,
    orders: Option<Orders>,
    rng: rand::rngs::StdRng,
}

impl FeedCells {
    fn new(scenario: &Scenario, starting: &BTreeMap<Cell, u64>, seed: u64) -> FeedCells {
        let listed: Vec<Cell> = scenario
            .stock
            .iter()
            .map(|s| (s.sku.clone(), s.node.clone()))
            .collect();
        let mut by_sku: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (sku, node) in starting.keys() {
            by_sku.entry(sku.clone()).or_default().push(node.clone());
        }
        FeedCells {
            orders: listed
                .is_empty()
                .then(|| Orders::new(scenario, seed, "feed-")),
            listed,
            by_sku,
            rng: rand::rngs::StdRng::seed_from_u64(seed),
        }
    }

    fn next(&mut self) -> Cell {
        let Some(orders) = self.orders.as_mut() else {
            return self.listed[self.rng.random_range(0..self.listed.len())].clone();
        };
        loop {
            let sku = orders.order(0).lines.swap_remove(0).0;
            if let Some(nodes) = self.by_sku.get(&sku) {
                return (sku, nodes[self.rng.random_range(0..nodes.len())].clone());
            }
        }
    }
}

/// Samples the resident memory of process `pid` every `every` and prints
/// it, until `stop`; returns (seconds since start, MiB) per sample.
async fn sample_rss(pid: u32, every: Duration, stop: Arc<AtomicBool>) -> Vec<(f64, f64)> {
    let start = Instant::now();
    let mut samples = Vec::new();
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !stop.load(Ordering::Relaxed) {
        ticker.tick().await;
        let Some(mib) = rss_mib(pid) else { break };
        let at = start.elapsed().as_secs_f64();
        println!("rss: {at:.0} s {mib:.1} MiB");
        samples.push((at, mib));
    }
    samples
}

/// VmRSS of `pid` from /proc, in MiB.
fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

/// Growth of the samples over the second half of the run, in percent:
/// from the first sample at or after half the last sample's time to the
/// last.
fn rss_growth_second_half_percent(samples: &[(f64, f64)]) -> Option<f64> {
    let &(end, last) = samples.last()?;
    let &(_, middle) = samples.iter().find(|(at, _)| *at >= end / 2.0)?;
    Some((last - middle) / middle * 100.0)
}

/// Kills the spawned daemon with SIGKILL, starts it again on the same data
/// directory and returns it with the milliseconds until it listened.
async fn kill_and_restart(args: &Args, mut spawned: Spawned) -> Result<(Spawned, f64), String> {
    spawned
        .child
        .start_kill()
        .map_err(|e| format!("kill -9: {e}"))?;
    let _ = spawned.child.wait().await;
    let started = Instant::now();
    let restarted = spawn_server(args, Some(spawned.data_dir.clone())).await?;
    let ms = started.elapsed().as_secs_f64() * 1e3;
    println!("restart after kill -9: listening in {ms:.0} ms");
    Ok((restarted, ms))
}

/// The scenario's node events, `delay` plus each event's time from now.
async fn node_events(admin: Arc<Client>, scenario: Scenario, delay: Duration) -> u64 {
    let start = tokio::time::Instant::now() + delay;
    let mut rerouted = 0;
    for event in &scenario.events {
        tokio::time::sleep_until(start + Duration::from_secs_f64(event.at_s)).await;
        match admin.set_node_online(&event.node, event.online).await {
            Ok(count) => {
                println!(
                    "event: {} {} ({count} orders re-routed)",
                    event.node,
                    if event.online { "online" } else { "offline" }
                );
                rerouted += u64::from(count);
            }
            Err(e) => eprintln!("event: setting {} online={}: {e}", event.node, event.online),
        }
    }
    rerouted
}

/// One open-loop run against one target: warmup, the measured step(s),
/// and under --find-max a run at half the highest sustainable rate.
struct Measured {
    /// The step reported: the highest sustainable one, or the last.
    report: Summary,
    histogram: hdrhistogram::Histogram<u64>,
    uncorrected: hdrhistogram::Histogram<u64>,
    highest: Option<f64>,
    p99_at_half_us: Option<u64>,
    run: RunResult,
}

struct Target {
    label: &'static str,
    sink: Sink,
    events: mpsc::Sender<Event>,
    outstanding: Arc<AtomicU64>,
    collector: tokio::task::JoinHandle<()>,
}

async fn phase(
    target: &Target,
    orders: Orders,
    first: u64,
    rate: f64,
    duration: Duration,
    measured: bool,
    args: &Args,
) -> Result<(Orders, u64, omniroute_loadtest::Recorder, Duration), String> {
    let sink = target.sink.clone();
    let events = target.events.clone();
    let outstanding = target.outstanding.clone();
    let tick = args.tick;
    let (orders, end, start) = tokio::task::spawn_blocking(move || {
        let mut orders = orders;
        let (end, start) = drive::run_phase(
            &sink,
            &mut orders,
            &events,
            &outstanding,
            first,
            rate,
            duration,
            tick,
            measured,
        );
        (orders, end, start)
    })
    .await
    .map_err(|e| e.to_string())?;
    let (reply, answer) = oneshot::channel();
    target
        .events
        .send(Event::Drain {
            end,
            deadline: Instant::now() + args.timeout,
            reply,
        })
        .await
        .map_err(|_| "the collector stopped".to_string())?;
    let result = answer
        .await
        .map_err(|_| "the collector stopped".to_string())?;
    let elapsed = start.elapsed();
    Ok((orders, end, result.recorder, elapsed))
}

async fn measure(
    target: Target,
    mut orders: Orders,
    scenario: &str,
    args: &Args,
) -> Result<Measured, String> {
    let mut next = 0;
    if !args.warmup.is_zero() {
        let (o, end, _, _) =
            phase(&target, orders, next, args.rate, args.warmup, false, args).await?;
        (orders, next) = (o, end);
    }
    let max_p99_us = (args.max_p99_ms * 1000.0) as u64;
    let mut rate = args.rate;
    let mut best: Option<(Summary, omniroute_loadtest::Recorder)> = None;
    let mut last: Option<(Summary, omniroute_loadtest::Recorder)> = None;
    loop {
        let (o, end, recorder, elapsed) =
            phase(&target, orders, next, rate, args.duration, true, args).await?;
        (orders, next) = (o, end);
        let summary = Summary::new(target.label, scenario, elapsed, rate, &recorder);
        if !args.find_max {
            last = Some((summary, recorder));
            break;
        }
        let sustained = summary.sustained(max_p99_us);
        println!(
            "{} find-max step: offered {rate:.0}/s, achieved {:.0}/s, p99 {} us, errors {}: {}",
            target.label,
            summary.rate_achieved,
            summary.p99_us,
            summary.errors,
            if sustained {
                "sustained"
            } else {
                "not sustained"
            }
        );
        if !sustained {
            last = Some((summary, recorder));
            break;
        }
        best = Some((summary, recorder));
        rate *= args.step_factor.max(1.01);
        if rate > MAX_FIND_MAX_RATE {
            break;
        }
    }
    let highest = best.as_ref().map(|(s, _)| s.rate_offered);
    let mut p99_at_half_us = None;
    if let Some(highest) = highest {
        println!("{} highest sustainable rate: {highest:.0} orders/s (p99 bound {} ms); now at half of it", target.label, args.max_p99_ms);
        let (_, _, recorder, elapsed) = phase(
            &target,
            orders,
            next,
            highest / 2.0,
            args.duration,
            true,
            args,
        )
        .await?;
        let half = Summary::new(target.label, scenario, elapsed, highest / 2.0, &recorder);
        println!(
            "{} at {:.0}/s: achieved {:.0}/s, p50 {} us, p99 {} us, p99.9 {} us",
            target.label,
            highest / 2.0,
            half.rate_achieved,
            half.p50_us,
            half.p99_us,
            half.p999_us
        );
        p99_at_half_us = Some(half.p99_us);
    } else if args.find_max {
        println!(
            "{}: not even the starting rate {:.0}/s was sustainable",
            target.label, args.rate
        );
    }
    let (report, recorder) = best.or(last).expect("at least one step");
    let (reply, answer) = oneshot::channel();
    let _ = target.events.send(Event::Finish { reply }).await;
    let run = answer
        .await
        .map_err(|_| "the collector stopped".to_string())?;
    let _ = target.collector.await;
    Ok(Measured {
        report,
        histogram: recorder.corrected,
        uncorrected: recorder.uncorrected,
        highest,
        p99_at_half_us,
        run,
    })
}

/// Highest rate --find-max tries.
const MAX_FIND_MAX_RATE: f64 = 10_000_000.0;

/// What a run hands back for the report and the chart.
struct Outcome {
    summary: Summary,
    intervals: Vec<Interval>,
    histogram: hdrhistogram::Histogram<u64>,
    uncorrected: hdrhistogram::Histogram<u64>,
    redis_histogram: Option<hdrhistogram::Histogram<u64>>,
}

fn seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

async fn run(args: &Args) -> Result<Outcome, String> {
    let scenario = Scenario::parse(
        &std::fs::read_to_string(&args.scenario)
            .map_err(|e| format!("{}: {e}", args.scenario.display()))?,
    )?;
    let spawned = if args.spawn_server {
        Some(spawn_server(args, None).await?)
    } else {
        None
    };
    let (target, trust) = match &spawned {
        Some(s) => (s.addr, Trust::CaFile(s.cert.clone())),
        None if args.insecure => (args.target, Trust::InsecureDevelopmentOnly),
        None => (
            args.target,
            Trust::CaFile(
                args.ca
                    .clone()
                    .unwrap_or_else(|| PathBuf::from("omniroute-data/cert.pem")),
            ),
        ),
    };
    let admin = Arc::new(
        Client::connect(target, "localhost", trust.clone(), &args.admin_token)
            .await
            .map_err(|e| format!("admin connection: {e}"))?,
    );
    let mut clients = Vec::new();
    for _ in 0..args.connections.max(1) {
        clients.push(
            Client::connect(target, "localhost", trust.clone(), &args.token)
                .await
                .map_err(|e| e.to_string())?,
        );
    }
    let entries: Vec<StockSet> = scenario
        .stock
        .iter()
        .map(|s| StockSet {
            sku: s.sku.clone(),
            node: s.node.clone(),
            on_hand: s.on_hand,
            safety_stock: Some(0),
        })
        .collect();
    if !entries.is_empty() {
        admin
            .stock_set(entries)
            .await
            .map_err(|e| format!("setting the scenario's stock: {e}"))?;
    }
    let starting = starting_stock(&admin, &scenario).await?;
    println!(
        "{}: {} orders/s for {:?} after {:?} of warmup, {} connections to {target}{}",
        scenario.name,
        args.rate,
        args.duration,
        args.warmup,
        clients.len(),
        if args.find_max {
            ", stepping the rate up"
        } else {
            ""
        }
    );
    let seed = seed();
    let prefix = format!("lt-{seed}-");

    let stop_feed = Arc::new(AtomicBool::new(false));
    let feed_task = scenario.feed.is_some().then(|| {
        tokio::spawn(feed(
            admin.clone(),
            scenario.clone(),
            starting.clone(),
            seed ^ 1,
            stop_feed.clone(),
        ))
    });
    let events_task = (!scenario.events.is_empty())
        .then(|| tokio::spawn(node_events(admin.clone(), scenario.clone(), args.warmup)));
    let stop_rss = Arc::new(AtomicBool::new(false));
    let rss_task = match (&spawned, args.rss_every) {
        (Some(s), Some(every)) => {
            let pid = s.child.id().ok_or("the spawned daemon has no pid")?;
            Some(tokio::spawn(sample_rss(pid, every, stop_rss.clone())))
        }
        _ => None,
    };

    let (events, receiver) = drive::channel();
    let outstanding = Arc::new(AtomicU64::new(0));
    let sink = sinks::quic(&clients, &events).await?;
    let follow_ups = scenario.follow_up.clone().map(|mix| {
        FollowUps::new(
            mix,
            seed ^ 2,
            scenario.channel.clone(),
            prefix.clone(),
            sink.clone(),
        )
    });
    let collector = Collector::spawn(
        receiver,
        outstanding.clone(),
        follow_ups,
        // What each order was told is kept when the daemon may take it
        // back: a node event, or holds that may expire within the run.
        !scenario.events.is_empty() || scenario.holds_expire_in_runs(),
        "omniroute",
    );
    let target_side = Target {
        label: "omniroute",
        sink,
        events,
        outstanding,
        collector,
    };
    let measured = measure(
        target_side,
        Orders::new(&scenario, seed, &prefix),
        &scenario.name,
        args,
    )
    .await?;

    stop_feed.store(true, Ordering::Relaxed);
    let (restocked, feed_errors) = match feed_task {
        Some(task) => task.await.map_err(|e| e.to_string())?,
        None => (BTreeMap::new(), 0),
    };
    let rerouted = match events_task {
        Some(task) => task.await.map_err(|e| e.to_string())?,
        None => 0,
    };
    // Let follow-ups still in flight land before reading back.
    tokio::time::sleep(Duration::from_millis(200)).await;
    if scenario.holds_expire_in_runs() {
        // Every hold still open runs out first, so that none runs out
        // while the audit reads (the expiry tick is a few ms after it).
        let ttl_ms = u64::from(scenario.orders.hold_ttl_ms.unwrap_or(0));
        tokio::time::sleep(Duration::from_millis(ttl_ms + 500)).await;
    }
    stop_rss.store(true, Ordering::Relaxed);
    let rss = match rss_task {
        Some(task) => task.await.map_err(|e| e.to_string())?,
        None => Vec::new(),
    };

    let RunResult {
        mut audit,
        routed,
        intervals,
        follow_ups,
        promises,
        endings,
    } = measured.run;
    audit.starting = starting.clone();
    audit.restocked = restocked;
    let run_orders = RunOrders {
        channel: &scenario.channel,
        prefix: &prefix,
        routed: &routed,
        promises: &promises,
        endings: &endings,
    };
    let (audit, read_back) = read_back_settled(&admin, &run_orders, audit).await?;
    let mut skus: Vec<String> = audit.final_atp.keys().map(|(sku, _)| sku.clone()).collect();
    skus.dedup();
    if !scenario.stock.is_empty() {
        for sku in skus.iter().take(8) {
            let left: u64 = audit
                .final_atp
                .iter()
                .filter(|((s, _), _)| s == sku)
                .map(|(_, v)| v)
                .sum();
            println!("audit {sku}: {left} units left at the daemon, {} expected from what buyers were told", audit.expected_left(sku));
        }
    }
    let mut summary = measured.report;
    summary.oversold_units = audit.oversold_units();
    summary.oversold_told_units = audit.oversold_told();
    summary.oversold_held_units = audit.oversold_held();
    summary.withdrawn_units = audit.withdrawn.values().sum();
    if summary.oversold_held_units > 0 {
        for (cell, held) in &audit.held_now {
            if *held > audit.stock(cell) {
                println!(
                    "audit: {cell:?} holds {held} units for the run's orders, stock was {}",
                    audit.stock(cell)
                );
            }
        }
    }
    summary.missing_orders = read_back.missing;
    summary.archived_orders = read_back.archived;
    summary.rss_mib = rss;
    summary.rss_growth_second_half_percent = rss_growth_second_half_percent(&summary.rss_mib);
    summary.early_expiries = read_back.early_expiries;
    summary.expired_units = audit.expired.values().sum();
    summary.stock_mismatch_units = audit.stock_mismatch_units();
    summary.follow_ups = follow_ups;
    summary.restocked_units = audit.restocked.values().sum();
    summary.feed_errors = feed_errors;
    summary.rerouted_orders = rerouted;
    summary.highest_sustainable_rate = measured.highest;
    summary.p99_at_half_max_us = measured.p99_at_half_us;
    summary.durability = spawned.as_ref().map(|_| args.durability.clone());

    for client in clients {
        client.close().await;
    }
    if let Ok(admin) = Arc::try_unwrap(admin) {
        admin.close().await;
    }
    let spawned = match spawned {
        Some(spawned) if args.kill_restart => {
            let (restarted, ms) = kill_and_restart(args, spawned).await?;
            summary.restart_ms = Some(ms);
            Some(restarted)
        }
        other => other,
    };
    if let Some(mut spawned) = spawned {
        drop(spawned.child.stdin.take());
        let _ = tokio::time::timeout(Duration::from_secs(20), spawned.child.wait()).await;
        let _ = spawned.child.start_kill();
        let _ = std::fs::remove_dir_all(&spawned.data_dir);
    }

    let mut redis_histogram = None;
    if args.compare_redis {
        let (redis, histogram) = compare_redis(args, &scenario, &starting, seed, &prefix).await?;
        summary.ratio_vs_redis = ratio(
            summary.highest_sustainable_rate,
            redis.highest_sustainable_rate,
        );
        summary.redis = Some(Box::new(redis));
        redis_histogram = Some(histogram);
    }
    Ok(Outcome {
        summary,
        intervals,
        histogram: measured.histogram,
        uncorrected: measured.uncorrected,
        redis_histogram,
    })
}

/// What the Redis side does not do, or how it is durable, for the report.
fn redis_side_note(args: &Args) -> &'static str {
    if args.redis_fsync {
        "no routing; append-only file fsynced on every write"
    } else {
        "no routing, no fsync"
    }
}

/// The same orders, rate steps and connections against Redis with the
/// reservation script; stock per SKU as omniroute started with.
async fn compare_redis(
    args: &Args,
    scenario: &Scenario,
    starting: &BTreeMap<Cell, u64>,
    seed: u64,
    prefix: &str,
) -> Result<(Summary, hdrhistogram::Histogram<u64>), String> {
    println!(
        "redis: the same orders, rate steps and connections against redis-server with an all-or-nothing Lua reservation script ({})",
        redis_side_note(args)
    );
    let server = sinks::start_redis(args.redis_fsync).await?;
    let mut per_sku: BTreeMap<String, u64> = BTreeMap::new();
    for ((sku, _), units) in starting {
        *per_sku.entry(sku.clone()).or_default() += units;
    }
    let stock: Vec<(String, u64)> = per_sku.iter().map(|(s, u)| (s.clone(), *u)).collect();
    let (events, receiver) = drive::channel();
    let outstanding = Arc::new(AtomicU64::new(0));
    let (sink, mut admin) = sinks::redis(&server, args.connections, &stock, &events).await?;
    let collector = Collector::spawn(receiver, outstanding.clone(), None, false, "redis");
    let target = Target {
        label: "redis",
        sink,
        events,
        outstanding,
        collector,
    };
    let measured = measure(
        target,
        Orders::new(scenario, seed, prefix),
        &scenario.name,
        args,
    )
    .await?;
    let mut audit = measured.run.audit;
    audit.starting = per_sku
        .iter()
        .map(|(s, u)| ((s.clone(), ANY_NODE.to_string()), *u))
        .collect();
    let mut skus: Vec<String> = per_sku.keys().cloned().collect();
    for (sku, _) in audit.told.keys() {
        if !per_sku.contains_key(sku) {
            skus.push(sku.clone());
        }
    }
    let left = sinks::redis_stock(&mut admin, &skus).await?;
    for (sku, units) in skus.iter().zip(left) {
        audit
            .final_atp
            .insert((sku.clone(), ANY_NODE.to_string()), units);
    }
    audit.held_now = audit.told.clone();
    let mut summary = measured.report;
    summary.oversold_units = audit.oversold_units();
    summary.stock_mismatch_units = audit.stock_mismatch_units();
    summary.highest_sustainable_rate = measured.highest;
    summary.p99_at_half_max_us = measured.p99_at_half_us;
    summary.durability = Some(sinks::redis_durability(&mut admin).await?);
    Ok((summary, measured.histogram))
}

fn print(summary: &Summary) {
    let t = &summary.target;
    println!(
        "{t}: offered {:.0}/s, achieved {:.0}/s over {:.1} s ({} requests)",
        summary.rate_offered, summary.rate_achieved, summary.duration_s, summary.requests
    );
    println!(
        "{t}: outcomes {:?}, reject codes {:?}",
        summary.outcomes, summary.reject_codes
    );
    println!(
        "{t}: latency from intended send: p50 {} us, p90 {} us, p99 {} us, p99.9 {} us, max {} us",
        summary.p50_us, summary.p90_us, summary.p99_us, summary.p999_us, summary.max_us
    );
    println!(
        "{t}: latency from actual send:   p50 {} us, p90 {} us, p99 {} us, p99.9 {} us, max {} us",
        summary.uncorrected_p50_us,
        summary.uncorrected_p90_us,
        summary.uncorrected_p99_us,
        summary.uncorrected_p999_us,
        summary.uncorrected_max_us
    );
    println!(
        "{t}: errors {}, missing orders {}, stock mismatch {} units",
        summary.errors, summary.missing_orders, summary.stock_mismatch_units
    );
    if summary.archived_orders > 0 {
        println!(
            "{t}: archived orders {} (closed and retired; audited from their follow-ups)",
            summary.archived_orders
        );
    }
    if let Some(growth) = summary.rss_growth_second_half_percent {
        let first = summary.rss_mib.first().map_or(0.0, |s| s.1);
        let last = summary.rss_mib.last().map_or(0.0, |s| s.1);
        println!(
            "{t}: rss {first:.1} MiB at the first sample, {last:.1} MiB at the last; {growth:+.1} % over the second half"
        );
    }
    if let Some(ms) = summary.restart_ms {
        println!("{t}: restart after kill -9: listening in {ms:.0} ms");
    }
    if !summary.follow_ups.is_empty() {
        println!("{t}: follow-ups {:?}", summary.follow_ups);
    }
    if summary.restocked_units > 0 || summary.feed_errors > 0 {
        println!(
            "{t}: feed restocked {} units, {} requests refused",
            summary.restocked_units, summary.feed_errors
        );
    }
    if summary.expired_units > 0 || summary.early_expiries > 0 {
        println!(
            "{t}: expired_units={} (holds run out unconfirmed, back on sale), early_expiries={}",
            summary.expired_units, summary.early_expiries
        );
    }
    if summary.rerouted_orders > 0 {
        println!(
            "{t}: rerouted_orders={} ({} units taken back from buyers and found short)",
            summary.rerouted_orders, summary.withdrawn_units
        );
    }
    if let Some(rate) = summary.highest_sustainable_rate {
        println!("{t}: highest_sustainable_rate={rate:.0}");
    }
    if let Some(p99) = summary.p99_at_half_max_us {
        println!("{t}: p99_at_half_max_us={p99}");
    }
    println!(
        "{t}: oversold_units={} (told beyond stock {}, held beyond stock {})",
        summary.oversold_units, summary.oversold_told_units, summary.oversold_held_units
    );
}

fn main() -> std::process::ExitCode {
    // The generator's own tail as well as the spawned daemon's.
    omniroute::memory::disable_transparent_huge_pages();
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Some(data_dir) = &args.serve_child {
        return match runtime.block_on(serve_child(data_dir, &args.durability, args.retention_ms)) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("omniroute-loadtest daemon: {e}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    match runtime.block_on(run(&args)) {
        Ok(outcome) => {
            let summary = &outcome.summary;
            if let Some(redis) = &summary.redis {
                print(redis);
                println!("redis: {} and no hold expiry or follow-ups; omniroute routes every order and journals it with durability = {:?}", redis_side_note(&args), args.durability);
            }
            print(summary);
            if let Some(path) = &args.chart {
                let mut distributions = vec![
                    (
                        "omniroute, from intended send".to_string(),
                        &outcome.histogram,
                    ),
                    (
                        "omniroute, from actual send".to_string(),
                        &outcome.uncorrected,
                    ),
                ];
                if let Some(h) = &outcome.redis_histogram {
                    distributions.push(("redis, from intended send".to_string(), h));
                }
                let intervals: Vec<(f64, hdrhistogram::Histogram<u64>)> = outcome
                    .intervals
                    .iter()
                    .map(|i| (i.offset_s, i.histogram.clone()))
                    .collect();
                let title = format!(
                    "omniroute-loadtest: {} at {:.0} orders/s offered{}",
                    summary.scenario,
                    summary.rate_offered,
                    summary
                        .highest_sustainable_rate
                        .map_or(String::new(), |r| format!(", highest sustainable {r:.0}/s"))
                );
                if let Err(e) = write_chart(
                    path,
                    &ChartData {
                        title,
                        intervals: &intervals,
                        distributions,
                    },
                ) {
                    eprintln!("omniroute-loadtest: {e}");
                    return std::process::ExitCode::FAILURE;
                }
            }
            if let Some(path) = &args.hlog {
                if let Err(e) = write_hlog(path, &outcome.intervals) {
                    eprintln!("omniroute-loadtest: {e}");
                    return std::process::ExitCode::FAILURE;
                }
            }
            if let Some(path) = &args.json {
                let text = serde_json::to_string_pretty(summary).expect("summary serializes");
                if let Err(e) = std::fs::write(path, text) {
                    eprintln!("omniroute-loadtest: {}: {e}", path.display());
                    return std::process::ExitCode::FAILURE;
                }
            }
            if let Some(ratio) = summary.ratio_vs_redis {
                println!("ratio_vs_redis={ratio:.2}");
            } else if args.compare_redis {
                println!("ratio_vs_redis=unknown (a side found no sustainable rate)");
            }
            let redis_bad = summary.redis.as_ref().is_some_and(|r| r.oversold_units > 0);
            if summary.oversold_units > 0
                || summary.missing_orders > 0
                || summary.stock_mismatch_units > 0
                || summary.early_expiries > 0
                || redis_bad
            {
                return std::process::ExitCode::from(3);
            }
            std::process::ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("omniroute-loadtest: {message}");
            std::process::ExitCode::FAILURE
        }
    }
}
