//! Stock bookkeeping for one shard of SKUs: the single writer of its cells
//! and of the reservations held against them.
//!
//! A hold is taken at once or refused at once (it never waits), and is
//! `pending` until the router commits or aborts it. Every change publishes
//! the cell's ATP to the availability index before the call returns.

use std::sync::Arc;

use rustc_hash::FxHashMap;
use smallvec::SmallVec;

use super::error::{InvariantError, RestoreError};
use super::index::AvailabilityIndex;
use super::model::{NodeIdx, OrderId, SkuId};
use super::stepped::SteppedMap;
use crate::limits::MAX_ON_HAND_UNITS;

/// One (sku, node) cell.
///
/// `reserved` is journaled state: it changes only by ops applied in journal
/// order, so a replay rebuilds it exactly. `held` is the in-memory overlay of
/// attempts not journaled yet; it is never snapshotted or replayed, which is
/// why a stock count may leave `held` above what is free (ATP is then 0 and
/// the commit of such a hold reserves what is there and bumps the rest).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cell {
    pub on_hand: u32,
    /// Units reserved by journaled decisions; never above `on_hand`.
    pub reserved: u32,
    /// Units held by attempts in flight (not journaled yet).
    pub held: u32,
    /// Units kept back from promising (display stock, shrinkage buffer).
    pub safety_stock: u32,
}

impl Cell {
    /// Available-to-promise: `max(0, on_hand - reserved - held - safety_stock)`.
    #[inline]
    pub fn atp(&self) -> u32 {
        self.on_hand
            .saturating_sub(self.reserved)
            .saturating_sub(self.held)
            .saturating_sub(self.safety_stock)
    }

    /// Units on the shelf no journaled decision has taken.
    #[inline]
    pub fn free(&self) -> u32 {
        self.on_hand - self.reserved
    }
}

/// Units of an order held or reserved at one cell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reservation {
    pub sku: SkuId,
    pub node: NodeIdx,
    pub qty: u32,
    /// Held by an attempt the router has not committed yet.
    pub pending: bool,
}

/// One line's request to the shard owning its SKU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HoldItem {
    pub order: OrderId,
    pub line: u16,
    pub sku: SkuId,
    pub qty: u32,
    /// Nodes in policy order; the first that covers the whole line wins.
    pub candidates: SmallVec<[NodeIdx; 8]>,
    /// Nodes the line may be split over when no single node covers it.
    pub max_parts: u8,
    /// Keep what could be held even if it is less than `qty`.
    pub partial: bool,
}

/// The shard's answer to one `HoldItem`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HoldOutcome {
    /// Units held per node (pending).
    Held(SmallVec<[(NodeIdx, u32); 2]>),
    /// Not enough at the candidates; `available` is what they had in total.
    Short { available: u32 },
    /// Would have been held, but another line of the same order was short in
    /// this shard, so nothing of the order was kept.
    Undone,
}

/// Units taken away from an order because its cell lost stock (a count
/// below what was reserved). The order's router re-routes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bumped {
    pub order: OrderId,
    pub sku: SkuId,
    pub node: NodeIdx,
    pub qty: u32,
}

/// A stock operation that cannot be applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StockError {
    #[error("no such reservation to ship from")]
    NoReservation,
    #[error("ship quantity exceeds the reserved units")]
    ExceedsReserved,
    /// The cell would hold more than [`MAX_ON_HAND_UNITS`]; it is unchanged.
    #[error("stock would exceed {MAX_ON_HAND_UNITS} units on hand")]
    Overflow,
}

/// Which of an order's reservations at a cell an operation may take back.
#[derive(Clone, Copy)]
enum Which {
    Pending,
    Committed,
}

/// What a shard snapshot holds: the stocked rows (local slots), their cells
/// flat as (on_hand, reserved, safety_stock) per node, and the reservations
/// as (order, sku, node, qty).
#[derive(Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct ShardImage {
    pub shard: u32,
    pub shard_count: u32,
    pub node_count: u32,
    pub rows: Vec<u32>,
    pub cells: Vec<u32>,
    pub reservations: Vec<(OrderId, SkuId, NodeIdx, u32)>,
}

/// Words an image keeps per cell: on hand, reserved, safety stock.
const CELL_WORDS: usize = 3;

impl ShardImage {
    /// The image with its reservations in order, as a snapshot file keeps
    /// them (a shard hands them over as its map holds them).
    pub fn sorted(mut self) -> ShardImage {
        self.reservations.sort_unstable();
        self
    }

    /// A whole set of images (one per shard, every shard of one layout)
    /// laid out again for `shard_count` shards: each stocked row and each
    /// reservation goes to the shard its SKU hashes to there. The units
    /// are the same, cell for cell.
    pub fn rehash(images: &[ShardImage], shard_count: u32) -> Vec<ShardImage> {
        let node_count = images.iter().map(|i| i.node_count).max().unwrap_or(0);
        let mut out: Vec<ShardImage> = (0..shard_count)
            .map(|shard| ShardImage {
                shard,
                shard_count,
                node_count,
                rows: Vec::new(),
                cells: Vec::new(),
                reservations: Vec::new(),
            })
            .collect();
        for image in images {
            let width = image.node_count as usize * CELL_WORDS;
            for (i, &local) in image.rows.iter().enumerate() {
                let sku = local * image.shard_count + image.shard;
                let target = &mut out[StockShard::shard_of(sku, shard_count) as usize];
                target.rows.push(sku / shard_count);
                target
                    .cells
                    .extend_from_slice(&image.cells[i * width..(i + 1) * width]);
                let missing = (node_count - image.node_count) as usize * CELL_WORDS;
                target.cells.resize(target.cells.len() + missing, 0);
            }
            for &reservation in &image.reservations {
                let shard = StockShard::shard_of(reservation.1, shard_count);
                out[shard as usize].reservations.push(reservation);
            }
        }
        for image in &mut out {
            image.reservations.sort_unstable();
        }
        out
    }
}

/// Memory for a shard's image, written once before the image is taken. On
/// a first snapshot, faulting in fresh pages was most of a shard's imaging
/// (10-23 ms against 0.5-1 ms the next time), and orders waited behind it.
#[derive(Default)]
pub struct ImageMemory {
    rows: Vec<u32>,
    cells: Vec<u32>,
}

impl ImageMemory {
    /// Room for `skus` stocked SKUs at `node_count` nodes, every page of it
    /// written (a zeroed allocation would leave the pages to fault later).
    pub fn touched(skus: usize, node_count: usize) -> ImageMemory {
        let touch = |words: usize| {
            let mut v: Vec<u32> = Vec::with_capacity(words);
            v.resize(words, u32::MAX);
            v.clear();
            v
        };
        ImageMemory {
            rows: touch(skus),
            cells: touch(skus * node_count * CELL_WORDS),
        }
    }
}

/// A row's cells as an image keeps them: `CELL_WORDS` words each, without
/// `held` (not journaled).
fn image_words(row: &[Cell]) -> impl Iterator<Item = u32> + '_ {
    row.iter()
        .flat_map(|c| [c.on_hand, c.reserved, c.safety_stock])
}

/// An order's committed reservations as an image keeps them.
fn push_committed(
    into: &mut Vec<(OrderId, SkuId, NodeIdx, u32)>,
    order: OrderId,
    list: &[Reservation],
) {
    for r in list.iter().filter(|r| !r.pending) {
        into.push((order, r.sku, r.node, r.qty));
    }
}

/// The rows' part of an image under way: rows before `cursor` are in
/// `image`; rows changed ahead of it were kept in `saved` first.
struct RowWalk {
    cursor: usize,
    /// The rows there were when the image began; later ones are not in it.
    end: usize,
    /// Each kept row's words as the image holds them (`None`: the row was
    /// not stocked when the image began).
    saved: FxHashMap<usize, Option<Box<[u32]>>>,
    image: ShardImage,
}

impl RowWalk {
    /// Keeps row `local` as it is, if the walk has yet to reach it and it
    /// was not kept already.
    fn save(&mut self, local: usize, rows: &[Option<Box<[Cell]>>]) {
        if local < self.cursor || local >= self.end || self.saved.contains_key(&local) {
            return;
        }
        let words = rows[local].as_deref().map(|row| image_words(row).collect());
        self.saved.insert(local, words);
    }
}

impl ShardImage {
    fn push_row(&mut self, local: usize, words: &[u32]) {
        self.rows.push(local as u32);
        self.cells.extend_from_slice(words);
    }
}

/// A SKU shard: SKUs `s` with `s % shard_count == shard`.
pub struct StockShard {
    shard: u32,
    shard_count: u32,
    node_count: usize,
    index: Arc<AvailabilityIndex>,
    /// Cells by local SKU slot (`sku / shard_count`), dense over nodes: a
    /// SKU's cells at every node sit together, which is what a hold walks.
    rows: Vec<Option<Box<[Cell]>>>,
    /// Open reservations per order, so that cancel, expiry, ship and return
    /// find them without scanning.
    orders: SteppedMap<OrderId, SmallVec<[Reservation; 1]>>,
    /// The image under way, if a snapshot is being taken a step at a time
    /// ([`StockShard::begin_image`]).
    walk: Option<RowWalk>,
    /// Rows restored from an image before the catalog knew their SKU (its
    /// snapshot is older than this shard's): their counts are published
    /// once the journal has interned it ([`StockShard::publish_restored`]).
    unpublished: Vec<usize>,
}

impl StockShard {
    pub fn new(shard: u32, shard_count: u32, index: Arc<AvailabilityIndex>) -> StockShard {
        assert!(shard < shard_count);
        StockShard {
            shard,
            shard_count,
            node_count: index.node_count(),
            index,
            rows: Vec::new(),
            orders: SteppedMap::default(),
            walk: None,
            unpublished: Vec::new(),
        }
    }

    /// Publishes the counts of rows restored before their SKU was in the
    /// catalog; recovery calls it once the journal is replayed. Without it
    /// those cells held stock that no availability or routing could see.
    pub fn publish_restored(&mut self) {
        for local in std::mem::take(&mut self.unpublished) {
            let sku = local as u32 * self.shard_count + self.shard;
            if let Some(Some(row)) = self.rows.get(local) {
                for (node, cell) in row.iter().enumerate() {
                    if cell.on_hand != 0 || cell.safety_stock != 0 {
                        self.index.publish_atp(sku, node as NodeIdx, cell.atp());
                    }
                }
            }
        }
    }

    pub fn shard_id(&self) -> u32 {
        self.shard
    }

    /// Which shard owns `sku` when there are `shard_count`.
    #[inline]
    pub fn shard_of(sku: SkuId, shard_count: u32) -> u32 {
        sku % shard_count
    }

    fn local(&self, sku: SkuId) -> usize {
        debug_assert_eq!(
            sku % self.shard_count,
            self.shard,
            "sku sent to the wrong shard"
        );
        (sku / self.shard_count) as usize
    }

    /// The row to change: every change to a cell goes through here, so an
    /// image under way keeps the row first if its walk has yet to reach it.
    fn row_mut(&mut self, sku: SkuId) -> &mut [Cell] {
        let local = self.local(sku);
        if let Some(walk) = &mut self.walk {
            walk.save(local, &self.rows);
        }
        if self.rows.len() <= local {
            self.rows.resize_with(local + 1, || None);
        }
        let node_count = self.node_count;
        self.rows[local].get_or_insert_with(|| vec![Cell::default(); node_count].into_boxed_slice())
    }

    /// Rows have a cell for each of `node_count` nodes from now on (nodes
    /// were added to the running daemon); the new cells are empty.
    pub fn widen(&mut self, node_count: usize) {
        assert!(self.walk.is_none(), "widened while imaging");
        if node_count <= self.node_count {
            return;
        }
        for row in self.rows.iter_mut().flatten() {
            let mut wider = std::mem::take(row).into_vec();
            wider.resize(node_count, Cell::default());
            *row = wider.into_boxed_slice();
        }
        self.node_count = node_count;
    }

    /// The cell, or an empty one if never stocked.
    pub fn cell(&self, sku: SkuId, node: NodeIdx) -> Cell {
        let local = self.local(sku);
        self.rows
            .get(local)
            .and_then(Option::as_ref)
            .map(|row| row[node as usize])
            .unwrap_or_default()
    }

    /// Every stocked cell: (sku, node, cell).
    pub fn cells(&self) -> impl Iterator<Item = (SkuId, NodeIdx, Cell)> + '_ {
        self.rows.iter().enumerate().flat_map(move |(local, row)| {
            let sku = local as u32 * self.shard_count + self.shard;
            row.iter().flat_map(move |cells| {
                cells
                    .iter()
                    .enumerate()
                    .map(move |(node, cell)| (sku, node as NodeIdx, *cell))
            })
        })
    }

    /// Open reservations of one order in this shard.
    pub fn reservations(&self, order: OrderId) -> &[Reservation] {
        self.orders.get(&order).map(|r| r.as_slice()).unwrap_or(&[])
    }

    /// Count of orders with open reservations here.
    pub fn open_orders(&self) -> usize {
        self.orders.len()
    }

    fn publish(&self, sku: SkuId, node: NodeIdx, cell: &Cell) {
        assert!(
            cell.reserved <= cell.on_hand,
            "reserved above on_hand at sku {sku} node {node}"
        );
        self.index.publish_atp(sku, node, cell.atp());
    }

    fn take(&mut self, order: OrderId, sku: SkuId, node: NodeIdx, qty: u32) {
        let row = self.row_mut(sku);
        let cell = &mut row[node as usize];
        assert!(qty <= cell.atp(), "hold above atp");
        cell.held += qty;
        let cell = *cell;
        self.publish(sku, node, &cell);
        self.orders.get_or_default(order).push(Reservation {
            sku,
            node,
            qty,
            pending: true,
        });
    }

    /// Gives back up to `qty` units of an order's reservations at a cell,
    /// from the entries `which` selects, newest entry first. Returns units freed.
    fn give_back(
        &mut self,
        order: OrderId,
        sku: SkuId,
        node: NodeIdx,
        qty: u32,
        which: Which,
    ) -> u32 {
        let Some(list) = self.orders.get_mut(&order) else {
            return 0;
        };
        let pending = match which {
            Which::Pending => true,
            Which::Committed => false,
        };
        let mut freed = 0;
        for reservation in list.iter_mut().rev() {
            if freed == qty {
                break;
            }
            if reservation.sku == sku && reservation.node == node && reservation.pending == pending
            {
                let part = reservation.qty.min(qty - freed);
                reservation.qty -= part;
                freed += part;
            }
        }
        list.retain(|r| r.qty > 0);
        if list.is_empty() {
            self.orders.remove(&order);
        }
        if freed > 0 {
            let row = self.row_mut(sku);
            let cell = &mut row[node as usize];
            let count = if pending {
                &mut cell.held
            } else {
                &mut cell.reserved
            };
            *count = count
                .checked_sub(freed)
                .expect("reservation above the cell's count");
            let cell = *cell;
            self.publish(sku, node, &cell);
        }
        freed
    }

    /// Tries the holds of a batch. Items of one order must be contiguous;
    /// an order that is not partial keeps all of its items here or none.
    pub fn hold(&mut self, items: &[HoldItem]) -> Vec<HoldOutcome> {
        let mut outcomes = Vec::with_capacity(items.len());
        let mut start = 0;
        while start < items.len() {
            let order = items[start].order;
            let end = start
                + items[start..]
                    .iter()
                    .take_while(|i| i.order == order)
                    .count();
            let group = &items[start..end];
            let first = outcomes.len();
            let mut failed = false;
            for item in group {
                let outcome = self.hold_item(item);
                failed |= matches!(outcome, HoldOutcome::Short { .. }) && !item.partial;
                outcomes.push(outcome);
            }
            if failed {
                for (item, outcome) in group.iter().zip(&mut outcomes[first..]) {
                    if let HoldOutcome::Held(parts) = outcome {
                        for &(node, qty) in parts.iter() {
                            self.give_back(item.order, item.sku, node, qty, Which::Pending);
                        }
                        *outcome = HoldOutcome::Undone;
                    }
                }
            }
            start = end;
        }
        outcomes
    }

    fn hold_item(&mut self, item: &HoldItem) -> HoldOutcome {
        let local = self.local(item.sku);
        let Some(row) = self.rows.get(local).and_then(Option::as_ref) else {
            return HoldOutcome::Short { available: 0 };
        };
        let atp = |node: NodeIdx| row.get(node as usize).map_or(0, Cell::atp);
        if let Some(&node) = item.candidates.iter().find(|&&n| atp(n) >= item.qty) {
            self.take(item.order, item.sku, node, item.qty);
            return HoldOutcome::Held(smallvec::smallvec![(node, item.qty)]);
        }
        let available: u32 = item
            .candidates
            .iter()
            .map(|&n| atp(n))
            .fold(0u32, u32::saturating_add);
        let may_split = item.max_parts > 1 || item.partial;
        if !may_split || (available < item.qty && !item.partial) || available == 0 {
            return HoldOutcome::Short { available };
        }
        // Split: fill from the best candidates, by policy order, within max_parts.
        let mut parts: SmallVec<[(NodeIdx, u32); 2]> = SmallVec::new();
        let mut remaining = item.qty;
        for &node in &item.candidates {
            if remaining == 0 || parts.len() == usize::from(item.max_parts.max(1)) {
                break;
            }
            let take = atp(node).min(remaining);
            if take > 0 {
                parts.push((node, take));
                remaining -= take;
            }
        }
        if remaining > 0 && !item.partial {
            return HoldOutcome::Short { available };
        }
        for &(node, qty) in &parts {
            self.take(item.order, item.sku, node, qty);
        }
        HoldOutcome::Held(parts)
    }

    /// A journaled decision gave the order `qty` units at a cell: its hold
    /// there (if this shard still has it) becomes a reservation. Applied in
    /// journal order, it depends only on journaled state, so a replay without
    /// the hold reserves the same: what is free, with any shortfall (a count
    /// that fell after the hold) bumped back to the order's router.
    pub fn reserve(
        &mut self,
        order: OrderId,
        sku: SkuId,
        node: NodeIdx,
        qty: u32,
    ) -> Option<Bumped> {
        let granted = qty.min(self.row_mut(sku)[node as usize].free());
        // One pass over the order's entries: the hold shrinks, the
        // reservation grows, with a single lookup of the order.
        let list = self.orders.get_or_default(order);
        let mut from_hold = 0;
        let mut merged = granted == 0;
        for r in list.iter_mut().rev() {
            if r.sku != sku || r.node != node {
                continue;
            }
            if r.pending && from_hold < qty {
                let part = r.qty.min(qty - from_hold);
                r.qty -= part;
                from_hold += part;
            } else if !r.pending && !merged {
                r.qty += granted;
                merged = true;
            }
        }
        if !merged {
            list.push(Reservation {
                sku,
                node,
                qty: granted,
                pending: false,
            });
        }
        list.retain(|r| r.qty > 0);
        if list.is_empty() {
            self.orders.remove(&order);
        }
        let cell = &mut self.row_mut(sku)[node as usize];
        cell.held -= from_hold;
        cell.reserved += granted;
        let cell = *cell;
        self.publish(sku, node, &cell);
        (granted < qty).then_some(Bumped {
            order,
            sku,
            node,
            qty: qty - granted,
        })
    }

    /// The attempt failed elsewhere: free the order's pending holds only.
    pub fn abort(&mut self, order: OrderId) {
        let pending: SmallVec<[Reservation; 4]> = self
            .reservations(order)
            .iter()
            .filter(|r| r.pending)
            .copied()
            .collect();
        for r in pending {
            self.give_back(order, r.sku, r.node, r.qty, Which::Pending);
        }
    }

    /// Frees up to `qty` reserved units of an order at one cell (re-route,
    /// partial cancel). Holds of a later attempt are left alone: they are not
    /// journaled yet. Returns the units freed.
    pub fn release(&mut self, order: OrderId, sku: SkuId, node: NodeIdx, qty: u32) -> u32 {
        self.give_back(order, sku, node, qty, Which::Committed)
    }

    /// Frees every reservation of the order in this shard (cancel, expiry).
    pub fn release_order(&mut self, order: OrderId) -> Vec<Reservation> {
        let all: Vec<Reservation> = self
            .reservations(order)
            .iter()
            .filter(|r| !r.pending)
            .copied()
            .collect();
        for r in &all {
            self.give_back(order, r.sku, r.node, r.qty, Which::Committed);
        }
        all
    }

    /// Units leave the building: out of on_hand and out of the order's
    /// committed reservation at that cell.
    pub fn ship(
        &mut self,
        order: OrderId,
        sku: SkuId,
        node: NodeIdx,
        qty: u32,
    ) -> Result<(), StockError> {
        let reserved_for_order: u32 = self
            .reservations(order)
            .iter()
            .filter(|r| r.sku == sku && r.node == node && !r.pending)
            .map(|r| r.qty)
            .sum();
        if reserved_for_order == 0 {
            return Err(StockError::NoReservation);
        }
        if qty > reserved_for_order {
            return Err(StockError::ExceedsReserved);
        }
        let freed = self.give_back(order, sku, node, qty, Which::Committed);
        assert_eq!(freed, qty);
        let row = self.row_mut(sku);
        let cell = &mut row[node as usize];
        cell.on_hand = cell
            .on_hand
            .checked_sub(qty)
            .expect("shipped more than on hand");
        let cell = *cell;
        self.publish(sku, node, &cell);
        Ok(())
    }

    /// Returned units go back on the shelf of the node that received them.
    pub fn restock(&mut self, sku: SkuId, node: NodeIdx, qty: u32) -> Result<(), StockError> {
        let row = self.row_mut(sku);
        let cell = &mut row[node as usize];
        cell.on_hand = cell
            .on_hand
            .checked_add(qty)
            .filter(|&units| units <= MAX_ON_HAND_UNITS)
            .ok_or(StockError::Overflow)?;
        let cell = *cell;
        self.publish(sku, node, &cell);
        Ok(())
    }

    /// A count from the WMS: on_hand becomes `on_hand`. If that is below
    /// what is reserved, the newest reservations there are bumped. Holds in
    /// flight are not bumped (they are not journaled, so a replay could not
    /// bump them alike); their commit meets the lower count instead.
    pub fn set(
        &mut self,
        sku: SkuId,
        node: NodeIdx,
        on_hand: u32,
        safety_stock: Option<u32>,
    ) -> Vec<Bumped> {
        let row = self.row_mut(sku);
        let cell = &mut row[node as usize];
        let deficit = cell.reserved.saturating_sub(on_hand);
        cell.on_hand = on_hand.max(cell.reserved);
        if let Some(safety) = safety_stock {
            cell.safety_stock = safety;
        }
        let bumped = self.bump(sku, node, deficit);
        let row = self.row_mut(sku);
        row[node as usize].on_hand = on_hand;
        let cell = row[node as usize];
        self.publish(sku, node, &cell);
        bumped
    }

    /// A relative change (receipt, shrinkage). A decrease below zero stops
    /// at zero; below reserved, reservations are bumped as for `set`. An
    /// increase past [`MAX_ON_HAND_UNITS`] changes nothing.
    pub fn adjust(
        &mut self,
        sku: SkuId,
        node: NodeIdx,
        delta: i64,
    ) -> Result<Vec<Bumped>, StockError> {
        let current = i64::from(self.cell(sku, node).on_hand);
        // Checked: the delta comes off the wire, any i64 at all.
        let target = current.checked_add(delta).ok_or(StockError::Overflow)?;
        let target = u32::try_from(target.max(0))
            .ok()
            .filter(|&units| units <= MAX_ON_HAND_UNITS)
            .ok_or(StockError::Overflow)?;
        Ok(self.set(sku, node, target, None))
    }

    /// Frees `deficit` reserved units at a cell, newest orders first.
    fn bump(&mut self, sku: SkuId, node: NodeIdx, mut deficit: u32) -> Vec<Bumped> {
        let mut victims: Vec<(OrderId, u32)> = Vec::new();
        if deficit > 0 {
            for (&order, list) in self.orders.iter() {
                for r in list
                    .iter()
                    .filter(|r| r.sku == sku && r.node == node && !r.pending)
                {
                    victims.push((order, r.qty));
                }
            }
            victims.sort_unstable_by_key(|v| std::cmp::Reverse(v.0));
        }
        let mut bumped = Vec::new();
        for (order, qty) in victims {
            if deficit == 0 {
                break;
            }
            let freed = self.give_back(order, sku, node, qty.min(deficit), Which::Committed);
            deficit -= freed;
            bumped.push(Bumped {
                order,
                sku,
                node,
                qty: freed,
            });
        }
        assert_eq!(deficit, 0, "bump could not cover the deficit");
        bumped
    }

    /// The journaled state as a snapshot keeps it: cells without `held`,
    /// reservations without pending holds (neither is journaled).
    pub fn image(&self) -> ShardImage {
        self.image_into(ImageMemory::default()).sorted()
    }

    /// [`StockShard::image`] into `memory`, which the caller touched
    /// beforehand, off the shard's thread; its reservations unsorted, as
    /// the shard hands them to a snapshot: the writer sorts them
    /// ([`ShardImage::sorted`]).
    pub fn image_into(&self, memory: ImageMemory) -> ShardImage {
        // Sized up front: the shard waits while it images, and growing
        // these by doubling was most of that wait on a first snapshot.
        let stocked = self.rows.iter().filter(|row| row.is_some()).count();
        let ImageMemory {
            mut rows,
            mut cells,
        } = memory;
        rows.reserve(stocked);
        cells.reserve(stocked * self.node_count * CELL_WORDS);
        for (local, row) in self.rows.iter().enumerate() {
            if let Some(row) = row {
                rows.push(local as u32);
                cells.extend(image_words(row));
            }
        }
        let mut reservations = Vec::new();
        for (&order, list) in self.orders.iter() {
            push_committed(&mut reservations, order, list);
        }
        ShardImage {
            shard: self.shard,
            shard_count: self.shard_count,
            node_count: self.node_count as u32,
            rows,
            cells,
            reservations,
        }
    }

    /// Starts an image of the shard as it is now, to be taken a step at a
    /// time ([`StockShard::image_step`]) while the shard goes on changing:
    /// each row and each order's reservations are kept before their first
    /// change if the walk has yet to reach them, so the image is the shard
    /// at this moment, exactly.
    pub fn begin_image(&mut self, memory: ImageMemory) {
        let ImageMemory { rows, cells } = memory;
        self.orders.begin_image();
        self.walk = Some(RowWalk {
            cursor: 0,
            end: self.rows.len(),
            saved: FxHashMap::default(),
            image: ShardImage {
                shard: self.shard,
                shard_count: self.shard_count,
                node_count: self.node_count as u32,
                rows,
                cells,
                reservations: Vec::new(),
            },
        });
    }

    pub fn imaging(&self) -> bool {
        self.walk.is_some()
    }

    /// Images the next `max_items` rows or orders; the image once the
    /// last is in (its reservations unsorted, as [`StockShard::image_into`]).
    pub fn image_step(&mut self, max_items: usize) -> Option<ShardImage> {
        let walk = self.walk.as_mut()?;
        if walk.cursor < walk.end {
            let until = walk.end.min(walk.cursor.saturating_add(max_items));
            for local in walk.cursor..until {
                match walk.saved.remove(&local) {
                    Some(Some(words)) => walk.image.push_row(local, &words),
                    Some(None) => {}
                    None => {
                        if let Some(row) = &self.rows[local] {
                            walk.image.rows.push(local as u32);
                            walk.image.cells.extend(image_words(row));
                        }
                    }
                }
            }
            walk.cursor = until;
            return None;
        }
        let reservations = &mut walk.image.reservations;
        let done = self.orders.image_step(max_items, |&order, list| {
            push_committed(reservations, order, list)
        });
        if !done {
            return None;
        }
        self.walk.take().map(|walk| walk.image)
    }

    /// A shard from its image, published to the index. The image is
    /// checked against itself: sums of reservations must equal `reserved`.
    pub fn from_image(
        image: &ArchivedShardImage,
        index: Arc<AvailabilityIndex>,
    ) -> Result<StockShard, RestoreError> {
        let node_count = index.node_count();
        // Nodes only ever join (ids are never reused), so an image from
        // before a node was added has fewer columns: the new ones are empty.
        let image_nodes = image.node_count.to_native() as usize;
        if image_nodes > node_count {
            return Err(RestoreError::MoreNodes {
                image: image_nodes,
                known: node_count,
            });
        }
        let shard_count = image.shard_count.to_native();
        let shard = image.shard.to_native();
        if shard >= shard_count || image.cells.len() != image.rows.len() * image_nodes * 3 {
            return Err(RestoreError::Dimensions);
        }
        let mut this = StockShard::new(shard, shard_count, index);
        let max_rows = this.index.max_skus() / shard_count as usize + 1;
        for (i, local) in image.rows.iter().enumerate() {
            let local = local.to_native() as usize;
            if local >= max_rows {
                return Err(RestoreError::RowBeyondCatalog { row: local });
            }
            if this.rows.len() <= local {
                this.rows.resize_with(local + 1, || None);
            }
            let raw = &image.cells[i * image_nodes * 3..(i + 1) * image_nodes * 3];
            let row: Box<[Cell]> = raw
                .chunks_exact(3)
                .map(|c| Cell {
                    on_hand: c[0].to_native(),
                    reserved: c[1].to_native(),
                    held: 0,
                    safety_stock: c[2].to_native(),
                })
                .chain(std::iter::repeat(Cell::default()))
                .take(node_count)
                .collect();
            if row.iter().any(|c| c.reserved > c.on_hand) {
                return Err(RestoreError::ReservedAboveOnHand { row: local });
            }
            let sku = local as u32 * shard_count + shard;
            if this.index.low_version(sku).is_none() {
                this.unpublished.push(local);
            }
            for (node, cell) in row.iter().enumerate() {
                if cell.on_hand != 0 || cell.safety_stock != 0 {
                    this.index.publish_atp(sku, node as NodeIdx, cell.atp());
                }
            }
            this.rows[local] = Some(row);
        }
        for r in image.reservations.iter() {
            let (order, sku, node, qty) = (
                r.0.to_native(),
                r.1.to_native(),
                r.2.to_native(),
                r.3.to_native(),
            );
            if sku % shard_count != shard || node as usize >= node_count || qty == 0 {
                return Err(RestoreError::CellOutsideShard { order });
            }
            this.orders.get_or_default(order).push(Reservation {
                sku,
                node,
                qty,
                pending: false,
            });
        }
        this.check_sums()?;
        Ok(this)
    }

    /// Reservations sum to each cell's `reserved`; O(cells + reservations).
    fn check_sums(&self) -> Result<(), RestoreError> {
        let mut sums: FxHashMap<(SkuId, NodeIdx), u64> = FxHashMap::default();
        for list in self.orders.values() {
            for r in list {
                *sums.entry((r.sku, r.node)).or_default() += u64::from(r.qty);
            }
        }
        for ((sku, node), sum) in sums {
            let local = self.local(sku);
            let reserved = self
                .rows
                .get(local)
                .and_then(Option::as_ref)
                .map_or(0, |row| row[node as usize].reserved);
            if u64::from(reserved) != sum {
                return Err(RestoreError::SumsDisagree {
                    sku,
                    node,
                    sum,
                    reserved,
                });
            }
        }
        Ok(())
    }

    /// Units reserved (journaled) for an order at one cell.
    pub fn reserved_for(&self, order: OrderId, sku: SkuId, node: NodeIdx) -> u32 {
        self.reservations(order)
            .iter()
            .filter(|r| r.sku == sku && r.node == node && !r.pending)
            .map(|r| r.qty)
            .sum()
    }

    /// Every committed reservation: (order, sku, node, qty).
    pub fn committed(&self) -> impl Iterator<Item = (OrderId, SkuId, NodeIdx, u32)> + '_ {
        self.orders.iter().flat_map(|(&order, list)| {
            list.iter()
                .filter(|r| !r.pending)
                .map(move |r| (order, r.sku, r.node, r.qty))
        })
    }

    /// Checks every invariant of the shard; O(cells + reservations), for
    /// tests and debug endpoints. Returns a description of the first breach.
    pub fn check_invariants(&self) -> Result<(), InvariantError> {
        // (reserved, held) per cell, from the reservations.
        let mut sums: FxHashMap<(SkuId, NodeIdx), (u64, u64)> = FxHashMap::default();
        for (order, list) in self.orders.iter() {
            for r in list {
                if r.qty == 0 {
                    return Err(InvariantError::ZeroReservation { order: *order });
                }
                let sum = sums.entry((r.sku, r.node)).or_default();
                if r.pending {
                    sum.1 += u64::from(r.qty);
                } else {
                    sum.0 += u64::from(r.qty);
                }
            }
        }
        for (sku, node, cell) in self.cells() {
            if cell.reserved > cell.on_hand {
                return Err(InvariantError::ReservedAboveOnHand {
                    sku,
                    node,
                    reserved: cell.reserved,
                    on_hand: cell.on_hand,
                });
            }
            let expected_atp = (i64::from(cell.on_hand)
                - i64::from(cell.reserved)
                - i64::from(cell.held)
                - i64::from(cell.safety_stock))
            .max(0);
            if i64::from(cell.atp()) != expected_atp {
                return Err(InvariantError::AtpWrong {
                    sku,
                    node,
                    atp: cell.atp(),
                    expected: expected_atp,
                });
            }
            if self.index.atp(sku, node) != cell.atp() {
                return Err(InvariantError::IndexDisagrees {
                    sku,
                    node,
                    index: self.index.atp(sku, node),
                    cell: cell.atp(),
                });
            }
            let (reserved, held) = sums.remove(&(sku, node)).unwrap_or((0, 0));
            if reserved != u64::from(cell.reserved) || held != u64::from(cell.held) {
                return Err(InvariantError::SumsDisagree {
                    sku,
                    node,
                    reserved_sum: reserved,
                    held_sum: held,
                    reserved: cell.reserved,
                    held: cell.held,
                });
            }
        }
        if let Some(((sku, node), (reserved_sum, held_sum))) = sums.into_iter().next() {
            return Err(InvariantError::UnknownCell {
                sku,
                node,
                reserved_sum,
                held_sum,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_image_into_touched_memory_is_the_same_image() {
        // Proves imaging into memory touched beforehand (too small, or large enough) changes
        // nothing in the image, only where it is built.
        let index = Arc::new(AvailabilityIndex::new(3, 64));
        let mut shard = StockShard::new(1, 2, index.clone());
        for name in ["A", "B", "C", "D", "E", "F"] {
            let sku = index.intern(name).unwrap();
            if StockShard::shard_of(sku, 2) == 1 {
                shard.set(sku, 2, 7 + sku, Some(1));
                shard.set(sku, 0, 3, None);
            }
        }
        let plain = shard.image();
        assert!(!plain.rows.is_empty() && !plain.cells.is_empty());
        assert_eq!(shard.image_into(ImageMemory::touched(1, 3)).sorted(), plain);
        assert_eq!(
            shard.image_into(ImageMemory::touched(64, 3)).sorted(),
            plain
        );
    }

    /// One change a stepped image must see past: (kind, order, sku slot, node, qty).
    type ShardChange = (u8, u64, u32, u16, u32);

    fn apply_change(
        shard: &mut StockShard,
        skus: &[SkuId],
        (kind, order, s, node, qty): ShardChange,
    ) {
        let sku = skus[s as usize % skus.len()];
        let node = node % 3;
        match kind % 6 {
            0 => {
                let outcome = shard.hold(&[HoldItem {
                    order,
                    line: 0,
                    sku,
                    qty,
                    candidates: smallvec::smallvec![node],
                    max_parts: 1,
                    partial: false,
                }]);
                if matches!(outcome[0], HoldOutcome::Held(_)) {
                    shard.reserve(order, sku, node, qty);
                }
            }
            1 => {
                shard.release(order, sku, node, qty);
            }
            2 => {
                shard.release_order(order);
            }
            3 => {
                shard.set(sku, node, qty * 3, None);
            }
            4 => {
                let _ = shard.ship(order, sku, node, 1);
            }
            _ => {
                let _ = shard.restock(sku, node, qty);
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn a_shard_imaged_in_steps_is_the_shard_as_the_image_began(
            before in proptest::collection::vec((0u8..6, 0u64..40, 0u32..64, 0u16..3, 1u32..5), 0..200),
            during in proptest::collection::vec((0u8..6, 0u64..40, 0u32..64, 0u16..3, 1u32..5), 0..400),
            step in 1usize..8,
        ) {
            // Proves that holds, reserves, releases, counts, shipments and restocks between the
            // steps of an image (rows and orders changed ahead of the walk, new rows, orders
            // gone) leave the image exactly the shard's state when it began.
            let index = Arc::new(AvailabilityIndex::new(3, 256));
            let mut shard = StockShard::new(0, 1, index.clone());
            let skus: Vec<SkuId> = (0..64).map(|i| index.intern(&format!("S{i}")).unwrap()).collect();
            // Only the first half is stocked before: the rest are rows new to the walk.
            for &sku in &skus[..32] {
                shard.set(sku, 0, 4, None);
            }
            for change in &before {
                let mut change = *change;
                change.2 %= 32;
                apply_change(&mut shard, &skus, change);
            }
            let expected = shard.image();
            shard.begin_image(ImageMemory::default());
            let mut taken = None;
            for (i, change) in during.iter().enumerate() {
                apply_change(&mut shard, &skus, *change);
                if taken.is_none() && i % 2 == 0 {
                    taken = shard.image_step(step);
                }
            }
            while taken.is_none() {
                taken = shard.image_step(step);
            }
            proptest::prop_assert_eq!(taken.unwrap().sorted(), expected);
            proptest::prop_assert!(!shard.imaging());
            proptest::prop_assert!(shard.check_invariants().is_ok());
        }
    }

    #[test]
    fn a_shard_restored_before_its_skus_are_in_the_catalog_publishes_them_once_they_are() {
        // Proves a shard image with a SKU the catalog's (older) snapshot lacks shows that SKU's
        // counts to availability once replay has interned it: restored before, they stayed 0.
        let index = Arc::new(AvailabilityIndex::new(2, 64));
        let mut shard = StockShard::new(0, 1, index.clone());
        let sku = index.intern("NEW").unwrap();
        shard.set(sku, 1, 9, None);
        let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&shard.image()).unwrap();
        let archived = rkyv::access::<ArchivedShardImage, rkyv::rancor::Error>(&bytes).unwrap();
        let restarted = Arc::new(AvailabilityIndex::new(2, 64));
        let mut restored = StockShard::from_image(archived, restarted.clone()).unwrap();
        // The journal's record after the catalog's snapshot interns it.
        assert_eq!(restarted.intern("NEW").unwrap(), sku);
        restored.publish_restored();
        assert_eq!(restarted.atp(sku, 1), 9);
    }

    #[test]
    fn a_rehashed_image_set_holds_every_cell_and_reservation_in_its_new_shard() {
        // Proves rehashing a set of shard images to fewer and to more shards (and to one more
        // node) keeps every cell's counts and every reservation, each in the shard its SKU
        // hashes to, and that the images load (their sums check).
        let index = Arc::new(AvailabilityIndex::new(3, 64));
        let mut shards: Vec<StockShard> = (0..3)
            .map(|s| StockShard::new(s, 3, index.clone()))
            .collect();
        for (i, name) in ["A", "B", "C", "D", "E", "F", "G"].iter().enumerate() {
            let sku = index.intern(name).unwrap();
            let shard = &mut shards[StockShard::shard_of(sku, 3) as usize];
            shard.set(sku, (i % 3) as NodeIdx, 10 + sku, Some(1));
            assert!(shard
                .reserve(100 + u64::from(sku), sku, (i % 3) as NodeIdx, 4)
                .is_none());
        }
        let images: Vec<ShardImage> = shards.iter().map(StockShard::image).collect();
        let wider = Arc::new(AvailabilityIndex::new(4, 64));
        for name in ["A", "B", "C", "D", "E", "F", "G"] {
            wider.intern(name).unwrap();
        }
        for count in [1, 2, 5] {
            let rehashed = ShardImage::rehash(&images, count);
            let loaded: Vec<StockShard> = rehashed
                .iter()
                .map(|image| {
                    let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(image).unwrap();
                    let archived =
                        rkyv::access::<ArchivedShardImage, rkyv::rancor::Error>(&bytes).unwrap();
                    StockShard::from_image(archived, wider.clone()).unwrap()
                })
                .collect();
            let mut before: Vec<_> = shards.iter().flat_map(|s| s.cells()).collect();
            let mut after: Vec<_> = loaded.iter().flat_map(|s| s.cells()).collect();
            before.retain(|(_, _, cell)| *cell != Cell::default());
            before.sort_by_key(|(sku, node, _)| (*sku, *node));
            after.retain(|(_, _, cell)| *cell != Cell::default());
            after.sort_by_key(|(sku, node, _)| (*sku, *node));
            assert_eq!(before.len(), 7);
            assert_eq!(after, before, "{count} shards");
            let mut held: Vec<_> = loaded.iter().flat_map(|s| s.committed()).collect();
            let mut was: Vec<_> = shards.iter().flat_map(|s| s.committed()).collect();
            held.sort_unstable();
            was.sort_unstable();
            assert_eq!(held, was, "{count} shards");
            for (s, shard) in loaded.iter().enumerate() {
                for (_, sku, _, _) in shard.committed() {
                    assert_eq!(StockShard::shard_of(sku, count), s as u32);
                }
            }
        }
    }
}
