//! The shared-memory rings as a [`Transport`]: a byte stream whose bytes go
//! through the rings, while the socket stays for what only the kernel can
//! do (credentials were taken at connect; it tells us the peer died, and it
//! is what closes). Framing, *more data*, peeks and flushes stay in
//! `stream_core`, exactly as over the socket.
//!
//! Waiting: a receiver (or a sender facing a full ring) first spins,
//! within a budget learned from recent waits (halved each time spinning
//! did not pay, so two ends sharing one CPU soon stop spinning at all),
//! then sleeps on the ring's futex word after raising its "waiting" flag;
//! the other side wakes it only when that flag is up, so a busy stream makes
//! no system calls. Sleeps are cut into slices (50 ms, doubling to 2 s
//! while nothing happens) so a peer that died without a word is noticed
//! through the socket, and an idle connection costs next to nothing.

use std::io::{self, IoSlice};
use std::sync::atomic::{fence, AtomicBool, AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::ring::{
    Consumer, Layout, Producer, Sink, SliceSink, VecSink, ASLEEP_ON_FUTEX, ASLEEP_ON_SOCKET,
    FEATURES_OF_THIS_VERSION, WAKES_BY_SOCKET,
};
use crate::error::Error;
use crate::sys::{futex_wait, futex_wake, ShmRegion, Socket};
use crate::transport::{Delivery, Recv, Transport};

/// Each ring's size in a client's offer: about what a Unix socket buffers
/// (208 KiB by default), so a writer gets as far ahead of its reader as on
/// the socket path. Pages are only touched as the ring goes round.
pub(crate) const OFFER_CAPACITY: usize = 256 * 1024;
/// The ring sizes a server takes (powers of two in between): none larger
/// than npipe's clients offer, so a client cannot make the server's writes
/// pin more of its memory than a socket's buffer would.
const TAKEN_CAPACITIES: std::ops::RangeInclusive<usize> = 4096..=OFFER_CAPACITY;

/// A client's offer: a fresh region for rings of [`OFFER_CAPACITY`], made
/// for one connection attempt (never reused: a server that saw it could
/// write into it).
pub(crate) fn offer() -> io::Result<ShmRegion> {
    let region = ShmRegion::create(ShmTransport::region_len(OFFER_CAPACITY))?;
    // Every end of this version wakes a peer through its socket when asked,
    // and marks its records.
    Layout::new(0, OFFER_CAPACITY)
        .features(&region)
        .store(FEATURES_OF_THIS_VERSION, Ordering::Relaxed);
    Ok(region)
}

/// A region both ends agreed to carry a connection's data through: the
/// rings' capacity (agreed and bounded), which end this is, and what the
/// peer said it does (its `features` word, read once).
#[derive(Debug)]
pub(crate) struct Rings {
    region: ShmRegion,
    capacity: usize,
    side: Side,
    peer_features: u32,
}

impl Rings {
    /// The client's end of a region it offers in mid-stream (PROTOCOL §6d),
    /// to a server that said in its OK that it takes such offers: one of
    /// this version, whose `features` are this version's.
    pub(crate) fn offered_late(region: ShmRegion) -> Rings {
        Rings {
            region,
            capacity: OFFER_CAPACITY,
            side: Side::Creator,
            peer_features: FEATURES_OF_THIS_VERSION,
        }
    }

    /// Where the client says it left the socket: 1 + the bytes it sent
    /// there before its marker (0: it has not said), read once.
    pub(crate) fn client_switched_at(&self) -> u64 {
        Layout::new(0, self.capacity)
            .switched_at(&self.region)
            .load(Ordering::Acquire)
    }

    /// The rings' capacity.
    #[cfg(test)]
    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// The region.
    #[cfg(test)]
    pub(crate) fn region(&self) -> &ShmRegion {
        &self.region
    }
}

/// What a client's connect leaves of its offer: the rings, if the server
/// took it (with the server's `features` word, read once: a server from
/// before the word leaves it 0), `None` if it kept the socket. A server that
/// claims an offer never made is refused, and so is one that took it but
/// cannot wake a peer through its socket (an npipe from before that rule)
/// when this end must be woken so (`socket_woken`: a tokio client).
pub(crate) fn agreed(
    c: &crate::engine::connect::Connected,
    offer: Option<ShmRegion>,
    name: &crate::name::PipeName,
    socket_woken: bool,
) -> crate::error::Result<Option<Rings>> {
    let refuse = |why: &str| {
        Err(Error::new(
            crate::error::ErrorCode::BadPipe,
            format!("{name}: {why}"),
        ))
    };
    match (c.shared_memory, offer) {
        (false, _) => Ok(None),
        (true, None) => refuse("the server claims shared memory this client never offered"),
        (true, Some(_)) if socket_woken && !c.socket_wakes => refuse(
            "the server took shared memory but cannot wake a tokio client (an npipe from \
             before that rule): turn shared memory off for this client \
             (ClientOptions::shared_memory(false), and NPIPE_SHARED_MEMORY not `on`)",
        ),
        (true, Some(region)) => {
            let peer_features = Layout::new(0, OFFER_CAPACITY)
                .server_features(&region)
                .load(Ordering::Relaxed);
            Ok(Some(Rings {
                region,
                capacity: OFFER_CAPACITY,
                side: Side::Creator,
                peer_features,
            }))
        }
    }
}

/// A server's look at an offer: the region mapped, and its rings'
/// capacity, if it is a sealed memory file of a size two rings of an
/// allowed capacity take, from a client that wakes its peer through the
/// socket if this end must be woken so (`socket_woken`: a tokio server).
/// Anything else is refused (and the server keeps the socket). A region
/// taken gets the server's `features` word, for the client to read after
/// the OK.
pub(crate) fn take_offer(fd: PeerFd, socket_woken: bool) -> io::Result<Rings> {
    let fd = fd.into_inner();
    let region = ShmRegion::from_peer(fd, |len| offered_capacity(len).is_some())?;
    let capacity = offered_capacity(region.len()).expect("checked by from_peer");
    let first = Layout::new(0, capacity);
    // Read once: what the client may write there later changes nothing.
    let peer_features = first.features(&region).load(Ordering::Relaxed);
    if socket_woken && peer_features & WAKES_BY_SOCKET == 0 {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "the client cannot wake a tokio end through the socket",
        ));
    }
    first
        .server_features(&region)
        .store(FEATURES_OF_THIS_VERSION, Ordering::Relaxed);
    Ok(Rings {
        region,
        capacity,
        side: Side::Joiner,
        peer_features,
    })
}

/// A descriptor a peer sent: whatever becomes of it, it is never closed on
/// the thread that holds it ([`crate::sys::close_elsewhere`]).
#[derive(Debug)]
pub(crate) struct PeerFd(Option<std::os::fd::OwnedFd>);

impl PeerFd {
    pub(crate) fn new(fd: std::os::fd::OwnedFd) -> PeerFd {
        PeerFd(Some(fd))
    }

    fn into_inner(mut self) -> std::os::fd::OwnedFd {
        self.0.take().expect("held until taken")
    }
}

impl Drop for PeerFd {
    fn drop(&mut self) {
        if let Some(fd) = self.0.take() {
            crate::sys::close_elsewhere(fd);
        }
    }
}

/// The rings' capacity in a region of `len` bytes, if it is two rings of a
/// capacity a server takes.
fn offered_capacity(len: usize) -> Option<usize> {
    len.is_multiple_of(2)
        .then(|| (len / 2).checked_sub(super::ring::CONTROL))
        .flatten()
        .filter(|c| c.is_power_of_two() && TAKEN_CAPACITIES.contains(c))
}

/// The most a wait spins before it sleeps (`spin_loop` rounds).
const MAX_SPIN: u32 = 4096;
/// How often a wait with no spin budget spins anyway, to notice that the
/// peer moved to another CPU, and for how long.
const SPIN_PROBE_EVERY: u32 = 8;
/// The longest the probes back off to (a power of two): a peer that moves
/// to another CPU is noticed within this many waits.
const SPIN_PROBE_EVERY_MAX: u32 = 128;
const SPIN_PROBE: u32 = 128;
/// The first sleep's length before the socket is asked whether the peer
/// is still there; each sleep that runs out doubles it, up to the last, so
/// an idle connection wakes about once in two seconds (a peer that closes
/// says so in the ring and wakes us at once; only a crash waits for this).
const SLEEP_SLICE: Duration = Duration::from_millis(50);
const SLEEP_SLICE_MAX: Duration = Duration::from_secs(2);

/// Which end of the region this is: the creator sends on the first ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    Creator,
    Joiner,
}

/// What holds a shared-memory end's socket: the socket itself (a blocking
/// end), or its registration with tokio's reactor (a tokio end).
pub(crate) trait HoldsSocket {
    fn socket(&self) -> &Socket;
}

impl HoldsSocket for Socket {
    fn socket(&self) -> &Socket {
        self
    }
}

/// A socket shared with what carried the connection before the rings (a
/// late offer's: `shm::late`).
impl<T: HoldsSocket> HoldsSocket for std::sync::Arc<T> {
    fn socket(&self) -> &Socket {
        T::socket(self)
    }
}

/// One end of a connection whose data goes through shared memory, its
/// socket held by `S`.
#[derive(Debug)]
pub(crate) struct ShmTransport<S: HoldsSocket = Socket> {
    region: ShmRegion,
    socket: S,
    tx: Mutex<Producer>,
    rx: Mutex<Consumer>,
    /// Where each ring lies (as in `tx` and `rx`, without their locks).
    tx_layout: Layout,
    rx_layout: Layout,
    read_timeout: Mutex<Option<Duration>>,
    write_timeout: Mutex<Option<Duration>>,
    /// How long waits for data spin.
    read_spin: Spin,
    /// How long waits for room spin.
    write_spin: Spin,
    /// The peer's socket was found hung up: it is gone for good.
    dead: AtomicBool,
}

/// A ring error as the data path sees I/O errors.
fn io_error(e: Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl ShmTransport {
    /// The region's size for rings of `capacity` bytes each way.
    pub(crate) fn region_len(capacity: usize) -> usize {
        2 * Layout::bytes(capacity)
    }
}

impl<S: HoldsSocket> ShmTransport<S> {
    /// This end of `rings` (whose region was checked to be exactly the
    /// size their capacity takes), its socket held by `socket`.
    pub(crate) fn new(rings: Rings, socket: S) -> Self {
        let Rings {
            mut region,
            capacity,
            side,
            peer_features,
        } = rings;
        assert_eq!(region.len(), ShmTransport::region_len(capacity));
        // Both sides have the memory mapped now: its descriptor has done
        // its work, and a connection holds only its socket.
        region.close_fd();
        let first = Layout::new(0, capacity);
        let second = Layout::new(Layout::bytes(capacity), capacity);
        let (tx, rx) = match side {
            Side::Creator => (first, second),
            Side::Joiner => (second, first),
        };
        ShmTransport {
            region,
            socket,
            tx: Mutex::new(Producer::new(tx, peer_features)),
            rx: Mutex::new(Consumer::new(rx, peer_features)),
            tx_layout: tx,
            rx_layout: rx,
            read_timeout: Mutex::new(None),
            write_timeout: Mutex::new(None),
            // A fresh connection spins as the process's last ones learned
            // to: on a shared CPU a spin only delays the peer, and a
            // short-lived connection would pay for it on every request.
            read_spin: Spin::new(&READ_SPIN_HINT),
            write_spin: Spin::new(&WRITE_SPIN_HINT),
            dead: AtomicBool::new(false),
        }
    }

    /// The socket that came with the connection.
    pub(crate) fn socket(&self) -> &Socket {
        self.socket.socket()
    }

    /// Where the peer said it left the socket for the ring it writes to
    /// (PROTOCOL §6d): the bytes it sent there before its marker byte, or
    /// `None` while it has not said.
    pub(crate) fn peer_switched_at(&self) -> Option<u64> {
        let said = self
            .rx_layout
            .switched_at(&self.region)
            .load(Ordering::Acquire);
        said.checked_sub(1)
    }

    /// Whether the peer has read anything of the ring this end writes (so,
    /// after a late move, it has passed this end's marker).
    pub(crate) fn peer_read_any(&self) -> io::Result<bool> {
        self.tx().read_any(&self.region).map_err(io_error)
    }

    /// As a tokio peer's reader asleep on its socket would: says so in the
    /// ring this end writes, so that the next publish sends a wake-up byte.
    #[cfg(test)]
    pub(crate) fn peer_reader_sleeps_on_its_socket(&self) {
        self.tx_layout
            .consumer_waiting(&self.region)
            .store(ASLEEP_ON_SOCKET, Ordering::SeqCst);
    }

    /// Says where this end leaves the socket for its ring (`Some`: after
    /// `sent` bytes there, its marker next), or that it stays (`None`: a
    /// marker that could not be sent).
    pub(crate) fn say_switched_at(&self, sent: Option<u64>) {
        let word = sent.map_or(0, |n| n + 1);
        self.tx_layout
            .switched_at(&self.region)
            .store(word, Ordering::Release);
    }

    /// What holds the socket.
    #[cfg(feature = "tokio")]
    pub(crate) fn holder(&self) -> &S {
        &self.socket
    }

    fn tx(&self) -> std::sync::MutexGuard<'_, Producer> {
        self.tx.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn rx(&self) -> std::sync::MutexGuard<'_, Consumer> {
        self.rx.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the peer is gone: it said so in the ring, or its socket
    /// hung up (remembered: a dead peer stays dead).
    fn peer_gone(&self, said: bool) -> bool {
        said || self.socket_hung_up()
    }

    /// Asks the socket whether the peer died (a system call: only where
    /// the ring has nothing to say).
    fn socket_hung_up(&self) -> bool {
        if self.dead.load(Ordering::Relaxed) {
            return true;
        }
        let dead = self.socket().peer_hung_up();
        if dead {
            self.dead.store(true, Ordering::Relaxed);
        }
        dead
    }

    /// Waits until `ready` (or the peer is gone, which `ready`'s caller
    /// then finds), spinning first, then sleeping on `seq` with `waiting`
    /// raised. `false` if `deadline` passed first. The peer's socket is
    /// asked about only once a sleep's slice of time has passed, so a busy
    /// connection makes no system call for it.
    fn wait(
        &self,
        spin: &Spin,
        deadline: Option<Instant>,
        seq: &AtomicU32,
        waiting: &AtomicU32,
        mut ready: impl FnMut() -> io::Result<bool>,
        mut gone: impl FnMut() -> bool,
    ) -> io::Result<bool> {
        if spin.run(&mut ready)? {
            return Ok(true);
        }
        let mut slice_len = SLEEP_SLICE;
        let mut asked = Instant::now();
        loop {
            let seen = seq.load(Ordering::Acquire);
            waiting.store(ASLEEP_ON_FUTEX, Ordering::SeqCst);
            fence(Ordering::SeqCst);
            if ready()? {
                waiting.store(0, Ordering::Relaxed);
                return Ok(true);
            }
            let slice = match deadline {
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        waiting.store(0, Ordering::Relaxed);
                        return Ok(false);
                    }
                    left.min(slice_len)
                }
                None => slice_len,
            };
            let slept_through = futex_wait(seq, seen, Some(slice));
            waiting.store(0, Ordering::Relaxed);
            // A peer that is gone wakes no one, but whoever else holds the
            // region (a process the peer handed it to) could bump the word
            // for ever and so keep this from ever sleeping a whole slice:
            // the socket is asked once a slice of time has passed, woken
            // or not.
            if slept_through || asked.elapsed() >= slice_len {
                if gone() {
                    return Ok(true);
                }
                asked = Instant::now();
                slice_len = (slice_len * 2).min(SLEEP_SLICE_MAX);
            }
        }
    }

    /// After publishing: wakes the peer's reader if it sleeps.
    fn wake_reader(&self, layout: Layout) {
        self.wake_if_waiting(
            layout.consumer_waiting(&self.region),
            layout.data_seq(&self.region),
            || true,
        );
    }

    /// After consuming (`rx` held, to see what the peer's writer waits
    /// for) or closing: wakes the peer's writer if it waits for room and
    /// the room it waits for is there (a quarter of the ring left unread,
    /// where it says so), or, with `gone`, whatever the room.
    fn wake_writer(&self, rx: &Consumer, gone: bool) {
        let layout = self.rx_layout;
        self.wake_if_waiting(
            layout.producer_waiting(&self.region),
            layout.space_seq(&self.region),
            || gone || rx.writer_would_go_on(&self.region),
        );
    }

    /// Wakes a side asleep on `seq` if its `waiting` flag is up. The fence
    /// pairs with the sleeper's (it raises the flag, then looks): either it
    /// sees what we published, or we see its flag. A side that waits on its
    /// socket gets one byte there, sent by whoever takes its flag down (so
    /// one byte per sleep, however many publish meanwhile); a full socket
    /// buffer is already a wake-up, and a peer that is gone wakes no one.
    fn wake_if_waiting(
        &self,
        waiting: &AtomicU32,
        seq: &AtomicU32,
        worth_it: impl FnOnce() -> bool,
    ) {
        fence(Ordering::SeqCst);
        let flag = waiting.load(Ordering::Relaxed);
        // `worth_it` is asked only of a side found waiting (it may read
        // the peer's busy words): one whose wait is not over yet stays
        // asleep, its flag up, for the next look.
        if flag == 0 || !worth_it() {
            return;
        }
        let take_down = |how| {
            waiting
                .compare_exchange(how, 0, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        };
        match flag {
            ASLEEP_ON_SOCKET => {
                if take_down(ASLEEP_ON_SOCKET) {
                    let _ = self.socket().send_nonblocking(&[0]);
                }
            }
            // Taken down by the one wake-up: until the sleeper runs and
            // looks (on one CPU, not before this side sleeps), every later
            // publish would otherwise make a system call for nothing.
            ASLEEP_ON_FUTEX => {
                if take_down(ASLEEP_ON_FUTEX) {
                    wake(seq);
                }
            }
            // Whatever else a peer wrote: a futex wake is harmless.
            _ => wake(seq),
        }
    }

    /// Says this end reads no more, waking a writer that waits for room
    /// (it looks at the flag after raising its own).
    fn close_reading(&self) {
        let rx = self.rx();
        rx.close(&self.region);
        self.wake_writer(&rx, true);
    }

    /// Moves what is there into `sink` without waiting: `None` if nothing.
    fn take(&self, sink: &mut impl Sink) -> io::Result<Option<usize>> {
        let mut rx = self.rx();
        let mut n = 0;
        let mut freed = false;
        while sink.room() > 0 {
            match rx.read_into(&self.region, sink).map_err(io_error)? {
                // This version never sends an empty record, and records
                // taken without a byte would let a peer that keeps
                // publishing them hold this loop (and its thread) for ever.
                Some(chunk) if chunk.n == 0 => {
                    return Err(io_error(super::ring::corrupt(
                        "an empty record (no version sends one)",
                    )));
                }
                Some(chunk) => {
                    n += chunk.n;
                    freed |= chunk.record_done;
                }
                None => break,
            }
        }
        if freed {
            self.wake_writer(&rx, false);
        }
        Ok((n > 0).then_some(n))
    }

    /// A receive that never waits and makes no system call: what is there,
    /// the end of the stream once the peer is done (said so in the ring, or
    /// already found gone), or `None`.
    fn try_recv(&self, sink: &mut impl Sink) -> io::Result<Option<usize>> {
        if let Some(n) = self.take(sink)? {
            return Ok(Some(n));
        }
        // Nothing here: the end of the stream once the peer is done, and
        // nothing more came meanwhile.
        if self.rx().producer_closed(&self.region) || self.dead.load(Ordering::Relaxed) {
            return Ok(Some(self.take(sink)?.unwrap_or(0)));
        }
        Ok(None)
    }

    /// A receive into `sink` (which has room), waiting as `how` says.
    fn recv_into(&self, sink: &mut impl Sink, how: Recv) -> io::Result<usize> {
        let mut woke = false;
        loop {
            if let Some(n) = self.try_recv(sink)? {
                return Ok(n);
            }
            // Woken with nothing: the peer's socket may say it died.
            if woke && self.socket_hung_up() {
                return Ok(self.take(sink)?.unwrap_or(0));
            }
            if how == Recv::DontWait {
                if self.socket_hung_up() {
                    return Ok(self.take(sink)?.unwrap_or(0));
                }
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let timeout = *self.read_timeout.lock().unwrap_or_else(|e| e.into_inner());
            if !self.wait_receivable(timeout)? {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            woke = true;
        }
    }

    /// Whether a send that found no room may go on: three quarters of the
    /// ring free (as a Unix socket wakes its writer once a quarter of its
    /// buffer is left: on one CPU each wake-up is two context switches,
    /// and waking for each record freed made one per 64 KiB), or a reader
    /// that is gone (the send then fails).
    fn has_room(&self) -> io::Result<bool> {
        let mut tx = self.tx();
        Ok(tx.has_room(&self.region).map_err(io_error)?
            || tx.consumer_closed(&self.region)
            || self.dead.load(Ordering::Relaxed))
    }

    /// Whether a receive would not wait: data, or a peer that is gone.
    fn receivable(&self) -> io::Result<bool> {
        let mut rx = self.rx();
        if rx.ready(&self.region).map_err(io_error)? {
            return Ok(true);
        }
        Ok(rx.producer_closed(&self.region))
    }

    fn wait_receivable(&self, timeout: Option<Duration>) -> io::Result<bool> {
        let layout = self.rx_layout;
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        self.wait(
            &self.read_spin,
            deadline,
            layout.data_seq(&self.region),
            layout.consumer_waiting(&self.region),
            || self.receivable(),
            || self.peer_gone(false),
        )
    }

    /// Sends what fits of `parts`, waiting for room if `wait` says so.
    pub(crate) fn send_parts(&self, parts: &[IoSlice<'_>], wait: bool) -> io::Result<usize> {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        if total == 0 {
            return Ok(0);
        }
        let deadline = self
            .write_timeout
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .and_then(|t| Instant::now().checked_add(t));
        loop {
            let mut tx = self.tx();
            // A reader that closed says so in the ring; one that died is
            // found when there is no room and the socket is asked (as a
            // socket's buffer, too, takes what a dead peer never reads).
            if tx.consumer_closed(&self.region) || self.dead.load(Ordering::Relaxed) {
                return Err(io::Error::from_raw_os_error(libc::EPIPE));
            }
            // Records of a quarter ring at most, so the reader frees space
            // while the writer fills the rest (a record is freed whole).
            let limit = total.min(self.tx_layout.capacity() / 4);
            let sent = tx
                .try_push_parts(&self.region, parts, limit)
                .map_err(io_error)?;
            drop(tx);
            let layout = self.tx_layout;
            if sent > 0 {
                self.wake_reader(layout);
                return Ok(sent);
            }
            if !wait || !self.wait_for_room(deadline)? {
                return Err(io::ErrorKind::WouldBlock.into());
            }
        }
    }

    /// Waits (spinning, then on the futex) until a send that found no room
    /// may go on; `false` if `deadline` passed first.
    pub(crate) fn wait_for_room(&self, deadline: Option<Instant>) -> io::Result<bool> {
        let layout = self.tx_layout;
        self.wait(
            &self.write_spin,
            deadline,
            layout.space_seq(&self.region),
            layout.producer_waiting(&self.region),
            || self.has_room(),
            || self.socket_hung_up(),
        )
    }
}

/// A spin budget learned from recent waits: this connection's, starting
/// from what the process's connections learned last (`hint`), so a new
/// connection between processes that answer each other within a spin
/// spins at once, and one whose peer shares its CPU does not.
#[derive(Debug)]
struct Spin {
    /// How many rounds the next wait spins.
    budget: AtomicU32,
    /// Waits since the budget ran out (for the occasional probe).
    probes: AtomicU32,
    /// One wait in this many probes while the budget is 0: doubled by each
    /// probe that did not pay (a peer on our CPU never answers while we
    /// spin), back to [`SPIN_PROBE_EVERY`] when one does.
    probe_every: AtomicU32,
    hint: &'static AtomicU32,
    /// The most a wait spins.
    max: u32,
}

/// What the process's waits for data and for room learned last.
static READ_SPIN_HINT: AtomicU32 = AtomicU32::new(0);
static WRITE_SPIN_HINT: AtomicU32 = AtomicU32::new(SPIN_PROBE);

impl Spin {
    fn new(hint: &'static AtomicU32) -> Spin {
        Spin {
            budget: AtomicU32::new(hint.load(Ordering::Relaxed)),
            probes: AtomicU32::new(1),
            probe_every: AtomicU32::new(SPIN_PROBE_EVERY),
            hint,
            max: MAX_SPIN,
        }
    }

    /// Spins at most `max` rounds a wait.
    #[cfg(feature = "tokio")]
    fn cap(&mut self, max: u32) {
        self.max = max.max(SPIN_PROBE);
        let budget = self.budget.get_mut();
        *budget = (*budget).min(self.max);
    }

    fn learn(&self, budget: u32) {
        self.budget.store(budget, Ordering::Relaxed);
        self.hint.store(budget, Ordering::Relaxed);
    }

    /// Spins while that pays: the budget doubles when `ready` came true
    /// within it and halves when it did not. At 0 (a peer on this same CPU
    /// never answers while we spin) it is tried again only now and then,
    /// less often each time it fails, and a probe that fails goes straight
    /// back to 0 (halving from the probe's 128 rounds spun 127 more over
    /// the next 7 waits, where a peer on our CPU never answers).
    fn run(&self, ready: &mut impl FnMut() -> io::Result<bool>) -> io::Result<bool> {
        let mut budget = self.budget.load(Ordering::Relaxed);
        let probing = budget == 0;
        if probing {
            let n = self.probes.fetch_add(1, Ordering::Relaxed);
            if !n.is_multiple_of(self.probe_every.load(Ordering::Relaxed)) {
                return ready();
            }
            budget = SPIN_PROBE;
        }
        for _ in 0..budget {
            if ready()? {
                self.probe_every.store(SPIN_PROBE_EVERY, Ordering::Relaxed);
                self.learn((budget * 2).clamp(SPIN_PROBE, self.max));
                return Ok(true);
            }
            std::hint::spin_loop();
        }
        if probing {
            let every = self.probe_every.load(Ordering::Relaxed);
            let backed_off = (every * 2).min(SPIN_PROBE_EVERY_MAX);
            self.probe_every.store(backed_off, Ordering::Relaxed);
            self.learn(0);
        } else {
            self.learn(budget / 2);
        }
        Ok(false)
    }
}

/// Wakes whoever sleeps on `seq`, whatever it was waiting for.
fn wake(seq: &AtomicU32) {
    seq.fetch_add(1, Ordering::Release);
    futex_wake(seq);
}

impl<S: HoldsSocket> Transport for ShmTransport<S> {
    fn recv(&self, buf: &mut [u8], how: Recv) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        self.recv_into(&mut SliceSink::new(buf), how)
    }

    /// Appends to `buf` what its room holds (at least 4 KiB, at most a
    /// ring: a ring never holds more), growing it as the bytes come, never
    /// zeroing room first (a 64-byte message used to zero 16 KiB).
    fn recv_spare(&self, buf: &mut Vec<u8>, how: Recv) -> io::Result<usize> {
        let start = buf.len();
        let ring = self.rx_layout.capacity();
        let spare = (buf.capacity() - start).max(4096).min(ring);
        let got = self.recv_into(&mut VecSink::new(buf, start + spare), how);
        // A ring found broken part way through gives nothing.
        buf.truncate(start + *got.as_ref().unwrap_or(&0));
        got
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
        self.rx().readable(&self.region).map_err(io_error)
    }

    fn peek_queued(&self) -> Vec<u8> {
        self.rx().peek(&self.region, usize::MAX).unwrap_or_default()
    }

    fn wait_readable(&self, timeout: Option<Duration>) -> io::Result<bool> {
        if self.receivable()? {
            return Ok(true);
        }
        self.wait_receivable(timeout)
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
        self.tx().close(&self.region);
        // The reader looks at the closed flag after raising its own: a
        // reader that does not sleep needs no system call.
        self.wake_reader(self.tx_layout);
        Ok(())
    }

    fn shutdown_both(&self) -> io::Result<()> {
        self.shutdown_write()?;
        self.close_reading();
        self.socket().shutdown_both()
    }

    fn delivery(&self) -> io::Result<Delivery> {
        let mut tx = self.tx();
        let unread_by_peer = tx.unread(&self.region).map_err(io_error)?;
        let closed = tx.consumer_closed(&self.region);
        drop(tx);
        let peer_hung_up = self.peer_gone(closed);
        Ok(Delivery {
            unread_by_peer,
            peer_hung_up,
            peer_dropped_unread: peer_hung_up && unread_by_peer > 0,
        })
    }
}

impl<S: HoldsSocket> Drop for ShmTransport<S> {
    /// A dropped end is gone for the peer at once, even before its socket
    /// closes.
    fn drop(&mut self) {
        let _ = self.shutdown_write();
        self.close_reading();
    }
}

/// Both ends of one region over `a` and `b`, as two processes have them
/// after the handshake.
#[cfg(test)]
pub(crate) fn pair_over(a: Socket, b: Socket, capacity: usize) -> (ShmTransport, ShmTransport) {
    let (creator, joiner) = test_rings(capacity);
    (ShmTransport::new(creator, a), ShmTransport::new(joiner, b))
}

/// One region for rings of `capacity`, mapped twice: the creator's and the
/// joiner's, both of this version.
#[cfg(test)]
pub(crate) fn test_rings(capacity: usize) -> (Rings, Rings) {
    test_rings_of(capacity, FEATURES_OF_THIS_VERSION, FEATURES_OF_THIS_VERSION)
}

/// As [`test_rings`], the creator's end saying `creator` and the joiner's
/// `joiner` of what they do (an end from before [`MARKS_RECORDS`] says 0
/// or [`WAKES_BY_SOCKET`]; the records and flags are written as this
/// version writes them, which such an end's peer ignores).
///
/// [`MARKS_RECORDS`]: super::ring::MARKS_RECORDS
#[cfg(test)]
pub(crate) fn test_rings_of(capacity: usize, creator: u32, joiner: u32) -> (Rings, Rings) {
    let len = ShmTransport::region_len(capacity);
    let region = ShmRegion::create(len).unwrap();
    let fd = region.fd().try_clone_to_owned().unwrap();
    let joined = ShmRegion::from_peer(fd, |n| n == len).unwrap();
    let end = |region, side, peer_features| Rings {
        region,
        capacity,
        side,
        peer_features,
    };
    (
        end(region, Side::Creator, joiner),
        end(joined, Side::Joiner, creator),
    )
}

#[cfg(test)]
mod tests;

#[cfg(feature = "tokio")]
pub(crate) mod async_end;
