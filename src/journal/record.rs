//! The journal's record format, and the scan that tells a torn tail (cut
//! it) from corruption (refuse to start). No I/O here.
//!
//! A record is `u32 length | u32 crc32c | u8 kind | u64 lsn | payload`,
//! little-endian; `length` counts kind + lsn + payload, and the checksum
//! covers the same bytes.

/// Bytes before the checksummed part: length and checksum.
pub const RECORD_PREFIX_BYTES: usize = 8;
/// Smallest `length`: kind and LSN.
pub const MIN_RECORD_BODY_BYTES: usize = 1 + 8;
/// Largest payload of one record.
pub const MAX_RECORD_PAYLOAD_BYTES: usize = 32 << 20;

/// Appends one record to `out`.
pub fn encode(kind: u8, lsn: u64, payload: &[u8], out: &mut Vec<u8>) {
    assert!(
        payload.len() <= MAX_RECORD_PAYLOAD_BYTES,
        "journal payload over MAX_RECORD_PAYLOAD_BYTES"
    );
    let length = (MIN_RECORD_BODY_BYTES + payload.len()) as u32;
    let start = out.len();
    out.extend_from_slice(&length.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.push(kind);
    out.extend_from_slice(&lsn.to_le_bytes());
    out.extend_from_slice(payload);
    let crc = crc32c::crc32c(&out[start + RECORD_PREFIX_BYTES..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// The record size a scan sizes its list for.
const TYPICAL_RECORD_BYTES: usize = 128;

/// One record found by a scan; `payload` is a range of the scanned bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    pub offset: usize,
    pub kind: u8,
    pub lsn: u64,
    pub payload: std::ops::Range<usize>,
}

/// How a segment's bytes end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum End {
    /// Every byte belongs to a whole, valid record, or to the zero-filled
    /// rest of a prepared segment.
    Clean,
    /// The bytes from `offset` on are a record that was being written when
    /// the process died (and zeros after it): cut them.
    Torn { offset: usize },
    /// A record before the tail is damaged: recovering past it would lose
    /// or invent state, so the daemon must not start.
    Corrupt { offset: usize, reason: String },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scan {
    pub records: Vec<Found>,
    pub end: End,
}

/// Scans a segment. `expected_lsn` is the LSN the first record must carry
/// (LSNs are consecutive); `None` accepts any first LSN.
pub fn scan(bytes: &[u8], expected_lsn: Option<u64>) -> Scan {
    // Sized for records of a typical order's size up front: growing the
    // list of a full 64 MiB segment copied it (and faulted fresh pages) a
    // dozen times; capacity that is never written is never touched.
    let mut records = Vec::with_capacity(bytes.len() / TYPICAL_RECORD_BYTES);
    let end = scan_each(bytes, expected_lsn, |found| {
        records.push(found);
        Ok::<(), std::convert::Infallible>(())
    });
    let Ok(end) = end;
    Scan { records, end }
}

/// Scans a segment like [`scan`], handing each valid record to `on` as it
/// is found (a reader that streams starts at once, not after the whole
/// segment). Stops at the first error `on` returns.
pub fn scan_each<E>(
    bytes: &[u8],
    expected_lsn: Option<u64>,
    mut on: impl FnMut(Found) -> Result<(), E>,
) -> Result<End, E> {
    let mut offset = 0;
    let mut next_lsn = expected_lsn;
    let corrupt = |offset, reason: String| Ok(End::Corrupt { offset, reason });
    while offset < bytes.len() {
        let rest = &bytes[offset..];
        if rest.iter().all(|b| *b == 0) {
            // The rest of a prepared (zero-filled) segment, not yet written.
            return Ok(End::Clean);
        }
        if rest.len() < RECORD_PREFIX_BYTES {
            return Ok(End::Torn { offset });
        }
        let length = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
        let end = RECORD_PREFIX_BYTES
            .checked_add(length)
            .filter(|&end| end <= rest.len());
        let Some(end) = end else {
            // The record runs past the end of the file: it was being written.
            return Ok(End::Torn { offset });
        };
        if !(MIN_RECORD_BODY_BYTES..=MIN_RECORD_BODY_BYTES + MAX_RECORD_PAYLOAD_BYTES)
            .contains(&length)
        {
            if rest[RECORD_PREFIX_BYTES..].iter().all(|b| *b == 0) {
                // Only a prefix made it into a prepared segment.
                return Ok(End::Torn { offset });
            }
            return corrupt(offset, format!("record length {length} is out of range"));
        }
        let stored = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes"));
        let body = &rest[RECORD_PREFIX_BYTES..end];
        if crc32c::crc32c(body) != stored {
            // A bad last record is a write cut short (in a prepared
            // segment, zeros follow it); a bad record with data after it
            // is damage.
            if rest[end..].iter().all(|b| *b == 0) {
                return Ok(End::Torn { offset });
            }
            return corrupt(offset, "checksum mismatch".into());
        }
        let kind = body[0];
        let lsn = u64::from_le_bytes(body[1..9].try_into().expect("8 bytes"));
        if next_lsn.is_some_and(|expected| expected != lsn) {
            return corrupt(
                offset,
                format!("LSN {lsn} where {} was expected", next_lsn.unwrap_or(0)),
            );
        }
        next_lsn = lsn.checked_add(1);
        let payload_start = offset + RECORD_PREFIX_BYTES + MIN_RECORD_BODY_BYTES;
        on(Found {
            offset,
            kind,
            lsn,
            payload: payload_start..offset + end,
        })?;
        offset += end;
    }
    Ok(End::Clean)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(count: u64) -> Vec<u8> {
        let mut bytes = Vec::new();
        for lsn in 1..=count {
            encode(7, lsn, format!("record {lsn}").as_bytes(), &mut bytes);
        }
        bytes
    }

    #[test]
    fn whole_records_scan_clean() {
        // Proves encode and scan agree on every field and the payload ranges.
        let bytes = segment(3);
        let scan = scan(&bytes, Some(1));
        assert_eq!(scan.end, End::Clean);
        assert_eq!(
            scan.records.iter().map(|r| r.lsn).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        assert_eq!(&bytes[scan.records[1].payload.clone()], b"record 2");
    }

    #[test]
    fn a_partial_last_record_is_a_torn_tail() {
        // Proves every cut inside the last record reads as a torn tail at its offset, also
        // when the zeros of a prepared segment follow the cut.
        let bytes = segment(3);
        let last = scan(&bytes, None).records[2].offset;
        for cut in last + 1..bytes.len() {
            assert_eq!(
                scan(&bytes[..cut], None).end,
                End::Torn { offset: last },
                "cut at {cut}"
            );
            let mut prepared = bytes[..cut].to_vec();
            prepared.resize(bytes.len() + 4096, 0);
            assert_eq!(
                scan(&prepared, None).end,
                End::Torn { offset: last },
                "cut at {cut} in a prepared segment"
            );
        }
    }

    #[test]
    fn zeros_after_whole_records_are_the_unwritten_rest() {
        // Proves a prepared segment's zero tail is a clean end, with every record before it.
        let bytes = segment(3);
        let mut prepared = bytes.clone();
        prepared.resize(1 << 16, 0);
        let scan = scan(&prepared, Some(1));
        assert_eq!(scan.end, End::Clean);
        assert_eq!(scan.records.len(), 3);
        assert_eq!(scan.records[2].payload.end, bytes.len());
    }

    #[test]
    fn a_flipped_byte_before_the_tail_is_corruption() {
        // Proves damage to any record but the last stops the scan with its offset.
        let bytes = segment(3);
        let second = scan(&bytes, None).records[1].offset;
        let mut damaged = bytes.clone();
        damaged[second + 12] ^= 0x40;
        match scan(&damaged, None).end {
            End::Corrupt { offset, .. } => assert_eq!(offset, second),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            scan(&bytes, Some(5)).end,
            End::Corrupt { offset: 0, .. }
        ));
    }
}
