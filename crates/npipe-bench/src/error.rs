//! The error the bench returns: why a run, or one of its server processes, failed.
//!
//! The bench does not print its own failures or pick exit codes: it returns
//! an [`Error`] and the program that ran it (`npipe`) reports it as it
//! reports its other commands' failures.

use std::fmt;
use std::io;

/// Why a bench run, or one of its server processes, failed.
#[derive(Debug)]
pub enum Error {
    /// The arguments ask for what cannot be done (no case matches them,
    /// `--pin split` with one CPU); `hint`, if any, says what can.
    Usage {
        /// What is wrong.
        message: String,
        /// What would work instead.
        hint: Option<String>,
    },
    /// An npipe call failed; the error keeps its Windows code.
    Npipe(npipe::Error),
    /// Standard output could not be written (its reader may have gone).
    Stdout(io::Error),
    /// Anything else: a process that did not start, a socket, an answer
    /// not as planned.
    Other(String),
}

impl Error {
    /// A usage error, without a hint.
    pub(crate) fn usage(message: impl Into<String>) -> Error {
        Error::Usage {
            message: message.into(),
            hint: None,
        }
    }

    /// Any other failure of the bench's own.
    pub(crate) fn other(message: impl Into<String>) -> Error {
        Error::Other(message.into())
    }

    /// An I/O error on a pipe through `std::io::Read`/`Write`: recovers the
    /// npipe error inside it, so its code survives.
    pub(crate) fn pipe_io(err: io::Error) -> Error {
        Error::Npipe(npipe::Error::from_io(err))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Usage { message, .. } | Error::Other(message) => f.write_str(message),
            Error::Npipe(err) => err.fmt(f),
            Error::Stdout(err) => write!(f, "cannot write standard output: {err}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Npipe(err) => Some(err),
            Error::Stdout(err) => Some(err),
            Error::Usage { .. } | Error::Other(_) => None,
        }
    }
}

impl From<npipe::Error> for Error {
    fn from(err: npipe::Error) -> Error {
        Error::Npipe(err)
    }
}
