//! Replication on raft-rs (issue "Three replicas"): the parts a replica is
//! made of; `crate::cluster` runs them in the daemon. A replica's journal is its Raft log
//! (`entry`, `log_index`), beside a hard-state file (`hard_state`); `disk`
//! loads both and queues each Ready's writes on the journal's writer
//! thread; `raft_point` says where a snapshot set stands in the log; `driver` runs the ready loop on its own thread. `sim` (tests
//! only) runs three replicas' ready loops, `driver`'s own pass, over
//! simulated disks under a seeded scheduler of faults, with writes that
//! become durable later (as the group commit makes them), and checks the
//! promises the daemon relies on. `transport` carries raft-rs messages
//! between replicas over QUIC, each side proving who it is with a
//! certificate of the cluster CA (`certs`). While the replica leads, its
//! engine hands records to the driver through `proposer`; while it does
//! not, `follower` applies the committed log to a state of its own, and
//! `serving` tells the client ports which engine answers, or where the
//! leader is.

pub mod certs;
pub mod disk;
pub mod driver;
pub mod entry;
pub mod follower;
pub mod hard_state;
pub mod local_snapshot;
pub mod log_index;
pub mod proposer;
pub mod raft_point;
pub mod serving;
#[cfg(test)]
pub mod sim;
pub mod snapshot_files;
pub mod storage;
pub mod transport;
