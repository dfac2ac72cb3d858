//! The client end on tokio: connecting (`CreateFile` + `WaitNamedPipe` in
//! one step, without blocking the runtime) and `CallNamedPipe`.

use std::future::poll_fn;
use std::task::Poll;
use std::time::{Duration, Instant};

use ::tokio::io::unix::AsyncFd;

use super::stream::{register, register_for_wakes, PipeStream};
use crate::client_socket;
use crate::connect_core::{self, PIPELINE_MAX};
use crate::engine::connect::{Action, ConnectCore};
use crate::error::{Error, ErrorCode, Result};
use crate::info::PeerCredentials;
use crate::name::PipeName;
use crate::namespace::{self, Namespace};
use crate::options::ClientOptions;
use crate::pipe::{ClientEnd, Pipe};
use crate::shm;
use crate::shm::link::AsyncLink;
use crate::shm::transport::async_end::AsyncShm;
use crate::stream_core::EndCore;
use crate::sys::{self, Fd, RecvFlagsLite, ShmRegion, Socket};
#[cfg(feature = "remote")]
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
    /// Drives the engine's [`ConnectCore`] with tokio's I/O and timers.
    pub(crate) async fn connect(
        name: &PipeName,
        opts: &ClientOptions,
        pipelined: Option<&[u8]>,
    ) -> Result<PipeClient> {
        #[cfg(feature = "remote")]
        if name.host().is_some() {
            return connect_remote(name, opts, pipelined).await;
        }
        let (mut core, mut action) = ConnectCore::begin(name, opts, pipelined, Instant::now());
        let mut fd: Option<AsyncFd<Fd>> = None;
        let offers = opts.offers_shared_memory_to(name, pipelined);
        // This attempt's offer: a fresh region each time.
        let mut offer: Option<ShmRegion> = None;
        loop {
            action = match action {
                Action::Connect => {
                    match connect_registered(name, opts, core.needs_server_cred()).await {
                        Ok((registered, cred)) => {
                            fd = Some(registered);
                            core.connected(cred, sys::user_name)
                        }
                        Err(e) => core.failed(e, Instant::now()),
                    }
                }
                Action::Send(bytes) => {
                    let on = fd.as_ref().expect("connected");
                    offer = offers.then(shm::transport::offer).and_then(|r| r.ok());
                    let sent = match &offer {
                        Some(region) => send_with_offer(on, &bytes, region).await,
                        None => send_all(on, &bytes).await,
                    };
                    core.sent(sent, Instant::now())
                }
                Action::Receive { deadline } => {
                    let on = fd.as_ref().expect("connected");
                    let got = by_deadline(deadline, recv_some(on, core.reply_buffer())).await;
                    core.read_ended(got, Instant::now())
                }
                Action::Pause(pause) => {
                    fd = None;
                    ::tokio::time::sleep(pause).await;
                    core.resume(Instant::now())
                }
                Action::Done(c) => {
                    let fd = fd.take().expect("connected");
                    client_socket::apply_send_buffer(fd.get_ref().socket(), c.send_buffer);
                    let link = match shm::transport::agreed(&c, offer.take(), name, true)? {
                        None => AsyncLink::Socket(fd),
                        Some(rings) => {
                            // Its socket only wakes it now: watched for
                            // reading alone (see `register_for_wakes`).
                            let io = register_for_wakes(fd.into_inner().into_socket())?;
                            let rings = AsyncShm::new(rings, io);
                            AsyncLink::Shm(Box::new(rings))
                        }
                    };
                    let end = EndCore::new(c.setup, c.read_mode, c.leftover);
                    return Ok(Pipe {
                        io: PipeStream::with_link(link, end),
                        role: ClientEnd::new(),
                    });
                }
                Action::Fail(e) => return Err(e),
            }
        }
    }
}

/// A remote pipe (`\\HOST\pipe\NAME`): the engine's connect driven on a TLS
/// connection to HOST's gateway, which then carries the data too. Its
/// server is the gateway's to name: no kernel here can.
#[cfg(feature = "remote")]
async fn connect_remote(
    name: &PipeName,
    opts: &ClientOptions,
    pipelined: Option<&[u8]>,
) -> Result<PipeClient> {
    use crate::remote::async_tls::AsyncTls;
    let (mut core, mut action) = ConnectCore::begin(name, opts, pipelined, Instant::now());
    let mut tls: Option<AsyncTls> = None;
    loop {
        action = match action {
            Action::Connect => {
                let dialled = dial(name, opts).await;
                core.gateway_dialled(dialled, &mut tls, sys::user_name, Instant::now())
            }
            Action::Send(bytes) => {
                let on = tls.as_ref().expect("connected");
                core.sent(send_all_on(on, &bytes).await, Instant::now())
            }
            Action::Receive { deadline } => {
                let on = tls.as_ref().expect("connected");
                let buf = core.reply_buffer();
                let got = by_deadline(deadline, poll_fn(|cx| on.poll_recv_spare(cx, buf))).await;
                core.read_ended(got, Instant::now())
            }
            Action::Pause(pause) => {
                tls = None;
                ::tokio::time::sleep(pause).await;
                core.resume(Instant::now())
            }
            Action::Done(c) => {
                let on = tls.take().expect("connected");
                shm::transport::agreed(&c, None, name, true)?;
                let end = EndCore::new(c.setup, c.read_mode, c.leftover);
                return Ok(Pipe {
                    io: PipeStream::with_link(AsyncLink::Tls(Box::new(on)), end),
                    role: ClientEnd::new(),
                });
            }
            Action::Fail(e) => return Err(e),
        }
    }
}

/// TLS to `name`'s gateway, registered with this runtime.
#[cfg(feature = "remote")]
async fn dial(name: &PipeName, opts: &ClientOptions) -> Result<crate::remote::async_tls::AsyncTls> {
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
#[cfg(feature = "remote")]
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
    opts: &ClientOptions,
    cred: bool,
) -> Result<(AsyncFd<Fd>, Option<PeerCredentials>)> {
    let _ = opts;
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
    send_all(fd, &buf[n..]).await
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

/// One read of the server's answer into `buf`'s spare room, when the
/// socket is readable.
async fn recv_some(fd: &AsyncFd<Fd>, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    poll_fn(|cx| loop {
        let mut guard = match fd.poll_read_ready(cx) {
            Poll::Ready(Ok(guard)) => guard,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        };
        match guard.try_io(|fd| {
            fd.get_ref()
                .socket()
                .recv_spare(buf, RecvFlagsLite::DontWait)
        }) {
            Ok(r) => return Poll::Ready(r),
            Err(_would_block) => continue,
        }
    })
    .await
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
