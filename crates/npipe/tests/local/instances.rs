//! Instances: the limit, busy at once, waiting (first come first served,
//! timeouts), first instance, and a server that dies.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use npipe::{ClientOptions, ErrorCode, ServerOptions, Wait};

use crate::common::{
    eventually, on_both_servers, server_on, spawn, still_serves, unique, waiting, Front, HANG,
};

// Each behaviour, against the blocking and the tokio server.
on_both_servers!(
    a_dropped_listener_closes_clients_it_never_accepted,
    busy_at_once_without_wait,
    waiters_are_served_first_come_first_served,
    wait_times_out_with_sem_timeout,
    a_waiter_gets_the_instance_when_it_frees,
    a_waiter_that_leaves_is_never_handed_to_the_server,
    first_instance_refuses_a_served_name,
    a_dead_servers_socket_is_reclaimed,
);

fn busy_at_once_without_wait(front: Front) {
    let name = unique("busy");
    let _srv = server_on(front, &name, &["instances=2", "mode=hold"]);
    let _a = ClientOptions::new().open(&name).unwrap();
    let _b = ClientOptions::new().open(&name).unwrap();
    let e = ClientOptions::new().open(&name).unwrap_err();
    assert_eq!(e.code(), ErrorCode::PipeBusy);
    assert_eq!(e.win32_code(), 231);
    let info = npipe::query_pipe(name.as_str()).unwrap();
    assert_eq!((info.cur_instances, info.max_instances), (2, Some(2)));
    // The query tells the descriptor too: the default one here.
    assert_eq!(
        info.security,
        npipe::SecurityDescriptor::default_for_pipes().to_string()
    );
}

fn waiters_are_served_first_come_first_served(front: Front) {
    let name = unique("fifo");
    let _srv = server_on(front, &name, &["instances=1"]);
    let holder = ClientOptions::new().open(&name).unwrap();
    let order = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for i in 0..4u32 {
            let (name, order) = (&name, &order);
            s.spawn(move || {
                let mut c = ClientOptions::new()
                    .wait(Wait::Forever)
                    .open(name.as_str())
                    .unwrap();
                order.lock().unwrap().push(i);
                // Prove the connection works, then free the instance.
                assert_eq!(c.transact(&i.to_le_bytes()).unwrap(), i.to_le_bytes());
            });
            // Queue them in a known order: wait until the server counts it.
            eventually("the waiter to queue", || {
                (waiting(name) == i + 1).then_some(())
            });
        }
        drop(holder);
    });
    assert_eq!(*order.lock().unwrap(), vec![0, 1, 2, 3]);
}

fn wait_times_out_with_sem_timeout(front: Front) {
    let name = unique("waittimeout");
    let _srv = server_on(front, &name, &["instances=1", "default_timeout_ms=100"]);
    let _holder = ClientOptions::new().open(&name).unwrap();
    let start = Instant::now();
    let e = ClientOptions::new()
        .wait(Wait::Timeout(Duration::from_millis(200)))
        .open(&name)
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::Timeout);
    assert_eq!(e.win32_code(), 121);
    assert!(
        start.elapsed() >= Duration::from_millis(200),
        "gave up before its wait"
    );
    // The server's default wait (NMPWAIT_USE_DEFAULT_WAIT).
    let start = Instant::now();
    let e = ClientOptions::new()
        .wait(Wait::ServerDefault)
        .open(&name)
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::Timeout);
    assert!(start.elapsed() >= Duration::from_millis(100));
    // Expired waiters are gone from the queue.
    assert_eq!(waiting(&name), 0);
}

fn a_waiter_gets_the_instance_when_it_frees(front: Front) {
    let name = unique("waitok");
    let _srv = server_on(front, &name, &["instances=1"]);
    let holder = ClientOptions::new().open(&name).unwrap();
    std::thread::scope(|s| {
        let w = s.spawn(|| {
            ClientOptions::new()
                .wait(Wait::Timeout(Duration::from_secs(10)))
                .open(&name)
                .map(|mut c| c.transact(b"late").unwrap())
        });
        eventually("the waiter to queue", || {
            (waiting(&name) == 1).then_some(())
        });
        drop(holder);
        assert_eq!(w.join().unwrap().unwrap(), b"late");
    });
}

fn a_waiter_that_leaves_is_never_handed_to_the_server(front: Front) {
    let name = unique("leaver");
    let mut srv = server_on(front, &name, &["instances=1", "mode=hold"]);
    let holder = ClientOptions::new().open(&name).unwrap();
    srv.expect("conn");
    let mut waiter = spawn("wait_open", &[&name]);
    eventually("the child to queue", || (waiting(&name) == 1).then_some(()));
    let waiter_pid = waiter.pid();
    waiter.kill();
    eventually("the server to drop the waiter", || {
        (waiting(&name) == 0).then_some(())
    });
    drop(holder);
    assert_eq!(srv.expect("closed"), "");
    // The next connection the server sees is ours, not the dead waiter's.
    let _c = ClientOptions::new()
        .wait(Wait::Timeout(HANG))
        .open(&name)
        .unwrap();
    let line = srv.expect("conn");
    let pid: u32 = line.split(' ').next().unwrap().parse().unwrap();
    assert_ne!(pid, waiter_pid);
    assert_eq!(pid, std::process::id());
}

fn first_instance_refuses_a_served_name(front: Front) {
    let name = unique("first");
    let _srv = server_on(front, &name, &[]);
    let e = ServerOptions::new()
        .first_instance(true)
        .create(name.as_str())
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::AccessDenied);
    // Without the flag: instances of one name belong to one process.
    let e = ServerOptions::new().create(name.as_str()).unwrap_err();
    assert_eq!(e.code(), ErrorCode::PipeBusy);
    assert!(e.to_string().contains("already being served"), "{e}");
    // The original server is untouched.
    still_serves(&name);
}

fn a_dead_servers_socket_is_reclaimed(front: Front) {
    let name = unique("reclaim");
    let mut srv = server_on(front, &name, &[]);
    let mut c = ClientOptions::new().open(&name).unwrap();
    srv.kill();
    // Its client learns at once.
    assert_eq!(c.recv_message().unwrap_err().code(), ErrorCode::BrokenPipe);
    // The socket file is left behind; a client is told the pipe is gone.
    let e = ClientOptions::new().open(&name).unwrap_err();
    assert_eq!(e.code(), ErrorCode::FileNotFound);
    let entry = npipe::list_pipes()
        .unwrap()
        .into_iter()
        .find(|e| matches!(e, npipe::PipeEntry::Dead { file, .. } if *file == name));
    assert!(entry.is_some(), "the stale socket shows in listings");
    // A new server (even with first_instance) takes the name over.
    let listener = ServerOptions::new()
        .first_instance(true)
        .create(name.as_str())
        .unwrap();
    let _c = ClientOptions::new().open(&name).unwrap();
    assert!(listener
        .accept_timeout(Duration::from_secs(5))
        .unwrap()
        .is_some());
}

/// The instance counts `info` reports follow accepts and releases at once,
/// before the acceptor has counted them.
#[test]
fn instance_counts_follow_accept_and_release_at_once() {
    let name = unique("counts");
    let listener = ServerOptions::new().create(name.as_str()).unwrap();
    let _a = ClientOptions::new().open(&name).unwrap();
    let _b = ClientOptions::new().open(&name).unwrap();
    let a = listener.accept().unwrap();
    let b = listener.accept().unwrap();
    assert_eq!(listener.info().cur_instances, 2);
    drop(a);
    assert_eq!(listener.info().cur_instances, 1);
    assert_eq!(b.info().cur_instances, 1);
    assert_eq!(npipe::query_pipe(name.as_str()).unwrap().cur_instances, 1);
    drop(b);
    assert_eq!(listener.info().cur_instances, 0);
    assert_eq!(npipe::query_pipe(name.as_str()).unwrap().cur_instances, 0);
}

#[cfg(feature = "tokio")]
#[test]
fn instance_counts_follow_accept_and_release_at_once_on_tokio() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let name = unique("counts-async");
        let listener = ServerOptions::new().create_async(name.as_str()).unwrap();
        let _a = ClientOptions::new().open_async(&name).await.unwrap();
        let _b = ClientOptions::new().open_async(&name).await.unwrap();
        let a = listener.accept().await.unwrap();
        let mut b = listener.accept().await.unwrap();
        assert_eq!(listener.info().cur_instances, 2);
        drop(a);
        assert_eq!(listener.info().cur_instances, 1);
        assert_eq!(b.info().cur_instances, 1);
        b.disconnect().unwrap();
        assert_eq!(listener.info().cur_instances, 0);
    });
}

#[test]
fn the_listener_removes_its_name_when_dropped() {
    let name = unique("dropped");
    let listener = ServerOptions::new().create(name.as_str()).unwrap();
    assert!(npipe::query_pipe(name.as_str()).is_ok());
    drop(listener);
    assert_eq!(
        npipe::query_pipe(name.as_str()).unwrap_err().code(),
        ErrorCode::FileNotFound
    );
    let mut child = spawn("open", &[&name]);
    assert!(child.expect("err").starts_with("2 "));
}

#[test]
fn racing_servers_cannot_both_win_a_name() {
    let name = unique("race");
    let mut racers: Vec<_> = (0..6)
        .map(|_| spawn("create", &[&name, "first=1"]))
        .collect();
    let outcomes: Vec<String> = racers.iter_mut().map(|r| r.next_line()).collect();
    let winners = outcomes.iter().filter(|o| o.starts_with("ok")).count();
    assert_eq!(winners, 1, "{outcomes:?}");
    assert!(
        outcomes
            .iter()
            .filter(|o| !o.starts_with("ok"))
            .all(|o| o.starts_with("err 5 ")),
        "the losers are told the name is taken: {outcomes:?}"
    );
}

/// Servers racing to reclaim one dead server's socket, with no lock among
/// them: exactly one is published (the exchange is undone by any racer that
/// took out a live socket instead of the dead one), and the name then works.
#[test]
fn racing_servers_cannot_both_reclaim_a_dead_name() {
    for round in 0..3 {
        let name = unique("race-reclaim");
        let mut dead = server_on(Front::Blocking, &name, &[]);
        dead.kill();
        let mut racers: Vec<_> = (0..6)
            .map(|_| spawn("create", &[&name, "first=1"]))
            .collect();
        let outcomes: Vec<String> = racers.iter_mut().map(|r| r.next_line()).collect();
        let winners = outcomes.iter().filter(|o| o.starts_with("ok")).count();
        assert_eq!(winners, 1, "round {round}: {outcomes:?}");
        // The winner's acceptor answers (its role never accepts, but the
        // connection is granted into the backlog).
        let opened = ClientOptions::new().open(&name);
        assert!(opened.is_ok(), "round {round}: {:?}", opened.err());
    }
}

fn a_dropped_listener_closes_clients_it_never_accepted(front: Front) {
    let name = unique("droplistener");
    let mode = match front {
        Front::Blocking => "sync",
        Front::Tokio => "async",
    };
    let mut srv = spawn("drop_listener", &[&name, mode]);
    srv.expect("ready");
    let _kept = ClientOptions::new().open(&name).unwrap();
    srv.expect("accepted");
    // Granted (OK received) but never accepted by the application.
    let mut queued = ClientOptions::new().open(&name).unwrap();
    queued.set_read_timeout(Some(HANG)).unwrap();
    srv.tell("go");
    srv.expect("dropped");
    let e = queued.recv_message().unwrap_err();
    assert_eq!(e.code(), ErrorCode::BrokenPipe, "{e}");
}

#[test]
fn a_held_directory_lock_does_not_stop_new_pipes() {
    use crate::common::{spawn_with_env, TempDir};
    use std::os::unix::fs::PermissionsExt;
    let tmp = TempDir::new("flock");
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    // Anyone may open the directory and flock it, for as long as they like.
    let dir = std::fs::File::open(tmp.path()).unwrap();
    dir.lock().unwrap();
    let name = unique("locked-out");
    let mut srv = spawn_with_env(
        "create",
        &[&name],
        &[("NPIPE_DIR", tmp.path().to_str().unwrap())],
    );
    let said = srv.next_line();
    assert!(said.starts_with("ok"), "{said}");
    dir.unlock().unwrap();
}

/// A crashed server's restart over its own dead socket takes no lock that
/// another user can hold: here uid 65534 holds an exclusive `flock` on the
/// namespace directory and on everything in it it can open, and the restart
/// still succeeds (it used to fail after 5 s, for as long as the lock was
/// held).
#[test]
fn a_dead_servers_name_is_reclaimed_while_another_user_holds_every_lock() {
    if let Some(why) = crate::shared_copy::cannot_run_as(65534) {
        crate::shared_copy::skipped(&format!(
            "a_dead_servers_name_is_reclaimed_while_another_user_holds_every_lock \
             starts a process as uid 65534, and {why}"
        ));
        return;
    }
    let name = unique("reclaim-locked");
    let mut srv = server_on(Front::Blocking, &name, &[]);
    srv.kill();
    let mut locker = crate::common::spawn_as(65534, "lock_all", &[]);
    let locked: u32 = locker.expect("locked").parse().unwrap();
    assert!(locked >= 1, "the directory itself could not be locked");
    let listener = ServerOptions::new().create(name.as_str()).unwrap();
    let _c = ClientOptions::new().open(&name).unwrap();
    assert!(listener
        .accept_timeout(Duration::from_secs(5))
        .unwrap()
        .is_some());
    drop(locker);
}
