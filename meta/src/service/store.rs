//! A meta replica's data file: its superblock, two checkpoint slots holding the state machine
//! as of an applied index, and the Raft log (keel-raftlog) of the meta group.
//!
//! Layout (all through keel-nvme's io_uring device, O_DIRECT, fdatasync):
//!
//! | offset | bytes | what |
//! |---|---|---|
//! | 0 | 4 KiB (1 MiB reserved) | superblock: `u8[8]` `KEELMETA`, u32 version (1), u32 zero, u64 replica id, u64 device bytes, u32 CRC32C of bytes 0..32 |
//! | 1 MiB | 8 MiB | checkpoint slot 0 |
//! | 9 MiB | 8 MiB | checkpoint slot 1 |
//! | 17 MiB | 31 MiB | the raftlog region (1 MiB segments) |
//!
//! Checkpoint slot: `u8[8]` `KEELMCK1`, u64 generation, u64 applied index, u64 its term, u32 image
//! length, u32 CRC32C of bytes 0..36 and the image, then at byte 64 the image (the state
//! machine, `machine::encode_image`); written in whole 4 KiB blocks into the slot the generation
//! selects, then fdatasynced. The valid slot with the highest generation wins.

use std::path::Path;
use std::rc::Rc;
use std::time::Duration;

use keel_nvme::{align_up, Device, Region, UringDevice, BLOCK_BYTES};

pub const DEVICE_BYTES: u64 = 48 << 20;
const SLOT_BYTES: u64 = 8 << 20;
const SLOTS_AT: u64 = 1 << 20;
const RAFTLOG_AT: u64 = SLOTS_AT + 2 * SLOT_BYTES;
const SLOT_HEADER_BYTES: usize = 64;
/// The largest state image a slot holds.
pub const IMAGE_BYTES_MAX: usize = SLOT_BYTES as usize - SLOT_HEADER_BYTES;
const SUPER_MAGIC: &[u8; 8] = b"KEELMETA";
const SLOT_MAGIC: &[u8; 8] = b"KEELMCK1";

pub fn raftlog_config() -> keel_raftlog::Config {
    keel_raftlog::Config {
        segment_bytes: 1 << 20,
        batch_bytes_max: 64 << 10,
        flush_delay: Duration::from_millis(2),
        flushes_in_flight_max: 2,
    }
}

/// The opened data file, cut into its parts.
pub struct Store {
    pub slots: Region<UringDevice>,
    pub raftlog: Region<UringDevice>,
}

/// A checkpoint: the state image as of `applied` (index, term).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    pub generation: u64,
    pub applied: u64,
    pub applied_term: u64,
    pub image: Vec<u8>,
}

/// Opens (creating it at first start) the data file of replica `id`, checking that it belongs
/// to this replica.
pub async fn open(path: &Path, id: u64) -> Result<Store, String> {
    let dev = UringDevice::open(path, DEVICE_BYTES)
        .await
        .map_err(|e| e.to_string())?;
    let block = dev
        .read_at(0, BLOCK_BYTES as usize)
        .await
        .map_err(|e| e.to_string())?;
    if block.iter().all(|&b| b == 0) {
        let mut buf = dev.alloc(BLOCK_BYTES as usize);
        buf[..8].copy_from_slice(SUPER_MAGIC);
        buf[8..12].copy_from_slice(&1u32.to_le_bytes());
        buf[16..24].copy_from_slice(&id.to_le_bytes());
        buf[24..32].copy_from_slice(&DEVICE_BYTES.to_le_bytes());
        let crc = crc32c::crc32c(&buf[..32]);
        buf[32..36].copy_from_slice(&crc.to_le_bytes());
        dev.write_at(buf, 0).await.map_err(|e| e.to_string())?;
        // Durable before anything it describes is written.
        dev.sync().await.map_err(|e| e.to_string())?;
    } else {
        let crc = u32::from_le_bytes(block[32..36].try_into().expect("4 bytes"));
        if &block[..8] != SUPER_MAGIC || crc32c::crc32c(&block[..32]) != crc {
            return Err(format!(
                "{}: not a keel-meta data file (no valid superblock); point --data at a new file",
                path.display()
            ));
        }
        let have = u64::from_le_bytes(block[16..24].try_into().expect("8 bytes"));
        if have != id {
            return Err(format!(
                "{}: this data file belongs to meta replica {have}, not --id {id}",
                path.display()
            ));
        }
    }
    let dev = Rc::new(dev);
    let region = |at, len| Region::new(dev.clone(), at, len).map_err(|e| e.to_string());
    Ok(Store {
        slots: region(SLOTS_AT, 2 * SLOT_BYTES)?,
        raftlog: region(RAFTLOG_AT, DEVICE_BYTES - RAFTLOG_AT)?,
    })
}

fn slot_crc(header: &[u8], image: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&header[..36]), image)
}

/// Writes `c` into the slot its generation selects and syncs: durable when this returns Ok.
pub async fn store(slots: &Region<UringDevice>, c: &Checkpoint) -> Result<(), String> {
    if c.image.len() > IMAGE_BYTES_MAX {
        return Err(format!(
            "the meta state image is {} bytes, more than a checkpoint slot's {IMAGE_BYTES_MAX}",
            c.image.len()
        ));
    }
    let len = align_up((SLOT_HEADER_BYTES + c.image.len()) as u64) as usize;
    let mut buf = slots.alloc(len);
    buf[..8].copy_from_slice(SLOT_MAGIC);
    buf[8..16].copy_from_slice(&c.generation.to_le_bytes());
    buf[16..24].copy_from_slice(&c.applied.to_le_bytes());
    buf[24..32].copy_from_slice(&c.applied_term.to_le_bytes());
    buf[32..36].copy_from_slice(&(c.image.len() as u32).to_le_bytes());
    buf[SLOT_HEADER_BYTES..SLOT_HEADER_BYTES + c.image.len()].copy_from_slice(&c.image);
    let crc = slot_crc(&buf[..36], &c.image);
    buf[36..40].copy_from_slice(&crc.to_le_bytes());
    let at = (c.generation % 2) * SLOT_BYTES;
    slots.write_at(buf, at).await.map_err(|e| e.to_string())?;
    slots.sync().await.map_err(|e| e.to_string())
}

/// The newest valid checkpoint, if any.
pub async fn load(slots: &Region<UringDevice>) -> Result<Option<Checkpoint>, String> {
    let mut best: Option<Checkpoint> = None;
    for s in 0..2u64 {
        let at = s * SLOT_BYTES;
        let h = slots
            .read_at(at, BLOCK_BYTES as usize)
            .await
            .map_err(|e| e.to_string())?;
        if &h[..8] != SLOT_MAGIC {
            continue;
        }
        let len = u32::from_le_bytes(h[32..36].try_into().expect("4 bytes")) as usize;
        if len > IMAGE_BYTES_MAX {
            continue;
        }
        let all = slots
            .read_at(at, SLOT_HEADER_BYTES + len)
            .await
            .map_err(|e| e.to_string())?;
        let image = &all[SLOT_HEADER_BYTES..SLOT_HEADER_BYTES + len];
        let crc = u32::from_le_bytes(all[36..40].try_into().expect("4 bytes"));
        if slot_crc(&all[..36], image) != crc {
            continue; // torn by a crash mid-write: the other slot holds the previous one
        }
        let u = |r: std::ops::Range<usize>| u64::from_le_bytes(all[r].try_into().expect("8"));
        let c = Checkpoint {
            generation: u(8..16),
            applied: u(16..24),
            applied_term: u(24..32),
            image: image.to_vec(),
        };
        if best.as_ref().is_none_or(|b| c.generation > b.generation) {
            best = Some(c);
        }
    }
    Ok(best)
}
