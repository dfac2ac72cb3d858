//! The ring against itself: messages through it whole and in order at any
//! sizes, and hostile shared states that must end in `ERROR_BAD_PIPE`,
//! never a panic or an access outside the region.

use std::sync::atomic::Ordering;

use proptest::prelude::*;

use super::*;

/// A region with one ring of `capacity` at offset 0, both sides of this
/// version.
fn ring(capacity: usize) -> (ShmRegion, Producer, Consumer) {
    ring_of(capacity, FEATURES_OF_THIS_VERSION)
}

/// As [`ring`], each side taking the other for one that says `features`.
fn ring_of(capacity: usize, features: u32) -> (ShmRegion, Producer, Consumer) {
    let r = ShmRegion::create(Layout::bytes(capacity)).unwrap();
    let layout = Layout::new(0, capacity);
    (
        r,
        Producer::new(layout, features),
        Consumer::new(layout, features),
    )
}

/// Sends `msg` as records of at most `max` bytes, the last without *more*.
fn push_message(r: &ShmRegion, p: &mut Producer, c: &mut Consumer, msg: &[u8], out: &mut Reader) {
    let max = p.layout().max_record();
    // No version sends an empty record (to a consumer watching headers,
    // one would look like no record at all): messages here are never empty.
    assert!(!msg.is_empty());
    let parts: Vec<&[u8]> = msg.chunks(max).collect();
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
    for features in [FEATURES_OF_THIS_VERSION, 0] {
        let (r, mut p, mut c) = ring_of(64, features);
        // A record leaves room for the empty header behind it.
        assert_eq!(p.layout().max_record(), 48);
        let mut reader = Reader::default();
        let msgs: Vec<Vec<u8>> = (0..40u8)
            .map(|i| vec![i; 1 + (i as usize * 7) % 57])
            .collect();
        for m in &msgs {
            push_message(&r, &mut p, &mut c, m, &mut reader);
            reader.drain(&r, &mut c, 5);
        }
        assert_eq!(reader.done, msgs);
        assert_eq!(p.unread(&r).unwrap(), 0);
    }
}

#[test]
fn a_full_ring_refuses_until_the_reader_frees_space() {
    let (r, mut p, mut c) = ring(64);
    assert!(p.try_push(&r, &[1; 24], false).unwrap()); // 32 bytes
    assert!(p.try_push(&r, &[2; 16], false).unwrap()); // 56, and an empty header
    assert!(!p.try_push(&r, &[0], false).unwrap());
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
    assert!(!p.try_push(&r, &[0], false).unwrap());
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

/// Where the producer marks its records, the consumer knows one is there
/// from its header and never reads `tail`; where it does not (an npipe
/// from before), from `tail` alone, whatever lies past it.
#[test]
fn a_record_is_found_by_its_header_or_by_the_tail_as_the_producer_says() {
    let (r, mut p, mut c) = ring(128);
    assert!(!c.ready(&r).unwrap());
    assert!(p.try_push(&r, b"marked", false).unwrap());
    r.u64_at(TAIL).store(u64::MAX, Ordering::Release);
    let mut buf = [0u8; 16];
    assert_eq!(c.read(&r, &mut buf).unwrap().unwrap().n, 6);
    assert_eq!(&buf[..6], b"marked");
    assert!(!c.ready(&r).unwrap(), "the empty header behind it");

    let (r, mut p, mut c) = ring_of(128, 0);
    assert!(p.try_push(&r, b"by the tail", false).unwrap());
    // What an older producer may leave past its tail: not a record.
    r.write(CONTROL + 24, &[7; 8]);
    assert_eq!(c.readable(&r).unwrap(), 11);
    assert_eq!(c.read(&r, &mut [0u8; 16]).unwrap().unwrap().n, 11);
    assert!(!c.ready(&r).unwrap());
}

/// Each side's `closed` flag is read where the peer said it writes it: at
/// 144 and 148, away from the busy words, or beside them (an npipe from
/// before).
#[test]
fn closed_flags_are_read_where_the_peer_writes_them() {
    for (features, producer_at, consumer_at) in [
        (
            FEATURES_OF_THIS_VERSION,
            PRODUCER_CLOSED_APART,
            CONSUMER_CLOSED_APART,
        ),
        (0, PRODUCER_CLOSED, CONSUMER_CLOSED),
    ] {
        let (r, p, c) = ring_of(64, features);
        r.u32_at(producer_at).store(1, Ordering::Release);
        r.u32_at(consumer_at).store(1, Ordering::Release);
        assert!(c.producer_closed(&r) && p.consumer_closed(&r), "{features}");
        let (r, p, c) = ring_of(64, features ^ MARKS_RECORDS);
        r.u32_at(producer_at).store(1, Ordering::Release);
        r.u32_at(consumer_at).store(1, Ordering::Release);
        assert!(
            !c.producer_closed(&r) && !p.consumer_closed(&r),
            "{features}"
        );
    }
}

/// The writer reads the reader's position only when the room it last saw
/// is short: a nonsense position goes unread while the room known holds
/// the record, and is refused once it must be read.
#[test]
fn the_writer_reads_the_readers_position_only_when_short_of_room() {
    let (r, mut p, _c) = ring(128);
    r.u64_at(HEAD).store(u64::MAX, Ordering::Release);
    for n in 1..=3 {
        // 32 bytes each, and room for the empty header behind.
        assert!(p.try_push(&r, &[n; 24], false).unwrap());
    }
    let e = p.try_push(&r, &[4; 24], false).unwrap_err();
    assert_eq!(e.code(), ErrorCode::BadPipe);
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
                let msg = vec![(i % 251) as u8; 1 + (i as usize * 13) % 3000];
                let max = p.layout().max_record();
                let parts: Vec<&[u8]> = msg.chunks(max).collect();
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
                    let want = vec![(got % 251) as u8; 1 + (got as usize * 13) % 3000];
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
        msgs in prop::collection::vec(prop::collection::vec(any::<u8>(), 1..400), 0..40),
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
        pushes in prop::collection::vec(1usize..100, 0..6),
        marked in any::<bool>(),
        tail in any::<u64>(),
        head in any::<u64>(),
        garbage in prop::collection::vec(any::<u8>(), 0..128),
        garbage_at in 0usize..128,
        which in 0u8..3,
    ) {
        let (r, mut p, mut c) = ring_of(128, if marked { MARKS_RECORDS } else { 0 });
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
