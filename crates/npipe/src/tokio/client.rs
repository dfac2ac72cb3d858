//! The client end on tokio: connecting (`CreateFile` + `WaitNamedPipe` in
//! one step, without blocking the runtime) and `CallNamedPipe`.

use std::future::poll_fn;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ::tokio::io::unix::AsyncFd;

use super::stream::{register, register_for_wakes, PipeStream};
use crate::client_socket;
use crate::connect_core::{self, PIPELINE_MAX};
use crate::dial::{self, Dialer, Got, Offer};
use crate::error::{Error, ErrorCode, Result};
use crate::info::PeerCredentials;
use crate::name::PipeName;
use crate::namespace::{self, Namespace};
use crate::options::ClientOptions;
use crate::pipe::{ClientEnd, Pipe};
use crate::shm;
use crate::shm::late::async_end::AsyncLate;
use crate::shm::link::AsyncLink;
use crate::shm::transport::async_end::AsyncShm;
use crate::stream_core::EndCore;
use crate::sys::{Fd, ShmRegion, Socket};
use crate::transport::AsyncTransport;
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
    /// Drives the engine's [`ConnectCore`](crate::engine::connect::ConnectCore)
    /// with tokio's I/O and timers.
    pub(crate) async fn connect(
        name: &PipeName,
        opts: &ClientOptions,
        pipelined: Option<&[u8]>,
    ) -> Result<PipeClient> {
        let offers = opts.offers_shared_memory_to(name, pipelined);
        let d = dial::drive(&mut Tokio, name, opts, pipelined, offers).await?;
        let link = match (
            d.conn,
            shm::transport::agreed(&d.connected, d.offer, name, true)?,
        ) {
            (AsyncLink::Socket(fd), rings) => {
                client_socket::apply_send_buffer(fd.get_ref().socket(), d.connected.send_buffer);
                match (rings, opts.late_offer_after()) {
                    // Its socket only wakes it now: watched for reading
                    // alone (see `register_for_wakes`).
                    (Some(rings), _) => {
                        let io = register_for_wakes(fd.into_inner().into_socket())?;
                        AsyncLink::Shm(Box::new(AsyncShm::new(rings, io)))
                    }
                    (None, Some(after)) if d.connected.late_offers => {
                        // What came behind the REPLY, read with it, counts
                        // among the server's socket bytes.
                        let read = d.connected.leftover.len() as u64;
                        let late = AsyncLate::offerer(Arc::new(fd), after, read);
                        AsyncLink::Late(Box::new(late))
                    }
                    (None, _) => AsyncLink::Socket(fd),
                }
            }
            // A gateway's TLS: shared memory is never offered there.
            (link, None) => link,
            (_, Some(_)) => unreachable!("rings agreed on a connection that never offered them"),
        };
        let c = d.connected;
        let end = EndCore::new(c.setup, c.read_mode, c.leftover);
        Ok(Pipe {
            io: PipeStream::with_link(link, end),
            role: ClientEnd::new(),
        })
    }
}

/// A connect on tokio: the local pipe's socket registered with the
/// runtime's reactor, or TLS to a remote pipe's gateway (a new connection
/// each try).
struct Tokio;

impl Dialer for Tokio {
    type Conn = AsyncLink;

    async fn dial_local(
        &mut self,
        name: &PipeName,
        cred: bool,
    ) -> Result<(AsyncLink, Option<PeerCredentials>)> {
        let (fd, cred) = connect_registered(name, cred).await?;
        Ok((AsyncLink::Socket(fd), cred))
    }

    #[cfg(feature = "remote")]
    async fn dial_gateway(&mut self, name: &PipeName, opts: &ClientOptions) -> Result<AsyncLink> {
        let tls = dial_gateway(name, opts).await?;
        Ok(AsyncLink::Tls(Box::new(tls)))
    }

    async fn send(&mut self, on: &AsyncLink, bytes: &[u8], offer: Offer<'_>) -> io::Result<()> {
        match (on, offer) {
            (AsyncLink::Socket(fd), Some(region)) => send_with_offer(fd, bytes, region).await,
            _ => send_all_on(on, bytes).await,
        }
    }

    async fn receive(&mut self, on: &AsyncLink, buf: &mut Vec<u8>, by: Option<Instant>) -> Got {
        by_deadline(by, poll_fn(|cx| on.poll_recv_spare(cx, buf))).await
    }

    async fn pause(&mut self, pause: Duration) {
        ::tokio::time::sleep(pause).await;
    }
}

/// TLS to `name`'s gateway, registered with this runtime.
#[cfg(feature = "remote")]
async fn dial_gateway(
    name: &PipeName,
    opts: &ClientOptions,
) -> Result<crate::remote::async_tls::AsyncTls> {
    let tls = crate::remote::client::connect_async(name, opts).await?;
    crate::remote::async_tls::AsyncTls::new(tls).map_err(|e| {
        Error::os(
            e,
            "cannot register the connection with tokio (is this a tokio runtime with I/O enabled?)",
        )
    })
}

/// Sends all of `buf` on a fresh connection's transport, and what the
/// transport holds of it.
async fn send_all_on<T: AsyncTransport>(on: &T, mut buf: &[u8]) -> std::io::Result<()> {
    while !buf.is_empty() {
        let n = poll_fn(|cx| on.poll_send(cx, &[std::io::IoSlice::new(buf)])).await?;
        buf = &buf[n..];
    }
    poll_fn(|cx| on.poll_flush(cx)).await
}

/// `read`, given up at `deadline` if there is one (then `None`).
async fn by_deadline<F: std::future::Future>(
    deadline: Option<Instant>,
    read: F,
) -> Option<F::Output> {
    match deadline {
        Some(at) => ::tokio::time::timeout_at(at.into(), read).await.ok(),
        None => Some(read.await),
    }
}

/// A socket connected to the local pipe `name`, going round while the
/// server's kernel backlog is full (its acceptor drains it), until
/// `deadline` if there is one: then *pipe busy*.
pub(crate) async fn connect_socket(name: &PipeName, deadline: Option<Instant>) -> Result<Socket> {
    loop {
        let tried = Namespace::client_connect(|ns| ns.try_connect(name));
        if let Some(socket) = tried.map_err(|e| namespace::not_served(name, e))? {
            return Ok(socket);
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(Error::new(
                ErrorCode::PipeBusy,
                format!("{name}: its server's backlog stayed full"),
            ));
        }
        ::tokio::time::sleep(BACKLOG_PAUSE).await;
    }
}

/// A socket connected to the pipe and registered with the reactor, and its
/// server's kernel credentials if they are needed now.
async fn connect_registered(
    name: &PipeName,
    cred: bool,
) -> Result<(AsyncFd<Fd>, Option<PeerCredentials>)> {
    let socket = connect_socket(name, None).await?;
    let fd = register(socket)?;
    let cred = client_socket::server_cred(fd.get_ref().socket(), cred)?;
    Ok((fd, cred))
}

/// Sends the HELLO with the shared-memory offer riding on its first bytes.
async fn send_with_offer(fd: &AsyncFd<Fd>, buf: &[u8], region: &ShmRegion) -> std::io::Result<()> {
    let n = loop {
        let mut guard = fd.writable().await?;
        match guard.try_io(|fd| fd.get_ref().socket().send_with_fd(buf, region.fd())) {
            Ok(sent) => break sent?,
            Err(_would_block) => continue,
        }
    };
    send_all_on(fd, &buf[n..]).await
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
    opts.wait(Wait::for_call(timeout));
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
        return within(opts.read_timeout, client.recv_message()).await;
    }
    let mut client = PipeClient::connect(name, &opts, None).await?;
    if client.info().pipe_type == PipeType::Byte {
        return Err(connect_core::not_a_message_pipe(name));
    }
    within(opts.read_timeout, client.transact(request)).await
}

/// A reply awaited within the read timeout, if one is set (the blocking
/// ends have it as their socket's).
async fn within(
    limit: Option<std::time::Duration>,
    reply: impl std::future::Future<Output = Result<Vec<u8>>>,
) -> Result<Vec<u8>> {
    match limit {
        Some(limit) => ::tokio::time::timeout(limit, reply)
            .await
            .unwrap_or_else(|_| Err(connect_core::no_reply_in_time(limit))),
        None => reply.await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connect or a call can be spawned on a multi-threaded runtime: the
    /// connect loop shared with the blocking front end (`dial::drive`)
    /// keeps tokio's futures `Send`.
    #[test]
    fn connect_and_call_futures_are_send() {
        fn spawnable<T: Send>(_: T) {}
        let opts = ClientOptions::new();
        spawnable(opts.open_async("send-check"));
        spawnable(call("send-check", b"", Duration::ZERO));
    }
}
