//! `npipe serve --exec`: each connection runs a command (inetd, socat
//! `EXEC`, ncat `--sh-exec`) with the pipe on its standard input and output,
//! and the client's identity, from the kernel, in its environment.

use std::process::Stdio;

use npipe::tokio::PipeServer;
use npipe::unix::{LocalGroupExt, LocalUserExt};
use npipe::{Error, ErrorCode, PipeType};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{ChildStdin, ChildStdout};

/// Runs `command` (with `sh -c`) for the client on `conn`, as the client
/// with `impersonate`: on a message pipe each message in is a line on its
/// input and each line it writes a message out; on a byte pipe the bytes
/// pass both ways as they are. Ends when the command's output ends (the
/// connection is then closed) or, after the client left, when it exits.
pub async fn serve(
    conn: &mut PipeServer,
    command: &str,
    impersonate: bool,
) -> npipe::Result<String> {
    let mut cmd = std::process::Command::new("sh");
    cmd.arg("-c")
        .arg(command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    set_identity(&mut cmd, conn);
    let mut child = if impersonate {
        conn.spawn_as_client(&mut cmd)?
    } else {
        cmd.spawn()
            .map_err(|e| Error::new(ErrorCode::Other, format!("cannot run `{command}`: {e}")))?
    };
    let pid = child.id();
    let io = |e: std::io::Error| Error::new(ErrorCode::Other, format!("the command's pipes: {e}"));
    let stdin = ChildStdin::from_std(child.stdin.take().expect("piped")).map_err(io)?;
    let stdout = ChildStdout::from_std(child.stdout.take().expect("piped")).map_err(io)?;
    let bridged = match conn.info().pipe_type {
        PipeType::Message => {
            let mut lines = BufReader::new(stdout);
            bridge_messages(conn, Some(stdin), &mut lines, ClientGone::DrainOutput).await
        }
        PipeType::Byte => bridge_bytes(conn, stdin, stdout).await,
    };
    // The command's output ended, or the client left and the command was
    // told so by the end of its input: reap it without blocking the runtime.
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .map_err(|e| Error::new(ErrorCode::Other, e.to_string()))?
        .map_err(io)?;
    let moved = bridged?;
    Ok(format!("command (pid {pid}) {status}; {moved}"))
}

/// The client's identity, for the command: `NPIPE_CLIENT_*`.
fn set_identity(cmd: &mut std::process::Command, conn: &PipeServer) {
    let id = conn.client_identity();
    cmd.env("NPIPE_CLIENT_PID", id.credentials.pid.to_string())
        .env("NPIPE_CLIENT_UID", id.credentials.user.uid().to_string())
        .env("NPIPE_CLIENT_GID", id.credentials.group.gid().to_string())
        .env("NPIPE_CLIENT_USER", id.user_name.unwrap_or_default())
        .env(
            "NPIPE_CLIENT_SESSION",
            id.session_id.map(|s| s.to_string()).unwrap_or_default(),
        )
        .env("NPIPE_PIPE", conn.info().name);
}

/// What a message bridge does once its client has left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientGone {
    /// Close the other side's input and read its output to the end (a
    /// command finishing its work).
    DrainOutput,
    /// Stop at once (the next client takes over the other side).
    Stop,
}

/// Messages in as lines on `input` (closed when the client leaves), the
/// lines of `output` out as messages, until `output` ends (or, with
/// [`ClientGone::Stop`], the client leaves).
pub async fn bridge_messages<W, R>(
    conn: &mut PipeServer,
    input: Option<W>,
    output: &mut R,
    gone: ClientGone,
) -> npipe::Result<String>
where
    W: tokio::io::AsyncWrite + Unpin,
    R: tokio::io::AsyncBufRead + Unpin,
{
    let mut stdin = input;
    let lines = output;
    let mut line = Vec::new();
    let (mut inbound, mut outbound) = (0u64, 0u64);
    loop {
        tokio::select! {
            // Both cancel-safe: a message or a line half-read stays for the
            // next turn.
            msg = conn.recv_message(), if stdin.is_some() || gone == ClientGone::Stop => match msg {
                Ok(mut msg) => {
                    msg.push(b'\n');
                    if let Some(to) = stdin.as_mut() {
                        if to.write_all(&msg).await.and(to.flush().await).is_err() {
                            stdin = None; // the other side stopped reading
                        }
                    }
                    inbound += 1;
                }
                // The client left: the command sees the end of its input.
                Err(e) if e.code() == ErrorCode::BrokenPipe => {
                    if gone == ClientGone::Stop {
                        break;
                    }
                    stdin = None;
                }
                Err(e) => return Err(e),
            },
            read = lines.read_until(b'\n', &mut line) => match read {
                Ok(0) => break,
                Ok(_) => {
                    if line.last() == Some(&b'\n') {
                        line.pop();
                    }
                    // A client that left no longer hears the command.
                    if conn.write_message(&line).await.is_ok() {
                        outbound += 1;
                    }
                    line.clear();
                }
                Err(e) => return Err(Error::new(ErrorCode::Other, format!("the command's output: {e}"))),
            },
        }
    }
    Ok(format!("{inbound} message(s) in, {outbound} out"))
}

/// Bytes both ways, as they come.
async fn bridge_bytes(
    conn: &mut PipeServer,
    mut stdin: ChildStdin,
    mut stdout: ChildStdout,
) -> npipe::Result<String> {
    let (mut from_client, mut to_client) = tokio::io::split(conn);
    let inbound = async {
        let n = tokio::io::copy(&mut from_client, &mut stdin).await;
        drop(stdin); // end of the command's input
        n
    };
    let outbound = async {
        let n = tokio::io::copy(&mut stdout, &mut to_client).await;
        let _ = to_client.shutdown().await;
        n
    };
    let (inbound, outbound) = tokio::join!(inbound, outbound);
    Ok(format!(
        "{} byte(s) in, {} out",
        inbound.unwrap_or(0),
        outbound.unwrap_or(0)
    ))
}
