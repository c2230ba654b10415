//! Nodes through the engine: online and offline, nodes added at a reload,
//! event subscriptions and counters.

use std::sync::Arc;

use futures::future::join_all;

use super::error::EngineError;
use super::node::{NodeMsg, NodeStats, Subscription};
use super::router::RouterMsg;
use super::sequencer::Txn;
use super::shard::ShardMsg;
use super::{call, call_committed, Engine};
use crate::core::model::NodeIdx;
use crate::core::network::Network;
use crate::core::ops::NodeOp;

impl Engine {
    /// Adds `network`'s nodes beyond the current ones to the running
    /// daemon: each takes a spare node slot, gets its daily capacity, and
    /// its online flag is journaled; then every router plans with
    /// `network`. The caller has made the new ids durable in the data
    /// directory's names first. Returns the added nodes' ids.
    pub async fn add_nodes(&self, network: Arc<Network>) -> Result<Vec<String>, EngineError> {
        let current = self.network_arc();
        let slots = self.inner.participants.nodes.len();
        let first = current.nodes.len();
        let same_ids = network.nodes.len() >= first
            && current
                .nodes
                .iter()
                .zip(&network.nodes)
                .all(|(a, b)| a.id == b.id);
        if !same_ids {
            return Err(EngineError::NodesChanged);
        }
        if network.nodes.len() > slots {
            return Err(EngineError::NodeSlots {
                asked: network.nodes.len() - first,
                free: slots - first,
            });
        }
        let added = &network.nodes[first..];
        // Room in the index and the shards first: nothing names the new
        // nodes until the routers have the network, last.
        self.inner.index.grow_nodes(network.nodes.len());
        for shard in self.inner.participants.shards.iter() {
            call_committed(shard, |reply| ShardMsg::Widen {
                node_count: network.nodes.len(),
                reply,
            })
            .await?;
        }
        for (n, node) in (first..).zip(added) {
            let actor = &self.inner.participants.nodes[n];
            call_committed(actor, |reply| NodeMsg::Configure {
                daily_capacity: node.daily_capacity,
                reply,
            })
            .await?;
            self.inner
                .health
                .name(actor.id(), format!("node {}", node.id));
        }
        let ops: Vec<(NodeIdx, NodeOp)> = (first..)
            .zip(added)
            .map(|(n, node)| (n as NodeIdx, NodeOp::Online(node.online)))
            .collect();
        let txn = Txn {
            nodes: ops.clone(),
            ..Txn::default()
        };
        let actors = self.inner.participants.nodes.clone();
        let routers = self.inner.routers.clone();
        let next = network.clone();
        let weak = Arc::downgrade(&self.inner);
        let (sent, applied) = tokio::sync::oneshot::channel();
        self.inner
            .sequencer
            .append(txn, move |_| {
                // Each node is online before any router can plan with it.
                for (n, op) in ops {
                    let _ = actors[n as usize].cast(NodeMsg::Ops {
                        ops: vec![op],
                        reply: None,
                    });
                }
                // The sessions' network before the routers' (see
                // `Engine::reload_policies`).
                if let Some(inner) = weak.upgrade() {
                    inner.network.store(next.clone());
                }
                for router in &routers {
                    let _ = router.cast(RouterMsg::SetNetwork(next.clone()));
                }
                let _ = sent.send(());
            })
            .await;
        applied.await.map_err(|_| EngineError::Unavailable)?;
        Ok(added.iter().map(|n| n.id.clone()).collect())
    }

    /// Sets a node online or offline. Offline re-routes every unshipped
    /// allocation it had; returns how many orders were re-routed.
    pub async fn set_node_online(&self, node: &str, online: bool) -> Result<usize, EngineError> {
        let node = self.node_idx(node)?;
        let _permit = self.admit(1).await;
        let now_ms = self.now_ms();
        let txn = Txn {
            nodes: vec![(node, NodeOp::Online(online))],
            ..Txn::default()
        };
        let (reply, answer) = tokio::sync::oneshot::channel();
        let actor = self.inner.participants.nodes[node as usize].clone();
        self.inner
            .sequencer
            .append(txn, move |_| {
                let _ = actor.cast(NodeMsg::Ops {
                    ops: vec![NodeOp::Online(online)],
                    reply: Some(reply),
                });
            })
            .await;
        let orders = answer.await.map_err(|_| EngineError::Unavailable)?;
        let count = orders.len();
        let routers = &self.inner.routers;
        for result in join_all(
            self.by_router(orders, |o| *o)
                .into_iter()
                .map(|(r, orders)| {
                    call_committed(&routers[r], move |reply| RouterMsg::NodeOffline {
                        orders,
                        node,
                        now_ms,
                        reply,
                    })
                }),
        )
        .await
        {
            result?;
        }
        Ok(count)
    }

    /// A node's events from `from_cursor` (0: the oldest kept), then live.
    pub async fn subscribe(
        &self,
        node: &str,
        from_cursor: u64,
    ) -> Result<Subscription, EngineError> {
        let node = self.node_idx(node)?;
        let nodes = &self.inner.participants.nodes;
        Ok(call(&nodes[node as usize], |reply| NodeMsg::Subscribe {
            from_cursor,
            reply,
        })
        .await?)
    }

    /// A node's counters: online, allocations used today, open orders.
    pub async fn node_stats(&self, node: &str) -> Result<NodeStats, EngineError> {
        let node = self.node_idx(node)?;
        Ok(call(
            &self.inner.participants.nodes[node as usize],
            NodeMsg::Stats,
        )
        .await)
    }
}
