//! `npipe client` and `npipe call`'s byte form on Windows. A synchronous
//! Windows pipe handle does one operation at a time (a read waiting for
//! the server holds up a write from another thread), and a pipe cannot be
//! half-closed, so the Linux way (a reading and a writing thread, then
//! `shutdown_write`) does not carry over. Here one task waits for input
//! and for the pipe at once, on overlapped I/O (`npipe::tokio`), whose
//! reads give up nothing when a wait for input wins the race.

use std::io::{self, Read, Write};

use npipe::tokio::PipeClient;
use npipe::{ClientOptions, ErrorCode, PipeType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::client::{announce, open_failure, Args, LINGER};
use super::framing::Framing;
use super::CmdResult;
use crate::exit::{Failure, Status};

/// A chunk of standard input, read by the feeder thread.
enum Input {
    Data(Vec<u8>),
    End,
    Failed(io::Error),
}

/// A runtime on this thread for the overlapped I/O.
fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::new(Status::Other, format!("cannot start a runtime: {e}")))
}

/// Runs `npipe client` with the options `run` made.
pub fn run(opts: &ClientOptions, args: &Args) -> CmdResult {
    runtime()?.block_on(async {
        let mut client = opts
            .open_async(args.name.as_str())
            .await
            .map_err(|e| open_failure(e, &args.name))?;
        let info = client.info();
        announce(&info, client.server_process_id(), args.quiet);
        let input = feed_stdin();
        match info.pipe_type {
            PipeType::Message => messages(&mut client, input, args.framing).await,
            PipeType::Byte => bytes(&mut client, input).await,
        }
    })
}

/// Reads stdin on a thread of its own (a console read cannot be waited
/// for with the pipe); the thread is left behind when the pipe side ends.
fn feed_stdin() -> mpsc::Receiver<Input> {
    let (tx, rx) = mpsc::channel(4);
    std::thread::spawn(move || {
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
            if tx.blocking_send(item).is_err() || last {
                return;
            }
        }
    });
    rx
}

/// Messages both ways: each framed piece of input is sent as it comes,
/// each message the server sends is printed as it arrives. Ends when the
/// server closes, or after the end of input once every message has had a
/// reply and [`LINGER`] passed with nothing more.
async fn messages(
    client: &mut PipeClient,
    mut input: mpsc::Receiver<Input>,
    framing: Framing,
) -> CmdResult {
    let (mut sent, mut received) = (0u64, 0u64);
    let (mut pending, mut searched) = (Vec::new(), 0);
    let mut input_done = false;
    loop {
        let quiet = input_done && received >= sent;
        tokio::select! {
            item = input.recv(), if !input_done => {
                let end = match item {
                    Some(Input::Data(chunk)) => {
                        pending.extend_from_slice(&chunk);
                        false
                    }
                    Some(Input::End) | None => true,
                    Some(Input::Failed(e)) => return Err(Failure::stdin(e)),
                };
                while let Some(msg) = framing
                    .take(&mut pending, &mut searched, end)
                    .map_err(|e| Failure::new(Status::Usage, e))?
                {
                    client.write_message(&msg).await?;
                    sent += 1;
                }
                input_done = end;
            }
            msg = client.recv_message() => match msg {
                Ok(msg) => {
                    print(&framing.frame(&msg))?;
                    received += 1;
                }
                Err(e) if e.code() == ErrorCode::BrokenPipe => return Ok(()),
                Err(e) => return Err(e.into()),
            },
            () = tokio::time::sleep(LINGER), if quiet => return Ok(()),
        }
    }
}

/// Bytes both ways, as they come. A Windows pipe cannot be half-closed:
/// after the end of input the client prints what still comes until the
/// server closes or [`LINGER`] passes with nothing more.
async fn bytes(client: &mut PipeClient, mut input: mpsc::Receiver<Input>) -> CmdResult {
    let mut buf = vec![0u8; 64 * 1024];
    let mut input_done = false;
    loop {
        tokio::select! {
            item = input.recv(), if !input_done => match item {
                Some(Input::Data(chunk)) => client.write_all(&chunk).await.map_err(Failure::pipe_io)?,
                Some(Input::End) | None => input_done = true,
                Some(Input::Failed(e)) => return Err(Failure::stdin(e)),
            },
            n = client.read(&mut buf) => match n {
                Ok(0) => return Ok(()),
                Ok(n) => print(&buf[..n])?,
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(()),
                Err(e) => return Err(Failure::pipe_io(e)),
            },
            () = tokio::time::sleep(LINGER), if input_done => return Ok(()),
        }
    }
}

/// `npipe call` on a byte pipe: writes the request, then reads what comes
/// back until the server closes or [`LINGER`] passes with nothing more;
/// `None` if the pipe is no byte pipe after all.
pub fn byte_call(
    opts: &ClientOptions,
    name: &str,
    request: &[u8],
) -> Result<Option<Vec<u8>>, Failure> {
    runtime()?.block_on(async {
        let mut client = opts.open_async(name).await?;
        if client.info().pipe_type != PipeType::Byte {
            return Ok(None);
        }
        client.write_all(request).await.map_err(Failure::pipe_io)?;
        let mut reply = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match tokio::time::timeout(LINGER, client.read(&mut buf)).await {
                Err(_) | Ok(Ok(0)) => return Ok(Some(reply)),
                Ok(Ok(n)) => reply.extend_from_slice(&buf[..n]),
                Ok(Err(e)) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(Some(reply)),
                Ok(Err(e)) => return Err(Failure::pipe_io(e)),
            }
        }
    })
}

fn print(bytes: &[u8]) -> CmdResult {
    let mut out = io::stdout().lock();
    out.write_all(bytes)
        .and_then(|()| out.flush())
        .map_err(Failure::stdout)
}
