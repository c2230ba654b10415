//! The feed actor: the single writer of every channel's status log and the
//! live followers of each channel. Routers hand it the statuses of each
//! journaled change as it is applied, in LSN order, so its cursors follow
//! the journal (and recovery, reading the same records, rebuilds them).

use std::sync::atomic::AtomicI64;
use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::mpsc;

use super::images::{ImageSink, Imaged};
use super::mailbox::count_taken;
use super::node::{Subscription, SUBSCRIBER_QUEUE_EVENTS};
use crate::core::events::CursorOutOfRange;
use crate::core::model::ChannelIdx;
use crate::core::status::{OrderStatus, StatusFeed};

pub enum FeedMsg {
    /// The statuses of one journaled change, in LSN order.
    Statuses(Vec<OrderStatus>),
    Follow {
        channel: ChannelIdx,
        from_cursor: u64,
        reply: RpcReplyPort<Result<Subscription<OrderStatus>, CursorOutOfRange>>,
    },
    Snapshot {
        lsn: u64,
        sink: ImageSink,
    },
}

pub struct FeedActor;

type Follower = mpsc::Sender<(u64, Arc<OrderStatus>)>;

/// The logs, and each channel's live followers.
pub struct FeedState {
    feed: StatusFeed,
    followers: Vec<(ChannelIdx, Follower)>,
    depth: Arc<AtomicI64>,
}

impl Actor for FeedActor {
    type Msg = FeedMsg;
    type State = FeedState;
    /// The logs, and the mailbox's depth counter.
    type Arguments = (StatusFeed, Arc<AtomicI64>);

    async fn pre_start(
        &self,
        _: ActorRef<FeedMsg>,
        (feed, depth): (StatusFeed, Arc<AtomicI64>),
    ) -> Result<FeedState, ActorProcessingErr> {
        Ok(FeedState {
            feed,
            followers: Vec::new(),
            depth,
        })
    }

    async fn handle(
        &self,
        _: ActorRef<FeedMsg>,
        message: FeedMsg,
        state: &mut FeedState,
    ) -> Result<(), ActorProcessingErr> {
        count_taken(&state.depth);
        match message {
            FeedMsg::Statuses(statuses) => {
                for status in statuses {
                    let channel = status.channel;
                    let (cursor, status) = state.feed.append(status);
                    // A full queue means a follower that cannot keep up:
                    // drop it rather than hold every channel back.
                    state.followers.retain(|(c, follower)| {
                        *c != channel || follower.try_send((cursor, status.clone())).is_ok()
                    });
                }
            }
            FeedMsg::Follow {
                channel,
                from_cursor,
                reply,
            } => {
                let answer = state.feed.since(channel, from_cursor).map(|backlog| {
                    let (sender, receiver) = mpsc::channel(SUBSCRIBER_QUEUE_EVENTS);
                    state.followers.push((channel, sender));
                    Subscription {
                        backlog,
                        live: receiver,
                    }
                });
                let _ = reply.send(answer);
            }
            FeedMsg::Snapshot { lsn, sink } => {
                let started = std::time::Instant::now();
                let parts = state.feed.image_parts();
                tracing::debug!("feed imaged in {} us", started.elapsed().as_micros());
                let _ = sink.send((lsn, Imaged::Feed(parts)));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::model::OrderState;
    use crate::core::status::OrderChange;

    fn status(order: u64, channel: ChannelIdx) -> OrderStatus {
        OrderStatus {
            change: OrderChange::Routed,
            order,
            channel,
            client_order_id: "o".into(),
            state: OrderState::Held,
            expires_at_ms: 0,
            allocations: Default::default(),
            short: Vec::new(),
            released_from: Default::default(),
        }
    }

    #[tokio::test]
    async fn a_follower_that_falls_behind_is_dropped_and_others_keep_theirs() {
        // Proves a follower whose queue fills (it stopped reading) is dropped, its stream then
        // ends after what was queued, while a follower of another channel is not held back.
        let depth = Arc::new(AtomicI64::new(0));
        let (feed, _) = Actor::spawn(None, FeedActor, (StatusFeed::new(), depth))
            .await
            .unwrap();
        let follow = |channel| {
            let feed = feed.clone();
            async move {
                ractor::call!(feed, |reply| FeedMsg::Follow {
                    channel,
                    from_cursor: 0,
                    reply
                })
                .unwrap()
                .unwrap()
            }
        };
        let mut slow = follow(0).await;
        let mut other = follow(1).await;
        let burst: Vec<OrderStatus> = (0..=SUBSCRIBER_QUEUE_EVENTS as u64)
            .map(|order| status(order, 0))
            .collect();
        feed.cast(FeedMsg::Statuses(burst)).unwrap();
        feed.cast(FeedMsg::Statuses(vec![status(1, 1)])).unwrap();
        assert_eq!(other.live.recv().await.unwrap().0, 1);
        let mut queued = 0;
        while slow.live.recv().await.is_some() {
            queued += 1;
        }
        assert_eq!(
            queued, SUBSCRIBER_QUEUE_EVENTS,
            "what was queued, then the end"
        );
        feed.stop(None);
    }
}
