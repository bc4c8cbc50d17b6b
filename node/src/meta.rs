//! The meta commands (mg, ms, md, ma, mn, me) on top of the engine ops: which op a request becomes,
//! and how its result is written. Parsing and byte formats live in `protocol`.

use crate::engine::{format, Item, Op, OpResult, StoreMode};
use crate::protocol::reply::{self, ArithView, DebugView, ItemView, MetaStatus};
use crate::protocol::{MetaCmd, MetaMode, MetaRequest};
use crate::shard::{Counters, Shard};

/// The op for `m`, `None` for `mn` (no key, nothing to do).
pub fn to_op(m: &MetaRequest<'_>) -> Result<Option<Op>, OpResult> {
    let f = &m.flags;
    let key = m.key_bytes();
    Ok(Some(match m.cmd {
        MetaCmd::Noop => return Ok(None),
        MetaCmd::Get => Op::Get {
            key,
            touch: f.ttl,
            vivify: f.vivify_ttl,
            recache: f.recache_ttl,
            want_value: f.value,
            bump: !f.no_lru_bump,
        },
        // memcached's `me` looks without counting as a fetch.
        MetaCmd::Debug => Op::Get {
            key,
            touch: None,
            vivify: None,
            recache: None,
            want_value: false,
            bump: false,
        },
        MetaCmd::Set => {
            let mode = match f.mode {
                None | Some(MetaMode::Set) => StoreMode::Set,
                Some(MetaMode::Add) => StoreMode::Add,
                Some(MetaMode::Append) => StoreMode::Append,
                Some(MetaMode::Prepend) => StoreMode::Prepend,
                Some(MetaMode::Replace) => StoreMode::Replace,
                Some(MetaMode::Incr | MetaMode::Decr) => {
                    return Err(OpResult::ServerError("invalid mode for ms".into()));
                }
            };
            Op::Store {
                mode,
                key,
                flags: f.client_flags.unwrap_or(0),
                exptime: f.ttl.unwrap_or(0),
                cas: f.compare_cas,
                data: m.data.to_vec(),
                invalidate: f.invalidate,
            }
        }
        MetaCmd::Delete => Op::Delete {
            key,
            cas: f.compare_cas,
            invalidate: f.invalidate.then_some(f.ttl),
        },
        MetaCmd::Arith => Op::Arith {
            key,
            incr: f.mode != Some(MetaMode::Decr),
            delta: f.delta.unwrap_or(1),
            cas: f.compare_cas.unwrap_or(0),
            vivify: f.vivify_ttl.map(|ttl| (f.initial.unwrap_or(0), ttl)),
            touch: f.ttl,
        },
    }))
}

fn ttl_remaining(exptime: u32, now: u32) -> i64 {
    if exptime == 0 {
        -1
    } else {
        exptime.saturating_sub(now) as i64
    }
}

fn view<'a>(key: &'a [u8], item: &'a Item, now: u32) -> ItemView<'a> {
    ItemView {
        key,
        flags: item.flags,
        ttl_remaining: ttl_remaining(item.exptime, now),
        cas: item.cas,
        value: &item.value,
        size: item.value_len as usize,
        win: item.win,
        stale: item.stale,
        already_won: item.already_won,
        fetched: item.fetched,
        last_access_s: u64::from(item.idle_s),
    }
}

/// Writes what every command writes for an engine failure.
fn failure(out: &mut Vec<u8>, r: &OpResult) -> bool {
    match r {
        OpResult::ServerError(m) => {
            out.extend_from_slice(b"SERVER_ERROR ");
            out.extend_from_slice(m.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        OpResult::TooLarge => out.extend_from_slice(b"SERVER_ERROR object too large for cache\r\n"),
        OpResult::ClientError(m) => {
            out.extend_from_slice(b"CLIENT_ERROR ");
            out.extend_from_slice(m.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        OpResult::NonNumeric => out
            .extend_from_slice(b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n"),
        _ => return false,
    }
    true
}

pub fn render(
    shard: &Shard,
    m: &MetaRequest<'_>,
    results: Vec<OpResult>,
    now: u32,
    out: &mut Vec<u8>,
) {
    let c = &shard.counters;
    Counters::add(&c.cmd_meta, 1);
    if m.cmd == MetaCmd::Noop {
        reply::meta_noop(out);
        return;
    }
    let Some(r) = results.into_iter().next() else {
        return;
    };
    if failure(out, &r) {
        return;
    }
    match m.cmd {
        MetaCmd::Noop => {}
        MetaCmd::Debug => match &r {
            OpResult::Hit(item) => {
                // memcached's `exp` is now - exptime (so minus the seconds left), -1 for none.
                let exp = match item.exptime {
                    0 => -1,
                    e => i64::from(now) - i64::from(e),
                };
                let d = DebugView {
                    key: m.key,
                    exp,
                    last_access_s: u64::from(item.idle_s),
                    cas: item.cas,
                    fetched: item.fetched,
                    size: format::record_bytes(m.key_bytes().len(), item.value_len as usize) as u64,
                };
                reply::meta_debug(out, m, Some(&d));
            }
            _ => reply::meta_debug(out, m, None),
        },
        MetaCmd::Get => {
            Counters::add(&c.cmd_get, 1);
            match &r {
                OpResult::Hit(item) => {
                    Counters::add(&c.get_hits, 1);
                    reply::meta_get(out, m, Some(&view(m.key, item, now)));
                }
                _ => {
                    Counters::add(&c.get_misses, 1);
                    reply::meta_get(out, m, None);
                }
            }
        }
        MetaCmd::Set => {
            Counters::add(&c.cmd_set, 1);
            let (status, cas) = match r {
                OpResult::Stored { cas } => (MetaStatus::Hd, cas),
                OpResult::Exists => (MetaStatus::Ex, 0),
                OpResult::NotFound => (MetaStatus::Nf, 0),
                _ => (MetaStatus::Ns, 0),
            };
            reply::meta_set(out, m, status, cas);
        }
        MetaCmd::Delete => {
            let status = match r {
                OpResult::Deleted => MetaStatus::Hd,
                OpResult::Exists => MetaStatus::Ex,
                _ => MetaStatus::Nf,
            };
            let counter = if status == MetaStatus::Hd {
                &c.delete_hits
            } else {
                &c.delete_misses
            };
            Counters::add(counter, 1);
            reply::meta_delete(out, m, status);
        }
        MetaCmd::Arith => match r {
            OpResult::Number { value, item } => {
                let v = ArithView {
                    value,
                    ttl_remaining: ttl_remaining(item.exptime, now),
                    cas: item.cas,
                };
                reply::meta_arith(out, m, MetaStatus::Hd, Some(&v));
            }
            OpResult::Exists => reply::meta_arith(out, m, MetaStatus::Ex, None),
            OpResult::NotStored => reply::meta_arith(out, m, MetaStatus::Ns, None),
            _ => reply::meta_arith(out, m, MetaStatus::Nf, None),
        },
    }
}
