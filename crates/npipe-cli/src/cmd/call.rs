//! `npipe call`: one request, one reply (`CallNamedPipe`).

use std::io::{self, Read, Write};
use std::time::Duration;

use npipe::{ClientOptions, ErrorCode, PipeType, Wait};

use super::{lossy, CmdResult};
use crate::exit::Failure;

const LONG_ABOUT: &str = r"Send one request and print the reply (CallNamedPipe).

On a message pipe this is CallNamedPipe: connect (waiting up to --timeout for a
free instance), send DATA as one message, read one reply message, close. The
request rides with the connection handshake, so a call is one round trip.

On a byte pipe (where CallNamedPipe does not apply) it connects, writes DATA,
closes its sending side and prints everything the server sends back until the
server closes the pipe.

The reply is printed as text (invalid UTF-8 shown as U+FFFD) followed by a
newline; --raw writes the reply's bytes exactly, nothing added.";

const AFTER_HELP: &str = r"Examples:
  npipe call echo hello                   prints hello
  npipe call '\\.\pipe\echo' hello --timeout 5000
  npipe call bytes-service ping --raw | xxd";

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

    /// The request to send (one message on a message pipe).
    pub data: String,

    /// How long to wait for a free instance, in milliseconds (nTimeOut)
    ///
    /// 0 does not wait: a busy pipe fails at once with ERROR_PIPE_BUSY.
    #[arg(verbatim_doc_comment, long, value_name = "MS", default_value_t = 1000)]
    pub timeout: u64,

    /// Write the reply's bytes exactly, without a newline or text conversion
    #[arg(long)]
    pub raw: bool,

    #[command(flatten)]
    pub security: super::ClientSecurity,
}

/// The client options `call` uses: the wait and the security settings.
fn options(args: &Args, timeout: Duration) -> Result<ClientOptions, Failure> {
    let mut opts = ClientOptions::new();
    opts.wait(if timeout.is_zero() {
        Wait::NoWait
    } else {
        Wait::Timeout(timeout)
    });
    args.security.apply(&mut opts)?;
    Ok(opts)
}

/// Runs `npipe call`.
pub fn run(args: &Args) -> CmdResult {
    let timeout = Duration::from_millis(args.timeout);
    let request = args.data.as_bytes();
    let (reply, is_message) = match options(args, timeout)?.call(args.name.as_str(), request) {
        Ok(reply) => (reply, true),
        // A byte pipe refuses a transaction; ask the server what it is.
        Err(e) if matches!(e.code(), ErrorCode::BadPipe | ErrorCode::InvalidParameter) => {
            match npipe::query_pipe(args.name.as_str()) {
                Ok(p) if p.pipe_type == PipeType::Byte => (byte_call(args, timeout)?, false),
                _ => return Err(call_failure(e, args)),
            }
        }
        Err(e) => return Err(call_failure(e, args)),
    };
    print_reply(&reply, is_message, args.raw)
}

/// The byte-pipe form: write, half-close, read to the end.
fn byte_call(args: &Args, timeout: Duration) -> Result<Vec<u8>, Failure> {
    let mut client = options(args, timeout)?
        .open(args.name.as_str())
        .map_err(|e| call_failure(e, args))?;
    let access = client.info().access;
    if access.writes() {
        client
            .write_all(args.data.as_bytes())
            .map_err(Failure::pipe_io)?;
        client.shutdown_write()?;
    }
    let mut reply = Vec::new();
    if access.reads() {
        client.read_to_end(&mut reply).map_err(Failure::pipe_io)?;
    }
    Ok(reply)
}

fn call_failure(err: npipe::Error, args: &Args) -> Failure {
    let code = err.code();
    let failure = Failure::from(err);
    match code {
        ErrorCode::PipeBusy => {
            failure.hint("every instance is busy; give --timeout MS to wait for a free one")
        }
        ErrorCode::Timeout => failure.hint(format!(
            "no instance became free within --timeout {} ms, or the server did not answer; \
             try a longer --timeout",
            args.timeout
        )),
        ErrorCode::AccessDenied => failure.hint(format!(
            "a call needs a duplex pipe, or the pipe's security refuses you; \
             `npipe info {}` shows its direction and owner",
            args.name
        )),
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
