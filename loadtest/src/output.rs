//! The end of a run: the printed report, the chart, the HDR log and the
//! JSON written, the thresholds judged, and the exit code.
//!
//! Exit codes: 0 all held; 1 the run failed; 3 the audit found a wrong
//! answer (oversold, missing, mismatched, early expiry, a status stream
//! not exact); 4 a `--threshold` was missed.

use std::process::ExitCode;

use omniroute_loadtest::chart::{write_chart, ChartData};
use omniroute_loadtest::Summary;

use crate::args::Args;
use crate::redis::redis_side_note;
use crate::report::{print, print_thresholds, write_hlog};
use crate::run::Outcome;

pub(crate) fn finish(args: &Args, mut outcome: Outcome) -> ExitCode {
    outcome.summary.thresholds = args
        .threshold
        .iter()
        .map(|t| t.check(&outcome.summary))
        .collect();
    let summary = &outcome.summary;
    if let Some(redis) = &summary.redis {
        print(redis);
        println!("redis: {} and no hold expiry or follow-ups; omniroute routes every order and journals it with durability = {:?}", redis_side_note(args), args.durability);
    }
    print(summary);
    if let Err(e) = write_files(args, &outcome) {
        eprintln!("omniroute-loadtest: {e}");
        return ExitCode::FAILURE;
    }
    if let Some(ratio) = summary.ratio_vs_redis {
        println!("ratio_vs_redis={ratio:.2}");
    } else if args.compare_redis {
        println!("ratio_vs_redis=unknown (a side found no sustainable rate)");
    }
    print_thresholds(summary);
    if !exact(summary) {
        return ExitCode::from(3);
    }
    if summary.thresholds.iter().any(|t| !t.passed) {
        return ExitCode::from(4);
    }
    ExitCode::SUCCESS
}

/// Whether every audit of the run came out right.
fn exact(summary: &Summary) -> bool {
    let redis_bad = summary.redis.as_ref().is_some_and(|r| r.oversold_units > 0);
    summary.oversold_units == 0
        && summary.missing_orders == 0
        && summary.stock_mismatch_units == 0
        && summary.early_expiries == 0
        && summary.status_stream.as_ref().is_none_or(|s| s.exact())
        && !redis_bad
}

fn write_files(args: &Args, outcome: &Outcome) -> Result<(), String> {
    let summary = &outcome.summary;
    if let Some(path) = &args.chart {
        let latency: Vec<_> = outcome
            .intervals
            .iter()
            .map(|i| (i.offset_s, i.histogram.clone()))
            .collect();
        write_chart(path, &chart_data(outcome, &latency)).map_err(|e| e.to_string())?;
    }
    if let Some(path) = &args.hlog {
        write_hlog(path, &outcome.intervals)?;
    }
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(summary).expect("summary serializes");
        std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}

/// `latency`: each measured second's (offset, histogram), from the intervals.
fn chart_data<'a>(
    outcome: &'a Outcome,
    latency: &'a [(f64, hdrhistogram::Histogram<u64>)],
) -> ChartData<'a> {
    let summary = &outcome.summary;
    let mut distributions = vec![
        (
            "omniroute, from intended send".to_string(),
            &outcome.histogram,
        ),
        (
            "omniroute, from actual send".to_string(),
            &outcome.uncorrected,
        ),
    ];
    if let Some(h) = &outcome.redis_histogram {
        distributions.push(("redis, from intended send".to_string(), h));
    }
    let title = format!(
        "omniroute-loadtest: {} at {:.0} orders/s offered{}",
        summary.scenario,
        summary.rate_offered,
        summary
            .highest_sustainable_rate
            .map_or(String::new(), |r| format!(", highest sustainable {r:.0}/s"))
    );
    ChartData {
        title,
        intervals: latency,
        distributions,
        seconds: &summary.seconds,
        marks: &outcome.marks,
    }
}
