//! What only Unix has, the `std::os::unix` way: the numbers behind
//! [`LocalUser`] and [`LocalGroup`].
//!
//! ```
//! use npipe::unix::{LocalUserExt, LocalGroupExt};
//! use npipe::{LocalGroup, LocalUser};
//!
//! let nobody = LocalUser::from_uid(65534);
//! assert_eq!(nobody.uid(), 65534);
//! assert_eq!(LocalGroup::from_gid(100).gid(), 100);
//! assert_eq!(LocalUser::from(0), LocalUser::ROOT); // a bare number is a uid
//! ```

use crate::identity::{LocalGroup, LocalUser};

/// A [`LocalUser`] as a uid.
pub trait LocalUserExt {
    /// The user with this uid.
    fn from_uid(uid: u32) -> Self;
    /// Its uid.
    fn uid(&self) -> u32;
}

/// A [`LocalGroup`] as a gid.
pub trait LocalGroupExt {
    /// The group with this gid.
    fn from_gid(gid: u32) -> Self;
    /// Its gid.
    fn gid(&self) -> u32;
}

impl LocalUserExt for LocalUser {
    fn from_uid(uid: u32) -> LocalUser {
        LocalUser(uid)
    }
    fn uid(&self) -> u32 {
        self.0
    }
}

impl LocalGroupExt for LocalGroup {
    fn from_gid(gid: u32) -> LocalGroup {
        LocalGroup(gid)
    }
    fn gid(&self) -> u32 {
        self.0
    }
}

/// A uid.
impl From<u32> for LocalUser {
    fn from(uid: u32) -> LocalUser {
        LocalUser(uid)
    }
}

/// A gid.
impl From<u32> for LocalGroup {
    fn from(gid: u32) -> LocalGroup {
        LocalGroup(gid)
    }
}
