//! `npipe wait`: wait until a pipe exists and has a free instance
//! (`WaitNamedPipe`), for scripts that start a server and then a client.

use std::time::{Duration, Instant};

use npipe::ErrorCode;

use super::{CmdResult, TimeoutArg};
use crate::exit::Failure;

const LONG_ABOUT: &str = r"Wait until a pipe exists and has a free instance (WaitNamedPipe).

Exits 0 as soon as the pipe's server answers with an instance free, without
taking it (a client may still lose the race for it, as on Windows). Waits for
a pipe that does not exist yet too, as for a server still starting. Fails
with ERROR_SEM_TIMEOUT when --timeout passes first; 0 looks once.";

/// How often the pipe is asked again.
const POLL: Duration = Duration::from_millis(10);

/// Arguments of `npipe wait`.
#[derive(Debug, clap::Args)]
#[command(
    about = "Wait until a pipe exists and has a free instance (WaitNamedPipe)",
    long_about = LONG_ABOUT,
    after_help = "Examples:\n  npipe serve echo & npipe wait echo && npipe call echo hi\n  npipe wait echo --timeout forever"
)]
pub struct Args {
    /// The pipe's name: \\.\pipe\NAME, //./pipe/NAME or NAME.
    pub name: String,

    /// How long to wait: milliseconds, or `forever`
    #[arg(long, value_name = "MS|forever", default_value = "5000")]
    pub timeout: TimeoutArg,
}

/// Runs `npipe wait`.
pub fn run(args: &Args) -> CmdResult {
    let deadline = args.timeout.limit().map(|l| Instant::now() + l);
    loop {
        let Some(why) = busy(&args.name)? else {
            return Ok(());
        };
        let now = Instant::now();
        if deadline.is_some_and(|d| now >= d) {
            return Err(Failure::from(npipe::Error::new(
                ErrorCode::Timeout,
                format!("{why} within --timeout {}", args.timeout),
            ))
            .hint("give a longer --timeout, or `forever`"));
        }
        let pause = deadline.map_or(POLL, |d| POLL.min(d - now));
        std::thread::sleep(pause);
    }
}

/// Why the pipe has no instance free right now, or `None` if it has one:
/// its server's own count.
#[cfg(unix)]
fn busy(name: &str) -> npipe::Result<Option<String>> {
    match npipe::query_pipe(name) {
        Ok(p) if p.max_instances.is_none_or(|m| p.cur_instances < m) => Ok(None),
        Ok(p) => Ok(Some(format!(
            "all {} instances of {name} stayed busy",
            p.cur_instances
        ))),
        // Not there (yet), or its server is going away: ask again.
        Err(e) if matches!(e.code(), ErrorCode::FileNotFound | ErrorCode::BrokenPipe) => {
            Ok(Some(format!("{name} did not appear")))
        }
        Err(e) => Err(e),
    }
}

/// Why the pipe has no instance free right now, or `None` if it has one:
/// the kernel's `WaitNamedPipe`, for one [`POLL`] at a time (it fails at
/// once for a name no server has made yet).
#[cfg(windows)]
fn busy(name: &str) -> npipe::Result<Option<String>> {
    match npipe::wait_named_pipe(name, Some(POLL)) {
        Ok(()) => Ok(None),
        Err(e) if e.code() == ErrorCode::Timeout => {
            Ok(Some(format!("every instance of {name} stayed busy")))
        }
        Err(e) if e.code() == ErrorCode::FileNotFound => Ok(Some(format!("{name} did not appear"))),
        Err(e) => Err(e),
    }
}
