//! Registering sockets with tokio's reactor (feature `tokio`). tokio's
//! registration is `unsafe` (it must be handed a descriptor that stays open
//! and the same while registered), so it lives here with the other
//! `unsafe` code, behind two safe functions over owned descriptors.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use super::Socket;

/// A socket owned by tokio's reactor registration.
#[derive(Debug)]
pub struct Fd(Socket);

impl Fd {
    /// The socket.
    pub fn socket(&self) -> &Socket {
        &self.0
    }

    /// The socket, back from the registration.
    pub fn into_socket(self) -> Socket {
        self.0
    }
}

impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

/// Registers `socket` with the current runtime's reactor for `interest`
/// (needs a tokio runtime with I/O enabled). A socket registered for
/// reading alone is not woken each time its peer makes room to write (a
/// Unix stream socket signals that on every read its peer makes).
pub fn register_for(socket: Socket, interest: Interest) -> io::Result<AsyncFd<Fd>> {
    // SAFETY: `Fd` owns the socket's `OwnedFd`, which nothing can close or
    // replace while the `AsyncFd` holds it (a `Socket` never swaps its
    // descriptor), so `as_raw_fd` names the same open descriptor until the
    // `AsyncFd` is dropped or `into_inner` gives the socket back.
    unsafe { AsyncFd::register_with_interest(Fd(socket), interest) }.map_err(|e| e.into_parts().1)
}

/// Registers a descriptor (a duplicate used only to watch for hang-up) for
/// reading.
pub fn register_owned(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: the `AsyncFd` owns the `OwnedFd`, which stays open and the
    // same until the `AsyncFd` is dropped or gives it back.
    unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }.map_err(|e| e.into_parts().1)
}
