//! The server's acceptor as a state machine with no I/O: every decision
//! about a connection between `accept` and the application's `accept`, in
//! the order both front ends must take them.
//!
//! A front end accepts sockets, reads HELLOs, sends replies and wakes on
//! time; it reports each of these to [`AcceptorCore`] and does what the
//! answers say. The core decides: who is refused at accept (the descriptor
//! grants nothing, or the user has its share of handshakes in flight), what
//! a HELLO gets (refusal, description, an instance, or a place in the
//! queue), which waiters take freed instances, first come first served,
//! and when handshakes and waits run out. The front ends keep the sockets,
//! keyed by the [`Ticket`] the core hands out.

use std::time::Instant;

use crate::engine::ticket_map::TicketMap;
use crate::error::ErrorCode;
use crate::name::PipeName;
use crate::options::ServerOptions;
use crate::policy::{self, Peer, Verdict};
use crate::proto::admission::{Admission, Arrival, Ticket};
use crate::proto::handshake::{Hello, PipeDescription};
use crate::proto::startups::Startups;
use crate::types::Access;

/// What to send a connection and then do with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Answer {
    /// Send this refusal, then close.
    Refuse(ErrorCode, String),
    /// Send this description (a query's answer), then close.
    Describe {
        /// The pipe as this peer could get it.
        desc: PipeDescription,
        /// The security descriptor's text.
        security: String,
    },
    /// Send OK with this description, hold the connection to `granted`, and
    /// queue it for the application's `accept`; if the OK cannot be sent,
    /// report [`AcceptorCore::grant_failed`].
    Connect {
        /// The OK's description.
        desc: PipeDescription,
        /// The access the client holds.
        granted: Access,
    },
    /// Keep the connection, unanswered, and watch it for hang-up: it waits
    /// for an instance ([`AcceptorCore::waiter_left`] if it hangs up).
    Wait,
}

/// A waiter that takes an instance now: connect it (the front end checks
/// first that it has not hung up, else [`AcceptorCore::grant_failed`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Grant {
    /// The waiter.
    pub ticket: Ticket,
    /// Its HELLO.
    pub hello: Hello,
    /// The OK's description.
    pub desc: PipeDescription,
    /// The access it holds.
    pub granted: Access,
}

/// What ran out at a given time.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Expired {
    /// Handshakes past their deadline: close them without a word.
    pub silent: Vec<Ticket>,
    /// Waiters whose wait is over: refuse them with this code and reason.
    pub timed_out: Vec<Ticket>,
}

/// Where a connection the core knows of stands.
#[derive(Debug)]
enum Stage {
    /// Reading its HELLO, until `deadline` if the core keeps the time.
    Handshake { uid: u32, deadline: Option<Instant> },
    /// Waiting for an instance.
    Waiting {
        hello: Hello,
        granted: Access,
        uid: u32,
    },
}

/// The acceptor's decisions for one pipe.
#[derive(Debug)]
pub(crate) struct AcceptorCore {
    name: PipeName,
    opts: ServerOptions,
    admission: Admission,
    startups: Startups,
    /// Clients of other users waiting for an instance, under the same caps
    /// as handshakes: each holds a descriptor on the server while it waits.
    waiters: Startups,
    conns: TicketMap<Stage>,
    next_ticket: Ticket,
}

impl AcceptorCore {
    /// The acceptor of `name`, served with `opts` by `server_uid`.
    pub fn new(name: PipeName, opts: ServerOptions, server_uid: u32) -> AcceptorCore {
        let limit = crate::info::max_instances_from_wire(opts.max_instances);
        let admission = Admission::new(limit, opts.accept_backlog);
        let startups = Startups::new(
            opts.max_handshakes,
            opts.max_handshakes_per_user,
            server_uid,
        );
        let waiters = Startups::new(
            opts.max_handshakes,
            opts.max_handshakes_per_user,
            server_uid,
        );
        AcceptorCore {
            name,
            opts,
            admission,
            startups,
            waiters,
            conns: TicketMap::default(),
            next_ticket: 0,
        }
    }

    /// A connection was accepted from `peer` (as the kernel says): its
    /// ticket, and it may start its handshake (until `deadline`, if the core
    /// is to keep that time); or a refusal to send before closing it: the
    /// descriptor grants it nothing, or its user has too many handshakes in
    /// flight. A peer refused here holds nothing.
    pub fn arrive(
        &mut self,
        peer: &Peer,
        deadline: Option<Instant>,
    ) -> Result<Ticket, (ErrorCode, String)> {
        if let Some(reason) = policy::refuse_at_accept(&self.opts, peer) {
            return Err((ErrorCode::AccessDenied, reason));
        }
        self.startups
            .begin(peer.cred.user.0)
            .map_err(|r| (ErrorCode::PipeBusy, r.reason()))?;
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        let uid = peer.cred.user.0;
        self.conns
            .insert(ticket, Stage::Handshake { uid, deadline });
        Ok(ticket)
    }

    /// Whether `ticket` is still in its handshake (not ended, nor expired).
    pub fn in_handshake(&self, ticket: Ticket) -> bool {
        matches!(self.conns.get(&ticket), Some(Stage::Handshake { .. }))
    }

    /// A handshake ended without a HELLO: the client closed, failed or was
    /// too slow, or sent a malformed one (the front end refuses that with
    /// the decoder's error). Idempotent.
    pub fn handshake_ended(&mut self, ticket: Ticket) {
        if let Some(Stage::Handshake { uid, .. }) = self.conns.get(&ticket) {
            self.startups.end(*uid);
            self.conns.remove(&ticket);
        }
    }

    /// `ticket`'s HELLO arrived, at `now`: what it gets.
    pub fn hello(&mut self, ticket: Ticket, peer: &Peer, hello: &Hello, now: Instant) -> Answer {
        self.handshake_ended(ticket);
        match policy::judge(&self.opts, &self.name, hello, peer, now) {
            Verdict::Refuse(code, reason) => Answer::Refuse(code, reason),
            Verdict::Describe(allowed) => Answer::Describe {
                desc: self.description(allowed),
                security: self.opts.security.to_string(),
            },
            Verdict::Connect { granted, patience } => {
                match self.admission.arrive(ticket, patience) {
                    Arrival::Granted => Answer::Connect {
                        desc: self.ok_description(granted, hello),
                        granted,
                    },
                    Arrival::Busy => {
                        Answer::Refuse(ErrorCode::PipeBusy, policy::BUSY_REASON.to_string())
                    }
                    Arrival::Queued => {
                        let uid = peer.cred.user.0;
                        if let Err(r) = self.waiters.begin(uid) {
                            self.admission.cancel(ticket);
                            return Answer::Refuse(ErrorCode::PipeBusy, r.waiting_reason());
                        }
                        let hello = hello.clone();
                        let stage = Stage::Waiting {
                            hello,
                            granted,
                            uid,
                        };
                        self.conns.insert(ticket, stage);
                        Answer::Wait
                    }
                }
            }
        }
    }

    /// The application accepted `n` connections: the waiters that now take
    /// instances, in order.
    pub fn accepted(&mut self, n: u32) -> Vec<Grant> {
        let tickets = self.admission.accepted(n);
        self.grants(tickets)
    }

    /// `n` connections gave their instances back: the waiters that take
    /// them, in order.
    pub fn released(&mut self, n: u32) -> Vec<Grant> {
        let mut tickets = Vec::new();
        for _ in 0..n {
            tickets.extend(self.admission.release());
        }
        self.grants(tickets)
    }

    /// A connection given an instance ([`Answer::Connect`] or a [`Grant`])
    /// was gone before its OK went out: its instance goes to the next
    /// waiters.
    pub fn grant_failed(&mut self) -> Vec<Grant> {
        let tickets = self.admission.release_unaccepted();
        self.grants(tickets)
    }

    /// A waiter hung up.
    pub fn waiter_left(&mut self, ticket: Ticket) {
        if let Some(Stage::Waiting { uid, .. }) = self.conns.get(&ticket) {
            self.waiters.end(*uid);
            self.conns.remove(&ticket);
            self.admission.cancel(ticket);
        }
    }

    /// What has run out at `now`.
    pub fn expire(&mut self, now: Instant) -> Expired {
        let silent: Vec<Ticket> = self
            .conns
            .iter()
            .filter(|(_, s)| matches!(s, Stage::Handshake { deadline: Some(d), .. } if *d <= now))
            .map(|(t, _)| *t)
            .collect();
        for t in &silent {
            self.handshake_ended(*t);
        }
        let timed_out = self.admission.expire(now);
        for t in &timed_out {
            if let Some(Stage::Waiting { uid, .. }) = self.conns.remove(t) {
                self.waiters.end(uid);
            }
        }
        Expired { silent, timed_out }
    }

    /// The earliest instant at which something runs out.
    pub fn next_deadline(&self) -> Option<Instant> {
        let handshakes = self.conns.values().filter_map(|s| match s {
            Stage::Handshake { deadline, .. } => *deadline,
            Stage::Waiting { .. } => None,
        });
        handshakes.chain(self.admission.next_deadline()).min()
    }

    /// A front end's turn at `now`: whether it accepts connections (not
    /// while `paused_until`, which is cleared once past), and when it must
    /// wake at the latest (a deadline here, or the pause's end).
    pub fn turn(
        &self,
        paused_until: &mut Option<Instant>,
        now: Instant,
    ) -> (bool, Option<Instant>) {
        let accepting = paused_until.is_none_or(|t| now >= t);
        if accepting {
            *paused_until = None;
        }
        let wake = self.next_deadline().into_iter().chain(*paused_until).min();
        (accepting, wake)
    }

    /// Connections holding an instance.
    pub fn active(&self) -> u32 {
        self.admission.active()
    }

    /// Clients waiting for an instance.
    pub fn waiting(&self) -> usize {
        self.admission.waiting()
    }

    /// The refusal a waiter whose time ran out gets.
    pub fn timeout_refusal() -> (ErrorCode, &'static str) {
        (ErrorCode::Timeout, policy::TIMEOUT_REASON)
    }

    fn description(&self, granted: Access) -> PipeDescription {
        policy::description(
            &self.opts,
            &self.name,
            granted,
            self.admission.active(),
            self.admission.waiting(),
        )
    }

    /// An OK's description: says whether the gateway's offer to hand the
    /// connection over is taken.
    fn ok_description(&self, granted: Access, hello: &Hello) -> PipeDescription {
        let mut desc = self.description(granted);
        desc.handed_over = policy::takes_hand_off(&self.opts, hello);
        desc
    }

    fn grants(&mut self, tickets: Vec<Ticket>) -> Vec<Grant> {
        let mut out = Vec::with_capacity(tickets.len());
        for ticket in tickets {
            match self.conns.remove(&ticket) {
                Some(Stage::Waiting {
                    hello,
                    granted,
                    uid,
                }) => {
                    self.waiters.end(uid);
                    out.push(Grant {
                        ticket,
                        desc: self.ok_description(granted, &hello),
                        hello,
                        granted,
                    });
                }
                // A waiter the core no longer knows (it left): its instance
                // goes on at once.
                _ => {
                    let more = self.admission.release_unaccepted();
                    out.extend(self.grants(more));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::info::PeerCredentials;
    use crate::proto::handshake::{HelloKind, WAIT_FOREVER, WAIT_NONE};
    use crate::types::{ImpersonationLevel, ReadMode};
    use std::time::Duration;

    fn peer(uid: u32) -> Peer {
        Peer {
            cred: PeerCredentials {
                pid: 100 + uid,
                user: crate::LocalUser(uid),
                group: crate::LocalGroup(uid),
            },
            groups: Vec::new(),
            server_uid: 0,
        }
    }

    fn hello(wait_ms: u32) -> Hello {
        Hello {
            kind: HelloKind::Connect,
            access: None,
            read_mode: ReadMode::Message,
            impersonation: ImpersonationLevel::Impersonation,
            wait_ms,
            max_message: 1024,
            pipelined: false,
            name: "p".into(),
            principal: String::new(),
            computer: String::new(),
            local_user: None,
            local_groups: Vec::new(),
            hand_off: false,
        }
    }

    fn core(opts: &mut ServerOptions) -> AcceptorCore {
        AcceptorCore::new(PipeName::parse("p").unwrap(), opts.clone(), 0)
    }

    /// Connects a client of the server's own user: its ticket and answer.
    fn connect(c: &mut AcceptorCore, wait_ms: u32, now: Instant) -> (Ticket, Answer) {
        let t = c.arrive(&peer(0), None).unwrap();
        (t, c.hello(t, &peer(0), &hello(wait_ms), now))
    }

    /// A ticket is in its handshake from its arrival until its HELLO or its
    /// deadline, and not after.
    #[test]
    fn a_ticket_is_in_its_handshake_until_its_hello_or_its_deadline() {
        let now = Instant::now();
        let mut c = core(&mut ServerOptions::new());
        let late = c
            .arrive(&peer(0), Some(now + Duration::from_millis(5)))
            .unwrap();
        let greets = c.arrive(&peer(0), None).unwrap();
        assert!(c.in_handshake(late) && c.in_handshake(greets));
        c.hello(greets, &peer(0), &hello(WAIT_NONE), now);
        assert!(!c.in_handshake(greets));
        assert_eq!(c.expire(now + Duration::from_millis(6)).silent, vec![late]);
        assert!(!c.in_handshake(late));
    }

    /// A turn under a pause does not accept and wakes at the pause's end
    /// (or a handshake's deadline before it); past the pause it accepts and
    /// the pause is gone.
    #[test]
    fn a_turn_accepts_only_past_a_pause_and_wakes_at_the_earliest_time() {
        let now = Instant::now();
        let mut c = core(&mut ServerOptions::new());
        let pause = now + Duration::from_millis(100);
        let mut paused = Some(pause);
        assert_eq!(c.turn(&mut paused, now), (false, Some(pause)));
        assert_eq!(paused, Some(pause));
        let handshake = now + Duration::from_millis(50);
        c.arrive(&peer(0), Some(handshake)).unwrap();
        assert_eq!(c.turn(&mut paused, now), (false, Some(handshake)));
        let later = pause + Duration::from_millis(1);
        assert_eq!(c.turn(&mut paused, later), (true, Some(handshake)));
        assert_eq!(paused, None);
    }

    #[test]
    fn the_instance_limit_then_waiters_first_come_first_served() {
        let now = Instant::now();
        let mut c = core(ServerOptions::new().max_instances(1));
        let (_, a) = connect(&mut c, WAIT_NONE, now);
        assert!(matches!(
            a,
            Answer::Connect {
                granted: Access::ReadWrite,
                ..
            }
        ));
        let (_, busy) = connect(&mut c, WAIT_NONE, now);
        assert!(matches!(busy, Answer::Refuse(ErrorCode::PipeBusy, _)));
        let (w1, a1) = connect(&mut c, WAIT_FOREVER, now);
        let (w2, a2) = connect(&mut c, WAIT_FOREVER, now);
        assert_eq!((a1, a2), (Answer::Wait, Answer::Wait));
        assert_eq!(c.waiting(), 2);
        // The application accepts the first, which later closes.
        assert!(c.accepted(1).is_empty());
        let next = c.released(1);
        assert_eq!(next.iter().map(|g| g.ticket).collect::<Vec<_>>(), vec![w1]);
        assert_eq!(next[0].desc.cur_instances, 1);
        c.accepted(1);
        assert_eq!(c.released(1)[0].ticket, w2);
    }

    #[test]
    fn a_waiter_that_left_is_skipped_and_its_turn_passes_on() {
        let now = Instant::now();
        let mut c = core(ServerOptions::new().max_instances(1));
        connect(&mut c, WAIT_NONE, now);
        c.accepted(1);
        let (w1, _) = connect(&mut c, WAIT_FOREVER, now);
        let (w2, _) = connect(&mut c, WAIT_FOREVER, now);
        c.waiter_left(w1);
        assert_eq!(c.released(1)[0].ticket, w2);
        // w2's OK could not go out (it hung up at the last moment): the
        // instance is free again, and a newcomer takes it.
        assert!(c.grant_failed().is_empty());
        assert_eq!(c.active(), 0);
        assert!(matches!(
            connect(&mut c, WAIT_NONE, now).1,
            Answer::Connect { .. }
        ));
    }

    /// A grant racing a timeout: a waiter whose time ran out is refused and
    /// forgotten before a release could hand it the instance.
    #[test]
    fn a_grant_racing_a_timeout_goes_to_the_next_waiter() {
        let now = Instant::now();
        let mut c = core(ServerOptions::new().max_instances(1));
        connect(&mut c, WAIT_NONE, now);
        c.accepted(1);
        let (short, _) = connect(&mut c, 10, now);
        let (long, _) = connect(&mut c, WAIT_FOREVER, now);
        let later = now + Duration::from_millis(10);
        let expired = c.expire(later);
        assert_eq!(expired.timed_out, vec![short]);
        assert_eq!(c.released(1)[0].ticket, long);
    }

    #[test]
    fn handshake_deadlines_and_caps() {
        let now = Instant::now();
        let mut opts = ServerOptions::new();
        opts.max_handshakes_per_user(2);
        let mut c = core(&mut opts);
        let d = Some(now + Duration::from_secs(5));
        let a = c.arrive(&peer(1000), d).unwrap();
        c.arrive(&peer(1000), d).unwrap();
        let refused = c.arrive(&peer(1000), d).unwrap_err();
        assert_eq!(refused.0, ErrorCode::PipeBusy);
        // The server's own user is not counted.
        for _ in 0..10 {
            c.arrive(&peer(0), None).unwrap();
        }
        assert_eq!(c.next_deadline(), d);
        let expired = c.expire(now + Duration::from_secs(5));
        assert_eq!(expired.silent.len(), 2);
        assert!(expired.silent.contains(&a));
        // Their slots are free again; ending one twice changes nothing.
        c.handshake_ended(a);
        c.arrive(&peer(1000), d).unwrap();
        c.arrive(&peer(1000), d).unwrap();
    }

    /// Clients of other users waiting for an instance are capped as their
    /// handshakes are: each holds a descriptor while it waits.
    #[test]
    fn other_users_waiters_are_capped() {
        let now = Instant::now();
        let mut opts = ServerOptions::new();
        opts.max_instances(1).max_handshakes_per_user(2);
        let mut c = core(&mut opts);
        connect(&mut c, WAIT_NONE, now);
        let wait = |c: &mut AcceptorCore, uid| {
            let t = c.arrive(&peer(uid), None).unwrap();
            let mut h = hello(WAIT_FOREVER);
            h.access = Some(Access::Read);
            (t, c.hello(t, &peer(uid), &h, now))
        };
        let (first, a) = wait(&mut c, 1000);
        assert_eq!(a, Answer::Wait);
        assert_eq!(wait(&mut c, 1000).1, Answer::Wait);
        assert!(matches!(
            wait(&mut c, 1000).1,
            Answer::Refuse(ErrorCode::PipeBusy, _)
        ));
        assert_eq!(c.waiting(), 2, "the refused one is not queued");
        // The server's own user is not counted; a waiter that leaves frees
        // its place.
        assert_eq!(connect(&mut c, WAIT_FOREVER, now).1, Answer::Wait);
        c.waiter_left(first);
        assert_eq!(wait(&mut c, 1000).1, Answer::Wait);
    }

    #[test]
    fn a_user_granted_nothing_is_refused_at_accept() {
        let mut opts = ServerOptions::new();
        opts.security("allow owner=full".parse().unwrap());
        let mut c = core(&mut opts);
        let (code, reason) = c.arrive(&peer(65534), None).unwrap_err();
        assert_eq!(code, ErrorCode::AccessDenied);
        assert!(reason.contains("65534"), "{reason}");
        assert!(c.arrive(&peer(0), None).is_ok());
    }

    /// `first_instance` and the wire checks are the policy's: a wrong name
    /// is refused, a query is described and takes nothing.
    #[test]
    fn queries_take_no_instance_and_wrong_names_are_refused() {
        let now = Instant::now();
        let mut c = core(ServerOptions::new().max_instances(1));
        let t = c.arrive(&peer(0), None).unwrap();
        let mut q = hello(WAIT_NONE);
        q.kind = HelloKind::Query;
        assert!(matches!(
            c.hello(t, &peer(0), &q, now),
            Answer::Describe { .. }
        ));
        let t = c.arrive(&peer(0), None).unwrap();
        let mut wrong = hello(WAIT_NONE);
        wrong.name = "other".into();
        assert!(matches!(
            c.hello(t, &peer(0), &wrong, now),
            Answer::Refuse(ErrorCode::FileNotFound, _)
        ));
        assert_eq!(c.active(), 0);
        assert!(matches!(
            connect(&mut c, WAIT_NONE, now).1,
            Answer::Connect { .. }
        ));
    }
}
