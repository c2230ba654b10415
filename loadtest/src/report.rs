//! A run's output: the HDR log and the printed summary.

use std::path::Path;

use omniroute_loadtest::Summary;

use crate::drive::Interval;

/// Writes the measured intervals as an HdrHistogram interval log (V2,
/// compressed), readable by HdrHistogram's log tools.
pub(crate) fn write_hlog(path: &Path, intervals: &[Interval]) -> Result<(), String> {
    use hdrhistogram::serialization::interval_log::IntervalLogWriterBuilder;
    use hdrhistogram::serialization::V2DeflateSerializer;
    let Some(first) = intervals.first().map(|i| i.wall) else {
        return Ok(());
    };
    let mut file = std::io::BufWriter::new(
        std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?,
    );
    let mut serializer = V2DeflateSerializer::new();
    let mut log = IntervalLogWriterBuilder::new()
        .add_comment("omniroute-loadtest: latency from intended send time, microseconds")
        .with_start_time(first)
        .with_base_time(first)
        .begin_log_with(&mut file, &mut serializer)
        .map_err(|e| e.to_string())?;
    for interval in intervals {
        let offset = interval.wall.duration_since(first).unwrap_or_default();
        log.write_histogram(&interval.histogram, offset, interval.length, None)
            .map_err(|e| format!("{e:?}"))?;
    }
    Ok(())
}

/// The report, each count under the window it covers: the measured step
/// (rates, outcomes, latency, CPU) and then the whole run (follow-ups,
/// feed, node events, the audit).
pub(crate) fn print(summary: &Summary) {
    let t = &summary.target;
    println!(
        "{t}: measured step: offered {:.0}/s, achieved {:.0}/s over {:.1} s ({} requests)",
        summary.measured.rate_offered,
        summary.measured.rate_achieved,
        summary.measured.duration_s,
        summary.measured.requests
    );
    println!("{t}: measured step: outcomes: {}", outcomes(summary));
    print_latency_table(summary);
    if let Some(us) = summary.measured.server_cpu_us_per_order {
        let generator = summary
            .measured
            .generator_cpu_us_per_order
            .map_or(String::new(), |g| {
                format!(", generator {g:.2} us per order")
            });
        println!(
            "{t}: server CPU {us:.2} us per order ({:.2} cores busy){generator}",
            summary.measured.server_cpu_cores.unwrap_or(0.0)
        );
    }
    if !summary.batching.is_empty() {
        println!("{t}: batching: {}", summary.batching);
    }
    println!("{t}: measured step: errors {}", summary.measured.errors);
    if let Some(rate) = summary.highest_sustainable_rate {
        println!("{t}: highest_sustainable_rate={rate:.0}");
    }
    if let Some(p99) = summary.p99_at_half_max_us {
        println!("{t}: p99_at_half_max_us={p99}");
    }
    print_snapshot_stalls(summary);
    print_whole_run(summary);
    if let Some(ms) = summary.restart_ms {
        println!("{t}: restart after kill -9: listening in {ms:.0} ms");
    }
    if let Some(cluster) = &summary.cluster {
        print_cluster(t, cluster);
    }
}

/// The failovers and the cluster's audit, one line each.
fn print_cluster(t: &str, cluster: &omniroute_loadtest::ClusterRun) {
    println!("{t}: cluster of {}", cluster.replicas.join(", "));
    for (i, failover) in cluster.failovers.iter().enumerate() {
        let took = failover
            .failover_ms
            .map_or("no decision after it".to_string(), |ms| {
                format!("{ms:.0} ms")
            });
        println!(
            "{t}: failover {}: leader {} SIGKILLed at {:.1} s; the next order decided by another replica after {took} (it listened again after {:.0} ms)",
            i + 1,
            failover.replica,
            failover.at_s,
            failover.restart_ms
        );
    }
    let ms = |v: Option<f64>| v.map_or("none".to_string(), |ms| format!("{ms:.0}"));
    if !cluster.failovers.is_empty() {
        println!(
            "{t}: failovers={} failover_p50_ms={} failover_max_ms={}",
            cluster.failovers.len(),
            ms(cluster.failover_p50_ms),
            ms(cluster.failover_max_ms)
        );
    }
    println!(
        "{t}: lost_orders={} (answered routed, not held alike by the final leader; {} with other allocations)",
        cluster.lost_orders, cluster.allocation_mismatches
    );
    let equal = match cluster.replicas_equal {
        Some(true) => "yes",
        Some(false) => "NO",
        None => "not compared",
    };
    println!(
        "{t}: replicas_equal={equal} ({})",
        cluster.digests.join("; ")
    );
    println!(
        "{t}: snapshots_installed={} (followers behind the leader's log sent its snapshot set)",
        cluster.snapshots_installed
    );
}

/// Each measured step's seconds that held a snapshot against the step's
/// median second, one line a step.
fn print_snapshot_stalls(summary: &Summary) {
    let ms = |us: f64| us / 1000.0;
    for step in &summary.over_time.snapshot_stalls {
        let median = ms(step.median_p99_us);
        let against = match (step.worst_snapshot_p99_us, step.snapshot_p99_ratio) {
            (Some(worst), Some(ratio)) => format!(
                "worst p99 {:.1} ms = {ratio:.1}x the step's median {median:.1} ms",
                ms(worst as f64)
            ),
            (Some(worst), None) => {
                format!("worst p99 {:.1} ms, the step's median 0", ms(worst as f64))
            }
            _ => format!("the step's median p99 {median:.1} ms"),
        };
        println!(
            "{}: step {}: snapshot seconds: {}, {against}",
            summary.target, step.step, step.snapshot_seconds
        );
    }
}

/// What the whole run did beside the measured step, and its audit.
fn print_whole_run(summary: &Summary) {
    let t = format!("{}: whole run", summary.target);
    let run = &summary.whole_run;
    println!(
        "{t}: missing orders {}, stock mismatch {} units",
        run.missing_orders, run.stock_mismatch_units
    );
    if run.archived_orders > 0 {
        println!(
            "{t}: archived orders {} (closed and retired; audited from their follow-ups)",
            run.archived_orders
        );
    }
    if let Some(growth) = run.rss_growth_second_half_percent {
        let first = run.rss_mib.first().map_or(0.0, |s| s.1);
        let last = run.rss_mib.last().map_or(0.0, |s| s.1);
        println!(
            "{t}: rss {first:.1} MiB at the first sample, {last:.1} MiB at the last; {growth:+.1} % over the second half"
        );
    }
    if !run.follow_ups.is_empty() {
        println!("{t}: follow-ups {:?}", run.follow_ups);
    }
    if run.restocked_units > 0 || run.feed_errors > 0 {
        println!(
            "{t}: feed restocked {} units, {} requests refused",
            run.restocked_units, run.feed_errors
        );
    }
    if run.expired_units > 0 || run.early_expiries > 0 {
        println!(
            "{t}: expired_units={} (holds run out unconfirmed, back on sale), early_expiries={}",
            run.expired_units, run.early_expiries
        );
    }
    if run.rerouted_orders > 0 {
        println!(
            "{t}: rerouted_orders={} ({} units taken back from buyers and found short)",
            run.rerouted_orders, run.withdrawn_units
        );
    }
    if let Some(stream) = &run.status_stream {
        let changes: Vec<String> = stream
            .changes
            .iter()
            .map(|(change, n)| format!("{change} {n}"))
            .collect();
        println!(
            "{t}: status_stream={} statuses ({}) over {} reconnect(s): cursor_gaps={}, routed_orders_without_one_routed_status={}",
            stream.statuses,
            changes.join(", "),
            stream.reconnects,
            stream.cursor_gaps,
            stream.routed_orders_without_one_routed_status
        );
    }
    println!(
        "{t}: oversold_units={} (told beyond stock {}, held beyond stock {})",
        run.oversold_units, run.oversold_told_units, run.oversold_held_units
    );
}

/// `routed 521, short 998 978, rejected 2 (no_eligible_node 2)`.
fn outcomes(summary: &Summary) -> String {
    let named = |map: &std::collections::BTreeMap<String, u64>| -> String {
        map.iter()
            .map(|(name, n)| format!("{name} {}", grouped(*n)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    summary
        .measured
        .outcomes
        .iter()
        .map(|(outcome, n)| {
            let name = serde_json::to_value(outcome)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            let codes = match name.as_str() {
                "rejected" if !summary.measured.reject_codes.is_empty() => {
                    format!(" ({})", named(&summary.measured.reject_codes))
                }
                "error" | "overloaded" if !summary.measured.error_codes.is_empty() => {
                    format!(" ({})", named(&summary.measured.error_codes))
                }
                _ => String::new(),
            };
            format!("{name} {}{codes}", grouped(*n))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A count with its thousands apart: 998 978.
fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

/// Both latencies, one row each, in µs.
fn print_latency_table(summary: &Summary) {
    let t = &summary.target;
    println!(
        "{t}: measured step: latency (us)        {:>8} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "min", "mean", "p50", "p90", "p95", "p99", "p99.9", "p99.99", "max"
    );
    let rows = [
        (
            "from intended send",
            [
                summary.measured.min_us,
                summary.measured.p50_us,
                summary.measured.p90_us,
                summary.measured.p95_us,
                summary.measured.p99_us,
                summary.measured.p999_us,
                summary.measured.p9999_us,
                summary.measured.max_us,
            ],
            summary.measured.mean_us,
        ),
        (
            "from actual send  ",
            [
                summary.measured.uncorrected_min_us,
                summary.measured.uncorrected_p50_us,
                summary.measured.uncorrected_p90_us,
                summary.measured.uncorrected_p95_us,
                summary.measured.uncorrected_p99_us,
                summary.measured.uncorrected_p999_us,
                summary.measured.uncorrected_p9999_us,
                summary.measured.uncorrected_max_us,
            ],
            summary.measured.uncorrected_mean_us,
        ),
    ];
    for (label, v, mean) in rows {
        println!(
            "{t}: measured step: {label} {:>8} {mean:>9.1} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
            v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]
        );
    }
}

/// Each `--threshold`, measured, and whether it held.
pub(crate) fn print_thresholds(summary: &Summary) {
    for t in &summary.thresholds {
        // Latencies, counts and rates are large; a ratio needs its decimals.
        let measured = match t.measured {
            m if m.is_nan() => "nothing (no second held a snapshot)".to_string(),
            m if m.abs() < 100.0 && m.fract() != 0.0 => format!("{m:.2}"),
            m => format!("{m:.0}"),
        };
        println!(
            "threshold {}: measured {measured}: {}",
            t.threshold,
            if t.passed { "held" } else { "MISSED" }
        );
    }
}
