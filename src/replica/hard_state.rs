//! The durable Raft state of one replica, in one small file
//! (`DIR/raft/state`, the caller names it): raft-rs's `HardState` (term,
//! vote, commit), the `ConfState`'s voters and learners, the raft point of
//! the last snapshot taken or installed, and the [`Intent`] of an
//! unfinished journal truncation or snapshot install, redone at start.
//!
//! The file is two 4 KiB slots written alternately: write number `seq`
//! goes whole into slot `seq % 2`, so it only ever overwrites the older of
//! the two, and loading takes the valid slot with the higher `seq`. A torn,
//! lost or bit-flipped write thus costs that write alone. What a checksum
//! cannot explain is refused with an error, never replaced by a default: a
//! file of the wrong size or without a valid slot, or a slot whose checksum
//! holds but whose content this build does not write (another format
//! version, a write in the other slot's place, impossible fields). Going
//! back silently to an older term or vote could let the replica vote twice
//! in one term; a fresh default would forget it voted at all.
//!
//! A slot, little-endian, fixed places (format version 1):
//!
//! ```text
//!    0  magic                                      8 bytes
//!    8  format version                             u32
//!   12  where the crc32c starts (356)              u32
//!   16  seq                                        u64
//!   24  term, vote, commit, snap_index, snap_term  5 x u64
//!   64  intent kind (0 none, 1 truncate, 2 install) u32
//!   68  intent fields, unused ones zero            3 x u64
//!   92  voter count, then MAX_IDS ids (unused 0)   u32, MAX_IDS x u64
//!  224  learner count, then MAX_IDS ids            u32, MAX_IDS x u64
//!  356  crc32c of bytes 0..356                     u32
//!  360  zeros to the end of the slot
//! ```
//!
//! The crc's place is written into the slot so that a later format that
//! moves it can still be told from damage: a slot whose checksum holds
//! where it says, with a version this build does not know, is refused as a
//! newer file, not skipped as a damaged slot (which would load the other,
//! older one).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use raft::eraftpb::{ConfState, HardState};

use crate::faults::{self, points};
use crate::private_files;

/// One slot: one whole write.
pub const SLOT_BYTES: usize = 4096;
/// The file: two slots, nothing else. Any other size is refused.
pub const FILE_BYTES: usize = 2 * SLOT_BYTES;
/// Voters, and learners, each list at most: the slot has room for this
/// many and a longer list is refused, never cut.
pub const MAX_IDS: usize = 16;

const MAGIC: [u8; 8] = *b"ORHSTATE";
const FORMAT_VERSION: u32 = 1;
/// Where `seq` starts: magic, version and the crc's place come first, so
/// a crc placed before this would not cover them.
const SEQ_AT: usize = 16;
/// Where the crc32c starts in format 1: the header, six u64 (seq and the
/// five numbers), the intent (a u32 and three u64), two id lists.
const CRC_AT: usize = SEQ_AT + 6 * 8 + (4 + 3 * 8) + 2 * (4 + MAX_IDS * 8);

/// Work the replica must redo at start because it was cut short: each is
/// written here before it begins and cleared once it is done.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Intent {
    #[default]
    None,
    /// Dropping the journal's entries from `lsn` on (a leader overwrote them).
    TruncateFrom { lsn: u64 },
    /// Installing the snapshot at raft point (`index`, `term`), kept as
    /// snapshot `generation`.
    Install {
        index: u64,
        term: u64,
        generation: u64,
    },
}

/// What the file holds: raft-rs's hard and conf state, the raft point of
/// the last snapshot, and an unfinished intent.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DurableState {
    pub hard: HardState,
    /// Voters and learners only: a joint configuration (outgoing voters,
    /// next learners, auto leave) is refused by [`HardStateFile::write`].
    pub conf: ConfState,
    pub snap_index: u64,
    pub snap_term: u64,
    pub intent: Intent,
}

impl DurableState {
    /// raft-rs's view of it, for `Storage::initial_state`.
    pub fn raft_state(&self) -> raft::RaftState {
        raft::RaftState::new(self.hard.clone(), self.conf.clone())
    }

    /// Whether going from `self` to `next` must reach the disk before it is
    /// acted on: anything but the commit index. A lost commit index is
    /// safe (the leader tells it again); a lost term, vote, configuration,
    /// snapshot point or intent is not.
    fn needs_sync_to(&self, next: &DurableState) -> bool {
        self.hard.term != next.hard.term
            || self.hard.vote != next.hard.vote
            || self.conf != next.conf
            || (self.snap_index, self.snap_term) != (next.snap_index, next.snap_term)
            || self.intent != next.intent
    }
}

/// Why the file cannot be loaded or written.
#[derive(Debug, thiserror::Error)]
pub enum HardStateError {
    /// Opening, reading, writing or syncing failed.
    #[error("raft state {path}: {op} failed: {message}")]
    Io {
        path: PathBuf,
        op: &'static str,
        message: String,
    },
    /// The file exists but holds no state this build can trust.
    #[error("raft state {path} is unusable: {reason}; refusing to start rather than forget this replica's term and vote. Restore the data directory from a backup; or remove this replica from the cluster and add it back as a new member with an empty data directory")]
    Corrupt { path: PathBuf, reason: String },
    /// A slot written by another format of this file.
    #[error("raft state {path}: slot {slot} is in format version {version}, and this build reads version {FORMAT_VERSION}: it was written by another omniroute; start that one")]
    UnknownFormat {
        path: PathBuf,
        slot: usize,
        version: u32,
    },
    /// A state the format cannot hold; nothing was written.
    #[error("raft state {path}: not written, {reason}")]
    Unwritable { path: PathBuf, reason: String },
    /// An earlier write or sync failed, so nothing more is written: after a
    /// failed fsync the kernel may have dropped the pages, and a later sync
    /// that succeeds would not bring them back.
    #[error("raft state {path}: an earlier write failed ({first}); nothing more is written until the replica restarts and loads the file again")]
    Poisoned { path: PathBuf, first: String },
}

fn io_error(path: &Path, op: &'static str, error: io::Error) -> HardStateError {
    HardStateError::Io {
        path: path.to_path_buf(),
        op,
        message: error.to_string(),
    }
}

/// The open file of one replica's state. One owner writes it.
#[derive(Debug)]
pub struct HardStateFile {
    path: PathBuf,
    /// None until the first write creates the file.
    file: Option<File>,
    /// The number of the last write; 0 for a replica that never wrote.
    seq: u64,
    /// What the file holds now, to tell whether the next write needs a sync.
    last: DurableState,
    /// The first write or sync error; once set nothing more is written.
    poisoned: Option<String>,
    /// The last write was not synced: the next goes to its slot, not over
    /// the older synced one, which is all a power loss may leave.
    unsynced: bool,
}

impl HardStateFile {
    /// Loads the state at `path`. A missing file is a fresh replica (the
    /// defaults, nothing created yet: the first write creates the file);
    /// any file that is there must load whole, or this is an error.
    pub fn open(path: &Path) -> Result<(HardStateFile, DurableState), HardStateError> {
        let (file, seq, state) = match read_file(path)? {
            None => (None, 0, DurableState::default()),
            Some((file, bytes)) => {
                let (seq, state) = decode_file(path, &bytes)?;
                // What was read may be in the page cache alone (a crash
                // of the process, not of the machine): made durable before
                // a write may go to the other slot.
                faults::io(points::RAFT_STATE_FSYNC, || file.sync_all())
                    .map_err(|e| io_error(path, "fsync", e))?;
                (Some(file), seq, state)
            }
        };
        let handle = HardStateFile {
            path: path.to_path_buf(),
            file,
            seq,
            last: state.clone(),
            poisoned: None,
            unsynced: false,
        };
        Ok((handle, state))
    }

    /// Writes `state` over the older slot. It is synced when `must_sync`
    /// (raft-rs's `Ready::must_sync()`) or when anything but the commit
    /// index changed; the first write also creates the file, synced.
    /// After an I/O error every later write fails: restart and reload.
    /// A state the format cannot hold is refused before anything is
    /// written, and the handle stays usable.
    pub fn write(&mut self, state: &DurableState, must_sync: bool) -> Result<(), HardStateError> {
        if let Some(first) = &self.poisoned {
            return Err(HardStateError::Poisoned {
                path: self.path.clone(),
                first: first.clone(),
            });
        }
        let unwritable = |reason: String| HardStateError::Unwritable {
            path: self.path.clone(),
            reason,
        };
        // After an unsynced write, the next takes its slot (seq + 2): the
        // other holds the last synced state, and a torn write must not
        // land on it while the unsynced one may not be on disk.
        let step = if self.unsynced { 2 } else { 1 };
        let seq = self
            .seq
            .checked_add(step)
            .ok_or_else(|| unwritable("the write count is exhausted".into()))?;
        let slot = encode_slot(state, seq).map_err(unwritable)?;
        let sync = must_sync || self.last.needs_sync_to(state) || self.file.is_none();
        let written = match &self.file {
            Some(file) => overwrite(&self.path, file, seq, &slot, sync),
            None => create(&self.path, seq, &slot).map(|file| self.file = Some(file)),
        };
        match written {
            Ok(()) => {
                self.seq = seq;
                self.last = state.clone();
                self.unsynced = !sync;
                Ok(())
            }
            Err(error) => {
                self.poisoned = Some(error.to_string());
                Err(error)
            }
        }
    }

    /// The number of the last write (0 before the first).
    pub fn seq(&self) -> u64 {
        self.seq
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The byte offset of write `seq`'s slot.
fn slot_offset(seq: u64) -> usize {
    (seq % 2) as usize * SLOT_BYTES
}

/// Opens `path` and reads it whole; None if it does not exist.
fn read_file(path: &Path) -> Result<Option<(File, Vec<u8>)>, HardStateError> {
    let opened = faults::io(points::JOURNAL_OPEN, || {
        match private_files::options().read(true).write(true).open(path) {
            Ok(file) => Ok(Some(file)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    })
    .map_err(|e| io_error(path, "open", e))?;
    let Some(file) = opened else {
        return Ok(None);
    };
    let length = faults::io(points::JOURNAL_OPEN, || file.metadata())
        .map_err(|e| io_error(path, "stat", e))?
        .len();
    if length != FILE_BYTES as u64 {
        // The file is created whole under another name and renamed into
        // place, and never resized: another size is not a crash of ours.
        return Err(HardStateError::Corrupt {
            path: path.to_path_buf(),
            reason: format!("it is {length} bytes, not {FILE_BYTES}"),
        });
    }
    let mut bytes = vec![0; FILE_BYTES];
    faults::io(points::JOURNAL_OPEN, || file.read_exact_at(&mut bytes, 0))
        .map_err(|e| io_error(path, "read", e))?;
    Ok(Some((file, bytes)))
}

/// Writes one slot in place, and syncs it if asked.
fn overwrite(
    path: &Path,
    file: &File,
    seq: u64,
    slot: &[u8],
    sync: bool,
) -> Result<(), HardStateError> {
    let offset = slot_offset(seq) as u64;
    faults::io(points::JOURNAL_WRITE, || file.write_all_at(slot, offset))
        .map_err(|e| io_error(path, "write", e))?;
    if sync {
        faults::io(points::RAFT_STATE_FSYNC, || file.sync_data())
            .map_err(|e| io_error(path, "fsync", e))?;
    }
    Ok(())
}

/// Creates the file with its first write: whole and synced under a
/// temporary name, then renamed into place and the directory synced. A
/// crash at any point leaves either no file (a fresh replica still) or the
/// whole file; never an empty or short one, which loading refuses. A
/// temporary file a crash left behind is truncated and reused.
fn create(path: &Path, seq: u64, slot: &[u8]) -> Result<File, HardStateError> {
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    let temporary = PathBuf::from(temporary);
    let mut bytes = vec![0; FILE_BYTES];
    let at = slot_offset(seq);
    bytes[at..at + SLOT_BYTES].copy_from_slice(slot);
    let file = faults::io(points::JOURNAL_OPEN, || private_files::create(&temporary))
        .map_err(|e| io_error(&temporary, "create", e))?;
    faults::io(points::JOURNAL_WRITE, || file.write_all_at(&bytes, 0))
        .map_err(|e| io_error(&temporary, "write", e))?;
    // sync_all, not sync_data: the new file's size must be durable too.
    faults::io(points::RAFT_STATE_FSYNC, || file.sync_all())
        .map_err(|e| io_error(&temporary, "fsync", e))?;
    faults::io(points::JOURNAL_RENAME, || std::fs::rename(&temporary, path))
        .map_err(|e| io_error(path, "rename", e))?;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    // The rename is durable only once the directory is.
    let dir_file = faults::io(points::JOURNAL_OPEN, || File::open(dir))
        .map_err(|e| io_error(dir, "open", e))?;
    faults::io(points::JOURNAL_DIR_FSYNC, || dir_file.sync_all())
        .map_err(|e| io_error(dir, "directory fsync", e))?;
    Ok(file)
}

/// Write `seq` of `state` as one whole slot; Err says why the format
/// cannot hold it.
fn encode_slot(state: &DurableState, seq: u64) -> Result<Vec<u8>, String> {
    check_conf(state)?;
    let mut slot = Vec::with_capacity(SLOT_BYTES);
    slot.extend_from_slice(&MAGIC);
    slot.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    slot.extend_from_slice(&(CRC_AT as u32).to_le_bytes());
    let (kind, fields) = match state.intent {
        Intent::None => (0u32, [0, 0, 0]),
        Intent::TruncateFrom { lsn } => (1, [lsn, 0, 0]),
        Intent::Install {
            index,
            term,
            generation,
        } => (2, [index, term, generation]),
    };
    let hard = &state.hard;
    let numbers = [seq, hard.term, hard.vote, hard.commit];
    for number in numbers
        .into_iter()
        .chain([state.snap_index, state.snap_term])
    {
        slot.extend_from_slice(&number.to_le_bytes());
    }
    slot.extend_from_slice(&kind.to_le_bytes());
    for field in fields {
        slot.extend_from_slice(&field.to_le_bytes());
    }
    for ids in [&state.conf.voters, &state.conf.learners] {
        // check_conf bounded the length to MAX_IDS.
        slot.extend_from_slice(&(ids.len() as u32).to_le_bytes());
        for slot_id in 0..MAX_IDS {
            let id = ids.get(slot_id).copied().unwrap_or(0);
            slot.extend_from_slice(&id.to_le_bytes());
        }
    }
    debug_assert_eq!(slot.len(), CRC_AT);
    let crc = crc32c::crc32c(&slot);
    slot.extend_from_slice(&crc.to_le_bytes());
    slot.resize(SLOT_BYTES, 0);
    Ok(slot)
}

/// What the slot layout can hold and loading will accept: no joint
/// configuration (it has no room for one), at most MAX_IDS voters and as
/// many learners, ids that are not 0 (raft-rs's "none"), each once.
fn check_conf(state: &DurableState) -> Result<(), String> {
    let conf = &state.conf;
    if !conf.voters_outgoing.is_empty() || !conf.learners_next.is_empty() || conf.auto_leave {
        return Err(format!(
            "a joint configuration (outgoing voters {:?}, next learners {:?}, auto leave {}) has no place in this file",
            conf.voters_outgoing, conf.learners_next, conf.auto_leave
        ));
    }
    check_ids(&conf.voters, &conf.learners)
}

fn check_ids(voters: &[u64], learners: &[u64]) -> Result<(), String> {
    for (what, ids) in [("voters", voters), ("learners", learners)] {
        if ids.len() > MAX_IDS {
            return Err(format!("{} {what}, at most {MAX_IDS} fit", ids.len()));
        }
    }
    let mut all: Vec<u64> = voters.iter().chain(learners).copied().collect();
    if all.contains(&0) {
        return Err(format!(
            "id 0 among voters {voters:?} / learners {learners:?}"
        ));
    }
    all.sort_unstable();
    if let Some(twice) = all.windows(2).find(|pair| pair[0] == pair[1]) {
        return Err(format!(
            "id {} twice among voters {voters:?} / learners {learners:?}",
            twice[0]
        ));
    }
    Ok(())
}

/// Why a slot is not loaded.
#[derive(Debug)]
enum Problem {
    /// What a torn, lost or flipped write leaves: the slot is skipped.
    Damaged(String),
    /// The checksum holds, so the slot is as written, but not by a
    /// writer of this format: refused, for skipping it would load older
    /// state in its place.
    Refused(String),
    /// The checksum holds and the slot has another format version.
    Version(u32),
}

/// The state of the valid slot with the higher `seq`. Write `seq` lives in
/// slot `seq % 2` (a slot elsewhere is refused), so two valid slots never
/// hold the same `seq`.
fn decode_file(path: &Path, bytes: &[u8]) -> Result<(u64, DurableState), HardStateError> {
    let corrupt = |reason: String| HardStateError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    let mut newest: Option<(u64, DurableState)> = None;
    let mut damage = Vec::new();
    for (index, slot) in bytes.chunks_exact(SLOT_BYTES).enumerate() {
        let place = format!(
            "slot {index} (bytes {}..{})",
            index * SLOT_BYTES,
            (index + 1) * SLOT_BYTES
        );
        match decode_slot(slot, index) {
            Ok((seq, state)) => {
                if newest.as_ref().is_none_or(|(newest, _)| seq > *newest) {
                    newest = Some((seq, state));
                }
            }
            Err(Problem::Damaged(why)) => damage.push(format!("{place}: {why}")),
            Err(Problem::Refused(why)) => {
                return Err(corrupt(format!("{place} has a valid checksum but {why}")))
            }
            Err(Problem::Version(version)) => {
                return Err(HardStateError::UnknownFormat {
                    path: path.to_path_buf(),
                    slot: index,
                    version,
                })
            }
        }
    }
    newest.ok_or_else(|| corrupt(format!("no valid slot: {}", damage.join("; "))))
}

/// Reads one slot, checking everything before it is believed: first what
/// damage would break (magic, the crc's place, the crc, the zeros after
/// it), then what only a foreign writer would put there.
fn decode_slot(slot: &[u8], index: usize) -> Result<(u64, DurableState), Problem> {
    check_sealed(slot)?;
    let mut fields = Fields {
        slot,
        at: MAGIC.len(),
    };
    let version = fields.u32();
    if version != FORMAT_VERSION {
        return Err(Problem::Version(version));
    }
    let crc_at = fields.u32() as usize;
    if crc_at != CRC_AT {
        return Err(Problem::Refused(format!(
            "its checksum is at byte {crc_at}, not {CRC_AT} as in format {FORMAT_VERSION}"
        )));
    }
    let seq = fields.u64();
    if slot_offset(seq) != index * SLOT_BYTES {
        return Err(Problem::Refused(format!(
            "it holds write {seq}, which belongs in the other slot: a write landed in the wrong place"
        )));
    }
    // Fields of a struct literal are evaluated in the order written.
    let hard = HardState {
        term: fields.u64(),
        vote: fields.u64(),
        commit: fields.u64(),
        ..HardState::default()
    };
    let (snap_index, snap_term) = (fields.u64(), fields.u64());
    let intent = fields.intent().map_err(Problem::Refused)?;
    let voters = fields.ids().map_err(Problem::Refused)?;
    let learners = fields.ids().map_err(Problem::Refused)?;
    check_ids(&voters, &learners).map_err(Problem::Refused)?;
    let conf = ConfState::from((voters, learners));
    let state = DurableState {
        hard,
        conf,
        snap_index,
        snap_term,
        intent,
    };
    Ok((seq, state))
}

/// Whether the slot is whole as some writer sealed it.
fn check_sealed(slot: &[u8]) -> Result<(), Problem> {
    if slot.get(..MAGIC.len()) != Some(&MAGIC[..]) {
        let why = if slot.iter().all(|&b| b == 0) {
            "all zeros (never written, or zeroed)"
        } else {
            "no magic"
        };
        return Err(Problem::Damaged(why.into()));
    }
    let crc_at = Fields { slot, at: 12 }.u32() as usize;
    let stored = match slot.get(crc_at..crc_at.saturating_add(4)) {
        Some(stored) if crc_at >= SEQ_AT => stored,
        _ => {
            return Err(Problem::Damaged(format!(
                "checksum place {crc_at} is outside the slot"
            )))
        }
    };
    let computed = crc32c::crc32c(&slot[..crc_at]);
    if stored != computed.to_le_bytes() {
        return Err(Problem::Damaged("checksum mismatch".into()));
    }
    if let Some(at) = slot[crc_at + 4..].iter().position(|&b| b != 0) {
        return Err(Problem::Damaged(format!(
            "byte {} after the checksum is not zero",
            crc_at + 4 + at
        )));
    }
    Ok(())
}

/// Reads the fields of a slot in order. Every place read is a constant of
/// the layout below CRC_AT, inside a slot of SLOT_BYTES.
struct Fields<'a> {
    slot: &'a [u8],
    at: usize,
}

impl Fields<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let mut bytes = [0; N];
        bytes.copy_from_slice(&self.slot[self.at..self.at + N]);
        self.at += N;
        bytes
    }

    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take())
    }

    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take())
    }

    /// The intent; unused fields must be zero, as the writer leaves them.
    fn intent(&mut self) -> Result<Intent, String> {
        let kind = self.u32();
        let fields = [self.u64(), self.u64(), self.u64()];
        let intent = match (kind, fields) {
            (0, [0, 0, 0]) => Intent::None,
            (1, [lsn, 0, 0]) => Intent::TruncateFrom { lsn },
            (2, [index, term, generation]) => Intent::Install {
                index,
                term,
                generation,
            },
            _ => return Err(format!("intent kind {kind} with fields {fields:?}")),
        };
        Ok(intent)
    }

    /// A count and MAX_IDS places; the places past the count must be zero.
    fn ids(&mut self) -> Result<Vec<u64>, String> {
        let count = self.u32() as usize;
        let places: Vec<u64> = (0..MAX_IDS).map(|_| self.u64()).collect();
        if count > MAX_IDS {
            return Err(format!("an id count of {count}, at most {MAX_IDS} fit"));
        }
        if places[count..].iter().any(|&id| id != 0) {
            return Err(format!("ids past the count of {count}: {places:?}"));
        }
        Ok(places[..count].to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scratch::Scratch;
    use std::os::unix::fs::PermissionsExt;

    fn state_path(dir: &Scratch) -> PathBuf {
        dir.0.join("state")
    }

    /// A state whose every field depends on `n`, the intent cycling
    /// through the three kinds.
    fn sample(n: u64) -> DurableState {
        let hard = HardState {
            term: 7 + n,
            vote: 1 + n % 3,
            commit: 1000 * n + 3,
            ..HardState::default()
        };
        let intent = match n % 3 {
            0 => Intent::None,
            1 => Intent::TruncateFrom { lsn: 500 + n },
            _ => Intent::Install {
                index: 900 + n,
                term: 5 + n,
                generation: n,
            },
        };
        DurableState {
            hard,
            conf: ConfState::from((1..=3 + n % 4, [100 + n])),
            snap_index: 40 * n,
            snap_term: 3 + n,
            intent,
        }
    }

    fn load(path: &Path) -> Result<DurableState, HardStateError> {
        HardStateFile::open(path).map(|(_, state)| state)
    }

    /// A file holding writes `sample(1..=writes)`; returns its bytes.
    fn written(path: &Path, writes: u64) -> Vec<u8> {
        let _ = std::fs::remove_file(path);
        let (mut file, _) = HardStateFile::open(path).unwrap();
        for n in 1..=writes {
            file.write(&sample(n), true).unwrap();
        }
        std::fs::read(path).unwrap()
    }

    /// Makes the file hold `bytes`, in place: truncating and rewriting it
    /// would make ext4 flush it at close, thousands of times per test.
    fn put(path: &Path, bytes: &[u8]) {
        let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        file.write_all_at(bytes, 0).unwrap();
        file.set_len(bytes.len() as u64).unwrap();
    }

    /// Seals a slot's changed bytes with a fresh crc at `crc_at`.
    fn reseal(slot: &mut [u8], crc_at: usize) {
        let crc = crc32c::crc32c(&slot[..crc_at]);
        slot[crc_at..crc_at + 4].copy_from_slice(&crc.to_le_bytes());
    }

    #[test]
    fn a_write_after_an_unsynced_one_never_lands_on_the_last_synced_slot() {
        // Proves that after a commit-only write (not synced), the next write goes to that
        // write's slot, so a power loss tearing it still finds the last synced state whole.
        let dir = Scratch::new("hard-state-unsynced");
        let path = state_path(&dir);
        let (mut file, _) = HardStateFile::open(&path).unwrap();
        let synced = sample(1);
        file.write(&synced, true).unwrap();
        let slot_of = |bytes: &[u8], seq: u64| {
            let at = (seq % 2) as usize * SLOT_BYTES;
            bytes[at..at + SLOT_BYTES].to_vec()
        };
        let synced_slot = slot_of(&std::fs::read(&path).unwrap(), file.seq());
        let synced_seq = file.seq();
        let mut commit_only = synced.clone();
        commit_only.hard.commit += 1;
        file.write(&commit_only, false).unwrap();
        let mut vote = commit_only.clone();
        vote.hard.vote += 1;
        vote.hard.term += 1;
        file.write(&vote, true).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(slot_of(&bytes, synced_seq), synced_slot);
        assert_eq!(load(&path).unwrap(), vote);
    }

    #[test]
    fn every_field_round_trips_and_writes_alternate_slots() {
        // Proves every field (each intent kind, full id lists, extreme numbers) loads as written, seq rises by one per write, and each write changes its own slot and leaves the other alone.
        let dir = Scratch::new("hard-state-round-trip");
        let path = state_path(&dir);
        let (mut file, fresh) = HardStateFile::open(&path).unwrap();
        assert_eq!((fresh, file.seq()), (DurableState::default(), 0));
        let full = DurableState {
            hard: HardState {
                term: u64::MAX,
                vote: u64::MAX - 1,
                commit: u64::MAX - 2,
                ..HardState::default()
            },
            conf: ConfState::from((1..=MAX_IDS as u64, 17..=16 + MAX_IDS as u64)),
            snap_index: u64::MAX - 3,
            snap_term: u64::MAX - 4,
            intent: Intent::Install {
                index: u64::MAX - 5,
                term: u64::MAX - 6,
                generation: u64::MAX - 7,
            },
        };
        let states = [
            sample(1),
            sample(2),
            sample(3),
            full,
            DurableState::default(),
        ];
        let kinds: std::collections::HashSet<u32> = states
            .iter()
            .map(|s| encode_slot(s, 1).unwrap()[64] as u32)
            .collect();
        assert_eq!(kinds.len(), 3, "every intent kind is written");
        let mut before = vec![0; FILE_BYTES];
        for (i, state) in states.iter().enumerate() {
            let seq = i as u64 + 1;
            file.write(state, i % 2 == 0).unwrap();
            assert_eq!(file.seq(), seq);
            let after = std::fs::read(&path).unwrap();
            let (own, other) = (slot_offset(seq), slot_offset(seq + 1));
            assert_eq!(own, (i + 1) % 2 * SLOT_BYTES);
            assert_ne!(after[own..own + SLOT_BYTES], before[own..own + SLOT_BYTES]);
            assert_eq!(
                after[other..other + SLOT_BYTES],
                before[other..other + SLOT_BYTES]
            );
            let (reopened, loaded) = HardStateFile::open(&path).unwrap();
            assert_eq!(&loaded, state, "write {seq}");
            assert_eq!(reopened.seq(), seq);
            before = after;
        }
        assert_eq!(CRC_AT, 356, "the layout in the module comment");
    }

    #[test]
    fn a_missing_file_is_fresh_and_the_first_write_creates_it_whole() {
        // Proves opening a missing file gives the defaults and creates nothing, and the first write leaves an owner-only file of two slots, no temporary, that reopens to that write and takes the next.
        let dir = Scratch::new("hard-state-fresh");
        let path = state_path(&dir);
        let (mut file, fresh) = HardStateFile::open(&path).unwrap();
        assert_eq!(fresh, DurableState::default());
        assert!(!path.exists(), "open creates nothing");
        file.write(&sample(1), false).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), FILE_BYTES as u64);
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let names: Vec<_> = std::fs::read_dir(&dir.0)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["state"]);
        let (mut reopened, loaded) = HardStateFile::open(&path).unwrap();
        assert_eq!((loaded, reopened.seq()), (sample(1), 1));
        reopened.write(&sample(2), true).unwrap();
        assert_eq!(load(&path).unwrap(), sample(2));
    }

    #[test]
    fn a_state_the_format_cannot_hold_is_refused_and_nothing_is_written() {
        // Proves 17 voters, 17 learners, id 0, an id twice and a joint configuration are each an error, the file keeps its bytes, and the handle still writes.
        let dir = Scratch::new("hard-state-unwritable");
        let path = state_path(&dir);
        let good = written(&path, 2);
        let (mut file, _) = HardStateFile::open(&path).unwrap();
        let with_conf = |conf: ConfState| DurableState { conf, ..sample(3) };
        let mut joint = ConfState::from(([1, 2, 3], []));
        joint.voters_outgoing = vec![1, 2, 4];
        let refused = [
            with_conf(ConfState::from((1..=17, []))),
            with_conf(ConfState::from(([1], 2..=18))),
            with_conf(ConfState::from(([1, 0, 2], []))),
            with_conf(ConfState::from(([1, 2], [3, 2]))),
            with_conf(joint),
        ];
        for state in &refused {
            let error = file.write(state, true).unwrap_err();
            assert!(
                matches!(error, HardStateError::Unwritable { .. }),
                "{error}"
            );
            assert_eq!(std::fs::read(&path).unwrap(), good, "{error}");
        }
        file.write(&sample(3), true).unwrap();
        assert_eq!(load(&path).unwrap(), sample(3));
    }

    #[test]
    fn a_flipped_bit_anywhere_in_the_newest_slot_loads_the_write_before() {
        // Proves that for every byte of the newest slot (header, every field, the crc, the zeros after it), in either slot, one flipped bit loads the write before exactly, and the next write goes over the damaged slot and loads.
        let dir = Scratch::new("hard-state-flips");
        let path = state_path(&dir);
        for writes in [3, 4] {
            let good = written(&path, writes);
            let newest = slot_offset(writes);
            for byte in 0..SLOT_BYTES {
                let mut bytes = good.clone();
                bytes[newest + byte] ^= 1 << (byte % 8);
                put(&path, &bytes);
                let (mut file, loaded) = HardStateFile::open(&path)
                    .unwrap_or_else(|e| panic!("flip at byte {byte} of the newest slot: {e}"));
                assert_eq!(
                    loaded,
                    sample(writes - 1),
                    "flip at byte {byte} of the newest slot"
                );
                assert_eq!(file.seq(), writes - 1);
                if byte % 61 == 0 {
                    file.write(&sample(7), false).unwrap();
                    assert_eq!(load(&path).unwrap(), sample(7), "after byte {byte}");
                }
            }
        }
    }

    #[test]
    fn damage_in_both_slots_is_refused_and_names_the_file() {
        // Proves a flipped bit in each slot (144 pairs over header, fields, crc and zeros) or a file of zeros is an error naming the path and each slot's fault, never a default.
        let dir = Scratch::new("hard-state-both");
        let path = state_path(&dir);
        let good = written(&path, 3);
        let offsets = [
            0,
            9,
            13,
            20,
            30,
            70,
            100,
            300,
            CRC_AT,
            CRC_AT + 3,
            CRC_AT + 4,
            4095,
        ];
        for first in offsets {
            for second in offsets {
                let mut bytes = good.clone();
                bytes[first] ^= 0x10;
                bytes[SLOT_BYTES + second] ^= 0x01;
                put(&path, &bytes);
                let error = load(&path).unwrap_err();
                assert!(matches!(error, HardStateError::Corrupt { .. }), "{error}");
                let message = error.to_string();
                for part in [
                    path.to_str().unwrap(),
                    "no valid slot",
                    "slot 0 (bytes 0..4096)",
                    "slot 1",
                ] {
                    assert!(message.contains(part), "{first}/{second}: {message}");
                }
            }
        }
        put(&path, &[0; FILE_BYTES]);
        let message = load(&path).unwrap_err().to_string();
        assert!(
            message.contains("all zeros") && message.contains("refusing"),
            "{message}"
        );
    }

    #[test]
    fn a_torn_write_loads_the_write_before_it() {
        // Proves a newest slot holding its write up to any byte and the write it replaced (or zeros) after it loads the write before exactly, unless what landed is the whole new write, which then loads.
        let dir = Scratch::new("hard-state-torn");
        let path = state_path(&dir);
        let replaced = written(&path, 1)[SLOT_BYTES..].to_vec();
        let good = written(&path, 3);
        let new = &good[SLOT_BYTES..];
        let mut outcomes = [0; 2];
        for cut in 0..=SLOT_BYTES {
            for rest in [&replaced[cut..], &vec![0; SLOT_BYTES - cut][..]] {
                let mut bytes = good.clone();
                bytes[SLOT_BYTES + cut..].copy_from_slice(rest);
                put(&path, &bytes);
                let loaded = load(&path).unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
                let whole = &bytes[SLOT_BYTES..] == new;
                let expected = if whole { sample(3) } else { sample(2) };
                assert_eq!(loaded, expected, "cut at {cut}");
                outcomes[whole as usize] += 1;
            }
        }
        assert!(outcomes[0] > 2 * CRC_AT && outcomes[1] > 0, "{outcomes:?}");
    }

    #[test]
    fn a_file_of_another_size_is_refused() {
        // Proves a file cut to 0, 1, one slot or one byte short, or grown by one byte, is an error naming the path and the size.
        let dir = Scratch::new("hard-state-size");
        let path = state_path(&dir);
        let good = written(&path, 3);
        for length in [0, 1, SLOT_BYTES, FILE_BYTES - 1, FILE_BYTES + 1] {
            let mut bytes = good.clone();
            bytes.resize(length, 0);
            put(&path, &bytes);
            let error = load(&path).unwrap_err();
            let message = error.to_string();
            assert!(matches!(error, HardStateError::Corrupt { .. }), "{message}");
            assert!(message.contains(path.to_str().unwrap()), "{message}");
            assert!(
                message.contains(&format!("{length} bytes, not {FILE_BYTES}")),
                "{message}"
            );
        }
    }

    #[test]
    fn a_slot_with_a_valid_checksum_but_foreign_content_is_refused() {
        // Proves a slot whose checksum holds is refused, not skipped, though the other slot is newer: a write in the other slot's place (two slots of one seq), another format version, a moved checksum, too many ids, an id twice, ids past the count, an unknown intent.
        let dir = Scratch::new("hard-state-foreign");
        let path = state_path(&dir);
        let good = written(&path, 3);
        type Edit = fn(&mut [u8]);
        let cases: [(&str, Edit); 8] = [
            ("wrong place", |_| {}),
            ("format version 2", |s| s[8] = 2),
            ("checksum is at byte 360", |s| {
                s[12..16].copy_from_slice(&(CRC_AT as u32 + 4).to_le_bytes());
                reseal(s, CRC_AT + 4);
            }),
            ("id count of 17", |s| s[92] = 17),
            ("id 1 twice", |s| {
                s[104..112].copy_from_slice(&1u64.to_le_bytes())
            }),
            ("past the count", |s| s[96 + 15 * 8] = 9),
            ("intent kind 3", |s| s[64] = 3),
            ("intent kind 0 with fields", |s| {
                s[64..68].copy_from_slice(&0u32.to_le_bytes());
                s[68] = 1;
            }),
        ];
        for (what, edit) in cases {
            let mut bytes = good.clone();
            let (older, newest) = bytes.split_at_mut(SLOT_BYTES);
            if what == "wrong place" {
                older.copy_from_slice(newest);
            } else {
                edit(older);
                if what != "checksum is at byte 360" {
                    reseal(older, CRC_AT);
                }
            }
            put(&path, &bytes);
            let message = load(&path).unwrap_err().to_string();
            assert!(message.contains(what), "{what}: {message}");
            assert!(message.contains("slot 0"), "{what}: {message}");
        }
    }

    /// The points this file's I/O goes through.
    const POINTS: [&str; 5] = [
        points::JOURNAL_OPEN,
        points::JOURNAL_WRITE,
        points::RAFT_STATE_FSYNC,
        points::JOURNAL_RENAME,
        points::JOURNAL_DIR_FSYNC,
    ];

    fn alone(name: &str, body: impl FnOnce()) {
        crate::faults::alone(module_path!(), name, body);
    }

    #[test]
    fn only_a_commit_only_change_may_skip_the_sync() {
        // Proves, with every fsync failing, that a write changing only the commit and not asked to sync succeeds (no fsync), while the same write asked to sync, and a write changing term, vote, voters, learners, snapshot point or intent though not asked to, each fsync (and fail).
        alone("only_a_commit_only_change_may_skip_the_sync", || {
            let base = sample(1);
            let change = |edit: fn(&mut DurableState)| {
                let mut next = base.clone();
                next.hard.commit += 1;
                edit(&mut next);
                next
            };
            let cases: [(&str, DurableState, bool, bool); 9] = [
                ("commit", change(|_| {}), false, false),
                ("commit, must_sync", change(|_| {}), true, true),
                ("term", change(|s| s.hard.term += 1), false, true),
                ("vote", change(|s| s.hard.vote += 1), false, true),
                ("voters", change(|s| s.conf.voters.push(9)), false, true),
                ("learners", change(|s| s.conf.learners.clear()), false, true),
                ("snap_index", change(|s| s.snap_index += 1), false, true),
                ("snap_term", change(|s| s.snap_term += 1), false, true),
                ("intent", change(|s| s.intent = Intent::None), false, true),
            ];
            for (what, next, must_sync, syncs) in cases {
                let dir = Scratch::new("hard-state-sync");
                let path = state_path(&dir);
                let (mut file, _) = HardStateFile::open(&path).unwrap();
                file.write(&base, true).unwrap();
                fail::cfg(points::RAFT_STATE_FSYNC, "return(EIO)").unwrap();
                let result = file.write(&next, must_sync);
                fail::remove(points::RAFT_STATE_FSYNC);
                assert_eq!(result.is_err(), syncs, "{what}: {result:?}");
                assert_eq!(load(&path).unwrap(), next, "{what}: written either way");
            }
        });
    }

    /// A fresh replica's writes, each with the must_sync raft-rs would
    /// give: term changes, commit-only changes, an intent set unasked.
    fn walk_states() -> Vec<(DurableState, bool)> {
        let commit = |state: &DurableState| {
            let mut next = state.clone();
            next.hard.commit += 5;
            next
        };
        let first = sample(1);
        let second = commit(&first);
        let third = sample(2);
        let fourth = DurableState {
            intent: Intent::TruncateFrom { lsn: 77 },
            ..third.clone()
        };
        let fifth = commit(&fourth);
        let sixth = sample(3);
        let states = [(first, true), (second, false), (third, true)];
        states
            .into_iter()
            .chain([(fourth, false), (fifth, false), (sixth, true)])
            .collect()
    }

    /// Writes `states` through one handle, opened fresh and again half
    /// way. Returns the index of the write (or the open before it) that
    /// failed, after checking that the handle then refuses every write.
    fn run_walk(path: &Path, states: &[(DurableState, bool)]) -> Option<usize> {
        let mut file = None;
        for (i, (state, must_sync)) in states.iter().enumerate() {
            if i == 0 || i == states.len() / 2 {
                drop(file.take());
                match HardStateFile::open(path) {
                    Ok((opened, _)) => file = Some(opened),
                    Err(error) => {
                        assert!(matches!(error, HardStateError::Io { .. }), "{error}");
                        return Some(i);
                    }
                }
            }
            let file = file.as_mut()?;
            if let Err(error) = file.write(state, *must_sync) {
                assert!(matches!(error, HardStateError::Io { .. }), "{error}");
                assert!(error.to_string().contains("os error 5"), "{error}");
                POINTS.iter().for_each(fail::remove);
                let again = file.write(state, true);
                assert!(
                    matches!(again, Err(HardStateError::Poisoned { .. })),
                    "{again:?}"
                );
                return Some(i);
            }
        }
        None
    }

    #[test]
    fn every_injected_fault_poisons_the_handle_and_leaves_a_whole_state() {
        // Proves, failing in turn each I/O call (every open, stat, read, write, fsync, rename and directory fsync) of a fresh replica's six writes and a reopen, that the error is returned, the handle refuses later writes with the fault gone, and the file loads as the last acknowledged write or the failed one, whole, and takes the next write.
        alone(
            "every_injected_fault_poisons_the_handle_and_leaves_a_whole_state",
            || {
                let states = walk_states();
                let mut faults = Vec::new();
                for point in POINTS {
                    for skip in 0.. {
                        let dir = Scratch::new("hard-state-walk");
                        let path = state_path(&dir);
                        fail::cfg(point, &format!("{skip}*off->return(EIO)")).unwrap();
                        let failed = run_walk(&path, &states);
                        fail::remove(point);
                        let Some(failed) = failed else {
                            assert_eq!(load(&path).unwrap(), states[states.len() - 1].0);
                            faults.push((point, skip));
                            break;
                        };
                        let before = failed.checked_sub(1).map(|i| states[i].0.clone());
                        let (mut file, loaded) = HardStateFile::open(&path)
                            .unwrap_or_else(|e| panic!("{point} call {skip}: {e}"));
                        let whole =
                            loaded == before.unwrap_or_default() || loaded == states[failed].0;
                        assert!(whole, "{point} call {skip}: loaded {loaded:?}");
                        file.write(&sample(9), false).unwrap();
                        assert_eq!(load(&path).unwrap(), sample(9), "{point} call {skip}");
                    }
                }
                // (point, calls it has in the walk): each was failed at every call.
                eprintln!("calls per point: {faults:?}");
                assert!(faults.iter().all(|(_, calls)| *calls > 0), "{faults:?}");
            },
        );
    }
}
