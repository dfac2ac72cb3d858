//! A blocking client (on a thread of its own) and a tokio server over a
//! socket pair: the offer taken, both directions moved, and the wake-ups
//! that then come through the socket never taken for data.

use std::future::poll_fn;
use std::io::IoSlice;
use std::sync::Arc;
use std::time::Duration;

use ::tokio::io::Interest;

use super::*;
use crate::shm::late::LateShm;
use crate::shm::transport::async_end::tests::{runtime, HANG};
use crate::sys::{effective_uid, Socket};

/// A blocking client that offers before write `after` + 1, and a tokio
/// server end (made inside a runtime).
fn pair(after: u32) -> (LateShm, AsyncLate) {
    let (a, b) = Socket::pair().unwrap();
    b.set_nonblocking(true).unwrap();
    let io = crate::sys::register_async_for(b, Interest::READABLE | Interest::WRITABLE).unwrap();
    (
        LateShm::offerer(a, after, 0),
        AsyncLate::taker(Arc::new(io), effective_uid()),
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
        let mut echoed = 0;
        while echoed < total {
            let mut buf = vec![0u8; 64 * 1024];
            let n = ::tokio::time::timeout(HANG, poll_fn(|cx| server.poll_recv(cx, &mut buf)))
                .await
                .expect("a lost wake-up")
                .unwrap();
            assert!(n > 0);
            send_all_async(&server, &buf[..n]).await;
            echoed += n;
        }
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
