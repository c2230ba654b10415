//! The run second by second, for the JSON's `over_time` and the chart:
//! each measured second's answers by outcome and reason, the events along
//! it (rate steps, node outages, hold expiries, snapshots), and how the
//! seconds that held a snapshot compare with the rest of their step.

use std::time::Instant;

use omniroute_loadtest::{
    count_per_second, counter_events, snapshot_stalls, DaemonCounters, OverTime, RunEvent, Second,
};

use crate::drive::Interval;
use crate::feed::NodeEventDone;

/// What the timeline is built from.
pub(crate) struct Timeline<'a> {
    pub(crate) intervals: &'a [Interval],
    /// When each measured step began: (seconds, its rate).
    pub(crate) steps: &'a [(f64, String)],
    /// The scenario's node events, as the daemon acknowledged them.
    pub(crate) node_events: &'a [NodeEventDone],
    /// When the first measured step began, to place the daemon's readings.
    pub(crate) first_measured: Option<Instant>,
    pub(crate) readings: &'a [(Instant, DaemonCounters)],
}

impl Timeline<'_> {
    pub(crate) fn over_time(&self) -> OverTime {
        let mut seconds: Vec<Second> = self.intervals.iter().map(second).collect();
        let samples: Vec<_> = match self.first_measured {
            Some(first) => self
                .readings
                .iter()
                .map(|(at, counters)| (signed_seconds(*at, first), *counters))
                .collect(),
            None => Vec::new(),
        };
        count_per_second(&samples, &mut seconds);
        let end_s = seconds.last().map_or(0.0, |s| s.offset_s + s.length_s);
        let mut events = counter_events(&samples, &seconds);
        let snapshot_stalls = snapshot_stalls(&seconds, self.steps, &events);
        if let Some(first) = self.first_measured {
            events.extend(self.outages(first, end_s));
        }
        // One step's rate is the run's, in the chart's subtitle already.
        if self.steps.len() > 1 {
            events.extend(self.steps.iter().map(|(at_s, rate)| RunEvent {
                at_s: *at_s,
                until_s: None,
                what: format!("step {rate}"),
            }));
        }
        events.sort_by(|a, b| a.at_s.total_cmp(&b.at_s));
        OverTime {
            covers: "every second of every measured step, from the first one's start; answers counted in the second they came back in, a step's last second with those that came back while it drained; not the warmup".to_string(),
            seconds,
            events,
            snapshot_stalls,
        }
    }

    /// Each node the scenario took offline, from when the daemon said so
    /// until it said the node was back (or the run ended).
    fn outages(&self, first: Instant, end_s: f64) -> Vec<RunEvent> {
        let events = self.node_events;
        events
            .iter()
            .enumerate()
            .filter(|(_, done)| !done.event.online)
            .map(|(i, done)| {
                let at_s = signed_seconds(done.at, first);
                let back = events[i + 1..]
                    .iter()
                    .find(|later| later.event.online && later.event.node == done.event.node)
                    .map_or(end_s, |later| signed_seconds(later.at, first));
                RunEvent {
                    at_s,
                    until_s: Some(back.min(end_s).max(at_s)),
                    what: format!("{} offline, {} re-routed", done.event.node, done.rerouted),
                }
            })
            .collect()
    }
}

/// Seconds from `first` to `at`, negative before it.
fn signed_seconds(at: Instant, first: Instant) -> f64 {
    match at.checked_duration_since(first) {
        Some(after) => after.as_secs_f64(),
        None => -first.duration_since(at).as_secs_f64(),
    }
}

/// One measured second as the JSON and the chart give it.
fn second(bin: &Interval) -> Second {
    let length = bin.length.as_secs_f64().max(f64::EPSILON);
    Second {
        offset_s: bin.offset_s,
        length_s: bin.length.as_secs_f64(),
        offered_per_s: bin.sent as f64 / length,
        achieved_per_s: bin.answered() as f64 / length,
        routed: bin.routed,
        rejected: bin.rejected.clone(),
        failed: bin.failed.clone(),
        errors: bin.failures(),
        p50_us: bin.histogram.value_at_quantile(0.5),
        p99_us: bin.histogram.value_at_quantile(0.99),
        max_us: bin.histogram.max(),
        holds_expired: None,
        snapshots: None,
    }
}
