//! `npipe list`: the pipes on this machine, like Sysinternals PipeList.

use std::io::{self, Write};

#[cfg(unix)]
use npipe::unix::LocalUserExt;
#[cfg(unix)]
use npipe::{PipeEntry, ServedPipe};
use serde_json::{json, Value};

#[cfg(unix)]
use super::{direction_name, instances_text, type_name, user_text};
use super::{printable, CmdResult};
use crate::exit::Failure;

const LONG_ABOUT: &str = r#"List the pipes on this machine, like Sysinternals PipeList.

Every pipe in the namespace directory ($NPIPE_DIR, default /tmp/.npipe) is asked
to describe itself; the server's pid and user come from the kernel, not from
the server. Asking takes no instance and disturbs no client.

Columns: NAME, the server's PID and USER, TYPE (message or byte), DIRECTION
(inbound, outbound or duplex, seen from the server) and INSTANCES in use out of
the limit. Servers are asked side by side, a second each at most, so hung
ones hold a listing up about a second in all. Below the table, every other
socket and what it is:
  (denied: FILE, reason)     a server is there but refuses to describe its
                             pipe to you (its security grants you nothing)
  (not answering: FILE)      a server holds it but did not reply: hung or busy
  (dead: FILE, the pipe NAME) no server; the next server of the name replaces
                             it, and --prune removes it now (only these)

With --json, one JSON object per line:
  {name, file, pid, uid, user, type, direction, cur_instances, max_instances,
   in_buffer_size, out_buffer_size, max_message_size, default_timeout_ms,
   security, state: "serving"}
max_instances is null for unlimited; the other entries are
  {file, state: "denied" | "not answering" | "dead" | "unreadable", reason?}
and a dead one has the pipe's name too where it can be told (null if not):
a file name that is a hash (long names, capitals, spaces...) is named by a
note its server left beside it.

On Windows it lists \\.\pipe\ as PipeList does: each pipe's NAME and the
INSTANCES that exist. The server, type, direction and instance limit are not
in that listing (asking the server would take an instance), and --json gives
{name, state: "listed", cur_instances}. There is nothing to --prune."#;

/// Arguments of `npipe list`.
#[derive(Debug, clap::Args)]
#[command(
    about = "List the pipes on this machine (like Sysinternals PipeList)",
    long_about = LONG_ABOUT,
    after_help = "Examples:\n  npipe list\n  npipe list --prune\n  npipe list --json | jq -r 'select(.pid == 1234) | .name'"
)]
pub struct Args {
    /// One JSON object per line instead of a table.
    #[arg(long)]
    pub json: bool,

    /// First remove the sockets of dead servers (connect refused)
    ///
    /// Live pipes are never touched; another user's stale socket cannot be
    /// removed (the directory is sticky) and is reported instead.
    #[arg(verbatim_doc_comment, long)]
    pub prune: bool,
}

/// The JSON description of a served pipe, shared with `npipe info`.
#[cfg(unix)]
pub fn served_json(p: &ServedPipe) -> Value {
    json!({
        "name": p.name,
        "file": p.file,
        "state": "serving",
        "pid": p.server.pid,
        "uid": p.server.user.uid(),
        "user": p.server_user,
        "type": type_name(p.pipe_type),
        "direction": direction_name(p.direction),
        "cur_instances": p.cur_instances,
        "max_instances": p.max_instances,
        "in_buffer_size": p.in_buffer_size,
        "out_buffer_size": p.out_buffer_size,
        "max_message_size": p.max_message_size,
        "default_timeout_ms": u64::try_from(p.default_timeout.as_millis()).unwrap_or(u64::MAX),
        "security": p.security,
    })
}

/// Runs `npipe list`.
#[cfg(unix)]
pub fn run(args: &Args) -> CmdResult {
    if args.prune {
        let pruned = npipe::remove_stale_pipes()?;
        let mut err = io::stderr().lock();
        for file in &pruned.removed {
            let _ = writeln!(err, "removed stale socket {file}");
        }
        for (file, why) in &pruned.kept {
            let _ = writeln!(err, "cannot remove stale socket {file}: {why}");
        }
    }
    let entries = npipe::list_pipes()?;
    let mut out = io::stdout().lock();
    let written = if args.json {
        write_json(&mut out, &entries)
    } else {
        write_table(&mut out, &entries)
    };
    written.and_then(|()| out.flush()).map_err(Failure::stdout)
}

#[cfg(unix)]
fn write_json(out: &mut impl Write, entries: &[PipeEntry]) -> io::Result<()> {
    for entry in entries {
        let value = match entry {
            PipeEntry::Served(p) => served_json(p),
            PipeEntry::Denied { reason, .. } | PipeEntry::Unreadable { reason, .. } => json!({
                "file": entry.file(),
                "state": entry.state(),
                "reason": reason,
            }),
            PipeEntry::Dead { name, .. } => json!({
                "file": entry.file(),
                "state": entry.state(),
                "name": name,
            }),
            other => json!({
                "file": other.file(),
                "state": other.state(),
            }),
        };
        writeln!(out, "{value}")?;
    }
    Ok(())
}

#[cfg(unix)]
fn write_table(out: &mut impl Write, entries: &[PipeEntry]) -> io::Result<()> {
    let dir = npipe::namespace_directory();
    let served = entries
        .iter()
        .filter(|e| matches!(e, PipeEntry::Served(_)))
        .count();
    write!(out, "Pipes in {}: {served} serving", dir.display())?;
    for state in ["denied", "not answering", "dead", "unreadable"] {
        let n = entries.iter().filter(|e| e.state() == state).count();
        if n > 0 {
            write!(out, ", {n} {state}")?;
        }
    }
    writeln!(out)?;
    if entries.is_empty() {
        return Ok(());
    }

    let header = ["NAME", "PID", "USER", "TYPE", "DIRECTION", "INSTANCES"];
    let rows: Vec<Option<[String; 6]>> = entries
        .iter()
        .map(|e| match e {
            PipeEntry::Served(p) => Some([
                printable(&p.name).into_owned(),
                p.server.pid.to_string(),
                user_text(p.server_user.as_deref(), p.server.user.uid()),
                type_name(p.pipe_type).to_string(),
                direction_name(p.direction).to_string(),
                instances_text(p.cur_instances, p.max_instances),
            ]),
            _ => None,
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in rows.iter().flatten() {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    write_row(out, &header.map(String::from), &widths)?;
    for row in rows.iter().flatten() {
        write_row(out, row, &widths)?;
    }
    // The rest, after the live pipes: what each is, and what to do.
    for entry in entries {
        let file = printable(entry.file());
        match entry {
            PipeEntry::Served(_) => {}
            PipeEntry::Denied { reason, .. } => {
                writeln!(out, "(denied: {file}, {})", printable(reason))?
            }
            PipeEntry::NotAnswering { .. } => writeln!(
                out,
                "(not answering: {file}; its server holds it but did not reply)"
            )?,
            PipeEntry::Dead { name, .. } => {
                // A hashed file name says nothing: name the pipe it was.
                let was = match name {
                    Some(name) if name != entry.file() => {
                        format!(", the pipe {}", printable(name))
                    }
                    _ => String::new(),
                };
                writeln!(
                    out,
                    "(dead: {file}{was}; no server, `npipe list --prune` removes it)"
                )?
            }
            PipeEntry::Unreadable { reason, .. } => {
                writeln!(out, "(unreadable: {file}, {})", printable(reason))?
            }
        }
    }
    Ok(())
}

fn write_row<const N: usize>(
    out: &mut impl Write,
    row: &[String; N],
    widths: &[usize; N],
) -> io::Result<()> {
    let mut line = String::new();
    for (i, (cell, width)) in row.iter().zip(widths).enumerate() {
        if i + 1 == row.len() {
            line.push_str(cell);
        } else {
            let pad = width - cell.chars().count();
            line.push_str(cell);
            line.push_str(&" ".repeat(pad + 2));
        }
    }
    writeln!(out, "{line}")
}

/// A pipe as Windows lists it, shared with `npipe info`: the listing has
/// its name and instances; the rest only its server knows, and asking it
/// would take an instance.
#[cfg(windows)]
pub fn listed_json(p: &npipe::ListedPipe) -> Value {
    json!({
        "name": p.name,
        "state": "listed",
        "cur_instances": p.cur_instances,
    })
}

/// Runs `npipe list`: the directory listing of `\\.\pipe\`.
#[cfg(windows)]
pub fn run(args: &Args) -> CmdResult {
    if args.prune {
        return Err(Failure::new(
            crate::exit::Status::Usage,
            "--prune has nothing to do on Windows: a pipe goes with its last instance",
        ));
    }
    let pipes = npipe::list_pipes()?;
    let mut out = io::stdout().lock();
    let written = if args.json {
        pipes
            .iter()
            .try_for_each(|p| writeln!(out, "{}", listed_json(p)))
    } else {
        write_listing(&mut out, &pipes)
    };
    written.and_then(|()| out.flush()).map_err(Failure::stdout)
}

#[cfg(windows)]
fn write_listing(out: &mut impl Write, pipes: &[npipe::ListedPipe]) -> io::Result<()> {
    writeln!(out, "Pipes on this machine: {}", pipes.len())?;
    if pipes.is_empty() {
        return Ok(());
    }
    let header = ["NAME", "INSTANCES"];
    let rows: Vec<[String; 2]> = pipes
        .iter()
        .map(|p| [printable(&p.name).into_owned(), p.cur_instances.to_string()])
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    write_row(out, &header.map(String::from), &widths)?;
    for row in &rows {
        write_row(out, row, &widths)?;
    }
    Ok(())
}
