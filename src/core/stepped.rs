//! A map that can be imaged a bounded step at a time while it keeps
//! changing, and still give exactly the entries it held when the image
//! began: copy before write, as Dragonfly snapshots its table. Entries sit
//! densely in insertion slots ([`IndexMap`]); the walk goes slot by slot,
//! and the first change to an entry the walk has not reached yet (a write,
//! a removal, a move into the part already walked, an insertion) saves
//! what the entry was at the start. A slot the walk reaches with a saved
//! entry gives the saved one; the saved entries the walk never reached
//! (removed, or moved behind it) are given at the end.
//!
//! An actor that owns one images it between its messages, a step each
//! turn, so that no turn waits for the whole map.

use std::hash::Hash;

use indexmap::IndexMap;
use rustc_hash::{FxBuildHasher, FxHashMap};

pub struct SteppedMap<K, V> {
    map: IndexMap<K, V, FxBuildHasher>,
    walk: Option<Walk<K, V>>,
}

/// An image under way.
struct Walk<K, V> {
    /// Slots before this one have been given.
    cursor: usize,
    /// What entries changed ahead of the walk were when it began (`None`:
    /// absent then).
    saved: FxHashMap<K, Option<V>>,
}

impl<K: Hash + Eq + Clone, V: Clone> Default for SteppedMap<K, V> {
    fn default() -> Self {
        SteppedMap {
            map: IndexMap::default(),
            walk: None,
        }
    }
}

impl<K: Hash + Eq + Clone, V: Clone> SteppedMap<K, V> {
    pub fn get(&self, key: &K) -> Option<&V> {
        self.map.get(key)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn contains_key(&self, key: &K) -> bool {
        self.map.contains_key(key)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.map.iter()
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.map.values()
    }

    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        let slot = self.map.get_index_of(key)?;
        self.save(slot);
        Some(&mut self.map[slot])
    }

    /// The entry for `key`, inserted as `V::default()` if absent.
    pub fn get_or_default(&mut self, key: K) -> &mut V
    where
        V: Default,
    {
        match self.map.get_index_of(&key) {
            Some(slot) => {
                self.save(slot);
                &mut self.map[slot]
            }
            None => {
                if let Some(walk) = &mut self.walk {
                    walk.saved.entry(key.clone()).or_insert(None);
                }
                let (slot, _) = self.map.insert_full(key, V::default());
                &mut self.map[slot]
            }
        }
    }

    /// Removes `key` (the last slot's entry takes its slot).
    pub fn remove(&mut self, key: &K) -> Option<V> {
        let slot = self.map.get_index_of(key)?;
        self.save(slot);
        let last = self.map.len() - 1;
        // The last entry moves into a slot the walk has passed: it would
        // never be reached, so what it was is kept now.
        let passed = |walk: &Walk<K, V>| slot < walk.cursor && last >= walk.cursor;
        if self.walk.as_ref().is_some_and(passed) {
            self.save(last);
        }
        self.map.swap_remove_index(slot).map(|(_, value)| value)
    }

    /// Keeps what the entry at `slot` is, if the walk has yet to reach it
    /// and nothing was kept for its key since the walk began.
    fn save(&mut self, slot: usize) {
        let Some(walk) = &mut self.walk else { return };
        if slot < walk.cursor {
            return;
        }
        let (key, value) = self.map.get_index(slot).expect("slot in the map");
        if !walk.saved.contains_key(key) {
            walk.saved.insert(key.clone(), Some(value.clone()));
        }
    }

    /// Starts an image of the map as it is now (one under way is dropped).
    pub fn begin_image(&mut self) {
        self.walk = Some(Walk {
            cursor: 0,
            saved: FxHashMap::default(),
        });
    }

    pub fn imaging(&self) -> bool {
        self.walk.is_some()
    }

    /// Gives the next entries (up to `max` slots) as they were when the
    /// image began; true once every one has been given, the image ended.
    pub fn image_step(&mut self, max: usize, mut give: impl FnMut(&K, &V)) -> bool {
        let Some(walk) = &mut self.walk else {
            return true;
        };
        let end = self.map.len().min(walk.cursor.saturating_add(max));
        for (key, value) in self.map.get_range(walk.cursor..end).into_iter().flatten() {
            match walk.saved.remove(key) {
                Some(Some(then)) => give(key, &then),
                Some(None) => {}
                None => give(key, value),
            }
        }
        walk.cursor = end;
        if end < self.map.len() {
            return false;
        }
        // Entries removed, or moved behind the walk, before it got to them.
        for (key, then) in std::mem::take(&mut walk.saved) {
            if let Some(value) = then {
                give(&key, &value);
            }
        }
        self.walk = None;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Op {
        Set(u8, u32),
        Add(u8, u32),
        Remove(u8),
        Step(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (any::<u8>(), any::<u32>()).prop_map(|(k, v)| Op::Set(k % 48, v)),
            (any::<u8>(), 1u32..9).prop_map(|(k, v)| Op::Add(k % 48, v)),
            any::<u8>().prop_map(|k| Op::Remove(k % 48)),
            (0u8..6).prop_map(Op::Step),
        ]
    }

    fn apply(map: &mut SteppedMap<u8, u32>, op: &Op) {
        match *op {
            Op::Set(k, v) => *map.get_or_default(k) = v,
            Op::Add(k, v) => {
                if let Some(x) = map.get_mut(&k) {
                    *x = x.wrapping_add(v);
                }
            }
            Op::Remove(k) => {
                map.remove(&k);
            }
            Op::Step(_) => {}
        }
    }

    proptest! {
        #[test]
        fn an_image_taken_in_steps_is_the_map_as_it_began(
            before in prop::collection::vec(op(), 0..120),
            during in prop::collection::vec(op(), 0..300),
        ) {
            // Proves that whatever inserts, writes and removals come between the steps, the
            // entries given are exactly those the map held when the image began, each once.
            let mut map = SteppedMap::default();
            for op in &before {
                apply(&mut map, op);
            }
            let mut expected: Vec<(u8, u32)> = map.iter().map(|(&k, &v)| (k, v)).collect();
            expected.sort_unstable();
            map.begin_image();
            let mut given = Vec::new();
            let mut done = false;
            for op in &during {
                match *op {
                    Op::Step(n) if !done => {
                        done = map.image_step(n as usize, |&k, &v| given.push((k, v)));
                    }
                    _ => apply(&mut map, op),
                }
            }
            while !done {
                done = map.image_step(4, |&k, &v| given.push((k, v)));
            }
            given.sort_unstable();
            prop_assert_eq!(given, expected);
            prop_assert!(!map.imaging());
        }
    }

    #[test]
    fn without_an_image_nothing_is_kept() {
        // Proves writes outside an image keep no copies (the order path pays one branch).
        let mut map: SteppedMap<u8, u32> = SteppedMap::default();
        *map.get_or_default(1) = 5;
        *map.get_mut(&1).unwrap() += 1;
        map.remove(&1);
        assert!(map.is_empty() && map.walk.is_none());
    }
}
