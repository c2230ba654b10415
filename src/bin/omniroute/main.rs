//! The `omniroute` daemon and its command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use clap::{Args, Parser, Subcommand};
use omniroute::config::{Config, ConfigSource, ValidConfig};
use omniroute::core::model::{Decision, NodeKind};
use omniroute::engine::{Engine, StockUpdate, SystemClock};
use omniroute::limits::MAX_ORDERS_PER_BATCH;
use omniroute::sample::SampleOrders;

mod bench_restart;
mod cli;
mod reload;
mod replica;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Gives the memory recovery decoded and dropped back to the system, so
/// that a restarted daemon's footprint is its state, not its restart.
fn return_freed_memory() {
    // SAFETY: mi_collect only walks mimalloc's own free lists; it is safe
    // to call at any time from any thread.
    unsafe { libmimalloc_sys::mi_collect(true) };
}

#[derive(Parser)]
#[command(
    name = "omniroute",
    version,
    about = "Omnichannel order routing and atomic stock reservation"
)]
struct Cli {
    #[command(flatten)]
    daemon: DaemonArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

/// Options of the commands that run on a config (serve, check-config,
/// replay, demo): before the command or after it. The client commands
/// talk to a running daemon and take none of them.
#[derive(Args, Clone, Default)]
struct DaemonArgs {
    /// Config file (TOML). Without it, the embedded default with its sample network.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Data directory (journal, snapshots, certificate); overrides the
    /// config's, as OMNIROUTE_DATA_DIR does.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// QUIC listen address; overrides the config's.
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// Log JSON lines (one object per event) instead of human text;
    /// overrides the config's `log.format`.
    #[arg(long)]
    log_json: bool,
    /// Admin HTTP address (metrics, health, policy reload), or "off";
    /// overrides the config's `admin.listen`.
    #[arg(long, value_parser = parse_listen)]
    admin: Option<Listen>,
    /// HTTP/JSON gateway address, or "off"; overrides the config's
    /// `http.listen` (on at 127.0.0.1:8080 in the embedded config).
    #[arg(long, value_parser = parse_listen)]
    http: Option<Listen>,
}

impl DaemonArgs {
    /// These options, each given after the command winning over the same
    /// one given before it.
    fn then(self, after: DaemonArgs) -> DaemonArgs {
        DaemonArgs {
            config: after.config.or(self.config),
            data_dir: after.data_dir.or(self.data_dir),
            listen: after.listen.or(self.listen),
            log_json: after.log_json || self.log_json,
            admin: after.admin.or(self.admin),
            http: after.http.or(self.http),
        }
    }

    fn any(&self) -> bool {
        self.config.is_some()
            || self.data_dir.is_some()
            || self.listen.is_some()
            || self.log_json
            || self.admin.is_some()
            || self.http.is_some()
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon (the default).
    Serve(DaemonArgs),
    /// Submit, confirm, cancel or read an order on a running daemon.
    Order {
        #[command(flatten)]
        connect: cli::ConnectArgs,
        #[command(subcommand)]
        command: cli::OrderCommand,
    },
    /// Feed stock counts to a running daemon.
    Stock {
        #[command(flatten)]
        connect: cli::ConnectArgs,
        #[command(subcommand)]
        command: cli::StockCommand,
    },
    /// Where a SKU is available, or the nearest nodes that have it.
    Availability {
        /// The SKU.
        sku: String,
        /// List the nodes nearest this point, `LAT,LON`, instead of every node.
        #[arg(long, value_parser = cli::parse_point)]
        near: Option<(f64, f64)>,
        /// With --near: how many nodes.
        #[arg(long, default_value_t = 5)]
        count: u16,
        /// With --near: only nodes with at least this many units.
        #[arg(long, default_value_t = 1)]
        min_qty: u32,
        #[command(flatten)]
        connect: cli::ConnectArgs,
    },
    /// Act as a fulfillment node: ship, reject, go on/offline, follow allocations.
    Node {
        #[command(flatten)]
        connect: cli::ConnectArgs,
        #[command(subcommand)]
        command: cli::NodeCommand,
    },
    /// Replication: make a cluster's certificates.
    Cluster {
        #[command(subcommand)]
        command: replica::ClusterCommand,
    },
    /// Reload a running daemon's routing policies and tokens over its admin
    /// port (as SIGHUP does, without signalling any other process).
    Reload(reload::ReloadArgs),
    /// Validate a config and say what it holds.
    CheckConfig(DaemonArgs),
    /// Build a data directory with this many cells and reservations,
    /// snapshot it, and time a cold restart in a fresh process.
    BenchRestart {
        /// Stock cells (SKU at node) to build.
        #[arg(long, default_value_t = 10_000_000)]
        cells: u64,
        /// Open reservations (orders) to build.
        #[arg(long, default_value_t = 1_000_000)]
        reservations: u64,
        /// Build here and keep it, instead of a temporary directory.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    #[command(hide = true)]
    BenchRestartBuild {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        cells: u64,
        #[arg(long)]
        reservations: u64,
    },
    #[command(hide = true)]
    BenchRestartChild {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        cells: u64,
    },
    /// What-if: route the journal's recorded orders again under other
    /// policies, offline, and compare (needs journal.keep_segments = true
    /// while the journal was recorded). --config is the recorded network.
    Replay {
        #[command(flatten)]
        daemon: DaemonArgs,
        /// Policy file: [channels.NAME] tables (a whole config file will do).
        #[arg(long)]
        policy: PathBuf,
        /// Also write the report as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Threads to use: 2 (one reads and plans ahead, one places) or 1
        /// (leaves a core to a daemon on the same host). Default: 2, or 1
        /// on a machine with one core.
        #[arg(long, value_parser = clap::value_parser!(u8).range(1..=omniroute::replay::MAX_REPLAY_THREADS as i64))]
        threads: Option<u8>,
    },
    /// Route sample orders against the config's network and print what happened.
    Demo {
        #[command(flatten)]
        daemon: DaemonArgs,
        /// Orders to route.
        #[arg(long, default_value_t = 100_000)]
        orders: usize,
        /// Lines per order.
        #[arg(long, default_value_t = 1)]
        lines: usize,
    },
}

/// An address to listen on, or "off".
#[derive(Clone)]
struct Listen(Option<std::net::SocketAddr>);

fn parse_listen(text: &str) -> Result<Listen, omniroute::config::BadListen> {
    omniroute::config::parse_listen(text).map(Listen)
}

/// The config and, when it came from a file, that file as read.
fn load(path: Option<&PathBuf>) -> Result<(ValidConfig, Option<ConfigSource>), String> {
    let (config, source) = match path {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            let config =
                Config::from_toml(&text).map_err(|e| format!("{}: {e}", path.display()))?;
            let source = ConfigSource {
                path: path.clone(),
                text,
            };
            (config, Some(source))
        }
        None => (Config::default_config(), None),
    };
    let valid = config.validate().map_err(|e| e.to_string())?;
    Ok((valid, source))
}

fn describe(config: &ValidConfig) -> String {
    let network = &config.network;
    let count = |kind: NodeKind| network.nodes.iter().filter(|n| n.kind == kind).count();
    let skus: std::collections::HashSet<&str> = config
        .stock
        .iter()
        .map(|u| match u {
            StockUpdate::Set { sku, .. } | StockUpdate::Adjust { sku, .. } => sku.as_str(),
        })
        .collect();
    let units: u64 = config
        .stock
        .iter()
        .map(|u| {
            if let StockUpdate::Set { on_hand, .. } = u {
                u64::from(*on_hand)
            } else {
                0
            }
        })
        .sum();
    let channels: Vec<&str> = network.channels.iter().map(|c| c.name.as_str()).collect();
    format!(
        "{} nodes in {} markets ({}): {} warehouses, {} stores, {} dark stores, {} 3PL\n\
         {} SKUs in {} stocked cells, {} units on hand\n\
         channels: {}\n\
         engine: {} shard actors, {} router actors, {} node actors",
        network.nodes.len(),
        network.markets.len(),
        network.markets.join(", "),
        count(NodeKind::Warehouse),
        count(NodeKind::Store),
        count(NodeKind::DarkStore),
        count(NodeKind::ThirdPartyLogistics),
        skus.len(),
        config.stock.len(),
        units,
        channels.join(", "),
        config.engine.shards,
        config.engine.routers,
        network.nodes.len(),
    )
}

async fn start(config: &ValidConfig) -> Result<Engine, String> {
    let engine = Engine::start(
        &config.engine,
        config.network.clone(),
        Arc::new(SystemClock),
    )
    .await
    .map_err(|e| e.to_string())?;
    engine
        .load_stock(&config.stock)
        .await
        .map_err(|e| format!("loading stock: {e}"))?;
    Ok(engine)
}

async fn serve(config: ValidConfig, source: Option<ConfigSource>) -> Result<(), String> {
    if let Some(cluster) = config.cluster.clone() {
        return replica::serve(config, cluster).await;
    }
    let started = Instant::now();
    let signals = Signals::register()?;
    let daemon = omniroute::daemon::start(&config, source)
        .await
        .map_err(|e| e.to_string())?;
    return_freed_memory();
    let server = &daemon.server;
    println!(
        "omniroute {} ready in {} ms",
        env!("CARGO_PKG_VERSION"),
        started.elapsed().as_millis()
    );
    println!("{}", describe(&config));
    println!(
        "data {} ({} orders recovered, {} journal records replayed in {} ms)",
        config.server.data_dir.display(),
        daemon.recovery.orders,
        daemon.recovery.records_replayed,
        daemon.recovery.elapsed_ms
    );
    println!("listening on {} (QUIC, ALPN omniroute/1)", server.addr);
    if let Some(admin) = &daemon.admin {
        println!(
            "admin on http://{} (/metrics /healthz /readyz, POST /policy/reload)",
            admin.addr
        );
    }
    if let Some(http) = &daemon.http {
        println!(
            "http on http://{} (JSON under /v1/, docs/openapi.json)",
            http.addr
        );
    }
    println!(
        "certificate {} (SHA-256 {})",
        server.cert_path.display(),
        server.fingerprint
    );
    for (token, role) in config.server.tokens.table().iter() {
        if token.starts_with("dev-") {
            println!("development token {token} ({})", role.name());
        }
    }
    println!(
        "try: omniroute order submit --channel web --line SKU-1:2 --ship-to 52.52,13.40 --token dev-web-token --ca {}{}",
        // Absolute, so that the line works when pasted in another directory.
        std::path::absolute(&server.cert_path)
            .unwrap_or_else(|_| server.cert_path.clone())
            .display(),
        addr_hint(server.addr)
    );
    wait_for_shutdown(&daemon, signals).await;
    println!("shutting down");
    if let Some(journal) = daemon.journal_summary() {
        println!("{journal}");
    }
    daemon.shutdown().await.map_err(|e| e.to_string())
}

/// Waits for SIGTERM or SIGINT; on SIGHUP, reloads the routing policies
/// from the config file (a refused reload keeps the old ones and says why).
/// The signals that stop or reload the daemon, registered before it
/// starts: a SIGTERM sent as soon as it says it listens (or while it
/// recovers) is a graceful stop, never the default disposition's kill.
struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    hangup: tokio::signal::unix::Signal,
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
}

impl Signals {
    fn register() -> Result<Signals, String> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let handler = |kind: SignalKind, name: &str| {
                signal(kind).map_err(|e| format!("cannot handle {name}: {e}"))
            };
            Ok(Signals {
                term: handler(SignalKind::terminate(), "SIGTERM")?,
                hangup: handler(SignalKind::hangup(), "SIGHUP")?,
                interrupt: handler(SignalKind::interrupt(), "SIGINT")?,
            })
        }
        #[cfg(not(unix))]
        Ok(Signals {})
    }
}

async fn wait_for_shutdown(daemon: &omniroute::daemon::Daemon, signals: Signals) {
    #[cfg(unix)]
    {
        let Signals {
            mut term,
            mut hangup,
            mut interrupt,
        } = signals;
        let health = daemon.engine.health();
        loop {
            tokio::select! {
                _ = interrupt.recv() => return,
                _ = term.recv() => return,
                // Logged by the watchdog or the journal; the shutdown says
                // it is a failure. A storage fault lingers first, answering
                // Unavailable and 503, so that health checks see why.
                _ = health.failed() => {
                    let linger = std::time::Duration::from_millis(daemon.fault_linger_ms());
                    tokio::select! {
                        _ = tokio::time::sleep(linger) => {}
                        _ = term.recv() => {}
                    }
                    return;
                }
                _ = hangup.recv() => match daemon.reload_policy().await {
                    Ok(r) if r.restart_required.is_empty() => {
                        println!("policy reloaded at LSN {}", r.lsn)
                    }
                    Ok(r) => println!(
                        "policy reloaded at LSN {}; changed keys that need a restart: {}",
                        r.lsn,
                        r.restart_required.join(", ")
                    ),
                    Err(e) => println!("policy reload refused ({}): {e}", e.code()),
                },
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (daemon, signals);
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn demo(config: ValidConfig, orders: usize, lines: usize) -> Result<(), String> {
    let engine = start(&config).await?;
    let channel = config
        .network
        .channels
        .iter()
        .find(|c| c.name == "web")
        .unwrap_or(&config.network.channels[0])
        .name
        .clone();
    let skus = engine.index().sku_count();
    let mut generator = SampleOrders::new(1, skus, "SKU-", &channel, "demo-");
    let requests: Vec<_> = (0..orders).map(|_| generator.next_order(lines)).collect();
    let started = Instant::now();
    let mut decisions = Vec::with_capacity(orders);
    for chunk in requests.chunks(MAX_ORDERS_PER_BATCH) {
        decisions.extend(
            engine
                .submit_batch(chunk.to_vec())
                .await
                .map_err(|e| e.to_string())?,
        );
    }
    let elapsed = started.elapsed();
    let routed = decisions.iter().filter(|d| d.is_routed()).count();
    let shipments: usize = decisions.iter().map(Decision::shipments).sum();
    println!(
        "{} orders of {lines} line(s) on channel {channel:?} in {:.1} ms: {:.0} orders/s",
        orders,
        elapsed.as_secs_f64() * 1e3,
        orders as f64 / elapsed.as_secs_f64()
    );
    println!(
        "routed {routed}, rejected {}, {:.2} shipments per routed order",
        orders - routed,
        shipments as f64 / routed.max(1) as f64
    );
    for (request, decision) in requests.iter().zip(&decisions).take(3) {
        println!("  {} ->", request.client_order_id);
        match decision {
            Decision::Routed { allocations, .. } => {
                for a in allocations {
                    let node = config.network.node(a.node);
                    println!(
                        "    line {} {} x{} from {} ({})",
                        a.line,
                        engine.index().sku_name(a.sku).unwrap_or("?"),
                        a.qty,
                        node.id,
                        node.name
                    );
                }
            }
            Decision::Rejected(reason) => println!("    rejected: {reason}"),
        }
    }
    engine.check_invariants().await.map_err(|e| e.to_string())?;
    engine.shutdown();
    Ok(())
}

fn replay(
    config: &ValidConfig,
    policy: &std::path::Path,
    json: Option<&std::path::Path>,
    threads: Option<u8>,
) -> Result<(), String> {
    let count = threads.map_or_else(
        || std::thread::available_parallelism().map_or(1, |n| n.get()),
        usize::from,
    );
    // clap allows 1 and 2 only; more cores than two use two.
    let threads = if count == 1 {
        omniroute::replay::Threads::One
    } else {
        omniroute::replay::Threads::Two
    };
    // The journal names nodes and channels by the directory's ids.
    let mut config = config.clone();
    if let Some(names) =
        omniroute::store::layout::read_names(&config.server.data_dir).map_err(|e| e.to_string())?
    {
        config.network = config.network.with_names(&names).0;
    }
    let config = &config;
    let text = std::fs::read_to_string(policy)
        .map_err(|e| format!("cannot read {}: {e}", policy.display()))?;
    let channels = omniroute::config::policies_from_toml(&text, &config.network)
        .map_err(|e| format!("{}: {e}", policy.display()))?;
    let data_dir = &config.server.data_dir;
    let report = omniroute::replay::replay(data_dir, config, channels, threads)
        .map_err(|e| e.to_string())?;
    // Written before anything is printed, so that a reader of stdout that
    // goes away early cannot cost the report.
    if let Some(path) = json {
        let text = serde_json::to_string_pretty(&report.json()).map_err(|e| e.to_string())?;
        std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    println!(
        "what-if replay of {}: {} orders from {} journal records in {:.1} ms ({:.2} M orders/s, {} thread{})",
        data_dir.display(),
        report.recorded.orders,
        report.journal_records,
        report.elapsed_ms,
        report.orders_per_second / 1e6,
        threads.count(),
        if threads == omniroute::replay::Threads::One {
            ""
        } else {
            "s"
        }
    );
    println!("what-if policy: {}", policy.display());
    if report.recorded_policy_reloads > 0 {
        println!(
            "the journal holds {} policy reloads; the what-if policy stands for all of them",
            report.recorded_policy_reloads
        );
    }
    print!("{}", report.table());
    Ok(())
}

/// The `--addr` a client on this host needs to reach a daemon listening
/// on `listening` (none for the client's default): an unspecified address
/// (`0.0.0.0`, `::`) is reached on loopback.
fn addr_hint(listening: std::net::SocketAddr) -> String {
    let mut reach = listening;
    if reach.ip().is_unspecified() {
        reach.set_ip(match reach {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    if reach.to_string() == "127.0.0.1:4433" {
        String::new()
    } else {
        format!(" --addr {reach}")
    }
}

/// Logs to stderr: `RUST_LOG` when set, else `level`; JSON lines or text,
/// coloured only when stderr is a terminal (a file or a journal gets no
/// escape codes).
fn init_logs(level: &str, json: bool) {
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr());
    // RUST_LOG wins, and then a reload leaves the level alone.
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_default_env() {
        let logs = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(colour)
            .with_writer(std::io::stderr);
        if json {
            logs.json().init();
        } else {
            logs.init();
        }
        return;
    }
    fn control<S: 'static>(
        handle: tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, S>,
    ) -> omniroute::telemetry::LogLevelControl {
        Box::new(move |level| {
            let refused = |reason: String| omniroute::telemetry::LogLevelError {
                level: level.to_string(),
                reason,
            };
            let filter = tracing_subscriber::EnvFilter::try_new(level)
                .map_err(|e| refused(e.to_string()))?;
            handle.reload(filter).map_err(|e| refused(e.to_string()))
        })
    }
    let filter = tracing_subscriber::EnvFilter::new(level);
    if json {
        let logs = tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_filter_reloading();
        omniroute::telemetry::control_log_level(control(logs.reload_handle()));
        logs.init();
    } else {
        let logs = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(colour)
            .with_writer(std::io::stderr)
            .with_filter_reloading();
        omniroute::telemetry::control_log_level(control(logs.reload_handle()));
        logs.init();
    }
}

/// For the commands that print and end: a reader of their output that goes
/// away (`omniroute replay ... | head`) ends the process as it ends any
/// Unix tool, where Rust's ignored SIGPIPE made each `println!` after it
/// panic. The daemon keeps ignoring it: a peer that goes away is an error
/// to handle there, not a reason to stop.
fn end_quietly_on_closed_stdout() {
    #[cfg(unix)]
    // SAFETY: restores the default disposition of one signal, before any
    // thread is started; no handler of ours is involved.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Level of the commands that talk to a daemon (no config of their own).
const CLIENT_LOG_LEVEL: &str = "warn";

fn main() -> ExitCode {
    // Fault injection, compiled into test builds only:
    // FAILPOINTS="name=action;..." (none set: nothing).
    #[cfg(feature = "fault-injection")]
    let _faults = fail::FailScenario::setup();
    omniroute::memory::disable_transparent_huge_pages();
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Serve(DaemonArgs::default()));
    if !matches!(command, Command::Serve(_)) {
        end_quietly_on_closed_stdout();
    }
    let (before, command) = (cli.daemon, command);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    // Client commands talk to a daemon and need no config of their own.
    let command = match run_client_command(command, &before, &runtime) {
        Ok(code) => return code,
        Err(other) => *other,
    };
    let result = match command {
        Command::BenchRestart {
            cells,
            reservations,
            dir,
        } => runtime.block_on(bench_restart::run(cells, reservations, dir)),
        Command::BenchRestartBuild {
            dir,
            cells,
            reservations,
        } => bench_restart::build_child(&dir, cells, reservations),
        Command::BenchRestartChild { dir, cells } => {
            runtime.block_on(bench_restart::child(&dir, cells))
        }
        daemon_command => return run_daemon_command(daemon_command, before, runtime),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("omniroute: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Runs a command on a config (serve, check-config, replay, demo) to its
/// exit code, with the daemon options given before it and after it.
fn run_daemon_command(
    command: Command,
    before: DaemonArgs,
    client_runtime: tokio::runtime::Runtime,
) -> ExitCode {
    // The daemon's runtime has the config's worker count instead.
    drop(client_runtime);
    let (args, command) = match command {
        Command::Serve(ref after) | Command::CheckConfig(ref after) => {
            (before.then(after.clone()), command)
        }
        Command::Replay { ref daemon, .. } | Command::Demo { ref daemon, .. } => {
            (before.then(daemon.clone()), command)
        }
        _ => unreachable!("the other commands ran before"),
    };
    let (config, source) = match load(args.config.as_ref()) {
        Ok(loaded) => loaded,
        Err(message) => {
            eprintln!("omniroute: {message}");
            return ExitCode::from(2);
        }
    };
    let config = with_overrides(config, &args);
    init_logs(&config.log.level, args.log_json || config.log.json);
    let runtime = match omniroute::server::runtime(config.server.worker_threads) {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("omniroute: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match command {
        Command::CheckConfig(_) => {
            println!("config is valid\n{}", describe(&config));
            Ok(())
        }
        Command::Demo { orders, lines, .. } => runtime.block_on(demo(config, orders, lines)),
        Command::Replay {
            policy,
            json,
            threads,
            ..
        } => replay(&config, &policy, json.as_deref(), threads),
        _ => runtime.block_on(serve(config, source)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("omniroute: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Names the data directory for the daemon and, on the same host, for the
/// client commands that look for its certificate there.
const DATA_DIR_ENV: &str = "OMNIROUTE_DATA_DIR";

/// The config with what the command line overrides.
fn with_overrides(mut config: ValidConfig, args: &DaemonArgs) -> ValidConfig {
    // The flag, else the environment the client commands read too, else
    // the config's.
    let env_dir = std::env::var_os(DATA_DIR_ENV).filter(|dir| !dir.is_empty());
    if let Some(dir) = args.data_dir.clone().or(env_dir.map(PathBuf::from)) {
        config.server.data_dir = dir;
    }
    if let Some(listen) = args.listen {
        config.server.listen = listen;
    }
    if let Some(Listen(admin)) = &args.admin {
        config.admin = *admin;
    }
    if let Some(Listen(http)) = &args.http {
        config.http = *http;
    }
    config
}

/// Runs a client command (order, stock, availability, node, reload) to its exit
/// code; any other command is handed back. Daemon options given before a
/// client command are a usage error: they would be ignored.
fn run_client_command(
    command: Command,
    before: &DaemonArgs,
    runtime: &tokio::runtime::Runtime,
) -> Result<ExitCode, Box<Command>> {
    let is_client = matches!(
        command,
        Command::Order { .. }
            | Command::Stock { .. }
            | Command::Availability { .. }
            | Command::Node { .. }
            | Command::Reload(_)
    );
    if is_client {
        init_logs(CLIENT_LOG_LEVEL, false);
        if before.any() {
            eprintln!("omniroute: --config, --data-dir, --listen, --log-json, --admin and --http are options of the daemon (serve, check-config, replay, demo), not of a client command (give a client command --data-dir after its name, to find the daemon's certificate)");
            return Ok(ExitCode::from(cli::EXIT_USAGE));
        }
    }
    let result = match command {
        Command::Order { connect, command } => runtime.block_on(cli::order(&connect, command)),
        Command::Stock { connect, command } => runtime.block_on(cli::stock(&connect, command)),
        Command::Availability {
            sku,
            near,
            count,
            min_qty,
            connect,
        } => runtime.block_on(cli::availability(&connect, &sku, near, count, min_qty)),
        Command::Node { connect, command } => runtime.block_on(cli::node(&connect, command)),
        Command::Reload(args) => reload::run(&args),
        Command::Cluster { command } => {
            return Ok(match replica::run(command) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("omniroute: {error}");
                    ExitCode::FAILURE
                }
            })
        }
        other => return Err(Box::new(other)),
    };
    Ok(match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(cli::CliError::Rejected) => ExitCode::from(cli::EXIT_REJECTED),
        Err(error) => {
            eprintln!("omniroute: {error}");
            ExitCode::from(error.exit_code())
        }
    })
}
