//! A client that came through a trusted remote-pipe gateway: the principal
//! the gateway authenticated (its TLS certificate's name), the computer it
//! came from, and the local user the gateway mapped it to, if any. The
//! server acts as that local user when it impersonates; without one it
//! cannot impersonate at all (`ERROR_CANNOT_IMPERSONATE`).
//!
//! Only [`policy::judge`](crate::policy::judge) decides whether a HELLO's
//! remote identity is believed (the peer's kernel uid must be a gateway the
//! server trusts); this module only holds what was believed.

use std::sync::OnceLock;

use crate::identity::{LocalGroup, LocalUser, RemotePrincipal};
use crate::info::PeerCredentials;
use crate::proto::handshake::Hello;

/// A remote client, as its gateway named it.
#[derive(Debug)]
pub(crate) struct RemotePeer {
    /// The certificate's name.
    pub principal: RemotePrincipal,
    /// The computer it connected from (the gateway says: its address).
    pub computer: String,
    /// The mapped local user, its primary group and its name (`None`:
    /// unmapped, or the user database no longer has it).
    local: Option<(u32, u32, String)>,
    /// The mapped user's groups: those the gateway sent (read from the
    /// same user database, and the ones the descriptor was judged by), else
    /// read from the database when first asked for (an older gateway).
    groups: OnceLock<Vec<u32>>,
}

impl RemotePeer {
    /// The remote client a (judged and trusted) HELLO names, if it names
    /// one. Reads the mapped user's primary group from the user database.
    pub fn from_hello(hello: &Hello) -> Option<RemotePeer> {
        if hello.principal.is_empty() {
            return None;
        }
        let local = hello.local_user.and_then(|uid| {
            let (name, gid) = crate::sys::user_entry(uid)?;
            Some((uid, gid, name))
        });
        let groups = OnceLock::new();
        if local.is_some() && !hello.local_groups.is_empty() {
            let _ = groups.set(hello.local_groups.clone());
        }
        Some(RemotePeer {
            principal: RemotePrincipal::new(hello.principal.clone()),
            computer: hello.computer.clone(),
            local,
            groups,
        })
    }

    /// What the server end reports as the client's credentials: the
    /// mapped user and group (or ids that name no one), and the pid of the
    /// gateway process, which is what connected here.
    pub fn credentials(&self, gateway_pid: u32) -> PeerCredentials {
        let (uid, gid) = self.local.as_ref().map_or(
            (
                PeerCredentials::UNKNOWN.user.0,
                PeerCredentials::UNKNOWN.group.0,
            ),
            |(uid, gid, _)| (*uid, *gid),
        );
        PeerCredentials {
            pid: gateway_pid,
            user: LocalUser(uid),
            group: LocalGroup(gid),
        }
    }

    /// The mapped user's uid, gid and groups: whom the server acts as.
    pub fn local_account(&self) -> Option<(u32, u32, Vec<u32>)> {
        let (uid, gid, _) = self.local.as_ref()?;
        Some((*uid, *gid, self.groups().to_vec()))
    }

    /// Whether the gateway mapped it to a local user the database has.
    pub fn is_mapped(&self) -> bool {
        self.local.is_some()
    }

    /// The mapped user's groups (none for an unmapped principal).
    pub fn groups(&self) -> &[u32] {
        self.groups.get_or_init(|| match &self.local {
            Some((_, gid, name)) => crate::sys::group_list(name, *gid),
            None => Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::handshake::HelloKind;
    use crate::types::{ImpersonationLevel, ReadMode};

    fn hello(principal: &str, local_user: Option<u32>) -> Hello {
        Hello {
            kind: HelloKind::Connect,
            access: None,
            read_mode: ReadMode::Byte,
            impersonation: ImpersonationLevel::Impersonation,
            wait_ms: 0,
            max_message: 0,
            pipelined: false,
            name: "p".into(),
            principal: principal.into(),
            computer: "10.0.0.7".into(),
            local_user,
            local_groups: Vec::new(),
            hand_off: false,
        }
    }

    #[test]
    fn a_local_hello_names_no_remote_peer() {
        assert!(RemotePeer::from_hello(&hello("", None)).is_none());
    }

    #[test]
    fn a_mapped_principal_stands_for_its_local_user() {
        let peer = RemotePeer::from_hello(&hello("agent", Some(0))).unwrap();
        let cred = peer.credentials(42);
        assert_eq!(
            (cred.pid, cred.user, cred.group),
            (42, LocalUser(0), LocalGroup(0))
        );
        let (uid, gid, groups) = peer.local_account().unwrap();
        assert_eq!((uid, gid), (0, 0));
        assert_eq!(groups.first(), Some(&0), "the primary group comes first");
        assert_eq!(peer.computer, "10.0.0.7");
    }

    #[test]
    fn an_unmapped_principal_is_no_local_user() {
        let peer = RemotePeer::from_hello(&hello("agent", None)).unwrap();
        let cred = peer.credentials(42);
        assert_eq!(cred.user, PeerCredentials::UNKNOWN.user);
        assert_eq!(cred.group, PeerCredentials::UNKNOWN.group);
        assert!(peer.local_account().is_none());
        assert!(peer.groups().is_empty());
    }

    /// The groups the gateway sent are those the server acts with (and
    /// judged by), without reading the user database again.
    #[test]
    fn a_gateways_groups_are_the_ones_acted_with() {
        let mut h = hello("agent", Some(0));
        h.local_groups = vec![0, 4242];
        let peer = RemotePeer::from_hello(&h).unwrap();
        assert_eq!(peer.local_account().unwrap().2, vec![0, 4242]);
    }
}
