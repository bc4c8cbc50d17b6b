//! `keel-node tune --device PATH --out PROFILE`: measures the device (through keel-nvme's
//! io_uring backend, the I/O path the node itself uses), the CPUs and the memlock limit, and
//! writes a profile whose values follow from the figures, the figures in its comments (the
//! role of Scylla's iotune and Redpanda's `rpk redpanda tune`).
//!
//! [`probe`] does the I/O, generic over [`keel_nvme::Device`]; [`derive`] turns figures into
//! values and text, with no I/O. This file checks the arguments, gathers the host's figures,
//! runs the probes on one executor and writes the result.

pub mod derive;
pub mod probe;

use std::io::{Seek, Write};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use glommio::{LocalExecutorBuilder, Placement};
use keel_nvme::{Device, UringDevice, BLOCK_BYTES};

use crate::config::{parse_cores, Profile};
use crate::engine::format;
use derive::{HostFigures, TuneRun};

/// The size of a device file tune creates when `--size-bytes` is not given (dev.toml's), or
/// the smallest the host's shards need if that is more.
pub const SIZE_BYTES_DEFAULT: u64 = 2 << 30;
/// `--seconds` bounds.
pub const SECONDS_MIN: f64 = 0.05;
pub const SECONDS_MAX: f64 = 60.0;
/// The probe executor's ring: the deepest probe (QD 128) and room to spare.
const PROBE_RING_DEPTH: usize = 256;
/// DMA memory of the probe executor: 128 reads of 4 KiB or 4 writes of 1 MiB at once.
const PROBE_IO_MEMORY_BYTES: u64 = 4 << 20;

pub struct TuneOptions {
    pub device: PathBuf,
    pub out: PathBuf,
    pub size_bytes: Option<u64>,
    pub seconds: f64,
}

/// Runs the probes and writes the profile. Every error names what it is about and what to do.
pub fn run(o: TuneOptions) -> Result<(), String> {
    if !(SECONDS_MIN..=SECONDS_MAX).contains(&o.seconds) {
        return Err(format!(
            "--seconds {}: must be between {SECONDS_MIN} and {SECONDS_MAX}",
            o.seconds
        ));
    }
    let host = host_figures()?;
    let shards = host.cpus_online.len();
    let min = derive::size_bytes_min(shards);
    let (size, new_file) = device_size(&o.device, o.size_bytes, min)?;
    // Opened before any probe runs, so an --out that cannot be written is refused at once.
    let mut out = OutFile::open(&o.out)?;
    let _lock = keel_nvme::lock_device(&o.device)?;
    if let Some(warning) =
        keel_nvme::preflight(1, PROBE_IO_MEMORY_BYTES).map_err(|e| format!("cannot probe: {e}"))?
    {
        eprintln!("keel-node tune: warning: {warning}");
    }
    if new_file {
        eprintln!(
            "keel-node tune: {} does not exist (or is empty): creating it with {size} bytes \
             (--size-bytes to choose)",
            o.device.display()
        );
    }
    let budget = Duration::from_secs_f64(o.seconds);
    let path = o.device.clone();
    eprintln!(
        "keel-node tune: probing {} ({size} bytes), {} s per probe, 7 probes",
        o.device.display(),
        o.seconds
    );
    let figures = LocalExecutorBuilder::new(Placement::Unbound)
        .name("keel-tune")
        .ring_depth(PROBE_RING_DEPTH)
        .io_memory(PROBE_IO_MEMORY_BYTES as usize)
        .spawn(move || async move {
            let dev = UringDevice::open(&path, size)
                .await
                .map_err(|e| e.to_string())?;
            refuse_unless_blank(&dev, &path).await?;
            probe::run_all(Rc::new(dev), budget, &|line| {
                eprintln!("keel-node tune: {line}")
            })
            .await
            .map_err(|e| format!("probe failed: {e}"))
        })
        .map_err(|e| format!("cannot start an io_uring executor: {e}"))?
        .join()
        .map_err(|e| format!("probe executor failed: {e}"))??;
    if figures.written_bytes < 1 << 20 {
        return Err(format!(
            "device {}: wrote only {} bytes in {} s, too little to read back: raise --seconds",
            o.device.display(),
            figures.written_bytes,
            o.seconds
        ));
    }
    let device = std::fs::canonicalize(&o.device)
        .map_err(|e| format!("device {}: {e}", o.device.display()))?;
    let run = TuneRun {
        device,
        size_bytes: size,
        seconds: o.seconds,
    };
    let text = derive::profile_text(&run, &figures, &host);
    // The same checks a node's start makes; a failure here is a bug in `derive`.
    let p: Profile = toml::from_str(&text)
        .map_err(|e| format!("tune wrote a profile that does not load (a bug): {e}\n{text}"))?;
    p.validate()
        .and_then(|()| p.fits_host())
        .map_err(|e| format!("tune wrote a profile that does not validate (a bug): {e}"))?;
    out.write(&text)?;
    println!("profile {}: written", o.out.display());
    Ok(())
}

/// The bytes to probe: `--size-bytes`, else the device's own size, else (a new file)
/// [`SIZE_BYTES_DEFAULT`] or `min` if larger; never less than `min`. And whether the device is
/// a file to create (or an empty one to grow).
fn device_size(path: &Path, given: Option<u64>, min: u64) -> Result<(u64, bool), String> {
    let meta = std::fs::metadata(path).ok();
    let new_file = meta.as_ref().is_none_or(|m| m.is_file() && m.len() == 0);
    let too_small = |what: String| {
        format!(
            "{what} is too small: a profile for this host's shards needs at least {min} bytes \
             (1 MiB superblock, then per shard 1 MiB of checkpoints, dev.toml's \
             raftlog.region_bytes and 4 value-log segments)"
        )
    };
    if let Some(s) = given {
        if s == 0 || s % BLOCK_BYTES != 0 {
            return Err(format!(
                "--size-bytes {s}: must be a positive multiple of 4096"
            ));
        }
        if s < min {
            return Err(too_small(format!("--size-bytes {s}")));
        }
        return Ok((s, new_file));
    }
    match meta {
        Some(m) if m.file_type().is_block_device() => {
            let mut f = std::fs::File::open(path)
                .map_err(|e| format!("device {}: cannot open it: {e}", path.display()))?;
            let have = f
                .seek(std::io::SeekFrom::End(0))
                .map_err(|e| format!("device {}: cannot read its size: {e}", path.display()))?;
            let have = have / BLOCK_BYTES * BLOCK_BYTES;
            if have < min {
                return Err(too_small(format!(
                    "device {} ({have} bytes)",
                    path.display()
                )));
            }
            Ok((have, false))
        }
        Some(m) if m.is_file() && m.len() > 0 => {
            let have = m.len() / BLOCK_BYTES * BLOCK_BYTES;
            if have < min {
                return Err(too_small(format!(
                    "file {} ({have} bytes; --size-bytes grows it)",
                    path.display()
                )));
            }
            Ok((have, false))
        }
        Some(m) if m.is_dir() => Err(format!(
            "device {}: is a directory; name a file (created if missing) or a block device",
            path.display()
        )),
        Some(m) if !m.is_file() => Err(format!(
            "device {}: is neither a file nor a block device",
            path.display()
        )),
        _ => Ok((SIZE_BYTES_DEFAULT.max(min.div_ceil(1 << 20) << 20), true)),
    }
}

/// tune writes over the device: refuse one whose block 0 holds anything (a Keel node's
/// superblock, a partition table, a filesystem), since its data would be lost.
async fn refuse_unless_blank(dev: &UringDevice, path: &Path) -> Result<(), String> {
    let block = dev
        .read_at(0, BLOCK_BYTES as usize)
        .await
        .map_err(|e| e.to_string())?;
    if block.iter().all(|&b| b == 0) {
        return Ok(());
    }
    let what = match format::decode_superblock(&block) {
        Ok(Some(_)) => "holds a Keel superblock (a node's data)".to_string(),
        _ => "is not blank (a partition table, a filesystem, another program's data?)".into(),
    };
    Err(format!(
        "device {}: block 0 {what}: tune writes over the device and would destroy it; point \
         --device at a new file or a blank device",
        path.display()
    ))
}

/// CPUs, memlock and memory of this host.
fn host_figures() -> Result<HostFigures, String> {
    let online_text = std::fs::read_to_string("/sys/devices/system/cpu/online")
        .map_err(|e| format!("cannot read /sys/devices/system/cpu/online: {e}"))?;
    let online = parse_cores(online_text.trim())
        .map_err(|e| format!("/sys/devices/system/cpu/online {online_text:?}: {e}"))?;
    // Only the CPUs this process may run on (a container's cpuset): a shard pinned elsewhere
    // would not start.
    let allowed: Option<Vec<usize>> =
        core_affinity::get_core_ids().map(|v| v.iter().map(|c| c.id).collect());
    let mut cpus: Vec<usize> = online
        .into_iter()
        .filter(|c| allowed.as_ref().is_none_or(|a| a.contains(c)))
        .collect();
    cpus.truncate(256);
    if cpus.is_empty() {
        return Err("no online CPU is in this process's affinity mask".into());
    }
    let memlock =
        keel_nvme::memlock_limits().map_err(|e| format!("cannot read RLIMIT_MEMLOCK: {e}"))?;
    Ok(HostFigures {
        cpus_online: cpus,
        memlock,
        mem_total_bytes: mem_total_bytes(),
    })
}

/// MemTotal from /proc/meminfo, if it can be read.
pub fn mem_total_bytes() -> Option<u64> {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().strip_suffix("kB"))
                .and_then(|v| v.trim().parse::<u64>().ok())
        })
        .map(|kib| kib << 10)
}

/// The `--out` file, opened at the start; removed again if tune fails and it did not exist.
struct OutFile {
    path: PathBuf,
    file: std::fs::File,
    created: bool,
    written: bool,
}

impl OutFile {
    fn open(path: &Path) -> Result<OutFile, String> {
        let existed = path.exists();
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| format!("--out {}: cannot write it: {e}", path.display()))?;
        Ok(OutFile {
            path: path.to_path_buf(),
            file,
            created: !existed,
            written: false,
        })
    }

    fn write(&mut self, text: &str) -> Result<(), String> {
        let err = |e: std::io::Error| format!("--out {}: {e}", self.path.display());
        self.file.set_len(0).map_err(err)?;
        self.file.write_all(text.as_bytes()).map_err(err)?;
        self.file.sync_all().map_err(err)?;
        self.written = true;
        Ok(())
    }
}

impl Drop for OutFile {
    fn drop(&mut self) {
        if self.created && !self.written {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}
