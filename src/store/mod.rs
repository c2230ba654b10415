//! The data directory: the journal, one snapshot per actor, and the layout
//! they were written under. Opening it is recovery: load each snapshot,
//! replay the journal after each one's LSN, and hand back the engine state.
//!
//! ```text
//! DIR/lock                      the single writer's lock (see [`lock`])
//! DIR/names.toml                format version, ids of channels, markets, nodes
//! DIR/journal/{lsn:020}.wal     journal segments
//! DIR/snapshots -> snapshots-N  the snapshot set in use (see [`layout`])
//! DIR/snapshots-N/layout.toml   the shards and routers the set was written for
//! DIR/snapshots-N/{actor}.snap  magic | lsn | body length | crc32c | rkyv body
//! ```

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use rkyv::rancor;
use rkyv::util::AlignedVec;

use crate::core::book::router_of_order;
use crate::core::capacity::{LedgerImage, NodeLedger};
use crate::core::model::{NodeIdx, OrderId, SkuId};
use crate::core::network::Network;
use crate::core::ops::{apply_node_op, apply_stock_op};
use crate::core::order::OrderRecord;
use crate::core::stock::{Bumped, ShardImage, StockShard};
use crate::engine::sequencer::{
    Sequencer, Txn, KIND_DEMAND, KIND_DEMAND_LOST, KIND_MARKER, KIND_POLICY, KIND_TXN,
};
use crate::engine::{EngineError, EngineSettings, EngineState, Image};
use crate::journal::{self, Durability, Journal, JournalError, TornTail};
use crate::schema::{Layout, Names};

pub mod layout;
pub mod lock;
pub use lock::{Access, DirLock, LockError};

const SNAPSHOT_MAGIC: &[u8; 8] = b"ORSNAP01";
/// A router's book: the body is chunks, each a 16-byte header (archive
/// bytes, orders; u64 little-endian) and an archived `Vec<OrderRecord>`
/// padded to 16. Router snapshots written before books were streamed are
/// one archive under `SNAPSHOT_MAGIC`, and still load.
const BOOK_MAGIC: &[u8; 8] = b"ORBOOK01";
const BOOK_CHUNK_HEADER_BYTES: usize = 16;
/// magic, lsn, body length, crc32c, padding: the body starts 16-aligned.
const SNAPSHOT_HEADER_BYTES: usize = 32;
const SNAPSHOT_SUFFIX: &str = ".snap";
/// Snapshot bytes written between two flushes.
const SNAPSHOT_FLUSH_BYTES: usize = 2 << 20;

/// How the data directory is written, from `[journal]` in the config.
#[derive(Clone, Debug, PartialEq)]
pub struct StoreSettings {
    pub durability: Durability,
    pub segment_bytes: u64,
    /// Snapshot at least this often (0: only at shutdown).
    pub snapshot_interval_ms: u64,
    /// Snapshot after this many journal records (0: no record trigger).
    pub snapshot_every_records: u64,
    /// Keep journal segments after a snapshot has passed them, so that
    /// `omniroute replay` can re-run the whole history.
    pub keep_segments: bool,
}

impl Default for StoreSettings {
    fn default() -> StoreSettings {
        StoreSettings {
            durability: Durability::Fsync,
            segment_bytes: journal::DEFAULT_SEGMENT_BYTES,
            snapshot_interval_ms: 60_000,
            snapshot_every_records: 250_000,
            keep_segments: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {message}")]
    Io { path: PathBuf, message: String },
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error("snapshot {path} is damaged: {reason}; refusing to start (restore the data directory from a backup)")]
    Snapshot { path: PathBuf, reason: String },
    /// The directory's own files say it cannot be read by this build.
    #[error("the data directory {dir} cannot be opened: {reason}")]
    Format { dir: PathBuf, reason: String },
    /// The config dropped a node or channel that still has open work.
    #[error("{what} is gone from the config, but the data directory {dir} still has {has}; {fix}")]
    Retired {
        dir: PathBuf,
        /// "node WH-1" or "channel web".
        what: String,
        /// What it still has, counted.
        has: String,
        /// How to retire it.
        fix: &'static str,
    },
    #[error("journal record {lsn} cannot be replayed: {reason}; refusing to start")]
    Replay { lsn: u64, reason: String },
    #[error(transparent)]
    Engine(#[from] EngineError),
}

fn io(path: &Path, e: impl std::fmt::Display) -> StoreError {
    StoreError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// What recovery did, for the log and the tests.
#[derive(Debug, Default)]
pub struct RecoveryReport {
    pub snapshots_loaded: usize,
    pub snapshot_lsn_min: u64,
    pub records_replayed: usize,
    pub next_lsn: u64,
    pub torn_tail: Option<TornTail>,
    pub orders: usize,
    pub elapsed_ms: u64,
}

/// An opened data directory: the state to start the engine on, the journal
/// to continue, and what replay found out of step (see [`crate::engine::Engine::repair`]).
pub struct Recovered {
    pub state: EngineState,
    /// The network under the data directory's ids: start the engine on it.
    pub network: Arc<Network>,
    pub sequencer: Sequencer,
    /// Nothing was ever written here: load the config's starting stock.
    pub fresh: bool,
    pub report: RecoveryReport,
    pub bumps: Vec<Bumped>,
    pub orphans: Vec<Orphan>,
    /// This process's hold on the directory: keep it while writing there.
    pub lock: DirLock,
}

/// A reservation no open order accounts for: (order, sku, node, units).
pub type Orphan = (OrderId, SkuId, NodeIdx, u32);

pub fn journal_dir(dir: &Path) -> PathBuf {
    dir.join("journal")
}

pub fn snapshot_dir(dir: &Path) -> PathBuf {
    dir.join("snapshots")
}

/// Writes a file so that after a crash it is either the old one or the new
/// one, whole: temporary file, fsync, rename, fsync of the directory.
fn write_durably(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    write_parts_durably(path, &[bytes])
}

/// `write_durably` of the parts one after another, without joining them
/// (a snapshot's header and its body of hundreds of MiB).
fn write_parts_durably(path: &Path, parts: &[&[u8]]) -> Result<(), StoreError> {
    let tmp = path.with_extension("tmp");
    let mut file = File::create(&tmp).map_err(|e| io(&tmp, e))?;
    // Flushed a slice at a time: a journal fsync behind one big dirty file
    // would wait for all of it, and every order waiting on that fsync too.
    for chunk in parts.iter().flat_map(|p| p.chunks(SNAPSHOT_FLUSH_BYTES)) {
        file.write_all(chunk).map_err(|e| io(&tmp, e))?;
        flush_uncached(&file, &tmp)?;
    }
    file.sync_all().map_err(|e| io(&tmp, e))?;
    drop(file);
    publish(&tmp, path)
}

/// Flushes what was written to `file` so far, then lets the page cache
/// drop it: a snapshot is read back only at the next start, and keeping
/// hundreds of MiB of it cached grew the cache (fresh pages, each zeroed
/// or faulted in on first use) while the daemon was answering orders.
fn flush_uncached(file: &File, path: &Path) -> Result<(), StoreError> {
    file.sync_data().map_err(|e| io(path, e))?;
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: a hint about a file descriptor this function borrows; it
        // changes no memory of ours and no data of the file's.
        unsafe {
            libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED);
        }
    }
    Ok(())
}

/// Puts a whole, synced temporary file in place of `path`, durably.
fn publish(tmp: &Path, path: &Path) -> Result<(), StoreError> {
    std::fs::rename(tmp, path).map_err(|e| io(path, e))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io(dir, e))
}

/// A router's book on its way to its snapshot file: the header stays blank
/// until the book's label is known, the chunks go in as they come, and the
/// checksum is kept as they pass. Dropped unfinished, the file goes.
struct BookFile {
    tmp: PathBuf,
    /// Where the finished book goes.
    path: PathBuf,
    file: File,
    body_bytes: u64,
    body_crc: u32,
    unflushed_bytes: usize,
}

impl BookFile {
    fn create(snapshots: &Path, router: usize) -> Result<BookFile, StoreError> {
        let path = snapshots.join(format!(
            "{}{SNAPSHOT_SUFFIX}",
            snapshot_name(&Image::Router(router))
        ));
        let tmp = path.with_extension("tmp");
        let mut file = File::create(&tmp).map_err(|e| io(&tmp, e))?;
        file.write_all(&[0u8; SNAPSHOT_HEADER_BYTES])
            .map_err(|e| io(&tmp, e))?;
        Ok(BookFile {
            tmp,
            path,
            file,
            body_bytes: 0,
            body_crc: 0,
            unflushed_bytes: 0,
        })
    }

    fn append(&mut self, orders: u32, archive: &[u8]) -> Result<(), StoreError> {
        let header = book_chunk_header(archive.len(), orders);
        let padding = [0u8; 16];
        let padding = &padding[..book_padding(archive.len())];
        for part in [&header[..], archive, padding] {
            self.file.write_all(part).map_err(|e| io(&self.tmp, e))?;
            self.body_crc = crc32c::crc32c_append(self.body_crc, part);
            self.body_bytes += part.len() as u64;
            self.unflushed_bytes += part.len();
        }
        // As `write_parts_durably`: a journal fsync must not wait behind
        // the whole book.
        if self.unflushed_bytes >= SNAPSHOT_FLUSH_BYTES {
            flush_uncached(&self.file, &self.tmp)?;
            self.unflushed_bytes = 0;
        }
        Ok(())
    }

    /// Labels the book with `lsn` and puts it in place.
    fn finish(self, lsn: u64) -> Result<(), StoreError> {
        use std::os::unix::fs::FileExt;
        let header = frame_header(BOOK_MAGIC, lsn, self.body_bytes, self.body_crc);
        self.file
            .write_all_at(&header, 0)
            .map_err(|e| io(&self.tmp, e))?;
        self.file.sync_all().map_err(|e| io(&self.tmp, e))?;
        publish(&self.tmp, &self.path)
    }
}

impl Drop for BookFile {
    fn drop(&mut self) {
        // Gone already if it was put in place.
        let _ = std::fs::remove_file(&self.tmp);
    }
}

fn book_chunk_header(archive_bytes: usize, orders: u32) -> [u8; BOOK_CHUNK_HEADER_BYTES] {
    let mut header = [0u8; BOOK_CHUNK_HEADER_BYTES];
    header[..8].copy_from_slice(&(archive_bytes as u64).to_le_bytes());
    header[8..].copy_from_slice(&u64::from(orders).to_le_bytes());
    header
}

/// Zeros after an archive so that the next chunk's starts 16-aligned.
fn book_padding(archive_bytes: usize) -> usize {
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

/// Writes a router's book into the snapshot set `snapshots`, labelled
/// `lsn`, in this thread (the daemon streams books while the routers
/// image them).
fn write_book_into(
    snapshots: &Path,
    router: &crate::core::router::RouterCore,
    lsn: u64,
) -> Result<(), StoreError> {
    let mut file = BookFile::create(snapshots, router.router_id())?;
    let mut buffer = AlignedVec::new();
    let mut cursor = crate::core::book::BookCursor::default();
    loop {
        let orders = router.next_orders(&mut cursor, crate::engine::ORDERS_PER_IMAGE_STEP);
        if orders.is_empty() {
            break;
        }
        buffer = crate::core::order::BookChunk(orders).encode(buffer);
        file.append(orders.len() as u32, &buffer)?;
    }
    file.finish(lsn)
}

/// Writes the routers' books to their snapshot files while the routers
/// image them, on a thread of its own: chunk buffers go back to the
/// routers once written, so no book is ever copied whole. It runs at the
/// daemon's priority: the routers encode, it only writes, and at nice 19
/// under load it fell behind and held the routers' imaging up for seconds.
pub struct BookWriter {
    snapshots: PathBuf,
    thread: std::thread::JoinHandle<Result<Vec<Option<BookFile>>, StoreError>>,
}

impl BookWriter {
    /// A writer for the books of `routers` routers, and the sink to give
    /// [`Engine::take_snapshot`](crate::engine::Engine::take_snapshot).
    pub fn start(
        dir: &Path,
        routers: usize,
    ) -> Result<(crate::engine::BookSink, BookWriter), StoreError> {
        let snapshots = snapshot_dir(dir);
        std::fs::create_dir_all(&snapshots).map_err(|e| io(&snapshots, e))?;
        let (sink, parts) = crate::engine::book_channel();
        let into = snapshots.clone();
        let thread = std::thread::Builder::new()
            .name("book-writer".into())
            .spawn(move || {
                let mut files: Vec<Option<BookFile>> = (0..routers).map(|_| None).collect();
                while let Some(part) = parts.recv() {
                    let Some(slot) = files.get_mut(part.router) else {
                        return Err(io(&into, format!("no router {}", part.router)));
                    };
                    let file = match slot {
                        Some(file) => file,
                        None => slot.insert(BookFile::create(&into, part.router)?),
                    };
                    file.append(part.orders, &part.bytes)?;
                    parts.recycle(part.bytes);
                }
                Ok(files)
            })
            .map_err(|e| io(&snapshots, e))?;
        Ok((sink, BookWriter { snapshots, thread }))
    }

    /// Waits until every book is written (every sink is gone), then labels
    /// each router's book with its LSN from `labels` and puts it in place.
    /// A book without a label (its router did not finish imaging) is
    /// deleted. Blocks: call it off the async workers.
    pub fn finish(self, labels: &[(usize, u64)]) -> Result<(), StoreError> {
        let mut files = self
            .thread
            .join()
            .map_err(|_| io(&self.snapshots, "the book writer panicked"))??;
        for &(router, lsn) in labels {
            let file = match files.get_mut(router).and_then(Option::take) {
                Some(file) => file,
                // A router with no orders sent no chunk.
                None => BookFile::create(&self.snapshots, router)?,
            };
            file.finish(lsn)?;
        }
        Ok(())
    }
}

/// Snapshot writes are background chores: the scheduler should prefer
/// the daemon's own threads.
fn background_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: setpriority on the calling thread (who = 0) only changes its
    // scheduling weight.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, 19);
    }
}

/// What [`snapshot`] did.
pub struct Snapshotted {
    /// The lowest LSN of the snapshot files: the journal up to it is covered.
    pub lsn: u64,
    /// How long the actors took to image (the books were written meanwhile).
    pub imaged: std::time::Duration,
}

/// Snapshots every actor of `engine` into `dir`: the routers' books are
/// written while the routers image them, the rest once every actor has.
/// Unless `keep_segments`, then deletes the journal segments all passed.
pub async fn snapshot(
    engine: &crate::engine::Engine,
    dir: &Path,
    keep_segments: bool,
) -> Result<Snapshotted, StoreError> {
    let started = Instant::now();
    let (books, writer) = BookWriter::start(dir, engine.router_count())?;
    let taken = engine.take_snapshot(books).await;
    let imaged = started.elapsed();
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let labels: Vec<(usize, u64)> = taken
            .iter()
            .flatten()
            .filter_map(|(lsn, image)| match image {
                Image::Router(router) => Some((*router, *lsn)),
                _ => None,
            })
            .collect();
        let written = writer.finish(&labels);
        let images = taken?;
        written?;
        let lsn = write_snapshot_files(&dir, images)?;
        if !keep_segments {
            remove_segments_through(&dir, lsn)?;
        }
        Ok(Snapshotted { lsn, imaged })
    })
    .await
    .map_err(|e| StoreError::Io {
        path: PathBuf::new(),
        message: format!("the snapshot writer failed: {e}"),
    })?
}

fn snapshot_name(image: &Image) -> String {
    match image {
        Image::Catalog(_) => "catalog".into(),
        Image::Shard(s, _) => format!("shard-{s}"),
        Image::Node(n, _) => format!("node-{n}"),
        Image::Router(r) => format!("router-{r}"),
    }
}

/// The rkyv body of an image (what a snapshot file holds after its
/// header); `None` for a router's, whose book was written as it was imaged.
pub fn encode_image(image: &Image) -> Option<AlignedVec> {
    let encoded = match image {
        Image::Catalog(names) => rkyv::to_bytes::<rancor::Error>(names),
        Image::Shard(_, shard) => rkyv::to_bytes::<rancor::Error>(shard),
        Image::Node(_, ledger) => rkyv::to_bytes::<rancor::Error>(ledger),
        Image::Router(_) => return None,
    };
    Some(encoded.expect("images always serialize"))
}

/// The checksum covers the LSN and length as well as the body: a damaged
/// LSN would replay from the wrong place.
fn snapshot_crc(lsn_and_length: &[u8], body: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(lsn_and_length), body)
}

/// Frames a snapshot body: magic, LSN, length and checksum first.
pub fn snapshot_bytes(lsn: u64, body: &[u8]) -> Vec<u8> {
    let mut out = snapshot_header(lsn, body);
    out.extend_from_slice(body);
    out
}

/// The header `snapshot_bytes` puts before a body.
fn snapshot_header(lsn: u64, body: &[u8]) -> Vec<u8> {
    frame_header(SNAPSHOT_MAGIC, lsn, body.len() as u64, crc32c::crc32c(body))
}

/// A snapshot header for a body of `length` bytes whose own CRC-32C is
/// `body_crc` (the header's checksum is [`snapshot_crc`], combined).
fn frame_header(magic: &[u8; 8], lsn: u64, length: u64, body_crc: u32) -> Vec<u8> {
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
pub fn parse_snapshot(bytes: &[u8]) -> Result<(u64, &[u8]), String> {
    if bytes.len() < SNAPSHOT_HEADER_BYTES {
        return Err(format!("{} bytes is shorter than the header", bytes.len()));
    }
    if &bytes[..8] != SNAPSHOT_MAGIC && &bytes[..8] != BOOK_MAGIC {
        return Err("not an omniroute snapshot (bad magic)".into());
    }
    let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    let lsn = u64_at(8);
    let length = u64_at(16);
    let crc = u32::from_le_bytes(bytes[24..28].try_into().expect("4 bytes"));
    let body = &bytes[SNAPSHOT_HEADER_BYTES..];
    if body.len() as u64 != length {
        return Err(format!(
            "body is {} bytes, the header says {length}",
            body.len()
        ));
    }
    if snapshot_crc(&bytes[8..24], body) != crc || bytes[28..32] != [0u8; 4] {
        return Err("checksum mismatch".into());
    }
    Ok((lsn, body))
}

/// Maps a snapshot file: page-aligned, so the body (at a multiple of 16)
/// is aligned as rkyv's validated access needs, and nothing is copied to
/// the heap that the restored state does not keep.
fn map_file(path: &Path) -> Result<memmap2::Mmap, StoreError> {
    let file = File::open(path).map_err(|e| io(path, e))?;
    // SAFETY: the data directory is this daemon's alone (its layout file
    // and journal say so); nothing truncates a snapshot while it is mapped,
    // since new ones are written to a temporary file and renamed over.
    unsafe { memmap2::Mmap::map(&file) }.map_err(|e| io(path, e))
}

/// Writes every image as its actor's snapshot, then deletes the journal
/// segments all of them have passed. Returns the lowest LSN.
pub fn write_snapshots(dir: &Path, images: Vec<(u64, Image)>) -> Result<u64, StoreError> {
    let min_lsn = write_snapshot_files(dir, images)?;
    journal::remove_segments_through(&journal_dir(dir), min_lsn)?;
    Ok(min_lsn)
}

/// When the newest snapshot file was written (Unix ms), if there is one.
pub fn newest_snapshot_unix_ms(dir: &Path) -> Option<u64> {
    std::fs::read_dir(snapshot_dir(dir))
        .ok()?
        .filter_map(|entry| entry.ok()?.metadata().ok()?.modified().ok())
        .max()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as u64)
}

/// Deletes the journal segments every record of which is at or below `lsn`.
pub fn remove_segments_through(dir: &Path, lsn: u64) -> Result<(), StoreError> {
    journal::remove_segments_through(&journal_dir(dir), lsn)?;
    Ok(())
}

/// Writes every image as its actor's snapshot and keeps the journal (a
/// router's image only labels its book, which [`BookWriter`] wrote).
/// Returns the lowest LSN.
pub fn write_snapshot_files(dir: &Path, images: Vec<(u64, Image)>) -> Result<u64, StoreError> {
    let snapshots = snapshot_dir(dir);
    std::fs::create_dir_all(&snapshots).map_err(|e| io(&snapshots, e))?;
    write_images_into(&snapshots, images)
}

/// Writes every image into the snapshot set `snapshots`; returns the
/// lowest LSN.
fn write_images_into(snapshots: &Path, images: Vec<(u64, Image)>) -> Result<u64, StoreError> {
    let min_lsn = images.iter().map(|(lsn, _)| *lsn).min().unwrap_or(0);
    // One writer: the daemon keeps the other cores while it encodes and
    // writes, and the disk sees one stream next to the journal's.
    let workers = 1;
    let queue = std::sync::Mutex::new(images);
    let results: Vec<Result<(), StoreError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                scope.spawn(|| -> Result<(), StoreError> {
                    background_priority();
                    loop {
                        let next = queue.lock().expect("queue lock").pop();
                        let Some((lsn, image)) = next else {
                            return Ok(());
                        };
                        let Some(body) = encode_image(&image) else {
                            continue;
                        };
                        let path =
                            snapshots.join(format!("{}{SNAPSHOT_SUFFIX}", snapshot_name(&image)));
                        let header = snapshot_header(lsn, &body);
                        write_parts_durably(&path, &[&header, &body])?;
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("snapshot writer panicked"))
            .collect()
    });
    for result in results {
        result?;
    }
    Ok(min_lsn)
}

/// Checks snapshot bytes (as read from a file named `name`) the way
/// recovery does, without keeping the result: frame, checksum, validated
/// archive, and the image's own consistency. For fuzzing and tools.
pub fn verify_snapshot_bytes(
    name: &str,
    bytes: &[u8],
    index: Arc<crate::core::index::AvailabilityIndex>,
) -> Result<u64, String> {
    let mut aligned = AlignedVec::<16>::with_capacity(bytes.len());
    aligned.extend_from_slice(bytes);
    let (lsn, body) = parse_snapshot(&aligned)?;
    fn e(error: impl std::fmt::Display) -> String {
        error.to_string()
    }
    if name == "catalog" {
        rkyv::access::<rkyv::Archived<Vec<String>>, rancor::BoxedError>(body).map_err(e)?;
    } else if name.starts_with("shard-") {
        let image =
            rkyv::access::<rkyv::Archived<ShardImage>, rancor::BoxedError>(body).map_err(e)?;
        StockShard::from_image(image, index)?;
    } else if name.starts_with("node-") {
        rkyv::from_bytes::<LedgerImage, rancor::Error>(body).map_err(e)?;
    } else if name.starts_with("router-") {
        for orders in router_archives(&aligned, body)? {
            for archived in orders.iter() {
                rkyv::deserialize::<OrderRecord, rancor::Error>(archived).map_err(e)?;
            }
        }
    } else {
        return Err(format!("{name} is not a snapshot name"));
    }
    Ok(lsn)
}

/// A router snapshot's orders as validated archives: one per chunk of a
/// book, or one for a snapshot from before books were chunked. `bytes` is
/// the whole file (its magic tells which), `body` what follows the header.
fn router_archives<'a>(
    bytes: &[u8],
    body: &'a [u8],
) -> Result<Vec<&'a rkyv::Archived<Vec<OrderRecord>>>, String> {
    let access = |archive: &'a [u8]| {
        rkyv::access::<rkyv::Archived<Vec<OrderRecord>>, rancor::BoxedError>(archive)
            .map_err(|e| e.to_string())
    };
    if !bytes.starts_with(BOOK_MAGIC) {
        return Ok(vec![access(body)?]);
    }
    let mut archives = Vec::new();
    let mut rest = body;
    while !rest.is_empty() {
        let Some((header, after)) = rest.split_first_chunk::<BOOK_CHUNK_HEADER_BYTES>() else {
            return Err(format!(
                "{} bytes left, short of a chunk header",
                rest.len()
            ));
        };
        let archive_bytes = u64::from_le_bytes(header[..8].try_into().expect("8 bytes"));
        let orders = u64::from_le_bytes(header[8..].try_into().expect("8 bytes"));
        let archive_bytes = usize::try_from(archive_bytes)
            .ok()
            .filter(|&n| n <= after.len())
            .ok_or_else(|| format!("a chunk of {archive_bytes} bytes runs past the end"))?;
        let archive = access(&after[..archive_bytes])?;
        if archive.len() as u64 != orders {
            return Err(format!(
                "a chunk holds {} orders, its header says {orders}",
                archive.len()
            ));
        }
        archives.push(archive);
        rest = &after[archive_bytes..];
        rest = &rest[book_padding(archive_bytes).min(rest.len())..];
    }
    Ok(archives)
}

/// A snapshot read back: its LSN and its validated body.
struct Loaded {
    lsn: u64,
    bytes: memmap2::Mmap,
    path: PathBuf,
}

impl Loaded {
    fn body(&self) -> &[u8] {
        &self.bytes[SNAPSHOT_HEADER_BYTES..]
    }

    fn damaged(&self, reason: impl std::fmt::Display) -> StoreError {
        StoreError::Snapshot {
            path: self.path.clone(),
            reason: reason.to_string(),
        }
    }
}

fn load_snapshot(dir: &Path, name: &str) -> Result<Option<Loaded>, StoreError> {
    let path = snapshot_dir(dir).join(format!("{name}{SNAPSHOT_SUFFIX}"));
    if !path.exists() {
        return Ok(None);
    }
    let bytes = map_file(&path)?;
    let lsn = parse_snapshot(&bytes)
        .map_err(|reason| StoreError::Snapshot {
            path: path.clone(),
            reason,
        })?
        .0;
    Ok(Some(Loaded { lsn, bytes, path }))
}

/// Recovers the state in the data directory `lock` holds (created empty
/// if new). The lock comes first: a second daemon must not even replay.
/// Returns the state on `network` under the directory's ids (see
/// [`crate::schema`]), laid out for `settings`' shards and routers.
pub fn open(
    lock: DirLock,
    store: &StoreSettings,
    settings: &EngineSettings,
    network: &Arc<Network>,
    now_ms: u64,
) -> Result<Recovered, StoreError> {
    let started = Instant::now();
    let dir = &lock.dir().to_path_buf();
    let known = layout::read_names(dir)?;
    // A directory without names is new, or written by a tool under the
    // config's order (`bench-restart`): its nodes are the config's.
    let known_nodes = known
        .as_ref()
        .map_or(network.nodes.len(), |names| names.nodes.len());
    let (network, names) = network.with_names(&known.unwrap_or_else(Names::new));
    let network = Arc::new(network);
    layout::prepare_snapshot_sets(dir)?;
    let configured = Layout {
        shards: settings.shards.max(1),
        routers: settings.routers,
    };
    let written = layout::read_layout(dir)?;
    let under = written.unwrap_or(configured);
    let replayed = replay_state(
        dir,
        &EngineSettings {
            shards: under.shards,
            routers: under.routers,
            ..settings.clone()
        },
        &network,
        known_nodes,
        now_ms,
    )?;
    let Replayed {
        mut state,
        mut report,
        fresh,
    } = replayed;
    check_retired(dir, &state, &network)?;
    // Before any record can use a new id.
    layout::write_names(dir, &names)?;
    if written.is_none() {
        layout::write_layout(&snapshot_dir(dir), configured)?;
    } else if under != configured {
        state = relayout(state, settings, &network)?;
        let lsn = report.next_lsn.saturating_sub(1);
        layout::replace_snapshot_set(dir, |set| {
            write_state_into(set, &state, lsn)?;
            layout::write_layout(set, configured)
        })?;
        tracing::info!(
            "the data directory {} was laid out again from {} shards and {} routers to {} and {}",
            dir.display(),
            under.shards,
            under.routers,
            configured.shards,
            configured.routers
        );
    }
    let (bumps, orphans) = reconcile(&state);
    report.orders = state.routers.iter().map(|r| r.order_count()).sum();
    let journal = Journal::start(
        &journal_dir(dir),
        report.next_lsn,
        store.durability,
        store.segment_bytes,
    )?;
    report.elapsed_ms = started.elapsed().as_millis() as u64;
    Ok(Recovered {
        state,
        network,
        sequencer: Sequencer::Journal(journal),
        fresh,
        report,
        bumps,
        orphans,
        lock,
    })
}

/// The state replay rebuilt, before it is checked and laid out.
struct Replayed {
    state: EngineState,
    report: RecoveryReport,
    /// Nothing was ever written in the directory.
    fresh: bool,
}

/// Loads each actor's snapshot and replays the journal after it, under
/// `settings`' layout (the one the files were written for). `known_nodes`:
/// the nodes the directory's names had before this start.
fn replay_state(
    dir: &Path,
    settings: &EngineSettings,
    network: &Arc<Network>,
    known_nodes: usize,
    now_ms: u64,
) -> Result<Replayed, StoreError> {
    let mut state = EngineState::fresh(settings, network, now_ms)?;
    let index = state.index.clone();
    let mut report = RecoveryReport::default();

    // Snapshots: each actor's own, each with its own LSN (0: none).
    let catalog = load_snapshot(dir, "catalog")?;
    let catalog_lsn = catalog.as_ref().map_or(0, |c| c.lsn);
    if let Some(loaded) = &catalog {
        let names = rkyv::access::<rkyv::Archived<Vec<String>>, rancor::BoxedError>(loaded.body())
            .map_err(|e| loaded.damaged(e))?;
        for (id, name) in names.iter().enumerate() {
            let got = index.intern(name.as_str()).map_err(|e| loaded.damaged(e))?;
            if got as usize != id {
                return Err(loaded.damaged(format!("sku {name:?} interned as {got}, not {id}")));
            }
        }
        report.snapshots_loaded += 1;
    }
    let shard_count = state.shards.len();
    let mut shard_lsn = vec![0u64; shard_count];
    let shard_files = (0..shard_count)
        .map(|s| load_snapshot(dir, &format!("shard-{s}")))
        .collect::<Result<Vec<_>, _>>()?;
    let loaded_shards: Vec<Result<Option<StockShard>, StoreError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = shard_files
            .iter()
            .map(|file| {
                let index = index.clone();
                scope.spawn(move || -> Result<Option<StockShard>, StoreError> {
                    let Some(loaded) = file else { return Ok(None) };
                    let image = rkyv::access::<rkyv::Archived<ShardImage>, rancor::BoxedError>(
                        loaded.body(),
                    )
                    .map_err(|e| loaded.damaged(e))?;
                    StockShard::from_image(image, index)
                        .map(Some)
                        .map_err(|e| loaded.damaged(e))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("shard loader panicked"))
            .collect()
    });
    for (s, (loaded, file)) in loaded_shards.into_iter().zip(&shard_files).enumerate() {
        if let Some(shard) = loaded? {
            if shard.shard_id() as usize != s {
                return Err(file
                    .as_ref()
                    .expect("loaded")
                    .damaged("it is another shard's"));
            }
            shard_lsn[s] = file.as_ref().map_or(0, |f| f.lsn);
            state.shards[s] = shard;
            report.snapshots_loaded += 1;
        }
    }
    let router_files = (0..state.routers.len())
        .map(|r| load_snapshot(dir, &format!("router-{r}")))
        .collect::<Result<Vec<_>, _>>()?;
    let mut router_lsn = vec![0u64; state.routers.len()];
    let restored: Vec<Result<(), StoreError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = state
            .routers
            .iter_mut()
            .zip(&router_files)
            .map(|(core, file)| {
                scope.spawn(move || -> Result<(), StoreError> {
                    let Some(loaded) = file else { return Ok(()) };
                    // One order at a time out of the validated archives: no
                    // second copy of the whole book on the heap.
                    let archives = router_archives(&loaded.bytes, loaded.body())
                        .map_err(|e| loaded.damaged(e))?;
                    core.reserve(archives.iter().map(|orders| orders.len()).sum());
                    for archived in archives.iter().flat_map(|orders| orders.iter()) {
                        let order = rkyv::deserialize::<OrderRecord, rancor::Error>(archived)
                            .map_err(|e| loaded.damaged(e))?;
                        core.restore(order).map_err(|e| loaded.damaged(e))?;
                    }
                    Ok(())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("router loader panicked"))
            .collect()
    });
    for (r, result) in restored.into_iter().enumerate() {
        result?;
        if let Some(file) = &router_files[r] {
            router_lsn[r] = file.lsn;
            report.snapshots_loaded += 1;
        }
    }
    // A node the names did not have before this start has no snapshot
    // and no record: nothing to replay for it.
    let mut node_lsn: Vec<u64> = (0..state.ledgers.len())
        .map(|n| if n < known_nodes { 0 } else { u64::MAX })
        .collect();
    for (n, node) in network.nodes.iter().enumerate().take(known_nodes) {
        if let Some(loaded) = load_snapshot(dir, &format!("node-{n}"))? {
            let mut image = rkyv::from_bytes::<LedgerImage, rancor::Error>(loaded.body())
                .map_err(|e| loaded.damaged(e))?;
            // Share each event's order id with its order's record, as the
            // live daemon does: a million events would otherwise each keep
            // a copy.
            for event in &mut image.events.events {
                let record = state
                    .routers
                    .get(router_of_order(event.order, state.routers.len()))
                    .and_then(|r| r.get(&crate::core::router::OrderRef::Id(event.order)).ok());
                if let Some(record) = record {
                    if record.client_order_id == event.client_order_id {
                        event.client_order_id = record.client_order_id.clone();
                    }
                }
            }
            if image.node as usize != n {
                return Err(loaded.damaged("it is another node's"));
            }
            state.ledgers[n] = NodeLedger::from_image(image, node.daily_capacity, index.clone());
            node_lsn[n] = loaded.lsn;
            report.snapshots_loaded += 1;
        }
    }
    let replay_from = [catalog_lsn]
        .iter()
        .chain(&shard_lsn)
        .chain(&node_lsn)
        .chain(&router_lsn)
        .copied()
        .filter(|&lsn| lsn != u64::MAX)
        .min()
        .unwrap_or(0);
    report.snapshot_lsn_min = replay_from;

    // The journal after the oldest snapshot; each record goes to the actors
    // whose snapshot is older than it.
    let recovered = journal::recover(&journal_dir(dir), replay_from)?;
    if let Some(torn) = &recovered.torn_tail {
        tracing::warn!(
            "journal {} ended in a torn record at byte {} ({} bytes cut): a write the crash interrupted, never acknowledged",
            torn.path.display(),
            torn.offset,
            torn.bytes
        );
    }
    let fresh =
        report.snapshots_loaded == 0 && recovered.records.is_empty() && recovered.next_lsn <= 1;
    let mut bumped = Vec::new();
    for record in &recovered.records {
        let lsn = record.lsn;
        match record.kind {
            // Demand is not state: the what-if replay reads it, recovery not.
            KIND_MARKER | KIND_POLICY | KIND_DEMAND | KIND_DEMAND_LOST => continue,
            KIND_TXN => {}
            other => {
                return Err(StoreError::Replay {
                    lsn,
                    reason: format!("unknown record kind {other}"),
                })
            }
        }
        let txn =
            Txn::decode(&record.payload).map_err(|reason| StoreError::Replay { lsn, reason })?;
        if lsn > catalog_lsn {
            for (id, name) in &txn.skus {
                let got = index.intern(name).map_err(|e| StoreError::Replay {
                    lsn,
                    reason: e.to_string(),
                })?;
                if got != *id {
                    return Err(StoreError::Replay {
                        lsn,
                        reason: format!("sku {name:?} interned as {got}, journaled as {id}"),
                    });
                }
            }
        }
        for order in txn.orders {
            let r = router_of_order(order.id, state.routers.len());
            if lsn > router_lsn[r] {
                state.routers[r]
                    .restore(order)
                    .map_err(|reason| StoreError::Replay { lsn, reason })?;
            }
        }
        for (shard, op) in txn.stock {
            let s = shard as usize;
            let valid = s < shard_count
                && op.sku().is_none_or(|sku| {
                    StockShard::shard_of(sku, shard_count as u32) == shard
                        && (sku as usize) < index.sku_count()
                });
            if !valid {
                return Err(StoreError::Replay {
                    lsn,
                    reason: format!("stock op {op:?} for shard {shard} does not fit the layout"),
                });
            }
            if lsn > shard_lsn[s] {
                // Errors (an overflowing adjust) failed alike when live.
                let _ = apply_stock_op(&mut state.shards[s], op, &mut bumped);
            }
        }
        for (node, op) in txn.nodes {
            let n = node as usize;
            if n >= state.ledgers.len() {
                return Err(StoreError::Replay {
                    lsn,
                    reason: format!("node {node} beyond the configured nodes"),
                });
            }
            if lsn > node_lsn[n] {
                let _ = apply_node_op(&mut state.ledgers[n], op);
            }
        }
        report.records_replayed += 1;
    }
    report.next_lsn = recovered.next_lsn;
    report.torn_tail = recovered.torn_tail;
    Ok(Replayed {
        state,
        report,
        fresh,
    })
}

/// Refuses a network that retired a node or channel with open work: its
/// orders would be stranded where no config can reach them.
fn check_retired(dir: &Path, state: &EngineState, network: &Network) -> Result<(), StoreError> {
    let retired_nodes = network.nodes.iter().any(|n| n.retired);
    let retired_channels = network.channels.iter().any(|c| c.retired);
    if !retired_nodes && !retired_channels {
        return Ok(());
    }
    let mut on_hand = vec![0u64; network.nodes.len()];
    let mut allocations = vec![0u64; network.nodes.len()];
    let mut open_orders = vec![0u64; network.channels.len()];
    if retired_nodes {
        for (_, node, cell) in state.shards.iter().flat_map(|s| s.cells()) {
            on_hand[node as usize] += u64::from(cell.on_hand);
        }
    }
    for order in state.routers.iter().flat_map(|r| r.orders()) {
        if !order.state.is_open() {
            continue;
        }
        open_orders[order.channel as usize] += 1;
        for a in order.allocations.iter().filter(|a| a.open > 0) {
            allocations[a.node as usize] += 1;
        }
    }
    for (n, node) in network.nodes.iter().enumerate() {
        if node.retired && (on_hand[n] > 0 || allocations[n] > 0) {
            return Err(StoreError::Retired {
                dir: dir.to_path_buf(),
                what: format!("node {}", node.id),
                has: format!(
                    "{} open allocations and {} units on hand there",
                    allocations[n], on_hand[n]
                ),
                fix: "put it back in the config, set it offline (its open allocations re-route) and count its stock to 0, then remove it",
            });
        }
    }
    for (c, channel) in network.channels.iter().enumerate() {
        if channel.retired && open_orders[c] > 0 {
            return Err(StoreError::Retired {
                dir: dir.to_path_buf(),
                what: format!("channel {}", channel.name),
                has: format!("{} open orders of it", open_orders[c]),
                fix: "put it back in the config until they are shipped, cancelled or expired, then remove it",
            });
        }
    }
    Ok(())
}

/// The state laid out again for `settings`' shards and routers: stock
/// cells and reservations rehashed by SKU, orders moved to the router
/// their partition now belongs to.
fn relayout(
    state: EngineState,
    settings: &EngineSettings,
    network: &Arc<Network>,
) -> Result<EngineState, StoreError> {
    let shard_count = settings.shards.max(1);
    // The same index: the counts in it do not move.
    let index = state.index.clone();
    let mut next = EngineState {
        shards: Vec::new(),
        ledgers: state.ledgers,
        routers: EngineState::empty_routers(settings, network, &index),
        index,
    };
    let images: Vec<ShardImage> = state.shards.iter().map(StockShard::image).collect();
    let rehashed = ShardImage::rehash(&images, shard_count);
    next.shards = rehashed
        .iter()
        .map(|image| {
            let bytes = rkyv::to_bytes::<rancor::Error>(image).expect("images always serialize");
            let archived = rkyv::access::<rkyv::Archived<ShardImage>, rancor::BoxedError>(&bytes)
                .map_err(|e| e.to_string())?;
            StockShard::from_image(archived, next.index.clone())
        })
        .collect::<Result<_, String>>()
        .map_err(|reason| StoreError::Replay { lsn: 0, reason })?;
    let routers = next.routers.len();
    for router in state.routers {
        for order in router.into_orders() {
            let r = router_of_order(order.id, routers);
            next.routers[r]
                .restore(order)
                .map_err(|reason| StoreError::Replay { lsn: 0, reason })?;
        }
    }
    Ok(next)
}

/// Writes every actor of `state` as the snapshots of `dir`, each labelled
/// `lsn`, in this thread: for tools that build a state without actors.
pub fn write_state(dir: &Path, state: &EngineState, lsn: u64) -> Result<(), StoreError> {
    let snapshots = snapshot_dir(dir);
    std::fs::create_dir_all(&snapshots).map_err(|e| io(&snapshots, e))?;
    write_state_into(&snapshots, state, lsn)
}

/// Writes every actor of `state` into the snapshot set `set`, each
/// labelled `lsn`.
fn write_state_into(set: &Path, state: &EngineState, lsn: u64) -> Result<(), StoreError> {
    let mut images = vec![(lsn, Image::Catalog(state.index.sku_names()))];
    for shard in &state.shards {
        images.push((lsn, Image::Shard(shard.shard_id(), shard.image())));
    }
    for ledger in &state.ledgers {
        let image = ledger.image();
        images.push((lsn, Image::Node(image.node, image)));
    }
    for router in &state.routers {
        write_book_into(set, router, lsn)?;
    }
    write_images_into(set, images)?;
    Ok(())
}

/// Compares every open order's units with its shards' reservations. A book
/// above its shard means a bump whose re-route was never journaled; a shard
/// above its book (or an order no book keeps open) would be a reservation
/// without an owner. Looks up the maps the state already has: no new index
/// of a million reservations on the restart path.
fn reconcile(state: &EngineState) -> (Vec<Bumped>, Vec<Orphan>) {
    let shard_count = state.shards.len() as u32;
    let shard_of = |sku: SkuId| &state.shards[StockShard::shard_of(sku, shard_count) as usize];
    let open_units = |order: &OrderRecord, sku: SkuId, node: NodeIdx| -> u32 {
        order
            .allocations
            .iter()
            .filter(|a| a.sku == sku && a.node == node)
            .map(|a| a.open)
            .sum()
    };
    let mut bumps = Vec::new();
    for router in &state.routers {
        for order in router.orders().filter(|o| o.state.is_open()) {
            for (i, a) in order.allocations.iter().enumerate() {
                let first = order.allocations[..i]
                    .iter()
                    .all(|b| (b.sku, b.node) != (a.sku, a.node));
                if !first {
                    continue;
                }
                let units = open_units(order, a.sku, a.node);
                let held = shard_of(a.sku).reserved_for(order.id, a.sku, a.node);
                if units > held {
                    bumps.push(Bumped {
                        order: order.id,
                        sku: a.sku,
                        node: a.node,
                        qty: units - held,
                    });
                }
            }
        }
    }
    let mut orphans = Vec::new();
    for shard in &state.shards {
        for (order, sku, node, qty) in shard.committed() {
            let r = router_of_order(order, state.routers.len());
            let book = state
                .routers
                .get(r)
                .and_then(|router| router.get(&crate::core::router::OrderRef::Id(order)).ok())
                .filter(|o| o.state.is_open())
                .map_or(0, |o| open_units(o, sku, node));
            if qty > book {
                orphans.push((order, sku, node, qty - book));
            }
        }
    }
    orphans.sort_unstable();
    bumps.sort_unstable_by_key(|b| (b.order, b.sku, b.node));
    (bumps, orphans)
}
