//! A shared-memory end on tokio: the rings as an [`AsyncTransport`].
//!
//! tokio's reactor cannot wait on a futex, so a task that must wait (for
//! data, or for room) spins a little as a blocking end does, then raises
//! its `waiting` flag as [`ASLEEP_ON_SOCKET`] and waits for its socket to
//! become readable. The peer, blocking or tokio, sends one byte there when
//! it takes that flag down after publishing (PROTOCOL.md §6a); a peer that
//! dies closes the socket, which makes it readable too, so a tokio end
//! learns of a crash at once and an idle one costs nothing. The socket
//! carries nothing else after the handshake: whatever is read from it is a
//! wake-up, however many bytes (a peer that sends more only wakes us more).
//! (So the server keeps its reading side open over the rings, whatever
//! the client's grant: a side shut by a fence would read as a dead peer.)
//!
//! tokio keeps one waker for a registration's read readiness, but two
//! tasks may wait on this one socket (the read and write halves of
//! `tokio::io::split`, one for data and one for room), so the reactor is
//! handed a waker of our own ([`Waiters`]) that wakes every task waiting.

use std::io::{self, IoSlice};
use std::sync::atomic::{fence, AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll, Waker};
use std::time::{Duration, Instant};

use ::tokio::io::unix::AsyncFd;

use super::{HoldsSocket, Rings, ShmTransport};
use crate::shm::ring::{SliceSink, ASLEEP_ON_SOCKET};
use crate::sys::{Fd, Socket};
use crate::transport::{AsyncTransport, Recv, Transport};
use crate::waiters::Waiters;

/// The most a tokio end's wait spins (`spin_loop` rounds): a spin holds the
/// runtime's thread, which other tasks may need.
const ASYNC_MAX_SPIN: u32 = 512;
/// How many reads one wake-up drains from the socket at most: a peer that
/// floods it cannot keep a task in the loop.
const DRAIN_READS: usize = 16;
/// The longest a helper thread sleeps on the futex for a task waiting for
/// room off its socket: a task that gave up (a dropped write) holds a
/// thread of the blocking pool no longer than this.
const OFF_SOCKET_SLICE: Duration = Duration::from_millis(100);

impl HoldsSocket for AsyncFd<Fd> {
    fn socket(&self) -> &Socket {
        self.get_ref().socket()
    }
}

/// What a task waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    Data,
    Room,
}

/// One end of a shared-memory connection on tokio.
#[derive(Debug)]
pub(crate) struct AsyncShm {
    t: ShmTransport<Arc<AsyncFd<Fd>>>,
    waiters: Arc<Waiters>,
    /// What the reactor wakes: every task in `waiters`.
    all: Waker,
    /// A helper thread sleeps on the futex for room
    /// ([`poll_room_off_socket`](Self::poll_room_off_socket)).
    helping: AtomicBool,
}

impl AsyncShm {
    /// This end of `rings` (see [`ShmTransport::new`]), its socket
    /// registered with the reactor.
    pub(crate) fn new(rings: Rings, io: AsyncFd<Fd>) -> Self {
        AsyncShm::over(ShmTransport::new(rings, Arc::new(io)))
    }

    /// The tokio end of `t`, whose socket's registration may be shared
    /// (a late offer's: `shm::late`).
    pub(crate) fn over(mut t: ShmTransport<Arc<AsyncFd<Fd>>>) -> Self {
        t.read_spin.cap(ASYNC_MAX_SPIN);
        t.write_spin.cap(ASYNC_MAX_SPIN);
        let waiters = Arc::new(Waiters::default());
        AsyncShm {
            t,
            all: Waker::from(waiters.clone()),
            waiters,
            helping: AtomicBool::new(false),
        }
    }

    /// Ready once a send may find room, waiting without the socket: a
    /// thread of the blocking pool sleeps on the ring's futex (a slice at a
    /// time) as a blocking end does, and wakes the waiting tasks. For a
    /// client whose socket still carries the server's data (a late offer's
    /// window, `shm::late::async_end`), where neither a wake-up byte nor
    /// the socket's readiness could be told from that data. The peer wakes
    /// the thread as it would a blocking end: no rule changes for it.
    pub(crate) fn poll_room_off_socket(
        self: &Arc<Self>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        self.waiters.add(cx.waker());
        if self.t.has_room()? {
            return Poll::Ready(Ok(()));
        }
        if !self.helping.swap(true, Ordering::AcqRel) {
            let me = Arc::clone(self);
            drop(::tokio::task::spawn_blocking(move || {
                let _ =
                    me.t.wait_for_room(Instant::now().checked_add(OFF_SOCKET_SLICE));
                // The futex flag is down again (the wait takes it down), so
                // a task may now wait the socket's way.
                me.helping.store(false, Ordering::Release);
                me.all.wake_by_ref();
            }));
        }
        Poll::Pending
    }

    /// Whether a helper thread is still asleep for room: until it is done,
    /// no task may raise the flag it shares (its end would take it down).
    pub(crate) fn helping(&self) -> bool {
        self.helping.load(Ordering::Acquire)
    }

    /// The connection's socket.
    pub(crate) fn socket(&self) -> &Socket {
        self.t.socket()
    }

    fn is_ready(&self, want: Want) -> io::Result<bool> {
        match want {
            Want::Data => Ok(self.t.receivable()? || self.t.dead.load(Ordering::Relaxed)),
            Want::Room => self.t.has_room(),
        }
    }

    fn flag(&self, want: Want) -> &AtomicU32 {
        match want {
            Want::Data => self.t.rx_layout.consumer_waiting(&self.t.region),
            Want::Room => self.t.tx_layout.producer_waiting(&self.t.region),
        }
    }

    /// Ready once `want` may have come true (the caller looks again):
    /// after a spin, or a wake-up through the socket. Pending with the
    /// flag raised and the socket's readiness registered.
    fn poll_wait(&self, cx: &mut Context<'_>, want: Want) -> Poll<io::Result<()>> {
        let spin = match want {
            Want::Data => &self.t.read_spin,
            Want::Room => &self.t.write_spin,
        };
        if spin.run(&mut || self.is_ready(want))? {
            return Poll::Ready(Ok(()));
        }
        // Registered before the flag goes up: a wake-up another of our
        // tasks drains from the socket wakes this one.
        self.waiters.add(cx.waker());
        let flag = self.flag(want);
        flag.store(ASLEEP_ON_SOCKET, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        if self.is_ready(want)? {
            self.stop_waiting(flag, cx);
            return Poll::Ready(Ok(()));
        }
        let mut all = Context::from_waker(&self.all);
        loop {
            let mut guard = ready!(self.t.holder().poll_read_ready(&mut all))?;
            let (woken, drained) = self.drain()?;
            if drained {
                guard.clear_ready();
            }
            if woken {
                self.stop_waiting(flag, cx);
                return Poll::Ready(Ok(()));
            }
        }
    }

    /// Takes our flag down. Another of our tasks may wait under the same
    /// flag (two `readable` calls), and with it down the peer sends no
    /// byte for it: it is woken to look for itself, as is any task whose
    /// wake-up we may have drained.
    fn stop_waiting(&self, flag: &AtomicU32, cx: &Context<'_>) {
        flag.store(0, Ordering::Relaxed);
        self.waiters.wake_others(cx.waker());
    }

    /// Reads what the peer sent on the socket: whether anything came (or
    /// the peer is gone, remembered as dead), and whether the socket was
    /// read empty (its readiness may be cleared). Another failure (out of
    /// memory, ...) is the caller's error, and the peer is not taken for
    /// dead.
    fn drain(&self) -> io::Result<(bool, bool)> {
        let mut scratch = [0u8; 64];
        let mut woken = false;
        for _ in 0..DRAIN_READS {
            match self.socket().recv_nonblocking(&mut scratch) {
                Ok(0) => return Ok((self.found_dead(), false)),
                // Short of the room: the socket was read empty (a stream
                // socket hands over all it holds), so no second receive is
                // needed to learn it.
                Ok(n) if n < scratch.len() => return Ok((true, true)),
                Ok(_) => woken = true,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok((woken, true)),
                Err(e) if peer_gone(&e) => return Ok((self.found_dead(), false)),
                Err(e) => return Err(e),
            }
        }
        Ok((woken, false))
    }

    /// The socket ended: the peer is gone for good.
    fn found_dead(&self) -> bool {
        self.t.dead.store(true, Ordering::Relaxed);
        true
    }

    /// Waits until `want` is true.
    fn poll_until(&self, cx: &mut Context<'_>, want: Want) -> Poll<io::Result<()>> {
        loop {
            ready!(spend_budget(cx));
            if self.is_ready(want)? {
                self.done_waiting(want, cx);
                return Poll::Ready(Ok(()));
            }
            ready!(self.poll_wait(cx, want))?;
        }
    }

    /// What a task waited for came without a byte ending its wait (it was
    /// polled again by another of our tasks' wake-up): the flag comes down
    /// as `poll_wait` takes it down when a byte comes. Left up, the peer
    /// would go on looking for us (a writer's: reading its `tail` at every
    /// record) and then send a byte for nothing.
    fn done_waiting(&self, want: Want, cx: &Context<'_>) {
        let flag = self.flag(want);
        if flag.load(Ordering::Relaxed) == ASLEEP_ON_SOCKET {
            self.stop_waiting(flag, cx);
        }
    }
}

/// Whether a socket error says the peer is gone.
fn peer_gone(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ECONNRESET | libc::EPIPE | libc::ENOTCONN)
    )
}

/// One turn of a loop that goes on while the peer keeps the ring busy:
/// spends the task's tokio budget,
/// as a socket's readiness does, so no peer can keep the task from
/// yielding to the others on its thread.
fn spend_budget(cx: &mut Context<'_>) -> Poll<()> {
    let coop = ready!(::tokio::task::coop::poll_proceed(cx));
    coop.made_progress();
    Poll::Ready(())
}

impl AsyncTransport for AsyncShm {
    type Sync = ShmTransport<Arc<AsyncFd<Fd>>>;

    fn sync(&self) -> &Self::Sync {
        &self.t
    }

    fn poll_recv(&self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        // Nothing to take into: a socket's receive says 0 at once too
        // (else a record there would keep the wait ready for ever).
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        loop {
            ready!(spend_budget(cx));
            if let Some(n) = self.t.try_recv(&mut SliceSink::new(buf))? {
                self.done_waiting(Want::Data, cx);
                return Poll::Ready(Ok(n));
            }
            ready!(self.poll_wait(cx, Want::Data))?;
        }
    }

    /// Once there is something to take, the non-waiting receive takes it
    /// (it asks nothing of the kernel then).
    fn poll_recv_spare(&self, cx: &mut Context<'_>, buf: &mut Vec<u8>) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.poll_until(cx, Want::Data))?;
            match self.t.recv_spare(buf, Recv::DontWait) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                done => return Poll::Ready(done),
            }
        }
    }

    fn poll_send(&self, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
        loop {
            ready!(spend_budget(cx));
            match self.t.send_parts(bufs, false) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                done => {
                    self.done_waiting(Want::Room, cx);
                    return Poll::Ready(done);
                }
            }
            ready!(self.poll_wait(cx, Want::Room))?;
        }
    }

    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_until(cx, Want::Data)
    }

    fn poll_writable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_until(cx, Want::Room)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::future::{poll_fn, Future};
    use std::time::Duration;

    use super::*;
    use crate::shm::transport::test_rings;
    use crate::tokio::join::both;

    /// Rings this small fill after a few writes.
    const SMALL: usize = 4096;
    /// Long enough that only a lost wake-up runs into it.
    pub(crate) const HANG: Duration = Duration::from_secs(10);

    /// A runtime of two threads, with timers.
    pub(crate) fn two_threads() -> ::tokio::runtime::Runtime {
        ::tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    }

    /// A current-thread runtime with timers.
    pub(crate) fn runtime() -> ::tokio::runtime::Runtime {
        ::tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    /// A tokio end (the creator) and a blocking one over one region and a
    /// socket pair, as a tokio client and a blocking server have them.
    fn tokio_and_blocking(capacity: usize) -> (AsyncShm, ShmTransport) {
        let (a, b) = Socket::pair().unwrap();
        let (creator, joiner) = test_rings(capacity);
        a.set_nonblocking(true).unwrap();
        let io = crate::sys::register_async_for(a, ::tokio::io::Interest::READABLE).unwrap();
        (AsyncShm::new(creator, io), ShmTransport::new(joiner, b))
    }

    /// `f`, failing if it has not finished within [`HANG`]. (Not
    /// `tokio::time::timeout`, which polls `f` once more at the deadline
    /// and so would hide a lost wake-up.)
    async fn within<F: Future>(f: F) -> F::Output {
        let (mut f, mut limit) = (
            std::pin::pin!(f),
            std::pin::pin!(::tokio::time::sleep(HANG)),
        );
        poll_fn(|cx| {
            assert!(limit.as_mut().poll(cx).is_pending(), "a wake-up was lost");
            f.as_mut().poll(cx)
        })
        .await
    }

    async fn recv(end: &AsyncShm, buf: &mut [u8]) -> io::Result<usize> {
        within(poll_fn(|cx| end.poll_recv(cx, buf))).await
    }

    async fn send(end: &AsyncShm, buf: &[u8]) -> io::Result<usize> {
        within(poll_fn(|cx| end.poll_send(cx, &[IoSlice::new(buf)]))).await
    }

    /// Sends all of `data` from a tokio end.
    async fn send_all(end: &AsyncShm, mut data: &[u8]) {
        while !data.is_empty() {
            let n = send(end, data).await.unwrap();
            data = &data[n..];
        }
    }

    /// Receives `len` bytes on a tokio end.
    async fn receive_all(end: &AsyncShm, len: usize) -> Vec<u8> {
        let mut got = Vec::new();
        while got.len() < len {
            let mut buf = [0u8; 700];
            let n = recv(end, &mut buf).await.unwrap();
            assert!(n > 0, "end of stream after {} bytes", got.len());
            got.extend_from_slice(&buf[..n]);
        }
        got
    }

    /// Receives `len` bytes on a blocking end.
    fn receive_blocking(end: &ShmTransport, len: usize) -> Vec<u8> {
        let mut got = Vec::new();
        while got.len() < len {
            let mut buf = [0u8; 1024];
            let n = end.recv(&mut buf, Recv::Wait).unwrap();
            assert!(n > 0, "end of stream after {} bytes", got.len());
            got.extend_from_slice(&buf[..n]);
        }
        got
    }

    /// The flag the tokio end raises to wait for data, as its peer sees it.
    fn reader_flag(peer: &ShmTransport) -> &AtomicU32 {
        peer.tx_layout.consumer_waiting(&peer.region)
    }

    /// Waits until the tokio end sleeps on its socket.
    fn until_asleep(flag: &AtomicU32) {
        while flag.load(Ordering::SeqCst) != ASLEEP_ON_SOCKET {
            std::thread::yield_now();
        }
    }

    /// A tokio reader asleep says so with its flag, and a blocking writer
    /// wakes it through the socket (one byte, the flag taken down).
    #[test]
    fn a_blocking_writer_wakes_a_tokio_reader_through_the_socket() {
        runtime().block_on(async {
            let (a, b) = tokio_and_blocking(SMALL);
            let writer = std::thread::spawn(move || {
                until_asleep(reader_flag(&b));
                b.send(b"wake up").unwrap();
                assert_eq!(reader_flag(&b).load(Ordering::SeqCst), 0);
                b
            });
            let mut buf = [0u8; 16];
            let n = recv(&a, &mut buf).await.unwrap();
            assert_eq!(&buf[..n], b"wake up");
            drop(writer.join().unwrap());
        });
    }

    /// The flag the tokio end raises to wait for room, as its peer sees it.
    fn writer_flag(peer: &ShmTransport) -> &AtomicU32 {
        peer.rx_layout.producer_waiting(&peer.region)
    }

    /// A tokio writer facing a full ring sleeps on its socket, and a
    /// blocking reader that frees room wakes it.
    #[test]
    fn a_blocking_reader_wakes_a_tokio_writer_waiting_for_room() {
        runtime().block_on(async {
            let (a, b) = tokio_and_blocking(SMALL);
            let total = 8 * SMALL;
            let reader = std::thread::spawn(move || {
                until_asleep(writer_flag(&b));
                receive_blocking(&b, total)
            });
            let data: Vec<u8> = (0..total).map(|i| (i % 251) as u8).collect();
            send_all(&a, &data).await;
            assert!(
                reader.join().unwrap() == data,
                "the bytes came through changed"
            );
        });
    }

    /// The same for a reader: data that came without its byte (published
    /// here with no wake-up) and is taken when the task is polled again
    /// takes its flag down.
    #[test]
    fn a_tokio_reader_that_receives_after_a_wait_takes_its_flag_down() {
        runtime().block_on(async {
            let (a, b) = tokio_and_blocking(SMALL);
            let mut cx = Context::from_waker(Waker::noop());
            let mut buf = [0u8; 8];
            assert!(a.poll_recv(&mut cx, &mut buf).is_pending());
            assert_eq!(reader_flag(&b).load(Ordering::SeqCst), ASLEEP_ON_SOCKET);
            assert!(b.tx().try_push(&b.region, b"x", false).unwrap());
            let got = a.poll_recv(&mut cx, &mut buf);
            assert!(matches!(got, Poll::Ready(Ok(1))), "{got:?}");
            assert_eq!(reader_flag(&b).load(Ordering::SeqCst), 0);
        });
    }

    /// A tokio writer that waited for room and is polled again by some other
    /// wake-up than its peer's byte (another of its tasks woken), and then
    /// sends, takes its flag down: its peer stops watching for it.
    #[test]
    fn a_tokio_writer_that_sends_after_a_wait_takes_its_flag_down() {
        runtime().block_on(async {
            let (a, b) = tokio_and_blocking(SMALL);
            let record = vec![7u8; SMALL];
            let mut cx = Context::from_waker(Waker::noop());
            // Fill the ring until a send waits, its flag up.
            while let Poll::Ready(sent) = a.poll_send(&mut cx, &[IoSlice::new(&record)]) {
                sent.unwrap();
            }
            assert_eq!(writer_flag(&b).load(Ordering::SeqCst), ASLEEP_ON_SOCKET);
            // One record read: room for one, but not the three quarters
            // the peer wakes a writer for, so no byte comes.
            let mut buf = vec![0u8; SMALL / 4];
            assert!(b.recv(&mut buf, Recv::Wait).unwrap() > 0);
            assert_eq!(writer_flag(&b).load(Ordering::SeqCst), ASLEEP_ON_SOCKET);
            let sent = a.poll_send(&mut cx, &[IoSlice::new(&record[..16])]);
            assert!(matches!(sent, Poll::Ready(Ok(16))), "{sent:?}");
            assert_eq!(writer_flag(&b).load(Ordering::SeqCst), 0);
        });
    }

    /// Two tasks wait on one end's socket at once, one for data and one for
    /// room (the halves of `tokio::io::split`): the reactor keeps one waker
    /// for read readiness, yet each is woken when its wake-up comes.
    #[test]
    fn a_reader_and_a_writer_waiting_on_one_socket_are_both_woken() {
        runtime().block_on(async {
            let (a, b) = tokio_and_blocking(SMALL);
            let total = 3 * SMALL;
            let peer = std::thread::spawn(move || {
                until_asleep(reader_flag(&b));
                until_asleep(writer_flag(&b));
                b.send(b"for the reader").unwrap();
                receive_blocking(&b, total);
                b
            });
            // Two tasks, so two wakers (one task polling both would be
            // woken by either wake-up).
            let a = Arc::new(a);
            let reading = ::tokio::spawn({
                let a = a.clone();
                async move {
                    let mut buf = [0u8; 64];
                    let n = recv(&a, &mut buf).await.unwrap();
                    buf[..n].to_vec()
                }
            });
            let writing = ::tokio::spawn({
                let a = a.clone();
                async move { send_all(&a, &vec![7u8; total]).await }
            });
            let (got, wrote) = both(reading, writing).await;
            wrote.unwrap();
            let got = got.unwrap();
            assert_eq!(got, b"for the reader");
            drop(peer.join().unwrap());
        });
    }

    /// A peer whose process died says nothing in the ring, but the kernel
    /// closes its socket: a tokio end waiting on it reads the end at once.
    #[test]
    fn a_peer_that_dies_ends_a_tokio_wait() {
        runtime().block_on(async {
            let (a, b) = tokio_and_blocking(SMALL);
            let killer = std::thread::spawn(move || {
                until_asleep(reader_flag(&b));
                // What the kernel does for a process that died; the ring
                // is left as it was.
                b.socket().shutdown_both().unwrap();
                b
            });
            let mut buf = [0u8; 16];
            assert_eq!(recv(&a, &mut buf).await.unwrap(), 0);
            let e = send(&a, b"anyone?").await.unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EPIPE));
            drop(killer.join().unwrap());
        });
    }

    /// Bytes on the socket are only ever a wake-up: with nothing in the
    /// ring the reader waits on, and gets what is written after.
    #[test]
    fn bytes_on_the_socket_alone_are_no_data() {
        runtime().block_on(async {
            let (a, b) = tokio_and_blocking(SMALL);
            b.socket().send(b"not data").unwrap();
            let mut buf = [0u8; 16];
            let read = poll_fn(|cx| a.poll_recv(cx, &mut buf));
            let waited = ::tokio::time::timeout(Duration::from_millis(100), read).await;
            assert!(waited.is_err(), "a socket byte read as data: {waited:?}");
            b.send(b"data").unwrap();
            let n = recv(&a, &mut buf).await.unwrap();
            assert_eq!(&buf[..n], b"data");
        });
    }

    /// Two tokio ends (a tokio client and server) stream both ways at once
    /// through small rings, each waking the other through the socket.
    #[test]
    fn two_tokio_ends_stream_both_ways() {
        runtime().block_on(async {
            let (sa, sb) = Socket::pair().unwrap();
            let (creator, joiner) = test_rings(SMALL);
            let end = |s: Socket, rings| {
                s.set_nonblocking(true).unwrap();
                let io = crate::sys::register_async_for(s, ::tokio::io::Interest::READABLE);
                AsyncShm::new(rings, io.unwrap())
            };
            let a = end(sa, creator);
            let b = end(sb, joiner);
            let total = 64 * SMALL;
            let data: Vec<u8> = (0..total).map(|i| (i % 241) as u8).collect();
            let outs = both(send_all(&a, &data), send_all(&b, &data));
            let ins = both(receive_all(&b, total), receive_all(&a, total));
            let (_, (to_b, to_a)) = both(outs, ins).await;
            assert!(
                to_b == data && to_a == data,
                "the bytes came through changed"
            );
        });
    }

    /// A reader the peer never lets wait (records of one byte, or of
    /// nothing, always there) still yields to its thread's other tasks:
    /// it spends tokio's budget as a socket's reader does, so within one
    /// poll of its task it turns pending after at most 128 receives.
    /// A receive into no room says 0 at once, as a socket's does, with a
    /// record waiting (it used to wait past it for ever, the record
    /// keeping the wait ready).
    #[test]
    fn a_receive_into_no_room_returns_at_once() {
        runtime().block_on(async {
            let (a, b) = tokio_and_blocking(SMALL);
            assert!(b.tx().try_push(&b.region, b"x", false).unwrap());
            let got = ::tokio::time::timeout(
                std::time::Duration::from_secs(5),
                poll_fn(|cx| a.poll_recv(cx, &mut [])),
            )
            .await
            .expect("the receive never returned");
            assert_eq!(got.unwrap(), 0);
            let mut one = [0u8; 1];
            assert_eq!(poll_fn(|cx| a.poll_recv(cx, &mut one)).await.unwrap(), 1);
        });
    }

    #[test]
    fn a_ring_that_never_runs_dry_spends_the_tasks_budget() {
        runtime().block_on(async {
            let (a, b) = tokio_and_blocking(SMALL);
            // 250 records of a byte, 16 bytes each: a 4 KiB ring holds them.
            for _ in 0..250 {
                let mut tx = b.tx();
                assert!(tx.try_push(&b.region, b"x", false).unwrap());
            }
            let (mut got, mut pending) = (0, 0);
            poll_fn(|cx| {
                for _ in 0..250 {
                    let mut one = [0u8; 1];
                    match a.poll_recv(cx, &mut one) {
                        Poll::Ready(n) => got += n.unwrap(),
                        Poll::Pending => pending += 1,
                    }
                }
                Poll::Ready(())
            })
            .await;
            assert!(pending > 0, "{got} receives in one poll, and no yield");
            assert!(got <= 128, "{got} receives in one poll");
        });
    }

    /// Two tasks wait for data on one end at once (two `readable` calls,
    /// on a runtime of two threads), round after round: each is woken,
    /// whichever of them takes the flag down.
    #[test]
    fn two_tasks_waiting_for_data_are_both_woken() {
        two_threads().block_on(async {
            let (a, b) = tokio_and_blocking(SMALL);
            let a = Arc::new(a);
            let b = Arc::new(b);
            for round in 0..300u32 {
                let waiting = |a: Arc<AsyncShm>| {
                    ::tokio::spawn(async move {
                        within(poll_fn(|cx| a.poll_readable(cx))).await.unwrap()
                    })
                };
                let (x, y) = (waiting(a.clone()), waiting(a.clone()));
                let peer = b.clone();
                let writer = std::thread::spawn(move || {
                    if round % 2 == 0 {
                        until_asleep(reader_flag(&peer));
                    }
                    peer.send(&round.to_le_bytes()).unwrap();
                });
                x.await.unwrap();
                y.await.unwrap();
                writer.join().unwrap();
                let mut buf = [0u8; 4];
                assert_eq!(recv(&a, &mut buf).await.unwrap(), 4);
                assert_eq!(u32::from_le_bytes(buf), round);
            }
        });
    }
}
