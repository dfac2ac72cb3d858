//! A tokio client's remote pipe straight over TLS: [`TlsTransport`] with
//! its TCP socket registered with the reactor, as an [`AsyncTransport`],
//! so a tokio end's data path runs on the connection to the gateway with
//! no relay between (it used to go through a socket pair and a relay
//! thread: a copy and two wake-ups each way).
//!
//! What a plain socket does by itself is done here:
//! - **Readiness follows the socket, not the plaintext.** A read may take
//!   in part of a TLS record and decrypt nothing; the socket's readiness is
//!   cleared only once the socket itself said it had nothing, or a reactor
//!   that reports edges would never wake us for the rest.
//! - **Records a full socket did not take still leave.** A send hands the
//!   bytes to rustls; what the socket did not take goes before the next
//!   send, while the end reads ([`poll_flush`] is polled beside every
//!   read: the peer may wait for the rest of a request before it answers),
//!   when a message write ends, when the end flushes or shuts down, and,
//!   if the end is dropped first, from a task of its own on the runtime, as
//!   a socket's kernel buffer still goes out after `close`.
//! - **Every waiting task is woken.** A reader that sends what was held
//!   back waits for room beside the writer (the halves of
//!   `tokio::io::split`), and tokio keeps one waker per direction: the
//!   reactor gets ours ([`Waiters`]), which wakes them all.
//! - **Shutting down sends close_notify before TCP's end**, waiting for
//!   room as a write does.
//!
//! [`poll_flush`]: AsyncTransport::poll_flush

use std::io::{self, IoSlice};
use std::sync::Arc;
use std::task::{ready, Context, Poll, Waker};

use ::tokio::io::unix::AsyncFd;
use ::tokio::io::Interest;

use super::tls_transport::TlsTransport;
use crate::sys::{self, Fd};
use crate::transport::{AsyncTransport, Recv, Transport};
use crate::waiters::Waiters;

/// How long a dropped end's task keeps sending what rustls still held: a
/// gateway that stopped reading does not keep it (its descriptor and
/// buffers) for the rest of the runtime's life. (A tokio client needs a
/// runtime with timers already: its connect is timed.)
const DROPPED_FLUSH_LIMIT: std::time::Duration = std::time::Duration::from_secs(30);

/// The connection: rustls over the socket, and a second descriptor of the
/// socket registered with the reactor (readiness is the socket's, whichever
/// descriptor asks). No `Drop` of its own: a dropped end's last records go
/// from a task that owns one of these.
#[derive(Debug)]
struct Conn {
    tls: TlsTransport,
    watch: AsyncFd<Fd>,
}

impl Conn {
    /// Ready once everything rustls holds is on the socket.
    fn poll_flush(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            if self.tls.flush()? {
                return Poll::Ready(Ok(()));
            }
            let mut guard = ready!(self.watch.poll_write_ready(cx))?;
            // Room may have come since the flush above: look again before
            // waiting for the socket's next edge.
            if self.tls.flush()? {
                return Poll::Ready(Ok(()));
            }
            guard.clear_ready();
        }
    }

    /// Ready once the socket gave something new (decrypted or not) or
    /// there is input to take; the readiness is cleared only when the
    /// socket itself had nothing.
    fn poll_socket_input(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.watch.poll_read_ready(cx))?;
            if self.tls.pump_socket()? || self.tls.has_input() {
                return Poll::Ready(Ok(()));
            }
            guard.clear_ready();
        }
    }

    /// close_notify, then TCP's end of sending, once everything is out.
    fn poll_shutdown_write(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.tls.queue_close_notify();
        ready!(self.poll_flush(cx))?;
        Poll::Ready(self.tls.socket().shutdown_write())
    }
}

/// A remote pipe's TLS connection on tokio.
#[derive(Debug)]
pub(crate) struct AsyncTls {
    /// Always there but while being dropped.
    conn: Option<Conn>,
    /// The tasks waiting on the registration, and the waker the reactor
    /// gets: it wakes them all.
    waiters: Arc<Waiters>,
    all: Waker,
}

impl AsyncTls {
    /// Registers `tls` (handshake done, socket non-blocking) with the
    /// current runtime's reactor.
    pub(crate) fn new(tls: TlsTransport) -> io::Result<AsyncTls> {
        let watch = sys::register_async_for(
            tls.socket().try_clone()?,
            Interest::READABLE | Interest::WRITABLE,
        )?;
        let waiters = Arc::new(Waiters::default());
        Ok(AsyncTls {
            conn: Some(Conn {
                tls: tls.never_waiting(),
                watch,
            }),
            all: Waker::from(Arc::clone(&waiters)),
            waiters,
        })
    }

    fn conn(&self) -> &Conn {
        self.conn.as_ref().expect("present until dropped")
    }

    fn tls(&self) -> &TlsTransport {
        &self.conn().tls
    }

    /// Runs `wait` as the reactor sees it: with our waker, which wakes
    /// every task waiting, `cx`'s among them.
    fn waiting<T>(
        &self,
        cx: &mut Context<'_>,
        wait: impl FnOnce(&Conn, &mut Context<'_>) -> Poll<T>,
    ) -> Poll<T> {
        self.waiters.add(cx.waker());
        let mut all = Context::from_waker(&self.all);
        wait(self.conn(), &mut all)
    }

    /// Runs `take` (a receive that does not wait) until it has something,
    /// taking in what the socket holds between tries.
    fn poll_take(
        &self,
        cx: &mut Context<'_>,
        mut take: impl FnMut(&TlsTransport) -> io::Result<usize>,
    ) -> Poll<io::Result<usize>> {
        // Records a full socket held back go out while we read: the peer
        // may be waiting for them before it answers.
        let _ = self.poll_flush(cx);
        loop {
            match take(self.tls()) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                done => return Poll::Ready(done),
            }
            ready!(self.waiting(cx, Conn::poll_socket_input))?;
        }
    }
}

impl AsyncTransport for AsyncTls {
    type Sync = TlsTransport;

    fn sync(&self) -> &TlsTransport {
        self.tls()
    }

    fn poll_recv(&self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        self.poll_take(cx, |tls| tls.recv(buf, Recv::DontWait))
    }

    fn poll_recv_spare(&self, cx: &mut Context<'_>, buf: &mut Vec<u8>) -> Poll<io::Result<usize>> {
        self.poll_take(cx, |tls| tls.recv_spare(buf, Recv::DontWait))
    }

    fn poll_send(&self, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
        // After a shutdown the transport refuses (close_notify is queued).
        loop {
            // Takes nothing new while earlier records wait for room.
            match self.tls().send_vectored(bufs) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                done => return Poll::Ready(done),
            }
            ready!(self.poll_flush(cx))?;
        }
    }

    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let _ = self.poll_flush(cx);
        loop {
            if self.tls().has_input() {
                return Poll::Ready(Ok(()));
            }
            ready!(self.waiting(cx, Conn::poll_socket_input))?;
        }
    }

    fn poll_writable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_flush(cx)
    }

    fn poll_flush(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Polled beside every read: nothing to send is the usual answer,
        // and it registers no waiter.
        if self.tls().flush()? {
            return Poll::Ready(Ok(()));
        }
        self.waiting(cx, Conn::poll_flush)
    }

    fn poll_shutdown_write(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.waiting(cx, Conn::poll_shutdown_write)
    }
}

impl Drop for AsyncTls {
    /// Records the socket has not taken yet still go, from a task of their
    /// own, as a socket's buffered bytes go after `close`: for 30 s at
    /// most, and while the runtime runs (a task of a runtime that shuts
    /// down is dropped, and the connection closes with it). Outside a
    /// runtime a thread of its own does the same, as a socket would not
    /// lose them there either. Replies never read are
    /// read away before the socket closes (`TlsTransport`'s `Drop`): Linux
    /// resets a connection closed with unread input, which would drop what
    /// the kernel has not sent yet.
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        conn.tls.queue_close_notify();
        if conn.tls.flush().unwrap_or(true) {
            // All out (or TLS failed): the socket closes now.
            return;
        }
        let Ok(runtime) = ::tokio::runtime::Handle::try_current() else {
            // If no thread can be had, the records are lost as before.
            let _ = std::thread::Builder::new()
                .name("npipe-tls-flush".into())
                .spawn(move || {
                    let deadline = std::time::Instant::now() + DROPPED_FLUSH_LIMIT;
                    if conn.tls.flush_until(deadline).is_ok() {
                        let _ = conn.tls.socket().shutdown_write();
                    }
                });
            return;
        };
        // `Conn` has no `Drop`: however this task ends, nothing spawns again.
        runtime.spawn(async move {
            let _ = ::tokio::time::timeout(
                DROPPED_FLUSH_LIMIT,
                std::future::poll_fn(|cx| conn.poll_shutdown_write(cx)),
            )
            .await;
        });
    }
}

#[cfg(test)]
mod tests;
