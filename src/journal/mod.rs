//! The journal: every state change as a record with an LSN, appended by one
//! writer thread in group commits (many records per fsync), and recovered
//! at start with a torn tail cut and corruption refused.
//!
//! This is the file layer of the durability issue: records are opaque
//! (a kind byte and a payload). Wiring it between the holds and the replies
//! of the engine, and snapshots, come next.
//!
//! A trap to design around when wiring it in: replay must reproduce state
//! from records alone, but a stock count that falls below `reserved` bumps
//! reservations, and today it may bump a *pending* hold whose decision is
//! journaled later (or never). Replayed, the count would bump different
//! orders and the later decision could reserve above on_hand. So either a
//! count revokes pending holds (their attempt re-plans before it is
//! journaled) and bumps only committed reservations, or the count's record
//! carries the bumps it made and replay applies them as written. Shards
//! must apply journaled changes in LSN order for either to hold.

mod files;
pub mod record;

pub use files::{
    recover, remove_segments_through, Done, Durability, Journal, JournalError, JournalStats,
    Recovered, RecoveredRecord, TornTail, DEFAULT_SEGMENT_BYTES, MAX_RECORDS_PER_COMMIT,
};
