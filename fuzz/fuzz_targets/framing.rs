//! Message framing on an arbitrary byte stream cut at arbitrary points: the
//! decoder never accepts a length over its maximum, never consumes past a
//! message, and accounts for every byte.
#![no_main]
use libfuzzer_sys::fuzz_target;
use npipe::proto::framing::{Decoder, HEADER_LEN};

fuzz_target!(|data: &[u8]| {
    let Some((&max, rest)) = data.split_first() else { return };
    let Some((&chunk, wire)) = rest.split_first() else { return };
    let max = u32::from(max) * 97;
    let chunk = usize::from(chunk.max(1));
    let mut d = Decoder::new(max);
    let mut at = 0;
    while at < wire.len() {
        if !d.in_message() {
            match d.start(&wire[at..]) {
                Ok(Some(len)) => {
                    assert!(len <= max);
                    at += HEADER_LEN;
                    if len == 0 {
                        assert!(d.consume(0));
                    }
                }
                Ok(None) => {
                    assert!(wire.len() - at < HEADER_LEN);
                    return;
                }
                Err(_) => return,
            }
            continue;
        }
        let left = d.remaining().unwrap() as usize;
        let n = d.take(chunk.min(wire.len() - at));
        assert!(n <= left);
        let done = d.consume(n);
        assert_eq!(done, n == left);
        at += n;
    }
    let _ = d.scan(wire);
});
