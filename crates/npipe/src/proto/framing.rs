//! Message-type framing: each message is a 4-byte little-endian length and
//! then that many bytes. Byte-type pipes use no framing at all.
//!
//! [`Decoder`] tracks where a reader stands in the stream of messages: at a
//! boundary, or inside a message with so many bytes still to come. It checks
//! every length against the receiver's maximum before anything is sized by it.

use super::ProtoError;

/// Bytes in a message header.
pub const HEADER_LEN: usize = 4;

/// The header value a server sends, in place of a message, right before it
/// disconnects its client (`DisconnectNamedPipe`): no message can be this
/// long (largest message sizes stop one short), so it is told apart from
/// data, and the client reports *pipe not connected* instead of *broken
/// pipe*, as on Windows.
pub const DISCONNECT_MARK: u32 = u32::MAX;

/// The largest message size a pipe may accept: one short of the mark.
pub const MAX_MESSAGE_LIMIT: u32 = DISCONNECT_MARK - 1;

/// The header for a message of `len` bytes.
pub fn header(len: u32) -> [u8; HEADER_LEN] {
    len.to_le_bytes()
}

/// A reader's position in a stream of messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoder {
    max: u32,
    /// Bytes of the current message not yet consumed; `None` at a boundary.
    remaining: Option<u32>,
    /// Whether [`DISCONNECT_MARK`] means the server disconnected this end
    /// (a client's decoder); elsewhere it is an oversized length.
    honours_mark: bool,
}

/// What [`Decoder::scan`] found in buffered bytes, without consuming them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Scan {
    /// Payload bytes present in the buffer, across messages (headers excluded).
    pub payload: usize,
    /// Bytes left in the current message (or the next one, at a boundary),
    /// counting those not yet received; 0 if no header is known yet.
    pub message_left: u32,
}

impl Decoder {
    /// A decoder at a message boundary that accepts messages up to `max` bytes.
    pub fn new(max: u32) -> Decoder {
        Decoder {
            max,
            remaining: None,
            honours_mark: false,
        }
    }

    /// A client end's decoder: the server's disconnect mark ends its
    /// stream as *not connected*. (A server end never honours it: from a
    /// client it is only an oversized length, so no client can make its
    /// server think it was disconnected.)
    pub fn honouring_disconnect_mark(mut self) -> Decoder {
        self.honours_mark = true;
        self
    }

    /// Whether the reader is inside a message.
    pub fn in_message(&self) -> bool {
        self.remaining.is_some()
    }

    /// Bytes of the current message still to be consumed, if inside one.
    pub fn remaining(&self) -> Option<u32> {
        self.remaining
    }

    /// At a boundary, reads a header from the front of `buf`. `Ok(None)` if
    /// fewer than [`HEADER_LEN`] bytes are there; else the message's length,
    /// and the caller consumes `HEADER_LEN` bytes.
    ///
    /// # Panics
    /// If called inside a message.
    pub fn start(&mut self, buf: &[u8]) -> Result<Option<u32>, ProtoError> {
        assert!(self.remaining.is_none(), "start() inside a message");
        let Some(h) = buf.first_chunk::<HEADER_LEN>() else {
            return Ok(None);
        };
        let len = u32::from_le_bytes(*h);
        if len == DISCONNECT_MARK && self.honours_mark {
            return Err(ProtoError::Disconnected);
        }
        if len > self.max {
            return Err(ProtoError::MessageTooLarge { len, max: self.max });
        }
        self.remaining = Some(len);
        Ok(Some(len))
    }

    /// How many of `available` bytes belong to the current message.
    pub fn take(&self, available: usize) -> usize {
        self.remaining.map_or(0, |r| available.min(r as usize))
    }

    /// Records that `n` bytes of the current message were consumed; returns
    /// `true` when that completes the message (the reader is at a boundary).
    ///
    /// # Panics
    /// If `n` is more than the message has left.
    pub fn consume(&mut self, n: usize) -> bool {
        let r = self.remaining.expect("consume() at a boundary");
        let n = u32::try_from(n)
            .ok()
            .filter(|&n| n <= r)
            .expect("consumed past the message");
        if r == n {
            self.remaining = None;
            true
        } else {
            self.remaining = Some(r - n);
            false
        }
    }

    /// Looks through buffered bytes without consuming them (for `peek`).
    pub fn scan(&self, mut buf: &[u8]) -> Scan {
        let mut scan = Scan::default();
        let mut remaining = self.remaining;
        let mut first = true;
        loop {
            let r = match remaining {
                Some(r) => r,
                None => match buf.first_chunk::<HEADER_LEN>() {
                    // Nothing is readable past the disconnect mark.
                    Some(h) if self.honours_mark && u32::from_le_bytes(*h) == DISCONNECT_MARK => {
                        return scan
                    }
                    Some(h) => {
                        buf = &buf[HEADER_LEN..];
                        u32::from_le_bytes(*h)
                    }
                    None => return scan,
                },
            };
            if first {
                scan.message_left = r;
                first = false;
            }
            let n = buf.len().min(r as usize);
            scan.payload += n;
            buf = &buf[n..];
            if n < r as usize {
                return scan;
            }
            remaining = None;
        }
    }

    /// Sets the position back, for a front end undoing a read that stopped
    /// before it returned (a cancelled future puts the bytes it took back
    /// in front of its buffer): at a boundary (`None`), or inside a message
    /// with `remaining` bytes of it still to consume.
    pub fn rewind(&mut self, remaining: Option<u32>) {
        self.remaining = remaining;
    }

    /// Whether the disconnect mark comes in `buf` at a message boundary
    /// (starting from where this decoder stands): the server disconnected
    /// this end after sending the messages before it.
    pub fn finds_disconnect(&self, mut buf: &[u8]) -> bool {
        if !self.honours_mark {
            return false;
        }
        let mut remaining = self.remaining;
        loop {
            if let Some(r) = remaining {
                let Some(rest) = buf.get(r as usize..) else {
                    return false;
                };
                buf = rest;
            }
            match buf.first_chunk::<HEADER_LEN>() {
                Some(h) if u32::from_le_bytes(*h) == DISCONNECT_MARK => return true,
                Some(h) => {
                    remaining = Some(u32::from_le_bytes(*h));
                    buf = &buf[HEADER_LEN..];
                }
                None => return false,
            }
        }
    }

    /// Changes the largest message accepted from now on.
    pub fn set_max(&mut self, max: u32) {
        self.max = max;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(msgs: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for m in msgs {
            out.extend_from_slice(&header(m.len() as u32));
            out.extend_from_slice(m);
        }
        out
    }

    /// Drives a decoder over `wire` with reads of at most `chunk` bytes and
    /// returns the messages it delimits.
    fn decode_all(wire: &[u8], chunk: usize) -> Vec<Vec<u8>> {
        let mut d = Decoder::new(1 << 20);
        let mut msgs = Vec::new();
        let mut cur = Vec::new();
        let mut at = 0;
        while at < wire.len() {
            if !d.in_message() {
                let len = d.start(&wire[at..]).unwrap().unwrap();
                at += HEADER_LEN;
                if len == 0 {
                    d.consume(0);
                    msgs.push(Vec::new());
                    continue;
                }
            }
            let n = d.take(chunk.min(wire.len() - at));
            cur.extend_from_slice(&wire[at..at + n]);
            at += n;
            if d.consume(n) {
                msgs.push(std::mem::take(&mut cur));
            }
        }
        msgs
    }

    #[test]
    fn boundaries_survive_any_chunking() {
        let msgs: Vec<&[u8]> = vec![b"hello", b"", b"x", &[7; 300], b""];
        let wire = frames(&msgs);
        for chunk in [1, 2, 3, 7, 64, 10_000] {
            assert_eq!(decode_all(&wire, chunk), msgs, "chunk {chunk}");
        }
    }

    #[test]
    fn partial_header_waits() {
        let mut d = Decoder::new(100);
        assert_eq!(d.start(&[1, 0, 0]), Ok(None));
        assert!(!d.in_message());
        assert_eq!(d.start(&[3, 0, 0, 0, b'a']), Ok(Some(3)));
        assert_eq!(d.take(10), 3);
        assert!(!d.consume(2));
        assert_eq!(d.remaining(), Some(1));
        assert!(d.consume(1));
    }

    /// The disconnect mark ends the stream as *not connected* wherever a
    /// header is due, even for a reader that accepts the largest messages,
    /// and is found behind whole messages, never inside one.
    #[test]
    fn the_disconnect_mark_is_not_a_message() {
        let mark = header(DISCONNECT_MARK);
        let client = |max| Decoder::new(max).honouring_disconnect_mark();
        let mut d = client(MAX_MESSAGE_LIMIT);
        assert_eq!(d.start(&mark), Err(ProtoError::Disconnected));
        // A server's decoder: from a client the mark is only too long.
        assert!(matches!(
            Decoder::new(MAX_MESSAGE_LIMIT).start(&mark),
            Err(ProtoError::MessageTooLarge { .. })
        ));
        let mut wire = frames(&[b"one", b"two"]);
        assert!(!client(64).finds_disconnect(&wire));
        wire.extend_from_slice(&mark);
        assert!(client(64).finds_disconnect(&wire));
        assert!(!Decoder::new(64).finds_disconnect(&wire));
        assert_eq!(client(64).scan(&wire).payload, 6);
        // The mark's bytes inside a message are data.
        let inside = frames(&[&mark, b"x"]);
        assert!(!client(64).finds_disconnect(&inside));
        // From inside a message: what is left of it, then the mark.
        let mut d = client(64);
        d.start(&header(5)).unwrap();
        d.consume(2);
        let mut rest = b"cde".to_vec();
        rest.extend_from_slice(&mark);
        assert!(d.finds_disconnect(&rest));
    }

    #[test]
    fn oversize_is_refused_before_allocation() {
        let mut d = Decoder::new(1024);
        assert_eq!(
            d.start(&header(u32::MAX - 1)),
            Err(ProtoError::MessageTooLarge {
                len: u32::MAX - 1,
                max: 1024
            })
        );
        assert!(!d.in_message());
    }

    #[test]
    fn scan_counts_payload_and_current_message() {
        let wire = frames(&[b"abcd", b"", b"xyz"]);
        let d = Decoder::new(100);
        assert_eq!(
            d.scan(&wire),
            Scan {
                payload: 7,
                message_left: 4
            }
        );
        assert_eq!(
            d.scan(&wire[..6]),
            Scan {
                payload: 2,
                message_left: 4
            }
        );
        assert_eq!(
            d.scan(&wire[..2]),
            Scan {
                payload: 0,
                message_left: 0
            }
        );
        let mut inside = Decoder::new(100);
        inside.start(&wire).unwrap();
        inside.consume(1);
        assert_eq!(
            inside.scan(&wire[5..8]),
            Scan {
                payload: 3,
                message_left: 3
            }
        );
    }
}
