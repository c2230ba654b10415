//! The ready loop: one OS thread owns a replica's raft-rs node (never a
//! tokio worker), steps what peers send, ticks, proposes, and hands each
//! Ready to storage and the network in the order raft-rs asks:
//! - a leader's messages leave at once (it counts itself toward a quorum
//!   only once its own write is durable);
//! - entries and hard state are queued on the journal's writer thread
//!   ([`Persister`]); the messages that vouch for them (votes, append
//!   responses) leave only when that write is durable, and only then is
//!   raft-rs told (`on_persist_ready`);
//! - committed entries are applied in log order, and a proposal is
//!   answered only when its entry is applied with the term it was proposed
//!   in: answered means on a majority's disk.
//!
//! A storage error stops the replica: nothing more is written, sent or
//! answered.
//!
//! The loop writes through [`Persist`]: the journal in production, a
//! simulated disk in `sim`, which runs the same pass (`handle`, `tick`,
//! `take_written`, `ready`) on its own clock instead of `run`'s.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use raft::eraftpb::{Entry, EntryType, Message};
use raft::{Config, ProgressState, RawNode, SnapshotStatus, StateRole};

use super::disk::{DiskError, Loaded, Persist, Persister};
use super::entry::{decode_body, encode_body, MAX_ENTRY_RECORDS};
use super::local_snapshot::{SetsHold, SnapshotSets};
use super::proposer::Proposal;
use super::raft_point::{self, RaftPoint};
use super::storage::ReplicaStorage;
use waiting::{fail_dones, Pending, Reads, Waiter};

#[cfg(test)]
mod bugs;
mod waiting;
#[cfg(test)]
pub use bugs::Bug;

/// Milliseconds between two ticks of the raft clock.
pub const TICK_MS: u64 = 50;
/// Ticks before a follower that hears no leader stands (at least; raft-rs
/// draws each timeout from [ELECTION_TICKS, 2 × ELECTION_TICKS)).
pub const ELECTION_TICKS: usize = 10;
/// Ticks between a leader's heartbeats.
pub const HEARTBEAT_TICKS: usize = 2;
/// Events the driver's inbox holds before senders wait.
pub const INBOX_EVENTS: usize = 4096;
/// Bytes of records gathered into one entry at most (unless one record is
/// larger): about raft-rs's `max_size_per_msg`, so an append message
/// carries whole entries and a slow follower is sent a few at a time.
pub const MAX_ENTRY_BYTES: usize = 1 << 20;

/// Why a proposal was not answered with its place in the log.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    /// Not the leader, or it stopped being before the entry committed in
    /// its term; `leader` is the one it knows of (0: none).
    #[error("not the leader (the leader is replica {leader})")]
    NotLeader { leader: u64 },
    /// The data is not an entry body (`entry::encode_body`).
    #[error("not an entry body: {0}")]
    Malformed(String),
    /// The replica stopped after a storage error.
    #[error("the replica has stopped: {0}")]
    Stopped(String),
}

/// A proposal's answer: the entry's index once it is applied.
pub type Answer = Box<dyn FnOnce(Result<u64, ProposeError>) + Send>;

/// What the driver thread is told.
pub enum Event {
    /// A message from a peer.
    Peer(Box<Message>),
    /// Data to replicate, as one entry.
    Propose(Vec<u8>, Answer),
    /// A snapshot set holding the state through this point is in place
    /// and pinned (its descriptor): it is offered to peers behind the
    /// log's start, and the log before it may be compacted.
    Pinned(Box<RaftPoint>, Vec<u8>),
    /// A snapshot from the leader whose files are staged, whole and
    /// synced, in this directory.
    Snapshot(Box<Message>, PathBuf),
    /// The leader's engine wrote a snapshot whose every actor holds the
    /// records up to this LSN: where does that put it in the log?
    PointThrough(u64, tokio::sync::oneshot::Sender<Option<RaftPoint>>),
    /// Stop the loop.
    Stop,
}

/// How a snapshot transfer to `peer` went: told once per `MsgSnapshot`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotReport {
    pub peer: u64,
    /// The snapshot's entry.
    pub index: u64,
    /// The peer read all of it (else it failed, and raft-rs sends again).
    pub delivered: bool,
}

/// A snapshot from the leader, stepped into raft-rs, whose files wait to
/// be put in place when its Ready comes.
struct Staged {
    dir: PathBuf,
    index: u64,
    term: u64,
    /// The set in use is the driver's to replace meanwhile.
    _hold: SetsHold,
}

/// The writes of Ready `number` are durable (or failed): send its
/// messages, tell raft-rs. Told by the journal's writer thread on a
/// channel of its own, without bound (there are at most as many as Readies
/// in flight), so the writer never waits on the driver while the driver
/// waits for room in the journal.
struct Written {
    number: u64,
    messages: Vec<Message>,
    result: Result<(), String>,
}

/// Where committed entries go, and messages leave; the shell provides them.
pub trait Effects {
    /// Sends messages to peers; a message that cannot be sent is dropped
    /// (raft-rs retries).
    fn send(&mut self, messages: Vec<Message>);
    /// Applies a committed normal entry's data, in log order: every entry
    /// but those whose records were proposed here through the proposal
    /// queue and committed in their term (their callers apply them).
    fn apply(&mut self, index: u64, data: &[u8]);
    /// Every entry up to `index` is applied (once per Ready that applied any).
    fn applied(&mut self, _index: u64) {}
    /// The node's role or leader changed.
    fn role(&mut self, _role: StateRole, _term: u64, _leader: u64) {}
    /// A snapshot set from the leader is about to replace the state: the
    /// log will start after it, past what may have been applied.
    fn restoring(&mut self) {}
    /// The set is in place, holding every entry up to `index`: start
    /// from it (instead of `applied` for this index).
    fn restored(&mut self, _index: u64) {}
    /// This leader has applied the first entry of its `term` (at `index`):
    /// everything committed before the term is applied, so it may serve.
    fn lead(&mut self, _term: u64, _index: u64) {}
    /// Once per tick: the commit index, and each other voter's lag in
    /// entries (the last index minus what it has matched) as a leader
    /// knows it; 0 on a replica that does not lead (it does not know).
    fn progress(&mut self, _commit: u64, _lags: &[(u64, u64)]) {}
}

/// A replica's raft-rs node and what it drives; `P` is where its writes
/// go (the journal in production, a simulated disk in `sim`).
pub struct Driver<E: Effects, P: Persist = Persister> {
    node: RawNode<ReplicaStorage>,
    persister: P,
    effects: E,
    written: (Sender<Written>, Receiver<Written>),
    /// The leader's engine's records and barriers ([`super::proposer`]).
    proposals: Option<Receiver<Proposal>>,
    /// Proposals waiting for their entry, by index.
    pending: HashMap<u64, Pending>,
    /// Read barriers waiting for a read-index round and apply.
    reads: Reads,
    /// Ticks so far (the read barriers' clock).
    ticks: u64,
    /// The last entry applied, and its term.
    applied: u64,
    applied_term: u64,
    /// The term `Effects::lead` was last told of.
    led_term: u64,
    /// Entries kept behind a snapshot set's point at compaction
    /// (`[cluster] log_hold_entries`).
    log_hold_entries: u64,
    /// And, on a leader, for a follower that lacks them
    /// (`[cluster] laggard_hold_entries`).
    laggard_hold_entries: u64,
    /// Transfers' outcomes, from the transport.
    reports: Receiver<SnapshotReport>,
    /// Who writes the set in use (none: snapshots are not installed).
    sets: Option<Arc<SnapshotSets>>,
    /// A snapshot stepped, waiting for its Ready.
    staged: Option<Staged>,
    /// The Ready that installed a snapshot, and its point, until durable.
    installed: Option<(u64, u64, u64)>,
    /// The role and leader last reported.
    seen: (StateRole, u64, u64),
    stopped: Option<String>,
    /// A deliberate wrong the simulation injects, to show it is caught.
    #[cfg(test)]
    bug: Option<Bug>,
}

/// raft-rs's configuration for replica `id`, with `applied` already in
/// the state it starts from.
pub fn config(id: u64, applied: u64) -> Config {
    Config {
        id,
        election_tick: ELECTION_TICKS,
        heartbeat_tick: HEARTBEAT_TICKS,
        applied,
        pre_vote: true,
        check_quorum: true,
        max_size_per_msg: 1 << 20,
        max_inflight_msgs: 256,
        ..Config::default()
    }
}

impl<E: Effects, P: Persist> Driver<E, P> {
    /// A driver for replica `id` on what `loaded` read from its disk.
    pub fn new(
        id: u64,
        loaded: Loaded<P>,
        effects: E,
        logger: &slog::Logger,
    ) -> Result<Driver<E, P>, raft::Error> {
        let (applied, applied_term) = loaded.applied;
        let config = config(id, applied);
        config.validate()?;
        let node = RawNode::new(&config, loaded.storage, logger)?;
        Ok(Driver {
            node,
            persister: loaded.persister,
            effects,
            written: crossbeam_channel::unbounded(),
            proposals: None,
            pending: HashMap::new(),
            reads: Reads::default(),
            ticks: 0,
            applied,
            applied_term,
            led_term: 0,
            log_hold_entries: crate::config::DEFAULT_LOG_HOLD_ENTRIES,
            laggard_hold_entries: crate::config::DEFAULT_LAGGARD_HOLD_ENTRIES,
            reports: crossbeam_channel::never(),
            sets: None,
            staged: None,
            installed: None,
            seen: (StateRole::Follower, 0, 0),
            stopped: None,
            #[cfg(test)]
            bug: None,
        })
    }

    /// Keeps `entries` behind a snapshot set's point at compaction, and,
    /// on a leader, up to `laggard` for a follower that lacks them.
    pub fn with_log_hold(mut self, entries: u64, laggard: u64) -> Driver<E, P> {
        self.log_hold_entries = entries;
        self.laggard_hold_entries = laggard;
        self
    }

    /// Installs snapshots from the leader into the set `sets` guards, and
    /// hears how the transfers it asked for went on `reports`.
    pub fn with_snapshots(
        mut self,
        sets: Arc<SnapshotSets>,
        reports: Receiver<SnapshotReport>,
    ) -> Driver<E, P> {
        self.sets = Some(sets);
        self.reports = reports;
        self
    }

    /// Takes the leader's engine's records and barriers from `queue`
    /// (the other end of a [`super::proposer::Proposer`]).
    pub fn with_proposals(mut self, queue: Receiver<Proposal>) -> Driver<E, P> {
        self.proposals = Some(queue);
        self
    }

    /// The log as raft-rs holds it (shared, not copied): every entry since
    /// start, which the apply thread of a follower reads.
    pub fn storage(&self) -> ReplicaStorage {
        self.node.store().clone()
    }

    /// Runs until `Stop` (or every sender of `events` is gone), or until
    /// a storage error stops the replica; ticks every `TICK_MS`. The
    /// reason it stopped early, if an error stopped it.
    pub fn run(mut self, events: Receiver<Event>) -> Option<String> {
        let tick = Duration::from_millis(TICK_MS);
        let mut next_tick = Instant::now() + tick;
        let written = self.written.1.clone();
        let reports = self.reports.clone();
        let proposals = self
            .proposals
            .clone()
            .unwrap_or_else(crossbeam_channel::never);
        loop {
            let wait = next_tick.saturating_duration_since(Instant::now());
            crossbeam_channel::select! {
                recv(events) -> event => match event {
                    Ok(Event::Stop) | Err(_) => break,
                    Ok(event) => self.handle(event),
                },
                recv(written) -> done => {
                    if let Ok(done) = done {
                        self.on_written(done);
                    }
                },
                recv(proposals) -> proposal => {
                    if let Ok(proposal) = proposal {
                        self.propose_queued(Some(proposal));
                    }
                },
                recv(reports) -> report => {
                    if let Ok(report) = report {
                        self.report_snapshot(report);
                    }
                },
                default(wait) => {}
            }
            self.take_written();
            while let Ok(event) = events.try_recv() {
                if matches!(event, Event::Stop) {
                    return self.stop();
                }
                self.handle(event);
            }
            let now = Instant::now();
            if now >= next_tick {
                self.tick();
                // Behind by more than a tick (the thread was held up): the
                // owed ticks are skipped, not fired back to back, which
                // could fail a leader's quorum check for nothing.
                next_tick = (next_tick + tick).max(now + tick / 2);
            }
            if self.stopped.is_none() {
                self.ready();
            }
            if self.stopped.is_some() {
                // Said at once, not at shutdown: the replica cannot go on.
                // What is queued is answered with the reason.
                events.try_iter().for_each(|event| self.handle(event));
                break;
            }
        }
        self.stop()
    }

    fn stop(mut self) -> Option<String> {
        let reason = self.stopped.clone();
        let why = ProposeError::Stopped(reason.clone().unwrap_or_else(|| "stopped".into()));
        self.fail_waiting(&why);
        if let Some(queue) = self.proposals.take() {
            for proposal in queue.try_iter() {
                fail_proposal(proposal, &why);
            }
        }
        self.persister.close();
        reason
    }

    /// Fails every proposal and read barrier waiting here.
    fn fail_waiting(&mut self, error: &ProposeError) {
        for (_, pending) in self.pending.drain() {
            pending.fail(error.clone());
        }
        self.reads.fail_all(error);
    }

    /// Handles one event, unless the replica has stopped.
    pub fn handle(&mut self, event: Event) {
        if let Some(reason) = &self.stopped {
            if let Event::Propose(_, answer) = event {
                answer(Err(ProposeError::Stopped(reason.clone())));
            }
            return;
        }
        match event {
            // A message from a peer not in the configuration is ignored.
            Event::Peer(message) => drop(self.node.step(*message)),
            Event::Propose(data, answer) => self.propose(data, answer),
            Event::Pinned(point, descriptor) => {
                self.node.store().set_pinned(&point, descriptor);
                self.compact(point.index);
            }
            Event::Snapshot(message, dir) => self.stage(*message, dir),
            Event::PointThrough(lsn, reply) => drop(reply.send(self.point_through(lsn))),
            Event::Stop => {}
        }
    }

    /// Tells raft-rs how a snapshot transfer went (it ignores a report
    /// for a peer no longer waiting on one).
    fn report_snapshot(&mut self, report: SnapshotReport) {
        // Only for the transfer the peer waits on: a late report of an
        // older one must not end a newer one's wait.
        let waiting = (self.node.raft.prs().get(report.peer)).is_some_and(|pr| {
            pr.state == ProgressState::Snapshot && pr.pending_snapshot == report.index
        });
        if !waiting {
            return;
        }
        let status = if report.delivered {
            SnapshotStatus::Finish
        } else {
            SnapshotStatus::Failure
        };
        self.node.report_snapshot(report.peer, status);
    }

    /// Steps a snapshot from the leader whose files are staged, if the set
    /// in use may be replaced now; else removes them (the leader sends
    /// again). Its Ready puts them in place ([`Self::install`]).
    fn stage(&mut self, message: Message, dir: PathBuf) {
        let hold = (self.sets.as_ref()).and_then(|sets| sets.try_hold_for_install());
        // One install at a time: the last one's Ready must be durable first.
        let (Some(hold), None, None) = (hold, &self.staged, &self.installed) else {
            tracing::info!(
                "a snapshot from the leader is not installed now (another is, or a snapshot set is being written); it will be sent again"
            );
            return remove_staged(&dir);
        };
        let metadata = message.get_snapshot().get_metadata();
        self.staged = Some(Staged {
            dir,
            index: metadata.index,
            term: metadata.term,
            _hold: hold,
        });
        drop(self.node.step(message));
    }

    /// Puts the staged snapshot raft-rs restored from in place, durably,
    /// before anything of its Ready is written: the set, then the journal
    /// emptied to start after it, then raft-rs's log.
    fn install(&mut self, rd: &raft::Ready) -> Result<(), String> {
        let snapshot = rd.snapshot().clone();
        let (index, term) = (snapshot.get_metadata().index, snapshot.get_metadata().term);
        let staged = (self.staged.take())
            .filter(|s| (s.index, s.term) == (index, term))
            .ok_or_else(|| {
                format!(
                    "raft-rs restored the snapshot at entry {index}, whose files are not staged"
                )
            })?;
        let point = raft_point::read(&staged.dir)?
            .filter(|p| (p.index, p.term) == (index, term))
            .ok_or("the staged snapshot's raft point is not the message's")?;
        let started = Instant::now();
        self.effects.restoring();
        let pinned = (self.persister.install(&point, &staged.dir))
            .map_err(|e| format!("installing the snapshot at entry {index}: {e}"))?;
        (self.node.store().apply_snapshot(snapshot))
            .map_err(|e| format!("raft-rs storage refused the snapshot at entry {index}: {e}"))?;
        if let Some(descriptor) = pinned {
            self.node.store().set_pinned(&point, descriptor);
        }
        self.installed = Some((rd.number(), index, term));
        metrics::counter!(crate::telemetry::REPLICA_SNAPSHOTS_INSTALLED_TOTAL).increment(1);
        tracing::info!(
            "replica {}: installed the leader's snapshot at entry {index} (LSN {}) in {} ms; the log goes on after it",
            self.node.raft.id,
            point.next_lsn - 1,
            started.elapsed().as_millis()
        );
        Ok(())
    }

    /// Forgets the log before a snapshot set's point `through`, in memory
    /// and on disk, but for `log_hold_entries` entries behind it and, on a
    /// leader, what a follower lacks, up to `laggard_hold_entries` behind
    /// it, and what follows a snapshot being sent.
    fn compact(&mut self, through: u64) {
        let raft = &self.node.raft;
        let mut keep_from = (through + 1).saturating_sub(self.log_hold_entries);
        if raft.state == StateRole::Leader {
            let laggards_from = (through + 1).saturating_sub(self.laggard_hold_entries);
            for (id, pr) in raft.prs().iter() {
                if *id == raft.id {
                    continue;
                }
                // Where the peer's log goes on from, as far as this leader
                // knows: after the snapshot it is being sent; not known yet
                // (a new leader); where probing has got to (just after a
                // snapshot it installed); what it has matched.
                let needed = match pr.state {
                    ProgressState::Snapshot => {
                        keep_from = keep_from.min(pr.pending_snapshot + 1);
                        continue;
                    }
                    _ if pr.matched == 0 => laggards_from,
                    ProgressState::Probe => pr.next_idx,
                    ProgressState::Replicate => pr.matched + 1,
                };
                if needed >= laggards_from {
                    keep_from = keep_from.min(needed);
                }
            }
        }
        // Never past what is applied here, nor past the log (an index past
        // what storage holds is ignored by it).
        keep_from = keep_from
            .min(self.applied + 1)
            .min(raft.raft_log.last_index());
        if keep_from <= raft.raft_log.first_index() {
            return;
        }
        self.node.store().compact(keep_from);
        self.persister.compact(keep_from);
    }

    /// The raft point of a leader's snapshot whose actors all hold the
    /// records up to `lsn`: the last applied entry wholly at or below it
    /// (an entry is many records, and the snapshot's markers land inside
    /// one). The engine starts serving only once the config's stock is
    /// loaded, so its snapshots always hold it.
    fn point_through(&self, lsn: u64) -> Option<RaftPoint> {
        let (index, term, next_lsn) = self.persister.entry_through(lsn)?;
        if index > self.applied {
            return None;
        }
        let conf = self.node.raft.prs().conf().to_conf_state();
        Some(RaftPoint {
            index,
            term,
            next_lsn,
            voters: conf.voters,
            learners: conf.learners,
            stock_loaded: true,
        })
    }

    /// One tick of the raft clock: `run` ticks every `TICK_MS`, the
    /// simulation on its own clock.
    pub(crate) fn tick(&mut self) {
        self.ticks += 1;
        self.node.tick();
        self.report_progress();
    }

    /// Tells the effects the commit index and the followers' lags.
    fn report_progress(&mut self) {
        let raft = &self.node.raft;
        let leads = raft.state == StateRole::Leader;
        let last = raft.raft_log.last_index();
        let mut lags: Vec<(u64, u64)> = (raft.prs().iter())
            .filter(|(id, _)| **id != raft.id)
            .map(|(id, pr)| {
                (
                    *id,
                    if leads {
                        last.saturating_sub(pr.matched)
                    } else {
                        0
                    },
                )
            })
            .collect();
        lags.sort_unstable();
        self.effects.progress(raft.raft_log.committed, &lags);
    }

    /// Handles every Ready the writer has told of as durable since.
    pub(crate) fn take_written(&mut self) {
        while let Ok(done) = self.written.1.try_recv() {
            self.on_written(done);
        }
    }

    /// A Ready's writes are durable: its messages leave, raft-rs hears it.
    fn on_written(&mut self, done: Written) {
        tracing::debug!(number = done.number, ok = done.result.is_ok(), "written");
        if self.stopped.is_some() {
            return;
        }
        match done.result {
            Ok(()) => {
                self.effects.send(done.messages);
                self.node.on_persist_ready(done.number);
                if let Some((_, index, term)) = self.installed.filter(|i| i.0 == done.number) {
                    // Only now (raft-rs refuses an applied index past what
                    // it was told is persisted).
                    self.installed = None;
                    self.applied = index;
                    self.applied_term = term;
                    self.node.advance_apply_to(index);
                    self.effects.restored(index);
                }
                #[cfg(test)]
                self.answer_on_local_persist();
            }
            Err(reason) => self.stop_for(reason),
        }
    }

    /// The node, for the simulation's checks (role, term, log).
    #[cfg(test)]
    pub(crate) fn node(&self) -> &RawNode<ReplicaStorage> {
        &self.node
    }

    /// Replaces the election timeout raft-rs drew from the thread's rng,
    /// so the simulation draws it from its seed and replays exactly.
    #[cfg(test)]
    pub(crate) fn redraw_election_timeout(&mut self, ticks: usize) {
        self.node.raft.set_randomized_election_timeout(ticks);
    }

    /// Stops the replica for a storage error: nothing more is written,
    /// sent or answered.
    fn stop_for(&mut self, reason: String) {
        tracing::error!(
            "replica {}: {reason}; it stops replicating and answers nothing more",
            self.node.raft.id
        );
        self.stopped = Some(reason);
        // The set in use is free again (what was staged is removed at the
        // next start).
        self.staged = None;
    }

    fn propose(&mut self, data: Vec<u8>, answer: Answer) {
        if let Err(e) = decode_body(&data) {
            // The body is written as records: one that is not must not
            // reach the log, where every replica would stop on it.
            return answer(Err(ProposeError::Malformed(e.to_string())));
        }
        if self.node.raft.state != StateRole::Leader {
            let leader = self.node.raft.leader_id;
            return answer(Err(ProposeError::NotLeader { leader }));
        }
        if self.node.propose(vec![], data).is_err() {
            let leader = self.node.raft.leader_id;
            return answer(Err(ProposeError::NotLeader { leader }));
        }
        let index = self.node.raft.raft_log.last_index();
        let term = self.node.raft.term;
        let waiter = Waiter::Answer(answer);
        self.pending.insert(index, Pending { term, waiter });
    }

    /// Gathers the queued records into entries (at most
    /// `MAX_ENTRY_RECORDS` records and about `MAX_ENTRY_BYTES` each) and
    /// proposes them; a barrier waits for everything proposed before it.
    /// `first` was taken from the queue already.
    fn propose_queued(&mut self, first: Option<Proposal>) {
        let Some(queue) = self.proposals.clone() else {
            return;
        };
        if let Some(reason) = &self.stopped {
            let why = ProposeError::Stopped(reason.clone());
            first
                .into_iter()
                .chain(queue.try_iter())
                .for_each(|p| fail_proposal(p, &why));
            return;
        }
        let mut records: Vec<(u8, Vec<u8>)> = Vec::new();
        let mut dones = Vec::new();
        let mut bytes = 0;
        for proposal in first.into_iter().chain(queue.try_iter()) {
            match proposal {
                Proposal::Record {
                    kind,
                    payload,
                    done,
                } => {
                    let full = records.len() == MAX_ENTRY_RECORDS
                        || (bytes + payload.len() > MAX_ENTRY_BYTES && !records.is_empty());
                    if full {
                        self.propose_records(
                            std::mem::take(&mut records),
                            std::mem::take(&mut dones),
                        );
                        bytes = 0;
                    }
                    bytes += payload.len();
                    records.push((kind, payload));
                    dones.push(done);
                }
                Proposal::Barrier(done) => {
                    self.propose_records(std::mem::take(&mut records), std::mem::take(&mut dones));
                    bytes = 0;
                    self.add_read(done);
                }
            }
        }
        self.propose_records(records, dones);
    }

    /// Proposes `records` as one entry, told to `dones` once applied.
    fn propose_records(&mut self, records: Vec<(u8, Vec<u8>)>, dones: Vec<crate::journal::Done>) {
        if records.is_empty() {
            return;
        }
        let leader = self.node.raft.leader_id;
        if self.node.raft.state != StateRole::Leader {
            return fail_dones(dones, &ProposeError::NotLeader { leader });
        }
        let body = encode_body(
            records
                .iter()
                .map(|(kind, payload)| (*kind, payload.as_slice())),
        );
        if self.node.propose(vec![], body).is_err() {
            return fail_dones(dones, &ProposeError::NotLeader { leader });
        }
        let index = self.node.raft.raft_log.last_index();
        let term = self.node.raft.term;
        let waiter = Waiter::Records(dones);
        self.pending.insert(index, Pending { term, waiter });
    }

    /// A read barrier for everything proposed so far, on a leader.
    fn add_read(&mut self, done: crate::journal::Done) {
        if self.node.raft.state != StateRole::Leader {
            let leader = self.node.raft.leader_id;
            return fail_dones([done], &ProposeError::NotLeader { leader });
        }
        self.reads.add(self.node.raft.raft_log.last_index(), done);
    }

    /// Handles every Ready raft-rs has.
    pub(crate) fn ready(&mut self) {
        self.propose_queued(None);
        if self.node.raft.state == StateRole::Leader {
            if let Some(ctx) = self.reads.take_unasked(self.ticks) {
                self.node.read_index(ctx);
            }
        }
        let applied_before = self.applied;
        while self.node.has_ready() && self.stopped.is_none() {
            let mut rd = self.node.ready();
            if !rd.snapshot().is_empty() {
                if let Err(reason) = self.install(&rd) {
                    self.stop_for(reason);
                    return;
                }
            }
            for read in rd.read_states() {
                self.reads.confirm(&read.request_ctx, read.index);
            }
            // Entries committed in this node's term are answered before a
            // step-down in the same Ready fails what is still pending.
            self.apply(rd.take_committed_entries());
            self.report_role();
            self.announce_lead();
            self.effects.send(rd.take_messages());
            let store = self.node.store();
            if let Some(hs) = rd.hs() {
                store.set_hardstate(hs.clone());
            }
            let stored = store.append(rd.entries());
            if let Err(e) = stored {
                self.stop_for(format!("raft-rs storage refused entries: {e}"));
                return;
            }
            let number = rd.number();
            tracing::debug!(
                number,
                entries = ?rd.entries().first().map(|e| (e.index, e.term)),
                count = rd.entries().len(),
                commit = ?rd.hs().map(|h| h.commit),
                applied = self.applied,
                "ready"
            );
            let messages = rd.take_persisted_messages();
            #[cfg(test)]
            let messages = self.send_acks_now(messages);
            let written = self.written.0.clone();
            let then = Box::new(move |result: Result<(), DiskError>| {
                let _ = written.send(Written {
                    number,
                    messages,
                    result: result.map_err(|e| e.to_string()),
                });
            });
            if let Err(e) = self
                .persister
                .persist(rd.entries(), rd.hs(), rd.must_sync(), then)
            {
                self.stop_for(e.to_string());
                return;
            }
            self.node.advance_append_async(rd);
        }
        if let Some(staged) = self.staged.take() {
            // raft-rs did not take it (stale, or its log had the point).
            remove_staged(&staged.dir);
        }
        self.node.advance_apply_to(self.applied);
        // Also when nothing new was applied: a read confirmed now may need
        // no entry it does not have.
        self.reads.release(self.applied);
        if self.applied != applied_before {
            self.effects.applied(self.applied);
        }
    }

    /// Tells the effects, once per term, that this leader has applied the
    /// first entry of its term.
    fn announce_lead(&mut self) {
        let raft = &self.node.raft;
        if raft.state == StateRole::Leader
            && self.applied_term == raft.term
            && self.led_term != raft.term
        {
            self.led_term = raft.term;
            self.effects.lead(raft.term, self.applied);
        }
    }

    /// Applies committed entries in order and answers the proposals among
    /// them that were made in the term they committed in; one of another
    /// term at that index was overwritten, and is told so.
    fn apply(&mut self, entries: Vec<Entry>) {
        for entry in entries {
            self.applied = entry.index;
            self.applied_term = entry.term;
            let pending = self.pending.remove(&entry.index);
            let (ours, other) = match pending {
                Some(p) if p.term == entry.term => (Some(p), None),
                other => (None, other),
            };
            if let Some(pending) = other {
                let leader = self.node.raft.leader_id;
                pending.fail(ProposeError::NotLeader { leader });
            }
            let applied_by_caller = matches!(
                &ours,
                Some(Pending {
                    waiter: Waiter::Records(_),
                    ..
                })
            );
            let normal = entry.get_entry_type() == EntryType::EntryNormal;
            if normal && !entry.data.is_empty() && !applied_by_caller {
                self.effects.apply(entry.index, &entry.data);
            }
            if let Some(pending) = ours {
                let first_lsn = self.persister.header_lsn(entry.index) + 1;
                pending.answer(entry.index, first_lsn);
            }
        }
    }

    /// Tells the effects of a new role, term or leader; a node that is no
    /// longer leader fails what it proposed that has not committed.
    fn report_role(&mut self) {
        let raft = &self.node.raft;
        let now = (raft.state, raft.term, raft.leader_id);
        if now == self.seen {
            return;
        }
        let deposed = self.seen.0 == StateRole::Leader && now.0 != StateRole::Leader;
        self.seen = now;
        // Told first: whoever answers a failed proposal's caller then sees
        // that this node no longer leads, and can name the leader.
        self.effects.role(now.0, now.1, now.2);
        if deposed {
            self.fail_waiting(&ProposeError::NotLeader { leader: now.2 });
        }
    }
}

/// Removes a staged snapshot that is not installed.
fn remove_staged(dir: &std::path::Path) {
    if let Err(e) = std::fs::remove_dir_all(dir) {
        tracing::warn!("removing the staged snapshot {}: {e}", dir.display());
    }
}

/// Tells a proposal's caller it was not decided here.
fn fail_proposal(proposal: Proposal, error: &ProposeError) {
    match proposal {
        Proposal::Record { done, .. } | Proposal::Barrier(done) => fail_dones([done], error),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::thread::JoinHandle;

    use super::*;
    use crate::replica::disk::load;
    use crate::replica::entry::encode_body;
    use crate::schema::txn::KIND_TXN;
    use crate::scratch::Scratch;

    const VOTERS: [u64; 3] = [1, 2, 3];
    const SEGMENT_BYTES: u64 = 64 << 10;

    type Inboxes = Arc<Mutex<HashMap<u64, Sender<Event>>>>;
    type Applied = Arc<Mutex<Vec<(u64, Vec<u8>)>>>;

    /// Messages go straight to the peer's inbox; a peer that is down loses them.
    struct Loopback {
        inboxes: Inboxes,
        applied: Applied,
        progress: Progress,
    }

    /// The last commit index and lags a replica reported.
    type Progress = Arc<Mutex<(u64, Vec<(u64, u64)>)>>;

    impl Effects for Loopback {
        fn send(&mut self, messages: Vec<Message>) {
            let inboxes = self.inboxes.lock().unwrap();
            for message in messages {
                if let Some(inbox) = inboxes.get(&message.to) {
                    let _ = inbox.try_send(Event::Peer(Box::new(message)));
                }
            }
        }

        fn apply(&mut self, index: u64, data: &[u8]) {
            let records = decode_body(data).expect("a body");
            let value = data[records[0].1.clone()].to_vec();
            self.applied.lock().unwrap().push((index, value));
        }

        fn progress(&mut self, commit: u64, lags: &[(u64, u64)]) {
            *self.progress.lock().unwrap() = (commit, lags.to_vec());
        }
    }

    struct Replica {
        thread: Option<JoinHandle<Option<String>>>,
        applied: Applied,
        progress: Progress,
    }

    struct Cluster {
        _scratch: Scratch,
        inboxes: Inboxes,
        replicas: HashMap<u64, Replica>,
    }

    impl Cluster {
        fn new(name: &str) -> Cluster {
            let mut cluster = Cluster {
                _scratch: Scratch::new(name),
                inboxes: Arc::default(),
                replicas: HashMap::new(),
            };
            for id in VOTERS {
                cluster.start(id);
            }
            cluster
        }

        fn start(&mut self, id: u64) {
            let dir = self._scratch.0.join(format!("replica-{id}"));
            let loaded = load(
                &dir.join("journal"),
                &dir.join("raft-state"),
                &VOTERS,
                SEGMENT_BYTES,
                None,
            )
            .expect("the replica's disk loads");
            let (sender, receiver) = crossbeam_channel::bounded(INBOX_EVENTS);
            let (applied, progress) = (Applied::default(), Progress::default());
            let effects = Loopback {
                inboxes: self.inboxes.clone(),
                applied: applied.clone(),
                progress: progress.clone(),
            };
            let logger = slog::Logger::root(slog::Discard, slog::o!());
            let driver = Driver::new(id, loaded, effects, &logger).expect("a node");
            self.inboxes.lock().unwrap().insert(id, sender);
            let thread = std::thread::spawn(move || driver.run(receiver));
            self.replicas.insert(
                id,
                Replica {
                    thread: Some(thread),
                    applied,
                    progress,
                },
            );
        }

        fn stop(&mut self, id: u64) {
            let inbox = self.inboxes.lock().unwrap().remove(&id).expect("running");
            inbox.send(Event::Stop).expect("the driver listens");
            let thread = self.replicas.get_mut(&id).unwrap().thread.take().unwrap();
            assert_eq!(
                thread.join().expect("no panic"),
                None,
                "replica {id} failed"
            );
        }

        /// Proposes `data` to replica `id`, waiting for the answer.
        fn propose(&self, id: u64, data: &[u8]) -> Option<Result<u64, ProposeError>> {
            let inbox = self.inboxes.lock().unwrap().get(&id)?.clone();
            let (sender, receiver) = crossbeam_channel::bounded(1);
            let answer: Answer = Box::new(move |r| drop(sender.send(r)));
            let body = encode_body([(KIND_TXN, data)]);
            inbox.send(Event::Propose(body, answer)).ok()?;
            receiver.recv_timeout(Duration::from_secs(5)).ok()
        }

        /// Proposes `data` until a leader takes it: the leader's id.
        fn commit(&self, data: &[u8]) -> u64 {
            let deadline = Instant::now() + Duration::from_secs(20);
            let mut id = 1;
            while Instant::now() < deadline {
                match self.propose(id, data) {
                    Some(Ok(_)) => return id,
                    Some(Err(ProposeError::NotLeader { leader })) if leader != 0 => id = leader,
                    _ => {
                        id = id % 3 + 1;
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
            }
            panic!("no leader took {data:?} within 20 s");
        }

        fn applied(&self, id: u64) -> Vec<Vec<u8>> {
            let applied = self.replicas[&id].applied.lock().unwrap();
            applied.iter().map(|(_, d)| d.clone()).collect()
        }
    }

    #[test]
    fn three_replicas_on_real_disks_keep_every_answered_entry_across_leader_restarts() {
        // Proves three drivers over real journals elect a leader, apply every answered entry
        // in one order on every replica, and keep doing so when the leader is stopped and
        // restarted from its disk twice (a restarted replica re-applies its log from entry 1).
        let mut cluster = Cluster::new("driver-three");
        let mut answered = Vec::new();
        for round in 0..3 {
            for i in 0..40 {
                let value = format!("r{round}-{i}").into_bytes();
                let leader = cluster.commit(&value);
                answered.push(value);
                if i == 20 && round < 2 {
                    cluster.stop(leader);
                    cluster.start(leader);
                }
            }
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while VOTERS
            .iter()
            .any(|&id| cluster.applied(id).len() < answered.len())
        {
            assert!(Instant::now() < deadline, "replicas did not catch up");
            std::thread::sleep(Duration::from_millis(20));
        }
        for id in VOTERS {
            assert_eq!(cluster.applied(id), answered, "replica {id}");
        }
        for id in VOTERS {
            cluster.stop(id);
        }
    }

    #[test]
    fn the_leader_reports_a_stopped_followers_lag_and_the_commit_index() {
        // Proves the leader's per-tick progress names the follower that is down with a lag of
        // at least the entries committed without it, the live follower at 0, and the commit
        // index; a follower reports lag 0 (it does not know).
        let mut cluster = Cluster::new("driver-lag");
        let leader = cluster.commit(b"first");
        let down = VOTERS.into_iter().find(|&id| id != leader).unwrap();
        let live = VOTERS
            .into_iter()
            .find(|&id| id != leader && id != down)
            .unwrap();
        cluster.stop(down);
        for i in 0..30 {
            assert_eq!(cluster.commit(format!("e{i}").as_bytes()), leader);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (commit, lags) = cluster.replicas[&leader].progress.lock().unwrap().clone();
            let lag = |id| {
                lags.iter()
                    .find(|(peer, _)| *peer == id)
                    .map(|(_, lag)| *lag)
            };
            if lag(live) == Some(0) && lag(down) >= Some(30) && commit >= 31 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "leader reported {commit} {lags:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let (_, lags) = cluster.replicas[&live].progress.lock().unwrap().clone();
        assert!(
            lags.iter().all(|(_, lag)| *lag == 0),
            "a follower reported {lags:?}"
        );
        for id in [leader, live] {
            cluster.stop(id);
        }
    }
}
