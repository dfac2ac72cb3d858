//! Instances in use, as `info` reports them (`GetNamedPipeHandleState`'s
//! current instances), shared by a listener's acceptor and its server ends.

use std::sync::atomic::{AtomicU64, Ordering};

/// The acceptor's count of instances in use and the releases it has not
/// counted yet, in one atomic word, so that `info` reads a true count at
/// any moment: a release shows at once, and the acceptor's counting it
/// never shows twice or not at all.
pub(crate) struct InstanceCounts(AtomicU64);

impl InstanceCounts {
    const RELEASED: u64 = 0xffff_ffff;

    pub(crate) fn new() -> InstanceCounts {
        InstanceCounts(AtomicU64::new(0))
    }

    /// A server end gives its instance back.
    pub(crate) fn release(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }

    /// Releases not yet counted by the acceptor.
    pub(crate) fn released(&self) -> u32 {
        (self.0.load(Ordering::SeqCst) & Self::RELEASED) as u32
    }

    /// The acceptor publishes its count, having counted `counted` releases.
    pub(crate) fn publish(&self, active: u32, counted: u32) {
        let _ = self
            .0
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| {
                let left = (v & Self::RELEASED).saturating_sub(u64::from(counted));
                Some(u64::from(active) << 32 | left)
            });
    }

    /// Instances in use now.
    pub(crate) fn active_now(&self) -> u32 {
        let v = self.0.load(Ordering::SeqCst);
        ((v >> 32) as u32).saturating_sub((v & Self::RELEASED) as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::InstanceCounts;

    #[test]
    fn a_release_shows_before_the_acceptor_counts_it() {
        let c = InstanceCounts::new();
        c.publish(2, 0);
        assert_eq!(c.active_now(), 2);
        c.release();
        assert_eq!(c.active_now(), 1);
        assert_eq!(c.released(), 1);
        // The acceptor counts it: no change seen from outside.
        c.publish(1, 1);
        assert_eq!(c.active_now(), 1);
        assert_eq!(c.released(), 0);
    }

    #[test]
    fn a_release_during_counting_is_kept_for_next_time() {
        let c = InstanceCounts::new();
        c.publish(3, 0);
        c.release();
        let seen = c.released();
        c.release(); // lands while the acceptor counts the first
        c.publish(2, seen);
        assert_eq!(c.released(), 1);
        assert_eq!(c.active_now(), 1);
    }
}
