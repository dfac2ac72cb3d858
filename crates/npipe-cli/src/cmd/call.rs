//! `npipe call`: one request, one reply (`CallNamedPipe`).

use std::io::{self, Read, Write};

use npipe::{ClientOptions, ErrorCode, PipeType};

use super::{lossy, CmdResult};
use crate::exit::{Failure, Status};

const LONG_ABOUT: &str = r"Send one request and print the reply (CallNamedPipe).

On a message pipe this is CallNamedPipe: connect (waiting up to --timeout for a
free instance), send DATA as one message, read one reply message, close. The
request rides with the connection handshake, so a call is one round trip.

On a byte pipe (where CallNamedPipe does not apply) it connects, writes DATA,
closes its sending side and prints everything the server sends back until the
server closes the pipe. (On Windows, where a pipe cannot be half-closed, it
prints what comes back until the server closes or half a second passes with
nothing more; the first bytes may take --reply-timeout.)

DATA is sent exactly as given. `-` sends standard input and `@FILE` the
file's contents instead, byte for byte (NUL bytes included, no argument length
limit, up to 256 MiB); --literal sends `-` or `@...` as written.

The reply is printed as text (invalid UTF-8 shown as U+FFFD) followed by a
newline; --raw writes the reply's bytes exactly, nothing added.";

const AFTER_HELP: &str = r"Examples:
  npipe call echo hello                   prints hello
  npipe call '\\.\pipe\echo' hello --timeout 5000
  npipe call bytes-service ping --raw | xxd
  head -c 4096 /dev/urandom | npipe call echo - --raw | cmp - ...
  npipe call echo @request.bin --raw > reply.bin
  npipe call echo hi --wait-for-server --timeout forever   (server not up yet)
  npipe call svc ping --reply-timeout 500   (a hung server fails in half a second)";

/// Arguments of `npipe call`.
#[derive(Debug, clap::Args)]
#[command(
    about = "Send one request and print the reply (CallNamedPipe)",
    long_about = LONG_ABOUT,
    after_help = AFTER_HELP
)]
pub struct Args {
    /// The pipe's name: \\.\pipe\NAME, //./pipe/NAME or NAME.
    pub name: String,

    /// The request to send (one message on a message pipe); `-` reads it
    /// from standard input and `@FILE` from FILE.
    pub data: String,

    /// Send DATA as written, even when it is `-` or starts with `@`
    #[arg(long)]
    pub literal: bool,

    /// How long to wait for a free instance: milliseconds, or `forever`
    /// (nTimeOut)
    ///
    /// 0 does not wait: a busy pipe fails at once with ERROR_PIPE_BUSY.
    #[arg(
        verbatim_doc_comment,
        long,
        value_name = "MS|forever",
        default_value = "1000"
    )]
    pub timeout: super::TimeoutArg,

    /// How long the server may take to reply once connected: milliseconds,
    /// or `forever`
    ///
    /// A server that accepts and then hangs fails the call after this with
    /// ERROR_SEM_TIMEOUT (exit 6); its answer to the connect gets at most
    /// 5 s, or this if shorter. So the whole call takes at most --timeout
    /// plus --reply-timeout (plus 5 s). `forever` waits as CallNamedPipe
    /// does.
    #[arg(
        verbatim_doc_comment,
        long,
        value_name = "MS|forever",
        default_value = "30000"
    )]
    pub reply_timeout: super::TimeoutArg,

    /// Also wait (within --timeout) for a pipe that does not exist yet, as
    /// for a server still starting
    #[arg(long)]
    pub wait_for_server: bool,

    /// Write the reply's bytes exactly, without a newline or text conversion
    #[arg(long)]
    pub raw: bool,

    #[command(flatten)]
    pub security: super::ClientSecurity,
}

/// The most a request read from a file or standard input may hold: `call`
/// keeps it in memory.
const REQUEST_MAX: u64 = 256 << 20;

/// The client options `call` uses: the wait and the security settings.
fn options(args: &Args) -> Result<ClientOptions, Failure> {
    let mut opts = ClientOptions::new();
    // A reply may be as large as a request `call` sends (the library's
    // default would refuse one over 64 MiB).
    opts.wait(args.timeout.wait())
        .wait_for_server(args.wait_for_server)
        .max_message_size(REQUEST_MAX as u32);
    match args.reply_timeout.limit() {
        Some(limit) if limit.is_zero() => {
            return Err(
                Failure::new(Status::Usage, "--reply-timeout 0 would fail every call")
                    .hint("give the server some milliseconds to reply, or `forever`"),
            )
        }
        Some(limit) => {
            opts.read_timeout(limit);
        }
        None => {}
    }
    args.security.apply(&mut opts)?;
    Ok(opts)
}

/// The request's bytes: DATA, standard input (`-`) or a file (`@FILE`).
fn request(args: &Args) -> Result<Vec<u8>, Failure> {
    let (mut source, what): (Box<dyn Read>, String) = match args.data.as_str() {
        _ if args.literal => return Ok(args.data.as_bytes().to_vec()),
        "-" => (Box::new(io::stdin().lock()), "standard input".to_string()),
        file if file.starts_with('@') => {
            let path = &file[1..];
            let opened = std::fs::File::open(path).map_err(|e| {
                Failure::new(
                    Status::Usage,
                    format!("cannot read the request from {path}: {e}"),
                )
                .hint("give a readable file after @, or --literal to send the text as is")
            })?;
            (Box::new(opened), path.to_string())
        }
        text => return Ok(text.as_bytes().to_vec()),
    };
    let mut data = Vec::new();
    source
        .by_ref()
        .take(REQUEST_MAX + 1)
        .read_to_end(&mut data)
        .map_err(|e| Failure::new(Status::Other, format!("cannot read {what}: {e}")))?;
    if data.len() as u64 > REQUEST_MAX {
        return Err(Failure::new(
            Status::Usage,
            format!("the request in {what} is over 256 MiB, more than `call` holds"),
        )
        .hint("stream it with `npipe client` instead"));
    }
    Ok(data)
}

/// Runs `npipe call`.
pub fn run(args: &Args) -> CmdResult {
    let request = request(args)?;
    let (reply, is_message) = match call_pipe(args, &request)? {
        Ok(reply) => (reply, true),
        // A byte pipe refuses a transaction: open it and see what it is
        // (its type comes with the connection, so this works for remote
        // pipes too).
        Err(e) if matches!(e.code(), ErrorCode::BadPipe | ErrorCode::InvalidParameter) => {
            match byte_call(args, &request)? {
                Some(reply) => (reply, false),
                None => return Err(call_failure(e, args)),
            }
        }
        Err(e) => return Err(call_failure(e, args)),
    };
    print_reply(&reply, is_message, args.raw)
}

/// `CallNamedPipe` with the command line's options.
fn call_pipe(args: &Args, request: &[u8]) -> Result<npipe::Result<Vec<u8>>, Failure> {
    Ok(options(args)?.call(args.name.as_str(), request))
}

/// The byte-pipe form: write, end the request, read the reply; `None` if
/// the pipe is no byte pipe after all.
fn byte_call(args: &Args, request: &[u8]) -> Result<Option<Vec<u8>>, Failure> {
    let mut client = options(args)?
        .open(args.name.as_str())
        .map_err(|e| call_failure(e, args))?;
    let info = client.info();
    if info.pipe_type != PipeType::Byte {
        return Ok(None);
    }
    if info.access.writes() {
        client.write_all(request).map_err(Failure::pipe_io)?;
        end_request(&mut client)?;
    }
    let mut reply = Vec::new();
    if info.access.reads() {
        read_reply(&mut client, &mut reply)
            .map_err(|e| call_failure(npipe::Error::from_io(e), args))?;
    }
    Ok(Some(reply))
}

/// The end of the request: a half-close, so the server reads end of
/// stream and can still answer.
#[cfg(unix)]
fn end_request(client: &mut npipe::PipeClient) -> Result<(), Failure> {
    Ok(client.shutdown_write()?)
}

/// A Windows pipe cannot be half-closed: the server sees no end.
#[cfg(windows)]
fn end_request(_: &mut npipe::PipeClient) -> Result<(), Failure> {
    Ok(())
}

/// Everything until the server closes.
#[cfg(unix)]
fn read_reply(client: &mut npipe::PipeClient, reply: &mut Vec<u8>) -> io::Result<()> {
    client.read_to_end(reply).map(|_| ())
}

/// What comes back (the first bytes within the read timeout,
/// `--reply-timeout`) until the server closes or is quiet for
/// [`LINGER`](super::client::LINGER): it never saw the request end.
#[cfg(windows)]
fn read_reply(client: &mut npipe::PipeClient, reply: &mut Vec<u8>) -> io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match client.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => {
                reply.extend_from_slice(&buf[..n]);
                client.set_read_timeout(Some(super::client::LINGER))?;
            }
            Err(e) if e.kind() == io::ErrorKind::TimedOut && !reply.is_empty() => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}

fn call_failure(err: npipe::Error, args: &Args) -> Failure {
    let code = err.code();
    let err_copy = npipe::Error::new(code, err.message());
    let failure = Failure::from(err);
    match code {
        ErrorCode::PipeBusy => {
            failure.hint("every instance is busy; give --timeout MS to wait for a free one")
        }
        ErrorCode::Timeout => failure.hint(format!(
            "no instance became free within --timeout {}, or the server did not reply within \
             --reply-timeout {}; give either more time",
            args.timeout, args.reply_timeout
        )),
        ErrorCode::FileNotFound if !args.wait_for_server => failure.hint(
            "no server serves it (`npipe list` shows the pipes there are); \
                 --wait-for-server waits for one to start",
        ),
        ErrorCode::AccessDenied => {
            let hint = super::access_hint(&err_copy, &args.name, "a call needs a duplex pipe");
            failure.hint(hint.unwrap_or_default())
        }
        _ => failure,
    }
}

fn print_reply(reply: &[u8], is_message: bool, raw: bool) -> CmdResult {
    let mut out = io::stdout().lock();
    let written = if raw {
        out.write_all(reply)
    } else {
        let text = lossy(reply);
        out.write_all(text.as_bytes()).and_then(|()| {
            // A message is printed as one line; a byte reply gets a newline
            // only if it does not end with one.
            if is_message || !text.ends_with('\n') {
                out.write_all(b"\n")
            } else {
                Ok(())
            }
        })
    };
    written.and_then(|()| out.flush()).map_err(Failure::stdout)
}
