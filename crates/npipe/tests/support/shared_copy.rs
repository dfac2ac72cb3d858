//! A copy of a test program that any user may run: tests that drop to uid
//! 65534 cannot run it from a build directory under a home other users
//! cannot enter. Shared by the library's and the tool's tests (each includes
//! this file with `#[path]`).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Copies `program` to `<tmp>/<prefix><pid>/<file>`, mode 0755, in a
/// temporary directory that is not mounted `noexec`; removes the copies
/// that runs no longer alive left behind (there is no hook at the end of a
/// test run to remove one's own).
pub fn shared_copy(program: &Path, prefix: &str, file: &str) -> PathBuf {
    let base = exec_temp_dir();
    remove_dead_runs_copies(&base, prefix);
    let dir = base.join(format!("{prefix}{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir for the shared test program");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let exe = dir.join(file);
    std::fs::copy(program, &exe).expect("copy the test program");
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    exe
}

/// The system's temporary directory, unless it is mounted `noexec`; then
/// `/var/tmp` or `/dev/shm`.
fn exec_temp_dir() -> PathBuf {
    let candidates = [std::env::temp_dir(), "/var/tmp".into(), "/dev/shm".into()];
    for dir in &candidates {
        if let Ok(fs) = rustix::fs::statvfs(dir) {
            if !fs.f_flag.contains(rustix::fs::StatVfsMountFlags::NOEXEC) {
                return dir.clone();
            }
        }
    }
    eprintln!("every temporary directory is noexec: tests run as another user will fail");
    candidates[0].clone()
}

fn remove_dead_runs_copies(base: &Path, prefix: &str) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(prefix))
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        // EPERM: alive, just not ours to signal.
        let alive = rustix::process::Pid::from_raw(pid).is_some_and(|p| {
            !matches!(
                rustix::process::test_kill_process(p),
                Err(rustix::io::Errno::SRCH)
            )
        });
        if !alive {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Why this process cannot start a child as `uid`, if it cannot: it must be
/// root, and `uid` must exist in its user namespace (a rootless container
/// maps only a few ids).
pub fn cannot_run_as(uid: u32) -> Option<String> {
    let why = why_not_as(uid)?;
    if std::env::var_os("NPIPE_TESTS_STRICT").is_some() {
        panic!(
            "NPIPE_TESTS_STRICT is set (.ci/run sets it when it runs as root): this test acts \
             as uid {uid} and must run, but {why}"
        );
    }
    Some(why)
}

// Says loudly that a test (or part of one) cannot run here: the library's
// own unit tests' helper, one copy for every test crate.
#[path = "../../src/skipped.rs"]
mod skipped_log;
pub use skipped_log::skipped;

fn why_not_as(uid: u32) -> Option<String> {
    if rustix::process::geteuid().as_raw() != 0 {
        return Some("it needs root".into());
    }
    let map = std::fs::read_to_string("/proc/self/uid_map").unwrap_or_default();
    let mapped = map.lines().any(|line| {
        let f: Vec<u64> = line
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect();
        f.len() == 3 && f[0] <= u64::from(uid) && u64::from(uid) < f[0] + f[2]
    });
    // No map at all: not a user namespace we can read; let the test try.
    if !mapped && !map.is_empty() {
        return Some(format!("uid {uid} is not mapped in this user namespace"));
    }
    None
}

/// Starts `cmd`, going round again while the program is "busy": the copy
/// above was just written, and a child another thread forked meanwhile may
/// still hold the descriptor it was written through (`ETXTBSY`) until that
/// child execs.
pub fn spawn_retrying(cmd: &mut std::process::Command) -> std::io::Result<std::process::Child> {
    let mut tries = 0;
    loop {
        match cmd.spawn() {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && tries < 100 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            r => return r,
        }
    }
}
