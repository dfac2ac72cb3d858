//! The small enums of the API, the parameters `CreateNamedPipe` and
//! `CreateFile` take (direction, pipe type, read mode, access, wait,
//! impersonation level): in a module of their own, low in the dependency
//! order, so that the protocol, the security descriptor and the options
//! can all use them without depending on one another.

use std::time::Duration;

/// `PIPE_UNLIMITED_INSTANCES`: pass to [`ServerOptions::max_instances`](crate::ServerOptions::max_instances) for no limit.
pub const UNLIMITED_INSTANCES: u32 = 255;

/// Which way data flows, seen from the server (`PIPE_ACCESS_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// `PIPE_ACCESS_INBOUND`: the client writes, the server reads.
    Inbound,
    /// `PIPE_ACCESS_OUTBOUND`: the server writes, the client reads.
    Outbound,
    /// `PIPE_ACCESS_DUPLEX`: both ends read and write.
    Duplex,
}

impl Direction {
    /// Whether the server end may read.
    pub fn server_reads(self) -> bool {
        matches!(self, Direction::Inbound | Direction::Duplex)
    }
    /// Whether the server end may write.
    pub fn server_writes(self) -> bool {
        matches!(self, Direction::Outbound | Direction::Duplex)
    }
    /// The access the server end has on a pipe of this direction.
    pub fn server_access(self) -> Access {
        Access::of(self.server_reads(), self.server_writes())
    }
    /// The access a client is allowed on a pipe of this direction.
    pub fn client_access(self) -> Access {
        match self {
            Direction::Inbound => Access::Write,
            Direction::Outbound => Access::Read,
            Direction::Duplex => Access::ReadWrite,
        }
    }
}

/// Bytes or messages on the wire, fixed by the server (`PIPE_TYPE_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PipeType {
    /// `PIPE_TYPE_BYTE`: a stream of bytes, no boundaries (the raw socket's data path).
    Byte,
    /// `PIPE_TYPE_MESSAGE`: each write is one message, delivered whole.
    Message,
}

/// How one end reads (`PIPE_READMODE_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReadMode {
    /// Read as a stream of bytes, across message boundaries.
    Byte,
    /// Read one message at a time; a short buffer gets part and *more data*.
    Message,
}

/// The access a client asks for (`GENERIC_READ`, `GENERIC_WRITE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    /// Read only.
    Read,
    /// Write only.
    Write,
    /// Read and write.
    ReadWrite,
}

impl Access {
    /// Whether this includes reading.
    pub fn reads(self) -> bool {
        matches!(self, Access::Read | Access::ReadWrite)
    }
    /// Whether this includes writing.
    pub fn writes(self) -> bool {
        matches!(self, Access::Write | Access::ReadWrite)
    }
    /// The access of an end that may read and/or write (at least one).
    pub(crate) fn of(reads: bool, writes: bool) -> Access {
        match (reads, writes) {
            (true, false) => Access::Read,
            (false, true) => Access::Write,
            _ => Access::ReadWrite,
        }
    }

    /// Whether every right in `self` is also in `other`.
    pub fn within(self, other: Access) -> bool {
        (!self.reads() || other.reads()) && (!self.writes() || other.writes())
    }
}

/// How long a client waits for a free instance (`WaitNamedPipe`).
///
/// Waiting and connecting are one step: a waiting client is handed the next
/// free instance itself, first come first served, so no other client can take
/// it between "an instance is free" and "I took it".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Wait {
    /// Fail with *pipe busy* at once if every instance is busy (what
    /// `CreateFile` alone does).
    #[default]
    NoWait,
    /// `NMPWAIT_USE_DEFAULT_WAIT`: the server's default timeout.
    ServerDefault,
    /// Up to this long, then *timeout* (`ERROR_SEM_TIMEOUT`).
    Timeout(Duration),
    /// `NMPWAIT_WAIT_FOREVER`.
    Forever,
}

impl Wait {
    /// The wait of a `call` given `timeout`: none at all for zero (busy at
    /// once), else up to `timeout`. One rule for every `call`, blocking or
    /// tokio, on Linux and on Windows.
    pub(crate) fn for_call(timeout: Duration) -> Wait {
        if timeout.is_zero() {
            Wait::NoWait
        } else {
            Wait::Timeout(timeout)
        }
    }
}

/// What a client lets the server do with its identity
/// (`SECURITY_IDENTIFICATION`, `SECURITY_IMPERSONATION`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ImpersonationLevel {
    /// The server may learn who the client is, but not act as it.
    Identification,
    /// The server may act as the client (Windows' default).
    #[default]
    Impersonation,
}
