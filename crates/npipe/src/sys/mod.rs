//! Every system call and every `unsafe` block of the Unix backend lives
//! here, behind a small interface (sockets, directories, credentials,
//! polling), as in mio. The crate builds this module on Linux only
//! (`lib.rs`); the portable core does not use it.
#![allow(unsafe_code)]

mod unix;
pub use unix::*;

#[cfg(feature = "tokio")]
mod async_fd;
#[cfg(feature = "tokio")]
pub use async_fd::{register as register_async, register_owned as register_async_owned, Fd};
