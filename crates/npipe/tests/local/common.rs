//! Cross-process plumbing: the test binary re-runs itself as a child process
//! in a named role (see `roles.rs`), and the parent talks to it through the
//! pipe under test and reads `@@` lines from its stdout.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

/// Stops a hung test; never a measure of speed.
pub const HANG: Duration = Duration::from_secs(20);

/// The longest a run of this test binary may take, beyond any soak it was
/// asked for (`NPIPE_TEST_WATCHDOG_SECS` overrides it; 0 turns it off). A hang becomes a failure naming the pipes last made, instead
/// of a CI job stuck until its own limit.
const WATCHDOG: Duration = Duration::from_secs(15 * 60);

/// A pipe name no other test (or test run) uses. Every test starts with
/// one, so this also starts the watchdog and keeps its list of names.
pub fn unique(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let name = format!(
        "t-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    watchdog(&name);
    name
}

/// Child processes started, for the watchdog to kill.
static CHILDREN: Mutex<Vec<i32>> = Mutex::new(Vec::new());

fn watchdog(name: &str) {
    static RECENT: Mutex<VecDeque<String>> = Mutex::new(VecDeque::new());
    static START: Once = Once::new();
    {
        let mut recent = RECENT.lock().unwrap_or_else(|e| e.into_inner());
        if recent.len() == 16 {
            recent.pop_front();
        }
        recent.push_back(name.to_string());
    }
    START.call_once(|| {
        let soak = std::env::var("NPIPE_SOAK_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .map_or(Duration::ZERO, Duration::from_secs);
        let limit = std::env::var("NPIPE_TEST_WATCHDOG_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .map_or(WATCHDOG, Duration::from_secs);
        if limit.is_zero() {
            return;
        }
        let limit = limit.saturating_add(soak);
        std::thread::spawn(move || {
            std::thread::sleep(limit);
            let recent = RECENT.lock().unwrap_or_else(|e| e.into_inner());
            // Straight to fd 2: libtest captures eprintln! in test threads
            // and those they spawn, and would drop this with the process.
            let _ = writeln!(
                std::io::stderr(),
                "\nWATCHDOG: the tests have run for {limit:?}; something hangs. \
                 The pipes made last were: {recent:?}"
            );
            // Children outlive an exit; a hung one would hold the log open.
            for pid in CHILDREN.lock().unwrap_or_else(|e| e.into_inner()).iter() {
                if let Some(pid) = rustix::process::Pid::from_raw(*pid) {
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                }
            }
            std::process::exit(101);
        });
    });
}

/// The arguments that make this test binary run one child role (named by
/// `NPIPE_TEST_ROLE`).
pub const CHILD_ARGS: [&str; 5] = [
    "--exact",
    "roles::child_entry",
    "--ignored",
    "--nocapture",
    "--test-threads=1",
];

/// Whether this test may start a process as uid `uid`; if not it says so
/// loudly (as `SKIPPED LOUDLY: ...`) and the test does nothing.
pub fn can_run_as(uid: u32, test: &str) -> bool {
    match crate::shared_copy::cannot_run_as(uid) {
        None => true,
        Some(why) => {
            crate::shared_copy::skipped(&format!(
                "{test} starts a process as uid {uid}, and {why}"
            ));
            false
        }
    }
}

/// A child process running one role.
pub struct Child {
    child: std::process::Child,
    lines: Receiver<String>,
}

/// Starts this test binary again as a child in `role`, with `env` set.
pub fn spawn_with_env(role: &str, args: &[&str], env: &[(&str, &str)]) -> Child {
    spawn_child(role, args, env, None, false)
}

/// Starts a child in `role` in a login session of its own, as `pam_loginuid`
/// starts one at a login: a shell writes its uid to `/proc/self/loginuid`
/// (root only; elsewhere it stays in ours), then becomes the child, so that
/// every thread of it is in that session.
pub fn spawn_in_new_login(role: &str, args: &[&str]) -> Child {
    spawn_child(role, args, &[], None, true)
}

/// Starts a child in `role` running as `uid` (and the same gid, no
/// supplementary groups). Needs root.
pub fn spawn_as(uid: u32, role: &str, args: &[&str]) -> Child {
    spawn_child(role, args, &[], Some(uid), false)
}

/// A copy of this test binary that any user may run (the build directory
/// may sit under a home directory other users cannot enter).
pub fn shared_exe() -> std::path::PathBuf {
    static EXE: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    EXE.get_or_init(|| {
        let me = std::env::current_exe().expect("current_exe");
        crate::shared_copy::shared_copy(&me, "npipe-test-exe-", "local-tests")
    })
    .clone()
}

fn spawn_child(
    role: &str,
    args: &[&str],
    env: &[(&str, &str)],
    uid: Option<u32>,
    login: bool,
) -> Child {
    let exe = match uid {
        Some(_) => shared_exe(),
        None => std::env::current_exe().expect("current_exe"),
    };
    let mut cmd = if login {
        let mut sh = Command::new("sh");
        sh.args([
            "-c",
            "echo \"$(id -u)\" > /proc/self/loginuid 2>/dev/null; exec \"$0\" \"$@\"",
        ])
        .arg(exe);
        sh
    } else {
        Command::new(exe)
    };
    if let Some(uid) = uid {
        use std::os::unix::process::CommandExt;
        cmd.uid(uid).gid(uid).current_dir("/");
    }
    cmd.args(CHILD_ARGS)
        .env("NPIPE_TEST_ROLE", role)
        .env("NPIPE_TEST_ARGS", args.join("\u{1f}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = crate::shared_copy::spawn_retrying(&mut cmd).expect("spawn child");
    CHILDREN
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(child.id() as i32);
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            // libtest may print its "test ... " prefix on the same line.
            if let Some(at) = line.find("@@") {
                if tx.send(line[at + 2..].to_string()).is_err() {
                    break;
                }
            }
        }
    });
    Child { child, lines: rx }
}

/// Starts a child in `role`.
pub fn spawn(role: &str, args: &[&str]) -> Child {
    spawn_with_env(role, args, &[])
}

/// Starts a server child (`serve` role) and waits until it is ready.
pub fn server(name: &str, opts: &[&str]) -> Child {
    let mut args = vec![name];
    args.extend_from_slice(opts);
    let mut c = spawn("serve", &args);
    c.expect("ready");
    c
}

/// Which front end plays a part: a server child runs the `serve` role
/// (blocking) or the `serve_async` role (tokio), with the same options,
/// modes and `@@` lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Front {
    Blocking,
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    Tokio,
}

/// Starts a server child on `front` and waits until it is ready.
pub fn server_on(front: Front, name: &str, opts: &[&str]) -> Child {
    let role = match front {
        Front::Blocking => "serve",
        Front::Tokio => "serve_async",
    };
    let mut args = vec![name];
    args.extend_from_slice(opts);
    let mut c = spawn(role, &args);
    c.expect("ready");
    c
}

/// Runs each `fn behaviour(server: Front)` once per server front end:
/// tests `behaviour::blocking_server` and (with the `tokio` feature)
/// `behaviour::tokio_server`.
macro_rules! on_both_servers {
    ($($behaviour:ident),* $(,)?) => {$(
        mod $behaviour {
            #[test]
            fn blocking_server() {
                super::$behaviour($crate::common::Front::Blocking)
            }
            #[cfg(feature = "tokio")]
            #[test]
            fn tokio_server() {
                super::$behaviour($crate::common::Front::Tokio)
            }
        }
    )*};
}
pub(crate) use on_both_servers;

impl Child {
    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The next `@@` line, whatever it is.
    pub fn next_line(&mut self) -> String {
        match self.lines.recv_timeout(HANG) {
            Ok(l) => l,
            Err(RecvTimeoutError::Timeout) => {
                panic!("child {} said nothing for {HANG:?}", self.pid())
            }
            Err(RecvTimeoutError::Disconnected) => {
                let status = self.child.wait();
                panic!("child {} ended without saying more: {status:?}", self.pid())
            }
        }
    }

    /// Waits for the next `@@` line, which must start with `key`; returns the
    /// rest of it.
    pub fn expect(&mut self, key: &str) -> String {
        let line = self.next_line();
        match line.strip_prefix(key) {
            Some(rest) => rest.trim().to_string(),
            None => panic!("expected @@{key}..., child {} said @@{line}", self.pid()),
        }
    }

    /// Writes a line to the child's stdin.
    pub fn tell(&mut self, line: &str) {
        let stdin = self.child.stdin.as_mut().expect("stdin");
        writeln!(stdin, "{line}").expect("write to child");
        stdin.flush().expect("flush child stdin");
    }

    /// SIGKILL, and reap.
    /// Waits for the child to exit by itself (bounded by [`HANG`]).
    pub fn wait_exit(&mut self) {
        let start = Instant::now();
        while self.child.try_wait().expect("try_wait").is_none() {
            assert!(start.elapsed() < HANG, "the child did not exit");
            std::thread::sleep(Duration::from_millis(5));
        }
        reaped(self.child.id());
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        reaped(self.child.id());
    }
}

/// A reaped child's pid may be reused: the watchdog must not kill it.
fn reaped(pid: u32) {
    let mut children = CHILDREN.lock().unwrap_or_else(|e| e.into_inner());
    children.retain(|&p| p != pid as i32);
}

impl Drop for Child {
    /// Closes the child's stdin, which asks it to stop politely (servers
    /// remove their socket), and kills it if it has not gone shortly after.
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(2) {
            if let Ok(Some(_)) = self.child.try_wait() {
                reaped(self.child.id());
                return;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        self.kill();
    }
}

/// Retries `f` until it returns `Some`, or panics after [`HANG`].
pub fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < HANG, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The server of `name` still answers a call.
pub fn still_serves(name: &str) {
    assert_eq!(
        npipe::call(name, b"alive", Duration::from_secs(5)).unwrap(),
        b"alive"
    );
}

/// Clients waiting for an instance of `name`, as the server counts them.
pub fn waiting(name: &str) -> u32 {
    npipe::query_pipe(name).unwrap().waiting_clients
}

/// Whether this process runs as root (tests that need another user say so
/// loudly when they cannot run).
pub fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(unique(tag));
        std::fs::create_dir_all(&p).expect("mkdir");
        TempDir(p)
    }
    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Echoes every message of every connection `listener` accepts, a task
/// each, until the runtime stops.
#[cfg(feature = "tokio")]
pub async fn echo_forever(listener: npipe::tokio::PipeListener) {
    loop {
        let mut conn = listener.accept().await.unwrap();
        tokio::spawn(async move {
            while let Ok(m) = conn.recv_message().await {
                if conn.write_message(&m).await.is_err() {
                    break;
                }
            }
        });
    }
}
