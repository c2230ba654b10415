//! The ledger of one fulfillment node: how many allocations it accepted
//! today, whether it is online, and which orders it currently serves. The
//! node actor is its single writer.

use std::sync::Arc;

use super::events::{CursorOutOfRange, EventLog, NodeEvent};
use super::index::AvailabilityIndex;
use super::model::{NodeIdx, OrderId};
use super::stepped::SteppedMap;

const MS_PER_DAY: u64 = 86_400_000;

/// Answer to a capacity hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CapacityOutcome {
    /// One allocation of today's capacity is taken.
    Held,
    /// The order already has an allocation here; no new capacity is used.
    AlreadyServing,
    /// Today's capacity is used up.
    Full,
    Offline,
}

impl CapacityOutcome {
    pub fn is_ok(self) -> bool {
        matches!(
            self,
            CapacityOutcome::Held | CapacityOutcome::AlreadyServing
        )
    }
}

pub struct NodeLedger {
    node: NodeIdx,
    daily_capacity: u32,
    /// Allocations taken on `day`.
    used: u32,
    /// Day number since the epoch.
    day: u32,
    online: bool,
    index: Arc<AvailabilityIndex>,
    /// Orders served here, each with the day its capacity was taken on: a
    /// release on a later day gives nothing back to today. No pending state
    /// is kept: an attempt that fails releases what it took, and an order
    /// re-routed for an outage is checked against the router's own book.
    orders: SteppedMap<OrderId, u32>,
    /// The image under way: all but its orders, which the walk fills.
    walk: Option<LedgerParts>,
    /// What this node was told, for its subscribers.
    events: EventLog,
}

/// Events a node keeps (and snapshots) for subscribers that reconnect;
/// a subscriber further behind gets a cursor error and re-reads its open
/// allocations. Bounds memory (and snapshot size): 60 nodes keep at most
/// half a million events, about 40 MiB.
pub const MAX_EVENTS_PER_NODE: usize = 8192;

fn day_of(now_ms: u64) -> u32 {
    u32::try_from(now_ms / MS_PER_DAY).unwrap_or(u32::MAX)
}

impl NodeLedger {
    pub fn new(
        node: NodeIdx,
        daily_capacity: u32,
        online: bool,
        index: Arc<AvailabilityIndex>,
        now_ms: u64,
    ) -> NodeLedger {
        let ledger = NodeLedger {
            node,
            daily_capacity,
            used: 0,
            day: day_of(now_ms),
            online,
            index,
            orders: SteppedMap::default(),
            walk: None,
            events: EventLog::new(MAX_EVENTS_PER_NODE),
        };
        ledger.publish();
        ledger
    }

    /// The node's daily capacity is now `daily_capacity` (a node added to
    /// a running daemon takes a spare ledger and configures it).
    pub fn set_daily_capacity(&mut self, daily_capacity: u32) {
        self.daily_capacity = daily_capacity.max(self.used);
        self.publish();
    }

    fn publish(&self) {
        assert!(
            self.used <= self.daily_capacity,
            "node {} above its capacity",
            self.node
        );
        self.index.publish_node(
            self.node,
            self.online,
            self.used,
            self.daily_capacity - self.used,
        );
    }

    /// A new day starts with the whole capacity free.
    fn roll(&mut self, now_ms: u64) {
        let today = day_of(now_ms);
        if today > self.day {
            self.day = today;
            self.used = 0;
        }
    }

    pub fn hold(&mut self, order: OrderId, now_ms: u64) -> CapacityOutcome {
        self.roll(now_ms);
        if !self.online {
            return CapacityOutcome::Offline;
        }
        if self.orders.contains_key(&order) {
            return CapacityOutcome::AlreadyServing;
        }
        if self.used >= self.daily_capacity {
            return CapacityOutcome::Full;
        }
        self.used += 1;
        *self.orders.get_or_default(order) = self.day;
        self.publish();
        CapacityOutcome::Held
    }

    /// A journaled decision uses this node since `at_ms`. Live, its hold
    /// already took the capacity and this changes nothing; on replay it takes
    /// it (never above the day's capacity: a replay must not fail).
    pub fn take(&mut self, order: OrderId, at_ms: u64) {
        self.roll(at_ms);
        if self.orders.contains_key(&order) {
            return;
        }
        let day = day_of(at_ms);
        if day == self.day {
            self.used = (self.used + 1).min(self.daily_capacity);
        }
        *self.orders.get_or_default(order) = day;
        self.publish();
    }

    /// The order no longer needs this node (a failed attempt, cancelled,
    /// expired, or re-routed away): today's capacity comes back.
    pub fn release(&mut self, order: OrderId) {
        if let Some(day) = self.orders.remove(&order) {
            if day == self.day {
                self.used -= 1;
            }
            self.publish();
        }
    }

    /// The order finished with this node (all shipped): forget it without
    /// giving today's capacity back, since the work was done.
    pub fn finish(&mut self, order: OrderId) {
        self.orders.remove(&order);
    }

    /// Sets the online flag. Going offline returns the orders served here,
    /// which must be re-routed elsewhere.
    pub fn set_online(&mut self, online: bool) -> Vec<OrderId> {
        self.online = online;
        self.publish();
        if online {
            return Vec::new();
        }
        let mut open: Vec<OrderId> = self.orders.iter().map(|(&order, _)| order).collect();
        open.sort_unstable();
        open
    }

    pub fn record_event(&mut self, event: NodeEvent) -> (u64, Arc<NodeEvent>) {
        self.events.append(event)
    }

    pub fn events_since(
        &self,
        cursor: u64,
    ) -> Result<Vec<(u64, Arc<NodeEvent>)>, CursorOutOfRange> {
        self.events.since(cursor)
    }

    pub fn is_online(&self) -> bool {
        self.online
    }

    pub fn used_today(&self) -> u32 {
        self.used
    }

    pub fn serves(&self, order: OrderId) -> bool {
        self.orders.contains_key(&order)
    }

    pub fn open_orders(&self) -> usize {
        self.orders.len()
    }

    /// The ledger as a snapshot keeps it.
    pub fn image(&self) -> LedgerImage {
        self.image_parts().image()
    }

    /// The ledger at this moment, as the node hands it to a snapshot: the
    /// writer sorts the orders and copies the shared events (see
    /// [`LedgerParts`]).
    pub fn image_parts(&self) -> LedgerParts {
        let mut parts = self.image_parts_without_orders();
        parts.orders = self.orders.iter().map(|(&o, &d)| (o, d)).collect();
        parts
    }

    fn image_parts_without_orders(&self) -> LedgerParts {
        let (first_cursor, events) = self.events.shared_parts();
        LedgerParts {
            node: self.node,
            used: self.used,
            day: self.day,
            online: self.online,
            orders: Vec::new(),
            first_cursor,
            events,
        }
    }

    /// Starts an image of the ledger as it is now, its orders to be taken
    /// a step at a time ([`NodeLedger::image_step`]) while they change.
    pub fn begin_image(&mut self) {
        let mut parts = self.image_parts_without_orders();
        parts.orders.reserve(self.orders.len());
        self.orders.begin_image();
        self.walk = Some(parts);
    }

    /// Images the next `max_orders` orders; the image once the last is in.
    pub fn image_step(&mut self, max_orders: usize) -> Option<LedgerParts> {
        let parts = self.walk.as_mut()?;
        let orders = &mut parts.orders;
        if !self
            .orders
            .image_step(max_orders, |&order, &day| orders.push((order, day)))
        {
            return None;
        }
        self.walk.take()
    }

    /// A ledger from its image; capacity comes from the (current) config.
    pub fn from_image(
        image: LedgerImage,
        daily_capacity: u32,
        index: Arc<AvailabilityIndex>,
    ) -> NodeLedger {
        let ledger = NodeLedger {
            node: image.node,
            daily_capacity,
            used: image.used.min(daily_capacity),
            day: image.day,
            online: image.online,
            index,
            orders: {
                let mut orders = SteppedMap::default();
                for (order, day) in image.orders {
                    *orders.get_or_default(order) = day;
                }
                orders
            },
            walk: None,
            events: EventLog::from_parts(
                image.events.first_cursor,
                image.events.events,
                MAX_EVENTS_PER_NODE,
            ),
        };
        ledger.publish();
        ledger
    }
}

/// A ledger as its node hands it to a snapshot: its orders unsorted and
/// its events shared with the log. Sorting and copying them on the node's
/// turn held every actor of its worker for up to 6 ms per node.
#[derive(Debug, PartialEq)]
pub struct LedgerParts {
    node: NodeIdx,
    used: u32,
    day: u32,
    online: bool,
    orders: Vec<(OrderId, u32)>,
    first_cursor: u64,
    events: Vec<Arc<NodeEvent>>,
}

impl LedgerParts {
    pub fn node(&self) -> NodeIdx {
        self.node
    }

    /// The image a snapshot file holds: orders sorted, events copied.
    pub fn image(mut self) -> LedgerImage {
        self.orders.sort_unstable();
        LedgerImage {
            node: self.node,
            used: self.used,
            day: self.day,
            online: self.online,
            orders: self.orders,
            events: super::events::EventLogImage {
                first_cursor: self.first_cursor,
                events: self.events.iter().map(|e| (**e).clone()).collect(),
            },
        }
    }
}

/// What a node snapshot holds.
#[derive(Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct LedgerImage {
    pub node: NodeIdx,
    pub used: u32,
    pub day: u32,
    pub online: bool,
    pub orders: Vec<(OrderId, u32)>,
    pub events: super::events::EventLogImage,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ledger(capacity: u32) -> NodeLedger {
        NodeLedger::new(0, capacity, true, Arc::new(AvailabilityIndex::new(1, 1)), 0)
    }

    #[test]
    fn capacity_is_never_exceeded_and_comes_back() {
        // Proves a full node refuses holds, releases free capacity, and a new day resets it.
        let mut node = ledger(2);
        assert_eq!(node.hold(1, 0), CapacityOutcome::Held);
        assert_eq!(node.hold(1, 0), CapacityOutcome::AlreadyServing);
        assert_eq!(node.hold(2, 0), CapacityOutcome::Held);
        assert_eq!(node.hold(3, 0), CapacityOutcome::Full);
        node.release(2);
        assert_eq!(node.hold(3, 0), CapacityOutcome::Held);
        assert_eq!(node.hold(4, MS_PER_DAY), CapacityOutcome::Held);
        assert_eq!(node.used_today(), 1);
        // A release of yesterday's allocation gives nothing back today.
        node.release(1);
        assert_eq!(node.used_today(), 1);
    }

    #[test]
    fn offline_node_refuses_and_lists_its_orders() {
        // Proves going offline refuses new holds and hands back the orders to re-route.
        let mut node = ledger(10);
        node.hold(7, 0);
        node.hold(8, 0);
        assert_eq!(node.set_online(false), vec![7, 8]);
        assert_eq!(node.hold(9, 0), CapacityOutcome::Offline);
    }
}
