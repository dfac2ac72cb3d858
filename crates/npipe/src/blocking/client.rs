//! The client end: connecting (`CreateFile` + `WaitNamedPipe` in one step)
//! and `CallNamedPipe`.

use std::io;
use std::time::{Duration, Instant};

use crate::blocking::stream::PipeStream;
use crate::client_socket;
use crate::connect_core;
use crate::error::{Error, Result};
use crate::name::PipeName;
use crate::namespace::{self, Namespace};
use crate::options::ClientOptions;
use crate::pipe::{ClientEnd, Pipe};
use crate::proto::handshake::{Reply, REPLY_MAX};
use crate::stream_core::EndCore;
use crate::sys::{Events, RecvFlagsLite, Socket};
use crate::types::{Access, PipeType, Wait};

/// The client end of a pipe: reads and writes, and the server's identity.
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
pub type PipeClient = Pipe<PipeStream, ClientEnd>;

impl Pipe<PipeStream, ClientEnd> {
    pub(crate) fn connect(
        name: &PipeName,
        opts: &ClientOptions,
        pipelined: Option<&[u8]>,
    ) -> Result<PipeClient> {
        let Some(attempts) = connect_core::Attempts::new(opts, Instant::now()) else {
            return Self::connect_once(name, opts, pipelined);
        };
        // Waiting for the pipe itself too: a missing pipe, or a server that
        // died before answering, is tried again until the wait is over.
        loop {
            let attempt = attempts.options(opts, Instant::now());
            match Self::connect_once(name, &attempt, pipelined) {
                Err(e) => match attempts.after_failure(&e, Instant::now()) {
                    Some(pause) => std::thread::sleep(pause),
                    None => return Err(e),
                },
                ok => return ok,
            }
        }
    }

    fn connect_once(
        name: &PipeName,
        opts: &ClientOptions,
        pipelined: Option<&[u8]>,
    ) -> Result<PipeClient> {
        connect_core::check_reachable(name)?;
        let socket = Namespace::client_connect(|ns| ns.connect(name))
            .map_err(|e| namespace::not_served(name, e))?;
        let cred = client_socket::server_cred(name, opts, &socket)?;
        let sent = send_all(&socket, &connect_core::opening(name, opts, pipelined)?);
        let answer = read_reply(&socket, connect_core::answer_deadline(opts.wait));
        let (desc, leftover) = connect_core::settle(name, answer, sent)?;
        let (setup, read_mode, send_buffer) = connect_core::finish(name, opts, cred, desc)?;
        client_socket::apply_send_buffer(&socket, send_buffer);
        Ok(Pipe {
            io: PipeStream::new(socket, EndCore::new(setup, read_mode, leftover)),
            role: ClientEnd::new(),
        })
    }
}

fn send_all(socket: &Socket, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        let n = socket.send(buf)?;
        buf = &buf[n..];
    }
    Ok(())
}

/// Reads the server's REPLY; returns it and whatever arrived behind it.
///
/// The deadline is kept by `poll`, not `SO_RCVTIMEO`, which would cost a
/// second syscall to clear again on every connection.
pub(crate) fn read_reply(socket: &Socket, limit: Option<Duration>) -> Result<(Reply, Vec<u8>)> {
    // A wait too long to represent is no deadline at all.
    let deadline = limit.and_then(|l| Instant::now().checked_add(l));
    let mut buf = Vec::with_capacity(256);
    let reply = loop {
        if let Some(reply) = connect_core::take_reply(&mut buf)? {
            break reply;
        }
        if let Some(deadline) = deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            let seen = socket
                .wait(Events::IN, Some(left))
                .map_err(|e| Error::os(e, "waiting for the server's answer failed"))?;
            if seen.is_empty() {
                return Err(connect_core::silent_server());
            }
        }
        buf.reserve(REPLY_MAX - buf.len());
        // Blocking only without a deadline; else poll said data is there
        // (or the peer hung up, which reads as 0 or an error).
        let flags = if deadline.is_some() {
            RecvFlagsLite::DontWait
        } else {
            RecvFlagsLite::Block
        };
        match socket.recv_spare(&mut buf, flags) {
            Ok(0) => return Err(connect_core::closed_before_reply()),
            Ok(_) => {}
            // Woken for nothing: go round and wait out the rest.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(Error::os(e, "reading the server's answer failed")),
        }
    };
    Ok((reply, buf))
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
    let mut client = if request.len() <= connect_core::PIPELINE_MAX {
        // The server refuses a pipelined request on a byte pipe with BadPipe.
        PipeClient::connect(name, &opts, Some(request))?
    } else {
        let client = PipeClient::connect(name, &opts, None)?;
        if client.info().pipe_type == PipeType::Byte {
            return Err(connect_core::not_a_message_pipe(name));
        }
        client
    };
    if request.len() <= connect_core::PIPELINE_MAX {
        client.recv_message()
    } else {
        client.transact(request)
    }
}
