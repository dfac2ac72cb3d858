//! The local namespace: one directory holding a socket per pipe name.
//!
//! `$NPIPE_DIR`; else `/run/npipe` if it exists (made by `npipe setup` as
//! root, at every boot through `tmpfiles.d`); else `/tmp/.npipe`, created
//! mode 1777 like `/tmp/.X11-unix`. npipe refuses a directory that is not
//! owned by root or the current user, or that others may write to without
//! the sticky bit, and one with such a parent (OpenSSH's `StrictModes`):
//! whoever controls the directory or a parent controls every name in it. The
//! directory is opened once, walking down from `/` by descriptor, and every
//! later operation goes through that descriptor (`*at` calls, and
//! `/proc/self/fd/N/NAME` for `bind` and `connect`), so what was checked is
//! what is used; only where no other user can change what the path names
//! (no ancestor writable by others, as for `/run/npipe`) does `connect`
//! take the path. Sockets are created atomically (bound under a temporary
//! name, then hard-linked to the final one, which fails if the name exists),
//! so two servers racing for a name cannot both win; a leftover socket whose
//! server died (connect refused) is replaced by an atomic exchange that is
//! undone if what it took out was not that socket, with no lock anyone else
//! could hold; a live socket is never replaced.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::error::{Error, ErrorCode, Result};
use crate::name::PipeName;
use crate::sys::{self, Dir, FileInfo, FileKind, Socket};

/// The namespace directory when `NPIPE_DIR` is not set and the system
/// directory does not exist.
pub const DEFAULT_DIR: &str = "/tmp/.npipe";

/// The system's namespace directory, root-owned, mode 1777, made by
/// `npipe setup` (and at every boot by its `tmpfiles.d` entry). Preferred
/// when it exists: no user can take it over, as the first user to create
/// `/tmp/.npipe` after a reboot can.
pub const SYSTEM_DIR: &str = "/run/npipe";

/// The namespace directory in effect: `$NPIPE_DIR`, else [`SYSTEM_DIR`] if
/// it exists, else [`DEFAULT_DIR`].
pub fn directory() -> PathBuf {
    choose_directory(std::env::var_os("NPIPE_DIR"), || {
        sys::stat_nofollow(Path::new(SYSTEM_DIR)).is_ok()
    })
}

/// The rule behind [`directory`], given `NPIPE_DIR` and whether the system
/// directory exists (asked only if it matters).
fn choose_directory(
    npipe_dir: Option<std::ffi::OsString>,
    system_exists: impl FnOnce() -> bool,
) -> PathBuf {
    match npipe_dir.filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None if system_exists() => PathBuf::from(SYSTEM_DIR),
        None => PathBuf::from(DEFAULT_DIR),
    }
}

/// A new server's socket, bound and listening under its pipe's name.
#[derive(Debug)]
pub(crate) struct ServerSocket {
    pub namespace: Namespace,
    /// Listening, non-blocking.
    pub socket: Socket,
    pub published: Published,
    /// The user the server runs as: the descriptor's default owner.
    pub server_uid: u32,
}

/// What every front end does to create a pipe: checks the options and the
/// name, and binds the socket with the file mode the descriptor allows.
pub(crate) fn create_server_socket(
    name: &PipeName,
    opts: &crate::options::ServerOptions,
) -> Result<ServerSocket> {
    opts.validate()?;
    if !name.is_local() {
        return Err(Error::new(
            ErrorCode::InvalidName,
            format!("{name}: a server can only create pipes on this machine (\\\\.\\pipe\\...)"),
        ));
    }
    let server_uid = sys::effective_uid();
    let namespace = Namespace::open_or_create()?;
    let mode = opts.security.socket_mode(crate::LocalUser(server_uid));
    let (socket, published) = namespace.bind(name, opts.first_instance, mode)?;
    if let Err(e) = socket.set_nonblocking(true) {
        namespace.remove(&published);
        return Err(Error::os(
            e,
            "cannot make the listening socket non-blocking",
        ));
    }
    Ok(ServerSocket {
        namespace,
        socket,
        published,
        server_uid,
    })
}

/// The open, checked namespace directory.
#[derive(Debug)]
pub(crate) struct Namespace {
    dir: Dir,
}

/// A pipe's socket file as created, to remove it only if it is still ours.
#[derive(Debug)]
pub(crate) struct Published {
    pub file: String,
    dev: u64,
    ino: u64,
}

fn ns_error(code: ErrorCode, msg: String, err: Option<io::Error>) -> Error {
    let e = Error::new(code, msg);
    match err {
        Some(err) => e.with_source(err),
        None => e,
    }
}

impl Namespace {
    /// Opens the namespace, creating it if it does not exist (servers).
    pub fn open_or_create() -> Result<Namespace> {
        let path = directory();
        match Dir::open_walking(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                match Dir::create(&path, 0o1777) {
                    Ok(()) => {
                        let dir = Namespace::open_checked(path.clone())?;
                        // mkdir's mode went through the umask; set it exactly.
                        dir.dir.chmod(0o1777).map_err(|e| {
                            Error::os(e, &format!("cannot set the mode of {}", path.display()))
                        })?;
                        Ok(dir)
                    }
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                        Namespace::open_checked(path)
                    }
                    Err(e) => Err(Error::os(
                        e,
                        &format!("cannot create the pipe directory {}", path.display()),
                    )),
                }
            }
            _ => Namespace::open_checked(path),
        }
    }

    /// Opens the namespace for a client: a missing directory means no pipe exists.
    pub fn open_existing() -> Result<Namespace> {
        Namespace::open_checked(directory())
    }

    /// Runs a client's `connect` in the namespace, for clients that connect
    /// often: the directory a previous call opened and checked is reused
    /// while `$NPIPE_DIR` and the effective uid are what they were then
    /// (another uid, as under impersonation, checks afresh), and until a
    /// pipe is not found in it. Then it is opened and checked again, and
    /// `connect` tried once more: the directory may have been replaced
    /// (removed and made again, by root or its owner, the only users who
    /// can), or `/run/npipe` made since (`npipe setup`). So the pipe
    /// directory costs a connect no syscall but `geteuid` while pipes are
    /// found; revalidating it by path on every connect (two `stat`s) was
    /// 2 % of `npipe bench connect_rate`, and opening it afresh 3.5 %. A
    /// connect through the cached directory always reaches a checked
    /// directory: the cache can only be late, never wrong.
    pub fn client_connect<T>(connect: impl Fn(&Namespace) -> Result<T>) -> Result<T> {
        static CACHE: Mutex<Option<CheckedNamespace>> = Mutex::new(None);
        let npipe_dir = std::env::var_os("NPIPE_DIR");
        let euid = sys::effective_uid();
        let cached = CACHE
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .filter(|c| c.euid == euid && c.npipe_dir == npipe_dir)
            .map(|c| Arc::clone(&c.namespace));
        if let Some(namespace) = cached {
            match connect(&namespace) {
                Err(e) if e.code() == ErrorCode::FileNotFound => {}
                done => return done,
            }
        }
        let namespace = Arc::new(Namespace::open_existing()?);
        *CACHE.lock().unwrap_or_else(PoisonError::into_inner) = Some(CheckedNamespace {
            namespace: Arc::clone(&namespace),
            npipe_dir,
            euid,
        });
        connect(&namespace)
    }

    fn open_checked(path: PathBuf) -> Result<Namespace> {
        let (mut dir, ancestors) =
            Dir::open_walking(&path).map_err(|e| match e.raw_os_error() {
                Some(libc::ENOENT) => ns_error(
                    ErrorCode::FileNotFound,
                    format!(
                        "no pipes exist: the pipe directory {} does not exist",
                        path.display()
                    ),
                    Some(e),
                ),
                Some(libc::ELOOP) | Some(libc::ENOTDIR) => ns_error(
                    ErrorCode::AccessDenied,
                    format!(
                        "refusing the pipe directory {}: it is a symbolic link or not a directory \
                     (remove it, or set NPIPE_DIR)",
                        path.display()
                    ),
                    Some(e),
                ),
                _ => Error::os(
                    e,
                    &format!("cannot open the pipe directory {}", path.display()),
                ),
            })?;
        let info = dir
            .info()
            .map_err(|e| Error::os(e, &format!("cannot stat {}", path.display())))?;
        let me = sys::effective_uid();
        for (parent, pinfo) in &ancestors {
            check_parent(&path, parent, pinfo, me)?;
        }
        // Checked above: every ancestor is root's or ours. If none is also
        // writable by others, no one else can make the path name another
        // directory, and clients may connect by it (cheaper than through
        // the descriptor).
        if ancestors.iter().all(|(_, p)| p.mode & 0o022 == 0) {
            dir.trust_path();
        }
        match open_to_others(info.uid, info.mode, me, true) {
            None => {}
            Some(OpenTo::Owner(owner)) => {
                return Err(ns_error(
                    ErrorCode::AccessDenied,
                    format!(
                        "refusing the pipe directory {}: it belongs to {}, not to root or you \
                         (uid {me}), and whoever owns it controls every pipe name in it. Run \
                         `sudo npipe setup` once to give this machine a root-owned pipe \
                         directory ({SYSTEM_DIR}, made again at every boot), or set NPIPE_DIR \
                         to a directory of your own",
                        path.display(),
                        describe_user(owner)
                    ),
                    None,
                ));
            }
            Some(OpenTo::Writers) => {
                return Err(ns_error(
                    ErrorCode::AccessDenied,
                    format!(
                        "refusing the pipe directory {}: others may write to it and it lacks the \
                     sticky bit, so they could replace pipes (chmod 1777 it)",
                        path.display()
                    ),
                    None,
                ))
            }
        }
        Ok(Namespace { dir })
    }

    /// Binds a listening socket under the pipe's name, atomically. A live
    /// server on the name makes this fail: *access denied* with
    /// `first_instance`, else *pipe busy* (instances of one name belong to one
    /// process here).
    pub fn bind(
        &self,
        name: &PipeName,
        first_instance: bool,
        mode: u32,
    ) -> Result<(Socket, Published)> {
        let file = name.file_name();
        let (socket, tmp) = self.bind_temporary()?;
        let ours = match self.ready_to_publish(&socket, &tmp, mode) {
            Ok(info) => info,
            Err(e) => {
                let _ = self.dir.unlink(&tmp);
                return Err(e);
            }
        };
        let result = self.publish(&tmp, &file, name, first_instance, &ours);
        self.remove_temporary(&tmp, &ours);
        let (dev, ino) = result?;
        self.write_name_note(&file, name);
        Ok((socket, Published { file, dev, ino }))
    }

    /// Beside a socket whose file name is a hash (`~...`), a note of the
    /// pipe's name as created, so that a listing can name the pipe even
    /// once its server is dead. Best effort: a pipe works without it (a
    /// note another user left under that name stays theirs, and wrong
    /// notes are never believed: see [`recorded_name`](Self::recorded_name)).
    fn write_name_note(&self, file: &str, name: &PipeName) {
        if let Some(note) = name_note(file) {
            let tmp = format!(".{note}.{}", unique_suffix());
            let _ = self
                .dir
                .write_file(&tmp, &note, name.name().as_bytes(), 0o644);
        }
    }

    /// The name a hashed socket's pipe was created with, from its note: only
    /// a note owned by the socket's owner counts. For a plain file name,
    /// the name is the file's.
    pub fn recorded_name(&self, file: &str) -> Option<String> {
        let Some(note) = name_note(file) else {
            return Some(file.to_string());
        };
        let owner = self.dir.stat(file).ok()?.uid;
        let (uid, bytes) = self.dir.read_small_file(&note, NAME_NOTE_MAX).ok()?;
        let named = (uid == owner).then(|| String::from_utf8(bytes).ok())??;
        // Believed only if it names a pipe whose socket is this very file:
        // a note linked or copied from another pipe's names something else.
        let parsed = PipeName::parse(&named).ok()?;
        (parsed.file_name() == file).then_some(named)
    }

    /// Removes the name note of a socket file just removed.
    fn remove_name_note(&self, file: &str) {
        if let Some(note) = name_note(file) {
            let _ = self.dir.unlink(&note);
        }
    }

    /// Gives the socket bound at `tmp` its file mode and starts it
    /// listening, before anyone can reach it by the pipe's name; what `tmp`
    /// names, to tell our socket from others later.
    fn ready_to_publish(&self, socket: &Socket, tmp: &str, mode: u32) -> Result<FileInfo> {
        self.dir
            .chmod_entry(tmp, mode)
            .map_err(|e| self.io_error(e, "cannot set the socket's mode in"))?;
        socket
            .listen(1024)
            .map_err(|e| Error::os(e, "cannot listen on the pipe's socket"))?;
        self.dir
            .stat(tmp)
            .map_err(|e| self.io_error(e, "cannot stat the new socket in"))
    }

    /// Removes the temporary name, which now names our socket (not
    /// published), the dead socket ours replaced, or, had undoing an
    /// exchange failed in a race of several servers, another server's live
    /// socket: that one is never removed.
    fn remove_temporary(&self, tmp: &str, ours: &FileInfo) {
        let keep = match self.dir.stat(tmp) {
            Ok(now) if (now.dev, now.ino) != (ours.dev, ours.ino) => {
                matches!(self.probe(tmp), Ok(Probe::Live(_)))
            }
            _ => false,
        };
        if !keep {
            let _ = self.dir.unlink(tmp);
        }
    }

    fn bind_temporary(&self) -> Result<(Socket, String)> {
        let socket = Socket::stream().map_err(|e| Error::os(e, "cannot create a socket"))?;
        let mut last = None;
        for _ in 0..16 {
            let tmp = format!(".tmp.{}.{}", sys::process_id(), unique_suffix());
            match socket.bind_in(&self.dir, &tmp) {
                Ok(()) => return Ok((socket, tmp)),
                // Someone planted a file under our temporary name: pick another.
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => last = Some(e),
                Err(e) => return Err(self.io_error(e, "cannot bind a socket in")),
            }
        }
        Err(self.io_error(
            last.expect("loop ran"),
            "cannot find a free temporary name in",
        ))
    }

    fn io_error(&self, e: io::Error, what: &str) -> Error {
        Error::os(
            e,
            &format!("{what} the pipe directory {}", self.dir.path().display()),
        )
    }

    /// Links `tmp` to `file`, replacing a dead server's socket if need be;
    /// returns the published socket file's device and inode.
    fn publish(
        &self,
        tmp: &str,
        file: &str,
        name: &PipeName,
        first_instance: bool,
        ours: &FileInfo,
    ) -> Result<(u64, u64)> {
        // The common case: the link takes a free name, or fails because the
        // name exists. No lock is taken, ever: a lock in a directory everyone
        // may open is a lock anyone may hold for ever.
        for _ in 0..4 {
            match self.dir.link(tmp, file) {
                Ok(()) => return Ok((ours.dev, ours.ino)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    if self.reclaim(tmp, file, name, first_instance)? {
                        return Ok((ours.dev, ours.ino));
                    }
                }
                Err(e) => return Err(self.io_error(e, "cannot create the pipe in")),
            }
        }
        Err(Error::new(
            ErrorCode::PipeBusy,
            format!("{name}: another server keeps taking this name; try again"),
        ))
    }

    /// The name exists: fail if a live server holds it; if a dead one left
    /// it behind, put our socket (`tmp`) in its place. `Ok(true)`: ours is
    /// published; `Ok(false)`: the name changed meanwhile, try the link
    /// again.
    ///
    /// The replacement is an atomic exchange of the two names, verified
    /// after: `tmp` then names what was taken out, and if that is not the
    /// dead socket that was probed (another server reclaimed the name in
    /// between), the exchange is undone. Two servers therefore never both
    /// end up published, and no lock is needed.
    fn reclaim(
        &self,
        tmp: &str,
        file: &str,
        name: &PipeName,
        first_instance: bool,
    ) -> Result<bool> {
        let info = match self.dir.stat(file) {
            Ok(info) => info,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(self.io_error(e, "cannot stat a pipe in")),
        };
        if info.kind != FileKind::Socket {
            return Err(Error::new(
                ErrorCode::AccessDenied,
                format!(
                    "{name}: the name is taken by a {} owned by uid {} at {}, not by a pipe; \
                     npipe will not replace it",
                    match info.kind {
                        FileKind::Directory => "directory",
                        FileKind::Symlink => "symbolic link",
                        _ => "file",
                    },
                    info.uid,
                    self.dir.path().join(file).display()
                ),
            ));
        }
        match self.probe(file)? {
            Probe::Gone => return Ok(false),
            Probe::Live(who) => return Err(served(name, first_instance, &who)),
            Probe::Dead => {}
        }
        match self.dir.exchange(tmp, file) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                // A file system without RENAME_EXCHANGE: remove the dead
                // socket if it is still the one probed, and link again.
                self.unlink_if_same(file, &info)
                    .map_err(|e| self.cannot_remove(name, file, &info, e))?;
                return Ok(false);
            }
            Err(e) => return Err(self.cannot_remove(name, file, &info, e)),
        }
        let taken_out = self.dir.stat(tmp);
        if matches!(&taken_out, Ok(t) if t.dev == info.dev && t.ino == info.ino) {
            // `tmp` now names the dead socket; the caller removes `tmp`.
            return Ok(true);
        }
        // Someone else's socket came out: give its name back.
        self.dir
            .exchange(tmp, file)
            .map_err(|e| self.io_error(e, "cannot undo an exchange in"))?;
        Ok(false)
    }

    /// Removes `file` if it is still the file `seen` describes: moved aside
    /// under a fresh name first, then checked, and moved back if it was not.
    fn unlink_if_same(&self, file: &str, seen: &FileInfo) -> io::Result<()> {
        let aside = format!(".dead.{}.{}", sys::process_id(), unique_suffix());
        self.dir.rename_noreplace(file, &aside)?;
        match self.dir.stat(&aside) {
            Ok(now) if now.dev == seen.dev && now.ino == seen.ino => self.dir.unlink(&aside),
            _ => {
                let back = self.dir.rename_noreplace(&aside, file);
                if back.is_err() {
                    // The name was taken meanwhile: what we moved aside has
                    // lost it anyway; do not leave it lying around.
                    let _ = self.dir.unlink(&aside);
                }
                Ok(())
            }
        }
    }

    fn cannot_remove(&self, name: &PipeName, file: &str, info: &FileInfo, e: io::Error) -> Error {
        Error::os(
            e,
            &format!(
                "{name}: a dead server of uid {} left its socket at {} and you may \
                 not remove it; ask that user or root to delete it",
                info.uid,
                self.dir.path().join(file).display()
            ),
        )
        .with_code(ErrorCode::AccessDenied)
    }

    /// Whether a server listens on `file`.
    fn probe(&self, file: &str) -> Result<Probe> {
        let probe = self.probe_socket()?;
        match probe.connect_in(&self.dir, file) {
            // A full backlog (EAGAIN) is a live server too, just a busy one.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                Ok(Probe::Live(" (and its server is very busy)".into()))
            }
            Ok(()) => Ok(Probe::Live(
                probe
                    .peer_cred()
                    .map(|c| format!(" by pid {} (uid {})", c.pid, c.user.0))
                    .unwrap_or_default(),
            )),
            Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => Ok(Probe::Dead),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Probe::Gone),
            Err(e) => Err(self.io_error(e, "cannot probe an existing pipe in")),
        }
    }

    /// Removes the sockets of dead servers (connect refused); a socket that
    /// changed since it was probed (a new server took the name) is left
    /// alone. Returns the removed file names, and the ones that could not be
    /// removed (another user's, in the sticky directory) with why.
    pub fn prune_stale(&self) -> Result<Pruned> {
        let mut pruned = Pruned::default();
        for file in self.socket_files()? {
            let Ok(before) = self.dir.stat(&file) else {
                continue;
            };
            if !matches!(self.probe(&file), Ok(Probe::Dead)) {
                continue; // live, or gone already
            }
            match self.unlink_if_same(&file, &before) {
                Ok(()) => {
                    self.remove_name_note(&file);
                    pruned.removed.push(file);
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => pruned
                    .kept
                    .push((file, format!("owned by uid {}: {e}", before.uid))),
            }
        }
        Ok(pruned)
    }

    /// A socket to see whether a server listens on a name: non-blocking, so
    /// that a squatter with a full backlog cannot make the probe wait.
    fn probe_socket(&self) -> Result<Socket> {
        let probe = Socket::stream().map_err(|e| Error::os(e, "cannot create a socket"))?;
        probe
            .set_nonblocking(true)
            .map_err(|e| Error::os(e, "cannot make a socket non-blocking"))?;
        Ok(probe)
    }

    /// Removes a pipe's socket if it is still the one we created.
    pub fn remove(&self, bound: &Published) {
        if let Ok(info) = self.dir.stat(&bound.file) {
            if info.dev == bound.dev
                && info.ino == bound.ino
                && self.dir.unlink(&bound.file).is_ok()
            {
                self.remove_name_note(&bound.file);
            }
        }
    }

    /// Connects a new socket to the pipe's file.
    pub fn connect(&self, name: &PipeName) -> Result<Socket> {
        self.connect_file(&name.file_name())
            .map_err(|e| not_served(name, e))
    }

    /// Connects a new non-blocking socket to the pipe's file without waiting:
    /// `Ok(None)` while the server's connection backlog is full (try again
    /// shortly). For the async client, which must never block its thread.
    #[cfg(feature = "tokio")]
    pub fn try_connect(&self, name: &PipeName) -> Result<Option<Socket>> {
        let file = name.file_name();
        self.refuse_symlink(&file)?;
        let socket = Socket::stream().map_err(|e| Error::os(e, "cannot create a socket"))?;
        socket
            .set_nonblocking(true)
            .map_err(|e| Error::os(e, "cannot make a socket non-blocking"))?;
        match socket.connect_in(&self.dir, &file) {
            Ok(()) => Ok(Some(socket)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(not_served(
                name,
                Error::os(e, &format!("cannot connect to {file}")),
            )),
        }
    }

    /// Connects to a file in the namespace for a query, giving up at
    /// `deadline` while its server's backlog is full: anyone can bind a
    /// socket that never accepts, and a blocking connect to it would wait
    /// for ever (a listing must not).
    pub fn connect_file_by(&self, file: &str, deadline: Instant) -> Result<Socket> {
        self.refuse_symlink(file)?;
        loop {
            let socket = self.probe_socket()?;
            match socket.connect_in(&self.dir, file) {
                Ok(()) => {
                    socket
                        .set_nonblocking(false)
                        .map_err(|e| Error::os(e, "cannot make a socket blocking"))?;
                    return Ok(socket);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if Instant::now() >= deadline {
                        return Err(Error::new(
                            ErrorCode::Timeout,
                            format!(
                                "{file}: its server takes no connections (its backlog is full)"
                            ),
                        ));
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => return Err(Error::os(e, &format!("cannot connect to {file}"))),
            }
        }
    }

    /// Connects a new socket to a file in the namespace (see
    /// [`refuse_symlink`](Self::refuse_symlink)).
    pub fn connect_file(&self, file: &str) -> Result<Socket> {
        self.refuse_symlink(file)?;
        let socket = Socket::stream().map_err(|e| Error::os(e, "cannot create a socket"))?;
        socket
            .connect_in(&self.dir, file)
            .map_err(|e| Error::os(e, &format!("cannot connect to {file}")))?;
        Ok(socket)
    }

    /// Every connect goes through here first: a symbolic link in the
    /// namespace is refused rather than followed, as only a server's own
    /// socket is a pipe, and a link could redirect clients to anything.
    fn refuse_symlink(&self, file: &str) -> Result<()> {
        if let Ok(info) = self.dir.stat(file) {
            if info.kind == FileKind::Symlink {
                return Err(Error::new(
                    ErrorCode::AccessDenied,
                    format!(
                        "{} is a symbolic link (owned by uid {}), not a pipe: refusing to follow it",
                        self.dir.path().join(file).display(),
                        info.uid
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The socket files in the namespace (temporary files left out).
    pub fn socket_files(&self) -> Result<Vec<String>> {
        let entries = self
            .dir
            .entries()
            .map_err(|e| self.io_error(e, "cannot read"))?;
        let mut files: Vec<String> = entries
            .into_iter()
            .filter(|(n, k)| *k == FileKind::Socket && !n.starts_with('.'))
            .map(|(n, _)| n)
            .collect();
        files.sort();
        Ok(files)
    }
}

/// A namespace a client checked, and what its directory was when checked.
struct CheckedNamespace {
    namespace: Arc<Namespace>,
    /// `$NPIPE_DIR` when it was opened.
    npipe_dir: Option<std::ffi::OsString>,
    /// The effective uid it was checked for.
    euid: u32,
}

/// What [`remove_stale_pipes`](crate::remove_stale_pipes) did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pruned {
    /// The stale socket files removed.
    pub removed: Vec<String>,
    /// Stale socket files that could not be removed, with why (another
    /// user's, in the sticky directory).
    pub kept: Vec<(String, String)>,
}

/// The note beside a hashed socket file that keeps its pipe's name.
fn name_note(file: &str) -> Option<String> {
    file.starts_with('~').then(|| format!("{file}.name"))
}

/// The longest name note believed: a name's bytes, and room to spare.
const NAME_NOTE_MAX: usize = 4096;

/// What a probe connect found on a name.
enum Probe {
    /// A server accepts there (with who, for the error).
    Live(String),
    /// A socket no one listens on.
    Dead,
    /// Nothing there any more.
    Gone,
}

/// The error for a name a live server holds.
fn served(name: &PipeName, first_instance: bool, who: &str) -> Error {
    let (code, how) = if first_instance {
        (ErrorCode::AccessDenied, "and first_instance was asked for")
    } else {
        (ErrorCode::PipeBusy, "and only one process may serve a name")
    };
    Error::new(code, format!("{name} is already being served{who}, {how}"))
}

/// A suffix no other name made by this process has.
fn unique_suffix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{}.{nanos:x}", COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// A uid with its user name, for messages.
pub(crate) fn describe_user(uid: u32) -> String {
    match sys::user_name(uid) {
        Some(n) => format!("{n} (uid {uid})"),
        None => format!("uid {uid}"),
    }
}

/// Who besides root and `me` could change a file or directory with this
/// owner and mode (OpenSSH's `StrictModes`): another owner, or its group
/// and others through its write bits, unless `sticky_counts` and it is a
/// sticky directory (where no one may replace what is not theirs).
pub(crate) fn open_to_others(uid: u32, mode: u32, me: u32, sticky_counts: bool) -> Option<OpenTo> {
    if uid != 0 && uid != me {
        return Some(OpenTo::Owner(uid));
    }
    let sticky = sticky_counts && mode & 0o1000 != 0;
    (mode & 0o022 != 0 && !sticky).then_some(OpenTo::Writers)
}

/// What [`open_to_others`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OpenTo {
    /// It belongs to this uid.
    Owner(u32),
    /// Its group or other users may write to it.
    Writers,
}

/// OpenSSH's `StrictModes` for each parent of the pipe directory: it must
/// belong to root or the current user, and if others may write to it, it
/// must be sticky (as `/tmp` is), or they could swap the pipe directory for
/// one of their own.
fn check_parent(dir: &Path, parent: &Path, info: &FileInfo, me: u32) -> Result<()> {
    let why = match open_to_others(info.uid, info.mode, me, true) {
        None => return Ok(()),
        Some(OpenTo::Owner(owner)) => format!(
            "belongs to {}, not to root or you (uid {me})",
            describe_user(owner)
        ),
        Some(OpenTo::Writers) => "may be written by others and lacks the sticky bit".to_string(),
    };
    Err(Error::new(
        ErrorCode::AccessDenied,
        format!(
            "refusing the pipe directory {}: its parent {} {why}, so the pipe directory \
             could be swapped for another. Use a directory whose parents only root and you \
             control (set NPIPE_DIR), or run `sudo npipe setup`",
            dir.display(),
            parent.display()
        ),
    ))
}

/// A missing namespace directory or socket file means the pipe does not
/// exist: say so in those words, as `ERROR_FILE_NOT_FOUND`.
pub(crate) fn not_served(name: &PipeName, e: Error) -> Error {
    if e.code() == ErrorCode::FileNotFound {
        Error::new(
            ErrorCode::FileNotFound,
            format!("{name} does not exist: no server is serving it"),
        )
    } else {
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npipe_dir_then_the_system_directory_then_tmp() {
        let set = Some(std::ffi::OsString::from("/srv/pipes"));
        assert_eq!(
            choose_directory(set.clone(), || true),
            Path::new("/srv/pipes")
        );
        assert_eq!(choose_directory(set, || false), Path::new("/srv/pipes"));
        let empty = Some(std::ffi::OsString::new());
        assert_eq!(choose_directory(empty, || true), Path::new(SYSTEM_DIR));
        assert_eq!(choose_directory(None, || true), Path::new(SYSTEM_DIR));
        assert_eq!(choose_directory(None, || false), Path::new(DEFAULT_DIR));
    }

    #[test]
    fn a_checked_directory_is_reused_until_a_pipe_is_not_found_in_it() {
        drop(Namespace::open_or_create().unwrap());
        let first = Namespace::client_connect(|ns| Ok(ns as *const Namespace)).unwrap();
        let again = Namespace::client_connect(|ns| Ok(ns as *const Namespace)).unwrap();
        assert_eq!(first, again, "reused");
        let tries = std::cell::RefCell::new(Vec::new());
        let missing = Namespace::client_connect(|ns| {
            tries.borrow_mut().push(ns as *const Namespace);
            Err::<(), _>(Error::new(ErrorCode::FileNotFound, "no such pipe"))
        });
        assert_eq!(missing.unwrap_err().code(), ErrorCode::FileNotFound);
        let tries = tries.into_inner();
        assert_eq!(tries.len(), 2, "tried once more in a fresh namespace");
        assert_eq!(tries[0], first);
        assert_ne!(tries[1], first, "opened and checked again");
    }

    /// A pipe directory under a parent others may write to (sticky `/tmp`)
    /// is reached through its descriptor, never by path: once it is gone,
    /// anyone may make a new one there. Under parents only root and we can
    /// write, the path is trusted.
    #[test]
    fn only_a_path_no_one_else_can_change_is_trusted() {
        let under_tmp =
            std::env::temp_dir().join(format!("npipe-unit-trust-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&under_tmp);
        std::fs::create_dir(&under_tmp).unwrap();
        let ns = Namespace::open_checked(under_tmp.clone()).unwrap();
        let tmp_mode = std::fs::metadata(std::env::temp_dir()).unwrap();
        let tmp_open =
            std::os::unix::fs::PermissionsExt::mode(&tmp_mode.permissions()) & 0o022 != 0;
        assert_eq!(
            ns.dir.path_trusted(),
            !tmp_open,
            "under {:?}",
            std::env::temp_dir()
        );
        let _ = std::fs::remove_dir_all(&under_tmp);

        let private = std::env::current_dir()
            .unwrap()
            .join("target")
            .join(format!("npipe-unit-trust-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&private);
        std::fs::create_dir_all(&private).unwrap();
        let writable_by_others = private.ancestors().skip(1).any(|a| {
            std::fs::metadata(a).is_ok_and(|m| {
                std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o022 != 0
            })
        });
        let ns = Namespace::open_checked(private.clone()).unwrap();
        assert_eq!(ns.dir.path_trusted(), !writable_by_others);
        let _ = std::fs::remove_dir_all(&private);
    }
}
