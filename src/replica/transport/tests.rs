//! Real QUIC over loopback: transports with certificates from
//! `certs::generate`, and raw clients that speak bytes the transport must
//! refuse. Every socket is bound to 127.0.0.1:0 first, so that each
//! replica's address is known before any starts; every wait is bounded.

use std::future::Future;
use std::path::{Path, PathBuf};

use raft::eraftpb::Entry;

use super::*;
use crate::replica::certs::{generate, replica_files, CA_CERT_FILE};
use crate::replica::driver::INBOX_EVENTS;
use crate::scratch::Scratch;

/// The longest any test may take before it fails.
const TEST_DEADLINE: Duration = Duration::from_secs(30);
/// How long a message that should arrive may take.
const ARRIVAL: Duration = Duration::from_secs(10);
/// How long a test watches for a message that must not arrive.
const QUIET: Duration = Duration::from_millis(300);

async fn bounded<F: Future>(test: F) -> F::Output {
    tokio::time::timeout(TEST_DEADLINE, test)
        .await
        .expect("the test finished within its deadline")
}

/// A cluster's certificate directory.
struct Certs {
    scratch: Scratch,
}

impl Certs {
    fn new(name: &str, ids: &[u64]) -> Certs {
        let scratch = Scratch::new(name);
        let dir = scratch.0.join("certs");
        generate(&dir, ids).expect("certificates generated");
        Certs { scratch }
    }

    fn dir(&self) -> PathBuf {
        self.scratch.0.join("certs")
    }

    fn ca(&self) -> PathBuf {
        self.dir().join(CA_CERT_FILE)
    }

    /// Replica `id`'s TLS: trusts `ca`, presents its own certificate.
    fn tls_trusting(&self, ca: &Path, id: u64) -> ClusterTls {
        let (cert, key) = replica_files(&self.dir(), id);
        ClusterTls::load(ca, &cert, &key).expect("certificates load")
    }

    fn tls(&self, id: u64) -> ClusterTls {
        self.tls_trusting(&self.ca(), id)
    }
}

fn reserve() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").expect("a loopback port")
}

fn address(socket: &UdpSocket) -> SocketAddr {
    socket.local_addr().expect("bound")
}

type Inbox = crossbeam_channel::Receiver<Event>;

fn start(
    id: u64,
    socket: UdpSocket,
    peers: &[(u64, SocketAddr)],
    tls: &ClusterTls,
) -> (Transport, Inbox) {
    let (inbox, events) = crossbeam_channel::bounded(INBOX_EVENTS);
    let peers = peers.iter().copied().collect();
    let transport =
        Transport::start_on(id, socket, peers, tls, inbox, None).expect("transport starts");
    (transport, events)
}

/// The next message in `inbox` within `within`, polled without blocking a
/// tokio worker.
async fn next_message(inbox: &Inbox, within: Duration) -> Option<Message> {
    let deadline = Instant::now() + within;
    loop {
        match inbox.try_recv() {
            Ok(Event::Peer(message)) => return Some(*message),
            Ok(_) => panic!("the transport sends only peer messages"),
            Err(_) if Instant::now() >= deadline => return None,
            Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
}

/// Waits until `condition` holds, for at most `within`.
async fn eventually(within: Duration, condition: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while !condition() {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}

fn message(kind: MessageType, from: u64, to: u64, commit: u64) -> Message {
    let mut message = Message::default();
    message.set_msg_type(kind);
    message.from = from;
    message.to = to;
    message.commit = commit;
    if kind == MessageType::MsgAppend {
        let entry = Entry {
            index: commit,
            data: vec![from as u8; 64 << 10].into(),
            ..Entry::default()
        };
        message.entries = vec![entry].into();
    }
    message
}

fn heartbeat(from: u64, to: u64, commit: u64) -> Message {
    message(MessageType::MsgHeartbeat, from, to, commit)
}

/// A raw QUIC connection to `address` as the holder of `tls`, named
/// `server_name`: to write bytes no transport would.
async fn raw_connection(tls: &ClusterTls, address: SocketAddr, server_name: &str) -> Connection {
    let endpoint = Endpoint::client("127.0.0.1:0".parse().unwrap()).expect("a client endpoint");
    let config = client_config(tls).expect("client config");
    endpoint
        .connect_with(config, address, server_name)
        .expect("connect")
        .await
        .expect("the handshake succeeds")
}

async fn write_frame(stream: &mut SendStream, message: &Message) {
    let body = message.write_to_bytes().unwrap();
    stream
        .write_all(&(body.len() as u32).to_le_bytes())
        .await
        .unwrap();
    stream.write_all(&body).await.unwrap();
}

// Three transports send each other a heartbeat (control stream) and an
// append (append stream) both ways: each inbox gets exactly the four
// messages addressed to it, from the right peers, intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_exchange_on_both_streams() {
    bounded(async {
        let certs = Certs::new("transport-three", &[1, 2, 3]);
        let sockets: Vec<UdpSocket> = (0..3).map(|_| reserve()).collect();
        let addresses: Vec<(u64, SocketAddr)> = (1..=3).zip(sockets.iter().map(address)).collect();
        let mut replicas = Vec::new();
        for (socket, &(id, _)) in sockets.into_iter().zip(&addresses) {
            let peers: Vec<_> = addresses
                .iter()
                .copied()
                .filter(|&(p, _)| p != id)
                .collect();
            replicas.push(start(id, socket, &peers, &certs.tls(id)));
        }
        for (at, (transport, _)) in replicas.iter().enumerate() {
            let id = at as u64 + 1;
            let mut messages = Vec::new();
            for to in (1..=3).filter(|&to| to != id) {
                messages.push(heartbeat(id, to, id * 10 + to));
                messages.push(message(MessageType::MsgAppend, id, to, id * 100 + to));
            }
            transport.sender().send(messages);
        }
        for (at, (transport, inbox)) in replicas.iter().enumerate() {
            let id = at as u64 + 1;
            let mut got = Vec::new();
            for _ in 0..4 {
                let message = next_message(inbox, ARRIVAL)
                    .await
                    .expect("a message arrives");
                assert_eq!(message.to, id);
                if message.get_msg_type() == MessageType::MsgAppend {
                    assert_eq!(message.entries[0].data.len(), 64 << 10);
                    assert!(message.entries[0]
                        .data
                        .iter()
                        .all(|&b| b == message.from as u8));
                }
                got.push((message.from, message.get_msg_type(), message.commit));
            }
            got.sort_by_key(|&(from, _, commit)| (from, commit));
            let mut expected = Vec::new();
            for from in (1..=3).filter(|&from| from != id) {
                expected.push((from, MessageType::MsgHeartbeat, from * 10 + id));
                expected.push((from, MessageType::MsgAppend, from * 100 + id));
            }
            assert_eq!(got, expected, "replica {id}");
            assert!(next_message(inbox, QUIET).await.is_none(), "nothing more");
            assert_eq!(transport.count(Count::Sent), 4);
            assert_eq!(transport.count(Count::Received), 4);
        }
        for (transport, _) in replicas {
            transport.shutdown().await;
        }
    })
    .await
}

// Heartbeats and votes take the control stream, appends and snapshots the
// append stream.
#[test]
fn lanes_split_appends_from_the_rest() {
    assert_eq!(Lane::of(MessageType::MsgAppend), Lane::Append);
    assert_eq!(Lane::of(MessageType::MsgSnapshot), Lane::Append);
    for kind in [
        MessageType::MsgHeartbeat,
        MessageType::MsgHeartbeatResponse,
        MessageType::MsgRequestVote,
        MessageType::MsgRequestPreVote,
        MessageType::MsgAppendResponse,
    ] {
        assert_eq!(Lane::of(kind), Lane::Control, "{kind:?}");
    }
}

// A peer whose certificate says replica-2 but was signed by another CA is
// refused in the handshake, even though it trusts our CA and so accepts
// our certificate: nothing it sends reaches the inbox.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_of_another_ca_is_refused() {
    bounded(async {
        let ours = Certs::new("transport-ours", &[1, 2]);
        let theirs = Certs::new("transport-theirs", &[1, 2]);
        let (socket_1, socket_2) = (reserve(), reserve());
        let (address_1, address_2) = (address(&socket_1), address(&socket_2));
        let (one, inbox) = start(1, socket_1, &[(2, address_2)], &ours.tls(1));
        let impostor_tls = theirs.tls_trusting(&ours.ca(), 2);
        let (impostor, _) = start(2, socket_2, &[(1, address_1)], &impostor_tls);
        let refused = eventually(ARRIVAL, || {
            impostor.sender().send(vec![heartbeat(2, 1, 5)]);
            one.count(Count::RefusedHandshake) > 0
        })
        .await;
        assert!(
            refused,
            "the impostor's handshake reached replica 1 and failed"
        );
        assert!(next_message(&inbox, QUIET).await.is_none());
        assert_eq!(one.count(Count::ConnectionsInbound), 0);
        // Nor does replica 1 accept the impostor as the server of its link.
        assert_eq!(one.count(Count::ConnectionsOutbound), 0);
        impostor.shutdown().await;
        one.shutdown().await;
    })
    .await
}

// Replica 1 connecting to replica 2 at an address where replica 3
// answers refuses it: the server's certificate must name the replica
// connected to, so nothing 1 sends for 2 reaches 3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_naming_another_replica_is_not_connected_to() {
    bounded(async {
        let certs = Certs::new("transport-misnamed", &[1, 2, 3]);
        let (socket_1, socket_3) = (reserve(), reserve());
        let (address_1, address_3) = (address(&socket_1), address(&socket_3));
        let (one, _) = start(1, socket_1, &[(2, address_3)], &certs.tls(1));
        let (three, inbox) = start(3, socket_3, &[(1, address_1)], &certs.tls(3));
        let refused = eventually(ARRIVAL, || {
            one.sender().send(vec![heartbeat(1, 2, 5)]);
            three.count(Count::RefusedHandshake) > 0
        })
        .await;
        assert!(
            refused,
            "replica 1's handshake reached replica 3 and failed"
        );
        assert_eq!(one.count(Count::ConnectionsOutbound), 0);
        assert!(next_message(&inbox, QUIET).await.is_none());
        three.shutdown().await;
        one.shutdown().await;
    })
    .await
}

// A certificate of our CA that names a replica not among the peers
// (replica-4 of a cluster whose replica 1 knows 2 and 3) is closed with
// CLOSE_UNKNOWN_PEER: nothing it sends reaches the inbox.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_not_among_the_peers_is_closed() {
    bounded(async {
        let certs = Certs::new("transport-stranger", &[1, 2, 3, 4]);
        let (socket_1, socket_4) = (reserve(), reserve());
        let address_1 = address(&socket_1);
        let unused = [(2, address(&reserve())), (3, address(&reserve()))];
        let (one, inbox) = start(1, socket_1, &unused, &certs.tls(1));
        let (stranger, _) = start(4, socket_4, &[(1, address_1)], &certs.tls(4));
        let refused = eventually(ARRIVAL, || {
            stranger.sender().send(vec![heartbeat(4, 1, 5)]);
            one.count(Count::RefusedUnknownPeer) > 0
        })
        .await;
        assert!(refused, "replica 4 was closed as unknown");
        assert!(next_message(&inbox, QUIET).await.is_none());
        assert_eq!(one.count(Count::Received), 0);
        stranger.shutdown().await;
        one.shutdown().await;
    })
    .await
}

// On a connection authenticated as replica-2, a message claiming to be
// from replica 3, and one addressed to replica 3, are dropped and
// counted; the honest one after them on the same stream arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_not_from_the_connections_peer_is_dropped() {
    bounded(async {
        let certs = Certs::new("transport-spoof", &[1, 2, 3]);
        let socket_1 = reserve();
        let address_1 = address(&socket_1);
        let peers = [(2, address(&reserve())), (3, address(&reserve()))];
        let (one, inbox) = start(1, socket_1, &peers, &certs.tls(1));
        let connection = raw_connection(&certs.tls(2), address_1, "replica-1").await;
        let mut stream = connection.open_uni().await.unwrap();
        write_frame(&mut stream, &heartbeat(3, 1, 7)).await;
        write_frame(&mut stream, &heartbeat(2, 3, 8)).await;
        write_frame(&mut stream, &heartbeat(2, 1, 9)).await;
        let arrived = next_message(&inbox, ARRIVAL)
            .await
            .expect("the honest message");
        assert_eq!((arrived.from, arrived.to, arrived.commit), (2, 1, 9));
        assert!(next_message(&inbox, QUIET).await.is_none());
        assert_eq!(one.count(Count::DroppedWrongPeer), 2);
        connection.close(VarInt::from_u32(0), b"done");
        one.shutdown().await;
    })
    .await
}

// A frame length over MAX_FRAME_BYTES closes the connection with
// CLOSE_FRAME_TOO_LARGE as soon as the length is read: the body is never
// sent, so a transport that allocated and waited for it would not close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_frame_closes_the_connection() {
    bounded(async {
        let certs = Certs::new("transport-oversized", &[1, 2]);
        let socket_1 = reserve();
        let address_1 = address(&socket_1);
        let (one, inbox) = start(1, socket_1, &[(2, address(&reserve()))], &certs.tls(1));
        let connection = raw_connection(&certs.tls(2), address_1, "replica-1").await;
        let mut stream = connection.open_uni().await.unwrap();
        let length = (MAX_FRAME_BYTES + 1) as u32;
        stream.write_all(&length.to_le_bytes()).await.unwrap();
        let closed = tokio::time::timeout(ARRIVAL, connection.closed())
            .await
            .expect("the connection is closed");
        let quinn::ConnectionError::ApplicationClosed(close) = closed else {
            panic!("closed by the application, not {closed:?}");
        };
        assert_eq!(close.error_code, VarInt::from_u32(CLOSE_FRAME_TOO_LARGE));
        assert_eq!(one.count(Count::RefusedFrameTooLarge), 1);
        assert!(next_message(&inbox, QUIET).await.is_none());
        one.shutdown().await;
    })
    .await
}

/// Sends heartbeats from `sender` every 50 ms until one arrives in
/// `inbox`; the commit of the one that arrived.
async fn send_until_received(sender: &PeerSender, inbox: &Inbox, from: u64, to: u64) -> u64 {
    let deadline = Instant::now() + ARRIVAL;
    for commit in 1.. {
        sender.send(vec![heartbeat(from, to, commit)]);
        if let Some(message) = next_message(inbox, Duration::from_millis(50)).await {
            return message.commit;
        }
        assert!(Instant::now() < deadline, "a heartbeat arrived in time");
    }
    unreachable!()
}

// A peer that is down when replica 1 starts gets what 1 sends once it is
// up; stopped and started again on the same port, it gets what 1 sends
// after that: the link reconnects both times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_down_then_up_gets_later_messages() {
    bounded(async {
        let certs = Certs::new("transport-reconnect", &[1, 2]);
        let (socket_1, socket_2) = (reserve(), reserve());
        let (address_1, address_2) = (address(&socket_1), address(&socket_2));
        let (one, _) = start(1, socket_1, &[(2, address_2)], &certs.tls(1));
        one.sender().send(vec![heartbeat(1, 2, 0)]);
        tokio::time::sleep(QUIET).await;

        let (two, inbox) = start(2, socket_2, &[(1, address_1)], &certs.tls(2));
        send_until_received(&one.sender(), &inbox, 1, 2).await;
        two.shutdown().await;

        let deadline = Instant::now() + ARRIVAL;
        let socket_2 = loop {
            match UdpSocket::bind(address_2) {
                Ok(socket) => break socket,
                Err(error) if Instant::now() < deadline => {
                    tracing::debug!(%error, "port not free yet");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(error) => panic!("rebinding {address_2}: {error}"),
            }
        };
        let (two, inbox) = start(2, socket_2, &[(1, address_1)], &certs.tls(2));
        send_until_received(&one.sender(), &inbox, 1, 2).await;
        assert!(one.count(Count::ConnectionsOutbound) >= 2);
        two.shutdown().await;
        one.shutdown().await;
    })
    .await
}

// send returns at once when a peer's queue is full, from a plain thread
// with no runtime and nothing draining the queue: what is over the bound,
// in messages or in bytes, is dropped and counted, as is a message for no
// peer.
#[test]
fn send_never_waits_and_counts_drops() {
    let tallies = Arc::new(Tallies::new());
    let (sender, receivers) = queues([2, 3].into_iter(), tallies.clone(), None);
    let (done, finished) = std::sync::mpsc::channel();
    let thread_sender = sender.clone();
    std::thread::spawn(move || {
        let heartbeats = (0..PEER_QUEUE_MESSAGES as u64 + 10).map(|c| heartbeat(1, 2, c));
        thread_sender.send(heartbeats.collect());
        thread_sender.send(vec![heartbeat(1, 9, 0)]);
        done.send(()).unwrap();
    });
    finished
        .recv_timeout(Duration::from_secs(10))
        .expect("send returned");
    assert_eq!(tallies.get(Count::DroppedQueueFull), 10);
    assert_eq!(tallies.get(Count::DroppedUnknownPeer), 1);

    // Appends of 1 MiB to replica 3: the byte bound is reached first.
    let big = |commit| {
        let mut append = message(MessageType::MsgAppend, 1, 3, commit);
        append.entries[0].data = vec![0; 1 << 20].into();
        append
    };
    let fit = PEER_QUEUE_BYTES / big(0).compute_size() as usize;
    sender.send((0..fit as u64 + 3).map(big).collect());
    assert_eq!(tallies.get(Count::DroppedQueueFull), 13);
    let queued = receivers[&3].queued_bytes.load(Ordering::Relaxed);
    assert!(queued <= PEER_QUEUE_BYTES, "{queued}");

    let mut huge = big(0);
    huge.entries[0].data = vec![0; MAX_FRAME_BYTES].into();
    sender.send(vec![huge]);
    assert_eq!(tallies.get(Count::DroppedTooLarge), 1);
}

// Each count has its own slot: `Count::ALL` lists them in declaration
// order, which is what `count as usize` indexes by.
#[test]
fn counts_index_their_own_slots() {
    for (at, count) in Count::ALL.into_iter().enumerate() {
        assert_eq!(count as usize, at, "{count:?}");
    }
}

// Ids that raft-rs cannot use, or a replica listed as its own peer, are
// refused before anything is bound.
#[test]
fn start_refuses_bad_ids() {
    let address: SocketAddr = "127.0.0.1:1".parse().unwrap();
    assert!(check_ids(1, &BTreeMap::from([(2, address)])).is_ok());
    assert!(check_ids(0, &BTreeMap::from([(2, address)])).is_err());
    assert!(check_ids(1, &BTreeMap::from([(0, address)])).is_err());
    assert!(check_ids(1, &BTreeMap::from([(1, address)])).is_err());
}

/// A data directory whose set in use holds a raft point at entry 40 and a
/// snapshot file of `bytes` bytes of body, pinned: its `MsgSnapshot` from
/// 1 to 2.
fn pinned_snapshot(dir: &Path, bytes: usize) -> Message {
    use crate::replica::raft_point::{self, RaftPoint};
    use crate::replica::snapshot_files;
    crate::store::layout::prepare_snapshot_sets(dir).expect("sets");
    let set = crate::store::snapshot_dir(dir);
    let body: Vec<u8> = (0..bytes).map(|i| (i * 7 % 251) as u8).collect();
    let framed = crate::store::snapshot_bytes(120, &body);
    std::fs::write(set.join("shard-0.snap"), framed).unwrap();
    let point = RaftPoint {
        index: 40,
        term: 2,
        next_lsn: 121,
        voters: vec![1, 2],
        learners: vec![],
        stock_loaded: true,
    };
    raft_point::write(&set, &point).unwrap();
    let descriptor = snapshot_files::pin(dir, &point).expect("pinned");
    let storage = crate::replica::storage::ReplicaStorage::default();
    storage.set_pinned(&point, descriptor.encode());
    let mut message = Message::default();
    message.set_msg_type(MessageType::MsgSnapshot);
    message.from = 1;
    message.to = 2;
    message.set_snapshot(raft::Storage::snapshot(&storage, 0, 2).expect("the pinned set"));
    message
}

/// The next staged snapshot in `inbox` within `within`, skipping other events.
async fn next_snapshot(inbox: &Inbox, within: Duration) -> Option<(Message, PathBuf)> {
    let deadline = Instant::now() + within;
    loop {
        match inbox.try_recv() {
            Ok(Event::Snapshot(message, dir)) => return Some((*message, dir)),
            Ok(_) => {}
            Err(_) if Instant::now() >= deadline => return None,
            Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
}

// A pinned set streams from one transport to the other: the receiver's
// driver gets the message with a staged copy of every file, byte for byte,
// and the sender's driver hears it was delivered, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_streams_its_files_and_is_reported_once() {
    bounded(async {
        let certs = Certs::new("transport-snapshot", &[1, 2]);
        let (socket_1, socket_2) = (reserve(), reserve());
        let (address_1, address_2) = (address(&socket_1), address(&socket_2));
        let dirs = (certs.scratch.0.join("one"), certs.scratch.0.join("two"));
        let message = pinned_snapshot(&dirs.0, 3 << 20);
        let (reports_1, reported_1) = crossbeam_channel::unbounded();
        let (reports_2, _) = crossbeam_channel::unbounded();
        let start_io = |id, socket, peer, dir: &PathBuf, reports| {
            let (inbox, events) = crossbeam_channel::bounded(INBOX_EVENTS);
            let io = SnapshotIo {
                dir: dir.clone(),
                reports,
                layout: None,
            };
            let peers = [peer].into_iter().collect();
            let transport = Transport::start_on(id, socket, peers, &certs.tls(id), inbox, Some(io))
                .expect("starts");
            (transport, events)
        };
        let (one, _) = start_io(1, socket_1, (2, address_2), &dirs.0, reports_1);
        let (two, inbox_2) = start_io(2, socket_2, (1, address_1), &dirs.1, reports_2);
        one.sender().send(vec![message.clone()]);
        let (arrived, staged) = next_snapshot(&inbox_2, ARRIVAL).await.expect("staged");
        assert_eq!(arrived, message);
        let pin = crate::replica::snapshot_files::pin_dir(&dirs.0, 40, 2);
        for name in ["shard-0.snap", "raft-point"] {
            let sent = std::fs::read(pin.join(name)).unwrap();
            assert_eq!(std::fs::read(staged.join(name)).unwrap(), sent, "{name}");
        }
        let report = tokio::task::spawn_blocking(move || reported_1.recv_timeout(ARRIVAL))
            .await
            .unwrap()
            .expect("a report");
        assert_eq!((report.peer, report.index, report.delivered), (2, 40, true));
        one.shutdown().await;
        two.shutdown().await;
    })
    .await
}

// A snapshot stream whose file does not match its checksum on the wire,
// or whose file was damaged before it was sent (its wire checksum holds,
// its snapshot frame's does not), is refused: the stream is stopped,
// nothing reaches the driver, and nothing staged is left on disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_snapshot_stream_is_refused_and_leaves_nothing() {
    bounded(async {
        let certs = Certs::new("transport-snapshot-damaged", &[1, 2]);
        let socket_2 = reserve();
        let address_2 = address(&socket_2);
        let dirs = (certs.scratch.0.join("one"), certs.scratch.0.join("two"));
        let message = pinned_snapshot(&dirs.0, 5000);
        let (inbox, events) = crossbeam_channel::bounded(INBOX_EVENTS);
        let io = SnapshotIo {
            dir: dirs.1.clone(),
            reports: crossbeam_channel::unbounded().0,
            layout: None,
        };
        let peers = [(1, address(&reserve()))].into_iter().collect();
        let two = Transport::start_on(2, socket_2, peers, &certs.tls(2), inbox, Some(io))
            .expect("starts");
        let connection = raw_connection(&certs.tls(1), address_2, "replica-2").await;
        let pin = crate::replica::snapshot_files::pin_dir(&dirs.0, 40, 2);
        let descriptor =
            crate::replica::snapshot_files::Descriptor::decode(message.get_snapshot().get_data())
                .unwrap();
        for damaged_before_sent in [false, true] {
            let mut stream = connection.open_uni().await.unwrap();
            write_frame(&mut stream, &message).await;
            for (name, _) in &descriptor.files {
                let mut bytes = std::fs::read(pin.join(name)).unwrap();
                let mut crc = crc32c::crc32c(&bytes);
                if name == "shard-0.snap" {
                    bytes[1234] ^= 0x04;
                    if damaged_before_sent {
                        crc = crc32c::crc32c(&bytes);
                    }
                }
                stream.write_all(&bytes).await.unwrap();
                stream.write_all(&crc.to_le_bytes()).await.unwrap();
            }
            let stopped = stream.stopped().await.expect("an answer");
            let refused = Some(VarInt::from_u32(snapshot::STOP_SNAPSHOT_REFUSED));
            assert_eq!(
                stopped, refused,
                "damaged before sent: {damaged_before_sent}"
            );
            assert!(next_snapshot(&events, QUIET).await.is_none());
            let incoming = dirs.1.join(crate::replica::snapshot_files::INCOMING_DIR);
            let left = std::fs::read_dir(&incoming).map_or(0, |d| d.count());
            assert_eq!(left, 0, "nothing staged is left");
        }
        connection.close(VarInt::from_u32(0), b"done");
        two.shutdown().await;
    })
    .await
}
