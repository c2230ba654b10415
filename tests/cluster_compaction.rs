//! Three replicas of the real daemon that snapshot often and compact
//! their logs (the leader from its engine, the followers from their apply
//! threads): restarts start from the snapshot set, not the log's first
//! entry, and nothing answered is lost or sold twice.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::cluster::Cluster;
use common::stock;
use omniroute_protocol::Decision;

/// Units of SKU-1: fewer than the orders for it.
const STOCK: u32 = 80;

fn order(i: usize) -> omniroute_protocol::Order {
    omniroute_client::order("web", &format!("o-{i}"), 50.0, 10.0, &[("SKU-1", 1)])
}

/// The first LSN of each journal segment of a replica's data directory.
fn segments(data: &Path) -> Vec<u64> {
    let mut firsts: Vec<u64> = std::fs::read_dir(data.join("journal"))
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.strip_suffix(".wal")?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    firsts.sort_unstable();
    firsts
}

/// Waits until each replica's log has been compacted: its first journal
/// segment no longer starts at LSN 1.
async fn wait_compacted(cluster: &Cluster, replicas: &[u64], timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let firsts: Vec<Vec<u64>> = (replicas.iter())
            .map(|id| segments(&cluster.dir.0.join(format!("replica-{id}"))))
            .collect();
        if firsts.iter().all(|f| f.first().is_some_and(|&lsn| lsn > 1)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the journals of {replicas:?} were not compacted: segments {firsts:?}\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What a replica logs when it starts from its snapshot set.
const STARTED_FROM_SET: &str = "replica apply: starting from the snapshot set at entry";

/// Waits up to 20 s for replica `id`'s log to hold `line`.
async fn wait_log(cluster: &Cluster, id: u64, line: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !(std::fs::read_to_string(cluster.log_path(id)).unwrap_or_default()).contains(line) {
        assert!(
            Instant::now() < deadline,
            "replica {id} never logged {line:?}:\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Submits 30 new orders, keeping each answer; the replica that answered
/// the last.
async fn submit_batch(
    cluster: &Cluster,
    answered: &mut BTreeMap<usize, Decision>,
    next: &mut usize,
) -> u64 {
    let mut by = 0;
    for _ in 0..30 {
        let (decision, from) = cluster.submit(&order(*next), Duration::from_secs(20)).await;
        answered.insert(*next, decision);
        by = from;
        *next += 1;
    }
    by
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_compact_their_logs_and_restart_from_their_snapshots() {
    // Proves that a leader and followers which snapshot every few records remove the journal
    // segments their snapshot holds, that a follower SIGKILLed and restarted starts from its
    // snapshot set and catches up, that a compacted follower then leads when the leader is
    // SIGKILLed and the old leader restarts from the set its engine wrote, and that across it
    // all every answer is given again on resubmission, no unit is sold twice, and every
    // replica's snapshot and log make the same state.
    let stock_text = format!(
        "{}[sample_stock]\nskus = 12000\nsku_prefix = \"S-\"\n",
        stock(&[("SKU-1", "WH-N", STOCK / 2), ("SKU-1", "WH-S", STOCK / 2)])
    );
    let tables = "[journal]\nsegment_bytes = 1048576\nsnapshot_every_records = 20\n";
    let mut cluster = Cluster::start_tuned(
        "cluster-compaction",
        &stock_text,
        tables,
        "log_hold_entries = 0\n",
    )
    .await;
    let mut answered: BTreeMap<usize, Decision> = BTreeMap::new();
    let mut next = 0;
    let leader = submit_batch(&cluster, &mut answered, &mut next).await;
    let followers: Vec<u64> = [1, 2, 3].into_iter().filter(|&id| id != leader).collect();
    wait_compacted(&cluster, &[1, 2, 3], Duration::from_secs(60)).await;

    cluster.kill(followers[0]).await;
    submit_batch(&cluster, &mut answered, &mut next).await;
    cluster.start_replica(followers[0]).await;
    cluster.wait_caught_up(Duration::from_secs(30)).await;
    wait_log(&cluster, followers[0], STARTED_FROM_SET).await;

    // The leader's compaction came from its engine's snapshots.
    wait_log(
        &cluster,
        leader,
        "leader_snapshots: replica snapshot at entry",
    )
    .await;
    cluster.kill(leader).await;
    let new_leader = submit_batch(&cluster, &mut answered, &mut next).await;
    assert_ne!(new_leader, leader, "a killed replica answered");
    cluster.start_replica(leader).await;
    // The set its engine wrote while it led.
    wait_log(&cluster, leader, STARTED_FROM_SET).await;
    let routed = cluster.resubmit_all(&answered, order).await;
    assert_eq!(routed, STOCK, "every unit sold once, none twice");
    cluster.wait_caught_up(Duration::from_secs(30)).await;
    let (_, digests) = cluster.stop_and_digest().await;
    assert!(
        digests.iter().all(|d| *d == digests[0]),
        "every replica's snapshot and committed log make the same state: {digests:x?}"
    );
}

/// What a follower logs when it installs a snapshot from its leader.
const INSTALLED: &str = "installed the leader's snapshot at entry";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_behind_the_leaders_log_is_sent_its_snapshot_and_catches_up() {
    // Proves that a follower SIGKILLed while the leader compacts past everything it holds
    // (no entries held back for it) is sent the leader's snapshot set when it restarts,
    // installs it in place of its state and log, and catches up; that it then starts from
    // the installed set after another SIGKILL; and that across it all, with the leader killed
    // too, every answer is given again, no unit is sold twice, and every replica's snapshot
    // and log make the same state.
    let stock_text = format!(
        "{}[sample_stock]\nskus = 12000\nsku_prefix = \"S-\"\n",
        stock(&[("SKU-1", "WH-N", STOCK / 2), ("SKU-1", "WH-S", STOCK / 2)])
    );
    let tables = "[journal]\nsegment_bytes = 1048576\nsnapshot_every_records = 20\n";
    let mut cluster = Cluster::start_tuned(
        "cluster-snapshot-send",
        &stock_text,
        tables,
        "log_hold_entries = 0\nlaggard_hold_entries = 0\n",
    )
    .await;
    let mut answered: BTreeMap<usize, Decision> = BTreeMap::new();
    let mut next = 0;
    let leader = submit_batch(&cluster, &mut answered, &mut next).await;
    let behind = [1, 2, 3].into_iter().find(|&id| id != leader).unwrap();
    cluster.wait_caught_up(Duration::from_secs(30)).await;

    cluster.kill(behind).await;
    for _ in 0..3 {
        submit_batch(&cluster, &mut answered, &mut next).await;
    }
    cluster.start_replica(behind).await;
    wait_log(&cluster, behind, INSTALLED).await;
    wait_log(&cluster, leader, "snapshot delivered to replica").await;
    cluster.wait_caught_up(Duration::from_secs(30)).await;
    submit_batch(&cluster, &mut answered, &mut next).await;

    // Restarted, it starts from the set it installed (or a later one of its own).
    cluster.kill(behind).await;
    cluster.start_replica(behind).await;
    cluster.wait_caught_up(Duration::from_secs(30)).await;
    cluster.kill(leader).await;
    let new_leader = submit_batch(&cluster, &mut answered, &mut next).await;
    assert_ne!(new_leader, leader, "a killed replica answered");
    cluster.start_replica(leader).await;
    let routed = cluster.resubmit_all(&answered, order).await;
    assert_eq!(routed, STOCK, "every unit sold once, none twice");
    cluster.wait_caught_up(Duration::from_secs(30)).await;
    let (_, digests) = cluster.stop_and_digest().await;
    assert!(
        digests.iter().all(|d| *d == digests[0]),
        "every replica's snapshot and committed log make the same state: {digests:x?}"
    );
}
