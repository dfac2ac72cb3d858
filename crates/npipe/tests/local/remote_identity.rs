//! Remote clients as a server sees them: only a gateway the server trusts
//! (by its kernel uid) may name one in HELLO; the server then knows the
//! client by its principal and computer, matches the descriptor's remote
//! entries against it, and acts as the local user the gateway mapped it to
//! (or not at all). The gateway here is this test process, sending HELLOs
//! by hand; `npipe gateway` itself is tested through the tool.

use std::time::Duration;

use npipe::{ErrorCode, Identity, LocalUser, PipeServer, RemotePrincipal, ServerOptions};

use crate::common::{spawn, spawn_as, unique};
use crate::raw_client::{self as rc, RawClient};

/// A server that trusts this process as a gateway (root is trusted anyway).
fn trusting(sd: &str) -> ServerOptions {
    let mut o = ServerOptions::new();
    o.trust_gateway(LocalUser::current());
    o.security(sd.parse().unwrap());
    o
}

/// Sends a gateway's HELLO for `principal` and returns the answer, with the
/// connection (kept open) and the server end if it connected.
fn present(
    listener: &npipe::PipeListener,
    name: &str,
    principal: &str,
    local_user: Option<u32>,
) -> (rc::Reply, RawClient, Option<PipeServer>) {
    let mut c = RawClient::connect(name).unwrap();
    c.send(&rc::remote_hello(name, principal, "192.0.2.7", local_user))
        .unwrap();
    let reply = c.reply().unwrap();
    let conn = match reply {
        rc::Reply::Connected { .. } => listener.accept_timeout(Duration::from_secs(5)).unwrap(),
        _ => None,
    };
    (reply, c, conn)
}

#[test]
fn a_trusted_gateways_client_is_known_by_its_principal_and_computer() {
    let name = unique("remote-who");
    let listener = trusting("allow everyone=full").create(&name).unwrap();
    let (reply, _c, conn) = present(&listener, &name, "build-agent-7", None);
    assert!(matches!(reply, rc::Reply::Connected { .. }), "{reply:?}");
    let conn = conn.expect("accepted");
    assert_eq!(
        conn.peer_identity(),
        Identity::Remote(RemotePrincipal::new("build-agent-7"))
    );
    assert_eq!(conn.client_computer_name().as_deref(), Some("192.0.2.7"));
    assert_eq!(conn.client_session_id(), None, "no session on this machine");
    // Unmapped: no local user stands behind it, and the gateway's own
    // uid is never reported as the client's.
    assert_eq!(conn.client_user(), LocalUser::from(u32::MAX));
    assert!(conn.client_groups().unwrap().is_empty());
    assert_eq!(
        conn.client_process_id(),
        std::process::id(),
        "the gateway's pid"
    );
    let e = conn
        .spawn_as_client(&mut std::process::Command::new("true"))
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::CannotImpersonate);
    assert_eq!(e.win32_code(), 1368);
    assert!(e.to_string().contains("--map"), "{e}");
}

#[test]
fn a_mapped_principal_is_impersonated_as_its_local_user() {
    if !crate::common::can_run_as(
        65534,
        "a_mapped_principal_is_impersonated_as_its_local_user",
    ) {
        return;
    }
    let name = unique("remote-map");
    let listener = trusting("allow everyone=full").create(&name).unwrap();
    let (_, _c, conn) = present(&listener, &name, "alice", Some(65534));
    let conn = conn.expect("accepted");
    assert_eq!(conn.client_user(), LocalUser::from(65534));
    let out = conn
        .spawn_as_client(
            std::process::Command::new("id")
                .arg("-u")
                .stdout(std::process::Stdio::piped()),
        )
        .unwrap()
        .wait_with_output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "65534");
}

#[test]
fn descriptor_entries_for_a_principal_allow_it_and_deny_others() {
    let name = unique("remote-sd");
    let listener = trusting("allow owner=full; allow remote:alice=rw")
        .create(&name)
        .unwrap();
    let (alice, _a, conn) = present(&listener, &name, "ALICE", None);
    assert!(matches!(alice, rc::Reply::Connected { .. }), "{alice:?}");
    assert!(conn.is_some());
    let (bob, _b, _) = present(&listener, &name, "bob", None);
    assert_eq!(bob, rc::Reply::Refused { code: 5 });
    // `network` is every remote client, and a deny wins.
    let name = unique("remote-network");
    let listener = trusting("allow network=rw; deny remote:mallory=full")
        .create(&name)
        .unwrap();
    let (anyone, _c, _) = present(&listener, &name, "carol", None);
    assert!(matches!(anyone, rc::Reply::Connected { .. }), "{anyone:?}");
    let (mallory, _m, _) = present(&listener, &name, "mallory", None);
    assert_eq!(mallory, rc::Reply::Refused { code: 5 });
}

/// Coming through a gateway gets no one past a deny: a principal mapped to
/// a local user meets the deny entries for that user and for the groups
/// the gateway sent, while allow entries for them grant it nothing (it is
/// granted as a principal).
#[test]
fn a_mapped_principal_meets_the_denies_of_its_user_and_groups() {
    let send = |name: &str, uid: u32, groups: &[u32]| {
        let mut c = RawClient::connect(name).unwrap();
        c.send(&rc::remote_hello_with_groups(
            name,
            "laptop",
            "192.0.2.7",
            uid,
            groups,
        ))
        .unwrap();
        c.reply().unwrap()
    };
    let name = unique("remote-deny-user");
    let _l = trusting("allow everyone=rw; deny user:65534=full")
        .create(&name)
        .unwrap();
    assert_eq!(send(&name, 65534, &[65534]), rc::Reply::Refused { code: 5 });
    assert!(matches!(
        send(&name, 12345, &[12345]),
        rc::Reply::Connected { .. }
    ));

    let name = unique("remote-deny-group");
    let _l = trusting("allow everyone=rw; deny group:4242=full")
        .create(&name)
        .unwrap();
    assert_eq!(
        send(&name, 12345, &[12345, 4242]),
        rc::Reply::Refused { code: 5 }
    );
    assert!(matches!(
        send(&name, 12345, &[12345]),
        rc::Reply::Connected { .. }
    ));

    let name = unique("remote-allow-user");
    let _l = trusting("allow user:65534=full").create(&name).unwrap();
    assert_eq!(send(&name, 65534, &[65534]), rc::Reply::Refused { code: 5 });
}

#[test]
fn reject_remote_clients_refuses_them_and_serves_local_ones() {
    let name = unique("remote-reject");
    let mut o = trusting("allow everyone=full");
    o.reject_remote_clients(true);
    let listener = o.create(&name).unwrap();
    let (reply, _c, _) = present(&listener, &name, "agent", None);
    assert_eq!(reply, rc::Reply::Refused { code: 5 });
    let _local = npipe::ClientOptions::new().open(name.as_str()).unwrap();
    assert!(listener
        .accept_timeout(Duration::from_secs(5))
        .unwrap()
        .is_some());
}

/// A child that claims a remote identity for `principal` on `name` from a
/// uid the server does not trust: 65534 when we are root (root is always
/// trusted), else our own. `None` (said loudly) if it cannot start.
pub(crate) fn untrusted_claimant(name: &str, principal: &str) -> Option<crate::common::Child> {
    if LocalUser::current() != LocalUser::ROOT {
        return Some(spawn("claim_remote", &[name, principal]));
    }
    if !crate::common::can_run_as(65534, "a claim of a remote identity by uid 65534") {
        return None;
    }
    Some(spawn_as(65534, "claim_remote", &[name, principal]))
}

#[test]
fn a_local_process_that_is_no_trusted_gateway_cannot_claim_a_remote_identity() {
    let name = unique("remote-spoof");
    let _listener = ServerOptions::new()
        .security("allow everyone=full".parse().unwrap())
        .create(&name)
        .unwrap();
    let Some(mut claimant) = untrusted_claimant(&name, "admin") else {
        return;
    };
    assert_eq!(claimant.expect("reply"), "Refused { code: 5 }");
}

#[test]
fn a_user_the_server_trusts_as_a_gateway_may_name_remote_clients() {
    let as_root = LocalUser::current() == LocalUser::ROOT;
    if as_root && !crate::common::can_run_as(65534, "a_user_the_server_trusts_as_a_gateway") {
        return;
    }
    let gateway = if as_root {
        LocalUser::from(65534)
    } else {
        LocalUser::current()
    };
    let name = unique("remote-trusted");
    let _listener = ServerOptions::new()
        .trust_gateway(gateway)
        .security("allow everyone=full".parse().unwrap())
        .create(&name)
        .unwrap();
    let mut claimant = if as_root {
        spawn_as(65534, "claim_remote", &[&name, "admin"])
    } else {
        spawn("claim_remote", &[&name, "admin"])
    };
    let reply = claimant.expect("reply");
    assert!(reply.starts_with("Connected"), "{reply}");
    // But a gateway that is not root may not make the server act as root.
    let mut to_root = if as_root {
        spawn_as(65534, "claim_remote", &[&name, "admin", "0"])
    } else {
        spawn("claim_remote", &[&name, "admin", "0"])
    };
    assert_eq!(to_root.expect("reply"), "Refused { code: 5 }");
}

/// The tokio server looks the mapped user up on the blocking pool (the user
/// database may be slow: LDAP), then queues the connection: the client is
/// that user, with its groups, as from the blocking server.
#[cfg(feature = "tokio")]
#[test]
fn a_tokio_server_knows_a_mapped_principal_as_its_local_user() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let name = unique("remote-map-async");
        let listener = trusting("allow everyone=full").create_async(&name).unwrap();
        let hello_for = |principal: &str, user: Option<u32>| {
            let name = name.clone();
            let principal = principal.to_string();
            tokio::task::spawn_blocking(move || {
                let mut c = RawClient::connect(&name).unwrap();
                c.send(&rc::remote_hello(&name, &principal, "192.0.2.7", user))
                    .unwrap();
                let reply = c.reply().unwrap();
                (reply, c)
            })
        };
        let (reply, _mapped) = hello_for("alice", Some(65534)).await.unwrap();
        assert!(matches!(reply, rc::Reply::Connected { .. }), "{reply:?}");
        let conn = tokio::time::timeout(Duration::from_secs(10), listener.accept())
            .await
            .expect("the mapped client was never queued")
            .unwrap();
        assert_eq!(
            conn.peer_identity(),
            Identity::Remote(RemotePrincipal::new("alice"))
        );
        assert_eq!(conn.client_user(), LocalUser::from(65534));
        // Its primary group was read from the user database.
        assert_ne!(conn.client_group(), npipe::LocalGroup::from(u32::MAX));
        assert!(!conn.client_groups().unwrap().is_empty());
        // An unmapped one is queued as it arrives, beside it.
        let (reply, _unmapped) = hello_for("bob", None).await.unwrap();
        assert!(matches!(reply, rc::Reply::Connected { .. }), "{reply:?}");
        let conn = listener.accept().await.unwrap();
        assert_eq!(conn.client_user(), LocalUser::from(u32::MAX));
    });
}
