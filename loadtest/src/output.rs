//! The end of a run: the printed report, the chart, the HDR log and the
//! JSON written, the thresholds judged, and the exit code.
//!
//! Exit codes: 0 all held; 1 the run failed; 3 the audit found a wrong
//! answer (oversold, missing, mismatched, early expiry, a status stream
//! not exact, a cluster's answered order lost or its replicas unequal); 4 a `--threshold` was missed.

use std::process::ExitCode;

use omniroute_loadtest::chart::{write_chart, ChartData};
use omniroute_loadtest::{RunInfo, Summary};

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
    let redis_bad = summary
        .redis
        .as_ref()
        .is_some_and(|r| r.whole_run.oversold_units > 0);
    summary.whole_run.oversold_units == 0
        && summary.whole_run.missing_orders == 0
        && summary.whole_run.stock_mismatch_units == 0
        && summary.whole_run.early_expiries == 0
        && summary
            .cluster
            .as_ref()
            .is_none_or(|c| c.lost_orders == 0 && c.replicas_equal != Some(false))
        && summary
            .whole_run
            .status_stream
            .as_ref()
            .is_none_or(|s| s.exact())
        && !redis_bad
}

fn write_files(args: &Args, outcome: &Outcome) -> Result<(), String> {
    let summary = &outcome.summary;
    if let Some(path) = &args.chart {
        // Each second's latency at its middle, so that every second has its point.
        let latency: Vec<_> = outcome
            .intervals
            .iter()
            .map(|i| {
                (
                    i.offset_s + i.length.as_secs_f64() / 2.0,
                    i.histogram.clone(),
                )
            })
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
        summary.measured.rate_offered,
        summary
            .highest_sustainable_rate
            .map_or(String::new(), |r| format!(", highest sustainable {r:.0}/s"))
    );
    ChartData {
        title,
        subtitle: summary.run.as_ref().map_or(String::new(), subtitle),
        intervals: latency,
        distributions,
        seconds: &summary.over_time.seconds,
        events: &summary.over_time.events,
    }
}

/// The run's settings in one line: what ran, how durable, on how much.
fn subtitle(run: &RunInfo) -> String {
    let mut parts = vec![
        format!("scenario {}", run.scenario),
        match run.find_max {
            false => format!(
                "{:.0}/s offered for {} s after {} s of warmup",
                run.rate, run.duration_s, run.warmup_s
            ),
            true => format!(
                "--find-max from {:.0}/s, {} s a step, after {} s of warmup",
                run.rate, run.duration_s, run.warmup_s
            ),
        },
        format!(
            "durability {}",
            run.durability
                .as_deref()
                .unwrap_or("as the daemon was started")
        ),
        format!("{} cores", run.cores),
    ];
    if let Some(threads) = run.server_threads {
        let plural = if threads == 1 { "" } else { "s" };
        parts.push(format!("{threads} daemon thread{plural}"));
    }
    parts.push(format!("{} connections", run.connections));
    parts.push(match &run.omniroute_version {
        Some(version) => format!("omniroute {version}"),
        None => format!("omniroute-loadtest {}", run.loadtest_version),
    });
    if let Some(version) = &run.redis_version {
        parts.push(format!("redis {version}"));
    }
    parts.join(" · ")
}
