//! The grant a client was given at connect bounds what the server reads
//! from it and sends to it, whatever the client does afterwards (Windows
//! checks the granted access on every `WriteFile`). Each test talks to the
//! server through a hand-written client (`support/raw_client.rs`), since an
//! honest client never writes on a read-only grant.

use std::time::Duration;

use crate::common::{on_both_servers, server_on, spawn_as, still_serves, unique, Front};
use crate::raw_client::{self as rc, RawClient, Reply};

on_both_servers!(
    a_reader_that_writes_is_never_read,
    a_writer_is_never_sent_anything,
    a_pipelined_request_on_a_read_grant_is_refused,
    a_writer_the_descriptor_denies_writing_is_never_read,
    a_query_reports_the_grant_the_user_really_has,
);

const NOBODY: u32 = 65534;

fn need_root(test: &str) -> bool {
    crate::common::can_run_as(NOBODY, test)
}

/// The owner asks for read only, then writes frames to an echo server: its
/// writes soon fail with a broken pipe (the server shut its read side),
/// nothing is echoed, and the server end's read fails with *access denied*.
fn a_reader_that_writes_is_never_read(front: Front) {
    let name = unique("grant-reader");
    let mut srv = server_on(front, &name, &[]);
    let mut c = RawClient::connect(&name).unwrap();
    c.send(&rc::hello(&name, rc::CONNECT, rc::READ, 0)).unwrap();
    assert_eq!(c.reply().unwrap(), Reply::Connected { granted: rc::READ });
    srv.expect("conn");
    let outcome = c.write_until_refused(b"not yours to write");
    assert_eq!(outcome, "epipe", "a read-only client could keep writing");
    assert_eq!(c.read_some(Duration::from_millis(500)), None, "echoed");
    assert_eq!(srv.expect("end"), "5");
    still_serves(&name);
}

/// The other direction: a client granted write only is never sent data.
/// The echo server reads its message, and its write back fails with
/// *access denied* instead of reaching a client that may not read.
fn a_writer_is_never_sent_anything(front: Front) {
    let name = unique("grant-writer");
    let mut srv = server_on(front, &name, &[]);
    let mut c = RawClient::connect(&name).unwrap();
    c.send(&rc::hello(&name, rc::CONNECT, rc::WRITE, 0))
        .unwrap();
    assert_eq!(c.reply().unwrap(), Reply::Connected { granted: rc::WRITE });
    srv.expect("conn");
    c.send(&rc::frame(b"echo this to a writer")).unwrap();
    assert_eq!(srv.expect("end"), "5");
    assert_eq!(c.read_some(Duration::from_millis(500)), None, "sent data");
    still_serves(&name);
}

/// `CallNamedPipe`'s pipelined form needs write access for its request.
fn a_pipelined_request_on_a_read_grant_is_refused(front: Front) {
    let name = unique("grant-pipelined");
    let _srv = server_on(front, &name, &[]);
    let mut c = RawClient::connect(&name).unwrap();
    let mut hello = rc::hello(&name, rc::CONNECT, rc::READ, rc::PIPELINED);
    hello.extend(rc::frame(b"a request from a reader"));
    c.send(&hello).unwrap();
    assert_eq!(c.reply().unwrap(), Reply::Refused { code: 5 });
    assert_eq!(c.read_some(Duration::from_millis(200)), None);
    still_serves(&name);
}

/// `deny user:65534=w`: uid 65534 may connect to read, and what it writes
/// through a hand-written client is never read, pipelined or not.
fn a_writer_the_descriptor_denies_writing_is_never_read(front: Front) {
    if !need_root("a_writer_the_descriptor_denies_writing_is_never_read") {
        return;
    }
    let name = unique("grant-deny-w");
    let sd = "sd=allow everyone=full; deny user:65534=w";
    let _srv = server_on(front, &name, &[sd]);
    let mut asks_rw = spawn_as(NOBODY, "raw", &[&name, "access=rw"]);
    assert_eq!(asks_rw.expect("reply"), "Refused { code: 5 }");
    let mut pipelined = spawn_as(NOBODY, "raw", &[&name, "access=r", "pipelined"]);
    assert_eq!(pipelined.expect("reply"), "Refused { code: 5 }");
    let mut reader = spawn_as(NOBODY, "raw", &[&name, "access=r"]);
    assert_eq!(reader.expect("reply"), "Connected { granted: 1 }");
    assert_eq!(reader.expect("write"), "epipe");
    assert_eq!(reader.expect("echo"), "no");
    still_serves(&name);
}

/// A query answers with the access the asking user could get, not what the
/// pipe offers anyone.
fn a_query_reports_the_grant_the_user_really_has(front: Front) {
    if !need_root("a_query_reports_the_grant_the_user_really_has") {
        return;
    }
    let name = unique("grant-query");
    let sd = "sd=allow everyone=full; deny user:65534=w";
    let _srv = server_on(front, &name, &[sd]);
    let mut nobody = spawn_as(NOBODY, "raw", &[&name, "query"]);
    assert_eq!(nobody.expect("reply"), "Info { granted: 1 }");
    let mut me = RawClient::connect(&name).unwrap();
    me.send(&rc::hello(&name, rc::QUERY, rc::READ_WRITE, 0))
        .unwrap();
    assert_eq!(me.reply().unwrap(), Reply::Info { granted: 3 });
}
