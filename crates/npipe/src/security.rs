//! Security descriptors: who may connect to a pipe, and for what.
//!
//! A [`SecurityDescriptor`] is Windows' DACL for a pipe: ordered allow and
//! deny entries for a user, a group, everyone, the pipe's owner, or a remote
//! principal, each granting or denying read, write or both (full). It is
//! checked when a client connects, against the client's credentials from the
//! kernel (`SO_PEERCRED`, `SO_PEERGROUPS`) and the access it asked for; a
//! matching deny wins over any allow. A refused client gets *access denied*
//! (5) and the application's `accept` never sees it.
//!
//! The text form, for command lines and configuration files:
//!
//! ```text
//! descriptor := entry (";" entry)*          whitespace around tokens is ignored
//! entry      := ("allow" | "deny") " " trustee "=" rights
//!             | "owner" " " user            (the owner; default: the server's user)
//! trustee    := "user:" user | "group:" group | "everyone" | "owner" | "network"
//!             | "remote:" principal         ("network" = "remote:*", Windows' NU)
//! user       := a user name or a numeric uid
//! group      := a group name or a numeric gid
//! rights     := "r" | "w" | "rw" | "full"   ("full" = "rw")
//! ```
//!
//! For example `allow owner=full; allow user:alice=rw; deny group:guests=w;
//! allow everyone=r`. A common subset of Windows SDDL is read too:
//! `D:(A;;GA;;;OW)(A;;GR;;;WD)` with the aces `A` (allow) and `D` (deny), the
//! rights `GA`/`FA` (full), `GR`/`FR` (read), `GW`/`FW` (write), `GRGW`, and
//! the trustees `OW` (owner), `WD` (everyone), `SY`/`BA` (root),
//! `AU`/`IU` (everyone local), `NU` (every remote client).
//!
//! ```
//! use npipe::{SecurityDescriptor, Trustee, Rights};
//!
//! let sd: SecurityDescriptor = "allow owner=full; deny user:65534=w; allow everyone=r".parse()?;
//! assert_eq!(sd, SecurityDescriptor::empty()
//!     .allow(Trustee::Owner, Rights::FULL)
//!     .deny(Trustee::User(65534.into()), Rights::WRITE)
//!     .allow(Trustee::Everyone, Rights::READ));
//! # Ok::<(), npipe::Error>(())
//! ```

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, ErrorCode, Result};
use crate::identity::{Identity, LocalGroup, LocalUser, RemotePrincipal};
use crate::types::Access;

/// Rights on a pipe: read, write, or both (full control).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rights(u8);

impl Rights {
    /// `GENERIC_READ`: read from the pipe.
    pub const READ: Rights = Rights(1);
    /// `GENERIC_WRITE`: write to the pipe.
    pub const WRITE: Rights = Rights(2);
    /// `GENERIC_ALL`: read and write.
    pub const FULL: Rights = Rights(3);

    /// Whether every right in `other` is in `self`.
    pub fn contains(self, other: Rights) -> bool {
        self.0 & other.0 == other.0
    }

    /// The rights a client's access needs.
    pub fn for_access(access: Access) -> Rights {
        match access {
            Access::Read => Rights::READ,
            Access::Write => Rights::WRITE,
            Access::ReadWrite => Rights::FULL,
        }
    }

    fn name(self) -> &'static str {
        match self.0 {
            1 => "r",
            2 => "w",
            _ => "full",
        }
    }
}

/// Whom an entry is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Trustee {
    /// A local user.
    User(LocalUser),
    /// A local group: matches a client whose effective group or any
    /// supplementary group is this one.
    Group(LocalGroup),
    /// Every client, local or remote.
    Everyone,
    /// The pipe's owner (by default the user the server runs as).
    Owner,
    /// A remote client with this principal (its certificate's name), as the
    /// gateway authenticated it; `*` matches every remote client.
    Remote(String),
}

/// An entry about one identity: a local user, or one remote principal.
///
/// ```
/// use npipe::{Identity, LocalUser, RemotePrincipal, Trustee};
///
/// assert_eq!(Trustee::from(Identity::Local(LocalUser::ROOT)), Trustee::User(LocalUser::ROOT));
/// assert_eq!(
///     Trustee::from(Identity::Remote(RemotePrincipal::new("agent-7"))),
///     Trustee::Remote("agent-7".into())
/// );
/// ```
impl From<Identity> for Trustee {
    fn from(who: Identity) -> Trustee {
        match who {
            Identity::Local(user) => Trustee::User(user),
            Identity::Remote(p) => Trustee::Remote(p.as_str().to_string()),
        }
    }
}

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AceKind {
    /// `ACCESS_ALLOWED_ACE`.
    Allow,
    /// `ACCESS_DENIED_ACE`: wins over any allow.
    Deny,
}

/// One entry of a descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Ace {
    /// Allow or deny.
    pub kind: AceKind,
    /// Whom it is about.
    pub trustee: Trustee,
    /// Which rights.
    pub rights: Rights,
}

/// Who is asking, as the kernel (or the trusted gateway) says: what a
/// descriptor's entries are matched against.
///
/// ```
/// use npipe::{LocalGroup, LocalUser, Rights, SecurityDescriptor, Subject, Trustee};
///
/// let staff = LocalGroup::by_name("0").unwrap();
/// let sd = SecurityDescriptor::empty().allow(Trustee::Group(staff), Rights::READ);
/// let who = Subject::local(LocalUser::by_name("65534").unwrap(), staff, []);
/// assert_eq!(sd.rights_of(&who, LocalUser::ROOT), Rights::READ);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Subject {
    /// Who it is.
    pub identity: Identity,
    /// A local user's groups, the effective one first, then the
    /// supplementary ones; for a remote principal, those of the local user
    /// its gateway mapped it to (`acts_as`), else none.
    pub groups: Vec<LocalGroup>,
    /// For a remote principal, the local user its gateway mapped it to: the
    /// user the server acts as for it. Deny entries naming that user, or
    /// one of its `groups`, reach the principal too (coming through a
    /// gateway must not get a user past a deny); allow entries do not (a
    /// remote client is not the local user, and is granted as a principal).
    pub acts_as: Option<LocalUser>,
}

impl Subject {
    /// A local user with their effective group and supplementary groups.
    pub fn local(
        user: LocalUser,
        group: LocalGroup,
        supplementary: impl IntoIterator<Item = LocalGroup>,
    ) -> Subject {
        let mut groups = vec![group];
        groups.extend(supplementary);
        Subject {
            identity: Identity::Local(user),
            groups,
            acts_as: None,
        }
    }

    /// A remote client, by the principal its gateway authenticated.
    pub fn remote(principal: RemotePrincipal) -> Subject {
        Subject {
            identity: Identity::Remote(principal),
            groups: Vec::new(),
            acts_as: None,
        }
    }

    /// A remote client its gateway mapped to a local user with these
    /// groups: granted as the principal, denied as the principal or as
    /// that user.
    pub fn remote_as(
        principal: RemotePrincipal,
        user: LocalUser,
        groups: impl IntoIterator<Item = LocalGroup>,
    ) -> Subject {
        Subject {
            identity: Identity::Remote(principal),
            groups: groups.into_iter().collect(),
            acts_as: Some(user),
        }
    }
}

/// A pipe's security descriptor: an owner and ordered allow/deny entries.
///
/// ```
/// use npipe::{ServerOptions, SecurityDescriptor};
///
/// // Only the user this server runs as may connect (as .NET's CurrentUserOnly).
/// let name = format!("doc-sd-{}", std::process::id());
/// let listener = ServerOptions::new()
///     .security(SecurityDescriptor::current_user_only())
///     .create(&name)?;
/// # drop(listener);
/// # Ok::<(), npipe::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct SecurityDescriptor {
    owner: Option<LocalUser>,
    entries: Vec<Ace>,
    /// The text it was parsed from, which `Display` echoes (names and
    /// rights as the user wrote them: `group:staff=rw`, not
    /// `group:50=full`); any change made after parsing forgets it.
    text: Option<String>,
}

/// Two descriptors are equal when they grant the same, whatever text they
/// came from.
impl PartialEq for SecurityDescriptor {
    fn eq(&self, other: &SecurityDescriptor) -> bool {
        (self.owner, &self.entries) == (other.owner, &other.entries)
    }
}

impl Eq for SecurityDescriptor {}

impl std::hash::Hash for SecurityDescriptor {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.owner.hash(state);
        self.entries.hash(state);
    }
}

impl Default for SecurityDescriptor {
    fn default() -> Self {
        SecurityDescriptor::default_for_pipes()
    }
}

impl SecurityDescriptor {
    /// No entries: nobody may connect (not even the owner) until entries are
    /// added.
    pub fn empty() -> SecurityDescriptor {
        SecurityDescriptor {
            owner: None,
            entries: Vec::new(),
            text: None,
        }
    }

    /// Windows' default for pipes: full control to the owner and to root
    /// (`LocalSystem`, `Administrators`), read to everyone.
    pub fn default_for_pipes() -> SecurityDescriptor {
        SecurityDescriptor::empty()
            .allow(Trustee::Owner, Rights::FULL)
            .allow(Trustee::User(LocalUser::ROOT), Rights::FULL)
            .allow(Trustee::Everyone, Rights::READ)
    }

    /// Only the owner (the server's user), as .NET's
    /// `PipeOptions.CurrentUserOnly`.
    pub fn current_user_only() -> SecurityDescriptor {
        SecurityDescriptor::empty().allow(Trustee::Owner, Rights::FULL)
    }

    /// Adds an allow entry.
    pub fn allow(mut self, trustee: Trustee, rights: Rights) -> SecurityDescriptor {
        self.text = None;
        self.entries.push(Ace {
            kind: AceKind::Allow,
            trustee,
            rights,
        });
        self
    }

    /// Adds a deny entry.
    pub fn deny(mut self, trustee: Trustee, rights: Rights) -> SecurityDescriptor {
        self.text = None;
        self.entries.push(Ace {
            kind: AceKind::Deny,
            trustee,
            rights,
        });
        self
    }

    /// Sets the owner (default: the user the server runs as).
    pub fn owner(mut self, user: impl Into<LocalUser>) -> SecurityDescriptor {
        self.text = None;
        self.owner = Some(user.into());
        self
    }

    /// The entries, in order.
    pub fn entries(&self) -> &[Ace] {
        &self.entries
    }

    /// The owner, given the server's own user for the default.
    pub fn owner_of(&self, server: LocalUser) -> LocalUser {
        self.owner.unwrap_or(server)
    }

    /// Whether any entry names a group (so the server needs the client's
    /// supplementary groups).
    pub fn mentions_groups(&self) -> bool {
        self.entries
            .iter()
            .any(|a| matches!(a.trustee, Trustee::Group(_)))
    }

    fn matches(trustee: &Trustee, who: &Subject, owner: LocalUser, kind: AceKind) -> bool {
        // A deny reaches a remote principal through its mapped user too.
        let user = match kind {
            AceKind::Deny => who.identity.local_user().or(who.acts_as),
            AceKind::Allow => who.identity.local_user(),
        };
        match trustee {
            Trustee::Everyone => true,
            Trustee::User(u) => user == Some(*u),
            Trustee::Owner => user == Some(owner),
            Trustee::Group(group) => user.is_some() && who.groups.contains(group),
            Trustee::Remote(p) => who
                .identity
                .remote_principal()
                .is_some_and(|r| p == "*" || r.as_str().eq_ignore_ascii_case(p)),
        }
    }

    /// The rights `who` holds: what matching allows grant, less what matching
    /// denies take away (denies win, whatever the order).
    pub fn rights_of(&self, who: &Subject, server: LocalUser) -> Rights {
        let owner = self.owner_of(server);
        let (mut allowed, mut denied) = (0u8, 0u8);
        for ace in &self.entries {
            if Self::matches(&ace.trustee, who, owner, ace.kind) {
                match ace.kind {
                    AceKind::Allow => allowed |= ace.rights.0,
                    AceKind::Deny => denied |= ace.rights.0,
                }
            }
        }
        Rights(allowed & !denied)
    }

    /// Checks that `who` may have `access`; `Err` is *access denied* with a
    /// reason for the client.
    pub fn check(&self, who: &Subject, access: Access, server: LocalUser) -> Result<()> {
        let held = self.rights_of(who, server);
        let needed = Rights::for_access(access);
        if held.contains(needed) {
            return Ok(());
        }
        let asked = match access {
            Access::Read => "read",
            Access::Write => "write",
            Access::ReadWrite => "read and write",
        };
        let who_text = match &who.identity {
            Identity::Remote(p) => format!("remote client {p}"),
            Identity::Local(user) => format!("uid {}", user.0),
        };
        Err(Error::new(
            ErrorCode::AccessDenied,
            format!("the pipe's security descriptor does not let {who_text} {asked}"),
        ))
    }

    /// The socket file's mode, a second fence behind the descriptor: owner
    /// read-write always, and group and others read-write only if the
    /// descriptor can grant anything to anyone but the owner and root
    /// (connecting needs write permission on the socket file, so the mode can
    /// only keep out those the descriptor grants nothing).
    pub fn socket_mode(&self, server: LocalUser) -> u32 {
        // The socket file belongs to the server's user (who bound it), not
        // to the descriptor's owner if that was set to someone else.
        let owner = self.owner_of(server);
        let outsider = |user: LocalUser| user != server && user != LocalUser::ROOT;
        let others = self.entries.iter().any(|a| {
            a.kind == AceKind::Allow
                && match a.trustee {
                    Trustee::User(user) => outsider(user),
                    Trustee::Owner => outsider(owner),
                    Trustee::Everyone | Trustee::Group(_) | Trustee::Remote(_) => true,
                }
        });
        if others {
            0o666
        } else {
            0o600
        }
    }

    /// Parses the text form, or the SDDL subset (see the module docs).
    pub fn parse(text: &str) -> Result<SecurityDescriptor> {
        let text = text.trim();
        let mut sd = if text.starts_with("D:") || text.starts_with("O:") {
            parse_sddl(text)?
        } else {
            Self::parse_entries(text)?
        };
        sd.text = Some(text.to_string());
        Ok(sd)
    }

    fn parse_entries(text: &str) -> Result<SecurityDescriptor> {
        let mut sd = SecurityDescriptor::empty();
        for entry in text.split(';').map(str::trim).filter(|e| !e.is_empty()) {
            let (verb, rest) = entry.split_once(char::is_whitespace).ok_or_else(|| {
                bad(
                    entry,
                    "expected `allow TRUSTEE=RIGHTS`, `deny ...` or `owner USER`",
                )
            })?;
            let rest = rest.trim();
            match verb {
                "owner" => sd.owner = Some(resolve_user(rest)?),
                "allow" | "deny" => {
                    let ace = parse_entry(rest)?;
                    let kind = if verb == "allow" {
                        AceKind::Allow
                    } else {
                        AceKind::Deny
                    };
                    sd.entries.push(Ace { kind, ..ace });
                }
                _ => return Err(bad(entry, "entries start with `allow`, `deny` or `owner`")),
            }
        }
        Ok(sd)
    }
}

fn bad(what: &str, why: &str) -> Error {
    Error::new(
        ErrorCode::InvalidParameter,
        format!("invalid security descriptor entry {what:?}: {why}"),
    )
}

fn resolve_user(s: &str) -> Result<LocalUser> {
    LocalUser::by_name(s).ok_or_else(|| bad(s, "no such user"))
}

fn resolve_group(s: &str) -> Result<LocalGroup> {
    LocalGroup::by_name(s).ok_or_else(|| bad(s, "no such group"))
}

/// Parses `TRUSTEE=RIGHTS` (the part after `allow`/`deny`, and the
/// command line's `--allow`/`--deny` values). The kind is `Allow`.
pub(crate) fn parse_entry(text: &str) -> Result<Ace> {
    let (trustee, rights) = text
        .rsplit_once('=')
        .ok_or_else(|| bad(text, "expected TRUSTEE=RIGHTS, e.g. user:alice=rw"))?;
    let rights = match rights.trim() {
        "r" | "read" => Rights::READ,
        "w" | "write" => Rights::WRITE,
        "rw" | "wr" | "full" => Rights::FULL,
        other => {
            return Err(bad(
                text,
                &format!("rights {other:?} are not r, w, rw or full"),
            ))
        }
    };
    let trustee = trustee.trim();
    let trustee = match trustee.split_once(':') {
        None if trustee == "everyone" => Trustee::Everyone,
        None if trustee == "owner" => Trustee::Owner,
        // Windows' NETWORK (NU): every client that came through a gateway.
        None if trustee == "network" => Trustee::Remote("*".into()),
        Some(("user", u)) => Trustee::User(resolve_user(u)?),
        Some(("group", g)) => Trustee::Group(resolve_group(g)?),
        Some(("remote", p)) if !p.is_empty() => Trustee::Remote(p.to_string()),
        _ => return Err(bad(
            text,
            "the trustee is user:NAME, group:NAME, everyone, owner, network or remote:PRINCIPAL",
        )),
    };
    Ok(Ace {
        kind: AceKind::Allow,
        trustee,
        rights,
    })
}

fn parse_sddl(text: &str) -> Result<SecurityDescriptor> {
    let mut sd = SecurityDescriptor::empty();
    let mut rest = text;
    if let Some(r) = rest.strip_prefix("O:") {
        let end = r.find("D:").unwrap_or(r.len());
        let owner = &r[..end];
        sd.owner = match owner {
            "SY" | "BA" => Some(LocalUser::ROOT),
            other => Some(resolve_user(other)?),
        };
        rest = &r[end..];
    }
    let Some(mut aces) = rest.strip_prefix("D:") else {
        return Err(bad(text, "SDDL needs a D: part"));
    };
    // Flags such as P or AI before the first ace are accepted and ignored.
    aces = aces.trim_start_matches(|c: char| c.is_ascii_uppercase());
    while !aces.is_empty() {
        let body = aces
            .strip_prefix('(')
            .and_then(|a| a.split_once(')'))
            .ok_or_else(|| bad(aces, "SDDL aces look like (A;;GA;;;WD)"))?;
        let fields: Vec<&str> = body.0.split(';').collect();
        if fields.len() != 6 {
            return Err(bad(body.0, "an SDDL ace has six fields"));
        }
        let kind = match fields[0] {
            "A" => AceKind::Allow,
            "D" => AceKind::Deny,
            _ => return Err(bad(body.0, "only A and D aces are understood")),
        };
        let rights = match fields[2] {
            "GA" | "FA" | "GRGW" | "GWGR" | "FRFW" => Rights::FULL,
            "GR" | "FR" => Rights::READ,
            "GW" | "FW" => Rights::WRITE,
            // What `to_sddl` writes for users other than the server's own.
            m if m.eq_ignore_ascii_case(PIPE_READ_WRITE) => Rights::FULL,
            m if m.eq_ignore_ascii_case(PIPE_WRITE) => Rights::WRITE,
            _ => return Err(bad(body.0, "rights must be GA, GR, GW, FA, FR, FW or GRGW")),
        };
        let trustee = match fields[5] {
            "WD" | "AU" | "IU" => Trustee::Everyone,
            "OW" | "CO" => Trustee::Owner,
            "SY" | "BA" => Trustee::User(LocalUser::ROOT),
            "NU" => Trustee::Remote("*".into()),
            // An account by SID, where the backend knows SIDs (Windows).
            sid if sid.starts_with("S-1-") => match LocalUser::by_name(sid) {
                Some(user) => Trustee::User(user),
                None => return Err(bad(body.0, "a SID this system does not know")),
            },
            _ => {
                return Err(bad(
                    body.0,
                    "trustees must be WD, AU, IU, OW, CO, SY, BA, NU or a SID",
                ))
            }
        };
        sd.entries.push(Ace {
            kind,
            trustee,
            rights,
        });
        aces = body.1;
    }
    Ok(sd)
}

impl SecurityDescriptor {
    /// The descriptor in SDDL, as Windows takes it
    /// (`ConvertStringSecurityDescriptorToSecurityDescriptor`): what the
    /// Windows backend applies to its pipes, and what [`parse`](Self::parse)
    /// reads back. The owner is `OW` (the pipe's creator), root is
    /// LocalSystem and the Administrators (`SY`, `BA`), everyone `WD`, remote
    /// clients `NU`. Read is `GR`; write and full access are `GW` and `GA`
    /// only for the owner, root and the server's own user, and exactly
    /// reading and writing (`0x120112`, `0x12019B`) for anyone else, whom
    /// `GENERIC_WRITE`'s `FILE_CREATE_PIPE_INSTANCE` would let serve the
    /// pipe themselves.
    ///
    /// Other users and groups go by their SIDs on Windows; a uid or gid
    /// (other than root's) names no Windows account, nor does one remote
    /// principal by name: those are *not supported* in SDDL.
    ///
    /// ```
    /// use npipe::SecurityDescriptor;
    ///
    /// let sd = SecurityDescriptor::default_for_pipes();
    /// assert_eq!(sd.to_sddl()?, "D:P(A;;GA;;;OW)(A;;GA;;;SY)(A;;GA;;;BA)(A;;GR;;;WD)");
    /// # Ok::<(), npipe::Error>(())
    /// ```
    pub fn to_sddl(&self) -> Result<String> {
        let unsupported = |what: String| {
            Error::new(
                ErrorCode::NotSupported,
                format!("{what} names no Windows account: SDDL has no SID for it"),
            )
        };
        let mut out = String::new();
        match self.owner {
            None => {}
            Some(LocalUser::ROOT) => out.push_str("O:SY"),
            Some(user) => match user.sid() {
                Some(sid) => out.push_str(&format!("O:{sid}")),
                None => return Err(unsupported(format!("owner uid {}", user.0))),
            },
        }
        // Protected: nothing is inherited from a parent, as for pipes.
        out.push_str("D:P");
        for ace in &self.entries {
            let kind = match ace.kind {
                AceKind::Allow => "A",
                AceKind::Deny => "D",
            };
            let rights = sddl_rights(ace);
            let account =
                |sid: Option<String>| sid.ok_or_else(|| unsupported(ace.trustee.to_string()));
            let sids: Vec<String> = match &ace.trustee {
                Trustee::Everyone => vec!["WD".into()],
                Trustee::Owner => vec!["OW".into()],
                Trustee::User(LocalUser::ROOT) => vec!["SY".into(), "BA".into()],
                Trustee::Remote(p) if p == "*" => vec!["NU".into()],
                Trustee::User(user) => vec![account(user.sid())?],
                Trustee::Group(group) => vec![account(group.sid())?],
                Trustee::Remote(_) => return Err(unsupported(ace.trustee.to_string())),
            };
            for sid in sids {
                out.push_str(&format!("({kind};;{rights};;;{sid})"));
            }
        }
        Ok(out)
    }
}

/// `FILE_GENERIC_WRITE` without `FILE_APPEND_DATA`, which on a pipe is
/// `FILE_CREATE_PIPE_INSTANCE`: writing, not serving.
const PIPE_WRITE: &str = "0x120112";
/// `FILE_GENERIC_READ | PIPE_WRITE`: reading and writing, without creating
/// instances or changing the descriptor (`GENERIC_ALL` would allow both).
const PIPE_READ_WRITE: &str = "0x12019B";

/// An entry's rights in SDDL. `GENERIC_WRITE` and `GENERIC_ALL` include
/// `FILE_CREATE_PIPE_INSTANCE` (and `GENERIC_ALL` `WRITE_DAC`): a client
/// allowed them could add its own instances of the pipe, take other
/// clients and impersonate them. So only the pipe's owner, root and the
/// server's own user are given them; everyone else is allowed exactly
/// reading and writing. Deny entries stay generic: broader is safer there.
fn sddl_rights(ace: &Ace) -> &'static str {
    let serves = match &ace.trustee {
        Trustee::Owner | Trustee::User(LocalUser::ROOT) => true,
        Trustee::User(user) => *user == LocalUser::current(),
        _ => false,
    };
    match (ace.rights.0, ace.kind == AceKind::Deny || serves) {
        (1, _) => "GR",
        (2, true) => "GW",
        (2, false) => PIPE_WRITE,
        (_, true) => "GA",
        (_, false) => PIPE_READ_WRITE,
    }
}

impl FromStr for SecurityDescriptor {
    type Err = Error;
    fn from_str(s: &str) -> Result<SecurityDescriptor> {
        SecurityDescriptor::parse(s)
    }
}

impl fmt::Display for Trustee {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Trustee::User(user) => write!(f, "user:{}", user.id_text()),
            Trustee::Group(group) => write!(f, "group:{}", group.id_text()),
            Trustee::Everyone => f.write_str("everyone"),
            Trustee::Owner => f.write_str("owner"),
            Trustee::Remote(p) => write!(f, "remote:{p}"),
        }
    }
}

impl fmt::Display for SecurityDescriptor {
    /// The text form, which [`SecurityDescriptor::parse`] reads back: the
    /// text it was parsed from, if it was (and not changed since), else
    /// the entries with users and groups by number.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(text) = &self.text {
            return f.write_str(text);
        }
        let mut sep = "";
        if let Some(user) = self.owner {
            write!(f, "owner {}", user.id_text())?;
            sep = "; ";
        }
        for ace in &self.entries {
            let verb = match ace.kind {
                AceKind::Allow => "allow",
                AceKind::Deny => "deny",
            };
            write!(f, "{sep}{verb} {}={}", ace.trustee, ace.rights.name())?;
            sep = "; ";
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local(uid: u32, gid: u32, groups: &[u32]) -> Subject {
        Subject::local(
            LocalUser(uid),
            LocalGroup(gid),
            groups.iter().copied().map(LocalGroup),
        )
    }

    /// A remote principal mapped to a local user is denied as that user
    /// and its groups, never granted as them.
    #[test]
    fn a_mapped_principal_meets_its_users_denies_not_its_allows() {
        let mapped = |groups: &[u32]| {
            Subject::remote_as(
                RemotePrincipal::new("laptop"),
                LocalUser(1000),
                groups.iter().copied().map(LocalGroup),
            )
        };
        let deny_user = SecurityDescriptor::empty()
            .allow(Trustee::Everyone, Rights::FULL)
            .deny(Trustee::User(LocalUser(1000)), Rights::FULL);
        assert_eq!(deny_user.rights_of(&mapped(&[]), LocalUser(0)), Rights(0));
        let deny_group = SecurityDescriptor::empty()
            .allow(Trustee::Everyone, Rights::FULL)
            .deny(Trustee::Group(LocalGroup(50)), Rights::WRITE);
        assert_eq!(
            deny_group.rights_of(&mapped(&[1000, 50]), LocalUser(0)),
            Rights::READ
        );
        assert_eq!(
            deny_group.rights_of(&mapped(&[1000]), LocalUser(0)),
            Rights::FULL
        );
        let deny_owner = SecurityDescriptor::empty()
            .allow(Trustee::Everyone, Rights::READ)
            .deny(Trustee::Owner, Rights::FULL);
        assert_eq!(
            deny_owner.rights_of(&mapped(&[]), LocalUser(1000)),
            Rights(0)
        );
        let allow_user = SecurityDescriptor::empty()
            .allow(Trustee::User(LocalUser(1000)), Rights::FULL)
            .allow(Trustee::Group(LocalGroup(50)), Rights::FULL);
        assert_eq!(
            allow_user.rights_of(&mapped(&[50]), LocalUser(0)),
            Rights(0)
        );
        // An unmapped principal meets neither.
        let unmapped = Subject::remote(RemotePrincipal::new("laptop"));
        assert_eq!(deny_user.rights_of(&unmapped, LocalUser(0)), Rights::FULL);
    }

    #[test]
    fn default_gives_owner_and_root_full_and_everyone_read() {
        let sd = SecurityDescriptor::default_for_pipes();
        let server = LocalUser(1000);
        assert_eq!(sd.rights_of(&local(1000, 1000, &[]), server), Rights::FULL);
        assert_eq!(sd.rights_of(&local(0, 0, &[]), server), Rights::FULL);
        assert_eq!(
            sd.rights_of(&local(65534, 65534, &[]), server),
            Rights::READ
        );
        assert!(sd
            .check(&local(65534, 65534, &[]), Access::Read, server)
            .is_ok());
        let e = sd
            .check(&local(65534, 65534, &[]), Access::Write, server)
            .unwrap_err();
        assert_eq!(e.code(), ErrorCode::AccessDenied);
        assert_eq!(sd.socket_mode(server), 0o666);
    }

    /// Uids in the text form: Unix only (Windows names accounts by SID).
    #[cfg(unix)]
    #[test]
    fn the_socket_mode_lets_in_an_owner_who_is_not_the_server() {
        // A root server whose descriptor's owner is uid 1000: the socket file
        // is root's, so uid 1000 needs the "others" bits to connect at all.
        let sd: SecurityDescriptor = "owner 1000; allow owner=full".parse().unwrap();
        assert_eq!(sd.socket_mode(LocalUser(0)), 0o666);
        let sd: SecurityDescriptor = "allow user:1000=rw".parse().unwrap();
        assert_eq!(sd.socket_mode(LocalUser(0)), 0o666);
        assert_eq!(sd.socket_mode(LocalUser(1000)), 0o600);
        assert_eq!(
            SecurityDescriptor::current_user_only().socket_mode(LocalUser(1000)),
            0o600
        );
    }

    #[test]
    fn current_user_only_refuses_everyone_else() {
        let sd = SecurityDescriptor::current_user_only();
        assert_eq!(sd.rights_of(&local(0, 0, &[]), LocalUser(0)), Rights::FULL);
        assert_eq!(
            sd.rights_of(&local(65534, 0, &[0]), LocalUser(0)),
            Rights(0)
        );
        assert_eq!(sd.socket_mode(LocalUser(0)), 0o600);
    }

    #[test]
    fn denies_win_whatever_the_order() {
        let sd = SecurityDescriptor::empty()
            .allow(Trustee::Everyone, Rights::FULL)
            .deny(Trustee::Group(LocalGroup(50)), Rights::WRITE);
        assert_eq!(
            sd.rights_of(&local(7, 7, &[50]), LocalUser(0)),
            Rights::READ
        );
        assert_eq!(sd.rights_of(&local(7, 50, &[]), LocalUser(0)), Rights::READ);
        assert_eq!(sd.rights_of(&local(7, 7, &[]), LocalUser(0)), Rights::FULL);
        assert!(sd.mentions_groups());
    }

    #[test]
    fn remote_entries_match_only_remote_clients() {
        let sd = SecurityDescriptor::empty()
            .allow(Trustee::Remote("alice@corp".into()), Rights::READ)
            .allow(Trustee::User(LocalUser(1000)), Rights::FULL);
        let remote = Subject::remote(RemotePrincipal::new("ALICE@corp"));
        assert_eq!(
            sd.rights_of(&remote, LocalUser(0)),
            Rights::READ,
            "a remote client is not the local user"
        );
        assert_eq!(
            sd.rights_of(&local(1000, 1, &[]), LocalUser(0)),
            Rights::FULL
        );
    }

    /// Uids in the text form: Unix only (Windows names accounts by SID).
    #[cfg(unix)]
    #[test]
    fn text_form_round_trips() {
        let text = "owner 1000; allow owner=full; allow user:0=rw; deny group:0=w; allow everyone=r; allow remote:bob=r";
        let sd: SecurityDescriptor = text.parse().unwrap();
        assert_eq!(sd.owner_of(LocalUser(5)), LocalUser(1000));
        assert_eq!(sd.entries().len(), 5);
        let again: SecurityDescriptor = sd.to_string().parse().unwrap();
        assert_eq!(again, sd);
        // Names go through the backend's user database (Linux's here).
        if cfg!(target_os = "linux") {
            let named: SecurityDescriptor =
                "allow user:root=full; allow group:root=r".parse().unwrap();
            assert_eq!(named.entries()[0].trustee, Trustee::User(LocalUser::ROOT));
            assert_eq!(named.entries()[1].trustee, Trustee::Group(LocalGroup(0)));
        }
    }

    /// Uids in the text form: Unix only (Windows names accounts by SID).
    #[cfg(unix)]
    #[test]
    fn a_parsed_descriptor_is_shown_as_it_was_written() {
        let text = "allow owner=full; allow group:0=rw; deny everyone=w";
        let sd: SecurityDescriptor = text.parse().unwrap();
        assert_eq!(sd.to_string(), text);
        let built = SecurityDescriptor::empty()
            .allow(Trustee::Owner, Rights::FULL)
            .allow(Trustee::Group(LocalGroup(0)), Rights::FULL)
            .deny(Trustee::Everyone, Rights::WRITE);
        assert_eq!(sd, built, "the same grants, whatever the text");
        // Changed after parsing: the generated form.
        let changed = sd.allow(Trustee::Everyone, Rights::READ);
        assert_eq!(
            changed.to_string(),
            "allow owner=full; allow group:0=full; deny everyone=w; allow everyone=r"
        );
        let sddl = "D:P(A;;GA;;;OW)(A;;GR;;;WD)";
        assert_eq!(
            sddl.parse::<SecurityDescriptor>().unwrap().to_string(),
            sddl
        );
    }

    /// Uids in the text form: Unix only (Windows names accounts by SID).
    #[cfg(unix)]
    #[test]
    fn descriptors_go_to_sddl_and_back() {
        for sd in [
            SecurityDescriptor::default_for_pipes(),
            SecurityDescriptor::current_user_only(),
            "deny everyone=w; allow everyone=full; allow remote:*=r"
                .parse()
                .unwrap(),
        ] {
            let sddl = sd.to_sddl().unwrap();
            let back: SecurityDescriptor = sddl.parse().unwrap();
            // The same grants to everyone (root comes back as two entries,
            // LocalSystem and the Administrators).
            let server = LocalUser(1000);
            let who = [
                local(1000, 1000, &[]),
                local(0, 0, &[]),
                local(65534, 65534, &[]),
                Subject::remote(RemotePrincipal::new("far")),
            ];
            for w in &who {
                assert_eq!(
                    back.rights_of(w, server),
                    sd.rights_of(w, server),
                    "{sddl} {w:?}"
                );
            }
        }
        let named: SecurityDescriptor = "allow user:1000=r".parse().unwrap();
        assert_eq!(named.to_sddl().unwrap_err().code(), ErrorCode::NotSupported);
        let owned = SecurityDescriptor::empty().owner(LocalUser(5));
        assert_eq!(owned.to_sddl().unwrap_err().code(), ErrorCode::NotSupported);
    }

    /// Windows: users in the text form and in SDDL are SIDs, and go to SDDL
    /// and back.
    #[cfg(windows)]
    #[test]
    fn accounts_go_to_sddl_by_sid() {
        let me = LocalUser::current();
        let sid = me.sid().unwrap();
        let sd: SecurityDescriptor = format!("allow user:{sid}=full; deny everyone=w")
            .parse()
            .unwrap();
        let sddl = sd.to_sddl().unwrap();
        assert_eq!(sddl, format!("D:P(A;;GA;;;{sid})(D;;GW;;;WD)"));
        assert_eq!(sddl.parse::<SecurityDescriptor>().unwrap(), sd);
        let shown = SecurityDescriptor::empty().allow(Trustee::User(me), Rights::READ);
        assert_eq!(shown.to_string(), format!("allow user:{sid}=r"));
    }

    #[test]
    fn sddl_subset() {
        let sd: SecurityDescriptor = "D:P(A;;GA;;;OW)(A;;GA;;;SY)(A;;GR;;;WD)(D;;GW;;;NU)"
            .parse()
            .unwrap();
        assert_eq!(
            sd,
            SecurityDescriptor::default_for_pipes()
                .deny(Trustee::Remote("*".into()), Rights::WRITE)
        );
        // The other spellings SECURITY.md lists read the same.
        let same: SecurityDescriptor = "D:(A;;FA;;;CO)(A;;FA;;;BA)(A;;FR;;;AU)(D;;FW;;;NU)"
            .parse()
            .unwrap();
        assert_eq!(same, sd);
        let rw: SecurityDescriptor = "D:(A;;GRGW;;;IU)".parse().unwrap();
        assert_eq!(
            rw,
            SecurityDescriptor::empty().allow(Trustee::Everyone, Rights::FULL)
        );
    }

    #[test]
    fn bad_text_is_a_clear_error() {
        for bad in [
            "allow",
            "permit user:x=r",
            "allow user:x",
            "allow user:no-such-user-npipe=r",
            "allow everyone=x",
            "allow alien:1=r",
            "D:(A;;GA;;WD)",
            "D:(X;;GA;;;WD)",
        ] {
            let e = SecurityDescriptor::parse(bad).unwrap_err();
            assert_eq!(e.code(), ErrorCode::InvalidParameter, "{bad}");
        }
    }

    /// Write access must not let a client serve the pipe: only the owner,
    /// root and the server's own user get GENERIC_WRITE/ALL (which include
    /// FILE_CREATE_PIPE_INSTANCE); others get exactly read and write, and
    /// the text reads back as the same rights.
    #[test]
    fn sddl_gives_others_no_right_to_create_instances() {
        let sd: SecurityDescriptor = "allow owner=full; allow everyone=rw; allow everyone=w; \
                                      deny everyone=w"
            .parse()
            .unwrap();
        let sddl = sd.to_sddl().unwrap();
        assert_eq!(
            sddl,
            "D:P(A;;GA;;;OW)(A;;0x12019B;;;WD)(A;;0x120112;;;WD)(D;;GW;;;WD)"
        );
        let back = SecurityDescriptor::parse(&sddl.replace("0x12019B", "0x12019b"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back.to_sddl().unwrap(), sddl);
    }
}
