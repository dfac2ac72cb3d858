//! `npipe serve --exec`: each connection runs a command (inetd, socat
//! `EXEC`, ncat `--sh-exec`) with the pipe on its standard input and output,
//! and the client's identity, from the kernel, in its environment.

use std::process::Stdio;
use std::time::Duration;

use npipe::tokio::PipeServer;
use npipe::{Error, ErrorCode, PipeType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::framing::Framing;
use tokio::process::{ChildStdin, ChildStdout};

/// How long a command may take to exit once its client has gone and its
/// input and output are closed, before it is killed.
const EXIT_GRACE: Duration = Duration::from_secs(2);
/// The longest line (or NUL-ended piece) a command's output makes one
/// message of; a longer one goes out in pieces of this size.
const LINE_MAX: usize = 1 << 20;
/// How much of a command's output is read at once.
const CHUNK: usize = 64 * 1024;
/// Messages queued for a command's input while it is busy; past them the
/// client is not read (backpressure).
const QUEUE: usize = 64;
/// After `--stdio`'s input ends, how long a quiet client is given to send
/// what it still has (socat waits as long).
const LINGER: Duration = Duration::from_millis(500);

/// Runs `command` (with `sh -c`) for the client on `conn`, as the client
/// with `impersonate`: on a message pipe each message in is framed on its
/// input (a line, by default) and each one it writes is a message out; on
/// a byte pipe the bytes pass both ways as they are. Ends when the command's output ends or the
/// client can no longer be written to; a command still running then is
/// given [`EXIT_GRACE`] and killed.
pub async fn serve(
    conn: &mut PipeServer,
    command: &str,
    impersonate: bool,
    can_read: bool,
    framing: Framing,
) -> npipe::Result<String> {
    let [shell, flag] = super::os::SHELL;
    let mut cmd = std::process::Command::new(shell);
    cmd.arg(flag)
        .arg(command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .env_remove(crate::INTERNAL_ROLE);
    if impersonate {
        // A process of the client's must not see the server's environment
        // (its secrets), directory or log: only what it needs.
        cmd.env_clear()
            .envs(super::os::client_env())
            .current_dir(super::os::client_dir())
            .stderr(Stdio::null());
    } else {
        cmd.stderr(Stdio::inherit());
    }
    set_identity(&mut cmd, conn);
    let mut child =
        if impersonate {
            super::os::spawn_as_client(conn, &mut cmd)?
        } else {
            super::os::Running::Server(cmd.spawn().map_err(|e| {
                Error::new(ErrorCode::Other, format!("cannot run `{command}`: {e}"))
            })?)
        };
    let pid = child.id();
    let io = |e: std::io::Error| Error::new(ErrorCode::Other, format!("the command's pipes: {e}"));
    let (stdin, stdout) = child.take_pipes();
    let stdin = ChildStdin::from_std(stdin).map_err(io)?;
    let stdout = ChildStdout::from_std(stdout).map_err(io)?;
    let bridged = match conn.info().pipe_type {
        PipeType::Message => {
            let mut stdout = stdout;
            bridge_messages(conn, Some(stdin), &mut stdout, can_read, false, framing).await
        }
        PipeType::Byte => bridge_bytes(conn, stdin, stdout, can_read).await,
    };
    // Its input and output are closed now: a command that does not exit by
    // itself is stopped.
    let mut waited = Duration::ZERO;
    let status = loop {
        if let Some(status) = child.try_wait().map_err(io)? {
            break status;
        }
        if waited >= EXIT_GRACE {
            let _ = child.kill();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        waited += Duration::from_millis(20);
    };
    let moved = bridged?;
    Ok(format!("command (pid {pid}) {status}; {moved}"))
}

/// The client's identity, for the command: `NPIPE_CLIENT_*`.
fn set_identity(cmd: &mut std::process::Command, conn: &PipeServer) {
    let id = conn.client_identity();
    let user = id.user_name.unwrap_or_default();
    cmd.env("NPIPE_CLIENT_PID", id.credentials.pid.to_string())
        .env("NPIPE_CLIENT_UID", id.credentials.user.id_text())
        .env("NPIPE_CLIENT_GID", id.credentials.group.id_text())
        .env("NPIPE_CLIENT_USER", &user)
        .env(
            "NPIPE_CLIENT_SESSION",
            id.session_id.map(|s| s.to_string()).unwrap_or_default(),
        )
        .env("NPIPE_PIPE", conn.info().name);
}

/// Messages from the client framed on `input`, the messages framed on
/// `output` to it (lines by default), until `output` ends or the client can
/// no longer be written to (when the client stops sending, `input` is
/// closed). `input` is fed
/// by a task of its own, so that `output` is read while the other side takes
/// its time with its input; `can_read` is false on an outbound pipe, whose
/// server end reads nothing; with `end_with_client` the bridge ends as soon
/// as the client sends no more (a person at the other side's terminal has
/// no more to say to it).
pub async fn bridge_messages<W, R>(
    conn: &mut PipeServer,
    input: Option<W>,
    output: &mut R,
    can_read: bool,
    end_with_client: bool,
    framing: Framing,
) -> npipe::Result<String>
where
    W: tokio::io::AsyncWrite + Unpin + Send + 'static,
    R: tokio::io::AsyncRead + Unpin,
{
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(QUEUE);
    let mut tx = input.is_some().then_some(tx);
    let feeder = input.map(|mut to| {
        tokio::spawn(async move {
            while let Some(line) = rx.recv().await {
                if to.write_all(&line).await.is_err() || to.flush().await.is_err() {
                    break; // the other side stopped reading
                }
            }
            // Dropped here: the end of its input.
        })
    });
    let (mut pending, mut searched) = (Vec::new(), 0);
    let (mut inbound, mut outbound) = (0u64, 0u64);
    // Once `output` has ended (with `end_with_client`: the person typing
    // has no more to say), messages still coming are taken until the
    // client closes or goes quiet for [`LINGER`].
    let mut output_ended: Option<tokio::time::Instant> = None;
    loop {
        let mut stopped_reading = false;
        let quiet_until = output_ended.unwrap_or_else(tokio::time::Instant::now);
        pending.reserve(CHUNK);
        tokio::select! {
            // Cancel-safe both: a message half-read stays for the next
            // turn, a reserved place is only given back, and a read that
            // loses the race has read nothing.
            got = async {
                let permit = tx.as_ref().expect("checked").reserve().await.ok()?;
                Some((permit, conn.recv_message().await))
            }, if tx.is_some() && can_read => match got {
                None => stopped_reading = true, // the other side did
                Some((permit, Ok(msg))) => {
                    permit.send(framing.frame(&msg));
                    inbound += 1;
                    if output_ended.is_some() {
                        output_ended = Some(tokio::time::Instant::now() + LINGER);
                    }
                }
                // The client sends no more (it may still read, after a
                // half-close): the other side sees the end of its input
                // and may still answer; a client that left altogether
                // fails the next write, which ends the bridge.
                Some((_, Err(e))) if e.code() == ErrorCode::BrokenPipe => {
                    if end_with_client {
                        break;
                    }
                    stopped_reading = true;
                }
                Some((_, Err(e))) => return Err(e),
            },
            () = tokio::time::sleep_until(quiet_until), if output_ended.is_some() => break,
            read = output.read_buf(&mut pending), if output_ended.is_none() => {
                let end = match read {
                    Ok(n) => n == 0,
                    Err(e) => {
                        return Err(Error::new(ErrorCode::Other, format!("the output: {e}")))
                    }
                };
                let mut delivered = true;
                for msg in messages_in(framing, &mut pending, &mut searched, end)? {
                    if let Err(e) = conn.write_message(&msg).await {
                        if e.code() == ErrorCode::BrokenPipe || e.code() == ErrorCode::NoData {
                            delivered = false; // the client left
                            break;
                        }
                        return Err(e);
                    }
                    outbound += 1;
                }
                if !delivered {
                    break;
                }
                if end {
                    if end_with_client && tx.is_some() && can_read {
                        output_ended = Some(tokio::time::Instant::now() + LINGER);
                    } else {
                        break;
                    }
                }
            }
        }
        if stopped_reading {
            tx = None;
        }
    }
    // What was taken from the client is delivered before the end (a
    // command that takes too long to read it is not waited for).
    drop(tx);
    if let Some(feeder) = feeder {
        let abort = feeder.abort_handle();
        if tokio::time::timeout(EXIT_GRACE, feeder).await.is_err() {
            abort.abort();
        }
    }
    Ok(format!("{inbound} message(s) in, {outbound} out"))
}

/// The whole messages `pending` holds, taken off it; at the end of output
/// what is left is the last (a length-framed one cut short is an error).
/// A line or NUL-ended piece longer than [`LINE_MAX`] goes in pieces.
fn messages_in(
    framing: Framing,
    pending: &mut Vec<u8>,
    searched: &mut usize,
    end: bool,
) -> npipe::Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    loop {
        match framing.take(pending, searched, end) {
            Ok(Some(msg)) => out.push(msg),
            Ok(None) => break,
            Err(e) => return Err(Error::new(ErrorCode::Other, format!("the output: {e}"))),
        }
    }
    while matches!(framing, Framing::Line | Framing::Nul) && pending.len() >= LINE_MAX {
        out.push(pending.drain(..LINE_MAX).collect());
        *searched = 0;
    }
    Ok(out)
}

/// Bytes both ways, as they come, until the client leaves or the command's
/// output ends.
async fn bridge_bytes(
    conn: &mut PipeServer,
    mut stdin: ChildStdin,
    mut stdout: ChildStdout,
    can_read: bool,
) -> npipe::Result<String> {
    let (mut from_client, mut to_client) = tokio::io::split(conn);
    let inbound = async {
        if !can_read {
            return std::future::pending().await;
        }
        let n = tokio::io::copy(&mut from_client, &mut stdin).await;
        drop(stdin); // end of the command's input
        n
    };
    let outbound = async {
        let n = tokio::io::copy(&mut stdout, &mut to_client).await;
        let _ = to_client.shutdown().await;
        n
    };
    tokio::pin!(inbound, outbound);
    // The command's output ending ends it; the client's ending only closes
    // the command's input, which may still answer.
    let mut client_done = false;
    loop {
        tokio::select! {
            n = &mut outbound => return Ok(format!("{} byte(s) out", n.unwrap_or(0))),
            _ = &mut inbound, if !client_done => client_done = true,
        }
    }
}
