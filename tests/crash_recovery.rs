//! Crash recovery of the real daemon: orders, lifecycle steps and stock
//! updates stream in over QUIC, the daemon is killed with SIGKILL at a
//! random moment, restarted on the same data directory, and everything it
//! answered must be there exactly as answered. The daemon snapshots every
//! few hundred records, so most cycles write snapshots, some kills land in
//! the middle of one, and most restarts load snapshots before the journal.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::daemon::Daemon;
use futures::stream::{self, StreamExt};
use omniroute_client::{Client, ClientError};
use omniroute_protocol::{order_states, Decision, OrderKey, StockAdjust, StockSet};
use rand::{Rng, SeedableRng};

const SKUS: usize = 8;
const NODES: [&str; 4] = ["WH-DE-HAM", "WH-DE-NUE", "ST-DE-01", "ST-DE-02"];
const START_ON_HAND: u32 = 1500;
const WORKERS: usize = 8;
const ADMIN: &str = "dev-admin-token";
const WEB: &str = "dev-web-token";
const DEFAULT_CYCLES: usize = 10;
/// Journal records between two snapshots: a cycle writes hundreds to
/// thousands, so each begins a snapshot soon after its start, and its kill
/// finds it under way (a snapshot writes for 0.2-0.9 s here) or whole.
const SNAPSHOT_EVERY_RECORDS: u64 = 50;
/// How long the first cycle may run until a snapshot is whole.
const FIRST_SNAPSHOT_WITHIN_S: u64 = 60;

/// The embedded config, snapshotting every `SNAPSHOT_EVERY_RECORDS`.
fn write_config(dir: &std::path::Path) -> std::path::PathBuf {
    common::embedded_config_with(
        dir,
        "crash.toml",
        &[(
            "snapshot_every_records = 250000",
            format!("snapshot_every_records = {SNAPSHOT_EVERY_RECORDS}"),
        )],
    )
}

/// What the run saw of snapshots.
#[derive(Default, Debug)]
struct Snapshots {
    /// Snapshots the daemons logged as written.
    written: usize,
    /// Kills that came while /metrics said a snapshot was under way.
    kills_while_imaging: usize,
    /// Restarts that loaded every actor's snapshot before the journal.
    recoveries_from_snapshots: usize,
}

/// Whether /metrics says a snapshot is under way (begun, not written).
async fn imaging(daemon: &Daemon) -> bool {
    let page = daemon.metrics().await;
    let started = common::daemon::sample(&page, "omniroute_snapshots_started_total");
    started > common::daemon::sample(&page, "omniroute_snapshots_total")
}

/// Waits until the daemon has written a snapshot of every actor.
async fn snapshot_written(daemon: &Daemon) {
    let deadline = std::time::Instant::now() + Duration::from_secs(FIRST_SNAPSHOT_WITHIN_S);
    while common::daemon::sample(&daemon.metrics().await, "omniroute_snapshots_total") < 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no snapshot written within {FIRST_SNAPSHOT_WITHIN_S} s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn sku(i: usize) -> String {
    format!("CR-{i}")
}

fn key(id: &str) -> OrderKey {
    OrderKey {
        channel: "web".into(),
        client_order_id: id.into(),
    }
}

/// An order as the daemon last answered it.
#[derive(Clone, Debug)]
struct KnownOrder {
    #[allow(dead_code)]
    lines: Vec<(String, u32)>,
    /// (sku, node, units); empty when rejected.
    allocations: Vec<(String, String, u32)>,
    state: u8,
}

/// What the clients were told, and what they sent but were never answered.
#[derive(Default)]
struct Known {
    orders: HashMap<String, KnownOrder>,
    /// Submits without an answer: (id, lines).
    submits_in_flight: HashMap<String, Vec<(String, u32)>>,
    /// Confirm or cancel without an answer: (id, state it asked for).
    steps_in_flight: HashMap<String, u8>,
    on_hand: HashMap<(String, String), u32>,
    /// An adjust without an answer, per cell.
    adjust_in_flight: HashMap<(String, String), u32>,
}

fn is_closed(e: &ClientError) -> bool {
    !matches!(e, ClientError::Server { .. })
}

/// Set once the daemon is killed: requests still waiting count as lost in
/// flight (QUIC would only notice at its idle timeout).
type Killed = tokio::sync::watch::Receiver<bool>;

async fn unless_killed<T>(
    killed: &Killed,
    request: impl std::future::Future<Output = Result<T, ClientError>>,
) -> Result<T, ClientError> {
    let mut killed = killed.clone();
    tokio::select! {
        result = request => result,
        _ = killed.wait_for(|k| *k) => Err(ClientError::Closed("daemon killed".into())),
    }
}

async fn worker(
    client: Client,
    w: usize,
    cycle: usize,
    known: Arc<Mutex<Known>>,
    stop: Arc<AtomicBool>,
    killed: Killed,
) {
    let mut rng = rand::rngs::StdRng::seed_from_u64((cycle * 1000 + w) as u64);
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let id = format!("c{cycle}-w{w}-{i}");
        let mut skus: Vec<usize> = (0..SKUS).collect();
        let count = rng.random_range(1..=2);
        let lines: Vec<(String, u32)> = (0..count)
            .map(|_| {
                let pick = skus.swap_remove(rng.random_range(0..skus.len()));
                (sku(pick), rng.random_range(1..=3))
            })
            .collect();
        known
            .lock()
            .unwrap()
            .submits_in_flight
            .insert(id.clone(), lines.clone());
        let order = common::daemon::web_order(id.clone(), lines.clone());
        let decision = match unless_killed(&killed, client.submit(order)).await {
            Ok(decision) => decision,
            Err(e) if is_closed(&e) => return,
            Err(e) => panic!("submit {id}: {e}"),
        };
        let (allocations, state) = match decision {
            Decision::Routed { allocations, .. } => (
                allocations
                    .into_iter()
                    .map(|a| (a.sku, a.node, a.qty))
                    .collect(),
                order_states::HELD,
            ),
            Decision::Rejected { .. } => (Vec::new(), order_states::REJECTED),
        };
        {
            let mut known = known.lock().unwrap();
            known.submits_in_flight.remove(&id);
            known.orders.insert(
                id.clone(),
                KnownOrder {
                    lines,
                    allocations,
                    state,
                },
            );
        }
        if state != order_states::HELD {
            continue;
        }
        let roll: f64 = rng.random();
        let step = if roll < 0.3 {
            order_states::CONFIRMED
        } else if roll < 0.4 {
            order_states::CANCELLED
        } else {
            continue;
        };
        known
            .lock()
            .unwrap()
            .steps_in_flight
            .insert(id.clone(), step);
        let result = if step == order_states::CONFIRMED {
            unless_killed(&killed, client.confirm(key(&id))).await
        } else {
            unless_killed(&killed, client.cancel(key(&id))).await
        };
        match result {
            Ok(view) => {
                assert_eq!(view.state, step, "order {id} after its step");
                let mut known = known.lock().unwrap();
                known.steps_in_flight.remove(&id);
                known.orders.get_mut(&id).unwrap().state = step;
            }
            Err(e) if is_closed(&e) => return,
            Err(e) => panic!("step on {id}: {e}"),
        }
    }
}

async fn feeder(
    client: Client,
    cycle: usize,
    known: Arc<Mutex<Known>>,
    stop: Arc<AtomicBool>,
    killed: Killed,
) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7_000 + cycle as u64);
    while !stop.load(Ordering::Relaxed) {
        let cell = (
            sku(rng.random_range(0..SKUS)),
            NODES[rng.random_range(0..NODES.len())].to_string(),
        );
        let delta = rng.random_range(1..=5u32);
        known
            .lock()
            .unwrap()
            .adjust_in_flight
            .insert(cell.clone(), delta);
        let adjust = StockAdjust {
            sku: cell.0.clone(),
            node: cell.1.clone(),
            delta: i64::from(delta),
        };
        match unless_killed(&killed, client.stock_adjust(vec![adjust])).await {
            Ok((applied, _, errors)) => {
                assert_eq!((applied, errors), (1, 0));
                let mut known = known.lock().unwrap();
                known.adjust_in_flight.remove(&cell);
                *known.on_hand.get_mut(&cell).unwrap() += delta;
            }
            Err(e) if is_closed(&e) => return,
            Err(e) => panic!("adjust: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Reads every order ever sent back from the restarted daemon and checks
/// it against what was answered; then settles what was in flight.
async fn verify(client: &Client, known: &mut Known, cycle: usize) {
    let mut ids: Vec<String> = known.orders.keys().cloned().collect();
    ids.extend(known.submits_in_flight.keys().cloned());
    let views: Vec<(String, Result<omniroute_protocol::OrderView, ClientError>)> =
        stream::iter(ids)
            .map(|id| async move {
                let view = client.get_order(key(&id)).await;
                (id, view)
            })
            .buffer_unordered(64)
            .collect()
            .await;
    for (id, view) in views {
        if let Some(lines) = known.submits_in_flight.remove(&id) {
            // In flight at the kill: wholly there or wholly absent.
            match view {
                Err(ClientError::Server { .. }) => continue,
                Err(e) => panic!("cycle {cycle}: reading {id}: {e}"),
                Ok(view) => {
                    let allocations: Vec<(String, String, u32)> = view
                        .allocations
                        .iter()
                        .map(|a| (a.sku.clone(), a.node.clone(), a.open))
                        .collect();
                    if view.state != order_states::REJECTED {
                        for (sku, qty) in &lines {
                            let placed: u32 = allocations
                                .iter()
                                .filter(|a| &a.0 == sku)
                                .map(|a| a.2)
                                .sum();
                            assert_eq!(
                                placed, *qty,
                                "cycle {cycle}: in-flight order {id} is partly there"
                            );
                        }
                    }
                    known.orders.insert(
                        id,
                        KnownOrder {
                            lines,
                            allocations,
                            state: view.state,
                        },
                    );
                }
            }
            continue;
        }
        let order = known.orders.get_mut(&id).expect("known");
        if order.state == order_states::REJECTED {
            // A rejected order reserved nothing and is not kept.
            assert!(view.is_err(), "cycle {cycle}: rejected order {id} was kept");
            continue;
        }
        let view =
            view.unwrap_or_else(|e| panic!("cycle {cycle}: answered order {id} is gone: {e}"));
        match known.steps_in_flight.remove(&id) {
            Some(step) => {
                assert!(
                    view.state == order.state || view.state == step,
                    "cycle {cycle}: order {id} is in state {} after a step to {step} from {}",
                    view.state,
                    order.state
                );
                order.state = view.state;
            }
            None => assert_eq!(
                view.state, order.state,
                "cycle {cycle}: state of answered order {id}"
            ),
        }
        let mut placed: Vec<(String, String, u32)> = view
            .allocations
            .iter()
            .map(|a| (a.sku.clone(), a.node.clone(), a.open + a.shipped))
            .filter(|a| a.2 > 0 || order.state == order_states::CANCELLED)
            .collect();
        let mut answered = order.allocations.clone();
        placed.sort();
        answered.sort();
        if order.state == order_states::CANCELLED {
            assert!(
                view.allocations.iter().all(|a| a.open == 0),
                "cycle {cycle}: cancelled {id} keeps units"
            );
            let nodes: Vec<_> = view.allocations.iter().map(|a| (&a.sku, &a.node)).collect();
            let expected: Vec<_> = order.allocations.iter().map(|a| (&a.0, &a.1)).collect();
            assert_eq!(
                nodes.len(),
                expected.len(),
                "cycle {cycle}: allocation of cancelled {id}"
            );
        } else {
            assert_eq!(
                placed, answered,
                "cycle {cycle}: allocation of answered order {id}"
            );
        }
    }
    assert!(
        known.steps_in_flight.is_empty()
            || known
                .steps_in_flight
                .keys()
                .all(|id| !known.orders.contains_key(id))
    );
    known.steps_in_flight.clear();

    // Stock: reserved (from the open orders) never above on_hand, and the
    // ATP the daemon reports is on_hand minus reserved.
    let mut reserved: HashMap<(String, String), u32> = HashMap::new();
    for order in known.orders.values() {
        if order.state == order_states::HELD || order.state == order_states::CONFIRMED {
            for (sku, node, qty) in &order.allocations {
                *reserved.entry((sku.clone(), node.clone())).or_default() += qty;
            }
        }
    }
    for s in 0..SKUS {
        let nodes = client
            .availability(&sku(s), None)
            .await
            .expect("availability");
        for node in NODES {
            let cell = (sku(s), node.to_string());
            let atp = nodes.iter().find(|n| n.node == node).map_or(0, |n| n.atp);
            let held = reserved.get(&cell).copied().unwrap_or(0);
            let mut candidates = vec![known.on_hand[&cell]];
            if let Some(delta) = known.adjust_in_flight.get(&cell) {
                candidates.push(known.on_hand[&cell] + delta);
            }
            let fits: Vec<u32> = candidates
                .into_iter()
                .filter(|on_hand| held <= *on_hand && atp == on_hand - held)
                .collect();
            assert!(
                !fits.is_empty(),
                "cycle {cycle}: {cell:?} has ATP {atp} with {held} reserved; on_hand {} (+{:?} in flight)",
                known.on_hand[&cell],
                known.adjust_in_flight.get(&cell)
            );
            known.on_hand.insert(cell, fits[0]);
        }
    }
    known.adjust_in_flight.clear();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answered_orders_survive_sigkill() {
    // Proves that after SIGKILL at a random moment every answered order, step and stock
    // update is there exactly as answered, in-flight orders are all-or-nothing, and ATP
    // equals on_hand minus the open allocations, over OMNIROUTE_CRASH_CYCLES cycles; with
    // snapshots written all along, some killed half-way, and restarts loading them.
    let cycles: usize = std::env::var("OMNIROUTE_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_CYCLES);
    let dir = common::TempDir::new("crash");
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let mut known = Known::default();
    let config = write_config(&dir.0);
    let mut snapshots = Snapshots::default();
    let mut daemon = Daemon::start(&dir.0, Some(&config), "127.0.0.1:0").await;
    {
        let admin = daemon.client(ADMIN).await;
        let mut entries = Vec::new();
        for s in 0..SKUS {
            for node in NODES {
                entries.push(StockSet {
                    sku: sku(s),
                    node: node.into(),
                    on_hand: START_ON_HAND,
                    safety_stock: Some(0),
                });
                known
                    .on_hand
                    .insert((sku(s), node.to_string()), START_ON_HAND);
            }
        }
        admin.stock_set(entries).await.expect("starting stock");
    }
    let mut total_orders = 0;
    for cycle in 0..cycles {
        let shared = Arc::new(Mutex::new(std::mem::take(&mut known)));
        let stop = Arc::new(AtomicBool::new(false));
        let (kill, killed) = tokio::sync::watch::channel(false);
        let mut tasks = Vec::new();
        for w in 0..WORKERS {
            let client = daemon.client(WEB).await;
            tasks.push(tokio::spawn(worker(
                client,
                w,
                cycle,
                shared.clone(),
                stop.clone(),
                killed.clone(),
            )));
        }
        let admin = daemon.client(ADMIN).await;
        tasks.push(tokio::spawn(feeder(
            admin,
            cycle,
            shared.clone(),
            stop.clone(),
            killed.clone(),
        )));
        tokio::time::sleep(Duration::from_millis(rng.random_range(200..1200))).await;
        if cycle == 0 {
            // Every later restart then has snapshots to load, whatever
            // the machine's speed.
            snapshot_written(&daemon).await;
        }
        if imaging(&daemon).await {
            snapshots.kills_while_imaging += 1;
        }
        daemon.child.start_kill().expect("SIGKILL");
        daemon.child.wait().await.expect("daemon reaped");
        snapshots.written += daemon
            .log_to_end()
            .await
            .iter()
            .filter(|line| line.contains("snapshot at LSN "))
            .count();
        stop.store(true, Ordering::Relaxed);
        let _ = kill.send(true);
        for task in tasks {
            tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .expect("clients notice the kill")
                .expect("client task");
        }
        known = Arc::try_unwrap(shared)
            .ok()
            .expect("tasks done")
            .into_inner()
            .unwrap();
        daemon = Daemon::start(&dir.0, Some(&config), "127.0.0.1:0").await;
        let recovery = daemon.recovery().await;
        if recovery.snapshots > 0 && recovery.oldest_lsn > 0 {
            snapshots.recoveries_from_snapshots += 1;
        }
        let client = daemon.client(ADMIN).await;
        verify(&client, &mut known, cycle).await;
        let answered = known.orders.len();
        assert!(answered > total_orders, "cycle {cycle} answered no orders");
        total_orders = answered;
    }
    daemon.child.start_kill().expect("stop");
    let _ = daemon.child.wait().await;
    println!("{cycles} crash cycles, {total_orders} orders checked; {snapshots:?}");
    assert!(snapshots.written > 0, "no snapshot in {cycles} cycles");
    assert_eq!(
        snapshots.recoveries_from_snapshots, cycles,
        "every restart after the first snapshot loads snapshots"
    );
}
