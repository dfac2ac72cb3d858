//! `npipe client`: an interactive (or scripted) client over stdin/stdout.

use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use npipe::{Access, ErrorCode, PipeClient, PipeType, ReadHalf, WriteHalf};
use npipe::{ClientOptions, PipeInfo};

use super::framing::{Framing, FRAME_MAX};
use super::{CmdResult, TimeoutArg};
use crate::exit::Failure;
use crate::exit::Status;

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
has had a reply and half a second passed with nothing more.

On Windows a pipe cannot be half-closed, so the server never sees the end of
the input: there the client exits half a second after the last thing it read
once every message has had a reply (five seconds while replies are still
owed), and on a byte pipe half a second after the last bytes.";

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

    /// Offer to move the data into shared memory, a ring each way, with
    /// the handshake (Linux): faster than the socket, the same otherwise.
    /// Without it a busy session moves anyway, after 16 writes or 256 KiB.
    /// The server may decline (npipe serve takes it unless
    /// --no-shared-memory); the connected line says which.
    /// NPIPE_SHARED_MEMORY=on|off|late overrides
    #[arg(long)]
    pub shared_memory: bool,

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
        .max_message_size(FRAME_MAX as u32)
        .shared_memory(args.shared_memory);
    args.security.apply(&mut opts)?;
    let mut client = opts
        .open(args.name.as_str())
        .map_err(|e| open_failure(e, &args.name))?;
    let info = client.info();
    #[cfg(target_os = "linux")]
    let rings = client.uses_shared_memory();
    #[cfg(not(target_os = "linux"))]
    let rings = false;
    announce(&info, client.server_process_id(), rings, args.quiet);
    match (info.pipe_type, info.access) {
        (PipeType::Message, access) => message_io(&mut client, access, args.framing),
        (PipeType::Byte, access) => byte_copy(&mut client, access),
    }
}

/// A failed open, with what to do about a refused access.
fn open_failure(e: npipe::Error, name: &str) -> Failure {
    let hint = super::access_hint(&e, name, "the pipe's direction refuses this access");
    let failure = Failure::from(e);
    match hint {
        Some(h) => failure.hint(h),
        None => failure,
    }
}

/// Says on stderr what the client connected to, and whether the data goes
/// through shared memory (`rings`), unless `quiet`.
fn announce(info: &PipeInfo, server_pid: u32, rings: bool, quiet: bool) {
    if !quiet {
        eprintln!(
            "npipe: connected to {} (server pid {server_pid}, {} {} pipe{})",
            info.name,
            super::direction_name(info.direction),
            super::type_name(info.pipe_type),
            if rings { ", through shared memory" } else { "" },
        );
    }
}

/// After the end of input, how long the client waits for more replies once
/// every message it sent has had one (socat waits as long).
pub(super) const LINGER: Duration = Duration::from_millis(500);

/// Where a pipe cannot be half-closed (Windows), how long after the end of
/// input the client waits for replies still owed: the server cannot learn
/// that the input ended, so it never closes for that reason.
const OWED_PATIENCE: Duration = Duration::from_secs(5);

/// Whether this system's pipes can be half-closed (Linux's can; Windows'
/// cannot), so that the server sees the end of the input.
const HALF_CLOSE: bool = cfg!(unix);

/// Writes one message to standard output, framed.
fn print(framing: Framing, msg: &[u8]) -> CmdResult {
    let mut out = io::stdout().lock();
    out.write_all(&framing.frame(msg))
        .and_then(|()| out.flush())
        .map_err(Failure::stdout)
}

/// Messages both ways at once: input framed into messages on one thread,
/// every message the server sends printed as it arrives on this one (a
/// reply, several, or one nobody asked for). At the end of input the client
/// closes its sending side, then waits for the server to close, or, once
/// every message has had a reply, for [`LINGER`] of quiet (where it cannot
/// half-close, for [`OWED_PATIENCE`] of quiet while replies are owed).
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
        while let Some(msg) = framing
            .take(&mut pending, &mut searched, end)
            .map_err(|e| Failure::new(Status::Usage, e))?
        {
            writer.write_message(&msg)?;
            sent.fetch_add(1, Ordering::SeqCst);
        }
        if end {
            // The server sees the end of the client's messages, and can
            // still answer.
            #[cfg(unix)]
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
                print(framing, &msg)?;
                received += 1;
                quiet_since = std::time::Instant::now();
            }
            // The server closed the pipe: everything it sent has been read.
            Err(e) if e.code() == ErrorCode::BrokenPipe => return Ok(()),
            Err(e) if e.code() == ErrorCode::Timeout => {
                let answered = received >= sent.load(Ordering::SeqCst);
                let quiet = quiet_since.elapsed();
                let waited = if answered {
                    quiet >= LINGER
                } else {
                    !HALF_CLOSE && quiet >= OWED_PATIENCE
                };
                if linger && input_done.load(Ordering::SeqCst) && waited {
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
    if !HALF_CLOSE {
        // The reading side must notice the end of input by itself.
        client.set_read_timeout(Some(POLL))?;
    }
    let (mut reader, mut writer) = client.split();
    let server_closed = AtomicBool::new(false);
    // Only the end of input ends the wait early: a client that only reads
    // waits for the server to close, as on Linux.
    let input_done = AtomicBool::new(false);
    thread::scope(|s| {
        let sending = access.writes().then(|| {
            s.spawn(|| {
                let r = stdin_to_pipe(&mut writer, &server_closed);
                input_done.store(true, Ordering::SeqCst);
                r
            })
        });
        let received = if access.reads() {
            let r = pipe_to_stdout(&mut reader, &input_done);
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
                // and can still answer. (Windows cannot: there the reading
                // side lingers, then the client closes.)
                #[cfg(unix)]
                return writer.shutdown_write().map_err(Failure::from);
                #[cfg(not(unix))]
                return Ok(());
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

/// The pipe's bytes to stdout until the server closes; where the pipe
/// cannot be half-closed, also once the input ended and [`LINGER`] passed
/// with nothing more.
fn pipe_to_stdout(reader: &mut ReadHalf<'_>, input_done: &AtomicBool) -> CmdResult {
    let mut buf = vec![0u8; 64 * 1024];
    let mut quiet_since = std::time::Instant::now();
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                if input_done.load(Ordering::SeqCst) && quiet_since.elapsed() >= LINGER {
                    return Ok(());
                }
                continue;
            }
            Err(e) => return Err(Failure::pipe_io(e)),
        };
        quiet_since = std::time::Instant::now();
        let mut out = io::stdout().lock();
        out.write_all(&buf[..n])
            .and_then(|()| out.flush())
            .map_err(Failure::stdout)?;
    }
}
