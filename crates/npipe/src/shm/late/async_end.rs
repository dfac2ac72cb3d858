//! A tokio end's late offer: the socket registered with the reactor until
//! the peer's marker, the rings (`AsyncShm`) after, sharing that one
//! registration. Each `poll_` call waits the socket's way (readiness, the
//! non-waiting call, readiness cleared when the socket had nothing) while
//! its direction is on the socket, and the rings' way once it has moved.
//!
//! A tokio end waits on its socket for the peer's wake-up bytes, and takes
//! whatever its socket holds for them. A server's writes move only once its
//! reads have passed the client's marker, after which the client sends
//! nothing but wake-ups there (`Late::maybe_move`). A client's writes move
//! first, at its offer, while the server's data still come through the
//! socket until the server's marker: in that window its writer, short of
//! room, cannot sleep on the socket (a wake-up byte there would be taken
//! for data, and the reader's data keep it readable), so a helper thread
//! sleeps on the futex for it (`AsyncShm::poll_room_off_socket`), as a
//! blocking client's writer would itself. The window ends when its reads
//! pass the server's marker (and the last helper is done).

use std::io::{self, IoSlice};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use ::tokio::io::unix::AsyncFd;

use super::{Late, RingEnd};
use crate::shm::transport::async_end::AsyncShm;
use crate::shm::transport::ShmTransport;
use crate::sys::Fd;
use crate::transport::{AsyncTransport, Recv, Transport};

impl RingEnd<Arc<AsyncFd<Fd>>> for AsyncShm {
    const WOKEN_BY_SOCKET: bool = true;

    fn over(t: ShmTransport<Arc<AsyncFd<Fd>>>) -> Self {
        AsyncShm::over(t)
    }

    fn rings(&self) -> &ShmTransport<Arc<AsyncFd<Fd>>> {
        self.sync()
    }
}

/// A tokio server end that takes a late offer.
pub(crate) type AsyncLate = Late<Arc<AsyncFd<Fd>>, AsyncShm>;

impl AsyncLate {
    /// The rings, once this end reads from them.
    fn reading_rings(&self) -> Option<&AsyncShm> {
        self.ring_end().map(|r| &**r).filter(|_| self.reads_rings())
    }

    /// The rings, once this end writes into them.
    fn sending_rings(&self) -> Option<&Arc<AsyncShm>> {
        self.ring_end().filter(|_| self.sends_on_rings())
    }

    /// Whether a writer short of room must wait off the socket: a client's
    /// before its reads passed the server's marker, or while a helper that
    /// began so still sleeps (it shares the flag a socket wait raises).
    fn in_the_window(&self, rings: &AsyncShm) -> bool {
        self.offers() && (!self.reads_rings() || rings.helping())
    }

    /// Ready once the rings may have room, waited for off the socket while
    /// in the window, the socket's way after it.
    fn poll_room(&self, cx: &mut Context<'_>, rings: &Arc<AsyncShm>) -> Poll<io::Result<()>> {
        if self.in_the_window(rings) {
            rings.poll_room_off_socket(cx)
        } else {
            rings.poll_writable(cx)
        }
    }

    /// Drives a receive (`recv`, never waiting) on the socket until it
    /// gives something or this end has moved to the rings (`None`: the
    /// caller goes on there).
    fn poll_socket_recv<T>(
        &self,
        cx: &mut Context<'_>,
        mut recv: impl FnMut() -> io::Result<T>,
    ) -> Poll<Option<io::Result<T>>> {
        loop {
            if self.reads_rings() {
                return Poll::Ready(None);
            }
            let mut guard = ready!(self.holder().poll_read_ready(cx))?;
            match recv() {
                // Still on the socket, so the socket had nothing: wait for
                // it. (One that stepped over the marker and found the ring
                // empty goes on in the rings.)
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if !self.reads_rings() {
                        guard.clear_ready();
                    }
                }
                done => return Poll::Ready(Some(done)),
            }
        }
    }
}

impl AsyncTransport for AsyncLate {
    type Sync = AsyncLate;

    fn sync(&self) -> &AsyncLate {
        self
    }

    fn poll_recv(&self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        if let Some(done) = ready!(self.poll_socket_recv(cx, || self.recv(buf, Recv::DontWait))) {
            return Poll::Ready(done);
        }
        self.reading_rings()
            .expect("past the marker")
            .poll_recv(cx, buf)
    }

    fn poll_recv_spare(&self, cx: &mut Context<'_>, buf: &mut Vec<u8>) -> Poll<io::Result<usize>> {
        let got = ready!(self.poll_socket_recv(cx, || self.recv_spare(buf, Recv::DontWait)));
        if let Some(done) = got {
            return Poll::Ready(done);
        }
        self.reading_rings()
            .expect("past the marker")
            .poll_recv_spare(cx, buf)
    }

    fn poll_send(&self, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
        loop {
            if let Some(rings) = self.sending_rings() {
                if !self.in_the_window(rings) {
                    return rings.poll_send(cx, bufs);
                }
                match rings.sync().send_parts(bufs, false) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        ready!(self.poll_room(cx, rings))?;
                        continue;
                    }
                    done => return Poll::Ready(done),
                }
            }
            let mut guard = ready!(self.holder().poll_write_ready(cx))?;
            match self.send_parts_now(bufs) {
                // Still on the socket: its buffer is full. (A send that
                // moved and found the ring full waits in the rings.)
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if !self.sends_on_rings() {
                        guard.clear_ready();
                    }
                }
                done => return Poll::Ready(done),
            }
        }
    }

    /// On the socket, its readiness: when the client's marker is all there
    /// is, that says readable although a receive then waits in the rings.
    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.reading_rings() {
            Some(rings) => rings.poll_readable(cx),
            None => self.holder().poll_read_ready(cx).map_ok(drop),
        }
    }

    fn poll_writable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.sending_rings() {
            Some(rings) => self.poll_room(cx, rings),
            None => self.holder().poll_write_ready(cx).map_ok(drop),
        }
    }
}

#[cfg(test)]
mod tests;
