//! Faults with real processes and `SIGKILL`: clients and servers that die
//! mid-way, floods, and running out of file descriptors. The server keeps
//! serving, loses nothing it acknowledged, and never delivers a cut message.

use std::time::Duration;

use npipe::{ClientOptions, ErrorCode, Wait};

use crate::common::{eventually, on_both_servers, server_on, spawn, unique, Front, HANG};
use crate::roles::flood_message;

// Each fault, against the blocking and the tokio server.
on_both_servers!(
    a_client_killed_mid_message_breaks_only_its_own_pipe,
    a_killed_server_breaks_its_pipes_promptly_and_the_next_one_takes_over,
    a_flood_is_held_back_by_the_pipe_and_every_message_arrives,
    out_of_file_descriptors_the_server_refuses_cleanly_and_recovers,
    a_waiting_client_waits_for_a_server_that_is_not_up_yet,
    announced_but_unsent_messages_cost_the_server_nothing,
);

/// A server that accepts and then never answers fails a client that set a
/// read timeout with *timeout*, through `call` (blocking and tokio) and a
/// read of an opened pipe; without one, the call would wait for ever, as
/// `CallNamedPipe` does.
#[test]
fn a_read_timeout_bounds_a_call_to_a_server_that_accepts_and_hangs() {
    let name = unique("hangs");
    let listener = npipe::ServerOptions::new().create(&name).unwrap();
    let holder = std::thread::spawn(move || {
        // Takes three clients and answers none of them.
        let held: Vec<_> = (0..3).map(|_| listener.accept().unwrap()).collect();
        std::thread::sleep(HANG);
        drop(held);
    });
    let limit = Duration::from_millis(100);
    let mut opts = ClientOptions::new();
    opts.read_timeout(limit);

    let e = opts.call(&name, b"anyone?").unwrap_err();
    assert_eq!(e.code(), ErrorCode::Timeout, "{e}");

    #[cfg(feature = "tokio")]
    {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let e = rt.block_on(opts.call_async(&name, b"anyone?")).unwrap_err();
        assert_eq!(e.code(), ErrorCode::Timeout, "{e}");
    }

    let mut client = opts.open(&name).unwrap();
    let e = client.recv_message().unwrap_err();
    assert_eq!(e.code(), ErrorCode::Timeout, "{e}");
    drop(holder);
}

/// The resident memory of a child process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    crate::procfs::child_status_kib(pid, "VmRSS")
}

fn a_client_killed_mid_message_breaks_only_its_own_pipe(front: Front) {
    let name = unique("killmid");
    let mut srv = server_on(front, &name, &["mode=chunks"]);
    let mut writer = spawn("big_writer", &[&name, "50000000"]);
    srv.expect("conn");
    writer.expect("writing");
    assert_eq!(srv.expect("partial"), "");
    writer.kill();
    srv.tell("go");
    // The server sees a broken pipe, and zero whole messages: the cut one
    // was never delivered as complete.
    assert_eq!(srv.expect("end"), "109 0");
    // Everyone else is still served, and whole messages are acknowledged.
    let mut c = ClientOptions::new().open(&name).unwrap();
    srv.expect("conn");
    assert_eq!(c.transact(&[1u8; 200_000]).unwrap(), b"ok:200000");
}

fn a_killed_server_breaks_its_pipes_promptly_and_the_next_one_takes_over(front: Front) {
    let name = unique("killserver");
    let mut first = server_on(front, &name, &["instances=1", "mode=hold"]);
    let mut connected = ClientOptions::new().open(&name).unwrap();
    first.expect("conn");
    std::thread::scope(|s| {
        // A client waiting for the only instance, for the pipe itself too.
        let waiter = s.spawn(|| {
            let mut c = ClientOptions::new()
                .wait(Wait::Timeout(HANG))
                .wait_for_server(true)
                .open(name.as_str())
                .unwrap();
            let pid = c.server_process_id();
            (pid, c.transact(b"after restart").unwrap())
        });
        eventually("the waiter to queue", || {
            npipe::query_pipe(name.as_str())
                .ok()
                .filter(|p| p.waiting_clients == 1)
        });
        first.kill();
        // The connected client is told at once (a read returns, no hang).
        let e = connected.recv_message().unwrap_err();
        assert_eq!(e.code(), ErrorCode::BrokenPipe);
        // A new server reclaims the name; the waiter reaches it.
        let second = server_on(front, &name, &["instances=1"]);
        let (pid, reply) = waiter.join().unwrap();
        assert_eq!(pid, second.pid());
        assert_eq!(reply, b"after restart");
    });
}

fn a_flood_is_held_back_by_the_pipe_and_every_message_arrives(front: Front) {
    let name = unique("flood");
    let mut srv = server_on(front, &name, &["mode=verify"]);
    let mut c = ClientOptions::new().open(&name).unwrap();
    srv.expect("conn");
    let before = rss_kib(srv.pid());
    const COUNT: u64 = 4000;
    const SIZE: usize = 16 * 1024; // 64 MB in all
    let mut peak = before;
    for seq in 0..COUNT {
        c.write_message(&flood_message(seq, SIZE)).unwrap();
        if seq % 256 == 0 {
            peak = peak.max(rss_kib(srv.pid()));
        }
    }
    drop(c);
    assert_eq!(
        srv.expect("end"),
        format!("109 {COUNT}"),
        "every message, in order, intact"
    );
    // The writer was held back by the socket: the reader's memory did not
    // grow with the 64 MB that went through it.
    assert!(
        peak - before < 16 * 1024,
        "server RSS grew from {before} to {peak} KiB"
    );
}

fn out_of_file_descriptors_the_server_refuses_cleanly_and_recovers(front: Front) {
    let name = unique("nofile");
    let mut srv = server_on(front, &name, &["nofile=24", "mode=hold"]);
    let mut held = Vec::new();
    let mut refused = None;
    for _ in 0..40 {
        match ClientOptions::new().open(&name) {
            Ok(c) => held.push(c),
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let e = refused.expect("a 24-descriptor server cannot hold 40 clients");
    assert_eq!(e.code(), ErrorCode::PipeBusy, "{e}");
    assert!(e.to_string().contains("file descriptors"), "{e}");
    assert!(!held.is_empty());
    for _ in 0..held.len() {
        srv.expect("conn");
    }
    drop(held);
    // Once descriptors are free again, clients are served.
    let c = eventually("the server to recover", || {
        ClientOptions::new().open(&name).ok()
    });
    drop(c);
}

fn a_waiting_client_waits_for_a_server_that_is_not_up_yet(front: Front) {
    let name = unique("notyet");
    std::thread::scope(|s| {
        let early = s.spawn(|| {
            ClientOptions::new()
                .wait(Wait::Timeout(HANG))
                .wait_for_server(true)
                .open(name.as_str())
                .map(|mut c| c.transact(b"early").unwrap())
        });
        std::thread::sleep(Duration::from_millis(100));
        let _srv = server_on(front, &name, &[]);
        assert_eq!(early.join().unwrap().unwrap(), b"early");
    });
    // Without wait_for_server, Windows' behaviour: not found at once.
    let e = ClientOptions::new()
        .wait(Wait::Timeout(HANG))
        .open(unique("never").as_str())
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::FileNotFound);
}

/// Clients that announce 60 MB messages and send a few bytes of each must
/// not make the server allocate what they announced.
fn announced_but_unsent_messages_cost_the_server_nothing(front: Front) {
    use std::io::Write;
    let name = unique("announce");
    let mut srv = server_on(front, &name, &[]);
    // VmData, not VmRSS: zeroed allocations may not be touched, but they
    // are committed to the process all the same.
    let before = vm_data_kib(srv.pid());
    let mut liars = Vec::new();
    for _ in 0..20 {
        let mut hello = Vec::new();
        npipe::proto::handshake::Hello {
            kind: npipe::proto::handshake::HelloKind::Connect,
            access: None,
            read_mode: npipe::ReadMode::Message,
            impersonation: npipe::ImpersonationLevel::Impersonation,
            wait_ms: 0,
            max_message: 1 << 20,
            pipelined: false,
            name: name.clone(),
            principal: String::new(),
            computer: String::new(),
            local_user: None,
            local_groups: Vec::new(),
            hand_off: false,
        }
        .encode(&mut hello)
        .unwrap();
        let path = npipe::namespace_directory().join(&name);
        let mut s = std::os::unix::net::UnixStream::connect(path).unwrap();
        s.write_all(&hello).unwrap();
        s.write_all(&(60u32 << 20).to_le_bytes()).unwrap();
        s.write_all(b"only this").unwrap();
        srv.expect("conn");
        liars.push(s);
    }
    // The server is still serving, and 20 x 60 MB were never allocated.
    let mut c = ClientOptions::new().open(&name).unwrap();
    srv.expect("conn");
    assert_eq!(c.transact(b"fine").unwrap(), b"fine");
    let after = vm_data_kib(srv.pid());
    assert!(
        after - before < 256 * 1024,
        "server data grew from {before} to {after} KiB"
    );
}

/// The data segment (heap and anonymous mappings) of a child process, in
/// KiB.
fn vm_data_kib(pid: u32) -> u64 {
    crate::procfs::child_status_kib(pid, "VmData")
}
