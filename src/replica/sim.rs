//! A seeded, deterministic simulation of three raft-rs replicas in one
//! thread: no clock, no sockets, no tokio. Messages are delayed, dropped,
//! cut by partitions; replicas crash and restart from what they had
//! persisted. After every event the run checks Raft's promises as the
//! daemon relies on them, and at the end that every answered proposal is
//! applied, in one order, on every replica.
//!
//! Persistence here is synchronous (entries and hard state are "durable"
//! the moment a Ready is handled), so a crash loses only what was never
//! handed to storage. The daemon's group commit will make it asynchronous;
//! the simulation then gains a durable prefix per replica.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};

use raft::eraftpb::{ConfState, Entry, EntryType, Message};
use raft::storage::MemStorage;
use raft::{Config, RawNode, StateRole};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Replicas in the simulated cluster (ids 1..=REPLICAS).
const REPLICAS: u64 = 3;
/// Ticks in an election timeout's lower bound; a heartbeat every 3.
const ELECTION_TICKS: usize = 10;
const HEARTBEAT_TICKS: usize = 3;
/// Simulated milliseconds between two ticks of a replica.
const TICK_MS: u64 = 10;
/// How long a seed runs with faults, then quiet to let every replica catch up.
const FAULTY_MS: u64 = 4_000;
const QUIET_MS: u64 = 3_000;

/// A deliberately wrong replica, to show the checks catch it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bug {
    /// The leader answers a proposal once its own log has it, before a
    /// majority does.
    AnswerOnLocalPersist,
}

/// What broke, at which simulated time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub at_ms: u64,
    pub what: String,
}

enum Event {
    Tick(u64),
    Deliver(Box<Message>),
    Propose,
    Fault,
}

struct Replica {
    node: Option<RawNode<MemStorage>>,
    storage: MemStorage,
    /// Applied normal entries in order: (index, term, value).
    applied: Vec<(u64, u64, u64)>,
    /// Proposals made here as leader, by index: (term, value).
    pending: HashMap<u64, (u64, u64)>,
    /// (term, role) when its election timeout was last drawn.
    drawn_for: (u64, StateRole),
}

/// Summary of one seed's run.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    pub answered: usize,
    /// Entries every replica applied by the end.
    pub applied: usize,
    pub elections: usize,
    pub crashes: usize,
}

/// Runs one seed; Err names the first broken promise.
pub fn run(seed: u64, bug: Option<Bug>) -> Result<Outcome, Violation> {
    Sim::new(seed, bug).run()
}

struct Sim {
    rng: StdRng,
    bug: Option<Bug>,
    now_ms: u64,
    seq: u64,
    /// Due events by (time, sequence): the sequence breaks ties in the
    /// order they were scheduled, so a seed replays exactly.
    queue: BinaryHeap<Reverse<(u64, u64)>>,
    events: HashMap<u64, Event>,
    replicas: BTreeMap<u64, Replica>,
    /// Directed links that drop everything.
    cut: HashSet<(u64, u64)>,
    leaders: HashMap<u64, u64>,
    /// The first entry applied anywhere at each index: (term, value).
    chosen: HashMap<u64, (u64, u64)>,
    answered: Vec<u64>,
    next_value: u64,
    outcome: Outcome,
}

fn logger() -> slog::Logger {
    slog::Logger::root(slog::Discard, slog::o!())
}

fn config(id: u64, applied: u64) -> Config {
    let config = Config {
        id,
        election_tick: ELECTION_TICKS,
        heartbeat_tick: HEARTBEAT_TICKS,
        applied,
        pre_vote: true,
        check_quorum: true,
        max_size_per_msg: 1 << 20,
        max_inflight_msgs: 256,
        ..Config::default()
    };
    config.validate().expect("a valid raft config");
    config
}

impl Sim {
    fn new(seed: u64, bug: Option<Bug>) -> Sim {
        let mut sim = Sim {
            rng: StdRng::seed_from_u64(seed),
            bug,
            now_ms: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            events: HashMap::new(),
            replicas: BTreeMap::new(),
            cut: HashSet::new(),
            leaders: HashMap::new(),
            chosen: HashMap::new(),
            answered: Vec::new(),
            next_value: 1,
            outcome: Outcome::default(),
        };
        let voters: Vec<u64> = (1..=REPLICAS).collect();
        for id in 1..=REPLICAS {
            let storage =
                MemStorage::new_with_conf_state(ConfState::from((voters.clone(), vec![])));
            sim.replicas.insert(
                id,
                Replica {
                    node: None,
                    storage,
                    applied: Vec::new(),
                    pending: HashMap::new(),
                    drawn_for: (0, StateRole::Follower),
                },
            );
            sim.start(id);
            let first_tick = sim.rng.random_range(0..TICK_MS);
            sim.at(first_tick, Event::Tick(id));
        }
        sim.at(1, Event::Propose);
        sim.at(100, Event::Fault);
        sim
    }

    fn at(&mut self, delay_ms: u64, event: Event) {
        self.seq += 1;
        self.queue.push(Reverse((self.now_ms + delay_ms, self.seq)));
        self.events.insert(self.seq, event);
    }

    /// A replica (re)started from its storage: raft-rs draws election
    /// timeouts from the thread's rng, so they are reset from the seed.
    fn start(&mut self, id: u64) {
        let replica = self.replicas.get_mut(&id).expect("a replica");
        let node = RawNode::new(&config(id, 0), replica.storage.clone(), &logger())
            .expect("a raft node from its storage");
        replica.node = Some(node);
        replica.applied.clear();
        replica.pending.clear();
        replica.drawn_for = (u64::MAX, StateRole::Follower);
        self.draw_timeout(id);
    }

    /// raft-rs draws a new election timeout from the thread's rng whenever
    /// a node changes term or role; drawn again here from the seed, so a
    /// seed replays exactly.
    fn draw_timeout(&mut self, id: u64) {
        let timeout = self.rng.random_range(ELECTION_TICKS..2 * ELECTION_TICKS);
        let replica = self.replicas.get_mut(&id).expect("a replica");
        let Some(node) = replica.node.as_mut() else {
            return;
        };
        let now = (node.raft.term, node.raft.state);
        if now != replica.drawn_for {
            node.raft.set_randomized_election_timeout(timeout);
            replica.drawn_for = now;
        }
    }

    fn run(mut self) -> Result<Outcome, Violation> {
        while let Some(Reverse((at, seq))) = self.queue.pop() {
            if at > FAULTY_MS + QUIET_MS {
                break;
            }
            let event = self.events.remove(&seq).expect("a scheduled event");
            self.now_ms = at;
            self.handle(event)?;
        }
        self.check_end()?;
        self.outcome.answered = self.answered.len();
        self.outcome.applied = self.replicas[&1].applied.len();
        Ok(self.outcome)
    }

    fn handle(&mut self, event: Event) -> Result<(), Violation> {
        match event {
            Event::Tick(id) => {
                if let Some(node) = self.node(id) {
                    node.tick();
                }
                self.draw_timeout(id);
                self.at(TICK_MS, Event::Tick(id));
                self.ready(id)
            }
            Event::Deliver(message) => {
                let to = message.to;
                if let Some(node) = self.node(to) {
                    // A message from a peer the node does not know is ignored.
                    let _ = node.step(*message);
                }
                self.draw_timeout(to);
                self.ready(to)
            }
            Event::Propose => {
                if self.now_ms < FAULTY_MS {
                    self.propose()?;
                    let gap = self.rng.random_range(1..20);
                    self.at(gap, Event::Propose);
                }
                Ok(())
            }
            Event::Fault => {
                if self.now_ms < FAULTY_MS {
                    self.fault();
                    let gap = self.rng.random_range(50..400);
                    self.at(gap, Event::Fault);
                } else {
                    self.heal();
                }
                Ok(())
            }
        }
    }

    fn node(&mut self, id: u64) -> Option<&mut RawNode<MemStorage>> {
        self.replicas.get_mut(&id)?.node.as_mut()
    }

    /// A client offers the next value to a random live replica; only a
    /// leader takes it.
    fn propose(&mut self) -> Result<(), Violation> {
        let id = self.rng.random_range(1..=REPLICAS);
        let value = self.next_value;
        let replica = self.replicas.get_mut(&id).expect("a replica");
        let Some(node) = replica.node.as_mut() else {
            return Ok(());
        };
        if node.raft.state != StateRole::Leader {
            return Ok(());
        }
        if node.propose(vec![], value.to_le_bytes().to_vec()).is_err() {
            return Ok(());
        }
        self.next_value += 1;
        let index = node.raft.raft_log.last_index();
        let term = node.raft.term;
        replica.pending.insert(index, (term, value));
        self.ready(id)?;
        if self.bug == Some(Bug::AnswerOnLocalPersist) {
            // Wrong: the leader's own log is not a majority's.
            if let Some(replica) = self.replicas.get_mut(&id) {
                replica.pending.remove(&index);
            }
            self.answered.push(value);
        }
        Ok(())
    }

    /// One fault: a crash, a restart, a cut link, or a heal.
    fn fault(&mut self) {
        let id = self.rng.random_range(1..=REPLICAS);
        match self.rng.random_range(0..4) {
            0 => {
                let down = self.replicas.values().filter(|r| r.node.is_none()).count();
                // At most one replica down: a majority can still decide.
                if down == 0 {
                    self.replicas.get_mut(&id).expect("a replica").node = None;
                    self.outcome.crashes += 1;
                }
            }
            1 => {
                if self.replicas[&id].node.is_none() {
                    self.start(id);
                }
            }
            2 => {
                let other = 1 + (id + self.rng.random_range(0..REPLICAS - 1)) % REPLICAS;
                self.cut.insert((id, other));
                if self.rng.random_bool(0.5) {
                    self.cut.insert((other, id));
                }
            }
            _ => self.cut.clear(),
        }
    }

    fn heal(&mut self) {
        self.cut.clear();
        let down: Vec<u64> = self
            .replicas
            .iter()
            .filter(|(_, r)| r.node.is_none())
            .map(|(id, _)| *id)
            .collect();
        for id in down {
            self.start(id);
        }
    }

    fn send(&mut self, messages: Vec<Message>) {
        for message in messages {
            if self.cut.contains(&(message.from, message.to)) || self.rng.random_bool(0.05) {
                continue;
            }
            let delay = self.rng.random_range(1..15);
            self.at(delay, Event::Deliver(Box::new(message)));
        }
    }

    /// Handles every Ready of a replica, persisting synchronously.
    fn ready(&mut self, id: u64) -> Result<(), Violation> {
        loop {
            let replica = self.replicas.get_mut(&id).expect("a replica");
            let Some(node) = replica.node.as_mut() else {
                return Ok(());
            };
            if !node.has_ready() {
                return Ok(());
            }
            let mut rd = node.ready();
            let store = replica.storage.clone();
            let leader_messages = rd.take_messages();
            if !rd.snapshot().is_empty() {
                store
                    .wl()
                    .apply_snapshot(rd.snapshot().clone())
                    .expect("a snapshot applies");
            }
            let committed = rd.take_committed_entries();
            store.wl().append(rd.entries()).expect("entries append");
            if let Some(hs) = rd.hs() {
                store.wl().set_hardstate(hs.clone());
            }
            let persisted = rd.take_persisted_messages();
            let mut light = node.advance(rd);
            if let Some(commit) = light.commit_index() {
                store.wl().mut_hard_state().set_commit(commit);
            }
            let more_messages = light.take_messages();
            let more_committed = light.take_committed_entries();
            node.advance_apply();
            self.draw_timeout(id);
            self.observe_role(id)?;
            self.send(leader_messages);
            self.send(persisted);
            self.send(more_messages);
            self.apply(id, committed)?;
            self.apply(id, more_committed)?;
        }
    }

    /// At most one leader per term.
    fn observe_role(&mut self, id: u64) -> Result<(), Violation> {
        let node = self.replicas[&id].node.as_ref().expect("a live node");
        if node.raft.state != StateRole::Leader {
            return Ok(());
        }
        let term = node.raft.term;
        match self.leaders.insert(term, id) {
            Some(other) if other != id => {
                Err(self.violation(format!("two leaders in term {term}: {other} and {id}")))
            }
            Some(_) => Ok(()),
            None => {
                self.outcome.elections += 1;
                Ok(())
            }
        }
    }

    /// Applies committed entries: every replica must apply the same value
    /// at an index; a leader answers its own proposals of its term.
    fn apply(&mut self, id: u64, entries: Vec<Entry>) -> Result<(), Violation> {
        for entry in entries {
            if entry.get_entry_type() != EntryType::EntryNormal || entry.data.is_empty() {
                continue;
            }
            let value = u64::from_le_bytes(entry.data[..8].try_into().expect("8 bytes"));
            let (index, term) = (entry.index, entry.term);
            let first = *self.chosen.entry(index).or_insert((term, value));
            if first != (term, value) {
                return Err(self.violation(format!(
                    "replica {id} applied {value} (term {term}) at index {index}, another applied {first:?}"
                )));
            }
            let replica = self.replicas.get_mut(&id).expect("a replica");
            replica.applied.push((index, term, value));
            if let Some((proposed_term, proposed)) = replica.pending.remove(&index) {
                if proposed_term == term && proposed == value {
                    self.answered.push(value);
                }
            }
        }
        Ok(())
    }

    /// After the quiet time: every replica applied the same entries, and
    /// every answered value is among them.
    fn check_end(&self) -> Result<(), Violation> {
        let first = &self.replicas[&1].applied;
        for (id, replica) in &self.replicas {
            if &replica.applied != first {
                return Err(self.violation(format!(
                    "replica {id} applied {} entries, replica 1 {}",
                    replica.applied.len(),
                    first.len()
                )));
            }
        }
        let applied: HashSet<u64> = first.iter().map(|(_, _, v)| *v).collect();
        if let Some(lost) = self.answered.iter().find(|v| !applied.contains(v)) {
            return Err(self.violation(format!("answered value {lost} was never applied")));
        }
        Ok(())
    }

    fn violation(&self, what: String) -> Violation {
        Violation {
            at_ms: self.now_ms,
            what,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{run, Bug};

    /// Seeds a test run: enough to meet crashes of leaders mid-replication.
    const SEEDS: u64 = 200;

    #[test]
    fn every_seed_keeps_raft_promises_under_partitions_and_crashes() {
        // Proves that over SEEDS seeded runs of crashes, cut links, drops and delays, there is
        // one leader per term, one value per index, and every answered value is applied on
        // every replica at the end.
        let (mut answered, mut elections, mut crashes) = (0, 0, 0);
        for seed in 0..SEEDS {
            let outcome = run(seed, None).unwrap_or_else(|v| panic!("seed {seed}: {v:?}"));
            assert!(outcome.elections >= 1, "seed {seed}: no leader ever");
            answered += outcome.answered;
            elections += outcome.elections;
            crashes += outcome.crashes;
        }
        println!("{SEEDS} seeds: {answered} answered, {elections} elections, {crashes} crashes");
        assert!(answered > 0, "nothing was ever answered");
    }

    #[test]
    fn a_seed_replays_exactly() {
        // Proves a seed decides the whole run (raft-rs's own random election timeouts are
        // overridden from it), so a failing seed can be replayed.
        for seed in [3, 17, 99] {
            assert_eq!(run(seed, None), run(seed, None), "seed {seed}");
        }
    }

    #[test]
    fn answering_before_a_majority_has_the_entry_is_caught() {
        // Proves the checks can fail: a leader that answers from its own log loses an
        // answered value in some seed.
        let caught: Vec<_> = (0..SEEDS)
            .filter_map(|seed| Some((seed, run(seed, Some(Bug::AnswerOnLocalPersist)).err()?)))
            .collect();
        println!(
            "{} of {SEEDS} seeds caught it; first: {:?}",
            caught.len(),
            caught.first()
        );
        assert!(!caught.is_empty(), "no seed caught the early answer");
    }
}
