//! A simulated replica's disk: what the journal and the hard-state file
//! promise the ready loop, without files. [`SimPersister`] queues each
//! Ready's writes in the order `disk::Persister` makes them (a cut's
//! intent, the cut, the intent cleared, the entries, the hard state); the
//! simulation's writer takes the queued jobs later, several per fsync like
//! the group commit, and completes them in order: only then are they
//! durable and is the driver told. A crash loses the jobs the writer has
//! not finished, all but a prefix of the writes in its hand; a power loss
//! also loses a hard state written without a sync. [`load`] reads back what is
//! durable as `disk::load` does: a cut whose intent was written is
//! finished, and raft-rs's storage is built by the same `storage_of`.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;

use raft::eraftpb::{ConfState, Entry, HardState};

use crate::replica::disk::{storage_of, DiskError, Loaded, Persist, Persisted};
use crate::replica::hard_state::DurableState;

/// One write of a Ready's job, in the order the real persister makes them.
enum Step {
    /// The cut's intent, synced: the log is to end before this index.
    Intent(u64),
    /// The cut: every entry from this index on is gone.
    Cut(u64),
    /// The intent cleared as soon as the cut is made, synced: left on the
    /// disk it would cut the entries written after it at the next start.
    Cleared,
    Entry(Entry),
    /// Synced only when term or vote changed, as `disk::Persister`'s file
    /// does: a commit index alone is not (a lost one is told again).
    Hard {
        hard: HardState,
        synced: bool,
    },
}

/// One Ready's writes, and whom to tell once they are all durable.
struct Job {
    steps: Vec<Step>,
    then: Persisted,
}

/// What survives a crash.
#[derive(Default)]
struct Durable {
    /// The log from index 1: no entry is ever compacted.
    entries: Vec<Entry>,
    hard: HardState,
    /// The last hard state written with a sync: what a power loss leaves
    /// when the writes after it were not synced.
    synced_hard: HardState,
    /// A cut whose intent is written and that is not known to be made.
    intent: Option<u64>,
}

/// One replica's disk: what is durable, and the writer's queue.
#[derive(Default)]
pub(super) struct Disk {
    durable: Durable,
    /// Jobs not yet durable, oldest first; the writer has the first
    /// `writing` of them in hand.
    jobs: VecDeque<Job>,
    writing: usize,
    /// Starts that found a cut's intent left by a crash and finished it.
    pub(super) cuts_finished_at_start: usize,
}

/// The disk, shared by the simulation (its writer, its crashes) and the
/// persister the replica's driver owns.
pub(super) type SharedDisk = Rc<RefCell<Disk>>;

impl Disk {
    /// The writer takes every queued job into one fsync, if it is idle;
    /// None if it took nothing, else whether what it took cuts the log.
    pub(super) fn start_write(&mut self) -> Option<bool> {
        if self.writing > 0 || self.jobs.is_empty() {
            return None;
        }
        self.writing = self.jobs.len();
        let mut steps = self.jobs.iter().flat_map(|j| &j.steps);
        Some(steps.any(|s| matches!(s, Step::Intent(_))))
    }

    /// The writer's jobs are durable: whom to tell, in order.
    pub(super) fn write_done(&mut self) -> Vec<Persisted> {
        let done: Vec<Job> = self.jobs.drain(..self.writing).collect();
        self.writing = 0;
        let mut thens = Vec::with_capacity(done.len());
        for job in done {
            job.steps
                .into_iter()
                .for_each(|step| self.durable.make(step));
            thens.push(job.then);
        }
        thens
    }

    /// The writes of the jobs in the writer's hand, for a crash to stop in.
    pub(super) fn steps_in_hand(&self) -> usize {
        self.jobs
            .iter()
            .take(self.writing)
            .map(|j| j.steps.len())
            .sum()
    }

    /// The replica crashes after the writer made the first `written` steps
    /// in hand durable; the rest, and whom they would have told, are gone.
    /// A power loss also loses a hard state written without a sync.
    /// Whether a queued job was lost before its driver was told.
    pub(super) fn crash(&mut self, written: usize, power_lost: bool) -> bool {
        let lost = !self.jobs.is_empty();
        let in_hand = self.jobs.drain(..self.writing).flat_map(|j| j.steps);
        in_hand
            .take(written)
            .for_each(|step| self.durable.make(step));
        self.jobs.clear();
        self.writing = 0;
        if power_lost {
            self.durable.hard = self.durable.synced_hard.clone();
        }
        lost
    }

    /// The durable entry at `index`, if there is one.
    pub(super) fn entry(&self, index: u64) -> Option<&Entry> {
        let at = usize::try_from(index.checked_sub(1)?).ok()?;
        self.durable.entries.get(at)
    }
}

impl Durable {
    fn make(&mut self, step: Step) {
        match step {
            Step::Intent(index) => {
                self.intent = Some(index);
                self.synced_hard = self.hard.clone();
            }
            Step::Cut(index) => self.entries.truncate(index as usize - 1),
            Step::Cleared => {
                self.intent = None;
                self.synced_hard = self.hard.clone();
            }
            Step::Entry(entry) => {
                // The persister cuts before it writes an index the log has.
                assert_eq!(
                    entry.index,
                    self.entries.len() as u64 + 1,
                    "an entry written off the end of the durable log"
                );
                self.entries.push(entry);
            }
            Step::Hard { hard, synced } => {
                if synced {
                    self.synced_hard = hard.clone();
                }
                self.hard = hard;
            }
        }
    }
}

/// Reads back what `disk` has durably for a (re)started replica of
/// `voters`: a cut whose intent was written is finished first.
pub(super) fn load(disk: &SharedDisk, voters: &[u64]) -> Result<Loaded<SimPersister>, DiskError> {
    let mut shared = disk.borrow_mut();
    if let Some(index) = shared.durable.intent.take() {
        shared.durable.make(Step::Cut(index));
        shared.durable.make(Step::Cleared);
        shared.cuts_finished_at_start += 1;
    }
    let state = DurableState {
        hard: shared.durable.hard.clone(),
        conf: ConfState::from((voters.to_vec(), vec![])),
        ..DurableState::default()
    };
    let storage = storage_of(&state, &shared.durable.entries, (0, 0))?;
    let persister = SimPersister {
        disk: disk.clone(),
        last_queued: shared.durable.entries.len() as u64,
        last_hard: state.hard.clone(),
    };
    Ok(Loaded {
        storage,
        persister,
        applied: (0, 0),
    })
}

/// Queues a driver's writes on its simulated disk, as `disk::Persister`
/// queues them on the journal's writer thread.
pub(super) struct SimPersister {
    disk: SharedDisk,
    /// The index of the last entry queued: a Ready's entries at or before
    /// it overwrite the log, so their cut comes first.
    last_queued: u64,
    /// The hard state last queued: the next one is synced if its term or
    /// vote differ.
    last_hard: HardState,
}

impl Persist for SimPersister {
    fn persist(
        &mut self,
        entries: &[Entry],
        hard: Option<&HardState>,
        _must_sync: bool,
        then: Persisted,
    ) -> Result<(), DiskError> {
        let mut steps = Vec::with_capacity(entries.len() + 4);
        if let (Some(first), Some(last)) = (entries.first(), entries.last()) {
            if first.index <= self.last_queued {
                steps.extend([
                    Step::Intent(first.index),
                    Step::Cut(first.index),
                    Step::Cleared,
                ]);
            }
            self.last_queued = last.index;
        }
        steps.extend(entries.iter().cloned().map(Step::Entry));
        if let Some(hard) = hard {
            let synced = (hard.term, hard.vote) != (self.last_hard.term, self.last_hard.vote);
            self.last_hard = hard.clone();
            steps.push(Step::Hard {
                hard: hard.clone(),
                synced,
            });
        }
        self.disk.borrow_mut().jobs.push_back(Job { steps, then });
        Ok(())
    }

    /// The simulated disk has no LSNs: the index stands for one.
    fn header_lsn(&self, index: u64) -> u64 {
        index
    }

    /// The simulation's replicas take no snapshots.
    fn entry_through(&self, _lsn: u64) -> Option<(u64, u64, u64)> {
        None
    }

    /// The simulation does not compact yet: its replicas take no snapshots.
    fn compact(&mut self, _index: u64) {}

    /// Nothing to wait for: the simulation's writer is its scheduler.
    fn close(&self) {}
}
