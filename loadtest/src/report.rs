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
    println!(
        "{t}: outcomes {:?}, reject codes {:?}",
        summary.outcomes, summary.reject_codes
    );
    println!(
        "{t}: latency from intended send: p50 {} us, p90 {} us, p99 {} us, p99.9 {} us, max {} us",
        summary.p50_us, summary.p90_us, summary.p99_us, summary.p999_us, summary.max_us
    );
    println!(
        "{t}: latency from actual send:   p50 {} us, p90 {} us, p99 {} us, p99.9 {} us, max {} us",
        summary.uncorrected_p50_us,
        summary.uncorrected_p90_us,
        summary.uncorrected_p99_us,
        summary.uncorrected_p999_us,
        summary.uncorrected_max_us
    );
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
