//! `npipe info`: one pipe's description (`GetNamedPipeInfo` from outside).

use std::io::{self, Write};

use serde_json::Value;

use super::{printable, CmdResult};
use crate::exit::Failure;

const LONG_ABOUT: &str = r"Describe one pipe without connecting to it (GetNamedPipeInfo).

Asks the pipe's server to describe the pipe; takes no instance and disturbs no
client. The server's pid and user come from the kernel. Prints `key: value`
lines, or with --json one JSON object, with the same keys as `npipe list --json`:
  name, file, state, pid, uid, user, type, direction, cur_instances,
  max_instances (unlimited, or null in JSON), in_buffer_size, out_buffer_size,
  max_message_size, default_timeout_ms (the wait of NMPWAIT_USE_DEFAULT_WAIT),
  security: the pipe's security descriptor, as its server was given it
  (`allow owner=full; allow group:staff=rw`, or SDDL). Anyone the pipe answers
  may see it, as on Windows; one it grants nothing is refused, and told so

On Windows: the pipe's entry in the listing of \\.\pipe\ (name, state
`listed` and cur_instances), as `npipe list` shows it.";

/// Arguments of `npipe info`.
#[derive(Debug, clap::Args)]
#[command(
    about = "Describe one pipe: type, direction, instances, server (GetNamedPipeInfo)",
    long_about = LONG_ABOUT,
    after_help = "Examples:\n  npipe info echo\n  npipe info '\\\\.\\pipe\\echo' --json"
)]
pub struct Args {
    /// The pipe's name: \\.\pipe\NAME, //./pipe/NAME or NAME.
    pub name: String,

    /// Print one JSON object instead of `key: value` lines.
    #[arg(long)]
    pub json: bool,
}

/// Runs `npipe info`.
pub fn run(args: &Args) -> CmdResult {
    let pipe = npipe::query_pipe(args.name.as_str())?;
    #[cfg(unix)]
    let value = super::list::served_json(&pipe);
    #[cfg(windows)]
    let value = super::list::listed_json(&pipe);
    let mut out = io::stdout().lock();
    let written = if args.json {
        writeln!(out, "{value}")
    } else {
        write_fields(&mut out, &value)
    };
    written.and_then(|()| out.flush()).map_err(Failure::stdout)
}

fn write_fields(out: &mut impl Write, value: &Value) -> io::Result<()> {
    let Value::Object(map) = value else {
        return Ok(());
    };
    // In the order `served_json` builds them (serde_json sorts keys by default).
    const ORDER: [&str; 15] = [
        "name",
        "file",
        "state",
        "pid",
        "uid",
        "user",
        "type",
        "direction",
        "cur_instances",
        "max_instances",
        "in_buffer_size",
        "out_buffer_size",
        "max_message_size",
        "default_timeout_ms",
        "security",
    ];
    let width = ORDER.iter().map(|k| k.len()).max().unwrap_or(0) + 1;
    for key in ORDER {
        let shown = match map.get(key) {
            Some(Value::String(s)) => printable(s).into_owned(),
            Some(Value::Null) if key == "max_instances" => "unlimited".to_string(),
            Some(Value::Null) => "-".to_string(),
            // Not told on this system (Windows lists less).
            None => continue,
            Some(v) => v.to_string(),
        };
        writeln!(out, "{:width$} {shown}", format!("{key}:"))?;
    }
    Ok(())
}
