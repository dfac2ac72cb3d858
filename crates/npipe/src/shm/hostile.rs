//! A ring driven by arbitrary bytes: our side's pushes and reads
//! interleaved with a hostile peer's writes to any shared word or record.
//! Whatever happens, our side never panics, never reads outside the region
//! and never hands out more than its buffer holds; a broken rule is
//! `ERROR_BAD_PIPE`. Used by the fuzz target (`fuzz/fuzz_targets/ring.rs`)
//! and by a property test.

use std::sync::atomic::Ordering;

use super::ring::{Consumer, Layout, Producer, VecSink, CONTROL, MARKS_RECORDS};
use crate::error::ErrorCode;
use crate::sys::ShmRegion;

/// Each ring's capacity in the exercise: small, so it wraps often.
const CAPACITY: usize = 256;

/// Runs the operations `data` spells out (one byte an operation, its
/// arguments after it) against one ring, both of whose sides are ours
/// except where the "peer" scribbles.
pub fn run(data: &[u8]) {
    let region = ShmRegion::create(Layout::bytes(CAPACITY)).expect("a memfd");
    let layout = Layout::new(0, CAPACITY);
    // The first byte says whether the consumer watches the headers (a
    // producer that marks its records) or the tail (one from before).
    let features = match data.first() {
        Some(b) if b & 1 != 0 => MARKS_RECORDS,
        _ => 0,
    };
    let (mut tx, mut rx) = (
        Producer::new(layout, features),
        Consumer::new(layout, features),
    );
    let (mut tx_ok, mut rx_ok) = (true, true);
    let mut bytes = data.iter().copied();
    let mut next = || bytes.next();
    while let Some(op) = next() {
        let arg = next().unwrap_or(0) as usize;
        match op % 9 {
            0 if tx_ok => {
                let payload = vec![op; arg];
                match tx.try_push_parts(&region, &[std::io::IoSlice::new(&payload)], arg) {
                    Ok(n) => assert!(n <= arg),
                    Err(e) => {
                        assert_eq!(e.code(), ErrorCode::BadPipe);
                        tx_ok = false;
                    }
                }
            }
            1 if rx_ok => {
                let mut buf = vec![0u8; arg];
                match rx.read_into(&region, &mut super::ring::SliceSink::new(&mut buf)) {
                    Ok(Some(chunk)) => assert!(chunk.n <= buf.len()),
                    Ok(None) => {}
                    Err(e) => {
                        assert_eq!(e.code(), ErrorCode::BadPipe);
                        rx_ok = false;
                    }
                }
            }
            2 => {
                // The peer sets any word of the control block (positions,
                // closed flags, waiting flags, features) to anything.
                let mut word = [0u8; 8];
                for b in &mut word {
                    *b = next().unwrap_or(0);
                }
                let at = arg * 8 % CONTROL;
                region
                    .u64_at(at)
                    .store(u64::from_le_bytes(word), Ordering::Release);
            }
            3 => {
                // The peer scribbles on the records.
                let at = CONTROL + arg % CAPACITY;
                let n = usize::from(next().unwrap_or(0)).min(CONTROL + CAPACITY - at);
                let junk: Vec<u8> = (0..n).map(|_| next().unwrap_or(0xff)).collect();
                region.write(at, &junk);
            }
            4 if rx_ok => match rx.readable(&region) {
                Ok(n) => assert!(n <= CAPACITY),
                Err(e) => {
                    assert_eq!(e.code(), ErrorCode::BadPipe);
                    rx_ok = false;
                }
            },
            5 if rx_ok => match rx.peek(&region, arg) {
                Ok(seen) => assert!(seen.len() <= arg),
                Err(e) => {
                    assert_eq!(e.code(), ErrorCode::BadPipe);
                    rx_ok = false;
                }
            },
            6 if tx_ok => {
                if let Err(e) = tx.has_room(&region) {
                    assert_eq!(e.code(), ErrorCode::BadPipe);
                    tx_ok = false;
                }
            }
            7 => {
                let _ = rx.writer_would_go_on(&region);
            }
            8 if rx_ok => {
                // A receive that appends to a vector, up to `arg` more.
                let mut out = vec![7u8; 3];
                match rx.read_into(&region, &mut VecSink::new(&mut out, 3 + arg)) {
                    Ok(_) => assert!(out.len() <= 3 + arg && out[..3] == [7, 7, 7]),
                    Err(e) => {
                        assert_eq!(e.code(), ErrorCode::BadPipe);
                        rx_ok = false;
                    }
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// What the fuzz target checks, on random inputs in every test run.
        #[test]
        fn any_bytes_drive_the_ring_without_a_panic(
            data in prop::collection::vec(any::<u8>(), 0..600),
        ) {
            super::run(&data);
        }
    }
}
