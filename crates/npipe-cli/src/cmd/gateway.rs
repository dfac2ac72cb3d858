//! `npipe gateway`: serve this host's pipes to remote clients over TLS 1.3
//! with client certificates (what the SMB server does for Windows).

use std::net::SocketAddr;
use std::path::PathBuf;

use npipe::remote::{Gateway, GatewayOptions};
use npipe::LocalUser;

use super::CmdResult;
use crate::exit::{Failure, Status};

const LONG_ABOUT: &str = r"Serve this host's pipes to remote clients (\\HOST\pipe\NAME).

Clients on other machines open \\HOST\pipe\NAME; their connection comes here,
over TLS 1.3 on port 4455. Each must show a certificate from the CA given with
--ca; its common name is the remote principal. The gateway opens the local
pipe for the client and names it to the server: the principal, the client's
address (GetNamedPipeClientComputerName) and the local user --map gives it,
as whom the server impersonates it. Unmapped principals are remote
identities only: servers can check them (`allow remote:NAME=rw`) but not
impersonate them.

Servers believe a gateway only if it runs as root or as a user they trust
(npipe serve --trust-gateway USER, ServerOptions::trust_gateway). Run it as
root, or give --non-root once the servers trust its user.

--config FILE reads the same settings from TOML (flags win):
    listen = '0.0.0.0:4455'
    cert = '/etc/npipe/gateway.crt'
    key = '/etc/npipe/gateway.key'
    ca = '/etc/npipe/ca.crt'
    [principals.alice]
    user = 'alice'                     # impersonated as alice
    pipes = ['echo', 'builds\*']       # and reaches only these pipes
    [principals.ci-agent]
    pipes = ['builds\*']               # a remote identity only
    [servers]
    'builds\*' = 'builder'             # forwarded only to builder's servers

--expect-server PIPE=USER (or [servers]) forwards clients to those pipes only
if the kernel says their server runs as USER: a local user who takes a
remote pipe's name before its server does is refused, not reached.";

const AFTER_HELP: &str = r"Examples:
  sudo npipe gateway --cert certs/gw.crt --key certs/gw.key --ca certs/ca.crt --map alice=alice
  sudo npipe gateway --config /etc/npipe/gateway.toml
  npipe gateway --listen 127.0.0.1:4455 --config gw.toml --non-root   (servers trust its user)

docs/REMOTE.md sets up two hosts step by step and runs the gateway as a
systemd service.";

/// Arguments of `npipe gateway`.
#[derive(Debug, clap::Args)]
#[command(
    about = "Serve this host's pipes to remote clients over TLS (\\\\HOST\\pipe\\NAME)",
    long_about = LONG_ABOUT,
    after_help = AFTER_HELP
)]
pub struct Args {
    /// Address and port to listen on [default: 0.0.0.0:4455]
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,

    /// The gateway's certificate (PEM; its hosts as subject alternative
    /// names: `npipe cert issue NAME --host H`)
    #[arg(long, value_name = "FILE")]
    pub cert: Option<PathBuf>,

    /// The certificate's private key (PEM)
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,

    /// The CA whose client certificates are accepted (PEM)
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,

    /// Map a principal to the local user servers impersonate it as
    /// (repeatable)
    #[arg(long, value_name = "PRINCIPAL=USER")]
    pub map: Vec<String>,

    /// Forward clients to PIPE (a name, or a prefix ending in `*`) only if
    /// its server runs as USER (repeatable; the first that matches decides)
    #[arg(long, value_name = "PIPE=USER")]
    pub expect_server: Vec<String>,

    /// Settings from a TOML file (see above); flags win
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Most connections in their TLS handshake at once; past it new ones
    /// are closed at once (anyone who reaches the port can stall one for
    /// the 10 s handshake timeout)
    #[arg(long, value_name = "N", default_value_t = 4096,
          value_parser = clap::value_parser!(u32).range(1..=65_536))]
    pub max_handshakes: u32,

    /// Most connections one principal may have through the gateway at
    /// once; past it its next is refused as busy (231)
    #[arg(long, value_name = "N", default_value_t = 4096,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_connections_per_principal: u32,

    /// Most authenticated connections at once, all principals together;
    /// past it the next is refused as busy (231) [default: what the limit
    /// on open files leaves, each connection holding two]
    #[arg(long, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub max_connections: Option<u32>,

    /// Allow --map (or `user` in --config) to name root: remote clients
    /// would then be impersonated with every privilege
    #[arg(long)]
    pub allow_root_map: bool,

    /// Run as a user other than root (the servers must trust it:
    /// npipe serve --trust-gateway USER)
    #[arg(long)]
    pub non_root: bool,

    /// Relay every byte instead of handing each connection to its pipe's
    /// server after the OK (servers older than this offer refuse it)
    #[arg(long)]
    pub no_hand_off: bool,

    /// Print nothing per connection
    #[arg(long, short)]
    pub quiet: bool,
}

/// The settings, from the config file with the flags over them.
#[derive(Debug, Default)]
struct Settings {
    listen: Option<SocketAddr>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    ca: Option<PathBuf>,
    /// (principal, user name, pipes)
    principals: Vec<(String, Option<String>, Option<Vec<String>>)>,
    /// (pipe pattern, user name): whose server each pipe must have
    servers: Vec<(String, String)>,
}

fn usage(what: impl Into<String>) -> Failure {
    Failure::new(Status::Usage, what.into())
}

/// Reads `--config`: the keys above, anything else refused by name.
fn read_config(path: &PathBuf) -> Result<Settings, Failure> {
    npipe::remote::check_config_file(path)?;
    let text = std::fs::read_to_string(path)
        .map_err(|e| usage(format!("cannot read {}: {e}", path.display())))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e| usage(format!("{} is not valid TOML: {e}", path.display())))?;
    let bad = |key: &str, want: &str| usage(format!("{}: `{key}` must be {want}", path.display()));
    let string = |key: &str, v: &toml::Value| {
        v.as_str()
            .map(str::to_string)
            .ok_or_else(|| bad(key, "a string"))
    };
    let mut s = Settings::default();
    for (key, value) in &table {
        match key.as_str() {
            "listen" => {
                s.listen = Some(
                    string(key, value)?
                        .parse()
                        .map_err(|_| bad(key, "an ADDRESS:PORT"))?,
                )
            }
            "cert" => s.cert = Some(string(key, value)?.into()),
            "key" => s.key = Some(string(key, value)?.into()),
            "ca" => s.ca = Some(string(key, value)?.into()),
            "principals" => {
                let principals = value.as_table().ok_or_else(|| bad(key, "a table"))?;
                for (principal, entry) in principals {
                    let entry = entry
                        .as_table()
                        .ok_or_else(|| bad(principal, "a table with user and pipes"))?;
                    let mut user = None;
                    let mut pipes = None;
                    for (k, v) in entry {
                        match k.as_str() {
                            "user" => user = Some(string(k, v)?),
                            "pipes" => {
                                let list = v.as_array().ok_or_else(|| bad(k, "a list of names"))?;
                                pipes = Some(
                                    list.iter()
                                        .map(|p| string(k, p))
                                        .collect::<Result<Vec<_>, _>>()?,
                                );
                            }
                            other => {
                                return Err(bad(other, "user or pipes (no other key is known)"))
                            }
                        }
                    }
                    s.principals.push((principal.to_string(), user, pipes));
                }
            }
            "servers" => {
                let servers = value.as_table().ok_or_else(|| bad(key, "a table"))?;
                for (pattern, user) in servers {
                    s.servers
                        .push((pattern.to_string(), string(pattern, user)?));
                }
            }
            other => {
                return Err(usage(format!(
                    "{}: unknown key `{other}` (known: listen, cert, key, ca, principals, servers)",
                    path.display()
                )))
            }
        }
    }
    Ok(s)
}

fn settings(args: &Args) -> Result<Settings, Failure> {
    let mut s = match &args.config {
        Some(path) => read_config(path)?,
        None => Settings::default(),
    };
    s.listen = args.listen.or(s.listen);
    s.cert = args.cert.clone().or(s.cert);
    s.key = args.key.clone().or(s.key);
    s.ca = args.ca.clone().or(s.ca);
    for map in &args.map {
        let (principal, user) = map
            .split_once('=')
            .filter(|(p, u)| !p.is_empty() && !u.is_empty())
            .ok_or_else(|| usage(format!("--map {map:?}: expected PRINCIPAL=USER")))?;
        s.principals
            .push((principal.to_string(), Some(user.to_string()), None));
    }
    for expect in &args.expect_server {
        let (pipe, user) = expect
            .split_once('=')
            .filter(|(p, u)| !p.is_empty() && !u.is_empty())
            .ok_or_else(|| usage(format!("--expect-server {expect:?}: expected PIPE=USER")))?;
        s.servers.push((pipe.to_string(), user.to_string()));
    }
    Ok(s)
}

/// A principal as a certificate's common name can carry it in a HELLO.
fn check_principal(principal: &str) -> Result<(), Failure> {
    if principal.is_empty() || principal.len() > 256 || principal.chars().any(char::is_control) {
        return Err(usage(format!(
            "principal {:?}: a principal is a certificate's common name, 1 to 256 bytes \
             without control characters",
            super::printable(principal)
        )));
    }
    Ok(())
}

/// A pipe pattern (what a principal may reach, or whose server is
/// checked): a name as clients give it after `\\HOST\pipe\`, or a prefix
/// of names ending in `*`. `context` starts the error.
fn check_pipe_pattern(context: &str, pattern: &str) -> Result<(), Failure> {
    let bad = |why: &str| {
        usage(format!(
            "{context}: pipe {:?}: {why}",
            super::printable(pattern)
        ))
    };
    if pattern.starts_with('\\') || pattern.starts_with('/') {
        return Err(bad(
            "give the name alone, without \\\\.\\pipe\\ (`echo`, not \
                        `\\\\.\\pipe\\echo`): it never matches otherwise",
        ));
    }
    match pattern.find('*') {
        Some(at) if at + 1 != pattern.len() => Err(bad("`*` may only end a pattern")),
        Some(_) => Ok(()),
        None => npipe::PipeName::parse(pattern)
            .map(drop)
            .map_err(|e| bad(e.message())),
    }
}

fn options(s: Settings, allow_root_map: bool) -> Result<GatewayOptions, Failure> {
    let need = |v: Option<PathBuf>, flag: &str| {
        v.ok_or_else(|| {
            usage(format!(
                "the gateway needs {flag} (or `{}` in --config)",
                &flag[2..]
            ))
            .hint("make certificates with `npipe cert ca DIR` and `npipe cert issue`")
        })
    };
    let mut opts = GatewayOptions::new(
        need(s.cert, "--cert")?,
        need(s.key, "--key")?,
        need(s.ca, "--ca")?,
    );
    if let Some(listen) = s.listen {
        opts.listen(listen);
    }
    for (principal, user, pipes) in s.principals {
        check_principal(&principal)?;
        for pattern in pipes.iter().flatten() {
            check_pipe_pattern(&format!("principal {principal}"), pattern)?;
        }
        if let Some(name) = user {
            let local = LocalUser::by_name(&name).ok_or_else(|| {
                usage(format!(
                    "principal {principal}: no such local user {name:?}"
                ))
            })?;
            if local == LocalUser::ROOT && !allow_root_map {
                return Err(usage(format!(
                    "principal {principal} maps to root: its servers would act as root for it"
                ))
                .hint("map it to a user of its own, or give --allow-root-map if you mean it"));
            }
            opts.map(&principal, Some(local));
        }
        if let Some(pipes) = pipes {
            opts.only_pipes(&principal, pipes);
        }
    }
    for (pattern, name) in s.servers {
        check_pipe_pattern("--expect-server", &pattern)?;
        let user = LocalUser::by_name(&name).ok_or_else(|| {
            usage(format!(
                "--expect-server {pattern}: no such local user {name:?}"
            ))
        })?;
        opts.expect_server(&pattern, user);
    }
    Ok(opts)
}

/// Runs `npipe gateway`.
pub fn run(args: &Args) -> CmdResult {
    let me = LocalUser::current();
    if me != LocalUser::ROOT && !args.non_root {
        return Err(Failure::new(
            Status::Usage,
            format!(
                "npipe gateway runs as {}, and servers believe remote identities only from \
                 root unless told to trust another user",
                me.name().unwrap_or_else(|| "this user".into())
            ),
        )
        .hint(
            "run it as root, or start the servers with `npipe serve --trust-gateway USER` \
             (ServerOptions::trust_gateway) and give the gateway --non-root",
        ));
    }
    let mut opts = options(settings(args)?, args.allow_root_map)?;
    opts.max_handshakes(args.max_handshakes as usize);
    opts.max_connections_per_principal(args.max_connections_per_principal as usize);
    opts.hand_off(!args.no_hand_off);
    if let Some(n) = args.max_connections {
        opts.max_connections(n as usize);
    }
    super::os::raise_fd_limit();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::new(Status::Other, format!("cannot start the runtime: {e}")))?;
    let quiet = args.quiet;
    runtime.block_on(async move {
        let gateway = Gateway::bind(opts).await?;
        let addr = gateway.local_addr()?;
        println!("npipe gateway: serving this host's pipes on {addr} (TLS 1.3, client certificates required)");
        use std::io::Write;
        let _ = std::io::stdout().flush();
        let serving = gateway.serve(move |event| {
            if !quiet {
                // Pipe names and reasons come from remote clients: no
                // terminal escapes of theirs reach the operator's screen.
                println!("{}", super::printable(&event.to_string()));
            }
        });
        tokio::select! {
            result = serving => result.map_err(Failure::from),
            _ = tokio::signal::ctrl_c() => Ok(()),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn principals_and_pipe_patterns_are_checked() {
        assert!(check_principal("alice").is_ok());
        assert!(check_principal("").is_err());
        assert!(check_principal(&"a".repeat(257)).is_err());
        assert!(check_principal("ali\nce").is_err());
        assert!(check_pipe_pattern("alice", "echo").is_ok());
        assert!(check_pipe_pattern("alice", "builds\\*").is_ok());
        assert!(check_pipe_pattern("alice", "*").is_ok());
        let prefixed = check_pipe_pattern("alice", "\\\\.\\pipe\\echo").unwrap_err();
        assert!(prefixed.to_string().contains("without"), "{prefixed}");
        assert!(check_pipe_pattern("alice", "bu*ilds").is_err());
        assert!(check_pipe_pattern("alice", "").is_err());
    }

    /// `[servers]` in the config and `--expect-server` become expected
    /// servers: a pattern and a user each, both checked.
    #[test]
    fn expected_servers_come_from_the_config_and_the_flags() {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        let dir = std::env::temp_dir().join(format!("npipe-gw-servers-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::DirBuilder::new().mode(0o700).create(&dir).unwrap();
        let path = dir.join("gw.toml");
        let mut file = std::fs::OpenOptions::new()
            .create_new(true)
            .write(true)
            .mode(0o600)
            .open(&path)
            .unwrap();
        std::io::Write::write_all(&mut file, b"[servers]\n'builds\\*' = 'root'\n").unwrap();
        let from_file = read_config(&path).unwrap();
        assert_eq!(
            from_file.servers,
            [("builds\\*".to_string(), "root".to_string())]
        );
        std::fs::remove_dir_all(&dir).unwrap();

        let settings = |expect: &str| Settings {
            cert: Some("c".into()),
            key: Some("k".into()),
            ca: Some("a".into()),
            servers: vec![(
                expect.split('=').next().unwrap().into(),
                expect.split('=').nth(1).unwrap().into(),
            )],
            ..Settings::default()
        };
        assert!(options(settings("echo=root"), false).is_ok());
        let unknown = options(settings("echo=no-such-user-anywhere"), false).unwrap_err();
        assert!(
            unknown.to_string().contains("no such local user"),
            "{unknown}"
        );
        let bad = options(settings("\\\\.\\pipe\\echo=root"), false).unwrap_err();
        assert!(bad.to_string().contains("--expect-server"), "{bad}");
    }
}
