//! The rings as a byte transport between two threads: bytes in order under
//! back-pressure, the end of the stream after what was sent, a peer that
//! vanishes, timeouts.

use std::sync::Arc;

use super::*;

/// Two ends of one region over a socket pair, as after the handshake.
fn pair(capacity: usize) -> (ShmTransport, ShmTransport) {
    let (a, b) = Socket::pair().unwrap();
    pair_over(a, b, capacity)
}

#[test]
fn a_megabyte_crosses_a_small_ring_in_order() {
    let (a, b) = pair(4096);
    let data: Vec<u8> = (0..1_000_003u32).map(|i| (i % 253) as u8).collect();
    let writer = std::thread::spawn({
        let data = data.clone();
        move || {
            let mut sent = 0;
            while sent < data.len() {
                let end = (sent + 1500).min(data.len());
                sent += a.send(&data[sent..end]).unwrap();
            }
            a.shutdown_write().unwrap();
            a
        }
    });
    let mut got = Vec::new();
    let mut buf = [0u8; 777];
    loop {
        let n = b.recv(&mut buf, Recv::Wait).unwrap();
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    let _a = writer.join().unwrap();
    assert_eq!(got.len(), data.len());
    assert!(got == data, "the bytes came out changed");
}

/// `recv_spare` appends straight into the vector's room (records that wrap
/// round a small ring included), after what it held.
#[test]
fn recv_spare_appends_after_what_the_buffer_held() {
    let (a, b) = pair(256);
    let data: Vec<u8> = (0..5000u32).map(|i| (i % 241) as u8).collect();
    let writer = std::thread::spawn({
        let data = data.clone();
        move || {
            let mut sent = 0;
            while sent < data.len() {
                let end = (sent + 333).min(data.len());
                sent += a.send(&data[sent..end]).unwrap();
            }
            a.shutdown_write().unwrap();
            a
        }
    });
    let mut got = b"head".to_vec();
    while b.recv_spare(&mut got, Recv::Wait).unwrap() > 0 {}
    let _a = writer.join().unwrap();
    assert_eq!(&got[..4], b"head");
    assert_eq!(got.len(), 4 + data.len());
    assert!(got[4..] == data[..], "the bytes came out changed");
}

#[test]
fn vectored_sends_arrive_as_one_stream() {
    let (a, b) = pair(256);
    let n = a
        .send_vectored(&[
            IoSlice::new(b"head"),
            IoSlice::new(b"er+"),
            IoSlice::new(b"body"),
        ])
        .unwrap();
    assert_eq!(n, 11);
    assert_eq!(b.readable_bytes().unwrap(), 11);
    assert_eq!(b.peek_queued(), b"header+body");
    let mut buf = [0u8; 32];
    assert_eq!(b.recv(&mut buf, Recv::DontWait).unwrap(), 11);
    assert_eq!(&buf[..11], b"header+body");
    assert_eq!(
        b.recv(&mut buf, Recv::DontWait).unwrap_err().kind(),
        io::ErrorKind::WouldBlock
    );
}

#[test]
fn a_read_timeout_and_a_full_ring_give_would_block() {
    let (a, b) = pair(64);
    b.set_read_timeout(Some(Duration::from_millis(30))).unwrap();
    assert_eq!(
        b.recv(&mut [0u8; 8], Recv::Wait).unwrap_err().kind(),
        io::ErrorKind::WouldBlock
    );
    assert!(!b.wait_readable(Some(Duration::from_millis(10))).unwrap());
    // Fill the 64-byte ring (records of a quarter ring at most).
    let mut filled = 0;
    loop {
        match a.send_nonblocking(&[1u8; 100]) {
            Ok(n) => filled += n,
            Err(e) => {
                assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
                break;
            }
        }
    }
    assert!((16..64).contains(&filled), "{filled}");
    a.set_write_timeout(Some(Duration::from_millis(30)))
        .unwrap();
    assert_eq!(
        a.send(&[2u8; 8]).unwrap_err().kind(),
        io::ErrorKind::WouldBlock
    );
    let delivery = a.delivery().unwrap();
    assert!(delivery.unread_by_peer > 0 && !delivery.peer_hung_up);
    assert!(b.wait_readable(None).unwrap());
    assert_eq!(b.readable_bytes().unwrap(), filled);
    let mut got = 0;
    while got < filled {
        got += b.recv(&mut [0u8; 100], Recv::Wait).unwrap();
    }
    assert_eq!(got, filled);
    assert_eq!(a.delivery().unwrap().unread_by_peer, 0);
}

#[test]
fn a_vanished_peer_ends_the_stream_after_its_data() {
    let (a, b) = pair(1024);
    a.send(b"last words").unwrap();
    drop(a);
    let mut buf = [0u8; 64];
    assert_eq!(b.recv(&mut buf, Recv::Wait).unwrap(), 10);
    assert_eq!(b.recv(&mut buf, Recv::Wait).unwrap(), 0);
    let e = b.send(b"anyone?").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EPIPE));
    assert!(b.delivery().unwrap().peer_hung_up);
}

/// A peer that crashed never marks the ring closed: its socket closing is
/// what wakes a reader asleep on the ring.
#[test]
fn a_peer_that_dies_without_a_word_is_noticed_through_its_socket() {
    let (crashed, sb) = Socket::pair().unwrap();
    let (creator, joiner) = test_rings(1024);
    let b = Arc::new(ShmTransport::new(joiner, sb));
    let reader = std::thread::spawn({
        let b = b.clone();
        move || b.recv(&mut [0u8; 8], Recv::Wait)
    });
    std::thread::sleep(Duration::from_millis(20));
    drop(crashed);
    assert_eq!(reader.join().unwrap().unwrap(), 0);
    let e = b.send(b"anyone?").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EPIPE));
    drop(creator);
}

/// A peer that died after handing the region to someone who keeps waking
/// the reader (bumping its futex word) is still noticed through its socket:
/// the reader asks once a slice of time has passed, woken or not.
#[test]
fn a_dead_peer_is_noticed_even_while_someone_keeps_waking_the_reader() {
    let (crashed, sb) = Socket::pair().unwrap();
    let (creator, joiner) = test_rings(1024);
    let b = ShmTransport::new(joiner, sb);
    let stop = Arc::new(AtomicBool::new(false));
    let bumper = std::thread::spawn({
        let stop = stop.clone();
        move || {
            // The joiner reads the first ring.
            let seq = Layout::new(0, 1024).data_seq(creator.region());
            while !stop.load(Ordering::Relaxed) {
                seq.fetch_add(1, Ordering::Release);
                futex_wake(seq);
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    });
    drop(crashed);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(b.recv(&mut [0u8; 8], Recv::Wait).map_err(|e| e.to_string()));
    });
    let got = rx.recv_timeout(Duration::from_secs(20));
    stop.store(true, Ordering::Relaxed);
    bumper.join().unwrap();
    assert_eq!(
        got.expect("the reader never noticed its peer was gone"),
        Ok(0)
    );
}

/// A server takes only two rings of a power-of-two capacity in range, and
/// only a sealed memory file of that size: anything else keeps the socket.
#[test]
fn only_a_sound_offer_is_taken() {
    let rings = |c: usize| ShmTransport::region_len(c);
    assert_eq!(offered_capacity(rings(4096)), Some(4096));
    assert_eq!(
        offered_capacity(rings(OFFER_CAPACITY)),
        Some(OFFER_CAPACITY)
    );
    // Larger rings than npipe offers would let a client pin the server's
    // memory: refused.
    assert_eq!(offered_capacity(rings(2 * OFFER_CAPACITY)), None);
    for len in [
        0,
        1,
        rings(4096) + 1,
        rings(2048),
        rings(8 << 20),
        2 * (192 + 5000),
    ] {
        assert_eq!(offered_capacity(len), None, "{len}");
    }
    let sound = offer().unwrap();
    let taken = take_offer(PeerFd::new(sound.fd().try_clone_to_owned().unwrap()), false).unwrap();
    assert_eq!(
        (taken.region().len(), taken.capacity()),
        (sound.len(), OFFER_CAPACITY)
    );
    // The server says what it does where the client reads it after the OK.
    let first = Layout::new(0, OFFER_CAPACITY);
    let said = first.server_features(&sound).load(Ordering::Relaxed);
    assert_eq!(said, FEATURES_OF_THIS_VERSION);
    // A tokio server takes only an offer whose client wakes it through the
    // socket: every offer of this version says so, one from before does not.
    take_offer(PeerFd::new(sound.fd().try_clone_to_owned().unwrap()), true).unwrap();
    let older = ShmRegion::create(sound.len()).unwrap();
    let e = take_offer(PeerFd::new(older.fd().try_clone_to_owned().unwrap()), true).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::Unsupported, "{e}");
    take_offer(PeerFd::new(older.fd().try_clone_to_owned().unwrap()), false).unwrap();
    let odd = ShmRegion::create(rings(4096) + 8).unwrap();
    let e = take_offer(PeerFd::new(odd.fd().try_clone_to_owned().unwrap()), false).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
}

/// What a client makes of the server's answer to its offer: rings only on
/// an offer it made, and for a tokio client only from a server that wakes
/// it through the socket.
#[test]
fn a_client_takes_rings_only_as_agreed() {
    use crate::engine::connect::Connected;
    use crate::info::End;
    use crate::stream_core::Setup;
    use crate::types::{PipeType, ReadMode};
    let name = crate::name::PipeName::parse("agreed").unwrap();
    let answer = |shared_memory, socket_wakes| Connected {
        setup: Setup::for_test(End::Client, PipeType::Message),
        read_mode: ReadMode::Message,
        send_buffer: None,
        leftover: Vec::new(),
        shared_memory,
        socket_wakes,
        late_offers: false,
    };
    let kept = agreed(&answer(false, false), Some(offer().unwrap()), &name, true);
    assert!(kept.unwrap().is_none(), "declined: the socket stays");
    let e = agreed(&answer(true, true), None, &name, false).unwrap_err();
    assert!(e.message().contains("never offered"), "{e}");
    assert!(
        agreed(&answer(true, false), Some(offer().unwrap()), &name, false)
            .unwrap()
            .is_some()
    );
    let e = agreed(&answer(true, false), Some(offer().unwrap()), &name, true).unwrap_err();
    assert!(e.message().contains("cannot wake a tokio client"), "{e}");
    assert!(
        agreed(&answer(true, true), Some(offer().unwrap()), &name, true)
            .unwrap()
            .is_some()
    );
    // What the server said it does is read from its word (140), once: a
    // server from before the word left it 0, and is read the old way.
    for said in [0, FEATURES_OF_THIS_VERSION] {
        let region = offer().unwrap();
        let first = Layout::new(0, OFFER_CAPACITY);
        first
            .server_features(&region)
            .store(said, Ordering::Relaxed);
        let rings = agreed(&answer(true, true), Some(region), &name, true);
        assert_eq!(rings.unwrap().unwrap().peer_features, said);
    }
}

/// Ends of this version and an end from before marked records (which
/// reads `tail`, the flags beside the positions, and wakes a writer at
/// every record) carry bytes both ways and see each other close.
#[test]
fn an_end_from_before_marked_records_talks_with_this_version() {
    for (creator, joiner) in [
        (FEATURES_OF_THIS_VERSION, WAKES_BY_SOCKET),
        (WAKES_BY_SOCKET, FEATURES_OF_THIS_VERSION),
    ] {
        let (sa, sb) = Socket::pair().unwrap();
        let (ra, rb) = test_rings_of(4096, creator, joiner);
        let (a, b) = (
            Arc::new(ShmTransport::new(ra, sa)),
            Arc::new(ShmTransport::new(rb, sb)),
        );
        let data: Vec<u8> = (0..50_000u32).map(|i| (i % 241) as u8).collect();
        let send = |t: Arc<ShmTransport>, data: Vec<u8>| {
            std::thread::spawn(move || {
                let mut sent = 0;
                while sent < data.len() {
                    sent += t.send(&data[sent..]).unwrap();
                }
                t.shutdown_write().unwrap();
            })
        };
        let (wa, wb) = (send(a.clone(), data.clone()), send(b.clone(), data.clone()));
        for t in [&a, &b] {
            let mut got = Vec::new();
            let mut buf = [0u8; 777];
            loop {
                match t.recv(&mut buf, Recv::Wait).unwrap() {
                    0 => break,
                    n => got.extend_from_slice(&buf[..n]),
                }
            }
            assert!(got == data, "{creator} {joiner}");
        }
        wa.join().unwrap();
        wb.join().unwrap();
    }
}

/// A sleeper is woken once per sleep: the waker takes its flag down, so
/// the publishes that follow before it runs (on one CPU, all of them until
/// this side sleeps) make no system call. (Each of them used to wake it
/// again: 3,000 futex calls per ring of small messages.)
#[test]
fn a_sleeper_is_woken_once_however_many_publish() {
    let (a, b) = pair(64 * 1024);
    let layout = b.rx_layout;
    let (flag, seq) = (
        layout.consumer_waiting(&b.region),
        layout.data_seq(&b.region),
    );
    // As the reader does just before its futex wait.
    flag.store(ASLEEP_ON_FUTEX, Ordering::SeqCst);
    let before = seq.load(Ordering::SeqCst);
    for _ in 0..10 {
        a.send(b"message").unwrap();
    }
    assert_eq!(flag.load(Ordering::SeqCst), 0, "the waker took it down");
    assert_eq!(
        seq.load(Ordering::SeqCst),
        before.wrapping_add(1),
        "one wake-up"
    );
}

/// A peer on our own CPU never answers while we spin: once the budget is
/// 0 a probe that fails costs one spin of [`SPIN_PROBE`] rounds and puts
/// the budget straight back to 0 (not to half the probe, which spun 127
/// more rounds over the next 7 waits), and the probes come less and less often; one
/// that pays brings the spinning back at once.
#[test]
fn failed_probes_go_back_to_no_spin_and_come_less_often() {
    static HINT: AtomicU32 = AtomicU32::new(0);
    let spin = Spin::new(&HINT);
    let looks = std::cell::Cell::new(0u32);
    let mut never = || {
        looks.set(looks.get() + 1);
        Ok(false)
    };
    // 1,024 waits: 1 look each, but a probe's SPIN_PROBE + 1 every 8, 16,
    // 32, ... waits (at most 128 apart).
    for _ in 0..1024 {
        assert!(!spin.run(&mut never).unwrap());
        assert_eq!(spin.budget.load(Ordering::Relaxed), 0);
    }
    let probes = (looks.get() - 1024) / SPIN_PROBE;
    assert!((6..=12).contains(&probes), "{probes} probes in 1,024 waits");
    assert_eq!(
        spin.probe_every.load(Ordering::Relaxed),
        SPIN_PROBE_EVERY_MAX
    );
    // The peer moves to another CPU: the next probe sees it answer within
    // its spin, which brings the spin and the frequent probes back.
    spin.probes.store(0, Ordering::Relaxed); // this wait probes
    let mut soon = 0;
    let mut answers = || {
        soon += 1;
        Ok(soon > 3)
    };
    assert!(spin.run(&mut answers).unwrap());
    assert!(spin.budget.load(Ordering::Relaxed) >= SPIN_PROBE);
    assert_eq!(spin.probe_every.load(Ordering::Relaxed), SPIN_PROBE_EVERY);
}

/// An empty record breaks the connection at once: no version sends one,
/// and a peer that kept publishing them would otherwise hold a receive
/// (and the thread or the runtime's worker it runs on) for ever.
#[test]
fn an_empty_record_is_a_broken_pipe_not_a_loop() {
    // Read by its header, and by the tail (a peer from before).
    for features in [FEATURES_OF_THIS_VERSION, WAKES_BY_SOCKET] {
        let (sa, sb) = Socket::pair().unwrap();
        let (creator, joiner) = test_rings_of(4096, features, features);
        let (a, b) = (
            ShmTransport::new(creator, sa),
            ShmTransport::new(joiner, sb),
        );
        {
            let mut tx = b.tx();
            for _ in 0..100 {
                // Marked *more*: with no flags an empty record's header
                // is all zero, which a reader of headers takes for none
                // yet (the peer then only sends nothing).
                assert!(tx.try_push(&b.region, &[], true).unwrap());
            }
        }
        let mut buf = [0u8; 64];
        let e = a.recv(&mut buf, Recv::Wait).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("empty record"), "{e}");
    }
}

/// A writer asleep for room is woken once three quarters of the ring are
/// free, as a Unix socket wakes its writer, not at every record read (on
/// one CPU each wake-up is two context switches); a consumer whose
/// producer does not say it waits for that much (an npipe from before)
/// wakes it at every record, as before.
#[test]
fn a_writer_waiting_for_room_is_woken_at_three_quarters_free() {
    const CAPACITY: usize = 4096;
    for (features, woken_at_first_record) in
        [(FEATURES_OF_THIS_VERSION, false), (WAKES_BY_SOCKET, true)]
    {
        let (sa, sb) = Socket::pair().unwrap();
        let (creator, joiner) = test_rings_of(CAPACITY, features, features);
        let (a, b) = (
            ShmTransport::new(creator, sa),
            Arc::new(ShmTransport::new(joiner, sb)),
        );
        let data: Vec<u8> = (0..3 * CAPACITY).map(|i| (i % 251) as u8).collect();
        let writer = std::thread::spawn({
            let (b, data) = (b.clone(), data.clone());
            move || {
                let mut sent = 0;
                while sent < data.len() {
                    sent += b.send(&data[sent..]).unwrap();
                }
            }
        });
        let layout = b.tx_layout;
        let flag = layout.producer_waiting(&b.region);
        let asleep = Instant::now();
        while flag.load(Ordering::SeqCst) != ASLEEP_ON_FUTEX {
            assert!(
                asleep.elapsed() < Duration::from_secs(20),
                "the writer never slept"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        // Only a wake-up bumps the writer's futex word: counted, not
        // guessed from the flag (a woken writer soon raises it again).
        let wakes = layout.space_seq(&b.region);
        let before = wakes.load(Ordering::SeqCst);
        // One record (a quarter ring at most) read: more than a quarter is
        // still unread.
        let mut got = vec![0u8; CAPACITY / 4];
        let n = a.recv(&mut got, Recv::Wait).unwrap();
        got.truncate(n);
        let woken = wakes.load(Ordering::SeqCst) != before;
        assert_eq!(woken, woken_at_first_record, "features {features}");
        // The rest read: a quarter or less was left unread on the way, and
        // a writer waiting for that was woken then.
        while got.len() < data.len() {
            let mut buf = vec![0u8; 1000];
            let n = a.recv(&mut buf, Recv::Wait).unwrap();
            got.extend_from_slice(&buf[..n]);
        }
        assert_ne!(wakes.load(Ordering::SeqCst), before, "features {features}");
        writer.join().unwrap();
        assert!(got == data, "the bytes crossed in order");
    }
}
