//! Who is at the other end of a pipe, as typed values rather than bare
//! numbers: [`Identity`] is a local user (from the kernel) or a remote
//! principal (as a remote-pipe gateway authenticated it); [`LocalUser`] and
//! [`LocalGroup`] are this machine's users and groups. On Unix they carry a
//! uid and a gid ([`crate::unix`] reads and makes them); a Windows backend
//! carries SIDs behind the same types.

use std::fmt;

/// Who a peer is, as something able to vouch for it said so: the kernel for
/// a client or server on this machine, a remote-pipe gateway's TLS
/// authentication for a client elsewhere. Never what the peer claims.
///
/// A security descriptor's [`Trustee`](crate::Trustee) names identities,
/// [`ClientOptions::expect_server`](crate::ClientOptions::expect_server)
/// takes one, and each end's `peer_identity` tells
/// either end who the other is.
///
/// ```
/// use npipe::{Identity, LocalUser, RemotePrincipal};
///
/// let me = Identity::from(LocalUser::current());
/// assert_eq!(me.local_user(), Some(LocalUser::current()));
///
/// let far = Identity::Remote(RemotePrincipal::new("build-agent-7"));
/// assert_eq!(far.local_user(), None);
/// assert_eq!(far.to_string(), "remote principal build-agent-7");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Identity {
    /// A user of this machine, as the kernel reports the peer's process.
    Local(LocalUser),
    /// A client on another machine, by the principal (its certificate's
    /// name) a remote-pipe gateway authenticated.
    Remote(RemotePrincipal),
}

impl Identity {
    /// The local user, for a peer on this machine.
    pub fn local_user(&self) -> Option<LocalUser> {
        match self {
            Identity::Local(user) => Some(*user),
            Identity::Remote(_) => None,
        }
    }

    /// The remote principal, for a peer that came through a gateway.
    pub fn remote_principal(&self) -> Option<&RemotePrincipal> {
        match self {
            Identity::Local(_) => None,
            Identity::Remote(p) => Some(p),
        }
    }
}

impl From<LocalUser> for Identity {
    fn from(user: LocalUser) -> Identity {
        Identity::Local(user)
    }
}

impl From<RemotePrincipal> for Identity {
    fn from(p: RemotePrincipal) -> Identity {
        Identity::Remote(p)
    }
}

/// On Unix a bare uid names a local user: `expect_server(0)`.
#[cfg(unix)]
impl From<u32> for Identity {
    fn from(uid: u32) -> Identity {
        Identity::Local(LocalUser(uid))
    }
}

impl fmt::Display for Identity {
    /// `alice (uid 1000)` or `remote principal build-agent-7`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Local(user) => user.fmt(f),
            Identity::Remote(p) => write!(f, "remote principal {p}"),
        }
    }
}

/// A remote client's authenticated name: the subject of the certificate a
/// remote-pipe gateway checked. Compared without regard to ASCII case, as
/// host and account names are.
///
/// ```
/// use npipe::RemotePrincipal;
/// assert_eq!(RemotePrincipal::new("Agent-7"), RemotePrincipal::new("agent-7"));
/// ```
#[derive(Debug, Clone, Eq)]
pub struct RemotePrincipal(String);

impl RemotePrincipal {
    /// A principal by name.
    pub fn new(name: impl Into<String>) -> RemotePrincipal {
        RemotePrincipal(name.into())
    }

    /// The name as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl PartialEq for RemotePrincipal {
    fn eq(&self, other: &RemotePrincipal) -> bool {
        self.0.eq_ignore_ascii_case(&other.0)
    }
}

impl std::hash::Hash for RemotePrincipal {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        for b in self.0.bytes() {
            state.write_u8(b.to_ascii_lowercase());
        }
    }
}

impl fmt::Display for RemotePrincipal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A user of this machine.
///
/// ```
/// use npipe::LocalUser;
///
/// let me = LocalUser::current();
/// assert_eq!(LocalUser::by_name("root"), Some(LocalUser::ROOT));
/// # let _ = me.name();
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LocalUser(pub(crate) u32);

/// A group of this machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LocalGroup(pub(crate) u32);

impl LocalUser {
    /// The superuser: root (where Windows' SYSTEM and Administrators map).
    pub const ROOT: LocalUser = LocalUser(0);

    /// The user this thread acts as: its effective user (per thread on
    /// Linux), on Windows the user of the token it impersonates, else of
    /// its process's token. Inside an impersonation, the client.
    #[cfg(any(target_os = "linux", windows))]
    pub fn current() -> LocalUser {
        LocalUser(crate::sys::effective_uid())
    }

    /// The user with this name in the system's user database, or with
    /// this number (a uid on Unix; on Windows an account name or a SID,
    /// `S-1-5-...`, and `0` for LocalSystem).
    pub fn by_name(name: &str) -> Option<LocalUser> {
        lookup::number(name)
            .or_else(|| lookup::uid_of_user(name))
            .map(LocalUser)
    }

    /// Its name in the system's user database, if it has one.
    pub fn name(&self) -> Option<String> {
        lookup::user_name(self.0)
    }

    /// Its id as text, the form [`by_name`](Self::by_name) reads back: the
    /// uid on Unix, the SID (`S-1-5-...`) on Windows.
    ///
    /// ```
    /// use npipe::LocalUser;
    /// let me = LocalUser::current();
    /// assert_eq!(LocalUser::by_name(&me.id_text()), Some(me));
    /// ```
    pub fn id_text(&self) -> String {
        lookup::id_text(self.0)
    }

    /// Its SID in string form, where the backend has one (Windows).
    pub(crate) fn sid(&self) -> Option<String> {
        lookup::sid(self.0)
    }
}

impl LocalGroup {
    /// The group with this name in the system's group database, or with
    /// this number (a gid on Unix, a SID on Windows).
    pub fn by_name(name: &str) -> Option<LocalGroup> {
        lookup::number(name)
            .or_else(|| lookup::gid_of_group(name))
            .map(LocalGroup)
    }

    /// Its id as text, the form [`by_name`](Self::by_name) reads back: the
    /// gid on Unix, the SID on Windows.
    pub fn id_text(&self) -> String {
        lookup::id_text(self.0)
    }

    /// Its SID in string form, where the backend has one (Windows).
    pub(crate) fn sid(&self) -> Option<String> {
        lookup::sid(self.0)
    }
}

impl fmt::Display for LocalUser {
    /// `alice (uid 1000)`, or `uid 1000` for a user with no name; on
    /// Windows `alice (S-1-5-21-...)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let id = lookup::user_label(self.0);
        match self.name() {
            Some(name) => write!(f, "{name} ({id})"),
            None => f.write_str(&id),
        }
    }
}

impl fmt::Display for LocalGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&lookup::group_label(self.0))
    }
}

/// The user and group databases: the system's through the backend, and
/// none (numbers only) where npipe has no backend yet. On Unix a user is
/// its uid; on Windows the number stands for a SID the backend keeps.
#[cfg(any(target_os = "linux", windows))]
mod lookup {
    pub(super) use crate::sys::{gid_of_group, uid_of_user, user_name};

    #[cfg(unix)]
    pub(super) fn number(name: &str) -> Option<u32> {
        name.parse().ok()
    }
    #[cfg(unix)]
    pub(super) fn id_text(id: u32) -> String {
        id.to_string()
    }
    #[cfg(unix)]
    pub(super) fn user_label(id: u32) -> String {
        format!("uid {id}")
    }
    #[cfg(unix)]
    pub(super) fn group_label(id: u32) -> String {
        format!("gid {id}")
    }
    #[cfg(unix)]
    pub(super) fn sid(_: u32) -> Option<String> {
        None
    }

    /// Only `0` (LocalSystem) is a number on Windows; accounts go by name
    /// or SID.
    #[cfg(windows)]
    pub(super) fn number(name: &str) -> Option<u32> {
        (name == "0").then_some(0)
    }
    #[cfg(windows)]
    pub(super) fn id_text(id: u32) -> String {
        sid(id).unwrap_or_else(|| id.to_string())
    }
    #[cfg(windows)]
    pub(super) fn user_label(id: u32) -> String {
        id_text(id)
    }
    #[cfg(windows)]
    pub(super) fn group_label(id: u32) -> String {
        id_text(id)
    }
    #[cfg(windows)]
    pub(super) fn sid(id: u32) -> Option<String> {
        crate::sys::sid_string(id)
    }
}

#[cfg(not(any(target_os = "linux", windows)))]
mod lookup {
    pub(super) fn number(name: &str) -> Option<u32> {
        name.parse().ok()
    }
    pub(super) fn uid_of_user(_: &str) -> Option<u32> {
        None
    }
    pub(super) fn gid_of_group(_: &str) -> Option<u32> {
        None
    }
    pub(super) fn user_name(_: u32) -> Option<String> {
        None
    }
    pub(super) fn id_text(id: u32) -> String {
        id.to_string()
    }
    pub(super) fn user_label(id: u32) -> String {
        format!("uid {id}")
    }
    pub(super) fn group_label(id: u32) -> String {
        format!("gid {id}")
    }
    pub(super) fn sid(_: u32) -> Option<String> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names come from the backend's user database: on Linux the
    /// system's, by uid; on Windows the accounts', by SID.
    #[test]
    fn users_by_name_or_number() {
        assert_eq!(LocalUser::by_name("0"), Some(LocalUser::ROOT));
        assert_eq!(LocalUser::by_name("no-such-user-npipe"), None);
        assert_eq!(LocalGroup::by_name("0"), Some(LocalGroup(0)));
        if cfg!(target_os = "linux") {
            assert_eq!(LocalUser::by_name("root"), Some(LocalUser::ROOT));
            assert_eq!(LocalUser::ROOT.to_string(), "root (uid 0)");
        }
        if cfg!(windows) {
            assert_eq!(LocalUser::by_name("S-1-5-18"), Some(LocalUser::ROOT));
            assert_eq!(LocalUser::ROOT.id_text(), "S-1-5-18");
            assert!(LocalUser::ROOT.to_string().ends_with("(S-1-5-18)"));
        }
    }

    /// On Windows this process's user is a real account: a SID that reads
    /// back to the same user, and a name that does too.
    #[cfg(windows)]
    #[test]
    fn the_current_user_is_an_account() {
        let me = LocalUser::current();
        let sid = me.sid().expect("a SID");
        assert!(sid.starts_with("S-1-5-"), "{sid}");
        assert_eq!(LocalUser::by_name(&sid), Some(me));
        let name = me.name().expect("a name");
        assert_eq!(LocalUser::by_name(&name), Some(me), "{name}");
    }

    #[test]
    fn identities_say_which_kind_they_are() {
        let local = Identity::from(LocalUser::ROOT);
        assert_eq!(local.local_user(), Some(LocalUser::ROOT));
        assert_eq!(local.remote_principal(), None);
        assert_eq!(local.to_string(), LocalUser::ROOT.to_string());

        let remote = Identity::Remote(RemotePrincipal::new("CI-Agent"));
        assert_eq!(remote.local_user(), None);
        assert_eq!(
            remote.remote_principal().map(|p| p.as_str()),
            Some("CI-Agent")
        );
        assert_ne!(local, remote);
    }

    #[test]
    fn principals_compare_without_case_and_hash_alike() {
        use std::collections::HashSet;
        let a = RemotePrincipal::new("Agent-7");
        let b = RemotePrincipal::new("agent-7");
        assert_eq!(a, b);
        assert_ne!(a, RemotePrincipal::new("agent-8"));
        let set: HashSet<_> = [a, b].into_iter().collect();
        assert_eq!(set.len(), 1);
    }
}
