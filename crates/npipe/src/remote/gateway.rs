//! The gateway (`npipe gateway`): what the SMB server is to Windows'
//! remote pipes. It accepts TLS 1.3 connections that show a client
//! certificate from its CA, reads each client's HELLO, names the client in
//! it (the certificate's common name as the principal, the address it came
//! from as the computer, and the local user the principal maps to), opens
//! the local pipe on the client's behalf, and from then on relays bytes
//! both ways. Servers believe that naming only from a gateway they trust
//! (root, or `ServerOptions::trust_gateway`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ::tokio::io::{AsyncReadExt, AsyncWriteExt};
use ::tokio::net::{TcpListener, TcpStream};
use ::tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;

use super::relay;
use super::secret_log::ConnectionSecrets;
use super::tls::{self, TlsFiles};
use super::trust;
use super::x509;
use crate::error::{Error, ErrorCode, Result};
use crate::identity::LocalUser;
use crate::name::PipeName;
use crate::namespace::describe_user;
use crate::proto::handshake::{
    Hello, HelloKind, Reply, HELLO_MAX, MAX_LOCAL_GROUPS, MAX_PRINCIPAL_BYTES,
};

/// What a gateway serves, and for whom.
///
/// ```no_run
/// use npipe::remote::GatewayOptions;
/// use npipe::LocalUser;
///
/// let mut opts = GatewayOptions::new("gw.crt", "gw.key", "ca.crt");
/// opts.listen("0.0.0.0:4455".parse().unwrap())
///     .map("alice", LocalUser::by_name("alice"))
///     .only_pipes("alice", ["echo", "builds\\*"]);
/// # Ok::<(), npipe::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct GatewayOptions {
    listen: SocketAddr,
    files: TlsFiles,
    principals: HashMap<String, Principal>,
    handshake_timeout: Duration,
    max_handshakes: usize,
    max_per_principal: usize,
    /// `None`: from the limit on open files, when the gateway binds.
    max_connections: Option<usize>,
    /// Pipes (names or `prefix*`, canonical) and the one user whose server
    /// the gateway forwards them to.
    servers: Vec<(String, u32)>,
    /// Offer servers the connections (PROTOCOL §6c).
    hand_off: bool,
}

/// What the gateway knows of one principal (names compared without ASCII
/// case, as certificate names are).
#[derive(Debug, Clone, Default)]
struct Principal {
    user: Option<u32>,
    /// `None`: any pipe. Names in canonical (lower) case; a trailing `*`
    /// matches any rest.
    pipes: Option<Vec<String>>,
}

impl GatewayOptions {
    /// A gateway with this certificate and key (PEM), accepting clients
    /// whose certificates `ca` issued, on port 4455 of every address.
    pub fn new(
        cert: impl Into<std::path::PathBuf>,
        key: impl Into<std::path::PathBuf>,
        ca: impl Into<std::path::PathBuf>,
    ) -> GatewayOptions {
        GatewayOptions {
            listen: SocketAddr::from(([0, 0, 0, 0], super::client::DEFAULT_PORT)),
            files: TlsFiles {
                cert: cert.into(),
                key: key.into(),
                ca: ca.into(),
            },
            principals: HashMap::new(),
            handshake_timeout: Duration::from_secs(10),
            max_handshakes: 4096,
            max_per_principal: 4096,
            max_connections: None,
            servers: Vec::new(),
            hand_off: true,
        }
    }

    /// Whether to offer each pipe's server its remote clients' connections
    /// (default: yes). A server that takes one (the default for servers of
    /// this version, [`ServerOptions::remote_hand_off`]) gets the client's
    /// TCP connection and TLS keys after its OK, and talks TLS with the
    /// client itself: the gateway leaves the data path, and holds only a
    /// socket to the server, to count the connection until it ends.
    /// Connections whose client sent a request with its HELLO (`call`) are
    /// relayed all the same. Off, every byte goes through the gateway (a
    /// server older than this offer refuses a HELLO that makes it).
    ///
    /// [`ServerOptions::remote_hand_off`]: crate::ServerOptions::remote_hand_off
    pub fn hand_off(&mut self, offer: bool) -> &mut Self {
        self.hand_off = offer;
        self
    }

    /// The address to listen on.
    pub fn listen(&mut self, addr: SocketAddr) -> &mut Self {
        self.listen = addr;
        self
    }

    /// Maps a principal (a certificate's common name) to the local user
    /// servers act as when they impersonate it. `None` (or no mapping)
    /// leaves it a remote identity only: servers cannot impersonate it.
    pub fn map(&mut self, principal: &str, user: Option<LocalUser>) -> &mut Self {
        self.principals
            .entry(principal.to_ascii_lowercase())
            .or_default()
            .user = user.map(|u| u.0);
        self
    }

    /// Lets `principal` reach only these pipes (names without `\\.\pipe\`,
    /// any case; a trailing `*` matches any rest). Unrestricted otherwise.
    pub fn only_pipes<I, S>(&mut self, principal: &str, pipes: I) -> &mut Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        // In the canonical form HELLOs carry: `/` is `\`, any case.
        let pipes = pipes
            .into_iter()
            .map(|p| p.as_ref().replace('/', "\\").to_lowercase())
            .collect();
        self.principals
            .entry(principal.to_ascii_lowercase())
            .or_default()
            .pipes = Some(pipes);
        self
    }

    /// How long a client may take over TLS and its HELLO (default 10 s).
    pub fn handshake_timeout(&mut self, limit: Duration) -> &mut Self {
        self.handshake_timeout = limit;
        self
    }

    /// Most connections in their TLS handshake, HELLO or the lookup of
    /// their mapped user's groups at once (default
    /// 4096: a burst of a thousand clients fits). Anyone who can reach the
    /// port can open a connection and stay silent for the handshake
    /// timeout; past this many, new connections are closed at once instead
    /// of each holding a descriptor of the gateway's, as the servers' own
    /// `max_handshakes` does, and one principal's slow group lookups cannot
    /// fill the blocking pool. Connections past their handshake do not
    /// count.
    pub fn max_handshakes(&mut self, n: usize) -> &mut Self {
        self.max_handshakes = n.max(1);
        self
    }

    /// Forwards clients to the pipes `pattern` names (a name as clients give
    /// it after `\\HOST\pipe\`, or a prefix ending in `*`) only if their
    /// server runs as `user`, as the kernel says of the pipe's socket; a
    /// client is refused with `ERROR_ACCESS_DENIED` otherwise. The defence
    /// against a local user who takes a remote pipe's name before its
    /// server does (pipe squatting): without it the gateway connects to
    /// whoever serves the name. The first pattern that matches decides;
    /// pipes no pattern matches are not checked.
    ///
    /// ```
    /// use npipe::remote::GatewayOptions;
    /// use npipe::LocalUser;
    ///
    /// let mut opts = GatewayOptions::new("gw.crt", "gw.key", "ca.crt");
    /// opts.expect_server("builds\\*", LocalUser::ROOT);
    /// ```
    pub fn expect_server(&mut self, pattern: &str, user: LocalUser) -> &mut Self {
        let pattern = pattern.replace('/', "\\").to_lowercase();
        self.servers.push((pattern, user.0));
        self
    }

    /// The user whose server `canonical` must have, if one is expected.
    fn expected_server(&self, canonical: &str) -> Option<u32> {
        self.servers
            .iter()
            .find(|(pattern, _)| pattern_matches(pattern, canonical))
            .map(|&(_, uid)| uid)
    }

    /// Most connections one principal may have through the gateway at once
    /// (default 4096). Past it, its next connection is refused with
    /// `ERROR_PIPE_BUSY` (231) saying why: one authenticated client cannot
    /// take every descriptor and task of the gateway from the others.
    pub fn max_connections_per_principal(&mut self, n: usize) -> &mut Self {
        self.max_per_principal = n.max(1);
        self
    }

    /// Most authenticated connections through the gateway at once, all
    /// principals together. Past it the next is refused as busy (231), so
    /// the gateway keeps descriptors for new handshakes and its own files.
    /// Default: what the limit on open files leaves (each connection holds
    /// two: TCP and the local pipe), read when the gateway binds.
    pub fn max_connections(&mut self, n: usize) -> &mut Self {
        self.max_connections = Some(n.max(1));
        self
    }

    fn principal(&self, name: &str) -> Principal {
        self.principals
            .get(&name.to_ascii_lowercase())
            .cloned()
            .unwrap_or_default()
    }
}

impl Principal {
    fn may_reach(&self, canonical: &str) -> bool {
        match &self.pipes {
            None => true,
            Some(pipes) => pipes.iter().any(|p| pattern_matches(p, canonical)),
        }
    }
}

/// Whether a pipe pattern (a canonical name, or a prefix ending in `*`)
/// names the pipe `canonical`.
fn pattern_matches(pattern: &str, canonical: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => canonical.starts_with(prefix),
        None => canonical == pattern,
    }
}

/// A bound gateway, ready to [`serve`](Gateway::serve).
pub struct Gateway {
    listener: TcpListener,
    acceptor: TlsAcceptor,
    opts: Arc<GatewayOptions>,
    /// A permit per connection in its handshake.
    handshakes: Arc<Semaphore>,
    /// The bounds on authenticated connections, shared with each one's task.
    limits: Arc<Limits>,
    /// Its TLS configuration, which a connection that may be handed over
    /// gets a copy of with a key log of its own.
    config: Arc<rustls::ServerConfig>,
}

/// The gateway's bounds on authenticated connections.
struct Limits {
    /// Connections per principal, past their handshake.
    per_principal: Arc<PerPrincipal>,
    /// A permit per authenticated connection, all principals together.
    connections: Arc<Semaphore>,
    /// How many permits `connections` started with.
    max_connections: usize,
}

/// The default most connections: each holds two descriptors (TCP and the
/// local pipe); a quarter of the limit stays for handshakes and files.
fn default_max_connections(open_files: u64) -> usize {
    let usable = open_files.saturating_mul(3) / 4 / 2;
    usize::try_from(usable).unwrap_or(usize::MAX).max(16)
}

/// How many connections each principal has through the gateway.
#[derive(Debug, Default)]
struct PerPrincipal(std::sync::Mutex<HashMap<String, usize>>);

/// One of a principal's connections, counted until dropped.
struct Counted {
    count: Arc<PerPrincipal>,
    principal: String,
}

impl PerPrincipal {
    /// Counts one more connection of `principal`, unless it has `max`.
    fn enter(this: &Arc<PerPrincipal>, principal: &str, max: usize) -> Option<Counted> {
        let key = principal.to_ascii_lowercase();
        let mut counts = this.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = counts.entry(key.clone()).or_default();
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Counted {
            count: Arc::clone(this),
            principal: key,
        })
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        let mut counts = self.count.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = counts.get_mut(&self.principal) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.principal);
            }
        }
    }
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("listener", &self.listener)
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

/// What happened to one connection, for the gateway's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayEvent {
    /// The client's address.
    pub peer: SocketAddr,
    /// The principal, once TLS has authenticated one.
    pub principal: Option<String>,
    /// What happened.
    pub what: String,
}

impl std::fmt::Display for GatewayEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.principal {
            Some(p) => write!(f, "{} ({p}): {}", self.peer, self.what),
            None => write!(f, "{}: {}", self.peer, self.what),
        }
    }
}

impl Gateway {
    /// Reads the certificates and binds the listening address. Call from
    /// within a tokio runtime.
    ///
    /// The CA, the certificate and the key are refused (ERROR_ACCESS_DENIED,
    /// saying which and why) if anyone but root and this process's user
    /// could change them or a directory above them, or if other users may
    /// read the key: whoever can change the CA issues themselves any
    /// principal, and whoever reads the key poses as this gateway.
    pub async fn bind(opts: GatewayOptions) -> Result<Gateway> {
        let me = crate::sys::effective_uid();
        for (path, what, kind) in trust::of(&opts.files) {
            trust::check(&path, what, kind, me)?;
        }
        let mut config = tls::server_config(&opts.files)?;
        // A connection handed over takes its keys with it (and the secrets
        // they come from: each connection's own log, `acceptor_for`).
        if opts.hand_off {
            Arc::make_mut(&mut config).enable_secret_extraction = true;
        }
        let max_connections = opts
            .max_connections
            .unwrap_or_else(|| default_max_connections(crate::sys::open_file_limit()));
        let listener = TcpListener::bind(opts.listen)
            .await
            .map_err(|e| Error::os(e, &format!("cannot listen on {}", opts.listen)))?;
        Ok(Gateway {
            listener,
            acceptor: TlsAcceptor::from(Arc::clone(&config)),
            config,
            handshakes: Arc::new(Semaphore::new(opts.max_handshakes)),
            limits: Arc::new(Limits {
                per_principal: Arc::default(),
                connections: Arc::new(Semaphore::new(max_connections)),
                max_connections,
            }),
            opts: Arc::new(opts),
        })
    }

    /// The TLS acceptor for a new connection, and where its traffic
    /// secrets are logged if it may be handed over: a copy of the
    /// configuration with a key log of the connection's own, so no entry
    /// can be another connection's and none outlives it.
    fn acceptor_for(&self) -> (TlsAcceptor, Option<Arc<ConnectionSecrets>>) {
        if !self.opts.hand_off {
            return (self.acceptor.clone(), None);
        }
        let secrets = Arc::new(ConnectionSecrets::default());
        let mut config = (*self.config).clone();
        config.key_log = Arc::clone(&secrets) as Arc<dyn rustls::KeyLog>;
        (TlsAcceptor::from(Arc::new(config)), Some(secrets))
    }

    /// The address it listens on (with the port the system chose for 0).
    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.listener
            .local_addr()
            .map_err(|e| Error::os(e, "cannot read the gateway's address"))
    }

    /// Serves clients until the task is dropped, each on a task of its own;
    /// `log` hears of each connection's end (refusals and failures
    /// included).
    pub async fn serve(self, log: impl Fn(GatewayEvent) + Send + Sync + 'static) -> Result<()> {
        let log = Arc::new(log);
        loop {
            let (tcp, peer) = match self.listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors, say: others may still close.
                    log(GatewayEvent {
                        peer: self.opts.listen,
                        principal: None,
                        what: format!("accept failed: {e}"),
                    });
                    ::tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = Arc::clone(&self.handshakes).try_acquire_owned() else {
                drop(tcp);
                log(GatewayEvent {
                    peer,
                    principal: None,
                    what: format!(
                        "refused: {} connections are in their handshake already",
                        self.opts.max_handshakes
                    ),
                });
                continue;
            };
            let (acceptor, secrets) = self.acceptor_for();
            let opts = Arc::clone(&self.opts);
            let log = Arc::clone(&log);
            let limits = Arc::clone(&self.limits);
            ::tokio::spawn(async move {
                let mut principal = None;
                let served = serve_one(
                    tcp,
                    peer,
                    acceptor,
                    (&opts, &limits, secrets),
                    permit,
                    &mut principal,
                );
                let what = match served.await {
                    Ok(what) => what,
                    Err(e) => e.to_string(),
                };
                log(GatewayEvent {
                    peer,
                    principal,
                    what,
                });
            });
        }
    }
}

/// One client, from TLS to the end of its relay: what became of it.
async fn serve_one(
    tcp: TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    (opts, limits, secrets): (&GatewayOptions, &Limits, Option<Arc<ConnectionSecrets>>),
    handshake: OwnedSemaphorePermit,
    principal_out: &mut Option<String>,
) -> Result<String> {
    let _ = tcp.set_nodelay(true);
    // TLS, the HELLO and the mapped user's groups: the whole handshake,
    // within one timeout, holding one of the `max_handshakes` permits.
    let deadline = ::tokio::time::Instant::now() + opts.handshake_timeout;
    let mut tls = match ::tokio::time::timeout_at(deadline, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => return Ok(format!("refused during TLS: {e}")),
        Err(_) => return Ok("refused: TLS took too long".into()),
    };
    let principal = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first())
        .and_then(|cert| x509::subject_common_name(cert));
    let Some(principal) = principal else {
        let why = "the client certificate has no common name, which names the remote principal";
        refuse(&mut tls, ErrorCode::AccessDenied, why).await;
        return Ok(format!("refused: {why}"));
    };
    if principal.is_empty() || principal.len() > MAX_PRINCIPAL_BYTES {
        let why = "the client certificate's common name must be 1 to 256 bytes";
        refuse(&mut tls, ErrorCode::AccessDenied, why).await;
        return Ok(format!("refused: {why}"));
    }
    *principal_out = Some(principal.clone());
    let Ok(_connection) = Arc::clone(&limits.connections).try_acquire_owned() else {
        let why = format!(
            "the gateway has {} connections, its most; try again later",
            limits.max_connections
        );
        refuse(&mut tls, ErrorCode::PipeBusy, &why).await;
        return Ok(format!("refused: {why}"));
    };
    let Some(_counted) =
        PerPrincipal::enter(&limits.per_principal, &principal, opts.max_per_principal)
    else {
        let why = format!(
            "{principal} has {} connections through this gateway already, its most",
            opts.max_per_principal
        );
        refuse(&mut tls, ErrorCode::PipeBusy, &why).await;
        return Ok(format!("refused: {why}"));
    };
    let (mut hello, rest) = match ::tokio::time::timeout_at(deadline, read_hello(&mut tls)).await {
        Ok(Ok(read)) => read,
        Ok(Err(why)) => {
            refuse(&mut tls, ErrorCode::BadPipe, &why).await;
            return Ok(format!("refused: {why}"));
        }
        Err(_) => return Ok("dropped: no HELLO in time".into()),
    };
    // Judged, checked and opened by its canonical form: a real server
    // refuses a name spelled otherwise (another case, `/` for `\`), but a
    // squatter takes it, so a spelling must not slip past the principal's
    // pipes or the expected server.
    let name = match local_pipe(&hello.name) {
        Ok(name) => name,
        Err(e) => {
            refuse(&mut tls, e.code(), e.message()).await;
            return Ok(format!("refused: {e}"));
        }
    };
    hello.name = name.canonical().to_string();
    if let Some((code, why)) = judge(&hello, &principal, opts) {
        refuse(&mut tls, code, &why).await;
        return Ok(format!("refused: {why}"));
    }
    let mapped = opts.principal(&principal).user;
    // The mapped user's groups go with it, so the server's deny entries
    // for them reach this client (read on the blocking pool, within the
    // handshake's time and under its permit: the user database may be
    // LDAP, and one principal's slow lookups must not fill the pool for
    // everyone). A lookup that fails refuses the client: sending the user
    // without its groups would let it past a deny of one of them.
    let groups = match mapped {
        Some(uid) => {
            let lookup = ::tokio::task::spawn_blocking(move || mapped_groups(uid));
            match ::tokio::time::timeout_at(deadline, lookup).await {
                Ok(Ok(Some(groups))) => groups,
                _ => {
                    let why = format!(
                        "cannot read the groups of uid {uid}, the local user {principal} maps \
                         to, from the user database; the client is refused rather than let \
                         past a deny of one of them"
                    );
                    refuse(&mut tls, ErrorCode::AccessDenied, &why).await;
                    return Ok(format!("refused: {why}"));
                }
            }
        }
        None => Vec::new(),
    };
    if groups.len() > MAX_LOCAL_GROUPS {
        let why = format!(
            "the local user {principal} maps to is in {} groups, more than a HELLO carries \
             ({MAX_LOCAL_GROUPS}); map the principal to a user in fewer groups",
            groups.len()
        );
        refuse(&mut tls, ErrorCode::AccessDenied, &why).await;
        return Ok(format!("refused: {why}"));
    }
    // The handshake is over: the permit goes to the next connection.
    drop(handshake);
    hello.principal = principal;
    hello.computer = peer.ip().to_string();
    hello.local_user = mapped;
    hello.local_groups = groups;
    // Within a time of its own: a server that never drains its backlog
    // holds no task here for ever.
    let connect_by = Instant::now() + opts.handshake_timeout;
    let pipe = match crate::tokio::client::connect_socket(&name, Some(connect_by)).await {
        Ok(pipe) => pipe,
        Err(e) => {
            refuse(&mut tls, e.code(), e.message()).await;
            return Ok(format!("refused: {e}"));
        }
    };
    if let Err(why) = check_server(&pipe, &hello.name, opts.expected_server(&hello.name)) {
        refuse(&mut tls, ErrorCode::AccessDenied, &why).await;
        return Ok(format!("refused: {why}"));
    }
    hello.hand_off = opts.hand_off
        && hello.kind == HelloKind::Connect
        && !hello.pipelined
        && can_hand_over(tls.get_mut().1, &rest);
    let mut opening = Vec::with_capacity(HELLO_MAX + rest.len());
    hello
        .encode(&mut opening)
        .map_err(|e| Error::new(ErrorCode::BadPipe, e.to_string()))?;
    opening.extend_from_slice(&rest);
    // tokio-rustls did the handshake; the relay drives rustls itself (and
    // takes any plaintext it holds past the HELLO).
    let (tcp, conn) = tls.into_inner();
    let conn = rustls::Connection::Server(conn);
    match relay::relay(tcp, conn, pipe, opening, hello.hand_off).await {
        Ok(relay::Outcome::Relayed(relayed)) => Ok(format!(
            "{:?}: relayed {} bytes in, {} out",
            hello.name, relayed.up, relayed.down
        )),
        Ok(relay::Outcome::HandOver(handing)) => {
            Ok(hand_over(handing, &hello.name, secrets.as_deref()).await)
        }
        Err(e) => Ok(format!("{:?}: relay ended: {e}", hello.name)),
    }
}

/// Whether a connection can be handed over: nothing came behind the HELLO
/// (a pipelined request is relayed; a connect whose HELLO says none is
/// coming is asked for first), and its suite is one the server's
/// record layer carries (TLS 1.3 with a 256-bit key).
fn can_hand_over(conn: &mut rustls::ServerConnection, rest: &[u8]) -> bool {
    rest.is_empty()
        && conn
            .process_new_packets()
            .is_ok_and(|io| io.plaintext_bytes_to_read() == 0)
        && matches!(
            conn.negotiated_cipher_suite(),
            Some(rustls::SupportedCipherSuite::Tls13(s)) if s.aead_alg.key_len() == 32
        )
}

/// Hands a connection whose OK took the offer to the pipe's server: its
/// keys in a HAND-OFF, its TCP socket beside it. Then holds the socket to
/// the server until the server's end closes it, so the connection counts
/// against the gateway's limits as long as it lives. What became of it.
async fn hand_over(
    handing: Box<relay::HandOver>,
    name: &str,
    secrets: Option<&ConnectionSecrets>,
) -> String {
    use crate::proto::handoff::HandOff;
    use std::os::fd::AsFd;
    let relay::HandOver { tcp, conn, pipe } = *handing;
    let suite = conn.negotiated_cipher_suite().map(|s| s.suite());
    let keys = match (suite, conn.dangerous_extract_secrets()) {
        (Some(suite), Ok(secrets)) => super::record_layer::keys_from_extracted(suite, secrets),
        _ => None,
    };
    // Without keys there is nothing to hand over, nor TLS to go on with:
    // both ends see the connection close.
    let Some(mut keys) = keys else {
        return format!("{name:?}: the connection's keys could not be taken for the hand-over");
    };
    // With the secrets the server can follow a key update (without, the
    // connection ends at the first).
    if let Some((mut client, mut server)) = secrets.and_then(ConnectionSecrets::take) {
        keys.tx.secret = std::mem::take(&mut *server);
        keys.rx.secret = std::mem::take(&mut *client);
    }
    let mut message = zeroize::Zeroizing::new(Vec::with_capacity(crate::proto::handoff::LEN));
    HandOff::Handed(keys).encode(&mut message);
    // A fresh message on a socket the server has only read from: it goes
    // whole, or the server is gone.
    match pipe.get_ref().socket().send_with_fd(&message, tcp.as_fd()) {
        Ok(n) if n == message.len() => {}
        Ok(_) | Err(_) => return format!("{name:?}: the server went before the hand-over"),
    }
    drop(tcp);
    // The lease: the server's end closes its side when it ends. The
    // relay's registration of the socket serves to watch it.
    let mut sink = [0u8; 64];
    loop {
        let Ok(mut guard) = pipe.readable().await else {
            break;
        };
        match guard.try_io(|fd| fd.get_ref().socket().recv_nonblocking(&mut sink)) {
            // A server sends nothing here: one that does (a squatter, say)
            // ends the watch rather than keep the gateway reading it.
            Ok(Ok(_)) | Ok(Err(_)) => break,
            Err(_) => {}
        }
    }
    format!("{name:?}: handed over to the pipe's server; its end has closed")
}

/// Reads until a whole HELLO is in: it, and what came behind it (a
/// pipelined request), or why the bytes are no HELLO.
async fn read_hello<S: ::tokio::io::AsyncRead + Unpin>(
    tls: &mut S,
) -> std::result::Result<(Hello, Vec<u8>), String> {
    // A HELLO, and room for a read that carries some of what follows; a
    // read never needs more (the loop ends at HELLO_MAX).
    let mut buf = Vec::with_capacity(HELLO_MAX + 16 * 1024);
    loop {
        match Hello::decode(&buf) {
            Ok(Some((hello, used))) => return Ok((hello, buf.split_off(used))),
            Ok(None) if buf.len() >= HELLO_MAX => {
                return Err("the HELLO is longer than any HELLO can be".into())
            }
            Ok(None) => {}
            Err(e) => return Err(format!("malformed HELLO: {e}")),
        }
        match tls.read_buf(&mut buf).await {
            Ok(0) => return Err("the client closed before its HELLO was whole".into()),
            Ok(_) => {}
            Err(e) => return Err(format!("reading the HELLO failed: {e}")),
        }
    }
}

/// Why this HELLO from `principal` goes no further, if it does not.
fn judge(hello: &Hello, principal: &str, opts: &GatewayOptions) -> Option<(ErrorCode, String)> {
    // (A HELLO with groups but no local user does not decode.)
    if !hello.principal.is_empty() || !hello.computer.is_empty() || hello.local_user.is_some() {
        return Some((
            ErrorCode::AccessDenied,
            "a remote client may not name a principal, computer or user: the gateway names it \
             from its certificate"
                .into(),
        ));
    }
    if !opts.principal(principal).may_reach(&hello.name) {
        return Some((
            ErrorCode::AccessDenied,
            format!(
                "remote principal {principal} may not reach pipe {:?} through this gateway",
                hello.name
            ),
        ));
    }
    None
}

/// The local pipe a HELLO's name means (a gateway serves its own host's
/// pipes only).
fn local_pipe(name: &str) -> Result<PipeName> {
    let name = PipeName::parse(name)?;
    if name.host().is_some() {
        return Err(Error::new(
            ErrorCode::BadNetPath,
            "a gateway serves its own host's pipes only",
        ));
    }
    Ok(name)
}

/// Whether the local pipe's server (its socket's peer, as the kernel says)
/// runs as the user the gateway expects for `name`, if it expects one.
fn check_server(
    pipe: &crate::sys::Socket,
    name: &str,
    expected: Option<u32>,
) -> std::result::Result<(), String> {
    let Some(uid) = expected else {
        return Ok(());
    };
    let served_by = pipe
        .peer_cred()
        .map_err(|e| format!("cannot ask the kernel who serves pipe {name:?}: {e}"))?
        .user;
    if served_by.0 == uid {
        return Ok(());
    }
    Err(format!(
        "pipe {name:?} on this host is served by {}, not by {} as this gateway expects: \
         the client is not forwarded to it",
        describe_user(served_by.0),
        describe_user(uid)
    ))
}

/// Answers the HELLO with a refusal and ends TLS.
async fn refuse<S: ::tokio::io::AsyncWrite + Unpin>(tls: &mut S, code: ErrorCode, why: &str) {
    let mut out = Vec::new();
    let reply = Reply::Refused {
        code: code.win32(),
        reason: why.to_string(),
    };
    if reply.encode(&mut out).is_ok() {
        let _ = tls.write_all(&out).await;
    }
    let _ = tls.shutdown().await;
}

/// The groups of local user `uid` from the user database, its primary
/// group first, each once; `None` if the database has no such user or
/// could not say.
fn mapped_groups(uid: u32) -> Option<Vec<u32>> {
    let (name, gid) = crate::sys::user_entry(uid)?;
    let mut groups = crate::sys::try_group_list(&name, gid)?;
    groups.sort_unstable();
    groups.dedup();
    groups.retain(|&g| g != gid);
    groups.insert(0, gid);
    Some(groups)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each connection holds two descriptors; a quarter of the limit stays
    /// for handshakes and files; never fewer than 16.
    #[test]
    fn the_default_connection_bound_follows_the_open_file_limit() {
        assert_eq!(default_max_connections(1024), 384);
        assert_eq!(default_max_connections(65_536), 24_576);
        assert_eq!(default_max_connections(10), 16);
        assert!(default_max_connections(u64::MAX) > 1 << 40);
    }

    /// The groups sent for a mapped user: its primary group first, each
    /// once; none at all (so the client is refused) for a user the
    /// database does not have.
    #[test]
    fn a_mapped_users_groups_are_read_or_the_client_refused() {
        let root = mapped_groups(0).expect("root is in every user database");
        assert_eq!(root.first(), Some(&0));
        let mut sorted = root.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), root.len(), "{root:?}");
        assert_eq!(mapped_groups(4_000_000_123), None);
    }

    #[test]
    fn principals_reach_the_pipes_they_are_allowed() {
        let mut opts = GatewayOptions::new("c", "k", "ca");
        opts.only_pipes("Alice", ["echo", "builds\\*"]);
        let alice = opts.principal("ALICE");
        assert!(alice.may_reach("echo"));
        assert!(alice.may_reach("builds\\nightly"));
        assert!(!alice.may_reach("echo2"));
        assert!(!alice.may_reach("secrets"));
        // Written with `/`, as clients may name it: the same pipes.
        opts.only_pipes("carol", ["builds/*"]);
        assert!(opts.principal("carol").may_reach("builds\\nightly"));
        assert!(opts.principal("bob").may_reach("secrets"), "unrestricted");
    }

    #[test]
    fn a_client_cannot_name_itself() {
        let opts = GatewayOptions::new("c", "k", "ca");
        let mut hello = Hello {
            kind: crate::proto::handshake::HelloKind::Connect,
            access: None,
            read_mode: crate::ReadMode::Byte,
            impersonation: crate::ImpersonationLevel::Impersonation,
            wait_ms: 0,
            max_message: 0,
            pipelined: false,
            name: "echo".into(),
            principal: String::new(),
            computer: String::new(),
            local_user: None,
            local_groups: Vec::new(),
            hand_off: false,
        };
        assert_eq!(judge(&hello, "alice", &opts), None);
        hello.principal = "root".into();
        let (code, _) = judge(&hello, "alice", &opts).unwrap();
        assert_eq!(code, ErrorCode::AccessDenied);
    }

    #[test]
    fn a_mapped_principal_keeps_its_user() {
        let mut opts = GatewayOptions::new("c", "k", "ca");
        opts.map("CI-Agent", Some(LocalUser(65534)));
        assert_eq!(opts.principal("ci-agent").user, Some(65534));
        assert_eq!(opts.principal("other").user, None);
    }
}
