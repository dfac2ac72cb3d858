//! What both acceptors do to a fresh connection's socket before the
//! application sees it: ask the kernel who the peer is, send the one reply,
//! and, for a granted client, take its shared-memory offer if sound, hold
//! it to its grant in the kernel and make it ready for `accept`. (What to
//! do with it is the engine's `AcceptorCore`.)

use std::io;
use std::time::Duration;

use crate::error::ErrorCode;
use crate::listener_state::Ready;
use crate::options::ServerOptions;
use crate::peer_process::ClientProcess;
use crate::policy::Peer;
use crate::proto::handshake::{Hello, PipeDescription, Reply, HELLO_MAX};
use crate::shm::transport::{take_offer, PeerFd};
use crate::sys::{self, Socket};
use crate::types::Access;

/// Most connections an acceptor takes from the kernel per wake-up, so that
/// handshakes in progress are not starved by a connect storm.
pub(crate) const ACCEPT_BATCH: usize = 64;
/// How long an acceptor stops accepting after running out of descriptors.
pub(crate) const FD_EXHAUSTED_PAUSE: Duration = Duration::from_millis(100);
/// Room for a handshake's first read: the HELLO is small, but a request may
/// be pipelined behind it.
pub(crate) const HELLO_READ: usize = HELLO_MAX + 4096;

/// Where an acceptor's first read of each connection lands: zeroed once
/// (`recvmsg` wants initialised memory) instead of a fresh buffer zeroed
/// per connection; only what came is kept.
pub(crate) struct FirstRead(Box<[u8]>);

impl FirstRead {
    pub(crate) fn new() -> FirstRead {
        FirstRead(vec![0; HELLO_READ].into_boxed_slice())
    }

    /// Reads what `socket` holds without waiting: the bytes, and a memory
    /// file that rode with them (a shared-memory offer; any other
    /// descriptor is closed elsewhere, counted against `sender`).
    pub(crate) fn take(
        &mut self,
        socket: &Socket,
        sender: u32,
    ) -> io::Result<(Vec<u8>, Option<std::os::fd::OwnedFd>)> {
        let (n, fd) = socket.recv_with_fd(&mut self.0, sender)?;
        Ok((self.0[..n].to_vec(), fd))
    }
}

impl std::fmt::Debug for FirstRead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FirstRead")
    }
}

/// A client whose HELLO an acceptor read, as both acceptors hold it until
/// the engine grants it an instance.
#[derive(Debug)]
pub(crate) struct Arrived {
    pub socket: Socket,
    /// Who the kernel says the client is.
    pub peer: Peer,
    pub process: ClientProcess,
    pub hello: Hello,
    /// What the client sent behind its HELLO.
    pub leftover: Vec<u8>,
    /// A descriptor that rode with the HELLO's first bytes: the client's
    /// shared-memory offer, if it is one (PROTOCOL.md §6a).
    pub offer: Option<PeerFd>,
}

impl Arrived {
    /// Tells the granted client OK, taking its shared-memory offer where
    /// that is sound and wanted (by a server end woken through its socket
    /// if `socket_woken`: a tokio one), and makes it ready for `accept`.
    /// `None` if it could not be told (it left): the instance is not taken.
    pub(crate) fn tell_ok(
        mut self,
        mut desc: PipeDescription,
        granted: Access,
        opts: &ServerOptions,
        socket_woken: bool,
    ) -> Option<Ready> {
        let cur_instances = desc.cur_instances;
        // An offer is taken only where nothing is pipelined behind the
        // HELLO (that would be on the socket), and only if it is sound.
        let offered = self.offer.is_some();
        let shm = self
            .offer
            .take()
            .filter(|_| opts.takes_shared_memory() && self.leftover.is_empty())
            .and_then(|fd| take_offer(fd, socket_woken).ok());
        desc.rings_taken(shm.is_some());
        // An end that kept the socket takes an offer later; not a gateway's
        // hand-over (no local client), nor a connection with a request
        // pipelined behind the HELLO (part of it may still be on the socket,
        // where the client's count of its socket bytes does not include it).
        // Nor one whose offer with the HELLO was not taken: what failed
        // then (a mapping, a descriptor) would fail again later, and a late
        // offer cannot be declined.
        desc.late_offers =
            opts.takes_shared_memory() && !offered && !desc.handed_over && !self.hello.pipelined;
        let late_offers = desc.late_offers;
        #[cfg(feature = "remote")]
        let handed_over = desc.handed_over;
        if !connect(&self.socket, desc, granted, &mut self.leftover, opts) {
            return None;
        }
        Some(Ready {
            socket: self.socket,
            leftover: self.leftover,
            cred: self.peer.cred,
            process: self.process,
            hello: self.hello,
            granted,
            cur_instances,
            shm,
            late_offers,
            // Looked up by `accept`, on its caller's thread (the tokio
            // acceptor looks it up before, off the runtime's threads).
            remote: None,
            #[cfg(feature = "remote")]
            handed_over,
            #[cfg(feature = "remote")]
            settled: None,
        })
    }
}

/// Tells a granted client OK and readies its socket for the application:
/// held to its grant, and sized as the server's out-buffer asks. `false` if
/// the client could not be told (it left): the instance is not taken.
fn connect(
    socket: &Socket,
    desc: PipeDescription,
    granted: Access,
    leftover: &mut Vec<u8>,
    opts: &ServerOptions,
) -> bool {
    let keep_reading = desc.shared_memory || desc.handed_over;
    if !send_reply(socket, &Reply::Connected(desc)) {
        return false;
    }
    // Over the rings the socket carries wake-ups both ways, and a gateway
    // that hands the connection over sends the HAND-OFF on it, so it stays
    // open for reading: what a client that may not write sends is never
    // read (the reader has no right to), and the ring or TCP bounds it.
    if !keep_reading {
        fence_to_grant(socket, granted, leftover);
    }
    if opts.out_buffer_size > 0 {
        let _ = socket.set_send_buffer(opts.out_buffer_size as usize);
    }
    true
}

/// Whether an accept failed for want of descriptors.
pub(crate) fn out_of_descriptors(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE))
}

/// Whether an accept failed for want of descriptors or of kernel memory
/// (`ENOBUFS`, `ENOMEM`): the listener stays readable, so an acceptor that
/// only tried again would spin; it pauses instead, as out of descriptors.
pub(crate) fn accept_starved(e: &io::Error) -> bool {
    out_of_descriptors(e) || matches!(e.raw_os_error(), Some(libc::ENOBUFS) | Some(libc::ENOMEM))
}

/// Out of descriptors, the classic spare-descriptor trick: gives `spare` up
/// to accept every client waiting in the kernel's backlog and tell it
/// *pipe busy* (rather than leave it hanging there), then takes a spare
/// back. Where there was no spare, only tries to take one.
pub(crate) fn refuse_while_out_of_descriptors(
    spare: &mut Option<std::os::fd::OwnedFd>,
    mut accept: impl FnMut() -> io::Result<Socket>,
) {
    if spare.take().is_some() {
        while let Ok(socket) = accept() {
            refuse(
                &socket,
                ErrorCode::PipeBusy,
                "the server has run out of file descriptors; try again later",
            );
        }
    }
    *spare = sys::spare_fd().ok();
}

/// Sends a reply on a fresh connection without blocking; whether it all went.
/// (The tokio acceptor answers with this too.)
pub(crate) fn send_reply(socket: &Socket, reply: &Reply) -> bool {
    let mut out = Vec::with_capacity(128);
    if reply.encode(&mut out).is_err() {
        return false;
    }
    // A new connection's send buffer is empty and the reply is small, so it
    // goes in one call or the client is not worth waiting for.
    matches!(socket.send_nonblocking(&out), Ok(n) if n == out.len())
}

/// Holds a granted socket connection to its grant in the kernel, not only
/// in the server's own code (over the rings the socket carries wake-ups and
/// stays open): a client that may not write has the server's read side shut,
/// so its writes fail with a broken pipe instead of queueing where the
/// server will never read them, and whatever it sent behind its HELLO is
/// dropped unread. (A client that may not read is never sent anything: the
/// server end's writes fail with *access denied*, see `Setup::rights`.)
pub(crate) fn fence_to_grant(socket: &Socket, granted: Access, leftover: &mut Vec<u8>) {
    if !granted.writes() {
        leftover.clear();
        leftover.shrink_to_fit();
        // Cannot fail on a connected socket; were it to, the server end
        // still never reads (its reader has no right to).
        let _ = socket.shutdown_read();
    }
}

/// Who the kernel says a new connection's peer is: `SO_PEERCRED`, and
/// `SO_PEERGROUPS` if the descriptor names groups. `None` if the kernel
/// will not say (the peer is already gone): drop it.
pub(crate) fn peer_of(socket: &Socket, opts: &ServerOptions, server_uid: u32) -> Option<Peer> {
    let cred = socket.peer_cred().ok()?;
    let groups = if opts.security.mentions_groups() {
        socket.peer_groups().ok()?
    } else {
        Vec::new()
    };
    Some(Peer {
        cred,
        groups,
        server_uid,
    })
}

/// Refuses a fresh connection with `code`, saying why.
pub(crate) fn refuse(socket: &Socket, code: ErrorCode, reason: &str) {
    send_reply(
        socket,
        &Reply::Refused {
            code: code.win32(),
            reason: reason.to_string(),
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errno(n: i32) -> io::Error {
        io::Error::from_raw_os_error(n)
    }

    /// Both acceptors pause on these, where trying again at once would
    /// spin on a listener that stays readable; a client's fallback (a dial
    /// without its region) is for descriptors alone.
    #[test]
    fn an_accept_short_of_kernel_memory_pauses_as_one_short_of_descriptors() {
        for n in [libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::ENOMEM] {
            assert!(accept_starved(&errno(n)), "errno {n}");
        }
        for n in [libc::EAGAIN, libc::ECONNABORTED, libc::EINTR, libc::EPROTO] {
            assert!(!accept_starved(&errno(n)), "errno {n}");
        }
        assert!(!out_of_descriptors(&errno(libc::ENOBUFS)));
    }
}
