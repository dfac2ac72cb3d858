//! One error type for the whole crate, each variant carrying its Windows code.
//!
//! Code ported from Windows matches on `GetLastError()` values; here it matches
//! on [`Error::code`], which returns the same numbers (`ERROR_PIPE_BUSY` = 231 and
//! so on). Every [`Error`] also converts into a [`std::io::Error`] with a fitting
//! [`std::io::ErrorKind`], and back again with [`Error::from_io`].

use std::fmt;
use std::io;

/// The Windows error codes npipe reports, with their Win32 numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// `ERROR_FILE_NOT_FOUND` (2): no pipe of that name exists.
    FileNotFound,
    /// `ERROR_ACCESS_DENIED` (5): the operation is against the pipe's direction,
    /// the security descriptor refuses the caller, or the name is taken with
    /// `first_instance`.
    AccessDenied,
    /// `ERROR_BAD_NETPATH` (53): a remote host that cannot be reached.
    BadNetPath,
    /// `ERROR_INVALID_PARAMETER` (87): an option or argument out of range.
    InvalidParameter,
    /// `ERROR_BROKEN_PIPE` (109): the other end closed the pipe.
    BrokenPipe,
    /// `ERROR_SEM_TIMEOUT` (121): a wait or an I/O timed out.
    Timeout,
    /// `ERROR_INVALID_NAME` (123): the pipe name is malformed.
    InvalidName,
    /// `ERROR_BAD_PIPE` (230): the peer broke the protocol.
    BadPipe,
    /// `ERROR_PIPE_BUSY` (231): every instance of the pipe is busy.
    PipeBusy,
    /// `ERROR_NO_DATA` (232): the pipe is being closed.
    NoData,
    /// `ERROR_PIPE_NOT_CONNECTED` (233): no client is connected to this end.
    PipeNotConnected,
    /// `ERROR_MORE_DATA` (234): the message is longer than the buffer.
    MoreData,
    /// `ERROR_CANNOT_IMPERSONATE` (1368): the client did not grant impersonation.
    CannotImpersonate,
    /// `ERROR_PRIVILEGE_NOT_HELD` (1314): the process lacks a privilege the
    /// operation needs (impersonating another user needs root or
    /// `CAP_SETUID`/`CAP_SETGID`).
    PrivilegeNotHeld,
    /// `ERROR_NOT_SUPPORTED` (50): the operation is not supported here.
    NotSupported,
    /// Any other operating-system error; [`Error::code`] is then the Linux `errno`
    /// turned into the nearest Windows code where one exists, else
    /// `ERROR_GEN_FAILURE` (31).
    Other,
}

impl ErrorCode {
    /// The Win32 error number, as `GetLastError()` would return it.
    pub fn win32(self) -> u32 {
        match self {
            ErrorCode::FileNotFound => 2,
            ErrorCode::AccessDenied => 5,
            ErrorCode::Other => 31,
            ErrorCode::NotSupported => 50,
            ErrorCode::BadNetPath => 53,
            ErrorCode::InvalidParameter => 87,
            ErrorCode::BrokenPipe => 109,
            ErrorCode::Timeout => 121,
            ErrorCode::InvalidName => 123,
            ErrorCode::BadPipe => 230,
            ErrorCode::PipeBusy => 231,
            ErrorCode::NoData => 232,
            ErrorCode::PipeNotConnected => 233,
            ErrorCode::MoreData => 234,
            ErrorCode::CannotImpersonate => 1368,
            ErrorCode::PrivilegeNotHeld => 1314,
        }
    }

    /// The code for a Win32 error number, if npipe knows it.
    pub fn from_win32(code: u32) -> Option<ErrorCode> {
        Self::ALL.into_iter().find(|c| c.win32() == code)
    }

    /// Every code, for [`from_win32`](Self::from_win32).
    const ALL: [ErrorCode; 16] = [
        ErrorCode::PrivilegeNotHeld,
        ErrorCode::FileNotFound,
        ErrorCode::AccessDenied,
        ErrorCode::Other,
        ErrorCode::NotSupported,
        ErrorCode::BadNetPath,
        ErrorCode::InvalidParameter,
        ErrorCode::BrokenPipe,
        ErrorCode::Timeout,
        ErrorCode::InvalidName,
        ErrorCode::BadPipe,
        ErrorCode::PipeBusy,
        ErrorCode::NoData,
        ErrorCode::PipeNotConnected,
        ErrorCode::MoreData,
        ErrorCode::CannotImpersonate,
    ];

    /// The Windows constant's name, e.g. `"ERROR_PIPE_BUSY"`.
    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::FileNotFound => "ERROR_FILE_NOT_FOUND",
            ErrorCode::AccessDenied => "ERROR_ACCESS_DENIED",
            ErrorCode::Other => "ERROR_GEN_FAILURE",
            ErrorCode::NotSupported => "ERROR_NOT_SUPPORTED",
            ErrorCode::BadNetPath => "ERROR_BAD_NETPATH",
            ErrorCode::InvalidParameter => "ERROR_INVALID_PARAMETER",
            ErrorCode::BrokenPipe => "ERROR_BROKEN_PIPE",
            ErrorCode::Timeout => "ERROR_SEM_TIMEOUT",
            ErrorCode::InvalidName => "ERROR_INVALID_NAME",
            ErrorCode::BadPipe => "ERROR_BAD_PIPE",
            ErrorCode::PipeBusy => "ERROR_PIPE_BUSY",
            ErrorCode::NoData => "ERROR_NO_DATA",
            ErrorCode::PipeNotConnected => "ERROR_PIPE_NOT_CONNECTED",
            ErrorCode::MoreData => "ERROR_MORE_DATA",
            ErrorCode::CannotImpersonate => "ERROR_CANNOT_IMPERSONATE",
            ErrorCode::PrivilegeNotHeld => "ERROR_PRIVILEGE_NOT_HELD",
        }
    }

    /// The `std::io::ErrorKind` this code converts to.
    pub fn io_kind(self) -> io::ErrorKind {
        match self {
            ErrorCode::FileNotFound => io::ErrorKind::NotFound,
            ErrorCode::AccessDenied
            | ErrorCode::CannotImpersonate
            | ErrorCode::PrivilegeNotHeld => io::ErrorKind::PermissionDenied,
            ErrorCode::BadNetPath => io::ErrorKind::HostUnreachable,
            ErrorCode::InvalidParameter | ErrorCode::InvalidName => io::ErrorKind::InvalidInput,
            ErrorCode::BrokenPipe | ErrorCode::NoData => io::ErrorKind::BrokenPipe,
            ErrorCode::Timeout => io::ErrorKind::TimedOut,
            ErrorCode::BadPipe | ErrorCode::MoreData => io::ErrorKind::InvalidData,
            ErrorCode::PipeBusy => io::ErrorKind::ResourceBusy,
            ErrorCode::PipeNotConnected => io::ErrorKind::NotConnected,
            ErrorCode::NotSupported => io::ErrorKind::Unsupported,
            ErrorCode::Other => io::ErrorKind::Other,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.win32())
    }
}

/// An npipe error: a Windows [`ErrorCode`], a message that says what happened
/// and what to do, and the operating-system error beneath, if any.
///
/// ```
/// use npipe::{ClientOptions, ErrorCode};
///
/// let err = ClientOptions::new().open("no-such-pipe-for-this-example").unwrap_err();
/// assert_eq!(err.code(), ErrorCode::FileNotFound);
/// assert_eq!(err.win32_code(), 2); // what GetLastError() would say
/// // It converts into std::io::Error with a fitting kind, and back.
/// let io: std::io::Error = err.into();
/// assert_eq!(io.kind(), std::io::ErrorKind::NotFound);
/// assert_eq!(npipe::Error::from_io(io).code(), ErrorCode::FileNotFound);
/// ```
#[derive(Debug, thiserror::Error)]
#[error("{message} [{code}]")]
pub struct Error {
    code: ErrorCode,
    message: String,
    #[source]
    source: Option<io::Error>,
}

/// The crate's `Result`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An error with a code and a message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Error {
        Error {
            code,
            message: message.into(),
            source: None,
        }
    }

    /// The same error with the operating-system error beneath it attached.
    pub fn with_source(mut self, source: io::Error) -> Error {
        self.source = Some(source);
        self
    }

    /// The same error with another code.
    pub(crate) fn with_code(mut self, code: ErrorCode) -> Error {
        self.code = code;
        self
    }

    /// The Windows error code.
    pub fn code(&self) -> ErrorCode {
        self.code
    }

    /// The Win32 error number, as `GetLastError()` would return it.
    pub fn win32_code(&self) -> u32 {
        self.code.win32()
    }

    /// The human-readable message, without the code.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Recovers an npipe error from an `io::Error` made from one (by the
    /// `From` conversion), or classifies a plain OS error.
    pub fn from_io(err: io::Error) -> Error {
        if err.get_ref().is_some_and(|inner| inner.is::<Error>()) {
            match err.into_inner().map(|inner| inner.downcast::<Error>()) {
                Some(Ok(e)) => return *e,
                _ => unreachable!("checked above"),
            }
        }
        Error::os(err, "I/O error")
    }

    /// Classifies an operating-system error, with `context` saying what npipe
    /// was doing.
    /// An npipe error carried inside `err` (a transport's own failure, such
    /// as a corrupted shared-memory ring) comes back as itself, code and
    /// all, not as an unclassified OS error.
    pub(crate) fn os(err: io::Error, context: &str) -> Error {
        if err.get_ref().is_some_and(|inner| inner.is::<Error>()) {
            return Error::from_io(err);
        }
        let code = code_by_number(&err).unwrap_or(match err.kind() {
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => ErrorCode::Timeout,
            io::ErrorKind::BrokenPipe => ErrorCode::BrokenPipe,
            io::ErrorKind::PermissionDenied => ErrorCode::AccessDenied,
            _ => ErrorCode::Other,
        });
        Error::new(code, format!("{context}: {err}")).with_source(err)
    }

    pub(crate) fn broken_pipe(what: &str) -> Error {
        Error::new(
            ErrorCode::BrokenPipe,
            format!("the other end closed the pipe {what}"),
        )
    }

    pub(crate) fn disconnected_by_server() -> Error {
        Error::new(
            ErrorCode::PipeNotConnected,
            "the server disconnected this client (DisconnectNamedPipe)",
        )
    }

    pub(crate) fn not_connected() -> Error {
        Error::new(
            ErrorCode::PipeNotConnected,
            "the pipe is not connected (this end was disconnected)",
        )
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Error {
        Error::new(ErrorCode::InvalidParameter, message)
    }
}

impl From<Error> for io::Error {
    fn from(err: Error) -> io::Error {
        io::Error::new(err.code.io_kind(), err)
    }
}

/// The backend's reading of an OS error's number (it knows its system's
/// numbers); `None` sends the error to its kind.
#[cfg(any(target_os = "linux", windows))]
fn code_by_number(err: &io::Error) -> Option<ErrorCode> {
    err.raw_os_error().and_then(crate::sys::error_code_of)
}

#[cfg(not(any(target_os = "linux", windows)))]
fn code_by_number(_: &io::Error) -> Option<ErrorCode> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_match_windows() {
        assert_eq!(ErrorCode::PipeBusy.win32(), 231);
        assert_eq!(ErrorCode::BrokenPipe.win32(), 109);
        assert_eq!(ErrorCode::NoData.win32(), 232);
        assert_eq!(ErrorCode::PipeNotConnected.win32(), 233);
        assert_eq!(ErrorCode::MoreData.win32(), 234);
        assert_eq!(ErrorCode::Timeout.win32(), 121);
        assert_eq!(ErrorCode::FileNotFound.win32(), 2);
        assert_eq!(ErrorCode::AccessDenied.win32(), 5);
        assert_eq!(ErrorCode::BadPipe.win32(), 230);
        assert_eq!(ErrorCode::InvalidName.win32(), 123);
        assert_eq!(ErrorCode::BadNetPath.win32(), 53);
        assert_eq!(ErrorCode::CannotImpersonate.win32(), 1368);
        // Every code maps back to itself: no two share a Windows number.
        for c in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_win32(c.win32()), Some(c));
        }
    }

    #[test]
    fn an_npipe_error_inside_an_io_error_keeps_its_code() {
        // As a transport reports a corrupted ring: ERROR_BAD_PIPE, not 31.
        let inner = Error::new(ErrorCode::BadPipe, "the ring is corrupt");
        let io = io::Error::new(io::ErrorKind::InvalidData, inner);
        let e = Error::os(io, "read");
        assert_eq!(e.code(), ErrorCode::BadPipe);
        assert!(e.message().contains("the ring is corrupt"), "{e}");
    }

    #[test]
    fn round_trips_through_io_error() {
        let e = Error::new(ErrorCode::PipeBusy, "all instances busy");
        let io: io::Error = e.into();
        assert_eq!(io.kind(), io::ErrorKind::ResourceBusy);
        let back = Error::from_io(io);
        assert_eq!(back.code(), ErrorCode::PipeBusy);
        assert_eq!(back.message(), "all instances busy");
    }

    #[test]
    #[cfg(any(target_os = "linux", windows))]
    fn os_errors_are_classified() {
        // EPIPE and ENOENT on Linux; ERROR_BROKEN_PIPE and
        // ERROR_FILE_NOT_FOUND on Windows.
        let (broken, missing) = if cfg!(windows) { (109, 2) } else { (32, 2) };
        let e = Error::os(io::Error::from_raw_os_error(broken), "write");
        assert_eq!(e.code(), ErrorCode::BrokenPipe);
        let e = Error::os(io::Error::from_raw_os_error(missing), "open");
        assert_eq!(e.code(), ErrorCode::FileNotFound);
        assert!(e.to_string().contains("[ERROR_FILE_NOT_FOUND (2)]"));
    }
}
