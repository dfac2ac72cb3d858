//! Security, with real other users: each test starts a client or server
//! process that runs as uid 65534 (nobody). They need root (CI runs as
//! root); without it they say so loudly and do nothing.

use std::os::unix::fs::PermissionsExt;

use npipe::unix::ClientPipeExt;
use npipe::{ClientOptions, ErrorCode, Identity, LocalUser, RemotePrincipal, ServerOptions};

use crate::common::{
    on_both_servers, server_on, spawn_as, spawn_with_env, still_serves, unique, Front, TempDir,
};

// The descriptor and namespace checks, against the blocking and the tokio
// server (impersonation below is the blocking server's; the tokio server's
// `run_as_client` is exercised through `npipe serve --whoami --impersonate`
// in the CLI tests).
on_both_servers!(
    a_descriptor_that_denies_a_user_refuses_it_and_serves_others,
    the_default_descriptor_lets_others_read_but_not_write,
    current_user_only_refuses_another_user,
    expect_server_user_refuses_a_squatter,
    another_user_cannot_replace_or_redirect_pipes,
    a_process_spawned_as_the_client_cannot_become_the_server,
);

const NOBODY: u32 = 65534;

fn need_root(test: &str) -> bool {
    crate::common::can_run_as(NOBODY, test)
}

fn a_descriptor_that_denies_a_user_refuses_it_and_serves_others(front: Front) {
    if !need_root("a_descriptor_that_denies_a_user_refuses_it_and_serves_others") {
        return;
    }
    let name = unique("deny");
    let mut srv = server_on(
        front,
        &name,
        &["sd=allow everyone=full; deny user:65534=full"],
    );
    let mut nobody = spawn_as(NOBODY, "open_as", &[&name, "access=r"]);
    let said = nobody.expect("err");
    assert!(
        said.starts_with("5 ") && said.contains("security descriptor"),
        "{said}"
    );
    still_serves(&name);
    // The application never saw the refused client: its first conn is ours.
    let line = srv.expect("conn");
    assert!(line.starts_with(&std::process::id().to_string()), "{line}");
}

fn the_default_descriptor_lets_others_read_but_not_write(front: Front) {
    if !need_root("the_default_descriptor_lets_others_read_but_not_write") {
        return;
    }
    let name = unique("default-sd");
    let _srv = server_on(front, &name, &["mode=hold"]);
    let mut writer = spawn_as(NOBODY, "open_as", &[&name, "access=rw"]);
    assert!(writer.expect("err").starts_with("5 "));
    let mut writer = spawn_as(NOBODY, "open_as", &[&name, "access=w"]);
    assert!(writer.expect("err").starts_with("5 "));
    let mut reader = spawn_as(NOBODY, "open_as", &[&name, "access=r"]);
    assert!(reader.expect("ok").parse::<u32>().is_ok());
    // A read-only grant to another user: the socket file is 0666.
    let path = npipe::namespace_directory().join(&name);
    let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o666);
}

fn current_user_only_refuses_another_user(front: Front) {
    if !need_root("current_user_only_refuses_another_user") {
        return;
    }
    let name = unique("cuo");
    let _srv = server_on(front, &name, &["sd=allow owner=full"]);
    let path = npipe::namespace_directory().join(&name);
    let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the socket file fences others out too");
    let mut other = spawn_as(NOBODY, "open_as", &[&name, "access=r"]);
    assert!(other.expect("err").starts_with("5 "));
    still_serves(&name);
}

#[test]
fn impersonation_changes_only_the_serving_thread_and_reverts() {
    if !need_root("impersonation_changes_only_the_serving_thread_and_reverts") {
        return;
    }
    let tmp = TempDir::new("secret");
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let secret = tmp.path().join("root-only");
    std::fs::write(&secret, b"s3cret").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let name = unique("impersonate");
    let mut srv = spawn_with_env(
        "serve",
        &[&name, "mode=impersonate", "sd=allow everyone=full"],
        &[("NPIPE_TEST_SECRET", secret.to_str().unwrap())],
    );
    srv.expect("ready");
    let _client = spawn_as(NOBODY, "open_as", &[&name]);
    srv.expect("conn");
    assert_eq!(
        srv.expect("ident"),
        format!("uid=65534 user={} level=Impersonation", nobody_name())
    );
    assert_eq!(
        srv.expect("imp"),
        "before=ok during=denied euid=65534 other=ok other_euid=0 after=ok after_euid=0"
    );
    assert_eq!(srv.expect("closure"), "inside=65534 after=0");
}

#[test]
fn an_identification_only_client_is_identified_not_impersonated() {
    if !need_root("an_identification_only_client_is_identified_not_impersonated") {
        return;
    }
    let name = unique("identify");
    let mut srv = spawn_with_env(
        "serve",
        &[&name, "mode=impersonate", "sd=allow everyone=full"],
        &[("NPIPE_TEST_SECRET", "/etc/shadow")],
    );
    srv.expect("ready");
    let _client = spawn_as(NOBODY, "open_as", &[&name, "level=ident"]);
    srv.expect("conn");
    assert_eq!(
        srv.expect("ident"),
        format!("uid=65534 user={} level=Identification", nobody_name())
    );
    assert_eq!(srv.expect("imp_err"), "1368");
}

#[test]
fn a_server_without_privilege_gets_a_clear_error() {
    if !need_root("a_server_without_privilege_gets_a_clear_error") {
        return;
    }
    // The server runs as nobody; the client is root: nobody may not become root.
    let name = unique("noprivilege");
    let mut srv = spawn_as(
        NOBODY,
        "serve",
        &[&name, "mode=impersonate", "sd=allow everyone=full"],
    );
    srv.expect("ready");
    let _c = ClientOptions::new().open(&name).unwrap();
    srv.expect("conn");
    srv.expect("ident");
    assert_eq!(srv.expect("imp_err"), "1314");
}

fn expect_server_user_refuses_a_squatter(front: Front) {
    if !need_root("expect_server_user_refuses_a_squatter") {
        return;
    }
    let name = unique("squatter");
    let role = match front {
        Front::Blocking => "serve",
        Front::Tokio => "serve_async",
    };
    let mut squatter = spawn_as(NOBODY, role, &[&name]);
    squatter.expect("ready");
    let e = ClientOptions::new()
        .expect_server_user(0)
        .open(&name)
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::AccessDenied);
    assert!(e.to_string().contains("uid 65534"), "{e}");
    // The same check passes for the user that really serves it.
    let c = ClientOptions::new()
        .expect_server_user(NOBODY)
        .open(&name)
        .unwrap();
    assert_eq!(c.server_uid(), NOBODY);
    assert_eq!(c.peer_identity(), Identity::Local(LocalUser::from(NOBODY)));
    // A local pipe's server is never a remote principal, whoever it is.
    let e = ClientOptions::new()
        .expect_server(RemotePrincipal::new("build-agent"))
        .open(&name)
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::AccessDenied);
    assert!(
        e.to_string().contains("remote principal build-agent"),
        "{e}"
    );
    // first_instance keeps a second server off a live name.
    let e = ServerOptions::new()
        .first_instance(true)
        .create(name.as_str())
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::AccessDenied);
}

fn another_user_cannot_replace_or_redirect_pipes(front: Front) {
    if !need_root("another_user_cannot_replace_or_redirect_pipes") {
        return;
    }
    let name = unique("vandalized");
    let _srv = server_on(front, &name, &[]);
    let dir = npipe::namespace_directory();
    // What the vandal plants goes, pass or fail.
    let _planted = [format!("{name}-next"), format!("{name}-file")].map(|p| Planted(dir.join(p)));
    let mut vandal = spawn_as(NOBODY, "vandal", &[dir.to_str().unwrap(), &name]);
    assert_eq!(
        vandal.expect("unlink"),
        "refused:1",
        "sticky directory: EPERM"
    );
    assert_eq!(vandal.expect("rename"), "refused:1");
    assert_eq!(vandal.expect("symlink"), "done");
    assert_eq!(vandal.expect("file"), "done");
    still_serves(&name);
    // A server for the planted names refuses to replace them...
    for (planted, client_sees) in [
        (format!("{name}-next"), ErrorCode::AccessDenied),
        (format!("{name}-file"), ErrorCode::FileNotFound),
    ] {
        let e = ServerOptions::new().create(planted.as_str()).unwrap_err();
        assert_eq!(e.code(), ErrorCode::AccessDenied, "{e}");
        assert!(e.to_string().contains("not by a pipe"), "{e}");
        // ...and a client neither follows the symbolic link nor talks to
        // the file.
        let e = ClientOptions::new().open(planted.as_str()).unwrap_err();
        assert_eq!(e.code(), client_sees, "{e}");
        // The async client goes the same way.
        #[cfg(feature = "tokio")]
        {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let e = rt
                .block_on(ClientOptions::new().open_async(planted.as_str()))
                .unwrap_err();
            assert_eq!(e.code(), client_sees, "async: {e}");
        }
    }
}

/// A file planted in the pipe directory, removed when the test ends.
struct Planted(std::path::PathBuf);

impl Drop for Planted {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Uid 65534's name in the user database ("nobody" on most systems; the
/// `ident` line of the `serve` role leaves it empty where there is none).
fn nobody_name() -> String {
    npipe::LocalUser::from(NOBODY).name().unwrap_or_default()
}

/// `spawn_as_client` (`CreateProcessAsUser`): the child is the client for
/// good: real, effective and saved ids the client's, no capabilities,
/// `no_new_privs`; its attempt to become root again is refused.
fn a_process_spawned_as_the_client_cannot_become_the_server(front: Front) {
    if !need_root("a_process_spawned_as_the_client_cannot_become_the_server") {
        return;
    }
    let name = unique("spawn-as-client");
    let mut srv = server_on(front, &name, &["mode=spawn_as_client"]);
    let _client = spawn_as(NOBODY, "open_as", &[&name, "access=r"]);
    srv.expect("conn");
    assert_eq!(srv.expect("Uid"), "65534 65534 65534 65534");
    assert_eq!(srv.expect("Gid"), "65534 65534 65534 65534");
    assert_eq!(srv.expect("Groups"), "");
    for caps in ["CapInh", "CapPrm", "CapEff", "CapAmb"] {
        assert_eq!(srv.expect(caps), "0000000000000000", "{caps}");
    }
    assert_eq!(srv.expect("NoNewPrivs"), "1");
    let setuid = srv.expect("setuid0");
    assert!(setuid.starts_with("refused"), "{setuid}");
}

/// tokio's `run_as_client` runs on a thread npipe owns: work the closure
/// would hand to the shared blocking pool cannot leave pool threads behind
/// that run the server's later blocking work as the client.
#[cfg(feature = "tokio")]
#[test]
fn async_impersonation_leaves_no_pool_thread_as_the_client() {
    if !need_root("async_impersonation_leaves_no_pool_thread_as_the_client") {
        return;
    }
    let name = unique("imp-pool");
    let mut srv = server_on(Front::Tokio, &name, &["mode=imp_pool"]);
    let _client = spawn_as(NOBODY, "open_as", &[&name, "access=r"]);
    srv.expect("conn");
    let inside = srv.expect("inside");
    assert!(inside.starts_with("65534 "), "{inside}");
    assert_eq!(srv.expect("later"), "[0]", "({inside})");
}
