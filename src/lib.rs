//! omniroute: omnichannel order orchestration.
//!
//! The map, in the order an order flows through it:
//!
//! - [`config`]: the TOML config, its validation, and the embedded default
//!   with its sample network.
//! - [`core`]: the sans-IO heart. [`core::policy`] plans (filters, rules,
//!   weighted cost) against the lock-free [`core::index`];
//!   [`core::placement`] holds stock at the shards ([`core::stock`]) and
//!   capacity at the nodes ([`core::capacity`]), then commits or re-plans;
//!   [`core::router`] keeps each order's lifecycle and idempotency.
//! - [`engine`]: the thin ractor shell: one actor per SKU shard, one per
//!   node, a pool of routers, and the [`engine::Engine`] handle.
//! - [`store`]: the data directory: recovery, snapshots, and what the
//!   files name by [`schema`]'s stable ids and format version.
//! - [`limits`]: every hard bound, named.
//! - [`memory`]: process-wide memory settings (no transparent huge pages).

pub mod admin;
pub mod config;
pub mod config_diff;
pub mod core;
pub mod daemon;
pub mod engine;
pub mod journal;
pub mod limits;
pub mod memory;
pub mod replay;
pub mod sample;
pub mod schema;
pub mod server;
pub mod store;
pub mod telemetry;
