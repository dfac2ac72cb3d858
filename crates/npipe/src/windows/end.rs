//! One end of a connected instance, as both front ends hold it: the handle
//! and what the kernel answers about it synchronously (info, processes,
//! sessions, users, impersonation). The front ends add the I/O.

use std::sync::Arc;

use super::os;
use crate::error::{Error, ErrorCode, Result};
use crate::identity::{Identity, LocalGroup, LocalUser};
use crate::info::PeerCredentials;
use crate::info::{max_instances_from_wire, End, PipeInfo};
use crate::name::PipeName;
use crate::stream_core::Peek;
use crate::sys::{self, Peer};
use crate::types::{Access, Direction, PipeType, ReadMode};

/// A connected end's handle and state.
#[derive(Debug)]
pub(crate) struct EndState {
    /// Shared with the tokio front end's operations in flight, which must
    /// not outlive the handle.
    pub(crate) pipe: Arc<sys::Pipe>,
    pub(crate) end: End,
    pub(crate) name: String,
    pub(crate) read_mode: ReadMode,
    pub(crate) disconnected: bool,
    /// What this handle may do: the server's from the pipe's direction, a
    /// client's as it was opened.
    pub(crate) access: Access,
    /// The pipe's direction, seen from the server.
    pub(crate) direction: Direction,
    /// The longest message `recv_message` and `transact` gather (the
    /// end's `max_message_size`): a peer's endless message must not take
    /// this process's memory.
    pub(crate) max_message: u32,
}

impl EndState {
    pub(crate) fn new(
        pipe: impl Into<Arc<sys::Pipe>>,
        end: End,
        name: &PipeName,
        read_mode: ReadMode,
        max_message: u32,
        direction: Direction,
        access: Access,
    ) -> Self {
        EndState {
            pipe: pipe.into(),
            end,
            name: name.name().to_string(),
            read_mode,
            disconnected: false,
            max_message,
            access,
            direction,
        }
    }

    /// Refuses I/O on a server end that was disconnected.
    pub(crate) fn connected(&self) -> Result<()> {
        if self.disconnected {
            Err(Error::not_connected())
        } else {
            Ok(())
        }
    }

    /// `SetNamedPipeHandleState`: this end's read mode.
    pub(crate) fn set_read_mode(&mut self, mode: ReadMode) -> Result<()> {
        sys::set_read_mode(&self.pipe, mode).map_err(|e| os(e, "cannot set the read mode"))?;
        self.read_mode = mode;
        Ok(())
    }

    /// `PeekNamedPipe` on what the kernel holds.
    pub(crate) fn peek(&self, buf: &mut [u8]) -> Result<Peek> {
        self.connected()?;
        let (copied, available, message_left) =
            sys::peek(&self.pipe, buf).map_err(|e| os(e, "peek"))?;
        Ok(Peek {
            copied,
            available,
            message_left,
        })
    }

    /// `DisconnectNamedPipe`: the server end can be used no more.
    pub(crate) fn disconnect(&mut self) -> Result<()> {
        self.connected()?;
        self.disconnected = true;
        sys::disconnect(&self.pipe).map_err(|e| os(e, "disconnect"))
    }

    /// `GetNamedPipeInfo` and `GetNamedPipeHandleState`.
    pub(crate) fn info(&self) -> PipeInfo {
        let (_, pipe_type, out_size, in_size, max) =
            sys::pipe_info(&self.pipe).unwrap_or((false, PipeType::Byte, 0, 0, 0));
        PipeInfo {
            name: self.name.clone(),
            end: self.end,
            pipe_type,
            // The kernel keeps them to itself: what the server created, or
            // what the client's open was granted (a client that asked for
            // less than a duplex pipe offers sees it as one-way).
            direction: self.direction,
            access: self.access,
            read_mode: self.read_mode,
            max_instances: max_instances_from_wire(max),
            cur_instances: sys::cur_instances(&self.pipe).unwrap_or(0),
            in_buffer_size: in_size,
            out_buffer_size: out_size,
            max_message_size: 0,
            peer_max_message_size: 0,
        }
    }

    pub(crate) fn process_of(&self, which: Peer) -> u32 {
        sys::process_of(&self.pipe, which).unwrap_or(0)
    }

    pub(crate) fn session_of(&self, which: Peer) -> Option<u32> {
        sys::session_of(&self.pipe, which).ok()
    }

    /// `ImpersonateNamedPipeClient` on this thread, as a guard. One
    /// impersonation per thread at a time, as on Linux.
    pub(crate) fn impersonate(&self) -> Result<Impersonation<'_>> {
        impersonate_on_this_thread(&self.pipe)?;
        Ok(Impersonation {
            _end: std::marker::PhantomData,
            _not_send: std::marker::PhantomData,
        })
    }

    /// The client's user: its token's SID, read while impersonating it at
    /// whatever level it allowed (identification suffices).
    pub(crate) fn client_user(&self) -> LocalUser {
        let user = self
            .impersonate()
            .ok()
            .and_then(|_guard| sys::impersonated_user().ok());
        LocalUser(user.unwrap_or(u32::MAX))
    }

    /// What the client's token says (user, primary group, groups, the
    /// level it allows), read while impersonating it at whatever level it
    /// allowed; `None` if the kernel would not let this thread take it.
    pub(crate) fn client_token(&self) -> Option<sys::TokenFacts> {
        let _guard = self.impersonate().ok()?;
        sys::impersonated_token().ok()
    }

    /// The client's process and token, as the portable credentials.
    pub(crate) fn client_credentials(&self) -> PeerCredentials {
        self.credentials_from(self.client_token().as_ref())
    }

    /// The credentials `token` (the client's, as read) says, with the
    /// client's process.
    pub(crate) fn credentials_from(&self, token: Option<&sys::TokenFacts>) -> PeerCredentials {
        let pid = self.process_of(Peer::Client);
        match token {
            Some(t) => PeerCredentials {
                pid,
                user: LocalUser(t.user),
                group: LocalGroup(t.group),
            },
            None => PeerCredentials {
                pid,
                ..PeerCredentials::UNKNOWN
            },
        }
    }

    /// The server's user: the token of the server's process.
    pub(crate) fn server_user(&self) -> LocalUser {
        let pid = self.process_of(Peer::Server);
        LocalUser(sys::process_user(pid).unwrap_or(u32::MAX))
    }

    /// Refuses a server that is not who `expect_server` named. Windows
    /// connects before anyone can ask who the server is, so the check comes
    /// right after `CreateFile`, before a byte is sent.
    pub(crate) fn check_server(&self, name: &PipeName, expected: &Identity) -> Result<()> {
        let server = self.server_user();
        if expected.local_user() == Some(server) {
            return Ok(());
        }
        Err(Error::new(
            ErrorCode::AccessDenied,
            format!(
                "{name} is served by {server} (pid {}), not by the expected {expected}: \
                 refusing to talk to it (someone else may be squatting the name)",
                self.process_of(Peer::Server)
            ),
        ))
    }
}

/// `ImpersonateNamedPipeClient` on the calling thread, refused if the
/// thread impersonates already. The caller reverts (`RevertToSelf`).
pub(crate) fn impersonate_on_this_thread(pipe: &sys::Pipe) -> Result<()> {
    if sys::thread_impersonates() {
        return Err(Error::new(
            ErrorCode::CannotImpersonate,
            "this thread is impersonating already: drop that guard first",
        ));
    }
    sys::impersonate_client(pipe).map_err(|e| os(e, "cannot impersonate the client"))
}

/// Reverts the calling thread to itself; a thread that cannot must not go
/// on as the client. Not a panic: a runtime that catches panics (tokio's
/// workers do) would carry on with the client's token.
pub(crate) fn revert() {
    if let Err(e) = sys::revert_to_self() {
        eprintln!("npipe: RevertToSelf failed ({e}): aborting rather than go on as the client");
        std::process::abort();
    }
}

/// This thread acting as a pipe's client, from a server's `impersonate`;
/// dropping it reverts (`RevertToSelf`). It cannot leave the thread.
#[derive(Debug)]
pub struct Impersonation<'a> {
    _end: std::marker::PhantomData<&'a EndState>,
    _not_send: std::marker::PhantomData<*const ()>,
}

impl Drop for Impersonation<'_> {
    fn drop(&mut self) {
        revert();
    }
}

/// The synchronous methods every end has, on both front ends: `$t` keeps
/// its [`EndState`] at `self.$($state).+`.
macro_rules! end_queries {
    ($t:ty, $($state:ident).+) => {
        impl $t {
            /// `SetNamedPipeHandleState`: this end's read mode.
            pub fn set_read_mode(&mut self, mode: ReadMode) -> Result<()> {
                self.$($state).+.set_read_mode(mode)
            }
            /// This end's read mode.
            pub fn read_mode(&self) -> ReadMode {
                self.$($state).+.read_mode
            }
            /// `GetNamedPipeInfo` and `GetNamedPipeHandleState`.
            pub fn info(&self) -> PipeInfo {
                self.$($state).+.info()
            }
            /// `GetNamedPipeClientProcessId`.
            pub fn client_process_id(&self) -> u32 {
                self.$($state).+.process_of(Peer::Client)
            }
            /// `GetNamedPipeServerProcessId`.
            pub fn server_process_id(&self) -> u32 {
                self.$($state).+.process_of(Peer::Server)
            }
            /// `GetNamedPipeClientSessionId`.
            pub fn client_session_id(&self) -> Option<u32> {
                self.$($state).+.session_of(Peer::Client)
            }
            /// `GetNamedPipeServerSessionId`.
            pub fn server_session_id(&self) -> Option<u32> {
                self.$($state).+.session_of(Peer::Server)
            }
        }
    };
}

/// The server end's identity methods, on both front ends.
macro_rules! server_queries {
    ($t:ty, $($state:ident).+) => {
        impl $t {
            /// The client's user name (`GetNamedPipeHandleState`'s
            /// `lpUserName`), if the kernel could tell it (the client must
            /// allow impersonation).
            pub fn client_user_name(&self) -> Option<String> {
                crate::sys::client_user_name(&self.$($state).+.pipe).ok()
            }
            /// The client's user: its token's SID, read while impersonating
            /// it at whatever level it allowed (identification suffices). A
            /// user that cannot be told is
            /// [`PeerCredentials`](crate::PeerCredentials)' unknown one,
            /// `u32::MAX` inside.
            pub fn client_user(&self) -> LocalUser {
                self.$($state).+.client_user()
            }
            /// Who is at the other end: the client's user.
            pub fn peer_identity(&self) -> Identity {
                Identity::Local(self.client_user())
            }
            /// The client's process (`GetNamedPipeClientProcessId`), user
            /// and primary group (from its token). What cannot be told is
            /// [`PeerCredentials`](crate::PeerCredentials)' unknown ids.
            pub fn client_credentials(&self) -> crate::PeerCredentials {
                self.$($state).+.client_credentials()
            }
            /// The client's primary group (its token's).
            pub fn client_group(&self) -> crate::LocalGroup {
                self.client_credentials().group
            }
            /// The groups of the client's token.
            pub fn client_groups(&self) -> Result<Vec<crate::LocalGroup>> {
                let facts = self.$($state).+.client_token().ok_or_else(|| {
                    crate::Error::new(
                        crate::ErrorCode::CannotImpersonate,
                        "cannot read the client's token (ImpersonateNamedPipeClient failed)",
                    )
                })?;
                Ok(facts.groups.into_iter().map(crate::LocalGroup).collect())
            }
            /// Everything known about the client, in one go (its token
            /// read once).
            pub fn client_identity(&self) -> crate::ClientIdentity {
                let token = self.$($state).+.client_token();
                crate::ClientIdentity {
                    credentials: self.$($state).+.credentials_from(token.as_ref()),
                    groups: token
                        .map(|t| t.groups.into_iter().map(crate::LocalGroup).collect())
                        .unwrap_or_default(),
                    user_name: self.client_user_name(),
                    session_id: self.client_session_id(),
                }
            }
            /// The level the client allows for its identity (its token's
            /// impersonation level: identification, or impersonation and
            /// above).
            pub fn client_impersonation_level(&self) -> crate::ImpersonationLevel {
                self.$($state).+
                    .client_token()
                    .map_or(crate::ImpersonationLevel::Identification, |t| t.level)
            }
            /// Starts `cmd` as the client (`CreateProcessAsUser` with the
            /// client's token made primary), for good: the process runs as
            /// the client's user with its groups and privileges. It gets
            /// only the environment variables set on `cmd` (as if
            /// `env_clear` had been called: a process of the client's must
            /// not see the server's secrets), the directory set on `cmd`
            /// or the server's, and pipes for its standard input, output
            /// and error ([`ClientProcess`](crate::ClientProcess)'s
            /// fields); `cmd`'s standard stream settings are not read.
            ///
            /// The program is looked for in the `PATH` set on `cmd` and the
            /// system directory, never in the server's directories; batch
            /// files are refused (run them as `cmd.exe /C`). The child runs
            /// on the server's window station and desktop, which a client's
            /// token may not be allowed to use (a service's: the child then
            /// fails to start, `0xC0000142`).
            ///
            /// Needs `SeAssignPrimaryTokenPrivilege` (a service running as
            /// LocalSystem has it; a client of the server's own logon
            /// session does without), else `ERROR_PRIVILEGE_NOT_HELD`
            /// (1314), and a client that allowed impersonation
            /// (`ERROR_CANNOT_IMPERSONATE`, 1368). The client's token is
            /// taken on the calling thread, which must not be impersonating
            /// already.
            pub fn spawn_as_client(
                &self,
                cmd: &mut std::process::Command,
            ) -> Result<crate::ClientProcess> {
                self.$($state).+.connected()?;
                crate::windows::spawn::spawn_as_client(&self.$($state).+.pipe, cmd)
            }
            /// `GetNamedPipeClientComputerName`: `None` for a client on
            /// this machine.
            pub fn client_computer_name(&self) -> Option<String> {
                crate::sys::client_computer_name(&self.$($state).+.pipe).ok()
            }
        }
    };
}

/// The client end's identity methods, on both front ends.
macro_rules! client_queries {
    ($t:ty, $($state:ident).+) => {
        impl $t {
            /// The server's user: the token of the server's process.
            pub fn server_user(&self) -> LocalUser {
                self.$($state).+.server_user()
            }
            /// The server's user name, if the system can tell it.
            pub fn server_user_name(&self) -> Option<String> {
                self.server_user().name()
            }
            /// Who is at the other end: the server's user.
            pub fn peer_identity(&self) -> Identity {
                Identity::Local(self.server_user())
            }
        }
    };
}

pub(crate) use {client_queries, end_queries, server_queries};
