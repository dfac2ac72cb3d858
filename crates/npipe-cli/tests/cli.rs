//! End-to-end tests of the `npipe` binary: every command runs as a real
//! process, servers included.
//!
//! Each test uses its own pipe name (test name and this process's pid), waits
//! for a server by querying the pipe until a deadline, and kills every server
//! it started when it ends, pass or fail. Deadlines only stop hangs; nothing
//! here measures speed.

// The tool on Windows is tested by `windows_tool.rs`.
#![cfg(target_os = "linux")]

#[path = "../../npipe/tests/support/shared_copy.rs"]
mod shared_copy;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

/// The longest any single command may run before the test calls it hung.
const HANG: Duration = Duration::from_secs(30);
/// How long a server may take to come up.
const STARTUP: Duration = Duration::from_secs(10);

/// Exit codes, as documented in `npipe --help`.
const EXIT_USAGE: i32 = 2;
const EXIT_NOT_FOUND: i32 = 3;
const EXIT_BUSY: i32 = 4;
const EXIT_ACCESS_DENIED: i32 = 5;
const EXIT_TIMEOUT: i32 = 6;

fn npipe() -> Command {
    Command::new(env!("CARGO_BIN_EXE_npipe"))
}

/// A pipe name no other test (or test run) uses.
fn unique(test: &str) -> String {
    format!("cli-{test}-{}", std::process::id())
}

/// A running `npipe serve`, killed and reaped when dropped.
struct Server {
    name: String,
    child: Child,
}

impl Server {
    /// Starts `npipe serve NAME ARGS...` and waits until it answers queries.
    fn start(name: &str, args: &[&str]) -> Server {
        Server::start_with_stdout(name, args, Stdio::null())
    }

    fn start_with_stdout(name: &str, args: &[&str], stdout: Stdio) -> Server {
        let child = npipe()
            .arg("serve")
            .arg(name)
            .args(args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(Stdio::null())
            .spawn()
            .expect("start npipe serve");
        let mut server = Server {
            name: name.to_string(),
            child,
        };
        server.wait_ready();
        server
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + STARTUP;
        loop {
            match npipe::query_pipe(self.name.as_str()) {
                Ok(p) if p.server.pid == self.pid() => return,
                Ok(p) => panic!("{} is served by pid {}, not ours", self.name, p.server.pid),
                Err(e) => {
                    if let Some(status) = self.child.try_wait().expect("try_wait") {
                        panic!("npipe serve {} exited early: {status}", self.name);
                    }
                    assert!(
                        Instant::now() < deadline,
                        "npipe serve {} not ready in time: {e}",
                        self.name
                    );
                    thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }

    fn take_stdout(&mut self) -> ChildStdout {
        self.child.stdout.take().expect("server stdout is piped")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A killed server leaves its socket file behind; the name is ours
        // alone, so remove it rather than clutter `npipe list`.
        if let Ok(name) = npipe::PipeName::parse(&self.name) {
            let _ = std::fs::remove_file(npipe::namespace_directory().join(name.file_name()));
        }
    }
}

/// What a finished command did.
struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Run {
    fn code(&self) -> Option<i32> {
        self.status.code()
    }

    #[track_caller]
    fn assert_success(&self) -> &Run {
        assert!(
            self.status.success(),
            "expected success, got {}\nstdout:\n{}\nstderr:\n{}",
            self.status,
            self.stdout,
            self.stderr
        );
        self
    }

    #[track_caller]
    fn assert_code(&self, code: i32) -> &Run {
        assert_eq!(
            self.code(),
            Some(code),
            "wrong exit status {}\nstdout:\n{}\nstderr:\n{}",
            self.status,
            self.stdout,
            self.stderr
        );
        self
    }
}

fn read_all(mut r: impl Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// Runs `npipe ARGS...` with `input` on stdin (closed after it), and kills
/// it if it hangs.
fn run(args: &[&str], input: &[u8]) -> Run {
    let mut cmd = npipe();
    cmd.args(args);
    run_cmd(cmd, args, input)
}

/// Runs `cmd` (an `npipe` command line, `args` for messages) as [`run`]
/// does.
fn run_cmd(mut cmd: Command, args: &[&str], input: &[u8]) -> Run {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = shared_copy::spawn_retrying(&mut cmd).expect("start npipe");
    let stdout = read_all(child.stdout.take().expect("stdout"));
    let stderr = read_all(child.stderr.take().expect("stderr"));
    let mut stdin = child.stdin.take().expect("stdin");
    let input = input.to_vec();
    let writer = thread::spawn(move || {
        let _ = stdin.write_all(&input);
        // Dropping stdin closes it: end of input.
    });
    let deadline = Instant::now() + HANG;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "npipe {args:?} hung; stderr so far:\n{}",
                stderr.join().unwrap_or_default()
            );
        }
        thread::sleep(Duration::from_millis(10));
    };
    let _ = writer.join();
    Run {
        status,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}

/// The JSON objects `npipe list --json` printed, one per line.
fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
        .collect()
}

/// The number after `prefix` on the first line that starts with it.
fn pid_after(text: &str, prefix: &str) -> u32 {
    text.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no line starting {prefix:?} in:\n{text}"))
}

// ------------------------------------------------------------------ tests ---

/// A stopped `npipe serve` says how many clients it cut off: those still
/// connected, not those that came and went (each connection's task counts
/// itself until it ends).
#[test]
fn serve_counts_the_clients_it_cuts_off() {
    let name = unique("cutoff");
    let mut child = npipe()
        .args(["serve", &name])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start npipe serve");
    let mut said = std::io::BufReader::new(child.stderr.take().expect("piped"));
    let mut line = String::new();
    let mut said_line = |needle: &str| loop {
        line.clear();
        let n = std::io::BufRead::read_line(&mut said, &mut line).expect("server stderr");
        assert!(n > 0, "npipe serve ended before saying {needle:?}");
        if line.contains(needle) {
            return line.clone();
        }
    };
    said_line("serving");
    let mut stays = npipe::ClientOptions::new().open(name.as_str()).unwrap();
    let mut leaves = npipe::ClientOptions::new().open(name.as_str()).unwrap();
    assert_eq!(stays.transact(b"one").unwrap(), b"one");
    assert_eq!(leaves.transact(b"two").unwrap(), b"two");
    drop(leaves);
    said_line("closed after 1 message(s)");
    let pid = rustix::process::Pid::from_raw(child.id() as i32).expect("a pid");
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("signal");
    let stopping = said_line("stopping");
    assert!(
        stopping.contains("1 connected client cut off"),
        "npipe serve said: {stopping}"
    );
    assert!(child.wait().expect("wait").success());
    drop(stays);
}

/// README: `npipe serve` removes its pipe on SIGINT, SIGTERM or SIGHUP, and
/// exits cleanly.
#[test]
fn serve_removes_its_pipe_on_each_stop_signal() {
    for signal in [
        rustix::process::Signal::INT,
        rustix::process::Signal::TERM,
        rustix::process::Signal::HUP,
    ] {
        let name = unique("signal");
        let mut server = Server::start(&name, &[]);
        let pid = rustix::process::Pid::from_raw(server.pid() as i32).expect("a pid");
        rustix::process::kill_process(pid, signal).expect("signal npipe serve");
        let deadline = Instant::now() + HANG;
        let status = loop {
            if let Some(status) = server.child.try_wait().expect("try_wait") {
                break status;
            }
            assert!(Instant::now() < deadline, "npipe serve ignored {signal:?}");
            thread::sleep(Duration::from_millis(10));
        };
        assert!(status.success(), "{signal:?}: {status}");
        let e = npipe::query_pipe(name.as_str()).unwrap_err();
        assert_eq!(e.code(), npipe::ErrorCode::FileNotFound, "{signal:?}: {e}");
    }
}

#[test]
fn demo_exits_zero_and_both_sides_report_each_others_pid() {
    let name = unique("demo");
    let run = run(&["demo", "--name", &name], b"");
    run.assert_success();
    let out = &run.stdout;
    let server_pid = pid_after(out, "[demo] server is pid ");
    let client_pid = pid_after(
        out,
        &format!("[demo] server is pid {server_pid}, client is pid "),
    );
    assert_eq!(pid_after(out, "[server] client process id: "), client_pid);
    assert_eq!(pid_after(out, "[client] server process id: "), server_pid);
    assert!(out.contains("[server] client user: "), "{out}");
    assert!(out.contains("[server] client session id: "), "{out}");
    assert!(out.contains("[client] server user: "), "{out}");
    assert!(out.contains("[demo] ok"), "{out}");
}

#[test]
fn call_gets_the_echo_of_a_message() {
    let name = unique("call");
    let _server = Server::start(&name, &[]);
    let run = run(&["call", &name, "hello"], b"");
    run.assert_success();
    assert_eq!(run.stdout, "hello\n");

    // The Windows spelling of the name, in another case, is the same pipe.
    let full = format!(r"\\.\pipe\{}", name.to_uppercase());
    let run = self::run(&["call", &full, "again", "--raw"], b"");
    run.assert_success();
    assert_eq!(run.stdout, "again");
}

#[test]
fn list_shows_the_pipe_and_its_server_pid() {
    let name = unique("list");
    let server = Server::start(&name, &["--instances", "3"]);
    let pid = server.pid().to_string();

    let table = run(&["list"], b"");
    table.assert_success();
    assert!(
        table.stdout.starts_with(&format!(
            "Pipes in {}",
            npipe::namespace_directory().display()
        )),
        "{}",
        table.stdout
    );
    let row = table
        .stdout
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name.as_str()))
        .unwrap_or_else(|| panic!("{name} not listed:\n{}", table.stdout));
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cells[1], pid, "{row}");
    assert_eq!(&cells[3..], ["message", "duplex", "0/3"], "{row}");

    let json = run(&["list", "--json"], b"");
    json.assert_success();
    let entry = json_lines(&json.stdout)
        .into_iter()
        .find(|v| v["name"] == name.as_str())
        .unwrap_or_else(|| panic!("{name} not in JSON listing:\n{}", json.stdout));
    assert_eq!(entry["pid"], server.pid());
    assert_eq!(entry["type"], "message");
    assert_eq!(entry["direction"], "duplex");
    assert_eq!(entry["max_instances"], 3);
    assert_eq!(entry["cur_instances"], 0);
}

#[test]
fn info_json_describes_the_pipe() {
    let name = unique("info");
    let server = Server::start(
        &name,
        &[
            "--type",
            "byte",
            "--direction",
            "in",
            "--allow",
            "group:nogroup=rw",
        ],
    );
    let run = run(&["info", &name, "--json"], b"");
    run.assert_success();
    let v: Value = serde_json::from_str(run.stdout.trim()).expect("one JSON object");
    assert_eq!(v["name"], name.as_str());
    assert_eq!(v["pid"], server.pid());
    assert_eq!(
        v["uid"].as_u64(),
        Some(u64::from(rustix::process::geteuid().as_raw()))
    );
    assert_eq!(v["type"], "byte");
    assert_eq!(v["direction"], "inbound");
    assert_eq!(v["max_instances"], Value::Null);
    assert_eq!(v["default_timeout_ms"], 50);
    // The descriptor as given: the group by name, `rw` as written.
    assert_eq!(
        v["security"],
        "allow owner=full; allow user:0=full; allow everyone=r; allow group:nogroup=rw"
    );
    for key in [
        "file",
        "user",
        "cur_instances",
        "in_buffer_size",
        "out_buffer_size",
        "max_message_size",
    ] {
        assert!(v.get(key).is_some(), "no {key} in {v}");
    }

    let text = self::run(&["info", &name], b"");
    text.assert_success();
    assert!(
        text.stdout
            .lines()
            .any(|l| l.starts_with("pid:") && l.ends_with(&format!(" {}", server.pid()))),
        "{}",
        text.stdout
    );
    assert!(text
        .stdout
        .lines()
        .any(|l| l.starts_with("max_instances:") && l.ends_with("unlimited")));
    assert!(
        text.stdout
            .lines()
            .any(|l| l.starts_with("security:") && l.ends_with("group:nogroup=rw")),
        "{}",
        text.stdout
    );
}

#[test]
fn client_echoes_each_line_of_piped_input() {
    let name = unique("client");
    let _server = Server::start(&name, &[]);
    let run = run(&["client", &name], b"one\ntwo\r\nthree\n");
    run.assert_success();
    // Nothing but the newline is taken off a line: `\r` is the message's.
    assert_eq!(run.stdout, "one\ntwo\r\nthree\n");
    assert!(
        run.stderr.starts_with("npipe: connected to "),
        "{}",
        run.stderr
    );
    let quiet = self::run(&["client", &name, "-q"], b"x\n");
    quiet.assert_success();
    assert_eq!(quiet.stderr, "");
}

/// `client --shared-memory` moves the data into shared memory when the
/// server takes it, and says so; `serve --no-shared-memory` declines, and
/// the client goes on over the socket. (Unless CI's run forces the path
/// on or off for every process: then the flags cannot change it.)
#[test]
fn client_shared_memory_is_taken_or_declined() {
    let forced = std::env::var("NPIPE_SHARED_MEMORY").ok();
    let name = unique("client-shm");
    let _server = Server::start(&name, &[]);
    let run = run(&["client", &name, "--shared-memory"], b"one\ntwo\n");
    run.assert_success();
    assert_eq!(run.stdout, "one\ntwo\n");
    let said = run.stderr.contains("through shared memory");
    assert_eq!(said, forced.as_deref() != Some("off"), "{}", run.stderr);

    let name = unique("client-no-shm");
    let _server = Server::start(&name, &["--no-shared-memory"]);
    let run = self::run(&["client", &name, "--shared-memory"], b"one\n");
    run.assert_success();
    assert_eq!(run.stdout, "one\n");
    assert!(!run.stderr.contains("shared memory"), "{}", run.stderr);
}

/// A busy `client` session moves to shared memory in mid-stream (a
/// blocking client offers after 16 writes, and `serve` takes it), while
/// the client reads the echoes on another thread: every line still comes
/// back, whole and in order.
#[test]
fn a_busy_client_session_moves_and_loses_nothing() {
    let name = unique("client-late");
    let _server = Server::start(&name, &[]);
    let input: String = (0..400)
        .map(|i| format!("line {i} {}\n", "x".repeat(i % 97)))
        .collect();
    let run = run(&["client", &name], input.as_bytes());
    run.assert_success();
    assert!(run.stdout == input, "{}", run.stderr);
}

/// `serve --pid-file` holds the server's pid while it serves and is
/// removed when it stops.
#[test]
fn serve_pid_file_names_the_server_while_it_serves() {
    let name = unique("pidfile");
    let file = std::env::temp_dir().join(format!("{name}.pid"));
    let path = file.to_str().unwrap().to_string();
    let mut server = Server::start(&name, &["--pid-file", &path]);
    let written = std::fs::read_to_string(&file).expect("the pid file");
    assert_eq!(written.trim(), server.pid().to_string());
    // SIGTERM: a clean stop removes it.
    let _ = rustix::process::kill_process(
        rustix::process::Pid::from_raw(server.pid() as i32).unwrap(),
        rustix::process::Signal::TERM,
    );
    let _ = server.child.wait();
    assert!(!file.exists(), "the pid file outlived the server");
}

/// A pid file path where someone planted a symbolic link (as another user
/// could in `/tmp`) is refused, and the link's target is left untouched.
#[test]
fn serve_pid_file_never_follows_a_planted_link() {
    let name = unique("pidfile-link");
    let dir = std::env::temp_dir();
    let target = dir.join(format!("{name}.target"));
    std::fs::write(&target, "precious\n").unwrap();
    let link = dir.join(format!("{name}.pid"));
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let out = run(&["serve", &name, "--pid-file", link.to_str().unwrap()], b"");
    assert!(!out.status.success(), "the server wrote through a link");
    assert!(out.stderr.contains("pid file"), "{}", out.stderr);
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious\n");
    let _ = std::fs::remove_file(&link);
    let _ = std::fs::remove_file(&target);
}

/// Binary messages through `--framing length` and `nul`, unchanged.
#[test]
fn client_framings_carry_binary_messages_unchanged() {
    let name = unique("framing");
    let _server = Server::start(&name, &[]);
    let messages: Vec<Vec<u8>> = vec![b"".to_vec(), vec![0, 13, 10, 255, 0], vec![7; 70_000]];
    let mut input = Vec::new();
    for m in &messages {
        input.extend_from_slice(&(m.len() as u32).to_le_bytes());
        input.extend_from_slice(m);
    }
    let (status, out) = run_bytes(&["client", &name, "--framing", "length"], &input);
    assert!(status.success(), "{status}");
    assert_eq!(out, input, "every message came back framed as it went");

    let (status, out) = run_bytes(&["client", &name, "--framing", "nul"], b"a\r\nb\0c\0");
    assert!(status.success(), "{status}");
    assert_eq!(out, b"a\r\nb\0c\0");
}

#[test]
fn byte_pipe_serve_with_call_and_client() {
    let name = unique("bytes");
    let _server = Server::start(&name, &["--type", "byte"]);
    let run = run(&["call", &name, "hello"], b"");
    run.assert_success();
    assert_eq!(run.stdout, "hello\n");

    let raw = self::run(&["call", &name, "exact", "--raw"], b"");
    raw.assert_success();
    assert_eq!(raw.stdout, "exact");

    let client = self::run(&["client", &name], b"a\nbb\nccc\n");
    client.assert_success();
    assert_eq!(client.stdout, "a\nbb\nccc\n");
}

#[test]
fn inbound_server_prints_what_clients_write() {
    let name = unique("inbound");
    let mut server = Server::start_with_stdout(&name, &["--direction", "in"], Stdio::piped());
    let (tx, rx) = mpsc::channel();
    let stdout = server.take_stdout();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let run = run(&["client", &name], b"first\nsecond\n");
    run.assert_success();
    assert_eq!(run.stdout, "", "an inbound client reads nothing");
    for expected in ["first", "second"] {
        let got = rx.recv_timeout(HANG).expect("the server printed a line");
        assert_eq!(got, expected);
    }
    // A call needs to read the reply: an inbound pipe refuses it.
    self::run(&["call", &name, "x"], b"").assert_code(EXIT_ACCESS_DENIED);
}

#[test]
fn outbound_server_greets_each_client() {
    let name = unique("outbound");
    let _server = Server::start(&name, &["--direction", "out", "--greeting", "welcome"]);
    for _ in 0..2 {
        let run = run(&["client", &name], b"");
        run.assert_success();
        assert_eq!(run.stdout, "welcome\n");
    }
}

#[test]
fn busy_and_timeout_have_their_own_exit_codes() {
    let name = unique("busy");
    let _server = Server::start(&name, &["--instances", "1"]);
    // Hold the only instance from this process.
    let mut holder = npipe::ClientOptions::new()
        .open(name.as_str())
        .expect("take the only instance");

    let busy = run(&["call", &name, "x", "--timeout", "0"], b"");
    busy.assert_code(EXIT_BUSY);
    assert!(busy.stderr.contains("ERROR_PIPE_BUSY"), "{}", busy.stderr);

    let late = run(&["call", &name, "x", "--timeout", "200"], b"");
    late.assert_code(EXIT_TIMEOUT);
    assert!(late.stderr.contains("ERROR_SEM_TIMEOUT"), "{}", late.stderr);

    // The held connection still works, and releasing it frees the instance.
    assert_eq!(
        holder.transact(b"still here").expect("transact"),
        b"still here"
    );
    drop(holder);
    let run = run(&["call", &name, "free", "--timeout", "10000"], b"");
    run.assert_success();
    assert_eq!(run.stdout, "free\n");
}

/// A server that accepts and then hangs, or that is stopped outright,
/// fails a call after --reply-timeout with the timeout exit code, instead
/// of holding it for ever (or 5 s).
#[test]
fn a_hung_or_stopped_server_fails_a_call_after_its_reply_timeout() {
    let name = unique("hangs");
    let _server = Server::start(&name, &["--exec", "sleep 30"]);
    let hung = run(&["call", &name, "x", "--reply-timeout", "200"], b"");
    hung.assert_code(EXIT_TIMEOUT);
    assert!(
        hung.stderr.contains("--reply-timeout 200"),
        "{}",
        hung.stderr
    );

    let name = unique("stopped");
    let server = Server::start(&name, &[]);
    let pid = server.pid().to_string();
    let signal = |sig: &str| {
        let ok = Command::new("kill").args([sig, &pid]).status().unwrap();
        assert!(ok.success(), "kill {sig}");
    };
    signal("-STOP");
    let stopped = run(
        &[
            "call",
            &name,
            "x",
            "--timeout",
            "0",
            "--reply-timeout",
            "200",
        ],
        b"",
    );
    signal("-CONT");
    stopped.assert_code(EXIT_TIMEOUT);

    run(&["call", &name, "x", "--reply-timeout", "0"], b"").assert_code(EXIT_USAGE);
}

/// Runs `npipe ARGS...` with `input` on stdin and returns its exit status
/// and stdout as bytes (binary replies).
fn run_bytes(args: &[&str], input: &[u8]) -> (ExitStatus, Vec<u8>) {
    let mut child = npipe()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start npipe");
    let mut stdin = child.stdin.take().expect("stdin");
    let input = input.to_vec();
    let writer = thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().expect("npipe output");
    let _ = writer.join();
    (out.status, out.stdout)
}

/// `call -` and `call @FILE` send their bytes unchanged (NUL bytes, `\r`,
/// bytes that are not UTF-8), and `--literal` sends `-` as written.
#[test]
fn call_sends_stdin_and_files_byte_for_byte() {
    let name = unique("callbytes");
    let _server = Server::start(&name, &[]);
    let request: Vec<u8> = (0..20_000u32).map(|i| (i * 7 % 256) as u8).collect();
    let (status, reply) = run_bytes(&["call", &name, "-", "--raw"], &request);
    assert!(status.success(), "{status}");
    assert_eq!(reply, request, "stdin went through unchanged");

    let file = std::env::temp_dir().join(format!("{name}.bin"));
    std::fs::write(&file, &request[..4096]).unwrap();
    let at = format!("@{}", file.display());
    let (status, reply) = run_bytes(&["call", &name, &at, "--raw"], b"");
    let _ = std::fs::remove_file(&file);
    assert!(status.success(), "{status}");
    assert_eq!(reply, &request[..4096], "the file went through unchanged");

    let (status, reply) = run_bytes(&["call", &name, "-", "--literal", "--raw"], b"ignored");
    assert!(status.success(), "{status}");
    assert_eq!(reply, b"-");

    let missing = run(&["call", &name, "@/no/such/file"], b"");
    missing.assert_code(EXIT_USAGE);
    assert!(
        missing.stderr.contains("/no/such/file"),
        "{}",
        missing.stderr
    );
}

/// FNV-1a over the bytes: a checksum to name in failure messages.
fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    })
}

/// 100 MiB of binary data (every byte value, NULs and `\r\n` included)
/// through `call -` as one message and through `client --framing raw` on a
/// byte pipe: what comes back is what went in.
#[test]
fn a_hundred_mib_of_binary_data_passes_call_and_client_unchanged() {
    const SIZE: usize = 100 * 1024 * 1024;
    let data: Vec<u8> = (0..SIZE as u64)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let sum = checksum(&data);

    let name = unique("bigcall");
    let limit = (SIZE + 1024).to_string();
    let _server = Server::start(&name, &["--max-message", &limit, "--memory-budget", &limit]);
    let (status, reply) = run_bytes(&["call", &name, "-", "--raw"], &data);
    assert!(status.success(), "{status}");
    assert_eq!(
        (reply.len(), checksum(&reply)),
        (SIZE, sum),
        "call - changed the data"
    );
    drop(reply);

    let name = unique("bigclient");
    let _server = Server::start(&name, &["--type", "byte"]);
    let (status, echoed) = run_bytes(&["client", &name, "--framing", "raw", "-q"], &data);
    assert!(status.success(), "{status}");
    assert_eq!(
        (echoed.len(), checksum(&echoed)),
        (SIZE, sum),
        "client --framing raw changed the data"
    );
}

/// `npipe wait` (WaitNamedPipe) returns once the pipe has a free instance,
/// waits for a server still starting, and times out with its own exit code;
/// `call --wait-for-server` waits for the server the same way.
#[test]
fn wait_and_wait_for_server_let_scripts_start_servers() {
    let name = unique("waitfor");
    let missing = run(&["wait", &name, "--timeout", "100"], b"");
    missing.assert_code(EXIT_TIMEOUT);
    assert!(
        missing.stderr.contains("did not appear"),
        "{}",
        missing.stderr
    );

    let starter = {
        let name = name.clone();
        thread::spawn(move || {
            thread::sleep(Duration::from_millis(300));
            Server::start(&name, &["--instances", "1"])
        })
    };
    let waited = run(
        &[
            "call",
            &name,
            "early",
            "--wait-for-server",
            "--timeout",
            "forever",
        ],
        b"",
    );
    let server = starter.join().expect("server started");
    waited.assert_success();
    assert_eq!(waited.stdout, "early\n");
    run(&["wait", &name, "--timeout", "forever"], b"").assert_success();

    // The only instance held: no free one within the timeout.
    let holder = npipe::ClientOptions::new().open(name.as_str()).unwrap();
    let busy = run(&["wait", &name, "--timeout", "100"], b"");
    busy.assert_code(EXIT_TIMEOUT);
    assert!(busy.stderr.contains("stayed busy"), "{}", busy.stderr);
    drop(holder);
    run(&["wait", &name, "--timeout", "5000"], b"").assert_success();
    drop(server);
}

/// `serve --once` serves its first client, removes the name as soon as
/// that client is connected, and exits with it.
#[test]
fn serve_once_serves_one_client_and_exits() {
    let name = unique("once");
    let mut server = Server::start(&name, &["--once"]);
    let first = run(&["call", &name, "only"], b"");
    first.assert_success();
    assert_eq!(first.stdout, "only\n");
    let deadline = Instant::now() + HANG;
    let status = loop {
        if let Some(status) = server.child.try_wait().expect("try_wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "serve --once did not exit");
        thread::sleep(Duration::from_millis(10));
    };
    assert!(status.success(), "{status}");
    run(&["call", &name, "again"], b"").assert_code(EXIT_NOT_FOUND);

    // A connection that fails makes the server's exit status say so.
    let name = unique("oncefails");
    let mut server = Server::start(&name, &["--once", "--max-message", "8"]);
    let refused = run(&["call", &name, "longer than eight bytes"], b"");
    assert!(!refused.status.success(), "the call went through");
    let deadline = Instant::now() + HANG;
    let status = loop {
        if let Some(status) = server.child.try_wait().expect("try_wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "serve --once did not exit");
        thread::sleep(Duration::from_millis(10));
    };
    assert!(
        !status.success(),
        "serve --once exited 0 after its client failed"
    );
}

/// `serve --exec` runs a command per client: lines in and out are
/// messages, the client's identity (from the kernel) is in its
/// environment; on a byte pipe the bytes pass as they are.
#[test]
fn serve_exec_runs_a_command_for_each_client() {
    let name = unique("exec");
    let script = r#"while IFS= read -r l; do printf '%s:%s\n' "$NPIPE_CLIENT_UID" "$l"; done"#;
    let _server = Server::start(&name, &["--exec", script]);
    let me = rustix::process::geteuid().as_raw();
    let run = run(&["call", &name, "hello"], b"");
    run.assert_success();
    assert_eq!(run.stdout, format!("{me}:hello\n"));
    let dialog = self::run(&["client", &name], b"a\nb\n");
    dialog.assert_success();
    assert_eq!(dialog.stdout, format!("{me}:a\n{me}:b\n"));

    let bytes = unique("execbytes");
    let _server = Server::start(&bytes, &["--type", "byte", "--exec", "tr a-z A-Z"]);
    let upper = self::run(&["call", &bytes, "shout", "--raw"], b"");
    upper.assert_success();
    assert_eq!(upper.stdout, "SHOUT");

    self::run(&["serve", "x", "--impersonate"], b"").assert_code(EXIT_USAGE);
}

/// The command sees every identity variable, from the kernel: the client's
/// pid (that of the `npipe client` process), uid, gid, user name and
/// session, and the pipe's name.
#[test]
fn serve_exec_gives_the_command_the_clients_identity() {
    let name = unique("execid");
    let script = r#"read -r l; echo "$NPIPE_CLIENT_PID $NPIPE_CLIENT_UID $NPIPE_CLIENT_GID $NPIPE_CLIENT_USER $NPIPE_CLIENT_SESSION $NPIPE_PIPE""#;
    let _server = Server::start(&name, &["--exec", script]);
    let mut client = npipe()
        .args(["client", &name, "-q"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start npipe client");
    let pid = client.id();
    // The client inherits this process's audit session (read here: once
    // the client is reaped its /proc entry is gone). Unset (u32::MAX) is
    // session 0, as for a Windows service.
    let session = std::fs::read_to_string("/proc/self/sessionid")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .map(|s| if s == u32::MAX { 0 } else { s });
    client.stdin.take().unwrap().write_all(b"who?\n").unwrap();
    let out = client.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", out.status);
    let text = String::from_utf8(out.stdout).unwrap();
    let fields: Vec<&str> = text.split_whitespace().collect();
    let uid = rustix::process::geteuid().as_raw();
    let gid = rustix::process::getegid().as_raw();
    assert_eq!(fields.len(), 6, "{text:?}");
    assert_eq!(fields[0], pid.to_string(), "{text:?}");
    assert_eq!(fields[1], uid.to_string(), "{text:?}");
    assert_eq!(fields[2], gid.to_string(), "{text:?}");
    assert_eq!(Some(fields[3].to_string()), passwd_name(uid), "{text:?}");
    if let Some(session) = session {
        assert_eq!(fields[4], session.to_string(), "{text:?}");
    }
    assert!(fields[5].ends_with(&name), "{text:?}");
}

/// --framing on --exec: with length or NUL framing a message holding
/// newlines reaches the command whole and comes back whole; without
/// --exec or --stdio the flag is refused.
#[test]
fn serve_exec_framings_keep_messages_whole() {
    let name = unique("execlen");
    let _server = Server::start(&name, &["--exec", "cat", "--framing", "length"]);
    let messages: [&[u8]; 3] = [b"two\nlines", b"", b"\0\r\n\xff"];
    let mut input = Vec::new();
    for m in messages {
        input.extend_from_slice(&(m.len() as u32).to_le_bytes());
        input.extend_from_slice(m);
    }
    let (status, out) = run_bytes(&["client", &name, "--framing", "length", "-q"], &input);
    assert!(status.success(), "{status}");
    assert_eq!(out, input, "every message came back whole");

    let name = unique("execnul");
    let _server = Server::start(&name, &["--exec", "cat", "--framing", "nul"]);
    let (status, out) = run_bytes(&["client", &name, "--framing", "nul", "-q"], b"a\nb\0c\0");
    assert!(status.success(), "{status}");
    assert_eq!(out, b"a\nb\0c\0");

    run(&["serve", "x", "--framing", "nul"], b"").assert_code(EXIT_USAGE);
}

/// `serve --stdio` (as `ncat -l`): lines of its input go to the one client
/// as messages, the client's messages come out as lines, and it exits when
/// the client leaves.
#[test]
fn serve_stdio_bridges_one_client_to_the_terminal() {
    let name = unique("stdio");
    let mut child = npipe()
        .args(["serve", &name, "--stdio"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start npipe serve --stdio");
    let deadline = Instant::now() + STARTUP;
    while npipe::query_pipe(name.as_str()).is_err() {
        assert!(Instant::now() < deadline, "serve --stdio did not start");
        thread::sleep(Duration::from_millis(20));
    }
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"to the client\n").unwrap();
    let mut client = npipe::ClientOptions::new().open(name.as_str()).unwrap();
    assert_eq!(client.recv_message().unwrap(), b"to the client");
    client.write_message(b"from the client").unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "from the client\n");
    drop(client);
    let deadline = Instant::now() + HANG;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "serve --stdio did not exit with its client"
        );
        thread::sleep(Duration::from_millis(10));
    };
    drop(stdin);
    assert!(status.success(), "{status}");
}

/// `serve --exec cat` answers a message larger than the pipes between
/// server and command hold (its output is read while its input is fed),
/// and a client whose output is closed (`| head -1`) stops at once.
#[test]
fn exec_takes_big_messages_and_a_closed_client_output_stops_the_client() {
    let name = unique("execbig");
    let _server = Server::start(&name, &["--exec", "cat"]);
    let big = vec![b'x'; 600_000];
    let (status, reply) = run_bytes(&["call", &name, "-", "--raw"], &big);
    assert!(status.success(), "{status}");
    assert_eq!(reply.len(), big.len());
    assert_eq!(reply, big);

    let echo = unique("headecho");
    let _server = Server::start(&echo, &[]);
    let exe = env!("CARGO_BIN_EXE_npipe");
    let script = format!("yes | '{exe}' client {echo} -q | head -1");
    let run = run_cmd(
        {
            let mut c = Command::new("sh");
            c.arg("-c").arg(&script);
            c
        },
        &["sh", "-c", &script],
        b"",
    );
    run.assert_success();
    assert_eq!(run.stdout, "y\n");
}

/// `serve --stdio` whose input has ended still prints what the client
/// answers (it waits for a quiet half second), then exits.
#[test]
fn serve_stdio_prints_the_answer_to_its_last_line() {
    let name = unique("stdiolast");
    let mut child = npipe()
        .args(["serve", &name, "--stdio"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start npipe serve --stdio");
    let deadline = Instant::now() + STARTUP;
    while npipe::query_pipe(name.as_str()).is_err() {
        assert!(Instant::now() < deadline, "serve --stdio did not start");
        thread::sleep(Duration::from_millis(20));
    }
    let mut client = npipe::ClientOptions::new().open(name.as_str()).unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"question\n").unwrap();
    drop(stdin); // the end of its input
    assert_eq!(client.recv_message().unwrap(), b"question");
    client.write_message(b"answer").unwrap();
    let out = child.wait_with_output().expect("serve --stdio output");
    assert!(out.status.success(), "{}", out.status);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "answer\n");
}

#[test]
fn a_second_server_of_the_same_name_is_refused() {
    let name = unique("twice");
    let _server = Server::start(&name, &[]);
    let second = run(&["serve", &name], b"");
    second.assert_code(EXIT_BUSY);
    let first_only = run(&["serve", &name, "--first-instance"], b"");
    first_only.assert_code(EXIT_ACCESS_DENIED);
    assert!(
        first_only.stderr.contains("ERROR_ACCESS_DENIED"),
        "{}",
        first_only.stderr
    );
}

#[test]
fn calling_a_missing_pipe_says_it_does_not_exist() {
    let name = unique("nosuch");
    for args in [
        vec!["call", name.as_str(), "x"],
        vec!["client", name.as_str()],
        vec!["info", name.as_str()],
    ] {
        let run = run(&args, b"");
        run.assert_code(EXIT_NOT_FOUND);
        assert!(run.stderr.starts_with("npipe: "), "{}", run.stderr);
        assert!(run.stderr.contains("does not exist"), "{}", run.stderr);
        assert!(
            run.stderr.contains("ERROR_FILE_NOT_FOUND (2)"),
            "{}",
            run.stderr
        );
        assert!(
            run.stderr.contains("npipe list"),
            "the hint names `npipe list`: {}",
            run.stderr
        );
        assert_eq!(run.stdout, "");
    }
}

#[test]
fn bad_arguments_are_usage_errors() {
    // A typo is never told about the processes demo and bench start.
    let typo = run(&["demo-serve"], b"");
    typo.assert_code(EXIT_USAGE);
    assert!(!typo.stderr.contains("demo-server"), "{}", typo.stderr);
    run(&["call", r"\a\b", "x"], b"").assert_code(EXIT_USAGE);
    run(&["serve", "x", "--instances", "0"], b"").assert_code(EXIT_USAGE);
    run(&["serve", "x", "--type", "stream"], b"").assert_code(EXIT_USAGE);
    run(&["call", "x"], b"").assert_code(EXIT_USAGE);
    run(&["bogus"], b"").assert_code(EXIT_USAGE);
}

#[test]
fn every_command_has_help() {
    let top = run(&["--help"], b"");
    top.assert_success();
    for needle in ["Exit codes:", "npipe demo", r"\\.\pipe\NAME", "NPIPE_DIR"] {
        assert!(
            top.stdout.contains(needle),
            "no {needle:?} in:\n{}",
            top.stdout
        );
    }
    for sub in [
        "demo", "serve", "client", "call", "list", "info", "gateway", "cert",
    ] {
        for flag in ["--help", "-h"] {
            let run = run(&[sub, flag], b"");
            run.assert_success();
            assert!(
                run.stdout.contains(&format!("Usage: npipe {sub}")),
                "npipe {sub} {flag}:\n{}",
                run.stdout
            );
        }
        let via_help = run(&["help", sub], b"");
        via_help.assert_success();
        assert!(via_help.stdout.contains(&format!("Usage: npipe {sub}")));
    }
    // The demo's worker commands stay out of the listing.
    assert!(!top.stdout.contains("demo-server"), "{}", top.stdout);
}

#[test]
fn bench_smoke_prints_every_row_as_json_with_finite_figures() {
    // Token amounts of work (--smoke): this checks the machinery and the
    // output, never the speed.
    let run = run(
        &[
            "bench",
            "--quick",
            "--json",
            "--smoke",
            "--rounds",
            "1",
            "msg_throughput_64b",
            "transact",
            "connect_rate",
            "remote_throughput",
        ],
        b"",
    );
    run.assert_success();
    let rows = json_lines(&run.stdout);
    let names: Vec<&str> = rows.iter().filter_map(|r| r["case"].as_str()).collect();
    for case in [
        "msg_throughput_64b",
        "transact_64b_blocking",
        "connect_rate",
        "remote_transact_64b",
        "remote_throughput_64k",
        "remote_connect_rate",
    ] {
        assert!(names.contains(&case), "no {case} in:\n{}", run.stdout);
    }
    // The split case runs on two CPUs whatever --pin says, or says loudly
    // that it cannot.
    match rows.iter().find(|r| r["case"] == "transact_64b_split") {
        Some(split) => {
            assert_eq!(split["pin"], "split", "{split}");
            let cpus = |side: &str| -> Vec<u64> {
                split[side]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|c| c.as_u64().unwrap())
                    .collect()
            };
            let (client, server) = (cpus("client_cpus"), cpus("server_cpus"));
            assert!(
                !client.is_empty()
                    && !server.is_empty()
                    && client.iter().all(|c| !server.contains(c)),
                "client and server shared a CPU: {split}"
            );
        }
        None => {
            assert!(
                run.stderr.contains("SKIPPED transact_64b_split"),
                "neither a split row nor a word why:\n{}{}",
                run.stdout,
                run.stderr
            );
            crate::shared_copy::skipped(
                "the bench's split case needs two CPUs, and this run had one",
            );
        }
    }
    for row in &rows {
        for key in ["npipe", "raw", "ratio", "min_ratio", "max_ratio"] {
            let v = row[key].as_f64().unwrap_or(f64::NAN);
            assert!(v.is_finite() && v > 0.0, "{key} = {} in {row}", row[key]);
        }
        assert!(row["unit"].is_string(), "{row}");
        assert!(
            row["better"] == "lower" || row["better"] == "higher",
            "{row}"
        );
        assert!(
            row["min_ratio"].as_f64() <= row["ratio"].as_f64()
                && row["ratio"].as_f64() <= row["max_ratio"].as_f64(),
            "{row}"
        );
    }
}

/// A copy of the `npipe` binary any user may run (the build directory may
/// sit under a home directory other users cannot enter).
fn shared_npipe() -> std::path::PathBuf {
    static EXE: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    EXE.get_or_init(|| {
        let program = std::path::Path::new(env!("CARGO_BIN_EXE_npipe"));
        shared_copy::shared_copy(program, "npipe-cli-exe-", "npipe")
    })
    .clone()
}

/// The user name `/etc/passwd` gives `uid`, if any.
fn passwd_name(uid: u32) -> Option<String> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let id: u32 = fields.nth(1)?.parse().ok()?;
        (id == uid).then(|| name.to_string())
    })
}

/// Runs `npipe ARGS...` as uid/gid 65534 (nobody), bounded by [`HANG`].
fn run_as_nobody(args: &[&str]) -> Run {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(shared_npipe());
    cmd.args(args).uid(65534).gid(65534).current_dir("/");
    run_cmd(cmd, args, b"")
}

#[test]
fn whoami_reports_the_client_and_what_impersonation_did() {
    if let Some(why) = shared_copy::cannot_run_as(65534) {
        crate::shared_copy::skipped(&format!(
            "whoami test runs a client as uid 65534, and {why}"
        ));
        return;
    }
    let name = unique("whoami");
    let _server = Server::start(
        &name,
        &["--whoami", "--impersonate", "--allow", "everyone=rw"],
    );
    let me = run(&["call", &name, "who?"], b"");
    me.assert_success();
    assert!(
        me.stdout.contains("uid=0 ") && me.stdout.contains("impersonating: euid=0"),
        "{}",
        me.stdout
    );
    let other = run_as_nobody(&["call", &name, "who?"]);
    other.assert_success();
    assert!(
        other.stdout.contains("uid=65534 gid=65534 "),
        "{}",
        other.stdout
    );
    assert!(
        other.stdout.contains("impersonating: euid=65534 "),
        "{}",
        other.stdout
    );
    // The name, where the user database has one for uid 65534.
    if let Some(user) = passwd_name(65534) {
        assert!(
            other.stdout.contains(&format!("gid=65534 user={user}"))
                && other
                    .stdout
                    .contains(&format!("impersonating: euid=65534 user={user}")),
            "{}",
            other.stdout
        );
    }
    let ident = run_as_nobody(&[
        "call",
        &name,
        "who?",
        "--impersonation-level",
        "identification",
    ]);
    ident.assert_success();
    assert!(
        ident.stdout.contains("level=identification"),
        "{}",
        ident.stdout
    );
    assert!(
        ident.stdout.contains("ERROR_CANNOT_IMPERSONATE (1368)"),
        "{}",
        ident.stdout
    );
}

#[test]
fn serve_security_flags_fence_out_other_users() {
    if let Some(why) = shared_copy::cannot_run_as(65534) {
        crate::shared_copy::skipped(&format!(
            "security flag test runs a client as uid 65534, and {why}"
        ));
        return;
    }
    let private = unique("cuo");
    let _a = Server::start(&private, &["--current-user-only"]);
    run_as_nobody(&["call", &private, "x"]).assert_code(EXIT_ACCESS_DENIED);
    run(&["call", &private, "x"], b"").assert_success();
    let denied = unique("denyflag");
    // By name where the user database knows uid 65534 (testing the lookup).
    let deny = format!(
        "user:{}=w",
        passwd_name(65534).unwrap_or_else(|| "65534".into())
    );
    let _b = Server::start(&denied, &["--allow", "everyone=rw", "--deny", &deny]);
    let r = run_as_nobody(&["call", &denied, "x"]);
    r.assert_code(EXIT_ACCESS_DENIED);
    assert!(r.stderr.contains("security descriptor"), "{}", r.stderr);
    // The refused user may read the descriptor that refuses them, in the
    // form the server was given it.
    let shown = run_as_nobody(&["info", &denied, "--json"]);
    shown.assert_success();
    let v: Value = serde_json::from_str(shown.stdout.trim()).expect("one JSON object");
    let security = v["security"].as_str().unwrap_or_default().to_string();
    assert!(
        security.ends_with(&format!("allow everyone=rw; deny {deny}")),
        "{v}"
    );
    // A user the descriptor grants nothing is refused the description too.
    run_as_nobody(&["info", &private]).assert_code(EXIT_ACCESS_DENIED);
    // Squatting: root refuses a pipe served by nobody.
    let squat = unique("squat");
    let mut squatter = Command::new(shared_npipe());
    {
        use std::os::unix::process::CommandExt;
        squatter.uid(65534).gid(65534).current_dir("/");
    }
    let mut child = squatter
        .args(["serve", &squat])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + STARTUP;
    while npipe::query_pipe(squat.as_str()).is_err() {
        assert!(Instant::now() < deadline, "squatter did not start");
        thread::sleep(Duration::from_millis(20));
    }
    let r = run(&["call", &squat, "x", "--expect-server-user", "root"], b"");
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_file(npipe::namespace_directory().join(&squat));
    r.assert_code(EXIT_ACCESS_DENIED);
    assert!(
        r.stderr.contains("not by the expected root"),
        "{}",
        r.stderr
    );
    // The hint speaks of squatting, not of the pipe's direction.
    assert!(
        r.stderr.contains("another user may hold the name") && !r.stderr.contains("duplex"),
        "{}",
        r.stderr
    );
}

/// A listing run by another user (uid 65534) tells a live, a denied, a
/// hung and a dead pipe apart at once, in the table and in JSON, and eight
/// hung sockets cost it one deadline (about 2 s), not a second each.
#[test]
fn list_tells_live_denied_hung_and_dead_apart_within_one_deadline() {
    if let Some(why) = shared_copy::cannot_run_as(65534) {
        crate::shared_copy::skipped(&format!("the listing test lists as uid 65534, and {why}"));
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::net::UnixListener;
    let dir = npipe::namespace_directory();
    let socket = |name: &str| {
        let path = dir.join(name);
        let listener = UnixListener::bind(&path).unwrap();
        // Anyone may connect, so that what uid 65534 sees is the state.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        (listener, path)
    };
    struct Gone(Vec<std::path::PathBuf>);
    impl Drop for Gone {
        fn drop(&mut self) {
            for p in &self.0 {
                let _ = std::fs::remove_file(p);
            }
        }
    }
    let live = unique("lst-live");
    let denied = unique("lst-denied");
    let _live = Server::start(&live, &[]);
    let _denied = Server::start(&denied, &["--current-user-only"]);
    let hung: Vec<String> = (0..8).map(|i| unique(&format!("lst-hung{i}"))).collect();
    let held: Vec<_> = hung.iter().map(|h| socket(h)).collect();
    let dead = unique("lst-dead");
    let (listener, dead_path) = socket(&dead);
    drop(listener);
    let _gone = Gone(
        held.iter()
            .map(|(_, p)| p.clone())
            .chain([dead_path])
            .collect(),
    );

    let started = Instant::now();
    let json = run_as_nobody(&["list", "--json"]);
    let took = started.elapsed();
    json.assert_success();
    let state_of = |file: &str| {
        json_lines(&json.stdout)
            .into_iter()
            .find(|v| v["file"] == file)
            .map(|v| v["state"].as_str().unwrap_or_default().to_string())
            .unwrap_or_else(|| panic!("{file} not listed:\n{}", json.stdout))
    };
    assert_eq!(state_of(&live), "serving");
    assert_eq!(state_of(&denied), "denied");
    for h in &hung {
        assert_eq!(state_of(h), "not answering");
    }
    assert_eq!(state_of(&dead), "dead");
    assert!(
        took < Duration::from_secs(6),
        "eight hung sockets held the listing up {took:?}: asked one after another?"
    );

    let table = run_as_nobody(&["list"]);
    table.assert_success();
    for line in [
        format!("(denied: {denied}, "),
        format!("(not answering: {}; ", hung[0]),
        format!("(dead: {dead}; "),
    ] {
        assert!(
            table.stdout.contains(&line),
            "no {line:?} in\n{}",
            table.stdout
        );
    }
    drop(held);
}

#[test]
fn list_prune_removes_dead_servers_sockets_only() {
    let dead = unique("prune-dead");
    let live = unique("prune-live");
    let _live = Server::start(&live, &[]);
    let mut server = Server::start(&dead, &[]);
    // SIGKILL: the server has no chance to remove its socket.
    let _ = server.child.kill();
    let _ = server.child.wait();
    let path = npipe::namespace_directory().join(&dead);
    assert!(path.exists(), "a killed server leaves its socket");
    let r = run(&["list", "--prune"], b"");
    r.assert_success();
    assert!(
        r.stderr.contains(&format!("removed stale socket {dead}")),
        "{}",
        r.stderr
    );
    assert!(!path.exists());
    assert!(
        r.stdout.contains(&live),
        "the live pipe is listed: {}",
        r.stdout
    );
    assert!(!r.stdout.contains(&dead), "{}", r.stdout);
    run(&["call", &live, "still here"], b"").assert_success();
}

/// `npipe setup` makes a root-owned, sticky, world-writable directory and a
/// tmpfiles.d entry that makes it at boot; run again it repairs the mode and
/// owner; a user without privilege is told to run it as root.
#[test]
fn setup_makes_a_root_owned_sticky_directory_and_its_boot_entry() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    if let Some(why) = shared_copy::cannot_run_as(65534) {
        crate::shared_copy::skipped(&format!(
            "setup test needs root to chown and runs as uid 65534, and {why}"
        ));
        return;
    }
    let base = std::env::temp_dir().join(unique("setup"));
    std::fs::create_dir_all(&base).unwrap();
    let dir = base.join("run-npipe");
    let etc = base.join("tmpfiles.d");
    let (dir_s, etc_s) = (dir.to_str().unwrap(), etc.to_str().unwrap());
    let args = ["setup", "--dir", dir_s, "--tmpfiles-dir", etc_s];
    run(&args, b"").assert_success();
    let m = std::fs::metadata(&dir).unwrap();
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (0, 0, 0o1777));
    let conf = std::fs::read_to_string(etc.join("npipe.conf")).unwrap();
    assert!(
        conf.contains(&format!("d {dir_s} 1777 root root -")),
        "{conf}"
    );
    // Someone took it over meanwhile: setup gives it back to root.
    std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    run(&args, b"").assert_success();
    let m = std::fs::metadata(&dir).unwrap();
    assert_eq!((m.uid(), m.mode() & 0o7777), (0, 0o1777));
    // Without privilege: a clear error that says to use root.
    std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755)).unwrap();
    let other = base.join("other");
    let denied = run_as_nobody(&[
        "setup",
        "--dir",
        other.to_str().unwrap(),
        "--tmpfiles-dir",
        etc_s,
    ]);
    assert!(!denied.status.success());
    assert!(
        denied.stderr.contains("sudo npipe setup"),
        "{}",
        denied.stderr
    );
    let _ = std::fs::remove_dir_all(&base);
}

/// `npipe serve` accepts messages up to 1 MiB unless told otherwise
/// (`--max-message`, with `--memory-budget` for what clients may hold).
#[test]
fn serve_takes_messages_up_to_one_mib_by_default() {
    let name = unique("maxmsg");
    let _server = Server::start(&name, &[]);
    let mut c = npipe::ClientOptions::new().open(name.as_str()).unwrap();
    let just = vec![b'x'; 1 << 20];
    assert_eq!(c.transact(&just).unwrap(), just);
    // The server says its limit in OK: the client refuses to send more.
    let e = c.write_message(&vec![b'x'; (1 << 20) + 1]).unwrap_err();
    assert_eq!(e.code(), npipe::ErrorCode::InvalidParameter, "{e}");
    let bigger = unique("maxmsg-set");
    let _server = Server::start(
        &bigger,
        &["--max-message", "4194304", "--memory-budget", "8388608"],
    );
    let mut c = npipe::ClientOptions::new().open(bigger.as_str()).unwrap();
    let large = vec![b'y'; 3 << 20];
    assert_eq!(c.transact(&large).unwrap(), large);
}

/// A running `npipe gateway`, killed and reaped when dropped.
struct GatewayProcess {
    child: Child,
    addr: String,
    /// What it prints after its first line: a line per connection.
    lines: std::sync::mpsc::Receiver<String>,
}

impl GatewayProcess {
    fn start(args: &[&str]) -> GatewayProcess {
        let mut child = npipe()
            .arg("gateway")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start npipe gateway");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let first = rx
            .recv_timeout(STARTUP)
            .expect("the gateway says where it serves");
        let addr = first
            .split(" on ")
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .unwrap_or_else(|| panic!("no address in {first:?}"))
            .to_string();
        GatewayProcess {
            child,
            addr,
            lines: rx,
        }
    }

    fn port(&self) -> &str {
        self.addr.rsplit(':').next().expect("ADDR:PORT")
    }

    /// The next line it prints that holds `needle` (lines before it are
    /// passed over).
    fn said(&self, needle: &str) -> String {
        loop {
            let line = self
                .lines
                .recv_timeout(STARTUP)
                .unwrap_or_else(|_| panic!("the gateway never said {needle:?}"));
            if line.contains(needle) {
                return line;
            }
        }
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fresh directory with a CA (`npipe cert ca`) and a gateway's
/// certificate for 127.0.0.1 (`npipe cert issue gw`).
fn gateway_certs(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(unique(tag));
    let _ = std::fs::remove_dir_all(&dir);
    let certs = dir.to_str().unwrap();
    run(&["cert", "ca", certs], b"").assert_success();
    let issue = ["cert", "issue", "gw", "--ca", certs, "--out", certs];
    run(&[&issue[..], &["--host", "127.0.0.1"]].concat(), b"").assert_success();
    dir
}

#[test]
fn remote_call_through_npipe_gateway_with_npipe_cert() {
    let dir = gateway_certs("remote-certs");
    let certs = dir.to_str().unwrap();
    run(
        &["cert", "issue", "alice", "--ca", certs, "--out", certs],
        b"",
    )
    .assert_success();
    use std::os::unix::fs::PermissionsExt;
    for key in ["ca.key", "gw.key", "alice.key"] {
        let mode = std::fs::metadata(dir.join(key))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{key}");
    }
    // Never over a file that is there.
    run(
        &["cert", "issue", "alice", "--ca", certs, "--out", certs],
        b"",
    )
    .assert_code(EXIT_USAGE);

    let file = |f: &str| dir.join(f).to_str().unwrap().to_string();
    let root = npipe::LocalUser::current() == npipe::LocalUser::ROOT;
    let me = npipe::unix::LocalUserExt::uid(&npipe::LocalUser::current()).to_string();
    let mut gw_args = vec![
        "--listen".to_string(),
        "127.0.0.1:0".into(),
        "--cert".into(),
        file("gw.crt"),
        "--key".into(),
        file("gw.key"),
        "--ca".into(),
        file("ca.crt"),
    ];
    let mut trust = vec![];
    if !root {
        gw_args.push("--non-root".into());
        trust = vec!["--trust-gateway", me.as_str()];
    }
    // The gateway forwards to `echo` only if its server is ours, and to
    // `squat` only if its server is uid 65534, which it will not be.
    let echo = unique("remote-echo");
    let squat = unique("remote-squat");
    gw_args.extend([
        "--expect-server".into(),
        format!("{echo}={me}"),
        "--expect-server".into(),
        format!("{squat}=65534"),
    ]);
    let gw_args: Vec<&str> = gw_args.iter().map(String::as_str).collect();
    // Usage errors before anything listens: the flags, and what it says.
    let refused = |extra: [&str; 2], says: &str| {
        let args = [&["gateway"], &gw_args[..], &extra[..]].concat();
        let refused = run(&args, b"");
        refused.assert_code(EXIT_USAGE);
        assert!(refused.stderr.contains(says), "{}", refused.stderr);
    };
    refused(
        ["--expect-server", "x=no-such-user-anywhere"],
        "no such local user",
    );
    // Mapping a principal to root takes a flag of its own.
    refused(["--map", "alice=root"], "--allow-root-map");
    let gateway = GatewayProcess::start(&gw_args);

    let mut serve_args = vec!["--security", "allow everyone=full"];
    serve_args.extend(&trust);
    let _echo = Server::start(&echo, &serve_args);
    let whoami = unique("remote-whoami");
    let mut whoami_args = vec![
        "--whoami",
        "--security",
        "allow owner=full; allow network=rw",
    ];
    whoami_args.extend(&trust);
    let _whoami = Server::start(&whoami, &whoami_args);

    let remote = |name: &str| format!(r"\\127.0.0.1\pipe\{name}");
    let call = |name: &str, env: &[(&str, String)]| {
        let target = remote(name);
        let mut cmd = npipe();
        cmd.args(["call", target.as_str(), "hi"]);
        for (k, v) in env {
            cmd.env(k, v);
        }
        run_cmd(cmd, &["call", &target, "hi"], b"")
    };
    let alice = [
        ("NPIPE_CERT", file("alice.crt")),
        ("NPIPE_KEY", file("alice.key")),
        ("NPIPE_CA", file("ca.crt")),
        ("NPIPE_GATEWAY_PORT", gateway.port().to_string()),
    ];
    let hi = call(&echo, &alice);
    hi.assert_success();
    assert_eq!(hi.stdout, "hi\n");
    // A call's request rides with its HELLO: relayed. A client that opens
    // the pipe is handed over to the server after its OK.
    assert!(gateway.said("relayed").contains(&echo), "the call's line");
    let target = remote(&echo);
    let mut client = npipe();
    client.args(["client", target.as_str()]);
    for (k, v) in &alice {
        client.env(k, v);
    }
    let talked = run_cmd(client, &["client", &target], b"over\n");
    talked.assert_success();
    assert!(talked.stdout.contains("over"), "{}", talked.stdout);
    assert!(gateway.said("handed over").contains(&echo));
    let _squat = Server::start(&squat, &serve_args);
    let squatted = call(&squat, &alice);
    assert!(!squatted.status.success());
    assert!(
        squatted.stderr.contains("not by uid 65534") || squatted.stderr.contains("not by nobody"),
        "{}",
        squatted.stderr
    );
    // A byte pipe through the gateway: the call falls back to write,
    // half-close, read (the pipe's type comes with the connection).
    let bytes = unique("remote-bytes");
    let mut bytes_args = vec!["--type", "byte", "--security", "allow everyone=full"];
    bytes_args.extend(&trust);
    let _bytes = Server::start(&bytes, &bytes_args);
    let streamed = call(&bytes, &alice);
    streamed.assert_success();
    assert_eq!(streamed.stdout, "hi\n");
    let who = call(&whoami, &alice);
    who.assert_success();
    assert!(
        who.stdout.starts_with("remote=alice computer=127.0.0.1 "),
        "{}",
        who.stdout
    );

    // The same through flags instead of the environment.
    let target = remote(&echo);
    let flags = [
        "call",
        target.as_str(),
        "flags",
        "--cert",
        &file("alice.crt"),
        "--key",
        &file("alice.key"),
        "--ca",
        &file("ca.crt"),
        "--gateway-port",
        gateway.port(),
    ]
    .map(str::to_string);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let by_flags = run(&flags, b"");
    by_flags.assert_success();
    assert_eq!(by_flags.stdout, "flags\n");

    // No certificate: told what is missing, before anything is dialled.
    let none = call(&echo, &[("NPIPE_GATEWAY_PORT", gateway.port().to_string())]);
    assert!(!none.status.success());
    assert!(none.stderr.contains("NPIPE_CERT"), "{}", none.stderr);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_gateway_refuses_files_others_could_change_or_read() {
    use std::os::unix::fs::PermissionsExt;
    let dir = gateway_certs("gw-trust");
    let file = |f: &str| dir.join(f).to_str().unwrap().to_string();
    let chmod = |f: &str, mode: u32| {
        std::fs::set_permissions(dir.join(f), std::fs::Permissions::from_mode(mode)).unwrap()
    };
    let root = npipe::LocalUser::current() == npipe::LocalUser::ROOT;
    let gateway = |extra: &[&str]| {
        let (crt, key, ca) = (file("gw.crt"), file("gw.key"), file("ca.crt"));
        let mut args = vec!["gateway", "--listen", "127.0.0.1:0"];
        args.extend(["--cert", &crt, "--key", &key, "--ca", &ca]);
        if !root {
            args.push("--non-root");
        }
        args.extend(extra);
        run(&args, b"")
    };

    // A key others may read: anyone could pose as the gateway.
    chmod("gw.key", 0o644);
    let refused = gateway(&[]);
    assert!(!refused.status.success());
    assert!(refused.stderr.contains("chmod 600"), "{}", refused.stderr);
    chmod("gw.key", 0o600);

    // A CA others may change: anyone could issue themselves a principal.
    chmod("ca.crt", 0o666);
    let refused = gateway(&[]);
    assert!(!refused.status.success());
    assert!(
        refused.stderr.contains("the CA certificate"),
        "{}",
        refused.stderr
    );
    chmod("ca.crt", 0o644);

    // A configuration others may change: anyone could map themselves.
    let config = dir.join("gw.toml");
    std::fs::write(&config, "[principals.alice]\nuser = 'nobody'\n").unwrap();
    chmod("gw.toml", 0o666);
    let refused = gateway(&["--config", config.to_str().unwrap()]);
    assert!(!refused.status.success());
    assert!(
        refused.stderr.contains("configuration"),
        "{}",
        refused.stderr
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_gateway_will_not_run_as_a_user_servers_do_not_trust() {
    if let Some(why) = shared_copy::cannot_run_as(65534) {
        crate::shared_copy::skipped(&format!(
            "the gateway's user check runs it as uid 65534, and {why}"
        ));
        return;
    }
    let refused = run_as_nobody(&["gateway", "--cert", "x", "--key", "y", "--ca", "z"]);
    refused.assert_code(EXIT_USAGE);
    assert!(
        refused.stderr.contains("--trust-gateway"),
        "{}",
        refused.stderr
    );
}
