//! One direction of the shared-memory data path: a single-producer,
//! single-consumer ring of records in a [`ShmRegion`], each a run of the
//! byte stream the pipe's framing rides on (the transport writes no
//! flags; the *more* bit is kept for tests that carry messages as records).
//!
//! The peer is untrusted. Each side keeps its own position locally and only
//! publishes it; the peer's position and every record header are read once,
//! copied and bounded before use (a reader's position never behind what we
//! saw or past what we wrote; a writer's never behind what we saw nor more
//! than the ring ahead; a record never longer than what was published). A
//! value that fails is [`corrupt`]: that connection ends with
//! `ERROR_BAD_PIPE`, and nothing outside the region is ever touched.
//!
//! Layout of one ring (offsets from its base; each side's words on their
//! own cache line, so the two sides do not share one):
//!
//! | offset | written by | word |
//! |---|---|---|
//! | 0 | producer | `tail`: bytes published in all (u64) |
//! | 8 | producer | `closed`: 1 once the producer is done (u32) |
//! | 12 | producer | `data_seq`: bumped to wake a sleeping consumer (futex) |
//! | 64 | consumer | `head`: bytes consumed in all (u64) |
//! | 72 | consumer | `closed`: 1 once the consumer is gone (u32) |
//! | 76 | consumer | `space_seq`: bumped to wake a sleeping producer (futex) |
//! | 128 | consumer | `waiting`: the consumer sleeps, or is about to (u32: [`ASLEEP_ON_FUTEX`] or [`ASLEEP_ON_SOCKET`]) |
//! | 132 | producer | `waiting`: the producer sleeps, or is about to (the same values) |
//! | 136 | the client, before it offers (first ring only) | `features`: [`WAKES_BY_SOCKET`] |
//! | 192.. | both | `capacity` bytes of records |
//!
//! A record is an 8-byte header (payload length u32, flags u32, little
//! endian) and the payload, padded to 8 bytes; headers never wrap, payloads
//! may.

use std::sync::atomic::{AtomicU32, Ordering};

use crate::error::{Error, ErrorCode, Result};
use crate::sys::ShmRegion;

const TAIL: usize = 0;
const PRODUCER_CLOSED: usize = 8;
const DATA_SEQ: usize = 12;
const HEAD: usize = 64;
const CONSUMER_CLOSED: usize = 72;
const SPACE_SEQ: usize = 76;
const CONSUMER_WAITING: usize = 128;
const PRODUCER_WAITING: usize = 132;
const FEATURES: usize = 136;
/// A `features` bit: the client sends a byte on its socket to a side whose
/// flag says [`ASLEEP_ON_SOCKET`] (a tokio server needs it).
pub(crate) const WAKES_BY_SOCKET: u32 = 1;
/// A `waiting` flag's value for a side asleep on the other side's futex
/// word (a blocking end): bump the word and wake it.
pub(crate) const ASLEEP_ON_FUTEX: u32 = 1;
/// A `waiting` flag's value for a side that waits for its socket to become
/// readable (a tokio end, whose reactor cannot wait on a futex): whoever
/// clears the flag from this value sends one byte on the socket.
pub(crate) const ASLEEP_ON_SOCKET: u32 = 2;
/// The control block before the records.
pub(crate) const CONTROL: usize = 192;
/// A record's header: payload length and flags.
pub(crate) const RECORD_HEADER: usize = 8;
/// The record's message continues in the next record.
const MORE: u32 = 1;
/// The smallest ring: room for a header and a little payload.
pub(crate) const MIN_CAPACITY: usize = 64;

/// The peer broke the ring's rules: this connection cannot go on.
pub(crate) fn corrupt(why: &str) -> Error {
    Error::new(
        ErrorCode::BadPipe,
        format!("the peer corrupted the shared-memory ring ({why}): the connection is closed"),
    )
}

fn pad8(n: usize) -> usize {
    n.div_ceil(8) * 8
}

/// Where a ring lies in its region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Layout {
    base: usize,
    capacity: usize,
}

impl Layout {
    /// A ring at `base` with `capacity` bytes of records: a power of two
    /// of at least [`MIN_CAPACITY`] (so positions wrap with a mask and
    /// headers, 8-aligned, never straddle the end).
    pub(crate) fn new(base: usize, capacity: usize) -> Layout {
        assert!(capacity.is_power_of_two() && capacity >= MIN_CAPACITY);
        assert_eq!(base % 64, 0, "a ring starts on a cache line");
        Layout { base, capacity }
    }

    /// Bytes a ring of `capacity` takes in a region.
    pub(crate) fn bytes(capacity: usize) -> usize {
        CONTROL + capacity
    }

    /// Bytes of records the ring holds.
    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// The largest payload one record carries.
    pub(crate) fn max_record(&self) -> usize {
        self.capacity - RECORD_HEADER
    }

    fn word(&self, off: usize) -> usize {
        self.base + off
    }

    /// The region offset of ring position `pos`.
    fn data(&self, pos: u64) -> usize {
        self.base + CONTROL + (pos as usize & (self.capacity - 1))
    }

    /// Copies `out.len()` bytes from ring position `pos`, wrapping.
    fn read(&self, r: &ShmRegion, pos: u64, out: &mut [u8]) {
        let start = pos as usize & (self.capacity - 1);
        let first = out.len().min(self.capacity - start);
        r.read(self.data(pos), &mut out[..first]);
        r.read(self.base + CONTROL, &mut out[first..]);
    }

    /// Copies `data` to ring position `pos`, wrapping.
    fn write(&self, r: &ShmRegion, pos: u64, data: &[u8]) {
        let start = pos as usize & (self.capacity - 1);
        let first = data.len().min(self.capacity - start);
        r.write(self.data(pos), &data[..first]);
        r.write(self.base + CONTROL, &data[first..]);
    }

    /// The futex word that wakes this ring's consumer.
    pub(crate) fn data_seq<'r>(&self, r: &'r ShmRegion) -> &'r AtomicU32 {
        r.u32_at(self.word(DATA_SEQ))
    }

    /// The futex word that wakes this ring's producer.
    pub(crate) fn space_seq<'r>(&self, r: &'r ShmRegion) -> &'r AtomicU32 {
        r.u32_at(self.word(SPACE_SEQ))
    }

    /// The consumer's "I sleep" flag.
    pub(crate) fn consumer_waiting<'r>(&self, r: &'r ShmRegion) -> &'r AtomicU32 {
        r.u32_at(self.word(CONSUMER_WAITING))
    }

    /// The client's `features` word (meaningful in the first ring only):
    /// written before the offer, read once by the server.
    pub(crate) fn features<'r>(&self, r: &'r ShmRegion) -> &'r AtomicU32 {
        r.u32_at(self.word(FEATURES))
    }

    /// The producer's "I sleep" flag.
    pub(crate) fn producer_waiting<'r>(&self, r: &'r ShmRegion) -> &'r AtomicU32 {
        r.u32_at(self.word(PRODUCER_WAITING))
    }
}

/// The writing side of a ring.
#[derive(Debug)]
pub(crate) struct Producer {
    layout: Layout,
    /// Our position: the truth, whatever the shared word says.
    tail: u64,
    /// The consumer's position as last read and accepted.
    head_seen: u64,
}

impl Producer {
    pub(crate) fn new(layout: Layout) -> Producer {
        Producer {
            layout,
            tail: 0,
            head_seen: 0,
        }
    }

    pub(crate) fn layout(&self) -> Layout {
        self.layout
    }

    /// The consumer's position, if it is one it could have: not behind what
    /// we saw, and not past what we wrote.
    fn head(&mut self, r: &ShmRegion) -> Result<u64> {
        let head = r.u64_at(self.layout.word(HEAD)).load(Ordering::Acquire);
        if head < self.head_seen || head > self.tail {
            return Err(corrupt(
                "the reader's position moved backwards or past the writer's",
            ));
        }
        self.head_seen = head;
        Ok(head)
    }

    /// Bytes free for records.
    pub(crate) fn free(&mut self, r: &ShmRegion) -> Result<usize> {
        let head = self.head(r)?;
        Ok(self.layout.capacity - (self.tail - head) as usize)
    }

    /// Bytes published and not yet consumed (records and headers).
    pub(crate) fn unread(&mut self, r: &ShmRegion) -> Result<usize> {
        let head = self.head(r)?;
        Ok((self.tail - head) as usize)
    }

    /// Publishes one record of `payload` (at most
    /// [`Layout::max_record`] bytes), `more` if the message goes on in the
    /// next record. `Ok(false)`: no room yet. (The transport carries a byte
    /// stream, framed above it, and sends with [`Self::try_push_parts`];
    /// the tests use records as messages.)
    #[cfg(test)]
    pub(crate) fn try_push(&mut self, r: &ShmRegion, payload: &[u8], more: bool) -> Result<bool> {
        assert!(payload.len() <= self.layout.max_record());
        let need = RECORD_HEADER + pad8(payload.len());
        if self.free(r)? < need {
            return Ok(false);
        }
        let mut header = [0u8; RECORD_HEADER];
        header[..4].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        header[4..].copy_from_slice(&(if more { MORE } else { 0 }).to_le_bytes());
        self.layout.write(r, self.tail, &header);
        self.layout
            .write(r, self.tail + RECORD_HEADER as u64, payload);
        self.tail += need as u64;
        // The records are visible to whoever sees the new tail.
        r.u64_at(self.layout.word(TAIL))
            .store(self.tail, Ordering::Release);
        Ok(true)
    }

    /// Publishes one record of the first `limit` bytes (at most
    /// [`Layout::max_record`]) of `parts` laid end to end, if there is room
    /// for all of them; else as many as the free space holds. Returns
    /// the bytes taken; 0 when there is no room (or nothing to send).
    pub(crate) fn try_push_parts(
        &mut self,
        r: &ShmRegion,
        parts: &[std::io::IoSlice<'_>],
        limit: usize,
    ) -> Result<usize> {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        let free = self.free(r)?;
        let room = free.saturating_sub(RECORD_HEADER) / 8 * 8;
        let len = total.min(limit).min(self.layout.max_record()).min(room);
        if len == 0 {
            return Ok(0);
        }
        let mut header = [0u8; RECORD_HEADER];
        header[..4].copy_from_slice(&(len as u32).to_le_bytes());
        self.layout.write(r, self.tail, &header);
        let mut at = self.tail + RECORD_HEADER as u64;
        let mut left = len;
        for part in parts {
            if left == 0 {
                break;
            }
            let n = part.len().min(left);
            self.layout.write(r, at, &part[..n]);
            at += n as u64;
            left -= n;
        }
        self.tail += (RECORD_HEADER + pad8(len)) as u64;
        r.u64_at(self.layout.word(TAIL))
            .store(self.tail, Ordering::Release);
        Ok(len)
    }

    /// Says the producer is done: the consumer reads what is left, then
    /// sees the end.
    pub(crate) fn close(&self, r: &ShmRegion) {
        r.u32_at(self.layout.word(PRODUCER_CLOSED))
            .store(1, Ordering::Release);
    }

    /// Whether the consumer is gone.
    pub(crate) fn consumer_closed(&self, r: &ShmRegion) -> bool {
        r.u32_at(self.layout.word(CONSUMER_CLOSED))
            .load(Ordering::Acquire)
            != 0
    }
}

/// The record being read: its header, read once.
#[derive(Debug, Clone, Copy)]
struct Record {
    len: usize,
    more: bool,
    taken: usize,
}

/// What one [`Consumer::read`] moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Chunk {
    /// Bytes copied.
    pub(crate) n: usize,
    /// The record is used up (its space is the producer's again).
    pub(crate) record_done: bool,
    /// The record's message continues in the next record.
    pub(crate) more: bool,
}

/// The reading side of a ring.
#[derive(Debug)]
pub(crate) struct Consumer {
    layout: Layout,
    /// Our position: the truth, whatever the shared word says.
    head: u64,
    /// The producer's position as last read and accepted.
    tail_seen: u64,
    record: Option<Record>,
}

impl Consumer {
    pub(crate) fn new(layout: Layout) -> Consumer {
        Consumer {
            layout,
            head: 0,
            tail_seen: 0,
            record: None,
        }
    }

    pub(crate) fn layout(&self) -> Layout {
        self.layout
    }

    /// The producer's position, if it is one it could have: 8-aligned, not
    /// behind what we saw, and at most the ring's size ahead of us.
    fn tail(&mut self, r: &ShmRegion) -> Result<u64> {
        let tail = r.u64_at(self.layout.word(TAIL)).load(Ordering::Acquire);
        if tail < self.tail_seen
            || !tail.is_multiple_of(8)
            || tail - self.head > self.layout.capacity as u64
        {
            return Err(corrupt("the writer's position is not one it could have"));
        }
        self.tail_seen = tail;
        Ok(tail)
    }

    /// The header of the record at `pos`, read once and bounded: known
    /// flags only, and no longer than what was published up to `tail`.
    fn header(&self, r: &ShmRegion, pos: u64, tail: u64) -> Result<(usize, bool)> {
        let mut header = [0u8; RECORD_HEADER];
        self.layout.read(r, pos, &mut header);
        let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
        let flags = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
        if flags & !MORE != 0 {
            return Err(corrupt("a record has flags no version defines"));
        }
        if len > self.layout.max_record() || (RECORD_HEADER + pad8(len)) as u64 > tail - pos {
            return Err(corrupt("a record is longer than what was published"));
        }
        Ok((len, flags & MORE != 0))
    }

    /// The record at our position, once published: its header read once
    /// and bounded by what was published.
    fn current(&mut self, r: &ShmRegion) -> Result<Option<Record>> {
        if let Some(record) = self.record {
            return Ok(Some(record));
        }
        let tail = self.tail(r)?;
        if tail == self.head {
            return Ok(None);
        }
        let (len, more) = self.header(r, self.head, tail)?;
        let record = Record {
            len,
            more,
            taken: 0,
        };
        self.record = Some(record);
        Ok(Some(record))
    }

    /// Whether a record is there to read.
    pub(crate) fn ready(&mut self, r: &ShmRegion) -> Result<bool> {
        Ok(self.current(r)?.is_some())
    }

    /// Copies what fits of the current record into `buf`; `None` if no
    /// record is published. A record used up gives its space back.
    pub(crate) fn read(&mut self, r: &ShmRegion, buf: &mut [u8]) -> Result<Option<Chunk>> {
        let Some(mut record) = self.current(r)? else {
            return Ok(None);
        };
        let n = buf.len().min(record.len - record.taken);
        let at = self.head + (RECORD_HEADER + record.taken) as u64;
        self.layout.read(r, at, &mut buf[..n]);
        record.taken += n;
        let record_done = record.taken == record.len;
        if record_done {
            self.head += (RECORD_HEADER + pad8(record.len)) as u64;
            self.record = None;
            r.u64_at(self.layout.word(HEAD))
                .store(self.head, Ordering::Release);
        } else {
            self.record = Some(record);
        }
        Ok(Some(Chunk {
            n,
            record_done,
            more: record.more,
        }))
    }

    /// Walks the published records without consuming them, calling
    /// `each` with every unread payload's ring position and length (the
    /// current record's unread rest first). Headers are bounded as when
    /// reading.
    fn scan(&mut self, r: &ShmRegion, mut each: impl FnMut(u64, usize) -> bool) -> Result<()> {
        let Some(first) = self.current(r)? else {
            return Ok(());
        };
        let tail = self.tail_seen;
        let at = self.head + (RECORD_HEADER + first.taken) as u64;
        if !each(at, first.len - first.taken) {
            return Ok(());
        }
        let mut pos = self.head + (RECORD_HEADER + pad8(first.len)) as u64;
        while pos < tail {
            let (len, _) = self.header(r, pos, tail)?;
            if !each(pos + RECORD_HEADER as u64, len) {
                break;
            }
            pos += (RECORD_HEADER + pad8(len)) as u64;
        }
        Ok(())
    }

    /// Payload bytes published and not yet read.
    pub(crate) fn readable(&mut self, r: &ShmRegion) -> Result<usize> {
        let mut n = 0;
        self.scan(r, |_, len| {
            n += len;
            true
        })?;
        Ok(n)
    }

    /// A copy of the unread payload bytes, up to `max`, not consumed.
    pub(crate) fn peek(&mut self, r: &ShmRegion, max: usize) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        let layout = self.layout;
        self.scan(r, |pos, len| {
            let n = len.min(max - out.len());
            let start = out.len();
            out.resize(start + n, 0);
            layout.read(r, pos, &mut out[start..]);
            out.len() < max
        })?;
        Ok(out)
    }

    /// Says the consumer is gone: the producer's next push fails.
    pub(crate) fn close(&self, r: &ShmRegion) {
        r.u32_at(self.layout.word(CONSUMER_CLOSED))
            .store(1, Ordering::Release);
    }

    /// Whether the producer is done (what it published may still be read).
    pub(crate) fn producer_closed(&self, r: &ShmRegion) -> bool {
        r.u32_at(self.layout.word(PRODUCER_CLOSED))
            .load(Ordering::Acquire)
            != 0
    }
}

#[cfg(test)]
mod tests;
