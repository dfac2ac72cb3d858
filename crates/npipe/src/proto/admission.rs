//! Which client takes an instance, and when a waiting client gives up.
//!
//! The server side's bookkeeping of `max_instances` and `WaitNamedPipe` as a
//! plain state machine: the front end reports arrivals, releases, accepts and
//! the time; [`Admission`] answers with the clients to connect or to turn
//! away. Waiters are served strictly first come, first served, and an arrival
//! never overtakes a queued waiter.

use std::collections::VecDeque;
use std::time::Instant;

/// The front end's handle for one client connection.
pub type Ticket = u64;

/// How long an arriving client is willing to wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Patience {
    /// Busy at once if no instance is free.
    None,
    /// Until this instant.
    Until(Instant),
    /// For ever.
    Forever,
}

/// The verdict on an arriving client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// Connect it now: it holds an instance.
    Granted,
    /// Tell it *pipe busy*.
    Busy,
    /// It waits; a later call returns its ticket when an instance frees.
    Queued,
}

/// Instance accounting for one pipe.
#[derive(Debug)]
pub struct Admission {
    limit: Option<u32>,
    backlog: u32,
    /// Connections that hold an instance, not yet accepted ones included.
    active: u32,
    /// Granted connections the application has not accepted yet.
    unaccepted: u32,
    queue: VecDeque<(Ticket, Patience)>,
}

impl Admission {
    /// `limit` instances (`None`: unlimited), of which at most `backlog` may
    /// be connected but not yet accepted by the application.
    pub fn new(limit: Option<u32>, backlog: u32) -> Admission {
        Admission {
            limit,
            backlog: backlog.max(1),
            active: 0,
            unaccepted: 0,
            queue: VecDeque::new(),
        }
    }

    /// Connections holding an instance.
    pub fn active(&self) -> u32 {
        self.active
    }

    /// Clients waiting for an instance.
    pub fn waiting(&self) -> usize {
        self.queue.len()
    }

    fn has_free(&self) -> bool {
        self.limit.is_none_or(|l| self.active < l) && self.unaccepted < self.backlog
    }

    fn grant(&mut self) {
        self.active += 1;
        self.unaccepted += 1;
    }

    /// A client has asked to connect.
    pub fn arrive(&mut self, ticket: Ticket, patience: Patience) -> Arrival {
        if self.queue.is_empty() && self.has_free() {
            self.grant();
            return Arrival::Granted;
        }
        match patience {
            Patience::None => Arrival::Busy,
            _ => {
                self.queue.push_back((ticket, patience));
                Arrival::Queued
            }
        }
    }

    fn serve_queue(&mut self) -> Vec<Ticket> {
        let mut granted = Vec::new();
        while self.has_free() {
            let Some((t, _)) = self.queue.pop_front() else {
                break;
            };
            self.grant();
            granted.push(t);
        }
        granted
    }

    /// A connection gave its instance back (closed or disconnected); returns
    /// the waiters that now take instances, in order.
    pub fn release(&mut self) -> Vec<Ticket> {
        assert!(self.active > 0, "release without an active instance");
        self.active -= 1;
        self.serve_queue()
    }

    /// A granted connection that was never accepted went away (the client
    /// left before the application accepted it).
    pub fn release_unaccepted(&mut self) -> Vec<Ticket> {
        assert!(self.unaccepted > 0, "no unaccepted connection");
        self.unaccepted -= 1;
        self.release()
    }

    /// The application accepted `n` granted connections; returns the waiters
    /// that now take instances, in order.
    pub fn accepted(&mut self, n: u32) -> Vec<Ticket> {
        assert!(n <= self.unaccepted, "accepted more than were granted");
        self.unaccepted -= n;
        self.serve_queue()
    }

    /// A waiting client left; whether it was waiting.
    pub fn cancel(&mut self, ticket: Ticket) -> bool {
        let before = self.queue.len();
        self.queue.retain(|&(t, _)| t != ticket);
        self.queue.len() != before
    }

    /// Removes and returns the waiters whose time is up at `now`.
    pub fn expire(&mut self, now: Instant) -> Vec<Ticket> {
        let mut expired = Vec::new();
        self.queue.retain(|&(t, p)| match p {
            Patience::Until(d) if d <= now => {
                expired.push(t);
                false
            }
            _ => true,
        });
        expired
    }

    /// The earliest instant at which a waiter's time runs out.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.queue
            .iter()
            .filter_map(|&(_, p)| match p {
                Patience::Until(d) => Some(d),
                _ => None,
            })
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn limit_then_busy_then_fifo() {
        let now = Instant::now();
        let mut a = Admission::new(Some(2), 100);
        assert_eq!(a.arrive(1, Patience::None), Arrival::Granted);
        assert_eq!(a.arrive(2, Patience::None), Arrival::Granted);
        assert_eq!(a.arrive(3, Patience::None), Arrival::Busy);
        assert_eq!(a.arrive(4, Patience::Forever), Arrival::Queued);
        assert_eq!(
            a.arrive(5, Patience::Until(now + Duration::from_secs(9))),
            Arrival::Queued
        );
        assert_eq!(a.arrive(6, Patience::Forever), Arrival::Queued);
        assert_eq!(a.accepted(2), vec![]);
        assert_eq!(a.release(), vec![4]);
        assert_eq!(a.release(), vec![5]);
        assert_eq!(a.active(), 2);
        assert_eq!(a.waiting(), 1);
    }

    #[test]
    fn arrivals_never_overtake_waiters() {
        let mut a = Admission::new(Some(1), 100);
        assert_eq!(a.arrive(1, Patience::None), Arrival::Granted);
        assert_eq!(a.arrive(2, Patience::Forever), Arrival::Queued);
        a.accepted(1);
        // the instance frees and goes to 2; a newcomer finds none free
        assert_eq!(a.release(), vec![2]);
        assert_eq!(a.arrive(3, Patience::None), Arrival::Busy);
    }

    #[test]
    fn expiry_and_cancel() {
        let now = Instant::now();
        let mut a = Admission::new(Some(1), 100);
        a.arrive(1, Patience::None);
        a.arrive(2, Patience::Until(now + Duration::from_millis(50)));
        a.arrive(3, Patience::Until(now + Duration::from_millis(10)));
        a.arrive(4, Patience::Forever);
        assert_eq!(a.next_deadline(), Some(now + Duration::from_millis(10)));
        assert_eq!(a.expire(now + Duration::from_millis(10)), vec![3]);
        assert!(a.cancel(2));
        assert!(!a.cancel(2));
        assert_eq!(a.next_deadline(), None);
        a.accepted(1);
        assert_eq!(a.release(), vec![4]);
    }

    #[test]
    fn backlog_bounds_unaccepted_connections() {
        let mut a = Admission::new(None, 2);
        assert_eq!(a.arrive(1, Patience::None), Arrival::Granted);
        assert_eq!(a.arrive(2, Patience::None), Arrival::Granted);
        assert_eq!(a.arrive(3, Patience::None), Arrival::Busy);
        assert_eq!(a.arrive(4, Patience::Forever), Arrival::Queued);
        assert_eq!(a.accepted(1), vec![4]);
        assert_eq!(a.active(), 3);
        assert_eq!(a.release_unaccepted(), vec![]);
        assert_eq!(a.active(), 2);
    }
}
