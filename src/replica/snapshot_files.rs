//! The files of a snapshot a leader sends a follower behind its log's
//! start (docs/RAFT-SNAPSHOTS.md, 3.6 and 3.7).
//!
//! - **Pins**: once a snapshot set is in place, every file of it is hard
//!   linked into `DIR/raft-snap/<index>-<term>/`. Set files are only ever
//!   replaced by a rename, never written in place, so a pin keeps the set
//!   exactly as its raft point describes it while the next snapshot writes
//!   the set again and compaction removes the log under it. The newest two
//!   pins are kept (one may still be read by a transfer).
//! - **Descriptor**: what raft-rs carries as the snapshot's data: the
//!   point and each file's name and size, checksummed. The files
//!   themselves go on a stream of their own.
//! - **Staging**: a follower writes what it receives into
//!   `DIR/raft-incoming/`, whole and synced, before raft-rs hears of it.
//!
//! Both directories are emptied at start: a pin is made again from the
//! set in use, and a transfer cut short is sent again.

use std::path::{Path, PathBuf};

use super::raft_point::{RaftPoint, RAFT_POINT_FILE};
use crate::store;

/// Pins, in the data directory.
pub const PINS_DIR: &str = "raft-snap";
/// Transfers being received, in the data directory.
pub const INCOMING_DIR: &str = "raft-incoming";
/// Files a snapshot may have: a set has a file per shard, node and router
/// and a few more; a descriptor naming more is refused before anything
/// is allocated.
pub const MAX_SNAPSHOT_FILES: usize = 16_384;
/// Bytes a snapshot may have in all: far above any set this daemon
/// writes, and a bound no sum of sizes from a peer can wrap past.
pub const MAX_SNAPSHOT_BYTES: u64 = 1 << 44;
/// The longest file name a descriptor may carry.
pub const MAX_FILE_NAME_BYTES: usize = 128;

const MAGIC: [u8; 8] = *b"ORSNAPD1";

/// A pinned snapshot: its point, and its files with their sizes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Descriptor {
    pub index: u64,
    pub term: u64,
    pub next_lsn: u64,
    pub files: Vec<(String, u64)>,
}

impl Descriptor {
    /// Bytes of all its files (a decoded descriptor's sum is checked to
    /// be at most [`MAX_SNAPSHOT_BYTES`]).
    pub fn total_bytes(&self) -> u64 {
        self.files
            .iter()
            .fold(0u64, |sum, (_, bytes)| sum.saturating_add(*bytes))
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&MAGIC);
        for value in [self.index, self.term, self.next_lsn] {
            out.extend_from_slice(&value.to_le_bytes());
        }
        out.extend_from_slice(&(self.files.len() as u32).to_le_bytes());
        for (name, bytes) in &self.files {
            out.extend_from_slice(&(name.len() as u16).to_le_bytes());
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(&bytes.to_le_bytes());
        }
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Reads a descriptor a peer sent; every count and name is checked
    /// before it is trusted.
    pub fn decode(bytes: &[u8]) -> Result<Descriptor, String> {
        let body = bytes
            .len()
            .checked_sub(4)
            .filter(|&n| n >= MAGIC.len() + 28)
            .map(|n| &bytes[..n])
            .ok_or_else(|| format!("a descriptor of {} bytes", bytes.len()))?;
        let stored = u32::from_le_bytes(bytes[body.len()..].try_into().expect("4 bytes"));
        let computed = crc32c::crc32c(body);
        if stored != computed {
            return Err(format!(
                "a descriptor whose checksum does not hold ({stored:08x}, computed {computed:08x})"
            ));
        }
        if body[..8] != MAGIC {
            return Err("not a snapshot descriptor".into());
        }
        let mut reader = Reader(&body[8..]);
        let (index, term, next_lsn) = (reader.u64()?, reader.u64()?, reader.u64()?);
        let count = reader.u32()? as usize;
        if count > MAX_SNAPSHOT_FILES {
            return Err(format!("a snapshot of {count} files"));
        }
        let mut files: Vec<(String, u64)> = Vec::with_capacity(count);
        let mut seen = std::collections::HashSet::with_capacity(count);
        let mut total = 0u64;
        for _ in 0..count {
            let length = reader.u16()? as usize;
            let name = std::str::from_utf8(reader.take(length)?)
                .map_err(|_| "a file name that is not UTF-8".to_string())?;
            check_name(name)?;
            if !seen.insert(name) {
                return Err(format!("the file {name} named twice"));
            }
            let bytes = reader.u64()?;
            total = total
                .checked_add(bytes)
                .filter(|&t| t <= MAX_SNAPSHOT_BYTES)
                .ok_or_else(|| format!("a snapshot of more than {MAX_SNAPSHOT_BYTES} bytes"))?;
            files.push((name.to_string(), bytes));
        }
        if !reader.0.is_empty() || !files.iter().any(|(name, _)| name == RAFT_POINT_FILE) {
            return Err("a descriptor with trailing bytes or without a raft point".into());
        }
        Ok(Descriptor {
            index,
            term,
            next_lsn,
            files,
        })
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err("a descriptor cut short".into());
        }
        let (taken, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(taken)
    }
    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2")))
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }
}

/// A name a set's file may have: letters, digits, `.`, `-` and `_`, not
/// starting with a dot, never a temporary file; so a name from a peer
/// can never leave the directory it is written into.
pub fn check_name(name: &str) -> Result<(), String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_');
    let fine = !name.is_empty()
        && name.len() <= MAX_FILE_NAME_BYTES
        && !name.starts_with('.')
        && !name.ends_with(".tmp")
        && name.chars().all(allowed);
    if fine {
        Ok(())
    } else {
        Err(format!("a file name no snapshot set has: {name:?}"))
    }
}

/// Where the pin of the snapshot at (`index`, `term`) is.
pub fn pin_dir(dir: &Path, index: u64, term: u64) -> PathBuf {
    dir.join(PINS_DIR).join(format!("{index}-{term}"))
}

/// Empties the pins and the staging directory (at start).
pub fn prepare(dir: &Path) -> std::io::Result<()> {
    for name in [PINS_DIR, INCOMING_DIR] {
        match std::fs::remove_dir_all(dir.join(name)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

/// Pins the set in use, whose raft point is `point`, and removes every
/// pin but it and the one before. No fsync: pins are made again at start.
pub fn pin(dir: &Path, point: &RaftPoint) -> Result<Descriptor, String> {
    let error = |what: &str, path: &Path, e: std::io::Error| {
        format!(
            "pinning the snapshot at entry {}: {what} {}: {e}",
            point.index,
            path.display()
        )
    };
    let pins = dir.join(PINS_DIR);
    crate::private_files::create_dir_all(&pins).map_err(|e| error("creating", &pins, e))?;
    let target = pin_dir(dir, point.index, point.term);
    let tmp = pins.join(format!("{}-{}.tmp", point.index, point.term));
    let _ = std::fs::remove_dir_all(&tmp);
    crate::private_files::create_dir_all(&tmp).map_err(|e| error("creating", &tmp, e))?;
    let set = std::fs::canonicalize(store::snapshot_dir(dir))
        .map_err(|e| error("reading", &store::snapshot_dir(dir), e))?;
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&set).map_err(|e| error("reading", &set, e))? {
        let entry = entry.map_err(|e| error("reading", &set, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_file = entry.file_type().is_ok_and(|t| t.is_file());
        if !is_file || check_name(&name).is_err() {
            continue;
        }
        std::fs::hard_link(entry.path(), tmp.join(&name))
            .map_err(|e| error("linking", &entry.path(), e))?;
        let bytes = std::fs::metadata(tmp.join(&name))
            .map_err(|e| error("reading", &tmp.join(&name), e))?
            .len();
        files.push((name, bytes));
    }
    files.sort();
    let _ = std::fs::remove_dir_all(&target);
    std::fs::rename(&tmp, &target).map_err(|e| error("renaming", &tmp, e))?;
    let pinned = super::raft_point::read(&target)?;
    if pinned.as_ref() != Some(point) {
        return Err(format!(
            "pinning the snapshot at entry {}: the set in use holds another point ({pinned:?})",
            point.index
        ));
    }
    remove_older_pins(&pins, point.index);
    Ok(Descriptor {
        index: point.index,
        term: point.term,
        next_lsn: point.next_lsn,
        files,
    })
}

/// Removes every pin but the newest two (`newest` and the one before).
fn remove_older_pins(pins: &Path, newest: u64) {
    let Ok(entries) = std::fs::read_dir(pins) else {
        return;
    };
    let mut found: Vec<(u64, PathBuf)> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let index = name.split('-').next()?.parse().ok()?;
            Some((index, e.path()))
        })
        .collect();
    found.sort();
    let keep_from = found
        .iter()
        .rposition(|(index, _)| *index < newest)
        .unwrap_or(0);
    for (_, path) in &found[..keep_from] {
        let _ = std::fs::remove_dir_all(path);
    }
}

/// A new directory to receive the snapshot at (`index`, `term`) into.
pub fn staging_dir(dir: &Path, index: u64, term: u64, transfer: u64) -> PathBuf {
    dir.join(INCOMING_DIR)
        .join(format!("{index}-{term}-{transfer}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn descriptor() -> Descriptor {
        Descriptor {
            index: 40,
            term: 3,
            next_lsn: 121,
            files: vec![("raft-point".into(), 80), ("shard-0.snap".into(), 1 << 20)],
        }
    }

    #[test]
    fn a_descriptor_reads_back_and_any_damage_or_hostile_name_is_refused() {
        // Proves a descriptor reads back as written, that a flipped bit anywhere in it is
        // refused, and that names which could leave the staging directory (separators, `..`,
        // a leading dot) or a list without a raft point are refused even with a good checksum.
        let good = descriptor();
        let bytes = good.encode();
        assert_eq!(Descriptor::decode(&bytes).unwrap(), good);
        for at in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x10;
            assert!(Descriptor::decode(&damaged).is_err(), "bit at byte {at}");
        }
        for name in ["../x", "a/b", "..", ".hidden", "x.tmp", "", "a\0b"] {
            let mut hostile = descriptor();
            hostile.files.push((name.into(), 1));
            assert!(Descriptor::decode(&hostile.encode()).is_err(), "{name:?}");
        }
        let mut twice = descriptor();
        twice.files.push(("shard-0.snap".into(), 1));
        assert!(Descriptor::decode(&twice.encode()).is_err());
        let mut no_point = descriptor();
        no_point.files.remove(0);
        assert!(Descriptor::decode(&no_point.encode()).is_err());
        assert!(Descriptor::decode(&bytes[..bytes.len() - 5]).is_err());
    }
}
