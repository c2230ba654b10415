//! What-if replay over a journal the real daemon recorded: the same policy
//! reproduces every decision, and a fewest-shipments-first policy does not
//! split more, with the difference in the report; a cut or damaged journal
//! gives a report of what is whole, or a clear error.

mod common;

use std::path::Path;
use std::process::Command;

use common::daemon::Daemon;
use common::TempDir;
use omniroute_protocol::{Decision, Method, Order, OrderKey, StockSet};

/// A and B: the store next to the customer has only A; the southern
/// warehouse has both. Nearest-first splits an A+B order in two; shipping
/// it whole from the warehouse is one shipment.
fn config(dir: &Path, rules: &[&str]) -> String {
    format!(
        "{}\n{}\n[journal]\nkeep_segments = true\n{}\n{}\n{}",
        common::NODES,
        common::server_section(dir),
        common::channel("web", rules),
        common::channel("c", &["nearest"]),
        common::stock(&[("A", "ST-1", 50), ("A", "WH-S", 100), ("B", "WH-S", 60)])
    )
}

fn order(id: &str, lines: &[(&str, u32)]) -> Order {
    Order {
        channel: "web".into(),
        client_order_id: id.into(),
        lat: 50.0,
        lon: 10.0,
        market: Some("A".into()),
        method: Method::Ship,
        hold_ttl_ms: None,
        lines: lines.iter().map(|(s, q)| (s.to_string(), *q)).collect(),
    }
}

/// Runs the daemon on `dir`, sends a stream of orders one at a time (with
/// cancels and a stock count among them), and stops it with SIGTERM.
/// Returns (routed, rejected, cancelled) as answered.
async fn record(dir: &Path, config_path: &Path) -> (usize, usize, u64) {
    let mut daemon = Daemon::start(dir, Some(config_path), "off").await;
    let web = daemon.client(common::CHANNEL_WEB_TOKEN).await;
    let admin = daemon.client(common::ADMIN_TOKEN).await;
    let (mut routed, mut rejected, mut cancelled) = (0, 0, 0);
    for i in 0..120 {
        let id = format!("o-{i}");
        let lines: &[(&str, u32)] = if i % 3 == 0 {
            &[("A", 1)]
        } else {
            &[("A", 1), ("B", 1)]
        };
        match web.submit(order(&id, lines)).await.unwrap() {
            Decision::Routed { .. } => routed += 1,
            Decision::Rejected { .. } => rejected += 1,
        }
        if i % 10 == 5 {
            let key = OrderKey {
                channel: "web".into(),
                client_order_id: id,
            };
            if web.cancel(key).await.is_ok() {
                cancelled += 1;
            }
        }
        if i == 60 {
            admin
                .stock_set(vec![StockSet {
                    sku: "B".into(),
                    node: "WH-S".into(),
                    on_hand: 30,
                    safety_stock: None,
                }])
                .await
                .unwrap();
        }
    }
    let status = daemon.terminate().await;
    assert!(status.success());
    (routed, rejected, cancelled)
}

/// `omniroute --config CONFIG replay --policy POLICY`, to add to and run.
fn replay_command(config_path: &Path, policy: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_omniroute"));
    command
        .arg("--config")
        .arg(config_path)
        .arg("replay")
        .arg("--policy")
        .arg(policy);
    command
}

/// Runs `omniroute replay` and returns (its stdout, its JSON report).
fn replay(dir: &Path, config_path: &Path, policy: &Path) -> (String, serde_json::Value) {
    replay_on(dir, config_path, policy, 2)
}

/// [`replay`] on `threads` threads.
fn replay_on(
    dir: &Path,
    config_path: &Path,
    policy: &Path,
    threads: u8,
) -> (String, serde_json::Value) {
    let json = dir.join("report.json");
    let output = replay_command(config_path, policy)
        .arg("--threads")
        .arg(threads.to_string())
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["threads"], threads, "{stdout}");
    (stdout, report)
}

/// A report without what differs between runs of the same replay: its
/// timings, its threads, and how many plans were made ahead.
fn decided(mut report: serde_json::Value) -> serde_json::Value {
    let fields = report.as_object_mut().unwrap();
    for key in [
        "elapsed_ms",
        "orders_per_second",
        "threads",
        "plans_ahead_used",
        "plans_in_line",
    ] {
        assert!(fields.remove(key).is_some(), "the report has {key}");
    }
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_reproduces_the_recorded_decisions_and_compares_a_fewest_shipments_policy() {
    // Proves replaying a real journal under its own policy gives every recorded decision back,
    // and under fewest_shipments first the split rate does not rise and the report says so.
    let dir = TempDir::new("replay");
    let nearest = dir.0.join("nearest.toml");
    std::fs::write(&nearest, config(&dir.0, &["nearest"])).unwrap();
    let (routed, rejected, cancelled) = record(&dir.0, &nearest).await;
    assert!(
        routed > 40 && rejected > 0,
        "{routed} routed, {rejected} rejected"
    );

    let (stdout, same) = replay(&dir.0, &nearest, &nearest);
    let recorded = &same["recorded"];
    assert_eq!(recorded["orders"], 120, "{stdout}");
    assert_eq!(recorded["routed"], routed as u64, "{stdout}");
    assert_eq!(same["different_decisions"], 0, "{stdout}");
    assert_eq!(same["same_decisions"], 120, "{stdout}");
    assert_eq!(same["recorded"], same["what_if"], "{stdout}");
    assert!(cancelled > 0);
    assert_eq!(same["releases_applied"], cancelled, "{stdout}");
    assert!(recorded["split_rate"].as_f64().unwrap() > 0.3, "{stdout}");

    let fewest = dir.0.join("fewest.toml");
    std::fs::write(
        &fewest,
        common::channel("web", &["fewest_shipments", "nearest"]),
    )
    .unwrap();
    let (stdout, other) = replay(&dir.0, &nearest, &fewest);
    let (before, after) = (&other["recorded"], &other["what_if"]);
    assert_eq!(
        before, recorded,
        "the recorded side does not depend on the what-if"
    );
    let split = |side: &serde_json::Value| side["split_rate"].as_f64().unwrap();
    assert!(split(after) <= split(before), "{stdout}");
    assert!(
        split(after) < split(before),
        "this stream has orders to consolidate: {stdout}"
    );
    assert!(
        other["different_decisions"].as_u64().unwrap() > 0,
        "{stdout}"
    );
    assert!(stdout.contains("split rate"), "{stdout}");
    assert!(
        stdout.contains(&format!("{:.2} %", split(after) * 100.0)),
        "{stdout}"
    );
    // One thread reads, plans and places in turn: the same report.
    let (stdout, alone) = replay_on(&dir.0, &nearest, &fewest, 1);
    assert_eq!(decided(alone), decided(other.clone()), "{stdout}");

    // The journal's reading runs on a thread of its own: a torn tail and a
    // damaged record must still come back as a report and a clear error.
    // The tear falls in the middle of the whole journal's records, as if
    // the crash came while writing that record: the sectors of it after
    // the first never reached the disk (zeros, as the prepared segment
    // was), and the later segments were never made. The record is one
    // that crosses a sector boundary, so that some sector of it is
    // missing. (Tearing the last segment was flaky: under load the
    // writer's segments can end such that the last one holds only
    // follow-ups, and then every order survived.)
    const SECTOR: usize = omniroute::journal::record::TORN_WRITE_SECTOR_BYTES;
    let segments = common::journal_segments(&dir.0.join("journal"));
    let found: Vec<(usize, usize)> = segments
        .iter()
        .enumerate()
        .flat_map(|(i, path)| {
            let bytes = std::fs::read(path).unwrap();
            omniroute::journal::scan_segment(&bytes, None)
                .records
                .into_iter()
                .map(move |record| (i, record.payload.start, record.payload.end))
        })
        .filter(|(_, start, end)| start / SECTOR != (end - 1) / SECTOR)
        .map(|(i, start, _)| (i, (start / SECTOR + 1) * SECTOR))
        .collect();
    let (torn, boundary) = found[found.len() / 2];
    for later in &segments[torn + 1..] {
        std::fs::remove_file(later).unwrap();
    }
    let last = &segments[torn];
    let mut bytes = std::fs::read(last).unwrap();
    bytes[boundary..].fill(0);
    std::fs::write(last, &bytes).unwrap();
    for threads in [1, 2] {
        let (stdout, cut) = replay_on(&dir.0, &nearest, &nearest, threads);
        assert_eq!(cut["torn_tail"], true, "{stdout}");
        let orders = cut["recorded"]["orders"].as_u64().unwrap();
        assert!(orders > 0 && orders < 120, "{stdout}");
        assert_eq!(cut["different_decisions"], 0, "{stdout}");
    }

    let first = &segments[0];
    let mut bytes = std::fs::read(first).unwrap();
    let used = bytes.iter().rposition(|b| *b != 0).unwrap() + 1;
    bytes[used / 4] ^= 0x5a;
    std::fs::write(first, &bytes).unwrap();
    for threads in ["1", "2"] {
        let output = replay_command(&nearest, &nearest)
            .args(["--threads", threads])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{stderr}");
        assert!(
            stderr.contains("corrupt") && !stderr.contains("panicked"),
            "{stderr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_directory_of_format_2_is_replayed_as_it_is() {
    // Proves `omniroute replay` reads the journal of a format-2 directory (records without a
    // header checksum, not yet upgraded by a daemon's start): the same report as the same
    // journal in format 3, and the directory is left as it was (still format 2).
    let dir = TempDir::new("replay-format-2");
    let nearest = dir.0.join("nearest.toml");
    std::fs::write(&nearest, config(&dir.0, &["nearest"])).unwrap();
    record(&dir.0, &nearest).await;
    let (stdout, current) = replay(&dir.0, &nearest, &nearest);
    assert_eq!(current["recorded"]["orders"], 120, "{stdout}");

    common::downgrade_to_format_2(&dir.0);
    let journal: Vec<Vec<u8>> = common::journal_segments(&dir.0.join("journal"))
        .iter()
        .map(|segment| std::fs::read(segment).unwrap())
        .collect();
    for threads in [1, 2] {
        let (stdout, old) = replay_on(&dir.0, &nearest, &nearest, threads);
        assert_eq!(decided(old), decided(current.clone()), "{stdout}");
    }
    assert_eq!(
        common::format_version(&dir.0),
        2,
        "the replay upgraded nothing"
    );
    let after: Vec<Vec<u8>> = common::journal_segments(&dir.0.join("journal"))
        .iter()
        .map(|segment| std::fs::read(segment).unwrap())
        .collect();
    assert!(after == journal, "the replay changed a segment");
}

#[test]
fn a_thread_count_the_replay_cannot_use_is_refused() {
    // Proves --threads outside 1..=2 is refused by name before any journal is read.
    let dir = TempDir::new("replay-threads");
    let config_path = dir.0.join("c.toml");
    std::fs::write(&config_path, config(&dir.0, &["nearest"])).unwrap();
    for threads in ["0", "3", "many"] {
        let output = replay_command(&config_path, &config_path)
            .args(["--threads", threads])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains("--threads"), "{stderr}");
    }
}

#[test]
fn a_reader_of_the_output_that_goes_away_ends_a_command_quietly() {
    // Proves a closed stdout (`replay | head`) ends the command without a panic.
    let dir = TempDir::new("closed-stdout");
    let config_path = dir.0.join("c.toml");
    std::fs::write(&config_path, config(&dir.0, &["nearest"])).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_omniroute"))
        .arg("--config")
        .arg(&config_path)
        .args(["check-config"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn a_policy_naming_an_unknown_channel_or_rule_is_refused() {
    // Proves the replay checks its policy file before reading the journal, naming the key.
    let dir = TempDir::new("replay-bad");
    let config_path = dir.0.join("c.toml");
    std::fs::write(&config_path, config(&dir.0, &["nearest"])).unwrap();
    for (policy, key) in [
        (common::channel("nope", &["nearest"]), "channels.nope"),
        (common::channel("web", &["closest"]), "channels.web"),
    ] {
        let path = dir.0.join("p.toml");
        std::fs::write(&path, policy).unwrap();
        let output = replay_command(&config_path, &path).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{stderr}");
        assert!(stderr.contains(key), "{stderr}");
    }
}
