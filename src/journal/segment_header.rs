//! The first bytes of every journal segment: how long the segment was made
//! when it was prepared. No I/O here.
//!
//! A segment is zero-filled to its full size before its first record is
//! written, so a segment found shorter than that was cut by something
//! other than the writer (a damaged file system, a copy that stopped, a
//! hand with `truncate`), and the records that stood past the cut may have
//! been answered. Without this, a last segment cut at a record boundary
//! reads as a clean end, and one cut inside a record as a torn tail: either
//! way answered orders would be gone without a word.
//!
//! ```text
//! magic [8] | u64 prepared_bytes | u32 reserved (0) | u32 crc
//! ```
//!
//! `crc` is the CRC-32C of the 20 bytes before it, little-endian.

/// Bytes of the header; the first record begins after them.
pub const SEGMENT_HEADER_BYTES: usize = 24;
/// The bytes covered by the header's checksum: all before it.
const CHECKED_BYTES: usize = SEGMENT_HEADER_BYTES - 4;
/// Marks a segment of this layout (format 3 on).
const MAGIC: [u8; 8] = *b"omnijnl3";

/// The header of a segment prepared to `prepared_bytes` (header included).
pub fn encode(prepared_bytes: u64) -> [u8; SEGMENT_HEADER_BYTES] {
    let mut header = [0u8; SEGMENT_HEADER_BYTES];
    header[..8].copy_from_slice(&MAGIC);
    header[8..16].copy_from_slice(&prepared_bytes.to_le_bytes());
    let crc = crc32c::crc32c(&header[..CHECKED_BYTES]);
    header[CHECKED_BYTES..].copy_from_slice(&crc.to_le_bytes());
    header
}

/// Whether `bytes` begin with this layout's magic: a segment an upgrade
/// has yet to rewrite (format 2 and older) begins with a record instead,
/// whose length's low bytes could not spell it.
pub fn has_magic(bytes: &[u8]) -> bool {
    bytes.starts_with(&MAGIC)
}

/// Why a segment's header refuses it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeaderFault {
    /// The header itself is damaged (or not there).
    Damaged(String),
    /// The file is `length` bytes, shorter than the `prepared` it was made.
    Cut { length: u64, prepared: u64 },
}

/// The size the segment in `bytes` was prepared to, once its header
/// checks and the file is at least that long.
pub fn check(bytes: &[u8]) -> Result<u64, HeaderFault> {
    let Some(header) = bytes.get(..SEGMENT_HEADER_BYTES) else {
        return Err(HeaderFault::Damaged(format!(
            "the file is {} bytes, shorter than a segment header",
            bytes.len()
        )));
    };
    if !has_magic(header) {
        return Err(HeaderFault::Damaged(
            "the segment header's magic is not there".into(),
        ));
    }
    let crc = u32::from_le_bytes(header[CHECKED_BYTES..].try_into().expect("4 bytes"));
    if crc32c::crc32c(&header[..CHECKED_BYTES]) != crc {
        return Err(HeaderFault::Damaged(
            "the segment header's checksum does not match".into(),
        ));
    }
    let prepared = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
    let length = bytes.len() as u64;
    if length < prepared {
        return Err(HeaderFault::Cut { length, prepared });
    }
    Ok(prepared)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_checks_only_whole_and_in_a_file_as_long_as_it_says() {
        // Proves a header is read back, that a flipped bit anywhere in it
        // is refused, and that a file shorter than its prepared size is.
        let mut file = encode(4096).to_vec();
        file.resize(4096, 0);
        assert_eq!(check(&file), Ok(4096));
        for bit in 0..SEGMENT_HEADER_BYTES * 8 {
            let mut damaged = file.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            assert!(check(&damaged).is_err(), "bit {bit} flipped");
        }
        for cut in [0, 10] {
            assert!(matches!(check(&file[..cut]), Err(HeaderFault::Damaged(_))));
        }
        for cut in [SEGMENT_HEADER_BYTES, 4095] {
            let fault = check(&file[..cut]).unwrap_err();
            let (length, prepared) = (cut as u64, 4096);
            assert_eq!(fault, HeaderFault::Cut { length, prepared });
        }
        file.extend_from_slice(&[1, 2, 3]);
        assert_eq!(check(&file), Ok(4096), "a file grown past its size");
    }
}
