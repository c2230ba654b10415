//! The sans-IO core: routing and reservation as plain data and functions.
//! Nothing in `core` awaits a timer, touches a socket or a file, or reads a
//! clock: time comes in as `now_ms`, and the only awaits are on the
//! [`placement::Participants`] the shell hands in.
//!
//! - What an order is: [`model`] (requests, decisions, ids), [`order`] (the
//!   record a router keeps), [`network`] (nodes, channels, markets, their
//!   policies), [`geo`].
//! - Where orders live and what happens to them: [`book`] (partitions and
//!   dense books), [`router`] (the lifecycle, one step per method).
//! - Deciding: [`policy`] (filters, rules, the planner) over [`index`] (the
//!   lock-free availability the owners publish).
//! - Reserving: [`placement`] (two rounds, stock then capacity, over the
//!   [`placement::Participants`]), [`stock`] (a shard's cells and
//!   reservations), [`capacity`] (a node's ledger) with its [`events`].
//! - Changing: [`ops`], the journaled ops and what applying one means;
//!   [`status`], what each change tells the order's channel.
//! - Driving it all synchronously, for tests and simulation: [`sim`].

pub mod book;
pub mod capacity;
pub mod error;
pub mod events;
pub mod geo;
pub mod index;
pub mod keys;
pub mod model;
pub mod network;
pub mod ops;
pub mod order;
pub mod placement;
pub mod policy;
pub mod router;
pub mod sim;
pub mod status;
pub mod stepped;
pub mod stock;
