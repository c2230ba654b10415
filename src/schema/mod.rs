//! The persisted format: what the data directory says, and the version of
//! how it says it. Everything on disk names channels, markets, nodes and
//! SKUs by a stable id: a SKU's from the catalog snapshot and the journal's
//! `skus` lists, the others' from [`Names`], kept in `DIR/names.toml`. An
//! id is a name's place in its list there, and the lists only grow, so
//! reordering the config, adding to it or retiring from it never changes
//! what a stored order means.
//!
//! The journal's record ([`Txn`], in [`txn`]) and the snapshot images
//! carry these ids; [`Layout`] says how the snapshot set partitions the
//! state (shards, routers).

mod names;
pub mod txn;

pub use names::{format_version_of, Layout, Names, NamesError};
pub use txn::Txn;

/// The version of the data directory's format. 1: ids from `names.toml`
/// (format 0, before it, stored channels and markets by their place in
/// the config and had no names file). 2: rejected orders are demand
/// records ([`txn::KIND_DEMAND`]), not orders; a format-1 directory is
/// read as it is (its rejected orders are dropped at load) and written
/// as format 2 from then on. 3: a journal record's header (length, kind,
/// LSN, payload checksum) has a checksum of its own; an older directory's
/// segments are rewritten so at open (`store::upgrade`).
pub const FORMAT_VERSION: u32 = 3;

/// The oldest format this build reads (and upgrades in place).
pub const OLDEST_READABLE_FORMAT: u32 = 1;
