//! Where each replicated entry lies in the journal, read back at start:
//! the entries' indexes and terms, and the LSNs each one spans. The
//! journal was checked record by record already (checksums, consecutive
//! LSNs); this checks the entries: each header's records all there, one
//! index after another, terms never going back.

use super::entry::{EntryError, EntryHeader};
use crate::journal::RecoveredRecord;
use crate::schema::txn::KIND_RAFT_ENTRY;

/// One entry in the journal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryPos {
    pub index: u64,
    pub term: u64,
    pub entry_type: u8,
    /// The LSN of its header record; its records follow it.
    pub header_lsn: u64,
    /// The LSN after its last record: where the next entry's header goes.
    pub end_lsn: u64,
}

impl EntryPos {
    /// The records after the header that are the entry's body.
    pub fn records(&self) -> usize {
        (self.end_lsn - self.header_lsn - 1) as usize
    }
}

/// The entries of a journal, in index order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogIndex {
    pub entries: Vec<EntryPos>,
    /// The header LSN of a last entry whose records stop short: a group
    /// commit a crash cut (its torn record erased), never reported
    /// persisted. The caller cuts the journal from there before it writes.
    pub unfinished_from: Option<u64>,
}

/// Why the journal's records are not a log of entries.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("journal record {lsn}: {reason}")]
pub struct LogIndexError {
    pub lsn: u64,
    pub reason: String,
}

impl LogIndex {
    /// Indexes `records` (consecutive LSNs, from the journal's first): the
    /// first must be the header of an entry at or before `first_index`,
    /// the one after the snapshot set's (compaction removes segments only
    /// once a set holds their entries, so the journal may begin earlier,
    /// never later).
    pub fn build(records: &[RecoveredRecord], first_index: u64) -> Result<LogIndex, LogIndexError> {
        let mut index = LogIndex::default();
        let mut at = 0;
        while at < records.len() {
            let header_record = &records[at];
            let header = header_of(header_record)?;
            index.check_next(&header, header_record.lsn, first_index)?;
            let body = records.get(at + 1..).unwrap_or_default();
            let count = header.records as usize;
            if let Some(inner) = body.iter().take(count).find(|r| r.kind == KIND_RAFT_ENTRY) {
                return Err(LogIndexError {
                    lsn: inner.lsn,
                    reason: format!(
                        "an entry header inside entry {} (its {count} records run to LSN {})",
                        header.index,
                        header_record.lsn + count as u64
                    ),
                });
            }
            if body.len() < count {
                index.unfinished_from = Some(header_record.lsn);
                break;
            }
            index.entries.push(EntryPos {
                index: header.index,
                term: header.term,
                entry_type: header.entry_type,
                header_lsn: header_record.lsn,
                end_lsn: header_record.lsn + 1 + count as u64,
            });
            at += 1 + count;
        }
        Ok(index)
    }

    /// The entry at `header` follows the last one: the next index, a term
    /// no lower.
    fn check_next(
        &self,
        header: &EntryHeader,
        lsn: u64,
        first_index: u64,
    ) -> Result<(), LogIndexError> {
        let Some(last) = self.entries.last() else {
            if (1..=first_index).contains(&header.index) {
                return Ok(());
            }
            return Err(LogIndexError {
                lsn,
                reason: format!(
                    "the journal begins with entry {}, where entry {first_index} or an earlier one was due (entry {first_index} follows the snapshot set's): entries are missing",
                    header.index
                ),
            });
        };
        let reason = if header.index != last.index + 1 {
            format!(
                "entry {} follows entry {}: entries are missing or repeated",
                header.index, last.index
            )
        } else if header.term < last.term {
            format!(
                "entry {} has term {}, below its predecessor's {}",
                header.index, header.term, last.term
            )
        } else {
            return Ok(());
        };
        Err(LogIndexError { lsn, reason })
    }
}

fn header_of(record: &RecoveredRecord) -> Result<EntryHeader, LogIndexError> {
    if record.kind != KIND_RAFT_ENTRY {
        return Err(LogIndexError {
            lsn: record.lsn,
            reason: format!(
                "a record of kind {} outside any entry (a replica's journal holds only entries)",
                record.kind
            ),
        });
    }
    EntryHeader::decode(&record.payload).map_err(|e: EntryError| LogIndexError {
        lsn: record.lsn,
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::txn::KIND_TXN;

    /// A journal of entries (index, term, records), from LSN `first_lsn`.
    fn journal(first_lsn: u64, entries: &[(u64, u64, u32)]) -> Vec<RecoveredRecord> {
        let mut records = Vec::new();
        let mut lsn = first_lsn;
        for &(index, term, count) in entries {
            let header = EntryHeader {
                index,
                term,
                entry_type: 0,
                records: count,
            };
            records.push(RecoveredRecord {
                lsn,
                kind: KIND_RAFT_ENTRY,
                payload: header.encode(),
            });
            for _ in 0..count {
                lsn += 1;
                records.push(RecoveredRecord {
                    lsn,
                    kind: KIND_TXN,
                    payload: vec![1, 2, 3],
                });
            }
            lsn += 1;
        }
        records
    }

    #[test]
    fn entries_are_indexed_with_the_lsns_they_span() {
        // Proves each entry's index, term and LSN span come out of the journal, empty entries
        // (a new leader's) included.
        let records = journal(40, &[(5, 1, 2), (6, 2, 0), (7, 2, 3)]);
        let index = LogIndex::build(&records, 5).expect("a log");
        let spans: Vec<_> = index
            .entries
            .iter()
            .map(|e| (e.index, e.term, e.header_lsn, e.end_lsn))
            .collect();
        assert_eq!(spans, [(5, 1, 40, 43), (6, 2, 43, 44), (7, 2, 44, 48)]);
        assert_eq!(index.unfinished_from, None);
        assert_eq!(LogIndex::build(&[], 1), Ok(LogIndex::default()));
    }

    #[test]
    fn a_last_entry_cut_short_is_unfinished_not_an_error() {
        // Proves a group commit that a crash cut (fewer records than its header says, at the
        // end) is reported for cutting, with the entries before it kept.
        let mut records = journal(1, &[(1, 1, 2), (2, 1, 4)]);
        records.truncate(records.len() - 2);
        let index = LogIndex::build(&records, 1).expect("a log");
        assert_eq!(index.entries.len(), 1);
        assert_eq!(index.unfinished_from, Some(4));
    }

    #[test]
    fn a_log_that_is_not_one_is_refused_at_the_record() {
        // Proves a first entry that does not follow the snapshot, missing or repeated
        // indexes, a falling term, a header inside an entry, a
        // record outside any entry and a damaged header are each refused with their LSN.
        let cases: [(Vec<RecoveredRecord>, u64, &str); 6] = [
            (
                journal(1, &[(2, 1, 1)]),
                1,
                "where entry 1 or an earlier one was due",
            ),
            (
                journal(1, &[(1, 1, 1), (3, 1, 1)]),
                3,
                "missing or repeated",
            ),
            (
                journal(1, &[(1, 2, 1), (2, 1, 1)]),
                3,
                "below its predecessor",
            ),
            (
                {
                    let mut r = journal(1, &[(1, 1, 3)]);
                    r.truncate(2);
                    r.extend(journal(3, &[(2, 1, 0)]));
                    r.push(RecoveredRecord {
                        lsn: 4,
                        kind: KIND_TXN,
                        payload: vec![],
                    });
                    r
                },
                3,
                "inside entry 1",
            ),
            (
                journal(1, &[(1, 1, 1)])[1..].to_vec(),
                2,
                "outside any entry",
            ),
            (
                {
                    let mut r = journal(1, &[(1, 1, 1)]);
                    r[0].payload.pop();
                    r
                },
                1,
                "entry header of 20 bytes",
            ),
        ];
        for (records, lsn, reason) in cases {
            let error = LogIndex::build(&records, 1).expect_err(reason);
            assert_eq!(error.lsn, lsn, "{error}");
            assert!(error.reason.contains(reason), "{error}");
        }
    }

    #[test]
    fn a_journal_may_begin_before_the_snapshot_set_never_after() {
        // Proves a journal whose first entry is at or before the one after the snapshot set's
        // point is a log (compaction removed segments the set holds, or not yet), and one
        // that begins after it is refused: the entries between are in neither.
        let records = journal(40, &[(5, 1, 1), (6, 1, 0), (7, 2, 2)]);
        for after_point in [5, 6, 8] {
            let index = LogIndex::build(&records, after_point).expect("a log");
            assert_eq!(index.entries.first().map(|e| e.index), Some(5));
        }
        let error = LogIndex::build(&records, 4).expect_err("entry 4 is missing");
        assert_eq!(error.lsn, 40);
        assert!(error.reason.contains("entries are missing"), "{error}");
    }
}
