//! Feature-table slices on a shard's device: one partition of one `keel-bulk build` (issue 11),
//! adopted whole into free value-log segments, then read by key until it is dropped.
//!
//! Adoption copies the build's files segment by segment: each `.seg` segment into a device
//! segment of its own (block 0 becomes a [`SliceSegHeader`]; the records keep their place in the
//! segment), and each `.idx` part into one more (block 0 the header, the part from block 1). The
//! files' crc32c are checked against the manifest while they are copied; nothing is served and
//! every segment taken is freed again if one does not match. After a sync the slice's index is
//! built from its parts, the record offsets moved from the file into the region. Segments of a
//! slice are in state [`SegState::Table`]: GC, appends and index checkpoints never touch them.
//!
//! Recovery finds a slice by its headers. A slice with every data and index segment present
//! (each header names the counts) is loaded again from its index segments, without reading its
//! values; an incomplete one (a crash during adoption) has its headers zeroed and its segments
//! freed. Dropping a slice zeroes its headers, syncs, and frees its segments.
//!
//! Header (block 0 of each segment of a slice; little-endian, the rest of the block zero):
//! ```text
//!  0  u64 magic       SLICE_MAGIC
//!  8  u32 seg_no      the segment's own number in the region
//! 12  u32 version     1
//! 16  u64 build_id    the build's (its manifest's)
//! 24  u32 partition   the table partition
//! 28  u8  kind        1 data (a `.seg` segment), 2 index (a `.idx` part)
//! 29  u8[3] zero
//! 32  u32 ordinal     data: the segment's place in the `.seg` file; index: the part number
//! 36  u32 data_segs   of the slice
//! 40  u32 index_segs  of the slice
//! 44  u32 crc32c      over bytes [0, 44)
//! ```

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use keel_nvme::{align_up, Device, IoError, Region, BLOCK_BYTES};

use super::format::{self, u32_at, u64_at, Kind, SEG_HEADER_BYTES};
use super::index::{Index, IndexEntry};
use super::index_checkpoint::{decode_entry, decode_part_header};
use super::Engine;
use crate::bulk::{Manifest, TOMBSTONE};

pub const SLICE_MAGIC: u64 = u64::from_le_bytes(*b"KEELTBD1");
pub const SLICE_VERSION: u32 = 1;
const HEADER_BYTES: usize = 48;
const KIND_DATA: u8 = 1;
const KIND_INDEX: u8 = 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SliceSegHeader {
    pub seg_no: u32,
    pub build_id: u64,
    pub partition: u32,
    pub index: bool,
    pub ordinal: u32,
    pub data_segs: u32,
    pub index_segs: u32,
}

impl SliceSegHeader {
    pub fn encode(&self) -> [u8; HEADER_BYTES] {
        let mut b = [0u8; HEADER_BYTES];
        b[0..8].copy_from_slice(&SLICE_MAGIC.to_le_bytes());
        b[8..12].copy_from_slice(&self.seg_no.to_le_bytes());
        b[12..16].copy_from_slice(&SLICE_VERSION.to_le_bytes());
        b[16..24].copy_from_slice(&self.build_id.to_le_bytes());
        b[24..28].copy_from_slice(&self.partition.to_le_bytes());
        b[28] = if self.index { KIND_INDEX } else { KIND_DATA };
        b[32..36].copy_from_slice(&self.ordinal.to_le_bytes());
        b[36..40].copy_from_slice(&self.data_segs.to_le_bytes());
        b[40..44].copy_from_slice(&self.index_segs.to_le_bytes());
        let crc = crc32c::crc32c(&b[0..44]);
        b[44..48].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// `None` for anything but an undamaged header.
    pub fn decode(b: &[u8]) -> Option<SliceSegHeader> {
        if b.len() < HEADER_BYTES
            || u64_at(b, 0) != SLICE_MAGIC
            || u32_at(b, 12) != SLICE_VERSION
            || crc32c::crc32c(&b[0..44]) != u32_at(b, 44)
            || !matches!(b[28], KIND_DATA | KIND_INDEX)
            || b[29..32] != [0; 3]
        {
            return None;
        }
        Some(SliceSegHeader {
            seg_no: u32_at(b, 8),
            build_id: u64_at(b, 16),
            partition: u32_at(b, 24),
            index: b[28] == KIND_INDEX,
            ordinal: u32_at(b, 32),
            data_segs: u32_at(b, 36),
            index_segs: u32_at(b, 40),
        })
    }
}

/// One adopted partition of one build.
pub struct Slice {
    /// Device segment of each `.seg` segment, in file order.
    pub data_segs: Vec<usize>,
    /// Device segment of each `.idx` part.
    pub index_segs: Vec<usize>,
    /// key -> entry (region offsets); a tombstone's entry has [`TOMBSTONE`] in its bits.
    pub index: Index,
    pub tombstones: u64,
}

/// What a read of a slice finds.
#[derive(Debug, PartialEq, Eq)]
pub enum SliceRead {
    /// No such build and partition on this shard.
    NoSlice,
    /// The slice has no entry for the key.
    Absent,
    /// The slice deletes the key (an incremental version's tombstone).
    Deleted,
    Value {
        flags: u32,
        cas: u64,
        value: Vec<u8>,
    },
    /// The record the entry points at fails its checks (counted in `keel_corrupt_records`).
    Damaged,
}

/// (build_id, partition) -> the slice.
pub type Slices = BTreeMap<(u64, u32), Slice>;

/// A complete slice recovery found: (build_id, partition), its data and index segments.
pub type FoundSlice = ((u64, u32), Vec<usize>, Vec<usize>);

/// The slices' segments recovery found, by (build_id, partition).
#[derive(Default)]
pub struct FoundSlices {
    pub headers: BTreeMap<(u64, u32), Vec<SliceSegHeader>>,
}

impl FoundSlices {
    pub fn add(&mut self, h: SliceSegHeader) {
        self.headers
            .entry((h.build_id, h.partition))
            .or_default()
            .push(h);
    }

    /// Splits the slices found into the complete ones (their data and index segments in order)
    /// and the segments of incomplete ones.
    pub fn sort(self) -> (Vec<FoundSlice>, Vec<usize>) {
        let mut complete = Vec::new();
        let mut stray = Vec::new();
        for (id, hs) in self.headers {
            let (nd, ni) = (hs[0].data_segs as usize, hs[0].index_segs as usize);
            let mut data = vec![usize::MAX; nd];
            let mut index = vec![usize::MAX; ni];
            let mut ok = hs.len() == nd + ni;
            for h in &hs {
                let slot = match h.index {
                    false => data.get_mut(h.ordinal as usize),
                    true => index.get_mut(h.ordinal as usize),
                };
                match slot {
                    Some(s)
                        if *s == usize::MAX
                            && h.data_segs as usize == nd
                            && h.index_segs as usize == ni =>
                    {
                        *s = h.seg_no as usize
                    }
                    _ => ok = false,
                }
            }
            if ok && ni > 0 {
                complete.push((id, data, index));
            } else {
                stray.extend(hs.iter().map(|h| h.seg_no as usize));
            }
        }
        (complete, stray)
    }
}

/// Loads a slice's index from its index segments. `Err` names the damage.
pub async fn load_slice<D: Device>(
    dev: &Region<D>,
    seg_bytes: u64,
    data_segs: &[usize],
    index_segs: &[usize],
) -> Result<(Index, u64), String> {
    let mut index = Index::default();
    let mut tombstones = 0;
    for (part, &seg) in index_segs.iter().enumerate() {
        let base = seg as u64 * seg_bytes + SEG_HEADER_BYTES;
        let head = dev
            .read_at(base, SEG_HEADER_BYTES as usize)
            .await
            .map_err(|e| format!("index part {part}: {e}"))?;
        let h = decode_part_header(&head)
            .ok_or_else(|| format!("index part {part} (segment {seg}): no valid part header"))?;
        let data_bytes = h.data_bytes as u64;
        if 2 * SEG_HEADER_BYTES + data_bytes > seg_bytes {
            return Err(format!(
                "index part {part}: {data_bytes} bytes overrun its segment"
            ));
        }
        let buf = dev
            .read_at(base + SEG_HEADER_BYTES, align_up(data_bytes) as usize)
            .await
            .map_err(|e| format!("index part {part}: {e}"))?;
        let data = &buf[..data_bytes as usize];
        if crc32c::crc32c(data) != h.data_crc {
            return Err(format!(
                "index part {part} (segment {seg}): checksum mismatch"
            ));
        }
        tombstones += add_entries(&mut index, data, h.entries, seg_bytes, data_segs)
            .map_err(|e| format!("index part {part} (segment {seg}): {e}"))?;
    }
    Ok((index, tombstones))
}

/// Adds a part's entries to `index`, each offset moved from the `.seg` file to the region: the
/// file's segment k is the device segment `data_segs[k]`, each record at its place in it.
fn add_entries(
    index: &mut Index,
    data: &[u8],
    entries: u32,
    seg_bytes: u64,
    data_segs: &[usize],
) -> Result<u64, String> {
    let file_bytes = data_segs.len() as u64 * seg_bytes;
    let mut at = 0;
    let mut tombstones = 0;
    for n in 0..entries as u64 {
        let (key, mut e, next) = decode_entry(data, at, n, file_bytes)?;
        at = next;
        let k = (e.offset / seg_bytes) as usize;
        e.offset = data_segs[k] as u64 * seg_bytes + e.offset % seg_bytes;
        tombstones += (e.bits & TOMBSTONE != 0) as u64;
        if index.insert(key.into(), e).is_some() {
            return Err(format!("entry {n} repeats a key"));
        }
    }
    if at != data.len() {
        return Err("bytes after the last entry".into());
    }
    Ok(tombstones)
}

impl<D: Device + 'static> Engine<D> {
    /// Adopts partition `partition` of the build in `dir` (described by `m`) into this shard's
    /// device. Idempotent: a slice already here is kept. `Err` (nothing adopted, every segment
    /// taken given back) for a geometry that does not fit, a file that does not match the
    /// manifest, too few free segments, or a device error.
    pub async fn adopt_slice(
        &self,
        dir: &Path,
        m: &Manifest,
        partition: u32,
    ) -> Result<(), String> {
        let id = (m.build_id, partition);
        if self.slices.borrow().contains_key(&id) {
            return Ok(());
        }
        let seg_bytes = self.log.seg_bytes;
        if m.segment_bytes != seg_bytes {
            return Err(format!(
                "table {}: built with --segment-bytes {}, this node's engine.segment_bytes is \
                 {seg_bytes}",
                m.table, m.segment_bytes
            ));
        }
        let f = m
            .files
            .get(partition as usize)
            .ok_or_else(|| format!("table {}: no partition {partition} in the build", m.table))?;
        let idx = std::fs::read(dir.join(&f.idx))
            .map_err(|e| format!("{}: {e}", dir.join(&f.idx).display()))?;
        if idx.len() as u64 != f.idx_bytes || crc32c::crc32c(&idx) != f.idx_crc32c {
            return Err(format!(
                "{}: checksum mismatch against the manifest",
                dir.join(&f.idx).display()
            ));
        }
        let parts = split_parts(&idx, seg_bytes)
            .map_err(|e| format!("{}: {e}", dir.join(&f.idx).display()))?;
        let nd = f.seg_bytes.div_ceil(seg_bytes) as usize;
        let taken = self
            .log
            .take_segments_for_table(nd + parts.len())
            .ok_or_else(|| {
                format!(
                    "table {} partition {partition}: {} free segments needed, {} free",
                    m.table,
                    nd + parts.len(),
                    self.log.free_segments()
                )
            })?;
        let (data_segs, index_segs) = taken.split_at(nd);
        let copied = self
            .copy_slice(dir, m, partition, data_segs, index_segs, &parts)
            .await;
        let loaded = match copied {
            Ok(()) => load_slice(&self.log.dev, seg_bytes, data_segs, index_segs).await,
            Err(e) => Err(e),
        };
        match loaded {
            Ok((index, tombstones)) => {
                self.slices.borrow_mut().insert(
                    id,
                    Slice {
                        data_segs: data_segs.to_vec(),
                        index_segs: index_segs.to_vec(),
                        index,
                        tombstones,
                    },
                );
                Ok(())
            }
            Err(e) => {
                for &s in &taken {
                    self.log.free_segment(s).await.map_err(|e| e.to_string())?;
                }
                Err(format!("table {} partition {partition}: {e}", m.table))
            }
        }
    }

    async fn copy_slice(
        &self,
        dir: &Path,
        m: &Manifest,
        partition: u32,
        data_segs: &[usize],
        index_segs: &[usize],
        parts: &[&[u8]],
    ) -> Result<(), String> {
        let seg_bytes = self.log.seg_bytes;
        let dev = &self.log.dev;
        let f = &m.files[partition as usize];
        let path = dir.join(&f.seg);
        let io = |e: std::io::Error| format!("{}: {e}", path.display());
        let dev_err = |e: IoError| e.to_string();
        let header = |seg: usize, index: bool, ordinal: usize| SliceSegHeader {
            seg_no: seg as u32,
            build_id: m.build_id,
            partition,
            index,
            ordinal: ordinal as u32,
            data_segs: data_segs.len() as u32,
            index_segs: index_segs.len() as u32,
        };
        let mut file = std::fs::File::open(&path).map_err(io)?;
        let mut crc = 0u32;
        let mut left = f.seg_bytes;
        for (k, &seg) in data_segs.iter().enumerate() {
            let n = left.min(seg_bytes);
            left -= n;
            let mut buf = dev.alloc(align_up(n) as usize);
            file.read_exact(&mut buf[..n as usize]).map_err(io)?;
            crc = crc32c::crc32c_append(crc, &buf[..n as usize]);
            let want = crate::bulk::TableSegHeader {
                seg_no: k as u32,
                partition,
                partitions: m.partitions,
                build_id: m.build_id,
            };
            if crate::bulk::TableSegHeader::decode(&buf) != Some(want) {
                return Err(format!("{}: segment {k}: not this build's", path.display()));
            }
            buf[..SEG_HEADER_BYTES as usize].fill(0);
            buf[..HEADER_BYTES].copy_from_slice(&header(seg, false, k).encode());
            dev.write_at(buf, seg as u64 * seg_bytes)
                .await
                .map_err(dev_err)?;
        }
        if left != 0 || crc != f.seg_crc32c {
            return Err(format!(
                "{}: checksum mismatch against the manifest",
                path.display()
            ));
        }
        for (i, (&seg, part)) in index_segs.iter().zip(parts).enumerate() {
            let mut buf = dev.alloc((SEG_HEADER_BYTES + align_up(part.len() as u64)) as usize);
            buf[..HEADER_BYTES].copy_from_slice(&header(seg, true, i).encode());
            buf[SEG_HEADER_BYTES as usize..SEG_HEADER_BYTES as usize + part.len()]
                .copy_from_slice(part);
            dev.write_at(buf, seg as u64 * seg_bytes)
                .await
                .map_err(dev_err)?;
        }
        dev.sync().await.map_err(dev_err)
    }

    /// Reads `key` from the slice of `build_id`'s partition `partition`.
    pub async fn slice_get(
        &self,
        build_id: u64,
        partition: u32,
        key: &[u8],
    ) -> Result<SliceRead, IoError> {
        let e: IndexEntry = {
            let slices = self.slices.borrow();
            let Some(s) = slices.get(&(build_id, partition)) else {
                return Ok(SliceRead::NoSlice);
            };
            match s.index.get(key) {
                None => return Ok(SliceRead::Absent),
                Some(e) if e.bits & TOMBSTONE != 0 => return Ok(SliceRead::Deleted),
                Some(e) => *e,
            }
        };
        let len = format::HEADER_BYTES + key.len() + e.value_len as usize;
        let buf = self.log.dev.read_at(e.offset, len).await?;
        match format::decode(&buf, e.value_len as usize) {
            Ok(r) if r.key == key && r.header.cas == e.cas && r.header.kind == Kind::Put => {
                Ok(SliceRead::Value {
                    flags: r.header.flags,
                    cas: e.cas,
                    value: r.value.to_vec(),
                })
            }
            _ => {
                self.stats
                    .corrupt_records
                    .set(self.stats.corrupt_records.get() + 1);
                Ok(SliceRead::Damaged)
            }
        }
    }

    /// Drops a slice: its headers zeroed and synced, its segments free. `false` if none.
    pub async fn drop_slice(&self, build_id: u64, partition: u32) -> Result<bool, IoError> {
        let Some(s) = self.slices.borrow_mut().remove(&(build_id, partition)) else {
            return Ok(false);
        };
        for seg in s.data_segs.into_iter().chain(s.index_segs) {
            self.log.free_segment(seg).await?;
        }
        Ok(true)
    }

    /// The slices held: (build_id, partition, keys, tombstones).
    pub fn slices(&self) -> Vec<(u64, u32, u64, u64)> {
        self.slices
            .borrow()
            .iter()
            .map(|(&(b, p), s)| (b, p, s.index.len() as u64, s.tombstones))
            .collect()
    }
}

/// The parts of an `.idx` file, each to fit one device segment after its header block.
fn split_parts(idx: &[u8], seg_bytes: u64) -> Result<Vec<&[u8]>, String> {
    let mut parts = Vec::new();
    let mut at = 0usize;
    loop {
        let h = idx
            .get(at..)
            .and_then(decode_part_header)
            .ok_or_else(|| format!("part {}: no valid part header", parts.len()))?;
        let end = at
            + SEG_HEADER_BYTES as usize
            + (h.data_bytes as u64).next_multiple_of(BLOCK_BYTES) as usize;
        if end > idx.len() || (end - at) as u64 + SEG_HEADER_BYTES > seg_bytes {
            return Err(format!("part {}: longer than a segment holds", parts.len()));
        }
        parts.push(&idx[at..end]);
        at = end;
        if h.parts > 0 {
            return if at == idx.len() {
                Ok(parts)
            } else {
                Err("bytes after the last part".into())
            };
        }
    }
}
