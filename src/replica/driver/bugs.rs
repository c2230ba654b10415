//! Deliberate wrongs in the ready loop, for tests only: the simulation
//! injects one into the production pass to show that its checks catch
//! what the wrong breaks. A driver has none unless [`Driver::inject`] is
//! called.

use raft::eraftpb::{Message, MessageType};

use super::{Driver, Effects, Persist};

/// A wrong the pass can be told to make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bug {
    /// The leader answers a proposal once its own log has the entry
    /// durably, before a majority does.
    AnswerOnLocalPersist,
    /// A replica sends its acks (append responses, vote grants) as soon
    /// as the Ready is handled, before its write is durable.
    AckBeforeFsync,
}

impl<E: Effects, P: Persist> Driver<E, P> {
    /// Makes this driver commit `bug` from now on.
    pub(crate) fn inject(&mut self, bug: Bug) {
        self.bug = Some(bug);
    }

    /// With `AckBeforeFsync`, sends the acks among a Ready's persisted
    /// messages now; the rest, to send once durable.
    pub(super) fn send_acks_now(&mut self, messages: Vec<Message>) -> Vec<Message> {
        if self.bug != Some(Bug::AckBeforeFsync) {
            return messages;
        }
        // Wrong: the ack promises what a crash can still lose.
        let (acks, rest) = messages.into_iter().partition(is_ack);
        self.effects.send(acks);
        rest
    }

    /// With `AnswerOnLocalPersist`, answers every pending proposal whose
    /// entry this replica's own log now has durably, in index order (so a
    /// seed replays exactly).
    pub(super) fn answer_on_local_persist(&mut self) {
        if self.bug != Some(Bug::AnswerOnLocalPersist) {
            return;
        }
        let log = &self.node.raft.raft_log;
        let mut durable: Vec<u64> = self
            .pending
            .iter()
            .filter(|(index, p)| **index <= log.persisted && log.term(**index) == Ok(p.term))
            .map(|(index, _)| *index)
            .collect();
        durable.sort_unstable();
        for index in durable {
            // Wrong: the leader's own log is not a majority's.
            let pending = self.pending.remove(&index).expect("pending");
            let first_lsn = self.persister.header_lsn(index) + 1;
            pending.answer(index, first_lsn);
        }
    }
}

/// An ack: a message that tells its receiver what this replica has (or
/// has promised), which is only true once it is durable.
fn is_ack(message: &Message) -> bool {
    matches!(
        message.get_msg_type(),
        MessageType::MsgAppendResponse
            | MessageType::MsgRequestVoteResponse
            | MessageType::MsgRequestPreVoteResponse
            | MessageType::MsgHeartbeatResponse
    )
}
