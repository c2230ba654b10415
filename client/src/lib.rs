//! `omniroute-client`: an async, pipelined, typed client for omniroute's
//! QUIC protocol (docs/PROTOCOL.md).
//!
//! A [`Client`] holds one connection and one request stream. Every call
//! writes its frame at once and waits only for its own answer, so a caller
//! that issues many calls concurrently (e.g. `join_all`) pipelines them on
//! the stream; answers are matched to calls by request id, in any order.
//!
//! A [`ClusterClient`] holds the addresses of a cluster's replicas and
//! sends each call to the one that leads, following `NotLeader` answers and
//! lost replicas (see its module).
//!
//! ```no_run
//! # async fn demo() -> Result<(), omniroute_client::ClientError> {
//! use omniroute_client::{Client, Trust};
//! let client = Client::connect("127.0.0.1:4433".parse().unwrap(), "localhost", Trust::InsecureDevelopmentOnly, "dev-web-token").await?;
//! let decision = client.submit(omniroute_client::order("web", "o-1", 52.52, 13.40, &[("SKU-1", 2)])).await?;
//! println!("{decision:?}");
//! # Ok(()) }
//! ```

mod batcher;
mod cluster;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

pub use cluster::{
    is_follow, resend_is_safe, ClusterClient, ANSWER_TIMEOUT_MS, CONNECT_TIMEOUT_MS,
    FOLLOW_TIMEOUT_MS, NO_LEADER_PAUSE_MS,
};
pub use omniroute_protocol as protocol;
use omniroute_protocol::{check_frame, split_frame, Request, Response, ALPN, PROTOCOL_VERSION};
pub use omniroute_protocol::{
    Decision, Event, ListedOrder, Method, Near, NodeState, NodeStock, Order, OrderKey, OrderQuery,
    OrderStatus, OrderView, StockAdjust, StockSet,
};
pub use quinn;
use tokio::sync::{mpsc, oneshot};

/// Frames queued for a stream's writer before callers wait.
const WRITE_QUEUE_FRAMES: usize = 4096;
/// Bytes read from the stream at once.
const READ_CHUNK_BYTES: usize = 64 * 1024;
/// Events queued for a subscription before the reader waits.
const EVENT_QUEUE: usize = 4096;

#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("the stream or connection closed: {0}")]
    Closed(String),
    /// The server answered with an error frame; nothing was changed.
    #[error("server error {code}: {message}")]
    Server { code: u16, message: String },
    #[error("unexpected answer: {0}")]
    Unexpected(String),
}

/// How the client checks the server's certificate.
#[derive(Clone, Debug)]
pub enum Trust {
    /// A PEM file with the CA (or the self-signed certificate itself).
    CaFile(PathBuf),
    /// PEM bytes of the same.
    CaPem(Vec<u8>),
    /// Accept any certificate. For local development only: it gives up all
    /// protection against an impostor server.
    InsecureDevelopmentOnly,
}

/// A ship order with lines (sku, qty), for the common case.
pub fn order(
    channel: &str,
    client_order_id: &str,
    lat: f64,
    lon: f64,
    lines: &[(&str, u32)],
) -> Order {
    Order {
        channel: channel.into(),
        client_order_id: client_order_id.into(),
        lat,
        lon,
        market: None,
        method: Method::Ship,
        hold_ttl_ms: None,
        lines: lines
            .iter()
            .map(|(sku, qty)| (sku.to_string(), *qty))
            .collect(),
    }
}

#[derive(Debug)]
struct AcceptAnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn client_config(trust: &Trust) -> Result<quinn::ClientConfig, ClientError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| ClientError::Tls(e.to_string()))?;
    let mut tls = match trust {
        Trust::InsecureDevelopmentOnly => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
            .with_no_client_auth(),
        Trust::CaFile(_) | Trust::CaPem(_) => {
            let pem = match trust {
                Trust::CaFile(path) => std::fs::read(path)
                    .map_err(|e| ClientError::Tls(format!("{}: {e}", path.display())))?,
                Trust::CaPem(pem) => pem.clone(),
                Trust::InsecureDevelopmentOnly => unreachable!(),
            };
            let mut roots = rustls::RootCertStore::empty();
            for certificate in rustls_pemfile::certs(&mut pem.as_slice()) {
                roots
                    .add(certificate.map_err(|e| ClientError::Tls(e.to_string()))?)
                    .map_err(|e| ClientError::Tls(e.to_string()))?;
            }
            if roots.is_empty() {
                return Err(ClientError::Tls("no certificate in the CA file".into()));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| ClientError::Tls(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport
        .stream_receive_window((8u32 << 20).into())
        .receive_window((32u32 << 20).into())
        .send_window(32 << 20)
        // A client may sit idle between bursts (an admin connection through
        // a long load test); pings keep the connection from timing out.
        .keep_alive_interval(Some(KEEP_ALIVE_INTERVAL));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// Callers waiting for answers, by request id; `None` once the stream's
/// reader has ended, so that a request after that fails at once instead of
/// waiting for an answer nobody will deliver.
/// How often an idle connection pings the server (its idle timeout is 60 s,
/// the client's 30 s).
const KEEP_ALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

type Pending = Arc<Mutex<Option<HashMap<u64, oneshot::Sender<Response>>>>>;

/// One bidirectional stream: requests written by a writer task, answers
/// routed to their callers by a reader task.
#[derive(Clone)]
pub struct RequestStream {
    out: mpsc::Sender<Vec<u8>>,
    pending: Pending,
    next_id: Arc<AtomicU64>,
}

/// Writes what is queued for a stream, coalescing what is already waiting
/// into one write; finishes the stream when the queue closes. Also the load
/// generator's writer for its raw streams.
pub async fn write_frames(mut send: quinn::SendStream, mut queue: mpsc::Receiver<Vec<u8>>) {
    while let Some(mut bytes) = queue.recv().await {
        while bytes.len() < READ_CHUNK_BYTES {
            match queue.try_recv() {
                Ok(more) => bytes.extend_from_slice(&more),
                Err(_) => break,
            }
        }
        if send.write_all(&bytes).await.is_err() {
            return;
        }
    }
    let _ = send.finish();
}

/// Reads frames and hands each decoded response to `deliver`; returns why
/// the stream ended.
async fn read_frames(
    mut recv: quinn::RecvStream,
    mut deliver: impl FnMut(u64, Response) -> bool,
) -> String {
    let mut buffer = Vec::with_capacity(READ_CHUNK_BYTES);
    loop {
        match recv.read_chunk(READ_CHUNK_BYTES, true).await {
            Ok(Some(chunk)) => buffer.extend_from_slice(&chunk.bytes),
            Ok(None) => return "the server finished the stream".into(),
            Err(e) => return e.to_string(),
        }
        let mut consumed = 0;
        loop {
            match check_frame(&buffer[consumed..]) {
                Ok(Some(length)) => {
                    let (kind, id, payload) = split_frame(&buffer[consumed..consumed + length]);
                    consumed += length;
                    match Response::decode(kind, payload) {
                        Ok(Some(response)) => {
                            if !deliver(id, response) {
                                return "the receiver went away".into();
                            }
                        }
                        Ok(None) => return format!("unknown response kind {kind:#x}"),
                        Err(e) => return format!("undecodable response: {e}"),
                    }
                }
                Ok(None) => break,
                Err(e) => return e.to_string(),
            }
        }
        buffer.drain(..consumed);
    }
}

impl RequestStream {
    async fn open(connection: &quinn::Connection) -> Result<RequestStream, ClientError> {
        let (send, recv) = connection
            .open_bi()
            .await
            .map_err(|e| ClientError::Closed(e.to_string()))?;
        let (out, queue) = mpsc::channel(WRITE_QUEUE_FRAMES);
        tokio::spawn(write_frames(send, queue));
        let pending: Pending = Arc::new(Mutex::new(Some(HashMap::new())));
        let routed = pending.clone();
        tokio::spawn(async move {
            let _why = read_frames(recv, |id, response| {
                let caller = routed
                    .lock()
                    .expect("pending lock")
                    .as_mut()
                    .and_then(|p| p.remove(&id));
                if let Some(caller) = caller {
                    let _ = caller.send(response);
                }
                true
            })
            .await;
            // Callers still waiting learn the stream is gone when their sender drops.
            routed.lock().expect("pending lock").take();
        });
        Ok(RequestStream {
            out,
            pending,
            next_id: Arc::new(AtomicU64::new(1)),
        })
    }

    /// Sends one request and waits for its answer. Error frames become
    /// `ClientError::Server`.
    pub async fn request(&self, request: &Request) -> Result<Response, ClientError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (caller, answer) = oneshot::channel();
        match self.pending.lock().expect("pending lock").as_mut() {
            Some(pending) => pending.insert(id, caller),
            None => return Err(ClientError::Closed("the stream has ended".into())),
        };
        let mut bytes = Vec::with_capacity(64);
        request.encode(id, &mut bytes);
        if self.out.send(bytes).await.is_err() {
            if let Some(pending) = self.pending.lock().expect("pending lock").as_mut() {
                pending.remove(&id);
            }
            return Err(ClientError::Closed("the stream writer stopped".into()));
        }
        match answer.await {
            Ok(Response::Error { code, message }) => Err(ClientError::Server { code, message }),
            Ok(response) => Ok(response),
            Err(_) => Err(ClientError::Closed(
                "the stream ended before the answer".into(),
            )),
        }
    }
}

/// A live feed of one node's events (or, as `Subscription<OrderStatus>`,
/// of one channel's order statuses).
pub struct Subscription<T = Event> {
    events: mpsc::Receiver<Result<T, ClientError>>,
    /// The cursor the first event will carry.
    pub next_cursor: u64,
}

impl<T> Subscription<T> {
    /// The next event; `None` once the stream ended cleanly.
    pub async fn next(&mut self) -> Option<Result<T, ClientError>> {
        self.events.recv().await
    }
}

pub struct Client {
    endpoint: quinn::Endpoint,
    connection: quinn::Connection,
    stream: RequestStream,
    batcher: batcher::Batcher,
    token: String,
    /// The role the server granted the token.
    pub role: String,
}

fn unexpected(response: Response) -> ClientError {
    ClientError::Unexpected(format!("{response:?}"))
}

/// A bare QUIC connection with the protocol's ALPN and TLS settings, for
/// tools and tests that speak raw frames.
pub async fn connect_quic(
    addr: SocketAddr,
    server_name: &str,
    trust: &Trust,
) -> Result<(quinn::Endpoint, quinn::Connection), ClientError> {
    let bind: SocketAddr = if addr.is_ipv6() {
        "[::]:0".parse().expect("address")
    } else {
        "0.0.0.0:0".parse().expect("address")
    };
    let mut endpoint =
        quinn::Endpoint::client(bind).map_err(|e| ClientError::Connect(e.to_string()))?;
    endpoint.set_default_client_config(client_config(trust)?);
    let connecting = endpoint
        .connect(addr, server_name)
        .map_err(|e| ClientError::Connect(e.to_string()))?;
    let connection = connecting
        .await
        .map_err(|e| ClientError::Connect(e.to_string()))?;
    Ok((endpoint, connection))
}

impl Client {
    /// Connects, opens the request stream and says hello with `token`.
    pub async fn connect(
        addr: SocketAddr,
        server_name: &str,
        trust: Trust,
        token: &str,
    ) -> Result<Client, ClientError> {
        let (endpoint, connection) = connect_quic(addr, server_name, &trust).await?;
        let stream = RequestStream::open(&connection).await?;
        let role = match stream
            .request(&Request::Hello {
                version: PROTOCOL_VERSION,
                token: token.into(),
            })
            .await?
        {
            Response::HelloOk { role } => role,
            other => return Err(unexpected(other)),
        };
        Ok(Client {
            endpoint,
            connection,
            batcher: batcher::Batcher::new(stream.clone()),
            stream,
            token: token.into(),
            role,
        })
    }

    /// The authenticated QUIC connection, for tools that write raw frames
    /// on streams of their own (the load generator).
    pub fn connection(&self) -> &quinn::Connection {
        &self.connection
    }

    /// Another request stream on the same connection (already authenticated).
    pub async fn open_stream(&self) -> Result<RequestStream, ClientError> {
        RequestStream::open(&self.connection).await
    }

    pub fn stream(&self) -> &RequestStream {
        &self.stream
    }

    pub fn token(&self) -> &str {
        &self.token
    }

    /// Routes one order. Submits made concurrently on one client are
    /// batched: while a batch is in flight the rest queue, and go together
    /// as one `SubmitBatch` frame when its answer comes.
    pub async fn submit(&self, order: Order) -> Result<Decision, ClientError> {
        self.batcher.submit(order).await
    }

    /// Frames `submit` has sent so far: fewer than the orders when
    /// concurrent submits were batched.
    pub fn submit_frames(&self) -> u64 {
        self.batcher.frames.load(Ordering::Relaxed)
    }

    /// Routes orders as one `SubmitBatch` frame (at most
    /// `MAX_ORDERS_PER_SUBMIT_BATCH`), each judged on its own: an answer
    /// per order, in order.
    pub async fn submit_batch(
        &self,
        orders: Vec<Order>,
    ) -> Result<Vec<Result<Decision, ClientError>>, ClientError> {
        let request = Request::SubmitBatch(orders.into_iter().map(Ok).collect());
        match self.stream.request(&request).await? {
            Response::Decisions(entries) => Ok(entries.into_iter().map(batcher::judged).collect()),
            other => Err(unexpected(other)),
        }
    }

    async fn order_request(&self, request: Request) -> Result<OrderView, ClientError> {
        match self.stream.request(&request).await? {
            Response::Order(view) => Ok(view),
            other => Err(unexpected(other)),
        }
    }

    pub async fn confirm(&self, key: OrderKey) -> Result<OrderView, ClientError> {
        self.order_request(Request::Confirm(key)).await
    }

    pub async fn cancel(&self, key: OrderKey) -> Result<OrderView, ClientError> {
        self.order_request(Request::Cancel(key)).await
    }

    pub async fn get_order(&self, key: OrderKey) -> Result<OrderView, ClientError> {
        self.order_request(Request::GetOrder(key)).await
    }

    /// An order of `channel` by the id its routed decision carried; an
    /// order retired after its retention window answers `Archived`.
    pub async fn get_order_by_id(
        &self,
        channel: &str,
        order_id: u64,
    ) -> Result<OrderView, ClientError> {
        self.order_request(Request::GetOrderById {
            channel: channel.to_string(),
            order_id,
        })
        .await
    }

    pub async fn node_ship(
        &self,
        node: &str,
        key: OrderKey,
        sku: &str,
        qty: u32,
    ) -> Result<OrderView, ClientError> {
        self.order_request(Request::NodeShip {
            node: node.into(),
            order: key,
            sku: sku.into(),
            qty,
        })
        .await
    }

    pub async fn node_reject(
        &self,
        node: &str,
        key: OrderKey,
        counts: Vec<(String, u32)>,
    ) -> Result<OrderView, ClientError> {
        self.order_request(Request::NodeReject {
            node: node.into(),
            order: key,
            counts,
        })
        .await
    }

    pub async fn return_units(
        &self,
        node: &str,
        key: OrderKey,
        sku: &str,
        qty: u32,
    ) -> Result<OrderView, ClientError> {
        self.order_request(Request::Return {
            node: node.into(),
            order: key,
            sku: sku.into(),
            qty,
        })
        .await
    }

    /// ATP of a SKU at every node that has some, or with `near`, the
    /// nearest nodes to a point that have at least `min_qty`.
    pub async fn availability(
        &self,
        sku: &str,
        near: Option<Near>,
    ) -> Result<Vec<NodeStock>, ClientError> {
        match self
            .stream
            .request(&Request::Availability {
                sku: sku.into(),
                near,
                with_state: false,
            })
            .await?
        {
            Response::Availability(nodes) => Ok(nodes),
            other => Err(unexpected(other)),
        }
    }

    /// Like [`Client::availability`], with each node's online flag and
    /// priority: every node with units by priority (offline ones marked),
    /// or with `near` the nearest online ones.
    pub async fn node_availability(
        &self,
        sku: &str,
        near: Option<Near>,
    ) -> Result<Vec<NodeState>, ClientError> {
        match self
            .stream
            .request(&Request::Availability {
                sku: sku.into(),
                near,
                with_state: true,
            })
            .await?
        {
            Response::NodeAvailability(nodes) => Ok(nodes),
            other => Err(unexpected(other)),
        }
    }

    /// (applied, bumped units, errors)
    pub async fn stock_set(&self, entries: Vec<StockSet>) -> Result<(u32, u32, u32), ClientError> {
        self.stock(Request::StockSet(entries)).await
    }

    pub async fn stock_adjust(
        &self,
        entries: Vec<StockAdjust>,
    ) -> Result<(u32, u32, u32), ClientError> {
        self.stock(Request::StockAdjust(entries)).await
    }

    /// As [`Client::stock_set`], for SKUs the daemon already knows: a SKU
    /// it does not know refuses the whole feed (`UnknownSku`, naming it)
    /// instead of being added as a new, orderable SKU.
    pub async fn stock_set_known(
        &self,
        entries: Vec<StockSet>,
    ) -> Result<(u32, u32, u32), ClientError> {
        self.stock(Request::StockSetKnown(entries)).await
    }

    /// As [`Client::stock_adjust`], for SKUs the daemon already knows.
    pub async fn stock_adjust_known(
        &self,
        entries: Vec<StockAdjust>,
    ) -> Result<(u32, u32, u32), ClientError> {
        self.stock(Request::StockAdjustKnown(entries)).await
    }

    async fn stock(&self, request: Request) -> Result<(u32, u32, u32), ClientError> {
        match self.stream.request(&request).await? {
            Response::StockResult {
                applied,
                bumped_units,
                errors,
            } => Ok((applied, bumped_units, errors)),
            other => Err(unexpected(other)),
        }
    }

    /// Returns how many orders were re-routed (going offline).
    pub async fn set_node_online(&self, node: &str, online: bool) -> Result<u32, ClientError> {
        match self
            .stream
            .request(&Request::SetNodeOnline {
                node: node.into(),
                online,
            })
            .await?
        {
            Response::NodeOnline { rerouted } => Ok(rerouted),
            other => Err(unexpected(other)),
        }
    }

    /// Subscribes to a node's events from `from_cursor` (0: the oldest the
    /// server keeps), on a stream of its own.
    pub async fn subscribe(
        &self,
        node: &str,
        from_cursor: u64,
    ) -> Result<Subscription, ClientError> {
        let request = Request::Subscribe {
            node: node.into(),
            from_cursor,
        };
        self.open_feed(request, |response| match response {
            Response::Event(event) => Ok(event),
            other => Err(Box::new(other)),
        })
        .await
    }

    /// Follows every change of a channel's orders from `from_cursor` (0:
    /// the oldest the server keeps), on a stream of its own.
    pub async fn follow_orders(
        &self,
        channel: &str,
        from_cursor: u64,
    ) -> Result<Subscription<OrderStatus>, ClientError> {
        let request = Request::FollowOrders {
            channel: channel.into(),
            from_cursor,
        };
        self.open_feed(request, |response| match response {
            Response::OrderStatus(status) => Ok(status),
            other => Err(Box::new(other)),
        })
        .await
    }

    /// One page of a channel's orders; pass the page's `next_after` as the
    /// query's `after` for the next (0: that was the last page).
    pub async fn list_orders(
        &self,
        query: OrderQuery,
    ) -> Result<(Vec<ListedOrder>, u64), ClientError> {
        match self.stream.request(&Request::ListOrders(query)).await? {
            Response::OrderPage { orders, next_after } => Ok((orders, next_after)),
            other => Err(unexpected(other)),
        }
    }

    /// Sends `request` on a stream of its own and feeds what `item` takes
    /// from each answer to the subscription, after the `Subscribed` answer.
    async fn open_feed<T: Send + 'static>(
        &self,
        request: Request,
        item: fn(Response) -> Result<T, Box<Response>>,
    ) -> Result<Subscription<T>, ClientError> {
        let (send, recv) = self
            .connection
            .open_bi()
            .await
            .map_err(|e| ClientError::Closed(e.to_string()))?;
        let (out, queue) = mpsc::channel(1);
        tokio::spawn(write_frames(send, queue));
        let mut bytes = Vec::new();
        request.encode(1, &mut bytes);
        out.send(bytes)
            .await
            .map_err(|_| ClientError::Closed("stream writer stopped".into()))?;
        let (events, receiver) = mpsc::channel(EVENT_QUEUE);
        let (first, answer) = oneshot::channel();
        tokio::spawn(async move {
            let _keep_open = out;
            let mut first = Some(first);
            let why = read_frames(recv, |_, response| match response {
                Response::Subscribed { next_cursor } => {
                    first.take().map(|f| f.send(Ok(next_cursor))).is_some()
                }
                Response::Error { code, message } => {
                    if let Some(f) = first.take() {
                        let _ = f.send(Err(ClientError::Server { code, message }));
                    }
                    false
                }
                // A full queue ends the subscription rather than drop an
                // event: the caller resumes from the last cursor it saw.
                other => match item(other) {
                    Ok(event) => events.try_send(Ok(event)).is_ok(),
                    Err(other) => events.try_send(Err(unexpected(*other))).is_ok(),
                },
            })
            .await;
            let _ = events.try_send(Err(ClientError::Closed(why)));
        });
        match answer.await {
            Ok(Ok(next_cursor)) => Ok(Subscription {
                events: receiver,
                next_cursor,
            }),
            Ok(Err(error)) => Err(error),
            Err(_) => Err(ClientError::Closed("the subscription stream ended".into())),
        }
    }

    /// Closes the connection and waits until the server has been told.
    pub async fn close(self) {
        self.connection.close(0u32.into(), b"client done");
        self.endpoint.wait_idle().await;
    }
}
