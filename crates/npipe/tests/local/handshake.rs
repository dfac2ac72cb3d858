//! Hostile and broken handshakes: each gets a clear refusal (or is dropped
//! at the handshake timeout) and no other client notices.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;

use npipe::proto::handshake::{Hello, HelloKind, Reply};
use npipe::{ClientOptions, ErrorCode, ImpersonationLevel, ReadMode};

use crate::common::{on_both_servers, server_on, still_serves, unique, Front, HANG};

// Each behaviour, against the blocking and the tokio server.
on_both_servers!(
    garbage_gets_bad_pipe_and_others_are_served,
    an_unknown_version_is_refused_with_not_supported,
    an_oversized_length_is_refused_before_waiting_for_it,
    a_message_larger_than_the_server_accepts_breaks_only_that_client,
    silent_and_trickling_clients_do_not_delay_others,
    a_hello_sent_late_and_in_pieces_is_answered,
    a_wrong_name_in_the_hello_is_refused,
    a_local_client_cannot_claim_a_remote_identity,
);

fn raw(name: &str) -> UnixStream {
    let path = npipe::namespace_directory().join(name.to_lowercase());
    let s = UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(HANG)).unwrap();
    s
}

fn read_reply(s: &mut UnixStream) -> Option<Reply> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 512];
    loop {
        if let Some((r, _)) = Reply::decode(&buf).unwrap() {
            return Some(r);
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn refused_code(s: &mut UnixStream) -> u32 {
    match read_reply(s) {
        Some(Reply::Refused { code, .. }) => code,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn hello(name: &str) -> Hello {
    Hello {
        kind: HelloKind::Connect,
        access: None,
        read_mode: ReadMode::Message,
        impersonation: ImpersonationLevel::Impersonation,
        wait_ms: 0,
        max_message: 1 << 20,
        pipelined: false,
        name: name.to_lowercase(),
        principal: String::new(),
        computer: String::new(),
        local_user: None,
        local_groups: Vec::new(),
        hand_off: false,
    }
}

fn garbage_gets_bad_pipe_and_others_are_served(front: Front) {
    let name = unique("garbage");
    let _srv = server_on(front, &name, &[]);
    let mut s = raw(&name);
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert_eq!(refused_code(&mut s), 230);
    still_serves(&name);
}

fn an_unknown_version_is_refused_with_not_supported(front: Front) {
    let name = unique("version");
    let _srv = server_on(front, &name, &[]);
    let mut s = raw(&name);
    s.write_all(b"NPIP\x09rest-of-a-future-hello").unwrap();
    match read_reply(&mut s) {
        Some(Reply::Refused { code, reason }) => {
            assert_eq!(code, 50);
            assert!(reason.contains("version 9"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    still_serves(&name);
}

fn an_oversized_length_is_refused_before_waiting_for_it(front: Front) {
    let name = unique("oversize");
    let _srv = server_on(front, &name, &[]);
    let mut bytes = Vec::new();
    hello(&name).encode(&mut bytes).unwrap();
    bytes.truncate(24);
    bytes[10..12].copy_from_slice(&u16::MAX.to_le_bytes());
    let mut s = raw(&name);
    s.write_all(&bytes).unwrap();
    assert_eq!(refused_code(&mut s), 230);
    still_serves(&name);
}

fn a_message_larger_than_the_server_accepts_breaks_only_that_client(front: Front) {
    let name = unique("bigmsg");
    let mut srv = server_on(front, &name, &["max_message=1024"]);
    let mut bytes = Vec::new();
    hello(&name).encode(&mut bytes).unwrap();
    let mut s = raw(&name);
    s.write_all(&bytes).unwrap();
    assert!(matches!(read_reply(&mut s), Some(Reply::Connected(_))));
    srv.expect("conn");
    // Claim a 4 GiB message: the server refuses it without allocating.
    s.write_all(&u32::MAX.to_le_bytes()).unwrap();
    assert_eq!(srv.expect("end"), "230");
    // The client library itself refuses to send what the server won't take.
    let mut c = ClientOptions::new().open(&name).unwrap();
    let e = c.write_message(&[0u8; 2048]).unwrap_err();
    assert_eq!(e.code(), ErrorCode::InvalidParameter);
    still_serves(&name);
}

fn silent_and_trickling_clients_do_not_delay_others(front: Front) {
    let name = unique("slowloris");
    let _srv = server_on(front, &name, &["handshake_ms=1500"]);
    // Ten silent clients and one that sends a byte at a time.
    let silent: Vec<UnixStream> = (0..10).map(|_| raw(&name)).collect();
    let mut trickle = raw(&name);
    let mut bytes = Vec::new();
    hello(&name).encode(&mut bytes).unwrap();
    trickle.write_all(&bytes[..3]).unwrap();
    // Everyone else is served meanwhile.
    for _ in 0..5 {
        still_serves(&name);
    }
    // After the handshake timeout the silent ones are dropped without a word.
    for mut s in silent {
        assert_eq!(read_once(&mut s), 0, "dropped at the handshake timeout");
    }
    assert_eq!(read_once(&mut trickle), 0);
}

/// A client that connects while the server waits in `accept` but sends its
/// HELLO only later, and in two pieces, is told OK all the same (the
/// blocking server's `accept` takes the connection and leaves the rest of
/// the handshake to the acceptor thread), and the server goes on serving.
fn a_hello_sent_late_and_in_pieces_is_answered(front: Front) {
    let name = unique("latehello");
    let _srv = server_on(front, &name, &[]);
    still_serves(&name);
    let mut s = raw(&name);
    let mut bytes = Vec::new();
    hello(&name).encode(&mut bytes).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(50));
    s.write_all(&bytes[..5]).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(50));
    s.write_all(&bytes[5..]).unwrap();
    match read_reply(&mut s) {
        Some(Reply::Connected(_)) => {}
        other => panic!("expected OK, got {other:?}"),
    }
    still_serves(&name);
}

/// One read, gone round again if a signal interrupted it (CI once saw
/// EINTR here).
fn read_once(s: &mut UnixStream) -> usize {
    let mut b = [0u8; 16];
    loop {
        match s.read(&mut b) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            r => return r.unwrap(),
        }
    }
}

fn a_wrong_name_in_the_hello_is_refused(front: Front) {
    let name = unique("wrongname");
    let _srv = server_on(front, &name, &[]);
    let mut s = raw(&name);
    let mut bytes = Vec::new();
    hello("someone-else").encode(&mut bytes).unwrap();
    s.write_all(&bytes).unwrap();
    assert_eq!(refused_code(&mut s), 2);
    still_serves(&name);
}

fn a_local_client_cannot_claim_a_remote_identity(front: Front) {
    let name = unique("spoof");
    // Full access for everyone: a refusal can only be the claim's.
    let _srv = server_on(front, &name, &["sd=allow everyone=full"]);
    let Some(mut claimant) = crate::remote_identity::untrusted_claimant(&name, "CN=admin") else {
        return;
    };
    assert_eq!(claimant.expect("reply"), "Refused { code: 5 }");
    still_serves(&name);
}
