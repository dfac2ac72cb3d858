//! Scale: one `npipe serve` process (tokio, one thread) holding ten thousand
//! clients at once, and a thousand clients sending a thousand messages each.
//! The clients live in this test process on the async client API.

// The tool on Windows is tested by `windows_tool.rs`.
#![cfg(target_os = "linux")]

#[path = "../../npipe/tests/support/procfs.rs"]
mod procfs;
// For `skipped` alone.
#[allow(dead_code)]
#[path = "../../npipe/tests/support/shared_copy.rs"]
mod shared_copy;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use npipe::{ClientOptions, Wait};

/// A running `npipe serve`, stopped when dropped.
struct Server {
    name: String,
    child: Child,
}

impl Server {
    fn start(tag: &str) -> Server {
        let name = format!("scale-{tag}-{}", std::process::id());
        let child = Command::new(env!("CARGO_BIN_EXE_npipe"))
            .args(["serve", &name, "--quiet"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start npipe serve");
        let server = Server { name, child };
        let deadline = Instant::now() + Duration::from_secs(20);
        while npipe::query_pipe(server.name.as_str()).is_err() {
            assert!(Instant::now() < deadline, "npipe serve did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    /// The server's resident memory, in bytes.
    fn rss(&self) -> u64 {
        procfs::child_status_kib(self.child.id(), "VmRSS") * 1024
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // SIGTERM would be polite; SIGKILL is certain, and the name is ours.
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(npipe::namespace_directory().join(&self.name));
    }
}

/// Raises this process's open-file limit to `n`; whether it could.
fn allow_open_files(n: u64) -> bool {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current.is_none_or(|c| c >= n) {
        return true;
    }
    let hard = limit.maximum.map_or(n, |h| h.max(n));
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(n),
            maximum: Some(hard),
        },
    )
    .is_ok()
        || setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(n),
                maximum: limit.maximum,
            },
        )
        .is_ok()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn opts() -> ClientOptions {
    let mut o = ClientOptions::new();
    o.wait(Wait::Timeout(Duration::from_secs(60)));
    o
}

#[test]
fn ten_thousand_clients_at_once_with_bounded_memory() {
    const CLIENTS: usize = 10_000;
    if !allow_open_files(CLIENTS as u64 + 512) {
        crate::shared_copy::skipped(&format!(
            "cannot raise the open-file limit to {CLIENTS} clients"
        ));
        return;
    }
    let server = Server::start("10k");
    runtime().block_on(async {
        let base = server.rss();
        let mut clients = Vec::with_capacity(CLIENTS);
        for i in 0..CLIENTS {
            let mut c = opts().open_async(server.name.as_str()).await.unwrap();
            let m = format!("client {i} message 0");
            assert_eq!(c.transact(m.as_bytes()).await.unwrap(), m.as_bytes());
            clients.push(c);
        }
        let served = npipe::query_pipe(server.name.as_str()).unwrap();
        assert_eq!(served.cur_instances as usize, CLIENTS, "all connected at once");
        let held = server.rss();
        let per_connection = held.saturating_sub(base) / CLIENTS as u64;
        println!(
            "npipe serve: {CLIENTS} idle connections, RSS {} KiB -> {} KiB: {per_connection} bytes each",
            base / 1024,
            held / 1024
        );
        assert!(per_connection < 16 * 1024, "{per_connection} bytes per idle connection");
        // Every client talks again, all at once; order kept per client.
        let mut tasks = tokio::task::JoinSet::new();
        for (i, mut c) in clients.into_iter().enumerate() {
            tasks.spawn(async move {
                for k in 1..=3 {
                    c.write_message(format!("client {i} message {k}").as_bytes()).await.unwrap();
                }
                for k in 1..=3 {
                    let reply = c.recv_message().await.unwrap();
                    assert_eq!(reply, format!("client {i} message {k}").as_bytes());
                }
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.unwrap();
        }
    });
}

#[test]
fn a_thousand_clients_send_a_thousand_messages_each() {
    const CLIENTS: usize = 1_000;
    const MESSAGES: usize = 1_000;
    assert!(allow_open_files(CLIENTS as u64 + 512));
    let server = Server::start("1kx1k");
    let checked = runtime().block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..CLIENTS {
            let name = server.name.clone();
            tasks.spawn(async move {
                let mut c = opts().open_async(name.as_str()).await.unwrap();
                // Up to 100 messages in flight per client, every reply checked
                // against what was sent, in order.
                let mut sent = 0;
                let mut received = 0;
                while received < MESSAGES {
                    while sent < MESSAGES && sent - received < 100 {
                        c.write_message(format!("{i}/{sent}").as_bytes())
                            .await
                            .unwrap();
                        sent += 1;
                    }
                    let reply = c.recv_message().await.unwrap();
                    assert_eq!(reply, format!("{i}/{received}").as_bytes());
                    received += 1;
                }
                received
            });
        }
        let mut checked = 0;
        while let Some(n) = tasks.join_next().await {
            checked += n.unwrap();
        }
        checked
    });
    assert_eq!(checked, CLIENTS * MESSAGES);
}
