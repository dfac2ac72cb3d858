//! # npipe: Windows named pipes for Rust, on Linux and Windows
//!
//! Named endpoints (`\\.\pipe\NAME`), byte and message types, one-way or
//! duplex, many instances of one name, clients that wait for a free instance,
//! the client's process and user from the kernel, and the Windows error codes
//! ported code expects.
//!
//! Two backends carry the same API. On Linux, npipe emulates named pipes
//! over Unix domain sockets. On Windows, each call is the kernel's own named
//! pipe call (`CreateNamedPipe`, `ConnectNamedPipe`, overlapped I/O for the
//! tokio front end), so npipe programs talk to any Windows program's pipes.
//! On other targets the crate builds its portable core alone (names,
//! options, security descriptors, users and groups, the protocol). What
//! differs by platform is in one table, [below](#where-the-platforms-differ).
//!
//! ```
//! use npipe::{ServerOptions, ClientOptions};
//! use std::time::Duration;
//!
//! let name = format!(r"\\.\pipe\doc-crate-{}", std::process::id());
//! let listener = ServerOptions::new().create(&name)?; // CreateNamedPipe
//!
//! let server = std::thread::spawn(move || -> npipe::Result<()> {
//!     let mut pipe = listener.accept()?;               // ConnectNamedPipe
//!     let request = pipe.recv_message()?;               // ReadFile
//!     pipe.write_message(&request)?;                    // WriteFile
//!     Ok(())
//! });
//!
//! let mut client = ClientOptions::new().open(&name)?;  // CreateFile
//! assert_eq!(client.transact(b"ping")?, b"ping");        // TransactNamedPipe
//! server.join().unwrap()?;
//! # Ok::<(), npipe::Error>(())
//! ```
//!
//! ## From Windows to npipe
//!
//! | Windows | npipe |
//! |---|---|
//! | `CreateNamedPipe` | [`ServerOptions::create`] → [`PipeListener`] |
//! | `PIPE_ACCESS_INBOUND` / `OUTBOUND` / `DUPLEX` | [`Direction`] |
//! | `PIPE_TYPE_BYTE` / `PIPE_TYPE_MESSAGE` | [`PipeType`] |
//! | `PIPE_READMODE_*`, `SetNamedPipeHandleState` | [`ReadMode`], [`PipeServer::set_read_mode`] |
//! | `nMaxInstances`, `PIPE_UNLIMITED_INSTANCES` | [`ServerOptions::max_instances`], [`UNLIMITED_INSTANCES`] |
//! | `nDefaultTimeOut` | [`ServerOptions::default_timeout`] |
//! | `FILE_FLAG_FIRST_PIPE_INSTANCE` | [`ServerOptions::first_instance`] |
//! | `ConnectNamedPipe` | [`PipeListener::accept`], [`PipeListener::accept_timeout`] |
//! | `DisconnectNamedPipe` | [`PipeServer::disconnect`] |
//! | `CreateFile` on a pipe name | [`ClientOptions::open`] |
//! | `WaitNamedPipe` | [`ClientOptions::wait`] with [`Wait`] (waiting and connecting are one step) |
//! | `ReadFile` / `WriteFile` | [`std::io::Read`] / [`std::io::Write`], [`PipeServer::read_message`] / [`PipeServer::write_message`] |
//! | `ERROR_MORE_DATA` | [`MessageRead::MoreData`] |
//! | `TransactNamedPipe` | [`PipeServer::transact`] (reply as a `Vec`), [`PipeServer::transact_into`] (the caller's buffer; a short one gives [`MessageRead::MoreData`]) |
//! | `CallNamedPipe` | [`call`] |
//! | `PeekNamedPipe` | [`PipeServer::peek`] |
//! | `FlushFileBuffers` | [`PipeServer::flush_buffers`] |
//! | `GetNamedPipeInfo`, `GetNamedPipeHandleState` | [`PipeServer::info`], [`PipeListener::info`], [`query_pipe`] |
//! | `GetNamedPipeClientProcessId` | [`PipeServer::client_process_id`]; on the client end [`PipeClient::client_process_id`] (its own) |
//! | `GetNamedPipeServerProcessId` | [`PipeClient::server_process_id`]; on the server end [`PipeServer::server_process_id`] (its own) |
//! | `GetNamedPipeClientSessionId` | [`PipeServer::client_session_id`]; on the client end [`PipeClient::client_session_id`] (its own) |
//! | `GetNamedPipeServerSessionId` | [`PipeClient::server_session_id`]; on the server end [`PipeServer::server_session_id`] (its own) |
//! | `GetNamedPipeClientComputerName` | [`PipeServer::client_computer_name`] |
//! | `GetNamedPipeHandleState`'s user name | [`PipeServer::client_user_name`] |
//! | `GetTokenInformation(TokenUser)` on the client's token | [`PipeServer::peer_identity`] (an [`Identity`]), [`PipeServer::client_user`] |
//! | `lpSecurityAttributes` (DACL) | [`ServerOptions::security`], [`SecurityDescriptor`] |
//! | `PIPE_REJECT_REMOTE_CLIENTS` | [`ServerOptions::reject_remote_clients`] |
//! | `CreateFile` on `\\HOST\pipe\NAME` (SMB, the user's logon) | feature `remote`: [`ClientOptions::open`] on that name, over TLS 1.3 with `ClientOptions::remote_certificate` / `remote_ca` to the gateway, `npipe::remote::Gateway` (`npipe gateway`) |
//! | the SMB server's network logon, a remote client's SID | [`Identity::Remote`] (its certificate's name) from [`PipeServer::peer_identity`]; `remote:NAME` and `network` (NU) in a [`SecurityDescriptor`]; [`ServerOptions::trust_gateway`] |
//! | `ImpersonateNamedPipeClient` / `RevertToSelf` | [`PipeServer::impersonate`] (guard) / dropping the guard; [`PipeServer::run_as_client`] |
//! | `CreateProcessAsUser` with the client's token | [`PipeServer::spawn_as_client`] |
//! | `SECURITY_IDENTIFICATION` / `SECURITY_IMPERSONATION` | [`ClientOptions::impersonation_level`], [`ImpersonationLevel`] |
//! | (pipe squatting defence) | [`ClientOptions::expect_server`] (an [`Identity`]), or `expect_server_user` |
//! | `GetLastError()` | [`Error::code`], [`Error::win32_code`] |
//! | Sysinternals PipeList | [`list_pipes`] |
//! | Overlapped I/O (`FILE_FLAG_OVERLAPPED`) | feature `tokio`: the `npipe::tokio` module, same types and semantics as async Rust |
//! | `CreateNamedPipe` + overlapped `ConnectNamedPipe` | `ServerOptions::create_async` → `tokio::PipeListener`, `accept().await` (cancel-safe) |
//! | `CreateFile` with `FILE_FLAG_OVERLAPPED` (+ `WaitNamedPipe`) | `ClientOptions::open_async(name).await` |
//! | overlapped `ReadFile` / `WriteFile` | `tokio::io::AsyncRead` / `AsyncWrite` on `tokio::PipeServer` / `tokio::PipeClient`; `read_message`, `recv_message`, `write_message` `.await` |
//! | `GetOverlappedResult` with `ERROR_MORE_DATA` | `read_message(..).await` → [`MessageRead::MoreData`] |
//! | overlapped `TransactNamedPipe`, `CallNamedPipe` | `tokio::PipeClient::transact(..).await`, `npipe::tokio::call(..).await` |
//! | `CancelIo`, `CancelIoEx` | dropping the future (each method documents its cancel safety) |
//! | `nInBufferSize` / `nOutBufferSize` | [`ServerOptions::in_buffer_size`] / [`ServerOptions::out_buffer_size`]: hints, as on Windows (the out size sets the server socket's send buffer; the client uses the in size for its own) |
//! | `dwDesiredAccess` (`GENERIC_READ`, `GENERIC_WRITE`) | [`ClientOptions::access`] with [`Access`]; the server end enforces the grant |
//! | `CloseHandle` | dropping the [`PipeServer`], [`PipeClient`] or [`PipeListener`] |
//! | `PIPE_NOWAIT` (nonblocking mode) | none: use the `tokio` front end, or read and write timeouts ([`PipeServer::set_read_timeout`]); Microsoft keeps `PIPE_NOWAIT` only for LAN Manager compatibility |
//! | `CreateProcessAsUser` with the client's token | [`PipeServer::spawn_as_client`] |
//!
//! ## Where the platforms differ
//!
//! Every deliberate difference from Windows' named pipes, on each
//! platform, why, and what a ported program should do about it. Everything
//! else behaves as on Windows, with the same error codes.
//!
//! | On | Difference | Why | What to do |
//! |---|---|---|---|
//! | Linux | Pipes are Unix domain sockets in one directory: `$NPIPE_DIR`, else `SYSTEM_DIR` (`/run/npipe`, made by `sudo npipe setup`) if it exists, else `DEFAULT_DIR` (`/tmp/.npipe`) | Linux has no pipe file system; a directory of sockets is what `/tmp/.X11-unix` is to X | On a shared machine run `sudo npipe setup` once, so no user can own the directory |
//! | Linux | All instances of a name belong to one server process; a second process gets *pipe busy* (*access denied* with `first_instance`) | One listening socket per name: a second process cannot add instances to another's socket | Serve every instance from one process (threads or tasks); `max_instances` works as on Windows within it |
//! | Linux | A bare `NAME` means `\\.\pipe\NAME` | A shell convenience | Nothing: the prefixed forms work too |
//! | Linux | A session id is the process's audit login session (`/proc/PID/sessionid`: shared by every process of one login, as a logon session is, and changed only by a privileged process); 0 for a process that came from no login (services, containers), as Windows' services are in session 0 | Linux has no Terminal Services sessions; the audit session is the kernel's own notion of one login | Compare them only with each other, never with Windows session numbers |
//! | Linux | The client's session is read when the server first asks (from the process the kernel recorded at connect, never looked up by pid), not stored at connect: asked only after the client process has exited, `client_session_id` is `None` | Reading it for every connection cost 8 % of the connection rate, and most servers never ask | Ask while the client waits for your answer, as servers do |
//! | Linux | After `DisconnectNamedPipe`, `client_process_id` still returns the pid of the client that was connected (`client_session_id` returns `None`) | It returns a plain `u32`, which cannot fail | Do not ask about a client after disconnecting it |
//! | Linux | A read on a server end whose client may not write fails at once with *access denied*, as a write to a client that may not read does | The grant is enforced by the server end, and waiting for data that can never come helps no one | Open clients with the access they use |
//! | Linux | After `DisconnectNamedPipe`, messages the server wrote before it stay readable by the client, then its operations fail with *pipe not connected* | The client's socket already holds them; Windows discards them | Do not rely on unread data being dropped |
//! | Linux | On a byte-type pipe a disconnected client sees *broken pipe* (109), not *pipe not connected* (233); so does a [`WriteHalf`]'s write on either type | Byte pipes carry no framing to mark the disconnect in, and a write half cannot look at the read side | Treat 109 and 233 alike as "the server is gone" |
//! | Linux | [`std::io::Read`] skips zero-length messages (`Ok(0)` would mean end of stream); [`PipeServer::read_message`] and `recv_message` return them | Rust's `Read` contract | Use the message methods when empty messages matter |
//! | Linux | `shutdown_write` half-closes a pipe | Sockets can; Windows pipes cannot | Optional; ported code never calls it |
//! | Linux | [`std::io::Write::flush`] returns at once; [`PipeServer::flush_buffers`] is `FlushFileBuffers` | `flush` must not wait for the peer, or `BufWriter`-style code would hang | Call `flush_buffers` where the Windows code called `FlushFileBuffers` |
//! | Linux | A server end exists only once connected: `ConnectNamedPipe` and the end it connects are one call, [`PipeListener::accept`] | Rust ownership: no unconnected handle to misuse | The unconnected-instance errors (`ERROR_PIPE_LISTENING`, impersonating with no client) cannot arise |
//! | Linux | Each server limits what its clients' unfinished large messages hold ([`ServerOptions::memory_budget`]); past it the server stops reading from them | Windows bounds a pipe by its buffer quota, npipe by a budget per listener | Raise the budget for servers that take many large messages at once |
//! | Linux | Names with `\` after the prefix hash to a socket file name; the full name travels in the handshake | `sun_path` is 108 bytes | Nothing: listings show the names as written |
//! | Linux | `\\HOST\pipe\NAME` goes over TLS 1.3 with a client certificate to `npipe gateway` on HOST (the `remote` feature), not over SMB; a remote client is known by its certificate's name and impersonated as the local user the gateway maps it to | Linux has no SMB logon to carry | Issue certificates with `npipe cert`, run the gateway, trust it on the servers (root is trusted): `docs/REMOTE.md` |
//! | Linux | On a remote pipe's client end the server's pid and user are unknown (0, a uid that names no one), `expect_server` is refused, and `flush_buffers` waits until TCP has the bytes acknowledged, not until the remote reader has read them | No kernel on the client's machine knows the server | The gateway's certificate, checked against your CA, vouches for the host |
//! | Windows | The ends are their own types with the same methods (not `Pipe<S, R>` aliases); the tokio ends' `readable` takes `&mut self` (it starts a read) | Overlapped reads live in the end | Call it on the end you own |
//! | Windows | `spawn_as_client` returns a `ClientProcess` (std's `Child` cannot be made from a process std did not start); the child gets only the environment variables set on the `Command` and pipes for its standard streams | `Command` does not tell whether `env_clear` was called nor how its streams were set, and a client's process must not see the server's environment | Set every variable the command needs (`SystemRoot` and `PATH` among them) |
//! | Windows | A write that times out (`set_write_timeout`), or a transaction (`set_read_timeout`), leaves the end cut (*broken pipe* after), and `flush_buffers` is not bounded by a timeout | The kernel does not always say how much of a cancelled write its reader took; `FlushFileBuffers` cannot be cancelled | Drop an end whose write timed out |
//! | Windows | No `shutdown_write` | A Windows pipe cannot be half-closed | Mark the end of a request in the protocol, or close |
//! | Windows | `list_pipes` and `query_pipe` give a `ListedPipe`: name and instance count, as Sysinternals PipeList shows; `wait_named_pipe` is `WaitNamedPipe` itself | Anything more would connect to the server and take an instance | Ask the server, if it offers a way |
//! | Windows | A client's credentials and groups come from its token, read while impersonating it at the level it allowed (unknown ids if the kernel refuses) | Windows keeps them in the token, not on the pipe | Nothing |
//! | Windows | A buffer size of 0 asks the kernel for 64 KiB | A Windows pipe made with no buffer holds no write, so every write would wait for its reader; Linux's sockets always buffer | Set the sizes to have Windows' exact behaviour |
//! | Windows | Users and groups are SIDs behind [`LocalUser`] and [`LocalGroup`] (ids index a per-process table, so they stay `Copy`; they are not uids) | Windows names principals by SID | Compare users with each other; their `Display` shows name and SID |
//! | Windows | A client that allowed identification only is impersonated at that level (what the server then opens fails with `ERROR_BAD_IMPERSONATION_LEVEL`); Linux refuses the impersonation itself (`ERROR_CANNOT_IMPERSONATE`) | The kernel's rule | Check the result of what you do while impersonating |
//! | Windows | `expect_server` is checked right after `CreateFile`, before a byte is sent | Windows connects before the server can be asked who it is | Nothing |
//! | Windows | `\\HOST\pipe\NAME` goes to the host over SMB, as `CreateFile` does | It is Windows' own remote pipe | Nothing |
//! | Windows under Wine | `FILE_FLAG_FIRST_PIPE_INSTANCE` and pipe DACLs are not enforced | Wine does not check them | Test security on Windows itself |
#![deny(unsafe_code)]
#![warn(missing_docs)]
// Without a backend (every target but Linux, for now) nothing uses the
// engine and the portable core: it is built there only to prove that it
// stands on its own (CI checks the Windows target).
#![cfg_attr(not(target_os = "linux"), allow(dead_code))]
#![cfg_attr(not(any(target_os = "linux", windows)), allow(unused_imports))]

// The portable core: names, options, security descriptors, the protocol and
// the engine's state machines. It builds on every target (CI checks it for
// Windows), so that nothing in it leans on the Unix backend unseen.
mod budget;
mod connect_core;
mod engine;
mod error;
mod identity;
mod info;
mod instance_counts;
mod name;
mod options;
mod policy;
#[cfg(test)]
mod props;
pub mod proto;
mod security;
#[cfg(test)]
mod skipped;
mod stream_core;
mod transport;
mod types;

// The Unix backend: the emulation over Unix sockets (DESIGN-NOTES has the
// contract a backend provides). On other targets npipe has only the
// portable core until their backend lands.
#[cfg(target_os = "linux")]
mod blocking;
#[cfg(target_os = "linux")]
mod client_socket;
#[cfg(target_os = "linux")]
mod dial;
#[cfg(target_os = "linux")]
mod fresh_connection;
#[cfg(target_os = "linux")]
mod impersonation;
#[cfg(target_os = "linux")]
mod listener_state;
#[cfg(target_os = "linux")]
mod listing;
#[cfg(target_os = "linux")]
mod namespace;
#[cfg(target_os = "linux")]
mod peek_io;
#[cfg(target_os = "linux")]
mod peer_process;
#[cfg(target_os = "linux")]
mod pipe;
#[cfg(all(target_os = "linux", feature = "remote"))]
pub mod remote;
#[cfg(target_os = "linux")]
mod remote_peer;
#[cfg(target_os = "linux")]
mod server_instance;
#[cfg(target_os = "linux")]
mod shm;
/// For the fuzz targets only: not part of the API.
#[cfg(target_os = "linux")]
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::shm::hostile::run as hostile_ring;
}
#[cfg(target_os = "linux")]
mod socket_transport;
#[cfg(any(target_os = "linux", windows))]
mod sys;
#[cfg(all(target_os = "linux", feature = "tokio"))]
pub mod tokio;
#[cfg(target_os = "linux")]
pub mod unix;
#[cfg(all(feature = "tokio", target_os = "linux"))]
mod waiters;
#[cfg(windows)]
mod windows;

pub use error::{Error, ErrorCode, Result};
pub use identity::{Identity, LocalGroup, LocalUser, RemotePrincipal};
pub use info::{ClientIdentity, End, PeerCredentials, PipeInfo};
pub use name::{PipeName, MAX_NAME_CHARS};
pub use options::{ClientOptions, ServerOptions};
pub use security::{Ace, AceKind, Rights, SecurityDescriptor, Subject, Trustee};
pub use stream_core::{MessageRead, Peek};
pub use types::{
    Access, Direction, ImpersonationLevel, PipeType, ReadMode, Wait, UNLIMITED_INSTANCES,
};

#[cfg(target_os = "linux")]
pub use blocking::{call, PipeClient, PipeListener, PipeServer, PipeStream, ReadHalf, WriteHalf};
#[cfg(target_os = "linux")]
pub use impersonation::Impersonation;
#[cfg(target_os = "linux")]
pub use listing::{list_pipes, query_pipe, remove_stale_pipes, PipeEntry, ServedPipe};
#[cfg(target_os = "linux")]
pub use namespace::Pruned;
#[cfg(target_os = "linux")]
pub use namespace::{directory as namespace_directory, DEFAULT_DIR, SYSTEM_DIR};
#[cfg(target_os = "linux")]
pub use pipe::{ClientEnd, Pipe, PipeIo, PipeRole, ServerEnd};
#[cfg(all(windows, feature = "tokio"))]
pub use windows::tokio;
#[cfg(windows)]
pub use windows::{
    call, list_pipes, query_pipe, wait_named_pipe, ClientProcess, Impersonation, ListedPipe,
    PipeClient, PipeListener, PipeServer, ReadHalf, WriteHalf,
};

/// The README's Rust example, compiled and run as a doctest.
#[doc = include_str!("../../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
