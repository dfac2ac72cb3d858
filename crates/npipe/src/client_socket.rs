//! What both clients do to their socket during the handshake, around the
//! I/O-free rules of `connect_core`: read the server's kernel identity (and
//! refuse a server of the wrong user before a byte goes out), and apply the
//! server's buffer hint once it said OK.

use crate::connect_core;
use crate::error::{Error, Result};
use crate::info::PeerCredentials;
use crate::name::PipeName;
use crate::options::ClientOptions;
use crate::sys::{self, Socket};

/// The server's credentials from the kernel (`SO_PEERCRED`), read once right
/// after the connect, and checked against `expect_server_user`.
pub(crate) fn server_cred(
    name: &PipeName,
    opts: &ClientOptions,
    socket: &Socket,
) -> Result<PeerCredentials> {
    let cred = socket
        .peer_cred()
        .map_err(|e| Error::os(e, "cannot read the server's credentials"))?;
    connect_core::check_server(name, opts, cred, sys::user_name)?;
    Ok(cred)
}

/// Sizes the socket's send buffer as the server's in-buffer hint asks; a
/// hint the kernel will not take is only a hint.
pub(crate) fn apply_send_buffer(socket: &Socket, bytes: Option<usize>) {
    if let Some(bytes) = bytes {
        let _ = socket.set_send_buffer(bytes);
    }
}
