//! `[cluster]`: this replica's id, and every replica's replication and
//! client addresses. Without it the daemon is a single node.
//!
//! ```toml
//! [cluster]
//! id = 1
//! certs_dir = "cluster-certs"   # ca.pem, replica-<id>.pem, replica-<id>.key
//! replicas = [
//!   { id = 1, replication = "127.0.0.1:7101", client = "127.0.0.1:4431", http = "127.0.0.1:8081" },
//!   { id = 2, replication = "127.0.0.1:7102", client = "127.0.0.1:4432", http = "127.0.0.1:8082" },
//!   { id = 3, replication = "127.0.0.1:7103", client = "127.0.0.1:4433", http = "127.0.0.1:8083" },
//! ]
//! log_hold_entries = 10000      # entries kept behind a snapshot when the log is compacted
//! laggard_hold_entries = 100000 # a leader keeps up to this many for a follower that lacks them
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use super::{invalid, ConfigError};
use crate::replica::serving::ClientAddrs;

/// Replicas in a cluster at most (a majority of 7 is 4).
pub const MAX_REPLICAS: usize = 7;

/// The default of `[cluster] log_hold_entries`: entries a replica keeps
/// behind its snapshot set's point when it compacts its log, for a
/// follower that is a little behind (one further behind needs a snapshot
/// sent).
pub const DEFAULT_LOG_HOLD_ENTRIES: u64 = 10_000;

/// The default of `[cluster] laggard_hold_entries`: a leader also keeps
/// the entries a follower lacks, up to this many behind its snapshot
/// set's point; a follower further behind is sent the snapshot instead.
pub const DEFAULT_LAGGARD_HOLD_ENTRIES: u64 = 100_000;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// This replica's id: one of `replicas`.
    pub id: u64,
    /// Where the cluster's CA and each replica's certificate and key are
    /// (`omniroute cluster certs` makes them).
    pub certs_dir: PathBuf,
    /// Every replica, this one included; the same list on each.
    pub replicas: Vec<ReplicaConfig>,
    /// Entries kept behind a snapshot set's point at compaction.
    #[serde(default = "default_log_hold_entries")]
    pub log_hold_entries: u64,
    /// Entries a leader keeps for a follower that lacks them, behind its
    /// snapshot set's point, before it sends the snapshot instead.
    #[serde(default = "default_laggard_hold_entries")]
    pub laggard_hold_entries: u64,
}

fn default_log_hold_entries() -> u64 {
    DEFAULT_LOG_HOLD_ENTRIES
}

fn default_laggard_hold_entries() -> u64 {
    DEFAULT_LAGGARD_HOLD_ENTRIES
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicaConfig {
    pub id: u64,
    /// Its replication endpoint (QUIC, mutual TLS, between replicas only).
    pub replication: String,
    /// Its QUIC client port (its `[server] listen`).
    pub client: String,
    /// Its HTTP gateway (its `[http] listen`), if it runs one.
    #[serde(default)]
    pub http: Option<String>,
}

/// A validated `[cluster]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSettings {
    pub id: u64,
    /// This replica's replication endpoint.
    pub listen: SocketAddr,
    /// The other replicas' replication endpoints.
    pub peers: BTreeMap<u64, SocketAddr>,
    /// Every replica's client addresses, for `NotLeader` and redirects.
    pub clients: BTreeMap<u64, ClientAddrs>,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub log_hold_entries: u64,
    pub laggard_hold_entries: u64,
}

impl ClusterSettings {
    /// Every replica's id, this one's included.
    pub fn voters(&self) -> Vec<u64> {
        self.clients.keys().copied().collect()
    }
}

fn address(key: &str, text: &str) -> Result<SocketAddr, ConfigError> {
    text.parse().map_err(|_| {
        invalid(
            key,
            format!("{text:?} is not an address like 127.0.0.1:7101"),
        )
    })
}

impl ClusterConfig {
    /// Checks the table. That this replica's own entry names the ports it
    /// serves is checked at start, after the command line's overrides.
    pub fn validate(&self) -> Result<ClusterSettings, ConfigError> {
        let count = self.replicas.len();
        if count == 0 || count > MAX_REPLICAS {
            return Err(invalid(
                "cluster.replicas",
                format!("1 to {MAX_REPLICAS} replicas, got {count}"),
            ));
        }
        let mut listen = None;
        let mut peers = BTreeMap::new();
        let mut clients = BTreeMap::new();
        for replica in &self.replicas {
            let key = format!("cluster.replicas (id {})", replica.id);
            if replica.id == 0 {
                return Err(invalid("cluster.replicas", "replica ids start at 1"));
            }
            let replication = address(&key, &replica.replication)?;
            let client = ClientAddrs {
                quic: address(&key, &replica.client)?,
                http: replica
                    .http
                    .as_deref()
                    .map(|h| address(&key, h))
                    .transpose()?,
            };
            if clients.insert(replica.id, client).is_some() {
                return Err(invalid(
                    "cluster.replicas",
                    format!("id {} twice", replica.id),
                ));
            }
            if replica.id == self.id {
                listen = Some(replication);
            } else {
                peers.insert(replica.id, replication);
            }
        }
        let listen = listen.ok_or_else(|| {
            invalid(
                "cluster.id",
                format!("{} is not among cluster.replicas", self.id),
            )
        })?;
        Ok(ClusterSettings {
            id: self.id,
            listen,
            peers,
            clients,
            ca: self.certs_dir.join("ca.pem"),
            cert: self.certs_dir.join(format!("replica-{}.pem", self.id)),
            key: self.certs_dir.join(format!("replica-{}.key", self.id)),
            log_hold_entries: self.log_hold_entries,
            laggard_hold_entries: self.laggard_hold_entries,
        })
    }
}
