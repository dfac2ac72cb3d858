//! The HAND-OFF message (PROTOCOL.md §6c): a gateway's word to a pipe
//! server that took its offer to hand a remote client's connection over.
//! Either the connection itself (its TCP socket rides beside the message
//! as `SCM_RIGHTS`, and the message holds the TLS 1.3 traffic keys both
//! ways), or word that the gateway relays after all. Fixed size, so the
//! server reads exactly this many bytes and nothing of the data after it.

use super::ProtoError;

/// The four bytes that open a HAND-OFF.
pub const MAGIC: [u8; 4] = *b"NPHO";
/// Its version (1 had no traffic secrets, and 112 bytes).
const VERSION: u8 = 2;
/// Its size, whatever it says.
pub const LEN: usize = 210;
/// The longest traffic secret (SHA-384's output).
pub const SECRET_MAX: usize = 48;

/// Whether a traffic secret of `len` bytes is carried: none, or a suite's
/// (SHA-256's or SHA-384's output). Encode and decode agree on it.
fn carried(len: usize) -> bool {
    matches!(len, 0 | 32 | SECRET_MAX)
}

const HANDED: u8 = 1;
const RELAYED: u8 = 2;

/// One direction's traffic keys: the next record's sequence number, the
/// AEAD key and the IV (suites with 256-bit keys only), and the traffic
/// secret they come from where the gateway had it (so the server can
/// follow a key update). Zeroed when dropped; `Debug` shows the sequence
/// number alone.
#[derive(Clone, PartialEq, Eq)]
pub struct TrafficKeys {
    /// The next record's sequence number.
    pub seq: u64,
    /// The AEAD key.
    pub key: [u8; 32],
    /// The IV the record's nonce is made from.
    pub iv: [u8; 12],
    /// The traffic secret (32 or 48 bytes), or empty.
    pub secret: Vec<u8>,
}

impl std::fmt::Debug for TrafficKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrafficKeys")
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

impl Drop for TrafficKeys {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.key.zeroize();
        self.iv.zeroize();
        self.secret.zeroize();
    }
}

/// A connection's keys both ways (as the gateway had them: `tx` is what
/// it sent the client), and its cipher suite's IANA number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionKeys {
    /// The cipher suite (IANA number).
    pub suite: u16,
    /// What the gateway sent with: the server's sending keys now.
    pub tx: TrafficKeys,
    /// What the client sends with.
    pub rx: TrafficKeys,
}

/// What the gateway says after an OK that took its offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandOff {
    /// Here is the connection (its socket beside this message) and its
    /// keys: the server talks TLS with the remote client from here on.
    Handed(SessionKeys),
    /// The gateway relays after all (it could not hand over): the data
    /// goes on through this socket.
    Relayed,
}

impl HandOff {
    /// Appends the encoded message to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&MAGIC);
        out.push(VERSION);
        match self {
            HandOff::Handed(keys) => {
                out.push(HANDED);
                out.extend_from_slice(&keys.suite.to_le_bytes());
                for one in [&keys.tx, &keys.rx] {
                    out.extend_from_slice(&one.seq.to_le_bytes());
                    out.extend_from_slice(&one.key);
                    out.extend_from_slice(&one.iv);
                }
                for one in [&keys.tx, &keys.rx] {
                    // One of a length decode refuses goes as none: the
                    // server then follows no key update, and says so if
                    // one comes, rather than refuse the whole hand-over.
                    let secret = if carried(one.secret.len()) {
                        &one.secret[..]
                    } else {
                        &[]
                    };
                    out.push(secret.len() as u8);
                    out.extend_from_slice(secret);
                    out.resize(out.len() + SECRET_MAX - secret.len(), 0);
                }
            }
            HandOff::Relayed => out.push(RELAYED),
        }
        out.resize(start + LEN, 0);
    }

    /// Decodes a HAND-OFF from the start of `buf`: `None` until [`LEN`]
    /// bytes are there.
    pub fn decode(buf: &[u8]) -> Result<Option<HandOff>, ProtoError> {
        if buf.len() < LEN {
            if !MAGIC.starts_with(&buf[..buf.len().min(4)]) {
                return Err(ProtoError::BadMagic);
            }
            return Ok(None);
        }
        if buf[..4] != MAGIC {
            return Err(ProtoError::BadMagic);
        }
        if buf[4] != VERSION {
            return Err(ProtoError::BadVersion(buf[4]));
        }
        let keys = |at: usize, secret_at: usize| {
            let len = usize::from(buf[secret_at]);
            if !carried(len) {
                return Err(ProtoError::BadValue {
                    field: "traffic secret length",
                    value: len as u64,
                });
            }
            Ok(TrafficKeys {
                seq: u64::from_le_bytes(buf[at..at + 8].try_into().expect("8 bytes")),
                key: buf[at + 8..at + 40].try_into().expect("32 bytes"),
                iv: buf[at + 40..at + 52].try_into().expect("12 bytes"),
                secret: buf[secret_at + 1..secret_at + 1 + len].to_vec(),
            })
        };
        match buf[5] {
            HANDED => Ok(Some(HandOff::Handed(SessionKeys {
                suite: u16::from_le_bytes([buf[6], buf[7]]),
                tx: keys(8, 112)?,
                rx: keys(60, 112 + 1 + SECRET_MAX)?,
            }))),
            RELAYED => Ok(Some(HandOff::Relayed)),
            other => Err(ProtoError::BadValue {
                field: "hand-off kind",
                value: other.into(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> SessionKeys {
        SessionKeys {
            suite: 0x1302,
            tx: TrafficKeys {
                seq: 3,
                key: [1; 32],
                iv: [2; 12],
                secret: vec![5; 48],
            },
            rx: TrafficKeys {
                seq: u64::MAX - 1,
                key: [3; 32],
                iv: [4; 12],
                secret: Vec::new(),
            },
        }
    }

    #[test]
    fn both_kinds_round_trip_at_their_fixed_size() {
        for msg in [HandOff::Handed(keys()), HandOff::Relayed] {
            let mut out = vec![9];
            msg.encode(&mut out);
            assert_eq!(out.len(), 1 + LEN);
            assert_eq!(HandOff::decode(&out[1..]).unwrap(), Some(msg.clone()));
            // Every prefix is "not yet", never a misreading.
            for cut in 0..LEN {
                assert_eq!(HandOff::decode(&out[1..1 + cut]).unwrap(), None);
            }
        }
    }

    #[test]
    fn anything_else_is_refused() {
        let mut good = Vec::new();
        HandOff::Relayed.encode(&mut good);
        assert_eq!(HandOff::decode(b"NPIP"), Err(ProtoError::BadMagic));
        assert_eq!(HandOff::decode(b"X"), Err(ProtoError::BadMagic));
        let mut bad = good.clone();
        bad[4] = 1;
        assert_eq!(HandOff::decode(&bad), Err(ProtoError::BadVersion(1)));
        let mut bad = good;
        bad[5] = 0;
        assert!(matches!(
            HandOff::decode(&bad),
            Err(ProtoError::BadValue { .. })
        ));
        // A secret of a length no suite has.
        let mut handed = Vec::new();
        HandOff::Handed(keys()).encode(&mut handed);
        handed[112] = 47;
        assert!(matches!(
            HandOff::decode(&handed),
            Err(ProtoError::BadValue {
                field: "traffic secret length",
                ..
            })
        ));
    }

    /// A secret of a length the HAND-OFF does not carry is sent as none,
    /// never as bytes the server would refuse.
    #[test]
    fn a_secret_of_no_suite_s_length_goes_as_none() {
        for len in [1, 20, 47, 49, 64] {
            let mut odd = keys();
            odd.tx.secret = vec![7; len];
            let mut out = Vec::new();
            HandOff::Handed(odd.clone()).encode(&mut out);
            odd.tx.secret.clear();
            assert_eq!(
                HandOff::decode(&out),
                Ok(Some(HandOff::Handed(odd))),
                "{len}"
            );
        }
    }

    /// `Debug` shows the sequence numbers, never a key, an IV or a secret.
    #[test]
    fn debug_shows_no_key() {
        let text = format!("{:?}", HandOff::Handed(keys()));
        assert!(text.contains("seq: 3"), "{text}");
        for secret in ["[1, 1", "[2, 2", "[5, 5", "key:", "iv:", "secret:"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
    }
}
