//! An in-memory, single-threaded driver of the core: one router, every
//! shard and node ledger as plain values, messages as direct calls. The
//! property tests and simulations run the same placement and lifecycle code
//! as the actors do, deterministically and with time passed in.

use std::cell::RefCell;
use std::sync::Arc;

use futures::executor::block_on;

use super::capacity::{CapacityOutcome, NodeLedger};
use super::error::InvariantError;
use super::index::AvailabilityIndex;
use super::model::{Decision, NodeIdx, OrderId, OrderRequest, SkuId};
use super::network::Network;
use super::ops::{apply_node_op, apply_stock_op, NodeOp, StockOp};
use super::order::OrderRecord;
use super::placement::Participants;
use super::router::{OpError, OrderRef, RouterCore};
use super::stock::{Bumped, Cell, HoldItem, HoldOutcome, StockError, StockShard};

/// Shards and ledgers owned in place; `RefCell` because placement borrows
/// them through `&self` like it would borrow actor handles.
pub struct LocalParticipants {
    pub shards: RefCell<Vec<StockShard>>,
    pub nodes: RefCell<Vec<NodeLedger>>,
    /// Reservations the ops took back, for the router to re-route.
    pub bumped: RefCell<Vec<Bumped>>,
}

impl LocalParticipants {
    /// Empty shards, and every node's ledger with its configured capacity
    /// and online flag, all publishing to `index`.
    pub fn new(
        network: &Network,
        index: &Arc<AvailabilityIndex>,
        shard_count: u32,
        now_ms: u64,
    ) -> LocalParticipants {
        let shards = (0..shard_count)
            .map(|s| StockShard::new(s, shard_count, index.clone()))
            .collect();
        let nodes = network
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                NodeLedger::new(
                    i as NodeIdx,
                    n.daily_capacity,
                    n.online,
                    index.clone(),
                    now_ms,
                )
            })
            .collect();
        LocalParticipants {
            shards: RefCell::new(shards),
            nodes: RefCell::new(nodes),
            bumped: RefCell::new(Vec::new()),
        }
    }
}

impl Participants for LocalParticipants {
    async fn hold_stock(&self, shard: u32, items: Vec<HoldItem>) -> Vec<HoldOutcome> {
        self.shards.borrow_mut()[shard as usize].hold(&items)
    }

    async fn hold_capacity(
        &self,
        node: NodeIdx,
        orders: Vec<OrderId>,
        now_ms: u64,
    ) -> Vec<CapacityOutcome> {
        let mut nodes = self.nodes.borrow_mut();
        orders
            .into_iter()
            .map(|order| nodes[node as usize].hold(order, now_ms))
            .collect()
    }

    fn stock_ops(&self, shard: u32, ops: Vec<StockOp>) {
        let mut shards = self.shards.borrow_mut();
        let mut bumped = self.bumped.borrow_mut();
        for op in ops {
            let _ = apply_stock_op(&mut shards[shard as usize], op, &mut bumped);
        }
    }

    fn node_ops(&self, node: NodeIdx, ops: Vec<NodeOp>) {
        let mut nodes = self.nodes.borrow_mut();
        for op in ops {
            let _ = apply_node_op(&mut nodes[node as usize], op);
        }
    }
}

pub struct LocalEngine {
    pub network: Arc<Network>,
    pub index: Arc<AvailabilityIndex>,
    pub router: RouterCore,
    pub participants: LocalParticipants,
}

impl LocalEngine {
    pub fn new(
        network: Arc<Network>,
        index: Arc<AvailabilityIndex>,
        shard_count: u32,
        now_ms: u64,
    ) -> LocalEngine {
        LocalEngine {
            router: RouterCore::new(0, 1, network.clone(), index.clone(), shard_count),
            participants: LocalParticipants::new(&network, &index, shard_count, now_ms),
            network,
            index,
        }
    }

    fn shard_count(&self) -> u32 {
        self.participants.shards.borrow().len() as u32
    }

    /// Re-routes what the last ops bumped, until nothing more is bumped.
    fn settle(&mut self, now_ms: u64) {
        loop {
            let bumped = std::mem::take(&mut *self.participants.bumped.borrow_mut());
            if bumped.is_empty() {
                break;
            }
            block_on(self.router.bumped(&bumped, now_ms, &self.participants));
        }
    }

    pub fn submit(&mut self, order: OrderRequest, now_ms: u64) -> Decision {
        self.submit_batch(std::slice::from_ref(&order), now_ms)
            .remove(0)
    }

    pub fn submit_batch(&mut self, orders: &[OrderRequest], now_ms: u64) -> Vec<Decision> {
        let decisions = block_on(self.router.submit(orders, now_ms, &self.participants));
        self.settle(now_ms);
        decisions
    }

    pub fn confirm(&mut self, order: &OrderRef) -> Result<OrderRecord, OpError> {
        self.router.confirm(order).cloned()
    }

    pub fn cancel(&mut self, order: &OrderRef) -> Result<OrderRecord, OpError> {
        self.router.cancel(order, &self.participants).cloned()
    }

    pub fn expire_due(&mut self, now_ms: u64) -> usize {
        self.router
            .expire_due(now_ms, usize::MAX, &self.participants)
    }

    pub fn ship(
        &mut self,
        order: &OrderRef,
        node: NodeIdx,
        sku: SkuId,
        qty: u32,
    ) -> Result<OrderRecord, OpError> {
        self.router
            .ship(order, node, sku, qty, &self.participants)
            .cloned()
    }

    pub fn return_units(
        &mut self,
        order: &OrderRef,
        node: NodeIdx,
        sku: SkuId,
        qty: u32,
    ) -> Result<OrderRecord, OpError> {
        self.router
            .return_units(order, node, sku, qty, &self.participants)
            .cloned()
    }

    pub fn node_reject(
        &mut self,
        order: &OrderRef,
        node: NodeIdx,
        counts: &[(SkuId, u32)],
        now_ms: u64,
    ) -> Result<OrderRecord, OpError> {
        let id =
            block_on(
                self.router
                    .node_reject(order, node, counts, now_ms, &self.participants),
            )?
            .id;
        self.settle(now_ms);
        Ok(self.router.get(&OrderRef::Id(id)).expect("known").clone())
    }

    /// Sets a node's online flag; going offline re-routes its open orders.
    pub fn set_node_online(&mut self, node: NodeIdx, online: bool, now_ms: u64) -> usize {
        let orders = self.participants.nodes.borrow_mut()[node as usize].set_online(online);
        for &order in &orders {
            block_on(
                self.router
                    .node_offline(order, node, now_ms, &self.participants),
            );
        }
        self.settle(now_ms);
        orders.len()
    }

    /// A WMS count: interns the SKU if new, sets the cell, re-routes bumps.
    pub fn stock_set(
        &mut self,
        sku: &str,
        node: NodeIdx,
        on_hand: u32,
        safety_stock: Option<u32>,
        now_ms: u64,
    ) -> SkuId {
        let sku = self.index.intern(sku).expect("catalog has room");
        let shard = StockShard::shard_of(sku, self.shard_count()) as usize;
        let bumped =
            self.participants.shards.borrow_mut()[shard].set(sku, node, on_hand, safety_stock);
        self.participants.bumped.borrow_mut().extend(bumped);
        self.settle(now_ms);
        sku
    }

    pub fn stock_adjust(
        &mut self,
        sku: SkuId,
        node: NodeIdx,
        delta: i64,
        now_ms: u64,
    ) -> Result<(), StockError> {
        let shard = StockShard::shard_of(sku, self.shard_count()) as usize;
        let bumped = self.participants.shards.borrow_mut()[shard].adjust(sku, node, delta)?;
        self.participants.bumped.borrow_mut().extend(bumped);
        self.settle(now_ms);
        Ok(())
    }

    pub fn cell(&self, sku: SkuId, node: NodeIdx) -> Cell {
        let shard = StockShard::shard_of(sku, self.shard_count()) as usize;
        self.participants.shards.borrow()[shard].cell(sku, node)
    }

    pub fn check_invariants(&self) -> Result<(), InvariantError> {
        for shard in self.participants.shards.borrow().iter() {
            shard.check_invariants()?;
        }
        self.router.check_invariants()
    }
}
