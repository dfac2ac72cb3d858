//! What carries a blocking end's bytes: its socket, or the shared-memory
//! rings with the socket kept beside them. The data path is written against
//! [`Transport`] and does not know which.

use std::io::{self, IoSlice};
use std::time::Duration;

use super::transport::ShmTransport;
use crate::sys::Socket;
use crate::transport::{Delivery, Recv, Transport};

/// A connection's byte carrier.
#[derive(Debug)]
pub(crate) enum Link {
    /// The kernel's socket, as every connection starts.
    Socket(Socket),
    /// The rings (boxed: the transport is large and rare to move).
    Shm(Box<ShmTransport>),
    /// A remote pipe: TLS to its gateway, over TCP.
    #[cfg(feature = "remote")]
    Tls(Box<crate::remote::tls_transport::TlsTransport>),
}

impl Link {
    /// The connection's socket (credentials, descriptors, closing).
    pub(crate) fn socket(&self) -> &Socket {
        match self {
            Link::Socket(s) => s,
            Link::Shm(t) => t.socket(),
            #[cfg(feature = "remote")]
            Link::Tls(t) => t.socket(),
        }
    }

    /// Whether the data goes through shared memory.
    pub(crate) fn is_shared_memory(&self) -> bool {
        matches!(self, Link::Shm(_))
    }

    fn transport(&self) -> &dyn Transport {
        match self {
            Link::Socket(s) => s,
            Link::Shm(t) => &**t,
            #[cfg(feature = "remote")]
            Link::Tls(t) => &**t,
        }
    }
}

impl Transport for Link {
    fn recv(&self, buf: &mut [u8], how: Recv) -> io::Result<usize> {
        self.transport().recv(buf, how)
    }
    fn recv_spare(&self, buf: &mut Vec<u8>, how: Recv) -> io::Result<usize> {
        self.transport().recv_spare(buf, how)
    }
    fn send(&self, buf: &[u8]) -> io::Result<usize> {
        self.transport().send(buf)
    }
    fn send_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.transport().send_vectored(bufs)
    }
    fn send_nonblocking(&self, buf: &[u8]) -> io::Result<usize> {
        self.transport().send_nonblocking(buf)
    }
    fn readable_bytes(&self) -> io::Result<usize> {
        self.transport().readable_bytes()
    }
    fn peek_queued(&self) -> Vec<u8> {
        self.transport().peek_queued()
    }
    fn wait_readable(&self, timeout: Option<Duration>) -> io::Result<bool> {
        self.transport().wait_readable(timeout)
    }
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.transport().set_read_timeout(timeout)
    }
    fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.transport().set_write_timeout(timeout)
    }
    fn shutdown_write(&self) -> io::Result<()> {
        self.transport().shutdown_write()
    }
    fn shutdown_both(&self) -> io::Result<()> {
        self.transport().shutdown_both()
    }
    fn delivery(&self) -> io::Result<Delivery> {
        self.transport().delivery()
    }
}
