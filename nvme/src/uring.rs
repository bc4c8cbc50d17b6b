//! The io_uring backend: glommio DMA files (O_DIRECT) over a plain file or a raw block device.

use std::ops::{Deref, DerefMut};
use std::os::fd::AsRawFd;
use std::path::Path;

use glommio::io::{DmaBuffer, DmaFile, OpenOptions, ReadResult};

use crate::{Device, IoError, BLOCK_BYTES};

/// A block-aligned DMA buffer from the shard's io_uring reactor.
pub struct DmaBuf(DmaBuffer);

impl Deref for DmaBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl DerefMut for DmaBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.0.as_bytes_mut()
    }
}

/// Bytes read from the device; derefs to exactly the requested range.
pub struct ReadBuf(ReadResult);

impl Deref for ReadBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

/// A file or block device opened with O_DIRECT on the current shard's io_uring.
///
/// Durability: writes go around the page cache (O_DIRECT) and are durable only after
/// [`Device::sync`], which issues fdatasync through the ring without blocking the shard.
pub struct UringDevice {
    file: DmaFile,
    path: String,
    size: u64,
}

/// `_IOR(0x12, 114, size_t)`: the byte size of a block device.
const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;

impl UringDevice {
    /// Opens `path` on the calling glommio executor. A regular file is created if missing and
    /// grown (fallocate, so ENOSPC shows now and not on a later write) to `size_bytes`; a block
    /// device must be at least `size_bytes` long. `size_bytes` must be block aligned.
    pub async fn open(path: &Path, size_bytes: u64) -> Result<UringDevice, IoError> {
        let name = path.display().to_string();
        let open_err = |msg: String| IoError::Open {
            path: name.clone(),
            msg,
        };
        if size_bytes == 0 || size_bytes % BLOCK_BYTES != 0 {
            return Err(open_err(format!(
                "size {size_bytes} is not a positive multiple of 4096"
            )));
        }
        let meta = std::fs::metadata(path).ok();
        let is_block = meta.as_ref().is_some_and(|m| {
            use std::os::unix::fs::FileTypeExt;
            m.file_type().is_block_device()
        });
        if !is_block && meta.as_ref().is_none_or(|m| m.len() < size_bytes) {
            // Size the file and write its block 0 before the first O_DIRECT open: glommio probes
            // whether the device supports polled I/O by reading block 0, and a read that the
            // filesystem answers without the device (EOF, a hole) looks like "yes", after which
            // every read fails with EOPNOTSUPP.
            let f = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(path)
                .map_err(|e| open_err(format!("cannot create: {e}")))?;
            f.set_len(size_bytes)
                .map_err(|e| open_err(format!("cannot size to {size_bytes} bytes: {e}")))?;
            if meta.as_ref().is_none_or(|m| m.len() < BLOCK_BYTES) {
                use std::os::unix::fs::FileExt;
                f.write_all_at(&[0u8; BLOCK_BYTES as usize], 0)
                    .and_then(|()| f.sync_data())
                    .map_err(|e| open_err(format!("cannot write block 0: {e}")))?;
            }
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(!is_block)
            .dma_open(path)
            .await
            .map_err(|e| open_err(format!("cannot open with O_DIRECT: {e}")))?;
        let have = if is_block {
            block_device_size(&file).map_err(|e| open_err(format!("BLKGETSIZE64: {e}")))?
        } else {
            file.file_size()
                .await
                .map_err(|e| open_err(format!("stat: {e}")))?
        };
        if is_block && have < size_bytes {
            return Err(open_err(format!(
                "block device holds {have} bytes, the profile asks for {size_bytes}: \
                 lower device.size_bytes or use a larger device"
            )));
        }
        if !is_block {
            // Reserve the blocks now so ENOSPC shows at start-up, not on a later write.
            file.pre_allocate(size_bytes, true).await.map_err(|e| {
                open_err(format!(
                    "cannot allocate {size_bytes} bytes (fallocate): {e}"
                ))
            })?;
        }
        Ok(UringDevice {
            file,
            path: name,
            size: size_bytes,
        })
    }

    fn io_err(
        &self,
        op: &'static str,
        offset: u64,
        len: u64,
        e: glommio::GlommioError<()>,
    ) -> IoError {
        IoError::Io {
            op,
            path: self.path.clone(),
            offset,
            len,
            source: e.into(),
        }
    }
}

fn block_device_size(file: &DmaFile) -> std::io::Result<u64> {
    let mut size: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which points at a live u64; the
    // fd is open for the lifetime of `file`.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64, &mut size as *mut u64) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(size)
}

impl Device for UringDevice {
    type WriteBuf = DmaBuf;
    type ReadBuf = ReadBuf;

    fn size_bytes(&self) -> u64 {
        self.size
    }

    fn name(&self) -> &str {
        &self.path
    }

    fn alloc(&self, len: usize) -> DmaBuf {
        assert!(
            len as u64 % BLOCK_BYTES == 0,
            "DMA buffer of {len} bytes is not block aligned"
        );
        let mut buf = DmaBuf(self.file.alloc_dma_buffer(len));
        buf.fill(0);
        buf
    }

    async fn write_at(&self, buf: DmaBuf, offset: u64) -> Result<(), IoError> {
        let len = buf.len() as u64;
        crate::check_write(&self.path, offset, len, self.size)?;
        let wrote = self
            .file
            .write_at(buf.0, offset)
            .await
            .map_err(|e| self.io_err("write", offset, len, e))?;
        if wrote as u64 != len {
            // A short O_DIRECT write means the device ran out of room or failed part-way; the
            // caller must treat the range as unwritten.
            return Err(IoError::Io {
                op: "write",
                path: self.path.clone(),
                offset,
                len,
                source: std::io::Error::other(format!("short write: {wrote} of {len} bytes")),
            });
        }
        Ok(())
    }

    async fn read_at(&self, offset: u64, len: usize) -> Result<ReadBuf, IoError> {
        let res = self
            .file
            .read_at(offset, len)
            .await
            .map_err(|e| self.io_err("read", offset, len as u64, e))?;
        if res.len() != len {
            return Err(IoError::Io {
                op: "read",
                path: self.path.clone(),
                offset,
                len: len as u64,
                source: std::io::Error::other(format!("short read: {} of {len} bytes", res.len())),
            });
        }
        Ok(ReadBuf(res))
    }

    async fn sync(&self) -> Result<(), IoError> {
        self.file
            .fdatasync()
            .await
            .map_err(|e| self.io_err("fdatasync", 0, self.size, e))
    }
}
