//! Statistics over rounds, and the two outputs: a table for people, one JSON
//! object per line and row for programs.

use std::collections::BTreeSet;

use serde_json::{json, Value};

use super::cases::{Better, Case, Sample, Unit};
use super::pin::{cpus_text, Pin};

/// What one case measured, round by round.
#[derive(Debug, Default)]
pub struct Rounds {
    pub npipe: Vec<Sample>,
    pub raw: Vec<Sample>,
    pub client_cpus: BTreeSet<usize>,
    pub server_cpus: BTreeSet<usize>,
}

/// One line of the results: a figure through npipe and through the raw
/// socket, and their ratio.
#[derive(Debug, Clone)]
pub struct Row {
    pub case: String,
    pub unit: Unit,
    pub better: Better,
    pub target: Option<f64>,
    /// Median over rounds.
    pub npipe: f64,
    pub raw: f64,
    /// Median, least and greatest of the per-round ratios npipe / raw.
    pub ratio: f64,
    pub min_ratio: f64,
    pub max_ratio: f64,
    pub rounds: usize,
    /// Units of work per run.
    pub count: u64,
    pub client_cpus: BTreeSet<usize>,
    pub server_cpus: BTreeSet<usize>,
    /// Where the case ran, when not where `--pin` said (a case with a
    /// placement of its own).
    pub pin: Option<Pin>,
}

impl Row {
    /// Whether the ratio meets the target, if there is one.
    pub fn meets_target(&self) -> Option<bool> {
        self.target.map(|t| match self.better {
            Better::Higher => self.ratio >= t,
            Better::Lower => self.ratio <= t,
        })
    }
}

/// The median of some numbers (the mean of the middle two for an even count).
pub fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn row(
    case: &Case,
    name: String,
    target: Option<f64>,
    count: u64,
    r: &Rounds,
    pick: impl Fn(&Sample) -> f64,
) -> Row {
    let mut row = Row::from_rounds_with(name, case.unit, case.unit.better(), count, r, pick);
    row.target = target;
    row
}

impl Row {
    /// A row from the main figure of each round's samples.
    pub fn from_rounds(name: &str, unit: Unit, better: Better, count: u64, r: &Rounds) -> Row {
        Row::from_rounds_with(name.to_string(), unit, better, count, r, |s| s.value)
    }

    fn from_rounds_with(
        name: String,
        unit: Unit,
        better: Better,
        count: u64,
        r: &Rounds,
        pick: impl Fn(&Sample) -> f64,
    ) -> Row {
        let npipe: Vec<f64> = r.npipe.iter().map(&pick).collect();
        let raw: Vec<f64> = r.raw.iter().map(&pick).collect();
        let ratios: Vec<f64> = if npipe.is_empty() || raw.is_empty() {
            // One side only (profiling): no ratios.
            vec![f64::NAN]
        } else {
            npipe.iter().zip(&raw).map(|(n, r)| n / r).collect()
        };
        Row {
            case: name,
            unit,
            better,
            target: None,
            npipe: median(&npipe),
            raw: median(&raw),
            ratio: median(&ratios),
            min_ratio: ratios.iter().copied().fold(f64::INFINITY, f64::min),
            max_ratio: ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            rounds: npipe.len().max(raw.len()),
            count,
            client_cpus: r.client_cpus.clone(),
            server_cpus: r.server_cpus.clone(),
            pin: None,
        }
    }
}

/// The rows of one case: its main figure, and its p99 for latency cases;
/// `pin` if the case ran elsewhere than `--pin` said.
pub fn rows(case: &Case, count: u64, r: &Rounds, pin: Option<Pin>) -> Vec<Row> {
    let mut out = vec![row(
        case,
        case.name.to_string(),
        case.target,
        count,
        r,
        |s| s.value,
    )];
    let sides = r.npipe.iter().chain(&r.raw);
    if sides.clone().next().is_some() && sides.clone().all(|s| s.p99.is_some()) {
        out.push(row(
            case,
            format!("{}_p99", case.name),
            None,
            count,
            r,
            |s| s.p99.unwrap_or(f64::NAN),
        ));
    }
    // Round trips: what each costs in CPU, both processes together (µs per
    // round trip = CPU seconds per million), so spinning shows.
    if case.unit == Unit::Micros && sides.clone().all(|s| s.cpu_us.is_some()) {
        out.push(row(
            case,
            format!("{}_cpu", case.name),
            None,
            count,
            r,
            |s| s.cpu_us.unwrap_or(f64::NAN),
        ));
    }
    for row in &mut out {
        row.pin = pin;
    }
    out
}

/// Run-wide facts every JSON line carries.
pub struct RunInfo {
    pub pin: Pin,
    pub scale: &'static str,
    pub release: bool,
    /// The 1-minute load average when the run started: other work on the
    /// machine shows here, and in the noise.
    pub load: Option<f64>,
}

/// The 1-minute load average (`/proc/loadavg`).
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// One row as a JSON object.
pub fn json_line(row: &Row, info: &RunInfo) -> Value {
    json!({
        "case": row.case,
        "unit": row.unit.as_str(),
        "npipe": row.npipe,
        "raw": row.raw,
        "ratio": row.ratio,
        "better": row.better.as_str(),
        "min_ratio": row.min_ratio,
        "max_ratio": row.max_ratio,
        "target": row.target,
        "meets_target": row.meets_target(),
        "rounds": row.rounds,
        "count": row.count,
        "pin": row.pin.unwrap_or(info.pin).as_str(),
        "client_cpus": row.client_cpus.iter().collect::<Vec<_>>(),
        "server_cpus": row.server_cpus.iter().collect::<Vec<_>>(),
        "scale": info.scale,
        "build": if info.release { "release" } else { "debug" },
        "load_average": info.load,
    })
}

/// A figure for people: rates with thousands separators, the rest with two
/// decimals.
fn figure(value: f64, unit: Unit) -> String {
    match unit {
        Unit::MsgPerSec | Unit::ConnPerSec if value.is_finite() && value >= 1000.0 => {
            let digits = format!("{:.0}", value);
            let mut out = String::new();
            for (i, c) in digits.chars().enumerate() {
                if i > 0 && (digits.len() - i) % 3 == 0 {
                    out.push(',');
                }
                out.push(c);
            }
            out
        }
        Unit::MsgPerSec | Unit::ConnPerSec | Unit::Bytes => format!("{value:.0}"),
        _ => format!("{value:.2}"),
    }
}

/// A ratio for people; `-` when there is none (one side only).
fn ratio_text(ratio: f64) -> String {
    if ratio.is_finite() {
        format!("{ratio:.2}")
    } else {
        "-".to_string()
    }
}

fn target_text(row: &Row) -> String {
    match (row.target, row.meets_target()) {
        (Some(t), Some(ok)) if row.ratio.is_finite() => {
            let op = match row.better {
                Better::Higher => ">=",
                Better::Lower => "<=",
            };
            format!("{op} {t:.2} {}", if ok { "yes" } else { "NO" })
        }
        _ => String::new(),
    }
}

/// The results as a table, with a header saying where the processes ran:
/// the rows that ran where `--pin` said first, then each placement a case
/// chose for itself under a header of its own.
pub fn table(rows: &[Row], info: &RunInfo) -> String {
    let rounds = rows.iter().map(|r| r.rounds).max().unwrap_or(0);
    let mut out = format!(
        "npipe bench: {rounds} rounds per case ({} scale), npipe and raw Unix socket interleaved{}\n",
        info.scale,
        if info.release {
            ""
        } else {
            "\nWARNING: a debug build; its figures say nothing about speed (use --release)"
        }
    );
    let header = [
        "case", "unit", "npipe", "raw", "ratio", "min", "max", "better", "target",
    ];
    let cells: Vec<[String; 9]> = rows
        .iter()
        .map(|r| {
            [
                r.case.clone(),
                r.unit.as_str().to_string(),
                figure(r.npipe, r.unit),
                figure(r.raw, r.unit),
                ratio_text(r.ratio),
                ratio_text(r.min_ratio),
                ratio_text(r.max_ratio),
                r.better.as_str().to_string(),
                target_text(r),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cols: Vec<&str>| {
        let mut s = String::new();
        for (i, (c, w)) in cols.iter().zip(widths).enumerate() {
            // Names and words to the left, figures to the right.
            if i == 0 || i == 1 || i >= 7 {
                s.push_str(&format!("{c:<w$}  "));
            } else {
                s.push_str(&format!("{c:>w$}  "));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut placements: Vec<Option<Pin>> = Vec::new();
    for r in rows {
        if !placements.contains(&r.pin) {
            placements.push(r.pin);
        }
    }
    placements.sort_by_key(Option::is_some);
    for pin in placements {
        let group: Vec<usize> = (0..rows.len()).filter(|&i| rows[i].pin == pin).collect();
        let mut client = BTreeSet::new();
        let mut server = BTreeSet::new();
        for &i in &group {
            client.extend(&rows[i].client_cpus);
            server.extend(&rows[i].server_cpus);
        }
        out.push_str(&format!(
            "pin {}: client ran on CPU {}, server on CPU {}; load average {} at the start\n\n",
            pin.unwrap_or(info.pin).as_str(),
            cpus_text(&client),
            cpus_text(&server),
            info.load
                .map_or_else(|| "?".to_string(), |l| format!("{l:.2}")),
        ));
        out.push_str(&line(header.to_vec()));
        for &i in &group {
            out.push_str(&line(cells[i].iter().map(String::as_str).collect()));
        }
        out.push('\n');
    }
    out.push_str(
        "ratio = npipe / raw, the median of the per-round ratios (min and max beside it); \
         figures are medians over rounds.\n",
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    fn row_at(case: &str, pin: Option<Pin>, cpus: [usize; 2]) -> Row {
        let r = Rounds {
            npipe: vec![Sample::latency(vec![std::time::Duration::from_micros(2)])],
            raw: vec![Sample::latency(vec![std::time::Duration::from_micros(4)])],
            client_cpus: BTreeSet::from([cpus[0]]),
            server_cpus: BTreeSet::from([cpus[1]]),
        };
        let mut row = Row::from_rounds(case, Unit::Micros, Better::Lower, 1, &r);
        row.pin = pin;
        row
    }

    #[test]
    fn a_case_placed_elsewhere_gets_a_header_of_its_own() {
        let info = RunInfo {
            pin: Pin::Same,
            scale: "quick",
            release: true,
            load: None,
        };
        let rows = [
            row_at("before", None, [1, 1]),
            row_at("split_case", Some(Pin::Split), [0, 1]),
            row_at("after", None, [1, 1]),
        ];
        let text = table(&rows, &info);
        let same = text
            .find("pin same: client ran on CPU 1, server on CPU 1")
            .unwrap();
        let split = text
            .find("pin split: client ran on CPU 0, server on CPU 1")
            .unwrap();
        assert!(same < text.find("before").unwrap());
        assert!(text.find("after").unwrap() < split, "{text}");
        assert!(split < text.find("split_case").unwrap(), "{text}");
        assert_eq!(json_line(&rows[1], &info)["pin"], "split");
        assert_eq!(json_line(&rows[0], &info)["pin"], "same");
    }

    #[test]
    fn rates_get_separators() {
        assert_eq!(figure(1_234_567.4, Unit::MsgPerSec), "1,234,567");
        assert_eq!(figure(999.0, Unit::ConnPerSec), "999");
        assert_eq!(figure(4.567, Unit::GibPerSec), "4.57");
    }
}
