//! Each second of a measured phase: what was sent in it, what came back
//! in it (routed, rejected by reason, failed by reason) and its latencies.
//!
//! Seconds are cut on the phase's own clock, from its schedule's start,
//! not whenever the collector happens to look: an N-second phase has N of
//! them, the last one too. Answers that come back after the phase's end,
//! while it drains, count in its last second, as do sends the scheduler
//! made late.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

use hdrhistogram::Histogram;

use crate::recorder::{error_name, reject_name, Outcome, MAX_LATENCY_US};

/// The length of one bin.
const BIN: Duration = Duration::from_secs(1);

/// One second of a measured phase.
#[derive(Clone, Debug)]
pub struct SecondBin {
    /// When it began, by the wall clock (for the HdrHistogram log).
    pub wall: SystemTime,
    /// Seconds since the first measured phase began.
    pub offset_s: f64,
    /// One second, or less for the last one of a fractional phase.
    pub length: Duration,
    /// Latency from intended send time of the answers that came back in it.
    pub histogram: Histogram<u64>,
    pub sent: u64,
    pub routed: u64,
    /// Rejections by reason (`short`, `no_eligible_node`, ...).
    pub rejected: BTreeMap<String, u64>,
    /// Failures by reason (`timed_out`, `overloaded`, an error code's name).
    pub failed: BTreeMap<String, u64>,
}

impl SecondBin {
    fn new(wall: SystemTime, offset_s: f64, length: Duration) -> SecondBin {
        SecondBin {
            wall,
            offset_s,
            length,
            histogram: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
                .expect("valid histogram bounds"),
            sent: 0,
            routed: 0,
            rejected: BTreeMap::new(),
            failed: BTreeMap::new(),
        }
    }

    /// Every answer of the second, whatever it said.
    pub fn answered(&self) -> u64 {
        self.routed + self.rejected.values().sum::<u64>() + self.failed.values().sum::<u64>()
    }

    pub fn failures(&self) -> u64 {
        self.failed.values().sum()
    }
}

/// The seconds of one measured phase, filled as its requests leave and
/// their answers come back.
pub struct PhaseSeconds {
    start: Instant,
    bins: Vec<SecondBin>,
}

impl PhaseSeconds {
    /// `offset_s`: where the phase begins on the run's time axis.
    pub fn new(start: Instant, wall: SystemTime, offset_s: f64, length: Duration) -> Self {
        let whole = length.as_secs_f64().ceil().max(1.0) as u32;
        let bins = (0..whole)
            .map(|k| {
                let begins = BIN * k;
                let left = length.saturating_sub(begins).min(BIN);
                let left = if left.is_zero() { BIN } else { left };
                SecondBin::new(wall + begins, offset_s + f64::from(k), left)
            })
            .collect();
        PhaseSeconds { start, bins }
    }

    /// The bin `at` falls in: before the start counts in the first, after
    /// the end in the last.
    fn bin(&mut self, at: Instant) -> &mut SecondBin {
        let k =
            (at.saturating_duration_since(self.start).as_secs_f64() / BIN.as_secs_f64()) as usize;
        let last = self.bins.len() - 1;
        &mut self.bins[k.min(last)]
    }

    pub fn sent(&mut self, at: Instant, count: u64) {
        self.bin(at).sent += count;
    }

    /// An answer that came back at `done`, `latency_us` after its intended
    /// send time; `code` is the reject or error code when there is one.
    pub fn answered(
        &mut self,
        done: Instant,
        latency_us: u64,
        outcome: Outcome,
        code: Option<u16>,
    ) {
        let bin = self.bin(done);
        bin.histogram
            .record(latency_us.clamp(1, MAX_LATENCY_US))
            .expect("clamped into bounds");
        let (map, reason) = match outcome {
            Outcome::Routed => {
                bin.routed += 1;
                return;
            }
            Outcome::Short => (&mut bin.rejected, "short".to_string()),
            Outcome::Rejected => (
                &mut bin.rejected,
                code.map_or("rejected".into(), reject_name),
            ),
            Outcome::Overloaded => (&mut bin.failed, "overloaded".to_string()),
            Outcome::TimedOut => (&mut bin.failed, "timed_out".to_string()),
            Outcome::Error => (&mut bin.failed, code.map_or("error".into(), error_name)),
        };
        *map.entry(reason).or_default() += 1;
    }

    /// The phase's seconds, every one of them.
    pub fn finish(self) -> Vec<SecondBin> {
        self.bins
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_n_second_phase_has_n_seconds_with_its_last_answers() {
        // Proves an 8 s phase gives 8 bins, answers after its end (the drain) land in the
        // last, and rejections and failures are kept apart by reason.
        let start = Instant::now();
        let mut phase = PhaseSeconds::new(start, SystemTime::now(), 2.0, Duration::from_secs(8));
        for k in 0..8u64 {
            phase.sent(start + Duration::from_millis(k * 1000 + 10), 10);
            phase.answered(
                start + Duration::from_millis(k * 1000 + 20),
                500,
                Outcome::Routed,
                None,
            );
        }
        let drained = start + Duration::from_millis(8_300);
        phase.answered(drained, 300_000, Outcome::Short, None);
        phase.answered(drained, 300_000, Outcome::Rejected, Some(0xFFFF));
        phase.answered(drained, 10_000_000, Outcome::TimedOut, None);
        let bins = phase.finish();
        assert_eq!(bins.len(), 8);
        assert_eq!(bins[7].offset_s, 9.0);
        assert!(bins.iter().all(|b| b.sent == 10 && b.routed == 1));
        assert_eq!(bins[7].rejected["short"], 1);
        assert_eq!(bins[7].rejected["code_65535"], 1);
        assert_eq!(bins[7].failed["timed_out"], 1);
        assert_eq!(bins[7].answered(), 4);
        assert_eq!(bins[7].histogram.len(), 4);
    }

    #[test]
    fn a_fractional_phase_ends_in_a_short_second() {
        // Proves 2.5 s make three bins, the last half a second long.
        let phase = PhaseSeconds::new(
            Instant::now(),
            SystemTime::now(),
            0.0,
            Duration::from_millis(2500),
        );
        let bins = phase.finish();
        assert_eq!(bins.len(), 3);
        assert_eq!(bins[2].length, Duration::from_millis(500));
        assert_eq!(bins[0].length, Duration::from_secs(1));
    }
}
