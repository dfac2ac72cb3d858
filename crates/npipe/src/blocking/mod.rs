//! The blocking front end: std sockets, threads, timeouts.

mod client;
mod listener;
mod stream;

pub use client::{call, PipeClient};
pub use listener::{PipeListener, PipeServer};
pub use stream::{MessageRead, Peek, PipeStream, ReadHalf, WriteHalf};
