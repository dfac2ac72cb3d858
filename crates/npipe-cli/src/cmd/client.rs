//! `npipe client`: an interactive (or scripted) client over stdin/stdout.

use std::io::{self, BufRead, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use npipe::{Access, ClientOptions, ErrorCode, PipeClient, PipeType, ReadHalf, WriteHalf};

use super::{CmdResult, TimeoutArg};
use crate::exit::{Failure, Status};

/// How often the stdin-to-pipe side checks whether the server has closed.
const POLL: Duration = Duration::from_millis(50);

const LONG_ABOUT: &str = r"Connect to a pipe and talk to it over stdin and stdout.

Opens the pipe (CreateFile on \\.\pipe\NAME; with --wait, WaitNamedPipe first,
in one step) and then, depending on what the server created:

  message pipe, duplex      each line of input is sent as one message (without
                            its newline); the reply message is read and printed
                            on a line of its own
  message pipe, inbound     each line is sent as one message; nothing is read
  message pipe, outbound    every message the server sends is printed, one per
                            line, until the server closes the pipe
  byte pipe                 input is copied to the pipe and the pipe to the
                            output, both at once; at the end of input the
                            client closes its sending side and prints what
                            still comes back, until the server closes

Works interactively and with piped input: it exits at the end of input after
the last reply, or when the server closes the pipe.";

const AFTER_HELP: &str = r"Examples:
  npipe client echo                       type lines, see the replies
  printf 'a\nb\nc\n' | npipe client echo  three messages, three replies
  npipe client busy-service --wait 5000   wait up to 5 s for a free instance";

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
    /// client can take the instance in between. 0 (the default) does not
    /// wait: a busy pipe fails at once with ERROR_PIPE_BUSY. (--wait is the
    /// same option's older name.)
    #[arg(
        verbatim_doc_comment,
        long,
        alias = "wait",
        value_name = "MS|forever",
        default_value = "0"
    )]
    pub timeout: TimeoutArg,

    /// Also wait (within --timeout) for a pipe that does not exist yet, as
    /// for a server still starting
    #[arg(long)]
    pub wait_for_server: bool,

    #[command(flatten)]
    pub security: super::ClientSecurity,
}

/// Runs `npipe client`.
pub fn run(args: &Args) -> CmdResult {
    let mut opts = ClientOptions::new();
    opts.wait(args.timeout.wait())
        .wait_for_server(args.wait_for_server);
    args.security.apply(&mut opts)?;
    let mut client = opts.open(args.name.as_str())?;
    let info = client.info();
    match (info.pipe_type, info.access) {
        (PipeType::Message, Access::ReadWrite) => message_dialog(&mut client),
        (PipeType::Message, Access::Write) => message_send(&mut client),
        (PipeType::Message, Access::Read) => message_receive(&mut client),
        (PipeType::Byte, access) => byte_copy(&mut client, access),
    }
}

/// Reads one line of stdin without its line ending; `None` at the end.
fn next_line(stdin: &mut impl BufRead, line: &mut Vec<u8>) -> Result<bool, Failure> {
    line.clear();
    let n = stdin.read_until(b'\n', line).map_err(Failure::stdin)?;
    if n == 0 {
        return Ok(false);
    }
    if line.last() == Some(&b'\n') {
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
    }
    Ok(true)
}

fn print_line(bytes: &[u8]) -> CmdResult {
    let mut out = io::stdout().lock();
    out.write_all(bytes)
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush())
        .map_err(Failure::stdout)
}

fn message_dialog(client: &mut PipeClient) -> CmdResult {
    let mut stdin = io::stdin().lock();
    let mut line = Vec::new();
    while next_line(&mut stdin, &mut line)? {
        client.write_message(&line)?;
        let reply = client.recv_message()?;
        print_line(&reply)?;
    }
    Ok(())
}

fn message_send(client: &mut PipeClient) -> CmdResult {
    let mut stdin = io::stdin().lock();
    let mut line = Vec::new();
    while next_line(&mut stdin, &mut line)? {
        client.write_message(&line)?;
    }
    Ok(())
}

fn message_receive(client: &mut PipeClient) -> CmdResult {
    loop {
        match client.recv_message() {
            Ok(msg) => print_line(&msg)?,
            // The server closed the pipe: everything it sent has been read.
            Err(e) if e.code() == ErrorCode::BrokenPipe => return Ok(()),
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
            r
        } else {
            Ok(())
        };
        let sent = match sending {
            Some(handle) => handle.join().unwrap_or_else(|_| {
                Err(Failure::new(Status::Other, "the sending thread panicked"))
            }),
            None => Ok(()),
        };
        received.and(sent)
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
