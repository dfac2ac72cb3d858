//! The connected pipe's data path without I/O: what a read or a write of a
//! connected end decides, shared by every front end (blocking, tokio).
//!
//! [`ReadCore`] holds the bytes received but not yet read and the position
//! among messages; a read is an operation ([`ReadOp`]) that the front end
//! drives step by step. Each step either finishes or says what input it
//! needs ([`Need`]): bytes into the core's buffer, or bytes straight into the
//! caller's buffer. A front end moves those bytes (a blocking `recv`, or a
//! `recv` after tokio says the socket is readable) and steps again; it never
//! parses them. After every step the core is consistent, so a front end may
//! stop between steps (a non-blocking read that has something to return,
//! a cancelled future) without losing or cutting anything: [`ReadOp::undo`]
//! puts back what an unfinished operation took.
//!
//! [`WriteCore`] and [`WriteOp`] do the same for writes: the checks, the
//! header and payload to send, partial sends, and the rule that a writer
//! whose send failed after part of a message went out sends nothing more.

use std::io::{self, IoSlice};

use crate::budget::{MemoryBudget, Reservation, UNBUDGETED};
use crate::error::{Error, ErrorCode, Result};
use crate::info::{End, PeerCredentials, PipeInfo};
use crate::proto::framing::{self, Decoder, HEADER_LEN};
use crate::transport::Delivery;
use crate::types::{Access, Direction, PipeType, ReadMode};

/// The reader's buffer: enough to batch many small messages into one read.
pub(crate) const READ_BUFFER: usize = 16 * 1024;
/// Reads at least this large go straight into the caller's buffer.
pub(crate) const DIRECT_READ: usize = 8 * 1024;

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

/// What a `peek` saw (`PeekNamedPipe`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Peek {
    /// Bytes copied into the caller's buffer.
    pub copied: usize,
    /// Bytes available to read in all (`lpTotalBytesAvail`). For message
    /// pipes this counts payload this end has buffered plus what the kernel
    /// holds, headers included for the latter.
    pub available: usize,
    /// Bytes of the current (or next) message left beyond those copied
    /// (`lpBytesLeftThisMessage`): a peek of 4 bytes into a 10-byte message
    /// leaves 6, one that copies it whole leaves 0. 0 on byte pipes.
    pub message_left: usize,
}

/// Fixed facts about a connection, agreed in the handshake.
#[derive(Debug, Clone)]
pub(crate) struct Setup {
    /// The pipe's name as `GetNamedPipeInfo` gives it (a server's ends
    /// share their listener's).
    pub name: std::sync::Arc<str>,
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
    /// The peer's kernel credentials: known at accept on a server end; on a
    /// client end read when first needed (`SO_PEERCRED` keeps them from
    /// the connect, so a late read is as exact), unless the connect had to
    /// check them (`expect_server_user`).
    pub peer: std::sync::OnceLock<PeerCredentials>,
    /// The listener's budget for partially received messages (server ends).
    pub budget: Option<std::sync::Arc<MemoryBudget>>,
}

impl Setup {
    /// The server end's setup for a client the acceptor granted `granted`
    /// access, when `cur_instances` were in use; `peer_max_message` is the
    /// client's HELLO limit, `peer` its kernel credentials; `name`: the
    /// pipe's, as `GetNamedPipeInfo` gives it.
    pub fn for_server(
        opts: &crate::options::ServerOptions,
        name: std::sync::Arc<str>,
        granted: Access,
        cur_instances: u32,
        peer_max_message: u32,
        peer: PeerCredentials,
        budget: std::sync::Arc<MemoryBudget>,
    ) -> Setup {
        Setup {
            name,
            end: End::Server,
            pipe_type: opts.pipe_type,
            direction: opts.direction,
            access: granted,
            max_instances: crate::info::max_instances_from_wire(opts.max_instances),
            cur_instances,
            in_buffer: opts.in_buffer_size,
            out_buffer: opts.out_buffer_size,
            max_message: opts.max_message_size,
            // A client may announce any limit, u32::MAX included; a message
            // that long would read as the disconnect mark.
            peer_max_message: peer_max_message.min(framing::MAX_MESSAGE_LIMIT),
            peer: peer.into(),
            budget: Some(budget),
        }
    }

    /// A duplex setup with 1 MiB message limits, for unit tests.
    #[cfg(test)]
    pub fn for_test(end: End, pipe_type: PipeType) -> Setup {
        Setup {
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
                user: crate::LocalUser(0),
                group: crate::LocalGroup(0),
            }
            .into(),
            budget: None,
        }
    }

    /// The pipe as this end sees it (`GetNamedPipeInfo`,
    /// `GetNamedPipeHandleState`), given its reading and writing state.
    pub fn info(&self, reader: &ReadCore, writer: &WriteCore) -> PipeInfo {
        PipeInfo {
            name: self.name.to_string(),
            end: self.end,
            pipe_type: self.pipe_type,
            direction: self.direction,
            access: Access::of(reader.can_read, writer.can_write),
            read_mode: reader.mode,
            max_instances: self.max_instances,
            cur_instances: self.cur_instances,
            in_buffer_size: self.in_buffer,
            out_buffer_size: self.out_buffer,
            max_message_size: self.max_message,
            peer_max_message_size: self.peer_max_message,
        }
    }

    /// Whether this end may read and write. The server end reads only what
    /// the client's grant lets it write, and writes only what it lets it
    /// read (the grant lies within the direction, so the direction is
    /// honoured too): as on Windows, the access granted at connect bounds
    /// every later operation.
    pub fn rights(&self) -> (bool, bool) {
        match self.end {
            End::Server => (self.access.writes(), self.access.reads()),
            End::Client => (self.access.reads(), self.access.writes()),
        }
    }

    /// The reading and writing state of a new connection.
    pub fn cores(&self, read_mode: ReadMode, leftover: Vec<u8>) -> (ReadCore, WriteCore) {
        let (can_read, can_write) = self.rights();
        (
            ReadCore::new(self, read_mode, leftover, can_read),
            WriteCore {
                message: self.pipe_type == PipeType::Message,
                can_write,
                peer_max: self.peer_max_message,
                broken: false,
            },
        )
    }
}

/// What a connected end holds on either front end besides its I/O handle:
/// the setup agreed in the handshake, the reading and writing state, and
/// whether this end disconnected its client.
#[derive(Debug)]
pub(crate) struct EndCore {
    pub setup: Setup,
    pub reader: ReadCore,
    pub writer: WriteCore,
    /// This end disconnected its client (`DisconnectNamedPipe`): every
    /// operation on it fails with *pipe not connected*.
    pub disconnected: bool,
}

impl EndCore {
    /// `TransactNamedPipe`'s checks before the request goes out (see
    /// [`check_transact`]); `kernel` counts what the socket holds unread.
    pub fn check_transact(&self, request_len: usize, kernel: impl FnOnce() -> usize) -> Result<()> {
        check_transact(&self.setup, &self.reader, &self.writer, request_len, kernel)
    }

    /// A new connected end.
    pub fn new(setup: Setup, read_mode: ReadMode, leftover: Vec<u8>) -> EndCore {
        let (reader, writer) = setup.cores(read_mode, leftover);
        EndCore {
            setup,
            reader,
            writer,
            disconnected: false,
        }
    }

    /// Says why the connection was broken before the application saw it:
    /// its reads' end-of-stream errors give the reason.
    pub fn broken_because(&mut self, why: String) {
        self.reader.broken_because = Some(why.into_boxed_str());
    }

    /// Fails once this end has disconnected its client.
    pub fn connected(&self) -> Result<()> {
        if self.disconnected {
            Err(Error::not_connected())
        } else {
            Ok(())
        }
    }

    /// The peer's credentials, from the kernel at connect time: `read`
    /// (from the socket) the first time if they were not known yet.
    pub fn peer(&self, read: impl FnOnce() -> PeerCredentials) -> PeerCredentials {
        *self.setup.peer.get_or_init(read)
    }

    /// The pipe as this end sees it (`GetNamedPipeInfo`,
    /// `GetNamedPipeHandleState`).
    pub fn info(&self) -> PipeInfo {
        self.setup.info(&self.reader, &self.writer)
    }

    /// A write's failure as the client should see it (see
    /// [`explain_write_failure`]); `peeked` reads what the socket holds.
    pub fn explain(&self, e: Error, peeked: impl FnOnce() -> Vec<u8>) -> Error {
        explain_write_failure(e, &self.reader, peeked)
    }

    /// `FlushFileBuffers`' verdict on where this end's sent bytes stand:
    /// `Ok(None)` once the peer has read them all, `Ok(Some(unread))` while
    /// it has not (wait and look again), an error once it never will.
    /// `peeked` is what this end could read now, not consumed (to find a
    /// server's disconnect mark).
    ///
    /// A peer that closes drops what it had not read, so the queue then
    /// reads empty too; the transport reports such a drop apart
    /// ([`Delivery::peer_dropped_unread`]). Windows fails the flush with
    /// `ERROR_BROKEN_PIPE` then, and with `ERROR_PIPE_NOT_CONNECTED` after
    /// `DisconnectNamedPipe`.
    pub fn flush_state(
        &self,
        delivery: Delivery,
        peeked: impl FnOnce() -> Vec<u8>,
    ) -> Result<Option<usize>> {
        if delivery.unread_by_peer == 0 {
            if delivery.peer_dropped_unread {
                return Err(Error::broken_pipe("with data unread: the flush failed"));
            }
            if delivery.peer_hung_up {
                let e = self.explain(Error::broken_pipe("before the flush"), peeked);
                if e.code() == ErrorCode::PipeNotConnected {
                    return Err(e);
                }
            }
            return Ok(None);
        }
        if delivery.peer_hung_up {
            return Err(self.explain(Error::broken_pipe("before reading everything"), peeked));
        }
        Ok(Some(delivery.unread_by_peer))
    }

    /// `DisconnectNamedPipe` on a server end: marks this end disconnected,
    /// and returns the disconnect mark to send first, if the writer stands
    /// at a message boundary (`at_boundary`: nothing of a cut message is
    /// left to send) on a message pipe.
    pub fn disconnect(&mut self, at_boundary: bool) -> Option<[u8; HEADER_LEN]> {
        self.disconnected = true;
        // Nothing more is read here: what this end held of the budget (a
        // message the application had, or one a cancelled read left) goes
        // back now, not when the end is dropped.
        self.reader.held = None;
        self.reader.stash = None;
        if at_boundary {
            self.writer.disconnect_mark()
        } else {
            None
        }
    }
}

/// The input a read step needs before it can go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Need {
    /// Receive into the core's buffer ([`ReadCore::fill_buf`]), then report
    /// the count with [`ReadCore::filled`] (0 = end of stream).
    Fill,
    /// Receive straight into the operation's buffer
    /// ([`ReadOp::direct_target`]), then report with [`ReadOp::direct_done`].
    Direct {
        /// Offset in the operation's buffer.
        at: usize,
        /// Most bytes to receive.
        len: usize,
    },
    /// Wait until the listener's memory budget has room for a message of
    /// `len` bytes, receiving nothing meanwhile (backpressure), then step
    /// again.
    Budget {
        /// The message's length.
        len: usize,
    },
}

/// One step of a read.
#[derive(Debug)]
pub(crate) enum Step<T> {
    /// The read is over.
    Done(T),
    /// It needs input first.
    Need(Need),
}

/// A read in progress, driven by a front end.
pub(crate) trait ReadOp {
    type Output;
    /// Goes as far as the buffered bytes allow.
    fn step(&mut self, core: &mut ReadCore) -> Result<Step<Self::Output>>;
    /// Where a [`Need::Direct`] read goes.
    fn direct_target(&mut self, at: usize, len: usize) -> &mut [u8];
    /// Reports what a [`Need::Direct`] read received (0 = end of stream).
    fn direct_done(&mut self, core: &mut ReadCore, got: usize);
    /// What a front end may return now instead of waiting (or instead of an
    /// error), having already taken some bytes (`std::io::Read` semantics).
    fn partial(&self) -> Option<Self::Output> {
        None
    }
    /// Puts back what an unfinished operation took, as if it never ran (a
    /// cancelled future, or a blocking receive that timed out).
    fn undo(&mut self, _core: &mut ReadCore) {}
}

/// The reading side's state: buffered bytes and the position among messages.
#[derive(Debug)]
pub(crate) struct ReadCore {
    /// Received bytes; `buf[pos..]` are unread.
    buf: Vec<u8>,
    pos: usize,
    decoder: Option<Decoder>,
    pub mode: ReadMode,
    pub can_read: bool,
    broken: Option<ErrorCode>,
    /// The peer closed its side: no more input will come.
    eof: bool,
    /// Why the connection was broken before the application saw it (a
    /// gateway's hand-over that went wrong), for its end-of-stream error.
    broken_because: Option<Box<str>>,
    /// A message a cancelled `recv_message` had partly received, kept as it
    /// was so that the next `recv_message` goes on with it at no cost; any
    /// other read puts it back in front of the buffer first. (Boxed: rare,
    /// and every idle connection would carry its room.)
    stash: Option<Box<Stashed>>,
    /// The listener's budget for partially received messages (server ends).
    budget: Option<std::sync::Arc<MemoryBudget>>,
    /// The peer's uid, the user its reservations count against.
    peer_uid: u32,
    /// The reservation of the last large message `recv_message` returned,
    /// held until the next read on this end (or its end): the application
    /// is working on that message meanwhile, so its memory still counts.
    held: Option<Reservation>,
}

impl ReadCore {
    /// Changes the read mode (`SetNamedPipeHandleState`); a byte-type pipe
    /// (no decoder) refuses message mode with `ERROR_INVALID_PARAMETER`.
    pub fn set_mode(&mut self, mode: ReadMode) -> Result<()> {
        if mode == ReadMode::Message && self.decoder.is_none() {
            return Err(Error::new(
                ErrorCode::InvalidParameter,
                "a byte-type pipe cannot be read in message mode",
            ));
        }
        self.mode = mode;
        Ok(())
    }
}

/// A message a cancelled `recv_message` had partly received: its bytes so
/// far, how far it got, and its memory reservation.
type Stashed = (Vec<u8>, MsgProgress, Option<Reservation>);

/// What the front of the buffer holds at a message boundary.
enum Header {
    /// Not a whole header yet.
    Need,
    /// A clean end of stream between messages.
    End,
    /// A message of this length starts; its header was consumed.
    Len(u32),
}

impl ReadCore {
    fn new(setup: &Setup, mode: ReadMode, leftover: Vec<u8>, can_read: bool) -> ReadCore {
        let decoder = (setup.pipe_type == PipeType::Message).then(|| {
            let d = Decoder::new(setup.max_message);
            match setup.end {
                End::Client => d.honouring_disconnect_mark(),
                End::Server => d,
            }
        });
        ReadCore {
            buf: leftover,
            pos: 0,
            decoder,
            mode,
            can_read,
            broken: None,
            eof: false,
            broken_because: None,
            stash: None,
            budget: setup.budget.clone(),
            // Only a server end has a budget, and its peer is known.
            peer_uid: setup.peer.get().map_or(u32::MAX, |p| p.user.0),
            held: None,
        }
    }

    /// The error of a read that finds the stream ended between messages.
    fn end_of_stream(&self) -> Error {
        match &self.broken_because {
            Some(why) => Error::broken_pipe(&format!("(end of stream: {why})")),
            None => Error::broken_pipe("(end of stream)"),
        }
    }

    fn buffered(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    fn budget(&self) -> &MemoryBudget {
        self.budget
            .as_deref()
            .expect("only an end with a budget waits for one")
    }

    /// For a blocking [`Need::Budget`]: waits until the listener's budget
    /// has room for a message of `len` bytes from this end's client, at
    /// most until `deadline`; whether it has.
    pub fn wait_for_budget(&self, len: usize, deadline: Option<std::time::Instant>) -> bool {
        self.budget().wait_for_room(len, self.peer_uid, deadline)
    }

    /// For an async [`Need::Budget`]: `true` if there is room now, else
    /// `waker` is woken at the next release.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub fn wake_when_budget(&self, len: usize, waker: &std::task::Waker) -> bool {
        self.budget().wake_when_room(len, self.peer_uid, waker)
    }

    /// Fails if this end may not read, or the stream broke earlier.
    pub fn check(&self) -> Result<()> {
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
            Some(ErrorCode::PipeNotConnected) => Err(Error::disconnected_by_server()),
            Some(code) => Err(Error::new(code, "the pipe was closed mid-message earlier")),
            None => Ok(()),
        }
    }

    /// The buffer to receive into (its spare capacity), made ready: drained
    /// bytes dropped, room for a read reserved.
    pub fn fill_buf(&mut self) -> &mut Vec<u8> {
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
        &mut self.buf
    }

    /// Reports a receive into [`fill_buf`](Self::fill_buf): `n` bytes, 0 at
    /// end of stream.
    pub fn filled(&mut self, n: usize) {
        if n == 0 {
            self.eof = true;
        }
    }

    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    /// Gives the buffer's memory back while nothing is buffered (an idle
    /// connection then holds no read buffer).
    pub fn release_idle(&mut self) {
        if self.pos == self.buf.len() && self.buf.capacity() > 0 {
            self.buf = Vec::new();
            self.pos = 0;
        }
    }

    /// At a boundary: the next message's header, if it is buffered. A
    /// zero-length message is whole with its header: the reader stays at a
    /// boundary.
    fn header(&mut self) -> Result<Header> {
        let decoder = self.decoder.as_mut().expect("message pipe");
        match decoder.start(&self.buf[self.pos..]) {
            Ok(Some(len)) => {
                self.pos += HEADER_LEN;
                if len == 0 {
                    decoder.consume(0);
                }
                Ok(Header::Len(len))
            }
            Ok(None) if !self.eof => Ok(Header::Need),
            Ok(None) => {
                if self.buffered().is_empty() {
                    return Ok(Header::End);
                }
                self.broken = Some(ErrorCode::BrokenPipe);
                Err(Error::broken_pipe("in the middle of a message header"))
            }
            Err(e) => {
                let e: Error = e.into();
                self.broken = Some(e.code());
                Err(e)
            }
        }
    }

    fn in_message(&self) -> bool {
        self.decoder.as_ref().is_some_and(Decoder::in_message)
    }

    fn require_message_pipe(&self, what: &str) -> Result<()> {
        if self.decoder.is_none() {
            return Err(Error::new(
                ErrorCode::InvalidParameter,
                format!("{what} need a message-type pipe; this one is byte type"),
            ));
        }
        Ok(())
    }

    /// Starts a message read: `Ok(None)` once inside a message (its header
    /// consumed now, or earlier), else what to return at once.
    fn begin(&mut self, op: &mut MsgProgress) -> Result<Option<Step<MessageRead>>> {
        if op.begun {
            return Ok(None);
        }
        if !self.in_message() {
            match self.header()? {
                Header::Need => return Ok(Some(Step::Need(Need::Fill))),
                Header::End => return Err(self.end_of_stream()),
                Header::Len(0) => {
                    op.begun = true;
                    op.complete = true;
                    return Ok(Some(Step::Done(MessageRead::Complete(0))));
                }
                Header::Len(len) => op.header = Some(len),
            }
        }
        op.begun = true;
        Ok(None)
    }

    /// Inside a message: copies what is buffered of it into `out[op.n..]`.
    fn continue_message(
        &mut self,
        op: &mut MsgProgress,
        out: &mut [u8],
    ) -> Result<Step<MessageRead>> {
        if op.complete {
            return Ok(Step::Done(MessageRead::Complete(op.n)));
        }
        let decoder = self.decoder.as_mut().expect("message pipe");
        let take = decoder
            .take(self.buf.len() - self.pos)
            .min(out.len() - op.n);
        out[op.n..op.n + take].copy_from_slice(&self.buf[self.pos..self.pos + take]);
        self.pos += take;
        op.n += take;
        if decoder.consume(take) {
            op.complete = true;
            return Ok(Step::Done(MessageRead::Complete(op.n)));
        }
        if op.n == out.len() {
            return Ok(Step::Done(MessageRead::MoreData(op.n)));
        }
        // The buffer is drained and the message goes on.
        if self.eof {
            self.broken = Some(ErrorCode::BrokenPipe);
            return Err(Error::broken_pipe("in the middle of a message"));
        }
        let want = (decoder.remaining().unwrap_or(0) as usize).min(out.len() - op.n);
        Ok(Step::Need(if want >= DIRECT_READ {
            Need::Direct {
                at: op.n,
                len: want,
            }
        } else {
            Need::Fill
        }))
    }

    /// Records a direct receive of `got` bytes of the current message.
    fn direct_message(&mut self, op: &mut MsgProgress, got: usize) {
        if got == 0 {
            self.eof = true;
            return;
        }
        op.n += got;
        if self.decoder.as_mut().expect("message pipe").consume(got) {
            op.complete = true;
        }
    }

    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    /// Puts back the header and the first `delivered` bytes an unfinished
    /// message read took.
    fn unread(&mut self, op: &MsgProgress, delivered: &[u8]) {
        if !op.begun || op.complete {
            return;
        }
        let decoder = self.decoder.as_mut().expect("message pipe");
        let mut front = Vec::with_capacity(HEADER_LEN + delivered.len());
        match op.header {
            Some(len) => {
                front.extend_from_slice(&framing::header(len));
                decoder.rewind(None);
            }
            None => {
                let left = decoder.remaining().unwrap_or(0);
                decoder.rewind(Some(left + delivered.len() as u32));
            }
        }
        front.extend_from_slice(delivered);
        if front.is_empty() {
            return;
        }
        if self.pos >= front.len() {
            self.pos -= front.len();
            self.buf[self.pos..self.pos + front.len()].copy_from_slice(&front);
        } else {
            front.extend_from_slice(&self.buf[self.pos..]);
            self.buf = front;
            self.pos = 0;
        }
    }

    /// Puts a stashed partial message back in front of the buffer, for any
    /// read but `recv_message` (and for `peek`).
    fn unstash(&mut self) {
        if let Some((msg, p, _reservation)) = self.stash.take().map(|s| *s) {
            self.unread(&p, &msg[..p.n]);
        }
    }

    /// Takes in no more input for `peek` once this much is buffered.
    pub fn peek_wants_input(&mut self) -> bool {
        self.unstash();
        !self.eof && self.buf.len() - self.pos < 4 * READ_BUFFER
    }

    /// `PeekNamedPipe` over what is buffered, plus `kernel` bytes the socket
    /// holds beyond that.
    pub fn peek(&mut self, out: &mut [u8], kernel: usize) -> Result<Peek> {
        self.check()?;
        self.unstash();
        let buffered = self.buffered();
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
                // As on Windows, a peek on a message pipe copies from one
                // message only, whatever this end's read mode.
                let scan = decoder.scan(buffered);
                let copied = copy_message(decoder, buffered, out);
                Peek {
                    copied,
                    available: scan.payload + kernel,
                    message_left: (scan.message_left as usize).saturating_sub(copied),
                }
            }
        };
        if peek.available == 0 && self.disconnected_by_server(&[]) {
            return Err(Error::disconnected_by_server());
        }
        if self.eof && peek.available == 0 && peek.message_left == 0 {
            return Err(self.end_of_stream());
        }
        Ok(peek)
    }

    /// Whether the server disconnected this end: its mark was read, or
    /// comes at a message boundary in what is buffered followed by
    /// `kernel` (bytes peeked from the socket). For a failure whose cause
    /// is in doubt (a write into a closed pipe): Windows reports
    /// `ERROR_PIPE_NOT_CONNECTED` after `DisconnectNamedPipe`.
    pub fn disconnected_by_server(&self, kernel: &[u8]) -> bool {
        if self.broken == Some(ErrorCode::PipeNotConnected) {
            return true;
        }
        let Some(decoder) = &self.decoder else {
            return false;
        };
        if kernel.is_empty() {
            return decoder.finds_disconnect(self.buffered());
        }
        let mut all = self.buffered().to_vec();
        all.extend_from_slice(kernel);
        decoder.finds_disconnect(&all)
    }

    /// Whether anything is waiting to be read; `kernel` tells the bytes in
    /// the socket, asked only when nothing is buffered here.
    /// Whether a read could make progress from what is buffered here alone,
    /// with no more input: a whole message header at a boundary, payload
    /// inside a message, any byte on a byte pipe, or an end or error to
    /// report. (Not whether the memory budget has room for it.) The tokio
    /// ends' `readable()` asks it.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub fn can_progress_from_buffer(&self) -> bool {
        if self.eof || self.broken.is_some() {
            return true;
        }
        let buffered = self.buffered().len();
        match &self.decoder {
            None => buffered > 0,
            Some(d) if d.in_message() => buffered > 0,
            Some(_) => buffered >= HEADER_LEN,
        }
    }

    pub fn has_unread(&self, kernel: impl FnOnce() -> usize) -> bool {
        self.in_message() || !self.buffered().is_empty() || kernel() > 0
    }
}

/// `TransactNamedPipe`'s rules, before anything is sent: a message pipe in
/// message read mode, ends not broken, a request within the peer's limit,
/// and no unread data (`kernel` as for [`ReadCore::has_unread`]).
pub fn check_transact(
    setup: &Setup,
    reader: &ReadCore,
    writer: &WriteCore,
    request_len: usize,
    kernel: impl FnOnce() -> usize,
) -> Result<()> {
    if setup.pipe_type != PipeType::Message || reader.mode != ReadMode::Message {
        return Err(Error::new(
            ErrorCode::BadPipe,
            "transact needs a message-type pipe in message read mode",
        ));
    }
    reader.check()?;
    writer.check(request_len)?;
    if reader.has_unread(kernel) {
        return Err(Error::new(
            ErrorCode::PipeBusy,
            "transact refused: unread data is waiting in the pipe (read it first)",
        ));
    }
    Ok(())
}

/// Where a message read stands.
#[derive(Debug, Default)]
struct MsgProgress {
    /// Bytes delivered into the caller's buffer.
    n: usize,
    /// The header consumed by this read (it began at a boundary), for undo.
    header: Option<u32>,
    begun: bool,
    complete: bool,
}

/// `ReadFile` in message read mode: the rest of the current message or the
/// next one, as much as fits ([`MessageRead`]).
pub(crate) struct ReadMessage<'a> {
    out: &'a mut [u8],
    p: MsgProgress,
    checked: bool,
}

impl<'a> ReadMessage<'a> {
    pub fn new(out: &'a mut [u8]) -> ReadMessage<'a> {
        ReadMessage {
            out,
            p: MsgProgress::default(),
            checked: false,
        }
    }
}

impl ReadOp for ReadMessage<'_> {
    type Output = MessageRead;
    fn step(&mut self, core: &mut ReadCore) -> Result<Step<MessageRead>> {
        if !self.checked {
            core.check()?;
            core.held = None;
            core.unstash();
            core.require_message_pipe("message reads")?;
            self.checked = true;
        }
        if let Some(step) = core.begin(&mut self.p)? {
            return Ok(step);
        }
        core.continue_message(&mut self.p, self.out)
    }
    fn direct_target(&mut self, at: usize, len: usize) -> &mut [u8] {
        &mut self.out[at..at + len]
    }
    fn direct_done(&mut self, core: &mut ReadCore, got: usize) {
        core.direct_message(&mut self.p, got);
    }
    fn undo(&mut self, core: &mut ReadCore) {
        core.unread(&self.p, &self.out[..self.p.n]);
    }
}

/// The rest of the current message, or the next one, whole.
#[derive(Default)]
pub(crate) struct RecvMessage {
    msg: Vec<u8>,
    /// The message's full length, from its header.
    total: usize,
    p: MsgProgress,
    checked: bool,
    /// Room held in the listener's budget for this message.
    reservation: Option<Reservation>,
}

/// What `recv_message` allocates before any payload arrives; beyond this it
/// grows with the bytes received.
const RECV_FIRST_ALLOCATION: usize = 1 << 20;

impl ReadOp for RecvMessage {
    type Output = Vec<u8>;
    fn step(&mut self, core: &mut ReadCore) -> Result<Step<Vec<u8>>> {
        if !self.checked {
            core.check()?;
            core.held = None;
            core.require_message_pipe("message reads")?;
            self.checked = true;
            if let Some((msg, p, reservation)) = core.stash.take().map(|s| *s) {
                // A cancelled recv_message left this message half-read.
                self.total = p.n
                    + core
                        .decoder
                        .as_ref()
                        .and_then(Decoder::remaining)
                        .unwrap_or(0) as usize;
                self.msg = msg;
                self.p = p;
                self.reservation = reservation;
            }
        }
        if !self.p.begun {
            if let Some(step) = core.begin(&mut self.p)? {
                return Ok(match step {
                    Step::Done(_) => Step::Done(Vec::new()),
                    Step::Need(n) => Step::Need(n),
                });
            }
            let len = core
                .decoder
                .as_ref()
                .and_then(Decoder::remaining)
                .unwrap_or(0);
            self.total = len as usize;
        }
        if self.msg.is_empty() && self.total > 0 {
            // A large message on a server end first reserves its length in
            // the listener's budget; without room nothing is read from this
            // client (its writes block in the kernel) until there is.
            if self.total > UNBUDGETED && self.reservation.is_none() {
                if let Some(budget) = &core.budget {
                    match budget.try_reserve(self.total, core.peer_uid) {
                        Some(r) => self.reservation = Some(r),
                        None => return Ok(Step::Need(Need::Budget { len: self.total })),
                    }
                }
            }
            // The length was checked against the maximum message size by
            // the decoder; even so, unless the budget covers it, memory is
            // committed only as the bytes arrive (a peer announcing a large
            // message and sending little must not make the reader allocate
            // it all). A reserved message is allocated whole: zeroed pages
            // from the kernel cost nothing until written, and growing by
            // doubling would leave the smaller buffers in the allocator's
            // per-thread arenas (measured: twice the budget with sixteen
            // blocking server threads).
            let first = if self.reservation.is_some() {
                self.total
            } else {
                self.total.min(RECV_FIRST_ALLOCATION)
            };
            self.msg = vec![0; first];
        }
        loop {
            match core.continue_message(&mut self.p, &mut self.msg)? {
                Step::Done(MessageRead::Complete(n)) => {
                    debug_assert_eq!(n, self.total);
                    self.msg.truncate(n);
                    // Whole, and the application's now; its room stays
                    // taken until the next read on this end: an echo
                    // server blocked writing it back to a client that never
                    // reads still holds it, and must not take in more.
                    core.held = self.reservation.take();
                    return Ok(Step::Done(std::mem::take(&mut self.msg)));
                }
                Step::Done(MessageRead::MoreData(_)) => {
                    // Filled so far: grow, at most doubling, up to the length.
                    let grown = (self.msg.len() * 2).clamp(1, self.total);
                    self.msg.resize(grown, 0);
                }
                Step::Need(n) => return Ok(Step::Need(n)),
            }
        }
    }
    fn direct_target(&mut self, at: usize, len: usize) -> &mut [u8] {
        &mut self.msg[at..at + len]
    }
    fn direct_done(&mut self, core: &mut ReadCore, got: usize) {
        core.direct_message(&mut self.p, got);
    }
    fn undo(&mut self, core: &mut ReadCore) {
        if self.p.begun && !self.p.complete {
            core.stash = Some(Box::new((
                std::mem::take(&mut self.msg),
                std::mem::take(&mut self.p),
                self.reservation.take(),
            )));
        }
    }
}

/// `std::io::Read` semantics over either pipe type and read mode: a byte
/// pipe is the raw stream; in message read mode a read never crosses a
/// message boundary and skips zero-length messages (`Ok(0)` means end of
/// stream); in byte read mode it reads payload across messages.
pub(crate) struct ReadStd<'a> {
    out: &'a mut [u8],
    p: MsgProgress,
    checked: bool,
    /// A byte pipe's direct read is over.
    done: bool,
}

impl<'a> ReadStd<'a> {
    pub fn new(out: &'a mut [u8]) -> ReadStd<'a> {
        ReadStd {
            out,
            p: MsgProgress::default(),
            checked: false,
            done: false,
        }
    }

    /// Byte read mode on a message pipe: payload bytes across message
    /// boundaries, headers stripped. Waits only when nothing was taken.
    fn across(&mut self, core: &mut ReadCore) -> Result<Step<usize>> {
        let out = &mut *self.out;
        let n = &mut self.p.n;
        loop {
            if core.in_message() {
                let decoder = core.decoder.as_mut().expect("message pipe");
                let take = decoder.take(core.buf.len() - core.pos).min(out.len() - *n);
                out[*n..*n + take].copy_from_slice(&core.buf[core.pos..core.pos + take]);
                core.pos += take;
                *n += take;
                decoder.consume(take);
                if *n == out.len() {
                    return Ok(Step::Done(*n));
                }
                if decoder.in_message() {
                    // Buffer drained mid-message.
                    if *n > 0 {
                        return Ok(Step::Done(*n));
                    }
                    if core.eof {
                        core.broken = Some(ErrorCode::BrokenPipe);
                        return Err(Error::broken_pipe("in the middle of a message"));
                    }
                    return Ok(Step::Need(Need::Fill));
                }
            }
            // At a boundary: go on only with what is already buffered.
            if *n > 0 && core.buffered().len() < HEADER_LEN {
                return Ok(Step::Done(*n));
            }
            match core.header()? {
                Header::Need => return Ok(Step::Need(Need::Fill)),
                Header::End => return Ok(Step::Done(*n)),
                Header::Len(_) => {}
            }
        }
    }
}

impl ReadOp for ReadStd<'_> {
    type Output = usize;
    fn step(&mut self, core: &mut ReadCore) -> Result<Step<usize>> {
        if !self.checked {
            core.check()?;
            core.held = None;
            core.unstash();
            self.checked = true;
        }
        if self.out.is_empty() {
            return Ok(Step::Done(0));
        }
        if core.decoder.is_none() {
            // Byte pipe: leftover bytes first, then the socket directly.
            if self.done {
                return Ok(Step::Done(self.p.n));
            }
            if !core.buffered().is_empty() {
                let n = core.buffered().len().min(self.out.len());
                self.out[..n].copy_from_slice(&core.buf[core.pos..core.pos + n]);
                core.pos += n;
                return Ok(Step::Done(n));
            }
            if core.eof {
                return Ok(Step::Done(0));
            }
            return Ok(Step::Need(Need::Direct {
                at: 0,
                len: self.out.len(),
            }));
        }
        match core.mode {
            ReadMode::Byte => self.across(core),
            ReadMode::Message => {
                while !self.p.begun {
                    if core.in_message() {
                        self.p.begun = true;
                        break;
                    }
                    match core.header()? {
                        Header::Need => return Ok(Step::Need(Need::Fill)),
                        Header::End => return Ok(Step::Done(0)),
                        // Skipped: `Ok(0)` would read as end of stream.
                        Header::Len(0) => {}
                        Header::Len(len) => {
                            self.p.header = Some(len);
                            self.p.begun = true;
                        }
                    }
                }
                Ok(match core.continue_message(&mut self.p, self.out)? {
                    Step::Done(r) => Step::Done(r.len()),
                    Step::Need(n) => Step::Need(n),
                })
            }
        }
    }
    fn direct_target(&mut self, at: usize, len: usize) -> &mut [u8] {
        &mut self.out[at..at + len]
    }
    fn direct_done(&mut self, core: &mut ReadCore, got: usize) {
        if core.decoder.is_none() {
            self.p.n = got;
            self.done = true;
        } else {
            core.direct_message(&mut self.p, got);
        }
    }
    fn partial(&self) -> Option<usize> {
        (self.p.n > 0).then_some(self.p.n)
    }
}

/// Copies the current (or next) message's buffered payload into `out`,
/// without consuming it and without crossing into the next message.
fn copy_message(decoder: &Decoder, buf: &[u8], out: &mut [u8]) -> usize {
    let (left, payload) = match decoder.remaining() {
        Some(r) => (r as usize, buf),
        None => match buf.first_chunk::<HEADER_LEN>() {
            Some(h) if u32::from_le_bytes(*h) == framing::DISCONNECT_MARK => return 0,
            Some(h) => (u32::from_le_bytes(*h) as usize, &buf[HEADER_LEN..]),
            None => return 0,
        },
    };
    let n = left.min(payload.len()).min(out.len());
    out[..n].copy_from_slice(&payload[..n]);
    n
}

/// A failed receive as an npipe error.
pub(crate) fn recv_error(e: io::Error) -> Error {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
            Error::new(ErrorCode::Timeout, "the read timed out").with_source(e)
        }
        _ => Error::os(e, "read from the pipe failed"),
    }
}

/// A failed send as an npipe error.
pub(crate) fn send_error(e: io::Error) -> Error {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
            Error::new(ErrorCode::Timeout, "the write timed out").with_source(e)
        }
        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset => {
            Error::new(ErrorCode::NoData, "the other end has closed the pipe").with_source(e)
        }
        _ => Error::os(e, "write to the pipe failed"),
    }
}

/// The writing side's state.
#[derive(Debug)]
pub(crate) struct WriteCore {
    pub message: bool,
    pub can_write: bool,
    peer_max: u32,
    broken: bool,
}

impl WriteCore {
    /// The bytes a server end sends when it disconnects its client, if any:
    /// the disconnect mark, on a message pipe whose writer stands at a
    /// message boundary (a broken writer's stream is cut mid-message, and
    /// a mark there would read as data).
    pub fn disconnect_mark(&self) -> Option<[u8; HEADER_LEN]> {
        (self.message && !self.broken).then(|| framing::header(framing::DISCONNECT_MARK))
    }
}

/// A write that failed because the peer is gone (`EPIPE`: *no data*, or a
/// *broken pipe*) is *pipe not connected* if the server disconnected this
/// end, as on Windows; `peeked` reads what the socket still holds, asked
/// only for such a failure.
pub(crate) fn explain_write_failure(
    e: Error,
    reader: &ReadCore,
    peeked: impl FnOnce() -> Vec<u8>,
) -> Error {
    if matches!(e.code(), ErrorCode::NoData | ErrorCode::BrokenPipe)
        && reader.disconnected_by_server(&peeked())
    {
        Error::disconnected_by_server()
    } else {
        e
    }
}

/// One message being sent: its header, and how much of header and payload
/// went out.
#[derive(Debug)]
pub(crate) struct WriteOp {
    header: [u8; HEADER_LEN],
    total: usize,
    sent: usize,
}

impl WriteCore {
    /// Fails if this end may not write, an earlier message was cut, or a
    /// message of `len` bytes is more than the peer accepts.
    pub fn check(&self, len: usize) -> Result<()> {
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

    /// Starts sending `msg` as one message.
    pub fn begin_message(&self, msg: &[u8]) -> Result<WriteOp> {
        if !self.message {
            return Err(Error::new(
                ErrorCode::InvalidParameter,
                "message writes need a message-type pipe; this one is byte type",
            ));
        }
        self.check(msg.len())?;
        Ok(WriteOp {
            header: framing::header(msg.len() as u32),
            total: HEADER_LEN + msg.len(),
            sent: 0,
        })
    }

    /// A send of `op` failed: if part of the message already went out, the
    /// writer is broken for good (the peer sees *broken pipe*, never a cut
    /// message).
    pub fn failed(&mut self, op: &WriteOp) {
        if op.sent > 0 && !op.is_done() {
            self.broken = true;
        }
    }

    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    /// The message under way was cut (abandoned mid-way, or its rest could
    /// not be sent): nothing more may be sent.
    pub fn cut(&mut self) {
        self.broken = true;
    }
}

impl WriteOp {
    /// Whether the whole message went out.
    pub fn is_done(&self) -> bool {
        self.sent == self.total
    }

    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    /// Bytes sent so far, header included.
    pub fn sent(&self) -> usize {
        self.sent
    }

    /// Records `n` more bytes sent.
    pub fn advance(&mut self, n: usize) {
        self.sent = (self.sent + n).min(self.total);
    }

    /// What is left of the header (empty once it is out).
    pub fn header_rest(&self) -> &[u8] {
        &self.header[self.sent.min(HEADER_LEN)..]
    }

    /// What is left of the payload.
    pub fn payload_rest<'a>(&self, msg: &'a [u8]) -> &'a [u8] {
        &msg[self.sent.saturating_sub(HEADER_LEN)..]
    }

    /// The rest as slices for one vectored send.
    pub fn slices<'a>(&'a self, msg: &'a [u8]) -> [IoSlice<'a>; 2] {
        [
            IoSlice::new(self.header_rest()),
            IoSlice::new(self.payload_rest(msg)),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn core(pipe_type: PipeType, mode: ReadMode, wire: &[u8]) -> ReadCore {
        let setup = Setup::for_test(End::Client, pipe_type);
        let mut c = setup.cores(mode, wire.to_vec()).0;
        c.eof = true;
        c
    }

    fn frames(msgs: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for m in msgs {
            out.extend_from_slice(&framing::header(m.len() as u32));
            out.extend_from_slice(m);
        }
        out
    }

    #[test]
    fn the_flush_waits_while_bytes_are_unread_and_fails_once_they_never_will_be() {
        let setup = Setup::for_test(End::Client, PipeType::Message);
        let end = EndCore::new(setup, ReadMode::Message, Vec::new());
        let d = |unread_by_peer, peer_hung_up, peer_dropped_unread| Delivery {
            unread_by_peer,
            peer_hung_up,
            peer_dropped_unread,
        };
        let nothing = Vec::new;
        assert_eq!(end.flush_state(d(0, false, false), nothing).unwrap(), None);
        assert_eq!(
            end.flush_state(d(7, false, false), nothing).unwrap(),
            Some(7)
        );
        // The peer read everything, then left: the flush is done.
        assert_eq!(end.flush_state(d(0, true, false), nothing).unwrap(), None);
        // It left without reading: broken pipe, whether the kernel still
        // counts the bytes or already dropped them.
        let code = |r: Result<Option<usize>>| r.unwrap_err().code();
        assert_eq!(
            code(end.flush_state(d(7, true, false), nothing)),
            ErrorCode::BrokenPipe
        );
        assert_eq!(
            code(end.flush_state(d(0, true, true), nothing)),
            ErrorCode::BrokenPipe
        );
        // A server that disconnected this client left its mark to be read.
        let mark = || framing::header(framing::DISCONNECT_MARK).to_vec();
        assert_eq!(
            code(end.flush_state(d(0, true, false), mark)),
            ErrorCode::PipeNotConnected
        );
        assert_eq!(
            code(end.flush_state(d(3, true, false), mark)),
            ErrorCode::PipeNotConnected
        );
    }

    /// Runs an op over a core whose input is all buffered.
    fn run<O: ReadOp>(core: &mut ReadCore, op: &mut O) -> Result<O::Output> {
        match op.step(core)? {
            Step::Done(v) => Ok(v),
            Step::Need(n) => panic!("needs {n:?} with everything buffered"),
        }
    }

    /// What a read can use without more input: a whole header at a
    /// boundary, any payload inside a message, any byte on a byte pipe, or
    /// an end to report; never a header cut short (a readiness wait on that
    /// would spin).
    #[test]
    fn a_read_progresses_from_the_buffer_only_with_something_usable() {
        let live = |pipe_type, wire: &[u8]| {
            let setup = Setup::for_test(End::Client, pipe_type);
            setup.cores(ReadMode::Message, wire.to_vec()).0
        };
        let whole = frames(&[b"abc"]);
        assert!(live(PipeType::Message, &whole).can_progress_from_buffer());
        assert!(!live(PipeType::Message, &whole[..2]).can_progress_from_buffer());
        assert!(!live(PipeType::Message, b"").can_progress_from_buffer());
        assert!(live(PipeType::Byte, b"x").can_progress_from_buffer());
        // Inside a message, after the buffered part was read: nothing left.
        let mut c = live(PipeType::Message, &whole[..5]);
        let mut buf = [0u8; 1];
        assert_eq!(
            run(&mut c, &mut ReadMessage::new(&mut buf)).unwrap(),
            MessageRead::MoreData(1)
        );
        assert!(
            !c.can_progress_from_buffer(),
            "in a message, nothing buffered"
        );
        // The peer closed: a read has an end to report.
        assert!(core(PipeType::Message, ReadMode::Message, b"").can_progress_from_buffer());
    }

    /// A large message waits for room in the listener's budget before any
    /// of its body is read, keeps its reservation across a cancelled read,
    /// and gives it back at the next read once whole; small messages need
    /// none.
    #[test]
    fn a_large_message_reserves_its_length_before_its_body_is_read() {
        let big = vec![7u8; UNBUDGETED + 1];
        let wire = frames(&[b"small", &big]);
        let budget = std::sync::Arc::new(MemoryBudget::new(UNBUDGETED + 10, 0));
        let mut setup = Setup::for_test(End::Server, PipeType::Message);
        setup.budget = Some(std::sync::Arc::clone(&budget));
        let mut c = setup.cores(ReadMode::Message, wire).0;
        c.eof = true;
        let held = budget.try_reserve(20, 0).unwrap();
        assert_eq!(run(&mut c, &mut RecvMessage::default()).unwrap(), b"small");
        let mut op = RecvMessage::default();
        let need = op.step(&mut c).unwrap();
        assert!(
            matches!(need, Step::Need(Need::Budget { len }) if len == big.len()),
            "{need:?}"
        );
        // Cancelled while waiting, then room frees: nothing was lost.
        op.undo(&mut c);
        drop(held);
        let mut op = RecvMessage::default();
        assert_eq!(run(&mut c, &mut op).unwrap(), big);
        // Held while the application works on it, until its next read.
        assert_eq!(budget.available(), 9);
        let _end_of_stream = RecvMessage::default().step(&mut c);
        assert_eq!(budget.available(), UNBUDGETED + 10);
    }

    #[test]
    fn undo_puts_a_partial_message_back() {
        let wire = frames(&[b"hello world", b"next"]);
        let mut c = core(PipeType::Message, ReadMode::Message, &wire[..9]);
        c.eof = false;
        let mut buf = [0u8; 64];
        let mut op = ReadMessage::new(&mut buf);
        // 5 of 11 bytes arrived: the op took them and needs more.
        assert!(matches!(op.step(&mut c).unwrap(), Step::Need(Need::Fill)));
        op.undo(&mut c);
        // As if nothing was read: the rest arrives and the message is whole.
        c.fill_buf().extend_from_slice(&wire[9..]);
        c.eof = true;
        assert_eq!(
            run(&mut c, &mut RecvMessage::default()).unwrap(),
            b"hello world"
        );
        assert_eq!(run(&mut c, &mut RecvMessage::default()).unwrap(), b"next");
    }

    #[test]
    fn undo_mid_message_restores_the_remaining_count() {
        let wire = frames(&[b"0123456789"]);
        let mut c = core(PipeType::Message, ReadMode::Message, &wire[..8]);
        c.eof = false;
        let mut small = [0u8; 2];
        assert_eq!(
            run(&mut c, &mut ReadMessage::new(&mut small)).unwrap(),
            MessageRead::MoreData(2)
        );
        let mut rest = RecvMessage::default();
        assert!(matches!(rest.step(&mut c).unwrap(), Step::Need(_)));
        rest.undo(&mut c);
        c.fill_buf().extend_from_slice(&wire[8..]);
        assert_eq!(
            run(&mut c, &mut RecvMessage::default()).unwrap(),
            b"23456789"
        );
    }

    #[test]
    fn a_cancelled_recv_message_is_taken_up_again_or_put_back() {
        let wire = frames(&[b"0123456789", b"x"]);
        let mut c = core(PipeType::Message, ReadMode::Message, &wire[..9]);
        c.eof = false;
        // Cancelled with 5 of 10 bytes: kept aside as they are...
        let mut op = RecvMessage::default();
        assert!(matches!(op.step(&mut c).unwrap(), Step::Need(_)));
        op.undo(&mut c);
        assert!(c.stash.is_some());
        assert!(c.has_unread(|| 0));
        c.fill_buf().extend_from_slice(&wire[9..]);
        // ...and the next recv_message goes on with them.
        assert_eq!(
            run(&mut c, &mut RecvMessage::default()).unwrap(),
            b"0123456789"
        );
        // Or another kind of read puts them back first.
        let mut c = core(PipeType::Message, ReadMode::Message, &wire[..9]);
        c.eof = false;
        let mut op = RecvMessage::default();
        assert!(matches!(op.step(&mut c).unwrap(), Step::Need(_)));
        op.undo(&mut c);
        let mut peeked = [0u8; 16];
        assert_eq!(c.peek(&mut peeked, 0).unwrap().copied, 5);
        c.fill_buf().extend_from_slice(&wire[9..]);
        let mut buf = [0u8; 4];
        assert_eq!(
            run(&mut c, &mut ReadMessage::new(&mut buf)).unwrap(),
            MessageRead::MoreData(4)
        );
        assert_eq!(&buf, b"0123");
        let mut c2 = RecvMessage::default();
        assert_eq!(run(&mut c, &mut c2).unwrap(), b"456789");
        assert_eq!(run(&mut c, &mut RecvMessage::default()).unwrap(), b"x");
    }

    #[test]
    fn std_reads_skip_empty_messages_and_stop_at_boundaries() {
        let wire = frames(&[b"", b"abc", b"", b"de"]);
        let mut c = core(PipeType::Message, ReadMode::Message, &wire);
        let mut buf = [0u8; 16];
        assert_eq!(run(&mut c, &mut ReadStd::new(&mut buf)).unwrap(), 3);
        assert_eq!(run(&mut c, &mut ReadStd::new(&mut buf)).unwrap(), 2);
        assert_eq!(run(&mut c, &mut ReadStd::new(&mut buf)).unwrap(), 0);
        let mut c = core(PipeType::Message, ReadMode::Byte, &wire);
        assert_eq!(run(&mut c, &mut ReadStd::new(&mut buf)).unwrap(), 5);
        assert_eq!(&buf[..5], b"abcde");
    }

    #[test]
    fn a_cut_message_is_broken_not_data() {
        let wire = frames(&[b"0123456789"]);
        let mut c = core(PipeType::Message, ReadMode::Message, &wire[..7]);
        let e = run(&mut c, &mut RecvMessage::default()).unwrap_err();
        assert_eq!(e.code(), ErrorCode::BrokenPipe);
        assert_eq!(c.check().unwrap_err().code(), ErrorCode::BrokenPipe);
    }

    #[test]
    fn write_op_tracks_partial_sends() {
        let w = WriteCore {
            message: true,
            can_write: true,
            peer_max: 10,
            broken: false,
        };
        assert_eq!(
            w.begin_message(&[0; 11]).unwrap_err().code(),
            ErrorCode::InvalidParameter
        );
        let msg = b"abc";
        let mut op = w.begin_message(msg).unwrap();
        op.advance(2);
        assert_eq!(op.header_rest(), &[0, 0]);
        assert_eq!(op.payload_rest(msg), b"abc");
        op.advance(3);
        assert_eq!(op.header_rest(), b"");
        assert_eq!(op.payload_rest(msg), b"bc");
        let mut w = w;
        w.failed(&op);
        assert_eq!(w.check(0).unwrap_err().code(), ErrorCode::BrokenPipe);
    }
}
