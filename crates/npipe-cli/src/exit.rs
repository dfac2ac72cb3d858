//! Turning failures into a message on stderr, a hint, and an exit code.
//!
//! Every command returns `Result<(), Failure>` (`bench` returns an
//! `npipe_bench::Error`, which converts into one). A [`Failure`] carries the
//! message to print (`npipe: <message>`), an optional hint line, and the
//! [`Status`] that picks the process exit code. The codes are documented in
//! the top-level `--help` ([`EXIT_CODES_HELP`]); keep the two in step.

use std::fmt;
use std::io;
use std::process::ExitCode;

use npipe::ErrorCode;

/// The exit-code table shown at the end of `npipe --help`.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  success
  1  any other failure (a protocol error, an I/O error on stdin, ...)
  2  usage: bad arguments, an invalid pipe name or option value
  3  not found: no pipe of that name exists
     (ERROR_FILE_NOT_FOUND, ERROR_BAD_NETPATH)
  4  busy: every instance of the pipe is busy, or another process already
     serves the name (ERROR_PIPE_BUSY)
  5  access denied: the pipe's direction or security refuses this access,
     or --first-instance found the name taken (ERROR_ACCESS_DENIED)
  6  timeout: no instance became free, or the server did not answer, in time
     (ERROR_SEM_TIMEOUT)
  7  broken pipe: the other end closed the pipe
     (ERROR_BROKEN_PIPE, ERROR_NO_DATA, ERROR_PIPE_NOT_CONNECTED)";

/// The class of a failure; each has its own exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Anything not covered below (exit 1).
    Other,
    /// Bad arguments or an invalid name (exit 2, as clap's usage errors).
    Usage,
    /// No such pipe (exit 3).
    NotFound,
    /// Every instance busy (exit 4).
    Busy,
    /// Access denied (exit 5).
    AccessDenied,
    /// A wait or an I/O timed out (exit 6).
    Timeout,
    /// The other end closed the pipe (exit 7).
    BrokenPipe,
}

impl Status {
    /// The process exit code for this class.
    pub fn exit_code(self) -> u8 {
        match self {
            Status::Other => 1,
            Status::Usage => 2,
            Status::NotFound => 3,
            Status::Busy => 4,
            Status::AccessDenied => 5,
            Status::Timeout => 6,
            Status::BrokenPipe => 7,
        }
    }

    /// The class of an npipe error code.
    pub fn of(code: ErrorCode) -> Status {
        match code {
            ErrorCode::FileNotFound | ErrorCode::BadNetPath => Status::NotFound,
            ErrorCode::PipeBusy => Status::Busy,
            ErrorCode::AccessDenied | ErrorCode::CannotImpersonate => Status::AccessDenied,
            ErrorCode::Timeout => Status::Timeout,
            ErrorCode::BrokenPipe | ErrorCode::NoData | ErrorCode::PipeNotConnected => {
                Status::BrokenPipe
            }
            ErrorCode::InvalidName | ErrorCode::InvalidParameter => Status::Usage,
            _ => Status::Other,
        }
    }
}

/// Why a command failed, ready to be reported.
#[derive(Debug)]
pub struct Failure {
    message: String,
    status: Status,
    hint: Option<String>,
    /// Standard output was closed by its reader (`npipe list | head -1`):
    /// stop quietly and exit 0, as other tools do.
    quiet: bool,
}

impl Failure {
    /// A failure with a message of our own.
    pub fn new(status: Status, message: impl Into<String>) -> Failure {
        Failure {
            message: message.into(),
            status,
            hint: None,
            quiet: false,
        }
    }

    /// Replaces the hint line.
    pub fn hint(mut self, hint: impl Into<String>) -> Failure {
        self.hint = Some(hint.into());
        self
    }

    /// An I/O error on a pipe through `std::io::Read`/`Write`: recovers the
    /// npipe error inside it, so the code (and the exit status) survive.
    pub fn pipe_io(err: io::Error) -> Failure {
        npipe::Error::from_io(err).into()
    }

    /// An I/O error on standard input.
    pub fn stdin(err: io::Error) -> Failure {
        Failure::new(Status::Other, format!("cannot read standard input: {err}"))
    }

    /// An I/O error on standard output. A closed stdout stops the command
    /// quietly.
    pub fn stdout(err: io::Error) -> Failure {
        let mut f = Failure::new(
            Status::Other,
            format!("cannot write standard output: {err}"),
        );
        f.quiet = err.kind() == io::ErrorKind::BrokenPipe;
        f
    }

    /// Prints the failure to stderr and returns the exit code.
    pub fn report(&self) -> ExitCode {
        if self.quiet {
            return ExitCode::SUCCESS;
        }
        eprintln!("npipe: {}", self.message);
        if let Some(hint) = &self.hint {
            eprintln!("hint: {hint}");
        }
        ExitCode::from(self.status.exit_code())
    }

    /// Reports this and ends the process at once, whatever other threads
    /// are doing (one stuck writing to a pipe nobody reads any more).
    pub fn exit_now(&self) -> ! {
        let code = if self.quiet {
            0
        } else {
            self.status.exit_code()
        };
        let _ = self.report();
        std::process::exit(i32::from(code))
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<npipe::Error> for Failure {
    fn from(err: npipe::Error) -> Failure {
        let code = err.code();
        Failure {
            message: err.to_string(),
            status: Status::of(code),
            hint: default_hint(code).map(str::to_string),
            quiet: false,
        }
    }
}

#[cfg(target_os = "linux")]
impl From<npipe_bench::Error> for Failure {
    fn from(err: npipe_bench::Error) -> Failure {
        match err {
            npipe_bench::Error::Usage { message, hint } => Failure {
                hint,
                ..Failure::new(Status::Usage, message)
            },
            npipe_bench::Error::Npipe(err) => err.into(),
            npipe_bench::Error::Stdout(err) => Failure::stdout(err),
            npipe_bench::Error::Other(message) => Failure::new(Status::Other, message),
        }
    }
}

/// The hint for a client-side error; commands replace it where they know better.
fn default_hint(code: ErrorCode) -> Option<&'static str> {
    Some(match code {
        ErrorCode::FileNotFound => {
            "is a server running? `npipe list` shows the pipes on this machine"
        }
        ErrorCode::PipeBusy => {
            "every instance is busy; give --timeout MS (or `forever`) to wait for a free one"
        }
        ErrorCode::AccessDenied => {
            "the pipe's direction or security descriptor refuses this access: an inbound pipe \
             only takes writes from clients, an outbound one only reads (`npipe info` on the \
             pipe shows its direction and owner)"
        }
        ErrorCode::Timeout => "the server did not answer in time; give a longer --timeout",
        ErrorCode::BrokenPipe | ErrorCode::NoData => "the other end closed the pipe",
        ErrorCode::InvalidName => {
            r"a pipe name is \\.\pipe\NAME, //./pipe/NAME or a bare NAME (quote backslashes in the shell)"
        }
        ErrorCode::BadNetPath => r"remote pipes (\\HOST\pipe\NAME) are not reachable in this build",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct_and_documented() {
        let all = [
            Status::Other,
            Status::Usage,
            Status::NotFound,
            Status::Busy,
            Status::AccessDenied,
            Status::Timeout,
            Status::BrokenPipe,
        ];
        for (i, a) in all.iter().enumerate() {
            assert!(EXIT_CODES_HELP.contains(&format!("\n  {}  ", a.exit_code())));
            for b in &all[i + 1..] {
                assert_ne!(a.exit_code(), b.exit_code());
            }
        }
    }

    #[test]
    fn npipe_errors_keep_their_class_through_io() {
        let e = npipe::Error::new(ErrorCode::PipeBusy, "busy");
        let f = Failure::pipe_io(e.into());
        assert_eq!(f.status, Status::Busy);
        assert_eq!(f.hint.as_deref(), default_hint(ErrorCode::PipeBusy));
    }
}
