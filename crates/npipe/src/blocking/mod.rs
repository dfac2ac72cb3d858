//! The blocking front end: std sockets, threads, timeouts.

mod client;
mod listener;
mod stream;

pub use client::{call, PipeClient};
pub(crate) use client::{call_with, read_reply};
pub use listener::{PipeListener, PipeServer};
pub use stream::{PipeStream, ReadHalf, WriteHalf};
