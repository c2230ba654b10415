//! What a fulfillment node is told: allocations made to it and taken back,
//! in order, each with a cursor so that a subscriber that reconnects resumes
//! exactly where it stopped. Kept per node, by the node's ledger; the same
//! bounded, gapless log keeps each channel's order statuses
//! ([`super::status`]).

use std::collections::VecDeque;
use std::sync::Arc;

use smallvec::SmallVec;

use super::model::{ChannelIdx, OrderId, SkuId};

#[derive(Clone, Copy, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum EventKind {
    /// Units of the order are now the node's to pick.
    Allocated,
    /// Units the node was given are no longer its (cancel, expiry, re-route,
    /// stock lost); it must not ship them.
    Released,
    /// Units the node refused are no longer its: released at the node's
    /// own rejection (the wire says released; the channel's status says
    /// why). Last, so that logs written before it read the same.
    Rejected,
}

#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct NodeEvent {
    pub kind: EventKind,
    pub order: OrderId,
    pub channel: ChannelIdx,
    pub client_order_id: Arc<str>,
    /// (line, sku, units)
    pub lines: SmallVec<[(u16, SkuId, u32); 1]>,
}

/// The subscriber asked for events the log no longer keeps (or not yet has).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("cursor {asked} is outside the kept events {oldest}..={newest}")]
pub struct CursorOutOfRange {
    pub asked: u64,
    pub oldest: u64,
    pub newest: u64,
}

/// The newest `max_events` events of one node (or channel), cursors from 1
/// without gaps.
pub struct EventLog<E = NodeEvent> {
    /// Cursor of `events[0]`.
    first_cursor: u64,
    events: VecDeque<Arc<E>>,
    max_events: usize,
}

impl<E: Clone> EventLog<E> {
    pub fn new(max_events: usize) -> EventLog<E> {
        EventLog {
            first_cursor: 1,
            events: VecDeque::new(),
            max_events: max_events.max(1),
        }
    }

    /// The cursor the next event will get.
    pub fn next_cursor(&self) -> u64 {
        self.first_cursor + self.events.len() as u64
    }

    pub fn append(&mut self, event: E) -> (u64, Arc<E>) {
        let cursor = self.next_cursor();
        let event = Arc::new(event);
        self.events.push_back(event.clone());
        if self.events.len() > self.max_events {
            self.events.pop_front();
            self.first_cursor += 1;
        }
        (cursor, event)
    }

    /// Events from `cursor` on (0: from the oldest kept).
    pub fn since(&self, cursor: u64) -> Result<Vec<(u64, Arc<E>)>, CursorOutOfRange> {
        let cursor = if cursor == 0 {
            self.first_cursor
        } else {
            cursor
        };
        if cursor < self.first_cursor || cursor > self.next_cursor() {
            return Err(CursorOutOfRange {
                asked: cursor,
                oldest: self.first_cursor,
                newest: self.next_cursor(),
            });
        }
        let skip = (cursor - self.first_cursor) as usize;
        Ok(self
            .events
            .iter()
            .skip(skip)
            .enumerate()
            .map(|(i, e)| (cursor + i as u64, e.clone()))
            .collect())
    }
}

/// An event log as a snapshot keeps it.
#[derive(Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct EventLogImage {
    pub first_cursor: u64,
    pub events: Vec<NodeEvent>,
}

impl<E: Clone> EventLog<E> {
    /// The cursor of the oldest kept event, and the events, for an image.
    pub fn parts(&self) -> (u64, Vec<E>) {
        let (first_cursor, events) = self.shared_parts();
        (first_cursor, events.iter().map(|e| (**e).clone()).collect())
    }

    /// [`EventLog::parts`] sharing the events instead of copying them: an
    /// actor hands these over, and the snapshot's writer copies them. Kept
    /// events are never changed, only dropped, so the share is the log as
    /// it was. Copying a channel's 65 536 statuses on the feed's turn held
    /// every actor on its worker for 23-75 ms.
    pub fn shared_parts(&self) -> (u64, Vec<Arc<E>>) {
        (self.first_cursor, self.events.iter().cloned().collect())
    }

    /// A log from [`EventLog::parts`], trimmed to `max_events`.
    pub fn from_parts(first_cursor: u64, events: Vec<E>, max_events: usize) -> EventLog<E> {
        let mut log = EventLog {
            first_cursor: first_cursor.max(1),
            events: events.into_iter().map(Arc::new).collect(),
            max_events: max_events.max(1),
        };
        while log.events.len() > log.max_events {
            log.events.pop_front();
            log.first_cursor += 1;
        }
        log
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(order: OrderId) -> NodeEvent {
        NodeEvent {
            kind: EventKind::Allocated,
            order,
            channel: 0,
            client_order_id: "o".into(),
            lines: SmallVec::new(),
        }
    }

    #[test]
    fn cursors_are_gapless_and_old_ones_are_refused() {
        // Proves cursors count from 1 without gaps, resume exactly, and a trimmed cursor is an error.
        let mut log: EventLog = EventLog::new(3);
        for order in 1..=5 {
            log.append(event(order));
        }
        assert_eq!(log.next_cursor(), 6);
        let tail = log.since(4).unwrap();
        assert_eq!(
            tail.iter().map(|(c, e)| (*c, e.order)).collect::<Vec<_>>(),
            vec![(4, 4), (5, 5)]
        );
        assert_eq!(log.since(0).unwrap().len(), 3);
        assert!(log.since(6).unwrap().is_empty());
        assert!(log.since(2).is_err());
        assert!(log.since(7).is_err());
    }
}
