//! The Windows backend's blocking front end: the same names and methods as
//! on Linux, each mapped straight to the kernel's named pipe calls
//! (`crate::sys`). Here the kernel names pipes, queues waiting clients,
//! keeps message boundaries and says *more data*, so the engine, framing
//! and acceptor thread of the emulation have no part.
//!
//! Security descriptors are applied as SDDL
//! ([`SecurityDescriptor::to_sddl`](crate::SecurityDescriptor::to_sddl)).
//! Users and groups are SIDs behind [`LocalUser`] and `LocalGroup`.
//! Not yet here (each refused at run time with [`ErrorCode::NotSupported`]
//! rather than ignored): read timeouts; and, absent at compile time, the tokio
//! front end, `spawn_as_client` and listings.

use std::io::{self, Read, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::{Error, ErrorCode, Result};
use crate::identity::{Identity, LocalUser};
use crate::info::{max_instances_from_wire, End, PipeInfo};
use crate::name::PipeName;
use crate::options::{ClientOptions, ServerOptions};
use crate::stream_core::{MessageRead, Peek};
use crate::sys::{self, Instance, Peer};
use crate::types::{Access, Direction, PipeType, ReadMode, Wait};

/// How often a client that waits for a pipe to be created tries again.
const RECONNECT_PAUSE: Duration = Duration::from_millis(10);
/// How often `accept` tries again for an instance while all are in use.
const INSTANCE_PAUSE: Duration = Duration::from_millis(10);
/// A message read grows its buffer from this size.
const FIRST_READ: usize = 4096;

fn os(e: io::Error, what: &str) -> Error {
    Error::os(e, what)
}

fn code_of(e: &io::Error) -> Option<ErrorCode> {
    e.raw_os_error().and_then(sys::error_code_of)
}

fn not_yet(what: &str) -> Error {
    Error::new(
        ErrorCode::NotSupported,
        format!("{what} is not supported by the Windows backend yet"),
    )
}

/// A named pipe server: the name and its instances (`CreateNamedPipe`).
/// One instance always listens, so a client may connect while the
/// application is not in [`accept`](Self::accept), as on Windows.
#[derive(Debug)]
pub struct PipeListener {
    name: PipeName,
    path: Vec<u16>,
    opts: ServerOptions,
    /// The descriptor every instance gets, in SDDL.
    sddl: String,
    /// The instance waiting for the next client, if one could be made.
    listening: Mutex<Option<sys::Pipe>>,
}

impl PipeListener {
    pub(crate) fn create(name: PipeName, opts: ServerOptions) -> Result<PipeListener> {
        opts.validate()?;
        let sddl = opts.security.to_sddl()?;
        let path = sys::wide(&name.to_string());
        let first = sys::create_named_pipe(&path, &instance(&opts, opts.first_instance), &sddl)
            .map_err(|e| os(e, &format!("cannot create {name}")))?;
        Ok(PipeListener {
            name,
            path,
            opts,
            sddl,
            listening: Mutex::new(Some(first)),
        })
    }

    /// `ConnectNamedPipe`: waits for a client and returns its connection.
    /// While every instance is in use it waits for one to close.
    pub fn accept(&self) -> Result<PipeServer> {
        let pipe = self.take_listening()?;
        sys::connect_named_pipe(&pipe).map_err(|e| os(e, "waiting for a client failed"))?;
        // The next client can connect while this one is served.
        let next =
            sys::create_named_pipe(&self.path, &instance(&self.opts, false), &self.sddl).ok();
        *self.listening.lock().unwrap_or_else(|e| e.into_inner()) = next;
        Ok(PipeServer {
            conn: Conn::new(
                pipe,
                End::Server,
                &self.name,
                self.opts.effective_read_mode(),
            ),
            max_message_size: self.opts.max_message_size,
        })
    }

    /// The instance to connect next: the listening one, or a new one once
    /// an instance is free.
    fn take_listening(&self) -> Result<sys::Pipe> {
        if let Some(pipe) = self
            .listening
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            return Ok(pipe);
        }
        loop {
            match sys::create_named_pipe(&self.path, &instance(&self.opts, false), &self.sddl) {
                Ok(pipe) => return Ok(pipe),
                // Every instance is in use: wait for one to close.
                Err(e) if code_of(&e) == Some(ErrorCode::PipeBusy) => {
                    std::thread::sleep(INSTANCE_PAUSE)
                }
                Err(e) => {
                    return Err(os(
                        e,
                        &format!("cannot create an instance of {}", self.name),
                    ))
                }
            }
        }
    }

    /// The pipe's name.
    pub fn name(&self) -> &PipeName {
        &self.name
    }
}

/// What `CreateNamedPipeW` is asked for, from the options.
fn instance(opts: &ServerOptions, first: bool) -> Instance {
    Instance {
        direction: opts.direction,
        pipe_type: opts.pipe_type,
        read_mode: opts.effective_read_mode(),
        max_instances: opts.max_instances,
        out_buffer: opts.out_buffer_size,
        in_buffer: opts.in_buffer_size,
        default_timeout_ms: u32::try_from(opts.default_timeout.as_millis()).unwrap_or(u32::MAX - 2),
        first,
        reject_remote: opts.reject_remote_clients,
    }
}

/// One end of a connected instance: the I/O both ends share.
#[derive(Debug)]
struct Conn {
    pipe: sys::Pipe,
    end: End,
    name: String,
    read_mode: ReadMode,
    disconnected: bool,
}

impl Conn {
    fn new(pipe: sys::Pipe, end: End, name: &PipeName, read_mode: ReadMode) -> Conn {
        Conn {
            pipe,
            end,
            name: name.name().to_string(),
            read_mode,
            disconnected: false,
        }
    }

    fn connected(&self) -> Result<()> {
        if self.disconnected {
            Err(Error::not_connected())
        } else {
            Ok(())
        }
    }

    fn read_message(&mut self, buf: &mut [u8]) -> Result<MessageRead> {
        self.connected()?;
        let (n, more) = sys::read(&self.pipe, buf).map_err(|e| os(e, "read"))?;
        Ok(if more {
            MessageRead::MoreData(n)
        } else {
            MessageRead::Complete(n)
        })
    }

    fn recv_message(&mut self) -> Result<Vec<u8>> {
        let mut msg = vec![0u8; FIRST_READ];
        let mut len = 0;
        loop {
            match self.read_message(&mut msg[len..])? {
                MessageRead::Complete(n) => {
                    msg.truncate(len + n);
                    return Ok(msg);
                }
                MessageRead::MoreData(n) => {
                    len += n;
                    msg.resize(msg.len() * 2, 0);
                }
            }
        }
    }

    fn write_message(&mut self, msg: &[u8]) -> Result<()> {
        self.connected()?;
        let mut sent = 0;
        // A message pipe takes a write whole; a byte pipe may take part.
        while sent < msg.len() || msg.is_empty() {
            sent += sys::write(&self.pipe, &msg[sent..]).map_err(|e| os(e, "write"))?;
            if msg.is_empty() {
                break;
            }
        }
        Ok(())
    }

    fn transact_into(&mut self, request: &[u8], reply: &mut [u8]) -> Result<MessageRead> {
        self.connected()?;
        let (n, more) = sys::transact(&self.pipe, request, reply).map_err(|e| os(e, "transact"))?;
        Ok(if more {
            MessageRead::MoreData(n)
        } else {
            MessageRead::Complete(n)
        })
    }

    fn transact(&mut self, request: &[u8]) -> Result<Vec<u8>> {
        let mut reply = vec![0u8; FIRST_READ];
        match self.transact_into(request, &mut reply)? {
            MessageRead::Complete(n) => {
                reply.truncate(n);
                Ok(reply)
            }
            MessageRead::MoreData(n) => {
                reply.truncate(n);
                reply.extend(self.recv_message()?);
                Ok(reply)
            }
        }
    }

    fn peek(&mut self, buf: &mut [u8]) -> Result<Peek> {
        self.connected()?;
        let (copied, available, message_left) =
            sys::peek(&self.pipe, buf).map_err(|e| os(e, "peek"))?;
        Ok(Peek {
            copied,
            available,
            message_left,
        })
    }

    fn flush_buffers(&mut self) -> Result<()> {
        self.connected()?;
        sys::flush(&self.pipe).map_err(|e| os(e, "flush"))
    }

    fn set_read_mode(&mut self, mode: ReadMode) -> Result<()> {
        sys::set_read_mode(&self.pipe, mode).map_err(|e| os(e, "cannot set the read mode"))?;
        self.read_mode = mode;
        Ok(())
    }

    fn info(&self) -> PipeInfo {
        let (_, pipe_type, out_size, in_size, max) =
            sys::pipe_info(&self.pipe).unwrap_or((false, PipeType::Byte, 0, 0, 0));
        PipeInfo {
            name: self.name.clone(),
            end: self.end,
            pipe_type,
            // The kernel keeps the direction and this handle's access to
            // itself; a duplex pipe is what both ends can use.
            direction: Direction::Duplex,
            access: Access::ReadWrite,
            read_mode: self.read_mode,
            max_instances: max_instances_from_wire(max),
            cur_instances: sys::cur_instances(&self.pipe).unwrap_or(0),
            in_buffer_size: in_size,
            out_buffer_size: out_size,
            max_message_size: 0,
            peer_max_message_size: 0,
        }
    }

    fn process_of(&self, which: Peer) -> u32 {
        sys::process_of(&self.pipe, which).unwrap_or(0)
    }

    fn session_of(&self, which: Peer) -> Option<u32> {
        sys::session_of(&self.pipe, which).ok()
    }
}

impl Read for Conn {
    /// Bytes of the current message (the next read continues it); on a
    /// byte pipe, the stream's bytes.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.read_message(buf) {
            Ok(r) => Ok(r.len()),
            // The writer closed: end of stream, as `std` expects.
            Err(e) if e.code() == ErrorCode::BrokenPipe => Ok(0),
            Err(e) => Err(e.into()),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_message(buf)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The server end of a connected instance (`ConnectNamedPipe`'s handle).
#[derive(Debug)]
pub struct PipeServer {
    conn: Conn,
    max_message_size: u32,
}

/// The client end (`CreateFile` on the pipe's name).
#[derive(Debug)]
pub struct PipeClient {
    conn: Conn,
}

/// The methods both ends share, written once.
macro_rules! end_methods {
    ($t:ty) => {
        impl $t {
            /// `ReadFile` in message mode: one message, or its first part
            /// with [`MessageRead::MoreData`] (`ERROR_MORE_DATA`).
            pub fn read_message(&mut self, buf: &mut [u8]) -> Result<MessageRead> {
                self.conn.read_message(buf)
            }
            /// One whole message, however long.
            pub fn recv_message(&mut self) -> Result<Vec<u8>> {
                self.conn.recv_message()
            }
            /// `WriteFile`: one message (whole) on a message pipe.
            pub fn write_message(&mut self, msg: &[u8]) -> Result<()> {
                self.conn.write_message(msg)
            }
            /// `TransactNamedPipe`: the request out, the whole reply back.
            pub fn transact(&mut self, request: &[u8]) -> Result<Vec<u8>> {
                self.conn.transact(request)
            }
            /// `TransactNamedPipe` into the caller's buffer.
            pub fn transact_into(
                &mut self,
                request: &[u8],
                reply: &mut [u8],
            ) -> Result<MessageRead> {
                self.conn.transact_into(request, reply)
            }
            /// `PeekNamedPipe`.
            pub fn peek(&mut self, buf: &mut [u8]) -> Result<Peek> {
                self.conn.peek(buf)
            }
            /// `FlushFileBuffers`: until the other end has read everything.
            pub fn flush_buffers(&mut self) -> Result<()> {
                self.conn.flush_buffers()
            }
            /// `SetNamedPipeHandleState`: this end's read mode.
            pub fn set_read_mode(&mut self, mode: ReadMode) -> Result<()> {
                self.conn.set_read_mode(mode)
            }
            /// This end's read mode.
            pub fn read_mode(&self) -> ReadMode {
                self.conn.read_mode
            }
            /// `GetNamedPipeInfo` and `GetNamedPipeHandleState`.
            pub fn info(&self) -> PipeInfo {
                self.conn.info()
            }
            /// `GetNamedPipeClientProcessId`.
            pub fn client_process_id(&self) -> u32 {
                self.conn.process_of(Peer::Client)
            }
            /// `GetNamedPipeServerProcessId`.
            pub fn server_process_id(&self) -> u32 {
                self.conn.process_of(Peer::Server)
            }
            /// `GetNamedPipeClientSessionId`.
            pub fn client_session_id(&self) -> Option<u32> {
                self.conn.session_of(Peer::Client)
            }
            /// `GetNamedPipeServerSessionId`.
            pub fn server_session_id(&self) -> Option<u32> {
                self.conn.session_of(Peer::Server)
            }
        }

        impl Read for $t {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                self.conn.read(buf)
            }
        }

        impl Write for $t {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                self.conn.write(buf)
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
    };
}

end_methods!(PipeServer);
end_methods!(PipeClient);

impl PipeServer {
    /// `ImpersonateNamedPipeClient`: this thread acts as the client until
    /// the guard is dropped (`RevertToSelf`). One impersonation per thread
    /// at a time, as on Linux: a nested one is refused.
    ///
    /// Differs from Linux: a client that allowed only identification is
    /// impersonated at that level (Windows refuses what it then tries to
    /// open with `ERROR_BAD_IMPERSONATION_LEVEL`), where Linux refuses the
    /// impersonation itself with `ERROR_CANNOT_IMPERSONATE`.
    pub fn impersonate(&self) -> Result<Impersonation<'_>> {
        if sys::thread_impersonates() {
            return Err(Error::new(
                ErrorCode::CannotImpersonate,
                "this thread is impersonating already: drop that guard first",
            ));
        }
        sys::impersonate_client(&self.conn.pipe)
            .map_err(|e| os(e, "cannot impersonate the client"))?;
        Ok(Impersonation {
            _server: self,
            _not_send: std::marker::PhantomData,
        })
    }

    /// Runs `f` as the client on this thread, then reverts.
    pub fn run_as_client<T>(&self, f: impl FnOnce() -> T) -> Result<T> {
        let guard = self.impersonate()?;
        let out = f();
        drop(guard);
        Ok(out)
    }

    /// The client's user name (`GetNamedPipeHandleState`'s `lpUserName`),
    /// if the kernel could tell it (the client must allow impersonation).
    pub fn client_user_name(&self) -> Option<String> {
        sys::client_user_name(&self.conn.pipe).ok()
    }

    /// The client's user: its token's SID, read while impersonating it at
    /// whatever level it allowed (identification suffices). A user that
    /// cannot be told is [`PeerCredentials`](crate::PeerCredentials)'
    /// unknown one, `u32::MAX` inside.
    pub fn client_user(&self) -> LocalUser {
        let user = self
            .impersonate()
            .ok()
            .and_then(|_guard| sys::impersonated_user().ok());
        LocalUser(user.unwrap_or(u32::MAX))
    }

    /// Who is at the other end: the client's user.
    pub fn peer_identity(&self) -> Identity {
        Identity::Local(self.client_user())
    }

    /// `DisconnectNamedPipe`: the client's next call fails with *pipe not
    /// connected*; this end can be used no more.
    pub fn disconnect(&mut self) -> Result<()> {
        self.conn.connected()?;
        self.conn.disconnected = true;
        sys::disconnect(&self.conn.pipe).map_err(|e| os(e, "disconnect"))
    }

    /// The largest message the server was created to accept (advisory on
    /// Windows, where the kernel does not limit messages).
    pub fn max_message_size(&self) -> u32 {
        self.max_message_size
    }
}

/// This thread acting as a pipe's client, from
/// [`PipeServer::impersonate`]; dropping it reverts (`RevertToSelf`). It
/// cannot leave the thread.
#[derive(Debug)]
pub struct Impersonation<'a> {
    _server: &'a PipeServer,
    _not_send: std::marker::PhantomData<*const ()>,
}

impl Drop for Impersonation<'_> {
    fn drop(&mut self) {
        // A thread that cannot revert must not go on as the client.
        if let Err(e) = sys::revert_to_self() {
            panic!("RevertToSelf failed ({e}): the thread would go on as the client");
        }
    }
}

impl PipeClient {
    /// The server's user: the token of the server's process.
    pub fn server_user(&self) -> LocalUser {
        let pid = self.server_process_id();
        LocalUser(sys::process_user(pid).unwrap_or(u32::MAX))
    }

    /// Who is at the other end: the server's user.
    pub fn peer_identity(&self) -> Identity {
        Identity::Local(self.server_user())
    }

    /// Refuses a server that is not who `expect_server` named. Windows
    /// connects before anyone can ask who the server is, so the check comes
    /// right after `CreateFile`, before a byte is sent.
    fn check_server(&self, name: &PipeName, expected: &Identity) -> Result<()> {
        let server = self.server_user();
        if expected.local_user() == Some(server) {
            return Ok(());
        }
        Err(Error::new(
            ErrorCode::AccessDenied,
            format!(
                "{name} is served by {server} (pid {}), not by the expected {expected}: \
                 refusing to talk to it (someone else may be squatting the name)",
                self.server_process_id()
            ),
        ))
    }

    /// `CreateFile` on the pipe, after `WaitNamedPipe` while every instance
    /// is busy, as `opts` says.
    pub(crate) fn connect(name: &PipeName, opts: &ClientOptions) -> Result<PipeClient> {
        if opts.read_timeout.is_some() {
            return Err(not_yet("a read timeout"));
        }
        let path = sys::wide(&name.to_string());
        let access = opts.access.unwrap_or(Access::ReadWrite);
        let deadline = match opts.wait {
            Wait::Timeout(d) => Instant::now().checked_add(d),
            _ => None,
        };
        let pipe = loop {
            // Message read mode is set after opening unless asked for byte
            // mode (an unset mode follows the pipe's type, not known yet).
            let set_mode = opts.read_mode != Some(ReadMode::Byte);
            let e = match sys::open_pipe(&path, access, opts.impersonation, set_mode) {
                Ok(pipe) => break pipe,
                Err(e) => e,
            };
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            match (code_of(&e), opts.wait) {
                (Some(ErrorCode::PipeBusy), Wait::NoWait) => {
                    return Err(Error::new(
                        ErrorCode::PipeBusy,
                        format!("{name}: all instances are busy"),
                    ))
                }
                (Some(ErrorCode::PipeBusy), wait) => {
                    let ms = match wait {
                        Wait::ServerDefault => 0,  // NMPWAIT_USE_DEFAULT_WAIT
                        Wait::Forever => u32::MAX, // NMPWAIT_WAIT_FOREVER
                        _ => left.map_or(1, |l| {
                            u32::try_from(l.as_millis()).unwrap_or(u32::MAX - 1).max(1)
                        }),
                    };
                    if left.is_some_and(|l| l.is_zero()) {
                        return Err(Error::new(
                            ErrorCode::Timeout,
                            format!("{name}: no instance became free in time"),
                        ));
                    }
                    match sys::wait_named_pipe(&path, ms) {
                        Ok(()) => {}
                        Err(e) if code_of(&e) == Some(ErrorCode::Timeout) => {
                            return Err(os(e, &format!("{name}: no instance became free")))
                        }
                        // Wine ends a wait with other errors when an
                        // instance closes (676): look again.
                        Err(_) => std::thread::sleep(RECONNECT_PAUSE),
                    }
                }
                (Some(ErrorCode::FileNotFound), wait)
                    if opts.wait_for_server
                        && wait != Wait::NoWait
                        && left.is_none_or(|l| !l.is_zero()) =>
                {
                    std::thread::sleep(RECONNECT_PAUSE)
                }
                _ => return Err(os(e, &format!("cannot open {name}"))),
            }
        };
        let (_, pipe_type, ..) =
            sys::pipe_info(&pipe).map_err(|e| os(e, "cannot ask about the pipe"))?;
        let read_mode = opts.read_mode.unwrap_or(match pipe_type {
            PipeType::Byte => ReadMode::Byte,
            PipeType::Message => ReadMode::Message,
        });
        if read_mode == ReadMode::Message {
            sys::set_read_mode(&pipe, ReadMode::Message)
                .map_err(|e| os(e, "cannot read the pipe in message mode"))?;
        }
        let client = PipeClient {
            conn: Conn::new(pipe, End::Client, name, read_mode),
        };
        if let Some(expected) = &opts.expect_server {
            client.check_server(name, expected)?;
        }
        Ok(client)
    }
}

/// `CallNamedPipe`: connects (waiting up to `timeout` for a free
/// instance), sends `request` as one message, returns the reply, closes.
pub fn call(
    name: impl TryInto<PipeName, Error = Error>,
    request: &[u8],
    timeout: Duration,
) -> Result<Vec<u8>> {
    let mut opts = ClientOptions::new();
    opts.wait(Wait::Timeout(timeout));
    call_with(&opts, &name.try_into()?, request)
}

pub(crate) fn call_with(opts: &ClientOptions, name: &PipeName, request: &[u8]) -> Result<Vec<u8>> {
    let mut opts = opts.clone();
    opts.access(Access::ReadWrite).read_mode(ReadMode::Message);
    PipeClient::connect(name, &opts)?.transact(request)
}

#[cfg(test)]
mod interop;
#[cfg(test)]
mod tests;
