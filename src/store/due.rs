//! When a snapshot is due: once `snapshot_interval_ms` has passed or the
//! journal has written `snapshot_every_records` records since the last
//! one. Time is looked at every `SNAPSHOT_CHECK_MS`; the records trigger
//! wakes the waiter from the journal's writer as the commit that passes it
//! is written, so a short-lived or busy daemon does not run a second past
//! it. The single node's snapshot loop and a leading replica's share it.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;

use super::StoreSettings;
use crate::journal::JournalStats;

/// How often the waiter looks at the clock.
const SNAPSHOT_CHECK_MS: u64 = 1000;

/// The triggers of the next snapshot.
pub struct SnapshotDue {
    stats: Arc<JournalStats>,
    interval_ms: u64,
    every_records: u64,
    last: Instant,
    records_at_last: u64,
}

impl SnapshotDue {
    /// Counting from now, on the journal whose `stats` these are.
    pub fn new(stats: Arc<JournalStats>, settings: &StoreSettings) -> SnapshotDue {
        let records_at_last = stats.records.load(Ordering::SeqCst);
        SnapshotDue {
            stats,
            interval_ms: settings.snapshot_interval_ms,
            every_records: settings.snapshot_every_records,
            last: Instant::now(),
            records_at_last,
        }
    }

    /// Waits until a snapshot is due: true, or false once `stop` is
    /// notified. A stop is looked at before each wait, since a busy
    /// journal may have the next snapshot due at once.
    pub async fn wait(&mut self, stop: &tokio::sync::Notify) -> bool {
        let mut interval = tokio::time::interval(Duration::from_millis(SNAPSHOT_CHECK_MS));
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if stop.notified().now_or_never().is_some() {
                return false;
            }
            if self.every_records > 0 {
                // Set before the count is read: a commit past it either
                // shows in the count below or wakes the wait.
                (self.stats.mark).set(self.records_at_last + self.every_records);
            }
            let records = self.stats.records.load(Ordering::SeqCst);
            let by_time = self.interval_ms > 0
                && self.last.elapsed() >= Duration::from_millis(self.interval_ms);
            let by_records =
                self.every_records > 0 && records - self.records_at_last >= self.every_records;
            if by_time || by_records {
                return true;
            }
            tokio::select! {
                _ = interval.tick() => {}
                _ = self.stats.mark.passed() => {}
                _ = stop.notified() => return false,
            }
        }
    }

    /// A snapshot was written: the next is counted from now.
    pub fn taken(&mut self) {
        self.last = Instant::now();
        self.records_at_last = self.stats.records.load(Ordering::SeqCst);
    }
}
