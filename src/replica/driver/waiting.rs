//! What waits on the driver: proposals for their entry to be applied, and
//! read barriers for the leader to confirm it still leads (raft-rs's
//! read-index) and to have applied everything proposed before them.

use std::collections::HashMap;

use super::{Answer, ProposeError};
use crate::journal::{Done, JournalError};

/// Ticks a read barrier waits for its read-index round before it is asked
/// again under a new context: raft-rs drops a read-index request silently
/// (a leader that has not committed an entry in its term, or a round whose
/// heartbeats were lost).
pub const READ_RETRY_TICKS: u64 = 4;

/// Who waits for a proposed entry.
pub enum Waiter {
    /// One caller, told the entry's index.
    Answer(Answer),
    /// The records of an entry the leader's engine proposed, in order:
    /// each told its LSN once the entry is applied.
    Records(Vec<Done>),
}

/// A proposal waiting for its entry, proposed in `term`.
pub struct Pending {
    pub term: u64,
    pub waiter: Waiter,
}

impl Pending {
    /// The entry committed with the term it was proposed in: it is on a
    /// majority's disk. `first_lsn`: the LSN of its first record.
    pub fn answer(self, index: u64, first_lsn: u64) {
        match self.waiter {
            Waiter::Answer(answer) => answer(Ok(index)),
            Waiter::Records(dones) => {
                for (k, done) in dones.into_iter().enumerate() {
                    done(Ok(first_lsn + k as u64));
                }
            }
        }
    }

    /// The entry will not be (or was not) committed in its term: nothing
    /// was decided here.
    pub fn fail(self, error: ProposeError) {
        match self.waiter {
            Waiter::Answer(answer) => answer(Err(error)),
            Waiter::Records(dones) => fail_dones(dones, &error),
        }
    }
}

/// Tells each `done` that its record was not decided here.
pub fn fail_dones(dones: impl IntoIterator<Item = Done>, error: &ProposeError) {
    for done in dones {
        done(Err(journal_error(error)));
    }
}

/// What a record's caller is told when its entry was not committed here.
pub fn journal_error(error: &ProposeError) -> JournalError {
    match error {
        ProposeError::NotLeader { leader } => JournalError::NotLeader { leader: *leader },
        ProposeError::Malformed(_) | ProposeError::Stopped(_) => JournalError::Stopped,
    }
}

/// A read barrier: runs once this node, still leader, has applied
/// everything up to `min_index`.
struct Read {
    min_index: u64,
    done: Done,
}

/// Read barriers by stage: not yet asked, asked under a context, and
/// confirmed (waiting only for apply).
#[derive(Default)]
pub struct Reads {
    next_ctx: u64,
    unasked: Vec<Read>,
    /// By context: the tick they were asked at, and the barriers.
    asked: HashMap<u64, (u64, Vec<Read>)>,
    confirmed: Vec<Read>,
}

impl Reads {
    /// A barrier for everything up to `min_index` (the last index proposed
    /// before it).
    pub fn add(&mut self, min_index: u64, done: Done) {
        self.unasked.push(Read { min_index, done });
    }

    /// The barriers not yet asked (and those asked `READ_RETRY_TICKS` ago
    /// and never confirmed), under one new context to ask raft-rs with.
    pub fn take_unasked(&mut self, tick: u64) -> Option<Vec<u8>> {
        let stale: Vec<u64> = (self.asked.iter())
            .filter(|(_, (at, _))| tick >= at + READ_RETRY_TICKS)
            .map(|(ctx, _)| *ctx)
            .collect();
        for ctx in stale {
            let (_, reads) = self.asked.remove(&ctx).expect("listed");
            self.unasked.extend(reads);
        }
        if self.unasked.is_empty() {
            return None;
        }
        self.next_ctx += 1;
        let reads = std::mem::take(&mut self.unasked);
        self.asked.insert(self.next_ctx, (tick, reads));
        Some(self.next_ctx.to_le_bytes().to_vec())
    }

    /// raft-rs confirmed the reads asked under `ctx` at commit `index`.
    pub fn confirm(&mut self, ctx: &[u8], index: u64) {
        let Ok(ctx) = <[u8; 8]>::try_from(ctx) else {
            return;
        };
        if let Some((_, reads)) = self.asked.remove(&u64::from_le_bytes(ctx)) {
            self.confirmed.extend(reads.into_iter().map(|read| Read {
                min_index: read.min_index.max(index),
                done: read.done,
            }));
        }
    }

    /// Runs the confirmed barriers that `applied` has reached.
    pub fn release(&mut self, applied: u64) {
        if self.confirmed.iter().all(|r| r.min_index > applied) {
            return;
        }
        let (due, wait) = std::mem::take(&mut self.confirmed)
            .into_iter()
            .partition(|r| r.min_index <= applied);
        self.confirmed = wait;
        for read in due {
            (read.done)(Ok(applied));
        }
    }

    /// Fails every barrier: the node no longer leads.
    pub fn fail_all(&mut self, error: &ProposeError) {
        let asked = self.asked.drain().flat_map(|(_, (_, reads))| reads);
        let all: Vec<Read> = (self.unasked.drain(..))
            .chain(asked)
            .chain(self.confirmed.drain(..))
            .collect();
        fail_dones(all.into_iter().map(|r| r.done), error);
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.unasked.is_empty() && self.asked.is_empty() && self.confirmed.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    type Seen = Arc<Mutex<Vec<Result<u64, String>>>>;

    fn recorder() -> (Seen, impl Fn() -> Done) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let make = {
            let seen = seen.clone();
            move || -> Done {
                let seen = seen.clone();
                Box::new(move |r| seen.lock().unwrap().push(r.map_err(|e| e.to_string())))
            }
        };
        (seen, make)
    }

    #[test]
    fn a_read_runs_only_once_confirmed_and_applied_past_both_its_index_and_the_confirmation() {
        // Proves a barrier waits for raft-rs's confirmation and for apply to reach the larger
        // of the index proposed before it and the commit index the confirmation names.
        let (seen, done) = recorder();
        let mut reads = Reads::default();
        reads.add(5, done());
        reads.release(100);
        assert!(seen.lock().unwrap().is_empty(), "not confirmed yet");
        let ctx = reads.take_unasked(0).expect("one to ask");
        reads.confirm(&ctx, 8);
        reads.release(7);
        assert!(seen.lock().unwrap().is_empty(), "confirmed at 8, applied 7");
        reads.release(8);
        assert_eq!(*seen.lock().unwrap(), vec![Ok(8)]);
        assert!(reads.is_empty());
    }

    #[test]
    fn an_unconfirmed_read_is_asked_again_and_a_step_down_fails_every_stage() {
        // Proves a read raft-rs dropped is asked again under a new context after
        // READ_RETRY_TICKS (the old context no longer confirms it), and that fail_all tells
        // every barrier, whatever its stage, that this node does not lead.
        let (seen, done) = recorder();
        let mut reads = Reads::default();
        reads.add(1, done());
        let first = reads.take_unasked(0).unwrap();
        assert_eq!(reads.take_unasked(READ_RETRY_TICKS - 1), None);
        let second = reads.take_unasked(READ_RETRY_TICKS).expect("asked again");
        assert_ne!(first, second);
        reads.confirm(&first, 1);
        reads.release(10);
        assert!(seen.lock().unwrap().is_empty(), "the old context is gone");
        reads.add(2, done());
        reads.add(3, done());
        let third = reads.take_unasked(READ_RETRY_TICKS).unwrap();
        reads.confirm(&third, 50);
        reads.add(4, done());
        reads.fail_all(&ProposeError::NotLeader { leader: 2 });
        assert_eq!(seen.lock().unwrap().len(), 4);
        assert!(seen.lock().unwrap().iter().all(|r| r.is_err()));
        assert!(reads.is_empty());
    }
}
