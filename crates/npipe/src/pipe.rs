//! The public pipe end types, one family for every front end: a
//! [`Pipe`] is a front end's connection I/O (`S`: blocking or tokio today,
//! a Windows handle or a remote transport later) and a role (`R`: the
//! server end, which holds an instance, or the client end).
//! [`PipeServer`](crate::PipeServer) is `Pipe<PipeStream, ServerEnd>`,
//! [`tokio::PipeClient`](crate::tokio::PipeClient) is
//! `Pipe<tokio::PipeStream, ClientEnd>`, and so on.
//!
//! What depends on the role only (who the peer is, `DisconnectNamedPipe`,
//! starting a process as the client, `info`) is written here once for
//! every front end; each front end writes its own reads and writes (sync or
//! async) on `Pipe<its stream, R>`. No method reaches the stream through
//! `Deref`: every one is on the type the user holds.

use crate::error::{Error, ErrorCode, Result};
use crate::identity::{Identity, LocalGroup, LocalUser};
use crate::info::{PeerCredentials, PipeInfo};
use crate::peer_process::PeerProcess;
use crate::remote_peer::RemotePeer;
use crate::server_instance::ServerInstance;
use crate::stream_core::EndCore;
use crate::sys::Socket;
use sealed::Role as _;

/// A connected pipe end: a front end's connection I/O `S` in a role `R`.
/// Use it through the names each front end gives it:
/// [`PipeServer`](crate::PipeServer) and [`PipeClient`](crate::PipeClient),
/// [`tokio::PipeServer`](crate::tokio::PipeServer) and
/// [`tokio::PipeClient`](crate::tokio::PipeClient).
///
/// ```
/// use npipe::{ClientOptions, PipeClient, PipeServer, ServerOptions};
///
/// let name = format!("doc-pipe-{}", std::process::id());
/// let listener = ServerOptions::new().create(&name)?;
/// let mut client: PipeClient = ClientOptions::new().open(&name)?;
/// let mut server: PipeServer = listener.accept()?;
/// client.write_message(b"ping")?;
/// assert_eq!(server.recv_message()?, b"ping");
/// assert_eq!(server.client_process_id(), client.client_process_id());
/// # Ok::<(), npipe::Error>(())
/// ```
pub struct Pipe<S, R> {
    pub(crate) io: S,
    pub(crate) role: R,
}

impl<S: std::fmt::Debug, R: std::fmt::Debug> std::fmt::Debug for Pipe<S, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipe")
            .field("io", &self.io)
            .field("role", &self.role)
            .finish()
    }
}

/// The server end's role: the pipe instance it holds from accept until
/// `disconnect` or drop.
#[derive(Debug)]
pub struct ServerEnd {
    pub(crate) instance: ServerInstance,
}

/// The client end's role.
#[derive(Debug)]
pub struct ClientEnd {
    _private: (),
}

impl ClientEnd {
    pub(crate) fn new() -> ClientEnd {
        ClientEnd { _private: () }
    }
}

/// What a front end's connection I/O gives the portable methods. Sealed:
/// only npipe's front ends have it.
pub trait PipeIo: sealed::EndIo {}

/// A pipe end's role. Sealed: [`ServerEnd`] or [`ClientEnd`].
pub trait PipeRole: sealed::Role {}

/// The sealed [`sealed::EndIo`] and [`PipeIo`] of a Unix front end's
/// stream: its `end` field, the socket its `$link` field carries, and its
/// `disconnect_client` as `DisconnectNamedPipe`'s cut.
#[cfg(target_os = "linux")]
macro_rules! socket_end_io {
    ($stream:ty, $link:ident) => {
        #[allow(private_interfaces)] // sealed: see `sealed::EndIo`
        impl $crate::pipe::sealed::EndIo for $stream {
            fn end(&self) -> &$crate::stream_core::EndCore {
                &self.end
            }
            fn socket(&self) -> &$crate::sys::Socket {
                self.$link.socket()
            }
            fn cut_client(&mut self) {
                self.disconnect_client();
            }
        }

        impl $crate::pipe::PipeIo for $stream {}
    };
}
#[cfg(target_os = "linux")]
pub(crate) use socket_end_io;

pub(crate) mod sealed {
    use super::*;

    /// The connection I/O of a front end, as the portable methods need it.
    /// Its crate-private types are fine in this `pub` trait: the module is
    /// private, so no one outside the crate can name or call it.
    #[allow(private_interfaces)]
    pub trait EndIo {
        /// The end's reads' and writes' state.
        fn end(&self) -> &EndCore;
        /// `DisconnectNamedPipe`'s cut: the disconnect mark, then shut.
        fn cut_client(&mut self);
        /// The connected socket, on which the rest defaults (a backend
        /// without one, Windows', overrides them).
        fn socket(&self) -> &Socket;

        /// The peer's credentials from the kernel at connect time (read
        /// from the socket the first time where the connect did not).
        fn peer(&self) -> PeerCredentials {
            self.end().peer(|| {
                // SO_PEERCRED answers on any connected Unix socket, the
                // peer gone or not; were it ever to fail, no uid is claimed.
                self.socket()
                    .peer_cred()
                    .unwrap_or(PeerCredentials::UNKNOWN)
            })
        }
        /// The pipe as this end sees it.
        fn stream_info(&self) -> PipeInfo {
            self.end().info()
        }
        /// The peer's supplementary groups, from the kernel.
        fn peer_groups(&self) -> std::io::Result<Vec<u32>> {
            self.socket().peer_groups()
        }
        /// The peer process, told apart from any later holder of `pid`.
        fn capture_peer(&self, pid: u32) -> PeerProcess {
            PeerProcess::capture(self.socket(), pid)
        }
    }

    /// What a role adds to the end's view of the pipe.
    pub trait Role {
        fn complete_info(&self, info: &mut PipeInfo);
        /// The remote client a gateway connected for (server ends only).
        #[allow(private_interfaces)]
        fn remote(&self) -> Option<&RemotePeer> {
            None
        }
    }
}

impl sealed::Role for ServerEnd {
    fn complete_info(&self, info: &mut PipeInfo) {
        info.cur_instances = self.instance.active_now();
    }
    #[allow(private_interfaces)]
    fn remote(&self) -> Option<&RemotePeer> {
        self.instance.remote()
    }
}
impl PipeRole for ServerEnd {}

impl sealed::Role for ClientEnd {
    fn complete_info(&self, _: &mut PipeInfo) {}
}
impl PipeRole for ClientEnd {}

impl<S: PipeIo, R: PipeRole> Pipe<S, R> {
    /// The pipe as this end sees it (`GetNamedPipeInfo` and
    /// `GetNamedPipeHandleState`); on the server end with the current
    /// instance count.
    pub fn info(&self) -> PipeInfo {
        let mut info = self.io.stream_info();
        self.role.complete_info(&mut info);
        info
    }

    /// Who is at the other end, as the kernel says: on the server end the
    /// client, on the client end the server. A local peer is a
    /// [`Identity::Local`] user; a client that came through a trusted
    /// remote-pipe gateway is the [`Identity::Remote`] principal the
    /// gateway authenticated (its certificate's name), whatever local user
    /// the gateway mapped it to.
    ///
    /// ```
    /// use npipe::{ClientOptions, Identity, LocalUser, ServerOptions};
    ///
    /// let name = format!("doc-peer-identity-{}", std::process::id());
    /// let listener = ServerOptions::new().create(&name)?;
    /// let client = ClientOptions::new().open(&name)?;
    /// let server = listener.accept()?;
    /// assert_eq!(server.peer_identity(), Identity::Local(LocalUser::current()));
    /// assert_eq!(client.peer_identity(), Identity::Local(LocalUser::current()));
    /// # Ok::<(), npipe::Error>(())
    /// ```
    pub fn peer_identity(&self) -> Identity {
        match self.role.remote() {
            Some(remote) => Identity::Remote(remote.principal.clone()),
            None => Identity::Local(self.io.peer().user),
        }
    }
}

impl<S: PipeIo> Pipe<S, ServerEnd> {
    /// Drops the client (`DisconnectNamedPipe`): unread data is discarded,
    /// the instance is freed for the next client, and the client's next
    /// operation fails (*pipe not connected* or *broken pipe*). Every later
    /// operation on this end fails with *pipe not connected*.
    pub fn disconnect(&mut self) -> Result<()> {
        let io = &mut self.io;
        self.role.instance.disconnect(|| io.cut_client())
    }

    /// The client's user name (`GetNamedPipeHandleState`'s `lpUserName`),
    /// available at either impersonation level since it only identifies.
    pub fn impersonation_user_name(&self) -> Result<String> {
        let user = self.client_user();
        user.name()
            .ok_or_else(|| Error::new(ErrorCode::Other, format!("{user} has no user name")))
    }

    /// The client's credentials from the kernel (`SO_PEERCRED`). For a
    /// remote client: the local user and group its gateway mapped it to
    /// (ids that name no one if unmapped: uid and gid `u32::MAX`) and the
    /// gateway's pid.
    pub fn client_credentials(&self) -> crate::PeerCredentials {
        self.io.peer()
    }

    /// `GetNamedPipeClientProcessId`: the pid of the process that
    /// connected, as the kernel gave it at connect. A pid is a hint,
    /// never proof: once that process exits the number can name
    /// another one. Ask
    /// [`client_process_still_running`](Self::client_process_still_running)
    /// before acting on the process behind it.
    pub fn client_process_id(&self) -> u32 {
        self.io.peer().pid
    }

    /// Whether the process that connected still runs, so that
    /// [`client_process_id`](Self::client_process_id) still names it:
    /// `Some(false)` once it has exited (its pid may since belong to
    /// another process), `None` where the kernel cannot tell (no
    /// pidfds: before Linux 5.3). Tracked through the process the
    /// kernel recorded at connect (`SO_PEERPIDFD`), never by looking
    /// the pid up again.
    pub fn client_process_still_running(&self) -> Option<bool> {
        self.role
            .instance
            .process(|pid| self.io.capture_peer(pid), PeerProcess::still_running)
    }

    /// The client's effective user (on Unix its uid:
    /// [`unix::ServerPipeExt::client_uid`](crate::unix::ServerPipeExt::client_uid)).
    pub fn client_user(&self) -> LocalUser {
        self.io.peer().user
    }

    /// The client's effective group.
    pub fn client_group(&self) -> LocalGroup {
        self.io.peer().group
    }

    /// The client's supplementary groups (`SO_PEERGROUPS`); for a remote
    /// client its mapped user's groups from the user database (none if
    /// unmapped).
    pub fn client_groups(&self) -> crate::Result<Vec<LocalGroup>> {
        if let Some(remote) = self.role.remote() {
            return Ok(remote.groups().iter().copied().map(LocalGroup).collect());
        }
        self.io
            .peer_groups()
            .map(|gids| gids.into_iter().map(LocalGroup).collect())
            .map_err(|e| crate::Error::os(e, "cannot read the client's groups"))
    }

    /// The client's user name (`GetNamedPipeHandleState`'s `lpUserName`).
    /// It reads the user database, which may block briefly.
    pub fn client_user_name(&self) -> Option<String> {
        self.io.peer().user_name()
    }

    /// `GetNamedPipeClientSessionId`: the client process's logon
    /// session, read once, at the first call, from the process the
    /// kernel recorded at connect (not looked up by pid), and the same
    /// answer ever after. On Linux that is its audit login
    /// session (`/proc/PID/sessionid`: every process of one login
    /// shares it, as a Windows logon session, and only a privileged
    /// process can change it), and 0 for a process that came from no
    /// login (services, containers), as Windows' services are in
    /// session 0. `None` if the process had exited by the first call
    /// (Windows, which stores the session at connect, would still
    /// answer: ask while the client waits for you), or after
    /// [`disconnect`](Self::disconnect) (Windows then fails the call).
    /// `None` for a remote client: it has no session on this machine.
    pub fn client_session_id(&self) -> Option<u32> {
        if !self.role.instance.held() || self.role.remote().is_some() {
            return None;
        }
        self.role
            .instance
            .process(|pid| self.io.capture_peer(pid), PeerProcess::session)
    }

    /// `GetNamedPipeServerProcessId` on the server end: this process.
    pub fn server_process_id(&self) -> u32 {
        std::process::id()
    }

    /// `GetNamedPipeServerSessionId` on the server end: this process's
    /// logon session (as [`client_session_id`](Self::client_session_id)
    /// counts them).
    pub fn server_session_id(&self) -> Option<u32> {
        crate::peer_process::own_session()
    }

    /// `GetNamedPipeClientComputerName`: `None` for a local client; for a
    /// remote one the address it connected to the gateway from.
    pub fn client_computer_name(&self) -> Option<String> {
        self.role.remote().map(|r| r.computer.clone())
    }

    /// Everything known about the client, in one go.
    pub fn client_identity(&self) -> crate::ClientIdentity {
        let credentials = self.io.peer();
        crate::ClientIdentity {
            credentials,
            groups: self.client_groups().unwrap_or_default(),
            user_name: credentials.user_name(),
            session_id: self.client_session_id(),
        }
    }

    /// The level the client granted for its identity.
    pub fn client_impersonation_level(&self) -> crate::ImpersonationLevel {
        self.role.instance.impersonation()
    }

    /// Starts `cmd` as the client, for good (`CreateProcessAsUser` with
    /// the client's token): the child's real, effective and saved uid
    /// and gid are the client's, its groups are the client's, it has no
    /// capabilities and `no_new_privs` is set, so neither it nor what it
    /// runs can regain the server's identity. A process started by other
    /// means while impersonating keeps the server's real and saved uid
    /// and could become the server again: use this instead. The child
    /// still inherits what `cmd` does not change: the server's
    /// environment, working directory and standard streams (as
    /// `CreateProcessAsUser` inherits the caller's environment); set
    /// `env_clear`, `current_dir` and `stdin`/`stdout`/`stderr` on `cmd`
    /// where those must not reach the client.
    ///
    /// Needs root unless the client is the server's own user
    /// (`ERROR_PRIVILEGE_NOT_HELD`, 1314), and a client that granted
    /// impersonation (`ERROR_CANNOT_IMPERSONATE`, 1368).
    ///
    /// ```
    /// # let name = format!("doc-spawn-as-client-{}", std::process::id());
    /// # let listener = npipe::ServerOptions::new().create(&name)?;
    /// # let _client = npipe::ClientOptions::new().open(&name)?;
    /// let pipe = listener.accept()?;
    /// let out = pipe
    ///     .spawn_as_client(std::process::Command::new("id").arg("-u").stdout(std::process::Stdio::piped()))?
    ///     .wait_with_output()?;
    /// use npipe::unix::ServerPipeExt;
    /// assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), pipe.client_uid().to_string());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn spawn_as_client(
        &self,
        cmd: &mut std::process::Command,
    ) -> crate::Result<std::process::Child> {
        let (uid, gid, groups) = self.acting_ids()?;
        crate::impersonation::spawn_as_user(cmd, uid, gid, groups)
    }

    /// The ids to act as the client with (uid, gid, groups), if this end
    /// may: the client is still connected and granted impersonation.
    pub(crate) fn acting_ids(&self) -> crate::Result<(u32, u32, Vec<u32>)> {
        self.role.instance.may_impersonate()?;
        if let Some(account) = self.role.remote().and_then(RemotePeer::local_account) {
            return Ok(account);
        }
        let peer = self.io.peer();
        let groups = self.client_groups()?.into_iter().map(|g| g.0).collect();
        Ok((peer.user.0, peer.group.0, groups))
    }
}

impl<S: PipeIo> Pipe<S, ClientEnd> {
    /// The server's credentials from the kernel (`SO_PEERCRED`).
    pub fn server_credentials(&self) -> crate::PeerCredentials {
        self.io.peer()
    }

    /// `GetNamedPipeServerProcessId`.
    pub fn server_process_id(&self) -> u32 {
        self.io.peer().pid
    }

    /// The server's effective user (on Unix its uid:
    /// [`unix::ClientPipeExt::server_uid`](crate::unix::ClientPipeExt::server_uid)).
    pub fn server_user(&self) -> LocalUser {
        self.io.peer().user
    }

    /// The server's user name, if the user database has one.
    pub fn server_user_name(&self) -> Option<String> {
        self.io.peer().user_name()
    }

    /// `GetNamedPipeServerSessionId`: the server process's logon session
    /// (its audit login session; 0 for a process from no login, as
    /// Windows' services are in session 0). The process is the one that
    /// accepted this connection, named by the kernel (`SO_PEERPIDFD`),
    /// not looked up by pid; `None` if it has exited.
    pub fn server_session_id(&self) -> Option<u32> {
        self.io.capture_peer(self.io.peer().pid).session()
    }

    /// `GetNamedPipeClientProcessId` on the client end: this process.
    pub fn client_process_id(&self) -> u32 {
        std::process::id()
    }

    /// `GetNamedPipeClientSessionId` on the client end: this process's
    /// logon session.
    pub fn client_session_id(&self) -> Option<u32> {
        crate::peer_process::own_session()
    }
}
