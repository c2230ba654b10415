//! The daemon's life: recover the data directory, start the engine on it,
//! serve QUIC, snapshot now and then, and stop cleanly. `omniroute serve`
//! and the load generator's `--spawn-server` both run exactly this.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use crate::admin::{AdminError, AdminServer, Status};
use crate::config::{ConfigSource, ValidConfig};
use crate::engine::{Clock, Engine, EngineError, SystemClock};
use crate::journal::Durability;
use crate::server::{RunningServer, ServerError};
use crate::store::{self, RecoveryReport, StoreError, StoreSettings};

pub struct Daemon {
    pub engine: Engine,
    pub server: RunningServer,
    pub recovery: RecoveryReport,
    /// Readiness, snapshot age and policy reload, shared with the admin port.
    pub status: Arc<Status>,
    pub admin: Option<AdminServer>,
    /// The HTTP/JSON gateway, when configured.
    pub http: Option<crate::http::RunningHttp>,
    data_dir: PathBuf,
    settings: StoreSettings,
    snapshots: tokio::task::JoinHandle<()>,
    /// Tells the snapshot loop to end once no snapshot is under way.
    stop_snapshots: Arc<tokio::sync::Notify>,
    /// The data directory's lock, let go only after the final snapshot.
    lock: store::DirLock,
}

/// A recovered data directory with the engine started on it.
pub struct Recovery {
    pub engine: Engine,
    pub report: RecoveryReport,
    /// The data directory's lock: whoever writes there keeps it.
    pub lock: store::DirLock,
}

/// Why the daemon cannot start, snapshot or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Another process writes the data directory.
    #[error(transparent)]
    Lock(#[from] store::LockError),
    /// Recovery refused the data directory, or a snapshot failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The engine refused to start or a call of recovery failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The config's starting stock was refused.
    #[error("loading stock: {0}")]
    Stock(#[source] EngineError),
    /// The QUIC port cannot be served.
    #[error(transparent)]
    Server(#[from] ServerError),
    /// The admin port cannot be served.
    #[error(transparent)]
    Admin(#[from] AdminError),
    /// The HTTP gateway's port cannot be bound.
    #[error(transparent)]
    Http(#[from] crate::http::HttpError),
    /// A listener beyond loopback with the embedded development tokens.
    #[error(transparent)]
    DevTokens(#[from] crate::dev_tokens::DevTokensExposed),
    /// The recovery thread panicked.
    #[error("recovery panicked: {0}")]
    RecoveryPanicked(String),
    /// An actor or the storage failed: no final snapshot, since an actor's
    /// state is gone or nothing more can be written.
    #[error("{0}; stopped without a final snapshot (the next start recovers from the journal)")]
    EngineFailed(String),
}

/// Starts the admin port (not ready), recovers, starts the engine and the
/// QUIC server, and only then reports ready. Orders are accepted only once
/// recovery (and the expiry of holds that lapsed while the daemon was
/// down) is complete. `source` is the file a reload reads again.
pub async fn start(
    config: &ValidConfig,
    source: Option<ConfigSource>,
) -> Result<Daemon, DaemonError> {
    crate::dev_tokens::refuse_exposed(config)?;
    if config.store.durability == Durability::None {
        tracing::warn!(
            "journal.durability = \"none\": answers are sent before the fsync; a crash can lose answered orders. For benchmarks only."
        );
    }
    let (http_limits, admin_limits) = fit_descriptors(config);
    // Before any port is bound: a second daemon names the holder, not a
    // taken port.
    let lock = store::lock::lock(&config.server.data_dir, store::Access::Write)?;
    let metrics = crate::telemetry::install();
    let status = Arc::new(Status::new(
        source,
        config.server.tokens.clone(),
        config.server.data_dir.clone(),
    ));
    status.set_ready(false);
    status.set_listeners(crate::dev_tokens::Listeners::of(config));
    let admin = match config.admin {
        Some(addr) => {
            let admin = crate::admin::start(addr, status.clone(), metrics, admin_limits).await?;
            tracing::info!(
                "admin port on http://{} (/metrics /healthz /readyz)",
                admin.addr
            );
            Some(admin)
        }
        None => None,
    };
    let data_dir = config.server.data_dir.clone();
    let Recovery {
        engine,
        report,
        lock,
    } = recover_locked(config, Arc::new(SystemClock), lock).await?;
    status.engine_started(engine.clone());
    status.snapshot_baseline(
        store::newest_snapshot_unix_ms(&data_dir).unwrap_or_else(crate::admin::unix_ms),
    );
    let stop_snapshots = Arc::new(tokio::sync::Notify::new());
    let snapshots = tokio::spawn(snapshot_loop(
        engine.clone(),
        data_dir.clone(),
        config.store.clone(),
        status.clone(),
        stop_snapshots.clone(),
    ));
    let server = crate::server::start(engine.clone(), &config.server).await?;
    let http = match config.http {
        Some(addr) => {
            let tokens = config.server.tokens.clone();
            Some(crate::http::start(engine.clone(), tokens, addr, http_limits).await?)
        }
        None => None,
    };
    status.set_ready(true);
    Ok(Daemon {
        engine,
        server,
        recovery: report,
        status,
        admin,
        http,
        data_dir,
        settings: config.store.clone(),
        snapshots,
        stop_snapshots,
        lock,
    })
}

/// Raises the descriptor limit, and lowers the HTTP ports' connection caps
/// if they would not fit under it beside what the daemon itself needs.
fn fit_descriptors(config: &ValidConfig) -> (crate::http::HttpLimits, crate::http::HttpLimits) {
    let (mut http, mut admin) = (config.http_limits.clone(), config.admin_limits.clone());
    let Some(limit) = crate::descriptors::raise_to_hard_limit() else {
        tracing::warn!("file descriptors: the limit could not be read");
        return (http, admin);
    };
    let asked = (http.max_connections, admin.max_connections);
    if crate::descriptors::fit_connection_caps(
        limit,
        config.engine.routers,
        &mut [&mut http, &mut admin],
    ) {
        tracing::warn!(
            "file descriptors: the limit is {limit}; http.max_connections lowered from {} to {} and admin.max_connections from {} to {}, so that clients cannot take the descriptors the journal and snapshots need (raise LimitNOFILE or ulimit -n to keep them)",
            asked.0,
            http.max_connections,
            asked.1,
            admin.max_connections
        );
    } else {
        tracing::info!("file descriptors: up to {limit}");
    }
    (http, admin)
}

/// Recovers the config's data directory and starts the engine on it:
/// repairs what replay found out of step, releases holds that expired
/// while down, and loads the config's stock into a new directory. The
/// engine is ready for orders when this returns.
pub async fn recover(config: &ValidConfig, clock: Arc<dyn Clock>) -> Result<Recovery, DaemonError> {
    let lock = store::lock::lock(&config.server.data_dir, store::Access::Write)?;
    recover_locked(config, clock, lock).await
}

/// [`recover`] on a directory whose lock the caller already holds.
async fn recover_locked(
    config: &ValidConfig,
    clock: Arc<dyn Clock>,
    lock: store::DirLock,
) -> Result<Recovery, DaemonError> {
    let data_dir = config.server.data_dir.clone();
    let network = Arc::new(config.network.clone());
    // Before recovery writes anything: a disk that is still full says so.
    crate::journal::check_free_space(&store::journal_dir(&data_dir), config.store.segment_bytes)
        .map_err(StoreError::from)?;
    let recovered = {
        let (settings, engine, network) =
            (config.store.clone(), config.engine.clone(), network.clone());
        let now_ms = clock.now_ms();
        tokio::task::spawn_blocking(move || store::open(lock, &settings, &engine, &network, now_ms))
            .await
            .map_err(|e| DaemonError::RecoveryPanicked(e.to_string()))??
    };
    let report = recovered.report;
    tracing::info!(
        "recovered {} in {} ms: {} snapshots (oldest at LSN {}), {} journal records replayed, {} orders, next LSN {}",
        data_dir.display(),
        report.elapsed_ms,
        report.snapshots_loaded,
        report.snapshot_lsn_min,
        report.records_replayed,
        report.orders,
        report.next_lsn
    );
    let engine = Engine::start_with(
        &config.engine,
        recovered.network,
        recovered.state,
        recovered.sequencer,
        clock,
    )
    .await?;
    if !recovered.bumps.is_empty() || !recovered.orphans.is_empty() {
        tracing::warn!(
            "recovery: {} bumped allocations to route again, {} reservations without an open order to release",
            recovered.bumps.len(),
            recovered.orphans.len()
        );
    }
    engine.repair(recovered.bumps, recovered.orphans).await?;
    let expired = engine.tick().await;
    if expired > 0 {
        tracing::info!("released {expired} holds that expired while the daemon was down");
    }
    if recovered.fresh {
        engine
            .load_stock(&config.stock)
            .await
            .map_err(DaemonError::Stock)?;
    }
    Ok(Recovery {
        engine,
        report,
        lock: recovered.lock,
    })
}

/// Snapshots every actor and, unless `settings.keep_segments`, deletes the
/// journal segments all have passed. Returns the lowest snapshot LSN.
pub async fn snapshot(
    engine: &Engine,
    data_dir: PathBuf,
    settings: &StoreSettings,
    status: &Status,
) -> Result<u64, DaemonError> {
    let started = Instant::now();
    metrics::counter!(crate::telemetry::SNAPSHOTS_STARTED_TOTAL).increment(1);
    let done = store::snapshot(engine, &data_dir, settings.keep_segments).await?;
    status.snapshot_written(crate::admin::unix_ms());
    tracing::info!(
        "snapshot at LSN {}: imaged in {} ms, written in {} ms",
        done.lsn,
        done.imaged.as_millis(),
        started.elapsed().as_millis()
    );
    Ok(done.lsn)
}

/// Snapshots whenever one is due (`store::SnapshotDue`) until `stop`.
async fn snapshot_loop(
    engine: Engine,
    data_dir: PathBuf,
    settings: StoreSettings,
    status: Arc<Status>,
    stop: Arc<tokio::sync::Notify>,
) {
    let Some(stats) = engine.sequencer().journal().map(|j| j.stats.clone()) else {
        return;
    };
    let mut due = store::SnapshotDue::new(stats, &settings);
    // A stop is only seen between snapshots: one under way finishes (its
    // writes, renames and segment deletion are not to be cut off half-way,
    // or overtaken by the final snapshot).
    while due.wait(&stop).await {
        if let Err(e) = snapshot(&engine, data_dir.clone(), &settings, &status).await {
            // The disk under the data directory failed (or the engine
            // did, which raised the fault already): stop saying yes.
            if let Some(journal) = engine.sequencer().journal() {
                journal.fail(crate::journal::JournalError::Snapshot(e.to_string()));
            }
            return;
        }
        due.taken();
    }
}

impl Daemon {
    /// Stops accepting, answers what was accepted, writes a final
    /// snapshot (so the next start replays nothing) and stops the engine.
    pub async fn shutdown(self) -> Result<(), DaemonError> {
        self.status.set_ready(false);
        self.stop_snapshots.notify_one();
        // Nothing else will wait for the workers: a snapshot under way and
        // the final one image at full speed.
        self.engine.hurry_snapshots();
        if let Some(http) = self.http {
            http.shutdown().await;
        }
        let drained = self.server.shutdown().await;
        if drained.complete {
            tracing::info!(
                "every accepted request answered in {} ms",
                drained.elapsed_ms
            );
        } else {
            tracing::warn!(
                "answers still unsent after {} ms (clients not reading); closing anyway",
                drained.elapsed_ms
            );
        }
        // The demand of the last rejections goes to the journal.
        self.engine.flush_demand().await;
        // A periodic snapshot under way ends first.
        let _ = self.snapshots.await;
        // A failed actor's state is gone, and failed storage takes no more
        // writes: the journal already holds every answered change.
        let result = match self.engine.health().failure() {
            Some(failure) => Err(DaemonError::EngineFailed(failure)),
            None => snapshot(
                &self.engine,
                self.data_dir.clone(),
                &self.settings,
                &self.status,
            )
            .await
            .map(|_| ()),
        };
        self.engine.shutdown();
        if let Some(admin) = self.admin {
            admin.shutdown().await;
        }
        drop(self.lock);
        result.map(|_| ())
    }

    /// How long a daemon whose storage failed keeps answering before it
    /// stops (`[journal] fault_linger_ms`); an actor's failure stops it at
    /// once, since nothing is gained by waiting.
    pub fn fault_linger_ms(&self) -> u64 {
        let storage = self
            .engine
            .sequencer()
            .journal()
            .is_some_and(|j| j.has_failed());
        if storage {
            self.settings.fault_linger_ms
        } else {
            0
        }
    }

    /// Reads the config file again and routes by its policies from now on.
    pub async fn reload_policy(&self) -> Result<crate::admin::Reloaded, crate::admin::ReloadError> {
        self.status.reload_policy().await
    }

    /// What group commit did since start: commits, records per commit,
    /// fsyncs and their mean time.
    pub fn journal_summary(&self) -> Option<String> {
        let stats = &self.engine.sequencer().journal()?.stats;
        let commits = stats.commits.load(Ordering::Relaxed);
        let records = stats.records.load(Ordering::Relaxed);
        let fsync_us = stats.fsync_us_total.load(Ordering::Relaxed);
        let fsyncs = stats.fsyncs.load(Ordering::Relaxed);
        Some(format!(
            "journal: {records} records in {commits} commits ({:.1} records per commit, largest {}), {fsyncs} fsyncs of {:.0} us each",
            records as f64 / commits.max(1) as f64,
            stats.largest_commit.load(Ordering::Relaxed),
            fsync_us as f64 / fsyncs.max(1) as f64
        ))
    }
}
