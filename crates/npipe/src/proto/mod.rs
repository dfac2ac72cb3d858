//! The wire protocol, version 1, as plain state machines: no sockets, no
//! clocks. The blocking front end (and later the tokio one and the gateway)
//! move bytes and wait; everything that parses or decides lives here.
//!
//! - [`handshake`]: the client's HELLO and the server's REPLY.
//! - [`framing`]: message-type framing (a length header per message).
//! - [`admission`]: which waiting client gets the next free instance, and when
//!   a wait has run out.
//! - [`startups`]: how many handshakes other users may have in flight.
//! - `handoff`: a gateway handing a remote client's connection to the
//!   pipe's server (the `remote` feature).
//!
//! `docs/PROTOCOL.md` gives the exact bytes.

pub mod admission;
pub mod framing;
#[cfg(all(feature = "remote", target_os = "linux"))]
pub mod handoff;
pub mod handshake;
pub mod startups;

use crate::error::{Error, ErrorCode};

/// The four bytes that open every HELLO and REPLY.
pub const MAGIC: [u8; 4] = *b"NPIP";
/// The protocol version this crate speaks.
pub const VERSION: u8 = 1;

/// A peer broke the protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    /// The first bytes are not `NPIP`: not an npipe peer.
    #[error("the peer is not speaking the npipe protocol (bad magic)")]
    BadMagic,
    /// A version this crate does not speak.
    #[error("the peer speaks npipe protocol version {0}; this side speaks version 1")]
    BadVersion(u8),
    /// A length over its bound.
    #[error("{field} is {len} bytes long; at most {max} are allowed")]
    TooLong {
        /// Which field.
        field: &'static str,
        /// The length the peer claimed.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// A value outside its range.
    #[error("invalid {field} value {value}")]
    BadValue {
        /// Which field.
        field: &'static str,
        /// The value the peer sent.
        value: u64,
    },
    /// A string that is not UTF-8.
    #[error("{0} is not valid UTF-8")]
    BadUtf8(&'static str),
    /// The server's disconnect mark ([`framing::DISCONNECT_MARK`]) where a
    /// message header was due: the server disconnected this client.
    #[error("the server disconnected this client (DisconnectNamedPipe)")]
    Disconnected,
    /// A message longer than the receiver accepts.
    #[error("the peer sent a {len}-byte message; this end accepts at most {max} bytes")]
    MessageTooLarge {
        /// The length in the header.
        len: u32,
        /// The receiver's maximum.
        max: u32,
    },
}

impl From<ProtoError> for Error {
    fn from(e: ProtoError) -> Error {
        let code = match e {
            ProtoError::BadVersion(_) => ErrorCode::NotSupported,
            ProtoError::Disconnected => ErrorCode::PipeNotConnected,
            _ => ErrorCode::BadPipe,
        };
        Error::new(code, e.to_string())
    }
}
