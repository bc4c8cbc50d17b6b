//! The workload: command-line flags and an optional TOML file merged into one validated
//! [`Workload`]. Flags override the file; the file overrides defaults. Unknown TOML keys and
//! impossible values are refused with a message naming the key, the value and the rule.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::dist::{KeyDistSpec, ValueSizeSpec};
use crate::protocol::Cmd;
use crate::value::VALUE_HEADER_LEN;

pub const KEY_SIZE_MAX: usize = 250;
pub const PIPELINE_DEPTH_MAX: u32 = 4096;
pub const CONNECTIONS_PER_THREAD_MAX: u32 = 10_000;
pub const THREADS_MAX: u32 = 1024;
pub const MGET_WIDTH_MAX: u32 = 10_000;
pub const VALUE_SIZE_MAX: u32 = 64 << 20;
/// Open-loop runs default to this many requests in flight per connection: enough that a stall
/// queues behind the connection (and is measured) rather than capping throughput at low depth.
pub const OPEN_LOOP_PIPELINE_DEFAULT: u32 = 16;

/// `keel-loadgen run` flags. Every field is optional so that a TOML file can supply it.
#[derive(clap::Args, Debug, Default, Clone)]
pub struct RunArgs {
    /// Server HOST:PORT; repeat for several (connections are spread round-robin).
    #[arg(long = "server")]
    pub server: Vec<String>,
    /// Measured run time after warm-up, e.g. 30s, 500ms, 2m.
    #[arg(long)]
    pub duration: Option<String>,
    /// Measured request count (whichever of --duration and --requests comes first ends the run).
    #[arg(long)]
    pub requests: Option<u64>,
    /// Output directory for summary.json, *.hgrm and latency.svg.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Open loop: total target requests per second. Without it the run is closed loop.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Connections per thread.
    #[arg(long)]
    pub connections: Option<u32>,
    /// Worker threads, each pinned to one of the cores this process may run on.
    #[arg(long)]
    pub threads: Option<u32>,
    /// Requests in flight per connection (closed loop: always; open loop: at most).
    #[arg(long)]
    pub pipeline: Option<u32>,
    /// Number of distinct keys.
    #[arg(long)]
    pub keys: Option<u64>,
    /// Key length in bytes (prefix + zero-padded index).
    #[arg(long)]
    pub key_size: Option<u32>,
    #[arg(long)]
    pub key_prefix: Option<String>,
    /// N, uniform:MIN-MAX or list:SIZE=WEIGHT,...
    #[arg(long)]
    pub value_size: Option<String>,
    /// uniform, zipfian:THETA or sequential.
    #[arg(long)]
    pub dist: Option<String>,
    /// Weighted command mix, e.g. get=9,set=1 (commands: get set mget delete incr mg ms).
    #[arg(long)]
    pub mix: Option<String>,
    /// Keys per multi-get.
    #[arg(long)]
    pub mget_width: Option<u32>,
    /// Expiry in seconds for set/ms (0: none).
    #[arg(long)]
    pub ttl: Option<u32>,
    /// Load every key (and counter) on every server before the run.
    #[arg(long)]
    pub prefill: bool,
    /// Time run before measuring (excluded from results).
    #[arg(long)]
    pub warmup: Option<String>,
    /// Per-request and connect timeout.
    #[arg(long)]
    pub timeout: Option<String>,
    /// Seed of the key, value-size and command choices.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Label for reports and plots (default: the output directory's name).
    #[arg(long)]
    pub label: Option<String>,
    /// Do not pin worker threads to cores.
    #[arg(long)]
    pub no_pin: bool,
    /// Print a progress line to stderr about once a second (prefill and measured phase) even
    /// when stderr is not a terminal; on a terminal it is always printed.
    #[arg(long)]
    pub progress: bool,
    /// TOML workload file; flags given on the command line override it.
    #[arg(long)]
    pub workload: Option<PathBuf>,
}

/// The TOML workload file: the same names as the flags, with `_` for `-`.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct WorkloadFile {
    pub server: Option<Vec<String>>,
    pub duration: Option<String>,
    pub requests: Option<u64>,
    pub out: Option<PathBuf>,
    pub rate: Option<f64>,
    pub connections: Option<u32>,
    pub threads: Option<u32>,
    pub pipeline: Option<u32>,
    pub keys: Option<u64>,
    pub key_size: Option<u32>,
    pub key_prefix: Option<String>,
    pub value_size: Option<StrOrNum>,
    pub dist: Option<String>,
    pub mix: Option<String>,
    pub mget_width: Option<u32>,
    pub ttl: Option<u32>,
    pub prefill: Option<bool>,
    pub warmup: Option<String>,
    pub timeout: Option<String>,
    pub seed: Option<u64>,
    pub label: Option<String>,
    pub no_pin: Option<bool>,
    pub progress: Option<bool>,
}

#[derive(Deserialize, Debug, Clone)]
#[serde(untagged)]
pub enum StrOrNum {
    Num(u64),
    Str(String),
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{key} = {value}: {rule}")]
    Invalid {
        key: &'static str,
        value: String,
        rule: String,
    },
    #[error("reading workload file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("workload file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
}

fn invalid(key: &'static str, value: impl ToString, rule: impl ToString) -> ConfigError {
    ConfigError::Invalid {
        key,
        value: value.to_string(),
        rule: rule.to_string(),
    }
}

/// Parses `30s`, `500ms`, `2m`, `1h`, `1.5s`, `250us` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().ok()?;
    let secs = match unit.trim() {
        "" | "s" => n,
        "ms" => n / 1e3,
        "us" => n / 1e6,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        _ => return None,
    };
    if !secs.is_finite() || secs < 0.0 {
        return None;
    }
    Some(Duration::from_secs_f64(secs))
}

/// Parses `get=9,set=1,mget` (a command without a weight has weight 1).
pub fn parse_mix(s: &str) -> Result<Vec<(Cmd, u32)>, ConfigError> {
    let mut mix = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, w) = part.split_once('=').unwrap_or((part, "1"));
        let cmd = Cmd::from_name(name.trim()).ok_or_else(|| {
            invalid(
                "mix",
                s,
                format!("unknown command {name:?} (get set mget delete incr mg ms)"),
            )
        })?;
        let w: u32 = w
            .trim()
            .parse()
            .map_err(|_| invalid("mix", s, format!("weight of {name} not a number")))?;
        if w > 0 {
            mix.push((cmd, w));
        }
    }
    if mix.is_empty() {
        return Err(invalid(
            "mix",
            s,
            "needs at least one command with a weight > 0",
        ));
    }
    Ok(mix)
}

/// A validated workload.
#[derive(Debug, Clone)]
pub struct Workload {
    pub servers: Vec<String>,
    pub duration: Option<Duration>,
    pub requests: Option<u64>,
    pub out: PathBuf,
    pub rate: Option<f64>,
    pub connections: u32,
    pub threads: u32,
    pub pipeline: u32,
    pub keys: u64,
    pub key_size: u32,
    pub key_prefix: String,
    pub value_size: ValueSizeSpec,
    pub dist: KeyDistSpec,
    pub mix: Vec<(Cmd, u32)>,
    pub mget_width: u32,
    pub ttl_s: u32,
    pub prefill: bool,
    pub warmup: Duration,
    pub timeout: Duration,
    pub seed: u64,
    pub label: String,
    pub pin: bool,
    /// Progress lines even when stderr is not a terminal (`--progress`).
    pub progress: bool,
}

impl Workload {
    pub fn from_args(args: &RunArgs) -> Result<Workload, ConfigError> {
        let file = match &args.workload {
            Some(p) => read_file(p)?,
            None => WorkloadFile::default(),
        };
        let servers = if args.server.is_empty() {
            file.server.unwrap_or_default()
        } else {
            args.server.clone()
        };
        let dur = |key: &'static str, v: &str| {
            parse_duration(v)
                .ok_or_else(|| invalid(key, v, "expected a duration like 30s, 500ms, 2m"))
        };
        let duration = match args.duration.clone().or(file.duration) {
            Some(d) => Some(dur("duration", &d)?),
            None => None,
        };
        let requests = args.requests.or(file.requests);
        // Neither bound given: a 10 s run, so that no run is unbounded.
        let duration = if duration.is_none() && requests.is_none() {
            Some(Duration::from_secs(10))
        } else {
            duration
        };
        let out = args.out.clone().or(file.out).ok_or_else(|| {
            invalid(
                "out",
                "(none)",
                "an output directory is required (--out DIR)",
            )
        })?;
        let rate = args.rate.or(file.rate);
        let value_size = match args
            .value_size
            .clone()
            .map(StrOrNum::Str)
            .or(file.value_size)
        {
            None => ValueSizeSpec::Fixed(100),
            Some(StrOrNum::Num(n)) => ValueSizeSpec::Fixed(
                u32::try_from(n).map_err(|_| invalid("value_size", n, "too large"))?,
            ),
            Some(StrOrNum::Str(s)) => s
                .parse()
                .map_err(|e: String| invalid("value_size", &s, e))?,
        };
        let dist_s = args
            .dist
            .clone()
            .or(file.dist)
            .unwrap_or_else(|| "uniform".into());
        let dist: KeyDistSpec = dist_s
            .parse()
            .map_err(|e: String| invalid("dist", &dist_s, e))?;
        let mix = parse_mix(
            &args
                .mix
                .clone()
                .or(file.mix)
                .unwrap_or_else(|| "get=9,set=1".into()),
        )?;
        let label = args.label.clone().or(file.label).unwrap_or_else(|| {
            out.file_name()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "run".into())
        });
        let w = Workload {
            servers,
            duration,
            requests,
            out,
            rate,
            connections: args.connections.or(file.connections).unwrap_or(4),
            threads: args.threads.or(file.threads).unwrap_or(1),
            pipeline: args
                .pipeline
                .or(file.pipeline)
                .unwrap_or(if rate.is_some() {
                    OPEN_LOOP_PIPELINE_DEFAULT
                } else {
                    1
                }),
            keys: args.keys.or(file.keys).unwrap_or(10_000),
            key_size: args.key_size.or(file.key_size).unwrap_or(16),
            key_prefix: args
                .key_prefix
                .clone()
                .or(file.key_prefix)
                .unwrap_or_else(|| "kl:".into()),
            value_size,
            dist,
            mix,
            mget_width: args.mget_width.or(file.mget_width).unwrap_or(10),
            ttl_s: args.ttl.or(file.ttl).unwrap_or(0),
            prefill: args.prefill || file.prefill.unwrap_or(false),
            warmup: dur(
                "warmup",
                &args
                    .warmup
                    .clone()
                    .or(file.warmup)
                    .unwrap_or_else(|| "0s".into()),
            )?,
            timeout: dur(
                "timeout",
                &args
                    .timeout
                    .clone()
                    .or(file.timeout)
                    .unwrap_or_else(|| "5s".into()),
            )?,
            seed: args.seed.or(file.seed).unwrap_or(0x6b65656c),
            label,
            pin: !(args.no_pin || file.no_pin.unwrap_or(false)),
            progress: args.progress || file.progress.unwrap_or(false),
        };
        w.validate()?;
        Ok(w)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.servers.is_empty() {
            return Err(invalid(
                "server",
                "(none)",
                "at least one --server HOST:PORT is required",
            ));
        }
        for s in &self.servers {
            if !s.contains(':') {
                return Err(invalid("server", s, "expected HOST:PORT"));
            }
        }
        if (self.threads as usize) * (self.connections as usize) < self.servers.len() {
            return Err(invalid(
                "connections",
                self.connections,
                format!(
                    "threads x connections must be >= the {} servers, so that each gets one",
                    self.servers.len()
                ),
            ));
        }
        if let Some(r) = self.rate {
            if !(r > 0.0 && r.is_finite()) {
                return Err(invalid("rate", r, "must be > 0 requests per second"));
            }
        }
        if self.duration == Some(Duration::ZERO) {
            return Err(invalid("duration", "0", "must be > 0"));
        }
        if self.requests == Some(0) {
            return Err(invalid("requests", 0, "must be >= 1"));
        }
        let range = |key: &'static str, v: u32, lo: u32, hi: u32| {
            if v < lo || v > hi {
                Err(invalid(key, v, format!("must be in {lo}..={hi}")))
            } else {
                Ok(())
            }
        };
        range(
            "connections",
            self.connections,
            1,
            CONNECTIONS_PER_THREAD_MAX,
        )?;
        range("threads", self.threads, 1, THREADS_MAX)?;
        range("pipeline", self.pipeline, 1, PIPELINE_DEPTH_MAX)?;
        range("mget_width", self.mget_width, 1, MGET_WIDTH_MAX)?;
        range("key_size", self.key_size, 1, KEY_SIZE_MAX as u32)?;
        if self.keys == 0 {
            return Err(invalid("keys", 0, "must be >= 1"));
        }
        if self.key_prefix.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(invalid(
                "key_prefix",
                &self.key_prefix,
                "no spaces or control characters",
            ));
        }
        // Room for the largest index after the prefix and the `#` of counter keys.
        let digits = (self.keys - 1).max(1).ilog10() as usize + 1;
        if (self.key_size as usize) < self.key_prefix.len() + 1 + digits {
            return Err(invalid(
                "key_size",
                self.key_size,
                format!(
                    "must be >= {} to hold prefix {:?}, a counter marker and {} digits for {} keys",
                    self.key_prefix.len() + 1 + digits,
                    self.key_prefix,
                    digits,
                    self.keys
                ),
            ));
        }
        if (self.value_size.min() as usize) < VALUE_HEADER_LEN {
            return Err(invalid(
                "value_size",
                &self.value_size,
                format!("must be >= {VALUE_HEADER_LEN}: each value carries its key index, version and length for verification"),
            ));
        }
        if self.value_size.max() > VALUE_SIZE_MAX {
            return Err(invalid(
                "value_size",
                &self.value_size,
                format!("must be <= {VALUE_SIZE_MAX}"),
            ));
        }
        if self.timeout < Duration::from_millis(10) {
            return Err(invalid(
                "timeout",
                format!("{:?}", self.timeout),
                "must be >= 10ms",
            ));
        }
        Ok(())
    }

    pub fn has(&self, cmd: Cmd) -> bool {
        self.mix.iter().any(|&(c, _)| c == cmd)
    }

    pub fn mix_string(&self) -> String {
        self.mix
            .iter()
            .map(|(c, w)| format!("{}={w}", c.name()))
            .collect::<Vec<_>>()
            .join(",")
    }
}

fn read_file(p: &Path) -> Result<WorkloadFile, ConfigError> {
    let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
        path: p.into(),
        source,
    })?;
    toml::from_str(&text).map_err(|source| ConfigError::Parse {
        path: p.into(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> RunArgs {
        RunArgs {
            server: vec!["127.0.0.1:11211".into()],
            out: Some("/tmp/x".into()),
            ..Default::default()
        }
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("5 parsecs"), None);
    }

    #[test]
    fn mix_parses_weights_and_defaults() {
        let m = parse_mix("get=9,set=1,mget").unwrap();
        assert_eq!(m, vec![(Cmd::Get, 9), (Cmd::Set, 1), (Cmd::Mget, 1)]);
        assert!(parse_mix("got=1").is_err());
        assert!(parse_mix("get=0").is_err());
    }

    #[test]
    fn defaults_validate_and_limits_name_the_key() {
        let w = Workload::from_args(&args()).unwrap();
        assert_eq!(w.duration, Some(Duration::from_secs(10)));
        assert_eq!(w.pipeline, 1);
        let mut a = args();
        a.value_size = Some("10".into());
        let e = Workload::from_args(&a).unwrap_err().to_string();
        assert!(e.starts_with("value_size = 10: must be >= 20"), "{e}");
        let mut a = args();
        a.keys = Some(1_000_000_000);
        a.key_size = Some(8);
        let e = Workload::from_args(&a).unwrap_err().to_string();
        assert!(e.starts_with("key_size = 8"), "{e}");
        let mut a = args();
        a.rate = Some(1000.0);
        assert_eq!(
            Workload::from_args(&a).unwrap().pipeline,
            OPEN_LOOP_PIPELINE_DEFAULT
        );
    }

    #[test]
    fn toml_file_is_strict_and_flags_override_it() {
        let dir = std::env::temp_dir().join(format!("keel-loadgen-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("w.toml");
        std::fs::write(&p, "server = [\"127.0.0.1:1\"]\nout = \"/tmp/o\"\nkeys = 500\nvalue_size = 64\nmix = \"get=1,mget=1\"\ndist = \"zipfian:0.9\"\nrate = 20000\n").unwrap();
        let a = RunArgs {
            workload: Some(p.clone()),
            keys: Some(700),
            ..Default::default()
        };
        let w = Workload::from_args(&a).unwrap();
        assert_eq!(w.keys, 700);
        assert_eq!(w.value_size, ValueSizeSpec::Fixed(64));
        assert_eq!(w.dist, KeyDistSpec::Zipfian(0.9));
        assert_eq!(w.servers, vec!["127.0.0.1:1".to_string()]);
        assert_eq!(w.rate, Some(20000.0));
        std::fs::write(
            &p,
            "server = [\"127.0.0.1:1\"]\nout = \"/tmp/o\"\nkeyz = 5\n",
        )
        .unwrap();
        let e = Workload::from_args(&a).unwrap_err().to_string();
        assert!(e.contains("keyz"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
