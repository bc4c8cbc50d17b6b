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
    Memlock {
        have: u64,
        need: u64,
        executors: usize,
    },
}

/// Memory each glommio executor locks for its rings and registered buffers.
pub const MEMLOCK_PER_EXECUTOR_BYTES: u64 = 512 * 1024;

/// Checks that io_uring works and that enough memory can be locked for `executors` executors.
/// Raises RLIMIT_MEMLOCK when allowed. Each executor needs [`MEMLOCK_PER_EXECUTOR_BYTES`];
/// registering its `io_memory_bytes` of DMA buffers needs that much more, and without it glommio
/// falls back to unregistered buffers, so a shortfall there is a warning (Ok(Some(text))), not
/// an error.
pub fn preflight(executors: usize, io_memory_bytes: u64) -> Result<Option<String>, PreflightError> {
    probe_uring().map_err(PreflightError::NoUring)?;
    let want = (MEMLOCK_PER_EXECUTOR_BYTES + io_memory_bytes) * executors as u64;
    if raise_memlock(want).is_ok() {
        return Ok(None);
    }
    let need = MEMLOCK_PER_EXECUTOR_BYTES * executors as u64;
    match raise_memlock(need) {
        Ok(have) => Ok(Some(format!(
            "RLIMIT_MEMLOCK is {have} bytes, below the {want} that registering io.io_memory_bytes \
             of DMA buffers per shard needs: buffers stay unregistered (slower I/O); run \
             `ulimit -l unlimited` first to register them"
        ))),
        Err(have) => Err(PreflightError::Memlock {
            have,
            need,
            executors,
        }),
    }
}

/// RLIMIT_MEMLOCK as this process has it now: (soft, hard), `None` meaning unlimited. A node
/// started by the same user raises its soft limit up to the hard one ([`preflight`]).
pub fn memlock_limits() -> std::io::Result<(Option<u64>, Option<u64>)> {
    let lim = limit(libc::RLIMIT_MEMLOCK)?;
    let finite = |v: libc::rlim_t| (v != libc::RLIM_INFINITY).then_some(v);
    Ok((finite(lim.rlim_cur), finite(lim.rlim_max)))
}

/// Makes RLIMIT_MEMLOCK at least `need`; Ok(limit now) or Err(limit that stays).
fn raise_memlock(need: u64) -> Result<u64, u64> {
    raise(libc::RLIMIT_MEMLOCK, need)
}

/// Makes RLIMIT_NOFILE (open descriptors: every client connection is one) at least `need`,
/// raising the soft limit up to the hard one; Ok(limit now) or Err(limit that stays).
pub fn raise_open_files(need: u64) -> Result<u64, u64> {
    raise(libc::RLIMIT_NOFILE, need)
}

/// Makes `resource`'s soft limit at least `need`: unlimited if allowed, else the hard limit.
fn raise(resource: libc::__rlimit_resource_t, need: u64) -> Result<u64, u64> {
    let Ok(lim) = limit(resource) else {
        return Ok(need);
    };
    if lim.rlim_cur == libc::RLIM_INFINITY || lim.rlim_cur >= need {
        return Ok(lim.rlim_cur);
    }
    let raised = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads one rlimit struct from a pointer to a live local.
    if unsafe { libc::setrlimit(resource, &raised) } == 0 {
        return Ok(need);
    }
    let to_max = libc::rlimit {
        rlim_cur: lim.rlim_max,
        rlim_max: lim.rlim_max,
    };
    // SAFETY: as above.
    if lim.rlim_max >= need && unsafe { libc::setrlimit(resource, &to_max) } == 0 {
        return Ok(lim.rlim_max);
    }
    Err(lim.rlim_cur)
}

/// `resource`'s limits now.
fn limit(resource: libc::__rlimit_resource_t) -> std::io::Result<libc::rlimit> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit struct through a pointer to a live local.
    if unsafe { libc::getrlimit(resource, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(lim)
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
