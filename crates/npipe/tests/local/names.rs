//! Names and the namespace directory: forms, case, long names, long
//! directories, and the directory checks.

use std::os::unix::fs::PermissionsExt;

use npipe::{ClientOptions, ErrorCode, PipeName};

use crate::common::{on_both_servers, server, server_on, spawn_with_env, unique, Front, TempDir};

on_both_servers!(hierarchical_names_are_served_and_listed_as_written);

#[test]
fn every_form_and_case_reaches_the_same_pipe() {
    let base = unique("Case");
    let name = format!("{base}-MiXeD");
    let srv = server(&name, &[]);
    let lower = name.to_lowercase();
    let upper = name.to_uppercase();
    for form in [
        format!(r"\\.\pipe\{lower}"),
        format!(r"\\.\PIPE\{upper}"),
        format!("//./pipe/{name}"),
        upper.clone(),
    ] {
        let mut c = ClientOptions::new().open(form.as_str()).unwrap();
        assert_eq!(c.server_process_id(), srv.pid(), "{form}");
        assert_eq!(c.transact(b"hi").unwrap(), b"hi");
        assert_eq!(c.info().name, name, "the server's own spelling");
    }
}

/// Windows accepts backslashes after `\\.\pipe\` (`\\.\pipe\sql\query`,
/// `\\.\pipe\MSSQL$SQLEXPRESS\sql\query`): a server serves such a name, a
/// client reaches it by any spelling, and listings show it as written.
fn hierarchical_names_are_served_and_listed_as_written(front: Front) {
    let name = format!(r"{}\MSSQL$SQLEXPRESS\sql\query", unique("Hier"));
    let srv = server_on(front, &format!(r"\\.\pipe\{name}"), &[]);
    for form in [
        format!(r"\\.\pipe\{name}"),
        format!("//./pipe/{}", name.replace('\\', "/").to_uppercase()),
        name.to_lowercase(),
    ] {
        let mut c = ClientOptions::new().open(form.as_str()).unwrap();
        assert_eq!(c.server_process_id(), srv.pid(), "{form}");
        assert_eq!(c.transact(b"hi").unwrap(), b"hi");
        assert_eq!(c.info().name, name, "the server's own spelling");
    }
    let listed = npipe::list_pipes().unwrap();
    let shown = listed.iter().any(
        |e| matches!(e, npipe::PipeEntry::Served(p) if p.name == name && p.server.pid == srv.pid()),
    );
    assert!(shown, "{name} is not listed as written: {listed:?}");
    // Its parent is a different pipe, and not served.
    let parent = name.rsplit_once('\\').unwrap().0;
    let e = ClientOptions::new().open(parent).unwrap_err();
    assert_eq!(e.code(), ErrorCode::FileNotFound);
}

#[test]
fn long_and_unusual_names_work() {
    let tag = unique("long");
    // Windows counts `\\.\pipe\` (9 characters) in its 256.
    let long = format!("{tag}-{}", "é".repeat(247 - tag.chars().count() - 1));
    assert_eq!(long.chars().count(), 247);
    let odd = format!("{} with spaces, ünïcode & 'quotes'", unique("odd"));
    for name in [&long, &odd] {
        let srv = server(name, &[]);
        let mut c = ClientOptions::new().open(name.as_str()).unwrap();
        assert_eq!(c.server_process_id(), srv.pid());
        assert_eq!(c.transact(b"ok").unwrap(), b"ok");
        let listed = npipe::query_pipe(name.as_str()).unwrap();
        assert_eq!(&listed.name, name, "the real name is recoverable");
        assert!(listed.file.len() <= 64);
    }
    let too_long = "x".repeat(248);
    let e = ClientOptions::new().open(too_long.as_str()).unwrap_err();
    assert_eq!(e.code(), ErrorCode::InvalidName);
    let e = PipeName::parse(r"\pipe\a").unwrap_err();
    assert_eq!(e.win32_code(), 123);
}

#[test]
fn remote_names_without_a_gateway_say_so() {
    let e = ClientOptions::new()
        .open(r"\\otherhost\pipe\x")
        .unwrap_err();
    if cfg!(feature = "remote") {
        // Built for remote pipes, but given no certificate: said first.
        assert_eq!(e.code(), ErrorCode::InvalidParameter);
        assert!(e.to_string().contains("NPIPE_CERT"), "{e}");
    } else {
        assert_eq!(e.code(), ErrorCode::BadNetPath);
        assert!(e.to_string().contains("gateway"), "{e}");
    }
}

#[test]
fn a_namespace_directory_longer_than_sun_path_works() {
    let tmp = TempDir::new("longdir");
    let deep = tmp.path().join("d".repeat(60)).join("e".repeat(60));
    std::fs::create_dir_all(&deep).unwrap();
    std::fs::set_permissions(&deep, std::fs::Permissions::from_mode(0o1777)).unwrap();
    assert!(deep.as_os_str().len() > 108);
    let dir = deep.to_str().unwrap();
    let name = unique("deep");
    let mut srv = spawn_with_env("create", &[&name], &[("NPIPE_DIR", dir)]);
    let said = srv.expect("ok");
    assert_eq!(said, dir);
    let mut client = spawn_with_env("open", &[&name], &[("NPIPE_DIR", dir)]);
    assert_eq!(client.expect("ok"), srv.pid().to_string());
}

fn create_in(dir: &str, name: &str) -> String {
    let mut c = spawn_with_env("create", &[name], &[("NPIPE_DIR", dir)]);
    c.next_line()
}

#[test]
fn the_namespace_directory_is_created_sticky_and_world_writable() {
    let tmp = TempDir::new("nsnew");
    let dir = tmp.path().join("pipes");
    let line = create_in(dir.to_str().unwrap(), &unique("x"));
    assert!(line.starts_with("ok"), "{line}");
    let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o1777);
}

#[test]
fn an_unsafe_namespace_directory_is_refused() {
    let tmp = TempDir::new("nsbad");
    // World-writable without the sticky bit: others could replace pipes.
    let open = tmp.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let line = create_in(open.to_str().unwrap(), &unique("x"));
    assert!(
        line.starts_with("err 5 ") && line.contains("sticky"),
        "{line}"
    );
    // A symbolic link in place of the directory.
    let real = tmp.path().join("real");
    std::fs::create_dir(&real).unwrap();
    let link = tmp.path().join("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let line = create_in(link.to_str().unwrap(), &unique("x"));
    assert!(
        line.starts_with("err 5 ") && line.contains("symbolic link"),
        "{line}"
    );
    // A private directory of our own is fine.
    let private = tmp.path().join("private");
    std::fs::create_dir(&private).unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
    assert!(create_in(private.to_str().unwrap(), &unique("x")).starts_with("ok"));
}

#[test]
fn a_namespace_directory_owned_by_another_user_is_refused() {
    // Giving a directory to uid 65534 takes what starting a process as it
    // takes: root, and the uid mapped.
    if let Some(why) = crate::shared_copy::cannot_run_as(65534) {
        crate::shared_copy::skipped(&format!(
            "a_namespace_directory_owned_by_another_user_is_refused chowns to uid 65534, and {why}"
        ));
        return;
    }
    let tmp = TempDir::new("nsother");
    let dir = tmp.path().join("theirs");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
    std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).unwrap();
    let line = create_in(dir.to_str().unwrap(), &unique("x"));
    assert!(
        line.starts_with("err 5 ") && line.contains("uid 65534"),
        "{line}"
    );
    // The way out is named: a root-owned directory from `npipe setup`.
    assert!(line.contains("sudo npipe setup"), "{line}");
}

/// OpenSSH's StrictModes for the pipe directory's parents: a directory
/// another user owns above it could have the pipe directory swapped under
/// every server and client, so it is refused and named.
#[test]
fn a_namespace_directory_under_another_users_directory_is_refused() {
    if let Some(why) = crate::shared_copy::cannot_run_as(65534) {
        crate::shared_copy::skipped(&format!("a_namespace_directory_under_another_users_directory_is_refused chowns to uid 65534, and {why}"
        ));
        return;
    }
    let tmp = TempDir::new("nsparent");
    let theirs = tmp.path().join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
    let dir = theirs.join("pipes");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let line = create_in(dir.to_str().unwrap(), &unique("x"));
    assert!(
        line.starts_with("err 5 ") && line.contains("parent") && line.contains("uid 65534"),
        "{line}"
    );
    // Others' write access without the sticky bit is refused the same way.
    std::os::unix::fs::chown(&theirs, Some(0), Some(0)).unwrap();
    std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o777)).unwrap();
    let line = create_in(dir.to_str().unwrap(), &unique("x"));
    assert!(
        line.starts_with("err 5 ") && line.contains("sticky"),
        "{line}"
    );
    // A sticky, root-owned parent (as /tmp is) is fine.
    std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let line = create_in(dir.to_str().unwrap(), &unique("x"));
    assert!(line.starts_with("ok"), "{line}");
}

#[test]
fn a_file_squatting_a_name_is_not_replaced() {
    let tmp = TempDir::new("squat");
    let dir = tmp.path().join("ns");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let name = unique("squatted");
    std::fs::write(dir.join(&name), b"not a pipe").unwrap();
    let line = create_in(dir.to_str().unwrap(), &name);
    assert!(
        line.starts_with("err 5 ") && line.contains("not by a pipe"),
        "{line}"
    );
    assert_eq!(std::fs::read(dir.join(&name)).unwrap(), b"not a pipe");
}
