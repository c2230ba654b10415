//! What a sales channel is told about its orders after the first answer:
//! every change of each order (routed, confirmed, shipped, re-routed, ...)
//! with the order as it now is, in a bounded, gapless log per channel.
//!
//! A status is derived from a journaled [`Txn`](crate::schema::Txn)'s
//! content alone (the orders it rewrote and the ops that name them), so
//! the live daemon and recovery derive the same statuses from the same
//! record, and the journal's format needs nothing new.

use std::sync::Arc;

use rustc_hash::FxHashMap;
use smallvec::SmallVec;

use super::events::{CursorOutOfRange, EventKind, EventLog};
use super::model::{ChannelIdx, NodeIdx, OrderId, OrderState, ShortLine};
use super::ops::{NodeOp, StockOp};
use super::order::{AllocationState, OrderRecord};

/// Statuses a channel keeps (and snapshots) for followers that reconnect;
/// a follower further behind gets a cursor error and re-reads its orders
/// with a listing. About 200 bytes each: at most some 13 MiB per channel.
pub const MAX_STATUS_EVENTS_PER_CHANNEL: usize = 65_536;

/// What changed for the order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum OrderChange {
    /// Routed at submit: its units are held (or reserved) at its nodes.
    Routed,
    Confirmed,
    Cancelled,
    /// The hold ran out before a confirmation.
    Expired,
    /// Every allocated unit has shipped.
    Shipped,
    /// Some units shipped; others are still open.
    PartlyShipped,
    /// Shipped units came back.
    Returned,
    /// A node rejected the order; its units there were placed elsewhere
    /// (the order's allocations say where).
    ReroutedNodeRejected,
    /// A stock count took units from the order, and they were placed
    /// elsewhere.
    ReroutedStockCount,
    /// Units were taken from the order (a node rejected it or went
    /// offline, or a stock count) and no other node had them: the order
    /// is short.
    Short,
    /// A node serving the order went offline; its units there were placed
    /// elsewhere.
    ReroutedNodeOffline,
}

/// One order's status after a change, as its channel's followers see it.
#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct OrderStatus {
    pub change: OrderChange,
    pub order: OrderId,
    pub channel: ChannelIdx,
    pub client_order_id: Arc<str>,
    pub state: OrderState,
    pub expires_at_ms: u64,
    pub allocations: SmallVec<[AllocationState; 1]>,
    pub short: Vec<ShortLine>,
    /// Nodes this change took units from (re-routes, short).
    pub released_from: SmallVec<[NodeIdx; 1]>,
}

/// What one record's ops say about one of its orders.
#[derive(Default)]
struct Touched {
    allocated: bool,
    /// A node released units because it refused them.
    rejected: bool,
    released_from: SmallVec<[NodeIdx; 1]>,
    shipped: bool,
}

/// The status of every order a journaled change rewrote, in the record's
/// order. Rejected orders are never in one (their answer was the news).
pub fn statuses_of(
    orders: &[OrderRecord],
    stock: &[(u32, StockOp)],
    nodes: &[(NodeIdx, NodeOp)],
) -> Vec<OrderStatus> {
    let mut touched: FxHashMap<OrderId, Touched> = FxHashMap::default();
    for (node, op) in nodes {
        if let NodeOp::Event(event) = op {
            let entry = touched.entry(event.order).or_default();
            match event.kind {
                EventKind::Allocated => entry.allocated = true,
                EventKind::Released | EventKind::Rejected => {
                    entry.rejected |= event.kind == EventKind::Rejected;
                    if !entry.released_from.contains(node) {
                        entry.released_from.push(*node);
                    }
                }
            }
        }
    }
    for (_, op) in stock {
        if let StockOp::Ship { order, .. } = op {
            touched.entry(*order).or_default().shipped = true;
        }
    }
    orders
        .iter()
        .filter(|record| record.state != OrderState::Rejected)
        .map(|record| {
            let touched = touched.remove(&record.id).unwrap_or_default();
            OrderStatus {
                change: classify(record, &touched),
                order: record.id,
                channel: record.channel,
                client_order_id: record.client_order_id.clone(),
                state: record.state,
                expires_at_ms: record.expires_at_ms,
                allocations: record.allocations.clone(),
                short: record.short().to_vec(),
                released_from: touched.released_from,
            }
        })
        .collect()
}

/// Which step rewrote the record: told by its state and by what the
/// record's ops did to it. Each step leaves a different trace: a submit
/// only allocates, a re-route releases and allocates (a rejection releases
/// as `Rejected`, an outage at a node it then excludes, a count at a node
/// it does not), a ship ships, a return changes nothing but the returned
/// counts, a confirmation only the state (confirming a confirmed order
/// rewrites nothing).
fn classify(record: &OrderRecord, touched: &Touched) -> OrderChange {
    match record.state {
        OrderState::Cancelled => return OrderChange::Cancelled,
        OrderState::Expired => return OrderChange::Expired,
        _ => {}
    }
    if !touched.released_from.is_empty() {
        let left_node = touched
            .released_from
            .iter()
            .any(|node| record.excluded().contains(node));
        return match (touched.allocated, touched.rejected, left_node) {
            (false, _, _) => OrderChange::Short,
            (true, true, _) => OrderChange::ReroutedNodeRejected,
            (true, false, true) => OrderChange::ReroutedNodeOffline,
            (true, false, false) => OrderChange::ReroutedStockCount,
        };
    }
    if touched.allocated {
        return OrderChange::Routed;
    }
    if touched.shipped {
        return if record.state == OrderState::Shipped {
            OrderChange::Shipped
        } else {
            OrderChange::PartlyShipped
        };
    }
    if record.allocations.iter().any(|a| a.returned > 0) {
        return OrderChange::Returned;
    }
    OrderChange::Confirmed
}

/// Every channel's status log: the statuses of its orders in the order
/// their records were journaled, each with a cursor from 1 without gaps.
pub struct StatusFeed {
    /// By channel index; a channel a reload adds gets its log on first use.
    channels: Vec<EventLog<OrderStatus>>,
}

/// A feed's statuses shared with its logs, as the feed hands them to a
/// snapshot; the writer makes the [`FeedImage`] of them.
#[derive(Debug, PartialEq)]
pub struct FeedParts {
    channels: Vec<(u64, Vec<Arc<OrderStatus>>)>,
}

impl FeedParts {
    pub fn image(self) -> FeedImage {
        FeedImage {
            channels: self
                .channels
                .into_iter()
                .map(|(first, events)| (first, events.iter().map(|e| (**e).clone()).collect()))
                .collect(),
        }
    }
}

/// A feed as a snapshot keeps it: per channel, the cursor of its oldest
/// kept status and the statuses.
#[derive(Debug, Default, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct FeedImage {
    pub channels: Vec<(u64, Vec<OrderStatus>)>,
}

impl Default for StatusFeed {
    fn default() -> StatusFeed {
        StatusFeed::new()
    }
}

impl StatusFeed {
    pub fn new() -> StatusFeed {
        StatusFeed {
            channels: Vec::new(),
        }
    }

    fn log_mut(&mut self, channel: ChannelIdx) -> &mut EventLog<OrderStatus> {
        let c = channel as usize;
        if self.channels.len() <= c {
            self.channels
                .resize_with(c + 1, || EventLog::new(MAX_STATUS_EVENTS_PER_CHANNEL));
        }
        &mut self.channels[c]
    }

    /// Logs a status under its channel; its cursor and the shared status.
    pub fn append(&mut self, status: OrderStatus) -> (u64, Arc<OrderStatus>) {
        self.log_mut(status.channel).append(status)
    }

    /// A channel's statuses from `cursor` (0: from the oldest kept).
    pub fn since(
        &self,
        channel: ChannelIdx,
        cursor: u64,
    ) -> Result<Vec<(u64, Arc<OrderStatus>)>, CursorOutOfRange> {
        match self.channels.get(channel as usize) {
            Some(log) => log.since(cursor),
            // Nothing logged yet: the first status will have cursor 1.
            None => EventLog::<OrderStatus>::new(1).since(cursor),
        }
    }

    pub fn image(&self) -> FeedImage {
        self.image_parts().image()
    }

    /// The feed at this moment, its statuses shared (see [`FeedParts`]).
    pub fn image_parts(&self) -> FeedParts {
        FeedParts {
            channels: self.channels.iter().map(EventLog::shared_parts).collect(),
        }
    }

    pub fn from_image(image: FeedImage) -> StatusFeed {
        StatusFeed {
            channels: image
                .channels
                .into_iter()
                .map(|(first, events)| {
                    EventLog::from_parts(first, events, MAX_STATUS_EVENTS_PER_CHANNEL)
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::events::NodeEvent;

    fn record(state: OrderState, open: u32, shipped: u32, returned: u32) -> OrderRecord {
        OrderRecord {
            id: 7,
            fingerprint: 0,
            expires_at_ms: 0,
            client_order_id: Arc::from("o"),
            lines: Box::new([]),
            ship_to: (0.0, 0.0),
            allocations: SmallVec::from_vec(vec![AllocationState {
                line: 0,
                node: 2,
                sku: 0,
                initial: open + shipped,
                open,
                shipped,
                returned,
            }]),
            extra: None,
            key_next: 0,
            channel: 1,
            market: None,
            method: crate::core::policy::Method::Ship,
            state,
            created_s: 0,
        }
    }

    fn event(kind: EventKind, order: OrderId) -> NodeOp {
        NodeOp::Event(NodeEvent {
            kind,
            order,
            channel: 1,
            client_order_id: "o".into(),
            lines: SmallVec::new(),
        })
    }

    #[test]
    fn each_step_is_told_by_its_trace() {
        // Proves every kind of change is named from the record and its ops alone.
        let held = record(OrderState::Held, 3, 0, 0);
        let change =
            |record: &OrderRecord, stock: &[(u32, StockOp)], nodes: &[(NodeIdx, NodeOp)]| {
                statuses_of(std::slice::from_ref(record), stock, nodes)[0].change
            };
        let allocated = [(2, event(EventKind::Allocated, 7))];
        let released = [(2, event(EventKind::Released, 7))];
        let moved = [released[0].clone(), (3, event(EventKind::Allocated, 7))];
        assert_eq!(change(&held, &[], &allocated), OrderChange::Routed);
        assert_eq!(
            change(&record(OrderState::Confirmed, 3, 0, 0), &[], &[]),
            OrderChange::Confirmed
        );
        assert_eq!(
            change(&record(OrderState::Cancelled, 0, 0, 0), &[], &released),
            OrderChange::Cancelled
        );
        assert_eq!(
            change(&record(OrderState::Expired, 0, 0, 0), &[], &released),
            OrderChange::Expired
        );
        let ship = [(
            0,
            StockOp::Ship {
                order: 7,
                sku: 0,
                node: 2,
                qty: 1,
            },
        )];
        assert_eq!(
            change(&record(OrderState::Confirmed, 2, 1, 0), &ship, &[]),
            OrderChange::PartlyShipped
        );
        assert_eq!(
            change(&record(OrderState::Shipped, 0, 3, 0), &ship, &[]),
            OrderChange::Shipped
        );
        assert_eq!(
            change(&record(OrderState::Shipped, 0, 3, 1), &[], &[]),
            OrderChange::Returned
        );
        assert_eq!(change(&held, &[], &moved), OrderChange::ReroutedStockCount);
        let mut left = held.clone();
        left.extra_mut().excluded.push(2);
        assert_eq!(change(&left, &[], &moved), OrderChange::ReroutedNodeOffline);
        assert_eq!(change(&left, &[], &released), OrderChange::Short);
        let refused = [
            (2, event(EventKind::Rejected, 7)),
            (3, event(EventKind::Allocated, 7)),
        ];
        assert_eq!(
            change(&left, &[], &refused),
            OrderChange::ReroutedNodeRejected
        );
    }

    #[test]
    fn other_orders_ops_do_not_count() {
        // Proves an order's change is read from its own ops, not a neighbour's in the same record.
        let held = record(OrderState::Confirmed, 3, 0, 0);
        let others = [(2, event(EventKind::Released, 8))];
        let statuses = statuses_of(std::slice::from_ref(&held), &[], &others);
        assert_eq!(statuses[0].change, OrderChange::Confirmed);
        assert!(statuses[0].released_from.is_empty());
    }

    #[test]
    fn channels_count_their_own_cursors() {
        // Proves each channel's cursors run from 1 without gaps, apart from other channels', and survive an image.
        let mut feed = StatusFeed::new();
        for (order, channel) in [(1, 0), (2, 3), (3, 0)] {
            let mut status = statuses_of(&[record(OrderState::Held, 1, 0, 0)], &[], &[])[0].clone();
            status.order = order;
            status.channel = channel;
            feed.append(status);
        }
        let zero: Vec<_> = feed
            .since(0, 0)
            .unwrap()
            .iter()
            .map(|(c, s)| (*c, s.order))
            .collect();
        assert_eq!(zero, vec![(1, 1), (2, 3)]);
        assert_eq!(feed.since(3, 1).unwrap()[0].1.order, 2);
        assert!(feed.since(5, 0).unwrap().is_empty());
        assert!(feed.since(5, 2).is_err());
        let again = StatusFeed::from_image(feed.image());
        assert_eq!(again.since(0, 2).unwrap()[0].1.order, 3);
        assert_eq!(again.image(), feed.image());
    }
}
