//! Three replicas of the real daemon on loopback, killed with SIGKILL.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::cluster::Cluster;
use common::CHANNEL_WEB_TOKEN;
use omniroute_client::ClusterClient;
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
    let routed = cluster.resubmit_all(&answered, order).await;
    assert_eq!(routed, STOCK, "every unit sold once, none twice");
    eprintln!("failovers (kill to the next answer): {failovers:?}");
    check_roles(&cluster).await;
    cluster.wait_caught_up(Duration::from_secs(30)).await;
    check_progress_metrics(&cluster).await;
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
/// follower's HTTP gateway redirects to the leader's. A replica restarted
/// a moment ago may not have heard from the leader yet: each gets
/// `ROLES_WITHIN` to say 200.
async fn check_roles(cluster: &Cluster) {
    const ROLES_WITHIN: Duration = Duration::from_secs(10);
    let deadline = Instant::now() + ROLES_WITHIN;
    let mut roles = Vec::new();
    for &id in &cluster.ids {
        let (status, body) = loop {
            let (status, body) = common::cluster::http_get(cluster.admin_addr(id), "/readyz").await;
            if status == 200 || Instant::now() >= deadline {
                break (status, body);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
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

/// The leader's /metrics gives the commit index and a lag for each follower, which have
/// caught up (the tick after they matched the last entry, their lag is 0).
async fn check_progress_metrics(cluster: &Cluster) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let leader = cluster.leader(Duration::from_secs(10)).await;
        let (_, metrics) = common::cluster::http_get(cluster.admin_addr(leader), "/metrics").await;
        let value = |name: &str| {
            (metrics.lines()).find_map(|line| line.strip_prefix(name)?.trim().parse::<f64>().ok())
        };
        let commit = value("omniroute_replica_commit_index ").unwrap_or(0.0);
        let lags: Vec<Option<f64>> = (cluster.ids.iter())
            .filter(|&&id| id != leader)
            .map(|id| {
                value(&format!(
                    "omniroute_replica_follower_lag_entries{{peer=\"{id}\"}}"
                ))
            })
            .collect();
        if commit > 60.0 && lags.iter().all(|lag| *lag == Some(0.0)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "leader {leader}: commit {commit}, lags {lags:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_client_follows_the_leader_across_a_sigkill() {
    // Proves the Rust ClusterClient, given all three replicas' addresses, sends every call to
    // the replica that leads: it submits before the leader is SIGKILLed, across the failover
    // (moving on from the dead replica's silent port to the new leader, resending with the
    // same client order ids) and after the killed replica rejoined; every answered order is
    // answered alike again and read back by its id with the allocations it was answered with,
    // and no more units are routed than were stocked.
    let mut cluster = Cluster::start(
        "cluster-client-follows",
        &[("SKU-1", "WH-N", STOCK / 2), ("SKU-1", "WH-S", STOCK / 2)],
    )
    .await;
    let addrs: Vec<SocketAddr> = cluster
        .ids
        .iter()
        .map(|&id| cluster.client_addr(id))
        .collect();
    let client = ClusterClient::connect(addrs, "localhost", cluster.trust(), CHANNEL_WEB_TOKEN)
        .await
        .unwrap_or_else(|e| panic!("the client finds the leader: {e}\n{}", cluster.logs()));
    let mut answered: BTreeMap<usize, Decision> = BTreeMap::new();
    let submit = |i: usize| {
        let client = &client;
        async move {
            match client.submit(order(i)).await {
                Ok(decision) => decision,
                Err(e) => panic!("order o-{i} not decided: {e}"),
            }
        }
    };
    for i in 0..20 {
        answered.insert(i, submit(i).await);
    }
    let leader_addr = client.believed_leader();
    let leader = *cluster
        .ids
        .iter()
        .find(|&&id| cluster.client_addr(id) == leader_addr)
        .expect("the client believes a replica leads");
    cluster.kill(leader).await;
    let killed = Instant::now();
    answered.insert(20, submit(20).await);
    let failover = killed.elapsed();
    assert_ne!(
        client.believed_leader(),
        leader_addr,
        "a killed replica answered"
    );
    for i in 21..40 {
        answered.insert(i, submit(i).await);
    }
    cluster.start_replica(leader).await;
    for i in 40..90 {
        answered.insert(i, submit(i).await);
    }
    let mut routed = 0;
    for (i, decision) in &answered {
        assert_eq!(
            &submit(*i).await,
            decision,
            "order o-{i} was answered differently before"
        );
        if let Decision::Routed {
            order_id,
            allocations,
            ..
        } = decision
        {
            routed += allocations.iter().map(|a| a.qty).sum::<u32>();
            let view = client
                .get_order_by_id("web", *order_id)
                .await
                .unwrap_or_else(|e| panic!("order o-{i} read back: {e}"));
            let held: Vec<_> = view
                .allocations
                .iter()
                .map(|a| (&a.sku, &a.node, a.open))
                .collect();
            let told: Vec<_> = allocations
                .iter()
                .map(|a| (&a.sku, &a.node, a.qty))
                .collect();
            assert_eq!(held, told, "order o-{i} holds other units than it was told");
        }
    }
    assert_eq!(routed, STOCK, "every unit sold once, none twice");
    eprintln!("ClusterClient failover (kill to the next decision): {failover:?}");
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_given_every_replica_submits_to_the_leader() {
    // Proves `omniroute order submit --addr a,b,c` reaches the replica that leads whichever
    // address comes first (the first is a follower's here: a follower answers NotLeader), with
    // one CA file holding every replica's certificate; and that the order it routed is the
    // decision a resubmission of the same client order id gets from the cluster.
    let cluster = Cluster::start("cluster-cli", &[("SKU-1", "WH-N", STOCK)]).await;
    let (_, leader) = cluster.submit(&order(0), Duration::from_secs(20)).await;
    // The leader last, so that the command starts at a follower.
    let mut ids: Vec<u64> = cluster
        .ids
        .iter()
        .copied()
        .filter(|&id| id != leader)
        .collect();
    ids.push(leader);
    let addrs: Vec<String> = ids
        .iter()
        .map(|&id| cluster.client_addr(id).to_string())
        .collect();
    let ca = cluster.dir.0.join("every-replica.pem");
    let omniroute_client::Trust::CaPem(pem) = cluster.trust() else {
        unreachable!("the cluster's trust is PEM")
    };
    std::fs::write(&ca, pem).unwrap();
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_omniroute"))
        .args(["order", "submit", "--channel", "web", "--id", "o-cli"])
        .args([
            "--line",
            "SKU-1:2",
            "--ship-to",
            "50.0,10.0",
            "--addr",
            &addrs.join(","),
        ])
        .arg("--ca")
        .arg(&ca)
        .args(["--token", CHANNEL_WEB_TOKEN])
        .output()
        .await
        .expect("the command runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}\n{}",
        String::from_utf8_lossy(&output.stderr),
        cluster.logs()
    );
    let cli_order = omniroute_client::order("web", "o-cli", 50.0, 10.0, &[("SKU-1", 2)]);
    let (decision, by) = cluster.submit(&cli_order, Duration::from_secs(20)).await;
    assert_eq!(by, leader);
    let Decision::Routed { order_id, .. } = decision else {
        panic!("the command's order was not routed: {decision:?}\n{stdout}")
    };
    assert!(
        stdout.contains(&format!("routed: order {order_id},")),
        "{stdout}"
    );
}
