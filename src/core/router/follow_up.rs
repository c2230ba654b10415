//! After the decision: confirm, cancel, hold expiry, retirement, shipment
//! and return.

use std::cmp::Reverse;

use rustc_hash::FxHashMap;
use smallvec::SmallVec;

use super::{announce, check_quantity, nodes_of, OpError, OrderRef, RouterCore};
use crate::core::book::key_fingerprint;
use crate::core::events::EventKind;
use crate::core::model::{NodeIdx, OrderId, OrderState, SkuId};
use crate::core::ops::{NodeOp, StockOp};
use crate::core::order::OrderRecord;
use crate::core::placement::{send_ops, Participants};
use crate::core::stock::StockShard;

impl RouterCore {
    pub(super) fn open_record(&mut self, order: &OrderRef) -> Result<&mut OrderRecord, OpError> {
        let id = self.lookup(order)?;
        let record = self.orders.get_mut(&id).expect("looked up");
        if !record.state.is_open() {
            return Err(OpError::NotOpen(record.state));
        }
        Ok(record)
    }

    /// The customer paid: the hold becomes firm and no longer expires.
    /// Confirming a confirmed order changes (and rewrites) nothing.
    pub fn confirm(&mut self, order: &OrderRef) -> Result<&OrderRecord, OpError> {
        let id = self.lookup(order)?;
        if self.orders[&id].state == OrderState::Confirmed {
            return Ok(&self.orders[&id]);
        }
        let record = self.open_record(order)?;
        record.state = OrderState::Confirmed;
        Ok(record)
    }

    /// Releases every open unit of the order and closes it as `state`.
    fn close<P: Participants>(&mut self, id: OrderId, state: OrderState, participants: &P) {
        self.closed.push(id);
        let record = self.orders.get_mut(&id).expect("closing a known order");
        record.state = state;
        let mut stock: FxHashMap<u32, Vec<StockOp>> = FxHashMap::default();
        let mut nodes: FxHashMap<NodeIdx, Vec<NodeOp>> = FxHashMap::default();
        let released = record
            .allocations
            .iter()
            .filter(|a| a.open > 0)
            .map(|a| (a.node, a.line, a.sku, a.open));
        announce(
            &mut nodes,
            EventKind::Released,
            record,
            released.collect::<SmallVec<[_; 4]>>(),
        );
        for allocation in &mut record.allocations {
            if allocation.open > 0 {
                let op = StockOp::Release {
                    order: id,
                    sku: allocation.sku,
                    node: allocation.node,
                    qty: allocation.open,
                };
                stock
                    .entry(StockShard::shard_of(allocation.sku, self.shard_count))
                    .or_default()
                    .push(op);
                allocation.open = 0;
            }
        }
        for node in nodes_of(&record.allocations) {
            nodes.entry(node).or_default().push(record.leave(node));
        }
        send_ops(participants, stock, nodes);
    }

    pub fn cancel<P: Participants>(
        &mut self,
        order: &OrderRef,
        participants: &P,
    ) -> Result<&OrderRecord, OpError> {
        let id = self.open_record(order)?.id;
        self.close(id, OrderState::Cancelled, participants);
        Ok(&self.orders[&id])
    }

    /// Releases unconfirmed holds whose time has come, at most `limit`
    /// orders (a caller journals each run as one record of bounded size).
    /// Returns how many orders expired: fewer than `limit` when none is
    /// left due.
    pub fn expire_due<P: Participants>(
        &mut self,
        now_ms: u64,
        limit: usize,
        participants: &P,
    ) -> usize {
        let mut expired = 0;
        while let Some(&Reverse((at, id))) = self.expiries.peek() {
            if at > now_ms || expired >= limit {
                break;
            }
            self.expiries.pop();
            let due = self
                .orders
                .get(&id)
                .is_some_and(|r| r.state == OrderState::Held && r.expires_at_ms == at);
            if due {
                self.close(id, OrderState::Expired, participants);
                expired += 1;
            }
        }
        expired
    }

    /// Gives the orders closed since the last call their time to retire
    /// (`retention_ms` from now), and, when `may_remove` (no snapshot is
    /// walking the books, whose places a removal moves), retires those
    /// whose time has come. Returns how many retired.
    pub fn retire_due(&mut self, now_ms: u64, may_remove: bool) -> usize {
        let at = now_ms.saturating_add(self.retention_ms);
        self.retiring
            .extend(self.closed.drain(..).map(|id| (at, id)));
        if !may_remove {
            return 0;
        }
        let mut retired = 0;
        let mut kept_newest: SmallVec<[OrderId; 4]> = SmallVec::new();
        while let Some(&(due, id)) = self.retiring.front() {
            if due > now_ms {
                break;
            }
            self.retiring.pop_front();
            let closed = self.orders.get(&id).is_some_and(|r| !r.state.is_open());
            if !closed {
                continue;
            }
            match self.orders.retire(id) {
                Some(record) => {
                    let fingerprint = key_fingerprint(record.channel, &record.client_order_id);
                    self.archived.add(fingerprint);
                    retired += 1;
                }
                None => kept_newest.push(id),
            }
        }
        // Its partition's newest order stays until a newer one comes.
        self.retiring
            .extend(kept_newest.into_iter().map(|id| (at, id)));
        retired
    }

    /// A node shipped units of an order: they leave on_hand and the
    /// reservation. Partial shipments are allowed.
    pub fn ship<P: Participants>(
        &mut self,
        order: &OrderRef,
        node: NodeIdx,
        sku: SkuId,
        qty: u32,
        participants: &P,
    ) -> Result<&OrderRecord, OpError> {
        check_quantity(qty)?;
        let record = self.open_record(order)?;
        if record.state != OrderState::Confirmed {
            return Err(OpError::NotConfirmed);
        }
        let id = record.id;
        let open: u32 = record
            .allocations
            .iter()
            .filter(|a| a.node == node && a.sku == sku)
            .map(|a| a.open)
            .sum();
        if open == 0 {
            return Err(OpError::NoSuchAllocation);
        }
        if qty > open {
            return Err(OpError::ExceedsOpen {
                requested: qty,
                limit: open,
            });
        }
        participants.stock_ops(
            self.shard_of(sku),
            vec![StockOp::Ship {
                order: id,
                sku,
                node,
                qty,
            }],
        );
        let record = self.orders.get_mut(&id).expect("known order");
        let mut left = qty;
        for allocation in record
            .allocations
            .iter_mut()
            .filter(|a| a.node == node && a.sku == sku)
        {
            let part = allocation.open.min(left);
            allocation.open -= part;
            allocation.shipped += part;
            left -= part;
        }
        let node_done = !record
            .allocations
            .iter()
            .any(|a| a.node == node && a.open > 0);
        if node_done {
            participants.node_ops(node, vec![NodeOp::Finish(id)]);
        }
        let all_done = record.allocations.iter().all(|a| a.open == 0) && record.short().is_empty();
        if all_done {
            record.state = OrderState::Shipped;
            self.closed.push(id);
        }
        Ok(&self.orders[&id])
    }

    /// A customer returned shipped units at `node`: they go back on its shelf.
    pub fn return_units<P: Participants>(
        &mut self,
        order: &OrderRef,
        node: NodeIdx,
        sku: SkuId,
        qty: u32,
        participants: &P,
    ) -> Result<&OrderRecord, OpError> {
        check_quantity(qty)?;
        if node as usize >= self.network.nodes.len() {
            return Err(OpError::UnknownNode);
        }
        let id = self.lookup(order)?;
        let record = self.orders.get_mut(&id).expect("looked up");
        let returnable: u32 = record
            .allocations
            .iter()
            .filter(|a| a.sku == sku)
            .map(|a| a.shipped - a.returned)
            .sum();
        if qty > returnable {
            return Err(OpError::ExceedsShipped {
                requested: qty,
                limit: returnable,
            });
        }
        let mut left = qty;
        for allocation in record.allocations.iter_mut().filter(|a| a.sku == sku) {
            let part = (allocation.shipped - allocation.returned).min(left);
            allocation.returned += part;
            left -= part;
        }
        participants.stock_ops(
            self.shard_of(sku),
            vec![StockOp::Restock { sku, node, qty }],
        );
        Ok(&self.orders[&id])
    }
}
