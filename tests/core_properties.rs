//! Property tests of the sans-IO core against simple reference models,
//! checking the stock invariants after every step:
//! 0 <= reserved <= on_hand, ATP = max(0, on_hand - reserved - safety_stock),
//! and for every cell the sum of the open allocations equals reserved.

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use omniroute::core::index::AvailabilityIndex;
use omniroute::core::model::{Decision, FulfilmentMethod, NodeIdx, OrderId, SkuId};
use omniroute::core::router::OrderRef;
use omniroute::core::stock::{HoldItem, HoldOutcome, StockError, StockShard};
use proptest::prelude::*;
use smallvec::SmallVec;

const SKUS: u32 = 3;
const NODES: u16 = 4;
const ORDERS: u64 = 6;

#[derive(Clone, Debug)]
enum ShardOp {
    Hold {
        order: OrderId,
        items: Vec<(SkuId, u32, Vec<NodeIdx>, u8, bool)>,
    },
    Reserve {
        order: OrderId,
        sku: SkuId,
        node: NodeIdx,
        qty: u32,
    },
    Abort(OrderId),
    Release {
        order: OrderId,
        sku: SkuId,
        node: NodeIdx,
        qty: u32,
    },
    ReleaseOrder(OrderId),
    Ship {
        order: OrderId,
        sku: SkuId,
        node: NodeIdx,
        qty: u32,
    },
    Restock {
        sku: SkuId,
        node: NodeIdx,
        qty: u32,
    },
    Set {
        sku: SkuId,
        node: NodeIdx,
        on_hand: u32,
        safety: Option<u32>,
    },
    Adjust {
        sku: SkuId,
        node: NodeIdx,
        delta: i64,
    },
}

fn candidates() -> impl Strategy<Value = Vec<NodeIdx>> {
    (
        Just((0..NODES).collect::<Vec<_>>()).prop_shuffle(),
        0..=NODES as usize,
    )
        .prop_map(|(all, n)| all[..n].to_vec())
}

fn shard_op() -> impl Strategy<Value = ShardOp> {
    let order = 0..ORDERS;
    let sku = 0..SKUS;
    let node = 0..NODES;
    let item = (1..8u32, candidates(), 1..3u8, any::<bool>());
    prop_oneof![
        4 => (order.clone(), proptest::sample::subsequence((0..SKUS).collect::<Vec<_>>(), 1..=SKUS as usize), proptest::collection::vec(item, SKUS as usize))
            .prop_map(|(order, skus, items)| ShardOp::Hold {
                order,
                items: skus.into_iter().zip(items).map(|(s, (q, c, p, partial))| (s, q, c, p, partial)).collect(),
            }),
        3 => (order.clone(), sku.clone(), node.clone(), 1..8u32).prop_map(|(order, sku, node, qty)| ShardOp::Reserve { order, sku, node, qty }),
        1 => order.clone().prop_map(ShardOp::Abort),
        1 => (order.clone(), sku.clone(), node.clone(), 1..6u32).prop_map(|(order, sku, node, qty)| ShardOp::Release { order, sku, node, qty }),
        1 => order.clone().prop_map(ShardOp::ReleaseOrder),
        2 => (order, sku.clone(), node.clone(), 1..6u32).prop_map(|(order, sku, node, qty)| ShardOp::Ship { order, sku, node, qty }),
        1 => (sku.clone(), node.clone(), 1..5u32).prop_map(|(sku, node, qty)| ShardOp::Restock { sku, node, qty }),
        3 => (sku.clone(), node.clone(), 0..25u32, proptest::option::of(0..4u32)).prop_map(|(sku, node, on_hand, safety)| ShardOp::Set { sku, node, on_hand, safety }),
        1 => (sku, node, -12..12i64).prop_map(|(sku, node, delta)| ShardOp::Adjust { sku, node, delta }),
    ]
}

/// The reference: cells as plain numbers, reservations as (pending, committed) per
/// (order, sku, node). Nothing clever, so that it is obviously right.
#[derive(Default)]
struct Model {
    on_hand: HashMap<(SkuId, NodeIdx), u32>,
    safety: HashMap<(SkuId, NodeIdx), u32>,
    reservations: HashMap<(OrderId, SkuId, NodeIdx), (u32, u32)>,
}

impl Model {
    /// Committed units at a cell.
    fn reserved(&self, sku: SkuId, node: NodeIdx) -> u32 {
        self.reservations
            .iter()
            .filter(|((_, s, n), _)| *s == sku && *n == node)
            .map(|(_, (_, c))| c)
            .sum()
    }

    /// Pending (held, not journaled) units at a cell.
    fn held(&self, sku: SkuId, node: NodeIdx) -> u32 {
        self.reservations
            .iter()
            .filter(|((_, s, n), _)| *s == sku && *n == node)
            .map(|(_, (p, _))| p)
            .sum()
    }

    fn on_hand(&self, sku: SkuId, node: NodeIdx) -> u32 {
        *self.on_hand.get(&(sku, node)).unwrap_or(&0)
    }

    fn atp(&self, sku: SkuId, node: NodeIdx) -> u32 {
        let on_hand = i64::from(self.on_hand(sku, node));
        let safety = i64::from(*self.safety.get(&(sku, node)).unwrap_or(&0));
        (on_hand - i64::from(self.reserved(sku, node)) - i64::from(self.held(sku, node)) - safety)
            .max(0) as u32
    }

    /// Takes up to `qty` from an order's committed reservation at a cell.
    fn take(&mut self, order: OrderId, sku: SkuId, node: NodeIdx, qty: u32) -> u32 {
        let entry = self.reservations.entry((order, sku, node)).or_default();
        let from_committed = entry.1.min(qty);
        entry.1 -= from_committed;
        from_committed
    }

    /// Checks the shard's answer to one item against the model, then applies it.
    fn check_hold(
        &mut self,
        order: OrderId,
        item: &HoldItem,
        outcome: &HoldOutcome,
    ) -> Result<(), TestCaseError> {
        let atps: Vec<u32> = item
            .candidates
            .iter()
            .map(|&n| self.atp(item.sku, n))
            .collect();
        let first_whole = item
            .candidates
            .iter()
            .zip(&atps)
            .find(|(_, a)| **a >= item.qty)
            .map(|(n, _)| *n);
        match outcome {
            HoldOutcome::Held(parts) => {
                let total: u32 = parts.iter().map(|p| p.1).sum();
                if let Some(node) = first_whole {
                    prop_assert_eq!(
                        parts.as_slice(),
                        &[(node, item.qty)][..],
                        "must take the first candidate that covers the line"
                    );
                } else {
                    prop_assert!(item.max_parts > 1 || item.partial);
                    prop_assert!(parts.len() <= usize::from(item.max_parts.max(1)));
                    prop_assert!(total <= item.qty && (item.partial || total == item.qty));
                }
                for &(node, qty) in parts {
                    prop_assert!(item.candidates.contains(&node));
                    prop_assert!(qty <= self.atp(item.sku, node), "held above ATP");
                    self.reservations
                        .entry((order, item.sku, node))
                        .or_default()
                        .0 += qty;
                }
            }
            HoldOutcome::Short { available } => {
                prop_assert_eq!(*available, atps.iter().sum::<u32>());
                prop_assert!(
                    first_whole.is_none(),
                    "short although {:?} covers the line",
                    first_whole
                );
            }
            HoldOutcome::Undone => {}
        }
        Ok(())
    }

    fn check_cells(&self, shard: &StockShard) -> Result<(), TestCaseError> {
        shard
            .check_invariants()
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        for sku in 0..SKUS {
            for node in 0..NODES {
                let cell = shard.cell(sku, node);
                prop_assert_eq!(cell.on_hand, *self.on_hand.get(&(sku, node)).unwrap_or(&0));
                prop_assert_eq!(
                    cell.reserved,
                    self.reserved(sku, node),
                    "reserved of sku {} node {}",
                    sku,
                    node
                );
                prop_assert_eq!(
                    cell.held,
                    self.held(sku, node),
                    "held of sku {} node {}",
                    sku,
                    node
                );
                prop_assert!(cell.reserved <= cell.on_hand);
                prop_assert_eq!(cell.atp(), self.atp(sku, node));
            }
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn stock_shard_matches_the_reference_model(ops in proptest::collection::vec(shard_op(), 1..80)) {
        // Proves every shard operation agrees with the reference model and keeps every
        // invariant after every step, including holds that split, fail and roll back.
        let index = Arc::new(AvailabilityIndex::new(NODES as usize, 8));
        for s in 0..SKUS {
            index.intern(&format!("S{s}")).unwrap();
        }
        let mut shard = StockShard::new(0, 1, index);
        let mut model = Model::default();
        for op in ops {
            match op {
                ShardOp::Hold { order, items } => {
                    let items: Vec<HoldItem> = items
                        .into_iter()
                        .enumerate()
                        .map(|(line, (sku, qty, candidates, max_parts, partial))| HoldItem {
                            order, line: line as u16, sku, qty, candidates: SmallVec::from_vec(candidates), max_parts, partial,
                        })
                        .collect();
                    let outcomes = shard.hold(&items);
                    prop_assert_eq!(outcomes.len(), items.len());
                    let failed = items.iter().zip(&outcomes).any(|(i, o)| matches!(o, HoldOutcome::Short { .. }) && !i.partial);
                    for (item, outcome) in items.iter().zip(&outcomes) {
                        if failed {
                            prop_assert!(!matches!(outcome, HoldOutcome::Held(_)), "a failed group kept a hold");
                        }
                        model.check_hold(order, item, outcome)?;
                    }
                }
                ShardOp::Reserve { order, sku, node, qty } => {
                    let bumped = shard.reserve(order, sku, node, qty);
                    let free = model.on_hand(sku, node) - model.reserved(sku, node);
                    let granted = qty.min(free);
                    let entry = model.reservations.entry((order, sku, node)).or_default();
                    entry.0 -= entry.0.min(qty);
                    entry.1 += granted;
                    prop_assert_eq!(bumped.map_or(0, |b| b.qty), qty - granted, "a shortfall is bumped, nothing else");
                }
                ShardOp::Abort(order) => {
                    shard.abort(order);
                    for ((o, _, _), (pending, _)) in model.reservations.iter_mut() {
                        if *o == order {
                            *pending = 0;
                        }
                    }
                }
                ShardOp::Release { order, sku, node, qty } => {
                    let freed = shard.release(order, sku, node, qty);
                    prop_assert_eq!(freed, model.take(order, sku, node, qty));
                }
                ShardOp::ReleaseOrder(order) => {
                    shard.release_order(order);
                    for ((o, _, _), (_, committed)) in model.reservations.iter_mut() {
                        if *o == order {
                            *committed = 0;
                        }
                    }
                }
                ShardOp::Ship { order, sku, node, qty } => {
                    let committed = model.reservations.get(&(order, sku, node)).map_or(0, |r| r.1);
                    let result = shard.ship(order, sku, node, qty);
                    let expected = if committed == 0 {
                        Err(StockError::NoReservation)
                    } else if qty > committed {
                        Err(StockError::ExceedsReserved)
                    } else {
                        Ok(())
                    };
                    prop_assert_eq!(result, expected);
                    if result.is_ok() {
                        model.reservations.get_mut(&(order, sku, node)).unwrap().1 -= qty;
                        *model.on_hand.get_mut(&(sku, node)).unwrap() -= qty;
                    }
                }
                ShardOp::Restock { sku, node, qty } => {
                    shard.restock(sku, node, qty).unwrap();
                    *model.on_hand.entry((sku, node)).or_default() += qty;
                }
                ShardOp::Set { .. } | ShardOp::Adjust { .. } => {
                    let (sku, node, on_hand, safety, bumped) = match op {
                        ShardOp::Set { sku, node, on_hand, safety } => (sku, node, on_hand, safety, shard.set(sku, node, on_hand, safety)),
                        ShardOp::Adjust { sku, node, delta } => {
                            let current = i64::from(*model.on_hand.get(&(sku, node)).unwrap_or(&0));
                            let target = (current + delta).max(0) as u32;
                            (sku, node, target, None, shard.adjust(sku, node, delta).unwrap())
                        }
                        _ => unreachable!(),
                    };
                    let deficit = model.reserved(sku, node).saturating_sub(on_hand);
                    prop_assert_eq!(bumped.iter().map(|b| b.qty).sum::<u32>(), deficit, "bumps must cover exactly the deficit");
                    for bump in &bumped {
                        prop_assert_eq!((bump.sku, bump.node), (sku, node));
                        prop_assert_eq!(model.take(bump.order, sku, node, bump.qty), bump.qty, "bumped units the order did not hold");
                    }
                    model.on_hand.insert((sku, node), on_hand);
                    if let Some(safety) = safety {
                        model.safety.insert((sku, node), safety);
                    }
                }
            }
            model.reservations.retain(|_, (p, c)| *p + *c > 0);
            model.check_cells(&shard)?;
        }
    }
}

#[derive(Clone, Debug)]
enum LifeOp {
    Submit {
        lines: Vec<(usize, u32)>,
        channel: usize,
        ttl_ms: u64,
    },
    Confirm(usize),
    Cancel(usize),
    Advance(u64),
    Ship {
        order: usize,
        pick: usize,
        qty: u32,
    },
    Reject {
        order: usize,
        pick: usize,
        count: Option<u32>,
    },
    Online {
        node: NodeIdx,
        online: bool,
    },
    Return {
        order: usize,
        node: NodeIdx,
        qty: u32,
    },
    Set {
        sku: usize,
        node: NodeIdx,
        on_hand: u32,
    },
    Adjust {
        sku: usize,
        node: NodeIdx,
        delta: i64,
    },
}

fn life_op() -> impl Strategy<Value = LifeOp> {
    let sku_qty = proptest::collection::vec((0..4usize, 1..6u32), 1..4);
    prop_oneof![
        6 => (sku_qty, 0..3usize, 1_000..20_000u64).prop_map(|(lines, channel, ttl_ms)| LifeOp::Submit { lines, channel, ttl_ms }),
        3 => (0..40usize).prop_map(LifeOp::Confirm),
        1 => (0..40usize).prop_map(LifeOp::Cancel),
        1 => (1..15_000u64).prop_map(LifeOp::Advance),
        3 => (0..40usize, 0..4usize, 1..4u32).prop_map(|(order, pick, qty)| LifeOp::Ship { order, pick, qty }),
        1 => (0..40usize, 0..4usize, proptest::option::of(0..10u32)).prop_map(|(order, pick, count)| LifeOp::Reject { order, pick, count }),
        1 => (0..5u16, any::<bool>()).prop_map(|(node, online)| LifeOp::Online { node, online }),
        1 => (0..40usize, 0..5u16, 1..3u32).prop_map(|(order, node, qty)| LifeOp::Return { order, node, qty }),
        2 => (0..4usize, 0..5u16, 0..30u32).prop_map(|(sku, node, on_hand)| LifeOp::Set { sku, node, on_hand }),
        1 => (0..4usize, 0..5u16, -10..10i64).prop_map(|(sku, node, delta)| LifeOp::Adjust { sku, node, delta }),
    ]
}

const LIFE_SKUS: [&str; 4] = ["SKU-0", "SKU-1", "SKU-2", "SKU-3"];
const CHANNELS: [&str; 3] = ["whole", "partial", "single"];

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn order_lifecycle_keeps_stock_and_book_in_agreement(ops in proptest::collection::vec(life_op(), 1..60)) {
        // Proves that any sequence of submits, confirms, cancels, expiries, ships, node
        // rejections, node outages, returns and stock feeds keeps the shards' invariants,
        // keeps on_hand equal to a reference ledger of sets, adjusts, ships and returns,
        // and keeps every cell's reserved equal to the open units the order book shows.
        let text = format!(
            "{}{}[channels.single]\nrules = [\"nearest\"]\nmax_shipments = 1\n{}",
            common::channel("whole", &["fewest_shipments", "nearest"]),
            "[channels.partial]\nrules = [\"most_stock\"]\non_short = \"partial\"\n",
            common::stock(&[("SKU-0", "WH-N", 10), ("SKU-1", "WH-S", 10), ("SKU-2", "ST-1", 5), ("SKU-3", "ST-2", 5)]),
        );
        let config = common::config(&text);
        let mut engine = common::local(&config);
        let sku_ids: Vec<SkuId> = LIFE_SKUS.iter().map(|s| engine.index.intern(s).unwrap()).collect();
        let mut on_hand: HashMap<(SkuId, NodeIdx), u32> = HashMap::new();
        for update in &config.stock {
            if let omniroute::engine::StockUpdate::Set { sku, node, on_hand: units, .. } = update {
                on_hand.insert((engine.index.lookup(sku).unwrap(), config.network.node_idx(node).unwrap()), *units);
            }
        }
        let mut now_ms = 0;
        let mut submitted: Vec<OrderRef> = Vec::new();
        for op in ops {
            match op {
                LifeOp::Submit { lines, channel, ttl_ms } => {
                    let mut unique: Vec<(usize, u32)> = Vec::new();
                    for (sku, qty) in lines {
                        if !unique.iter().any(|(s, _)| *s == sku) {
                            unique.push((sku, qty));
                        }
                    }
                    let id = format!("o-{}", submitted.len());
                    let lines: Vec<(&str, u32)> = unique.iter().map(|(s, q)| (LIFE_SKUS[*s], *q)).collect();
                    let mut request = common::order(CHANNELS[channel], &id, &lines);
                    request.hold_ttl_ms = Some(ttl_ms);
                    if channel == 2 {
                        request.method = FulfilmentMethod::Ship;
                    }
                    let decision = engine.submit(request, now_ms);
                    if let Decision::Routed { allocations, short, .. } = &decision {
                        for (line_no, (_, qty)) in unique.iter().enumerate() {
                            let placed: u32 = allocations.iter().filter(|a| usize::from(a.line) == line_no).map(|a| a.qty).sum();
                            let short_line = short.iter().find(|s| usize::from(s.line) == line_no);
                            prop_assert!(placed <= *qty);
                            if channel != 1 {
                                prop_assert_eq!(placed, *qty, "an all-or-nothing order was allocated in part");
                            }
                            // A partial line lists exactly what it lacks.
                            prop_assert_eq!(placed < *qty, short_line.is_some());
                        }
                    }
                    submitted.push(OrderRef::Key { channel: CHANNELS[channel].into(), client_order_id: id });
                }
                LifeOp::Confirm(i) => { if let Some(order) = submitted.get(i) { let _ = engine.confirm(order); } }
                LifeOp::Cancel(i) => { if let Some(order) = submitted.get(i) { let _ = engine.cancel(order); } }
                LifeOp::Advance(ms) => { now_ms += ms; engine.expire_due(now_ms); }
                LifeOp::Ship { order, pick, qty } => {
                    let Some(order) = submitted.get(order) else { continue };
                    let Ok(record) = engine.router.get(order).cloned() else { continue };
                    let open: Vec<_> = record.allocations.iter().filter(|a| a.open > 0).collect();
                    if let Some(a) = open.get(pick % open.len().max(1)) {
                        if engine.ship(order, a.node, a.sku, qty).is_ok() {
                            *on_hand.get_mut(&(a.sku, a.node)).unwrap() -= qty;
                        }
                    }
                }
                LifeOp::Reject { order, pick, count } => {
                    let Some(order) = submitted.get(order) else { continue };
                    let Ok(record) = engine.router.get(order).cloned() else { continue };
                    let open: Vec<_> = record.allocations.iter().filter(|a| a.open > 0).collect();
                    if let Some(a) = open.get(pick % open.len().max(1)) {
                        let counts: Vec<(SkuId, u32)> = count.map(|c| (a.sku, c)).into_iter().collect();
                        if engine.node_reject(order, a.node, &counts, now_ms).is_ok() {
                            if let Some(c) = count { on_hand.insert((a.sku, a.node), c); }
                        }
                    }
                }
                LifeOp::Online { node, online } => { engine.set_node_online(node, online, now_ms); }
                LifeOp::Return { order, node, qty } => {
                    let Some(order) = submitted.get(order) else { continue };
                    let Ok(record) = engine.router.get(order).cloned() else { continue };
                    let Some(a) = record.allocations.iter().find(|a| a.shipped > a.returned) else { continue };
                    if engine.return_units(order, node, a.sku, qty).is_ok() {
                        *on_hand.entry((a.sku, node)).or_default() += qty;
                    }
                }
                LifeOp::Set { sku, node, on_hand: units } => {
                    engine.stock_set(LIFE_SKUS[sku], node, units, None, now_ms);
                    on_hand.insert((sku_ids[sku], node), units);
                }
                LifeOp::Adjust { sku, node, delta } => {
                    engine.stock_adjust(sku_ids[sku], node, delta, now_ms).unwrap();
                    let entry = on_hand.entry((sku_ids[sku], node)).or_default();
                    *entry = (i64::from(*entry) + delta).max(0) as u32;
                }
            }
            engine.check_invariants().map_err(|e| TestCaseError::fail(e.to_string()))?;
            let mut open_by_cell: HashMap<(SkuId, NodeIdx), u32> = HashMap::new();
            for record in engine.router.orders() {
                for a in &record.allocations {
                    *open_by_cell.entry((a.sku, a.node)).or_default() += a.open;
                }
            }
            for &sku in &sku_ids {
                for node in 0..5 {
                    let cell = engine.cell(sku, node);
                    prop_assert_eq!(cell.on_hand, *on_hand.get(&(sku, node)).unwrap_or(&0), "on_hand of sku {} node {}", sku, node);
                    prop_assert_eq!(cell.reserved, *open_by_cell.get(&(sku, node)).unwrap_or(&0), "reserved vs open units of sku {} node {}", sku, node);
                }
            }
        }
    }
}
