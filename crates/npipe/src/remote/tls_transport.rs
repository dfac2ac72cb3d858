//! A client's remote pipe straight over TLS: the [`Transport`] the data
//! path is written against, on a rustls connection over the TCP socket to
//! the gateway, with no relay between (a relay is a socket pair and a
//! thread wake-up each way). A tokio client runs on it too, registered
//! with the reactor by `remote::async_tls`, with every call made never to
//! wait ([`TlsTransport::never_waiting`]).
//!
//! Decrypted bytes the reader has not taken yet wait in `plain`, which
//! counts as readable, as the transport contract requires: a readiness
//! check never waits on the kernel for bytes already decrypted here.
//!
//! All socket calls are non-blocking; a blocking end's waits are `poll`s on
//! the socket with the TLS state's lock released, so a reader waiting for
//! data never holds up a writer, nor a writer waiting for room a reader.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Read, Write};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rustls::ClientConnection;

use super::record_layer::RecordLayer;
use super::session::Session;

use crate::sys::{Events, Socket};
use crate::transport::{Delivery, Recv, Transport};

/// Most decrypted bytes held for the reader before the socket is left to
/// fill (TCP then pushes back on the sender, as a plain socket would).
const PLAIN_MAX: usize = 256 * 1024;

/// The state behind the lock. Its `Debug` shows sizes and flags only:
/// `plain` and `chunk` hold the application's data.
struct Tls {
    conn: Session,
    /// Decrypted, not yet handed out.
    plain: VecDeque<u8>,
    /// The gateway ended the stream (close_notify or TCP end).
    ended: bool,
    /// close_notify is queued: no application data may follow it.
    closed: bool,
    /// Why TLS failed, once it has (every later call reports it).
    failed: Option<(io::ErrorKind, String)>,
    /// Application bytes have come from the gateway (a failure before any
    /// is the gateway refusing this client).
    answered: bool,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("plain_bytes", &self.plain.len())
            .field("unsent_records", &self.conn.wants_write())
            .field("ended", &self.ended)
            .field("closed", &self.closed)
            .field("failed", &self.failed)
            .field("answered", &self.answered)
            .finish_non_exhaustive()
    }
}

/// A remote pipe's TLS connection, as a [`Transport`].
#[derive(Debug)]
pub(crate) struct TlsTransport {
    socket: Socket,
    tls: Mutex<Tls>,
    /// Held by a writer from its first byte to its last, so writes stay in
    /// order while `tls` is let go for the waits between.
    writing: Mutex<()>,
    read_timeout: Mutex<Option<Duration>>,
    write_timeout: Mutex<Option<Duration>>,
    /// Who is at the other end, for errors: "the npipe gateway at
    /// HOST:PORT", or a handed-over connection's remote client.
    peer: String,
    /// A tokio end's: no call waits (a wait would hold the runtime's
    /// thread); what must wait is the async side's (`remote::async_tls`).
    never_wait: bool,
    /// A handed-over end's socket to its gateway, held open and unused
    /// while the end lives: its closing tells the gateway the connection
    /// ended (the gateway counts connections until then).
    lease: Option<Socket>,
}

/// The socket as rustls' `Read`/`Write`, never blocking.
struct Io<'a>(&'a Socket);

impl Read for Io<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.recv_nonblocking(buf)
    }
}

impl Write for Io<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.send_nonblocking(buf)
    }
    // rustls hands over its queued records together: one system call for
    // them all, not one a record.
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.0.send_vectored_nonblocking(bufs)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn would_block() -> io::Error {
    io::ErrorKind::WouldBlock.into()
}

impl TlsTransport {
    /// Wraps a connection whose handshake is done, on `socket`. What
    /// rustls decrypted during the handshake (a peer that spoke first) is
    /// taken at once, so readiness checks see it.
    pub fn new(socket: Socket, conn: ClientConnection, at: String) -> TlsTransport {
        Self::over(
            socket,
            Session::Client(Box::new(conn)),
            format!("the npipe gateway at {at}"),
            false,
        )
    }

    /// A server's end of a connection its gateway handed over (`layer`
    /// holds its keys) with `peer`, the remote client, at the other end.
    pub fn handed(socket: Socket, layer: RecordLayer, peer: String) -> TlsTransport {
        Self::over(socket, Session::Handed(Box::new(layer)), peer, true)
    }

    fn over(socket: Socket, conn: Session, peer: String, answered: bool) -> TlsTransport {
        let mut tls = Tls {
            conn,
            plain: VecDeque::new(),
            closed: false,
            ended: false,
            failed: None,
            answered,
        };
        // A failure here comes back at the first read, which takes again.
        let _ = Self::take_plaintext(&mut tls);
        TlsTransport {
            socket,
            tls: Mutex::new(tls),
            writing: Mutex::new(()),
            read_timeout: Mutex::new(None),
            write_timeout: Mutex::new(None),
            peer,
            never_wait: false,
            lease: None,
        }
    }

    /// Holds `lease` (see the field) while this transport lives.
    pub fn holding(mut self, lease: Socket) -> TlsTransport {
        self.lease = Some(lease);
        self
    }

    /// The same, for a tokio end: its calls never wait (see
    /// [`Self::flush`], [`Self::pump_socket`]).
    pub fn never_waiting(mut self) -> TlsTransport {
        self.never_wait = true;
        self
    }

    /// Takes in what the socket holds now, without waiting: `Ok(true)` if
    /// it gave something (decrypted or not), `Ok(false)` if it had nothing
    /// or was not read (the stream ended, or `PLAIN_MAX` is held: then
    /// [`Self::has_input`] is true).
    pub fn pump_socket(&self) -> io::Result<bool> {
        let mut tls = self.lock();
        self.pump(&mut tls)
    }

    /// Whether a receive would not wait: decrypted bytes are held, the
    /// stream ended, or TLS failed (the receive reports it).
    pub fn has_input(&self) -> bool {
        let tls = self.lock();
        !tls.plain.is_empty() || tls.ended || tls.failed.is_some()
    }

    /// Writes what rustls has encrypted as far as the socket takes it now:
    /// whether all of it went.
    pub fn flush(&self) -> io::Result<bool> {
        let mut tls = self.lock();
        if let Some((kind, text)) = &tls.failed {
            return Err(io::Error::new(*kind, text.clone()));
        }
        self.send_tls(&mut tls)
    }

    /// Writes what rustls has encrypted, waiting for room (this thread
    /// blocks) until `deadline`: a dropped tokio end's last records when
    /// no runtime is left to send them.
    pub fn flush_until(&self, deadline: Instant) -> io::Result<()> {
        let _writing = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        let tls = self.lock();
        if let Some((kind, text)) = &tls.failed {
            return Err(io::Error::new(*kind, text.clone()));
        }
        drop(self.write_out(tls, Some(deadline))?);
        Ok(())
    }

    /// Queues close_notify (once, however often asked); [`Self::flush`]
    /// sends it.
    pub fn queue_close_notify(&self) {
        let mut tls = self.lock();
        tls.closed = true;
        tls.conn.send_close_notify();
    }

    /// Whether rustls holds bytes the socket has not taken yet.
    #[cfg(test)]
    pub fn holds_unsent(&self) -> bool {
        self.lock().conn.wants_write()
    }

    /// The TCP socket (its descriptor, and `SIOCOUTQ` for a flush).
    pub fn socket(&self) -> &Socket {
        &self.socket
    }

    fn lock(&self) -> MutexGuard<'_, Tls> {
        self.tls.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn failure(&self, tls: &mut Tls, e: String) -> io::Error {
        let (kind, text) = if tls.answered {
            (
                io::ErrorKind::ConnectionAborted,
                format!("TLS with {} failed: {e}", self.peer),
            )
        } else {
            (
                io::ErrorKind::PermissionDenied,
                format!("{} refused this client during TLS: {e}", self.peer),
            )
        };
        tls.failed = Some((kind, text.clone()));
        io::Error::new(kind, text)
    }

    /// Takes in what the socket holds now, without waiting: decrypts it
    /// into `plain`, answers what TLS must answer. `Ok(false)` if the
    /// socket had nothing, or was not read (the stream ended, or
    /// `PLAIN_MAX` is held).
    fn pump(&self, tls: &mut Tls) -> io::Result<bool> {
        if let Some((kind, text)) = &tls.failed {
            return Err(io::Error::new(*kind, text.clone()));
        }
        if tls.ended || tls.plain.len() >= PLAIN_MAX {
            return Ok(false);
        }
        let got = match tls.conn.read_tls(&mut Io(&self.socket)) {
            Ok(0) => {
                tls.ended = true;
                true
            }
            Ok(_) => true,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
            Err(e) => return Err(e),
        };
        if let Err(e) = Self::take_plaintext(tls) {
            // Tell the peer why, as TLS does, then report it.
            let _ = tls.conn.write_tls(&mut Io(&self.socket));
            return Err(self.failure(tls, e));
        }
        // A key update or an alert may want answering now.
        self.send_tls(tls).ok();
        Ok(got)
    }

    /// Decrypts what came into `plain`.
    fn take_plaintext(tls: &mut Tls) -> Result<(), String> {
        let got = tls.conn.process(&mut tls.plain)?;
        tls.answered |= got.data;
        tls.ended |= got.closed;
        Ok(())
    }

    /// Writes what rustls has encrypted as far as the socket takes it
    /// now: whether all of it went.
    fn send_tls(&self, tls: &mut Tls) -> io::Result<bool> {
        while tls.conn.wants_write() {
            match tls.conn.write_tls(&mut Io(&self.socket)) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// Writes what rustls has encrypted, waiting for room until `deadline`
    /// with the TLS state let go meanwhile: a reader must go on decrypting
    /// what the peer sends while we wait for it to read, or a peer that
    /// answers as it reads would stop reading and both would wait for ever.
    /// The caller holds `writing`, so writes stay in order.
    fn write_out<'a>(
        &'a self,
        mut tls: MutexGuard<'a, Tls>,
        deadline: Option<Instant>,
    ) -> io::Result<MutexGuard<'a, Tls>> {
        while !self.send_tls(&mut tls)? {
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if left == Some(Duration::ZERO) {
                return Err(io::ErrorKind::TimedOut.into());
            }
            drop(tls);
            self.socket.wait(Events::OUT, left)?;
            tls = self.lock();
        }
        Ok(tls)
    }

    fn write_deadline(&self) -> Option<Instant> {
        let limit = *self.write_timeout.lock().unwrap_or_else(|e| e.into_inner());
        limit.and_then(|l| Instant::now().checked_add(l))
    }

    /// Takes decrypted bytes into `out` (as many as fit, by `take`), waiting
    /// as `how` says.
    fn recv_with(
        &self,
        how: Recv,
        mut take: impl FnMut(&mut VecDeque<u8>) -> usize,
    ) -> io::Result<usize> {
        let how = if self.never_wait { Recv::DontWait } else { how };
        let deadline = match how {
            Recv::Wait => {
                let limit = *self.read_timeout.lock().unwrap_or_else(|e| e.into_inner());
                limit.and_then(|l| Instant::now().checked_add(l))
            }
            Recv::DontWait => None,
        };
        loop {
            {
                let mut tls = self.lock();
                if tls.plain.is_empty() {
                    self.pump(&mut tls)?;
                }
                if !tls.plain.is_empty() {
                    return Ok(take(&mut tls.plain));
                }
                if tls.ended {
                    return Ok(0);
                }
            }
            if how == Recv::DontWait {
                return Err(would_block());
            }
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if left == Some(Duration::ZERO) {
                return Err(would_block());
            }
            self.socket.wait(Events::IN, left)?;
        }
    }

    fn write_plain(&self, bufs: &[IoSlice<'_>], wait: bool) -> io::Result<usize> {
        let wait = wait && !self.never_wait;
        let _writing = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        let deadline = self.write_deadline();
        let mut tls = self.lock();
        if let Some((kind, text)) = &tls.failed {
            return Err(io::Error::new(*kind, text.clone()));
        }
        // Nothing may follow close_notify (the gateway would drop it): a
        // write that lost the race with a shutdown fails instead.
        if tls.closed {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        // Earlier records first: rustls' buffer is bounded.
        if wait {
            tls = self.write_out(tls, deadline)?;
        } else if !self.send_tls(&mut tls)? {
            return Err(would_block());
        }
        let n = tls.conn.write_plain(bufs)?;
        if wait {
            drop(self.write_out(tls, deadline)?);
        } else {
            // What did not fit goes with the next write or flush.
            self.send_tls(&mut tls)?;
        }
        Ok(n)
    }
}

/// At most this much unread input is read and dropped when an end closes.
const CLOSE_DRAIN_MAX: usize = 1 << 20;

impl Drop for TlsTransport {
    /// Reads away what the gateway sent that nobody read, without waiting,
    /// before the socket closes: Linux answers a close with unread input by
    /// resetting the connection, which throws away what this end sent that
    /// is still in the kernel's queue (a last message, close_notify). What
    /// arrives after this, or past [`CLOSE_DRAIN_MAX`], still resets it.
    fn drop(&mut self) {
        let mut sink = [0u8; 16 * 1024];
        let mut drained = 0;
        while drained < CLOSE_DRAIN_MAX {
            match self.socket.recv_nonblocking(&mut sink) {
                Ok(n) if n > 0 => drained += n,
                _ => break,
            }
        }
    }
}

/// Hands at most `most` bytes from the front of `plain` to `put`, in the
/// one or two slices the deque holds them in (a copy each, not a step a
/// byte), then drops them: how many.
fn take_front(plain: &mut VecDeque<u8>, most: usize, mut put: impl FnMut(&[u8])) -> usize {
    let n = most.min(plain.len());
    let (front, back) = plain.as_slices();
    let first = n.min(front.len());
    if first > 0 {
        put(&front[..first]);
    }
    if n > first {
        put(&back[..n - first]);
    }
    plain.drain(..n);
    n
}

impl Transport for TlsTransport {
    fn recv(&self, buf: &mut [u8], how: Recv) -> io::Result<usize> {
        self.recv_with(how, |plain| {
            let mut at = 0;
            take_front(plain, buf.len(), |part| {
                buf[at..at + part.len()].copy_from_slice(part);
                at += part.len();
            })
        })
    }

    fn recv_spare(&self, buf: &mut Vec<u8>, how: Recv) -> io::Result<usize> {
        let room = buf.capacity() - buf.len();
        let room = if room == 0 { 16 * 1024 } else { room };
        self.recv_with(how, |plain| {
            take_front(plain, room, |part| buf.extend_from_slice(part))
        })
    }

    fn send(&self, buf: &[u8]) -> io::Result<usize> {
        self.write_plain(&[IoSlice::new(buf)], true)
    }

    fn send_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.write_plain(bufs, true)
    }

    fn send_nonblocking(&self, buf: &[u8]) -> io::Result<usize> {
        self.write_plain(&[IoSlice::new(buf)], false)
    }

    fn readable_bytes(&self) -> io::Result<usize> {
        let mut tls = self.lock();
        while self.pump(&mut tls)? {}
        Ok(tls.plain.len())
    }

    fn peek_queued(&self) -> Vec<u8> {
        let mut tls = self.lock();
        while matches!(self.pump(&mut tls), Ok(true)) {}
        tls.plain.iter().copied().collect()
    }

    fn wait_readable(&self, timeout: Option<Duration>) -> io::Result<bool> {
        let timeout = if self.never_wait {
            Some(Duration::ZERO)
        } else {
            timeout
        };
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        loop {
            {
                let mut tls = self.lock();
                self.pump(&mut tls)?;
                if !tls.plain.is_empty() || tls.ended {
                    return Ok(true);
                }
            }
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if left == Some(Duration::ZERO) {
                return Ok(false);
            }
            if self.socket.wait(Events::IN, left)?.is_empty() {
                return Ok(false);
            }
        }
    }

    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        *self.read_timeout.lock().unwrap_or_else(|e| e.into_inner()) = timeout;
        Ok(())
    }

    fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        *self.write_timeout.lock().unwrap_or_else(|e| e.into_inner()) = timeout;
        Ok(())
    }

    fn shutdown_write(&self) -> io::Result<()> {
        let _writing = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        let deadline = self.write_deadline();
        let mut tls = self.lock();
        tls.closed = true;
        tls.conn.send_close_notify();
        if self.never_wait {
            // Not a tokio end's way (`AsyncTls` waits for room itself); if
            // the close_notify does not fit now, the gateway sees TCP's end
            // without it, which it takes as the end all the same.
            let _ = self.send_tls(&mut tls);
        } else {
            drop(self.write_out(tls, deadline)?);
        }
        self.socket.shutdown_write()
    }

    fn shutdown_both(&self) -> io::Result<()> {
        {
            let mut tls = self.lock();
            tls.conn.send_close_notify();
            let _ = self.send_tls(&mut tls);
        }
        // A handed-over end's gateway stops counting the connection now
        // (`DisconnectNamedPipe`), not when the end is dropped.
        if let Some(lease) = &self.lease {
            let _ = lease.shutdown_both();
        }
        self.socket.shutdown_both()
    }

    fn delivery(&self) -> io::Result<Delivery> {
        // What TCP has not had acknowledged, and what rustls still holds:
        // the gateway's reader is out of sight.
        let held = usize::from(self.lock().conn.wants_write());
        Ok(Delivery {
            unread_by_peer: self.socket.unread_by_peer()? + held,
            peer_hung_up: self.socket.peer_hung_up(),
            peer_dropped_unread: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes come off the front in order, across the deque's wrap, and
    /// never more than asked or held.
    #[test]
    fn take_front_keeps_order_across_the_wrap() {
        let mut plain: VecDeque<u8> = VecDeque::with_capacity(8);
        plain.extend(0..6u8);
        plain.drain(..4);
        plain.extend(6..12u8); // wraps: 4 5 6 7 | 8 .. 11
        assert!(!plain.as_slices().1.is_empty(), "the test needs a wrap");
        let mut out = Vec::new();
        assert_eq!(take_front(&mut plain, 5, |p| out.extend_from_slice(p)), 5);
        assert_eq!(out, [4, 5, 6, 7, 8]);
        out.clear();
        assert_eq!(take_front(&mut plain, 100, |p| out.extend_from_slice(p)), 3);
        assert_eq!(out, [9, 10, 11]);
        assert_eq!(take_front(&mut plain, 100, |_| panic!("nothing left")), 0);
    }
}
