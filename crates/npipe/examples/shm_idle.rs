//! What idle shared-memory connections cost: 100 clients connect to a
//! blocking server over shared memory, every server end waits in a read
//! and every client in a read, and nothing is sent for ten seconds. Prints
//! the CPU time the process used meanwhile (issue 15: under 1% of a CPU).
//!
//! `cargo run --release -p npipe --example shm_idle`

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

fn main() -> npipe::Result<()> {
    let name = format!("shm-idle-{}", std::process::id());
    let listener = npipe::ServerOptions::new().create(&name)?;
    let mut clients = Vec::new();
    for _ in 0..100 {
        let client = npipe::ClientOptions::new()
            .shared_memory(true)
            .open(&name)?;
        let server = listener.accept()?;
        assert!(client.uses_shared_memory() && server.uses_shared_memory());
        clients.push((client, server));
    }
    let mut readers = Vec::new();
    for (mut client, mut server) in clients {
        readers.push(std::thread::spawn(move || server.recv_message()));
        readers.push(std::thread::spawn(move || client.recv_message()));
    }
    // Let the spinning and the first short sleeps pass, then measure.
    std::thread::sleep(Duration::from_secs(3));
    let (cpu0, t0) = (cpu_time(), Instant::now());
    std::thread::sleep(Duration::from_secs(10));
    let (cpu, wall) = (cpu_time() - cpu0, t0.elapsed());
    println!(
        "200 idle ends (100 connections): {:.4} s of CPU in {:.1} s = {:.2}% of a CPU",
        cpu.as_secs_f64(),
        wall.as_secs_f64(),
        100.0 * cpu.as_secs_f64() / wall.as_secs_f64()
    );
    std::process::exit(0);
}
