//! Acting as a pipe client: the per-thread impersonation guard, and starting
//! a program as the client for good. Front-end neutral: both the blocking
//! and the tokio server ends use these.

use std::io;

use crate::error::{Error, ErrorCode, Result};
use crate::sys;

/// Impersonating after `disconnect`: no client is there to act as
/// (`ERROR_CANNOT_IMPERSONATE`, as on Windows).
pub(crate) fn no_client_to_impersonate() -> Error {
    Error::new(
        ErrorCode::CannotImpersonate,
        "no client is connected to impersonate (this end was disconnected)",
    )
}

/// Starts `cmd` as the user `uid`/`gid` with `groups`, for good (see
/// `spawn_as_client`, the public face of this on both front ends).
pub(crate) fn spawn_as_user(
    cmd: &mut std::process::Command,
    uid: u32,
    gid: u32,
    groups: Vec<u32>,
) -> Result<std::process::Child> {
    if sys::real_uid() != 0 {
        // Without privilege the child keeps this process's groups: that is
        // the client's identity only if they are the client's groups too.
        let ours = sys::thread_ids().map(|t| t.groups).unwrap_or_default();
        let (mut a, mut b) = (ours, groups.clone());
        a.sort_unstable();
        b.sort_unstable();
        if a != b {
            return Err(Error::new(
                ErrorCode::PrivilegeNotHeld,
                format!(
                    "cannot start a process as uid {uid} with its own groups: that needs root \
                     (this process's groups differ from the client's)"
                ),
            ));
        }
    }
    let ids = sys::ThreadIds {
        euid: uid,
        egid: gid,
        groups,
    };
    sys::exec_as_user(cmd, &ids);
    cmd.spawn().map_err(|e| {
        if e.kind() == io::ErrorKind::PermissionDenied {
            Error::new(
                ErrorCode::PrivilegeNotHeld,
                format!(
                    "cannot start a process as uid {uid}: that needs root unless the client \
                     is the server's own user ({e})"
                ),
            )
            .with_source(e)
        } else {
            Error::os(e, "cannot start the process as the client")
        }
    })
}

/// The refusal for a client that granted identification only.
pub(crate) fn cannot_impersonate() -> Error {
    Error::new(
        ErrorCode::CannotImpersonate,
        "the client granted identification only: it may be identified, not impersonated",
    )
}

/// A remote client whose gateway mapped it to no local user: there is no
/// one on this machine to act as.
pub(crate) fn unmapped_remote(principal: &crate::identity::RemotePrincipal) -> Error {
    Error::new(
        ErrorCode::CannotImpersonate,
        format!(
            "remote principal {principal} maps to no local user on this machine: \
             map it at the gateway (npipe gateway --map {principal}=USER) to impersonate it"
        ),
    )
}

thread_local! {
    static IMPERSONATING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The calling thread's impersonation of a pipe client, from
/// [`PipeServer::impersonate`](crate::PipeServer::impersonate); dropping it
/// reverts (`RevertToSelf`).
#[derive(Debug)]
pub struct Impersonation<'a> {
    saved: sys::ThreadIds,
    /// Not `Send` or `Sync`: the identity belongs to this thread.
    _thread: std::marker::PhantomData<*const ()>,
    /// Borrows the server end it acts for, so that it cannot outlive it.
    _pipe: std::marker::PhantomData<&'a ()>,
}

impl Impersonation<'_> {
    pub(crate) fn begin<'a>(uid: u32, gid: u32, groups: Vec<u32>) -> Result<Impersonation<'a>> {
        if IMPERSONATING.with(|f| f.get()) {
            return Err(Error::new(
                ErrorCode::CannotImpersonate,
                "this thread is already impersonating a client; revert first",
            ));
        }
        let saved =
            sys::thread_ids().map_err(|e| Error::os(e, "cannot read this thread's identity"))?;
        let target = sys::ThreadIds {
            euid: uid,
            egid: gid,
            groups,
        };
        if let Err(e) = sys::assume_thread_ids(&saved, &target) {
            // Undo whatever part took effect before reporting.
            revert_or_abort(&saved);
            return Err(Error::new(
                ErrorCode::PrivilegeNotHeld,
                format!(
                    "cannot act as uid {uid}: impersonating another user needs root or \
                     CAP_SETUID and CAP_SETGID ({e})"
                ),
            )
            .with_source(e));
        }
        IMPERSONATING.with(|f| f.set(true));
        Ok(Impersonation {
            saved,
            _thread: std::marker::PhantomData,
            _pipe: std::marker::PhantomData,
        })
    }
}

fn revert_or_abort(saved: &sys::ThreadIds) {
    if let Err(e) = sys::restore_thread_ids(saved) {
        eprintln!(
            "npipe: cannot revert impersonation ({e}); aborting rather than run as the wrong user"
        );
        std::process::abort();
    }
}

impl Drop for Impersonation<'_> {
    fn drop(&mut self) {
        revert_or_abort(&self.saved);
        IMPERSONATING.with(|f| f.set(false));
    }
}
