//! `npipe serve`: an echo server, on one thread with a tokio task per
//! connected client.

use std::io::{self, Write};
use std::sync::Arc;
use std::time::Duration;

use clap::ValueEnum;
use npipe::tokio::PipeServer;
use npipe::{
    Direction, ErrorCode, PipeType, SecurityDescriptor, ServerOptions, UNLIMITED_INSTANCES,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::framing::Framing;
use super::os::{raise_fd_limit, PidFile, Signals};
use super::{direction_name, type_name, CmdResult};
use crate::exit::{Failure, Status};

/// How long an outbound server waits for a client to read its greeting
/// (`FlushFileBuffers`) before closing the connection anyway.
const GREETING_FLUSH: Duration = Duration::from_secs(5);

const LONG_ABOUT: &str = r"Serve a pipe: an echo server that runs until interrupted.

Creates the pipe (CreateNamedPipe) and serves every client that connects, each
on a task of its own, until SIGINT, SIGTERM or SIGHUP. What it does with a
client depends on the pipe's direction and type:

  duplex, message   reads each message and writes it back, until the client
                    closes the pipe
  duplex, byte      echoes bytes back until the client closes its sending side
                    (end of stream), then closes
  in  (inbound)     the client writes, the server only reads: each message (or
                    the bytes) is printed to stdout
  out (outbound)    the server writes, the client only reads: each client gets
                    the --greeting, then the server closes the connection

Once the pipe exists, one line goes to stderr, so scripts can wait for it:
    serving \\.\pipe\NAME (message, duplex, unlimited instances) as pid 1234
Connections and their errors are logged to stderr; a failing client never
stops the server.

How long it serves (ncat's -k is the default here):
  (default)   every client, one after another and side by side, until a
              signal; the pipe's name stays the whole time
  --once      the first client only: the name goes as soon as it connects,
              and the exit status is that connection's (0, or its error's)
  --stdio     the first client only, bridged to this terminal; exits when
              the client leaves (or, on a message pipe, at end of input)

CreateNamedPipe to npipe serve:
  PIPE_TYPE_MESSAGE | PIPE_READMODE_MESSAGE   --type message (the default)
  PIPE_TYPE_BYTE | PIPE_READMODE_BYTE         --type byte
  PIPE_ACCESS_INBOUND / OUTBOUND / DUPLEX     --direction in / out / duplex
  nMaxInstances, PIPE_UNLIMITED_INSTANCES     --instances N / unlimited
  FILE_FLAG_FIRST_PIPE_INSTANCE               --first-instance

On Linux every instance of a name belongs to one server process: a second
`npipe serve` of the same name fails (pipe busy, or access denied with
--first-instance).";

const AFTER_HELP: &str = r"Examples:
  npipe serve echo                             message echo server, \\.\pipe\echo
  npipe serve '\\.\pipe\logs' --direction in     print what clients write
  npipe serve bytes --type byte --instances 4  byte echo, 4 clients at a time
  npipe serve hello --direction out --greeting 'service ready'
  npipe serve tagged --exec 'sed -u s/^/got:/'   a command per client (inetd)
  sudo npipe serve who --exec 'id -un' --impersonate   run as each client
  npipe serve echo 2> >(grep -m1 serving)      wait for the start line in scripts";

/// The pipe type, as `CreateNamedPipe`'s `PIPE_TYPE_*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TypeArg {
    /// PIPE_TYPE_MESSAGE: each write is one message, delivered whole.
    Message,
    /// PIPE_TYPE_BYTE: a stream of bytes without boundaries.
    Byte,
}

/// Which way data flows, seen from the server (`PIPE_ACCESS_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DirectionArg {
    /// PIPE_ACCESS_INBOUND: clients write, the server reads.
    #[value(name = "in", alias = "inbound")]
    In,
    /// PIPE_ACCESS_OUTBOUND: the server writes, clients read.
    #[value(name = "out", alias = "outbound")]
    Out,
    /// PIPE_ACCESS_DUPLEX: both ends read and write.
    Duplex,
}

/// Arguments of `npipe serve`.
#[derive(Debug, clap::Args)]
#[command(
    about = "Serve a pipe: echo server (CreateNamedPipe + ConnectNamedPipe)",
    long_about = LONG_ABOUT,
    after_help = AFTER_HELP
)]
pub struct Args {
    /// The pipe's name: \\.\pipe\NAME, //./pipe/NAME or NAME.
    pub name: String,

    /// Message pipe (each write is one message) or byte pipe (a stream).
    #[arg(long = "type", value_enum, default_value_t = TypeArg::Message)]
    pub pipe_type: TypeArg,

    /// How many clients may be connected at once: 1 to 254, or `unlimited`
    ///
    /// Clients beyond the limit get ERROR_PIPE_BUSY, or wait if they asked to.
    #[arg(verbatim_doc_comment, long, value_name = "N|unlimited", value_parser = parse_instances, default_value = "unlimited")]
    pub instances: u32,

    /// Which way data flows, seen from the server
    #[arg(long, value_enum, default_value_t = DirectionArg::Duplex)]
    pub direction: DirectionArg,

    /// Fail if the name is already served (FILE_FLAG_FIRST_PIPE_INSTANCE)
    ///
    /// Creating the pipe then fails with ERROR_ACCESS_DENIED instead of
    /// ERROR_PIPE_BUSY: a guard against another process squatting the name.
    #[arg(verbatim_doc_comment, long)]
    pub first_instance: bool,

    /// The largest message accepted from a client, in bytes
    ///
    /// A longer message is refused before anything is allocated for it.
    /// (The library's default is 64 MiB; a shell-facing server needs less.)
    #[arg(verbatim_doc_comment, long, value_name = "BYTES", default_value_t = 1 << 20)]
    pub max_message: u32,

    /// Memory all clients together may hold in messages being received
    ///
    /// A message over 64 KiB reserves its length before it is read; while
    /// this budget cannot cover it, the server stops reading from that
    /// client (its writes block) until others' messages are done. Nothing
    /// is dropped. Default 128 MiB.
    #[arg(verbatim_doc_comment, long, value_name = "BYTES", default_value_t = 128 << 20)]
    pub memory_budget: usize,

    /// Connections of other users that may be in their handshake at once
    ///
    /// A connection is in its handshake from accept until its first message
    /// (at most 5 s); past this many, other users' new connections are
    /// refused with ERROR_PIPE_BUSY, so silent connections cannot use up the
    /// server's file descriptors. The server's own user is never counted.
    #[arg(verbatim_doc_comment, long, value_name = "N", default_value_t = 128,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_handshakes: u32,

    /// How many of those handshakes one user may have at once
    #[arg(long, value_name = "N", default_value_t = 16,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_handshakes_per_user: u32,

    /// What an outbound (--direction out) server sends each client.
    #[arg(long, value_name = "TEXT", default_value = "hello from npipe serve")]
    pub greeting: String,

    /// Log only errors, not every connection.
    #[arg(short, long)]
    pub quiet: bool,

    /// Serve one client, then exit: the pipe's name goes as soon as that
    /// client is connected, and the command ends with its connection,
    /// exiting 0 if it ended well and with its error's code if not
    #[arg(long)]
    pub once: bool,

    /// Serve one client by hand, as `ncat -l`: on a message pipe each line
    /// of standard input goes to it as a message and each of its messages
    /// comes out as a line; on a byte pipe bytes pass both ways. Exits when
    /// the client leaves or, on a message pipe, at the end of input
    #[arg(long, conflicts_with_all = ["exec", "whoami", "once"])]
    pub stdio: bool,

    /// Write the server's pid to FILE once it is serving (removed when it
    /// stops), for scripts and service managers
    #[arg(long, value_name = "FILE")]
    pub pid_file: Option<std::path::PathBuf>,

    /// Grant rights, added to the pipe's security descriptor (repeatable)
    ///
    /// TRUSTEE is user:NAME|UID, group:NAME|GID, everyone, owner or
    /// remote:PRINCIPAL; RIGHTS is r, w, rw or full. E.g. --allow user:alice=rw
    #[arg(verbatim_doc_comment, long, value_name = "TRUSTEE=RIGHTS")]
    pub allow: Vec<String>,

    /// Deny rights, added to the pipe's security descriptor (repeatable)
    ///
    /// A matching deny wins over any allow. E.g. --deny group:guests=w
    #[arg(verbatim_doc_comment, long, value_name = "TRUSTEE=RIGHTS")]
    pub deny: Vec<String>,

    /// Only the user the server runs as may connect (.NET's CurrentUserOnly)
    ///
    /// The descriptor becomes `allow owner=full` (plus any --allow/--deny)
    /// and the socket file mode 0600.
    #[arg(verbatim_doc_comment, long, conflicts_with = "security")]
    pub current_user_only: bool,

    /// The whole security descriptor, as text or SDDL
    ///
    /// e.g. "allow owner=full; allow group:dev=rw; allow everyone=r" or
    /// "D:(A;;GA;;;OW)(A;;GR;;;WD)". Without it (and without
    /// --current-user-only) the base is Windows' default for pipes: owner and
    /// root full control, everyone read. --allow/--deny add to the base.
    #[arg(verbatim_doc_comment, long, value_name = "DESCRIPTOR")]
    pub security: Option<String>,

    /// Believe remote identities presented by a gateway running as USER
    /// (a name or uid; repeatable)
    ///
    /// `npipe gateway` names each remote client (its certificate's name,
    /// its address, its mapped local user) when it connects for it. Root is
    /// always believed; anyone else who claims a remote identity is refused.
    /// A trusted gateway chooses whom --impersonate acts as for its clients
    /// (anyone but root, unless the gateway runs as root).
    #[arg(verbatim_doc_comment, long, value_name = "USER")]
    pub trust_gateway: Vec<String>,

    /// Refuse clients that come through a gateway from another machine
    /// (PIPE_REJECT_REMOTE_CLIENTS)
    #[arg(long)]
    pub reject_remote_clients: bool,

    /// Keep every client on the socket: decline their offers to move the
    /// data into shared memory, with the handshake or once busy (Linux;
    /// taken by default)
    #[arg(long)]
    pub no_shared_memory: bool,

    /// Let the gateway relay every byte of remote clients: decline its
    /// offers to hand their connections over (Linux; taken by default)
    #[arg(long)]
    pub no_remote_hand_off: bool,

    /// Instead of echoing, answer each message with who the client is
    ///
    /// pid, uid, gid, user, groups and session, all from the kernel.
    #[arg(verbatim_doc_comment, long)]
    pub whoami: bool,

    /// Instead of echoing, run CMD (with `sh -c`; on Windows `cmd.exe /C`)
    /// for each client: messages in are lines on its input, its lines out
    /// are messages (or as --framing says; bytes as they are on a byte
    /// pipe); NPIPE_CLIENT_PID, _UID, _GID, _USER and _SESSION, from the
    /// kernel (on Windows _UID and _GID are SIDs), and NPIPE_PIPE are in
    /// its environment. Quote them: a user name may hold spaces or worse.
    /// With sh, "$NPIPE_CLIENT_USER"; with cmd.exe, "%NPIPE_CLIENT_USER%"
    /// in double quotes (it expands %VAR% before it reads the line, and
    /// only the quotes keep a & or ^ in a name from changing the command)
    #[arg(
        verbatim_doc_comment,
        long,
        value_name = "CMD",
        conflicts_with = "whoami"
    )]
    pub exec: Option<String>,

    /// With --exec or --stdio on a message pipe: how messages are told
    /// apart on the command's (or the terminal's) input and output
    ///
    /// line: one message per line (a message holding a newline reads as
    /// several lines); nul: each message ends with a NUL byte; length: each
    /// is its length (4 bytes, little-endian) and its bytes, so any message
    /// passes unchanged; raw: each read of output is one message.
    #[arg(verbatim_doc_comment, long, value_enum, default_value_t = Framing::Line)]
    pub framing: Framing,

    /// With --whoami: also act as the client (ImpersonateNamedPipeClient);
    /// with --exec: run the command as the client, for good (its real,
    /// effective and saved ids and its groups the client's, no privileges)
    ///
    /// The whoami reply then tells the effective uid and user the serving
    /// thread has while impersonating, or why the server may not (a client
    /// that granted identification only gets ERROR_CANNOT_IMPERSONATE (1368)).
    #[arg(verbatim_doc_comment, long)]
    pub impersonate: bool,
}

/// The descriptor the flags describe.
fn descriptor(args: &Args) -> Result<SecurityDescriptor, Failure> {
    let usage = |e: npipe::Error| Failure::new(Status::Usage, e.to_string());
    let base = match (&args.security, args.current_user_only) {
        (Some(text), _) => text.parse().map_err(usage)?,
        (None, true) => SecurityDescriptor::current_user_only(),
        (None, false) => SecurityDescriptor::default_for_pipes(),
    };
    if args.allow.is_empty() && args.deny.is_empty() {
        return Ok(base);
    }
    let mut text = base.to_string();
    for (verb, specs) in [("allow", &args.allow), ("deny", &args.deny)] {
        for spec in specs {
            text.push_str(&format!("; {verb} {spec}"));
        }
    }
    text.parse().map_err(usage)
}

fn parse_instances(s: &str) -> Result<u32, String> {
    if s.eq_ignore_ascii_case("unlimited") {
        return Ok(UNLIMITED_INSTANCES);
    }
    match s.parse::<u32>() {
        Ok(n) if (1..UNLIMITED_INSTANCES).contains(&n) => Ok(n),
        _ => Err(format!(
            "expected 1 to {} or `unlimited`, got `{s}`",
            UNLIMITED_INSTANCES - 1
        )),
    }
}

/// What every connection's task needs to know.
struct Config {
    pipe_type: PipeType,
    direction: Direction,
    greeting: String,
    quiet: bool,
    whoami: bool,
    impersonate: bool,
    exec: Option<String>,
    framing: Framing,
}

/// Runs `npipe serve`.
pub fn run(args: &Args) -> CmdResult {
    if args.impersonate && !args.whoami && args.exec.is_none() {
        return Err(Failure::new(
            Status::Usage,
            "--impersonate acts as the client for --whoami or --exec, and neither was given",
        ));
    }
    if args.framing != Framing::Line && args.exec.is_none() && !args.stdio {
        return Err(Failure::new(
            Status::Usage,
            "--framing says how --exec or --stdio tell messages apart, and neither was given",
        ));
    }
    let pipe_type = match args.pipe_type {
        TypeArg::Message => PipeType::Message,
        TypeArg::Byte => PipeType::Byte,
    };
    let direction = match args.direction {
        DirectionArg::In => Direction::Inbound,
        DirectionArg::Out => Direction::Outbound,
        DirectionArg::Duplex => Direction::Duplex,
    };
    let mut opts = ServerOptions::new();
    opts.pipe_type(pipe_type)
        .direction(direction)
        .max_instances(args.instances)
        .first_instance(args.first_instance)
        .max_handshakes(args.max_handshakes)
        .max_handshakes_per_user(args.max_handshakes_per_user);
    opts.max_message_size(args.max_message)
        .memory_budget(args.memory_budget);
    if args.whoami && (pipe_type != PipeType::Message || direction != Direction::Duplex) {
        return Err(Failure::new(
            Status::Usage,
            "--whoami answers messages: it needs --type message and --direction duplex",
        ));
    }
    let security = descriptor(args)?;
    opts.security(security.clone());
    opts.reject_remote_clients(args.reject_remote_clients)
        .shared_memory(!args.no_shared_memory)
        .remote_hand_off(!args.no_remote_hand_off);
    for user in &args.trust_gateway {
        let gateway = npipe::LocalUser::by_name(user).ok_or_else(|| {
            Failure::new(
                Status::Usage,
                format!("--trust-gateway: no such user {user:?}"),
            )
        })?;
        opts.trust_gateway(gateway);
    }
    raise_fd_limit();
    // One thread runs every connection: a task each, thousands at once with
    // little memory (impersonation goes to the blocking pool).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::new(Status::Other, format!("cannot start the runtime: {e}")))?;
    let config = Arc::new(Config {
        pipe_type,
        direction,
        greeting: args.greeting.clone(),
        quiet: args.quiet,
        whoami: args.whoami,
        impersonate: args.impersonate,
        exec: args.exec.clone(),
        framing: args.framing,
    });
    let result = runtime.block_on(serve(args, &opts, security, config));
    // Without waiting for blocking work still pending (a read of standard
    // input with --stdio never ends by itself): what was connected is cut
    // off at exit, as the stop line said.
    runtime.shutdown_background();
    result
}

async fn serve(
    args: &Args,
    opts: &ServerOptions,
    security: SecurityDescriptor,
    config: Arc<Config>,
) -> CmdResult {
    // Signals first: a stop that comes right after the "serving" line or the
    // pid file still removes both.
    let mut stop = Signals::new()?;
    let listener = opts
        .create_async(args.name.as_str())
        .map_err(|e| create_failure(e, args))?;
    // Before the "serving" line, so a script that waits for it finds both.
    let _pid_file = args.pid_file.as_deref().map(PidFile::write).transpose()?;
    let info = listener.info();
    let instances = match info.max_instances {
        None => "unlimited instances".to_string(),
        Some(1) => "1 instance".to_string(),
        Some(n) => format!("{n} instances"),
    };
    log(format_args!(
        "serving {} ({}, {}, {}) as pid {}",
        listener.name(),
        type_name(info.pipe_type),
        direction_name(info.direction),
        instances,
        std::process::id()
    ));
    if !args.quiet {
        log(format_args!("security: {security}"));
    }
    let mut next_id: u64 = 0;
    // Connections still being served, to say at the end how many were cut.
    let live = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    loop {
        let conn = tokio::select! {
            // `accept` fails only when the pipe itself stopped working; no
            // single client can make it fail.
            accepted = listener.accept() => accepted.map_err(|e| {
                Failure::from(e).hint("the pipe stopped accepting clients; restart the server")
            })?,
            () = stop.recv() => break,
        };
        next_id += 1;
        let config = Arc::clone(&config);
        if args.stdio {
            drop(listener);
            return serve_stdio(conn, &mut stop, args.framing).await;
        }
        if args.once {
            let name = listener.name().to_string();
            drop(listener);
            log(format_args!("serving one client (--once): {name} removed"));
            // The exit status is the one connection's: a failure exits as
            // its error's class, as a failed `call` would.
            return tokio::select! {
                served = serve_connection(next_id, conn, config, None) => served.map_err(|e| {
                    Failure::from(e).hint("--once: the one client's connection failed (logged above)")
                }),
                () = stop.recv() => {
                    log(format_args!("stopping: 1 client cut off"));
                    Ok(())
                }
            };
        }
        // Spawned as it is: a block awaiting it would hold it twice (the
        // captured copy's room stays beside the awaited one).
        tokio::spawn(serve_connection(
            next_id,
            conn,
            config,
            Some(Live::enter(&live)),
        ));
    }
    // Dropping the listener removes the pipe's name; connected clients are
    // cut off when the process exits.
    let cut = live.load(std::sync::atomic::Ordering::SeqCst);
    log(format_args!(
        "stopping: {} removed; {cut} connected client{} cut off",
        listener.name(),
        if cut == 1 { "" } else { "s" }
    ));
    Ok(())
}

/// `--stdio`: one client bridged to this process's standard input and
/// output.
async fn serve_stdio(mut conn: PipeServer, stop: &mut Signals, framing: Framing) -> CmdResult {
    let pid = conn.client_process_id();
    log(format_args!(
        "client pid {pid} connected; standard input goes to it"
    ));
    let bridged = async {
        match conn.info().pipe_type {
            PipeType::Message => {
                let mut input = tokio::io::stdin();
                let can_read = conn.info().direction != Direction::Outbound;
                super::exec::bridge_messages(
                    &mut conn,
                    Some(tokio::io::stdout()),
                    &mut input,
                    can_read,
                    true,
                    framing,
                )
                .await
            }
            PipeType::Byte => {
                let (mut from_client, mut to_client) = tokio::io::split(&mut conn);
                let mut stdout = tokio::io::stdout();
                let inbound = async {
                    let n = tokio::io::copy(&mut from_client, &mut stdout).await;
                    let _ = stdout.flush().await;
                    n
                };
                let outbound = async {
                    let n = tokio::io::copy(&mut tokio::io::stdin(), &mut to_client).await;
                    let _ = to_client.shutdown().await;
                    n
                };
                // The client leaving ends it; the end of input only
                // half-closes.
                tokio::pin!(inbound, outbound);
                let mut input_ended = false;
                loop {
                    tokio::select! {
                        n = &mut inbound => {
                            break Ok(format!("{} byte(s) from the client", n.unwrap_or(0)))
                        }
                        _ = &mut outbound, if !input_ended => input_ended = true,
                    }
                }
            }
        }
    };
    let done = tokio::select! {
        done = bridged => done?,
        () = stop.recv() => "stopped".to_string(),
    };
    log(format_args!("client pid {pid}: {done}"));
    Ok(())
}

fn create_failure(err: npipe::Error, args: &Args) -> Failure {
    let name = &args.name;
    let hint = match err.code() {
        ErrorCode::PipeBusy => Some(format!(
            "another process already serves this name (`npipe info {name}` shows which); \
             on Linux every instance of a name belongs to one server process"
        )),
        ErrorCode::AccessDenied if args.first_instance => Some(format!(
            "--first-instance: the name is already served (`npipe info {name}` shows by whom)"
        )),
        #[cfg(unix)]
        ErrorCode::AccessDenied => Some(format!(
            "cannot create the pipe in {}; check that directory's owner and mode, or set \
             NPIPE_DIR to another directory",
            npipe::namespace_directory().display()
        )),
        _ => None,
    };
    let failure = Failure::from(err);
    match hint {
        Some(h) => failure.hint(h),
        None => failure,
    }
}

/// A connection counted among the live ones until it is dropped (ended,
/// or cut off with its task).
struct Live(Arc<std::sync::atomic::AtomicUsize>);

impl Live {
    fn enter(live: &Arc<std::sync::atomic::AtomicUsize>) -> Live {
        live.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Live(Arc::clone(live))
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Serves one connection to its end and logs how it ended; a failure is
/// returned too (after it was logged), for `--once` to exit with.
/// `live`: counted among the connected clients until it ends.
// Not an `async fn`: one keeps a copy of each argument beside the body's
// (rust-lang/rust#62958), and the connection is 512 bytes; the block
// captures it once.
#[allow(clippy::manual_async_fn)]
fn serve_connection(
    id: u64,
    mut conn: PipeServer,
    config: Arc<Config>,
    live: Option<Live>,
) -> impl std::future::Future<Output = Result<(), npipe::Error>> {
    async move {
        let _live = live;
        let pid = conn.client_process_id();
        if !config.quiet {
            let session = conn
                .client_session_id()
                .map_or_else(|| "unknown".to_string(), |s| s.to_string());
            log(format_args!(
                "connection {id}: client pid {pid}, user {}, session {session}",
                conn.client_user(),
            ));
        }
        let result = match (config.direction, config.pipe_type) {
            _ if config.whoami => answer_whoami(&mut conn, config.impersonate).await,
            _ if config.exec.is_some() => {
                let command = config.exec.as_deref().expect("checked");
                let can_read = config.direction != Direction::Outbound;
                // Boxed: its state (a child process and its pipes) would
                // otherwise sit in every connection's task, echo or not (an idle
                // connection cost 3.3 KB against 1.8 KB before --exec came).
                Box::pin(super::exec::serve(
                    &mut conn,
                    command,
                    config.impersonate,
                    can_read,
                    config.framing,
                ))
                .await
            }
            (Direction::Duplex, PipeType::Message) => echo_messages(&mut conn).await,
            (Direction::Duplex, PipeType::Byte) => echo_bytes(&mut conn).await,
            (Direction::Inbound, PipeType::Message) => print_messages(&mut conn).await,
            (Direction::Inbound, PipeType::Byte) => print_bytes(&mut conn).await,
            (Direction::Outbound, _) => greet(&mut conn, &config).await,
        };
        match result {
            Ok(done) => {
                if !config.quiet {
                    log(format_args!("connection {id} (pid {pid}): {done}"));
                }
                Ok(())
            }
            Err(e) => {
                log(format_args!("connection {id} (pid {pid}): {e}"));
                Err(e)
            }
        }
    }
}

/// `--whoami`: answers each message with what the server knows of the client.
async fn answer_whoami(conn: &mut PipeServer, impersonate: bool) -> npipe::Result<String> {
    let mut count: u64 = 0;
    loop {
        match conn.recv_message().await {
            Ok(_) => {
                let reply = whoami_text(conn, impersonate).await;
                conn.write_message(reply.as_bytes()).await?;
                count += 1;
            }
            Err(e) if closed(&e) => return Ok(format!("closed after {count} message(s)")),
            Err(e) => return Err(e),
        }
    }
}

async fn whoami_text(conn: &PipeServer, impersonate: bool) -> String {
    let id = conn.client_identity();
    let c = id.credentials;
    let groups: Vec<String> = id.groups.iter().map(npipe::LocalGroup::id_text).collect();
    let mut text = format!(
        "pid={} uid={} gid={} user={} groups={} session={} level={}",
        c.pid,
        c.user.id_text(),
        c.group.id_text(),
        id.user_name.as_deref().unwrap_or("?"),
        groups.join(","),
        id.session_id
            .map_or_else(|| "?".to_string(), |s| s.to_string()),
        match conn.client_impersonation_level() {
            npipe::ImpersonationLevel::Identification => "identification",
            npipe::ImpersonationLevel::Impersonation => "impersonation",
        }
    );
    if let npipe::Identity::Remote(principal) = conn.peer_identity() {
        text = format!(
            "remote={principal} computer={} {text}",
            conn.client_computer_name().unwrap_or_default()
        );
    }
    if impersonate {
        // The thread's own effective user, as the kernel sees it right now.
        let seen = conn.run_as_client(npipe::LocalUser::current).await;
        match seen {
            Ok(user) => text.push_str(&format!(
                " impersonating: euid={} user={}",
                user.id_text(),
                user.name().unwrap_or_else(|| "?".into())
            )),
            Err(e) => text.push_str(&format!(" impersonation refused: {}", e.code())),
        }
    }
    text
}

/// Whether a read error means the client closed the pipe.
fn closed(e: &npipe::Error) -> bool {
    e.code() == ErrorCode::BrokenPipe
}

async fn echo_messages(conn: &mut PipeServer) -> npipe::Result<String> {
    let mut count: u64 = 0;
    loop {
        match conn.recv_message().await {
            Ok(msg) => {
                conn.write_message(&msg).await?;
                count += 1;
            }
            Err(e) if closed(&e) => return Ok(format!("closed after {count} message(s)")),
            Err(e) => return Err(e),
        }
    }
}

async fn echo_bytes(conn: &mut PipeServer) -> npipe::Result<String> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut total: u64 = 0;
    loop {
        let n = match conn.read(&mut buf).await {
            Ok(0) => return Ok(format!("end of stream after {total} byte(s); closed")),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(npipe::Error::from_io(e)),
        };
        conn.write_all(&buf[..n])
            .await
            .map_err(npipe::Error::from_io)?;
        total += n as u64;
    }
}

async fn print_messages(conn: &mut PipeServer) -> npipe::Result<String> {
    let mut count: u64 = 0;
    loop {
        match conn.recv_message().await {
            Ok(msg) => {
                let mut out = io::stdout().lock();
                out.write_all(&msg)
                    .and_then(|()| out.write_all(b"\n"))
                    .and_then(|()| out.flush())
                    .map_err(stdout_error)?;
                count += 1;
            }
            Err(e) if closed(&e) => return Ok(format!("closed after {count} message(s)")),
            Err(e) => return Err(e),
        }
    }
}

async fn print_bytes(conn: &mut PipeServer) -> npipe::Result<String> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut total: u64 = 0;
    loop {
        let n = match conn.read(&mut buf).await {
            Ok(0) => return Ok(format!("end of stream after {total} byte(s)")),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(npipe::Error::from_io(e)),
        };
        let mut out = io::stdout().lock();
        out.write_all(&buf[..n])
            .and_then(|()| out.flush())
            .map_err(stdout_error)?;
        total += n as u64;
    }
}

async fn greet(conn: &mut PipeServer, config: &Config) -> npipe::Result<String> {
    match config.pipe_type {
        PipeType::Message => conn.write_message(config.greeting.as_bytes()).await?,
        PipeType::Byte => {
            let mut line = config.greeting.clone().into_bytes();
            line.push(b'\n');
            conn.write_all(&line).await.map_err(npipe::Error::from_io)?;
        }
    }
    // As a Windows server would: FlushFileBuffers, then close.
    match tokio::time::timeout(GREETING_FLUSH, conn.flush_buffers()).await {
        Ok(flushed) => flushed?,
        Err(_) => return Ok("the client did not read the greeting in time; closed".to_string()),
    }
    Ok("sent the greeting; closed".to_string())
}

/// A line on stderr; a closed stderr must not bring a connection down.
fn log(line: std::fmt::Arguments<'_>) {
    let _ = writeln!(io::stderr(), "{line}");
}

fn stdout_error(e: io::Error) -> npipe::Error {
    npipe::Error::new(
        ErrorCode::Other,
        format!("cannot write to standard output: {e}"),
    )
}
