//! The Windows backend's blocking front end: each method one kernel call
//! (or a loop of them for a whole message), issued overlapped and waited
//! for on the calling thread, so that reads and `accept` can be given a
//! timeout and a read and a write can wait at once on one handle.

use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::end::{client_queries, end_queries, server_queries, EndState, Impersonation};
use super::open::{Attempt, Opener, RECONNECT_PAUSE};
use super::{code_of, os, Gather, Instances, FIRST_READ, INSTANCE_PAUSE};
use crate::error::{Error, ErrorCode, Result};
use crate::identity::{Identity, LocalUser};
use crate::info::PipeInfo;
use crate::name::PipeName;
use crate::options::{ClientOptions, ServerOptions};
use crate::stream_core::{MessageRead, Peek};
use crate::sys::{self, Peer};
use crate::types::{Access, ReadMode, Wait};

/// A named pipe server: the name and its instances (`CreateNamedPipe`).
/// One instance always listens, so a client may connect while the
/// application is not in [`accept`](Self::accept), as on Windows.
#[derive(Debug)]
pub struct PipeListener {
    instances: Instances,
    /// Instances listening for the next clients: one, or more after an
    /// `accept_timeout` gave up while another `accept` had made a new one
    /// (a client may have connected to either, so neither is dropped).
    ///
    /// Instances an `accept` waits on right now are listening too: `info`
    /// counts them out of the connected ones, and asks the kernel through
    /// one while none is idle. One lock, so an instance is always in one
    /// list or the other.
    listening: Mutex<Listening>,
}

#[derive(Debug, Default)]
struct Listening {
    idle: std::collections::VecDeque<Arc<sys::Pipe>>,
    connecting: Vec<Arc<sys::Pipe>>,
}

impl PipeListener {
    pub(crate) fn create(name: PipeName, opts: ServerOptions) -> Result<PipeListener> {
        let instances = Instances::new(name, opts)?;
        let first = instances.first()?;
        Ok(PipeListener {
            instances,
            listening: Mutex::new(Listening {
                idle: [Arc::new(first)].into(),
                connecting: Vec::new(),
            }),
        })
    }

    /// `ConnectNamedPipe`: waits for a client and returns its connection.
    /// While every instance is in use it waits for one to close.
    pub fn accept(&self) -> Result<PipeServer> {
        Ok(self.accept_until(None)?.expect("no deadline"))
    }

    /// Waits up to `timeout` for a client: `Ok(None)` if none came. The
    /// instance keeps listening (a client may connect to it before the
    /// next `accept`), as on Linux.
    pub fn accept_timeout(&self, timeout: Duration) -> Result<Option<PipeServer>> {
        self.accept_until(Instant::now().checked_add(timeout))
    }

    fn accept_until(&self, deadline: Option<Instant>) -> Result<Option<PipeServer>> {
        let left = || deadline.map(|d| d.saturating_duration_since(Instant::now()));
        let pipe = loop {
            let Some((pipe, others)) = self.take_listening(deadline)? else {
                return Ok(None);
            };
            // With other instances listening too, a client may come to any:
            // wait on each in turn, a slice at a time.
            let wait = match (left(), others) {
                (left, false) => left,
                (Some(left), true) => Some(left.min(ROTATION)),
                (None, true) => Some(ROTATION),
            };
            let connected = sys::waited(&pipe, sys::Call::Connect, wait);
            lock(&self.listening)
                .connecting
                .retain(|p| !Arc::ptr_eq(p, &pipe));
            match connected {
                Ok(sys::Waited::Done(..)) => break pipe,
                Ok(sys::Waited::TimedOut(_)) => {
                    self.put_back(pipe);
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        return Ok(None);
                    }
                }
                // A client came and went before it was accepted: that
                // instance is spent, and no client may stop the server by
                // doing so. Listen on a fresh one.
                Err(e) if code_of(&e) == Some(ErrorCode::NoData) => continue,
                Err(e) => return Err(os(e, "waiting for a client failed")),
            }
        };
        // The next client can connect while this one is served. Another
        // accept on another thread may have put its instance there already.
        let mut listening = lock(&self.listening);
        if listening.idle.is_empty() {
            let next = self.instances.next().ok().flatten().map(Arc::new);
            listening.idle.extend(next);
        }
        drop(listening);
        Ok(Some(PipeServer {
            conn: Conn::new(self.instances.server_end(pipe), None),
        }))
    }

    /// The instance to connect next: the listening one, or a new one once
    /// an instance is free; `None` if none was by the deadline.
    /// With it, whether other instances are idle (listening, no `accept`
    /// waiting on them).
    fn take_listening(&self, deadline: Option<Instant>) -> Result<Option<(Arc<sys::Pipe>, bool)>> {
        let mut listening = lock(&self.listening);
        if let Some(pipe) = listening.idle.pop_front() {
            listening.connecting.push(pipe.clone());
            return Ok(Some((pipe, !listening.idle.is_empty())));
        }
        drop(listening);
        loop {
            match self.instances.next()? {
                Some(pipe) => {
                    let pipe = Arc::new(pipe);
                    lock(&self.listening).connecting.push(pipe.clone());
                    return Ok(Some((pipe, false)));
                }
                None if deadline.is_some_and(|d| Instant::now() >= d) => return Ok(None),
                // Every instance is in use: wait for one to close.
                None => std::thread::sleep(INSTANCE_PAUSE),
            }
        }
    }

    /// An instance no client reached in time listens on: a client may
    /// connect to it before the next `accept`, which takes it first.
    fn put_back(&self, pipe: Arc<sys::Pipe>) {
        lock(&self.listening).idle.push_back(pipe);
    }

    /// The pipe's name.
    pub fn name(&self) -> &PipeName {
        &self.instances.name
    }

    /// The pipe as the server sees it (`GetNamedPipeInfo`,
    /// `GetNamedPipeHandleState`): its shape, and the instances connected.
    pub fn info(&self) -> PipeInfo {
        let listening = lock(&self.listening);
        let all = || listening.idle.iter().chain(&listening.connecting);
        let probe = all().next().map(|p| &**p);
        self.instances.info(probe, all().count() as u32)
    }
}

/// How long an `accept` waits on one of several idle instances before it
/// looks at the next (a client may have come to any of them).
const ROTATION: Duration = Duration::from_millis(20);

/// A lock that a panicked holder did not poison for the rest.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One end of a connected instance: the I/O both ends share.
#[derive(Debug)]
pub(super) struct Conn {
    pub(super) state: EndState,
    /// How long a read (or a transaction's reply) may wait.
    read_timeout: Option<Duration>,
    /// How long a write may wait for its reader.
    write_timeout: Option<Duration>,
    /// A write timed out: its reader may have taken part of it (the kernel
    /// does not always say), so the stream may be cut, and this end
    /// refuses to go on as if it were not.
    broken: AtomicBool,
}

impl Conn {
    fn new(state: EndState, read_timeout: Option<Duration>) -> Conn {
        Conn {
            state,
            read_timeout,
            write_timeout: None,
            broken: AtomicBool::new(false),
        }
    }

    /// Refuses I/O on an end that was disconnected or cut.
    fn usable(&self) -> Result<()> {
        self.state.connected()?;
        if self.broken.load(Ordering::Relaxed) {
            return Err(Error::new(
                ErrorCode::BrokenPipe,
                "a write or transaction on this end timed out, and its reader may have taken \
                 part of the request: the pipe is cut",
            ));
        }
        Ok(())
    }

    /// Runs `call`, waiting `timeout` at most: bytes moved and whether
    /// more of the message follows, or *timeout* (nothing was taken, and
    /// it may be tried again).
    fn wait_for(
        &self,
        call: sys::Call<'_>,
        timeout: Option<Duration>,
        what: &str,
    ) -> Result<(usize, bool)> {
        // What a timeout means for this call: whether it cuts the stream
        // (a write, or a transaction's request: the reader may have taken
        // part of it), and how to say what was waited for.
        let (cuts, waited_for, which) = match call {
            sys::Call::Write(_) => (true, "its reader did not take it", "write"),
            sys::Call::Transact(..) => (
                true,
                "no reply came (the pipe is cut: the request may have gone in part)",
                "read",
            ),
            _ => (false, "nothing came", "read"),
        };
        match sys::waited(&self.state.pipe, call, timeout).map_err(|e| os(e, what))? {
            sys::Waited::Done(n, more) => Ok((n, more)),
            sys::Waited::TimedOut(_) => {
                if cuts {
                    self.broken.store(true, Ordering::Relaxed);
                }
                Err(Error::new(
                    ErrorCode::Timeout,
                    format!(
                        "{what} on {}: {waited_for} within the {which} timeout ({} ms)",
                        self.state.name,
                        timeout.unwrap_or_default().as_millis()
                    ),
                ))
            }
        }
    }

    fn read_message(&self, buf: &mut [u8]) -> Result<MessageRead> {
        self.read_within(buf, self.read_timeout)
    }

    fn read_within(&self, buf: &mut [u8], timeout: Option<Duration>) -> Result<MessageRead> {
        self.usable()?;
        let (n, more) = self.wait_for(sys::Call::Read(buf), timeout, "read")?;
        Ok(if more {
            MessageRead::MoreData(n)
        } else {
            MessageRead::Complete(n)
        })
    }

    fn recv_message(&self) -> Result<Vec<u8>> {
        self.gather(Gather::starting_with(Vec::new(), self.state.max_message))
    }

    /// Reads until the message `gather` holds the start of is whole. Only
    /// a message's first part waits within the read timeout: a timeout
    /// after that would leave its parts read here lost, and the rest come
    /// as if a message of their own.
    fn gather(&self, mut gather: Gather) -> Result<Vec<u8>> {
        let mut timeout = if gather.is_empty() {
            self.read_timeout
        } else {
            None
        };
        loop {
            let read = self.read_within(gather.space()?, timeout)?;
            timeout = None;
            if let Some(msg) = gather.took(read)? {
                return Ok(msg);
            }
        }
    }

    fn write_message(&self, msg: &[u8]) -> Result<()> {
        self.usable()?;
        let mut sent = 0;
        // A message pipe takes a write whole; a byte pipe may take part.
        while sent < msg.len() || msg.is_empty() {
            let write = sys::Call::Write(&msg[sent..]);
            let (n, _) = self.wait_for(write, self.write_timeout, "write")?;
            if n == 0 && !msg.is_empty() {
                return Err(Error::new(
                    ErrorCode::BrokenPipe,
                    "the pipe took no bytes of a write",
                ));
            }
            sent += n;
            if msg.is_empty() {
                break;
            }
        }
        Ok(())
    }

    fn transact_into(&mut self, request: &[u8], reply: &mut [u8]) -> Result<MessageRead> {
        self.usable()?;
        let transact = sys::Call::Transact(request, reply);
        let (n, more) = self.wait_for(transact, self.read_timeout, "transact")?;
        Ok(if more {
            MessageRead::MoreData(n)
        } else {
            MessageRead::Complete(n)
        })
    }

    fn transact(&mut self, request: &[u8]) -> Result<Vec<u8>> {
        let mut reply = vec![0u8; FIRST_READ];
        let first = self.transact_into(request, &mut reply)?;
        reply.truncate(first.len());
        match first {
            MessageRead::Complete(_) => Ok(reply),
            MessageRead::MoreData(_) => {
                self.gather(Gather::starting_with(reply, self.state.max_message))
            }
        }
    }

    fn flush_buffers(&mut self) -> Result<()> {
        self.usable()?;
        sys::flush(&self.state.pipe).map_err(|e| os(e, "flush"))
    }
}

impl Conn {
    /// `Read::read`: bytes of the current message (the next read continues
    /// it); on a byte pipe, the stream's bytes.
    fn read_bytes(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self.read_message(buf) {
            Ok(r) => Ok(r.len()),
            // The writer closed: end of stream, as `std` expects.
            Err(e) if e.code() == ErrorCode::BrokenPipe => Ok(0),
            Err(e) => Err(e.into()),
        }
    }

    /// `Write::write`: the whole buffer, as one message on a message pipe.
    fn write_bytes(&self, buf: &[u8]) -> io::Result<usize> {
        self.write_message(buf)?;
        Ok(buf.len())
    }
}

/// The reading half of a [`PipeServer`] or [`PipeClient`] from `split`:
/// reads on one thread while the [`WriteHalf`] writes on another (each
/// call is overlapped, so neither waits for the other).
#[derive(Debug)]
pub struct ReadHalf<'a> {
    conn: &'a Conn,
}

/// The writing half from `split`. A Windows pipe cannot be half-closed:
/// there is no `shutdown_write`.
#[derive(Debug)]
pub struct WriteHalf<'a> {
    conn: &'a Conn,
}

impl ReadHalf<'_> {
    /// As the end's `read_message`.
    pub fn read_message(&mut self, buf: &mut [u8]) -> Result<MessageRead> {
        self.conn.read_message(buf)
    }
    /// As the end's `recv_message`.
    pub fn recv_message(&mut self) -> Result<Vec<u8>> {
        self.conn.recv_message()
    }
}

impl WriteHalf<'_> {
    /// As the end's `write_message`.
    pub fn write_message(&mut self, msg: &[u8]) -> Result<()> {
        self.conn.write_message(msg)
    }
}

impl Read for ReadHalf<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.conn.read_bytes(buf)
    }
}

impl Write for WriteHalf<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.conn.write_bytes(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The server end of a connected instance (`ConnectNamedPipe`'s handle).
#[derive(Debug)]
pub struct PipeServer {
    pub(super) conn: Conn,
}

/// The client end (`CreateFile` on the pipe's name).
#[derive(Debug)]
pub struct PipeClient {
    conn: Conn,
}

/// The I/O methods both ends share, written once.
macro_rules! end_io {
    ($t:ty) => {
        impl $t {
            /// `ReadFile` in message mode: one message, or its first part
            /// with [`MessageRead::MoreData`] (`ERROR_MORE_DATA`).
            pub fn read_message(&mut self, buf: &mut [u8]) -> Result<MessageRead> {
                self.conn.read_message(buf)
            }
            /// One whole message, however long.
            pub fn recv_message(&mut self) -> Result<Vec<u8>> {
                self.conn.recv_message()
            }
            /// `WriteFile`: one message (whole) on a message pipe.
            pub fn write_message(&mut self, msg: &[u8]) -> Result<()> {
                self.conn.write_message(msg)
            }
            /// `TransactNamedPipe`: the request out, the whole reply back.
            pub fn transact(&mut self, request: &[u8]) -> Result<Vec<u8>> {
                self.conn.transact(request)
            }
            /// `TransactNamedPipe` into the caller's buffer.
            pub fn transact_into(
                &mut self,
                request: &[u8],
                reply: &mut [u8],
            ) -> Result<MessageRead> {
                self.conn.transact_into(request, reply)
            }
            /// `PeekNamedPipe`.
            pub fn peek(&mut self, buf: &mut [u8]) -> Result<Peek> {
                self.conn.state.peek(buf)
            }
            /// `FlushFileBuffers`: until the other end has read everything.
            pub fn flush_buffers(&mut self) -> Result<()> {
                self.conn.flush_buffers()
            }
            /// Bounds blocking writes (`None`, or zero: wait for ever): a
            /// write its reader does not take in time fails with
            /// `ERROR_SEM_TIMEOUT` and leaves the pipe cut, since the
            /// reader may have taken part of it (the kernel does not always
            /// say how much): this end's later calls fail with *broken
            /// pipe*, never carry on from the middle of a message. Drop
            /// the end. (`flush_buffers` is not bounded on Windows.)
            pub fn set_write_timeout(&mut self, timeout: Option<Duration>) -> Result<()> {
                self.conn.write_timeout = timeout.filter(|t| !t.is_zero());
                Ok(())
            }
            /// Splits into a reading and a writing half that can be used
            /// from two threads at once (e.g. with `std::thread::scope`).
            pub fn split(&mut self) -> (ReadHalf<'_>, WriteHalf<'_>) {
                (
                    ReadHalf { conn: &self.conn },
                    WriteHalf { conn: &self.conn },
                )
            }
        }

        impl Read for $t {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                self.conn.read_bytes(buf)
            }
        }

        impl Write for $t {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                self.conn.write_bytes(buf)
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
    };
}

end_io!(PipeServer);
end_io!(PipeClient);
end_queries!(PipeServer, conn.state);
end_queries!(PipeClient, conn.state);
server_queries!(PipeServer, conn.state);
client_queries!(PipeClient, conn.state);

impl PipeServer {
    /// `ImpersonateNamedPipeClient`: this thread acts as the client until
    /// the guard is dropped (`RevertToSelf`). One impersonation per thread
    /// at a time, as on Linux: a nested one is refused. (The tokio server
    /// has no such guard, as on Linux: a runtime's thread runs other tasks,
    /// which must never run as the client. It has `run_as_client`.)
    ///
    /// Differs from Linux: a client that allowed only identification is
    /// impersonated at that level (Windows refuses what it then tries to
    /// open with `ERROR_BAD_IMPERSONATION_LEVEL`), where Linux refuses the
    /// impersonation itself with `ERROR_CANNOT_IMPERSONATE`.
    pub fn impersonate(&self) -> Result<Impersonation<'_>> {
        self.conn.state.impersonate()
    }

    /// Runs `f` as the client on this thread, then reverts.
    pub fn run_as_client<T>(&self, f: impl FnOnce() -> T) -> Result<T> {
        let guard = self.impersonate()?;
        let out = f();
        drop(guard);
        Ok(out)
    }

    /// Bounds blocking reads and transactions' replies (`None`, or zero:
    /// wait for ever). A read that times out fails with `ERROR_SEM_TIMEOUT`
    /// and may be retried; nothing is lost. A transaction that times out
    /// leaves the end cut (*broken pipe* after): its request may have gone
    /// in part.
    pub fn set_read_timeout(&mut self, timeout: Option<Duration>) -> Result<()> {
        self.conn.read_timeout = timeout.filter(|t| !t.is_zero());
        Ok(())
    }

    /// `DisconnectNamedPipe`: the client's next call fails with *pipe not
    /// connected*; this end can be used no more.
    pub fn disconnect(&mut self) -> Result<()> {
        self.conn.state.disconnect()
    }

    /// The largest message the server was created to accept: the most
    /// `recv_message` gathers (a longer one is `ERROR_BAD_PIPE`). The
    /// kernel itself limits no message; `read_message` takes any in parts.
    pub fn max_message_size(&self) -> u32 {
        self.conn.state.max_message
    }
}

impl PipeClient {
    /// `CreateFile` on the pipe, after `WaitNamedPipe` while every instance
    /// is busy, as `opts` says.
    pub(crate) fn connect(name: &PipeName, opts: &ClientOptions) -> Result<PipeClient> {
        let opener = Opener::new(name, opts)?;
        let pipe = loop {
            match opener.attempt()? {
                Attempt::Open(pipe) => break pipe,
                Attempt::WaitForInstance(ms) => {
                    if let Err(e) = sys::wait_named_pipe(&opener.path, ms) {
                        opener.wait_failed(e)?;
                        std::thread::sleep(RECONNECT_PAUSE);
                    }
                }
                Attempt::Pause => std::thread::sleep(RECONNECT_PAUSE),
            }
        };
        Ok(PipeClient {
            conn: Conn::new(opener.finish(pipe)?, opts.read_timeout),
        })
    }

    /// Bounds blocking reads and transactions' replies (`None`, or zero:
    /// wait for ever); the connection starts with
    /// [`ClientOptions::read_timeout`]. A read that times out fails with
    /// `ERROR_SEM_TIMEOUT` and may be retried; nothing is lost. A
    /// transaction that times out leaves the end cut (*broken pipe*
    /// after): its request may have gone in part.
    pub fn set_read_timeout(&mut self, timeout: Option<Duration>) -> Result<()> {
        self.conn.read_timeout = timeout.filter(|t| !t.is_zero());
        Ok(())
    }
}

/// `CallNamedPipe`: connects (waiting up to `timeout` for a free
/// instance), sends `request` as one message, returns the reply, closes.
/// A zero `timeout` does not wait (`ERROR_PIPE_BUSY` at once), as on
/// Linux; `ClientOptions::wait(Wait::ServerDefault)` is the system's 0.
pub fn call(
    name: impl TryInto<PipeName, Error = Error>,
    request: &[u8],
    timeout: Duration,
) -> Result<Vec<u8>> {
    let mut opts = ClientOptions::new();
    opts.wait(Wait::for_call(timeout));
    call_with(&opts, &name.try_into()?, request)
}

pub(crate) fn call_with(opts: &ClientOptions, name: &PipeName, request: &[u8]) -> Result<Vec<u8>> {
    let mut opts = opts.clone();
    opts.access(Access::ReadWrite).read_mode(ReadMode::Message);
    PipeClient::connect(name, &opts)?.transact(request)
}
