//! Replication on raft-rs (issue "Three replicas"): the seeded simulation
//! that drives three raft-rs nodes and checks the promises the daemon will
//! rely on, and the file that keeps a replica's Raft hard state. The
//! daemon does not use this module yet.

pub mod entry;
pub mod hard_state;
pub mod log_index;
pub mod sim;
