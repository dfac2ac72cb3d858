//! The Windows backend: the same names and methods as on Linux, each mapped
//! straight to the kernel's named pipe calls (`crate::sys`). Here the kernel
//! names pipes, queues waiting clients, keeps message boundaries and says
//! *more data*, so the engine, framing and acceptor of the emulation have no
//! part.
//!
//! The blocking front end is in `blocking`, the tokio one (overlapped I/O)
//! in `tokio`; what they share is here and in `end` (a connected end's
//! handle and queries) and `open` (the client's open sequence).
//!
//! Security descriptors are applied as SDDL
//! ([`SecurityDescriptor::to_sddl`](crate::SecurityDescriptor::to_sddl)).
//! Users and groups are SIDs behind [`LocalUser`](crate::LocalUser) and
//! `LocalGroup`.

use std::io;
use std::time::Duration;

use crate::error::{Error, ErrorCode};
use crate::name::PipeName;
use crate::options::ServerOptions;
use crate::sys::{self, Instance};

mod blocking;
mod end;
mod listing;
mod open;
mod spawn;
#[cfg(feature = "tokio")]
pub mod tokio;

pub(crate) use blocking::call_with;
pub use blocking::{call, PipeClient, PipeListener, PipeServer, ReadHalf, WriteHalf};
pub use end::Impersonation;
pub use listing::{list_pipes, query_pipe, wait_named_pipe, ListedPipe};
pub use spawn::ClientProcess;

/// How often `accept` tries again for an instance while all are in use.
const INSTANCE_PAUSE: Duration = Duration::from_millis(10);
/// The buffer size asked of the kernel when the options leave it to the
/// system (0): with none, a write waits for its reader.
const DEFAULT_BUFFER: u32 = 64 * 1024;
/// A message read grows its buffer from this size.
const FIRST_READ: usize = 4096;

fn os(e: io::Error, what: &str) -> Error {
    Error::os(e, what)
}

fn code_of(e: &io::Error) -> Option<ErrorCode> {
    e.raw_os_error().and_then(sys::error_code_of)
}

/// A server's way to make instances of its pipe (`CreateNamedPipe`), for
/// both front ends.
#[derive(Debug)]
struct Instances {
    name: PipeName,
    path: Vec<u16>,
    opts: ServerOptions,
    /// The descriptor every instance gets, in SDDL.
    sddl: String,
}

impl Instances {
    fn new(name: PipeName, opts: ServerOptions) -> crate::Result<Self> {
        opts.validate()?;
        let sddl = opts.security.to_sddl()?;
        Ok(Instances {
            path: sys::wide(&name.to_string()),
            name,
            opts,
            sddl,
        })
    }

    /// The pipe's first instance, which creates the name.
    fn first(&self) -> crate::Result<sys::Pipe> {
        self.make(self.opts.first_instance)
            .map_err(|e| os(e, &format!("cannot create {}", self.name)))
    }

    /// One more instance: `Ok(None)` while every instance is in use.
    fn next(&self) -> crate::Result<Option<sys::Pipe>> {
        match self.make(false) {
            Ok(pipe) => Ok(Some(pipe)),
            Err(e) if code_of(&e) == Some(ErrorCode::PipeBusy) => Ok(None),
            Err(e) => Err(os(
                e,
                &format!("cannot create an instance of {}", self.name),
            )),
        }
    }

    /// The pipe as the server sees it (`GetNamedPipeInfo` on a listening
    /// instance, `probe`): the kernel counts every instance, the
    /// `listening` ones too, so the connected ones are that many fewer;
    /// with none listening, every instance is in use.
    fn info(&self, probe: Option<&sys::Pipe>, listening: u32) -> crate::PipeInfo {
        let active = match probe {
            Some(pipe) => sys::cur_instances(pipe)
                .unwrap_or(listening)
                .saturating_sub(listening),
            None => self.opts.max_instances,
        };
        let mut info = crate::info::listener_info(&self.opts, &self.name, active);
        if let Some((_, _, out_size, in_size, _)) = probe.and_then(|p| sys::pipe_info(p).ok()) {
            info.out_buffer_size = out_size;
            info.in_buffer_size = in_size;
        }
        info
    }

    /// A connected instance's server end, as the options say.
    fn server_end(&self, pipe: impl Into<std::sync::Arc<sys::Pipe>>) -> end::EndState {
        end::EndState::new(
            pipe,
            crate::info::End::Server,
            &self.name,
            self.opts.effective_read_mode(),
            self.opts.max_message_size,
            self.opts.direction,
            self.opts.direction.server_access(),
        )
    }

    fn make(&self, first: bool) -> io::Result<sys::Pipe> {
        let opts = &self.opts;
        let instance = Instance {
            direction: opts.direction,
            pipe_type: opts.pipe_type,
            read_mode: opts.effective_read_mode(),
            max_instances: opts.max_instances,
            out_buffer: or_default(opts.out_buffer_size),
            in_buffer: or_default(opts.in_buffer_size),
            default_timeout_ms: u32::try_from(opts.default_timeout.as_millis())
                .unwrap_or(u32::MAX - 2),
            first,
            reject_remote: opts.reject_remote_clients,
        };
        sys::create_named_pipe(&self.path, &instance, &self.sddl)
    }
}

/// A whole message gathered from reads that may each say *more data*:
/// the reading loop, without the reads, for both front ends. It never
/// holds more than the end's largest message: a peer that sends an endless
/// message gets `ERROR_BAD_PIPE`, as the Linux ends' framing refuses one.
#[derive(Debug)]
struct Gather {
    msg: Vec<u8>,
    len: usize,
    max: usize,
}

impl Gather {
    /// Starts with what a first read (a transact's reply, say) returned;
    /// `max` bytes at most.
    fn starting_with(mut first: Vec<u8>, max: u32) -> Gather {
        let len = first.len();
        let max = max as usize;
        // Room for one more read at least (an empty message needs one).
        first.resize((len.max(FIRST_READ / 2) * 2).min(max).max(len + 1), 0);
        Gather {
            msg: first,
            len,
            max,
        }
    }

    /// Where the next read goes: never past the largest message the end
    /// accepts.
    fn space(&mut self) -> Result<&mut [u8], crate::Error> {
        if self.len >= self.msg.len() {
            return Err(self.too_long());
        }
        Ok(&mut self.msg[self.len..])
    }

    /// Takes a read's outcome: the whole message once it is complete.
    fn took(&mut self, read: crate::MessageRead) -> Result<Option<Vec<u8>>, crate::Error> {
        self.len += read.len();
        match read {
            crate::MessageRead::Complete(_) => {
                self.msg.truncate(self.len);
                Ok(Some(std::mem::take(&mut self.msg)))
            }
            crate::MessageRead::MoreData(_) => {
                if self.len >= self.max {
                    return Err(self.too_long());
                }
                let grown = (self.msg.len() * 2).min(self.max);
                self.msg.resize(grown, 0);
                Ok(None)
            }
        }
    }

    /// Whether nothing of the message was read yet.
    fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// What was gathered so far.
    fn into_prefix(mut self) -> Vec<u8> {
        self.msg.truncate(self.len);
        self.msg
    }

    fn too_long(&self) -> crate::Error {
        crate::Error::new(
            crate::ErrorCode::BadPipe,
            format!(
                "the peer sent a message longer than this end accepts ({} bytes, its \
                 max_message_size); the rest is left in the pipe, for read_message to take in parts",
                self.max
            ),
        )
    }
}

/// A buffer size, with the system's choice (0) made ours.
fn or_default(size: u32) -> u32 {
    if size == 0 {
        DEFAULT_BUFFER
    } else {
        size
    }
}

#[cfg(test)]
mod interop;
#[cfg(test)]
mod tests;
