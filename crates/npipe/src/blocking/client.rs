//! The client end: connecting (`CreateFile` + `WaitNamedPipe` in one step)
//! and `CallNamedPipe`.

use std::io;
use std::ops::{Deref, DerefMut};
use std::time::{Duration, Instant};

use crate::blocking::stream::{PipeStream, Setup};
use crate::error::{Error, ErrorCode, Result};
use crate::info::{max_instances_from_wire, End, PeerCredentials};
use crate::name::PipeName;
use crate::namespace::Namespace;
use crate::options::{Access, ClientOptions, PipeType, ReadMode, Wait};
use crate::proto::framing;
use crate::proto::handshake::{
    Hello, HelloKind, PipeDescription, Reply, REPLY_MAX, WAIT_DEFAULT, WAIT_FOREVER, WAIT_NONE,
};
use crate::sys::{RecvFlagsLite, Socket};

/// How long past its own wait a client gives a server that says nothing.
/// The server decides every outcome and says so; this only bounds a hung one.
const SERVER_SILENCE: Duration = Duration::from_secs(5);
/// Requests up to this size ride in the same packet as HELLO in [`call`].
const PIPELINE_MAX: usize = 64 * 1024;

/// The client end of a pipe. Reads, writes and everything common to both
/// ends come from [`PipeStream`], to which it dereferences.
///
/// ```
/// use npipe::{ServerOptions, ClientOptions};
///
/// let name = format!("doc-pipe-client-{}", std::process::id());
/// let listener = ServerOptions::new().create(&name)?;
/// let mut client = ClientOptions::new().open(&name)?;
/// // GetNamedPipeServerProcessId, from the kernel:
/// assert_eq!(client.server_process_id(), std::process::id());
///
/// let mut server = listener.accept()?;
/// client.write_message(b"request")?;
/// assert_eq!(server.recv_message()?, b"request");
/// # Ok::<(), npipe::Error>(())
/// ```
#[derive(Debug)]
pub struct PipeClient {
    stream: PipeStream,
}

fn wait_ms(wait: Wait) -> u32 {
    match wait {
        Wait::NoWait => WAIT_NONE,
        Wait::ServerDefault => WAIT_DEFAULT,
        Wait::Forever => WAIT_FOREVER,
        // Values that collide with the specials are clamped below them; a
        // zero timeout means "no wait", and any other waits at least 1 ms.
        Wait::Timeout(d) if d.is_zero() => WAIT_NONE,
        Wait::Timeout(d) => d.as_millis().clamp(1, u128::from(WAIT_DEFAULT - 1)) as u32,
    }
}

/// The longest server default wait a client expects when it asks for the
/// server's default; a server with a longer one should be waited for with an
/// explicit timeout.
const SERVER_DEFAULT_MAX: Duration = Duration::from_secs(60);

/// How long to wait for the server's answer before calling it hung.
fn answer_deadline(wait: Wait) -> Option<Duration> {
    match wait {
        Wait::NoWait => Some(SERVER_SILENCE),
        Wait::ServerDefault => Some(SERVER_DEFAULT_MAX + SERVER_SILENCE),
        Wait::Timeout(d) => Some(d + SERVER_SILENCE),
        Wait::Forever => None,
    }
}

impl PipeClient {
    pub(crate) fn connect(
        name: &PipeName,
        opts: &ClientOptions,
        pipelined: Option<&[u8]>,
    ) -> Result<PipeClient> {
        if !opts.wait_for_server || opts.wait == Wait::NoWait {
            return Self::connect_once(name, opts, pipelined);
        }
        // Waiting for the pipe itself too: a missing pipe, or a server that
        // died before answering, is tried again until the wait is over.
        let start = Instant::now();
        let limit = match opts.wait {
            Wait::Timeout(d) => Some(d),
            Wait::ServerDefault => Some(SERVER_DEFAULT_MAX),
            Wait::Forever | Wait::NoWait => None,
        };
        loop {
            let mut attempt = opts.clone();
            if let (Wait::Timeout(_), Some(limit)) = (opts.wait, limit) {
                let left = limit.saturating_sub(start.elapsed());
                attempt.wait(Wait::Timeout(left.max(Duration::from_millis(1))));
            }
            match Self::connect_once(name, &attempt, pipelined) {
                Err(e) if retry_while_waiting(&e) && limit.is_none_or(|l| start.elapsed() < l) => {
                    std::thread::sleep(RECONNECT_PAUSE);
                }
                r => return r,
            }
        }
    }

    fn connect_once(
        name: &PipeName,
        opts: &ClientOptions,
        pipelined: Option<&[u8]>,
    ) -> Result<PipeClient> {
        if let Some(host) = name.host() {
            return Err(Error::new(
                ErrorCode::BadNetPath,
                format!(
                    "{name}: remote pipes go through `npipe gateway` on {host}, which this \
                     build cannot reach yet; use a local name (\\\\.\\pipe\\NAME)"
                ),
            ));
        }
        let namespace = Namespace::open_existing().map_err(|e| {
            if e.code() == ErrorCode::FileNotFound {
                Error::new(
                    ErrorCode::FileNotFound,
                    format!("{name} does not exist: no server is serving it"),
                )
            } else {
                e
            }
        })?;
        let socket = namespace.connect(name)?;
        if let Some(expected) = opts.expect_server_uid {
            check_server(name, &socket, expected)?;
        }

        let hello = Hello {
            kind: HelloKind::Connect,
            access: opts.access,
            read_mode: opts.read_mode.unwrap_or(ReadMode::Byte),
            impersonation: opts.impersonation,
            wait_ms: wait_ms(opts.wait),
            max_message: opts.max_message_size,
            pipelined: pipelined.is_some(),
            name: name.canonical().to_string(),
            principal: String::new(),
            computer: String::new(),
        };
        let mut out = Vec::with_capacity(64 + pipelined.map_or(0, |m| m.len() + 4));
        hello.encode(&mut out).map_err(Error::from)?;
        if let Some(msg) = pipelined {
            out.extend_from_slice(&framing::header(msg.len() as u32));
            out.extend_from_slice(msg);
        }
        let sent = send_all(&socket, &out);

        let (reply, leftover) =
            read_reply(&socket, answer_deadline(opts.wait)).map_err(|e| match sent {
                // The server hung up on us mid-send; its reply, if any, was
                // read above, so report the send failure.
                Err(ref s) if e.code() == ErrorCode::BrokenPipe => {
                    Error::new(ErrorCode::BrokenPipe, format!("{name}: {s}"))
                }
                _ => e,
            })?;
        let desc = match reply {
            Reply::Connected(desc) => desc,
            Reply::Refused { code, reason } => {
                let code = ErrorCode::from_win32(code).unwrap_or(ErrorCode::Other);
                return Err(Error::new(code, format!("{name}: {reason}")));
            }
            Reply::Info(_) => {
                return Err(Error::new(
                    ErrorCode::BadPipe,
                    format!("{name}: the server answered a connect with pipe information"),
                ))
            }
        };
        sent.map_err(|e| Error::os(e, &format!("{name}: sending the handshake failed")))?;
        Self::from_reply(name, opts, socket, desc, leftover)
    }

    fn from_reply(
        name: &PipeName,
        opts: &ClientOptions,
        socket: Socket,
        desc: PipeDescription,
        leftover: Vec<u8>,
    ) -> Result<PipeClient> {
        let read_mode = match (opts.read_mode, desc.pipe_type) {
            (Some(ReadMode::Message), PipeType::Byte) => {
                return Err(Error::new(
                    ErrorCode::InvalidParameter,
                    format!("{name} is a byte-type pipe: it cannot be read in message mode"),
                ))
            }
            (Some(mode), _) => mode,
            (None, PipeType::Byte) => ReadMode::Byte,
            (None, PipeType::Message) => ReadMode::Message,
        };
        if desc.in_buffer > 0 {
            let _ = socket.set_send_buffer(desc.in_buffer as usize);
        }
        let peer: PeerCredentials = socket
            .peer_cred()
            .map_err(|e| Error::os(e, "cannot read the server's credentials"))?
            .into();
        let setup = Setup {
            name: desc.name,
            end: End::Client,
            pipe_type: desc.pipe_type,
            direction: desc.direction,
            access: desc.granted,
            max_instances: max_instances_from_wire(desc.max_instances),
            cur_instances: desc.cur_instances,
            in_buffer: desc.in_buffer,
            out_buffer: desc.out_buffer,
            max_message: opts.max_message_size,
            peer_max_message: desc.max_message,
            peer,
        };
        Ok(PipeClient {
            stream: PipeStream::new(socket, setup, read_mode, leftover),
        })
    }

    /// The server's credentials from the kernel (`SO_PEERCRED`).
    pub fn server_credentials(&self) -> PeerCredentials {
        self.stream.peer()
    }

    /// `GetNamedPipeServerProcessId`.
    pub fn server_process_id(&self) -> u32 {
        self.stream.peer().pid
    }

    /// The server's effective user id.
    pub fn server_uid(&self) -> u32 {
        self.stream.peer().uid
    }

    /// The server's user name, if the user database has one.
    pub fn server_user_name(&self) -> Option<String> {
        self.stream.peer().user_name()
    }
}

/// How often a client that waits for a server to appear tries again.
const RECONNECT_PAUSE: Duration = Duration::from_millis(10);

/// Whether a failed connect is worth retrying for a client that waits for the
/// server itself: the pipe is missing, or its server went away mid-handshake.
fn retry_while_waiting(e: &Error) -> bool {
    matches!(e.code(), ErrorCode::FileNotFound | ErrorCode::BrokenPipe)
}

/// Refuses a server that runs as anyone but `expected`, before a byte is sent.
fn check_server(name: &PipeName, socket: &Socket, expected: u32) -> Result<()> {
    let cred = socket
        .peer_cred()
        .map_err(|e| Error::os(e, "cannot read the server's credentials"))?;
    if cred.uid == expected {
        return Ok(());
    }
    let who = |uid: u32| match crate::sys::user_name(uid) {
        Some(n) => format!("{n} (uid {uid})"),
        None => format!("uid {uid}"),
    };
    Err(Error::new(
        ErrorCode::AccessDenied,
        format!(
            "{name} is served by {} (pid {}), not by the expected {}: refusing to talk to it \
             (someone else may be squatting the name)",
            who(cred.uid),
            cred.pid,
            who(expected)
        ),
    ))
}

fn send_all(socket: &Socket, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        let n = socket.send(buf)?;
        buf = &buf[n..];
    }
    Ok(())
}

/// Reads the server's REPLY; returns it and whatever arrived behind it.
fn read_reply(socket: &Socket, limit: Option<Duration>) -> Result<(Reply, Vec<u8>)> {
    socket
        .set_read_timeout(limit)
        .map_err(|e| Error::os(e, "cannot set a timeout"))?;
    let mut buf = Vec::with_capacity(256);
    let reply = loop {
        if let Some((reply, used)) = Reply::decode(&buf).map_err(Error::from)? {
            buf.drain(..used);
            break reply;
        }
        if buf.len() >= REPLY_MAX {
            return Err(Error::new(
                ErrorCode::BadPipe,
                "the server's reply is too long",
            ));
        }
        buf.reserve(REPLY_MAX - buf.len());
        match socket.recv_spare(&mut buf, RecvFlagsLite::Block) {
            Ok(0) => {
                return Err(Error::new(
                    ErrorCode::BrokenPipe,
                    "the server closed the connection without answering (is it shutting down?)",
                ))
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Err(Error::new(
                    ErrorCode::Timeout,
                    "the server accepted the connection but did not answer the handshake \
                     (is it hung?)",
                ))
            }
            Err(e) => return Err(Error::os(e, "reading the server's answer failed")),
        }
    };
    socket
        .set_read_timeout(None)
        .map_err(|e| Error::os(e, "cannot clear a timeout"))?;
    Ok((reply, buf))
}

impl Deref for PipeClient {
    type Target = PipeStream;
    fn deref(&self) -> &PipeStream {
        &self.stream
    }
}

impl DerefMut for PipeClient {
    fn deref_mut(&mut self) -> &mut PipeStream {
        &mut self.stream
    }
}

impl io::Read for PipeClient {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.stream.read(buf)
    }
}

impl io::Write for PipeClient {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.stream.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.stream.flush()
    }
}

/// `CallNamedPipe`: connects to a message-type pipe (waiting up to `timeout`
/// for a free instance), sends `request` as one message, returns the reply
/// message, and closes. The request rides in the same packet as the
/// handshake, so a call costs one round trip.
///
/// ```
/// use npipe::ServerOptions;
/// use std::time::Duration;
///
/// let name = format!("doc-call-{}", std::process::id());
/// let listener = ServerOptions::new().create(&name)?;
/// let server = std::thread::spawn(move || {
///     let mut conn = listener.accept().unwrap();
///     let req = conn.recv_message().unwrap();
///     conn.write_message(&req.to_ascii_uppercase()).unwrap();
/// });
/// assert_eq!(npipe::call(&name, b"shout", Duration::from_secs(1))?, b"SHOUT");
/// server.join().unwrap();
/// # Ok::<(), npipe::Error>(())
/// ```
pub fn call(
    name: impl TryInto<PipeName, Error = Error>,
    request: &[u8],
    timeout: Duration,
) -> Result<Vec<u8>> {
    ClientOptions::new()
        .wait(if timeout.is_zero() {
            Wait::NoWait
        } else {
            Wait::Timeout(timeout)
        })
        .call(name, request)
}

/// `CallNamedPipe` with these options (wait, expected server user,
/// impersonation level): see [`call`].
pub(crate) fn call_with(opts: &ClientOptions, name: &PipeName, request: &[u8]) -> Result<Vec<u8>> {
    let mut opts = opts.clone();
    opts.access(Access::ReadWrite);
    let mut client = if request.len() <= PIPELINE_MAX {
        // The server refuses a pipelined request on a byte pipe with BadPipe.
        PipeClient::connect(name, &opts, Some(request))?
    } else {
        let client = PipeClient::connect(name, &opts, None)?;
        if client.info().pipe_type == PipeType::Byte {
            return Err(Error::new(
                ErrorCode::BadPipe,
                format!("{name}: a transaction needs a message-type pipe; this one is byte type"),
            ));
        }
        client
    };
    if request.len() <= PIPELINE_MAX {
        client.recv_message()
    } else {
        client.transact(request)
    }
}
