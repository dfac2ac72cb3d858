//! The blocking front end: std sockets, threads, timeouts.

mod client;
mod listener;
mod stream;

pub(crate) use client::call_with;
pub use client::{call, PipeClient};
#[cfg(feature = "tokio")]
pub(crate) use listener::cannot_impersonate;
pub use listener::{Impersonation, PipeListener, PipeServer};
pub use stream::{PipeStream, ReadHalf, WriteHalf};
