//! The baselines: the same work over a plain Unix domain stream socket,
//! written the simplest fast way by hand. Messages are a 4-byte
//! little-endian length and the payload, sent with one `writev` per message
//! and read through a 64 KiB `BufReader`; bytes are plain `write`/`read`.

use std::io::{self, BufReader, IoSlice, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::Instant;

use super::cases::{Case, Kind, Sample};
use crate::Error;

/// The reader's buffer, as a competent hand-written reader would size it.
const READ_BUFFER: usize = 64 * 1024;

fn io_failure(e: io::Error, what: &str) -> Error {
    Error::other(format!("bench (raw socket): {what}: {e}"))
}

/// Sends one framed message with one `writev` (more only if the kernel
/// takes part of it).
pub fn write_message(mut stream: &UnixStream, payload: &[u8]) -> io::Result<()> {
    let header = (payload.len() as u32).to_le_bytes();
    let mut bufs = [IoSlice::new(&header), IoSlice::new(payload)];
    let mut bufs = &mut bufs[..];
    while !bufs.is_empty() {
        let n = stream.write_vectored(bufs)?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut bufs, n);
    }
    Ok(())
}

/// Reads one framed message into `buf`; `None` at a clean end of stream.
pub fn read_message<R: Read>(reader: &mut R, buf: &mut [u8]) -> io::Result<Option<usize>> {
    let mut header = [0u8; 4];
    match reader.read_exact(&mut header) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes(header) as usize;
    if len > buf.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "message larger than the buffer",
        ));
    }
    reader.read_exact(&mut buf[..len])?;
    Ok(Some(len))
}

/// [`write_message`] on tokio: one `writev` per message.
async fn write_message_async(
    stream: &mut tokio::net::UnixStream,
    payload: &[u8],
) -> io::Result<()> {
    use tokio::io::AsyncWriteExt;
    let header = (payload.len() as u32).to_le_bytes();
    let mut bufs = [IoSlice::new(&header), IoSlice::new(payload)];
    let mut bufs = &mut bufs[..];
    while !bufs.is_empty() {
        let n = stream.write_vectored(bufs).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut bufs, n);
    }
    Ok(())
}

/// [`read_message`] on tokio.
async fn read_message_async<R: tokio::io::AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut [u8],
) -> io::Result<Option<usize>> {
    use tokio::io::AsyncReadExt;
    let mut header = [0u8; 4];
    match reader.read_exact(&mut header).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes(header) as usize;
    if len > buf.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "message larger than the buffer",
        ));
    }
    reader.read_exact(&mut buf[..len]).await?;
    Ok(Some(len))
}

/// One run of `case` over the raw socket at `path`.
pub fn run_raw(case: &Case, path: &Path, count: u64) -> Result<Sample, Error> {
    let fail = |e| io_failure(e, "the run failed");
    match case.kind {
        Kind::Bytes => {
            let mut stream = UnixStream::connect(path).map_err(fail)?;
            let chunk = vec![0x5a_u8; case.size];
            let start = Instant::now();
            for _ in 0..count {
                stream.write_all(&chunk).map_err(fail)?;
            }
            stream.shutdown(std::net::Shutdown::Write).map_err(fail)?;
            let mut ack = [0u8; 1];
            stream.read_exact(&mut ack).map_err(fail)?;
            Ok(Sample::rate(case, count, start.elapsed()))
        }
        Kind::Messages => {
            let stream = UnixStream::connect(path).map_err(fail)?;
            let msg = vec![0x5a_u8; case.size];
            let start = Instant::now();
            for _ in 0..count {
                write_message(&stream, &msg).map_err(fail)?;
            }
            write_message(&stream, &[]).map_err(fail)?;
            let mut ack = [0u8; 1];
            match read_message(&mut &stream, &mut ack).map_err(fail)? {
                Some(0) => {}
                _ => return Err(io_failure(io::ErrorKind::InvalidData.into(), "bad answer")),
            }
            Ok(Sample::rate(case, count, start.elapsed()))
        }
        Kind::Transact => {
            let stream = UnixStream::connect(path).map_err(fail)?;
            let mut reader = BufReader::with_capacity(READ_BUFFER, &stream);
            let request = vec![0x5a_u8; case.size];
            let mut reply = vec![0u8; case.size];
            let mut times = Vec::with_capacity(count as usize);
            for _ in 0..count {
                let start = Instant::now();
                write_message(&stream, &request).map_err(fail)?;
                let n = read_message(&mut reader, &mut reply).map_err(fail)?;
                times.push(start.elapsed());
                if n != Some(case.size) {
                    return Err(io_failure(io::ErrorKind::InvalidData.into(), "bad reply"));
                }
            }
            Ok(Sample::latency(times))
        }
        Kind::TransactTokio => super::cases::runtime()?.block_on(async {
            let stream = tokio::net::UnixStream::connect(path).await.map_err(fail)?;
            let mut reader = tokio::io::BufReader::with_capacity(READ_BUFFER, stream);
            let request = vec![0x5a_u8; case.size];
            let mut reply = vec![0u8; case.size];
            let mut times = Vec::with_capacity(count as usize);
            for _ in 0..count {
                let start = Instant::now();
                write_message_async(reader.get_mut(), &request)
                    .await
                    .map_err(fail)?;
                let n = read_message_async(&mut reader, &mut reply)
                    .await
                    .map_err(fail)?;
                times.push(start.elapsed());
                if n != Some(case.size) {
                    return Err(io_failure(io::ErrorKind::InvalidData.into(), "bad reply"));
                }
            }
            Ok(Sample::latency(times))
        }),
        Kind::RemoteTransact | Kind::RemoteBytes | Kind::RemoteConnect => Err(io_failure(
            io::ErrorKind::Unsupported.into(),
            "a remote case's baseline is raw TLS (remote.rs)",
        )),
        Kind::Connect | Kind::Call => {
            let request = vec![0x5a_u8; case.size];
            let mut reply = vec![0u8; case.size];
            let start = Instant::now();
            for _ in 0..count {
                let mut stream = UnixStream::connect(path).map_err(fail)?;
                stream.write_all(&request).map_err(fail)?;
                stream.read_exact(&mut reply).map_err(fail)?;
            }
            Ok(Sample::rate(case, count, start.elapsed()))
        }
    }
}

/// The server side of the baseline: serves connections one after another,
/// for ever (the peer process exits when the bench is done).
pub fn serve(case: &Case, listener: UnixListener) {
    let mut buf = vec![0u8; case.server_buffer()];
    if case.kind == Kind::TransactTokio {
        let _ = serve_tokio(listener, &mut buf);
        return;
    }
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        // A client that goes away mid-run is the bench's problem, not ours.
        let _ = serve_one(case, stream, &mut buf);
    }
}

/// The tokio twin of the transact server, on a current-thread runtime.
fn serve_tokio(listener: UnixListener, buf: &mut [u8]) -> io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        listener.set_nonblocking(true)?;
        let listener = tokio::net::UnixListener::from_std(listener)?;
        loop {
            let (stream, _) = listener.accept().await?;
            let mut reader = tokio::io::BufReader::with_capacity(READ_BUFFER, stream);
            // A client that goes away ends its connection, not the server.
            while let Ok(Some(n)) = read_message_async(&mut reader, buf).await {
                if write_message_async(reader.get_mut(), &buf[..n])
                    .await
                    .is_err()
                {
                    break;
                }
            }
        }
    })
}

fn serve_one(case: &Case, mut stream: UnixStream, buf: &mut [u8]) -> io::Result<()> {
    match case.kind {
        Kind::Bytes => {
            while stream.read(buf)? > 0 {}
            stream.write_all(&[1])
        }
        Kind::Messages => {
            let mut reader = BufReader::with_capacity(READ_BUFFER, &stream);
            while let Some(n) = read_message(&mut reader, buf)? {
                if n == 0 {
                    break;
                }
            }
            write_message(&stream, &[])
        }
        Kind::Transact | Kind::TransactTokio => {
            let mut reader = BufReader::with_capacity(READ_BUFFER, &stream);
            while let Some(n) = read_message(&mut reader, buf)? {
                write_message(&stream, &buf[..n])?;
            }
            Ok(())
        }
        Kind::Connect | Kind::Call => {
            let request = &mut buf[..case.size];
            stream.read_exact(request)?;
            stream.write_all(request)
        }
        // Their baseline is raw TLS (remote.rs); nothing connects here.
        Kind::RemoteTransact | Kind::RemoteBytes | Kind::RemoteConnect => Ok(()),
    }
}
