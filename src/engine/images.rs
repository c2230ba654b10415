//! What a snapshot carries from the actors to the writers: each actor's
//! image, and a router's book in parts over a bounded queue, at a pace.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use rkyv::util::AlignedVec;
use tokio::sync::mpsc;

use crate::core::capacity::LedgerImage;
use crate::core::model::NodeIdx;
use crate::core::status::FeedImage;
use crate::core::stock::ShardImage;

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

pub type ImageSink = mpsc::UnboundedSender<(u64, Image)>;

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
