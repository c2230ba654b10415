//! What the daemon's own counters, read from its admin port's `/metrics`
//! through the run, tell about each second: holds that expired and
//! snapshots written, each from its start to its end. The daemon counts
//! them itself, so the chart marks them where they happened, not where the
//! generator guesses they would.

use crate::summary::{RunEvent, Second};

/// Counter names, as the daemon's /metrics gives them.
const SNAPSHOTS_TOTAL: &str = "omniroute_snapshots_total";
const SNAPSHOTS_STARTED_TOTAL: &str = "omniroute_snapshots_started_total";
const HOLDS_EXPIRED_TOTAL: &str = "omniroute_holds_expired_total";

/// What a snapshot's event says, for whoever looks for them among the others.
pub(crate) const SNAPSHOT_EVENT: &str = "snapshot";

/// The counters the chart uses, at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DaemonCounters {
    /// Snapshots written (finished).
    pub snapshots: u64,
    /// Snapshots begun: one is under way while this is ahead.
    pub snapshots_started: u64,
    pub holds_expired: u64,
}

impl DaemonCounters {
    /// Reads them from a Prometheus text page; a counter not on it yet
    /// (none counted since start) is 0, and one with labels is summed.
    pub fn parse(page: &str) -> DaemonCounters {
        let mut counters = DaemonCounters::default();
        for line in page.lines().filter(|l| !l.starts_with('#')) {
            let Some((name, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let name = name.split('{').next().unwrap_or_default().trim();
            let Ok(value) = value.trim().parse::<f64>() else {
                continue;
            };
            match name {
                SNAPSHOTS_TOTAL => counters.snapshots += value as u64,
                SNAPSHOTS_STARTED_TOTAL => counters.snapshots_started += value as u64,
                HOLDS_EXPIRED_TOTAL => counters.holds_expired += value as u64,
                _ => {}
            }
        }
        counters
    }
}

/// One reading of the counters: seconds since the first measured step
/// began (negative in the warmup), and their values.
pub type CounterSample = (f64, DaemonCounters);

/// Puts what grew between consecutive samples into the second of the later
/// one, for each second that has a sample in it; seconds with none keep
/// `None` (the daemon was not read then). Growth after the last second is
/// left out, as answers after the run are.
pub fn count_per_second(samples: &[CounterSample], seconds: &mut [Second]) {
    for pair in samples.windows(2) {
        let ((_, before), (at_s, after)) = (pair[0], pair[1]);
        let Some(second) = seconds
            .iter_mut()
            .find(|s| s.offset_s <= at_s && at_s < s.offset_s + s.length_s)
        else {
            continue;
        };
        let grew = |now: u64, then: u64| now.saturating_sub(then);
        *second.holds_expired.get_or_insert(0) += grew(after.holds_expired, before.holds_expired);
        *second.snapshots.get_or_insert(0) += grew(after.snapshots, before.snapshots);
    }
}

/// The events the counters show: each snapshot as a span from the sample
/// that saw it begin to the one that saw it written (a moment, where it
/// did both between two samples, or where the daemon does not count
/// starts), and each run of consecutive seconds in which holds expired as
/// one span, with how many.
pub fn counter_events(samples: &[CounterSample], seconds: &[Second]) -> Vec<RunEvent> {
    let mut events = snapshot_spans(samples, seconds);
    let mut span: Option<(f64, f64, u64)> = None;
    for second in seconds {
        match (second.holds_expired.unwrap_or(0), span.as_mut()) {
            (0, _) => events.extend(span.take().map(expiry_span)),
            (n, Some((_, until, total))) => {
                *until = second.offset_s + second.length_s;
                *total += n;
            }
            (n, None) => span = Some((second.offset_s, second.offset_s + second.length_s, n)),
        }
    }
    events.extend(span.map(expiry_span));
    events.sort_by(|a, b| a.at_s.total_cmp(&b.at_s));
    events
}

/// Each snapshot that began or ended within the measured seconds, from
/// the sample that saw it begin to the one that saw it written (or the
/// last sample, if the run ended first).
fn snapshot_spans(samples: &[CounterSample], seconds: &[Second]) -> Vec<RunEvent> {
    let inside = |at_s: f64| {
        seconds
            .iter()
            .any(|s| s.offset_s <= at_s && at_s < s.offset_s + s.length_s)
    };
    let mut spans = Vec::new();
    let mut begun: Option<f64> = None;
    for pair in samples.windows(2) {
        let ((_, before), (at_s, after)) = (pair[0], pair[1]);
        if after.snapshots_started > before.snapshots_started && begun.is_none() {
            begun = Some(at_s);
        }
        if after.snapshots > before.snapshots {
            let from = begun.take().unwrap_or(at_s);
            if inside(from) || inside(at_s) {
                spans.push(snapshot_event(from, at_s));
            }
            // The next one began before this sample too.
            if after.snapshots_started > after.snapshots {
                begun = Some(at_s);
            }
        }
    }
    if let (Some(from), Some((last, _))) = (begun, samples.last()) {
        if inside(from) {
            spans.push(snapshot_event(from, *last));
        }
    }
    spans
}

fn snapshot_event(from_s: f64, until_s: f64) -> RunEvent {
    RunEvent {
        at_s: from_s,
        until_s: (until_s > from_s).then_some(until_s),
        what: SNAPSHOT_EVENT.to_string(),
    }
}

fn expiry_span((at_s, until_s, holds): (f64, f64, u64)) -> RunEvent {
    RunEvent {
        at_s,
        until_s: Some(until_s),
        what: format!("{holds} holds expired"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn second(offset_s: f64) -> Second {
        Second {
            offset_s,
            length_s: 1.0,
            ..Second::default()
        }
    }

    #[test]
    fn the_counters_are_read_from_the_page() {
        // Proves both counters are found, labels summed, and a missing one reads 0.
        let page = "# TYPE omniroute_holds_expired_total counter\nomniroute_holds_expired_total 12\nomniroute_orders_total{channel=\"web\",outcome=\"routed\"} 5\n";
        let c = DaemonCounters::parse(page);
        assert_eq!((c.holds_expired, c.snapshots), (12, 0));
        let c = DaemonCounters::parse(
            "omniroute_snapshots_total{x=\"a\"} 2\nomniroute_snapshots_total{x=\"b\"} 1\n",
        );
        assert_eq!(c.snapshots, 3);
    }

    #[test]
    fn expiries_and_snapshots_become_spans() {
        // Proves growth lands in the later sample's second, consecutive seconds of expiries
        // make one span with their total, and a snapshot spans from the sample that saw it
        // begin to the one that saw it written (or the last sample, if it was not).
        let mut seconds: Vec<Second> = (0..6).map(|k| second(k as f64)).collect();
        let at = |at_s: f64, snapshots_started: u64, snapshots: u64, holds_expired: u64| {
            (
                at_s,
                DaemonCounters {
                    snapshots,
                    snapshots_started,
                    holds_expired,
                },
            )
        };
        let samples = [
            at(-0.5, 0, 0, 0),
            at(0.5, 0, 0, 0),
            at(1.5, 0, 0, 0),
            at(2.5, 1, 0, 40),
            at(3.5, 1, 1, 100),
            at(4.5, 1, 1, 100),
            at(5.5, 2, 1, 100),
        ];
        count_per_second(&samples, &mut seconds);
        assert_eq!(seconds[2].holds_expired, Some(40));
        assert_eq!(seconds[3].holds_expired, Some(60));
        assert_eq!(seconds[3].snapshots, Some(1));
        let span = |at_s: f64, until_s: f64, what: &str| RunEvent {
            at_s,
            until_s: (until_s > at_s).then_some(until_s),
            what: what.into(),
        };
        assert_eq!(
            counter_events(&samples, &seconds),
            vec![
                span(2.0, 4.0, "100 holds expired"),
                span(2.5, 3.5, "snapshot"),
                span(5.5, 5.5, "snapshot"),
            ]
        );
        // A daemon that does not count starts: each snapshot a moment where it was seen.
        let older: Vec<CounterSample> = samples
            .iter()
            .map(|&(t, c)| {
                let snapshots_started = 0;
                (
                    t,
                    DaemonCounters {
                        snapshots_started,
                        ..c
                    },
                )
            })
            .collect();
        let snapshots: Vec<RunEvent> = counter_events(&older, &seconds)
            .into_iter()
            .filter(|e| e.what == "snapshot")
            .collect();
        assert_eq!(snapshots, vec![span(3.5, 3.5, "snapshot")]);
    }
}
