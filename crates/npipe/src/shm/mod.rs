//! The shared-memory data path (Linux): after the handshake, two ends that
//! both support it move their data to a ring per direction in one sealed
//! memory file, and keep the socket for credentials, closing and waking a
//! peer that sleeps. This module holds the rings; the memory itself is
//! `sys::ShmRegion`.

#[doc(hidden)]
pub mod hostile;
pub(crate) mod late;
pub(crate) mod link;
pub(crate) mod ring;
pub(crate) mod transport;
