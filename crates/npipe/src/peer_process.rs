//! The peer process behind a connection, told apart from any later holder
//! of its pid (pidfds, pidfs inodes), and the logon session it belongs to:
//! `GetNamedPipeClientSessionId` and friends on the Unix backend.

use crate::info::PeerCredentials;
use crate::sys;

impl PeerCredentials {
    /// The logon session of the process with this pid now (see
    /// [`PipeServer::client_session_id`](crate::PipeServer::client_session_id)
    /// for what it means), if it still runs. Looked up now, by pid: a pid
    /// is a hint, never proof; the server ends' `*_session_id` methods use
    /// the process the kernel recorded at connect instead.
    pub fn session_id(&self) -> Option<u32> {
        session_of(self.pid, sys::pidfd_of(self.pid).ok().as_ref())
    }
}

/// A Windows-style logon session number from an audit session id: the
/// audit session (shared by every process of one login, as a Windows logon
/// session is), and 0 for a process that came from no login (`u32::MAX`,
/// "unset": services and containers), as Windows' services live in
/// session 0.
pub(crate) fn logon_session(audit: u32) -> u32 {
    if audit == u32::MAX {
        0
    } else {
        audit
    }
}

/// This process's own logon session (see [`logon_session`]).
pub(crate) fn own_session() -> Option<u32> {
    sys::own_audit_session().ok().map(logon_session)
}

/// The logon session of the process whose pid (as the kernel gave it to
/// us) is `pid` and which `pidfd`, if any, names. Where `/proc` numbers
/// processes differently from us, only the pidfd can say which `/proc`
/// entry is that process's: without one there is no answer.
fn session_of(pid: u32, pidfd: Option<&std::os::fd::OwnedFd>) -> Option<u32> {
    let proc_pid = if sys::proc_numbers_like_us() {
        pid
    } else {
        sys::proc_pid_of(pidfd?).ok()?
    };
    sys::audit_session(proc_pid).ok().map(logon_session)
}

/// The peer process as it was when it connected, captured once: a pid is
/// only a hint (it can be reused by another process, a set-user-ID program
/// say, while the connection lives), so this keeps what names the
/// connecting process and no other (its pidfd, or the pidfd's pidfs inode)
/// and the logon session read at that moment.
#[derive(Debug, Default)]
pub(crate) struct PeerProcess {
    pid: u32,
    tracking: Tracking,
    session: Option<u32>,
}

/// A server end's client process, captured when first asked about where
/// the kernel names the process that connected itself (`SO_PEERPIDFD`: the
/// socket keeps the connector, not its pid, so a later capture still finds
/// that process and no other, or finds it gone), and at accept where it
/// cannot (then only the pid names it, and the sooner it is pinned the
/// better). Most servers never ask: capturing every client at accept was
/// 8 % of `npipe bench connect_rate` (a pidfd made, inspected and closed
/// per connection).
#[derive(Debug)]
pub(crate) struct ClientProcess {
    pid: u32,
    captured: std::sync::OnceLock<PeerProcess>,
}

impl ClientProcess {
    /// For a server end fresh from accept, on `socket`, whose `SO_PEERCRED`
    /// pid is `pid`.
    pub fn at_accept(socket: &sys::Socket, pid: u32) -> ClientProcess {
        let captured = std::sync::OnceLock::new();
        if !sys::Socket::kernel_names_peer_processes() {
            let _ = captured.set(PeerProcess::capture(socket, pid));
        }
        ClientProcess { pid, captured }
    }

    /// `f` of the process, captured now (by `capture`, given its kernel
    /// pid) if it was not yet. A capture the kernel could not make just now
    /// is answered from but not kept.
    pub fn with<T>(
        &self,
        capture: impl FnOnce(u32) -> PeerProcess,
        f: impl FnOnce(&PeerProcess) -> T,
    ) -> T {
        if let Some(kept) = self.captured.get() {
            return f(kept);
        }
        let fresh = capture(self.pid);
        if matches!(fresh.tracking, Tracking::NotNow) {
            return f(&fresh);
        }
        f(self.captured.get_or_init(|| fresh))
    }
}

/// The logon sessions of the processes that connected last, by pidfs inode.
static SESSIONS: SessionCache = SessionCache::new();

/// A small cache of logon sessions by pidfs inode (unique to one process
/// for the whole boot, so an entry never names another process). A
/// process's audit session changes only if a privileged process rewrites its
/// `loginuid`, which a cached entry would not see.
struct SessionCache(std::sync::Mutex<std::collections::VecDeque<(u64, u32)>>);

impl SessionCache {
    const SIZE: usize = 64;

    const fn new() -> SessionCache {
        SessionCache(std::sync::Mutex::new(std::collections::VecDeque::new()))
    }

    fn get(&self, inode: u64) -> Option<u32> {
        let cache = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        cache.iter().find(|&&(i, _)| i == inode).map(|&(_, s)| s)
    }

    fn put(&self, inode: u64, session: u32) {
        let mut cache = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if cache.len() == Self::SIZE {
            cache.pop_front();
        }
        cache.push_back((inode, session));
    }
}

/// How the connecting process is told from a later holder of its pid.
#[derive(Debug, Default)]
enum Tracking {
    /// Its pidfs inode (Linux 6.9): unique for the boot, so nothing is held.
    Inode(u64),
    /// Its pidfd, held open (older kernels: one more descriptor per
    /// connection).
    Pidfd(std::os::fd::OwnedFd),
    /// The process had exited by the time it was captured.
    Gone,
    /// No pidfds (before Linux 5.3).
    #[default]
    Unknown,
    /// The kernel would not say just now (out of descriptors or memory):
    /// not kept, so that a later question asks again.
    NotNow,
}

impl PeerProcess {
    /// Captures the connecting process of `socket`, whose `SO_PEERCRED` pid
    /// is `pid`: a pidfd from `SO_PEERPIDFD` where the kernel has it
    /// (exact), else from `pidfd_open` right away (exact unless the pid was
    /// reused in the instant since connect); its pidfs inode where there is
    /// one (then the pidfd is closed), and the session, read while the
    /// pidfd pins the process.
    pub fn capture(socket: &sys::Socket, pid: u32) -> PeerProcess {
        // pidfd_open by pid only where the kernel lacks SO_PEERPIDFD: any
        // other failure means the peer has gone, and its pid may already be
        // another process's.
        let pidfd = match socket.peer_pidfd() {
            Ok(Some(fd)) => Ok(fd),
            Ok(None) => sys::pidfd_of(pid),
            Err(e) => {
                // ESRCH: the connector has gone. Anything else (EMFILE,
                // ENOMEM) says nothing about it.
                let tracking = if e.raw_os_error() == Some(libc::ESRCH) {
                    Tracking::Gone
                } else {
                    Tracking::NotNow
                };
                return PeerProcess {
                    pid,
                    tracking,
                    session: None,
                };
            }
        };
        let Ok(pidfd) = pidfd else {
            return PeerProcess {
                pid,
                tracking: Tracking::Unknown,
                session: session_of(pid, None),
            };
        };
        let inode = sys::pidfd_inode(&pidfd);
        // A process that connected before has its session remembered under
        // its pidfs inode, which no other process ever has: a connection
        // pool or a busy client costs no /proc read per connection.
        if let Some((ino, session)) = inode.and_then(|i| Some((i, SESSIONS.get(i)?))) {
            return PeerProcess {
                pid,
                tracking: Tracking::Inode(ino),
                session: Some(session),
            };
        }
        let session = session_of(pid, Some(&pidfd));
        // Read after the session: if the process is still running now, the
        // session read was its own, not a successor's.
        if sys::pidfd_exited(&pidfd).unwrap_or(true) {
            return PeerProcess {
                pid,
                tracking: Tracking::Gone,
                session: None,
            };
        }
        let tracking = match inode {
            Some(ino) => {
                if let Some(session) = session {
                    SESSIONS.put(ino, session);
                }
                Tracking::Inode(ino)
            }
            None => Tracking::Pidfd(pidfd),
        };
        PeerProcess {
            pid,
            tracking,
            session,
        }
    }

    /// The session id read at capture.
    pub fn session(&self) -> Option<u32> {
        self.session
    }

    /// Whether the process that connected still runs: `None` if this
    /// kernel cannot tell.
    pub fn still_running(&self) -> Option<bool> {
        match &self.tracking {
            Tracking::Pidfd(fd) => sys::pidfd_exited(fd).ok().map(|exited| !exited),
            Tracking::Inode(ino) => {
                // Whatever has the pid now: the same process only if it is
                // the same pidfs inode, and not exited (a zombie).
                let Ok(now) = sys::pidfd_of(self.pid) else {
                    return Some(false);
                };
                let same = sys::pidfd_inode(&now) == Some(*ino);
                Some(same && !sys::pidfd_exited(&now).unwrap_or(true))
            }
            Tracking::Gone => Some(false),
            Tracking::Unknown | Tracking::NotNow => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_cache_keeps_the_latest_processes() {
        let cache = SessionCache::new();
        for ino in 0..(SessionCache::SIZE as u64 + 10) {
            cache.put(ino, ino as u32 + 1000);
        }
        assert_eq!(cache.get(0), None, "the oldest went");
        assert_eq!(cache.get(9), None);
        assert_eq!(cache.get(10), Some(1010));
        let last = SessionCache::SIZE as u64 + 9;
        assert_eq!(cache.get(last), Some(last as u32 + 1000));
    }

    #[test]
    fn a_process_from_no_login_is_in_session_zero() {
        assert_eq!(logon_session(u32::MAX), 0);
        assert_eq!(logon_session(7), 7);
    }

    /// Our own process, captured as a peer through a socket pair: its
    /// session is ours, it is running, and a second capture agrees.
    #[test]
    fn capturing_our_own_process() {
        let (a, _b) = sys::Socket::pair().unwrap();
        let me = std::process::id();
        for _ in 0..2 {
            let p = PeerProcess::capture(&a, me);
            assert_eq!(p.session(), own_session());
            assert_eq!(p.still_running(), Some(true));
        }
    }
}
