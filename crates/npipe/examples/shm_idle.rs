//! What idle shared-memory connections cost: 100 clients connect to a
//! server over shared memory, every server end waits in a read and every
//! client in a read, and nothing is sent for ten seconds. Prints the CPU
//! time the process used meanwhile, and fails past 1% of a CPU (issue 15).
//! tokio ends (with the `tokio` feature), then blocking ends.
//!
//! `cargo run --release -p npipe --features tokio --example shm_idle`

use std::time::{Duration, Instant};

/// This process's CPU time so far: the sum over its threads of the
/// nanoseconds each ran (`/proc/self/task/*/schedstat`).
fn cpu_time() -> Duration {
    let mut ns = 0u64;
    for task in std::fs::read_dir("/proc/self/task").expect("/proc/self/task") {
        let path = task.expect("a task").path().join("schedstat");
        if let Ok(stat) = std::fs::read_to_string(path) {
            ns += stat
                .split_whitespace()
                .next()
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Duration::from_nanos(ns)
}

/// Measures the process's CPU use over ten seconds, after three for the
/// spinning and the first short sleeps to pass; fails past 1% of a CPU.
fn measure(what: &str) {
    std::thread::sleep(Duration::from_secs(3));
    let (cpu0, t0) = (cpu_time(), Instant::now());
    std::thread::sleep(Duration::from_secs(10));
    let (cpu, wall) = (cpu_time() - cpu0, t0.elapsed());
    let share = 100.0 * cpu.as_secs_f64() / wall.as_secs_f64();
    println!(
        "{what}: 200 idle ends (100 connections): {:.4} s of CPU in {:.1} s = {share:.2}% of a CPU",
        cpu.as_secs_f64(),
        wall.as_secs_f64(),
    );
    assert!(
        share < 1.0,
        "idle shared-memory ends cost {share:.2}% of a CPU"
    );
}

/// Blocking ends: every one waits in a read on its own thread, asleep on
/// the ring's futex.
fn blocking(name: &str) -> npipe::Result<()> {
    let listener = npipe::ServerOptions::new().create(name)?;
    let mut clients = Vec::new();
    for _ in 0..100 {
        let client = npipe::ClientOptions::new().shared_memory(true).open(name)?;
        let server = listener.accept()?;
        assert!(client.uses_shared_memory() && server.uses_shared_memory());
        clients.push((client, server));
    }
    for (mut client, mut server) in clients {
        std::thread::spawn(move || server.recv_message());
        std::thread::spawn(move || client.recv_message());
    }
    measure("blocking");
    Ok(())
}

/// tokio ends: every one waits in a read in a task of one runtime thread,
/// its flag raised for a wake-up through the socket.
#[cfg(feature = "tokio")]
fn on_tokio(name: &str) -> npipe::Result<()> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let name = name.to_string();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        rt.block_on(async move {
            let listener = npipe::ServerOptions::new().create_async(&name)?;
            for _ in 0..100 {
                let mut client = npipe::ClientOptions::new()
                    .shared_memory(true)
                    .open_async(&name)
                    .await?;
                let mut server = listener.accept().await?;
                assert!(client.uses_shared_memory() && server.uses_shared_memory());
                tokio::spawn(async move { server.recv_message().await });
                tokio::spawn(async move { client.recv_message().await });
            }
            ready_tx.send(()).expect("main waits");
            std::future::pending::<npipe::Result<()>>().await
        })
    });
    ready_rx.recv().expect("the tokio ends connected");
    measure("tokio");
    Ok(())
}

fn main() -> npipe::Result<()> {
    let name = format!("shm-idle-{}", std::process::id());
    // tokio first: its ends then stay idle through the blocking ends'
    // measurement too (neither kind can be stopped while it waits).
    #[cfg(feature = "tokio")]
    on_tokio(&format!("{name}-tokio"))?;
    blocking(&name)?;
    std::process::exit(0);
}
