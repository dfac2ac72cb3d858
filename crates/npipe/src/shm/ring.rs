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
//! Layout of one ring (offsets from its base; each side's busy words on
//! their own cache line, so the two sides do not share one, and the words
//! that change only when there is news on a third):
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
//! | 136 | the client, before it offers (first ring only) | `features`: [`WAKES_BY_SOCKET`], [`MARKS_RECORDS`] |
//! | 140 | the server, before it answers (first ring only) | the server's `features` |
//! | 144 | producer | `closed` again, where a side that [`MARKS_RECORDS`] looks |
//! | 148 | consumer | `closed` again, likewise |
//! | 152 | producer, before its switch marker (a late offer, PROTOCOL §6d) | `switched_at`: 1 + the bytes it sent on the socket before the marker (u64; 0: still on the socket) |
//! | 192.. | both | `capacity` bytes of records |
//!
//! A record is an 8-byte header (payload length u32, flags u32, little
//! endian) and the payload, padded to 8 bytes; headers never wrap, payloads
//! may. This version's producer writes an empty header (eight zero bytes)
//! where the next record will go before it writes a record's own header,
//! so a consumer whose producer [`MARKS_RECORDS`] learns that a record is
//! there from its header alone: across CPUs the record's first bytes and
//! the news that it exists then come in one cache-line transfer, where the
//! `tail` cost a second.

use std::ops::Range;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

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
const SERVER_FEATURES: usize = 140;
const PRODUCER_CLOSED_APART: usize = 144;
const CONSUMER_CLOSED_APART: usize = 148;
const SWITCHED_AT: usize = 152;
/// A `features` bit: the client sends a byte on its socket to a side whose
/// flag says [`ASLEEP_ON_SOCKET`] (a tokio server needs it).
pub(crate) const WAKES_BY_SOCKET: u32 = 1;
/// A `features` bit: this side's producer writes an empty header ahead of
/// each record before the record's own (so its consumer may watch the
/// headers, not `tail`), both its sides write their `closed` flags at 144
/// and 148 too (so its peer may watch those, not the busy lines), and its
/// producer, short of room, waits for three quarters of the ring free (so
/// its consumer wakes it only then: [`Consumer::writer_would_go_on`]).
pub(crate) const MARKS_RECORDS: u32 = 2;
/// The features of this version's ends.
pub(crate) const FEATURES_OF_THIS_VERSION: u32 = WAKES_BY_SOCKET | MARKS_RECORDS;
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

    /// The largest payload one record of this version carries: room is
    /// left for the empty header that follows it.
    pub(crate) fn max_record(&self) -> usize {
        self.capacity - 2 * RECORD_HEADER
    }

    /// The largest payload a consumer takes (a producer from before the
    /// empty headers wrote no header behind a record).
    fn max_received(&self) -> usize {
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

    /// Appends `n` bytes from ring position `pos` to `out`, wrapping.
    fn append(&self, r: &ShmRegion, pos: u64, n: usize, out: &mut Vec<u8>) {
        let start = pos as usize & (self.capacity - 1);
        let first = n.min(self.capacity - start);
        r.append(self.data(pos), first, out);
        r.append(self.base + CONTROL, n - first, out);
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

    /// The server's `features` word (meaningful in the first ring only):
    /// written before its OK, read once by the client after it (0 from a
    /// server from before the word).
    pub(crate) fn server_features<'r>(&self, r: &'r ShmRegion) -> &'r AtomicU32 {
        r.u32_at(self.word(SERVER_FEATURES))
    }

    /// Where this ring's producer left the socket (a late offer, PROTOCOL
    /// §6d): 1 + the bytes it sent there before its marker byte, written
    /// before the marker is sent; 0 while it still writes to the socket.
    pub(crate) fn switched_at<'r>(&self, r: &'r ShmRegion) -> &'r AtomicU64 {
        r.u64_at(self.word(SWITCHED_AT))
    }

    /// The record header word at ring position `pos` (8-aligned).
    fn header_word<'r>(&self, r: &'r ShmRegion, pos: u64) -> &'r AtomicU64 {
        r.u64_at(self.data(pos))
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
    /// The consumer [`MARKS_RECORDS`]: its `closed` flag is read at 148,
    /// not beside the `head` it moves on every record.
    closed_apart: bool,
}

impl Producer {
    /// The producer of a ring whose consumer has `consumer_features`.
    pub(crate) fn new(layout: Layout, consumer_features: u32) -> Producer {
        Producer {
            layout,
            tail: 0,
            head_seen: 0,
            closed_apart: consumer_features & MARKS_RECORDS != 0,
        }
    }

    #[cfg(test)]
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

    /// Whether a writer that found no room may go on: three quarters of
    /// the ring free (the consumer's position read afresh). A consumer
    /// that knows this producer waits for that much
    /// ([`MARKS_RECORDS`]) wakes it only then
    /// ([`Consumer::writer_would_go_on`]).
    pub(crate) fn has_room(&mut self, r: &ShmRegion) -> Result<bool> {
        Ok(self.free(r)? >= self.layout.capacity - self.layout.capacity / 4)
    }

    /// Bytes free for records, at least `need` if there are: the consumer's
    /// position as last seen while that leaves room enough, read afresh
    /// only when it does not. A stale position only understates the room,
    /// and not reading the consumer's cache line on every push keeps it
    /// in the consumer's cache: across CPUs each read of it was a transfer
    /// on the writer's path and made the consumer's next store to it wait
    /// for another.
    fn room_for(&mut self, r: &ShmRegion, need: usize) -> Result<usize> {
        let known = self.layout.capacity - (self.tail - self.head_seen) as usize;
        if known >= need {
            return Ok(known);
        }
        self.free(r)
    }

    /// Bytes published and not yet consumed (records and headers).
    pub(crate) fn unread(&mut self, r: &ShmRegion) -> Result<usize> {
        let head = self.head(r)?;
        Ok((self.tail - head) as usize)
    }

    /// Whether the reader has consumed anything of this ring yet.
    pub(crate) fn read_any(&mut self, r: &ShmRegion) -> Result<bool> {
        Ok(self.head(r)? > 0)
    }

    /// Publishes one record of `payload` (at most
    /// [`Layout::max_record`] bytes), `more` if the message goes on in the
    /// next record. `Ok(false)`: no room yet. (The transport carries a byte
    /// stream, framed above it, and sends with [`Self::try_push_parts`];
    /// the tests use records as messages.)
    #[cfg(test)]
    pub(crate) fn try_push(&mut self, r: &ShmRegion, payload: &[u8], more: bool) -> Result<bool> {
        // An empty record with no flags would look like none to a consumer
        // that watches the headers (one with *more* is a hostile peer's,
        // for the tests).
        assert!((!payload.is_empty() || more) && payload.len() <= self.layout.max_record());
        // The record, and the empty header behind it.
        let need = RECORD_HEADER + pad8(payload.len()) + RECORD_HEADER;
        if self.room_for(r, need)? < need {
            return Ok(false);
        }
        self.layout
            .write(r, self.tail + RECORD_HEADER as u64, payload);
        self.mark_next(r, payload.len());
        self.publish(r, payload.len(), if more { MORE } else { 0 });
        Ok(true)
    }

    /// Writes the empty header behind the record of `len` bytes being
    /// written, before the record's own header makes both visible.
    fn mark_next(&self, r: &ShmRegion, len: usize) {
        let next = self.tail + (RECORD_HEADER + pad8(len)) as u64;
        self.layout.header_word(r, next).store(0, Ordering::Relaxed);
    }

    /// Publishes the record whose `len` payload bytes (and the empty header
    /// behind) are written: its header, then `tail`, each making what came
    /// before visible to whoever sees it (Release).
    fn publish(&mut self, r: &ShmRegion, len: usize, flags: u32) {
        let header = u64::from(len as u32) | u64::from(flags) << 32;
        self.layout
            .header_word(r, self.tail)
            .store(header.to_le(), Ordering::Release);
        self.tail += (RECORD_HEADER + pad8(len)) as u64;
        r.u64_at(self.layout.word(TAIL))
            .store(self.tail, Ordering::Release);
    }

    /// Copies bytes `range` of `parts` laid end to end to their place in
    /// the record being written.
    fn write_parts(&self, r: &ShmRegion, parts: &[std::io::IoSlice<'_>], range: Range<usize>) {
        let base = self.tail + RECORD_HEADER as u64;
        let mut start = 0;
        for part in parts {
            let end = start + part.len();
            let (from, to) = (range.start.max(start), range.end.min(end));
            if from < to {
                self.layout
                    .write(r, base + from as u64, &part[from - start..to - start]);
            }
            if end >= range.end {
                break;
            }
            start = end;
        }
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
        let wanted = total.min(limit).min(self.layout.max_record());
        // The record, and the empty header behind it.
        let free = self.room_for(r, RECORD_HEADER + pad8(wanted) + RECORD_HEADER)?;
        let room = free.saturating_sub(2 * RECORD_HEADER) / 8 * 8;
        let len = wanted.min(room);
        if len == 0 {
            return Ok(0);
        }
        // The payload bytes that share the header's cache line go last,
        // just before the header: a consumer watching that line (across
        // CPUs) then takes it from us once, whole, where writing them first
        // had it fetch the line after them and again after the header.
        let line_end = (self.tail | 63) + 1;
        let with_header = (line_end - self.tail) as usize - RECORD_HEADER;
        let with_header = with_header.min(len);
        self.write_parts(r, parts, with_header..len);
        self.mark_next(r, len);
        self.write_parts(r, parts, 0..with_header);
        self.publish(r, len, 0);
        Ok(len)
    }

    /// Says the producer is done: the consumer reads what is left, then
    /// sees the end (at either place it may look).
    pub(crate) fn close(&self, r: &ShmRegion) {
        for at in [PRODUCER_CLOSED_APART, PRODUCER_CLOSED] {
            r.u32_at(self.layout.word(at)).store(1, Ordering::Release);
        }
    }

    /// Whether the consumer is gone.
    pub(crate) fn consumer_closed(&self, r: &ShmRegion) -> bool {
        let at = if self.closed_apart {
            CONSUMER_CLOSED_APART
        } else {
            CONSUMER_CLOSED
        };
        r.u32_at(self.layout.word(at)).load(Ordering::Acquire) != 0
    }
}

/// The record being read: its header, read once.
#[derive(Debug, Clone, Copy)]
struct Record {
    len: usize,
    more: bool,
    taken: usize,
}

/// Where a read puts what it takes from a ring.
pub(crate) trait Sink {
    /// Bytes it takes yet.
    fn room(&self) -> usize;
    /// Takes `n` bytes (at most [`Self::room`]) from ring position `pos`.
    fn take(&mut self, layout: &Layout, r: &ShmRegion, pos: u64, n: usize);
}

/// A slice, filled from its start.
pub(crate) struct SliceSink<'a> {
    buf: &'a mut [u8],
    filled: usize,
}

impl<'a> SliceSink<'a> {
    pub(crate) fn new(buf: &'a mut [u8]) -> Self {
        SliceSink { buf, filled: 0 }
    }
}

impl Sink for SliceSink<'_> {
    fn room(&self) -> usize {
        self.buf.len() - self.filled
    }

    fn take(&mut self, layout: &Layout, r: &ShmRegion, pos: u64, n: usize) {
        layout.read(r, pos, &mut self.buf[self.filled..self.filled + n]);
        self.filled += n;
    }
}

/// The end of a vector, up to a length: it grows as bytes come, with no
/// zeroing first (a receive of a few bytes used to zero 16 KiB of room).
pub(crate) struct VecSink<'a> {
    vec: &'a mut Vec<u8>,
    limit: usize,
}

impl<'a> VecSink<'a> {
    /// Appends to `vec` until it is `limit` long.
    pub(crate) fn new(vec: &'a mut Vec<u8>, limit: usize) -> Self {
        VecSink { vec, limit }
    }
}

impl Sink for VecSink<'_> {
    fn room(&self) -> usize {
        self.limit.saturating_sub(self.vec.len())
    }

    fn take(&mut self, layout: &Layout, r: &ShmRegion, pos: u64, n: usize) {
        layout.append(r, pos, n, self.vec);
    }
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
    /// The producer's position as last read and accepted (not read where
    /// the producer marks its records).
    tail_seen: u64,
    record: Option<Record>,
    /// The producer [`MARKS_RECORDS`]: a record is there once its header
    /// is not empty, and the producer's `closed` flag is read at 144.
    marked: bool,
}

impl Consumer {
    /// The consumer of a ring whose producer has `producer_features`.
    pub(crate) fn new(layout: Layout, producer_features: u32) -> Consumer {
        Consumer {
            layout,
            head: 0,
            tail_seen: 0,
            record: None,
            marked: producer_features & MARKS_RECORDS != 0,
        }
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

    /// The header at `pos`, read once: `None` if it is empty (where the
    /// producer marks its records: no record there yet). Its length is
    /// bounded by what was published up to `tail`, or, where records are
    /// marked, by the ring (a record and the empty header behind it never
    /// take more than the ring from our position); known flags only.
    fn header(&self, r: &ShmRegion, pos: u64, tail: Option<u64>) -> Result<Option<(usize, bool)>> {
        let header = u64::from_le(self.layout.header_word(r, pos).load(Ordering::Acquire));
        if header == 0 && tail.is_none() {
            return Ok(None);
        }
        let len = header as u32 as usize;
        let flags = (header >> 32) as u32;
        if flags & !MORE != 0 {
            return Err(corrupt("a record has flags no version defines"));
        }
        let published = match tail {
            Some(tail) => tail - pos,
            None => self.layout.capacity as u64 - (pos - self.head) - RECORD_HEADER as u64,
        };
        if len > self.layout.max_received() || (RECORD_HEADER + pad8(len)) as u64 > published {
            return Err(corrupt("a record is longer than what was published"));
        }
        Ok(Some((len, flags & MORE != 0)))
    }

    /// The record at our position, once published: its header read once
    /// and bounded by what was published.
    fn current(&mut self, r: &ShmRegion) -> Result<Option<Record>> {
        if let Some(record) = self.record {
            return Ok(Some(record));
        }
        let tail = if self.marked {
            // The cache line after the header's, read beside it: a record
            // that runs into it (a 64-byte message does) then arrives in
            // one transfer across CPUs, not two one after the other.
            let next_line = (self.head | 63) + 1;
            std::hint::black_box(
                self.layout
                    .header_word(r, next_line)
                    .load(Ordering::Relaxed),
            );
            None
        } else {
            let tail = self.tail(r)?;
            if tail == self.head {
                return Ok(None);
            }
            Some(tail)
        };
        let Some((len, more)) = self.header(r, self.head, tail)? else {
            return Ok(None);
        };
        let record = Record {
            len,
            more,
            taken: 0,
        };
        self.record = Some(record);
        Ok(Some(record))
    }

    /// Whether a producer waiting for room would go on now: a quarter of
    /// the ring or less left unread ([`Producer::has_room`]), or it may
    /// wait for less (one from before [`MARKS_RECORDS`]: woken at every
    /// record freed). Reads the producer's `tail`, so only for one found
    /// waiting; a nonsense `tail` only costs that producer its wake-up.
    pub(crate) fn writer_would_go_on(&self, r: &ShmRegion) -> bool {
        if !self.marked {
            return true;
        }
        let tail = r.u64_at(self.layout.word(TAIL)).load(Ordering::Acquire);
        tail.wrapping_sub(self.head) <= (self.layout.capacity / 4) as u64
    }

    /// Whether a record is there to read.
    pub(crate) fn ready(&mut self, r: &ShmRegion) -> Result<bool> {
        Ok(self.current(r)?.is_some())
    }

    /// Copies what fits of the current record into `buf`; `None` if no
    /// record is published. A record used up gives its space back.
    #[cfg(test)]
    pub(crate) fn read(&mut self, r: &ShmRegion, buf: &mut [u8]) -> Result<Option<Chunk>> {
        self.read_into(r, &mut SliceSink::new(buf))
    }

    /// Moves what `sink` takes of the current record into it; `None` if no
    /// record is published. A record used up gives its space back.
    pub(crate) fn read_into(
        &mut self,
        r: &ShmRegion,
        sink: &mut impl Sink,
    ) -> Result<Option<Chunk>> {
        let Some(mut record) = self.current(r)? else {
            return Ok(None);
        };
        let n = sink.room().min(record.len - record.taken);
        let at = self.head + (RECORD_HEADER + record.taken) as u64;
        sink.take(&self.layout, r, at, n);
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
        let tail = (!self.marked).then_some(self.tail_seen);
        let at = self.head + (RECORD_HEADER + first.taken) as u64;
        if !each(at, first.len - first.taken) {
            return Ok(());
        }
        let mut pos = self.head + (RECORD_HEADER + pad8(first.len)) as u64;
        // Unmarked: up to the tail seen. Marked: up to an empty header,
        // within the ring (a marked record leaves room for one behind it).
        let end = tail.unwrap_or(self.head + self.layout.capacity as u64 - RECORD_HEADER as u64);
        while pos < end {
            let Some((len, _)) = self.header(r, pos, tail)? else {
                break;
            };
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
            layout.append(r, pos, n, &mut out);
            out.len() < max
        })?;
        Ok(out)
    }

    /// Says the consumer is gone: the producer's next push fails (at
    /// either place the producer may look).
    pub(crate) fn close(&self, r: &ShmRegion) {
        for at in [CONSUMER_CLOSED_APART, CONSUMER_CLOSED] {
            r.u32_at(self.layout.word(at)).store(1, Ordering::Release);
        }
    }

    /// Whether the producer is done (what it published may still be read).
    pub(crate) fn producer_closed(&self, r: &ShmRegion) -> bool {
        let at = if self.marked {
            PRODUCER_CLOSED_APART
        } else {
            PRODUCER_CLOSED
        };
        r.u32_at(self.layout.word(at)).load(Ordering::Acquire) != 0
    }
}

#[cfg(test)]
mod tests;
