//! The late offer over a socket pair in one process: the bytes around each
//! side's marker, peeks and flushes across it, and peers that break its
//! rules.

use std::io::{ErrorKind, IoSlice};
use std::os::fd::AsFd;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::*;
use crate::sys::{effective_uid, Socket};

/// A client that offers before its write number `after` + 1, and its server.
fn pair(after: u32) -> (LateShm, LateShm) {
    let (a, b) = Socket::pair().unwrap();
    (
        LateShm::offerer(Arc::new(a), after, 0),
        LateShm::taker(std::sync::Arc::new(b), effective_uid()),
    )
}

/// A server over `b` and the raw socket `a` its client writes with.
fn raw_client() -> (Socket, LateShm) {
    let (a, b) = Socket::pair().unwrap();
    (a, LateShm::taker(std::sync::Arc::new(b), effective_uid()))
}

fn read_exactly(t: &impl Transport, n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    while out.len() < n {
        let mut buf = vec![0u8; n - out.len()];
        let got = t.recv(&mut buf, Recv::Wait).unwrap();
        assert!(got > 0, "end of stream after {} of {n} bytes", out.len());
        out.extend_from_slice(&buf[..got]);
    }
    out
}

#[test]
fn each_direction_moves_at_its_marker_and_no_byte_is_lost_or_doubled() {
    let (client, server) = pair(2);
    client.send(b"one").unwrap();
    client.send(b"two").unwrap();
    assert!(!client.has_rings(), "two writes stay on the socket");
    // The server answers before it has read the offer: on the socket.
    server.send(b"early").unwrap();
    client.send(b"three").unwrap();
    assert!(client.has_rings() && client.sends_on_rings());
    client.send(b"four").unwrap();
    assert_eq!(read_exactly(&server, 15), b"onetwothreefour");
    assert!(server.reads_rings(), "past the marker");
    assert!(!server.sends_on_rings(), "moves at its next send");
    server.send(b"late").unwrap();
    assert!(server.sends_on_rings());
    server.send(b"r").unwrap();
    assert_eq!(read_exactly(&client, 10), b"earlylater");
    assert!(client.reads_rings());
    // Both ways on the rings now.
    client.send(b"x").unwrap();
    assert_eq!(read_exactly(&server, 1), b"x");
    assert_eq!(server.socket().readable_bytes().unwrap(), 0);
}

#[test]
fn a_first_write_that_offers_goes_whole_into_the_ring() {
    let (client, server) = pair(0);
    client.send(b"all in the ring").unwrap();
    assert!(client.has_rings());
    // The marker alone is on the socket: a receive that does not wait
    // steps over it and finds the ring's bytes.
    let mut buf = [0u8; 64];
    let n = server.recv(&mut buf, Recv::DontWait).unwrap();
    assert_eq!(&buf[..n], b"all in the ring");
    let mut spare = Vec::with_capacity(8);
    assert_eq!(
        server
            .recv_spare(&mut spare, Recv::DontWait)
            .unwrap_err()
            .kind(),
        ErrorKind::WouldBlock
    );
}

#[test]
fn peeks_see_both_sides_of_the_marker_without_the_marker() {
    let (client, server) = pair(1);
    client.send(b"ab").unwrap();
    client.send(b"cd").unwrap();
    assert!(client.has_rings());
    // The server's peek takes the offer to see past the marker.
    assert_eq!(server.readable_bytes().unwrap(), 4);
    assert_eq!(server.peek_queued(), b"abcd");
    assert!(server.rings.get().is_some() && !server.has_rings());
    // Its writes stay on the socket until its reads pass the marker.
    server.send(b"<").unwrap();
    assert!(!server.sends_on_rings());
    assert_eq!(read_exactly(&server, 4), b"abcd");

    server.send(b"ef").unwrap();
    server.send(b"gh").unwrap();
    assert_eq!(client.readable_bytes().unwrap(), 5);
    assert_eq!(client.peek_queued(), b"<efgh");
    let mut v = Vec::with_capacity(16);
    while v.len() < 5 {
        client.recv_spare(&mut v, Recv::Wait).unwrap();
    }
    assert_eq!(v, b"<efgh");
}

/// A flush waits for the socket's bytes and the ring's (the socket counts
/// its buffers' memory, not bytes: only "none" is exact).
#[test]
fn a_flush_waits_for_both_sides_of_the_marker() {
    let (client, server) = pair(1);
    client.send(b"ab").unwrap();
    client.send(b"cd").unwrap();
    assert!(client.delivery().unwrap().unread_by_peer > 0);
    let mut two = [0u8; 2];
    assert_eq!(server.recv(&mut two, Recv::Wait).unwrap(), 2);
    assert!(
        client.delivery().unwrap().unread_by_peer > 0,
        "cd is unread"
    );
    assert_eq!(read_exactly(&server, 2), b"cd");
    let d = client.delivery().unwrap();
    assert_eq!((d.unread_by_peer, d.peer_hung_up), (0, false));
}

#[test]
fn a_client_that_closes_after_its_offer_ends_the_stream_after_its_bytes() {
    let (client, server) = pair(1);
    client.send(b"ab").unwrap();
    client.send(b"cd").unwrap();
    drop(client);
    assert_eq!(read_exactly(&server, 4), b"abcd");
    let mut buf = [0u8; 4];
    assert_eq!(server.recv(&mut buf, Recv::Wait).unwrap(), 0);
}

#[test]
fn timeouts_set_before_the_move_hold_on_the_rings() {
    let (client, server) = pair(0);
    server
        .set_read_timeout(Some(Duration::from_millis(30)))
        .unwrap();
    client.send(b"x").unwrap();
    assert_eq!(read_exactly(&server, 1), b"x");
    let mut buf = [0u8; 1];
    let e = server.recv(&mut buf, Recv::Wait).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::WouldBlock);
}

/// The client's region must say it left the socket where its marker came.
#[test]
fn a_region_that_misplaces_the_marker_breaks_the_connection() {
    for said in [0u64, 1, 2, 4, 100] {
        // Right would be 3: two bytes before the marker, plus one.
        let (raw, server) = raw_client();
        raw.send(b"ab").unwrap();
        let region = transport::offer().unwrap();
        Layout::new(0, OFFER_CAPACITY)
            .switched_at(&region)
            .store(said, Ordering::Release);
        raw.send_with_fd(&[MARKER], region.fd().as_fd()).unwrap();
        // Into a vector: what the failed receive took is not left there.
        let mut v = Vec::with_capacity(16);
        let e = server.recv_spare(&mut v, Recv::Wait).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidData, "said {said}: {e}");
        assert!(e.to_string().contains("does not say"), "{e}");
        assert!(v.is_empty(), "said {said}: {v:?} kept");
        // The connection is over: for every later call, and for the peer.
        let mut buf = [0u8; 16];
        let again = server.recv(&mut buf, Recv::DontWait).unwrap_err();
        assert_eq!(again.kind(), ErrorKind::InvalidData);
        assert_eq!(
            server.send(b"x").unwrap_err().kind(),
            ErrorKind::InvalidData
        );
        assert_eq!(raw.recv(&mut buf).unwrap(), 0, "the client reads the end");
    }
}

/// What the client read with its OK counts among the server's socket
/// bytes: a server that wrote first moves at a marker the client still
/// finds.
#[test]
fn bytes_read_with_the_ok_count_toward_the_servers_marker() {
    let (a, b) = Socket::pair().unwrap();
    let server = LateShm::taker(std::sync::Arc::new(b), effective_uid());
    server.send(b"banner").unwrap();
    // The client's connect read these with the REPLY.
    let mut with_reply = [0u8; 6];
    assert_eq!(a.recv(&mut with_reply).unwrap(), 6);
    let client = LateShm::offerer(Arc::new(a), 0, 6);
    // Counted wrong, the marker reads as data and the rest never comes.
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    client.send(b"x").unwrap();
    assert_eq!(read_exactly(&server, 1), b"x");
    server.send(b"yz").unwrap();
    assert!(server.sends_on_rings());
    assert_eq!(read_exactly(&client, 2), b"yz");
}

#[test]
fn a_descriptor_that_is_no_memory_file_breaks_the_connection() {
    let (raw, server) = raw_client();
    let (other, _keep) = Socket::pair().unwrap();
    raw.send_with_fd(b"x", other.as_fd()).unwrap();
    let mut buf = [0u8; 16];
    let e = server.recv(&mut buf, Recv::Wait).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidData, "{e}");
}

#[test]
fn a_marker_byte_that_is_not_one_breaks_the_connection() {
    let (raw, server) = raw_client();
    let region = transport::offer().unwrap();
    Layout::new(0, OFFER_CAPACITY)
        .switched_at(&region)
        .store(1, Ordering::Release);
    raw.send_with_fd(b"?", region.fd().as_fd()).unwrap();
    let mut buf = [0u8; 16];
    let e = server.recv(&mut buf, Recv::Wait).unwrap_err();
    assert!(e.to_string().contains("not its marker"), "{e}");
}

/// A server whose ring says it left the socket before bytes the client
/// already read is caught, not believed.
#[test]
fn a_server_that_points_behind_what_was_read_breaks_the_connection() {
    let (client, server) = pair(0);
    server.send(b"abcd").unwrap();
    client.send(b"offer").unwrap();
    assert_eq!(read_exactly(&client, 4), b"abcd");
    assert_eq!(read_exactly(&server, 5), b"offer");
    // What an honest server writes before its marker is 4; this one says 1
    // and sends more on the socket.
    server.rings.get().unwrap().say_switched_at(Some(1));
    Transport::send(server.socket(), b"zz").unwrap();
    let mut buf = [0u8; 8];
    let e = client.recv(&mut buf, Recv::Wait).unwrap_err();
    assert!(e.to_string().contains("before bytes already read"), "{e}");
}

#[test]
fn vectored_sends_count_every_byte_on_the_socket() {
    let (client, server) = pair(1);
    let parts = [IoSlice::new(b"ab"), IoSlice::new(b"cde")];
    assert_eq!(client.send_vectored(&parts).unwrap(), 5);
    client.send_vectored(&parts).unwrap();
    assert_eq!(read_exactly(&server, 10), b"abcdeabcde");
    assert!(server.reads_rings());
}

/// An offer whose marker cannot go (the server is gone) fails that send
/// and leaves the connection on the socket, not half moved.
#[test]
fn an_offer_that_cannot_be_sent_leaves_the_socket() {
    let (client, server) = pair(0);
    drop(server);
    let e = client.send(b"x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EPIPE), "{e}");
    assert!(!client.has_rings() && client.tx().no_offer);
    let mut buf = [0u8; 4];
    assert_eq!(client.recv(&mut buf, Recv::Wait).unwrap(), 0);
}

mod hostile_server {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// A server that took the offer writes any `switched_at` and sends
        /// any bytes on its socket: the client reads them as data, or fails
        /// with `ERROR_BAD_PIPE`'s kind, and never panics or hangs.
        #[test]
        fn any_switched_at_and_socket_bytes_are_data_or_an_error(
            word in prop_oneof![0u64..16, any::<u64>()],
            bytes in prop::collection::vec(prop_oneof![Just(MARKER), any::<u8>()], 1..12),
        ) {
            let (client, server) = pair(0);
            client.send(b"go").unwrap();
            prop_assert_eq!(read_exactly(&server, 2), b"go");
            // The raw word, whatever it is (0: not moved).
            server.ring_t().unwrap().say_switched_at(word.checked_sub(1));
            Transport::send(server.socket(), &bytes).unwrap();
            client.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
            let mut got = Vec::new();
            let mut failed = false;
            loop {
                let mut buf = [0u8; 16];
                match client.recv(&mut buf, Recv::Wait) {
                    Ok(0) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) => {
                        prop_assert_eq!(e.kind(), ErrorKind::InvalidData);
                        failed = true;
                        break;
                    }
                }
            }
            // The bytes before the place the word names are data, the byte
            // there must be the marker (else nothing is delivered and the
            // connection fails), and a word past them all is not news yet.
            match word.checked_sub(1).map(|at| at as usize) {
                Some(at) if at < bytes.len() && bytes[at] == MARKER => {
                    prop_assert!(!failed);
                    prop_assert_eq!(&got[..], &bytes[..at]);
                }
                Some(at) if at < bytes.len() => prop_assert!(failed && got.is_empty()),
                _ => prop_assert!(!failed && got == bytes),
            }
        }
    }
}

/// A client offers once 256 KiB went through the socket, however few its
/// sends: a stream of large messages moves at its second.
#[test]
fn bytes_enough_prove_a_connection_busy() {
    let (client, server) = pair(1000);
    let big = vec![7u8; 300 * 1024];
    let reader = std::thread::spawn(move || {
        let got = read_exactly(&server, 2 * big.len() + 1);
        assert!(got[..2 * big.len()].iter().all(|&b| b == 7) && got[2 * big.len()] == 9);
        server
    });
    let big = vec![7u8; 300 * 1024];
    let mut sent = 0;
    while sent < big.len() {
        sent += client.send(&big[sent..]).unwrap();
    }
    assert!(!client.has_rings(), "one send's bytes are not yet enough");
    let mut sent = 0;
    while sent < big.len() {
        sent += client.send(&big[sent..]).unwrap();
        assert!(client.has_rings(), "256 KiB went through the socket");
    }
    client.send(&[9]).unwrap();
    assert!(reader.join().unwrap().reads_rings());
}

/// Once the peer reads from the ring it is past our marker: what our
/// socket still holds for it is wake-up bytes (a tokio server drains them
/// only when it next sleeps), and a flush does not wait on them.
#[test]
fn a_flush_does_not_wait_on_wake_up_bytes_left_on_the_socket() {
    let (client, server) = pair(0);
    client.send(b"a").unwrap();
    assert_eq!(read_exactly(&server, 1), b"a");
    // As a tokio server's reader asleep on its socket: the next publish
    // sends it a byte there, which this (blocking) server never drains.
    client.ring_t().unwrap().peer_reader_sleeps_on_its_socket();
    client.send(b"b").unwrap();
    assert_eq!(server.socket().readable_bytes().unwrap(), 1, "the wake-up");
    assert_eq!(read_exactly(&server, 1), b"b");
    let d = client.delivery().unwrap();
    assert_eq!((d.unread_by_peer, d.peer_hung_up), (0, false));
}
