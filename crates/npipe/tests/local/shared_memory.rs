//! The shared-memory data path between two processes: taken when both
//! sides agree, declined (keeping the socket) when either does not, the
//! same behaviour over it on blocking and tokio ends, and a server that
//! dies while a client waits on the ring.

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

/// Either server takes a blocking client's offer.
fn messages_stay_messages(front: Front) {
    let name = unique("shm-msg");
    let mut srv = server_on(front, &name, &[]);
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

on_both_servers!(messages_stay_messages);

/// A client that may only read takes the rings too, and the server's
/// writes reach it whole, however many times the ring fills. (The server
/// once shut its socket's reading side for such a client, as it does for a
/// socket connection; a tokio server, woken through that socket, then took
/// the shut socket for a dead client and failed its write.)
fn a_read_only_client_gets_a_message_larger_than_a_ring(front: Front) {
    let name = unique("shm-read-only");
    let mut srv = server_on(front, &name, &["direction=out", "mode=speak"]);
    let mut c = ClientOptions::new()
        .shared_memory(true)
        .access(npipe::Access::Read)
        .wait(npipe::Wait::Timeout(HANG))
        .open(&name)
        .unwrap();
    srv.expect("conn");
    assert_eq!(c.uses_shared_memory(), !forced_off());
    assert!(c.recv_message().unwrap() == crate::roles::spoken());
    srv.expect("spoke");
}

on_both_servers!(a_read_only_client_gets_a_message_larger_than_a_ring);

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

/// A server that does not take the offer (turned off, on either front end)
/// keeps the socket, and the client works the same.
#[test]
fn a_declined_offer_keeps_the_socket() {
    let mut servers = vec![("off", Front::Blocking)];
    if cfg!(feature = "tokio") {
        servers.push(("tokio-off", Front::Tokio));
    }
    for (tag, front) in servers {
        let name = unique(&format!("shm-declined-{tag}"));
        let mut srv = server_on(front, &name, &["shm=off"]);
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

/// tokio clients on the rings: the same behaviour against either server,
/// streams both ways at once through split halves, and a server that dies.
#[cfg(feature = "tokio")]
mod tokio_clients {
    use npipe::tokio::PipeClient;
    use npipe::{ClientOptions, ErrorCode, MessageRead};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::forced_off;
    use crate::common::*;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    async fn offering(name: &str) -> PipeClient {
        ClientOptions::new()
            .shared_memory(true)
            .wait(npipe::Wait::Timeout(HANG))
            .open_async(name)
            .await
            .unwrap()
    }

    fn messages_stay_messages(front: Front) {
        let name = unique("shm-tokio-msg");
        let mut srv = server_on(front, &name, &[]);
        runtime().block_on(async {
            let mut c = offering(&name).await;
            srv.expect("conn");
            assert_eq!(c.uses_shared_memory(), !forced_off());
            for i in 0..2_000u32 {
                let m = i.to_le_bytes().repeat(16);
                assert_eq!(c.transact(&m).await.unwrap(), m);
            }
            // Larger than a ring (256 KiB) both ways: each side waits for
            // room and for data on its socket.
            let big: Vec<u8> = (0..1_500_000u32).map(|i| (i % 251) as u8).collect();
            c.write_message(&big).await.unwrap();
            assert!(
                c.recv_message().await.unwrap() == big,
                "a large message came back changed"
            );
            c.write_message(b"a longer message").await.unwrap();
            let mut buf = [0u8; 8];
            let first = c.read_message(&mut buf).await.unwrap();
            assert_eq!(first, MessageRead::MoreData(8));
            let rest = c.read_message(&mut buf).await.unwrap();
            assert_eq!(rest, MessageRead::Complete(8));
            assert_eq!(&buf, b" message");
            c.write_message(b"").await.unwrap();
            assert_eq!(c.recv_message().await.unwrap(), b"");
        });
    }

    /// A byte pipe's halves on two tasks: one writes 700 KB while the other
    /// reads the echo, both waiting on the one socket for their wake-ups.
    fn split_halves_stream_both_ways(front: Front) {
        let name = unique("shm-tokio-split");
        let mut srv = server_on(front, &name, &["type=byte"]);
        runtime().block_on(async {
            let c = offering(&name).await;
            srv.expect("conn");
            assert_eq!(c.uses_shared_memory(), !forced_off());
            let (mut r, mut w) = tokio::io::split(c);
            let data: Vec<u8> = (0..700_001u32).map(|i| (i % 253) as u8).collect();
            let expected = data.clone();
            let writer = tokio::spawn(async move { w.write_all(&data).await.unwrap() });
            let mut back = vec![0u8; 700_001];
            r.read_exact(&mut back).await.unwrap();
            writer.await.unwrap();
            assert!(back == expected, "the stream came back changed");
        });
    }

    /// A server killed while a tokio client waits on the ring: the kernel
    /// closes the socket, which wakes the client at once.
    fn a_server_that_dies_ends_the_wait(front: Front) {
        let name = unique("shm-tokio-kill");
        let mut srv = server_on(front, &name, &["mode=hold"]);
        runtime().block_on(async {
            let mut c = offering(&name).await;
            srv.expect("conn");
            assert_eq!(c.uses_shared_memory(), !forced_off());
            let reading = tokio::spawn(async move { c.recv_message().await });
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            srv.kill();
            let e = tokio::time::timeout(HANG, reading)
                .await
                .expect("the client still waits")
                .unwrap()
                .unwrap_err();
            assert_eq!(e.code(), ErrorCode::BrokenPipe, "{e}");
        });
    }

    /// A tokio client with the default options moves to the rings in
    /// mid-stream as a blocking one does (its 17th write offers them), to a
    /// blocking or a tokio server. Its 17th message is 3 MB, twelve rings'
    /// worth, which the server reads whole before it answers: the client's
    /// writer fills its ring again and again while its reads have not
    /// passed the server's marker (the window, where a helper thread sleeps
    /// on the futex for it), and every reply comes back right after.
    fn a_busy_tokio_client_moves_to_the_rings(front: Front) {
        let forced = std::env::var("NPIPE_SHARED_MEMORY").ok();
        let at_connect = forced.as_deref() == Some("on");
        let name = unique("shm-tokio-late");
        let mut srv = server_on(front, &name, &["mode=digest"]);
        runtime().block_on(async {
            let mut c = ClientOptions::new()
                .wait(npipe::Wait::Timeout(HANG))
                .open_async(&name)
                .await
                .unwrap();
            srv.expect("conn");
            assert_eq!(c.uses_shared_memory(), at_connect);
            for i in 0..16u32 {
                let m = i.to_le_bytes().repeat(1 + i as usize);
                let reply = c.transact(&m).await.unwrap();
                assert_eq!(reply, crate::roles::digest(&m).into_bytes());
            }
            let big: Vec<u8> = (0..3_000_001u32).map(|i| (i % 247) as u8).collect();
            tokio::time::timeout(HANG, c.write_message(&big))
                .await
                .expect("a writer in the window was never woken")
                .unwrap();
            assert_eq!(c.uses_shared_memory(), !forced_off());
            let reply = c.recv_message().await.unwrap();
            assert_eq!(reply, crate::roles::digest(&big).into_bytes());
            for i in 0..100u32 {
                let m = i.to_le_bytes().repeat(1 + i as usize % 30);
                let reply = c.transact(&m).await.unwrap();
                assert_eq!(reply, crate::roles::digest(&m).into_bytes());
            }
        });
    }

    on_both_servers!(
        messages_stay_messages,
        split_halves_stream_both_ways,
        a_server_that_dies_ends_the_wait,
        a_busy_tokio_client_moves_to_the_rings,
    );
}

/// A client with one descriptor to spare connects, without shared memory,
/// rather than fail: its region's descriptor would have been the one its
/// socket needed (the region is made before the connect).
#[test]
fn a_client_short_of_descriptors_connects_without_shared_memory() {
    if forced_off() {
        crate::shared_copy::skipped(
            "NPIPE_SHARED_MEMORY=off: no client makes a region, so none can run it short",
        );
        return;
    }
    let name = unique("shm-fd-limit");
    let _srv = server_on(Front::Blocking, &name, &[]);
    let mut c = spawn("open_at_fd_limit", &[&name]);
    assert_eq!(c.expect("ok"), "false");
}

/// By default a blocking client moves a busy connection to the rings in
/// mid-stream (its 17th write offers them, PROTOCOL §6d), to a blocking or
/// a tokio server, and every reply comes back whole across the move, a
/// message larger than a ring included. (`NPIPE_SHARED_MEMORY=on` offers
/// with the handshake instead, `=late` after the first write.)
fn a_busy_connection_moves_to_the_rings(front: Front) {
    let forced = std::env::var("NPIPE_SHARED_MEMORY").ok();
    let at_connect = forced.as_deref() == Some("on");
    let late = !forced_off();
    let name = unique("shm-late");
    let mut srv = server_on(front, &name, &[]);
    let mut c = ClientOptions::new()
        .wait(npipe::Wait::Timeout(HANG))
        .open(&name)
        .unwrap();
    srv.expect("conn");
    assert_eq!(c.uses_shared_memory(), at_connect);
    c.write_message(b"first").unwrap();
    assert_eq!(c.recv_message().unwrap(), b"first");
    for i in 1..16u32 {
        let m = i.to_le_bytes().repeat(i as usize);
        assert_eq!(c.transact(&m).unwrap(), m);
    }
    let after_first = forced.as_deref() == Some("late") && late;
    assert_eq!(c.uses_shared_memory(), at_connect || after_first);
    let big: Vec<u8> = (0..600_000u32).map(|i| (i % 249) as u8).collect();
    c.write_message(&big).unwrap();
    assert!(
        c.recv_message().unwrap() == big,
        "the large message came back changed"
    );
    assert_eq!(c.uses_shared_memory(), at_connect || late);
    for i in 0..200u32 {
        let m = i.to_le_bytes().repeat(1 + i as usize % 40);
        assert_eq!(c.transact(&m).unwrap(), m);
    }
}

on_both_servers!(a_busy_connection_moves_to_the_rings);

/// Sends one byte with a descriptor riding along (`/dev/null`) on the
/// client's socket, as a hostile client would.
fn send_a_descriptor(c: &PipeClient) -> std::io::Result<usize> {
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    use std::os::fd::AsFd;
    let file = std::fs::File::open("/dev/null")?;
    let fds = [file.as_fd()];
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    assert!(control.push(SendAncillaryMessage::ScmRights(&fds)));
    let bytes = [std::io::IoSlice::new(b"x")];
    Ok(rustix::net::sendmsg(
        c.as_fd(),
        &bytes,
        &mut control,
        SendFlags::NOSIGNAL,
    )?)
}

/// Whether this kernel has `SO_PASSRIGHTS` (Linux 6.16 and later); if
/// not, says so loudly.
fn kernel_refuses_descriptors(test: &str) -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let release = release.trim();
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let minor: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let has = (major, minor) >= (6, 16);
    if !has {
        crate::shared_copy::skipped(&format!(
            "{test}: Linux {release} has no SO_PASSRIGHTS (6.16), so a server cannot \
             refuse a client's descriptors"
        ));
    }
    has
}

/// Once a server end can take no more descriptors (from the start on a
/// server that takes no late offer; after the move on one that does), the
/// client's kernel refuses any it sends (`SO_PASSRIGHTS` off): none reaches
/// the server to be dropped there, where a file's release could wait on
/// its FUSE daemon. The connection goes on as before.
fn a_client_cannot_hand_the_server_descriptors(front: Front) {
    if !kernel_refuses_descriptors("a_client_cannot_hand_the_server_descriptors") {
        return;
    }
    for server_opts in [&["shm=off"][..], &[]] {
        let name = unique("shm-nofd");
        let mut srv = server_on(front, &name, server_opts);
        let mut c = ClientOptions::new()
            .wait(npipe::Wait::Timeout(HANG))
            .open(&name)
            .unwrap();
        srv.expect("conn");
        // Past the 17th write a busy connection has moved (a late offer,
        // the one descriptor its server takes).
        for i in 0..20u32 {
            let m = i.to_le_bytes();
            assert_eq!(c.transact(&m).unwrap(), m);
        }
        let e = send_a_descriptor(&c).expect_err("the server's kernel took a descriptor");
        assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{server_opts:?}: {e}");
        assert_eq!(c.transact(b"still here").unwrap(), b"still here");
    }
}

on_both_servers!(a_client_cannot_hand_the_server_descriptors);
