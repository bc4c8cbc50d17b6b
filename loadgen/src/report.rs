//! Reports: the JSON summary (also the input of `compare` and `plot`), the HdrHistogram
//! percentile-distribution text (.hgrm, as `outputPercentileDistribution` writes it, values in
//! milliseconds) and the human-readable table.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::stats::SIGNIFICANT_DIGITS;

/// Version 2 added `throughput_interval_ms` and `throughput_per_interval`; version 1 files are
/// still read (their throughput over time is the per-second series).
pub const SUMMARY_FORMAT_VERSION: u32 = 2;
/// The oldest summary version this build reads.
pub const SUMMARY_FORMAT_VERSION_MIN: u32 = 1;
/// Percentiles in the summary and tables.
pub const PERCENTILES: [(&str, f64); 6] = [
    ("p50", 50.0),
    ("p90", 90.0),
    ("p99", 99.0),
    ("p99.9", 99.9),
    ("p99.99", 99.99),
    ("max", 100.0),
];

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Latency {
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub p9999_us: f64,
    pub max_us: f64,
    /// (percentile, latency in microseconds) points of the full distribution, for plots.
    pub curve: Vec<(f64, f64)>,
}

impl Latency {
    pub fn from_histogram(h: &Histogram<u64>) -> Latency {
        let us = |ns: u64| ns as f64 / 1e3;
        let q = |p: f64| us(h.value_at_quantile(p));
        let mut curve = Vec::new();
        if !h.is_empty() {
            for v in h.iter_quantiles(5) {
                curve.push((v.quantile_iterated_to() * 100.0, us(v.value_iterated_to())));
            }
        }
        Latency {
            count: h.len(),
            mean_us: if h.is_empty() { 0.0 } else { h.mean() / 1e3 },
            p50_us: q(0.5),
            p90_us: q(0.9),
            p99_us: q(0.99),
            p999_us: q(0.999),
            p9999_us: q(0.9999),
            max_us: us(h.max()),
            curve,
        }
    }

    pub fn get(&self, name: &str) -> f64 {
        match name {
            "p50" => self.p50_us,
            "p90" => self.p90_us,
            "p99" => self.p99_us,
            "p99.9" => self.p999_us,
            "p99.99" => self.p9999_us,
            "max" => self.max_us,
            "mean" => self.mean_us,
            _ => f64::NAN,
        }
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct CommandSummary {
    pub requests: u64,
    pub hits: u64,
    pub misses: u64,
    pub errors: u64,
    pub latency: Latency,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Cpu {
    pub user_s: f64,
    pub system_s: f64,
    /// Loadgen process CPU time (user + system) per measured request.
    pub ns_per_request: f64,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Summary {
    pub format_version: u32,
    pub tool: String,
    pub label: String,
    /// "closed" or "open".
    pub mode: String,
    pub target_rate: Option<f64>,
    pub workload: BTreeMap<String, String>,
    pub measured_s: f64,
    pub requests: u64,
    pub throughput_rps: f64,
    /// Completed requests in each second of the measured phase (the last one partial).
    pub throughput_per_second: Vec<u64>,
    /// Width of each `throughput_per_interval` sample (version 2; 0 in a version 1 file).
    #[serde(default)]
    pub throughput_interval_ms: u64,
    /// Completed requests in each interval of the measured phase (version 2; the last one
    /// partial, and it includes the drain after issuing stopped).
    #[serde(default)]
    pub throughput_per_interval: Vec<u64>,
    pub hits: u64,
    pub misses: u64,
    pub errors: u64,
    pub timeouts: u64,
    pub unsent: u64,
    pub values_checked: u64,
    pub mismatches: u64,
    pub mismatch_examples: Vec<String>,
    #[serde(default)]
    pub error_examples: Vec<String>,
    pub connection_errors: Vec<String>,
    pub prefill: Option<Prefill>,
    pub cpu: Cpu,
    /// Per command type, plus "all".
    pub commands: BTreeMap<String, CommandSummary>,
    /// Open loop: reply time measured from the actual send (what a closed-loop tool reports) and
    /// how late the sender was against its schedule.
    pub service_latency: Option<Latency>,
    pub send_lag: Option<Latency>,
    pub notes: Vec<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Prefill {
    pub keys_written: u64,
    pub errors: u64,
    pub seconds: f64,
}

impl Summary {
    pub fn all(&self) -> Option<&CommandSummary> {
        self.commands.get("all")
    }

    /// Throughput over time: (seconds since the measured phase began, requests/s) at the end of
    /// each whole interval. The last, partial interval is left out (it also holds the drain).
    /// Version 1 files have only per-second counts, so their samples are one second wide.
    pub fn throughput_over_time(&self) -> Vec<(f64, f64)> {
        let (ms, counts) = if self.throughput_interval_ms > 0 {
            (self.throughput_interval_ms, &self.throughput_per_interval)
        } else {
            (1000, &self.throughput_per_second)
        };
        let whole = counts.len().saturating_sub(1);
        counts[..whole]
            .iter()
            .enumerate()
            .map(|(i, &n)| ((i + 1) as f64 * ms as f64 / 1e3, n as f64 * 1e3 / ms as f64))
            .collect()
    }
}

/// Why a file could not be read as a summary; every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum SummaryError {
    #[error("reading {path}: {err}")]
    Read { path: String, err: std::io::Error },
    #[error("{path}: not a keel-loadgen summary.json ({why})")]
    NotASummary { path: String, why: String },
    #[error(
        "{path}: summary format version {found}; this keel-loadgen reads versions \
         {SUMMARY_FORMAT_VERSION_MIN} to {SUMMARY_FORMAT_VERSION} (rerun the run with this build)"
    )]
    Version { path: String, found: u64 },
}

/// Reads a summary.json written by `keel-loadgen run` (this version or an older one it reads).
pub fn load_summary(path: &std::path::Path) -> Result<Summary, SummaryError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|err| SummaryError::Read {
        path: name.clone(),
        err,
    })?;
    let not = |why: String| SummaryError::NotASummary {
        path: name.clone(),
        why,
    };
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| not(format!("not JSON: {e}")))?;
    let found = value
        .get("format_version")
        .ok_or_else(|| not("no format_version field".into()))?
        .as_u64()
        .ok_or_else(|| not("format_version is not a number".into()))?;
    if !(SUMMARY_FORMAT_VERSION_MIN as u64..=SUMMARY_FORMAT_VERSION as u64).contains(&found) {
        return Err(SummaryError::Version { path: name, found });
    }
    serde_json::from_value(value).map_err(|e| not(e.to_string()))
}

/// The .hgrm text of `h` (nanoseconds), in milliseconds, like HdrHistogram's
/// `outputPercentileDistribution(out, 5, 1e6)`: readable by the HdrHistogram plotter.
pub fn hgrm(h: &Histogram<u64>) -> String {
    const SCALE: f64 = 1e6;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    let mut total = 0u64;
    if !h.is_empty() {
        for v in h.iter_quantiles(5) {
            total += v.count_since_last_iteration();
            let value = v.value_iterated_to() as f64 / SCALE;
            let q = v.quantile_iterated_to();
            if q < 1.0 {
                let _ = writeln!(
                    s,
                    "{value:12.3} {q:2.12} {total:10} {:14.2}",
                    1.0 / (1.0 - q)
                );
            } else {
                let _ = writeln!(s, "{value:12.3} {q:2.12} {total:10}");
            }
        }
    }
    let (mean, sd) = if h.is_empty() {
        (0.0, 0.0)
    } else {
        (h.mean() / SCALE, h.stdev() / SCALE)
    };
    let _ = writeln!(s, "#[Mean    = {mean:12.3}, StdDeviation   = {sd:12.3}]");
    let _ = writeln!(
        s,
        "#[Max     = {:12.3}, Total count    = {:12}]",
        h.max() as f64 / SCALE,
        h.len()
    );
    let sub_buckets = (2.0 * 10f64.powi(SIGNIFICANT_DIGITS as i32))
        .log2()
        .ceil()
        .exp2() as u64;
    let _ = writeln!(
        s,
        "#[Buckets = {:12}, SubBuckets     = {:12}]",
        h.buckets(),
        sub_buckets
    );
    s
}

/// Parses the percentile rows of a .hgrm file: (value ms, percentile 0..1, total count).
pub fn parse_hgrm(text: &str) -> Result<Vec<(f64, f64, u64)>, String> {
    let mut rows = Vec::new();
    for line in text.lines() {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') || t.starts_with("Value") {
            continue;
        }
        let f: Vec<&str> = t.split_whitespace().collect();
        if f.len() < 3 {
            return Err(format!("bad .hgrm row {line:?}"));
        }
        let v = f[0].parse().map_err(|_| format!("bad value in {line:?}"))?;
        let p = f[1]
            .parse()
            .map_err(|_| format!("bad percentile in {line:?}"))?;
        let c = f[2].parse().map_err(|_| format!("bad count in {line:?}"))?;
        rows.push((v, p, c));
    }
    Ok(rows)
}

fn fmt_us(us: f64) -> String {
    if us >= 1e6 {
        format!("{:.2}s", us / 1e6)
    } else if us >= 1e3 {
        format!("{:.2}ms", us / 1e3)
    } else {
        format!("{us:.1}us")
    }
}

/// The human-readable report printed at the end of a run.
pub fn table(s: &Summary) -> String {
    let mut o = String::new();
    let rate = s
        .target_rate
        .map(|r| format!(" (target {r:.0}/s)"))
        .unwrap_or_default();
    let _ = writeln!(
        o,
        "keel-loadgen {}: {} loop{rate}, {:.1}s measured",
        s.label, s.mode, s.measured_s
    );
    let _ = writeln!(
        o,
        "throughput {:.0} req/s  requests {}  hits {}  misses {}  errors {}  timeouts {}  unsent {}",
        s.throughput_rps, s.requests, s.hits, s.misses, s.errors, s.timeouts, s.unsent
    );
    // Whole seconds only: the last entry covers a partial second (and the drain).
    let full = &s.throughput_per_second[..s.throughput_per_second.len().saturating_sub(1)];
    if let (Some(lo), Some(hi)) = (full.iter().min(), full.iter().max()) {
        let _ = writeln!(
            o,
            "per-second throughput over {} s: min {lo}, max {hi}",
            full.len()
        );
    }
    let _ = writeln!(
        o,
        "values checked {}  mismatches {}  loadgen cpu {:.0} ns/request",
        s.values_checked, s.mismatches, s.cpu.ns_per_request
    );
    let _ = write!(o, "{:<8}{:>10}", "command", "requests");
    for (name, _) in PERCENTILES {
        let _ = write!(o, "{name:>10}");
    }
    let _ = writeln!(o);
    for (name, c) in &s.commands {
        let _ = write!(o, "{name:<8}{:>10}", c.requests);
        for (p, _) in PERCENTILES {
            let _ = write!(o, "{:>10}", fmt_us(c.latency.get(p)));
        }
        let _ = writeln!(o);
    }
    for e in &s.error_examples {
        let _ = writeln!(o, "error reply: {e}");
    }
    for n in &s.notes {
        let _ = writeln!(o, "note: {n}");
    }
    o
}

/// `compare A B`: B relative to A, as ratios (B / A).
pub fn compare(a: &Summary, b: &Summary) -> String {
    let mut o = String::new();
    let ratio = |x: f64, y: f64| {
        if x > 0.0 {
            format!("{:.3}", y / x)
        } else {
            "-".into()
        }
    };
    let _ = writeln!(
        o,
        "A = {} ({} loop), B = {} ({} loop); ratio = B / A",
        a.label, a.mode, b.label, b.mode
    );
    let _ = writeln!(o, "{:<14}{:>14}{:>14}{:>10}", "metric", "A", "B", "ratio");
    let _ = writeln!(
        o,
        "{:<14}{:>14.0}{:>14.0}{:>10}",
        "throughput/s",
        a.throughput_rps,
        b.throughput_rps,
        ratio(a.throughput_rps, b.throughput_rps)
    );
    for (name, ca) in &a.commands {
        let Some(cb) = b.commands.get(name) else {
            continue;
        };
        for (p, _) in PERCENTILES {
            let (x, y) = (ca.latency.get(p), cb.latency.get(p));
            let _ = writeln!(
                o,
                "{:<14}{:>14}{:>14}{:>10}",
                format!("{name} {p}"),
                fmt_us(x),
                fmt_us(y),
                ratio(x, y)
            );
        }
    }
    let (ca, cb) = (a.cpu.ns_per_request, b.cpu.ns_per_request);
    let _ = writeln!(
        o,
        "{:<14}{:>14.0}{:>14.0}{:>10}",
        "cpu ns/req",
        ca,
        cb,
        ratio(ca, cb)
    );
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::new_histogram;

    #[test]
    fn hgrm_has_the_standard_shape_and_parses_back() {
        let mut h = new_histogram();
        for i in 1..=1000u64 {
            h.record(i * 1000).unwrap(); // 1 us .. 1 ms
        }
        let text = hgrm(&h);
        assert!(text.starts_with("       Value     Percentile TotalCount 1/(1-Percentile)\n\n"));
        assert!(text.contains("#[Mean    ="));
        assert!(text.contains("#[Buckets ="));
        let rows = parse_hgrm(&text).unwrap();
        let last = rows.last().unwrap();
        assert_eq!(last.1, 1.0);
        assert_eq!(last.2, 1000);
        assert!((last.0 - 1.0).abs() < 0.01, "max {} ms", last.0);
        assert!(rows
            .windows(2)
            .all(|w| w[0].1 <= w[1].1 && w[0].2 <= w[1].2));
        let l = Latency::from_histogram(&h);
        assert!((l.p50_us - 500.0).abs() < 2.0);
        assert!((l.p99_us - 990.0).abs() < 2.0);
    }
}
