//! A seeded, fault-injecting in-memory [`Device`] for tests of the layers above (feature
//! `testing`; never in a shipped binary, which always runs the io_uring backend).
//!
//! It keeps two images: what reads see (`current`) and what survives a power loss (`durable`).
//! A write lands in `current` when it completes; a sync copies writes completed before it into
//! `durable`. [`SimDevice::crash_image`] is what a crash would leave: the durable image plus, for
//! each unsynced write, a seeded choice of lost, kept, or torn at a random byte. Faults on demand:
//! failed writes or syncs, bit flips, and latency (glommio timers) so several operations can be
//! in flight at once.

use std::cell::RefCell;
use std::time::Duration;

use crate::{Device, IoError, BLOCK_BYTES};

pub struct SimDevice {
    name: String,
    size: u64,
    st: RefCell<SimState>,
}

struct SimState {
    current: Vec<u8>,
    durable: Vec<u8>,
    /// Completed writes not yet covered by a sync: (write number, offset, length).
    unsynced: Vec<(u64, u64, usize)>,
    rng: u64,
    write_latency: Duration,
    sync_latency: Duration,
    fail_writes: bool,
    fail_syncs: bool,
    writes: u64,
    syncs: u64,
}

impl SimDevice {
    /// A zero-filled device of `size_bytes` (block aligned); `seed` drives every random choice.
    pub fn new(size_bytes: u64, seed: u64) -> SimDevice {
        Self::from_image(vec![0; size_bytes as usize], seed)
    }

    /// A device whose durable and current contents are `image` (e.g. a crash image).
    pub fn from_image(image: Vec<u8>, seed: u64) -> SimDevice {
        assert_eq!(image.len() as u64 % BLOCK_BYTES, 0);
        SimDevice {
            name: format!("sim-device(seed {seed})"),
            size: image.len() as u64,
            st: RefCell::new(SimState {
                durable: image.clone(),
                current: image,
                unsynced: Vec::new(),
                // xorshift64* must not start at zero.
                rng: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
                write_latency: Duration::ZERO,
                sync_latency: Duration::ZERO,
                fail_writes: false,
                fail_syncs: false,
                writes: 0,
                syncs: 0,
            }),
        }
    }

    /// Every write and sync waits this long (a glommio timer) before it completes.
    pub fn set_latency(&self, write: Duration, sync: Duration) {
        let mut st = self.st.borrow_mut();
        st.write_latency = write;
        st.sync_latency = sync;
    }

    /// From now on writes fail with EIO (and change nothing).
    pub fn fail_writes(&self, on: bool) {
        self.st.borrow_mut().fail_writes = on;
    }

    /// From now on syncs fail with EIO (and make nothing durable).
    pub fn fail_syncs(&self, on: bool) {
        self.st.borrow_mut().fail_syncs = on;
    }

    /// What reads see now: every completed write.
    pub fn image(&self) -> Vec<u8> {
        self.st.borrow().current.clone()
    }

    /// What survives a crash for certain: writes covered by a completed sync.
    pub fn durable_image(&self) -> Vec<u8> {
        self.st.borrow().durable.clone()
    }

    /// What a crash now might leave: the durable image plus each unsynced write lost, kept
    /// whole, or torn at a random byte (its head written, its tail not), chosen by the seed.
    pub fn crash_image(&self) -> Vec<u8> {
        let mut st = self.st.borrow_mut();
        let mut img = st.durable.clone();
        let unsynced = st.unsynced.clone();
        for (_, off, len) in unsynced {
            let off = off as usize;
            let keep = match st.next() % 3 {
                0 => 0,
                1 => len,
                _ => (st.next() % len as u64) as usize,
            };
            img[off..off + keep].copy_from_slice(&st.current[off..off + keep]);
        }
        img
    }

    /// Flips one bit in both images, as media corruption would.
    pub fn flip_bit(&self, offset: u64, bit: u8) {
        let mut st = self.st.borrow_mut();
        st.current[offset as usize] ^= 1 << (bit % 8);
        st.durable[offset as usize] ^= 1 << (bit % 8);
    }

    /// (writes, syncs) completed so far.
    pub fn counts(&self) -> (u64, u64) {
        let st = self.st.borrow();
        (st.writes, st.syncs)
    }

    fn eio(&self, op: &'static str, offset: u64, len: u64) -> IoError {
        IoError::Io {
            op,
            path: self.name.clone(),
            offset,
            len,
            source: std::io::Error::from_raw_os_error(5),
        }
    }
}

impl SimState {
    fn next(&mut self) -> u64 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

async fn delay(d: Duration) {
    if !d.is_zero() {
        glommio::timer::sleep(d).await;
    }
}

impl Device for SimDevice {
    type WriteBuf = Vec<u8>;
    type ReadBuf = Vec<u8>;

    fn size_bytes(&self) -> u64 {
        self.size
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn alloc(&self, len: usize) -> Vec<u8> {
        assert!(
            len as u64 % BLOCK_BYTES == 0,
            "buffer of {len} bytes is not block aligned"
        );
        vec![0; len]
    }

    async fn write_at(&self, buf: Vec<u8>, offset: u64) -> Result<(), IoError> {
        let len = buf.len() as u64;
        crate::check_write(&self.name, offset, len, self.size)?;
        let latency = self.st.borrow().write_latency;
        delay(latency).await;
        let mut st = self.st.borrow_mut();
        if st.fail_writes {
            return Err(self.eio("write", offset, len));
        }
        st.current[offset as usize..(offset + len) as usize].copy_from_slice(&buf);
        st.writes += 1;
        let n = st.writes;
        st.unsynced.push((n, offset, buf.len()));
        Ok(())
    }

    async fn read_at(&self, offset: u64, len: usize) -> Result<Vec<u8>, IoError> {
        crate::check_range("read", &self.name, offset, len as u64, self.size)?;
        let st = self.st.borrow();
        Ok(st.current[offset as usize..offset as usize + len].to_vec())
    }

    async fn sync(&self) -> Result<(), IoError> {
        // A sync covers the writes completed before it was issued.
        let (covered, latency) = {
            let st = self.st.borrow();
            (st.writes, st.sync_latency)
        };
        delay(latency).await;
        let mut st = self.st.borrow_mut();
        if st.fail_syncs {
            return Err(self.eio("fdatasync", 0, self.size));
        }
        let done: Vec<(u64, u64, usize)> = st
            .unsynced
            .iter()
            .copied()
            .filter(|w| w.0 <= covered)
            .collect();
        st.unsynced.retain(|w| w.0 > covered);
        for (_, off, len) in done {
            let (off, end) = (off as usize, off as usize + len);
            let src = st.current[off..end].to_vec();
            st.durable[off..end].copy_from_slice(&src);
        }
        st.syncs += 1;
        Ok(())
    }
}

/// The backend the real-device tests of the layers above run on: `KEEL_TEST_BACKEND=spdk`
/// (in a build with the `spdk` feature; scripts/test-spdk) puts each test file behind an SPDK aio
/// bdev, anything else (the default) opens it with io_uring.
pub async fn open_test_device(path: &std::path::Path, size_bytes: u64) -> crate::AnyDevice {
    #[cfg(feature = "spdk")]
    if std::env::var("KEEL_TEST_BACKEND").as_deref() == Ok("spdk") {
        let (cfg, bdev) = spdk_test_bdev(path, size_bytes);
        return crate::AnyDevice::open(&crate::Backend::Spdk(cfg), bdev.as_ref(), size_bytes)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
    crate::AnyDevice::Uring(
        crate::UringDevice::open(path, size_bytes)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
}

/// Test files a process may put behind SPDK (its one JSON config lists a bdev for each).
#[cfg(feature = "spdk")]
const SPDK_TEST_BDEVS: usize = 16;
/// The size of each (sparse files: only what a test writes takes room).
#[cfg(feature = "spdk")]
const SPDK_TEST_BDEV_BYTES: u64 = 256 << 20;

/// The bdev a test file is behind: the same one each time the file is opened. A process's first
/// call writes the JSON config of SPDK_TEST_BDEVS aio bdevs over sparse files of its own; the
/// test's own path gets an empty file, so that the test may remove it as it would its data.
#[cfg(feature = "spdk")]
fn spdk_test_bdev(path: &std::path::Path, size_bytes: u64) -> (crate::SpdkConfig, String) {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    static CFG: OnceLock<crate::SpdkConfig> = OnceLock::new();
    static GIVEN: Mutex<Option<HashMap<std::path::PathBuf, String>>> = Mutex::new(None);
    assert!(
        size_bytes <= SPDK_TEST_BDEV_BYTES,
        "test devices hold 256 MiB"
    );
    let cfg = CFG.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("keel-spdk-tests-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bdevs: Vec<String> = (0..SPDK_TEST_BDEVS)
            .map(|i| {
                let file = dir.join(format!("t{i}.img"));
                std::fs::File::create(&file)
                    .and_then(|f| f.set_len(SPDK_TEST_BDEV_BYTES))
                    .unwrap();
                format!(
                    r#"{{"method": "bdev_aio_create", "params": {{"name": "t{i}", "filename": "{}", "block_size": 4096}}}}"#,
                    file.display()
                )
            })
            .collect();
        let json = dir.join("spdk.json");
        std::fs::write(
            &json,
            format!(
                r#"{{"subsystems": [{{"subsystem": "bdev", "config": [{}]}}]}}"#,
                bdevs.join(", ")
            ),
        )
        .unwrap();
        crate::SpdkConfig {
            json_config: json.display().to_string(),
            mem_size_mb: 0,
        }
    });
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    let given = given.get_or_insert_with(HashMap::new);
    let n = given.len();
    let bdev = given
        .entry(path.to_path_buf())
        .or_insert_with(|| {
            assert!(
                n < SPDK_TEST_BDEVS,
                "more than {SPDK_TEST_BDEVS} test files in one process"
            );
            if let Some(dir) = path.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            let _ = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path);
            format!("t{n}")
        })
        .clone();
    (cfg.clone(), bdev)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run<F: std::future::Future<Output = ()> + 'static>(f: impl FnOnce() -> F + Send + 'static) {
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .spawn(f)
            .unwrap()
            .join()
            .unwrap();
    }

    fn block(byte: u8) -> Vec<u8> {
        vec![byte; BLOCK_BYTES as usize]
    }

    #[test]
    fn only_synced_writes_are_durable() {
        run(|| async {
            let d = SimDevice::new(4 * BLOCK_BYTES, 1);
            d.write_at(block(1), 0).await.unwrap();
            d.sync().await.unwrap();
            d.write_at(block(2), BLOCK_BYTES).await.unwrap();
            assert_eq!(&d.read_at(BLOCK_BYTES, 4).await.unwrap()[..], &[2; 4]);
            let durable = d.durable_image();
            assert_eq!(durable[0], 1);
            assert_eq!(
                durable[BLOCK_BYTES as usize], 0,
                "unsynced write not durable"
            );
            assert_eq!(d.counts(), (2, 1));
        });
    }

    #[test]
    fn a_crash_keeps_a_prefix_of_each_unsynced_write() {
        run(|| async {
            let mut outcomes = std::collections::BTreeSet::new();
            for seed in 0..64 {
                let d = SimDevice::new(2 * BLOCK_BYTES, seed);
                d.write_at(block(7), 0).await.unwrap();
                let img = d.crash_image();
                let kept = img.iter().take_while(|b| **b == 7).count();
                assert!(img[kept..].iter().all(|b| *b == 0), "only a head survives");
                outcomes.insert(match kept {
                    0 => "lost",
                    k if k == BLOCK_BYTES as usize => "kept",
                    _ => "torn",
                });
            }
            assert_eq!(
                outcomes.len(),
                3,
                "seeds cover lost, kept and torn: {outcomes:?}"
            );
        });
    }

    #[test]
    fn faults_on_demand() {
        run(|| async {
            let d = SimDevice::new(2 * BLOCK_BYTES, 2);
            d.fail_syncs(true);
            d.write_at(block(3), 0).await.unwrap();
            assert!(d.sync().await.is_err());
            assert_eq!(
                d.durable_image()[0],
                0,
                "a failed sync makes nothing durable"
            );
            d.fail_writes(true);
            assert!(d.write_at(block(4), 0).await.is_err());
            assert_eq!(d.image()[0], 3, "a failed write changes nothing");
            d.flip_bit(5, 1);
            assert_eq!(d.image()[5], 3 ^ 2);
            assert!(
                d.write_at(vec![0; 100], 0).await.is_err(),
                "unaligned refused"
            );
            assert!(
                d.read_at(2 * BLOCK_BYTES, 1).await.is_err(),
                "out of range refused"
            );
        });
    }
}
