//! Every system call and every `unsafe` block lives here, behind a small
//! interface per backend, as in mio: on Linux the Unix backend's (sockets,
//! directories, credentials, polling), on Windows the named pipe file
//! system's own calls. The portable core does not use it.
#![allow(unsafe_code)]

#[cfg(target_os = "linux")]
mod unix;
#[cfg(target_os = "linux")]
pub use unix::*;
#[cfg(target_os = "linux")]
mod shm;
#[cfg(target_os = "linux")]
pub use shm::{futex_wait, futex_wake, ShmRegion};

#[cfg(windows)]
mod windows;
#[cfg(windows)]
pub use windows::*;
#[cfg(windows)]
mod windows_spawn;
#[cfg(windows)]
pub use windows_spawn::*;
#[cfg(all(windows, feature = "tokio"))]
mod overlapped;
#[cfg(all(windows, feature = "tokio"))]
pub use overlapped::{Done, OpKind, Overlapped};

#[cfg(all(target_os = "linux", feature = "tokio"))]
mod async_fd;
#[cfg(all(target_os = "linux", feature = "tokio"))]
pub use async_fd::{
    register_for as register_async_for, register_owned as register_async_owned, Fd,
};
