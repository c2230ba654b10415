//! Where orders live: the key space cut into partitions for good, one dense
//! book per partition (found by id and by key), a router's books, and the
//! keys of recently retired orders.

use std::collections::VecDeque;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use rustc_hash::{FxHashMap, FxHasher};

use super::error::RestoreError;
use super::index::AvailabilityIndex;
use super::model::{ChannelIdx, OrderId, OrderState};
use super::order::OrderRecord;

/// Partitions of the order key space. An order key hashes to one of them
/// for good, an order id keeps it in its low byte, and a router owns the
/// partitions `p` with `p % routers == router`: so the router count can
/// change and every order is still found by key and by id.
pub const PARTITIONS: usize = 256;
/// Routers in one daemon: each owns at least one partition.
pub const MAX_ROUTERS: usize = PARTITIONS;

/// The partition of an order key. Deterministic across restarts and builds
/// (the data directory depends on it; a test pins it).
pub fn partition_of_key(channel: &str, client_order_id: &str) -> usize {
    let mut hasher = FxHasher::default();
    channel.hash(&mut hasher);
    client_order_id.hash(&mut hasher);
    (hasher.finish() % PARTITIONS as u64) as usize
}

/// The partition of an order id.
pub fn partition_of_order(order: OrderId) -> usize {
    (order % PARTITIONS as u64) as usize
}

/// The router of `routers` that owns an order id.
pub fn router_of_order(order: OrderId, routers: usize) -> usize {
    partition_of_order(order) % routers
}

/// The router of `routers` that owns a client order key.
pub fn router_of_key(channel: &str, client_order_id: &str, routers: usize) -> usize {
    partition_of_key(channel, client_order_id) % routers
}

/// Records per segment of the order book. Growth adds a segment and never
/// moves the ones before it: no pause to copy a million records.
pub(crate) const ORDERS_PER_SEGMENT: usize = 4096;

/// The orders of one partition, kept dense in segments: an order id is
/// `sequence * PARTITIONS + partition`, a small map finds an order's place
/// by its sequence, and a retired order's place is taken by the last one,
/// so memory follows the orders kept, not the orders ever taken.
pub(crate) struct OrderBook {
    partition: u64,
    segments: Vec<Vec<OrderRecord>>,
    count: usize,
    /// The sequence the next new order gets. Ids are handed out before a
    /// placement is known, so a rejected order uses one up; it only grows.
    next_sequence: u32,
    /// The highest sequence kept: never retired, so that a restart (which
    /// counts on from the orders it finds) never gives out a kept or
    /// retired order's id again.
    newest: u32,
    /// Sequence to place in `segments`.
    by_sequence: FxHashMap<u32, u32>,
    /// Hash of (channel, client order id) to a place + 1 with it.
    /// (32 bits of hash: collisions chain through `key_next` anyway, and
    /// half-size entries matter at millions of orders.)
    by_key: FxHashMap<u32, u32>,
}

pub(crate) fn key_hash(channel: ChannelIdx, client_order_id: &str) -> u32 {
    let hash = key_fingerprint(channel, client_order_id);
    (hash ^ (hash >> 32)) as u32
}

/// 64 bits of (channel, client order id): what the archive of retired
/// keys keeps of an order.
pub(crate) fn key_fingerprint(channel: ChannelIdx, client_order_id: &str) -> u64 {
    let mut hasher = FxHasher::default();
    channel.hash(&mut hasher);
    client_order_id.hash(&mut hasher);
    hasher.finish()
}

pub(crate) fn sequence_of(id: OrderId) -> u64 {
    id / PARTITIONS as u64
}

impl OrderBook {
    fn new(partition: usize) -> OrderBook {
        OrderBook {
            partition: partition as u64,
            segments: Vec::new(),
            count: 0,
            next_sequence: 1,
            newest: 0,
            by_sequence: FxHashMap::default(),
            by_key: FxHashMap::default(),
        }
    }

    fn place(&self, id: OrderId) -> Option<usize> {
        if id % PARTITIONS as u64 != self.partition {
            return None;
        }
        let sequence = u32::try_from(sequence_of(id)).ok()?;
        self.by_sequence.get(&sequence).map(|&place| place as usize)
    }

    fn at(&self, place: usize) -> &OrderRecord {
        &self.segments[place / ORDERS_PER_SEGMENT][place % ORDERS_PER_SEGMENT]
    }

    fn at_mut(&mut self, place: usize) -> &mut OrderRecord {
        &mut self.segments[place / ORDERS_PER_SEGMENT][place % ORDERS_PER_SEGMENT]
    }

    /// The id of the `earlier`-th new order after the next one.
    fn next_id(&self, earlier: u64) -> OrderId {
        (u64::from(self.next_sequence) + earlier) * PARTITIONS as u64 + self.partition
    }

    /// Ids up to `id` are given out (kept or not).
    fn used_up_to(&mut self, id: OrderId) {
        let next =
            u32::try_from(sequence_of(id) + 1).expect("at most u32::MAX orders per partition");
        self.next_sequence = self.next_sequence.max(next);
    }

    fn find_key(&self, channel: ChannelIdx, client_order_id: &str) -> Option<usize> {
        let mut next = self
            .by_key
            .get(&key_hash(channel, client_order_id))
            .copied()
            .unwrap_or(0);
        while next != 0 {
            let record = self.at(next as usize - 1);
            if record.channel == channel && &*record.client_order_id == client_order_id {
                return Some(next as usize - 1);
            }
            next = record.key_next;
        }
        None
    }

    /// Keeps a new order (any sequence not kept yet), at the end.
    fn insert(&mut self, mut record: OrderRecord) {
        let sequence =
            u32::try_from(sequence_of(record.id)).expect("at most u32::MAX orders per partition");
        let place = self.count;
        let link = u32::try_from(place + 1).expect("at most u32::MAX orders per partition");
        let hash = key_hash(record.channel, &record.client_order_id);
        record.key_next = self.by_key.insert(hash, link).unwrap_or(0);
        if place == self.segments.len() * ORDERS_PER_SEGMENT {
            // The first segment grows as it fills: a router owns many
            // partitions, most of them small in a small shop.
            self.segments.push(if self.segments.is_empty() {
                Vec::new()
            } else {
                Vec::with_capacity(ORDERS_PER_SEGMENT)
            });
        }
        self.segments[place / ORDERS_PER_SEGMENT].push(record);
        self.by_sequence.insert(sequence, place as u32);
        self.count += 1;
        self.newest = self.newest.max(sequence);
        self.next_sequence = self.next_sequence.max(sequence + 1);
    }

    /// Points the key chain link that leads to `from` (a place + 1) at `to`.
    fn relink(&mut self, hash: u32, from: u32, to: u32) {
        let head = self.by_key.get_mut(&hash).expect("a kept key has a chain");
        if *head == from {
            if to == 0 {
                self.by_key.remove(&hash);
            } else {
                *head = to;
            }
            return;
        }
        let mut at = *head;
        while at != 0 {
            let record = self.at_mut(at as usize - 1);
            if record.key_next == from {
                record.key_next = to;
                return;
            }
            at = record.key_next;
        }
        unreachable!("a kept order is on its key's chain");
    }

    /// Forgets the order at `place`; the last order moves into its place.
    fn remove(&mut self, place: usize) -> OrderRecord {
        let link = place as u32 + 1;
        let (hash, next, sequence) = {
            let record = self.at(place);
            let hash = key_hash(record.channel, &record.client_order_id);
            (hash, record.key_next, sequence_of(record.id) as u32)
        };
        self.relink(hash, link, next);
        self.by_sequence.remove(&sequence);
        let last = self.count - 1;
        if place != last {
            let (last_hash, last_sequence) = {
                let record = self.at(last);
                let hash = key_hash(record.channel, &record.client_order_id);
                (hash, sequence_of(record.id) as u32)
            };
            self.relink(last_hash, last as u32 + 1, link);
            self.by_sequence.insert(last_sequence, place as u32);
        }
        let moved = self.segments[last / ORDERS_PER_SEGMENT]
            .pop()
            .expect("the last order");
        self.count -= 1;
        let removed = if place == last {
            moved
        } else {
            std::mem::replace(self.at_mut(place), moved)
        };
        // An empty segment goes, but one spare stays: orders coming and
        // going at a segment's edge would otherwise allocate each time.
        while self.segments.len() * ORDERS_PER_SEGMENT >= self.count + 2 * ORDERS_PER_SEGMENT {
            self.segments.pop();
        }
        removed
    }
}

/// How far a snapshot has come through a router's books: a book, and the
/// orders of it done. Books only grow at their ends, so the cursor stays
/// right while orders arrive between snapshot steps.
#[derive(Clone, Copy, Debug, Default)]
pub struct BookCursor {
    book: usize,
    done: usize,
}

/// How far a listing has come through a router's books. Each book is
/// walked from its end to its start, so that a retirement between steps
/// (the book's last order moves into the hole) can only move an order not
/// yet passed further on, or one passed already back into the part still
/// to pass (it is then passed twice, and a listing counts it once): never
/// one not yet passed into the part passed. New orders go at a book's end,
/// past the walk, and are left out by their sequence.
#[derive(Clone, Debug)]
pub struct ListCursor {
    book: usize,
    /// Places below this in `book` are still to pass; `None` before the
    /// walk reached the book.
    below: Option<usize>,
    /// Each book's next sequence when the listing began: the orders it
    /// lists existed then.
    began: Box<[u32]>,
}

/// One run of a listing's walk: orders lying together in one book.
pub(crate) struct ListRun<'a> {
    pub(crate) orders: &'a [OrderRecord],
    /// The book's next sequence when the listing began.
    began: u32,
}

impl ListRun<'_> {
    /// The run's orders that existed when the listing began.
    pub(crate) fn existing(&self) -> impl Iterator<Item = &OrderRecord> {
        let began = u64::from(self.began);
        self.orders
            .iter()
            .filter(move |r| sequence_of(r.id) < began)
    }
}

/// The orders of one router: a book per partition it owns.
pub(crate) struct Books {
    pub(crate) router: usize,
    routers: usize,
    /// Partition `p`'s book at `p / routers`.
    books: Vec<OrderBook>,
    count: usize,
    /// Orders changed since the last [`RouterCore::take_dirty`]: what the
    /// next journal record must carry.
    pub(crate) dirty: Vec<OrderId>,
    /// Where the keys kept here are marked for the sessions to see
    /// ([`crate::core::keys::KeyFilter`]).
    index: Arc<AvailabilityIndex>,
}

impl Books {
    pub(crate) fn new(router: usize, routers: usize, index: Arc<AvailabilityIndex>) -> Books {
        Books {
            router,
            routers,
            index,
            books: (router..PARTITIONS)
                .step_by(routers)
                .map(OrderBook::new)
                .collect(),
            count: 0,
            dirty: Vec::new(),
        }
    }

    /// The book of `partition`, if this router owns it.
    fn book(&self, partition: usize) -> Option<&OrderBook> {
        (partition % self.routers == self.router).then(|| &self.books[partition / self.routers])
    }

    fn book_mut(&mut self, partition: usize) -> Option<&mut OrderBook> {
        (partition % self.routers == self.router).then(|| &mut self.books[partition / self.routers])
    }

    pub(crate) fn get(&self, id: &OrderId) -> Option<&OrderRecord> {
        let book = self.book(partition_of_order(*id))?;
        book.place(*id).map(|place| book.at(place))
    }

    pub(crate) fn get_mut(&mut self, id: &OrderId) -> Option<&mut OrderRecord> {
        if self.dirty.last() != Some(id) {
            self.dirty.push(*id);
        }
        let book = self.book_mut(partition_of_order(*id))?;
        let place = book.place(*id)?;
        Some(book.at_mut(place))
    }

    pub(crate) fn contains_key(&self, id: &OrderId) -> bool {
        self.get(id).is_some()
    }

    pub(crate) fn len(&self) -> usize {
        self.count
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = &OrderRecord> {
        self.books.iter().flat_map(|b| b.segments.iter().flatten())
    }

    /// The id of the `earlier`-th new order after the next in `partition`
    /// (which this router owns).
    pub(crate) fn next_id(&self, partition: usize, earlier: u64) -> OrderId {
        self.book(partition)
            .expect("a partition of this router")
            .next_id(earlier)
    }

    /// Whether `id` (of a partition this router owns) was given out.
    pub(crate) fn given_out(&self, id: OrderId) -> bool {
        let sequence = sequence_of(id);
        self.book(partition_of_order(id))
            .is_some_and(|book| sequence >= 1 && sequence < u64::from(book.next_sequence))
    }

    /// Ids of `partition` up to `id` are given out.
    pub(crate) fn used_up_to(&mut self, id: OrderId) {
        self.book_mut(partition_of_order(id))
            .expect("a partition of this router")
            .used_up_to(id);
    }

    /// The order of a key in `partition` (the key's, see [`partition_of_key`]).
    pub(crate) fn find_key(
        &self,
        partition: usize,
        channel: ChannelIdx,
        client_order_id: &str,
    ) -> Option<OrderId> {
        let book = self.book(partition)?;
        let place = book.find_key(channel, client_order_id)?;
        Some(book.at(place).id)
    }

    pub(crate) fn insert(&mut self, record: OrderRecord) {
        self.dirty.push(record.id);
        self.mark(&record);
        self.book_mut(partition_of_order(record.id))
            .expect("a partition of this router")
            .insert(record);
        self.count += 1;
    }

    /// Forgets a closed order, unless it is its partition's newest (kept
    /// so that ids are never given out twice). Returns whether it went.
    pub(crate) fn retire(&mut self, id: OrderId) -> Option<OrderRecord> {
        let book = self.book_mut(partition_of_order(id))?;
        let place = book.place(id)?;
        if sequence_of(id) == u64::from(book.newest) {
            return None;
        }
        let record = book.remove(place);
        self.count -= 1;
        self.index
            .keys()
            .remove(key_fingerprint(record.channel, &record.client_order_id));
        Some(record)
    }

    fn mark(&self, record: &OrderRecord) {
        self.index
            .keys()
            .add(key_fingerprint(record.channel, &record.client_order_id));
    }

    /// Puts a journaled or snapshotted order in its book as it was
    /// written, without marking it changed: a known one is replaced. A
    /// rejected order (which a format-1 directory kept) only uses up its id.
    pub(crate) fn restore(&mut self, mut record: OrderRecord) -> Result<(), RestoreError> {
        let partition = partition_of_order(record.id);
        let (router, routers) = (self.router, self.routers);
        let index = self.index.clone();
        let Some(book) = self.book_mut(partition) else {
            return Err(RestoreError::WrongRouter {
                order: record.id,
                partition,
                owner: partition % routers,
                routers,
                router,
            });
        };
        if sequence_of(record.id) == 0 || sequence_of(record.id) > u64::from(u32::MAX - 1) {
            return Err(RestoreError::IdOutOfRange { order: record.id });
        }
        if record.state == OrderState::Rejected {
            book.used_up_to(record.id);
        } else if let Some(place) = book.place(record.id) {
            let existing = book.at_mut(place);
            record.key_next = existing.key_next;
            *existing = record;
        } else {
            index
                .keys()
                .add(key_fingerprint(record.channel, &record.client_order_id));
            book.insert(record);
            self.count += 1;
        }
        Ok(())
    }

    /// The next run of up to `max` orders after `cursor`, as they lie in
    /// the books (a run stops at the end of a segment), moving the cursor
    /// past it. Empty once every book is passed.
    pub(crate) fn next_run(&self, cursor: &mut BookCursor, max: usize) -> &[OrderRecord] {
        while let Some(book) = self.books.get(cursor.book) {
            if cursor.done < book.count {
                let segment = &book.segments[cursor.done / ORDERS_PER_SEGMENT];
                let start = cursor.done % ORDERS_PER_SEGMENT;
                let run = &segment[start..segment.len().min(start + max)];
                cursor.done += run.len();
                return run;
            }
            cursor.book += 1;
            cursor.done = 0;
        }
        &[]
    }

    /// Where a listing of the books as they are now begins.
    pub(crate) fn list_cursor(&self) -> ListCursor {
        ListCursor {
            book: 0,
            below: None,
            began: self.books.iter().map(|b| b.next_sequence).collect(),
        }
    }

    /// The next run of up to `max` orders of a listing's walk (see
    /// [`ListCursor`]), moving the cursor past it; `None` once every book
    /// is passed. A run stops at the start of a segment.
    pub(crate) fn listing_run(&self, cursor: &mut ListCursor, max: usize) -> Option<ListRun<'_>> {
        while let Some(book) = self.books.get(cursor.book) {
            // Retirements since the last step may have shortened the book.
            let below = cursor.below.map_or(book.count, |b| b.min(book.count));
            if below > 0 {
                let segment = &book.segments[(below - 1) / ORDERS_PER_SEGMENT];
                let end = (below - 1) % ORDERS_PER_SEGMENT + 1;
                let start = end.saturating_sub(max.max(1));
                cursor.below = Some(below - (end - start));
                return Some(ListRun {
                    orders: &segment[start..end],
                    began: cursor.began[cursor.book],
                });
            }
            cursor.book += 1;
            cursor.below = None;
        }
        None
    }

    /// Every order, the books given up.
    pub(crate) fn into_orders(self) -> impl Iterator<Item = OrderRecord> {
        let index = self.index;
        self.books
            .into_iter()
            .flat_map(|b| b.segments.into_iter().flatten())
            .inspect(move |record| {
                // Whoever keeps it next marks it again.
                index
                    .keys()
                    .remove(key_fingerprint(record.channel, &record.client_order_id));
            })
    }

    /// Makes room for `orders` more orders at once (restoring a snapshot).
    pub(crate) fn reserve(&mut self, orders: usize) {
        let per_book = orders.div_ceil(self.books.len());
        for book in &mut self.books {
            book.by_key.reserve(per_book);
            book.by_sequence.reserve(per_book);
        }
    }
}

impl std::ops::Index<&OrderId> for Books {
    type Output = OrderRecord;

    fn index(&self, id: &OrderId) -> &OrderRecord {
        self.get(id).expect("a known order id")
    }
}

/// Keys of the most recently retired orders, at most `capacity`: enough
/// to answer "archived" rather than "unknown" for an order that closed a
/// while ago, in bounded memory.
pub(crate) struct ArchivedKeys {
    capacity: usize,
    order: VecDeque<u64>,
    kept: FxHashMap<u64, u32>,
}

impl ArchivedKeys {
    pub(crate) fn new(capacity: usize) -> ArchivedKeys {
        ArchivedKeys {
            capacity,
            order: VecDeque::new(),
            kept: FxHashMap::default(),
        }
    }

    pub(crate) fn add(&mut self, fingerprint: u64) {
        if self.capacity == 0 {
            return;
        }
        if self.order.len() == self.capacity {
            let oldest = self.order.pop_front().expect("full");
            if let Some(count) = self.kept.get_mut(&oldest) {
                *count -= 1;
                if *count == 0 {
                    self.kept.remove(&oldest);
                }
            }
        }
        self.order.push_back(fingerprint);
        *self.kept.entry(fingerprint).or_insert(0) += 1;
    }

    pub(crate) fn contains(&self, fingerprint: u64) -> bool {
        self.kept.contains_key(&fingerprint)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use smallvec::SmallVec;

    use super::*;
    use crate::core::model::OrderState;
    use crate::core::policy::Method;

    #[test]
    fn order_keys_hash_to_the_partitions_they_always_did() {
        // Proves the partition of an order key is what it was when these values were taken:
        // stored order ids carry it and key lookups recompute it, so a change of hasher (a
        // crate update) would strand every stored order. If this fails, the data directory
        // format must change with it.
        let keys = [
            ("web", "o-1"),
            ("web", "o-2"),
            ("marketplace", "MP-000042"),
            ("app", ""),
            ("store", "ü-ßé-😀"),
        ];
        let partitions = keys.map(|(channel, id)| partition_of_key(channel, id));
        assert_eq!(partitions, PINNED, "partitions of {keys:?}");
        assert_eq!(router_of_key("web", "o-1", 3), PINNED[0] % 3);
        assert_eq!(partition_of_order(7 * PARTITIONS as u64 + 5), 5);
        assert_eq!(router_of_order(7 * PARTITIONS as u64 + 5, 2), 1);
    }

    const PINNED: [usize; 5] = [158, 247, 116, 135, 253];

    fn record(partition: usize, sequence: u64, key: &str) -> OrderRecord {
        OrderRecord {
            id: sequence * PARTITIONS as u64 + partition as u64,
            fingerprint: 0,
            expires_at_ms: 0,
            client_order_id: Arc::from(key),
            lines: Box::new([]),
            ship_to: (0.0, 0.0),
            allocations: SmallVec::new(),
            extra: None,
            key_next: 0,
            channel: (sequence % 3) as ChannelIdx,
            market: None,
            method: Method::Ship,
            state: OrderState::Cancelled,
            created_s: 0,
        }
    }

    #[test]
    fn a_book_finds_every_kept_order_by_id_and_key_after_removals() {
        // Proves removing orders (the last one moving into the hole) keeps every other order
        // findable by id and by key, across segments and colliding key chains, and frees the
        // segments it no longer needs.
        let partition = 7;
        let mut book = OrderBook::new(partition);
        let total = 3 * ORDERS_PER_SEGMENT as u64 + 17;
        // Keys repeat across channels, so chains of the same text exist.
        let key = |sequence: u64| format!("k-{}", sequence / 3);
        for sequence in 1..=total {
            book.insert(record(partition, sequence, &key(sequence)));
        }
        let mut kept: Vec<u64> = (1..=total).collect();
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        while kept.len() > 100 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let sequence = kept.swap_remove((state % kept.len() as u64) as usize);
            let id = sequence * PARTITIONS as u64 + partition as u64;
            let removed = book.remove(book.place(id).expect("kept"));
            assert_eq!(removed.id, id);
            assert!(book.place(id).is_none());
        }
        assert_eq!(book.count, kept.len());
        assert!(
            book.segments.len() <= 2,
            "{} segments for 100 orders",
            book.segments.len()
        );
        for &sequence in &kept {
            let id = sequence * PARTITIONS as u64 + partition as u64;
            let place = book.place(id).expect("kept by id");
            assert_eq!(book.at(place).id, id);
            let channel = (sequence % 3) as ChannelIdx;
            assert_eq!(
                book.find_key(channel, &key(sequence)),
                Some(place),
                "by key"
            );
        }
        assert_eq!(
            book.next_id(0) / PARTITIONS as u64,
            total + 1,
            "ids are never reused"
        );
    }
}
