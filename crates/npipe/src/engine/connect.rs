//! The client's connect as a state machine with no I/O (`CreateFile` with
//! `WaitNamedPipe`): every step between "open this name" and a connected
//! end, in the order both clients must take them. A front end asks for the
//! next [`Action`], does it (connect a socket, send, read, sleep), and
//! reports what happened; the machine decides what comes next: the server
//! refused or checked out, the answer is whole, a missing pipe is worth
//! another try, the wait is over.

use std::time::{Duration, Instant};

use crate::connect_core::{self, Attempts};
use crate::error::{Error, Result};
use crate::info::PeerCredentials;
use crate::name::PipeName;
use crate::options::ClientOptions;
use crate::proto::handshake::{Reply, REPLY_MAX};
use crate::stream_core::Setup;
use crate::types::ReadMode;

/// What the front end does next.
#[derive(Debug)]
pub(crate) enum Action {
    /// Connect a new socket to the pipe's name, then report
    /// [`ConnectCore::connected`] with the server's kernel credentials if
    /// [`ConnectCore::needs_server_cred`] (else `None`: they are read
    /// later, when asked), or [`ConnectCore::failed`].
    Connect,
    /// Send these bytes whole on the socket (HELLO, and a pipelined
    /// request), then report [`ConnectCore::sent`].
    Send(Vec<u8>),
    /// Read into [`ConnectCore::reply_buffer`], waiting no later than
    /// `deadline` (`None`: no limit), then report
    /// [`ConnectCore::received`] or [`ConnectCore::timed_out`].
    Receive {
        /// When the server counts as hung.
        deadline: Option<Instant>,
    },
    /// Drop the socket, sleep this long, then report
    /// [`ConnectCore::resume`] (a missing pipe tried again).
    Pause(Duration),
    /// Connected: build the end from this.
    Done(Connected),
    /// Give up with this error.
    Fail(Error),
}

/// A connected client end, but for its socket.
#[derive(Debug)]
pub(crate) struct Connected {
    pub setup: Setup,
    pub read_mode: ReadMode,
    /// The send buffer size the server's in-buffer hint asks for.
    pub send_buffer: Option<usize>,
    /// What the server sent behind its REPLY.
    pub leftover: Vec<u8>,
    /// The server took the shared memory offered with the HELLO.
    pub shared_memory: bool,
    /// The server wakes a client asleep on its socket (REPLY bit 1).
    pub socket_wakes: bool,
    /// The server takes shared memory offered in mid-stream (REPLY bit 3).
    pub late_offers: bool,
}

/// Where a connect stands.
#[derive(Debug)]
enum State {
    /// Waiting for the socket.
    Connecting,
    /// The opening is going out.
    Sending { cred: Option<PeerCredentials> },
    /// Reading the REPLY.
    Receiving {
        cred: Option<PeerCredentials>,
        sent: std::io::Result<()>,
        deadline: Option<Instant>,
    },
    /// Between two tries.
    Pausing,
    /// Done or failed: nothing more to do.
    Over,
}

/// A client's connect to one pipe name.
#[derive(Debug)]
pub(crate) struct ConnectCore<'a> {
    name: PipeName,
    opts: ClientOptions,
    /// The options of the try in progress (a timeout shrinks by what has
    /// passed).
    attempt: ClientOptions,
    attempts: Option<Attempts>,
    pipelined: Option<&'a [u8]>,
    reply: Vec<u8>,
    state: State,
}

impl<'a> ConnectCore<'a> {
    /// A connect to `name` with `opts` starting at `now`, sending
    /// `pipelined` as one message behind the HELLO if given.
    pub fn new(
        name: &PipeName,
        opts: &ClientOptions,
        pipelined: Option<&'a [u8]>,
        now: Instant,
    ) -> ConnectCore<'a> {
        let attempts = Attempts::new(opts, name.host().is_some(), now);
        let attempt = match &attempts {
            Some(a) => a.options(opts, now),
            None => opts.clone(),
        };
        ConnectCore {
            name: name.clone(),
            opts: opts.clone(),
            attempt,
            attempts,
            pipelined,
            reply: Vec::new(),
            state: State::Connecting,
        }
    }

    /// A connect to `name` started at `now`, and its first action.
    pub fn begin(
        name: &PipeName,
        opts: &ClientOptions,
        pipelined: Option<&'a [u8]>,
        now: Instant,
    ) -> (ConnectCore<'a>, Action) {
        let mut core = ConnectCore::new(name, opts, pipelined, now);
        let first = core.start();
        (core, first)
    }

    /// The first action.
    pub fn start(&mut self) -> Action {
        if let Err(e) = connect_core::check_reachable(&self.name, &self.attempt) {
            return self.fail(e);
        }
        self.state = State::Connecting;
        Action::Connect
    }

    /// Whether [`connected`](Self::connected) needs the server's kernel
    /// credentials now (to refuse a server of the wrong user before a byte
    /// goes out); otherwise the end reads them when first asked, one
    /// system call less per connect.
    pub fn needs_server_cred(&self) -> bool {
        self.attempt.expect_server.is_some()
    }

    /// The socket is connected to a server the kernel says is `cred` (if
    /// read); `user_name` names a uid for an error message.
    pub fn connected(
        &mut self,
        cred: Option<PeerCredentials>,
        user_name: impl Fn(u32) -> Option<String>,
    ) -> Action {
        if let Err(e) = connect_core::check_server(&self.name, &self.attempt, cred, user_name) {
            return self.fail(e);
        }
        let opening = connect_core::opening(&self.name, &self.attempt, self.pipelined);
        match opening {
            Ok(bytes) => {
                self.state = State::Sending { cred };
                Action::Send(bytes)
            }
            Err(e) => self.fail(e),
        }
    }

    /// The opening went out (or failed: the server may still have answered
    /// before it hung up, which says more), at `now`.
    pub fn sent(&mut self, sent: std::io::Result<()>, now: Instant) -> Action {
        let State::Sending { cred } = self.state else {
            return self.out_of_order("sent");
        };
        let deadline = connect_core::answer_deadline(self.attempt.wait, self.attempt.read_timeout)
            .and_then(|l| now.checked_add(l));
        self.reply = Vec::with_capacity(256);
        self.state = State::Receiving {
            cred,
            sent,
            deadline,
        };
        Action::Receive { deadline }
    }

    /// Where the front end reads the answer: spare capacity for a whole
    /// REPLY (read into it, then report how much with
    /// [`received`](Self::received)).
    pub fn reply_buffer(&mut self) -> &mut Vec<u8> {
        let room = REPLY_MAX.saturating_sub(self.reply.len());
        self.reply.reserve(room);
        &mut self.reply
    }

    /// The read reported `got` (0: the server closed, or an error), at
    /// `now`.
    pub fn received(&mut self, got: std::io::Result<usize>, now: Instant) -> Action {
        let State::Receiving { deadline, .. } = &self.state else {
            return self.out_of_order("received");
        };
        let deadline = *deadline;
        let answer = match got {
            Ok(0) => Err(connect_core::closed_before_reply()),
            Ok(_) => match connect_core::take_reply(&mut self.reply) {
                Ok(Some(reply)) => Ok(reply),
                Ok(None) => return Action::Receive { deadline },
                Err(e) => Err(e),
            },
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                return Action::Receive { deadline }
            }
            Err(e) => Err(Error::os(e, "reading the server's answer failed")),
        };
        self.answered(answer, now)
    }

    /// The read ended: with `got`, or with nothing by its deadline
    /// (`None`), at `now`.
    pub fn read_ended(&mut self, got: Option<std::io::Result<usize>>, now: Instant) -> Action {
        match got {
            Some(got) => self.received(got, now),
            None => self.timed_out(now),
        }
    }

    /// The deadline of [`Action::Receive`] passed with no whole answer.
    pub fn timed_out(&mut self, now: Instant) -> Action {
        self.answered(Err(connect_core::silent_server()), now)
    }

    /// The socket could not be made or connected (`e`), at `now`.
    pub fn failed(&mut self, e: Error, now: Instant) -> Action {
        self.retry_or_fail(e, now)
    }

    /// The pause is over, at `now`: the next try.
    pub fn resume(&mut self, now: Instant) -> Action {
        if !matches!(self.state, State::Pausing) {
            return self.out_of_order("resume");
        }
        if let Some(a) = &self.attempts {
            self.attempt = a.options(&self.opts, now);
        }
        self.state = State::Connecting;
        Action::Connect
    }

    fn answered(&mut self, answer: Result<Reply>, now: Instant) -> Action {
        let State::Receiving { cred, sent, .. } = std::mem::replace(&mut self.state, State::Over)
        else {
            return self.out_of_order("answer");
        };
        let leftover = std::mem::take(&mut self.reply);
        let settled = connect_core::settle(&self.name, answer.map(|r| (r, leftover)), sent);
        let done = settled.and_then(|(desc, leftover)| {
            let (shared_memory, socket_wakes, late_offers) =
                (desc.shared_memory, desc.socket_wakes, desc.late_offers);
            let (setup, read_mode, send_buffer) =
                connect_core::finish(&self.name, &self.attempt, cred, desc)?;
            Ok(Connected {
                setup,
                read_mode,
                send_buffer,
                leftover,
                shared_memory,
                socket_wakes,
                late_offers,
            })
        });
        match done {
            Ok(connected) => Action::Done(connected),
            Err(e) => self.retry_or_fail(e, now),
        }
    }

    fn retry_or_fail(&mut self, e: Error, now: Instant) -> Action {
        match self
            .attempts
            .as_mut()
            .and_then(|a| a.after_failure(&e, now))
        {
            Some(pause) => {
                self.state = State::Pausing;
                Action::Pause(pause)
            }
            None => self.fail(e),
        }
    }

    fn fail(&mut self, e: Error) -> Action {
        self.state = State::Over;
        Action::Fail(e)
    }

    fn out_of_order(&mut self, what: &str) -> Action {
        self.fail(Error::new(
            crate::ErrorCode::Other,
            format!("npipe bug: the client's connect was told `{what}` out of order"),
        ))
    }
}
