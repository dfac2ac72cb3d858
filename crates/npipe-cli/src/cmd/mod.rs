//! The commands, one module each, and the small helpers they share.

pub mod call;
pub mod client;
pub mod demo;
pub mod info;
pub mod list;
pub mod serve;
pub mod setup;

use std::time::Duration;

use npipe::{Direction, PipeType, Wait};

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
pub fn instances_text(cur: u32, max: Option<u32>) -> String {
    match max {
        Some(max) => format!("{cur}/{max}"),
        None => format!("{cur}/unlimited"),
    }
}

/// A user name, or `uid N` when the user database has none.
pub fn user_text(name: Option<&str>, uid: u32) -> String {
    match name {
        Some(name) => name.to_string(),
        None => format!("uid {uid}"),
    }
}

/// Parses a wait: milliseconds, or `forever`.
pub fn parse_wait(s: &str) -> Result<Wait, String> {
    if s.eq_ignore_ascii_case("forever") {
        return Ok(Wait::Forever);
    }
    let ms: u64 = s
        .parse()
        .map_err(|_| format!("expected milliseconds or `forever`, got `{s}`"))?;
    Ok(if ms == 0 {
        Wait::NoWait
    } else {
        Wait::Timeout(Duration::from_millis(ms))
    })
}

/// Bytes as text for people: invalid UTF-8 becomes U+FFFD.
pub fn lossy(bytes: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_parse() {
        assert_eq!(parse_wait("forever"), Ok(Wait::Forever));
        assert_eq!(parse_wait("0"), Ok(Wait::NoWait));
        assert_eq!(
            parse_wait("250"),
            Ok(Wait::Timeout(Duration::from_millis(250)))
        );
        assert!(parse_wait("soon").is_err());
    }

    #[test]
    fn instances_render() {
        assert_eq!(instances_text(1, Some(4)), "1/4");
        assert_eq!(instances_text(0, None), "0/unlimited");
    }
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
        Ok(())
    }
}
