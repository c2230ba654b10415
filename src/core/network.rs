//! The static network: nodes, markets, channels and their routing policies,
//! resolved from the config into indices. Shared read-only by every actor.

use rustc_hash::FxHashMap;

use super::model::{ChannelIdx, MarketIdx, Node, NodeIdx};
use super::policy::Policy;

/// A sales channel and the policy its orders are routed by.
#[derive(Clone, Debug)]
pub struct Channel {
    pub name: String,
    pub policy: Policy,
}

#[derive(Clone, Debug, Default)]
pub struct Network {
    pub nodes: Vec<Node>,
    pub markets: Vec<String>,
    pub channels: Vec<Channel>,
    node_by_id: FxHashMap<String, NodeIdx>,
    market_by_name: FxHashMap<String, MarketIdx>,
    channel_by_name: FxHashMap<String, ChannelIdx>,
}

impl Network {
    /// Builds the lookup tables. Names must already be unique (the config
    /// validation guarantees it).
    pub fn new(nodes: Vec<Node>, markets: Vec<String>, channels: Vec<Channel>) -> Network {
        let node_by_id = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.id.clone(), i as NodeIdx))
            .collect();
        let market_by_name = markets
            .iter()
            .enumerate()
            .map(|(i, m)| (m.clone(), i as MarketIdx))
            .collect();
        let channel_by_name = channels
            .iter()
            .enumerate()
            .map(|(i, c)| (c.name.clone(), i as ChannelIdx))
            .collect();
        Network {
            nodes,
            markets,
            channels,
            node_by_id,
            market_by_name,
            channel_by_name,
        }
    }

    pub fn node_idx(&self, id: &str) -> Option<NodeIdx> {
        self.node_by_id.get(id).copied()
    }

    pub fn market_idx(&self, name: &str) -> Option<MarketIdx> {
        self.market_by_name.get(name).copied()
    }

    pub fn channel_idx(&self, name: &str) -> Option<ChannelIdx> {
        self.channel_by_name.get(name).copied()
    }

    pub fn node(&self, node: NodeIdx) -> &Node {
        &self.nodes[node as usize]
    }

    pub fn policy(&self, channel: ChannelIdx) -> &Policy {
        &self.channels[channel as usize].policy
    }
}
