//! Which files a gateway may believe: OpenSSH's `StrictModes` for its CA,
//! certificate, key and configuration. Whoever can change the CA issues
//! themselves a principal; whoever can change the configuration maps one
//! to any user; whoever can read the key poses as the gateway. So each file,
//! and every directory above it (as named and as resolved), must belong to
//! root or the gateway's own user and be writable by no one else (a sticky
//! directory, as `/tmp`, excepted: others cannot replace what is not
//! theirs), and a key may not be readable by others.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, ErrorCode, Result};
use crate::namespace::{open_to_others, OpenTo};

/// What a file holds, for the checks and the messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Anyone may read it (a certificate, a CA, a configuration).
    Public,
    /// Only its owner (and group) may read it: a private key.
    Secret,
}

/// Refuses `path` (`what` names it in the message) unless only root and
/// the user `me` can change it, or, for a secret, read it.
pub(crate) fn check(path: &Path, what: &str, kind: Kind, me: u32) -> Result<()> {
    let absolute = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|e| Error::os(e, "cannot read the current directory"))?
            .join(path)
    };
    let resolved = std::fs::canonicalize(path)
        .map_err(|e| Error::os(e, &format!("cannot use {} as {what}", path.display())))?;
    // The directories as named (a link in one another user controls could
    // be pointed elsewhere later) and as resolved (where the file is).
    for dir in absolute
        .ancestors()
        .skip(1)
        .chain(resolved.ancestors().skip(1))
    {
        let meta = std::fs::symlink_metadata(dir)
            .map_err(|e| Error::os(e, &format!("cannot inspect {}", dir.display())))?;
        if meta.file_type().is_symlink() {
            // Its target is among the resolved directories.
            continue;
        }
        judge(&meta, me, true).map_err(|why| refusal(path, what, dir, &why))?;
    }
    let meta = std::fs::metadata(&resolved)
        .map_err(|e| Error::os(e, &format!("cannot inspect {}", resolved.display())))?;
    judge(&meta, me, false).map_err(|why| refusal(path, what, &resolved, &why))?;
    // Its group may read a key only if the group is root's or the
    // gateway's own (a key `root:users 0640` is every user's).
    let group_reads =
        meta.mode() & 0o040 != 0 && meta.gid() != 0 && meta.gid() != crate::sys::effective_gid();
    if kind == Kind::Secret && (meta.mode() & 0o007 != 0 || group_reads) {
        let who = if group_reads {
            format!("the members of group {}", meta.gid())
        } else {
            "other users".to_string()
        };
        return Err(Error::new(
            ErrorCode::AccessDenied,
            format!(
                "refusing {what} {}: {who} may read it (mode {:o}), so they could pose \
                 as this gateway; `chmod 600 {}` and make a new key if it has been read",
                path.display(),
                meta.mode() & 0o7777,
                path.display()
            ),
        ));
    }
    Ok(())
}

/// Why a file (or directory) may be changed by someone other than root or
/// `me`, if it may: the rule the pipe directory's parents are held to.
fn judge(meta: &std::fs::Metadata, me: u32, sticky: bool) -> std::result::Result<(), String> {
    match open_to_others(meta.uid(), meta.mode(), me, sticky) {
        None => Ok(()),
        Some(OpenTo::Owner(owner)) => Err(format!(
            "it belongs to uid {owner}, not to root or uid {me}"
        )),
        Some(OpenTo::Writers) => Err(format!(
            "its group or other users may write to it (mode {:o})",
            meta.mode() & 0o7777
        )),
    }
}

fn refusal(path: &Path, what: &str, culprit: &Path, why: &str) -> Error {
    let which = if culprit == path {
        String::new()
    } else {
        format!(" (through {})", culprit.display())
    };
    Error::new(
        ErrorCode::AccessDenied,
        format!(
            "refusing {what} {}{which}: {why}, so someone else could change who reaches this \
             host's pipes; keep it where only root (or the gateway's user) can write, e.g. \
             `chown root: FILE && chmod go-w FILE` and the same for its directories",
            path.display()
        ),
    )
}

/// The paths of `files` with what each is, in the order checked.
pub(crate) fn of(files: &super::TlsFiles) -> [(PathBuf, &'static str, Kind); 3] {
    [
        (files.ca.clone(), "the CA certificate", Kind::Public),
        (
            files.cert.clone(),
            "the gateway's certificate",
            Kind::Public,
        ),
        (files.key.clone(), "the gateway's key", Kind::Secret),
    ]
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    /// A directory of this test's own under the system's temporary one
    /// (sticky, so it passes), mode 0700.
    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("npipe-trust-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        dir
    }

    fn file(dir: &Path, name: &str, mode: u32) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, "x").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    fn me() -> u32 {
        crate::sys::effective_uid()
    }

    #[test]
    fn files_only_root_and_the_gateway_can_change_pass() {
        let dir = scratch("ok");
        check(&file(&dir, "ca.crt", 0o644), "the CA", Kind::Public, me()).unwrap();
        check(&file(&dir, "gw.key", 0o600), "the key", Kind::Secret, me()).unwrap();
        check(&file(&dir, "gw2.key", 0o640), "the key", Kind::Secret, me()).unwrap();
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_file_others_may_write_is_refused() {
        let dir = scratch("writable");
        let ca = file(&dir, "ca.crt", 0o646);
        let e = check(&ca, "the CA", Kind::Public, me()).unwrap_err();
        assert_eq!(e.code(), ErrorCode::AccessDenied);
        assert!(e.message().contains("may write"), "{e}");
        let ca = file(&dir, "ca2.crt", 0o664);
        check(&ca, "the CA", Kind::Public, me()).unwrap_err();
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_key_others_may_read_is_refused() {
        let dir = scratch("key");
        let key = file(&dir, "gw.key", 0o644);
        let e = check(&key, "the key", Kind::Secret, me()).unwrap_err();
        assert!(e.message().contains("chmod 600"), "{e}");
        // The same file is fine as a certificate.
        check(&key, "a certificate", Kind::Public, me()).unwrap();
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_directory_others_may_write_is_refused_unless_sticky() {
        let dir = scratch("dir");
        let open = dir.join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let ca = file(&open, "ca.crt", 0o644);
        let e = check(&ca, "the CA", Kind::Public, me()).unwrap_err();
        assert!(e.message().contains("through"), "names the directory: {e}");
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).unwrap();
        check(&ca, "the CA", Kind::Public, me()).unwrap();
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_link_is_judged_where_it_leads_and_where_it_is() {
        let dir = scratch("link");
        let open = dir.join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let target = file(&open, "ca.crt", 0o644);
        // A safe name leading into a directory anyone may write to.
        let link = dir.join("ca.crt");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        check(&link, "the CA", Kind::Public, me()).unwrap_err();
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_key_its_group_may_read_is_refused_unless_the_group_is_roots_or_ours() {
        let dir = scratch("key-group");
        let key = file(&dir, "gw.key", 0o640);
        // Made by this process: its group is ours.
        check(&key, "the key", Kind::Secret, me()).unwrap();
        if me() == 0 {
            // Another group (1: daemon) may read it: refused.
            std::os::unix::fs::chown(&key, None, Some(1)).unwrap();
            let e = check(&key, "the key", Kind::Secret, me()).unwrap_err();
            assert!(e.message().contains("group 1"), "{e}");
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_file_of_another_user_is_refused() {
        let dir = scratch("owner");
        let ca = file(&dir, "ca.crt", 0o644);
        // Judged as though the gateway ran as someone else: the file is
        // then another user's (its owner is neither root nor "me").
        let owner = std::fs::metadata(&ca).unwrap().uid();
        if owner == 0 {
            // Root owns everything this test makes: judge as uid 65534
            // a file chowned to 1 (daemon) instead.
            std::os::unix::fs::chown(&ca, Some(1), None).unwrap();
            let e = check(&ca, "the CA", Kind::Public, 65534).unwrap_err();
            assert!(e.message().contains("belongs to uid 1"), "{e}");
        } else {
            let e = check(&ca, "the CA", Kind::Public, owner + 1).unwrap_err();
            assert!(
                e.message().contains(&format!("belongs to uid {owner}")),
                "{e}"
            );
        }
        std::fs::remove_dir_all(dir).unwrap();
    }
}
