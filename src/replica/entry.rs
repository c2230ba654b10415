//! A replicated log entry as the journal holds it. A replica's journal is
//! its Raft log: one entry is one group commit, written as a header record
//! (`KIND_RAFT_ENTRY`: index, term, type, how many records follow) and
//! then its records, at consecutive LSNs. Entries carry their records
//! without LSNs ([`encode_body`]); each replica numbers them as it writes,
//! and since replicas agree on every entry up to one with the same index
//! and term, they agree on the LSNs too: a snapshot's label means the
//! same state on every replica.
//!
//! Everything here decodes bytes from the network or the disk, so every
//! length and count is checked before it is used.

use std::ops::Range;

use raft::eraftpb::{Entry, EntryType};

use crate::journal::record::MAX_RECORD_PAYLOAD_BYTES;
use crate::journal::MAX_RECORDS_PER_COMMIT;
use crate::schema::txn::KIND_RAFT_CONF;

/// Bytes of a header record's payload: index, term, type, record count.
pub const ENTRY_HEADER_BYTES: usize = 8 + 8 + 1 + 4;
/// Bytes before each record of a body: kind and payload length.
const BODY_RECORD_PREFIX_BYTES: usize = 1 + 4;
/// Records in one entry's body at most: with its header record, the entry
/// is one journal commit.
pub const MAX_ENTRY_RECORDS: usize = MAX_RECORDS_PER_COMMIT - 1;

/// An entry's place in the log and the size of its body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryHeader {
    pub index: u64,
    pub term: u64,
    /// raft-rs's `EntryType` as its protobuf number (0 normal, 1 conf change, 2 conf change v2).
    pub entry_type: u8,
    /// Records after the header that belong to the entry.
    pub records: u32,
}

/// Why bytes are not an entry header or body.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    #[error("an entry header of {0} bytes (it has {ENTRY_HEADER_BYTES})")]
    HeaderLength(usize),
    #[error("an entry header of type {0}, which is no raft entry type")]
    UnknownType(u8),
    #[error("an entry of {0} records (at most {MAX_ENTRY_RECORDS})")]
    TooManyRecords(u64),
    #[error("an entry body ends inside its record {record} at byte {offset}")]
    Truncated { record: usize, offset: usize },
    #[error(
        "an entry body's record {record} of {length} bytes (at most {MAX_RECORD_PAYLOAD_BYTES})"
    )]
    RecordTooLarge { record: usize, length: usize },
}

impl EntryHeader {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(ENTRY_HEADER_BYTES);
        out.extend_from_slice(&self.index.to_le_bytes());
        out.extend_from_slice(&self.term.to_le_bytes());
        out.push(self.entry_type);
        out.extend_from_slice(&self.records.to_le_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<EntryHeader, EntryError> {
        if bytes.len() != ENTRY_HEADER_BYTES {
            return Err(EntryError::HeaderLength(bytes.len()));
        }
        let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        let header = EntryHeader {
            index: u64_at(0),
            term: u64_at(8),
            entry_type: bytes[16],
            records: u32::from_le_bytes(bytes[17..21].try_into().expect("4 bytes")),
        };
        if header.entry_type > 2 {
            return Err(EntryError::UnknownType(header.entry_type));
        }
        if header.records as usize > MAX_ENTRY_RECORDS {
            return Err(EntryError::TooManyRecords(header.records.into()));
        }
        Ok(header)
    }
}

/// An entry's body: each record as `u8 kind | u32 length | payload`.
pub fn encode_body<'a>(records: impl IntoIterator<Item = (u8, &'a [u8])>) -> Vec<u8> {
    let mut out = Vec::new();
    for (kind, payload) in records {
        assert!(
            payload.len() <= MAX_RECORD_PAYLOAD_BYTES,
            "a record over MAX_RECORD_PAYLOAD_BYTES"
        );
        out.push(kind);
        out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        out.extend_from_slice(payload);
    }
    out
}

/// The records an entry is journaled as after its header, as (kind, range
/// of `entry.data`): a normal entry's body, a configuration change's data
/// as one record (none if it has none). The journal's writer and the apply
/// thread both number records by it, so their LSNs cannot disagree.
pub fn body_records(entry: &Entry) -> Result<Vec<(u8, Range<usize>)>, EntryError> {
    match entry.get_entry_type() {
        EntryType::EntryNormal => decode_body(&entry.data),
        _ if entry.data.is_empty() => Ok(Vec::new()),
        _ => Ok(vec![(KIND_RAFT_CONF, 0..entry.data.len())]),
    }
}

/// The records of a body, as (kind, range of `body`), each length checked
/// against the bytes there are, and nothing left over.
pub fn decode_body(body: &[u8]) -> Result<Vec<(u8, Range<usize>)>, EntryError> {
    let mut records = Vec::new();
    let mut at = 0;
    while at < body.len() {
        let record = records.len();
        if record == MAX_ENTRY_RECORDS {
            return Err(EntryError::TooManyRecords(record as u64 + 1));
        }
        let Some(prefix) = body.get(at..at + BODY_RECORD_PREFIX_BYTES) else {
            return Err(EntryError::Truncated { record, offset: at });
        };
        let length = u32::from_le_bytes(prefix[1..5].try_into().expect("4 bytes")) as usize;
        if length > MAX_RECORD_PAYLOAD_BYTES {
            return Err(EntryError::RecordTooLarge { record, length });
        }
        let start = at + BODY_RECORD_PREFIX_BYTES;
        if body.len() - start < length {
            return Err(EntryError::Truncated { record, offset: at });
        }
        records.push((prefix[0], start..start + length));
        at = start + length;
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_body_of_one_record_too_many_is_refused() {
        // Proves a body that would not fit one journal commit with its header is refused.
        let record = [(1u8, &b"x"[..])];
        let most = encode_body(record.iter().copied().cycle().take(MAX_ENTRY_RECORDS));
        assert_eq!(decode_body(&most).map(|r| r.len()), Ok(MAX_ENTRY_RECORDS));
        let over = encode_body(record.iter().copied().cycle().take(MAX_ENTRY_RECORDS + 1));
        assert!(matches!(
            decode_body(&over),
            Err(EntryError::TooManyRecords(_))
        ));
    }

    proptest! {
        #[test]
        fn a_body_decodes_to_the_records_it_was_encoded_from(
            records in proptest::collection::vec((any::<u8>(), proptest::collection::vec(any::<u8>(), 0..64)), 0..20)
        ) {
            // Proves the body encoding round-trips any records, empty payloads included.
            let body = encode_body(records.iter().map(|(k, p)| (*k, p.as_slice())));
            let decoded = decode_body(&body).expect("a body");
            let got: Vec<(u8, Vec<u8>)> = decoded.into_iter().map(|(k, r)| (k, body[r].to_vec())).collect();
            prop_assert_eq!(got, records);
        }

        #[test]
        fn a_cut_or_damaged_body_is_refused_or_decodes_within_its_bytes(
            records in proptest::collection::vec((any::<u8>(), proptest::collection::vec(any::<u8>(), 0..32)), 1..8),
            cut in any::<prop::sample::Index>(),
            flip in any::<prop::sample::Index>(),
        ) {
            // Proves a body cut short is refused or comes out with fewer records (a cut at a
            // record's edge; the header's count catches it), and one with a flipped byte
            // never yields a record outside its bytes (no panic, no read past the end).
            let body = encode_body(records.iter().map(|(k, p)| (*k, p.as_slice())));
            let short = &body[..cut.index(body.len())];
            prop_assert!(decode_body(short).map_or(true, |d| d.len() < records.len()));
            let mut damaged = body.clone();
            let at = flip.index(damaged.len());
            damaged[at] ^= 0x80;
            if let Ok(decoded) = decode_body(&damaged) {
                prop_assert!(decoded.iter().all(|(_, r)| r.end <= damaged.len()));
            }
        }
    }

    #[test]
    fn a_header_round_trips_and_a_wrong_one_is_refused() {
        // Proves the header keeps every field, and that a wrong length, an unknown type or
        // too many records are refused.
        let header = EntryHeader {
            index: 7,
            term: 3,
            entry_type: 1,
            records: 12,
        };
        assert_eq!(EntryHeader::decode(&header.encode()), Ok(header));
        let bytes = header.encode();
        assert_eq!(
            EntryHeader::decode(&bytes[..20]),
            Err(EntryError::HeaderLength(20))
        );
        let mut odd = bytes.clone();
        odd[16] = 9;
        assert_eq!(EntryHeader::decode(&odd), Err(EntryError::UnknownType(9)));
        let most = EntryHeader {
            records: MAX_ENTRY_RECORDS as u32,
            ..header
        };
        assert_eq!(EntryHeader::decode(&most.encode()), Ok(most));
        let many = EntryHeader {
            records: MAX_ENTRY_RECORDS as u32 + 1,
            ..header
        };
        assert!(matches!(
            EntryHeader::decode(&many.encode()),
            Err(EntryError::TooManyRecords(_))
        ));
    }
}
