//! A data directory of format 2 (journal records without a header
//! checksum) opened by this build: upgraded in place at its first start,
//! with every order and stock count, and left alone by the next.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use common::{channel, config, order, stock, TempDir};
use omniroute::config::ValidConfig;
use omniroute::core::router::OrderRef;
use omniroute::engine::{Engine, ManualClock, StockUpdate};
use omniroute::journal::{record, record_v2};
use omniroute::store::{self, journal_dir};

const T0_MS: u64 = 1_800_000_000_000;
/// Orders before the snapshot, and after it (enough to fill several
/// segments of the smallest size).
const ORDERS_BEFORE: usize = 1500;
const ORDERS_AFTER: usize = 6000;
/// Orders per engine call.
const BATCH: usize = 500;

fn fixture() -> ValidConfig {
    let mut config = config(&format!(
        "{}{}",
        channel("web", &["nearest"]),
        stock(&[
            ("SKU-1", "WH-N", 50),
            ("SKU-1", "WH-S", 50),
            ("SKU-2", "ST-1", 20),
            ("SKU-3", "WH-B", 5),
        ])
    ));
    config.store.segment_bytes = omniroute::config::MIN_SEGMENT_BYTES;
    config.deepen_stock(100_000);
    config
}

/// Recovers `dir` and starts the engine on it, as the daemon does
/// (`store::open` under it).
async fn open(dir: &Path, config: &ValidConfig, clock: Arc<ManualClock>) -> Engine {
    let mut config = config.clone();
    config.server.data_dir = dir.to_path_buf();
    match omniroute::daemon::recover(&config, clock).await {
        Ok(recovered) => recovered.engine,
        Err(e) => panic!("{} does not open: {e}", dir.display()),
    }
}

fn key(id: &str) -> OrderRef {
    OrderRef::Key {
        channel: "web".into(),
        client_order_id: id.into(),
    }
}

/// Submits `count` orders named `prefix-i`, in batches.
async fn submit(engine: &Engine, prefix: &str, count: usize) -> Vec<String> {
    let ids: Vec<String> = (0..count).map(|i| format!("{prefix}-{i}")).collect();
    for chunk in ids.chunks(BATCH) {
        let orders = chunk
            .iter()
            .enumerate()
            .map(|(i, id)| order("web", id, &[("SKU-1", 1 + (i % 2) as u32), ("SKU-2", 1)]))
            .collect();
        let decisions = engine.submit_batch(orders).await.unwrap();
        assert!(
            decisions.iter().all(|d| d.is_routed()),
            "the stock suffices"
        );
    }
    ids
}

/// The bytes of every file the directory's state is in: names, journal
/// segments, snapshots.
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    files.insert(
        "names.toml".into(),
        std::fs::read(dir.join("names.toml")).unwrap(),
    );
    for segment in common::journal_segments(&journal_dir(dir)) {
        let name = segment.file_name().unwrap().to_string_lossy().into_owned();
        files.insert(format!("journal/{name}"), std::fs::read(&segment).unwrap());
    }
    for entry in std::fs::read_dir(store::snapshot_dir(dir)).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        files.insert(format!("snapshots/{name}"), std::fs::read(&path).unwrap());
    }
    files
}

/// Writes the first bytes of a format-2 record after the last record of
/// the last segment: a write the crash cut short, never answered.
fn tear_last_segment_in_format_2(dir: &Path) {
    let last = common::journal_segments(&journal_dir(dir)).pop().unwrap();
    let bytes = std::fs::read(&last).unwrap();
    let scan = record_v2::scan(&bytes, None);
    assert_eq!(scan.end, record::End::Clean);
    let end = scan.records.last().unwrap();
    let mut torn = Vec::new();
    record_v2::encode(1, end.lsn + 1, &[0xAB; 300], &mut torn);
    torn.truncate(record_v2::RECORD_PREFIX_BYTES + record_v2::MIN_RECORD_BODY_BYTES + 40);
    let file = std::fs::OpenOptions::new().write(true).open(&last).unwrap();
    file.write_all_at(&torn, end.payload.end as u64).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_format_2_directory_opens_whole_as_format_3_and_a_second_open_changes_nothing() {
    // Proves a format-2 directory (snapshots, several journal segments after them, a torn
    // last record) opens through the daemon's recovery with every order and stock count as
    // they were, states format 3 after with every segment checked in format 3, and that a
    // second open changes no file and no state.
    let dir = TempDir::new("upgrade-format-2");
    let config = fixture();
    let clock = Arc::new(ManualClock::new(T0_MS));
    let engine = open(&dir.0, &config, clock.clone()).await;
    let mut ids = submit(&engine, "a", ORDERS_BEFORE).await;
    store::snapshot(&engine, &dir.0, false).await.unwrap();
    ids.extend(submit(&engine, "b", ORDERS_AFTER).await);
    engine.cancel(key("a-7")).await.unwrap();
    engine.confirm(key("b-9")).await.unwrap();
    engine
        .update_stock(&[StockUpdate::Set {
            sku: "SKU-3".into(),
            node: "WH-B".into(),
            on_hand: 9,
            safety_stock: None,
        }])
        .await
        .unwrap();
    let live = common::state_of(&engine).await;
    engine.shutdown();
    let segments = common::journal_segments(&journal_dir(&dir.0)).len();
    assert!(
        segments >= 3,
        "the journal fills several segments ({segments})"
    );

    common::downgrade_to_format_2(&dir.0);
    tear_last_segment_in_format_2(&dir.0);
    assert_eq!(common::format_version(&dir.0), 2);

    let engine = open(&dir.0, &config, clock.clone()).await;
    engine.check_invariants().await.unwrap();
    let upgraded = common::state_of(&engine).await;
    for id in &ids {
        assert!(engine.get(key(id)).await.is_ok(), "order {id} is gone");
    }
    engine.shutdown();
    assert!(
        upgraded.0 == live.0,
        "the stock or a node differs after the upgrade"
    );
    assert!(upgraded.1 == live.1, "the books differ after the upgrade");
    assert_eq!(common::format_version(&dir.0), 3);
    for segment in common::journal_segments(&journal_dir(&dir.0)) {
        let bytes = std::fs::read(&segment).unwrap();
        let header = omniroute::journal::segment_header::check(&bytes);
        assert!(header.is_ok(), "{}: {header:?}", segment.display());
        let scan = omniroute::journal::scan_segment(&bytes, None);
        // Sealed: the writer went on from an upgraded segment (it has no
        // room prepared past its records) at its first commit.
        assert!(
            matches!(scan.end, record::End::Clean | record::End::Sealed { .. }),
            "{}: {:?}",
            segment.display(),
            scan.end
        );
    }

    // Imaging the state (above) journals a marker per actor: the files are
    // compared over an open that does nothing but open.
    let before = files(&dir.0);
    open(&dir.0, &config, clock.clone()).await.shutdown();
    let after = files(&dir.0);
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>()
    );
    for (name, bytes) in &before {
        assert!(after[name] == *bytes, "the second open changed {name}");
    }
    let engine = open(&dir.0, &config, clock).await;
    let again = common::state_of(&engine).await;
    engine.shutdown();
    assert!(
        again.0 == live.0 && again.1 == live.1,
        "the second open differs"
    );
}
