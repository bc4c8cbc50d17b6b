//! Reply encoders. Pure functions appending memcached 1.6.18's exact bytes to the connection's
//! write buffer, so replies batch into one write and nothing allocates per call beyond the
//! buffer growing. Numbers are formatted without `format!`.

use super::{base64, MetaFlags, MetaRequest, ReturnFlag};

/// What a meta reply needs to know about the item it answers for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ItemView<'a> {
    pub key: &'a [u8],
    pub flags: u32,
    /// Seconds left; -1 when the item never expires.
    pub ttl_remaining: i64,
    pub cas: u64,
    pub value: &'a [u8],
    /// Value size reported by `s`.
    pub size: usize,
    /// The client won the right to recache (`W`).
    pub win: bool,
    /// The item is stale (`X`).
    pub stale: bool,
    /// Another client already holds the recache token (`Z`).
    pub already_won: bool,
    /// The item had been fetched before this request (`h`).
    pub fetched: bool,
    /// Seconds since the item was last accessed (`l`).
    pub last_access_s: u64,
}

/// What `me` shows of an item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DebugView<'a> {
    /// The key token as the request gave it (base64 under `b`).
    pub key: &'a [u8],
    /// memcached's `exp`: now - exptime (negative while the item lives), -1 for no TTL.
    pub exp: i64,
    pub last_access_s: u64,
    pub cas: u64,
    pub fetched: bool,
    /// Bytes the item takes in storage (memcached: its slab item; Keel: its value-log record).
    pub size: u64,
}

/// The outcome of ms, md and ma, each a two-letter code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MetaStatus {
    /// HD: stored / deleted / done.
    Hd,
    /// NS: not stored.
    Ns,
    /// EX: CAS mismatch.
    Ex,
    /// NF: not found.
    Nf,
}

impl MetaStatus {
    fn code(self) -> &'static [u8] {
        match self {
            Self::Hd => b"HD",
            Self::Ns => b"NS",
            Self::Ex => b"EX",
            Self::Nf => b"NF",
        }
    }
}

/// ma's result on success, for `v`, `t` and `c`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArithView {
    pub value: u64,
    pub ttl_remaining: i64,
    pub cas: u64,
}

fn put_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

fn put_i64(out: &mut Vec<u8>, n: i64) {
    if n < 0 {
        out.push(b'-');
    }
    put_u64(out, n.unsigned_abs());
}

/// `VALUE <key> <flags> <bytes>[ <cas>]\r\n<data>\r\n` for get/gets/gat/gats.
pub fn value(out: &mut Vec<u8>, key: &[u8], flags: u32, data: &[u8], cas: Option<u64>) {
    out.reserve(key.len() + data.len() + 48);
    out.extend_from_slice(b"VALUE ");
    out.extend_from_slice(key);
    out.push(b' ');
    put_u64(out, u64::from(flags));
    out.push(b' ');
    put_u64(out, data.len() as u64);
    if let Some(cas) = cas {
        out.push(b' ');
        put_u64(out, cas);
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

pub fn end(out: &mut Vec<u8>) {
    out.extend_from_slice(b"END\r\n");
}

pub fn stored(out: &mut Vec<u8>) {
    out.extend_from_slice(b"STORED\r\n");
}

pub fn not_stored(out: &mut Vec<u8>) {
    out.extend_from_slice(b"NOT_STORED\r\n");
}

pub fn exists(out: &mut Vec<u8>) {
    out.extend_from_slice(b"EXISTS\r\n");
}

pub fn not_found(out: &mut Vec<u8>) {
    out.extend_from_slice(b"NOT_FOUND\r\n");
}

pub fn deleted(out: &mut Vec<u8>) {
    out.extend_from_slice(b"DELETED\r\n");
}

pub fn touched(out: &mut Vec<u8>) {
    out.extend_from_slice(b"TOUCHED\r\n");
}

/// `OK` answers flush_all and verbosity.
pub fn ok(out: &mut Vec<u8>) {
    out.extend_from_slice(b"OK\r\n");
}

/// incr/decr's new value.
pub fn number(out: &mut Vec<u8>, n: u64) {
    put_u64(out, n);
    out.extend_from_slice(b"\r\n");
}

pub fn version(out: &mut Vec<u8>, version: &[u8]) {
    out.extend_from_slice(b"VERSION ");
    out.extend_from_slice(version);
    out.extend_from_slice(b"\r\n");
}

/// One `STAT <name> <value>` line; finish the group with [`end`].
pub fn stat(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(b"STAT ");
    out.extend_from_slice(name);
    out.push(b' ');
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// `STAT <name> <number>` without formatting through a string.
pub fn stat_u64(out: &mut Vec<u8>, name: &[u8], value: u64) {
    out.extend_from_slice(b"STAT ");
    out.extend_from_slice(name);
    out.push(b' ');
    put_u64(out, value);
    out.extend_from_slice(b"\r\n");
}

/// Writes ` O<opaque>` or ` k<key>`; every meta reply can carry these two. A base64 key (`b`)
/// is echoed as memcached does: re-encoded from the decoded key, then ` b`.
fn put_opaque_or_key(out: &mut Vec<u8>, flag: ReturnFlag, flags: &MetaFlags<'_>, key: &[u8]) {
    match flag {
        ReturnFlag::Opaque => {
            out.extend_from_slice(b" O");
            out.extend_from_slice(flags.opaque.unwrap_or_default());
        }
        ReturnFlag::Key if flags.base64 => {
            out.extend_from_slice(b" k");
            put_base64_key(out, key);
            out.extend_from_slice(b" b");
        }
        ReturnFlag::Key => {
            out.extend_from_slice(b" k");
            out.extend_from_slice(key);
        }
        _ => {}
    }
}

/// The canonical base64 of a key token the parser has checked.
fn put_base64_key(out: &mut Vec<u8>, token: &[u8]) {
    let key = base64::decode(token).unwrap_or_default();
    debug_assert!(!key.is_empty(), "the parser checked the base64 key");
    base64::encode(&key, out);
}

/// mg's reply. `item` is `None` for a miss (after any `N` vivify the server passes the new
/// item). memcached echoes return flags in request order, then `Z`, `X`, `W` in that order;
/// `q` hides only the miss (EN), a hit is always answered.
pub fn meta_get(out: &mut Vec<u8>, req: &MetaRequest<'_>, item: Option<&ItemView<'_>>) {
    let flags = &req.flags;
    let Some(item) = item else {
        if flags.quiet {
            return;
        }
        out.extend_from_slice(b"EN");
        for flag in flags.returns.iter() {
            put_opaque_or_key(out, flag, flags, req.key);
        }
        out.extend_from_slice(b"\r\n");
        return;
    };
    out.reserve(item.value.len() + req.key.len() + 96);
    if flags.value {
        out.extend_from_slice(b"VA ");
        put_u64(out, item.value.len() as u64);
    } else {
        out.extend_from_slice(b"HD");
    }
    for flag in flags.returns.iter() {
        match flag {
            ReturnFlag::Cas => {
                out.extend_from_slice(b" c");
                put_u64(out, item.cas);
            }
            ReturnFlag::Flags => {
                out.extend_from_slice(b" f");
                put_u64(out, u64::from(item.flags));
            }
            ReturnFlag::Hit => {
                out.extend_from_slice(if item.fetched { b" h1" } else { b" h0" });
            }
            ReturnFlag::LastAccess => {
                out.extend_from_slice(b" l");
                put_u64(out, item.last_access_s);
            }
            ReturnFlag::Size => {
                out.extend_from_slice(b" s");
                put_u64(out, item.size as u64);
            }
            ReturnFlag::Ttl => {
                out.extend_from_slice(b" t");
                put_i64(out, item.ttl_remaining);
            }
            ReturnFlag::Opaque | ReturnFlag::Key => {
                put_opaque_or_key(out, flag, flags, item.key);
            }
        }
    }
    if item.already_won {
        out.extend_from_slice(b" Z");
    }
    if item.stale {
        out.extend_from_slice(b" X");
    }
    if item.win {
        out.extend_from_slice(b" W");
    }
    out.extend_from_slice(b"\r\n");
    if flags.value {
        out.extend_from_slice(item.value);
        out.extend_from_slice(b"\r\n");
    }
}

/// ms's reply: the status, then `O`, `k` and `c` (the stored item's CAS, 0 when nothing was
/// stored) in request order. `q` hides HD only.
pub fn meta_set(out: &mut Vec<u8>, req: &MetaRequest<'_>, status: MetaStatus, cas: u64) {
    let flags = &req.flags;
    if flags.quiet && status == MetaStatus::Hd {
        return;
    }
    out.extend_from_slice(status.code());
    for flag in flags.returns.iter() {
        match flag {
            ReturnFlag::Cas => {
                out.extend_from_slice(b" c");
                put_u64(out, cas);
            }
            ReturnFlag::Opaque | ReturnFlag::Key => put_opaque_or_key(out, flag, flags, req.key),
            _ => {}
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// md's reply: the status, then `O` and `k` in request order. `q` hides HD only.
pub fn meta_delete(out: &mut Vec<u8>, req: &MetaRequest<'_>, status: MetaStatus) {
    let flags = &req.flags;
    if flags.quiet && status == MetaStatus::Hd {
        return;
    }
    out.extend_from_slice(status.code());
    for flag in flags.returns.iter() {
        put_opaque_or_key(out, flag, flags, req.key);
    }
    out.extend_from_slice(b"\r\n");
}

/// ma's reply. On success (`status` HD, `result` given) it is `HD` or, with `v`, `VA <len>` and
/// the number as the data block; `t` and `c` are written only on success, `O` and `k` always.
/// `q` hides every success, HD or VA.
pub fn meta_arith(
    out: &mut Vec<u8>,
    req: &MetaRequest<'_>,
    status: MetaStatus,
    result: Option<&ArithView>,
) {
    let flags = &req.flags;
    let success = match (status, result) {
        (MetaStatus::Hd, Some(r)) => Some(r),
        (MetaStatus::Hd, None) => {
            debug_assert!(false, "ma success without a result");
            None
        }
        _ => None,
    };
    if flags.quiet && status == MetaStatus::Hd {
        return;
    }
    let mut digits = [0u8; 20];
    let mut number: &[u8] = &[];
    match success {
        Some(r) if flags.value => {
            let mut n = r.value;
            let mut i = digits.len();
            loop {
                i -= 1;
                digits[i] = b'0' + (n % 10) as u8;
                n /= 10;
                if n == 0 {
                    break;
                }
            }
            number = &digits[i..];
            out.extend_from_slice(b"VA ");
            put_u64(out, number.len() as u64);
        }
        _ => out.extend_from_slice(status.code()),
    }
    for flag in flags.returns.iter() {
        match (flag, success) {
            (ReturnFlag::Ttl, Some(r)) => {
                out.extend_from_slice(b" t");
                put_i64(out, r.ttl_remaining);
            }
            (ReturnFlag::Cas, Some(r)) => {
                out.extend_from_slice(b" c");
                put_u64(out, r.cas);
            }
            (ReturnFlag::Opaque | ReturnFlag::Key, _) => {
                put_opaque_or_key(out, flag, flags, req.key)
            }
            _ => {}
        }
    }
    out.extend_from_slice(b"\r\n");
    if success.is_some() && flags.value {
        out.extend_from_slice(number);
        out.extend_from_slice(b"\r\n");
    }
}

/// mn's reply: a marker the client uses to know every earlier quiet reply has been sent.
pub fn meta_noop(out: &mut Vec<u8>) {
    out.extend_from_slice(b"MN\r\n");
}

/// me's reply: `ME <key> exp=.. la=.. cas=.. fetch=yes|no cls=.. size=..`, or `EN` for a miss.
/// Keel has no slab classes: `cls` is always 0.
pub fn meta_debug(out: &mut Vec<u8>, req: &MetaRequest<'_>, item: Option<&DebugView<'_>>) {
    let Some(d) = item else {
        out.extend_from_slice(b"EN\r\n");
        return;
    };
    out.extend_from_slice(b"ME ");
    if req.flags.base64 {
        put_base64_key(out, d.key);
    } else {
        out.extend_from_slice(d.key);
    }
    out.extend_from_slice(b" exp=");
    put_i64(out, d.exp);
    out.extend_from_slice(b" la=");
    put_u64(out, d.last_access_s);
    out.extend_from_slice(b" cas=");
    put_u64(out, d.cas);
    out.extend_from_slice(if d.fetched {
        b" fetch=yes"
    } else {
        b" fetch=no"
    });
    out.extend_from_slice(b" cls=0 size=");
    put_u64(out, d.size);
    out.extend_from_slice(b"\r\n");
}
