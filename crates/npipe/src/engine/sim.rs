//! The engine's two halves against each other with no sockets: clients
//! (the engine's [`ConnectCore`], as both real clients drive it, and the
//! handshake rules of `connect_core` alone) and a server made of
//! [`AcceptorCore`], joined by byte queues standing in for connections, on a
//! clock the test moves. Every byte crosses the wire encoded and is decoded
//! on the other side, so these tests pin the protocol as both ends speak
//! it, not only the decisions.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::connect_core;
use crate::engine::acceptor::{AcceptorCore, Answer, Grant};
use crate::engine::connect::{Action, ConnectCore};
use crate::error::{Error, ErrorCode, Result};
use crate::identity::LocalUser;
use crate::info::PeerCredentials;
use crate::name::PipeName;
use crate::options::{ClientOptions, ServerOptions};
use crate::policy::Peer;
use crate::proto::admission::Ticket;
use crate::proto::handshake::{Hello, PipeDescription, Reply};
use crate::types::Wait;

/// One simulated connection's two byte streams and what became of it.
#[derive(Default)]
struct Wire {
    to_server: Vec<u8>,
    to_client: Vec<u8>,
    /// The server closed its end.
    closed: bool,
}

/// A server (the acceptor core) and its clients, on a simulated clock.
struct Sim {
    name: PipeName,
    core: AcceptorCore,
    now: Instant,
    wires: HashMap<Ticket, Wire>,
    /// Connections told OK, in order, waiting for the application.
    ready: Vec<Ticket>,
    handshake_timeout: Duration,
    /// Whether the pipe exists (a connect finds it).
    serving: bool,
    /// The server reads no HELLO (hung).
    mute: bool,
    last_hello: Option<Hello>,
}

/// What a client made of the server's answer.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Connected(PipeDescription),
    Refused(ErrorCode),
    /// Nothing yet: still waiting for an answer.
    Pending,
}

impl Sim {
    fn new(opts: &ServerOptions) -> Sim {
        let name = PipeName::parse("sim").unwrap();
        Sim {
            core: AcceptorCore::new(name.clone(), opts.clone(), 0),
            name,
            now: Instant::now(),
            wires: HashMap::new(),
            ready: Vec::new(),
            handshake_timeout: opts.handshake_timeout,
            serving: true,
            mute: false,
            last_hello: None,
        }
    }

    fn peer() -> Peer {
        Peer {
            cred: PeerCredentials {
                pid: 4242,
                user: crate::LocalUser(1000),
                group: crate::LocalGroup(1000),
            },
            groups: Vec::new(),
            server_uid: 1000,
        }
    }

    /// A client connects (the kernel's accept); its HELLO is not sent yet.
    fn connect(&mut self) -> Ticket {
        let deadline = self.now + self.handshake_timeout;
        let ticket = self.core.arrive(&Self::peer(), Some(deadline)).unwrap();
        self.wires.insert(ticket, Wire::default());
        ticket
    }

    /// The client sends its HELLO, as `connect_core` builds it.
    fn send_hello(&mut self, t: Ticket, wait: Wait) {
        let mut opts = ClientOptions::new();
        opts.wait(wait);
        let bytes = connect_core::opening(&self.name, &opts, None).unwrap();
        self.wires.get_mut(&t).unwrap().to_server.extend(bytes);
        self.server_reads(t);
    }

    /// The server reads what arrived and acts on a whole HELLO.
    fn server_reads(&mut self, t: Ticket) {
        let wire = self.wires.get_mut(&t).unwrap();
        let Some((hello, used)) = Hello::decode(&wire.to_server).unwrap() else {
            return;
        };
        wire.to_server.drain(..used);
        let answer = self.core.hello(t, &Self::peer(), &hello, self.now);
        self.last_hello = Some(hello);
        match answer {
            Answer::Refuse(code, reason) => self.reply(
                t,
                Reply::Refused {
                    code: code.win32(),
                    reason,
                },
            ),
            Answer::Describe { desc, security } => self.reply(t, Reply::Info { desc, security }),
            Answer::Connect { desc, .. } => self.ok(t, desc),
            Answer::Wait => {}
        }
    }

    fn reply(&mut self, t: Ticket, reply: Reply) {
        let wire = self.wires.get_mut(&t).unwrap();
        reply.encode(&mut wire.to_client).unwrap();
        wire.closed = !matches!(reply, Reply::Connected(_));
    }

    fn ok(&mut self, t: Ticket, desc: PipeDescription) {
        self.reply(t, Reply::Connected(desc));
        self.ready.push(t);
    }

    /// Grants the core made: each waiter still there is told OK.
    fn grant(&mut self, grants: Vec<Grant>) {
        for g in grants {
            self.ok(g.ticket, g.desc);
        }
    }

    /// The application takes the next connection from the queue.
    fn accept(&mut self) -> Ticket {
        let t = self.ready.remove(0);
        let grants = self.core.accepted(1);
        self.grant(grants);
        t
    }

    /// A server end closes (its instance is given back).
    fn close(&mut self, t: Ticket) {
        self.wires.get_mut(&t).unwrap().closed = true;
        let grants = self.core.released(1);
        self.grant(grants);
    }

    /// The clock moves on; what ran out is dealt with.
    fn advance(&mut self, by: Duration) {
        self.now += by;
        let expired = self.core.expire(self.now);
        for t in expired.silent {
            self.wires.get_mut(&t).unwrap().closed = true;
        }
        let (code, reason) = AcceptorCore::timeout_refusal();
        for t in expired.timed_out {
            self.reply(
                t,
                Reply::Refused {
                    code: code.win32(),
                    reason: reason.to_string(),
                },
            );
        }
    }

    /// What the client reads from its connection, as the client reads it.
    fn outcome(&mut self, t: Ticket) -> Outcome {
        let name = self.name.clone();
        let wire = self.wires.get_mut(&t).unwrap();
        match connect_core::take_reply(&mut wire.to_client).unwrap() {
            Some(reply) => {
                let settled: Result<_> =
                    connect_core::settle(&name, Ok((reply, Vec::new())), Ok(()));
                match settled {
                    Ok((desc, _)) => Outcome::Connected(desc),
                    Err(e) => Outcome::Refused(e.code()),
                }
            }
            None if wire.closed => Outcome::Refused(connect_core::closed_before_reply().code()),
            None => Outcome::Pending,
        }
    }

    fn connected(&mut self, t: Ticket) -> PipeDescription {
        match self.outcome(t) {
            Outcome::Connected(desc) => desc,
            other => panic!("expected a connection, got {other:?}"),
        }
    }
}

fn forever() -> Wait {
    Wait::Forever
}

#[test]
fn the_first_client_takes_the_first_instance() {
    let mut sim = Sim::new(&ServerOptions::new());
    let a = sim.connect();
    sim.send_hello(a, Wait::NoWait);
    let desc = sim.connected(a);
    assert_eq!(desc.cur_instances, 1, "the first instance");
    assert_eq!(sim.accept(), a);
    let b = sim.connect();
    sim.send_hello(b, Wait::NoWait);
    assert_eq!(sim.connected(b).cur_instances, 2);
}

#[test]
fn the_instance_limit_refuses_a_client_that_will_not_wait() {
    let mut sim = Sim::new(ServerOptions::new().max_instances(1));
    let a = sim.connect();
    sim.send_hello(a, Wait::NoWait);
    sim.connected(a);
    let b = sim.connect();
    sim.send_hello(b, Wait::NoWait);
    assert_eq!(sim.outcome(b), Outcome::Refused(ErrorCode::PipeBusy));
    // Freed, the instance takes the next client.
    sim.accept();
    sim.close(a);
    let c = sim.connect();
    sim.send_hello(c, Wait::NoWait);
    assert_eq!(sim.connected(c).cur_instances, 1);
}

#[test]
fn waiters_take_freed_instances_first_come_first_served() {
    let mut sim = Sim::new(ServerOptions::new().max_instances(1));
    let a = sim.connect();
    sim.send_hello(a, Wait::NoWait);
    let waiters: Vec<Ticket> = (0..3)
        .map(|_| {
            let w = sim.connect();
            sim.send_hello(w, forever());
            w
        })
        .collect();
    for &w in &waiters {
        assert_eq!(sim.outcome(w), Outcome::Pending, "queued, unanswered");
    }
    let mut current = sim.accept();
    assert_eq!(current, a);
    for &w in &waiters {
        sim.close(current);
        sim.connected(w);
        current = sim.accept();
        assert_eq!(current, w, "in arrival order");
    }
    assert_eq!(sim.core.waiting(), 0);
}

#[test]
fn a_silent_client_is_dropped_at_the_handshake_deadline() {
    let mut sim = Sim::new(ServerOptions::new().handshake_timeout(Duration::from_secs(5)));
    let silent = sim.connect();
    sim.advance(Duration::from_millis(4_999));
    assert_eq!(sim.outcome(silent), Outcome::Pending);
    sim.advance(Duration::from_millis(1));
    assert_eq!(
        sim.outcome(silent),
        Outcome::Refused(ErrorCode::BrokenPipe),
        "closed without a word"
    );
    // A HELLO just before the deadline still counts.
    let late = sim.connect();
    sim.advance(Duration::from_millis(4_999));
    sim.send_hello(late, Wait::NoWait);
    sim.connected(late);
    sim.advance(Duration::from_secs(60));
    assert!(
        !sim.wires[&late].closed,
        "a connected client has no deadline"
    );
    assert_eq!(sim.core.active(), 1);
}

#[test]
fn a_wait_runs_out_with_sem_timeout() {
    let mut sim = Sim::new(ServerOptions::new().max_instances(1));
    let a = sim.connect();
    sim.send_hello(a, Wait::NoWait);
    let w = sim.connect();
    sim.send_hello(w, Wait::Timeout(Duration::from_millis(50)));
    sim.advance(Duration::from_millis(49));
    assert_eq!(sim.outcome(w), Outcome::Pending);
    sim.advance(Duration::from_millis(1));
    assert_eq!(sim.outcome(w), Outcome::Refused(ErrorCode::Timeout));
    assert_eq!(sim.core.waiting(), 0);
}

/// An instance frees at the very moment a waiter's time runs out: whichever
/// the front end sees first wins, and the client gets exactly one answer,
/// with the instance counted once either way.
#[test]
fn a_grant_racing_a_timeout_gives_one_answer() {
    for release_first in [true, false] {
        let mut sim = Sim::new(ServerOptions::new().max_instances(1));
        let a = sim.connect();
        sim.send_hello(a, Wait::NoWait);
        assert_eq!(sim.accept(), a);
        let w = sim.connect();
        sim.send_hello(w, Wait::Timeout(Duration::from_millis(50)));
        let deadline = Duration::from_millis(50);
        if release_first {
            sim.now += deadline;
            sim.close(a);
            sim.advance(Duration::ZERO);
        } else {
            sim.advance(deadline);
            sim.close(a);
        }
        let outcome = sim.outcome(w);
        assert!(
            sim.wires[&w].to_client.is_empty(),
            "one answer only ({release_first})"
        );
        if release_first {
            assert!(matches!(outcome, Outcome::Connected(_)), "{outcome:?}");
            assert_eq!(sim.core.active(), 1, "the waiter holds the instance");
        } else {
            assert_eq!(outcome, Outcome::Refused(ErrorCode::Timeout));
            assert_eq!(sim.core.active(), 0, "the freed instance stays free");
        }
        assert_eq!(sim.core.waiting(), 0);
        // Either way the next client finds the count right.
        let next = sim.connect();
        sim.send_hello(next, Wait::NoWait);
        if release_first {
            assert_eq!(sim.outcome(next), Outcome::Refused(ErrorCode::PipeBusy));
        } else {
            assert_eq!(sim.connected(next).cur_instances, 1);
        }
    }
}

#[test]
fn a_waiter_that_leaves_passes_its_turn_on() {
    let mut sim = Sim::new(ServerOptions::new().max_instances(1));
    let a = sim.connect();
    sim.send_hello(a, Wait::NoWait);
    sim.accept();
    let gone = sim.connect();
    sim.send_hello(gone, forever());
    let next = sim.connect();
    sim.send_hello(next, forever());
    sim.core.waiter_left(gone);
    sim.close(a);
    assert_eq!(sim.outcome(gone), Outcome::Pending, "told nothing");
    sim.connected(next);
}

/// A client driven by the engine's [`ConnectCore`] against the simulated
/// server: the same sequence both real clients drive.
struct Client {
    core: ConnectCore<'static>,
    /// What it waits on, once [`Sim::step`] stops.
    action: Option<Action>,
    ticket: Option<Ticket>,
}

impl Sim {
    fn client(&mut self, opts: &ClientOptions) -> Client {
        let mut core = ConnectCore::new(&self.name.clone(), opts, None, self.now);
        let action = Some(core.start());
        let mut c = Client {
            core,
            action,
            ticket: None,
        };
        self.step(&mut c);
        c
    }

    /// Runs the client until it waits on something the test moves: an
    /// answer not there yet, a pause, or the end.
    fn step(&mut self, c: &mut Client) {
        loop {
            let now = self.now;
            let next = match c.action.take().expect("an action") {
                Action::Connect if !self.serving => c
                    .core
                    .failed(Error::new(ErrorCode::FileNotFound, "no such pipe"), now),
                Action::Connect => {
                    c.ticket = Some(self.connect());
                    let cred = c.core.needs_server_cred().then(|| Sim::peer().cred);
                    c.core.connected(cred, |_| None)
                }
                Action::Send(bytes) => {
                    let t = c.ticket.unwrap();
                    self.wires.get_mut(&t).unwrap().to_server.extend(bytes);
                    if !self.mute {
                        self.server_reads(t);
                    }
                    c.core.sent(Ok(()), now)
                }
                Action::Receive { deadline } => {
                    let wire = self.wires.get_mut(&c.ticket.unwrap()).unwrap();
                    if !wire.to_client.is_empty() {
                        let n = wire.to_client.len();
                        c.core.reply_buffer().append(&mut wire.to_client);
                        c.core.received(Ok(n), now)
                    } else if wire.closed {
                        c.core.received(Ok(0), now)
                    } else if deadline.is_some_and(|d| now >= d) {
                        c.core.timed_out(now)
                    } else {
                        c.action = Some(Action::Receive { deadline });
                        return;
                    }
                }
                waiting @ (Action::Pause(_) | Action::Done(_) | Action::Fail(_)) => {
                    c.action = Some(waiting);
                    return;
                }
            };
            c.action = Some(next);
        }
    }

    /// The client's pause is over: its next try.
    fn resume(&mut self, c: &mut Client) {
        assert!(matches!(c.action, Some(Action::Pause(_))), "{:?}", c.action);
        c.action = Some(c.core.resume(self.now));
        self.step(c);
    }

    /// The hello the server last decoded.
    fn last_wait_ms(&self) -> u32 {
        self.last_hello.as_ref().expect("a hello").wait_ms
    }
}

fn failed_with(c: &Client) -> ErrorCode {
    match &c.action {
        Some(Action::Fail(e)) => e.code(),
        other => panic!("expected a failure, got {other:?}"),
    }
}

fn waiting_for_server(wait: Wait) -> ClientOptions {
    let mut opts = ClientOptions::new();
    opts.wait(wait).wait_for_server(true);
    opts
}

/// A remote client's tries each cost its gateway a TLS handshake: the
/// engine pauses longer after each one it finds no pipe behind, where a
/// local client keeps its short pause.
#[cfg(all(feature = "remote", target_os = "linux"))]
#[test]
fn a_remote_client_waiting_for_its_pipe_backs_off() {
    let now = Instant::now();
    let pauses = |name: &str| {
        let name = PipeName::parse(name).unwrap();
        let opts = waiting_for_server(Wait::Forever);
        let (mut core, mut action) = ConnectCore::begin(&name, &opts, None, now);
        let mut seen = Vec::new();
        for _ in 0..3 {
            assert!(matches!(action, Action::Connect), "{action:?}");
            let missing = Error::new(ErrorCode::FileNotFound, "no such pipe");
            match core.failed(missing, now) {
                Action::Pause(p) => seen.push(p.as_millis()),
                other => panic!("expected a pause, got {other:?}"),
            }
            action = core.resume(now);
        }
        seen
    };
    assert_eq!(pauses(r"\\gateway-host\pipe\x"), [10, 20, 40]);
    assert_eq!(pauses(r"\\.\pipe\x"), [10, 10, 10]);
}

#[test]
fn a_waiting_client_finds_a_pipe_that_appears_and_waits_only_what_is_left() {
    let mut sim = Sim::new(&ServerOptions::new());
    sim.serving = false;
    let mut c = sim.client(&waiting_for_server(Wait::Timeout(Duration::from_secs(1))));
    assert!(matches!(c.action, Some(Action::Pause(_))), "{:?}", c.action);
    sim.now += Duration::from_millis(300);
    sim.resume(&mut c);
    assert!(matches!(c.action, Some(Action::Pause(_))), "still missing");
    sim.serving = true;
    sim.now += Duration::from_millis(100);
    sim.resume(&mut c);
    assert!(matches!(c.action, Some(Action::Done(_))), "{:?}", c.action);
    assert_eq!(sim.last_wait_ms(), 600, "the wait shrank by what passed");
}

#[test]
fn a_waiting_client_gives_up_when_its_wait_is_over() {
    let mut sim = Sim::new(&ServerOptions::new());
    sim.serving = false;
    let mut c = sim.client(&waiting_for_server(Wait::Timeout(Duration::from_millis(
        50,
    ))));
    sim.now += Duration::from_millis(50);
    sim.resume(&mut c);
    assert_eq!(failed_with(&c), ErrorCode::FileNotFound);
}

#[test]
fn a_client_that_does_not_wait_for_the_server_fails_at_once() {
    let mut sim = Sim::new(&ServerOptions::new());
    sim.serving = false;
    let c = sim.client(&ClientOptions::new());
    assert_eq!(failed_with(&c), ErrorCode::FileNotFound);
}

#[test]
fn a_server_of_another_user_is_refused_before_a_byte_goes_out() {
    let mut sim = Sim::new(&ServerOptions::new());
    let mut opts = ClientOptions::new();
    opts.expect_server_user(LocalUser::ROOT);
    let c = sim.client(&opts);
    assert_eq!(failed_with(&c), ErrorCode::AccessDenied);
    assert!(sim.wires[&c.ticket.unwrap()].to_server.is_empty());
}

#[test]
fn a_silent_server_times_the_client_out_after_its_wait_and_some() {
    let mut sim = Sim::new(&ServerOptions::new());
    sim.mute = true;
    let mut opts = ClientOptions::new();
    opts.wait(Wait::Timeout(Duration::from_secs(1)));
    let mut c = sim.client(&opts);
    sim.now += Duration::from_secs(1);
    sim.step(&mut c);
    assert!(matches!(c.action, Some(Action::Receive { .. })), "not yet");
    sim.now += Duration::from_secs(5);
    sim.step(&mut c);
    assert_eq!(failed_with(&c), ErrorCode::Timeout);
}

#[test]
fn a_read_timeout_is_the_silence_a_client_allows_after_its_wait() {
    let mut sim = Sim::new(&ServerOptions::new());
    sim.mute = true;
    let mut opts = ClientOptions::new();
    opts.wait(Wait::Timeout(Duration::from_secs(1)))
        .read_timeout(Duration::from_millis(200));
    let mut c = sim.client(&opts);
    sim.now += Duration::from_millis(1100);
    sim.step(&mut c);
    assert!(matches!(c.action, Some(Action::Receive { .. })), "not yet");
    sim.now += Duration::from_millis(100);
    sim.step(&mut c);
    assert_eq!(failed_with(&c), ErrorCode::Timeout, "1.2 s, not 6 s");
}

#[test]
fn busy_at_once_or_connected_when_an_instance_frees() {
    let mut sim = Sim::new(ServerOptions::new().max_instances(1));
    let first = sim.client(&ClientOptions::new());
    assert!(matches!(first.action, Some(Action::Done(_))));
    let mut no_wait = ClientOptions::new();
    no_wait.wait(Wait::NoWait);
    assert_eq!(failed_with(&sim.client(&no_wait)), ErrorCode::PipeBusy);
    let mut forever = ClientOptions::new();
    forever.wait(Wait::Forever);
    let mut waiting = sim.client(&forever);
    assert!(matches!(
        waiting.action,
        Some(Action::Receive { deadline: None })
    ));
    let taken = sim.accept();
    sim.close(taken);
    sim.step(&mut waiting);
    match &waiting.action {
        Some(Action::Done(c)) => assert_eq!(c.setup.cur_instances, 1),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_server_gone_mid_handshake_is_tried_again_while_the_wait_lasts() {
    let mut sim = Sim::new(&ServerOptions::new());
    sim.mute = true;
    let mut c = sim.client(&waiting_for_server(Wait::Timeout(Duration::from_secs(1))));
    sim.wires.get_mut(&c.ticket.unwrap()).unwrap().closed = true;
    sim.step(&mut c);
    assert!(matches!(c.action, Some(Action::Pause(_))), "{:?}", c.action);
    sim.mute = false;
    sim.resume(&mut c);
    assert!(matches!(c.action, Some(Action::Done(_))), "{:?}", c.action);
}
