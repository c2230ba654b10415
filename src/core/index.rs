//! The availability index and the SKU catalog: a read view that routers plan
//! with, written only by the owners of the state it mirrors (a shard writes
//! its SKUs' ATP, a node ledger its node's capacity and online flag).
//!
//! Reads are plain atomic loads with no lock, so every router can plan
//! against it at once. It may be a moment stale; holds are the truth.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;

use dashmap::DashMap;
use rustc_hash::FxBuildHasher;

use super::keys::KeyFilter;
use super::model::{NodeIdx, SkuId};

/// One SKU's slot: its external name and ATP per node.
struct SkuRow {
    name: Box<str>,
    /// ATP per node, then [`STOCKED_WORD_NODES`] nodes to a word, bit
    /// `n % 32` of word `n / 32` set while node n's ATP is above zero:
    /// planners walk only the nodes that have some, where most of a
    /// network holds none of a given SKU. One allocation, so the bits cost
    /// no extra pointer to follow.
    atp: Box<[AtomicU32]>,
    /// Bumped on every change of a count that is, or was, below
    /// [`WATCHED_BELOW_UNITS`]: the only changes that can turn a plan's
    /// "has some" or "covers the line" (see [`crate::core::policy::PlanStamp`]).
    low_version: AtomicU64,
}

/// Nodes per word of a row's stocked bits.
pub const STOCKED_WORD_NODES: usize = 32;

/// Counts under this many units are watched by [`AvailabilityIndex::low_version`].
/// Lines asking for more than this cannot be stamped.
pub const WATCHED_BELOW_UNITS: u32 = 4;

/// A value alone on its cache line, so that writes to its neighbours do
/// not take the line from a reader on another core.
#[repr(align(64))]
struct CacheLine<T>(T);

impl<T> std::ops::Deref for CacheLine<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// Live view of a node's ledger.
struct NodeView {
    online: AtomicBool,
    capacity_left: AtomicU32,
    capacity_used: AtomicU32,
}

/// A SKU's ATP per node, and which nodes have some; empty for an unknown
/// SKU.
#[derive(Clone, Copy, Default)]
pub struct AtpRow<'a> {
    cells: &'a [AtomicU32],
    stocked: &'a [AtomicU32],
}

impl<'a> AtpRow<'a> {
    fn new(atp: &'a [AtomicU32], node_count: usize) -> AtpRow<'a> {
        let (cells, stocked) = atp.split_at(node_count);
        AtpRow { cells, stocked }
    }

    #[inline]
    pub fn get(&self, node: NodeIdx) -> u32 {
        self.cells
            .get(node as usize)
            .map_or(0, |cell| cell.load(Ordering::Relaxed))
    }

    /// Word `word` of the stocked bits: bit i says node `word * 32 + i`
    /// has ATP above zero (0 past the end, or for an unknown SKU). It may
    /// lag a count like any read of the index, and a count crossing zero
    /// bumps the low version, so a stamp sees it.
    #[inline]
    pub fn stocked_word(&self, word: usize) -> u32 {
        self.stocked
            .get(word)
            .map_or(0, |bits| bits.load(Ordering::Relaxed))
    }

    /// No node has any units (by the index, which may lag a count).
    #[inline]
    pub fn none_stocked(&self) -> bool {
        self.stocked
            .iter()
            .all(|bits| bits.load(Ordering::Relaxed) == 0)
    }
}

/// The catalog is full: no more SKUs can be interned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the SKU catalog is full ({max_skus} SKUs); raise engine.max_skus")]
pub struct CatalogFull {
    pub max_skus: usize,
}

/// SKU interner plus ATP per (sku, node) plus node capacity, all lock-free
/// to read.
pub struct AvailabilityIndex {
    /// Columns of every row and node views: the nodes, and spare slots
    /// for nodes added while running.
    node_slots: usize,
    /// Nodes in use, `node_slots` at most; grows when a node is added.
    node_count: std::sync::atomic::AtomicUsize,
    /// Name to id. Inserts happen only from stock feeds, never from orders,
    /// so a client cannot grow it.
    by_name: DashMap<Box<str>, SkuId, FxBuildHasher>,
    /// Pre-sized so that a read never waits for a resize. A line each: the
    /// shard writes a row's low version with changes of its low counts,
    /// and packed rows of neighbouring SKUs (the hot ones are interned
    /// together) shared lines that a planner on another core kept losing.
    rows: Box<[CacheLine<OnceLock<SkuRow>>]>,
    sku_count: AtomicU32,
    nodes: Box<[NodeView]>,
    /// Bit `n % 64` of word `n / 64`: node n is online with capacity left,
    /// the one question the planner asks of every node. Written only when
    /// that answer flips, so a planner on another core keeps these words
    /// cached, where the views change with every allocation and their
    /// lines kept moving to whichever core wrote them last.
    open: Box<[CacheLine<AtomicU64>]>,
    /// Which order keys the routers' books may hold: read with the counts
    /// by a session that answers a sold-out order itself.
    keys: KeyFilter,
    /// Bumped whenever a node goes on or offline or its capacity runs out
    /// or comes back: what a plan's node filter reads.
    node_epoch: AtomicU64,
}

impl AvailabilityIndex {
    pub fn new(node_count: usize, max_skus: usize) -> AvailabilityIndex {
        AvailabilityIndex::with_slots(node_count, node_count, max_skus)
    }

    /// An index for `node_count` nodes with room for `node_slots` (see
    /// [`crate::limits::NODE_SLOTS_SPARE`]).
    pub fn with_slots(node_count: usize, node_slots: usize, max_skus: usize) -> AvailabilityIndex {
        assert!(node_count <= node_slots);
        AvailabilityIndex {
            node_slots,
            node_count: std::sync::atomic::AtomicUsize::new(node_count),
            by_name: DashMap::with_hasher(FxBuildHasher),
            rows: (0..max_skus).map(|_| CacheLine(OnceLock::new())).collect(),
            sku_count: AtomicU32::new(0),
            nodes: (0..node_slots)
                .map(|_| NodeView {
                    online: AtomicBool::new(false),
                    capacity_left: AtomicU32::new(0),
                    capacity_used: AtomicU32::new(0),
                })
                .collect(),
            open: (0..node_slots.div_ceil(64))
                .map(|_| CacheLine(AtomicU64::new(0)))
                .collect(),
            node_epoch: AtomicU64::new(0),
            keys: KeyFilter::new(),
        }
    }

    /// Which order keys the books may hold (written by the routers).
    pub fn keys(&self) -> &KeyFilter {
        &self.keys
    }

    /// Nodes in use.
    pub fn node_count(&self) -> usize {
        self.node_count.load(Ordering::Acquire)
    }

    /// Nodes the index has room for.
    pub fn node_slots(&self) -> usize {
        self.node_slots
    }

    /// `node_count` nodes are in use now (nodes were added): at most
    /// [`AvailabilityIndex::node_slots`], never fewer than before.
    pub fn grow_nodes(&self, node_count: usize) {
        assert!(node_count <= self.node_slots, "more nodes than slots");
        self.node_count.fetch_max(node_count, Ordering::AcqRel);
    }

    pub fn sku_count(&self) -> usize {
        self.sku_count.load(Ordering::Acquire) as usize
    }

    pub fn max_skus(&self) -> usize {
        self.rows.len()
    }

    /// Id of a known SKU. Orders use this: an unknown SKU is an error, not a
    /// new entry.
    pub fn lookup(&self, name: &str) -> Option<SkuId> {
        self.by_name.get(name).map(|id| *id)
    }

    /// Id of `name`, interning it if new (stock feeds only).
    pub fn intern(&self, name: &str) -> Result<SkuId, CatalogFull> {
        if let Some(id) = self.lookup(name) {
            return Ok(id);
        }
        let entry = self.by_name.entry(name.into());
        if let dashmap::Entry::Occupied(existing) = &entry {
            return Ok(*existing.get());
        }
        // The row is filled before the name is published, so whoever finds
        // the id also finds its row. Interning is serialized by the entry's
        // lock only per dashmap shard, hence the compare-exchange.
        let mut id = self.sku_count.load(Ordering::Acquire);
        loop {
            if id as usize >= self.rows.len() {
                return Err(CatalogFull {
                    max_skus: self.rows.len(),
                });
            }
            match self
                .sku_count
                .compare_exchange(id, id + 1, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => break,
                Err(current) => id = current,
            }
        }
        let row = SkuRow {
            name: name.into(),
            atp: (0..self.node_slots + self.node_slots.div_ceil(STOCKED_WORD_NODES))
                .map(|_| AtomicU32::new(0))
                .collect(),
            low_version: AtomicU64::new(0),
        };
        assert!(
            self.rows[id as usize].set(row).is_ok(),
            "sku slot {id} filled twice"
        );
        entry.or_insert(id);
        Ok(id)
    }

    /// Every interned name, in id order (what a catalog snapshot keeps).
    pub fn sku_names(&self) -> Vec<String> {
        (0..self.sku_count() as SkuId)
            .map(|sku| self.sku_name(sku).unwrap_or_default().to_string())
            .collect()
    }

    /// The row of an interned SKU.
    #[inline]
    fn row(&self, sku: SkuId) -> Option<&SkuRow> {
        self.rows.get(sku as usize)?.get()
    }

    /// External name of an interned SKU.
    pub fn sku_name(&self, sku: SkuId) -> Option<&str> {
        self.row(sku).map(|row| &*row.name)
    }

    /// Available-to-promise as last published by the owning shard.
    #[inline]
    pub fn atp(&self, sku: SkuId, node: NodeIdx) -> u32 {
        match self.row(sku) {
            Some(row) => row.atp[node as usize].load(Ordering::Relaxed),
            None => 0,
        }
    }

    /// One SKU's ATP across nodes, fetched once so that a planner reading
    /// many nodes does not look the SKU up for each.
    #[inline]
    pub fn atp_row(&self, sku: SkuId) -> AtpRow<'_> {
        self.row(sku).map_or_else(AtpRow::default, |row| {
            AtpRow::new(&row.atp, self.node_slots)
        })
    }

    /// Sum of ATP over all nodes (0 for an unknown SKU), as published. A
    /// walk of the row: the planner asks "sold out everywhere" of the
    /// stocked bits instead, so no total is kept on the publish path.
    pub fn atp_total(&self, sku: SkuId) -> u64 {
        let row = self.atp_row(sku);
        (0..self.node_count())
            .map(|node| u64::from(row.get(node as NodeIdx)))
            .sum()
    }

    /// Called only by the shard that owns `sku` (the one writer of its row).
    #[inline]
    pub fn publish_atp(&self, sku: SkuId, node: NodeIdx, atp: u32) {
        if let Some(row) = self.row(sku) {
            let cell = &row.atp[node as usize];
            let old = cell.load(Ordering::Relaxed);
            // Released: a session that reads this count and then the key
            // filter sees every key marked before the hold that set it
            // (see `crate::core::router::answer_from_index`).
            cell.store(atp, Ordering::Release);
            if old == atp {
                return;
            }
            if (old == 0) != (atp == 0) {
                // One writer per row (its shard): a load and a store suffice.
                let node = node as usize;
                let bits = &row.atp[self.node_slots + node / STOCKED_WORD_NODES];
                let bit = 1u32 << (node % STOCKED_WORD_NODES);
                let was = bits.load(Ordering::Relaxed);
                bits.store(
                    if atp == 0 { was & !bit } else { was | bit },
                    Ordering::Release,
                );
            }
            if old.min(atp) < WATCHED_BELOW_UNITS {
                // Released after the count: whoever reads this version and
                // then the count sees this count or a later one.
                let version = row.low_version.load(Ordering::Relaxed);
                row.low_version.store(version + 1, Ordering::Release);
            }
        }
    }

    /// The version of `sku`'s low counts (None: not interned). Read it
    /// before reading the row: equal later, no count under
    /// [`WATCHED_BELOW_UNITS`] changed in between, nor crossed it.
    #[inline]
    pub fn low_version(&self, sku: SkuId) -> Option<u64> {
        self.row(sku)
            .map(|row| row.low_version.load(Ordering::Acquire))
    }

    /// The epoch of the nodes' online flags and "has capacity left". Read
    /// it before reading them: equal later, none of them changed.
    #[inline]
    pub fn node_epoch(&self) -> u64 {
        self.node_epoch.load(Ordering::Acquire)
    }

    /// Online with capacity left (as last published by its ledger).
    #[inline]
    pub fn node_open(&self, node: NodeIdx) -> bool {
        let node = node as usize;
        self.open[node / 64].load(Ordering::Relaxed) & (1 << (node % 64)) != 0
    }

    #[inline]
    pub fn node_online(&self, node: NodeIdx) -> bool {
        self.nodes[node as usize].online.load(Ordering::Relaxed)
    }

    #[inline]
    pub fn capacity_left(&self, node: NodeIdx) -> u32 {
        self.nodes[node as usize]
            .capacity_left
            .load(Ordering::Relaxed)
    }

    #[inline]
    pub fn capacity_used(&self, node: NodeIdx) -> u32 {
        self.nodes[node as usize]
            .capacity_used
            .load(Ordering::Relaxed)
    }

    /// Called only by the ledger of `node`.
    pub fn publish_node(
        &self,
        node: NodeIdx,
        online: bool,
        capacity_used: u32,
        capacity_left: u32,
    ) {
        let view = &self.nodes[node as usize];
        let before = (
            view.online.load(Ordering::Relaxed),
            view.capacity_left.load(Ordering::Relaxed) == 0,
        );
        // Released, as the counts are (see `publish_atp`).
        view.online.store(online, Ordering::Release);
        view.capacity_used.store(capacity_used, Ordering::Release);
        view.capacity_left.store(capacity_left, Ordering::Release);
        if before != (online, capacity_left == 0) {
            // Before the epoch: a plan whose stamp still holds read this bit.
            let bit = 1u64 << (node as usize % 64);
            let word = &self.open[node as usize / 64];
            if online && capacity_left > 0 {
                word.fetch_or(bit, Ordering::Release);
            } else {
                word.fetch_and(!bit, Ordering::Release);
            }
            // Every node's ledger may bump it, hence an atomic add.
            self.node_epoch.fetch_add(1, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interning_is_stable_and_bounded() {
        // Proves a name keeps its id, ids are dense, and a full catalog is an error rather than a panic.
        let index = AvailabilityIndex::new(2, 2);
        assert_eq!(index.intern("A"), Ok(0));
        assert_eq!(index.intern("B"), Ok(1));
        assert_eq!(index.intern("A"), Ok(0));
        assert_eq!(index.intern("C"), Err(CatalogFull { max_skus: 2 }));
        assert_eq!(index.lookup("B"), Some(1));
        assert_eq!(index.lookup("C"), None);
        assert_eq!(index.sku_name(1), Some("B"));
    }

    #[test]
    fn a_node_is_open_while_online_with_capacity_left() {
        // Proves the planner's open bit follows every publish of online and capacity, for nodes
        // on both sides of a word boundary, and that each flip (only a flip) bumps the epoch.
        let index = AvailabilityIndex::new(70, 1);
        for node in [0 as NodeIdx, 63, 64, 69] {
            assert!(!index.node_open(node));
            let epoch = index.node_epoch();
            index.publish_node(node, true, 0, 5);
            assert!(index.node_open(node));
            index.publish_node(node, true, 1, 4);
            assert!(index.node_open(node));
            assert_eq!(index.node_epoch(), epoch + 1, "only the flip bumps");
            index.publish_node(node, true, 5, 0);
            assert!(!index.node_open(node), "full");
            index.publish_node(node, false, 0, 5);
            assert!(!index.node_open(node), "offline");
            index.publish_node(node, true, 0, 5);
            assert!(index.node_open(node));
        }
        assert!(!index.node_open(1) && !index.node_open(65));
    }

    #[test]
    fn a_skus_total_and_stocked_bits_follow_its_counts() {
        // Proves each stocked bit (the planner's "has some", and so its "sold out everywhere")
        // says its count is above zero, and the total is the row's sum, after every publish, to
        // and from zero included.
        let index = AvailabilityIndex::new(5, 3);
        for sku in 0..3u32 {
            index.intern(&format!("S{sku}")).unwrap();
        }
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..10_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let (sku, node) = ((state % 3) as SkuId, ((state >> 8) % 5) as NodeIdx);
            let atp = if state & (1 << 20) == 0 {
                0
            } else {
                ((state >> 24) % 9) as u32
            };
            index.publish_atp(sku, node, atp);
            for sku in 0..3 {
                let sum: u64 = (0..5).map(|n| u64::from(index.atp(sku, n))).sum();
                assert_eq!(index.atp_total(sku), sum);
                let row = index.atp_row(sku);
                for n in 0..5 {
                    let bit = row.stocked_word(0) & (1 << n) != 0;
                    assert_eq!(bit, index.atp(sku, n) > 0, "stocked bit of node {n}");
                }
            }
        }
        assert_eq!(index.atp_total(7), 0, "unknown SKU");
    }

    #[test]
    fn each_sku_keeps_its_own_row() {
        // Proves each SKU's ATP lands in its own row across network sizes, and an unknown SKU reads as zero.
        for node_count in [3, 32_768, 40_000] {
            let index = AvailabilityIndex::new(node_count, 5);
            for sku in 0..5u32 {
                assert_eq!(index.intern(&format!("S{sku}")), Ok(sku));
            }
            let last = (node_count - 1) as NodeIdx;
            for sku in 0..5u32 {
                index.publish_atp(sku, 0, 10 + sku);
                index.publish_atp(sku, last, 20 + sku);
            }
            for sku in 0..5u32 {
                assert_eq!(index.atp(sku, 0), 10 + sku);
                let row = index.atp_row(sku);
                assert_eq!(row.get(last), 20 + sku);
                let word = last as usize / STOCKED_WORD_NODES;
                let bit = 1 << (last as usize % STOCKED_WORD_NODES);
                assert_eq!(
                    row.stocked_word(word) & bit,
                    bit,
                    "the last node's stocked bit"
                );
                assert_eq!(index.atp_total(sku), u64::from(30 + 2 * sku));
                index.publish_atp(sku, 0, 3);
                assert_eq!(index.atp_total(sku), u64::from(23 + sku), "a lower count");
                assert_eq!(index.sku_name(sku), Some(format!("S{sku}").as_str()));
            }
            assert_eq!(index.atp(7, 0), 0);
            assert_eq!(index.sku_name(7), None);
        }
    }
}
