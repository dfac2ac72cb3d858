//! Memory is bounded by the server, not by what clients send: sixteen
//! clients each leave a 48 MiB message unfinished at 40 MiB, and the server
//! holds no more than its budget (it stops reading from the clients the
//! budget cannot cover, whose writes then block), yet delivers every message
//! once they finish.

use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crate::common::{on_both_servers, server_on, unique, Front};
use crate::raw_client::{self as rc, RawClient};

on_both_servers!(
    unfinished_large_messages_stay_within_the_budget,
    one_users_stalled_writers_cannot_pin_the_budget,
);

const CLIENTS: usize = 16;
const TOTAL: usize = 48 << 20;
/// Sent before a client pauses.
const FIRST: usize = 40 << 20;
const BUDGET: usize = 64 << 20;
/// The server's own memory besides the messages: the program, thread
/// stacks, buffers (measured 5 to 9 MiB).
const SLACK_KIB: u64 = 24 << 10;

/// Sends `len` bytes of `byte` in 1 MiB writes.
fn send_bytes(c: &mut RawClient, byte: u8, len: usize) {
    let chunk = vec![byte; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(chunk.len());
        c.send(&chunk[..n]).unwrap();
        left -= n;
    }
}

/// Reads one framed message.
fn read_frame(c: &mut RawClient) -> Vec<u8> {
    use std::io::Read;
    let mut len = [0u8; 4];
    c.stream.read_exact(&mut len).unwrap();
    let mut m = vec![0u8; u32::from_le_bytes(len) as usize];
    c.stream.read_exact(&mut m).unwrap();
    m
}

/// Uid 65534 sends the headers of two 48 MiB messages and stalls: it may
/// hold at most half of a 100 MiB budget, so its second message waits and
/// the owner's own 48 MiB message still goes through (without the share the
/// stalled pair held 96 MiB and the owner's waited for ever).
fn one_users_stalled_writers_cannot_pin_the_budget(front: Front) {
    if let Some(why) = crate::shared_copy::cannot_run_as(65534) {
        crate::shared_copy::skipped(&format!("this test writes as uid 65534, and {why}"));
        return;
    }
    let name = unique("budget-share");
    let budget = format!("budget={}", 100 << 20);
    let sd = "sd=allow everyone=full";
    let _srv = server_on(front, &name, &["mode=digest", &budget, sd]);
    let len = (48u32 << 20).to_string();
    let mut staller = crate::common::spawn_as(65534, "stall_writers", &[&name, "2", &len]);
    assert_eq!(staller.expect("stalled"), "2");
    let mut c = npipe::ClientOptions::new().open(name.as_str()).unwrap();
    c.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let message = vec![1u8; 48 << 20];
    c.write_message(&message)
        .expect("the owner's message could not go in");
    let reply = String::from_utf8(c.recv_message().unwrap()).unwrap();
    assert_eq!(reply, format!("{} {}", message.len(), message.len()));
    drop(staller);
}

fn unfinished_large_messages_stay_within_the_budget(front: Front) {
    let name = unique("budget");
    let budget = format!("budget={BUDGET}");
    let srv = server_on(front, &name, &["mode=digest", &budget]);
    let go = Arc::new((Mutex::new(false), Condvar::new()));
    let (sent_tx, sent_rx) = mpsc::channel();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let (name, go, sent) = (name.clone(), Arc::clone(&go), sent_tx.clone());
            std::thread::spawn(move || {
                let mut c = RawClient::connect(&name).unwrap();
                c.send(&rc::hello(&name, rc::CONNECT, rc::READ_WRITE, 0))
                    .unwrap();
                assert!(matches!(c.reply().unwrap(), rc::Reply::Connected { .. }));
                let byte = i as u8 + 1;
                c.send(&(TOTAL as u32).to_le_bytes()).unwrap();
                send_bytes(&mut c, byte, FIRST);
                sent.send(i).unwrap();
                let (lock, cv) = &*go;
                let mut released = lock.lock().unwrap();
                while !*released {
                    released = cv.wait(released).unwrap();
                }
                drop(released);
                send_bytes(&mut c, byte, TOTAL - FIRST);
                let reply = String::from_utf8(read_frame(&mut c)).unwrap();
                assert_eq!(reply, format!("{TOTAL} {}", TOTAL as u64 * u64::from(byte)));
            })
        })
        .collect();
    drop(sent_tx);
    // One client got its 40 MiB in; the rest are held back (the budget
    // covers one 48 MiB message at a time): let them all finish.
    sent_rx.recv().unwrap();
    let (lock, cv) = &*go;
    *lock.lock().unwrap() = true;
    cv.notify_all();
    for c in clients {
        c.join().expect("a client's message was lost or wrong");
    }
    let peak = crate::procfs::child_status_kib(srv.pid(), "VmHWM");
    let bound = (BUDGET as u64 >> 10) + SLACK_KIB;
    assert!(
        peak <= bound,
        "server peak RSS {peak} KiB over its budget plus slack, {bound} KiB"
    );
    eprintln!("memory budget: server peak RSS {peak} KiB (bound {bound} KiB)");
}
