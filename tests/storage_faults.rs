//! Storage faults in the real daemon: an I/O error (ENOSPC, EIO, EMFILE)
//! injected at each journal and snapshot call while orders stream in, and
//! a data directory on a small tmpfs that fills up. Each must end the same
//! way: no routed answer for an order that is not durable, clients told
//! `Unavailable`, `/readyz` 503 naming the cause, the daemon exiting
//! non-zero by itself, and after a restart every answered order there as
//! answered, with stock that adds up (nothing oversold).
//!
//! The injection seam (`src/faults.rs`) is compiled into test builds only.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::daemon::Daemon;
use omniroute_client::{Client, ClientError};
use omniroute_protocol::{order_states, Decision, ErrorCode, Order, OrderKey, StockSet};
use rand::{Rng, SeedableRng};

const SKUS: usize = 6;
const NODES: [&str; 4] = ["WH-DE-HAM", "WH-DE-NUE", "ST-DE-01", "ST-DE-02"];
/// Enough that no order is ever short: every answer is a routed one.
const START_ON_HAND: u32 = 1_000_000;
const WORKERS: usize = 4;
const ADMIN: &str = "dev-admin-token";
const WEB: &str = "dev-web-token";
/// How long a faulted daemon may take to stop on its own: the fault must
/// come under load within this, and the linger (1.5 s here) fits in it.
const FAULT_WITHIN_S: u64 = 60;

fn sku(i: usize) -> String {
    format!("FT-{i}")
}

fn key(id: &str) -> OrderKey {
    OrderKey {
        channel: "web".into(),
        client_order_id: id.into(),
    }
}

/// The embedded config with small segments (a rotation every few thousand
/// records), frequent snapshots and a short sample catalog, so that every
/// journal and snapshot call comes round within a few seconds of load.
fn write_config(dir: &Path) -> PathBuf {
    let text = include_str!("../config/default.toml")
        .replace("segment_bytes = 67108864", "segment_bytes = 1048576")
        .replace(
            "snapshot_every_records = 250000",
            "snapshot_every_records = 2000",
        )
        .replace("fault_linger_ms = 1000", "fault_linger_ms = 1500")
        .replace("skus = 10000", "skus = 10");
    let path = dir.join("faults.toml");
    std::fs::write(&path, text).expect("config written");
    path
}

/// Where an order's units were placed: (sku, node, units).
type Placed = Vec<(String, String, u32)>;

/// What the clients were told.
#[derive(Default)]
struct Known {
    /// Routed and answered: where it was placed, and the state answered.
    routed: HashMap<String, (Placed, u8)>,
    /// Sent and answered with an error or never answered: there or not.
    unsure: HashMap<String, Vec<(String, u32)>>,
    /// Routed orders whose confirm was answered with an error: held or
    /// confirmed (the confirm's record may have reached the disk before
    /// the fault was seen).
    confirm_unsure: std::collections::HashSet<String>,
    /// Error codes the clients got, by code.
    codes: HashMap<u16, usize>,
}

fn order(id: &str, lines: &[(String, u32)]) -> Order {
    Order {
        hold_ttl_ms: Some(600_000),
        ..common::daemon::web_order(id, lines.to_vec())
    }
}

/// Submits orders (and confirms some) until `stop`; an order answered with
/// an error is sent once more, which must not be answered routed from
/// memory: if it is, it must then be durable like any routed answer.
async fn worker(
    client: Client,
    w: usize,
    run: &str,
    known: Arc<Mutex<Known>>,
    stop: Arc<AtomicBool>,
) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(w as u64);
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let id = format!("{run}-w{w}-{i}");
        let lines: Vec<(String, u32)> = (0..rng.random_range(1..=2))
            .map(|l| (sku((w + l + i) % SKUS), rng.random_range(1..=3)))
            .collect();
        for attempt in 0..2 {
            let answer =
                tokio::time::timeout(Duration::from_secs(10), client.submit(order(&id, &lines)))
                    .await
                    .unwrap_or_else(|_| Err(ClientError::Closed("no answer in 10 s".into())));
            let mut known = known.lock().unwrap();
            match answer {
                Ok(Decision::Routed { allocations, .. }) => {
                    known.unsure.remove(&id);
                    let placed = allocations.into_iter().map(|a| (a.sku, a.node, a.qty));
                    known
                        .routed
                        .insert(id.clone(), (placed.collect(), order_states::HELD));
                    break;
                }
                Ok(Decision::Rejected { code, .. }) => {
                    panic!("{id} rejected ({code}) with stock to spare")
                }
                Err(ClientError::Server { code, .. }) => {
                    *known.codes.entry(code).or_default() += 1;
                    known.unsure.insert(id.clone(), lines.clone());
                }
                Err(_) => {
                    known.unsure.insert(id.clone(), lines.clone());
                    return;
                }
            }
            if attempt == 1 {
                break;
            }
        }
        if known.lock().unwrap().routed.contains_key(&id) && i % 4 == 0 {
            match client.confirm(key(&id)).await {
                Ok(view) => {
                    assert_eq!(view.state, order_states::CONFIRMED);
                    let mut known = known.lock().unwrap();
                    known.routed.get_mut(&id).unwrap().1 = order_states::CONFIRMED;
                }
                Err(_) => {
                    known.lock().unwrap().confirm_unsure.insert(id.clone());
                }
            }
        }
    }
}

/// Polls `/readyz` until the daemon is gone; the 503 bodies it saw.
async fn watch_readiness(admin: std::net::SocketAddr, seen: Arc<Mutex<Vec<String>>>) {
    let url = format!("http://{admin}/readyz");
    loop {
        let url = url.clone();
        let got = tokio::task::spawn_blocking(move || {
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(Duration::from_secs(2)))
                .build()
                .into();
            agent.get(&url).call().map(|mut r| {
                (
                    r.status().as_u16(),
                    r.body_mut().read_to_string().unwrap_or_default(),
                )
            })
        })
        .await
        .expect("poll");
        match got {
            Ok((503, body)) => seen.lock().unwrap().push(body),
            Ok(_) => {}
            Err(_) => return,
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Sets the test's stock: a million units of each SKU at each node.
async fn stock(daemon: &Daemon) {
    let admin = daemon.client(ADMIN).await;
    let entries = (0..SKUS)
        .flat_map(|s| {
            NODES.iter().map(move |node| StockSet {
                sku: sku(s),
                node: node.to_string(),
                on_hand: START_ON_HAND,
                safety_stock: Some(0),
            })
        })
        .collect();
    admin.stock_set(entries).await.expect("stock set");
}

/// Streams orders into `daemon` until it stops by itself, and returns what
/// the clients were told and the 503 bodies `/readyz` gave. Panics if it
/// does not stop, or stops with success.
async fn load_until_exit(daemon: &mut Daemon, run: &str) -> (Known, Vec<String>) {
    let known = Arc::new(Mutex::new(Known::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for w in 0..WORKERS {
        let client = daemon.client(WEB).await;
        let (known, stop, run) = (known.clone(), stop.clone(), run.to_string());
        tasks.push(tokio::spawn(async move {
            worker(client, w, &run, known, stop).await
        }));
    }
    let readiness = Arc::new(Mutex::new(Vec::new()));
    let poller = tokio::spawn(watch_readiness(daemon.admin(), readiness.clone()));
    let status = tokio::time::timeout(Duration::from_secs(FAULT_WITHIN_S), daemon.child.wait())
        .await
        .unwrap_or_else(|_| {
            panic!("{run}: the daemon did not stop within {FAULT_WITHIN_S} s of load")
        })
        .expect("exit status");
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.expect("worker");
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), poller).await;
    assert!(
        !status.success(),
        "{run}: a daemon whose storage failed exits non-zero ({status})"
    );
    let known = std::mem::take(&mut *known.lock().unwrap());
    let seen = readiness.lock().unwrap().clone();
    (known, seen)
}

/// Checks how a daemon whose storage failed stopped: its log and `/readyz`
/// named the cause (`cause` in both), and the clients were told
/// `Unavailable`, never another code.
async fn assert_failed_stop(
    daemon: &mut Daemon,
    known: &Known,
    readiness: &[String],
    cause: &str,
    run: &str,
) {
    let failure = daemon.log_line_with("storage failed").await;
    assert!(failure.contains(cause), "{run}: {failure}");
    assert!(
        readiness.iter().any(|body| body.contains(cause)),
        "{run}: /readyz answered 503 naming the cause while the daemon stopped (saw {readiness:?})"
    );
    let unavailable = ErrorCode::Unavailable as u16;
    assert!(
        known.codes.get(&unavailable).is_some_and(|n| *n > 0),
        "{run}: the clients were told Unavailable (got {:?})",
        known.codes
    );
    assert!(
        known.codes.keys().all(|code| *code == unavailable),
        "{run}: only Unavailable, never Internal (got {:?})",
        known.codes
    );
}

/// Restarts on the directory and checks that every routed answer is there
/// as answered, orders answered with an error are wholly there or absent,
/// and each cell's ATP is its on_hand less the open allocations.
async fn verify(dir: &Path, config: &Path, known: &Known, run: &str) {
    let mut daemon = Daemon::start(dir, Some(config), "127.0.0.1:0").await;
    let client = daemon.client(ADMIN).await;
    let mut reserved: HashMap<(String, String), u32> = HashMap::new();
    for (id, (placed, state)) in &known.routed {
        let view = client
            .get_order(key(id))
            .await
            .unwrap_or_else(|e| panic!("{run}: answered order {id} is gone: {e}"));
        if known.confirm_unsure.contains(id) {
            assert!(
                [order_states::HELD, order_states::CONFIRMED].contains(&view.state),
                "{run}: state {} of answered order {id}, whose confirm failed",
                view.state
            );
        } else {
            assert_eq!(view.state, *state, "{run}: state of answered order {id}");
        }
        let mut got: Vec<_> = view
            .allocations
            .iter()
            .map(|a| (a.sku.clone(), a.node.clone(), a.open))
            .collect();
        let mut want = placed.clone();
        got.sort();
        want.sort();
        assert_eq!(got, want, "{run}: allocations of answered order {id}");
        for (sku, node, qty) in placed {
            *reserved.entry((sku.clone(), node.clone())).or_default() += qty;
        }
    }
    for (id, lines) in &known.unsure {
        match client.get_order(key(id)).await {
            Err(ClientError::Server { .. }) => {}
            Err(e) => panic!("{run}: reading {id}: {e}"),
            Ok(view) => {
                for (sku, qty) in lines {
                    let placed: u32 = view
                        .allocations
                        .iter()
                        .filter(|a| &a.sku == sku)
                        .map(|a| a.open)
                        .sum();
                    assert_eq!(
                        placed, *qty,
                        "{run}: order {id} answered with an error is partly there"
                    );
                }
                for a in &view.allocations {
                    *reserved.entry((a.sku.clone(), a.node.clone())).or_default() += a.open;
                }
            }
        }
    }
    for s in 0..SKUS {
        let nodes = client
            .availability(&sku(s), None)
            .await
            .expect("availability");
        for node in NODES {
            let atp = nodes.iter().find(|n| n.node == node).map_or(0, |n| n.atp);
            let held = reserved
                .get(&(sku(s), node.to_string()))
                .copied()
                .unwrap_or(0);
            assert_eq!(atp, START_ON_HAND - held, "{run}: ATP of {}@{node}", sku(s));
        }
    }
    assert!(
        daemon.terminate().await.success(),
        "{run}: the restarted daemon stops cleanly"
    );
}

/// One fault: `point` fails with `errno` after `passes` calls succeeded.
async fn fault_run(point: &str, errno: &str, passes: u32) {
    let run = format!("{point}-{errno}");
    let dir = common::TempDir::new(&run);
    let config = write_config(&dir.0);
    let failpoints = format!("{point}={passes}*off->return({errno})");
    let mut daemon = Daemon::start_with_env(
        &dir.0,
        Some(&config),
        "127.0.0.1:0",
        &[("FAILPOINTS", &failpoints)],
    )
    .await;
    stock(&daemon).await;
    let (known, readiness) = load_until_exit(&mut daemon, &run).await;
    assert_failed_stop(&mut daemon, &known, &readiness, "storage failed", &run).await;
    assert!(
        !known.routed.is_empty(),
        "{run}: orders were answered before the fault"
    );
    verify(&dir.0, &config, &known, &run).await;
}

/// Each journal and snapshot call, with the number of calls that pass
/// first (past the start's own calls, so that the fault comes under load).
const POINTS: [(&str, u32); 11] = [
    ("journal-write", 300),
    ("journal-fsync", 300),
    ("journal-open", 5),
    ("journal-rename", 2),
    ("journal-dir-fsync", 3),
    // Four calls per spare of the test's 1 MiB segments: the fault comes in the fourth spare.
    ("journal-allocate", 12),
    ("snapshot-open", 3),
    ("snapshot-write", 3),
    ("snapshot-fsync", 6),
    ("snapshot-rename", 3),
    ("snapshot-dir-fsync", 3),
];

/// The errors each call fails with in turn: a full disk, a failing disk,
/// no descriptor left.
const ERRNOS: [&str; 3] = ["ENOSPC", "EIO", "EMFILE"];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_io_error_at_any_storage_call_never_costs_an_answered_order() {
    // Proves that an injected ENOSPC, EIO and EMFILE at each journal and snapshot call, under
    // load, gives no false yes: Unavailable to the clients, /readyz 503, a non-zero exit, and
    // after a restart every routed answer present and stock that adds up.
    let runs: Vec<(&str, u32, &str)> = POINTS
        .iter()
        .flat_map(|&(point, passes)| ERRNOS.iter().map(move |&errno| (point, passes, errno)))
        .collect();
    let runs = Arc::new(runs);
    let next = Arc::new(AtomicUsize::new(0));
    // Two runs at a time: each is mostly waiting on its daemon.
    let runners = (0..2).map(|_| {
        let (next, runs) = (next.clone(), runs.clone());
        tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(&(point, passes, errno)) = runs.get(i) else {
                    return;
                };
                let started = Instant::now();
                fault_run(point, errno, passes).await;
                eprintln!(
                    "{point} {errno}: held in {} ms",
                    started.elapsed().as_millis()
                );
            }
        })
    });
    for runner in runners.collect::<Vec<_>>() {
        runner.await.expect("a fault run held");
    }
}

#[test]
fn every_storage_call_has_a_fault_run() {
    // Proves the runs above cover every point the seam names.
    let covered: Vec<&str> = POINTS.iter().map(|f| f.0).collect();
    for point in omniroute::faults::points::ALL {
        assert!(covered.contains(&point), "no fault run for {point}");
    }
}

/// A tmpfs mounted for one test, unmounted when dropped; `None` where this
/// process may not mount (not root, or in a container without the right).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(name: &str, size_mib: u64) -> Option<Tmpfs> {
        let path =
            std::env::temp_dir().join(format!("omniroute-tmpfs-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&path).ok()?;
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mib}m"), "tmpfs"])
            .arg(&path)
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            let _ = std::fs::remove_dir(&path);
            return None;
        }
        Some(Tmpfs(path))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Fills the file system of `dir` with a new file `name`, leaving `leave`
/// bytes free.
fn fill(dir: &Path, name: &str, leave: u64) -> PathBuf {
    let path = dir.join(name);
    let stat = nix_free_bytes(dir);
    let size = stat.saturating_sub(leave);
    let file = std::fs::File::create(&path).expect("filler");
    // Written, not just sized: a tmpfs counts only pages that exist.
    let chunk = vec![0xA5u8; 1 << 20];
    let mut written = 0u64;
    use std::io::Write;
    let mut file = std::io::BufWriter::new(file);
    while written < size {
        let n = (size - written).min(chunk.len() as u64) as usize;
        file.write_all(&chunk[..n]).expect("filling");
        written += n as u64;
    }
    file.flush().expect("filling");
    path
}

fn nix_free_bytes(dir: &Path) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).unwrap();
    // SAFETY: a NUL-terminated path and a zeroed statvfs for the call to fill.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(path.as_ptr(), &mut stat) }, 0);
    stat.f_bavail * stat.f_frsize
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_disk_stops_the_daemon_without_losing_an_answered_order() {
    // Proves that with the data directory on a small tmpfs filled under load, nothing answered
    // is lost and nothing is answered routed that is not durable: clients get Unavailable,
    // /readyz 503, the daemon exits non-zero; a restart on the still-full disk refuses and says
    // why, and once space is freed every answered order is there.
    let Some(tmpfs) = Tmpfs::mount("full", 48) else {
        eprintln!("skipped: this process cannot mount a tmpfs (needs root)");
        return;
    };
    let dir = tmpfs.0.join("data");
    std::fs::create_dir_all(&dir).unwrap();
    let config_dir = common::TempDir::new("full-config");
    let config = write_config(&config_dir.0);
    let mut daemon = Daemon::start(&dir, Some(&config), "127.0.0.1:0").await;
    stock(&daemon).await;
    // Room for the journal's two segments and a little more: the spare
    // prepared after a rotation or two finds the disk full.
    let filler = fill(&tmpfs.0, "filler", 4 << 20);
    let (known, readiness) = load_until_exit(&mut daemon, "full").await;
    assert_failed_stop(
        &mut daemon,
        &known,
        &readiness,
        "No space left on device",
        "full",
    )
    .await;

    // Still full (filled to the last byte): the restart says so and stops.
    let top_up = fill(&tmpfs.0, "top-up", 0);
    let said_path = config_dir.0.join("refused.log");
    let mut refused = tokio::process::Command::new(env!("CARGO_BIN_EXE_omniroute"))
        .arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(&dir)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "off",
            "--http",
            "127.0.0.1:0",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&said_path).unwrap())
        .kill_on_drop(true)
        .spawn()
        .expect("runs");
    let status = tokio::time::timeout(Duration::from_secs(60), refused.wait()).await;
    let said = std::fs::read_to_string(&said_path).unwrap_or_default();
    let status = status
        .unwrap_or_else(|_| panic!("a start on a full disk ends; it said:\n{said}"))
        .expect("status");
    assert!(!status.success(), "a start on a full disk refuses");
    assert!(
        said.contains("free") && said.contains("journal"),
        "it says why: {said}"
    );

    std::fs::remove_file(filler).expect("space freed");
    std::fs::remove_file(top_up).expect("space freed");
    verify(&dir, &config, &known, "full").await;
}
