//! Remote pipes end to end on loopback: a client opens
//! `\\127.0.0.1\pipe\NAME`, goes over TLS 1.3 to a gateway in this process,
//! which opens the local pipe for it. Certificates come from a CA made
//! here (rcgen); the server, the gateway and the client talk only through
//! the kernel (TCP and Unix sockets).

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use npipe::remote::{Gateway, GatewayOptions};
use npipe::{
    ClientOptions, ErrorCode, Identity, LocalUser, MessageRead, PipeType, RemotePrincipal,
    ServerOptions, Wait,
};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use std::os::unix::fs::PermissionsExt;

use crate::common::{unique, TempDir};

/// A CA and certificates signed by it, as PEM files in a directory.
struct Certs {
    dir: TempDir,
    issuer: Issuer<'static, KeyPair>,
}

impl Certs {
    fn new(tag: &str) -> Certs {
        let dir = TempDir::new(tag);
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("test CA {tag}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(dir.path().join("ca.crt"), cert.pem()).unwrap();
        Certs {
            dir,
            issuer: Issuer::new(params, key),
        }
    }

    fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    /// `NAME.crt` and `NAME.key`, for 127.0.0.1 and valid from a day ago
    /// for `days` days (negative: expired).
    fn issue(&self, name: &str, days: i64) -> (PathBuf, PathBuf) {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params.subject_alt_names = vec![SanType::IpAddress("127.0.0.1".parse().unwrap())];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ClientAuth,
            ExtendedKeyUsagePurpose::ServerAuth,
        ];
        let today = std::time::SystemTime::now();
        params.not_before = (today - Duration::from_secs(2 * 86_400)).into();
        params.not_after = if days < 0 {
            (today - Duration::from_secs(86_400)).into()
        } else {
            (today + Duration::from_secs(days as u64 * 86_400)).into()
        };
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let (crt, pem_key) = (
            self.dir.path().join(format!("{name}.crt")),
            self.dir.path().join(format!("{name}.key")),
        );
        std::fs::write(&crt, cert.pem()).unwrap();
        // Keys only their owner reads: the gateway refuses others.
        std::fs::write(&pem_key, key.serialize_pem()).unwrap();
        std::fs::set_permissions(&pem_key, std::fs::Permissions::from_mode(0o600)).unwrap();
        (crt, pem_key)
    }
}

/// A gateway on a loopback port of its own, on a thread of its own.
struct TestGateway {
    addr: SocketAddr,
    certs: Certs,
    /// What it said of each connection that ended.
    events: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

fn gateway(tag: &str, configure: impl FnOnce(&mut GatewayOptions)) -> TestGateway {
    let certs = Certs::new(tag);
    let (crt, key) = certs.issue("gateway", 30);
    let mut opts = GatewayOptions::new(crt, key, certs.ca());
    opts.listen("127.0.0.1:0".parse().unwrap());
    configure(&mut opts);
    let (tx, rx) = std::sync::mpsc::channel();
    let events: std::sync::Arc<std::sync::Mutex<Vec<String>>> = std::sync::Arc::default();
    let heard = std::sync::Arc::clone(&events);
    on_a_runtime_thread(async move {
        let gateway = Gateway::bind(opts).await.unwrap();
        tx.send(gateway.local_addr().unwrap()).unwrap();
        let log = move |e: npipe::remote::GatewayEvent| {
            heard.lock().unwrap().push(e.to_string());
        };
        gateway.serve(log).await.unwrap();
    });
    TestGateway {
        addr: rx.recv().unwrap(),
        certs,
        events,
    }
}

/// Runs `task` on a current-thread runtime of its own thread, for ever.
fn on_a_runtime_thread(task: impl std::future::Future<Output = ()> + Send + 'static) {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(task)
    });
}

impl TestGateway {
    /// What the gateway said of the connection to pipe `name` when it
    /// ended (waiting for it to end).
    fn ended(&self, name: &str) -> String {
        let name = name.to_lowercase();
        crate::common::eventually(&format!("the gateway's word on {name}"), || {
            let events = self.events.lock().unwrap();
            events.iter().find(|e| e.contains(&name)).cloned()
        })
    }

    /// Client options with `who`'s certificate (made now) and this CA.
    fn client(&self, who: &str) -> ClientOptions {
        let (crt, key) = self.certs.issue(who, 30);
        self.client_with(&crt, &key, &self.certs.ca())
    }

    fn client_with(&self, crt: &Path, key: &Path, ca: &Path) -> ClientOptions {
        let mut o = ClientOptions::new();
        o.remote_certificate(crt, key)
            .remote_ca(ca)
            .gateway_port(self.addr.port());
        o
    }
}

fn remote(name: &str) -> String {
    format!(r"\\127.0.0.1\pipe\{name}")
}

/// A server as the gateway's servers are: it trusts this process's user
/// (root is trusted anyway), with `sd` as its descriptor.
fn server(sd: &str) -> ServerOptions {
    let mut o = ServerOptions::new();
    o.trust_gateway(LocalUser::current())
        .security(sd.parse().unwrap());
    o
}

/// A byte pipe `name` whose first client gets back all it sent, once it
/// ended its stream.
fn byte_echo_once(name: &str) {
    let listener = server("allow everyone=full")
        .pipe_type(PipeType::Byte)
        .create(name)
        .unwrap();
    std::thread::spawn(move || {
        let mut conn = listener.accept().unwrap();
        let mut all = Vec::new();
        conn.read_to_end(&mut all).unwrap();
        conn.write_all(&all).unwrap();
    });
}

/// Echoes every message of every connection, each on a thread.
fn echo_server(listener: npipe::PipeListener) {
    std::thread::spawn(move || {
        while let Ok(mut conn) = listener.accept() {
            std::thread::spawn(move || {
                while let Ok(m) = conn.recv_message() {
                    if conn.write_message(&m).is_err() {
                        break;
                    }
                }
            });
        }
    });
}

#[test]
fn a_call_through_the_gateway_is_answered_and_the_server_sees_the_principal() {
    let gw = gateway("remote-call", |_| ());
    let name = unique("remote-call");
    let listener = server("allow owner=full; allow network=rw")
        .create(&name)
        .unwrap();
    let seen = std::thread::spawn(move || {
        let mut conn = listener.accept().unwrap();
        let request = conn.recv_message().unwrap();
        conn.write_message(&request).unwrap();
        (conn.peer_identity(), conn.client_computer_name())
    });
    let reply = gw
        .client("alice")
        .call(remote(&name).as_str(), b"hi")
        .unwrap();
    assert_eq!(reply, b"hi");
    let (who, computer) = seen.join().unwrap();
    assert_eq!(who, Identity::Remote(RemotePrincipal::new("alice")));
    assert_eq!(computer.as_deref(), Some("127.0.0.1"));
}

/// The same features from a tokio client, whose pipe runs on its TLS
/// connection: a large message whole, a peek once readable, *more data*,
/// transact, flush_buffers, and a byte pipe's stream ended by
/// `shutdown_write` (close_notify, then TCP's end, through the gateway to
/// the server's end of stream).
#[test]
fn every_pipe_feature_works_remotely_from_tokio() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let gw = gateway("remote-features-async", |_| ());
    let opts = gw.client("alice");
    let messages = unique("remote-msg-async");
    echo_server(server("allow everyone=full").create(&messages).unwrap());
    let bytes = unique("remote-bytes-async");
    byte_echo_once(&bytes);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut c = opts.open_async(remote(&messages).as_str()).await.unwrap();
        let big: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
        c.write_message(&big).await.unwrap();
        assert_eq!(c.recv_message().await.unwrap(), big);
        c.write_message(b"0123456789").await.unwrap();
        c.flush_buffers().await.unwrap();
        c.readable().await.unwrap();
        let mut peeked = [0u8; 4];
        let p = loop {
            let p = c.peek(&mut peeked).unwrap();
            if p.copied > 0 {
                break p;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        assert_eq!((&peeked[..], p.message_left), (&b"0123"[..], 6));
        let mut buf = [0u8; 4];
        assert_eq!(
            c.read_message(&mut buf).await.unwrap(),
            MessageRead::MoreData(4)
        );
        let mut rest = [0u8; 16];
        assert_eq!(
            c.read_message(&mut rest).await.unwrap(),
            MessageRead::Complete(6)
        );
        assert_eq!(c.transact(b"ping").await.unwrap(), b"ping");
        assert_eq!(c.server_process_id(), 0);

        let mut c = opts.open_async(remote(&bytes).as_str()).await.unwrap();
        let stream: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
        c.write_all(&stream).await.unwrap();
        c.shutdown().await.unwrap();
        let mut back = Vec::new();
        c.read_to_end(&mut back).await.unwrap();
        assert!(back == stream, "the stream came back changed");
    });
}

#[test]
fn every_pipe_feature_works_remotely() {
    let gw = gateway("remote-features", |_| ());
    let opts = gw.client("alice");
    // Messages: a large one whole, *more data*, peek, transact.
    let name = unique("remote-msg");
    echo_server(server("allow everyone=full").create(&name).unwrap());
    let mut c = opts.open(remote(&name).as_str()).unwrap();
    let big: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
    c.write_message(&big).unwrap();
    assert_eq!(c.recv_message().unwrap(), big);
    c.write_message(b"0123456789").unwrap();
    let mut peeked = [0u8; 4];
    let p = loop {
        let p = c.peek(&mut peeked).unwrap();
        if p.copied > 0 {
            break p;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    assert_eq!((&peeked[..], p.message_left), (&b"0123"[..], 6));
    let mut buf = [0u8; 4];
    assert_eq!(c.read_message(&mut buf).unwrap(), MessageRead::MoreData(4));
    let mut rest = [0u8; 16];
    assert_eq!(c.read_message(&mut rest).unwrap(), MessageRead::Complete(6));
    assert_eq!(c.transact(b"ping").unwrap(), b"ping");
    assert_eq!(c.info().pipe_type, PipeType::Message);
    // No kernel here knows the remote server: nothing is made up.
    assert_eq!(c.server_process_id(), 0);
    assert_eq!(c.server_session_id(), None);
    assert_eq!(c.server_user_name(), None);

    // A byte pipe: a stream both ways.
    let name = unique("remote-bytes");
    byte_echo_once(&name);
    let mut c = opts.open(remote(&name).as_str()).unwrap();
    c.write_all(b"a stream of bytes").unwrap();
    c.shutdown_write().unwrap();
    let mut back = Vec::new();
    c.read_to_end(&mut back).unwrap();
    assert_eq!(back, b"a stream of bytes");

    // Waiting for a free instance (WaitNamedPipe) across the gateway.
    let name = unique("remote-wait");
    let listener = server("allow everyone=full")
        .max_instances(1)
        .create(&name)
        .unwrap();
    let first = opts.open(remote(&name).as_str()).unwrap();
    let held = listener.accept().unwrap();
    let busy = opts.open(remote(&name).as_str()).unwrap_err();
    assert_eq!(busy.code(), ErrorCode::PipeBusy);
    let mut waiting = opts.clone();
    waiting.wait(Wait::Timeout(Duration::from_secs(20)));
    let path = remote(&name);
    let second = std::thread::spawn(move || waiting.open(path.as_str()).map(|_| ()));
    // It waits in the server's queue, through the gateway, before the
    // instance frees.
    crate::common::eventually("the remote client to queue", || {
        (crate::common::waiting(&name) == 1).then_some(())
    });
    assert!(!second.is_finished(), "it waited");
    drop((first, held));
    let _next = listener.accept().unwrap();
    second.join().unwrap().unwrap();
}

/// A tokio client's remote pipe runs on its TLS connection: one the
/// gateway refuses during TLS hears why when it waits for the HELLO's
/// answer, and one it accepts gets its messages both ways.
#[test]
fn a_tokio_client_is_refused_during_tls_and_served_over_it() {
    let gw = gateway("remote-async-refuse", |_| ());
    let name = unique("remote-async-refuse");
    echo_server(server("allow everyone=full").create(&name).unwrap());
    let path = remote(&name);
    let (late_crt, late_key) = gw.certs.issue("late", -1);
    let late = gw.client_with(&late_crt, &late_key, &gw.certs.ca());
    let good = gw.client("alice");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let e = late.open_async(path.as_str()).await.unwrap_err();
        assert_eq!(e.code(), ErrorCode::AccessDenied, "{e}");
        assert!(e.to_string().contains("during TLS"), "{e}");
        assert!(e.to_string().to_lowercase().contains("expired"), "{e}");
        let mut c = good.open_async(path.as_str()).await.unwrap();
        let big = vec![7u8; 300_000];
        c.write_message(&big).await.unwrap();
        assert_eq!(c.recv_message().await.unwrap(), big);
        assert_eq!(c.transact(b"hi").await.unwrap(), b"hi");
    });
}

#[test]
fn certificates_the_gateway_does_not_accept_are_refused_during_tls() {
    let gw = gateway("remote-refuse", |_| ());
    let name = unique("remote-refuse");
    echo_server(server("allow everyone=full").create(&name).unwrap());
    let path = remote(&name);

    let stranger = Certs::new("remote-stranger");
    let (crt, key) = stranger.issue("eve", 30);
    let e = gw
        .client_with(&crt, &key, &gw.certs.ca())
        .call(path.as_str(), b"x")
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::AccessDenied, "{e}");
    assert!(e.to_string().contains("during TLS"), "{e}");

    let (crt, key) = gw.certs.issue("late", -1);
    let e = gw
        .client_with(&crt, &key, &gw.certs.ca())
        .call(path.as_str(), b"x")
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::AccessDenied, "{e}");
    assert!(e.to_string().to_lowercase().contains("expired"), "{e}");

    // This client does not trust the gateway's CA: it refuses the gateway.
    let (crt, key) = gw.certs.issue("careful", 30);
    let e = gw
        .client_with(&crt, &key, &stranger.ca())
        .call(path.as_str(), b"x")
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::AccessDenied, "{e}");
    assert!(e.to_string().contains("UnknownIssuer"), "{e}");

    // No certificate at all: TLS itself, without npipe's client.
    let e = no_certificate_hello(gw.addr, &gw.certs.ca(), &name);
    assert!(e.contains("CertificateRequired"), "{e}");

    // And a good one still goes through.
    assert_eq!(
        gw.client("alice").call(path.as_str(), b"ok").unwrap(),
        b"ok"
    );
}

/// Speaks TLS 1.3 to the gateway without a client certificate, sends a
/// HELLO, and returns how reading the answer failed.
fn no_certificate_hello(addr: SocketAddr, ca: &Path, name: &str) -> String {
    match hand_written_hello(addr, ca, None, name, crate::raw_client::CONNECT) {
        Ok(reply) => format!("read {} bytes", reply.len()),
        Err(e) => e.to_string(),
    }
}

/// A HELLO of `kind` for `name` written by hand over TLS to the gateway
/// at `addr` (trusting `ca`, showing the certificate and key in `client`
/// if any), as a client that is not npipe's would: what came back first.
fn hand_written_hello(
    addr: SocketAddr,
    ca: &Path,
    client: Option<(&Path, &Path)>,
    name: &str,
    kind: u8,
) -> std::io::Result<Vec<u8>> {
    let mut tls = hand_written_tls(addr, ca, client);
    let hello = crate::raw_client::hello(name, kind, 3, 0);
    tls.write_all(&hello)?;
    let mut reply = vec![0u8; 1024];
    let n = tls.read(&mut reply)?;
    reply.truncate(n);
    Ok(reply)
}

/// A TLS 1.3 client of the gateway at `addr` that is not npipe's: plain
/// rustls trusting `ca`, showing the certificate and key in `client` if
/// any.
fn hand_written_tls(
    addr: SocketAddr,
    ca: &Path,
    client: Option<(&Path, &Path)>,
) -> rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots);
    let config = match client {
        None => config.with_no_client_auth(),
        Some((crt, key)) => config
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(crt)
                    .unwrap()
                    .map(Result::unwrap)
                    .collect(),
                PrivateKeyDer::from_pem_file(key).unwrap(),
            )
            .unwrap(),
    };
    let server_name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let conn = rustls::ClientConnection::new(std::sync::Arc::new(config), server_name).unwrap();
    let tcp = std::net::TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    rustls::StreamOwned::new(conn, tcp)
}

/// A client writing on one thread and reading on another, through the
/// gateway, to a server that answers as it reads: a writer waiting for room
/// must not hold up the reader, or the server, unread, stops reading and
/// both wait for ever.
#[test]
fn a_remote_client_reads_while_its_writer_waits_for_room() {
    let gw = gateway("remote-duplex", |_| ());
    let name = unique("remote-duplex");
    let mut opts = server("allow everyone=full");
    opts.pipe_type(PipeType::Byte);
    let listener = opts.create(&name).unwrap();
    std::thread::spawn(move || {
        while let Ok(mut conn) = listener.accept() {
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n @ 1..) = conn.read(&mut buf) {
                    if conn.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    let mut c = gw.client("alice").open(remote(&name).as_str()).unwrap();
    const TOTAL: usize = 32 << 20;
    // On a thread of its own, so that a reader and writer holding each
    // other up fail the test instead of hanging it (a read timeout cannot
    // fire in a reader that waits for a lock).
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        std::thread::scope(|s| {
            let (mut r, mut w) = c.split();
            s.spawn(move || {
                let chunk = vec![9u8; 64 * 1024];
                for _ in 0..TOTAL / chunk.len() {
                    w.write_all(&chunk).unwrap();
                }
            });
            let mut got = 0;
            let mut buf = vec![0u8; 64 * 1024];
            while got < TOTAL {
                let n = r.read(&mut buf).unwrap();
                assert!(n > 0, "the echo ended after {got} bytes");
                got += n;
            }
            tx.send(got).unwrap();
        });
    });
    let got = rx
        .recv_timeout(Duration::from_secs(120))
        .expect("the client's writer, waiting for room, held up its reader");
    assert_eq!(got, TOTAL);
}

#[test]
fn silent_connections_cannot_take_every_descriptor_of_the_gateway() {
    // A handshake timeout far past the read timeout below: only the cap
    // can close the late connection in time.
    let gw = gateway("remote-flood", |o| {
        o.max_handshakes(1)
            .handshake_timeout(Duration::from_secs(120));
    });
    let name = unique("remote-flood");
    echo_server(server("allow everyone=full").create(&name).unwrap());
    // One connection that never says a word holds the only handshake slot.
    let silent = std::net::TcpStream::connect(gw.addr).unwrap();
    let mut late = std::net::TcpStream::connect(gw.addr).unwrap();
    late.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let closed = late.read(&mut [0u8; 16]);
    assert!(
        matches!(closed, Ok(0))
            || closed
                .as_ref()
                .is_err_and(|e| e.kind() != std::io::ErrorKind::WouldBlock),
        "the connection past the cap is closed at once, not left waiting: {closed:?}"
    );
    // Once the silent one goes, clients are served again.
    drop(silent);
    let alice = gw.client("alice");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match alice.call(remote(&name).as_str(), b"back") {
            Ok(reply) => break assert_eq!(reply, b"back"),
            Err(_) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("the slot never came back: {e}"),
        }
    }
}

#[test]
fn a_host_with_no_gateway_is_a_bad_network_path() {
    let gw = gateway("remote-nogw", |_| ());
    // A port nothing listens on: bound, then closed.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = free.local_addr().unwrap().port();
    drop(free);
    let (crt, key) = gw.certs.issue("alice", 30);
    let mut opts = gw.client_with(&crt, &key, &gw.certs.ca());
    opts.gateway_port(port);
    let e = opts.open(remote("anything").as_str()).unwrap_err();
    assert_eq!(e.code(), ErrorCode::BadNetPath, "{e}");
    assert!(e.to_string().contains("npipe gateway"), "{e}");
    let e = opts
        .call(r"\\no-such-host.invalid\pipe\x", b"x")
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::BadNetPath, "{e}");
}

#[test]
fn reject_remote_clients_and_principal_entries_hold_through_the_gateway() {
    let gw = gateway("remote-rules", |_| ());
    let name = unique("remote-reject");
    let mut o = server("allow everyone=full");
    o.reject_remote_clients(true);
    echo_server(o.create(&name).unwrap());
    let e = gw
        .client("alice")
        .call(remote(&name).as_str(), b"x")
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::AccessDenied);
    assert!(e.to_string().contains("PIPE_REJECT_REMOTE_CLIENTS"), "{e}");

    let name = unique("remote-entry");
    echo_server(
        server("allow owner=full; allow remote:alice=rw")
            .create(&name)
            .unwrap(),
    );
    let path = remote(&name);
    assert_eq!(gw.client("alice").call(path.as_str(), b"a").unwrap(), b"a");
    let e = gw.client("bob").call(path.as_str(), b"b").unwrap_err();
    assert_eq!(e.code(), ErrorCode::AccessDenied);
    assert!(e.to_string().contains("remote client bob"), "{e}");
}

#[test]
fn the_gateway_keeps_principals_to_their_pipes() {
    let gw = gateway("remote-only", |o| {
        o.only_pipes("alice", ["t-remote-allowed*"]);
    });
    let allowed = unique("remote-allowed");
    echo_server(server("allow everyone=full").create(&allowed).unwrap());
    let other = unique("remote-other");
    echo_server(server("allow everyone=full").create(&other).unwrap());
    let alice = gw.client("alice");
    assert_eq!(alice.call(remote(&allowed).as_str(), b"a").unwrap(), b"a");
    let e = alice.call(remote(&other).as_str(), b"a").unwrap_err();
    assert_eq!(e.code(), ErrorCode::AccessDenied);
    assert!(e.to_string().contains("may not reach"), "{e}");
}

#[test]
fn a_mapped_principal_is_impersonated_and_an_unmapped_one_is_not() {
    if !crate::common::can_run_as(65534, "a_mapped_principal_is_impersonated") {
        return;
    }
    let gw = gateway("remote-map", |o| {
        o.map("alice", Some(LocalUser::from(65534)));
    });
    let name = unique("remote-map");
    let listener = server("allow everyone=full").create(&name).unwrap();
    let serving = std::thread::spawn(move || {
        let mut answers = Vec::new();
        for _ in 0..2 {
            let mut conn = listener.accept().unwrap();
            let _ = conn.recv_message().unwrap();
            let answer = match conn.spawn_as_client(
                std::process::Command::new("id")
                    .arg("-u")
                    .stdout(std::process::Stdio::piped()),
            ) {
                Ok(child) => {
                    let out = child.wait_with_output().unwrap();
                    String::from_utf8_lossy(&out.stdout).trim().to_string()
                }
                Err(e) => format!("refused {}", e.win32_code()),
            };
            conn.write_message(answer.as_bytes()).unwrap();
            answers.push(answer);
        }
        answers
    });
    let path = remote(&name);
    assert_eq!(
        gw.client("alice").call(path.as_str(), b"?").unwrap(),
        b"65534"
    );
    assert_eq!(
        gw.client("bob").call(path.as_str(), b"?").unwrap(),
        b"refused 1368"
    );
    serving.join().unwrap();
}

/// The gateway sends the mapped user's groups, so a server's deny of one
/// of them reaches the principal: alice maps to 65534, whose primary
/// group the user database gives (its gid is read here the same way).
#[test]
fn a_deny_of_the_mapped_users_group_reaches_its_principal() {
    let entry = std::process::Command::new("getent")
        .args(["passwd", "65534"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let Some(gid) = entry.trim().split(':').nth(3).filter(|g| !g.is_empty()) else {
        crate::shared_copy::skipped(
            "a_deny_of_the_mapped_users_group_reaches_its_principal: \
             uid 65534 is not in this machine's user database",
        );
        return;
    };
    let gw = gateway("remote-deny-group", |o| {
        o.map("alice", Some(LocalUser::from(65534)));
    });
    let name = unique("remote-deny-group");
    let sd = format!("allow everyone=full; deny group:{gid}=full");
    let _listener = server(&sd).create(&name).unwrap();
    let path = remote(&name);
    let e = gw.client("alice").open(path.as_str()).unwrap_err();
    assert_eq!(e.code(), ErrorCode::AccessDenied, "{e}");
    // The server's refusal, not the gateway's (which also says 5 when it
    // cannot read the groups).
    assert!(e.to_string().contains("security descriptor"), "{e}");
    // bob is unmapped: no group of a local user stands behind him.
    let _served = std::thread::spawn(move || _listener.accept().map(|_| ()));
    gw.client("bob").open(path.as_str()).unwrap();
}

/// A principal mapped to a user the user database does not know is
/// refused by the gateway itself: without the user's groups, a server's
/// deny of one of them could not reach it. The refusal says why and names
/// the uid, and the server never sees the client.
#[test]
fn a_principal_mapped_to_an_unknown_user_is_refused_by_the_gateway() {
    const NOBODY_KNOWS: u32 = 3_999_999;
    // The same lookup the gateway makes.
    if LocalUser::from(NOBODY_KNOWS).name().is_some() {
        crate::shared_copy::skipped(
            "a_principal_mapped_to_an_unknown_user_is_refused_by_the_gateway: \
             uid 3999999 is in this machine's user database",
        );
        return;
    }
    let gw = gateway("remote-unknown-user", |o| {
        o.map("alice", Some(LocalUser::from(NOBODY_KNOWS)));
    });
    let name = unique("remote-unknown-user");
    let listener = server("allow everyone=full").create(&name).unwrap();
    let path = remote(&name);
    let e = gw.client("alice").open(path.as_str()).unwrap_err();
    assert_eq!(e.code(), ErrorCode::AccessDenied, "{e}");
    let text = e.to_string();
    assert!(
        text.contains("cannot read the groups of uid 3999999"),
        "{e}"
    );
    assert!(listener.accept_timeout(Duration::ZERO).unwrap().is_none());
    // bob is unmapped: nothing to look up, and he gets through.
    let _served = std::thread::spawn(move || listener.accept().map(|_| ()));
    gw.client("bob").open(path.as_str()).unwrap();
}

/// A gateway told which user serves a pipe forwards clients only to a
/// server of that user: a squatter (here, the test's own user where
/// nobody was expected) is refused, the expected server is reached, and
/// pipes no pattern names are not checked.
#[test]
fn a_gateway_forwards_only_to_the_server_it_expects() {
    let me = LocalUser::current();
    let nobody = LocalUser::from(65534);
    let gw = gateway("remote-expect-server", |o| {
        o.expect_server("t-squatted-*", nobody)
            .expect_server("t-mine-*", me);
    });
    // An echo server of ours under a fresh name with `tag`, called.
    let call = |tag: &str| {
        let name = unique(tag);
        echo_server(server("allow everyone=full").create(&name).unwrap());
        gw.client("alice").call(remote(&name).as_str(), b"hi")
    };
    let e = call("squatted").unwrap_err();
    assert_eq!(e.code(), ErrorCode::AccessDenied, "{e}");
    assert!(e.to_string().contains("not by"), "{e}");
    assert!(e.to_string().contains("uid 65534"), "{e}");
    assert_eq!(call("mine").unwrap(), b"hi");
    assert_eq!(call("unchecked").unwrap(), b"hi");

    // A client that spells the squatted name otherwise (here with the
    // `\\.\pipe\` prefix, which names the same pipe) is checked all the
    // same: the gateway judges the canonical name, the pipe it opens.
    let squatted = unique("squatted");
    echo_server(server("allow everyone=full").create(&squatted).unwrap());
    let (crt, key) = gw.certs.issue("alice", 30);
    let spelled = format!(r"\\.\pipe\{squatted}");
    let reply = hand_written_hello(
        gw.addr,
        &gw.certs.ca(),
        Some((&crt, &key)),
        &spelled,
        crate::raw_client::CONNECT,
    )
    .unwrap();
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.contains("not by"), "{reply}");
}

/// One principal may hold only so many connections through a gateway:
/// past them its next is busy, while others still get through, and a
/// closed one frees its place.
#[test]
fn a_principal_has_at_most_its_share_of_connections() {
    let gw = gateway("remote-per-principal", |o| {
        o.max_connections_per_principal(2);
    });
    let name = unique("remote-per-principal");
    echo_server(server("allow everyone=full").create(&name).unwrap());
    let path = remote(&name);
    let mut first = gw.client("alice").open(path.as_str()).unwrap();
    let _second = gw.client("ALICE").open(path.as_str()).unwrap();
    let e = gw.client("alice").open(path.as_str()).unwrap_err();
    assert_eq!(e.code(), ErrorCode::PipeBusy, "{e}");
    assert!(
        e.to_string().contains("connections through this gateway"),
        "{e}"
    );
    gw.client("bob").open(path.as_str()).unwrap();
    // The place frees once the gateway has seen the first one end.
    first.write_message(b"bye").unwrap();
    assert_eq!(first.recv_message().unwrap(), b"bye");
    drop(first);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match gw.client("alice").open(path.as_str()) {
            Ok(_) => break,
            Err(e) if e.code() == ErrorCode::PipeBusy && std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => panic!("the freed place was not given back: {e}"),
        }
    }
}

/// All principals together may hold only so many connections: past them
/// the next, anyone's, is busy.
#[test]
fn the_gateway_has_at_most_its_connections() {
    let gw = gateway("remote-max-connections", |o| {
        o.max_connections(2);
    });
    let name = unique("remote-max-connections");
    echo_server(server("allow everyone=full").create(&name).unwrap());
    let path = remote(&name);
    let _a = gw.client("alice").open(path.as_str()).unwrap();
    let _b = gw.client("bob").open(path.as_str()).unwrap();
    let e = gw.client("carol").open(path.as_str()).unwrap_err();
    assert_eq!(e.code(), ErrorCode::PipeBusy, "{e}");
    assert!(e.to_string().contains("connections, its most"), "{e}");
}

#[test]
fn a_thousand_remote_clients_at_once_are_all_served() {
    raise_fd_limit(16_384);
    let gw = gateway("remote-1000", |_| ());
    let name = unique("remote-1000");
    let opts = gw.client("alice");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let listener = server("allow everyone=full").create_async(&name).unwrap();
        tokio::spawn(crate::common::echo_forever(listener));
        let path = remote(&name);
        // All open at once, then each talks: every one held a connection
        // through the gateway at the same time.
        let opens = (0..1000).map(|_| {
            let (opts, path) = (opts.clone(), path.clone());
            tokio::spawn(async move {
                let mut o = opts;
                o.wait(Wait::Timeout(Duration::from_secs(60)));
                o.open_async(path.as_str()).await
            })
        });
        let mut clients = Vec::new();
        for open in opens.collect::<Vec<_>>() {
            clients.push(open.await.unwrap().unwrap());
        }
        let talks = clients.into_iter().enumerate().map(|(i, mut c)| {
            tokio::spawn(async move {
                let msg = format!("client {i}");
                c.write_message(msg.as_bytes()).await.unwrap();
                assert_eq!(c.recv_message().await.unwrap(), msg.as_bytes());
            })
        });
        for talk in talks.collect::<Vec<_>>() {
            talk.await.unwrap();
        }
    });
}

fn raise_fd_limit(wanted: u64) {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    let hard = limit.maximum.map_or(wanted, |h| h.max(wanted));
    let _ = setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(hard),
            maximum: Some(hard),
        },
    );
}

/// A remote client's connection is handed to its pipe's server, which
/// then talks TLS with the client itself: the client sees no difference,
/// the server end still knows who it is, and the gateway counts the
/// connection until the server's end closes.
#[test]
fn a_remote_connection_is_handed_over_to_its_server() {
    let gw = gateway("hand-over", |_| ());
    let name = unique("handed");
    let listener = server("allow everyone=full").create(&name).unwrap();
    let mut c = gw.client("alice").open(remote(&name).as_str()).unwrap();
    let mut s = listener.accept().unwrap();
    assert_eq!(
        s.peer_identity(),
        Identity::Remote(RemotePrincipal::new("alice"))
    );
    assert_eq!(s.client_computer_name().as_deref(), Some("127.0.0.1"));
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    c.write_message(&big).unwrap();
    assert!(s.recv_message().unwrap() == big);
    s.write_message(b"from the server itself").unwrap();
    assert_eq!(c.recv_message().unwrap(), b"from the server itself");
    // DisconnectNamedPipe ends the connection for the gateway too, though
    // the server end lives on.
    s.disconnect().unwrap();
    let said = gw.ended(&name);
    assert!(said.contains("handed over"), "{said}");
    assert!(c.recv_message().is_err(), "the client is cut off");
    drop(s);
}

/// A tokio server takes a handed-over connection as well.
#[test]
fn a_tokio_server_takes_a_handed_over_connection() {
    let gw = gateway("hand-over-tokio", |_| ());
    let name = unique("handed-tokio");
    let (tx, rx) = std::sync::mpsc::channel();
    let serving = name.clone();
    on_a_runtime_thread(async move {
        let listener = server("allow everyone=full")
            .create_async(serving.as_str())
            .unwrap();
        tx.send(()).unwrap();
        crate::common::echo_forever(listener).await;
    });
    rx.recv().unwrap();
    let mut c = gw.client("alice").open(remote(&name).as_str()).unwrap();
    let big: Vec<u8> = (0..1_000_000u32).map(|i| (i % 241) as u8).collect();
    c.write_message(&big).unwrap();
    assert!(
        c.recv_message().unwrap() == big,
        "the echo came back changed"
    );
    assert_eq!(c.transact(b"ping").unwrap(), b"ping");
    drop(c);
    let said = gw.ended(&name);
    assert!(said.contains("handed over"), "{said}");
}

/// Where the server does not take the offer, the gateway does not make
/// it, or the client sent its request with the HELLO (`call`), every byte
/// goes through the gateway, and all works the same.
#[test]
fn connections_are_relayed_where_no_hand_over_is_taken() {
    /// Serves `name` with `opts`, talks to it through `gw` (a transact, or
    /// a call), and checks what the gateway did.
    fn relayed(gw: &TestGateway, name: &str, opts: &mut ServerOptions, call: bool) {
        echo_server(opts.create(name).unwrap());
        let client = gw.client("alice");
        if call {
            assert_eq!(client.call(remote(name).as_str(), b"x").unwrap(), b"x");
        } else {
            let mut c = client.open(remote(name).as_str()).unwrap();
            assert_eq!(c.transact(b"relayed").unwrap(), b"relayed");
        }
        let said = gw.ended(name);
        assert!(said.contains("relayed"), "{said}");
    }
    let gw = gateway("relayed", |_| ());
    let mut declining = server("allow everyone=full");
    declining.remote_hand_off(false);
    relayed(&gw, &unique("not-taken"), &mut declining, false);
    relayed(
        &gw,
        &unique("called"),
        &mut server("allow everyone=full"),
        true,
    );
    let quiet = gateway("no-offer", |o| {
        o.hand_off(false);
    });
    relayed(
        &quiet,
        &unique("not-offered"),
        &mut server("allow everyone=full"),
        false,
    );
}

/// A HAND-OFF as a gateway writes it (PROTOCOL.md §6c), with keys that
/// need not work.
fn hand_off_bytes() -> Vec<u8> {
    let mut b = b"NPHO".to_vec();
    b.push(2); // version
    b.push(1); // handed
    b.extend_from_slice(&0x1302u16.to_le_bytes()); // TLS_AES_256_GCM_SHA384
    for _ in 0..2 {
        b.extend_from_slice(&0u64.to_le_bytes());
        b.extend_from_slice(&[7; 32]);
        b.extend_from_slice(&[9; 12]);
    }
    // No traffic secrets (their lengths 0, their room zeros).
    b.resize(210, 0);
    b
}

/// Sends `bytes` with `fd` beside them (`SCM_RIGHTS`).
fn send_with_fd(on: &std::os::unix::net::UnixStream, bytes: &[u8], fd: std::os::fd::BorrowedFd) {
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    let fds = [fd];
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    assert!(control.push(SendAncillaryMessage::ScmRights(&fds)));
    let n = rustix::net::sendmsg(
        on,
        &[std::io::IoSlice::new(bytes)],
        &mut control,
        SendFlags::empty(),
    )
    .unwrap();
    assert_eq!(n, bytes.len());
}

/// A gateway's hand-over that is no hand-over (a socket that is not a TCP
/// connection, or bytes that are no HAND-OFF) breaks only that connection:
/// its server end finds its client gone, saying why, and the server goes on
/// serving.
/// (The gateway here is this process, which the server trusts.)
#[test]
fn a_broken_hand_over_breaks_only_its_connection() {
    use crate::raw_client::{self as rc, RawClient};
    let name = unique("bad-hand-over");
    let listener = server("allow everyone=full").create(&name).unwrap();
    for case in ["a unix socket", "garbage"] {
        let mut gateway = RawClient::connect(&name).unwrap();
        let mut hello = rc::remote_hello(&name, "mallory", "10.9.8.7", None);
        hello[9] |= rc::HAND_OFF;
        gateway.send(&hello).unwrap();
        assert_eq!(
            gateway.reply().unwrap(),
            rc::Reply::Connected { granted: 3 }
        );
        // The other end of the socket stays open: an end that took the
        // socket would wait on it for ever.
        let mut other_end = None;
        match case {
            "a unix socket" => {
                let (not_tcp, other) = std::os::unix::net::UnixStream::pair().unwrap();
                use std::os::fd::AsFd;
                send_with_fd(&gateway.stream, &hand_off_bytes(), not_tcp.as_fd());
                other_end = Some(other);
            }
            _ => gateway.send(&[b'X'; 210]).unwrap(),
        }
        let mut end = listener.accept().unwrap();
        end.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let e = end.recv_message().unwrap_err();
        assert_eq!(e.code(), ErrorCode::BrokenPipe, "{case}: {e}");
        // The server's end says why, not just that its client went.
        assert!(
            e.to_string().contains("the gateway's hand-over failed"),
            "{case}: {e}"
        );
        drop(other_end);
    }
    let mut c = ClientOptions::new().open(&name).unwrap();
    let mut end = listener.accept().unwrap();
    c.write_message(b"still served").unwrap();
    assert_eq!(end.recv_message().unwrap(), b"still served");
}

/// A remote client that gives up while it waits for an instance leaves
/// the server's queue at once, though its gateway offered the hand-over:
/// the close_notify a dropped tokio end sends, then TCP's end, reach the
/// server as a hang-up. (While the offer stood the gateway once only
/// peeked, and stopped at the first byte: the waiter stayed queued for
/// the minute it had asked for.)
#[test]
fn a_remote_waiter_that_gives_up_leaves_the_queue() {
    let gw = gateway("waiter-leaves", |_| ());
    let name = unique("remote-waiter-leaves");
    let listener = server("allow everyone=full")
        .max_instances(1)
        .create(&name)
        .unwrap();
    let opts = gw.client("alice");
    let _first = opts.open(remote(&name).as_str()).unwrap();
    let _held = listener.accept().unwrap();
    let mut patient = opts.clone();
    patient.wait(Wait::Timeout(Duration::from_secs(60)));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let path = remote(&name);
        let client = tokio::spawn(async move { patient.open_async(path.as_str()).await.map(drop) });
        for _ in 0..1000 {
            if crate::common::waiting(&name) == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(crate::common::waiting(&name), 1, "it waits in the queue");
        // It gives up: the future is dropped, and its end with it.
        client.abort();
        assert!(client.await.unwrap_err().is_cancelled());
    });
    crate::common::eventually("the waiter that gave up to leave the queue", || {
        (crate::common::waiting(&name) == 0).then_some(())
    });
}

/// A query through the gateway (a client other than npipe's may send
/// one) is answered: only a connect is offered for a hand-over. (An offer
/// on a query's HELLO cannot be written, and the gateway once dropped such
/// a client without a word.)
#[test]
fn a_remote_query_is_answered_not_offered() {
    let gw = gateway("remote-query", |_| ());
    let name = unique("remote-query");
    let _listener = server("allow everyone=full").create(&name).unwrap();
    let (crt, key) = gw.certs.issue("alice", 30);
    let reply = hand_written_hello(
        gw.addr,
        &gw.certs.ca(),
        Some((&crt, &key)),
        &name,
        crate::raw_client::QUERY,
    )
    .unwrap();
    assert!(reply.len() > 12 && &reply[..4] == b"NPIP", "{reply:?}");
    assert_eq!(reply[5], 1, "an INFO reply");
}

/// A read-only remote client whose gateway relays after all (a HAND-OFF
/// of kind 2) is held to its grant as any other: its writes fail with a
/// broken pipe, where the OK that took the offer had left the socket open
/// for the HAND-OFF.
#[test]
fn a_relayed_read_only_client_is_held_to_its_grant() {
    use crate::raw_client::{self as rc, RawClient};
    let name = unique("relayed-read-only");
    let listener = server("allow everyone=full").create(&name).unwrap();
    let mut gateway = RawClient::connect(&name).unwrap();
    let mut hello = rc::remote_hello(&name, "reader", "10.9.8.7", None);
    hello[6] = rc::READ; // read only
    hello[9] |= rc::HAND_OFF;
    gateway.send(&hello).unwrap();
    assert_eq!(
        gateway.reply().unwrap(),
        rc::Reply::Connected { granted: 1 }
    );
    let mut relayed = b"NPHO".to_vec();
    relayed.extend_from_slice(&[2, 2]); // version 2, kind 2: relayed
    relayed.resize(210, 0);
    gateway.send(&relayed).unwrap();
    let _end = listener.accept().unwrap();
    assert_eq!(gateway.write_until_refused(b"not yours to write"), "epipe");
}

/// A handed-over connection follows its client's TLS key updates (the
/// gateway hands the traffic secrets over with the keys): a rustls client
/// that updates its keys twice after the OK is still echoed.
#[test]
fn a_handed_over_connection_follows_key_updates() {
    let gw = gateway("key-update", |_| ());
    let name = unique("key-update");
    echo_server(server("allow everyone=full").create(&name).unwrap());
    let (crt, key) = gw.certs.issue("alice", 30);
    let mut tls = hand_written_tls(gw.addr, &gw.certs.ca(), Some((&crt, &key)));
    tls.write_all(&crate::raw_client::hello(
        &name,
        crate::raw_client::CONNECT,
        3,
        0,
    ))
    .unwrap();
    let mut reply = [0u8; 12];
    tls.read_exact(&mut reply).unwrap();
    assert_eq!(reply[5], 0, "OK");
    // The OK's description: 38 bytes, then the name.
    let mut desc = [0u8; 38];
    tls.read_exact(&mut desc).unwrap();
    let mut pipe_name = vec![0u8; usize::from(u16::from_le_bytes([desc[36], desc[37]]))];
    tls.read_exact(&mut pipe_name).unwrap();
    for round in 0..2u8 {
        tls.conn.refresh_traffic_keys().unwrap();
        let message = [round; 32];
        tls.write_all(&crate::raw_client::frame(&message)).unwrap();
        let mut echoed = [0u8; 36];
        tls.read_exact(&mut echoed).unwrap();
        assert_eq!(&echoed[4..], &message, "round {round}");
    }
    drop(tls);
    let said = gw.ended(&name);
    assert!(said.contains("handed over"), "{said}");
}
