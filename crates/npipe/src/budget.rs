//! The memory a server may hold in partially received messages, shared by
//! every connection of one listener.
//!
//! `recv_message` gathers a whole message before returning it, so each
//! connection could otherwise make the server hold up to the largest message
//! size of bytes its client has sent but not finished, with no total (eight
//! clients took an echo server from 4 MiB to 516 MiB). Windows bounds a pipe
//! by its buffer quota and blocks the writer; npipe bounds the sum: a
//! message larger than [`UNBUDGETED`] reserves its whole length before its
//! body is read, and while the budget cannot cover it the server end does
//! not read from that client at all, so the client's writes block in the
//! kernel (backpressure: nothing is dropped, nothing acknowledged is lost).
//!
//! A message's room is taken when its header is read and given back at the
//! application's next read on that connection (or when the connection
//! ends): while the application works on the message (an echo server
//! writing it back to a client that never reads, say) it still holds that
//! memory, and the connection takes in no more. So the budget bounds what
//! the server holds of its clients' large messages, not only the unfinished
//! ones.
//!
//! A reservation is all or nothing, for the whole message: reserving as the
//! bytes arrive would let many half-received messages exhaust the budget
//! together, each waiting for room only another's completion could free. A
//! message larger than the whole budget waits until nothing else is
//! reserved, then goes alone. Smaller messages are not counted: they cost a
//! connection no more than its socket's kernel buffer already does.

use std::sync::{Condvar, Mutex, PoisonError};
use std::task::Waker;
use std::time::{Duration, Instant};

/// Messages up to this size are gathered without a reservation.
pub(crate) const UNBUDGETED: usize = 64 * 1024;

/// A listener's budget for partially received messages.
#[derive(Debug)]
pub(crate) struct MemoryBudget {
    capacity: usize,
    state: Mutex<State>,
    released: Condvar,
}

#[derive(Debug)]
struct State {
    available: usize,
    /// Async readers waiting for room, woken on every release.
    wakers: Vec<Waker>,
}

impl MemoryBudget {
    /// A budget of `capacity` bytes.
    pub fn new(capacity: usize) -> MemoryBudget {
        MemoryBudget {
            capacity,
            state: Mutex::new(State {
                available: capacity,
                wakers: Vec::new(),
            }),
            released: Condvar::new(),
        }
    }

    /// What a message of `len` bytes reserves: all of it, or the whole
    /// budget for a message larger than that.
    fn needed(&self, len: usize) -> usize {
        len.min(self.capacity)
    }

    /// Reserves room for a message of `len` bytes, if the budget has it now.
    pub fn try_reserve(self: &std::sync::Arc<Self>, len: usize) -> Option<Reservation> {
        let bytes = self.needed(len);
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.available < bytes {
            return None;
        }
        state.available -= bytes;
        Some(Reservation {
            budget: std::sync::Arc::clone(self),
            bytes,
        })
    }

    /// For an async reader: `true` if a message of `len` bytes would fit
    /// now (try again at once), else `waker` is woken at the next release.
    /// Checked and registered under one lock, so no release is missed.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub fn wake_when_room(&self, len: usize, waker: &Waker) -> bool {
        let bytes = self.needed(len);
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.available >= bytes {
            return true;
        }
        if !state.wakers.iter().any(|w| w.will_wake(waker)) {
            state.wakers.push(waker.clone());
        }
        false
    }

    /// For a blocking reader: waits until a message of `len` bytes would
    /// fit, at most until `deadline`; whether it does.
    pub fn wait_for_room(&self, len: usize, deadline: Option<Instant>) -> bool {
        let bytes = self.needed(len);
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        while state.available < bytes {
            state = match deadline {
                None => self
                    .released
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner),
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left == Duration::ZERO {
                        return false;
                    }
                    self.released
                        .wait_timeout(state, left)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
            };
        }
        true
    }

    fn release(&self, bytes: usize) {
        let wakers = {
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            state.available += bytes;
            debug_assert!(state.available <= self.capacity);
            std::mem::take(&mut state.wakers)
        };
        self.released.notify_all();
        for w in wakers {
            w.wake();
        }
    }

    /// Bytes not reserved now.
    #[cfg(test)]
    pub fn available(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .available
    }
}

/// Room held in a [`MemoryBudget`] for one message; given back on drop.
#[derive(Debug)]
pub(crate) struct Reservation {
    budget: std::sync::Arc<MemoryBudget>,
    bytes: usize,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.release(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn reservations_are_whole_messages_within_the_capacity() {
        let b = Arc::new(MemoryBudget::new(100));
        let a = b.try_reserve(60).unwrap();
        assert!(b.try_reserve(60).is_none(), "60 + 60 > 100");
        let c = b.try_reserve(40).unwrap();
        assert_eq!(b.available(), 0);
        drop(a);
        assert_eq!(b.available(), 60);
        drop(c);
        // Larger than the whole budget: goes alone.
        let big = b.try_reserve(1000).unwrap();
        assert!(b.try_reserve(1).is_none());
        drop(big);
        assert_eq!(b.available(), 100);
    }

    #[test]
    fn a_blocked_reader_is_woken_by_a_release() {
        let b = Arc::new(MemoryBudget::new(10));
        let held = b.try_reserve(10).unwrap();
        let waiter = {
            let b = Arc::clone(&b);
            std::thread::spawn(move || b.wait_for_room(10, None))
        };
        drop(held);
        assert!(waiter.join().unwrap());
        let _held = b.try_reserve(10).unwrap();
        let soon = Instant::now() + Duration::from_millis(1);
        assert!(!b.wait_for_room(1, Some(soon)));
    }

    #[test]
    fn an_async_reader_is_woken_by_a_release() {
        struct Flag(std::sync::atomic::AtomicBool);
        impl std::task::Wake for Flag {
            fn wake(self: Arc<Self>) {
                self.0.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
        let flag = Arc::new(Flag(false.into()));
        let waker = Waker::from(Arc::clone(&flag));
        let b = Arc::new(MemoryBudget::new(10));
        let held = b.try_reserve(8).unwrap();
        assert!(b.wake_when_room(2, &waker));
        assert!(!b.wake_when_room(3, &waker));
        assert!(!flag.0.load(std::sync::atomic::Ordering::SeqCst));
        drop(held);
        assert!(flag.0.load(std::sync::atomic::Ordering::SeqCst));
    }
}
