//! Damaged data directories and the real daemon: orders are answered, the
//! daemon is killed, and a copy of its directory is damaged one way at a
//! time (header fields and payload bits of journal records in the last
//! segment and in an earlier one, the segment header, truncations of the
//! last segment and of an earlier one, a bit in its unwritten zeros,
//! snapshot bytes, a missing snapshot, a missing oldest or middle
//! segment). Each start must refuse, naming the file, or come up with
//! every answered order and the stock as answered: never start with an
//! answered order silently gone.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::daemon::{Daemon, Refused};
use common::TempDir;
use omniroute::journal::record::RECORD_HEADER_BYTES;
use omniroute_client::Client;
use omniroute_protocol::{Decision, OrderKey, StockSet};
use rand::{Rng, SeedableRng};

const ADMIN: &str = "dev-admin-token";
const WEB: &str = "dev-web-token";
const NODES: [&str; 2] = ["WH-DE-HAM", "WH-DE-NUE"];
const SKUS: usize = 3;
/// Orders answered before the snapshot of a graceful stop, and in each
/// round after it.
const ORDERS_BEFORE_SNAPSHOT: usize = 25;
const ORDERS_PER_ROUND: usize = 20;
/// Rounds after the snapshot: each a stock count of new SKUs (one large
/// record) and orders, so that the journal after the snapshot fills
/// several segments of the smallest size with orders in each.
const ROUNDS: usize = 6;
/// New SKUs counted in each round's stock count.
const FILLER_SKUS: usize = 12_000;
/// Damage positions drawn per kind of damage (seeded: repeatable).
const DRAWS: usize = 3;

fn sku(i: usize) -> String {
    format!("DMG-{i}")
}

fn key(id: &str) -> OrderKey {
    OrderKey {
        channel: "web".into(),
        client_order_id: id.into(),
    }
}

/// The daemon's default config with the smallest journal segments (so
/// that the orders fill several), snapshots only at a graceful stop, and
/// little sample stock (a start loads less).
fn config_file(dir: &Path) -> PathBuf {
    common::embedded_config_with(
        dir,
        "omniroute.toml",
        &[
            ("segment_bytes = 67108864", "segment_bytes = 1048576".into()),
            (
                "snapshot_interval_ms = 60000",
                "snapshot_interval_ms = 0".into(),
            ),
            (
                "snapshot_every_records = 250000",
                "snapshot_every_records = 0".into(),
            ),
            ("skus = 10000", "skus = 100".into()),
        ],
    )
}

/// What the daemon answered: each routed order's allocations, and the
/// ATP of every cell at the end.
#[derive(Default)]
struct Answered {
    orders: BTreeMap<String, Vec<(String, String, u32)>>,
    atp: BTreeMap<(String, String), u32>,
    /// The first and last SKU of each round's stock count, and its count.
    filler: Vec<(String, u32)>,
}

fn filler_sku(round: usize, j: usize) -> String {
    format!("FILL-{round}-{j:05}")
}

/// Counts `FILLER_SKUS` new SKUs at the first node: one large record.
async fn count_filler(admin: &Client, round: usize, answered: &mut Answered) {
    let count = |j: usize| 1 + (j % 7) as u32;
    let entries = (0..FILLER_SKUS)
        .map(|j| StockSet {
            sku: filler_sku(round, j),
            node: NODES[0].into(),
            on_hand: count(j),
            safety_stock: Some(0),
        })
        .collect();
    admin.stock_set(entries).await.expect("filler stock");
    for j in [0, FILLER_SKUS - 1] {
        answered.filler.push((filler_sku(round, j), count(j)));
    }
}

/// Whether the filler SKUs have the counts they were given.
async fn filler_holds(client: &Client, answered: &Answered) -> bool {
    for (sku, count) in &answered.filler {
        let nodes = client.availability(sku, None).await.expect("availability");
        if nodes.iter().map(|n| n.atp).sum::<u32>() != *count {
            return false;
        }
    }
    true
}

async fn answer_orders(client: &Client, run: usize, count: usize, answered: &mut Answered) {
    for i in 0..count {
        // Four digits: no id is the beginning of another (see `orders_from`).
        let id = format!("r{run}-{i:04}");
        let order =
            common::daemon::web_order(id.clone(), vec![(sku(i % SKUS), 1 + (i % 2) as u32)]);
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
/// of several segments after it, the daemon killed: what it answered.
async fn answered_directory(dir: &Path, config: &Path) -> Answered {
    let mut answered = Answered::default();
    let mut daemon = Daemon::start(dir, Some(config), "off").await;
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
    let web = daemon.client(WEB).await;
    answer_orders(&web, 0, ORDERS_BEFORE_SNAPSHOT, &mut answered).await;
    assert!(daemon.terminate().await.success());
    let daemon = Daemon::start(dir, Some(config), "off").await;
    let web = daemon.client(WEB).await;
    let admin = daemon.client(ADMIN).await;
    for round in 1..=ROUNDS {
        count_filler(&admin, round, &mut answered).await;
        answer_orders(&web, round, ORDERS_PER_ROUND, &mut answered).await;
    }
    answered.atp = atp_of(&admin).await;
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
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Refused,
    /// Started with every answered order.
    Whole,
}

/// Starts on `dir`, damaged as `case` says: a refusal must name `file`; a
/// start must hold every answered order and the answered stock.
async fn refused_or_whole(
    dir: &Path,
    config: &Path,
    file: &Path,
    answered: &Answered,
    case: &str,
) -> Outcome {
    let daemon = match Daemon::try_start(dir, Some(config), "off", &[], None).await {
        Err(Refused { status, log }) => {
            assert!(
                !status.success(),
                "{case}: exited 0 without listening: {log}"
            );
            // The damaged file, or what the damage left out of step with
            // it (the snapshot the journal no longer reaches).
            let name = file.file_name().unwrap().to_str().unwrap();
            let dir = dir.display().to_string();
            assert!(
                log.contains(name) || log.contains(&dir),
                "{case}: the refusal does not name {name}:\n{log}"
            );
            assert!(log.contains("refusing to start"), "{case}:\n{log}");
            return Outcome::Refused;
        }
        Ok(daemon) => daemon,
    };
    let client = daemon.client(ADMIN).await;
    for (id, placed) in &answered.orders {
        let view = match client.get_order(key(id)).await {
            Ok(view) => view,
            Err(e) => panic!("{case}: answered order {id} is gone: {e}"),
        };
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
    assert!(filler_holds(&client, answered).await, "{case}: counts");
    let mut child = daemon.child;
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    Outcome::Whole
}

/// Where a segment's records are, and where they end.
struct Records {
    offsets: Vec<usize>,
    end: usize,
}

fn records_of(segment: &Path) -> Records {
    let bytes = std::fs::read(segment).unwrap();
    let scan = omniroute::journal::scan_segment(&bytes, None);
    Records {
        offsets: scan.records.iter().map(|r| r.offset).collect(),
        end: scan.records.last().map_or(0, |r| r.payload.end),
    }
}

/// The directory answered in, the scratch copy damaged per case, and what
/// was answered.
struct Cases<'a> {
    source: &'a Path,
    scratch: &'a Path,
    config: &'a Path,
    answered: &'a Answered,
}

impl Cases<'_> {
    /// Applies `damage` to the file `relative` of a fresh copy of the
    /// source, then starts on it.
    async fn run(&self, relative: &Path, name: &str, damage: impl FnOnce(&Path)) -> Outcome {
        let _ = std::fs::remove_dir_all(self.scratch);
        copy_dir(self.source, self.scratch);
        let file = self.scratch.join(relative);
        damage(&file);
        let outcome = refused_or_whole(self.scratch, self.config, &file, self.answered, name).await;
        eprintln!("{name}: {outcome:?}");
        outcome
    }
}

fn flip(bit: usize) -> impl FnOnce(&Path) {
    move |file: &Path| {
        let mut bytes = std::fs::read(file).unwrap();
        bytes[bit / 8] ^= 1 << (bit % 8);
        std::fs::write(file, bytes).unwrap();
    }
}

fn truncate(length: usize) -> impl FnOnce(&Path) {
    move |file: &Path| {
        let file = std::fs::OpenOptions::new().write(true).open(file).unwrap();
        file.set_len(length as u64).unwrap();
    }
}

fn remove(file: &Path) {
    std::fs::remove_file(file).unwrap();
}

/// Header fields of a journal record: (offset, bytes) of length, kind,
/// LSN, payload CRC, header CRC.
const FIELDS: [(usize, usize); 5] = [(0, 4), (4, 1), (5, 8), (13, 4), (17, 4)];

/// Every header field, and `DRAWS` payload bits, of the records of
/// `segment` at `picks` (indexes into its records): each start must
/// refuse, or (unless `must_refuse`) start whole.
async fn damage_records(
    cases: &Cases<'_>,
    segment: &Path,
    picks: &[usize],
    must_refuse: bool,
    rng: &mut rand::rngs::StdRng,
) {
    let relative = segment.strip_prefix(cases.source).unwrap();
    let which = relative.file_name().unwrap().to_string_lossy().into_owned();
    let records = records_of(segment);
    for &pick in picks {
        let start = records.offsets[pick];
        let end = records
            .offsets
            .get(pick + 1)
            .copied()
            .unwrap_or(records.end);
        let mut bits: Vec<(String, usize)> = FIELDS
            .iter()
            .enumerate()
            .map(|(field, &(at, bytes))| {
                let bit = (start + at) * 8 + rng.random_range(0..bytes * 8);
                (
                    format!("{which} record {pick} field {field} bit {bit}"),
                    bit,
                )
            })
            .collect();
        let payload = (start + RECORD_HEADER_BYTES) * 8..end * 8;
        for _ in 0..if payload.is_empty() { 0 } else { DRAWS } {
            let bit = rng.random_range(payload.clone());
            bits.push((format!("{which} record {pick} payload bit {bit}"), bit));
        }
        for (name, bit) in bits {
            let outcome = cases.run(relative, &name, flip(bit)).await;
            assert!(
                !must_refuse || outcome == Outcome::Refused,
                "{name}: damage before the last segment was not refused"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damage_is_refused_or_loses_no_answered_order() {
    // Proves that for every field of a journal record's header (first, middle and last
    // record of the last segment and of an earlier one), payload bits,
    // truncations of the last segment and an earlier one, the segment header, a bit in its
    // unwritten zeros, snapshot header and body bytes, a missing snapshot and a missing oldest
    // or middle segment, the daemon refuses to start naming the file, or starts with every
    // answered order and the answered stock; that the case
    // (the high bit of a length) is refused in either segment; and that damage in an earlier
    // segment and a missing segment are always refused.
    let temp = TempDir::new("corruption");
    let source = temp.0.join("source");
    let scratch = temp.0.join("scratch");
    let config = config_file(&temp.0);
    let answered = answered_directory(&source, &config).await;
    let cases = Cases {
        source: &source,
        scratch: &scratch,
        config: &config,
        answered: &answered,
    };
    let segments = common::journal_segments(&source.join("journal"));
    assert!(
        segments.len() >= 3,
        "{} segments, {} records ending at {}",
        segments.len(),
        records_of(segments.last().unwrap()).offsets.len(),
        records_of(segments.last().unwrap()).end
    );
    let last = segments.last().unwrap();
    let earlier = &segments[segments.len() - 2];
    let last_rel = last.strip_prefix(&source).unwrap().to_path_buf();
    let in_last = records_of(last);
    let in_earlier = records_of(earlier);
    assert!(
        in_last.offsets.len() > 3,
        "{} records",
        in_last.offsets.len()
    );
    assert!(
        in_earlier.offsets.len() > 3,
        "{} records",
        in_earlier.offsets.len()
    );
    eprintln!(
        "{} segments; the last holds {} records, the one before it {}",
        segments.len(),
        in_last.offsets.len(),
        in_earlier.offsets.len()
    );
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);

    // The control: an undamaged copy starts whole, so each refusal below
    // is the damage's doing, not the copy's.
    let outcome = cases.run(&last_rel, "no damage", |_| {}).await;
    assert_eq!(outcome, Outcome::Whole, "an undamaged copy");

    // The case: the high bit of the length of a middle record.
    for (segment, records) in [(last, &in_last), (earlier, &in_earlier)] {
        let middle = records.offsets[records.offsets.len() / 2];
        let relative = segment.strip_prefix(&source).unwrap();
        let name = format!("{} length high bit", relative.display());
        let outcome = cases.run(relative, &name, flip((middle + 3) * 8 + 7)).await;
        assert_eq!(outcome, Outcome::Refused, "{name}");
    }

    // Every header field and payload bits: the first, a middle and the
    // last record of the last segment and of an earlier one.
    let n = in_last.offsets.len();
    damage_records(&cases, last, &[0, n / 2, n - 1], false, &mut rng).await;
    let n = in_earlier.offsets.len();
    damage_records(&cases, earlier, &[0, n / 2, n - 1], true, &mut rng).await;

    // A bit in the zeros after the last record (a prepared segment's rest).
    let length = std::fs::metadata(last).unwrap().len() as usize;
    assert!(length > in_last.end + 4096, "the last segment was prepared");
    let bit = rng.random_range((in_last.end + 1024) * 8..length * 8);
    cases
        .run(
            &last_rel,
            &format!("bit {bit} in the unwritten zeros"),
            flip(bit),
        )
        .await;

    // Truncations: the last segment in its zeros, at the end of its
    // records, inside its last and a middle record; an earlier segment
    // inside a record. Each leaves a segment shorter than its header says
    // it was prepared: refused, though a cut in the zeros lost nothing (a
    // file system does not cut files; whatever did may have cut more).
    let middle = in_last.offsets[in_last.offsets.len() / 2];
    let last_record = *in_last.offsets.last().unwrap();
    for at in [
        in_last.end + 512,
        in_last.end,
        last_record + 30,
        middle + 30,
    ] {
        let name = format!("the last segment truncated at {at}");
        let outcome = cases.run(&last_rel, &name, truncate(at)).await;
        assert_eq!(outcome, Outcome::Refused, "{name}");
    }
    let earlier_rel = earlier.strip_prefix(&source).unwrap();
    let at = in_earlier.offsets[in_earlier.offsets.len() / 2] + 30;
    let name = format!("an earlier segment truncated at {at}");
    let outcome = cases.run(earlier_rel, &name, truncate(at)).await;
    assert_eq!(outcome, Outcome::Refused, "{name}");

    // The segment header: each of its bytes.
    for byte in [0, 7, 8, 15, 16, 20, 23] {
        let name = format!("the last segment's header byte {byte}");
        let outcome = cases.run(&last_rel, &name, flip(byte * 8 + 1)).await;
        assert_eq!(outcome, Outcome::Refused, "{name}");
    }

    // The last segment removed: the one before it is sealed (the writer
    // went on), so the journal's end is known to be missing.
    let outcome = cases.run(&last_rel, "last segment removed", remove).await;
    assert_eq!(outcome, Outcome::Refused, "the last segment removed");

    // Segments removed: the oldest, and one in the middle.
    for (i, what) in [(0, "oldest"), (segments.len() / 2, "middle")] {
        let relative = segments[i].strip_prefix(&source).unwrap();
        let outcome = cases
            .run(relative, &format!("{what} segment removed"), remove)
            .await;
        assert_eq!(outcome, Outcome::Refused, "the {what} segment removed");
    }

    // Snapshot files: header bytes, body bytes, and a missing file.
    let snapshots = source.join("snapshots");
    let shard = PathBuf::from("snapshots").join("shard-0.snap");
    let length = std::fs::metadata(snapshots.join("shard-0.snap"))
        .unwrap()
        .len() as usize;
    for byte in [0, 17, 25] {
        let name = format!("snapshot header byte {byte}");
        let outcome = cases.run(&shard, &name, flip(byte * 8)).await;
        assert_eq!(outcome, Outcome::Refused, "{name}");
    }
    for _ in 0..DRAWS {
        let bit = rng.random_range(32 * 8..length * 8);
        let name = format!("snapshot body bit {bit}");
        let outcome = cases.run(&shard, &name, flip(bit)).await;
        assert_eq!(outcome, Outcome::Refused, "{name}");
    }
    for name in ["shard-0.snap", "router-0.snap", "catalog.snap"] {
        let relative = PathBuf::from("snapshots").join(name);
        let outcome = cases
            .run(&relative, &format!("missing {name}"), remove)
            .await;
        assert_eq!(outcome, Outcome::Refused, "a missing {name}");
    }
}
