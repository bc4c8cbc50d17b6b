//! The device a node runs on, whichever backend its profile names: one type for the layers
//! above, so the engine, the raftlog and the shard are built once.

use std::ops::{Deref, DerefMut};
use std::path::Path;

#[cfg(feature = "spdk")]
use crate::spdk::{SpdkBuf, SpdkDevice, SpdkReadBuf};
use crate::uring::{DmaBuf, ReadBuf};
use crate::{Device, IoError, UringDevice};

/// How SPDK is started: once per process, by the first SPDK device opened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpdkConfig {
    /// SPDK's JSON config file (`{"subsystems": [{"subsystem": "bdev", "config": [...]}]}`), as
    /// `spdk_tgt --json` takes it: it creates the bdevs.
    pub json_config: String,
    /// Hugepage memory SPDK reserves at start, in MiB (0: what it needs, grown on demand).
    pub mem_size_mb: u32,
}

/// The profile's `io.backend`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Backend {
    /// A file or block device, O_DIRECT through the shard's io_uring.
    IoUring,
    /// An SPDK bdev (the device's name is the bdev's).
    Spdk(SpdkConfig),
}

pub enum AnyDevice {
    Uring(UringDevice),
    #[cfg(feature = "spdk")]
    Spdk(SpdkDevice),
}

impl AnyDevice {
    /// Opens `path` (io_uring: a file or block device; SPDK: a bdev name) on the calling
    /// executor.
    pub async fn open(
        backend: &Backend,
        path: &Path,
        size_bytes: u64,
    ) -> Result<AnyDevice, IoError> {
        match backend {
            Backend::IoUring => UringDevice::open(path, size_bytes)
                .await
                .map(AnyDevice::Uring),
            #[cfg(feature = "spdk")]
            Backend::Spdk(cfg) => SpdkDevice::open(&path.to_string_lossy(), cfg, size_bytes)
                .await
                .map(AnyDevice::Spdk),
            #[cfg(not(feature = "spdk"))]
            Backend::Spdk(_) => Err(IoError::Open {
                path: path.display().to_string(),
                msg: "this build has no SPDK backend (build with --features spdk)".into(),
            }),
        }
    }
}

pub enum AnyBuf {
    Uring(DmaBuf),
    #[cfg(feature = "spdk")]
    Spdk(SpdkBuf),
}

impl Deref for AnyBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            AnyBuf::Uring(b) => b,
            #[cfg(feature = "spdk")]
            AnyBuf::Spdk(b) => b,
        }
    }
}

impl DerefMut for AnyBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        match self {
            AnyBuf::Uring(b) => b,
            #[cfg(feature = "spdk")]
            AnyBuf::Spdk(b) => b,
        }
    }
}

pub enum AnyReadBuf {
    Uring(ReadBuf),
    #[cfg(feature = "spdk")]
    Spdk(SpdkReadBuf),
}

impl Deref for AnyReadBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            AnyReadBuf::Uring(b) => b,
            #[cfg(feature = "spdk")]
            AnyReadBuf::Spdk(b) => b,
        }
    }
}

impl Device for AnyDevice {
    type WriteBuf = AnyBuf;
    type ReadBuf = AnyReadBuf;

    fn size_bytes(&self) -> u64 {
        match self {
            AnyDevice::Uring(d) => d.size_bytes(),
            #[cfg(feature = "spdk")]
            AnyDevice::Spdk(d) => d.size_bytes(),
        }
    }

    fn name(&self) -> &str {
        match self {
            AnyDevice::Uring(d) => d.name(),
            #[cfg(feature = "spdk")]
            AnyDevice::Spdk(d) => d.name(),
        }
    }

    fn alloc(&self, len: usize) -> AnyBuf {
        match self {
            AnyDevice::Uring(d) => AnyBuf::Uring(d.alloc(len)),
            #[cfg(feature = "spdk")]
            AnyDevice::Spdk(d) => AnyBuf::Spdk(d.alloc(len)),
        }
    }

    async fn write_at(&self, buf: AnyBuf, offset: u64) -> Result<(), IoError> {
        match (self, buf) {
            (AnyDevice::Uring(d), AnyBuf::Uring(b)) => d.write_at(b, offset).await,
            #[cfg(feature = "spdk")]
            (AnyDevice::Spdk(d), AnyBuf::Spdk(b)) => d.write_at(b, offset).await,
            #[cfg(feature = "spdk")]
            _ => unreachable!("a buffer is written by the device that allocated it"),
        }
    }

    async fn read_at(&self, offset: u64, len: usize) -> Result<AnyReadBuf, IoError> {
        match self {
            AnyDevice::Uring(d) => d.read_at(offset, len).await.map(AnyReadBuf::Uring),
            #[cfg(feature = "spdk")]
            AnyDevice::Spdk(d) => d.read_at(offset, len).await.map(AnyReadBuf::Spdk),
        }
    }

    async fn sync(&self) -> Result<(), IoError> {
        match self {
            AnyDevice::Uring(d) => d.sync().await,
            #[cfg(feature = "spdk")]
            AnyDevice::Spdk(d) => d.sync().await,
        }
    }
}
