//! How a router's placement reaches the actors: holds and aborts as calls
//! and fire-and-forget ops, or, journaled, as ops gathered into the
//! record its step commits.

use std::sync::{Arc, Mutex};

use smallvec::SmallVec;

use super::feed::FeedMsg;
use super::mailbox::Mailbox;
use super::node::NodeMsg;
use super::shard::ShardMsg;
use crate::core::capacity::CapacityOutcome;
use crate::core::model::{NodeIdx, OrderId};
use crate::core::ops::{NodeOp, StockOp};
use crate::core::placement::Participants;
use crate::core::status::OrderStatus;
use crate::core::stock::{HoldItem, HoldOutcome};

/// The shards and nodes as a router reaches them: by message; and the
/// feed its journaled changes tell the channels through.
#[derive(Clone)]
pub struct ActorParticipants {
    pub shards: Arc<[Mailbox<ShardMsg>]>,
    pub nodes: Arc<[Mailbox<NodeMsg>]>,
    pub feed: Mailbox<FeedMsg>,
}

/// A shard or node actor only stops when the engine shuts down or a core
/// invariant failed (an `assert!` panicked inside it); either way nothing
/// sensible can continue, so the router stops too.
pub(super) fn expect_answer<T>(
    result: Result<ractor::rpc::CallResult<T>, impl std::fmt::Debug>,
    who: &str,
) -> T {
    match result {
        Ok(ractor::rpc::CallResult::Success(value)) => value,
        other => panic!("{who} did not answer: {:?}", other.err()),
    }
}

impl ActorParticipants {
    /// Sends journaled ops to their actors, one message per actor, keeping
    /// their order. Called in LSN order, so every actor applies in LSN order.
    pub fn dispatch(&self, stock: Vec<(u32, StockOp)>, nodes: Vec<(NodeIdx, NodeOp)>) {
        let mut by_shard: SmallVec<[(u32, Vec<StockOp>); 4]> = SmallVec::new();
        for (shard, op) in stock {
            match by_shard.iter_mut().find(|(s, _)| *s == shard) {
                Some((_, ops)) => ops.push(op),
                None => by_shard.push((shard, vec![op])),
            }
        }
        for (shard, ops) in by_shard {
            // A stopped actor means the engine is shutting down.
            let _ = self.shards[shard as usize].cast(ShardMsg::Apply { ops, reply: None });
        }
        let mut by_node: SmallVec<[(NodeIdx, Vec<NodeOp>); 4]> = SmallVec::new();
        for (node, op) in nodes {
            match by_node.iter_mut().find(|(n, _)| *n == node) {
                Some((_, ops)) => ops.push(op),
                None => by_node.push((node, vec![op])),
            }
        }
        for (node, ops) in by_node {
            let _ = self.nodes[node as usize].cast(NodeMsg::Ops { ops, reply: None });
        }
    }

    /// Hands the statuses of a journaled change to the feed. Called in
    /// LSN order, like [`ActorParticipants::dispatch`].
    pub fn tell_channels(&self, statuses: Vec<OrderStatus>) {
        if !statuses.is_empty() {
            let _ = self.feed.cast(FeedMsg::Statuses(statuses));
        }
    }
}

/// Ops kept for a journal record: (shard, op) and (node, op).
pub(super) type Effects = (Vec<(u32, StockOp)>, Vec<(NodeIdx, NodeOp)>);

/// What a router's placement and lifecycle code sees: holds go to the
/// actors at once; every other op is kept for the router's next [`Txn`].
pub struct JournaledParticipants {
    pub actors: ActorParticipants,
    pub(super) stock: Mutex<Vec<(u32, StockOp)>>,
    pub(super) nodes: Mutex<Vec<(NodeIdx, NodeOp)>>,
}

impl JournaledParticipants {
    pub fn new(actors: ActorParticipants) -> JournaledParticipants {
        JournaledParticipants {
            actors,
            stock: Mutex::new(Vec::new()),
            nodes: Mutex::new(Vec::new()),
        }
    }

    pub(super) fn take(&self) -> Effects {
        (
            std::mem::take(&mut *self.stock.lock().expect("ops lock")),
            std::mem::take(&mut *self.nodes.lock().expect("ops lock")),
        )
    }
}

impl Participants for JournaledParticipants {
    async fn hold_stock(&self, shard: u32, items: Vec<HoldItem>) -> Vec<HoldOutcome> {
        expect_answer(
            self.actors.shards[shard as usize]
                .call(|reply| ShardMsg::Hold { items, reply }, None)
                .await,
            "shard",
        )
    }

    async fn hold_capacity(
        &self,
        node: NodeIdx,
        orders: Vec<OrderId>,
        now_ms: u64,
    ) -> Vec<CapacityOutcome> {
        expect_answer(
            self.actors.nodes[node as usize]
                .call(
                    |reply| NodeMsg::Hold {
                        orders,
                        now_ms,
                        reply,
                    },
                    None,
                )
                .await,
            "node",
        )
    }

    fn stock_ops(&self, shard: u32, ops: Vec<StockOp>) {
        let (aborts, journaled): (Vec<StockOp>, Vec<StockOp>) = ops
            .into_iter()
            .partition(|op| matches!(op, StockOp::Abort(_)));
        if !aborts.is_empty() {
            self.actors.shards[shard as usize]
                .cast(ShardMsg::Abort(aborts))
                .expect("shard actor is running");
        }
        self.stock
            .lock()
            .expect("ops lock")
            .extend(journaled.into_iter().map(|op| (shard, op)));
    }

    fn node_ops(&self, node: NodeIdx, ops: Vec<NodeOp>) {
        self.nodes
            .lock()
            .expect("ops lock")
            .extend(ops.into_iter().map(|op| (node, op)));
    }
}
