//! Users the descriptor refuses, and users who connect and stay silent,
//! cannot starve a pipe: a peer granted nothing is closed at accept, and
//! handshakes in flight are capped per user and in all (OpenSSH's
//! `MaxStartups`), so the server never runs out of descriptors for its
//! legitimate clients.

use crate::common::{on_both_servers, server_on, spawn_as, still_serves, unique, Front};

on_both_servers!(
    a_denied_user_cannot_exhaust_the_servers_descriptors,
    a_silent_user_cannot_exhaust_the_servers_descriptors,
    a_waiting_user_cannot_exhaust_the_servers_descriptors,
);

const NOBODY: u32 = 65534;
/// The server child's descriptor limit, and how many silent connections
/// the attacker holds: well over it.
const SERVER_NOFILE: &str = "nofile=96";
const HOGGED: &str = "300";

fn need_root(test: &str) -> bool {
    crate::common::can_run_as(NOBODY, test)
}

/// Holds `HOGGED` silent connections as uid 65534 while the owner calls.
fn owner_is_served_while_nobody_hogs(name: &str) {
    let mut hog = spawn_as(NOBODY, "hog", &[name, HOGGED]);
    assert_eq!(hog.expect("held"), HOGGED);
    for _ in 0..20 {
        still_serves(name);
    }
    drop(hog);
}

fn a_denied_user_cannot_exhaust_the_servers_descriptors(front: Front) {
    if !need_root("a_denied_user_cannot_exhaust_the_servers_descriptors") {
        return;
    }
    let name = unique("starve-denied");
    let sd = "sd=allow everyone=full; deny user:65534=full";
    let _srv = server_on(front, &name, &[sd, SERVER_NOFILE]);
    owner_is_served_while_nobody_hogs(&name);
}

/// Clients waiting for an instance hold a descriptor each while they wait:
/// another user's are capped like its handshakes (16 by default), the rest
/// told *pipe busy*, and the server keeps answering.
fn a_waiting_user_cannot_exhaust_the_servers_descriptors(front: Front) {
    if !need_root("a_waiting_user_cannot_exhaust_the_servers_descriptors") {
        return;
    }
    let name = unique("starve-waiting");
    let _srv = server_on(front, &name, &[SERVER_NOFILE, "instances=1", "mode=hold"]);
    let _holder = npipe::ClientOptions::new().open(name.as_str()).unwrap();
    let mut hog = crate::common::spawn_as(NOBODY, "hog_waiting", &[&name, HOGGED]);
    // A connection the server refused at accept (over the cap) before the
    // hog sent its HELLO fails that send and is not counted: how many are
    // held depends on timing, but far more than the cap must be.
    let held: usize = hog.expect("held").parse().unwrap();
    assert!(held > 100, "uid 65534 held only {held} waiting connections");
    let queued = crate::common::eventually("the waiters to be counted", || {
        let q = npipe::query_pipe(name.as_str()).ok()?;
        (q.waiting_clients >= 16).then_some(q.waiting_clients)
    });
    assert_eq!(queued, 16, "uid 65534's waiters are capped");
    for _ in 0..5 {
        assert_eq!(crate::common::waiting(&name), 16);
    }
    drop(hog);
}

fn a_silent_user_cannot_exhaust_the_servers_descriptors(front: Front) {
    if !need_root("a_silent_user_cannot_exhaust_the_servers_descriptors") {
        return;
    }
    let name = unique("starve-silent");
    // The default descriptor lets everyone read, so uid 65534's connections
    // are let in to their handshake, and it never sends one.
    let _srv = server_on(front, &name, &[SERVER_NOFILE, "handshake_ms=60000"]);
    owner_is_served_while_nobody_hogs(&name);
}
