//! The driving connections with several addresses (`--target a,b,c`,
//! `--spawn-cluster`): they follow the cluster's leader. A task of its own
//! keeps every request until a leader decides it; an answer `NotLeader` (or
//! `Unavailable`), a lost connection, or a connection that stays silent
//! while it owes answers moves the connections to the leader (as named, or
//! the next address), and what was not decided is sent again there with the
//! same ids and client order ids: a decision the cluster kept comes back as
//! it was. Only decisions reach the collector, so an order counts as
//! answered once a leader decided it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use omniroute_client::protocol::{check_frame, split_frame, Judged, Request, Response};
use omniroute_client::{is_follow, Client, Order, Trust, CONNECT_TIMEOUT_MS, NO_LEADER_PAUSE_MS};
use tokio::sync::mpsc;

use crate::drive::Event;

/// Requests queued for the follower task before the scheduler waits.
const INBOX_BATCHES: usize = 4096;
/// Encoded batches queued per connection before the follower hands them to
/// a task.
const WRITE_QUEUE_BATCHES: usize = 4096;
/// Bytes read from a stream at once.
const CHUNK_BYTES: usize = 64 * 1024;
/// A connection that owes answers and has sent none for this long is taken
/// for a dead replica's: a SIGKILLed process's port answers nothing, and
/// QUIC would only notice at its idle timeout. About raft's election
/// timeout (10 to 20 ticks of 50 ms), so that the connections look for the
/// new leader while it is being elected: with 1 s the failovers measured
/// 1.1 to 1.2 s, with 500 ms 0.67 to 0.79 s (release, flash-sale at
/// 2000/s). Well above a leader's answer times under load; leaving a slow
/// leader costs a round trip to a replica that names it again, and the
/// orders resent are idempotent.
pub(crate) const SILENT_LINK_MS: u64 = 500;
/// How often the follower looks for a silent connection.
const CHECK_EVERY_MS: u64 = 100;

/// What the scheduler and the collector hand the follower.
pub(crate) enum Input {
    /// Orders with contiguous ids.
    Orders(Vec<(u64, Order)>),
    /// Follow-ups (confirms, cancels, ships).
    Requests(Vec<(u64, Request)>),
}

/// Which replica decided, when that changed: (when, its client address).
pub(crate) type Deciders = Arc<Mutex<Vec<(Instant, SocketAddr)>>>;

/// Where and as whom the connections go.
#[derive(Clone)]
pub(crate) struct Endpoints {
    pub(crate) addrs: Vec<SocketAddr>,
    pub(crate) trust: Trust,
    pub(crate) token: String,
    pub(crate) connections: usize,
    /// Orders per `SubmitBatch` frame; 0: one `Submit` frame each.
    pub(crate) per_frame: usize,
}

/// A request kept until a leader decides it.
struct Pending {
    item: Item,
    /// The connection generation it was last sent on (0: not sent yet).
    sent: u64,
}

enum Item {
    Order(Order),
    Request(Request),
}

/// What a connection's reader or connector tells the follower.
enum FromLink {
    Answers {
        generation: u64,
        addr: SocketAddr,
        done: Instant,
        responses: Vec<(u64, Response)>,
    },
    Lost {
        generation: u64,
    },
    Connected(Link),
    Failed {
        generation: u64,
    },
}

/// The connections to one replica, for one generation.
struct Link {
    generation: u64,
    clients: Vec<Client>,
    writers: Vec<mpsc::Sender<Vec<u8>>>,
}

impl Link {
    fn close(&self) {
        for client in &self.clients {
            client
                .connection()
                .close(0u32.into(), b"following the leader");
        }
    }
}

struct Follower {
    endpoints: Endpoints,
    events: mpsc::Sender<Event>,
    pending: BTreeMap<u64, Pending>,
    generation: u64,
    target: SocketAddr,
    link: Option<Link>,
    /// Requests sent on the current link and not decided.
    owed: usize,
    /// When the current link last answered (or began to owe answers).
    last_heard: Instant,
    next_writer: usize,
    from_links: mpsc::UnboundedSender<FromLink>,
    deciders: Deciders,
}

/// Starts the follower task: the inbox the sink sends to, and the log of
/// which replica decided.
pub(crate) fn start(
    endpoints: Endpoints,
    events: mpsc::Sender<Event>,
) -> (mpsc::Sender<Input>, Deciders) {
    let (inbox, receiver) = mpsc::channel(INBOX_BATCHES);
    let (from_links, links) = mpsc::unbounded_channel();
    let deciders = Deciders::default();
    let mut follower = Follower {
        target: endpoints.addrs[0],
        endpoints,
        events,
        pending: BTreeMap::new(),
        generation: 0,
        link: None,
        owed: 0,
        last_heard: Instant::now(),
        next_writer: 0,
        from_links,
        deciders: deciders.clone(),
    };
    follower.switch(Some(follower.target));
    tokio::spawn(follower.run(receiver, links));
    (inbox, deciders)
}

impl Follower {
    async fn run(
        mut self,
        mut inbox: mpsc::Receiver<Input>,
        mut links: mpsc::UnboundedReceiver<FromLink>,
    ) {
        let mut check = tokio::time::interval(Duration::from_millis(CHECK_EVERY_MS));
        loop {
            tokio::select! {
                input = inbox.recv() => match input {
                    Some(input) => self.accept(input),
                    None => break,
                },
                Some(from) = links.recv() => self.heard(from).await,
                _ = check.tick() => self.check_silence(),
            }
        }
        if let Some(link) = self.link.take() {
            link.close();
        }
    }

    /// New requests: kept, and sent at once if connected.
    fn accept(&mut self, input: Input) {
        let generation = self.link.as_ref().map_or(0, |l| l.generation);
        let mut ids = Vec::new();
        match input {
            Input::Orders(orders) => {
                for (id, order) in orders {
                    ids.push(id);
                    let item = Item::Order(order);
                    self.pending.insert(id, Pending { item, sent: 0 });
                }
            }
            Input::Requests(requests) => {
                for (id, request) in requests {
                    ids.push(id);
                    let item = Item::Request(request);
                    self.pending.insert(id, Pending { item, sent: 0 });
                }
            }
        }
        if generation != 0 {
            self.send(&ids);
        }
    }

    /// Sends the pending requests `ids` (ascending) on the current link:
    /// contiguous orders as `SubmitBatch` frames.
    fn send(&mut self, ids: &[u64]) {
        let Some(link) = self.link.as_ref() else {
            return;
        };
        if self.owed == 0 {
            self.last_heard = Instant::now();
        }
        let per_frame = self.endpoints.per_frame;
        let mut bytes = Vec::with_capacity(ids.len() * 128);
        let mut run: Vec<(u64, Order)> = Vec::new();
        for &id in ids {
            let Some(pending) = self.pending.get_mut(&id) else {
                continue;
            };
            if pending.sent != link.generation {
                self.owed += 1;
            }
            pending.sent = link.generation;
            match &pending.item {
                Item::Order(order) => {
                    let follows = run.last().is_some_and(|(last, _)| last + 1 == id);
                    if !follows || (per_frame > 0 && run.len() >= per_frame) {
                        encode_orders(std::mem::take(&mut run), per_frame, &mut bytes);
                    }
                    run.push((id, order.clone()));
                }
                Item::Request(request) => request.encode(id, &mut bytes),
            }
        }
        encode_orders(run, per_frame, &mut bytes);
        if bytes.is_empty() {
            return;
        }
        let writer = &link.writers[self.next_writer % link.writers.len()];
        self.next_writer = self.next_writer.wrapping_add(1);
        if let Err(mpsc::error::TrySendError::Full(bytes)) = writer.try_send(bytes) {
            let writer = writer.clone();
            tokio::spawn(async move { writer.send(bytes).await });
        }
    }

    async fn heard(&mut self, from: FromLink) {
        match from {
            FromLink::Answers {
                generation,
                addr,
                done,
                responses,
            } => self.answers(generation, addr, done, responses).await,
            FromLink::Lost { generation } if generation == self.generation => self.switch(None),
            FromLink::Lost { .. } => {}
            FromLink::Connected(link) if link.generation == self.generation => {
                self.link = Some(link);
                self.owed = 0;
                let ids: Vec<u64> = self.pending.keys().copied().collect();
                self.send(&ids);
            }
            FromLink::Connected(link) => link.close(),
            FromLink::Failed { generation } if generation == self.generation => self.switch(None),
            FromLink::Failed { .. } => {}
        }
    }

    /// Decisions go to the collector; `NotLeader` on the current link
    /// moves it.
    async fn answers(
        &mut self,
        generation: u64,
        addr: SocketAddr,
        done: Instant,
        responses: Vec<(u64, Response)>,
    ) {
        let current = generation == self.generation;
        if current {
            self.last_heard = done;
        }
        let mut follow: Option<Option<SocketAddr>> = None;
        let mut decided = Vec::new();
        for (id, response) in responses {
            let Some(pending) = self.pending.get(&id) else {
                // Decided already (answered twice across a move).
                continue;
            };
            if let Response::Error { code, message } = &response {
                if is_follow(*code) {
                    if current && follow.is_none() {
                        let named = message.parse::<SocketAddr>().ok();
                        follow = Some(named.filter(|&leader| leader != addr));
                    }
                    continue;
                }
            }
            if pending.sent == self.generation && self.owed > 0 {
                self.owed -= 1;
            }
            self.pending.remove(&id);
            if matches!(response, Response::Decision(_)) {
                self.decided_by(done, addr);
            }
            decided.push(crate::sinks::answer(id, done, response));
        }
        if !decided.is_empty() {
            let _ = self.events.send(Event::Answers(decided)).await;
        }
        if let Some(to) = follow {
            self.switch(to);
        }
    }

    fn decided_by(&self, at: Instant, addr: SocketAddr) {
        let mut deciders = self.deciders.lock().expect("deciders lock");
        if deciders.last().is_none_or(|(_, last)| *last != addr) {
            deciders.push((at, addr));
        }
    }

    /// A link that owes answers and has been silent too long is left.
    fn check_silence(&mut self) {
        if self.link.is_some()
            && self.owed > 0
            && self.last_heard.elapsed() >= Duration::from_millis(SILENT_LINK_MS)
        {
            self.switch(None);
        }
    }

    /// Leaves the current link for `to` (the leader as named), or for the
    /// next address after a pause.
    fn switch(&mut self, to: Option<SocketAddr>) {
        if let Some(link) = self.link.take() {
            link.close();
        }
        self.owed = 0;
        self.generation += 1;
        let pause = match to {
            Some(addr) => {
                self.target = addr;
                Duration::ZERO
            }
            None => {
                let addrs = &self.endpoints.addrs;
                let next = addrs
                    .iter()
                    .position(|&a| a == self.target)
                    .map_or(0, |i| i + 1);
                self.target = addrs[next % addrs.len()];
                Duration::from_millis(NO_LEADER_PAUSE_MS)
            }
        };
        let (endpoints, target, generation) =
            (self.endpoints.clone(), self.target, self.generation);
        let from_links = self.from_links.clone();
        tokio::spawn(async move {
            tokio::time::sleep(pause).await;
            let link = connect(&endpoints, target, generation, &from_links).await;
            let message = match link {
                Some(link) => FromLink::Connected(link),
                None => FromLink::Failed { generation },
            };
            let _ = from_links.send(message);
        });
    }
}

/// `endpoints.connections` connections to `addr`, each with a stream whose
/// answers go to the follower tagged with `generation`.
async fn connect(
    endpoints: &Endpoints,
    addr: SocketAddr,
    generation: u64,
    from_links: &mpsc::UnboundedSender<FromLink>,
) -> Option<Link> {
    let timeout = Duration::from_millis(CONNECT_TIMEOUT_MS);
    let connecting = (0..endpoints.connections.max(1)).map(|_| {
        let connect = Client::connect(addr, "localhost", endpoints.trust.clone(), &endpoints.token);
        tokio::time::timeout(timeout, connect)
    });
    let mut clients = Vec::new();
    for connected in futures::future::join_all(connecting).await {
        clients.push(connected.ok()?.ok()?);
    }
    let mut writers = Vec::new();
    for client in &clients {
        let (send, recv) = client.connection().open_bi().await.ok()?;
        let (writer, queue) = mpsc::channel(WRITE_QUEUE_BATCHES);
        tokio::spawn(omniroute_client::write_frames(send, queue));
        tokio::spawn(read_frames(recv, addr, generation, from_links.clone()));
        writers.push(writer);
    }
    Some(Link {
        generation,
        clients,
        writers,
    })
}

/// Orders with contiguous ids as frames: `SubmitBatch` frames of at most
/// `per_frame` orders (the answer's entries follow on from the frame's
/// id), or with `per_frame` 0 a `Submit` frame each.
fn encode_orders(run: Vec<(u64, Order)>, per_frame: usize, bytes: &mut Vec<u8>) {
    if per_frame == 0 {
        for (id, order) in run {
            Request::Submit(order).encode(id, bytes);
        }
        return;
    }
    let mut run = run.into_iter().peekable();
    while let Some(&(first, _)) = run.peek() {
        let orders: Vec<_> = run.by_ref().take(per_frame).map(|(_, o)| Ok(o)).collect();
        Request::SubmitBatch(orders).encode(first, bytes);
    }
}

/// Reads a stream's answers, one per request id (a `Decisions` frame's
/// entries answer the ids from the frame's on), until it ends.
async fn read_frames(
    mut recv: omniroute_client::quinn::RecvStream,
    addr: SocketAddr,
    generation: u64,
    from_links: mpsc::UnboundedSender<FromLink>,
) {
    let mut buffer = Vec::with_capacity(CHUNK_BYTES);
    loop {
        match recv.read_chunk(CHUNK_BYTES, true).await {
            Ok(Some(chunk)) => buffer.extend_from_slice(&chunk.bytes),
            _ => break,
        }
        let done = Instant::now();
        let mut consumed = 0;
        let mut responses = Vec::new();
        while let Ok(Some(length)) = check_frame(&buffer[consumed..]) {
            let (kind, id, payload) = split_frame(&buffer[consumed..consumed + length]);
            consumed += length;
            match Response::decode(kind, payload) {
                Ok(Some(Response::Decisions(entries))) => {
                    for (i, entry) in entries.into_iter().enumerate() {
                        let response = match entry {
                            Judged::Decision(decision) => Response::Decision(decision),
                            Judged::Error { code, message } => Response::Error { code, message },
                        };
                        responses.push((id + i as u64, response));
                    }
                }
                Ok(Some(response)) => responses.push((id, response)),
                _ => eprintln!("omniroute-loadtest: undecodable answer of kind {kind:#x}"),
            }
        }
        buffer.drain(..consumed);
        if !responses.is_empty() {
            let answers = FromLink::Answers {
                generation,
                addr,
                done,
                responses,
            };
            if from_links.send(answers).is_err() {
                return;
            }
        }
    }
    let _ = from_links.send(FromLink::Lost { generation });
}
