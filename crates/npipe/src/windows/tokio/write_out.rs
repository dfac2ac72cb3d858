//! Writes that outlive their end: `AsyncWrite` reports a write done once it
//! starts, so dropping the end must not cancel it (a closed socket's peer
//! still reads what was sent before the end). One thread per process keeps
//! such writes, and with them their handles, until the kernel finishes
//! them, within bounds a client that never reads cannot stretch: at most
//! [`MAX_KEPT`] writes at once and [`KEPT_FOR`] each, after which a write
//! is cancelled as a dropped one was before.

use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::sys::Overlapped;

/// Writes kept at once; past it a dropped end's write is cancelled.
const MAX_KEPT: usize = 256;
/// How long a write is kept for a client that does not read it.
const KEPT_FOR: Duration = Duration::from_secs(30);
/// How often the thread looks at the writes it keeps.
const LOOK_EVERY: Duration = Duration::from_millis(10);

struct Kept {
    writes: Mutex<Vec<(Overlapped, Instant)>>,
    more: Condvar,
}

fn kept() -> &'static Kept {
    static KEPT: OnceLock<Kept> = OnceLock::new();
    KEPT.get_or_init(|| {
        // Without the thread, writes are cancelled as they are dropped.
        let _ = std::thread::Builder::new()
            .name("npipe-write-out".into())
            .spawn(look_after);
        Kept {
            writes: Mutex::new(Vec::new()),
            more: Condvar::new(),
        }
    })
}

/// Keeps `op`, a write whose end is being dropped, until the kernel has
/// finished it (or the bounds above end it).
pub(super) fn keep(op: Overlapped) {
    if op.is_done() {
        return;
    }
    let kept = kept();
    let mut writes = kept.writes.lock().unwrap_or_else(|e| e.into_inner());
    if writes.len() >= MAX_KEPT {
        // Dropped here: cancelled.
        return;
    }
    writes.push((op, Instant::now() + KEPT_FOR));
    kept.more.notify_one();
}

/// The thread: drops each write once finished (closing its handle) or out
/// of time (cancelling it).
fn look_after() {
    let kept = kept();
    let mut writes = kept.writes.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let now = Instant::now();
        writes.retain(|(op, until)| !op.is_done() && now < *until);
        writes = if writes.is_empty() {
            kept.more.wait(writes).unwrap_or_else(|e| e.into_inner())
        } else {
            match kept.more.wait_timeout(writes, LOOK_EVERY) {
                Ok((w, _)) => w,
                Err(e) => e.into_inner().0,
            }
        };
    }
}
