//! The tokio front end on Windows (feature `tokio`): the kernel's named
//! pipes with overlapped I/O, under the same names and methods as the
//! Linux tokio front end.
//!
//! Each operation owns its buffers and its `OVERLAPPED` until the kernel
//! is done with them; its task is woken from the thread pool's wait on the
//! operation's event, so no thread is held per connection. Operations are
//! kept in the end, not in the futures waiting for them, which makes reads
//! and `accept` cancel-safe: a message the kernel delivers after its
//! future was dropped waits for the next read. A message write, once
//! started, finishes whole even if its future is dropped (its error, if
//! any, is the next write's). `transact` is not cancel-safe: dropped, it is
//! cancelled, and the request may have gone out.
//!
//! Unlike tokio's own `named_pipe`, which turns *more data* into a byte
//! stream, reads keep message boundaries: [`PipeServer::read_message`]
//! says [`MessageRead::MoreData`](crate::MessageRead::MoreData) as
//! `ReadFile` does.
//!
//! ```
//! use npipe::{ClientOptions, ServerOptions};
//!
//! # let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
//! # rt.block_on(async {
//! let name = format!(r"\\.\pipe\doc-async-win-{}", std::process::id());
//! let listener = ServerOptions::new().create_async(&name)?; // CreateNamedPipe
//! let server = tokio::spawn(async move {
//!     let mut pipe = listener.accept().await?;              // ConnectNamedPipe
//!     let request = pipe.recv_message().await?;              // ReadFile
//!     pipe.write_message(&request).await                     // WriteFile
//! });
//! let mut client = ClientOptions::new().open_async(&name).await?; // CreateFile
//! assert_eq!(client.transact(b"ping").await?, b"ping");           // TransactNamedPipe
//! server.await.unwrap()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use super::end::{client_queries, end_queries, impersonate_on_this_thread, revert, server_queries};
use super::open::{Attempt, Opener, RECONNECT_PAUSE};
use super::{code_of, os, Instances, INSTANCE_PAUSE};
use crate::error::{Error, ErrorCode, Result};
use crate::identity::{Identity, LocalUser};
use crate::info::PipeInfo;
use crate::name::PipeName;
use crate::options::{ClientOptions, ServerOptions};
use crate::stream_core::{MessageRead, Peek};
use crate::sys::{self, OpKind, Overlapped, Peer};
use crate::types::{Access, ReadMode, Wait};

mod conn;
mod write_out;

use conn::{async_io, AsyncConn};

/// The longest slice of `WaitNamedPipe` one blocking-pool thread sits in,
/// so a dropped connect leaves no long wait behind.
const WAIT_SLICE_MS: u32 = 100;

/// A named pipe server on tokio: the name and its instances
/// (`CreateNamedPipe` with `FILE_FLAG_OVERLAPPED`). One instance always
/// listens, so a client may connect while no one is in
/// [`accept`](Self::accept).
///
/// ```
/// use npipe::{ClientOptions, ServerOptions};
///
/// # let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
/// # rt.block_on(async {
/// let name = format!("doc-async-listener-win-{}", std::process::id());
/// let listener = ServerOptions::new().create_async(&name)?;
/// let _client = ClientOptions::new().open_async(&name).await?;
/// let server = listener.accept().await?; // the client connected first
/// assert_eq!(server.client_process_id(), std::process::id());
/// # Ok::<(), npipe::Error>(())
/// # }).unwrap();
/// ```
#[derive(Debug)]
pub struct PipeListener {
    instances: Instances,
    /// The listening instance and its `ConnectNamedPipe` in flight, kept
    /// here so a dropped `accept` loses no client.
    listening: ::tokio::sync::Mutex<Listening>,
    /// The listening instance, for `info` while an `accept` holds the
    /// lock above.
    probe: std::sync::Mutex<Option<Arc<sys::Pipe>>>,
}

#[derive(Debug, Default)]
struct Listening {
    pipe: Option<Arc<sys::Pipe>>,
    connecting: Option<Overlapped>,
}

impl PipeListener {
    pub(crate) fn create(name: PipeName, opts: ServerOptions) -> Result<PipeListener> {
        let instances = Instances::new(name, opts)?;
        let first = Arc::new(instances.first()?);
        Ok(PipeListener {
            instances,
            probe: std::sync::Mutex::new(Some(first.clone())),
            listening: ::tokio::sync::Mutex::new(Listening {
                pipe: Some(first),
                connecting: None,
            }),
        })
    }

    /// `ConnectNamedPipe`: waits for a client and returns its connection.
    /// While every instance is in use it waits for one to close.
    ///
    /// Cancel-safe: the wait stays with the listener, and a client that
    /// connects after the future is dropped is the next `accept`'s.
    pub async fn accept(&self) -> Result<PipeServer> {
        let mut listening = self.listening.lock().await;
        let l = &mut *listening;
        loop {
            let pipe = match &l.pipe {
                Some(pipe) => pipe.clone(),
                None => match self.instances.next()? {
                    Some(pipe) => {
                        let pipe = l.pipe.insert(Arc::new(pipe)).clone();
                        self.publish(Some(&pipe));
                        pipe
                    }
                    // Every instance is in use: wait for one to close.
                    None => {
                        ::tokio::time::sleep(INSTANCE_PAUSE).await;
                        continue;
                    }
                },
            };
            let op = match l.connecting.take() {
                Some(op) => Ok(op),
                None => Overlapped::start(pipe, OpKind::Connect),
            };
            let outcome = match op {
                Ok(op) => {
                    let op = l.connecting.insert(op);
                    let done = poll_fn(|cx| op.poll(cx)).await;
                    l.connecting = None;
                    done
                }
                Err(e) => Err(e),
            };
            match outcome {
                Ok(_) => break,
                // A client came and went before it was accepted: this
                // instance is spent; listen on a fresh one.
                Err(e) if code_of(&e) == Some(ErrorCode::NoData) => {
                    l.pipe = None;
                    self.publish(None);
                }
                Err(e) => return Err(os(e, "waiting for a client failed")),
            }
        }
        let pipe = l.pipe.take().expect("connected above");
        // The next client can connect while this one is served.
        l.pipe = self.instances.next().ok().flatten().map(Arc::new);
        self.publish(l.pipe.as_ref());
        Ok(PipeServer {
            conn: AsyncConn::new(self.instances.server_end(pipe)),
        })
    }

    /// The pipe's name.
    pub fn name(&self) -> &PipeName {
        &self.instances.name
    }

    /// The pipe as the server sees it (`GetNamedPipeInfo`,
    /// `GetNamedPipeHandleState`): its shape, and the instances connected.
    /// While an `accept` holds the listening instance, it is counted as
    /// listening still.
    pub fn info(&self) -> PipeInfo {
        let probe = self.probe.lock().unwrap_or_else(|e| e.into_inner()).clone();
        self.instances.info(probe.as_deref(), 1)
    }

    /// Says which instance listens now, for `info`.
    fn publish(&self, pipe: Option<&Arc<sys::Pipe>>) {
        *self.probe.lock().unwrap_or_else(|e| e.into_inner()) = pipe.cloned();
    }
}

/// The server end of a connected instance on tokio.
///
/// | method | cancel-safe |
/// |---|---|
/// | `read_message`, `recv_message`, `AsyncRead` | yes: what arrives later waits for the next read, and a message `recv_message` gathered in part stays in the end for the next |
/// | `readable`, `writable` | yes |
/// | `write_message`, `AsyncWrite` | the message goes out whole once started |
/// | `transact`, `transact_into` | no: cancelled, the request may have gone out |
/// | `flush_buffers` | yes |
#[derive(Debug)]
pub struct PipeServer {
    conn: AsyncConn,
}

/// The client end (`CreateFile` on the pipe's name, overlapped) on tokio;
/// its methods' cancel safety is as [`PipeServer`]'s.
#[derive(Debug)]
pub struct PipeClient {
    conn: AsyncConn,
}

/// The I/O both ends share, written once.
macro_rules! end_io {
    ($t:ty) => {
        impl $t {
            /// `ReadFile` in this end's read mode: one message, or its first
            /// part with [`MessageRead::MoreData`] (`ERROR_MORE_DATA`).
            pub async fn read_message(&mut self, buf: &mut [u8]) -> Result<MessageRead> {
                self.conn.read_message(buf).await
            }
            /// One whole message, however long.
            pub async fn recv_message(&mut self) -> Result<Vec<u8>> {
                self.conn.recv_message().await
            }
            /// `WriteFile`: one message (whole) on a message pipe.
            pub async fn write_message(&mut self, msg: &[u8]) -> Result<()> {
                self.conn.write_message(msg).await
            }
            /// `TransactNamedPipe`: the request out, the whole reply back.
            pub async fn transact(&mut self, request: &[u8]) -> Result<Vec<u8>> {
                self.conn.transact(request).await
            }
            /// `TransactNamedPipe` into the caller's buffer.
            pub async fn transact_into(
                &mut self,
                request: &[u8],
                reply: &mut [u8],
            ) -> Result<MessageRead> {
                self.conn.transact_into(request, reply).await
            }
            /// `PeekNamedPipe` (what a finished read holds counts first).
            pub fn peek(&mut self, buf: &mut [u8]) -> Result<Peek> {
                self.conn.peek(buf)
            }
            /// `FlushFileBuffers`: until the other end has read everything.
            pub async fn flush_buffers(&mut self) -> Result<()> {
                self.conn.flush_buffers().await
            }
            /// Waits until a read would not wait: a read has finished (with
            /// data, an empty message, or the error the next read reports).
            /// For use with the `try_*` reads. Cancel-safe: the read it
            /// starts stays in flight for the next read. (`&mut self` here,
            /// where Linux's takes `&self`: it starts that read.)
            pub async fn readable(&mut self) -> Result<()> {
                self.conn.readable().await
            }
            /// Waits until the write in flight (a `try_write`'s) is done,
            /// and gives its error if it failed. Cancel-safe.
            pub async fn writable(&mut self) -> Result<()> {
                self.conn.writable().await
            }
            /// [`read_message`](Self::read_message) if it would not wait:
            /// what is there now, else `ERROR_NO_DATA` (232), as `ReadFile`
            /// on a `PIPE_NOWAIT` pipe. Takes nothing when it fails that
            /// way (a read it started stays in flight for the next one).
            pub fn try_read_message(&mut self, buf: &mut [u8]) -> Result<MessageRead> {
                self.conn.try_read_message(buf)
            }
            /// [`recv_message`](Self::recv_message) if the whole message is
            /// there, else `ERROR_NO_DATA` (232); a message only partly
            /// read stays whole for the next read.
            pub fn try_recv_message(&mut self) -> Result<Vec<u8>> {
                self.conn.try_recv_message()
            }
            /// `AsyncRead` without waiting, as tokio's `try_read`: the bytes
            /// there now (of one message, on a message pipe), or
            /// `WouldBlock`.
            pub fn try_read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                self.conn.try_read(buf)
            }
            /// `AsyncWrite` without waiting, as tokio's `try_write`: the
            /// whole buffer, started as one write that finishes whole
            /// (await [`writable`](Self::writable) before waiting for an
            /// answer), or `WouldBlock` while the previous one is in
            /// flight.
            pub fn try_write(&mut self, buf: &[u8]) -> io::Result<usize> {
                self.conn.try_write(buf)
            }
        }
    };
}

end_io!(PipeServer);
end_io!(PipeClient);
async_io!(PipeServer);
async_io!(PipeClient);
end_queries!(PipeServer, conn.state);
end_queries!(PipeClient, conn.state);
server_queries!(PipeServer, conn.state);
client_queries!(PipeClient, conn.state);

impl PipeServer {
    /// Runs `f` as the client on a thread of its own
    /// (`ImpersonateNamedPipeClient` there, then `RevertToSelf`), so the
    /// runtime's threads never act as anyone else.
    pub async fn run_as_client<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let pipe = self.conn.state.pipe.clone();
        let (done, result) = ::tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("npipe-impersonation".into())
            .spawn(move || {
                let out = impersonate_on_this_thread(&pipe).map(|()| {
                    // Reverts even if `f` panics.
                    struct Revert;
                    impl Drop for Revert {
                        fn drop(&mut self) {
                            revert();
                        }
                    }
                    let _revert = Revert;
                    f()
                });
                let _ = done.send(out);
            })
            .map_err(|e| Error::os(e, "cannot start the impersonation thread"))?;
        result.await.map_err(|_| {
            Error::new(
                ErrorCode::Other,
                "the closure run as the client panicked (the thread reverted first)",
            )
        })?
    }

    /// `DisconnectNamedPipe`: operations in flight are cancelled, the
    /// client's next call fails with *pipe not connected*, and this end
    /// can be used no more.
    pub fn disconnect(&mut self) -> Result<()> {
        self.conn.disconnect()
    }

    /// The largest message the server was created to accept: the most
    /// `recv_message` gathers (a longer one is `ERROR_BAD_PIPE`). The
    /// kernel itself limits no message; `read_message` takes any in parts.
    pub fn max_message_size(&self) -> u32 {
        self.conn.state.max_message
    }
}

impl PipeClient {
    /// `CreateFile` on the pipe, after `WaitNamedPipe` (on the blocking
    /// pool, in slices) while every instance is busy, as `opts` says.
    pub(crate) async fn connect(name: &PipeName, opts: &ClientOptions) -> Result<PipeClient> {
        let opener = Opener::new(name, opts)?;
        let pipe = loop {
            match opener.attempt()? {
                Attempt::Open(pipe) => break pipe,
                Attempt::WaitForInstance(ms) => {
                    // The server's default wait (0) is the kernel's to time;
                    // any other is sliced, and `attempt` keeps the deadline.
                    let slice = if ms == 0 { 0 } else { ms.min(WAIT_SLICE_MS) };
                    let path = opener.path.clone();
                    let waited =
                        ::tokio::task::spawn_blocking(move || sys::wait_named_pipe(&path, slice))
                            .await
                            .map_err(|e| {
                                Error::new(ErrorCode::Other, format!("the wait was lost: {e}"))
                            })?;
                    match waited {
                        Ok(()) => {}
                        Err(e) if slice < ms && code_of(&e) == Some(ErrorCode::Timeout) => {}
                        Err(e) => {
                            opener.wait_failed(e)?;
                            ::tokio::time::sleep(RECONNECT_PAUSE).await;
                        }
                    }
                }
                Attempt::Pause => ::tokio::time::sleep(RECONNECT_PAUSE).await,
            }
        };
        Ok(PipeClient {
            conn: AsyncConn::new(opener.finish(pipe)?),
        })
    }
}

/// `CallNamedPipe` on tokio: connects (waiting up to `timeout` for a free
/// instance), sends `request` as one message, returns the reply, closes.
pub async fn call(
    name: impl TryInto<PipeName, Error = Error>,
    request: &[u8],
    timeout: Duration,
) -> Result<Vec<u8>> {
    let mut opts = ClientOptions::new();
    opts.wait(Wait::for_call(timeout));
    call_with(&opts, &name.try_into()?, request).await
}

pub(crate) async fn call_with(
    opts: &ClientOptions,
    name: &PipeName,
    request: &[u8],
) -> Result<Vec<u8>> {
    let mut opts = opts.clone();
    opts.access(Access::ReadWrite).read_mode(ReadMode::Message);
    let mut client = PipeClient::connect(name, &opts).await?;
    let Some(limit) = opts.read_timeout else {
        return client.transact(request).await;
    };
    // A transaction given up is cancelled before its buffers go.
    ::tokio::time::timeout(limit, client.transact(request))
        .await
        .unwrap_or_else(|_| {
            Err(Error::new(
                ErrorCode::Timeout,
                format!("{name} did not reply within the read timeout"),
            ))
        })
}

#[cfg(test)]
mod tests;
