//! A soak: normal traffic and every fault of `faults.rs` and `handshake.rs`
//! at once, against one server process, counting every message. Ignored by
//! default; run it with
//!
//! ```text
//! NPIPE_SOAK_SECS=600 cargo test -p npipe --test local soak -- --ignored --nocapture
//! ```
//!
//! With `--all-features` and `NPIPE_SOAK_SERVER=tokio`, it soaks the tokio
//! server.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use npipe::{ClientOptions, Wait};

use crate::common::{server_on, spawn, unique, Front};
use crate::roles::flood_message;

#[derive(Default)]
struct Counts {
    sent: AtomicU64,
    echoed: AtomicU64,
    bad_echoes: AtomicU64,
    killed_writers: AtomicU64,
    garbage: AtomicU64,
    silent: AtomicU64,
    vanished: AtomicU64,
    busy: AtomicU64,
}

#[test]
#[ignore = "a long soak; run with --ignored (NPIPE_SOAK_SECS sets its length)"]
fn soak() {
    let secs: u64 = std::env::var("NPIPE_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let name = unique("soak");
    // NPIPE_SOAK_SERVER=tokio soaks the tokio server instead.
    let front = match std::env::var("NPIPE_SOAK_SERVER").as_deref() {
        #[cfg(feature = "tokio")]
        Ok("tokio") => Front::Tokio,
        _ => Front::Blocking,
    };
    let srv = server_on(front, &name, &["handshake_ms=500", "max_message=8000000"]);
    let start = rss(srv.pid());
    let counts = Counts::default();
    let stop = AtomicBool::new(false);
    let end = Instant::now() + Duration::from_secs(secs);
    std::thread::scope(|s| {
        // Normal traffic: 4 clients, each a stream of checked transactions,
        // reconnecting now and then.
        for t in 0..4u64 {
            let (name, counts, stop) = (&name, &counts, &stop);
            s.spawn(move || {
                let mut seq = t << 48;
                while !stop.load(Ordering::Relaxed) {
                    let opened = ClientOptions::new()
                        .wait(Wait::Timeout(Duration::from_secs(5)))
                        .open(name.as_str());
                    let mut c = match opened {
                        Ok(c) => c,
                        Err(_) => {
                            counts.busy.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                    };
                    for _ in 0..200 {
                        let m = flood_message(seq, 8 + (seq as usize % 3000));
                        counts.sent.fetch_add(1, Ordering::Relaxed);
                        let reply = c.transact(&m).expect("a healthy client's transaction");
                        if reply == m {
                            counts.echoed.fetch_add(1, Ordering::Relaxed);
                        } else {
                            counts.bad_echoes.fetch_add(1, Ordering::Relaxed);
                        }
                        seq += 1;
                    }
                }
            });
        }
        // Faults, in turn, until the time is up; the traffic threads stop
        // then, or if this loop fails (a panic here must not leave them
        // running for ever).
        let _stop_traffic = StopOnDrop(&stop);
        let mut round = 0u64;
        while Instant::now() < end {
            match round % 4 {
                0 => {
                    let mut w = spawn("big_writer", &[&name, "6000000"]);
                    w.expect("writing");
                    std::thread::sleep(Duration::from_millis(2));
                    w.kill();
                    counts.killed_writers.fetch_add(1, Ordering::Relaxed);
                }
                1 => {
                    if let Some(mut s) = raw(&name) {
                        let _ = s.write_all(b"\x00garbage\xff\xfe NPIP nonsense");
                        counts.garbage.fetch_add(1, Ordering::Relaxed);
                    }
                }
                2 => {
                    // Silent: connect, say nothing, linger past the timeout.
                    if let Some(s) = raw(&name) {
                        std::thread::spawn(move || {
                            std::thread::sleep(Duration::from_millis(700));
                            drop(s);
                        });
                        counts.silent.fetch_add(1, Ordering::Relaxed);
                    }
                }
                _ => {
                    // Connect properly and vanish without a word.
                    if ClientOptions::new().open(name.as_str()).is_ok() {
                        counts.vanished.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            round += 1;
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    let peak = rss(srv.pid());
    let c = |a: &AtomicU64| a.load(Ordering::Relaxed);
    println!(
        "soak {secs}s: sent {} echoed {} bad {} | killed writers {} garbage {} silent {} vanished {} busy-retries {} | server RSS {} -> {} KiB",
        c(&counts.sent), c(&counts.echoed), c(&counts.bad_echoes), c(&counts.killed_writers),
        c(&counts.garbage), c(&counts.silent), c(&counts.vanished), c(&counts.busy), start, peak
    );
    assert_eq!(
        c(&counts.sent),
        c(&counts.echoed),
        "every message sent came back intact"
    );
    assert_eq!(c(&counts.bad_echoes), 0);
    assert!(c(&counts.sent) > 0, "no message went through at all");
}

/// Raises the flag when dropped, on the way out or in a panic.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

fn raw(name: &str) -> Option<UnixStream> {
    UnixStream::connect(npipe::namespace_directory().join(name.to_lowercase())).ok()
}

fn rss(pid: u32) -> u64 {
    crate::procfs::child_status_kib(pid, "VmRSS")
}
