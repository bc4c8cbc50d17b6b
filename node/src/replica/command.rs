//! The bytes of a Raft entry (an op and the time its proposer fixed) and of a forwarded request
//! and its reply. Fixed-size little-endian integers; every decode checks lengths and refuses
//! trailing bytes, because these bytes come from the log and from other nodes.

use std::sync::Arc;

use crate::engine::{Item, MemberChange, Op, OpResult, StatsGroup, StoreMode};

/// Why bytes could not be decoded (a damaged entry or a peer speaking another version).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed {what}: {why}")]
pub struct DecodeError {
    pub what: &'static str,
    pub why: &'static str,
}

/// Entry versions. 1: one op, CAS 0 meaning no compare and Gets without `recache`/`bump`
/// (written before batching; still read from old logs). 2: a batch of ops, Get with `recache`
/// and `bump`, the CAS of Store and Delete optional (a compare with 0 never matches). Forwards
/// and replies always use the current op format.
const VERSION_ONE: u8 = 1;
const VERSION_BATCH: u8 = 2;
const VERSION: u8 = VERSION_BATCH;

/// The most ops one entry carries (each gets its own CAS unique: see `replica::cas_of`).
pub const ENTRY_OPS_MAX: usize = 256;

#[derive(Default)]
struct W(Vec<u8>);

impl W {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn i64(&mut self, v: i64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bool(&mut self, v: bool) {
        self.u8(v as u8);
    }
    fn bytes(&mut self, b: &[u8]) {
        self.u32(b.len() as u32);
        self.0.extend_from_slice(b);
    }
    fn opt_i64(&mut self, v: Option<i64>) {
        match v {
            Some(v) => {
                self.u8(1);
                self.i64(v);
            }
            None => self.u8(0),
        }
    }
    fn opt_u64(&mut self, v: Option<u64>) {
        match v {
            Some(v) => {
                self.u8(1);
                self.u64(v);
            }
            None => self.u8(0),
        }
    }
}

struct R<'a> {
    b: &'a [u8],
    what: &'static str,
    /// The format version being read (forwards and replies are always the current one).
    version: u8,
}

impl<'a> R<'a> {
    fn err(&self, why: &'static str) -> DecodeError {
        DecodeError {
            what: self.what,
            why,
        }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.b.len() < n {
            return Err(self.err("truncated"));
        }
        let (a, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn i64(&mut self) -> Result<i64, DecodeError> {
        Ok(i64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn bool(&mut self) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(self.err("bad bool")),
        }
    }
    fn bytes(&mut self) -> Result<Vec<u8>, DecodeError> {
        let n = self.u32()? as usize;
        Ok(self.take(n)?.to_vec())
    }
    fn opt_i64(&mut self) -> Result<Option<i64>, DecodeError> {
        Ok(if self.bool()? {
            Some(self.i64()?)
        } else {
            None
        })
    }
    fn opt_u64(&mut self) -> Result<Option<u64>, DecodeError> {
        Ok(if self.bool()? {
            Some(self.u64()?)
        } else {
            None
        })
    }
    /// A CAS to compare with: optional from version 2, 0 for none in version 1.
    fn cas(&mut self) -> Result<Option<u64>, DecodeError> {
        if self.version >= 2 {
            self.opt_u64()
        } else {
            Ok(Some(self.u64()?).filter(|&c| c != 0))
        }
    }
    fn end(&self) -> Result<(), DecodeError> {
        if self.b.is_empty() {
            Ok(())
        } else {
            Err(self.err("trailing bytes"))
        }
    }
}

fn put_op(w: &mut W, op: &Op) {
    match op {
        Op::Get {
            key,
            touch,
            vivify,
            recache,
            want_value,
            bump,
        } => {
            w.u8(1);
            w.bytes(key);
            w.opt_i64(*touch);
            w.opt_i64(*vivify);
            w.bool(*want_value);
            w.opt_i64(*recache);
            w.bool(*bump);
        }
        Op::Store {
            mode,
            key,
            flags,
            exptime,
            cas,
            data,
            invalidate,
        } => {
            w.u8(2);
            w.u8(match mode {
                StoreMode::Set => 1,
                StoreMode::Add => 2,
                StoreMode::Replace => 3,
                StoreMode::Append => 4,
                StoreMode::Prepend => 5,
            });
            w.bytes(key);
            w.u32(*flags);
            w.i64(*exptime);
            w.opt_u64(*cas);
            w.bytes(data);
            w.bool(*invalidate);
        }
        Op::Delete {
            key,
            cas,
            invalidate,
        } => {
            w.u8(3);
            w.bytes(key);
            w.opt_u64(*cas);
            match invalidate {
                None => w.u8(0),
                Some(ttl) => {
                    w.u8(1);
                    w.opt_i64(*ttl);
                }
            }
        }
        Op::Arith {
            key,
            incr,
            delta,
            cas,
            vivify,
            touch,
        } => {
            w.u8(4);
            w.bytes(key);
            w.bool(*incr);
            w.u64(*delta);
            w.u64(*cas);
            match vivify {
                None => w.u8(0),
                Some((initial, ttl)) => {
                    w.u8(1);
                    w.u64(*initial);
                    w.i64(*ttl);
                }
            }
            w.opt_i64(*touch);
        }
        Op::Touch { key, exptime } => {
            w.u8(5);
            w.bytes(key);
            w.i64(*exptime);
        }
        Op::FlushAll { delay } => {
            w.u8(6);
            w.i64(*delay);
        }
        // Stats never travel: their group is not kept.
        Op::Stats(_) => w.u8(7),
        Op::Member(c) => {
            w.u8(8);
            match c {
                MemberChange::AddLearner { node, addr } => {
                    w.u8(1);
                    w.u64(*node);
                    w.bytes(addr.to_string().as_bytes());
                }
                MemberChange::Promote { node } => {
                    w.u8(2);
                    w.u64(*node);
                }
                MemberChange::Remove { node } => {
                    w.u8(3);
                    w.u64(*node);
                }
            }
        }
        Op::Members => w.u8(9),
        Op::SliceGet {
            build_id,
            partition,
            group,
            key,
        } => {
            w.u8(10);
            w.u64(*build_id);
            w.u64(*partition as u64);
            w.u64(*group);
            w.bytes(key);
        }
    }
}

fn get_op(r: &mut R<'_>) -> Result<Op, DecodeError> {
    Ok(match r.u8()? {
        1 => {
            let key = r.bytes()?;
            let touch = r.opt_i64()?;
            let vivify = r.opt_i64()?;
            let want_value = r.bool()?;
            let (recache, bump) = if r.version >= 2 {
                (r.opt_i64()?, r.bool()?)
            } else {
                (None, true)
            };
            Op::Get {
                key,
                touch,
                vivify,
                recache,
                want_value,
                bump,
            }
        }
        2 => Op::Store {
            mode: match r.u8()? {
                1 => StoreMode::Set,
                2 => StoreMode::Add,
                3 => StoreMode::Replace,
                4 => StoreMode::Append,
                5 => StoreMode::Prepend,
                _ => return Err(r.err("bad store mode")),
            },
            key: r.bytes()?,
            flags: r.u32()?,
            exptime: r.i64()?,
            cas: r.cas()?,
            data: r.bytes()?,
            invalidate: r.bool()?,
        },
        3 => Op::Delete {
            key: r.bytes()?,
            cas: r.cas()?,
            invalidate: if r.bool()? { Some(r.opt_i64()?) } else { None },
        },
        4 => Op::Arith {
            key: r.bytes()?,
            incr: r.bool()?,
            delta: r.u64()?,
            cas: r.u64()?,
            vivify: if r.bool()? {
                Some((r.u64()?, r.i64()?))
            } else {
                None
            },
            touch: r.opt_i64()?,
        },
        5 => Op::Touch {
            key: r.bytes()?,
            exptime: r.i64()?,
        },
        6 => Op::FlushAll { delay: r.i64()? },
        7 => Op::Stats(StatsGroup::General),
        8 => Op::Member(match r.u8()? {
            1 => MemberChange::AddLearner {
                node: r.u64()?,
                addr: std::str::from_utf8(&r.bytes()?)
                    .ok()
                    .and_then(|a| a.parse().ok())
                    .ok_or_else(|| r.err("bad peer address"))?,
            },
            2 => MemberChange::Promote { node: r.u64()? },
            3 => MemberChange::Remove { node: r.u64()? },
            _ => return Err(r.err("unknown membership change")),
        }),
        9 => Op::Members,
        10 => Op::SliceGet {
            build_id: r.u64()?,
            partition: u32::try_from(r.u64()?).map_err(|_| r.err("table partition"))?,
            group: r.u64()?,
            key: r.bytes()?,
        },
        _ => return Err(r.err("unknown op")),
    })
}

/// A Raft entry's data: version 2, the proposer's unix time, the number of ops (u16, 1 to
/// `ENTRY_OPS_MAX`), the ops in the order they are applied.
/// `bytes_hint`: about how many bytes the ops take (the buffer is allocated once).
pub fn encode_entry<'a>(
    now: u32,
    ops: impl ExactSizeIterator<Item = &'a Op>,
    bytes_hint: usize,
) -> Vec<u8> {
    let n = ops.len();
    assert!((1..=ENTRY_OPS_MAX).contains(&n), "{n} ops in one entry");
    let mut w = W(Vec::with_capacity(7 + bytes_hint));
    w.u8(VERSION_BATCH);
    w.u32(now);
    w.0.extend_from_slice(&(n as u16).to_le_bytes());
    for op in ops {
        put_op(&mut w, op);
    }
    w.0
}

/// The proposer's time and the ops of an entry (version 1 or 2).
pub fn decode_entry(b: &[u8]) -> Result<(u32, Vec<Op>), DecodeError> {
    let mut r = R {
        b,
        what: "entry",
        version: VERSION,
    };
    let version = r.u8()?;
    r.version = version;
    let now = r.u32()?;
    let ops = match version {
        VERSION_ONE => vec![get_op(&mut r)?],
        VERSION_BATCH => {
            let n = u16::from_le_bytes(r.take(2)?.try_into().expect("2 bytes")) as usize;
            if n == 0 || n > ENTRY_OPS_MAX {
                return Err(r.err("op count out of range"));
            }
            let mut ops = Vec::with_capacity(n);
            for _ in 0..n {
                ops.push(get_op(&mut r)?);
            }
            ops
        }
        _ => return Err(r.err("unknown version")),
    };
    r.end()?;
    Ok((now, ops))
}

/// A request forwarded to the leader of `partition`: (id, hops, now, partition, op). The
/// partition travels because keyless ops (flush_all, membership changes) go to one group each.
pub fn encode_forward(id: u64, hops: u8, now: u32, partition: u64, op: &Op) -> Vec<u8> {
    let mut w = W::default();
    w.u64(id);
    w.u8(hops);
    w.u32(now);
    w.u64(partition);
    put_op(&mut w, op);
    w.0
}

pub fn decode_forward(b: &[u8]) -> Result<(u64, u8, u32, u64, Op), DecodeError> {
    let mut r = R {
        b,
        what: "forward",
        version: VERSION,
    };
    let id = r.u64()?;
    let hops = r.u8()?;
    let now = r.u32()?;
    let partition = r.u64()?;
    let op = get_op(&mut r)?;
    r.end()?;
    Ok((id, hops, now, partition, op))
}

fn put_item(w: &mut W, i: &Item) {
    w.u32(i.flags);
    w.u32(i.exptime);
    w.u64(i.cas);
    w.bytes(&i.value);
    w.u32(i.value_len);
    w.u8(i.stale as u8 | (i.win as u8) << 1 | (i.already_won as u8) << 2 | (i.fetched as u8) << 3);
    w.u32(i.idle_s);
}

fn get_item(r: &mut R<'_>) -> Result<Item, DecodeError> {
    let flags = r.u32()?;
    let exptime = r.u32()?;
    let cas = r.u64()?;
    let value: Arc<[u8]> = r.bytes()?.into();
    let value_len = r.u32()?;
    let bits = r.u8()?;
    let idle_s = r.u32()?;
    Ok(Item {
        flags,
        exptime,
        cas,
        value,
        value_len,
        stale: bits & 1 != 0,
        win: bits & 2 != 0,
        already_won: bits & 4 != 0,
        fetched: bits & 8 != 0,
        idle_s,
    })
}

/// The leader's reply to a forwarded request: (id, result). Stats are never forwarded.
pub fn encode_reply(id: u64, r: &OpResult) -> Vec<u8> {
    let mut w = W::default();
    w.u64(id);
    match r {
        OpResult::Hit(i) => {
            w.u8(1);
            put_item(&mut w, i);
        }
        OpResult::Miss => w.u8(2),
        OpResult::Stored { cas } => {
            w.u8(3);
            w.u64(*cas);
        }
        OpResult::NotStored => w.u8(4),
        OpResult::Exists => w.u8(5),
        OpResult::NotFound => w.u8(6),
        OpResult::Deleted => w.u8(7),
        OpResult::Touched => w.u8(8),
        OpResult::Number { value, item } => {
            w.u8(9);
            w.u64(*value);
            put_item(&mut w, item);
        }
        OpResult::NonNumeric => w.u8(10),
        OpResult::Ok => w.u8(11),
        OpResult::TooLarge => w.u8(12),
        OpResult::ServerError(m) => {
            w.u8(13);
            w.bytes(m.as_bytes());
        }
        OpResult::ClientError(m) => {
            w.u8(14);
            w.bytes(m.as_bytes());
        }
        OpResult::Stats(_)
        | OpResult::Latency(_)
        | OpResult::Conns(_)
        | OpResult::Members(_)
        | OpResult::Partitions(_) => {
            w.u8(13);
            w.bytes(b"stats and members are not forwarded");
        }
    }
    w.0
}

pub fn decode_reply(b: &[u8]) -> Result<(u64, OpResult), DecodeError> {
    let mut r = R {
        b,
        what: "reply",
        version: VERSION,
    };
    let id = r.u64()?;
    let res = match r.u8()? {
        1 => OpResult::Hit(get_item(&mut r)?),
        2 => OpResult::Miss,
        3 => OpResult::Stored { cas: r.u64()? },
        4 => OpResult::NotStored,
        5 => OpResult::Exists,
        6 => OpResult::NotFound,
        7 => OpResult::Deleted,
        8 => OpResult::Touched,
        9 => OpResult::Number {
            value: r.u64()?,
            item: get_item(&mut r)?,
        },
        10 => OpResult::NonNumeric,
        11 => OpResult::Ok,
        12 => OpResult::TooLarge,
        13 => OpResult::ServerError(String::from_utf8_lossy(&r.bytes()?).into_owned()),
        14 => OpResult::ClientError(String::from_utf8_lossy(&r.bytes()?).into_owned()),
        _ => return Err(r.err("unknown result")),
    };
    r.end()?;
    Ok((id, res))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ops() -> Vec<Op> {
        vec![
            Op::SliceGet {
                build_id: u64::MAX - 3,
                partition: 65535,
                group: 7,
                key: b"user:1".to_vec(),
            },
            Op::Get {
                key: b"k".to_vec(),
                touch: Some(-1),
                vivify: None,
                recache: Some(30),
                want_value: true,
                bump: false,
            },
            Op::Store {
                mode: StoreMode::Prepend,
                key: b"key".to_vec(),
                flags: 7,
                exptime: -5,
                cas: Some(99),
                data: vec![0, 1, 255],
                invalidate: true,
            },
            Op::Store {
                mode: StoreMode::Set,
                key: b"key".to_vec(),
                flags: 0,
                exptime: 0,
                cas: Some(0),
                data: vec![],
                invalidate: false,
            },
            Op::Delete {
                key: b"d".to_vec(),
                cas: Some(3),
                invalidate: Some(None),
            },
            Op::Arith {
                key: b"n".to_vec(),
                incr: false,
                delta: u64::MAX,
                cas: 0,
                vivify: Some((5, 10)),
                touch: None,
            },
            Op::Touch {
                key: b"t".to_vec(),
                exptime: 100,
            },
            Op::FlushAll { delay: 0 },
            Op::Member(MemberChange::AddLearner {
                node: 4,
                addr: "127.0.0.1:7401".parse().unwrap(),
            }),
            Op::Member(MemberChange::Promote { node: 4 }),
            Op::Member(MemberChange::Remove { node: 2 }),
        ]
    }

    #[test]
    fn entries_round_trip_and_every_truncation_is_refused() {
        let all = ops();
        let batches: Vec<&[Op]> = (0..all.len())
            .map(|i| &all[i..i + 1])
            .chain([&all[..]])
            .collect();
        for batch in batches {
            let b = encode_entry(1_800_000_000, batch.iter(), 0);
            let (now, back) = decode_entry(&b).unwrap();
            assert_eq!(now, 1_800_000_000);
            assert_eq!(format!("{back:?}"), format!("{batch:?}"));
            for cut in 0..b.len() {
                assert!(decode_entry(&b[..cut]).is_err(), "{batch:?} cut at {cut}");
            }
            let mut long = b.clone();
            long.push(0);
            assert!(decode_entry(&long).is_err());
        }
    }

    /// Entries written by the version before CAS became optional: the bytes of a `cas` with
    /// unique 0 meant "no compare", and a Get bumped; both still read that way.
    #[test]
    fn version_1_entries_decode() {
        let mut w = W::default();
        w.u8(1);
        w.u32(7);
        w.u8(2); // Store
        w.u8(1); // Set
        w.bytes(b"k");
        w.u32(0);
        w.i64(0);
        w.u64(0); // cas
        w.bytes(b"v");
        w.bool(false);
        let (_, ops) = decode_entry(&w.0).unwrap();
        assert!(matches!(ops[..], [Op::Store { cas: None, .. }]), "{ops:?}");
        let mut w = W::default();
        w.u8(1);
        w.u32(7);
        w.u8(1); // Get
        w.bytes(b"k");
        w.opt_i64(Some(5));
        w.opt_i64(None);
        w.bool(true);
        let (_, ops) = decode_entry(&w.0).unwrap();
        assert!(
            matches!(
                ops[..],
                [Op::Get {
                    recache: None,
                    bump: true,
                    ..
                }]
            ),
            "{ops:?}"
        );
        let mut w = W::default();
        w.u8(3);
        assert!(decode_entry(&w.0).is_err(), "a later version is refused");
    }

    #[test]
    fn an_entry_with_no_ops_or_too_many_is_refused() {
        for n in [0u16, ENTRY_OPS_MAX as u16 + 1] {
            let mut b = vec![VERSION_BATCH, 0, 0, 0, 0];
            b.extend_from_slice(&n.to_le_bytes());
            assert!(decode_entry(&b).is_err(), "{n} ops");
        }
    }

    #[test]
    fn forwards_and_replies_round_trip() {
        for op in ops() {
            let b = encode_forward(42, 1, 7, 63, &op);
            let (id, hops, now, p, back) = decode_forward(&b).unwrap();
            assert_eq!((id, hops, now, p), (42, 1, 7, 63));
            assert_eq!(format!("{back:?}"), format!("{op:?}"));
            for cut in 0..b.len() {
                assert!(decode_forward(&b[..cut]).is_err(), "{op:?} cut at {cut}");
            }
        }
        let item = Item {
            flags: 1,
            exptime: 2,
            cas: 3,
            value: Arc::from(&b"v"[..]),
            value_len: 1,
            stale: true,
            win: false,
            already_won: true,
            fetched: true,
            idle_s: 61,
        };
        for r in [
            OpResult::Hit(item.clone()),
            OpResult::Number { value: 9, item },
            OpResult::Stored { cas: 5 },
            OpResult::ServerError("no leader".into()),
            OpResult::Miss,
        ] {
            let (id, back) = decode_reply(&encode_reply(8, &r)).unwrap();
            assert_eq!(id, 8);
            assert_eq!(format!("{back:?}"), format!("{r:?}"));
        }
    }
}
