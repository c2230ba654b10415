//! A client of a cluster: given every replica's address, its calls go to
//! the replica it believes leads, and follow the leadership when it moves.
//!
//! A replica that does not lead answers `NotLeader` (docs/PROTOCOL.md, code
//! 20) naming the leader's client address, or nothing while an election is
//! under way; nothing was decided there, so the call is sent again to the
//! named leader (or, with no name, to the next address after a pause). A
//! replica that is gone (its connection lost, or a connect that does not
//! complete: a SIGKILLed replica's port stays silent) is left for the next
//! address. Resending is safe for orders: a resubmission with the same
//! client order id gets the decision the cluster kept, or a new one if it
//! kept none.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use omniroute_protocol::{ErrorCode, Request, Response};

use crate::{Client, ClientError, Decision, Order, OrderView, Trust};

/// How long one call keeps following the leader before it returns its
/// last error: longer than an election after a leader dies (raft's
/// election timeout plus the new leader's first entry), with room to spare.
pub const FOLLOW_TIMEOUT_MS: u64 = 15_000;
/// A connect (QUIC handshake and Hello) that does not complete within this
/// is a replica that is gone: a killed process's port answers nothing, and
/// QUIC would otherwise wait for its idle timeout.
pub const CONNECT_TIMEOUT_MS: u64 = 400;
/// A call that has no answer within this is taken for one on a dead
/// replica's connection (QUIC notices a silent peer only at its idle
/// timeout) and is made again elsewhere, as after a lost connection.
pub const ANSWER_TIMEOUT_MS: u64 = 2_000;
/// The pause before the next address while no replica names a leader (an
/// election is under way), or after every address failed once.
pub const NO_LEADER_PAUSE_MS: u64 = 50;

/// What a failed attempt tells the caller to do next.
enum Follow {
    /// Go to this address: the leader as a replica named it.
    To(SocketAddr),
    /// Try the next address, after a pause.
    Next,
}

/// The connection to the replica believed to lead.
struct Leader {
    addr: SocketAddr,
    client: Arc<Client>,
}

/// A client of every replica of a cluster that follows the leader. Every
/// replica's certificate must be trusted: a PEM with several certificates
/// works as `Trust::CaPem` or `Trust::CaFile`.
pub struct ClusterClient {
    addrs: Vec<SocketAddr>,
    server_name: String,
    trust: Trust,
    token: String,
    /// Where the next connect goes: the leader as last named, or the next
    /// address in turn.
    target: Mutex<SocketAddr>,
    /// The open connection, if any; replaced when the leadership moves.
    leader: tokio::sync::Mutex<Option<Leader>>,
}

impl ClusterClient {
    /// A client of the replicas at `addrs` (at least one). Connects lazily,
    /// on the first call: [`ClusterClient::connect`] connects at once.
    pub fn new(
        addrs: Vec<SocketAddr>,
        server_name: &str,
        trust: Trust,
        token: &str,
    ) -> Result<ClusterClient, ClientError> {
        let first = *addrs
            .first()
            .ok_or_else(|| ClientError::Connect("no replica address given".into()))?;
        Ok(ClusterClient {
            addrs,
            server_name: server_name.to_string(),
            trust,
            token: token.to_string(),
            target: Mutex::new(first),
            leader: tokio::sync::Mutex::new(None),
        })
    }

    /// A client connected to the leader (found by a read every replica
    /// answers, `NotLeader` when it does not lead).
    pub async fn connect(
        addrs: Vec<SocketAddr>,
        server_name: &str,
        trust: Trust,
        token: &str,
    ) -> Result<ClusterClient, ClientError> {
        let cluster = ClusterClient::new(addrs, server_name, trust, token)?;
        cluster.leader_client().await?;
        Ok(cluster)
    }

    /// The replicas' addresses, as given.
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The address of the replica this client believes leads.
    pub fn believed_leader(&self) -> SocketAddr {
        *self.target.lock().expect("target lock")
    }

    /// A connection to the replica that leads now, checked with a read
    /// (`Availability` of a SKU nobody stocks) that a replica answers
    /// `NotLeader` when it does not lead: for callers that run several
    /// calls on one plain [`Client`] (the command line).
    pub async fn leader_client(&self) -> Result<Arc<Client>, ClientError> {
        self.with_leader(true, |client| async move {
            match client.availability("", None).await {
                Ok(_) => Ok(client),
                Err(ClientError::Server { code, message }) if is_follow(code) => {
                    Err(ClientError::Server { code, message })
                }
                // Any other answer came from an engine that serves.
                Err(ClientError::Server { .. }) => Ok(client),
                Err(other) => Err(other),
            }
        })
        .await
    }

    /// Routes one order on the leader, following it until it decides
    /// (safe to resend: orders are idempotent by client order id).
    pub async fn submit(&self, order: Order) -> Result<Decision, ClientError> {
        self.with_leader(true, |client| {
            let order = order.clone();
            async move { client.submit(order).await }
        })
        .await
    }

    /// An order of `channel` by the id its routed decision carried, read
    /// on the leader.
    pub async fn get_order_by_id(
        &self,
        channel: &str,
        order_id: u64,
    ) -> Result<OrderView, ClientError> {
        self.with_leader(true, |client| async move {
            client.get_order_by_id(channel, order_id).await
        })
        .await
    }

    /// Any request on the leader; error frames become
    /// `ClientError::Server`. After a lost connection the request is sent
    /// again only if sending it twice changes nothing more than once
    /// ([`resend_is_safe`]): a stock adjustment, a ship or a return whose
    /// answer was lost is returned as the error, not risked twice.
    pub async fn request(&self, request: &Request) -> Result<Response, ClientError> {
        let safe = resend_is_safe(request);
        self.with_leader(safe, |client| async move {
            client.stream().request(request).await
        })
        .await
    }

    /// Runs `call` on a connection to the leader until it answers with
    /// anything but `NotLeader` (or `Unavailable`: a replica that stops),
    /// moving to the leader as named, to the next address after a lost
    /// connection, a call with no answer within [`ANSWER_TIMEOUT_MS`] or a
    /// connect that does not complete (with
    /// `resend_after_loss`; without it a lost connection after the call was
    /// made is returned), for at most [`FOLLOW_TIMEOUT_MS`].
    pub async fn with_leader<T, F, Fut>(
        &self,
        resend_after_loss: bool,
        mut call: F,
    ) -> Result<T, ClientError>
    where
        F: FnMut(Arc<Client>) -> Fut,
        Fut: Future<Output = Result<T, ClientError>>,
    {
        let deadline = Instant::now() + Duration::from_millis(FOLLOW_TIMEOUT_MS);
        loop {
            let (addr, client) = match self.connection().await {
                Ok(open) => open,
                // A replica that refuses the token or the TLS settings
                // refuses them everywhere.
                Err(error @ (ClientError::Tls(_) | ClientError::Unexpected(_))) => {
                    return Err(error)
                }
                Err(ClientError::Server { code, message }) if !is_follow(code) => {
                    return Err(ClientError::Server { code, message })
                }
                Err(error) => {
                    self.follow(None, Follow::Next, deadline, error).await?;
                    continue;
                }
            };
            let answer = Duration::from_millis(ANSWER_TIMEOUT_MS);
            let answered = match tokio::time::timeout(answer, call(client.clone())).await {
                Ok(answered) => answered,
                Err(_) => Err(ClientError::Closed(format!(
                    "{addr}: no answer within {ANSWER_TIMEOUT_MS} ms"
                ))),
            };
            let error = match answered {
                Err(ClientError::Server { code, message }) if is_follow(code) => {
                    let to = match message.parse::<SocketAddr>() {
                        Ok(leader) if leader != addr => Follow::To(leader),
                        _ => Follow::Next,
                    };
                    let error = ClientError::Server { code, message };
                    self.follow(Some(&client), to, deadline, error).await?;
                    continue;
                }
                Err(error @ ClientError::Closed(_)) if resend_after_loss => error,
                other => return other,
            };
            self.follow(Some(&client), Follow::Next, deadline, error)
                .await?;
        }
    }

    /// The open connection, or a new one to the target.
    async fn connection(&self) -> Result<(SocketAddr, Arc<Client>), ClientError> {
        let mut leader = self.leader.lock().await;
        if let Some(open) = leader.as_ref() {
            return Ok((open.addr, open.client.clone()));
        }
        let addr = self.believed_leader();
        let connecting = Client::connect(addr, &self.server_name, self.trust.clone(), &self.token);
        let timeout = Duration::from_millis(CONNECT_TIMEOUT_MS);
        let client = match tokio::time::timeout(timeout, connecting).await {
            Ok(Ok(client)) => Arc::new(client),
            Ok(Err(error)) => return Err(error),
            Err(_) => {
                return Err(ClientError::Connect(format!(
                    "{addr}: no connection within {CONNECT_TIMEOUT_MS} ms"
                )))
            }
        };
        *leader = Some(Leader {
            addr,
            client: client.clone(),
        });
        Ok((addr, client))
    }

    /// Moves on after a failed attempt: drops the connection it was made
    /// on (unless another call replaced it already), sets the next target,
    /// pauses when no leader is named; `error` once past `deadline`.
    async fn follow(
        &self,
        failed: Option<&Arc<Client>>,
        to: Follow,
        deadline: Instant,
        error: ClientError,
    ) -> Result<(), ClientError> {
        if Instant::now() >= deadline {
            return Err(error);
        }
        {
            let mut leader = self.leader.lock().await;
            let same = match (leader.as_ref(), failed) {
                (Some(open), Some(failed)) => Arc::ptr_eq(&open.client, failed),
                _ => false,
            };
            if leader.is_some() && !same {
                // Another call moved on already: use its connection.
                return Ok(());
            }
            *leader = None;
            let mut target = self.target.lock().expect("target lock");
            *target = match to {
                Follow::To(addr) => addr,
                Follow::Next => self.after(*target),
            };
        }
        if matches!(to, Follow::Next) {
            tokio::time::sleep(Duration::from_millis(NO_LEADER_PAUSE_MS)).await;
        }
        Ok(())
    }

    /// The address after `addr` in the list (the first if it is not in it).
    fn after(&self, addr: SocketAddr) -> SocketAddr {
        match self.addrs.iter().position(|&a| a == addr) {
            Some(i) => self.addrs[(i + 1) % self.addrs.len()],
            None => self.addrs[0],
        }
    }

    /// Closes the open connection, if any.
    pub async fn close(self) {
        if let Some(leader) = self.leader.into_inner() {
            if let Ok(client) = Arc::try_unwrap(leader.client) {
                client.close().await;
            }
        }
    }
}

/// Whether an error code means "not decided here: go to the leader".
pub fn is_follow(code: u16) -> bool {
    code == ErrorCode::NotLeader as u16 || code == ErrorCode::Unavailable as u16
}

/// Whether sending `request` twice changes nothing more than sending it
/// once: orders by client order id, reads, absolute stock levels, state
/// changes of an order (a second confirm or cancel finds it done). A stock
/// adjustment, a ship, a reject or a return counts units each time.
pub fn resend_is_safe(request: &Request) -> bool {
    !matches!(
        request,
        Request::StockAdjust(_)
            | Request::StockAdjustKnown(_)
            | Request::NodeShip { .. }
            | Request::NodeReject { .. }
            | Request::Return { .. }
    )
}
