//! One behaviour suite run against both front ends, and every mix of them:
//! each behaviour below runs four times, with a blocking or a tokio server
//! (in a child process: the `serve` and `serve_async` roles) and a blocking
//! or a tokio client (here, behind [`Client`]); built without the `tokio`
//! feature, it runs blocking with blocking only. Then futures dropped
//! mid-operation: they leave the tokio server serving everyone else, and
//! cancelled reads lose nothing.
//!
//! The server-side suites (`handshake`, `instances`, `faults`) run each test
//! against both server front ends too (`common::on_both_servers!`).

use std::io::{Read, Write};
use std::sync::Mutex;
use std::time::Duration;

use npipe::{
    Access, ClientOptions, ErrorCode, MessageRead, Peek, PipeInfo, PipeType, ReadMode, Result,
    ServerOptions, Wait,
};

use crate::common::{eventually, server_on, unique, waiting, Child, Front, HANG};

/// A server child of either front end, ready to take clients.
fn serve(front: Front, name: &str, opts: &[&str]) -> Child {
    server_on(front, name, opts)
}

#[cfg(feature = "tokio")]
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A client end of either front end; the tokio one runs on a runtime of
/// its own.
pub struct Client {
    #[cfg(feature = "tokio")]
    rt: Option<tokio::runtime::Runtime>,
    end: End,
}

enum End {
    Blocking(npipe::PipeClient),
    #[cfg(feature = "tokio")]
    Tokio(npipe::tokio::PipeClient),
}

macro_rules! both {
    ($self:ident, $c:ident => $blocking:expr, $tokio:expr) => {
        match &mut $self.end {
            End::Blocking($c) => $blocking,
            #[cfg(feature = "tokio")]
            End::Tokio($c) => $self.rt.as_ref().unwrap().block_on($tokio),
        }
    };
}

/// The same for calls that do not wait.
macro_rules! either {
    ($self:expr, $c:ident => $call:expr) => {
        match $self {
            End::Blocking($c) => $call,
            #[cfg(feature = "tokio")]
            End::Tokio($c) => $call,
        }
    };
}

impl Client {
    fn open(front: Front, name: &str, opts: &ClientOptions) -> Result<Client> {
        match front {
            Front::Blocking => Ok(Client {
                #[cfg(feature = "tokio")]
                rt: None,
                end: End::Blocking(opts.open(name)?),
            }),
            #[cfg(not(feature = "tokio"))]
            Front::Tokio => unreachable!("built without the tokio feature"),
            #[cfg(feature = "tokio")]
            Front::Tokio => {
                let rt = runtime();
                let c = rt.block_on(opts.open_async(name))?;
                Ok(Client {
                    rt: Some(rt),
                    end: End::Tokio(c),
                })
            }
        }
    }

    fn write_message(&mut self, m: &[u8]) -> Result<()> {
        both!(self, c => c.write_message(m), c.write_message(m))
    }

    fn recv_message(&mut self) -> Result<Vec<u8>> {
        both!(self, c => c.recv_message(), c.recv_message())
    }

    fn read_message(&mut self, buf: &mut [u8]) -> Result<MessageRead> {
        both!(self, c => c.read_message(buf), c.read_message(buf))
    }

    fn transact(&mut self, m: &[u8]) -> Result<Vec<u8>> {
        both!(self, c => c.transact(m), c.transact(m))
    }

    fn transact_into(&mut self, m: &[u8], reply: &mut [u8]) -> Result<MessageRead> {
        both!(self, c => c.transact_into(m, reply), c.transact_into(m, reply))
    }

    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        #[cfg(feature = "tokio")]
        use tokio::io::AsyncReadExt;
        both!(self, c => c.read(buf), c.read(buf))
    }

    fn read_exact(&mut self, buf: &mut [u8]) -> std::io::Result<()> {
        #[cfg(feature = "tokio")]
        use tokio::io::AsyncReadExt;
        both!(self, c => c.read_exact(buf), async { c.read_exact(buf).await.map(drop) })
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        #[cfg(feature = "tokio")]
        use tokio::io::AsyncWriteExt;
        both!(self, c => c.write_all(buf), c.write_all(buf))
    }

    fn shutdown_write(&mut self) -> Result<()> {
        both!(self, c => c.shutdown_write(), c.shutdown_write())
    }

    fn flush_buffers(&mut self) -> Result<()> {
        both!(self, c => c.flush_buffers(), c.flush_buffers())
    }

    fn peek(&mut self, buf: &mut [u8]) -> Result<Peek> {
        either!(&mut self.end, c => c.peek(buf))
    }

    fn set_read_mode(&mut self, mode: ReadMode) -> Result<()> {
        either!(&mut self.end, c => c.set_read_mode(mode))
    }

    fn info(&self) -> PipeInfo {
        either!(&self.end, c => c.info())
    }

    fn server_process_id(&self) -> u32 {
        either!(&self.end, c => c.server_process_id())
    }

    /// Both ends' processes and logon sessions as this client end sees
    /// them: server pid and session, client pid and session.
    fn ids(&self) -> String {
        either!(&self.end, c => ids_line(
            c.server_process_id(),
            c.server_session_id(),
            c.client_process_id(),
            c.client_session_id()
        ))
    }
}

fn ids_line(
    server: u32,
    server_session: Option<u32>,
    client: u32,
    client_session: Option<u32>,
) -> String {
    format!("{server} {server_session:?} {client} {client_session:?}")
}

fn open(front: Front, name: &str) -> Result<Client> {
    Client::open(front, name, &ClientOptions::new())
}

fn call(front: Front, name: &str, request: &[u8], timeout: Duration) -> Result<Vec<u8>> {
    match front {
        Front::Blocking => npipe::call(name, request, timeout),
        #[cfg(not(feature = "tokio"))]
        Front::Tokio => unreachable!("built without the tokio feature"),
        #[cfg(feature = "tokio")]
        Front::Tokio => runtime().block_on(npipe::tokio::call(name, request, timeout)),
    }
}

/// Four tests per behaviour: every server front end with every client one.
macro_rules! mixes {
    ($($behaviour:ident),* $(,)?) => {$(
        mod $behaviour {
            use super::Front::Blocking;
            #[cfg(feature = "tokio")]
            use super::Front::Tokio;
            #[test]
            fn blocking_server_blocking_client() {
                super::$behaviour(Blocking, Blocking)
            }
            #[cfg(feature = "tokio")]
            #[test]
            fn blocking_server_tokio_client() {
                super::$behaviour(Blocking, Tokio)
            }
            #[cfg(feature = "tokio")]
            #[test]
            fn tokio_server_blocking_client() {
                super::$behaviour(Tokio, Blocking)
            }
            #[cfg(feature = "tokio")]
            #[test]
            fn tokio_server_tokio_client() {
                super::$behaviour(Tokio, Tokio)
            }
        }
    )*};
}

mixes!(
    message_boundaries,
    more_data,
    byte_read_mode_on_a_message_pipe,
    byte_pipe,
    transact,
    call_named_pipe,
    peek,
    busy_then_first_come_first_served,
    inbound_direction,
    outbound_direction,
    disconnect,
    peer_processes,
    flush_waits_until_the_peer_has_read,
    flush_fails_when_the_reader_closes_with_data_unread,
    both_ends_know_both_processes_and_sessions,
);

fn message_boundaries(server: Front, client: Front) {
    let name = unique("mix-bounds");
    let _srv = serve(server, &name, &[]);
    let mut c = open(client, &name).unwrap();
    let big = vec![0xabu8; 300_000];
    let msgs: Vec<&[u8]> = vec![b"one", b"", b"three", &big, b"", b"x"];
    for m in &msgs {
        c.write_message(m).unwrap();
    }
    for m in &msgs {
        assert_eq!(c.recv_message().unwrap(), *m);
    }
    // Through (Async)Write, each write is one message too.
    c.write_all(b"via write").unwrap();
    assert_eq!(c.recv_message().unwrap(), b"via write");
    // A message larger than the socket buffers through (Async)Write: it is
    // still one message, delivered whole while this end waits to read.
    let large: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    c.write_all(&large).unwrap();
    assert!(
        c.recv_message().unwrap() == large,
        "the large message changed"
    );
}

fn more_data(server: Front, client: Front) {
    let name = unique("mix-moredata");
    let _srv = serve(server, &name, &[]);
    let mut c = open(client, &name).unwrap();
    c.write_message(b"0123456789").unwrap();
    c.write_message(b"next").unwrap();
    let mut buf = [0u8; 4];
    assert_eq!(c.read_message(&mut buf).unwrap(), MessageRead::MoreData(4));
    assert_eq!(&buf, b"0123");
    assert_eq!(c.read_message(&mut buf).unwrap(), MessageRead::MoreData(4));
    assert_eq!(&buf, b"4567");
    assert_eq!(c.read_message(&mut buf).unwrap(), MessageRead::Complete(2));
    assert_eq!(&buf[..2], b"89");
    assert_eq!(c.read_message(&mut buf).unwrap(), MessageRead::Complete(4));
    assert_eq!(&buf, b"next");
    // (Async)Read in message mode never crosses a boundary, and skips
    // zero-length messages.
    c.write_message(b"abcdef").unwrap();
    c.write_message(b"").unwrap();
    c.write_message(b"gh").unwrap();
    let mut big = [0u8; 64];
    assert_eq!(c.read(&mut big).unwrap(), 6);
    assert_eq!(c.read(&mut big).unwrap(), 2);
    assert_eq!(&big[..2], b"gh");
}

fn byte_read_mode_on_a_message_pipe(server: Front, client: Front) {
    let name = unique("mix-bytemode");
    let _srv = serve(server, &name, &[]);
    let mut opts = ClientOptions::new();
    opts.read_mode(ReadMode::Byte);
    let mut c = Client::open(client, &name, &opts).unwrap();
    c.write_message(b"abc").unwrap();
    c.write_message(b"").unwrap();
    c.write_message(b"defg").unwrap();
    let mut got = [0u8; 7];
    c.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"abcdefg");
    c.set_read_mode(ReadMode::Message).unwrap();
    c.write_message(b"whole").unwrap();
    assert_eq!(c.recv_message().unwrap(), b"whole");
}

fn byte_pipe(server: Front, client: Front) {
    let name = unique("mix-bytepipe");
    let _srv = serve(server, &name, &["type=byte"]);
    let mut opts = ClientOptions::new();
    opts.read_mode(ReadMode::Message);
    let e = Client::open(client, &name, &opts).err().unwrap();
    assert_eq!(e.code(), ErrorCode::InvalidParameter);
    let mut c = open(client, &name).unwrap();
    assert_eq!(
        c.set_read_mode(ReadMode::Message).unwrap_err().code(),
        ErrorCode::InvalidParameter
    );
    assert_eq!(c.info().read_mode, ReadMode::Byte);
    c.write_all(b"stream ").unwrap();
    c.write_all(b"of bytes").unwrap();
    let mut got = [0u8; 15];
    c.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"stream of bytes");
    // A large transfer comes back whole through the raw stream, in chunks:
    // writing it all before reading any would deadlock against an echo
    // server once both directions' socket buffers are full.
    let big: Vec<u8> = (0..800_000u32).map(|i| i as u8).collect();
    let mut back = vec![0u8; big.len()];
    for (out, into) in big.chunks(64 << 10).zip(back.chunks_mut(64 << 10)) {
        c.write_all(out).unwrap();
        c.read_exact(into).unwrap();
    }
    assert!(back == big, "the byte stream came back changed");
    assert_eq!(
        c.write_message(b"x").unwrap_err().code(),
        ErrorCode::InvalidParameter
    );
    // And a byte-type server is refused message read mode at creation.
    let e = ServerOptions::new()
        .pipe_type(PipeType::Byte)
        .read_mode(ReadMode::Message)
        .create(unique("mix-bytepipe-create").as_str())
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::InvalidParameter);
}

fn transact(server: Front, client: Front) {
    let name = unique("mix-transact");
    let _srv = serve(server, &name, &[]);
    let mut c = open(client, &name).unwrap();
    assert_eq!(c.transact(b"ping").unwrap(), b"ping");
    assert_eq!(c.transact(b"").unwrap(), b"");
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
    // TransactNamedPipe into the caller's buffer: Windows fills the buffer
    // and returns ERROR_MORE_DATA, the rest of the reply left to ReadFile.
    let mut reply = [0u8; 5];
    assert_eq!(
        c.transact_into(b"a longer reply", &mut reply).unwrap(),
        MessageRead::MoreData(5)
    );
    assert_eq!(&reply, b"a lon");
    let mut rest = [0u8; 32];
    assert_eq!(c.read_message(&mut rest).unwrap(), MessageRead::Complete(9));
    assert_eq!(&rest[..9], b"ger reply");
    assert_eq!(
        c.transact_into(b"fits", &mut rest).unwrap(),
        MessageRead::Complete(4)
    );
    c.set_read_mode(ReadMode::Byte).unwrap();
    assert_eq!(c.transact(b"x").unwrap_err().code(), ErrorCode::BadPipe);
    assert_eq!(
        c.transact_into(b"x", &mut rest).unwrap_err().code(),
        ErrorCode::BadPipe
    );
}

fn call_named_pipe(server: Front, client: Front) {
    let name = unique("mix-call");
    let _srv = serve(server, &name, &[]);
    let t = Duration::from_secs(5);
    assert_eq!(call(client, &name, b"hello", t).unwrap(), b"hello");
    let big = vec![7u8; 200_000]; // too big to ride with the handshake
    assert_eq!(call(client, &name, &big, t).unwrap(), big);
    let e = call(client, &unique("mix-call-nosuch"), b"x", t).unwrap_err();
    assert_eq!(e.code(), ErrorCode::FileNotFound);
    assert!(e.to_string().contains("does not exist"), "{e}");
    let bytes = unique("mix-call-byte");
    let _b = serve(server, &bytes, &["type=byte"]);
    let e = call(client, &bytes, b"x", t).unwrap_err();
    assert_eq!(e.code(), ErrorCode::BadPipe);
}

fn peek(server: Front, client: Front) {
    let name = unique("mix-peek");
    let _srv = serve(server, &name, &[]);
    let mut c = open(client, &name).unwrap();
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
    // Windows: lpBytesLeftThisMessage counts what the peek did not copy.
    assert_eq!((p.available, p.message_left), (12, 0));
    assert_eq!(c.recv_message().unwrap(), b"first");
    let p = c.peek(&mut buf).unwrap();
    assert_eq!((p.copied, p.message_left), (7, 0));
    assert_eq!(c.recv_message().unwrap(), b"second!");
    // Windows (PeekNamedPipe on a 10-byte message): a 4-byte peek copies
    // 4 and leaves 6.
    c.write_message(b"0123456789").unwrap();
    let mut four = [0u8; 4];
    let p = eventually("the echo", || {
        let p = c.peek(&mut four).unwrap();
        (p.available >= 10).then_some(p)
    });
    assert_eq!((p.copied, p.message_left), (4, 6));
    assert_eq!(c.recv_message().unwrap(), b"0123456789");
    // Windows: after ReadFile took 10 bytes of a 20-byte message
    // (ERROR_MORE_DATA), a 1-byte peek reports 9 left.
    c.write_message(b"abcdefghijklmnopqrst").unwrap();
    let mut ten = [0u8; 10];
    assert_eq!(c.read_message(&mut ten).unwrap(), MessageRead::MoreData(10));
    let mut one = [0u8; 1];
    let p = c.peek(&mut one).unwrap();
    assert_eq!((p.copied, p.message_left, one[0]), (1, 9, b'k'));
    assert_eq!(c.read_message(&mut ten).unwrap(), MessageRead::Complete(10));
    // Windows: a peek on a message pipe never crosses a message boundary,
    // whatever the read mode: with 11 and 10 bytes queued, a 32-byte peek
    // in byte read mode copies 11, and the total still counts 21.
    c.write_message(b"eleven byte").unwrap();
    c.write_message(b"ten bytes!").unwrap();
    c.set_read_mode(ReadMode::Byte).unwrap();
    let mut wide = [0u8; 32];
    let p = eventually("both echoes", || {
        let p = c.peek(&mut wide).unwrap();
        (p.available >= 21).then_some(p)
    });
    assert_eq!((p.copied, p.available, p.message_left), (11, 21, 0));
    assert_eq!(&wide[..11], b"eleven byte");
}

fn busy_then_first_come_first_served(server: Front, client: Front) {
    let name = unique("mix-fifo");
    let _srv = serve(server, &name, &["instances=1"]);
    let holder = open(client, &name).unwrap();
    let e = open(client, &name).err().unwrap();
    assert_eq!((e.code(), e.win32_code()), (ErrorCode::PipeBusy, 231));
    let mut opts = ClientOptions::new();
    opts.wait(Wait::Timeout(Duration::from_millis(100)));
    let e = Client::open(client, &name, &opts).err().unwrap();
    assert_eq!((e.code(), e.win32_code()), (ErrorCode::Timeout, 121));
    let order = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for i in 0..3u32 {
            let (name, order) = (&name, &order);
            s.spawn(move || {
                let mut opts = ClientOptions::new();
                opts.wait(Wait::Forever);
                let mut c = Client::open(client, name, &opts).unwrap();
                order.lock().unwrap().push(i);
                assert_eq!(c.transact(&i.to_le_bytes()).unwrap(), i.to_le_bytes());
            });
            eventually("the waiter to queue", || {
                (waiting(name) == i + 1).then_some(())
            });
        }
        drop(holder);
    });
    assert_eq!(*order.lock().unwrap(), vec![0, 1, 2]);
}

fn inbound_direction(server: Front, client: Front) {
    let name = unique("mix-inbound");
    let mut srv = serve(server, &name, &["direction=in", "mode=inbound"]);
    for access in [Access::Read, Access::ReadWrite] {
        let mut opts = ClientOptions::new();
        opts.access(access);
        let e = Client::open(client, &name, &opts).err().unwrap();
        assert_eq!(e.code(), ErrorCode::AccessDenied);
    }
    let mut c = open(client, &name).unwrap();
    assert_eq!(c.info().access, Access::Write);
    srv.expect("conn");
    assert_eq!(srv.expect("write_err"), "5");
    let mut buf = [0u8; 8];
    assert_eq!(
        c.read_message(&mut buf).unwrap_err().code(),
        ErrorCode::AccessDenied
    );
    c.write_message(b"up").unwrap();
    assert_eq!(srv.expect("msg"), "up");
}

fn outbound_direction(server: Front, client: Front) {
    let name = unique("mix-outbound");
    let mut srv = serve(server, &name, &["direction=out", "mode=outbound"]);
    let mut opts = ClientOptions::new();
    opts.access(Access::Write);
    let e = Client::open(client, &name, &opts).err().unwrap();
    assert_eq!(e.code(), ErrorCode::AccessDenied);
    let mut c = open(client, &name).unwrap();
    assert_eq!(c.info().access, Access::Read);
    srv.expect("conn");
    assert_eq!(srv.expect("read_err"), "5");
    assert_eq!(
        c.write_message(b"x").unwrap_err().code(),
        ErrorCode::AccessDenied
    );
    assert_eq!(c.recv_message().unwrap(), b"hello from server");
    assert_eq!(srv.expect("sent"), "");
}

fn disconnect(server: Front, client: Front) {
    let name = unique("mix-disconnect");
    let mut srv = serve(server, &name, &["instances=1", "mode=disconnect"]);
    let mut c = open(client, &name).unwrap();
    srv.expect("conn");
    c.write_message(b"bye").unwrap();
    assert_eq!(srv.expect("got"), "bye");
    assert_eq!(srv.expect("disconnected"), "");
    assert_eq!(srv.expect("after"), "233");
    // Windows: ImpersonateNamedPipeClient with no client connected fails
    // with ERROR_CANNOT_IMPERSONATE (1368); so does running a program as it.
    assert_eq!(srv.expect("imp"), "1368 1368");
    // Windows: after DisconnectNamedPipe the client's writes, flushes,
    // peeks and reads fail with ERROR_PIPE_NOT_CONNECTED (233).
    let e = c.write_message(b"after").unwrap_err();
    assert_eq!(e.code(), ErrorCode::PipeNotConnected, "write: {e}");
    let e = c.flush_buffers().unwrap_err();
    assert_eq!(e.code(), ErrorCode::PipeNotConnected, "flush: {e}");
    let e = c.peek(&mut [0u8; 4]).unwrap_err();
    assert_eq!(e.code(), ErrorCode::PipeNotConnected, "peek: {e}");
    let e = c.recv_message().unwrap_err();
    assert_eq!(e.code(), ErrorCode::PipeNotConnected, "read: {e}");
    let e = c.recv_message().unwrap_err();
    assert_eq!(e.code(), ErrorCode::PipeNotConnected, "read again: {e}");
    let mut opts = ClientOptions::new();
    opts.wait(Wait::Timeout(HANG));
    let mut c2 = Client::open(client, &name, &opts).unwrap();
    srv.expect("conn");
    c2.write_message(b"again").unwrap();
    assert_eq!(srv.expect("got"), "again");
}

fn peer_processes(server: Front, client: Front) {
    let name = unique("mix-peers");
    let mut srv = serve(server, &name, &["mode=hold"]);
    let c = open(client, &name).unwrap();
    assert_eq!(c.server_process_id(), srv.pid());
    let line = srv.expect("conn");
    let pid: u32 = line.split(' ').next().unwrap().parse().unwrap();
    assert_eq!(pid, std::process::id());
}

/// Windows: each end can ask for the client's and the server's process and
/// session ids (GetNamedPipeClientProcessId on the client end is its own
/// pid; GetNamedPipeServerSessionId exists). The server here runs in a
/// login session of its own where the system allows one, so the two
/// sessions differ.
fn both_ends_know_both_processes_and_sessions(server: Front, client: Front) {
    let name = unique("mix-ids");
    let role = match server {
        Front::Blocking => "serve",
        Front::Tokio => "serve_async",
    };
    let mut srv = crate::common::spawn_in_new_login(role, &[&name, "mode=ids"]);
    srv.expect("ready");
    let c = open(client, &name).unwrap();
    srv.expect("conn");
    let from_server = srv.expect("ids");
    let from_client = c.ids();
    assert_eq!(from_server, from_client, "both ends agree");
    let mine = crate::peers::own_logon_session();
    let expected_tail = format!("{} Some({mine})", std::process::id());
    assert!(
        from_client.starts_with(&format!("{} Some(", srv.pid())),
        "{from_client}"
    );
    assert!(from_client.ends_with(&expected_tail), "{from_client}");
    if from_client.contains(&format!(" Some({mine}) ")) {
        crate::shared_copy::skipped(&format!(
            "(in part) the server could not start a login session of its own \
             here, so its session and ours are the same number: {from_client}"
        ));
    }
}

fn flush_waits_until_the_peer_has_read(server: Front, client: Front) {
    let name = unique("mix-flush");
    let mut srv = serve(server, &name, &["type=byte", "mode=go"]);
    let mut c = open(client, &name).unwrap();
    srv.expect("conn");
    c.write_all(&vec![1u8; 100_000]).unwrap();
    c.shutdown_write().unwrap();
    std::thread::scope(|s| {
        let flusher = s.spawn(|| c.flush_buffers());
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

/// Windows: FlushFileBuffers returns when the reader goes away, failing
/// with ERROR_BROKEN_PIPE (109) if it closed with data unread (it used to
/// report success: the kernel drops the unread bytes, and the queue then
/// read empty).
fn flush_fails_when_the_reader_closes_with_data_unread(server: Front, client: Front) {
    let name = unique("mix-flush-closed");
    let mut srv = serve(server, &name, &["type=byte", "mode=close_unread"]);
    let mut c = open(client, &name).unwrap();
    srv.expect("conn");
    c.write_all(&vec![1u8; 100_000]).unwrap();
    std::thread::scope(|s| {
        let flusher = s.spawn(|| c.flush_buffers());
        srv.tell("go");
        let e = flusher.join().unwrap().unwrap_err();
        assert_eq!(e.code(), ErrorCode::BrokenPipe, "{e}");
    });
    assert_eq!(srv.expect("closed_unread"), "");
}

#[cfg(feature = "tokio")]
#[test]
fn a_write_future_dropped_mid_message_breaks_only_that_pipe() {
    let name = unique("mix-cutfuture");
    let mut srv = serve(Front::Tokio, &name, &[]);
    let rt = runtime();
    let mut c = rt
        .block_on(ClientOptions::new().open_async(name.as_str()))
        .unwrap();
    srv.expect("conn");
    // A message much larger than the socket buffers, given no time to go out.
    let big = vec![1u8; 48 << 20];
    let cut =
        rt.block_on(async { tokio::time::timeout(Duration::ZERO, c.write_message(&big)).await });
    // 48 MiB cannot fit the socket buffers in one poll: the write is cut.
    assert!(cut.is_err(), "the write finished in no time");
    // Part went out: this pipe is broken for good, and its peer sees a
    // broken pipe rather than a cut message.
    let e = rt.block_on(c.write_message(b"more")).unwrap_err();
    assert_eq!(e.code(), ErrorCode::BrokenPipe);
    drop(c);
    assert_eq!(srv.expect("end"), "109");
    let mut other = open(Front::Blocking, &name).unwrap();
    assert_eq!(other.transact(b"unaffected").unwrap(), b"unaffected");
}

/// An async server in this process, on its own thread and runtime, whose
/// reads are cancelled over and over by short timeouts; what it receives
/// must still be every message whole and in order.
#[cfg(feature = "tokio")]
#[test]
fn cancelled_reads_lose_nothing() {
    let name = unique("mix-cancel");
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let server = std::thread::spawn({
        let name = name.clone();
        move || {
            runtime().block_on(async move {
                let listener = npipe::ServerOptions::new()
                    .create_async(name.as_str())
                    .unwrap();
                ready_tx.send(()).unwrap();
                // accept is cancel-safe too: time out a few times first.
                let mut conn = loop {
                    let t = tokio::time::timeout(Duration::from_millis(1), listener.accept());
                    if let Ok(conn) = t.await {
                        break conn.unwrap();
                    }
                };
                let mut cancelled = 0u32;
                for round in 0..12u32 {
                    // Whole messages through recv_message...
                    let msg = loop {
                        let t =
                            tokio::time::timeout(Duration::from_micros(50), conn.recv_message());
                        match t.await {
                            Ok(m) => break m.unwrap(),
                            Err(_) => cancelled += 1,
                        }
                    };
                    // ...or pieced together from read_message's parts.
                    let msg = if round % 2 == 0 {
                        msg
                    } else {
                        let mut whole = msg;
                        let mut buf = vec![0u8; 1000];
                        loop {
                            let t = tokio::time::timeout(
                                Duration::from_micros(50),
                                conn.read_message(&mut buf),
                            );
                            match t.await {
                                Ok(Ok(r)) => {
                                    whole.extend_from_slice(&buf[..r.len()]);
                                    if r.is_complete() {
                                        break whole;
                                    }
                                }
                                Ok(Err(e)) => panic!("{e}"),
                                Err(_) => cancelled += 1,
                            }
                        }
                    };
                    conn.write_message(&msg).await.unwrap();
                }
                cancelled
            })
        }
    });
    ready_rx.recv().unwrap();
    let mut c = open(Front::Blocking, &name).unwrap();
    for round in 0..12u32 {
        let len = 200_000 + round as usize * 7919;
        let msg: Vec<u8> = (0..len).map(|i| (i as u32 ^ round) as u8).collect();
        // Odd rounds arrive as two messages: the first read whole, the
        // second in parts; the echo is their concatenation.
        if round % 2 == 0 {
            c.write_message(&msg).unwrap();
        } else {
            let (a, b) = msg.split_at(len / 3);
            c.write_message(a).unwrap();
            c.write_message(b).unwrap();
        }
        assert!(c.recv_message().unwrap() == msg, "round {round} changed");
    }
    let cancelled = server.join().unwrap();
    assert!(
        cancelled > 0,
        "no read was ever cancelled: the test proved nothing"
    );
}

/// Many clients at once, blocking and tokio ones, against a tokio server on
/// a multi-thread runtime in this process: every reply checked, order kept
/// per client.
#[cfg(feature = "tokio")]
#[test]
fn many_clients_on_a_multi_thread_runtime() {
    const CLIENTS: u32 = 64;
    const MESSAGES: u32 = 100;
    let name = unique("mix-many");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let listener = rt.block_on(async {
        npipe::ServerOptions::new()
            .create_async(name.as_str())
            .unwrap()
    });
    rt.spawn(crate::common::echo_forever(listener));
    let mut opts = ClientOptions::new();
    opts.wait(Wait::Timeout(HANG));
    // Half the clients are tokio tasks on the server's own runtime...
    let tasks: Vec<_> = (0..CLIENTS / 2)
        .map(|i| {
            let (name, opts) = (name.clone(), opts.clone());
            rt.spawn(async move {
                let mut c = opts.open_async(name.as_str()).await.unwrap();
                for seq in 0..MESSAGES {
                    let m = format!("{i}:{seq}");
                    assert_eq!(c.transact(m.as_bytes()).await.unwrap(), m.as_bytes());
                }
            })
        })
        .collect();
    // ...and half are blocking clients on threads of their own.
    std::thread::scope(|s| {
        for i in CLIENTS / 2..CLIENTS {
            let (name, opts) = (&name, &opts);
            s.spawn(move || {
                let mut c = opts.open(name.as_str()).unwrap();
                for seq in 0..MESSAGES {
                    c.write_message(format!("{i}:{seq}").as_bytes()).unwrap();
                }
                for seq in 0..MESSAGES {
                    assert_eq!(c.recv_message().unwrap(), format!("{i}:{seq}").as_bytes());
                }
            });
        }
    });
    rt.block_on(async {
        for t in tasks {
            t.await.unwrap();
        }
    });
}
