//! The tokio front end on the kernel's named pipes (under Wine in CI), as
//! the blocking suite in `windows/tests.rs` checks the blocking one, plus
//! what only async code can get wrong: dropped futures.

use std::future::Future;
use std::task::{Context, Poll, Waker};

use ::tokio::io::{AsyncReadExt, AsyncWriteExt};
use ::tokio::time::timeout;

use super::*;
use crate::{PipeType, SecurityDescriptor};

fn unique(test: &str) -> String {
    format!("npipe-win-async-{test}-{}", std::process::id())
}

/// Runs `test` on a multi-thread runtime, so wake-ups cross threads.
fn run<F: Future<Output = ()>>(test: F) {
    ::tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(test)
}

/// Polls `fut` once and drops it, as a `select!` that lost would.
fn poll_once_and_drop<F: Future>(fut: F) -> bool {
    let mut fut = std::pin::pin!(fut);
    let mut cx = Context::from_waker(Waker::noop());
    matches!(fut.as_mut().poll(&mut cx), Poll::Ready(_))
}

const LONG: Duration = Duration::from_secs(20);

#[test]
fn a_message_pipe_keeps_boundaries_and_says_more_data() {
    run(async {
        let name = unique("msg");
        let listener = ServerOptions::new().create_async(&name).unwrap();
        let server = ::tokio::spawn(async move {
            let mut s = listener.accept().await.unwrap();
            for m in [&b"one"[..], b"", b"a longer message"] {
                s.write_message(m).await.unwrap();
            }
            s.write_message(&vec![7u8; 1 << 20]).await.unwrap();
            s
        });
        let mut c = ClientOptions::new().open_async(&name).await.unwrap();
        assert_eq!(c.recv_message().await.unwrap(), b"one");
        assert_eq!(c.recv_message().await.unwrap(), b"");
        let mut buf = [0u8; 8];
        assert_eq!(
            c.read_message(&mut buf).await.unwrap(),
            MessageRead::MoreData(8)
        );
        assert_eq!(&buf, b"a longer");
        assert_eq!(
            c.read_message(&mut buf).await.unwrap(),
            MessageRead::Complete(8)
        );
        assert_eq!(&buf, b" message");
        assert_eq!(c.recv_message().await.unwrap(), vec![7u8; 1 << 20]);
        let s = server.await.unwrap();
        assert_eq!(c.server_process_id(), std::process::id());
        assert_eq!(s.client_process_id(), std::process::id());
        drop(s);
        let e = c.recv_message().await.unwrap_err();
        assert_eq!(e.code(), ErrorCode::BrokenPipe, "{e}");
    });
}

#[test]
fn a_byte_pipe_is_a_stream_through_async_read_and_write() {
    run(async {
        let name = unique("bytes");
        let listener = ServerOptions::new()
            .pipe_type(PipeType::Byte)
            .create_async(&name)
            .unwrap();
        let server = ::tokio::spawn(async move {
            let mut s = listener.accept().await.unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).await.unwrap();
            got
        });
        let mut c = ClientOptions::new().open_async(&name).await.unwrap();
        assert_eq!(c.read_mode(), ReadMode::Byte);
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        for chunk in data.chunks(7_000) {
            c.write_all(chunk).await.unwrap();
        }
        c.flush().await.unwrap();
        drop(c);
        assert_eq!(server.await.unwrap(), data);
    });
}

#[test]
fn busy_at_once_without_a_wait_and_a_waiting_client_gets_the_freed_instance() {
    run(async {
        let name = unique("busy");
        let listener = ServerOptions::new()
            .max_instances(1)
            .create_async(&name)
            .unwrap();
        let first = ClientOptions::new().open_async(&name).await.unwrap();
        let server = listener.accept().await.unwrap();
        assert_eq!(listener.info().cur_instances, 1);
        assert_eq!(listener.info().max_instances, Some(1));
        let e = ClientOptions::new()
            .wait(Wait::NoWait)
            .open_async(&name)
            .await
            .unwrap_err();
        assert_eq!(e.code(), ErrorCode::PipeBusy, "{e}");
        let e = ClientOptions::new()
            .wait(Wait::Timeout(Duration::from_millis(150)))
            .open_async(&name)
            .await
            .unwrap_err();
        assert_eq!(e.code(), ErrorCode::Timeout, "{e}");

        let waiter = ::tokio::spawn({
            let name = name.clone();
            async move {
                // With one instance, the name is gone for a moment after
                // it closes (as on Windows), until the server makes the
                // next: a client that rides that out also waits for it.
                ClientOptions::new()
                    .wait(Wait::Timeout(LONG))
                    .wait_for_server(true)
                    .open_async(&name)
                    .await
            }
        });
        let accepting = ::tokio::spawn(async move {
            let mut s = listener.accept().await.unwrap();
            s.recv_message().await.unwrap()
        });
        ::tokio::time::sleep(Duration::from_millis(100)).await;
        drop((first, server));
        let mut second = waiter.await.unwrap().unwrap();
        second.write_message(b"second").await.unwrap();
        assert_eq!(accepting.await.unwrap(), b"second");
    });
}

#[test]
fn transact_and_call_are_one_round_trip_each() {
    run(async {
        let name = unique("transact");
        let listener = ServerOptions::new().create_async(&name).unwrap();
        let server = ::tokio::spawn(async move {
            for _ in 0..2 {
                let mut s = listener.accept().await.unwrap();
                let req = s.recv_message().await.unwrap();
                let mut reply = req.to_ascii_uppercase();
                reply.extend(vec![b'!'; 10_000]);
                s.write_message(&reply).await.unwrap();
            }
        });
        let mut c = ClientOptions::new().open_async(&name).await.unwrap();
        let reply = c.transact(b"hello").await.unwrap();
        assert_eq!(&reply[..5], b"HELLO");
        assert_eq!(reply.len(), 10_005);
        drop(c);
        let reply = call(&name, b"call", LONG).await.unwrap();
        assert_eq!(&reply[..4], b"CALL");
        server.await.unwrap();
    });
}

#[test]
fn a_transact_with_unread_data_is_refused() {
    run(async {
        let name = unique("transact-busy");
        let listener = ServerOptions::new().create_async(&name).unwrap();
        let mut c = ClientOptions::new().open_async(&name).await.unwrap();
        let mut s = listener.accept().await.unwrap();
        // Unread data in the kernel: the kernel refuses.
        s.write_message(b"unsolicited").await.unwrap();
        let mut buf = [0u8; 64];
        while c.peek(&mut buf).unwrap().available == 0 {
            ::tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let e = c.transact(b"request").await.unwrap_err();
        assert_eq!(e.code(), ErrorCode::PipeBusy, "{e}");
        assert_eq!(c.recv_message().await.unwrap(), b"unsolicited");
        // Unread data only in this end (a read whose future was dropped
        // took it): this end refuses, as the kernel would.
        assert!(!poll_once_and_drop(c.read_message(&mut [0u8; 64])));
        s.write_message(b"taken by the dropped read").await.unwrap();
        while c.peek(&mut buf).unwrap().available == 0 {
            ::tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let e = c.transact(b"request").await.unwrap_err();
        assert_eq!(e.code(), ErrorCode::PipeBusy, "{e}");
        assert_eq!(
            c.recv_message().await.unwrap(),
            b"taken by the dropped read"
        );
    });
}

#[test]
fn peek_looks_without_taking_even_past_a_dropped_read() {
    run(async {
        let name = unique("peek");
        let listener = ServerOptions::new().create_async(&name).unwrap();
        let mut c = ClientOptions::new().open_async(&name).await.unwrap();
        let mut s = listener.accept().await.unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(c.peek(&mut buf).unwrap().available, 0);
        // A read left in flight by a dropped future takes the first
        // message into this end; peek still shows it first.
        assert!(!poll_once_and_drop(c.read_message(&mut [0u8; 5])));
        s.write_message(b"first message").await.unwrap();
        s.write_message(b"second").await.unwrap();
        let mut p = c.peek(&mut buf).unwrap();
        while p.available < 19 {
            ::tokio::time::sleep(Duration::from_millis(5)).await;
            p = c.peek(&mut buf).unwrap();
        }
        assert_eq!(&buf[..p.copied], b"first message");
        assert_eq!((p.message_left, p.available), (0, 19));
        let mut five = [0u8; 5];
        let mut p = c.peek(&mut five).unwrap();
        assert_eq!((&five, p.message_left), (b"first", 8));
        assert_eq!(
            c.read_message(&mut five).await.unwrap(),
            MessageRead::MoreData(5)
        );
        p = c.peek(&mut buf).unwrap();
        assert_eq!(&buf[..p.copied], b" message");
        assert_eq!((p.message_left, p.available), (0, 14));
        assert_eq!(c.recv_message().await.unwrap(), b" message");
        assert_eq!(c.recv_message().await.unwrap(), b"second");
    });
}

/// A read whose future is dropped before anything arrives loses nothing:
/// the operation stays with the end, and the next read gets the message.
#[test]
fn a_dropped_read_loses_no_message() {
    run(async {
        let name = unique("cancel-read");
        let listener = ServerOptions::new().create_async(&name).unwrap();
        let mut c = ClientOptions::new().open_async(&name).await.unwrap();
        let mut s = listener.accept().await.unwrap();
        let mut buf = [0u8; 64];
        let timed_out = timeout(Duration::from_millis(50), c.read_message(&mut buf)).await;
        assert!(timed_out.is_err(), "nothing was sent yet");
        s.write_message(b"after the timeout").await.unwrap();
        assert_eq!(c.recv_message().await.unwrap(), b"after the timeout");
        // Reads cut short at every point: each message is read once, in
        // order, whether by the read that timed out or by a later one.
        let mut got = Vec::new();
        for i in 0..50u32 {
            s.write_message(&i.to_le_bytes()).await.unwrap();
            let wait = Duration::from_micros(u64::from(i % 5) * 100);
            if let Ok(read) = timeout(wait, c.read_message(&mut buf)).await {
                assert_eq!(read.unwrap(), MessageRead::Complete(4));
                got.push(u32::from_le_bytes(buf[..4].try_into().unwrap()));
            }
        }
        while got.len() < 50 {
            let m = c.recv_message().await.unwrap();
            got.push(u32::from_le_bytes(m[..].try_into().unwrap()));
        }
        assert_eq!(got, (0..50).collect::<Vec<_>>());
    });
}

/// `accept` dropped while it waits loses no client.
#[test]
fn a_dropped_accept_loses_no_client() {
    run(async {
        let name = unique("cancel-accept");
        let listener = ServerOptions::new().create_async(&name).unwrap();
        assert!(timeout(Duration::from_millis(50), listener.accept())
            .await
            .is_err());
        let mut c = ClientOptions::new().open_async(&name).await.unwrap();
        let mut s = timeout(LONG, listener.accept()).await.unwrap().unwrap();
        c.write_message(b"hi").await.unwrap();
        assert_eq!(s.recv_message().await.unwrap(), b"hi");
        // A client that came and went before anyone accepted it is
        // passed over: the next accept waits for the next client.
        drop(ClientOptions::new().open_async(&name).await.unwrap());
        let late = ::tokio::spawn({
            let name = name.clone();
            async move {
                ::tokio::time::sleep(Duration::from_millis(50)).await;
                let mut c = ClientOptions::new().open_async(&name).await.unwrap();
                c.write_message(b"late").await.unwrap();
                c
            }
        });
        let mut s2 = timeout(LONG, listener.accept()).await.unwrap().unwrap();
        assert_eq!(s2.recv_message().await.unwrap(), b"late");
        let _c = late.await.unwrap();
    });
}

#[test]
fn many_clients_are_served_side_by_side() {
    run(async {
        let name = unique("many");
        let listener = ServerOptions::new().create_async(&name).unwrap();
        let server = ::tokio::spawn(async move {
            let mut tasks = Vec::new();
            for _ in 0..16 {
                let mut s = listener.accept().await.unwrap();
                tasks.push(::tokio::spawn(async move {
                    while let Ok(m) = s.recv_message().await {
                        s.write_message(&m).await.unwrap();
                    }
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
        });
        let mut clients = Vec::new();
        for i in 0..16u32 {
            let name = name.clone();
            clients.push(::tokio::spawn(async move {
                let mut c = ClientOptions::new()
                    .wait(Wait::Timeout(LONG))
                    .open_async(&name)
                    .await
                    .unwrap();
                for j in 0..20u32 {
                    let m = format!("{i}-{j}");
                    assert_eq!(c.transact(m.as_bytes()).await.unwrap(), m.as_bytes());
                }
            }));
        }
        for c in clients {
            c.await.unwrap();
        }
        server.await.unwrap();
    });
}

#[test]
fn flush_waits_for_the_reader_and_disconnect_ends_the_client() {
    run(async {
        let name = unique("flush");
        let listener = ServerOptions::new().create_async(&name).unwrap();
        let mut c = ClientOptions::new().open_async(&name).await.unwrap();
        let mut s = listener.accept().await.unwrap();
        s.write_message(b"read me").await.unwrap();
        let reader = ::tokio::spawn(async move {
            ::tokio::time::sleep(Duration::from_millis(50)).await;
            let m = c.recv_message().await.unwrap();
            (c, m)
        });
        timeout(LONG, s.flush_buffers()).await.unwrap().unwrap();
        let (mut c, m) = reader.await.unwrap();
        assert_eq!(m, b"read me");
        s.disconnect().unwrap();
        let e = s.recv_message().await.unwrap_err();
        assert_eq!(e.code(), ErrorCode::PipeNotConnected, "{e}");
        let e = c.write_message(b"anyone?").await.unwrap_err();
        assert!(
            matches!(
                e.code(),
                ErrorCode::PipeNotConnected | ErrorCode::NoData | ErrorCode::BrokenPipe
            ),
            "{e}"
        );
    });
}

#[test]
fn identities_and_impersonation_on_tokio() {
    run(async {
        let me = LocalUser::current();
        let name = unique("identity");
        let listener = ServerOptions::new()
            .security(SecurityDescriptor::default())
            .create_async(&name)
            .unwrap();
        let c = ClientOptions::new()
            .expect_server_user(me)
            .open_async(&name)
            .await
            .unwrap();
        let s = listener.accept().await.unwrap();
        assert_eq!(s.client_user(), me);
        assert_eq!(c.server_user(), me);
        assert_eq!(c.peer_identity(), Identity::Local(me));
        assert!(s.run_as_client(sys::thread_impersonates).await.unwrap());
        assert!(
            !sys::thread_impersonates(),
            "the runtime's thread was touched"
        );
        let e = ClientOptions::new()
            .expect_server_user(LocalUser::ROOT)
            .open_async(&name)
            .await
            .unwrap_err();
        assert_eq!(e.code(), ErrorCode::AccessDenied, "{e}");
    });
}

/// `AsyncWrite` reports a write done once it has started; dropping the end
/// right after must not cancel it: the reader still gets every byte, then
/// the end of the pipe.
#[test]
fn a_write_reported_done_survives_dropping_its_end() {
    run(async {
        let name = unique("write-out");
        let mut opts = ServerOptions::new();
        opts.pipe_type(PipeType::Byte).out_buffer_size(4096);
        let listener = opts.create_async(&name).unwrap();
        let mut c = ClientOptions::new().open_async(&name).await.unwrap();
        let mut s = listener.accept().await.unwrap();
        let data: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 251) as u8).collect();
        // Far more than the pipe's buffer: the write cannot finish before
        // the client reads, yet it is reported done.
        assert_eq!(s.write(&data).await.unwrap(), data.len());
        drop(s);
        let mut got = Vec::new();
        let read = timeout(LONG, async {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match c.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await;
        assert!(read.is_ok(), "the reader never saw the end");
        assert_eq!(got.len(), data.len(), "bytes reported written were lost");
        assert!(got == data);
    });
}

/// A read whose future was dropped before anything came took nothing: a
/// transact after it goes ahead (it was refused as busy).
#[test]
fn a_dropped_read_that_took_nothing_does_not_refuse_a_transact() {
    run(async {
        let name = unique("transact-after-drop");
        let listener = ServerOptions::new().create_async(&name).unwrap();
        let server = ::tokio::spawn(async move {
            let mut s = listener.accept().await.unwrap();
            let req = s.recv_message().await.unwrap();
            s.write_message(&req.to_ascii_uppercase()).await.unwrap();
            s
        });
        let mut c = ClientOptions::new().open_async(&name).await.unwrap();
        assert!(!poll_once_and_drop(c.read_message(&mut [0u8; 64])));
        let reply = timeout(LONG, c.transact(b"after")).await.unwrap();
        assert_eq!(reply.unwrap(), b"AFTER");
        let _s = server.await.unwrap();
    });
}

/// `ClientOptions::read_timeout` bounds `call_async`'s wait for the reply,
/// as on Linux: a server that reads and never answers fails the call with
/// *timeout*, and the server still got the request.
#[test]
fn a_read_timeout_bounds_call_async() {
    run(async {
        let name = unique("call-timeout");
        let listener = ServerOptions::new().create_async(&name).unwrap();
        let server = ::tokio::spawn(async move {
            let mut s = listener.accept().await.unwrap();
            let request = s.recv_message().await.unwrap();
            // Hold the connection without answering until the client goes.
            let _ = s.recv_message().await;
            request
        });
        let e = ClientOptions::new()
            .read_timeout(Duration::from_millis(100))
            .call_async(name.as_str(), b"are you there")
            .await
            .unwrap_err();
        assert_eq!(e.code(), ErrorCode::Timeout, "{e}");
        assert_eq!(
            timeout(LONG, server).await.unwrap().unwrap(),
            b"are you there"
        );
    });
}

/// The non-waiting calls, as on Linux: `try_read_message` says
/// `ERROR_NO_DATA` and takes nothing, `readable` waits for data,
/// `try_recv_message` takes a whole message only, `try_write` starts a
/// write that `writable` waits for.
#[test]
fn the_try_calls_never_wait_and_lose_nothing() {
    run(async {
        let name = unique("try");
        let listener = ServerOptions::new().create_async(&name).unwrap();
        let mut c = ClientOptions::new().open_async(&name).await.unwrap();
        let mut s = listener.accept().await.unwrap();
        let mut buf = [0u8; 16];
        let e = s.try_read_message(&mut buf).unwrap_err();
        assert_eq!(e.code(), ErrorCode::NoData, "{e}");
        assert_eq!(
            s.try_read(&mut buf).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        c.write_message(b"now").await.unwrap();
        timeout(LONG, s.readable()).await.unwrap().unwrap();
        assert_eq!(
            s.try_read_message(&mut buf).unwrap(),
            MessageRead::Complete(3)
        );
        assert_eq!(&buf[..3], b"now");

        // A message longer than one read comes whole or not at all. (Its
        // write finishes once read: it is started, and waited for last.)
        let big: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        assert_eq!(c.try_write(&big).unwrap(), big.len());
        timeout(LONG, s.readable()).await.unwrap().unwrap();
        let got = loop {
            match s.try_recv_message() {
                Ok(msg) => break msg,
                Err(e) if e.code() == ErrorCode::NoData => {
                    timeout(LONG, s.readable()).await.unwrap().unwrap()
                }
                Err(e) => panic!("{e}"),
            }
        };
        assert_eq!(got, big);
        timeout(LONG, c.writable()).await.unwrap().unwrap();

        assert_eq!(s.try_write(b"reply").unwrap(), 5);
        timeout(LONG, s.writable()).await.unwrap().unwrap();
        assert_eq!(c.recv_message().await.unwrap(), b"reply");
    });
}

/// `info` while an `accept` waits (holding the listener's lock) counts what
/// is connected, not every instance.
#[test]
fn the_listener_counts_connections_while_accept_waits() {
    run(async {
        let name = unique("info-accepting");
        let listener = std::sync::Arc::new(
            ServerOptions::new()
                .max_instances(3)
                .create_async(&name)
                .unwrap(),
        );
        let waiting = ::tokio::spawn({
            let listener = listener.clone();
            async move { listener.accept().await }
        });
        ::tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(listener.info().cur_instances, 0);
        let _c = ClientOptions::new().open_async(&name).await.unwrap();
        let _s = timeout(LONG, waiting).await.unwrap().unwrap().unwrap();
        assert_eq!(listener.info().cur_instances, 1);
    });
}
