//! Remote pipes: `\\HOST\pipe\NAME` over TLS 1.3 with client certificates
//! (the `remote` feature, Linux).
//!
//! Windows carries remote pipes over SMB with the user's logon; npipe
//! carries them to [`Gateway`] (`npipe gateway`) on HOST, port 4455:
//!
//! - A client opens or calls a remote name as any other; its certificate,
//!   key and CA come from [`ClientOptions`](crate::ClientOptions)
//!   (`remote_certificate`, `remote_ca`, `gateway_port`) or from
//!   `NPIPE_CERT`, `NPIPE_KEY`, `NPIPE_CA` and `NPIPE_GATEWAY_PORT`.
//!   Every pipe feature works remotely: both front ends run their connect
//!   and data path on the TLS connection itself, through the transport
//!   abstraction their local pipes use.
//! - The gateway verifies the client certificate against its CA, takes its
//!   common name as the remote principal, opens the local pipe for it and
//!   names it in the HELLO, with the client's address and the local user
//!   the principal maps to.
//! - Servers believe that only from a gateway they trust (root, or
//!   [`ServerOptions::trust_gateway`](crate::ServerOptions::trust_gateway)),
//!   refuse remote clients with
//!   [`reject_remote_clients`](crate::ServerOptions::reject_remote_clients),
//!   match `remote:PRINCIPAL` and `network` descriptor entries, and
//!   impersonate a remote client as its mapped user (1368 without one).
//! - After the server's OK the gateway hands the connection over: the
//!   client's TCP socket and its TLS keys go to the server, which talks
//!   TLS with the client itself (1.04 to 1.15 times raw TLS's round trip),
//!   while the gateway still counts the connection ([`GatewayOptions::hand_off`],
//!   [`ServerOptions::remote_hand_off`](crate::ServerOptions::remote_hand_off)).
//!
//! ```no_run
//! # async fn run() -> npipe::Result<()> {
//! use npipe::remote::{Gateway, GatewayOptions};
//!
//! let mut opts = GatewayOptions::new("gw.crt", "gw.key", "ca.crt");
//! opts.map("alice", npipe::LocalUser::by_name("alice"));
//! let gateway = Gateway::bind(opts).await?;
//! gateway.serve(|event| eprintln!("{event}")).await
//! # }
//! ```
//!
//! `docs/REMOTE.md` sets it up step by step.

pub(crate) mod async_tls;
pub(crate) mod client;
mod gateway;
pub(crate) mod handed;
mod record_layer;
mod relay;
mod secret_log;
mod session;
mod tls;
pub(crate) mod tls_transport;
pub(crate) mod trust;
mod x509;

pub use client::DEFAULT_PORT;
pub use gateway::{Gateway, GatewayEvent, GatewayOptions};
/// The rustls npipe is built with, for [`TlsFiles::client_config`] and
/// [`TlsFiles::server_config`].
pub use rustls;
pub use tls::TlsFiles;

/// Refuses a gateway's configuration file (ERROR_ACCESS_DENIED, saying
/// why) that anyone but root and this process's user could change, or
/// that lies in a directory they could: it says who reaches which pipes as
/// whom. [`Gateway::bind`] checks its CA, certificate and key the same way;
/// `npipe gateway --config` checks its file with this.
///
/// ```no_run
/// npipe::remote::check_config_file("/etc/npipe/gateway.toml")?;
/// # Ok::<(), npipe::Error>(())
/// ```
pub fn check_config_file(path: impl AsRef<std::path::Path>) -> crate::Result<()> {
    trust::check(
        path.as_ref(),
        "the gateway's configuration",
        trust::Kind::Public,
        crate::sys::effective_uid(),
    )
}

/// Refuses a directory to write keys and certificates into (as `npipe
/// cert` does) unless only root and this process's user can change it and
/// every directory above it: the rule [`Gateway::bind`] holds its files to.
pub fn check_key_dir(path: impl AsRef<std::path::Path>) -> crate::Result<()> {
    trust::check(
        path.as_ref(),
        "the directory for keys",
        trust::Kind::Public,
        crate::sys::effective_uid(),
    )
}

/// The remote principal a certificate names (its subject's common name),
/// read from the first certificate of a PEM file: who a client holding it
/// is to servers behind a gateway.
pub fn principal_of(pem_file: impl AsRef<std::path::Path>) -> crate::Result<String> {
    let path = pem_file.as_ref();
    let cert = tls::first_certificate(path)?;
    x509::subject_common_name(&cert).ok_or_else(|| {
        crate::Error::new(
            crate::ErrorCode::InvalidParameter,
            format!("{} names no common name", path.display()),
        )
    })
}
