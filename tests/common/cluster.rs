//! Three replicas of the real daemon binary on loopback, each a child
//! process on its own data directory, for the tests that kill them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use omniroute_client::{Client, ClientError, Trust};
use omniroute_protocol::{Decision, ErrorCode, Order};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::relay::Relay;
use super::{channel, server_section, stock, TempDir, CHANNEL_WEB_TOKEN, NODES};

/// How long a replica may take to start.
const START_TIMEOUT_S: u64 = 60;

/// Free loopback ports for a replica: replication, QUIC client, HTTP, admin.
#[derive(Clone, Copy)]
pub struct Ports {
    pub raft: u16,
    pub quic: u16,
    pub http: u16,
    pub admin: u16,
}

fn free_ports() -> Ports {
    let udp = || {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("a free UDP port");
        socket.local_addr().unwrap().port()
    };
    let tcp = || {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free TCP port");
        listener.local_addr().unwrap().port()
    };
    Ports {
        raft: udp(),
        quic: udp(),
        http: tcp(),
        admin: tcp(),
    }
}

/// One HTTP/1.1 GET on loopback: the status code and the body.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connects");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response[9..12].parse().expect("a status code");
    let body = response
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}

pub struct ReplicaProcess {
    pub child: Child,
    pub addr: SocketAddr,
}

/// A cluster's directory, configs and running replicas.
pub struct Cluster {
    pub dir: TempDir,
    pub ids: Vec<u64>,
    pub ports: BTreeMap<u64, Ports>,
    pub running: BTreeMap<u64, ReplicaProcess>,
    /// With `start_relayed`: the relay each replica dials each peer
    /// through, by (from, to).
    pub relays: BTreeMap<(u64, u64), Relay>,
    /// This test binary's turn to run a cluster, held while it lives.
    _turn: Option<tokio::sync::MutexGuard<'static, ()>>,
}

/// Clusters of one test binary start one at a time (see `start_with`).
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

impl Cluster {
    /// Writes certificates and a config per replica (the fixture network,
    /// channel web, `stock`), and starts every replica.
    pub async fn start(name: &str, stock_entries: &[(&str, &str, u32)]) -> Cluster {
        Cluster::start_with(name, &stock(stock_entries), "", false).await
    }

    /// [`Cluster::start`] with `[sample_stock]` for `skus` SKUs instead.
    pub async fn start_sampled(name: &str, skus: usize) -> Cluster {
        let sampled = format!("[sample_stock]\nskus = {skus}\n");
        Cluster::start_with(name, &sampled, "", false).await
    }

    /// [`Cluster::start`] with each replica's replication traffic to each
    /// peer through a [`Relay`] the test can cut.
    pub async fn start_relayed(name: &str, stock_entries: &[(&str, &str, u32)]) -> Cluster {
        Cluster::start_with(name, &stock(stock_entries), "", true).await
    }

    /// [`Cluster::start`] with `tables` (TOML, such as a `[journal]`
    /// table) in every replica's config, and `cluster_keys` in its
    /// `[cluster]` table.
    pub async fn start_tuned(
        name: &str,
        stock_text: &str,
        tables: &str,
        cluster_keys: &str,
    ) -> Cluster {
        let text = format!("{stock_text}{tables}");
        Cluster::start_with(name, &text, cluster_keys, false).await
    }

    /// One cluster at a time per test binary (each is three processes on
    /// two cores), on fresh ports; ports another process took between
    /// their pick and the replica's bind are picked again, twice at most.
    async fn start_with(
        name: &str,
        stock_text: &str,
        cluster_keys: &str,
        relayed: bool,
    ) -> Cluster {
        let turn = ONE_AT_A_TIME.lock().await;
        let mut attempt = 0;
        loop {
            let dir = TempDir::new(&format!("{name}-{attempt}"));
            let mut cluster = Cluster::configure(dir, stock_text, cluster_keys, relayed);
            match cluster.start_all().await {
                Ok(()) => {
                    cluster._turn = Some(turn);
                    return cluster;
                }
                Err(log) if log.contains("Address already in use") && attempt < 2 => {
                    for id in cluster.ids.clone() {
                        if cluster.running.contains_key(&id) {
                            cluster.kill(id).await;
                        }
                    }
                    attempt += 1;
                }
                Err(log) => panic!("a replica exited while starting:\n{log}"),
            }
        }
    }

    /// Starts every replica; the log of one that exits while starting.
    async fn start_all(&mut self) -> Result<(), String> {
        for id in self.ids.clone() {
            self.try_start_replica(id).await?;
        }
        Ok(())
    }

    /// Certificates, ports and a config per replica in `dir`, whose
    /// `[cluster]` table ends with `cluster_keys`.
    fn configure(dir: TempDir, stock_text: &str, cluster_keys: &str, relayed: bool) -> Cluster {
        let ids = vec![1, 2, 3];
        let certs = dir.0.join("certs");
        let made = std::process::Command::new(env!("CARGO_BIN_EXE_omniroute"))
            .args(["cluster", "certs", "--ids", "1,2,3", "--dir"])
            .arg(&certs)
            .output()
            .expect("cluster certs runs");
        assert!(made.status.success(), "{made:?}");
        let ports: BTreeMap<u64, _> = ids.iter().map(|&id| (id, free_ports())).collect();
        let mut relays = BTreeMap::new();
        for &from in &ids {
            for &to in ids.iter().filter(|&&to| relayed && to != from) {
                let target = SocketAddr::from(([127, 0, 0, 1], ports[&to].raft));
                relays.insert((from, to), Relay::start(target));
            }
        }
        for &id in &ids {
            // The peers as this replica dials them: through its relays.
            let replicas: Vec<String> = ports
                .iter()
                .map(|(other, p)| {
                    let raft = relays.get(&(id, *other)).map_or(p.raft, |r: &Relay| r.addr.port());
                    format!("  {{ id = {other}, replication = \"127.0.0.1:{raft}\", client = \"127.0.0.1:{}\", http = \"127.0.0.1:{}\" }},", p.quic, p.http)
                })
                .collect();
            let Ports {
                quic, http, admin, ..
            } = ports[&id];
            let data = dir.0.join(format!("replica-{id}"));
            let server = server_section(&data).replace("127.0.0.1:0", &format!("127.0.0.1:{quic}"));
            let text = format!(
                "{NODES}\n{server}{}{}{}[http]\nlisten = \"127.0.0.1:{http}\"\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n\
                 [cluster]\nid = {id}\ncerts_dir = {:?}\nreplicas = [\n{}\n]\n{cluster_keys}",
                channel("web", &["nearest"]),
                channel("c", &["nearest"]),
                stock_text,
                certs.display().to_string(),
                replicas.join("\n")
            );
            std::fs::write(config_path(&dir.0, id), text).unwrap();
        }
        Cluster {
            dir,
            ids,
            ports,
            running: BTreeMap::new(),
            relays,
            _turn: None,
        }
    }

    /// Starts (or restarts, on its directory) replica `id`.
    pub async fn start_replica(&mut self, id: u64) {
        if let Err(log) = self.try_start_replica(id).await {
            panic!("replica {id} exited while starting:\n{log}");
        }
    }

    /// [`Cluster::start_replica`], or the replica's log if it exits first.
    async fn try_start_replica(&mut self, id: u64) -> Result<(), String> {
        // Its log, kept across restarts, for a failing test to show.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(id))
            .expect("the replica's log file");
        let mut child = Command::new(env!("CARGO_BIN_EXE_omniroute"))
            .arg("--config")
            .arg(config_path(&self.dir.0, id))
            .stdout(std::process::Stdio::piped())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("the replica starts");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let deadline = Instant::now() + Duration::from_secs(START_TIMEOUT_S);
        let addr = loop {
            let line = tokio::time::timeout_at(deadline.into(), lines.next_line())
                .await
                .unwrap_or_else(|_| panic!("replica {id} starts within {START_TIMEOUT_S} s"))
                .expect("stdout");
            let Some(line) = line else {
                let _ = child.wait().await;
                return Err(std::fs::read_to_string(self.log_path(id)).unwrap_or_default());
            };
            if let Some(rest) = line.strip_prefix("listening on ") {
                break rest.split_whitespace().next().unwrap().parse().unwrap();
            }
        };
        // Drained all along, so the replica never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        self.running.insert(id, ReplicaProcess { child, addr });
        Ok(())
    }

    /// The last lines of every replica's log.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for id in &self.ids {
            let log = std::fs::read_to_string(self.log_path(*id)).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(40)..];
            out.push_str(&format!("--- replica {id}\n{}\n", tail.join("\n")));
        }
        out
    }

    /// Where replica `id` writes its log.
    pub fn log_path(&self, id: u64) -> PathBuf {
        self.dir.0.join(format!("replica-{id}.log"))
    }

    /// SIGKILLs replica `id` and waits for it to be gone.
    pub async fn kill(&mut self, id: u64) {
        let mut replica = self.running.remove(&id).expect("running");
        replica.child.start_kill().expect("kill");
        let _ = replica.child.wait().await;
    }

    /// SIGTERMs replica `id` and waits, at most 30 s, for it to exit.
    pub async fn stop(&mut self, id: u64) {
        let mut replica = self.running.remove(&id).expect("running");
        let pid = replica.child.id().expect("running") as i32;
        // SAFETY: kill only sends a signal to our own child process.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        let status = tokio::time::timeout(Duration::from_secs(30), replica.child.wait())
            .await
            .expect("the replica exits within 30 s of a SIGTERM")
            .expect("its status");
        assert!(
            status.success(),
            "replica {id} exited with {status}\n{}",
            self.logs()
        );
    }

    /// Stops every replica, then replays each one's committed log offline,
    /// up to the lowest commit index among them: (that index, each digest).
    pub async fn stop_and_digest(&mut self) -> (u64, Vec<u64>) {
        for id in self.ids.clone() {
            if self.running.contains_key(&id) {
                self.stop(id).await;
            }
        }
        let configs: Vec<_> = (self.ids.iter())
            .map(|&id| {
                let text = std::fs::read_to_string(config_path(&self.dir.0, id)).unwrap();
                let config = omniroute::config::Config::from_toml(&text).unwrap();
                config.validate().unwrap()
            })
            .collect();
        let commits: Vec<u64> = (configs.iter())
            .map(|c| omniroute::cluster::digest(c).expect("a digest").0)
            .collect();
        let through = *commits.iter().min().unwrap();
        let digests = (configs.iter())
            .map(|c| {
                omniroute::cluster::digest_through(c, through)
                    .expect("a digest")
                    .1
            })
            .collect();
        (through, digests)
    }

    /// Resubmits every order `answered` holds (`order(i)` is order `i`),
    /// checking each gets the answer it had; how many were routed.
    pub async fn resubmit_all(
        &self,
        answered: &BTreeMap<usize, Decision>,
        order: impl Fn(usize) -> Order,
    ) -> u32 {
        let mut routed = 0;
        for (i, decision) in answered {
            let (again, _) = self.submit(&order(*i), Duration::from_secs(20)).await;
            assert_eq!(
                &again, decision,
                "order {i} was answered differently before"
            );
            routed += matches!(decision, Decision::Routed { .. }) as u32;
        }
        routed
    }

    /// Cuts (or heals) every relay to and from replica `id`.
    pub fn isolate(&self, id: u64, isolated: bool) {
        for ((from, to), relay) in &self.relays {
            if *from == id || *to == id {
                if isolated {
                    relay.cut()
                } else {
                    relay.heal()
                }
            }
        }
    }

    /// Waits until every running replica has applied the same index (a
    /// replica that rejoined has caught up).
    pub async fn wait_caught_up(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let mut applied = Vec::new();
            for &id in self.running.keys() {
                let (_, page) = http_get(self.admin_addr(id), "/metrics").await;
                applied.push(super::daemon::sample(
                    &page,
                    "omniroute_replica_applied_index",
                ));
            }
            if applied.iter().all(|a| *a == applied[0] && *a > 0.0) {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "replicas did not catch up in {timeout:?}: applied {applied:?}\n{}",
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Replica `id`'s role, as its admin port's `/readyz` says it.
    pub async fn role(&self, id: u64) -> String {
        http_get(self.admin_addr(id), "/readyz")
            .await
            .1
            .trim()
            .to_string()
    }

    /// The leader's id, once a replica's admin port says it leads and serves.
    pub async fn leader(&self, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        loop {
            for &id in self.running.keys() {
                if self.role(id).await.starts_with("leader of term") {
                    return id;
                }
            }
            if Instant::now() >= deadline {
                panic!("no replica leads within {timeout:?}\n{}", self.logs());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A client of replica `id` (whatever its role).
    pub async fn client(&self, id: u64) -> Client {
        Client::connect(
            self.client_addr(id),
            "localhost",
            self.trust(),
            CHANNEL_WEB_TOKEN,
        )
        .await
        .expect("connects")
    }

    /// Trust for every replica's client certificate.
    pub fn trust(&self) -> Trust {
        let mut pem = Vec::new();
        for id in &self.ids {
            let path = self.dir.0.join(format!("replica-{id}")).join("cert.pem");
            if let Ok(bytes) = std::fs::read(path) {
                pem.extend(bytes);
            }
        }
        Trust::CaPem(pem)
    }

    /// The client address of replica `id`.
    pub fn client_addr(&self, id: u64) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.ports[&id].quic))
    }

    /// The admin port of replica `id`.
    pub fn admin_addr(&self, id: u64) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.ports[&id].admin))
    }

    /// Submits `order` until a leader decides it, following `NotLeader`
    /// (and trying the others while no leader is known): the decision and
    /// the replica that decided it.
    pub async fn submit(&self, order: &Order, timeout: Duration) -> (Decision, u64) {
        let deadline = Instant::now() + timeout;
        let mut id = *self.running.keys().next().expect("a replica runs");
        loop {
            if Instant::now() >= deadline {
                panic!(
                    "no leader decided {order:?} in {timeout:?}\n{}",
                    self.logs()
                );
            }
            match self.try_submit(id, order).await {
                Ok(decision) => return (decision, id),
                Err(Some(leader)) => id = leader,
                Err(None) => {
                    id = self.ids
                        [(self.ids.iter().position(|&i| i == id).unwrap() + 1) % self.ids.len()];
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }

    /// One submission to replica `id`: the decision, or the leader it
    /// names (None: it names none, or could not be reached).
    async fn try_submit(&self, id: u64, order: &Order) -> Result<Decision, Option<u64>> {
        let addr = self.client_addr(id);
        let connect = Client::connect(addr, "localhost", self.trust(), CHANNEL_WEB_TOKEN);
        // A SIGKILLed replica's port stays silent: give up on it soon.
        let client = match tokio::time::timeout(Duration::from_millis(300), connect).await {
            Ok(Ok(client)) => client,
            _ => return Err(None),
        };
        let answer =
            tokio::time::timeout(Duration::from_secs(5), client.submit(order.clone())).await;
        match answer {
            Ok(Ok(decision)) => Ok(decision),
            Ok(Err(ClientError::Server { code, message }))
                if code == ErrorCode::NotLeader as u16 =>
            {
                Err(self.id_of(&message))
            }
            _ => Err(None),
        }
    }

    fn id_of(&self, addr: &str) -> Option<u64> {
        let addr: SocketAddr = addr.parse().ok()?;
        self.ids
            .iter()
            .copied()
            .find(|&id| self.client_addr(id) == addr)
    }
}

fn config_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("replica-{id}.toml"))
}
