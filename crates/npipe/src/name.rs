//! Pipe names: `\\.\pipe\NAME`, `\\HOST\pipe\NAME` or a bare `NAME`.
//!
//! As on Windows, names are case-insensitive and at most 256 characters long,
//! counted as Windows counts them: the whole `\\.\pipe\NAME`, so NAME has at
//! most 247. NAME may be hierarchical (`\\.\pipe\sql\query`,
//! `\\.\pipe\MSSQL$SQLEXPRESS\sql\query`): after `\\HOST\pipe\` every
//! character but NUL belongs to it. `/` is accepted wherever `\` is, so
//! `//./pipe/sql/query` names the same pipe. A bare NAME without the prefix
//! is npipe's convenience for a local pipe. The local socket file a name maps
//! to is never longer than the kernel's 108-byte `sun_path`: long or unusual
//! names (hierarchical ones included) map to a hashed file name, and the
//! server keeps the real name to answer listings.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, ErrorCode, Result};

/// The longest pipe name Windows accepts, in characters, counting the whole
/// `\\.\pipe\NAME` (so NAME itself has at most 247).
pub const MAX_NAME_CHARS: usize = 256;

/// `\\.\pipe\`, which Windows counts in a name's length.
const LOCAL_PREFIX_CHARS: usize = 9;

/// The longest host name accepted in `\\HOST\pipe\NAME`.
const MAX_HOST_CHARS: usize = 255;

/// Names that are at most this long and use only safe characters keep their
/// own (lower-cased) file name in the namespace; others are hashed.
const MAX_DIRECT_FILE_NAME: usize = 64;

/// A parsed, validated pipe name.
///
/// ```
/// use npipe::PipeName;
///
/// let a: PipeName = r"\\.\pipe\MyPipe".parse()?;
/// let b: PipeName = "mypipe".parse()?;
/// assert_eq!(a, b); // case-insensitive, and a bare name is local
/// assert!(a.is_local());
/// assert_eq!(a.to_string(), r"\\.\pipe\MyPipe");
///
/// let remote: PipeName = "//server/pipe/echo".parse()?;
/// assert_eq!(remote.host(), Some("server"));
/// # Ok::<(), npipe::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct PipeName {
    host: Option<String>,
    name: String,
    canonical: String,
}

impl PipeName {
    /// Parses and validates a pipe name.
    pub fn parse(input: &str) -> Result<PipeName> {
        let normalized: std::borrow::Cow<'_, str> = if input.contains('/') {
            input.replace('/', "\\").into()
        } else {
            input.into()
        };
        let (host, name) = if let Some(rest) = normalized.strip_prefix("\\\\") {
            let mut parts = rest.splitn(3, '\\');
            let host = parts.next().unwrap_or_default();
            let pipe = parts.next();
            let name = parts.next();
            match (pipe, name) {
                (Some(p), Some(n)) if p.eq_ignore_ascii_case("pipe") => (host, n),
                _ => {
                    return Err(invalid(
                        input,
                        r"expected \\.\pipe\NAME, \\HOST\pipe\NAME or a bare NAME",
                    ))
                }
            }
        } else if normalized.starts_with('\\') {
            return Err(invalid(
                input,
                r"a name that starts with \ must be \\.\pipe\NAME or \\HOST\pipe\NAME",
            ));
        } else {
            (".", &*normalized)
        };
        validate_host(input, host)?;
        validate_name(input, name)?;
        Ok(PipeName {
            host: (host != ".").then(|| host.to_ascii_lowercase()),
            canonical: canonical(name),
            name: name.to_string(),
        })
    }

    /// The name of a local pipe.
    pub fn local(name: &str) -> Result<PipeName> {
        validate_name(name, name)?;
        Ok(PipeName {
            host: None,
            canonical: canonical(name),
            name: name.to_string(),
        })
    }

    /// The pipe's own name (the `NAME` part), as written.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The name in canonical (lower-case) form, what comparisons use.
    pub fn canonical(&self) -> &str {
        &self.canonical
    }

    /// The remote host, or `None` for a local pipe (`\\.\pipe\...`).
    pub fn host(&self) -> Option<&str> {
        self.host.as_deref()
    }

    /// Whether this names a pipe on this machine.
    pub fn is_local(&self) -> bool {
        self.host.is_none()
    }

    /// The file name of this pipe's socket inside the namespace directory.
    pub fn file_name(&self) -> String {
        file_name_for(&self.canonical)
    }
}

/// Maps a canonical name to the socket's file name: the name itself when it is
/// short and plain, else `~` and a 128-bit FNV-1a hash (a character no plain
/// name uses, so the two kinds never collide). Hash collisions between two
/// long names are caught by the handshake, which carries the full name.
pub(crate) fn file_name_for(canonical: &str) -> String {
    let plain = canonical.len() <= MAX_DIRECT_FILE_NAME
        && !canonical.starts_with('.')
        && canonical
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-+@=,".contains(&b));
    if plain {
        canonical.to_string()
    } else {
        format!("~{:032x}", fnv1a_128(canonical.as_bytes()))
    }
}

fn fnv1a_128(bytes: &[u8]) -> u128 {
    const OFFSET: u128 = 0x6c62272e07bb014262b821756295c58d;
    const PRIME: u128 = 0x0000000001000000000000000000013B;
    bytes
        .iter()
        .fold(OFFSET, |h, &b| (h ^ u128::from(b)).wrapping_mul(PRIME))
}

fn invalid(input: &str, why: &str) -> Error {
    Error::new(
        ErrorCode::InvalidName,
        format!("invalid pipe name {input:?}: {why}"),
    )
}

fn validate_host(input: &str, host: &str) -> Result<()> {
    if host.is_empty() {
        return Err(invalid(input, "the host part is empty"));
    }
    if host.chars().count() > MAX_HOST_CHARS {
        return Err(invalid(
            input,
            "the host part is longer than 255 characters",
        ));
    }
    let ok = host
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-._:[]".contains(c));
    if !ok {
        return Err(invalid(
            input,
            "the host may hold only letters, digits and - . _ : [ ]",
        ));
    }
    Ok(())
}

fn validate_name(input: &str, name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(invalid(input, "the pipe name is empty"));
    }
    let chars = LOCAL_PREFIX_CHARS + name.chars().count();
    if chars > MAX_NAME_CHARS {
        return Err(invalid(
            input,
            &format!(
                r"\\.\pipe\ and the name make {chars} characters; Windows allows at most {MAX_NAME_CHARS}"
            ),
        ));
    }
    if name.contains('\0') {
        return Err(invalid(input, "a pipe name may not contain NUL"));
    }
    Ok(())
}

impl PartialEq for PipeName {
    fn eq(&self, other: &Self) -> bool {
        self.host == other.host && self.canonical == other.canonical
    }
}

impl Eq for PipeName {}

impl std::hash::Hash for PipeName {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.host.hash(state);
        self.canonical.hash(state);
    }
}

impl fmt::Display for PipeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            r"\\{}\pipe\{}",
            self.host.as_deref().unwrap_or("."),
            self.name
        )
    }
}

impl FromStr for PipeName {
    type Err = Error;
    fn from_str(s: &str) -> Result<PipeName> {
        PipeName::parse(s)
    }
}

impl TryFrom<&str> for PipeName {
    type Error = Error;
    fn try_from(s: &str) -> Result<PipeName> {
        PipeName::parse(s)
    }
}

impl TryFrom<&String> for PipeName {
    type Error = Error;
    fn try_from(s: &String) -> Result<PipeName> {
        PipeName::parse(s)
    }
}

impl TryFrom<String> for PipeName {
    type Error = Error;
    fn try_from(s: String) -> Result<PipeName> {
        PipeName::parse(&s)
    }
}

impl TryFrom<&PipeName> for PipeName {
    type Error = Error;
    fn try_from(n: &PipeName) -> Result<PipeName> {
        Ok(n.clone())
    }
}

/// A name's canonical form: lower case (ASCII's shortcut where it is all
/// ASCII, as names usually are: this runs on every open).
fn canonical(name: &str) -> String {
    if name.is_ascii() {
        name.to_ascii_lowercase()
    } else {
        name.to_lowercase()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_are_equivalent() {
        let forms = [
            r"\\.\pipe\Echo",
            r"\\.\PIPE\echo",
            "//./pipe/ECHO",
            r"/\./pipe\echo",
            "echo",
        ];
        let first = PipeName::parse(forms[0]).unwrap();
        for f in forms {
            let n = PipeName::parse(f).unwrap();
            assert_eq!(n, first, "{f}");
            assert!(n.is_local());
            assert_eq!(n.file_name(), "echo");
        }
    }

    #[test]
    fn remote_names() {
        let n = PipeName::parse(r"\\Server1\pipe\x").unwrap();
        assert_eq!(n.host(), Some("server1"));
        assert!(!n.is_local());
        assert_eq!(n.to_string(), r"\\server1\pipe\x");
    }

    /// Windows accepts backslashes after `\\.\pipe\`, and programs rely on
    /// them (`\\.\pipe\sql\query`, `\\.\pipe\MSSQL$SQLEXPRESS\sql\query`,
    /// `\\.\pipe\LOCAL\x`).
    #[test]
    fn hierarchical_names() {
        let n = PipeName::parse(r"\\.\pipe\MSSQL$SQLEXPRESS\sql\query").unwrap();
        assert_eq!(n.name(), r"MSSQL$SQLEXPRESS\sql\query");
        assert_eq!(n.to_string(), r"\\.\pipe\MSSQL$SQLEXPRESS\sql\query");
        for same in [
            "//./pipe/mssql$sqlexpress/SQL/query",
            r"mssql$sqlexpress\sql\query",
        ] {
            assert_eq!(PipeName::parse(same).unwrap(), n, "{same}");
        }
        assert_ne!(
            n,
            PipeName::parse(r"\\.\pipe\mssql$sqlexpress\sql").unwrap()
        );
        let f = n.file_name();
        assert!(f.starts_with('~') && !f.contains('\\'), "{f}");
        let remote = PipeName::parse(r"\\db1\pipe\sql\query").unwrap();
        assert_eq!((remote.host(), remote.name()), (Some("db1"), r"sql\query"));
    }

    #[test]
    fn rejects_bad_names() {
        for bad in [
            "",
            r"\\.\pipe\",
            r"\\.\pipe",
            r"\\.\notpipe\x",
            r"\\\pipe\x",
            r"\pipe\x",
            "nul\0byte",
            r"\\bad host\pipe\x",
        ] {
            let e = PipeName::parse(bad).unwrap_err();
            assert_eq!(e.code(), ErrorCode::InvalidName, "{bad:?}");
        }
    }

    /// Windows counts the whole name, `\\.\pipe\` included, against 256
    /// characters.
    #[test]
    fn length_limit_is_in_characters_of_the_whole_name() {
        let ok = "é".repeat(247);
        assert!(PipeName::parse(&ok).is_ok());
        assert!(PipeName::parse(&format!(r"\\.\pipe\{ok}")).is_ok());
        let long = "é".repeat(248);
        let e = PipeName::parse(&long).unwrap_err();
        assert!(e.message().contains("256"), "{e}");
    }

    #[test]
    fn long_and_odd_names_hash_to_short_files() {
        let long = PipeName::parse(&"x".repeat(247)).unwrap();
        let f = long.file_name();
        assert!(f.starts_with('~') && f.len() == 33, "{f}");
        assert_eq!(PipeName::parse("has space").unwrap().file_name().len(), 33);
        assert_eq!(PipeName::parse(".hidden").unwrap().file_name().len(), 33);
        assert_ne!(
            PipeName::parse("a b").unwrap().file_name(),
            PipeName::parse("a c").unwrap().file_name()
        );
        // case-insensitive for non-ASCII too
        assert_eq!(
            PipeName::parse("Ünïcode").unwrap().file_name(),
            PipeName::parse("üNÏCODE").unwrap().file_name()
        );
    }
}
