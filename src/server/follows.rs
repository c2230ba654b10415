//! Subscribe and FollowOrders: a node's events, or a channel's statuses,
//! streamed on the request's stream, at most `MAX_FOLLOWS_PER_CONNECTION`
//! per connection. The follow ends with its stream, its connection or the
//! shutdown, and gives its place back then.

use omniroute_protocol::{close_codes, ErrorCode, Response};
use tokio::sync::{OwnedSemaphorePermit, TryAcquireError};

use super::session::{Answers, Session, Shared};
use super::wire;
use crate::engine::{Engine, EngineError, Subscription};
use crate::limits::MAX_FOLLOWS_PER_CONNECTION;

/// A place for one more follow on the connection; an error past
/// `MAX_FOLLOWS_PER_CONNECTION` (answer it with [`refused`]).
pub fn admit(session: &Session) -> Result<OwnedSemaphorePermit, TryAcquireError> {
    session.follows.clone().try_acquire_owned()
}

/// The answer to a request past that limit.
pub fn refused() -> Response {
    Response::error(
        ErrorCode::Overloaded,
        format!(
            "this connection already has MAX_FOLLOWS_PER_CONNECTION ({MAX_FOLLOWS_PER_CONNECTION}) Subscribe or FollowOrders streams open; end one first"
        ),
    )
}

/// Starts a follow on `out`'s stream; it runs until its stream, its
/// subscription or the server stops, holding `place` until then.
#[allow(clippy::too_many_arguments)]
pub fn spawn<E: Send + Sync + 'static>(
    shared: &Shared,
    engine: &Engine,
    place: OwnedSemaphorePermit,
    id: u64,
    subscribe: impl std::future::Future<Output = Result<Subscription<E>, EngineError>> + Send + 'static,
    from_cursor: u64,
    out: &Answers,
    frame: impl Fn(&Engine, u64, &E) -> Response + Send + 'static,
) {
    let pump = pump(engine, id, subscribe, from_cursor, out, frame);
    let followed = async move {
        pump.await;
        drop(place);
    };
    let (stop, out) = (shared.stop.clone(), out.clone());
    shared.tracker.spawn(async move {
        if stop.run_until_cancelled_owned(followed).await.is_none() {
            // A follower that died without closing its connection would
            // otherwise hold the stop until the drain gave up on it.
            out.abandon();
        }
    });
}

/// Streams a node's events, or a channel's statuses, on this stream:
/// `Subscribed`, the backlog from the cursor, then live ones, each frame
/// carrying the request id. A follower too slow for its queue is dropped
/// and the stream reset with `SLOW_CONSUMER`; it resumes from its cursor.
fn pump<E: Send + Sync + 'static>(
    engine: &Engine,
    id: u64,
    subscribe: impl std::future::Future<Output = Result<Subscription<E>, EngineError>> + Send + 'static,
    from_cursor: u64,
    out: &Answers,
    frame: impl Fn(&Engine, u64, &E) -> Response + Send + 'static,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let (engine, out) = (engine.clone(), out.clone());
    async move {
        let Subscription { backlog, mut live } = match subscribe.await {
            Ok(subscription) => subscription,
            Err(error) => {
                let _ = out.frames(&[(id, wire::error(&error))]).await;
                return;
            }
        };
        let next_cursor = backlog
            .first()
            .map_or_else(|| from_cursor.max(1), |(c, _)| *c);
        let mut frames = vec![(id, Response::Subscribed { next_cursor })];
        frames.extend(
            backlog
                .iter()
                .map(|(cursor, event)| (id, frame(&engine, *cursor, event))),
        );
        for chunk in frames.chunks(1024) {
            if out.frames(chunk).await.is_err() {
                return;
            }
        }
        while let Some((cursor, event)) = live.recv().await {
            if out
                .frames(&[(id, frame(&engine, cursor, &event))])
                .await
                .is_err()
            {
                return;
            }
        }
        // The actor dropped this follower: it fell too far behind.
        out.reset(close_codes::SLOW_CONSUMER).await;
    }
}
