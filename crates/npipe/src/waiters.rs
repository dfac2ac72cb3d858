//! The tasks waiting on one tokio registration, woken together. tokio keeps
//! one waker per direction of a registration's readiness, but two tasks
//! may wait on one connection in the same direction (the read and write
//! halves of `tokio::io::split`: for the shared-memory rings both wait on
//! the socket's read readiness; on TLS, a reader that sends what a full
//! socket held back waits on write readiness beside the writer). So the
//! reactor is handed a waker of ours, which wakes every task waiting.

use std::sync::{Arc, Mutex};
use std::task::{Wake, Waker};

/// The tasks waiting on one end's socket, woken together.
#[derive(Debug, Default)]
pub(crate) struct Waiters(Mutex<Vec<Waker>>);

/// A few tasks wait on one end at once as a rule (a reader, a writer, and
/// a `readable`/`writable` call), and a task may stay listed after it
/// stopped waiting (it is woken once for nothing); past this many, the
/// list is woken and emptied rather than grown. Well above the tasks that
/// really wait: with more, each one re-listed after the wake-up would
/// empty the list again, and they would wake each other for ever (the
/// bound was 8, which nine tasks on one end's `readable` reached).
const MAX_WAITERS: usize = 256;

impl Waiters {
    pub(crate) fn add(&self, waker: &Waker) {
        let mut list = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if list.iter().any(|w| w.will_wake(waker)) {
            return;
        }
        let full = if list.len() >= MAX_WAITERS {
            std::mem::take(&mut *list)
        } else {
            Vec::new()
        };
        list.push(waker.clone());
        drop(list);
        // Woken with the lock let go: a waker may poll its task at once.
        full.into_iter().for_each(Waker::wake);
    }

    /// Wakes every waiting task but `me`: a wake-up `me` drained from the
    /// socket may have been meant for them.
    pub(crate) fn wake_others(&self, me: &Waker) {
        let list = std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()));
        for w in list {
            if !w.will_wake(me) {
                w.wake();
            }
        }
    }
}

impl Wake for Waiters {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let list = std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()));
        list.into_iter().for_each(Waker::wake);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Counted(AtomicUsize);

    impl Wake for Counted {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Twenty tasks waiting on one end are listed, none woken for nothing,
    /// and all woken by the event (with a bound of 8, the ninth to list
    /// itself woke the other eight, which listed themselves again, and so
    /// on for ever).
    #[test]
    fn many_waiting_tasks_are_kept_and_woken_once() {
        let waiters = Arc::new(Waiters::default());
        let tasks: Vec<Arc<Counted>> = (0..20)
            .map(|_| Arc::new(Counted(AtomicUsize::new(0))))
            .collect();
        for t in &tasks {
            let waker = Waker::from(Arc::clone(t));
            waiters.add(&waker);
            waiters.add(&waker); // listed once however often it asks
        }
        assert!(tasks.iter().all(|t| t.0.load(Ordering::SeqCst) == 0));
        Waker::from(Arc::clone(&waiters)).wake_by_ref();
        assert!(tasks.iter().all(|t| t.0.load(Ordering::SeqCst) == 1));
    }
}
