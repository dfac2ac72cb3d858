//! The Unix socket as a [`Transport`]: every call one system call (or a
//! zero-timeout `poll`), and nothing buffered in between.

use std::io::{self, IoSlice};
use std::time::Duration;

use crate::sys::{Events, RecvFlagsLite, Socket};
use crate::transport::{Delivery, Recv, Transport};

impl Transport for Socket {
    fn recv(&self, buf: &mut [u8], how: Recv) -> io::Result<usize> {
        match how {
            Recv::Wait => Socket::recv(self, buf),
            Recv::DontWait => self.recv_nonblocking(buf),
        }
    }

    fn recv_spare(&self, buf: &mut Vec<u8>, how: Recv) -> io::Result<usize> {
        let flags = match how {
            Recv::Wait => RecvFlagsLite::Block,
            Recv::DontWait => RecvFlagsLite::DontWait,
        };
        Socket::recv_spare(self, buf, flags)
    }

    fn send(&self, buf: &[u8]) -> io::Result<usize> {
        Socket::send(self, buf)
    }

    fn send_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        Socket::send_vectored(self, bufs)
    }

    fn send_nonblocking(&self, buf: &[u8]) -> io::Result<usize> {
        Socket::send_nonblocking(self, buf)
    }

    fn readable_bytes(&self) -> io::Result<usize> {
        Socket::readable_bytes(self)
    }

    fn peek_queued(&self) -> Vec<u8> {
        Socket::peek_queued(self)
    }

    fn wait_readable(&self, timeout: Option<Duration>) -> io::Result<bool> {
        Ok(!self.wait(Events::IN, timeout)?.is_empty())
    }

    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        Socket::set_read_timeout(self, timeout)
    }

    fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        Socket::set_write_timeout(self, timeout)
    }

    fn shutdown_write(&self) -> io::Result<()> {
        Socket::shutdown_write(self)
    }

    fn shutdown_both(&self) -> io::Result<()> {
        Socket::shutdown_both(self)
    }

    /// Order matters: whether the peer hung up, then the queue; and the
    /// reset a close with our bytes unread leaves (ECONNRESET, seen as
    /// `POLLERR`) is looked at before anything consumes it.
    fn delivery(&self) -> io::Result<Delivery> {
        let peer_hung_up = self.peer_hung_up();
        let unread_by_peer = self.unread_by_peer()?;
        Ok(Delivery {
            unread_by_peer,
            peer_hung_up,
            peer_dropped_unread: unread_by_peer == 0 && self.peer_dropped_unread(),
        })
    }
}

/// A transport that reads ahead, as a TLS stream does when it decrypts a
/// whole record of which the reader wanted part: each receive takes all the
/// socket has into a buffer of its own and hands out at most `TRICKLE`
/// bytes, so most of what arrived sits in the transport, not the kernel.
/// The data path must still see it (the module rule in `transport`).
#[cfg(test)]
pub(crate) mod read_ahead {
    use std::cell::RefCell;

    use super::*;

    const TRICKLE: usize = 3;

    #[derive(Debug)]
    pub(crate) struct ReadAhead {
        pub socket: Socket,
        held: RefCell<Vec<u8>>,
    }

    impl ReadAhead {
        pub(crate) fn new(socket: Socket) -> ReadAhead {
            ReadAhead {
                socket,
                held: RefCell::new(Vec::new()),
            }
        }

        /// Bytes the transport holds and the kernel no longer does.
        pub(crate) fn held(&self) -> usize {
            self.held.borrow().len()
        }

        /// Hands out up to `want` held bytes, taking in all the socket has
        /// first if none are held.
        fn take(&self, want: usize, how: Recv) -> io::Result<Vec<u8>> {
            let mut held = self.held.borrow_mut();
            if held.is_empty() {
                let mut chunk = Vec::with_capacity(64 * 1024);
                let n = Transport::recv_spare(&self.socket, &mut chunk, how)?;
                if n == 0 {
                    return Ok(Vec::new());
                }
                held.extend_from_slice(&chunk);
            }
            let n = want.min(TRICKLE).min(held.len());
            Ok(held.drain(..n).collect())
        }
    }

    impl Transport for ReadAhead {
        fn recv(&self, buf: &mut [u8], how: Recv) -> io::Result<usize> {
            let got = self.take(buf.len(), how)?;
            buf[..got.len()].copy_from_slice(&got);
            Ok(got.len())
        }
        fn recv_spare(&self, buf: &mut Vec<u8>, how: Recv) -> io::Result<usize> {
            let got = self.take(buf.capacity() - buf.len(), how)?;
            buf.extend_from_slice(&got);
            Ok(got.len())
        }
        fn send(&self, buf: &[u8]) -> io::Result<usize> {
            Transport::send(&self.socket, buf)
        }
        fn send_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            Transport::send_vectored(&self.socket, bufs)
        }
        fn send_nonblocking(&self, buf: &[u8]) -> io::Result<usize> {
            Transport::send_nonblocking(&self.socket, buf)
        }
        fn readable_bytes(&self) -> io::Result<usize> {
            Ok(self.held() + Transport::readable_bytes(&self.socket)?)
        }
        fn peek_queued(&self) -> Vec<u8> {
            let mut all = self.held.borrow().clone();
            all.extend(Transport::peek_queued(&self.socket));
            all
        }
        fn wait_readable(&self, timeout: Option<Duration>) -> io::Result<bool> {
            if self.held() > 0 {
                return Ok(true);
            }
            Transport::wait_readable(&self.socket, timeout)
        }
        fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
            Transport::set_read_timeout(&self.socket, timeout)
        }
        fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
            Transport::set_write_timeout(&self.socket, timeout)
        }
        fn shutdown_write(&self) -> io::Result<()> {
            Transport::shutdown_write(&self.socket)
        }
        fn shutdown_both(&self) -> io::Result<()> {
            Transport::shutdown_both(&self.socket)
        }
        fn delivery(&self) -> io::Result<Delivery> {
            self.socket.delivery()
        }
    }
}
