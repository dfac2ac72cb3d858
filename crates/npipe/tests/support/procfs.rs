//! `/proc/PID` of a child process, wherever `/proc` comes from, for the
//! library's and the tool's tests (each includes this file with `#[path]`):
//! `npipe bench`'s lookup, the one copy, included in turn.

#[path = "../../../npipe-bench/src/procfs.rs"]
mod lookup;

/// A `kB` field of the child's `/proc/PID/status` (`VmRSS`, `VmData`, ...).
pub fn child_status_kib(pid: u32, field: &str) -> u64 {
    let dir = lookup::child_proc_dir(pid);
    lookup::child_status_kib(pid, field)
        .unwrap_or_else(|e| panic!("cannot read {}/status: {e}", dir.display()))
        .unwrap_or_else(|| panic!("no {field} in {}/status", dir.display()))
}
