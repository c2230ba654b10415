//! `omniroute-loadtest`: an open-loop load generator for omniroute.
//!
//! Requests leave at a constant rate whatever the answers do; latency is
//! measured from each request's intended send time (coordinated omission
//! corrected, as wrk2) and from its actual send time, into HDR histograms.
//! At the end the generator audits the stock it set against what buyers
//! were told, and asks the daemon for every routed order.

mod args;
mod audit;
mod drive;
mod feed;
mod follow;
mod orders;
mod redis;
mod report;
mod run;
mod sinks;
mod spawn;

use clap::Parser;
use omniroute_loadtest::chart::{write_chart, ChartData};

use crate::args::Args;
use crate::redis::redis_side_note;
use crate::report::{print, write_hlog};
use crate::spawn::serve_child;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    // The generator's own tail as well as the spawned daemon's.
    omniroute::memory::disable_transparent_huge_pages();
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Some(data_dir) = &args.serve_child {
        return match runtime.block_on(serve_child(data_dir, &args.durability, args.retention_ms)) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("omniroute-loadtest daemon: {e}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    match runtime.block_on(run::run(&args)) {
        Ok(outcome) => {
            let summary = &outcome.summary;
            if let Some(redis) = &summary.redis {
                print(redis);
                println!("redis: {} and no hold expiry or follow-ups; omniroute routes every order and journals it with durability = {:?}", redis_side_note(&args), args.durability);
            }
            print(summary);
            if let Some(path) = &args.chart {
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
                let intervals: Vec<(f64, hdrhistogram::Histogram<u64>)> = outcome
                    .intervals
                    .iter()
                    .map(|i| (i.offset_s, i.histogram.clone()))
                    .collect();
                let title = format!(
                    "omniroute-loadtest: {} at {:.0} orders/s offered{}",
                    summary.scenario,
                    summary.rate_offered,
                    summary
                        .highest_sustainable_rate
                        .map_or(String::new(), |r| format!(", highest sustainable {r:.0}/s"))
                );
                if let Err(e) = write_chart(
                    path,
                    &ChartData {
                        title,
                        intervals: &intervals,
                        distributions,
                    },
                ) {
                    eprintln!("omniroute-loadtest: {e}");
                    return std::process::ExitCode::FAILURE;
                }
            }
            if let Some(path) = &args.hlog {
                if let Err(e) = write_hlog(path, &outcome.intervals) {
                    eprintln!("omniroute-loadtest: {e}");
                    return std::process::ExitCode::FAILURE;
                }
            }
            if let Some(path) = &args.json {
                let text = serde_json::to_string_pretty(summary).expect("summary serializes");
                if let Err(e) = std::fs::write(path, text) {
                    eprintln!("omniroute-loadtest: {}: {e}", path.display());
                    return std::process::ExitCode::FAILURE;
                }
            }
            if let Some(ratio) = summary.ratio_vs_redis {
                println!("ratio_vs_redis={ratio:.2}");
            } else if args.compare_redis {
                println!("ratio_vs_redis=unknown (a side found no sustainable rate)");
            }
            let redis_bad = summary.redis.as_ref().is_some_and(|r| r.oversold_units > 0);
            if summary.oversold_units > 0
                || summary.missing_orders > 0
                || summary.stock_mismatch_units > 0
                || summary.early_expiries > 0
                || summary.status_stream.as_ref().is_some_and(|s| !s.exact())
                || redis_bad
            {
                return std::process::ExitCode::from(3);
            }
            std::process::ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("omniroute-loadtest: {message}");
            std::process::ExitCode::FAILURE
        }
    }
}
