//! Tokio ends of a late offer over a socket pair, with a blocking peer on a
//! thread of its own or a tokio one: the offer taken, both directions
//! moved, the wake-ups that then come through the socket never taken for
//! data, and a tokio client's writer woken in the window before the
//! server's marker.

use std::future::poll_fn;
use std::io::IoSlice;
use std::sync::Arc;
use std::time::Duration;

use ::tokio::io::Interest;

use super::*;
use crate::shm::late::LateShm;
use crate::shm::transport::async_end::tests::{runtime, two_threads, HANG};
use crate::sys::{effective_uid, Socket};

/// `socket` registered with the runtime's reactor (inside a runtime), as a
/// tokio end's.
fn registered(socket: Socket) -> Arc<AsyncFd<Fd>> {
    socket.set_nonblocking(true).unwrap();
    let both = Interest::READABLE | Interest::WRITABLE;
    Arc::new(crate::sys::register_async_for(socket, both).unwrap())
}

/// A blocking client that offers before write `after` + 1, and a tokio
/// server end (made inside a runtime).
fn pair(after: u32) -> (LateShm, AsyncLate) {
    let (a, b) = Socket::pair().unwrap();
    (
        LateShm::offerer(Arc::new(a), after, 0),
        AsyncLate::taker(registered(b), effective_uid()),
    )
}

fn send_all(t: &impl Transport, mut data: &[u8]) {
    while !data.is_empty() {
        let n = t.send(data).unwrap();
        data = &data[n..];
    }
}

fn recv_exactly(t: &impl Transport, n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let got = t.recv_spare(&mut out, Recv::Wait).unwrap();
        assert!(got > 0, "end of stream after {} of {n} bytes", out.len());
    }
    out
}

async fn send_all_async(t: &AsyncLate, mut data: &[u8]) {
    while !data.is_empty() {
        let n = poll_fn(|cx| t.poll_send(cx, &[IoSlice::new(data)]))
            .await
            .unwrap();
        data = &data[n..];
    }
}

/// Echoes `total` bytes back as they come.
async fn echo_async(server: &AsyncLate, total: usize) {
    let mut echoed = 0;
    let mut buf = vec![0u8; 64 * 1024];
    while echoed < total {
        let n = ::tokio::time::timeout(HANG, poll_fn(|cx| server.poll_recv(cx, &mut buf)))
            .await
            .expect("a lost wake-up")
            .unwrap();
        assert!(n > 0);
        ::tokio::time::timeout(HANG, send_all_async(server, &buf[..n]))
            .await
            .expect("a writer never woken");
        echoed += n;
    }
}

#[test]
fn a_tokio_server_takes_the_offer_and_echoes_across_the_move() {
    let messages: Vec<Vec<u8>> = (0..40u8).map(|i| vec![i; 1 + i as usize * 1500]).collect();
    let total: usize = messages.iter().map(Vec::len).sum();
    runtime().block_on(async {
        let (client, server) = pair(2);
        let sent = messages.clone();
        let client = std::thread::spawn(move || {
            client.set_read_timeout(Some(HANG)).unwrap();
            for m in &sent {
                send_all(&client, m);
                assert!(
                    recv_exactly(&client, m.len()) == *m,
                    "an echo came back changed"
                );
            }
            assert!(client.sends_on_rings() && client.reads_rings());
        });
        echo_async(&server, total).await;
        assert!(server.reads_rings() && server.sends_on_rings());
        client.join().unwrap();
    });
}

/// After the move the server's writer fills its ring and waits for room,
/// asleep on its socket: the client's wake-up bytes come there, and are
/// never read as data (the server's reads moved first).
#[test]
fn a_tokio_writer_waiting_for_room_is_woken_through_the_socket() {
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    runtime().block_on(async {
        let (client, server) = pair(0);
        send_all(&client, b"move");
        let mut buf = [0u8; 4];
        let n = poll_fn(|cx| server.poll_recv(cx, &mut buf)).await.unwrap();
        assert_eq!(&buf[..n], b"move");
        let expect = big.clone();
        let client = std::thread::spawn(move || {
            client.set_read_timeout(Some(HANG)).unwrap();
            let mut got = Vec::with_capacity(expect.len());
            while got.len() < expect.len() {
                // A slow reader: the server's ring fills again and again.
                std::thread::sleep(Duration::from_micros(200));
                let mut chunk = vec![0u8; 100_000];
                let n = client.recv(&mut chunk, Recv::Wait).unwrap();
                assert!(n > 0);
                got.extend_from_slice(&chunk[..n]);
            }
            assert!(got == expect, "the stream came back changed");
            send_all(&client, b"done");
        });
        ::tokio::time::timeout(HANG, send_all_async(&server, &big))
            .await
            .expect("a lost wake-up");
        assert!(server.sends_on_rings());
        let n = ::tokio::time::timeout(HANG, poll_fn(|cx| server.poll_recv(cx, &mut buf)))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buf[..n], b"done");
        client.join().unwrap();
    });
}

/// A tokio client that offers before write `after` + 1 (made inside a
/// runtime), and a blocking server end.
fn tokio_client_pair(after: u32) -> (AsyncLate, LateShm) {
    let (a, b) = Socket::pair().unwrap();
    (
        AsyncLate::offerer(registered(a), after, 0),
        LateShm::taker(Arc::new(b), effective_uid()),
    )
}

async fn recv_exactly_async(t: &AsyncLate, n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let got = ::tokio::time::timeout(HANG, poll_fn(|cx| t.poll_recv_spare(cx, &mut out)))
            .await
            .expect("a lost wake-up")
            .unwrap();
        assert!(got > 0, "end of stream after {} of {n} bytes", out.len());
    }
    out
}

/// The window: a tokio client has moved its writes and fills its ring
/// (3 MB, twelve rings' worth) before it reads anything, while the server's
/// data before its marker wait unread on the socket. Its writer cannot
/// sleep on the socket then; a helper sleeps on the futex and the blocking
/// server's reads wake it. Every byte arrives, both ways, in order.
#[test]
fn a_tokio_client_fills_its_ring_before_reading_the_servers_marker() {
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
    runtime().block_on(async {
        let (client, server) = tokio_client_pair(0);
        let expect = big.clone();
        let server = std::thread::spawn(move || {
            server.set_read_timeout(Some(HANG)).unwrap();
            // Before it reads: data the client will find before the marker.
            send_all(&server, b"early");
            let got = recv_exactly(&server, expect.len());
            assert!(got == expect, "the upload came back changed");
            assert!(server.reads_rings());
            send_all(&server, b"late reply");
            assert!(server.sends_on_rings());
            // The client's last word, on the rings.
            assert_eq!(recv_exactly(&server, 4), b"done");
        });
        ::tokio::time::timeout(HANG, send_all_async(&client, &big))
            .await
            .expect("a writer in the window was never woken");
        assert!(client.sends_on_rings() && !client.reads_rings());
        assert_eq!(recv_exactly_async(&client, 5).await, b"early");
        assert_eq!(recv_exactly_async(&client, 10).await, b"late reply");
        assert!(client.reads_rings());
        send_all_async(&client, b"done").await;
        server.join().unwrap();
    });
}

/// A tokio client and a tokio server both move, with messages of all
/// sizes across the move, the client's reader a task of its own beside its
/// writer. (A client that wrote each message whole before reading its echo
/// would wait for ever once a message outgrew what both rings and the
/// server's buffer hold, as over any socket: a writer waiting for room is
/// woken only when three quarters of its ring are free.)
#[test]
fn a_tokio_client_and_a_tokio_server_move_together() {
    let messages: Vec<Vec<u8>> = (0..40u8).map(|i| vec![i; 1 + i as usize * 9000]).collect();
    let expect = messages.concat();
    two_threads().block_on(async {
        let (a, b) = Socket::pair().unwrap();
        let client = Arc::new(AsyncLate::offerer(registered(a), 2, 0));
        let server = Arc::new(AsyncLate::taker(registered(b), effective_uid()));
        let echo = {
            let server = Arc::clone(&server);
            let total = expect.len();
            ::tokio::spawn(async move { echo_async(&server, total).await })
        };
        let reader = {
            let client = Arc::clone(&client);
            let total = expect.len();
            ::tokio::spawn(async move { recv_exactly_async(&client, total).await })
        };
        for m in &messages {
            ::tokio::time::timeout(HANG, send_all_async(&client, m))
                .await
                .expect("a writer never woken");
        }
        let echoed = reader.await.unwrap();
        assert!(echoed == expect, "an echo came back changed");
        echo.await.unwrap();
        assert!(client.sends_on_rings() && client.reads_rings());
        assert!(server.sends_on_rings() && server.reads_rings());
    });
}
