//! A SIGKILL of the real daemon while a snapshot is being written: the
//! partial image on disk is never loaded, the restart starts from the
//! previous complete snapshots and replays the journal after them, and
//! every answered order is there as answered.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::daemon::{sample, web_order, Daemon};
use common::TempDir;
use omniroute_client::{Client, ClientError};
use omniroute_protocol::{order_states, Decision, OrderKey};

/// Sample SKUs: enough stock cells (about 20 per SKU) that writing the
/// shards' images takes long enough to be caught half-way.
const SKUS: usize = 100_000;
/// Journal records between two snapshots: one begins soon after each start.
const SNAPSHOT_EVERY_RECORDS: u64 = 300;
/// Clients submitting orders meanwhile.
const WORKERS: usize = 4;
/// How long the test waits for a snapshot to be caught under way.
const CATCH_WITHIN_S: u64 = 60;
const WEB: &str = "dev-web-token";

/// The embedded config with a large sample stock, no time trigger, and a
/// snapshot every `SNAPSHOT_EVERY_RECORDS` records.
fn write_config(dir: &Path) -> PathBuf {
    common::embedded_config_with(
        dir,
        "big.toml",
        &[
            ("skus = 10000", format!("skus = {SKUS}")),
            (
                "snapshot_interval_ms = 60000",
                "snapshot_interval_ms = 0".into(),
            ),
            (
                "snapshot_every_records = 250000",
                format!("snapshot_every_records = {SNAPSHOT_EVERY_RECORDS}"),
            ),
        ],
    )
}

fn key(id: &str) -> OrderKey {
    OrderKey {
        channel: "web".into(),
        client_order_id: id.into(),
    }
}

/// Answered orders: where each was placed, (sku, node, units).
type Answered = Arc<Mutex<HashMap<String, Vec<(String, String, u32)>>>>;

/// Submits one-line orders, ids `{prefix}-{n}`, until the daemon is
/// killed, keeping those routed and answered.
async fn worker(client: Client, prefix: String, answered: Answered, killed: Killed) {
    let spread = prefix.bytes().map(usize::from).sum::<usize>();
    for i in 0.. {
        let id = format!("{prefix}-{i}");
        let sku = format!("SKU-{}", 1 + (spread * 7919 + i * 31) % 1000);
        let order = web_order(id.clone(), vec![(sku, 1)]);
        let mut killed = killed.clone();
        let decision = tokio::select! {
            decision = client.submit(order) => decision,
            _ = killed.wait_for(|k| *k) => return,
        };
        match decision {
            Ok(Decision::Routed { allocations, .. }) => {
                let placed = allocations
                    .into_iter()
                    .map(|a| (a.sku, a.node, a.qty))
                    .collect();
                answered.lock().unwrap().insert(id, placed);
            }
            Ok(Decision::Rejected { .. }) => {}
            Err(ClientError::Server { code, message }) => panic!("submit {id}: {code} {message}"),
            Err(_) => return,
        }
    }
}

/// Set once the daemon is killed: a request still waiting is lost.
type Killed = tokio::sync::watch::Receiver<bool>;

/// The snapshot set's complete files, each with its LSN.
fn complete_files(dir: &Path) -> HashMap<String, u64> {
    let set = omniroute::store::snapshot_dir(dir);
    let mut complete = HashMap::new();
    for entry in std::fs::read_dir(&set).expect("the snapshot set") {
        let path = entry.expect("an entry").path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.ends_with(".snap") {
            let bytes = std::fs::read(&path).expect("a snapshot file");
            let (lsn, _) = omniroute::store::parse_snapshot(&bytes)
                .unwrap_or_else(|e| panic!("{name} is complete: {e}"));
            complete.insert(name, lsn);
        }
    }
    complete
}

/// The temporary files in the snapshot set: images being written.
fn partial_files(dir: &Path) -> Vec<String> {
    let set = omniroute::store::snapshot_dir(dir);
    std::fs::read_dir(&set)
        .expect("the snapshot set")
        .map(|entry| entry.expect("an entry").file_name())
        .map(|name| name.to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".tmp"))
        .collect()
}

/// The files of `complete` that recovery loads: all but the snapshots of
/// the spare node slots beyond the config's nodes.
fn loaded_files(complete: &HashMap<String, u64>) -> HashMap<String, u64> {
    let nodes = omniroute::config::Config::default_config()
        .validate()
        .expect("the embedded config")
        .network
        .nodes
        .len();
    complete
        .iter()
        .filter(|(name, _)| {
            let node = name
                .strip_prefix("node-")
                .and_then(|rest| rest.strip_suffix(".snap"));
            node.is_none_or(|n| n.parse::<usize>().expect("a node number") < nodes)
        })
        .map(|(name, lsn)| (name.clone(), *lsn))
        .collect()
}

/// Waits until a snapshot is under way (/metrics: begun, not written) and
/// an image whose file name starts with `prefix` is on disk half-written,
/// then kills the daemon. Returns the temporary files the kill left.
async fn kill_while_writing(daemon: &mut Daemon, dir: &Path, prefix: &str) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(CATCH_WITHIN_S);
    let caught = |partial: &[String]| partial.iter().any(|name| name.starts_with(prefix));
    loop {
        assert!(
            Instant::now() < deadline,
            "no {prefix} image caught half-written within {CATCH_WITHIN_S} s"
        );
        let page = daemon.metrics().await;
        let under_way = sample(&page, "omniroute_snapshots_started_total")
            > sample(&page, "omniroute_snapshots_total");
        if under_way && caught(&partial_files(dir)) {
            daemon.child.start_kill().expect("SIGKILL");
            daemon.child.wait().await.expect("the daemon reaped");
            let partial = partial_files(dir);
            assert!(
                caught(&partial),
                "the {prefix} image was put in place between the look and the kill"
            );
            return partial;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Reads every answered order back and checks it is as answered.
async fn check_answered(daemon: &Daemon, answered: &HashMap<String, Vec<(String, String, u32)>>) {
    let client = daemon.client(WEB).await;
    for (id, placed) in answered {
        let view = client
            .get_order(key(id))
            .await
            .unwrap_or_else(|e| panic!("answered order {id} is gone: {e}"));
        assert_eq!(view.state, order_states::HELD, "order {id}");
        let mut found: Vec<(String, String, u32)> = view
            .allocations
            .iter()
            .map(|a| (a.sku.clone(), a.node.clone(), a.open))
            .collect();
        let mut placed = placed.clone();
        found.sort();
        placed.sort();
        assert_eq!(found, placed, "allocation of answered order {id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_while_imaging_leaves_the_previous_snapshots_in_use() {
    // Proves that SIGKILL while a snapshot's images are half-written (a router's book while
    // the actors image; a shard's image once they have, some actors' new files in place)
    // leaves each actor's last complete snapshot in use: the restart loads those (never a
    // partial file), replays the journal after them, and every answered order is there.
    let dir = TempDir::new("snapshot-crash");
    let config = write_config(&dir.0);
    // A clean stop writes the complete set the first kill falls back to.
    let mut first = Daemon::start(&dir.0, Some(&config), "127.0.0.1:0").await;
    assert!(first.terminate().await.success());
    let mut daemon = Daemon::start(&dir.0, Some(&config), "127.0.0.1:0").await;
    let previous = daemon.recovery().await;
    assert_eq!(
        previous.replayed, 0,
        "the clean stop snapshotted everything"
    );
    assert!(partial_files(&dir.0).is_empty());
    assert_eq!(
        loaded_files(&complete_files(&dir.0)).len(),
        previous.snapshots
    );
    let mut answered = HashMap::new();
    for (round, prefix) in ["router-", "shard-"].into_iter().enumerate() {
        let answering: Answered = Arc::default();
        let (kill, killed) = tokio::sync::watch::channel(false);
        let mut workers = Vec::new();
        for w in 0..WORKERS {
            let client = daemon.client(WEB).await;
            let id = format!("sc-{round}-{w}");
            workers.push(tokio::spawn(worker(
                client,
                id,
                answering.clone(),
                killed.clone(),
            )));
        }
        let partial = kill_while_writing(&mut daemon, &dir.0, prefix).await;
        let _ = kill.send(true);
        for worker in workers {
            worker.await.expect("a worker");
        }
        let answering = std::mem::take(&mut *answering.lock().unwrap());
        assert!(!answering.is_empty(), "round {round}: no order answered");
        answered.extend(answering);
        let complete = complete_files(&dir.0);
        for name in &partial {
            let previous = name.replace(".tmp", ".snap");
            assert!(
                complete.contains_key(&previous),
                "{name} is half-written and {previous} is not there"
            );
        }
        let loaded = loaded_files(&complete);
        let lsns = (
            loaded.values().copied().min().expect("snapshots"),
            loaded.values().copied().max().expect("snapshots"),
        );

        daemon = Daemon::start(&dir.0, Some(&config), "127.0.0.1:0").await;
        let recovery = daemon.recovery().await;
        assert_eq!(
            (recovery.snapshots, recovery.oldest_lsn),
            (loaded.len(), lsns.0),
            "round {round}: the restart loads the complete snapshot files ({loaded:?}), not {partial:?}"
        );
        assert!(recovery.replayed > 0, "round {round}: no journal replayed");
        check_answered(&daemon, &answered).await;
        println!(
            "round {round}: killed with {partial:?} half-written, the complete files at LSNs {lsns:?}; {recovery:?}; {} answered orders checked",
            answered.len()
        );
    }
    // The next snapshot writes over what the kills left.
    assert!(daemon.terminate().await.success());
    let partial = partial_files(&dir.0);
    assert!(partial.is_empty(), "left after a clean stop: {partial:?}");
}
