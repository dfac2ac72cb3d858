//! One connection's first TLS 1.3 traffic secrets, taken from rustls as it
//! makes them (its `KeyLog` hook, what `SSLKEYLOGFILE` uses), so that the
//! connection, handed over to its pipe's server, takes the secrets its
//! keys come from: with them the server follows a key update, and makes
//! its own before its cipher's record limit. rustls' secret extraction
//! gives keys, not secrets.
//!
//! Each connection the gateway offers a hand-over gets a rustls
//! configuration of its own with its own log, so no connection's entry
//! can be another's, nothing outlives the connection, and nothing needs
//! evicting. The secrets are zeroed when dropped.

use std::sync::Mutex;

use zeroize::Zeroizing;

/// A secret, zeroed when dropped (or replaced).
type Secret = Zeroizing<Vec<u8>>;

const CLIENT: &str = "CLIENT_TRAFFIC_SECRET_0";
const SERVER: &str = "SERVER_TRAFFIC_SECRET_0";

#[derive(Default)]
struct Pair {
    client: Option<Secret>,
    server: Option<Secret>,
}

/// The log of one connection (see the module's doc). `Debug` shows which
/// secrets it holds, never a secret.
#[derive(Default)]
pub(crate) struct ConnectionSecrets(Mutex<Pair>);

impl std::fmt::Debug for ConnectionSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let p = self.0.lock().unwrap_or_else(|e| e.into_inner());
        f.debug_struct("ConnectionSecrets")
            .field("client", &p.client.is_some())
            .field("server", &p.server.is_some())
            .finish()
    }
}

impl ConnectionSecrets {
    /// Takes the secrets, once: (the client's, the server's).
    pub fn take(&self) -> Option<(Secret, Secret)> {
        let mut p = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let client = p.client.take();
        let server = p.server.take();
        Some((client?, server?))
    }
}

impl rustls::KeyLog for ConnectionSecrets {
    fn will_log(&self, label: &str) -> bool {
        label == CLIENT || label == SERVER
    }

    fn log(&self, label: &str, _client_random: &[u8], secret: &[u8]) {
        let mut p = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match label {
            CLIENT => p.client = Some(Zeroizing::new(secret.to_vec())),
            SERVER => p.server = Some(Zeroizing::new(secret.to_vec())),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::KeyLog;

    #[test]
    fn the_pair_is_taken_once_and_nothing_else_is_kept() {
        let log = ConnectionSecrets::default();
        assert!(!log.will_log("EXPORTER_SECRET"));
        log.log(CLIENT, b"random", &[1; 48]);
        assert_eq!(log.take(), None, "half a pair is none");
        log.log(CLIENT, b"random", &[1; 48]);
        log.log(SERVER, b"random", &[2; 48]);
        let (client, server) = log.take().unwrap();
        assert_eq!((&client[..], &server[..]), (&[1u8; 48][..], &[2u8; 48][..]));
        assert_eq!(log.take(), None, "taken once");
        log.log(SERVER, b"random", &[2; 48]);
        assert!(!format!("{log:?}").contains("[2"), "no secret shows");
    }
}
