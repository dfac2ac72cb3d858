//! The connected pipe on tokio, common to both ends: the same
//! [`ReadCore`]/[`WriteCore`] decisions as the blocking `PipeStream`, driven
//! by non-blocking calls on its link (the socket, the shared-memory rings,
//! or a remote pipe's TLS) after tokio reports readiness.

use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use ::tokio::io::unix::AsyncFd;
use ::tokio::io::Interest;
use ::tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::error::{Error, Result};
use crate::pipe::{Pipe, PipeRole};
use crate::shm::link::AsyncLink;
use crate::stream_core::{
    recv_error, send_error, EndCore, MessageRead, Need, Peek, ReadCore, ReadMessage, ReadOp,
    ReadStd, RecvMessage, Step, WriteCore, WriteOp,
};
use crate::sys::{self, Fd, Socket};
use crate::transport::{AsyncTransport, Transport};
use crate::types::ReadMode;

/// Registers a socket with the current runtime's reactor.
pub(crate) fn register(socket: Socket) -> Result<AsyncFd<Fd>> {
    register_for(socket, Interest::READABLE | Interest::WRITABLE)
}

/// Registers the socket of a connection whose data goes through shared
/// memory, where the socket only ever wakes us: for reading alone (a Unix
/// socket is writable again each time its peer reads, which would wake the
/// reactor for nothing).
pub(crate) fn register_for_wakes(socket: Socket) -> Result<AsyncFd<Fd>> {
    register_for(socket, Interest::READABLE)
}

fn register_for(socket: Socket, interest: Interest) -> Result<AsyncFd<Fd>> {
    socket
        .set_nonblocking(true)
        .map_err(|e| Error::os(e, "cannot make the pipe's socket non-blocking"))?;
    sys::register_async_for(socket, interest).map_err(|e| {
        Error::os(
            e,
            "cannot register the pipe with tokio (is this a tokio runtime with I/O enabled?)",
        )
    })
}

/// The tokio front end's connection I/O: the `S` of
/// [`PipeServer`](super::PipeServer) and [`PipeClient`](super::PipeClient)
/// (`Pipe<tokio::PipeStream, _>`), which carry every method. You never hold
/// one alone.
#[derive(Debug)]
pub struct PipeStream {
    io: AsyncLink,
    end: EndCore,
    /// What is left of a message that `poll_write` took but could not send
    /// at once, framing included; it goes out before anything else.
    tail: Vec<u8>,
}

/// Drives a read with non-blocking receives until it finishes or the
/// transport has nothing more for now. With `partial`, a read that took
/// some bytes returns them instead of waiting (`AsyncRead` semantics).
fn poll_run<O: ReadOp, T: AsyncTransport>(
    io: &T,
    core: &mut ReadCore,
    op: &mut O,
    cx: &mut Context<'_>,
    partial: bool,
) -> Poll<Result<O::Output>> {
    loop {
        let need = match op.step(core)? {
            Step::Done(v) => return Poll::Ready(Ok(v)),
            Step::Need(need) => need,
        };
        if let Need::Budget { len } = need {
            // Read nothing from this client until the listener's budget has
            // room for its message (backpressure); woken by a release.
            if core.wake_when_budget(len, cx.waker()) {
                continue;
            }
            return Poll::Pending;
        }
        // Readiness first, so that a read that must wait takes no buffer.
        let got = match io.poll_readable(cx) {
            Poll::Ready(Ok(())) => match need {
                Need::Fill => io
                    .poll_recv_spare(cx, core.fill_buf())
                    .map_ok(|n| core.filled(n)),
                Need::Direct { at, len } => io
                    .poll_recv(cx, op.direct_target(at, len))
                    .map_ok(|n| op.direct_done(core, n)),
                Need::Budget { .. } => unreachable!("waited for above"),
            },
            other => other,
        };
        match got {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(e)) => return Poll::Ready(Err(recv_error(e))),
            Poll::Pending => {
                if partial {
                    if let Some(v) = op.partial() {
                        return Poll::Ready(Ok(v));
                    }
                }
                // An idle connection holds no read buffer.
                core.release_idle();
                return Poll::Pending;
            }
        }
    }
}

/// A read in progress as a future's state: if the future is dropped before
/// the read finished, [`ReadOp::undo`] puts back what it took.
struct ReadFuture<'a, O: ReadOp> {
    io: &'a AsyncLink,
    core: &'a mut ReadCore,
    writer: &'a mut WriteCore,
    tail: &'a mut Vec<u8>,
    op: O,
    finished: bool,
}

impl<O: ReadOp> ReadFuture<'_, O> {
    fn poll_op(&mut self, cx: &mut Context<'_>) -> Poll<Result<O::Output>> {
        // The rest of a message `poll_write` took goes out meanwhile (the
        // peer may be waiting for it before it answers).
        let _ = poll_drain(self.io, self.writer, self.tail, cx);
        let r = ready!(poll_run(self.io, self.core, &mut self.op, cx, false));
        self.finished = true;
        Poll::Ready(r)
    }
}

impl<O: ReadOp> Drop for ReadFuture<'_, O> {
    fn drop(&mut self) {
        if !self.finished {
            self.op.undo(self.core);
        }
    }
}

async fn read_op<O: ReadOp>(stream: &mut PipeStream, op: O) -> Result<O::Output> {
    let mut f = ReadFuture {
        io: &stream.io,
        core: &mut stream.end.reader,
        writer: &mut stream.end.writer,
        tail: &mut stream.tail,
        op,
        finished: false,
    };
    poll_fn(|cx| f.poll_op(cx)).await
}

/// Sends what is left of a message `poll_write` took, then what the
/// transport holds; a failure cuts it (the writer is broken from then on).
fn poll_drain<T: AsyncTransport>(
    io: &T,
    writer: &mut WriteCore,
    tail: &mut Vec<u8>,
    cx: &mut Context<'_>,
) -> Poll<Result<()>> {
    while !tail.is_empty() {
        match ready!(io.poll_send(cx, &[IoSlice::new(tail)])) {
            Ok(n) => {
                tail.drain(..n);
            }
            Err(e) => {
                writer.cut();
                *tail = Vec::new();
                return Poll::Ready(Err(send_error(e)));
            }
        }
    }
    // And what the transport itself still holds (TLS records).
    ready!(io.poll_flush(cx)).map_err(send_error)?;
    Poll::Ready(Ok(()))
}

/// A message write in progress: if the future is dropped after part of the
/// message went out, the writer is broken (the peer never sees a cut
/// message as whole).
struct WriteFuture<'a> {
    io: &'a AsyncLink,
    writer: &'a mut WriteCore,
    op: WriteOp,
    msg: &'a [u8],
    finished: bool,
}

impl WriteFuture<'_> {
    fn poll_op(&mut self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        let r = ready!(poll_send(self.io, self.writer, &mut self.op, self.msg, cx));
        self.finished = true;
        Poll::Ready(r)
    }
}

impl Drop for WriteFuture<'_> {
    fn drop(&mut self) {
        if !self.finished && self.op.sent() > 0 {
            self.writer.cut();
        }
    }
}

/// Sends what is left of `op` until done or the transport is full.
fn poll_send<T: AsyncTransport>(
    io: &T,
    writer: &mut WriteCore,
    op: &mut WriteOp,
    msg: &[u8],
    cx: &mut Context<'_>,
) -> Poll<Result<()>> {
    while !op.is_done() {
        let sent = if op.header_rest().is_empty() {
            io.poll_send(cx, &[IoSlice::new(op.payload_rest(msg))])
        } else {
            io.poll_send(cx, &op.slices(msg))
        };
        match ready!(sent) {
            Ok(n) => op.advance(n),
            Err(e) => {
                writer.failed(op);
                return Poll::Ready(Err(send_error(e)));
            }
        }
    }
    Poll::Ready(Ok(()))
}

impl PipeStream {
    pub(crate) fn new(socket: Socket, end: EndCore) -> Result<PipeStream> {
        Ok(PipeStream::registered(register(socket)?, end))
    }

    /// A stream over a socket already registered with the reactor.
    /// Waits until a read would find something: data buffered here that a
    /// read can use (a read ahead of the application) or readiness on the
    /// socket.
    pub(crate) async fn readable(&self) -> Result<()> {
        if self.end.reader.can_progress_from_buffer() {
            return Ok(());
        }
        poll_fn(|cx| self.io.poll_readable(cx))
            .await
            .map_err(|e| Error::os(e, "waiting for the pipe to be readable failed"))
    }

    /// Sends what is left of a message a `try_write` (or a cancelled
    /// write) started, then waits until the socket has room for more.
    pub(crate) async fn writable(&mut self) -> Result<()> {
        poll_fn(|cx| self.poll_drain_tail(cx)).await?;
        poll_fn(|cx| self.io.poll_writable(cx))
            .await
            .map_err(|e| Error::os(e, "waiting for the pipe to be writable failed"))
    }

    pub(crate) fn registered(io: AsyncFd<Fd>, end: EndCore) -> PipeStream {
        PipeStream::with_link(AsyncLink::Socket(io), end)
    }

    /// A stream whose bytes go through `io`.
    pub(crate) fn with_link(io: AsyncLink, end: EndCore) -> PipeStream {
        PipeStream {
            io,
            end,
            tail: Vec::new(),
        }
    }

    /// The calls that never wait, through the transport contract the data
    /// path is written against.
    fn sync(&self) -> &impl Transport {
        self.io.sync()
    }

    /// `DisconnectNamedPipe` on the server end, as the blocking
    /// `disconnect_client`: the mark only at a message boundary (nothing
    /// of a cut message left to send).
    pub(crate) fn disconnect_client(&mut self) {
        if let Some(mark) = self.end.disconnect(self.tail.is_empty()) {
            let _ = self.sync().send_nonblocking(&mark);
        }
        let _ = self.sync().shutdown_both();
        self.tail = Vec::new();
    }

    /// A write's failure as the client should see it.
    fn explain(&self, e: Error) -> Error {
        self.end.explain(e, || self.sync().peek_queued())
    }

    fn connected(&self) -> Result<()> {
        self.end.connected()
    }

    fn poll_drain_tail(&mut self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        poll_drain(&self.io, &mut self.end.writer, &mut self.tail, cx)
    }

    pub(crate) async fn read_message(&mut self, buf: &mut [u8]) -> Result<MessageRead> {
        self.connected()?;
        read_op(self, ReadMessage::new(buf)).await
    }

    pub(crate) async fn recv_message(&mut self) -> Result<Vec<u8>> {
        self.connected()?;
        read_op(self, RecvMessage::default()).await
    }

    pub(crate) async fn write_message(&mut self, msg: &[u8]) -> Result<()> {
        self.connected()?;
        poll_fn(|cx| self.poll_drain_tail(cx)).await?;
        let op = self.end.writer.begin_message(msg)?;
        let mut f = WriteFuture {
            io: &self.io,
            writer: &mut self.end.writer,
            op,
            msg,
            finished: false,
        };
        let sent = poll_fn(|cx| f.poll_op(cx)).await;
        drop(f);
        sent.map_err(|e| self.explain(e))?;
        // Whole, as a socket's send is once the kernel has it: a transport
        // that holds records back (TLS, where the socket was full) sends
        // them now, not at the next call.
        poll_fn(|cx| self.io.poll_flush(cx))
            .await
            .map_err(|e| self.explain(send_error(e)))
    }

    pub(crate) async fn transact(&mut self, request: &[u8]) -> Result<Vec<u8>> {
        self.send_request(request).await?;
        self.recv_message().await
    }

    /// A transaction's first half: `TransactNamedPipe`'s checks, then the
    /// request.
    async fn send_request(&mut self, request: &[u8]) -> Result<()> {
        self.connected()?;
        let sock = self.io.sync();
        self.end
            .check_transact(request.len(), || sock.readable_bytes().unwrap_or(0))?;
        self.write_message(request).await
    }

    pub(crate) async fn transact_into(
        &mut self,
        request: &[u8],
        reply: &mut [u8],
    ) -> Result<MessageRead> {
        self.send_request(request).await?;
        self.read_message(reply).await
    }

    pub(crate) fn peek(&mut self, buf: &mut [u8]) -> Result<Peek> {
        self.connected()?;
        crate::peek_io::peek(&mut self.end.reader, self.io.sync(), buf)
    }

    pub(crate) async fn flush_buffers(&mut self) -> Result<()> {
        self.connected()?;
        poll_fn(|cx| self.poll_drain_tail(cx)).await?;
        let mut pause = Duration::from_micros(50);
        loop {
            let delivery = self
                .sync()
                .delivery()
                .map_err(|e| Error::os(e, "cannot query the send queue"))?;
            if self
                .end
                .flush_state(delivery, || self.sync().peek_queued())?
                .is_none()
            {
                return Ok(());
            }
            ::tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(5));
        }
    }

    pub(crate) fn set_read_mode(&mut self, mode: ReadMode) -> Result<()> {
        self.end.reader.set_mode(mode)
    }

    pub(crate) fn read_mode(&self) -> ReadMode {
        self.end.reader.mode
    }

    pub(crate) async fn shutdown_write(&mut self) -> Result<()> {
        self.connected()?;
        poll_fn(|cx| self.poll_drain_tail(cx)).await?;
        poll_fn(|cx| self.io.poll_shutdown_write(cx))
            .await
            .map_err(|e| Error::os(e, "cannot shut down the sending side"))
    }
}

impl AsyncRead for PipeStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.connected()?;
        // The rest of a message `poll_write` took goes out meanwhile.
        let _ = poll_drain(&this.io, &mut this.end.writer, &mut this.tail, cx);
        let n = {
            let mut op = ReadStd::new(buf.initialize_unfilled());
            ready!(poll_run(&this.io, &mut this.end.reader, &mut op, cx, true))?
        };
        buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for PipeStream {
    /// Byte pipe: writes some bytes. Message pipe: writes `buf` as one
    /// message and returns its full length.
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.connected()?;
        ready!(this.poll_drain_tail(cx))?;
        if !this.end.writer.message {
            this.end.writer.check(0)?;
            let sent = ready!(this.io.poll_send(cx, &[IoSlice::new(buf)]));
            return Poll::Ready(sent.map_err(|e| send_error(e).into()));
        }
        let mut op = this.end.writer.begin_message(buf)?;
        match poll_send(&this.io, &mut this.end.writer, &mut op, buf, cx) {
            Poll::Ready(r) => {
                Poll::Ready(r.map(|()| buf.len()).map_err(|e| this.explain(e).into()))
            }
            Poll::Pending if op.sent() == 0 => Poll::Pending,
            Poll::Pending => {
                // Part of the message went out: keep the rest, to send before
                // anything else, and report the message as written.
                this.tail.extend_from_slice(op.header_rest());
                this.tail.extend_from_slice(op.payload_rest(buf));
                Poll::Ready(Ok(buf.len()))
            }
        }
    }

    /// Sends what a `poll_write` left over; does not wait for the peer to
    /// read (that is [`PipeServer::flush_buffers`](super::PipeServer::flush_buffers)).
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.end.disconnected {
            return Poll::Ready(Ok(()));
        }
        Poll::Ready(ready!(this.poll_drain_tail(cx)).map_err(Into::into))
    }

    /// Sends what is left, then closes the sending side.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.connected()?;
        ready!(this.poll_drain_tail(cx))?;
        Poll::Ready(
            ready!(this.io.poll_shutdown_write(cx))
                .map_err(|e| Error::os(e, "cannot shut down the sending side").into()),
        )
    }
}

/// Reads, writes and everything common to both ends on tokio, with the same
/// semantics and errors as the blocking ends:
///
/// - On a byte-type pipe, [`AsyncRead`] and [`AsyncWrite`] are the raw
///   socket's stream.
/// - On a message-type pipe each [`AsyncWrite::poll_write`] sends one whole
///   message, and [`AsyncRead::poll_read`] returns bytes of one message at a
///   time, never crossing a boundary (a read returns what has arrived of the
///   message; the next read continues it). Zero-length messages are skipped
///   there, since `Ok(0)` means end of stream; [`read_message`](Self::read_message)
///   returns them and says whether *more data* follows.
///
/// To read and write from two tasks at once, split it with
/// `tokio::io::split` (each half takes a lock around the stream).
///
/// # Cancel safety
///
/// | method | cancel-safe? |
/// |---|---|
/// | [`read_message`](Self::read_message), [`recv_message`](Self::recv_message) | Yes: a read dropped before it finished puts back what it took, so the next read starts where it did. |
/// | [`AsyncRead`] (`read`, `read_buf`) | Yes, as for any tokio stream. |
/// | [`write_message`](Self::write_message), [`transact`](Self::transact) | **No**: dropped after part of the message went out, the message is cut, and the writer is broken for good (every later write fails with *broken pipe*, the peer sees *broken pipe*, never a cut message). Dropped before anything went out, nothing was sent. Dropped while the whole message waits in a remote pipe's TLS for the socket to take it (the write's last step), it is not cut: it goes out before the next read or write. |
/// | [`AsyncWrite`] (`write`, `write_all`) | Yes: a `poll_write` that sent part of a message reports it written and keeps the rest, which goes out while this end reads, and before the next write, `flush` or `shutdown`. The message is never cut by that, unless the end is dropped first: as with a buffered writer, `flush` (or `shutdown`) before dropping, or the peer sees the message cut (*broken pipe*). |
/// | [`flush_buffers`](Self::flush_buffers) | Yes (it only waits). |
///
/// ```
/// use npipe::{ClientOptions, MessageRead, ServerOptions};
///
/// # let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
/// # rt.block_on(async {
/// let name = format!("doc-async-stream-{}", std::process::id());
/// let listener = ServerOptions::new().create_async(&name)?; // message type
/// let mut client = ClientOptions::new().open_async(&name).await?;
/// let mut server = listener.accept().await?;
///
/// client.write_message(b"hello, world").await?;
/// client.write_message(b"").await?;
/// let mut buf = [0u8; 5];
/// assert_eq!(server.read_message(&mut buf).await?, MessageRead::MoreData(5));
/// assert_eq!(&buf, b"hello");
/// assert_eq!(server.recv_message().await?, b", world");
/// assert_eq!(server.read_message(&mut buf).await?, MessageRead::Complete(0));
/// # Ok::<(), npipe::Error>(())
/// # }).unwrap();
/// ```
impl<R: PipeRole> Pipe<PipeStream, R> {
    /// Whether this connection's data goes through shared memory (see
    /// [`ClientOptions::shared_memory`](crate::ClientOptions::shared_memory))
    /// rather than the socket. Nothing else differs.
    ///
    /// ```
    /// # let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    /// # rt.block_on(async {
    /// # let name = format!("doc-async-uses-shared-memory-{}", std::process::id());
    /// let listener = npipe::ServerOptions::new().create_async(&name)?;
    /// let mut client = npipe::ClientOptions::new()
    ///     .shared_memory(true)
    ///     .open_async(&name)
    ///     .await?;
    /// let mut server = listener.accept().await?;
    /// # if std::env::var("NPIPE_SHARED_MEMORY").as_deref() != Ok("off") {
    /// assert!(client.uses_shared_memory() && server.uses_shared_memory());
    /// # }
    /// client.write_message(b"through the ring").await?;
    /// assert_eq!(server.recv_message().await?, b"through the ring");
    /// # Ok::<(), npipe::Error>(())
    /// # }).unwrap();
    /// ```
    pub fn uses_shared_memory(&self) -> bool {
        self.io.io.is_shared_memory()
    }

    /// Reads one message, or the rest of a message a short buffer cut
    /// (`ReadFile` in message read mode). [`MessageRead::MoreData`] is
    /// `ERROR_MORE_DATA`: the next read continues the same message.
    /// Zero-length messages read as `Complete(0)`. A peer that closes
    /// between messages gives *broken pipe*; one that dies mid-message gives
    /// *broken pipe* too, never a cut message.
    ///
    /// Cancel-safe: dropped before it finished, it leaves the pipe as it
    /// found it (the bytes it took are put back).
    pub async fn read_message(&mut self, buf: &mut [u8]) -> Result<MessageRead> {
        self.io.read_message(buf).await
    }

    /// Reads the rest of the current message, or the next message, whole.
    /// Its size was checked against the largest message this end accepts
    /// before anything was allocated.
    ///
    /// Cancel-safe, as [`read_message`](Self::read_message).
    pub async fn recv_message(&mut self) -> Result<Vec<u8>> {
        self.io.recv_message().await
    }

    /// Writes one message, whole and atomic (`WriteFile` on a message pipe).
    ///
    /// **Not cancel-safe**: dropped after part of the message went out, it
    /// breaks the writer (later writes fail with *broken pipe* and the peer
    /// sees *broken pipe*, never a cut message). Wrap it in
    /// `tokio::time::timeout` only if giving up on the pipe is acceptable.
    pub async fn write_message(&mut self, msg: &[u8]) -> Result<()> {
        self.io.write_message(msg).await
    }

    /// Sends a message and reads the reply (`TransactNamedPipe`). Needs a
    /// message pipe in message read mode; fails with *pipe busy* if unread
    /// data is waiting, as on Windows.
    ///
    /// Not cancel-safe while the request is being written (see
    /// [`write_message`](Self::write_message)); cancel-safe while waiting
    /// for the reply (the reply stays readable with
    /// [`recv_message`](Self::recv_message)).
    pub async fn transact(&mut self, request: &[u8]) -> Result<Vec<u8>> {
        self.io.transact(request).await
    }

    /// `TransactNamedPipe` with the caller's reply buffer: sends `request`
    /// and reads the reply into `reply`; a longer reply gives
    /// [`MessageRead::MoreData`] (`ERROR_MORE_DATA`) with the rest left to
    /// read with [`read_message`](Self::read_message). Same rules and
    /// cancel safety as [`transact`](Self::transact).
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// use npipe::{ClientOptions, MessageRead, ServerOptions};
    ///
    /// let name = format!("doc-async-transact-into-{}", std::process::id());
    /// let listener = ServerOptions::new().create_async(&name)?;
    /// let echo = tokio::spawn(async move {
    ///     let mut pipe = listener.accept().await?;
    ///     let request = pipe.recv_message().await?;
    ///     pipe.write_message(&request).await
    /// });
    /// let mut client = ClientOptions::new().open_async(&name).await?;
    /// let mut reply = [0u8; 16];
    /// assert_eq!(client.transact_into(b"ping", &mut reply).await?, MessageRead::Complete(4));
    /// assert_eq!(&reply[..4], b"ping");
    /// echo.await.unwrap()?;
    /// # Ok::<(), npipe::Error>(())
    /// # }).unwrap();
    /// ```
    pub async fn transact_into(&mut self, request: &[u8], reply: &mut [u8]) -> Result<MessageRead> {
        self.io.transact_into(request, reply).await
    }

    /// Copies waiting data without consuming it (`PeekNamedPipe`). It never
    /// waits, so it is not `async`. On a message pipe it copies from the
    /// current message only, whatever the read mode, and `message_left`
    /// counts what is left of it beyond the bytes copied (as Windows does).
    pub fn peek(&mut self, buf: &mut [u8]) -> Result<Peek> {
        self.io.peek(buf)
    }

    /// Waits until the other end has read everything written so far
    /// (`FlushFileBuffers`). Bound it with `tokio::time::timeout` if need be
    /// (it is cancel-safe).
    ///
    /// This is not [`AsyncWrite::poll_flush`], which only sends what a
    /// `poll_write` left over and does not wait for the peer.
    pub async fn flush_buffers(&mut self) -> Result<()> {
        self.io.flush_buffers().await
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

    /// Closes this end's sending side after what was written: the other end
    /// reads end of stream, and can still write back. (An npipe extension;
    /// Windows pipes have no half-close.)
    pub async fn shutdown_write(&mut self) -> Result<()> {
        self.io.shutdown_write().await
    }

    /// Waits until a read would not wait: data has arrived (or is buffered
    /// here), or the peer closed. For use with the `try_*` reads, as
    /// tokio's `NamedPipeServer::readable`. Cancel-safe.
    pub async fn readable(&self) -> Result<()> {
        self.io.readable().await
    }

    /// Sends whatever a [`try_write`](Self::try_write) left of its message
    /// (a message is never left cut), then waits until the socket has room
    /// for the next write. Await it after a `try_write` before waiting for
    /// the peer's answer. Cancel-safe.
    pub async fn writable(&mut self) -> Result<()> {
        self.io.writable().await
    }

    /// [`read_message`](Self::read_message) if it would not wait: what is
    /// there now, else `ERROR_NO_DATA` (232), as `ReadFile` on a
    /// `PIPE_NOWAIT` pipe. Takes nothing when it fails that way.
    ///
    /// ```
    /// # let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    /// # rt.block_on(async {
    /// # let name = format!("doc-try-read-{}", std::process::id());
    /// # let listener = npipe::ServerOptions::new().create_async(&name)?;
    /// # let mut client = npipe::ClientOptions::new().open_async(&name).await?;
    /// # let mut server = listener.accept().await?;
    /// let mut buf = [0u8; 16];
    /// let nothing = server.try_read_message(&mut buf).unwrap_err();
    /// assert_eq!(nothing.code(), npipe::ErrorCode::NoData);
    /// client.write_message(b"now").await?;
    /// server.readable().await?;
    /// assert_eq!(server.try_read_message(&mut buf)?, npipe::MessageRead::Complete(3));
    /// # Ok::<(), npipe::Error>(())
    /// # }).unwrap();
    /// ```
    pub fn try_read_message(&mut self, buf: &mut [u8]) -> Result<MessageRead> {
        // A read is cancel-safe: dropped pending, it gave back what it took.
        match poll_once(self.io.read_message(buf)) {
            Poll::Ready(read) => read,
            Poll::Pending => Err(nothing_yet()),
        }
    }

    /// [`recv_message`](Self::recv_message) if it would not wait, else
    /// `ERROR_NO_DATA` (232); a message only partly arrived stays whole for
    /// the next read.
    pub fn try_recv_message(&mut self) -> Result<Vec<u8>> {
        match poll_once(self.io.recv_message()) {
            Poll::Ready(read) => read,
            Poll::Pending => Err(nothing_yet()),
        }
    }

    /// `AsyncRead` without waiting, as tokio's `try_read`: the bytes there
    /// now (of one message, on a message pipe), or `WouldBlock`.
    pub fn try_read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let mut read = ReadBuf::new(buf);
        match poll_once(std::future::poll_fn(|cx| {
            Pin::new(&mut self.io).poll_read(cx, &mut read)
        })) {
            Poll::Ready(done) => done.map(|()| read.filled().len()),
            Poll::Pending => Err(std::io::ErrorKind::WouldBlock.into()),
        }
    }

    /// `AsyncWrite` without waiting, as tokio's `try_write`: on a message
    /// pipe one whole message or `WouldBlock`, on a byte pipe the bytes the
    /// socket took. A message the socket could not take whole is kept and
    /// sent, never cut, by the next [`writable`](Self::writable), write,
    /// flush or read: await `writable()` (or `flush`) before waiting for an
    /// answer, or the peer may never see all of it.
    pub fn try_write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match poll_once(std::future::poll_fn(|cx| {
            Pin::new(&mut self.io).poll_write(cx, buf)
        })) {
            Poll::Ready(done) => done,
            Poll::Pending => Err(std::io::ErrorKind::WouldBlock.into()),
        }
    }
}

crate::pipe::socket_end_io!(PipeStream, io);

impl<R: PipeRole + Unpin> AsyncRead for Pipe<PipeStream, R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<R: PipeRole + Unpin> AsyncWrite for Pipe<PipeStream, R> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// Polls `fut` once with a waker that does nothing: the `try_*` calls,
/// which must not wait, over the futures that would.
fn poll_once<F: std::future::Future>(fut: F) -> Poll<F::Output> {
    let mut fut = std::pin::pin!(fut);
    fut.as_mut()
        .poll(&mut Context::from_waker(std::task::Waker::noop()))
}

/// What a `try_*` read that would wait says (`ReadFile` on a
/// `PIPE_NOWAIT` pipe with nothing to read).
fn nothing_yet() -> Error {
    Error::new(
        crate::ErrorCode::NoData,
        "nothing to read yet (a try_ read never waits: await readable() first)",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::info::End;
    use crate::proto::framing;
    use crate::stream_core::Setup;
    use crate::tokio::join::both;
    use crate::tokio::transport::read_ahead::AsyncReadAhead;
    use crate::types::PipeType;
    use crate::ErrorCode;

    /// The async data path over a transport that reads ahead (as TLS
    /// does): bytes it holds are ready at once, though the reactor sees
    /// nothing on the socket; each read is bounded so that a wait on the
    /// socket for them fails the test instead of hanging it.
    #[test]
    fn bytes_held_inside_the_transport_are_never_waited_for() {
        let rt = ::tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (a, b) = Socket::pair().unwrap();
            let io = AsyncReadAhead::new(register(b).unwrap());
            let setup = Setup::for_test(End::Client, PipeType::Message);
            let mut core = setup.cores(ReadMode::Message, Vec::new()).0;
            for m in [&b"first"[..], b"", b"third message", &[5u8; 300]] {
                a.send(&framing::header(m.len() as u32)).unwrap();
                a.send(m).unwrap();
            }
            let limit = Duration::from_millis(500);
            macro_rules! read {
                ($op:expr) => {{
                    let mut op = $op;
                    let read = poll_fn(|cx| poll_run(&io, &mut core, &mut op, cx, false));
                    ::tokio::time::timeout(limit, read).await
                }};
            }
            assert_eq!(read!(RecvMessage::default()).unwrap().unwrap(), b"first");
            assert!(io.held() > 0, "the transport read ahead");
            // Ready at once, with nothing on the socket.
            let ready = poll_fn(|cx| io.poll_readable(cx));
            ::tokio::time::timeout(limit, ready).await.unwrap().unwrap();
            assert_eq!(read!(RecvMessage::default()).unwrap().unwrap(), b"");

            let mut five = [0u8; 5];
            let got = read!(ReadMessage::new(&mut five)).unwrap().unwrap();
            assert_eq!((got, &five), (MessageRead::MoreData(5), b"third"));
            // A peek counts what the transport holds.
            let mut two = [0u8; 2];
            let seen = crate::peek_io::peek(&mut core, io.sync(), &mut two).unwrap();
            assert_eq!((&two, seen.message_left), (b" m", 6));
            let mut rest = [0u8; 64];
            let got = read!(ReadMessage::new(&mut rest)).unwrap().unwrap();
            assert_eq!(
                (got, &rest[..8]),
                (MessageRead::Complete(8), &b" message"[..])
            );

            let last = read!(RecvMessage::default()).unwrap().unwrap();
            assert_eq!(last, vec![5u8; 300]);
            assert_eq!(io.held(), 0);
            // Nothing left anywhere: now a read does wait.
            assert!(read!(RecvMessage::default()).is_err(), "should still wait");
        });
    }

    /// A connected pair of tokio ends (`a` the server), over the socket or
    /// over the shared-memory rings: the same data path either way.
    type Pair = fn(PipeType) -> (PipeStream, PipeStream);

    fn ends(pipe_type: PipeType) -> (EndCore, EndCore) {
        let mode = match pipe_type {
            PipeType::Byte => ReadMode::Byte,
            PipeType::Message => ReadMode::Message,
        };
        let end = |e| EndCore::new(Setup::for_test(e, pipe_type), mode, Vec::new());
        (end(End::Server), end(End::Client))
    }

    fn socket_pair(pipe_type: PipeType) -> (PipeStream, PipeStream) {
        let (sa, sb) = Socket::pair().unwrap();
        let (ea, eb) = ends(pipe_type);
        (
            PipeStream::new(sa, ea).unwrap(),
            PipeStream::new(sb, eb).unwrap(),
        )
    }

    /// Rings of 64 KiB each way, as much as a socket holds, so a test that
    /// writes before it reads does not wait on itself.
    fn shm_pair(pipe_type: PipeType) -> (PipeStream, PipeStream) {
        use crate::shm::link::AsyncLink;
        use crate::shm::transport::async_end::AsyncShm;
        use crate::shm::transport::test_rings;
        const RING: usize = 64 * 1024;
        let (sa, sb) = Socket::pair().unwrap();
        let (creator, joiner) = test_rings(RING);
        let (ea, eb) = ends(pipe_type);
        let link = |s, rings| {
            let rings = AsyncShm::new(rings, register_for_wakes(s).unwrap());
            AsyncLink::Shm(Box::new(rings))
        };
        (
            PipeStream::with_link(link(sa, joiner), ea),
            PipeStream::with_link(link(sb, creator), eb),
        )
    }

    /// Every test of the tokio data path runs over both links, each on a
    /// runtime of its own.
    macro_rules! on_both_links {
        ($($name:ident),* $(,)?) => {
            mod over_sockets {
                $( #[test] fn $name() { super::run(super::$name(super::socket_pair)) } )*
            }
            mod over_shared_memory {
                $( #[test] fn $name() { super::run(super::$name(super::shm_pair)) } )*
            }
        };
    }

    fn run(test: impl std::future::Future<Output = ()>) {
        ::tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(test)
    }

    on_both_links!(
        messages_keep_boundaries,
        peek_does_not_consume,
        transact_refuses_while_unread_data_waits,
        a_disconnected_client_is_told_not_connected,
        cut_message_is_broken_pipe_not_data,
        oversize_header_is_bad_pipe,
        flush_buffers_waits_until_the_peer_has_read,
    );

    async fn messages_keep_boundaries(pair: Pair) {
        let (mut a, mut b) = pair(PipeType::Message);
        let big = vec![3u8; 200_000];
        let writer = async {
            for m in [&b"hello, world"[..], b"", &big] {
                a.write_message(m).await.unwrap();
            }
            a
        };
        let reader = async {
            let mut five = [0u8; 5];
            let first = b.read_message(&mut five).await.unwrap();
            assert_eq!((first, &five), (MessageRead::MoreData(5), b"hello"));
            assert_eq!(b.recv_message().await.unwrap(), b", world");
            assert_eq!(
                b.read_message(&mut five).await.unwrap(),
                MessageRead::Complete(0)
            );
            assert!(
                b.recv_message().await.unwrap() == big,
                "the large message changed"
            );
        };
        let (_a, ()) = both(writer, reader).await;
    }

    async fn peek_does_not_consume(pair: Pair) {
        let (mut a, mut b) = pair(PipeType::Message);
        a.write_message(b"abc").await.unwrap();
        a.write_message(b"de").await.unwrap();
        b.readable().await.unwrap();
        let mut buf = [0u8; 10];
        let p = b.peek(&mut buf).unwrap();
        assert_eq!((p.copied, p.message_left), (3, 0));
        assert_eq!(&buf[..3], b"abc");
        let mut two = [0u8; 2];
        let p = b.peek(&mut two).unwrap();
        assert_eq!((p.copied, p.message_left), (2, 1));
        assert_eq!(b.recv_message().await.unwrap(), b"abc");
        assert_eq!(b.recv_message().await.unwrap(), b"de");
    }

    async fn transact_refuses_while_unread_data_waits(pair: Pair) {
        let (mut a, mut b) = pair(PipeType::Message);
        a.write_message(b"unasked").await.unwrap();
        b.readable().await.unwrap();
        let e = b.transact(b"request").await.unwrap_err();
        assert_eq!(e.code(), ErrorCode::PipeBusy);
        assert_eq!(b.recv_message().await.unwrap(), b"unasked");
        let server = async {
            let request = a.recv_message().await.unwrap();
            a.write_message(&request).await.unwrap();
        };
        let ((), reply) = both(server, b.transact(b"request")).await;
        assert_eq!(reply.unwrap(), b"request");
    }

    /// `DisconnectNamedPipe`: the client's write, flush and reads fail with
    /// *pipe not connected*; data sent before it stays readable.
    async fn a_disconnected_client_is_told_not_connected(pair: Pair) {
        let (mut a, mut b) = pair(PipeType::Message);
        a.write_message(b"before").await.unwrap();
        a.disconnect_client();
        let code = |r: Result<()>| r.unwrap_err().code();
        assert_eq!(
            code(b.write_message(b"x").await),
            ErrorCode::PipeNotConnected
        );
        assert_eq!(code(b.flush_buffers().await), ErrorCode::PipeNotConnected);
        assert_eq!(b.recv_message().await.unwrap(), b"before");
        let after = b.recv_message().await.unwrap_err();
        assert_eq!(after.code(), ErrorCode::PipeNotConnected);
    }

    async fn cut_message_is_broken_pipe_not_data(pair: Pair) {
        let (a, mut b) = pair(PipeType::Message);
        a.sync().send(&framing::header(10)).unwrap();
        a.sync().send(b"12345").unwrap();
        drop(a);
        let mut buf = [0u8; 64];
        let e = b.read_message(&mut buf).await.unwrap_err();
        assert_eq!(e.code(), ErrorCode::BrokenPipe);
    }

    async fn oversize_header_is_bad_pipe(pair: Pair) {
        let (a, mut b) = pair(PipeType::Message);
        a.sync().send(&framing::header(u32::MAX - 1)).unwrap();
        assert_eq!(
            b.recv_message().await.unwrap_err().code(),
            ErrorCode::BadPipe
        );
        assert_eq!(
            b.recv_message().await.unwrap_err().code(),
            ErrorCode::BadPipe
        );
    }

    /// `FlushFileBuffers` returns once the peer has read what was sent,
    /// not before.
    async fn flush_buffers_waits_until_the_peer_has_read(pair: Pair) {
        let (mut a, mut b) = pair(PipeType::Message);
        a.write_message(&[9u8; 1000]).await.unwrap();
        let flushed = std::cell::Cell::new(false);
        let flushing = async {
            a.flush_buffers().await.unwrap();
            flushed.set(true);
        };
        let reading = async {
            ::tokio::time::sleep(Duration::from_millis(50)).await;
            assert!(!flushed.get(), "the flush returned before the peer read");
            assert_eq!(b.recv_message().await.unwrap().len(), 1000);
        };
        both(flushing, reading).await;
        assert!(flushed.get());
    }
}
