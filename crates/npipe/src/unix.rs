//! What only Unix has, the `std::os::unix` way: the numbers behind
//! [`LocalUser`] and [`LocalGroup`], and the uid and gid of a pipe's peer.
//!
//! ```
//! use npipe::unix::{LocalUserExt, LocalGroupExt};
//! use npipe::{LocalGroup, LocalUser};
//!
//! let nobody = LocalUser::from_uid(65534);
//! assert_eq!(nobody.uid(), 65534);
//! assert_eq!(LocalGroup::from_gid(100).gid(), 100);
//! assert_eq!(LocalUser::from(0), LocalUser::ROOT); // a bare number is a uid
//! ```

use crate::identity::{LocalGroup, LocalUser};
use crate::pipe::{ClientEnd, Pipe, PipeIo, PipeRole, ServerEnd};

/// A [`LocalUser`] as a uid.
pub trait LocalUserExt {
    /// The user with this uid.
    fn from_uid(uid: u32) -> Self;
    /// Its uid.
    fn uid(&self) -> u32;
}

/// A [`LocalGroup`] as a gid.
pub trait LocalGroupExt {
    /// The group with this gid.
    fn from_gid(gid: u32) -> Self;
    /// Its gid.
    fn gid(&self) -> u32;
}

impl LocalUserExt for LocalUser {
    fn from_uid(uid: u32) -> LocalUser {
        LocalUser(uid)
    }
    fn uid(&self) -> u32 {
        self.0
    }
}

impl LocalGroupExt for LocalGroup {
    fn from_gid(gid: u32) -> LocalGroup {
        LocalGroup(gid)
    }
    fn gid(&self) -> u32 {
        self.0
    }
}

/// A uid.
impl From<u32> for LocalUser {
    fn from(uid: u32) -> LocalUser {
        LocalUser(uid)
    }
}

/// A gid.
impl From<u32> for LocalGroup {
    fn from(gid: u32) -> LocalGroup {
        LocalGroup(gid)
    }
}

/// The client's uid and gid on a server end.
///
/// ```
/// use npipe::unix::ServerPipeExt;
/// # let name = format!("doc-unix-ext-{}", std::process::id());
/// # let listener = npipe::ServerOptions::new().create(&name)?;
/// # let _client = npipe::ClientOptions::new().open(&name)?;
/// let pipe = listener.accept()?;
/// assert_eq!(pipe.client_uid(), rustix::process::geteuid().as_raw());
/// # Ok::<(), npipe::Error>(())
/// ```
pub trait ServerPipeExt {
    /// The client's effective uid.
    fn client_uid(&self) -> u32;
    /// The client's effective gid.
    fn client_gid(&self) -> u32;
}

/// The server's uid on a client end.
pub trait ClientPipeExt {
    /// The server's effective uid.
    fn server_uid(&self) -> u32;
}

impl<S: PipeIo> ServerPipeExt for Pipe<S, ServerEnd> {
    fn client_uid(&self) -> u32 {
        self.client_user().uid()
    }
    fn client_gid(&self) -> u32 {
        self.client_group().gid()
    }
}

impl<S: PipeIo> ClientPipeExt for Pipe<S, ClientEnd> {
    fn server_uid(&self) -> u32 {
        self.server_user().uid()
    }
}

impl<S: PipeIo, R: PipeRole> std::os::fd::AsFd for Pipe<S, R> {
    /// The connection's socket, for `poll`, `epoll` or a reactor of your
    /// own. Reading or writing it directly bypasses npipe's framing: on a
    /// message pipe, do not.
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.io.socket().as_fd()
    }
}

impl<S: PipeIo, R: PipeRole> std::os::fd::AsRawFd for Pipe<S, R> {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsFd;
        self.as_fd().as_raw_fd()
    }
}
