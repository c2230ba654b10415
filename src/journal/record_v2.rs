//! The record format of data directories before format 3, kept to upgrade
//! them (see `upgrade.rs`), to read one as it is for tools (`read` in
//! `recovery.rs`), and for tests that build such a directory. No I/O here.
//!
//! A record was `u32 length | u32 crc32c | u8 kind | u64 lsn | payload`,
//! little-endian; `length` counted kind + lsn + payload, and the checksum
//! covered the same bytes but not the length itself: one flipped bit in a
//! length made every record after it look like a torn tail. Format 3's
//! header has a checksum of its own (`record.rs`).

use super::record::{End, Found, Scan, MAX_RECORD_PAYLOAD_BYTES};

/// Bytes before the checksummed part: length and checksum.
pub const RECORD_PREFIX_BYTES: usize = 8;
/// Smallest `length`: kind and LSN.
pub const MIN_RECORD_BODY_BYTES: usize = 1 + 8;

/// Appends one record to `out` in the old format.
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

/// Scans a segment by the old format's rules. `expected_lsn` is the LSN the first record must carry
/// (LSNs are consecutive); `None` accepts any first LSN.
pub fn scan(bytes: &[u8], expected_lsn: Option<u64>) -> Scan {
    let mut records = Vec::new();
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
