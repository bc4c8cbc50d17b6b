//! One process per device: an exclusive advisory lock (flock) on the device path, held for the
//! life of the process. A second keel-node started on the same file or block device is refused
//! instead of writing over the first one's data (SO_REUSEPORT would even let it share the port).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

/// The lock; dropping it (or the process ending, even by SIGKILL) releases it.
#[derive(Debug)]
pub struct DeviceLock {
    _file: File,
}

/// Locks `path` (creating the file if it does not exist). Err names the path and says whether
/// another process holds it.
pub fn lock_device(path: &Path) -> Result<DeviceLock, String> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| format!("device {}: cannot open it: {e}", path.display()))?;
    // SAFETY: flock on a descriptor this function owns; no memory is passed.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = std::io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            Some(libc::EWOULDBLOCK) => format!(
                "device {} is in use by another process (another keel-node?): refusing to share it",
                path.display()
            ),
            _ => format!("device {}: cannot lock it: {e}", path.display()),
        });
    }
    Ok(DeviceLock { _file: file })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_device_is_refused_until_the_first_is_dropped() {
        let dir = std::env::temp_dir().join(format!("keel-lock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("dev");
        let first = lock_device(&path).unwrap();
        // flock locks belong to the open file description: a second open is a second owner.
        let err = lock_device(&path).unwrap_err();
        assert!(err.contains("is in use by another process"), "{err}");
        drop(first);
        lock_device(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
