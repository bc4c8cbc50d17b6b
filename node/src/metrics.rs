//! Prometheus metrics: HTTP GET /metrics on `node.metrics_listen`, served by one task on shard
//! 0, in the Prometheus text format (0.0.4, through the `prometheus-client` crate's encoder).
//!
//! A scrape collects what `stats` and `stats latency` collect, from every shard over the shard
//! mesh, and exports it per shard (label `shard`): each `stats` counter as
//! `keel_<name>_total`, each level (`curr_items`, `bytes`, queue lengths, ...) as a gauge
//! `keel_<name>`, the per-command latency as the histogram
//! `keel_request_duration_seconds{command=...}` and each write-path stage as
//! `keel_<stage>_duration_seconds`. Names that already start with `keel_` are not prefixed twice.
//!
//! Not here: authentication or TLS (keep the address on loopback or a private network),
//! keep-alive (one request per connection), compression.

use std::rc::Rc;
use std::time::Duration;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use hdrhistogram::Histogram;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use crate::engine::{Op, OpResult, StatsGroup};
use crate::latency::{Kind, Report};
use crate::shard::Shard;

/// `stats` values that are levels, not counts since start: exported as gauges.
const GAUGES: &[&str] = &[
    "curr_connections",
    "curr_items",
    "bytes",
    "limit_maxbytes",
    "keel_cache_bytes",
    "keel_written_seq",
    "keel_checkpoint_seq",
    "keel_segments",
    "keel_segments_free",
    "keel_poisoned",
    "keel_raft_pending_proposals",
    "keel_raft_pending_reads",
    "keel_raft_unpersisted_readies",
    "keel_raft_unapplied_entries",
    "keel_raft_pending_forwards",
    "keel_raft_groups",
    "keel_raft_leading",
    "keel_raftlog_durable_lsn",
    "keel_placement_epoch",
];

/// `stats` values left out: a hash, meaningless as a number to graph or sum.
const SKIPPED: &[&str] = &["keel_digest"];

/// Upper bounds (seconds) of the exported latency buckets; the HDR histograms behind them are
/// finer, and `stats latency` prints their exact quantiles.
const BUCKETS_S: &[f64] = &[
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Largest HTTP request head read; a longer one is answered 431 and closed.
const REQUEST_HEAD_BYTES_MAX: usize = 8192;
/// A client that sends no complete request head within this is dropped.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; more are answered 503 and closed.
const CONNS_MAX: usize = 16;

/// One shard's figures at a scrape.
#[derive(Debug)]
struct ShardFigures {
    shard: usize,
    stats: Vec<(&'static str, u64)>,
    latency: Report,
}

/// Everything one scrape exports (a `Collector`, so the crate's encoder writes the format).
#[derive(Debug)]
struct Scrape {
    shards: Vec<ShardFigures>,
}

/// `keel_<name>` without doubling a `keel_` prefix.
fn metric_name(stat: &str) -> String {
    if stat.starts_with("keel_") {
        stat.to_string()
    } else {
        format!("keel_{stat}")
    }
}

/// The HDR histogram in seconds, as (upper bound, count in this bucket) pairs, and its sum.
fn buckets(h: &Histogram<u64>) -> (Vec<(f64, u64)>, f64) {
    let mut out: Vec<(f64, u64)> = BUCKETS_S.iter().map(|&b| (b, 0)).collect();
    out.push((f64::INFINITY, 0));
    let mut sum_us = 0f64;
    for v in h.iter_recorded() {
        let us = v.value_iterated_to();
        sum_us += us as f64 * v.count_at_value() as f64;
        let s = us as f64 / 1e6;
        let i = out
            .iter()
            .position(|(b, _)| s <= *b)
            .expect("+Inf takes all");
        out[i].1 += v.count_at_value();
    }
    (out, sum_us / 1e6)
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(first) = self.shards.first() else {
            return Ok(());
        };
        for (i, &(stat, _)) in first.stats.iter().enumerate() {
            if SKIPPED.contains(&stat) {
                continue;
            }
            let name = metric_name(stat);
            let gauge = GAUGES.contains(&stat);
            let help = format!("memcached `stats` value {stat}, per shard");
            let ty = if gauge {
                MetricType::Gauge
            } else {
                MetricType::Counter
            };
            let mut m = encoder.encode_descriptor(&name, &help, None, ty)?;
            for s in &self.shards {
                // Every shard reports the same names in the same order.
                let Some(&(_, v)) = s.stats.get(i).filter(|(n, _)| *n == stat) else {
                    continue;
                };
                let labels = [("shard", s.shard.to_string())];
                let fam = m.encode_family(&labels)?;
                if gauge {
                    ConstGauge::new(v as i64).encode(fam)?;
                } else {
                    ConstCounter::new(v).encode(fam)?;
                }
            }
        }
        let seconds = Unit::Seconds;
        let mut commands = Vec::new();
        let mut stages: Vec<&'static str> = Vec::new();
        for s in &self.shards {
            for (name, kind, h) in s.latency.iter() {
                match kind {
                    Kind::Command => commands.push((s.shard, name, h)),
                    Kind::Stage if !stages.contains(&name) => stages.push(name),
                    Kind::Stage => {}
                }
            }
        }
        if !commands.is_empty() {
            let mut m = encoder.encode_descriptor(
                "keel_request_duration",
                "From a request's parse to the write of its reply, per command and shard",
                Some(&seconds),
                MetricType::Histogram,
            )?;
            for (shard, command, h) in commands {
                let labels = [
                    ("shard", shard.to_string()),
                    ("command", command.to_string()),
                ];
                let mut fam = m.encode_family(&labels)?;
                let (b, sum) = buckets(h);
                fam.encode_histogram::<NoLabelSet>(sum, h.len(), &b, None)?;
            }
        }
        for stage in stages {
            let name = format!("keel_{stage}_duration");
            let help = format!("Latency of the write-path stage {stage}, per shard");
            let mut m =
                encoder.encode_descriptor(&name, &help, Some(&seconds), MetricType::Histogram)?;
            for s in &self.shards {
                let Some((_, _, h)) = s.latency.iter().find(|(n, _, _)| *n == stage) else {
                    continue;
                };
                let labels = [("shard", s.shard.to_string())];
                let mut fam = m.encode_family(&labels)?;
                let (b, sum) = buckets(h);
                fam.encode_histogram::<NoLabelSet>(sum, h.len(), &b, None)?;
            }
        }
        Ok(())
    }
}

/// The text of /metrics from the shards' figures.
fn render(shards: Vec<ShardFigures>) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Scrape { shards }));
    let mut out = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)
        .expect("writing to a String cannot fail");
    out
}

/// Every shard's `stats` and latency histograms, as `stats` collects them.
async fn collect(shard: &Rc<Shard>) -> Vec<ShardFigures> {
    let now = crate::engine::Engine::<keel_nvme::AnyDevice>::now();
    let ops = || {
        vec![
            Op::Stats(StatsGroup::General),
            Op::Stats(StatsGroup::Latency),
        ]
    };
    let calls = (0..shard.nshards).map(|dest| async move {
        let results = if dest == shard.id {
            let mut v = Vec::new();
            for op in ops() {
                v.push(shard.resolve(shard.start_local(op, now)).await);
            }
            v
        } else {
            shard.call(dest, ops(), now).await
        };
        let mut f = ShardFigures {
            shard: dest,
            stats: Vec::new(),
            latency: Report::default(),
        };
        for r in results {
            match r {
                OpResult::Stats(v) => f.stats = v,
                OpResult::Latency(l) => f.latency = *l,
                _ => {}
            }
        }
        f
    });
    futures::future::join_all(calls).await
}

/// Binds `addr` and serves /metrics from a task of its own in `tq` (on shard 0).
pub fn spawn_metrics_task(
    shard: Rc<Shard>,
    addr: &str,
    tq: glommio::TaskQueueHandle,
) -> Result<(), String> {
    let listener = TcpListener::bind(addr).map_err(|e| {
        format!("node.metrics_listen = {addr:?}: cannot listen: {e} (pick a free port, or leave it empty)")
    })?;
    eprintln!("keel-node: serving metrics on http://{addr}/metrics");
    let open = Rc::new(std::cell::Cell::new(0usize));
    glommio::spawn_local_into(
        async move {
            loop {
                match listener.accept().await {
                    Ok(mut stream) if open.get() >= CONNS_MAX => {
                        glommio::spawn_local(async move {
                            let _ = respond(&mut stream, "503 Service Unavailable", "").await;
                        })
                        .detach();
                    }
                    Ok(stream) => {
                        let shard = shard.clone();
                        let open = open.clone();
                        open.set(open.get() + 1);
                        glommio::spawn_local(async move {
                            let _ = serve(&shard, stream).await;
                            open.set(open.get() - 1);
                        })
                        .detach();
                    }
                    Err(e) => {
                        eprintln!("keel-node: metrics: accept failed: {e}");
                        glommio::timer::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
        },
        tq,
    )
    .map_err(|e| e.to_string())?
    .detach();
    Ok(())
}

/// The path of a `GET <path> HTTP/1.x` request head; `Err` with the status line otherwise.
fn request_path(head: &[u8]) -> Result<&[u8], &'static str> {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut parts = line.split(|&b| b == b' ');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(b"GET"), Some(path), Some(v)) if v.starts_with(b"HTTP/1.") => {
            Ok(path.split(|&b| b == b'?').next().unwrap_or(path))
        }
        (Some(_), Some(_), Some(v)) if v.starts_with(b"HTTP/1.") => Err("405 Method Not Allowed"),
        _ => Err("400 Bad Request"),
    }
}

async fn serve(shard: &Rc<Shard>, mut stream: TcpStream) -> std::io::Result<()> {
    stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() > REQUEST_HEAD_BYTES_MAX {
            return respond(&mut stream, "431 Request Header Fields Too Large", "").await;
        }
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    match request_path(&head) {
        Ok(b"/metrics") => {
            let body = render(collect(shard).await);
            respond(&mut stream, "200 OK", &body).await
        }
        Ok(_) => respond(&mut stream, "404 Not Found", "try /metrics\n").await,
        Err(status) => respond(&mut stream, status, "").await,
    }
}

async fn respond(stream: &mut TcpStream, status: &str, body: &str) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.close().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::latency::{Latency, Timer};

    fn figures(shard: usize, sets: u64) -> ShardFigures {
        let l = Latency::default();
        for i in 0..sets {
            l.record(Timer::Set, Duration::from_micros(100 + i));
        }
        l.record(Timer::RaftlogFlush, Duration::from_millis(2));
        ShardFigures {
            shard,
            stats: vec![("cmd_set", sets), ("curr_items", 7), ("keel_digest", 9)],
            latency: l.report(),
        }
    }

    #[test]
    fn counters_gauges_and_histograms_follow_prometheus_names() {
        let text = render(vec![figures(0, 3), figures(1, 5)]);
        for want in [
            "# TYPE keel_cmd_set_total counter\n",
            "keel_cmd_set_total{shard=\"0\"} 3\n",
            "keel_cmd_set_total{shard=\"1\"} 5\n",
            "# TYPE keel_curr_items gauge\n",
            "keel_curr_items{shard=\"1\"} 7\n",
            "# TYPE keel_request_duration_seconds histogram\n",
            "keel_request_duration_seconds_count{shard=\"1\",command=\"set\"} 5\n",
            "keel_request_duration_seconds_bucket{shard=\"0\",command=\"set\",le=\"0.00025\"} 3\n",
            "keel_request_duration_seconds_bucket{shard=\"0\",command=\"set\",le=\"0.0001\"} 1\n",
            "keel_request_duration_seconds_bucket{shard=\"0\",command=\"set\",le=\"5e-05\"} 0\n",
            "# TYPE keel_raftlog_flush_duration_seconds histogram\n",
            "keel_raftlog_flush_duration_seconds_count{shard=\"0\"} 1\n",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
        assert!(!text.contains("digest"), "{text}");
    }

    #[test]
    fn buckets_hold_every_sample_once() {
        let mut h = crate::latency::new_histogram();
        for us in [5, 10, 11, 999, 1001, 20_000_000] {
            h.record(us).unwrap();
        }
        let (b, sum) = buckets(&h);
        assert_eq!(b.iter().map(|(_, c)| c).sum::<u64>(), 6);
        assert_eq!(b.last().unwrap(), &(f64::INFINITY, 1), "20 s is above 10 s");
        assert_eq!(b[0], (0.000_01, 2), "5 and 10 us");
        assert!((sum - 20.002).abs() < 0.3, "{sum}");
    }

    #[test]
    fn only_get_metrics_is_served() {
        assert_eq!(
            request_path(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Ok(&b"/metrics"[..])
        );
        assert_eq!(
            request_path(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n"),
            Ok(&b"/metrics"[..])
        );
        assert_eq!(request_path(b"GET / HTTP/1.1\r\n\r\n"), Ok(&b"/"[..]));
        assert_eq!(
            request_path(b"POST /metrics HTTP/1.1\r\n\r\n"),
            Err("405 Method Not Allowed")
        );
        assert_eq!(request_path(b"hello\r\n\r\n"), Err("400 Bad Request"));
    }
}
