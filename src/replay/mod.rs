//! What-if replay: the order stream a journal recorded, routed again under
//! another policy, offline and in process, with the recorded outcome and the
//! what-if outcome side by side.
//!
//! The replay starts from the journal's first record (a fresh directory's
//! stock load), so it needs every segment: `journal.keep_segments = true`.
//! It applies what the outside world did, in LSN order: stock counts,
//! restocks from returns, nodes going on and offline, each recorded cancel
//! or expiry (which frees the what-if allocation of that order) and each
//! order that shipped in full (its what-if units leave stock). Each
//! journal record's new orders are placed together, as the router that
//! recorded them placed them, by the same core code (`place`).
//!
//! Two threads share the work. The reader reads, checks and validates the
//! records a batch ahead, counts the recorded side, interns new SKUs,
//! lists what each record makes the what-if world do (outside-world stock
//! and node ops, closes of orders seen before), and plans each new order's
//! first try against the what-if index as it is then, with a
//! [`PlanStamp`](crate::core::policy::PlanStamp). The placer applies those events in LSN order and places
//! the new orders, using a plan made ahead only while its stamp still holds
//! (else it plans again): the decisions are those of planning in line.
//! Records are read in place, never decoded whole.
//!
//! With `--threads 1` one thread does both in turn, a record at a time:
//! the same decisions and report, at about half the speed, leaving the
//! other core to a daemon on the same host.
//!
//! Not replayed: re-routes (node rejections, bumps), which depend on what
//! the nodes did with the recorded allocation. Capacity is counted as one
//! day for the whole journal.

mod placer;
mod reader;
mod report;
mod world;

use std::path::Path;
use std::time::Instant;

use self::placer::Placer;
use self::reader::{Batch, Reader, ReaderOutcome, SeenOrders};
use self::world::{OpenOrders, WhatIfWorld};
use crate::config::ValidConfig;
use crate::core::error::RestoreError;
use crate::core::index::CatalogFull;
use crate::core::model::{OrderId, SkuId};
use crate::core::network::{Channel, Network};
use crate::engine::sequencer::SharedSeen;
use crate::schema::txn::TxnError;
use crate::store;

pub use report::{OutcomeCounts, Report};

/// Threads a replay can use: one reads and plans ahead, one places.
pub const MAX_REPLAY_THREADS: usize = 2;

/// How a replay shares its work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Threads {
    /// One thread reads, plans and places, a record at a time.
    One,
    /// [`MAX_REPLAY_THREADS`]: one reads and plans ahead, the other places.
    Two,
}

impl Threads {
    pub fn count(self) -> usize {
        match self {
            Threads::One => 1,
            Threads::Two => MAX_REPLAY_THREADS,
        }
    }
}

/// Differences listed by example in the report.
pub const MAX_LISTED_DIFFERENCES: usize = 10;
/// The replay's clock: capacity is one day for the whole journal.
const REPLAY_NOW_MS: u64 = 0;
/// Shards of the what-if world, whatever the journal's count. Placement
/// decides the same with any count (a shard only groups the holds it is
/// sent), and one saves a hold request, its lists and its reservation map
/// per extra shard an order touches.
const WHAT_IF_SHARDS: u32 = 1;

/// One side of the comparison.
/// Why the replay cannot use one journal record.
#[derive(Debug, thiserror::Error)]
pub enum BadRecord {
    /// The payload is not a `Txn`.
    #[error(transparent)]
    Txn(#[from] TxnError),
    /// A recorded order or decision that cannot be read back.
    #[error(transparent)]
    Order(#[from] RestoreError),
    /// The what-if catalog is full.
    #[error(transparent)]
    CatalogFull(#[from] CatalogFull),
    /// A SKU the what-if interned under another id than the journal's.
    #[error("SKU {name:?} was id {id}, the replay gave {got}")]
    SkuMoved { name: String, id: SkuId, got: SkuId },
    /// An archived field that does not deserialize.
    #[error("an archived {what} does not deserialize: {cause}")]
    Undecodable {
        what: &'static str,
        #[source]
        cause: rkyv::rancor::Error,
    },
    /// An order whose ship-to is not a point on the globe.
    #[error("order {order}: ship-to ({lat}, {lon}) is not a point")]
    BadShipTo { order: OrderId, lat: f64, lon: f64 },
    /// A follow-up (cancel, expiry, shipment) of an order never placed.
    #[error("order {0}: a follow-up of an order the replay never placed")]
    NeverPlaced(OrderId),
    /// A placed order its own record does not hold.
    #[error("order {0}: not in its record")]
    NotInRecord(OrderId),
    /// A new order placed a second time.
    #[error("order {0}: placed twice")]
    PlacedTwice(OrderId),
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The journal cannot be read.
    #[error("{0}")]
    Journal(#[from] crate::journal::JournalError),
    /// The journal's first segments were deleted: no starting stock.
    #[error("the journal in {dir} starts at LSN {first_lsn}: older segments were deleted after a snapshot, so the starting stock is gone. Run the daemon with journal.keep_segments = true to keep a replayable history")]
    Incomplete { dir: String, first_lsn: u64 },
    /// There is nothing to replay.
    #[error("the journal in {0} has no records")]
    Empty(String),
    /// A record the replay cannot use.
    #[error("LSN {lsn}: {cause}")]
    Record {
        lsn: u64,
        #[source]
        cause: BadRecord,
    },
    /// A daemon writes the directory: its journal moves under the reader.
    #[error(transparent)]
    Lock(#[from] store::LockError),
    /// The data directory's names file cannot be read, or states a format
    /// this build does not read.
    #[error(transparent)]
    Store(#[from] store::StoreError),
}

/// Replays the journal of `data_dir` (recorded under `config`'s network)
/// with `what_if` policies for its channels.
pub fn replay(
    data_dir: &Path,
    config: &ValidConfig,
    what_if: Vec<Channel>,
    threads: Threads,
) -> Result<Report, ReplayError> {
    // Shared: readers may run side by side, but not beside the daemon.
    let _lock = store::lock::lock(data_dir, store::Access::Read)?;
    let recorded_network = &config.network;
    let world = WhatIfWorld::new(
        config,
        Network::new(
            recorded_network.nodes.clone(),
            recorded_network.markets.clone(),
            what_if,
        ),
    );
    let mut report = Report::default();
    // Timed from here: building the world (sizing the index) is not replay.
    let started = Instant::now();
    let dir = store::journal_dir(data_dir);
    let dir_name = dir.display().to_string();
    let mut placer = Placer {
        world: &world,
        open: OpenOrders::default(),
        report: &mut report,
    };
    let mut failed = None;
    let reader = Reader {
        network: &world.network,
        recorded_network,
        index: &world.index,
        seen: SeenOrders::default(),
        shared: SharedSeen::default(),
        recorded: OutcomeCounts::default(),
        failed: None,
        demand_missing: 0,
        format: store::journal_record_format(data_dir)?,
    };
    let read = match threads {
        Threads::One => read_in_line(reader, &mut placer, &dir, &mut failed),
        Threads::Two => read_ahead(reader, &mut placer, &dir, &mut failed),
    };
    if let Some(e) = failed {
        return Err(e);
    }
    let ReaderOutcome {
        summary,
        incomplete,
        failed,
        recorded,
        demand_missing,
    } = read;
    if let Some(e) = failed {
        return Err(e);
    }
    let summary = summary.map_err(|e| match incomplete {
        Some(first_lsn) => ReplayError::Incomplete {
            dir: dir_name.clone(),
            first_lsn,
        },
        None => e.into(),
    })?;
    if summary.records == 0 {
        return Err(ReplayError::Empty(dir_name));
    }
    report.recorded = recorded;
    report.demand_missing = demand_missing;
    report.recorded.name_nodes(recorded_network);
    report.what_if.name_nodes(&world.network);
    report.journal_records = summary.records;
    report.first_lsn = summary.first_lsn;
    report.torn_tail = summary.torn_tail;
    report.threads = threads.count();
    let elapsed = started.elapsed().as_secs_f64();
    report.elapsed_ms = elapsed * 1e3;
    report.orders_per_second = report.recorded.orders as f64 / elapsed.max(1e-9);
    Ok(report)
}

/// One thread: each record is placed as soon as it is read, so the plan
/// made for it is still fresh and nothing read ahead goes stale. A failure
/// to place goes to `failed`.
fn read_in_line(
    reader: Reader<'_>,
    placer: &mut Placer<'_>,
    dir: &Path,
    failed: &mut Option<ReplayError>,
) -> ReaderOutcome {
    reader.run(dir, 1, |mut batch| {
        if let Err(e) = placer.apply_batch(&mut batch) {
            *failed = Some(e);
            return None;
        }
        Some(batch.emptied())
    })
}

/// Two threads: the reader reads and plans a batch ahead on its own
/// thread while this one places. The batches are handed over whole and
/// come back to be refilled, so nothing is freed across threads (a first
/// reader thread, which sent each record decoded whole, was slower than
/// reading in line).
fn read_ahead(
    reader: Reader<'_>,
    placer: &mut Placer<'_>,
    dir: &Path,
    failed: &mut Option<ReplayError>,
) -> ReaderOutcome {
    let (full_tx, full_rx) = crossbeam_channel::bounded::<Batch>(READ_AHEAD_BATCHES);
    let (empty_tx, empty_rx) = crossbeam_channel::bounded::<Batch>(READ_AHEAD_BATCHES + 2);
    std::thread::scope(|scope| {
        let reader = std::thread::Builder::new()
            .name("replay-reader".into())
            // Moved in: the placer's loop ends when this sender drops.
            .spawn_scoped(scope, move || {
                reader.run(dir, READ_BATCH_RECORDS, move |batch| {
                    full_tx.send(batch).ok()?;
                    Some(empty_rx.try_recv().unwrap_or_default())
                })
            })
            .expect("spawn the replay's reader thread");
        for mut batch in full_rx {
            if let Err(e) = placer.apply_batch(&mut batch) {
                *failed = Some(e);
                // Dropping the queue stops the reader.
                break;
            }
            let _ = empty_tx.try_send(batch.emptied());
        }
        reader.join().expect("the replay's reader thread panicked")
    })
}

/// Records per batch the reader hands over: enough that the handoff is
/// rare, few enough that the plans made ahead are still fresh when placed.
const READ_BATCH_RECORDS: usize = 128;
/// Batches read ahead of placing; past this the reader waits.
const READ_AHEAD_BATCHES: usize = 2;
