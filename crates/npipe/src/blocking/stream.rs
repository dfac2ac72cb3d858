//! The connected pipe, common to both ends: reads and writes in byte and
//! message mode, peek, flush, transact, timeouts.

use std::io::{self, IoSlice, Read, Write};
use std::time::{Duration, Instant};

use crate::error::{Error, ErrorCode, Result};
use crate::info::{End, PeerCredentials, PipeInfo};
use crate::options::{Access, Direction, PipeType, ReadMode};
use crate::proto::framing::{self, Decoder, HEADER_LEN};
use crate::sys::{RecvFlagsLite, Socket};

/// The reader's buffer: enough to batch many small messages into one read.
const READ_BUFFER: usize = 16 * 1024;
/// Reads at least this large go straight into the caller's buffer.
const DIRECT_READ: usize = 8 * 1024;
/// The result of a message read (`ReadFile` on a message-mode pipe).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageRead {
    /// The whole message (or its rest) was read: this many bytes.
    Complete(usize),
    /// The buffer filled first: this many bytes were read and more of the
    /// same message follows (`ERROR_MORE_DATA`). The next read continues it.
    MoreData(usize),
}

impl MessageRead {
    /// Bytes read.
    pub fn len(self) -> usize {
        match self {
            MessageRead::Complete(n) | MessageRead::MoreData(n) => n,
        }
    }
    /// Whether no bytes were read.
    pub fn is_empty(self) -> bool {
        self.len() == 0
    }
    /// Whether the message ended with this read.
    pub fn is_complete(self) -> bool {
        matches!(self, MessageRead::Complete(_))
    }
}

/// What [`PipeStream::peek`] saw (`PeekNamedPipe`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Peek {
    /// Bytes copied into the caller's buffer.
    pub copied: usize,
    /// Bytes available to read in all (`lpTotalBytesAvail`). For message
    /// pipes this counts payload this end has buffered plus what the kernel
    /// holds, headers included for the latter.
    pub available: usize,
    /// Bytes left in the current (or next) message (`lpBytesLeftThisMessage`);
    /// 0 on byte pipes.
    pub message_left: usize,
}

/// Fixed facts about a connection, agreed in the handshake.
#[derive(Debug, Clone)]
pub(crate) struct Setup {
    pub name: String,
    pub end: End,
    pub pipe_type: PipeType,
    pub direction: Direction,
    pub access: Access,
    pub max_instances: Option<u32>,
    pub cur_instances: u32,
    pub in_buffer: u32,
    pub out_buffer: u32,
    pub max_message: u32,
    pub peer_max_message: u32,
    pub peer: PeerCredentials,
}

/// The reading side's state: buffered bytes and the position among messages.
#[derive(Debug)]
pub(crate) struct Reader {
    buf: Vec<u8>,
    pos: usize,
    decoder: Option<Decoder>,
    mode: ReadMode,
    can_read: bool,
    broken: Option<ErrorCode>,
}

/// The writing side's state.
#[derive(Debug)]
pub(crate) struct Writer {
    message: bool,
    can_write: bool,
    peer_max: u32,
    broken: bool,
}

/// A connected pipe end: the part common to [`PipeServer`](crate::PipeServer)
/// and [`PipeClient`](crate::PipeClient), which dereference to it.
///
/// On a byte-type pipe, [`Read`] and [`Write`] are the raw socket's stream.
/// On a message-type pipe each [`Write::write`] sends one message, whole, and
/// [`Read::read`] returns bytes of one message at a time (the next read
/// continues it; zero-length messages are skipped, since `Ok(0)` means end of
/// stream to `std`). [`PipeStream::read_message`] is the exact `ReadFile`:
/// it says whether the message is complete or *more data* follows, and
/// returns zero-length messages.
///
/// ```
/// use npipe::{ServerOptions, ClientOptions, MessageRead};
///
/// let name = format!("doc-stream-{}", std::process::id());
/// let listener = ServerOptions::new().create(&name)?; // message type
/// let mut client = ClientOptions::new().open(&name)?;
/// let mut server = listener.accept()?;
///
/// client.write_message(b"hello, world")?;
/// client.write_message(b"")?;
/// let mut buf = [0u8; 5];
/// assert_eq!(server.read_message(&mut buf)?, MessageRead::MoreData(5));
/// assert_eq!(&buf, b"hello");
/// let rest = server.recv_message()?;
/// assert_eq!(rest, b", world");
/// assert_eq!(server.read_message(&mut buf)?, MessageRead::Complete(0));
/// # Ok::<(), npipe::Error>(())
/// ```
#[derive(Debug)]
pub struct PipeStream {
    socket: Socket,
    reader: Reader,
    writer: Writer,
    setup: Setup,
    disconnected: bool,
    write_timeout: Option<Duration>,
}

fn io_err(e: io::Error, what: &str) -> Error {
    Error::os(e, what)
}

impl Reader {
    fn new(setup: &Setup, mode: ReadMode, leftover: Vec<u8>, can_read: bool) -> Reader {
        let decoder =
            (setup.pipe_type == PipeType::Message).then(|| Decoder::new(setup.max_message));
        Reader {
            buf: leftover,
            pos: 0,
            decoder,
            mode,
            can_read,
            broken: None,
        }
    }

    fn buffered(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    fn check(&self) -> Result<()> {
        if !self.can_read {
            return Err(Error::new(
                ErrorCode::AccessDenied,
                "this end may not read: the pipe's direction or the access asked for forbids it",
            ));
        }
        match self.broken {
            Some(ErrorCode::BadPipe) => Err(Error::new(
                ErrorCode::BadPipe,
                "the peer broke the message framing earlier; the pipe cannot be read any more",
            )),
            Some(code) => Err(Error::new(code, "the pipe was closed mid-message earlier")),
            None => Ok(()),
        }
    }

    /// Reads more bytes into the buffer; `false` at end of stream.
    fn fill(&mut self, sock: &Socket, flags: RecvFlagsLite) -> Result<bool> {
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        } else if self.pos > 0 && self.buf.capacity() - self.buf.len() < HEADER_LEN {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        if self.buf.capacity() - self.buf.len() < READ_BUFFER / 4 {
            self.buf.reserve(READ_BUFFER);
        }
        match sock.recv_spare(&mut self.buf, flags) {
            Ok(0) => Ok(false),
            Ok(_) => Ok(true),
            Err(e) => Err(recv_error(e)),
        }
    }

    fn consume_buffered(&mut self, out: &mut [u8], n: usize) {
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
    }

    /// Positions the decoder at the start of a message: `Ok(None)` at a clean
    /// end of stream (between messages), else the message's length.
    fn next_header(&mut self, sock: &Socket) -> Result<Option<u32>> {
        loop {
            let decoder = self.decoder.as_mut().expect("message pipe");
            match decoder.start(&self.buf[self.pos..]) {
                Ok(Some(len)) => {
                    self.pos += HEADER_LEN;
                    return Ok(Some(len));
                }
                Ok(None) => {
                    if !self.fill(sock, RecvFlagsLite::Block)? {
                        if self.buffered().is_empty() {
                            return Ok(None);
                        }
                        self.broken = Some(ErrorCode::BrokenPipe);
                        return Err(Error::broken_pipe("in the middle of a message header"));
                    }
                }
                Err(e) => {
                    self.broken = Some(ErrorCode::BadPipe);
                    return Err(e.into());
                }
            }
        }
    }

    /// `ReadFile` in message mode: the rest of the current message or the
    /// next one, as much as fits.
    fn read_message(&mut self, sock: &Socket, out: &mut [u8]) -> Result<MessageRead> {
        self.check()?;
        let Some(decoder) = self.decoder.as_ref() else {
            return Err(Error::new(
                ErrorCode::InvalidParameter,
                "message reads need a message-type pipe; this one is byte type",
            ));
        };
        if !decoder.in_message() {
            match self.next_header(sock)? {
                None => return Err(Error::broken_pipe("(end of stream)")),
                Some(0) => {
                    self.decoder.as_mut().expect("message pipe").consume(0);
                    return Ok(MessageRead::Complete(0));
                }
                Some(_) => {}
            }
        }
        let mut n = 0;
        loop {
            let decoder = self.decoder.as_mut().expect("message pipe");
            let take = decoder.take(self.buf.len() - self.pos).min(out.len() - n);
            out[n..n + take].copy_from_slice(&self.buf[self.pos..self.pos + take]);
            self.pos += take;
            n += take;
            if decoder.consume(take) {
                return Ok(MessageRead::Complete(n));
            }
            if n == out.len() {
                return Ok(MessageRead::MoreData(n));
            }
            // The buffer is drained and the message goes on.
            let want = (decoder.remaining().unwrap_or(0) as usize).min(out.len() - n);
            if want >= DIRECT_READ {
                let got = sock.recv(&mut out[n..n + want]).map_err(recv_error)?;
                if got == 0 {
                    self.broken = Some(ErrorCode::BrokenPipe);
                    return Err(Error::broken_pipe("in the middle of a message"));
                }
                n += got;
                if decoder.consume(got) {
                    return Ok(MessageRead::Complete(n));
                }
            } else if !self.fill(sock, RecvFlagsLite::Block)? {
                self.broken = Some(ErrorCode::BrokenPipe);
                return Err(Error::broken_pipe("in the middle of a message"));
            }
        }
    }

    /// The rest of the current message, or the next one, whole.
    fn recv_message(&mut self, sock: &Socket) -> Result<Vec<u8>> {
        self.check()?;
        let decoder = self.decoder.as_ref().ok_or_else(|| {
            Error::new(
                ErrorCode::InvalidParameter,
                "message reads need a message-type pipe",
            )
        })?;
        let len = match decoder.remaining() {
            Some(r) => r,
            None => match self.next_header(sock)? {
                None => return Err(Error::broken_pipe("(end of stream)")),
                Some(0) => {
                    self.decoder.as_mut().expect("message pipe").consume(0);
                    return Ok(Vec::new());
                }
                Some(len) => len,
            },
        };
        // `len` was checked against the maximum message size by the decoder.
        let mut msg = vec![0; len as usize];
        match self.read_message(sock, &mut msg)? {
            MessageRead::Complete(n) if n == msg.len() => Ok(msg),
            _ => unreachable!("a buffer of the message's exact length completes it"),
        }
    }

    /// `std::io::Read` semantics over either pipe type and read mode.
    fn read_std(&mut self, sock: &Socket, out: &mut [u8]) -> Result<usize> {
        self.check()?;
        if out.is_empty() {
            return Ok(0);
        }
        if self.decoder.is_none() {
            // Byte pipe: leftover bytes first, then the socket directly.
            if !self.buffered().is_empty() {
                let n = self.buffered().len().min(out.len());
                self.consume_buffered(out, n);
                return Ok(n);
            }
            return sock.recv(out).map_err(recv_error);
        }
        match self.mode {
            ReadMode::Message => loop {
                let at_boundary = !self.decoder.as_ref().expect("message pipe").in_message();
                if at_boundary {
                    match self.next_header(sock)? {
                        None => return Ok(0),
                        Some(0) => {
                            // Skipped: `Ok(0)` would read as end of stream.
                            self.decoder.as_mut().expect("message pipe").consume(0);
                            continue;
                        }
                        Some(_) => {}
                    }
                }
                return self.read_message(sock, out).map(MessageRead::len);
            },
            ReadMode::Byte => self.read_bytes_across(sock, out),
        }
    }

    /// Byte read mode on a message pipe: payload bytes across message
    /// boundaries, headers stripped. Blocks only when nothing is buffered.
    fn read_bytes_across(&mut self, sock: &Socket, out: &mut [u8]) -> Result<usize> {
        let mut n = 0;
        loop {
            let decoder = self.decoder.as_mut().expect("message pipe");
            if decoder.in_message() {
                let take = decoder.take(self.buf.len() - self.pos).min(out.len() - n);
                out[n..n + take].copy_from_slice(&self.buf[self.pos..self.pos + take]);
                self.pos += take;
                n += take;
                decoder.consume(take);
                if n == out.len() {
                    return Ok(n);
                }
                if decoder.in_message() {
                    // Buffer drained mid-message.
                    if n > 0 {
                        return Ok(n);
                    }
                    if !self.fill(sock, RecvFlagsLite::Block)? {
                        self.broken = Some(ErrorCode::BrokenPipe);
                        return Err(Error::broken_pipe("in the middle of a message"));
                    }
                    continue;
                }
            }
            // At a boundary: go on only with what is already buffered.
            if n > 0 && self.buffered().len() < HEADER_LEN {
                return Ok(n);
            }
            match self.next_header(sock)? {
                None => return Ok(n),
                Some(0) => {
                    self.decoder.as_mut().expect("message pipe").consume(0);
                }
                Some(_) => {}
            }
        }
    }

    /// Takes in what has arrived without blocking, up to the buffer's size.
    fn fill_available(&mut self, sock: &Socket) -> Result<bool> {
        let mut eof = false;
        while self.buf.len() - self.pos < 4 * READ_BUFFER {
            match self.fill(sock, RecvFlagsLite::DontWait) {
                Ok(true) => {}
                Ok(false) => {
                    eof = true;
                    break;
                }
                Err(e) if e.code() == ErrorCode::Timeout => break,
                Err(e) => return Err(e),
            }
        }
        Ok(eof)
    }

    fn peek(&mut self, sock: &Socket, out: &mut [u8]) -> Result<Peek> {
        self.check()?;
        let eof = self.fill_available(sock)?;
        let kernel = sock.readable_bytes().unwrap_or(0);
        let buffered = &self.buf[self.pos..];
        let peek = match &self.decoder {
            None => {
                let copied = buffered.len().min(out.len());
                out[..copied].copy_from_slice(&buffered[..copied]);
                Peek {
                    copied,
                    available: buffered.len() + kernel,
                    message_left: 0,
                }
            }
            Some(decoder) => {
                let scan = decoder.scan(buffered);
                let copied = copy_payload(decoder, buffered, out, self.mode == ReadMode::Message);
                Peek {
                    copied,
                    available: scan.payload + kernel,
                    message_left: scan.message_left as usize,
                }
            }
        };
        if eof && peek.available == 0 && peek.message_left == 0 {
            return Err(Error::broken_pipe("(end of stream)"));
        }
        Ok(peek)
    }

    /// Whether anything is waiting to be read (for `transact`).
    fn has_unread(&self, sock: &Socket) -> bool {
        let mid = self.decoder.as_ref().is_some_and(Decoder::in_message);
        mid || !self.buffered().is_empty() || sock.readable_bytes().unwrap_or(0) > 0
    }
}

/// Copies payload from buffered bytes, skipping headers: only the current
/// message if `one_message`, else across messages.
fn copy_payload(decoder: &Decoder, mut buf: &[u8], out: &mut [u8], one_message: bool) -> usize {
    let mut copied = 0;
    let mut remaining = decoder.remaining();
    while copied < out.len() {
        let r = match remaining {
            Some(r) => r as usize,
            None => match buf.first_chunk::<HEADER_LEN>() {
                Some(h) => {
                    buf = &buf[HEADER_LEN..];
                    u32::from_le_bytes(*h) as usize
                }
                None => break,
            },
        };
        let n = r.min(buf.len()).min(out.len() - copied);
        out[copied..copied + n].copy_from_slice(&buf[..n]);
        copied += n;
        buf = &buf[n..];
        if one_message || n < r {
            break;
        }
        remaining = None;
    }
    copied
}

fn recv_error(e: io::Error) -> Error {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
            Error::new(ErrorCode::Timeout, "the read timed out").with_source(e)
        }
        _ => io_err(e, "read from the pipe failed"),
    }
}

impl Writer {
    fn check(&self, len: usize) -> Result<()> {
        if !self.can_write {
            return Err(Error::new(
                ErrorCode::AccessDenied,
                "this end may not write: the pipe's direction or the access asked for forbids it",
            ));
        }
        if self.broken {
            return Err(Error::new(
                ErrorCode::BrokenPipe,
                "an earlier write was cut off mid-message; the pipe cannot carry more messages",
            ));
        }
        if self.message && len > self.peer_max as usize {
            return Err(Error::new(
                ErrorCode::InvalidParameter,
                format!(
                    "a {len}-byte message is larger than the other end accepts ({} bytes)",
                    self.peer_max
                ),
            ));
        }
        Ok(())
    }

    /// Sends one message whole: header and payload in one `sendmsg`, looping
    /// on partial sends. A failure after part of it went out breaks the
    /// writer for good (the peer will see *broken pipe*, never a cut message).
    fn write_message(&mut self, sock: &Socket, msg: &[u8]) -> Result<()> {
        if !self.message {
            return Err(Error::new(
                ErrorCode::InvalidParameter,
                "message writes need a message-type pipe; this one is byte type",
            ));
        }
        self.check(msg.len())?;
        let header = framing::header(msg.len() as u32);
        let total = HEADER_LEN + msg.len();
        let mut sent = 0;
        while sent < total {
            let r = if sent < HEADER_LEN {
                sock.send_vectored(&[IoSlice::new(&header[sent..]), IoSlice::new(msg)])
            } else {
                sock.send(&msg[sent - HEADER_LEN..])
            };
            match r {
                Ok(n) => sent += n,
                Err(e) => {
                    if sent > 0 {
                        self.broken = true;
                    }
                    return Err(send_error(e));
                }
            }
        }
        Ok(())
    }

    fn write_bytes(&mut self, sock: &Socket, buf: &[u8]) -> Result<usize> {
        self.check(0)?;
        sock.send(buf).map_err(send_error)
    }
}

fn send_error(e: io::Error) -> Error {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
            Error::new(ErrorCode::Timeout, "the write timed out").with_source(e)
        }
        _ => match e.raw_os_error() {
            Some(libc::EPIPE) | Some(libc::ECONNRESET) => {
                Error::new(ErrorCode::NoData, "the other end has closed the pipe").with_source(e)
            }
            _ => io_err(e, "write to the pipe failed"),
        },
    }
}

impl PipeStream {
    pub(crate) fn new(
        socket: Socket,
        setup: Setup,
        read_mode: ReadMode,
        leftover: Vec<u8>,
    ) -> PipeStream {
        let (can_read, can_write) = match setup.end {
            End::Server => (
                setup.direction.server_reads(),
                setup.direction.server_writes(),
            ),
            End::Client => (setup.access.reads(), setup.access.writes()),
        };
        PipeStream {
            reader: Reader::new(&setup, read_mode, leftover, can_read),
            writer: Writer {
                message: setup.pipe_type == PipeType::Message,
                can_write,
                peer_max: setup.peer_max_message,
                broken: false,
            },
            socket,
            setup,
            disconnected: false,
            write_timeout: None,
        }
    }

    pub(crate) fn socket(&self) -> &Socket {
        &self.socket
    }

    pub(crate) fn mark_disconnected(&mut self) {
        self.disconnected = true;
    }

    fn connected(&self) -> Result<()> {
        if self.disconnected {
            Err(Error::not_connected())
        } else {
            Ok(())
        }
    }

    /// The peer's credentials, from the kernel at connect time.
    pub(crate) fn peer(&self) -> PeerCredentials {
        self.setup.peer
    }

    /// Reads one message, or the rest of a message a short buffer cut
    /// (`ReadFile` in message read mode). [`MessageRead::MoreData`] is
    /// `ERROR_MORE_DATA`: the next read continues the same message.
    /// Zero-length messages read as `Complete(0)`. A peer that closes
    /// between messages gives *broken pipe*, as on Windows; one that dies
    /// mid-message gives *broken pipe* too, never a cut message.
    pub fn read_message(&mut self, buf: &mut [u8]) -> Result<MessageRead> {
        self.connected()?;
        self.reader.read_message(&self.socket, buf)
    }

    /// Reads the rest of the current message, or the next message, whole.
    /// Its size was checked against [`max_message_size`](crate::ServerOptions::max_message_size)
    /// before anything was allocated.
    pub fn recv_message(&mut self) -> Result<Vec<u8>> {
        self.connected()?;
        self.reader.recv_message(&self.socket)
    }

    /// Writes one message, whole and atomic (`WriteFile` on a message pipe).
    pub fn write_message(&mut self, msg: &[u8]) -> Result<()> {
        self.connected()?;
        self.writer.write_message(&self.socket, msg)
    }

    /// Sends a message and reads the reply (`TransactNamedPipe`). Needs a
    /// message pipe in message read mode; fails with *pipe busy* if unread
    /// data is waiting, as on Windows.
    pub fn transact(&mut self, request: &[u8]) -> Result<Vec<u8>> {
        self.connected()?;
        if self.setup.pipe_type != PipeType::Message || self.reader.mode != ReadMode::Message {
            return Err(Error::new(
                ErrorCode::BadPipe,
                "transact needs a message-type pipe in message read mode",
            ));
        }
        self.reader.check()?;
        self.writer.check(request.len())?;
        if self.reader.has_unread(&self.socket) {
            return Err(Error::new(
                ErrorCode::PipeBusy,
                "transact refused: unread data is waiting in the pipe (read it first)",
            ));
        }
        self.writer.write_message(&self.socket, request)?;
        self.reader.recv_message(&self.socket)
    }

    /// Copies waiting data without consuming it (`PeekNamedPipe`); never
    /// blocks. In message read mode it copies from the current message only.
    pub fn peek(&mut self, buf: &mut [u8]) -> Result<Peek> {
        self.connected()?;
        self.reader.peek(&self.socket, buf)
    }

    /// Waits until the other end has read everything written so far
    /// (`FlushFileBuffers`). Bounded by the write timeout, if one is set.
    ///
    /// This is not [`Write::flush`], which returns at once (npipe buffers
    /// nothing): waiting for the peer inside `flush` would hang code such as
    /// `BufWriter` whose peer reads only later.
    pub fn flush_buffers(&mut self) -> Result<()> {
        self.connected()?;
        let start = Instant::now();
        let mut pause = Duration::from_micros(20);
        loop {
            let unread = self
                .socket
                .unread_by_peer()
                .map_err(|e| io_err(e, "cannot query the send queue"))?;
            if unread == 0 {
                return Ok(());
            }
            if self.socket.peer_hung_up() {
                return Err(Error::broken_pipe("before reading everything"));
            }
            if let Some(t) = self.write_timeout {
                if start.elapsed() >= t {
                    return Err(Error::new(
                        ErrorCode::Timeout,
                        format!("the other end has not read the last {unread} bytes in time"),
                    ));
                }
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(5));
        }
    }

    /// Changes this end's read mode (`SetNamedPipeHandleState`). A byte-type
    /// pipe refuses message mode with `ERROR_INVALID_PARAMETER`.
    pub fn set_read_mode(&mut self, mode: ReadMode) -> Result<()> {
        if mode == ReadMode::Message && self.setup.pipe_type == PipeType::Byte {
            return Err(Error::new(
                ErrorCode::InvalidParameter,
                "a byte-type pipe cannot be read in message mode",
            ));
        }
        self.reader.mode = mode;
        Ok(())
    }

    /// This end's read mode.
    pub fn read_mode(&self) -> ReadMode {
        self.reader.mode
    }

    /// Bounds blocking reads (`None`: wait forever). A read that times out
    /// fails with `ERROR_SEM_TIMEOUT` and may be retried; nothing is lost.
    pub fn set_read_timeout(&mut self, timeout: Option<Duration>) -> Result<()> {
        self.socket
            .set_read_timeout(timeout)
            .map_err(|e| io_err(e, "cannot set the read timeout"))
    }

    /// Bounds blocking writes and [`flush_buffers`](Self::flush_buffers).
    /// A message write that times out after sending part of a message breaks
    /// the pipe (the peer sees *broken pipe*, never a cut message).
    pub fn set_write_timeout(&mut self, timeout: Option<Duration>) -> Result<()> {
        self.socket
            .set_write_timeout(timeout)
            .map_err(|e| io_err(e, "cannot set the write timeout"))?;
        self.write_timeout = timeout.filter(|t| !t.is_zero());
        Ok(())
    }

    /// Closes this end's sending side: the other end reads end of stream
    /// after the data already sent, and can still write back. (An npipe
    /// extension; Windows pipes have no half-close.)
    pub fn shutdown_write(&mut self) -> Result<()> {
        self.connected()?;
        self.socket
            .shutdown_write()
            .map_err(|e| io_err(e, "cannot shut down the sending side"))
    }

    /// The pipe as this end sees it (`GetNamedPipeInfo`,
    /// `GetNamedPipeHandleState`).
    pub fn info(&self) -> PipeInfo {
        let s = &self.setup;
        PipeInfo {
            name: s.name.clone(),
            end: s.end,
            pipe_type: s.pipe_type,
            direction: s.direction,
            access: match (self.reader.can_read, self.writer.can_write) {
                (true, false) => Access::Read,
                (false, true) => Access::Write,
                _ => Access::ReadWrite,
            },
            read_mode: self.reader.mode,
            max_instances: s.max_instances,
            cur_instances: s.cur_instances,
            in_buffer_size: s.in_buffer,
            out_buffer_size: s.out_buffer,
            max_message_size: s.max_message,
            peer_max_message_size: s.peer_max_message,
        }
    }

    /// Splits into a reading and a writing half that can be used from two
    /// threads at once (e.g. with `std::thread::scope`).
    pub fn split(&mut self) -> (ReadHalf<'_>, WriteHalf<'_>) {
        (
            ReadHalf {
                socket: &self.socket,
                reader: &mut self.reader,
                disconnected: self.disconnected,
            },
            WriteHalf {
                socket: &self.socket,
                writer: &mut self.writer,
                disconnected: self.disconnected,
            },
        )
    }
}

impl Read for PipeStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.connected()?;
        Ok(self.reader.read_std(&self.socket, buf)?)
    }
}

impl Write for PipeStream {
    /// Byte pipe: writes some bytes. Message pipe: writes `buf` as one
    /// message and returns its full length.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.connected()?;
        if self.writer.message {
            self.writer.write_message(&self.socket, buf)?;
            Ok(buf.len())
        } else {
            Ok(self.writer.write_bytes(&self.socket, buf)?)
        }
    }

    /// Returns at once: npipe keeps no write buffer. To wait until the peer
    /// has read everything, use [`PipeStream::flush_buffers`].
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The reading half of a [`PipeStream`], from [`PipeStream::split`].
#[derive(Debug)]
pub struct ReadHalf<'a> {
    socket: &'a Socket,
    reader: &'a mut Reader,
    disconnected: bool,
}

/// The writing half of a [`PipeStream`], from [`PipeStream::split`].
#[derive(Debug)]
pub struct WriteHalf<'a> {
    socket: &'a Socket,
    writer: &'a mut Writer,
    disconnected: bool,
}

impl ReadHalf<'_> {
    fn connected(&self) -> Result<()> {
        if self.disconnected {
            Err(Error::not_connected())
        } else {
            Ok(())
        }
    }

    /// As [`PipeStream::read_message`].
    pub fn read_message(&mut self, buf: &mut [u8]) -> Result<MessageRead> {
        self.connected()?;
        self.reader.read_message(self.socket, buf)
    }

    /// As [`PipeStream::recv_message`].
    pub fn recv_message(&mut self) -> Result<Vec<u8>> {
        self.connected()?;
        self.reader.recv_message(self.socket)
    }
}

impl WriteHalf<'_> {
    /// As [`PipeStream::write_message`].
    pub fn write_message(&mut self, msg: &[u8]) -> Result<()> {
        if self.disconnected {
            return Err(Error::not_connected());
        }
        self.writer.write_message(self.socket, msg)
    }

    /// As [`PipeStream::shutdown_write`].
    pub fn shutdown_write(&mut self) -> Result<()> {
        if self.disconnected {
            return Err(Error::not_connected());
        }
        self.socket
            .shutdown_write()
            .map_err(|e| io_err(e, "cannot shut down the sending side"))
    }
}

impl Read for ReadHalf<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.connected()?;
        Ok(self.reader.read_std(self.socket, buf)?)
    }
}

impl Write for WriteHalf<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.disconnected {
            return Err(Error::not_connected().into());
        }
        if self.writer.message {
            self.writer.write_message(self.socket, buf)?;
            Ok(buf.len())
        } else {
            Ok(self.writer.write_bytes(self.socket, buf)?)
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(pipe_type: PipeType) -> (PipeStream, PipeStream) {
        let (a, b) = Socket::pair().unwrap();
        let setup = |end| Setup {
            name: "t".into(),
            end,
            pipe_type,
            direction: Direction::Duplex,
            access: Access::ReadWrite,
            max_instances: None,
            cur_instances: 1,
            in_buffer: 0,
            out_buffer: 0,
            max_message: 1 << 20,
            peer_max_message: 1 << 20,
            peer: PeerCredentials {
                pid: 0,
                uid: 0,
                gid: 0,
            },
        };
        let mode = match pipe_type {
            PipeType::Byte => ReadMode::Byte,
            PipeType::Message => ReadMode::Message,
        };
        (
            PipeStream::new(a, setup(End::Server), mode, Vec::new()),
            PipeStream::new(b, setup(End::Client), mode, Vec::new()),
        )
    }

    #[test]
    fn messages_keep_boundaries_in_process() {
        let (mut a, mut b) = pair(PipeType::Message);
        for m in [&b"one"[..], b"", b"three", &[9u8; 20_000]] {
            a.write_message(m).unwrap();
        }
        assert_eq!(b.recv_message().unwrap(), b"one");
        assert_eq!(b.recv_message().unwrap(), b"");
        let mut small = [0u8; 2];
        assert_eq!(
            b.read_message(&mut small).unwrap(),
            MessageRead::MoreData(2)
        );
        assert_eq!(
            b.read_message(&mut small).unwrap(),
            MessageRead::MoreData(2)
        );
        assert_eq!(
            b.read_message(&mut small).unwrap(),
            MessageRead::Complete(1)
        );
        let mut big = vec![0u8; 30_000];
        assert_eq!(
            b.read_message(&mut big).unwrap(),
            MessageRead::Complete(20_000)
        );
    }

    #[test]
    fn peek_does_not_consume() {
        let (mut a, mut b) = pair(PipeType::Message);
        a.write_message(b"abc").unwrap();
        a.write_message(b"de").unwrap();
        let mut buf = [0u8; 10];
        let p = b.peek(&mut buf).unwrap();
        assert_eq!(
            p,
            Peek {
                copied: 3,
                available: 5,
                message_left: 3
            }
        );
        assert_eq!(&buf[..3], b"abc");
        b.set_read_mode(ReadMode::Byte).unwrap();
        let p = b.peek(&mut buf).unwrap();
        assert_eq!(p.copied, 5);
        assert_eq!(&buf[..5], b"abcde");
        let mut all = [0u8; 5];
        b.read_exact(&mut all).unwrap();
        assert_eq!(&all, b"abcde");
    }

    #[test]
    fn cut_message_is_broken_pipe_not_data() {
        let (a, mut b) = pair(PipeType::Message);
        a.socket.send(&framing::header(10)).unwrap();
        a.socket.send(b"12345").unwrap();
        drop(a);
        let mut buf = [0u8; 64];
        let e = b.read_message(&mut buf).unwrap_err();
        assert_eq!(e.code(), ErrorCode::BrokenPipe);
    }

    #[test]
    fn oversize_header_is_bad_pipe() {
        let (a, mut b) = pair(PipeType::Message);
        a.socket.send(&framing::header(u32::MAX)).unwrap();
        let e = b.recv_message().unwrap_err();
        assert_eq!(e.code(), ErrorCode::BadPipe);
        assert_eq!(b.recv_message().unwrap_err().code(), ErrorCode::BadPipe);
    }
}
