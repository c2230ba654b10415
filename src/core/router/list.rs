//! Finding a channel's orders: one bounded page of the book, in order id
//! order, for listings that page through every order once, found a bounded
//! number of orders at a time so that routing goes on in between.

use std::collections::BTreeSet;

use super::RouterCore;
use crate::core::book::ListCursor;
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

/// A listing under way on one router: what it looks for, how far its walk
/// through the books has come, and the lowest matching ids passed so far.
/// The router takes a step at a time ([`RouterCore::list_step`]), with
/// other work in between, so the books may change between steps:
///
/// - an order that existed when the listing began and matches throughout
///   is listed if it is among the lowest ids (it is never skipped, and
///   never listed twice);
/// - an order created after the listing began is not listed (the next page
///   of a client that pages on finds it, if its id is past the page);
/// - an order that changed between steps is listed as it is at the last
///   step, and only if it matched both when passed and then; one that
///   retired meanwhile is not listed.
#[derive(Clone, Debug)]
pub struct Listing {
    filter: OrderFilter,
    cursor: ListCursor,
    /// At most `filter.limit` ids: the lowest that matched when passed.
    found: BTreeSet<OrderId>,
}

/// One router's part of a page.
#[derive(Clone, Debug, PartialEq)]
pub struct ListPage {
    /// Matching orders in id order, at most the filter's `limit`.
    pub orders: Vec<OrderRecord>,
    /// Set when the walk found `limit` matching orders: the highest id
    /// among them. Every order up to it that matched throughout is in
    /// `orders`; past it there may be more. Fewer orders than `limit` with
    /// this set means some of them changed or retired before the last step.
    pub complete_to: Option<OrderId>,
}

impl RouterCore {
    /// A listing of the orders as they are now; nothing is passed yet.
    pub fn start_listing(&self, filter: OrderFilter) -> Listing {
        Listing {
            cursor: self.orders.list_cursor(),
            filter,
            found: BTreeSet::new(),
        }
    }

    /// Passes at most `max` more orders of the listing: its page once every
    /// book is passed, else `None` (call again, after other work if any).
    pub fn list_step(&self, listing: &mut Listing, max: usize) -> Option<ListPage> {
        let Listing {
            filter,
            cursor,
            found,
        } = listing;
        let mut left = max.max(1);
        while left > 0 {
            let Some(run) = self.orders.listing_run(cursor, left) else {
                return Some(self.list_page(listing));
            };
            left -= run.orders.len();
            for record in run.existing().filter(|r| filter.matches(r)) {
                if found.len() < filter.limit {
                    found.insert(record.id);
                } else if found.last().is_some_and(|&top| record.id < top)
                    && found.insert(record.id)
                {
                    found.pop_last();
                }
            }
        }
        None
    }

    /// The page of a listing whose walk is done.
    fn list_page(&self, listing: &Listing) -> ListPage {
        let Listing { filter, found, .. } = listing;
        ListPage {
            orders: found
                .iter()
                .filter_map(|id| self.orders.get(id))
                .filter(|r| filter.matches(r))
                .cloned()
                .collect(),
            complete_to: (found.len() == filter.limit)
                .then(|| found.last().copied())
                .flatten(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::Arc;

    use smallvec::SmallVec;

    use super::*;
    use crate::config::Config;
    use crate::core::book::PARTITIONS;
    use crate::core::index::AvailabilityIndex;
    use crate::core::network::Network;
    use crate::core::order::{AllocationState, CREATED_EPOCH_UNIX_S};
    use crate::core::policy::Method;

    /// Router 1 of 3: it owns the partitions `p % 3 == 1`.
    const ROUTERS: usize = 3;
    const ROUTER: usize = 1;
    const STATES: [OrderState; 5] = [
        OrderState::Held,
        OrderState::Confirmed,
        OrderState::Shipped,
        OrderState::Cancelled,
        OrderState::Expired,
    ];

    /// A seeded xorshift: the same cases on every run.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % n.max(1) as u64) as usize
        }
    }

    fn router() -> RouterCore {
        static NETWORK: std::sync::OnceLock<Arc<Network>> = std::sync::OnceLock::new();
        let network =
            NETWORK.get_or_init(|| Arc::new(Config::default_config().validate().unwrap().network));
        let index = Arc::new(AvailabilityIndex::new(network.nodes.len(), 16));
        RouterCore::new(ROUTER, ROUTERS, network.clone(), index, 1)
    }

    fn record(id: OrderId, rng: &mut Rng) -> OrderRecord {
        let allocations = (0..rng.below(3))
            .map(|line| AllocationState {
                line: line as u16,
                node: rng.below(4) as NodeIdx,
                sku: 0,
                initial: 1,
                open: 1,
                shipped: 0,
                returned: 0,
            })
            .collect::<SmallVec<_>>();
        OrderRecord {
            id,
            fingerprint: 0,
            expires_at_ms: 0,
            client_order_id: Arc::from(format!("o-{id}")),
            lines: Box::new([]),
            ship_to: (0.0, 0.0),
            allocations,
            extra: None,
            key_next: 0,
            channel: rng.below(3) as ChannelIdx,
            market: None,
            method: Method::Ship,
            state: STATES[rng.below(STATES.len())],
            // 0: routed before times were recorded.
            created_s: rng.below(6) as u32 * 10,
        }
    }

    /// A book of up to `most` orders in the router's partitions: all of
    /// them in one, in a few, or spread over every one (one partition may
    /// fill more than a segment).
    fn book(rng: &mut Rng, most: usize) -> RouterCore {
        let mut router = router();
        let owned: Vec<usize> = (ROUTER..PARTITIONS).step_by(ROUTERS).collect();
        let used = [1, 3, owned.len()][rng.below(3)];
        for _ in 0..rng.below(most) {
            let partition = owned[rng.below(used)];
            // Gaps: ids given out to orders that were rejected or retired.
            let earlier = rng.below(3) as u64;
            let id = router.orders.next_id(partition, earlier);
            router.restore(record(id, rng)).unwrap();
        }
        router
    }

    fn filter(rng: &mut Rng, router: &RouterCore) -> OrderFilter {
        let ids: Vec<OrderId> = router.orders().map(|r| r.id).collect();
        let at_ms = |s: usize| (s as u64 * 10 + CREATED_EPOCH_UNIX_S) * 1000;
        let (from, to) = match rng.below(4) {
            0 => (at_ms(rng.below(6)), 0),
            1 => (0, at_ms(rng.below(6))),
            _ => (0, 0),
        };
        OrderFilter {
            channel: rng.below(3) as ChannelIdx,
            state: (rng.below(2) == 0).then(|| STATES[rng.below(STATES.len())]),
            node: (rng.below(3) == 0).then(|| rng.below(4) as NodeIdx),
            created_from_ms: from,
            created_to_ms: to,
            after: if rng.below(3) == 0 && !ids.is_empty() {
                ids[rng.below(ids.len())]
            } else {
                0
            },
            limit: 1 + rng.below(40),
        }
    }

    /// The page a single pass over the book as it is finds.
    fn one_pass(router: &RouterCore, filter: &OrderFilter) -> ListPage {
        let mut ids: Vec<OrderId> = router
            .orders()
            .filter(|r| filter.matches(r))
            .map(|r| r.id)
            .collect();
        ids.sort_unstable();
        let complete_to = ids.get(filter.limit.wrapping_sub(1)).copied();
        ids.truncate(filter.limit);
        ListPage {
            orders: ids.iter().map(|id| router.orders[id].clone()).collect(),
            complete_to,
        }
    }

    #[test]
    fn a_listing_in_steps_finds_what_one_pass_finds() {
        // Proves that a listing taken a few orders at a time over a book that does not change
        // finds exactly the page one pass finds (same orders, same id order, same bound),
        // over random books (orders in one partition past a segment, in a few, in all),
        // filters and step sizes.
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for case in 0..300 {
            let router = book(&mut rng, if case % 10 == 0 { 9000 } else { 600 });
            let filter = filter(&mut rng, &router);
            let step = 1 + rng.below(700);
            let mut listing = router.start_listing(filter.clone());
            let mut steps = 0;
            let page = loop {
                steps += 1;
                if let Some(page) = router.list_step(&mut listing, step) {
                    break page;
                }
            };
            assert_eq!(page, one_pass(&router, &filter), "case {case}, {filter:?}");
            assert!(
                steps <= router.order_count() / step + PARTITIONS + 1,
                "case {case}: {steps} steps of {step} for {} orders",
                router.order_count()
            );
        }
    }

    #[test]
    fn a_listing_whose_book_changes_between_steps_skips_and_repeats_nothing() {
        // Proves that while a listing is taken in steps, orders created, retired and changed in
        // between (as the router's other messages do) never make it list an order twice, list
        // one out of id order, list one created after it began, or miss one that existed and
        // matched all along up to where it says its page is complete; and that an order it
        // lists matches as the page shows it.
        let mut rng = Rng(0xD1B5_4A32_D192_ED03);
        let owned: Vec<usize> = (ROUTER..PARTITIONS).step_by(ROUTERS).collect();
        for case in 0..300 {
            let mut router = book(&mut rng, if case % 10 == 0 { 9000 } else { 600 });
            let filter = filter(&mut rng, &router);
            let before: BTreeSet<OrderId> = router.orders().map(|r| r.id).collect();
            let mut ids: Vec<OrderId> = before.iter().copied().collect();
            let mut touched: BTreeSet<OrderId> = BTreeSet::new();
            let step = 1 + rng.below(300);
            let mut listing = router.start_listing(filter.clone());
            let page = loop {
                if let Some(page) = router.list_step(&mut listing, step) {
                    break page;
                }
                for _ in 0..rng.below(6) {
                    let at = rng.below(ids.len());
                    match (rng.below(3), ids.get(at).copied()) {
                        (0, Some(id)) => {
                            // Retired: the book's last order takes its place.
                            if router.orders.retire(id).is_some() {
                                ids.swap_remove(at);
                                touched.insert(id);
                            }
                        }
                        (1, Some(id)) => {
                            let record = router.orders.get_mut(&id).unwrap();
                            record.state = STATES[rng.below(STATES.len())];
                            if rng.below(2) == 0 {
                                record.allocations.clear();
                            }
                            touched.insert(id);
                        }
                        _ => {
                            let partition = owned[rng.below(owned.len())];
                            let id = router.orders.next_id(partition, 0);
                            router.orders.insert(record(id, &mut rng));
                            ids.push(id);
                        }
                    }
                }
            };
            let listed: Vec<OrderId> = page.orders.iter().map(|r| r.id).collect();
            let context = format!("case {case}, {filter:?}, page {listed:?}");
            assert!(listed.len() <= filter.limit, "{context}");
            assert!(
                listed.windows(2).all(|w| w[0] < w[1]),
                "in id order: {context}"
            );
            for record in &page.orders {
                assert!(before.contains(&record.id), "created after: {context}");
                assert!(filter.matches(record), "shown not matching: {context}");
                assert_eq!(Some(record), router.orders.get(&record.id), "{context}");
            }
            if let (Some(to), Some(&last)) = (page.complete_to, listed.last()) {
                assert!(last <= to, "{context}");
            }
            // Orders that existed and matched all along.
            let steady = router
                .orders()
                .filter(|r| before.contains(&r.id) && !touched.contains(&r.id))
                .filter(|r| filter.matches(r))
                .map(|r| r.id)
                .filter(|&id| page.complete_to.is_none_or(|to| id <= to));
            for id in steady {
                assert!(listed.contains(&id), "{id} missed: {context}");
            }
            if page.complete_to.is_none() {
                assert!(
                    listed.len() < filter.limit || filter.limit == 0,
                    "{context}"
                );
            }
        }
    }
}
