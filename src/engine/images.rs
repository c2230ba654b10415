//! What a snapshot carries from the actors to the writers: each actor's
//! image, and a router's book in parts over a bounded queue, at a pace.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rkyv::util::AlignedVec;
use tokio::sync::mpsc;

use crate::core::capacity::{LedgerImage, LedgerParts};
use crate::core::index::AvailabilityIndex;
use crate::core::model::NodeIdx;
use crate::core::status::{FeedImage, FeedParts};
use crate::core::stock::ShardImage;
use crate::limits::{IMAGE_ITEMS_PER_CLOCK_CHECK, IMAGE_STEP_BUDGET_US};

/// An actor's state at an LSN, on its way to a snapshot file.
#[derive(Debug, PartialEq)]
pub enum Image {
    Catalog(Vec<String>),
    Shard(u32, ShardImage),
    Node(NodeIdx, LedgerImage),
    /// Every channel's status log.
    Feed(FeedImage),
    /// The router's book went to the [`BookSink`], a chunk at a time; this
    /// labels it with its LSN.
    Router(usize),
}

/// An actor's state at an LSN as the actor hands it over: whatever costs
/// time in proportion to its size (sorting, copying shared events) is left
/// to [`Imaged::settle`], on the snapshot's writer thread, so that no
/// actor's turn holds the others of its worker for it.
pub enum Imaged {
    /// The catalog is read where the image settles: it may name SKUs
    /// journaled after the marker, which replay accepts as known, and
    /// copying every name on a worker took time in proportion to them.
    Catalog(Arc<AvailabilityIndex>),
    /// Its reservations not yet sorted.
    Shard(u32, ShardImage),
    Node(LedgerParts),
    Feed(FeedParts),
    Router(usize),
}

impl Imaged {
    /// The image a snapshot file holds. Off the actors' workers.
    pub fn settle(self) -> Image {
        match self {
            Imaged::Catalog(index) => Image::Catalog(index.sku_names()),
            Imaged::Shard(shard, image) => Image::Shard(shard, image.sorted()),
            Imaged::Node(parts) => Image::Node(parts.node(), parts.image()),
            Imaged::Feed(parts) => Image::Feed(parts.image()),
            Imaged::Router(router) => Image::Router(router),
        }
    }
}

pub type ImageSink = mpsc::UnboundedSender<(u64, Imaged)>;

/// Chunks of books waiting for the writer (about 100 KiB each); past this
/// a router holds its next chunk and tries again `BOOK_RETRY_MS` later.
pub(super) const BOOK_QUEUE_CHUNKS: usize = 32;
/// How long a router waits for room in a full book queue. Trying again at
/// once spun the router's worker and starved the writer.
pub(super) const BOOK_RETRY_MS: u64 = 2;
/// The share of a worker one router spends encoding its book while it
/// images: after each step it rests for the rest. Encoding at full speed
/// took the workers from the orders for a quarter of a second (p99 50 ms
/// in that second at 20 k orders/s); at 10 % that second was 15-55 ms, at
/// 5 % 12-18 ms, within the run's noise. Imaging takes longer instead
/// (1.5-1.8 s for 0.8 M orders).
pub(super) const IMAGE_DUTY_PERCENT: u32 = 5;

/// How fast the routers image their books: paced while orders flow
/// (`IMAGE_DUTY_PERCENT` of a worker per router), at full speed once a stop
/// has begun. Shared by every snapshot of an engine, so that a stop hurries
/// one already under way.
#[derive(Clone, Debug, Default)]
pub struct ImagePace(Arc<std::sync::atomic::AtomicBool>);

impl ImagePace {
    /// From now on, image at full speed.
    pub fn hurry(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    pub(super) fn full_speed(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Takes steps of an actor's image for one turn: `step(n)` images the
/// next `n` items and gives the image once it is whole. Stops after
/// `IMAGE_STEP_BUDGET_US`, unless a stop has hurried the snapshot.
fn image_for_a_turn<T>(pace: &ImagePace, mut step: impl FnMut(usize) -> Option<T>) -> Option<T> {
    let budget = Duration::from_micros(IMAGE_STEP_BUDGET_US);
    let started = Instant::now();
    loop {
        if let Some(image) = step(IMAGE_ITEMS_PER_CLOCK_CHECK) {
            return Some(image);
        }
        if started.elapsed() >= budget && !pace.full_speed() {
            return None;
        }
    }
}

/// An actor's image under way: its LSN, where it goes, and how fast to
/// take it.
pub struct Imaging {
    pub(super) lsn: u64,
    pub(super) sink: ImageSink,
    pub(super) pace: ImagePace,
}

impl Imaging {
    /// Takes one turn of the image under way in `slot` (see
    /// [`image_for_a_turn`]) and sends it once whole; true if it needs
    /// another turn.
    pub(super) fn turn(
        slot: &mut Option<Imaging>,
        mut step: impl FnMut(usize) -> Option<Imaged>,
    ) -> bool {
        let Some(imaging) = slot else { return false };
        match image_for_a_turn(&imaging.pace, &mut step) {
            Some(image) => {
                let _ = imaging.sink.send((imaging.lsn, image));
                *slot = None;
                false
            }
            None => true,
        }
    }

    /// Takes the image under way in `slot` to its end at once, and sends it.
    pub(super) fn finish(
        slot: &mut Option<Imaging>,
        mut step: impl FnMut(usize) -> Option<Imaged>,
    ) {
        let Some(imaging) = slot.take() else { return };
        let image = loop {
            if let Some(image) = step(usize::MAX) {
                break image;
            }
        };
        let _ = imaging.sink.send((imaging.lsn, image));
    }
}

/// One run of a router's book, archived (see [`BookChunk`](crate::core::order::BookChunk)).
pub struct BookPart {
    pub router: usize,
    pub orders: u32,
    pub bytes: AlignedVec,
}

/// Where routers stream their books while they image them. Buffers come
/// back through `spare` once written, so a snapshot of any size touches a
/// few chunks of fresh memory, not a copy of every book.
#[derive(Clone)]
pub struct BookSink {
    pub(super) parts: crossbeam_channel::Sender<BookPart>,
    pub(super) spare: crossbeam_channel::Receiver<AlignedVec>,
}

/// The receiving end of a [`BookSink`]: a snapshot writer, or a test.
pub struct BookParts {
    parts: crossbeam_channel::Receiver<BookPart>,
    spare: crossbeam_channel::Sender<AlignedVec>,
}

/// A bounded queue of book chunks, and the way back for their buffers.
pub fn book_channel() -> (BookSink, BookParts) {
    let (parts_tx, parts_rx) = crossbeam_channel::bounded(BOOK_QUEUE_CHUNKS);
    let (spare_tx, spare_rx) = crossbeam_channel::bounded(BOOK_QUEUE_CHUNKS);
    (
        BookSink {
            parts: parts_tx,
            spare: spare_rx,
        },
        BookParts {
            parts: parts_rx,
            spare: spare_tx,
        },
    )
}

impl BookParts {
    /// The next chunk, waiting for it; `None` once every sink is gone.
    pub fn recv(&self) -> Option<BookPart> {
        self.parts.recv().ok()
    }

    /// Hands a written chunk's buffer back for the next one.
    pub fn recycle(&self, bytes: AlignedVec) {
        let _ = self.spare.try_send(bytes);
    }
}
