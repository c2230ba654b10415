//! The node actor: the single writer of a node's ledger (capacity, online,
//! allocation events) and the live subscribers of its events.

use std::sync::atomic::AtomicI64;
use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::{mpsc, oneshot};

use super::images::{ImagePace, ImageSink, Imaged, Imaging};
use super::mailbox::{count_taken, Mailbox};
use crate::core::capacity::{CapacityOutcome, NodeLedger};
use crate::core::events::{CursorOutOfRange, NodeEvent};
use crate::core::model::OrderId;
use crate::core::ops::{apply_node_op, NodeEffect, NodeOp};

/// A node's events (or a channel's statuses) from a cursor: those logged
/// so far, and the live rest.
pub struct Subscription<E = NodeEvent> {
    /// (cursor, event) from the cursor asked for up to now.
    pub backlog: Vec<(u64, Arc<E>)>,
    /// Every event after the backlog, as it happens.
    pub live: mpsc::Receiver<(u64, Arc<E>)>,
}

/// Events queued for one subscriber (of a node or a channel) before it
/// counts as too slow and is dropped (it resumes from its last cursor).
pub const SUBSCRIBER_QUEUE_EVENTS: usize = 65_536;

/// A node's counters, as `Engine::node_stats` answers them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeStats {
    pub online: bool,
    /// Allocations taken from today's capacity.
    pub used_today: u32,
    /// Orders it serves that are still open.
    pub open_orders: usize,
}

pub enum NodeMsg {
    Hold {
        orders: Vec<OrderId>,
        now_ms: u64,
        reply: RpcReplyPort<Vec<CapacityOutcome>>,
    },
    Subscribe {
        from_cursor: u64,
        reply: RpcReplyPort<Result<Subscription, CursorOutOfRange>>,
    },
    /// Journaled ops, in LSN order; the reply gets the orders a switch to
    /// offline leaves to re-route.
    Ops {
        ops: Vec<NodeOp>,
        reply: Option<oneshot::Sender<Vec<OrderId>>>,
    },
    Stats(RpcReplyPort<NodeStats>),
    Snapshot {
        lsn: u64,
        sink: ImageSink,
        pace: ImagePace,
    },
    /// The next step of the image under way: sent to itself, behind the
    /// messages that came meanwhile.
    ImageStep,
    /// A node added to the running daemon takes this spare ledger: its
    /// daily capacity (the config's, not journaled, as at every start).
    Configure {
        daily_capacity: u32,
        reply: RpcReplyPort<()>,
    },
}

pub struct NodeActor;

/// A node's ledger and the live subscribers to its events.
pub struct NodeState {
    ledger: NodeLedger,
    subscribers: Vec<mpsc::Sender<(u64, Arc<NodeEvent>)>>,
    depth: Arc<AtomicI64>,
    /// Where the image under way goes once taken.
    imaging: Option<Imaging>,
}

impl NodeState {
    /// Images the ledger's orders for one turn's budget (to the end once a
    /// stop hurries the snapshot); sends the image when it is whole, else
    /// asks for the next turn.
    fn image_step(&mut self, myself: &ActorRef<NodeMsg>) {
        let ledger = &mut self.ledger;
        if Imaging::turn(&mut self.imaging, |n| {
            ledger.image_step(n).map(Imaged::Node)
        }) {
            let _ = Mailbox::new(myself.clone(), self.depth.clone()).cast(NodeMsg::ImageStep);
        }
    }

    /// Takes the image under way to its end at once.
    fn finish_image(&mut self) {
        let ledger = &mut self.ledger;
        Imaging::finish(&mut self.imaging, |n| {
            ledger.image_step(n).map(Imaged::Node)
        });
    }
}

impl Actor for NodeActor {
    type Msg = NodeMsg;
    type State = NodeState;
    /// The ledger, and its mailbox's depth counter.
    type Arguments = (NodeLedger, Arc<AtomicI64>);

    async fn pre_start(
        &self,
        _: ActorRef<NodeMsg>,
        (ledger, depth): (NodeLedger, Arc<AtomicI64>),
    ) -> Result<NodeState, ActorProcessingErr> {
        Ok(NodeState {
            ledger,
            subscribers: Vec::new(),
            depth,
            imaging: None,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<NodeMsg>,
        message: NodeMsg,
        state: &mut NodeState,
    ) -> Result<(), ActorProcessingErr> {
        count_taken(&state.depth);
        match message {
            NodeMsg::Snapshot { lsn, sink, pace } => {
                // A marker reaches each node once, after the last one's:
                // an image still under way was that one's, taken whole now.
                state.finish_image();
                state.ledger.begin_image();
                state.imaging = Some(Imaging { lsn, sink, pace });
                state.image_step(&myself);
                return Ok(());
            }
            NodeMsg::ImageStep => {
                state.image_step(&myself);
                // Back to the scheduler between steps, as the shards do.
                tokio::task::yield_now().await;
                return Ok(());
            }
            _ => {}
        }
        let NodeState {
            ledger,
            subscribers,
            ..
        } = state;
        match message {
            NodeMsg::Hold {
                orders,
                now_ms,
                reply,
            } => {
                let _ = reply.send(orders.into_iter().map(|o| ledger.hold(o, now_ms)).collect());
            }
            NodeMsg::Ops { ops, reply } => {
                // Fault injection (FAILPOINTS="node-ops=panic"): how the
                // tests make an actor fail. Off, it is one map lookup per
                // batch of a node's ops.
                fail::fail_point!("node-ops");
                let mut offline = Vec::new();
                for op in ops {
                    match apply_node_op(ledger, op) {
                        NodeEffect::Event(cursor, event) => {
                            // A full queue means a subscriber that cannot keep
                            // up: drop it rather than let it hold the node back.
                            subscribers.retain(|s| s.try_send((cursor, event.clone())).is_ok());
                        }
                        NodeEffect::Offline(orders) => offline = orders,
                        NodeEffect::None => {}
                    }
                }
                if let Some(reply) = reply {
                    let _ = reply.send(offline);
                }
            }
            NodeMsg::Subscribe {
                from_cursor: cursor,
                reply,
            } => {
                let answer = ledger.events_since(cursor).map(|backlog| {
                    let (sender, receiver) = mpsc::channel(SUBSCRIBER_QUEUE_EVENTS);
                    subscribers.push(sender);
                    Subscription {
                        backlog,
                        live: receiver,
                    }
                });
                let _ = reply.send(answer);
            }
            NodeMsg::Snapshot { .. } | NodeMsg::ImageStep => {}
            NodeMsg::Configure {
                daily_capacity,
                reply,
            } => {
                ledger.set_daily_capacity(daily_capacity);
                let _ = reply.send(());
            }
            NodeMsg::Stats(reply) => {
                let _ = reply.send(NodeStats {
                    online: ledger.is_online(),
                    used_today: ledger.used_today(),
                    open_orders: ledger.open_orders(),
                });
            }
        }
        Ok(())
    }
}
