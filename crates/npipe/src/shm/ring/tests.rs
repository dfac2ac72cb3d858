//! The ring against itself: messages through it whole and in order at any
//! sizes, and hostile shared states that must end in `ERROR_BAD_PIPE`,
//! never a panic or an access outside the region.

use std::sync::atomic::Ordering;

use proptest::prelude::*;

use super::*;

/// A region with one ring of `capacity` at offset 0.
fn ring(capacity: usize) -> (ShmRegion, Producer, Consumer) {
    let r = ShmRegion::create(Layout::bytes(capacity)).unwrap();
    let layout = Layout::new(0, capacity);
    (r, Producer::new(layout), Consumer::new(layout))
}

/// Sends `msg` as records of at most `max` bytes, the last without *more*.
fn push_message(r: &ShmRegion, p: &mut Producer, c: &mut Consumer, msg: &[u8], out: &mut Reader) {
    let max = p.layout().max_record();
    let mut parts: Vec<&[u8]> = msg.chunks(max).collect();
    if parts.is_empty() {
        parts.push(&[]);
    }
    let last = parts.len() - 1;
    for (i, part) in parts.into_iter().enumerate() {
        // Drain while full: a single-threaded test is both sides.
        while !p.try_push(r, part, i != last).unwrap() {
            out.drain(r, c, 7);
        }
    }
}

/// Reassembles messages from chunks, as a message-mode read would.
#[derive(Default)]
struct Reader {
    current: Vec<u8>,
    done: Vec<Vec<u8>>,
}

impl Reader {
    fn drain(&mut self, r: &ShmRegion, c: &mut Consumer, buf_len: usize) {
        let mut buf = vec![0u8; buf_len];
        while let Some(chunk) = c.read(r, &mut buf).unwrap() {
            self.current.extend_from_slice(&buf[..chunk.n]);
            if chunk.record_done && !chunk.more {
                self.done.push(std::mem::take(&mut self.current));
            }
        }
    }
}

#[test]
fn records_wrap_and_keep_their_boundaries() {
    let (r, mut p, mut c) = ring(64);
    assert_eq!(p.layout().max_record(), 56);
    let mut reader = Reader::default();
    let msgs: Vec<Vec<u8>> = (0..40u8).map(|i| vec![i; (i as usize * 7) % 57]).collect();
    for m in &msgs {
        push_message(&r, &mut p, &mut c, m, &mut reader);
        reader.drain(&r, &mut c, 5);
    }
    assert_eq!(reader.done, msgs);
    assert_eq!(p.unread(&r).unwrap(), 0);
}

#[test]
fn a_full_ring_refuses_until_the_reader_frees_space() {
    let (r, mut p, mut c) = ring(64);
    assert!(p.try_push(&r, &[1; 24], false).unwrap()); // 32 bytes
    assert!(p.try_push(&r, &[2; 24], false).unwrap()); // 64: full
    assert!(!p.try_push(&r, &[], false).unwrap());
    let mut buf = [0u8; 10];
    let chunk = c.read(&r, &mut buf).unwrap().unwrap();
    assert_eq!(
        chunk,
        Chunk {
            n: 10,
            record_done: false,
            more: false
        }
    );
    // Part of a record read frees nothing yet.
    assert!(!p.try_push(&r, &[], false).unwrap());
    let chunk = c.read(&r, &mut [0u8; 64]).unwrap().unwrap();
    assert_eq!(
        chunk,
        Chunk {
            n: 14,
            record_done: true,
            more: false
        }
    );
    assert!(p.try_push(&r, &[3; 24], false).unwrap());
}

#[test]
fn closing_is_seen_by_the_other_side() {
    let (r, p, c) = ring(64);
    assert!(!c.producer_closed(&r) && !p.consumer_closed(&r));
    p.close(&r);
    c.close(&r);
    assert!(c.producer_closed(&r) && p.consumer_closed(&r));
}

#[test]
fn messages_cross_threads_whole_and_in_order() {
    let (r, mut p, mut c) = ring(1024);
    let r = std::sync::Arc::new(r);
    let writer = std::thread::spawn({
        let r = r.clone();
        move || {
            for i in 0..20_000u32 {
                let msg = vec![(i % 251) as u8; (i as usize * 13) % 3000];
                let max = p.layout().max_record();
                let parts: Vec<&[u8]> = if msg.is_empty() {
                    vec![&[]]
                } else {
                    msg.chunks(max).collect()
                };
                let last = parts.len() - 1;
                for (k, part) in parts.into_iter().enumerate() {
                    while !p.try_push(&r, part, k != last).unwrap() {
                        std::thread::yield_now();
                    }
                }
            }
            p.close(&r);
        }
    });
    let mut got = 0u32;
    let mut current = Vec::new();
    let mut buf = vec![0u8; 333];
    loop {
        match c.read(&r, &mut buf).unwrap() {
            Some(chunk) => {
                current.extend_from_slice(&buf[..chunk.n]);
                if chunk.record_done && !chunk.more {
                    let want = vec![(got % 251) as u8; (got as usize * 13) % 3000];
                    assert_eq!(current, want, "message {got}");
                    current.clear();
                    got += 1;
                }
            }
            None if c.producer_closed(&r) && !c.ready(&r).unwrap() => break,
            None => std::thread::yield_now(),
        }
    }
    writer.join().unwrap();
    assert_eq!(got, 20_000);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Any messages, any read sizes, a small ring: what comes out is what
    /// went in.
    #[test]
    fn any_messages_come_out_as_they_went_in(
        msgs in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..400), 0..40),
        read_len in 1usize..200,
        drain_every in 1usize..5,
    ) {
        let (r, mut p, mut c) = ring(128);
        let mut reader = Reader::default();
        for (i, m) in msgs.iter().enumerate() {
            push_message(&r, &mut p, &mut c, m, &mut reader);
            if i % drain_every == 0 {
                reader.drain(&r, &mut c, read_len);
            }
        }
        reader.drain(&r, &mut c, read_len);
        prop_assert_eq!(reader.done, msgs);
    }

    /// A hostile peer writes anything to the shared words and the records:
    /// each side either goes on or fails with ERROR_BAD_PIPE, never
    /// panics or reads outside the region.
    #[test]
    fn a_hostile_peer_breaks_only_the_connection(
        pushes in prop::collection::vec(0usize..100, 0..6),
        tail in any::<u64>(),
        head in any::<u64>(),
        garbage in prop::collection::vec(any::<u8>(), 0..128),
        garbage_at in 0usize..128,
        which in 0u8..3,
    ) {
        let (r, mut p, mut c) = ring(128);
        for n in &pushes {
            let _ = p.try_push(&r, &vec![9u8; *n], false).unwrap();
        }
        let data = CONTROL + garbage_at.min(128 - garbage.len().min(128));
        match which {
            0 => r.u64_at(TAIL).store(tail, Ordering::Release),
            1 => r.u64_at(HEAD).store(head, Ordering::Release),
            _ => r.write(data, &garbage[..garbage.len().min(128 - (data - CONTROL))]),
        }
        let mut buf = [0u8; 64];
        for _ in 0..20 {
            match c.read(&r, &mut buf) {
                Ok(Some(chunk)) => prop_assert!(chunk.n <= buf.len()),
                Ok(None) => break,
                Err(e) => { prop_assert_eq!(e.code(), ErrorCode::BadPipe); break }
            }
        }
        for _ in 0..5 {
            match p.try_push(&r, &[1u8; 40], false) {
                Ok(_) => {}
                Err(e) => { prop_assert_eq!(e.code(), ErrorCode::BadPipe); break }
            }
        }
    }
}
