//! The Windows backend against the kernel's named pipes (under Wine in CI:
//! `tools/windows-tests`). Each test is a server and clients in one
//! process, on threads, as the Linux suite's in-process tests are.

use std::io::{Read, Write};
use std::thread;
use std::time::Duration;

use super::*;
use crate::*;
use crate::{Identity, LocalUser, SecurityDescriptor};

fn unique(test: &str) -> String {
    format!("npipe-win-{test}-{}", std::process::id())
}

/// A server that accepts one client and runs `serve` on it.
fn serve_one(
    opts: &ServerOptions,
    name: &str,
    serve: impl FnOnce(PipeServer) + Send + 'static,
) -> thread::JoinHandle<()> {
    let listener = opts.create(name).expect("create");
    thread::spawn(move || serve(listener.accept().expect("accept")))
}

#[test]
fn a_message_pipe_keeps_boundaries_and_says_more_data() {
    let name = unique("msg");
    let server = serve_one(&ServerOptions::new(), &name, |mut s| {
        for m in [&b"one"[..], b"", b"a longer message"] {
            s.write_message(m).unwrap();
        }
        // Wait for the client to read everything before closing.
        s.flush_buffers().unwrap();
    });
    let mut c = ClientOptions::new().open(&name).unwrap();
    assert_eq!(c.read_mode(), ReadMode::Message);
    assert_eq!(c.recv_message().unwrap(), b"one");
    assert_eq!(c.recv_message().unwrap(), b"");
    let mut small = [0u8; 6];
    assert_eq!(
        c.read_message(&mut small).unwrap(),
        MessageRead::MoreData(6)
    );
    assert_eq!(&small, b"a long");
    let mut rest = [0u8; 64];
    assert_eq!(
        c.read_message(&mut rest).unwrap(),
        MessageRead::Complete(10)
    );
    assert_eq!(&rest[..10], b"er message");
    server.join().unwrap();
}

#[test]
fn a_byte_pipe_is_a_stream() {
    let name = unique("bytes");
    let mut opts = ServerOptions::new();
    opts.pipe_type(PipeType::Byte);
    let server = serve_one(&opts, &name, |mut s| {
        let mut got = Vec::new();
        let mut buf = [0u8; 3];
        while got.len() < 10 {
            let n = s.read(&mut buf).unwrap();
            got.extend_from_slice(&buf[..n]);
        }
        s.write_all(&got).unwrap();
        s.flush_buffers().unwrap();
    });
    let mut c = ClientOptions::new().open(&name).unwrap();
    assert_eq!(c.read_mode(), ReadMode::Byte);
    c.write_all(b"01234").unwrap();
    c.write_all(b"56789").unwrap();
    let mut back = [0u8; 10];
    c.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"0123456789");
    server.join().unwrap();
}

#[test]
fn busy_at_once_without_a_wait_and_a_timeout_with_one() {
    let name = unique("busy");
    let mut opts = ServerOptions::new();
    opts.max_instances(1);
    let listener = opts.create(&name).unwrap();
    let _first = ClientOptions::new().open(&name).unwrap();
    let e = ClientOptions::new().open(&name).unwrap_err();
    assert_eq!(e.code(), ErrorCode::PipeBusy, "{e}");
    let e = ClientOptions::new()
        .wait(Wait::Timeout(Duration::from_millis(100)))
        .open(&name)
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::Timeout, "{e}");
    // A call with a zero timeout does not wait, as on Linux.
    let e = call(&name, b"hi", Duration::ZERO).unwrap_err();
    assert_eq!(e.code(), ErrorCode::PipeBusy, "{e}");
    drop(listener);
}

#[test]
fn a_waiting_client_gets_the_instance_that_frees() {
    let name = unique("wait");
    let mut opts = ServerOptions::new();
    opts.max_instances(1);
    let listener = opts.create(&name).unwrap();
    let first = ClientOptions::new().open(&name).unwrap();
    let mut held = listener.accept().unwrap();
    let waiter = thread::spawn({
        let name = name.clone();
        move || {
            let mut c = ClientOptions::new()
                .wait(Wait::Timeout(Duration::from_secs(20)))
                .open(&name)
                .unwrap();
            c.transact(b"second").unwrap()
        }
    });
    thread::sleep(Duration::from_millis(50));
    drop(first);
    held.disconnect().unwrap();
    drop(held);
    let mut second = listener.accept().unwrap();
    let req = second.recv_message().unwrap();
    second.write_message(&req).unwrap();
    assert_eq!(waiter.join().unwrap(), b"second");
}

/// Windows refuses `FILE_FLAG_FIRST_PIPE_INSTANCE` on a served name; Wine
/// 8.0 ignores the flag (its second instance is created), so under Wine
/// the refusal is not checked, and the test says so.
#[test]
fn a_second_first_instance_is_refused() {
    let name = unique("first");
    let mut opts = ServerOptions::new();
    opts.first_instance(true);
    let _one = opts.create(&name).unwrap();
    let second = opts.create(&name);
    if sys::running_under_wine() {
        crate::skipped::skipped(
            "Wine ignores FILE_FLAG_FIRST_PIPE_INSTANCE; \
             the refusal is checked on Windows only",
        );
        return;
    }
    let e = second.unwrap_err();
    assert_eq!(e.code(), ErrorCode::AccessDenied, "{e}");
}

#[test]
fn transact_and_call_are_one_round_trip_each() {
    let name = unique("transact");
    let listener = ServerOptions::new().create(&name).unwrap();
    let server = thread::spawn(move || {
        for _ in 0..2 {
            let mut s = listener.accept().unwrap();
            let req = s.recv_message().unwrap();
            s.write_message(&req.to_ascii_uppercase()).unwrap();
            s.flush_buffers().unwrap();
        }
    });
    let mut c = ClientOptions::new().open(&name).unwrap();
    assert_eq!(c.transact(b"shout").unwrap(), b"SHOUT");
    drop(c);
    let reply = call(name.as_str(), b"call", Duration::from_secs(20)).unwrap();
    assert_eq!(reply, b"CALL");
    server.join().unwrap();
}

#[test]
fn peek_looks_without_taking() {
    let name = unique("peek");
    let server = serve_one(&ServerOptions::new(), &name, |mut s| {
        s.write_message(b"hello world").unwrap();
        s.flush_buffers().unwrap();
    });
    let mut c = ClientOptions::new().open(&name).unwrap();
    let mut four = [0u8; 4];
    let seen = loop {
        let seen = c.peek(&mut four).unwrap();
        if seen.available > 0 {
            break seen;
        }
        thread::sleep(Duration::from_millis(5));
    };
    assert_eq!((seen.copied, &four), (4, b"hell"));
    assert_eq!(seen.message_left, 7);
    assert_eq!(c.recv_message().unwrap(), b"hello world");
    server.join().unwrap();
}

#[test]
fn a_disconnected_client_is_told_so() {
    let name = unique("disconnect");
    let listener = ServerOptions::new().create(&name).unwrap();
    let mut c = ClientOptions::new().open(&name).unwrap();
    let mut s = listener.accept().unwrap();
    s.disconnect().unwrap();
    let e = c.write_message(b"anyone?").unwrap_err();
    assert!(
        matches!(e.code(), ErrorCode::PipeNotConnected | ErrorCode::NoData),
        "{e}"
    );
    assert_eq!(
        s.write_message(b"x").unwrap_err().code(),
        ErrorCode::PipeNotConnected
    );
}

#[test]
fn both_ends_name_the_processes() {
    let name = unique("pids");
    let listener = ServerOptions::new().create(&name).unwrap();
    let c = ClientOptions::new().open(&name).unwrap();
    let s = listener.accept().unwrap();
    let me = sys::process_id();
    assert_eq!(s.client_process_id(), me);
    assert_eq!(s.server_process_id(), me);
    assert_eq!(c.server_process_id(), me);
    let info = s.info();
    assert_eq!(info.end, End::Server);
    assert_eq!(info.pipe_type, PipeType::Message);
    assert_eq!(c.info().end, End::Client);
}

#[test]
fn a_missing_pipe_is_not_found_and_a_late_one_is_waited_for() {
    let name = unique("late");
    let e = ClientOptions::new().open(&name).unwrap_err();
    assert_eq!(e.code(), ErrorCode::FileNotFound, "{e}");
    let server = thread::spawn({
        let name = name.clone();
        move || {
            thread::sleep(Duration::from_millis(100));
            let listener = ServerOptions::new().create(&name).unwrap();
            let mut s = listener.accept().unwrap();
            let req = s.recv_message().unwrap();
            s.write_message(&req).unwrap();
            s.flush_buffers().unwrap();
        }
    });
    let mut c = ClientOptions::new()
        .wait(Wait::Timeout(Duration::from_secs(20)))
        .wait_for_server(true)
        .open(&name)
        .unwrap();
    assert_eq!(c.transact(b"late").unwrap(), b"late");
    server.join().unwrap();
}

/// The descriptor is applied: the kernel keeps its entries (read back as
/// SDDL), and the pipe's owner still connects.
#[test]
fn the_security_descriptor_is_applied() {
    let name = unique("sd");
    let listener = ServerOptions::new()
        .security(SecurityDescriptor::current_user_only())
        .create(&name)
        .unwrap();
    let c = ClientOptions::new().open(&name).unwrap();
    let s = listener.accept().unwrap();
    let kept = sys::dacl_sddl(&s.conn.state.pipe).unwrap();
    let back: SecurityDescriptor = kept.parse().unwrap();
    assert_eq!(back, SecurityDescriptor::current_user_only(), "{kept}");
    drop(c);
}

/// A deny entry keeps its user out: here everyone may read, no one write,
/// so a client asking to write is refused and one that only reads (in
/// byte mode: setting message mode needs a write right) is let in.
#[test]
fn a_deny_entry_is_enforced() {
    let name = unique("deny");
    let listener = ServerOptions::new()
        .security("deny everyone=w; allow everyone=full".parse().unwrap())
        .create(&name)
        .unwrap();
    let refused = ClientOptions::new().open(&name);
    if sys::running_under_wine() && refused.is_ok() {
        crate::skipped::skipped(
            "Wine does not check a pipe's DACL when a client opens it; \
             the refusal is checked on Windows only",
        );
        return;
    }
    assert_eq!(refused.unwrap_err().code(), ErrorCode::AccessDenied);
    let reader = ClientOptions::new()
        .access(Access::Read)
        .read_mode(ReadMode::Byte)
        .open(&name);
    assert!(reader.is_ok(), "{reader:?}");
    drop(listener);
}

/// What the backend cannot do yet fails loudly, never silently.
#[test]
fn what_is_not_supported_yet_is_refused() {
    let e = ServerOptions::new()
        .security("allow remote:bob=full".parse().unwrap())
        .create(unique("sd-remote").as_str())
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::NotSupported, "{e}");
}

/// A read timeout ends a read that nothing answers with *timeout*, takes
/// nothing, and the next read gets what comes later, whole. A transaction
/// that times out leaves the end cut (its request may have gone in part).
#[test]
fn a_read_timeout_ends_the_wait_and_loses_nothing() {
    let name = unique("read-timeout");
    let listener = ServerOptions::new().create(&name).unwrap();
    let mut c = ClientOptions::new()
        .read_timeout(Duration::from_millis(100))
        .open(&name)
        .unwrap();
    let mut s = listener.accept().unwrap();
    let e = c.recv_message().unwrap_err();
    assert_eq!(e.code(), ErrorCode::Timeout, "{e}");
    s.write_message(b"late, but whole").unwrap();
    assert_eq!(c.recv_message().unwrap(), b"late, but whole");
    // The server's reads time out too once set, and not before.
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    assert_eq!(s.recv_message().unwrap_err().code(), ErrorCode::Timeout);
    c.set_read_timeout(None).unwrap();
    let reader = thread::spawn(move || c.recv_message().map(|m| (m, c)));
    thread::sleep(Duration::from_millis(200));
    assert!(!reader.is_finished(), "a read without a timeout gave up");
    s.write_message(b"x").unwrap();
    let (got, mut c) = reader.join().unwrap().unwrap();
    assert_eq!(got, b"x");

    c.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let e = c.transact(b"anyone?").unwrap_err();
    assert_eq!(e.code(), ErrorCode::Timeout, "{e}");
    s.set_read_timeout(None).unwrap();
    assert_eq!(s.recv_message().unwrap(), b"anyone?");
    let e = c.recv_message().unwrap_err();
    assert_eq!(e.code(), ErrorCode::BrokenPipe, "{e}");
}

/// `accept_timeout` gives up when no client comes, and the instance keeps
/// listening: a client that connects afterwards is accepted next.
#[test]
fn accept_timeout_gives_up_and_keeps_listening() {
    let name = unique("accept-timeout");
    let listener = ServerOptions::new().create(&name).unwrap();
    assert!(listener
        .accept_timeout(Duration::from_millis(50))
        .unwrap()
        .is_none());
    let mut c = ClientOptions::new().open(&name).unwrap();
    let mut s = listener
        .accept_timeout(Duration::from_secs(10))
        .unwrap()
        .expect("the client that connected meanwhile");
    c.write_message(b"hello").unwrap();
    assert_eq!(s.recv_message().unwrap(), b"hello");
}

/// `split`: a read waiting on one thread does not hold up a write on
/// another through the same end (each call is overlapped).
#[test]
fn split_halves_read_and_write_at_once() {
    let name = unique("split");
    let listener = ServerOptions::new().create(&name).unwrap();
    let mut c = ClientOptions::new().open(&name).unwrap();
    let mut s = listener.accept().unwrap();
    let (mut reader, mut writer) = s.split();
    thread::scope(|scope| {
        let read = scope.spawn(move || reader.recv_message());
        thread::sleep(Duration::from_millis(100));
        writer.write_message(b"written while a read waits").unwrap();
        writer.write_all(b"and bytes").unwrap();
        assert_eq!(c.recv_message().unwrap(), b"written while a read waits");
        assert_eq!(c.recv_message().unwrap(), b"and bytes");
        c.write_message(b"now the read").unwrap();
        assert_eq!(read.join().unwrap().unwrap(), b"now the read");
    });
}

/// Users are SIDs: each end knows the other's from the kernel (the
/// client's token while impersonated, the server process's token), a
/// descriptor names a user by account name and the kernel keeps its SID,
/// and `expect_server_user` refuses a server of anyone else.
#[test]
fn users_are_sids_from_the_kernel() {
    let me = LocalUser::current();
    let name = unique("sids");
    let entry = format!("allow user:{}=full", me.name().unwrap());
    let listener = ServerOptions::new()
        .security(entry.parse().unwrap())
        .create(&name)
        .unwrap();
    let c = ClientOptions::new()
        .expect_server_user(me)
        .open(&name)
        .unwrap();
    let s = listener.accept().unwrap();
    assert_eq!(s.client_user(), me);
    assert_eq!(c.server_user(), me);
    assert_eq!(s.peer_identity(), Identity::Local(me));
    let kept = sys::dacl_sddl(&s.conn.state.pipe).unwrap();
    assert!(kept.contains(&me.sid().unwrap()), "{kept}");
    drop((c, s));

    let e = ClientOptions::new()
        .expect_server_user(LocalUser::ROOT)
        .open(&name)
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::AccessDenied, "{e}");
    assert!(e.to_string().contains("S-1-5-18"), "{e}");
}

/// Wine has one user, so who the thread becomes cannot be told apart: what
/// is checked is that the guard gives the thread the client's token and
/// dropping it takes it away, that impersonation does not nest, and that
/// `run_as_client` reverts too.
#[test]
fn impersonation_lasts_as_long_as_its_guard() {
    let name = unique("impersonate");
    let listener = ServerOptions::new().create(&name).unwrap();
    let _c = ClientOptions::new().open(&name).unwrap();
    let s = listener.accept().unwrap();
    assert!(!sys::thread_impersonates());
    {
        let _guard = s.impersonate().unwrap();
        assert!(sys::thread_impersonates(), "no client token on the thread");
        let e = s.impersonate().unwrap_err();
        assert_eq!(e.code(), ErrorCode::CannotImpersonate, "{e}");
    }
    assert!(!sys::thread_impersonates(), "the guard did not revert");
    assert!(s.run_as_client(sys::thread_impersonates).unwrap());
    assert!(!sys::thread_impersonates(), "run_as_client did not revert");
    assert!(s.client_user_name().is_some_and(|n| !n.is_empty()));
}

/// `\\.\pipe\` lists the pipes with their instances, as PipeList shows
/// them. Wine 8 cannot enumerate the pipe file system (`ERROR_BAD_DEV_TYPE`):
/// there the test says so and checks only that the refusal is that one.
#[test]
fn the_pipe_directory_lists_pipes_and_instances() {
    let name = unique("listed");
    let listener = ServerOptions::new().max_instances(3).create(&name).unwrap();
    let _c = ClientOptions::new().open(&name).unwrap();
    let _s = listener.accept().unwrap();
    match sys::list_pipes() {
        Ok(pipes) => {
            let me = pipes.iter().find(|p| p.name == name);
            let me = me.unwrap_or_else(|| panic!("{name} not listed in {pipes:?}"));
            assert_eq!(me.cur_instances, 2, "{me:?}");
        }
        Err(e) if sys::running_under_wine() => {
            assert_eq!(e.raw_os_error(), Some(66), "{e}");
            crate::skipped::skipped(&format!(
                "Wine cannot list the pipe directory ({e}); \
                 the listing is checked on Windows only"
            ));
        }
        Err(e) => panic!("listing the pipe directory failed: {e}"),
    }
}

/// `PipeListener::info`: the shape the server created, and the instances
/// connected (the kernel's count less the one listening).
#[test]
fn the_listener_describes_its_pipe_and_counts_connections() {
    let name = unique("listener-info");
    let listener = ServerOptions::new()
        .max_instances(4)
        .pipe_type(PipeType::Byte)
        .create(&name)
        .unwrap();
    let info = listener.info();
    assert_eq!(info.pipe_type, PipeType::Byte);
    assert_eq!(info.max_instances, Some(4));
    assert_eq!(info.cur_instances, 0);
    assert_eq!(info.name, name);
    let _c1 = ClientOptions::new().open(&name).unwrap();
    let _s1 = listener.accept().unwrap();
    let _c2 = ClientOptions::new().open(&name).unwrap();
    let _s2 = listener.accept().unwrap();
    assert_eq!(listener.info().cur_instances, 2);
}

/// A client that connects and leaves before `accept` cannot stop a server
/// that loops on `accept()?`: the spent instance is passed over.
#[test]
fn a_client_that_came_and_went_does_not_fail_accept() {
    let name = unique("came-and-went");
    let listener = ServerOptions::new().create(&name).unwrap();
    drop(ClientOptions::new().open(&name).unwrap());
    let late = thread::spawn({
        let name = name.clone();
        move || {
            thread::sleep(Duration::from_millis(50));
            let mut c = ClientOptions::new()
                .wait(Wait::Timeout(Duration::from_secs(20)))
                .open(&name)
                .unwrap();
            c.write_message(b"late").unwrap();
            c
        }
    });
    let mut s = listener.accept().unwrap();
    assert_eq!(s.recv_message().unwrap(), b"late");
    let _c = late.join().unwrap();
}

#[test]
fn gathering_stops_at_the_largest_message_the_end_accepts() {
    for max in [100, FIRST_READ as u32 * 3 + 5] {
        // A message that goes on for ever: every read fills what it is given.
        let mut g = Gather::starting_with(Vec::new(), max);
        let mut held = 0;
        let e = loop {
            let room = g.space().unwrap().len();
            assert!(held + room <= max as usize, "room past the limit");
            held += room;
            match g.took(MessageRead::MoreData(room)) {
                Ok(None) => {}
                Ok(Some(_)) => panic!("an unfinished message came out whole"),
                Err(e) => break e,
            }
        };
        assert_eq!(e.code(), ErrorCode::BadPipe);
        assert_eq!(held, max as usize, "refused once it held the limit");
        // A message of exactly the limit is whole.
        let mut g = Gather::starting_with(Vec::new(), max);
        let mut held = 0;
        let msg = loop {
            let room = g.space().unwrap().len();
            held += room;
            let read = if held == max as usize {
                MessageRead::Complete(room)
            } else {
                MessageRead::MoreData(room)
            };
            if let Some(msg) = g.took(read).unwrap() {
                break msg;
            }
        };
        assert_eq!(msg.len(), max as usize);
    }
    // An empty message needs room for one read, whatever the limit.
    let mut g = Gather::starting_with(Vec::new(), 0);
    g.space().unwrap();
    assert_eq!(g.took(MessageRead::Complete(0)).unwrap(), Some(vec![]));
}

#[test]
fn a_message_longer_than_the_server_accepts_is_refused_not_gathered() {
    let name = unique("too-long");
    let mut opts = ServerOptions::new();
    opts.max_message_size(1000);
    let server = serve_one(&opts, &name, |mut s| {
        let e = s.recv_message().unwrap_err();
        assert_eq!(e.code(), ErrorCode::BadPipe, "{e}");
        // What fits still comes through afterwards, in parts.
        let mut buf = [0u8; 8192];
        let mut rest = 0;
        loop {
            match s.read_message(&mut buf).unwrap() {
                MessageRead::MoreData(n) => rest += n,
                MessageRead::Complete(n) => break rest += n,
            }
        }
        assert_eq!(rest, 5000 - 1000, "the rest stayed in the pipe");
        assert_eq!(s.recv_message().unwrap(), b"short");
    });
    let mut c = ClientOptions::new().open(&name).unwrap();
    c.write_message(&[7u8; 5000]).unwrap();
    c.write_message(b"short").unwrap();
    server.join().unwrap();
}

/// The client's credentials, groups and level come from its token: the
/// same user as this process (one process, both ends), its primary group
/// among its groups, and the level the client allowed.
#[test]
fn the_client_is_known_from_its_token() {
    let name = unique("token");
    let listener = ServerOptions::new().create(&name).unwrap();
    let _c = ClientOptions::new().open(&name).unwrap();
    let s = listener.accept().unwrap();
    let id = s.client_identity();
    assert_eq!(id.credentials.pid, std::process::id());
    assert_eq!(id.credentials.user, LocalUser::current());
    assert!(id.credentials.group.id_text().starts_with("S-1-"), "{id:?}");
    assert!(id.groups.contains(&id.credentials.group), "{id:?}");
    assert_eq!(id.user_name, s.client_user_name());
    assert_eq!(
        s.client_impersonation_level(),
        ImpersonationLevel::Impersonation
    );
    assert_eq!(
        s.client_computer_name(),
        None,
        "a local client has no computer name"
    );

    let name = unique("token-ident");
    let listener = ServerOptions::new().create(&name).unwrap();
    let _c = ClientOptions::new()
        .impersonation_level(ImpersonationLevel::Identification)
        .open(&name)
        .unwrap();
    let s = listener.accept().unwrap();
    assert_eq!(s.client_credentials().user, LocalUser::current());
    let level = s.client_impersonation_level();
    if sys::running_under_wine() && level == ImpersonationLevel::Impersonation {
        crate::skipped::skipped(
            "Wine gives the server an impersonation-level token whatever \
             level the client asked for; the identification level is checked on Windows only",
        );
    } else {
        assert_eq!(level, ImpersonationLevel::Identification);
    }
}

/// `LocalUser::current` is the thread's user: inside an impersonation, the
/// client's token's (the same user here, but read from the thread token).
#[test]
fn the_current_user_inside_an_impersonation_is_the_tokens() {
    let name = unique("current");
    let listener = ServerOptions::new().create(&name).unwrap();
    let _c = ClientOptions::new().open(&name).unwrap();
    let s = listener.accept().unwrap();
    let inside = s
        .run_as_client(|| (sys::thread_impersonates(), LocalUser::current()))
        .unwrap();
    assert_eq!(inside, (true, s.client_user()));
}

/// `wait_named_pipe` is `WaitNamedPipe`: at once for a pipe with an
/// instance listening, not found for a name nobody made, a timeout while
/// every instance is busy.
#[test]
fn wait_named_pipe_waits_as_windows_does() {
    let name = unique("wait");
    let e = wait_named_pipe(name.as_str(), Some(Duration::from_millis(50))).unwrap_err();
    assert_eq!(e.code(), ErrorCode::FileNotFound, "{e}");
    let listener = ServerOptions::new().max_instances(1).create(&name).unwrap();
    wait_named_pipe(name.as_str(), Some(Duration::from_secs(5))).unwrap();
    let _c = ClientOptions::new().open(&name).unwrap();
    let _s = listener.accept().unwrap();
    let e = wait_named_pipe(name.as_str(), Some(Duration::from_millis(100))).unwrap_err();
    assert_eq!(e.code(), ErrorCode::Timeout, "{e}");
}

/// `query_pipe` finds a pipe in the listing, and says not found for none;
/// under Wine, which cannot list, it says so.
#[test]
fn query_pipe_reads_the_listing() {
    let name = unique("query");
    let listener = ServerOptions::new().max_instances(2).create(&name).unwrap();
    let _c = ClientOptions::new().open(&name).unwrap();
    let _s = listener.accept().unwrap();
    match query_pipe(name.as_str()) {
        Ok(p) => {
            assert_eq!(p.cur_instances, 2, "{p:?}");
            let e = query_pipe(unique("nobody").as_str()).unwrap_err();
            assert_eq!(e.code(), ErrorCode::FileNotFound, "{e}");
        }
        Err(e) if sys::running_under_wine() => {
            assert_eq!(e.code(), ErrorCode::NotSupported, "{e}");
            assert!(e.to_string().contains("Wine cannot list"), "{e}");
            crate::skipped::skipped(&format!("Wine cannot list the pipe file system ({e})"));
        }
        Err(e) => panic!("query_pipe failed: {e}"),
    }
    let e = query_pipe(r"\\elsewhere\pipe\x").unwrap_err();
    assert_eq!(e.code(), ErrorCode::NotSupported, "{e}");
}

/// `spawn_as_client`: the child runs with the client's token, gets only
/// the variables set on the `Command` (the server's own, PATH among them,
/// do not reach it), and talks through pipes. Wine has one user, so the
/// user it runs as cannot be told apart: the plumbing is what is checked.
#[test]
fn spawn_as_client_starts_a_process_with_the_clients_token() {
    use std::process::Command;
    let name = unique("spawn");
    let listener = ServerOptions::new().create(&name).unwrap();
    let _c = ClientOptions::new().open(&name).unwrap();
    let s = listener.accept().unwrap();
    let mut cmd = Command::new("cmd.exe");
    cmd.args(["/C", "echo [%NPIPE_GIVEN%] [%PATH%]"])
        .env("NPIPE_GIVEN", "given value")
        .env("SystemRoot", r"C:\windows");
    let child = s.spawn_as_client(&mut cmd).unwrap();
    assert!(child.id() != 0 && child.id() != std::process::id());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    // An unset variable is echoed as written.
    assert_eq!(text.trim_end(), "[given value] [%PATH%]", "{out:?}");
    assert!(
        !sys::thread_impersonates(),
        "spawning left the thread as the client"
    );

    // Standard input reaches it; kill and try_wait work. (No PATH was
    // given: programs go by their full names.)
    let mut child = s
        .spawn_as_client(Command::new("cmd.exe").args([
            "/V:ON",
            "/C",
            "set /p LINE=& echo got [!LINE!]",
        ]))
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"a line in\r\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.trim_end(), "got [a line in]", "{out:?}");
    let mut long = s
        .spawn_as_client(Command::new(r"C:\windows\system32\ping.exe").args([
            "-n",
            "30",
            "127.0.0.1",
        ]))
        .unwrap();
    assert!(long.try_wait().unwrap().is_none());
    long.kill().unwrap();
    assert!(!long.wait().unwrap().success());
}

/// A client that allowed identification only cannot be acted as, and a
/// thread already impersonating cannot spawn as another client.
#[test]
fn spawn_as_client_is_refused_where_impersonation_is() {
    use std::process::Command;
    let name = unique("spawn-refused");
    let listener = ServerOptions::new().create(&name).unwrap();
    let _c = ClientOptions::new()
        .impersonation_level(ImpersonationLevel::Identification)
        .open(&name)
        .unwrap();
    let s = listener.accept().unwrap();
    let mut cmd = Command::new("cmd.exe");
    cmd.args(["/C", "exit 0"]);
    {
        let _guard = s.impersonate().unwrap();
        let e = s.spawn_as_client(&mut cmd).unwrap_err();
        assert_eq!(e.code(), ErrorCode::CannotImpersonate, "{e}");
    }
    match s.spawn_as_client(&mut cmd) {
        Err(e) => assert_eq!(e.code(), ErrorCode::CannotImpersonate, "{e}"),
        Ok(mut child) if sys::running_under_wine() => {
            child.wait().unwrap();
            crate::skipped::skipped(
                "Wine gives an identification-only client's server an \
                 impersonation token; the refusal is checked on Windows only",
            );
        }
        Ok(_) => panic!("an identification-only client was acted as"),
    }
}

/// A write timeout: a write nobody reads in time fails with *timeout*,
/// and the end is cut from then on (its reader may have taken part of the
/// message), while a write that is read in time is not bounded by it.
#[test]
fn a_write_timeout_gives_up_and_cuts_the_pipe() {
    let name = unique("write-timeout");
    let listener = ServerOptions::new()
        .in_buffer_size(4096)
        .out_buffer_size(4096)
        .create(&name)
        .unwrap();
    let mut c = ClientOptions::new().open(&name).unwrap();
    let mut s = listener.accept().unwrap();
    s.set_write_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let big = vec![7u8; 1 << 20];
    thread::scope(|scope| {
        let reader = scope.spawn(|| c.recv_message());
        s.write_message(&big).unwrap();
        assert_eq!(reader.join().unwrap().unwrap().len(), big.len());
    });
    let e = s.write_message(&big).unwrap_err();
    assert_eq!(e.code(), ErrorCode::Timeout, "{e}");
    let e = s.write_message(b"after the cut").unwrap_err();
    assert_eq!(e.code(), ErrorCode::BrokenPipe, "{e}");
    let e = s.recv_message().unwrap_err();
    assert_eq!(e.code(), ErrorCode::BrokenPipe, "{e}");
}

/// A client that asks for no access gets what the pipe's direction
/// allows, as on Linux: write alone on an inbound pipe, read alone on an
/// outbound one, and its info says so.
#[test]
fn a_client_of_a_one_way_pipe_gets_the_access_its_direction_allows() {
    for (direction, access) in [
        (Direction::Inbound, Access::Write),
        (Direction::Outbound, Access::Read),
        (Direction::Duplex, Access::ReadWrite),
    ] {
        let name = unique(&format!("one-way-{direction:?}"));
        let listener = ServerOptions::new()
            .direction(direction)
            .create(&name)
            .unwrap();
        let mut c = ClientOptions::new().open(&name).unwrap();
        let mut s = listener.accept().unwrap();
        let info = c.info();
        assert_eq!(
            (info.direction, info.access),
            (direction, access),
            "{info:?}"
        );
        assert_eq!(s.info().direction, direction);
        if access.writes() {
            c.write_message(b"to the server").unwrap();
            assert_eq!(s.recv_message().unwrap(), b"to the server");
        }
        if access.reads() {
            s.write_message(b"to the client").unwrap();
            assert_eq!(c.recv_message().unwrap(), b"to the client");
        }
    }
}

/// `info` while an `accept` waits counts what is connected, not every
/// instance (the waiting one is still listening).
#[test]
fn the_listener_counts_connections_while_accept_waits() {
    let name = unique("info-accepting");
    let listener = ServerOptions::new().max_instances(3).create(&name).unwrap();
    thread::scope(|scope| {
        let waiting: Vec<_> = (0..2)
            .map(|_| scope.spawn(|| listener.accept_timeout(Duration::from_millis(500))))
            .collect();
        thread::sleep(Duration::from_millis(100));
        let info = listener.info();
        assert_eq!(info.cur_instances, 0, "{info:?}");
        for w in waiting {
            assert!(w.join().unwrap().unwrap().is_none());
        }
    });
    let _c = ClientOptions::new().open(&name).unwrap();
    let _s = listener.accept().unwrap();
    assert_eq!(listener.info().cur_instances, 1);
}
