//! A mark on the journal's record count that wakes one waiter when a
//! commit passes it: the snapshot loop's records trigger, seen as the
//! records are written, not at its next look at the clock.
//!
//! The writer pays one atomic load per group commit; only the commit that
//! passes the mark takes it down and wakes the waiter.

use std::sync::atomic::{AtomicU64, Ordering};

/// No mark set: no record count reaches it.
const UNSET: u64 = u64::MAX;

/// The record count a waiter wants to hear of, and how it hears.
#[derive(Debug)]
pub struct RecordMark {
    at: AtomicU64,
    passed: tokio::sync::Notify,
}

impl Default for RecordMark {
    fn default() -> RecordMark {
        RecordMark {
            at: AtomicU64::new(UNSET),
            passed: tokio::sync::Notify::new(),
        }
    }
}

impl RecordMark {
    /// Wakes the waiter when the count of records written reaches `at`.
    /// The caller reads the count after this: a commit that passed `at`
    /// before the mark was set is seen there, one after it wakes the
    /// waiter (both sides are sequentially consistent).
    pub fn set(&self, at: u64) {
        self.at.store(at, Ordering::SeqCst);
    }

    /// Called by the writer with the count of records written so far,
    /// after it has counted a commit's.
    pub(super) fn reached(&self, records: u64) {
        let at = self.at.load(Ordering::SeqCst);
        // Only the commit that takes the mark down wakes the waiter; a new
        // mark set meanwhile is left alone.
        if records >= at
            && self
                .at
                .compare_exchange(at, UNSET, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
        {
            self.passed.notify_one();
        }
    }

    /// Waits until a commit passes the mark. A pass while nobody waited is
    /// kept for the next wait, so a wake-up may be stale: the caller checks
    /// the count again.
    pub async fn passed(&self) {
        self.passed.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use futures::FutureExt;

    use super::RecordMark;

    #[test]
    fn wakes_the_waiter_once_when_a_commit_passes_the_mark() {
        // Proves a count below the mark, or with no mark set, wakes nobody; the first count at
        // or past it wakes the waiter once; and a mark set after a pass is waited for anew.
        let mark = RecordMark::default();
        mark.reached(1_000);
        assert!(mark.passed().now_or_never().is_none(), "no mark set");
        mark.set(10);
        mark.reached(9);
        assert!(mark.passed().now_or_never().is_none(), "below the mark");
        mark.reached(12);
        assert!(mark.passed().now_or_never().is_some(), "past the mark");
        mark.reached(13);
        assert!(mark.passed().now_or_never().is_none(), "woken once");
        mark.set(20);
        mark.reached(20);
        assert!(mark.passed().now_or_never().is_some(), "the next mark");
    }
}
