//! Users and groups of this machine as typed values, not bare numbers: who
//! a pipe's peer is (from the kernel), whom a security descriptor names,
//! which server a client expects. On Unix they carry a uid and a gid
//! ([`crate::unix`] reads and makes them); a Windows backend will carry
//! SIDs, and remote peers a gateway's principal, behind the same types.

use std::fmt;

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

    /// The user this process acts as (its effective user).
    #[cfg(target_os = "linux")]
    pub fn current() -> LocalUser {
        LocalUser(crate::sys::effective_uid())
    }

    /// The user with this name in the system's user database, or with
    /// this number.
    pub fn by_name(name: &str) -> Option<LocalUser> {
        name.parse()
            .ok()
            .or_else(|| lookup::uid_of_user(name))
            .map(LocalUser)
    }

    /// Its name in the system's user database, if it has one.
    pub fn name(&self) -> Option<String> {
        lookup::user_name(self.0)
    }
}

impl LocalGroup {
    /// The group with this name in the system's group database, or with
    /// this number.
    pub fn by_name(name: &str) -> Option<LocalGroup> {
        name.parse()
            .ok()
            .or_else(|| lookup::gid_of_group(name))
            .map(LocalGroup)
    }
}

impl fmt::Display for LocalUser {
    /// `alice (uid 1000)`, or `uid 1000` for a user with no name.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "{name} (uid {})", self.0),
            None => write!(f, "uid {}", self.0),
        }
    }
}

impl fmt::Display for LocalGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "gid {}", self.0)
    }
}

/// The user and group databases: the system's through the backend, and
/// none (numbers only) where npipe has no backend yet.
#[cfg(target_os = "linux")]
mod lookup {
    pub(super) use crate::sys::{gid_of_group, uid_of_user, user_name};
}

#[cfg(not(target_os = "linux"))]
mod lookup {
    pub(super) fn uid_of_user(_: &str) -> Option<u32> {
        None
    }
    pub(super) fn gid_of_group(_: &str) -> Option<u32> {
        None
    }
    pub(super) fn user_name(_: u32) -> Option<String> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_by_name_or_number() {
        assert_eq!(LocalUser::by_name("0"), Some(LocalUser::ROOT));
        assert_eq!(LocalUser::by_name("root"), Some(LocalUser::ROOT));
        assert_eq!(LocalUser::by_name("no-such-user-npipe"), None);
        assert_eq!(LocalGroup::by_name("0"), Some(LocalGroup(0)));
        assert_eq!(LocalUser::ROOT.to_string(), "root (uid 0)");
    }
}
