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

pub(crate) fn print(summary: &Summary) {
    let t = &summary.target;
    println!(
        "{t}: offered {:.0}/s, achieved {:.0}/s over {:.1} s ({} requests)",
        summary.rate_offered, summary.rate_achieved, summary.duration_s, summary.requests
    );
    println!("{t}: outcomes: {}", outcomes(summary));
    print_latency_table(summary);
    if let Some(us) = summary.server_cpu_us_per_order {
        let generator = summary
            .generator_cpu_us_per_order
            .map_or(String::new(), |g| {
                format!(", generator {g:.2} us per order")
            });
        println!(
            "{t}: server CPU {us:.2} us per order ({:.2} cores busy){generator}",
            summary.server_cpu_cores.unwrap_or(0.0)
        );
    }
    if !summary.batching.is_empty() {
        println!("{t}: batching: {}", summary.batching);
    }
    println!(
        "{t}: errors {}, missing orders {}, stock mismatch {} units",
        summary.errors, summary.missing_orders, summary.stock_mismatch_units
    );
    if summary.archived_orders > 0 {
        println!(
            "{t}: archived orders {} (closed and retired; audited from their follow-ups)",
            summary.archived_orders
        );
    }
    if let Some(growth) = summary.rss_growth_second_half_percent {
        let first = summary.rss_mib.first().map_or(0.0, |s| s.1);
        let last = summary.rss_mib.last().map_or(0.0, |s| s.1);
        println!(
            "{t}: rss {first:.1} MiB at the first sample, {last:.1} MiB at the last; {growth:+.1} % over the second half"
        );
    }
    if let Some(ms) = summary.restart_ms {
        println!("{t}: restart after kill -9: listening in {ms:.0} ms");
    }
    if !summary.follow_ups.is_empty() {
        println!("{t}: follow-ups {:?}", summary.follow_ups);
    }
    if summary.restocked_units > 0 || summary.feed_errors > 0 {
        println!(
            "{t}: feed restocked {} units, {} requests refused",
            summary.restocked_units, summary.feed_errors
        );
    }
    if summary.expired_units > 0 || summary.early_expiries > 0 {
        println!(
            "{t}: expired_units={} (holds run out unconfirmed, back on sale), early_expiries={}",
            summary.expired_units, summary.early_expiries
        );
    }
    if summary.rerouted_orders > 0 {
        println!(
            "{t}: rerouted_orders={} ({} units taken back from buyers and found short)",
            summary.rerouted_orders, summary.withdrawn_units
        );
    }
    if let Some(stream) = &summary.status_stream {
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
    if let Some(rate) = summary.highest_sustainable_rate {
        println!("{t}: highest_sustainable_rate={rate:.0}");
    }
    if let Some(p99) = summary.p99_at_half_max_us {
        println!("{t}: p99_at_half_max_us={p99}");
    }
    println!(
        "{t}: oversold_units={} (told beyond stock {}, held beyond stock {})",
        summary.oversold_units, summary.oversold_told_units, summary.oversold_held_units
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
        .outcomes
        .iter()
        .map(|(outcome, n)| {
            let name = serde_json::to_value(outcome)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            let codes = match name.as_str() {
                "rejected" if !summary.reject_codes.is_empty() => {
                    format!(" ({})", named(&summary.reject_codes))
                }
                "error" | "overloaded" if !summary.error_codes.is_empty() => {
                    format!(" ({})", named(&summary.error_codes))
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
        "{t}: latency (us)        {:>8} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "min", "mean", "p50", "p90", "p95", "p99", "p99.9", "p99.99", "max"
    );
    let rows = [
        (
            "from intended send",
            [
                summary.min_us,
                summary.p50_us,
                summary.p90_us,
                summary.p95_us,
                summary.p99_us,
                summary.p999_us,
                summary.p9999_us,
                summary.max_us,
            ],
            summary.mean_us,
        ),
        (
            "from actual send  ",
            [
                summary.uncorrected_min_us,
                summary.uncorrected_p50_us,
                summary.uncorrected_p90_us,
                summary.uncorrected_p95_us,
                summary.uncorrected_p99_us,
                summary.uncorrected_p999_us,
                summary.uncorrected_p9999_us,
                summary.uncorrected_max_us,
            ],
            summary.uncorrected_mean_us,
        ),
    ];
    for (label, v, mean) in rows {
        println!(
            "{t}: {label} {:>8} {mean:>9.1} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
            v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]
        );
    }
}

/// Each `--threshold`, measured, and whether it held.
pub(crate) fn print_thresholds(summary: &Summary) {
    for t in &summary.thresholds {
        println!(
            "threshold {}: measured {:.0}: {}",
            t.threshold,
            t.measured,
            if t.passed { "held" } else { "MISSED" }
        );
    }
}
