//! The pipes on this machine, like Sysinternals PipeList, and one pipe's
//! description without connecting to it.
//!
//! Each live server answers a query handshake for its pipe with the pipe's
//! name and shape; its process and user come from the kernel (`SO_PEERCRED`
//! on the query connection). A query takes no instance.

use std::time::{Duration, Instant};

use crate::error::{Error, ErrorCode, Result};
use crate::info::{max_instances_from_wire, PeerCredentials};
use crate::name::PipeName;
use crate::namespace::{Namespace, Pruned};
use crate::proto::handshake::{Hello, HelloKind, Reply, WAIT_NONE};
use crate::types::{Direction, PipeType};

/// How long a query waits for its server's answer.
const QUERY_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a listing waits for all of them: a socket not asked by then (a
/// directory full of hung ones) is listed as not answering.
const LIST_TIMEOUT: Duration = Duration::from_secs(2);
/// How many servers a listing asks at once.
const LIST_PARALLEL: usize = 16;

/// One pipe in the namespace, as its server describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedPipe {
    /// The pipe's name as its server created it.
    pub name: String,
    /// The socket's file name in the namespace directory.
    pub file: String,
    /// The server process's pid and user, from the kernel.
    pub server: PeerCredentials,
    /// The server's user name.
    pub server_user: Option<String>,
    /// Byte or message.
    pub pipe_type: PipeType,
    /// The open mode.
    pub direction: Direction,
    /// The instance limit (`None`: unlimited).
    pub max_instances: Option<u32>,
    /// Instances in use.
    pub cur_instances: u32,
    /// Clients waiting for an instance.
    pub waiting_clients: u32,
    /// In-buffer hint.
    pub in_buffer_size: u32,
    /// Out-buffer hint.
    pub out_buffer_size: u32,
    /// The largest message the server accepts.
    pub max_message_size: u32,
    /// The server's default wait.
    pub default_timeout: Duration,
    /// The pipe's security descriptor, in the text form the server was
    /// given it (users by name where they were named): who may connect and
    /// do what. Every user a query is answered for may see it, as on
    /// Windows, where read and write access both include `READ_CONTROL`.
    pub security: String,
}

/// A namespace entry, and what its server (if any) said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PipeEntry {
    /// A server answered.
    Served(ServedPipe),
    /// A server is there but will not describe its pipe to you: its
    /// security descriptor (or the socket file's mode) grants you nothing.
    Denied {
        /// The socket's file name.
        file: String,
        /// What the server or the system said.
        reason: String,
    },
    /// A server holds the socket but did not answer in time: hung, or
    /// overloaded. It is not removed.
    NotAnswering {
        /// The socket's file name.
        file: String,
    },
    /// No server: connecting is refused, its server died and left the file
    /// ([`remove_stale_pipes`] removes it; the next server of the name
    /// replaces it anyway).
    Dead {
        /// The socket's file name.
        file: String,
        /// The pipe's name, where it can be told: the file's own name, or
        /// for a hashed file name (`~...`, a long name or one with
        /// characters a file name cannot carry) the note its server left
        /// beside it.
        name: Option<String>,
    },
    /// Anything else that went wrong asking.
    Unreadable {
        /// The socket's file name.
        file: String,
        /// What went wrong, for people.
        reason: String,
    },
}

impl PipeEntry {
    /// The socket's file name in the namespace directory.
    pub fn file(&self) -> &str {
        match self {
            PipeEntry::Served(p) => &p.file,
            PipeEntry::Denied { file, .. }
            | PipeEntry::NotAnswering { file }
            | PipeEntry::Dead { file, .. }
            | PipeEntry::Unreadable { file, .. } => file,
        }
    }

    /// The entry's state in one word or two: `serving`, `denied`,
    /// `not answering`, `dead` or `unreadable`.
    pub fn state(&self) -> &'static str {
        match self {
            PipeEntry::Served(_) => "serving",
            PipeEntry::Denied { .. } => "denied",
            PipeEntry::NotAnswering { .. } => "not answering",
            PipeEntry::Dead { .. } => "dead",
            PipeEntry::Unreadable { .. } => "unreadable",
        }
    }

    /// What a failed query says of the entry.
    fn from_failure(namespace: &Namespace, file: String, e: &Error) -> PipeEntry {
        match e.code() {
            // Connect refused (or the file went meanwhile): no server.
            ErrorCode::FileNotFound => PipeEntry::Dead {
                name: namespace.recorded_name(&file),
                file,
            },
            ErrorCode::AccessDenied => PipeEntry::Denied {
                file,
                reason: e.message().to_string(),
            },
            ErrorCode::Timeout => PipeEntry::NotAnswering { file },
            _ => PipeEntry::Unreadable {
                file,
                reason: e.message().to_string(),
            },
        }
    }
}

/// Every pipe in the namespace directory, in file-name order. Servers are
/// asked side by side (16 at a time, each given a second), and a listing
/// takes two seconds at most however many hang: a socket not asked by then
/// is listed as not answering.
///
/// ```
/// let name = format!("doc-list-{}", std::process::id());
/// let _listener = npipe::ServerOptions::new().create(&name)?;
/// let found = npipe::list_pipes()?.into_iter().any(|e| matches!(e,
///     npipe::PipeEntry::Served(p) if p.name == name && p.server.pid == std::process::id()));
/// assert!(found);
/// # Ok::<(), npipe::Error>(())
/// ```
pub fn list_pipes() -> Result<Vec<PipeEntry>> {
    let namespace = match Namespace::open_existing() {
        Ok(ns) => ns,
        Err(e) if e.code() == ErrorCode::FileNotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let files = namespace.socket_files()?;
    let deadline = std::time::Instant::now() + LIST_TIMEOUT;
    let next = std::sync::atomic::AtomicUsize::new(0);
    let entries: Vec<std::sync::Mutex<Option<PipeEntry>>> =
        files.iter().map(|_| std::sync::Mutex::new(None)).collect();
    let ask = || loop {
        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let Some(file) = files.get(i) else { return };
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let entry = if left.is_zero() {
            PipeEntry::NotAnswering { file: file.clone() }
        } else {
            match query_file(&namespace, file, None, left.min(QUERY_TIMEOUT)) {
                Ok(p) => PipeEntry::Served(p),
                Err(e) => PipeEntry::from_failure(&namespace, file.clone(), &e),
            }
        };
        *entries[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(entry);
    };
    std::thread::scope(|s| {
        for _ in 1..LIST_PARALLEL.min(files.len()) {
            s.spawn(ask);
        }
        ask();
    });
    Ok(entries
        .into_iter()
        .filter_map(|e| e.into_inner().unwrap_or_else(|e| e.into_inner()))
        .collect())
}

/// Removes the sockets that dead servers left in the namespace directory
/// (their `connect` is refused), as `npipe list --prune` does. Returns the
/// file names removed, and those that could not be (another user's stale
/// socket, which the sticky directory keeps) with the reason. A live pipe is
/// never touched, and the next server of a name replaces a stale socket
/// anyway: this only tidies listings.
///
/// ```
/// let pruned = npipe::remove_stale_pipes()?;
/// for file in &pruned.removed {
///     println!("removed {file}");
/// }
/// # Ok::<(), npipe::Error>(())
/// ```
pub fn remove_stale_pipes() -> Result<Pruned> {
    match Namespace::open_existing() {
        Ok(ns) => ns.prune_stale(),
        Err(e) if e.code() == ErrorCode::FileNotFound => Ok(Pruned::default()),
        Err(e) => Err(e),
    }
}

/// Describes one pipe without taking an instance (`GetNamedPipeInfo` from
/// outside, as `npipe info` shows it).
pub fn query_pipe(name: impl TryInto<PipeName, Error = Error>) -> Result<ServedPipe> {
    let name = name.try_into()?;
    if !name.is_local() {
        return Err(Error::new(
            ErrorCode::BadNetPath,
            format!("{name}: remote pipes cannot be queried yet"),
        ));
    }
    let namespace = Namespace::open_existing()?;
    query_file(&namespace, &name.file_name(), Some(&name), QUERY_TIMEOUT)
        .map_err(|e| crate::namespace::not_served(&name, e))
}

fn query_file(
    namespace: &Namespace,
    file: &str,
    name: Option<&PipeName>,
    timeout: Duration,
) -> Result<ServedPipe> {
    // One deadline for the connect and the answer together.
    let deadline = Instant::now() + timeout;
    let socket = namespace.connect_file_by(file, deadline)?;
    let server: PeerCredentials = socket
        .peer_cred()
        .map_err(|e| Error::os(e, "cannot read the server's credentials"))?;
    // For a listing the name is not known: an empty name asks the server to
    // describe whatever it serves there.
    let asked = name.map_or_else(String::new, |n| n.canonical().to_string());
    let hello = Hello {
        kind: HelloKind::Query,
        access: None,
        read_mode: crate::types::ReadMode::Byte,
        impersonation: crate::types::ImpersonationLevel::Identification,
        wait_ms: WAIT_NONE,
        max_message: 0,
        pipelined: false,
        name: asked,
        principal: String::new(),
        computer: String::new(),
        local_user: None,
        local_groups: Vec::new(),
        hand_off: false,
    };
    let mut out = Vec::new();
    hello.encode(&mut out).map_err(Error::from)?;
    socket
        .send(&out)
        .map_err(|e| Error::os(e, "cannot send the query"))?;
    // The client's own reader, with the query's deadline.
    let left = deadline.saturating_duration_since(Instant::now());
    let reply = crate::blocking::read_reply(&socket, left)?;
    match reply {
        Reply::Info { desc: d, security } => Ok(ServedPipe {
            name: d.name,
            file: file.to_string(),
            server,
            server_user: server.user_name(),
            pipe_type: d.pipe_type,
            direction: d.direction,
            max_instances: max_instances_from_wire(d.max_instances),
            cur_instances: d.cur_instances,
            waiting_clients: d.waiting,
            in_buffer_size: d.in_buffer,
            out_buffer_size: d.out_buffer,
            max_message_size: d.max_message,
            default_timeout: Duration::from_millis(d.default_timeout_ms.into()),
            security,
        }),
        Reply::Refused { code, reason } => Err(Error::new(
            ErrorCode::from_win32(code).unwrap_or(ErrorCode::Other),
            reason,
        )),
        Reply::Connected(_) => Err(Error::new(
            ErrorCode::BadPipe,
            "the server answered a query with a connection",
        )),
    }
}
