//! `spawn_as_client` on Windows: a process started with the client's token
//! (`CreateProcessAsUser`), as [`ClientProcess`]. std's `Command` cannot
//! take a token, so the command line, environment and directory are read
//! from it and the process is started here; what `Command` does not tell
//! (whether `env_clear` was called, how standard streams were set) is
//! fixed: the child gets only the variables set on the `Command`, and its
//! standard input, output and error are pipes.

use std::ffi::OsStr;
use std::io::{self, Read};
use std::os::windows::ffi::OsStrExt;
use std::os::windows::io::OwnedHandle;
use std::os::windows::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ChildStderr, ChildStdin, ChildStdout, Command, ExitStatus, Output};

use super::end::{impersonate_on_this_thread, revert};
use crate::error::{Error, ErrorCode, Result};
use crate::sys;

/// A process started as a pipe's client by `spawn_as_client`: std's
/// `Child`, for a process std could not start. Dropping it neither waits
/// for nor ends the process.
#[derive(Debug)]
pub struct ClientProcess {
    process: OwnedHandle,
    pid: u32,
    /// The child's standard input, to write to.
    pub stdin: Option<ChildStdin>,
    /// The child's standard output, to read.
    pub stdout: Option<ChildStdout>,
    /// The child's standard error, to read (drop it to let the child's
    /// writes there fail instead of filling the pipe).
    pub stderr: Option<ChildStderr>,
}

impl ClientProcess {
    /// The process id.
    pub fn id(&self) -> u32 {
        self.pid
    }

    /// Waits for the process to exit. Closes its standard input first, as
    /// std's `Child::wait` does, so that a child reading it can finish.
    pub fn wait(&mut self) -> io::Result<ExitStatus> {
        drop(self.stdin.take());
        let code = sys::wait_process(&self.process, u32::MAX)?;
        Ok(ExitStatus::from_raw(code.unwrap_or(u32::MAX)))
    }

    /// Its exit status if it has exited, without waiting.
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        Ok(sys::wait_process(&self.process, 0)?.map(ExitStatus::from_raw))
    }

    /// Ends the process (`TerminateProcess`, exit code 1).
    pub fn kill(&mut self) -> io::Result<()> {
        sys::terminate_process(&self.process)
    }

    /// Closes its input, reads all of its output and error, and waits.
    pub fn wait_with_output(mut self) -> io::Result<Output> {
        drop(self.stdin.take());
        let err = self.stderr.take().map(|mut e| {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                e.read_to_end(&mut buf).map(|_| buf)
            })
        });
        let mut stdout = Vec::new();
        if let Some(mut out) = self.stdout.take() {
            out.read_to_end(&mut stdout)?;
        }
        let stderr = match err {
            Some(thread) => thread
                .join()
                .map_err(|_| io::Error::other("the stderr reader panicked"))??,
            None => Vec::new(),
        };
        Ok(Output {
            status: self.wait()?,
            stdout,
            stderr,
        })
    }
}

/// Starts `cmd` with the token of the client of `pipe`, taken on this
/// thread for as long as it takes to copy it.
pub(crate) fn spawn_as_client(pipe: &sys::Pipe, cmd: &Command) -> Result<ClientProcess> {
    let mut spec = sys::SpawnSpec {
        application: wide(find_program(cmd)?.as_os_str()),
        command_line: command_line(cmd),
        environment: environment_block(cmd),
        current_dir: cmd.get_current_dir().map(|d| wide(d.as_os_str())),
    };
    impersonate_on_this_thread(pipe)?;
    let token = sys::thread_token_as_primary();
    revert();
    let token = token.map_err(|e| match e.raw_os_error() {
        Some(ERROR_BAD_IMPERSONATION_LEVEL) => Error::new(
            ErrorCode::CannotImpersonate,
            "the client allowed identification only: it cannot be acted as \
             (its ClientOptions::impersonation_level)",
        ),
        _ => Error::os(e, "cannot take the client's token"),
    })?;
    let program = cmd.get_program().to_string_lossy().into_owned();
    let spawned = sys::create_process_as_user(&token, &mut spec).map_err(|e| {
        if e.raw_os_error() == Some(ERROR_PRIVILEGE_NOT_HELD) {
            Error::new(
                ErrorCode::PrivilegeNotHeld,
                format!(
                    "cannot start {program} as the client: CreateProcessAsUser needs \
                     SeAssignPrimaryTokenPrivilege (a service running as LocalSystem has it) \
                     for a client of another logon session"
                ),
            )
        } else {
            Error::os(e, &format!("cannot start {program} as the client"))
        }
    })?;
    Ok(ClientProcess {
        process: spawned.process,
        pid: spawned.pid,
        stdin: Some(ChildStdin::from(spawned.stdin)),
        stdout: Some(ChildStdout::from(spawned.stdout)),
        stderr: Some(ChildStderr::from(spawned.stderr)),
    })
}

/// The program to start: a name with a directory as it is; a bare name
/// (`.exe` added if it has no extension) looked for in the `PATH` set on
/// `cmd`, then in the system directory, and never in the server's own
/// directory, its current directory or its `PATH` (where `CreateProcess`
/// would look, and another user might have put a program of that name).
/// Batch files are refused: `cmd.exe` would read their arguments by rules
/// of its own.
fn find_program(cmd: &Command) -> Result<PathBuf> {
    let program = Path::new(cmd.get_program());
    // Windows drops a name's trailing dots and spaces: `run.bat.` is
    // `run.bat`.
    let file_name = program
        .file_name()
        .map(|n| n.to_string_lossy().trim_end_matches(['.', ' ']).to_string())
        .unwrap_or_default();
    let ext = Path::new(&file_name)
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase());
    if matches!(ext.as_deref(), Some("bat" | "cmd")) {
        return Err(Error::new(
            ErrorCode::InvalidParameter,
            format!(
                "{}: a batch file is not started as the client; run it as \
                 `cmd.exe /C` and its arguments",
                program.display()
            ),
        ));
    }
    // `CreateProcess` adds `.exe` to a name without an extension, and so
    // does this.
    let with_exe = |p: &Path| match ext {
        Some(_) => p.to_path_buf(),
        None => p.with_extension("exe"),
    };
    let text = program.as_os_str().to_string_lossy();
    if text.contains(['\\', '/', ':']) {
        // A relative path goes from the command's directory, never the
        // server's.
        let path = match cmd.get_current_dir() {
            _ if program.is_absolute() => program.to_path_buf(),
            Some(dir) if dir.is_absolute() => dir.join(program),
            _ => {
                return Err(Error::new(
                    ErrorCode::InvalidParameter,
                    format!(
                        "{}: a relative path needs an absolute current_dir on the command, \
                         or give the program's full path",
                        program.display()
                    ),
                ))
            }
        };
        return Ok(if path.is_file() {
            path
        } else {
            with_exe(&path)
        });
    }
    let name = with_exe(program);
    let path = cmd
        .get_envs()
        .find(|(k, _)| k.eq_ignore_ascii_case("PATH"))
        .and_then(|(_, v)| v.map(|v| v.to_os_string()));
    let system =
        sys::system_directory().map_err(|e| Error::os(e, "cannot find the system directory"))?;
    path.iter()
        .flat_map(std::env::split_paths)
        // An empty or relative entry would be the server's own directory.
        .filter(|dir| dir.is_absolute())
        .chain(Some(system))
        .map(|dir| dir.join(&name))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            Error::new(
                ErrorCode::FileNotFound,
                format!(
                    "{}: not found in the PATH set on the command nor in the system directory",
                    program.display()
                ),
            )
        })
}

/// The client allowed identification only.
const ERROR_BAD_IMPERSONATION_LEVEL: i32 = 1346;
/// This process may not assign a primary token.
const ERROR_PRIVILEGE_NOT_HELD: i32 = 1314;

fn wide(s: &OsStr) -> Vec<u16> {
    s.encode_wide().chain(Some(0)).collect()
}

/// The program and its arguments as one command line, each quoted as the
/// C runtime's `CommandLineToArgvW` rules read it back.
fn command_line(cmd: &Command) -> Vec<u16> {
    let mut line = Vec::new();
    quote(cmd.get_program(), &mut line);
    for arg in cmd.get_args() {
        line.push(u16::from(b' '));
        quote(arg, &mut line);
    }
    line.push(0);
    line
}

/// One argument: as it is if it needs no quotes; else in quotes, with the
/// backslashes before a quote (or the closing one) doubled and quotes
/// escaped.
fn quote(arg: &OsStr, out: &mut Vec<u16>) {
    let units: Vec<u16> = arg.encode_wide().collect();
    let special = |c: u16| matches!(c, 0x20 | 0x09 | 0x0a | 0x0b | 0x22);
    if !units.is_empty() && !units.iter().copied().any(special) {
        out.extend_from_slice(&units);
        return;
    }
    let backslash = u16::from(b'\\');
    out.push(u16::from(b'"'));
    let mut backslashes = 0;
    for c in units {
        if c == backslash {
            backslashes += 1;
        } else {
            if c == u16::from(b'"') {
                out.extend(std::iter::repeat_n(backslash, backslashes + 1));
            }
            backslashes = 0;
        }
        out.push(c);
    }
    out.extend(std::iter::repeat_n(backslash, backslashes));
    out.push(u16::from(b'"'));
}

/// The variables set on `cmd` (and no others), as Windows' environment
/// block: `NAME=VALUE` strings sorted by name without regard to case, each
/// NUL-terminated, then one more NUL.
fn environment_block(cmd: &Command) -> Vec<u16> {
    let mut vars: Vec<(Vec<u16>, Vec<u16>)> = cmd
        .get_envs()
        .filter_map(|(k, v)| Some((k.encode_wide().collect(), v?.encode_wide().collect())))
        .collect();
    vars.sort_by_cached_key(|(k, _)| String::from_utf16_lossy(k).to_uppercase());
    let mut block = Vec::new();
    for (k, v) in vars {
        block.extend(k);
        block.push(u16::from(b'='));
        block.extend(v);
        block.push(0);
    }
    if block.is_empty() {
        block.push(0);
    }
    block.push(0);
    block
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(program: &str, args: &[&str]) -> String {
        let mut cmd = Command::new(program);
        cmd.args(args);
        let mut units = command_line(&cmd);
        assert_eq!(units.pop(), Some(0));
        String::from_utf16(&units).unwrap()
    }

    #[test]
    fn arguments_are_quoted_as_the_c_runtime_reads_them() {
        assert_eq!(
            line("cmd.exe", &["/C", "echo hi"]),
            r#"cmd.exe /C "echo hi""#
        );
        assert_eq!(line("a", &[""]), r#"a """#);
        assert_eq!(line("a", &[r#"say "hi""#]), r#"a "say \"hi\"""#);
        assert_eq!(
            line("a", &[r"C:\dir with space\"]),
            r#"a "C:\dir with space\\""#
        );
        assert_eq!(line("a", &[r"C:\plain\path"]), r"a C:\plain\path");
        assert_eq!(line("a", &[r#"x\"y z"#]), r#"a "x\\\"y z""#);
    }

    /// A bare name is found in the command's PATH or the system directory,
    /// never where the server happens to be; a batch file is refused.
    #[test]
    fn programs_are_found_where_the_command_says_or_the_system_keeps_them() {
        let found = find_program(&Command::new("cmd")).unwrap();
        assert!(
            found.is_absolute() && found.ends_with("cmd.exe"),
            "{found:?}"
        );
        let e = find_program(&Command::new("npipe-no-such-program")).unwrap_err();
        assert_eq!(e.code(), ErrorCode::FileNotFound, "{e}");
        for batch in [r"C:\tools\run.BAT", r"C:\tools\run.bat. ", "run.cmd..."] {
            let e = find_program(&Command::new(batch)).unwrap_err();
            assert_eq!(e.code(), ErrorCode::InvalidParameter, "{batch}: {e}");
        }
        let e = find_program(&Command::new(r"bin\tool.exe")).unwrap_err();
        assert_eq!(e.code(), ErrorCode::InvalidParameter, "{e}");
        let dir = std::env::temp_dir().join(format!("npipe-path-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("npipe-on-path.exe"), b"").unwrap();
        // A program of that name planted in the server's current directory,
        // where CreateProcess would look: found neither without the
        // command's PATH nor through an empty entry (no directory, so the
        // current one).
        let planted = std::env::current_dir().unwrap().join("npipe-on-path.exe");
        std::fs::write(&planted, b"").unwrap();
        let mut cmd = Command::new("npipe-on-path");
        let without = find_program(&cmd);
        cmd.env("Path", ";");
        let found = find_program(&cmd);
        std::fs::remove_file(&planted).unwrap();
        assert!(without.is_err(), "found without the command's PATH");
        assert!(
            found.is_err(),
            "found through an empty PATH entry: {found:?}"
        );
        cmd.env("Path", &dir);
        assert_eq!(find_program(&cmd).unwrap(), dir.join("npipe-on-path.exe"));
        let mut relative = Command::new(r".\npipe-on-path");
        relative.current_dir(&dir);
        assert_eq!(
            find_program(&relative).unwrap(),
            dir.join("npipe-on-path.exe")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_environment_is_what_was_set_sorted() {
        let mut cmd = Command::new("x");
        cmd.env("b", "2").env("A", "1").env_remove("C");
        let block = environment_block(&cmd);
        assert_eq!(String::from_utf16(&block).unwrap(), "A=1\0b=2\0\0");
        assert_eq!(environment_block(&Command::new("x")), [0, 0]);
    }
}
