//! The client's REPLY decoder on arbitrary bytes: never panics, never reads
//! past its input or its bound.
#![no_main]
use libfuzzer_sys::fuzz_target;
use npipe::proto::handshake::{Reply, REPLY_MAX};

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((reply, used))) = Reply::decode(data) {
        assert!(used <= data.len() && used <= REPLY_MAX);
        let mut again = Vec::new();
        reply.encode(&mut again).expect("a decoded REPLY encodes");
    }
});
