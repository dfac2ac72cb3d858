//! The server: a listener whose acceptor thread runs every handshake side by
//! side, and the server end of each connection.
//!
//! The acceptor owns the handshakes. It reads each client's HELLO without
//! blocking (a slow or silent client holds up no one and is dropped after
//! the handshake timeout), checks it, and asks the engine's
//! [`AcceptorCore`] whether an instance is free. Granted clients get OK and
//! go to a queue that [`PipeListener::accept`] takes from; waiting clients
//! stay with the acceptor until an instance frees or their wait runs out,
//! when the acceptor tells them *timeout*. The server decides every outcome
//! and tells the client, so a client is never handed to the application
//! after it gave up.
//!
//! An `accept()` that finds the queue empty borrows the listener meanwhile
//! ([`Lender`]): it takes the next connection itself and, if the HELLO is
//! there and an instance free, tells it OK and returns it, without the
//! acceptor thread waking at all. Anything slower (no HELLO yet, a wait for
//! an instance) it leaves to the acceptor thread, through the engine.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::blocking::stream::PipeStream;
use crate::engine::acceptor::{AcceptorCore, Answer, Grant};
use crate::engine::ticket_map::TicketMap;
use crate::error::{Error, ErrorCode, Result};
use crate::fresh_connection::{
    self, accept_starved, out_of_descriptors, peer_of, refuse, send_reply, Arrived, FirstRead,
    ACCEPT_BATCH, FD_EXHAUSTED_PAUSE, HELLO_READ,
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
use crate::shm::late::LateShm;
use crate::shm::link::Link;
use crate::shm::transport::{PeerFd, ShmTransport};
use crate::sys::RecvFlagsLite;
use crate::sys::{self, Events, ListenSet, PollEntry, Socket, Timer, Waker};
use crate::types::Access;

/// Handshakes in progress from which the acceptor takes connections in
/// batches rather than one per wake-up.
const STORM_PENDING: usize = 8;

/// How long a lender keeps the listener after its `accept()` returns: an
/// application that calls `accept()` again within this time lends it on,
/// and the acceptor thread is not woken for it (only when a lease timer
/// runs out, about once a millisecond while it accepts in a loop); one
/// that does not gets it back at the end (a client that connects meanwhile
/// waits that long for its OK at most).
const LEASE: Duration = Duration::from_millis(1);

/// State shared by the listener, the acceptor thread and server ends.
#[derive(Debug)]
struct Shared {
    state: ListenerState,
    /// Signalled when a client joins `state.ready`.
    ready_cv: Condvar,
    /// Wakes the acceptor thread from its `poll`.
    waker: Waker,
    /// Wakes an `accept()` that lends the listener from its `poll`.
    lender_waker: Waker,
    /// An `accept()` lends the listener now. Read and written under the
    /// `state.ready` lock, so a connection queued for `accept` always wakes
    /// the lender, who then finds it.
    lending: AtomicBool,
    /// The listener, as the acceptor thread polls it: a lending `accept()`
    /// switches the watch off (which wakes no one), and the acceptor thread
    /// back on when the lease runs out.
    listen_set: ListenSet,
    /// `accept()` calls asleep on `ready_cv` (under the `state.ready` lock):
    /// a lender that returns with a connection wakes one to lend on.
    sleepers: AtomicU32,
    /// Whether `listen_set` watches the listener. Under the `state.ready`
    /// lock, as `lending` is. Off only while lent or leased: while it is
    /// off and nobody lends, `lease` is armed.
    watched: AtomicBool,
    /// Runs out when a lender's lease on the listener may have.
    lease: Timer,
    /// Whether `lease` is armed (under the `state.ready` lock): a lender
    /// that is done arms it only if not, so that an application accepting
    /// in a loop arms it once a lease, not once a connection (arming a timer
    /// costs about 1.2 us here, a trap to the hypervisor).
    lease_armed: AtomicBool,
    /// When the last lender was done, for the acceptor to tell whether the
    /// lease ran out (under the `state.ready` lock).
    lent_until: Mutex<Option<Instant>>,
    /// The decisions, under one lock for the acceptor thread and a lender.
    engine: Mutex<Engine>,
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
    /// The listening socket: the acceptor thread's, lent to an `accept()`
    /// meanwhile. It closes when both are done with it.
    listener: Arc<Socket>,
    acceptor: Option<JoinHandle<()>>,
    publication: Publication,
}

impl PipeListener {
    pub(crate) fn create(name: PipeName, opts: ServerOptions) -> Result<PipeListener> {
        let eventfd = || Waker::new().map_err(|e| Error::os(e, "cannot create an eventfd"));
        let (waker, lender_waker) = (eventfd()?, eventfd()?);
        let (publication, socket, server_uid) = Publication::create(&name, &opts)?;
        let (listen_set, lease) =
            match ListenSet::new(&socket).and_then(|set| Ok((set, Timer::new()?))) {
                Ok(both) => both,
                Err(e) => {
                    publication.remove();
                    return Err(Error::os(
                        e,
                        "cannot create the acceptor's epoll set or timer",
                    ));
                }
            };
        let state = ListenerState::new(name, opts, server_uid);
        let engine = Mutex::new(Engine {
            core: state.acceptor_core(),
            first_read: FirstRead::new(),
            handed: Vec::new(),
            grants: VecDeque::new(),
            paused_until: None,
            out_of_descriptors: false,
        });
        let shared = Arc::new(Shared {
            state,
            ready_cv: Condvar::new(),
            waker,
            lender_waker,
            lending: AtomicBool::new(false),
            listen_set,
            sleepers: AtomicU32::new(0),
            watched: AtomicBool::new(true),
            lease,
            lease_armed: AtomicBool::new(false),
            lent_until: Mutex::new(None),
            engine,
            waiting: AtomicU32::new(0),
            accepted: AtomicU32::new(0),
            shutdown: AtomicBool::new(false),
        });
        let listener = Arc::new(socket);
        let acceptor = Acceptor::new(Arc::clone(&shared), Arc::clone(&listener));
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
            listener,
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
                return Ok(Some(self.server_end(ready)));
            }
            shared.state.stopped()?;
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(None);
            }
            if !shared.lending.load(Ordering::Relaxed) {
                shared.lending.store(true, Ordering::Relaxed);
                let watched = shared.watched.swap(false, Ordering::Relaxed);
                drop(queue);
                let loan = Loan {
                    shared,
                    listener: &self.listener,
                    ended: false,
                };
                let lent = Lender {
                    shared,
                    listener: &self.listener,
                }
                .lend(deadline, watched);
                queue = loan.end(&lent);
                match lent {
                    Lent::Connected(ready) => {
                        drop(queue);
                        return Ok(Some(self.server_end(ready)));
                    }
                    Lent::Nothing => continue,
                    // The acceptor may have queued one meanwhile (its wake
                    // went to the lender, who has gone).
                    Lent::CannotLend if !queue.is_empty() => continue,
                    // Wait as if no lender could be: the acceptor thread
                    // polls the listener again.
                    Lent::CannotLend => {}
                }
            }
            shared.sleepers.fetch_add(1, Ordering::Relaxed);
            queue = match deadline {
                None => shared.ready_cv.wait(queue).expect("ready queue poisoned"),
                Some(d) => {
                    shared
                        .ready_cv
                        .wait_timeout(queue, d.saturating_duration_since(Instant::now()))
                        .expect("ready queue poisoned")
                        .0
                }
            };
            shared.sleepers.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// The server end of a connection told OK, for the application.
    fn server_end(&self, ready: Ready) -> PipeServer {
        // A connection its gateway hands over: the HAND-OFF is read here,
        // on the caller's thread (microseconds after the OK; a few seconds
        // at most), not on the acceptor's.
        #[cfg(feature = "remote")]
        let ready = {
            let mut ready = ready;
            if ready.handed_over {
                ready.settle_blocking();
            }
            ready
        };
        server_end(Arc::clone(&self.shared), ready)
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
    let late = ready.late_offers.then_some(ready.cred.user.0);
    let (carrier, end, instance) = shared.state.open_end(shared.clone(), ready);
    let mut io = match (carrier, shm) {
        (Carrier::Socket(socket), Some(rings)) => {
            PipeStream::with_link(Link::Shm(Box::new(ShmTransport::new(rings, socket))), end)
        }
        (Carrier::Socket(socket), None) => match late {
            Some(uid) => PipeStream::with_link(
                Link::Late(Box::new(LateShm::taker(Arc::new(socket), uid))),
                end,
            ),
            None => PipeStream::new(socket, end),
        },
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

/// A connection in its handshake, or waiting for an instance: its socket
/// and what the kernel said of it. What to do with it is the engine's.
#[derive(Debug)]
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

/// What a step of a connection's handshake left of it.
// Returned once per step and moved on at once: boxing the connection would
// cost an allocation per connection for nothing.
#[allow(clippy::large_enum_variant)]
enum Progress {
    /// Nothing: it was answered, refused or went away.
    Ended,
    /// Still reading its HELLO, or waiting for an instance: watch it.
    Held(Pending),
    /// Told OK: for the application's `accept`.
    Connected(Ready),
}

/// The acceptor's decisions and what goes with them, under one lock for the
/// acceptor thread and a lending `accept()`. Every step here is the same
/// whichever thread takes it; only where a held connection and a grant go
/// differs (the acceptor thread keeps the sockets it watches).
#[derive(Debug)]
struct Engine {
    core: AcceptorCore,
    /// Where each client's first read lands.
    first_read: FirstRead,
    /// Connections a lender started but could not finish at once, for the
    /// acceptor thread to watch.
    handed: Vec<(Ticket, Pending)>,
    /// Waiters given instances, in order, for the acceptor thread (which
    /// holds their sockets) to connect.
    grants: VecDeque<Grant>,
    /// No accepting until then (out of descriptors).
    paused_until: Option<Instant>,
    /// A lender ran out of descriptors: the acceptor, which holds the
    /// spare one, refuses the clients waiting in the backlog.
    out_of_descriptors: bool,
}

impl Engine {
    /// Counts what the application did since the last look (accepts and
    /// released instances), which may grant waiters instances.
    fn apply_counters(&mut self, shared: &Shared) {
        let released = shared.state.instances.released();
        let accepted = shared.accepted.swap(0, Ordering::SeqCst);
        if accepted > 0 {
            let grants = self.core.accepted(accepted);
            self.grants.extend(grants);
        }
        if released > 0 {
            let grants = self.core.released(released);
            self.grants.extend(grants);
        }
        shared.state.instances.publish(self.core.active(), released);
    }

    /// Publishes the counts. Called after every arrival, by the acceptor or
    /// a lender (so before the acceptor's next `apply_counters` and sleep,
    /// see [`Shared::release_instance`]: a lender that queues a waiter
    /// wakes the acceptor); a waiter that leaves or times out is published
    /// with the next change, and till then only costs a spare wake-up.
    fn publish_active(&self, shared: &Shared) {
        let waiting = u32::try_from(self.core.waiting()).unwrap_or(u32::MAX);
        shared.waiting.store(waiting, Ordering::SeqCst);
        shared.state.instances.publish(self.core.active(), 0);
    }

    /// A socket fresh from the listener: its ticket, or nothing if it is
    /// refused at once (or the kernel cannot say who it is).
    fn arrive(&mut self, shared: &Shared, socket: Socket) -> Option<(Ticket, Pending)> {
        let peer = peer_of(&socket, &shared.state.opts, shared.state.server_uid)?;
        let deadline = Instant::now() + shared.state.opts.handshake_timeout;
        let ticket = match self.core.arrive(&peer, Some(deadline)) {
            Ok(ticket) => ticket,
            Err((code, reason)) => {
                refuse(&socket, code, &reason);
                return None;
            }
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
        Some((ticket, p))
    }

    /// Reads what a connection in its handshake has sent and, once its
    /// HELLO is whole, answers it.
    fn advance(&mut self, shared: &Shared, ticket: Ticket, mut p: Pending) -> Progress {
        // An offer rides with the HELLO's first bytes: only the first read
        // takes a descriptor in. Later ones stay with the kernel, which
        // discards them, and no close of one runs on this thread. The first
        // read (usually the whole HELLO) goes through the engine's own
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
                self.core.handshake_ended(ticket);
                return Progress::Ended;
            }
            Ok((_, fd)) => {
                if let Some(fd) = fd {
                    p.offer = Some(PeerFd::new(fd));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Progress::Held(p),
            Err(_) => {
                self.core.handshake_ended(ticket);
                return Progress::Ended;
            }
        }
        match Hello::decode(&p.buf) {
            Ok(None) => Progress::Held(p),
            Ok(Some((hello, used))) => {
                let leftover = p.buf.split_off(used);
                p.buf = leftover;
                self.on_hello(shared, ticket, p, hello)
            }
            Err(e) => {
                self.core.handshake_ended(ticket);
                let err: Error = e.into();
                refuse(&p.socket, err.code(), err.message());
                Progress::Ended
            }
        }
    }

    fn on_hello(
        &mut self,
        shared: &Shared,
        ticket: Ticket,
        mut p: Pending,
        hello: Hello,
    ) -> Progress {
        // Instances freed since the acceptor last looked count for this
        // client: a release's wake-up may not have been seen yet.
        self.apply_counters(shared);
        let progress = match self.core.hello(ticket, &p.peer, &hello, Instant::now()) {
            Answer::Refuse(code, reason) => {
                refuse(&p.socket, code, &reason);
                Progress::Ended
            }
            Answer::Describe { desc, security } => {
                send_reply(&p.socket, &Reply::Info { desc, security });
                Progress::Ended
            }
            Answer::Connect { desc, granted } => self.connect(shared, p, hello, desc, granted),
            Answer::Wait => {
                p.waiting = true;
                p.peer.groups = Vec::new();
                Progress::Held(p)
            }
        };
        self.publish_active(shared);
        progress
    }

    /// Sends OK. The core has already counted the instance as taken; if the
    /// client is gone, the instance goes to the next waiters.
    fn connect(
        &mut self,
        shared: &Shared,
        p: Pending,
        hello: Hello,
        desc: PipeDescription,
        granted: Access,
    ) -> Progress {
        // Counted before the client or `accept` can see the connection, so
        // `info` never lags behind (a failed send below counts it back).
        self.publish_active(shared);
        let arrived = Arrived {
            socket: p.socket,
            peer: p.peer,
            process: p.process,
            hello,
            leftover: p.buf,
            offer: p.offer,
        };
        match arrived.tell_ok(desc, granted, &shared.state.opts, false) {
            Some(ready) => Progress::Connected(ready),
            None => {
                let more = self.core.grant_failed();
                self.grants.extend(more);
                Progress::Ended
            }
        }
    }

    /// Whether the acceptor thread has work a lender left it.
    fn has_work_for_acceptor(&self) -> bool {
        !self.handed.is_empty() || !self.grants.is_empty()
    }
}

impl Shared {
    /// Queues a connection told OK for the application's `accept`.
    fn queue(&self, ready: Ready) {
        let mut queue = self.state.ready.lock().expect("ready queue poisoned");
        queue.push_back(ready);
        if self.lending.load(Ordering::Relaxed) {
            self.lender_waker.wake();
        }
        drop(queue);
        self.ready_cv.notify_one();
    }

    /// A lender is done (under the queue's lock): nobody lends now, and the
    /// listener is leased, or given back to the acceptor at once if the
    /// loan went wrong (`give_back`).
    fn end_loan(&self, listener: &Socket, give_back: bool) {
        self.lending.store(false, Ordering::Relaxed);
        if give_back {
            self.take_back_listener(listener);
        } else {
            self.lease_listener(listener);
        }
    }

    /// Starts the lease of a lender that is done (under the queue's lock):
    /// the acceptor thread takes the listener back when it runs out, unless
    /// an `accept()` lends it again first.
    fn lease_listener(&self, listener: &Socket) {
        let until = Instant::now() + LEASE;
        *self.lent_until.lock().expect("lease poisoned") = Some(until);
        if self.lease_armed.load(Ordering::Relaxed) {
            return;
        }
        if self.lease.arm(LEASE).is_ok() {
            self.lease_armed.store(true, Ordering::Relaxed);
        } else {
            self.take_back_listener(listener);
        }
    }

    /// The lease timer ran out (under the queue's lock): the listener goes
    /// back to the acceptor if the last lease did, and nobody lends it now.
    /// Else the timer is armed again for the rest of the lease; while a
    /// lender lends, not at all (it arms the timer when done), so an idle
    /// server blocked in `accept()` costs no wake-ups.
    fn lease_ran_out(&self, listener: &Socket) {
        self.lease_armed.store(false, Ordering::Relaxed);
        if self.lending.load(Ordering::Relaxed) {
            return;
        }
        let until = *self.lent_until.lock().expect("lease poisoned");
        let now = Instant::now();
        match until {
            Some(until) if until > now && self.lease.arm(until - now).is_ok() => {
                self.lease_armed.store(true, Ordering::Relaxed);
            }
            _ => self.take_back_listener(listener),
        }
    }

    /// The acceptor's set watches the listener again (under the queue's
    /// lock), unless an `accept()` lends it.
    fn take_back_listener(&self, listener: &Socket) {
        if self.lending.load(Ordering::Relaxed) || self.watched.load(Ordering::Relaxed) {
            return;
        }
        match self.listen_set.watch(listener, true) {
            Ok(()) => self.watched.store(true, Ordering::Relaxed),
            // The acceptor would never see a connection again: stop, and
            // tell every `accept()` so.
            Err(e) => {
                self.state.fail(format!("cannot watch the listener: {e}"));
                self.ready_cv.notify_all();
                self.lender_waker.wake();
            }
        }
    }

    /// The engine. A panic that poisoned it (a bug, now on the application's
    /// thread too) does not stop the pipe: its counts may be off, but every
    /// state it can hold is one it may.
    fn engine(&self) -> MutexGuard<'_, Engine> {
        self.engine.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// What a lending `accept()` came back with.
#[allow(clippy::large_enum_variant)] // as `Progress`
enum Lent {
    /// A connection it told OK itself.
    Connected(Ready),
    /// None: the queue may have one, the time may be up; look again.
    Nothing,
    /// The listener could not be lent; wait for the acceptor thread.
    CannotLend,
}

/// An `accept()`'s loan of the listener. Ended (or unwound by a panic), it
/// leaves nobody lending and the listener leased or given back: never off
/// the acceptor's watch with no lender and no lease to end it.
struct Loan<'a> {
    shared: &'a Shared,
    listener: &'a Socket,
    ended: bool,
}

impl<'a> Loan<'a> {
    /// Ends the loan after `lent`, under the queue's lock, which it returns.
    fn end(mut self, lent: &Lent) -> MutexGuard<'a, VecDeque<Ready>> {
        self.ended = true;
        let shared = self.shared;
        let queue = shared.state.ready.lock().expect("ready queue poisoned");
        shared.end_loan(self.listener, matches!(lent, Lent::CannotLend));
        // Another accept() asleep meanwhile lends on while this one's
        // caller handles its connection.
        if matches!(lent, Lent::Connected(_)) && shared.sleepers.load(Ordering::Relaxed) > 0 {
            shared.ready_cv.notify_one();
        }
        queue
    }
}

impl Drop for Loan<'_> {
    fn drop(&mut self) {
        if !self.ended {
            let _queue = self
                .shared
                .state
                .ready
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            self.shared.end_loan(self.listener, true);
        }
    }
}

/// An `accept()` that found no connection queued, lending the listener: it
/// polls the listener itself while the acceptor thread's set does not
/// watch it, and takes the next connection the fast way (its HELLO is
/// there, an instance free: OK and back to the application, with no thread
/// woken). This saves, per connection, the acceptor's hand-over to the
/// thread in `accept()`: two context switches and two futex calls.
struct Lender<'a> {
    shared: &'a Shared,
    listener: &'a Socket,
}

impl Lender<'_> {
    /// Lends the listener until a connection is told OK, one is queued for
    /// `accept`, or `deadline`. `watched`: the acceptor's set still watches
    /// it (the lease ran out since the last lender).
    fn lend(&self, deadline: Option<Instant>, watched: bool) -> Lent {
        let shared = self.shared;
        // (The engine's lock is taken without the queue's, which the
        // acceptor takes inside the engine's.) Not while the acceptor
        // pauses for want of descriptors: it refuses clients meanwhile.
        let now = Instant::now();
        if shared.engine().paused_until.is_some_and(|t| now < t) {
            return Lent::CannotLend;
        }
        if watched && shared.listen_set.watch(self.listener, false).is_err() {
            return Lent::CannotLend;
        }
        let mut lent = Lent::Nothing;
        // A client that connected while the application was busy is taken
        // without a poll first: with both on one CPU, the usual case.
        match self.take_one() {
            Ok(Some(ready)) => return Lent::Connected(ready),
            Ok(None) => {}
            Err(()) => return Lent::CannotLend,
        }
        loop {
            let timeout = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if timeout == Some(Duration::ZERO) {
                break;
            }
            let mut fds = [
                PollEntry::new(self.listener, Events::IN),
                PollEntry::new(&shared.lender_waker, Events::IN),
            ];
            match sys::poll(&mut fds, timeout) {
                Ok(0) => break,
                Ok(_) => {}
                Err(_) => {
                    lent = Lent::CannotLend;
                    break;
                }
            }
            if !fds[1].revents().is_empty() {
                // Something was queued (or the acceptor stopped).
                shared.lender_waker.drain();
                break;
            }
            if fds[0].revents().is_empty() {
                continue;
            }
            match self.take_one() {
                Ok(Some(ready)) => {
                    lent = Lent::Connected(ready);
                    break;
                }
                Ok(None) => {}
                Err(()) => {
                    lent = Lent::CannotLend;
                    break;
                }
            }
        }
        lent
    }

    /// Takes one connection from the kernel and carries its handshake as far
    /// as it goes now: `Err` if accepting must stop (out of descriptors or
    /// kernel memory: the acceptor thread refuses clients while it pauses).
    fn take_one(&self) -> std::result::Result<Option<Ready>, ()> {
        let shared = self.shared;
        let socket = match self.listener.accept_blocking_socket() {
            Ok(socket) => socket,
            Err(e) if accept_starved(&e) => {
                // The acceptor holds the spare descriptor that lets it refuse
                // the clients waiting (out of descriptors; out of kernel
                // memory it only pauses); the loan ends and gives it the
                // listener back.
                let mut engine = shared.engine();
                engine.paused_until = Some(Instant::now() + FD_EXHAUSTED_PAUSE);
                engine.out_of_descriptors = out_of_descriptors(&e);
                shared.waker.wake();
                return Err(());
            }
            // WouldBlock (the acceptor took it), or the client left.
            Err(_) => return Ok(None),
        };
        let mut engine = shared.engine();
        let Some((ticket, p)) = engine.arrive(shared, socket) else {
            return Ok(None);
        };
        let mut progress = engine.advance(shared, ticket, p);
        if let Progress::Held(p) = progress {
            progress = match nothing_came_yet(&p) {
                // The connect woke us (on one CPU, preempting the client)
                // before the client sent its HELLO: let it run, rather than
                // hand its handshake to the acceptor thread, which would
                // cost two wake-ups more (measured: a lender that handed it
                // over every time lost 25 % of `connect_rate` to this). The
                // acceptor thread is batch-scheduled for the same reason;
                // an application's thread is not ours to move.
                // (Without the engine's lock: a connection still in its
                // handshake cannot be granted meanwhile, but the acceptor
                // may end it at its deadline, set as short as one likes.)
                true => {
                    drop(engine);
                    std::thread::yield_now();
                    engine = shared.engine();
                    if engine.core.in_handshake(ticket) {
                        engine.advance(shared, ticket, p)
                    } else {
                        Progress::Ended
                    }
                }
                false => Progress::Held(p),
            };
        }
        // Still under the lock the step was decided under: a waiter handed
        // over later could be granted, or time out, before the acceptor
        // holds its socket, and be lost.
        let ready = match progress {
            Progress::Connected(ready) => {
                // Accepted as it was told OK: it never sits in the queue.
                let grants = engine.core.accepted(1);
                engine.grants.extend(grants);
                Some(ready)
            }
            Progress::Held(p) => {
                engine.handed.push((ticket, p));
                None
            }
            Progress::Ended => None,
        };
        if engine.has_work_for_acceptor() {
            shared.waker.wake();
        }
        Ok(ready)
    }
}

/// Whether a connection in its handshake has sent nothing yet.
fn nothing_came_yet(p: &Pending) -> bool {
    !p.waiting && p.buf.is_empty()
}

/// The acceptor thread: the sockets of handshakes in progress and of
/// waiters, and `poll`, driving the engine, which makes every decision.
struct Acceptor {
    shared: Arc<Shared>,
    listener: Arc<Socket>,
    pending: TicketMap<Pending>,
    /// Held so that, out of descriptors, one can be freed to refuse clients.
    spare_fd: Option<std::os::fd::OwnedFd>,
}

impl Acceptor {
    fn new(shared: Arc<Shared>, listener: Arc<Socket>) -> Acceptor {
        Acceptor {
            shared,
            listener,
            pending: TicketMap::default(),
            spare_fd: sys::spare_fd().ok(),
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
        self.shared.lender_waker.wake();
    }

    fn serve(&mut self) -> io::Result<()> {
        let shared = Arc::clone(&self.shared);
        let mut tickets: Vec<Ticket> = Vec::new();
        while !shared.shutdown.load(Ordering::SeqCst) {
            let now = Instant::now();
            let (accepting, timeout) = {
                let mut engine = shared.engine();
                self.take_over(&mut engine);
                engine.apply_counters(&shared);
                self.connect_grants(&mut engine);
                self.expire(&mut engine, now);
                let engine = &mut *engine;
                let (accepting, wake) = engine.core.turn(&mut engine.paused_until, now);
                (accepting, wake.map(|d| d.saturating_duration_since(now)))
            };

            tickets.clear();
            tickets.extend(self.pending.keys().copied());
            let (waker_ready, lease_over, listener_ready, ready_tickets) = {
                let mut fds = Vec::with_capacity(3 + tickets.len());
                fds.push(PollEntry::new(&shared.waker, Events::IN));
                fds.push(PollEntry::new(&shared.lease, Events::IN));
                fds.push(PollEntry::new(
                    &shared.listen_set,
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
                    .zip(&fds[3..])
                    .filter(|(_, f)| !f.revents().is_empty())
                    .map(|(t, f)| (*t, f.revents()))
                    .collect();
                (
                    !fds[0].revents().is_empty(),
                    !fds[1].revents().is_empty(),
                    !fds[2].revents().is_empty(),
                    ready,
                )
            };
            if waker_ready {
                shared.waker.drain();
            }
            if lease_over {
                shared.lease.drain();
                let _queue = shared.state.ready.lock().expect("ready queue poisoned");
                shared.lease_ran_out(&self.listener);
            }
            let mut engine = shared.engine();
            for (t, ev) in ready_tickets {
                self.on_event(&mut engine, t, ev);
            }
            if listener_ready {
                self.accept_some(&mut engine);
            }
            self.take_over(&mut engine);
            self.connect_grants(&mut engine);
        }
        Ok(())
    }

    /// Takes over the connections a lender left, and refuses the backlog
    /// for a lender that ran out of descriptors.
    fn take_over(&mut self, engine: &mut Engine) {
        for (ticket, p) in engine.handed.drain(..) {
            self.pending.insert(ticket, p);
        }
        if std::mem::take(&mut engine.out_of_descriptors) {
            self.refuse_backlog();
        }
    }

    /// Out of descriptors: refuses the clients waiting in the backlog with
    /// the spare descriptor (until the process has none again).
    fn refuse_backlog(&mut self) {
        let listener = &self.listener;
        fresh_connection::refuse_while_out_of_descriptors(&mut self.spare_fd, || {
            listener.accept_blocking_socket()
        });
    }

    /// Keeps, queues or forgets a connection after a step of its handshake.
    fn settle(&mut self, ticket: Ticket, progress: Progress) {
        match progress {
            Progress::Ended => {}
            Progress::Held(p) => {
                self.pending.insert(ticket, p);
            }
            Progress::Connected(ready) => self.shared.queue(ready),
        }
    }

    fn expire(&mut self, engine: &mut Engine, now: Instant) {
        let expired = engine.core.expire(now);
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
    fn accept_some(&mut self, engine: &mut Engine) {
        for _ in 0..ACCEPT_BATCH {
            // The new socket is blocking, as the application will use it;
            // the acceptor itself only ever reads and writes it with
            // DONTWAIT, so it never waits on one client.
            match self.listener.accept_blocking_socket() {
                Ok(socket) => {
                    if let Some((ticket, p)) = engine.arrive(&self.shared, socket) {
                        // The client usually sent HELLO right behind
                        // connect: try it now.
                        let progress = engine.advance(&self.shared, ticket, p);
                        self.settle(ticket, progress);
                    }
                }
                Err(e) if accept_starved(&e) => {
                    // Out of descriptors, the clients waiting are told so;
                    // out of kernel memory a spare descriptor frees none.
                    if out_of_descriptors(&e) {
                        self.refuse_backlog();
                    }
                    engine.paused_until = Some(Instant::now() + FD_EXHAUSTED_PAUSE);
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

    fn on_event(&mut self, engine: &mut Engine, ticket: Ticket, events: Events) {
        let Some(p) = self.pending.remove(&ticket) else {
            return;
        };
        if !p.waiting {
            let progress = engine.advance(&self.shared, ticket, p);
            return self.settle(ticket, progress);
        }
        if events.intersects(Events::RDHUP | Events::HUP | Events::ERR) {
            // The waiting client gave up.
            engine.core.waiter_left(ticket);
        } else {
            self.pending.insert(ticket, p);
        }
    }

    /// Connects waiters the core gave instances, skipping any that left.
    fn connect_grants(&mut self, engine: &mut Engine) {
        if engine.grants.is_empty() {
            return;
        }
        while let Some(g) = engine.grants.pop_front() {
            match self.pending.remove(&g.ticket) {
                Some(p) if !p.socket.peer_hung_up() => {
                    let progress = engine.connect(&self.shared, p, g.hello, g.desc, g.granted);
                    self.settle(g.ticket, progress);
                }
                _ => {
                    let more = engine.core.grant_failed();
                    engine.grants.extend(more);
                }
            }
        }
        engine.publish_active(&self.shared);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::time::{Duration, Instant};

    use crate::{ClientOptions, ErrorCode, ServerOptions, Wait};

    fn eventually(what: &str, f: impl Fn() -> bool) {
        let give_up = Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(Instant::now() < give_up, "gave up waiting for {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// A client that connects while `accept()` is pending is answered by
    /// that `accept()` (the acceptor's set does not watch the listener
    /// meanwhile); once the lease after it runs out, the acceptor thread
    /// answers clients again while no `accept()` is pending.
    #[test]
    fn a_lent_listener_goes_back_to_the_acceptor_when_the_lease_runs_out() {
        let name = format!("unit-lease-{}", std::process::id());
        let listener = ServerOptions::new().create(name.as_str()).unwrap();
        let shared = &listener.shared;
        let open = || {
            ClientOptions::new()
                .wait(Wait::Timeout(Duration::from_secs(10)))
                .open(name.as_str())
                .unwrap()
        };
        for round in 0..3 {
            std::thread::scope(|s| {
                let server = s.spawn(|| listener.accept().unwrap());
                eventually("accept() to lend the listener", || {
                    shared.lending.load(Ordering::Relaxed)
                });
                assert!(!shared.watched.load(Ordering::Relaxed), "round {round}");
                let mut client = open();
                let mut server = server.join().unwrap();
                client.write_message(b"ping").unwrap();
                assert_eq!(server.recv_message().unwrap(), b"ping");
            });
            eventually("the acceptor to take the listener back", || {
                shared.watched.load(Ordering::Relaxed)
            });
            // Nobody in accept(): the acceptor thread tells this one OK.
            let _client = open();
            let _server = listener
                .accept_timeout(Duration::from_secs(10))
                .unwrap()
                .unwrap();
        }
    }

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
