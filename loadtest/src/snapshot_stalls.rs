//! How much a snapshot stalls the order path, step by step: the worst
//! per-second p99 of the seconds that hold a snapshot against the median
//! per-second p99 of the same step. A stall shows as one bad second among
//! good ones, which the step's whole-step p99 can hide.

use crate::daemon_metrics::SNAPSHOT_EVENT;
use crate::summary::{RunEvent, Second, SnapshotStall};

/// One entry per measured step (`steps`: when each began, and its rate, in
/// order), over the seconds from its start to the next one's. Empty when
/// the daemon's counters were not read, since then no second can be said
/// to hold a snapshot or not.
pub fn snapshot_stalls(
    seconds: &[Second],
    steps: &[(f64, String)],
    events: &[RunEvent],
) -> Vec<SnapshotStall> {
    if seconds.iter().all(|s| s.snapshots.is_none()) {
        return Vec::new();
    }
    let spans: Vec<(f64, f64)> = events
        .iter()
        .filter(|e| e.what == SNAPSHOT_EVENT)
        .map(|e| (e.at_s, e.until_s.unwrap_or(e.at_s)))
        .collect();
    let mut stalls = Vec::new();
    for (i, (from_s, step)) in steps.iter().enumerate() {
        let until_s = steps.get(i + 1).map_or(f64::INFINITY, |next| next.0);
        let of_step: Vec<&Second> = seconds
            .iter()
            .filter(|s| *from_s <= s.offset_s && s.offset_s < until_s)
            .collect();
        let Some(median_p99_us) = median(of_step.iter().map(|s| s.p99_us).collect()) else {
            continue;
        };
        // A span touches a second when it begins before the second ends
        // and ends at or after it begins: a moment on a boundary counts in
        // the second it opens.
        let held: Vec<u64> = of_step
            .iter()
            .filter(|s| {
                spans
                    .iter()
                    .any(|&(a, b)| a < s.offset_s + s.length_s && b >= s.offset_s)
            })
            .map(|s| s.p99_us)
            .collect();
        let worst_snapshot_p99_us = held.iter().copied().max();
        stalls.push(SnapshotStall {
            step: step.clone(),
            from_s: *from_s,
            seconds: of_step.len() as u64,
            median_p99_us,
            snapshot_seconds: held.len() as u64,
            worst_snapshot_p99_us,
            snapshot_p99_ratio: worst_snapshot_p99_us
                .filter(|_| median_p99_us > 0.0)
                .map(|worst| worst as f64 / median_p99_us),
        });
    }
    stalls
}

/// The middle value, or the mean of the two middle ones.
fn median(mut values: Vec<u64>) -> Option<f64> {
    values.sort_unstable();
    match values.len() {
        0 => None,
        n if n.is_multiple_of(2) => Some((values[n / 2 - 1] as f64 + values[n / 2] as f64) / 2.0),
        n => Some(values[n / 2] as f64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A second of a step, as read while the daemon's counters were.
    fn second(offset_s: f64, p99_us: u64) -> Second {
        Second {
            offset_s,
            length_s: 1.0,
            p99_us,
            snapshots: Some(0),
            ..Second::default()
        }
    }

    fn snapshot(at_s: f64, until_s: Option<f64>) -> RunEvent {
        RunEvent {
            at_s,
            until_s,
            what: SNAPSHOT_EVENT.to_string(),
        }
    }

    #[test]
    fn each_step_compares_its_snapshot_seconds_with_its_own_median() {
        // Proves seconds group by the step they were measured in, a span counts in every
        // second it touches (a moment on a boundary in the second it opens), the worst of
        // them is set against the step's median p99 (the mean of the middle two for an even
        // count), other events are not snapshots, and a step with none has no ratio.
        let p99s_a = [4_000, 5_000, 12_000, 6_000, 3_000];
        let p99s_b = [2_000, 9_000, 3_000, 1_000];
        let mut seconds: Vec<Second> = p99s_a
            .iter()
            .enumerate()
            .map(|(k, &p99)| second(k as f64, p99))
            .collect();
        // The second step begins after the first one's drain.
        seconds.extend(
            p99s_b
                .iter()
                .enumerate()
                .map(|(k, &p99)| second(5.3 + k as f64, p99)),
        );
        let steps = [(0.0, "5000/s".to_string()), (5.3, "7500/s".to_string())];
        let events = [
            snapshot(1.6, Some(2.1)),
            RunEvent {
                at_s: 3.0,
                until_s: Some(4.0),
                what: "40 holds expired".into(),
            },
            snapshot(7.3, None),
        ];
        let stalls = snapshot_stalls(&seconds, &steps, &events);
        assert_eq!(stalls.len(), 2);
        let a = &stalls[0];
        assert_eq!((a.step.as_str(), a.seconds), ("5000/s", 5));
        assert_eq!(a.median_p99_us, 5_000.0);
        assert_eq!(
            (a.snapshot_seconds, a.worst_snapshot_p99_us),
            (2, Some(12_000))
        );
        assert_eq!(a.snapshot_p99_ratio, Some(2.4));
        let b = &stalls[1];
        assert_eq!((b.from_s, b.seconds), (5.3, 4));
        assert_eq!(b.median_p99_us, 2_500.0);
        assert_eq!(
            (b.snapshot_seconds, b.worst_snapshot_p99_us),
            (1, Some(3_000))
        );
        assert_eq!(b.snapshot_p99_ratio, Some(1.2));
        let quiet = snapshot_stalls(&seconds, &steps, &events[1..2]);
        assert_eq!(quiet[0].snapshot_seconds, 0);
        assert_eq!(quiet[0].snapshot_p99_ratio, None);
    }

    #[test]
    fn a_run_whose_daemon_was_not_read_has_no_entries() {
        // Proves no step is reported when no second has the daemon's counters: it cannot be
        // told whether a snapshot ran then.
        let seconds = [Second {
            p99_us: 1_000,
            length_s: 1.0,
            ..Second::default()
        }];
        let steps = [(0.0, "5000/s".to_string())];
        assert!(snapshot_stalls(&seconds, &steps, &[snapshot(0.5, None)]).is_empty());
    }
}
