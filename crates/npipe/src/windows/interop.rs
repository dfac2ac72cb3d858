//! Interop with C++ programs on Windows' named pipes: `interop/pipe_server.cpp`
//! (the article's `PipeServer.exe`: a `CNamedPipeHandle` class, overlapped
//! I/O with an event) against npipe's Windows backend, both ways, in message
//! and byte mode. `tools/windows-tests` builds the program with MinGW-w64 and
//! names it in `NPIPE_INTEROP_EXE`; without it these tests say so loudly.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::*;
use crate::*;

const WORDS: [&str; 3] = [
    "hello",
    "a message longer than the C++ side's 7-byte reads",
    "x",
];

fn program() -> Option<String> {
    let exe = std::env::var("NPIPE_INTEROP_EXE").ok();
    if exe.is_none() {
        crate::skipped::skipped(
            "NPIPE_INTEROP_EXE names no PipeServer.exe \
             (tools/windows-tests builds it); the C++ interop was not tested",
        );
    }
    exe
}

fn unique(test: &str) -> String {
    format!("npipe-interop-{test}-{}", std::process::id())
}

fn spawn(exe: &str, args: &[&str]) -> Child {
    Command::new(exe)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start PipeServer.exe")
}

fn exited_well(mut child: Child) -> String {
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "PipeServer.exe: {status}; it printed {out:?}"
    );
    out
}

/// npipe's client against the C++ server.
fn client_against_cpp_server(message: bool) {
    let Some(exe) = program() else { return };
    let name = unique(if message {
        "cpp-server-msg"
    } else {
        "cpp-server-byte"
    });
    let mut args = vec!["/name", name.as_str(), "/count", "1"];
    if !message {
        args.push("/byte");
    }
    let mut server = spawn(&exe, &args);
    let mut ready = String::new();
    BufReader::new(server.stdout.as_mut().unwrap())
        .read_line(&mut ready)
        .unwrap();
    assert_eq!(ready.trim(), "ready");
    let mut c = ClientOptions::new()
        .wait(Wait::Timeout(Duration::from_secs(20)))
        .open(&name)
        .unwrap();
    for w in WORDS {
        if message {
            assert_eq!(c.transact(w.as_bytes()).unwrap(), w.as_bytes());
        } else {
            c.write_all(w.as_bytes()).unwrap();
            let mut echo = vec![0u8; w.len()];
            c.read_exact(&mut echo).unwrap();
            assert_eq!(echo, w.as_bytes());
        }
    }
    drop(c);
    exited_well(server);
}

/// The C++ client against npipe's server.
fn cpp_client_against_server(message: bool) {
    let Some(exe) = program() else { return };
    let name = unique(if message {
        "cpp-client-msg"
    } else {
        "cpp-client-byte"
    });
    let mut opts = ServerOptions::new();
    if !message {
        opts.pipe_type(PipeType::Byte);
    }
    let listener = opts.create(&name).unwrap();
    let mut args = vec!["/client", "/name", name.as_str()];
    if !message {
        args.push("/byte");
    }
    args.extend(WORDS);
    let client = spawn(&exe, &args);
    let mut s = listener.accept().unwrap();
    let mut buf = [0u8; 4096];
    loop {
        let n = match s.read_message(&mut buf) {
            Ok(r) => r.len(),
            Err(e) if e.code() == ErrorCode::BrokenPipe => break,
            Err(e) => panic!("{e}"),
        };
        if n == 0 && !message {
            break;
        }
        s.write_message(&buf[..n]).unwrap();
    }
    let out = exited_well(client);
    assert_eq!(out.lines().collect::<Vec<_>>(), WORDS, "{out:?}");
}

#[test]
fn npipe_client_and_cpp_server_in_message_mode() {
    client_against_cpp_server(true);
}

#[test]
fn npipe_client_and_cpp_server_in_byte_mode() {
    client_against_cpp_server(false);
}

#[test]
fn cpp_client_and_npipe_server_in_message_mode() {
    cpp_client_against_server(true);
}

#[test]
fn cpp_client_and_npipe_server_in_byte_mode() {
    cpp_client_against_server(false);
}
