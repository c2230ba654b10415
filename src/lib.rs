//! omniroute: omnichannel order orchestration.
//!
//! The map, in the order an order flows through it:
//!
//! - [`server`]: the QUIC ingress. A session frames each stream, checks the
//!   caller's role and hands batches of requests to the engine;
//!   [`server::requests`] answers one request, for QUIC and for [`http`],
//!   the HTTP/JSON gateway (the same requests under `/v1/`).
//! - [`engine`]: the thin ractor shell. One actor per SKU shard, one per
//!   node, a pool of routers, and the [`engine::Engine`] handle the ingress,
//!   the daemon, tests and benches drive; its sequencer journals each step.
//! - [`core`]: the sans-IO heart the actors own. [`core::router`] keeps each
//!   order's lifecycle in its [`core::book`]; [`core::policy`] plans against
//!   the lock-free [`core::index`]; [`core::placement`] holds stock at the
//!   shards ([`core::stock`]) and capacity at the nodes
//!   ([`core::capacity`]); [`core::ops`] are the journaled changes, and
//!   [`core::status`] what each tells the order's channel.
//! - [`journal`]: records appended in group commits by one writer thread,
//!   recovered with a torn tail cut.
//! - [`schema`]: the persisted format: its version, the record kinds, the
//!   stable ids of channels, markets and nodes.
//! - [`store`]: the data directory: its lock, snapshots, and recovery
//!   (snapshots, then the journal after them, then reconcile).
//! - [`daemon`]: the daemon's life: recover, start, snapshot, stop;
//!   [`dev_tokens`]: the embedded development tokens serve on loopback only.
//! - [`admin`]: the admin HTTP port (metrics, health, policy reload), and
//!   [`telemetry`]: metric names, the recorder, the log level.
//! - [`replay`]: `omniroute replay`, the journal's orders routed again
//!   under another policy.
//! - [`replica`]: replication on raft-rs, under way: a replica's log on
//!   its disk, the ready loop over it, and (in tests) the seeded
//!   simulation of three replicas running that loop.
//! - [`config`] (the TOML file, its validation, the embedded sample) and
//!   [`config_diff`] (which keys a reload applies); [`sample`]: sample
//!   orders and the synchronous driver over a config; [`limits`]: every
//!   hard bound, named; [`descriptors`]: the file descriptor limit;
//!   [`faults`]: the seam tests inject I/O errors through; [`memory`]:
//!   process-wide memory settings; [`private_files`]: the data
//!   directory's owner-only modes;
//!   [`timefmt`]: times as ISO 8601 and Unix ms.
//!
//! The `omniroute` binary (`src/bin/omniroute/`) adds the command line, the
//! client commands and `bench-restart`.

pub mod admin;
pub mod cluster;
pub mod config;
pub mod config_diff;
pub mod core;
pub mod daemon;
pub mod descriptors;
pub mod dev_tokens;
pub mod engine;
pub mod faults;
pub mod http;
pub mod journal;
pub mod limits;
pub mod memory;
pub mod private_files;
pub mod replay;
pub mod replica;
pub mod sample;
pub mod schema;
#[cfg(test)]
mod scratch;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod timefmt;

/// The daemon's version, as its package gives it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
