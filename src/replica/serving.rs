//! Whether this process serves orders, and where to send a client when it
//! does not. A single node always serves its one engine; a replica serves
//! only while it leads and its engine is up, and otherwise names the
//! leader's client addresses (QUIC and HTTP), which the QUIC port answers
//! as `NotLeader` and the HTTP gateway as a redirect.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwapOption;

use crate::engine::Engine;

/// Where a replica's clients reach it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientAddrs {
    /// The QUIC port (`[server] listen`).
    pub quic: SocketAddr,
    /// The HTTP gateway, if it runs one.
    pub http: Option<SocketAddr>,
}

/// Why no engine serves here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NotServing {
    /// The leader's client addresses, if a leader other than this replica
    /// is known.
    pub leader: Option<ClientAddrs>,
}

/// The engine that serves here, if any, and the cluster's client addresses.
pub struct Serving {
    engine: ArcSwapOption<Engine>,
    /// The leader this replica knows of (0: none).
    leader: AtomicU64,
    /// This replica's id (0 on a single node).
    id: u64,
    replicas: BTreeMap<u64, ClientAddrs>,
}

impl Serving {
    /// A single node: `engine` serves, always.
    pub fn single(engine: Engine) -> Serving {
        Serving {
            engine: ArcSwapOption::from_pointee(engine),
            leader: AtomicU64::new(0),
            id: 0,
            replicas: BTreeMap::new(),
        }
    }

    /// Replica `id` of a cluster whose replicas' clients use `replicas`;
    /// nothing serves until it leads.
    pub fn replica(id: u64, replicas: BTreeMap<u64, ClientAddrs>) -> Serving {
        Serving {
            engine: ArcSwapOption::empty(),
            leader: AtomicU64::new(0),
            id,
            replicas,
        }
    }

    /// The engine to answer with, or where to send the client.
    pub fn engine(&self) -> Result<Engine, NotServing> {
        if let Some(engine) = self.engine.load_full() {
            return Ok((*engine).clone());
        }
        let leader = self.leader.load(Ordering::Acquire);
        let leader = (leader != self.id)
            .then(|| self.replicas.get(&leader).copied())
            .flatten();
        Err(NotServing { leader })
    }

    /// Whether an engine serves here now.
    pub fn is_serving(&self) -> bool {
        self.engine.load().is_some()
    }

    /// The leader is now `leader` (0: none known).
    pub fn set_leader(&self, leader: u64) {
        self.leader.store(leader, Ordering::Release);
    }

    /// Serves with `engine` from now on (a promotion), or with none (a
    /// step-down); returns the engine that served before.
    pub fn set_engine(&self, engine: Option<Engine>) -> Option<Engine> {
        let old = self.engine.swap(engine.map(std::sync::Arc::new));
        old.map(|e| (*e).clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replica_that_does_not_serve_names_the_leader_it_knows_but_never_itself() {
        // Proves a replica without an engine sends clients to the leader's addresses, to
        // nobody while no leader is known, and to nobody when it is the leader itself (its
        // engine is not up yet: pointing a client back here would loop).
        let addrs = |port: u16| ClientAddrs {
            quic: SocketAddr::from(([127, 0, 0, 1], port)),
            http: None,
        };
        let replicas = BTreeMap::from([(1, addrs(1)), (2, addrs(2)), (3, addrs(3))]);
        let serving = Serving::replica(1, replicas);
        let not = |serving: &Serving| serving.engine().err().expect("no engine serves");
        assert_eq!(not(&serving), NotServing { leader: None });
        serving.set_leader(2);
        assert_eq!(not(&serving).leader, Some(addrs(2)));
        serving.set_leader(1);
        assert_eq!(not(&serving).leader, None);
        assert!(!serving.is_serving());
    }
}
