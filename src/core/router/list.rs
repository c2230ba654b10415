//! Finding a channel's orders: one bounded page of the book, in order id
//! order, for listings that page through every order once.

use std::collections::BinaryHeap;

use super::RouterCore;
use crate::core::model::{ChannelIdx, NodeIdx, OrderId, OrderState};
use crate::core::order::OrderRecord;

/// Which orders a listing wants, and where its page starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrderFilter {
    pub channel: ChannelIdx,
    pub state: Option<OrderState>,
    /// Orders with units (open, shipped or returned) at this node.
    pub node: Option<NodeIdx>,
    /// Orders routed at or after this (Unix ms; 0: no bound).
    pub created_from_ms: u64,
    /// Orders routed before this (Unix ms; 0: no bound).
    pub created_to_ms: u64,
    /// Orders with a higher id only: where the last page ended.
    pub after: OrderId,
    pub limit: usize,
}

impl OrderFilter {
    pub fn matches(&self, record: &OrderRecord) -> bool {
        record.channel == self.channel
            && record.id > self.after
            && self.state.is_none_or(|state| record.state == state)
            && self
                .node
                .is_none_or(|node| record.allocations.iter().any(|a| a.node == node))
            && self.created_within(record)
    }

    /// Whether the order was routed within the time bounds (an order
    /// without a recorded time matches only when there are none).
    fn created_within(&self, record: &OrderRecord) -> bool {
        if self.created_from_ms == 0 && self.created_to_ms == 0 {
            return true;
        }
        let to = if self.created_to_ms == 0 {
            u64::MAX
        } else {
            self.created_to_ms
        };
        record
            .created_at_ms()
            .is_some_and(|at| (self.created_from_ms..to).contains(&at))
    }
}

impl RouterCore {
    /// The `filter.limit` lowest-id orders of this router that match, in
    /// id order. One pass over the book, keeping at most `limit` ids.
    pub fn list(&self, filter: &OrderFilter) -> Vec<OrderRecord> {
        let mut lowest: BinaryHeap<OrderId> = BinaryHeap::with_capacity(filter.limit + 1);
        for record in self.orders.values().filter(|r| filter.matches(r)) {
            if lowest.len() < filter.limit {
                lowest.push(record.id);
            } else if lowest.peek().is_some_and(|&top| record.id < top) {
                lowest.pop();
                lowest.push(record.id);
            }
        }
        lowest
            .into_sorted_vec()
            .iter()
            .filter_map(|id| self.orders.get(id).cloned())
            .collect()
    }
}
