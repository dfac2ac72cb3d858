//! The byte transport under a connected pipe: the contract a front end's
//! data path is written against, whatever carries the bytes: a Unix socket
//! (`socket_transport`, blocking, and `tokio::transport`, async), the
//! shared-memory rings (`shm::transport`), or TLS to a remote pipe's
//! gateway (`remote::tls_transport` and `remote::async_tls`). No I/O here:
//! the traits and their rules.
//!
//! # The rule every transport keeps
//!
//! Bytes a transport has already taken in but not handed out (a TLS record
//! decrypted whole of which the reader wanted part, a ring slot copied out)
//! are *readable*: [`Transport::readable_bytes`] includes them, and
//! [`Transport::wait_readable`] and [`AsyncTransport::poll_readable`] return
//! at once while there are any. Otherwise a reader would wait on the kernel
//! for data that is already here, and hang. A plain socket buffers nothing;
//! the unit tests run the data path over one that reads ahead.
//!
//! The framing, *more data*, peeks and the flush's rules stay in
//! [`crate::stream_core`]: a transport moves bytes and reports its queues,
//! and never parses them.

use std::io::{self, IoSlice};
#[cfg(feature = "tokio")]
use std::task::{Context, Poll};
use std::time::Duration;

/// Whether a receive may wait for input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Recv {
    /// Wait, within the read timeout (`WouldBlock` when it passes).
    Wait,
    /// `WouldBlock` at once if nothing is there.
    DontWait,
}

/// A connected, ordered, reliable byte stream with blocking calls: what the
/// blocking front end's reads, writes, peeks and flushes use.
pub(crate) trait Transport {
    /// Receives into `buf`; 0 at end of stream.
    fn recv(&self, buf: &mut [u8], how: Recv) -> io::Result<usize>;

    /// Receives into `buf`'s spare capacity, growing its length by what
    /// arrived; 0 at end of stream.
    fn recv_spare(&self, buf: &mut Vec<u8>, how: Recv) -> io::Result<usize>;

    /// Sends some of `buf`, waiting for room within the write timeout.
    fn send(&self, buf: &[u8]) -> io::Result<usize>;

    /// Sends some of `bufs` in order, as one call where the transport can.
    fn send_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize>;

    /// Sends what fits now, never waiting (the disconnect mark).
    fn send_nonblocking(&self, buf: &[u8]) -> io::Result<usize>;

    /// Bytes readable now: those the transport holds itself (see the
    /// module's rule) and those the kernel holds.
    fn readable_bytes(&self) -> io::Result<usize>;

    /// A copy of what is readable now, not consumed (empty on failure).
    fn peek_queued(&self) -> Vec<u8>;

    /// Waits until a receive would not block (data, end of stream or an
    /// error) or `timeout` passes: `false` if it passed. Returns at once
    /// while the transport itself holds bytes.
    fn wait_readable(&self, timeout: Option<Duration>) -> io::Result<bool>;

    /// How long a waiting receive waits (`None`: for ever).
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()>;

    /// How long a send waits for room (`None`: for ever).
    fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()>;

    /// Ends the sending side: the peer reads end of stream.
    fn shutdown_write(&self) -> io::Result<()>;

    /// Ends both sides.
    fn shutdown_both(&self) -> io::Result<()>;

    /// What `FlushFileBuffers` needs to know, looked at without consuming
    /// anything.
    fn delivery(&self) -> io::Result<Delivery>;
}

/// Where the bytes this end sent stand: what a flush waits on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Delivery {
    /// Bytes sent that the peer has not read yet.
    pub unread_by_peer: usize,
    /// The peer has closed its end.
    pub peer_hung_up: bool,
    /// The peer closed with bytes of ours unread, which were dropped.
    pub peer_dropped_unread: bool,
}

/// The same stream driven by readiness, for the async front end. Each
/// `poll_` call tries once, and when it cannot go on registers `cx` to be
/// woken and returns `Pending`. The calls that never wait (non-blocking
/// sends, queue state, `shutdown_both`) are the [`Transport`] from
/// [`sync`](Self::sync), which must not block; ending the sending side,
/// which may have to wait for room (TLS), is
/// [`poll_shutdown_write`](Self::poll_shutdown_write).
#[cfg(feature = "tokio")]
pub(crate) trait AsyncTransport {
    /// The non-blocking calls.
    type Sync: Transport;

    /// The non-blocking calls: every receive and send there is
    /// [`Recv::DontWait`] and non-blocking.
    fn sync(&self) -> &Self::Sync;

    /// Receives into `buf`; 0 at end of stream.
    fn poll_recv(&self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>>;

    /// Receives into `buf`'s spare capacity; 0 at end of stream.
    fn poll_recv_spare(&self, cx: &mut Context<'_>, buf: &mut Vec<u8>) -> Poll<io::Result<usize>>;

    /// Sends some of `bufs` in order.
    fn poll_send(&self, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>>;

    /// Ready when a receive would not wait; at once while anything is
    /// buffered.
    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;

    /// Ready when a send would not wait.
    fn poll_writable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;

    /// Ready once what sends took has left for the peer: at once where a
    /// send hands its bytes to the kernel or the rings; a transport that
    /// holds some (TLS records a full socket did not take) sends them.
    fn poll_flush(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let _ = cx;
        Poll::Ready(Ok(()))
    }

    /// Ends the sending side once what sends took has left: at once where
    /// that is the transport's own `shutdown_write`; TLS sends close_notify
    /// first, waiting for room as a send does.
    fn poll_shutdown_write(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let _ = cx;
        Poll::Ready(self.sync().shutdown_write())
    }
}

/// Writes out a [`Transport`] impl that hands every call to
/// `self.$via()` (a `&dyn Transport` or any `&impl Transport`): for the
/// enums that choose a connection's carrier.
#[cfg(target_os = "linux")]
macro_rules! forward_transport {
    ($via:ident) => {
        fn recv(&self, buf: &mut [u8], how: $crate::transport::Recv) -> ::std::io::Result<usize> {
            self.$via().recv(buf, how)
        }
        fn recv_spare(
            &self,
            buf: &mut Vec<u8>,
            how: $crate::transport::Recv,
        ) -> ::std::io::Result<usize> {
            self.$via().recv_spare(buf, how)
        }
        fn send(&self, buf: &[u8]) -> ::std::io::Result<usize> {
            self.$via().send(buf)
        }
        fn send_vectored(&self, bufs: &[::std::io::IoSlice<'_>]) -> ::std::io::Result<usize> {
            self.$via().send_vectored(bufs)
        }
        fn send_nonblocking(&self, buf: &[u8]) -> ::std::io::Result<usize> {
            self.$via().send_nonblocking(buf)
        }
        fn readable_bytes(&self) -> ::std::io::Result<usize> {
            self.$via().readable_bytes()
        }
        fn peek_queued(&self) -> Vec<u8> {
            self.$via().peek_queued()
        }
        fn wait_readable(&self, timeout: Option<::std::time::Duration>) -> ::std::io::Result<bool> {
            self.$via().wait_readable(timeout)
        }
        fn set_read_timeout(
            &self,
            timeout: Option<::std::time::Duration>,
        ) -> ::std::io::Result<()> {
            self.$via().set_read_timeout(timeout)
        }
        fn set_write_timeout(
            &self,
            timeout: Option<::std::time::Duration>,
        ) -> ::std::io::Result<()> {
            self.$via().set_write_timeout(timeout)
        }
        fn shutdown_write(&self) -> ::std::io::Result<()> {
            self.$via().shutdown_write()
        }
        fn shutdown_both(&self) -> ::std::io::Result<()> {
            self.$via().shutdown_both()
        }
        fn delivery(&self) -> ::std::io::Result<$crate::transport::Delivery> {
            self.$via().delivery()
        }
    };
}
#[cfg(target_os = "linux")]
pub(crate) use forward_transport;
