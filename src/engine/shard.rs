//! The shard actor: the single writer of every cell of its SKUs. It holds,
//! applies journaled ops in LSN order, and images itself at a marker.

use std::sync::atomic::AtomicI64;
use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::{mpsc, oneshot};

use super::images::{ImagePace, ImageSink, Imaged, Imaging};
use super::mailbox::{count_taken, Mailbox};
use crate::core::error::InvariantError;
use crate::core::model::{NodeIdx, SkuId};
use crate::core::ops::{apply_stock_op, StockOp};
use crate::core::stock::{
    Bumped, Cell, HoldItem, HoldOutcome, ImageMemory, StockError, StockShard,
};

/// What a shard answers for ops applied with a reply: the reservations
/// they bumped and the ops that could not apply.
pub struct Applied {
    pub bumped: Vec<Bumped>,
    pub errors: Vec<StockError>,
}

pub enum ShardMsg {
    Hold {
        items: Vec<HoldItem>,
        reply: RpcReplyPort<Vec<HoldOutcome>>,
    },
    /// Holds of failed attempts to give back: not journaled, sent directly.
    Abort(Vec<StockOp>),
    /// Journaled ops, in LSN order. Without a reply port, bumps go to the
    /// routers through the engine's bump channel.
    Apply {
        ops: Vec<StockOp>,
        reply: Option<oneshot::Sender<Applied>>,
    },
    Cell {
        sku: SkuId,
        node: NodeIdx,
        reply: RpcReplyPort<Cell>,
    },
    Check(RpcReplyPort<Result<(), InvariantError>>),
    /// Every op up to this LSN is applied and none after: image the shard
    /// (into memory the snapshot touched beforehand), a step per turn.
    Snapshot {
        lsn: u64,
        sink: ImageSink,
        memory: ImageMemory,
        pace: ImagePace,
    },
    /// The next step of the image under way: sent to itself, behind the
    /// messages that came meanwhile.
    ImageStep,
    /// Nodes were added: rows take a cell for each of this many nodes.
    Widen {
        node_count: usize,
        reply: RpcReplyPort<()>,
    },
}

pub struct ShardActor;

pub struct ShardState {
    pub shard: StockShard,
    /// Bounded: a full queue holds the shard back until the forwarder
    /// (which only casts to routers, never waits on a shard) catches up.
    pub bumps: mpsc::Sender<Vec<Bumped>>,
    pub depth: Arc<AtomicI64>,
    /// Where the image under way goes once taken.
    pub imaging: Option<Imaging>,
}

impl ShardState {
    /// Images for one turn's budget (or to the end, once a stop hurries
    /// the snapshot); sends the image when it is whole, else asks for the
    /// next turn.
    fn image_step(&mut self, myself: &ActorRef<ShardMsg>) {
        let shard = &mut self.shard;
        let id = shard.shard_id();
        if Imaging::turn(&mut self.imaging, |n| {
            shard.image_step(n).map(|image| Imaged::Shard(id, image))
        }) {
            let _ = Mailbox::new(myself.clone(), self.depth.clone()).cast(ShardMsg::ImageStep);
        }
    }

    /// Takes the image under way to its end at once (before a change the
    /// walk cannot follow, such as a widening).
    fn finish_image(&mut self) {
        let shard = &mut self.shard;
        let id = shard.shard_id();
        Imaging::finish(&mut self.imaging, |n| {
            shard.image_step(n).map(|image| Imaged::Shard(id, image))
        });
    }
}

impl Actor for ShardActor {
    type Msg = ShardMsg;
    type State = ShardState;
    type Arguments = ShardState;

    async fn pre_start(
        &self,
        _: ActorRef<ShardMsg>,
        state: ShardState,
    ) -> Result<ShardState, ActorProcessingErr> {
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<ShardMsg>,
        message: ShardMsg,
        state: &mut ShardState,
    ) -> Result<(), ActorProcessingErr> {
        count_taken(&state.depth);
        let shard = &mut state.shard;
        // A reply port whose caller went away is not an error of the shard.
        match message {
            ShardMsg::Hold { items, reply } => {
                let _ = reply.send(shard.hold(&items));
            }
            ShardMsg::Abort(ops) => {
                let mut bumped = Vec::new();
                for op in ops {
                    let _ = apply_stock_op(shard, op, &mut bumped);
                }
            }
            ShardMsg::Apply { ops, reply } => {
                let mut bumped = Vec::new();
                let mut errors = Vec::new();
                for op in ops {
                    if let Err(e) = apply_stock_op(shard, op, &mut bumped) {
                        errors.push(e);
                    }
                }
                match reply {
                    Some(reply) => {
                        let _ = reply.send(Applied { bumped, errors });
                    }
                    None if !bumped.is_empty() => {
                        let _ = state.bumps.send(bumped).await;
                    }
                    None => {}
                }
            }
            ShardMsg::Cell { sku, node, reply } => {
                let _ = reply.send(shard.cell(sku, node));
            }
            ShardMsg::Check(reply) => {
                let _ = reply.send(shard.check_invariants());
            }
            ShardMsg::Widen { node_count, reply } => {
                state.finish_image();
                state.shard.widen(node_count);
                let _ = reply.send(());
            }
            ShardMsg::Snapshot {
                lsn,
                sink,
                memory,
                pace,
            } => {
                // A snapshot's marker reaches each shard once, after the
                // last: one still under way would be its own.
                state.finish_image();
                state.shard.begin_image(memory);
                state.imaging = Some(Imaging { lsn, sink, pace });
                state.image_step(&myself);
            }
            ShardMsg::ImageStep => {
                state.image_step(&myself);
                // Back to the scheduler between steps (as a router's book
                // image does): the orders that came meanwhile go first.
                tokio::task::yield_now().await;
            }
        }
        Ok(())
    }
}
