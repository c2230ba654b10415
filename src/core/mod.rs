//! The sans-IO core: routing and reservation as plain data and functions.
//! Nothing in `core` awaits a timer, touches a socket or a file, or reads a
//! clock: time comes in as `now_ms`, and the only awaits are on the
//! [`placement::Participants`] the shell hands in.

pub mod book;
pub mod capacity;
pub mod events;
pub mod geo;
pub mod index;
pub mod model;
pub mod network;
pub mod ops;
pub mod order;
pub mod placement;
pub mod policy;
pub mod router;
pub mod sim;
pub mod stock;
