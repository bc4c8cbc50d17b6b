//! memcached 1.6 text protocol: a pure parser over the connection's read buffer and the reply
//! encoders.
//!
//! The parser does no I/O and keeps no state between calls, so the shard loop can call it on
//! whatever has arrived, fuzz targets and benches can call it directly, and every answer is a
//! function of the bytes alone: a request that arrives split across reads parses exactly as it
//! would whole. Requests borrow keys and values from the buffer; the only allocation is a key
//! list longer than [`Keys`]'s inline capacity.
//!
//! Behaviour is matched against memcached 1.6.18 (see `tests.rs` for the recorded table),
//! including its quirks: numbers parsed with C `strtol`/`strtoul` semantics and truncated the
//! way memcached truncates them, `noreply` silencing errors, and the data block of an oversized
//! or rejected `set`/`ms` swallowed so the connection lives on.

pub mod base64;
mod meta;
pub mod reply;
#[cfg(test)]
mod tests;

use memchr::memchr;
use smallvec::SmallVec;

pub use meta::{MetaFlags, MetaMode, ReturnFlag, ReturnFlags};

/// Keys of a multi-get (and `stats` arguments). Inline up to 8 so the common get allocates nothing.
pub type Keys<'a> = SmallVec<[&'a [u8]; 8]>;

/// memcached's `KEY_MAX_LENGTH`.
pub const KEY_LEN_MAX: usize = 250;
/// memcached closes a connection whose buffer holds more than this many bytes without a newline.
pub const LINE_LEN_MAX: usize = 2048;
/// memcached's `MFLAG_MAX_OPAQUE_LENGTH`: an `O` token (including the `O`) may be this long.
pub const OPAQUE_TOKEN_LEN_MAX: usize = 32;
/// memcached's `MAX_TOKENS`: a line is split into at most this many tokens, the last being the
/// unsplit rest (only multi-gets look at the rest).
const TOKENS_MAX: usize = 24;
/// memcached's `MFLAG_MAX_OPT_LENGTH`, counted as memcached does: command, key, arguments and
/// flags plus one terminal token.
const META_TOKENS_MAX: usize = 20;

/// Every bound the parser enforces. A bound hit gives a defined [`Parse::Invalid`], never a
/// hang or an unbounded buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest key accepted (memcached: 250).
    pub key_len_max: usize,
    /// Largest data block of a store. memcached's limit is on the whole item (header + key +
    /// value) so it rejects values a little under 1 MiB; Keel's limit is on the value alone.
    pub value_len_max: usize,
    /// A buffer holding more than this many bytes without a newline is closed, silently, as
    /// memcached does (its check is `rbytes > 2048`). Only `get`/`gets` lines are exempt.
    pub line_len_max: usize,
    /// memcached lets `get`/`gets` lines grow without bound; Keel bounds them here and treats a
    /// longer one like any over-long line.
    pub multiget_line_len_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            key_len_max: KEY_LEN_MAX,
            value_len_max: 1024 * 1024,
            line_len_max: LINE_LEN_MAX,
            multiget_line_len_max: 1024 * 1024,
        }
    }
}

/// Outcome of one [`parse`] call over the front of the read buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parse<'a> {
    /// Need more bytes; keep the buffer and read more. Never returned when the buffer already
    /// proves the request wrong, so a slow client cannot park an error.
    Incomplete,
    /// One complete request; drop `consumed` bytes once the request no longer borrows them.
    Done { req: Request<'a>, consumed: usize },
    /// A request memcached rejects. Unless `silent`, write `err.reply()`; drop `consumed` bytes
    /// now, then discard `swallow` further bytes (they may not have arrived yet: the data block
    /// and its "\r\n" of a rejected store, swallowed as memcached does so the connection lives
    /// on); close the connection if `close`.
    Invalid {
        err: ClientError,
        consumed: usize,
        swallow: usize,
        close: bool,
        /// memcached sends nothing: the request said `noreply`, or memcached drops the
        /// connection without a word (over-long line).
        silent: bool,
        /// memcached unlinks this key when it refuses a value as too large, so a failed `set`
        /// never leaves the old value readable. Set for `set` and for every `ms`.
        unlink_key: Option<&'a [u8]>,
    },
}

/// One variant per distinct reply line memcached sends for a bad request, so a caller never
/// formats an error itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientError {
    /// Unknown command, wrong argument count, empty line.
    Error,
    BadCommandLineFormat,
    BadDataChunk,
    ObjectTooLarge,
    /// memcached closes without replying; the line exists for a caller that wants to say why.
    LineTooLong,
    /// An unknown command whose last token starts `HTTP/` (an HTTP client on the memcached
    /// port): memcached closes without replying; the line is what it would say otherwise.
    HttpRequest,
    InvalidExptime,
    /// incr/decr with a delta that is not a u64.
    InvalidDeltaArgument,
    /// `delete <key> <anything but 0 or noreply>`.
    DeleteUsage,
    /// Not produced by the parser: the store's answer to incr/decr/ma on a non-number.
    NonNumericValue,
    // Meta commands.
    InvalidFlag,
    DuplicateFlag,
    /// md and ma fold every flag error into this line.
    InvalidOrDuplicateFlag,
    /// `b` on a key that is not base64 (mg, ms).
    KeyDecode,
    BadToken,
    OpaqueTooLong,
    /// mg's wording.
    OptionsFlagsAreTooLong,
    /// ms, md and ma's wording.
    OptionsFlagsTooLong,
    MTokenLength,
    InvalidMsMode,
    InvalidMaMode,
    InvalidInitialValue,
    InvalidDeltaValue,
}

impl ClientError {
    /// All variants, so tests can check every reply line.
    pub const ALL: [ClientError; 23] = [
        Self::Error,
        Self::BadCommandLineFormat,
        Self::BadDataChunk,
        Self::ObjectTooLarge,
        Self::LineTooLong,
        Self::HttpRequest,
        Self::InvalidExptime,
        Self::InvalidDeltaArgument,
        Self::DeleteUsage,
        Self::NonNumericValue,
        Self::InvalidFlag,
        Self::DuplicateFlag,
        Self::InvalidOrDuplicateFlag,
        Self::KeyDecode,
        Self::BadToken,
        Self::OpaqueTooLong,
        Self::OptionsFlagsAreTooLong,
        Self::OptionsFlagsTooLong,
        Self::MTokenLength,
        Self::InvalidMsMode,
        Self::InvalidMaMode,
        Self::InvalidInitialValue,
        Self::InvalidDeltaValue,
    ];

    /// The exact line memcached 1.6.18 sends, "\r\n" included.
    pub fn reply(&self) -> &'static [u8] {
        match self {
            Self::Error => b"ERROR\r\n",
            Self::BadCommandLineFormat => b"CLIENT_ERROR bad command line format\r\n",
            Self::BadDataChunk => b"CLIENT_ERROR bad data chunk\r\n",
            Self::ObjectTooLarge => b"SERVER_ERROR object too large for cache\r\n",
            Self::LineTooLong => b"CLIENT_ERROR line too long\r\n",
            Self::HttpRequest => b"ERROR\r\n",
            Self::InvalidExptime => b"CLIENT_ERROR invalid exptime argument\r\n",
            Self::InvalidDeltaArgument => b"CLIENT_ERROR invalid numeric delta argument\r\n",
            Self::DeleteUsage => {
                b"CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]\r\n"
            }
            Self::NonNumericValue => {
                b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n"
            }
            Self::InvalidFlag => b"CLIENT_ERROR invalid flag\r\n",
            Self::DuplicateFlag => b"CLIENT_ERROR duplicate flag\r\n",
            Self::InvalidOrDuplicateFlag => b"CLIENT_ERROR invalid or duplicate flag\r\n",
            Self::KeyDecode => b"CLIENT_ERROR error decoding key\r\n",
            Self::BadToken => b"CLIENT_ERROR bad token in command line format\r\n",
            Self::OpaqueTooLong => b"CLIENT_ERROR opaque token too long\r\n",
            Self::OptionsFlagsAreTooLong => b"CLIENT_ERROR options flags are too long\r\n",
            Self::OptionsFlagsTooLong => b"CLIENT_ERROR options flags too long\r\n",
            Self::MTokenLength => b"CLIENT_ERROR incorrect length for M token\r\n",
            Self::InvalidMsMode => b"CLIENT_ERROR invalid mode for ms M token\r\n",
            Self::InvalidMaMode => b"CLIENT_ERROR invalid mode for ma M token\r\n",
            Self::InvalidInitialValue => b"CLIENT_ERROR invalid numeric initial value\r\n",
            Self::InvalidDeltaValue => b"CLIENT_ERROR invalid numeric delta value\r\n",
        }
    }
}

/// The classic storage commands; `Cas` is `cas`, whose compare value is in `Request::Store::cas`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StoreCmd {
    Set,
    Add,
    Replace,
    Append,
    Prepend,
    Cas,
}

/// A complete request, borrowing keys and data from the read buffer.
///
/// Times (`exptime`, `touch`, `delay`) are memcached's raw values after its own truncation to
/// 32 bits (memcached parses a 64-bit number and stores it in an `int32_t`); whether they are
/// relative or absolute (> 30 days) is the store's business.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request<'a> {
    /// get, gets, gat, gats. `gat <exptime>` with no key is valid and answers just `END`.
    Get {
        keys: Keys<'a>,
        cas: bool,
        touch: Option<i64>,
    },
    Store {
        cmd: StoreCmd,
        key: &'a [u8],
        flags: u32,
        exptime: i64,
        cas: u64,
        data: &'a [u8],
        noreply: bool,
    },
    Delete {
        key: &'a [u8],
        noreply: bool,
    },
    Arith {
        incr: bool,
        key: &'a [u8],
        delta: u64,
        noreply: bool,
    },
    Touch {
        key: &'a [u8],
        exptime: i64,
        noreply: bool,
    },
    /// `delay` is 0 when absent; memcached treats any value <= 0 as "now".
    FlushAll {
        delay: i64,
        noreply: bool,
    },
    Version,
    Verbosity {
        level: u32,
        noreply: bool,
    },
    /// memcached answers `ERROR` for a group it does not know; that is the server's call.
    Stats {
        group: Option<&'a [u8]>,
        args: Keys<'a>,
    },
    Quit,
    Meta(MetaRequest<'a>),
    /// Keel's own admin commands for replica membership (not memcached's). Served only on an
    /// admin connection: with no `net.admin_token` a loopback client, with one a connection
    /// that sent [`Request::AdminAuth`].
    Member(MemberCmd),
    /// `admin_auth <token>`: makes this connection an admin connection when the token is the
    /// profile's `net.admin_token`. Handled by the connection itself, never by a shard.
    AdminAuth {
        token: &'a [u8],
    },
}

/// `member_add <id> <ip:port>`, `member_promote <id>`, `member_remove <id>`, `members`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberCmd {
    Add {
        node: u64,
        addr: std::net::SocketAddr,
    },
    Promote(u64),
    Remove(u64),
    List,
}

/// The meta commands Keel serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MetaCmd {
    Get,
    Set,
    Delete,
    Arith,
    Noop,
    /// `me`: one line of an item's metadata, for people debugging a cache.
    Debug,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetaRequest<'a> {
    pub cmd: MetaCmd,
    /// Empty for `mn`.
    pub key: &'a [u8],
    pub flags: MetaFlags<'a>,
    /// The data block of `ms`, without its "\r\n"; empty otherwise.
    pub data: &'a [u8],
}

impl MetaRequest<'_> {
    /// The key the request names: the token itself, or its decoding under `b` (the parser has
    /// checked that it decodes).
    pub fn key_bytes(&self) -> Vec<u8> {
        if self.flags.base64 {
            base64::decode(self.key).expect("the parser checked the base64 key")
        } else {
            self.key.to_vec()
        }
    }
}

/// Parses the request at the front of `buf`.
pub fn parse<'a>(buf: &'a [u8], limits: &Limits) -> Parse<'a> {
    let line_next = match find_line(buf, limits) {
        LineEnd::Found(next) => next,
        LineEnd::Incomplete => return Parse::Incomplete,
        LineEnd::TooLong => {
            return Parse::Invalid {
                err: ClientError::LineTooLong,
                consumed: buf.len(),
                swallow: 0,
                close: true,
                silent: true,
                unlink_key: None,
            }
        }
    };
    debug_assert!(line_next > 0 && line_next <= buf.len() && buf[line_next - 1] == b'\n');
    let mut line = &buf[..line_next - 1];
    if let [rest @ .., b'\r'] = line {
        line = rest;
    }
    // memcached works on the line as a C string: a NUL ends it.
    if let Some(nul) = memchr(0, line) {
        line = &line[..nul];
    }
    let toks = Tokens::new(line);
    let result = dispatch(&toks, line, buf, line_next, limits);
    debug_assert!(match &result {
        Parse::Done { consumed, .. } | Parse::Invalid { consumed, .. } => *consumed >= line_next,
        Parse::Incomplete => true,
    });
    result
}

enum LineEnd {
    /// Index just past the '\n'.
    Found(usize),
    Incomplete,
    TooLong,
}

/// Finds the end of the first line. Only the first `line_len_max + 1` bytes decide, so the
/// answer does not depend on how the bytes were split into reads.
fn find_line(buf: &[u8], limits: &Limits) -> LineEnd {
    let window = &buf[..buf.len().min(limits.line_len_max.saturating_add(1))];
    if let Some(nl) = memchr(b'\n', window) {
        return LineEnd::Found(nl + 1);
    }
    if buf.len() <= limits.line_len_max {
        return LineEnd::Incomplete;
    }
    if !is_multiget_prefix(buf) {
        return LineEnd::TooLong;
    }
    let max = limits.multiget_line_len_max.max(limits.line_len_max);
    let start = window.len();
    let window = &buf[start..buf.len().min(max.saturating_add(1))];
    match memchr(b'\n', window) {
        Some(nl) => LineEnd::Found(start + nl + 1),
        None if buf.len() <= max => LineEnd::Incomplete,
        None => LineEnd::TooLong,
    }
}

/// memcached lets a line without a newline grow only if, after at most 100 spaces, it starts
/// "get " or "gets ".
fn is_multiget_prefix(buf: &[u8]) -> bool {
    let spaces = buf.iter().take_while(|&&b| b == b' ').count();
    if spaces > 100 {
        return false;
    }
    let rest = &buf[spaces..];
    rest.starts_with(b"get ") || rest.starts_with(b"gets ")
}

/// memcached's tokenizer: split on ' ' only, empty tokens skipped, at most `TOKENS_MAX - 1`
/// tokens kept (a longer line still counts as `TOKENS_MAX`, which no fixed-arity command
/// accepts).
struct Tokens<'a> {
    toks: [&'a [u8]; TOKENS_MAX],
    /// memcached's `ntokens`: real tokens plus the terminal one.
    ntokens: usize,
}

impl<'a> Tokens<'a> {
    fn new(line: &'a [u8]) -> Self {
        let mut toks: [&'a [u8]; TOKENS_MAX] = [&[]; TOKENS_MAX];
        let mut n = 0;
        for tok in line.split(|&b| b == b' ').filter(|t| !t.is_empty()) {
            if n == TOKENS_MAX - 1 {
                // The rest of the line becomes the terminal token.
                return Self {
                    toks,
                    ntokens: TOKENS_MAX,
                };
            }
            toks[n] = tok;
            n += 1;
        }
        Self {
            toks,
            ntokens: n + 1,
        }
    }

    /// Real token `i`; empty past the end, like memcached's terminal token.
    fn get(&self, i: usize) -> &'a [u8] {
        if i + 1 < self.ntokens {
            self.toks[i]
        } else {
            &[]
        }
    }

    /// memcached's `set_noreply_maybe`: the last real token is exactly "noreply".
    fn noreply(&self) -> bool {
        self.ntokens >= 2 && self.toks[self.ntokens - 2] == b"noreply"
    }
}

fn invalid<'a>(err: ClientError, consumed: usize, silent: bool) -> Parse<'a> {
    Parse::Invalid {
        err,
        consumed,
        swallow: 0,
        close: false,
        silent,
        unlink_key: None,
    }
}

fn done(req: Request<'_>, consumed: usize) -> Parse<'_> {
    Parse::Done { req, consumed }
}

fn dispatch<'a>(
    toks: &Tokens<'a>,
    line: &'a [u8],
    buf: &'a [u8],
    line_next: usize,
    limits: &Limits,
) -> Parse<'a> {
    let nt = toks.ntokens;
    let cmd = toks.get(0);
    // memcached: no command is shorter than two bytes.
    if nt < 2 || cmd.len() < 2 {
        return invalid(ClientError::Error, line_next, false);
    }
    if cmd.len() == 2 && cmd[0] == b'm' {
        let meta = match cmd[1] {
            b'g' => MetaCmd::Get,
            b's' => MetaCmd::Set,
            b'd' => MetaCmd::Delete,
            b'a' => MetaCmd::Arith,
            b'n' => MetaCmd::Noop,
            b'e' => MetaCmd::Debug,
            _ => return invalid(ClientError::Error, line_next, false),
        };
        return meta::parse_meta(meta, &toks.toks[..nt - 1], nt, buf, line_next, limits);
    }
    let want = |ok: bool| {
        if ok {
            None
        } else {
            Some(invalid(ClientError::Error, line_next, false))
        }
    };
    let err = match cmd {
        b"get" | b"gets" | b"gat" | b"gats" => want(nt >= 3),
        b"set" | b"add" | b"replace" | b"append" | b"prepend" => want(nt == 6 || nt == 7),
        b"cas" => want(nt == 7 || nt == 8),
        b"incr" | b"decr" | b"touch" => want(nt == 4 || nt == 5),
        b"delete" => want((3..=5).contains(&nt)),
        b"flush_all" => want((2..=4).contains(&nt)),
        b"verbosity" => want(nt == 3 || nt == 4),
        b"version" | b"quit" | b"stats" => None,
        b"member_add" => want(nt == 4),
        b"member_promote" | b"member_remove" => want(nt == 3),
        b"members" => want(nt == 2),
        b"admin_auth" => want(nt == 3),
        _ => Some(unknown_command(toks, line_next)),
    };
    if let Some(err) = err {
        return err;
    }
    match cmd {
        b"get" => parse_get(toks, line, line_next, limits, false, false),
        b"gets" => parse_get(toks, line, line_next, limits, true, false),
        b"gat" => parse_get(toks, line, line_next, limits, false, true),
        b"gats" => parse_get(toks, line, line_next, limits, true, true),
        b"set" => parse_store(toks, StoreCmd::Set, buf, line_next, limits),
        b"add" => parse_store(toks, StoreCmd::Add, buf, line_next, limits),
        b"replace" => parse_store(toks, StoreCmd::Replace, buf, line_next, limits),
        b"append" => parse_store(toks, StoreCmd::Append, buf, line_next, limits),
        b"prepend" => parse_store(toks, StoreCmd::Prepend, buf, line_next, limits),
        b"cas" => parse_store(toks, StoreCmd::Cas, buf, line_next, limits),
        b"incr" | b"decr" => {
            let noreply = toks.noreply();
            let key = toks.get(1);
            if key.len() > limits.key_len_max {
                return invalid(ClientError::BadCommandLineFormat, line_next, noreply);
            }
            match strtoull(toks.get(2)) {
                Some(delta) => done(
                    Request::Arith {
                        incr: cmd == b"incr",
                        key,
                        delta,
                        noreply,
                    },
                    line_next,
                ),
                None => invalid(ClientError::InvalidDeltaArgument, line_next, noreply),
            }
        }
        b"touch" => {
            let noreply = toks.noreply();
            let key = toks.get(1);
            if key.len() > limits.key_len_max {
                return invalid(ClientError::BadCommandLineFormat, line_next, noreply);
            }
            match strtol_i32(toks.get(2)) {
                Some(exptime) => done(
                    Request::Touch {
                        key,
                        exptime,
                        noreply,
                    },
                    line_next,
                ),
                None => invalid(ClientError::InvalidExptime, line_next, noreply),
            }
        }
        b"delete" => {
            let noreply = toks.noreply();
            if nt > 3 {
                let hold_is_zero = toks.get(2) == b"0";
                let valid =
                    (nt == 4 && (hold_is_zero || noreply)) || (nt == 5 && hold_is_zero && noreply);
                if !valid {
                    return invalid(ClientError::DeleteUsage, line_next, noreply);
                }
            }
            let key = toks.get(1);
            if key.len() > limits.key_len_max {
                return invalid(ClientError::BadCommandLineFormat, line_next, noreply);
            }
            done(Request::Delete { key, noreply }, line_next)
        }
        b"flush_all" => {
            let noreply = toks.noreply();
            let delay = if nt == if noreply { 3 } else { 2 } {
                0
            } else {
                match strtol_i32(toks.get(1)) {
                    Some(d) => d,
                    None => return invalid(ClientError::InvalidExptime, line_next, noreply),
                }
            };
            done(Request::FlushAll { delay, noreply }, line_next)
        }
        b"verbosity" => {
            let noreply = toks.noreply();
            match strtoul(toks.get(1)) {
                // memcached stores it in an unsigned int.
                Some(level) => done(
                    Request::Verbosity {
                        level: level as u32,
                        noreply,
                    },
                    line_next,
                ),
                None => invalid(ClientError::BadCommandLineFormat, line_next, noreply),
            }
        }
        b"version" => done(Request::Version, line_next),
        b"quit" => done(Request::Quit, line_next),
        b"stats" => {
            let group = (nt > 2).then(|| toks.get(1));
            let args = toks.toks[..nt - 1].iter().skip(2).copied().collect();
            done(Request::Stats { group, args }, line_next)
        }
        b"admin_auth" => done(Request::AdminAuth { token: toks.get(1) }, line_next),
        b"member_add" | b"member_promote" | b"member_remove" | b"members" => {
            let node = std::str::from_utf8(toks.get(1))
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
                .filter(|&n| n > 0);
            let cmd = match (cmd, node) {
                (b"members", _) => Some(MemberCmd::List),
                (b"member_add", Some(node)) => std::str::from_utf8(toks.get(2))
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .map(|addr| MemberCmd::Add { node, addr }),
                (b"member_promote", Some(node)) => Some(MemberCmd::Promote(node)),
                (b"member_remove", Some(node)) => Some(MemberCmd::Remove(node)),
                _ => None,
            };
            match cmd {
                Some(c) => done(Request::Member(c), line_next),
                None => invalid(ClientError::BadCommandLineFormat, line_next, false),
            }
        }
        _ => unreachable!("command filtered above"),
    }
}

/// memcached answers `ERROR` to a command it does not know, except that a line whose last token
/// starts `HTTP/` is an HTTP client and is closed without a word. The check sits in memcached's
/// final `else`, so it applies only to commands whose first byte opens none of its groups
/// (`get...`, `set`/`stats`..., `add`/`append`, `cas`, `incr`, `delete`/`decr`, `touch`).
fn unknown_command<'a>(toks: &Tokens<'a>, line_next: usize) -> Parse<'a> {
    let grouped = matches!(
        toks.get(0)[0],
        b'g' | b's' | b'a' | b'c' | b'i' | b'd' | b't'
    );
    if !grouped && toks.get(toks.ntokens - 2).starts_with(b"HTTP/") {
        return Parse::Invalid {
            err: ClientError::HttpRequest,
            consumed: line_next,
            swallow: 0,
            close: true,
            silent: true,
            unlink_key: None,
        };
    }
    invalid(ClientError::Error, line_next, false)
}

fn parse_get<'a>(
    toks: &Tokens<'a>,
    line: &'a [u8],
    line_next: usize,
    limits: &Limits,
    cas: bool,
    touch: bool,
) -> Parse<'a> {
    let mut touch_time = None;
    let mut skip = 1;
    if touch {
        match strtol_i32(toks.get(1)) {
            Some(t) => touch_time = Some(t),
            None => return invalid(ClientError::InvalidExptime, line_next, false),
        }
        skip = 2;
    }
    // Keys are re-split from the whole line: a multi-get is not bounded by the token array.
    let mut keys = Keys::new();
    for key in line
        .split(|&b| b == b' ')
        .filter(|t| !t.is_empty())
        .skip(skip)
    {
        if key.len() > limits.key_len_max {
            // memcached fails the whole request, sending no VALUE for earlier keys.
            return invalid(ClientError::BadCommandLineFormat, line_next, false);
        }
        keys.push(key);
    }
    done(
        Request::Get {
            keys,
            cas,
            touch: touch_time,
        },
        line_next,
    )
}

fn parse_store<'a>(
    toks: &Tokens<'a>,
    cmd: StoreCmd,
    buf: &'a [u8],
    line_next: usize,
    limits: &Limits,
) -> Parse<'a> {
    let noreply = toks.noreply();
    let bad = invalid(ClientError::BadCommandLineFormat, line_next, noreply);
    let key = toks.get(1);
    if key.len() > limits.key_len_max {
        return bad;
    }
    let (Some(flags), Some(exptime), Some(vlen)) = (
        strtoul(toks.get(2)),
        strtol_i32(toks.get(3)),
        strtol_i32(toks.get(4)),
    ) else {
        return bad;
    };
    let mut cas = 0;
    if cmd == StoreCmd::Cas {
        match strtoull(toks.get(5)) {
            Some(c) => cas = c,
            None => return bad,
        }
    }
    // memcached truncates flags to 32 bits after parsing a 64-bit number.
    let flags = flags as u32;
    let Some(vlen) = data_len(vlen) else {
        return bad;
    };
    if vlen > limits.value_len_max {
        return Parse::Invalid {
            err: ClientError::ObjectTooLarge,
            consumed: line_next,
            swallow: vlen + 2,
            close: false,
            silent: noreply,
            unlink_key: (cmd == StoreCmd::Set).then_some(key),
        };
    }
    match data_block(buf, line_next, vlen) {
        DataBlock::Incomplete => Parse::Incomplete,
        DataBlock::Bad(consumed) => invalid(ClientError::BadDataChunk, consumed, noreply),
        DataBlock::Ok(data, consumed) => done(
            Request::Store {
                cmd,
                key,
                flags,
                exptime,
                cas,
                data,
                noreply,
            },
            consumed,
        ),
    }
}

/// memcached's data length check: parsed as a truncated `int32_t`, then `vlen < 0 ||
/// vlen > INT_MAX - 2` is a bad command line.
fn data_len(vlen: i64) -> Option<usize> {
    if vlen < 0 || vlen > i64::from(i32::MAX) - 2 {
        return None;
    }
    usize::try_from(vlen).ok()
}

enum DataBlock<'a> {
    Incomplete,
    /// Consumed bytes: memcached reads exactly `vlen + 2` bytes and, if they do not end in
    /// "\r\n", answers bad data chunk and goes on parsing right after them.
    Bad(usize),
    Ok(&'a [u8], usize),
}

fn data_block(buf: &[u8], start: usize, vlen: usize) -> DataBlock<'_> {
    let end = start + vlen + 2;
    if buf.len() < end {
        // Wait for the whole block even if its first bytes already look wrong: memcached reads
        // all `vlen + 2` bytes before checking, and what follows is parsed after them.
        return DataBlock::Incomplete;
    }
    if &buf[end - 2..end] == b"\r\n" {
        DataBlock::Ok(&buf[start..start + vlen], end)
    } else {
        DataBlock::Bad(end)
    }
}

/// C's `strtol` prefix: leading isspace, optional sign, at least one digit, then end of token
/// or an isspace byte. Returns (negative, magnitude); `None` on no digits, junk or overflow of
/// the magnitude past u64.
fn c_number(tok: &[u8]) -> Option<(bool, u64)> {
    let mut i = tok.iter().take_while(|b| is_c_space(**b)).count();
    let mut neg = false;
    if let Some(&s) = tok.get(i) {
        if s == b'+' || s == b'-' {
            neg = s == b'-';
            i += 1;
        }
    }
    let digits = tok[i.min(tok.len())..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    if digits == 0 {
        return None;
    }
    let mut mag: u64 = 0;
    for &d in &tok[i..i + digits] {
        mag = mag.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    match tok.get(i + digits) {
        None => Some((neg, mag)),
        Some(&b) if is_c_space(b) => Some((neg, mag)),
        Some(_) => None,
    }
}

fn is_c_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

/// memcached's `safe_strtol` into an `int32_t`: a 64-bit `strtol` (ERANGE fails) truncated to
/// 32 bits, as C assignment does.
fn strtol_i32(tok: &[u8]) -> Option<i64> {
    let (neg, mag) = c_number(tok)?;
    let v: i64 = if neg {
        if mag > 1u64 << 63 {
            return None;
        }
        (mag as i64).wrapping_neg()
    } else {
        i64::try_from(mag).ok()?
    };
    Some(i64::from(v as i32))
}

/// memcached's `safe_strtoul`/`safe_strtoull` (64-bit): `strtoul` wraps a negative number, and
/// memcached then rejects it only if it looks negative as a signed value.
fn strtoull(tok: &[u8]) -> Option<u64> {
    let (neg, mag) = c_number(tok)?;
    let v = if neg { mag.wrapping_neg() } else { mag };
    if neg && (v as i64) < 0 {
        return None;
    }
    Some(v)
}

/// Same as [`strtoull`]; callers truncate to their width, as memcached does.
fn strtoul(tok: &[u8]) -> Option<u64> {
    strtoull(tok)
}
