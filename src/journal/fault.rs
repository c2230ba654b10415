//! The journal's fault: the first storage error (a write, fsync, rename,
//! open or allocation that failed, in the journal or the snapshot path),
//! after which nothing more is made durable and so nothing more is
//! answered yes. It is raised once, never cleared: after a failed fsync
//! the kernel may have dropped the dirty pages, so retrying could report
//! durable what is not. The daemon watches it to turn health 503 and stop.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use super::JournalError;

/// Told the fault once it is raised (or at once, if it already was).
pub type Watcher = Box<dyn FnOnce(&JournalError) + Send>;

#[derive(Default)]
pub(super) struct Fault {
    /// Read on every answer's path: one load, no lock.
    raised: AtomicBool,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    error: Option<JournalError>,
    watchers: Vec<Watcher>,
}

impl Fault {
    /// Records `error` if it is the first; the watchers hear of it.
    /// Whatever is raised later follows from the first and is dropped.
    pub(super) fn raise(&self, error: JournalError) {
        let watchers = {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            if state.error.is_some() {
                return;
            }
            state.error = Some(error.clone());
            // Set before any caller is told its commit failed, so that no
            // reader finds the journal quiet and healthy in between.
            self.raised.store(true, Ordering::Release);
            std::mem::take(&mut state.watchers)
        };
        tracing::error!(
            "journal: {error}; nothing more is answered yes, and the daemon stops (restart it once the cause is fixed)"
        );
        for watcher in watchers {
            watcher(&error);
        }
    }

    pub(super) fn is_raised(&self) -> bool {
        self.raised.load(Ordering::Acquire)
    }

    pub(super) fn error(&self) -> Option<JournalError> {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .error
            .clone()
    }

    /// Tells `watcher` of the fault when it is raised, or now if it was.
    pub(super) fn watch(&self, watcher: Watcher) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match state.error.clone() {
            Some(error) => {
                drop(state);
                watcher(&error);
            }
            None => state.watchers.push(watcher),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn io(message: &str) -> JournalError {
        JournalError::Io {
            path: "j".into(),
            message: message.into(),
        }
    }

    #[test]
    fn the_first_fault_is_kept_and_every_watcher_hears_it_once() {
        // Proves watchers before and after the fault get the first error, and a later one is dropped.
        let fault = Fault::default();
        let heard = Arc::new(Mutex::new(Vec::new()));
        let early = heard.clone();
        fault.watch(Box::new(move |e| early.lock().unwrap().push(e.to_string())));
        assert!(!fault.is_raised());
        fault.raise(io("first"));
        fault.raise(io("second"));
        let late = heard.clone();
        fault.watch(Box::new(move |e| late.lock().unwrap().push(e.to_string())));
        assert!(fault.is_raised());
        let heard = heard.lock().unwrap().clone();
        assert_eq!(heard.len(), 2);
        assert!(heard.iter().all(|e| e.contains("first")), "{heard:?}");
        assert!(fault.error().unwrap().to_string().contains("first"));
    }
}
