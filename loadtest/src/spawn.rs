//! The daemon under test, when the generator spawns it: started on a fresh
//! data directory, its RSS sampled, killed and restarted.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncBufReadExt;

use super::args::Args;

/// The daemon side of --spawn-server: the embedded default config on a
/// random loopback port; prints `LISTENING <addr> <cert>` when ready.
pub(crate) async fn serve_child(data_dir: &Path, args: &Args) -> Result<(), String> {
    log_to_stderr();
    let mut config = omniroute::config::Config::default_config()
        .validate()
        .map_err(|e| e.to_string())?;
    config.server.listen = "127.0.0.1:0".parse().expect("address");
    config.server.data_dir = data_dir.to_path_buf();
    config.store.durability = match args.durability.as_str() {
        "fsync" => omniroute::journal::Durability::Fsync,
        "none" => omniroute::journal::Durability::None,
        other => return Err(format!("--durability {other:?} is not fsync or none")),
    };
    if let Some(retention_ms) = args.retention_ms {
        config.engine.order_retention_ms = retention_ms;
    }
    if let Some(interval_ms) = args.snapshot_interval_ms {
        config.store.snapshot_interval_ms = interval_ms;
    }
    // A free port: the spawned server must not take an operator's 9090.
    config.admin = Some("127.0.0.1:0".parse().expect("address"));
    // The generator speaks QUIC only; 8080 stays the operator's.
    config.http = None;
    let daemon = omniroute::daemon::start(&config, None)
        .await
        .map_err(|e| e.to_string())?;
    if let Some(admin) = &daemon.admin {
        eprintln!("spawned server: metrics on http://{}/metrics", admin.addr);
        // Before LISTENING, which ends what the parent reads.
        println!("ADMIN {}", admin.addr);
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
    daemon.shutdown().await.map_err(|e| e.to_string())
}

/// The daemon's own log (snapshots, expiries, stops, elections) on
/// stderr, beside the report, when RUST_LOG asks for it: to see what it
/// was doing in a slow second. For a spawned daemon or replica.
pub(crate) fn log_to_stderr() {
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_default_env() {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_timer(tracing_subscriber::fmt::time::uptime())
            .with_writer(std::io::stderr)
            .init();
    }
}

/// The spawned daemon's runtime threads: `--server-threads`, or (0) as
/// its embedded config says.
pub(crate) fn worker_threads(asked: usize) -> usize {
    if asked > 0 {
        return asked;
    }
    omniroute::config::Config::default_config()
        .validate()
        .map_or(1, |config| config.server.worker_threads)
}

pub(crate) struct Spawned {
    pub(super) child: tokio::process::Child,
    pub(super) addr: SocketAddr,
    pub(super) cert: PathBuf,
    /// Its admin port, for /metrics.
    pub(super) admin: Option<SocketAddr>,
    pub(super) data_dir: PathBuf,
}

/// Starts the daemon for --spawn-server in a child process on `data_dir`
/// (a new temporary one if None) and waits until it listens.
pub(crate) async fn spawn_server(
    args: &Args,
    data_dir: Option<PathBuf>,
) -> Result<Spawned, String> {
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
    if let Some(interval_ms) = args.snapshot_interval_ms {
        command
            .arg("--snapshot-interval-ms")
            .arg(interval_ms.to_string());
    }
    command
        .arg("--server-threads")
        .arg(args.server_threads.to_string());
    let mut child = command
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start the daemon: {e}"))?;
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let mut admin = None;
    let ready = tokio::time::timeout(Duration::from_secs(60), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(addr) = line.strip_prefix("ADMIN ") {
                admin = addr.parse::<SocketAddr>().ok();
            }
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
        admin,
        data_dir,
    })
}

/// Samples the resident memory of process `pid` every `every` and prints
/// it, until `stop`; returns (seconds since start, MiB) per sample.
pub(crate) async fn sample_rss(
    pid: u32,
    every: Duration,
    stop: Arc<AtomicBool>,
) -> Vec<(f64, f64)> {
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
pub(crate) fn rss_mib(pid: u32) -> Option<f64> {
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
pub(crate) fn rss_growth_second_half_percent(samples: &[(f64, f64)]) -> Option<f64> {
    let &(end, last) = samples.last()?;
    let &(_, middle) = samples.iter().find(|(at, _)| *at >= end / 2.0)?;
    Some((last - middle) / middle * 100.0)
}

/// Kills the spawned daemon with SIGKILL, starts it again on the same data
/// directory and returns it with the milliseconds until it listened.
pub(crate) async fn kill_and_restart(
    args: &Args,
    mut spawned: Spawned,
) -> Result<(Spawned, f64), String> {
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
