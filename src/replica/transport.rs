//! The replication transport: raft-rs messages between replicas over QUIC
//! with mutual TLS.
//!
//! One QUIC endpoint per replica serves both directions: it accepts its
//! peers' connections and makes its own. Each side proves who it is with a
//! certificate the cluster CA signed (`certs`); a connection's peer is the
//! replica its certificate names, and a message it carries must say it is
//! from that replica and to this one.
//!
//! Messages leave through [`PeerSender::send`], which never waits: it is
//! called on the driver's OS thread. Each message goes into its peer's
//! queue, bounded in messages and bytes; a full queue drops it (raft-rs
//! resends what matters). One task per peer keeps a connection to it and
//! writes its queue on two streams: `control` (votes, heartbeats,
//! responses) and `append` (`MsgAppend`), so that a large append never
//! holds up a heartbeat behind it. A `MsgSnapshot` opens a stream of its
//! own that carries the snapshot's files after it ([`snapshot`]).
//!
//! Arriving messages are read from each stream of each authenticated
//! connection as frames, `u32 length (LE) | protobuf Message`, the length
//! checked before anything is allocated, and handed to the driver's inbox
//! with `try_send`: a tokio worker never waits on the driver.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crossbeam_channel::TrySendError;
use metrics::{counter, Counter};
use protobuf::Message as _;
use quinn::{Connection, Endpoint, Incoming, RecvStream, SendStream, VarInt};
use raft::eraftpb::{Message, MessageType};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::certs::{replica_name, ClusterTls};
use super::driver::Event;
use crate::telemetry::{
    REPLICA_CONNECTIONS_REFUSED_TOTAL, REPLICA_CONNECTIONS_TOTAL, REPLICA_MESSAGES_DROPPED_TOTAL,
    REPLICA_MESSAGES_RECEIVED_TOTAL, REPLICA_MESSAGES_SENT_TOTAL,
};

mod snapshot;
#[cfg(test)]
mod tests;

pub use snapshot::SnapshotIo;

/// The ALPN of replica-to-replica connections: a client of the order port
/// (`omniroute/1`) cannot speak to the replication port by mistake.
pub const ALPN: &[u8] = b"omniroute-raft/1";

/// Bytes of a frame's length prefix.
pub const FRAME_HEADER_BYTES: usize = 4;

/// The longest frame body read from a peer. raft-rs's `max_size_per_msg`
/// (1 MiB, `driver::config`) bounds the entries of one append, but always
/// lets one entry through whole, and an entry may be one record of up to
/// `MAX_RECORD_PAYLOAD_BYTES` (a large stock feed's transaction): 2 MiB
/// more covers the entry's other records and the message's own fields. A
/// longer length closes the connection before anything is allocated; a
/// longer message is not sent. It streams through the receive windows.
pub const MAX_FRAME_BYTES: usize = crate::journal::record::MAX_RECORD_PAYLOAD_BYTES + (2 << 20);

/// Messages one peer's queue holds on each of its two streams: a leader
/// sends at most `max_inflight_msgs` (256) appends to a follower plus a
/// heartbeat per tick, so 4096 is reached only while the peer is not
/// reading, and then dropping is right.
pub const PEER_QUEUE_MESSAGES: usize = 4096;

/// Bytes one peer's queue holds, both streams together: two of the
/// largest frames, or 64 appends of the usual 1 MiB. Without it 4096
/// queued appends could hold 4 GiB for a peer that is down.
pub const PEER_QUEUE_BYTES: usize = 2 * MAX_FRAME_BYTES;

/// Streams a peer may have open on a connection to us: its `control`,
/// `append` and snapshot streams, and room for the three it opens again
/// after a reset while the old ones drain.
pub const MAX_STREAMS_PER_PEER_CONNECTION: u32 = 6;

/// Handshakes in progress at once on the replication port. Only holders of
/// a CA-signed certificate get past one, so this bounds what a stranger
/// can make a replica do; a cluster has a few peers, each with one
/// connection in.
pub const MAX_PEER_HANDSHAKES_IN_FLIGHT: usize = 16;

/// How long a connection may hear nothing before it is dead: with a keep
/// alive every [`PEER_KEEP_ALIVE_MS`], a peer that is gone is noticed in
/// 2 s, four election timeouts' minimum (10 ticks of 50 ms), and a peer
/// that is merely slow is not.
pub const PEER_IDLE_TIMEOUT_MS: u64 = 2_000;

/// Keep-alive interval: a quarter of the idle timeout, so that three lost
/// in a row do not close a live connection.
pub const PEER_KEEP_ALIVE_MS: u64 = 500;

/// Bytes a peer may send on one stream ahead of our reading: four usual
/// appends (1 MiB), so one never waits a round trip for window; a larger
/// frame streams through it as it is read.
pub const PEER_STREAM_RECEIVE_WINDOW_BYTES: u32 = 4 << 20;

/// Bytes a peer may send on a connection ahead of our reading, all streams.
pub const PEER_RECEIVE_WINDOW_BYTES: u32 = 8 << 20;

/// First pause before connecting again to a peer that could not be
/// reached, doubled after each failure up to the maximum: a restarting
/// peer is found within a second, a peer that is down costs a handshake
/// attempt a second.
pub const PEER_RECONNECT_BACKOFF_MIN_MS: u64 = 50;
pub const PEER_RECONNECT_BACKOFF_MAX_MS: u64 = 1_000;

/// How long `shutdown` lets the endpoint send its connections' closes
/// before it returns: the close goes out at once, and peers that miss it
/// notice within their idle timeout anyway, so a stop is not held for the
/// QUIC draining period (three probe timeouts, seconds for a connection
/// still in its handshake).
pub const SHUTDOWN_DRAIN_MS: u64 = 250;

/// QUIC close codes of replica connections.
pub const CLOSE_SHUTDOWN: u32 = 0;
/// The certificate names no configured peer.
pub const CLOSE_UNKNOWN_PEER: u32 = 1;
/// A frame's length is over [`MAX_FRAME_BYTES`].
pub const CLOSE_FRAME_TOO_LARGE: u32 = 2;
/// A frame's body is not a raft-rs `Message`.
pub const CLOSE_MALFORMED: u32 = 3;
/// The peer connected again; its older connection is closed.
pub const CLOSE_SUPERSEDED: u32 = 4;

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The replica ids are not raft-rs's (0 is none) or name this replica
    /// as its own peer.
    #[error("replica id {id} refused: {reason}")]
    Id { id: u64, reason: &'static str },
    /// The replication port could not be bound.
    #[error("{address}: {source}")]
    Bind {
        address: SocketAddr,
        source: std::io::Error,
    },
    /// rustls or quinn refused the certificates or the configuration.
    #[error("TLS setup failed: {0}")]
    Tls(String),
    /// `start` was called outside a tokio runtime.
    #[error("the transport starts inside a tokio runtime")]
    NoRuntime,
}

/// What the transport counts; each is also a metric
/// (`omniroute_replica_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Count {
    /// Messages written to a peer's stream.
    Sent,
    /// Messages handed to the driver's inbox.
    Received,
    /// Dropped by `send`: the peer's queue was full.
    DroppedQueueFull,
    /// Dropped by `send`: `to` is no configured peer.
    DroppedUnknownPeer,
    /// Dropped by `send`: longer than [`MAX_FRAME_BYTES`].
    DroppedTooLarge,
    /// Dropped by `send` after shutdown, or queued while the peer could
    /// not be reached.
    DroppedPeerDown,
    /// Dropped: protobuf could not encode it.
    DroppedUnencodable,
    /// Received and dropped: `from` is not the connection's peer, or `to`
    /// is not this replica.
    DroppedWrongPeer,
    /// Received and dropped: the driver's inbox was full or closed.
    DroppedInboxFull,
    /// Connections made to a peer.
    ConnectionsOutbound,
    /// Connections accepted from an authenticated peer.
    ConnectionsInbound,
    /// Connections refused: [`MAX_PEER_HANDSHAKES_IN_FLIGHT`] reached.
    RefusedBusy,
    /// Handshakes that failed (no certificate, or one the CA did not sign).
    RefusedHandshake,
    /// Closed with [`CLOSE_UNKNOWN_PEER`].
    RefusedUnknownPeer,
    /// Closed with [`CLOSE_FRAME_TOO_LARGE`].
    RefusedFrameTooLarge,
    /// Closed with [`CLOSE_MALFORMED`].
    RefusedMalformed,
}

impl Count {
    const ALL: [Count; 16] = [
        Count::Sent,
        Count::Received,
        Count::DroppedQueueFull,
        Count::DroppedUnknownPeer,
        Count::DroppedTooLarge,
        Count::DroppedPeerDown,
        Count::DroppedUnencodable,
        Count::DroppedWrongPeer,
        Count::DroppedInboxFull,
        Count::ConnectionsOutbound,
        Count::ConnectionsInbound,
        Count::RefusedBusy,
        Count::RefusedHandshake,
        Count::RefusedUnknownPeer,
        Count::RefusedFrameTooLarge,
        Count::RefusedMalformed,
    ];

    fn metric(self) -> Counter {
        let dropped =
            |reason: &'static str| counter!(REPLICA_MESSAGES_DROPPED_TOTAL, "reason" => reason);
        let connected =
            |direction: &'static str| counter!(REPLICA_CONNECTIONS_TOTAL, "direction" => direction);
        let refused =
            |reason: &'static str| counter!(REPLICA_CONNECTIONS_REFUSED_TOTAL, "reason" => reason);
        match self {
            Count::Sent => counter!(REPLICA_MESSAGES_SENT_TOTAL),
            Count::Received => counter!(REPLICA_MESSAGES_RECEIVED_TOTAL),
            Count::DroppedQueueFull => dropped("queue_full"),
            Count::DroppedUnknownPeer => dropped("unknown_peer"),
            Count::DroppedTooLarge => dropped("too_large"),
            Count::DroppedPeerDown => dropped("peer_down"),
            Count::DroppedUnencodable => dropped("unencodable"),
            Count::DroppedWrongPeer => dropped("wrong_peer"),
            Count::DroppedInboxFull => dropped("inbox_full"),
            Count::ConnectionsOutbound => connected("outbound"),
            Count::ConnectionsInbound => connected("inbound"),
            Count::RefusedBusy => refused("busy"),
            Count::RefusedHandshake => refused("handshake"),
            Count::RefusedUnknownPeer => refused("unknown_peer"),
            Count::RefusedFrameTooLarge => refused("frame_too_large"),
            Count::RefusedMalformed => refused("malformed"),
        }
    }
}

/// One transport's counts, each beside its metric handle (resolved once):
/// the metrics are process-wide, these are this transport's own.
struct Tallies {
    /// This transport's counts, by `Count as usize`.
    totals: [AtomicU64; Count::ALL.len()],
    /// The process-wide metric each count also adds to.
    metrics: [Counter; Count::ALL.len()],
}

impl Tallies {
    fn new() -> Tallies {
        Tallies {
            totals: std::array::from_fn(|_| AtomicU64::new(0)),
            metrics: Count::ALL.map(Count::metric),
        }
    }

    fn add(&self, count: Count, n: u64) {
        self.totals[count as usize].fetch_add(n, Ordering::Relaxed);
        self.metrics[count as usize].increment(n);
    }

    fn get(&self, count: Count) -> u64 {
        self.totals[count as usize].load(Ordering::Relaxed)
    }
}

/// Which of a peer's two streams a message takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lane {
    /// Votes, heartbeats, responses: small, and late ones cost elections.
    Control,
    /// Appends and snapshots: large, and fine a little later.
    Append,
}

impl Lane {
    pub fn of(message_type: MessageType) -> Lane {
        match message_type {
            MessageType::MsgAppend | MessageType::MsgSnapshot => Lane::Append,
            _ => Lane::Control,
        }
    }
}

/// A message waiting in a peer's queue, with the bytes it holds there.
struct Queued {
    message: Message,
    /// Its encoded size, counted against [`PEER_QUEUE_BYTES`].
    bytes: usize,
}

/// The sending half of one peer's queue.
struct PeerQueue {
    /// Every message but appends and snapshots, at most
    /// [`PEER_QUEUE_MESSAGES`].
    control: mpsc::Sender<Queued>,
    /// Appends and snapshots, at most [`PEER_QUEUE_MESSAGES`].
    append: mpsc::Sender<Queued>,
    /// Bytes queued on both lanes; [`PEER_QUEUE_BYTES`] at most.
    queued_bytes: Arc<AtomicUsize>,
    /// A snapshot to stream: one at a time (raft-rs sends a peer no other
    /// until it hears how this one went).
    snapshot: mpsc::Sender<Message>,
}

/// The receiving half, owned by the peer's task.
struct QueueReceivers {
    /// Written on the connection's control stream.
    control: mpsc::Receiver<Queued>,
    /// Written on the connection's append stream.
    append: mpsc::Receiver<Queued>,
    /// Lowered as messages leave the queue.
    queued_bytes: Arc<AtomicUsize>,
    /// Each streamed on a new stream of the connection.
    snapshot: mpsc::Receiver<Message>,
}

impl QueueReceivers {
    /// Drops what is queued: it waited for a peer that could not be
    /// reached, and raft-rs sends what is still needed again.
    fn discard(&mut self, tallies: &Tallies, io: Option<&SnapshotIo>) {
        let mut dropped = 0;
        for lane in [&mut self.control, &mut self.append] {
            while let Ok(queued) = lane.try_recv() {
                self.queued_bytes.fetch_sub(queued.bytes, Ordering::Relaxed);
                dropped += 1;
            }
        }
        while let Ok(message) = self.snapshot.try_recv() {
            // Told as failed: raft-rs sends it again later.
            drop(snapshot::Report::new(&message, io));
            dropped += 1;
        }
        tallies.add(Count::DroppedPeerDown, dropped);
    }
}

/// Where the driver sends its messages: every peer's queue. Cheap to clone.
#[derive(Clone)]
pub struct PeerSender {
    /// Each configured peer's queue, by replica id.
    peers: Arc<BTreeMap<u64, PeerQueue>>,
    /// Shared with the transport's tasks.
    tallies: Arc<Tallies>,
    /// Where snapshots are read from and their outcomes told.
    snapshots: Option<SnapshotIo>,
}

impl PeerSender {
    /// Queues each message for its peer (`to`), never waiting: a message
    /// for no configured peer, too large to send, or finding its peer's
    /// queue full is dropped and counted.
    pub fn send(&self, messages: Vec<Message>) {
        for message in messages {
            match self.peers.get(&message.to) {
                Some(queue) => self.enqueue(queue, message),
                None => self.tallies.add(Count::DroppedUnknownPeer, 1),
            }
        }
    }

    fn enqueue(&self, queue: &PeerQueue, message: Message) {
        if message.get_msg_type() == MessageType::MsgSnapshot {
            if self.snapshots.is_none() {
                tracing::warn!(
                    to = message.to,
                    "a snapshot to send, and no files to send it from"
                );
            }
            if let Err(refused) = queue.snapshot.try_send(message) {
                let message = match refused {
                    mpsc::error::TrySendError::Full(m) | mpsc::error::TrySendError::Closed(m) => m,
                };
                drop(snapshot::Report::new(&message, self.snapshots.as_ref()));
                self.tallies.add(Count::DroppedQueueFull, 1);
            }
            return;
        }
        let bytes = message.compute_size() as usize;
        if bytes > MAX_FRAME_BYTES {
            tracing::warn!(to = message.to, bytes, "raft message too large to send");
            return self.tallies.add(Count::DroppedTooLarge, 1);
        }
        let before = queue.queued_bytes.fetch_add(bytes, Ordering::Relaxed);
        if before + bytes > PEER_QUEUE_BYTES {
            queue.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
            return self.tallies.add(Count::DroppedQueueFull, 1);
        }
        let lane = match Lane::of(message.get_msg_type()) {
            Lane::Control => &queue.control,
            Lane::Append => &queue.append,
        };
        if let Err(refused) = lane.try_send(Queued { message, bytes }) {
            queue.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
            let count = match refused {
                mpsc::error::TrySendError::Full(_) => Count::DroppedQueueFull,
                mpsc::error::TrySendError::Closed(_) => Count::DroppedPeerDown,
            };
            self.tallies.add(count, 1);
        }
    }

    /// This transport's count of `count`.
    pub fn count(&self, count: Count) -> u64 {
        self.tallies.get(count)
    }
}

/// A queue per peer: the sender for the driver, the receivers for the
/// peers' tasks.
fn queues(
    peers: impl Iterator<Item = u64>,
    tallies: Arc<Tallies>,
    snapshots: Option<SnapshotIo>,
) -> (PeerSender, BTreeMap<u64, QueueReceivers>) {
    let mut senders = BTreeMap::new();
    let mut receivers = BTreeMap::new();
    for peer in peers {
        let (control, control_receiver) = mpsc::channel(PEER_QUEUE_MESSAGES);
        let (append, append_receiver) = mpsc::channel(PEER_QUEUE_MESSAGES);
        let (snapshot, snapshot_receiver) = mpsc::channel(1);
        let queued_bytes = Arc::new(AtomicUsize::new(0));
        let queue = PeerQueue {
            control,
            append,
            queued_bytes: queued_bytes.clone(),
            snapshot,
        };
        senders.insert(peer, queue);
        let receiver = QueueReceivers {
            control: control_receiver,
            append: append_receiver,
            queued_bytes,
            snapshot: snapshot_receiver,
        };
        receivers.insert(peer, receiver);
    }
    let sender = PeerSender {
        peers: Arc::new(senders),
        tallies,
        snapshots,
    };
    (sender, receivers)
}

/// A replica's end of the replication network.
pub struct Transport {
    /// The one QUIC endpoint: accepts peers' connections and makes ours.
    endpoint: Endpoint,
    /// The queues the peers' tasks drain; its counts are the transport's.
    sender: PeerSender,
    /// Tells every task to end.
    cancel: CancellationToken,
    /// Every task, so that `shutdown` knows when the last one is gone.
    tasks: TaskTracker,
}

impl Transport {
    /// Binds `listen` and starts: a task per peer connecting to its address
    /// in `peers`, and one accepting connections; arriving messages go to
    /// `inbox`; snapshots are sent from and received into `snapshots`'
    /// directory (without it they are neither). Called inside a tokio
    /// runtime.
    pub fn start(
        id: u64,
        listen: SocketAddr,
        peers: BTreeMap<u64, SocketAddr>,
        tls: &ClusterTls,
        inbox: crossbeam_channel::Sender<Event>,
        snapshots: Option<SnapshotIo>,
    ) -> Result<Transport, TransportError> {
        let socket = UdpSocket::bind(listen).map_err(|source| TransportError::Bind {
            address: listen,
            source,
        })?;
        Transport::start_on(id, socket, peers, tls, inbox, snapshots)
    }

    /// `start` on a socket already bound (tests bind theirs first, to know
    /// every replica's port before any starts).
    fn start_on(
        id: u64,
        socket: UdpSocket,
        peers: BTreeMap<u64, SocketAddr>,
        tls: &ClusterTls,
        inbox: crossbeam_channel::Sender<Event>,
        snapshots: Option<SnapshotIo>,
    ) -> Result<Transport, TransportError> {
        check_ids(id, &peers)?;
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(TransportError::NoRuntime);
        }
        let address = socket.local_addr().ok();
        let runtime = Arc::new(quinn::TokioRuntime);
        let server = Some(server_config(tls)?);
        let mut endpoint = Endpoint::new(quinn::EndpointConfig::default(), server, socket, runtime)
            .map_err(|source| TransportError::Bind {
                address: address.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0))),
                source,
            })?;
        endpoint.set_default_client_config(client_config(tls)?);

        let tallies = Arc::new(Tallies::new());
        let cancel = CancellationToken::new();
        let tasks = TaskTracker::new();
        let (sender, receivers) = queues(peers.keys().copied(), tallies.clone(), snapshots.clone());
        for (peer, queue) in receivers {
            let link = Link {
                peer,
                address: peers[&peer],
                endpoint: endpoint.clone(),
                tallies: tallies.clone(),
                cancel: cancel.clone(),
                snapshots: snapshots.clone(),
            };
            tasks.spawn(link.run(queue));
        }
        let inbound = Arc::new(Inbound {
            id,
            peers: peers.keys().copied().collect(),
            inbox,
            tallies,
            current: Mutex::new(BTreeMap::new()),
            handshakes: Arc::new(Semaphore::new(MAX_PEER_HANDSHAKES_IN_FLIGHT)),
            cancel: cancel.clone(),
            tasks: tasks.clone(),
            snapshots,
            receiving: Arc::new(Semaphore::new(1)),
            transfers: AtomicU64::new(0),
        });
        tasks.spawn(accept_loop(endpoint.clone(), inbound));
        Ok(Transport {
            endpoint,
            sender,
            cancel,
            tasks,
        })
    }

    /// Where the driver sends its messages.
    pub fn sender(&self) -> PeerSender {
        self.sender.clone()
    }

    /// The address the replication port is bound to.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// This transport's count of `count`.
    pub fn count(&self, count: Count) -> u64 {
        self.sender.count(count)
    }

    /// Closes every connection and the port, and returns when every task
    /// has ended and the closes are sent (at most [`SHUTDOWN_DRAIN_MS`]
    /// after). Messages sent after it are dropped.
    pub async fn shutdown(self) {
        self.stop();
        self.tasks.close();
        self.tasks.wait().await;
        let drain = Duration::from_millis(SHUTDOWN_DRAIN_MS);
        let _ = tokio::time::timeout(drain, self.endpoint.wait_idle()).await;
    }

    fn stop(&self) {
        self.cancel.cancel();
        self.endpoint
            .close(VarInt::from_u32(CLOSE_SHUTDOWN), b"shutdown");
    }
}

impl Drop for Transport {
    /// A transport dropped without `shutdown` still ends its tasks.
    fn drop(&mut self) {
        self.stop();
    }
}

fn check_ids(id: u64, peers: &BTreeMap<u64, SocketAddr>) -> Result<(), TransportError> {
    if id == 0 || peers.contains_key(&0) {
        return Err(TransportError::Id {
            id: 0,
            reason: "0 is no replica in raft-rs",
        });
    }
    if peers.contains_key(&id) {
        return Err(TransportError::Id {
            id,
            reason: "a replica is not its own peer",
        });
    }
    Ok(())
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

// ---- QUIC and TLS configuration ----

fn tls_error(error: impl std::fmt::Display) -> TransportError {
    TransportError::Tls(error.to_string())
}

fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Accepting: TLS 1.3, a client certificate the cluster CA signed
/// required, our ALPN; peers may open a few uni streams and no others.
fn server_config(tls: &ClusterTls) -> Result<quinn::ServerConfig, TransportError> {
    let provider = crypto_provider();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(tls.roots.clone()),
        provider.clone(),
    )
    .build()
    .map_err(tls_error)?;
    let mut crypto = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_error)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(tls.certificates.clone(), tls.key.clone_key())
        .map_err(tls_error)?;
    crypto.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(crypto).map_err(tls_error)?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config
        .transport_config(Arc::new(peer_transport(MAX_STREAMS_PER_PEER_CONNECTION)))
        .max_incoming(MAX_PEER_HANDSHAKES_IN_FLIGHT);
    Ok(config)
}

/// Connecting: TLS 1.3, the server's certificate checked against the
/// cluster CA (and the name connected to, `replica-<peer>`), ours
/// presented; the peer may open no stream on our connection.
fn client_config(tls: &ClusterTls) -> Result<quinn::ClientConfig, TransportError> {
    let mut crypto = rustls::ClientConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_error)?
        .with_root_certificates(tls.roots.clone())
        .with_client_auth_cert(tls.certificates.clone(), tls.key.clone_key())
        .map_err(tls_error)?;
    crypto.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(crypto).map_err(tls_error)?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(Arc::new(peer_transport(0)));
    Ok(config)
}

fn peer_transport(uni_streams: u32) -> quinn::TransportConfig {
    let idle = Duration::from_millis(PEER_IDLE_TIMEOUT_MS);
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(VarInt::from_u32(0))
        .max_concurrent_uni_streams(VarInt::from_u32(uni_streams))
        .stream_receive_window(VarInt::from_u32(PEER_STREAM_RECEIVE_WINDOW_BYTES))
        .receive_window(VarInt::from_u32(PEER_RECEIVE_WINDOW_BYTES))
        .send_window(u64::from(PEER_RECEIVE_WINDOW_BYTES))
        .max_idle_timeout(Some(idle.try_into().expect("2 s is a QUIC idle timeout")))
        .keep_alive_interval(Some(Duration::from_millis(PEER_KEEP_ALIVE_MS)));
    transport
}

// ---- Sending: a task per peer ----

/// Why a connection to a peer ended.
#[derive(Debug, thiserror::Error)]
enum LinkError {
    #[error(transparent)]
    Connect(#[from] quinn::ConnectError),
    #[error(transparent)]
    Connection(#[from] quinn::ConnectionError),
    #[error(transparent)]
    Write(#[from] quinn::WriteError),
}

/// One peer's task: keeps a connection to it and writes its queue.
struct Link {
    /// The peer's replica id: the name its certificate must carry.
    peer: u64,
    /// Where the peer listens.
    address: SocketAddr,
    /// The transport's endpoint, with our client certificate.
    endpoint: Endpoint,
    tallies: Arc<Tallies>,
    /// Ends the task at shutdown.
    cancel: CancellationToken,
    /// Where snapshots are read from and their outcomes told.
    snapshots: Option<SnapshotIo>,
}

impl Link {
    /// Connects, writes until the connection dies, connects again; pauses
    /// (doubling) after a failure or a short-lived connection, so a peer
    /// that is down or refuses us costs a handshake a second at most.
    async fn run(self, mut queue: QueueReceivers) {
        let min = Duration::from_millis(PEER_RECONNECT_BACKOFF_MIN_MS);
        let max = Duration::from_millis(PEER_RECONNECT_BACKOFF_MAX_MS);
        let mut backoff = min;
        loop {
            let attempt = tokio::select! {
                _ = self.cancel.cancelled() => return,
                attempt = self.connect() => attempt,
            };
            match attempt {
                Ok(connection) => {
                    let since = Instant::now();
                    let end = tokio::select! {
                        _ = self.cancel.cancelled() => return,
                        end = self.pump(&connection, &mut queue) => end,
                    };
                    match end {
                        // Every sender is gone: nothing will be sent again.
                        Ok(()) => return,
                        Err(error) => {
                            tracing::debug!(peer = self.peer, %error, "replica link lost")
                        }
                    }
                    if since.elapsed() >= max {
                        backoff = min;
                    }
                }
                Err(error) => {
                    tracing::debug!(peer = self.peer, %error, "replica unreachable");
                    queue.discard(&self.tallies, self.snapshots.as_ref());
                }
            }
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(max);
        }
    }

    async fn connect(&self) -> Result<Connection, LinkError> {
        let connecting = self
            .endpoint
            .connect(self.address, &replica_name(self.peer))?;
        let connection = connecting.await?;
        self.tallies.add(Count::ConnectionsOutbound, 1);
        tracing::info!(peer = self.peer, address = %self.address, "connected to replica");
        Ok(connection)
    }

    /// Writes both lanes on their own streams until the connection dies
    /// (`Err`) or every sender is gone (`Ok`).
    async fn pump(
        &self,
        connection: &Connection,
        queue: &mut QueueReceivers,
    ) -> Result<(), LinkError> {
        let control = connection.open_uni().await?;
        let append = connection.open_uni().await?;
        // When both have data QUIC sends the control stream's first.
        let _ = control.set_priority(1);
        let QueueReceivers {
            control: control_queue,
            append: append_queue,
            queued_bytes,
            snapshot: snapshot_queue,
        } = queue;
        tokio::select! {
            end = self.write_lane(control, control_queue, queued_bytes) => end,
            end = self.write_lane(append, append_queue, queued_bytes) => end,
            end = self.send_snapshots(connection, snapshot_queue) => end,
            error = connection.closed() => Err(error.into()),
        }
    }

    /// Streams each snapshot queued, one at a time, beside the other two
    /// lanes; the driver hears how each went (a transfer cut short by the
    /// connection's end is told as failed when it is dropped).
    async fn send_snapshots(
        &self,
        connection: &Connection,
        queue: &mut mpsc::Receiver<Message>,
    ) -> Result<(), LinkError> {
        while let Some(message) = queue.recv().await {
            let report = snapshot::Report::new(&message, self.snapshots.as_ref());
            let Some(io) = &self.snapshots else { continue };
            let index = message.get_snapshot().get_metadata().index;
            match snapshot::send(connection, &message, &io.dir).await {
                Ok(()) => {
                    tracing::info!(peer = self.peer, index, "snapshot delivered to replica");
                    report.delivered();
                }
                Err(error) => {
                    tracing::warn!(peer = self.peer, index, %error, "snapshot not delivered to replica")
                }
            }
        }
        Ok(())
    }

    async fn write_lane(
        &self,
        mut stream: SendStream,
        lane: &mut mpsc::Receiver<Queued>,
        queued_bytes: &AtomicUsize,
    ) -> Result<(), LinkError> {
        while let Some(queued) = lane.recv().await {
            queued_bytes.fetch_sub(queued.bytes, Ordering::Relaxed);
            let Ok(body) = queued.message.write_to_bytes() else {
                self.tallies.add(Count::DroppedUnencodable, 1);
                continue;
            };
            // `enqueue` refused bodies over MAX_FRAME_BYTES, so this fits.
            let length = u32::try_from(body.len()).expect("a frame is under 4 GiB");
            stream.write_all(&length.to_le_bytes()).await?;
            stream.write_all(&body).await?;
            self.tallies.add(Count::Sent, 1);
        }
        Ok(())
    }
}

// ---- Receiving: connections from authenticated peers ----

/// What the accepting tasks share.
struct Inbound {
    /// This replica: every message received must be to it.
    id: u64,
    /// The replicas a connection may be from.
    peers: BTreeSet<u64>,
    /// The driver's inbox: `try_send` only.
    inbox: crossbeam_channel::Sender<Event>,
    tallies: Arc<Tallies>,
    /// Each peer's newest connection: one connected again closes its older
    /// one, so a peer holds one connection in.
    current: Mutex<BTreeMap<u64, Connection>>,
    /// [`MAX_PEER_HANDSHAKES_IN_FLIGHT`] permits, one per handshake.
    handshakes: Arc<Semaphore>,
    /// Ends every accepting and reading task at shutdown.
    cancel: CancellationToken,
    /// Where connection and stream tasks are spawned.
    tasks: TaskTracker,
    /// Where snapshots are received into (none: refused).
    snapshots: Option<SnapshotIo>,
    /// One snapshot received at a time.
    receiving: Arc<Semaphore>,
    /// Numbers each transfer's staging directory.
    transfers: AtomicU64,
}

/// Accepts connections until shutdown, at most
/// [`MAX_PEER_HANDSHAKES_IN_FLIGHT`] handshakes at once.
async fn accept_loop(endpoint: Endpoint, inbound: Arc<Inbound>) {
    loop {
        let incoming = tokio::select! {
            _ = inbound.cancel.cancelled() => return,
            incoming = endpoint.accept() => incoming,
        };
        let Some(incoming) = incoming else { return };
        let Ok(permit) = inbound.handshakes.clone().try_acquire_owned() else {
            inbound.tallies.add(Count::RefusedBusy, 1);
            incoming.refuse();
            continue;
        };
        let task = serve_connection(incoming, permit, inbound.clone());
        inbound.tasks.spawn(task);
    }
}

/// Completes the handshake (the peer's certificate verified against the
/// CA by rustls), finds which peer it is, and reads each stream it opens.
async fn serve_connection(incoming: Incoming, permit: OwnedSemaphorePermit, inbound: Arc<Inbound>) {
    let connection = match incoming.await {
        Ok(connection) => connection,
        Err(error) => {
            tracing::debug!(%error, "replica handshake failed");
            return inbound.tallies.add(Count::RefusedHandshake, 1);
        }
    };
    drop(permit);
    let Some(peer) = authenticated_peer(&connection, &inbound.peers) else {
        tracing::warn!(address = %connection.remote_address(), "a certificate naming no peer");
        inbound.tallies.add(Count::RefusedUnknownPeer, 1);
        return connection.close(VarInt::from_u32(CLOSE_UNKNOWN_PEER), b"unknown peer");
    };
    inbound.tallies.add(Count::ConnectionsInbound, 1);
    if let Some(older) = lock(&inbound.current).insert(peer, connection.clone()) {
        older.close(VarInt::from_u32(CLOSE_SUPERSEDED), b"superseded");
    }
    loop {
        let stream = tokio::select! {
            _ = inbound.cancel.cancelled() => break,
            stream = connection.accept_uni() => stream,
        };
        let Ok(stream) = stream else { break };
        let task = read_stream(peer, stream, connection.clone(), inbound.clone());
        inbound.tasks.spawn(task);
    }
    let mut current = lock(&inbound.current);
    if current.get(&peer).map(Connection::stable_id) == Some(connection.stable_id()) {
        current.remove(&peer);
    }
}

/// The configured peer the connection's certificate names, if exactly
/// one. rustls has verified the certificate's chain to the cluster CA in
/// the handshake; its name (`replica-<id>`) says which replica holds it.
fn authenticated_peer(connection: &Connection, peers: &BTreeSet<u64>) -> Option<u64> {
    let identity = connection.peer_identity()?;
    let chain = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    let leaf = rustls::server::ParsedCertificate::try_from(chain.first()?).ok()?;
    let mut named = peers.iter().copied().filter(|&peer| {
        ServerName::try_from(replica_name(peer))
            .is_ok_and(|name| rustls::client::verify_server_name(&leaf, &name).is_ok())
    });
    let peer = named.next()?;
    named.next().is_none().then_some(peer)
}

/// Why a peer's stream stopped being read.
enum StreamEnd {
    /// The stream finished, or the connection is gone.
    Closed,
    /// A length over [`MAX_FRAME_BYTES`].
    TooLarge(usize),
    /// A body that is not a `Message`.
    Malformed,
    /// The stream's first frame is a `MsgSnapshot`: its files follow.
    Snapshot(Box<Message>),
}

/// Reads one stream's frames; a frame too large or malformed closes the
/// whole connection (the peer is broken or hostile, and the stream's
/// framing can no longer be trusted).
async fn read_stream(
    peer: u64,
    mut stream: RecvStream,
    connection: Connection,
    inbound: Arc<Inbound>,
) {
    let end = tokio::select! {
        _ = inbound.cancel.cancelled() => return,
        end = read_frames(peer, &mut stream, &inbound) => end,
    };
    let (code, reason, count): (u32, &[u8], Count) = match end {
        StreamEnd::Closed => return,
        StreamEnd::Snapshot(message) => {
            return tokio::select! {
                _ = inbound.cancel.cancelled() => {}
                _ = inbound.receive_snapshot(peer, stream, *message) => {}
            };
        }
        StreamEnd::TooLarge(length) => {
            tracing::warn!(peer, length, "frame too large from replica");
            (
                CLOSE_FRAME_TOO_LARGE,
                b"frame too large",
                Count::RefusedFrameTooLarge,
            )
        }
        StreamEnd::Malformed => {
            tracing::warn!(peer, "malformed frame from replica");
            (CLOSE_MALFORMED, b"malformed frame", Count::RefusedMalformed)
        }
    };
    // Counted first: whoever sees the close sees the count.
    inbound.tallies.add(count, 1);
    connection.close(VarInt::from_u32(code), reason);
}

async fn read_frames(peer: u64, stream: &mut RecvStream, inbound: &Inbound) -> StreamEnd {
    let mut header = [0u8; FRAME_HEADER_BYTES];
    let mut first = true;
    loop {
        if stream.read_exact(&mut header).await.is_err() {
            return StreamEnd::Closed;
        }
        // Checked before the body is allocated or read.
        let length = u32::from_le_bytes(header) as usize;
        if length > MAX_FRAME_BYTES {
            return StreamEnd::TooLarge(length);
        }
        let mut body = vec![0; length];
        if stream.read_exact(&mut body).await.is_err() {
            return StreamEnd::Closed;
        }
        let Ok(message) = Message::parse_from_bytes(&body) else {
            return StreamEnd::Malformed;
        };
        if message.get_msg_type() == MessageType::MsgSnapshot {
            if first {
                return StreamEnd::Snapshot(Box::new(message));
            }
            // A snapshot's files never follow other frames.
            return StreamEnd::Malformed;
        }
        first = false;
        inbound.deliver(peer, message);
    }
}

impl Inbound {
    /// Receives the snapshot `message` announces, one at a time, and hands
    /// it to the driver once its files are staged, whole and synced; a
    /// refused one stops the stream.
    async fn receive_snapshot(&self, peer: u64, mut stream: RecvStream, message: Message) {
        let outcome = |outcome: &'static str| {
            counter!(crate::telemetry::REPLICA_SNAPSHOTS_RECEIVED_TOTAL, "outcome" => outcome)
                .increment(1)
        };
        let index = message.get_snapshot().get_metadata().index;
        let from_peer = message.from == peer && message.to == self.id;
        let (Some(io), true) = (&self.snapshots, from_peer) else {
            self.tallies.add(Count::DroppedWrongPeer, 1);
            let _ = stream.stop(snapshot::refused());
            return outcome("refused");
        };
        let Ok(_permit) = self.receiving.clone().try_acquire_owned() else {
            let _ = stream.stop(VarInt::from_u32(snapshot::STOP_SNAPSHOT_BUSY));
            return outcome("busy");
        };
        let transfer = self.transfers.fetch_add(1, Ordering::Relaxed);
        match snapshot::receive(&mut stream, &message, &io.dir, io.layout, transfer).await {
            Ok(staged) => {
                tracing::info!(peer, index, "snapshot received from replica");
                outcome("staged");
                let event = Event::Snapshot(Box::new(message), staged.clone());
                if self.inbox.try_send(event).is_ok() {
                    let _ = stream.stop(snapshot::staged());
                } else {
                    self.tallies.add(Count::DroppedInboxFull, 1);
                    let _ = stream.stop(snapshot::refused());
                    let _ =
                        tokio::task::spawn_blocking(move || std::fs::remove_dir_all(staged)).await;
                }
            }
            Err(error) => {
                tracing::warn!(peer, index, %error, "snapshot from replica refused");
                let _ = stream.stop(snapshot::refused());
                outcome("refused");
            }
        }
    }

    /// Hands a message to the driver if it is from the connection's peer
    /// and to this replica; never waits (this is a tokio worker).
    fn deliver(&self, peer: u64, message: Message) {
        if message.from != peer || message.to != self.id {
            tracing::debug!(
                peer,
                from = message.from,
                to = message.to,
                "message refused"
            );
            return self.tallies.add(Count::DroppedWrongPeer, 1);
        }
        match self.inbox.try_send(Event::Peer(Box::new(message))) {
            Ok(()) => self.tallies.add(Count::Received, 1),
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.tallies.add(Count::DroppedInboxFull, 1)
            }
        }
    }
}
