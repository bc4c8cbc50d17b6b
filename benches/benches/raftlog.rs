//! Raft log group commit on the real io_uring backend (an O_DIRECT file under /tmp, fdatasync
//! through the ring): append throughput, and per-append commit latency, against entry size and
//! batch_bytes_max.
//!
//! Each measurement runs in a fresh glommio executor on a fresh file (criterion's `iter_custom`
//! times only the appends and the wait for durability, not executor start or file creation).

use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use keel_nvme::{Region, UringDevice};
use keel_raftlog::{Config, RaftLog};
use raft::eraftpb::{ConfState, Entry};

const SEGMENT_BYTES: u64 = 8 << 20;
const FILE_BYTES: u64 = 16 * SEGMENT_BYTES;
/// Compact this often so long runs reuse segments instead of filling the file.
const COMPACT_EVERY: u64 = 256;

#[derive(Clone, Copy)]
enum Mode {
    /// Append `iters` entries back to back, then wait until all are durable.
    Throughput,
    /// Append one entry and wait until it is durable, `iters` times.
    Latency,
}

fn path() -> PathBuf {
    std::env::temp_dir().join(format!("keel-raftlog-bench-{}.log", std::process::id()))
}

fn measure(mode: Mode, entry_bytes: usize, batch_bytes_max: usize, iters: u64) -> Duration {
    let path = path();
    let p = path.clone();
    let took = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .spawn(move || async move {
            let dev = Rc::new(UringDevice::open(&p, FILE_BYTES).await.expect("bench file"));
            let cfg = Config {
                segment_bytes: SEGMENT_BYTES,
                batch_bytes_max,
                flush_delay: Duration::from_millis(5),
                flushes_in_flight_max: 4,
            };
            let region = Region::new(dev, 0, FILE_BYTES).unwrap();
            let log = RaftLog::open(region, cfg).await.unwrap();
            let _flush = glommio::spawn_local(log.clone().run_flush());
            let conf = ConfState {
                voters: vec![1],
                ..Default::default()
            };
            log.create_group(1, conf).unwrap();
            let data = vec![0x5a_u8; entry_bytes];
            let start = Instant::now();
            for i in 1..=iters {
                let e = Entry {
                    index: i,
                    term: 1,
                    data: data.clone().into(),
                    ..Default::default()
                };
                let lsn = log.append(1, &[e]).unwrap();
                if let Mode::Latency = mode {
                    log.durable(lsn).await.unwrap();
                }
                if i % COMPACT_EVERY == 0 {
                    log.compact(1, i - 1).unwrap();
                }
            }
            log.durable(log.last_lsn()).await.unwrap();
            start.elapsed()
        })
        .unwrap()
        .join()
        .unwrap();
    let _ = std::fs::remove_file(&path);
    took
}

fn bench_raftlog(c: &mut Criterion) {
    let mut group = c.benchmark_group("raftlog_append_throughput");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(3));
    for batch in [4096usize, 64 << 10] {
        for size in [128usize, 1024, 16 << 10] {
            group.throughput(Throughput::Bytes(size as u64));
            let id = BenchmarkId::new(format!("batch_{batch}"), format!("entry_{size}"));
            group.bench_function(id, |b| {
                b.iter_custom(|iters| measure(Mode::Throughput, size, batch, iters))
            });
        }
    }
    group.finish();

    let mut group = c.benchmark_group("raftlog_append_latency");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(3));
    for batch in [4096usize, 64 << 10] {
        for size in [128usize, 16 << 10] {
            let id = BenchmarkId::new(format!("batch_{batch}"), format!("entry_{size}"));
            group.bench_function(id, |b| {
                b.iter_custom(|iters| measure(Mode::Latency, size, batch, iters))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench_raftlog);
criterion_main!(benches);
