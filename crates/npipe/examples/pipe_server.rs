//! The article's demo, `PipeServer.exe`, in Rust.
//!
//! ```text
//! cargo run --example pipe_server            # the echo server
//! cargo run --example pipe_server -- /client # a client: writes, reads the echo
//! ```
//!
//! As a server it creates the pipe, waits for a client, reads from it and
//! writes back what it read, for as long as the client talks, then waits for
//! the next client. As a client it connects (waiting for the server if it is
//! not up yet), writes a message and prints the echo.

use std::time::{Duration, Instant};

use npipe::unix::ServerPipeExt;
use npipe::{ClientOptions, ErrorCode, MessageRead, PipeServer, ServerOptions, Wait};

const PIPE_NAME: &str = r"\\.\pipe\PipeServer";

fn main() -> npipe::Result<()> {
    let client = std::env::args()
        .skip(1)
        .any(|a| a.eq_ignore_ascii_case("/client") || a == "--client");
    if client {
        run_client()
    } else {
        run_server()
    }
}

/// `_NamedPipe.Create(PIPE_NAME)`, then `while (_NamedPipe.WaitForClient(INFINITE))`.
fn run_server() -> npipe::Result<()> {
    let listener = ServerOptions::new().create(PIPE_NAME)?;
    println!("server: created {PIPE_NAME}, waiting for clients (Ctrl-C to stop)");
    loop {
        let pipe = listener.accept()?;
        println!(
            "server: client connected: pid {}, user {}",
            pipe.client_process_id(),
            pipe.client_user_name()
                .unwrap_or_else(|| pipe.client_uid().to_string())
        );
        if let Err(e) = echo(pipe) {
            println!("server: client error: {e}");
        }
    }
}

/// `while ((dwRead = _NamedPipe.Read(...)) != PIPE_IO_ERROR && dwRead > 0) _NamedPipe.Write(...)`
fn echo(mut pipe: PipeServer) -> npipe::Result<()> {
    let mut buf = [0u8; 4096];
    let mut message = Vec::new();
    loop {
        match pipe.read_message(&mut buf) {
            Ok(MessageRead::MoreData(n)) => message.extend_from_slice(&buf[..n]),
            Ok(MessageRead::Complete(n)) => {
                message.extend_from_slice(&buf[..n]);
                println!("server: read {:?}", String::from_utf8_lossy(&message));
                pipe.write_message(&message)?;
                message.clear();
            }
            Err(e) if e.code() == ErrorCode::BrokenPipe => {
                println!("server: client closed the pipe");
                return Ok(());
            }
            Err(e) => return Err(e),
        }
    }
}

/// `_NamedPipe.ConnectTo(PIPE_NAME)`, then `_NamedPipe.Write(...)`.
fn run_client() -> npipe::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut pipe = loop {
        match ClientOptions::new()
            .wait(Wait::Timeout(Duration::from_secs(5)))
            .open(PIPE_NAME)
        {
            Ok(p) => break p,
            // The server is not up yet: try again, as a client would.
            Err(e) if e.code() == ErrorCode::FileNotFound && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100))
            }
            Err(e) => return Err(e),
        }
    };
    println!(
        "client: connected to server pid {}",
        pipe.server_process_id()
    );
    let text = format!("Hello from client pid {}", std::process::id());
    pipe.write_message(text.as_bytes())?;
    println!("client: wrote {text:?}");
    let reply = pipe.recv_message()?;
    println!("client: read back {:?}", String::from_utf8_lossy(&reply));
    Ok(())
}
