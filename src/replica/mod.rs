//! Replication on raft-rs (issue "Three replicas"): so far the seeded
//! simulation that drives three raft-rs nodes, persisting asynchronously as
//! the journal's group commit will, and checks the promises the daemon will
//! rely on. The daemon does not use this module yet.

pub mod sim;
