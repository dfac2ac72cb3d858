//! The client end on tokio: connecting (`CreateFile` + `WaitNamedPipe` in
//! one step, without blocking the runtime) and `CallNamedPipe`.

use std::future::poll_fn;
use std::task::Poll;
use std::time::{Duration, Instant};

use ::tokio::io::unix::AsyncFd;

use super::stream::{register, PipeStream};
use crate::client_socket;
use crate::connect_core::{self, PIPELINE_MAX};
use crate::error::{Error, Result};
use crate::name::PipeName;
use crate::namespace::{self, Namespace};
use crate::options::ClientOptions;
use crate::pipe::{ClientEnd, Pipe};
use crate::proto::handshake::{Reply, REPLY_MAX};
use crate::stream_core::EndCore;
use crate::sys::{Fd, RecvFlagsLite};
use crate::types::{Access, PipeType, Wait};

/// The client end of a pipe on tokio: reads and writes (and
/// `AsyncRead`/`AsyncWrite`), and the server's identity. Made by
/// [`ClientOptions::open_async`](crate::ClientOptions::open_async).
///
/// ```
/// use npipe::{ClientOptions, ServerOptions, Wait};
/// use std::time::Duration;
///
/// # let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
/// # rt.block_on(async {
/// let name = format!("doc-async-pipe-client-{}", std::process::id());
/// let listener = ServerOptions::new().max_instances(1).create_async(&name)?;
/// let mut client = ClientOptions::new().open_async(&name).await?;
/// // GetNamedPipeServerProcessId, from the kernel:
/// assert_eq!(client.server_process_id(), std::process::id());
///
/// // The only instance is taken: busy at once, or time out after waiting.
/// let busy = ClientOptions::new().open_async(&name).await.unwrap_err();
/// assert_eq!(busy.code(), npipe::ErrorCode::PipeBusy);
/// let late = ClientOptions::new()
///     .wait(Wait::Timeout(Duration::from_millis(20)))
///     .open_async(&name)
///     .await
///     .unwrap_err();
/// assert_eq!(late.code(), npipe::ErrorCode::Timeout);
///
/// let mut server = listener.accept().await?;
/// client.write_message(b"request").await?;
/// assert_eq!(server.recv_message().await?, b"request");
/// # Ok::<(), npipe::Error>(())
/// # }).unwrap();
/// ```
pub type PipeClient = Pipe<PipeStream, ClientEnd>;

/// How long to pause while the server's connection backlog is full.
const BACKLOG_PAUSE: Duration = Duration::from_millis(1);

impl Pipe<PipeStream, ClientEnd> {
    pub(crate) async fn connect(
        name: &PipeName,
        opts: &ClientOptions,
        pipelined: Option<&[u8]>,
    ) -> Result<PipeClient> {
        let Some(attempts) = connect_core::Attempts::new(opts, Instant::now()) else {
            return Self::connect_once(name, opts, pipelined).await;
        };
        // Waiting for the pipe itself too: a missing pipe, or a server that
        // died before answering, is tried again until the wait is over.
        loop {
            let attempt = attempts.options(opts, Instant::now());
            match Self::connect_once(name, &attempt, pipelined).await {
                Err(e) => match attempts.after_failure(&e, Instant::now()) {
                    Some(pause) => ::tokio::time::sleep(pause).await,
                    None => return Err(e),
                },
                ok => return ok,
            }
        }
    }

    async fn connect_once(
        name: &PipeName,
        opts: &ClientOptions,
        pipelined: Option<&[u8]>,
    ) -> Result<PipeClient> {
        connect_core::check_reachable(name)?;
        let socket = loop {
            let tried = Namespace::client_connect(|ns| ns.try_connect(name));
            match tried.map_err(|e| namespace::not_served(name, e))? {
                Some(socket) => break socket,
                // The server's kernel backlog is full; its acceptor drains it.
                None => ::tokio::time::sleep(BACKLOG_PAUSE).await,
            }
        };
        let fd = register(socket)?;
        let cred = client_socket::server_cred(name, opts, fd.get_ref().socket())?;
        let out = connect_core::opening(name, opts, pipelined)?;
        let sent = send_all(&fd, &out).await;

        let answer = read_reply(&fd);
        let answer = match connect_core::answer_deadline(opts.wait) {
            Some(limit) => ::tokio::time::timeout(limit, answer)
                .await
                .unwrap_or_else(|_| Err(connect_core::silent_server())),
            None => answer.await,
        };
        let (desc, leftover) = connect_core::settle(name, answer, sent)?;

        let (setup, read_mode, send_buffer) = connect_core::finish(name, opts, cred, desc)?;
        client_socket::apply_send_buffer(fd.get_ref().socket(), send_buffer);
        Ok(Pipe {
            io: PipeStream::registered(fd, EndCore::new(setup, read_mode, leftover)),
            role: ClientEnd::new(),
        })
    }
}

/// Sends all of `buf` on a fresh connection.
async fn send_all(fd: &AsyncFd<Fd>, mut buf: &[u8]) -> std::io::Result<()> {
    while !buf.is_empty() {
        let mut guard = fd.writable().await?;
        match guard.try_io(|fd| fd.get_ref().socket().send(buf)) {
            Ok(Ok(n)) => buf = &buf[n..],
            Ok(Err(e)) => return Err(e),
            Err(_would_block) => continue,
        }
    }
    Ok(())
}

/// Reads the server's REPLY; returns it and whatever arrived behind it.
async fn read_reply(fd: &AsyncFd<Fd>) -> Result<(Reply, Vec<u8>)> {
    let mut buf = Vec::with_capacity(256);
    loop {
        if let Some(reply) = connect_core::take_reply(&mut buf)? {
            return Ok((reply, buf));
        }
        buf.reserve(REPLY_MAX - buf.len());
        let got = poll_fn(|cx| loop {
            let mut guard = match fd.poll_read_ready(cx) {
                Poll::Ready(Ok(guard)) => guard,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            };
            match guard.try_io(|fd| {
                fd.get_ref()
                    .socket()
                    .recv_spare(&mut buf, RecvFlagsLite::DontWait)
            }) {
                Ok(r) => return Poll::Ready(r),
                Err(_would_block) => continue,
            }
        })
        .await;
        match got {
            Ok(0) => return Err(connect_core::closed_before_reply()),
            Ok(_) => {}
            Err(e) => return Err(Error::os(e, "reading the server's answer failed")),
        }
    }
}

/// `CallNamedPipe` on tokio: connects to a message-type pipe (waiting up to
/// `timeout` for a free instance), sends `request` as one message, returns
/// the reply message, and closes. The request rides in the same packet as
/// the handshake, so a call costs one round trip.
///
/// ```
/// use npipe::ServerOptions;
/// use std::time::Duration;
///
/// # let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
/// # rt.block_on(async {
/// let name = format!("doc-async-call-{}", std::process::id());
/// let listener = ServerOptions::new().create_async(&name)?;
/// let server = tokio::spawn(async move {
///     let mut conn = listener.accept().await.unwrap();
///     let req = conn.recv_message().await.unwrap();
///     conn.write_message(&req.to_ascii_uppercase()).await.unwrap();
/// });
/// let reply = npipe::tokio::call(&name, b"shout", Duration::from_secs(1)).await?;
/// assert_eq!(reply, b"SHOUT");
/// server.await.unwrap();
/// # Ok::<(), npipe::Error>(())
/// # }).unwrap();
/// ```
pub async fn call(
    name: impl TryInto<PipeName, Error = Error>,
    request: &[u8],
    timeout: Duration,
) -> Result<Vec<u8>> {
    let name = name.try_into()?;
    let mut opts = ClientOptions::new();
    opts.wait(if timeout.is_zero() {
        Wait::NoWait
    } else {
        Wait::Timeout(timeout)
    });
    call_with(&opts, &name, request).await
}

/// `CallNamedPipe` with these options: see [`call`].
pub(crate) async fn call_with(
    opts: &ClientOptions,
    name: &PipeName,
    request: &[u8],
) -> Result<Vec<u8>> {
    let mut opts = opts.clone();
    opts.access(Access::ReadWrite);
    if request.len() <= PIPELINE_MAX {
        // The server refuses a pipelined request on a byte pipe with BadPipe.
        let mut client = PipeClient::connect(name, &opts, Some(request)).await?;
        return client.recv_message().await;
    }
    let mut client = PipeClient::connect(name, &opts, None).await?;
    if client.info().pipe_type == PipeType::Byte {
        return Err(connect_core::not_a_message_pipe(name));
    }
    client.transact(request).await
}
