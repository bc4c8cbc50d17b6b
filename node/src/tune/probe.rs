//! The device probes of `keel-node tune`, generic over keel-nvme's [`Device`] (the shipped
//! command runs them on the io_uring backend, O_DIRECT, through one glommio executor).
//!
//! Every probe stays inside `[PROBE_START_BYTES, size)`, so block 0 (where a Keel superblock
//! would be) is never written, and each one ends at its deadline. The sequential write comes
//! first, so the random reads land on blocks the device really holds (a file's unwritten
//! extents are answered by the filesystem without touching the disk, which would report
//! memory speed). [`erase`] zeroes what the probes wrote, so a node can format the device next.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use keel_nvme::{Device, IoError, BLOCK_BYTES};

use crate::latency::new_histogram;
use crate::transport::SplitMix64;

/// Probes start here: the first MiB (block 0 and the rest of a superblock's area) is left alone.
pub const PROBE_START_BYTES: u64 = 1 << 20;
/// One sequential write.
pub const SEQ_WRITE_BYTES: usize = 1 << 20;
/// Sequential writes in flight at once.
pub const SEQ_WRITES_IN_FLIGHT: usize = 4;
/// The random-read queue depths, as the issue and fio users know them.
pub const READ_QUEUE_DEPTHS: [usize; 5] = [1, 4, 16, 64, 128];
/// Blocks the write + fdatasync probe cycles over.
const SYNC_BLOCKS: u64 = 256;

/// Random 4 KiB reads at one queue depth.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadPoint {
    pub queue_depth: usize,
    pub iops: f64,
    pub p50_us: u64,
    pub p99_us: u64,
}

/// What the probes measured.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceFigures {
    /// Bytes the sequential write covered (from [`PROBE_START_BYTES`]); the reads hit them.
    pub written_bytes: u64,
    pub write_bytes_per_sec: f64,
    pub reads: Vec<ReadPoint>,
    pub sync_p50_us: u64,
    pub sync_p99_us: u64,
    pub sync_samples: u64,
}

/// Sequential 1 MiB writes, [`SEQ_WRITES_IN_FLIGHT`] at once, from [`PROBE_START_BYTES`] until
/// `budget` is spent or the device is full, then one fdatasync, which the time includes (a
/// device that only buffered the data has not written it). Returns (bytes, bytes per second).
pub async fn sequential_write<D: Device>(
    dev: &Rc<D>,
    budget: Duration,
) -> Result<(u64, f64), IoError> {
    let end = dev.size_bytes() / SEQ_WRITE_BYTES as u64 * SEQ_WRITE_BYTES as u64;
    let next = Rc::new(Cell::new(PROBE_START_BYTES));
    let t0 = Instant::now();
    let deadline = t0 + budget;
    let writer = || {
        let (dev, next) = (dev.clone(), next.clone());
        async move {
            while Instant::now() < deadline {
                let at = next.get();
                if at + SEQ_WRITE_BYTES as u64 > end {
                    break;
                }
                next.set(at + SEQ_WRITE_BYTES as u64);
                let mut buf = dev.alloc(SEQ_WRITE_BYTES);
                // Not zeros: a filesystem or device may store an all-zero block without
                // writing it.
                buf.fill(0x5a);
                dev.write_at(buf, at).await?;
            }
            Ok::<(), IoError>(())
        }
    };
    let writers: Vec<_> = (0..SEQ_WRITES_IN_FLIGHT).map(|_| writer()).collect();
    for r in futures::future::join_all(writers).await {
        r?;
    }
    dev.sync().await?;
    let bytes = next.get() - PROBE_START_BYTES;
    Ok((bytes, bytes as f64 / t0.elapsed().as_secs_f64()))
}

/// Random 4 KiB reads over `[PROBE_START_BYTES, PROBE_START_BYTES + span)` with
/// `queue_depth` in flight for `budget`.
pub async fn random_reads<D: Device>(
    dev: &Rc<D>,
    span: u64,
    queue_depth: usize,
    budget: Duration,
) -> Result<ReadPoint, IoError> {
    assert!(span >= BLOCK_BYTES && queue_depth >= 1);
    let blocks = span / BLOCK_BYTES;
    let hist = Rc::new(RefCell::new(new_histogram()));
    let t0 = Instant::now();
    let deadline = t0 + budget;
    let reader = |seed: u64| {
        let (dev, hist) = (dev.clone(), hist.clone());
        async move {
            let mut rng = SplitMix64::new(seed);
            while Instant::now() < deadline {
                let at = PROBE_START_BYTES + rng.next_u64() % blocks * BLOCK_BYTES;
                let t = Instant::now();
                let got = dev.read_at(at, BLOCK_BYTES as usize).await?;
                assert_eq!(got.len(), BLOCK_BYTES as usize);
                record(&mut hist.borrow_mut(), t.elapsed());
            }
            Ok::<(), IoError>(())
        }
    };
    let readers: Vec<_> = (0..queue_depth)
        .map(|i| reader(0x7e57 + i as u64))
        .collect();
    for r in futures::future::join_all(readers).await {
        r?;
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let h = hist.borrow();
    Ok(ReadPoint {
        queue_depth,
        iops: h.len() as f64 / elapsed,
        p50_us: h.value_at_quantile(0.50),
        p99_us: h.value_at_quantile(0.99),
    })
}

/// One 4 KiB write then fdatasync, one at a time, for `budget`: what a lone durable write (a
/// raftlog flush of one block) costs. Returns (p50 us, p99 us, samples).
pub async fn write_sync_latency<D: Device>(
    dev: &Rc<D>,
    budget: Duration,
) -> Result<(u64, u64, u64), IoError> {
    let mut hist = new_histogram();
    let deadline = Instant::now() + budget;
    let mut i = 0u64;
    // At least one sample, however short the budget.
    while i == 0 || Instant::now() < deadline {
        let mut buf = dev.alloc(BLOCK_BYTES as usize);
        buf.fill(0xa5);
        let t = Instant::now();
        dev.write_at(buf, PROBE_START_BYTES + i % SYNC_BLOCKS * BLOCK_BYTES)
            .await?;
        dev.sync().await?;
        record(&mut hist, t.elapsed());
        i += 1;
    }
    Ok((
        hist.value_at_quantile(0.50),
        hist.value_at_quantile(0.99),
        hist.len(),
    ))
}

/// Zeroes `[PROBE_START_BYTES, PROBE_START_BYTES + bytes)` and syncs: the device is blank
/// again, as a node expects a device it has not formatted.
pub async fn erase<D: Device>(dev: &Rc<D>, bytes: u64) -> Result<(), IoError> {
    let end = PROBE_START_BYTES + bytes.max(SYNC_BLOCKS * BLOCK_BYTES);
    let end = end.min(dev.size_bytes());
    let next = Rc::new(Cell::new(PROBE_START_BYTES));
    let eraser = || {
        let (dev, next) = (dev.clone(), next.clone());
        async move {
            loop {
                let at = next.get();
                if at >= end {
                    return Ok::<(), IoError>(());
                }
                let len = (end - at).min(SEQ_WRITE_BYTES as u64);
                next.set(at + len);
                // alloc hands out zeroed buffers.
                dev.write_at(dev.alloc(len as usize), at).await?;
            }
        }
    };
    let erasers: Vec<_> = (0..SEQ_WRITES_IN_FLIGHT).map(|_| eraser()).collect();
    for r in futures::future::join_all(erasers).await {
        r?;
    }
    dev.sync().await
}

fn record(h: &mut Histogram<u64>, d: Duration) {
    h.saturating_record((d.as_micros() as u64).max(1));
}

/// Runs every probe in order (write, reads at each depth, write + sync), each for `budget`,
/// then erases what they wrote. `progress` hears each figure as it comes.
pub async fn run_all<D: Device>(
    dev: Rc<D>,
    budget: Duration,
    progress: &dyn Fn(&str),
) -> Result<DeviceFigures, IoError> {
    let (written_bytes, write_bytes_per_sec) = sequential_write(&dev, budget).await?;
    progress(&format!(
        "sequential 1 MiB writes: {:.1} MiB/s ({} MiB written)",
        write_bytes_per_sec / (1 << 20) as f64,
        written_bytes >> 20
    ));
    let mut reads = Vec::new();
    for qd in READ_QUEUE_DEPTHS {
        let r = random_reads(&dev, written_bytes.max(BLOCK_BYTES), qd, budget).await?;
        progress(&format!(
            "random 4 KiB reads at QD {qd}: {:.0} IOPS (p50 {} us, p99 {} us)",
            r.iops, r.p50_us, r.p99_us
        ));
        reads.push(r);
    }
    let (sync_p50_us, sync_p99_us, sync_samples) = write_sync_latency(&dev, budget).await?;
    progress(&format!(
        "4 KiB write + fdatasync: p50 {sync_p50_us} us, p99 {sync_p99_us} us ({sync_samples} samples)"
    ));
    erase(&dev, written_bytes).await?;
    progress("erased what the probes wrote");
    Ok(DeviceFigures {
        written_bytes,
        write_bytes_per_sec,
        reads,
        sync_p50_us,
        sync_p99_us,
        sync_samples,
    })
}
