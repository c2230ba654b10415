//! The Python client package against a three-replica cluster: its cluster
//! client, handed a follower's address first, follows `NotLeader` to the
//! leader (clients/python/tests/test_cluster.py, run by this test).

mod common;

use std::process::Output;
use std::time::Duration;

use common::cluster::Cluster;
use common::*;

/// How long the replicas may take to elect a leader that serves.
const ELECTION_TIMEOUT_S: u64 = 60;

/// The trust file for the cluster: the three replicas' client
/// certificates, one PEM after another, written as `cat` would.
fn trust_pem(cluster: &Cluster) -> std::path::PathBuf {
    let mut pem = Vec::new();
    for id in &cluster.ids {
        let cert = cluster.dir.0.join(format!("replica-{id}")).join("cert.pem");
        pem.extend(std::fs::read(&cert).expect("each replica wrote its cert.pem"));
    }
    let path = cluster.dir.0.join("trust.pem");
    std::fs::write(&path, pem).unwrap();
    path
}

/// Runs clients/python/tests/test_cluster.py alone, the package importable
/// from the source tree, with the cluster in `OMNIROUTE_*` variables.
async fn python(addrs: String, leader: String, ca: String) -> Output {
    let package = concat!(env!("CARGO_MANIFEST_DIR"), "/clients/python");
    let tests = concat!(env!("CARGO_MANIFEST_DIR"), "/clients/python/tests");
    let args = [
        "-m",
        "unittest",
        "discover",
        "-v",
        "-s",
        tests,
        "-p",
        "test_cluster.py",
    ];
    tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .args(args)
            .env("PYTHONPATH", package)
            .env("OMNIROUTE_CLUSTER_ADDRS", &addrs)
            .env("OMNIROUTE_CLUSTER_LEADER", &leader)
            .env("OMNIROUTE_CLUSTER_CA", &ca)
            .env("OMNIROUTE_WEB_TOKEN", CHANNEL_WEB_TOKEN)
            .output()
            .expect("python3 runs (apt-get install python3; pip install ./clients/python)")
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_cluster_client_follows_a_follower_to_the_leader() {
    // Proves omniroute.connect_cluster, given the followers' addresses before the leader's and
    // one PEM file holding all three replicas' certificates, gets its orders routed by the
    // leader and reads one back: the follower's NotLeader is followed, not raised.
    let cluster = Cluster::start("python-cluster", &[("SKU-1", "WH-N", 100_000)]).await;
    let leader = cluster
        .leader(Duration::from_secs(ELECTION_TIMEOUT_S))
        .await;
    let mut followers_first: Vec<u64> = cluster
        .ids
        .iter()
        .copied()
        .filter(|&id| id != leader)
        .collect();
    followers_first.push(leader);
    let addrs: Vec<String> = followers_first
        .iter()
        .map(|&id| cluster.client_addr(id).to_string())
        .collect();
    let ca = trust_pem(&cluster).display().to_string();
    let leader_addr = cluster.client_addr(leader).to_string();
    let output = python(addrs.join(","), leader_addr, ca).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "python cluster tests failed:\n{stderr}\n{}",
        cluster.logs()
    );
    assert!(
        stderr.contains("Ran 4 tests") && stderr.contains("OK") && !stderr.contains("skipped"),
        "{stderr}"
    );
}
