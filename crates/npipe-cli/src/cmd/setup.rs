//! `npipe setup`: gives the machine a root-owned pipe directory, made again
//! at every boot, so that no user can take the namespace over by creating
//! `/tmp/.npipe` first (as systemd-tmpfiles does for `/tmp/.X11-unix`).

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use clap::Parser;

use super::CmdResult;
use crate::exit::{Failure, Status};

/// Create the system pipe directory (as root) and have it made at every boot
///
/// Creates /run/npipe owned by root with mode 1777 (sticky, like
/// /tmp/.X11-unix) and installs /etc/tmpfiles.d/npipe.conf, which makes
/// systemd-tmpfiles create it again at boot. npipe prefers that directory
/// whenever it exists (unless NPIPE_DIR is set). Without it pipes live in
/// /tmp/.npipe, which the first user to create it after a reboot owns, and
/// then every other user is locked out. Running it again repairs the owner
/// and mode.
#[derive(Debug, Parser)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// The directory to create (for packaging into a staging root)
    #[arg(long, value_name = "DIR", default_value = npipe::SYSTEM_DIR)]
    pub dir: PathBuf,

    /// Where to install the tmpfiles.d entry
    #[arg(long, value_name = "DIR", default_value = "/etc/tmpfiles.d")]
    pub tmpfiles_dir: PathBuf,
}

/// The `tmpfiles.d(5)` line that makes `dir` at boot: a directory, mode
/// 1777, owned by root.
pub fn tmpfiles_entry(dir: &Path) -> String {
    format!(
        "# The npipe pipe directory: root-owned and sticky, made at every boot.\n\
         # Installed by `npipe setup`.\n\
         d {} 1777 root root -\n",
        dir.display()
    )
}

/// Runs `npipe setup`.
pub fn run(args: &Args) -> CmdResult {
    make_directory(&args.dir)?;
    let conf = args.tmpfiles_dir.join("npipe.conf");
    install_entry(&args.tmpfiles_dir, &conf, &tmpfiles_entry(&args.dir))?;
    println!(
        "{} is ready (root, mode 1777); {} makes it at every boot",
        args.dir.display(),
        conf.display()
    );
    Ok(())
}

fn needs_root(what: String, e: io::Error) -> Failure {
    let status = if e.kind() == io::ErrorKind::PermissionDenied {
        Status::AccessDenied
    } else {
        Status::Other
    };
    Failure::new(status, format!("{what}: {e}")).hint("run it as root: sudo npipe setup")
}

/// Creates `dir` (or repairs it) as root's, mode 1777.
fn make_directory(dir: &Path) -> CmdResult {
    match fs::symlink_metadata(dir) {
        Ok(m) if !m.file_type().is_dir() => {
            return Err(Failure::new(
                Status::AccessDenied,
                format!(
                    "{} exists and is not a directory (a {}); remove it and run setup again",
                    dir.display(),
                    if m.file_type().is_symlink() {
                        "symbolic link"
                    } else {
                        "file"
                    }
                ),
            ))
        }
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => fs::DirBuilder::new()
            .mode(0o1777)
            .create(dir)
            .map_err(|e| needs_root(format!("cannot create {}", dir.display()), e))?,
        Err(e) => return Err(needs_root(format!("cannot look at {}", dir.display()), e)),
    }
    // Owner and mode are set through a descriptor opened without following
    // a symbolic link, so that a link swapped in meanwhile (where --dir is
    // somewhere others may write) is refused, not followed.
    use rustix::fs::{Mode, OFlags};
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = rustix::fs::open(dir, flags, Mode::empty())
        .map_err(|e| needs_root(format!("cannot open {}", dir.display()), e.into()))?;
    let root = Some(rustix::process::Uid::ROOT);
    rustix::fs::fchown(&fd, root, Some(rustix::process::Gid::ROOT))
        .map_err(|e| needs_root(format!("cannot give {} to root", dir.display()), e.into()))?;
    // mkdir's mode went through the umask; set it exactly.
    rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o1777)).map_err(|e| {
        needs_root(
            format!("cannot set the mode of {}", dir.display()),
            e.into(),
        )
    })?;
    let st = rustix::fs::fstat(&fd)
        .map_err(|e| needs_root(format!("cannot look at {}", dir.display()), e.into()))?;
    if st.st_uid != 0 || st.st_mode & 0o7777 != 0o1777 {
        return Err(Failure::new(
            Status::Other,
            format!(
                "{} changed while setup was making it; run it again",
                dir.display()
            ),
        ));
    }
    Ok(())
}

/// Writes the tmpfiles.d entry (replacing an older one of ours).
fn install_entry(tmpfiles_dir: &Path, conf: &Path, entry: &str) -> CmdResult {
    fs::create_dir_all(tmpfiles_dir)
        .map_err(|e| needs_root(format!("cannot create {}", tmpfiles_dir.display()), e))?;
    fs::write(conf, entry)
        .map_err(|e| needs_root(format!("cannot write {}", conf.display()), e))?;
    fs::set_permissions(conf, fs::Permissions::from_mode(0o644))
        .map_err(|e| needs_root(format!("cannot set the mode of {}", conf.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_entry_is_one_tmpfiles_line_for_the_directory() {
        let entry = tmpfiles_entry(Path::new("/run/npipe"));
        let lines: Vec<_> = entry.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(lines, ["d /run/npipe 1777 root root -"]);
    }
}
