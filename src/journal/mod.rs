//! The journal: every state change as a record with an LSN, appended by one
//! writer thread in group commits (many records per fsync), and recovered
//! at start with a torn tail cut and corruption refused.
//!
//! This is the file layer of the durability issue: records are opaque
//! (a kind byte and a payload). Wiring it between the holds and the replies
//! of the engine, and snapshots, come next.

mod files;
pub mod record;

pub use files::{
    recover, Durability, Journal, JournalError, JournalStats, Recovered, RecoveredRecord, TornTail,
    DEFAULT_SEGMENT_BYTES, MAX_RECORDS_PER_COMMIT,
};
