//! The commands, one module each, and the small helpers they share.

pub mod call;
#[cfg(target_os = "linux")]
pub mod cert;
pub mod client;
pub mod demo;
pub mod exec;
pub mod framing;
#[cfg(target_os = "linux")]
pub mod gateway;
pub mod info;
pub mod list;
pub mod os;
pub mod serve;
#[cfg(target_os = "linux")]
pub mod setup;
pub mod wait;

use npipe::{Direction, PipeType};

use crate::exit::Failure;

/// What every command returns.
pub type CmdResult = Result<(), Failure>;

/// `message` or `byte`.
pub fn type_name(t: PipeType) -> &'static str {
    match t {
        PipeType::Message => "message",
        PipeType::Byte => "byte",
    }
}

/// `inbound`, `outbound` or `duplex` (seen from the server, as on Windows).
pub fn direction_name(d: Direction) -> &'static str {
    match d {
        Direction::Inbound => "inbound",
        Direction::Outbound => "outbound",
        Direction::Duplex => "duplex",
    }
}

/// `cur/max` or `cur/unlimited`.
#[cfg(unix)]
pub fn instances_text(cur: u32, max: Option<u32>) -> String {
    match max {
        Some(max) => format!("{cur}/{max}"),
        None => format!("{cur}/unlimited"),
    }
}

/// A user name, or `uid N` when the user database has none.
#[cfg(unix)]
pub fn user_text(name: Option<&str>, uid: u32) -> String {
    match name {
        Some(name) => name.to_string(),
        None => format!("uid {uid}"),
    }
}

/// Bytes as text for people: invalid UTF-8 becomes U+FFFD.
pub fn lossy(bytes: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use npipe::Wait;
    use std::time::Duration;

    #[test]
    fn waits_parse() {
        let wait = |s: &str| s.parse::<TimeoutArg>().map(TimeoutArg::wait);
        assert_eq!(wait("forever"), Ok(Wait::Forever));
        assert_eq!(wait("Forever"), Ok(Wait::Forever));
        assert_eq!(wait("0"), Ok(Wait::NoWait));
        assert_eq!(wait("250"), Ok(Wait::Timeout(Duration::from_millis(250))));
        assert!(wait("soon").is_err());
        assert_eq!("250".parse::<TimeoutArg>().unwrap().to_string(), "250 ms");
    }

    #[cfg(unix)]
    #[test]
    fn instances_render() {
        assert_eq!(instances_text(1, Some(4)), "1/4");
        assert_eq!(instances_text(0, None), "0/unlimited");
    }
}

/// A wait on the command line: milliseconds (0: none) or `forever`, the
/// `nTimeOut` of `WaitNamedPipe` and `CallNamedPipe`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeoutArg {
    /// This many milliseconds; 0 does not wait.
    Ms(u64),
    /// No limit (`NMPWAIT_WAIT_FOREVER`).
    Forever,
}

impl TimeoutArg {
    /// The library's wait.
    pub fn wait(self) -> npipe::Wait {
        match self {
            TimeoutArg::Ms(0) => npipe::Wait::NoWait,
            TimeoutArg::Ms(ms) => npipe::Wait::Timeout(std::time::Duration::from_millis(ms)),
            TimeoutArg::Forever => npipe::Wait::Forever,
        }
    }

    /// The limit as a duration; `None` for ever.
    pub fn limit(self) -> Option<std::time::Duration> {
        match self {
            TimeoutArg::Ms(ms) => Some(std::time::Duration::from_millis(ms)),
            TimeoutArg::Forever => None,
        }
    }
}

impl std::str::FromStr for TimeoutArg {
    type Err = String;
    fn from_str(s: &str) -> Result<TimeoutArg, String> {
        if s.eq_ignore_ascii_case("forever") {
            return Ok(TimeoutArg::Forever);
        }
        s.parse()
            .map(TimeoutArg::Ms)
            .map_err(|_| format!("expected milliseconds or `forever`, got `{s}`"))
    }
}

impl std::fmt::Display for TimeoutArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TimeoutArg::Ms(ms) => write!(f, "{ms} ms"),
            TimeoutArg::Forever => f.write_str("forever"),
        }
    }
}

/// The hint for a client refused access to `name`: a server of another
/// user than `--expect-server-user` named (someone may be squatting the
/// name), or the pipe's direction or security; `what` says what was asked.
pub fn access_hint(err: &npipe::Error, name: &str, what: &str) -> Option<String> {
    if err.code() != npipe::ErrorCode::AccessDenied {
        return None;
    }
    if err.message().contains("not by the expected") {
        return Some(format!(
            "the server of {name} is not the user you expected: another user may hold the \
             name; `npipe info {name}` shows who serves it"
        ));
    }
    Some(format!(
        "{what}, or the pipe's security refuses you; `npipe info {name}` shows its direction \
         and owner"
    ))
}

/// What a client reveals and demands: shared by `client` and `call`.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientSecurity {
    /// Refuse the pipe unless its server runs as USER (a name or a uid)
    ///
    /// Checked from the kernel before anything is sent: the defence against
    /// another user squatting the pipe's name. Fails with ERROR_ACCESS_DENIED.
    #[arg(verbatim_doc_comment, long, value_name = "USER")]
    pub expect_server_user: Option<String>,

    /// What the server may do with your identity
    #[arg(long, value_enum, value_name = "LEVEL", default_value_t = LevelArg::Impersonation)]
    pub impersonation_level: LevelArg,

    /// Remote pipes (\\HOST\pipe\NAME): your certificate, shown to the
    /// gateway (default: $NPIPE_CERT)
    #[arg(long, value_name = "FILE", requires = "key")]
    pub cert: Option<std::path::PathBuf>,

    /// Remote pipes: your certificate's private key (default: $NPIPE_KEY)
    #[arg(long, value_name = "FILE", requires = "cert")]
    pub key: Option<std::path::PathBuf>,

    /// Remote pipes: the CA that issued the gateway's certificate
    /// (default: $NPIPE_CA)
    #[arg(long, value_name = "FILE")]
    pub ca: Option<std::path::PathBuf>,

    /// Remote pipes: the gateway's port (default: $NPIPE_GATEWAY_PORT, else
    /// 4455)
    #[arg(long, value_name = "PORT")]
    pub gateway_port: Option<u16>,
}

/// `SECURITY_IDENTIFICATION` or `SECURITY_IMPERSONATION`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LevelArg {
    /// The server may learn who you are, but not act as you.
    Identification,
    /// The server may act as you (the Windows default).
    Impersonation,
}

impl ClientSecurity {
    /// Applies these settings to client options.
    pub fn apply(&self, opts: &mut npipe::ClientOptions) -> Result<(), Failure> {
        if let Some(user) = &self.expect_server_user {
            let server = npipe::LocalUser::by_name(user).ok_or_else(|| {
                Failure::new(
                    crate::exit::Status::Usage,
                    format!("--expect-server-user: no such user {user:?}"),
                )
            })?;
            opts.expect_server_user(server);
        }
        opts.impersonation_level(match self.impersonation_level {
            LevelArg::Identification => npipe::ImpersonationLevel::Identification,
            LevelArg::Impersonation => npipe::ImpersonationLevel::Impersonation,
        });
        self.apply_remote(opts)
    }

    /// `--cert`, `--key`, `--ca`, `--gateway-port`: npipe's remote pipes.
    #[cfg(target_os = "linux")]
    fn apply_remote(&self, opts: &mut npipe::ClientOptions) -> Result<(), Failure> {
        if let (Some(cert), Some(key)) = (&self.cert, &self.key) {
            opts.remote_certificate(cert, key);
        }
        if let Some(ca) = &self.ca {
            opts.remote_ca(ca);
        }
        if let Some(port) = self.gateway_port {
            opts.gateway_port(port);
        }
        Ok(())
    }

    /// Windows reaches `\\HOST\pipe\NAME` over SMB with the user's logon:
    /// the gateway's options have nothing to do there.
    #[cfg(not(target_os = "linux"))]
    fn apply_remote(&self, _: &mut npipe::ClientOptions) -> Result<(), Failure> {
        if self.cert.is_some() || self.ca.is_some() || self.gateway_port.is_some() {
            return Err(Failure::new(
                crate::exit::Status::Usage,
                "--cert, --key, --ca and --gateway-port are for npipe's gateway on Linux; \
                 on Windows \\\\HOST\\pipe\\NAME goes over SMB with your logon",
            ));
        }
        Ok(())
    }
}

/// Text a peer or another user chose (a pipe's name, a server's reason, a
/// file name in the shared namespace), made safe for a terminal: control
/// characters are shown escaped, so nobody can forge table rows with a
/// newline or move the cursor with an escape sequence.
pub(crate) fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(text);
    }
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect::<String>()
        .into()
}

#[cfg(test)]
mod printable_tests {
    #[test]
    fn control_characters_are_shown_escaped() {
        assert_eq!(super::printable("plain name é"), "plain name é");
        assert_eq!(
            super::printable("evil\n12345 root\u{1b}[2J"),
            "evil\\n12345 root\\u{1b}[2J"
        );
    }
}
