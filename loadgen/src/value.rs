//! Keys and self-verifying values.
//!
//! A key is `prefix` + the key index in decimal, zero-padded to `key_size` bytes; counter keys (for
//! `incr`) put `#` after the prefix so they never collide with value keys.
//!
//! A value is a 20-byte header (key index u64 LE, version u64 LE, total length u32 LE) followed by
//! filler bytes taken from a fixed pseudo-random pattern at an offset derived from (key, version).
//! A read-back is correct when the header names the key that was asked for, the length matches what
//! the server returned, and every filler byte matches: a value from another key, a torn value or a
//! flipped byte is caught. Versions are not checked for freshness: with many writers there is no
//! single "latest" a client can know without coordination.

pub const VALUE_HEADER_LEN: usize = 20;
const PATTERN_LEN: usize = 4096;

/// Two copies of a 4 KiB printable pattern so that any offset below 4096 has 4096 contiguous bytes.
static PATTERN: [u8; 2 * PATTERN_LEN] = make_pattern();

const fn make_pattern() -> [u8; 2 * PATTERN_LEN] {
    let mut out = [0u8; 2 * PATTERN_LEN];
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    let mut i = 0;
    while i < PATTERN_LEN {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let c = b'!' + (x % 94) as u8; // printable, never '\r' or '\n'
        out[i] = c;
        out[i + PATTERN_LEN] = c;
        i += 1;
    }
    out
}

fn filler_offset(key_idx: u64, version: u64) -> usize {
    (key_idx.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ version.wrapping_mul(0xC2B2_AE3D_27D4_EB4F))
        as usize
        % PATTERN_LEN
}

/// Appends the value for (key, version) of `len` bytes to `out`. `len` must be at least
/// [`VALUE_HEADER_LEN`] (checked when the workload is validated).
pub fn write_value(out: &mut Vec<u8>, key_idx: u64, version: u64, len: u32) {
    assert!(
        len as usize >= VALUE_HEADER_LEN,
        "value length {len} below the header length"
    );
    out.extend_from_slice(&key_idx.to_le_bytes());
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    let mut left = len as usize - VALUE_HEADER_LEN;
    let offset = filler_offset(key_idx, version);
    // Restart the pattern at the same offset every 4 KiB; the check below does the same.
    while left > 0 {
        let n = left.min(PATTERN_LEN);
        out.extend_from_slice(&PATTERN[offset..offset + n]);
        left -= n;
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueError {
    TooShort { len: usize },
    WrongKey { expected: u64, found: u64 },
    WrongLength { header: u32, actual: usize },
    Corrupt { version: u64, at: usize },
}

impl std::fmt::Display for ValueError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::TooShort { len } => write!(f, "value of {len} bytes is shorter than its header"),
            Self::WrongKey { expected, found } => {
                write!(
                    f,
                    "value belongs to key index {found}, asked for {expected}"
                )
            }
            Self::WrongLength { header, actual } => {
                write!(
                    f,
                    "value header says {header} bytes, server returned {actual}"
                )
            }
            Self::Corrupt { version, at } => {
                write!(
                    f,
                    "value (version {version}) differs from what was written at byte {at}"
                )
            }
        }
    }
}

/// Checks a value read back for `key_idx`; returns its version.
pub fn verify_value(data: &[u8], key_idx: u64) -> Result<u64, ValueError> {
    if data.len() < VALUE_HEADER_LEN {
        return Err(ValueError::TooShort { len: data.len() });
    }
    let found = u64::from_le_bytes(data[0..8].try_into().expect("8 bytes"));
    let version = u64::from_le_bytes(data[8..16].try_into().expect("8 bytes"));
    let header_len = u32::from_le_bytes(data[16..20].try_into().expect("4 bytes"));
    if found != key_idx {
        return Err(ValueError::WrongKey {
            expected: key_idx,
            found,
        });
    }
    if header_len as usize != data.len() {
        return Err(ValueError::WrongLength {
            header: header_len,
            actual: data.len(),
        });
    }
    let offset = filler_offset(key_idx, version);
    let mut pos = VALUE_HEADER_LEN;
    while pos < data.len() {
        let n = (data.len() - pos).min(PATTERN_LEN);
        let want = &PATTERN[offset..offset + n];
        let got = &data[pos..pos + n];
        if want != got {
            let at = pos + want.iter().zip(got).position(|(a, b)| a != b).unwrap_or(0);
            return Err(ValueError::Corrupt { version, at });
        }
        pos += n;
    }
    Ok(version)
}

/// Formats keys of a fixed size from an index.
#[derive(Clone, Debug)]
pub struct KeyFormat {
    pub prefix: String,
    pub key_size: usize,
}

impl KeyFormat {
    /// Digits available after the prefix (and the `#` of counter keys).
    pub fn digits(&self) -> usize {
        self.key_size.saturating_sub(self.prefix.len() + 1)
    }

    /// Appends the key for `idx` (a counter key when `counter`) to `out`.
    pub fn write_key(&self, out: &mut Vec<u8>, idx: u64, counter: bool) {
        out.extend_from_slice(self.prefix.as_bytes());
        let mut width = self.key_size - self.prefix.len();
        if counter {
            out.push(b'#');
            width -= 1;
        }
        let mut buf = [b'0'; 20];
        let mut i = buf.len();
        let mut v = idx;
        loop {
            i -= 1;
            buf[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        let digits = &buf[i..];
        for _ in digits.len()..width {
            out.push(b'0');
        }
        out.extend_from_slice(digits);
    }

    pub fn key(&self, idx: u64, counter: bool) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.key_size);
        self.write_key(&mut v, idx, counter);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_and_catch_damage() {
        for len in [20u32, 21, 100, 4096 + 20, 10_000] {
            let mut v = Vec::new();
            write_value(&mut v, 42, 7, len);
            assert_eq!(v.len(), len as usize);
            assert_eq!(verify_value(&v, 42), Ok(7));
            assert_eq!(
                verify_value(&v, 43),
                Err(ValueError::WrongKey {
                    expected: 43,
                    found: 42
                })
            );
            if len > 20 {
                let mut bad = v.clone();
                let last = bad.len() - 1;
                bad[last] ^= 1;
                assert!(matches!(
                    verify_value(&bad, 42),
                    Err(ValueError::Corrupt { .. })
                ));
                let truncated = &v[..v.len() - 1];
                assert!(matches!(
                    verify_value(truncated, 42),
                    Err(ValueError::WrongLength { .. })
                ));
            }
        }
    }

    #[test]
    fn keys_have_fixed_size() {
        let f = KeyFormat {
            prefix: "kl:".into(),
            key_size: 12,
        };
        assert_eq!(f.key(42, false), b"kl:000000042");
        assert_eq!(f.key(42, true), b"kl:#00000042");
        assert_eq!(f.key(0, false).len(), 12);
    }
}
