//! The cases: what each measures, how much work a run does, and the client
//! side of each through npipe. The server side is in `peer.rs`, the raw
//! Unix-socket twin of both in `raw.rs`.
//!
//! Case names are published (JSON, README): keep them stable.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use npipe::{ClientOptions, MessageRead, PipeClient, Wait};

use crate::pin::Pin;
use crate::Error;

/// How long a client waits for the peer's pipe to take it.
pub const CONNECT_WAIT: Duration = Duration::from_secs(5);

/// The shape of a case's work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A byte pipe: the client writes `count` chunks of `size` bytes, half
    /// closes, the server reads to the end and answers one byte.
    Bytes,
    /// A message pipe: the client writes `count` messages of `size` bytes
    /// and an empty one to end; the server reads them all and answers an
    /// empty message.
    Messages,
    /// `count` request/reply round trips of `size` bytes each way on one
    /// connection.
    Transact,
    /// As `Transact`, both ends on a current-thread tokio runtime.
    TransactTokio,
    /// `count` times: connect, handshake, one `size`-byte round trip, close.
    Connect,
    /// As `Connect`, through `npipe::call` (`CallNamedPipe`), which sends
    /// the request with the handshake.
    Call,
    /// As `Transact`, through the remote-pipe gateway (`remote.rs`), against
    /// raw TLS 1.3 over TCP.
    RemoteTransact,
    /// As `Bytes`, through the gateway, against raw TLS.
    RemoteBytes,
    /// As `Connect`, through the gateway, against raw TLS (a TCP connect and
    /// a TLS handshake each).
    RemoteConnect,
}

impl Kind {
    /// Whether the case goes through the gateway (`remote.rs`).
    pub fn is_remote(self) -> bool {
        matches!(
            self,
            Kind::RemoteTransact | Kind::RemoteBytes | Kind::RemoteConnect
        )
    }
}

/// Which way is better for a figure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Better {
    /// Throughput, rates.
    Higher,
    /// Latency.
    Lower,
}

impl Better {
    pub fn as_str(self) -> &'static str {
        match self {
            Better::Higher => "higher",
            Better::Lower => "lower",
        }
    }
}

/// How much work a run does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scale {
    /// The default: figures worth quoting.
    Full,
    /// `--quick`: a quarter of the work.
    Quick,
    /// `--smoke` (hidden): a token amount, to check the machinery.
    Smoke,
}

/// One case of the benchmark.
#[derive(Debug, Clone, Copy)]
pub struct Case {
    /// The published name.
    pub name: &'static str,
    pub kind: Kind,
    /// Bytes per write, message, request or reply.
    pub size: usize,
    /// Writes, messages, round trips or connections per run at full scale.
    pub count: u64,
    /// The figure's unit.
    pub unit: Unit,
    /// The target for npipe / raw, if the project set one.
    pub target: Option<f64>,
    /// Where this case runs whatever `--pin` says (`None`: where `--pin`
    /// says). A case whose figure only means something across CPUs names
    /// its placement in its name.
    pub pin: Option<Pin>,
}

/// The unit of a case's main figure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    GibPerSec,
    MsgPerSec,
    Micros,
    ConnPerSec,
    /// Memory, in bytes (per connection, for the scale case).
    Bytes,
}

impl Unit {
    pub fn as_str(self) -> &'static str {
        match self {
            Unit::GibPerSec => "GiB/s",
            Unit::MsgPerSec => "msg/s",
            Unit::Micros => "us",
            Unit::ConnPerSec => "conn/s",
            Unit::Bytes => "bytes",
        }
    }

    pub fn better(self) -> Better {
        match self {
            Unit::Micros | Unit::Bytes => Better::Lower,
            _ => Better::Higher,
        }
    }
}

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

/// Every case, in the order they run.
pub const CASES: &[Case] = &[
    Case {
        name: "byte_throughput_64k",
        kind: Kind::Bytes,
        size: 64 * KIB,
        count: 16 * 1024, // 1 GiB
        unit: Unit::GibPerSec,
        target: Some(0.95),
        pin: None,
    },
    Case {
        name: "byte_throughput_4k",
        kind: Kind::Bytes,
        size: 4 * KIB,
        count: 64 * 1024, // 256 MiB
        unit: Unit::GibPerSec,
        target: None,
        pin: None,
    },
    Case {
        name: "msg_throughput_64b",
        kind: Kind::Messages,
        size: 64,
        count: 200_000,
        unit: Unit::MsgPerSec,
        // The shared-memory issue's target (a busy connection moves to the
        // rings, PROTOCOL §6d); through the socket alone it is about 1.
        target: Some(2.0),
        pin: None,
    },
    Case {
        name: "msg_throughput_4k",
        kind: Kind::Messages,
        size: 4 * KIB,
        count: 64 * 1024, // 256 MiB
        unit: Unit::MsgPerSec,
        target: None,
        pin: None,
    },
    Case {
        name: "msg_throughput_1m",
        kind: Kind::Messages,
        size: MIB,
        count: 512, // 512 MiB
        unit: Unit::GibPerSec,
        // The shared-memory issue's: one copy in and one out, with no
        // system call between, against the socket's two copies and calls.
        target: Some(1.5),
        pin: None,
    },
    Case {
        name: "transact_64b_blocking",
        kind: Kind::Transact,
        size: 64,
        count: 20_000,
        unit: Unit::Micros,
        // No worse than the socket when both ends share a CPU (where the
        // rings must not spin: the peer cannot run until we sleep).
        target: Some(1.00),
        pin: None,
    },
    Case {
        name: "transact_64b_split",
        kind: Kind::Transact,
        size: 64,
        count: 20_000,
        unit: Unit::Micros,
        // The shared-memory path's target (the connection moves to the rings
        // at its 17th send): across CPUs a socket's round trip wakes a
        // halted vCPU twice, which the rings' brief spin saves. Through the
        // socket alone (NPIPE_SHARED_MEMORY=off) the ratio is about 1.
        target: Some(0.05),
        pin: Some(Pin::Split),
    },
    Case {
        name: "transact_64b_tokio",
        kind: Kind::TransactTokio,
        size: 64,
        count: 20_000,
        unit: Unit::Micros,
        target: Some(1.15),
        pin: None,
    },
    Case {
        name: "connect_rate",
        kind: Kind::Connect,
        size: 64,
        count: 5_000,
        unit: Unit::ConnPerSec,
        target: Some(0.60),
        pin: None,
    },
    Case {
        name: "call_rate",
        kind: Kind::Call,
        size: 64,
        count: 5_000,
        unit: Unit::ConnPerSec,
        target: None,
        pin: None,
    },
    // Remote pipes through the gateway, against raw TLS 1.3 on loopback.
    // The targets are the remote-pipe issue's: the gateway adds one local
    // hop.
    Case {
        name: "remote_transact_64b",
        kind: Kind::RemoteTransact,
        size: 64,
        count: 5_000,
        unit: Unit::Micros,
        target: Some(1.5),
        pin: None,
    },
    Case {
        name: "remote_throughput_64k",
        kind: Kind::RemoteBytes,
        size: 64 * KIB,
        count: 4 * 1024, // 256 MiB
        unit: Unit::GibPerSec,
        target: Some(0.80),
        pin: None,
    },
    Case {
        name: "remote_connect_rate",
        kind: Kind::RemoteConnect,
        size: 64,
        count: 1_000,
        unit: Unit::ConnPerSec,
        target: None,
        pin: None,
    },
];

impl Case {
    /// Units of work in one run at `scale`.
    pub fn count_at(&self, scale: Scale) -> u64 {
        match scale {
            Scale::Full => self.count,
            Scale::Quick => (self.count / 4).max(1),
            Scale::Smoke => (self.count / 1000).clamp(2, 50),
        }
    }

    /// The buffer a server needs for one read of this case.
    pub fn server_buffer(&self) -> usize {
        self.size.max(64 * KIB)
    }
}

/// What one run measured.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// The main figure, in the case's unit.
    pub value: f64,
    /// For latency cases, the 99th percentile in the same unit.
    pub p99: Option<f64>,
    /// CPU time both processes spent per unit of work (per round trip,
    /// message, write or connection), in microseconds: what spinning and
    /// system calls cost, which a latency alone hides.
    pub cpu_us: Option<f64>,
}

impl Sample {
    /// A throughput or rate figure from work done in `elapsed`.
    pub fn rate(case: &Case, count: u64, elapsed: Duration) -> Sample {
        let secs = elapsed.as_secs_f64().max(1e-9);
        let value = match case.unit {
            Unit::GibPerSec => (count as f64 * case.size as f64) / secs / (1u64 << 30) as f64,
            Unit::MsgPerSec | Unit::ConnPerSec => count as f64 / secs,
            Unit::Micros | Unit::Bytes => unreachable!("rate() is for rates"),
        };
        Sample {
            value,
            p99: None,
            cpu_us: None,
        }
    }

    /// Median and p99 of round-trip times, in microseconds.
    pub fn latency(mut times: Vec<Duration>) -> Sample {
        times.sort_unstable();
        let at = |q: f64| {
            let i = ((times.len() as f64 - 1.0) * q).round() as usize;
            times[i.min(times.len() - 1)].as_secs_f64() * 1e6
        };
        Sample {
            value: at(0.5),
            p99: Some(at(0.99)),
            cpu_us: None,
        }
    }
}

fn open(name: &str) -> Result<PipeClient, Error> {
    Ok(ClientOptions::new()
        .wait(Wait::Timeout(CONNECT_WAIT))
        .open(name)?)
}

fn unexpected(what: &str) -> Error {
    Error::other(format!("bench: {what}"))
}

/// A runtime for one side of a tokio case.
pub fn runtime() -> Result<tokio::runtime::Runtime, Error> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::other(format!("bench: cannot start tokio: {e}")))
}

/// `count` writes of `case.size` bytes, a half close, the server's one-byte
/// answer: the throughput (the byte cases, local or remote).
pub fn write_bytes(client: &mut PipeClient, case: &Case, count: u64) -> Result<Sample, Error> {
    let chunk = vec![0x5a_u8; case.size];
    let start = Instant::now();
    for _ in 0..count {
        client.write_all(&chunk).map_err(Error::pipe_io)?;
    }
    client.shutdown_write()?;
    let mut ack = [0u8; 1];
    client.read_exact(&mut ack).map_err(Error::pipe_io)?;
    Ok(Sample::rate(case, count, start.elapsed()))
}

/// `count` round trips of `case.size` bytes on one connection: each one's
/// time (the transact cases, local or remote).
pub fn transact(client: &mut PipeClient, case: &Case, count: u64) -> Result<Sample, Error> {
    let request = vec![0x5a_u8; case.size];
    let mut times = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let start = Instant::now();
        let reply = client.transact(&request)?;
        times.push(start.elapsed());
        if reply.len() != case.size {
            return Err(unexpected("a reply of the wrong size"));
        }
    }
    Ok(Sample::latency(times))
}

/// `count` times: a connection from `open`, one round trip, close: the rate
/// (the connect cases, local or remote).
pub fn connect_and_transact(
    case: &Case,
    count: u64,
    open: impl Fn() -> Result<PipeClient, Error>,
) -> Result<Sample, Error> {
    let request = vec![0x5a_u8; case.size];
    let start = Instant::now();
    for _ in 0..count {
        let mut client = open()?;
        if client.transact(&request)?.len() != case.size {
            return Err(unexpected("a reply of the wrong size"));
        }
    }
    Ok(Sample::rate(case, count, start.elapsed()))
}

/// One run of `case` through npipe, against the peer serving `name`.
pub fn run_npipe(case: &Case, name: &str, count: u64) -> Result<Sample, Error> {
    match case.kind {
        Kind::Bytes => write_bytes(&mut open(name)?, case, count),
        Kind::Messages => {
            let mut client = open(name)?;
            let msg = vec![0x5a_u8; case.size];
            let start = Instant::now();
            for _ in 0..count {
                client.write_message(&msg)?;
            }
            client.write_message(&[])?;
            let mut ack = [0u8; 1];
            if client.read_message(&mut ack)? != MessageRead::Complete(0) {
                return Err(unexpected("the server's end-of-run answer was not empty"));
            }
            Ok(Sample::rate(case, count, start.elapsed()))
        }
        Kind::Transact => transact(&mut open(name)?, case, count),
        Kind::TransactTokio => runtime()?.block_on(async {
            let mut client = ClientOptions::new()
                .wait(Wait::Timeout(CONNECT_WAIT))
                .open_async(name)
                .await?;
            let request = vec![0x5a_u8; case.size];
            let mut times = Vec::with_capacity(count as usize);
            for _ in 0..count {
                let start = Instant::now();
                let reply = client.transact(&request).await?;
                times.push(start.elapsed());
                if reply.len() != case.size {
                    return Err(unexpected("a reply of the wrong size"));
                }
            }
            Ok(Sample::latency(times))
        }),
        Kind::Connect => {
            let mut opts = ClientOptions::new();
            opts.wait(Wait::Timeout(CONNECT_WAIT));
            connect_and_transact(case, count, || Ok(opts.open(name)?))
        }
        Kind::Call => {
            let request = vec![0x5a_u8; case.size];
            let start = Instant::now();
            for _ in 0..count {
                let reply = npipe::call(name, &request, CONNECT_WAIT)?;
                if reply.len() != case.size {
                    return Err(unexpected("a reply of the wrong size"));
                }
            }
            Ok(Sample::rate(case, count, start.elapsed()))
        }
        Kind::RemoteTransact | Kind::RemoteBytes | Kind::RemoteConnect => {
            Err(unexpected("a remote case runs through remote.rs"))
        }
    }
}
