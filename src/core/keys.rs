//! Which order keys the books may hold: a counting filter that routers
//! write and sessions read without a lock, so that a session can tell a
//! first submission from a resubmission (which must get its stored
//! decision) without asking the router that owns the key.

use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

use crate::limits::KEY_FILTER_SLOTS;

/// A count per slot of the keys hashed there that a book holds or a router
/// is placing. It never says no for a key that is there; it may say yes
/// for one that is not (another key shares its slot), which only sends
/// that order the long way. A slot that reached `u8::MAX` stays there: it
/// can no longer count down exactly, and a yes is always safe.
pub struct KeyFilter {
    slots: Box<[AtomicU8]>,
    /// Slots above zero: past about half, most sold-out orders take the
    /// router hop again (long retention, big books), which the daemon's
    /// metrics show.
    occupied: AtomicUsize,
}

impl Default for KeyFilter {
    fn default() -> KeyFilter {
        KeyFilter::new()
    }
}

impl KeyFilter {
    pub fn new() -> KeyFilter {
        // Zeroed pages from the allocator: a filter costs nothing until
        // slots are used, which matters to the many indexes tests make.
        let zeroed: Box<[u8]> = vec![0u8; KEY_FILTER_SLOTS].into_boxed_slice();
        // SAFETY: `AtomicU8` has the same size, alignment and bit validity
        // as `u8` (its documentation guarantees it), so a boxed slice of one
        // is a boxed slice of the other.
        let slots = unsafe { Box::from_raw(Box::into_raw(zeroed) as *mut [AtomicU8]) };
        KeyFilter {
            slots,
            occupied: AtomicUsize::new(0),
        }
    }

    fn slot(&self, fingerprint: u64) -> &AtomicU8 {
        // Both halves of the fingerprint, folded: keys of one partition
        // (a hash of the names, not of this fingerprint) spread over all slots.
        let at = (fingerprint >> 32) as usize ^ (fingerprint as u32 as usize);
        &self.slots[at % self.slots.len()]
    }

    /// A key is in a book, or being placed.
    pub fn add(&self, fingerprint: u64) {
        let was = self
            .slot(fingerprint)
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < u8::MAX).then(|| n + 1)
            });
        if was == Ok(0) {
            self.occupied.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A key added before left its book, or was not kept.
    pub fn remove(&self, fingerprint: u64) {
        let was = self
            .slot(fingerprint)
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n > 0 && n < u8::MAX).then(|| n - 1)
            });
        if was == Ok(1) {
            self.occupied.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Whether a book may hold the key (or a router be placing it).
    pub fn may_hold(&self, fingerprint: u64) -> bool {
        self.slot(fingerprint).load(Ordering::Acquire) != 0
    }

    /// The share of slots above zero, 0 to 1.
    pub fn occupancy(&self) -> f64 {
        self.occupied.load(Ordering::Relaxed) as f64 / self.slots.len() as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_added_is_held_until_removed_as_often() {
        // Proves the filter never says no for a key added more often than removed,
        // and says no again once every add is matched by a remove.
        let keys = KeyFilter::new();
        let (a, b) = (0x1234_5678_9abc_def0_u64, 0x0fed_cba9_8765_4321_u64);
        assert!(!keys.may_hold(a));
        keys.add(a);
        keys.add(a);
        keys.add(b);
        keys.remove(a);
        assert!(keys.may_hold(a) && keys.may_hold(b));
        keys.remove(a);
        keys.remove(b);
        assert!(!keys.may_hold(a) && !keys.may_hold(b));
        assert_eq!(keys.occupancy(), 0.0);
    }

    #[test]
    fn a_full_slot_stays_held() {
        // Proves a slot counted up to its limit is never counted back to no:
        // past the limit it no longer knows how many keys it holds.
        let keys = KeyFilter::new();
        let key = 42u64 << 32;
        for _ in 0..300 {
            keys.add(key);
        }
        for _ in 0..300 {
            keys.remove(key);
        }
        assert!(keys.may_hold(key));
    }
}
