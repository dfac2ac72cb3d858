//! The Unix socket registered with tokio's reactor as an
//! [`AsyncTransport`]: wait for readiness, try the non-blocking call, and
//! on `WouldBlock` clear the readiness and wait again.

use std::io::{self, IoSlice};
use std::task::{ready, Context, Poll};

use ::tokio::io::unix::AsyncFd;

use crate::sys::{Fd, RecvFlagsLite, Socket};
use crate::transport::AsyncTransport;

impl AsyncTransport for AsyncFd<Fd> {
    type Sync = Socket;

    fn sync(&self) -> &Socket {
        self.get_ref().socket()
    }

    /// A receive that came up short of the room it had drained the socket,
    /// so its readiness is cleared then, instead of by a receive that fails
    /// with `EAGAIN` (as tokio's own `UnixStream` does).
    fn poll_recv(&self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.poll_read_ready(cx))?;
            match guard.try_io(|fd| fd.get_ref().socket().recv_nonblocking(buf)) {
                Ok(Ok(n)) => {
                    if n > 0 && n < buf.len() {
                        guard.clear_ready();
                    }
                    return Poll::Ready(Ok(n));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_recv_spare(&self, cx: &mut Context<'_>, buf: &mut Vec<u8>) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.poll_read_ready(cx))?;
            let room = buf.capacity() - buf.len();
            let got = guard.try_io(|fd| {
                fd.get_ref()
                    .socket()
                    .recv_spare(buf, RecvFlagsLite::DontWait)
            });
            match got {
                Ok(Ok(n)) => {
                    if n > 0 && n < room {
                        guard.clear_ready();
                    }
                    return Poll::Ready(Ok(n));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_send(&self, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.poll_write_ready(cx))?;
            let sent = guard.try_io(|fd| {
                let sock = fd.get_ref().socket();
                match bufs {
                    [one] => sock.send(one),
                    _ => sock.send_vectored(bufs),
                }
            });
            match sent {
                Ok(r) => return Poll::Ready(r),
                Err(_would_block) => continue,
            }
        }
    }

    /// The readiness is kept (not cleared) for the receive that follows.
    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_read_ready(cx).map_ok(drop)
    }

    fn poll_writable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_write_ready(cx).map_ok(drop)
    }
}

/// The async twin of `socket_transport::read_ahead`: each receive takes all
/// the socket has into a buffer of its own and hands out at most a few
/// bytes, so most of what arrived sits in the transport, where the
/// reactor's readiness cannot see it.
#[cfg(test)]
pub(crate) mod read_ahead {
    use std::sync::Mutex;
    use std::time::Duration;

    use super::*;
    use crate::transport::{Delivery, Recv, Transport};

    const TRICKLE: usize = 3;

    #[derive(Debug)]
    pub(crate) struct AsyncReadAhead {
        io: AsyncFd<Fd>,
        held: Mutex<Vec<u8>>,
    }

    impl AsyncReadAhead {
        pub(crate) fn new(io: AsyncFd<Fd>) -> AsyncReadAhead {
            AsyncReadAhead {
                io,
                held: Mutex::new(Vec::new()),
            }
        }

        pub(crate) fn held(&self) -> usize {
            self.held.lock().unwrap().len()
        }

        /// Hands out up to `want` held bytes; takes in all the socket has
        /// (waiting for it as `receive` does) only when none are held.
        fn take(
            &self,
            want: usize,
            receive: impl FnOnce(&mut Vec<u8>) -> Poll<io::Result<usize>>,
        ) -> Poll<io::Result<Vec<u8>>> {
            let mut held = self.held.lock().unwrap();
            if held.is_empty() {
                let mut chunk = Vec::with_capacity(64 * 1024);
                if ready!(receive(&mut chunk))? == 0 {
                    return Poll::Ready(Ok(Vec::new()));
                }
                held.extend_from_slice(&chunk);
            }
            let n = want.min(TRICKLE).min(held.len());
            Poll::Ready(Ok(held.drain(..n).collect()))
        }
    }

    impl AsyncTransport for AsyncReadAhead {
        type Sync = AsyncReadAhead;
        fn sync(&self) -> &AsyncReadAhead {
            self
        }
        fn poll_recv(&self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
            let got = ready!(self.take(buf.len(), |c| self.io.poll_recv_spare(cx, c)))?;
            buf[..got.len()].copy_from_slice(&got);
            Poll::Ready(Ok(got.len()))
        }
        fn poll_recv_spare(
            &self,
            cx: &mut Context<'_>,
            buf: &mut Vec<u8>,
        ) -> Poll<io::Result<usize>> {
            let room = buf.capacity() - buf.len();
            let got = ready!(self.take(room, |c| self.io.poll_recv_spare(cx, c)))?;
            buf.extend_from_slice(&got);
            Poll::Ready(Ok(got.len()))
        }
        fn poll_send(&self, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
            self.io.poll_send(cx, bufs)
        }
        fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            if self.held() > 0 {
                return Poll::Ready(Ok(()));
            }
            self.io.poll_readable(cx)
        }
        fn poll_writable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.io.poll_writable(cx)
        }
    }

    /// The calls that never wait, seeing the held bytes too.
    impl Transport for AsyncReadAhead {
        fn recv(&self, buf: &mut [u8], _: Recv) -> io::Result<usize> {
            let sock = self.io.sync();
            let got = match self.take(buf.len(), |c| {
                Poll::Ready(Transport::recv_spare(sock, c, Recv::DontWait))
            }) {
                Poll::Ready(r) => r?,
                Poll::Pending => unreachable!("a non-blocking receive is never pending"),
            };
            buf[..got.len()].copy_from_slice(&got);
            Ok(got.len())
        }
        fn recv_spare(&self, buf: &mut Vec<u8>, how: Recv) -> io::Result<usize> {
            let mut chunk = vec![0u8; buf.capacity() - buf.len()];
            let n = Transport::recv(self, &mut chunk, how)?;
            buf.extend_from_slice(&chunk[..n]);
            Ok(n)
        }
        fn send(&self, buf: &[u8]) -> io::Result<usize> {
            Transport::send(self.io.sync(), buf)
        }
        fn send_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            Transport::send_vectored(self.io.sync(), bufs)
        }
        fn send_nonblocking(&self, buf: &[u8]) -> io::Result<usize> {
            Transport::send_nonblocking(self.io.sync(), buf)
        }
        fn readable_bytes(&self) -> io::Result<usize> {
            Ok(self.held() + Transport::readable_bytes(self.io.sync())?)
        }
        fn peek_queued(&self) -> Vec<u8> {
            let mut all = self.held.lock().unwrap().clone();
            all.extend(Transport::peek_queued(self.io.sync()));
            all
        }
        fn wait_readable(&self, _: Option<Duration>) -> io::Result<bool> {
            unreachable!("the async front end never waits in a blocking call")
        }
        fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
            Transport::set_read_timeout(self.io.sync(), t)
        }
        fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
            Transport::set_write_timeout(self.io.sync(), t)
        }
        fn shutdown_write(&self) -> io::Result<()> {
            Transport::shutdown_write(self.io.sync())
        }
        fn shutdown_both(&self) -> io::Result<()> {
            Transport::shutdown_both(self.io.sync())
        }
        fn delivery(&self) -> io::Result<Delivery> {
            Transport::delivery(self.io.sync())
        }
    }
}
