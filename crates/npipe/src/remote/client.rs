//! The client's side of a remote pipe: a TLS 1.3 connection to the gateway
//! on the pipe's host, on which either front end runs its connect and data
//! path directly (HELLO, waits, modes, *more data*, peeks, transact): the
//! blocking one through [`TlsTransport`], the tokio one through
//! [`AsyncTls`](super::async_tls::AsyncTls) on the caller's runtime.
//!
//! Failures say where they happened: the gateway cannot be reached
//! (`ERROR_BAD_NETPATH`), the TLS handshake failed on this side (the
//! gateway's certificate is not from our CA, or not for this host:
//! `ERROR_ACCESS_DENIED`), or the gateway refused our certificate, which
//! TLS 1.3 reports only after the handshake: the transport then fails the
//! wait for the HELLO's answer with the alert (`ERROR_ACCESS_DENIED`), so
//! the caller gets an error and not a bare hang-up.

use std::net::IpAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ::tokio::net::TcpStream;
use rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;

use super::tls::{self, TlsFiles};
use super::tls_transport::TlsTransport;
use crate::error::{Error, ErrorCode, Result};
use crate::name::PipeName;
use crate::options::ClientOptions;
use crate::sys::Socket;

/// The gateway's port unless the options or `NPIPE_GATEWAY_PORT` say.
pub const DEFAULT_PORT: u16 = 4455;

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

/// Connects to `name`'s gateway over TLS on the calling thread, with no
/// relay: the blocking front end's data path runs on the TLS connection
/// itself ([`TlsTransport`]).
pub(crate) fn connect_blocking(name: &PipeName, opts: &ClientOptions) -> Result<TlsTransport> {
    let dial = Dial::of(name, opts)?;
    let at = format!("{}:{}", dial.host, dial.port);
    let deadline = Instant::now() + DIAL_LIMIT;
    let tcp = dial_tcp(&dial, &at)?;
    let _ = tcp.set_nodelay(true);
    let socket = Socket::from(OwnedFd::from(tcp));
    let mut conn = rustls::ClientConnection::new(Arc::clone(&dial.config), dial.server_name()?)
        .map_err(|e| {
            Error::new(
                ErrorCode::InvalidParameter,
                format!("TLS set-up failed: {e}"),
            )
        })?;
    let tls_failed = |e: &dyn std::fmt::Display| tls_failed(&at, e);
    while conn.is_handshaking() {
        if conn.wants_write() {
            match conn.write_tls(&mut NonBlocking(&socket)) {
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(tls_failed(&e)),
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(too_slow(&at, "finish the TLS handshake"));
        }
        let wanted = if conn.wants_write() {
            crate::sys::Events::OUT
        } else {
            crate::sys::Events::IN
        };
        socket
            .wait(wanted, Some(left))
            .map_err(|e| Error::os(e, "waiting for the gateway failed"))?;
        if !conn.wants_write() {
            match conn.read_tls(&mut NonBlocking(&socket)) {
                Ok(0) => return Err(tls_failed(&"the gateway closed the connection")),
                Ok(_) => {
                    if let Err(e) = conn.process_new_packets() {
                        let _ = conn.write_tls(&mut NonBlocking(&socket));
                        return Err(tls_failed(&e));
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(tls_failed(&e)),
            }
        }
    }
    Ok(TlsTransport::new(socket, conn, at))
}

/// A TCP connection to the gateway, within [`DIAL_LIMIT`].
fn dial_tcp(dial: &Dial, at: &str) -> Result<std::net::TcpStream> {
    use std::net::ToSocketAddrs;
    let addrs = (dial.host.as_str(), dial.port)
        .to_socket_addrs()
        .map_err(|e| unreachable(at, &e))?;
    let mut last = None;
    for addr in addrs {
        match std::net::TcpStream::connect_timeout(&addr, DIAL_LIMIT) {
            Ok(tcp) => return Ok(tcp),
            Err(e) => last = Some(e),
        }
    }
    Err(match last {
        Some(e) => unreachable(at, &e),
        None => unreachable(at, &"the name has no address"),
    })
}

/// The socket as rustls' `Read`/`Write` during the handshake, never
/// blocking.
struct NonBlocking<'a>(&'a Socket);

impl std::io::Read for NonBlocking<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.recv_nonblocking(buf)
    }
}

impl std::io::Write for NonBlocking<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.send_nonblocking(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Connects to `name`'s gateway over TLS on the caller's runtime, with no
/// relay: a tokio end's data path runs on the connection itself
/// ([`AsyncTls`](super::async_tls::AsyncTls)).
pub(crate) async fn connect_async(name: &PipeName, opts: &ClientOptions) -> Result<TlsTransport> {
    let dial = Dial::of(name, opts)?;
    let at = format!("{}:{}", dial.host, dial.port);
    let tcp = match ::tokio::time::timeout(
        DIAL_LIMIT,
        TcpStream::connect((dial.host.as_str(), dial.port)),
    )
    .await
    {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => return Err(unreachable(&at, &e)),
        Err(_) => return Err(too_slow(&at, "answer")),
    };
    let _ = tcp.set_nodelay(true);
    let connector = TlsConnector::from(Arc::clone(&dial.config));
    let tls = match ::tokio::time::timeout(DIAL_LIMIT, connector.connect(dial.server_name()?, tcp))
        .await
    {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => return Err(tls_failed(&at, &e)),
        Err(_) => return Err(too_slow(&at, "finish the TLS handshake")),
    };
    // tokio-rustls did the handshake; the transport drives rustls itself
    // (and takes whatever rustls already holds).
    let (tcp, conn) = tls.into_inner();
    let tcp = tcp
        .into_std()
        .map_err(|e| Error::os(e, "cannot take the gateway's socket back from tokio"))?;
    Ok(TlsTransport::new(
        Socket::from(OwnedFd::from(tcp)),
        conn,
        at,
    ))
}

/// The gateway at `at` cannot be reached (both front ends' dial).
fn unreachable(at: &str, e: &dyn std::fmt::Display) -> Error {
    Error::new(
        ErrorCode::BadNetPath,
        format!("cannot reach the npipe gateway at {at}: {e} (is `npipe gateway` running there?)"),
    )
}

/// The gateway at `at` did not `what` within [`DIAL_LIMIT`].
fn too_slow(at: &str, what: &str) -> Error {
    Error::new(
        ErrorCode::BadNetPath,
        format!("the npipe gateway at {at} did not {what} within {DIAL_LIMIT:?}"),
    )
}

/// TLS with the gateway at `at` failed on this side (its certificate is
/// not from our CA, or not for this host).
fn tls_failed(at: &str, e: &dyn std::fmt::Display) -> Error {
    Error::new(
        ErrorCode::AccessDenied,
        format!("TLS with the npipe gateway at {at} failed: {e}"),
    )
}
