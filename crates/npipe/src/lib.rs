//! # npipe: Windows named pipes for Rust, on Linux
//!
//! Named endpoints (`\\.\pipe\NAME`), byte and message types, one-way or
//! duplex, many instances of one name, clients that wait for a free instance,
//! the client's process and user from the kernel, and the Windows error codes
//! ported code expects, over Unix domain sockets.
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
//! | `PIPE_READMODE_*`, `SetNamedPipeHandleState` | [`ReadMode`], [`PipeStream::set_read_mode`] |
//! | `nMaxInstances`, `PIPE_UNLIMITED_INSTANCES` | [`ServerOptions::max_instances`], [`UNLIMITED_INSTANCES`] |
//! | `nDefaultTimeOut` | [`ServerOptions::default_timeout`] |
//! | `FILE_FLAG_FIRST_PIPE_INSTANCE` | [`ServerOptions::first_instance`] |
//! | `ConnectNamedPipe` | [`PipeListener::accept`], [`PipeListener::accept_timeout`] |
//! | `DisconnectNamedPipe` | [`PipeServer::disconnect`] |
//! | `CreateFile` on a pipe name | [`ClientOptions::open`] |
//! | `WaitNamedPipe` | [`ClientOptions::wait`] with [`Wait`] (waiting and connecting are one step) |
//! | `ReadFile` / `WriteFile` | [`std::io::Read`] / [`std::io::Write`], [`PipeStream::read_message`] / [`PipeStream::write_message`] |
//! | `ERROR_MORE_DATA` | [`MessageRead::MoreData`] |
//! | `TransactNamedPipe` | [`PipeStream::transact`] (reply as a `Vec`), [`PipeStream::transact_into`] (the caller's buffer; a short one gives [`MessageRead::MoreData`]) |
//! | `CallNamedPipe` | [`call`] |
//! | `PeekNamedPipe` | [`PipeStream::peek`] |
//! | `FlushFileBuffers` | [`PipeStream::flush_buffers`] |
//! | `GetNamedPipeInfo`, `GetNamedPipeHandleState` | [`PipeStream::info`], [`PipeListener::info`], [`query_pipe`] |
//! | `GetNamedPipeClientProcessId` | [`PipeServer::client_process_id`] |
//! | `GetNamedPipeServerProcessId` | [`PipeClient::server_process_id`] |
//! | `GetNamedPipeClientSessionId` | [`PipeServer::client_session_id`] |
//! | `GetNamedPipeClientComputerName` | [`PipeServer::client_computer_name`] |
//! | `GetNamedPipeHandleState`'s user name | [`PipeServer::client_user_name`] |
//! | `lpSecurityAttributes` (DACL) | [`ServerOptions::security`], [`SecurityDescriptor`] |
//! | `PIPE_REJECT_REMOTE_CLIENTS` | [`ServerOptions::reject_remote_clients`] |
//! | `ImpersonateNamedPipeClient` / `RevertToSelf` | [`PipeServer::impersonate`] (guard) / dropping the guard; [`PipeServer::run_as_client`] |
//! | `CreateProcessAsUser` with the client's token | [`PipeServer::spawn_as_client`] |
//! | `SECURITY_IDENTIFICATION` / `SECURITY_IMPERSONATION` | [`ClientOptions::impersonation_level`], [`ImpersonationLevel`] |
//! | (pipe squatting defence) | [`ClientOptions::expect_server_user`] |
//! | `GetLastError()` | [`Error::code`], [`Error::win32_code`] |
//! | Sysinternals PipeList | [`list_pipes`] |
//! | Overlapped I/O (`FILE_FLAG_OVERLAPPED`) | feature `tokio`: the `npipe::tokio` module, same types and semantics as async Rust |
//! | `CreateNamedPipe` + overlapped `ConnectNamedPipe` | `ServerOptions::create_async` → `tokio::PipeListener`, `accept().await` (cancel-safe) |
//! | `CreateFile` with `FILE_FLAG_OVERLAPPED` (+ `WaitNamedPipe`) | `ClientOptions::open_async(name).await` |
//! | overlapped `ReadFile` / `WriteFile` | `tokio::io::AsyncRead` / `AsyncWrite` on `tokio::PipeServer` / `tokio::PipeClient`; `read_message`, `recv_message`, `write_message` `.await` |
//! | `GetOverlappedResult` with `ERROR_MORE_DATA` | `read_message(..).await` → [`MessageRead::MoreData`] |
//! | overlapped `TransactNamedPipe`, `CallNamedPipe` | `tokio::PipeStream::transact(..).await`, `npipe::tokio::call(..).await` |
//! | `CancelIo`, `CancelIoEx` | dropping the future (each method documents its cancel safety) |
//!
//! ## Where Linux differs
//!
//! - Pipes are Unix domain sockets in one directory: `$NPIPE_DIR`, else
//!   [`SYSTEM_DIR`] (`/run/npipe`, made by `sudo npipe setup`) if it exists,
//!   else [`DEFAULT_DIR`] (`/tmp/.npipe`, mode 1777). Names are case-insensitive and may be up to
//!   256 characters; long names map to hashed file names.
//! - All instances of a name belong to one server process (Windows lets
//!   several processes create instances of one name). A second process gets
//!   *pipe busy*, or *access denied* with `first_instance`.
//! - [`PipeStream::shutdown_write`] half-closes a pipe, which Windows cannot.
//! - [`std::io::Write::flush`] returns at once; [`PipeStream::flush_buffers`]
//!   is `FlushFileBuffers`.
#![deny(unsafe_code)]
#![warn(missing_docs)]

mod blocking;
mod budget;
mod connect_core;
mod error;
mod info;
mod instance_counts;
mod listing;
mod name;
mod namespace;
mod options;
mod policy;
#[cfg(test)]
mod props;
pub mod proto;
mod security;
mod stream_core;
mod sys;
#[cfg(feature = "tokio")]
pub mod tokio;

pub use blocking::{
    call, Impersonation, PipeClient, PipeListener, PipeServer, PipeStream, ReadHalf, WriteHalf,
};
pub use error::{Error, ErrorCode, Result};
pub use info::{ClientIdentity, End, PeerCredentials, PipeInfo};
pub use listing::{list_pipes, query_pipe, remove_stale_pipes, PipeEntry, Pruned, ServedPipe};
pub use name::{PipeName, MAX_NAME_CHARS};
pub use namespace::{directory as namespace_directory, DEFAULT_DIR, SYSTEM_DIR};
pub use options::{
    Access, ClientOptions, Direction, ImpersonationLevel, PipeType, ReadMode, ServerOptions, Wait,
    UNLIMITED_INSTANCES,
};
pub use security::{user_id, Ace, AceKind, Rights, SecurityDescriptor, Subject, Trustee};
pub use stream_core::{MessageRead, Peek};

/// The README's Rust example, compiled and run as a doctest.
#[doc = include_str!("../../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
