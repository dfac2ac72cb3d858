//! The server: a listener whose acceptor thread runs every handshake side by
//! side, and the server end of each connection.
//!
//! The acceptor owns the listening socket. It reads each client's HELLO
//! without blocking (a slow or silent client holds up no one and is dropped
//! after the handshake timeout), checks it, and asks [`Admission`] whether an
//! instance is free. Granted clients get OK and go to a queue that
//! [`PipeListener::accept`] takes from; waiting clients stay with the acceptor
//! until an instance frees or their wait runs out, when the acceptor tells
//! them *timeout*. The server decides every outcome and tells the client, so
//! a client is never handed to the application after it gave up.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Condvar};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::blocking::stream::PipeStream;
use crate::engine::acceptor::{AcceptorCore, Answer, Grant};
use crate::engine::ticket_map::TicketMap;
use crate::error::{Error, ErrorCode, Result};
use crate::fresh_connection::{
    self, out_of_descriptors, peer_of, refuse, send_reply, Arrived, FirstRead, ACCEPT_BATCH,
    FD_EXHAUSTED_PAUSE, HELLO_READ,
};
use crate::impersonation::Impersonation;
use crate::info::PipeInfo;
use crate::listener_state::{Carrier, ListenerState, Publication, Ready};
use crate::name::PipeName;
use crate::options::ServerOptions;
use crate::peer_process::ClientProcess;
use crate::pipe::{Pipe, ServerEnd};
use crate::policy::Peer;
use crate::proto::admission::Ticket;
use crate::proto::handshake::{Hello, PipeDescription, Reply};
use crate::server_instance::InstancePool;
use crate::shm::link::Link;
use crate::shm::transport::{PeerFd, ShmTransport};
use crate::sys::RecvFlagsLite;
use crate::sys::{self, Events, PollEntry, Socket, Waker};
use crate::types::Access;

/// Handshakes in progress from which the acceptor takes connections in
/// batches rather than one per wake-up.
const STORM_PENDING: usize = 8;

/// State shared by the listener, the acceptor thread and server ends.
#[derive(Debug)]
struct Shared {
    state: ListenerState,
    /// Signalled when a client joins `state.ready`.
    ready_cv: Condvar,
    /// Wakes the acceptor thread from its `poll`.
    waker: Waker,
    /// Connections the application took since the acceptor last looked.
    accepted: AtomicU32,
    /// Clients queued for an instance, as the acceptor last counted them.
    waiting: AtomicU32,
    shutdown: AtomicBool,
}

impl InstancePool for Shared {
    /// Gives an instance back. The acceptor is woken only if a client waits
    /// for one: otherwise it counts the release when it next looks (every
    /// arrival and query looks first), and waking it would cost two context
    /// switches per connection for nothing.
    ///
    /// Both sides use SeqCst: we count the release, then read `waiting`; the
    /// acceptor stores `waiting`, then reads the releases before it sleeps.
    /// So either we see the waiter and wake the acceptor, or it sees the
    /// release.
    fn release_instance(&self) {
        self.state.instances.release();
        if self.waiting.load(Ordering::SeqCst) > 0 {
            self.waker.wake();
        }
    }

    fn active_now(&self) -> u32 {
        self.state.instances.active_now()
    }
}

/// A named pipe server: the name, its instances, and the clients waiting to
/// be accepted. Made by [`ServerOptions::create`]; dropping it removes the
/// name (connections already accepted stay connected).
///
/// ```
/// use npipe::{ServerOptions, ClientOptions};
///
/// let name = format!("doc-listener-{}", std::process::id());
/// let listener = ServerOptions::new().create(&name)?;
///
/// let server = std::thread::spawn(move || -> npipe::Result<()> {
///     // ConnectNamedPipe, then echo one message
///     let mut conn = listener.accept()?;
///     let msg = conn.recv_message()?;
///     conn.write_message(&msg)
/// });
///
/// let reply = npipe::call(&name, b"hi", std::time::Duration::from_secs(1))?;
/// assert_eq!(reply, b"hi");
/// server.join().unwrap()?;
/// # Ok::<(), npipe::Error>(())
/// ```
#[derive(Debug)]
pub struct PipeListener {
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
    publication: Publication,
}

impl PipeListener {
    pub(crate) fn create(name: PipeName, opts: ServerOptions) -> Result<PipeListener> {
        let waker = Waker::new().map_err(|e| Error::os(e, "cannot create an eventfd"))?;
        let (publication, socket, server_uid) = Publication::create(&name, &opts)?;
        let shared = Arc::new(Shared {
            state: ListenerState::new(name, opts, server_uid),
            ready_cv: Condvar::new(),
            waker,
            waiting: AtomicU32::new(0),
            accepted: AtomicU32::new(0),
            shutdown: AtomicBool::new(false),
        });
        let acceptor = Acceptor::new(Arc::clone(&shared), socket);
        let thread = std::thread::Builder::new()
            .name("npipe-acceptor".into())
            .spawn(move || acceptor.run());
        let thread = match thread {
            Ok(thread) => thread,
            Err(e) => {
                publication.remove();
                return Err(Error::os(e, "cannot start the acceptor thread"));
            }
        };
        Ok(PipeListener {
            shared,
            acceptor: Some(thread),
            publication,
        })
    }

    /// Waits for a client (`ConnectNamedPipe`) and returns the connection.
    pub fn accept(&self) -> Result<PipeServer> {
        self.accept_inner(None)?.ok_or_else(unreachable_timeout)
    }

    /// Waits up to `timeout` for a client: `Ok(None)` if none came. (A
    /// remote client whose gateway hands its connection over is taken over
    /// here, after it came: microseconds as a rule, 5 s at most, beyond
    /// `timeout`.)
    pub fn accept_timeout(&self, timeout: Duration) -> Result<Option<PipeServer>> {
        self.accept_inner(Some(timeout))
    }

    /// An iterator that accepts clients for ever.
    pub fn incoming(&self) -> impl Iterator<Item = Result<PipeServer>> + '_ {
        std::iter::repeat_with(|| self.accept())
    }

    fn accept_inner(&self, timeout: Option<Duration>) -> Result<Option<PipeServer>> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let shared = &self.shared;
        let mut queue = shared.state.ready.lock().expect("ready queue poisoned");
        loop {
            if let Some(ready) = queue.pop_front() {
                let was_full = queue.len() + 1 >= shared.state.opts.accept_backlog as usize;
                // Counted under the lock, together with the pop: the acceptor
                // never sees the queue shrink without the count that goes
                // with it (else a waiter could stay queued beside free room).
                shared.accepted.fetch_add(1, Ordering::SeqCst);
                drop(queue);
                if was_full {
                    shared.waker.wake();
                }
                // A connection its gateway hands over: the HAND-OFF is read
                // here, on the caller's thread (microseconds after the OK;
                // a few seconds at most), not on the acceptor's.
                #[cfg(feature = "remote")]
                let ready = {
                    let mut ready = ready;
                    if ready.handed_over {
                        ready.settle_blocking();
                    }
                    ready
                };
                return Ok(Some(server_end(Arc::clone(shared), ready)));
            }
            shared.state.stopped()?;
            queue = match deadline {
                None => shared.ready_cv.wait(queue).expect("ready queue poisoned"),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return Ok(None);
                    }
                    shared
                        .ready_cv
                        .wait_timeout(queue, d - now)
                        .expect("ready queue poisoned")
                        .0
                }
            };
        }
    }

    /// The pipe's name.
    pub fn name(&self) -> &PipeName {
        &self.shared.state.name
    }

    /// The pipe as the server sees it (`GetNamedPipeInfo`).
    pub fn info(&self) -> PipeInfo {
        self.shared.state.info()
    }
}

fn unreachable_timeout() -> Error {
    Error::new(
        ErrorCode::Other,
        "accept without a timeout returned nothing",
    )
}

impl Drop for PipeListener {
    fn drop(&mut self) {
        // The name goes first, while the socket still listens: a server
        // starting meanwhile finds a live pipe, never a stale one to reclaim
        // (which this removal could then delete from under it).
        self.publication.remove();
        self.shared.shutdown.store(true, Ordering::SeqCst);
        self.shared.waker.wake();
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
        // Clients told OK but never accepted: close them, so they see a
        // broken pipe now rather than wait on a server end nobody will take.
        self.shared
            .state
            .ready
            .lock()
            .expect("ready queue poisoned")
            .clear();
    }
}

/// The server end of one connected client (one pipe instance): reads and
/// writes, the client's identity, impersonation, `DisconnectNamedPipe`.
///
/// ```
/// use npipe::{ServerOptions, ClientOptions};
///
/// let name = format!("doc-pipe-server-{}", std::process::id());
/// let listener = ServerOptions::new().create(&name)?;
/// let client = ClientOptions::new().open(&name)?;
/// let server = listener.accept()?;
///
/// // GetNamedPipeClientProcessId, from the kernel:
/// assert_eq!(server.client_process_id(), std::process::id());
/// # drop(client);
/// # Ok::<(), npipe::Error>(())
/// ```
pub type PipeServer = Pipe<PipeStream, ServerEnd>;

/// The server end of a connection the acceptor told OK.
fn server_end(shared: Arc<Shared>, mut ready: Ready) -> PipeServer {
    let shm = ready.shm.take();
    let (carrier, end, instance) = shared.state.open_end(shared.clone(), ready);
    let mut io = match (carrier, shm) {
        (Carrier::Socket(socket), Some(rings)) => {
            PipeStream::with_link(Link::Shm(Box::new(ShmTransport::new(rings, socket))), end)
        }
        (Carrier::Socket(socket), None) => PipeStream::new(socket, end),
        #[cfg(feature = "remote")]
        (Carrier::Handed(tls), _) => PipeStream::with_link(Link::Tls(tls), end),
    };
    // The client may not have read our reply yet.
    io.poll_first_read();
    Pipe {
        io,
        role: ServerEnd { instance },
    }
}

impl Pipe<PipeStream, ServerEnd> {
    /// `ImpersonateNamedPipeClient`: the calling thread, and no other, takes
    /// the client's uid, gid and groups until the guard drops
    /// (`RevertToSelf`).
    ///
    /// Fails with `ERROR_CANNOT_IMPERSONATE` (1368) if the client granted
    /// identification only, and with `ERROR_PRIVILEGE_NOT_HELD` (1314) if
    /// this process may not change user (it needs root, or `CAP_SETUID` and
    /// `CAP_SETGID`, unless the client is its own user). If reverting ever
    /// fails the process aborts: it never runs on as the wrong user. The
    /// guard is not `Send`: it belongs to the thread it changed. Do not
    /// `mem::forget` it.
    ///
    /// ```no_run
    /// # fn serve(pipe: &npipe::PipeServer) -> npipe::Result<()> {
    /// let guard = pipe.impersonate()?;
    /// let data = std::fs::read("/home/client/report.txt"); // as the client
    /// drop(guard); // RevertToSelf
    /// # Ok(()) }
    /// ```
    pub fn impersonate(&self) -> Result<Impersonation<'_>> {
        let (uid, gid, groups) = self.acting_ids()?;
        Impersonation::begin(uid, gid, groups)
    }

    /// Runs `f` on this thread as the client and reverts afterwards
    /// (`ImpersonateNamedPipeClient` ... `RevertToSelf`), even if `f` panics.
    pub fn run_as_client<T>(&self, f: impl FnOnce() -> T) -> Result<T> {
        let _guard = self.impersonate()?;
        Ok(f())
    }
}

/// A connection the acceptor is still handling: its socket and what the
/// kernel said of it. What to do with it is `core`'s.
struct Pending {
    socket: Socket,
    peer: Peer,
    process: ClientProcess,
    buf: Vec<u8>,
    /// A memory file that rode with the HELLO: the client's offer to move
    /// the data to shared memory.
    offer: Option<PeerFd>,
    /// Waiting for an instance (watched for hang-up), not in its handshake.
    waiting: bool,
}

/// The acceptor thread: sockets and `poll`, driving the engine's
/// [`AcceptorCore`], which makes every decision.
struct Acceptor {
    shared: Arc<Shared>,
    listener: Socket,
    core: AcceptorCore,
    pending: TicketMap<Pending>,
    paused_until: Option<Instant>,
    /// Held so that, out of descriptors, one can be freed to refuse clients.
    spare_fd: Option<std::os::fd::OwnedFd>,
    /// Where each client's first read lands.
    first_read: FirstRead,
}

impl Acceptor {
    fn new(shared: Arc<Shared>, listener: Socket) -> Acceptor {
        let core = shared.state.acceptor_core();
        Acceptor {
            shared,
            listener,
            core,
            pending: TicketMap::default(),
            paused_until: None,
            spare_fd: sys::spare_fd().ok(),
            first_read: FirstRead::new(),
        }
    }

    fn run(mut self) {
        // A client's connect wakes us before it has sent its HELLO; under
        // the default policy that wake-up preempts it (on one CPU), we find
        // no HELLO yet, sleep again and are woken again. As a batch thread we
        // run when the client blocks for our reply, with its HELLO there.
        // Failure only costs that; the thread runs as before.
        let _ = sys::set_thread_batch_scheduling();
        let outcome = self.serve();
        // Under the queue's lock, so that no accept() can check for a
        // failure, miss this one and then wait for ever.
        let _queue = self
            .shared
            .state
            .ready
            .lock()
            .expect("ready queue poisoned");
        if let Err(e) = outcome {
            self.shared.state.fail(e.to_string());
        }
        // Wake any accept() so it sees the failure or the shutdown.
        self.shared.ready_cv.notify_all();
    }

    fn serve(&mut self) -> io::Result<()> {
        let mut tickets: Vec<Ticket> = Vec::new();
        while !self.shared.shutdown.load(Ordering::SeqCst) {
            self.apply_counters();
            let now = Instant::now();
            self.expire(now);

            tickets.clear();
            tickets.extend(self.pending.keys().copied());
            let accepting = self.paused_until.is_none_or(|t| now >= t);
            if accepting {
                self.paused_until = None;
            }
            let timeout = self.next_timeout(now);

            let (waker_ready, listener_ready, ready_tickets) = {
                let mut fds = Vec::with_capacity(2 + tickets.len());
                fds.push(PollEntry::new(&self.shared.waker, Events::IN));
                fds.push(PollEntry::new(
                    &self.listener,
                    if accepting {
                        Events::IN
                    } else {
                        Events::empty()
                    },
                ));
                for t in &tickets {
                    let p = &self.pending[t];
                    let ev = if p.waiting { Events::RDHUP } else { Events::IN };
                    fds.push(PollEntry::new(&p.socket, ev));
                }
                sys::poll(&mut fds, timeout)?;
                let ready: Vec<(Ticket, Events)> = tickets
                    .iter()
                    .zip(&fds[2..])
                    .filter(|(_, f)| !f.revents().is_empty())
                    .map(|(t, f)| (*t, f.revents()))
                    .collect();
                (
                    !fds[0].revents().is_empty(),
                    !fds[1].revents().is_empty(),
                    ready,
                )
            };
            if waker_ready {
                self.shared.waker.drain();
            }
            for (t, ev) in ready_tickets {
                self.on_event(t, ev);
            }
            if listener_ready {
                self.accept_some();
            }
        }
        Ok(())
    }

    fn next_timeout(&self, now: Instant) -> Option<Duration> {
        self.core
            .next_deadline()
            .into_iter()
            .chain(self.paused_until)
            .min()
            .map(|d| d.saturating_duration_since(now))
    }

    fn apply_counters(&mut self) {
        let released = self.shared.state.instances.released();
        let accepted = self.shared.accepted.swap(0, Ordering::SeqCst);
        let mut grants = Vec::new();
        if accepted > 0 {
            grants.extend(self.core.accepted(accepted));
        }
        if released > 0 {
            grants.extend(self.core.released(released));
        }
        self.shared
            .state
            .instances
            .publish(self.core.active(), released);
        self.connect_grants(grants);
    }

    /// Publishes the counts. Called after every arrival (so before the
    /// loop's next `apply_counters` and sleep, see
    /// [`Shared::release_instance`]); a waiter that leaves or times out is
    /// published with the next change, and till then only costs a spare
    /// wake-up.
    fn publish_active(&self) {
        let waiting = u32::try_from(self.core.waiting()).unwrap_or(u32::MAX);
        self.shared.waiting.store(waiting, Ordering::SeqCst);
        self.shared.state.instances.publish(self.core.active(), 0);
    }

    fn expire(&mut self, now: Instant) {
        let expired = self.core.expire(now);
        for t in expired.silent {
            // Silent or too slow: drop it without a word.
            self.pending.remove(&t);
        }
        let (code, reason) = AcceptorCore::timeout_refusal();
        for t in expired.timed_out {
            if let Some(p) = self.pending.remove(&t) {
                refuse(&p.socket, code, reason);
            }
        }
    }

    /// Takes the connections the kernel holds: one per wake-up while few
    /// handshakes are in progress, a batch while many are. The poll is
    /// level-triggered, so more in the backlog wake the next turn at once;
    /// accepting until `EAGAIN` would cost a wasted syscall on every
    /// connection when they come one at a time (measured: 3-4 % of
    /// `connect_rate`), while in a connect storm a turn per connection
    /// would cost a poll of every pending socket each.
    fn accept_some(&mut self) {
        for _ in 0..ACCEPT_BATCH {
            // The new socket is blocking, as the application will use it;
            // the acceptor itself only ever reads and writes it with
            // DONTWAIT, so it never waits on one client.
            match self.listener.accept_blocking_socket() {
                Ok(socket) => self.on_connection(socket),
                Err(e) if out_of_descriptors(&e) => {
                    let listener = &self.listener;
                    fresh_connection::refuse_while_out_of_descriptors(&mut self.spare_fd, || {
                        listener.accept_blocking_socket()
                    });
                    self.paused_until = Some(Instant::now() + FD_EXHAUSTED_PAUSE);
                    return;
                }
                // WouldBlock (all taken), or the client left.
                Err(_) => return,
            }
            if self.pending.len() < STORM_PENDING {
                return;
            }
        }
    }

    fn on_connection(&mut self, socket: Socket) {
        let shared = &self.shared;
        let Some(peer) = peer_of(&socket, &shared.state.opts, shared.state.server_uid) else {
            return;
        };
        let deadline = Instant::now() + shared.state.opts.handshake_timeout;
        let ticket = match self.core.arrive(&peer, Some(deadline)) {
            Ok(ticket) => ticket,
            Err((code, reason)) => return refuse(&socket, code, &reason),
        };
        // Where the kernel cannot name the connecting process later (no
        // SO_PEERPIDFD), its pid is pinned now, before the HELLO.
        let process = ClientProcess::at_accept(&socket, peer.cred.pid);
        let p = Pending {
            socket,
            peer,
            process,
            buf: Vec::new(),
            offer: None,
            waiting: false,
        };
        self.pending.insert(ticket, p);
        // The client usually sent HELLO right behind connect: try it now.
        self.read_hello(ticket);
    }

    fn on_event(&mut self, ticket: Ticket, events: Events) {
        let Some(p) = self.pending.get(&ticket) else {
            return;
        };
        if !p.waiting {
            return self.read_hello(ticket);
        }
        if events.intersects(Events::RDHUP | Events::HUP | Events::ERR) {
            // The waiting client gave up.
            self.core.waiter_left(ticket);
            self.pending.remove(&ticket);
        }
    }

    fn read_hello(&mut self, ticket: Ticket) {
        let Some(p) = self.pending.get_mut(&ticket) else {
            return;
        };
        // An offer rides with the HELLO's first bytes: only the first read
        // takes a descriptor in. Later ones stay with the kernel, which
        // discards them, and no close of one runs on this thread. The first
        // read (usually the whole HELLO) goes through the acceptor's own
        // buffer, zeroed once, and keeps only what came.
        let got = if p.buf.is_empty() {
            self.first_read
                .take(&p.socket, p.peer.cred.user.0)
                .map(|(bytes, fd)| {
                    p.buf = bytes;
                    (p.buf.len(), fd)
                })
        } else {
            let room = HELLO_READ.saturating_sub(p.buf.len());
            if p.buf.capacity() - p.buf.len() < room {
                p.buf.reserve_exact(room);
            }
            p.socket
                .recv_spare(&mut p.buf, RecvFlagsLite::DontWait)
                .map(|n| (n, None))
        };
        match got {
            Ok((0, fd)) => {
                drop(fd.map(PeerFd::new));
                self.end_handshake(ticket);
                return;
            }
            Ok((_, fd)) => {
                if let Some(fd) = fd {
                    p.offer = Some(PeerFd::new(fd));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(_) => {
                self.end_handshake(ticket);
                return;
            }
        }
        match Hello::decode(&p.buf) {
            Ok(None) => {}
            Ok(Some((hello, used))) => {
                let mut p = self.pending.remove(&ticket).expect("present");
                let leftover = p.buf.split_off(used);
                p.buf = leftover;
                self.on_hello(ticket, p, hello);
            }
            Err(e) => {
                let p = self.end_handshake(ticket).expect("present");
                let err: Error = e.into();
                refuse(&p.socket, err.code(), err.message());
            }
        }
    }

    /// Takes a connection out of its handshake, however that ended.
    fn end_handshake(&mut self, ticket: Ticket) -> Option<Pending> {
        self.core.handshake_ended(ticket);
        self.pending.remove(&ticket)
    }

    fn on_hello(&mut self, ticket: Ticket, mut p: Pending, hello: Hello) {
        // Instances freed since this turn of the loop began count for this
        // client: a release's wake-up may not have been seen yet.
        self.apply_counters();
        match self.core.hello(ticket, &p.peer, &hello, Instant::now()) {
            Answer::Refuse(code, reason) => refuse(&p.socket, code, &reason),
            Answer::Describe { desc, security } => {
                send_reply(&p.socket, &Reply::Info { desc, security });
            }
            Answer::Connect { desc, granted } => self.connect(p, hello, desc, granted),
            Answer::Wait => {
                p.waiting = true;
                p.peer.groups = Vec::new();
                self.pending.insert(ticket, p);
            }
        }
        self.publish_active();
    }

    /// Connects waiters the core gave instances, skipping any that left.
    fn connect_grants(&mut self, grants: Vec<Grant>) {
        let mut todo = std::collections::VecDeque::from(grants);
        while let Some(g) = todo.pop_front() {
            match self.pending.remove(&g.ticket) {
                Some(p) if !p.socket.peer_hung_up() => {
                    self.connect(p, g.hello, g.desc, g.granted);
                }
                _ => todo.extend(self.core.grant_failed()),
            }
        }
        self.publish_active();
    }

    /// Sends OK and queues the connection for the application's `accept`.
    /// The core has already counted the instance as taken.
    fn connect(&mut self, p: Pending, hello: Hello, desc: PipeDescription, granted: Access) {
        // Counted before the client or `accept` can see the connection, so
        // `info` never lags behind (a failed send below counts it back).
        self.publish_active();
        let arrived = Arrived {
            socket: p.socket,
            peer: p.peer,
            process: p.process,
            hello,
            leftover: p.buf,
            offer: p.offer,
        };
        match arrived.tell_ok(desc, granted, &self.shared.state.opts, false) {
            Some(ready) => self.shared.queue(ready),
            None => {
                let more = self.core.grant_failed();
                self.connect_grants(more);
            }
        }
    }
}

impl Shared {
    /// Queues a connection told OK for the application's `accept`.
    fn queue(&self, ready: Ready) {
        self.state
            .ready
            .lock()
            .expect("ready queue poisoned")
            .push_back(ready);
        self.ready_cv.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use crate::{ClientOptions, ErrorCode, ServerOptions};

    /// SECURITY.md: nested impersonation on one thread is refused, and the
    /// thread can impersonate again once the guard is dropped. (A client of
    /// the server's own user needs no privilege.)
    #[test]
    fn nested_impersonation_is_refused() {
        let name = format!("unit-nested-imp-{}", std::process::id());
        let listener = ServerOptions::new().create(name.as_str()).unwrap();
        let _client = ClientOptions::new().open(name.as_str()).unwrap();
        let server = listener.accept().unwrap();
        let guard = server.impersonate().unwrap();
        let Err(again) = server.impersonate() else {
            panic!("nested impersonation was allowed");
        };
        assert_eq!(again.code(), ErrorCode::CannotImpersonate);
        drop(guard);
        drop(server.impersonate().unwrap());
    }
}
