//! The proof, at every start, that the snapshots and the journal together
//! still hold every change: each actor's snapshot is there or the journal
//! reaches back to LSN 1 for it, and the journal runs without a gap from
//! the oldest snapshot's LSN to past the newest's. A missing snapshot file
//! or journal segment otherwise goes unseen: the actor would start from
//! nothing, or from an old image, and answered orders would be gone.

use std::path::Path;

use super::frame::SNAPSHOT_SUFFIX;
use super::{journal_dir, snapshot_dir, StoreError};
use crate::journal::Recovered;

/// One actor's place in the chain: its snapshot's name and the LSN it had
/// applied (`None`: it has no snapshot file).
pub(super) struct Link {
    pub name: String,
    pub lsn: Option<u64>,
}

/// Refuses to start unless the journal `recovered` holds every record some
/// actor of `links` still needs, and every record up to the newest
/// snapshot's LSN.
pub(super) fn prove_chain(
    dir: &Path,
    links: &[Link],
    recovered: &Recovered,
) -> Result<(), StoreError> {
    let snapshots = snapshot_dir(dir);
    let file = |name: &str| snapshots.join(format!("{name}{SNAPSHOT_SUFFIX}"));
    let journal = journal_dir(dir);
    let needs = |link: &Link| link.lsn.unwrap_or(0) + 1;
    let Some(oldest) = links.iter().min_by_key(|link| needs(link)) else {
        return Ok(());
    };
    // With no segments, the journal holds nothing and reaches from the
    // oldest snapshot on.
    let first_lsn = recovered.first_lsn.unwrap_or(needs(oldest));
    if first_lsn > needs(oldest) {
        let why = match oldest.lsn {
            None => format!(
                "the snapshot {} is missing, so its actor needs the journal from LSN 1",
                file(&oldest.name).display()
            ),
            Some(lsn) => format!(
                "the snapshot {} is at LSN {lsn}, so its actor needs the journal from LSN {}",
                file(&oldest.name).display(),
                lsn + 1
            ),
        };
        return Err(StoreError::Unreachable {
            why,
            have: format!(
                "the journal {} begins at LSN {first_lsn}: records {}..={} are gone",
                journal.display(),
                needs(oldest),
                first_lsn - 1
            ),
        });
    }
    let newest = links
        .iter()
        .filter_map(|link| link.lsn.map(|lsn| (lsn, link)))
        .max_by_key(|(lsn, _)| *lsn);
    let reached = recovered.end_lsn.max(first_lsn) - 1;
    if let Some((lsn, link)) = newest.filter(|(lsn, _)| *lsn > reached) {
        return Err(StoreError::Unreachable {
            why: format!(
                "the snapshot {} is at LSN {lsn}, written after the journal held that record",
                file(&link.name).display()
            ),
            have: format!(
                "the journal {} ends at LSN {reached}: records {}..={lsn} are gone (its last segment, or the end of it)",
                journal.display(),
                reached + 1
            ),
        });
    }
    Ok(())
}
