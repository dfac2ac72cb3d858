//! The client end: connecting (`CreateFile` + `WaitNamedPipe` in one step)
//! and `CallNamedPipe`.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::blocking::stream::PipeStream;
use crate::client_socket;
use crate::connect_core;
use crate::dial::{self, run_blocking, Dialer, Got, Offer};
use crate::error::{Error, Result};
use crate::info::PeerCredentials;
use crate::name::PipeName;
use crate::namespace::{self, Namespace};
use crate::options::ClientOptions;
use crate::pipe::{ClientEnd, Pipe};
use crate::proto::handshake::{Reply, REPLY_MAX};
use crate::shm::{self, late::LateShm, link::Link, transport::ShmTransport};
use crate::stream_core::EndCore;
use crate::sys::{ShmRegion, Socket};
use crate::transport::{Recv, Transport};
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
    /// Drives the engine's [`ConnectCore`](crate::engine::connect::ConnectCore)
    /// with blocking calls.
    pub(crate) fn connect(
        name: &PipeName,
        opts: &ClientOptions,
        pipelined: Option<&[u8]>,
    ) -> Result<PipeClient> {
        let offers = opts.offers_shared_memory_to(name, pipelined);
        let d = run_blocking(dial::drive(&mut Blocking, name, opts, pipelined, offers))?;
        let link = match (
            d.conn,
            shm::transport::agreed(&d.connected, d.offer, name, false)?,
        ) {
            (Link::Socket(socket), rings) => {
                client_socket::apply_send_buffer(&socket, d.connected.send_buffer);
                match (rings, opts.late_offer_after()) {
                    (Some(rings), _) => Link::Shm(Box::new(ShmTransport::new(rings, socket))),
                    (None, Some(after)) if d.connected.late_offers => {
                        // What came behind the REPLY, read with it, counts
                        // among the server's socket bytes.
                        let read = d.connected.leftover.len() as u64;
                        Link::Late(Box::new(LateShm::offerer(Arc::new(socket), after, read)))
                    }
                    (None, _) => Link::Socket(socket),
                }
            }
            // A gateway's TLS: shared memory is never offered there.
            (link, None) => link,
            (_, Some(_)) => unreachable!("rings agreed on a connection that never offered them"),
        };
        connected_end(link, d.connected, opts)
    }
}

/// A connect with blocking calls: the local pipe's socket, or TLS to a
/// remote pipe's gateway (a new connection each try).
struct Blocking;

impl Dialer for Blocking {
    type Conn = Link;

    async fn dial_local(
        &mut self,
        name: &PipeName,
        cred: bool,
    ) -> Result<(Link, Option<PeerCredentials>)> {
        let (socket, cred) = connect_socket(name, cred)?;
        Ok((Link::Socket(socket), cred))
    }

    #[cfg(feature = "remote")]
    async fn dial_gateway(&mut self, name: &PipeName, opts: &ClientOptions) -> Result<Link> {
        let tls = crate::remote::client::connect_blocking(name, opts)?;
        Ok(Link::Tls(Box::new(tls)))
    }

    async fn send(&mut self, on: &Link, bytes: &[u8], offer: Offer<'_>) -> io::Result<()> {
        match (on, offer) {
            (Link::Socket(socket), Some(region)) => send_with_offer(socket, bytes, region),
            _ => send_all(on, bytes),
        }
    }

    async fn receive(&mut self, on: &Link, buf: &mut Vec<u8>, by: Option<Instant>) -> Got {
        receive(on, buf, by)
    }

    async fn pause(&mut self, pause: Duration) {
        std::thread::sleep(pause);
    }
}

/// The client end on `link`, as the engine's connect left it.
fn connected_end(
    link: Link,
    c: crate::engine::connect::Connected,
    opts: &ClientOptions,
) -> Result<PipeClient> {
    let end = EndCore::new(c.setup, c.read_mode, c.leftover);
    let mut io = PipeStream::with_link(link, end);
    if let Some(t) = opts.read_timeout {
        io.set_read_timeout(Some(t))?;
    }
    Ok(Pipe {
        io,
        role: ClientEnd::new(),
    })
}

/// Reads one REPLY within `limit`: a query's answer (`query_pipe`).
pub(crate) fn read_reply(socket: &Socket, limit: Duration) -> Result<Reply> {
    let deadline = Instant::now().checked_add(limit);
    let mut buf = Vec::new();
    loop {
        if let Some(reply) = connect_core::take_reply(&mut buf)? {
            return Ok(reply);
        }
        buf.reserve(REPLY_MAX - buf.len());
        match receive(socket, &mut buf, deadline) {
            None => return Err(connect_core::silent_server()),
            Some(Ok(0)) => return Err(connect_core::closed_before_reply()),
            Some(Ok(_)) => {}
            Some(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => {}
            Some(Err(e)) => return Err(Error::os(e, "reading the server's answer failed")),
        }
    }
}

/// A socket connected to the pipe, and its server's kernel credentials if
/// they are needed now.
fn connect_socket(name: &PipeName, cred: bool) -> Result<(Socket, Option<PeerCredentials>)> {
    let socket = Namespace::client_connect(|ns| ns.connect(name))
        .map_err(|e| namespace::not_served(name, e))?;
    let cred = client_socket::server_cred(&socket, cred)?;
    Ok((socket, cred))
}

/// Sends the HELLO with the offered region riding along (`SCM_RIGHTS`).
fn send_with_offer(socket: &Socket, buf: &[u8], region: &ShmRegion) -> io::Result<()> {
    let n = socket.send_with_fd(buf, region.fd())?;
    send_all(socket, &buf[n..])
}

fn send_all<T: Transport + ?Sized>(on: &T, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        let n = on.send(buf)?;
        buf = &buf[n..];
    }
    Ok(())
}

/// One read of the server's answer into `buf`'s spare room, waiting no
/// later than `deadline`: `None` if it passed first. The deadline is kept
/// by `poll`, not `SO_RCVTIMEO`, which would cost a second syscall to clear
/// again on every connection. (A socket, or a remote pipe's TLS.)
fn receive<T: Transport + ?Sized>(
    on: &T,
    buf: &mut Vec<u8>,
    deadline: Option<Instant>,
) -> Option<io::Result<usize>> {
    let Some(deadline) = deadline else {
        return Some(on.recv_spare(buf, Recv::Wait));
    };
    let left = deadline.saturating_duration_since(Instant::now());
    match on.wait_readable(Some(left)) {
        Ok(false) => None,
        // Data, or the peer hung up (which reads as 0 or an error); a
        // wake-up for nothing reads as `WouldBlock`, and the core waits on.
        Ok(true) => Some(on.recv_spare(buf, Recv::DontWait)),
        Err(e) => Some(Err(e)),
    }
}

/// `CallNamedPipe`: connects to a message-type pipe (waiting up to `timeout`
/// for a free instance), sends `request` as one message, returns the reply
/// message, and closes. The request rides in the same packet as the
/// handshake, so a call costs one round trip.
///
/// A zero `timeout` does not wait: every instance busy is
/// `ERROR_PIPE_BUSY` at once, on Linux and on Windows alike. (Windows'
/// `CallNamedPipe` reads 0 as the server's default wait: for that, use
/// `ClientOptions::new().wait(Wait::ServerDefault).call(..)`.)
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
        .wait(Wait::for_call(timeout))
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
