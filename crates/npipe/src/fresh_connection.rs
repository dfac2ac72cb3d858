//! What both acceptors do to a fresh connection's socket before the
//! application sees it: ask the kernel who the peer is, send the one reply,
//! and hold a granted connection to its grant in the kernel. (What to do
//! with it is the engine's `AcceptorCore`.)

use crate::error::ErrorCode;
use crate::options::ServerOptions;
use crate::policy::Peer;
use crate::proto::handshake::Reply;
use crate::sys::Socket;
use crate::types::Access;

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

/// Holds a granted connection to its grant in the kernel, not only in the
/// server's own code: a client that may not write has the server's read side
/// shut, so its writes fail with a broken pipe instead of queueing where the
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
