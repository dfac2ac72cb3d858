//! `npipe client`: an interactive (or scripted) client over stdin/stdout.

use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use npipe::{Access, ClientOptions, ErrorCode, PipeClient, PipeType, ReadHalf, WriteHalf};

use super::{CmdResult, TimeoutArg};
use crate::exit::{Failure, Status};

/// How often the stdin-to-pipe side checks whether the server has closed.
const POLL: Duration = Duration::from_millis(50);

const LONG_ABOUT: &str = r"Connect to a pipe and talk to it over stdin and stdout.

Opens the pipe (CreateFile on \\.\pipe\NAME; with --timeout, WaitNamedPipe first,
in one step) and then, depending on what the server created:

  message pipe, duplex      each line of input is sent as one message (without
                            its newline, nothing else altered); every message
                            the server sends is printed on a line of its own as
                            it arrives (one reply, several, or none)
  message pipe, inbound     each line is sent as one message; nothing is read
  message pipe, outbound    every message the server sends is printed, one per
                            line, until the server closes the pipe

  --framing nul|length|raw tells messages apart otherwise: NUL-terminated, a
  4-byte little-endian length before each, or each read of input one message
  (replies written as they are); binary data passes unchanged.
  byte pipe                 input is copied to the pipe and the pipe to the
                            output, both at once; at the end of input the
                            client closes its sending side and prints what
                            still comes back, until the server closes

Works interactively and with piped input. At the end of input it closes its
sending side and exits when the server closes the pipe, or once every message
has had a reply and half a second passed with nothing more.";

const AFTER_HELP: &str = r"Examples:
  npipe client echo                       type lines, see the replies
  printf 'a\nb\nc\n' | npipe client echo  three messages, three replies
  npipe client busy-service --timeout 5000   wait up to 5 s for a free instance
  find . -print0 | npipe client indexer --framing nul";

/// Arguments of `npipe client`.
#[derive(Debug, clap::Args)]
#[command(
    about = "Talk to a pipe over stdin/stdout (CreateFile, ReadFile, WriteFile)",
    long_about = LONG_ABOUT,
    after_help = AFTER_HELP
)]
pub struct Args {
    /// The pipe's name: \\.\pipe\NAME, //./pipe/NAME or NAME.
    pub name: String,

    /// Wait up to MS milliseconds (or `forever`) for a free instance
    ///
    /// As WaitNamedPipe, but waiting and connecting are one step, so no other
    /// client can take the instance in between. Without it a busy pipe
    /// fails at once with ERROR_PIPE_BUSY (with --wait-for-server it waits
    /// for ever). (--wait is the same option's older name.)
    #[arg(verbatim_doc_comment, long, alias = "wait", value_name = "MS|forever")]
    pub timeout: Option<TimeoutArg>,

    /// Also wait (within --timeout) for a pipe that does not exist yet, as
    /// for a server still starting
    #[arg(long)]
    pub wait_for_server: bool,

    /// On a message pipe, how messages are told apart on stdin and stdout
    #[arg(long, value_enum, default_value_t = Framing::Line)]
    pub framing: Framing,

    /// Do not say on stderr when the client is connected
    #[arg(short, long)]
    pub quiet: bool,

    #[command(flatten)]
    pub security: super::ClientSecurity,
}

/// Runs `npipe client`.
pub fn run(args: &Args) -> CmdResult {
    let mut opts = ClientOptions::new();
    // Waiting for a server to start means waiting, unless told how long.
    let timeout = args.timeout.unwrap_or(if args.wait_for_server {
        TimeoutArg::Forever
    } else {
        TimeoutArg::Ms(0)
    });
    // Messages as large as the framings carry (the library's default
    // would refuse one over 64 MiB).
    opts.wait(timeout.wait())
        .wait_for_server(args.wait_for_server)
        .max_message_size(FRAME_MAX as u32);
    args.security.apply(&mut opts)?;
    let mut client = opts.open(args.name.as_str()).map_err(|e| {
        let hint = super::access_hint(&e, &args.name, "the pipe's direction refuses this access");
        let failure = Failure::from(e);
        match hint {
            Some(h) => failure.hint(h),
            None => failure,
        }
    })?;
    let info = client.info();
    if !args.quiet {
        eprintln!(
            "npipe: connected to {} (server pid {}, {} {} pipe)",
            info.name,
            client.server_process_id(),
            super::direction_name(info.direction),
            super::type_name(info.pipe_type),
        );
    }
    match (info.pipe_type, info.access) {
        (PipeType::Message, access) => message_io(&mut client, access, args.framing),
        (PipeType::Byte, access) => byte_copy(&mut client, access),
    }
}

/// How messages are told apart on standard input and output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Framing {
    /// One message per line; the newline is not part of it (anything else,
    /// `\r` included, is)
    Line,
    /// Messages end with a NUL byte
    Nul,
    /// Each message is its length (4 bytes, little-endian) and its bytes
    Length,
    /// Each read of input is one message; replies are written as they are
    Raw,
}

/// The most a `--framing length` prefix may announce: the client holds a
/// message in memory.
const FRAME_MAX: usize = 256 << 20;

/// After the end of input, how long the client waits for more replies once
/// every message it sent has had one (socat waits as long).
const LINGER: Duration = Duration::from_millis(500);

impl Framing {
    /// Takes the next whole message off the front of `pending`; at the end
    /// of input (`end`) what is left is the last message. `searched` is how
    /// much of `pending` is known to hold no delimiter, so that a long line
    /// arriving in many chunks is scanned once, not once per chunk.
    fn take(
        self,
        pending: &mut Vec<u8>,
        searched: &mut usize,
        end: bool,
    ) -> Result<Option<Vec<u8>>, Failure> {
        let cut = |at: usize, skip: usize, pending: &mut Vec<u8>| {
            let mut msg: Vec<u8> = pending.drain(..at + skip).collect();
            msg.truncate(at);
            msg
        };
        match self {
            Framing::Line | Framing::Nul => {
                let delimiter = if self == Framing::Line { b'\n' } else { 0 };
                let from = (*searched).min(pending.len());
                if let Some(at) = pending[from..].iter().position(|&b| b == delimiter) {
                    *searched = 0;
                    return Ok(Some(cut(from + at, 1, pending)));
                }
                *searched = pending.len();
                Ok((end && !pending.is_empty()).then(|| {
                    *searched = 0;
                    std::mem::take(pending)
                }))
            }
            Framing::Length => {
                let Some(prefix) = pending.first_chunk::<4>() else {
                    return match end && !pending.is_empty() {
                        true => Err(truncated()),
                        false => Ok(None),
                    };
                };
                let len = u32::from_le_bytes(*prefix) as usize;
                if len > FRAME_MAX {
                    return Err(Failure::new(
                        Status::Usage,
                        format!("a --framing length prefix announces {len} bytes, over 256 MiB"),
                    ));
                }
                if pending.len() < 4 + len {
                    return if end { Err(truncated()) } else { Ok(None) };
                }
                pending.drain(..4);
                Ok(Some(cut(len, 0, pending)))
            }
            Framing::Raw => Ok((!pending.is_empty()).then(|| std::mem::take(pending))),
        }
    }

    /// Writes one message to standard output, framed.
    fn print(self, msg: &[u8]) -> CmdResult {
        let mut out = io::stdout().lock();
        let written = match self {
            Framing::Line => out.write_all(msg).and_then(|()| out.write_all(b"\n")),
            Framing::Nul => out.write_all(msg).and_then(|()| out.write_all(b"\0")),
            Framing::Length => out
                .write_all(&(msg.len() as u32).to_le_bytes())
                .and_then(|()| out.write_all(msg)),
            Framing::Raw => out.write_all(msg),
        };
        written.and_then(|()| out.flush()).map_err(Failure::stdout)
    }
}

fn truncated() -> Failure {
    Failure::new(
        Status::Usage,
        "the input ended inside a --framing length message",
    )
}

/// Messages both ways at once: input framed into messages on one thread,
/// every message the server sends printed as it arrives on this one (a
/// reply, several, or one nobody asked for). At the end of input the client
/// closes its sending side, then waits for the server to close, or, once
/// every message has had a reply, for [`LINGER`] of quiet.
fn message_io(client: &mut PipeClient, access: Access, framing: Framing) -> CmdResult {
    // Short timed reads let the receiving side notice the end of input.
    client.set_read_timeout(Some(POLL))?;
    let (mut reader, mut writer) = client.split();
    let sent = AtomicU64::new(0);
    let input_done = AtomicBool::new(false);
    let server_closed = AtomicBool::new(false);
    thread::scope(|s| {
        let sending = access.writes().then(|| {
            s.spawn(|| {
                let r = send_messages(&mut writer, framing, &sent, &server_closed);
                input_done.store(true, Ordering::SeqCst);
                r
            })
        });
        let received = if access.reads() {
            let r = receive_messages(&mut reader, framing, &sent, &input_done, access.writes());
            server_closed.store(true, Ordering::SeqCst);
            stop_if_failed(r)
        } else {
            Ok(())
        };
        joined(received, sending)
    })
}

/// A receiving side that failed (its output closed, as `| head` does)
/// ends the process at once: the sending thread may be stuck writing to a
/// server that, unread, stopped reading too.
fn stop_if_failed(received: CmdResult) -> CmdResult {
    if let Err(failure) = &received {
        failure.exit_now();
    }
    received
}

/// The end of a copy both ways: what the receiving side returned, then
/// the sending thread's result.
fn joined(
    received: CmdResult,
    sending: Option<thread::ScopedJoinHandle<'_, CmdResult>>,
) -> CmdResult {
    let sent = match sending {
        Some(handle) => handle
            .join()
            .unwrap_or_else(|_| Err(Failure::new(Status::Other, "the sending thread panicked"))),
        None => Ok(()),
    };
    received.and(sent)
}

fn send_messages(
    writer: &mut WriteHalf<'_>,
    framing: Framing,
    sent: &AtomicU64,
    server_closed: &AtomicBool,
) -> CmdResult {
    let input = feed_stdin();
    let mut pending = Vec::new();
    let mut searched = 0;
    loop {
        let end = match input.recv_timeout(POLL) {
            Ok(Input::Data(chunk)) => {
                pending.extend_from_slice(&chunk);
                false
            }
            Ok(Input::End) | Err(mpsc::RecvTimeoutError::Disconnected) => true,
            Ok(Input::Failed(e)) => return Err(Failure::stdin(e)),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if server_closed.load(Ordering::SeqCst) {
                    return Ok(());
                }
                continue;
            }
        };
        while let Some(msg) = framing.take(&mut pending, &mut searched, end)? {
            writer.write_message(&msg)?;
            sent.fetch_add(1, Ordering::SeqCst);
        }
        if end {
            // The server sees the end of the client's messages, and can
            // still answer.
            let _ = writer.shutdown_write();
            return Ok(());
        }
    }
}

fn receive_messages(
    reader: &mut ReadHalf<'_>,
    framing: Framing,
    sent: &AtomicU64,
    input_done: &AtomicBool,
    linger: bool,
) -> CmdResult {
    let mut received: u64 = 0;
    let mut quiet_since = std::time::Instant::now();
    loop {
        match reader.recv_message() {
            Ok(msg) => {
                framing.print(&msg)?;
                received += 1;
                quiet_since = std::time::Instant::now();
            }
            // The server closed the pipe: everything it sent has been read.
            Err(e) if e.code() == ErrorCode::BrokenPipe => return Ok(()),
            Err(e) if e.code() == ErrorCode::Timeout => {
                let answered = received >= sent.load(Ordering::SeqCst);
                if linger
                    && input_done.load(Ordering::SeqCst)
                    && answered
                    && quiet_since.elapsed() >= LINGER
                {
                    return Ok(());
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// A chunk of standard input, read by the feeder thread.
enum Input {
    Data(Vec<u8>),
    End,
    Failed(io::Error),
}

/// Reads stdin on a thread of its own, so that the pipe side can stop when
/// the server closes even while a terminal read is still pending (that
/// thread is left behind; the process exits without it).
fn feed_stdin() -> mpsc::Receiver<Input> {
    let (tx, rx) = mpsc::sync_channel(4);
    thread::spawn(move || {
        let mut stdin = io::stdin();
        loop {
            let mut buf = vec![0u8; 16 * 1024];
            let item = match stdin.read(&mut buf) {
                Ok(0) => Input::End,
                Ok(n) => {
                    buf.truncate(n);
                    Input::Data(buf)
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => Input::Failed(e),
            };
            let last = !matches!(item, Input::Data(_));
            if tx.send(item).is_err() || last {
                return;
            }
        }
    });
    rx
}

fn byte_copy(client: &mut PipeClient, access: Access) -> CmdResult {
    let (mut reader, mut writer) = client.split();
    let server_closed = AtomicBool::new(false);
    thread::scope(|s| {
        let sending = access
            .writes()
            .then(|| s.spawn(|| stdin_to_pipe(&mut writer, &server_closed)));
        let received = if access.reads() {
            let r = pipe_to_stdout(&mut reader);
            server_closed.store(true, Ordering::SeqCst);
            stop_if_failed(r)
        } else {
            Ok(())
        };
        joined(received, sending)
    })
}

fn stdin_to_pipe(writer: &mut WriteHalf<'_>, server_closed: &AtomicBool) -> CmdResult {
    let input = feed_stdin();
    loop {
        match input.recv_timeout(POLL) {
            Ok(Input::Data(chunk)) => writer.write_all(&chunk).map_err(Failure::pipe_io)?,
            Ok(Input::End) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                // End of input: half-close, so the server sees end of stream
                // and can still answer.
                return writer.shutdown_write().map_err(Failure::from);
            }
            Ok(Input::Failed(e)) => return Err(Failure::stdin(e)),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if server_closed.load(Ordering::SeqCst) {
                    return Ok(());
                }
            }
        }
    }
}

fn pipe_to_stdout(reader: &mut ReadHalf<'_>) -> CmdResult {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Failure::pipe_io(e)),
        };
        let mut out = io::stdout().lock();
        out.write_all(&buf[..n])
            .and_then(|()| out.flush())
            .map_err(Failure::stdout)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `chunks` as input arrives and takes every message out.
    fn split(framing: Framing, chunks: &[&[u8]]) -> Vec<Vec<u8>> {
        let (mut pending, mut searched, mut out) = (Vec::new(), 0, Vec::new());
        for (i, chunk) in chunks.iter().enumerate() {
            pending.extend_from_slice(chunk);
            let end = i + 1 == chunks.len();
            while let Some(msg) = framing.take(&mut pending, &mut searched, end).unwrap() {
                out.push(msg);
            }
        }
        out
    }

    #[test]
    fn framings_split_input_however_it_arrives() {
        let lines = split(Framing::Line, &[b"ab", b"c\r\nd", b"e\n\nlast"]);
        assert_eq!(
            lines,
            vec![
                b"abc\r".to_vec(),
                b"de".to_vec(),
                b"".to_vec(),
                b"last".to_vec()
            ]
        );
        let nul = split(Framing::Nul, &[b"a\nb\0", b"c\0"]);
        assert_eq!(nul, vec![b"a\nb".to_vec(), b"c".to_vec()]);
        let mut framed = 3u32.to_le_bytes().to_vec();
        framed.extend_from_slice(b"xyz");
        framed.extend_from_slice(&0u32.to_le_bytes());
        let (a, b) = framed.split_at(5);
        assert_eq!(
            split(Framing::Length, &[a, b]),
            vec![b"xyz".to_vec(), vec![]]
        );
        let (mut pending, mut searched) = (framed[..5].to_vec(), 0);
        assert!(
            Framing::Length
                .take(&mut pending, &mut searched, true)
                .is_err(),
            "truncated"
        );
    }

    /// A long line in many chunks: each byte is looked at once (the search
    /// goes on from where it stopped), and the line comes out whole.
    #[test]
    fn a_long_line_is_scanned_once() {
        let chunk = vec![b'x'; 4096];
        let mut chunks: Vec<&[u8]> = vec![&chunk; 64];
        chunks.push(b"\n");
        let lines = split(Framing::Line, &chunks);
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].len(), 4096 * 64);
    }
}
