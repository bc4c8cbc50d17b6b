//! Start-up checks: can this host run glommio's io_uring executors at all?

/// What keeps Keel from starting, with the fix in the message.
#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error(
        "io_uring is not available ({0}): Keel needs Linux >= 5.8 with io_uring enabled \
         (check `sysctl kernel.io_uring_disabled`, which must be 0, and seccomp/container policy)"
    )]
    NoUring(std::io::Error),
    #[error(
        "RLIMIT_MEMLOCK is {have} bytes but {need} are needed ({executors} executors): run \
         `ulimit -l unlimited` before starting keel-node (or set LimitMEMLOCK=infinity in its \
         systemd unit)"
    )]
    Memlock { have: u64, need: u64, executors: usize },
}

/// Memory each glommio executor locks for its rings and registered buffers.
pub const MEMLOCK_PER_EXECUTOR_BYTES: u64 = 512 * 1024;

/// Checks that io_uring works and that enough memory can be locked for `executors` executors
/// (each locking `io_memory_bytes` plus the ring itself). Raises RLIMIT_MEMLOCK when allowed
/// (root), otherwise says what to run.
pub fn preflight(executors: usize, io_memory_bytes: u64) -> Result<(), PreflightError> {
    probe_uring().map_err(PreflightError::NoUring)?;
    let need = (MEMLOCK_PER_EXECUTOR_BYTES + io_memory_bytes) * executors as u64;
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes one rlimit struct through a pointer to a live local.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) } != 0 {
        return Ok(());
    }
    if lim.rlim_cur == libc::RLIM_INFINITY || lim.rlim_cur >= need {
        return Ok(());
    }
    let raised = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: setrlimit reads one rlimit struct from a pointer to a live local.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &raised) } == 0 {
        return Ok(());
    }
    let fallback = libc::rlimit { rlim_cur: lim.rlim_max.min(need.max(lim.rlim_cur)), rlim_max: lim.rlim_max };
    // SAFETY: as above.
    if lim.rlim_max >= need && unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &fallback) } == 0 {
        return Ok(());
    }
    Err(PreflightError::Memlock { have: lim.rlim_cur, need, executors })
}

/// Sets up (and closes) a tiny ring: the cheapest proof that io_uring_setup is allowed here.
fn probe_uring() -> std::io::Result<()> {
    // struct io_uring_params is 120 bytes; zeroed means "no flags".
    let mut params = [0u64; 15];
    // SAFETY: io_uring_setup reads and writes the 120-byte params struct we own for the call.
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 4u32, params.as_mut_ptr()) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by the kernel and is closed once.
    unsafe { libc::close(fd as i32) };
    Ok(())
}
