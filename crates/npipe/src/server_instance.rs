//! The pipe instance a server end holds, the same on every front end: who
//! connected to it and at what impersonation level, and giving it back to
//! its listener exactly once (`DisconnectNamedPipe` or drop).

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::impersonation::{cannot_impersonate, no_client_to_impersonate};
use crate::peer_process::{ClientProcess, PeerProcess};
use crate::remote_peer::RemotePeer;
use crate::types::ImpersonationLevel;

/// What a listener does for the instances its server ends hold.
pub(crate) trait InstancePool: Send + Sync {
    /// An instance was given back (wakes what waits for one).
    fn release_instance(&self);
    /// Instances in use now, for `info`.
    fn active_now(&self) -> u32;
}

/// A server end's instance: held from accept until disconnect or drop.
pub(crate) struct ServerInstance {
    pool: Arc<dyn InstancePool>,
    impersonation: ImpersonationLevel,
    /// The connecting process.
    process: ClientProcess,
    /// The remote client, when a trusted gateway connected on its behalf
    /// (boxed: rare, and every idle local connection would carry its room).
    remote: Option<Box<RemotePeer>>,
    held: bool,
}

impl std::fmt::Debug for ServerInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerInstance")
            .field("held", &self.held)
            .field("impersonation", &self.impersonation)
            .finish_non_exhaustive()
    }
}

impl ServerInstance {
    /// The instance of a connection fresh from accept, from `process`
    /// (for a remote client: its gateway, connecting for `remote`), which
    /// granted `impersonation`.
    pub fn new(
        pool: Arc<dyn InstancePool>,
        impersonation: ImpersonationLevel,
        process: ClientProcess,
        remote: Option<RemotePeer>,
    ) -> ServerInstance {
        ServerInstance {
            pool,
            impersonation,
            process,
            remote: remote.map(Box::new),
            held: true,
        }
    }

    /// The remote client, if a gateway connected for one.
    pub fn remote(&self) -> Option<&RemotePeer> {
        self.remote.as_deref()
    }

    /// Whether a client is still connected to this end.
    pub fn held(&self) -> bool {
        self.held
    }

    /// `DisconnectNamedPipe`'s bookkeeping: runs `cut` (which drops the
    /// client) and gives the instance back; *pipe not connected* if it was
    /// already given back.
    pub fn disconnect(&mut self, cut: impl FnOnce()) -> Result<()> {
        if !self.held {
            return Err(Error::not_connected());
        }
        cut();
        self.held = false;
        self.pool.release_instance();
        Ok(())
    }

    /// Instances of the pipe in use now.
    pub fn active_now(&self) -> u32 {
        self.pool.active_now()
    }

    /// Why this end may not act as its client, if it may not: the client
    /// is gone (1368), granted identification only (1368), or is a remote
    /// principal its gateway mapped to no local user (1368).
    pub fn may_impersonate(&self) -> Result<()> {
        if !self.held {
            return Err(no_client_to_impersonate());
        }
        if self.impersonation != ImpersonationLevel::Impersonation {
            return Err(cannot_impersonate());
        }
        if let Some(remote) = &self.remote {
            if !remote.is_mapped() {
                return Err(crate::impersonation::unmapped_remote(&remote.principal));
            }
        }
        Ok(())
    }

    /// The level the client granted.
    pub fn impersonation(&self) -> ImpersonationLevel {
        self.impersonation
    }

    /// The connecting process, captured now (by `capture`, given its
    /// kernel pid) if it was not yet.
    pub fn process<T>(
        &self,
        capture: impl FnOnce(u32) -> PeerProcess,
        f: impl FnOnce(&PeerProcess) -> T,
    ) -> T {
        self.process.with(capture, f)
    }
}

impl Drop for ServerInstance {
    fn drop(&mut self) {
        if self.held {
            self.pool.release_instance();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[derive(Default)]
    struct Pool(AtomicU32);

    impl InstancePool for Pool {
        fn release_instance(&self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
        fn active_now(&self) -> u32 {
            7
        }
    }

    fn instance(level: ImpersonationLevel) -> (Arc<Pool>, ServerInstance) {
        let pool = Arc::new(Pool::default());
        let (a, _b) = crate::sys::Socket::pair().unwrap();
        let process = ClientProcess::at_accept(&a, std::process::id());
        let i = ServerInstance::new(pool.clone(), level, process, None);
        (pool, i)
    }

    #[test]
    fn an_instance_is_given_back_once_by_disconnect_or_drop() {
        let (pool, mut i) = instance(ImpersonationLevel::Impersonation);
        let mut cut = 0;
        i.disconnect(|| cut += 1).unwrap();
        let again = i.disconnect(|| cut += 1).unwrap_err();
        assert_eq!(again.code(), crate::ErrorCode::PipeNotConnected);
        assert_eq!(cut, 1, "the client is cut once");
        drop(i);
        assert_eq!(pool.0.load(Ordering::SeqCst), 1, "given back once");

        let (pool, i) = instance(ImpersonationLevel::Impersonation);
        drop(i);
        assert_eq!(pool.0.load(Ordering::SeqCst), 1, "a drop gives it back");
    }

    #[test]
    fn impersonation_needs_the_client_and_its_grant() {
        let (_, mut i) = instance(ImpersonationLevel::Impersonation);
        assert!(i.may_impersonate().is_ok());
        i.disconnect(|| ()).unwrap();
        let gone = i.may_impersonate().unwrap_err();
        assert_eq!(gone.code(), crate::ErrorCode::CannotImpersonate);
        let (_, only_id) = instance(ImpersonationLevel::Identification);
        let refused = only_id.may_impersonate().unwrap_err();
        assert_eq!(refused.code(), crate::ErrorCode::CannotImpersonate);
    }
}
