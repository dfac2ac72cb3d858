//! A tokio server's late end: the socket registered with the reactor until
//! the client's marker, the rings (`AsyncShm`) after, sharing that one
//! registration. Each `poll_` call waits the socket's way (readiness, the
//! non-waiting call, readiness cleared when the socket had nothing) while
//! its direction is on the socket, and the rings' way once it has moved.
//!
//! A tokio end waits on its socket for the peer's wake-up bytes, and takes
//! whatever its socket holds for them; so this end's writes move only once
//! its reads have passed the client's marker, after which the client sends
//! nothing but wake-ups there (`Late::maybe_move`). Only a tokio server
//! takes part: a tokio client would need the server's wake-ups while the
//! server's data still come through the socket.

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
        self.ring_end().filter(|_| self.reads_rings())
    }

    /// The rings, once this end writes into them.
    fn sending_rings(&self) -> Option<&AsyncShm> {
        self.ring_end().filter(|_| self.sends_on_rings())
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
                return rings.poll_send(cx, bufs);
            }
            let mut guard = ready!(self.holder().poll_write_ready(cx))?;
            match self.send_parts(bufs, false) {
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
            Some(rings) => rings.poll_writable(cx),
            None => self.holder().poll_write_ready(cx).map_ok(drop),
        }
    }
}

#[cfg(test)]
mod tests;
