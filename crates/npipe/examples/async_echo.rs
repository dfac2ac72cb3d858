//! Overlapped I/O, the Rust way: one tokio thread serves many clients.
//!
//! ```text
//! cargo run -p npipe --features tokio --example async_echo
//! ```
//!
//! The server task accepts every client and echoes its messages on a task of
//! its own; a hundred clients connect at once, each transacts ten messages
//! and checks every reply. Everything runs on one current-thread runtime,
//! as `npipe serve` does.

use std::time::{Duration, Instant};

use npipe::{ClientOptions, ServerOptions, Wait};

const CLIENTS: u32 = 100;
const MESSAGES: u32 = 10;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    Ok(rt.block_on(run())?)
}

async fn run() -> npipe::Result<()> {
    let name = format!("async-echo-{}", std::process::id());
    // CreateNamedPipe with PIPE_UNLIMITED_INSTANCES, overlapped.
    let listener = ServerOptions::new().create_async(name.as_str())?;
    let server = tokio::spawn(async move {
        loop {
            // ConnectNamedPipe: a client took an instance.
            let Ok(mut pipe) = listener.accept().await else {
                break;
            };
            tokio::spawn(async move {
                // ReadFile / WriteFile until the client closes.
                while let Ok(msg) = pipe.recv_message().await {
                    if pipe.write_message(&msg).await.is_err() {
                        break;
                    }
                }
            });
        }
    });

    let start = Instant::now();
    let mut clients: Vec<tokio::task::JoinHandle<npipe::Result<()>>> = Vec::new();
    for id in 0..CLIENTS {
        let name = name.clone();
        clients.push(tokio::spawn(async move {
            let mut pipe = ClientOptions::new()
                .wait(Wait::Timeout(Duration::from_secs(5)))
                .open_async(name.as_str())
                .await?;
            for n in 0..MESSAGES {
                let request = format!("client {id} message {n}");
                // TransactNamedPipe: write one message, read one back.
                let reply = pipe.transact(request.as_bytes()).await?;
                assert_eq!(reply, request.as_bytes(), "an echo came back changed");
            }
            Ok(())
        }));
    }
    for client in clients {
        client.await.expect("a client task panicked")?;
    }
    println!(
        "{CLIENTS} clients x {MESSAGES} messages echoed and checked in {:?} on one thread",
        start.elapsed()
    );
    server.abort();
    Ok(())
}
