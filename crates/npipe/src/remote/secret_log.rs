//! The gateway's record of its connections' first TLS 1.3 traffic
//! secrets, taken from rustls as it makes them (its `KeyLog` hook, what
//! `SSLKEYLOGFILE` uses), so that a connection handed over to its pipe's
//! server takes the secrets its keys come from: with them the server
//! follows a key update, and makes its own before its cipher's record
//! limit. rustls gives the keys of a connection (secret extraction) but
//! not its secrets, nor which log entry is whose; an entry is found by the
//! key its server secret gives, which is the extracted sending key.
//!
//! Bounded: an entry goes when its connection is handed over, and the
//! oldest go first past [`MAX_ENTRIES`] (a connection whose entry went is
//! handed over with its keys alone, as before).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use super::record_layer::key_of_secret;

/// Entries kept at most (handshakes done, not yet handed over or gone).
pub(crate) const MAX_ENTRIES: usize = 16 * 1024;

const CLIENT: &str = "CLIENT_TRAFFIC_SECRET_0";
const SERVER: &str = "SERVER_TRAFFIC_SECRET_0";

/// A connection's first traffic secrets: the client's and the server's.
#[derive(Default)]
struct Pair {
    client: Option<Vec<u8>>,
    server: Option<Vec<u8>>,
}

impl Drop for Pair {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.client.zeroize();
        self.server.zeroize();
    }
}

#[derive(Default)]
struct Entries {
    /// By client random, until both secrets came.
    pairing: HashMap<Vec<u8>, Pair>,
    /// By the key the server's secret gives.
    whole: HashMap<[u8; 32], Pair>,
    /// Both maps' keys, oldest first (a key may be gone already).
    order: VecDeque<Key>,
}

enum Key {
    Pairing(Vec<u8>),
    Whole([u8; 32]),
}

/// The log (see the module's doc). `Debug` shows how many entries it
/// holds, never a secret.
#[derive(Default)]
pub(crate) struct SecretLog(Mutex<Entries>);

impl std::fmt::Debug for SecretLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let e = self.0.lock().unwrap_or_else(|e| e.into_inner());
        f.debug_struct("SecretLog")
            .field("pairing", &e.pairing.len())
            .field("whole", &e.whole.len())
            .finish()
    }
}

impl SecretLog {
    /// Takes the secrets of the connection whose server sends with
    /// `server_key`: (the client's, the server's).
    pub fn take(&self, server_key: &[u8; 32]) -> Option<(Vec<u8>, Vec<u8>)> {
        let mut e = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let mut pair = e.whole.remove(server_key)?;
        Some((pair.client.take()?, pair.server.take()?))
    }

    /// Drops the oldest entries past [`MAX_ENTRIES`], and the order's
    /// keys of entries taken since (past twice as many).
    fn evict(e: &mut Entries) {
        while e.pairing.len() + e.whole.len() > MAX_ENTRIES || e.order.len() > 2 * MAX_ENTRIES {
            match e.order.pop_front() {
                Some(Key::Pairing(random)) => drop(e.pairing.remove(&random)),
                Some(Key::Whole(key)) => drop(e.whole.remove(&key)),
                None => break,
            }
        }
    }
}

impl rustls::KeyLog for SecretLog {
    fn will_log(&self, label: &str) -> bool {
        label == CLIENT || label == SERVER
    }

    fn log(&self, label: &str, client_random: &[u8], secret: &[u8]) {
        let mut e = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if !e.pairing.contains_key(client_random) {
            e.order.push_back(Key::Pairing(client_random.to_vec()));
        }
        let pair = e.pairing.entry(client_random.to_vec()).or_default();
        match label {
            CLIENT => pair.client = Some(secret.to_vec()),
            SERVER => pair.server = Some(secret.to_vec()),
            _ => return,
        }
        if pair.client.is_some() && pair.server.is_some() {
            let pair = e.pairing.remove(client_random).expect("just filled");
            // A suite whose key is not 256 bits is never handed over.
            if let Some(key) = pair.server.as_deref().and_then(key_of_secret) {
                e.order.push_back(Key::Whole(key));
                e.whole.insert(key, pair);
            }
        }
        Self::evict(&mut e);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::KeyLog;

    #[test]
    fn a_pair_is_found_by_its_server_key_once() {
        let log = SecretLog::default();
        let (client, server) = (vec![1u8; 48], vec![2u8; 48]);
        log.log(CLIENT, b"random-1", &client);
        log.log("EXPORTER_SECRET", b"random-1", &[9; 48]);
        assert!(!log.will_log("EXPORTER_SECRET"));
        log.log(SERVER, b"random-1", &server);
        let key = key_of_secret(&server).unwrap();
        assert_eq!(log.take(&key), Some((client, server)));
        assert_eq!(log.take(&key), None, "taken once");
        assert!(!format!("{log:?}").contains("[2"), "no secret shows");
    }

    #[test]
    fn the_oldest_entries_go_first() {
        let log = SecretLog::default();
        for i in 0..MAX_ENTRIES + 10 {
            let random = (i as u64).to_le_bytes();
            let mut server = vec![0u8; 32];
            server[..8].copy_from_slice(&random);
            log.log(CLIENT, &random, &[7; 32]);
            log.log(SERVER, &random, &server);
        }
        let oldest = key_of_secret(&[0u8; 32]).unwrap();
        assert_eq!(log.take(&oldest), None, "evicted");
        let mut newest = vec![0u8; 32];
        newest[..8].copy_from_slice(&((MAX_ENTRIES + 9) as u64).to_le_bytes());
        assert!(log.take(&key_of_secret(&newest).unwrap()).is_some());
        let e = log.0.lock().unwrap();
        assert!(e.pairing.len() + e.whole.len() <= MAX_ENTRIES);
    }
}
