//! A connection that starts on its socket and moves its data to the
//! shared-memory rings once it has proved busy: a *late offer* (PROTOCOL
//! §6d). Making, sealing, mapping and unmapping a region costs about what a
//! whole socket connection does (DESIGN-NOTES), so a short connection never
//! pays for it and a busy one pays once.
//!
//! Each direction moves on its own, at a marker byte on the socket. The
//! client, after a number of writes, makes a region and sends it with its
//! marker (`SCM_RIGHTS`); everything it writes after goes into the first
//! ring. The server reads the socket up to the marker (the kernel never
//! glues the bytes after a descriptor's to them, so the marker is the last
//! byte of the receive the region came with), takes the region, and reads
//! the first ring from there; its own writes move at its next send, behind
//! a marker of its own. Before sending its marker each side writes into its
//! ring's `switched_at` word how many bytes it sent on the socket: the
//! server checks the client's against where the region came, and the
//! client learns from the server's which byte is the marker (its own
//! marker carries nothing else to tell it by).
//!
//! Clients of both kinds offer. A client's writer may wait for room before
//! its reads have passed the server's marker, while the server's data still
//! come through the socket; a tokio one then sleeps on the futex through a
//! helper thread instead of on its socket (`async_end`). A server of either
//! kind takes; a tokio one, which takes what its socket holds for wake-ups
//! once on the rings, moves its writes only after its reads have passed the
//! client's marker (so does a blocking one: one rule).

use std::io::{self, IoSlice};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use super::ring::Layout;
use super::transport::{self, HoldsSocket, PeerFd, Rings, ShmTransport, OFFER_CAPACITY};
use crate::error::{Error, ErrorCode};
use crate::sys::{Rode, Socket, Watch};
use crate::transport::{Delivery, Recv, Transport};

/// The byte that marks where a side left the socket (PROTOCOL §6d).
pub(crate) const MARKER: u8 = b'S';

/// Which part this end plays.
#[derive(Debug, Clone, Copy)]
enum Role {
    /// A client: offers the rings before write number `after` + 1.
    Offerer { after: u32 },
    /// A server: takes an offer from the client whose uid is `peer_uid`
    /// (a descriptor it sends that is not an offer is closed elsewhere,
    /// counted against it, and ends the connection).
    Taker { peer_uid: u32 },
}

/// Bytes through the socket after which a client offers the rings whatever
/// its count of sends: about what the socket moves in the time a region
/// costs to make, map and tear down (34 µs, DESIGN-NOTES), so a stream of
/// large messages moves at its first or second.
const OFFER_AFTER_BYTES: u64 = 256 * 1024;

/// The sending side: what went out on the socket.
#[derive(Debug, Default)]
struct Tx {
    /// Bytes sent on the socket (the marker not counted).
    socket_bytes: u64,
    /// Sends that went out on the socket.
    writes: u32,
    /// A region could not be made: this end keeps the socket.
    no_offer: bool,
}

/// The rings a late end moves to, as a blocking end has them
/// (`ShmTransport`) or a tokio one (`AsyncShm`), over the socket's holder
/// `H` it shares with the late end.
pub(crate) trait RingEnd<H: HoldsSocket> {
    /// Whether this kind of end waits on its socket (a tokio end), so takes
    /// only a region whose client wakes it so.
    const WOKEN_BY_SOCKET: bool;
    /// This kind of end over `t`.
    fn over(t: ShmTransport<H>) -> Self;
    /// The rings' non-waiting calls, which every kind has.
    fn rings(&self) -> &ShmTransport<H>;
}

impl RingEnd<Arc<Socket>> for ShmTransport<Arc<Socket>> {
    const WOKEN_BY_SOCKET: bool = false;

    fn over(t: ShmTransport<Arc<Socket>>) -> Self {
        t
    }

    fn rings(&self) -> &ShmTransport<Arc<Socket>> {
        self
    }
}

/// A blocking end's: its socket, then the rings beside it.
pub(crate) type LateShm = Late<Arc<Socket>, ShmTransport<Arc<Socket>>>;

/// A connection's bytes, on its socket (held by `H`) until they move to
/// the rings (`R`).
#[derive(Debug)]
pub(crate) struct Late<H, R> {
    socket: H,
    role: Role,
    /// Made by the client's offer, or by the server's taking it (behind a
    /// pointer: a connection that never moves, an idle one on a busy
    /// server, pays a pointer for them, not the rings' size; shared, so that
    /// a tokio client's helper thread can wait on them).
    rings: OnceLock<Arc<R>>,
    /// Held across a send on the socket: only senders take it.
    tx: Mutex<Tx>,
    /// [`TX_ON_RINGS`], [`RX_ON_RINGS`], [`BROKEN`].
    state: AtomicU8,
    /// Bytes received on the socket, the peer's marker counted (one reader
    /// at a time; peeks read it).
    rx_socket_bytes: AtomicU64,
}

/// This end's writes go into the rings.
const TX_ON_RINGS: u8 = 1;
/// This end reads from the rings (it has passed the peer's marker).
const RX_ON_RINGS: u8 = 2;
/// The move failed: the connection was shut, and every later call fails.
const BROKEN: u8 = 4;

/// Where a receive puts what it takes.
enum Dest<'a> {
    Slice(&'a mut [u8]),
    /// A vector's spare capacity, its length before the receive.
    Spare(&'a mut Vec<u8>, usize),
}

impl Tx {
    /// Whether a client that offers after `after` sends has seen enough
    /// (or the bytes of a few large ones).
    fn proved_busy(&self, after: u32) -> bool {
        self.writes >= after || self.socket_bytes >= OFFER_AFTER_BYTES
    }
}

impl Dest<'_> {
    fn recv_socket(&mut self, socket: &Socket, how: Recv) -> io::Result<usize> {
        match self {
            Dest::Slice(buf) => Transport::recv(socket, buf, how),
            Dest::Spare(vec, _) => Transport::recv_spare(socket, vec, how),
        }
    }

    fn recv_watching(&mut self, socket: &Socket, how: Recv, uid: u32) -> io::Result<(usize, Rode)> {
        let how = match how {
            Recv::Wait => Watch::Wait,
            Recv::DontWait => Watch::DontWait,
        };
        match self {
            Dest::Slice(buf) => socket.recv_watching(buf, how, uid),
            Dest::Spare(vec, _) => socket.recv_spare_watching(vec, how, uid),
        }
    }

    fn recv_rings<H: HoldsSocket>(
        &mut self,
        rings: &ShmTransport<H>,
        how: Recv,
    ) -> io::Result<usize> {
        match self {
            Dest::Slice(buf) => rings.recv(buf, how),
            Dest::Spare(vec, _) => rings.recv_spare(vec, how),
        }
    }

    /// Byte `i` of what the last receive took.
    fn byte(&self, i: usize) -> u8 {
        match self {
            Dest::Slice(buf) => buf[i],
            Dest::Spare(vec, start) => vec[*start + i],
        }
    }

    /// Keeps the first `n` bytes of what the last receive took.
    fn keep(&mut self, n: usize) {
        if let Dest::Spare(vec, start) = self {
            vec.truncate(*start + n);
        }
    }
}

/// The error for a peer that broke the late offer's rules.
fn bad(why: impl std::fmt::Display) -> io::Error {
    let e = Error::new(
        ErrorCode::BadPipe,
        format!("the peer's move to shared memory failed ({why}): the connection is closed"),
    );
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl<H: HoldsSocket + Clone, R: RingEnd<H>> Late<H, R> {
    /// A client's end over the socket `socket` holds, on the socket until
    /// its send number `after` + 1, before which it offers the rings (the
    /// server said in its OK that it takes such offers). `read`: the
    /// server's bytes already read with its OK.
    pub(crate) fn offerer(socket: H, after: u32, read: u64) -> Self {
        let end = Late::new(socket, Role::Offerer { after });
        end.rx_socket_bytes.store(read, Ordering::Relaxed);
        end
    }

    /// A server's end over the socket `socket` holds, which told its client
    /// (uid `peer_uid`) in the OK that it takes a late offer.
    pub(crate) fn taker(socket: H, peer_uid: u32) -> Self {
        Late::new(socket, Role::Taker { peer_uid })
    }

    fn new(socket: H, role: Role) -> Self {
        Late {
            socket,
            role,
            rings: OnceLock::new(),
            tx: Mutex::new(Tx::default()),
            state: AtomicU8::new(0),
            rx_socket_bytes: AtomicU64::new(0),
        }
    }

    /// The connection's socket.
    pub(crate) fn socket(&self) -> &Socket {
        self.socket.socket()
    }

    /// What holds the socket.
    #[cfg(feature = "tokio")]
    pub(crate) fn holder(&self) -> &H {
        &self.socket
    }

    /// Whether either direction has moved to the rings.
    pub(crate) fn has_rings(&self) -> bool {
        self.sends_on_rings() || self.reads_rings()
    }

    /// The rings, once made, as this kind of end has them.
    #[cfg(feature = "tokio")]
    pub(crate) fn ring_end(&self) -> Option<&Arc<R>> {
        self.rings.get()
    }

    /// Whether this end is a client's (the one that offers).
    #[cfg(feature = "tokio")]
    pub(crate) fn offers(&self) -> bool {
        matches!(self.role, Role::Offerer { .. })
    }

    /// The rings' non-waiting calls, once made.
    fn ring_t(&self) -> Option<&ShmTransport<H>> {
        self.rings.get().map(|r| r.rings())
    }

    /// This end's writes go into the rings.
    pub(crate) fn sends_on_rings(&self) -> bool {
        self.state.load(Ordering::Relaxed) & TX_ON_RINGS != 0
    }

    /// This end reads from the rings (it has passed the peer's marker).
    pub(crate) fn reads_rings(&self) -> bool {
        self.state.load(Ordering::Acquire) & RX_ON_RINGS != 0
    }

    fn tx(&self) -> MutexGuard<'_, Tx> {
        self.tx.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The rings, once made, with the socket's timeouts.
    fn install(&self, rings: Rings) {
        let t = ShmTransport::new(rings, self.socket.clone());
        let (read, write) = self.socket().timeouts().unwrap_or((None, None));
        let _ = t.set_read_timeout(read);
        let _ = t.set_write_timeout(write);
        // Only one thread makes them: the sender (a client) under `tx`, or
        // the one reader (a server).
        let _ = self.rings.set(Arc::new(R::over(t)));
    }

    /// Fails once the move has failed.
    fn not_broken(&self) -> io::Result<()> {
        if self.state.load(Ordering::Relaxed) & BROKEN != 0 {
            return Err(bad("it failed earlier"));
        }
        Ok(())
    }

    /// A move that failed: the connection is shut both ways (the peer sees
    /// it end), and `e` is what this call and every later one say.
    fn broken_by(&self, e: io::Error) -> io::Error {
        self.state.fetch_or(BROKEN, Ordering::Relaxed);
        match self.ring_t() {
            Some(rings) => {
                let _ = rings.shutdown_both();
            }
            None => {
                let _ = self.socket().shutdown_both();
            }
        }
        e
    }

    // ---- sending ----

    /// Sends `parts` on the socket or the rings, moving to the rings first
    /// where it is time. `wait`: whether a send may wait for room (one that
    /// may not, the disconnect mark, never offers).
    pub(crate) fn send_parts(&self, parts: &[IoSlice<'_>], wait: bool) -> io::Result<usize> {
        self.send_parts_as(parts, wait, wait)
    }

    /// A tokio end's send: never waiting, but a client's may offer (its
    /// marker goes only where the socket has room for it at once).
    #[cfg(feature = "tokio")]
    pub(crate) fn send_parts_now(&self, parts: &[IoSlice<'_>]) -> io::Result<usize> {
        self.send_parts_as(parts, false, true)
    }

    fn send_parts_as(&self, parts: &[IoSlice<'_>], wait: bool, offer: bool) -> io::Result<usize> {
        self.not_broken()?;
        let mut tx = self.tx();
        if !self.sends_on_rings() {
            self.maybe_move(&mut tx, wait, offer)?;
        }
        if let (true, Some(rings)) = (self.sends_on_rings(), self.ring_t()) {
            drop(tx);
            return rings.send_parts(parts, wait);
        }
        let n = if wait {
            self.socket().send_vectored(parts)?
        } else {
            self.socket().send_vectored_nonblocking(parts)?
        };
        tx.socket_bytes += n as u64;
        tx.writes = tx.writes.saturating_add(1);
        Ok(n)
    }

    /// Moves this end's writes to the rings if it is time: a client's after
    /// its writes on the socket (if `offer`), a server's once it has read
    /// past the client's marker (a tokio server's writer, waiting for room,
    /// takes what its socket holds for wake-ups: only past the marker is
    /// that so).
    fn maybe_move(&self, tx: &mut Tx, wait: bool, offer: bool) -> io::Result<()> {
        match self.role {
            // One that may not wait offers only where the marker fits at
            // once (the rings are in place before it goes, and cannot be
            // made again).
            Role::Offerer { after }
                if offer
                    && !tx.no_offer
                    && tx.proved_busy(after)
                    && (wait || self.socket().has_room_for_a_marker()) =>
            {
                self.offer(tx)
            }
            Role::Taker { .. } => match (self.reads_rings(), self.ring_t()) {
                (true, Some(rings)) => self.follow(rings, tx, wait),
                _ => Ok(()),
            },
            Role::Offerer { .. } => Ok(()),
        }
    }

    /// A client's offer: a fresh region, the socket bytes sent so far
    /// written into it, and the marker sent with it. A region that cannot
    /// be made leaves the connection on the socket for good; so does a
    /// marker that cannot be sent, which fails this send (the peer is gone,
    /// or the write timeout passed).
    fn offer(&self, tx: &mut Tx) -> io::Result<()> {
        let region = match transport::offer() {
            Ok(region) => region,
            Err(_) => {
                tx.no_offer = true;
                return Ok(());
            }
        };
        Layout::new(0, OFFER_CAPACITY)
            .switched_at(&region)
            .store(tx.socket_bytes + 1, Ordering::Release);
        // The rings are in place before the marker goes: the server may
        // answer with its own marker at once, and a reader on another
        // thread finds where by them. (Making them closes the region's
        // descriptor, so a copy goes with the marker.)
        let copy = match region.fd().try_clone_to_owned() {
            Ok(copy) => copy,
            Err(_) => {
                tx.no_offer = true;
                return Ok(());
            }
        };
        self.install(Rings::offered_late(region));
        let sent = self.socket().send_with_fd(&[MARKER], copy.as_fd());
        drop(copy);
        match sent {
            Ok(1) => {
                self.state.fetch_or(TX_ON_RINGS, Ordering::Relaxed);
                Ok(())
            }
            other => {
                // Never offered: the server never writes into these rings,
                // so they say nothing to the reader, and the socket stays.
                tx.no_offer = true;
                let e = other
                    .err()
                    .unwrap_or_else(|| io::ErrorKind::WriteZero.into());
                // A peer that is gone, or the write timeout, is this send's
                // error; anything else is the marker's alone (too many
                // descriptors in flight, no buffer for one): the data go on
                // the socket.
                let ends_the_send = e.kind() == io::ErrorKind::WouldBlock
                    || matches!(e.raw_os_error(), Some(libc::EPIPE) | Some(libc::ECONNRESET));
                if ends_the_send {
                    Err(e)
                } else {
                    Ok(())
                }
            }
        }
    }

    /// A server that took the offer moves its writes too: where it left
    /// the socket written into its ring, then its marker.
    fn follow(&self, rings: &ShmTransport<H>, tx: &mut Tx, wait: bool) -> io::Result<()> {
        rings.say_switched_at(Some(tx.socket_bytes));
        let sent = if wait {
            self.socket().send(&[MARKER])
        } else {
            self.socket().send_nonblocking(&[MARKER])
        };
        match sent {
            Ok(1) => {
                self.state.fetch_or(TX_ON_RINGS, Ordering::Relaxed);
                Ok(())
            }
            other => {
                // Not moved: the word must not point at a byte that will
                // be data.
                rings.say_switched_at(None);
                Err(other
                    .err()
                    .unwrap_or_else(|| io::ErrorKind::WriteZero.into()))
            }
        }
    }

    // ---- receiving ----

    /// A receive into `dest`, from the socket until the peer's marker and
    /// from the rings after it.
    fn recv_to(&self, dest: &mut Dest<'_>, how: Recv) -> io::Result<usize> {
        self.not_broken()?;
        loop {
            if self.reads_rings() {
                let rings = self.ring_t().expect("reading the rings that were made");
                return dest.recv_rings(rings, how);
            }
            let start = self.rx_socket_bytes.load(Ordering::Relaxed);
            let (n, rode) = match self.role {
                Role::Offerer { .. } => (dest.recv_socket(self.socket(), how)?, Rode::Nothing),
                Role::Taker { peer_uid } => dest.recv_watching(self.socket(), how, peer_uid)?,
            };
            if n == 0 {
                return Ok(0);
            }
            let end = start + n as u64;
            let marker = self.marker_in(start, end, rode).and_then(|at| match at {
                Some(at) if dest.byte((at - start) as usize) != MARKER => Err(bad(
                    "the byte where the peer said it left the socket is not its marker",
                )),
                at => Ok(at),
            });
            let Some(at) = marker
                .inspect_err(|_| dest.keep(0))
                .map_err(|e| self.broken_by(e))?
            else {
                self.rx_socket_bytes.store(end, Ordering::Relaxed);
                return Ok(n);
            };
            let data = (at - start) as usize;
            // Anything after the marker is a wake-up byte (no version of
            // the socket path follows the marker with data).
            dest.keep(data);
            self.rx_socket_bytes.store(at + 1, Ordering::Relaxed);
            self.state.fetch_or(RX_ON_RINGS, Ordering::Release);
            if data > 0 {
                return Ok(data);
            }
        }
    }

    /// Where the peer's marker lies among socket bytes `start..end` just
    /// received (or peeked), if among them; a server takes the offer here.
    fn marker_in(&self, start: u64, end: u64, rode: Rode) -> io::Result<Option<u64>> {
        match (self.role, rode) {
            (Role::Offerer { .. }, _) => {
                let Some(at) = self.ring_t().and_then(|r| r.peer_switched_at()) else {
                    return Ok(None);
                };
                if at < start {
                    return Err(bad(
                        "the server says it left the socket before bytes already read",
                    ));
                }
                Ok((at < end).then_some(at))
            }
            (Role::Taker { .. }, Rode::Nothing) => Ok(None),
            (Role::Taker { .. }, Rode::Unusable) => Err(bad(
                "a descriptor came that is not a memory file, or this server had too many \
                 of the client's descriptors still to close to take it in",
            )),
            (Role::Taker { .. }, Rode::MemoryFile(fd)) => {
                let at = end - 1;
                self.take(fd, at)?;
                Ok(Some(at))
            }
        }
    }

    /// A server takes the client's region, which came with socket byte
    /// `at`: sound (sealed, of a size it takes) and saying it left the
    /// socket there. A region taken already (by a peek) leaves this copy
    /// to be closed.
    fn take(&self, fd: OwnedFd, at: u64) -> io::Result<()> {
        let fd = PeerFd::new(fd);
        if self.rings.get().is_some() {
            return Ok(());
        }
        let rings =
            transport::take_offer(fd, R::WOKEN_BY_SOCKET).map_err(|e| bad(format_args!("{e}")))?;
        if rings.client_switched_at() != at + 1 {
            return Err(bad(
                "the client's region does not say it left the socket where it did",
            ));
        }
        self.install(rings);
        // The one descriptor a connection takes: any later one (with
        // wake-up bytes, say) the client's kernel refuses.
        self.socket().refuse_descriptors();
        Ok(())
    }

    /// What the socket holds before the peer's marker (all of it if the
    /// marker is not there), and whether the marker is there; `queued`:
    /// the socket's count (`FIONREAD`).
    fn peek_socket(&self, queued: usize) -> io::Result<(Vec<u8>, bool)> {
        let start = self.rx_socket_bytes.load(Ordering::Relaxed);
        let (mut buf, rode) = match self.role {
            Role::Offerer { .. } => (self.socket().peek_queued(), Rode::Nothing),
            Role::Taker { peer_uid } => {
                let mut buf = Vec::with_capacity(queued.max(1));
                let rode = self
                    .socket()
                    .recv_spare_watching(&mut buf, Watch::Peek, peer_uid)?
                    .1;
                (buf, rode)
            }
        };
        if buf.is_empty() {
            return Ok((buf, false));
        }
        let marker = self.marker_in(start, start + buf.len() as u64, rode);
        match marker.map_err(|e| self.broken_by(e))? {
            Some(at) => {
                buf.truncate((at - start) as usize);
                Ok((buf, true))
            }
            None => Ok((buf, false)),
        }
    }

    /// How many of the socket's `queued` bytes come before the peer's
    /// marker, and whether the marker is among them. A client counts by
    /// the server's `switched_at` word, copying nothing; a server must peek
    /// to find the offer's descriptor.
    fn count_socket(&self, queued: usize) -> io::Result<(usize, bool)> {
        if let Role::Taker { .. } = self.role {
            let (before, marker) = self.peek_socket(queued)?;
            return Ok((before.len(), marker));
        }
        let start = self.rx_socket_bytes.load(Ordering::Relaxed);
        let marker = self.marker_in(start, start + queued as u64, Rode::Nothing);
        Ok(match marker.map_err(|e| self.broken_by(e))? {
            Some(at) => ((at - start) as usize, true),
            None => (queued, false),
        })
    }
}

impl<H: HoldsSocket + Clone, R: RingEnd<H>> Transport for Late<H, R> {
    fn recv(&self, buf: &mut [u8], how: Recv) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        self.recv_to(&mut Dest::Slice(buf), how)
    }

    fn recv_spare(&self, buf: &mut Vec<u8>, how: Recv) -> io::Result<usize> {
        if buf.capacity() == buf.len() {
            buf.reserve(4096);
        }
        let start = buf.len();
        self.recv_to(&mut Dest::Spare(buf, start), how)
    }

    fn send(&self, buf: &[u8]) -> io::Result<usize> {
        self.send_parts(&[IoSlice::new(buf)], true)
    }

    fn send_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.send_parts(bufs, true)
    }

    fn send_nonblocking(&self, buf: &[u8]) -> io::Result<usize> {
        self.send_parts(&[IoSlice::new(buf)], false)
    }

    fn readable_bytes(&self) -> io::Result<usize> {
        if let (true, Some(rings)) = (self.reads_rings(), self.ring_t()) {
            return rings.readable_bytes();
        }
        let queued = self.socket().readable_bytes()?;
        if queued == 0 {
            return Ok(0);
        }
        let (before, marker) = self.count_socket(queued)?;
        let after = match (marker, self.ring_t()) {
            (true, Some(rings)) => rings.readable_bytes()?,
            _ => 0,
        };
        Ok(before + after)
    }

    fn peek_queued(&self) -> Vec<u8> {
        if let (true, Some(rings)) = (self.reads_rings(), self.ring_t()) {
            return rings.peek_queued();
        }
        let queued = self.socket().readable_bytes().unwrap_or(0);
        let Ok((mut before, marker)) = self.peek_socket(queued) else {
            return Vec::new();
        };
        if let (true, Some(rings)) = (marker, self.ring_t()) {
            before.extend(rings.peek_queued());
        }
        before
    }

    /// Before the peer's marker, the socket's readiness: when the marker is
    /// all there is, that says readable although a receive that does not
    /// wait then finds nothing (it has moved to the rings).
    fn wait_readable(&self, timeout: Option<Duration>) -> io::Result<bool> {
        if let (true, Some(rings)) = (self.reads_rings(), self.ring_t()) {
            return rings.wait_readable(timeout);
        }
        Transport::wait_readable(self.socket(), timeout)
    }

    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        if let Some(rings) = self.ring_t() {
            rings.set_read_timeout(timeout)?;
        }
        self.socket().set_read_timeout(timeout)
    }

    fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        if let Some(rings) = self.ring_t() {
            rings.set_write_timeout(timeout)?;
        }
        self.socket().set_write_timeout(timeout)
    }

    fn shutdown_write(&self) -> io::Result<()> {
        let tx = self.tx();
        match (self.sends_on_rings(), self.ring_t()) {
            (true, Some(rings)) => rings.shutdown_write(),
            _ => {
                drop(tx);
                self.socket().shutdown_write()
            }
        }
    }

    fn shutdown_both(&self) -> io::Result<()> {
        match self.ring_t() {
            Some(rings) => rings.shutdown_both(),
            None => self.socket().shutdown_both(),
        }
    }

    /// On the rings, what the peer has not read is what it left in the
    /// ring and, until it has read from the ring, on the socket. Our marker
    /// counts while unread, and rightly: the bytes of the send that wrote it
    /// follow it in the ring, unread too. Once the peer has read from the
    /// ring it is past the marker, and what the socket still holds of ours
    /// is wake-up bytes (a tokio peer drains them only when it next sleeps).
    fn delivery(&self) -> io::Result<Delivery> {
        let rings = match (self.sends_on_rings(), self.ring_t()) {
            (true, Some(rings)) => rings,
            _ => return self.socket().delivery(),
        };
        let on_socket = if rings.peer_read_any()? {
            0
        } else {
            self.socket().unread_by_peer()?
        };
        let ring = rings.delivery()?;
        let unread_by_peer = on_socket + ring.unread_by_peer;
        Ok(Delivery {
            unread_by_peer,
            peer_hung_up: ring.peer_hung_up,
            peer_dropped_unread: ring.peer_hung_up && unread_by_peer > 0,
        })
    }
}

#[cfg(feature = "tokio")]
pub(crate) mod async_end;

#[cfg(test)]
mod tests;
