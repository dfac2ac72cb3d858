//! The server's HELLO decoder on arbitrary bytes: never panics, never reads
//! past its input, and what it accepts re-encodes to the same bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use npipe::proto::handshake::{Hello, HELLO_MAX};

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((hello, used))) = Hello::decode(data) {
        assert!(used <= data.len() && used <= HELLO_MAX);
        let mut again = Vec::new();
        hello.encode(&mut again).expect("a decoded HELLO encodes");
        assert_eq!(&again[..], &data[..used]);
    }
});
