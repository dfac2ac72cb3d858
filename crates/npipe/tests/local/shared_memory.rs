//! The shared-memory data path between two processes: taken when both
//! sides agree, declined (keeping the socket) when either does not, the
//! same behaviour over it, and a server that dies while a client waits on
//! the ring.

use npipe::{ClientOptions, ErrorCode, MessageRead, PipeClient};

use crate::common::*;

fn offering(name: &str) -> PipeClient {
    ClientOptions::new()
        .shared_memory(true)
        .wait(npipe::Wait::Timeout(HANG))
        .open(name)
        .unwrap()
}

/// With `NPIPE_SHARED_MEMORY=off` (one of CI's runs) nobody takes an offer.
fn forced_off() -> bool {
    std::env::var("NPIPE_SHARED_MEMORY").as_deref() == Ok("off")
}

#[test]
fn a_blocking_server_takes_the_offer_and_messages_stay_messages() {
    let name = unique("shm-msg");
    let mut srv = server(&name, &[]);
    let mut c = offering(&name);
    srv.expect("conn");
    assert_eq!(c.uses_shared_memory(), !forced_off());
    // Many small round trips, and messages larger than a ring (256 KiB)
    // cut into records and put back together.
    for i in 0..2_000u32 {
        let m = i.to_le_bytes().repeat(16);
        assert_eq!(c.transact(&m).unwrap(), m);
    }
    let big: Vec<u8> = (0..1_500_000u32).map(|i| (i % 251) as u8).collect();
    c.write_message(&big).unwrap();
    assert!(
        c.recv_message().unwrap() == big,
        "a large message came back changed"
    );
    c.write_message(b"a longer message").unwrap();
    let mut buf = [0u8; 8];
    assert_eq!(c.read_message(&mut buf).unwrap(), MessageRead::MoreData(8));
    assert_eq!(c.read_message(&mut buf).unwrap(), MessageRead::Complete(8));
    assert_eq!(&buf, b" message");
    c.write_message(b"").unwrap();
    assert_eq!(c.recv_message().unwrap(), b"");
}

#[test]
fn a_byte_pipe_streams_through_the_rings() {
    use std::io::{Read, Write};
    let name = unique("shm-bytes");
    let mut srv = server(&name, &["type=byte"]);
    let mut c = offering(&name);
    srv.expect("conn");
    assert_eq!(c.uses_shared_memory(), !forced_off());
    let data: Vec<u8> = (0..700_001u32).map(|i| (i % 253) as u8).collect();
    std::thread::scope(|s| {
        let (mut r, mut w) = c.split();
        s.spawn(move || w.write_all(&data).unwrap());
        let mut back = vec![0u8; 700_001];
        r.read_exact(&mut back).unwrap();
        assert!(back
            .iter()
            .enumerate()
            .all(|(i, b)| *b == (i as u32 % 253) as u8));
    });
}

/// A server that does not take the offer (turned off, or the tokio one)
/// keeps the socket, and the client works the same.
#[test]
fn a_declined_offer_keeps_the_socket() {
    let mut servers = vec![("off", Front::Blocking, &["shm=off"][..])];
    if cfg!(feature = "tokio") {
        servers.push(("tokio", Front::Tokio, &[][..]));
    }
    for (tag, front, opts) in servers {
        let name = unique(&format!("shm-declined-{tag}"));
        let mut srv = server_on(front, &name, opts);
        let mut c = offering(&name);
        srv.expect("conn");
        assert!(!c.uses_shared_memory(), "{tag}: the offer was taken");
        assert_eq!(c.transact(b"still works").unwrap(), b"still works");
    }
}

/// A server killed while its client sleeps on the ring: the client is told
/// (through the socket the kernel closed), it does not hang.
#[test]
fn a_server_that_dies_does_not_leave_its_client_waiting() {
    let name = unique("shm-kill");
    let mut srv = server(&name, &["mode=hold"]);
    let mut c = offering(&name);
    srv.expect("conn");
    // The path this test is about (unless forced off for the whole run).
    assert_eq!(c.uses_shared_memory(), !forced_off());
    let reader = std::thread::spawn(move || c.recv_message());
    std::thread::sleep(std::time::Duration::from_millis(100));
    srv.kill();
    let e = reader.join().unwrap().unwrap_err();
    assert_eq!(e.code(), ErrorCode::BrokenPipe, "{e}");
}
