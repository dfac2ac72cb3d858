//! `npipe demo`: a server process and a client process talk over a pipe, as
//! the article's `PipeServer.exe` and `PipeServer.exe /client` do.
//!
//! The parent re-executes its own binary twice, with the hidden commands
//! `demo-server NAME` and `demo-client NAME MESSAGE`, forwards their output,
//! and checks that each side learned the other's real pid from the kernel.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use npipe::{ClientOptions, PipeClient, ServerOptions, Wait};

use super::{direction_name, lossy, type_name, CmdResult};
use crate::exit::{Failure, Status};

/// How long the client keeps trying while the server is not up yet.
const CONNECT_PATIENCE: Duration = Duration::from_secs(5);
/// How long the server waits for the client to connect.
const ACCEPT_PATIENCE: Duration = Duration::from_secs(10);
/// How long the parent lets the two processes run before killing them.
const DEMO_DEADLINE: Duration = Duration::from_secs(20);
/// How long the server waits for the client to read the reply.
const FLUSH_PATIENCE: Duration = Duration::from_secs(5);

const SERVER_PID_LINE: &str = "[client] server process id: ";
const CLIENT_PID_LINE: &str = "[server] client process id: ";

const LONG_ABOUT: &str = r"Run a server and a client process that talk over a named pipe.

The Windows named-pipe demo, on Linux: `npipe demo` picks a fresh pipe name and
starts two processes of its own binary:

  the server   creates the pipe (CreateNamedPipe: message type, duplex, one
               instance), waits for a client (ConnectNamedPipe), reads a
               message, writes it back, flushes (FlushFileBuffers) and
               disconnects (DisconnectNamedPipe)
  the client   opens the pipe (CreateFile, waiting for it as WaitNamedPipe
               would, since the server may not be up yet), writes a message
               and reads the reply

Each side prints what it did, prefixed [server] or [client], and what the
kernel told it about the other end: the client's pid, user and session
(GetNamedPipeClientProcessId, GetNamedPipeClientSessionId) and the server's
pid and user (GetNamedPipeServerProcessId). The demo then checks those pids
against the processes it started and exits 0 only if everything matched.";

/// Arguments of `npipe demo`.
#[derive(Debug, clap::Args)]
#[command(
    about = "Run a server and a client process that talk over a pipe",
    long_about = LONG_ABOUT,
    after_help = "Example:\n  npipe demo"
)]
pub struct Args {
    /// The pipe to use [default: npipe-demo-<pid>].
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,

    /// What the client sends.
    #[arg(
        long,
        value_name = "TEXT",
        default_value = "Hello from the npipe demo client"
    )]
    pub message: String,
}

/// Arguments of the hidden `npipe demo-server`.
#[derive(Debug, clap::Args)]
pub struct ServerArgs {
    /// The pipe to create.
    pub name: String,
}

/// Arguments of the hidden `npipe demo-client`.
#[derive(Debug, clap::Args)]
pub struct ClientArgs {
    /// The pipe to open.
    pub name: String,
    /// What to send.
    pub message: String,
}

/// A line of the demo's own output. Ignores a closed stdout: the parent reads
/// these lines, and a child must not panic if it stops.
fn say(line: std::fmt::Arguments<'_>) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
}

// ---------------------------------------------------------------- server ---

/// Runs the hidden `npipe demo-server NAME`.
pub fn run_server(args: &ServerArgs) -> CmdResult {
    let listener = ServerOptions::new()
        .max_instances(1)
        .first_instance(true)
        .create(args.name.as_str())?;
    let info = listener.info();
    say(format_args!(
        "[server] created {} (CreateNamedPipe: {} type, {}, 1 instance) as pid {}",
        listener.name(),
        type_name(info.pipe_type),
        direction_name(info.direction),
        std::process::id()
    ));
    say(format_args!(
        "[server] waiting for a client (ConnectNamedPipe)"
    ));
    let mut conn = accept_patiently(&listener)?;
    say(format_args!("[server] a client connected"));
    say(format_args!(
        "{CLIENT_PID_LINE}{} (GetNamedPipeClientProcessId, from the kernel)",
        conn.client_process_id()
    ));
    say(format_args!("[server] client user: {}", conn.client_user()));
    say(format_args!(
        "[server] client session id: {} (GetNamedPipeClientSessionId)",
        conn.client_session_id()
            .map_or_else(|| "unknown".to_string(), |s| s.to_string())
    ));

    let request = conn.recv_message()?;
    say(format_args!(
        "[server] received a {}-byte message (ReadFile): {:?}",
        request.len(),
        lossy(&request)
    ));
    conn.write_message(&request)?;
    say(format_args!("[server] wrote it back (WriteFile)"));
    // On Windows it bounds no flush: there the parent's deadline does.
    conn.set_write_timeout(Some(FLUSH_PATIENCE))?;
    conn.flush_buffers()?;
    conn.disconnect()?;
    say(format_args!(
        "[server] the client read the reply (FlushFileBuffers); disconnected (DisconnectNamedPipe)"
    ));
    Ok(())
}

/// The client, within [`ACCEPT_PATIENCE`].
fn accept_patiently(listener: &npipe::PipeListener) -> Result<npipe::PipeServer, Failure> {
    listener.accept_timeout(ACCEPT_PATIENCE)?.ok_or_else(|| {
        Failure::new(
            Status::Timeout,
            format!(
                "[server] no client connected within {} s",
                ACCEPT_PATIENCE.as_secs()
            ),
        )
    })
}

// ---------------------------------------------------------------- client ---

/// Opens the pipe, waiting for it to exist too (the server process may not
/// have created it yet).
fn open_patiently(name: &str) -> npipe::Result<PipeClient> {
    ClientOptions::new()
        .wait(Wait::Timeout(CONNECT_PATIENCE))
        .wait_for_server(true)
        .open(name)
}

/// Runs the hidden `npipe demo-client NAME MESSAGE`.
pub fn run_client(args: &ClientArgs) -> CmdResult {
    say(format_args!(
        "[client] opening {} as pid {} (CreateFile, waiting up to {} s as WaitNamedPipe would)",
        npipe::PipeName::parse(&args.name)?,
        std::process::id(),
        CONNECT_PATIENCE.as_secs()
    ));
    let mut client = open_patiently(&args.name)?;
    say(format_args!("[client] connected"));
    say(format_args!(
        "{SERVER_PID_LINE}{} (GetNamedPipeServerProcessId, from the kernel)",
        client.server_process_id()
    ));
    say(format_args!(
        "[client] server user: {}",
        client.server_user()
    ));
    say(format_args!(
        "[client] sending a {}-byte message (WriteFile): {:?}",
        args.message.len(),
        args.message
    ));
    client.write_message(args.message.as_bytes())?;
    let reply = client.recv_message()?;
    say(format_args!(
        "[client] received the reply (ReadFile): {:?}",
        lossy(&reply)
    ));
    if reply != args.message.as_bytes() {
        return Err(Failure::new(
            Status::Other,
            "[client] the reply differs from the message sent",
        ));
    }
    say(format_args!("[client] the reply matches what was sent"));
    Ok(())
}

// ---------------------------------------------------------------- parent ---

/// A child process that is killed and reaped if the demo stops early.
struct Running {
    role: &'static str,
    child: Child,
    status: Option<ExitStatus>,
}

impl Running {
    fn spawn(role: &'static str, command: &mut Command) -> Result<Running, Failure> {
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| {
                Failure::new(
                    Status::Other,
                    format!("cannot start the {role} process: {e}"),
                )
            })?;
        Ok(Running {
            role,
            child,
            status: None,
        })
    }

    /// Forwards the child's output to ours as it comes, and keeps it.
    fn forward_output(&mut self) -> JoinHandle<Vec<String>> {
        let stdout: Option<ChildStdout> = self.child.stdout.take();
        thread::spawn(move || {
            let mut lines = Vec::new();
            let Some(stdout) = stdout else {
                return lines;
            };
            let mut reader = BufReader::new(stdout);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.by_ref().read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => return lines,
                    Ok(_) => {
                        let line = lossy(&buf).trim_end_matches(['\n', '\r']).to_string();
                        say(format_args!("{line}"));
                        lines.push(line);
                    }
                }
            }
        })
    }

    /// Whether it has exited (remembering how).
    fn poll(&mut self) -> io::Result<bool> {
        if self.status.is_none() {
            self.status = self.child.try_wait()?;
        }
        Ok(self.status.is_some())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The pid a side reported for the other, from its output.
fn reported_pid(lines: &[String], prefix: &str) -> Option<u32> {
    lines.iter().find_map(|l| {
        l.strip_prefix(prefix)?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    })
}

/// Runs `npipe demo`.
pub fn run(args: &Args) -> CmdResult {
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| format!("npipe-demo-{}", std::process::id()));
    // Check the name here, so that a bad one fails before any process starts.
    let pipe_name = npipe::PipeName::parse(&name)?;
    let exe = std::env::current_exe().map_err(|e| {
        Failure::new(
            Status::Other,
            format!("cannot find this program's own executable: {e}"),
        )
    })?;
    say(format_args!(
        "[demo] pipe {pipe_name}: starting a server and a client process ({})",
        exe.display()
    ));

    let internal = |role: &str| {
        let mut cmd = Command::new(&exe);
        cmd.env(crate::INTERNAL_ROLE, "1").arg(role);
        cmd
    };
    let mut server = Running::spawn("server", internal("demo-server").arg(&name))?;
    let server_out = server.forward_output();
    let mut client = Running::spawn(
        "client",
        internal("demo-client").arg(&name).arg(&args.message),
    )?;
    let client_out = client.forward_output();
    say(format_args!(
        "[demo] server is pid {}, client is pid {}",
        server.child.id(),
        client.child.id()
    ));

    let deadline = Instant::now() + DEMO_DEADLINE;
    let mut timed_out = false;
    loop {
        let poll = |r: &mut Running| {
            r.poll().map_err(|e| {
                Failure::new(
                    Status::Other,
                    format!("cannot wait for the {} process: {e}", r.role),
                )
            })
        };
        let server_done = poll(&mut server)?;
        let client_done = poll(&mut client)?;
        if server_done && client_done {
            break;
        }
        if Instant::now() >= deadline {
            timed_out = true;
            for r in [&mut server, &mut client] {
                if r.status.is_none() {
                    let _ = r.child.kill();
                    r.status = r.child.wait().ok();
                }
            }
            break;
        }
        thread::sleep(Duration::from_millis(20));
    }
    let server_lines = server_out.join().unwrap_or_default();
    let client_lines = client_out.join().unwrap_or_default();

    let mut problems = Vec::new();
    if timed_out {
        problems.push(format!(
            "the demo did not finish within {} s; stopped it",
            DEMO_DEADLINE.as_secs()
        ));
    }
    for (side, other, lines, prefix, expected) in [
        (
            &server,
            &client,
            &server_lines,
            CLIENT_PID_LINE,
            client.child.id(),
        ),
        (
            &client,
            &server,
            &client_lines,
            SERVER_PID_LINE,
            server.child.id(),
        ),
    ] {
        let ok = side.status.is_some_and(|s| s.success());
        let exit = match side.status {
            Some(s) if s.success() => "exited successfully".to_string(),
            Some(s) => format!("failed ({s})"),
            None => "could not be waited for".to_string(),
        };
        if !ok {
            problems.push(format!("the {} process {exit}", side.role));
        }
        let seen = match reported_pid(lines, prefix) {
            Some(pid) if pid == expected => {
                format!("saw {} pid {pid}, the process we started", other.role)
            }
            Some(pid) => {
                problems.push(format!(
                    "the {} reported {} pid {pid}, but we started pid {expected}",
                    side.role, other.role
                ));
                format!("saw {} pid {pid}, expected {expected}", other.role)
            }
            None => {
                problems.push(format!(
                    "the {} never reported the {}'s pid",
                    side.role, other.role
                ));
                format!("reported no {} pid", other.role)
            }
        };
        say(format_args!(
            "[demo] {} (pid {}) {exit}; it {seen}",
            side.role,
            side.child.id()
        ));
    }

    if problems.is_empty() {
        say(format_args!(
            "[demo] ok: the two processes exchanged a message over {pipe_name} and each \
             identified the other from the kernel"
        ));
        Ok(())
    } else {
        Err(Failure::new(
            Status::Other,
            format!("demo failed: {}", problems.join("; ")),
        ))
    }
}
