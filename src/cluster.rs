//! A replica's life (`[cluster]` in the config): load its log, start the
//! ready loop, the replication transport and the apply thread, serve the
//! client ports, and follow the leadership:
//! - while it follows, the apply thread keeps a state of the committed
//!   log and the client ports answer `NotLeader` (HTTP: a redirect);
//! - once it leads and has applied the first entry of its term, the engine
//!   starts on that state, with the replicated log as its sequencer, and
//!   serves (a promotion);
//! - when it stops leading, the engine stops at once and answers nothing
//!   more it could not vouch for, and the apply thread starts again from
//!   the committed log (a step-down).

use std::sync::{Arc, Mutex};
use std::time::Instant;

mod digest;
mod leader_snapshots;
pub use digest::{digest, digest_through};
use leader_snapshots::LeaderSnapshots;

use crossbeam_channel::Sender;
use raft::eraftpb::Message;
use raft::StateRole;
use tokio::sync::{mpsc, watch};

use crate::config::{ClusterSettings, ValidConfig};
use crate::core::network::Network;
use crate::engine::sequencer::Sequencer;
use crate::engine::{Engine, SystemClock};
use crate::journal::Journal;
use crate::replica::certs::ClusterTls;
use crate::replica::disk::{self, DiskError};
use crate::replica::driver::{Driver, Effects, Event, INBOX_EVENTS};
use crate::replica::follower::{Follower, STOCK_LOADED};
use crate::replica::local_snapshot::{self, LocalSnapshots, SnapshotSets};
use crate::replica::proposer::Proposer;
use crate::replica::serving::Serving;
use crate::replica::snapshot_files;
use crate::replica::transport::{PeerSender, SnapshotIo, Transport};
use crate::store;
use crate::telemetry;

/// Why a replica cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(transparent)]
    Lock(#[from] store::LockError),
    #[error("the replica's log: {0}")]
    Disk(#[from] DiskError),
    #[error("the replica's raft node: {0}")]
    Raft(#[from] raft::Error),
    #[error("replication: {0}")]
    Transport(String),
    #[error(transparent)]
    Server(#[from] crate::server::ServerError),
    #[error(transparent)]
    Http(#[from] crate::http::HttpError),
    #[error(transparent)]
    Admin(#[from] crate::admin::AdminError),
    #[error("the replica's snapshot set: {0}")]
    Snapshot(String),
    #[error("loading the replica panicked: {0}")]
    Panicked(String),
    #[error("[cluster] names {configured} as replica {id}'s {port}, but it serves {serves}: the other replicas would send clients where it is not; make them the same")]
    OwnAddress {
        id: u64,
        port: &'static str,
        configured: String,
        serves: String,
    },
}

/// What the replica knows of the cluster's leadership.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct View {
    pub role: StateRole,
    pub term: u64,
    /// The leader (0: none known).
    pub leader: u64,
}

/// A change for the conductor, which starts and stops the engine.
enum Change {
    /// This replica leads `term` and has applied through `index`.
    Lead { term: u64, index: u64 },
    /// The engine that served until a step-down: stop it.
    Deposed(Engine),
}

/// The leadership as the driver reports it, and the engine that serves:
/// changed together, under one lock, so that an engine is installed only
/// while its term is led here.
struct Roles {
    id: u64,
    view: Mutex<View>,
    watch: watch::Sender<View>,
    serving: Arc<Serving>,
    changes: mpsc::UnboundedSender<Change>,
}

impl Roles {
    /// The driver's report (on its thread): a replica that stops leading
    /// stops serving at once.
    fn changed(&self, now: View) {
        let mut view = self.view.lock().unwrap_or_else(|e| e.into_inner());
        let before = *view;
        *view = now;
        self.serving.set_leader(now.leader);
        if now.role != StateRole::Leader {
            if let Some(engine) = self.serving.set_engine(None) {
                let _ = self.changes.send(Change::Deposed(engine));
            }
        }
        drop(view);
        let _ = self.watch.send(now);
        log_change(self.id, before, now);
    }

    /// Installs `engine` if this replica still leads `term`; else hands
    /// it back.
    /// This replica leads `term` still.
    fn leads(&self, term: u64) -> bool {
        let view = self.view.lock().unwrap_or_else(|e| e.into_inner());
        view.role == StateRole::Leader && view.term == term
    }

    fn install(&self, term: u64, engine: Engine) -> Result<(), Engine> {
        let view = self.view.lock().unwrap_or_else(|e| e.into_inner());
        if view.role != StateRole::Leader || view.term != term {
            return Err(engine);
        }
        self.serving.set_engine(Some(engine));
        Ok(())
    }
}

/// Logs an election's outcome as this replica saw it.
fn log_change(id: u64, before: View, now: View) {
    metrics::gauge!(telemetry::REPLICA_TERM).set(now.term as f64);
    metrics::gauge!(telemetry::REPLICA_LEADER).set(now.leader as f64);
    let role = match now.role {
        StateRole::Leader => 2.0,
        StateRole::Candidate | StateRole::PreCandidate => 1.0,
        StateRole::Follower => 0.0,
    };
    metrics::gauge!(telemetry::REPLICA_ROLE).set(role);
    if now.leader == before.leader {
        return;
    }
    metrics::counter!(telemetry::REPLICA_LEADER_CHANGES_TOTAL).increment(1);
    match (now.leader, before.leader) {
        (0, old) => tracing::warn!(
            "replica {id}: no leader in term {} (replica {old} led before; an election is under way)",
            now.term
        ),
        (new, _) if new == id => {
            tracing::info!("replica {id}: elected leader of term {}", now.term)
        }
        (new, _) => tracing::info!(
            "replica {id}: replica {new} leads term {}; following it",
            now.term
        ),
    }
}

/// The driver's effects in the daemon: messages to the transport, applied
/// indexes to the apply thread, roles to [`Roles`].
struct DaemonEffects {
    peers: PeerSender,
    follower: Arc<Follower>,
    roles: Arc<Roles>,
}

impl Effects for DaemonEffects {
    fn send(&mut self, messages: Vec<Message>) {
        self.peers.send(messages);
    }

    /// Nothing to do here: the apply thread reads the entries from the
    /// log itself, up to what `applied` says.
    fn apply(&mut self, _index: u64, _data: &[u8]) {}

    fn applied(&mut self, index: u64) {
        metrics::gauge!(telemetry::REPLICA_APPLIED_INDEX).set(index as f64);
        self.follower.applied(index);
    }

    fn restoring(&mut self) {
        self.follower.restoring();
    }

    fn restored(&mut self, index: u64) {
        metrics::gauge!(telemetry::REPLICA_APPLIED_INDEX).set(index as f64);
        self.follower.restored(index);
    }

    fn role(&mut self, role: StateRole, term: u64, leader: u64) {
        self.roles.changed(View { role, term, leader });
    }

    fn lead(&mut self, term: u64, index: u64) {
        let _ = self.roles.changes.send(Change::Lead { term, index });
    }

    fn progress(&mut self, commit: u64, lags: &[(u64, u64)]) {
        metrics::gauge!(telemetry::REPLICA_COMMIT_INDEX).set(commit as f64);
        for (peer, lag) in lags {
            metrics::gauge!(telemetry::REPLICA_FOLLOWER_LAG_ENTRIES, "peer" => peer.to_string())
                .set(*lag as f64);
        }
    }
}

/// What `/readyz` and `/healthz` say of a replica.
struct Probe {
    view: watch::Receiver<View>,
    failed: watch::Receiver<Option<String>>,
    serving: Arc<Serving>,
}

impl crate::admin::ReplicaProbe for Probe {
    fn failure(&self) -> Option<String> {
        self.failed.borrow().clone()
    }

    fn role(&self) -> (bool, String) {
        let view = *self.view.borrow();
        let term = view.term;
        match view.role {
            StateRole::Leader if self.serving.is_serving() => {
                (true, format!("leader of term {term}"))
            }
            StateRole::Leader => (false, format!("leader of term {term}, not serving yet")),
            _ if view.leader != 0 => (
                true,
                format!("follower of replica {} (term {term})", view.leader),
            ),
            _ => (
                false,
                format!("no leader known (term {term}): an election is under way"),
            ),
        }
    }
}

/// A running replica.
pub struct Replica {
    pub id: u64,
    pub server: crate::server::RunningServer,
    pub http: Option<crate::http::RunningHttp>,
    pub admin: Option<crate::admin::AdminServer>,
    pub serving: Arc<Serving>,
    /// The leadership as this replica sees it.
    pub view: watch::Receiver<View>,
    /// Set once the replica cannot go on (its storage, its state or its
    /// engine failed): the daemon stops.
    pub failed: watch::Receiver<Option<String>>,
    events: Sender<Event>,
    driver: Option<std::thread::JoinHandle<Option<String>>>,
    transport: Transport,
    conductor: tokio::task::JoinHandle<()>,
    /// The serving engine's snapshot loop, while this replica leads.
    leader_snapshots: Arc<Mutex<Option<LeaderSnapshots>>>,
    follower: Arc<Follower>,
    _lock: store::DirLock,
}

/// What the conductor needs to start an engine.
struct Conductor {
    config: ValidConfig,
    network: Arc<Network>,
    proposer: Proposer,
    storage: Arc<Journal>,
    follower: Arc<Follower>,
    roles: Arc<Roles>,
    failed: Arc<watch::Sender<Option<String>>>,
    events: Sender<Event>,
    leader_snapshots: Arc<Mutex<Option<LeaderSnapshots>>>,
    /// Who writes the set in use.
    sets: Arc<SnapshotSets>,
}

/// Starts replica `cluster.id` on the config's data directory.
pub async fn start(
    config: &ValidConfig,
    cluster: &ClusterSettings,
) -> Result<Replica, ClusterError> {
    check_own_addresses(config, cluster)?;
    let data_dir = config.server.data_dir.clone();
    let lock = store::lock::lock(&data_dir, store::Access::Write)?;
    let loaded = {
        let (dir, voters, segment_bytes) = (
            data_dir.clone(),
            cluster.voters(),
            config.store.segment_bytes,
        );
        tokio::task::spawn_blocking(move || load(&dir, &voters, segment_bytes))
            .await
            .map_err(|e| ClusterError::Panicked(e.to_string()))??
    };
    let network = Arc::new(config.network.clone());
    let start_applied = loaded.applied.0;
    let (failed_tx, failed) = watch::channel(None);
    let failed_tx = Arc::new(failed_tx);
    let storage = loaded.persister.journal().clone();
    let on_storage = failed_tx.clone();
    storage.on_failure(Box::new(move |error| {
        let _ = on_storage.send(Some(format!("storage failed: {error}")));
    }));
    let on_apply = failed_tx.clone();
    let (events, inbox) = crossbeam_channel::bounded(INBOX_EVENTS);
    let sets = Arc::new(SnapshotSets::default());
    let follower = Arc::new(Follower::start(
        loaded.storage.clone(),
        config.engine.clone(),
        network.clone(),
        Some(local_snapshots(
            config,
            cluster,
            events.clone(),
            sets.clone(),
        )),
        Box::new(move |reason| {
            let _ = on_apply.send(Some(format!("the committed log did not apply: {reason}")));
        }),
    ));
    let serving = Arc::new(Serving::replica(cluster.id, cluster.clients.clone()));
    let (changes_tx, changes) = mpsc::unbounded_channel();
    let first = View {
        role: StateRole::Follower,
        term: 0,
        leader: 0,
    };
    let (view_tx, view) = watch::channel(first);
    let roles = Arc::new(Roles {
        id: cluster.id,
        view: Mutex::new(first),
        watch: view_tx,
        serving: serving.clone(),
        changes: changes_tx,
    });
    let tls = ClusterTls::load(&cluster.ca, &cluster.cert, &cluster.key)
        .map_err(|e| ClusterError::Transport(e.to_string()))?;
    let (reports, reported) = crossbeam_channel::unbounded();
    let snapshot_io = SnapshotIo {
        dir: data_dir.clone(),
        reports,
        layout: Some(config.engine.layout()),
    };
    let transport = Transport::start(
        cluster.id,
        cluster.listen,
        cluster.peers.clone(),
        &tls,
        events.clone(),
        Some(snapshot_io),
    )
    .map_err(|e| ClusterError::Transport(e.to_string()))?;
    let (proposer, proposals) = Proposer::channel();
    let effects = DaemonEffects {
        peers: transport.sender(),
        follower: follower.clone(),
        roles: roles.clone(),
    };
    let logger = slog::Logger::root(slog::Discard, slog::o!());
    let driver = Driver::new(cluster.id, loaded, effects, &logger)?
        .with_proposals(proposals)
        .with_log_hold(cluster.log_hold_entries, cluster.laggard_hold_entries)
        .with_snapshots(sets.clone(), reported);
    if config.admin.is_some() {
        // What the set holds is applied: said before the driver applies
        // any entry after it (the admin port's recorder first, else the
        // gauge goes nowhere).
        telemetry::install();
        metrics::gauge!(telemetry::REPLICA_APPLIED_INDEX).set(start_applied as f64);
    }
    let on_driver = failed_tx.clone();
    let driver = std::thread::Builder::new()
        .name("raft-driver".into())
        .spawn(move || {
            let stopped = driver.run(inbox);
            if let Some(reason) = &stopped {
                let _ = on_driver.send(Some(format!("replication stopped: {reason}")));
            }
            stopped
        })
        .map_err(|e| ClusterError::Panicked(e.to_string()))?;
    let leader_snapshots = Arc::new(Mutex::new(None));
    let conductor = Conductor {
        config: config.clone(),
        network,
        proposer,
        storage,
        follower: follower.clone(),
        roles,
        failed: failed_tx,
        events: events.clone(),
        leader_snapshots: leader_snapshots.clone(),
        sets,
    };
    let conductor = tokio::spawn(conductor.run(changes));
    let max_inflight = config.engine.max_inflight as usize;
    let server =
        crate::server::start_serving(serving.clone(), max_inflight, &config.server).await?;
    let http = match config.http {
        Some(addr) => {
            let tokens = config.server.tokens.clone();
            let limits = config.http_limits.clone();
            Some(crate::http::start_serving(serving.clone(), tokens, addr, limits).await?)
        }
        None => None,
    };
    let admin = match config.admin {
        Some(addr) => {
            let tokens = config.server.tokens.clone();
            let status = Arc::new(crate::admin::Status::new(None, tokens, data_dir.clone()));
            status.set_replica(Box::new(Probe {
                view: view.clone(),
                failed: failed.clone(),
                serving: serving.clone(),
            }));
            status.set_ready(true);
            let metrics = telemetry::install();
            let limits = config.admin_limits.clone();
            Some(crate::admin::start(addr, status, metrics, limits).await?)
        }
        None => None,
    };
    tracing::info!(
        "replica {} of {:?}: replication on {}, clients on {}",
        cluster.id,
        cluster.voters(),
        cluster.listen,
        server.addr
    );
    Ok(Replica {
        id: cluster.id,
        server,
        http,
        admin,
        serving,
        view,
        failed,
        events,
        driver: Some(driver),
        transport,
        conductor,
        leader_snapshots,
        follower,
        _lock: lock,
    })
}

/// Reads a replica's disk: its snapshot set's point (the half-written set
/// a crash left removed first), then the log from there.
fn load(
    dir: &std::path::Path,
    voters: &[u64],
    segment_bytes: u64,
) -> Result<disk::Loaded, ClusterError> {
    store::layout::prepare_snapshot_sets(dir).map_err(|e| ClusterError::Snapshot(e.to_string()))?;
    // Transfers cut short are sent again; the set in use is pinned anew.
    snapshot_files::prepare(dir).map_err(|e| ClusterError::Snapshot(e.to_string()))?;
    let point = local_snapshot::linked_point(dir).map_err(ClusterError::Snapshot)?;
    let loaded = disk::load(
        &store::journal_dir(dir),
        &dir.join("raft-state"),
        voters,
        segment_bytes,
        point.as_ref(),
    )?;
    if let Some(point) = &point {
        let descriptor = snapshot_files::pin(dir, point).map_err(ClusterError::Snapshot)?;
        loaded.storage.set_pinned(point, descriptor.encode());
    }
    Ok(loaded)
}

/// The apply thread's snapshots: when the config's `[journal]` says a
/// single node would snapshot; each one in place lets the driver compact
/// the log before it.
fn local_snapshots(
    config: &ValidConfig,
    cluster: &ClusterSettings,
    events: Sender<Event>,
    sets: Arc<SnapshotSets>,
) -> LocalSnapshots {
    let voters = cluster.voters();
    let place = voters.iter().position(|&id| id == cluster.id).unwrap_or(0);
    LocalSnapshots {
        phase: (place as u64, voters.len() as u64),
        dir: config.server.data_dir.clone(),
        layout: config.engine.layout(),
        interval_ms: config.store.snapshot_interval_ms,
        every_records: config.store.snapshot_every_records,
        sets,
        written: Box::new(move |point, descriptor| {
            // Dropped if the driver has stopped: nothing to compact then.
            let _ = events.send(Event::Pinned(Box::new(point.clone()), descriptor));
        }),
    }
}

/// The ports this replica serves (the config's, or the command line's)
/// must be the ones `[cluster]` gives the others for it.
fn check_own_addresses(
    config: &ValidConfig,
    cluster: &ClusterSettings,
) -> Result<(), ClusterError> {
    let own = cluster.clients[&cluster.id];
    let show = |a: Option<std::net::SocketAddr>| a.map_or("off".into(), |a| a.to_string());
    if own.quic != config.server.listen {
        return Err(ClusterError::OwnAddress {
            id: cluster.id,
            port: "client (QUIC) address",
            configured: own.quic.to_string(),
            serves: config.server.listen.to_string(),
        });
    }
    if own.http.is_some() && own.http != config.http {
        return Err(ClusterError::OwnAddress {
            id: cluster.id,
            port: "HTTP address",
            configured: show(own.http),
            serves: show(config.http),
        });
    }
    Ok(())
}

impl Conductor {
    async fn run(self, mut changes: mpsc::UnboundedReceiver<Change>) {
        while let Some(change) = changes.recv().await {
            match change {
                Change::Lead { term, index } => self.promote(term, index).await,
                Change::Deposed(engine) => self.step_down(engine).await,
            }
        }
    }

    /// Starts the engine on the state through `index` and serves with it,
    /// if this replica still leads `term` by then.
    async fn promote(&self, term: u64, index: u64) {
        let started = Instant::now();
        // The engine will snapshot into the set in use: no set from
        // another leader is installed under it from now (cleared when its
        // snapshot loop ends, or below if it never starts).
        self.sets.engine_snapshots(true);
        let handed = match self.follower.hand_over(index).await {
            Ok(handed) => handed,
            Err(reason) => {
                self.sets.engine_snapshots(false);
                if !self.roles.leads(term) {
                    // Deposed meanwhile (a set from the next leader may be
                    // on its way in): nothing to serve, nothing failed.
                    tracing::info!("replica promotion to term {term} given up: no longer its leader ({reason})");
                    return;
                }
                return self.fail(format!("promotion to term {term}: {reason}"));
            }
        };
        let mut state = handed.state;
        for shard in &mut state.shards {
            shard.publish_restored();
        }
        let (bumps, orphans) = store::reconcile(&state);
        let sequencer = Sequencer::Replicated {
            proposer: self.proposer.clone(),
            storage: self.storage.clone(),
        };
        let clock = Arc::new(SystemClock);
        let engine = Engine::start_with(
            &self.config.engine,
            self.network.clone(),
            state,
            sequencer,
            clock,
        )
        .await;
        let engine = match engine {
            Ok(engine) => engine,
            Err(e) => {
                self.sets.engine_snapshots(false);
                return self.fail(format!(
                    "promotion to term {term}: the engine did not start: {e}"
                ));
            }
        };
        if let Err(e) = self.prepare(&engine, handed.fresh, bumps, orphans).await {
            // Most likely deposed meanwhile (its proposals failed): the
            // check below tells; the engine is not served either way.
            tracing::warn!("replica promotion to term {term}: {e}");
            engine.shutdown();
            self.sets.engine_snapshots(false);
            self.follower.rebuild();
            return;
        }
        let snapshotted = engine.clone();
        match self.roles.install(term, engine) {
            Ok(()) => {
                let snapshots = LeaderSnapshots::start(
                    snapshotted,
                    self.config.server.data_dir.clone(),
                    self.config.store.clone(),
                    self.config.engine.layout(),
                    self.storage.clone(),
                    self.events.clone(),
                    self.sets.clone(),
                );
                *lock(&self.leader_snapshots) = Some(snapshots);
                tracing::info!(
                    "replica {}: serving orders as leader of term {term} ({} ms after its first entry applied)",
                    self.roles.id,
                    started.elapsed().as_millis()
                );
            }
            Err(engine) => {
                engine.shutdown();
                self.sets.engine_snapshots(false);
                self.follower.rebuild();
            }
        }
    }

    /// What recovery does before a single node serves: repair what was out
    /// of step, release expired holds, and (a new cluster) load the stock.
    async fn prepare(
        &self,
        engine: &Engine,
        fresh: bool,
        bumps: Vec<crate::core::stock::Bumped>,
        orphans: Vec<store::Orphan>,
    ) -> Result<(), crate::engine::EngineError> {
        engine.repair(bumps, orphans).await?;
        engine.tick().await;
        if fresh {
            engine.load_stock(&self.config.stock).await?;
            let (told, committed) = tokio::sync::oneshot::channel();
            let done: crate::journal::Done = Box::new(move |result| drop(told.send(result)));
            let marker = || STOCK_LOADED.to_vec();
            (engine.sequencer())
                .append_raw(crate::engine::sequencer::KIND_MARKER, marker, done)
                .await;
            match committed.await {
                Ok(Ok(_)) => {}
                _ => return Err(crate::engine::EngineError::Unavailable),
            }
        }
        Ok(())
    }

    /// The engine served until this replica stopped leading: its memory is
    /// ahead of the commit point, so it goes, and the apply thread starts
    /// again from the snapshot set and the committed log after it.
    async fn step_down(&self, engine: Engine) {
        // Its snapshot loop ends before the rebuild: the apply thread reads
        // the set, and writes new ones, which the loop must not write into.
        if let Err(reason) = end_term(&self.leader_snapshots, Some(engine)).await {
            return self.fail(reason);
        }
        self.follower.rebuild();
        tracing::info!(
            "replica {}: stopped serving (no longer the leader); rebuilding its state from the committed log",
            self.roles.id
        );
    }

    fn fail(&self, reason: String) {
        tracing::error!("replica {}: {reason}", self.roles.id);
        let _ = self.failed.send(Some(reason));
    }
}

impl Replica {
    /// Stops serving (answering what was accepted), then replication.
    pub async fn shutdown(mut self) {
        if let Some(http) = self.http.take() {
            http.shutdown().await;
        }
        let _ = self.server.shutdown().await;
        // No promotion under way past here (it could start a snapshot loop
        // after the one below is taken).
        self.conductor.abort();
        let _ = (&mut self.conductor).await;
        let _ = end_term(&self.leader_snapshots, self.serving.set_engine(None)).await;
        let _ = self.events.send(Event::Stop);
        if let Some(driver) = self.driver.take() {
            let _ = tokio::task::spawn_blocking(move || driver.join()).await;
        }
        self.transport.shutdown().await;
        if let Some(admin) = self.admin.take() {
            admin.shutdown().await;
        }
        drop(self.follower);
    }
}

/// Stops a leader term's engine and its snapshot loop, if they run: the
/// loop is marked stopping first (a snapshot that the engine's stop fails
/// is not a fault), then waited for.
async fn end_term(
    snapshots: &Mutex<Option<LeaderSnapshots>>,
    engine: Option<Engine>,
) -> Result<(), String> {
    let snapshots = lock(snapshots).take();
    if let Some(snapshots) = &snapshots {
        snapshots.stopping();
    }
    if let Some(engine) = engine {
        engine.shutdown();
    }
    match snapshots {
        Some(snapshots) => snapshots.stop().await,
        None => Ok(()),
    }
}

/// A poisoned lock still guards a valid value here (an `Option` swapped whole).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
