//! Cross-process tests of the local pipe behaviour: every test runs the
//! server and the client in different processes (this binary re-run as a
//! child, see `common` and `roles`).
//!
//! They test the Linux emulation (its sockets, `/proc`, uid 65534); the
//! Windows backend's tests are the library's own (`src/windows/tests.rs`),
//! run under Wine by `tools/windows-tests`.
#![cfg(target_os = "linux")]

mod common;
#[path = "../support/procfs.rs"]
mod procfs;
#[path = "../support/raw_client.rs"]
mod raw_client;
mod roles;
#[path = "../support/shared_copy.rs"]
mod shared_copy;

mod faults;
mod grants;
mod handshake;
mod instances;
mod listing;
mod memory;
mod mixes;
mod names;
mod peers;
mod remote_identity;
#[cfg(feature = "remote")]
mod remote_pipes;
mod security;
mod shared_memory;
mod soak;
mod starvation;
