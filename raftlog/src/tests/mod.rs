//! Tests of the whole log on the fault-injecting SimDevice, the real io_uring device, and
//! raft-rs itself. Each test runs in its own glommio executor, as a shard would.

mod crash;
mod faults;
mod raft_conformance;
mod recovery;
mod uring;

use std::future::Future;
use std::rc::Rc;
use std::time::Duration;

use keel_nvme::testing::SimDevice;
use keel_nvme::Region;
use raft::eraftpb::{ConfState, Entry};
use raft::Storage;

use crate::{Config, Flush, RaftLog, RaftLogError};

pub const SEG: u64 = 64 << 10;

/// Runs `f` on a fresh glommio executor and returns its output (a panic fails the test).
pub fn run<T: Send + 'static, F: Future<Output = T> + 'static>(
    f: impl FnOnce() -> F + Send + 'static,
) -> T {
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .spawn(f)
        .expect("glommio executor starts (io_uring, RLIMIT_MEMLOCK)")
        .join()
        .expect("test body panicked")
}

pub fn cfg() -> Config {
    Config {
        segment_bytes: SEG,
        batch_bytes_max: 4096,
        flush_delay: Duration::from_millis(1),
        flushes_in_flight_max: 4,
    }
}

pub async fn open(
    dev: &Rc<SimDevice>,
    cfg: Config,
) -> Result<Rc<RaftLog<SimDevice>>, RaftLogError> {
    let size = keel_nvme::Device::size_bytes(&**dev);
    RaftLog::open(Region::new(dev.clone(), 0, size).unwrap(), cfg).await
}

/// Starts the flush loop; dropping the returned task stops it.
pub fn flusher<D: keel_nvme::Device + 'static>(
    log: &Rc<RaftLog<D>>,
) -> glommio::Task<RaftLogError> {
    glommio::spawn_local(log.clone().run_flush())
}

pub fn entry(index: u64, term: u64, data: &[u8]) -> Entry {
    Entry {
        index,
        term,
        data: data.to_vec().into(),
        ..Default::default()
    }
}

/// Deterministic data for entry (group, index, term) of `len` bytes, never all zero.
pub fn data(group: u64, index: u64, term: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (group * 31 + index * 7 + term * 13 + i as u64) as u8 | 1)
        .collect()
}

pub fn conf(voters: &[u64]) -> ConfState {
    ConfState {
        voters: voters.to_vec(),
        ..Default::default()
    }
}

/// Every entry the group holds, via raft::Storage.
pub fn all_entries<D: keel_nvme::Device + 'static>(log: &RaftLog<D>, group: u64) -> Vec<Entry> {
    let s = log.storage(group).unwrap();
    let (lo, hi) = (s.first_index().unwrap(), s.last_index().unwrap());
    s.entries(lo, hi + 1, None, raft::GetEntriesContext::empty(false))
        .unwrap()
}
