//! `npipe`: serve, call, list and inspect named pipes: Windows-style ones
//! on Linux, the system's own on Windows.
//!
//! This file only parses the command line and dispatches; each command lives
//! in `cmd/` (`bench` in the npipe-bench crate), and `exit.rs` turns failures
//! into messages and exit codes.

#![forbid(unsafe_code)]

mod cmd;
mod exit;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[cfg(target_os = "linux")]
const ABOUT: &str = "Windows named pipes on Linux: serve, call, list and inspect them";
#[cfg(not(target_os = "linux"))]
const ABOUT: &str = "Named pipes: serve, call, list and inspect them";

#[cfg(target_os = "linux")]
const LONG_ABOUT: &str = r"Windows named pipes on Linux: serve, call, list and inspect them.

npipe gives Linux the named pipes Windows services use (CreateNamedPipe,
ConnectNamedPipe, CallNamedPipe, WaitNamedPipe, ...): message and byte pipes,
inbound, outbound and duplex pipes, many instances of one name, clients that
wait for a free instance, and the peer's process and user from the kernel.
Pipes are Unix domain sockets in one directory: $NPIPE_DIR, else /run/npipe
if it exists (`sudo npipe setup` makes it, root-owned, at every boot), else
/tmp/.npipe.

Pipe names: \\.\pipe\NAME, //./pipe/NAME and a bare NAME all name the same
local pipe. Names are case-insensitive, up to 256 characters, and may hold any
character but a backslash. Quote backslashes in the shell:
    npipe call '\\.\pipe\echo' hello

Quick start:
    npipe demo              a server and a client process talk over a pipe
    npipe serve echo &      an echo server on \\.\pipe\echo
    npipe call echo hello   CallNamedPipe: sends one message, prints the reply
    npipe client echo       one message per line of input, prints each reply
    npipe list              the pipes on this machine, like Sysinternals PipeList
    npipe info echo         one pipe's type, direction, instances and owner
    npipe wait echo         WaitNamedPipe: until the pipe has a free instance
    sudo npipe setup        a root-owned pipe directory no user can take over
    npipe cert ca certs     a CA for remote pipes (then `npipe cert issue`)
    sudo npipe gateway ...  serve this host's pipes to \\HOST\pipe\NAME clients

Errors print as `npipe: <message> [ERROR_NAME (win32 code)]`, with the Windows
error a ported program would have seen from GetLastError().";

#[cfg(not(target_os = "linux"))]
const LONG_ABOUT: &str = r"Named pipes: serve, call, list and inspect them.

On Windows npipe is the system's own named pipes (CreateNamedPipe,
ConnectNamedPipe, CallNamedPipe, WaitNamedPipe, ...), with the same commands
as on Linux, where npipe emulates them: scripts and habits carry over.

Pipe names: \\.\pipe\NAME, //./pipe/NAME and a bare NAME all name the same
local pipe; \\HOST\pipe\NAME reaches another machine over SMB.

Quick start:
    npipe demo              a server and a client process talk over a pipe
    npipe serve echo        an echo server on \\.\pipe\echo
    npipe call echo hello   CallNamedPipe: sends one message, prints the reply
    npipe client echo       one message per line of input, prints each reply
    npipe list              the pipes on this machine, like Sysinternals PipeList
    npipe info echo         one pipe's entry in that list
    npipe wait echo         WaitNamedPipe: until the pipe has a free instance

Not on Windows: bench, setup, gateway and cert (Linux's emulation and its
remote gateway).

Errors print as `npipe: <message> [ERROR_NAME (win32 code)]`, with the error
GetLastError() gave.";

/// The top-level command line.
#[derive(Debug, Parser)]
#[command(
    name = "npipe",
    version,
    about = ABOUT,
    long_about = LONG_ABOUT,
    after_help = exit::EXIT_CODES_HELP,
    arg_required_else_help = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    Demo(cmd::demo::Args),
    Serve(cmd::serve::Args),
    Client(cmd::client::Args),
    Call(cmd::call::Args),
    List(cmd::list::Args),
    Info(cmd::info::Args),
    Wait(cmd::wait::Args),
    #[cfg(target_os = "linux")]
    Bench(npipe_bench::Args),
    #[cfg(target_os = "linux")]
    Setup(cmd::setup::Args),
    #[cfg(target_os = "linux")]
    Gateway(cmd::gateway::Args),
    #[cfg(target_os = "linux")]
    Cert(cmd::cert::Args),
}

/// The processes `npipe demo` and `npipe bench` start of this program: run
/// only with [`INTERNAL_ROLE`] in the environment, so that the tool's own
/// command line neither lists nor suggests them.
#[derive(Debug, Parser)]
#[command(name = "npipe")]
struct Internal {
    #[command(subcommand)]
    role: Role,
}

#[derive(Debug, Subcommand)]
enum Role {
    /// The demo's server process (started by `npipe demo`).
    DemoServer(cmd::demo::ServerArgs),
    /// The demo's client process (started by `npipe demo`).
    DemoClient(cmd::demo::ClientArgs),
    /// The bench's server process (started by `npipe bench`).
    #[cfg(target_os = "linux")]
    BenchPeer(npipe_bench::PeerArgs),
    /// The raw side's server of `npipe bench scale` (started by the bench).
    #[cfg(target_os = "linux")]
    BenchScalePeer {
        /// The socket path to serve.
        path: std::path::PathBuf,
    },
}

/// Set by `npipe demo` and `npipe bench` for the processes they start.
#[cfg(target_os = "linux")]
pub const INTERNAL_ROLE: &str = npipe_bench::INTERNAL_ROLE;
/// Set by `npipe demo` for the processes it starts (the bench's name).
#[cfg(not(target_os = "linux"))]
pub const INTERNAL_ROLE: &str = "NPIPE_INTERNAL_ROLE";

/// Runs an internal role, if this process was started as one.
fn run_internal() -> Option<cmd::CmdResult> {
    std::env::var_os(INTERNAL_ROLE)?;
    // A public command (the bench also starts `npipe serve`) is not a role.
    let internal = Internal::try_parse().ok()?;
    Some(match &internal.role {
        Role::DemoServer(args) => cmd::demo::run_server(args),
        Role::DemoClient(args) => cmd::demo::run_client(args),
        #[cfg(target_os = "linux")]
        Role::BenchPeer(args) => npipe_bench::run_peer(args).map_err(Into::into),
        #[cfg(target_os = "linux")]
        Role::BenchScalePeer { path } => npipe_bench::run_scale_peer(path).map_err(Into::into),
    })
}

fn main() -> ExitCode {
    if let Some(result) = run_internal() {
        return match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(failure) => failure.report(),
        };
    }
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Demo(args) => cmd::demo::run(args),
        Command::Serve(args) => cmd::serve::run(args),
        Command::Client(args) => cmd::client::run(args),
        Command::Call(args) => cmd::call::run(args),
        Command::List(args) => cmd::list::run(args),
        Command::Info(args) => cmd::info::run(args),
        Command::Wait(args) => cmd::wait::run(args),
        #[cfg(target_os = "linux")]
        Command::Bench(args) => npipe_bench::run(args).map_err(Into::into),
        #[cfg(target_os = "linux")]
        Command::Setup(args) => cmd::setup::run(args),
        #[cfg(target_os = "linux")]
        Command::Gateway(args) => cmd::gateway::run(args),
        #[cfg(target_os = "linux")]
        Command::Cert(args) => cmd::cert::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => failure.report(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_is_consistent() {
        Cli::command().debug_assert();
    }
}
