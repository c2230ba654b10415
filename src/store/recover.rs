//! Opening a data directory is recovery, in named phases: names and
//! layout, each actor's snapshot, the journal replayed after each one's
//! LSN, retired config entries checked, and a relayout when the configured
//! shards or routers changed.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use rkyv::rancor;

use super::apply::{apply_record, Applied};
use super::chain::{prove_chain, Link};
use super::durable::map_file;
use super::error::SnapshotError;
use super::frame::{
    parse_snapshot, router_archives, FEED_SNAPSHOT, SNAPSHOT_HEADER_BYTES, SNAPSHOT_SUFFIX,
};
use super::reconcile::reconcile;
use super::relayout::relayout;
use super::snapshot::write_state_into;
use super::{
    journal_dir, layout, snapshot_dir, DirLock, Recovered, RecoveryReport, StoreError,
    StoreSettings,
};
use crate::core::book::router_of_order;
use crate::core::capacity::{LedgerImage, NodeLedger};
use crate::core::index::AvailabilityIndex;
use crate::core::network::Network;
use crate::core::order::OrderRecord;
use crate::core::router::{OrderRef, RouterCore};
use crate::core::status::{FeedImage, StatusFeed};
use crate::core::stock::{ShardImage, StockShard};
use crate::engine::sequencer::Sequencer;
use crate::engine::{EngineSettings, EngineState};
use crate::journal::{self, Journal};
use crate::schema::Names;

/// A snapshot read back: its LSN and its validated body.
pub(super) struct Loaded {
    lsn: u64,
    bytes: memmap2::Mmap,
    path: PathBuf,
}

impl Loaded {
    fn body(&self) -> &[u8] {
        &self.bytes[SNAPSHOT_HEADER_BYTES..]
    }

    fn damaged(&self, cause: impl Into<SnapshotError>) -> StoreError {
        StoreError::Snapshot {
            path: self.path.clone(),
            cause: cause.into(),
        }
    }
}

pub(super) fn load_snapshot(dir: &Path, name: &str) -> Result<Option<Loaded>, StoreError> {
    let path = snapshot_dir(dir).join(format!("{name}{SNAPSHOT_SUFFIX}"));
    if !path.exists() {
        return Ok(None);
    }
    let bytes = map_file(&path)?;
    let lsn = parse_snapshot(&bytes)
        .map_err(|cause| StoreError::Snapshot {
            path: path.clone(),
            cause,
        })?
        .0;
    Ok(Some(Loaded { lsn, bytes, path }))
}

/// Recovers the state in the data directory `lock` holds (created empty
/// if new). The lock comes first: a second daemon must not even replay.
/// Returns the state on `network` under the directory's ids (see
/// [`crate::schema`]), laid out for `settings`' shards and routers.
pub fn open(
    lock: DirLock,
    store: &StoreSettings,
    settings: &EngineSettings,
    network: &Arc<Network>,
    now_ms: u64,
) -> Result<Recovered, StoreError> {
    let started = Instant::now();
    let dir = &lock.dir().to_path_buf();
    let known = layout::read_names(dir)?;
    super::upgrade::upgrade(dir, known.as_ref())?;
    // A directory without names is new, or written by a tool under the
    // config's order (`bench-restart`): its nodes are the config's.
    let known_nodes = known
        .as_ref()
        .map_or(network.nodes.len(), |names| names.nodes.len());
    let (network, names) = network.with_names(&known.unwrap_or_else(Names::new));
    let network = Arc::new(network);
    layout::prepare_snapshot_sets(dir)?;
    let configured = settings.layout();
    let written = layout::read_layout(dir)?;
    let under = written.unwrap_or(configured);
    let replayed = replay_state(
        dir,
        &EngineSettings {
            shards: under.shards,
            routers: under.routers,
            ..settings.clone()
        },
        &network,
        known_nodes,
        now_ms,
    )?;
    let Replayed {
        mut state,
        mut report,
        fresh,
    } = replayed;
    check_retired(dir, &state, &network)?;
    // Each node known from here on has a snapshot to start from, so that a
    // missing one is damage (see `chain.rs`): written before its name, a
    // crash between leaves a file no start reads.
    if written.is_some() {
        let in_use = known_nodes..network.nodes.len();
        write_new_nodes(dir, &state, in_use, report.next_lsn - 1)?;
    }
    // Before any record can use a new id.
    layout::write_names(dir, &names)?;
    if written.is_none() {
        layout::write_layout(&snapshot_dir(dir), configured)?;
    } else if under != configured {
        state = relayout(state, settings, &network)?;
        let lsn = report.next_lsn.saturating_sub(1);
        layout::replace_snapshot_set(dir, |set| {
            write_state_into(set, &state, lsn)?;
            layout::write_layout(set, configured)
        })?;
        tracing::info!(
            "the data directory {} was laid out again from {} shards and {} routers to {} and {}",
            dir.display(),
            under.shards,
            under.routers,
            configured.shards,
            configured.routers
        );
    }
    let (bumps, orphans) = reconcile(&state);
    report.orders = state.routers.iter().map(|r| r.order_count()).sum();
    let journal = Journal::start(
        &journal_dir(dir),
        report.next_lsn,
        store.durability,
        store.segment_bytes,
    )?;
    report.elapsed_ms = started.elapsed().as_millis() as u64;
    Ok(Recovered {
        state,
        network,
        sequencer: Sequencer::Journal(journal),
        fresh,
        report,
        bumps,
        orphans,
        lock,
    })
}

/// Writes the snapshot of each node of `new` (new since the last start:
/// nothing journaled names them), labelled `lsn`. Only nodes in use: the
/// spare slots beyond them are no node's yet, and rewriting their files at
/// every start changed a directory that only was opened.
fn write_new_nodes(
    dir: &Path,
    state: &EngineState,
    new: std::ops::Range<usize>,
    lsn: u64,
) -> Result<(), StoreError> {
    let end = new.end.min(state.ledgers.len());
    let images = state.ledgers[new.start.min(end)..end]
        .iter()
        .map(|ledger| {
            let image = ledger.image();
            (lsn, crate::engine::Image::Node(image.node, image))
        })
        .collect::<Vec<_>>();
    if !images.is_empty() {
        super::snapshot::write_snapshot_files(dir, images)?;
    }
    Ok(())
}

/// The state replay rebuilt, before it is checked and laid out.
pub(super) struct Replayed {
    state: EngineState,
    report: RecoveryReport,
    /// Nothing was ever written in the directory.
    fresh: bool,
}

impl Applied {
    /// Each actor's place in the chain the journal must hold (a new node's
    /// has nothing in it; the feed's only once it was snapshotted).
    fn links(&self, dir: &Path) -> Vec<Link> {
        let mut names = vec![("catalog".to_string(), self.catalog)];
        names.extend(
            self.shards
                .iter()
                .enumerate()
                .map(|(s, &lsn)| (format!("shard-{s}"), lsn)),
        );
        names.extend(
            self.routers
                .iter()
                .enumerate()
                .map(|(r, &lsn)| (format!("router-{r}"), lsn)),
        );
        names.extend(
            self.nodes
                .iter()
                .enumerate()
                .map(|(n, &lsn)| (format!("node-{n}"), lsn)),
        );
        let set = snapshot_dir(dir);
        let mut links: Vec<Link> = names
            .into_iter()
            .filter(|(_, lsn)| *lsn != u64::MAX)
            .map(|(name, lsn)| {
                let present = set.join(format!("{name}{SNAPSHOT_SUFFIX}")).exists();
                Link {
                    lsn: present.then_some(lsn),
                    name,
                }
            })
            .collect();
        if set
            .join(format!("{FEED_SNAPSHOT}{SNAPSHOT_SUFFIX}"))
            .exists()
        {
            links.push(Link {
                name: FEED_SNAPSHOT.into(),
                lsn: Some(self.feed),
            });
        }
        links
    }
}

/// Loads each actor's snapshot and replays the journal after it, under
/// `settings`' layout (the one the files were written for). `known_nodes`:
/// the nodes the directory's names had before this start.
pub(super) fn replay_state(
    dir: &Path,
    settings: &EngineSettings,
    network: &Arc<Network>,
    known_nodes: usize,
    now_ms: u64,
) -> Result<Replayed, StoreError> {
    let mut report = RecoveryReport::default();
    let (mut state, applied) =
        load_set_into(dir, settings, network, known_nodes, now_ms, &mut report)?;
    report.snapshot_lsn_min = applied.oldest();
    let recovered = journal::recover(&journal_dir(dir), report.snapshot_lsn_min)?;
    prove_chain(dir, &applied.links(dir), &recovered)?;
    if let Some(torn) = &recovered.torn_tail {
        tracing::warn!(
            "journal {} ended in a torn record at byte {} ({} bytes erased): a write the crash interrupted, never acknowledged",
            torn.path.display(),
            torn.offset,
            torn.bytes
        );
    }
    let fresh =
        report.snapshots_loaded == 0 && recovered.records.is_empty() && recovered.next_lsn <= 1;
    let mut bumped = Vec::new();
    for record in &recovered.records {
        if apply_record(record, &mut state, &applied, &mut bumped)? {
            report.records_replayed += 1;
        }
    }
    // A shard's snapshot may be newer than the catalog's (the snapshots
    // are fuzzy, one per actor): the SKUs it had that the catalog did not
    // are interned by now.
    for shard in &mut state.shards {
        shard.publish_restored();
    }
    report.next_lsn = recovered.next_lsn;
    report.torn_tail = recovered.torn_tail;
    Ok(Replayed {
        state,
        report,
        fresh,
    })
}

/// A state of each actor's snapshot in the set in use (an empty state for
/// those without one), and the LSN each holds.
fn load_set_into(
    dir: &Path,
    settings: &EngineSettings,
    network: &Arc<Network>,
    known_nodes: usize,
    now_ms: u64,
    report: &mut RecoveryReport,
) -> Result<(EngineState, Applied), StoreError> {
    let mut state = EngineState::fresh(settings, network, now_ms)?;
    let mut applied = Applied {
        catalog: load_catalog(dir, &state.index, report)?,
        shards: load_shards(dir, &mut state, report)?,
        routers: load_routers(dir, &mut state, report)?,
        nodes: load_nodes(dir, &mut state, network, known_nodes, report)?,
        feed: u64::MAX,
    };
    applied.feed = match load_feed(dir, &mut state, report)? {
        Some(lsn) => lsn,
        None => applied.oldest(),
    };
    Ok((state, applied))
}

/// A replica's state of the snapshot set in use (every node of `network`
/// known), and the LSN each actor holds: the log after them applies to it
/// as recovery applies the journal (`apply::apply_payload`).
pub(crate) fn load_replica_set(
    dir: &Path,
    settings: &EngineSettings,
    network: &Arc<Network>,
    now_ms: u64,
) -> Result<(EngineState, Applied), StoreError> {
    let mut report = RecoveryReport::default();
    let known_nodes = network.nodes.len();
    load_set_into(dir, settings, network, known_nodes, now_ms, &mut report)
}

/// The SKU catalog's snapshot interned into `index` in its order; its LSN.
fn load_catalog(
    dir: &Path,
    index: &AvailabilityIndex,
    report: &mut RecoveryReport,
) -> Result<u64, StoreError> {
    let Some(loaded) = load_snapshot(dir, "catalog")? else {
        return Ok(0);
    };
    let names = rkyv::access::<rkyv::Archived<Vec<String>>, rancor::BoxedError>(loaded.body())
        .map_err(|e| loaded.damaged(e))?;
    for (id, name) in names.iter().enumerate() {
        let got = index.intern(name.as_str()).map_err(|e| loaded.damaged(e))?;
        if got as usize != id {
            return Err(loaded.damaged(SnapshotError::SkuMoved {
                name: name.to_string(),
                id,
                got,
            }));
        }
    }
    report.snapshots_loaded += 1;
    Ok(loaded.lsn)
}

/// Every shard's snapshot, validated and loaded on a thread each; their LSNs.
fn load_shards(
    dir: &Path,
    state: &mut EngineState,
    report: &mut RecoveryReport,
) -> Result<Vec<u64>, StoreError> {
    let shard_count = state.shards.len();
    let files = (0..shard_count)
        .map(|s| load_snapshot(dir, &format!("shard-{s}")))
        .collect::<Result<Vec<_>, _>>()?;
    let index = &state.index;
    let loaded: Vec<Result<Option<StockShard>, StoreError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = files
            .iter()
            .map(|file| {
                let index = index.clone();
                scope.spawn(move || -> Result<Option<StockShard>, StoreError> {
                    let Some(loaded) = file else { return Ok(None) };
                    let image = rkyv::access::<rkyv::Archived<ShardImage>, rancor::BoxedError>(
                        loaded.body(),
                    )
                    .map_err(|e| loaded.damaged(e))?;
                    StockShard::from_image(image, index)
                        .map(Some)
                        .map_err(|e| loaded.damaged(e))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("shard loader panicked"))
            .collect()
    });
    let mut lsns = vec![0u64; shard_count];
    for (s, (shard, file)) in loaded.into_iter().zip(&files).enumerate() {
        let (Some(shard), Some(file)) = (shard?, file) else {
            continue;
        };
        if shard.shard_id() as usize != s {
            return Err(file.damaged(SnapshotError::AnotherActors("shard")));
        }
        lsns[s] = file.lsn;
        state.shards[s] = shard;
        report.snapshots_loaded += 1;
    }
    Ok(lsns)
}

/// Every router's book, restored a validated order at a time on a thread
/// each; their LSNs.
fn load_routers(
    dir: &Path,
    state: &mut EngineState,
    report: &mut RecoveryReport,
) -> Result<Vec<u64>, StoreError> {
    let files = (0..state.routers.len())
        .map(|r| load_snapshot(dir, &format!("router-{r}")))
        .collect::<Result<Vec<_>, _>>()?;
    let restored: Vec<Result<(), StoreError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = state
            .routers
            .iter_mut()
            .zip(&files)
            .map(|(core, file)| {
                scope.spawn(move || -> Result<(), StoreError> {
                    let Some(loaded) = file else { return Ok(()) };
                    // One order at a time out of the validated archives: no
                    // second copy of the whole book on the heap.
                    let archives = router_archives(&loaded.bytes, loaded.body())
                        .map_err(|e| loaded.damaged(e))?;
                    core.reserve(archives.iter().map(|orders| orders.len()).sum());
                    for archived in archives.iter().flat_map(|orders| orders.iter()) {
                        let order = rkyv::deserialize::<OrderRecord, rancor::Error>(archived)
                            .map_err(|e| loaded.damaged(e))?;
                        core.restore(order).map_err(|e| loaded.damaged(e))?;
                    }
                    Ok(())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("router loader panicked"))
            .collect()
    });
    let mut lsns = vec![0u64; files.len()];
    for (r, result) in restored.into_iter().enumerate() {
        result?;
        if let Some(file) = &files[r] {
            lsns[r] = file.lsn;
            report.snapshots_loaded += 1;
        }
    }
    Ok(lsns)
}

/// Every known node's ledger; their LSNs. A node the names did not have
/// before this start has no snapshot and no record: nothing to replay for
/// it. Runs after the routers, whose records its events share ids with.
fn load_nodes(
    dir: &Path,
    state: &mut EngineState,
    network: &Network,
    known_nodes: usize,
    report: &mut RecoveryReport,
) -> Result<Vec<u64>, StoreError> {
    let mut lsns: Vec<u64> = (0..state.ledgers.len())
        .map(|n| if n < known_nodes { 0 } else { u64::MAX })
        .collect();
    for (n, node) in network.nodes.iter().enumerate().take(known_nodes) {
        let Some(loaded) = load_snapshot(dir, &format!("node-{n}"))? else {
            continue;
        };
        let mut image = rkyv::from_bytes::<LedgerImage, rancor::Error>(loaded.body())
            .map_err(|e| loaded.damaged(e))?;
        if image.node as usize != n {
            return Err(loaded.damaged(SnapshotError::AnotherActors("node")));
        }
        share_order_ids(&mut image, &state.routers);
        state.ledgers[n] = NodeLedger::from_image(image, node.daily_capacity, state.index.clone());
        lsns[n] = loaded.lsn;
        report.snapshots_loaded += 1;
    }
    Ok(lsns)
}

/// The channels' status logs, if they were snapshotted; their LSN.
fn load_feed(
    dir: &Path,
    state: &mut EngineState,
    report: &mut RecoveryReport,
) -> Result<Option<u64>, StoreError> {
    let Some(loaded) = load_snapshot(dir, FEED_SNAPSHOT)? else {
        return Ok(None);
    };
    let image = rkyv::from_bytes::<FeedImage, rancor::Error>(loaded.body())
        .map_err(|e| loaded.damaged(e))?;
    state.feed = StatusFeed::from_image(image);
    report.snapshots_loaded += 1;
    Ok(Some(loaded.lsn))
}

/// Shares each event's order id with its order's record, as the live
/// daemon does: a million events would otherwise each keep a copy.
fn share_order_ids(image: &mut LedgerImage, routers: &[RouterCore]) {
    for event in &mut image.events.events {
        let record = routers
            .get(router_of_order(event.order, routers.len()))
            .and_then(|r| r.get(&OrderRef::Id(event.order)).ok());
        if let Some(record) = record {
            if record.client_order_id == event.client_order_id {
                event.client_order_id = record.client_order_id.clone();
            }
        }
    }
}

/// Refuses a network that retired a node or channel with open work: its
/// orders would be stranded where no config can reach them.
pub(super) fn check_retired(
    dir: &Path,
    state: &EngineState,
    network: &Network,
) -> Result<(), StoreError> {
    let retired_nodes = network.nodes.iter().any(|n| n.retired);
    let retired_channels = network.channels.iter().any(|c| c.retired);
    if !retired_nodes && !retired_channels {
        return Ok(());
    }
    let mut on_hand = vec![0u64; network.nodes.len()];
    let mut allocations = vec![0u64; network.nodes.len()];
    let mut open_orders = vec![0u64; network.channels.len()];
    if retired_nodes {
        for (_, node, cell) in state.shards.iter().flat_map(|s| s.cells()) {
            on_hand[node as usize] += u64::from(cell.on_hand);
        }
    }
    for order in state.routers.iter().flat_map(|r| r.orders()) {
        if !order.state.is_open() {
            continue;
        }
        open_orders[order.channel as usize] += 1;
        for a in order.allocations.iter().filter(|a| a.open > 0) {
            allocations[a.node as usize] += 1;
        }
    }
    for (n, node) in network.nodes.iter().enumerate() {
        if node.retired && (on_hand[n] > 0 || allocations[n] > 0) {
            return Err(StoreError::Retired {
                dir: dir.to_path_buf(),
                what: format!("node {}", node.id),
                has: format!(
                    "{} open allocations and {} units on hand there",
                    allocations[n], on_hand[n]
                ),
                fix: "put it back in the config, set it offline (its open allocations re-route) and count its stock to 0, then remove it",
            });
        }
    }
    for (c, channel) in network.channels.iter().enumerate() {
        if channel.retired && open_orders[c] > 0 {
            return Err(StoreError::Retired {
                dir: dir.to_path_buf(),
                what: format!("channel {}", channel.name),
                has: format!("{} open orders of it", open_orders[c]),
                fix: "put it back in the config until they are shipped, cancelled or expired, then remove it",
            });
        }
    }
    Ok(())
}
