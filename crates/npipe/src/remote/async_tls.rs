//! A tokio client's remote pipe straight over TLS: [`TlsTransport`] with
//! its TCP socket registered with the reactor, as an [`AsyncTransport`],
//! so a tokio end's data path runs on the connection to the gateway with
//! no relay between (it used to go through a socket pair and a relay
//! thread: a copy and two wake-ups each way).
//!
//! Two things a plain socket does by itself are done here:
//! - **Readiness follows the socket, not the plaintext.** A read may take
//!   in part of a TLS record and decrypt nothing; the socket's readiness is
//!   cleared only once the socket itself said it had nothing, or a reactor
//!   that reports edges would never wake us for the rest.
//! - **Records a full socket did not take still leave.** A send hands the
//!   bytes to rustls and reports them sent; what the socket did not take
//!   goes with the next send, or while the end reads ([`poll_flush`] is
//!   polled beside every read), or when the end flushes or shuts down, or,
//!   if the end is dropped first, from a task of its own on the runtime,
//!   as a socket's kernel buffer still goes out after `close`.
//!
//! [`poll_flush`]: AsyncTransport::poll_flush

use std::io::{self, IoSlice};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use ::tokio::io::unix::AsyncFd;
use ::tokio::io::Interest;

use super::tls_transport::TlsTransport;
use crate::sys::{self, Fd};
use crate::transport::{AsyncTransport, Recv, Transport};

/// How long a dropped end's task keeps sending what rustls still held.
const DROPPED_FLUSH_LIMIT: Duration = Duration::from_secs(30);

/// A remote pipe's TLS connection on tokio.
#[derive(Debug)]
pub(crate) struct AsyncTls {
    /// Always there but while being dropped.
    tls: Option<TlsTransport>,
    /// A second descriptor of its TCP socket, registered with the reactor
    /// (readiness is the socket's, whichever descriptor asks); always
    /// there but while being dropped.
    watch: Option<AsyncFd<Fd>>,
}

impl AsyncTls {
    /// Registers `tls` (handshake done, socket non-blocking) with the
    /// current runtime's reactor.
    pub(crate) fn new(tls: TlsTransport) -> io::Result<AsyncTls> {
        let watch = sys::register_async_for(
            tls.socket().try_clone()?,
            Interest::READABLE | Interest::WRITABLE,
        )?;
        Ok(AsyncTls {
            tls: Some(tls.never_waiting()),
            watch: Some(watch),
        })
    }

    fn io(&self) -> &AsyncFd<Fd> {
        self.watch.as_ref().expect("present until dropped")
    }

    fn tls(&self) -> &TlsTransport {
        self.tls.as_ref().expect("present until dropped")
    }

    /// Runs `take` (a receive that does not wait) until it has something,
    /// taking in what the socket holds between tries.
    fn poll_take(
        &self,
        cx: &mut Context<'_>,
        mut take: impl FnMut(&TlsTransport) -> io::Result<usize>,
    ) -> Poll<io::Result<usize>> {
        // Records a full socket held back go out while we read: the peer
        // may be waiting for them before it answers.
        let _ = self.poll_flush(cx);
        loop {
            match take(self.tls()) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                done => return Poll::Ready(done),
            }
            ready!(self.poll_socket_input(cx))?;
        }
    }

    /// Waits until the socket gave something new (decrypted or not).
    fn poll_socket_input(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.io().poll_read_ready(cx))?;
            if self.tls().pump_socket()? {
                return Poll::Ready(Ok(()));
            }
            guard.clear_ready();
        }
    }
}

impl AsyncTransport for AsyncTls {
    type Sync = TlsTransport;

    fn sync(&self) -> &TlsTransport {
        self.tls()
    }

    fn poll_recv(&self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        self.poll_take(cx, |tls| tls.recv(buf, Recv::DontWait))
    }

    fn poll_recv_spare(&self, cx: &mut Context<'_>, buf: &mut Vec<u8>) -> Poll<io::Result<usize>> {
        self.poll_take(cx, |tls| tls.recv_spare(buf, Recv::DontWait))
    }

    fn poll_send(&self, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
        loop {
            // Takes nothing new while earlier records wait for room.
            match self.tls().send_vectored(bufs) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                done => return Poll::Ready(done),
            }
            ready!(self.poll_flush(cx))?;
        }
    }

    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let _ = self.poll_flush(cx);
        loop {
            if self.tls().has_input() {
                return Poll::Ready(Ok(()));
            }
            ready!(self.poll_socket_input(cx))?;
        }
    }

    fn poll_writable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_flush(cx)
    }

    fn poll_flush(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            if self.tls().flush()? {
                return Poll::Ready(Ok(()));
            }
            let mut guard = ready!(self.io().poll_write_ready(cx))?;
            // Room may have come since the flush above: look again before
            // waiting for the socket's next edge.
            if self.tls().flush()? {
                return Poll::Ready(Ok(()));
            }
            guard.clear_ready();
        }
    }
}

impl Drop for AsyncTls {
    /// Records the socket has not taken yet still go, from a task of
    /// their own, as a socket's buffered bytes go after `close` (bounded
    /// in time: a gateway that never reads does not keep it for ever).
    fn drop(&mut self) {
        let (Some(tls), Some(watch)) = (self.tls.take(), self.watch.take()) else {
            return;
        };
        if !tls.holds_unsent() {
            return;
        }
        let Ok(runtime) = ::tokio::runtime::Handle::try_current() else {
            return;
        };
        let mut rest = AsyncTls {
            tls: Some(tls),
            watch: Some(watch),
        };
        runtime.spawn(async move {
            let flushed = ::tokio::time::timeout(
                DROPPED_FLUSH_LIMIT,
                std::future::poll_fn(|cx| rest.poll_flush(cx)),
            )
            .await;
            if matches!(flushed, Ok(Ok(()))) {
                let _ = rest.sync().shutdown_write();
            }
            // Closed here, whatever is left: no task of its own again.
            drop(rest.tls.take());
            drop(rest.watch.take());
        });
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;
    use std::sync::Arc;

    use ::tokio::io::{AsyncReadExt, AsyncWriteExt};
    use ::tokio::net::{TcpSocket, TcpStream};
    use rustls::pki_types::ServerName;

    use super::*;
    use crate::remote::relay::tests::{configs, runtime};
    use crate::sys::Socket;

    /// A client's `AsyncTls` over TCP with small buffers, and the server's
    /// TLS stream, which reads only when told.
    async fn pair() -> (AsyncTls, tokio_rustls::server::TlsStream<TcpStream>) {
        let (server_config, client_config) = configs();
        let listening = TcpSocket::new_v4().unwrap();
        listening.set_recv_buffer_size(4096).unwrap();
        listening.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listening.local_addr().unwrap();
        let listener = listening.listen(1).unwrap();
        let server = ::tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            tokio_rustls::TlsAcceptor::from(server_config)
                .accept(tcp)
                .await
                .unwrap()
        });
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_send_buffer_size(4096).unwrap();
        let tcp = socket.connect(addr).await.unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::clone(&client_config))
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap();
        let (tcp, conn) = tls.into_inner();
        let tcp = tcp.into_std().unwrap();
        let transport = TlsTransport::new(
            Socket::from(std::os::fd::OwnedFd::from(tcp)),
            conn,
            "test".into(),
        );
        (AsyncTls::new(transport).unwrap(), server.await.unwrap())
    }

    /// A send the socket could not take whole leaves records in rustls
    /// (the server is not reading); a read then sends them while it
    /// waits, or the server, waiting for the whole request before it
    /// answers, would never answer.
    #[test]
    fn a_read_sends_the_records_a_full_socket_held_back() {
        runtime().block_on(async {
            let (client, mut server) = pair().await;
            let request = vec![5u8; 60_000];
            let took = poll_fn(|cx| client.poll_send(cx, &[IoSlice::new(&request)]))
                .await
                .unwrap();
            assert!(took > 0);
            assert!(client.sync().holds_unsent(), "the socket took it all");
            let answer = ::tokio::spawn(async move {
                let mut got = vec![0u8; took];
                server.read_exact(&mut got).await.unwrap();
                assert!(got.iter().all(|&b| b == 5));
                server.write_all(b"done").await.unwrap();
                server.flush().await.unwrap();
                server
            });
            let mut reply = [0u8; 4];
            let n = ::tokio::time::timeout(
                Duration::from_secs(10),
                poll_fn(|cx| client.poll_recv(cx, &mut reply)),
            )
            .await
            .expect("the read did not send what was held back")
            .unwrap();
            assert_eq!(&reply[..n], &b"done"[..n]);
            drop(answer.await.unwrap());
        });
    }

    /// Records still in rustls when the end is dropped go out from a task
    /// of their own, as a socket's buffered bytes go after `close`.
    #[test]
    fn records_held_when_the_end_drops_still_go() {
        runtime().block_on(async {
            let (client, mut server) = pair().await;
            let request = vec![9u8; 60_000];
            let took = poll_fn(|cx| client.poll_send(cx, &[IoSlice::new(&request)]))
                .await
                .unwrap();
            assert!(client.sync().holds_unsent(), "the socket took it all");
            drop(client);
            let mut got = Vec::new();
            ::tokio::time::timeout(Duration::from_secs(10), server.read_to_end(&mut got))
                .await
                .expect("the held records never came")
                .unwrap();
            assert_eq!(got.len(), took);
            assert!(got.iter().all(|&b| b == 9));
        });
    }
}
