//! keel-nvme: the one place in Keel that does disk I/O.
//!
//! What it does: opens a device (a plain file of a given size, or a raw block device) with
//! O_DIRECT through glommio's io_uring DMA files, hands out block-aligned DMA buffers, reads and
//! writes aligned blocks, syncs, and cuts the device into per-shard [`Region`]s. It also runs the
//! start-up checks that decide whether io_uring can work at all on this host ([`preflight`]).
//!
//! What it does not do: record framing, caching, or any decision about *when* to sync; those
//! belong to the engine and the Raft log, which are generic over the [`Device`] trait (the one
//! seam of this crate) so tests can wrap it.
//!
//! Backends: io_uring ([`UringDevice`], always built) and SPDK ([`SpdkDevice`], cargo feature
//! `spdk`, against an SPDK installed on the host: see spdk/README.md). A node opens the one its
//! profile names as an [`AnyDevice`].

mod any;
mod lock;
mod preflight;
#[cfg(feature = "spdk")]
mod spdk;
#[cfg(feature = "testing")]
pub mod testing;
mod uring;

use std::ops::{Deref, DerefMut};
use std::rc::Rc;

pub use any::{AnyBuf, AnyDevice, AnyReadBuf, Backend, SpdkConfig};
pub use lock::{lock_device, DeviceLock};
pub use preflight::{
    memlock_limits, preflight, raise_open_files, PreflightError, MEMLOCK_PER_EXECUTOR_BYTES,
};
#[cfg(feature = "spdk")]
pub use spdk::{SpdkBuf, SpdkDevice, SpdkReadBuf};
pub use uring::UringDevice;

/// Every offset and length that reaches the device is a multiple of this.
pub const BLOCK_BYTES: u64 = 4096;

/// Errors from the device. Each carries what was being done, where, and on which path, because an
/// operator reading "Input/output error" alone cannot act on it.
#[derive(Debug, thiserror::Error)]
pub enum IoError {
    #[error("{op} {path}: offset {offset}, length {len}: {source}")]
    Io {
        op: &'static str,
        path: String,
        offset: u64,
        len: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("{op} {path}: offset {offset}, length {len} is outside the region of {size} bytes")]
    OutOfRange {
        op: &'static str,
        path: String,
        offset: u64,
        len: u64,
        size: u64,
    },
    #[error("{op} {path}: offset {offset}, length {len} is not aligned to {BLOCK_BYTES} bytes")]
    Unaligned {
        op: &'static str,
        path: String,
        offset: u64,
        len: u64,
    },
    #[error("device {path}: {msg}")]
    Open { path: String, msg: String },
}

/// The checks every backend makes on a write: block aligned, and inside the device's
/// `size` bytes.
pub(crate) fn check_write(path: &str, offset: u64, len: u64, size: u64) -> Result<(), IoError> {
    if offset % BLOCK_BYTES != 0 || len % BLOCK_BYTES != 0 {
        return Err(IoError::Unaligned {
            op: "write",
            path: path.into(),
            offset,
            len,
        });
    }
    check_range("write", path, offset, len, size)
}

/// `offset..offset + len` lies inside a device of `size` bytes.
pub(crate) fn check_range(
    op: &'static str,
    path: &str,
    offset: u64,
    len: u64,
    size: u64,
) -> Result<(), IoError> {
    if offset.checked_add(len).is_none_or(|end| end > size) {
        return Err(IoError::OutOfRange {
            op,
            path: path.into(),
            offset,
            len,
            size,
        });
    }
    Ok(())
}

/// A block device as the storage layers see it: aligned writes, reads, and a durability barrier.
///
/// `async fn` without `Send`: a shard's device handle never leaves its thread.
#[allow(async_fn_in_trait)]
pub trait Device {
    /// A buffer the device can write from without copying (DMA-able, block aligned).
    type WriteBuf: DerefMut<Target = [u8]>;
    /// What a read returns; it may hold more bytes around the requested range internally.
    type ReadBuf: Deref<Target = [u8]>;

    /// Usable size in bytes (a multiple of [`BLOCK_BYTES`]).
    fn size_bytes(&self) -> u64;
    /// A name for error messages (the path).
    fn name(&self) -> &str;
    /// An aligned, zero-filled buffer of `len` bytes (`len` a multiple of [`BLOCK_BYTES`]).
    fn alloc(&self, len: usize) -> Self::WriteBuf;
    /// Writes the whole buffer at `offset`. Not durable until [`Device::sync`] completes.
    async fn write_at(&self, buf: Self::WriteBuf, offset: u64) -> Result<(), IoError>;
    /// Reads `len` bytes at `offset` (any alignment; the backend widens to blocks).
    async fn read_at(&self, offset: u64, len: usize) -> Result<Self::ReadBuf, IoError>;
    /// Durability barrier: every write completed before this call survives a power loss once it
    /// returns Ok (fdatasync on files and block devices).
    async fn sync(&self) -> Result<(), IoError>;
}

/// A shard's slice of a device: offsets are relative to `base`, and every access is range
/// checked so one shard can never write into another's region.
pub struct Region<D: Device> {
    dev: Rc<D>,
    base: u64,
    len: u64,
}

impl<D: Device> Region<D> {
    /// `base` and `len` must be block aligned and inside the device.
    pub fn new(dev: Rc<D>, base: u64, len: u64) -> Result<Self, IoError> {
        if base % BLOCK_BYTES != 0 || len % BLOCK_BYTES != 0 {
            return Err(IoError::Unaligned {
                op: "region",
                path: dev.name().into(),
                offset: base,
                len,
            });
        }
        if base
            .checked_add(len)
            .is_none_or(|end| end > dev.size_bytes())
        {
            return Err(IoError::OutOfRange {
                op: "region",
                path: dev.name().into(),
                offset: base,
                len,
                size: dev.size_bytes(),
            });
        }
        Ok(Region { dev, base, len })
    }

    /// Splits a device into `n` equal block-aligned regions, one per shard.
    pub fn split(dev: Rc<D>, n: usize) -> Result<Vec<Self>, IoError> {
        assert!(n > 0);
        let each = dev.size_bytes() / n as u64 / BLOCK_BYTES * BLOCK_BYTES;
        (0..n as u64)
            .map(|i| Region::new(dev.clone(), i * each, each))
            .collect()
    }

    fn check(&self, op: &'static str, offset: u64, len: u64) -> Result<u64, IoError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(self.base + offset),
            _ => Err(IoError::OutOfRange {
                op,
                path: self.dev.name().into(),
                offset,
                len,
                size: self.len,
            }),
        }
    }
}

impl<D: Device> Device for Region<D> {
    type WriteBuf = D::WriteBuf;
    type ReadBuf = D::ReadBuf;

    fn size_bytes(&self) -> u64 {
        self.len
    }
    fn name(&self) -> &str {
        self.dev.name()
    }
    fn alloc(&self, len: usize) -> Self::WriteBuf {
        self.dev.alloc(len)
    }
    async fn write_at(&self, buf: Self::WriteBuf, offset: u64) -> Result<(), IoError> {
        let at = self.check("write", offset, buf.len() as u64)?;
        self.dev.write_at(buf, at).await
    }
    async fn read_at(&self, offset: u64, len: usize) -> Result<Self::ReadBuf, IoError> {
        let at = self.check("read", offset, len as u64)?;
        self.dev.read_at(at, len).await
    }
    async fn sync(&self) -> Result<(), IoError> {
        self.dev.sync().await
    }
}

/// Rounds `v` up to a multiple of [`BLOCK_BYTES`].
pub const fn align_up(v: u64) -> u64 {
    v.div_ceil(BLOCK_BYTES) * BLOCK_BYTES
}

/// Rounds `v` down to a multiple of [`BLOCK_BYTES`].
pub const fn align_down(v: u64) -> u64 {
    v / BLOCK_BYTES * BLOCK_BYTES
}
