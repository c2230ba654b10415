//! The journal's record format, and the scan that tells a torn tail (cut
//! it) from damage (refuse to start). No I/O here.
//!
//! A record (format 3) is a header and a payload, little-endian:
//!
//! ```text
//! u32 length | u8 kind | u64 lsn | u32 payload_crc | u32 header_crc | payload
//! ```
//!
//! `length` counts the payload, `payload_crc` is its CRC-32C, and
//! `header_crc` is the CRC-32C of the 17 header bytes before it. The
//! header is checked before its length is used, so a flipped bit in a
//! length is damage found where it is, never a record that seems to run
//! past the end. The checksums come last so that any tail piece of a
//! header (split at a sector boundary) holds checksum bytes, never only
//! an LSN's high zero bytes.
//!
//! A scan reads records until the first that fails a check, then decides
//! what that failure means ([`End`]): only a record at the true end of the
//! written data, with no valid header after it, that carries the mark of
//! an unfinished write (it runs past the end of the file, or a sector of
//! it never reached the disk and is still zeros) is a torn tail. Anything
//! else is damage in data that was written, and perhaps answered.

use std::ops::Range;

/// Header bytes: length, kind, LSN, payload checksum, header checksum.
pub const RECORD_HEADER_BYTES: usize = 4 + 1 + 8 + 4 + 4;
/// The header bytes `header_crc` covers: all before it.
const HEADER_CHECKED_BYTES: usize = RECORD_HEADER_BYTES - 4;
/// Largest payload of one record.
pub const MAX_RECORD_PAYLOAD_BYTES: usize = 32 << 20;
/// The unit a disk writes whole or not at all, at the least: a write cut
/// short by a crash leaves whole 512-byte sectors (of a file offset that
/// is a multiple of this) unwritten, which in a prepared segment are
/// still zeros. Larger units (4 KiB pages) are made of these.
pub const TORN_WRITE_SECTOR_BYTES: usize = 512;

/// Appends one record to `out`.
pub fn encode(kind: u8, lsn: u64, payload: &[u8], out: &mut Vec<u8>) {
    assert!(
        payload.len() <= MAX_RECORD_PAYLOAD_BYTES,
        "journal payload over MAX_RECORD_PAYLOAD_BYTES"
    );
    let start = out.len();
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.push(kind);
    out.extend_from_slice(&lsn.to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    let header_crc = crc32c::crc32c(&out[start..start + HEADER_CHECKED_BYTES]);
    out.extend_from_slice(&header_crc.to_le_bytes());
    out.extend_from_slice(payload);
}

/// The record size a scan sizes its list for.
const TYPICAL_RECORD_BYTES: usize = 128;

/// One record found by a scan; `payload` is a range of the scanned bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    pub offset: usize,
    pub kind: u8,
    pub lsn: u64,
    pub payload: Range<usize>,
}

/// The kind of a segment's seal: the last record of a segment the writer
/// has moved on from, written once the next segment is in place. It
/// carries the LSN the next segment begins with and takes none itself, so
/// a missing last segment is found (the one before it is sealed) rather
/// than taken for the end of the journal. Never handed to a reader.
pub const KIND_SEAL: u8 = 0xFF;

/// How a segment's bytes end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum End {
    /// Every byte belongs to a whole, valid record, or to the zero-filled
    /// rest of a prepared segment.
    Clean,
    /// As `Clean`, and a seal ends the records: the writer went on to a
    /// segment beginning at `next_lsn`, which must exist.
    Sealed { next_lsn: u64 },
    /// The bytes from `offset` on are a record that was being written when
    /// the process died (and zeros, or nothing valid, after it): cut them.
    /// Only the last segment may end so; recovery refuses it elsewhere.
    Torn { offset: usize },
    /// The record at `offset` is damaged where it was written whole:
    /// recovering past it would lose or invent state, so the daemon must
    /// not start.
    Corrupt { offset: usize, reason: String },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scan {
    pub records: Vec<Found>,
    pub end: End,
}

/// A header whose checksum holds and whose length is in range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Header {
    length: usize,
    kind: u8,
    lsn: u64,
    payload_crc: u32,
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

/// The header at `at`, if its bytes are all there, its checksum holds and
/// its length is in range.
fn header_at(bytes: &[u8], at: usize) -> Option<Header> {
    let raw = bytes.get(at..at.checked_add(RECORD_HEADER_BYTES)?)?;
    if crc32c::crc32c(&raw[..HEADER_CHECKED_BYTES]) != u32_at(raw, HEADER_CHECKED_BYTES) {
        return None;
    }
    let length = u32_at(raw, 0) as usize;
    (length <= MAX_RECORD_PAYLOAD_BYTES).then(|| Header {
        length,
        kind: raw[4],
        lsn: u64::from_le_bytes(raw[5..13].try_into().expect("8 bytes")),
        payload_crc: u32_at(raw, 13),
    })
}

/// Why the record at an offset cannot be taken.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Failure {
    /// Fewer bytes than a header before the end of the file.
    ShortHeader,
    /// The header's checksum does not hold.
    HeaderChecksum,
    /// The header holds but states a length over the maximum.
    LengthOutOfRange(usize),
    /// The stated payload runs past the end of the file.
    PastEnd(Header),
    /// The payload's checksum does not hold.
    PayloadChecksum(Header),
    /// A whole, valid record with another LSN than the one due.
    Lsn { found: u64, expected: u64 },
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::ShortHeader => write!(f, "the file ends inside a record header"),
            Failure::HeaderChecksum => write!(f, "the record header's checksum does not match"),
            Failure::LengthOutOfRange(length) => {
                write!(f, "record length {length} is out of range")
            }
            Failure::PastEnd(h) => write!(
                f,
                "record {} of {} payload bytes runs past the end of the file",
                h.lsn, h.length
            ),
            Failure::PayloadChecksum(h) => write!(
                f,
                "the payload checksum of record {} ({} bytes) does not match",
                h.lsn, h.length
            ),
            Failure::Lsn { found, expected } => {
                write!(f, "LSN {found} where {expected} was expected")
            }
        }
    }
}

/// Checks the record at `offset`: the record, or why it cannot be taken.
fn record_at(bytes: &[u8], offset: usize, expected_lsn: Option<u64>) -> Result<Found, Failure> {
    if bytes.len() - offset < RECORD_HEADER_BYTES {
        return Err(Failure::ShortHeader);
    }
    let Some(header) = header_at(bytes, offset) else {
        let length = u32_at(bytes, offset) as usize;
        let checked = &bytes[offset..offset + HEADER_CHECKED_BYTES];
        let crc_holds = crc32c::crc32c(checked) == u32_at(bytes, offset + HEADER_CHECKED_BYTES);
        return Err(if crc_holds && length > MAX_RECORD_PAYLOAD_BYTES {
            Failure::LengthOutOfRange(length)
        } else {
            Failure::HeaderChecksum
        });
    };
    let start = offset + RECORD_HEADER_BYTES;
    let Some(end) = start
        .checked_add(header.length)
        .filter(|&e| e <= bytes.len())
    else {
        return Err(Failure::PastEnd(header));
    };
    if crc32c::crc32c(&bytes[start..end]) != header.payload_crc {
        return Err(Failure::PayloadChecksum(header));
    }
    if let Some(expected) = expected_lsn.filter(|&e| e != header.lsn) {
        return Err(Failure::Lsn {
            found: header.lsn,
            expected,
        });
    }
    Ok(Found {
        offset,
        kind: header.kind,
        lsn: header.lsn,
        payload: start..end,
    })
}

/// Scans records from the start of `bytes`. `expected_lsn` is the LSN the
/// first record must carry (LSNs are consecutive); `None` accepts any.
pub fn scan(bytes: &[u8], expected_lsn: Option<u64>) -> Scan {
    scan_from(bytes, 0, expected_lsn)
}

/// Scans records from byte `start` of `bytes` (a segment's records begin
/// after its header); offsets found are of all of `bytes`, which is what
/// the sector rule of a torn write needs.
pub fn scan_from(bytes: &[u8], start: usize, expected_lsn: Option<u64>) -> Scan {
    // Sized for records of a typical order's size up front: growing the
    // list of a full 64 MiB segment copied it (and faulted fresh pages) a
    // dozen times; capacity that is never written is never touched.
    let mut records = Vec::with_capacity(bytes.len() / TYPICAL_RECORD_BYTES);
    let end = scan_each(bytes, start, expected_lsn, |found| {
        records.push(found);
        Ok::<(), std::convert::Infallible>(())
    });
    let Ok(end) = end;
    Scan { records, end }
}

/// Scans like [`scan_from`], handing each valid record to `on` as it is
/// found (a reader that streams starts at once, not after the whole
/// segment). Stops at the first error `on` returns.
pub fn scan_each<E>(
    bytes: &[u8],
    start: usize,
    expected_lsn: Option<u64>,
    mut on: impl FnMut(Found) -> Result<(), E>,
) -> Result<End, E> {
    let mut offset = start.min(bytes.len());
    let mut next_lsn = expected_lsn;
    while offset < bytes.len() {
        if bytes[offset..].iter().all(|b| *b == 0) {
            // The rest of a prepared (zero-filled) segment, not yet written.
            return Ok(End::Clean);
        }
        match record_at(bytes, offset, next_lsn) {
            Ok(found) if found.kind == KIND_SEAL => {
                let after = found.payload.end;
                if bytes[after..].iter().all(|b| *b == 0) {
                    return Ok(End::Sealed {
                        next_lsn: found.lsn,
                    });
                }
                return Ok(End::Corrupt {
                    offset: after,
                    reason: "data after the segment's seal (its last record)".into(),
                });
            }
            Ok(found) => {
                next_lsn = found.lsn.checked_add(1);
                offset = found.payload.end;
                on(found)?;
            }
            Err(failure) => return Ok(judge(bytes, offset, &failure)),
        }
    }
    Ok(End::Clean)
}

/// What the first record that fails a check means: a torn tail only if
/// nothing valid follows it and it bears the mark of an unfinished write.
fn judge(bytes: &[u8], offset: usize, failure: &Failure) -> End {
    let corrupt = |reason: String| End::Corrupt { offset, reason };
    if let Some(at) = valid_header_after(bytes, offset) {
        return corrupt(format!(
            "{failure}, and a valid record header follows at byte {at}"
        ));
    }
    let unfinished = match failure {
        // A whole record with the wrong LSN was written so.
        Failure::Lsn { .. } => false,
        Failure::ShortHeader | Failure::PastEnd(_) => true,
        Failure::HeaderChecksum | Failure::LengthOutOfRange(_) => {
            let header = offset..offset + RECORD_HEADER_BYTES;
            // The header began to be written (some sector of it holds
            // data) and did not finish (another is zeros). A header of
            // zeros with data after it is not a write that began here.
            let pieces = sector_pieces(header);
            let zero = |piece: &Range<usize>| bytes[piece.clone()].iter().all(|b| *b == 0);
            pieces.iter().any(zero) && !pieces.iter().all(zero)
        }
        Failure::PayloadChecksum(header) => {
            // The header checked, so its bytes were written; a sector
            // reaching past it that is all zeros never was.
            let payload_start = offset + RECORD_HEADER_BYTES;
            let span = offset..payload_start + header.length;
            sector_pieces(span).iter().any(|piece| {
                piece.end > payload_start && bytes[piece.clone()].iter().all(|b| *b == 0)
            })
        }
    };
    if unfinished {
        End::Torn { offset }
    } else {
        corrupt(format!(
            "{failure}; the record was written whole (no sector of it is missing), so this is damage, not a write cut short"
        ))
    }
}

/// `span` split at file offsets that are multiples of
/// [`TORN_WRITE_SECTOR_BYTES`].
fn sector_pieces(span: Range<usize>) -> Vec<Range<usize>> {
    let mut pieces = Vec::new();
    let mut start = span.start;
    while start < span.end {
        let next = (start / TORN_WRITE_SECTOR_BYTES + 1) * TORN_WRITE_SECTOR_BYTES;
        let end = next.min(span.end);
        pieces.push(start..end);
        start = end;
    }
    pieces
}

/// The first byte offset after `offset` where a valid record header is.
fn valid_header_after(bytes: &[u8], offset: usize) -> Option<usize> {
    // A header's checksum of all zeros is one in 2^32: skipping those
    // skips the zero-filled rest of a prepared segment at a glance.
    let last = bytes.iter().rposition(|b| *b != 0)?;
    (offset + 1..=last)
        .filter(|&at| {
            bytes.get(at + HEADER_CHECKED_BYTES..at + RECORD_HEADER_BYTES) != Some(&[0u8; 4][..])
        })
        .find(|&at| header_at(bytes, at).is_some())
}

#[cfg(test)]
mod tests;
