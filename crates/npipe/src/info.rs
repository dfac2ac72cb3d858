//! What an end knows about its pipe (`GetNamedPipeInfo`,
//! `GetNamedPipeHandleState`) and about its peer (`GetNamedPipeClientProcessId`
//! and friends).

use crate::identity::{LocalGroup, LocalUser};
use crate::types::{Access, Direction, PipeType, ReadMode, UNLIMITED_INSTANCES};

/// Which end of a pipe a handle is (`PIPE_SERVER_END` / `PIPE_CLIENT_END`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum End {
    /// The server's end.
    Server,
    /// The client's end.
    Client,
}

/// A description of a pipe from one end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipeInfo {
    /// The pipe's name as the server created it.
    pub name: String,
    /// This end.
    pub end: End,
    /// Byte or message type.
    pub pipe_type: PipeType,
    /// The open mode, seen from the server.
    pub direction: Direction,
    /// What this end may do.
    pub access: Access,
    /// This end's read mode.
    pub read_mode: ReadMode,
    /// The instance limit; `None` for unlimited.
    pub max_instances: Option<u32>,
    /// Instances in use (on the client end: when it connected).
    pub cur_instances: u32,
    /// The server's inbound buffer size hint (0: system default).
    pub in_buffer_size: u32,
    /// The server's outbound buffer size hint (0: system default).
    pub out_buffer_size: u32,
    /// The largest message this end accepts.
    pub max_message_size: u32,
    /// The largest message the other end accepts.
    pub peer_max_message_size: u32,
}

/// A listener's `GetNamedPipeInfo`: the pipe as created, with `active`
/// instances in use.
pub(crate) fn listener_info(
    opts: &crate::options::ServerOptions,
    name: &crate::name::PipeName,
    active: u32,
) -> PipeInfo {
    let d = opts.direction;
    PipeInfo {
        name: name.name().to_string(),
        end: End::Server,
        pipe_type: opts.pipe_type,
        direction: d,
        access: d.server_access(),
        read_mode: opts.effective_read_mode(),
        max_instances: max_instances_from_wire(opts.max_instances),
        cur_instances: active,
        in_buffer_size: opts.in_buffer_size,
        out_buffer_size: opts.out_buffer_size,
        max_message_size: opts.max_message_size,
        peer_max_message_size: 0,
    }
}

pub(crate) fn max_instances_from_wire(n: u32) -> Option<u32> {
    (n != UNLIMITED_INSTANCES).then_some(n)
}

/// The peer's identity as the kernel reported it when the connection was
/// made (`SO_PEERCRED`), never what the peer claims.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PeerCredentials {
    /// The peer's process id.
    pub pid: u32,
    /// The peer's effective user.
    pub user: LocalUser,
    /// The peer's effective group.
    pub group: LocalGroup,
}

impl PeerCredentials {
    /// What is said where the kernel would not tell: pid 0 and the ids
    /// `(uid_t)-1`, which name no user or group.
    pub(crate) const UNKNOWN: PeerCredentials = PeerCredentials {
        pid: 0,
        user: LocalUser(u32::MAX),
        group: LocalGroup(u32::MAX),
    };

    /// The user's name, if the system's user database has one.
    pub fn user_name(&self) -> Option<String> {
        self.user.name()
    }
}

/// Everything a server knows about a connected client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    /// Process, user and group from `SO_PEERCRED`.
    pub credentials: PeerCredentials,
    /// Supplementary groups from `SO_PEERGROUPS`.
    pub groups: Vec<LocalGroup>,
    /// The user's name, if the user database has one.
    pub user_name: Option<String>,
    /// The client process's session id (`GetNamedPipeClientSessionId`).
    pub session_id: Option<u32>,
}
