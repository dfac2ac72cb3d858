//! What carries an end's bytes: its socket, or the shared-memory rings
//! with the socket kept beside them (and, for a client, TLS to a remote
//! pipe's gateway). The data path is written against [`Transport`]
//! (and a tokio end's against [`AsyncTransport`]) and does not know which.

#[cfg(feature = "tokio")]
use std::io::{self, IoSlice};
#[cfg(feature = "tokio")]
use std::task::{Context, Poll};

#[cfg(feature = "tokio")]
use ::tokio::io::unix::AsyncFd;

#[cfg(feature = "tokio")]
use super::late::async_end::AsyncLate;
use super::late::LateShm;
#[cfg(feature = "tokio")]
use super::transport::async_end::AsyncShm;
use super::transport::ShmTransport;
#[cfg(feature = "tokio")]
use crate::sys::Fd;
use crate::sys::Socket;
#[cfg(feature = "tokio")]
use crate::transport::AsyncTransport;
use crate::transport::{forward_transport, Transport};

/// A connection's byte carrier.
#[derive(Debug)]
pub(crate) enum Link {
    /// The kernel's socket, as every connection starts.
    Socket(Socket),
    /// The rings (boxed: the transport is large and rare to move).
    Shm(Box<ShmTransport>),
    /// The socket until the connection proves busy, the rings after (a
    /// late offer, `shm::late`).
    Late(Box<LateShm>),
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
            Link::Late(t) => t.socket(),
            #[cfg(feature = "remote")]
            Link::Tls(t) => t.socket(),
        }
    }

    /// Whether the data goes through shared memory (a late offer's once it
    /// was made or taken).
    pub(crate) fn is_shared_memory(&self) -> bool {
        match self {
            Link::Shm(_) => true,
            Link::Late(t) => t.has_rings(),
            _ => false,
        }
    }

    fn transport(&self) -> &dyn Transport {
        match self {
            Link::Socket(s) => s,
            Link::Shm(t) => &**t,
            Link::Late(t) => &**t,
            #[cfg(feature = "remote")]
            Link::Tls(t) => &**t,
        }
    }
}

impl Transport for Link {
    forward_transport!(transport);
}

/// A tokio end's byte carrier: its socket registered with the reactor, or
/// the rings beside it.
#[cfg(feature = "tokio")]
#[derive(Debug)]
pub(crate) enum AsyncLink {
    /// The kernel's socket, as every connection starts.
    Socket(AsyncFd<Fd>),
    /// The rings (boxed, as [`Link::Shm`]).
    Shm(Box<AsyncShm>),
    /// A server's socket until the client's late offer, the rings after
    /// (`shm::late`).
    Late(Box<AsyncLate>),
    /// A remote pipe: TLS to its gateway, over TCP.
    #[cfg(feature = "remote")]
    Tls(Box<crate::remote::async_tls::AsyncTls>),
}

#[cfg(feature = "tokio")]
impl AsyncLink {
    /// The connection's socket (credentials, descriptors, closing).
    pub(crate) fn socket(&self) -> &Socket {
        match self {
            AsyncLink::Socket(fd) => fd.get_ref().socket(),
            AsyncLink::Shm(t) => t.socket(),
            AsyncLink::Late(t) => t.socket(),
            #[cfg(feature = "remote")]
            AsyncLink::Tls(t) => t.sync().socket(),
        }
    }

    /// Whether the data goes through shared memory (a late offer's once
    /// taken).
    pub(crate) fn is_shared_memory(&self) -> bool {
        match self {
            AsyncLink::Shm(_) => true,
            AsyncLink::Late(t) => t.has_rings(),
            _ => false,
        }
    }

    fn transport(&self) -> &dyn Transport {
        match self {
            AsyncLink::Socket(fd) => fd.sync(),
            AsyncLink::Shm(t) => t.sync(),
            AsyncLink::Late(t) => t.sync(),
            #[cfg(feature = "remote")]
            AsyncLink::Tls(t) => t.sync(),
        }
    }
}

/// The calls that never wait.
#[cfg(feature = "tokio")]
impl Transport for AsyncLink {
    forward_transport!(transport);
}

#[cfg(feature = "tokio")]
impl AsyncTransport for AsyncLink {
    type Sync = AsyncLink;

    fn sync(&self) -> &AsyncLink {
        self
    }

    fn poll_recv(&self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        match self {
            AsyncLink::Socket(fd) => fd.poll_recv(cx, buf),
            AsyncLink::Shm(t) => t.poll_recv(cx, buf),
            AsyncLink::Late(t) => t.poll_recv(cx, buf),
            #[cfg(feature = "remote")]
            AsyncLink::Tls(t) => t.poll_recv(cx, buf),
        }
    }

    fn poll_recv_spare(&self, cx: &mut Context<'_>, buf: &mut Vec<u8>) -> Poll<io::Result<usize>> {
        match self {
            AsyncLink::Socket(fd) => fd.poll_recv_spare(cx, buf),
            AsyncLink::Shm(t) => t.poll_recv_spare(cx, buf),
            AsyncLink::Late(t) => t.poll_recv_spare(cx, buf),
            #[cfg(feature = "remote")]
            AsyncLink::Tls(t) => t.poll_recv_spare(cx, buf),
        }
    }

    fn poll_send(&self, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
        match self {
            AsyncLink::Socket(fd) => fd.poll_send(cx, bufs),
            AsyncLink::Shm(t) => t.poll_send(cx, bufs),
            AsyncLink::Late(t) => t.poll_send(cx, bufs),
            #[cfg(feature = "remote")]
            AsyncLink::Tls(t) => t.poll_send(cx, bufs),
        }
    }

    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            AsyncLink::Socket(fd) => fd.poll_readable(cx),
            AsyncLink::Shm(t) => t.poll_readable(cx),
            AsyncLink::Late(t) => t.poll_readable(cx),
            #[cfg(feature = "remote")]
            AsyncLink::Tls(t) => t.poll_readable(cx),
        }
    }

    fn poll_writable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            AsyncLink::Socket(fd) => fd.poll_writable(cx),
            AsyncLink::Shm(t) => t.poll_writable(cx),
            AsyncLink::Late(t) => t.poll_writable(cx),
            #[cfg(feature = "remote")]
            AsyncLink::Tls(t) => t.poll_writable(cx),
        }
    }

    fn poll_flush(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            AsyncLink::Socket(fd) => fd.poll_flush(cx),
            AsyncLink::Shm(t) => t.poll_flush(cx),
            AsyncLink::Late(t) => t.poll_flush(cx),
            #[cfg(feature = "remote")]
            AsyncLink::Tls(t) => t.poll_flush(cx),
        }
    }

    fn poll_shutdown_write(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            AsyncLink::Socket(fd) => fd.poll_shutdown_write(cx),
            AsyncLink::Shm(t) => t.poll_shutdown_write(cx),
            AsyncLink::Late(t) => t.poll_shutdown_write(cx),
            #[cfg(feature = "remote")]
            AsyncLink::Tls(t) => t.poll_shutdown_write(cx),
        }
    }
}
