//! The client's open sequence, written once for both front ends:
//! `CreateFile`, and on *busy* or *not found* what to do next (wait with
//! `WaitNamedPipe`, pause and look again, or give up), then the read mode
//! and the server check. The front ends only carry out the waits, the
//! blocking one on its thread and the tokio one without blocking.

use std::io;
use std::time::{Duration, Instant};

use super::end::EndState;
use super::{code_of, os};
use crate::error::{Error, ErrorCode, Result};
use crate::info::End;
use crate::name::PipeName;
use crate::options::ClientOptions;
use crate::sys;
use crate::types::{Access, Direction, PipeType, ReadMode, Wait};

/// How long to pause before looking again for a pipe not created yet, or
/// after a wait Wine ended early.
pub(crate) const RECONNECT_PAUSE: Duration = Duration::from_millis(10);

/// A handle `CreateFile` gave, and the access it was opened for.
#[derive(Debug)]
pub(crate) struct Opened {
    pipe: sys::Pipe,
    access: Access,
}

/// What an open attempt came to.
#[derive(Debug)]
pub(crate) enum Attempt {
    /// Connected, with this access.
    Open(Opened),
    /// Every instance is busy: `WaitNamedPipe` this long (in its own
    /// terms: 0 is the server's default, `u32::MAX` forever), then try
    /// again.
    WaitForInstance(u32),
    /// Not there yet, and the client waits for it: pause, then try again.
    Pause,
}

/// One client's way to its pipe.
#[derive(Debug)]
pub(crate) struct Opener<'a> {
    name: &'a PipeName,
    opts: &'a ClientOptions,
    pub(crate) path: Vec<u16>,
    deadline: Option<Instant>,
}

impl<'a> Opener<'a> {
    pub(crate) fn new(name: &'a PipeName, opts: &'a ClientOptions) -> Result<Self> {
        let deadline = match opts.wait {
            Wait::Timeout(d) => Instant::now().checked_add(d),
            _ => None,
        };
        Ok(Opener {
            name,
            opts,
            path: sys::wide(&name.to_string()),
            deadline,
        })
    }

    /// How long is left of the client's wait, if it has a deadline.
    fn left(&self) -> Option<Duration> {
        self.deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// Whether the client's wait has run out.
    pub(crate) fn expired(&self) -> bool {
        self.left().is_some_and(|l| l.is_zero())
    }

    /// `CreateFile` once, and what to do if it did not connect. With no
    /// access asked for, the pipe's direction decides, as on Linux: read
    /// and write, else write alone (an inbound pipe), else read alone (an
    /// outbound one); a pipe refusing all three is *access denied*.
    pub(crate) fn attempt(&self) -> Result<Attempt> {
        let choices: &[Access] = match self.opts.access {
            Some(access) => &[access][..],
            None => &[Access::ReadWrite, Access::Write, Access::Read],
        };
        // Message read mode is set after opening unless asked for byte
        // mode (an unset mode follows the pipe's type, not known yet).
        let set_mode = self.opts.read_mode != Some(ReadMode::Byte);
        let mut last = None;
        for &access in choices {
            match sys::open_pipe(&self.path, access, self.opts.impersonation, set_mode) {
                Ok(pipe) => return Ok(Attempt::Open(Opened { pipe, access })),
                Err(e) if code_of(&e) == Some(ErrorCode::AccessDenied) => last = Some(e),
                Err(e) => {
                    last = Some(e);
                    break;
                }
            }
        }
        let e = last.expect("at least one access was tried");
        let name = self.name;
        match (code_of(&e), self.opts.wait) {
            (Some(ErrorCode::PipeBusy), Wait::NoWait) => Err(Error::new(
                ErrorCode::PipeBusy,
                format!("{name}: all instances are busy"),
            )),
            (Some(ErrorCode::PipeBusy), _) if self.expired() => Err(Error::new(
                ErrorCode::Timeout,
                format!("{name}: no instance became free in time"),
            )),
            (Some(ErrorCode::PipeBusy), wait) => Ok(Attempt::WaitForInstance(match wait {
                Wait::ServerDefault => 0,  // NMPWAIT_USE_DEFAULT_WAIT
                Wait::Forever => u32::MAX, // NMPWAIT_WAIT_FOREVER
                _ => self.left().map_or(1, |l| {
                    u32::try_from(l.as_millis()).unwrap_or(u32::MAX - 1).max(1)
                }),
            })),
            (Some(ErrorCode::FileNotFound), wait)
                if self.opts.wait_for_server && wait != Wait::NoWait && !self.expired() =>
            {
                Ok(Attempt::Pause)
            }
            _ => Err(os(e, &format!("cannot open {name}"))),
        }
    }

    /// What a failed `WaitNamedPipe` means: the client's wait is over
    /// (its error), or Wine ended it early when an instance closed (676),
    /// so pause and look again.
    pub(crate) fn wait_failed(&self, e: io::Error) -> Result<()> {
        if code_of(&e) == Some(ErrorCode::Timeout) {
            return Err(os(e, &format!("{}: no instance became free", self.name)));
        }
        Ok(())
    }

    /// The connected handle made an end: the read mode set, and the
    /// server checked if `expect_server` asked for it.
    pub(crate) fn finish(&self, opened: Opened) -> Result<EndState> {
        let Opened { pipe, access } = opened;
        // What the pipe lets a client do, whatever the handle was granted
        // (Wine grants both ways on a one-way pipe).
        let direction = sys::pipe_direction(&pipe).unwrap_or(match access {
            Access::Write => Direction::Inbound,
            Access::Read => Direction::Outbound,
            Access::ReadWrite => Direction::Duplex,
        });
        // Narrowed to what the direction allows, if that is within what
        // was granted.
        let allowed = direction.client_access();
        let access = if allowed.within(access) {
            allowed
        } else {
            access
        };
        let (_, pipe_type, ..) =
            sys::pipe_info(&pipe).map_err(|e| os(e, "cannot ask about the pipe"))?;
        let read_mode = self.opts.read_mode.unwrap_or(match pipe_type {
            PipeType::Byte => ReadMode::Byte,
            PipeType::Message => ReadMode::Message,
        });
        if read_mode == ReadMode::Message {
            sys::set_read_mode(&pipe, ReadMode::Message)
                .map_err(|e| os(e, "cannot read the pipe in message mode"))?;
        }
        let state = EndState::new(
            pipe,
            End::Client,
            self.name,
            read_mode,
            self.opts.max_message_size,
            direction,
            access,
        );
        if let Some(expected) = &self.opts.expect_server {
            state.check_server(self.name, expected)?;
        }
        Ok(state)
    }
}
