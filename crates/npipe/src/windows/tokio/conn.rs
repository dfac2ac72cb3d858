//! A connected end's I/O on tokio, as overlapped operations kept in the end
//! rather than in the futures that wait for them. So a dropped future loses
//! nothing: a read the kernel finishes after its future is gone is kept for
//! the next read, and a write, once started, finishes whole.

use std::future::poll_fn;
use std::io;
use std::task::{ready, Context, Poll};

use super::super::end::EndState;
use super::super::{os, Gather, FIRST_READ};
use crate::error::{Error, ErrorCode, Result};
use crate::stream_core::{MessageRead, Peek};
use crate::sys::{self, OpKind, Overlapped};
use crate::types::ReadMode;

/// What a finished read returned that the caller has not taken yet: the
/// rest of one message (or of the byte stream's chunk).
#[derive(Debug, Default)]
struct Held {
    buf: Vec<u8>,
    pos: usize,
    /// A finished read is here, even one of zero bytes (an empty message).
    present: bool,
    /// The kernel holds more of the same message (`ERROR_MORE_DATA`).
    more: bool,
}

impl Held {
    /// What a finished read returned, none of it taken yet.
    fn of(done: sys::Done) -> Held {
        Held::joined(done.buf, &[], done.more)
    }

    /// `front` then `back`, one part of a message, none of it taken yet;
    /// `more` if the kernel holds more of it.
    fn joined(mut front: Vec<u8>, back: &[u8], more: bool) -> Held {
        front.extend_from_slice(back);
        Held {
            buf: front,
            pos: 0,
            present: true,
            more,
        }
    }

    fn remaining(&self) -> &[u8] {
        if self.present {
            &self.buf[self.pos..]
        } else {
            &[]
        }
    }
}

/// One end's handle and the operations in flight on it.
#[derive(Debug)]
pub(crate) struct AsyncConn {
    pub(crate) state: EndState,
    /// A read the kernel may still be filling.
    reading: Option<Overlapped>,
    held: Held,
    /// A write in flight: `AsyncWrite`'s, or a message write whose future
    /// was dropped. Its error is the next write's to report.
    writing: Option<Overlapped>,
    /// A whole-message read (`recv_message`, a long transaction's reply)
    /// that waited for the rest of its message: what it gathered, kept
    /// here rather than in its future, so a dropped future loses none of
    /// it. The next `recv_message` goes on with it; any other read gets it
    /// first, as the start of the message.
    partial: Option<Gather>,
}

impl AsyncConn {
    pub(crate) fn new(state: EndState) -> AsyncConn {
        AsyncConn {
            state,
            reading: None,
            held: Held::default(),
            writing: None,
            partial: None,
        }
    }

    /// What a whole-message read gathered before it was dropped, held
    /// again as the start of the message, before whatever is held already
    /// (what a read finished since then: the message's next part), for
    /// whatever reads next.
    fn unfold_partial(&mut self) {
        let Some(gather) = self.partial.take() else {
            return;
        };
        let prefix = gather.into_prefix();
        if prefix.is_empty() {
            return;
        }
        // What is held already is the message's next part; nothing held,
        // the kernel has the rest.
        let more = !self.held.present || self.held.more;
        self.held = Held::joined(prefix, self.held.remaining(), more);
    }

    /// Keeps what a finished read returned after whatever is held already
    /// (the start of the same message), never in its place.
    fn hold(&mut self, done: sys::Done) {
        if !self.held.present {
            self.held = Held::of(done);
            return;
        }
        self.held = Held::joined(self.held.remaining().to_vec(), &done.buf, done.more);
    }

    /// `ReadFile` in the end's read mode, into `buf`.
    pub(crate) fn poll_read_message(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<Result<MessageRead>> {
        self.unfold_partial();
        self.poll_read_part(cx, buf)
    }

    /// One read, for a caller that keeps what came before (a gather).
    fn poll_read_part(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<Result<MessageRead>> {
        self.state.connected()?;
        loop {
            if self.held.present {
                return Poll::Ready(Ok(self.take_held(buf)));
            }
            if self.reading.is_none() {
                let op = Overlapped::start(
                    self.state.pipe.clone(),
                    OpKind::Read(buf.len().max(FIRST_READ)),
                );
                self.reading = Some(op.map_err(|e| os(e, "read"))?);
            }
            let op = self.reading.as_mut().expect("started above");
            let done = ready!(op.poll(cx));
            self.reading = None;
            let done = done.map_err(|e| os(e, "read"))?;
            self.hold(done);
        }
    }

    /// Moves what fits of the held read into `buf`: the message's end says
    /// `Complete`, a part `MoreData` (in message read mode).
    fn take_held(&mut self, buf: &mut [u8]) -> MessageRead {
        let rest = self.held.remaining();
        let n = rest.len().min(buf.len());
        buf[..n].copy_from_slice(&rest[..n]);
        self.held.pos += n;
        let all_taken = self.held.pos == self.held.buf.len();
        let more = !all_taken || self.held.more;
        if all_taken {
            self.held = Held::default();
        }
        if more && self.state.read_mode == ReadMode::Message {
            MessageRead::MoreData(n)
        } else {
            MessageRead::Complete(n)
        }
    }

    pub(crate) async fn read_message(&mut self, buf: &mut [u8]) -> Result<MessageRead> {
        poll_fn(|cx| self.poll_read_message(cx, buf)).await
    }

    /// One whole message, however long. Cancel-safe: what it gathered
    /// stays in the end ([`AsyncConn::partial`]).
    pub(crate) async fn recv_message(&mut self) -> Result<Vec<u8>> {
        poll_fn(|cx| self.poll_recv_message(cx)).await
    }

    fn poll_recv_message(&mut self, cx: &mut Context<'_>) -> Poll<Result<Vec<u8>>> {
        let max = self.state.max_message;
        let gather = self
            .partial
            .take()
            .unwrap_or_else(|| Gather::starting_with(Vec::new(), max));
        self.poll_gather(cx, gather)
    }

    /// Reads until the message `gather` holds the start of is whole; while
    /// it waits, `gather` is kept in the end.
    fn poll_gather(&mut self, cx: &mut Context<'_>, mut gather: Gather) -> Poll<Result<Vec<u8>>> {
        loop {
            let read = match self.poll_read_part(cx, gather.space()?) {
                Poll::Ready(read) => read?,
                Poll::Pending => {
                    self.partial = Some(gather);
                    return Poll::Pending;
                }
            };
            if let Some(msg) = gather.took(read)? {
                return Poll::Ready(Ok(msg));
            }
        }
    }

    /// Waits for the write in flight, if any, and gives its outcome.
    fn poll_write_done(&mut self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        let Some(op) = self.writing.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        let done = ready!(op.poll(cx));
        self.writing = None;
        Poll::Ready(done.map(|_| ()).map_err(|e| os(e, "write")))
    }

    /// Starts writing `bytes` (owned by the operation from here on).
    fn start_write(&mut self, bytes: Vec<u8>) -> Result<()> {
        let op = Overlapped::start(self.state.pipe.clone(), OpKind::Write(bytes));
        self.writing = Some(op.map_err(|e| os(e, "write"))?);
        Ok(())
    }

    /// `WriteFile`: one message, whole. Once started it finishes even if
    /// this future is dropped.
    pub(crate) async fn write_message(&mut self, msg: &[u8]) -> Result<()> {
        self.state.connected()?;
        poll_fn(|cx| self.poll_write_done(cx)).await?;
        self.start_write(msg.to_vec())?;
        poll_fn(|cx| self.poll_write_done(cx)).await
    }

    /// `TransactNamedPipe`'s rules here: nothing unread on this side.
    /// (The kernel checks the pipe's type and read mode.)
    fn check_transact(&mut self) -> Result<()> {
        self.state.connected()?;
        self.unfold_partial();
        // A read whose future was dropped: one the kernel has not filled
        // yet is cancelled (nothing was read, so nothing is unread); one
        // it filled keeps its bytes, which refuse the transact below.
        if let Some(op) = self.reading.take() {
            // An error comes again from the kernel on the next read.
            if let Ok(Some(done)) = op.cancel() {
                self.hold(done);
            }
        }
        if self.held.present {
            return Err(Error::new(
                ErrorCode::PipeBusy,
                "transact refused: unread data is waiting in the pipe (read it first)",
            ));
        }
        Ok(())
    }

    /// `TransactNamedPipe` into `reply`.
    pub(crate) async fn transact_into(
        &mut self,
        request: &[u8],
        reply: &mut [u8],
    ) -> Result<MessageRead> {
        self.check_transact()?;
        poll_fn(|cx| self.poll_write_done(cx)).await?;
        let op = OpKind::Transact(request.to_vec(), reply.len());
        let mut op =
            Overlapped::start(self.state.pipe.clone(), op).map_err(|e| os(e, "transact"))?;
        let done = poll_fn(|cx| op.poll(cx))
            .await
            .map_err(|e| os(e, "transact"))?;
        reply[..done.bytes].copy_from_slice(&done.buf);
        Ok(if done.more {
            MessageRead::MoreData(done.bytes)
        } else {
            MessageRead::Complete(done.bytes)
        })
    }

    /// `TransactNamedPipe`, and the rest of a long reply.
    pub(crate) async fn transact(&mut self, request: &[u8]) -> Result<Vec<u8>> {
        let mut reply = vec![0u8; FIRST_READ];
        let first = self.transact_into(request, &mut reply).await?;
        reply.truncate(first.len());
        match first {
            MessageRead::Complete(_) => Ok(reply),
            MessageRead::MoreData(_) => {
                let mut gather = Some(Gather::starting_with(reply, self.state.max_message));
                poll_fn(|cx| match gather.take() {
                    Some(g) => self.poll_gather(cx, g),
                    // Woken again: the gather waits in the end.
                    None => self.poll_recv_message(cx),
                })
                .await
            }
        }
    }

    /// Takes a read the kernel finished while no one was waiting for it.
    fn settle_read(&mut self) {
        let Some(op) = self.reading.as_mut() else {
            return;
        };
        if !op.is_done() {
            return;
        }
        let mut cx = Context::from_waker(std::task::Waker::noop());
        if let Poll::Ready(done) = op.poll(&mut cx) {
            self.reading = None;
            // An error comes again from the kernel on the next read.
            if let Ok(done) = done {
                self.hold(done);
            }
        }
    }

    /// `PeekNamedPipe`, counting first what a finished read holds here.
    pub(crate) fn peek(&mut self, buf: &mut [u8]) -> Result<Peek> {
        self.state.connected()?;
        self.unfold_partial();
        self.settle_read();
        if !self.held.present {
            return self.state.peek(buf);
        }
        let held = self.held.remaining();
        let n = held.len().min(buf.len());
        buf[..n].copy_from_slice(&held[..n]);
        // The kernel's first bytes continue the held message only if the
        // read said *more data*; a peek stays within one message.
        let continues = self.held.more;
        let rest: &mut [u8] = if continues && n == held.len() {
            &mut buf[n..]
        } else {
            &mut []
        };
        let kernel = self.state.peek(rest)?;
        Ok(Peek {
            copied: n + kernel.copied,
            available: held.len() + kernel.available,
            message_left: held.len() - n + if continues { kernel.message_left } else { 0 },
        })
    }

    /// `FlushFileBuffers`: until the peer has read everything. It blocks in
    /// the kernel, so it runs on tokio's blocking pool.
    pub(crate) async fn flush_buffers(&mut self) -> Result<()> {
        self.state.connected()?;
        poll_fn(|cx| self.poll_write_done(cx)).await?;
        let pipe = self.state.pipe.clone();
        ::tokio::task::spawn_blocking(move || sys::flush(&pipe))
            .await
            .map_err(|e| Error::new(ErrorCode::Other, format!("flush did not finish: {e}")))?
            .map_err(|e| os(e, "flush"))
    }

    /// `DisconnectNamedPipe`: operations in flight are cancelled first.
    pub(crate) fn disconnect(&mut self) -> Result<()> {
        self.partial = None;
        self.reading = None;
        self.writing = None;
        self.held = Held::default();
        self.state.disconnect()
    }

    /// `AsyncRead`: a message's bytes (the next read continues it), or the
    /// stream's; a closed writer is the end of the stream.
    pub(crate) fn poll_read_io(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ::tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match ready!(self.poll_read_message(cx, buf.initialize_unfilled())) {
            Ok(r) => {
                buf.advance(r.len());
                Poll::Ready(Ok(()))
            }
            Err(e) if e.code() == ErrorCode::BrokenPipe => Poll::Ready(Ok(())),
            Err(e) => Poll::Ready(Err(e.into())),
        }
    }

    /// `AsyncWrite`: each write is one message, taken whole as soon as the
    /// previous one is done (its error, if any, comes here).
    pub(crate) fn poll_write_io(
        &mut self,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.state.connected()?;
        ready!(self.poll_write_done(cx))?;
        self.start_write(buf.to_vec())?;
        Poll::Ready(Ok(buf.len()))
    }

    /// `AsyncWrite::poll_flush`: until the write in flight is done.
    pub(crate) fn poll_flush_io(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(ready!(self.poll_write_done(cx))?))
    }

    /// Until a read would not wait: a finished read is held here (its
    /// bytes, an empty message, or the error the next read reports).
    pub(crate) async fn readable(&mut self) -> Result<()> {
        self.state.connected()?;
        poll_fn(|cx| {
            // Held data is readable; a message gathered in part is not
            // until more of it came.
            if self.held.present {
                return Poll::Ready(Ok(()));
            }
            if self.reading.is_none() {
                let op = Overlapped::start(self.state.pipe.clone(), OpKind::Read(FIRST_READ));
                match op {
                    Ok(op) => self.reading = Some(op),
                    // The read would fail at once: the next read reports it.
                    Err(_) => return Poll::Ready(Ok(())),
                }
            }
            let op = self.reading.as_mut().expect("started above");
            if op.is_done() {
                return Poll::Ready(Ok(()));
            }
            // Woken when the kernel finishes it; the read stays in flight.
            op.poll(cx).map(|done| {
                self.reading = None;
                // An error comes again from the kernel on the next read.
                if let Ok(done) = done {
                    self.hold(done);
                }
                Ok(())
            })
        })
        .await
    }

    /// Until the write in flight (a `try_write`'s) is done: its error, if
    /// any, comes here.
    pub(crate) async fn writable(&mut self) -> Result<()> {
        self.state.connected()?;
        poll_fn(|cx| self.poll_write_done(cx)).await
    }

    /// `read_message` if it would not wait, else `ERROR_NO_DATA`; a read
    /// it had to start stays in flight for the next one.
    pub(crate) fn try_read_message(&mut self, buf: &mut [u8]) -> Result<MessageRead> {
        match self.poll_read_message(&mut noop_context(), buf) {
            Poll::Ready(read) => read,
            Poll::Pending => Err(nothing_yet()),
        }
    }

    /// `recv_message` if the whole message is there, else `ERROR_NO_DATA`
    /// with the part read so far kept, whole, for the next read.
    pub(crate) fn try_recv_message(&mut self) -> Result<Vec<u8>> {
        match self.poll_recv_message(&mut noop_context()) {
            Poll::Ready(msg) => msg,
            Poll::Pending => Err(nothing_yet()),
        }
    }

    /// `AsyncRead` without waiting: the bytes there now, or `WouldBlock`.
    pub(crate) fn try_read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut read = ::tokio::io::ReadBuf::new(buf);
        match self.poll_read_io(&mut noop_context(), &mut read) {
            Poll::Ready(done) => done.map(|()| read.filled().len()),
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    /// `AsyncWrite` without waiting: the whole buffer, started as one
    /// write (it finishes whole; [`writable`](Self::writable) waits for it),
    /// or `WouldBlock` while the previous write is in flight.
    pub(crate) fn try_write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.poll_write_io(&mut noop_context(), buf) {
            Poll::Ready(done) => done,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

/// A context whose waker does nothing: for the `try_*` calls, which poll
/// once and never wait.
fn noop_context() -> Context<'static> {
    Context::from_waker(std::task::Waker::noop())
}

/// What a `try_*` read says when nothing is there yet, as `ReadFile` on a
/// `PIPE_NOWAIT` pipe.
fn nothing_yet() -> Error {
    Error::new(ErrorCode::NoData, "no data is waiting in the pipe yet")
}

impl Drop for AsyncConn {
    /// A write in flight was reported done to the application (`AsyncWrite`
    /// says so once it starts), so it is not cancelled: the process's
    /// write-out thread keeps it, and the handle, until it finishes.
    fn drop(&mut self) {
        if let Some(op) = self.writing.take() {
            super::write_out::keep(op);
        }
    }
}

/// `AsyncRead` and `AsyncWrite` for an end keeping its [`AsyncConn`] in
/// `conn`.
macro_rules! async_io {
    ($t:ty) => {
        impl ::tokio::io::AsyncRead for $t {
            fn poll_read(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &mut ::tokio::io::ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                self.get_mut().conn.poll_read_io(cx, buf)
            }
        }

        impl ::tokio::io::AsyncWrite for $t {
            fn poll_write(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                self.get_mut().conn.poll_write_io(cx, buf)
            }
            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                self.get_mut().conn.poll_flush_io(cx)
            }
            /// Named pipes have no half-close: this only finishes the write
            /// in flight.
            fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                self.get_mut().conn.poll_flush_io(cx)
            }
        }
    };
}

pub(crate) use async_io;
