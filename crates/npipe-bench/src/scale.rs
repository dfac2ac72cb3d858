//! The scale case: many clients at once against one server process.
//!
//! npipe's side is the real `npipe serve` (tokio, one thread, a task per
//! client); the raw side is the same shape by hand: a current-thread tokio
//! runtime, a task per connection, echoing length-prefixed messages (the
//! hidden `npipe bench-scale-peer`). Each round starts both servers afresh,
//! connects N clients one after another (each exchanges one message, so it is
//! really served), reads the server's resident memory with all N idle, then
//! has every client exchange M messages at once, replies checked in order.
//! Three rows: `scale_connect_rate`, `scale_msg_rate`, `scale_idle_memory`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use npipe::{ClientOptions, Wait};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use super::cases::{runtime, Better, Scale, Unit};
use super::report::{Rounds, Row};
use super::{pin, ScratchDir};
use crate::Error;

/// The scale case's published row names share this prefix.
pub const NAME: &str = "scale";

/// Messages in flight per client during the message phase.
const WINDOW: usize = 8;

/// Clients and messages per client at each scale.
pub fn shape(scale: Scale) -> (usize, usize) {
    match scale {
        Scale::Full => (10_000, 100),
        Scale::Quick => (1_000, 20),
        Scale::Smoke => (20, 3),
    }
}

/// What one side measured in one round.
struct Figures {
    connect_rate: f64,
    msg_rate: f64,
    idle_bytes_per_conn: f64,
}

fn failure(what: impl std::fmt::Display) -> Error {
    Error::other(format!("bench scale: {what}"))
}

/// A server process, killed when dropped.
struct Server(Child);

impl Server {
    fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Resident memory in bytes.
    fn rss(&self) -> Result<u64, Error> {
        let kib = super::procfs::child_status_kib(self.pid(), "VmRSS")
            .map_err(|e| failure(format!("cannot read the server's memory: {e}")))?
            .ok_or_else(|| failure("no VmRSS in /proc/PID/status"))?;
        Ok(kib * 1024)
    }
}

impl Drop for Server {
    /// SIGTERM first, so `npipe serve` removes its pipe; SIGKILL if it is
    /// still there a moment later.
    fn drop(&mut self) {
        if let Some(pid) = rustix::process::Pid::from_raw(self.pid() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(args: &[&str], cpu: Option<usize>) -> Result<Server, Error> {
    let exe = std::env::current_exe().map_err(|e| failure(format!("cannot find npipe: {e}")))?;
    let child = Command::new(exe)
        .env(crate::INTERNAL_ROLE, "1")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        // The clients see any failure of the server; its log would only
        // clutter the table.
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| failure(format!("cannot start a server: {e}")))?;
    let server = Server(child);
    if let Some(cpu) = cpu {
        pin::pin_pid(server.pid(), cpu)?;
    }
    Ok(server)
}

/// Waits until `ready` says the server serves.
fn wait_until(what: &str, mut ready: impl FnMut() -> bool) -> Result<(), Error> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ready() {
        if Instant::now() > deadline {
            return Err(failure(format!("{what} did not come up")));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// Raises the open-file limit of this process so it can hold `n` clients.
fn allow_open_files(n: u64) -> Result<(), Error> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current.is_none_or(|c| c >= n) {
        return Ok(());
    }
    let hard = limit.maximum.map_or(n, |h| h.max(n));
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(n),
            maximum: Some(hard),
        },
    )
    .or_else(|_| {
        setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(n),
                maximum: limit.maximum,
            },
        )
    })
    .map_err(|e| failure(format!("cannot raise the open-file limit to {n}: {e}")))
}

fn message(client: usize, seq: usize) -> Vec<u8> {
    let mut m = format!("{client}:{seq}:").into_bytes();
    m.resize(64, b'.');
    m
}

/// One round through npipe: `npipe serve` and the async client API.
fn npipe_round(
    name: &str,
    clients: usize,
    msgs: usize,
    cpu: Option<usize>,
) -> Result<Figures, Error> {
    let server = spawn(&["serve", name, "--quiet"], cpu)?;
    wait_until("npipe serve", || npipe::query_pipe(name).is_ok())?;
    let base = server.rss()?;
    runtime()?.block_on(async {
        let mut opts = ClientOptions::new();
        opts.wait(Wait::Timeout(Duration::from_secs(30)));
        let start = Instant::now();
        let mut conns = Vec::with_capacity(clients);
        for i in 0..clients {
            let mut c = opts.open_async(name).await?;
            let m = message(i, 0);
            if c.transact(&m).await? != m {
                return Err(failure("a wrong first reply"));
            }
            conns.push(c);
        }
        let connect_rate = clients as f64 / start.elapsed().as_secs_f64();
        let idle = server.rss()?.saturating_sub(base) as f64 / clients as f64;
        let start = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for (i, mut c) in conns.into_iter().enumerate() {
            tasks.spawn(async move {
                let (mut sent, mut got) = (0, 0);
                while got < msgs {
                    while sent < msgs && sent - got < WINDOW {
                        c.write_message(&message(i, sent + 1)).await?;
                        sent += 1;
                    }
                    if c.recv_message().await? != message(i, got + 1) {
                        return Err(failure("a reply out of order"));
                    }
                    got += 1;
                }
                Ok::<_, Error>(())
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.map_err(failure)??;
        }
        let msg_rate = (clients * msgs) as f64 / start.elapsed().as_secs_f64();
        Ok(Figures {
            connect_rate,
            msg_rate,
            idle_bytes_per_conn: idle,
        })
    })
}

async fn raw_exchange(s: &mut UnixStream, m: &[u8]) -> std::io::Result<Vec<u8>> {
    raw_send(s, m).await?;
    raw_recv(s).await
}

async fn raw_send(s: &mut UnixStream, m: &[u8]) -> std::io::Result<()> {
    let mut frame = Vec::with_capacity(4 + m.len());
    frame.extend_from_slice(&(m.len() as u32).to_le_bytes());
    frame.extend_from_slice(m);
    s.write_all(&frame).await
}

/// The largest message the raw side accepts (the case sends 64 bytes).
const RAW_MAX: usize = 64 * 1024;

async fn raw_recv(s: &mut UnixStream) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).await?;
    let len = u32::from_le_bytes(len) as usize;
    if len > RAW_MAX {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "message larger than the scale case sends",
        ));
    }
    let mut m = vec![0u8; len];
    s.read_exact(&mut m).await?;
    Ok(m)
}

/// One round through raw sockets: the hand-written tokio echo server.
fn raw_round(
    path: &Path,
    clients: usize,
    msgs: usize,
    cpu: Option<usize>,
) -> Result<Figures, Error> {
    let _ = std::fs::remove_file(path);
    let path_text = path
        .to_str()
        .ok_or_else(|| failure("a non-UTF-8 scratch path"))?;
    let server = spawn(&["bench-scale-peer", path_text], cpu)?;
    wait_until("the raw server", || {
        std::os::unix::net::UnixStream::connect(path).is_ok()
    })?;
    let base = server.rss()?;
    let io = |e: std::io::Error| failure(format!("raw client: {e}"));
    runtime()?.block_on(async {
        let start = Instant::now();
        let mut conns = Vec::with_capacity(clients);
        for i in 0..clients {
            let mut s = UnixStream::connect(path).await.map_err(io)?;
            let m = message(i, 0);
            if raw_exchange(&mut s, &m).await.map_err(io)? != m {
                return Err(failure("a wrong first reply"));
            }
            conns.push(s);
        }
        let connect_rate = clients as f64 / start.elapsed().as_secs_f64();
        let idle = server.rss()?.saturating_sub(base) as f64 / clients as f64;
        let start = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for (i, mut s) in conns.into_iter().enumerate() {
            tasks.spawn(async move {
                let (mut sent, mut got) = (0, 0);
                while got < msgs {
                    while sent < msgs && sent - got < WINDOW {
                        raw_send(&mut s, &message(i, sent + 1)).await?;
                        sent += 1;
                    }
                    if raw_recv(&mut s).await? != message(i, got + 1) {
                        return Err(std::io::Error::other("a reply out of order"));
                    }
                    got += 1;
                }
                Ok(())
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.map_err(failure)?.map_err(io)?;
        }
        let msg_rate = (clients * msgs) as f64 / start.elapsed().as_secs_f64();
        Ok(Figures {
            connect_rate,
            msg_rate,
            idle_bytes_per_conn: idle,
        })
    })
}

/// Runs the scale case: `rounds` rounds, npipe and raw interleaved; the
/// three rows.
pub fn run(
    scale: Scale,
    rounds: u32,
    server_cpu: Option<usize>,
    scratch: &ScratchDir,
    bar: &indicatif::ProgressBar,
) -> Result<Vec<Row>, Error> {
    let (clients, msgs) = shape(scale);
    allow_open_files(clients as u64 + 256)?;
    let name = format!("npipe-bench-{}-scale", std::process::id());
    let path: PathBuf = scratch.0.join("scale.sock");
    let mut connect = Rounds::default();
    let mut messages = Rounds::default();
    let mut memory = Rounds::default();
    for round in 0..rounds {
        bar.set_message(format!("{NAME} round {}/{rounds}", round + 1));
        let npipe_first = round % 2 == 0;
        let mut figures = [None, None];
        for step in 0..2 {
            let npipe_now = (step == 0) == npipe_first;
            let f = if npipe_now {
                npipe_round(&name, clients, msgs, server_cpu)?
            } else {
                raw_round(&path, clients, msgs, server_cpu)?
            };
            figures[usize::from(!npipe_now)] = Some(f);
            bar.inc(1);
        }
        let [Some(n), Some(r)] = figures else {
            unreachable!("both sides ran")
        };
        for (rounds, pick) in [
            (&mut connect, (n.connect_rate, r.connect_rate)),
            (&mut messages, (n.msg_rate, r.msg_rate)),
            (&mut memory, (n.idle_bytes_per_conn, r.idle_bytes_per_conn)),
        ] {
            rounds.npipe.push(super::cases::Sample {
                value: pick.0,
                p99: None,
                cpu_us: None,
            });
            rounds.raw.push(super::cases::Sample {
                value: pick.1,
                p99: None,
                cpu_us: None,
            });
            rounds.client_cpus.extend(pin::current_cpu());
            rounds.server_cpus.extend(server_cpu);
        }
    }
    let count = clients as u64;
    Ok(vec![
        Row::from_rounds(
            "scale_connect_rate",
            Unit::ConnPerSec,
            Better::Higher,
            count,
            &connect,
        ),
        Row::from_rounds(
            "scale_msg_rate",
            Unit::MsgPerSec,
            Better::Higher,
            count,
            &messages,
        ),
        Row::from_rounds(
            "scale_idle_memory",
            Unit::Bytes,
            Better::Lower,
            count,
            &memory,
        ),
    ])
}

/// The hidden `npipe bench-scale-peer PATH`: the raw side's server, a
/// current-thread runtime with a task per connection echoing
/// length-prefixed messages, until killed.
pub fn run_peer(path: &Path) -> Result<(), Error> {
    allow_open_files(65_536).or_else(|_| allow_open_files(20_000))?;
    runtime()?.block_on(async {
        let listener = tokio::net::UnixListener::bind(path)
            .map_err(|e| failure(format!("cannot bind {}: {e}", path.display())))?;
        loop {
            let (mut s, _) = listener.accept().await.map_err(failure)?;
            tokio::spawn(async move {
                while let Ok(m) = raw_recv(&mut s).await {
                    if raw_send(&mut s, &m).await.is_err() {
                        break;
                    }
                }
            });
        }
    })
}
