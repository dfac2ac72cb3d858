//! Where the two processes run: pinning with `sched_setaffinity`, and
//! finding out afterwards where they actually ran.
//!
//! On a 2-vCPU virtual machine a round trip between processes on one vCPU
//! costs a fraction of one across vCPUs, and an unpinned pair lands either
//! way (the team's `BENCHMARKING.md`, kept outside this repository: about
//! 10 µs against 55-65 µs for a 64-byte round trip), so comparisons pin
//! both processes.

use std::collections::BTreeSet;

use rustix::thread::{sched_getaffinity, sched_setaffinity, CpuSet};

use crate::Error;

/// `--pin`: where to put the client (this process) and the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Pin {
    /// Both processes on one CPU (the stable default for comparisons).
    Same,
    /// The client on one CPU, the server on another.
    Split,
    /// Leave placement to the scheduler (results are often bimodal).
    None,
}

impl Pin {
    pub fn as_str(self) -> &'static str {
        match self {
            Pin::Same => "same",
            Pin::Split => "split",
            Pin::None => "none",
        }
    }
}

/// The CPUs chosen for each side; `None` means not pinned.
#[derive(Debug, Clone, Copy)]
pub struct Placement {
    pub client: Option<usize>,
    pub server: Option<usize>,
}

/// The CPUs this process may run on, read once before anything is pinned
/// (afterwards the affinity says only where this run put us).
pub fn allowed_cpus() -> Result<Vec<usize>, Error> {
    let set = sched_getaffinity(None)
        .map_err(|e| Error::other(format!("bench: cannot read the CPU affinity: {e}")))?;
    Ok((0..CpuSet::MAX_CPU).filter(|&c| set.is_set(c)).collect())
}

/// Picks the CPUs for `pin` from `cpus`, those this process may use.
pub fn choose(pin: Pin, cpus: &[usize]) -> Result<Placement, Error> {
    let last = *cpus
        .last()
        .ok_or_else(|| Error::other("bench: no CPU is allowed"))?;
    Ok(match pin {
        Pin::None => Placement {
            client: None,
            server: None,
        },
        Pin::Same => Placement {
            client: Some(last),
            server: Some(last),
        },
        Pin::Split => {
            if cpus.len() < 2 {
                return Err(Error::usage(
                    "bench: --pin split needs two CPUs, and this process may use only one",
                ));
            }
            Placement {
                client: Some(cpus[0]),
                server: Some(last),
            }
        }
    })
}

/// Puts the calling thread where `placement` wants the client: on its CPU,
/// or on any of `cpus` when it is not pinned.
pub fn place_client(placement: Placement, cpus: &[usize]) -> Result<(), Error> {
    match placement.client {
        Some(cpu) => pin_to(cpu),
        None => {
            let mut set = CpuSet::new();
            for &cpu in cpus {
                set.set(cpu);
            }
            sched_setaffinity(None, &set)
                .map_err(|e| Error::other(format!("bench: cannot unpin: {e}")))
        }
    }
}

/// Pins the calling thread (and the threads and processes it starts later)
/// to `cpu`.
pub fn pin_to(cpu: usize) -> Result<(), Error> {
    let mut set = CpuSet::new();
    set.set(cpu);
    sched_setaffinity(None, &set)
        .map_err(|e| Error::other(format!("bench: cannot pin to CPU {cpu}: {e}")))
}

/// Pins another process (all of its threads started afterwards) to `cpu`.
pub fn pin_pid(pid: u32, cpu: usize) -> Result<(), Error> {
    let mut set = CpuSet::new();
    set.set(cpu);
    let pid =
        rustix::process::Pid::from_raw(pid as i32).ok_or_else(|| Error::other("bench: pid 0"))?;
    sched_setaffinity(Some(pid), &set).map_err(|e| {
        Error::other(format!(
            "bench: cannot pin process {pid:?} to CPU {cpu}: {e}"
        ))
    })
}

/// The CPU the calling thread last ran on (`/proc/thread-self/stat`, field
/// 39, rather than `sched_getcpu`, whose vDSO lookup crashes under valgrind).
pub fn current_cpu() -> Option<usize> {
    last_cpu(&std::fs::read_to_string("/proc/thread-self/stat").ok()?)
}

/// The CPUs the threads of child process `pid` last ran on
/// (`/proc/PID/task/*/stat`, field 39).
pub fn cpus_of(pid: u32) -> BTreeSet<usize> {
    let mut cpus = BTreeSet::new();
    let Ok(tasks) = std::fs::read_dir(super::procfs::child_proc_dir(pid).join("task")) else {
        return cpus;
    };
    for task in tasks.flatten() {
        if let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) {
            if let Some(cpu) = last_cpu(&stat) {
                cpus.insert(cpu);
            }
        }
    }
    cpus
}

/// Field 39 (`processor`) of a `/proc/.../stat` line. The command name in
/// field 2 may hold spaces and parentheses, so count from its closing one.
fn last_cpu(stat: &str) -> Option<usize> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // After ')' come fields 3, 4, ...: field 39 is the 37th.
    rest.split_whitespace().nth(36)?.parse().ok()
}

/// A set of CPUs as text: `1`, `0,1`, or `?` if unknown.
pub fn cpus_text(cpus: &BTreeSet<usize>) -> String {
    if cpus.is_empty() {
        return "?".to_string();
    }
    cpus.iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn processor_field_is_found_past_odd_names() {
        let mut fields: Vec<String> = (3..=52).map(|i| i.to_string()).collect();
        fields[39 - 3] = "7".to_string();
        let line = format!("123 (a) b (c) {}", fields.join(" "));
        assert_eq!(last_cpu(&line), Some(7));
        let own = std::fs::read_to_string("/proc/self/stat").unwrap();
        assert!(last_cpu(&own).is_some());
    }
}
