//! The `npipe` tool on Windows, end to end: every command runs as a real
//! Windows process on the kernel's named pipes (under Wine in CI:
//! `tools/windows-tests`). What Wine cannot do (list the pipe file system)
//! is said loudly where it is met, never passed over.
//!
//! Each test uses its own pipe name and kills the servers it started when
//! it ends, pass or fail. Deadlines only stop hangs.

#![cfg(windows)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

// Says loudly that a check did not run here, into the log `.ci/run` prints
// (`tools/windows-tests` gives the Windows processes its Windows path).
#[path = "../../npipe/src/skipped.rs"]
mod skipped_log;
use skipped_log::skipped;

/// How long a server may take to say it serves.
const STARTUP: Duration = Duration::from_secs(30);

const EXIT_NOT_FOUND: i32 = 3;
const EXIT_TIMEOUT: i32 = 6;

fn npipe() -> Command {
    Command::new(env!("CARGO_BIN_EXE_npipe"))
}

fn unique(what: &str) -> String {
    format!("npipe-tool-{what}-{}", std::process::id())
}

/// A running `npipe serve`, killed when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `npipe serve NAME ARGS...` and waits for its "serving" line.
fn serve(name: &str, args: &[&str]) -> Server {
    let mut child = npipe()
        .arg("serve")
        .arg(name)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start npipe serve");
    let stderr = child.stderr.take().expect("piped");
    let server = Server(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { return };
            let serving = line.starts_with("serving ");
            if tx.send(line).is_err() || serving {
                return;
            }
        }
    });
    loop {
        match rx.recv_timeout(STARTUP) {
            Ok(line) if line.starts_with("serving ") => return server,
            Ok(_) => continue,
            Err(e) => panic!("npipe serve {name} did not say it serves: {e:?}"),
        }
    }
}

/// Runs `npipe ARGS...` with `input` on its standard input.
fn run(args: &[&str], input: &[u8]) -> Output {
    let mut child = npipe()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start npipe");
    let mut stdin = child.stdin.take().expect("piped");
    stdin.write_all(input).expect("write the input");
    drop(stdin);
    child.wait_with_output().expect("npipe ran")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).replace("\r\n", "\n")
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "npipe failed ({:?}): {}",
        out.status,
        text(&out.stderr)
    );
    text(&out.stdout)
}

#[test]
fn demo_runs_a_server_and_a_client_process() {
    let out = ok(&run(&["demo"], b""));
    assert!(out.contains("[demo] ok:"), "{out}");
    assert!(out.contains("GetNamedPipeClientProcessId"), "{out}");
}

#[test]
fn call_gets_the_reply_of_a_message_pipe() {
    let name = unique("call");
    let _server = serve(&name, &[]);
    assert_eq!(ok(&run(&["call", &name, "hi"], b"")), "hi\n");
    let full = format!(r"\\.\pipe\{name}");
    assert_eq!(ok(&run(&["call", &full, "again"], b"")), "again\n");
}

#[test]
fn call_and_client_work_on_a_byte_pipe() {
    let name = unique("bytes");
    let _server = serve(&name, &["--type", "byte"]);
    assert_eq!(ok(&run(&["call", &name, "hello"], b"")), "hello\n");
    let out = run(&["client", &name, "--quiet"], b"one\ntwo\n");
    assert_eq!(ok(&out), "one\ntwo\n");
}

#[test]
fn client_sends_each_line_as_a_message() {
    let name = unique("client");
    let _server = serve(&name, &[]);
    let out = run(&["client", &name], b"a\nbb\nccc\n");
    assert_eq!(ok(&out), "a\nbb\nccc\n");
    assert!(text(&out.stderr).contains("duplex message pipe"), "{out:?}");
}

/// `--whoami`: the server reads the client's process, user, groups and
/// impersonation level from the kernel and the client's token.
#[test]
fn whoami_names_the_calling_process_from_the_kernel() {
    let name = unique("whoami");
    let _server = serve(&name, &["--whoami", "--impersonate"]);
    let child = npipe()
        .args(["call", &name, "who"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let reply = ok(&child.wait_with_output().unwrap());
    assert!(reply.starts_with(&format!("pid={pid} ")), "{reply}");
    assert!(reply.contains(" uid=S-1-"), "{reply}");
    assert!(reply.contains(" groups=S-1-"), "{reply}");
    assert!(reply.contains(" level=impersonation"), "{reply}");
    assert!(reply.contains(" impersonating: euid=S-1-"), "{reply}");
}

#[test]
fn serve_exec_runs_a_command_per_client() {
    let name = unique("exec");
    let _server = serve(&name, &["--exec", "echo client %NPIPE_CLIENT_PID%"]);
    let child = npipe()
        .args(["call", &name, "x"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let reply = ok(&child.wait_with_output().unwrap());
    assert_eq!(reply.trim_end(), format!("client {pid}"));
}

/// `--exec --impersonate`: the command runs with the client's token
/// (`CreateProcessAsUser`), with only the environment the server gives it.
#[test]
fn serve_exec_as_the_client_runs_with_its_token() {
    let name = unique("exec-as");
    let _server = serve(
        &name,
        &[
            "--exec",
            "echo as %NPIPE_CLIENT_USER% [%TEMP%]",
            "--impersonate",
        ],
    );
    let reply = ok(&run(&["call", &name, "x"], b""));
    // The server's TEMP does not reach it (an unset variable is echoed as
    // written); the client's user name does, from its token.
    let me = std::env::var("USERNAME").expect("USERNAME");
    assert!(
        reply
            .trim_end()
            .eq_ignore_ascii_case(&format!("as {me} [%TEMP%]")),
        "{reply}"
    );
}

#[test]
fn wait_returns_for_a_free_instance_and_times_out_for_none() {
    let name = unique("wait");
    let _server = serve(&name, &[]);
    ok(&run(&["wait", &name], b""));
    let missing = run(&["wait", &unique("missing"), "--timeout", "200"], b"");
    assert_eq!(missing.status.code(), Some(EXIT_TIMEOUT), "{missing:?}");
}

#[test]
fn reply_timeout_ends_a_call_the_server_does_not_answer() {
    let name = unique("silent");
    // A command that says nothing for seconds.
    let _server = serve(&name, &["--exec", "ping -n 10 127.0.0.1 >NUL"]);
    let out = run(&["call", &name, "x", "--reply-timeout", "300"], b"");
    assert_eq!(out.status.code(), Some(EXIT_TIMEOUT), "{out:?}");
    assert!(
        text(&out.stderr).contains("read timeout (300 ms)"),
        "{out:?}"
    );
}

#[test]
fn call_of_a_missing_pipe_says_not_found() {
    let out = run(&["call", &unique("nobody"), "x"], b"");
    assert_eq!(out.status.code(), Some(EXIT_NOT_FOUND), "{out:?}");
    assert!(
        text(&out.stderr).contains("ERROR_FILE_NOT_FOUND"),
        "{out:?}"
    );
}

/// `npipe list` and `npipe info`: the listing of `\\.\pipe\`. Wine cannot
/// list the pipe file system; there both must say so, and the test says it
/// checked only that.
#[test]
fn list_and_info_show_the_pipe_or_say_why_not() {
    let name = unique("listed");
    let _server = serve(&name, &["--instances", "3"]);
    let list = run(&["list", "--json"], b"");
    if !list.status.success() && text(&list.stderr).contains("Wine cannot list") {
        let info = run(&["info", &name], b"");
        assert!(text(&info.stderr).contains("Wine cannot list"), "{info:?}");
        skipped(
            "Wine cannot list the pipe file system; `npipe list` and \
             `npipe info` were checked for saying so, the listing itself on Windows only",
        );
        return;
    }
    let listed = ok(&list);
    assert!(listed.contains(&format!("\"name\":\"{name}\"")), "{listed}");
    let info = ok(&run(&["info", &name], b""));
    assert!(info.contains(&name), "{info}");
    assert!(info.contains("cur_instances:"), "{info}");
}

/// Piped input far larger than the pipe's buffers, to an echo server that
/// answers as it reads: the client reads while it writes, so neither side
/// waits for the other for ever.
#[test]
fn client_streams_more_than_the_pipe_holds_without_deadlock() {
    let name = unique("stream");
    let _server = serve(&name, &[]);
    let line = "x".repeat(99);
    let input: String = (0..3000).map(|i| format!("{i} {line}\n")).collect();
    let out = run(&["client", &name, "--quiet"], input.as_bytes());
    assert_eq!(ok(&out), input);
}

/// One-way pipes: the client opens with the access the direction allows,
/// writes to an inbound pipe and reads from an outbound one.
#[test]
fn client_talks_to_one_way_pipes() {
    let name = unique("inbound");
    let _server = serve(&name, &["--direction", "in"]);
    let out = run(&["client", &name], b"for the server\n");
    ok(&out);
    assert!(
        text(&out.stderr).contains("inbound message pipe"),
        "{out:?}"
    );

    let name = unique("outbound");
    let _server = serve(&name, &["--direction", "out", "--greeting", "hello reader"]);
    let out = run(&["client", &name], b"");
    assert_eq!(ok(&out), "hello reader\n");
    assert!(
        text(&out.stderr).contains("outbound message pipe"),
        "{out:?}"
    );
}

/// A server that never answers: at the end of input the client waits a
/// while for what it is owed (the server cannot see the input end), then
/// leaves instead of waiting for ever; `call` on a silent byte pipe gives
/// up at `--reply-timeout`.
#[test]
fn client_and_byte_call_give_up_on_a_silent_server() {
    let name = unique("mute");
    let _server = serve(&name, &["--exec", "ping -n 60 127.0.0.1 >NUL"]);
    ok(&run(&["client", &name, "--quiet"], b"anyone?\n"));

    let name = unique("mute-bytes");
    let _server = serve(
        &name,
        &["--type", "byte", "--exec", "ping -n 60 127.0.0.1 >NUL"],
    );
    let out = run(&["call", &name, "x", "--reply-timeout", "300"], b"");
    assert_eq!(out.status.code(), Some(EXIT_TIMEOUT), "{out:?}");
}

/// `--pid-file`: the server's pid while it serves.
#[test]
fn serve_writes_its_pid_file() {
    let name = unique("pidfile");
    let path = std::env::temp_dir().join(format!("{name}.pid"));
    let server = serve(&name, &["--pid-file", path.to_str().unwrap()]);
    let written = std::fs::read_to_string(&path).unwrap();
    assert_eq!(written.trim(), server.0.id().to_string());
    drop(server);
    let _ = std::fs::remove_file(&path);
}
