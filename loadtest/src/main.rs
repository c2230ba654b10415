//! `omniroute-loadtest`: an open-loop load generator for omniroute.
//!
//! Requests leave at a constant rate whatever the answers do; latency is
//! measured from each request's intended send time (coordinated omission
//! corrected, as wrk2) and from its actual send time, into HDR histograms.
//! At the end the generator audits the stock it set against what buyers
//! were told, and asks the daemon for every routed order.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use omniroute_client::{Client, ClientError, Decision, Order, OrderKey, StockSet, Trust};
use omniroute_loadtest::{Audit, Outcome, Recorder, Scenario, Schedule, Summary};
use rand::{Rng, SeedableRng};

use tokio::io::AsyncBufReadExt;
use tokio::sync::{mpsc, Semaphore};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Requests in flight at once across all connections; beyond it sending
/// waits, and the wait shows in the corrected latencies.
const MAX_INFLIGHT_REQUESTS: usize = 200_000;
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
    /// Journal durability of the --spawn-server daemon: "fsync" (the
    /// default, as in production) or "none" (answers before the fsync).
    #[arg(long, default_value = "fsync")]
    durability: String,
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
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        _ => return Err(format!("unknown unit {unit:?}; use ms, s or m")),
    };
    if !(seconds.is_finite() && seconds >= 0.0) {
        return Err(format!("{text:?} is not a duration"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// The daemon side of --spawn-server: the embedded default config on a
/// random loopback port; prints `LISTENING <addr> <cert>` when ready.
async fn serve_child(data_dir: &Path, durability: &str) -> Result<(), String> {
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
    let daemon = omniroute::daemon::start(&config).await?;
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

async fn spawn_server(durability: &str) -> Result<Spawned, String> {
    let data_dir = std::env::temp_dir().join(format!("omniroute-loadtest-{}", std::process::id()));
    std::fs::create_dir_all(&data_dir).map_err(|e| e.to_string())?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = tokio::process::Command::new(exe)
        .arg("--serve-child")
        .arg(&data_dir)
        .arg("--durability")
        .arg(durability)
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

/// Builds the scenario's orders, reproducibly.
struct Orders {
    scenario: Scenario,
    rng: rand::rngs::StdRng,
    prefix: String,
    /// Popularity of a SKU range (rank 1 most popular).
    zipf: Option<rand_distr::Zipf<f64>>,
    /// Ids run on across phases, so that no two orders of a run share one.
    next_id: u64,
}

impl Orders {
    fn order(&mut self) -> Order {
        self.next_id += 1;
        let i = self.next_id;
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
            client_order_id: format!("{}{i}", self.prefix),
            lat: lat + self.rng.random_range(-0.05..0.05),
            lon: lon + self.rng.random_range(-0.05..0.05),
            market: None,
            method,
            hold_ttl_ms: mix.hold_ttl_ms,
            lines: skus
                .into_iter()
                .map(|s| (s.clone(), self.rng.random_range(mix.qty_min..=mix.qty_max)))
                .collect(),
        }
    }
}

/// One answered (or failed) request, for the collector.
struct Done {
    intended: Instant,
    sent: Instant,
    done: Instant,
    key: OrderKey,
    result: Result<Result<Decision, ClientError>, tokio::time::error::Elapsed>,
}

fn outcome(
    result: &Result<Result<Decision, ClientError>, tokio::time::error::Elapsed>,
) -> (Outcome, Option<u16>) {
    match result {
        Err(_) => (Outcome::TimedOut, None),
        Ok(Ok(Decision::Routed { .. })) => (Outcome::Routed, None),
        Ok(Ok(Decision::Rejected { code, .. }))
            if *code == omniroute_client::protocol::reject_codes::SHORT =>
        {
            (Outcome::Short, None)
        }
        Ok(Ok(Decision::Rejected { code, .. })) => (Outcome::Rejected, Some(*code)),
        Ok(Err(ClientError::Server { code, .. }))
            if *code == omniroute_client::protocol::ErrorCode::Overloaded as u16 =>
        {
            (Outcome::Overloaded, None)
        }
        Ok(Err(_)) => (Outcome::Error, None),
    }
}

/// What the collector gathered over the measured run.
#[derive(Default)]
struct Collected {
    recorder: Option<Recorder>,
    audit: Audit,
    routed: Vec<OrderKey>,
    /// Corrected latency per second of measured run, for `--hlog`:
    /// (wall-clock start, length, histogram).
    intervals: Vec<(
        std::time::SystemTime,
        Duration,
        hdrhistogram::Histogram<u64>,
    )>,
}

/// Records every answer; prints a live line each second.
async fn collect(mut answers: mpsc::Receiver<(bool, Done)>) -> Collected {
    let mut collected = Collected {
        recorder: Some(Recorder::new()),
        ..Collected::default()
    };
    let mut interval = Recorder::new();
    let mut second_started = Instant::now();
    let mut second_started_wall = std::time::SystemTime::now();
    let mut any_measured = false;
    let mut elapsed_s = 0;
    while let Some((measured, done)) = answers.recv().await {
        let (outcome, code) = outcome(&done.result);
        if let Ok(Ok(Decision::Routed { allocations, .. })) = &done.result {
            for a in allocations {
                collected.audit.tell(&a.sku, &a.node, a.qty);
            }
            collected.routed.push(done.key.clone());
        }
        if measured {
            let recorder = collected.recorder.as_mut().expect("recorder");
            recorder.record(done.intended, done.sent, done.done, outcome);
            if let Some(code) = code {
                *recorder.reject_codes.entry(code).or_default() += 1;
            }
        }
        interval.record(done.intended, done.sent, done.done, outcome);
        any_measured |= measured;
        if second_started.elapsed() >= Duration::from_secs(1) {
            if measured {
                collected.intervals.push((
                    second_started_wall,
                    second_started.elapsed(),
                    interval.corrected.clone(),
                ));
            }
            elapsed_s += 1;
            let seconds = second_started.elapsed().as_secs_f64();
            let errors = interval.count(Outcome::Error)
                + interval.count(Outcome::TimedOut)
                + interval.count(Outcome::Overloaded);
            println!(
                "t={elapsed_s:>3}s {} achieved {:>9.0}/s p99 {:>7} us routed {} short {} errors {errors}",
                if measured { "measured" } else { "warmup  " },
                interval.total() as f64 / seconds,
                interval.corrected.value_at_quantile(0.99),
                interval.count(Outcome::Routed),
                interval.count(Outcome::Short),
            );
            interval = Recorder::new();
            second_started = Instant::now();
            second_started_wall = std::time::SystemTime::now();
        }
    }
    if any_measured && interval.total() > 0 {
        collected.intervals.push((
            second_started_wall,
            second_started.elapsed(),
            interval.corrected,
        ));
    }
    collected
}

/// Writes the measured intervals as an HdrHistogram interval log (V2,
/// compressed), readable by HdrHistogram's log tools.
fn write_hlog(
    path: &Path,
    intervals: &[(
        std::time::SystemTime,
        Duration,
        hdrhistogram::Histogram<u64>,
    )],
) -> Result<(), String> {
    use hdrhistogram::serialization::interval_log::IntervalLogWriterBuilder;
    use hdrhistogram::serialization::V2DeflateSerializer;
    let Some(first) = intervals.first().map(|i| i.0) else {
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
    for (start, length, histogram) in intervals {
        let offset = start.duration_since(first).unwrap_or_default();
        log.write_histogram(histogram, offset, *length, None)
            .map_err(|e| format!("{e:?}"))?;
    }
    Ok(())
}

/// Sends `rate × duration` orders on schedule; returns when all are answered.
async fn run_phase(
    clients: &[Arc<Client>],
    orders: &mut Orders,
    rate: f64,
    duration: Duration,
    timeout: Duration,
    measured: bool,
    answers: &mpsc::Sender<(bool, Done)>,
) -> Duration {
    let total = (rate * duration.as_secs_f64()).round() as u64;
    let schedule = Schedule {
        start: Instant::now(),
        rate_per_s: rate,
    };
    let inflight = Arc::new(Semaphore::new(MAX_INFLIGHT_REQUESTS));
    let mut ticker = tokio::time::interval(Duration::from_millis(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut next = 0u64;
    while next < total {
        ticker.tick().await;
        let due = schedule.due(Instant::now()).min(total);
        while next < due {
            let intended = schedule.intended(next);
            let order = orders.order();
            let key = OrderKey {
                channel: order.channel.clone(),
                client_order_id: order.client_order_id.clone(),
            };
            let client = clients[(next % clients.len() as u64) as usize].clone();
            let permit = inflight
                .clone()
                .acquire_owned()
                .await
                .expect("semaphore open");
            let answers = answers.clone();
            tokio::spawn(async move {
                let sent = Instant::now();
                let result = tokio::time::timeout(timeout, client.submit(order)).await;
                let _ = answers
                    .send((
                        measured,
                        Done {
                            intended,
                            sent,
                            done: Instant::now(),
                            key,
                            result,
                        },
                    ))
                    .await;
                drop(permit);
            });
            next += 1;
        }
    }
    let _ = inflight.acquire_many(MAX_INFLIGHT_REQUESTS as u32).await;
    schedule.start.elapsed()
}

/// Asks the daemon for every routed order; returns how many it does not know.
async fn missing_orders(admin: &Client, routed: &[OrderKey]) -> u64 {
    let mut missing = 0;
    for chunk in routed.chunks(AUDIT_BATCH) {
        let answers =
            futures::future::join_all(chunk.iter().map(|key| admin.get_order(key.clone()))).await;
        missing += answers.iter().filter(|a| matches!(a, Err(ClientError::Server { code, .. }) if *code == omniroute_client::protocol::ErrorCode::UnknownOrder as u16)).count() as u64;
    }
    missing
}

/// The stock the audit counts from: the scenario's own, or, when it sets
/// none, each of its SKUs' ATP at the daemon before the run.
async fn starting_stock(
    admin: &Client,
    scenario: &Scenario,
) -> Result<std::collections::BTreeMap<(String, String), u64>, String> {
    let mut starting = std::collections::BTreeMap::new();
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
    for chunk in skus.chunks(AUDIT_BATCH) {
        let answers =
            futures::future::join_all(chunk.iter().map(|sku| admin.availability(sku, None))).await;
        for (sku, answer) in chunk.iter().zip(answers) {
            // A SKU the daemon does not know has no stock to oversell.
            let Ok(nodes) = answer else { continue };
            for node in nodes {
                starting.insert((sku.clone(), node.node), u64::from(node.atp));
            }
        }
    }
    Ok(starting)
}

/// Highest rate --find-max tries.
const MAX_FIND_MAX_RATE: f64 = 10_000_000.0;

/// One phase at one rate, with its own collector.
async fn step(
    clients: &[Arc<Client>],
    orders: &mut Orders,
    rate: f64,
    duration: Duration,
    timeout: Duration,
    measured: bool,
) -> Result<(Duration, Collected), String> {
    let (answers, receiver) = mpsc::channel(65_536);
    let collector = tokio::spawn(collect(receiver));
    let elapsed = run_phase(clients, orders, rate, duration, timeout, measured, &answers).await;
    drop(answers);
    Ok((elapsed, collector.await.map_err(|e| e.to_string())?))
}

/// Adds a phase's audit and routed orders to the run's.
fn absorb(totals: &mut Collected, phase: Collected) {
    for (cell, units) in phase.audit.told {
        *totals.audit.told.entry(cell).or_default() += units;
    }
    totals.routed.extend(phase.routed);
    totals.intervals.extend(phase.intervals);
}

async fn run(args: Args) -> Result<Summary, String> {
    let scenario = Scenario::parse(
        &std::fs::read_to_string(&args.scenario)
            .map_err(|e| format!("{}: {e}", args.scenario.display()))?,
    )?;
    let spawned = if args.spawn_server {
        Some(spawn_server(&args.durability).await?)
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
    let admin = Client::connect(target, "localhost", trust.clone(), &args.admin_token)
        .await
        .map_err(|e| format!("admin connection: {e}"))?;
    let mut clients = Vec::new();
    for _ in 0..args.connections.max(1) {
        clients.push(Arc::new(
            Client::connect(target, "localhost", trust.clone(), &args.token)
                .await
                .map_err(|e| e.to_string())?,
        ));
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
    admin
        .stock_set(entries)
        .await
        .map_err(|e| format!("setting the scenario's stock: {e}"))?;
    let starting = starting_stock(&admin, &scenario).await?;
    println!(
        "{}: {} orders/s for {:?} after {:?} of warmup, {} connections to {target}",
        scenario.name,
        args.rate,
        args.duration,
        args.warmup,
        clients.len()
    );

    let run_id = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros());
    let mut orders = Orders {
        scenario: scenario.clone(),
        rng: rand::rngs::StdRng::seed_from_u64(run_id as u64),
        prefix: format!("lt-{run_id}-"),
        next_id: 0,
        zipf: scenario.orders.sku_range.as_ref().map(|r| {
            rand_distr::Zipf::new(r.count as f64, r.zipf_exponent)
                .expect("validated Zipf parameters")
        }),
    };
    let mut totals = Collected::default();
    let mut max_rate: Option<f64> = None;
    if !args.warmup.is_zero() {
        let (_, warm) = step(
            &clients,
            &mut orders,
            args.rate,
            args.warmup,
            args.timeout,
            false,
        )
        .await?;
        absorb(&mut totals, warm);
    }
    let mut rate = args.rate;
    let mut highest: Option<(f64, Summary)> = None;
    let (elapsed, recorder) = loop {
        let (elapsed, mut collected) = step(
            &clients,
            &mut orders,
            rate,
            args.duration,
            args.timeout,
            true,
        )
        .await?;
        let recorder = collected.recorder.take().expect("recorder");
        absorb(&mut totals, collected);
        if !args.find_max {
            break (elapsed, recorder);
        }
        let summary = Summary::new(&scenario.name, elapsed, rate, &recorder, 0, 0);
        let sustained = summary.rate_achieved >= 0.95 * rate
            && (summary.p99_us as f64) <= args.max_p99_ms * 1000.0
            && summary.errors == 0;
        println!(
            "find-max step: offered {rate:.0}/s, achieved {:.0}/s, p99 {} us: {}",
            summary.rate_achieved,
            summary.p99_us,
            if sustained {
                "sustained"
            } else {
                "not sustained"
            }
        );
        if !sustained {
            match highest.take() {
                Some((best_rate, _)) => {
                    println!(
                        "highest sustainable rate: {best_rate:.0} orders/s (p99 bound {} ms)",
                        args.max_p99_ms
                    );
                    max_rate = Some(best_rate);
                }
                None => println!("not even the starting rate {rate:.0}/s was sustainable"),
            }
            break (elapsed, recorder);
        }
        highest = Some((rate, summary));
        rate *= args.step_factor.max(1.01);
        if rate > MAX_FIND_MAX_RATE {
            max_rate = highest.as_ref().map(|(r, _)| *r);
            break (elapsed, recorder);
        }
    };
    let mut collected = totals;
    collected.recorder = Some(recorder);
    collected.audit.starting = starting;
    if let Some(path) = &args.hlog {
        write_hlog(path, &collected.intervals)?;
    }
    let missing = missing_orders(&admin, &collected.routed).await;
    let oversold = collected.audit.oversold_units();
    let mut skus: Vec<&String> = scenario.stock.iter().map(|s| &s.sku).collect();
    skus.dedup();
    for sku in skus {
        let left: u64 = admin
            .availability(sku, None)
            .await
            .map_err(|e| e.to_string())?
            .iter()
            .map(|n| u64::from(n.atp))
            .sum();
        println!(
            "audit {sku}: {left} units left at the daemon, {} expected from what buyers were told",
            collected.audit.expected_left(sku)
        );
    }
    let recorder = collected.recorder.take().expect("recorder");
    let mut summary = Summary::new(&scenario.name, elapsed, rate, &recorder, oversold, missing);
    summary.highest_sustainable_rate = max_rate;
    for client in clients {
        if let Ok(client) = Arc::try_unwrap(client) {
            client.close().await;
        }
    }
    admin.close().await;
    if let Some(mut spawned) = spawned {
        drop(spawned.child.stdin.take());
        let _ = tokio::time::timeout(Duration::from_secs(10), spawned.child.wait()).await;
        let _ = spawned.child.start_kill();
        let _ = std::fs::remove_dir_all(&spawned.data_dir);
    }
    Ok(summary)
}

fn print(summary: &Summary) {
    println!(
        "offered {:.0}/s, achieved {:.0}/s over {:.1} s ({} requests)",
        summary.rate_offered, summary.rate_achieved, summary.duration_s, summary.requests
    );
    println!(
        "outcomes {:?}, reject codes {:?}",
        summary.outcomes, summary.reject_codes
    );
    println!(
        "latency from intended send: p50 {} us, p90 {} us, p99 {} us, p99.9 {} us, max {} us",
        summary.p50_us, summary.p90_us, summary.p99_us, summary.p999_us, summary.max_us
    );
    println!(
        "latency from actual send:   p50 {} us, p99 {} us, max {} us",
        summary.uncorrected_p50_us, summary.uncorrected_p99_us, summary.uncorrected_max_us
    );
    println!(
        "errors {}, missing orders {}",
        summary.errors, summary.missing_orders
    );
    if let Some(rate) = summary.highest_sustainable_rate {
        println!("highest_sustainable_rate={rate:.0}");
    }
    println!("oversold_units={}", summary.oversold_units);
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Some(data_dir) = &args.serve_child {
        return match runtime.block_on(serve_child(data_dir, &args.durability)) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("omniroute-loadtest daemon: {e}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    let json = args.json.clone();
    match runtime.block_on(run(args)) {
        Ok(summary) => {
            print(&summary);
            if let Some(path) = json {
                let text = serde_json::to_string_pretty(&summary).expect("summary serializes");
                if let Err(e) = std::fs::write(&path, text) {
                    eprintln!("omniroute-loadtest: {}: {e}", path.display());
                    return std::process::ExitCode::FAILURE;
                }
            }
            if summary.oversold_units > 0 || summary.missing_orders > 0 {
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
