//! A connection's answers that are queued and not yet handed to QUIC: the
//! bytes its client has not made room for by reading. Its streams stop
//! reading requests while they pass `MAX_QUEUED_ANSWER_BYTES_PER_CONNECTION`,
//! so that a client that pipelines and never reads pushes back on itself
//! instead of growing the daemon's memory.

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;

pub struct Backlog {
    bytes: AtomicUsize,
    /// Woken whenever a writer hands bytes to QUIC.
    drained: Notify,
    limit: usize,
}

impl Backlog {
    pub fn new(limit: usize) -> Backlog {
        Backlog {
            bytes: AtomicUsize::new(0),
            drained: Notify::new(),
            limit,
        }
    }

    /// `bytes` more answers queued for a writer.
    pub fn queued(&self, bytes: usize) {
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// `bytes` handed to QUIC (or dropped with their stream).
    pub fn written(&self, bytes: usize) {
        self.bytes.fetch_sub(bytes, Ordering::Relaxed);
        self.drained.notify_waiters();
    }

    /// Answer bytes queued now.
    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Returns once fewer than the limit's bytes are queued.
    pub async fn room(&self) {
        loop {
            let drained = self.drained.notified();
            tokio::pin!(drained);
            // Registered before the check, so that a drain in between wakes it.
            drained.as_mut().enable();
            if self.bytes() < self.limit {
                return;
            }
            drained.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn room_waits_until_the_queued_bytes_drain_below_the_limit() {
        // Proves a reader past the limit waits, and is let go by the write
        // that brings the backlog under it.
        let backlog = std::sync::Arc::new(Backlog::new(100));
        backlog.queued(150);
        let waiter = tokio::spawn({
            let backlog = backlog.clone();
            async move { backlog.room().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        backlog.written(20);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "130 bytes are still past 100");
        backlog.written(50);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("let go once under the limit")
            .unwrap();
    }
}
