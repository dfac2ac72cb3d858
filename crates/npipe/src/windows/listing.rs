//! What Windows tells of the pipes on this machine without taking an
//! instance of any: the directory listing of `\\.\pipe\` (Sysinternals
//! PipeList's view) and `WaitNamedPipe`. Asking a server itself, as
//! `query_pipe` does on Linux, would connect to it.

use std::time::Duration;

use super::os;
use crate::error::{Error, ErrorCode, Result};
use crate::name::PipeName;
use crate::sys;

/// A pipe on this machine, as the pipe file system lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ListedPipe {
    /// The name after `\\.\pipe\`.
    pub name: String,
    /// Instances that exist, connected or listening. (The instance limit
    /// is not in this listing: `FindFirstFile` does not carry it.)
    pub cur_instances: u32,
}

/// Every pipe on this machine (`FindFirstFile` on `\\.\pipe\*`), in name
/// order. Wine cannot list the pipe file system: there this fails with
/// `ERROR_BAD_DEV_TYPE` (66).
///
/// ```no_run
/// for pipe in npipe::list_pipes()? {
///     println!("{} ({} instances)", pipe.name, pipe.cur_instances);
/// }
/// # Ok::<(), npipe::Error>(())
/// ```
pub fn list_pipes() -> Result<Vec<ListedPipe>> {
    /// What Wine answers: it has no directory of pipes.
    const ERROR_BAD_DEV_TYPE: i32 = 66;
    let listed = sys::list_pipes().map_err(|e| {
        if e.raw_os_error() == Some(ERROR_BAD_DEV_TYPE) && sys::running_under_wine() {
            return Error::new(
                ErrorCode::NotSupported,
                r"cannot list \\.\pipe\: Wine cannot list the pipe file system (Windows can)",
            );
        }
        os(e, r"cannot list \\.\pipe\")
    })?;
    let mut pipes: Vec<ListedPipe> = listed
        .into_iter()
        .map(|p| ListedPipe {
            name: p.name,
            cur_instances: p.cur_instances,
        })
        .collect();
    pipes.sort_by_cached_key(|p| p.name.to_lowercase());
    Ok(pipes)
}

/// One pipe's entry in [`list_pipes`]: `ERROR_FILE_NOT_FOUND` if no server
/// has made the name.
pub fn query_pipe(name: impl TryInto<PipeName, Error = Error>) -> Result<ListedPipe> {
    let name = name.try_into()?;
    if name.host().is_some() {
        return Err(Error::new(
            ErrorCode::NotSupported,
            format!("{name}: only this machine's pipes are listed"),
        ));
    }
    list_pipes()?
        .into_iter()
        .find(|p| p.name.eq_ignore_ascii_case(name.name()))
        .ok_or_else(|| Error::new(ErrorCode::FileNotFound, format!("no pipe {name}")))
}

/// `WaitNamedPipe`: until the pipe has an instance free for a client, for
/// `timeout` at most (`None`: for ever). `ERROR_SEM_TIMEOUT` when the time
/// runs out, `ERROR_FILE_NOT_FOUND` if no server has made the name. It
/// only waits: a client must still open the pipe, and may lose the
/// instance to another one meanwhile ([`ClientOptions::wait`](crate::ClientOptions::wait)
/// waits and opens in one step).
pub fn wait_named_pipe(
    name: impl TryInto<PipeName, Error = Error>,
    timeout: Option<Duration>,
) -> Result<()> {
    const FOREVER: u32 = u32::MAX;
    let name = name.try_into()?;
    let ms = timeout.map_or(FOREVER, |t| {
        // 0 means the pipe's default time-out to Windows: wait 1 ms at least.
        u32::try_from(t.as_millis())
            .unwrap_or(FOREVER - 1)
            .clamp(1, FOREVER - 1)
    });
    sys::wait_named_pipe(&sys::wide(&name.to_string()), ms)
        .map_err(|e| os(e, &format!("waiting for {name}")))
}
