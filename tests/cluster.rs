//! Three replicas of the real daemon on loopback, killed with SIGKILL.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::cluster::Cluster;
use omniroute_protocol::Decision;

/// Units of SKU-1 in the cluster's stock: fewer than the orders for it.
const STOCK: u32 = 60;

fn order(i: usize) -> omniroute_protocol::Order {
    omniroute_client::order("web", &format!("o-{i}"), 50.0, 10.0, &[("SKU-1", 1)])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_killed_twice_loses_no_answered_order_and_oversells_nothing() {
    // Proves that orders answered by a leader survive its SIGKILL: another replica takes
    // over and serves, a resubmission anywhere returns the same decision, the killed
    // replica restarts on its directory and rejoins, across two kills no more units are
    // routed than were stocked, and every replica's committed log replays to the same
    // stock and orders.
    let mut cluster = Cluster::start(
        "cluster-kill-leader",
        &[("SKU-1", "WH-N", STOCK / 2), ("SKU-1", "WH-S", STOCK / 2)],
    )
    .await;
    let mut answered: BTreeMap<usize, Decision> = BTreeMap::new();
    let mut failovers = Vec::new();
    let mut next = 0;
    for round in 0..3 {
        let mut leader = 0;
        for _ in 0..30 {
            let (decision, by) = cluster.submit(&order(next), Duration::from_secs(20)).await;
            answered.insert(next, decision);
            leader = by;
            next += 1;
        }
        if round < 2 {
            cluster.kill(leader).await;
            let killed = Instant::now();
            let (decision, by) = cluster.submit(&order(next), Duration::from_secs(20)).await;
            assert_ne!(by, leader, "a killed replica answered");
            failovers.push(killed.elapsed());
            answered.insert(next, decision);
            next += 1;
            cluster.start_replica(leader).await;
        }
    }
    // Every answer is what any leader answers again, after both kills.
    let mut routed = 0;
    for (i, decision) in &answered {
        let (again, _) = cluster.submit(&order(*i), Duration::from_secs(20)).await;
        assert_eq!(
            &again, decision,
            "order o-{i} was answered differently before"
        );
        routed += matches!(decision, Decision::Routed { .. }) as u32;
    }
    assert_eq!(routed, STOCK, "every unit sold once, none twice");
    eprintln!("failovers (kill to the next answer): {failovers:?}");
    check_roles(&cluster).await;
    cluster.wait_caught_up(Duration::from_secs(30)).await;
    let (through, digests) = cluster.stop_and_digest().await;
    assert!(
        through > 60,
        "the log holds every order: committed through {through}"
    );
    assert!(
        digests.iter().all(|d| *d == digests[0]),
        "every replica's committed log makes the same state: {digests:x?}"
    );
}

/// The admin ports name one leader and two followers of it, and a
/// follower's HTTP gateway redirects to the leader's.
async fn check_roles(cluster: &Cluster) {
    let mut roles = Vec::new();
    for &id in &cluster.ids {
        let (status, body) = common::cluster::http_get(cluster.admin_addr(id), "/readyz").await;
        assert_eq!(status, 200, "replica {id}: {body}");
        roles.push((id, body.trim().to_string()));
    }
    let leaders: Vec<u64> = (roles.iter())
        .filter(|(_, role)| role.starts_with("leader of term"))
        .map(|(id, _)| *id)
        .collect();
    assert_eq!(leaders.len(), 1, "{roles:?}");
    let leader = leaders[0];
    for (id, role) in &roles {
        if *id != leader {
            assert!(
                role.starts_with(&format!("follower of replica {leader}")),
                "{roles:?}"
            );
            let http = std::net::SocketAddr::from(([127, 0, 0, 1], cluster.ports[id].http));
            let (status, body) = common::cluster::http_get(http, "/v1/availability/SKU-1").await;
            assert_eq!(status, 307, "a follower's gateway redirects: {body}");
            let leader_http = format!("127.0.0.1:{}", cluster.ports[&leader].http);
            assert!(body.contains(&leader_http), "{body}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_leader_stops_answering_and_rejoins_as_a_follower_without_its_tail() {
    // Proves that a leader cut off from both followers (its replication traffic dropped by
    // relays) answers no order routed, the other two elect a leader that serves, and once
    // healed the old leader follows it: the order sent to it while isolated was never
    // decided by the cluster, and every replica's committed log replays to the same state.
    let mut cluster = Cluster::start_relayed("cluster-isolated", &[("SKU-1", "WH-N", 1000)]).await;
    for i in 0..10 {
        cluster.submit(&order(i), Duration::from_secs(20)).await;
    }
    let old = cluster.leader(Duration::from_secs(10)).await;
    cluster.isolate(old, true);
    let client = cluster.client(old).await;
    let isolated = order(1000);
    let answer =
        tokio::time::timeout(Duration::from_secs(3), client.submit(isolated.clone())).await;
    assert!(
        !matches!(answer, Ok(Ok(Decision::Routed { .. }))),
        "an isolated leader routed an order: {answer:?}"
    );
    let (_, by) = cluster.submit(&order(10), Duration::from_secs(20)).await;
    assert_ne!(by, old, "the isolated leader answered");
    cluster.isolate(old, false);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cluster.role(old).await.starts_with("follower of replica") {
        assert!(
            Instant::now() < deadline,
            "replica {old} did not rejoin: {}",
            cluster.role(old).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let leader = cluster.leader(Duration::from_secs(10)).await;
    let found = cluster
        .client(leader)
        .await
        .get_order(omniroute_protocol::OrderKey {
            channel: "web".into(),
            client_order_id: isolated.client_order_id.clone(),
        })
        .await;
    let unknown = omniroute_protocol::ErrorCode::UnknownOrder as u16;
    assert!(
        matches!(&found, Err(omniroute_client::ClientError::Server { code, .. }) if *code == unknown),
        "the isolated leader's order was decided: {found:?}"
    );
    for i in 11..20 {
        cluster.submit(&order(i), Duration::from_secs(20)).await;
    }
    cluster.wait_caught_up(Duration::from_secs(30)).await;
    let (through, digests) = cluster.stop_and_digest().await;
    assert!(through > 20, "committed through {through}");
    assert!(digests.iter().all(|d| *d == digests[0]), "{digests:x?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_cluster_loads_a_stock_larger_than_one_append() {
    // Proves that a new cluster whose config's stock is one transaction larger than raft-rs's
    // usual append (250 000 cells: several MiB in one record) replicates it: the first leader
    // serves within the bound, an order is answered, and the replicas' logs replay alike.
    let mut cluster = Cluster::start_sampled("cluster-big-stock", 50_000).await;
    cluster.leader(Duration::from_secs(60)).await;
    let (decision, _) = cluster.submit(&order(0), Duration::from_secs(20)).await;
    assert!(matches!(
        decision,
        Decision::Routed { .. } | Decision::Rejected { .. }
    ));
    cluster.wait_caught_up(Duration::from_secs(30)).await;
    let (_, digests) = cluster.stop_and_digest().await;
    assert!(digests.iter().all(|d| *d == digests[0]), "{digests:x?}");
}
