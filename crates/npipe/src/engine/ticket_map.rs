//! Maps keyed by [`Ticket`]. A ticket is a counter the acceptor hands out,
//! never a value a client chooses, so its maps need no hash built to resist
//! chosen keys: std's SipHash was a tenth of the acceptor's work per
//! connection (its insert, lookups and removal in two maps). Multiplying by
//! the golden ratio (odd, so no two tickets below 2^k share their low k
//! bits) spreads consecutive tickets over the low bits, which pick a
//! bucket, and the top seven, the map's tag; folding the high half into
//! the low one keeps tickets that differ only in high bits (a stride of
//! 2^k) from sharing a bucket.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::proto::admission::Ticket;

/// A map from tickets.
pub(crate) type TicketMap<V> = HashMap<Ticket, V, BuildHasherDefault<TicketHasher>>;

/// The hasher of [`TicketMap`]: one multiplication per ticket.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct TicketHasher(u64);

/// 2^64 divided by the golden ratio (Fibonacci hashing).
const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

impl Hasher for TicketHasher {
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(GOLDEN);
    }

    // Only tickets (u64) are hashed; any other key is folded in a byte at
    // a time, correct if slow.
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn finish(&self) -> u64 {
        self.0 ^ (self.0 >> 32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Consecutive tickets land in different groups: their hashes differ
    /// in the top seven bits (hashbrown's tag) and in the low bits (the
    /// bucket).
    #[test]
    fn consecutive_tickets_spread() {
        let hash = |t: Ticket| {
            let mut h = TicketHasher::default();
            h.write_u64(t);
            h.finish()
        };
        let tops: std::collections::HashSet<u64> = (0..128).map(|t| hash(t) >> 57).collect();
        assert!(tops.len() > 64, "top bits: {}", tops.len());
        let lows: std::collections::HashSet<u64> = (0..128).map(|t| hash(t) & 127).collect();
        assert!(lows.len() > 64, "low bits: {}", lows.len());
        let strided: std::collections::HashSet<u64> =
            (0..128).map(|t| hash(t << 20) & 127).collect();
        assert!(strided.len() > 64, "strided low bits: {}", strided.len());
        let mut map = TicketMap::default();
        for t in 0..1000u64 {
            map.insert(t, t * 2);
        }
        assert!((0..1000u64).all(|t| map[&t] == t * 2));
    }
}
