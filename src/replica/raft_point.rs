//! The raft point of a snapshot set (`DIR/snapshots-G/raft-point`): the
//! last entry the set's state holds, and what a replica needs to go on
//! from there without the log before it. Written last into a set, durably,
//! so a set without one was never finished (docs/RAFT-SNAPSHOTS.md, 3.1).
//!
//! Little-endian, fixed places, then the two id lists (format version 1):
//!
//! ```text
//!    0  magic                                   8 bytes
//!    8  format version                          u32
//!   12  index, term, next_lsn                   3 x u64
//!   36  stock loaded (0 or 1)                   u8
//!   37  voter count, then that many ids         u32, n x u64
//!    .  learner count, then that many ids       u32, m x u64
//!    .  crc32c of every byte before it          u32
//! ```
//!
//! Every byte is checked before it is trusted: a file of another length
//! than its counts make, a checksum that does not hold, an unknown version
//! or fields no replica writes are refused, never read as a point.

use std::path::Path;

use super::hard_state::MAX_IDS;

/// The file's name in a snapshot set.
pub const RAFT_POINT_FILE: &str = "raft-point";

const MAGIC: [u8; 8] = *b"ORRPOINT";
const FORMAT_VERSION: u32 = 1;
/// Bytes before the voter list: magic, version, three u64, a flag.
const FIXED_BYTES: usize = 8 + 4 + 3 * 8 + 1;

/// Where a snapshot set stands in the raft log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RaftPoint {
    /// The last entry the set's state holds, and its term.
    pub index: u64,
    pub term: u64,
    /// The LSN the header of entry `index + 1` has (or will have) in the
    /// journal: every snapshot in the set is labelled at `next_lsn - 1`
    /// or later.
    pub next_lsn: u64,
    /// The configuration as of `index`.
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    /// The log through `index` holds the marker that the config's stock
    /// is loaded (`follower::STOCK_LOADED`), which compaction removes.
    pub stock_loaded: bool,
}

/// Why bytes are not a raft point.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RaftPointError {
    #[error("a raft point of {0} bytes, shorter than its fixed part")]
    Short(usize),
    #[error("not a raft point (magic {0:02x?})")]
    Magic([u8; 8]),
    #[error(
        "a raft point's checksum does not hold (stored {stored:08x}, computed {computed:08x})"
    )]
    Checksum { stored: u32, computed: u32 },
    #[error("a raft point of format version {0}, which this build does not read")]
    Version(u32),
    #[error("a raft point of {got} bytes, where its id counts make {expected}")]
    Length { got: usize, expected: usize },
    #[error("a raft point with impossible fields: {0}")]
    Impossible(String),
}

impl RaftPoint {
    pub fn encode(&self) -> Vec<u8> {
        assert!(
            self.voters.len() <= MAX_IDS && self.learners.len() <= MAX_IDS,
            "a configuration of more than MAX_IDS ids"
        );
        let mut out = Vec::with_capacity(encoded_bytes(self.voters.len(), self.learners.len()));
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        for value in [self.index, self.term, self.next_lsn] {
            out.extend_from_slice(&value.to_le_bytes());
        }
        out.push(u8::from(self.stock_loaded));
        for ids in [&self.voters, &self.learners] {
            out.extend_from_slice(&(ids.len() as u32).to_le_bytes());
            ids.iter()
                .for_each(|id| out.extend_from_slice(&id.to_le_bytes()));
        }
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<RaftPoint, RaftPointError> {
        if bytes.len() < FIXED_BYTES + 2 * 4 + 4 {
            return Err(RaftPointError::Short(bytes.len()));
        }
        let magic: [u8; 8] = bytes[..8].try_into().expect("8 bytes");
        if magic != MAGIC {
            return Err(RaftPointError::Magic(magic));
        }
        let (body, stored) = bytes.split_at(bytes.len() - 4);
        let stored = u32::from_le_bytes(stored.try_into().expect("4 bytes"));
        let computed = crc32c::crc32c(body);
        if stored != computed {
            return Err(RaftPointError::Checksum { stored, computed });
        }
        let mut reader = Reader { bytes: body, at: 8 };
        let version = reader.u32()?;
        if version != FORMAT_VERSION {
            return Err(RaftPointError::Version(version));
        }
        let (index, term, next_lsn) = (reader.u64()?, reader.u64()?, reader.u64()?);
        let stock_loaded = match reader.u8()? {
            0 => false,
            1 => true,
            other => return Err(impossible(format!("a stock-loaded flag of {other}"))),
        };
        let voters = reader.ids()?;
        let learners = reader.ids()?;
        let expected = encoded_bytes(voters.len(), learners.len());
        if bytes.len() != expected {
            return Err(RaftPointError::Length {
                got: bytes.len(),
                expected,
            });
        }
        let point = RaftPoint {
            index,
            term,
            next_lsn,
            voters,
            learners,
            stock_loaded,
        };
        point.check()?;
        Ok(point)
    }

    /// What no replica writes: no entry, an entry without a term, fewer
    /// LSNs than one header per entry, no voter.
    fn check(&self) -> Result<(), RaftPointError> {
        if self.index == 0 || self.term == 0 {
            return Err(impossible(format!(
                "entry {} of term {}",
                self.index, self.term
            )));
        }
        if self.next_lsn <= self.index {
            return Err(impossible(format!(
                "entry {} before LSN {}",
                self.index + 1,
                self.next_lsn
            )));
        }
        if self.voters.is_empty() {
            return Err(impossible("no voter".into()));
        }
        Ok(())
    }
}

/// Writes `point` into the snapshot set `set`, durably (the set's last file).
pub fn write(set: &Path, point: &RaftPoint) -> Result<(), crate::store::StoreError> {
    crate::store::write_durably(&set.join(RAFT_POINT_FILE), &point.encode())
}

/// The raft point of the set `set`, or None if it has none (a set written
/// by a single node, or never finished).
pub fn read(set: &Path) -> Result<Option<RaftPoint>, String> {
    let path = set.join(RAFT_POINT_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    RaftPoint::decode(&bytes)
        .map(Some)
        .map_err(|e| format!("{}: {e}", path.display()))
}

fn encoded_bytes(voters: usize, learners: usize) -> usize {
    FIXED_BYTES + 4 + voters * 8 + 4 + learners * 8 + 4
}

fn impossible(reason: String) -> RaftPointError {
    RaftPointError::Impossible(reason)
}

/// Reads fixed-size fields from a body whose checksum held.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], RaftPointError> {
        let field = self
            .bytes
            .get(self.at..self.at + n)
            .ok_or(RaftPointError::Short(self.bytes.len() + 4))?;
        self.at += n;
        Ok(field)
    }

    fn u8(&mut self) -> Result<u8, RaftPointError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, RaftPointError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }

    fn u64(&mut self) -> Result<u64, RaftPointError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }

    /// A count, then that many ids; a count over MAX_IDS is refused
    /// before anything is allocated for it.
    fn ids(&mut self) -> Result<Vec<u64>, RaftPointError> {
        let count = self.u32()? as usize;
        if count > MAX_IDS {
            return Err(impossible(format!("{count} ids (at most {MAX_IDS})")));
        }
        (0..count).map(|_| self.u64()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scratch::Scratch;

    fn point() -> RaftPoint {
        RaftPoint {
            index: 7_340,
            term: 4,
            next_lsn: 91_022,
            voters: vec![1, 2, 3],
            learners: vec![9],
            stock_loaded: true,
        }
    }

    #[test]
    fn a_point_round_trips_through_its_file() {
        // Proves every field comes back from the file as written, and that a set without
        // the file reads as having no point.
        let scratch = Scratch::new("raft-point");
        assert_eq!(read(&scratch.0), Ok(None));
        write(&scratch.0, &point()).expect("written");
        assert_eq!(read(&scratch.0), Ok(Some(point())));
    }

    #[test]
    fn every_flipped_bit_and_every_cut_is_refused() {
        // Proves no single flipped bit at any offset, and no file cut or grown at any
        // length, is read as a point.
        let bytes = point().encode();
        for at in 0..bytes.len() {
            for bit in 0..8 {
                let mut damaged = bytes.clone();
                damaged[at] ^= 1 << bit;
                assert!(
                    RaftPoint::decode(&damaged).is_err(),
                    "bit {bit} of byte {at} flipped was accepted"
                );
            }
        }
        for len in 0..bytes.len() {
            assert!(RaftPoint::decode(&bytes[..len]).is_err(), "cut to {len}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(RaftPoint::decode(&longer).is_err());
    }

    #[test]
    fn fields_no_replica_writes_are_refused_even_with_a_valid_checksum() {
        // Proves a point whose checksum holds but whose fields are impossible (no entry, no
        // term, too few LSNs, no voter, too many ids, another version) is refused.
        let cases = [
            RaftPoint {
                index: 0,
                ..point()
            },
            RaftPoint { term: 0, ..point() },
            RaftPoint {
                next_lsn: 7_340,
                ..point()
            },
            RaftPoint {
                voters: Vec::new(),
                ..point()
            },
        ];
        for case in cases {
            assert!(
                matches!(
                    RaftPoint::decode(&case.encode()),
                    Err(RaftPointError::Impossible(_))
                ),
                "{case:?} was accepted"
            );
        }
        let mut newer = point().encode();
        newer[8] = 2;
        let crc_at = newer.len() - 4;
        let crc = crc32c::crc32c(&newer[..crc_at]);
        newer[crc_at..].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(RaftPoint::decode(&newer), Err(RaftPointError::Version(2)));
        let mut many = point().encode();
        let voters_at = FIXED_BYTES;
        many[voters_at..voters_at + 4].copy_from_slice(&(MAX_IDS as u32 + 1).to_le_bytes());
        let crc = crc32c::crc32c(&many[..crc_at]);
        many[crc_at..].copy_from_slice(&crc.to_le_bytes());
        assert!(matches!(
            RaftPoint::decode(&many),
            Err(RaftPointError::Impossible(_))
        ));
    }
}
