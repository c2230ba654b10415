//! Pass/fail bounds on a run, as k6 has them: `--threshold 'p99<2ms'`
//! fails the run (exit 4) when the reported step misses it. One bound
//! looks at every measured step instead: `snapshot_p99_ratio<2`, since a
//! snapshot may stall any step, the one that failed --find-max too.

use super::summary::{Summary, ThresholdResult};

/// One bound: a metric, a comparison and a value (latencies in µs).
#[derive(Clone, Debug)]
pub struct Threshold {
    pub text: String,
    metric: Metric,
    op: Op,
    value: f64,
}

#[derive(Clone, Copy, Debug)]
enum Metric {
    /// A latency from intended send time, in µs.
    Latency(OfSummary),
    /// Failed, timed-out and overloaded requests.
    Errors,
    /// Achieved requests per second.
    Rate,
    /// The worst, over every measured step, of its snapshot seconds' worst
    /// p99 over its median per-second p99.
    SnapshotP99Ratio,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Op {
    Less,
    LessOrEqual,
    Greater,
    GreaterOrEqual,
}

/// A latency the summary gives, in µs.
type OfSummary = fn(&Summary) -> f64;

/// The latency metrics by name.
const LATENCIES: &[(&str, OfSummary)] = &[
    ("min", |s| s.measured.min_us as f64),
    ("mean", |s| s.measured.mean_us),
    ("p50", |s| s.measured.p50_us as f64),
    ("p90", |s| s.measured.p90_us as f64),
    ("p95", |s| s.measured.p95_us as f64),
    ("p99", |s| s.measured.p99_us as f64),
    ("p99.9", |s| s.measured.p999_us as f64),
    ("p99.99", |s| s.measured.p9999_us as f64),
    ("max", |s| s.measured.max_us as f64),
];

impl Threshold {
    /// Parses `METRIC OP VALUE`: a latency (min, mean, p50, p90, p95, p99,
    /// p99.9, p99.99, max) against a duration (`2ms`, `500us`, `1s`), or
    /// `errors` against a count, `rate` against orders per second, or
    /// `snapshot_p99_ratio` against a ratio.
    pub fn parse(text: &str) -> Result<Threshold, String> {
        let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
        let at = compact
            .find(['<', '>'])
            .ok_or_else(|| format!("{text:?}: no < or >; write it like p99<2ms"))?;
        let (name, rest) = compact.split_at(at);
        let (op, value) = match rest.strip_prefix("<=").map(|v| (Op::LessOrEqual, v)) {
            Some(found) => found,
            None => match rest.strip_prefix(">=") {
                Some(v) => (Op::GreaterOrEqual, v),
                None if rest.starts_with('<') => (Op::Less, &rest[1..]),
                None => (Op::Greater, &rest[1..]),
            },
        };
        let metric = match name {
            "errors" => Metric::Errors,
            "rate" => Metric::Rate,
            "snapshot_p99_ratio" => Metric::SnapshotP99Ratio,
            _ => Metric::Latency(
                LATENCIES
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, f)| *f)
                    .ok_or_else(|| {
                        let names: Vec<&str> = LATENCIES.iter().map(|(n, _)| *n).collect();
                        format!(
                            "{text:?}: unknown metric {name:?}; use {}, errors, rate or snapshot_p99_ratio",
                            names.join(", ")
                        )
                    })?,
            ),
        };
        let value = match metric {
            Metric::Latency(_) => micros(value).map_err(|e| format!("{text:?}: {e}"))?,
            _ => value
                .parse::<f64>()
                .map_err(|_| format!("{text:?}: {value:?} is not a number"))?,
        };
        Ok(Threshold {
            text: text.to_string(),
            metric,
            op,
            value,
        })
    }

    /// What the summary measured against this bound; NaN, which holds no
    /// bound, when there was nothing to measure (no second held a snapshot).
    pub fn check(&self, summary: &Summary) -> ThresholdResult {
        let measured = match self.metric {
            Metric::Latency(of) => of(summary),
            Metric::Errors => summary.measured.errors as f64,
            Metric::Rate => summary.measured.rate_achieved,
            Metric::SnapshotP99Ratio => summary
                .over_time
                .snapshot_stalls
                .iter()
                .filter_map(|step| step.snapshot_p99_ratio)
                .reduce(f64::max)
                .unwrap_or(f64::NAN),
        };
        let passed = match self.op {
            Op::Less => measured < self.value,
            Op::LessOrEqual => measured <= self.value,
            Op::Greater => measured > self.value,
            Op::GreaterOrEqual => measured >= self.value,
        };
        ThresholdResult {
            threshold: self.text.clone(),
            measured,
            passed,
        }
    }
}

/// A duration in µs: `2ms`, `500us`, `1.5s`, or a bare number of µs.
fn micros(text: &str) -> Result<f64, String> {
    let split = text
        .find(|c: char| c.is_ascii_alphabetic())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 2ms"))?;
    let scale = match unit {
        "" | "us" => 1.0,
        "ms" => 1_000.0,
        "s" => 1_000_000.0,
        other => return Err(format!("unknown unit {other:?}; use us, ms or s")),
    };
    Ok(number * scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(p99_us: u64, errors: u64) -> Summary {
        Summary {
            measured: crate::MeasuredStep {
                p99_us,
                errors,
                rate_achieved: 1000.0,
                ..crate::MeasuredStep::default()
            },
            ..Summary::default()
        }
    }

    #[test]
    fn thresholds_parse_and_judge_the_reported_step() {
        // Proves a latency bound in ms or us, a count and a rate pass and fail as written, and
        // that a bad metric, unit or comparison is refused with what to write instead.
        let p99 = Threshold::parse("p99 < 2ms").unwrap();
        assert!(p99.check(&summary(1_999, 0)).passed);
        assert!(!p99.check(&summary(2_000, 0)).passed);
        assert_eq!(p99.check(&summary(2_500, 0)).measured, 2_500.0);
        assert!(
            Threshold::parse("p99.9<=2000us")
                .unwrap()
                .check(&summary(0, 0))
                .passed
        );
        let errors = Threshold::parse("errors<1").unwrap();
        assert!(errors.check(&summary(0, 0)).passed);
        assert!(!errors.check(&summary(0, 1)).passed);
        assert!(
            !Threshold::parse("rate>=2000")
                .unwrap()
                .check(&summary(0, 0))
                .passed
        );
        assert!(Threshold::parse("p98<2ms").unwrap_err().contains("p99.99"));
        assert!(Threshold::parse("p99<2h").unwrap_err().contains("unit"));
        assert!(Threshold::parse("p99=2ms").unwrap_err().contains("p99<2ms"));
    }

    #[test]
    fn the_snapshot_ratio_bound_takes_the_worst_step_and_needs_a_snapshot_second() {
        // Proves snapshot_p99_ratio is judged on the worst step of the run, not the reported
        // one alone, a step without a snapshot second does not count, and a run with none
        // misses the bound (nothing measured) rather than holding it.
        let step = |snapshot_p99_ratio: Option<f64>| crate::SnapshotStall {
            snapshot_p99_ratio,
            ..crate::SnapshotStall::default()
        };
        let mut run = summary(0, 0);
        run.over_time.snapshot_stalls = vec![step(Some(1.5)), step(None), step(Some(2.4))];
        let bound = Threshold::parse("snapshot_p99_ratio < 2").unwrap();
        let missed = bound.check(&run);
        assert_eq!((missed.measured, missed.passed), (2.4, false));
        run.over_time.snapshot_stalls.pop();
        assert!(bound.check(&run).passed);
        run.over_time.snapshot_stalls.remove(0);
        let unmeasured = bound.check(&run);
        assert!(unmeasured.measured.is_nan() && !unmeasured.passed);
    }
}
