//! `/proc/PID` of a child process, wherever `/proc` comes from: the one
//! copy of this lookup, for the bench's peer processes and, included with
//! `#[path]`, for the tests (`crates/npipe/tests/support/procfs.rs`). Only
//! `std`, so that it can be included anywhere.

use std::path::PathBuf;

/// The `/proc` directory of `pid`, a child of this process as `fork`
/// returned it. Where `/proc` belongs to an outer pid namespace (a sandbox
/// that did not mount its own), its numbers are not ours: the child is the
/// process whose parent is us, as `/proc` numbers us, and whose innermost
/// pid (`NSpid`) is `pid`.
pub fn child_proc_dir(pid: u32) -> PathBuf {
    let direct = PathBuf::from(format!("/proc/{pid}"));
    let me = std::fs::read_link("/proc/self")
        .ok()
        .and_then(|p| p.to_str()?.parse::<u32>().ok());
    let Some(me) = me.filter(|&me| me != std::process::id()) else {
        return direct;
    };
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return direct;
    };
    let (me, pid) = (me.to_string(), pid.to_string());
    for entry in entries.flatten() {
        let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else {
            continue;
        };
        let last = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().last())
                .map(str::to_string)
        };
        if last("PPid:").as_ref() == Some(&me) && last("NSpid:").as_ref() == Some(&pid) {
            return entry.path();
        }
    }
    direct
}

/// A `kB` field of the child's `/proc/PID/status` (`VmRSS`, `VmHWM`, ...),
/// in KiB: `None` if the file has no such field.
pub fn child_status_kib(pid: u32, field: &str) -> std::io::Result<Option<u64>> {
    let status = std::fs::read_to_string(child_proc_dir(pid).join("status"))?;
    Ok(status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok()))
}
