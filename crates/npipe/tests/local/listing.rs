//! What a listing says of each socket in the pipe directory: served,
//! denied, not answering, or dead, each asked side by side.

use std::os::unix::net::UnixListener;
use std::time::{Duration, Instant};

use npipe::PipeEntry;

use crate::common::{server, unique};

/// A socket that takes connections and never answers: a hung server.
fn hung(name: &str) -> (UnixListener, std::path::PathBuf) {
    let path = npipe::namespace_directory().join(name);
    let _ = std::fs::remove_file(&path);
    (UnixListener::bind(&path).unwrap(), path)
}

fn entry_of(entries: &[PipeEntry], file: &str) -> PipeEntry {
    entries
        .iter()
        .find(|e| e.file() == file)
        .unwrap_or_else(|| panic!("{file} is not listed"))
        .clone()
}

/// Each state is told apart: a server that refuses you is `denied` (not
/// dead: it must not be pruned), a socket nobody listens on is `dead`, one
/// whose holder never answers is `not answering`.
#[test]
fn a_listing_tells_denied_hung_and_dead_apart() {
    let denied = unique("list-denied");
    let _srv = server(&denied, &["sd=allow user:65534=full"]);
    let silent = unique("list-hung");
    let (_hold, silent_path) = hung(&silent);
    let dead = unique("list-dead");
    let (listener, dead_path) = hung(&dead);
    drop(listener); // the file stays; connecting is refused

    let entries = npipe::list_pipes().unwrap();
    assert!(matches!(
        entry_of(&entries, &denied),
        PipeEntry::Denied { .. }
    ));
    assert_eq!(
        entry_of(&entries, &silent),
        PipeEntry::NotAnswering {
            file: silent.clone()
        }
    );
    assert_eq!(
        entry_of(&entries, &dead),
        PipeEntry::Dead {
            file: dead.clone(),
            name: Some(dead.clone())
        }
    );

    // (Other tests prune side by side: the dead socket may go by theirs.)
    let pruned = npipe::remove_stale_pipes().unwrap();
    assert!(!dead_path.exists(), "{pruned:?}");
    assert!(!pruned.removed.contains(&denied) && !pruned.removed.contains(&silent));
    assert!(silent_path.exists(), "a hung server's socket was pruned");
    let _ = std::fs::remove_file(silent_path);
    let _ = std::fs::remove_file(dead_path);
}

/// A pipe whose file name is a hash (a name with capitals, spaces and a
/// backslash) keeps its name in a note beside the socket: a listing names
/// it even once its server is killed, and pruning the dead socket removes
/// the note with it.
#[test]
fn a_dead_hashed_pipe_is_listed_by_its_name() {
    let name = format!("Hashed Name\\with Spaces {}", std::process::id());
    let file = npipe::PipeName::parse(&name).unwrap().file_name();
    assert!(file.starts_with('~'), "{file}");
    let note = npipe::namespace_directory().join(format!("{file}.name"));
    let mut srv = server(&name, &[]);
    assert!(note.exists(), "the server left no note");
    let entries = npipe::list_pipes().unwrap();
    assert!(
        matches!(entry_of(&entries, &file), PipeEntry::Served(p) if p.name == name),
        "{entries:?}"
    );
    srv.kill(); // no chance to remove its socket or note
    let entries = npipe::list_pipes().unwrap();
    assert_eq!(
        entry_of(&entries, &file),
        PipeEntry::Dead {
            file: file.clone(),
            name: Some(name.clone())
        }
    );
    // (Other tests prune side by side: whichever prune takes the socket
    // takes the note.)
    npipe::remove_stale_pipes().unwrap();
    assert!(!npipe::namespace_directory().join(&file).exists());
    assert!(!note.exists(), "the note outlived its socket");
}

/// A pipe's note goes with it when its server closes it.
#[test]
fn a_hashed_pipes_note_goes_with_its_listener() {
    let name = format!("Closed Hashed {}", std::process::id());
    let file = npipe::PipeName::parse(&name).unwrap().file_name();
    let note = npipe::namespace_directory().join(format!("{file}.name"));
    let listener = npipe::ServerOptions::new().create(&name).unwrap();
    assert_eq!(std::fs::read_to_string(&note).unwrap(), name);
    drop(listener);
    assert!(!note.exists(), "the note outlived its pipe");
}

/// Hung servers are asked side by side, within one deadline: forty of them hold a listing up
/// about as long as one does (a second each, one after another, would be
/// forty). The bound only separates the two by far.
#[test]
fn hung_servers_are_asked_side_by_side() {
    let hogs: Vec<_> = (0..40)
        .map(|i| hung(&unique(&format!("list-hung{i}"))))
        .collect();
    let start = Instant::now();
    let entries = npipe::list_pipes().unwrap();
    let took = start.elapsed();
    let silent = entries
        .iter()
        .filter(|e| matches!(e, PipeEntry::NotAnswering { .. }))
        .count();
    for (_, path) in &hogs {
        let _ = std::fs::remove_file(path);
    }
    assert!(silent >= 40, "{silent} not answering");
    assert!(took < Duration::from_secs(10), "a listing took {took:?}");
}

/// A socket that never accepts and whose backlog is full (anyone can bind
/// one in the namespace): a blocking connect to it would wait for ever, so
/// a query gives up within its deadline and a listing calls it not
/// answering instead of hanging.
#[test]
fn a_full_backlog_does_not_hang_a_query_or_a_listing() {
    use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
    let name = unique("full-backlog");
    let path = npipe::namespace_directory().join(&name);
    let listener = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )
    .unwrap();
    let addr = SocketAddrUnix::new(&path).unwrap();
    rustix::net::bind(&listener, &addr).unwrap();
    rustix::net::listen(&listener, 0).unwrap();
    let mut queued = Vec::new();
    loop {
        let c = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            None,
        )
        .unwrap();
        match rustix::net::connect(&c, &addr) {
            Ok(()) => queued.push(c),
            Err(_) => break,
        }
        assert!(queued.len() < 64, "the backlog never filled");
    }
    let start = Instant::now();
    let e = npipe::query_pipe(name.as_str()).unwrap_err();
    assert_eq!(e.code(), npipe::ErrorCode::Timeout, "{e}");
    let listed = npipe::list_pipes().unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
    assert!(
        listed
            .iter()
            .any(|p| matches!(p, PipeEntry::NotAnswering { file } if *file == name)),
        "{listed:?}"
    );
    drop(queued);
    let _ = std::fs::remove_file(&path);
}
