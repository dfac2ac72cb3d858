//! `AsyncTls` against a real TLS server over TCP loopback with 4 KiB
//! buffers, so that a socket fills after a few records.

use std::future::poll_fn;
use std::sync::Arc;
use std::time::Duration;

use ::tokio::io::{AsyncReadExt, AsyncWriteExt};
use ::tokio::net::{TcpSocket, TcpStream};
use rustls::pki_types::ServerName;

use super::*;
use crate::remote::relay::tests::{configs, runtime};
use crate::sys::Socket;

/// How long any wait in these tests may take before it counts as a hang.
const HANG: Duration = Duration::from_secs(10);

/// A TCP pair with small buffers: the client's stream, and the server's
/// (from `accept`).
async fn tcp_pair() -> (TcpStream, TcpStream) {
    let listening = TcpSocket::new_v4().unwrap();
    listening.set_recv_buffer_size(4096).unwrap();
    listening.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listening.local_addr().unwrap();
    let listener = listening.listen(1).unwrap();
    let accepted = ::tokio::spawn(async move { listener.accept().await.unwrap().0 });
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_send_buffer_size(4096).unwrap();
    let client = socket.connect(addr).await.unwrap();
    (client, accepted.await.unwrap())
}

/// TLS over `client_tcp` and `server_tcp`: the client's `AsyncTls`, and
/// the server's TLS stream, which reads only when told.
async fn tls_over(
    client_tcp: TcpStream,
    server_tcp: TcpStream,
) -> (AsyncTls, tokio_rustls::server::TlsStream<TcpStream>) {
    let (server_config, client_config) = configs();
    let server = ::tokio::spawn(async move {
        tokio_rustls::TlsAcceptor::from(server_config)
            .accept(server_tcp)
            .await
    });
    let tls = tokio_rustls::TlsConnector::from(Arc::clone(&client_config))
        .connect(ServerName::try_from("localhost").unwrap(), client_tcp)
        .await
        .unwrap();
    let (tcp, conn) = tls.into_inner();
    let tcp = tcp.into_std().unwrap();
    let transport = TlsTransport::new(
        Socket::from(std::os::fd::OwnedFd::from(tcp)),
        conn,
        "test".into(),
    );
    (
        AsyncTls::new(transport).unwrap(),
        server.await.unwrap().unwrap(),
    )
}

async fn pair() -> (AsyncTls, tokio_rustls::server::TlsStream<TcpStream>) {
    let (client, server) = tcp_pair().await;
    tls_over(client, server).await
}

/// One send of `byte`s the socket cannot take whole (the server is not
/// reading): what rustls took, with records left behind in it.
async fn send_past_the_socket(client: &AsyncTls, byte: u8) -> usize {
    let request = vec![byte; 60_000];
    let took = poll_fn(|cx| client.poll_send(cx, &[IoSlice::new(&request)]))
        .await
        .unwrap();
    assert!(took > 0);
    assert!(client.sync().holds_unsent(), "the socket took it all");
    took
}

/// Reads to the end of the server's stream after `got`, which must end
/// cleanly (close_notify, no reset) within [`HANG`], and checks it is
/// `took` bytes of `byte`.
async fn read_to_a_clean_end(
    server: &mut tokio_rustls::server::TlsStream<TcpStream>,
    mut got: Vec<u8>,
    took: usize,
    byte: u8,
) {
    ::tokio::time::timeout(HANG, server.read_to_end(&mut got))
        .await
        .expect("the rest never came")
        .expect("the connection was reset, or ended without close_notify");
    assert_eq!(got.len(), took);
    assert!(got.iter().all(|&b| b == byte));
}

/// A read sends the records a full socket held back while it waits: the
/// server, waiting for the whole request before it answers, would never
/// answer otherwise.
#[test]
fn a_read_sends_the_records_a_full_socket_held_back() {
    runtime().block_on(async {
        let (client, mut server) = pair().await;
        let took = send_past_the_socket(&client, 5).await;
        let answer = ::tokio::spawn(async move {
            let mut got = vec![0u8; took];
            server.read_exact(&mut got).await.unwrap();
            assert!(got.iter().all(|&b| b == 5));
            server.write_all(b"done").await.unwrap();
            server.flush().await.unwrap();
            server
        });
        let mut reply = [0u8; 4];
        let n = ::tokio::time::timeout(HANG, poll_fn(|cx| client.poll_recv(cx, &mut reply)))
            .await
            .expect("the read did not send what was held back")
            .unwrap();
        assert_eq!(&reply[..n], &b"done"[..n]);
        drop(answer.await.unwrap());
    });
}

/// Records still in rustls when the end is dropped go out from a task of
/// their own, then close_notify (the server's `read_to_end` fails without
/// it), as a socket's buffered bytes go after `close`.
#[test]
fn records_held_when_the_end_drops_still_go() {
    runtime().block_on(async {
        let (client, mut server) = pair().await;
        let took = send_past_the_socket(&client, 9).await;
        drop(client);
        read_to_a_clean_end(&mut server, Vec::new(), took, 9).await;
    });
}

/// Outside a runtime no task can send a dropped end's held records: a
/// thread of its own does, then close_notify (the records were lost
/// before: the server's read ended short, or without close_notify).
#[test]
fn records_held_when_the_end_drops_outside_a_runtime_still_go() {
    let rt = runtime();
    let (client, mut server, took) = rt.block_on(async {
        let (client, server) = pair().await;
        let took = send_past_the_socket(&client, 4).await;
        (client, server, took)
    });
    std::thread::spawn(move || drop(client)).join().unwrap();
    rt.block_on(read_to_a_clean_end(&mut server, Vec::new(), took, 4));
}

/// A runtime that shuts down while a dropped end's records wait drops the
/// task that sends them, once, and the connection closes: nothing spawns
/// again from the drop (that used to recurse until the stack ran out).
#[test]
fn a_runtime_shutting_down_under_held_records_ends_cleanly() {
    let rt = runtime();
    let server = rt.block_on(async {
        let (client, server) = pair().await;
        send_past_the_socket(&client, 3).await;
        drop(client);
        server
    });
    drop(rt);
    drop(server);
}

/// The halves of `tokio::io::split` on two tasks: the writer waits for
/// room to send what rustls holds, the reader then polls too and sends
/// some of it; both must be woken when the socket drains (tokio keeps one
/// waker per direction: a reader's would replace the writer's).
#[test]
fn a_writer_and_a_reader_waiting_for_room_are_both_woken() {
    runtime().block_on(async {
        let (client, mut server) = pair().await;
        let client = Arc::new(client);
        let total = 400_000;
        let writer = {
            let client = Arc::clone(&client);
            ::tokio::spawn(async move {
                let data = vec![1u8; total];
                let mut sent = 0;
                while sent < total {
                    let n = poll_fn(|cx| client.poll_send(cx, &[IoSlice::new(&data[sent..])]))
                        .await
                        .unwrap();
                    sent += n;
                }
                poll_fn(|cx| client.poll_flush(cx)).await.unwrap();
            })
        };
        // Let the writer fill the socket and wait for room.
        ::tokio::task::yield_now().await;
        let reader = {
            let client = Arc::clone(&client);
            ::tokio::spawn(async move {
                let mut reply = [0u8; 2];
                poll_fn(|cx| client.poll_recv(cx, &mut reply))
                    .await
                    .unwrap()
            })
        };
        ::tokio::task::yield_now().await;
        let mut got = vec![0u8; total];
        ::tokio::time::timeout(HANG, server.read_exact(&mut got))
            .await
            .expect("the request never came whole")
            .unwrap();
        ::tokio::time::timeout(HANG, writer)
            .await
            .expect("the writer was never woken")
            .unwrap();
        server.write_all(b"ok").await.unwrap();
        server.flush().await.unwrap();
        let n = ::tokio::time::timeout(HANG, reader)
            .await
            .expect("the reader was never woken")
            .unwrap();
        assert!(n > 0);
    });
}

/// The socket's readiness is cleared only when the socket had nothing: a
/// read takes in at most a few KiB of a record and decrypts nothing until
/// the record is whole, and a reactor that reports edges would never wake
/// the reader again for the rest of a record already there. The server's
/// records are written by hand: one whole (15,000 bytes at once), then one
/// in two halves a pause apart.
#[test]
fn a_record_is_read_whole_whether_it_comes_at_once_or_in_halves() {
    runtime().block_on(async {
        let (client, server) = pair().await;
        let client = Arc::new(client);
        let (mut tcp, mut conn) = server.into_inner();
        let record = |conn: &mut rustls::ServerConnection, byte: u8| {
            std::io::Write::write_all(&mut conn.writer(), &[byte; 15_000]).unwrap();
            let mut out = Vec::new();
            while conn.wants_write() {
                conn.write_tls(&mut out).unwrap();
            }
            out
        };
        let read = |client: Arc<AsyncTls>| async move {
            let mut got = Vec::new();
            while got.len() < 15_000 {
                let mut out = vec![0u8; 15_000 - got.len()];
                let n = ::tokio::time::timeout(HANG, poll_fn(|cx| client.poll_recv(cx, &mut out)))
                    .await
                    .expect("the rest of the record never woke the reader")
                    .unwrap();
                got.extend_from_slice(&out[..n]);
            }
            got
        };
        let whole = record(&mut conn, 1);
        tcp.write_all(&whole).await.unwrap();
        assert_eq!(read(Arc::clone(&client)).await, vec![1u8; 15_000]);

        let halves = record(&mut conn, 2);
        let reading = ::tokio::spawn(read(Arc::clone(&client)));
        let half = halves.len() / 2;
        tcp.write_all(&halves[..half]).await.unwrap();
        ::tokio::time::sleep(Duration::from_millis(100)).await;
        tcp.write_all(&halves[half..]).await.unwrap();
        assert_eq!(reading.await.unwrap(), vec![2u8; 15_000]);
    });
}

/// Shutting down sends what rustls held, then close_notify, then TCP's
/// end (the server's `read_to_end` fails on an end without close_notify);
/// a send after it is refused, not dropped after the close_notify.
#[test]
fn a_shutdown_sends_the_held_records_then_close_notify() {
    runtime().block_on(async {
        let (client, mut server) = pair().await;
        let took = send_past_the_socket(&client, 4).await;
        let reading =
            ::tokio::spawn(
                async move { read_to_a_clean_end(&mut server, Vec::new(), took, 4).await },
            );
        ::tokio::time::timeout(HANG, poll_fn(|cx| client.poll_shutdown_write(cx)))
            .await
            .expect("the shutdown never finished")
            .unwrap();
        reading.await.unwrap();
        let late = poll_fn(|cx| client.poll_send(cx, &[IoSlice::new(b"late")])).await;
        assert_eq!(late.unwrap_err().kind(), io::ErrorKind::BrokenPipe);
    });
}

/// A transport's `Debug` shows sizes, never the application's bytes (a
/// `{:?}` of a remote pipe end must not print what went through it).
#[test]
fn debug_shows_no_plaintext() {
    runtime().block_on(async {
        let (client, mut server) = pair().await;
        server.write_all(&[0xAB; 300]).await.unwrap();
        server.flush().await.unwrap();
        let mut one = [0u8; 1];
        poll_fn(|cx| client.poll_recv(cx, &mut one)).await.unwrap();
        let shown = format!("{client:?}");
        assert!(!shown.contains("171"), "plaintext in Debug: {shown}");
        assert!(shown.len() < 1000, "{shown}");
    });
}

/// An end dropped with input it never read still delivers what it sent:
/// Linux resets a connection closed with unread input, which throws away
/// what is still in the kernel's send queue (the server's `read_to_end`
/// then fails), so the unread input is read away first.
#[test]
fn a_drop_with_unread_input_still_delivers_what_was_sent() {
    runtime().block_on(async {
        let (client, mut server) = pair().await;
        server.write_all(b"never read").await.unwrap();
        server.flush().await.unwrap();
        ::tokio::time::sleep(Duration::from_millis(50)).await;
        let took = send_past_the_socket(&client, 8).await;
        drop(client);
        // Take all but the last few KiB, then stop while the dropped end's
        // task hands the rest to the kernel and closes: the rest is still
        // in the kernel's queues when it does.
        let mut got = vec![0u8; took - 12_000];
        server.read_exact(&mut got).await.unwrap();
        ::tokio::time::sleep(Duration::from_millis(300)).await;
        read_to_a_clean_end(&mut server, got, took, 8).await;
    });
}
