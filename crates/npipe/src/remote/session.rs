//! The TLS state a remote pipe's transport drives: rustls' own connection
//! (a client's), or the record layer a pipe server runs a connection on
//! once a gateway handed it over. One set of calls, rustls' shape, so
//! `TlsTransport` and everything above it serve both.

use std::collections::VecDeque;
use std::io::{self, BufRead, IoSlice, Read, Write};

use super::record_layer::{Received, RecordLayer};

/// A connection's TLS state.
#[derive(Debug)]
pub(crate) enum Session {
    /// A client's rustls connection to its gateway.
    Client(Box<rustls::ClientConnection>),
    /// A server's connection handed over by its gateway.
    Handed(Box<RecordLayer>),
}

impl Session {
    /// Reads TLS bytes from `rd`: `Ok(0)` at the end of its input.
    pub fn read_tls(&mut self, rd: &mut dyn Read) -> io::Result<usize> {
        match self {
            Session::Client(c) => c.read_tls(rd),
            Session::Handed(r) => r.read_tls(rd),
        }
    }

    /// Decrypts what came, appending the plaintext to `plain` (from
    /// rustls' buffer straight, `BufRead`, no copy between). `Err` ends the
    /// connection (the alert that says why is queued).
    pub fn process(&mut self, plain: &mut VecDeque<u8>) -> Result<Received, String> {
        match self {
            Session::Client(c) => {
                c.process_new_packets().map_err(|e| e.to_string())?;
                let mut got = Received::default();
                let mut reader = c.reader();
                loop {
                    match reader.fill_buf() {
                        Ok([]) => {
                            got.closed = true;
                            break;
                        }
                        Ok(chunk) => {
                            let n = chunk.len();
                            plain.extend(chunk);
                            reader.consume(n);
                            got.data = true;
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        // The TCP stream ended without close_notify.
                        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                            got.closed = true;
                            break;
                        }
                        Err(e) => return Err(e.to_string()),
                    }
                }
                Ok(got)
            }
            Session::Handed(r) => r.process(plain),
        }
    }

    /// Encrypts application data from `bufs`: the bytes taken.
    pub fn write_plain(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Session::Client(c) => c.writer().write_vectored(bufs),
            Session::Handed(r) => r.write_plain(bufs),
        }
    }

    /// Whether records wait to be written.
    pub fn wants_write(&self) -> bool {
        match self {
            Session::Client(c) => c.wants_write(),
            Session::Handed(r) => r.wants_write(),
        }
    }

    /// Writes queued records to `wr`: the bytes it took.
    pub fn write_tls(&mut self, wr: &mut dyn Write) -> io::Result<usize> {
        match self {
            Session::Client(c) => c.write_tls(wr),
            Session::Handed(r) => r.write_tls(wr),
        }
    }

    /// Queues close_notify (once, however often asked).
    pub fn send_close_notify(&mut self) {
        match self {
            Session::Client(c) => c.send_close_notify(),
            Session::Handed(r) => r.send_close_notify(),
        }
    }
}
