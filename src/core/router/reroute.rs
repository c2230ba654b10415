//! Re-routing: units a node rejected, a node that went offline, and
//! reservations a stock count bumped, placed again elsewhere.

use rustc_hash::FxHashMap;
use smallvec::SmallVec;

use super::{announce, open_allocation, OpError, OrderRef, RouterCore};
use crate::core::events::EventKind;
use crate::core::geo::GeoPoint;
use crate::core::model::{NodeIdx, OrderId, ShortLine, SkuId};
use crate::core::ops::StockOp;
use crate::core::order::OrderRecord;
use crate::core::placement::{place, send_ops, Attempt, Participants, Placement};
use crate::core::policy::PlanLine;
use crate::core::stock::{Bumped, StockShard};

impl RouterCore {
    /// A node refused its allocation of an order. Its units there are
    /// released, the node's counts (if it reported any) become the cells'
    /// on_hand, and the units are routed again elsewhere. Reservations of
    /// other orders that the corrected counts bump come back as bumps.
    pub async fn node_reject<P: Participants>(
        &mut self,
        order: &OrderRef,
        node: NodeIdx,
        counts: &[(SkuId, u32)],
        now_ms: u64,
        participants: &P,
    ) -> Result<&OrderRecord, OpError> {
        let record = self.open_record(order)?;
        if !record
            .allocations
            .iter()
            .any(|a| a.node == node && a.open > 0)
        {
            return Err(OpError::NoSuchAllocation);
        }
        let id = record.id;
        let moved = self.take_back(id, node, EventKind::Rejected, participants);
        for &(sku, on_hand) in counts {
            let op = StockOp::Set {
                sku,
                node,
                on_hand,
                safety_stock: None,
            };
            participants.stock_ops(self.shard_of(sku), vec![op]);
        }
        self.place_again(id, moved, now_ms, participants).await;
        Ok(&self.orders[&id])
    }

    /// A node went offline: move the order's unshipped units there elsewhere.
    pub async fn node_offline<P: Participants>(
        &mut self,
        id: OrderId,
        node: NodeIdx,
        now_ms: u64,
        participants: &P,
    ) {
        let open = self.orders.get(&id).is_some_and(|r| {
            r.state.is_open() && r.allocations.iter().any(|a| a.node == node && a.open > 0)
        });
        if open {
            let moved = self.take_back(id, node, EventKind::Released, participants);
            self.place_again(id, moved, now_ms, participants).await;
        }
    }

    /// Reservations a shard took back (a stock count fell below reserved):
    /// the shard already freed the units; route them again.
    pub async fn bumped<P: Participants>(
        &mut self,
        bumps: &[Bumped],
        now_ms: u64,
        participants: &P,
    ) {
        for bump in bumps {
            let Some(record) = self.orders.get_mut(&bump.order) else {
                continue;
            };
            let mut moved: SmallVec<[PlanLine; 4]> = SmallVec::new();
            let mut left = bump.qty;
            for allocation in record
                .allocations
                .iter_mut()
                .filter(|a| a.node == bump.node && a.sku == bump.sku)
            {
                let part = allocation.open.min(left);
                allocation.open -= part;
                left -= part;
                if part > 0 {
                    moved.push(PlanLine {
                        line: allocation.line,
                        sku: allocation.sku,
                        qty: part,
                    });
                }
            }
            if !record
                .allocations
                .iter()
                .any(|a| a.node == bump.node && a.open > 0)
            {
                participants.node_ops(bump.node, vec![record.leave(bump.node)]);
            }
            let mut nodes = FxHashMap::default();
            let released = moved.iter().map(|m| (bump.node, m.line, m.sku, m.qty));
            announce(&mut nodes, EventKind::Released, record, released);
            send_ops(participants, FxHashMap::default(), nodes);
            if record.state.is_open() {
                self.place_again(bump.order, moved, now_ms, participants)
                    .await;
            }
        }
    }

    /// Frees the order's open units at `node` and excludes the node from
    /// now on; the node is told with an event of kind `told` (`Rejected`
    /// when it refused them). Returns the lines to place again.
    fn take_back<P: Participants>(
        &mut self,
        id: OrderId,
        node: NodeIdx,
        told: EventKind,
        participants: &P,
    ) -> SmallVec<[PlanLine; 4]> {
        let record = self.orders.get_mut(&id).expect("known order");
        let mut moved: SmallVec<[PlanLine; 4]> = SmallVec::new();
        let mut stock: FxHashMap<u32, Vec<StockOp>> = FxHashMap::default();
        for allocation in record
            .allocations
            .iter_mut()
            .filter(|a| a.node == node && a.open > 0)
        {
            let op = StockOp::Release {
                order: id,
                sku: allocation.sku,
                node,
                qty: allocation.open,
            };
            stock
                .entry(StockShard::shard_of(allocation.sku, self.shard_count))
                .or_default()
                .push(op);
            match moved.iter_mut().find(|m| m.line == allocation.line) {
                Some(line) => line.qty += allocation.open,
                None => moved.push(PlanLine {
                    line: allocation.line,
                    sku: allocation.sku,
                    qty: allocation.open,
                }),
            }
            allocation.open = 0;
        }
        if !record.excluded().contains(&node) {
            record.extra_mut().excluded.push(node);
        }
        let node_op = record.leave(node);
        let mut nodes = FxHashMap::default();
        let released = moved.iter().map(|m| (node, m.line, m.sku, m.qty));
        announce(&mut nodes, told, record, released);
        nodes.entry(node).or_default().push(node_op);
        send_ops(participants, stock, nodes);
        moved
    }

    /// Routes `lines` of an open order again, avoiding its excluded nodes,
    /// and merges the result into the record.
    async fn place_again<P: Participants>(
        &mut self,
        id: OrderId,
        lines: SmallVec<[PlanLine; 4]>,
        now_ms: u64,
        participants: &P,
    ) {
        if lines.is_empty() {
            return;
        }
        let record = &self.orders[&id];
        let attempt = Attempt {
            order: id,
            lines: lines.clone(),
            ship_to: GeoPoint::new(record.ship_to.0, record.ship_to.1)
                .expect("validated at submit"),
            market: record.market,
            method: record.method,
            channel: record.channel,
            excluded: record.excluded().into(),
        };
        let placement = place(
            &self.context(),
            std::slice::from_ref(&attempt),
            now_ms,
            participants,
        )
        .await
        .remove(0);
        let record = self.orders.get_mut(&id).expect("known order");
        let (allocations, short) = match placement {
            Placement::Placed { allocations, short } => (allocations, short),
            Placement::Failed(_) => {
                let short = lines
                    .iter()
                    .map(|l| ShortLine {
                        line: l.line,
                        sku: l.sku,
                        requested: l.qty,
                        available: 0,
                    })
                    .collect();
                (Vec::new(), short)
            }
        };
        let mut events = FxHashMap::default();
        let units = allocations.iter().map(|a| (a.node, a.line, a.sku, a.qty));
        announce(&mut events, EventKind::Allocated, record, units);
        send_ops(participants, FxHashMap::default(), events);
        for allocation in allocations {
            match record
                .allocations
                .iter_mut()
                .find(|a| a.line == allocation.line && a.node == allocation.node)
            {
                Some(existing) => existing.open += allocation.qty,
                None => record.allocations.push(open_allocation(allocation)),
            }
        }
        for line in short {
            let extra = record.extra_mut();
            extra.short.retain(|s| s.line != line.line);
            extra.short.push(line);
        }
    }
}
