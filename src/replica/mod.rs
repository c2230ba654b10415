//! Replication on raft-rs (issue "Three replicas"), under way; the daemon
//! does not use this module yet. A replica's journal is its Raft log
//! (`entry`, `log_index`), beside a hard-state file (`hard_state`); `disk`
//! loads both and queues each Ready's writes on the journal's writer
//! thread; `driver` runs the ready loop on its own thread. `sim` (tests
//! only) runs three replicas' ready loops, `driver`'s own pass, over
//! simulated disks under a seeded scheduler of faults, with writes that
//! become durable later (as the group commit makes them), and checks the
//! promises the daemon relies on. `transport` carries raft-rs messages
//! between replicas over QUIC, each side proving who it is with a
//! certificate of the cluster CA (`certs`).

pub mod certs;
pub mod disk;
pub mod driver;
pub mod entry;
pub mod hard_state;
pub mod log_index;
#[cfg(test)]
pub mod sim;
pub mod transport;
