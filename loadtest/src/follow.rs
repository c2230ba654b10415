//! `--follow`: the scenario's channel followed through the run as a
//! channel's integration would follow it, on a connection of its own that
//! drops once half way and resumes from its last cursor + 1; checked at the
//! end: gapless cursors across the reconnect, and one `routed` status for
//! each order the run had routed.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use omniroute_client::protocol::order_changes;
use omniroute_client::{Client, Trust};
use omniroute_loadtest::StatusStream;

/// Once the run is over, how long the follower waits with no status
/// before it counts the stream as caught up.
const QUIET_MS: u64 = 1000;
/// How often a stopped follower looks whether it is quiet yet.
const POLL_MS: u64 = 100;

/// Where and as whom the follower connects.
pub(crate) struct Endpoint {
    pub(crate) target: SocketAddr,
    pub(crate) trust: Trust,
    pub(crate) token: String,
}

pub(crate) struct Follower {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Result<Followed, String>>,
}

/// What the follower saw.
#[derive(Default)]
struct Followed {
    statuses: u64,
    changes: BTreeMap<String, u64>,
    cursor_gaps: u64,
    reconnects: u32,
    /// `routed` statuses per order id.
    routed: HashMap<u64, u32>,
}

impl Follower {
    /// Follows `channel` from the oldest status kept, reconnecting once
    /// after `reconnect_after`.
    pub(crate) fn start(
        endpoint: Endpoint,
        channel: String,
        reconnect_after: Duration,
    ) -> Follower {
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(follow(endpoint, channel, reconnect_after, stop.clone()));
        Follower { stop, task }
    }

    /// Reads until the stream is quiet, then checks it against the orders
    /// the run routed (`(request id, order id)`).
    pub(crate) async fn finish(self, routed: &[(u64, u64)]) -> Result<StatusStream, String> {
        self.stop.store(true, Ordering::Relaxed);
        let followed = self.task.await.map_err(|e| e.to_string())??;
        let without_one = routed
            .iter()
            .filter(|(_, order)| followed.routed.get(order) != Some(&1))
            .count() as u64;
        Ok(StatusStream {
            statuses: followed.statuses,
            changes: followed.changes,
            reconnects: followed.reconnects,
            cursor_gaps: followed.cursor_gaps,
            routed_orders_without_one_routed_status: without_one,
        })
    }
}

async fn follow(
    endpoint: Endpoint,
    channel: String,
    reconnect_after: Duration,
    stop: Arc<AtomicBool>,
) -> Result<Followed, String> {
    let mut followed = Followed::default();
    let reconnect_at = tokio::time::Instant::now() + reconnect_after;
    let mut next_cursor = 0;
    loop {
        let client = Client::connect(
            endpoint.target,
            "localhost",
            endpoint.trust.clone(),
            &endpoint.token,
        )
        .await
        .map_err(|e| format!("follower connection: {e}"))?;
        let mut statuses = client
            .follow_orders(&channel, next_cursor)
            .await
            .map_err(|e| format!("follow {channel}: {e}"))?;
        if next_cursor == 0 {
            next_cursor = statuses.next_cursor;
        }
        let reconnect = followed.reconnects == 0;
        let mut quiet = Duration::ZERO;
        loop {
            if reconnect && tokio::time::Instant::now() >= reconnect_at {
                break;
            }
            let poll = tokio::time::timeout(Duration::from_millis(POLL_MS), statuses.next());
            match poll.await {
                Ok(Some(Ok(status))) => {
                    quiet = Duration::ZERO;
                    if status.cursor != next_cursor {
                        followed.cursor_gaps += 1;
                    }
                    next_cursor = status.cursor + 1;
                    followed.statuses += 1;
                    let change = order_changes::name(status.change);
                    *followed.changes.entry(change.to_string()).or_default() += 1;
                    if status.change == order_changes::ROUTED {
                        *followed.routed.entry(status.order.order_id).or_default() += 1;
                    }
                }
                Ok(Some(Err(e))) => return Err(format!("follow {channel}: {e}")),
                Ok(None) => return Err(format!("follow {channel}: the stream ended")),
                Err(_) if stop.load(Ordering::Relaxed) => {
                    quiet += Duration::from_millis(POLL_MS);
                    if quiet >= Duration::from_millis(QUIET_MS) {
                        client.close().await;
                        return Ok(followed);
                    }
                }
                Err(_) => {}
            }
        }
        // Half way: drop the connection, as a channel's integration that
        // restarts would, and resume where it stopped.
        client.close().await;
        followed.reconnects += 1;
    }
}
