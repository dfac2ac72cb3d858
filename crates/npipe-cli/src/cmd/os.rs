//! What the tool needs of the operating system, one version per system:
//! the signals that stop a server, the `--pid-file`, the limit on open
//! files, the shell `--exec` runs commands with, and the user a thread acts
//! as. Everything else in the commands is portable.

use crate::exit::{Failure, Status};

#[cfg(unix)]
pub(crate) use unix::*;
#[cfg(windows)]
pub(crate) use windows::*;

/// Why `--pid-file` could not be written, for both systems.
fn pid_file_refused(path: &std::path::Path, why: &dyn std::fmt::Display) -> Failure {
    Failure::new(
        Status::Usage,
        format!("cannot write the pid file {}: {why}", path.display()),
    )
}

#[cfg(unix)]
mod unix {
    use crate::exit::{Failure, Status};

    /// The shell `--exec` hands its command to, and the flag before it.
    pub(crate) const SHELL: [&str; 2] = ["sh", "-c"];

    /// The whole environment of a command run as the client.
    pub(crate) fn client_env() -> Vec<(String, String)> {
        vec![("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into())]
    }

    /// The directory a command run as the client starts in.
    pub(crate) fn client_dir() -> std::path::PathBuf {
        "/".into()
    }

    /// A command `--exec` started: on Linux always std's child.
    pub(crate) enum Running {
        /// Started by std, as the server or (through npipe) as the client.
        Server(std::process::Child),
    }

    /// Starts `cmd` as the pipe's client, for good.
    pub(crate) fn spawn_as_client(
        conn: &npipe::tokio::PipeServer,
        cmd: &mut std::process::Command,
    ) -> npipe::Result<Running> {
        conn.spawn_as_client(cmd).map(Running::Server)
    }

    impl Running {
        pub(crate) fn id(&self) -> u32 {
            let Running::Server(c) = self;
            c.id()
        }

        /// Its standard input and output, set to be piped.
        pub(crate) fn take_pipes(
            &mut self,
        ) -> (std::process::ChildStdin, std::process::ChildStdout) {
            let Running::Server(c) = self;
            (
                c.stdin.take().expect("piped"),
                c.stdout.take().expect("piped"),
            )
        }

        pub(crate) fn try_wait(&mut self) -> std::io::Result<Option<std::process::ExitStatus>> {
            let Running::Server(c) = self;
            c.try_wait()
        }

        pub(crate) fn kill(&mut self) -> std::io::Result<()> {
            let Running::Server(c) = self;
            c.kill()
        }
    }

    /// `--pid-file`: the server's pid in a file while it serves. The path may
    /// be in a directory others can write (a root server's in `/tmp`, say), so
    /// a symbolic link or anything but a regular file there is refused, never
    /// followed, and only the file this server wrote is removed.
    pub(crate) struct PidFile {
        path: std::path::PathBuf,
        /// The file written: (device, inode).
        id: (u64, u64),
    }

    /// Opening flags that never follow a planted link nor wait on a FIFO.
    fn no_follow() -> i32 {
        use rustix::fs::OFlags;
        (OFlags::NOFOLLOW | OFlags::NONBLOCK).bits() as i32
    }

    impl PidFile {
        pub(crate) fn write(path: &std::path::Path) -> Result<PidFile, Failure> {
            use std::io::Write as _;
            use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
            let refused = |e: &dyn std::fmt::Display| super::pid_file_refused(path, e);
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                // Emptied only once it is known to be ours alone (below).
                .truncate(false)
                .mode(0o644)
                .custom_flags(no_follow())
                .open(path)
                .map_err(|e| refused(&e))?;
            let meta = file.metadata().map_err(|e| refused(&e))?;
            if !meta.is_file() {
                return Err(refused(&"it is not a regular file"));
            }
            // A second link is another name someone else may read or keep; a
            // file of another user's is theirs to rewrite under us.
            if meta.nlink() != 1 || meta.uid() != rustix::process::geteuid().as_raw() {
                return Err(refused(
                    &"it is linked elsewhere or belongs to another user",
                ));
            }
            file.set_len(0).map_err(|e| refused(&e))?;
            writeln!(file, "{}", std::process::id()).map_err(|e| refused(&e))?;
            Ok(PidFile {
                path: path.to_path_buf(),
                id: (meta.dev(), meta.ino()),
            })
        }
    }

    impl Drop for PidFile {
        /// Removes the file if it is still the one written and still names
        /// this process (another server may have written it since).
        fn drop(&mut self) {
            use std::io::Read as _;
            use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
            let Ok(mut file) = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(no_follow())
                .open(&self.path)
            else {
                return;
            };
            let same = file
                .metadata()
                .is_ok_and(|m| m.is_file() && (m.dev(), m.ino()) == self.id);
            let mut text = String::new();
            let ours = same
                && (&mut file).take(32).read_to_string(&mut text).is_ok()
                && text.trim() == std::process::id().to_string();
            if ours {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }

    /// Raises the limit on open files as far as allowed (to at least 65,536
    /// when the process may raise its hard limit, as root may), so that one
    /// server can hold as many clients as the system lets it.
    pub(crate) fn raise_fd_limit() {
        use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
        const WANTED: u64 = 65_536;
        let limit = getrlimit(Resource::Nofile);
        let hard = limit.maximum.map_or(WANTED, |h| h.max(WANTED));
        let raised = Rlimit {
            current: Some(hard),
            maximum: Some(hard),
        };
        if setrlimit(Resource::Nofile, raised).is_err() && limit.current < limit.maximum {
            let soft = Rlimit {
                current: limit.maximum,
                maximum: limit.maximum,
            };
            let _ = setrlimit(Resource::Nofile, soft);
        }
    }

    /// SIGINT, SIGTERM or SIGHUP: stop, so the server removes its socket on the
    /// way out instead of leaving a stale one behind.
    pub(crate) struct Signals(Vec<tokio::signal::unix::Signal>);

    impl Signals {
        pub(crate) fn new() -> Result<Signals, Failure> {
            use tokio::signal::unix::{signal, SignalKind};
            let kinds = [
                SignalKind::interrupt(),
                SignalKind::terminate(),
                SignalKind::hangup(),
            ];
            let signals = kinds
                .into_iter()
                .map(|k| {
                    signal(k).map_err(|e| {
                        Failure::new(Status::Other, format!("cannot handle signals: {e}"))
                    })
                })
                .collect::<Result<_, _>>()?;
            Ok(Signals(signals))
        }

        pub(crate) async fn recv(&mut self) {
            let [a, b, c] = &mut self.0[..] else {
                unreachable!("three signals")
            };
            tokio::select! {
                _ = a.recv() => {}
                _ = b.recv() => {}
                _ = c.recv() => {}
            }
        }
    }
}

#[cfg(windows)]
mod windows {
    use crate::exit::{Failure, Status};

    /// The shell `--exec` hands its command to, and the flag before it.
    pub(crate) const SHELL: [&str; 2] = ["cmd.exe", "/C"];

    /// Where Windows is (`%SystemRoot%`, no secret of the server's), if
    /// it is a full path.
    fn system_root() -> String {
        std::env::var("SystemRoot")
            .ok()
            .filter(|root| std::path::Path::new(root).is_absolute())
            .unwrap_or_else(|| r"C:\Windows".into())
    }

    /// The whole environment of a command run as the client: the system's
    /// own directories, and where the system is (programs fail without it).
    pub(crate) fn client_env() -> Vec<(String, String)> {
        let root = system_root();
        vec![
            ("PATH".into(), format!(r"{root}\System32;{root}")),
            ("SystemRoot".into(), root),
        ]
    }

    /// The directory a command run as the client starts in: the system
    /// drive's root.
    pub(crate) fn client_dir() -> std::path::PathBuf {
        let mut root = std::path::PathBuf::from(system_root());
        while root.pop() {}
        root
    }

    /// A command `--exec` started: by std as the server, or by npipe as
    /// the client (`CreateProcessAsUser`, which std cannot do).
    pub(crate) enum Running {
        Server(std::process::Child),
        Client(npipe::ClientProcess),
    }

    /// Starts `cmd` as the pipe's client, for good. Its standard error is
    /// dropped, as `--exec --impersonate` sends it nowhere.
    pub(crate) fn spawn_as_client(
        conn: &npipe::tokio::PipeServer,
        cmd: &mut std::process::Command,
    ) -> npipe::Result<Running> {
        let mut child = conn.spawn_as_client(cmd)?;
        drop(child.stderr.take());
        Ok(Running::Client(child))
    }

    impl Running {
        pub(crate) fn id(&self) -> u32 {
            match self {
                Running::Server(c) => c.id(),
                Running::Client(c) => c.id(),
            }
        }

        /// Its standard input and output, set to be piped.
        pub(crate) fn take_pipes(
            &mut self,
        ) -> (std::process::ChildStdin, std::process::ChildStdout) {
            let (stdin, stdout) = match self {
                Running::Server(c) => (c.stdin.take(), c.stdout.take()),
                Running::Client(c) => (c.stdin.take(), c.stdout.take()),
            };
            (stdin.expect("piped"), stdout.expect("piped"))
        }

        pub(crate) fn try_wait(&mut self) -> std::io::Result<Option<std::process::ExitStatus>> {
            match self {
                Running::Server(c) => c.try_wait(),
                Running::Client(c) => c.try_wait(),
            }
        }

        pub(crate) fn kill(&mut self) -> std::io::Result<()> {
            match self {
                Running::Server(c) => c.kill(),
                Running::Client(c) => c.kill(),
            }
        }
    }

    /// `--pid-file`: the server's pid in a file while it serves; removed on
    /// the way out if it still names this process. The path may be in a
    /// folder others can write, so the file is always made anew by this
    /// server (`create_new`): whatever was there (an old pid file, a link,
    /// a hard link to someone's file) is removed first, never written
    /// through, and a name that cannot be removed is refused.
    pub(crate) struct PidFile {
        path: std::path::PathBuf,
    }

    impl PidFile {
        pub(crate) fn write(path: &std::path::Path) -> Result<PidFile, Failure> {
            use std::io::Write as _;
            let refused = |e: &dyn std::fmt::Display| super::pid_file_refused(path, e);
            let create = || {
                std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(path)
            };
            let mut file = match create() {
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    // Removing a link removes the link, not its target.
                    std::fs::remove_file(path).map_err(|e| refused(&e))?;
                    create().map_err(|e| refused(&e))?
                }
                other => other.map_err(|e| refused(&e))?,
            };
            writeln!(file, "{}", std::process::id()).map_err(|e| refused(&e))?;
            Ok(PidFile {
                path: path.to_path_buf(),
            })
        }
    }

    impl Drop for PidFile {
        fn drop(&mut self) {
            let ours = std::fs::read_to_string(&self.path)
                .is_ok_and(|t| t.trim() == std::process::id().to_string());
            if ours {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }

    /// Windows has no limit on open handles to raise.
    pub(crate) fn raise_fd_limit() {}

    /// Ctrl+C, Ctrl+Break or the console closing: stop, as SIGINT, SIGTERM
    /// and SIGHUP do on Linux.
    pub(crate) struct Signals {
        c: tokio::signal::windows::CtrlC,
        brk: tokio::signal::windows::CtrlBreak,
        close: tokio::signal::windows::CtrlClose,
    }

    impl Signals {
        pub(crate) fn new() -> Result<Signals, Failure> {
            use tokio::signal::windows::{ctrl_break, ctrl_c, ctrl_close};
            let failed = |e: std::io::Error| {
                Failure::new(Status::Other, format!("cannot handle Ctrl+C: {e}"))
            };
            Ok(Signals {
                c: ctrl_c().map_err(failed)?,
                brk: ctrl_break().map_err(failed)?,
                close: ctrl_close().map_err(failed)?,
            })
        }

        pub(crate) async fn recv(&mut self) {
            tokio::select! {
                _ = self.c.recv() => {}
                _ = self.brk.recv() => {}
                _ = self.close.recv() => {}
            }
        }
    }
}
