//! A TLS 1.3 connection's record layer alone, from the traffic keys of a
//! handshake done elsewhere: what a pipe server runs a remote client's
//! connection on once the gateway has handed it over (PROTOCOL.md §6c). No
//! I/O: ciphertext in, plaintext out and back, as a rustls connection
//! does; the cipher is rustls' own (the suite's `Tls13AeadAlgorithm`), so
//! no cryptography is written here, only the framing of RFC 8446 §5.
//!
//! It carries application data and close_notify both ways, and key
//! updates (RFC 8446 §4.6.3) where the gateway sent the traffic secrets
//! beside the keys: the peer's are followed (answered when asked), and
//! this side updates its own before its cipher's record limit (2^23
//! records for AES-256-GCM, after which rustls peers update theirs too).
//! Without the secrets a key update ends the connection with a clear
//! error, as do a record that does not decrypt, any other alert, and
//! reaching the record limit.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Read, Write};

use rustls::crypto::cipher::{
    AeadKey, InboundOpaqueMessage, Iv, MessageDecrypter, MessageEncrypter, OutboundChunks,
    OutboundPlainMessage,
};
use rustls::crypto::tls13::{HkdfExpander, OkmBlock};
use rustls::{
    CipherSuite, ConnectionTrafficSecrets, ContentType, ExtractedSecrets, ProtocolVersion,
    SupportedCipherSuite,
};

pub(crate) use crate::proto::handoff::{SessionKeys, TrafficKeys};

/// A record's header: type, legacy version, length.
const HEADER: usize = 5;
/// The most plaintext a record carries (RFC 8446 §5.1).
const MAX_PLAINTEXT: usize = 16 * 1024;
/// The longest record a peer may send (RFC 8446 §5.2).
const MAX_CIPHERTEXT: usize = MAX_PLAINTEXT + 256;
/// Ciphertext read ahead of decryption at most: a few records.
const READ_AHEAD: usize = 64 * 1024;
/// The read buffer's first size: one whole record.
const FIRST_ROOM: usize = HEADER + MAX_CIPHERTEXT;
/// Plaintext one `write_plain` takes at most (rustls' own default bound).
const WRITE_MAX: usize = 64 * 1024;
/// Slices gathered into one record at most (a message's header and
/// payload are two).
const RECORD_PIECES: usize = 8;
/// Records one `write_tls` hands the socket at most.
const WRITE_RECORDS: usize = 64;

/// Alert descriptions sent before a fatal error (RFC 8446 §6).
const CLOSE_NOTIFY: u8 = 0;
const UNEXPECTED_MESSAGE: u8 = 10;
const BAD_RECORD_MAC: u8 = 20;
const RECORD_OVERFLOW: u8 = 22;
const DECODE_ERROR: u8 = 50;
/// The handshake message type of a key update.
const KEY_UPDATE: u8 = 24;
/// A key update's `request_update`: the peer need not answer, or must.
const UPDATE_NOT_REQUESTED: u8 = 0;
const UPDATE_REQUESTED: u8 = 1;
/// The peer's key updates in a row (no application data between) past
/// which the connection ends (rustls' own bound).
const MAX_UPDATES_IN_A_ROW: u32 = 32;

/// The keys rustls extracted from a connection that negotiated `suite`
/// (without their secrets, which rustls does not give: see
/// `remote::secret_log`): `None` for a suite this layer cannot carry
/// (AES-128-GCM, whose 16-byte key rustls' public API cannot rebuild).
pub(crate) fn keys_from_extracted(
    suite: CipherSuite,
    secrets: ExtractedSecrets,
) -> Option<SessionKeys> {
    let one = |(seq, secrets): (u64, ConnectionTrafficSecrets)| {
        let (key, iv) = match secrets {
            ConnectionTrafficSecrets::Aes256Gcm { key, iv }
            | ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => (key, iv),
            _ => return None,
        };
        Some(TrafficKeys {
            seq,
            key: key.as_ref().try_into().ok()?,
            iv: iv.as_ref().try_into().ok()?,
            secret: Vec::new(),
        })
    };
    Some(SessionKeys {
        suite: u16::from(suite),
        tx: one(secrets.tx)?,
        rx: one(secrets.rx)?,
    })
}

/// What [`RecordLayer::process`] found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Received {
    /// Plaintext came.
    pub data: bool,
    /// The peer sent close_notify: nothing follows.
    pub closed: bool,
}

/// The record layer of one connection (see the module's doc).
pub(crate) struct RecordLayer {
    suite: &'static rustls::Tls13CipherSuite,
    encrypter: Box<dyn MessageEncrypter>,
    decrypter: Box<dyn MessageDecrypter>,
    /// The traffic secrets the keys come from, where the gateway had them:
    /// what a key update derives the next keys from.
    tx_secret: Option<Secret>,
    rx_secret: Option<Secret>,
    /// The peer asked for our key update: it goes before our next
    /// application data (one however many asked, RFC 8446 §4.6.3).
    update_owed: bool,
    /// The peer's key updates since its last application data: a peer
    /// that sends nothing else may send only so many (as rustls allows).
    updates_in_a_row: u32,
    tx_seq: u64,
    rx_seq: u64,
    /// Records each way at most (the suite's confidentiality limit).
    limit: u64,
    /// Ciphertext in `start..end`, not yet whole records; the buffer
    /// grows (zeroed once) from one record's room to [`READ_AHEAD`] and a
    /// record while reads fill it.
    incoming: Vec<u8>,
    start: usize,
    end: usize,
    /// Encoded records not yet written; `sent` bytes of the first went.
    outgoing: VecDeque<Vec<u8>>,
    sent: usize,
    peer_closed: bool,
    close_sent: bool,
    /// Why the connection failed, once it has.
    failed: Option<String>,
}

impl std::fmt::Debug for RecordLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordLayer")
            .field("tx_seq", &self.tx_seq)
            .field("rx_seq", &self.rx_seq)
            .field("incoming_bytes", &(self.end - self.start))
            .field("outgoing_records", &self.outgoing.len())
            .field("peer_closed", &self.peer_closed)
            .field("close_sent", &self.close_sent)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

/// A traffic secret, zeroed when dropped.
type Secret = zeroize::Zeroizing<Vec<u8>>;

/// `HKDF-Expand-Label(secret, label, "", out.len())` (RFC 8446 §7.1) with
/// the suite's own HKDF.
fn expand_label(expander: &dyn HkdfExpander, label: &[u8], out: &mut [u8]) {
    let length = (out.len() as u16).to_be_bytes();
    let label_len = [(b"tls13 ".len() + label.len()) as u8];
    let no_context = [0u8];
    expander
        .expand_slice(&[&length, &label_len, b"tls13 ", label, &no_context], out)
        .expect("a key or IV is far shorter than HKDF's limit");
}

/// The AEAD key and IV a traffic secret gives (RFC 8446 §7.3).
fn keys_of(suite: &rustls::Tls13CipherSuite, secret: &[u8]) -> ([u8; 32], [u8; 12]) {
    let expander = suite.hkdf_provider.expander_for_okm(&OkmBlock::new(secret));
    let (mut key, mut iv) = ([0u8; 32], [0u8; 12]);
    expand_label(&*expander, b"key", &mut key);
    expand_label(&*expander, b"iv", &mut iv);
    (key, iv)
}

/// The traffic secret after a key update (RFC 8446 §7.2), and the key
/// and IV it gives.
fn next_keys(suite: &rustls::Tls13CipherSuite, secret: &Secret) -> (Secret, AeadKey, Iv) {
    let expander = suite.hkdf_provider.expander_for_okm(&OkmBlock::new(secret));
    let mut next = vec![0u8; expander.hash_len()];
    expand_label(&*expander, b"traffic upd", &mut next);
    let (key, iv) = keys_of(suite, &next);
    (Secret::new(next), AeadKey::from(key), Iv::from(iv))
}

/// The secret of `keys`, if it came and gives those very keys.
fn checked_secret(suite: &rustls::Tls13CipherSuite, keys: &TrafficKeys) -> Option<Secret> {
    (keys.secret.len() == suite.common.hash_provider.output_len()
        && keys_of(suite, &keys.secret) == (keys.key, keys.iv))
        .then(|| Secret::new(keys.secret.clone()))
}

/// The TLS 1.3 suites of rustls' ring provider that carry 256-bit keys.
fn suite_by_number(number: u16) -> Option<&'static rustls::Tls13CipherSuite> {
    rustls::crypto::ring::ALL_CIPHER_SUITES
        .iter()
        .find_map(|s| match s {
            SupportedCipherSuite::Tls13(t)
                if u16::from(t.common.suite) == number && t.aead_alg.key_len() == 32 =>
            {
                Some(*t)
            }
            _ => None,
        })
}

impl RecordLayer {
    /// The record layer for `keys`; an error names a suite it cannot carry.
    pub fn new(keys: &SessionKeys) -> Result<RecordLayer, String> {
        let suite = suite_by_number(keys.suite).ok_or_else(|| {
            format!(
                "cipher suite {:#06x} cannot be handed over (TLS 1.3 with a 256-bit key only)",
                keys.suite
            )
        })?;
        let aead = suite.aead_alg;
        // Both secrets or neither: with the receiving one alone, a peer's
        // request to update would be followed and never answered.
        let (tx_secret, rx_secret) = match (
            checked_secret(suite, &keys.tx),
            checked_secret(suite, &keys.rx),
        ) {
            (Some(tx), Some(rx)) => (Some(tx), Some(rx)),
            _ => (None, None),
        };
        Ok(RecordLayer {
            suite,
            encrypter: aead.encrypter(AeadKey::from(keys.tx.key), Iv::from(keys.tx.iv)),
            decrypter: aead.decrypter(AeadKey::from(keys.rx.key), Iv::from(keys.rx.iv)),
            tx_secret,
            rx_secret,
            update_owed: false,
            updates_in_a_row: 0,
            tx_seq: keys.tx.seq,
            rx_seq: keys.rx.seq,
            limit: suite.common.confidentiality_limit,
            incoming: Vec::new(),
            start: 0,
            end: 0,
            outgoing: VecDeque::new(),
            sent: 0,
            peer_closed: false,
            close_sent: false,
            failed: None,
        })
    }

    /// Reads ciphertext from `rd` (as rustls' `read_tls`): `Ok(0)` at the
    /// end of its input. Reads nothing more while [`READ_AHEAD`] bytes wait
    /// for [`Self::process`] (a `WouldBlock`, so a caller waits for the
    /// reader, not the socket).
    pub fn read_tls(&mut self, rd: &mut dyn Read) -> io::Result<usize> {
        if self.start > 0 {
            self.incoming.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end >= READ_AHEAD {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        if self.end == self.incoming.len() {
            let grown = (2 * self.incoming.len()).clamp(FIRST_ROOM, READ_AHEAD + MAX_CIPHERTEXT);
            self.incoming.resize(grown, 0);
        }
        let n = rd.read(&mut self.incoming[self.end..])?;
        self.end += n;
        Ok(n)
    }

    /// Decrypts the whole records that came, appending their application
    /// data to `plain`. An error ends the connection: the alert that says
    /// why is queued for the peer (write it with [`Self::write_tls`]).
    pub fn process(&mut self, plain: &mut VecDeque<u8>) -> Result<Received, String> {
        if let Some(why) = &self.failed {
            return Err(why.clone());
        }
        let mut got = Received {
            closed: self.peer_closed,
            ..Received::default()
        };
        loop {
            let rest = &self.incoming[self.start..self.end];
            if rest.len() < HEADER {
                break;
            }
            let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
            if len > MAX_CIPHERTEXT {
                return Err(self.fail(RECORD_OVERFLOW, "a TLS record longer than TLS allows"));
            }
            if rest[0] != u8::from(ContentType::ApplicationData) {
                return Err(self.fail(UNEXPECTED_MESSAGE, "an unencrypted TLS record"));
            }
            if rest.len() < HEADER + len {
                break;
            }
            let at = self.start;
            self.start += HEADER + len;
            if self.peer_closed {
                return Err(self.fail(UNEXPECTED_MESSAGE, "a TLS record after close_notify"));
            }
            if self.rx_seq >= self.limit {
                return Err(self.fail(
                    CLOSE_NOTIFY,
                    "the connection reached its cipher's record limit",
                ));
            }
            let record = &mut self.incoming[at..at + HEADER + len];
            let (header, payload) = record.split_at_mut(HEADER);
            let message = InboundOpaqueMessage::new(
                ContentType::from(header[0]),
                ProtocolVersion::from(u16::from_be_bytes([header[1], header[2]])),
                payload,
            );
            let opened = match self.decrypter.decrypt(message, self.rx_seq) {
                Ok(opened) => opened,
                Err(_) => {
                    return Err(self.fail(BAD_RECORD_MAC, "a TLS record that does not decrypt"))
                }
            };
            self.rx_seq += 1;
            match opened.typ {
                ContentType::ApplicationData => {
                    plain.extend(opened.payload);
                    if !opened.payload.is_empty() {
                        got.data = true;
                        // An empty record is no data between updates.
                        self.updates_in_a_row = 0;
                    }
                }
                // Whatever its level (RFC 8446 §6.1).
                ContentType::Alert => match opened.payload {
                    [_, CLOSE_NOTIFY] => {
                        self.peer_closed = true;
                        got.closed = true;
                    }
                    [_, description] => {
                        let why = format!("the peer sent TLS alert {description}");
                        self.failed = Some(why.clone());
                        return Err(why);
                    }
                    // An alert is two bytes (RFC 8446 §6): read as one, a
                    // short record once said "alert 0" (close_notify's).
                    _ => return Err(self.fail(DECODE_ERROR, "a malformed alert")),
                },
                ContentType::Handshake if opened.payload.first() == Some(&KEY_UPDATE) => {
                    let request = match opened.payload {
                        [KEY_UPDATE, 0, 0, 1, r @ (UPDATE_NOT_REQUESTED | UPDATE_REQUESTED)] => *r,
                        _ => return Err(self.fail(UNEXPECTED_MESSAGE, "a malformed key update")),
                    };
                    self.updates_in_a_row += 1;
                    if self.updates_in_a_row > MAX_UPDATES_IN_A_ROW {
                        return Err(self.fail(UNEXPECTED_MESSAGE, "too many key updates in a row"));
                    }
                    if let Err(why) = self.update_rx() {
                        return Err(self.fail(UNEXPECTED_MESSAGE, why));
                    }
                    self.update_owed |= request == UPDATE_REQUESTED;
                }
                _ => {
                    return Err(self.fail(UNEXPECTED_MESSAGE, "an unexpected TLS message"));
                }
            }
        }
        Ok(got)
    }

    /// Encrypts application data from `bufs` (as rustls' writer): the
    /// bytes taken, at most [`WRITE_MAX`] at once.
    pub fn write_plain(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        if let Some(why) = &self.failed {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                why.clone(),
            ));
        }
        if self.close_sent {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        let mut left = total.min(WRITE_MAX);
        let taken = left;
        let mut parts = bufs.iter().map(|b| &b[..]).filter(|b| !b.is_empty());
        let mut carry: &[u8] = &[];
        while left > 0 {
            // One record's worth of the slices, without copying them or
            // allocating (a record of many small slices ends early).
            let mut chunks: [&[u8]; RECORD_PIECES] = [&[]; RECORD_PIECES];
            let mut used = 0;
            let mut room = left.min(MAX_PLAINTEXT);
            while room > 0 && used < RECORD_PIECES {
                if carry.is_empty() {
                    carry = parts.next().expect("bytes left to take");
                }
                let n = room.min(carry.len());
                chunks[used] = &carry[..n];
                used += 1;
                carry = &carry[n..];
                room -= n;
                left -= n;
            }
            self.seal(ContentType::ApplicationData, &chunks[..used])?;
        }
        Ok(taken)
    }

    /// Queues close_notify, once; nothing is sent after it.
    pub fn send_close_notify(&mut self) {
        if !self.close_sent && self.failed.is_none() {
            let _ = self.seal(ContentType::Alert, &[&[1, CLOSE_NOTIFY]]);
        }
        self.close_sent = true;
    }

    /// Whether records wait to be written.
    pub fn wants_write(&self) -> bool {
        !self.outgoing.is_empty()
    }

    /// Writes queued records to `wr` (as rustls' `write_tls`), several in
    /// one vectored write: the bytes it took.
    pub fn write_tls(&mut self, wr: &mut dyn Write) -> io::Result<usize> {
        let mut slices = [IoSlice::new(&[]); WRITE_RECORDS];
        let mut used = 0;
        for (i, record) in self.outgoing.iter().take(WRITE_RECORDS).enumerate() {
            let from = if i == 0 { self.sent } else { 0 };
            slices[i] = IoSlice::new(&record[from..]);
            used = i + 1;
        }
        let mut n = wr.write_vectored(&slices[..used])?;
        let wrote = n;
        while n > 0 {
            let front = self.outgoing.front().expect("written bytes were queued");
            let rest = front.len() - self.sent;
            if n < rest {
                self.sent += n;
                break;
            }
            n -= rest;
            self.sent = 0;
            self.outgoing.pop_front();
        }
        Ok(wrote)
    }

    /// Follows the peer's key update.
    fn update_rx(&mut self) -> Result<(), &'static str> {
        let Some(secret) = &self.rx_secret else {
            return Err(
                "the peer updated its TLS keys, which a connection handed over without its \
                 secrets cannot follow",
            );
        };
        let (next, key, iv) = next_keys(self.suite, secret);
        self.decrypter = self.suite.aead_alg.decrypter(key, iv);
        self.rx_secret = Some(next);
        self.rx_seq = 0;
        Ok(())
    }

    /// Sends a key update (not asking the peer for one) under the current
    /// keys, then moves to the next: `Err` without the secret.
    fn update_tx(&mut self) -> io::Result<()> {
        let Some(secret) = &self.tx_secret else {
            return Err(io::ErrorKind::Unsupported.into());
        };
        let (next, key, iv) = next_keys(self.suite, secret);
        self.seal_now(
            ContentType::Handshake,
            &[&[KEY_UPDATE, 0, 0, 1, UPDATE_NOT_REQUESTED]],
        )?;
        self.encrypter = self.suite.aead_alg.encrypter(key, iv);
        self.tx_secret = Some(next);
        self.tx_seq = 0;
        Ok(())
    }

    /// Encrypts one record of `typ` holding `chunks` and queues it, first
    /// updating the keys if the peer asked (before application data), or
    /// if this would be the last record they may seal (the update itself
    /// takes that one).
    fn seal(&mut self, typ: ContentType, chunks: &[&[u8]]) -> io::Result<()> {
        let owed = self.update_owed && typ == ContentType::ApplicationData;
        if owed || (self.tx_secret.is_some() && self.tx_seq.saturating_add(1) >= self.limit) {
            self.update_owed = false;
            self.update_tx()?;
        }
        self.seal_now(typ, chunks)
    }

    /// Encrypts one record and queues it, under the current keys.
    fn seal_now(&mut self, typ: ContentType, chunks: &[&[u8]]) -> io::Result<()> {
        if self.tx_seq >= self.limit {
            let why = "the connection reached its cipher's record limit".to_string();
            self.failed = Some(why.clone());
            return Err(io::Error::new(io::ErrorKind::ConnectionAborted, why));
        }
        let message = OutboundPlainMessage {
            typ,
            version: ProtocolVersion::TLSv1_2,
            payload: OutboundChunks::new(chunks),
        };
        let sealed = self
            .encrypter
            .encrypt(message, self.tx_seq)
            .map_err(|e| io::Error::other(format!("TLS encryption failed: {e}")))?;
        self.tx_seq += 1;
        self.outgoing.push_back(sealed.encode());
        Ok(())
    }

    /// Ends the connection for `why`, queuing the fatal alert that says so
    /// (close_notify for a limit reached: nothing was wrong).
    fn fail(&mut self, alert: u8, why: &str) -> String {
        if !self.close_sent {
            let level = if alert == CLOSE_NOTIFY { 1 } else { 2 };
            let _ = self.seal_now(ContentType::Alert, &[&[level, alert]]);
            self.close_sent = true;
        }
        // The transport says whose TLS failed, and that it did.
        let why = why.to_string();
        self.failed = Some(why.clone());
        why
    }
}

#[cfg(test)]
mod tests;
