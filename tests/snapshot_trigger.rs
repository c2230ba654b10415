//! The records trigger of the real daemon: a snapshot begins as the journal
//! passes `snapshot_every_records`, not at the snapshot loop's next look at
//! the clock a second later.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::daemon::{sample, web_order, Daemon};
use common::TempDir;

/// Journal records between two snapshots.
const SNAPSHOT_EVERY_RECORDS: u64 = 30;
/// How soon after the journal passes the trigger a snapshot must begin:
/// the loop's clock looks come a second apart, so a wait of this much
/// would be missed three times in a row by chance only once in 60.
const PROMPT_WITHIN_MS: u64 = 250;
/// Times the trigger is passed.
const ROUNDS: usize = 3;

/// The embedded config with a small sample stock, no time trigger, and a
/// snapshot every `SNAPSHOT_EVERY_RECORDS` records.
fn write_config(dir: &Path) -> PathBuf {
    common::embedded_config_with(
        dir,
        "trigger.toml",
        &[
            ("skus = 10000", "skus = 100".into()),
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

/// (journal records, snapshots begun, snapshots written) from /metrics.
async fn counts(daemon: &Daemon) -> (u64, u64, u64) {
    let page = daemon.metrics().await;
    let count = |series| sample(&page, series) as u64;
    (
        count("omniroute_journal_records_total"),
        count("omniroute_snapshots_started_total"),
        count("omniroute_snapshots_total"),
    )
}

/// Waits until no snapshot is under way; the counts then.
async fn quiet(daemon: &Daemon) -> (u64, u64, u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = counts(daemon).await;
        if now.1 == now.2 {
            return now;
        }
        assert!(Instant::now() < deadline, "a snapshot never ended: {now:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_begins_as_the_journal_passes_the_records_trigger() {
    // Proves the records trigger begins a snapshot within PROMPT_WITHIN_MS of the commit
    // that passes it, each of ROUNDS times, so a daemon killed a second after a burst of
    // records has a snapshot under way or written.
    let dir = TempDir::new("snapshot-trigger");
    let config = write_config(&dir.0);
    let daemon = Daemon::start(&dir.0, Some(&config), "127.0.0.1:0").await;
    let client = daemon.client("dev-web-token").await;
    let mut next = 0;
    let mut waits = Vec::new();
    for round in 0..ROUNDS {
        let (base, started, _) = quiet(&daemon).await;
        // One order at a time, the counts read after each answer: the
        // first read at or past the trigger is within an order of it.
        let passed = loop {
            next += 1;
            client
                .submit(web_order(
                    format!("st-{next}"),
                    vec![(format!("SKU-{}", 1 + next % 100), 1)],
                ))
                .await
                .expect("an answer");
            let now = counts(&daemon).await;
            if now.1 > started {
                // Begun before this loop saw the count pass: as prompt
                // as it can tell.
                break None;
            }
            if now.0 >= base + SNAPSHOT_EVERY_RECORDS {
                break Some(Instant::now());
            }
        };
        let Some(passed) = passed else {
            waits.push(None);
            continue;
        };
        loop {
            let now = counts(&daemon).await;
            if now.1 > started {
                waits.push(Some(passed.elapsed()));
                break;
            }
            assert!(
                passed.elapsed() < Duration::from_millis(PROMPT_WITHIN_MS),
                "round {round}: no snapshot begun {PROMPT_WITHIN_MS} ms after the journal passed {SNAPSHOT_EVERY_RECORDS} records: {now:?}"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    // None: begun before the count was seen past the trigger.
    println!("waits from the trigger to a snapshot begun: {waits:?}");
}
