//! What child processes do. The parent starts this binary with
//! `--exact roles::child_entry --ignored` and `NPIPE_TEST_ROLE` set; the
//! child reports with `@@` lines on stdout.

use std::io::{BufRead, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use npipe::unix::ServerPipeExt;
use npipe::{ClientOptions, Direction, PipeServer, PipeType, ServerOptions};

#[test]
#[ignore = "entry point for the child processes of the cross-process tests, not a test"]
fn child_entry() {
    let role = std::env::var("NPIPE_TEST_ROLE").expect("run by the parent tests only");
    let args: Vec<String> = std::env::var("NPIPE_TEST_ARGS")
        .unwrap_or_default()
        .split('\u{1f}')
        .map(str::to_string)
        .collect();
    match role.as_str() {
        "serve" => serve(&args),
        #[cfg(feature = "tokio")]
        "serve_async" => serve_async(&args),
        "create" => create(&args),
        "open" => open(&args),
        "wait_open" => wait_open(&args),
        "open_at_fd_limit" => open_at_fd_limit(&args),
        "open_as" => open_as(&args),
        "vandal" => vandal(&args),
        "big_writer" => big_writer(&args),
        "drop_listener" => drop_listener(&args),
        "session_probe" => session_probe(&args),
        "raw" => raw(&args),
        "claim_remote" => claim_remote(&args),
        "creds_probe" => creds_probe(),
        "lock_all" => lock_all(),
        "connect_and_leave" => connect_and_leave(&args),
        "login_open" => login_open(&args),
        "hog" => hog(&args),
        "hog_waiting" => hog_waiting(&args),
        "stall_writers" => stall_writers(&args),
        other => panic!("unknown role {other}"),
    }
    std::process::exit(0);
}

fn say(line: impl AsRef<str>) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "@@{}", line.as_ref()).unwrap();
    out.flush().unwrap();
}

fn code(e: &npipe::Error) -> u32 {
    e.win32_code()
}

fn opt<'a>(args: &'a [String], key: &str) -> Option<&'a str> {
    args.iter()
        .find_map(|a| a.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

fn server_options(args: &[String]) -> ServerOptions {
    let mut o = ServerOptions::new();
    if let Some(t) = opt(args, "type") {
        o.pipe_type(if t == "byte" {
            PipeType::Byte
        } else {
            PipeType::Message
        });
    }
    if let Some(n) = opt(args, "instances") {
        o.max_instances(n.parse().unwrap());
    }
    if let Some(d) = opt(args, "direction") {
        o.direction(match d {
            "in" => Direction::Inbound,
            "out" => Direction::Outbound,
            _ => Direction::Duplex,
        });
    }
    if opt(args, "first").is_some() {
        o.first_instance(true);
    }
    if let Some(n) = opt(args, "budget") {
        o.memory_budget(n.parse().unwrap());
    }
    if let Some(n) = opt(args, "max_message") {
        o.max_message_size(n.parse().unwrap());
    }
    if opt(args, "shm") == Some("off") {
        o.shared_memory(false);
    }
    if let Some(ms) = opt(args, "default_timeout_ms") {
        o.default_timeout(Duration::from_millis(ms.parse().unwrap()));
    }
    if let Some(n) = opt(args, "nofile") {
        let n: u64 = n.parse().unwrap();
        let limit = rustix::process::Rlimit {
            current: Some(n),
            maximum: Some(n),
        };
        rustix::process::setrlimit(rustix::process::Resource::Nofile, limit).unwrap();
    }
    if let Some(sd) = opt(args, "sd") {
        o.security(sd.parse().unwrap());
    }
    if let Some(ms) = opt(args, "handshake_ms") {
        o.handshake_timeout(Duration::from_millis(ms.parse().unwrap()));
    }
    o
}

/// `serve NAME [key=value...]`: a server whose per-connection behaviour is
/// `mode=` echo (default), hold, disconnect, go, inbound, outbound.
fn serve(args: &[String]) {
    let name = &args[0];
    let listener = match server_options(args).create(name.as_str()) {
        Ok(l) => l,
        Err(e) => {
            say(format!("err {} {}", code(&e), e));
            return;
        }
    };
    let mode = opt(args, "mode").unwrap_or("echo").to_string();
    say(format!("ready {}", std::process::id()));
    listen_to_parent();
    while !STOP.load(Ordering::SeqCst) {
        let conn = match listener.accept_timeout(Duration::from_millis(20)) {
            Ok(Some(c)) => c,
            Ok(None) => continue,
            Err(e) => {
                say(format!("accept_err {}", code(&e)));
                return;
            }
        };
        say(conn_line(
            &mode,
            args,
            conn.client_process_id(),
            conn.client_uid(),
            || conn.client_session_id(),
        ));
        let mode = mode.clone();
        std::thread::spawn(move || handle(conn, &mode));
    }
}

static STOP: AtomicBool = AtomicBool::new(false);

/// The parent closes our stdin to stop us politely (a server then drops its
/// listener, which removes its socket); `go` lines are passed on to
/// `mode=go` connections.
fn listen_to_parent() {
    std::thread::spawn(|| {
        for line in std::io::stdin().lock().lines() {
            match line {
                Ok(l) if l == "go" => GO.1.notify_all_after(|| *GO.0.lock().unwrap() = true),
                _ => break,
            }
        }
        STOP.store(true, Ordering::SeqCst);
    });
}
static GO: (Mutex<bool>, Condvar) = (Mutex::new(false), Condvar::new());

trait NotifyAfter {
    fn notify_all_after(&self, f: impl FnOnce());
}

impl NotifyAfter for Condvar {
    fn notify_all_after(&self, f: impl FnOnce()) {
        f();
        self.notify_all();
    }
}

fn wait_for_go() {
    let mut go = GO.0.lock().unwrap();
    while !*go {
        go = GO.1.wait(go).unwrap();
    }
}

/// What the `speak` mode writes: 1.5 MB, more than a shared-memory ring.
pub fn spoken() -> Vec<u8> {
    (0..1_500_000u32).map(|i| (i % 241) as u8).collect()
}

fn handle(mut conn: PipeServer, mode: &str) {
    let message = conn.info().pipe_type == PipeType::Message;
    match mode {
        "echo" if message => loop {
            match conn.recv_message() {
                Ok(m) => {
                    if let Err(e) = conn.write_message(&m) {
                        say(format!("end {}", code(&e)));
                        return;
                    }
                }
                Err(e) => {
                    say(format!("end {}", code(&e)));
                    return;
                }
            }
        },
        "echo" => {
            let mut buf = [0u8; 8192];
            loop {
                match conn.read(&mut buf) {
                    Ok(0) => {
                        say("end eof");
                        return;
                    }
                    Ok(n) => conn.write_all(&buf[..n]).unwrap(),
                    Err(e) => {
                        say(format!("end {e}"));
                        return;
                    }
                }
            }
        }
        // Writes a message larger than a ring, then says how it went.
        "speak" => match conn.write_message(&spoken()) {
            Ok(()) => say("spoke"),
            Err(e) => say(format!("speak_err {}", code(&e))),
        },
        "hold" => {
            let mut buf = [0u8; 64];
            while matches!(conn.read(&mut buf), Ok(n) if n > 0) {}
            say("closed");
        }
        "ids" => {
            say(format!(
                "ids {} {:?} {} {:?}",
                conn.server_process_id(),
                conn.server_session_id(),
                conn.client_process_id(),
                conn.client_session_id()
            ));
            let mut buf = [0u8; 64];
            while matches!(conn.read(&mut buf), Ok(n) if n > 0) {}
        }
        "digest" => loop {
            let reply = match conn.recv_message() {
                Ok(m) => digest(&m),
                Err(_) => return,
            };
            if conn.write_message(reply.as_bytes()).is_err() {
                return;
            }
        },
        "disconnect" => {
            let m = conn.recv_message().unwrap();
            say(format!("got {}", String::from_utf8_lossy(&m)));
            conn.disconnect().unwrap();
            say("disconnected");
            let e = conn.recv_message().unwrap_err();
            say(format!("after {}", code(&e)));
            let imp = conn.impersonate().map(drop).unwrap_err();
            let spawned = conn.spawn_as_client(&mut std::process::Command::new("true"));
            say(format!(
                "imp {} {}",
                code(&imp),
                code(&spawned.unwrap_err())
            ));
        }
        "go" => {
            wait_for_go();
            let mut total = 0usize;
            let mut buf = vec![0u8; 65536];
            loop {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => total += n,
                }
            }
            say(format!("read {total}"));
        }
        "inbound" => {
            let e = conn.write_message(b"nope").unwrap_err();
            say(format!("write_err {}", code(&e)));
            while let Ok(m) = conn.recv_message() {
                say(format!("msg {}", String::from_utf8_lossy(&m)));
            }
            say("closed");
        }
        "outbound" => {
            let mut buf = [0u8; 16];
            let e = conn.read_message(&mut buf).unwrap_err();
            say(format!("read_err {}", code(&e)));
            conn.write_message(b"hello from server").unwrap();
            conn.flush_buffers().unwrap();
            say("sent");
        }
        "impersonate" => impersonate(conn),
        "spawn_as_client" => {
            let cmd = creds_probe_command();
            report_probe(conn.spawn_as_client(&mut { cmd }));
        }
        "close_unread" => {
            wait_for_go();
            drop(conn);
            say("closed_unread");
        }
        "peer_later" | "peer_unasked" => {
            wait_for_go();
            say(peer_later(
                conn.client_session_id(),
                conn.client_process_still_running(),
            ));
        }
        "chunks" => chunks(conn),
        "verify" => verify(conn),
        other => panic!("unknown mode {other}"),
    }
}

/// Whether this thread can open `path` for reading.
fn can_open(path: &str) -> &'static str {
    match std::fs::File::open(path) {
        Ok(_) => "ok",
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => "denied",
        Err(_) => "error",
    }
}

/// This thread's effective uid, from the kernel's per-thread view.
fn thread_euid() -> u32 {
    let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
    let uids = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    uids.split_whitespace().nth(2).unwrap().parse().unwrap()
}

/// Impersonates the client around a file open, while another thread of the
/// same process opens the same file; reports what each could do.
fn impersonate(conn: PipeServer) {
    let path = std::env::var("NPIPE_TEST_SECRET").unwrap_or_else(|_| "/etc/shadow".into());
    let _ = conn.client_uid();
    let before = can_open(&path);
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let other_path = path.clone();
    let other = std::thread::spawn(move || {
        if go_rx.recv().is_err() {
            return; // no impersonation happened
        }
        done_tx
            .send((can_open(&other_path), thread_euid()))
            .unwrap();
    });
    say(format!(
        "ident uid={} user={} level={:?}",
        conn.client_uid(),
        conn.impersonation_user_name().unwrap_or_default(),
        conn.client_impersonation_level()
    ));
    match conn.impersonate() {
        Ok(guard) => {
            let during = can_open(&path);
            let euid = thread_euid();
            go_tx.send(()).unwrap();
            let (other_during, other_euid) = done_rx.recv().unwrap();
            drop(guard);
            let after = can_open(&path);
            say(format!(
                "imp before={before} during={during} euid={euid} other={other_during} \
                 other_euid={other_euid} after={after} after_euid={}",
                thread_euid()
            ));
            // The closure form reverts too.
            let inside = conn.run_as_client(thread_euid).unwrap();
            say(format!("closure inside={inside} after={}", thread_euid()));
        }
        Err(e) => {
            drop(go_tx);
            say(format!("imp_err {}", code(&e)));
        }
    }
    let _ = other.join();
}

/// `create NAME [first=1]`: create a server, report, and keep it until
/// stdin closes.
fn create(args: &[String]) {
    match server_options(args).create(args[0].as_str()) {
        Ok(_l) => {
            say(format!("ok {}", npipe::namespace_directory().display()));
            let mut sink = String::new();
            let _ = std::io::stdin().read_to_string(&mut sink);
        }
        Err(e) => say(format!("err {} {}", code(&e), e)),
    }
}

/// `open NAME`: connect as a client and report the server's pid.
fn open(args: &[String]) {
    match ClientOptions::new().open(args[0].as_str()) {
        Ok(mut c) => {
            say(format!("ok {}", c.server_process_id()));
            if c.info().pipe_type == PipeType::Message {
                let reply = c.transact(b"from child").unwrap();
                say(format!("reply {}", String::from_utf8_lossy(&reply)));
            }
        }
        Err(e) => say(format!("err {} {}", code(&e), e)),
    }
}

/// `session_probe NAME`: serve and open one pipe inside this process and
/// report the client's session id as the server sees it. The parent runs us
/// in a new pid namespace, where our session leader is out of view.
fn session_probe(args: &[String]) {
    let listener = ServerOptions::new().create(args[0].as_str()).unwrap();
    let _client = ClientOptions::new().open(args[0].as_str()).unwrap();
    let conn = listener.accept().unwrap();
    let own = crate::peers::own_logon_session();
    match conn.client_session_id() {
        Some(sid) => say(format!(
            "session {} pid {} own {own}",
            sid,
            conn.client_process_id()
        )),
        None => say("no session"),
    }
}

/// `wait_open NAME`: connect, waiting for ever, and hold the pipe.
fn wait_open(args: &[String]) {
    let opened = ClientOptions::new()
        .wait(npipe::Wait::Forever)
        .open(args[0].as_str());
    match opened {
        Ok(c) => {
            say(format!("ok {}", c.server_process_id()));
            let mut sink = String::new();
            let _ = std::io::stdin().read_to_string(&mut sink);
        }
        Err(e) => say(format!("err {} {}", code(&e), e)),
    }
}

/// `open_at_fd_limit NAME`: opens the pipe once (the pipe directory is then
/// cached), then again offering shared memory with one descriptor number
/// left below the limit; reports `ok` and whether the rings were taken, or
/// the error.
fn open_at_fd_limit(args: &[String]) {
    let name = args[0].as_str();
    let offering = || ClientOptions::new().shared_memory(true).open(name);
    drop(offering().unwrap());
    let listed: Vec<u64> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .map(|e| e.unwrap().file_name().to_str().unwrap().parse().unwrap())
        .collect();
    // read_dir's own descriptor is listed, and closed again now.
    let used: std::collections::BTreeSet<u64> = listed
        .into_iter()
        .filter(|n| std::fs::read_link(format!("/proc/self/fd/{n}")).is_ok())
        .collect();
    let mut free = (0u64..).filter(|n| !used.contains(n));
    let _first_free = free.next();
    let limit = free.next().unwrap();
    let limit = rustix::process::Rlimit {
        current: Some(limit),
        ..rustix::process::getrlimit(rustix::process::Resource::Nofile)
    };
    rustix::process::setrlimit(rustix::process::Resource::Nofile, limit).unwrap();
    match offering() {
        Ok(c) => say(format!("ok {}", c.uses_shared_memory())),
        Err(e) => say(format!("err {} {}", code(&e), e)),
    }
}

/// `open_as NAME access=r|w|rw level=ident|imp [expect=UID]`: open the pipe
/// (the parent starts us as another user), report, and hold it until stdin
/// closes.
fn open_as(args: &[String]) {
    let mut o = ClientOptions::new();
    match opt(args, "access") {
        Some("r") => o.access(npipe::Access::Read),
        Some("w") => o.access(npipe::Access::Write),
        Some("rw") => o.access(npipe::Access::ReadWrite),
        _ => &mut o,
    };
    if opt(args, "level") == Some("ident") {
        o.impersonation_level(npipe::ImpersonationLevel::Identification);
    }
    if let Some(uid) = opt(args, "expect") {
        o.expect_server_user(uid.parse::<u32>().unwrap());
    }
    match o.open(args[0].as_str()) {
        Ok(c) => {
            say(format!("ok {}", c.server_process_id()));
            let mut sink = String::new();
            let _ = std::io::stdin().read_to_string(&mut sink);
        }
        Err(e) => say(format!("err {} {}", code(&e), e)),
    }
}

/// `raw NAME access=r|w|rw [pipelined] [query]`: a hand-written client (the parent
/// may start us as another user). Reports the REPLY; if connected, writes
/// frames until one fails (or 100 went), reports the last outcome, then
/// whether anything came back (`echo yes|no`).
fn raw(args: &[String]) {
    use crate::raw_client::{self as rc, RawClient};
    let access = match opt(args, "access") {
        Some("r") => rc::READ,
        Some("w") => rc::WRITE,
        _ => rc::READ_WRITE,
    };
    let pipelined = args.iter().any(|a| a == "pipelined");
    let kind = if args.iter().any(|a| a == "query") {
        rc::QUERY
    } else {
        rc::CONNECT
    };
    let mut c = RawClient::connect(&args[0]).unwrap();
    let flags = if pipelined { rc::PIPELINED } else { 0 };
    let mut hello = rc::hello(&args[0], kind, access, flags);
    if pipelined {
        hello.extend(rc::frame(b"pipelined request"));
    }
    c.send(&hello).unwrap();
    let reply = c.reply().unwrap();
    say(format!("reply {reply:?}"));
    if !matches!(reply, rc::Reply::Connected { .. }) {
        return;
    }
    let outcome = c.write_until_refused(b"written by a reader");
    say(format!("write {outcome}"));
    let echoed = c.read_some(Duration::from_millis(500)).is_some();
    say(format!("echo {}", if echoed { "yes" } else { "no" }));
}

/// `claim_remote NAME PRINCIPAL [UID]`: a local process that presents a remote
/// identity in its HELLO, as only a trusted gateway may. Reports the REPLY.
fn claim_remote(args: &[String]) {
    use crate::raw_client::{self as rc, RawClient};
    let maps_to = args.get(2).map_or(65534, |uid| uid.parse().unwrap());
    let mut c = RawClient::connect(&args[0]).unwrap();
    c.send(&rc::remote_hello(
        &args[0],
        &args[1],
        "10.9.8.7",
        Some(maps_to),
    ))
    .unwrap();
    say(format!("reply {:?}", c.reply().unwrap()));
}

/// `hog NAME COUNT`: opens COUNT connections to the pipe and says nothing on
/// any of them; see [`hold_connections`].
fn hog(args: &[String]) {
    hold_connections("held", args, Some);
}

/// Opens `args[1]` raw connections to the pipe `args[0]`, each prepared by
/// `prepare` (`None` drops it), says `label` and how many it holds, and
/// holds them until stdin closes.
fn hold_connections(
    label: &str,
    args: &[String],
    prepare: impl Fn(crate::raw_client::RawClient) -> Option<crate::raw_client::RawClient>,
) {
    let count: usize = args[1].parse().unwrap();
    let held: Vec<_> = (0..count)
        .filter_map(|_| prepare(crate::raw_client::RawClient::connect(&args[0]).ok()?))
        .collect();
    say(format!("{label} {}", held.len()));
    let mut sink = String::new();
    let _ = std::io::stdin().read_to_string(&mut sink);
    drop(held);
}

/// A command that runs this test binary (a copy any user may run) in the
/// `creds_probe` role.
fn creds_probe_command() -> std::process::Command {
    let mut cmd = std::process::Command::new(crate::common::shared_exe());
    cmd.args(crate::common::CHILD_ARGS)
        .env("NPIPE_TEST_ROLE", "creds_probe")
        .current_dir("/")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped());
    cmd
}

/// Passes on the probe's `@@` lines, or says why it could not start.
fn report_probe(child: npipe::Result<std::process::Child>) {
    match child {
        Ok(child) => {
            let out = child.wait_with_output().unwrap();
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                if let Some(at) = line.find("@@") {
                    say(&line[at + 2..]);
                }
            }
        }
        Err(e) => say(format!("spawn_err {} {e}", code(&e))),
    }
}

/// `creds_probe`: reports this process's ids, groups, capabilities and
/// `no_new_privs` as the kernel shows them, then tries to become root again.
fn creds_probe() {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    for key in [
        "Uid",
        "Gid",
        "Groups",
        "CapInh",
        "CapPrm",
        "CapEff",
        "CapAmb",
        "NoNewPrivs",
    ] {
        let line = status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key}:")))
            .unwrap_or("?");
        say(format!(
            "{key} {}",
            line.split_whitespace().collect::<Vec<_>>().join(" ")
        ));
    }
    let root = rustix::process::Uid::ROOT;
    let outcome = match rustix::thread::set_thread_res_uid(root, root, root) {
        Ok(()) => "became root".to_string(),
        Err(e) => format!("refused {e}"),
    };
    say(format!("setuid0 {outcome}"));
}

#[cfg(feature = "tokio")]
/// `mode=imp_pool`: runs a closure as the client that, if it can reach the
/// runtime, hands work to tokio's blocking pool (as `tokio::fs` would),
/// making the pool grow while the client's identity is on; then runs
/// unrelated blocking work and reports every effective uid it ran as.
async fn impersonation_and_the_pool(conn: &npipe::tokio::PipeServer) {
    let inside = conn
        .run_as_client(|| {
            let reached = match tokio::runtime::Handle::try_current() {
                Ok(h) => {
                    for _ in 0..4 {
                        h.spawn_blocking(|| std::thread::sleep(Duration::from_millis(50)));
                    }
                    "reached"
                }
                Err(_) => "unreachable",
            };
            (rustix::process::geteuid().as_raw(), reached)
        })
        .await
        .unwrap();
    say(format!("inside {} pool {}", inside.0, inside.1));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            tokio::task::spawn_blocking(|| {
                std::thread::sleep(Duration::from_millis(20));
                rustix::process::geteuid().as_raw()
            })
        })
        .collect();
    let mut uids = Vec::new();
    for t in tasks {
        uids.push(t.await.unwrap());
    }
    uids.sort_unstable();
    uids.dedup();
    say(format!("later {uids:?}"));
}

/// `mode=digest`'s answer to a message: its length and the sum of its bytes.
pub fn digest(m: &[u8]) -> String {
    let sum = m.iter().fold(0u64, |s, &b| s.wrapping_add(u64::from(b)));
    format!("{} {sum}", m.len())
}

/// The line a server says for each connection: `conn PID UID SESSION`,
/// where `mode=peer_unasked` (and a server short of descriptors) leaves the
/// session unasked (`-`).
fn conn_line(
    mode: &str,
    args: &[String],
    pid: u32,
    uid: u32,
    session: impl FnOnce() -> Option<u32>,
) -> String {
    // Asking the session takes two descriptors for a moment (the client's
    // pidfd, its /proc file): a server kept short of descriptors (`nofile=`)
    // must not race its own acceptor for them.
    if mode == "peer_unasked" || opt(args, "nofile").is_some() {
        return format!("conn {pid} {uid} -");
    }
    format!("conn {pid} {uid} {}", session().unwrap_or(0))
}

/// `mode=peer_later`'s report: what the server knows of a client process
/// after it may have gone.
fn peer_later(session: Option<u32>, running: Option<bool>) -> String {
    let session = session.map_or("none".to_string(), |s| s.to_string());
    let running = running.map_or("unknown".to_string(), |r| r.to_string());
    format!("later session {session} running {running}")
}

/// `connect_and_leave NAME`: connects (by hand), waits for a line on
/// stdin (the server has asked about us meanwhile), hands the connection
/// to a `sleep` child that keeps it open, reports our session and the
/// child's pid, and exits: the server's client process is then gone while
/// the connection lives on.
fn connect_and_leave(args: &[String]) {
    use crate::raw_client::{self as rc, RawClient};
    use std::os::fd::AsFd;
    let mut c = RawClient::connect(&args[0]).unwrap();
    c.send(&rc::hello(&args[0], rc::CONNECT, rc::READ_WRITE, 0))
        .unwrap();
    assert!(matches!(c.reply().unwrap(), rc::Reply::Connected { .. }));
    let mut go = String::new();
    std::io::stdin().read_line(&mut go).unwrap();
    rustix::io::fcntl_setfd(c.stream.as_fd(), rustix::io::FdFlags::empty()).unwrap();
    // Not waited for: it outlives us on purpose (the parent kills it).
    #[allow(clippy::zombie_processes)]
    let keeper = std::process::Command::new("sleep")
        .arg("60")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let session = crate::peers::own_logon_session();
    say(format!("left session {session} keeper {}", keeper.id()));
}

/// `login_open NAME`: reports its logon session (the parent starts it in a
/// login of its own), then opens the pipe and holds it until stdin closes.
fn login_open(args: &[String]) {
    say(format!("session {}", crate::peers::own_logon_session()));
    let _c = ClientOptions::new().open(args[0].as_str()).unwrap();
    let mut sink = String::new();
    let _ = std::io::stdin().read_to_string(&mut sink);
}

/// `lock_all`: takes an exclusive `flock` on the namespace directory and on
/// every entry in it that this user can open, reports how many, and holds
/// them until stdin closes (a hostile user blocking whatever it can).
fn lock_all() {
    use rustix::fs::{flock, open, FlockOperation, Mode, OFlags};
    let dir = npipe::namespace_directory();
    let mut held = Vec::new();
    let mut paths = vec![dir.clone()];
    if let Ok(entries) = std::fs::read_dir(&dir) {
        paths.extend(entries.flatten().map(|e| e.path()));
    }
    for path in paths {
        let Ok(fd) = open(
            &path,
            OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NONBLOCK,
            Mode::empty(),
        ) else {
            continue;
        };
        if flock(&fd, FlockOperation::NonBlockingLockExclusive).is_ok() {
            held.push(fd);
        }
    }
    say(format!("locked {}", held.len()));
    let mut sink = String::new();
    let _ = std::io::stdin().read_to_string(&mut sink);
}

/// `hog_waiting NAME COUNT`: opens COUNT connections that each ask to wait
/// for ever for an instance (read access); see [`hold_connections`].
fn hog_waiting(args: &[String]) {
    use crate::raw_client as rc;
    hold_connections("held", args, |mut c| {
        c.send(&rc::waiting_hello(&args[0], rc::READ)).ok()?;
        Some(c)
    });
}

/// `stall_writers NAME COUNT LEN`: opens COUNT connections, on each sends
/// the header of a LEN-byte message and 64 KiB of it, then stalls; see
/// [`hold_connections`].
fn stall_writers(args: &[String]) {
    use crate::raw_client as rc;
    let len: u32 = args[2].parse().unwrap();
    hold_connections("stalled", args, |mut c| {
        c.send(&rc::hello(&args[0], rc::CONNECT, rc::READ_WRITE, 0))
            .ok()?;
        matches!(c.reply().ok()?, rc::Reply::Connected { .. }).then_some(())?;
        c.send(&len.to_le_bytes()).ok()?;
        c.send(&vec![7u8; 64 * 1024]).ok()?;
        Some(c)
    });
}

/// `vandal DIR FILE`: as another user, try to remove, rename over and
/// redirect a pipe's socket file; report each outcome.
fn vandal(args: &[String]) {
    let dir = std::path::Path::new(&args[0]);
    let target = dir.join(&args[1]);
    let outcome = |r: std::io::Result<()>| match r {
        Ok(()) => "done".to_string(),
        Err(e) => format!("refused:{}", e.raw_os_error().unwrap_or(0)),
    };
    say(format!("unlink {}", outcome(std::fs::remove_file(&target))));
    let mine = dir.join(format!("vandal-{}", std::process::id()));
    std::fs::write(&mine, b"x").unwrap();
    say(format!(
        "rename {}",
        outcome(std::fs::rename(&mine, &target))
    ));
    let _ = std::fs::remove_file(&mine);
    // Plant a symlink and a file under names a victim may use next.
    let link = dir.join(format!("{}-next", args[1]));
    say(format!(
        "symlink {}",
        outcome(std::os::unix::fs::symlink("/tmp/elsewhere.sock", &link))
    ));
    let file = dir.join(format!("{}-file", args[1]));
    say(format!("file {}", outcome(std::fs::write(&file, b"squat"))));
}

/// `mode=chunks`: reads messages 64 KiB at a time, says `partial` the first
/// time a message arrives in part, acknowledges each whole message with its
/// length, and reports how the connection ended and how many messages were
/// whole.
fn chunks(mut conn: PipeServer) {
    let mut buf = vec![0u8; 64 * 1024];
    let (mut whole, mut len, mut told) = (0u64, 0usize, false);
    loop {
        match conn.read_message(&mut buf) {
            Ok(npipe::MessageRead::MoreData(n)) => {
                len += n;
                if !told {
                    say("partial");
                    told = true;
                    // Hold still until the parent has killed the writer, so
                    // the message cannot finish first.
                    wait_for_go();
                }
            }
            Ok(npipe::MessageRead::Complete(n)) => {
                len += n;
                whole += 1;
                if conn.write_message(format!("ok:{len}").as_bytes()).is_err() {
                    break;
                }
                len = 0;
            }
            Err(e) => {
                say(format!("end {} {whole}", code(&e)));
                return;
            }
        }
    }
    say(format!("end write {whole}"));
}

/// The message a flood sends as number `seq`: its sequence number, then
/// bytes derived from it, so the reader can check every one.
pub fn flood_message(seq: u64, len: usize) -> Vec<u8> {
    let mut m = seq.to_le_bytes().to_vec();
    m.extend(
        (0..len.saturating_sub(8)).map(|i| (seq as usize).wrapping_mul(31).wrapping_add(i) as u8),
    );
    m
}

/// `mode=verify`: reads messages slowly, checks each is the next in sequence
/// and intact, and reports the count (or the first bad one) at the end.
fn verify(mut conn: PipeServer) {
    let mut next = 0u64;
    loop {
        match conn.recv_message() {
            Ok(m) => {
                let seq = u64::from_le_bytes(m[..8].try_into().unwrap());
                if seq != next || m != flood_message(seq, m.len()) {
                    say(format!("bad {next} {seq}"));
                    return;
                }
                next += 1;
                if next.is_multiple_of(64) {
                    // A slow reader: the writer must wait, not the heap grow.
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            Err(e) => {
                say(format!("end {} {next}", code(&e)));
                return;
            }
        }
    }
}

/// `big_writer NAME BYTES`: connect, say `writing`, and write one message of
/// BYTES bytes (the parent kills us part way).
fn big_writer(args: &[String]) {
    let mut c = ClientOptions::new().open(args[0].as_str()).unwrap();
    let n: usize = args[1].parse().unwrap();
    say("writing");
    let _ = c.write_message(&vec![0x5a; n]);
    say("written");
    let mut sink = String::new();
    let _ = std::io::stdin().read_to_string(&mut sink);
}

#[cfg(feature = "tokio")]
/// `serve_async NAME [key=value...]`: `serve` on the tokio front end, with
/// the same options, modes and `@@` lines, for the tests that run each
/// behaviour against both front ends (`mixes`).
fn serve_async(args: &[String]) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let name = &args[0];
        let listener = match server_options(args).create_async(name.as_str()) {
            Ok(l) => l,
            Err(e) => {
                say(format!("err {} {}", code(&e), e));
                return;
            }
        };
        let mode = opt(args, "mode").unwrap_or("echo").to_string();
        say(format!("ready {}", std::process::id()));
        listen_to_parent();
        while !STOP.load(Ordering::SeqCst) {
            let accepted = tokio::time::timeout(Duration::from_millis(20), listener.accept()).await;
            let conn = match accepted {
                Ok(Ok(c)) => c,
                Err(_) => continue,
                Ok(Err(e)) => {
                    say(format!("accept_err {}", code(&e)));
                    return;
                }
            };
            say(conn_line(
                &mode,
                args,
                conn.client_process_id(),
                conn.client_uid(),
                || conn.client_session_id(),
            ));
            tokio::spawn(handle_async(conn, mode.clone()));
        }
    });
}

#[cfg(feature = "tokio")]
/// `handle`'s modes on a tokio server end.
async fn handle_async(mut conn: npipe::tokio::PipeServer, mode: String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let message = conn.info().pipe_type == PipeType::Message;
    match mode.as_str() {
        "echo" if message => loop {
            let sent = match conn.recv_message().await {
                Ok(m) => conn.write_message(&m).await,
                Err(e) => Err(e),
            };
            if let Err(e) = sent {
                say(format!("end {}", code(&e)));
                return;
            }
        },
        "echo" => {
            let mut buf = [0u8; 8192];
            loop {
                match conn.read(&mut buf).await {
                    Ok(0) => {
                        say("end eof");
                        return;
                    }
                    Ok(n) => conn.write_all(&buf[..n]).await.unwrap(),
                    Err(e) => {
                        say(format!("end {e}"));
                        return;
                    }
                }
            }
        }
        "speak" => match conn.write_message(&spoken()).await {
            Ok(()) => say("spoke"),
            Err(e) => say(format!("speak_err {}", code(&e))),
        },
        "hold" => {
            let mut buf = [0u8; 64];
            while matches!(conn.read(&mut buf).await, Ok(n) if n > 0) {}
            say("closed");
        }
        "ids" => {
            say(format!(
                "ids {} {:?} {} {:?}",
                conn.server_process_id(),
                conn.server_session_id(),
                conn.client_process_id(),
                conn.client_session_id()
            ));
            let mut buf = [0u8; 64];
            while matches!(conn.read(&mut buf).await, Ok(n) if n > 0) {}
        }
        "digest" => loop {
            let reply = match conn.recv_message().await {
                Ok(m) => digest(&m),
                Err(_) => return,
            };
            if conn.write_message(reply.as_bytes()).await.is_err() {
                return;
            }
        },
        "disconnect" => {
            let m = conn.recv_message().await.unwrap();
            say(format!("got {}", String::from_utf8_lossy(&m)));
            conn.disconnect().unwrap();
            say("disconnected");
            let e = conn.recv_message().await.unwrap_err();
            say(format!("after {}", code(&e)));
            let imp = conn.run_as_client(|| ()).await.unwrap_err();
            let spawned = conn.spawn_as_client(&mut std::process::Command::new("true"));
            say(format!(
                "imp {} {}",
                code(&imp),
                code(&spawned.unwrap_err())
            ));
        }
        "go" => {
            tokio::task::spawn_blocking(wait_for_go).await.unwrap();
            let mut total = 0usize;
            let mut buf = vec![0u8; 65536];
            loop {
                match conn.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => total += n,
                }
            }
            say(format!("read {total}"));
        }
        "inbound" => {
            let e = conn.write_message(b"nope").await.unwrap_err();
            say(format!("write_err {}", code(&e)));
            while let Ok(m) = conn.recv_message().await {
                say(format!("msg {}", String::from_utf8_lossy(&m)));
            }
            say("closed");
        }
        "outbound" => {
            let mut buf = [0u8; 16];
            let e = conn.read_message(&mut buf).await.unwrap_err();
            say(format!("read_err {}", code(&e)));
            conn.write_message(b"hello from server").await.unwrap();
            conn.flush_buffers().await.unwrap();
            say("sent");
        }
        "spawn_as_client" => {
            let cmd = creds_probe_command();
            report_probe(conn.spawn_as_client(&mut { cmd }));
        }
        "close_unread" => {
            tokio::task::spawn_blocking(wait_for_go).await.unwrap();
            drop(conn);
            say("closed_unread");
        }
        "peer_later" | "peer_unasked" => {
            tokio::task::spawn_blocking(wait_for_go).await.unwrap();
            say(peer_later(
                conn.client_session_id(),
                conn.client_process_still_running(),
            ));
        }
        "imp_pool" => impersonation_and_the_pool(&conn).await,
        "chunks" => {
            // As `chunks`: a message in 64 KiB parts, acknowledged whole.
            let mut buf = vec![0u8; 64 * 1024];
            let (mut whole, mut len, mut told) = (0u64, 0usize, false);
            loop {
                match conn.read_message(&mut buf).await {
                    Ok(npipe::MessageRead::MoreData(n)) => {
                        len += n;
                        if !told {
                            say("partial");
                            told = true;
                            // Hold still until the parent has killed the
                            // writer, so the message cannot finish first.
                            wait_for_go();
                        }
                    }
                    Ok(npipe::MessageRead::Complete(n)) => {
                        len += n;
                        whole += 1;
                        let ack = format!("ok:{len}");
                        if conn.write_message(ack.as_bytes()).await.is_err() {
                            break;
                        }
                        len = 0;
                    }
                    Err(e) => {
                        say(format!("end {} {whole}", code(&e)));
                        return;
                    }
                }
            }
            say(format!("end write {whole}"));
        }
        "verify" => {
            // As `verify`: a slow reader checking every message of a flood.
            let mut next = 0u64;
            loop {
                match conn.recv_message().await {
                    Ok(m) => {
                        let seq = u64::from_le_bytes(m[..8].try_into().unwrap());
                        if seq != next || m != flood_message(seq, m.len()) {
                            say(format!("bad {next} {seq}"));
                            return;
                        }
                        next += 1;
                        if next.is_multiple_of(64) {
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                    }
                    Err(e) => {
                        say(format!("end {} {next}", code(&e)));
                        return;
                    }
                }
            }
        }
        other => panic!("unknown mode {other}"),
    }
}

/// `drop_listener NAME sync|async`: accept one client and keep it; on `go`
/// drop the listener (with clients queued but never accepted), say
/// `dropped`, and keep the accepted one until stdin closes.
fn drop_listener(args: &[String]) {
    let mut lines = std::io::stdin().lock().lines();
    #[cfg(feature = "tokio")]
    if args.get(1).map(String::as_str) == Some("async") {
        drop(lines);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let name = args[0].clone();
        rt.block_on(async move {
            let listener = ServerOptions::new().create_async(name.as_str()).unwrap();
            say("ready");
            let kept = listener.accept().await.unwrap();
            say("accepted");
            // Wait for `go` off the runtime, which meanwhile keeps serving
            // handshakes (the second client is granted, never accepted).
            let read_line = || std::io::stdin().lock().lines().next();
            let _ = tokio::task::spawn_blocking(read_line).await;
            drop(listener);
            say("dropped");
            let _ = tokio::task::spawn_blocking(|| std::io::stdin().lock().lines().count()).await;
            drop(kept);
        });
        return;
    }
    let listener = ServerOptions::new().create(args[0].as_str()).unwrap();
    say("ready");
    let kept = listener.accept().unwrap();
    say("accepted");
    let _ = lines.next();
    drop(listener);
    say("dropped");
    let _ = lines.count();
    drop(kept);
}
