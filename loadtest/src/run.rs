//! A run: phases at fixed rates or a search for the highest sustainable
//! one, then the audit.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use omniroute_client::{Client, ClusterClient, StockSet, Trust};
use omniroute_loadtest::{ratio, Audit, Cell, ClusterRun, Scenario, Summary};
use tokio::sync::{mpsc, oneshot};

use super::admin::Admin;
use super::args::Args;
use super::audit::{read_back_settled, starting_stock, ReadBack, RunOrders};
use super::builtin::read_scenario;
use super::cluster::{Killer, SpawnedCluster};
use super::cpu::CpuSample;
use super::feed::{feed, node_events, NodeEventDone};
use super::follow::{Endpoint, Follower};
use super::orders::Orders;
use super::redis::compare_redis;
use super::spawn::{
    kill_and_restart, rss_growth_second_half_percent, sample_rss, spawn_server, Spawned,
};
use crate::drive::{Collector, Event, FollowUps, Interval, RunResult};
use crate::leader::{self, Deciders};
use crate::scrape::Scraper;
use crate::sinks::Sink;
use crate::timeline::Timeline;
use crate::{drive, sinks};

/// One open-loop run against one target: warmup, the measured step(s),
/// and under --find-max a run at half the highest sustainable rate.
pub(crate) struct Measured {
    /// The step reported: the highest sustainable one, or the last.
    pub(super) report: Summary,
    pub(super) histogram: hdrhistogram::Histogram<u64>,
    uncorrected: hdrhistogram::Histogram<u64>,
    pub(super) highest: Option<f64>,
    pub(super) p99_at_half_us: Option<u64>,
    pub(super) run: RunResult,
}

pub(crate) struct Target {
    pub(super) label: &'static str,
    pub(super) sink: Sink,
    pub(super) events: mpsc::Sender<Event>,
    pub(super) outstanding: Arc<AtomicU64>,
    pub(super) collector: tokio::task::JoinHandle<()>,
    /// The server's process, for its CPU time (a spawned daemon, our redis-server).
    pub(super) server_pid: Option<u32>,
}

/// One measured phase: where it ended, its answers, how long it took,
/// and the CPU the server and the generator spent on it.
pub(crate) struct Phase {
    pub(super) orders: Orders,
    pub(super) end: u64,
    pub(super) recorder: omniroute_loadtest::Recorder,
    pub(super) elapsed: Duration,
    cpu: (CpuSample, CpuSample),
}

impl Phase {
    /// The phase's summary, with the CPU per order of each side.
    fn summary(&self, target: &Target, scenario: &str, rate: f64) -> Summary {
        let mut summary = Summary::new(target.label, scenario, self.elapsed, rate, &self.recorder);
        let (server, generator, cores) = self.cpu.1.since(
            &self.cpu.0,
            summary.measured.requests,
            self.elapsed.as_secs_f64(),
        );
        summary.measured.server_cpu_us_per_order = server;
        summary.measured.generator_cpu_us_per_order = generator;
        summary.measured.server_cpu_cores = cores;
        summary
    }
}

pub(crate) async fn phase(
    target: &Target,
    orders: Orders,
    first: u64,
    rate: f64,
    duration: Duration,
    measured: bool,
    args: &Args,
) -> Result<Phase, String> {
    let sink = target.sink.clone();
    let cpu_before = CpuSample::now(target.server_pid);
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
    Ok(Phase {
        orders,
        end,
        recorder: result.recorder,
        elapsed,
        cpu: (cpu_before, CpuSample::now(target.server_pid)),
    })
}

pub(crate) async fn measure(
    target: Target,
    mut orders: Orders,
    scenario: &str,
    args: &Args,
) -> Result<Measured, String> {
    let mut next = 0;
    if !args.warmup.is_zero() {
        let warm = phase(&target, orders, next, args.rate, args.warmup, false, args).await?;
        (orders, next) = (warm.orders, warm.end);
    }
    let max_p99_us = (args.max_p99_ms * 1000.0) as u64;
    let mut rate = args.rate;
    let mut best: Option<(Summary, omniroute_loadtest::Recorder)> = None;
    let mut last: Option<(Summary, omniroute_loadtest::Recorder)> = None;
    loop {
        let step = phase(&target, orders, next, rate, args.duration, true, args).await?;
        let summary = step.summary(&target, scenario, rate);
        let recorder = step.recorder;
        (orders, next) = (step.orders, step.end);
        if !args.find_max {
            last = Some((summary, recorder));
            break;
        }
        let sustained = summary.sustained(max_p99_us);
        println!(
            "{} find-max step: offered {rate:.0}/s, achieved {:.0}/s, p99 {} us, errors {}: {}",
            target.label,
            summary.measured.rate_achieved,
            summary.measured.p99_us,
            summary.measured.errors,
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
    let highest = best.as_ref().map(|(s, _)| s.measured.rate_offered);
    let mut p99_at_half_us = None;
    if let Some(highest) = highest {
        println!("{} highest sustainable rate: {highest:.0} orders/s (p99 bound {} ms); now at half of it", target.label, args.max_p99_ms);
        let step = phase(
            &target,
            orders,
            next,
            highest / 2.0,
            args.duration,
            true,
            args,
        )
        .await?;
        let half = step.summary(&target, scenario, highest / 2.0);
        println!(
            "{} at {:.0}/s: achieved {:.0}/s, p50 {} us, p99 {} us, p99.9 {} us",
            target.label,
            highest / 2.0,
            half.measured.rate_achieved,
            half.measured.p50_us,
            half.measured.p99_us,
            half.measured.p999_us
        );
        p99_at_half_us = Some(half.measured.p99_us);
    } else if args.find_max {
        println!(
            "{}: not even the starting rate {:.0}/s was sustainable",
            target.label, args.rate
        );
    }
    let found_max = best.is_some();
    let (mut report, recorder) = best.or(last).expect("at least one step");
    if found_max {
        report.measured.covers = format!(
            "the highest sustainable step of --find-max alone: {}",
            report.measured.covers
        );
    }
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
pub(crate) const MAX_FIND_MAX_RATE: f64 = 10_000_000.0;

/// What a run hands back for the report and the chart.
pub(crate) struct Outcome {
    pub(super) summary: Summary,
    pub(super) intervals: Vec<Interval>,
    pub(super) histogram: hdrhistogram::Histogram<u64>,
    pub(super) uncorrected: hdrhistogram::Histogram<u64>,
    pub(super) redis_histogram: Option<hdrhistogram::Histogram<u64>>,
}

pub(crate) fn seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

pub(crate) async fn run(args: &Args) -> Result<Outcome, String> {
    let scenario = read_scenario(&args.scenario)?;
    if args.follow && (args.spawn_cluster.is_some() || args.target.len() > 1) {
        return Err("--follow follows one daemon: not with a cluster".into());
    }
    let spawned = if args.spawn_server {
        Some(spawn_server(args, None).await?)
    } else {
        None
    };
    let cluster = match args.spawn_cluster {
        Some(count) => Some(Arc::new(SpawnedCluster::start(args, count).await?)),
        None => None,
    };
    let outcome = run_on(args, &scenario, spawned, cluster.clone()).await;
    // Whatever the run came to, nothing of the cluster is left running;
    // a run that failed shows the replicas' last words first.
    if let Some(cluster) = cluster {
        if outcome.is_err() {
            for spec in &cluster.replicas {
                eprintln!(
                    "--- replica {} ({})\n{}",
                    spec.id,
                    spec.client,
                    cluster.log_tail(spec.id)
                );
            }
        }
        cluster.remove().await;
    }
    outcome
}

async fn run_on(
    args: &Args,
    scenario: &Scenario,
    spawned: Option<Spawned>,
    cluster: Option<Arc<SpawnedCluster>>,
) -> Result<Outcome, String> {
    let (target, admin, drivers) = connect(args, spawned.as_ref(), cluster.as_deref()).await?;
    let scenario = scenario.clone();
    set_scenario_stock(&admin, &scenario).await?;
    let starting = starting_stock(&admin, &scenario).await?;
    println!(
        "{}: {} orders/s for {:?} after {:?} of warmup, {} connections to {target}{}",
        scenario.name,
        args.rate,
        args.duration,
        args.warmup,
        args.connections.max(1),
        if args.find_max {
            ", stepping the rate up"
        } else {
            ""
        }
    );
    let seed = seed();
    let prefix = format!("lt-{seed}-");
    let beside = Beside::start(args, &scenario, &admin, &starting, seed, spawned.as_ref())?;
    let follower = args.follow.then(|| {
        let (targets, trust) = endpoint(args, spawned.as_ref());
        let endpoint = Endpoint {
            target: targets[0],
            trust,
            token: args.admin_token.clone(),
        };
        Follower::start(
            endpoint,
            scenario.channel.clone(),
            args.warmup + args.duration / 2,
        )
    });
    let server_pid = spawned.as_ref().and_then(|s| s.child.id());
    let scraper = spawned
        .as_ref()
        .map_or(args.metrics_addr, |s| s.admin)
        .map(Scraper::start);
    let killer = match (&cluster, args.kill_leader_every) {
        (Some(cluster), Some(every)) => Some(Killer::start(cluster.clone(), every)),
        _ => None,
    };
    let (measured, deciders) =
        measure_omniroute(args, &scenario, &drivers, seed, &prefix, server_pid).await?;
    let kills = match killer {
        Some(killer) => killer.finish().await?,
        None => Vec::new(),
    };
    let beside = beside.finish(&scenario).await?;
    let readings = match scraper {
        Some(scraper) => scraper.finish().await,
        None => Vec::new(),
    };
    let status_stream = match follower {
        Some(follower) => Some(follower.finish(&measured.run.routed).await?),
        None => None,
    };
    let mut summary = with_beside(measured.report, &beside);
    let RunResult {
        mut audit,
        routed,
        intervals,
        follow_ups,
        promises,
        endings,
        marks,
        first_measured,
    } = measured.run;
    let first_measured_at = first_measured;
    summary.over_time = Timeline {
        intervals: &intervals,
        steps: &marks,
        node_events: &beside.node_events,
        first_measured,
        readings: &readings,
    }
    .over_time();
    audit.starting = starting.clone();
    audit.restocked = beside.restocked.clone();
    let run_orders = RunOrders {
        channel: &scenario.channel,
        prefix: &prefix,
        routed: &routed,
        promises: &promises,
        endings: &endings,
        compare_allocations: drivers.follows() && scenario.events.is_empty(),
    };
    let (audit, read_back) = read_back_settled(&admin, &run_orders, audit).await?;
    report_audit(&scenario, &audit, &read_back, &mut summary);
    summary.whole_run.follow_ups = follow_ups;
    summary.whole_run.status_stream = status_stream;
    summary.highest_sustainable_rate = measured.highest;
    summary.p99_at_half_max_us = measured.p99_at_half_us;
    summary.durability = match (&spawned, &cluster) {
        (Some(_), _) => Some(args.durability.clone()),
        (None, Some(_)) => Some("fsync".to_string()),
        (None, None) => None,
    };
    let mut cluster_run = drivers.follows().then(|| ClusterRun {
        replicas: drivers.addrs().iter().map(|a| a.to_string()).collect(),
        lost_orders: read_back.missing + read_back.allocation_mismatches,
        allocation_mismatches: read_back.allocation_mismatches,
        ..ClusterRun::default()
    });
    if let (Some(run), Some(deciders)) = (cluster_run.as_mut(), &deciders) {
        let first = first_measured_at.unwrap_or_else(Instant::now);
        crate::cluster::failovers(run, &kills, deciders, first, &mut summary.over_time.events);
    }
    close(drivers, admin).await;
    if let (Some(run), Some(cluster)) = (cluster_run.as_mut(), &cluster) {
        cluster.stop().await;
        crate::cluster::compare_digests(run, cluster.digests());
        run.snapshots_installed = cluster.snapshots_installed();
    }
    summary.cluster = cluster_run;
    let was_spawned = spawned.is_some() || cluster.is_some();
    summary.restart_ms = stop_spawned(args, spawned).await?;
    summary.batching = batching(args);
    let mut run_info = run_info(args, &scenario, was_spawned);
    let mut redis_histogram = None;
    if args.compare_redis {
        let (mut redis, histogram, version) =
            compare_redis(args, &scenario, &starting, seed, &prefix).await?;
        run_info.redis_version = Some(version);
        redis.batching = crate::redis::redis_batching();
        summary.ratio_vs_redis = ratio(
            summary.highest_sustainable_rate,
            redis.highest_sustainable_rate,
        );
        summary.redis = Some(Box::new(redis));
        redis_histogram = Some(histogram);
    }
    summary.run = Some(run_info);
    Ok(Outcome {
        summary,
        intervals,
        histogram: measured.histogram,
        uncorrected: measured.uncorrected,
        redis_histogram,
    })
}

/// The admin connection and the connections orders go over: to the
/// spawned daemon, or to `--target` with its CA (or none, `--insecure`).
/// The daemon's address and the certificate to trust in it.
fn endpoint(args: &Args, spawned: Option<&Spawned>) -> (Vec<SocketAddr>, Trust) {
    match spawned {
        Some(s) => (vec![s.addr], Trust::CaFile(s.cert.clone())),
        None if args.insecure => (args.target.clone(), Trust::InsecureDevelopmentOnly),
        None => (
            args.target.clone(),
            Trust::CaFile(
                args.ca
                    .clone()
                    .unwrap_or_else(|| PathBuf::from("omniroute-data/cert.pem")),
            ),
        ),
    }
}

/// The connections the orders go over: to one daemon, or (with several
/// addresses) following a cluster's leader.
pub(crate) enum Drivers {
    Single(Vec<Client>),
    Leader(leader::Endpoints),
}

impl Drivers {
    /// Whether the orders follow a cluster's leader.
    fn follows(&self) -> bool {
        matches!(self, Drivers::Leader(_))
    }

    fn addrs(&self) -> Vec<SocketAddr> {
        match self {
            Drivers::Single(_) => Vec::new(),
            Drivers::Leader(endpoints) => endpoints.addrs.clone(),
        }
    }
}

/// The target's name for the report, the admin connection and the
/// connections orders go over.
async fn connect(
    args: &Args,
    spawned: Option<&Spawned>,
    cluster: Option<&SpawnedCluster>,
) -> Result<(String, Arc<Admin>, Drivers), String> {
    let (targets, trust) = match cluster {
        Some(cluster) => (cluster.addrs(), Trust::CaPem(cluster.trust_pem.clone())),
        None => endpoint(args, spawned),
    };
    if targets.len() > 1 {
        let admin = ClusterClient::connect(
            targets.clone(),
            "localhost",
            trust.clone(),
            &args.admin_token,
        )
        .await
        .map_err(|e| format!("admin connection to the cluster's leader: {e}"))?;
        let endpoints = leader::Endpoints {
            addrs: targets.clone(),
            trust,
            token: args.token.clone(),
            connections: args.connections.max(1),
            per_frame: args.submit_batch,
        };
        let names: Vec<String> = targets.iter().map(|a| a.to_string()).collect();
        let target = format!("{} (following the leader)", names.join(","));
        return Ok((
            target,
            Arc::new(Admin::Cluster(admin)),
            Drivers::Leader(endpoints),
        ));
    }
    let target = targets[0];
    let admin = Client::connect(target, "localhost", trust.clone(), &args.admin_token)
        .await
        .map_err(|e| format!("admin connection: {e}"))?;
    let mut clients = Vec::new();
    for _ in 0..args.connections.max(1) {
        clients.push(
            Client::connect(target, "localhost", trust.clone(), &args.token)
                .await
                .map_err(|e| e.to_string())?,
        );
    }
    Ok((
        target.to_string(),
        Arc::new(Admin::Single(admin)),
        Drivers::Single(clients),
    ))
}

/// Sets the scenario's `[[stock]]` cells, if it has any.
async fn set_scenario_stock(admin: &Admin, scenario: &Scenario) -> Result<(), String> {
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
    if entries.is_empty() {
        return Ok(());
    }
    admin
        .stock_set(entries)
        .await
        .map_err(|e| format!("setting the scenario's stock: {e}"))?;
    Ok(())
}

/// What runs beside the orders: the stock feed, node events, and the
/// spawned daemon's RSS sampler.
struct Beside {
    stop_feed: Arc<AtomicBool>,
    feed: Option<tokio::task::JoinHandle<(BTreeMap<Cell, u64>, u64)>>,
    events: Option<tokio::task::JoinHandle<(u64, Vec<NodeEventDone>)>>,
    stop_rss: Arc<AtomicBool>,
    rss: Option<tokio::task::JoinHandle<Vec<(f64, f64)>>>,
}

/// What ran beside the orders came to.
struct BesideResult {
    restocked: BTreeMap<Cell, u64>,
    feed_errors: u64,
    rerouted: u64,
    node_events: Vec<NodeEventDone>,
    rss: Vec<(f64, f64)>,
}

impl Beside {
    fn start(
        args: &Args,
        scenario: &Scenario,
        admin: &Arc<Admin>,
        starting: &BTreeMap<Cell, u64>,
        seed: u64,
        spawned: Option<&Spawned>,
    ) -> Result<Beside, String> {
        let stop_feed = Arc::new(AtomicBool::new(false));
        let feed = scenario.feed.is_some().then(|| {
            tokio::spawn(feed(
                admin.clone(),
                scenario.clone(),
                starting.clone(),
                seed ^ 1,
                stop_feed.clone(),
            ))
        });
        let events = (!scenario.events.is_empty())
            .then(|| tokio::spawn(node_events(admin.clone(), scenario.clone(), args.warmup)));
        let stop_rss = Arc::new(AtomicBool::new(false));
        let rss = match (spawned, args.rss_every) {
            (Some(s), Some(every)) => {
                let pid = s.child.id().ok_or("the spawned daemon has no pid")?;
                Some(tokio::spawn(sample_rss(pid, every, stop_rss.clone())))
            }
            _ => None,
        };
        Ok(Beside {
            stop_feed,
            feed,
            events,
            stop_rss,
            rss,
        })
    }

    /// Stops the feed, waits for the events, lets follow-ups land (and,
    /// with expiring holds, every hold run out) before the audit reads, and
    /// stops the sampler.
    async fn finish(self, scenario: &Scenario) -> Result<BesideResult, String> {
        self.stop_feed.store(true, Ordering::Relaxed);
        let (restocked, feed_errors) = match self.feed {
            Some(task) => task.await.map_err(|e| e.to_string())?,
            None => (BTreeMap::new(), 0),
        };
        let (rerouted, node_events) = match self.events {
            Some(task) => task.await.map_err(|e| e.to_string())?,
            None => (0, Vec::new()),
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        if scenario.holds_expire_in_runs() {
            // Every hold still open runs out first, so that none runs out
            // while the audit reads (the expiry tick is a few ms after it).
            let ttl_ms = u64::from(scenario.orders.hold_ttl_ms.unwrap_or(0));
            tokio::time::sleep(Duration::from_millis(ttl_ms + 500)).await;
        }
        self.stop_rss.store(true, Ordering::Relaxed);
        let rss = match self.rss {
            Some(task) => task.await.map_err(|e| e.to_string())?,
            None => Vec::new(),
        };
        Ok(BesideResult {
            restocked,
            feed_errors,
            rerouted,
            node_events,
            rss,
        })
    }
}

/// The measured run against the daemon over `clients`.
async fn measure_omniroute(
    args: &Args,
    scenario: &Scenario,
    drivers: &Drivers,
    seed: u64,
    prefix: &str,
    server_pid: Option<u32>,
) -> Result<(Measured, Option<Deciders>), String> {
    let (events, receiver) = drive::channel();
    let outstanding = Arc::new(AtomicU64::new(0));
    let (sink, deciders) = match drivers {
        Drivers::Single(clients) => (
            sinks::quic(clients, &events, args.submit_batch).await?,
            None,
        ),
        Drivers::Leader(endpoints) => {
            let (inbox, deciders) = leader::start(endpoints.clone(), events.clone());
            let handle = tokio::runtime::Handle::current();
            (Sink::Leader { inbox, handle }, Some(deciders))
        }
    };
    let follow_ups = scenario.follow_up.clone().map(|mix| {
        FollowUps::new(
            mix,
            seed ^ 2,
            scenario.channel.clone(),
            prefix.to_string(),
            sink.clone(),
        )
    });
    let collector = Collector::spawn(
        receiver,
        outstanding.clone(),
        follow_ups,
        // What each order was told is kept when the daemon may take it
        // back: a node event, or holds that may expire within the run; and
        // against a cluster, whose audit compares it with the final leader.
        !scenario.events.is_empty() || scenario.holds_expire_in_runs() || drivers.follows(),
        "omniroute",
    );
    let target = Target {
        label: "omniroute",
        sink,
        events,
        outstanding,
        collector,
        server_pid,
    };
    let measured = measure(
        target,
        Orders::new(scenario, seed, prefix),
        &scenario.name,
        args,
    )
    .await?;
    Ok((measured, deciders))
}

/// The summary of the measured step, with what ran beside it.
fn with_beside(report: Summary, beside: &BesideResult) -> Summary {
    let mut summary = report;
    summary.whole_run.covers = "the whole run: warmup, every step, the drain and the wait for follow-ups and expiries after it, audited by reading every order and stock cell back".to_string();
    summary.whole_run.rss_mib = beside.rss.clone();
    summary.whole_run.rss_growth_second_half_percent =
        rss_growth_second_half_percent(&summary.whole_run.rss_mib);
    summary.whole_run.restocked_units = beside.restocked.values().sum();
    summary.whole_run.feed_errors = beside.feed_errors;
    summary.whole_run.rerouted_orders = beside.rerouted;
    summary
}

/// The audit's findings into the summary, and what it found wrong printed.
fn report_audit(scenario: &Scenario, audit: &Audit, read_back: &ReadBack, summary: &mut Summary) {
    if !scenario.stock.is_empty() {
        let mut skus: Vec<&String> = audit.final_atp.keys().map(|(sku, _)| sku).collect();
        skus.dedup();
        for sku in skus.into_iter().take(8) {
            let left: u64 = audit
                .final_atp
                .iter()
                .filter(|((s, _), _)| s == sku)
                .map(|(_, v)| v)
                .sum();
            println!("audit {sku}: {left} units left at the daemon, {} expected from what buyers were told", audit.expected_left(sku));
        }
    }
    summary.whole_run.oversold_units = audit.oversold_units();
    summary.whole_run.oversold_told_units = audit.oversold_told();
    summary.whole_run.oversold_held_units = audit.oversold_held();
    summary.whole_run.withdrawn_units = audit.withdrawn.values().sum();
    if summary.whole_run.oversold_held_units > 0 {
        for (cell, held) in &audit.held_now {
            if *held > audit.stock(cell) {
                println!(
                    "audit: {cell:?} holds {held} units for the run's orders, stock was {}",
                    audit.stock(cell)
                );
            }
        }
    }
    summary.whole_run.missing_orders = read_back.missing;
    summary.whole_run.archived_orders = read_back.archived;
    summary.whole_run.early_expiries = read_back.early_expiries;
    summary.whole_run.expired_units = audit.expired.values().sum();
    summary.whole_run.stock_mismatch_units = audit.stock_mismatch_units();
}

async fn close(drivers: Drivers, admin: Arc<Admin>) {
    if let Drivers::Single(clients) = drivers {
        for client in clients {
            client.close().await;
        }
    }
    if let Ok(admin) = Arc::try_unwrap(admin) {
        admin.close().await;
    }
}

/// Stops the spawned daemon (after a kill -9 and a restart, with
/// `--kill-restart`, whose time it returns) and removes its directory.
async fn stop_spawned(args: &Args, spawned: Option<Spawned>) -> Result<Option<f64>, String> {
    let mut restart_ms = None;
    let spawned = match spawned {
        Some(spawned) if args.kill_restart => {
            let (restarted, ms) = kill_and_restart(args, spawned).await?;
            restart_ms = Some(ms);
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
    Ok(restart_ms)
}

/// What the omniroute side sends per round trip, in words.
fn batching(args: &Args) -> String {
    let frames = match args.submit_batch {
        0 => "one Submit frame per order".to_string(),
        n => format!("SubmitBatch frames of up to {n} orders"),
    };
    format!(
        "what is due each {:?} tick, on as few of the {} connections as carry {} orders each: {frames}",
        args.tick,
        args.connections,
        sinks::MIN_ORDERS_PER_CONNECTION_SEND
    )
}

/// When, what and with which settings this run ran.
fn run_info(args: &Args, scenario: &Scenario, spawned: bool) -> omniroute_loadtest::RunInfo {
    omniroute_loadtest::RunInfo {
        timestamp: omniroute::timefmt::iso(now_ms()),
        loadtest_version: env!("CARGO_PKG_VERSION").to_string(),
        omniroute_version: spawned.then(|| omniroute::VERSION.to_string()),
        redis_version: None,
        scenario: scenario.name.clone(),
        rate: args.rate,
        connections: args.connections,
        warmup_s: args.warmup.as_secs_f64(),
        duration_s: args.duration.as_secs_f64(),
        tick_us: args.tick.as_micros() as u64,
        durability: spawned.then(|| args.durability.clone()),
        submit_batch: args.submit_batch,
        find_max: args.find_max,
        server_threads: spawned.then(|| super::spawn::worker_threads(args.server_threads)),
        generator_threads: args.generator_threads,
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        command_line: std::env::args().collect(),
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
