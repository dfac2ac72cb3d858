//! The client's side of a remote pipe: a TLS 1.3 connection to the gateway
//! on the pipe's host, relayed to a local socket pair, so that both front
//! ends run their usual connect and data path on the local end unchanged
//! (HELLO, waits, modes, *more data*, peeks, transact).
//!
//! The TLS connections live on one background thread per process, a
//! current-thread tokio runtime that only relays, so a blocking client
//! needs no runtime of its own and an async one does not load its own.
//!
//! Failures say where they happened: the gateway cannot be reached
//! (`ERROR_BAD_NETPATH`), the TLS handshake failed on this side (the
//! gateway's certificate is not from our CA, or not for this host:
//! `ERROR_ACCESS_DENIED`), or the gateway refused our certificate, which
//! TLS 1.3 reports only after the handshake: the relay then answers the
//! HELLO itself with a refusal that quotes the alert, so the caller gets
//! an error and not a bare hang-up.

use std::net::IpAddr;
use std::os::fd::OwnedFd;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use ::tokio::io::{AsyncReadExt, AsyncWriteExt};
use ::tokio::net::{TcpStream, UnixStream};
use rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;

use super::tls::{self, TlsFiles};
use crate::error::{Error, ErrorCode, Result};
use crate::name::PipeName;
use crate::options::ClientOptions;
use crate::proto::handshake::Reply;
use crate::sys::Socket;

/// The gateway's port unless the options or `NPIPE_GATEWAY_PORT` say.
pub const DEFAULT_PORT: u16 = 4455;

/// Bytes each way a relay moves per read.
const RELAY_BUFFER: usize = 64 * 1024;

/// How long reaching the gateway and the TLS handshake may take.
const DIAL_LIMIT: Duration = Duration::from_secs(10);

/// Where to go and with what: resolved from the options and environment
/// before anything is dialled.
#[derive(Debug)]
struct Dial {
    host: String,
    port: u16,
    config: Arc<rustls::ClientConfig>,
}

fn from_env_or(
    value: &Option<std::path::PathBuf>,
    var: &str,
    what: &str,
) -> Result<std::path::PathBuf> {
    if let Some(path) = value {
        return Ok(path.clone());
    }
    match std::env::var_os(var) {
        Some(path) if !path.is_empty() => Ok(path.into()),
        _ => Err(Error::new(
            ErrorCode::InvalidParameter,
            format!(
                "a remote pipe needs {what}: set it in ClientOptions, with the tool's \
                 --cert/--key/--ca, or in {var} (npipe cert makes one)"
            ),
        )),
    }
}

impl Dial {
    fn of(name: &PipeName, opts: &ClientOptions) -> Result<Dial> {
        let host = name.host().expect("a remote name").to_string();
        let remote = &opts.remote;
        let files = TlsFiles {
            cert: from_env_or(&remote.cert, "NPIPE_CERT", "a client certificate")?,
            key: from_env_or(&remote.key, "NPIPE_KEY", "the certificate's private key")?,
            ca: from_env_or(
                &remote.ca,
                "NPIPE_CA",
                "the CA that issued the gateway's certificate",
            )?,
        };
        let port = match remote.port {
            Some(port) => port,
            None => match std::env::var("NPIPE_GATEWAY_PORT") {
                Ok(text) => text.parse().map_err(|_| {
                    Error::new(
                        ErrorCode::InvalidParameter,
                        format!("NPIPE_GATEWAY_PORT={text:?} is not a port number"),
                    )
                })?,
                Err(_) => DEFAULT_PORT,
            },
        };
        Ok(Dial {
            host,
            port,
            config: tls::cached_client_config(&files)?,
        })
    }

    fn server_name(&self) -> Result<ServerName<'static>> {
        // `\\[::1]\pipe\x` is not a pipe name; a bare IPv6 address is.
        if let Ok(ip) = self.host.parse::<IpAddr>() {
            return Ok(ServerName::IpAddress(ip.into()));
        }
        ServerName::try_from(self.host.clone()).map_err(|e| {
            Error::new(
                ErrorCode::BadNetPath,
                format!("{:?} is not a host name: {e}", self.host),
            )
        })
    }
}

/// The runtime the relays run on: one thread, started at the first remote
/// connect, alive for the rest of the process.
fn relays() -> &'static ::tokio::runtime::Handle {
    static HANDLE: OnceLock<::tokio::runtime::Handle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let runtime = ::tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("cannot start the remote pipes' runtime");
        let handle = runtime.handle().clone();
        std::thread::Builder::new()
            .name("npipe-remote".into())
            .spawn(move || runtime.block_on(std::future::pending::<()>()))
            .expect("cannot start the remote pipes' thread");
        handle
    })
}

/// Connects to `name`'s gateway and returns the local end of the relay,
/// blocking the calling thread.
pub(crate) fn connect_blocking(name: &PipeName, opts: &ClientOptions) -> Result<Socket> {
    let dial = Dial::of(name, opts)?;
    let (tx, rx) = std::sync::mpsc::channel();
    relays().spawn(async move {
        let _ = tx.send(open(dial).await);
    });
    rx.recv().unwrap_or_else(|_| Err(relay_gone()))
}

/// Connects to `name`'s gateway and returns the local end of the relay.
pub(crate) async fn connect_async(name: &PipeName, opts: &ClientOptions) -> Result<Socket> {
    let dial = Dial::of(name, opts)?;
    let (tx, rx) = ::tokio::sync::oneshot::channel();
    relays().spawn(async move {
        let _ = tx.send(open(dial).await);
    });
    rx.await.unwrap_or_else(|_| Err(relay_gone()))
}

fn relay_gone() -> Error {
    Error::new(
        ErrorCode::Other,
        "the remote pipes' relay thread has stopped",
    )
}

/// Dials the gateway, shakes hands, and starts relaying it to a new socket
/// pair, one end of which it returns.
async fn open(dial: Dial) -> Result<Socket> {
    let at = format!("{}:{}", dial.host, dial.port);
    let tcp = match ::tokio::time::timeout(
        DIAL_LIMIT,
        TcpStream::connect((dial.host.as_str(), dial.port)),
    )
    .await
    {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => {
            return Err(Error::new(
                ErrorCode::BadNetPath,
                format!(
                "cannot reach the npipe gateway at {at}: {e} (is `npipe gateway` running there?)"
            ),
            ))
        }
        Err(_) => {
            return Err(Error::new(
                ErrorCode::BadNetPath,
                format!("the npipe gateway at {at} did not answer within {DIAL_LIMIT:?}"),
            ))
        }
    };
    let _ = tcp.set_nodelay(true);
    let connector = TlsConnector::from(Arc::clone(&dial.config));
    let tls = match ::tokio::time::timeout(DIAL_LIMIT, connector.connect(dial.server_name()?, tcp))
        .await
    {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            return Err(Error::new(
                ErrorCode::AccessDenied,
                format!("TLS with the npipe gateway at {at} failed: {e}"),
            ))
        }
        Err(_) => {
            return Err(Error::new(
                ErrorCode::BadNetPath,
                format!("the TLS handshake with {at} did not finish within {DIAL_LIMIT:?}"),
            ))
        }
    };
    let (mine, relay_end) =
        Socket::pair().map_err(|e| Error::os(e, "cannot create the relay's socket pair"))?;
    let relay_end = std::os::unix::net::UnixStream::from(OwnedFd::from(relay_end));
    relay_end
        .set_nonblocking(true)
        .map_err(|e| Error::os(e, "cannot make the relay's socket non-blocking"))?;
    let local = UnixStream::from_std(relay_end)
        .map_err(|e| Error::os(e, "cannot register the relay's socket"))?;
    ::tokio::spawn(relay(tls, local, at));
    Ok(mine)
}

/// Copies both ways until each side has ended (the way out on a task of
/// its own). A TLS failure before the gateway said anything (it refused
/// our certificate) becomes a refusal of the HELLO the client is waiting
/// to have answered.
async fn relay(tls: tokio_rustls::client::TlsStream<TcpStream>, local: UnixStream, at: String) {
    let (mut tls_in, mut tls_out) = ::tokio::io::split(tls);
    let (mut local_in, mut local_out) = local.into_split();
    ::tokio::spawn(async move {
        let mut buf = vec![0u8; RELAY_BUFFER];
        while let Ok(n) = local_in.read(&mut buf).await {
            if n == 0 || tls_out.write_all(&buf[..n]).await.is_err() {
                break;
            }
            // rustls holds what it encrypted until flushed.
            if tls_out.flush().await.is_err() {
                break;
            }
        }
        let _ = tls_out.shutdown().await;
    });
    let mut buf = vec![0u8; RELAY_BUFFER];
    let mut answered = false;
    loop {
        match tls_in.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => {
                answered = true;
                if local_out.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
            Err(e) => {
                if !answered {
                    let _ = local_out.write_all(&refusal(&at, &e)).await;
                }
                break;
            }
        }
    }
    let _ = local_out.shutdown().await;
}

/// A REPLY refusing the HELLO, for a gateway that ended TLS before it
/// answered.
fn refusal(at: &str, e: &std::io::Error) -> Vec<u8> {
    let reply = Reply::Refused {
        code: ErrorCode::AccessDenied.win32(),
        reason: format!("the npipe gateway at {at} refused this client during TLS: {e}"),
    };
    let mut out = Vec::new();
    reply.encode(&mut out).expect("a refusal always encodes");
    out
}
