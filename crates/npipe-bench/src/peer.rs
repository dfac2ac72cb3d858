//! The server side, in a process of its own: `npipe bench-peer` (hidden).
//!
//! The bench re-executes its own binary once per case. The peer pins itself,
//! creates an npipe server and a raw Unix socket listener, says `ready` on
//! standard output, and serves both, one connection at a time each, until
//! its standard input closes (the bench is done, or died).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;

use npipe::{MessageRead, PipeListener, PipeServer, PipeType, ServerOptions};

use super::cases::{self, Case, Kind, CASES};
use super::{pin, raw};
use crate::Error;

/// Arguments of the hidden `npipe bench-peer`.
#[derive(Debug, clap::Args)]
pub struct PeerArgs {
    /// The case to serve.
    #[arg(long)]
    pub(crate) case: String,
    /// The npipe name to create.
    #[arg(long)]
    pub(crate) name: String,
    /// The raw socket's path.
    #[arg(long)]
    pub(crate) raw: PathBuf,
    /// The CPU to pin to (none: not pinned).
    #[arg(long)]
    pub(crate) cpu: Option<usize>,
    /// The remote cases' certificates (a gateway and a raw TLS server are
    /// started beside the pipe's server).
    #[arg(long)]
    pub(crate) certs: Option<PathBuf>,
}

/// A running peer, stopped and reaped when dropped.
pub struct Peer {
    child: Child,
    stdin: Option<ChildStdin>,
    raw: PathBuf,
    /// The remote cases' gateway and raw TLS ports.
    ports: Option<(u16, u16)>,
}

impl Peer {
    /// Starts the peer for `case` and waits until it serves.
    pub fn start(
        case: &Case,
        name: &str,
        raw: &Path,
        cpu: Option<usize>,
        certs: Option<&Path>,
    ) -> Result<Peer, Error> {
        let exe = std::env::current_exe().map_err(|e| {
            Error::other(format!(
                "bench: cannot find this program to start the server side: {e}"
            ))
        })?;
        let mut cmd = Command::new(exe);
        cmd.env(crate::INTERNAL_ROLE, "1")
            .arg("bench-peer")
            .arg("--case")
            .arg(case.name)
            .arg("--name")
            .arg(name)
            .arg("--raw")
            .arg(raw);
        if let Some(cpu) = cpu {
            cmd.arg("--cpu").arg(cpu.to_string());
        }
        if let Some(certs) = certs {
            cmd.arg("--certs").arg(certs);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| Error::other(format!("bench: cannot start the server process: {e}")))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut peer = Peer {
            child,
            stdin,
            raw: raw.to_path_buf(),
            ports: None,
        };
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let mut words = line.split_whitespace();
        let ready = words.next() == Some("ready");
        let ports: Vec<u16> = words.filter_map(|w| w.parse().ok()).collect();
        if let [gateway, raw_tls] = ports[..] {
            peer.ports = Some((gateway, raw_tls));
        }
        if !ready || (certs.is_some() && peer.ports.is_none()) {
            let status = peer.child.wait().ok();
            return Err(Error::other(format!(
                "bench: the server process for {} did not start ({})",
                case.name,
                status.map_or_else(|| "unknown status".to_string(), |s| s.to_string())
            )));
        }
        Ok(peer)
    }

    /// The peer's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The remote cases' gateway and raw TLS ports.
    pub fn ports(&self) -> Option<(u16, u16)> {
        self.ports
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        // Closing its stdin tells the peer to clean up and exit.
        drop(self.stdin.take());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(2))
                }
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break;
                }
            }
        }
        let _ = std::fs::remove_file(&self.raw);
    }
}

/// Runs the hidden `npipe bench-peer`.
pub fn run(args: &PeerArgs) -> Result<(), Error> {
    let case = *CASES
        .iter()
        .find(|c| c.name == args.case)
        .ok_or_else(|| Error::usage(format!("no case {}", args.case)))?;
    // Pin first: the threads started below inherit it.
    if let Some(cpu) = args.cpu {
        pin::pin_to(cpu)?;
    }
    let case: &'static Case = CASES
        .iter()
        .find(|c| c.name == case.name)
        .expect("found above");
    let pipe_type = match case.kind {
        Kind::Bytes | Kind::RemoteBytes => PipeType::Byte,
        _ => PipeType::Message,
    };
    if case.kind == Kind::TransactTokio {
        let (tx, rx) = mpsc::channel();
        let name = args.name.clone();
        std::thread::spawn(move || serve_tokio(case, &name, &tx));
        rx.recv()
            .map_err(|_| Error::other("bench: the tokio server thread died"))??;
    } else {
        let mut opts = ServerOptions::new();
        opts.pipe_type(pipe_type);
        if case.kind.is_remote() {
            // The gateway below runs as this process's user, and remote
            // clients need write access (the default grants others read).
            opts.trust_gateway(npipe::LocalUser::current())
                .security("allow everyone=full".parse()?);
        }
        let listener = opts.create(args.name.as_str())?;
        std::thread::spawn(move || serve(case, &listener));
    }
    let ports = match &args.certs {
        Some(dir) => Some(super::remote::serve(
            case,
            &super::remote::Certs::at(dir),
            &args.name,
        )?),
        None => None,
    };
    let _ = std::fs::remove_file(&args.raw);
    let raw_listener = UnixListener::bind(&args.raw)
        .map_err(|e| Error::other(format!("bench: cannot bind {}: {e}", args.raw.display())))?;
    std::thread::spawn(move || raw::serve(case, raw_listener));

    let mut out = io::stdout().lock();
    let _ = match ports {
        Some((gateway, raw_tls)) => writeln!(out, "ready {gateway} {raw_tls}"),
        None => writeln!(out, "ready"),
    }
    .and_then(|()| out.flush());
    drop(out);

    // Wait for the bench to close our stdin, then clean up. The npipe
    // listener lives in its thread, blocked in accept: remove its socket
    // file by hand, as a dropped listener would.
    let mut sink = [0u8; 64];
    let mut stdin = io::stdin().lock();
    while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
    let _ = std::fs::remove_file(&args.raw);
    if let Ok(name) = npipe::PipeName::parse(&args.name) {
        let _ = std::fs::remove_file(npipe::namespace_directory().join(name.file_name()));
    }
    std::process::exit(0)
}

/// The npipe server side: one connection at a time, for ever.
fn serve(case: &Case, listener: &PipeListener) {
    let mut buf = vec![0u8; case.server_buffer()];
    for conn in listener.incoming() {
        // The listener failed: the bench's clients will say so.
        let Ok(conn) = conn else { break };
        // A client that goes away mid-run is the bench's problem, not ours.
        let _ = serve_one(case, conn, &mut buf);
    }
}

/// The npipe server side of the tokio case, on a current-thread runtime;
/// says on `ready` whether the pipe was created.
fn serve_tokio(case: &Case, name: &str, ready: &mpsc::Sender<Result<(), Error>>) {
    let rt = match cases::runtime() {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    rt.block_on(async {
        let listener = match ServerOptions::new().create_async(name) {
            Ok(l) => l,
            Err(e) => {
                let _ = ready.send(Err(e.into()));
                return;
            }
        };
        let _ = ready.send(Ok(()));
        let mut buf = vec![0u8; case.server_buffer()];
        while let Ok(mut conn) = listener.accept().await {
            // The client closes when its run is done.
            while let Ok(MessageRead::Complete(n)) = conn.read_message(&mut buf).await {
                if conn.write_message(&buf[..n]).await.is_err() {
                    break;
                }
            }
        }
    });
}

fn serve_one(case: &Case, mut conn: PipeServer, buf: &mut [u8]) -> Result<(), Error> {
    match case.kind {
        Kind::Bytes | Kind::RemoteBytes => {
            while conn.read(buf).map_err(Error::pipe_io)? > 0 {}
            conn.write_all(&[1]).map_err(Error::pipe_io)
        }
        Kind::Messages => {
            loop {
                match conn.read_message(buf)? {
                    MessageRead::Complete(0) => break,
                    MessageRead::Complete(_) => {}
                    MessageRead::MoreData(_) => {
                        return Err(Error::other("a message larger than planned"))
                    }
                }
            }
            Ok(conn.write_message(&[])?)
        }
        Kind::Transact | Kind::TransactTokio | Kind::RemoteTransact => loop {
            match conn.read_message(buf) {
                Ok(MessageRead::Complete(n)) => conn.write_message(&buf[..n])?,
                Ok(MessageRead::MoreData(_)) => {
                    return Err(Error::other("a message larger than planned"))
                }
                // The client closes when its run is done.
                Err(_) => return Ok(()),
            }
        },
        Kind::Connect | Kind::Call | Kind::RemoteConnect => match conn.read_message(buf)? {
            MessageRead::Complete(n) => Ok(conn.write_message(&buf[..n])?),
            MessageRead::MoreData(_) => Err(Error::other("a message larger than planned")),
        },
    }
}
