//! `--spawn-cluster N`: N replicas of the daemon on loopback, each a child
//! process of this binary (`--serve-replica <config>`) running
//! `omniroute::cluster::start` on a config written here: fresh temporary
//! directories, the cluster's certificates, free ports, the embedded
//! default config's network, stock and tokens, journal durability fsync,
//! and an admin port whose `/metrics` tells which replica leads. The
//! leader can be SIGKILLed and restarted on its directory
//! (`--kill-leader-every`); at the end every replica stops with SIGTERM
//! and its directory goes.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncBufReadExt;
use tokio::sync::Mutex;

use omniroute_loadtest::{ClusterRun, Failover, RunEvent};

use super::args::Args;
use crate::leader::Deciders;

/// How long a replica may take to start (load its log, bind its ports).
const START_TIMEOUT_S: u64 = 60;
/// How long a replica may take to stop after SIGTERM before it is killed.
const STOP_TIMEOUT_S: u64 = 20;
/// Lines of a replica's log shown when something went wrong.
const LOG_TAIL_LINES: usize = 30;
/// How long the killer looks for a leader before it skips a round.
const FIND_LEADER_TIMEOUT_MS: u64 = 5_000;
/// The value of `omniroute_replica_role` on the leader.
const ROLE_LEADER: f64 = 2.0;

/// The replica side of --spawn-cluster: runs replica `[cluster] id` of the
/// config at `path`, prints `ADMIN <addr>` and `LISTENING <addr> <cert>`
/// when it serves its ports, and stops on SIGTERM (or when the parent
/// closes its stdin).
pub(crate) async fn serve_replica(path: &Path) -> Result<(), String> {
    crate::spawn::log_to_stderr();
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let config = omniroute::config::Config::from_toml(&text)
        .and_then(|c| c.validate())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let cluster = config
        .cluster
        .clone()
        .ok_or("the replica's config has no [cluster]")?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| e.to_string())?;
    let replica = omniroute::cluster::start(&config, &cluster)
        .await
        .map_err(|e| e.to_string())?;
    // Before LISTENING, which ends what the parent reads.
    if let Some(admin) = &replica.admin {
        println!("ADMIN {}", admin.addr);
    }
    println!(
        "LISTENING {} {}",
        replica.server.addr,
        replica.server.cert_path.display()
    );
    let mut failed = replica.failed.clone();
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let failure = tokio::select! {
        _ = term.recv() => None,
        _ = async { while let Ok(Some(_)) = stdin.next_line().await {} } => None,
        reason = failed.wait_for(Option::is_some) => reason.ok().and_then(|r| r.clone()),
    };
    replica.shutdown().await;
    match failure {
        Some(reason) => Err(format!("replica {} stopped: {reason}", cluster.id)),
        None => Ok(()),
    }
}

/// One replica's fixed part: its id, config and ports.
#[derive(Clone)]
pub(crate) struct ReplicaSpec {
    pub(crate) id: u64,
    pub(crate) config: PathBuf,
    pub(crate) data_dir: PathBuf,
    pub(crate) client: SocketAddr,
    pub(crate) admin: SocketAddr,
}

/// A running replica process.
struct Running {
    child: tokio::process::Child,
}

/// A stopped replica's (committed index replayed, digest of stock and
/// orders), or why it was not read.
pub(crate) type Digest = Result<(u64, u64), String>;

/// A kill of the leader, as the killer made it.
#[derive(Clone, Debug)]
pub(crate) struct Kill {
    pub(crate) at: Instant,
    pub(crate) id: u64,
    /// The killed replica's client address: the failover ends at the first
    /// decision from another.
    pub(crate) client: SocketAddr,
    /// How long its restart on its directory took until it listened.
    pub(crate) restart_ms: f64,
}

/// The spawned cluster: its directory, replicas and the processes running.
pub(crate) struct SpawnedCluster {
    pub(crate) dir: PathBuf,
    pub(crate) replicas: Vec<ReplicaSpec>,
    running: Mutex<BTreeMap<u64, Running>>,
    /// The replicas' client certificates, one PEM: what clients trust.
    pub(crate) trust_pem: Vec<u8>,
    server_threads: usize,
}

/// A free loopback UDP port (replication and QUIC clients).
fn free_udp_port() -> Result<u16, String> {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(socket.local_addr().map_err(|e| e.to_string())?.port())
}

/// A free loopback TCP port (the admin port).
fn free_tcp_port() -> Result<u16, String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(listener.local_addr().map_err(|e| e.to_string())?.port())
}

/// Replica `id`'s config: the embedded default with its ports, directory,
/// durability fsync (and the snapshot interval and log holds if given)
/// and the cluster's table.
fn replica_config(
    spec: &ReplicaSpec,
    certs: &Path,
    table: &toml::Value,
    args: &Args,
) -> Result<String, String> {
    let snapshot_interval_ms = args.snapshot_interval_ms;
    let mut config: toml::Table = omniroute::config::DEFAULT_CONFIG_TOML
        .parse()
        .map_err(|e| format!("the embedded config: {e}"))?;
    let section = |config: &mut toml::Table, name: &str| -> toml::Table {
        config
            .remove(name)
            .and_then(|v| v.as_table().cloned())
            .unwrap_or_default()
    };
    let mut server = section(&mut config, "server");
    server.insert("listen".into(), spec.client.to_string().into());
    let data_dir = spec.data_dir.display().to_string();
    server.insert("data_dir".into(), data_dir.into());
    config.insert("server".into(), server.into());
    let mut journal = section(&mut config, "journal");
    journal.insert("durability".into(), "fsync".into());
    if let Some(interval_ms) = snapshot_interval_ms {
        journal.insert("snapshot_interval_ms".into(), (interval_ms as i64).into());
    }
    config.insert("journal".into(), journal.into());
    let mut http = section(&mut config, "http");
    http.insert("listen".into(), "off".into());
    config.insert("http".into(), http.into());
    let mut admin = toml::Table::new();
    admin.insert("listen".into(), spec.admin.to_string().into());
    config.insert("admin".into(), admin.into());
    let mut cluster = toml::Table::new();
    cluster.insert("id".into(), (spec.id as i64).into());
    cluster.insert("certs_dir".into(), certs.display().to_string().into());
    cluster.insert("replicas".into(), table.clone());
    if let Some(entries) = args.log_hold_entries {
        for key in ["log_hold_entries", "laggard_hold_entries"] {
            cluster.insert(key.into(), (entries as i64).into());
        }
    }
    config.insert("cluster".into(), cluster.into());
    toml::to_string(&config).map_err(|e| e.to_string())
}

impl SpawnedCluster {
    /// Writes the certificates and a config per replica under a new
    /// temporary directory and starts every replica.
    pub(crate) async fn start(args: &Args, count: u64) -> Result<SpawnedCluster, String> {
        let dir =
            std::env::temp_dir().join(format!("omniroute-loadtest-cluster-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let ids: Vec<u64> = (1..=count).collect();
        let certs = dir.join("certs");
        omniroute::replica::certs::generate(&certs, &ids).map_err(|e| e.to_string())?;
        let mut replicas = Vec::new();
        let mut table = Vec::new();
        for &id in &ids {
            let (replication, client) = (free_udp_port()?, free_udp_port()?);
            let spec = ReplicaSpec {
                id,
                config: dir.join(format!("replica-{id}.toml")),
                data_dir: dir.join(format!("replica-{id}")),
                client: SocketAddr::from(([127, 0, 0, 1], client)),
                admin: SocketAddr::from(([127, 0, 0, 1], free_tcp_port()?)),
            };
            let mut entry = toml::Table::new();
            entry.insert("id".into(), (id as i64).into());
            entry.insert(
                "replication".into(),
                format!("127.0.0.1:{replication}").into(),
            );
            entry.insert("client".into(), spec.client.to_string().into());
            table.push(toml::Value::Table(entry));
            replicas.push(spec);
        }
        let table = toml::Value::Array(table);
        for spec in &replicas {
            std::fs::write(&spec.config, replica_config(spec, &certs, &table, args)?)
                .map_err(|e| format!("{}: {e}", spec.config.display()))?;
        }
        let mut cluster = SpawnedCluster {
            dir,
            replicas,
            running: Mutex::new(BTreeMap::new()),
            trust_pem: Vec::new(),
            server_threads: args.server_threads,
        };
        let started =
            futures::future::join_all(cluster.replicas.iter().map(|s| cluster.launch(s))).await;
        for (spec, result) in cluster.replicas.iter().zip(started) {
            let (child, cert) = result?;
            let pem = std::fs::read(&cert).map_err(|e| format!("{}: {e}", cert.display()))?;
            cluster.trust_pem.extend(pem);
            cluster.running.get_mut().insert(spec.id, Running { child });
        }
        println!(
            "spawned cluster: {count} replicas, clients on {}",
            cluster.addrs_text()
        );
        Ok(cluster)
    }

    /// The replicas' client addresses.
    pub(crate) fn addrs(&self) -> Vec<SocketAddr> {
        self.replicas.iter().map(|s| s.client).collect()
    }

    fn addrs_text(&self) -> String {
        let addrs: Vec<String> = self.addrs().iter().map(|a| a.to_string()).collect();
        addrs.join(",")
    }

    /// Starts replica `spec` (again, on its directory) and waits until it
    /// listens: its process and its client certificate's path.
    async fn launch(&self, spec: &ReplicaSpec) -> Result<(tokio::process::Child, PathBuf), String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("replica-{}.log", spec.id)))
            .map_err(|e| e.to_string())?;
        let mut child = tokio::process::Command::new(exe)
            .arg("--serve-replica")
            .arg(&spec.config)
            .arg("--server-threads")
            .arg(self.server_threads.to_string())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start replica {}: {e}", spec.id))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(Duration::from_secs(START_TIMEOUT_S), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(rest) = line.strip_prefix("LISTENING ") {
                    let (_, cert) = rest.split_once(' ').ok_or("bad LISTENING line")?;
                    return Ok(PathBuf::from(cert));
                }
            }
            Err(format!(
                "replica {} exited before it listened (its log: {})",
                spec.id,
                self.dir.join(format!("replica-{}.log", spec.id)).display()
            ))
        })
        .await
        .map_err(|_| {
            format!(
                "replica {} did not start within {START_TIMEOUT_S} s",
                spec.id
            )
        })??;
        // Drained all along, so the replica never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok((child, ready))
    }

    /// The replica that leads now, by its `/metrics`
    /// (`omniroute_replica_role` 2), waiting up to a few seconds for one.
    pub(crate) async fn leader(&self) -> Option<&ReplicaSpec> {
        let deadline = Instant::now() + Duration::from_millis(FIND_LEADER_TIMEOUT_MS);
        while Instant::now() < deadline {
            for spec in &self.replicas {
                let page = crate::scrape::metrics_page(spec.admin);
                let Ok(Ok(page)) = tokio::time::timeout(Duration::from_millis(500), page).await
                else {
                    continue;
                };
                if gauge(&page, "omniroute_replica_role") == Some(ROLE_LEADER) {
                    return Some(spec);
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    /// SIGKILLs the leader, then restarts it on its directory.
    pub(crate) async fn kill_leader(&self) -> Result<Option<Kill>, String> {
        let Some(spec) = self.leader().await else {
            println!("kill-leader: no replica leads; skipping this round");
            return Ok(None);
        };
        let at = {
            let mut running = self.running.lock().await;
            let Some(mut replica) = running.remove(&spec.id) else {
                return Ok(None);
            };
            replica
                .child
                .start_kill()
                .map_err(|e| format!("kill -9 replica {}: {e}", spec.id))?;
            let at = Instant::now();
            let _ = replica.child.wait().await;
            at
        };
        let started = Instant::now();
        let (child, _) = self.launch(spec).await?;
        let restart_ms = started.elapsed().as_secs_f64() * 1e3;
        self.running.lock().await.insert(spec.id, Running { child });
        println!(
            "kill-leader: replica {} ({}) SIGKILLed and restarted on its directory in {restart_ms:.0} ms",
            spec.id, spec.client
        );
        Ok(Some(Kill {
            at,
            id: spec.id,
            client: spec.client,
            restart_ms,
        }))
    }

    /// Stops every replica with SIGTERM and waits for each (killing one
    /// that does not stop in time); the directory stays for the digests.
    pub(crate) async fn stop(&self) {
        let mut running = self.running.lock().await;
        for replica in running.values() {
            if let Some(pid) = replica.child.id() {
                // SAFETY: kill(2) on a child process of ours that has not
                // been waited for, so the pid is still ours.
                unsafe {
                    libc::kill(pid as libc::pid_t, libc::SIGTERM);
                }
            }
        }
        for (id, replica) in running.iter_mut() {
            let wait = replica.child.wait();
            match tokio::time::timeout(Duration::from_secs(STOP_TIMEOUT_S), wait).await {
                Ok(Ok(status)) if status.success() => {}
                Ok(status) => println!(
                    "replica {id} stopped after SIGTERM with {status:?}:\n{}",
                    self.log_tail(*id)
                ),
                Err(_) => {
                    println!(
                        "replica {id} did not stop within {STOP_TIMEOUT_S} s of SIGTERM; killed"
                    );
                    let _ = replica.child.start_kill();
                    let _ = replica.child.wait().await;
                }
            }
        }
        running.clear();
    }

    /// Each replica's (committed index replayed, digest of stock and
    /// orders), after [`SpawnedCluster::stop`].
    /// Replicas that stopped at different commit indexes (a follower
    /// learns the last one a heartbeat later) compare at the lowest.
    pub(crate) fn digests(&self) -> Vec<(u64, Digest)> {
        let commits = (self.replicas.iter())
            .filter_map(|spec| replica_digest(&spec.config, u64::MAX).ok())
            .map(|(commit, _)| commit);
        let through = commits.min().unwrap_or(u64::MAX);
        self.replicas
            .iter()
            .map(|spec| (spec.id, replica_digest(&spec.config, through)))
            .collect()
    }

    /// The last lines of replica `id`'s log (its stderr, kept across
    /// restarts), for a run that failed.
    pub(crate) fn log_tail(&self, id: u64) -> String {
        let path = self.dir.join(format!("replica-{id}.log"));
        let log = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
    }

    /// Snapshot sets the replicas installed from a leader, as their logs
    /// (kept across restarts) say.
    pub(crate) fn snapshots_installed(&self) -> u64 {
        let installed = |spec: &ReplicaSpec| {
            let path = self.dir.join(format!("replica-{}.log", spec.id));
            let log = std::fs::read_to_string(path).unwrap_or_default();
            log.matches("installed the leader's snapshot at entry")
                .count() as u64
        };
        self.replicas.iter().map(installed).sum()
    }

    /// Kills what still runs (SIGKILL) and removes the directory.
    pub(crate) async fn remove(&self) {
        let mut running = self.running.lock().await;
        for replica in running.values_mut() {
            let _ = replica.child.start_kill();
            let _ = replica.child.wait().await;
        }
        running.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A stopped replica's state, replayed from its directory: (committed
/// index replayed, digest of stock and orders).
fn replica_digest(config: &Path, through: u64) -> Result<(u64, u64), String> {
    let text = std::fs::read_to_string(config).map_err(|e| format!("{}: {e}", config.display()))?;
    let config = omniroute::config::Config::from_toml(&text)
        .and_then(|c| c.validate())
        .map_err(|e| e.to_string())?;
    omniroute::cluster::digest_through(&config, through)
}

/// The value of an unlabelled gauge in a Prometheus page.
fn gauge(page: &str, name: &str) -> Option<f64> {
    page.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        rest.strip_prefix(' ')?.trim().parse().ok()
    })
}

/// `--kill-leader-every`: kills the leader every `every` until stopped;
/// the kills made.
pub(crate) struct Killer {
    stop: tokio::sync::watch::Sender<bool>,
    /// Taken by `finish`; aborted if the run ends without it (an error).
    task: Option<tokio::task::JoinHandle<Result<Vec<Kill>, String>>>,
}

impl Drop for Killer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl Killer {
    pub(crate) fn start(cluster: Arc<SpawnedCluster>, every: Duration) -> Killer {
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            let mut kills = Vec::new();
            let mut next = tokio::time::Instant::now() + every;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(next) => {}
                    _ = stopped.changed() => return Ok(kills),
                }
                next += every;
                if let Some(kill) = cluster.kill_leader().await? {
                    kills.push(kill);
                }
            }
        });
        Killer {
            stop,
            task: Some(task),
        }
    }

    /// Stops killing (a kill under way finishes, its replica restarted);
    /// the kills made.
    pub(crate) async fn finish(mut self) -> Result<Vec<Kill>, String> {
        let _ = self.stop.send(true);
        match self.task.take() {
            Some(task) => task.await.map_err(|e| e.to_string())?,
            None => Ok(Vec::new()),
        }
    }
}

/// Each kill's failover into `run` (from the kill to the first decision by
/// another replica, as `deciders` logged who decided), their median and
/// longest, and each as a span on the chart's time axis from `first`.
pub(crate) fn failovers(
    run: &mut ClusterRun,
    kills: &[Kill],
    deciders: &Deciders,
    first: Instant,
    events: &mut Vec<RunEvent>,
) {
    let deciders = deciders.lock().expect("deciders lock").clone();
    for kill in kills {
        let next = deciders
            .iter()
            .find(|(at, addr)| *at > kill.at && *addr != kill.client)
            .map(|(at, _)| *at);
        let failover_ms = next.map(|at| (at - kill.at).as_secs_f64() * 1e3);
        let at_s = signed_seconds(kill.at, first);
        run.failovers.push(Failover {
            at_s,
            replica: kill.id,
            failover_ms,
            restart_ms: kill.restart_ms,
        });
        let what = match failover_ms {
            Some(ms) => format!("leader {} killed: {ms:.0} ms", kill.id),
            None => format!("leader {} killed: no decision after", kill.id),
        };
        let until_s = next.map(|at| signed_seconds(at, first));
        events.push(RunEvent {
            at_s,
            until_s,
            what,
        });
    }
    events.sort_by(|a, b| a.at_s.total_cmp(&b.at_s));
    let mut ended: Vec<f64> = run.failovers.iter().filter_map(|f| f.failover_ms).collect();
    ended.sort_by(f64::total_cmp);
    run.failover_p50_ms = ended.get(ended.len().saturating_sub(1) / 2).copied();
    run.failover_max_ms = ended.last().copied();
}

/// Seconds from `first` to `at`, negative before it.
fn signed_seconds(at: Instant, first: Instant) -> f64 {
    match at.checked_duration_since(first) {
        Some(after) => after.as_secs_f64(),
        None => -first.duration_since(at).as_secs_f64(),
    }
}

/// The replicas' digests into `run`: equal when every one was read and
/// all agree; not compared when one could not be read.
pub(crate) fn compare_digests(run: &mut ClusterRun, digests: Vec<(u64, Digest)>) {
    let mut read = Vec::new();
    for (id, digest) in &digests {
        match digest {
            Ok((index, digest)) => {
                run.digests
                    .push(format!("{id}: index {index} digest {digest:016x}"));
                read.push((*index, *digest));
            }
            Err(why) => run.digests.push(format!("{id}: {why}")),
        }
    }
    run.replicas_equal = (read.len() == digests.len() && !read.is_empty())
        .then(|| read.windows(2).all(|pair| pair[0] == pair[1]));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_role_gauge_is_read_by_its_exact_name() {
        // Proves the leader is found by the gauge's own line, not by a longer name that
        // starts with it.
        let page = "omniroute_replica_role_changes 7\nomniroute_replica_role 2\n";
        assert_eq!(gauge(page, "omniroute_replica_role"), Some(2.0));
        assert_eq!(
            gauge("omniroute_replica_term 3\n", "omniroute_replica_role"),
            None
        );
    }
}
