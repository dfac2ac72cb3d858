//! Who is on the other end, from the kernel.

use std::time::Duration;

use npipe::unix::ClientPipeExt;
use npipe::ClientOptions;

use crate::common::{
    is_root, on_both_servers, server, server_on, spawn, spawn_in_new_login, unique, Front,
};

on_both_servers!(the_client_process_is_captured_at_connect_not_looked_up_later);
on_both_servers!(a_client_first_asked_about_after_it_left_is_not_looked_up_by_pid);

/// A pid is a hint, never proof: the server asks about its client (at
/// accept, as servers do while the client waits), then the client process
/// hands its connection to a child and exits. The server still reports the
/// session it read (looking the pid up again found nothing, or could find
/// a new process with that pid), and says the process that connected is
/// gone.
fn the_client_process_is_captured_at_connect_not_looked_up_later(front: Front) {
    let name = unique("pidhint");
    let mut srv = server_on(front, &name, &["mode=peer_later"]);
    let mut client = spawn("connect_and_leave", &[&name]);
    let conn = srv.expect("conn");
    client.tell("go");
    let left = client.expect("left");
    let mut words = left.split(' ');
    let session: u32 = words.nth(1).unwrap().parse().unwrap();
    let keeper: i32 = words.nth(1).unwrap().parse().unwrap();
    client.wait_exit();
    // Still there while its process was: the session from `conn`.
    assert!(
        conn.ends_with(&format!(" {session}")),
        "{conn} vs {session}"
    );
    srv.tell("go");
    let later = srv.expect("later");
    let _ = rustix::process::kill_process(
        rustix::process::Pid::from_raw(keeper).unwrap(),
        rustix::process::Signal::KILL,
    );
    assert_eq!(later, format!("session {session} running false"));
}

/// The server captures its client when first asked (where the kernel has
/// `SO_PEERPIDFD`, from the process the socket recorded at connect): asked
/// only after the client process has exited, it finds that process gone,
/// never whatever has its pid now.
fn a_client_first_asked_about_after_it_left_is_not_looked_up_by_pid(front: Front) {
    let name = unique("pidlate");
    let mut srv = server_on(front, &name, &["mode=peer_unasked"]);
    let mut client = spawn("connect_and_leave", &[&name]);
    srv.expect("conn");
    client.tell("go");
    let left = client.expect("left");
    let keeper: i32 = left.split(' ').nth(3).unwrap().parse().unwrap();
    client.wait_exit();
    srv.tell("go");
    let later = srv.expect("later");
    let _ = rustix::process::kill_process(
        rustix::process::Pid::from_raw(keeper).unwrap(),
        rustix::process::Signal::KILL,
    );
    assert_eq!(later, "session none running false");
}

#[test]
fn the_server_sees_the_client_process_and_user() {
    let name = unique("whoclient");
    let mut srv = server(&name, &["mode=hold"]);
    let _c = ClientOptions::new().open(&name).unwrap();
    let line = srv.expect("conn");
    let fields: Vec<u32> = line.split(' ').map(|f| f.parse().unwrap()).collect();
    let me = std::fs::metadata("/proc/self").unwrap();
    assert_eq!(fields[0], std::process::id(), "client pid");
    assert_eq!(
        fields[1],
        std::os::unix::fs::MetadataExt::uid(&me),
        "client uid"
    );
    // Session id: our logon session (the child server shares it).
    assert_eq!(fields[2], own_logon_session(), "client session id");
}

/// Our own logon session as npipe counts them: the audit login session,
/// and 0 for a process from no login (`/proc/self/sessionid` unset).
pub fn own_logon_session() -> u32 {
    let raw: u32 = std::fs::read_to_string("/proc/self/sessionid")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    if raw == u32::MAX {
        0
    } else {
        raw
    }
}

/// GetNamedPipeClientSessionId names the client's logon session: a client
/// that logged in anew (wrote its `loginuid`, as `pam_loginuid` does at a
/// login) is reported in its new session, not the server's.
#[test]
fn a_client_from_another_login_is_in_that_logon_session() {
    if !is_root() {
        crate::shared_copy::skipped("starting a login session needs root (CAP_AUDIT_CONTROL)");
        return;
    }
    let name = unique("logon");
    let mut srv = server(&name, &["mode=hold"]);
    let mut client = spawn_in_new_login("login_open", &[&name]);
    let said = client.expect("session");
    if said == own_logon_session().to_string() {
        crate::shared_copy::skipped(&format!(
            "this system will not start an audit session (still {said})"
        ));
        return;
    }
    let line = srv.expect("conn");
    assert_eq!(line.split(' ').nth(2), Some(said.as_str()), "{line}");
}

/// A client in a pid namespace `/proc` was not mounted for (as in some
/// sandboxes and containers) is still placed in its logon session: npipe
/// finds its `/proc` entry through its pidfd, not by a pid that `/proc`
/// numbers differently.
#[test]
fn a_client_in_another_pid_namespace_keeps_its_logon_session() {
    if !is_root() {
        crate::shared_copy::skipped("a new pid namespace needs root");
        return;
    }
    let name = unique("sessionzero");
    // A login session of its own first (the kernel allows that only
    // outside a new pid namespace), so that a lookup that went to the wrong
    // /proc entry could not give the right answer by chance.
    let out = std::process::Command::new("sh")
        .args([
            "-c",
            "echo 0 > /proc/self/loginuid 2>/dev/null; exec unshare --pid --fork -- \"$0\" \"$@\"",
        ])
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", "roles::child_entry", "--ignored", "--nocapture"])
        .env("NPIPE_TEST_ROLE", "session_probe")
        .env("NPIPE_TEST_ARGS", &name)
        .output();
    let out = match out {
        Ok(out) => out,
        Err(e) => {
            crate::shared_copy::skipped(&format!("cannot run unshare(1): {e}"));
            return;
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() && stderr.starts_with("unshare:") {
        // A sandbox that forbids new namespaces even to root.
        crate::shared_copy::skipped(&format!(
            "unshare(1) cannot make a pid namespace here: {stderr}"
        ));
        return;
    }
    let line = stdout
        .lines()
        .find_map(|l| l.find("@@").map(|at| &l[at + 2..]))
        .unwrap_or_else(|| panic!("no report from the probe: {stdout}\n{stderr}"));
    // Pid 1: the probe is the first process of its namespace; the session
    // the server end found for it is the one it reads for itself.
    let (session, own) = line
        .strip_prefix("session ")
        .and_then(|l| l.split_once(" pid 1 own "))
        .unwrap_or_else(|| panic!("{line}"));
    assert_eq!(session, own, "{line}");
    if own == "0" {
        crate::shared_copy::skipped(
            "(in part) no audit session could be started here, so the probe's \
             session 0 cannot tell its own /proc entry from another's",
        );
    }
}

#[test]
fn the_client_sees_the_server_process_and_user() {
    let name = unique("whoserver");
    let srv = server(&name, &[]);
    let c = ClientOptions::new().open(&name).unwrap();
    assert_eq!(c.server_process_id(), srv.pid());
    let me = std::fs::metadata("/proc/self").unwrap();
    assert_eq!(c.server_uid(), std::os::unix::fs::MetadataExt::uid(&me));
    assert_eq!(c.server_credentials().pid, srv.pid());
    // And a client in another process sees the same server.
    let mut child = spawn("open", &[&name]);
    assert_eq!(child.expect("ok"), srv.pid().to_string());
    assert_eq!(child.expect("reply"), "from child");
}

#[test]
fn listings_show_the_server_pid_and_shape() {
    let name = unique("listed");
    let srv = server(&name, &["instances=3", "type=byte", "direction=in"]);
    let p = npipe::query_pipe(name.as_str()).unwrap();
    assert_eq!(p.server.pid, srv.pid());
    assert_eq!(p.pipe_type, npipe::PipeType::Byte);
    assert_eq!(p.direction, npipe::Direction::Inbound);
    assert_eq!(p.max_instances, Some(3));
    assert_eq!(p.cur_instances, 0);
    assert_eq!(p.default_timeout, Duration::from_millis(50));
    let all = npipe::list_pipes().unwrap();
    assert!(all.iter().any(
        |e| matches!(e, npipe::PipeEntry::Served(s) if s.name == name && s.server.pid == srv.pid())
    ));
}
