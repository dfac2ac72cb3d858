//! Every system call and every `unsafe` block of the crate lives here, behind
//! a small interface (sockets, directories, credentials, polling), as in mio.
//! The rest of the crate is portable over it.
#![allow(unsafe_code)]

#[cfg(target_os = "linux")]
mod unix;
#[cfg(target_os = "linux")]
pub use unix::*;

#[cfg(feature = "tokio")]
mod async_fd;
#[cfg(feature = "tokio")]
pub use async_fd::{register as register_async, register_owned as register_async_owned, Fd};

#[cfg(not(target_os = "linux"))]
compile_error!("npipe supports Linux only for now");
