//! Builders for servers and clients.
//!
//! These mirror `CreateNamedPipe`'s and `CreateFile`'s parameters. The
//! [`ServerOptions`] builder makes a [`PipeListener`](crate::PipeListener), the
//! [`ClientOptions`] builder a [`PipeClient`](crate::PipeClient).

use std::time::Duration;

#[cfg(target_os = "linux")]
use crate::blocking::{PipeClient, PipeListener};
use crate::error::{Error, Result};
use crate::identity::{Identity, LocalUser};
use crate::name::PipeName;
use crate::security::SecurityDescriptor;
use crate::types::{
    Access, Direction, ImpersonationLevel, PipeType, ReadMode, Wait, UNLIMITED_INSTANCES,
};
#[cfg(windows)]
use crate::windows::{PipeClient, PipeListener};

/// Options for creating a pipe server, like `CreateNamedPipe`'s parameters.
///
/// ```
/// use npipe::{ServerOptions, ClientOptions, PipeType, Direction};
/// use std::io::{Read, Write};
///
/// let name = format!("doc-server-options-{}", std::process::id());
/// let listener = ServerOptions::new()
///     .pipe_type(PipeType::Byte)
///     .direction(Direction::Duplex)
///     .max_instances(4)
///     .create(&name)?;
///
/// let mut client = ClientOptions::new().open(&name)?;
/// let mut server = listener.accept()?;
/// client.write_all(b"ping")?;
/// let mut buf = [0; 4];
/// server.read_exact(&mut buf)?;
/// assert_eq!(&buf, b"ping");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct ServerOptions {
    pub(crate) direction: Direction,
    pub(crate) pipe_type: PipeType,
    pub(crate) read_mode: Option<ReadMode>,
    pub(crate) max_instances: u32,
    pub(crate) in_buffer_size: u32,
    pub(crate) out_buffer_size: u32,
    pub(crate) default_timeout: Duration,
    pub(crate) max_message_size: u32,
    pub(crate) first_instance: bool,
    pub(crate) handshake_timeout: Duration,
    pub(crate) accept_backlog: u32,
    pub(crate) max_handshakes: u32,
    pub(crate) max_handshakes_per_user: u32,
    pub(crate) memory_budget: usize,
    pub(crate) security: SecurityDescriptor,
    pub(crate) reject_remote_clients: bool,
    pub(crate) trusted_gateways: Vec<u32>,
    pub(crate) shared_memory: bool,
    pub(crate) remote_hand_off: bool,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions::new()
    }
}

impl ServerOptions {
    /// Duplex, message type and message read mode, unlimited instances,
    /// system buffer sizes, a 50 ms default wait, 64 MiB largest message,
    /// 128 MiB for the messages being received from all clients together.
    pub fn new() -> ServerOptions {
        ServerOptions {
            direction: Direction::Duplex,
            pipe_type: PipeType::Message,
            read_mode: None,
            max_instances: UNLIMITED_INSTANCES,
            in_buffer_size: 0,
            out_buffer_size: 0,
            default_timeout: Duration::from_millis(50),
            max_message_size: 64 << 20,
            first_instance: false,
            handshake_timeout: Duration::from_secs(5),
            accept_backlog: 128,
            max_handshakes: 128,
            max_handshakes_per_user: 16,
            memory_budget: 128 << 20,
            security: SecurityDescriptor::default_for_pipes(),
            reject_remote_clients: false,
            trusted_gateways: Vec::new(),
            shared_memory: true,
            remote_hand_off: true,
        }
    }

    /// The pipe's security descriptor (`lpSecurityAttributes`), checked
    /// against every client's kernel credentials when it connects. Default:
    /// Windows' default for pipes, [`SecurityDescriptor::default_for_pipes`]
    /// (owner and root full control, everyone read).
    pub fn security(&mut self, descriptor: SecurityDescriptor) -> &mut Self {
        self.security = descriptor;
        self
    }

    /// Whether the server (blocking or tokio) takes a client's offer to
    /// move the data to shared memory (on by default; see
    /// [`ClientOptions::shared_memory`]). The environment variable
    /// `NPIPE_SHARED_MEMORY=off` turns it off for the whole process.
    pub fn shared_memory(&mut self, take: bool) -> &mut Self {
        self.shared_memory = take;
        self
    }

    /// `PIPE_REJECT_REMOTE_CLIENTS`: refuse clients that come through a
    /// remote-pipe gateway from another machine (`ERROR_ACCESS_DENIED`, 5).
    pub fn reject_remote_clients(&mut self, reject: bool) -> &mut Self {
        self.reject_remote_clients = reject;
        self
    }

    /// Believes the remote identities that a gateway running as `user`
    /// presents (`npipe gateway`: a remote client's certificate name, its
    /// address, the local user it maps to). Root is always believed; any
    /// other local process that claims a remote identity is refused with
    /// `ERROR_ACCESS_DENIED`, so trust only the user a gateway runs as. A
    /// trusted gateway chooses whom the server impersonates for its
    /// clients (any user but root, unless the gateway is root itself).
    ///
    /// ```
    /// use npipe::{LocalUser, ServerOptions};
    ///
    /// let mut opts = ServerOptions::new();
    /// opts.trust_gateway(LocalUser::by_name("65534").unwrap());
    /// ```
    pub fn trust_gateway(&mut self, user: LocalUser) -> &mut Self {
        if !self.trusted_gateways.contains(&user.0) {
            self.trusted_gateways.push(user.0);
        }
        self
    }

    /// Whether a remote client's connection is taken over when its gateway
    /// offers it (default: yes). Taken, the gateway leaves the data path:
    /// after the OK it hands this process the client's TCP connection and
    /// its TLS keys, and the client talks TLS with this process directly
    /// (a round trip 1.04 to 1.15 times a direct TLS connection's, measured
    /// on loopback); the gateway still counts the connection until it ends. Off, the gateway relays every byte.
    /// Linux with the `remote` feature (elsewhere there is nothing to take).
    ///
    /// ```
    /// let mut opts = npipe::ServerOptions::new();
    /// opts.remote_hand_off(false); // every byte through the gateway
    /// ```
    pub fn remote_hand_off(&mut self, take: bool) -> &mut Self {
        self.remote_hand_off = take;
        self
    }

    /// Whether a peer running as `uid` may present a remote identity.
    pub(crate) fn trusts_gateway(&self, uid: u32) -> bool {
        uid == 0 || self.trusted_gateways.contains(&uid)
    }

    /// The open mode: inbound, outbound or duplex (default).
    pub fn direction(&mut self, direction: Direction) -> &mut Self {
        self.direction = direction;
        self
    }

    /// Byte or message (default) type.
    pub fn pipe_type(&mut self, pipe_type: PipeType) -> &mut Self {
        self.pipe_type = pipe_type;
        self
    }

    /// The server end's read mode; defaults to the pipe type's. A byte-type
    /// pipe refuses message read mode when created.
    pub fn read_mode(&mut self, mode: ReadMode) -> &mut Self {
        self.read_mode = Some(mode);
        self
    }

    /// How many clients may be connected at once: 1..=254, or
    /// [`UNLIMITED_INSTANCES`] (255, the default).
    pub fn max_instances(&mut self, n: u32) -> &mut Self {
        self.max_instances = n;
        self
    }

    /// The inbound buffer size in bytes, a hint as on Windows (0: the
    /// system's). On Windows npipe asks the kernel for 64 KiB when this is
    /// 0, as tokio does: a pipe created with no buffer holds no write, so
    /// every write would wait for its reader.
    pub fn in_buffer_size(&mut self, bytes: u32) -> &mut Self {
        self.in_buffer_size = bytes;
        self
    }

    /// The outbound buffer size in bytes, a hint as on Windows (0: the
    /// system's). On Windows npipe asks the kernel for 64 KiB when this is
    /// 0, as tokio does: a pipe created with no buffer holds no write, so
    /// every write would wait for its reader.
    pub fn out_buffer_size(&mut self, bytes: u32) -> &mut Self {
        self.out_buffer_size = bytes;
        self
    }

    /// How long clients that ask for the server's default wait
    /// ([`Wait::ServerDefault`]) wait; 50 ms unless set, as on Windows.
    pub fn default_timeout(&mut self, timeout: Duration) -> &mut Self {
        self.default_timeout = timeout;
        self
    }

    /// The largest message this server accepts; a longer one is refused
    /// before anything is allocated for it. Default 64 MiB; at most
    /// `u32::MAX - 1` bytes (the one longer length is the wire's disconnect
    /// mark).
    pub fn max_message_size(&mut self, bytes: u32) -> &mut Self {
        self.max_message_size = bytes.min(crate::proto::framing::MAX_MESSAGE_LIMIT);
        self
    }

    /// `FILE_FLAG_FIRST_PIPE_INSTANCE`: fail with *access denied* if another
    /// server already serves this name.
    pub fn first_instance(&mut self, first: bool) -> &mut Self {
        self.first_instance = first;
        self
    }

    /// How long a client may take to send its handshake before it is dropped
    /// (default 5 s). A slow client never delays others: handshakes run
    /// side by side.
    pub fn handshake_timeout(&mut self, timeout: Duration) -> &mut Self {
        self.handshake_timeout = timeout;
        self
    }

    /// How many connected clients may wait for the application's `accept`
    /// (default 128). With unlimited instances, clients beyond this count as
    /// busy until the application accepts.
    pub fn accept_backlog(&mut self, n: u32) -> &mut Self {
        self.accept_backlog = n;
        self
    }

    /// How many connections from users other than the server's own (and
    /// root) may be in their handshake at once, in all (default 128). A
    /// connection is in its handshake from `accept` until its HELLO arrives
    /// or [`handshake_timeout`](Self::handshake_timeout) runs out; past this
    /// cap new ones are refused with *pipe busy* at once, so that silent
    /// connections cannot exhaust the server's file descriptors (OpenSSH's
    /// `MaxStartups`). Clients of the server's own user are never counted.
    /// The same caps apply, counted apart, to other users' clients waiting
    /// for an instance (each holds a descriptor while it waits).
    ///
    /// ```
    /// let mut opts = npipe::ServerOptions::new();
    /// opts.max_handshakes(64).max_handshakes_per_user(8);
    /// ```
    pub fn max_handshakes(&mut self, n: u32) -> &mut Self {
        self.max_handshakes = n;
        self
    }

    /// How many of those handshakes one user may have in flight (default
    /// 16), so that one user cannot take the whole of
    /// [`max_handshakes`](Self::max_handshakes) (systemd's
    /// `MaxConnectionsPerSource`). Beyond it that user's new connections are
    /// refused with *pipe busy*; other users are unaffected.
    pub fn max_handshakes_per_user(&mut self, n: u32) -> &mut Self {
        self.max_handshakes_per_user = n;
        self
    }

    /// The memory, in bytes, that all of this pipe's connections together
    /// may hold in partially received messages (default 128 MiB). A
    /// message over 64 KiB reserves its whole length before
    /// `recv_message` reads its body; while the budget cannot cover it the
    /// server reads nothing from that client, whose writes then block
    /// (backpressure, as a Windows pipe's buffer quota blocks a writer):
    /// nothing is dropped. A message larger than the budget waits until
    /// nothing else is reserved and goes alone. One user other than the
    /// server's own (and root) holds at most half the budget unless it
    /// holds nothing yet, so one user's stalled writers cannot pin it all.
    /// A blocking read waits at most its read timeout for room.
    ///
    /// ```
    /// let mut opts = npipe::ServerOptions::new();
    /// opts.max_message_size(8 << 20).memory_budget(64 << 20);
    /// ```
    pub fn memory_budget(&mut self, bytes: usize) -> &mut Self {
        self.memory_budget = bytes;
        self
    }

    /// The server end's read mode after defaults.
    pub(crate) fn effective_read_mode(&self) -> ReadMode {
        self.read_mode.unwrap_or(match self.pipe_type {
            PipeType::Byte => ReadMode::Byte,
            PipeType::Message => ReadMode::Message,
        })
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if !(1..=UNLIMITED_INSTANCES).contains(&self.max_instances) {
            return Err(Error::invalid(format!(
                "max_instances must be 1..=254, or 255 for unlimited; got {}",
                self.max_instances
            )));
        }
        if self.pipe_type == PipeType::Byte && self.effective_read_mode() == ReadMode::Message {
            return Err(Error::invalid(
                "a byte-type pipe cannot be read in message mode",
            ));
        }
        if self.accept_backlog == 0 {
            return Err(Error::invalid("accept_backlog must be at least 1"));
        }
        if self.memory_budget == 0 {
            return Err(Error::invalid(
                "memory_budget must be at least 1 byte (it bounds memory; 0 would not)",
            ));
        }
        if self.max_handshakes == 0 || self.max_handshakes_per_user == 0 {
            return Err(Error::invalid(
                "max_handshakes and max_handshakes_per_user must be at least 1",
            ));
        }
        Ok(())
    }

    /// Creates the pipe (`CreateNamedPipe`) and starts taking clients.
    #[cfg(any(target_os = "linux", windows))]
    pub fn create(&self, name: impl TryInto<PipeName, Error = Error>) -> Result<PipeListener> {
        PipeListener::create(name.try_into()?, self.clone())
    }

    /// Creates the pipe for tokio (`CreateNamedPipe` with overlapped I/O).
    /// Call it within a tokio runtime with I/O and time enabled: the
    /// server's acceptor runs as a task on it.
    #[cfg(all(any(target_os = "linux", windows), feature = "tokio"))]
    pub fn create_async(
        &self,
        name: impl TryInto<PipeName, Error = Error>,
    ) -> Result<crate::tokio::PipeListener> {
        crate::tokio::PipeListener::create(name.try_into()?, self.clone())
    }
}

/// Options for opening the client end, like `CreateFile` plus `WaitNamedPipe`.
///
/// ```
/// use npipe::{ServerOptions, ClientOptions, Wait};
/// use std::time::Duration;
///
/// let name = format!("doc-client-options-{}", std::process::id());
/// let listener = ServerOptions::new().max_instances(1).create(&name)?;
/// let first = ClientOptions::new().open(&name)?;
///
/// // The only instance is taken: busy at once, or time out after waiting.
/// let busy = ClientOptions::new().open(&name).unwrap_err();
/// assert_eq!(busy.code(), npipe::ErrorCode::PipeBusy);
/// let late = ClientOptions::new()
///     .wait(Wait::Timeout(Duration::from_millis(20)))
///     .open(&name)
///     .unwrap_err();
/// assert_eq!(late.code(), npipe::ErrorCode::Timeout);
/// # drop(first); drop(listener);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub(crate) access: Option<Access>,
    pub(crate) read_mode: Option<ReadMode>,
    pub(crate) wait: Wait,
    pub(crate) impersonation: ImpersonationLevel,
    pub(crate) max_message_size: u32,
    pub(crate) expect_server: Option<Identity>,
    pub(crate) wait_for_server: bool,
    pub(crate) read_timeout: Option<Duration>,
    pub(crate) shared_memory: bool,
    pub(crate) shared_memory_after: Option<u32>,
    #[cfg_attr(not(feature = "remote"), allow(dead_code))]
    pub(crate) remote: RemoteClientOptions,
}

/// Where a client finds its credentials for remote pipes, and which port
/// their gateways listen on; each unset one falls back on its environment
/// variable (`NPIPE_CERT`, `NPIPE_KEY`, `NPIPE_CA`, `NPIPE_GATEWAY_PORT`).
#[derive(Debug, Clone, Default)]
#[cfg_attr(not(feature = "remote"), allow(dead_code))]
pub(crate) struct RemoteClientOptions {
    pub cert: Option<std::path::PathBuf>,
    pub key: Option<std::path::PathBuf>,
    pub ca: Option<std::path::PathBuf>,
    pub port: Option<u16>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions::new()
    }
}

impl ClientOptions {
    /// Access as the pipe's direction allows, read mode as the pipe type,
    /// no wait, impersonation allowed, 64 MiB largest message.
    pub fn new() -> ClientOptions {
        ClientOptions {
            access: None,
            read_mode: None,
            wait: Wait::NoWait,
            impersonation: ImpersonationLevel::Impersonation,
            max_message_size: 64 << 20,
            expect_server: None,
            wait_for_server: false,
            read_timeout: None,
            shared_memory: false,
            shared_memory_after: Some(LATE_OFFER_AFTER_WRITES),
            remote: RemoteClientOptions::default(),
        }
    }

    /// The certificate and key this client shows the gateway of a remote
    /// pipe (`\\HOST\pipe\NAME`), as PEM files (`npipe cert issue`
    /// makes them); the certificate's common name is who the remote
    /// server sees. Unset: the files named by `NPIPE_CERT` and
    /// `NPIPE_KEY`. Local pipes ignore it.
    ///
    /// ```no_run
    /// use npipe::ClientOptions;
    ///
    /// let reply = ClientOptions::new()
    ///     .remote_certificate("certs/alice.crt", "certs/alice.key")
    ///     .remote_ca("certs/ca.crt")
    ///     .call(r"\\build-host\pipe\echo", b"hi")?;
    /// # Ok::<(), npipe::Error>(())
    /// ```
    #[cfg(all(feature = "remote", target_os = "linux"))]
    pub fn remote_certificate(
        &mut self,
        cert: impl Into<std::path::PathBuf>,
        key: impl Into<std::path::PathBuf>,
    ) -> &mut Self {
        self.remote.cert = Some(cert.into());
        self.remote.key = Some(key.into());
        self
    }

    /// The CA (a PEM file) that must have issued a remote pipe's gateway
    /// certificate, for the host this client dials. Unset: the file named
    /// by `NPIPE_CA`.
    #[cfg(all(feature = "remote", target_os = "linux"))]
    pub fn remote_ca(&mut self, ca: impl Into<std::path::PathBuf>) -> &mut Self {
        self.remote.ca = Some(ca.into());
        self
    }

    /// The TCP port of remote pipes' gateways (default 4455, or
    /// `NPIPE_GATEWAY_PORT`).
    #[cfg(all(feature = "remote", target_os = "linux"))]
    pub fn gateway_port(&mut self, port: u16) -> &mut Self {
        self.remote.port = Some(port);
        self
    }

    /// Offers the server, with the handshake, to carry this connection's
    /// data through shared memory from its first byte: a ring each way in
    /// a sealed memory file that rides with the HELLO (`SCM_RIGHTS`). A
    /// server that takes it says so in its reply; one that does not (an
    /// older npipe, or one with [`ServerOptions::shared_memory`] off) keeps
    /// the socket, and so does everything else. (A tokio client refuses,
    /// with `ERROR_BAD_PIPE`, a server that took its offer without saying it
    /// can wake a tokio end: an unreleased npipe from before tokio ends
    /// took part.) Reads, writes, message boundaries, *more data*, peeks,
    /// `transact`, `flush_buffers` and every error are the same either way;
    /// a request and reply between processes on different CPUs took 1.8 µs
    /// instead of the socket's 12 on the machine the README measured.
    ///
    /// Off by default: making the region for every connection halved the
    /// connection rate there. A blocking client moves a connection that
    /// proves busy instead ([`shared_memory_after`](Self::shared_memory_after)).
    /// Blocking and tokio clients alike (a tokio end that must wait is
    /// woken through the socket, as its reactor cannot wait on the rings); a
    /// `call` whose request rides with the handshake does not offer it, nor
    /// does a client of a remote pipe. `NPIPE_SHARED_MEMORY=on` turns it on
    /// for every client of the process, `=off` off.
    ///
    /// ```
    /// use npipe::{ClientOptions, ServerOptions};
    ///
    /// let name = format!("doc-shared-memory-{}", std::process::id());
    /// let listener = ServerOptions::new().create(&name)?;
    /// let mut client = ClientOptions::new().shared_memory(true).open(&name)?;
    /// let mut server = listener.accept()?;
    /// client.write_message(b"through the ring")?;
    /// assert_eq!(server.recv_message()?, b"through the ring");
    /// # Ok::<(), npipe::Error>(())
    /// ```
    pub fn shared_memory(&mut self, offer: bool) -> &mut Self {
        self.shared_memory = offer;
        self
    }

    /// Moves a busy connection to shared memory: after this many sends on
    /// the socket (16 by default; a large message may take several), or
    /// once 256 KiB have gone through it, whichever comes first, a blocking
    /// client offers the server a ring each way, in mid-stream
    /// (PROTOCOL §6d), and both ends' data go through the rings from there
    /// on, each direction from a marker byte the reader steps over. A short
    /// connection (a `call`, a request and a reply) never pays for a region;
    /// a busy one pays once. `None` keeps the socket for good.
    ///
    /// A client of either kind (blocking, or tokio's `open_async`), to a
    /// server of this version (blocking or tokio), which says in its reply
    /// that it takes such an offer. Linux only. The bytes,
    /// message boundaries, peeks and errors are the socket's, with two
    /// differences: a move that goes wrong (a region the server cannot map,
    /// or a peer that breaks the protocol) ends the connection with
    /// `ERROR_BAD_PIPE`, and once moved, writes to a peer that crashed land
    /// in the ring until it is full, as over the socket they land in its
    /// buffer. Only a client that writes offers: on a pipe only the server
    /// writes to, the socket stays. `NPIPE_SHARED_MEMORY=off` turns it off
    /// for the whole process, `=late` makes it offer after the first send
    /// (CI runs the suite so, to move every connection that writes twice).
    ///
    /// ```
    /// use npipe::{ClientOptions, ServerOptions};
    ///
    /// let name = format!("doc-shared-memory-after-{}", std::process::id());
    /// let listener = ServerOptions::new().create(&name)?;
    /// let mut client = ClientOptions::new().shared_memory_after(Some(2)).open(&name)?;
    /// let mut server = listener.accept()?;
    /// for i in 0..4u8 {
    ///     client.write_message(&[i; 3])?;
    ///     assert_eq!(server.recv_message()?, [i; 3]);
    ///     server.write_message(&[i])?;
    ///     assert_eq!(client.recv_message()?, [i]);
    /// }
    /// // The third write offered the rings: both ends use them now.
    /// # if std::env::var("NPIPE_SHARED_MEMORY").as_deref() != Ok("off") {
    /// assert!(client.uses_shared_memory() && server.uses_shared_memory());
    /// # }
    /// # Ok::<(), npipe::Error>(())
    /// ```
    pub fn shared_memory_after(&mut self, writes: Option<u32>) -> &mut Self {
        self.shared_memory_after = writes;
        self
    }

    /// Also wait, within [`wait`](Self::wait), for the pipe to exist: a
    /// pipe not created yet, or whose server died and is being restarted,
    /// is tried again until the wait is over. (An npipe extension: Windows'
    /// `WaitNamedPipe` fails at once with `ERROR_FILE_NOT_FOUND`, which stays
    /// the default.) Without a wait this does nothing. A local pipe is
    /// tried every 10 ms; on Linux a remote one (each try a TLS handshake
    /// with its gateway) after pauses that double from 10 ms to 500 ms.
    pub fn wait_for_server(&mut self, wait: bool) -> &mut Self {
        self.wait_for_server = wait;
        self
    }

    /// Refuses to talk to the pipe unless its server is this identity,
    /// checked from what vouches for the server (the kernel's
    /// `SO_PEERCRED` for a local pipe) before anything is sent: the defence
    /// against pipe squatting, which Windows leaves to the caller. A server
    /// of anyone else gives *access denied*. A local pipe's server is always
    /// a local user, so expecting a [remote principal](Identity::Remote)
    /// refuses every local server.
    ///
    /// ```
    /// use npipe::{ClientOptions, ErrorCode, Identity, LocalUser, ServerOptions};
    ///
    /// let name = format!("doc-expect-{}", std::process::id());
    /// let _listener = ServerOptions::new().create(&name)?;
    /// let mut opts = ClientOptions::new();
    /// // The server runs as us, so expecting anyone else is refused.
    /// let someone_else = LocalUser::by_name("65534").unwrap();
    /// if LocalUser::current() != someone_else {
    ///     let e = opts.expect_server(someone_else).open(&name).unwrap_err();
    ///     assert_eq!(e.code(), ErrorCode::AccessDenied);
    /// }
    /// # Ok::<(), npipe::Error>(())
    /// ```
    pub fn expect_server(&mut self, who: impl Into<Identity>) -> &mut Self {
        self.expect_server = Some(who.into());
        self
    }

    /// [`expect_server`](Self::expect_server) for a local user:
    /// [`LocalUser::by_name`] finds one by name; on Unix a bare uid will do
    /// (`expect_server_user(0)`).
    pub fn expect_server_user(&mut self, user: impl Into<LocalUser>) -> &mut Self {
        self.expect_server(user.into())
    }

    /// Asks for exactly this access; the server refuses with *access denied*
    /// if the pipe's direction does not allow it. Unset: whatever the
    /// direction allows.
    pub fn access(&mut self, access: Access) -> &mut Self {
        self.access = Some(access);
        self
    }

    /// This end's read mode; defaults to the pipe type's. Message read mode on
    /// a byte-type pipe fails with `ERROR_INVALID_PARAMETER`.
    pub fn read_mode(&mut self, mode: ReadMode) -> &mut Self {
        self.read_mode = Some(mode);
        self
    }

    /// How long to wait for a free instance (default: not at all).
    pub fn wait(&mut self, wait: Wait) -> &mut Self {
        self.wait = wait;
        self
    }

    /// What the server may do with this client's identity.
    pub fn impersonation_level(&mut self, level: ImpersonationLevel) -> &mut Self {
        self.impersonation = level;
        self
    }

    /// How long the server may keep this client waiting for an answer, once
    /// no longer waiting for a free instance: its answer to the connect
    /// (never more than 5 s in any case), and on the blocking ends every
    /// read after (the connection starts
    /// with this read timeout, as if
    /// [`set_read_timeout`](crate::PipeClient::set_read_timeout) were
    /// called), including the reply of [`call`](Self::call) and
    /// [`call_async`](Self::call_async). A server that accepts and then
    /// hangs fails the client with *timeout* instead of holding it for
    /// ever. (An npipe extension: on Windows `CallNamedPipe` and `ReadFile`
    /// wait for ever, and that stays the default; a connect's answer is then
    /// given 5 s.) On the tokio ends it bounds the connect and `call_async`;
    /// bound later reads with `tokio::time::timeout`. On Windows the
    /// kernel connects at once: there it bounds the blocking ends' reads
    /// and `call_async`'s reply.
    ///
    /// ```no_run
    /// use npipe::ClientOptions;
    /// use std::time::Duration;
    ///
    /// // A hung server fails this call after a second instead of never.
    /// let reply = ClientOptions::new()
    ///     .read_timeout(Duration::from_secs(1))
    ///     .call("service", b"status")?;
    /// # Ok::<(), npipe::Error>(())
    /// ```
    ///
    /// A zero timeout sets none, as for `set_read_timeout`.
    pub fn read_timeout(&mut self, timeout: Duration) -> &mut Self {
        self.read_timeout = Some(timeout).filter(|t| !t.is_zero());
        self
    }

    /// The largest message this client accepts. Default 64 MiB; at most
    /// `u32::MAX - 1` bytes.
    pub fn max_message_size(&mut self, bytes: u32) -> &mut Self {
        self.max_message_size = bytes.min(crate::proto::framing::MAX_MESSAGE_LIMIT);
        self
    }

    /// `CallNamedPipe` with these options: connects (waiting as set), sends
    /// `request` as one message, returns the reply message, closes.
    #[cfg(target_os = "linux")]
    pub fn call(
        &self,
        name: impl TryInto<PipeName, Error = Error>,
        request: &[u8],
    ) -> Result<Vec<u8>> {
        crate::blocking::call_with(self, &name.try_into()?, request)
    }

    /// `CallNamedPipe` with these options: connects (waiting as set), sends
    /// `request` as one message, returns the reply message, closes.
    #[cfg(windows)]
    pub fn call(
        &self,
        name: impl TryInto<PipeName, Error = Error>,
        request: &[u8],
    ) -> Result<Vec<u8>> {
        crate::windows::call_with(self, &name.try_into()?, request)
    }

    /// Connects (`CreateFile` on the pipe name, after `WaitNamedPipe` if a
    /// wait is set).
    #[cfg(target_os = "linux")]
    pub fn open(&self, name: impl TryInto<PipeName, Error = Error>) -> Result<PipeClient> {
        PipeClient::connect(&name.try_into()?, self, None)
    }

    /// Connects (`CreateFile` on the pipe name, after `WaitNamedPipe` if a
    /// wait is set).
    #[cfg(windows)]
    pub fn open(&self, name: impl TryInto<PipeName, Error = Error>) -> Result<PipeClient> {
        PipeClient::connect(&name.try_into()?, self)
    }

    /// Connects on tokio, waiting as [`wait`](Self::wait) says without
    /// blocking the runtime: the same outcomes and errors as
    /// [`open`](Self::open). Cancel-safe: dropped before it finished, no
    /// connection is left behind (a server that already took it sees the
    /// client leave).
    #[cfg(all(target_os = "linux", feature = "tokio"))]
    pub async fn open_async(
        &self,
        name: impl TryInto<PipeName, Error = Error>,
    ) -> Result<crate::tokio::PipeClient> {
        crate::tokio::PipeClient::connect(&name.try_into()?, self, None).await
    }

    /// Connects on tokio (`CreateFile` with overlapped I/O), waiting as
    /// [`wait`](Self::wait) says without blocking the runtime: the same
    /// outcomes and errors as [`open`](Self::open).
    #[cfg(all(windows, feature = "tokio"))]
    pub async fn open_async(
        &self,
        name: impl TryInto<PipeName, Error = Error>,
    ) -> Result<crate::tokio::PipeClient> {
        crate::tokio::PipeClient::connect(&name.try_into()?, self).await
    }

    /// `CallNamedPipe` on tokio with these options: as
    /// [`call`](Self::call), without blocking the runtime.
    #[cfg(all(any(target_os = "linux", windows), feature = "tokio"))]
    pub async fn call_async(
        &self,
        name: impl TryInto<PipeName, Error = Error>,
        request: &[u8],
    ) -> Result<Vec<u8>> {
        crate::tokio::call_with(self, &name.try_into()?, request).await
    }
}

/// By default, a blocking client offers the rings before its 17th write
/// (so a request and reply, or a few, never pay for a region).
const LATE_OFFER_AFTER_WRITES: u32 = 16;

/// `NPIPE_SHARED_MEMORY`, which CI sets to run the suite each way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SharedMemoryForced {
    /// `on`: every client offers with its handshake.
    On,
    /// `off`: no one offers or takes.
    Off,
    /// `late`: a blocking client that did not offer with its handshake
    /// offers after its first write.
    Late,
}

/// `NPIPE_SHARED_MEMORY`: `on`, `off` or `late` forces the shared-memory
/// data path for the whole process; unset or anything else leaves it to
/// the options.
pub(crate) fn shared_memory_override() -> Option<SharedMemoryForced> {
    static FORCED: std::sync::OnceLock<Option<SharedMemoryForced>> = std::sync::OnceLock::new();
    *FORCED.get_or_init(|| match std::env::var("NPIPE_SHARED_MEMORY").as_deref() {
        Ok("on") => Some(SharedMemoryForced::On),
        Ok("off") => Some(SharedMemoryForced::Off),
        Ok("late") => Some(SharedMemoryForced::Late),
        _ => None,
    })
}

impl ClientOptions {
    /// Whether a connect to `name` offers shared memory with its HELLO (the
    /// environment first): never with a request pipelined behind the HELLO
    /// (it rides on the socket), nor to a remote pipe (its socket leads to
    /// a gateway).
    pub(crate) fn offers_shared_memory_to(
        &self,
        name: &crate::name::PipeName,
        pipelined: Option<&[u8]>,
    ) -> bool {
        let wanted = match shared_memory_override() {
            Some(SharedMemoryForced::On) => true,
            Some(SharedMemoryForced::Off) => false,
            Some(SharedMemoryForced::Late) | None => self.shared_memory,
        };
        pipelined.is_none() && name.host().is_none() && wanted
    }

    /// After how many writes a client that kept the socket offers
    /// the rings in mid-stream (the environment first), if it does.
    #[cfg(target_os = "linux")]
    pub(crate) fn late_offer_after(&self) -> Option<u32> {
        match shared_memory_override() {
            Some(SharedMemoryForced::Off) => None,
            Some(SharedMemoryForced::Late) => Some(1),
            _ => self.shared_memory_after,
        }
    }
}

impl ServerOptions {
    /// Whether this server takes an offer: never if the environment says
    /// off.
    pub(crate) fn takes_shared_memory(&self) -> bool {
        self.shared_memory && shared_memory_override() != Some(SharedMemoryForced::Off)
    }
}
