//! The snapshot file format: the frame (magic, LSN, length, crc32c) around
//! an rkyv body, a router's book as chunks, and the checks recovery and the
//! fuzzers run on bytes read back.

use std::sync::Arc;

use rkyv::rancor;
use rkyv::util::AlignedVec;

use super::error::SnapshotError;

/// The snapshot file name of the channels' status logs.
pub(super) const FEED_SNAPSHOT: &str = "feed";
use crate::core::capacity::LedgerImage;
use crate::core::order::OrderRecord;
use crate::core::stock::{ShardImage, StockShard};

pub(super) const SNAPSHOT_MAGIC: &[u8; 8] = b"ORSNAP01";
/// A router's book: the body is chunks, each a 16-byte header (archive
/// bytes, orders; u64 little-endian) and an archived `Vec<OrderRecord>`
/// padded to 16. Router snapshots written before books were streamed are
/// one archive under `SNAPSHOT_MAGIC`, and still load.
pub(super) const BOOK_MAGIC: &[u8; 8] = b"ORBOOK01";
pub(super) const BOOK_CHUNK_HEADER_BYTES: usize = 16;
/// magic, lsn, body length, crc32c, padding: the body starts 16-aligned.
pub(super) const SNAPSHOT_HEADER_BYTES: usize = 32;
pub(super) const SNAPSHOT_SUFFIX: &str = ".snap";

pub(super) fn book_chunk_header(
    archive_bytes: usize,
    orders: u32,
) -> [u8; BOOK_CHUNK_HEADER_BYTES] {
    let mut header = [0u8; BOOK_CHUNK_HEADER_BYTES];
    header[..8].copy_from_slice(&(archive_bytes as u64).to_le_bytes());
    header[8..].copy_from_slice(&u64::from(orders).to_le_bytes());
    header
}

/// Zeros after an archive so that the next chunk's starts 16-aligned.
pub(super) fn book_padding(archive_bytes: usize) -> usize {
    archive_bytes.next_multiple_of(16) - archive_bytes
}

/// The body of a book snapshot made of these chunks (orders, archive), in
/// memory: for tests and tools; the daemon streams it (`BookWriter`).
pub fn book_body<'a>(chunks: impl IntoIterator<Item = (u32, &'a [u8])>) -> Vec<u8> {
    let mut body = Vec::new();
    for (orders, archive) in chunks {
        body.extend_from_slice(&book_chunk_header(archive.len(), orders));
        body.extend_from_slice(archive);
        body.resize(body.len() + book_padding(archive.len()), 0);
    }
    body
}

/// A book snapshot file's bytes: `body` (see [`book_body`]) framed.
pub fn book_snapshot_bytes(lsn: u64, body: &[u8]) -> Vec<u8> {
    let mut out = frame_header(BOOK_MAGIC, lsn, body.len() as u64, crc32c::crc32c(body));
    out.extend_from_slice(body);
    out
}

/// The checksum covers the LSN and length as well as the body: a damaged
/// LSN would replay from the wrong place.
pub(super) fn snapshot_crc(lsn_and_length: &[u8], body: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(lsn_and_length), body)
}

/// Frames a snapshot body: magic, LSN, length and checksum first.
pub fn snapshot_bytes(lsn: u64, body: &[u8]) -> Vec<u8> {
    let mut out = snapshot_header(lsn, body);
    out.extend_from_slice(body);
    out
}

/// The header `snapshot_bytes` puts before a body.
pub(super) fn snapshot_header(lsn: u64, body: &[u8]) -> Vec<u8> {
    frame_header(SNAPSHOT_MAGIC, lsn, body.len() as u64, crc32c::crc32c(body))
}

/// A snapshot header for a body of `length` bytes whose own CRC-32C is
/// `body_crc` (the header's checksum is [`snapshot_crc`], combined).
pub(super) fn frame_header(magic: &[u8; 8], lsn: u64, length: u64, body_crc: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(SNAPSHOT_HEADER_BYTES);
    out.extend_from_slice(magic);
    out.extend_from_slice(&lsn.to_le_bytes());
    out.extend_from_slice(&length.to_le_bytes());
    let crc = crc32c::crc32c_combine(crc32c::crc32c(&out[8..24]), body_crc, length as usize);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&[0u8; 4]);
    out
}

/// Checks a snapshot's frame; returns its LSN and body. Any damage is an
/// error saying what is wrong, never a panic.
pub fn parse_snapshot(bytes: &[u8]) -> Result<(u64, &[u8]), SnapshotError> {
    if bytes.len() < SNAPSHOT_HEADER_BYTES {
        return Err(SnapshotError::Short(bytes.len()));
    }
    if &bytes[..8] != SNAPSHOT_MAGIC && &bytes[..8] != BOOK_MAGIC {
        return Err(SnapshotError::BadMagic);
    }
    let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    let lsn = u64_at(8);
    let length = u64_at(16);
    let crc = u32::from_le_bytes(bytes[24..28].try_into().expect("4 bytes"));
    let body = &bytes[SNAPSHOT_HEADER_BYTES..];
    if body.len() as u64 != length {
        return Err(SnapshotError::Length {
            actual: body.len(),
            stated: length,
        });
    }
    if snapshot_crc(&bytes[8..24], body) != crc || bytes[28..32] != [0u8; 4] {
        return Err(SnapshotError::Checksum);
    }
    Ok((lsn, body))
}

/// Checks snapshot bytes (as read from a file named `name`) the way
/// recovery does, without keeping the result: frame, checksum, validated
/// archive, and the image's own consistency. For fuzzing and tools.
pub fn verify_snapshot_bytes(
    name: &str,
    bytes: &[u8],
    index: Arc<crate::core::index::AvailabilityIndex>,
) -> Result<u64, SnapshotError> {
    let mut aligned = AlignedVec::<16>::with_capacity(bytes.len());
    aligned.extend_from_slice(bytes);
    let (lsn, body) = parse_snapshot(&aligned)?;
    if name == "catalog" {
        rkyv::access::<rkyv::Archived<Vec<String>>, rancor::BoxedError>(body)?;
    } else if name.starts_with("shard-") {
        let image = rkyv::access::<rkyv::Archived<ShardImage>, rancor::BoxedError>(body)?;
        StockShard::from_image(image, index)?;
    } else if name.starts_with("node-") {
        rkyv::from_bytes::<LedgerImage, rancor::Error>(body)?;
    } else if name == FEED_SNAPSHOT {
        rkyv::from_bytes::<crate::core::status::FeedImage, rancor::Error>(body)?;
    } else if name.starts_with("router-") {
        for orders in router_archives(&aligned, body)? {
            for archived in orders.iter() {
                rkyv::deserialize::<OrderRecord, rancor::Error>(archived)?;
            }
        }
    } else {
        return Err(SnapshotError::Name(name.to_string()));
    }
    Ok(lsn)
}

/// A router snapshot's orders as validated archives: one per chunk of a
/// book, or one for a snapshot from before books were chunked. `bytes` is
/// the whole file (its magic tells which), `body` what follows the header.
pub(super) fn router_archives<'a>(
    bytes: &[u8],
    body: &'a [u8],
) -> Result<Vec<&'a rkyv::Archived<Vec<OrderRecord>>>, SnapshotError> {
    let access = |archive: &'a [u8]| {
        rkyv::access::<rkyv::Archived<Vec<OrderRecord>>, rancor::BoxedError>(archive)
            .map_err(SnapshotError::Archive)
    };
    if !bytes.starts_with(BOOK_MAGIC) {
        return Ok(vec![access(body)?]);
    }
    let mut archives = Vec::new();
    let mut rest = body;
    while !rest.is_empty() {
        let Some((header, after)) = rest.split_first_chunk::<BOOK_CHUNK_HEADER_BYTES>() else {
            return Err(SnapshotError::ShortChunkHeader(rest.len()));
        };
        let archive_bytes = u64::from_le_bytes(header[..8].try_into().expect("8 bytes"));
        let orders = u64::from_le_bytes(header[8..].try_into().expect("8 bytes"));
        let archive_bytes = usize::try_from(archive_bytes)
            .ok()
            .filter(|&n| n <= after.len())
            .ok_or(SnapshotError::ChunkPastEnd(archive_bytes))?;
        let archive = access(&after[..archive_bytes])?;
        if archive.len() as u64 != orders {
            return Err(SnapshotError::ChunkCount {
                holds: archive.len(),
                stated: orders,
            });
        }
        archives.push(archive);
        rest = &after[archive_bytes..];
        rest = &rest[book_padding(archive_bytes).min(rest.len())..];
    }
    Ok(archives)
}
