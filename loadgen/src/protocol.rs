//! The memcached text protocol, client side: request encoding into a caller's buffer and a pure
//! response parser over `&[u8]` that returns a complete reply, "need more bytes", or an error.
//! Replies arrive in request order, so the caller says which reply shape it expects.

use crate::value::KeyFormat;

/// Command types the load generator issues; each has its own latency histogram.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Cmd {
    Get,
    Set,
    Mget,
    Delete,
    Incr,
    Mg,
    Ms,
}

impl Cmd {
    pub const ALL: [Cmd; 7] = [
        Cmd::Get,
        Cmd::Set,
        Cmd::Mget,
        Cmd::Delete,
        Cmd::Incr,
        Cmd::Mg,
        Cmd::Ms,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Cmd::Get => "get",
            Cmd::Set => "set",
            Cmd::Mget => "mget",
            Cmd::Delete => "delete",
            Cmd::Incr => "incr",
            Cmd::Mg => "mg",
            Cmd::Ms => "ms",
        }
    }

    pub fn from_name(s: &str) -> Option<Cmd> {
        Cmd::ALL.into_iter().find(|c| c.name() == s)
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// Longest reply line accepted without a newline before the connection is declared broken.
pub const LINE_LEN_MAX: usize = 4096;
/// Largest value accepted in a reply (memcached's item size limit tops out at 1 GiB; Keel's
/// profiles are far lower). A larger length is treated as a protocol error, not a huge allocation.
pub const VALUE_LEN_MAX: usize = 128 << 20;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    #[error("unexpected reply line {line:?} to {cmd}")]
    Unexpected { cmd: &'static str, line: String },
    #[error("reply line longer than {LINE_LEN_MAX} bytes without a newline")]
    LineTooLong,
    #[error("value block not terminated by \\r\\n")]
    BadTerminator,
    #[error("value length {0} above the {VALUE_LEN_MAX}-byte limit")]
    ValueTooLarge(usize),
}

/// What a complete reply said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// get / mget / mg: number of values returned (0 = miss for get and mg).
    Values(u32),
    Stored,
    NotStored,
    Deleted,
    NotFound,
    Number(u64),
    /// ERROR, CLIENT_ERROR ..., SERVER_ERROR ...: counted as errors, the connection stays usable.
    ErrorReply,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    pub consumed: usize,
    pub outcome: Outcome,
}

fn line(buf: &[u8]) -> Result<Option<(&[u8], usize)>, ProtoError> {
    match buf.iter().position(|&b| b == b'\n') {
        Some(i) => {
            let l = if i > 0 && buf[i - 1] == b'\r' {
                &buf[..i - 1]
            } else {
                &buf[..i]
            };
            Ok(Some((l, i + 1)))
        }
        None if buf.len() > LINE_LEN_MAX => Err(ProtoError::LineTooLong),
        None => Ok(None),
    }
}

fn is_error_line(l: &[u8]) -> bool {
    l == b"ERROR" || l.starts_with(b"CLIENT_ERROR") || l.starts_with(b"SERVER_ERROR")
}

fn unexpected(cmd: Cmd, l: &[u8]) -> ProtoError {
    let l = &l[..l.len().min(120)];
    ProtoError::Unexpected {
        cmd: cmd.name(),
        line: String::from_utf8_lossy(l).into_owned(),
    }
}

fn parse_len(s: &[u8]) -> Option<usize> {
    if s.is_empty() || s.len() > 12 {
        return None;
    }
    let mut v = 0usize;
    for &c in s {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v * 10 + (c - b'0') as usize;
    }
    Some(v)
}

/// A data block of `len` bytes plus "\r\n" at `buf[at..]`: Some(end) when complete.
fn data_block(buf: &[u8], at: usize, len: usize) -> Result<Option<usize>, ProtoError> {
    if len > VALUE_LEN_MAX {
        return Err(ProtoError::ValueTooLarge(len));
    }
    let end = at + len + 2;
    if buf.len() < end {
        return Ok(None);
    }
    if &buf[at + len..end] != b"\r\n" {
        return Err(ProtoError::BadTerminator);
    }
    Ok(Some(end))
}

/// Where one value of a reply lies in the buffer that was parsed: its key and its data block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValueSpan {
    pub key: (usize, usize),
    pub data: (usize, usize),
}

/// Parses one reply to `cmd` at the start of `buf`, calling `on_value(key, data)` for each value
/// only once the whole reply is known to be present (so a partial read never reports a value twice).
/// `Ok(None)` means more bytes are needed.
pub fn parse_reply(
    buf: &[u8],
    cmd: Cmd,
    on_value: &mut dyn FnMut(&[u8], &[u8]),
) -> Result<Option<Reply>, ProtoError> {
    let mut spans = Vec::new();
    let r = parse_reply_spans(buf, cmd, &mut spans)?;
    if r.is_some() {
        for v in &spans {
            on_value(&buf[v.key.0..v.key.1], &buf[v.data.0..v.data.1]);
        }
    }
    Ok(r)
}

/// [`parse_reply`] without a callback, for the hot path: one pass over the reply, the values'
/// places left in `spans` (cleared first; meaningful only when a complete reply is returned), so
/// the caller reuses one vector and nothing is allocated per reply.
pub fn parse_reply_spans(
    buf: &[u8],
    cmd: Cmd,
    spans: &mut Vec<ValueSpan>,
) -> Result<Option<Reply>, ProtoError> {
    spans.clear();
    let Some((first, mut pos)) = line(buf)? else {
        return Ok(None);
    };
    let done = |consumed, outcome| Ok(Some(Reply { consumed, outcome }));
    if is_error_line(first) {
        return done(pos, Outcome::ErrorReply);
    }
    match cmd {
        Cmd::Get | Cmd::Mget => {
            let mut l = first;
            let mut hits = 0u32;
            loop {
                if l == b"END" {
                    return done(pos, Outcome::Values(hits));
                }
                // VALUE <key> <flags> <bytes> [<cas unique>]
                let mut f = l.split(|&b| b == b' ');
                let (Some(b"VALUE"), Some(key), Some(_flags), Some(len)) =
                    (f.next(), f.next(), f.next(), f.next())
                else {
                    return Err(unexpected(cmd, l));
                };
                let len = parse_len(len).ok_or_else(|| unexpected(cmd, l))?;
                let Some(end) = data_block(buf, pos, len)? else {
                    return Ok(None);
                };
                let key_at = key.as_ptr() as usize - buf.as_ptr() as usize;
                spans.push(ValueSpan {
                    key: (key_at, key_at + key.len()),
                    data: (pos, pos + len),
                });
                hits += 1;
                pos = end;
                match line(&buf[pos..])? {
                    None => return Ok(None),
                    Some((next, n)) => {
                        l = next;
                        pos += n;
                    }
                }
            }
        }
        Cmd::Set => match first {
            b"STORED" => done(pos, Outcome::Stored),
            b"NOT_STORED" | b"EXISTS" | b"NOT_FOUND" => done(pos, Outcome::NotStored),
            _ => Err(unexpected(cmd, first)),
        },
        Cmd::Delete => match first {
            b"DELETED" => done(pos, Outcome::Deleted),
            b"NOT_FOUND" => done(pos, Outcome::NotFound),
            _ => Err(unexpected(cmd, first)),
        },
        Cmd::Incr => match first {
            b"NOT_FOUND" => done(pos, Outcome::NotFound),
            _ => match parse_len(first) {
                Some(n) => done(pos, Outcome::Number(n as u64)),
                None => Err(unexpected(cmd, first)),
            },
        },
        Cmd::Mg => {
            if first == b"EN" {
                return done(pos, Outcome::Values(0));
            }
            // VA <size> <flags>*
            let mut f = first.split(|&b| b == b' ');
            let (Some(b"VA"), Some(len)) = (f.next(), f.next()) else {
                return Err(unexpected(cmd, first));
            };
            let len = parse_len(len).ok_or_else(|| unexpected(cmd, first))?;
            let Some(end) = data_block(buf, pos, len)? else {
                return Ok(None);
            };
            spans.push(ValueSpan {
                key: (pos, pos),
                data: (pos, pos + len),
            });
            done(end, Outcome::Values(1))
        }
        Cmd::Ms => {
            let code = first.split(|&b| b == b' ').next().unwrap_or(b"");
            match code {
                b"HD" | b"OK" => done(pos, Outcome::Stored),
                b"NS" | b"EX" | b"NF" => done(pos, Outcome::NotStored),
                _ => Err(unexpected(cmd, first)),
            }
        }
    }
}

/// Appends `v` in decimal without allocating.
pub fn push_u64(out: &mut Vec<u8>, mut v: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

/// Request encoders. They append to the connection's write buffer; no per-request allocation.
pub struct Encoder<'a> {
    pub keys: &'a KeyFormat,
    pub ttl_s: u32,
}

impl Encoder<'_> {
    pub fn get(&self, out: &mut Vec<u8>, key: u64) {
        out.extend_from_slice(b"get ");
        self.keys.write_key(out, key, false);
        out.extend_from_slice(b"\r\n");
    }

    pub fn mget(&self, out: &mut Vec<u8>, keys: impl Iterator<Item = u64>) {
        out.extend_from_slice(b"get");
        for k in keys {
            out.push(b' ');
            self.keys.write_key(out, k, false);
        }
        out.extend_from_slice(b"\r\n");
    }

    pub fn set(&self, out: &mut Vec<u8>, key: u64, version: u64, len: u32) {
        out.extend_from_slice(b"set ");
        self.keys.write_key(out, key, false);
        out.extend_from_slice(b" 0 ");
        push_u64(out, self.ttl_s as u64);
        out.push(b' ');
        push_u64(out, len as u64);
        out.extend_from_slice(b"\r\n");
        crate::value::write_value(out, key, version, len);
        out.extend_from_slice(b"\r\n");
    }

    pub fn set_counter(&self, out: &mut Vec<u8>, key: u64) {
        out.extend_from_slice(b"set ");
        self.keys.write_key(out, key, true);
        out.extend_from_slice(b" 0 ");
        push_u64(out, self.ttl_s as u64);
        out.extend_from_slice(b" 1\r\n0\r\n");
    }

    pub fn delete(&self, out: &mut Vec<u8>, key: u64) {
        out.extend_from_slice(b"delete ");
        self.keys.write_key(out, key, false);
        out.extend_from_slice(b"\r\n");
    }

    pub fn incr(&self, out: &mut Vec<u8>, key: u64) {
        out.extend_from_slice(b"incr ");
        self.keys.write_key(out, key, true);
        out.extend_from_slice(b" 1\r\n");
    }

    pub fn mg(&self, out: &mut Vec<u8>, key: u64) {
        out.extend_from_slice(b"mg ");
        self.keys.write_key(out, key, false);
        out.extend_from_slice(b" v\r\n");
    }

    pub fn ms(&self, out: &mut Vec<u8>, key: u64, version: u64, len: u32) {
        out.extend_from_slice(b"ms ");
        self.keys.write_key(out, key, false);
        out.push(b' ');
        push_u64(out, len as u64);
        out.extend_from_slice(b" T");
        push_u64(out, self.ttl_s as u64);
        out.extend_from_slice(b"\r\n");
        crate::value::write_value(out, key, version, len);
        out.extend_from_slice(b"\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type KeyValues = Vec<(Vec<u8>, Vec<u8>)>;

    fn parse_all(buf: &[u8], cmd: Cmd) -> (Option<Reply>, KeyValues) {
        let mut vals = Vec::new();
        let r = parse_reply(buf, cmd, &mut |k, d| vals.push((k.to_vec(), d.to_vec()))).unwrap();
        (r, vals)
    }

    #[test]
    fn every_reply_shape() {
        let table: &[(Cmd, &[u8], Outcome)] = &[
            (Cmd::Get, b"END\r\n", Outcome::Values(0)),
            (
                Cmd::Get,
                b"VALUE k 0 3\r\nabc\r\nEND\r\n",
                Outcome::Values(1),
            ),
            (
                Cmd::Get,
                b"VALUE k 0 3 99\r\nabc\r\nEND\r\n",
                Outcome::Values(1),
            ),
            (
                Cmd::Mget,
                b"VALUE a 0 1\r\nx\r\nVALUE b 5 0\r\n\r\nEND\r\n",
                Outcome::Values(2),
            ),
            (Cmd::Set, b"STORED\r\n", Outcome::Stored),
            (Cmd::Set, b"NOT_STORED\r\n", Outcome::NotStored),
            (
                Cmd::Set,
                b"SERVER_ERROR out of memory storing object\r\n",
                Outcome::ErrorReply,
            ),
            (
                Cmd::Get,
                b"CLIENT_ERROR bad command line format\r\n",
                Outcome::ErrorReply,
            ),
            (Cmd::Get, b"ERROR\r\n", Outcome::ErrorReply),
            (Cmd::Delete, b"DELETED\r\n", Outcome::Deleted),
            (Cmd::Delete, b"NOT_FOUND\r\n", Outcome::NotFound),
            (Cmd::Incr, b"42\r\n", Outcome::Number(42)),
            (Cmd::Incr, b"NOT_FOUND\r\n", Outcome::NotFound),
            (Cmd::Mg, b"EN\r\n", Outcome::Values(0)),
            (Cmd::Mg, b"VA 2\r\nhi\r\n", Outcome::Values(1)),
            (Cmd::Mg, b"VA 2 f0\r\nhi\r\n", Outcome::Values(1)),
            (Cmd::Ms, b"HD\r\n", Outcome::Stored),
            (Cmd::Ms, b"NS\r\n", Outcome::NotStored),
        ];
        for (cmd, bytes, want) in table {
            let (r, _) = parse_all(bytes, *cmd);
            let r = r.unwrap_or_else(|| panic!("{cmd:?} {bytes:?}: incomplete"));
            assert_eq!(
                r.outcome,
                *want,
                "{cmd:?} {:?}",
                String::from_utf8_lossy(bytes)
            );
            assert_eq!(r.consumed, bytes.len());
        }
    }

    #[test]
    fn partial_reads_across_buffers_never_report_early() {
        let full: &[u8] =
            b"VALUE a 0 5\r\nhello\r\nVALUE b 0 12\r\nworld\r\nEND!!\r\nEND\r\nSTORED\r\n";
        let first_len = full.len() - b"STORED\r\n".len();
        // Every split point: a prefix is either incomplete (and reports no values) or complete.
        for cut in 0..full.len() {
            let (r, vals) = parse_all(&full[..cut], Cmd::Mget);
            if cut < first_len {
                assert_eq!(r, None, "cut {cut}");
                assert!(
                    vals.is_empty(),
                    "cut {cut}: values reported before the reply was whole"
                );
            } else {
                assert_eq!(r.unwrap().consumed, first_len);
            }
        }
        let (r, vals) = parse_all(full, Cmd::Mget);
        let r = r.unwrap();
        assert_eq!(r.outcome, Outcome::Values(2));
        assert_eq!(vals[0], (b"a".to_vec(), b"hello".to_vec()));
        // A data block may contain "END\r\n"; the parser follows the length, not the text.
        assert_eq!(vals[1], (b"b".to_vec(), b"world\r\nEND!!".to_vec()));
        let (r2, _) = parse_all(&full[r.consumed..], Cmd::Set);
        assert_eq!(r2.unwrap().outcome, Outcome::Stored);
    }

    #[test]
    fn pipelined_replies_parse_in_sequence() {
        let buf = b"STORED\r\nVALUE k 0 1\r\nx\r\nEND\r\nEN\r\n7\r\n";
        let mut pos = 0;
        for (cmd, want) in [
            (Cmd::Set, Outcome::Stored),
            (Cmd::Get, Outcome::Values(1)),
            (Cmd::Mg, Outcome::Values(0)),
            (Cmd::Incr, Outcome::Number(7)),
        ] {
            let (r, _) = parse_all(&buf[pos..], cmd);
            let r = r.unwrap();
            assert_eq!(r.outcome, want);
            pos += r.consumed;
        }
        assert_eq!(pos, buf.len());
    }

    #[test]
    fn broken_replies_are_errors() {
        let mut f = |_: &[u8], _: &[u8]| {};
        assert!(parse_reply(b"VALUE k 0 3\r\nabcXY", Cmd::Get, &mut f).is_err());
        assert!(parse_reply(b"HELLO\r\n", Cmd::Set, &mut f).is_err());
        assert!(parse_reply(b"VALUE k 0 zz\r\n", Cmd::Get, &mut f).is_err());
        assert!(parse_reply(&[b'x'; LINE_LEN_MAX + 1], Cmd::Get, &mut f).is_err());
        assert!(parse_reply(b"VALUE k 0 999999999999\r\n", Cmd::Get, &mut f).is_err());
    }

    #[test]
    fn encoders_write_the_wire_format() {
        let kf = KeyFormat {
            prefix: "p:".into(),
            key_size: 6,
        };
        let e = Encoder {
            keys: &kf,
            ttl_s: 60,
        };
        let mut out = Vec::new();
        e.get(&mut out, 1);
        e.mget(&mut out, [2u64, 3].into_iter());
        e.delete(&mut out, 4);
        e.incr(&mut out, 5);
        e.mg(&mut out, 6);
        assert_eq!(
            out,
            b"get p:0001\r\nget p:0002 p:0003\r\ndelete p:0004\r\nincr p:#005 1\r\nmg p:0006 v\r\n"
        );
        out.clear();
        e.set(&mut out, 1, 9, 24);
        assert!(out.starts_with(b"set p:0001 0 60 24\r\n"));
        assert_eq!(out.len(), b"set p:0001 0 60 24\r\n".len() + 24 + 2);
        out.clear();
        e.ms(&mut out, 1, 9, 24);
        assert!(out.starts_with(b"ms p:0001 24 T60\r\n"));
    }
}
