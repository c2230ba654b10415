//! Connections that have not said a valid `Hello` yet, counted apart from
//! the authenticated ones (`server.max_connections`): at most
//! `server.max_unauthenticated_connections` at once. One more closes the
//! oldest of them instead of being refused, so that a client with a token
//! gets in however many silent connections are open: to push it out before
//! its `Hello` is answered, a peer would have to open that many connections
//! in the round trip the `Hello` takes.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

pub struct Waiting {
    /// Each waiting connection by arrival number (oldest first), with the
    /// token that closes it when a newer one needs its place.
    open: Mutex<Open>,
    capacity: usize,
}

struct Open {
    next: u64,
    places: BTreeMap<u64, CancellationToken>,
}

/// One connection's place among the waiting ones: given up by its `Hello`
/// ([`Place::leave`]) or when the connection ends (drop).
pub struct Place {
    number: u64,
    evicted: CancellationToken,
    waiting: Arc<Waiting>,
}

impl Waiting {
    pub fn new(capacity: usize) -> Arc<Waiting> {
        Arc::new(Waiting {
            open: Mutex::new(Open {
                next: 0,
                places: BTreeMap::new(),
            }),
            capacity: capacity.max(1),
        })
    }

    /// A place for a connection just arrived. When every place is taken,
    /// the oldest one's connection is told to close, and its place is this
    /// one's at once.
    pub fn admit(self: &Arc<Waiting>) -> Place {
        let evicted = CancellationToken::new();
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if open.places.len() >= self.capacity {
            if let Some((_, oldest)) = open.places.pop_first() {
                oldest.cancel();
            }
        }
        let number = open.next;
        open.next += 1;
        open.places.insert(number, evicted.clone());
        Place {
            number,
            evicted,
            waiting: self.clone(),
        }
    }

    /// Connections waiting for their `Hello` now.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .places
            .len()
    }

    /// The most that wait at once (`server.max_unauthenticated_connections`).
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

impl Place {
    /// Cancelled when a newer connection took this place: close the connection.
    pub fn evicted(&self) -> CancellationToken {
        self.evicted.clone()
    }

    /// Gives the place up (the `Hello` succeeded). False when a newer
    /// connection took it first, and this connection is being closed.
    pub fn leave(&self) -> bool {
        let mut open = self.waiting.open.lock().unwrap_or_else(|e| e.into_inner());
        open.places.remove(&self.number).is_some()
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        self.leave();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_gate_closes_the_oldest_and_a_left_place_is_free() {
        // Proves one more connection than the capacity evicts the oldest (not
        // the newest), and that a place given up by a Hello frees a slot.
        let waiting = Waiting::new(2);
        let first = waiting.admit();
        let second = waiting.admit();
        let third = waiting.admit();
        assert!(first.evicted().is_cancelled());
        assert!(!second.evicted().is_cancelled() && !third.evicted().is_cancelled());
        assert!(!first.leave(), "an evicted place is gone");
        assert_eq!(waiting.len(), 2);
        assert!(second.leave());
        let fourth = waiting.admit();
        assert!(!third.evicted().is_cancelled() && !fourth.evicted().is_cancelled());
        drop(third);
        assert_eq!(waiting.len(), 1);
    }
}
