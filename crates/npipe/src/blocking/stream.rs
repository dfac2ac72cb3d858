//! The connected pipe, common to both ends: reads and writes in byte and
//! message mode, peek, flush, transact, timeouts.
//!
//! The decisions (buffering, framing, *more data*, broken streams) live in
//! [`crate::stream_core`]; this file drives them with blocking socket calls.

use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use crate::error::{Error, ErrorCode, Result};
use crate::pipe::{Pipe, PipeRole};
use crate::shm::link::Link;
use crate::stream_core::{
    recv_error, send_error, EndCore, Need, ReadCore, ReadMessage, ReadOp, ReadStd, RecvMessage,
    Step, WriteCore,
};
use crate::sys::Socket;
use crate::transport::{Recv, Transport};
use crate::types::ReadMode;

use crate::stream_core::{MessageRead, Peek};

/// The blocking front end's connection I/O: the `S` of
/// [`PipeServer`](crate::PipeServer) and [`PipeClient`](crate::PipeClient)
/// (`Pipe<PipeStream, _>`), which carry every method. You never hold one
/// alone.
#[derive(Debug)]
pub struct PipeStream {
    link: Link,
    end: EndCore,
    write_timeout: Option<Duration>,
    read_wait: ReadWait,
}

/// How the next blocking receive waits.
///
/// A fresh server end waits for its first input in `poll`, not in `recv`.
/// Until the client has read the handshake's reply, its reading frees our
/// socket's send buffer, and the kernel's "room to write" wake-up reaches
/// every thread asleep in `recv` on the socket, whatever it waits for; with
/// both processes on one CPU that wake-up preempts the client, for nothing.
/// A `poll` for input is not woken by it. Measured: 5 % of `connect_rate`.
/// The first input is often there already (the client ran while the
/// server end was being made), so it is first received without waiting,
/// and polled for only if missing. Later receives block in `recv` as usual
/// (one syscall).
#[derive(Debug, Default)]
struct ReadWait {
    poll_first: bool,
    /// The read timeout set on the socket, which the poll keeps too.
    timeout: Option<Duration>,
}

impl ReadWait {
    /// How the next receive goes: at once while the first input is still
    /// to come, blocking after.
    fn how(&self) -> Recv {
        if self.poll_first {
            Recv::DontWait
        } else {
            Recv::Wait
        }
    }

    /// After a receive: whether it is to be tried again, having waited in
    /// `poll` (a first receive that found nothing). A timeout comes back as
    /// `WouldBlock`, as from a receive with `SO_RCVTIMEO`.
    fn after_recv<T: Transport + ?Sized, R>(
        &mut self,
        sock: &T,
        got: &io::Result<R>,
    ) -> io::Result<bool> {
        if !std::mem::take(&mut self.poll_first) {
            return Ok(false);
        }
        match got {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if sock.wait_readable(self.timeout)? {
                    Ok(true)
                } else {
                    // Still the first input's to wait for, next time.
                    self.poll_first = true;
                    Err(io::ErrorKind::WouldBlock.into())
                }
            }
            _ => Ok(false),
        }
    }
}

fn io_err(e: io::Error, what: &str) -> Error {
    Error::os(e, what)
}

/// Drives a read to its end with blocking receives. A receive that fails or
/// times out part way loses nothing: a `std::io::Read` returns the bytes it
/// already took, and a message read puts them back, so that the next read
/// starts the same message again (never its tail as a whole message).
fn run<O: ReadOp, T: Transport + ?Sized>(
    core: &mut ReadCore,
    sock: &T,
    wait: &mut ReadWait,
    op: &mut O,
) -> Result<O::Output> {
    loop {
        let need = match op.step(core)? {
            Step::Done(v) => return Ok(v),
            Step::Need(need) => need,
        };
        if let Need::Budget { len } = need {
            // Read nothing from this client until the listener's budget has
            // room for its message: backpressure, within the read timeout.
            let deadline = wait.timeout.map(|t| std::time::Instant::now() + t);
            if core.wait_for_budget(len, deadline) {
                continue;
            }
            op.undo(core);
            return Err(recv_error(io::ErrorKind::WouldBlock.into()));
        }
        let received = loop {
            let how = wait.how();
            let got = match need {
                Need::Fill => sock.recv_spare(core.fill_buf(), how),
                Need::Direct { at, len } => sock.recv(op.direct_target(at, len), how),
                Need::Budget { .. } => unreachable!("waited for above"),
            };
            match wait.after_recv(sock, &got) {
                Ok(true) => continue,
                Ok(false) => {}
                Err(e) => break Err(e),
            }
            break got.map(|n| match need {
                Need::Fill => core.filled(n),
                _ => op.direct_done(core, n),
            });
        };
        if let Err(e) = received {
            if let Some(taken) = op.partial() {
                return Ok(taken);
            }
            op.undo(core);
            return Err(recv_error(e));
        }
    }
}

fn read_message<T: Transport + ?Sized>(
    core: &mut ReadCore,
    sock: &T,
    wait: &mut ReadWait,
    out: &mut [u8],
) -> Result<MessageRead> {
    run(core, sock, wait, &mut ReadMessage::new(out))
}

fn recv_message<T: Transport + ?Sized>(
    core: &mut ReadCore,
    sock: &T,
    wait: &mut ReadWait,
) -> Result<Vec<u8>> {
    run(core, sock, wait, &mut RecvMessage::default())
}

fn read_std<T: Transport + ?Sized>(
    core: &mut ReadCore,
    sock: &T,
    wait: &mut ReadWait,
    out: &mut [u8],
) -> Result<usize> {
    run(core, sock, wait, &mut ReadStd::new(out))
}

/// Sends one message whole: header and payload in one `sendmsg`, looping
/// on partial sends. A failure after part of it went out breaks the
/// writer for good (the peer will see *broken pipe*, never a cut message).
fn write_message<T: Transport + ?Sized>(
    writer: &mut WriteCore,
    sock: &T,
    msg: &[u8],
) -> Result<()> {
    let mut op = writer.begin_message(msg)?;
    while !op.is_done() {
        let r = if op.header_rest().is_empty() {
            sock.send(op.payload_rest(msg))
        } else {
            sock.send_vectored(&op.slices(msg))
        };
        match r {
            Ok(n) => op.advance(n),
            Err(e) => {
                writer.failed(&op);
                return Err(send_error(e));
            }
        }
    }
    Ok(())
}

fn write_bytes<T: Transport + ?Sized>(
    writer: &mut WriteCore,
    sock: &T,
    buf: &[u8],
) -> Result<usize> {
    writer.check(0)?;
    sock.send(buf).map_err(send_error)
}

/// `FlushFileBuffers`: waits, polling with a growing pause, until the
/// peer has read everything this end sent (the decisions are
/// [`EndCore::flush_state`]'s).
fn flush_buffers<T: Transport + ?Sized>(
    end: &EndCore,
    sock: &T,
    write_timeout: Option<Duration>,
) -> Result<()> {
    let start = Instant::now();
    let mut pause = Duration::from_micros(20);
    loop {
        let delivery = sock
            .delivery()
            .map_err(|e| io_err(e, "cannot query the send queue"))?;
        let Some(unread) = end.flush_state(delivery, || sock.peek_queued())? else {
            return Ok(());
        };
        if let Some(t) = write_timeout {
            if start.elapsed() >= t {
                return Err(Error::new(
                    ErrorCode::Timeout,
                    format!("the other end has not read the last {unread} bytes in time"),
                ));
            }
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(5));
    }
}

impl PipeStream {
    /// The socket through the transport contract, which the data path is
    /// written against.
    fn io(&self) -> &impl Transport {
        &self.link
    }

    pub(crate) fn new(socket: Socket, end: EndCore) -> PipeStream {
        Self::with_link(Link::Socket(socket), end)
    }

    /// An end whose bytes go over `link` (the socket, or shared memory).
    pub(crate) fn with_link(link: Link, end: EndCore) -> PipeStream {
        PipeStream {
            link,
            end,
            write_timeout: None,
            read_wait: ReadWait::default(),
        }
    }

    /// For a server end fresh from the acceptor: wait for the first input
    /// in `poll` (see [`ReadWait`]).
    pub(crate) fn poll_first_read(&mut self) {
        self.read_wait.poll_first = true;
    }

    /// `DisconnectNamedPipe` on the server end: on a message pipe the
    /// disconnect mark goes out first (never blocking: where the socket has
    /// no room the client sees *broken pipe* instead of *pipe not
    /// connected*), then the connection is shut both ways.
    pub(crate) fn disconnect_client(&mut self) {
        if let Some(mark) = self.end.disconnect(true) {
            let _ = self.io().send_nonblocking(&mark);
        }
        let _ = self.io().shutdown_both();
    }

    /// A write's failure as the client should see it.
    fn explain(&self, e: Error) -> Error {
        self.end.explain(e, || self.io().peek_queued())
    }

    fn connected(&self) -> Result<()> {
        self.end.connected()
    }

    pub(crate) fn read_message(&mut self, buf: &mut [u8]) -> Result<MessageRead> {
        self.connected()?;
        read_message(&mut self.end.reader, &self.link, &mut self.read_wait, buf)
    }

    pub(crate) fn recv_message(&mut self) -> Result<Vec<u8>> {
        self.connected()?;
        recv_message(&mut self.end.reader, &self.link, &mut self.read_wait)
    }

    pub(crate) fn write_message(&mut self, msg: &[u8]) -> Result<()> {
        self.connected()?;
        write_message(&mut self.end.writer, &self.link, msg).map_err(|e| self.explain(e))
    }

    pub(crate) fn transact(&mut self, request: &[u8]) -> Result<Vec<u8>> {
        self.send_request(request)?;
        recv_message(&mut self.end.reader, &self.link, &mut self.read_wait)
    }

    /// A transaction's first half: `TransactNamedPipe`'s checks, then the
    /// request.
    fn send_request(&mut self, request: &[u8]) -> Result<()> {
        self.connected()?;
        let sock = self.io();
        self.end
            .check_transact(request.len(), || sock.readable_bytes().unwrap_or(0))?;
        write_message(&mut self.end.writer, &self.link, request).map_err(|e| self.explain(e))
    }

    pub(crate) fn transact_into(
        &mut self,
        request: &[u8],
        reply: &mut [u8],
    ) -> Result<MessageRead> {
        self.send_request(request)?;
        read_message(&mut self.end.reader, &self.link, &mut self.read_wait, reply)
    }

    pub(crate) fn peek(&mut self, buf: &mut [u8]) -> Result<Peek> {
        self.connected()?;
        crate::peek_io::peek(&mut self.end.reader, &self.link, buf)
    }

    pub(crate) fn flush_buffers(&mut self) -> Result<()> {
        self.connected()?;
        flush_buffers(&self.end, &self.link, self.write_timeout)
    }

    pub(crate) fn set_read_mode(&mut self, mode: ReadMode) -> Result<()> {
        self.end.reader.set_mode(mode)
    }

    pub(crate) fn read_mode(&self) -> ReadMode {
        self.end.reader.mode
    }

    // A zero timeout sets none, as documented: normalised here once, for
    // every transport (the socket's own call ignores zero; the rings would
    // have taken it as "at once").
    pub(crate) fn set_read_timeout(&mut self, timeout: Option<Duration>) -> Result<()> {
        let timeout = timeout.filter(|t| !t.is_zero());
        self.io()
            .set_read_timeout(timeout)
            .map_err(|e| io_err(e, "cannot set the read timeout"))?;
        self.read_wait.timeout = timeout;
        Ok(())
    }

    pub(crate) fn set_write_timeout(&mut self, timeout: Option<Duration>) -> Result<()> {
        let timeout = timeout.filter(|t| !t.is_zero());
        self.io()
            .set_write_timeout(timeout)
            .map_err(|e| io_err(e, "cannot set the write timeout"))?;
        self.write_timeout = timeout;
        Ok(())
    }

    pub(crate) fn shutdown_write(&mut self) -> Result<()> {
        self.connected()?;
        self.io()
            .shutdown_write()
            .map_err(|e| io_err(e, "cannot shut down the sending side"))
    }

    pub(crate) fn split(&mut self) -> (ReadHalf<'_>, WriteHalf<'_>) {
        (
            ReadHalf {
                socket: &self.link,
                reader: &mut self.end.reader,
                wait: &mut self.read_wait,
                disconnected: self.end.disconnected,
            },
            WriteHalf {
                socket: &self.link,
                writer: &mut self.end.writer,
                disconnected: self.end.disconnected,
            },
        )
    }
}

impl Read for PipeStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.connected()?;
        Ok(read_std(
            &mut self.end.reader,
            &self.link,
            &mut self.read_wait,
            buf,
        )?)
    }
}

impl Write for PipeStream {
    /// Byte pipe: writes some bytes. Message pipe: writes `buf` as one
    /// message and returns its full length.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.connected()?;
        if self.end.writer.message {
            write_message(&mut self.end.writer, &self.link, buf).map_err(|e| self.explain(e))?;
            Ok(buf.len())
        } else {
            Ok(write_bytes(&mut self.end.writer, &self.link, buf)?)
        }
    }

    /// Returns at once: npipe keeps no write buffer. To wait until the peer
    /// has read everything, use [`PipeServer::flush_buffers`](crate::PipeServer::flush_buffers).
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The reading half of a [`PipeStream`], from [`PipeServer::split`](crate::PipeServer::split).
#[derive(Debug)]
pub struct ReadHalf<'a> {
    socket: &'a Link,
    reader: &'a mut ReadCore,
    wait: &'a mut ReadWait,
    disconnected: bool,
}

/// The writing half of a [`PipeStream`], from [`PipeServer::split`](crate::PipeServer::split).
#[derive(Debug)]
pub struct WriteHalf<'a> {
    socket: &'a Link,
    writer: &'a mut WriteCore,
    disconnected: bool,
}

impl ReadHalf<'_> {
    fn connected(&self) -> Result<()> {
        if self.disconnected {
            Err(Error::not_connected())
        } else {
            Ok(())
        }
    }

    /// As [`PipeServer::read_message`](crate::PipeServer::read_message).
    pub fn read_message(&mut self, buf: &mut [u8]) -> Result<MessageRead> {
        self.connected()?;
        read_message(self.reader, self.socket, self.wait, buf)
    }

    /// As [`PipeServer::recv_message`](crate::PipeServer::recv_message).
    pub fn recv_message(&mut self) -> Result<Vec<u8>> {
        self.connected()?;
        recv_message(self.reader, self.socket, self.wait)
    }
}

impl WriteHalf<'_> {
    /// As [`PipeServer::write_message`](crate::PipeServer::write_message).
    pub fn write_message(&mut self, msg: &[u8]) -> Result<()> {
        if self.disconnected {
            return Err(Error::not_connected());
        }
        write_message(self.writer, self.socket, msg)
    }

    /// As [`PipeServer::shutdown_write`](crate::PipeServer::shutdown_write).
    pub fn shutdown_write(&mut self) -> Result<()> {
        if self.disconnected {
            return Err(Error::not_connected());
        }
        Transport::shutdown_write(self.socket)
            .map_err(|e| io_err(e, "cannot shut down the sending side"))
    }
}

impl Read for ReadHalf<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.connected()?;
        Ok(read_std(self.reader, self.socket, self.wait, buf)?)
    }
}

impl Write for WriteHalf<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.disconnected {
            return Err(Error::not_connected().into());
        }
        if self.writer.message {
            write_message(self.writer, self.socket, buf)?;
            Ok(buf.len())
        } else {
            Ok(write_bytes(self.writer, self.socket, buf)?)
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Reads, writes and everything common to both blocking ends.
///
/// On a byte-type pipe, [`Read`] and [`Write`] are the raw socket's stream.
/// On a message-type pipe each [`Write::write`] sends one message, whole, and
/// [`Read::read`] returns bytes of one message at a time (the next read
/// continues it; zero-length messages are skipped, since `Ok(0)` means end of
/// stream to `std`). [`read_message`](Self::read_message) is the exact `ReadFile`:
/// it says whether the message is complete or *more data* follows, and
/// returns zero-length messages.
///
/// ```
/// use npipe::{ServerOptions, ClientOptions, MessageRead};
///
/// let name = format!("doc-stream-{}", std::process::id());
/// let listener = ServerOptions::new().create(&name)?; // message type
/// let mut client = ClientOptions::new().open(&name)?;
/// let mut server = listener.accept()?;
///
/// client.write_message(b"hello, world")?;
/// client.write_message(b"")?;
/// let mut buf = [0u8; 5];
/// assert_eq!(server.read_message(&mut buf)?, MessageRead::MoreData(5));
/// assert_eq!(&buf, b"hello");
/// let rest = server.recv_message()?;
/// assert_eq!(rest, b", world");
/// assert_eq!(server.read_message(&mut buf)?, MessageRead::Complete(0));
/// # Ok::<(), npipe::Error>(())
/// ```
impl<R: PipeRole> Pipe<PipeStream, R> {
    /// Whether this connection's data goes through shared memory (see
    /// [`ClientOptions::shared_memory`](crate::ClientOptions::shared_memory))
    /// rather than the socket. Nothing else differs.
    ///
    /// ```
    /// # let name = format!("doc-uses-shared-memory-{}", std::process::id());
    /// let listener = npipe::ServerOptions::new().create(&name)?;
    /// let client = npipe::ClientOptions::new().shared_memory(true).open(&name)?;
    /// let server = listener.accept()?;
    /// # if std::env::var("NPIPE_SHARED_MEMORY").as_deref() != Ok("off") {
    /// assert!(client.uses_shared_memory() && server.uses_shared_memory());
    /// # }
    /// # Ok::<(), npipe::Error>(())
    /// ```
    pub fn uses_shared_memory(&self) -> bool {
        self.io.link.is_shared_memory()
    }

    /// Reads one message, or the rest of a message a short buffer cut
    /// (`ReadFile` in message read mode). [`MessageRead::MoreData`] is
    /// `ERROR_MORE_DATA`: the next read continues the same message.
    /// Zero-length messages read as `Complete(0)`. A peer that closes
    /// between messages gives *broken pipe*, as on Windows; one that dies
    /// mid-message gives *broken pipe* too, never a cut message.
    pub fn read_message(&mut self, buf: &mut [u8]) -> Result<MessageRead> {
        self.io.read_message(buf)
    }

    /// Reads the rest of the current message, or the next message, whole.
    /// Its size was checked against [`max_message_size`](crate::ServerOptions::max_message_size)
    /// before anything was allocated.
    pub fn recv_message(&mut self) -> Result<Vec<u8>> {
        self.io.recv_message()
    }

    /// Writes one message, whole and atomic (`WriteFile` on a message pipe).
    pub fn write_message(&mut self, msg: &[u8]) -> Result<()> {
        self.io.write_message(msg)
    }

    /// Sends a message and reads the reply (`TransactNamedPipe`). Needs a
    /// message pipe in message read mode; fails with *pipe busy* if unread
    /// data is waiting, as on Windows.
    pub fn transact(&mut self, request: &[u8]) -> Result<Vec<u8>> {
        self.io.transact(request)
    }

    /// `TransactNamedPipe` with the caller's reply buffer: sends `request`
    /// and reads the reply into `reply`. If the reply is longer, it returns
    /// [`MessageRead::MoreData`] (`ERROR_MORE_DATA`) with `reply` full, and
    /// the rest of that message is left to read with
    /// [`read_message`](Self::read_message). Same rules as
    /// [`transact`](Self::transact).
    ///
    /// ```
    /// use npipe::{ClientOptions, MessageRead, ServerOptions};
    ///
    /// let name = format!("doc-transact-into-{}", std::process::id());
    /// let listener = ServerOptions::new().create(&name)?;
    /// let echo = std::thread::spawn(move || -> npipe::Result<()> {
    ///     let mut pipe = listener.accept()?;
    ///     let request = pipe.recv_message()?;
    ///     pipe.write_message(&request)
    /// });
    /// let mut client = ClientOptions::new().open(&name)?;
    /// let mut reply = [0u8; 4];
    /// assert_eq!(client.transact_into(b"ping pong", &mut reply)?, MessageRead::MoreData(4));
    /// assert_eq!(&reply, b"ping");
    /// let mut rest = [0u8; 16];
    /// assert_eq!(client.read_message(&mut rest)?, MessageRead::Complete(5));
    /// assert_eq!(&rest[..5], b" pong");
    /// echo.join().unwrap()?;
    /// # Ok::<(), npipe::Error>(())
    /// ```
    pub fn transact_into(&mut self, request: &[u8], reply: &mut [u8]) -> Result<MessageRead> {
        self.io.transact_into(request, reply)
    }

    /// Copies waiting data without consuming it (`PeekNamedPipe`); never
    /// blocks. On a message pipe it copies from the current message only,
    /// whatever the read mode, and `message_left` counts what is left of it
    /// beyond the bytes copied (as Windows does).
    pub fn peek(&mut self, buf: &mut [u8]) -> Result<Peek> {
        self.io.peek(buf)
    }

    /// Waits until the other end has read everything written so far
    /// (`FlushFileBuffers`). Bounded by the write timeout, if one is set.
    ///
    /// This is not [`Write::flush`], which returns at once (npipe buffers
    /// nothing): waiting for the peer inside `flush` would hang code such as
    /// `BufWriter` whose peer reads only later.
    pub fn flush_buffers(&mut self) -> Result<()> {
        self.io.flush_buffers()
    }

    /// Changes this end's read mode (`SetNamedPipeHandleState`). A byte-type
    /// pipe refuses message mode with `ERROR_INVALID_PARAMETER`.
    pub fn set_read_mode(&mut self, mode: ReadMode) -> Result<()> {
        self.io.set_read_mode(mode)
    }

    /// This end's read mode.
    pub fn read_mode(&self) -> ReadMode {
        self.io.read_mode()
    }

    /// Bounds blocking reads (`None`: wait forever). A read that times out
    /// fails with `ERROR_SEM_TIMEOUT` and may be retried; nothing is lost.
    pub fn set_read_timeout(&mut self, timeout: Option<Duration>) -> Result<()> {
        self.io.set_read_timeout(timeout)
    }

    /// Bounds blocking writes and [`flush_buffers`](Self::flush_buffers).
    /// A message write that times out after sending part of a message breaks
    /// the pipe (the peer sees *broken pipe*, never a cut message).
    pub fn set_write_timeout(&mut self, timeout: Option<Duration>) -> Result<()> {
        self.io.set_write_timeout(timeout)
    }

    /// Closes this end's sending side: the other end reads end of stream
    /// after the data already sent, and can still write back. (An npipe
    /// extension; Windows pipes have no half-close.)
    pub fn shutdown_write(&mut self) -> Result<()> {
        self.io.shutdown_write()
    }

    /// Splits into a reading and a writing half that can be used from two
    /// threads at once (e.g. with `std::thread::scope`).
    pub fn split(&mut self) -> (ReadHalf<'_>, WriteHalf<'_>) {
        self.io.split()
    }
}

crate::pipe::socket_end_io!(PipeStream, link);

impl<R: PipeRole> Read for Pipe<PipeStream, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.io.read(buf)
    }
}

impl<R: PipeRole> Write for Pipe<PipeStream, R> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.io.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.io.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::info::End;
    use crate::proto::framing;
    use crate::stream_core::Setup;
    use crate::types::PipeType;

    /// A pair of connected ends, made one of two ways.
    type Pair = fn(PipeType) -> (PipeStream, PipeStream);

    fn socket_pair(pipe_type: PipeType) -> (PipeStream, PipeStream) {
        let (a, b) = Socket::pair().unwrap();
        let setup = |end| Setup::for_test(end, pipe_type);
        let mode = match pipe_type {
            PipeType::Byte => ReadMode::Byte,
            PipeType::Message => ReadMode::Message,
        };
        (
            PipeStream::new(a, EndCore::new(setup(End::Server), mode, Vec::new())),
            PipeStream::new(b, EndCore::new(setup(End::Client), mode, Vec::new())),
        )
    }

    /// The same ends with their bytes in the shared-memory rings (64 KiB
    /// each way, as much as a socket holds, so a test that writes before it
    /// reads does not wait on itself).
    fn shm_pair(pipe_type: PipeType) -> (PipeStream, PipeStream) {
        let (a, b) = socket_pair(pipe_type);
        let (Link::Socket(sa), Link::Socket(sb)) = (a.link, b.link) else {
            unreachable!("a fresh pair is on sockets")
        };
        let (ta, tb) = crate::shm::transport::pair_over(sa, sb, 64 * 1024);
        (
            PipeStream {
                link: Link::Shm(Box::new(ta)),
                ..a
            },
            PipeStream {
                link: Link::Shm(Box::new(tb)),
                ..b
            },
        )
    }

    /// Every test of the data path runs over both links.
    macro_rules! on_both_links {
        ($($name:ident),* $(,)?) => {
            mod over_sockets {
                $( #[test] fn $name() { super::$name(super::socket_pair) } )*
            }
            mod over_shared_memory {
                $( #[test] fn $name() { super::$name(super::shm_pair) } )*
            }
        };
    }

    on_both_links!(
        a_disconnected_client_is_told_not_connected,
        messages_keep_boundaries_in_process,
        the_first_read_of_a_fresh_server_end_keeps_the_read_timeout,
        a_read_that_times_out_mid_message_loses_nothing,
        peek_does_not_consume,
        cut_message_is_broken_pipe_not_data,
        oversize_header_is_bad_pipe,
    );

    /// The data path over a transport that reads ahead (as TLS does): most
    /// of what arrived sits in the transport, not the kernel, and no wait,
    /// peek or transaction check may miss it. Each read waits first, as a
    /// fresh server end's does, with a timeout that would fail it.
    #[test]
    fn bytes_held_inside_the_transport_are_never_waited_for() {
        let pair = socket_pair;
        use crate::socket_transport::read_ahead::ReadAhead;

        let (mut a, b) = pair(PipeType::Message);
        let Link::Socket(socket) = b.link else {
            unreachable!("a fresh pair is on sockets")
        };
        let transport = ReadAhead::new(socket);
        let EndCore { mut reader, .. } = b.end;
        let waits = || ReadWait {
            poll_first: true,
            timeout: Some(Duration::from_millis(200)),
        };
        for m in [&b"first"[..], b"", b"third message", &[5u8; 300]] {
            a.write_message(m).unwrap();
        }
        assert_eq!(
            recv_message(&mut reader, &transport, &mut waits()).unwrap(),
            b"first"
        );
        assert!(transport.held() > 0, "the transport read ahead");
        // TransactNamedPipe refuses while unread data waits, even when only
        // the transport holds it (a core with nothing buffered asks).
        let setup = Setup::for_test(End::Client, PipeType::Message);
        let fresh = EndCore::new(setup, ReadMode::Message, Vec::new());
        let e = fresh
            .check_transact(4, || transport.readable_bytes().unwrap())
            .unwrap_err();
        assert_eq!(e.code(), ErrorCode::PipeBusy, "{e}");
        assert_eq!(
            recv_message(&mut reader, &transport, &mut waits()).unwrap(),
            b""
        );

        // A peek counts what the transport holds.
        let mut two = [0u8; 2];
        let seen = crate::peek_io::peek(&mut reader, &transport, &mut two).unwrap();
        assert_eq!(&two, b"th");
        assert_eq!(seen.message_left, 11);
        assert!(seen.available >= 13, "{seen:?}");

        let mut buf = [0u8; 5];
        assert_eq!(
            read_message(&mut reader, &transport, &mut waits(), &mut buf).unwrap(),
            MessageRead::MoreData(5)
        );
        let mut rest = [0u8; 64];
        assert_eq!(
            read_message(&mut reader, &transport, &mut waits(), &mut rest).unwrap(),
            MessageRead::Complete(8)
        );
        assert_eq!(&rest[..8], b" message");

        assert_eq!(
            recv_message(&mut reader, &transport, &mut waits()).unwrap(),
            vec![5u8; 300]
        );
        assert_eq!(transport.held(), 0);
        // Nothing left anywhere: now the wait does time out.
        assert_eq!(
            recv_message(&mut reader, &transport, &mut waits())
                .unwrap_err()
                .code(),
            ErrorCode::Timeout
        );
    }

    /// `DisconnectNamedPipe`: the client's write, flush, peek and read all
    /// fail with *pipe not connected*; data sent before it stays readable.
    fn a_disconnected_client_is_told_not_connected(pair: Pair) {
        let (mut a, mut b) = pair(PipeType::Message);
        a.write_message(b"before").unwrap();
        a.disconnect_client();
        let code = |r: Result<()>| r.unwrap_err().code();
        assert_eq!(code(b.write_message(b"x")), ErrorCode::PipeNotConnected);
        assert_eq!(code(b.flush_buffers()), ErrorCode::PipeNotConnected);
        assert_eq!(b.recv_message().unwrap(), b"before");
        assert_eq!(
            b.peek(&mut [0u8; 4]).unwrap_err().code(),
            ErrorCode::PipeNotConnected
        );
        assert_eq!(
            b.recv_message().unwrap_err().code(),
            ErrorCode::PipeNotConnected
        );
    }

    fn messages_keep_boundaries_in_process(pair: Pair) {
        let (mut a, mut b) = pair(PipeType::Message);
        for m in [&b"one"[..], b"", b"three", &[9u8; 20_000]] {
            a.write_message(m).unwrap();
        }
        assert_eq!(b.recv_message().unwrap(), b"one");
        assert_eq!(b.recv_message().unwrap(), b"");
        let mut small = [0u8; 2];
        assert_eq!(
            b.read_message(&mut small).unwrap(),
            MessageRead::MoreData(2)
        );
        assert_eq!(
            b.read_message(&mut small).unwrap(),
            MessageRead::MoreData(2)
        );
        assert_eq!(
            b.read_message(&mut small).unwrap(),
            MessageRead::Complete(1)
        );
        let mut big = vec![0u8; 30_000];
        assert_eq!(
            b.read_message(&mut big).unwrap(),
            MessageRead::Complete(20_000)
        );
    }

    /// A fresh server end waits for its first input in `poll`: the read
    /// timeout holds there too, and the data comes through whole after.
    fn the_first_read_of_a_fresh_server_end_keeps_the_read_timeout(pair: Pair) {
        let (mut a, mut b) = pair(PipeType::Message);
        b.poll_first_read();
        b.set_read_timeout(Some(std::time::Duration::from_millis(30)))
            .unwrap();
        assert_eq!(b.recv_message().unwrap_err().code(), ErrorCode::Timeout);
        let mut buf = [0u8; 8];
        assert_eq!(
            b.read_message(&mut buf).unwrap_err().code(),
            ErrorCode::Timeout
        );
        a.write_message(b"first").unwrap();
        a.write_message(b"second").unwrap();
        assert_eq!(b.recv_message().unwrap(), b"first");
        assert_eq!(b.recv_message().unwrap(), b"second");
        // Without a timeout it blocks until input comes.
        b.set_read_timeout(None).unwrap();
        b.poll_first_read();
        let writer = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(20));
            a.write_message(b"late").unwrap();
            a
        });
        assert_eq!(b.recv_message().unwrap(), b"late");
        writer.join().unwrap();
    }

    fn a_read_that_times_out_mid_message_loses_nothing(pair: Pair) {
        let (a, mut b) = pair(PipeType::Message);
        b.set_read_timeout(Some(std::time::Duration::from_millis(30)))
            .unwrap();
        // Half a message, then silence: both kinds of message read time out.
        a.io().send(&framing::header(10)).unwrap();
        a.io().send(b"01234").unwrap();
        assert_eq!(b.recv_message().unwrap_err().code(), ErrorCode::Timeout);
        let mut buf = [0u8; 64];
        assert_eq!(
            b.read_message(&mut buf).unwrap_err().code(),
            ErrorCode::Timeout
        );
        // The rest arrives: the whole message, not its tail.
        a.io().send(b"56789").unwrap();
        assert_eq!(b.recv_message().unwrap(), b"0123456789");
        // The same through read_message, and a direct read into a large buffer.
        let big = vec![7u8; 20_000];
        a.io().send(&framing::header(big.len() as u32)).unwrap();
        a.io().send(&big[..9_000]).unwrap();
        let mut out = vec![0u8; 30_000];
        assert_eq!(
            b.read_message(&mut out).unwrap_err().code(),
            ErrorCode::Timeout
        );
        a.io().send(&big[9_000..]).unwrap();
        assert_eq!(
            b.read_message(&mut out).unwrap(),
            MessageRead::Complete(20_000)
        );
        assert_eq!(&out[..20_000], &big[..]);
        // std::io::Read returns what it took rather than an error.
        a.io().send(&framing::header(6)).unwrap();
        a.io().send(b"abc").unwrap();
        assert_eq!(b.read(&mut buf).unwrap(), 3);
        a.io().send(b"def").unwrap();
        assert_eq!(b.read(&mut buf).unwrap(), 3);
        assert_eq!(&buf[..3], b"def");
    }

    fn peek_does_not_consume(pair: Pair) {
        let (mut a, mut b) = pair(PipeType::Message);
        a.write_message(b"abc").unwrap();
        a.write_message(b"de").unwrap();
        let mut buf = [0u8; 10];
        let p = b.peek(&mut buf).unwrap();
        assert_eq!(
            p,
            Peek {
                copied: 3,
                available: 5,
                message_left: 0
            }
        );
        assert_eq!(&buf[..3], b"abc");
        // Byte read mode: a peek still stops at the message's end.
        b.set_read_mode(ReadMode::Byte).unwrap();
        let p = b.peek(&mut buf).unwrap();
        assert_eq!((p.copied, p.available), (3, 5));
        let mut all = [0u8; 5];
        b.read_exact(&mut all).unwrap();
        assert_eq!(&all, b"abcde");
    }

    fn cut_message_is_broken_pipe_not_data(pair: Pair) {
        let (a, mut b) = pair(PipeType::Message);
        a.io().send(&framing::header(10)).unwrap();
        a.io().send(b"12345").unwrap();
        drop(a);
        let mut buf = [0u8; 64];
        let e = b.read_message(&mut buf).unwrap_err();
        assert_eq!(e.code(), ErrorCode::BrokenPipe);
    }

    fn oversize_header_is_bad_pipe(pair: Pair) {
        let (a, mut b) = pair(PipeType::Message);
        a.io().send(&framing::header(u32::MAX - 1)).unwrap();
        let e = b.recv_message().unwrap_err();
        assert_eq!(e.code(), ErrorCode::BadPipe);
        assert_eq!(b.recv_message().unwrap_err().code(), ErrorCode::BadPipe);
    }
}
