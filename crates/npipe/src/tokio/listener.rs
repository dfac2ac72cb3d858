//! The server on tokio: a listener whose acceptor task runs the same
//! handshake, policy and admission as the blocking acceptor thread, and the
//! server end of each connection.
//!
//! The acceptor task owns the listening socket and drives the engine's
//! `AcceptorCore`. A new connection's HELLO is read at once if it is
//! already there (it usually is); otherwise the connection gets a small
//! handshake task that waits for it (with the handshake timeout: a silent
//! or slow client is dropped without a word and holds up no one) and hands
//! it back. The core judges it, finds it an instance, and answers OK
//! (the connection goes to the queue [`PipeListener::accept`] takes from),
//! *busy*, or queues the client, strictly first come, first served. A queued
//! client is watched for hang-up; when an instance frees it goes to the head
//! waiter, and a waiter whose time runs out gets *timeout*. The server
//! decides every outcome and tells the client, so a client is never handed
//! to the application after it gave up.

use std::collections::HashMap;
use std::future::poll_fn;
use std::future::Future;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::pin::{pin, Pin};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use ::tokio::io::unix::AsyncFd;
use ::tokio::sync::{mpsc, Notify};
use ::tokio::task::{AbortHandle, Id as TaskId, JoinHandle, JoinSet};
use ::tokio::time::Sleep;

use super::stream::{register, register_for_wakes, PipeStream};
use crate::engine::acceptor::{AcceptorCore, Answer, Grant};
use crate::engine::ticket_map::TicketMap;
use crate::error::{Error, ErrorCode, Result};
use crate::fresh_connection::{
    self, accept_starved, out_of_descriptors, peer_of, refuse, send_reply, Arrived, FirstRead,
    ACCEPT_BATCH, FD_EXHAUSTED_PAUSE, HELLO_READ,
};
use crate::info::PipeInfo;
use crate::listener_state::{Carrier, ListenerState, Publication, Ready};
use crate::name::PipeName;
use crate::options::ServerOptions;
use crate::peer_process::ClientProcess;
use crate::pipe::{Pipe, ServerEnd};
use crate::policy::Peer;
use crate::proto::admission::Ticket;
use crate::proto::handshake::{Hello, PipeDescription, Reply};
use crate::proto::ProtoError;
use crate::remote_peer::RemotePeer;
use crate::server_instance::InstancePool;
use crate::shm::late::async_end::AsyncLate;
use crate::shm::link::AsyncLink;
use crate::shm::transport::async_end::AsyncShm;
use crate::shm::transport::PeerFd;
use crate::sys::{self, Fd, RecvFlagsLite, Socket};
use crate::types::Access;

/// What server ends and `accept` tell the acceptor.
enum Event {
    /// An instance was given back (a connection closed or disconnected).
    Released,
    /// The application took a connection from the queue.
    Accepted,
}

/// State shared by the listener, the acceptor task and server ends.
#[derive(Debug)]
struct Shared {
    state: ListenerState,
    /// Notified when a client joins `state.ready` or the acceptor stops.
    ready_notify: Notify,
    /// What server ends and `accept` tell the acceptor.
    events: mpsc::UnboundedSender<Event>,
    /// The listener is gone: the acceptor queues nothing more.
    closed: std::sync::atomic::AtomicBool,
}

impl Shared {
    fn tell(&self, event: Event) {
        // Fails only once the acceptor is gone, when nothing needs telling.
        let _ = self.events.send(event);
    }
}

impl InstancePool for Shared {
    /// Gives an instance back: counted at once for `info`, and told to the
    /// acceptor, whose `Released` event counts exactly this one release.
    fn release_instance(&self) {
        self.state.instances.release();
        self.tell(Event::Released);
    }

    fn active_now(&self) -> u32 {
        self.state.instances.active_now()
    }
}

/// A named pipe server on tokio: the name, its instances, and the clients
/// waiting to be accepted. Made by
/// [`ServerOptions::create_async`](crate::ServerOptions::create_async) from
/// within a tokio runtime, whose task runs every handshake; dropping it
/// removes the name (connections already accepted stay connected).
///
/// [`accept`](Self::accept) is cancel-safe: a connection is taken from the
/// queue only when the future completes, so `accept` may sit in a
/// `tokio::select!` or under `tokio::time::timeout`.
///
/// ```
/// use npipe::ServerOptions;
/// use std::time::Duration;
///
/// # let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
/// # rt.block_on(async {
/// let name = format!("doc-async-listener-{}", std::process::id());
/// let listener = ServerOptions::new().create_async(&name)?;
///
/// let server = tokio::spawn(async move {
///     // ConnectNamedPipe, then echo one message
///     let mut conn = listener.accept().await?;
///     let msg = conn.recv_message().await?;
///     conn.write_message(&msg).await
/// });
///
/// let reply = npipe::tokio::call(&name, b"hi", Duration::from_secs(1)).await?;
/// assert_eq!(reply, b"hi");
/// server.await.unwrap()?;
/// # Ok::<(), npipe::Error>(())
/// # }).unwrap();
/// ```
#[derive(Debug)]
pub struct PipeListener {
    shared: Arc<Shared>,
    acceptor: JoinHandle<()>,
    publication: Publication,
}

impl PipeListener {
    pub(crate) fn create(name: PipeName, opts: ServerOptions) -> Result<PipeListener> {
        let runtime = ::tokio::runtime::Handle::try_current().map_err(|_| {
            Error::new(
                ErrorCode::NotSupported,
                "create_async needs a tokio runtime: call it from within one \
                 (or use ServerOptions::create for the blocking server)",
            )
        })?;
        let (publication, socket, server_uid) = Publication::create(&name, &opts)?;
        let listener = match register(socket) {
            Ok(l) => l,
            Err(e) => {
                publication.remove();
                return Err(e);
            }
        };
        let (events, inbox) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            state: ListenerState::new(name, opts, server_uid),
            ready_notify: Notify::new(),
            closed: std::sync::atomic::AtomicBool::new(false),
            events,
        });
        let acceptor = Acceptor::new(Arc::clone(&shared));
        let acceptor = runtime.spawn(acceptor.run(listener, inbox));
        Ok(PipeListener {
            shared,
            acceptor,
            publication,
        })
    }

    /// Waits for a client (`ConnectNamedPipe`) and returns the connection.
    /// Cancel-safe.
    pub async fn accept(&self) -> Result<PipeServer> {
        let shared = &self.shared;
        loop {
            let mut notified = pin!(shared.ready_notify.notified());
            notified.as_mut().enable();
            let next = shared
                .state
                .ready
                .lock()
                .expect("ready queue poisoned")
                .pop_front();
            if let Some(ready) = next {
                shared.tell(Event::Accepted);
                return server_end(Arc::clone(shared), ready);
            }
            shared.state.stopped()?;
            if self.acceptor.is_finished() {
                return Err(Error::new(
                    ErrorCode::Other,
                    "the pipe stopped: its acceptor task ended (was its runtime shut down?)",
                ));
            }
            notified.await;
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

impl Drop for PipeListener {
    fn drop(&mut self) {
        // The name goes first, so no new client finds it; then the acceptor
        // (with the listening socket, handshakes and waiters) stops.
        self.publication.remove();
        self.acceptor.abort();
        // The acceptor may be mid-poll on another worker and queue one more
        // connection before the abort lands: the flag, checked under the
        // queue's lock, stops that; what is queued is closed now, so those
        // clients see a broken pipe rather than wait for an `accept`.
        self.shared.closed.store(true, Ordering::SeqCst);
        self.shared.state.ready.lock().expect("poisoned").clear();
    }
}

/// The server end of one connected client (one pipe instance) on tokio:
/// reads and writes (and `AsyncRead`/`AsyncWrite`), the client's identity,
/// impersonation, `DisconnectNamedPipe`.
///
/// Impersonation (`ImpersonateNamedPipeClient`) is
/// [`run_as_client`](PipeServer::run_as_client): the caller's closure runs on
/// a blocking thread (`tokio::task::spawn_blocking`) that takes the client's
/// ids for the closure's duration only, never on a runtime worker, whose
/// other tasks would otherwise run as the client.
///
/// ```
/// use npipe::{ClientOptions, ServerOptions};
///
/// # let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
/// # rt.block_on(async {
/// let name = format!("doc-async-pipe-server-{}", std::process::id());
/// let listener = ServerOptions::new().create_async(&name)?;
/// let client = ClientOptions::new().open_async(&name).await?;
/// let server = listener.accept().await?;
///
/// // GetNamedPipeClientProcessId, from the kernel:
/// assert_eq!(server.client_process_id(), std::process::id());
/// # drop(client);
/// # Ok::<(), npipe::Error>(())
/// # }).unwrap();
/// ```
pub type PipeServer = Pipe<PipeStream, ServerEnd>;

/// The server end of a connection the acceptor told OK.
fn server_end(shared: Arc<Shared>, mut ready: Ready) -> Result<PipeServer> {
    // If the stream cannot be made, the instance, dropped, is given back.
    let shm = ready.shm.take();
    let late = ready.late_offers.then_some(ready.cred.user.0);
    let (carrier, end, instance) = shared.state.open_end(shared.clone(), ready);
    let io = match (carrier, shm) {
        (Carrier::Socket(socket), Some(rings)) => {
            let io = register_for_wakes(socket)?;
            let rings = AsyncShm::new(rings, io);
            PipeStream::with_link(AsyncLink::Shm(Box::new(rings)), end)
        }
        (Carrier::Socket(socket), None) => match late {
            Some(uid) => {
                let late = AsyncLate::taker(Arc::new(register(socket)?), uid);
                PipeStream::with_link(AsyncLink::Late(Box::new(late)), end)
            }
            None => PipeStream::new(socket, end)?,
        },
        #[cfg(feature = "remote")]
        (Carrier::Handed(tls), _) => {
            let tls = crate::remote::async_tls::AsyncTls::new(*tls)
                .map_err(|e| Error::os(e, "cannot register a handed-over connection with tokio"))?;
            PipeStream::with_link(AsyncLink::Tls(Box::new(tls)), end)
        }
    };
    Ok(Pipe {
        io,
        role: ServerEnd { instance },
    })
}

impl Pipe<PipeStream, ServerEnd> {
    /// `ImpersonateNamedPipeClient` for async code: runs `f` as the client
    /// on a thread npipe starts for it and that ends with it, never on a
    /// runtime worker (whose other tasks would run as the client) nor on
    /// tokio's shared blocking pool: a thread created while impersonating
    /// inherits the client's identity, so a pool thread that `f` made grow
    /// the pool (what `tokio::fs` does) would serve the application's later
    /// blocking work as the client. The thread is outside the runtime, so
    /// `f` cannot reach the pool by accident (`Handle::current` panics
    /// there); it reverts (`RevertToSelf`) before it ends. The identity is
    /// never held across an `.await`. To run a program as the client, use
    /// [`spawn_as_client`](Self::spawn_as_client).
    ///
    /// Fails with `ERROR_CANNOT_IMPERSONATE` (1368) if the client granted
    /// identification only, and `ERROR_PRIVILEGE_NOT_HELD` (1314) without
    /// root or `CAP_SETUID`/`CAP_SETGID` (unless the client is this process's
    /// own user).
    ///
    /// ```no_run
    /// # async fn serve(pipe: &npipe::tokio::PipeServer) -> npipe::Result<()> {
    /// let report = pipe
    ///     .run_as_client(|| std::fs::read("/home/client/report.txt"))
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn run_as_client<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let (uid, gid, groups) = self.acting_ids()?;
        let (done, result) = ::tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("npipe-impersonation".into())
            .spawn(move || {
                let run = || -> Result<T> {
                    let _guard = crate::impersonation::Impersonation::begin(uid, gid, groups)?;
                    Ok(f())
                };
                // A panic in `f` unwinds through the guard, which reverts;
                // the dropped sender then reports it.
                let _ = done.send(run());
            })
            .map_err(|e| Error::os(e, "cannot start the impersonation thread"))?;
        result.await.map_err(|_| {
            Error::new(
                ErrorCode::Other,
                "the closure run as the client panicked (the thread reverted first)",
            )
        })?
    }
}

/// A client waiting for an instance.
struct Waiter {
    arrived: Arrived,
    /// The task watching for its hang-up.
    watch: Option<AbortHandle>,
}

/// What woke the acceptor.
enum Wake {
    Event(Event),
    Connections(Vec<Socket>),
    /// A handshake task ended (its HELLO, if one came; boxed, as a HELLO
    /// with a gateway's groups is large beside the other wake-ups).
    Hello(TaskId, Option<Box<Arrived>>),
    WaiterLeft(Ticket),
    Timer,
    Nothing,
    Failed(io::Error),
}

/// The acceptor task: readiness, handshake tasks and timers, driving the
/// engine's [`AcceptorCore`], which makes every decision.
struct Acceptor {
    shared: Arc<Shared>,
    core: AcceptorCore,
    waiting: TicketMap<Waiter>,
    handshakes: JoinSet<Option<Arrived>>,
    /// Each handshake task's ticket, to end its handshake in the core
    /// however the task ends.
    handshake_tickets: HashMap<TaskId, Ticket>,
    watches: JoinSet<Ticket>,
    paused_until: Option<Instant>,
    /// Held so that, out of descriptors, one can be freed to refuse clients.
    spare_fd: Option<OwnedFd>,
    /// Where each client's first read lands.
    first_read: FirstRead,
}

impl Acceptor {
    fn new(shared: Arc<Shared>) -> Acceptor {
        let core = shared.state.acceptor_core();
        Acceptor {
            shared,
            core,
            waiting: TicketMap::default(),
            handshakes: JoinSet::new(),
            handshake_tickets: HashMap::new(),
            watches: JoinSet::new(),
            paused_until: None,
            spare_fd: sys::spare_fd().ok(),
            first_read: FirstRead::new(),
        }
    }

    async fn run(mut self, listener: AsyncFd<Fd>, mut inbox: mpsc::UnboundedReceiver<Event>) {
        let far = || Instant::now() + Duration::from_secs(86_400 * 365);
        let mut timer = pin!(::tokio::time::sleep_until(far().into()));
        loop {
            let now = Instant::now();
            self.expire(now);
            let (accepting, deadline) = self.core.turn(&mut self.paused_until, now);
            timer.as_mut().reset(deadline.unwrap_or_else(far).into());
            let wake =
                poll_fn(|cx| self.poll_wake(cx, &listener, &mut inbox, accepting, timer.as_mut()))
                    .await;
            match wake {
                Wake::Event(Event::Released) => {
                    let grants = self.core.released(1);
                    // This event counts the one release its sender made.
                    self.shared.state.instances.publish(self.core.active(), 1);
                    self.connect_grants(grants);
                }
                Wake::Event(Event::Accepted) => {
                    let grants = self.core.accepted(1);
                    self.connect_grants(grants);
                }
                Wake::Connections(sockets) => {
                    for socket in sockets {
                        self.on_connection(socket);
                    }
                }
                Wake::Hello(task, arrived) => {
                    if let Some(ticket) = self.handshake_tickets.remove(&task) {
                        match arrived {
                            Some(arrived) => self.on_hello(ticket, *arrived),
                            None => self.core.handshake_ended(ticket),
                        }
                    }
                }
                Wake::WaiterLeft(ticket) => {
                    if self.waiting.remove(&ticket).is_some() {
                        self.core.waiter_left(ticket);
                        self.publish_active();
                    }
                }
                Wake::Timer | Wake::Nothing => {}
                Wake::Failed(e) => {
                    self.shared.state.fail(e.to_string());
                    self.shared.ready_notify.notify_waiters();
                    return;
                }
            }
        }
    }

    fn poll_wake(
        &mut self,
        cx: &mut Context<'_>,
        listener: &AsyncFd<Fd>,
        inbox: &mut mpsc::UnboundedReceiver<Event>,
        accepting: bool,
        timer: Pin<&mut Sleep>,
    ) -> Poll<Wake> {
        if let Poll::Ready(Some(event)) = inbox.poll_recv(cx) {
            return Poll::Ready(Wake::Event(event));
        }
        if let Poll::Ready(Some(done)) = self.handshakes.poll_join_next_with_id(cx) {
            return Poll::Ready(match done {
                Ok((task, arrived)) => Wake::Hello(task, arrived.map(Box::new)),
                Err(e) => Wake::Hello(e.id(), None),
            });
        }
        if let Poll::Ready(Some(done)) = self.watches.poll_join_next(cx) {
            // An aborted watch (its waiter got an instance) is not news.
            return Poll::Ready(done.map_or(Wake::Nothing, Wake::WaiterLeft));
        }
        if accepting {
            if let Poll::Ready(ready) = listener.poll_read_ready(cx) {
                let mut guard = match ready {
                    Ok(guard) => guard,
                    Err(e) => return Poll::Ready(Wake::Failed(e)),
                };
                let mut batch = Vec::new();
                for _ in 0..ACCEPT_BATCH {
                    match guard.get_inner().socket().accept_nonblocking() {
                        Ok(socket) => batch.push(socket),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            guard.clear_ready();
                            break;
                        }
                        Err(e) if accept_starved(&e) => {
                            // Out of kernel memory a spare descriptor frees
                            // none: only the pause.
                            if out_of_descriptors(&e) {
                                let listener = guard.get_inner().socket();
                                fresh_connection::refuse_while_out_of_descriptors(
                                    &mut self.spare_fd,
                                    || listener.accept_nonblocking(),
                                );
                            }
                            self.paused_until = Some(Instant::now() + FD_EXHAUSTED_PAUSE);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                return Poll::Ready(Wake::Connections(batch));
            }
        }
        if timer.poll(cx).is_ready() {
            return Poll::Ready(Wake::Timer);
        }
        Poll::Pending
    }

    fn publish_active(&self) {
        self.shared.state.instances.publish(self.core.active(), 0);
    }

    fn expire(&mut self, now: Instant) {
        // Handshakes keep their own time in their tasks: only waits run out
        // here.
        let (code, reason) = AcceptorCore::timeout_refusal();
        for t in self.core.expire(now).timed_out {
            if let Some(w) = self.waiting.remove(&t) {
                if let Some(watch) = w.watch {
                    watch.abort();
                }
                refuse(&w.arrived.socket, code, reason);
            }
        }
    }

    fn on_connection(&mut self, socket: Socket) {
        let shared = &self.shared;
        let Some(peer) = peer_of(&socket, &shared.state.opts, shared.state.server_uid) else {
            return;
        };
        let ticket = match self.core.arrive(&peer, None) {
            Ok(ticket) => ticket,
            Err((code, reason)) => return refuse(&socket, code, &reason),
        };
        // Where the kernel cannot name the connecting process later (no
        // SO_PEERPIDFD), its pid is pinned now, before the HELLO.
        let process = ClientProcess::at_accept(&socket, peer.cred.pid);
        // The client usually sent its HELLO right behind its connect: read
        // it now, as the blocking acceptor does, and only a client whose
        // HELLO is not all there yet gets a task (and a registration with
        // the reactor) to wait for it.
        // An offer rides with the HELLO's first bytes: only the first read
        // takes a descriptor in (closed elsewhere unless it becomes rings).
        let (mut buf, offer) = match self.first_read.take(&socket, peer.cred.user.0) {
            Ok((bytes, fd)) if bytes.is_empty() => {
                drop(fd.map(PeerFd::new));
                return self.core.handshake_ended(ticket);
            }
            Err(e) if e.kind() != io::ErrorKind::WouldBlock => {
                return self.core.handshake_ended(ticket)
            }
            Ok((bytes, fd)) => (bytes, fd.map(PeerFd::new)),
            Err(_) => (Vec::new(), None),
        };
        match Hello::decode(&buf) {
            Ok(Some((hello, used))) => {
                let leftover = buf.split_off(used);
                let arrived = Arrived {
                    socket,
                    peer,
                    process,
                    hello,
                    leftover,
                    offer,
                };
                self.on_hello(ticket, arrived);
            }
            Ok(None) => {
                let deadline = Instant::now() + shared.state.opts.handshake_timeout;
                let first = Handshake {
                    buf,
                    offer,
                    deadline,
                };
                let task = self
                    .handshakes
                    .spawn(handshake(socket, peer, process, first));
                self.handshake_tickets.insert(task.id(), ticket);
            }
            Err(e) => {
                self.core.handshake_ended(ticket);
                let err: Error = e.into();
                refuse(&socket, err.code(), err.message());
            }
        }
    }

    fn on_hello(&mut self, ticket: Ticket, mut arrived: Arrived) {
        let answer = self
            .core
            .hello(ticket, &arrived.peer, &arrived.hello, Instant::now());
        match answer {
            Answer::Refuse(code, reason) => refuse(&arrived.socket, code, &reason),
            Answer::Describe { desc, security } => {
                send_reply(&arrived.socket, &Reply::Info { desc, security });
            }
            Answer::Connect { desc, granted } => self.connect(arrived, desc, granted),
            Answer::Wait => {
                arrived.peer.groups = Vec::new();
                let watch = self.watch(ticket, &arrived.socket);
                self.waiting.insert(ticket, Waiter { arrived, watch });
            }
        }
        self.publish_active();
    }

    /// Watches a waiting client for hang-up, through a duplicate of its
    /// descriptor (so that its own registration, made when it connects, is
    /// untouched). `None` if that cannot be set up: its hang-up is then seen
    /// when an instance frees.
    fn watch(&mut self, ticket: Ticket, socket: &Socket) -> Option<AbortHandle> {
        let dup: OwnedFd = socket.as_fd().try_clone_to_owned().ok()?;
        Some(self.watches.spawn(async move {
            let Ok(fd) = sys::register_async_owned(dup) else {
                return std::future::pending().await;
            };
            loop {
                match fd.readable().await {
                    Ok(guard) if guard.ready().is_read_closed() => return ticket,
                    // A pipelined request arrived: not a hang-up.
                    Ok(mut guard) => guard.clear_ready(),
                    Err(_) => return ticket,
                }
            }
        }))
    }

    /// Connects waiters the core gave instances, skipping any that left.
    fn connect_grants(&mut self, grants: Vec<Grant>) {
        let mut todo = std::collections::VecDeque::from(grants);
        while let Some(g) = todo.pop_front() {
            let Some(w) = self.waiting.remove(&g.ticket) else {
                todo.extend(self.core.grant_failed());
                continue;
            };
            if let Some(watch) = &w.watch {
                watch.abort();
            }
            if w.arrived.socket.peer_hung_up() {
                todo.extend(self.core.grant_failed());
                continue;
            }
            self.connect(w.arrived, g.desc, g.granted);
        }
        self.publish_active();
    }

    /// Sends OK and queues the connection for the application's `accept`.
    /// The core has already counted the instance as taken.
    fn connect(&mut self, arrived: Arrived, desc: PipeDescription, granted: Access) {
        // Counted before the client or `accept` can see the connection, so
        // `info` never lags behind (a failed send below counts it back).
        self.publish_active();
        let Some(ready) = arrived.tell_ok(desc, granted, &self.shared.state.opts, true) else {
            let more = self.core.grant_failed();
            self.connect_grants(more);
            return;
        };
        let shared = Arc::clone(&self.shared);
        #[cfg(feature = "remote")]
        if ready.handed_over {
            // The gateway's HAND-OFF is read by a task of its own, so one
            // slow to send it holds up no other client. (If the runtime is
            // shutting down the task never runs, and the connection goes
            // with it, as the acceptor does.)
            drop(::tokio::spawn(async move {
                let mut ready = ready;
                ready.settle_async().await;
                queue_looked_up(shared, ready);
            }));
            return;
        }
        queue_looked_up(shared, ready);
    }
}

/// Queues a connection for `accept`. A remote client mapped to a local
/// user first has its primary group read from the user database (NSS:
/// files, LDAP, ...), which may take its time, so on the blocking pool,
/// never on the runtime's threads. (If the runtime is shutting down the
/// task never runs, and the connection goes with it, as the acceptor does.)
fn queue_looked_up(shared: Arc<Shared>, ready: Ready) {
    if ready.hello.local_user.is_none() {
        shared.queue(ready);
        return;
    }
    drop(::tokio::task::spawn_blocking(move || {
        let mut ready = ready;
        ready.remote = RemotePeer::from_hello(&ready.hello);
        shared.queue(ready);
    }));
}

impl Shared {
    /// Queues a connection told OK for the application's `accept`.
    fn queue(&self, ready: Ready) {
        let mut queue = self.state.ready.lock().expect("ready queue poisoned");
        if self.closed.load(Ordering::SeqCst) {
            return; // the listener is gone: closing the socket tells the client
        }
        queue.push_back(ready);
        drop(queue);
        self.ready_notify.notify_waiters();
    }
}

impl Drop for Acceptor {
    /// However the task ends (its listener dropped, its runtime shut down),
    /// an `accept` waiting on another runtime must learn of it.
    fn drop(&mut self) {
        self.shared
            .state
            .fail("its acceptor task ended (was its runtime shut down?)".to_string());
        self.shared.ready_notify.notify_waiters();
    }
}

/// Where a handshake stands when the acceptor hands it to a task.
struct Handshake {
    /// What arrived of the HELLO so far.
    buf: Vec<u8>,
    /// A descriptor that came with its first bytes.
    offer: Option<PeerFd>,
    /// When the whole HELLO must be in.
    deadline: Instant,
}

/// A new connection's handshake: the whole HELLO within its deadline, or
/// nothing (silent, slow, or gone: dropped without a word). A malformed
/// HELLO is refused here.
async fn handshake(
    socket: Socket,
    peer: Peer,
    process: ClientProcess,
    first: Handshake,
) -> Option<Arrived> {
    let Handshake {
        mut buf,
        mut offer,
        deadline,
    } = first;
    let fd = register(socket).ok()?;
    let sender = peer.cred.user.0;
    let read = read_hello(&fd, &mut buf, &mut offer, sender);
    let read = ::tokio::time::timeout_at(deadline.into(), read).await;
    match read {
        Ok(Some(Ok((hello, used)))) => {
            let leftover = buf.split_off(used);
            Some(Arrived {
                socket: fd.into_inner().into_socket(),
                peer,
                process,
                hello,
                leftover,
                offer,
            })
        }
        Ok(Some(Err(e))) => {
            let err: Error = e.into();
            refuse(fd.get_ref().socket(), err.code(), err.message());
            None
        }
        Ok(None) | Err(_) => None,
    }
}

/// Reads until `buf` starts with a whole HELLO (or a malformed one); `None`
/// if the client closed or failed first. The first bytes' descriptor, if
/// none was read yet, goes to `offer` (from `sender`'s budget of pending
/// closes).
async fn read_hello(
    fd: &AsyncFd<Fd>,
    buf: &mut Vec<u8>,
    offer: &mut Option<PeerFd>,
    sender: u32,
) -> Option<std::result::Result<(Hello, usize), ProtoError>> {
    loop {
        let room = HELLO_READ.saturating_sub(buf.len());
        if buf.capacity() - buf.len() < room {
            buf.reserve_exact(room);
        }
        let mut guard = fd.readable().await.ok()?;
        let first = buf.is_empty();
        match guard.try_io(|fd| {
            let socket = fd.get_ref().socket();
            if first {
                socket.recv_spare_with_fd(buf, sender)
            } else {
                socket
                    .recv_spare(buf, RecvFlagsLite::DontWait)
                    .map(|n| (n, None))
            }
        }) {
            Ok(Ok((0, _))) | Ok(Err(_)) => return None,
            Ok(Ok((_, fd))) => *offer = fd.map(PeerFd::new).or(offer.take()),
            Err(_would_block) => continue,
        }
        match Hello::decode(buf) {
            Ok(None) => {}
            Ok(Some(done)) => return Some(Ok(done)),
            Err(e) => return Some(Err(e)),
        }
    }
}
