//! Users the descriptor refuses, and users who connect and stay silent,
//! cannot starve a pipe: a peer granted nothing is closed at accept, and
//! handshakes in flight are capped per user and in all (OpenSSH's
//! `MaxStartups`), so the server never runs out of descriptors for its
//! legitimate clients.

use crate::common::{on_both_servers, server_on, spawn_as, still_serves, unique, Front};

on_both_servers!(
    a_denied_user_cannot_exhaust_the_servers_descriptors,
    a_silent_user_cannot_exhaust_the_servers_descriptors,
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
