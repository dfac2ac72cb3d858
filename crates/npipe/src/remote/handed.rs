//! A pipe server's side of a gateway's hand-over (PROTOCOL.md §6c): after
//! an OK that took the offer, the HAND-OFF is read from the gateway's
//! socket (the remote client's TCP socket rides beside it), and the end
//! runs on that connection with the keys it brought, the gateway's socket
//! held open beside it so the gateway can count the connection until it
//! ends. Neither acceptor waits for it: the blocking front end reads it in
//! `accept`, on the caller's thread (a gateway slow to send it holds that
//! `accept` up, 5 s at most), the tokio one in a task of its own per
//! connection.

use std::time::{Duration, Instant};

use super::record_layer::RecordLayer;
use super::tls_transport::TlsTransport;
use crate::proto::handoff::{HandOff, SessionKeys, LEN};
use crate::sys::Socket;
use crate::transport::Transport;

/// How long a gateway has to send the HAND-OFF after the OK (it sends it
/// as soon as it has passed the OK on).
pub(crate) const HAND_OFF_WAIT: Duration = Duration::from_secs(5);

/// What came after the OK.
#[derive(Debug)]
pub(crate) enum Settled {
    /// The connection, and its keys.
    Handed(Socket, SessionKeys),
    /// The gateway relays: the end runs on its socket as any other.
    Relayed,
    /// Nothing sound came: the end is given a connection that is already
    /// broken (its client sees a broken pipe), with why.
    Broken(String),
}

/// The HAND-OFF as it comes in, a read at a time: the bytes so far, and the
/// socket that rode along.
#[derive(Debug)]
pub(crate) struct Incoming {
    /// Zeroed when dropped: the HAND-OFF holds keys and secrets.
    buf: zeroize::Zeroizing<[u8; LEN]>,
    got: usize,
    socket: Option<Socket>,
}

impl Default for Incoming {
    fn default() -> Self {
        Incoming {
            buf: zeroize::Zeroizing::new([0; LEN]),
            got: 0,
            socket: None,
        }
    }
}

impl Incoming {
    /// Room for the next read: never past the message (what follows it is
    /// the client's, for the end).
    pub fn room(&mut self) -> &mut [u8] {
        &mut self.buf[self.got..]
    }

    /// A read put `n` bytes into [`Self::room`], with `socket` beside them:
    /// `Some` once the message is whole (or cannot be), else `None`.
    pub fn took(&mut self, n: usize, socket: Option<Socket>) -> Option<Settled> {
        if socket.is_some() && (self.socket.is_some() || self.got != 0) {
            // A socket rides on the message's first bytes, once.
            return Some(Settled::Broken(
                "the gateway sent a socket out of place".into(),
            ));
        }
        self.socket = self.socket.take().or(socket);
        if n == 0 {
            return Some(Settled::Broken(
                "the gateway closed before it handed the connection over".into(),
            ));
        }
        self.got += n;
        match HandOff::decode(&self.buf[..self.got]) {
            Ok(None) => None,
            Ok(Some(HandOff::Handed(keys))) => Some(match self.socket.take() {
                Some(tcp) => Settled::Handed(tcp, keys),
                None => Settled::Broken("the gateway's hand-over came without a connection".into()),
            }),
            Ok(Some(HandOff::Relayed)) if self.socket.is_none() => Some(Settled::Relayed),
            Ok(Some(HandOff::Relayed)) => Some(Settled::Broken(
                "the gateway relays, yet sent a connection".into(),
            )),
            Err(e) => Some(Settled::Broken(format!("a malformed hand-over: {e}"))),
        }
    }
}

/// One read of the HAND-OFF from `local`, the gateway's socket (`sender`
/// its uid): what came after the OK once it is whole or cannot be,
/// `Ok(None)` for more, `WouldBlock` if nothing was there.
fn read_some(
    local: &Socket,
    sender: u32,
    incoming: &mut Incoming,
) -> std::io::Result<Option<Settled>> {
    match local.recv_with_tcp_socket(incoming.room(), sender) {
        Ok((n, socket)) => Ok(incoming.took(n, socket)),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Err(e),
        Err(e) => Ok(Some(Settled::Broken(format!(
            "reading the hand-over failed: {e}"
        )))),
    }
}

/// Reads the HAND-OFF on `local`, the gateway's socket (`sender` its uid),
/// waiting until `deadline` (this thread blocks). It is usually there
/// already: read first, waited for only if not.
pub(crate) fn receive_blocking(local: &Socket, sender: u32, deadline: Instant) -> Settled {
    let mut incoming = Incoming::default();
    loop {
        match read_some(local, sender, &mut incoming) {
            Ok(Some(settled)) => return settled,
            Ok(None) => continue,
            Err(_would_block) => {}
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match local.wait_readable(Some(left)) {
            Ok(true) => {}
            Ok(false) => return timed_out(),
            Err(e) => return Settled::Broken(format!("waiting for the hand-over failed: {e}")),
        }
    }
}

/// The same on tokio's reactor. It is usually there already: only if not
/// is a duplicate of `local` registered to hear that it is readable.
#[cfg(feature = "tokio")]
pub(crate) async fn receive_async(local: &Socket, sender: u32, deadline: Instant) -> Settled {
    let mut incoming = Incoming::default();
    loop {
        match read_some(local, sender, &mut incoming) {
            Ok(Some(settled)) => return settled,
            Ok(None) => continue,
            Err(_would_block) => break,
        }
    }
    let watch = match local
        .try_clone()
        .and_then(|dup| crate::sys::register_async_owned(dup.into()))
    {
        Ok(watch) => watch,
        Err(e) => return Settled::Broken(format!("cannot wait for the hand-over: {e}")),
    };
    let read = async {
        loop {
            let mut guard = match watch.readable().await {
                Ok(guard) => guard,
                Err(e) => return Settled::Broken(format!("waiting for the hand-over failed: {e}")),
            };
            match guard.try_io(|_| read_some(local, sender, &mut incoming)) {
                Ok(Ok(Some(settled))) => return settled,
                Ok(Ok(None)) => {}
                Ok(Err(e)) => return Settled::Broken(format!("reading the hand-over failed: {e}")),
                // Not readable after all: readiness was cleared; wait again.
                Err(_would_block) => {}
            }
        }
    };
    match ::tokio::time::timeout_at(deadline.into(), read).await {
        Ok(settled) => settled,
        Err(_) => timed_out(),
    }
}

fn timed_out() -> Settled {
    Settled::Broken(format!(
        "the gateway did not hand the connection over within {} s",
        HAND_OFF_WAIT.as_secs()
    ))
}

/// The transport a handed-over end runs on: TLS with `peer` (the remote
/// client, for errors) over `tcp`, with `lease`, the gateway's socket,
/// held open beside it until the end closes.
/// The gateway's socket comes back with why if it cannot be made.
pub(crate) fn transport(
    tcp: Socket,
    keys: &SessionKeys,
    lease: Socket,
    peer: String,
) -> Result<TlsTransport, (Socket, String)> {
    if let Err(e) = tcp.set_nonblocking(true) {
        return Err((
            lease,
            format!("cannot make the connection non-blocking: {e}"),
        ));
    }
    match RecordLayer::new(keys) {
        Ok(layer) => Ok(TlsTransport::handed(tcp, layer, peer).holding(lease)),
        Err(why) => Err((lease, why)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::handoff::TrafficKeys;

    fn keys() -> SessionKeys {
        let one = TrafficKeys {
            seq: 1,
            key: [5; 32],
            iv: [6; 12],
            secret: Vec::new(),
        };
        SessionKeys {
            suite: 0x1302,
            tx: one.clone(),
            rx: one,
        }
    }

    fn message(m: &HandOff) -> Vec<u8> {
        let mut out = Vec::new();
        m.encode(&mut out);
        out
    }

    /// Feeds `bytes` in pieces of `step`, the socket (if any) on the
    /// first piece.
    fn feed(bytes: &[u8], step: usize, socket: Option<Socket>) -> Option<Settled> {
        let mut incoming = Incoming::default();
        let mut socket = socket;
        for piece in bytes.chunks(step) {
            let room = incoming.room();
            room[..piece.len()].copy_from_slice(piece);
            if let Some(done) = incoming.took(piece.len(), socket.take()) {
                return Some(done);
            }
        }
        None
    }

    fn a_socket() -> Socket {
        Socket::pair().unwrap().0
    }

    #[test]
    fn a_hand_over_in_any_pieces() {
        let handed = message(&HandOff::Handed(keys()));
        for step in [1, 7, LEN] {
            match feed(&handed, step, Some(a_socket())) {
                Some(Settled::Handed(_, k)) => assert_eq!(k, keys()),
                other => panic!("step {step}: {other:?}"),
            }
        }
        let relayed = message(&HandOff::Relayed);
        assert!(matches!(feed(&relayed, 5, None), Some(Settled::Relayed)));
        assert!(feed(&handed[..LEN - 1], 3, Some(a_socket())).is_none());
    }

    #[test]
    fn anything_unsound_breaks_the_connection() {
        let handed = message(&HandOff::Handed(keys()));
        let relayed = message(&HandOff::Relayed);
        let cases = [
            (feed(&handed, LEN, None), "without a connection"),
            (
                feed(&relayed, LEN, Some(a_socket())),
                "yet sent a connection",
            ),
            (feed(b"GARBAGE-GARBAGE", 4, None), "malformed"),
        ];
        for (got, why) in cases {
            match got {
                Some(Settled::Broken(text)) => assert!(text.contains(why), "{text}"),
                other => panic!("{why}: {other:?}"),
            }
        }
        // A socket on a later piece, or a second one.
        let mut incoming = Incoming::default();
        incoming.room()[..3].copy_from_slice(&handed[..3]);
        assert!(incoming.took(3, None).is_none());
        incoming.room()[..3].copy_from_slice(&handed[3..6]);
        assert!(matches!(
            incoming.took(3, Some(a_socket())),
            Some(Settled::Broken(_))
        ));
        // The gateway closing early.
        let mut incoming = Incoming::default();
        assert!(matches!(incoming.took(0, None), Some(Settled::Broken(_))));
    }
}
