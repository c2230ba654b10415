//! `omniroute-loadtest`: an open-loop load generator for omniroute.
//!
//! Requests leave at a constant rate whatever the answers do; latency is
//! measured from each request's intended send time (coordinated omission
//! corrected, as wrk2) and from its actual send time, into HDR histograms.
//! At the end the generator audits the stock it set against what buyers
//! were told, and asks the daemon for every routed order.

mod admin;
mod args;
mod audit;
mod builtin;
mod cluster;
mod cpu;
mod drive;
mod feed;
mod follow;
mod leader;
mod orders;
mod output;
mod redis;
mod report;
mod run;
mod scrape;
mod sinks;
mod spawn;
mod timeline;

use clap::Parser;

use crate::args::Args;
use crate::spawn::serve_child;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    // The generator's own tail as well as the spawned daemon's.
    omniroute::memory::disable_transparent_huge_pages();
    let args = Args::parse();
    if let Some(config) = &args.serve_replica {
        let runtime = omniroute::server::runtime(spawn::worker_threads(args.server_threads))
            .expect("tokio runtime");
        return match runtime.block_on(cluster::serve_replica(config)) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("omniroute-loadtest replica: {e}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    if let Some(data_dir) = &args.serve_child {
        let runtime = omniroute::server::runtime(spawn::worker_threads(args.server_threads))
            .expect("tokio runtime");
        return match runtime.block_on(serve_child(data_dir, &args)) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("omniroute-loadtest daemon: {e}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.generator_threads)
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(run::run(&args)) {
        Ok(outcome) => output::finish(&args, outcome),
        Err(message) => {
            eprintln!("omniroute-loadtest: {message}");
            std::process::ExitCode::FAILURE
        }
    }
}
