//! The static network: nodes, markets, channels and their routing policies,
//! resolved from the config into indices. Shared read-only by every actor.

use rustc_hash::FxHashMap;

use super::geo::GeoPoint;
use super::model::{ChannelIdx, MarketIdx, Node, NodeIdx};
use super::policy::Policy;
use crate::schema::Names;

/// A sales channel and the policy its orders are routed by.
#[derive(Clone, Debug)]
pub struct Channel {
    pub name: String,
    pub policy: Policy,
    /// Gone from the config but known to the data directory (see
    /// [`Node::retired`]): no order names it any more.
    pub retired: bool,
}

#[derive(Clone, Debug, Default)]
pub struct Network {
    pub nodes: Vec<Node>,
    pub markets: Vec<String>,
    pub channels: Vec<Channel>,
    node_by_id: FxHashMap<String, NodeIdx>,
    market_by_name: FxHashMap<String, MarketIdx>,
    channel_by_name: FxHashMap<String, ChannelIdx>,
    /// Each market's region: its nodes' bounding box, widened by
    /// `MARKET_MARGIN_KM` (see [`Network::market_at`]).
    regions: Vec<Region>,
}

/// How far past its outermost nodes a market's region reaches: a customer
/// in the suburbs beyond the last store still belongs to the market.
pub const MARKET_MARGIN_KM: f64 = 50.0;

/// Kilometres per degree of latitude (and of longitude at the equator).
const KM_PER_DEGREE: f64 = 111.2;

/// A latitude and longitude box, in degrees.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Region {
    lat: (f64, f64),
    lon: (f64, f64),
}

impl Region {
    fn holds(&self, point: &GeoPoint) -> bool {
        (self.lat.0..=self.lat.1).contains(&point.lat)
            && (self.lon.0..=self.lon.1).contains(&point.lon)
    }
}

/// Each market's nodes' box, widened by `MARKET_MARGIN_KM` (in longitude,
/// at the box's edge nearest a pole, where a degree is shortest).
fn regions(nodes: &[Node], markets: usize) -> Vec<Region> {
    let mut boxes: Vec<Option<Region>> = vec![None; markets];
    for node in nodes.iter().filter(|n| !n.retired) {
        let (lat, lon) = (node.location.lat, node.location.lon);
        let region = boxes[node.market as usize].get_or_insert(Region {
            lat: (lat, lat),
            lon: (lon, lon),
        });
        region.lat = (region.lat.0.min(lat), region.lat.1.max(lat));
        region.lon = (region.lon.0.min(lon), region.lon.1.max(lon));
    }
    boxes
        .into_iter()
        .map(|region| {
            let Some(r) = region else {
                // A market without nodes has no region.
                return Region {
                    lat: (f64::NAN, f64::NAN),
                    lon: (f64::NAN, f64::NAN),
                };
            };
            let lat_margin = MARKET_MARGIN_KM / KM_PER_DEGREE;
            let polar = r.lat.0.abs().max(r.lat.1.abs()).min(89.0).to_radians();
            let lon_margin = MARKET_MARGIN_KM / (KM_PER_DEGREE * polar.cos());
            Region {
                lat: (r.lat.0 - lat_margin, r.lat.1 + lat_margin),
                lon: (r.lon.0 - lon_margin, r.lon.1 + lon_margin),
            }
        })
        .collect()
}

impl Network {
    /// Builds the lookup tables. Names must already be unique (the config
    /// validation guarantees it).
    pub fn new(nodes: Vec<Node>, markets: Vec<String>, channels: Vec<Channel>) -> Network {
        let node_by_id = nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| !n.retired)
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
            .filter(|(_, c)| !c.retired)
            .map(|(i, c)| (c.name.clone(), i as ChannelIdx))
            .collect();
        let regions = regions(&nodes, markets.len());
        Network {
            nodes,
            markets,
            channels,
            node_by_id,
            market_by_name,
            channel_by_name,
            regions,
        }
    }

    /// The market an order without one belongs to, from its ship-to point:
    /// the one market whose region (its nodes' bounding box, widened by
    /// `MARKET_MARGIN_KM`) holds the point. None when no region or more
    /// than one does: a border the network cannot settle.
    pub fn market_at(&self, point: &GeoPoint) -> Option<MarketIdx> {
        let mut holding = self
            .regions
            .iter()
            .enumerate()
            .filter(|(_, region)| region.holds(point));
        match (holding.next(), holding.next()) {
            (Some((market, _)), None) => Some(market as MarketIdx),
            _ => None,
        }
    }

    /// This network under the ids of `names` (a data directory's): each
    /// name keeps its id there, names new to it take the next ids in the
    /// config's order, and names only it knows stay as retired stand-ins.
    /// Returns the network and the names with the new ones added.
    pub fn with_names(&self, names: &Names) -> (Network, Names) {
        let mut ids = names.clone();
        let place = |list: &mut Vec<String>, name: &str| -> usize {
            list.iter().position(|n| n == name).unwrap_or_else(|| {
                list.push(name.to_string());
                list.len() - 1
            })
        };
        let mut nodes: Vec<Option<Node>> = vec![None; ids.nodes.len()];
        for node in &self.nodes {
            let market = place(&mut ids.markets, &self.markets[node.market as usize]);
            let at = place(&mut ids.nodes, &node.id);
            if at >= nodes.len() {
                nodes.resize(at + 1, None);
            }
            nodes[at] = Some(Node {
                market: market as MarketIdx,
                ..node.clone()
            });
        }
        let mut channels: Vec<Option<Channel>> = vec![None; ids.channels.len()];
        for channel in &self.channels {
            let at = place(&mut ids.channels, &channel.name);
            if at >= channels.len() {
                channels.resize(at + 1, None);
            }
            channels[at] = Some(channel.clone());
        }
        let nodes = nodes
            .into_iter()
            .zip(&ids.nodes)
            .map(|(node, id)| node.unwrap_or_else(|| Node::retired(id, 0)))
            .collect();
        let channels = channels
            .into_iter()
            .zip(&ids.channels)
            .map(|(channel, name)| {
                channel.unwrap_or_else(|| Channel {
                    name: name.clone(),
                    policy: Policy::default(),
                    retired: true,
                })
            })
            .collect();
        let network = Network::new(nodes, ids.markets.clone(), channels);
        (network, ids)
    }

    /// The names of this network in its own order: its ids, when it is
    /// already under a data directory's names.
    pub fn names(&self) -> Names {
        Names {
            channels: self.channels.iter().map(|c| c.name.clone()).collect(),
            markets: self.markets.clone(),
            nodes: self.nodes.iter().map(|n| n.id.clone()).collect(),
            ..Names::new()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, market: MarketIdx) -> Node {
        Node {
            retired: false,
            online: true,
            daily_capacity: 10,
            ..Node::retired(id, market)
        }
    }

    fn channel(name: &str) -> Channel {
        Channel {
            name: name.into(),
            policy: Policy::default(),
            retired: false,
        }
    }

    #[test]
    fn ids_follow_the_names_not_the_config_order() {
        // Proves a reordered config with a node and a channel added and one
        // of each removed keeps every known name's id, appends the new
        // ones, and keeps the removed ones as retired stand-ins.
        let mut names = Names::new();
        names.nodes = vec!["A".into(), "B".into(), "C".into()];
        names.markets = vec!["DE".into(), "FR".into()];
        names.channels = vec!["web".into(), "app".into()];
        let config = Network::new(
            vec![node("D", 0), node("C", 1), node("A", 0)],
            vec!["FR".into(), "DE".into()],
            vec![channel("aaa"), channel("web")],
        );
        let (network, ids) = config.with_names(&names);
        assert_eq!(ids.nodes, ["A", "B", "C", "D"]);
        assert_eq!(ids.channels, ["web", "app", "aaa"]);
        assert_eq!(ids.markets, ["DE", "FR"]);
        assert_eq!(network.node_idx("A"), Some(0));
        assert_eq!(network.node_idx("B"), None, "a retired node takes nothing");
        assert!(network.node(1).retired);
        assert_eq!(network.node_idx("C"), Some(2));
        assert_eq!(network.node_idx("D"), Some(3));
        assert_eq!(network.markets[network.node(2).market as usize], "DE");
        assert_eq!(network.markets[network.node(0).market as usize], "FR");
        assert_eq!(network.channel_idx("web"), Some(0));
        assert_eq!(network.channel_idx("app"), None);
        assert_eq!(network.channel_idx("aaa"), Some(2));
        // The same config again changes nothing, and the network says its ids.
        assert_eq!(network.with_names(&ids).1, ids);
        assert_eq!(network.names(), ids);
    }
}
