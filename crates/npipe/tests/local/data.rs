//! Reading and writing: message boundaries, more data, byte reads of message
//! pipes, direction, transact, call, peek, flush, disconnect.

use std::io::{Read, Write};
use std::time::Duration;

use npipe::{Access, ClientOptions, ErrorCode, MessageRead, ReadMode, ServerOptions};

use crate::common::{eventually, server, unique, HANG};

#[test]
fn message_boundaries_survive_including_empty_messages() {
    let name = unique("bounds");
    let _srv = server(&name, &[]);
    let mut c = ClientOptions::new().open(&name).unwrap();
    let big = vec![0xabu8; 300_000];
    let msgs: Vec<&[u8]> = vec![b"one", b"", b"three", &big, b"", b"x"];
    for m in &msgs {
        c.write_message(m).unwrap();
    }
    for m in &msgs {
        assert_eq!(c.recv_message().unwrap(), *m);
    }
    // Through std::io::Write, each write is one message too.
    c.write_all(b"via write").unwrap();
    assert_eq!(c.recv_message().unwrap(), b"via write");
}

#[test]
fn short_buffer_gets_more_data_then_the_rest() {
    let name = unique("moredata");
    let _srv = server(&name, &[]);
    let mut c = ClientOptions::new().open(&name).unwrap();
    c.write_message(b"0123456789").unwrap();
    c.write_message(b"next").unwrap();
    let mut buf = [0u8; 4];
    assert_eq!(c.read_message(&mut buf).unwrap(), MessageRead::MoreData(4));
    assert_eq!(&buf, b"0123");
    assert_eq!(c.read_message(&mut buf).unwrap(), MessageRead::MoreData(4));
    assert_eq!(&buf, b"4567");
    assert_eq!(c.read_message(&mut buf).unwrap(), MessageRead::Complete(2));
    assert_eq!(&buf[..2], b"89");
    // The next message starts fresh.
    assert_eq!(c.read_message(&mut buf).unwrap(), MessageRead::Complete(4));
    assert_eq!(&buf, b"next");
    // std::io::Read in message mode never crosses a boundary.
    c.write_message(b"abcdef").unwrap();
    c.write_message(b"gh").unwrap();
    let mut big = [0u8; 64];
    assert_eq!(c.read(&mut big).unwrap(), 6);
    assert_eq!(c.read(&mut big).unwrap(), 2);
}

#[test]
fn byte_read_mode_on_a_message_pipe_reads_across_messages() {
    let name = unique("bytemode");
    let _srv = server(&name, &[]);
    let mut c = ClientOptions::new()
        .read_mode(ReadMode::Byte)
        .open(&name)
        .unwrap();
    c.write_message(b"abc").unwrap();
    c.write_message(b"").unwrap();
    c.write_message(b"defg").unwrap();
    let mut got = [0u8; 7];
    c.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"abcdefg");
    // And back to message mode mid-stream.
    c.set_read_mode(ReadMode::Message).unwrap();
    c.write_message(b"whole").unwrap();
    assert_eq!(c.recv_message().unwrap(), b"whole");
}

#[test]
fn byte_pipe_refuses_message_read_mode() {
    let name = unique("bytepipe");
    let _srv = server(&name, &["type=byte"]);
    let e = ClientOptions::new()
        .read_mode(ReadMode::Message)
        .open(&name)
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::InvalidParameter);
    let mut c = ClientOptions::new().open(&name).unwrap();
    assert_eq!(
        c.set_read_mode(ReadMode::Message).unwrap_err().code(),
        ErrorCode::InvalidParameter
    );
    assert_eq!(c.info().read_mode, ReadMode::Byte);
    // A byte pipe is a plain stream.
    c.write_all(b"stream ").unwrap();
    c.write_all(b"of bytes").unwrap();
    let mut got = [0u8; 15];
    c.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"stream of bytes");
    assert_eq!(
        c.write_message(b"x").unwrap_err().code(),
        ErrorCode::InvalidParameter
    );
    // And the server side refuses it at creation.
    let e = ServerOptions::new()
        .pipe_type(npipe::PipeType::Byte)
        .read_mode(ReadMode::Message)
        .create(unique("bytepipe-create").as_str())
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::InvalidParameter);
}

#[test]
fn inbound_pipe_enforces_direction_on_both_ends() {
    let name = unique("inbound");
    let mut srv = server(&name, &["direction=in", "mode=inbound"]);
    // Asking to read an inbound pipe is refused at open.
    let e = ClientOptions::new()
        .access(Access::Read)
        .open(&name)
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::AccessDenied);
    let e = ClientOptions::new()
        .access(Access::ReadWrite)
        .open(&name)
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::AccessDenied);
    // Default access follows the direction: write only.
    let mut c = ClientOptions::new().open(&name).unwrap();
    assert_eq!(c.info().access, Access::Write);
    srv.expect("conn");
    assert_eq!(
        srv.expect("write_err"),
        "5",
        "the server may not write an inbound pipe"
    );
    let mut buf = [0u8; 8];
    assert_eq!(
        c.read_message(&mut buf).unwrap_err().code(),
        ErrorCode::AccessDenied
    );
    c.write_message(b"up").unwrap();
    assert_eq!(srv.expect("msg"), "up");
}

#[test]
fn outbound_pipe_enforces_direction_on_both_ends() {
    let name = unique("outbound");
    let mut srv = server(&name, &["direction=out", "mode=outbound"]);
    let e = ClientOptions::new()
        .access(Access::Write)
        .open(&name)
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::AccessDenied);
    let mut c = ClientOptions::new().open(&name).unwrap();
    assert_eq!(c.info().access, Access::Read);
    srv.expect("conn");
    assert_eq!(
        srv.expect("read_err"),
        "5",
        "the server may not read an outbound pipe"
    );
    assert_eq!(
        c.write_message(b"x").unwrap_err().code(),
        ErrorCode::AccessDenied
    );
    assert_eq!(c.recv_message().unwrap(), b"hello from server");
}

#[test]
fn transact_and_its_unread_data_rule() {
    let name = unique("transact");
    let _srv = server(&name, &[]);
    let mut c = ClientOptions::new().open(&name).unwrap();
    assert_eq!(c.transact(b"ping").unwrap(), b"ping");
    assert_eq!(c.transact(b"").unwrap(), b"");
    // An unread reply pending: transact refuses, as TransactNamedPipe does.
    c.write_message(b"unread").unwrap();
    eventually("the echo to arrive", || {
        let p = c.peek(&mut []).unwrap();
        (p.available > 0).then_some(())
    });
    assert_eq!(
        c.transact(b"again").unwrap_err().code(),
        ErrorCode::PipeBusy
    );
    assert_eq!(c.recv_message().unwrap(), b"unread");
    assert_eq!(c.transact(b"again").unwrap(), b"again");
    // Byte read mode cannot transact.
    c.set_read_mode(ReadMode::Byte).unwrap();
    assert_eq!(c.transact(b"x").unwrap_err().code(), ErrorCode::BadPipe);
}

#[test]
fn call_named_pipe() {
    let name = unique("call");
    let _srv = server(&name, &[]);
    let reply = npipe::call(&name, b"hello", Duration::from_secs(5)).unwrap();
    assert_eq!(reply, b"hello");
    let big = vec![7u8; 200_000]; // too big to ride with the handshake
    assert_eq!(
        npipe::call(&name, &big, Duration::from_secs(5)).unwrap(),
        big
    );
    let e = npipe::call(
        unique("call-nosuch").as_str(),
        b"x",
        Duration::from_millis(10),
    )
    .unwrap_err();
    assert_eq!(e.code(), ErrorCode::FileNotFound);
    assert!(e.to_string().contains("does not exist"), "{e}");
    // CallNamedPipe on a byte pipe is refused cleanly by the server.
    let bytes = unique("call-byte");
    let _b = server(&bytes, &["type=byte"]);
    let e = npipe::call(&bytes, b"x", Duration::from_secs(1)).unwrap_err();
    assert_eq!(e.code(), ErrorCode::BadPipe);
}

#[test]
fn peek_copies_without_consuming() {
    let name = unique("peek");
    let _srv = server(&name, &[]);
    let mut c = ClientOptions::new().open(&name).unwrap();
    let mut buf = [0u8; 16];
    let p = c.peek(&mut buf).unwrap();
    assert_eq!((p.copied, p.available, p.message_left), (0, 0, 0));
    c.write_message(b"first").unwrap();
    c.write_message(b"second!").unwrap();
    let p = eventually("both echoes", || {
        let p = c.peek(&mut buf).unwrap();
        (p.available >= 12).then_some(p)
    });
    assert_eq!(p.copied, 5, "message mode peeks one message");
    assert_eq!(&buf[..5], b"first");
    assert_eq!(p.available, 12);
    assert_eq!(p.message_left, 5);
    assert_eq!(c.recv_message().unwrap(), b"first");
    let p = c.peek(&mut buf).unwrap();
    assert_eq!((p.copied, p.message_left), (7, 7));
    assert_eq!(c.recv_message().unwrap(), b"second!");
}

#[test]
fn flush_waits_until_the_peer_has_read() {
    let name = unique("flush");
    let mut srv = server(&name, &["type=byte", "mode=go"]);
    let mut c = ClientOptions::new().open(&name).unwrap();
    srv.expect("conn");
    let data = vec![1u8; 100_000];
    c.write_all(&data).unwrap();
    c.shutdown_write().unwrap();
    std::thread::scope(|s| {
        let flusher = s.spawn(|| c.flush_buffers());
        // The server has not read anything: flush must still be waiting.
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            !flusher.is_finished(),
            "flush returned before the server read"
        );
        srv.tell("go");
        flusher.join().unwrap().unwrap();
    });
    assert_eq!(srv.expect("read"), "100000");
}

#[test]
fn disconnect_drops_the_client_and_frees_the_instance() {
    let name = unique("disconnect");
    let mut srv = server(&name, &["instances=1", "mode=disconnect"]);
    let mut c = ClientOptions::new().open(&name).unwrap();
    srv.expect("conn");
    c.write_message(b"bye").unwrap();
    assert_eq!(srv.expect("got"), "bye");
    assert_eq!(srv.expect("disconnected"), "");
    assert_eq!(
        srv.expect("after"),
        "233",
        "the server end is not connected any more"
    );
    let e = c.recv_message().unwrap_err();
    assert!(
        matches!(
            e.code(),
            ErrorCode::BrokenPipe | ErrorCode::PipeNotConnected
        ),
        "{e}"
    );
    // The only instance is free again (freeing it races with our open, so
    // wait for it as a Windows client would with WaitNamedPipe).
    let mut c2 = ClientOptions::new()
        .wait(npipe::Wait::Timeout(HANG))
        .open(&name)
        .unwrap();
    srv.expect("conn");
    c2.write_message(b"again").unwrap();
    assert_eq!(srv.expect("got"), "again");
}
