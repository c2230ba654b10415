//! The actors: thin shells that own one piece of core state each and apply
//! messages to it one at a time. All logic lives in `core`.

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::mpsc;

use crate::core::events::{CursorOutOfRange, NodeEvent};

use crate::core::capacity::{CapacityOutcome, NodeLedger};
use crate::core::local::{apply_node_op, apply_stock_op};
use crate::core::model::{Decision, NodeIdx, OrderId, OrderRequest, SkuId};
use crate::core::placement::{NodeOp, Participants, StockOp};
use crate::core::router::{OpError, OrderRecord, OrderRef, RouterCore};
use crate::core::stock::{Bumped, Cell, HoldItem, HoldOutcome, StockError, StockShard};

/// One entry of a bulk stock update: set (absolute) or adjust (relative).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StockChange {
    Set {
        sku: SkuId,
        node: NodeIdx,
        on_hand: u32,
        safety_stock: Option<u32>,
    },
    Adjust {
        sku: SkuId,
        node: NodeIdx,
        delta: i64,
    },
}

pub enum ShardMsg {
    Hold(Vec<HoldItem>, RpcReplyPort<Vec<HoldOutcome>>),
    Ops(Vec<StockOp>),
    Ship {
        order: OrderId,
        sku: SkuId,
        node: NodeIdx,
        qty: u32,
        reply: RpcReplyPort<Result<(), StockError>>,
    },
    Update(
        Vec<StockChange>,
        RpcReplyPort<(Vec<Bumped>, Vec<StockError>)>,
    ),
    Cell(SkuId, NodeIdx, RpcReplyPort<Cell>),
    Check(RpcReplyPort<Result<(), String>>),
}

pub struct ShardActor;

impl Actor for ShardActor {
    type Msg = ShardMsg;
    type State = StockShard;
    type Arguments = StockShard;

    async fn pre_start(
        &self,
        _: ActorRef<ShardMsg>,
        shard: StockShard,
    ) -> Result<StockShard, ActorProcessingErr> {
        Ok(shard)
    }

    async fn handle(
        &self,
        _: ActorRef<ShardMsg>,
        message: ShardMsg,
        shard: &mut StockShard,
    ) -> Result<(), ActorProcessingErr> {
        // A reply port whose caller went away is not an error of the shard.
        match message {
            ShardMsg::Hold(items, reply) => {
                let _ = reply.send(shard.hold(&items));
            }
            ShardMsg::Ops(ops) => ops.into_iter().for_each(|op| apply_stock_op(shard, op)),
            ShardMsg::Ship {
                order,
                sku,
                node,
                qty,
                reply,
            } => {
                let _ = reply.send(shard.ship(order, sku, node, qty));
            }
            ShardMsg::Update(changes, reply) => {
                let mut bumped = Vec::new();
                let mut errors = Vec::new();
                for change in changes {
                    match change {
                        StockChange::Set {
                            sku,
                            node,
                            on_hand,
                            safety_stock,
                        } => bumped.extend(shard.set(sku, node, on_hand, safety_stock)),
                        StockChange::Adjust { sku, node, delta } => {
                            match shard.adjust(sku, node, delta) {
                                Ok(b) => bumped.extend(b),
                                Err(e) => errors.push(e),
                            }
                        }
                    }
                }
                let _ = reply.send((bumped, errors));
            }
            ShardMsg::Cell(sku, node, reply) => {
                let _ = reply.send(shard.cell(sku, node));
            }
            ShardMsg::Check(reply) => {
                let _ = reply.send(shard.check_invariants());
            }
        }
        Ok(())
    }
}

/// Events from a cursor, and the live rest of them.
pub type Subscription = (
    Vec<(u64, Arc<NodeEvent>)>,
    mpsc::Receiver<(u64, Arc<NodeEvent>)>,
);

/// Events queued for one subscriber before it counts as too slow and is
/// dropped (it resumes from its last cursor).
pub const SUBSCRIBER_QUEUE_EVENTS: usize = 65_536;

pub enum NodeMsg {
    Hold(Vec<OrderId>, u64, RpcReplyPort<Vec<CapacityOutcome>>),
    Subscribe(u64, RpcReplyPort<Result<Subscription, CursorOutOfRange>>),
    Ops(Vec<NodeOp>),
    SetOnline(bool, RpcReplyPort<Vec<OrderId>>),
    /// (online, used today, open orders)
    Stats(RpcReplyPort<(bool, u32, usize)>),
}

pub struct NodeActor;

/// A node's ledger and the live subscribers to its events.
pub struct NodeState {
    ledger: NodeLedger,
    subscribers: Vec<mpsc::Sender<(u64, Arc<NodeEvent>)>>,
}

impl Actor for NodeActor {
    type Msg = NodeMsg;
    type State = NodeState;
    type Arguments = NodeLedger;

    async fn pre_start(
        &self,
        _: ActorRef<NodeMsg>,
        ledger: NodeLedger,
    ) -> Result<NodeState, ActorProcessingErr> {
        Ok(NodeState {
            ledger,
            subscribers: Vec::new(),
        })
    }

    async fn handle(
        &self,
        _: ActorRef<NodeMsg>,
        message: NodeMsg,
        state: &mut NodeState,
    ) -> Result<(), ActorProcessingErr> {
        let NodeState {
            ledger,
            subscribers,
        } = state;
        match message {
            NodeMsg::Hold(orders, now_ms, reply) => {
                let _ = reply.send(orders.into_iter().map(|o| ledger.hold(o, now_ms)).collect());
            }
            NodeMsg::Ops(ops) => {
                for op in ops {
                    if let Some(event) = apply_node_op(ledger, op) {
                        // A full queue means a subscriber that cannot keep up:
                        // drop it rather than let it hold the node back.
                        subscribers.retain(|s| s.try_send(event.clone()).is_ok());
                    }
                }
            }
            NodeMsg::Subscribe(cursor, reply) => {
                let answer = ledger.events_since(cursor).map(|backlog| {
                    let (sender, receiver) = mpsc::channel(SUBSCRIBER_QUEUE_EVENTS);
                    subscribers.push(sender);
                    (backlog, receiver)
                });
                let _ = reply.send(answer);
            }
            NodeMsg::SetOnline(online, reply) => {
                let _ = reply.send(ledger.set_online(online));
            }
            NodeMsg::Stats(reply) => {
                let _ = reply.send((
                    ledger.is_online(),
                    ledger.used_today(),
                    ledger.open_orders(),
                ));
            }
        }
        Ok(())
    }
}

/// The shards and nodes as a router reaches them: by message.
#[derive(Clone)]
pub struct ActorParticipants {
    pub shards: Arc<[ActorRef<ShardMsg>]>,
    pub nodes: Arc<[ActorRef<NodeMsg>]>,
}

/// A shard or node actor only stops when the engine shuts down or a core
/// invariant failed (an `assert!` panicked inside it); either way nothing
/// sensible can continue, so the router stops too.
fn answered<T>(result: Result<ractor::rpc::CallResult<T>, impl std::fmt::Debug>, who: &str) -> T {
    match result {
        Ok(ractor::rpc::CallResult::Success(value)) => value,
        other => panic!("{who} did not answer: {:?}", other.err()),
    }
}

impl Participants for ActorParticipants {
    async fn hold_stock(&self, shard: u32, items: Vec<HoldItem>) -> Vec<HoldOutcome> {
        answered(
            self.shards[shard as usize]
                .call(|reply| ShardMsg::Hold(items, reply), None)
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
        answered(
            self.nodes[node as usize]
                .call(|reply| NodeMsg::Hold(orders, now_ms, reply), None)
                .await,
            "node",
        )
    }

    async fn ship(
        &self,
        shard: u32,
        order: OrderId,
        sku: SkuId,
        node: NodeIdx,
        qty: u32,
    ) -> Result<(), StockError> {
        answered(
            self.shards[shard as usize]
                .call(
                    |reply| ShardMsg::Ship {
                        order,
                        sku,
                        node,
                        qty,
                        reply,
                    },
                    None,
                )
                .await,
            "shard",
        )
    }

    async fn correct_stock(
        &self,
        shard: u32,
        sku: SkuId,
        node: NodeIdx,
        on_hand: u32,
    ) -> Vec<Bumped> {
        let change = vec![StockChange::Set {
            sku,
            node,
            on_hand,
            safety_stock: None,
        }];
        answered(
            self.shards[shard as usize]
                .call(|reply| ShardMsg::Update(change, reply), None)
                .await,
            "shard",
        )
        .0
    }

    fn stock_ops(&self, shard: u32, ops: Vec<StockOp>) {
        self.shards[shard as usize]
            .cast(ShardMsg::Ops(ops))
            .expect("shard actor is running");
    }

    fn node_ops(&self, node: NodeIdx, ops: Vec<NodeOp>) {
        self.nodes[node as usize]
            .cast(NodeMsg::Ops(ops))
            .expect("node actor is running");
    }
}

type Reply<T> = RpcReplyPort<Result<T, OpError>>;

pub enum RouterMsg {
    Submit(Vec<OrderRequest>, u64, RpcReplyPort<Vec<Decision>>),
    Get(OrderRef, RpcReplyPort<Option<OrderRecord>>),
    Confirm(OrderRef, Reply<OrderRecord>),
    Cancel(OrderRef, Reply<OrderRecord>),
    Ship {
        order: OrderRef,
        node: NodeIdx,
        sku: SkuId,
        qty: u32,
        reply: Reply<OrderRecord>,
    },
    Return {
        order: OrderRef,
        node: NodeIdx,
        sku: SkuId,
        qty: u32,
        reply: Reply<OrderRecord>,
    },
    Reject {
        order: OrderRef,
        node: NodeIdx,
        counts: Vec<(SkuId, u32)>,
        now_ms: u64,
        reply: Reply<(OrderRecord, Vec<Bumped>)>,
    },
    NodeOffline {
        orders: Vec<OrderId>,
        node: NodeIdx,
        now_ms: u64,
        reply: RpcReplyPort<()>,
    },
    Bumped(Vec<Bumped>, u64, RpcReplyPort<()>),
    Expire(u64, RpcReplyPort<usize>),
    Check(RpcReplyPort<Result<(), String>>),
}

pub struct RouterActor;

pub struct RouterState {
    pub core: RouterCore,
    pub participants: ActorParticipants,
}

impl Actor for RouterActor {
    type Msg = RouterMsg;
    type State = RouterState;
    type Arguments = RouterState;

    async fn pre_start(
        &self,
        _: ActorRef<RouterMsg>,
        state: RouterState,
    ) -> Result<RouterState, ActorProcessingErr> {
        Ok(state)
    }

    async fn handle(
        &self,
        _: ActorRef<RouterMsg>,
        message: RouterMsg,
        state: &mut RouterState,
    ) -> Result<(), ActorProcessingErr> {
        let RouterState { core, participants } = state;
        let p = &*participants;
        match message {
            RouterMsg::Submit(orders, now_ms, reply) => {
                let _ = reply.send(core.submit(&orders, now_ms, p).await);
            }
            RouterMsg::Get(order, reply) => {
                let _ = reply.send(core.get(&order).cloned());
            }
            RouterMsg::Confirm(order, reply) => {
                let _ = reply.send(core.confirm(&order).cloned());
            }
            RouterMsg::Cancel(order, reply) => {
                let _ = reply.send(core.cancel(&order, p).cloned());
            }
            RouterMsg::Ship {
                order,
                node,
                sku,
                qty,
                reply,
            } => {
                let _ = reply.send(core.ship(&order, node, sku, qty, p).await.cloned());
            }
            RouterMsg::Return {
                order,
                node,
                sku,
                qty,
                reply,
            } => {
                let _ = reply.send(core.return_units(&order, node, sku, qty, p).cloned());
            }
            RouterMsg::Reject {
                order,
                node,
                counts,
                now_ms,
                reply,
            } => {
                let result = core.node_reject(&order, node, &counts, now_ms, p).await;
                let _ = reply.send(result.map(|(record, bumped)| (record.clone(), bumped)));
            }
            RouterMsg::NodeOffline {
                orders,
                node,
                now_ms,
                reply,
            } => {
                for order in orders {
                    core.node_offline(order, node, now_ms, p).await;
                }
                let _ = reply.send(());
            }
            RouterMsg::Bumped(bumps, now_ms, reply) => {
                core.bumped(&bumps, now_ms, p).await;
                let _ = reply.send(());
            }
            RouterMsg::Expire(now_ms, reply) => {
                let _ = reply.send(core.expire_due(now_ms, p));
            }
            RouterMsg::Check(reply) => {
                let _ = reply.send(core.check_invariants());
            }
        }
        Ok(())
    }
}
