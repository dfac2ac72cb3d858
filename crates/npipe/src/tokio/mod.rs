//! The tokio front end (feature `tokio`): Windows' overlapped I/O on named
//! pipes, as async Rust.
//!
//! The same pipes, semantics and errors as the blocking API, driven by the
//! same protocol state machines ([`crate::proto`]) and the same read/write
//! core, so a blocking client talks to an async server and the other way
//! round:
//!
//! | blocking | tokio |
//! |---|---|
//! | [`ServerOptions::create`](crate::ServerOptions::create) → [`crate::PipeListener`] | [`ServerOptions::create_async`](crate::ServerOptions::create_async) → [`PipeListener`] |
//! | [`PipeListener::accept`](crate::PipeListener::accept) | [`PipeListener::accept`]`.await` (cancel-safe; time it out with `tokio::time::timeout`) |
//! | [`ClientOptions::open`](crate::ClientOptions::open) | [`ClientOptions::open_async`](crate::ClientOptions::open_async)`.await` |
//! | [`crate::PipeServer`], [`crate::PipeClient`] (`Pipe<PipeStream, _>`) | [`PipeServer`], [`PipeClient`] (`Pipe<tokio::PipeStream, _>`) |
//! | `std::io::Read` / `Write` | `tokio::io::AsyncRead` / `AsyncWrite` |
//! | [`crate::call`], [`ClientOptions::call`](crate::ClientOptions::call) | [`call`]`.await`, [`ClientOptions::call_async`](crate::ClientOptions::call_async)`.await` |
//!
//! [`create_async`](crate::ServerOptions::create_async) must be called
//! within a tokio runtime with I/O and time enabled (`enable_all`): the
//! server's acceptor runs as a task on it, reading every handshake side by
//! side, so a slow client holds up no one. Any runtime flavour works; the
//! crate needs only tokio's `net`, `rt`, `sync` and `time` features.
//!
//! The module is named `tokio` after the runtime it serves; inside code that
//! also uses the `tokio` crate, refer to it as `npipe::tokio`.
//!
//! Cancel safety is documented on each method of [`PipeServer`] and
//! [`PipeClient`] (a table heads their reads and writes): reads and
//! `accept` are cancel-safe, message writes are not (a message cut mid-way
//! breaks the writer, and the peer never sees it as whole).
//!
//! ```
//! use npipe::{ClientOptions, ServerOptions};
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//!
//! # let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
//! # rt.block_on(async {
//! let name = format!(r"\\.\pipe\doc-async-{}", std::process::id());
//! let listener = ServerOptions::new().create_async(&name)?; // CreateNamedPipe
//!
//! let server = tokio::spawn(async move {
//!     let mut pipe = listener.accept().await?;              // ConnectNamedPipe
//!     let request = pipe.recv_message().await?;              // ReadFile
//!     pipe.write_message(&request).await                     // WriteFile
//! });
//!
//! let mut client = ClientOptions::new().open_async(&name).await?; // CreateFile
//! assert_eq!(client.transact(b"ping").await?, b"ping");           // TransactNamedPipe
//! server.await.unwrap()?;
//!
//! // AsyncRead/AsyncWrite: on a message pipe, each write is one message.
//! let server = tokio::spawn({
//!     let listener = ServerOptions::new().create_async(format!("{name}-io"))?;
//!     async move {
//!         let mut pipe = listener.accept().await?;
//!         let mut buf = [0u8; 64];
//!         let n = pipe.read(&mut buf).await?;
//!         pipe.write_all(&buf[..n]).await?;
//!         Ok::<_, std::io::Error>(())
//!     }
//! });
//! let mut client = ClientOptions::new().open_async(format!("{name}-io")).await?;
//! client.write_all(b"one message").await?;
//! let mut buf = [0u8; 64];
//! let n = client.read(&mut buf).await?;
//! assert_eq!(&buf[..n], b"one message");
//! server.await.unwrap()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```

pub(crate) mod client;
#[cfg(test)]
pub(crate) mod join;
mod listener;
mod stream;
mod transport;

pub(crate) use client::call_with;
pub use client::{call, PipeClient};
pub use listener::{PipeListener, PipeServer};
pub use stream::PipeStream;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ClientOptions, ServerOptions};
    use std::future::Future;

    fn send_sync<T: Send + Sync>() {}
    fn send<F: Future + Send>(_: F) {}

    /// Dropping the listener removes the name, as the blocking one does;
    /// the name is free for another server at once.
    #[test]
    fn dropping_the_listener_removes_the_name() {
        let rt = ::tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let name =
                crate::PipeName::parse(&format!("unit-drop-{}", std::process::id())).unwrap();
            let file = crate::namespace_directory().join(name.file_name());
            let listener = ServerOptions::new().create_async(&name).unwrap();
            assert!(file.exists());
            let e = ServerOptions::new().create_async(&name).unwrap_err();
            assert_eq!(e.code(), crate::ErrorCode::PipeBusy);
            drop(listener);
            assert!(!file.exists());
            let e = ClientOptions::new().open_async(&name).await.unwrap_err();
            assert_eq!(e.code(), crate::ErrorCode::FileNotFound);
            drop(ServerOptions::new().create_async(&name).unwrap());
        });
    }

    /// The types and their futures are `Send` (and the types `Sync`), as a
    /// multi-thread runtime and `tokio::spawn` need: checked at compile time.
    #[test]
    fn types_and_futures_cross_threads() {
        send_sync::<PipeListener>();
        send_sync::<PipeServer>();
        send_sync::<PipeClient>();
        send_sync::<PipeStream>();
        let rt = ::tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let name = format!("unit-send-{}", std::process::id());
            let listener = ServerOptions::new().create_async(name.as_str()).unwrap();
            send(listener.accept());
            send(ClientOptions::new().open_async(name.as_str()));
            send(call(name.as_str(), b"x", std::time::Duration::ZERO));
            let mut client = ClientOptions::new()
                .open_async(name.as_str())
                .await
                .unwrap();
            let mut server = listener.accept().await.unwrap();
            let mut buf = [0u8; 4];
            send(client.write_message(b"x"));
            send(client.transact(b"x"));
            send(server.recv_message());
            send(server.read_message(&mut buf));
            send(server.flush_buffers());
        });
    }

    /// The escape hatches: `try_*` calls that never wait and say so, the
    /// readiness waits that go with them (data a read already buffered
    /// counts as readable), and the socket's descriptor.
    #[test]
    fn try_calls_never_wait_and_readiness_wakes_them() {
        use std::os::fd::AsRawFd;
        let rt = ::tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let name = format!("unit-try-{}", std::process::id());
            let listener = ServerOptions::new().create_async(name.as_str()).unwrap();
            let mut client = ClientOptions::new()
                .open_async(name.as_str())
                .await
                .unwrap();
            let mut server = listener.accept().await.unwrap();
            assert!(server.as_raw_fd() >= 0);
            assert_ne!(server.as_raw_fd(), client.as_raw_fd());

            let mut buf = [0u8; 8];
            let e = server.try_read_message(&mut buf).unwrap_err();
            assert_eq!(e.code(), crate::ErrorCode::NoData);
            let e = server.try_read(&mut buf).unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock);

            // Two messages in one burst: the first read buffers both, so
            // the second must be found without the socket being readable.
            assert_eq!(client.try_write(b"one").unwrap(), 3);
            assert_eq!(client.try_write(b"two!").unwrap(), 4);
            server.readable().await.unwrap();
            assert_eq!(
                server.try_read_message(&mut buf).unwrap(),
                crate::MessageRead::Complete(3)
            );
            assert_eq!(&buf[..3], b"one");
            tokio_timeout(server.readable()).await;
            assert_eq!(server.try_recv_message().unwrap(), b"two!");

            // A message cut by a short buffer: the rest is there at once.
            client.try_write(b"abcdef").unwrap();
            server.readable().await.unwrap();
            let mut small = [0u8; 2];
            assert_eq!(
                server.try_read_message(&mut small).unwrap(),
                crate::MessageRead::MoreData(2)
            );
            assert_eq!(server.try_recv_message().unwrap(), b"cdef");
            client.writable().await.unwrap();
        });
    }

    /// Fails the test if `f` waits (a readiness wait that should be done).
    async fn tokio_timeout<F: std::future::Future<Output = crate::Result<()>>>(f: F) {
        ::tokio::time::timeout(std::time::Duration::from_secs(5), f)
            .await
            .expect("waited although data was buffered")
            .unwrap();
    }
}
