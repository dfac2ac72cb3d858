//! Handshakes in flight, capped in all and per user.
//!
//! A connection holds a socket (a file descriptor) and a handshake slot from
//! `accept` until its HELLO is read or its handshake timeout runs out. Left
//! unbounded, one user with silent connections exhausts the server's
//! descriptors and every other client is turned away. OpenSSH bounds the
//! same window with `MaxStartups`, systemd with `MaxConnectionsPerSource`;
//! [`Startups`] does it per uid, as the kernel reports it at accept.
//!
//! The server's own user and root are not counted: they can stop the server
//! outright, so capping them defends nothing, and a legitimate connect storm
//! of the server's own clients must never be turned away by this.

use std::collections::HashMap;

/// Why a handshake may not start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// This uid already has its share of handshakes in flight.
    PerUser(u32),
    /// Other users have every handshake slot.
    Total(u32),
}

/// Handshakes in flight by uid, against two caps.
#[derive(Debug)]
pub struct Startups {
    max_total: u32,
    max_per_user: u32,
    /// The server's own uid (exempt, like root).
    own_uid: u32,
    total: u32,
    by_uid: HashMap<u32, u32>,
}

impl Startups {
    /// At most `max_total` handshakes in flight from users other than
    /// `own_uid` and root, and at most `max_per_user` from any one of them.
    pub fn new(max_total: u32, max_per_user: u32, own_uid: u32) -> Startups {
        Startups {
            max_total,
            max_per_user,
            own_uid,
            total: 0,
            by_uid: HashMap::new(),
        }
    }

    fn counted(&self, uid: u32) -> bool {
        uid != self.own_uid && uid != 0
    }

    /// A connection from `uid` wants to start its handshake. `Ok` counts it
    /// (pair it with [`Startups::end`]); `Err` counts nothing.
    pub fn begin(&mut self, uid: u32) -> Result<(), Refusal> {
        if !self.counted(uid) {
            return Ok(());
        }
        let mine = self.by_uid.get(&uid).copied().unwrap_or(0);
        if mine >= self.max_per_user {
            return Err(Refusal::PerUser(self.max_per_user));
        }
        if self.total >= self.max_total {
            return Err(Refusal::Total(self.max_total));
        }
        self.total += 1;
        *self.by_uid.entry(uid).or_insert(0) += 1;
        Ok(())
    }

    /// A handshake [`Startups::begin`] let start has ended, however it ended.
    pub fn end(&mut self, uid: u32) {
        if !self.counted(uid) {
            return;
        }
        let Some(mine) = self.by_uid.get_mut(&uid) else {
            debug_assert!(false, "end without begin for uid {uid}");
            return;
        };
        *mine -= 1;
        if *mine == 0 {
            self.by_uid.remove(&uid);
        }
        self.total -= 1;
    }

    /// Handshakes in flight from counted users.
    pub fn in_flight(&self) -> u32 {
        self.total
    }
}

impl Refusal {
    /// The reason sent to a client refused a place among the waiters.
    pub fn waiting_reason(self) -> String {
        match self {
            Refusal::PerUser(n) => format!(
                "this user already has {n} connections waiting for an instance of the pipe; \
                 try again when one is served"
            ),
            Refusal::Total(n) => format!(
                "{n} connections from other users are already waiting for an instance; \
                 try again later"
            ),
        }
    }

    /// The reason sent to the refused client.
    pub fn reason(self) -> String {
        match self {
            Refusal::PerUser(n) => format!(
                "this user already has {n} connections to the pipe that have not sent their \
                 handshake; finish or close those first"
            ),
            Refusal::Total(n) => format!(
                "{n} connections from other users have not sent their handshake yet; \
                 try again later"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_user_has_a_share_and_all_share_a_total() {
        let mut s = Startups::new(5, 3, 1000);
        for _ in 0..3 {
            s.begin(65534).unwrap();
        }
        assert_eq!(s.begin(65534), Err(Refusal::PerUser(3)));
        s.begin(2000).unwrap();
        s.begin(2000).unwrap();
        assert_eq!(s.begin(3000), Err(Refusal::Total(5)));
        assert_eq!(s.in_flight(), 5);
        s.end(65534);
        assert_eq!(s.begin(3000), Ok(()));
        assert_eq!(s.begin(65534), Err(Refusal::Total(5)));
    }

    #[test]
    fn the_servers_own_user_and_root_are_not_counted() {
        let mut s = Startups::new(1, 1, 1000);
        for _ in 0..100 {
            s.begin(1000).unwrap();
            s.begin(0).unwrap();
        }
        assert_eq!(s.in_flight(), 0);
        s.begin(7).unwrap();
        assert_eq!(s.begin(8), Err(Refusal::Total(1)));
        s.end(1000);
        s.end(0);
        s.end(7);
        assert_eq!(s.in_flight(), 0);
        s.begin(8).unwrap();
    }

    #[test]
    fn ending_every_handshake_frees_every_slot() {
        let mut s = Startups::new(4, 2, 1);
        for round in 0..3 {
            for uid in [10, 10, 11, 11] {
                s.begin(uid)
                    .unwrap_or_else(|e| panic!("round {round}: {e:?}"));
            }
            for uid in [10, 11, 10, 11] {
                s.end(uid);
            }
            assert_eq!(s.in_flight(), 0);
            assert!(s.by_uid.is_empty());
        }
    }
}
