//! Writing snapshots: each actor's image framed and written durably, a
//! router's book streamed in chunks by the book writer thread, and the
//! snapshot step that images every actor.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use rkyv::rancor;
use rkyv::util::AlignedVec;

use super::durable::{create_private, flush_uncached, publish, write_parts_durably};
use super::frame::{
    book_chunk_header, book_padding, frame_header, snapshot_header, BOOK_MAGIC, FEED_SNAPSHOT,
    SNAPSHOT_HEADER_BYTES, SNAPSHOT_SUFFIX,
};
use super::{io, journal_dir, snapshot_dir, StoreError};
use crate::engine::{EngineState, Image, Imaged};
use crate::faults::{self, points};
use crate::journal::{self};
use crate::schema::Layout;

/// Snapshot bytes written between two flushes.
pub(super) const SNAPSHOT_FLUSH_BYTES: usize = 2 << 20;

/// A router's book on its way to its snapshot file: the header stays blank
/// until the book's label is known, the chunks go in as they come, and the
/// checksum is kept as they pass. Dropped unfinished, the file goes.
pub(super) struct BookFile {
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
        let mut file = create_private(&tmp)?;
        faults::io(points::SNAPSHOT_WRITE, || {
            file.write_all(&[0u8; SNAPSHOT_HEADER_BYTES])
        })
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
            let file = &mut self.file;
            faults::io(points::SNAPSHOT_WRITE, || file.write_all(part))
                .map_err(|e| io(&self.tmp, e))?;
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
        let file = &self.file;
        faults::io(points::SNAPSHOT_WRITE, || file.write_all_at(&header, 0))
            .map_err(|e| io(&self.tmp, e))?;
        faults::io(points::SNAPSHOT_FSYNC, || file.sync_all()).map_err(|e| io(&self.tmp, e))?;
        publish(&self.tmp, &self.path)
    }
}

impl Drop for BookFile {
    fn drop(&mut self) {
        // Gone already if it was put in place.
        let _ = std::fs::remove_file(&self.tmp);
    }
}

/// Writes a router's book into the snapshot set `snapshots`, labelled
/// `lsn`, in this thread (the daemon streams books while the routers
/// image them).
pub(super) fn write_book_into(
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
        crate::private_files::create_dir_all(&snapshots).map_err(|e| io(&snapshots, e))?;
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
pub(super) fn background_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: setpriority on the calling thread (who = 0) only changes its
    // scheduling weight.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, 19);
    }
}

/// Runs `work` on a thread of its own at background priority (a pool
/// thread keeps its priority for whatever task it runs next).
fn at_background_priority<T: Send>(work: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                background_priority();
                work()
            })
            .join()
            .expect("snapshot settling panicked")
    })
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
                Imaged::Router(router) => Some((*router, *lsn)),
                _ => None,
            })
            .collect();
        // The writer's error first: a book it could not write (the disk is
        // full) is why the imaging came up short, and the cause to report.
        writer.finish(&labels)?;
        let taken = taken?;
        // Settling sorts and copies every actor's image: a background
        // chore like the encoding, not a rival of the order path's threads.
        let lsn = at_background_priority(|| {
            let images = taken
                .into_iter()
                .map(|(lsn, imaged)| (lsn, imaged.settle()))
                .collect();
            write_snapshot_files(&dir, images)
        })?;
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

pub(super) fn snapshot_name(image: &Image) -> String {
    match image {
        Image::Catalog(_) => "catalog".into(),
        Image::Shard(s, _) => format!("shard-{s}"),
        Image::Node(n, _) => format!("node-{n}"),
        Image::Router(r) => format!("router-{r}"),
        Image::Feed(_) => FEED_SNAPSHOT.into(),
    }
}

/// The rkyv body of an image (what a snapshot file holds after its
/// header); `None` for a router's, whose book was written as it was imaged.
pub fn encode_image(image: &Image) -> Option<AlignedVec> {
    let encoded = match image {
        Image::Catalog(names) => rkyv::to_bytes::<rancor::Error>(names),
        Image::Shard(_, shard) => rkyv::to_bytes::<rancor::Error>(shard),
        Image::Node(_, ledger) => rkyv::to_bytes::<rancor::Error>(ledger),
        Image::Feed(feed) => rkyv::to_bytes::<rancor::Error>(feed),
        Image::Router(_) => return None,
    };
    Some(encoded.expect("images always serialize"))
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
    crate::private_files::create_dir_all(&snapshots).map_err(|e| io(&snapshots, e))?;
    write_images_into(&snapshots, images)
}

/// Writes every image into the snapshot set `snapshots`; returns the
/// lowest LSN.
pub(super) fn write_images_into(
    snapshots: &Path,
    images: Vec<(u64, Image)>,
) -> Result<u64, StoreError> {
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

/// Writes every actor of `state` as the snapshots of `dir`, each labelled
/// `lsn`, in this thread: for tools that build a state without actors.
pub fn write_state(dir: &Path, state: &EngineState, lsn: u64) -> Result<(), StoreError> {
    let snapshots = snapshot_dir(dir);
    crate::private_files::create_dir_all(&snapshots).map_err(|e| io(&snapshots, e))?;
    write_state_into(&snapshots, state, lsn)
}

/// Writes `state` as a new snapshot set of the replica in `dir`, every
/// actor labelled `lsn`, with `layout`; `last` writes the set's last file
/// (the replica's raft point, which says the set is whole). Then the set
/// takes the old one's place in one step and the old is removed.
pub(crate) fn write_replica_set(
    dir: &Path,
    state: &EngineState,
    lsn: u64,
    layout: Layout,
    last: impl FnOnce(&Path) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    super::layout::replace_snapshot_set(dir, |set| {
        write_state_into(set, state, lsn)?;
        super::layout::write_layout(set, layout)?;
        last(set)
    })
}

/// Writes every actor of `state` into the snapshot set `set`, each
/// labelled `lsn`.
pub(super) fn write_state_into(
    set: &Path,
    state: &EngineState,
    lsn: u64,
) -> Result<(), StoreError> {
    let mut images = vec![(lsn, Image::Catalog(state.index.sku_names()))];
    for shard in &state.shards {
        images.push((lsn, Image::Shard(shard.shard_id(), shard.image())));
    }
    for ledger in &state.ledgers {
        let image = ledger.image();
        images.push((lsn, Image::Node(image.node, image)));
    }
    images.push((lsn, Image::Feed(state.feed.image())));
    for router in &state.routers {
        write_book_into(set, router, lsn)?;
    }
    write_images_into(set, images)?;
    Ok(())
}
