//! A snapshot step across every actor: each images itself at a marker, and
//! the routers stream their books.

use super::error::EngineError;
use super::feed::FeedMsg;
use super::images::{BookSink, Imaged};
use super::node::NodeMsg;
use super::router::RouterMsg;
use super::sequencer::{Done, KIND_MARKER};
use super::shard::ShardMsg;
use super::{call, Engine};
use crate::core::stock::ImageMemory;

impl Engine {
    /// Snapshots image at full speed from now on, the one under way
    /// included: nothing else waits (the daemon is stopping).
    pub fn hurry_snapshots(&self) {
        self.inner.image_pace.hurry();
    }

    /// Images every actor with the LSN it has applied, without stopping
    /// the others: routers image their books in order with their changes,
    /// and a marker record tells every shard and node, and the feed, when
    /// to image theirs.
    /// The catalog is imaged at the marker too (it may hold SKUs journaled
    /// just after it, which replay accepts as already known). The routers'
    /// books go to `books` a chunk at a time, while they image; their
    /// images here only label them.
    pub async fn take_snapshot(&self, books: BookSink) -> Result<Vec<(u64, Imaged)>, EngineError> {
        let (sink, mut images) = tokio::sync::mpsc::unbounded_channel();
        let expected = self.inner.routers.len()
            + self.inner.participants.shards.len()
            + self.inner.participants.nodes.len()
            + 2;
        for router in &self.inner.routers {
            let sink = sink.clone();
            let books = books.clone();
            let pace = self.inner.image_pace.clone();
            call(router, move |reply| RouterMsg::Snapshot {
                images: sink,
                books,
                pace,
                reply,
            })
            .await;
        }
        drop(books);
        let participants = self.inner.participants.clone();
        let index = self.inner.index.clone();
        // The shards' image memory, touched here on a blocking thread, so
        // that the shards (which hold their orders while they image) do
        // not fault it in. Sized for an even share of the catalog.
        let shards = participants.shards.len();
        let skus_per_shard = index.sku_count().div_ceil(shards.max(1)) * 17 / 16;
        let node_count = index.node_count();
        let memories = tokio::task::spawn_blocking(move || {
            (0..shards)
                .map(|_| ImageMemory::touched(skus_per_shard, node_count))
                .collect::<Vec<_>>()
        })
        .await
        .map_err(|_| EngineError::Unavailable)?;
        let marker_sink = sink.clone();
        let pace = self.inner.image_pace.clone();
        let done: Done = Box::new(move |result| {
            let Ok(lsn) = result else { return };
            for (shard, memory) in participants.shards.iter().zip(memories) {
                let _ = shard.cast(ShardMsg::Snapshot {
                    lsn,
                    sink: marker_sink.clone(),
                    memory,
                    pace: pace.clone(),
                });
            }
            for node in participants.nodes.iter() {
                let _ = node.cast(NodeMsg::Snapshot {
                    lsn,
                    sink: marker_sink.clone(),
                    pace: pace.clone(),
                });
            }
            let _ = participants.feed.cast(FeedMsg::Snapshot {
                lsn,
                sink: marker_sink.clone(),
            });
            let _ = marker_sink.send((lsn, Imaged::Catalog(index)));
        });
        self.inner
            .sequencer
            .append_raw(KIND_MARKER, Vec::new, done)
            .await;
        drop(sink);
        let mut taken = Vec::with_capacity(expected);
        while let Some(image) = images.recv().await {
            taken.push(image);
        }
        if taken.len() != expected {
            return Err(EngineError::Unavailable);
        }
        Ok(taken)
    }
}
