//! The gateway's relay between a client's TLS connection and the local
//! pipe (once the client's HELLO has gone there), both ways, on one task.
//! Below, "up" is from TLS to the pipe. (Clients need none: both front ends
//! run their pipe end on the TLS connection itself.)
//!
//! Why not `tokio::io::copy_bidirectional` over tokio-rustls, which this
//! replaced (same-CPU transact 20.3 µs, now see DESIGN-NOTES):
//! - A Unix stream socket signals "writable" to its writer every time its
//!   reader takes data, and tokio registers a socket for reading and
//!   writing at once. Each request the server read woke the gateway for
//!   nothing. Here the pipe's socket is registered for reading only; a
//!   write that would block registers a duplicate of it for writing until
//!   that write goes through.
//! - Plaintext from several TLS records goes to the pipe in one write: a
//!   64 KiB message wakes the pipe's server once instead of at each 16 KiB
//!   record.
//!
//! Where the gateway offered to hand the connection over (PROTOCOL §6c),
//! what the client sends before the server's REPLY (it should send
//! nothing; a waiting client that gives up sends close_notify) is held
//! back from the pipe, where the server expects the gateway's word on the
//! offer first; anything that came makes that word "relayed". An OK that
//! took the offer, with nothing from the client, ends the relay with the
//! connection, once the OK has gone out whole; the gateway then hands it
//! over.

use std::future::poll_fn;
use std::io::{self, Read, Write};
use std::pin::Pin;
use std::task::{Context, Poll};

use ::tokio::io::unix::AsyncFd;
use ::tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use ::tokio::net::TcpStream;
use rustls::Connection;

use crate::proto::handoff::HandOff;
use crate::proto::handshake::Reply;
use crate::sys::{self, Fd, Socket};

/// Bytes a direction holds at most: a 64 KiB write crosses as one train of
/// TLS records one way and one write to the pipe the other, not in pieces.
const BUFFER: usize = 64 * 1024;
/// ... and at first: a buffer grows (doubling) only when a read fills it,
/// so a thousand quiet connections hold 8 KiB each, not 128.
const FIRST_BUFFER: usize = 4 * 1024;

/// Bytes relayed each way, for the gateway's log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Relayed {
    pub up: u64,
    pub down: u64,
}

/// How a relay ended.
pub(crate) enum Outcome {
    /// Both directions ended.
    Relayed(Relayed),
    /// The server took the offer to hand the connection over, and its OK
    /// went out: the connection, for the hand-over.
    HandOver(Box<HandOver>),
}

/// A connection to hand over: TCP with its TLS state (nothing left to
/// send), and the socket to the pipe's server, still registered for
/// reading (the gateway watches it as the lease).
pub(crate) struct HandOver {
    pub tcp: TcpStream,
    pub conn: Connection,
    pub pipe: AsyncFd<Fd>,
}

/// Relays between `tcp` (with its TLS state `conn`, the handshake done)
/// and the local socket `pipe`, writing `opening` (the HELLO and what came
/// behind it) to it first. Ends when both directions have ended (each
/// passes its end of input on as a half close) or either fails, or, if the
/// HELLO offered to hand the connection over (`offered`), when the
/// server's OK took the offer.
pub(crate) async fn relay(
    tcp: TcpStream,
    conn: Connection,
    pipe: Socket,
    opening: Vec<u8>,
    offered: bool,
) -> io::Result<Outcome> {
    pipe.set_nonblocking(true)?;
    let opening_len = opening.len();
    let mut relay = Relay {
        tls: Tls { tcp, conn },
        pipe: Pipe {
            readable: sys::register_async_for(pipe, Interest::READABLE)?,
            writable: None,
            calm_writes: 0,
        },
        up: Buffer::holding(opening),
        down: Buffer::holding(Vec::new()),
        client_eof: false,
        up_done: false,
        pipe_eof: false,
        down_done: false,
        relayed: Relayed::default(),
        awaiting_reply: offered,
        close_notified: false,
        spoke_early: false,
        opening_left: opening_len,
        hand_over: false,
    };
    if poll_fn(|cx| relay.poll(cx)).await? {
        return Ok(Outcome::Relayed(relay.relayed));
    }
    let Relay { tls, pipe, .. } = relay;
    drop(pipe.writable);
    Ok(Outcome::HandOver(Box::new(HandOver {
        tcp: tls.tcp,
        conn: tls.conn,
        pipe: pipe.readable,
    })))
}

struct Relay {
    tls: Tls,
    pipe: Pipe,
    /// For the pipe, not yet written to it (first the opening).
    up: Buffer,
    /// For the client, not yet taken by rustls.
    down: Buffer,
    /// The client's input has ended (what came before may wait in `up`).
    client_eof: bool,
    /// ... and the pipe's write side is shut.
    up_done: bool,
    /// The pipe's output has ended (close_notify queued).
    pipe_eof: bool,
    /// ... and everything is sent and the TCP write side shut.
    down_done: bool,
    relayed: Relayed,
    /// The HELLO offered a hand-over and the server's REPLY has not come
    /// whole yet: what the client sends meanwhile is held back from the
    /// server.
    awaiting_reply: bool,
    /// close_notify is queued (once the pipe's output ended).
    close_notified: bool,
    /// Something came from the client before the REPLY: the connection
    /// is relayed after all.
    spoke_early: bool,
    /// Bytes of the opening not yet written to the pipe.
    opening_left: usize,
    /// The REPLY took the offer: the relay ends once it has gone out.
    hand_over: bool,
}

/// Bytes read and not yet written on: `data[start..end]`.
struct Buffer {
    data: Vec<u8>,
    start: usize,
    end: usize,
}

impl Buffer {
    /// A buffer of [`FIRST_BUFFER`] bytes (or more, for a longer `first`)
    /// holding `first`.
    fn holding(mut first: Vec<u8>) -> Buffer {
        let end = first.len();
        first.resize(end.max(FIRST_BUFFER), 0);
        Buffer {
            data: first,
            start: 0,
            end,
        }
    }

    fn pending(&self) -> &[u8] {
        &self.data[self.start..self.end]
    }

    /// Drops what it holds.
    fn clear(&mut self) {
        self.start = 0;
        self.end = 0;
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Room after what it holds (none while it holds a tail it has not
    /// written: the tail goes first, in order).
    fn spare(&mut self) -> &mut [u8] {
        &mut self.data[self.end..]
    }

    /// Puts `bytes` before what it holds (the gateway's word to the
    /// server, ahead of the client's data).
    fn push_front(&mut self, bytes: &[u8]) {
        let mut data = bytes.to_vec();
        data.extend_from_slice(self.pending());
        let end = data.len();
        data.resize(end.max(self.data.len()), 0);
        *self = Buffer {
            data,
            start: 0,
            end,
        };
    }

    fn filled(&mut self, n: usize) {
        self.end += n;
        if self.end == self.data.len() && self.data.len() < BUFFER {
            // Full: more is coming than fits, so make room for it.
            let grown = (self.data.len() * 2).min(BUFFER);
            self.data.resize(grown, 0);
        }
    }
}

/// What one step of a direction did.
enum Step {
    /// Moved bytes or state: try again.
    Moved,
    /// Waits for readiness it has registered with the task.
    Blocked,
}

impl Relay {
    /// Ready with `true` once both directions ended, `false` once the
    /// connection is to be handed over.
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        loop {
            let mut moved = false;
            if !self.up_done {
                moved |= matches!(self.up(cx)?, Step::Moved);
            }
            if !self.down_done {
                moved |= matches!(self.down(cx)?, Step::Moved);
            }
            if self.hand_over && self.down.pending().is_empty() && !self.tls.conn.wants_write() {
                return Poll::Ready(Ok(false));
            }
            if self.up_done && self.down_done {
                return Poll::Ready(Ok(true));
            }
            if !moved {
                return Poll::Pending;
            }
        }
    }

    /// The REPLY, once whole at the front of what the pipe's server sent:
    /// the relay stops holding the client back, and ends for the
    /// hand-over if the OK took the offer and nothing stands in the way
    /// (else the server is told the gateway relays after all).
    fn reply_came(&mut self) {
        let (reply, used) = match Reply::decode(self.down.pending()) {
            Ok(Some(whole)) => whole,
            Ok(None) if !self.pipe_eof => return,
            // Not a REPLY, or cut short: passed on as it is.
            _ => {
                self.awaiting_reply = false;
                return;
            }
        };
        self.awaiting_reply = false;
        if !matches!(reply, Reply::Connected(ref d) if d.handed_over) {
            return;
        }
        if self.spoke_early
            || self.client_eof
            || self.down.pending().len() > used
            || !self.up.pending().is_empty()
        {
            let mut relayed = Vec::new();
            HandOff::Relayed.encode(&mut relayed);
            self.up.push_front(&relayed);
        } else {
            self.hand_over = true;
        }
    }

    /// Client to pipe: the opening, then plaintext, gathered from as
    /// many TLS records as have come (up to the buffer) into one write, so
    /// a 64 KiB message wakes the pipe's server once, not at each 16 KiB
    /// record.
    fn up(&mut self, cx: &mut Context<'_>) -> io::Result<Step> {
        // Once the connection is to be handed over, nothing more is read.
        while !self.client_eof && !self.hand_over && !self.up.spare().is_empty() {
            match self.tls.conn.reader().read(self.up.spare()) {
                // close_notify: the client has no more to say.
                Ok(0) => self.client_eof = true,
                Ok(n) => self.up.filled(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    match self.tls.poll_receive(cx)? {
                        Step::Blocked => break,
                        // Whatever came before the REPLY (a close_notify, a
                        // request, part of a record) is now rustls', not
                        // TCP's: the connection can no longer be handed over.
                        Step::Moved => self.spoke_early |= self.awaiting_reply,
                    }
                }
                // A TCP end without close_notify: the pipe's server sees
                // the same end of input; a cut message is its to notice.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => self.client_eof = true,
                Err(e) => return Err(e),
            }
        }
        // A client that ended before its REPLY hangs up at once (a waiter
        // that gave up leaves the server's queue): what it sent before,
        // held back, goes nowhere.
        if self.client_eof && self.awaiting_reply && self.opening_left == 0 {
            self.up.clear();
        }
        // Before the REPLY only the opening goes to the pipe: what the
        // client sent early waits behind the gateway's word on the offer.
        let pending = self.up.pending();
        let ready = if self.awaiting_reply {
            &pending[..pending.len().min(self.opening_left)]
        } else {
            pending
        };
        if !ready.is_empty() {
            let written = match self.pipe.poll_write(cx, ready) {
                // The server closed (after a refusal, say): what the client
                // sends goes nowhere, and what the server said still goes
                // to the client.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
                    ) =>
                {
                    self.up.clear();
                    self.up_done = true;
                    return Ok(Step::Moved);
                }
                written => written?,
            };
            return Ok(match written {
                Poll::Ready(n) => {
                    self.up.consume(n);
                    self.opening_left = self.opening_left.saturating_sub(n);
                    self.relayed.up += n as u64;
                    Step::Moved
                }
                Poll::Pending => Step::Blocked,
            });
        }
        if self.client_eof && self.up.pending().is_empty() {
            self.end_up();
            return Ok(Step::Moved);
        }
        Ok(Step::Blocked)
    }

    fn end_up(&mut self) {
        self.up_done = true;
        // The server may already have closed: nothing left to tell it.
        let _ = self.pipe.socket().shutdown_write();
    }

    /// Pipe to client: read, hand to rustls, send what it made.
    fn down(&mut self, cx: &mut Context<'_>) -> io::Result<Step> {
        if self.awaiting_reply {
            self.reply_came();
            if self.awaiting_reply {
                // Not whole yet: read more of it.
                return self.read_pipe(cx);
            }
        }
        if !self.down.pending().is_empty() {
            let n = self.tls.conn.writer().write(self.down.pending())?;
            self.down.consume(n);
            self.relayed.down += n as u64;
            if n > 0 {
                return Ok(Step::Moved);
            }
            // rustls's send buffer is full: send before taking more.
        }
        if self.tls.conn.wants_write() {
            return self.tls.poll_send(cx);
        }
        if !self.down.pending().is_empty() {
            // Sent everything, and rustls still takes nothing: not to be,
            // but never spin on it.
            return Err(io::Error::other("TLS refused to take more plaintext"));
        }
        if self.pipe_eof {
            if !self.close_notified {
                // After everything the server sent (the REPLY included),
                // however the end came: the client hears a clean end.
                self.tls.conn.send_close_notify();
                self.close_notified = true;
                return Ok(Step::Moved);
            }
            return match Pin::new(&mut self.tls.tcp).poll_shutdown(cx) {
                Poll::Ready(result) => {
                    // The client may have gone: nothing left to tell it.
                    let _ = result;
                    self.down_done = true;
                    Ok(Step::Moved)
                }
                Poll::Pending => Ok(Step::Blocked),
            };
        }
        if self.hand_over {
            // Nothing more goes this way: the server talks TLS itself.
            return Ok(Step::Blocked);
        }
        self.read_pipe(cx)
    }

    /// Reads what the pipe's server sent into `down`.
    fn read_pipe(&mut self, cx: &mut Context<'_>) -> io::Result<Step> {
        let got = match self.pipe.poll_read(cx, self.down.spare()) {
            // A server that closed with bytes of ours unread (the client's,
            // relayed just after a refusal, say): the kernel says so once
            // everything the server sent has been read, so this is the end
            // of its output, and the client still hears a clean end. It
            // has closed, not just ended its output: what the client sends
            // from now on goes nowhere, so the relay waits for none of it.
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                self.up.clear();
                self.up_done = true;
                Poll::Ready(0)
            }
            got => got?,
        };
        match got {
            Poll::Ready(0) => {
                self.pipe_eof = true;
                Ok(Step::Moved)
            }
            Poll::Ready(n) => {
                self.down.filled(n);
                Ok(Step::Moved)
            }
            Poll::Pending => Ok(Step::Blocked),
        }
    }
}

/// The client's side: TCP and the TLS state on it.
struct Tls {
    tcp: TcpStream,
    conn: Connection,
}

impl Tls {
    /// Reads TLS records from TCP and decrypts them.
    fn poll_receive(&mut self, cx: &mut Context<'_>) -> io::Result<Step> {
        match self.conn.read_tls(&mut TcpIo {
            tcp: &mut self.tcp,
            cx,
        }) {
            // The task hears when there is more.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Step::Blocked),
            Err(e) => return Err(e),
            // End of TCP input: the reader reports a clean or unclean end.
            Ok(_) => {}
        }
        if let Err(e) = self.conn.process_new_packets() {
            // Send the alert rustls queued, as far as TCP takes it now.
            let _ = self.conn.write_tls(&mut TcpIo {
                tcp: &mut self.tcp,
                cx,
            });
            return Err(io::Error::new(io::ErrorKind::InvalidData, e));
        }
        Ok(Step::Moved)
    }

    /// Writes what rustls has made to TCP.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> io::Result<Step> {
        match self.conn.write_tls(&mut TcpIo {
            tcp: &mut self.tcp,
            cx,
        }) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(Step::Blocked),
            Err(e) => Err(e),
            Ok(_) => Ok(Step::Moved),
        }
    }
}

/// rustls's blocking-style reads and writes over tokio's polls: pending is
/// a would-block, with the task registered to hear of readiness. (tokio's
/// own poll also takes a short read as "drained", which saves a read that
/// would only block.)
struct TcpIo<'a, 'b> {
    tcp: &'a mut TcpStream,
    cx: &'a mut Context<'b>,
}

impl TcpIo<'_, '_> {
    fn ready<T>(poll: Poll<io::Result<T>>) -> io::Result<T> {
        match poll {
            Poll::Ready(result) => result,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

impl Read for TcpIo<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut buf = ReadBuf::new(buf);
        Self::ready(Pin::new(&mut *self.tcp).poll_read(self.cx, &mut buf))?;
        Ok(buf.filled().len())
    }
}

impl Write for TcpIo<'_, '_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Self::ready(Pin::new(&mut *self.tcp).poll_write(self.cx, buf))
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        Self::ready(Pin::new(&mut *self.tcp).poll_write_vectored(self.cx, bufs))
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The local pipe's socket, registered for reading only.
struct Pipe {
    readable: AsyncFd<Fd>,
    /// A duplicate registered for writing, made when a write would block
    /// and kept while writes keep meeting a full socket (a stream of
    /// writes would make and drop it at each), dropped after
    /// [`CALM_WRITES`] writes in a row that found room.
    writable: Option<AsyncFd<Fd>>,
    calm_writes: u32,
}

/// Writes in a row that found room after which the pipe's socket stops
/// being watched for room.
const CALM_WRITES: u32 = 8;

impl Pipe {
    fn socket(&self) -> &Socket {
        self.readable.get_ref().socket()
    }

    fn poll_read(&self, cx: &mut Context<'_>, buf: &mut [u8]) -> io::Result<Poll<usize>> {
        loop {
            let mut guard = match self.readable.poll_read_ready(cx) {
                Poll::Ready(guard) => guard?,
                Poll::Pending => return Ok(Poll::Pending),
            };
            match guard.try_io(|fd| fd.get_ref().socket().recv_nonblocking(buf)) {
                Ok(Ok(n)) => {
                    if n > 0 && n < buf.len() {
                        // Drained (tokio's own sockets take it so): the
                        // next read waits for the next event instead of
                        // making a system call that would only block.
                        guard.clear_ready();
                    }
                    return Ok(Poll::Ready(n));
                }
                Ok(Err(e)) => return Err(e),
                // Would block: readiness cleared, poll again to register.
                Err(_) => continue,
            }
        }
    }

    fn poll_write(&mut self, cx: &mut Context<'_>, data: &[u8]) -> io::Result<Poll<usize>> {
        match self.socket().send_nonblocking(data) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            written => {
                self.calm_writes = self.calm_writes.saturating_add(1);
                if self.calm_writes >= CALM_WRITES {
                    self.writable = None;
                }
                return written.map(Poll::Ready);
            }
        }
        self.calm_writes = 0;
        if self.writable.is_none() {
            let dup = self.socket().try_clone()?;
            self.writable = Some(sys::register_async_for(dup, Interest::WRITABLE)?);
        }
        let Some(writable) = &self.writable else {
            unreachable!("registered above")
        };
        loop {
            let mut guard = match writable.poll_write_ready(cx) {
                Poll::Ready(guard) => guard?,
                Poll::Pending => return Ok(Poll::Pending),
            };
            if let Ok(written) = guard.try_io(|fd| fd.get_ref().socket().send_nonblocking(data)) {
                return written.map(Poll::Ready);
            }
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use ::tokio::io::{AsyncReadExt, AsyncWriteExt};
    use ::tokio::net::TcpListener;
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};

    use super::*;

    /// A server and a client configuration that trust one self-signed
    /// certificate (the relay does not care who the client is).
    pub(in crate::remote) fn configs() -> (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let server = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone()], key)
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.der().clone()).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        (Arc::new(server), Arc::new(client))
    }

    /// A TLS client connected through TCP to a relay onto `pipe`; the
    /// relay's task.
    async fn client_and_relay(
        pipe: Socket,
        opening: &[u8],
    ) -> (
        tokio_rustls::client::TlsStream<TcpStream>,
        ::tokio::task::JoinHandle<io::Result<Relayed>>,
    ) {
        let (client, relay) = client_and_offering_relay(pipe, opening, false).await;
        let relay = ::tokio::spawn(async move {
            match relay.await.unwrap()? {
                Outcome::Relayed(relayed) => Ok(relayed),
                Outcome::HandOver(_) => unreachable!("nothing was offered"),
            }
        });
        (client, relay)
    }

    /// The same, the relay's HELLO having offered a hand-over if `offered`.
    async fn client_and_offering_relay(
        pipe: Socket,
        opening: &[u8],
        offered: bool,
    ) -> (
        tokio_rustls::client::TlsStream<TcpStream>,
        ::tokio::task::JoinHandle<io::Result<Outcome>>,
    ) {
        let (server_config, client_config) = configs();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let opening = opening.to_vec();
        let relay = ::tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let tls = tokio_rustls::TlsAcceptor::from(server_config)
                .accept(tcp)
                .await
                .unwrap();
            let (tcp, conn) = tls.into_inner();
            relay(tcp, Connection::Server(conn), pipe, opening, offered).await
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        let client = tokio_rustls::TlsConnector::from(client_config)
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap();
        (client, relay)
    }

    pub(in crate::remote) fn runtime() -> ::tokio::runtime::Runtime {
        ::tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn a_buffer_grows_only_when_a_read_fills_it_and_keeps_its_order() {
        let mut b = Buffer::holding(b"open".to_vec());
        assert_eq!(b.data.len(), FIRST_BUFFER, "starts small");
        let room = b.spare().len();
        b.spare().fill(7);
        b.filled(room);
        assert_eq!(b.data.len(), 2 * FIRST_BUFFER, "a full read makes room");
        assert_eq!(&b.pending()[..4], b"open");
        assert_eq!(b.pending().len(), FIRST_BUFFER);
        b.consume(FIRST_BUFFER);
        assert!(b.pending().is_empty());
        for _ in 0..10 {
            let room = b.spare().len();
            b.filled(room);
            b.consume(room);
        }
        assert_eq!(b.data.len(), BUFFER, "never past the most");
    }

    #[test]
    fn relays_both_ways_through_full_buffers_and_passes_each_end_on() {
        runtime().block_on(async {
            let (gateway_end, server_end) = Socket::pair().unwrap();
            // A small send buffer and a slow reader: the relay's writes to
            // the pipe meet a full socket again and again.
            gateway_end.set_send_buffer(8 * 1024).unwrap();
            let server = std::thread::spawn(move || {
                let mut got = Vec::new();
                let mut buf = vec![0; 4096];
                loop {
                    let n = server_end.recv(&mut buf).unwrap();
                    if n == 0 {
                        break;
                    }
                    got.extend_from_slice(&buf[..n]);
                    if got.len() % (64 * 1024) < 4096 {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                }
                // End of input came after everything: answer it all.
                let mut sent = 0;
                while sent < got.len() {
                    sent += server_end.send(&got[sent..]).unwrap();
                }
                server_end.shutdown_write().unwrap();
                got
            });
            let (client, relay) = client_and_relay(gateway_end, b"OPENING").await;
            let payload: Vec<u8> = (0..2_000_000u32).map(|i| (i % 251) as u8).collect();
            let (mut from_pipe, mut to_pipe) = ::tokio::io::split(client);
            let sent = payload.clone();
            let writer = ::tokio::spawn(async move {
                to_pipe.write_all(&sent).await.unwrap();
                // close_notify: the pipe's server reads its end of input.
                to_pipe.shutdown().await.unwrap();
            });
            // The client reads slowly too: rustls's send buffer fills.
            let mut echoed = Vec::new();
            let mut buf = vec![0; 64 * 1024];
            loop {
                let n = from_pipe.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                echoed.extend_from_slice(&buf[..n]);
                ::tokio::time::sleep(Duration::from_millis(1)).await;
            }
            writer.await.unwrap();
            let relayed = relay.await.unwrap().unwrap();
            let got = server.join().unwrap();
            assert_eq!(&got[..7], b"OPENING", "the opening goes first");
            assert!(got[7..] == payload[..], "the pipe got every byte in order");
            assert_eq!(echoed.len(), got.len());
            assert!(echoed == got, "the client got every byte back in order");
            assert_eq!(
                relayed,
                Relayed {
                    up: got.len() as u64,
                    down: got.len() as u64
                }
            );
        });
    }

    #[test]
    fn a_client_that_drops_its_connection_ends_the_pipes_input() {
        runtime().block_on(async {
            let (gateway_end, server_end) = Socket::pair().unwrap();
            let (mut client, relay) = client_and_relay(gateway_end, b"HELLO").await;
            client.write_all(b"request").await.unwrap();
            client.flush().await.unwrap();
            // No close_notify: the TCP connection just ends.
            drop(client);
            let read_all = std::thread::spawn(move || {
                let mut got = Vec::new();
                let mut buf = [0; 64];
                loop {
                    match server_end.recv(&mut buf).unwrap() {
                        0 => return got,
                        n => got.extend_from_slice(&buf[..n]),
                    }
                }
            });
            // Joined off the runtime's thread: the relay runs there.
            let got = ::tokio::task::spawn_blocking(move || read_all.join().unwrap())
                .await
                .unwrap();
            assert_eq!(
                got, b"HELLOrequest",
                "what came before the end still arrives"
            );
            // The pipe's side ends too once its server closes; the relay
            // ends whatever TCP says to the close_notify it sends.
            let relayed = relay.await.unwrap();
            assert!(
                matches!(relayed, Ok(Relayed { up: 12, .. }) | Err(_)),
                "{relayed:?}"
            );
        });
    }

    /// What the server's side of the pipe reads until its end of input
    /// (at most 10 s: a hang fails the test).
    fn read_to_end_of_pipe(server_end: &Socket) -> Vec<u8> {
        server_end
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match server_end.recv(&mut buf) {
                Ok(0) => return got,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => panic!("the pipe's input never ended ({e}) after {got:?}"),
            }
        }
    }

    /// What the client reads until a clean end (close_notify), within
    /// 10 s: a hang or a cut end fails the test.
    async fn read_to_a_clean_end(
        client: &mut tokio_rustls::client::TlsStream<TcpStream>,
    ) -> Vec<u8> {
        let mut back = Vec::new();
        ::tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut back))
            .await
            .expect("the relay never ended")
            .expect("no clean end (close_notify)");
        back
    }

    /// An offered relay whose client writes and then ends before its
    /// REPLY: the server's queue hears the hang-up at once, and what the
    /// client sent, held back behind the awaited REPLY, goes nowhere (it
    /// used to wait for the REPLY, so a waiter that gave up stayed queued).
    #[test]
    fn a_client_that_ends_before_its_reply_hangs_up_at_once() {
        runtime().block_on(async {
            let (gateway_end, server_end) = Socket::pair().unwrap();
            let (mut client, relay) = client_and_offering_relay(gateway_end, b"HELLO", true).await;
            client.write_all(b"early").await.unwrap();
            client.shutdown().await.unwrap();
            let got = ::tokio::task::spawn_blocking(move || {
                let got = read_to_end_of_pipe(&server_end);
                drop(server_end);
                got
            })
            .await
            .unwrap();
            assert_eq!(got, b"HELLO", "the opening, then the end");
            assert!(matches!(relay.await.unwrap().unwrap(), Outcome::Relayed(_)));
        });
    }

    /// An offered relay whose server refuses and closes while the client's
    /// early bytes are held back: the refusal still reaches the client,
    /// then close_notify (the bytes the server will never read are
    /// dropped, where the failed write used to end the relay first).
    #[test]
    fn a_refusal_reaches_the_client_past_bytes_held_back() {
        runtime().block_on(async {
            let (gateway_end, server_end) = Socket::pair().unwrap();
            let (mut client, relay) = client_and_offering_relay(gateway_end, b"HELLO", true).await;
            client.write_all(b"early").await.unwrap();
            client.flush().await.unwrap();
            let mut refusal = Vec::new();
            Reply::Refused {
                code: 231,
                reason: "all busy".into(),
            }
            .encode(&mut refusal)
            .unwrap();
            let said = refusal.clone();
            ::tokio::task::spawn_blocking(move || {
                let mut hello = [0u8; 5];
                server_end
                    .set_read_timeout(Some(Duration::from_secs(10)))
                    .unwrap();
                let mut got = 0;
                while got < hello.len() {
                    got += server_end.recv(&mut hello[got..]).unwrap();
                }
                assert_eq!(&hello, b"HELLO");
                // Wait for the early bytes to reach the relay first.
                std::thread::sleep(Duration::from_millis(100));
                server_end.send(&said).unwrap();
                drop(server_end);
            })
            .await
            .unwrap();
            assert_eq!(read_to_a_clean_end(&mut client).await, refusal);
            relay.await.unwrap().unwrap();
        });
    }

    /// A server that closes with the client's bytes unread in its socket
    /// (relayed just after its refusal, as a loaded machine can order it):
    /// the relay's next read of the pipe fails with `ECONNRESET`, after
    /// everything the server said, and the client still gets all of that
    /// and a clean end (it used to get a TCP end without close_notify);
    /// the relay then ends without waiting for the client to close.
    #[test]
    fn a_server_that_closes_with_bytes_unread_ends_the_client_cleanly() {
        runtime().block_on(async {
            let (gateway_end, server_end) = Socket::pair().unwrap();
            let (mut client, relay) = client_and_offering_relay(gateway_end, b"HELLO", false).await;
            client.write_all(b"unread").await.unwrap();
            client.flush().await.unwrap();
            ::tokio::task::spawn_blocking(move || {
                // Until the client's bytes are there, behind the HELLO,
                // then a last word and a close that leaves them unread.
                let deadline = std::time::Instant::now() + Duration::from_secs(10);
                while server_end.readable_bytes().unwrap() < b"HELLOunread".len() {
                    assert!(std::time::Instant::now() < deadline, "nothing relayed");
                    std::thread::sleep(Duration::from_millis(1));
                }
                server_end.send(b"goodbye").unwrap();
                drop(server_end);
            })
            .await
            .unwrap();
            assert_eq!(read_to_a_clean_end(&mut client).await, b"goodbye");
            // The client has not closed: the relay ends anyway, its server
            // being gone.
            ::tokio::time::timeout(Duration::from_secs(10), relay)
                .await
                .expect("the relay waited on a client whose server is gone")
                .unwrap()
                .unwrap();
        });
    }

    /// An offered relay whose server closes without a whole REPLY: the
    /// client still hears a clean end (close_notify), as without an offer.
    #[test]
    fn a_server_that_closes_before_its_reply_ends_the_client_cleanly() {
        runtime().block_on(async {
            let (gateway_end, server_end) = Socket::pair().unwrap();
            let (mut client, relay) = client_and_offering_relay(gateway_end, b"HELLO", true).await;
            server_end.send(b"NPIP").unwrap();
            drop(server_end);
            assert_eq!(read_to_a_clean_end(&mut client).await, b"NPIP");
            relay.await.unwrap().unwrap();
        });
    }
}
