//! The build's per-partition writers: records into `.seg` files as they come (under a lock per
//! partition), entries into spill files, then each partition's entries sorted into its `.idx`.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use keel_nvme::BLOCK_BYTES;

use super::input::{Format, Loc};
use super::{idx_name, seg_name, BuildOptions, PartitionFiles, TableSegHeader, TOMBSTONE};
use crate::engine::format::{self, Header, Kind, SEG_HEADER_BYTES};
use crate::engine::index::{self, Atime, IndexEntry};
use crate::engine::index_checkpoint::{encode_entry_bits, encode_part_header, PartHeader};

/// A worker hands a partition's staged records to its writer once they pass this many bytes.
const STAGE_FLUSH_BYTES: usize = 1 << 20;
/// Staged record: u16 key_len, u8 deleted, u32 value_len, u32 input, u64 at, key, value.
const STAGED_HEAD: usize = 19;
/// Spill entry: u64 offset, u64 seq, u32 value_len, u8 deleted, u32 input, u64 at, u16 key_len,
/// key.
const SPILL_HEAD: usize = 35;

/// One worker's records not yet handed to their partitions' writers.
pub struct Staged {
    parts: Vec<Vec<u8>>,
}

impl Staged {
    pub fn new(partitions: u32) -> Staged {
        Staged {
            parts: vec![Vec::new(); partitions as usize],
        }
    }

    /// Stages one record for partition `p`; `true` when that partition's stage should be
    /// flushed.
    pub fn push(&mut self, p: usize, key: &[u8], value: Option<&[u8]>, loc: Loc) -> bool {
        let b = &mut self.parts[p];
        let v = value.unwrap_or(&[]);
        b.extend_from_slice(&(key.len() as u16).to_le_bytes());
        b.push(value.is_none() as u8);
        b.extend_from_slice(&(v.len() as u32).to_le_bytes());
        b.extend_from_slice(&loc.input.to_le_bytes());
        b.extend_from_slice(&loc.at.to_le_bytes());
        b.extend_from_slice(key);
        b.extend_from_slice(v);
        b.len() >= STAGE_FLUSH_BYTES
    }
}

struct PartWriter {
    seg_path: PathBuf,
    seg: BufWriter<File>,
    seg_crc: u32,
    /// Bytes written to the `.seg` file.
    pos: u64,
    next_seq: u64,
    spill_path: PathBuf,
    spill: BufWriter<File>,
    records: u64,
    tombstones: u64,
    value_bytes: u64,
    scratch: Vec<u8>,
}

/// Every partition's writer.
pub struct Partitions {
    dir: PathBuf,
    format: Format,
    segment_bytes: u64,
    partitions: u32,
    build_id: u64,
    now: u32,
    writers: Vec<Mutex<PartWriter>>,
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> String + '_ {
    move |e| format!("{}: {e}", path.display())
}

impl Partitions {
    pub fn create(
        dir: &Path,
        opts: &BuildOptions,
        build_id: u64,
        now: u32,
    ) -> Result<Partitions, String> {
        let mut writers = Vec::with_capacity(opts.partitions as usize);
        for p in 0..opts.partitions {
            let seg_path = dir.join(seg_name(p));
            let spill_path = dir.join(format!("part-{p:05}.spill"));
            let seg = File::create(&seg_path).map_err(io_err(&seg_path))?;
            let spill = File::create(&spill_path).map_err(io_err(&spill_path))?;
            writers.push(Mutex::new(PartWriter {
                seg_path,
                seg: BufWriter::with_capacity(1 << 20, seg),
                seg_crc: 0,
                pos: 0,
                next_seq: 1,
                spill_path,
                spill: BufWriter::with_capacity(256 << 10, spill),
                records: 0,
                tombstones: 0,
                value_bytes: 0,
                scratch: Vec::new(),
            }));
        }
        Ok(Partitions {
            dir: dir.to_path_buf(),
            format: opts.format,
            segment_bytes: opts.segment_bytes,
            partitions: opts.partitions,
            build_id,
            now,
            writers,
        })
    }

    /// Writes partition `p`'s staged records.
    pub fn flush(&self, p: usize, staged: &mut Staged) -> Result<(), String> {
        let buf = &mut staged.parts[p];
        if buf.is_empty() {
            return Ok(());
        }
        let mut w = self.writers[p].lock().expect("partition writer lock");
        let w = &mut *w;
        let mut at = 0;
        while at < buf.len() {
            let h = &buf[at..at + STAGED_HEAD];
            let key_len = u16::from_le_bytes([h[0], h[1]]) as usize;
            let deleted = h[2] != 0;
            let value_len = u32::from_le_bytes(h[3..7].try_into().expect("4")) as usize;
            let loc_bytes = &h[7..19];
            let key = &buf[at + STAGED_HEAD..at + STAGED_HEAD + key_len];
            let value = &buf[at + STAGED_HEAD + key_len..at + STAGED_HEAD + key_len + value_len];
            at += STAGED_HEAD + key_len + value_len;
            let seq = w.next_seq;
            w.next_seq += 1;
            let header = Header {
                seq,
                cas: seq,
                value_len: value_len as u32,
                flags: 0,
                exptime: 0,
                time: self.now,
                key_len: key_len as u16,
                kind: if deleted { Kind::Delete } else { Kind::Put },
                bits: 0,
            };
            let mut rec = std::mem::take(&mut w.scratch);
            rec.clear();
            format::encode(&mut rec, &header, key, value);
            let offset = self.append(p as u32, w, &rec)?;
            w.scratch = rec;
            w.records += 1;
            w.tombstones += deleted as u64;
            w.value_bytes += value_len as u64;
            let mut e = [0u8; SPILL_HEAD];
            e[0..8].copy_from_slice(&offset.to_le_bytes());
            e[8..16].copy_from_slice(&seq.to_le_bytes());
            e[16..20].copy_from_slice(&(value_len as u32).to_le_bytes());
            e[20] = deleted as u8;
            e[21..33].copy_from_slice(loc_bytes);
            e[33..35].copy_from_slice(&(key_len as u16).to_le_bytes());
            let spill = io_err(&w.spill_path);
            w.spill.write_all(&e).map_err(&spill)?;
            w.spill.write_all(key).map_err(&spill)?;
        }
        buf.clear();
        Ok(())
    }

    pub fn flush_all(&self, staged: &mut Staged) -> Result<(), String> {
        (0..staged.parts.len()).try_for_each(|p| self.flush(p, staged))
    }

    /// Appends one record to partition `p`'s value log, opening a segment where needed; the
    /// record's offset in the file.
    fn append(&self, p: u32, w: &mut PartWriter, rec: &[u8]) -> Result<u64, String> {
        let seg = self.segment_bytes;
        let in_seg = w.pos % seg;
        if in_seg != 0 && in_seg + rec.len() as u64 > seg {
            // The record does not fit the rest of this segment: the rest stays zero (the
            // engine's end of a segment's data) and the record opens the next.
            let pad = seg - in_seg;
            write_counted(w, &vec![0u8; pad as usize])?;
        }
        if w.pos % seg == 0 {
            let mut head = vec![0u8; SEG_HEADER_BYTES as usize];
            let h = TableSegHeader {
                seg_no: (w.pos / seg) as u32,
                partition: p,
                partitions: self.partitions,
                build_id: self.build_id,
            };
            head[..TableSegHeader::BYTES].copy_from_slice(&h.encode());
            write_counted(w, &head)?;
        }
        let offset = w.pos;
        write_counted(w, rec)?;
        Ok(offset)
    }

    /// Ends the build's first phase and writes every partition's `.idx` (`threads` at a time):
    /// each partition's files, tombstone count and value bytes. `Err` for a key given twice,
    /// naming both places.
    pub fn finish(
        self,
        threads: usize,
        inputs: &[PathBuf],
    ) -> Result<Vec<(PartitionFiles, u64, u64)>, String> {
        let mut writers = Vec::new();
        for (p, w) in self.writers.iter().enumerate() {
            let p = p as u32;
            let mut w = w.lock().expect("partition writer lock");
            let w = &mut *w;
            let pad = w.pos.next_multiple_of(BLOCK_BYTES) - w.pos;
            write_counted(w, &vec![0u8; pad as usize])?;
            let path = w.seg_path.clone();
            w.seg.flush().map_err(io_err(&path))?;
            w.seg.get_ref().sync_all().map_err(io_err(&path))?;
            let spill = w.spill_path.clone();
            w.spill.flush().map_err(io_err(&spill))?;
            writers.push((
                PartitionFiles {
                    partition: p,
                    records: w.records,
                    seg: seg_name(p),
                    seg_bytes: w.pos,
                    seg_crc32c: w.seg_crc,
                    idx: idx_name(p),
                    idx_bytes: 0,
                    idx_crc32c: 0,
                },
                w.tombstones,
                w.value_bytes,
                spill,
                w.next_seq - 1,
            ));
        }
        let next = AtomicUsize::new(0);
        let failed = AtomicBool::new(false);
        // Each partition's `.idx` length and crc32c, once written.
        type Written = Option<Result<(u64, u32), String>>;
        let results: Vec<Mutex<Written>> = writers.iter().map(|_| Mutex::new(None)).collect();
        std::thread::scope(|s| {
            for _ in 0..threads.min(writers.len()) {
                s.spawn(|| {
                    while !failed.load(Ordering::Relaxed) {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some((files, _, _, spill, last_seq)) = writers.get(i) else {
                            break;
                        };
                        let r = self.write_index(files, spill, *last_seq, inputs);
                        failed.fetch_or(r.is_err(), Ordering::Relaxed);
                        *results[i].lock().expect("result lock") = Some(r);
                    }
                });
            }
        });
        let mut out = Vec::new();
        for ((mut files, tombstones, value_bytes, _, _), r) in writers.into_iter().zip(results) {
            match r.into_inner().expect("result lock") {
                Some(Ok((bytes, crc))) => {
                    files.idx_bytes = bytes;
                    files.idx_crc32c = crc;
                    out.push((files, tombstones, value_bytes));
                }
                Some(Err(e)) => return Err(e),
                None => {} // another partition failed first
            }
        }
        if out.len() != self.partitions as usize {
            return Err("a partition's index was not written".into());
        }
        Ok(out)
    }

    /// Sorts one partition's spilled entries and writes them as its `.idx`; the file's length
    /// and crc32c.
    fn write_index(
        &self,
        files: &PartitionFiles,
        spill_path: &Path,
        last_seq: u64,
        inputs: &[PathBuf],
    ) -> Result<(u64, u32), String> {
        let spill = fs::read(spill_path).map_err(io_err(spill_path))?;
        let mut at = 0usize;
        let mut order: Vec<(u64, usize)> = Vec::with_capacity(files.records as usize);
        while at < spill.len() {
            let key_len = u16::from_le_bytes([spill[at + 33], spill[at + 34]]) as usize;
            let key = &spill[at + SPILL_HEAD..at + SPILL_HEAD + key_len];
            order.push((index::hash(key), at));
            at += SPILL_HEAD + key_len;
        }
        let key_of = |at: usize| {
            let key_len = u16::from_le_bytes([spill[at + 33], spill[at + 34]]) as usize;
            &spill[at + SPILL_HEAD..at + SPILL_HEAD + key_len]
        };
        let loc_of = |at: usize| Loc {
            input: u32::from_le_bytes(spill[at + 21..at + 25].try_into().expect("4")),
            at: u64::from_le_bytes(spill[at + 25..at + 33].try_into().expect("8")),
            format: self.format,
        };
        order.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| key_of(a.1).cmp(key_of(b.1))));
        for w in order.windows(2) {
            if w[0].0 == w[1].0 && key_of(w[0].1) == key_of(w[1].1) {
                let mut locs = [loc_of(w[0].1), loc_of(w[1].1)];
                locs.sort_by_key(|l| (l.input, l.at));
                return Err(format!(
                    "key {:?} is in the input twice: {} and {} (a version holds one value per \
                     key)",
                    String::from_utf8_lossy(key_of(w[0].1)),
                    locs[0].describe(inputs),
                    locs[1].describe(inputs)
                ));
            }
        }
        let path = self.dir.join(&files.idx);
        let mut out = IdxWriter {
            file: BufWriter::with_capacity(1 << 20, File::create(&path).map_err(io_err(&path))?),
            path: &path,
            len: 0,
            crc: 0,
        };
        // A part (header block and data) plus the header block a node puts before it fits one
        // segment (engine/tables.rs).
        let budget = (self.segment_bytes - 2 * SEG_HEADER_BYTES) as usize;
        let mut data = Vec::with_capacity(budget.min(64 << 20));
        let (mut part, mut entries) = (0u32, 0u32);
        let atime = Atime::at(self.now);
        for &(_, at) in &order {
            let s = &spill[at..at + SPILL_HEAD];
            let key = key_of(at);
            let deleted = s[20] != 0;
            let e = IndexEntry {
                offset: u64::from_le_bytes(s[0..8].try_into().expect("8")),
                cas: u64::from_le_bytes(s[8..16].try_into().expect("8")),
                value_len: u32::from_le_bytes(s[16..20].try_into().expect("4")),
                flags: 0,
                exptime: 0,
                bits: 0,
                atime,
            };
            if data.len() + crate::engine::index_checkpoint::entry_bytes(key) > budget {
                out.part(self.part_header(part, 0, 0, entries, &data), &data)?;
                part += 1;
                entries = 0;
                data.clear();
            }
            encode_entry_bits(&mut data, key, &e, if deleted { TOMBSTONE } else { 0 });
            entries += 1;
        }
        out.part(
            self.part_header(part, part + 1, last_seq, entries, &data),
            &data,
        )?;
        out.file.flush().map_err(io_err(&path))?;
        out.file.get_ref().sync_all().map_err(io_err(&path))?;
        drop(spill);
        fs::remove_file(spill_path).map_err(io_err(spill_path))?;
        Ok((out.len, out.crc))
    }

    fn part_header(
        &self,
        part: u32,
        parts: u32,
        end_seq: u64,
        entries: u32,
        data: &[u8],
    ) -> PartHeader {
        PartHeader {
            seg_no: part,
            generation: self.build_id,
            base_seq: 0,
            end_seq,
            part,
            parts,
            entries,
            data_bytes: data.len() as u32,
            data_crc: crc32c::crc32c(data),
        }
    }
}

fn write_counted(w: &mut PartWriter, b: &[u8]) -> Result<(), String> {
    w.seg.write_all(b).map_err(io_err(&w.seg_path))?;
    w.seg_crc = crc32c::crc32c_append(w.seg_crc, b);
    w.pos += b.len() as u64;
    Ok(())
}

struct IdxWriter<'a> {
    file: BufWriter<File>,
    path: &'a Path,
    len: u64,
    crc: u32,
}

impl IdxWriter<'_> {
    fn write(&mut self, b: &[u8]) -> Result<(), String> {
        self.file.write_all(b).map_err(io_err(self.path))?;
        self.crc = crc32c::crc32c_append(self.crc, b);
        self.len += b.len() as u64;
        Ok(())
    }

    /// One part: its header block, its data, zeros to the next block.
    fn part(&mut self, h: PartHeader, data: &[u8]) -> Result<(), String> {
        let mut head = vec![0u8; SEG_HEADER_BYTES as usize];
        let enc = encode_part_header(&h);
        head[..enc.len()].copy_from_slice(&enc);
        self.write(&head)?;
        self.write(data)?;
        let pad = (data.len() as u64).next_multiple_of(BLOCK_BYTES) - data.len() as u64;
        self.write(&vec![0u8; pad as usize])
    }
}
