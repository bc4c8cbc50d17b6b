//! Meta command flags (mg, ms, md, ma, mn), parsed the way memcached 1.6.18's
//! `_meta_flag_preparse` does: one flag per token, named by the token's first byte, every flag
//! known to any meta command accepted by all of them (each command then ignores the ones it has
//! no use for), a flag at most once.
//!
//! A base64 key (`b`) is checked here (memcached decodes it while it reads the flags, so a bad
//! key is reported like a bad flag argument) and left encoded in the request: the server decodes
//! it into the op's owned key, and replies re-encode it where memcached echoes it (`k`).

use super::{
    base64, data_block, data_len, strtol_i32, strtoull, ClientError, DataBlock, Limits, MetaCmd,
    MetaRequest, Parse, Request, META_TOKENS_MAX, OPAQUE_TOKEN_LEN_MAX,
};

/// A flag that asks for something to be echoed in the reply. memcached writes them in the order
/// the client gave them, so they are kept as a list rather than as booleans.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ReturnFlag {
    /// `c`: the item's CAS.
    #[default]
    Cas,
    /// `f`: client flags.
    Flags,
    /// `h`: whether the item was fetched before.
    Hit,
    /// `k`: the key.
    Key,
    /// `l`: seconds since last access.
    LastAccess,
    /// `O`: the opaque token.
    Opaque,
    /// `s`: value size.
    Size,
    /// `t`: seconds to live, -1 for never.
    Ttl,
}

/// Number of distinct return flags; duplicates are rejected, so the list never holds more.
const RETURN_FLAGS_MAX: usize = 8;

/// Return flags in request order, stored inline (no allocation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReturnFlags {
    list: [ReturnFlag; RETURN_FLAGS_MAX],
    len: u8,
}

impl ReturnFlags {
    fn push(&mut self, flag: ReturnFlag) {
        let len = usize::from(self.len);
        // Duplicates are rejected before a second push, so eight distinct flags always fit.
        assert!(len < RETURN_FLAGS_MAX, "return flag list overflow");
        self.list[len] = flag;
        self.len += 1;
    }

    /// Builds a list directly, for tests and for callers that synthesise requests.
    ///
    /// # Panics
    /// With more than eight flags, which no parsed request can carry.
    pub fn from_slice(flags: &[ReturnFlag]) -> Self {
        let mut list = Self::default();
        for &flag in flags {
            list.push(flag);
        }
        list
    }

    pub fn as_slice(&self) -> &[ReturnFlag] {
        &self.list[..usize::from(self.len)]
    }

    pub fn iter(&self) -> impl Iterator<Item = ReturnFlag> + '_ {
        self.as_slice().iter().copied()
    }

    pub fn contains(&self, flag: ReturnFlag) -> bool {
        self.as_slice().contains(&flag)
    }
}

/// `M<mode>`: ms switches the store command, ma chooses incr or decr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MetaMode {
    /// ms `ME`.
    Add,
    /// ms `MA`.
    Append,
    /// ms `MP`.
    Prepend,
    /// ms `MR`.
    Replace,
    /// ms `MS`.
    Set,
    /// ma `MI` or `M+`.
    Incr,
    /// ma `MD` or `M-`.
    Decr,
}

/// Every flag Keel acts on, typed. Fields a command does not use are parsed (memcached checks
/// them) and left for the server to ignore. TTLs are memcached's truncated 32-bit values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MetaFlags<'a> {
    /// `b`: the key token is base64 (decode it with [`MetaRequest::key_bytes`]).
    pub base64: bool,
    /// `v`: return the value (mg, ma).
    pub value: bool,
    /// `q`: suppress the uninteresting reply (mg: EN; ms, md: HD; ma: HD and VA). Errors are
    /// always sent.
    pub quiet: bool,
    /// `u`: do not bump the item in the LRU.
    pub no_lru_bump: bool,
    /// `I`: invalidate. md marks the item stale instead of deleting it; ms stores a value with
    /// an older CAS as stale.
    pub invalidate: bool,
    /// `O<token>` without the `O`, at most 31 bytes.
    pub opaque: Option<&'a [u8]>,
    /// `T<ttl>`: mg and ma update the TTL, ms sets it, md (with `I`) sets it.
    pub ttl: Option<i64>,
    /// `N<ttl>`: on a miss, create the item (mg: empty, win token; ma: with `J`) with this TTL.
    pub vivify_ttl: Option<i64>,
    /// `R<ttl>`: mg: win a recache token if the TTL left is below this.
    pub recache_ttl: Option<i64>,
    /// `F<flags>`: ms client flags.
    pub client_flags: Option<u32>,
    /// `C<cas>`: compare-and-swap value (ms, md, ma).
    pub compare_cas: Option<u64>,
    /// `M<mode>` for ms and ma; `None` for mg and md, which only check its length.
    pub mode: Option<MetaMode>,
    /// `J<initial>`: ma's value when vivifying.
    pub initial: Option<u64>,
    /// `D<delta>`: ma's delta (memcached's default is 1).
    pub delta: Option<u64>,
    /// Flags to echo, in request order.
    pub returns: ReturnFlags,
}

/// Parses the flag tokens. Errors follow memcached: an unknown or repeated flag stops at once;
/// a bad argument is remembered and reported after all tokens, the last message set winning,
/// with `F` setting none (so a lone bad `F` reads "bad command line format").
fn preparse<'a>(key: &[u8], toks: &[&'a [u8]]) -> Result<(MetaFlags<'a>, Option<u8>), ClientError> {
    let mut f = MetaFlags::default();
    let mut mode = None;
    let mut seen = [false; 256];
    let mut err: Option<ClientError> = None;
    let mut has_error = false;
    let mut fail = |e: Option<ClientError>| {
        has_error = true;
        if e.is_some() {
            err = e;
        }
    };
    for tok in toks {
        debug_assert!(!tok.is_empty());
        let arg = &tok[1..];
        // Checked before the flag is acted on, so a repeated return flag is never pushed twice
        // and the list's eight slots always suffice. memcached answers the same either way: an
        // unknown flag is reported at its first occurrence.
        let slot = &mut seen[usize::from(tok[0])];
        if *slot {
            return Err(ClientError::DuplicateFlag);
        }
        *slot = true;
        match tok[0] {
            b'N' => match strtol_i32(arg) {
                Some(v) => f.vivify_ttl = Some(v),
                None => fail(Some(ClientError::BadToken)),
            },
            b'T' => match strtol_i32(arg) {
                Some(v) => f.ttl = Some(v),
                None => fail(Some(ClientError::BadToken)),
            },
            b'R' => match strtol_i32(arg) {
                Some(v) => f.recache_ttl = Some(v),
                None => fail(Some(ClientError::BadToken)),
            },
            b'l' => f.returns.push(ReturnFlag::LastAccess),
            b'h' => f.returns.push(ReturnFlag::Hit),
            b'u' => f.no_lru_bump = true,
            b'O' => {
                f.opaque = Some(arg);
                f.returns.push(ReturnFlag::Opaque);
            }
            // Proxy hints: accepted and ignored, as memcached does.
            b'P' | b'L' => {}
            b'k' => f.returns.push(ReturnFlag::Key),
            b's' => f.returns.push(ReturnFlag::Size),
            b't' => f.returns.push(ReturnFlag::Ttl),
            b'c' => f.returns.push(ReturnFlag::Cas),
            b'f' => f.returns.push(ReturnFlag::Flags),
            b'v' => f.value = true,
            b'q' => f.quiet = true,
            // memcached truncates client flags to 32 bits.
            b'F' => match strtoull(arg) {
                Some(v) => f.client_flags = Some(v as u32),
                None => fail(None),
            },
            b'C' => match strtoull(arg) {
                Some(v) => f.compare_cas = Some(v),
                None => fail(Some(ClientError::BadToken)),
            },
            b'M' => {
                if tok.len() == 2 {
                    mode = Some(tok[1]);
                } else {
                    fail(Some(ClientError::MTokenLength));
                }
            }
            b'J' => match strtoull(arg) {
                Some(v) => f.initial = Some(v),
                None => fail(Some(ClientError::InvalidInitialValue)),
            },
            b'D' => match strtoull(arg) {
                Some(v) => f.delta = Some(v),
                None => fail(Some(ClientError::InvalidDeltaValue)),
            },
            b'I' => f.invalidate = true,
            b'b' => {
                f.base64 = true;
                if base64::decode(key).is_none() {
                    fail(Some(ClientError::KeyDecode));
                }
            }
            _ => return Err(ClientError::InvalidFlag),
        }
    }
    if has_error {
        return Err(err.unwrap_or(ClientError::BadCommandLineFormat));
    }
    Ok((f, mode))
}

fn opaque_ok(f: &MetaFlags<'_>) -> bool {
    f.opaque.is_none_or(|o| o.len() < OPAQUE_TOKEN_LEN_MAX)
}

/// `toks` are the real tokens (command first); `ntokens` is memcached's count (real tokens plus
/// the terminal one, capped at `TOKENS_MAX`).
pub(super) fn parse_meta<'a>(
    cmd: MetaCmd,
    toks: &[&'a [u8]],
    ntokens: usize,
    buf: &'a [u8],
    line_next: usize,
    limits: &Limits,
) -> Parse<'a> {
    let fail = |err: ClientError, swallow: usize| Parse::Invalid {
        err,
        consumed: line_next,
        swallow,
        close: false,
        // Meta commands always report errors, `q` or not.
        silent: false,
        unlink_key: None,
    };
    let done = |req: MetaRequest<'a>, consumed: usize| Parse::Done {
        req: Request::Meta(req),
        consumed,
    };
    if cmd == MetaCmd::Noop {
        // memcached ignores anything after `mn`.
        let req = MetaRequest {
            cmd,
            key: &[],
            flags: MetaFlags::default(),
            data: &[],
        };
        return done(req, line_next);
    }
    if cmd == MetaCmd::Debug {
        return parse_me(toks, ntokens, line_next, limits);
    }
    if ntokens < 3 {
        return fail(ClientError::Error, 0);
    }
    let key = toks[1];
    if key.len() > limits.key_len_max {
        return fail(ClientError::BadCommandLineFormat, 0);
    }
    if cmd == MetaCmd::Set && ntokens == 3 {
        return fail(ClientError::BadCommandLineFormat, 0);
    }
    if ntokens > META_TOKENS_MAX {
        let err = match cmd {
            MetaCmd::Get => ClientError::OptionsFlagsAreTooLong,
            _ => ClientError::OptionsFlagsTooLong,
        };
        return fail(err, 0);
    }
    if cmd != MetaCmd::Set {
        let (mut flags, mode) = match preparse(key, &toks[2..]) {
            Ok(v) => v,
            Err(e) if cmd == MetaCmd::Get => return fail(e, 0),
            // md and ma fold every flag error into one line.
            Err(_) => return fail(ClientError::InvalidOrDuplicateFlag, 0),
        };
        if cmd == MetaCmd::Arith {
            flags.mode = match mode {
                None => None,
                Some(b'I' | b'+') => Some(MetaMode::Incr),
                Some(b'D' | b'-') => Some(MetaMode::Decr),
                Some(_) => return fail(ClientError::InvalidMaMode, 0),
            };
        }
        if !opaque_ok(&flags) {
            return fail(ClientError::OpaqueTooLong, 0);
        }
        return done(
            MetaRequest {
                cmd,
                key,
                flags,
                data: &[],
            },
            line_next,
        );
    }

    // ms <key> <datalen> <flags>*
    let Some(vlen) = strtol_i32(toks[2]).and_then(data_len) else {
        return fail(ClientError::BadCommandLineFormat, 0);
    };
    // From here on memcached knows the length, so every error swallows the data block.
    let swallow = vlen + 2;
    let (mut flags, mode) = match preparse(key, &toks[3..]) {
        Ok(v) => v,
        Err(e) => return fail(e, swallow),
    };
    if !opaque_ok(&flags) {
        return fail(ClientError::OpaqueTooLong, swallow);
    }
    flags.mode = match mode {
        None => None,
        Some(b'E') => Some(MetaMode::Add),
        Some(b'A') => Some(MetaMode::Append),
        Some(b'P') => Some(MetaMode::Prepend),
        Some(b'R') => Some(MetaMode::Replace),
        Some(b'S') => Some(MetaMode::Set),
        Some(_) => return fail(ClientError::InvalidMsMode, swallow),
    };
    if vlen > limits.value_len_max {
        return Parse::Invalid {
            err: ClientError::ObjectTooLarge,
            consumed: line_next,
            swallow,
            close: false,
            silent: false,
            unlink_key: Some(key),
        };
    }
    match data_block(buf, line_next, vlen) {
        DataBlock::Incomplete => Parse::Incomplete,
        DataBlock::Bad(consumed) => Parse::Invalid {
            err: ClientError::BadDataChunk,
            consumed,
            swallow: 0,
            close: false,
            silent: false,
            unlink_key: None,
        },
        DataBlock::Ok(data, consumed) => done(
            MetaRequest {
                cmd,
                key,
                flags,
                data,
            },
            consumed,
        ),
    }
}

/// `me <key> [b]` (meta debug): memcached reads only the key and, as the very next token, `b`;
/// anything else on the line is ignored.
fn parse_me<'a>(toks: &[&'a [u8]], ntokens: usize, line_next: usize, limits: &Limits) -> Parse<'a> {
    let bad = Parse::Invalid {
        err: ClientError::BadCommandLineFormat,
        consumed: line_next,
        swallow: 0,
        close: false,
        silent: false,
        unlink_key: None,
    };
    if ntokens < 3 || toks[1].len() > limits.key_len_max {
        return bad;
    }
    let key = toks[1];
    let base64 = ntokens >= 4 && toks[2] == b"b";
    if base64 && base64::decode(key).is_none() {
        return bad;
    }
    Parse::Done {
        req: Request::Meta(MetaRequest {
            cmd: MetaCmd::Debug,
            key,
            flags: MetaFlags {
                base64,
                ..MetaFlags::default()
            },
            data: &[],
        }),
        consumed: line_next,
    }
}
