//! A hand-written npipe client for hostile tests. It writes HELLOs and
//! frames byte by byte as `docs/PROTOCOL.md` gives them, with none of the
//! library's client code, so that it can do what an honest client never
//! would: write on a read-only grant, pipeline a request it may not send,
//! connect and stay silent.

#![allow(dead_code)] // each test binary uses a different part

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

/// HELLO access byte: read.
pub const READ: u8 = 1;
/// HELLO access byte: write.
pub const WRITE: u8 = 2;
/// HELLO access byte: read and write.
pub const READ_WRITE: u8 = 3;
/// HELLO flags bit 0: a framed request follows.
pub const PIPELINED: u8 = 1;
/// HELLO kind byte: connect.
pub const CONNECT: u8 = 1;
/// HELLO kind byte: query.
pub const QUERY: u8 = 2;

/// A HELLO (PROTOCOL.md §2) for `name` with no wait, impersonation allowed
/// and a 1 MiB limit.
pub fn hello(name: &str, kind: u8, access: u8, flags: u8) -> Vec<u8> {
    let name = name.to_lowercase();
    let mut b = Vec::with_capacity(24 + name.len());
    b.extend_from_slice(b"NPIP");
    b.push(1); // version
    b.push(kind);
    b.push(access);
    b.push(1); // read mode: message
    b.push(2); // impersonation
    b.push(flags);
    b.extend_from_slice(&(name.len() as u16).to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes()); // wait: none
    b.extend_from_slice(&(1u32 << 20).to_le_bytes()); // max_message
    b.extend_from_slice(&0u16.to_le_bytes()); // principal_len
    b.extend_from_slice(&0u16.to_le_bytes()); // computer_len
    b.extend_from_slice(name.as_bytes());
    b
}

/// HELLO flags bit 1: a u32 local uid follows the strings (gateway only).
pub const LOCAL_USER: u8 = 2;

/// A connect HELLO (read and write) that names a remote client, as a
/// gateway sends it: its principal, its computer, and the local user it
/// maps to, if any.
pub fn remote_hello(
    name: &str,
    principal: &str,
    computer: &str,
    local_user: Option<u32>,
) -> Vec<u8> {
    let flags = if local_user.is_some() { LOCAL_USER } else { 0 };
    let mut b = hello(name, CONNECT, READ_WRITE, flags);
    b[20..22].copy_from_slice(&(principal.len() as u16).to_le_bytes());
    b[22..24].copy_from_slice(&(computer.len() as u16).to_le_bytes());
    b.extend_from_slice(principal.as_bytes());
    b.extend_from_slice(computer.as_bytes());
    if let Some(uid) = local_user {
        b.extend_from_slice(&uid.to_le_bytes());
    }
    b
}

/// HELLO flag bit 3: the gateway offers to hand the connection over
/// (PROTOCOL.md §6c; a connect with a principal only).
pub const HAND_OFF: u8 = 8;

/// HELLO flag bit 2: the local user's groups follow its uid.
pub const LOCAL_GROUPS: u8 = 4;

/// [`remote_hello`] with the mapped user's groups, as a gateway sends them.
pub fn remote_hello_with_groups(
    name: &str,
    principal: &str,
    computer: &str,
    local_user: u32,
    groups: &[u32],
) -> Vec<u8> {
    let mut b = remote_hello(name, principal, computer, Some(local_user));
    b[9] |= LOCAL_GROUPS;
    b.extend_from_slice(&(groups.len() as u16).to_le_bytes());
    for gid in groups {
        b.extend_from_slice(&gid.to_le_bytes());
    }
    b
}

/// [`hello`] for a client that waits for ever for a free instance.
pub fn waiting_hello(name: &str, access: u8) -> Vec<u8> {
    let mut b = hello(name, CONNECT, access, 0);
    b[12..16].copy_from_slice(&u32::MAX.to_le_bytes()); // wait: forever
    b
}

/// One message-type frame: a u32 length, then the bytes.
pub fn frame(payload: &[u8]) -> Vec<u8> {
    let mut b = (payload.len() as u32).to_le_bytes().to_vec();
    b.extend_from_slice(payload);
    b
}

/// What the server answered (PROTOCOL.md §3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// OK, with the access granted.
    Connected { granted: u8 },
    /// A query's answer, with the access this peer could get.
    Info { granted: u8 },
    /// A refusal with its Win32 code.
    Refused { code: u32 },
    /// The server closed the connection without a reply.
    Closed,
}

/// A raw connection to a pipe's socket.
pub struct RawClient {
    pub stream: UnixStream,
}

impl RawClient {
    /// Connects to the socket of `name` in the namespace directory.
    pub fn connect(name: &str) -> io::Result<RawClient> {
        let path = npipe::namespace_directory().join(name.to_lowercase());
        let stream = UnixStream::connect(path)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(RawClient { stream })
    }

    /// Sends these bytes.
    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Reads exactly one REPLY and nothing past it.
    pub fn reply(&mut self) -> io::Result<Reply> {
        let mut fixed = [0u8; 12];
        if let Err(e) = self.stream.read_exact(&mut fixed) {
            return match e.kind() {
                io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset => Ok(Reply::Closed),
                _ => Err(e),
            };
        }
        assert_eq!(&fixed[..5], b"NPIP\x01", "not a REPLY: {fixed:?}");
        let code = u32::from_le_bytes(fixed[8..12].try_into().unwrap());
        match fixed[5] {
            0 | 1 => {
                let mut desc = [0u8; 38];
                self.stream.read_exact(&mut desc)?;
                let name_len = u16::from_le_bytes([desc[36], desc[37]]) as usize;
                self.stream.read_exact(&mut vec![0u8; name_len])?;
                if fixed[5] == 1 {
                    // An INFO goes on with the descriptor's text.
                    let mut len = [0u8; 2];
                    self.stream.read_exact(&mut len)?;
                    self.stream
                        .read_exact(&mut vec![0u8; u16::from_le_bytes(len) as usize])?;
                }
                let granted = desc[2];
                Ok(if fixed[5] == 0 {
                    Reply::Connected { granted }
                } else {
                    Reply::Info { granted }
                })
            }
            2 => {
                let mut len = [0u8; 2];
                self.stream.read_exact(&mut len)?;
                self.stream
                    .read_exact(&mut vec![0u8; u16::from_le_bytes(len) as usize])?;
                Ok(Reply::Refused { code })
            }
            s => panic!("unknown REPLY status {s}"),
        }
    }

    /// Writes frames until one fails (or 100 went, 10 ms apart: the server
    /// may shut its side just after its OK), and says how the last one did
    /// (see [`write_outcome`]).
    pub fn write_until_refused(&mut self, payload: &[u8]) -> String {
        let mut outcome = String::new();
        for _ in 0..100 {
            outcome = write_outcome(self.send(&frame(payload)));
            if outcome != "ok" {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        outcome
    }

    /// Reads whatever comes next within `wait`: `Some(bytes)` if any came,
    /// `None` on end of stream or silence.
    pub fn read_some(&mut self, wait: Duration) -> Option<Vec<u8>> {
        self.stream.set_read_timeout(Some(wait)).unwrap();
        let mut buf = vec![0u8; 4096];
        let got = loop {
            match self.stream.read(&mut buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(0) | Err(_) => break None,
                Ok(n) => break Some(buf[..n].to_vec()),
            }
        };
        self.stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        got
    }
}

/// A short description of a write's outcome for `@@` lines and asserts:
/// `ok`, `epipe`, or the error.
pub fn write_outcome(r: io::Result<()>) -> String {
    match r {
        Ok(()) => "ok".into(),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => "epipe".into(),
        Err(e) => format!("error {e}"),
    }
}
