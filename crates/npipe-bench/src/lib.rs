//! The benchmark behind `npipe bench`: npipe beside the raw Unix socket it
//! runs on, both measured in the same run.
//!
//! Every case runs through npipe and through a plain Unix domain socket
//! doing the same work by hand (`raw.rs`), interleaved round by round, the
//! client in this process and the server in another (`peer.rs`), both
//! pinned (`pin.rs`). The output (`report.rs`) gives both figures and their
//! ratio, the median of the per-round ratios with min and max beside it.
//!
//! The server processes are the running program itself, started again
//! (`std::env::current_exe()`) with [`INTERNAL_ROLE`] in their environment:
//! a program that calls [`run`] must then also dispatch `bench-peer` (with
//! [`PeerArgs`]) to [`run_peer`] and `bench-scale-peer PATH` to
//! [`run_scale_peer`], and be `npipe` itself for `serve NAME --quiet`, the
//! npipe side of the scale case. Failures come back as an [`Error`] for that
//! program to report.

mod cases;
mod error;
mod peer;
mod pin;
mod procfs;
mod raw;
mod remote;
mod report;
mod scale;

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub use error::Error;

/// The environment variable set in the processes the bench starts of its
/// own program, which run its internal roles (`bench-peer`,
/// `bench-scale-peer`); a program's public command line need not list them.
pub const INTERNAL_ROLE: &str = "NPIPE_INTERNAL_ROLE";
pub use peer::{run as run_peer, PeerArgs};
pub use scale::run_peer as run_scale_peer;

use self::cases::{Case, Scale, CASES};
use self::peer::Peer;
use self::pin::Pin;
use self::report::{Rounds, Row, RunInfo};

const LONG_ABOUT: &str = r"Measure npipe beside the raw Unix socket it runs on.

Each case runs twice per round, interleaved: once through npipe, once through a
plain Unix domain stream socket doing the same work the simple fast way (a
4-byte length prefix and one writev per message, a 64 KiB buffered reader;
plain write/read for bytes). The client runs in this process, the server in a
second process of this program. The figures are medians over the rounds, and
ratio = npipe / raw is the median of the per-round ratios, with the least and
greatest beside it so the noise shows.

Cases:
  byte_throughput_64k    byte pipe, 64 KiB writes (GiB/s)
  byte_throughput_4k     byte pipe, 4 KiB writes (GiB/s)
  msg_throughput_64b     message pipe, 64-byte messages (messages/s)
  msg_throughput_4k      message pipe, 4 KiB messages (messages/s)
  msg_throughput_1m      message pipe, 1 MiB messages (GiB/s)
  transact_64b_blocking  TransactNamedPipe round trip, 64 B each way
                         (median µs; the _p99 row is the 99th percentile,
                         the _cpu row the CPU time both processes spent per
                         round trip, in µs: CPU seconds per million)
  transact_64b_split     the same with client and server on two CPUs,
                         whatever --pin says (skipped, saying so, where
                         there is one CPU): what the shared-memory path
                         (NPIPE_SHARED_MEMORY=on) saves in wake-ups
  transact_64b_tokio     the same with both ends on a current-thread tokio
                         runtime, against tokio's UnixStream (median µs)
  connect_rate           connect, handshake, one 64 B transact, close
                         (connections/s; raw: connect, write, read, close)
  call_rate              the same through npipe::call (CallNamedPipe), which
                         sends the request with the handshake (connections/s)
  remote_transact_64b    \\127.0.0.1\pipe\NAME through the gateway (TLS 1.3
                         with client certificates), against raw TLS 1.3 over
                         TCP on loopback with the same rustls settings
                         (median µs)
  remote_throughput_64k  the same, a byte pipe, 64 KiB writes (GiB/s)
  remote_connect_rate    the same, connect (TCP, TLS, HELLO), one 64 B
                         transact, close (connections/s)
  scale                  many clients on one server process: `npipe serve`
                         (tokio) against a hand-written tokio echo server
                         (a read_exact for each header and each body, not
                         the buffered reader above);
                         N clients connect (scale_connect_rate), sit idle
                         (scale_idle_memory: server RSS per connection, in
                         bytes), then all exchange messages at once
                         (scale_msg_rate). N = 10,000 (1,000 with --quick).

Placement matters more than anything else on a small virtual machine: two
processes on one vCPU trade a message in a fraction of the time they take
across vCPUs. --pin same (the default) puts both on one CPU; split puts them on
two; none leaves them to the scheduler. The header says where they ran.
Build with --release: a debug build's figures say nothing.";

const AFTER_HELP: &str = r"Examples:
  npipe bench                       every case, 10 rounds (about a minute)
  npipe bench --quick --json        a quicker run, one JSON object per line
  npipe bench transact connect      only the cases whose names contain these
  npipe bench =connect_rate         only the case of exactly this name
  npipe bench --pin split --rounds 20 msg_throughput_64b";

/// Arguments of `npipe bench`.
#[derive(Debug, clap::Args)]
#[command(
    about = "Measure npipe beside the raw Unix socket (throughput, latency, connections)",
    long_about = LONG_ABOUT,
    after_help = AFTER_HELP
)]
pub struct Args {
    /// A quarter of the work per run and 5 rounds: done in seconds
    #[arg(long)]
    pub(crate) quick: bool,

    /// One JSON object per line and row instead of the table (no progress bar)
    #[arg(long)]
    pub(crate) json: bool,

    /// Where the two processes run: one CPU, two CPUs, or the scheduler's choice
    #[arg(long, value_enum, default_value_t = Pin::Same)]
    pub(crate) pin: Pin,

    /// Rounds per case; each round runs npipe and raw once [default: 10; 5 with --quick]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub(crate) rounds: Option<u32>,

    /// Token amounts of work: checks the machinery, measures nothing
    #[arg(long, hide = true)]
    pub(crate) smoke: bool,

    /// Run one side only, for profiling: no ratios (hidden)
    #[arg(long, value_enum, hide = true)]
    pub(crate) only: Option<Side>,

    /// Run only the cases whose names contain one of these [default: all]
    #[arg(value_name = "CASE")]
    pub(crate) cases: Vec<String>,
}

/// One side of a comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Side {
    Npipe,
    Raw,
}

/// The cases the filters pick (every case if none), and whether the scale
/// case is among them. A filter picks the cases whose names contain it, or
/// with a leading `=` the case of exactly that name (`=connect_rate`
/// leaves out `remote_connect_rate`).
fn select(filters: &[String]) -> Result<(Vec<&'static Case>, bool), Error> {
    let picks = |name: &str, f: &str| match f.strip_prefix('=') {
        Some(exact) => name == exact,
        None => name.contains(f),
    };
    let chosen: Vec<&Case> = CASES
        .iter()
        .filter(|c| filters.is_empty() || filters.iter().any(|f| picks(c.name, f)))
        .collect();
    let scale = filters.is_empty()
        || filters
            .iter()
            .any(|f| picks(scale::NAME, f) || f.starts_with(scale::NAME));
    if chosen.is_empty() && !scale {
        let mut names: Vec<&str> = CASES.iter().map(|c| c.name).collect();
        names.push(scale::NAME);
        return Err(Error::Usage {
            message: format!("no case matches {}", filters.join(" ")),
            hint: Some(format!("the cases are: {}", names.join(", "))),
        });
    }
    Ok((chosen, scale))
}

/// A private directory for the raw sockets, removed when dropped.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn create() -> Result<ScratchDir, Error> {
        let path = std::env::temp_dir().join(format!("npipe-bench-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir(&path)
            .map_err(|e| Error::other(format!("bench: cannot create {}: {e}", path.display())))?;
        Ok(ScratchDir(path))
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn progress_bar(total: u64, hidden: bool) -> ProgressBar {
    let target = if hidden {
        ProgressDrawTarget::hidden()
    } else {
        ProgressDrawTarget::stderr()
    };
    let bar = ProgressBar::with_draw_target(Some(total), target);
    if let Ok(style) = ProgressStyle::with_template("{bar:30} {pos}/{len} {msg}") {
        bar.set_style(style);
    }
    bar
}

/// Runs one case: a peer process, a warm-up of each side, then `rounds`
/// rounds of npipe and raw, alternating which goes first.
fn run_case(
    case: &Case,
    count: u64,
    rounds: u32,
    server_cpu: Option<usize>,
    scratch: &ScratchDir,
    only: Option<Side>,
    bar: &ProgressBar,
) -> Result<Rounds, Error> {
    let npipe_on = only != Some(Side::Raw);
    let raw_on = only != Some(Side::Npipe);
    let name = format!("npipe-bench-{}-{}", std::process::id(), case.name);
    let raw_path = scratch.0.join(format!("{}.sock", case.name));
    let certs = if case.kind.is_remote() {
        let dir = scratch.0.join(format!("{}-certs", case.name));
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| Error::other(format!("bench: cannot create {}: {e}", dir.display())))?;
        Some(remote::Certs::create(&dir)?)
    } else {
        None
    };
    let peer = Peer::start(
        case,
        &name,
        &raw_path,
        server_cpu,
        certs.as_ref().map(remote::Certs::dir),
    )?;
    let target = match (certs, peer.ports()) {
        (Some(certs), Some((gateway, raw_tls))) => {
            Some(remote::Target::new(certs, gateway, raw_tls)?)
        }
        _ => None,
    };
    let run_npipe = |count: u64| match &target {
        Some(t) => remote::run_npipe(case, &name, t, count),
        None => cases::run_npipe(case, &name, count),
    };
    let run_raw = |count: u64| match &target {
        Some(t) => remote::run_raw(case, t, count),
        None => raw::run_raw(case, &raw_path, count),
    };
    let mut out = Rounds::default();

    let warm = (count / 8).max(1);
    if npipe_on {
        run_npipe(warm)?;
    }
    if raw_on {
        run_raw(warm)?;
    }

    let peer_dir = procfs::child_proc_dir(peer.pid());
    // CPU time of both processes over one run, per unit of work.
    let with_cpu = |run: &mut dyn FnMut() -> Result<cases::Sample, Error>| {
        let before = cpu_ns(std::path::Path::new("/proc/self")) + cpu_ns(&peer_dir);
        let mut sample = run()?;
        let used =
            (cpu_ns(std::path::Path::new("/proc/self")) + cpu_ns(&peer_dir)).saturating_sub(before);
        sample.cpu_us = Some(used as f64 / 1e3 / count.max(1) as f64);
        Ok::<_, Error>(sample)
    };
    for round in 0..rounds {
        bar.set_message(format!("{} round {}/{rounds}", case.name, round + 1));
        let npipe_first = round % 2 == 0;
        for step in 0..2 {
            if (step == 0) == npipe_first {
                if npipe_on {
                    out.npipe.push(with_cpu(&mut || run_npipe(count))?);
                }
            } else if raw_on {
                out.raw.push(with_cpu(&mut || run_raw(count))?);
            }
            out.client_cpus.extend(pin::current_cpu());
            bar.inc(1);
        }
        out.server_cpus.extend(pin::cpus_of(peer.pid()));
    }
    Ok(out)
}

/// The CPU time, in nanoseconds, that the threads of the process whose
/// `/proc` directory is `dir` have run (`task/*/schedstat`: exact, where
/// `stat`'s clock ticks are 10 ms).
fn cpu_ns(dir: &std::path::Path) -> u64 {
    let Ok(tasks) = std::fs::read_dir(dir.join("task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// One JSON object per row on stdout, flushed as each case finishes.
fn print_json(rows: &[Row], info: &RunInfo) -> Result<(), Error> {
    let mut out = std::io::stdout().lock();
    for row in rows {
        writeln!(out, "{}", report::json_line(row, info))
            .and_then(|()| out.flush())
            .map_err(Error::Stdout)?;
    }
    Ok(())
}

/// Runs `npipe bench`.
pub fn run(args: &Args) -> Result<(), Error> {
    let (chosen, with_scale) = select(&args.cases)?;
    let scale = if args.smoke {
        Scale::Smoke
    } else if args.quick {
        Scale::Quick
    } else {
        Scale::Full
    };
    let rounds = args.rounds.unwrap_or(if args.quick { 5 } else { 10 });
    let cpus = pin::allowed_cpus()?;
    let placement = pin::choose(args.pin, &cpus)?;
    // Pin before starting anything: peers start pinned here too, then move.
    if let Some(cpu) = placement.client {
        pin::pin_to(cpu)?;
    }
    let info = RunInfo {
        pin: args.pin,
        scale: match scale {
            Scale::Full => "full",
            Scale::Quick => "quick",
            Scale::Smoke => "smoke",
        },
        release: !cfg!(debug_assertions),
        load: report::load_average(),
    };
    let scratch = ScratchDir::create()?;
    // The scale case is long: at most three rounds of it.
    let scale_rounds = rounds.min(3);
    let bar = progress_bar(
        (chosen.len() as u64 * u64::from(rounds) + u64::from(with_scale) * u64::from(scale_rounds))
            * 2,
        args.json || !std::io::stderr().is_terminal(),
    );

    let mut all: Vec<Row> = Vec::new();
    for case in chosen {
        let count = case.count_at(scale);
        // A case with a placement of its own runs there, then the client
        // goes back where --pin put it.
        let own = case.pin.filter(|&p| p != args.pin);
        let here = match own {
            Some(p) => match pin::choose(p, &cpus) {
                Ok(here) => {
                    pin::place_client(here, &cpus)?;
                    here
                }
                Err(_) => {
                    bar.suspend(|| {
                        eprintln!(
                            "npipe bench: SKIPPED {}: it runs with --pin {}, which needs two \
                             CPUs, and this process may use only {}",
                            case.name,
                            p.as_str(),
                            cpus.len()
                        )
                    });
                    continue;
                }
            },
            None => placement,
        };
        let measured = run_case(case, count, rounds, here.server, &scratch, args.only, &bar);
        if own.is_some() {
            pin::place_client(placement, &cpus)?;
        }
        let measured = match measured {
            Ok(m) => m,
            Err(e) => {
                bar.finish_and_clear();
                return Err(e);
            }
        };
        let rows = report::rows(case, count, &measured, own);
        if args.json {
            print_json(&rows, &info)?;
        }
        all.extend(rows);
    }
    if with_scale && args.only.is_none() {
        let rows = match scale::run(scale, scale_rounds, placement.server, &scratch, &bar) {
            Ok(rows) => rows,
            Err(e) => {
                bar.finish_and_clear();
                return Err(e);
            }
        };
        if args.json {
            print_json(&rows, &info)?;
        }
        all.extend(rows);
    }
    bar.finish_and_clear();
    if !args.json {
        let mut out = std::io::stdout().lock();
        out.write_all(report::table(&all, &info).as_bytes())
            .and_then(|()| out.flush())
            .map_err(Error::Stdout)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::select;

    fn names(filters: &[&str]) -> Vec<&'static str> {
        let filters: Vec<String> = filters.iter().map(|f| f.to_string()).collect();
        select(&filters).unwrap().0.iter().map(|c| c.name).collect()
    }

    #[test]
    fn a_filter_picks_by_part_of_a_name_or_by_the_whole_name() {
        assert_eq!(
            names(&["connect_rate"]),
            ["connect_rate", "remote_connect_rate"]
        );
        assert_eq!(names(&["=connect_rate"]), ["connect_rate"]);
        assert!(select(&["=connect".to_string()]).is_err());
        assert!(
            select(&["=scale".to_string()]).unwrap().1,
            "=scale picks scale"
        );
    }
}
