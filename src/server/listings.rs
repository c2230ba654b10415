//! ListOrders, admitted: each costs every router a pass over its book
//! (paced by the routers, in steps between the batches they route), so a
//! connection has at most `MAX_LISTINGS_PER_CONNECTION` in process (more
//! are answered `Overloaded`), and the engine takes `MAX_LISTINGS_IN_FLIGHT`
//! at once from every ingress together (more wait their turn in
//! [`crate::engine::Engine::list_orders`], holding nothing of the engine's).

use omniroute_protocol::{ErrorCode, OrderQuery, Request, Response};
use tokio::sync::{OwnedSemaphorePermit, TryAcquireError};

use super::requests::execute;
use super::session::{Answers, Session, Shared};
use crate::limits::MAX_LISTINGS_PER_CONNECTION;

/// The connection's turn for one more listing; an error past
/// `MAX_LISTINGS_PER_CONNECTION` (answer it with [`refused`]).
pub fn admit(session: &Session) -> Result<OwnedSemaphorePermit, TryAcquireError> {
    session.listings.clone().try_acquire_owned()
}

/// The answer to a request past that limit.
pub fn refused() -> Response {
    Response::error(
        ErrorCode::Overloaded,
        format!(
            "this connection already has MAX_LISTINGS_PER_CONNECTION ({MAX_LISTINGS_PER_CONNECTION}) ListOrders in process; ask for the next page after the last"
        ),
    )
}

/// Answers one listing on `out` once the engine's turn comes; tracked by
/// `requests`, so that an answer to unframeable bytes after it waits for it.
pub fn spawn(
    shared: &Shared,
    engine: &crate::engine::Engine,
    requests: &tokio_util::task::TaskTracker,
    turn: OwnedSemaphorePermit,
    id: u64,
    query: OrderQuery,
    out: &Answers,
) {
    let (engine, out) = (engine.clone(), out.clone());
    shared.tracker.spawn(requests.track_future(async move {
        let response = execute(&engine, Request::ListOrders(query)).await;
        let _ = out.frames(&[(id, response)]).await;
        drop(turn);
    }));
}
