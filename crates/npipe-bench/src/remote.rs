//! The remote cases: a client in this process reaches `\\127.0.0.1\pipe\NAME`
//! through `npipe gateway`'s code (in the peer process, beside the pipe's
//! server), against raw TLS 1.3 over TCP on loopback to a plain echo server
//! in the same peer, with the same rustls configurations (npipe's own, from
//! `TlsFiles`). The gateway adds one local hop; these cases show its cost.
//!
//! Certificates are made here, in the run's scratch directory, by rcgen.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use npipe::remote::rustls::{self, ClientConnection, ServerConnection, StreamOwned};
use npipe::remote::{Gateway, GatewayOptions, TlsFiles};
use npipe::{ClientOptions, PipeClient, Wait};

use crate::cases::{Case, Kind, Sample, CONNECT_WAIT};
use crate::Error;

/// The certificates of a remote run, in a directory.
#[derive(Debug, Clone)]
pub struct Certs {
    dir: PathBuf,
}

fn cert_error(e: impl std::fmt::Display) -> Error {
    Error::other(format!(
        "bench: cannot make the remote cases' certificates: {e}"
    ))
}

impl Certs {
    /// Makes a CA, the gateway's certificate (for 127.0.0.1) and a
    /// client's in `dir`.
    pub fn create(dir: &Path) -> Result<Certs, Error> {
        use rcgen::{
            BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
            KeyUsagePurpose, SanType,
        };
        let mut ca = CertificateParams::default();
        ca.distinguished_name = DistinguishedName::new();
        ca.distinguished_name
            .push(DnType::CommonName, "npipe bench CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = KeyPair::generate().map_err(cert_error)?;
        let ca_cert = ca.self_signed(&ca_key).map_err(cert_error)?;
        write_new(&dir.join("ca.crt"), &ca_cert.pem())?;
        let issuer = Issuer::new(ca, ca_key);
        for name in ["gateway", "client"] {
            let mut params = CertificateParams::default();
            params.distinguished_name = DistinguishedName::new();
            params.distinguished_name.push(DnType::CommonName, name);
            params.subject_alt_names = vec![SanType::IpAddress([127, 0, 0, 1].into())];
            let key = KeyPair::generate().map_err(cert_error)?;
            let cert = params.signed_by(&key, &issuer).map_err(cert_error)?;
            write_new(&dir.join(format!("{name}.crt")), &cert.pem())?;
            write_new(&dir.join(format!("{name}.key")), &key.serialize_pem())?;
        }
        Ok(Certs {
            dir: dir.to_path_buf(),
        })
    }

    /// The certificates already in `dir` (the peer's view).
    pub fn at(dir: &Path) -> Certs {
        Certs {
            dir: dir.to_path_buf(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn files(&self, who: &str) -> TlsFiles {
        TlsFiles {
            cert: self.dir.join(format!("{who}.crt")),
            key: self.dir.join(format!("{who}.key")),
            ca: self.dir.join("ca.crt"),
        }
    }
}

/// Writes a new file only this user may read (a key lets anyone who reads
/// it through the run's gateway).
fn write_new(path: &Path, text: &str) -> Result<(), Error> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(cert_error)
}

/// Where a remote run goes: the gateway's port and the raw TLS server's.
#[derive(Debug)]
pub struct Target {
    certs: Certs,
    gateway_port: u16,
    raw_port: u16,
    client: Arc<rustls::ClientConfig>,
}

impl Target {
    pub fn new(certs: Certs, gateway_port: u16, raw_port: u16) -> Result<Target, Error> {
        let client = certs.files("client").client_config()?;
        Ok(Target {
            certs,
            gateway_port,
            raw_port,
            client,
        })
    }

    fn options(&self) -> ClientOptions {
        let files = self.certs.files("client");
        let mut o = ClientOptions::new();
        o.remote_certificate(files.cert, files.key)
            .remote_ca(files.ca)
            .gateway_port(self.gateway_port)
            .wait(Wait::Timeout(CONNECT_WAIT));
        o
    }

    fn open(&self, name: &str) -> Result<PipeClient, Error> {
        Ok(self
            .options()
            .open(format!(r"\\127.0.0.1\pipe\{name}").as_str())?)
    }

    /// A raw TLS connection, handshake done.
    fn raw(&self) -> io::Result<StreamOwned<ClientConnection, TcpStream>> {
        let tcp = TcpStream::connect(("127.0.0.1", self.raw_port))?;
        tcp.set_nodelay(true)?;
        let name = rustls::pki_types::ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
        let conn =
            ClientConnection::new(Arc::clone(&self.client), name).map_err(io::Error::other)?;
        let mut stream = StreamOwned::new(conn, tcp);
        while stream.conn.is_handshaking() {
            stream.conn.complete_io(&mut stream.sock)?;
        }
        Ok(stream)
    }
}

fn unexpected(what: &str) -> Error {
    Error::other(format!("bench: {what}"))
}

fn io_failure(e: io::Error) -> Error {
    Error::other(format!("bench: the raw TLS run failed: {e}"))
}

/// One run through the gateway: the local cases' loops on a remote pipe.
pub fn run_npipe(case: &Case, name: &str, target: &Target, count: u64) -> Result<Sample, Error> {
    match case.kind {
        Kind::RemoteTransact => crate::cases::transact(&mut target.open(name)?, case, count),
        Kind::RemoteBytes => crate::cases::write_bytes(&mut target.open(name)?, case, count),
        Kind::RemoteConnect => {
            crate::cases::connect_and_transact(case, count, || target.open(name))
        }
        _ => Err(unexpected("not a remote case")),
    }
}

/// A length-prefixed message, written as one TLS record.
fn send<S: Write>(stream: &mut S, payload: &[u8]) -> io::Result<()> {
    let mut frame = Vec::with_capacity(4 + payload.len());
    frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    frame.extend_from_slice(payload);
    stream.write_all(&frame)?;
    stream.flush()
}

fn receive<S: Read>(stream: &mut S, buf: &mut Vec<u8>) -> io::Result<usize> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len)?;
    let len = u32::from_le_bytes(len) as usize;
    if len > 1 << 20 {
        return Err(io::ErrorKind::InvalidData.into());
    }
    buf.resize(len, 0);
    stream.read_exact(buf)?;
    Ok(len)
}

/// One run over raw TLS.
pub fn run_raw(case: &Case, target: &Target, count: u64) -> Result<Sample, Error> {
    let request = vec![0x5a_u8; case.size];
    let mut reply = Vec::new();
    match case.kind {
        Kind::RemoteTransact => {
            let mut stream = target.raw().map_err(io_failure)?;
            let mut times = Vec::with_capacity(count as usize);
            for _ in 0..count {
                let start = Instant::now();
                send(&mut stream, &request).map_err(io_failure)?;
                let n = receive(&mut stream, &mut reply).map_err(io_failure)?;
                times.push(start.elapsed());
                if n != case.size {
                    return Err(unexpected("a reply of the wrong size"));
                }
            }
            Ok(Sample::latency(times))
        }
        Kind::RemoteBytes => {
            let mut stream = target.raw().map_err(io_failure)?;
            let start = Instant::now();
            for _ in 0..count {
                stream.write_all(&request).map_err(io_failure)?;
            }
            stream.conn.send_close_notify();
            stream.flush().map_err(io_failure)?;
            let mut ack = [0u8; 1];
            stream.read_exact(&mut ack).map_err(io_failure)?;
            Ok(Sample::rate(case, count, start.elapsed()))
        }
        Kind::RemoteConnect => {
            let start = Instant::now();
            for _ in 0..count {
                let mut stream = target.raw().map_err(io_failure)?;
                send(&mut stream, &request).map_err(io_failure)?;
                if receive(&mut stream, &mut reply).map_err(io_failure)? != case.size {
                    return Err(unexpected("a reply of the wrong size"));
                }
                stream.conn.send_close_notify();
                let _ = stream.flush();
            }
            Ok(Sample::rate(case, count, start.elapsed()))
        }
        _ => Err(unexpected("not a remote case")),
    }
}

/// The peer's side: a gateway for the pipe's server, and the raw TLS echo
/// server; their ports.
pub fn serve(case: &'static Case, certs: &Certs, pipe: &str) -> Result<(u16, u16), Error> {
    let files = certs.files("gateway");
    let mut opts = GatewayOptions::new(&files.cert, &files.key, &files.ca);
    // On loopback, and to the bench's own pipe only: run as root, this
    // gateway is one every server on the host believes.
    opts.listen(([127, 0, 0, 1], 0).into())
        .only_pipes("client", [pipe])
        .only_pipes("gateway", Vec::<String>::new());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = match crate::cases::runtime() {
            Ok(rt) => rt,
            Err(e) => return drop(tx.send(Err(e))),
        };
        rt.block_on(async move {
            let gateway = match Gateway::bind(opts).await {
                Ok(g) => g,
                Err(e) => return drop(tx.send(Err(e.into()))),
            };
            let port = gateway.local_addr().map(|a| a.port());
            let _ = tx.send(port.map_err(Into::into));
            let _ = gateway.serve(|_| ()).await;
        });
    });
    let gateway_port = rx
        .recv()
        .map_err(|_| unexpected("the gateway thread died"))??;
    let config = files.server_config()?;
    let listener = TcpListener::bind(("127.0.0.1", 0))
        .map_err(|e| Error::other(format!("bench: cannot listen for raw TLS: {e}")))?;
    let raw_port = listener.local_addr().map_err(io_failure)?.port();
    std::thread::spawn(move || {
        for tcp in listener.incoming().flatten() {
            let config = Arc::clone(&config);
            // A thread a connection, as the simple way goes.
            std::thread::spawn(move || {
                let _ = serve_raw(case, &config, tcp);
            });
        }
    });
    Ok((gateway_port, raw_port))
}

fn serve_raw(case: &Case, config: &Arc<rustls::ServerConfig>, tcp: TcpStream) -> io::Result<()> {
    tcp.set_nodelay(true)?;
    let conn = ServerConnection::new(Arc::clone(config)).map_err(io::Error::other)?;
    let mut stream = StreamOwned::new(conn, tcp);
    let mut buf = vec![0u8; case.server_buffer()];
    let mut message = Vec::new();
    match case.kind {
        Kind::RemoteBytes => {
            loop {
                match stream.read(&mut buf) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
                    Err(e) => return Err(e),
                }
            }
            stream.write_all(&[1])?;
            stream.flush()
        }
        _ => loop {
            match receive(&mut stream, &mut message) {
                Ok(_) => send(&mut stream, &message)?,
                Err(_) => return Ok(()),
            }
        },
    }
}
