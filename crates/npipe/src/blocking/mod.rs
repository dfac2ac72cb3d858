//! The blocking front end: std sockets, threads, timeouts.

mod client;
mod listener;
mod stream;

pub use client::{call, PipeClient};
pub(crate) use client::{call_with, read_reply};
#[cfg(feature = "tokio")]
pub(crate) use listener::{admit_connection, fence_to_grant, refuse, send_reply};
pub(crate) use listener::{cannot_impersonate, no_client_to_impersonate, spawn_as_user};
pub use listener::{Impersonation, PipeListener, PipeServer};
#[cfg(feature = "tokio")]
pub(crate) use stream::peek;
pub use stream::{PipeStream, ReadHalf, WriteHalf};
