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
//! One user other than the server's own (and root) may hold at most half of
//! the budget, unless it holds nothing yet (so any one message of its can
//! always go): a client that sends large headers and then stalls keeps its
//! reservations until its connection goes, and one user's stalled writers
//! must not pin the whole budget against everyone else.
//!
//! A reservation is all or nothing, for the whole message: reserving as the
//! bytes arrive would let many half-received messages exhaust the budget
//! together, each waiting for room only another's completion could free. A
//! message larger than the whole budget waits until nothing else is
//! reserved, then goes alone. Smaller messages are not counted: they cost a
//! connection no more than its socket's kernel buffer already does.

use std::collections::HashMap;
use std::sync::{Condvar, Mutex, PoisonError};
use std::task::Waker;
use std::time::{Duration, Instant};

/// Messages up to this size are gathered without a reservation.
pub(crate) const UNBUDGETED: usize = 64 * 1024;

/// A listener's budget for partially received messages.
#[derive(Debug)]
pub(crate) struct MemoryBudget {
    capacity: usize,
    /// The server's own user: it and root are not held to a share.
    own_uid: u32,
    state: Mutex<State>,
    released: Condvar,
}

#[derive(Debug)]
struct State {
    available: usize,
    /// What each user (but the server's own and root) holds.
    by_uid: HashMap<u32, usize>,
    /// Async readers waiting for room, woken on every release.
    wakers: Vec<Waker>,
}

impl State {
    /// Whether `bytes` more for `uid` fit: in the budget, and within the
    /// user's share unless it holds nothing yet.
    fn fits(&self, bytes: usize, uid: Option<u32>, share: usize) -> bool {
        let held = uid.and_then(|u| self.by_uid.get(&u)).copied().unwrap_or(0);
        self.available >= bytes && (held == 0 || held + bytes <= share)
    }
}

impl MemoryBudget {
    /// A budget of `capacity` bytes for a server running as `own_uid`.
    pub fn new(capacity: usize, own_uid: u32) -> MemoryBudget {
        MemoryBudget {
            capacity,
            own_uid,
            state: Mutex::new(State {
                available: capacity,
                by_uid: HashMap::new(),
                wakers: Vec::new(),
            }),
            released: Condvar::new(),
        }
    }

    /// The user `uid` is counted against its share (not the server's own,
    /// not root).
    fn counted(&self, uid: u32) -> Option<u32> {
        (uid != self.own_uid && uid != 0).then_some(uid)
    }

    fn share(&self) -> usize {
        self.capacity / 2
    }

    /// What a message of `len` bytes reserves: all of it, or the whole
    /// budget for a message larger than that.
    fn needed(&self, len: usize) -> usize {
        len.min(self.capacity)
    }

    /// Reserves room for a message of `len` bytes from a client of user
    /// `uid`, if the budget (and the user's share) has it now.
    pub fn try_reserve(self: &std::sync::Arc<Self>, len: usize, uid: u32) -> Option<Reservation> {
        let bytes = self.needed(len);
        let uid = self.counted(uid);
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if !state.fits(bytes, uid, self.share()) {
            return None;
        }
        state.available -= bytes;
        if let Some(u) = uid {
            *state.by_uid.entry(u).or_insert(0) += bytes;
        }
        Some(Reservation {
            budget: std::sync::Arc::clone(self),
            bytes,
            uid,
        })
    }

    /// For an async reader: `true` if a message of `len` bytes would fit
    /// now (try again at once), else `waker` is woken at the next release.
    /// Checked and registered under one lock, so no release is missed.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub fn wake_when_room(&self, len: usize, uid: u32, waker: &Waker) -> bool {
        let bytes = self.needed(len);
        let uid = self.counted(uid);
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.fits(bytes, uid, self.share()) {
            return true;
        }
        if !state.wakers.iter().any(|w| w.will_wake(waker)) {
            state.wakers.push(waker.clone());
        }
        false
    }

    /// For a blocking reader: waits until a message of `len` bytes would
    /// fit, at most until `deadline`; whether it does.
    pub fn wait_for_room(&self, len: usize, uid: u32, deadline: Option<Instant>) -> bool {
        let bytes = self.needed(len);
        let uid = self.counted(uid);
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        while !state.fits(bytes, uid, self.share()) {
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

    fn release(&self, bytes: usize, uid: Option<u32>) {
        let wakers = {
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            state.available += bytes;
            if let Some(u) = uid {
                if let Some(held) = state.by_uid.get_mut(&u) {
                    *held -= bytes;
                    if *held == 0 {
                        state.by_uid.remove(&u);
                    }
                }
            }
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
    /// The user it counts against, if any.
    uid: Option<u32>,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.release(self.bytes, self.uid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// The server's own user in these tests.
    const OWN: u32 = 1000;

    /// One other user holds at most half the budget, unless it holds
    /// nothing yet; the server's own user and root are not held to it.
    #[test]
    fn one_user_holds_at_most_half_unless_it_holds_nothing() {
        let b = Arc::new(MemoryBudget::new(100, OWN));
        let first = b.try_reserve(60, 65534).unwrap();
        assert!(b.try_reserve(10, 65534).is_none(), "60 + 10 > 50");
        let other = b.try_reserve(30, 4242).unwrap();
        let own = b.try_reserve(10, OWN).unwrap();
        assert_eq!(b.available(), 0);
        drop((other, own));
        assert!(b.try_reserve(1, 65534).is_none(), "still over its share");
        let root = b.try_reserve(40, 0).unwrap();
        drop((first, root));
        let small = b.try_reserve(20, 65534).unwrap();
        let more = b.try_reserve(30, 65534).unwrap();
        assert!(b.try_reserve(1, 65534).is_none(), "20 + 30 is its share");
        drop((small, more));
        assert_eq!(b.available(), 100);
    }

    #[test]
    fn reservations_are_whole_messages_within_the_capacity() {
        let b = Arc::new(MemoryBudget::new(100, OWN));
        let a = b.try_reserve(60, OWN).unwrap();
        assert!(b.try_reserve(60, OWN).is_none(), "60 + 60 > 100");
        let c = b.try_reserve(40, OWN).unwrap();
        assert_eq!(b.available(), 0);
        drop(a);
        assert_eq!(b.available(), 60);
        drop(c);
        // Larger than the whole budget: goes alone.
        let big = b.try_reserve(1000, OWN).unwrap();
        assert!(b.try_reserve(1, OWN).is_none());
        drop(big);
        assert_eq!(b.available(), 100);
    }

    #[test]
    fn a_blocked_reader_is_woken_by_a_release() {
        let b = Arc::new(MemoryBudget::new(10, OWN));
        let held = b.try_reserve(10, OWN).unwrap();
        let waiter = {
            let b = Arc::clone(&b);
            std::thread::spawn(move || b.wait_for_room(10, OWN, None))
        };
        drop(held);
        assert!(waiter.join().unwrap());
        let _held = b.try_reserve(10, OWN).unwrap();
        let soon = Instant::now() + Duration::from_millis(1);
        assert!(!b.wait_for_room(1, OWN, Some(soon)));
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
        let b = Arc::new(MemoryBudget::new(10, OWN));
        let held = b.try_reserve(8, OWN).unwrap();
        assert!(b.wake_when_room(2, OWN, &waker));
        assert!(!b.wake_when_room(3, OWN, &waker));
        assert!(!flag.0.load(std::sync::atomic::Ordering::SeqCst));
        drop(held);
        assert!(flag.0.load(std::sync::atomic::Ordering::SeqCst));
    }
}
