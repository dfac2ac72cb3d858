//! Linux: Unix domain stream sockets, directory operations, credentials.
//!
//! Safe wrappers over rustix where it has the call; libc (with `unsafe`,
//! each block justified) where it does not: `SO_PEERGROUPS`, `SIOCOUTQ`,
//! `getpwuid_r`.

use std::ffi::CStr;
use std::io::{self, IoSlice, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};

use crate::error::ErrorCode;
use crate::identity::{LocalGroup, LocalUser};
use crate::info::PeerCredentials;
use std::time::Duration;

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::net::{
    AddressFamily, RecvFlags, SendAncillaryBuffer, SendFlags, Shutdown, SocketAddrUnix,
    SocketFlags, SocketType,
};

/// The kernel's `sun_path` holds 108 bytes, NUL included.
const SUN_PATH_MAX: usize = 107;

/// What `SO_PEERPIDFD` calls have found of the kernel: unknown until the
/// first, then present or absent for good.
static PEER_PIDFD: AtomicU8 = AtomicU8::new(PEER_PIDFD_UNKNOWN);
const PEER_PIDFD_UNKNOWN: u8 = 0;
const PEER_PIDFD_PRESENT: u8 = 1;
const PEER_PIDFD_ABSENT: u8 = 2;

fn retry<T>(mut f: impl FnMut() -> rustix::io::Result<T>) -> io::Result<T> {
    loop {
        match f() {
            Err(rustix::io::Errno::INTR) => continue,
            r => return r.map_err(io::Error::from),
        }
    }
}

/// A connected or listening Unix domain stream socket.
#[derive(Debug)]
pub struct Socket(OwnedFd);

impl AsFd for Socket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl From<Socket> for OwnedFd {
    fn from(s: Socket) -> OwnedFd {
        s.0
    }
}

/// Closes handed to the closer thread and not done yet: in all, and per
/// user that sent the descriptors.
#[derive(Default)]
struct ClosesPending {
    total: usize,
    by_sender: std::collections::BTreeMap<u32, usize>,
}

static CLOSES_PENDING: std::sync::Mutex<ClosesPending> = std::sync::Mutex::new(ClosesPending {
    total: 0,
    by_sender: std::collections::BTreeMap::new(),
});

/// Past this many pending closes of one user's descriptors, no more of that
/// user's are taken in ([`Socket::recv_spare_with_fd`]): the kernel drops
/// them. A user whose files hang their closes (a FUSE daemon that never
/// answers) stalls only itself.
const MAX_CLOSES_PENDING_PER_SENDER: usize = 32;
/// Past this many pending closes in all, no one's are taken in.
const MAX_CLOSES_PENDING: usize = 1024;

fn closes_pending<T>(f: impl FnOnce(&mut ClosesPending) -> T) -> T {
    f(&mut CLOSES_PENDING.lock().unwrap_or_else(|e| e.into_inner()))
}

/// Whether a memory file (tmpfs, hugetlbfs): only those answer for seals,
/// their close never waits on anyone, and a FUSE file cannot answer.
fn is_memory_file(fd: &OwnedFd) -> bool {
    rustix::fs::fcntl_get_seals(fd).is_ok()
}

/// Whether a TCP stream socket (IPv4 or IPv6) with a peer.
#[cfg(feature = "remote")]
fn is_connected_tcp(fd: &OwnedFd) -> bool {
    use rustix::net::{sockopt, AddressFamily, SocketType};
    matches!(sockopt::socket_type(fd), Ok(SocketType::STREAM))
        && matches!(
            sockopt::socket_domain(fd),
            Ok(AddressFamily::INET | AddressFamily::INET6)
        )
        && rustix::net::getpeername(fd).is_ok()
}

/// `SO_PASSRIGHTS` (Linux 6.16), where it has the generic socket options
/// number (the libc crate does not name it for these targets yet).
#[cfg(any(
    target_arch = "x86_64",
    target_arch = "x86",
    target_arch = "aarch64",
    target_arch = "arm",
    target_arch = "riscv64"
))]
const SO_PASSRIGHTS: Option<libc::c_int> = Some(83);
#[cfg(not(any(
    target_arch = "x86_64",
    target_arch = "x86",
    target_arch = "aarch64",
    target_arch = "arm",
    target_arch = "riscv64"
)))]
const SO_PASSRIGHTS: Option<libc::c_int> = None;

/// Closes a descriptor a peer sent us on a thread of its own. A peer
/// chooses what it sends: closing a file on its FUSE mount waits on its own
/// FUSE daemon, which may never answer, so such a close must not run on a
/// thread that serves others (the acceptor). A memory file (what a peer is
/// meant to send) has no one to wait for and is closed here.
pub fn close_elsewhere(fd: OwnedFd) {
    if is_memory_file(&fd) {
        drop(fd);
    } else {
        queue_close(fd, None);
    }
}

/// Hands a descriptor that is not a memory file to the closer thread,
/// counted against `sender` (a uid) while pending. One thread closes them
/// all, in order; if it cannot start, the descriptor is closed here.
fn queue_close(fd: OwnedFd, sender: Option<u32>) {
    use std::sync::mpsc::{channel, Sender};
    use std::sync::{Mutex, OnceLock};
    /// A descriptor to close, and who sent it.
    type ToClose = (OwnedFd, Option<u32>);
    static CLOSER: OnceLock<Option<Mutex<Sender<ToClose>>>> = OnceLock::new();
    let closer = CLOSER.get_or_init(|| {
        let (tx, rx) = channel::<ToClose>();
        std::thread::Builder::new()
            .name("npipe-closer".into())
            .spawn(move || {
                for (fd, sender) in rx {
                    drop(fd);
                    closes_pending(|p| p.done(sender));
                }
            })
            .ok()
            .map(|_| Mutex::new(tx))
    });
    if let Some(tx) = closer {
        let tx = tx.lock().unwrap_or_else(|e| e.into_inner());
        closes_pending(|p| p.begin(sender));
        if let Err(unsent) = tx.send((fd, sender)) {
            closes_pending(|p| p.done(sender));
            drop(unsent.0);
        }
    }
}

impl ClosesPending {
    fn begin(&mut self, sender: Option<u32>) {
        self.total += 1;
        if let Some(uid) = sender {
            *self.by_sender.entry(uid).or_default() += 1;
        }
    }

    fn done(&mut self, sender: Option<u32>) {
        self.total = self.total.saturating_sub(1);
        if let Some(uid) = sender {
            if let Some(n) = self.by_sender.get_mut(&uid) {
                *n -= 1;
                if *n == 0 {
                    self.by_sender.remove(&uid);
                }
            }
        }
    }

    /// Whether `sender`'s own closes are far behind.
    fn sender_backlogged(&self, sender: u32) -> bool {
        self.by_sender.get(&sender).copied().unwrap_or(0) >= MAX_CLOSES_PENDING_PER_SENDER
    }

    /// Whether `sender`'s descriptors should be left to the kernel.
    fn backlogged(&self, sender: u32) -> bool {
        self.total >= MAX_CLOSES_PENDING
            || self.by_sender.get(&sender).copied().unwrap_or(0) >= MAX_CLOSES_PENDING_PER_SENDER
    }
}

/// Any connected stream socket (a remote pipe's TCP connection too: the
/// calls used on it, send, recv, poll and `SIOCOUTQ`, are the same).
impl From<OwnedFd> for Socket {
    fn from(fd: OwnedFd) -> Socket {
        Socket(fd)
    }
}

impl Socket {
    /// A new, unbound stream socket (close-on-exec).
    pub fn stream() -> io::Result<Socket> {
        let fd = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::CLOEXEC,
            None,
        )?;
        Ok(Socket(fd))
    }

    /// A connected pair (for tests and in-process plumbing).
    pub fn pair() -> io::Result<(Socket, Socket)> {
        let (a, b) = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::CLOEXEC,
            None,
        )?;
        Ok((Socket(a), Socket(b)))
    }

    /// Binds to `file` inside `dir`.
    pub fn bind_in(&self, dir: &Dir, file: &str) -> io::Result<()> {
        let addr = dir.socket_addr(file)?;
        retry(|| rustix::net::bind(&self.0, &addr))
    }

    /// Connects to `file` inside `dir`.
    pub fn connect_in(&self, dir: &Dir, file: &str) -> io::Result<()> {
        let addr = dir.connect_addr(file)?;
        match rustix::net::connect(&self.0, &addr) {
            // A signal during a blocking connect leaves it completing in the
            // background; wait for it rather than connect again.
            Err(rustix::io::Errno::INTR) => {
                self.wait(PollFlags::OUT, None)?;
                match rustix::net::sockopt::socket_error(&self.0)? {
                    Ok(()) => Ok(()),
                    Err(e) => Err(e.into()),
                }
            }
            r => r.map_err(io::Error::from),
        }
    }

    /// Starts listening.
    pub fn listen(&self, backlog: i32) -> io::Result<()> {
        Ok(rustix::net::listen(&self.0, backlog)?)
    }

    /// Accepts one connection without blocking; the new socket is
    /// non-blocking and close-on-exec.
    pub fn accept_nonblocking(&self) -> io::Result<Socket> {
        let fd = retry(|| {
            rustix::net::accept_with(&self.0, SocketFlags::CLOEXEC | SocketFlags::NONBLOCK)
        })?;
        Ok(Socket(fd))
    }

    /// Accepts one connection (the listener's own mode decides whether this
    /// waits); the new socket is blocking and close-on-exec. Callers that
    /// must not block on it pass `DONTWAIT` per call.
    pub fn accept_blocking_socket(&self) -> io::Result<Socket> {
        let fd = retry(|| rustix::net::accept_with(&self.0, SocketFlags::CLOEXEC))?;
        Ok(Socket(fd))
    }

    /// A second descriptor for this socket (`dup`).
    pub fn try_clone(&self) -> io::Result<Socket> {
        Ok(Socket(self.0.try_clone()?))
    }

    /// Switches non-blocking mode.
    pub fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        Ok(rustix::io::ioctl_fionbio(&self.0, on)?)
    }

    /// Sends without raising `SIGPIPE`.
    pub fn send(&self, buf: &[u8]) -> io::Result<usize> {
        retry(|| rustix::net::send(&self.0, buf, SendFlags::NOSIGNAL))
    }

    /// Sends without blocking or raising `SIGPIPE`.
    pub fn send_nonblocking(&self, buf: &[u8]) -> io::Result<usize> {
        retry(|| rustix::net::send(&self.0, buf, SendFlags::NOSIGNAL | SendFlags::DONTWAIT))
    }

    /// Sends what of several buffers fits now, in one call (`sendmsg`),
    /// never waiting, without `SIGPIPE`.
    pub fn send_vectored_nonblocking(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.sendmsg(bufs, SendFlags::NOSIGNAL | SendFlags::DONTWAIT)
    }

    /// Sends several buffers in one call (`sendmsg`), without `SIGPIPE`.
    pub fn send_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.sendmsg(bufs, SendFlags::NOSIGNAL)
    }

    fn sendmsg(&self, bufs: &[IoSlice<'_>], flags: SendFlags) -> io::Result<usize> {
        retry(|| rustix::net::sendmsg(&self.0, bufs, &mut SendAncillaryBuffer::default(), flags))
    }

    /// Receives into `buf`; 0 at end of stream.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        retry(|| rustix::net::recv(&self.0, &mut *buf, RecvFlags::empty()).map(|(n, _)| n))
    }

    /// Receives into `buf` without blocking.
    pub fn recv_nonblocking(&self, buf: &mut [u8]) -> io::Result<usize> {
        retry(|| rustix::net::recv(&self.0, &mut *buf, RecvFlags::DONTWAIT).map(|(n, _)| n))
    }

    /// Receives into the spare capacity of `vec` (no zeroing), growing its
    /// length by what arrived.
    pub fn recv_spare(&self, vec: &mut Vec<u8>, flags: RecvFlagsLite) -> io::Result<usize> {
        let flags = match flags {
            RecvFlagsLite::Block => RecvFlags::empty(),
            RecvFlagsLite::DontWait => RecvFlags::DONTWAIT,
        };
        retry(|| {
            rustix::net::recv(&self.0, rustix::buffer::spare_capacity(vec), flags).map(|(n, _)| n)
        })
    }

    /// Sends `buf` with `fd` riding along (`SCM_RIGHTS`), without
    /// `SIGPIPE`: the descriptor arrives with the first of these bytes.
    pub fn send_with_fd(&self, buf: &[u8], fd: BorrowedFd<'_>) -> io::Result<usize> {
        use rustix::net::SendAncillaryMessage;
        let fds = [fd];
        let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
            return Err(io::Error::other("no room for a descriptor in the message"));
        }
        retry(|| {
            rustix::net::sendmsg(
                &self.0,
                &[IoSlice::new(buf)],
                &mut control,
                SendFlags::NOSIGNAL,
            )
        })
    }

    /// Receives into the room `vec` has reserved without waiting, and the
    /// first descriptor that rode along if it is a memory file (see
    /// [`recv_with_fd`](Self::recv_with_fd)). The room is zeroed first
    /// (`recvmsg` wants initialised memory): for a buffer that lives on,
    /// `recv_with_fd` into memory zeroed once costs less.
    pub fn recv_spare_with_fd(
        &self,
        vec: &mut Vec<u8>,
        sender: u32,
    ) -> io::Result<(usize, Option<OwnedFd>)> {
        let start = vec.len();
        vec.resize(vec.capacity().max(start + 1), 0);
        let got = self.recv_with_fd(&mut vec[start..], sender);
        vec.truncate(start + got.as_ref().map_or(0, |(n, _)| *n));
        got
    }

    /// Receives into `buf` without waiting, and the first descriptor that
    /// rode along if it is a memory file (what a shared-memory offer is);
    /// any other descriptor is closed elsewhere, counted against `sender`
    /// (the peer's uid), so a peer cannot make us hold descriptors it
    /// chose. While `sender`'s closes (or everyone's) are far behind, no
    /// descriptor is taken in: the kernel drops it, and an offer is
    /// declined by its absence.
    pub fn recv_with_fd(
        &self,
        buf: &mut [u8],
        sender: u32,
    ) -> io::Result<(usize, Option<OwnedFd>)> {
        self.recv_first_fd(buf, sender, is_memory_file)
    }

    /// Receives without waiting, and the first descriptor that rode along
    /// if it is a connected TCP socket: a gateway handing a remote client's
    /// connection over (the caller has judged the sender a trusted
    /// gateway). Anything else is handled as by
    /// [`recv_with_fd`](Self::recv_with_fd): a gateway that is not root
    /// cannot stall everyone's offers with descriptors that never close.
    #[cfg(feature = "remote")]
    pub fn recv_with_tcp_socket(
        &self,
        buf: &mut [u8],
        sender: u32,
    ) -> io::Result<(usize, Option<Socket>)> {
        let (n, fd) = self.recv_first_fd(buf, sender, is_connected_tcp)?;
        Ok((n, fd.map(Socket)))
    }

    /// Receives without waiting, and the first descriptor that rode along
    /// if it is `wanted`; any other is closed elsewhere, counted against
    /// `sender`, and while `sender`'s closes (or everyone's) are far behind
    /// none is taken in (the kernel drops it).
    fn recv_first_fd(
        &self,
        buf: &mut [u8],
        sender: u32,
        wanted: fn(&OwnedFd) -> bool,
    ) -> io::Result<(usize, Option<OwnedFd>)> {
        let take = !closes_pending(|p| p.backlogged(sender));
        self.recv_taking_fds(buf, take, sender, wanted)
    }

    /// [`recv_first_fd`](Self::recv_first_fd), taking descriptors in only
    /// if `take_fds`.
    fn recv_taking_fds(
        &self,
        buf: &mut [u8],
        take_fds: bool,
        sender: u32,
        wanted: fn(&OwnedFd) -> bool,
    ) -> io::Result<(usize, Option<OwnedFd>)> {
        let mut first = None;
        let n = self.recv_fds(buf, take_fds, |fd| {
            if first.is_none() && wanted(&fd) {
                first = Some(fd);
            } else {
                queue_close(fd, Some(sender));
            }
        })?;
        Ok((n, first))
    }

    /// Receives without waiting into `buf`, handing each descriptor that
    /// rode along (room for one, if `take_fds`) to `each`.
    fn recv_fds(
        &self,
        buf: &mut [u8],
        take_fds: bool,
        each: impl FnMut(OwnedFd),
    ) -> io::Result<usize> {
        // SAFETY: `buf` is valid for writes of its length while borrowed.
        let got = unsafe {
            recvmsg_fds(
                self,
                buf.as_mut_ptr(),
                buf.len(),
                libc::MSG_DONTWAIT,
                take_fds,
                each,
            )
        };
        got.map(|(n, _)| n)
    }

    /// Receives into `buf`, watching for a descriptor riding along (a late
    /// shared-memory offer, PROTOCOL §6d): see [`recv_watching`].
    pub fn recv_watching(
        &self,
        buf: &mut [u8],
        how: Watch,
        sender: u32,
    ) -> io::Result<(usize, Rode)> {
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes while
        // borrowed here, and initialised already.
        unsafe { recv_watching(self, buf.as_mut_ptr(), buf.len(), how, sender) }
    }

    /// As [`recv_watching`](Self::recv_watching), into the spare capacity
    /// of `vec` (never zeroed first), growing its length by what arrived.
    pub fn recv_spare_watching(
        &self,
        vec: &mut Vec<u8>,
        how: Watch,
        sender: u32,
    ) -> io::Result<(usize, Rode)> {
        let spare = vec.spare_capacity_mut();
        // SAFETY: the spare capacity is valid for writes of its length
        // while `vec` is borrowed; the kernel writes bytes only, and only
        // the `n` it reports are made part of the vector below.
        let got =
            unsafe { recv_watching(self, spare.as_mut_ptr().cast(), spare.len(), how, sender) };
        if let Ok((n, _)) = &got {
            // SAFETY: `recvmsg` initialised the first `n` bytes of the
            // spare capacity (n never exceeds the length it was given).
            unsafe { vec.set_len(vec.len() + n) };
        }
        got
    }

    /// Shuts down the sending side (the peer reads end of stream).
    pub fn shutdown_write(&self) -> io::Result<()> {
        Ok(rustix::net::shutdown(&self.0, Shutdown::Write)?)
    }

    /// Shuts down the receiving side: the peer's later writes fail with
    /// `EPIPE` (what it sent before stays queued, unread).
    pub fn shutdown_read(&self) -> io::Result<()> {
        Ok(rustix::net::shutdown(&self.0, Shutdown::Read)?)
    }

    /// Shuts down both sides.
    pub fn shutdown_both(&self) -> io::Result<()> {
        Ok(rustix::net::shutdown(&self.0, Shutdown::Both)?)
    }

    /// Refuses descriptors from the peer from now on (`SO_PASSRIGHTS` off,
    /// Linux 6.16): its `sendmsg` with `SCM_RIGHTS` fails with `EPERM`.
    /// Without this, descriptors a peer sends that a receive has no room
    /// for are dropped by the kernel on the receiving thread, and a file's
    /// `release` can wait on its FUSE daemon (one that caches writes).
    /// `false` where the kernel has no such option: the receive's rules
    /// (room for one, the closer thread) are then all there is.
    pub fn refuse_descriptors(&self) -> bool {
        let Some(option) = SO_PASSRIGHTS else {
            return false;
        };
        let off: libc::c_int = 0;
        // SAFETY: a valid socket descriptor, and a pointer to a live c_int
        // with its exact size, which the kernel only reads.
        let set = unsafe {
            libc::setsockopt(
                self.0.as_raw_fd(),
                libc::SOL_SOCKET,
                option,
                std::ptr::from_ref(&off).cast(),
                std::mem::size_of_val(&off) as libc::socklen_t,
            )
        };
        set == 0
    }

    /// Sets `SO_RCVTIMEO`.
    pub fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        let t = t.filter(|d| !d.is_zero());
        Ok(rustix::net::sockopt::set_socket_timeout(
            &self.0,
            rustix::net::sockopt::Timeout::Recv,
            t,
        )?)
    }

    /// `SO_RCVTIMEO` and `SO_SNDTIMEO` as set (`None`: for ever).
    pub fn timeouts(&self) -> io::Result<(Option<Duration>, Option<Duration>)> {
        use rustix::net::sockopt::{socket_timeout, Timeout};
        Ok((
            socket_timeout(&self.0, Timeout::Recv)?,
            socket_timeout(&self.0, Timeout::Send)?,
        ))
    }

    /// Sets `SO_SNDTIMEO`.
    pub fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        let t = t.filter(|d| !d.is_zero());
        Ok(rustix::net::sockopt::set_socket_timeout(
            &self.0,
            rustix::net::sockopt::Timeout::Send,
            t,
        )?)
    }

    /// Sets `SO_SNDBUF` (the kernel doubles it).
    pub fn set_send_buffer(&self, bytes: usize) -> io::Result<()> {
        Ok(rustix::net::sockopt::set_socket_send_buffer_size(
            &self.0, bytes,
        )?)
    }

    /// The peer's credentials from the kernel (`SO_PEERCRED`).
    pub fn peer_cred(&self) -> io::Result<PeerCredentials> {
        let c = rustix::net::sockopt::socket_peercred(&self.0)?;
        Ok(PeerCredentials {
            pid: c.pid.as_raw_pid() as u32,
            user: LocalUser(c.uid.as_raw()),
            group: LocalGroup(c.gid.as_raw()),
        })
    }

    /// A pidfd for the peer process as it was when it connected
    /// (`SO_PEERPIDFD`, Linux 6.5): it names that process and no other for
    /// as long as it is open, even once the pid is reused. `Ok(None)` where
    /// the kernel does not have the option; an error when the peer has
    /// gone.
    pub fn peer_pidfd(&self) -> io::Result<Option<OwnedFd>> {
        /// `SO_PEERPIDFD` on every architecture but alpha, mips, parisc and
        /// sparc, which npipe is not built for.
        const SO_PEERPIDFD: libc::c_int = 77;
        let mut fd: libc::c_int = -1;
        let mut len = size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: `fd` is a live c_int of `len` bytes that the kernel fills
        // with a new descriptor it opened for us; the socket is ours.
        let r = unsafe {
            libc::getsockopt(
                self.0.as_raw_fd(),
                libc::SOL_SOCKET,
                SO_PEERPIDFD,
                (&mut fd as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        if r != 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::ENOPROTOOPT | libc::EOPNOTSUPP) => {
                    PEER_PIDFD.store(PEER_PIDFD_ABSENT, Ordering::Relaxed);
                    Ok(None)
                }
                _ => Err(e),
            };
        }
        PEER_PIDFD.store(PEER_PIDFD_PRESENT, Ordering::Relaxed);
        if fd < 0 {
            return Err(io::Error::other("SO_PEERPIDFD returned no descriptor"));
        }
        // SAFETY: the kernel just opened `fd` for us and nothing else owns it
        // (owned at once, so that it is closed whatever follows).
        let owned = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        if len as usize != size_of::<libc::c_int>() {
            return Err(io::Error::other("SO_PEERPIDFD returned a short answer"));
        }
        Ok(Some(owned))
    }

    /// Whether this kernel has `SO_PEERPIDFD`: found out once, on a socket
    /// pair, unless a [`peer_pidfd`](Self::peer_pidfd) call already did.
    pub fn kernel_names_peer_processes() -> bool {
        if PEER_PIDFD.load(Ordering::Relaxed) == PEER_PIDFD_UNKNOWN {
            // Records the answer; a pair we cannot make says nothing.
            let _ = Socket::pair().map(|(a, _b)| a.peer_pidfd());
        }
        PEER_PIDFD.load(Ordering::Relaxed) == PEER_PIDFD_PRESENT
    }

    /// The peer's supplementary groups from the kernel (`SO_PEERGROUPS`).
    pub fn peer_groups(&self) -> io::Result<Vec<u32>> {
        // NGROUPS_MAX on Linux is 65536; the kernel tells us the size needed.
        let mut groups: Vec<libc::gid_t> = vec![0; 64];
        loop {
            let mut len = (groups.len() * size_of::<libc::gid_t>()) as libc::socklen_t;
            // SAFETY: `groups` is a live buffer of `len` bytes that the kernel
            // fills with gid_t values; `len` is updated to the bytes written
            // (or needed, with ERANGE). The fd is a valid socket we own.
            let r = unsafe {
                libc::getsockopt(
                    self.0.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_PEERGROUPS,
                    groups.as_mut_ptr().cast(),
                    &mut len,
                )
            };
            let needed = len as usize / size_of::<libc::gid_t>();
            if r == 0 {
                groups.truncate(needed.min(groups.len()));
                return Ok(groups);
            }
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::ERANGE) || needed <= groups.len() || needed > 65536
            {
                return Err(err);
            }
            groups.resize(needed, 0);
        }
    }

    /// Bytes written by this end that the peer has not read yet (`SIOCOUTQ`).
    pub fn unread_by_peer(&self) -> io::Result<usize> {
        let mut n: libc::c_int = 0;
        // SAFETY: SIOCOUTQ (= TIOCOUTQ) writes one c_int through the pointer,
        // which points at a live local. The fd is a valid socket we own.
        let r = unsafe { libc::ioctl(self.0.as_raw_fd(), libc::TIOCOUTQ, &mut n) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n.max(0) as usize)
    }

    /// Whether a send of one byte with a descriptor would go out at once:
    /// what this end has queued (`SIOCOUTQ`, which counts the kernel's
    /// memory for it) leaves a page of the send buffer free. `false` if
    /// either cannot be read.
    pub fn has_room_for_a_marker(&self) -> bool {
        let Ok(queued) = self.unread_by_peer() else {
            return false;
        };
        match rustix::net::sockopt::socket_send_buffer_size(&self.0) {
            Ok(room) => queued + 4096 <= room,
            Err(_) => false,
        }
    }

    /// A copy of what the socket holds to be read, without consuming it
    /// (empty if nothing, or on any failure).
    pub fn peek_queued(&self) -> Vec<u8> {
        let n = self.readable_bytes().unwrap_or(0);
        let mut buf = vec![0u8; n];
        let flags = RecvFlags::PEEK | RecvFlags::DONTWAIT;
        match rustix::net::recv(&self.0, &mut buf[..], flags) {
            Ok((got, _)) => buf.truncate(got),
            Err(_) => buf.clear(),
        }
        buf
    }

    /// Bytes waiting to be read (`FIONREAD`).
    pub fn readable_bytes(&self) -> io::Result<usize> {
        Ok(rustix::io::ioctl_fionread(&self.0)? as usize)
    }

    /// Waits until the socket is ready for `events` or `timeout` passes;
    /// returns the events seen (empty on timeout).
    pub fn wait(&self, events: PollFlags, timeout: Option<Duration>) -> io::Result<PollFlags> {
        let mut fds = [PollFd::new(&self.0, events)];
        let n = poll(&mut fds, timeout)?;
        Ok(if n == 0 {
            PollFlags::empty()
        } else {
            fds[0].revents()
        })
    }

    /// Whether the peer has closed its end (without consuming anything).
    /// Only `POLLHUP` and `POLLERR` count: a closing Unix-socket peer sets
    /// both of our shutdown flags, which is `POLLHUP`, whereas `POLLRDHUP`
    /// alone also shows when our own read side is shut (a server end fenced
    /// to a read-only client) or the peer merely stopped writing, and
    /// neither means it has gone.
    pub fn peer_hung_up(&self) -> bool {
        self.wait(PollFlags::empty(), Some(Duration::ZERO))
            .map(|r| r.intersects(PollFlags::HUP | PollFlags::ERR))
            .unwrap_or(true)
    }

    /// Whether the peer closed while bytes we sent were still unread in
    /// its socket: the kernel then drops them and flags this socket with
    /// `ECONNRESET`, which `poll` shows as `POLLERR` (not consumed here).
    pub fn peer_dropped_unread(&self) -> bool {
        self.wait(PollFlags::empty(), Some(Duration::ZERO))
            .map(|r| r.contains(PollFlags::ERR))
            .unwrap_or(false)
    }
}

/// How [`Socket::recv_watching`] receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Watch {
    /// Wait for data, within the socket's read timeout.
    Wait,
    /// `WouldBlock` at once if nothing is there.
    DontWait,
    /// Look without consuming, never waiting (a descriptor that rode along
    /// comes back as a copy: the socket keeps its own).
    Peek,
}

/// What rode along with the bytes of a [`Socket::recv_watching`].
#[derive(Debug)]
pub enum Rode {
    /// No descriptor.
    Nothing,
    /// A memory file, the first descriptor that came.
    MemoryFile(OwnedFd),
    /// A descriptor of another kind (closed elsewhere), or one the kernel
    /// dropped because closes are far behind: the bytes it rode with
    /// carried one, which this end cannot use.
    Unusable,
}

/// `recvmsg(2)` into `len` bytes at `ptr`, with room for one descriptor.
/// The kernel never glues the bytes after a descriptor's to them, so one
/// that came rode with the last byte received. The first memory file is
/// handed back; any other descriptor is closed elsewhere, counted against
/// `sender` (the peer's uid); while `sender`'s own closes are far behind
/// none is taken in and the kernel drops it, seen as a truncated control
/// message.
///
/// # Safety
///
/// `ptr` must be valid for writes of `len` bytes for the call's duration.
unsafe fn recv_watching(
    socket: &Socket,
    ptr: *mut u8,
    len: usize,
    how: Watch,
    sender: u32,
) -> io::Result<(usize, Rode)> {
    // Only the sender's own backlog counts: a connection takes in at most
    // one descriptor before it moves or breaks, and an honest client's
    // offer must not be dropped for what other users' files do.
    let take = !closes_pending(|p| p.sender_backlogged(sender));
    let flags = match how {
        Watch::Wait => 0,
        Watch::DontWait => libc::MSG_DONTWAIT,
        Watch::Peek => libc::MSG_PEEK | libc::MSG_DONTWAIT,
    };
    let mut rode = Rode::Nothing;
    // SAFETY: the caller's promise for `ptr` and `len`, passed on.
    let (n, truncated) = unsafe {
        recvmsg_fds(socket, ptr, len, flags, take, |fd| {
            if matches!(rode, Rode::Nothing) && is_memory_file(&fd) {
                rode = Rode::MemoryFile(fd);
            } else {
                queue_close(fd, Some(sender));
                if !matches!(rode, Rode::MemoryFile(_)) {
                    rode = Rode::Unusable;
                }
            }
        })
    }?;
    if truncated && matches!(rode, Rode::Nothing) {
        rode = Rode::Unusable;
    }
    Ok((n, rode))
}

/// `recvmsg(2)` into `len` bytes at `ptr` with `flags` (and
/// `MSG_CMSG_CLOEXEC`), retried on `EINTR`, with room for exactly one
/// descriptor if `take` (none otherwise: the kernel drops any). Each
/// descriptor taken in goes to `each`; also says whether the kernel
/// truncated the control data (a descriptor it dropped).
///
/// # Safety
///
/// `ptr` must be valid for writes of `len` bytes for the call's duration.
unsafe fn recvmsg_fds(
    socket: &Socket,
    ptr: *mut u8,
    len: usize,
    flags: libc::c_int,
    take: bool,
    mut each: impl FnMut(OwnedFd),
) -> io::Result<(usize, bool)> {
    // Room for one `SCM_RIGHTS` of exactly one descriptor, aligned for
    // `cmsghdr` (a longer control length would let the kernel put in more).
    let mut space = [0u64; 4];
    // SAFETY: CMSG_LEN only computes a length.
    let one = unsafe { libc::CMSG_LEN(std::mem::size_of::<libc::c_int>() as u32) } as usize;
    let mut iov = libc::iovec {
        iov_base: ptr.cast(),
        iov_len: len,
    };
    // SAFETY: an all-zero `msghdr` is a valid empty one (null pointers,
    // zero lengths); the fields set below point at live locals.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if take {
        msg.msg_control = space.as_mut_ptr().cast();
        msg.msg_controllen = one.min(std::mem::size_of_val(&space)) as _;
    }
    let n = loop {
        // SAFETY: `msg` points at `iov` (the caller's `len` writable bytes)
        // and at `space` (its own length), all live for the call.
        let n = unsafe {
            libc::recvmsg(
                socket.0.as_raw_fd(),
                &mut msg,
                flags | libc::MSG_CMSG_CLOEXEC,
            )
        };
        if n >= 0 {
            break n as usize;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    let truncated = msg.msg_flags & libc::MSG_CTRUNC != 0;
    if !take || msg.msg_controllen == 0 {
        return Ok((n, truncated));
    }
    // SAFETY: `msg` was filled in by the kernel, its control pointing at
    // `space`; the CMSG_ macros walk only within `msg_controllen` of it.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    while !cmsg.is_null() {
        // SAFETY: `cmsg` is non-null and within the control buffer.
        let header = unsafe { &*cmsg };
        if header.cmsg_level == libc::SOL_SOCKET && header.cmsg_type == libc::SCM_RIGHTS {
            // SAFETY: the data of this header lies within it, its length
            // given by cmsg_len.
            let data = unsafe { libc::CMSG_DATA(cmsg) };
            let bytes = (header.cmsg_len as usize).saturating_sub(data as usize - cmsg as usize);
            for i in 0..bytes / std::mem::size_of::<libc::c_int>() {
                // SAFETY: within the data just bounded; unaligned read, as
                // CMSG_DATA promises no alignment.
                let raw = unsafe { data.cast::<libc::c_int>().add(i).read_unaligned() };
                // SAFETY: the kernel installed this descriptor for us
                // (SCM_RIGHTS), and nothing else owns it.
                each(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) });
            }
        }
        // SAFETY: as for CMSG_FIRSTHDR: bounded by `msg`.
        cmsg = unsafe { libc::CMSG_NXTHDR(&msg, cmsg) };
    }
    Ok((n, truncated))
}

/// Blocking or not, for [`Socket::recv_spare`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecvFlagsLite {
    /// Wait for data.
    Block,
    /// Return `WouldBlock` if none.
    DontWait,
}

pub use rustix::event::PollFd as PollEntry;
pub use rustix::event::PollFlags as Events;

/// `poll(2)`, retried on `EINTR` (with the full timeout again: callers
/// recompute deadlines themselves).
pub fn poll(fds: &mut [PollFd<'_>], timeout: Option<Duration>) -> io::Result<usize> {
    let ts = timeout.map(|d| Timespec {
        tv_sec: d.as_secs().min(i64::MAX as u64) as i64,
        tv_nsec: d.subsec_nanos().into(),
    });
    retry(|| rustix::event::poll(fds, ts.as_ref()))
}

/// An eventfd that wakes a polling thread.
#[derive(Debug)]
pub struct Waker(OwnedFd);

impl AsFd for Waker {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl Waker {
    /// A new waker, not signalled.
    pub fn new() -> io::Result<Waker> {
        let fd = rustix::event::eventfd(
            0,
            rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
        )?;
        Ok(Waker(fd))
    }

    /// Signals the waker.
    pub fn wake(&self) {
        // A full counter (EAGAIN) is still signalled: nothing to do.
        let _ = retry(|| rustix::io::write(&self.0, &1u64.to_ne_bytes()));
    }

    /// Clears the signal.
    pub fn drain(&self) {
        let mut buf = [0u8; 8];
        let _ = retry(|| rustix::io::read(&self.0, &mut buf));
    }
}

/// An epoll set that holds one listening socket: a thread that polls the
/// set (nested in its own `poll` set) is woken by connections only while
/// the set watches the listener, and another thread switches the watch off
/// and on without waking it (`EPOLL_CTL_MOD`; switching it on while a
/// connection is waiting does wake it).
#[derive(Debug)]
pub struct ListenSet(OwnedFd);

impl AsFd for ListenSet {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl ListenSet {
    /// A set watching `listener` for connections.
    pub fn new(listener: &Socket) -> io::Result<ListenSet> {
        use rustix::event::epoll;
        let set = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        epoll::add(
            &set,
            listener,
            epoll::EventData::new_u64(0),
            epoll::EventFlags::IN,
        )?;
        Ok(ListenSet(set))
    }

    /// Watches `listener` (the one the set was made with) for connections,
    /// or stops watching it.
    pub fn watch(&self, listener: &Socket, on: bool) -> io::Result<()> {
        use rustix::event::epoll;
        let flags = if on {
            epoll::EventFlags::IN
        } else {
            epoll::EventFlags::empty()
        };
        Ok(epoll::modify(
            &self.0,
            listener,
            epoll::EventData::new_u64(0),
            flags,
        )?)
    }
}

/// A one-shot timer a thread can poll (a `timerfd` on the monotonic clock):
/// armed by one thread, it wakes another when it runs out, and arming it
/// again before then only moves the time.
#[derive(Debug)]
pub struct Timer(OwnedFd);

impl AsFd for Timer {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl Timer {
    /// A timer, not armed.
    pub fn new() -> io::Result<Timer> {
        use rustix::time::{timerfd_create, TimerfdClockId, TimerfdFlags};
        let fd = timerfd_create(
            TimerfdClockId::Monotonic,
            TimerfdFlags::CLOEXEC | TimerfdFlags::NONBLOCK,
        )?;
        Ok(Timer(fd))
    }

    /// Runs out `after` from now (not zero: that would disarm it), whatever
    /// it was set to before.
    pub fn arm(&self, after: Duration) -> io::Result<()> {
        use rustix::time::{timerfd_settime, Itimerspec, TimerfdTimerFlags};
        let after = after.max(Duration::from_nanos(1));
        let spec = Itimerspec {
            it_interval: Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: Timespec {
                tv_sec: after.as_secs().min(i64::MAX as u64) as i64,
                tv_nsec: after.subsec_nanos().into(),
            },
        };
        timerfd_settime(&self.0, TimerfdTimerFlags::empty(), &spec)?;
        Ok(())
    }

    /// Clears the signal of a timer that ran out.
    pub fn drain(&self) {
        let mut buf = [0u8; 8];
        let _ = retry(|| rustix::io::read(&self.0, &mut buf));
    }
}

/// What `stat` says of a file, as far as npipe cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileInfo {
    /// Owner.
    pub uid: u32,
    /// Permission bits, sticky bit included.
    pub mode: u32,
    /// Device and inode, to tell one file from its replacement.
    pub dev: u64,
    /// Inode.
    pub ino: u64,
    /// Kind.
    pub kind: FileKind,
}

/// The kinds of file npipe tells apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// A directory.
    Directory,
    /// A Unix domain socket.
    Socket,
    /// A symbolic link.
    Symlink,
    /// A regular file.
    Regular,
    /// Anything else.
    Other,
}

fn file_info(st: &rustix::fs::Stat) -> FileInfo {
    let kind = match FileType::from_raw_mode(st.st_mode) {
        FileType::Directory => FileKind::Directory,
        FileType::Socket => FileKind::Socket,
        FileType::Symlink => FileKind::Symlink,
        FileType::RegularFile => FileKind::Regular,
        _ => FileKind::Other,
    };
    FileInfo {
        uid: st.st_uid,
        mode: st.st_mode & 0o7777,
        dev: st.st_dev,
        ino: st.st_ino,
        kind,
    }
}

/// Whether `/proc/self/fd` reaches this process's descriptors (checked once).
fn proc_fd_usable() -> bool {
    static USABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *USABLE.get_or_init(|| {
        rustix::fs::statfs("/proc/self/fd")
            .map(|fs| fs.f_type == libc::PROC_SUPER_MAGIC)
            .unwrap_or(false)
    })
}

/// An open directory, used for every operation inside it (no path games).
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    path: PathBuf,
    /// Whether only root and this user can change what `path` names (see
    /// [`Dir::trust_path`]).
    path_trusted: bool,
}

impl Dir {
    /// Opens a directory, refusing to follow a symbolic link at its last
    /// component.
    pub fn open_nofollow(path: &Path) -> io::Result<Dir> {
        let fd = retry(|| {
            rustix::fs::open(
                path,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
        })?;
        Ok(Dir {
            fd,
            path: path.to_path_buf(),
            path_trusted: false,
        })
    }

    /// Opens the directory at `path` by walking down from `/` one component
    /// at a time, each opened relative to its parent's descriptor with
    /// `O_NOFOLLOW`, and returns it with what each ancestor was (from
    /// `fstat` of the descriptor walked through, so what was checked is
    /// what was used). `path` is made absolute and its symbolic links in
    /// parents resolved first; a link met during the walk itself (a swap
    /// after that) fails with `ELOOP`, one at the last component with
    /// `ENOTDIR`.
    pub fn open_walking(path: &Path) -> io::Result<(Dir, Vec<(PathBuf, FileInfo)>)> {
        let last = path
            .file_name()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no directory name"))?;
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.canonicalize()?,
            _ => std::env::current_dir()?,
        };
        let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let mut at = PathBuf::from("/");
        let mut fd = retry(|| rustix::fs::open("/", flags, Mode::empty()))?;
        let mut ancestors = vec![(at.clone(), file_info(&rustix::fs::fstat(&fd)?))];
        for part in parent.components().skip(1) {
            fd = retry(|| rustix::fs::openat(&fd, part.as_os_str(), flags, Mode::empty()))?;
            at.push(part);
            ancestors.push((at.clone(), file_info(&rustix::fs::fstat(&fd)?)));
        }
        let dir_flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = retry(|| rustix::fs::openat(&fd, last, dir_flags, Mode::empty()))?;
        Ok((
            Dir {
                fd,
                path: parent.join(last),
                path_trusted: false,
            },
            ancestors,
        ))
    }

    /// Creates a directory with exactly `mode` (umask notwithstanding is done
    /// by the caller with [`Dir::chmod`]).
    pub fn create(path: &Path, mode: u32) -> io::Result<()> {
        Ok(rustix::fs::mkdir(path, Mode::from_raw_mode(mode))?)
    }

    /// The path this directory was opened at.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `fstat` of the open directory itself.
    pub fn info(&self) -> io::Result<FileInfo> {
        Ok(file_info(&rustix::fs::fstat(&self.fd)?))
    }

    /// Sets the directory's own mode.
    pub fn chmod(&self, mode: u32) -> io::Result<()> {
        Ok(rustix::fs::fchmod(&self.fd, Mode::from_raw_mode(mode))?)
    }

    /// `lstat` of an entry.
    pub fn stat(&self, name: &str) -> io::Result<FileInfo> {
        Ok(file_info(&rustix::fs::statat(
            &self.fd,
            name,
            AtFlags::SYMLINK_NOFOLLOW,
        )?))
    }

    /// Sets an entry's mode (the entry is ours and in a sticky directory, so
    /// no one can swap it for a link meanwhile).
    pub fn chmod_entry(&self, name: &str, mode: u32) -> io::Result<()> {
        Ok(rustix::fs::chmodat(
            &self.fd,
            name,
            Mode::from_raw_mode(mode),
            AtFlags::empty(),
        )?)
    }

    /// Hard-links `from` to `to`; fails with `EEXIST` if `to` exists. This is
    /// the atomic "create if absent" for sockets.
    pub fn link(&self, from: &str, to: &str) -> io::Result<()> {
        Ok(rustix::fs::linkat(
            &self.fd,
            from,
            &self.fd,
            to,
            AtFlags::empty(),
        )?)
    }

    /// Writes a small regular file `name` atomically: into a new file
    /// `tmp` (never following or reusing anything there), then renamed over
    /// `name`. The temporary file is removed if anything fails.
    pub fn write_file(&self, tmp: &str, name: &str, bytes: &[u8], mode: u32) -> io::Result<()> {
        let flags =
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = rustix::fs::openat(&self.fd, tmp, flags, Mode::from_raw_mode(mode))?;
        let written = std::fs::File::from(fd)
            .write_all(bytes)
            .and_then(|()| Ok(rustix::fs::renameat(&self.fd, tmp, &self.fd, name)?));
        if written.is_err() {
            let _ = self.unlink(tmp);
        }
        written
    }

    /// Reads a small regular file: its owner and at most `max` bytes
    /// (`InvalidData` if it holds more). A link, a FIFO or anything but a
    /// regular file is refused without blocking.
    pub fn read_small_file(&self, name: &str, max: usize) -> io::Result<(u32, Vec<u8>)> {
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
        let fd = rustix::fs::openat(&self.fd, name, flags, Mode::empty())?;
        let st = rustix::fs::fstat(&fd)?;
        if file_info(&st).kind != FileKind::Regular {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "not a regular file",
            ));
        }
        let mut bytes = Vec::new();
        std::fs::File::from(fd)
            .take(max as u64 + 1)
            .read_to_end(&mut bytes)?;
        if bytes.len() > max {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "too large"));
        }
        Ok((st.st_uid, bytes))
    }

    /// Removes an entry.
    pub fn unlink(&self, name: &str) -> io::Result<()> {
        Ok(rustix::fs::unlinkat(&self.fd, name, AtFlags::empty())?)
    }

    /// Swaps two entries atomically (`RENAME_EXCHANGE`): each name then
    /// names what the other did. `EINVAL` where the file system cannot.
    pub fn exchange(&self, a: &str, b: &str) -> io::Result<()> {
        Ok(rustix::fs::renameat_with(
            &self.fd,
            a,
            &self.fd,
            b,
            rustix::fs::RenameFlags::EXCHANGE,
        )?)
    }

    /// Renames `from` to `to`, failing with `EEXIST` if `to` exists.
    pub fn rename_noreplace(&self, from: &str, to: &str) -> io::Result<()> {
        Ok(rustix::fs::renameat_with(
            &self.fd,
            from,
            &self.fd,
            to,
            rustix::fs::RenameFlags::NOREPLACE,
        )?)
    }

    /// The names of the entries (`.` and `..` left out) with their kinds.
    pub fn entries(&self) -> io::Result<Vec<(String, FileKind)>> {
        let mut dir = rustix::fs::Dir::read_from(&self.fd)?;
        let mut out = Vec::new();
        while let Some(entry) = dir.read() {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name == "." || name == ".." {
                continue;
            }
            let kind = match entry.file_type() {
                FileType::Directory => FileKind::Directory,
                FileType::Socket => FileKind::Socket,
                FileType::Symlink => FileKind::Symlink,
                FileType::RegularFile => FileKind::Regular,
                _ => FileKind::Other,
            };
            out.push((name, kind));
        }
        Ok(out)
    }

    /// Lets `connect` use the directory's path: the caller checked that
    /// this directory and every ancestor belong to root or this user and
    /// that no ancestor is writable by anyone else, so no other user can
    /// make the path name another directory (sticky is not enough: in a
    /// sticky `/tmp` anyone may make a new `.npipe` once the old one is
    /// gone).
    pub fn trust_path(&mut self) {
        self.path_trusted = true;
    }

    /// Whether [`Dir::trust_path`] was called.
    pub fn path_trusted(&self) -> bool {
        self.path_trusted
    }

    /// The address `connect` uses for `file` in this directory: its
    /// absolute path where the path is trusted ([`Dir::trust_path`]) and
    /// fits, as `/run/npipe` is; else through the descriptor, as `bind`
    /// does. Clients connect often: walking `/proc/self/fd/N` cost about
    /// 1.5 µs per connect (`call_rate` 0.58 -> 0.61 without it).
    fn connect_addr(&self, file: &str) -> io::Result<SocketAddrUnix> {
        if self.path_trusted && self.path.is_absolute() {
            let full = self.path.join(file);
            if full.as_os_str().len() <= SUN_PATH_MAX {
                return Ok(SocketAddrUnix::new(full.as_path())?);
            }
        }
        self.socket_addr(file)
    }

    /// The address of `file` in this directory for `bind`, which has no
    /// `*at` form: the directory is reached through this process's
    /// `/proc/self/fd/N` link to its open descriptor, so the socket is made
    /// in the directory that was opened and checked, even if its path has
    /// been swapped since (and long paths never reach the user). Any thread
    /// of the process may pass through that link, an impersonating one
    /// included. Only where `/proc` is not mounted is the path used, as it
    /// was checked.
    fn socket_addr(&self, file: &str) -> io::Result<SocketAddrUnix> {
        if proc_fd_usable() {
            // Written on the stack: this runs for every connect to a
            // directory whose path is not trusted.
            use std::io::Write;
            let mut short = [0u8; SUN_PATH_MAX];
            let mut room = &mut short[..];
            if write!(room, "/proc/self/fd/{}/{}", self.fd.as_raw_fd(), file).is_err() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "socket file name too long even through /proc/self/fd",
                ));
            }
            let len = SUN_PATH_MAX - room.len();
            return Ok(SocketAddrUnix::new(&short[..len])?);
        }
        let full = self.path.join(file);
        if full.as_os_str().len() > SUN_PATH_MAX {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the socket's path is too long and /proc is not mounted to shorten it",
            ));
        }
        Ok(SocketAddrUnix::new(full.as_path())?)
    }
}

/// Puts the calling thread under `SCHED_BATCH` if it runs under the default
/// `SCHED_OTHER`: the same share of the CPU, but its wake-ups do not preempt
/// the running thread. A thread under a real-time or idle policy (inherited
/// from the application) is left as it is: moving it would change how it
/// competes with the application's own threads. Returns whether it moved.
/// Raw syscalls, as musl's wrappers only return `ENOSYS`.
pub fn set_thread_batch_scheduling() -> io::Result<bool> {
    // SAFETY: pid 0 is the calling thread; the call reads nothing of ours.
    let policy = unsafe { libc::syscall(libc::SYS_sched_getscheduler, 0) };
    if policy < 0 {
        return Err(io::Error::last_os_error());
    }
    if (policy as libc::c_int) & !libc::SCHED_RESET_ON_FORK != libc::SCHED_OTHER {
        return Ok(false);
    }
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 is the calling thread; `param` is a live local the call
    // only reads.
    let r = unsafe {
        libc::syscall(
            libc::SYS_sched_setscheduler,
            0,
            libc::SCHED_BATCH,
            &param as *const libc::sched_param,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(true)
}

#[cfg(test)]
mod scheduling_tests {
    use crate::skipped::skipped;

    #[test]
    fn a_default_thread_moves_to_batch_and_a_batch_one_stays() {
        fn policy() -> libc::c_int {
            // SAFETY: pid 0 is the calling thread; the call reads nothing.
            let p = unsafe { libc::syscall(libc::SYS_sched_getscheduler, 0) };
            p as libc::c_int & !libc::SCHED_RESET_ON_FORK
        }
        std::thread::spawn(|| {
            if policy() != libc::SCHED_OTHER {
                skipped("the tests do not run under SCHED_OTHER");
                assert!(!super::set_thread_batch_scheduling().unwrap());
                return;
            }
            match super::set_thread_batch_scheduling() {
                Ok(moved) => assert!(moved),
                // A sandbox (seccomp) may forbid it; the acceptor then
                // simply keeps its policy.
                Err(e) => {
                    skipped(&format!("sched_setscheduler is refused here: {e}"));
                    return;
                }
            }
            assert_eq!(policy(), libc::SCHED_BATCH);
            // Not SCHED_OTHER any more: left as it is.
            assert!(!super::set_thread_batch_scheduling().unwrap());
        })
        .join()
        .unwrap();
    }
}

/// A descriptor held in reserve (on `/dev/null`), to be given up when the
/// process runs out of descriptors.
pub fn spare_fd() -> io::Result<OwnedFd> {
    Ok(rustix::fs::open(
        "/dev/null",
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// `lstat` of a path: what it names, a symbolic link not followed.
pub fn stat_nofollow(path: &Path) -> io::Result<FileInfo> {
    Ok(file_info(&rustix::fs::lstat(path)?))
}

/// The Windows error code of an `errno`, where one says the same.
pub fn error_code_of(errno: i32) -> Option<ErrorCode> {
    Some(match errno {
        libc::ENOENT | libc::ECONNREFUSED => ErrorCode::FileNotFound,
        libc::EACCES | libc::EPERM => ErrorCode::AccessDenied,
        libc::EPIPE | libc::ECONNRESET => ErrorCode::BrokenPipe,
        libc::ENOTCONN => ErrorCode::PipeNotConnected,
        libc::EAGAIN | libc::ETIMEDOUT => ErrorCode::Timeout,
        libc::EINVAL => ErrorCode::InvalidParameter,
        libc::ENAMETOOLONG => ErrorCode::InvalidName,
        _ => return None,
    })
}

/// The current process's effective user id.
pub fn effective_uid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// This process's limit on open files (its soft limit), for the gateway's
/// default bounds.
#[cfg(feature = "remote")]
pub fn open_file_limit() -> u64 {
    rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(u64::MAX)
}

/// This process's effective gid (the gateway's key check).
#[cfg(feature = "remote")]
pub fn effective_gid() -> u32 {
    rustix::process::getegid().as_raw()
}

/// The process's real user id.
pub fn real_uid() -> u32 {
    rustix::process::getuid().as_raw()
}

/// The current process id.
pub fn process_id() -> u32 {
    rustix::process::getpid().as_raw_pid() as u32
}

/// The audit login session of the process `/proc` numbers `proc_pid`
/// (`/proc/PID/sessionid`): set once per login by `pam_loginuid` and shared
/// by every process of that login, as a Windows logon session is; only a
/// process with `CAP_AUDIT_CONTROL` can change it. `u32::MAX` means the
/// process did not come from a login (a service, a container).
pub fn audit_session(proc_pid: u32) -> io::Result<u32> {
    read_session(&format!("/proc/{proc_pid}/sessionid"))
}

/// This process's own audit login session (see [`audit_session`]).
pub fn own_audit_session() -> io::Result<u32> {
    read_session("/proc/self/sessionid")
}

fn read_session(path: &str) -> io::Result<u32> {
    std::fs::read_to_string(path)?
        .trim()
        .parse()
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "unreadable sessionid"))
}

/// Whether `/proc` numbers processes as we do. In a pid namespace that
/// `/proc` was not mounted for (some sandboxes), the pids the kernel hands
/// us (`SO_PEERCRED`, `getpid`) are not `/proc`'s. Asked once.
pub fn proc_numbers_like_us() -> bool {
    static SAME: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SAME.get_or_init(|| {
        std::fs::read_link("/proc/self")
            .ok()
            .and_then(|p| p.to_str()?.parse::<u32>().ok())
            == Some(process_id())
    })
}

/// The pid `/proc` uses for the process `pidfd` names: the `Pid:` line of
/// the pidfd's `/proc/self/fdinfo`, which counts in `/proc`'s own pid
/// namespace.
pub fn proc_pid_of(pidfd: &OwnedFd) -> io::Result<u32> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", pidfd.as_raw_fd()))?;
    info.lines()
        .find_map(|l| l.strip_prefix("Pid:"))
        .and_then(|v| v.trim().parse::<i64>().ok())
        .and_then(|p| u32::try_from(p).ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "the process has exited"))
}

/// Runs a `get*_r` lookup with a buffer that doubles while the call says
/// `ERANGE` (up to `max` bytes). `lookup` returns the call's result code and,
/// when it found an entry, what it read of it while the buffer was alive.
fn reentrant_lookup<T>(
    start: usize,
    max: usize,
    mut lookup: impl FnMut(&mut [libc::c_char]) -> (libc::c_int, Option<T>),
) -> Option<T> {
    let mut buf: Vec<libc::c_char> = vec![0; start];
    loop {
        let (r, found) = lookup(&mut buf);
        if r == libc::ERANGE && buf.len() < max {
            let doubled = buf.len() * 2;
            buf.resize(doubled, 0);
            continue;
        }
        return if r == 0 { found } else { None };
    }
}

/// The name of `uid` in the system's user database, if it has the user.
pub fn user_name(uid: u32) -> Option<String> {
    user_entry(uid).map(|(name, _)| name)
}

/// The name and primary group of `uid` from the system's user database,
/// in one lookup, if it has the user.
pub fn user_entry(uid: u32) -> Option<(String, u32)> {
    reentrant_lookup(1024, 1 << 20, |buf| {
        // SAFETY: all-zero bytes are a valid `passwd` (null pointers and zero
        // ids); getpwuid_r overwrites it before we read it.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer is to a live local or to `buf`, whose length
        // is passed; getpwuid_r writes strings only inside `buf`.
        let r =
            unsafe { libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut result) };
        let entry = (!result.is_null() && !pwd.pw_name.is_null()).then(|| {
            // SAFETY: on success pw_name points at a NUL-terminated string
            // inside `buf`, which is still alive.
            let name = unsafe { CStr::from_ptr(pwd.pw_name) };
            (name.to_string_lossy().into_owned(), pwd.pw_gid)
        });
        (r, entry)
    })
}

/// The groups the user database gives `user` (whose primary group is
/// `gid`, listed first), at most 65536 of them; just `gid` if it cannot
/// say (acting as a user, fewer groups is the safe side).
pub fn group_list(user: &str, gid: u32) -> Vec<u32> {
    try_group_list(user, gid).unwrap_or_else(|| vec![gid])
}

/// [`group_list`], or `None` if the database could not say (for a check
/// against deny entries, where fewer groups is not the safe side).
pub fn try_group_list(user: &str, gid: u32) -> Option<Vec<u32>> {
    let Ok(cname) = std::ffi::CString::new(user) else {
        return None;
    };
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    loop {
        let mut n = groups.len() as libc::c_int;
        // SAFETY: `cname` is NUL-terminated; `groups` has room for `n`
        // entries and getgrouplist writes at most `n` of them, reporting the
        // number it needs in `n` when they do not fit.
        let r = unsafe { libc::getgrouplist(cname.as_ptr(), gid, groups.as_mut_ptr(), &mut n) };
        let n = usize::try_from(n).unwrap_or(0);
        if r >= 0 {
            groups.truncate(n);
            return Some(groups);
        }
        if n <= groups.len() || n > 65536 {
            return None;
        }
        groups.resize(n, 0);
    }
}

/// The uid of a user name, from the system's user database.
pub fn uid_of_user(name: &str) -> Option<u32> {
    let cname = std::ffi::CString::new(name).ok()?;
    reentrant_lookup(1024, 1 << 20, |buf| {
        // SAFETY: all-zero bytes are a valid `passwd`; getpwnam_r overwrites it.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: `cname` is NUL-terminated; the other pointers are to live
        // locals or to `buf`, whose length is passed.
        let r = unsafe {
            libc::getpwnam_r(
                cname.as_ptr(),
                &mut pwd,
                buf.as_mut_ptr(),
                buf.len(),
                &mut result,
            )
        };
        (r, (!result.is_null()).then_some(pwd.pw_uid))
    })
}

/// The gid of a group name, from the system's group database.
pub fn gid_of_group(name: &str) -> Option<u32> {
    let cname = std::ffi::CString::new(name).ok()?;
    // Groups list their members in the buffer: start larger.
    reentrant_lookup(4096, 1 << 22, |buf| {
        // SAFETY: all-zero bytes are a valid `group`; getgrnam_r overwrites it.
        let mut grp: libc::group = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::group = std::ptr::null_mut();
        // SAFETY: `cname` is NUL-terminated; the other pointers are to live
        // locals or to `buf`, whose length is passed.
        let r = unsafe {
            libc::getgrnam_r(
                cname.as_ptr(),
                &mut grp,
                buf.as_mut_ptr(),
                buf.len(),
                &mut result,
            )
        };
        (r, (!result.is_null()).then_some(grp.gr_gid))
    })
}

/// A pidfd for process `pid` (`pidfd_open`, Linux 5.3), for kernels without
/// `SO_PEERPIDFD`: it names whatever process has that pid now.
pub fn pidfd_of(pid: u32) -> io::Result<OwnedFd> {
    let pid = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "invalid process id"))?;
    Ok(rustix::process::pidfd_open(
        pid,
        rustix::process::PidfdFlags::empty(),
    )?)
}

/// The pidfs inode number of a pidfd (Linux 6.9): unique to one process
/// for the whole boot, never reused, so `(pid, inode)` names one process
/// without holding its pidfd open. `None` on older kernels, where pidfds
/// share one anonymous inode.
pub fn pidfd_inode(pidfd: &OwnedFd) -> Option<u64> {
    /// `PID_FS_MAGIC`, the file system type of pidfs.
    const PID_FS_MAGIC: i64 = 0x5049_4446;
    // Whether pidfds live in pidfs is the kernel's, the same for every
    // pidfd: asked once (a system call less per connection).
    static PIDFS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    // `f_type`'s integer type differs between architectures.
    #[allow(clippy::unnecessary_cast)]
    let pidfs = *PIDFS.get_or_init(|| {
        rustix::fs::fstatfs(pidfd).is_ok_and(|fs| fs.f_type as i64 == PID_FS_MAGIC)
    });
    if !pidfs {
        return None;
    }
    Some(rustix::fs::fstat(pidfd).ok()?.st_ino)
}

/// Whether the process a pidfd names has exited (its pidfd turns readable).
pub fn pidfd_exited(pidfd: &OwnedFd) -> io::Result<bool> {
    let mut fds = [PollFd::new(pidfd, PollFlags::IN)];
    Ok(poll(&mut fds, Some(Duration::ZERO))? > 0)
}

/// The calling thread's effective ids and supplementary groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadIds {
    /// Effective uid.
    pub euid: u32,
    /// Effective gid.
    pub egid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
}

/// The calling thread's credentials (Linux keeps them per thread).
pub fn thread_ids() -> io::Result<ThreadIds> {
    Ok(ThreadIds {
        euid: rustix::process::geteuid().as_raw(),
        egid: rustix::process::getegid().as_raw(),
        groups: rustix::process::getgroups()?
            .into_iter()
            .map(|g| g.as_raw())
            .collect(),
    })
}

fn same_groups(a: &[u32], b: &[u32]) -> bool {
    let (mut a, mut b) = (a.to_vec(), b.to_vec());
    a.sort_unstable();
    a.dedup();
    b.sort_unstable();
    b.dedup();
    a == b
}

fn gids(ids: &ThreadIds) -> Vec<rustix::process::Gid> {
    ids.groups
        .iter()
        .map(|&g| rustix::process::Gid::from_raw(g))
        .collect()
}

/// Makes the calling thread, and no other, take `ids`: raw per-thread
/// `setgroups`/`setresgid`/`setresuid` system calls, not libc's wrappers,
/// which change every thread of the process. Groups and gid go first, while
/// the thread still has the privilege; the real and saved ids stay, so
/// [`restore_thread_ids`] can go back. Only what differs from `now` (the
/// thread's ids, as the caller just read them to restore later) is changed,
/// so taking one's own identity needs no privilege.
pub fn assume_thread_ids(now: &ThreadIds, ids: &ThreadIds) -> io::Result<()> {
    use rustix::process::{Gid, Uid};
    if !same_groups(&now.groups, &ids.groups) {
        rustix::thread::set_thread_groups(&gids(ids))?;
    }
    if now.egid != ids.egid {
        rustix::thread::set_thread_res_gid(None, Gid::from_raw(ids.egid), None)?;
    }
    if now.euid != ids.euid {
        rustix::thread::set_thread_res_uid(None, Uid::from_raw(ids.euid), None)?;
    }
    Ok(())
}

/// Returns the calling thread to `saved` (from [`thread_ids`] before
/// [`assume_thread_ids`]): the effective uid first, which regains the
/// privilege to restore groups and gid. Only what differs is changed.
pub fn restore_thread_ids(saved: &ThreadIds) -> io::Result<()> {
    use rustix::process::{Gid, Uid};
    if rustix::process::geteuid().as_raw() != saved.euid {
        rustix::thread::set_thread_res_uid(None, Uid::from_raw(saved.euid), None)?;
    }
    let now = thread_ids()?;
    if !same_groups(&now.groups, &saved.groups) {
        rustix::thread::set_thread_groups(&gids(saved))?;
    }
    if now.egid != saved.egid {
        rustix::thread::set_thread_res_gid(None, Gid::from_raw(saved.egid), None)?;
    }
    Ok(())
}

/// Makes `cmd` start its process as the user `ids` describes, for good
/// (`CreateProcessAsUser` with a client's token): in the child, between fork
/// and exec, the real, effective and saved uid and gid all become the
/// client's and the supplementary groups its groups, which clears every
/// capability (effective, permitted, inheritable and ambient), and
/// `no_new_privs` is set, so neither the program nor anything it runs can
/// regain the server's identity (a set-user-ID program included).
///
/// The calling thread may itself be impersonating (effective uid the
/// client's, real and saved the server's): the child first takes back the
/// process's real uid as its effective one, which any thread may do and
/// which regains the privilege to change groups.
pub fn exec_as_user(cmd: &mut std::process::Command, ids: &ThreadIds) {
    use rustix::process::{Gid, Uid};
    use std::os::unix::process::CommandExt;
    let uid = Uid::from_raw(ids.euid);
    let gid = Gid::from_raw(ids.egid);
    // Allocated here: between fork and exec nothing may allocate.
    let groups = gids(ids);
    let real = rustix::process::getuid();
    let pre_exec = move || -> io::Result<()> {
        rustix::thread::set_thread_res_uid(real, real, real).or_else(|e| {
            // Unprivileged and already some other user: keep what we have.
            if real.is_root() {
                Err(e)
            } else {
                Ok(())
            }
        })?;
        if real.is_root() {
            rustix::thread::set_thread_groups(&groups)?;
        } else if uid != real {
            // Without privilege only one's own identity can be taken.
            return Err(io::Error::from_raw_os_error(libc::EPERM));
        }
        rustix::thread::set_thread_res_gid(gid, gid, gid)?;
        rustix::thread::set_thread_res_uid(uid, uid, uid)?;
        // Leaving uid 0 already clears the capabilities, unless the server
        // set SECBIT_NO_SETUID_FIXUP; clear them outright (dropping is
        // always allowed), ambient ones included.
        rustix::thread::clear_ambient_capability_set()?;
        let none = rustix::thread::CapabilitySet::empty();
        rustix::thread::set_capabilities(
            None,
            rustix::thread::CapabilitySets {
                effective: none,
                permitted: none,
                inheritable: none,
            },
        )?;
        rustix::thread::set_no_new_privs(true)?;
        Ok(())
    };
    // SAFETY: the closure runs in the forked child before exec, where only
    // async-signal-safe work is allowed: it makes raw system calls through
    // rustix (no allocation, no locks, no libc state) on values computed
    // before the fork, and returns.
    unsafe {
        cmd.pre_exec(pre_exec);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// While a sender's closes are backlogged a descriptor it sends is not
    /// taken in (the kernel drops it) and the data still arrives; else a
    /// memory file is, and any other file is not (it is closed elsewhere,
    /// never handed on as an offer).
    #[test]
    fn descriptors_are_taken_in_only_as_memory_files_while_the_closer_keeps_up() {
        let (a, b) = Socket::pair().unwrap();
        let memory =
            rustix::fs::memfd_create("npipe-test", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        let other = std::fs::File::open("/dev/null").unwrap();
        for (fd, take, offered) in [
            (memory.as_fd(), false, false),
            (memory.as_fd(), true, true),
            (other.as_fd(), true, false),
        ] {
            a.send_with_fd(b"hello", fd).unwrap();
            let mut buf = [0u8; 64];
            let (n, got) = b
                .recv_taking_fds(&mut buf, take, 4242, is_memory_file)
                .unwrap();
            assert_eq!(&buf[..n], b"hello");
            assert_eq!(got.is_some(), offered, "take {take}");
        }
    }

    /// One sender's pending closes gate that sender alone, until everyone's
    /// together reach the bound.
    #[test]
    fn a_senders_backlog_gates_that_sender() {
        let mut p = ClosesPending::default();
        for _ in 0..MAX_CLOSES_PENDING_PER_SENDER {
            assert!(!p.backlogged(1));
            p.begin(Some(1));
        }
        assert!(p.backlogged(1) && !p.backlogged(2));
        p.done(Some(1));
        assert!(!p.backlogged(1));
        for _ in 0..MAX_CLOSES_PENDING {
            p.begin(None);
        }
        assert!(p.backlogged(2), "everyone's together past the bound");
    }

    /// `bind` and `connect` have no `*at` form: they must still reach the
    /// directory that was opened and checked, not whatever its path names
    /// by the time they run (a swapped directory with a decoy socket);
    /// only a path the caller trusted (no one else can change it) is
    /// followed by `connect`.
    #[test]
    fn bind_and_connect_go_through_the_open_directory_unless_its_path_is_trusted() {
        let base = std::env::temp_dir().join(format!("npipe-unit-swap-{}", process_id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(base.join("ns")).unwrap();
        let dir = Dir::open_nofollow(&base.join("ns")).unwrap();
        std::fs::rename(base.join("ns"), base.join("moved")).unwrap();
        std::fs::create_dir(base.join("ns")).unwrap();
        let ours = Socket::stream().unwrap();
        ours.bind_in(&dir, "p").unwrap();
        ours.listen(4).unwrap();
        ours.set_nonblocking(true).unwrap();
        let bound_in_opened = base.join("moved/p").exists() && !base.join("ns/p").exists();
        let decoy = std::os::unix::net::UnixListener::bind(base.join("ns/p")).unwrap();
        decoy.set_nonblocking(true).unwrap();
        let client = Socket::stream().unwrap();
        client.connect_in(&dir, "p").unwrap();
        let reached_ours = ours.accept_nonblocking().is_ok();
        let reached_decoy = decoy.accept().is_ok();
        let mut trusted = dir;
        trusted.trust_path();
        let by_path = Socket::stream().unwrap();
        by_path.connect_in(&trusted, "p").unwrap();
        let trusted_reached_decoy = decoy.accept().is_ok();
        let _ = std::fs::remove_dir_all(&base);
        assert!(bound_in_opened, "bind followed the path");
        assert!(reached_ours && !reached_decoy, "connect followed the path");
        assert!(trusted_reached_decoy, "a trusted path is followed");
    }

    /// The walk reports every ancestor, and refuses a symbolic link at the
    /// last component.
    #[test]
    fn the_walk_reports_each_ancestor() {
        let base = std::env::temp_dir().join(format!("npipe-unit-walk-{}", process_id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(base.join("a/b")).unwrap();
        std::os::unix::fs::symlink(base.join("a/b"), base.join("link")).unwrap();
        let (dir, ancestors) = Dir::open_walking(&base.join("a/b")).unwrap();
        let link = Dir::open_walking(&base.join("link")).map(|_| ());
        let _ = std::fs::remove_dir_all(&base);
        let canon = base.canonicalize().unwrap_or(base.clone());
        assert_eq!(dir.path().file_name().unwrap(), "b");
        let paths: Vec<_> = ancestors.iter().map(|(p, _)| p.clone()).collect();
        assert_eq!(paths.first().unwrap(), Path::new("/"));
        assert_eq!(paths.last().unwrap(), &canon.join("a"));
        assert_eq!(paths.len(), canon.join("a").components().count());
        // O_DIRECTORY | O_NOFOLLOW on a link: ENOTDIR (ELOOP without O_DIRECTORY).
        let e = link.unwrap_err().raw_os_error();
        assert!(
            matches!(e, Some(libc::ENOTDIR) | Some(libc::ELOOP)),
            "{e:?}"
        );
    }

    /// The pidfd of a connected peer names that process: ours here, alive;
    /// a child's, exited once it is reaped.
    #[test]
    fn pidfds_follow_the_process_not_the_pid() {
        let (a, _b) = Socket::pair().unwrap();
        // Kernels before 6.5 have no SO_PEERPIDFD (None).
        if let Some(fd) = a.peer_pidfd().unwrap() {
            assert!(!pidfd_exited(&fd).unwrap());
        }
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let fd = pidfd_of(child.id()).unwrap();
        child.wait().unwrap();
        assert!(pidfd_exited(&fd).unwrap());
        // Where pidfs gives inodes, two processes never share one.
        let mine = pidfd_of(process_id()).unwrap();
        if let (Some(a), Some(b)) = (pidfd_inode(&mine), pidfd_inode(&fd)) {
            assert_ne!(a, b);
            assert_eq!(pidfd_inode(&pidfd_of(process_id()).unwrap()), Some(a));
        }
    }

    #[test]
    fn pair_credentials_are_ours() {
        let (a, _b) = Socket::pair().unwrap();
        let c = a.peer_cred().unwrap();
        assert_eq!(c.pid, process_id());
        assert_eq!(c.user.0, effective_uid());
        // SO_PEERGROUPS: the supplementary groups we had at connect.
        let mut groups = a.peer_groups().unwrap();
        let mut ours = thread_ids().unwrap().groups;
        groups.sort_unstable();
        ours.sort_unstable();
        assert_eq!(groups, ours);
    }

    #[test]
    fn outq_counts_unread_bytes() {
        let (a, b) = Socket::pair().unwrap();
        a.send(b"hello").unwrap();
        assert!(a.unread_by_peer().unwrap() > 0);
        assert_eq!(b.readable_bytes().unwrap(), 5);
        let mut buf = [0; 5];
        assert_eq!(b.recv(&mut buf).unwrap(), 5);
        assert_eq!(a.unread_by_peer().unwrap(), 0);
    }

    #[test]
    fn root_has_a_name() {
        assert_eq!(user_name(0).as_deref(), Some("root"));
        assert_eq!(uid_of_user("root"), Some(0));
        assert_eq!(gid_of_group("root"), Some(0));
        assert_eq!(uid_of_user("no-such-user-npipe"), None);
        assert_eq!(gid_of_group("no-such-group-npipe"), None);
    }
}
