//! The journal: every state change as a record with an LSN, appended by one
//! writer thread in group commits (many records per fsync), and recovered
//! at start with a torn tail cut and corruption refused.
//!
//! Records are opaque here (a kind byte and a payload); what they hold and
//! how they are replayed is `engine::sequencer` and `store`.
//!
//! The trap the wiring had to design around: replay must reproduce state
//! from records alone, but a stock count that falls below `reserved` bumps
//! reservations, and the first cut could bump a *pending* hold whose
//! decision is journaled later (or never). Replayed, the count would bump
//! different orders and the later decision could reserve above on_hand. So
//! counts bump only journaled reservations, a journaled reserve grants only
//! what is free (bumping the rest), and shards apply journaled ops in LSN
//! order.

mod files;
pub mod record;

pub use files::{
    read, recover, remove_segments_through, Done, Durability, Journal, JournalError, JournalStats,
    ReadSummary, Recovered, RecoveredRecord, Slot, TornTail, DEFAULT_SEGMENT_BYTES,
    MAX_RECORDS_PER_COMMIT,
};
