//! Damaged data directories and the real daemon: orders are answered, the
//! daemon is killed, and a copy of its directory is damaged one way at a
//! time (header fields and payload bits of journal records, truncations,
//! snapshot bytes, a missing snapshot, a missing segment). Each start must
//! refuse, naming the file, or come up with every answered order and the
//! stock as answered: never start with an answered order silently gone.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::daemon::Daemon;
use common::TempDir;
use omniroute::journal::record::{self, RECORD_HEADER_BYTES};
use omniroute_client::Client;
use omniroute_protocol::{Decision, Method, Order, OrderKey, StockSet};
use rand::{Rng, SeedableRng};
use tokio::io::AsyncReadExt;

const ADMIN: &str = "dev-admin-token";
const WEB: &str = "dev-web-token";
const NODES: [&str; 2] = ["WH-DE-HAM", "WH-DE-NUE"];
const SKUS: usize = 3;
/// Orders answered before and after the snapshot of a graceful stop.
const ORDERS_PER_RUN: usize = 25;
/// Damage positions drawn per kind of damage (seeded: repeatable).
const DRAWS: usize = 1;

fn sku(i: usize) -> String {
    format!("DMG-{i}")
}

fn key(id: &str) -> OrderKey {
    OrderKey {
        channel: "web".into(),
        client_order_id: id.into(),
    }
}

/// What the daemon answered: each routed order's allocations, and the
/// ATP of every cell at the end.
#[derive(Default)]
struct Answered {
    orders: BTreeMap<String, Vec<(String, String, u32)>>,
    atp: BTreeMap<(String, String), u32>,
}

async fn answer_orders(client: &Client, run: usize, answered: &mut Answered) {
    for i in 0..ORDERS_PER_RUN {
        let id = format!("r{run}-{i}");
        let order = Order {
            channel: "web".into(),
            client_order_id: id.clone(),
            lat: 52.52,
            lon: 13.40,
            market: Some("DE".into()),
            method: Method::Ship,
            hold_ttl_ms: None,
            lines: vec![(sku(i % SKUS), 1 + (i % 2) as u32)],
        };
        match client.submit(order).await.expect("submit") {
            Decision::Routed { allocations, .. } => {
                let placed = allocations
                    .into_iter()
                    .map(|a| (a.sku, a.node, a.qty))
                    .collect();
                answered.orders.insert(id, placed);
            }
            Decision::Rejected { .. } => panic!("{id} rejected: the stock suffices"),
        }
    }
}

async fn atp_of(client: &Client) -> BTreeMap<(String, String), u32> {
    let mut atp = BTreeMap::new();
    for s in 0..SKUS {
        for node in client
            .availability(&sku(s), None)
            .await
            .expect("availability")
        {
            atp.insert((sku(s), node.node), node.atp);
        }
    }
    atp
}

/// A data directory with a snapshot (from a graceful stop) and a journal
/// after it, the daemon killed: what it answered.
async fn answered_directory(dir: &Path) -> Answered {
    let mut answered = Answered::default();
    let mut daemon = Daemon::start(dir, None, "off").await;
    let admin = daemon.client(ADMIN).await;
    let entries = (0..SKUS)
        .flat_map(|s| NODES.map(|node| (s, node)))
        .map(|(s, node)| StockSet {
            sku: sku(s),
            node: node.into(),
            on_hand: 500,
            safety_stock: Some(0),
        })
        .collect();
    admin.stock_set(entries).await.expect("stock");
    answer_orders(&daemon.client(WEB).await, 0, &mut answered).await;
    assert!(daemon.terminate().await.success());
    let daemon = Daemon::start(dir, None, "off").await;
    answer_orders(&daemon.client(WEB).await, 1, &mut answered).await;
    answered.atp = atp_of(&daemon.client(ADMIN).await).await;
    let mut child = daemon.child;
    child.start_kill().expect("SIGKILL");
    child.wait().await.expect("reaped");
    answered
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        let kind = entry.file_type().unwrap();
        if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(entry.path()).unwrap(), &target).unwrap();
        } else if kind.is_dir() {
            copy_dir(&entry.path(), &target);
        } else if entry.file_name() != "lock" {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// How a start on a damaged directory ended.
enum Outcome {
    Refused(String),
    Started(Box<Daemon>),
}

/// Starts the binary on `dir`: its refusal (exit status and log), or the
/// daemon once it listens.
async fn start_or_refusal(dir: &Path) -> Outcome {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_omniroute"))
        .arg("--data-dir")
        .arg(dir)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "off",
            "--http",
            "127.0.0.1:0",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the daemon starts");
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let mut seen = Vec::new();
    let mut buffer = [0u8; 4096];
    let listening = loop {
        let read = tokio::time::timeout(Duration::from_secs(60), stdout.read(&mut buffer))
            .await
            .expect("the daemon starts or refuses within 60 s")
            .unwrap();
        if read == 0 {
            break false;
        }
        seen.extend_from_slice(&buffer[..read]);
        if String::from_utf8_lossy(&seen).contains("listening on") {
            break true;
        }
    };
    if listening {
        child.start_kill().unwrap();
        child.wait().await.unwrap();
        return Outcome::Started(Box::new(Daemon::start(dir, None, "off").await));
    }
    let status = child.wait().await.unwrap();
    let mut log = String::new();
    stderr.read_to_string(&mut log).await.unwrap();
    assert!(!status.success(), "exited 0 without listening: {log}");
    Outcome::Refused(log)
}

/// Starts on `dir`, damaged as `case` says: a refusal must name `file`; a
/// start must hold every answered order and the answered stock.
async fn refused_or_whole(dir: &Path, file: &Path, answered: &Answered, case: &str) -> bool {
    match start_or_refusal(dir).await {
        Outcome::Refused(log) => {
            // The damaged file, or what the damage left out of step with
            // it (the snapshot the journal no longer reaches).
            let name = file.file_name().unwrap().to_str().unwrap();
            let dir = dir.display().to_string();
            assert!(
                log.contains(name) || log.contains(&dir),
                "{case}: the refusal does not name {name}:\n{log}"
            );
            assert!(log.contains("refusing to start"), "{case}:\n{log}");
            true
        }
        Outcome::Started(daemon) => {
            let client = daemon.client(ADMIN).await;
            for (id, placed) in &answered.orders {
                let view = client
                    .get_order(key(id))
                    .await
                    .unwrap_or_else(|e| panic!("{case}: answered order {id} is gone: {e}"));
                let mut got: Vec<_> = view
                    .allocations
                    .iter()
                    .map(|a| (a.sku.clone(), a.node.clone(), a.open))
                    .collect();
                let mut want = placed.clone();
                got.sort();
                want.sort();
                assert_eq!(got, want, "{case}: order {id}");
            }
            assert_eq!(atp_of(&client).await, answered.atp, "{case}: stock");
            let mut child = daemon.child;
            child.start_kill().unwrap();
            child.wait().await.unwrap();
            false
        }
    }
}

fn last_segment(dir: &Path) -> PathBuf {
    common::journal_segments(&dir.join("journal"))
        .pop()
        .expect("a segment")
}

fn record_offsets(segment: &Path) -> Vec<usize> {
    let bytes = std::fs::read(segment).unwrap();
    record::scan(&bytes, None)
        .records
        .iter()
        .map(|r| r.offset)
        .collect()
}

/// Applies `damage` to the file `file` of a fresh copy of `source`, then
/// starts on it; whether it refused.
async fn case(
    source: &Path,
    scratch: &Path,
    relative: &Path,
    answered: &Answered,
    name: &str,
    damage: impl FnOnce(&Path),
) -> bool {
    let _ = std::fs::remove_dir_all(scratch);
    copy_dir(source, scratch);
    let file = scratch.join(relative);
    damage(&file);
    let refused = refused_or_whole(scratch, &file, answered, name).await;
    eprintln!(
        "{name}: {}",
        if refused { "refused" } else { "started whole" }
    );
    refused
}

fn flip(bit: usize) -> impl FnOnce(&Path) {
    move |file: &Path| {
        let mut bytes = std::fs::read(file).unwrap();
        bytes[bit / 8] ^= 1 << (bit % 8);
        std::fs::write(file, bytes).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damage_is_refused_or_loses_no_answered_order() {
    // Proves that for every field of a journal record's header (first,
    // middle and last record), payload bits, snapshot header and body
    // bytes, a missing snapshot and a missing segment, the daemon refuses
    // to start naming the file, or starts with every answered order and
    // the answered stock; and that the case (the high bit of a
    // length) is refused.
    let temp = TempDir::new("corruption");
    let source = temp.0.join("source");
    let scratch = temp.0.join("scratch");
    let answered = answered_directory(&source).await;
    let segment = last_segment(&source);
    let segment_rel = segment.strip_prefix(&source).unwrap().to_path_buf();
    let offsets = record_offsets(&segment);
    assert!(offsets.len() > 10, "{} records", offsets.len());
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);

    // The case: the high bit of the length of a middle record.
    let middle = offsets[offsets.len() / 2];
    let refused = case(
        &source,
        &scratch,
        &segment_rel,
        &answered,
        "length high bit",
        flip((middle + 3) * 8 + 7),
    )
    .await;
    assert!(refused, "a length's flipped high bit was not refused");

    // Every header field (length, kind, LSN, payload CRC, header CRC) of
    // the first, a middle and the last record, and payload bits.
    let fields = [(0, 4), (4, 1), (5, 8), (13, 4), (17, 4)];
    let picks = [offsets[0], middle, *offsets.last().unwrap()];
    for (r, &start) in picks.iter().enumerate() {
        for (field, &(at, bytes)) in fields.iter().enumerate() {
            let bit = (start + at) * 8 + rng.random_range(0..bytes * 8);
            let name = format!("record {r} field {field} bit {bit}");
            case(&source, &scratch, &segment_rel, &answered, &name, flip(bit)).await;
        }
        let end = offsets
            .iter()
            .find(|&&o| o > start)
            .copied()
            .unwrap_or_else(|| {
                let bytes = std::fs::read(&segment).unwrap();
                bytes.iter().rposition(|b| *b != 0).unwrap() + 1
            });
        let payload = (start + RECORD_HEADER_BYTES) * 8..end * 8;
        for _ in 0..if payload.is_empty() { 0 } else { DRAWS } {
            let bit = rng.random_range(payload.clone());
            case(
                &source,
                &scratch,
                &segment_rel,
                &answered,
                &format!("record {r} payload bit {bit}"),
                flip(bit),
            )
            .await;
        }
    }

    // Zeros from a point inside the records before the last: what follows
    // held answered records, so the file must not start short of them.
    for _ in 0..DRAWS * 2 {
        let at = rng.random_range(offsets[0] + 1..*offsets.last().unwrap());
        let refused = case(
            &source,
            &scratch,
            &segment_rel,
            &answered,
            &format!("cut at {at}"),
            move |file: &Path| {
                let bytes = std::fs::read(file).unwrap();
                let mut cut = bytes[..at].to_vec();
                cut.resize(bytes.len(), 0);
                cut[at..].fill(0);
                std::fs::write(file, cut).unwrap();
            },
        )
        .await;
        let _ = refused;
    }

    // The journal's only (so oldest) segment removed.
    let refused = case(
        &source,
        &scratch,
        &segment_rel,
        &answered,
        "segment removed",
        |file: &Path| {
            std::fs::remove_file(file).unwrap();
        },
    )
    .await;
    assert!(refused, "a removed segment was not refused");

    // Snapshot files: header bytes, body bytes, and a missing file.
    let snapshots = source.join("snapshots");
    let shard = PathBuf::from("snapshots").join("shard-0.snap");
    let length = std::fs::metadata(snapshots.join("shard-0.snap"))
        .unwrap()
        .len() as usize;
    for byte in [0, 17, 25] {
        let refused = case(
            &source,
            &scratch,
            &shard,
            &answered,
            &format!("snapshot header byte {byte}"),
            flip(byte * 8),
        )
        .await;
        assert!(refused, "snapshot header byte {byte} was not refused");
    }
    for _ in 0..DRAWS {
        let bit = rng.random_range(32 * 8..length * 8);
        let refused = case(
            &source,
            &scratch,
            &shard,
            &answered,
            &format!("snapshot body bit {bit}"),
            flip(bit),
        )
        .await;
        assert!(refused, "snapshot body bit {bit} was not refused");
    }
    for name in ["shard-0.snap", "router-0.snap", "catalog.snap"] {
        let relative = PathBuf::from("snapshots").join(name);
        let refused = case(
            &source,
            &scratch,
            &relative,
            &answered,
            &format!("missing {name}"),
            |file: &Path| {
                std::fs::remove_file(file).unwrap();
            },
        )
        .await;
        assert!(refused, "a missing {name} was not refused");
    }
}
