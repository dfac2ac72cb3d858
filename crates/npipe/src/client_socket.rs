//! What both clients do to their socket during the handshake the engine's
//! `ConnectCore` drives: read the server's kernel identity, and apply the
//! server's buffer hint once it said OK.

use crate::error::{Error, Result};
use crate::info::PeerCredentials;
use crate::sys::Socket;

/// The server's credentials from the kernel (`SO_PEERCRED`), if `wanted`:
/// right after the connect, for the engine to check against
/// `expect_server_user` before a byte goes out. Otherwise the end reads
/// them when first asked.
pub(crate) fn server_cred(socket: &Socket, wanted: bool) -> Result<Option<PeerCredentials>> {
    if !wanted {
        return Ok(None);
    }
    socket
        .peer_cred()
        .map(Some)
        .map_err(|e| Error::os(e, "cannot read the server's credentials"))
}

/// Sizes the socket's send buffer as the server's in-buffer hint asks; a
/// hint the kernel will not take is only a hint.
pub(crate) fn apply_send_buffer(socket: &Socket, bytes: Option<usize>) {
    if let Some(bytes) = bytes {
        let _ = socket.set_send_buffer(bytes);
    }
}
