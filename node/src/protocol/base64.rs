//! Base64 keys of the meta commands (`b` flag), decoded and encoded exactly as memcached 1.6.18's
//! `base64.c` does: bytes outside the alphabet are skipped, the alphabet bytes must come in
//! groups of four, decoding stops after the first group with padding, and an empty result is a
//! failure.

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// memcached's `dtable`: the 6-bit value of an alphabet byte, `=` as 0, `None` for the rest.
fn value_of(b: u8) -> Option<u8> {
    match b {
        b'A'..=b'Z' => Some(b - b'A'),
        b'a'..=b'z' => Some(b - b'a' + 26),
        b'0'..=b'9' => Some(b - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        b'=' => Some(0),
        _ => None,
    }
}

/// The key `src` names; `None` where memcached's decoder returns 0 (its "error decoding key").
pub fn decode(src: &[u8]) -> Option<Vec<u8>> {
    let count = src.iter().filter(|&&b| value_of(b).is_some()).count();
    if count == 0 || count % 4 != 0 {
        return None;
    }
    let mut out = Vec::with_capacity(count / 4 * 3);
    let mut block = [0u8; 4];
    let mut n = 0;
    let mut pad = 0;
    for &b in src {
        let Some(v) = value_of(b) else { continue };
        if b == b'=' {
            pad += 1;
        }
        block[n] = v;
        n += 1;
        if n == 4 {
            out.push((block[0] << 2) | (block[1] >> 4));
            out.push((block[1] << 4) | (block[2] >> 2));
            out.push((block[2] << 6) | block[3]);
            n = 0;
            if pad > 0 {
                match pad {
                    1 => out.truncate(out.len() - 1),
                    2 => out.truncate(out.len() - 2),
                    _ => return None,
                }
                break;
            }
        }
    }
    (!out.is_empty()).then_some(out)
}

/// Appends the padded base64 text of `src`.
pub fn encode(src: &[u8], out: &mut Vec<u8>) {
    let sym = |v: u8| ALPHABET[usize::from(v & 0x3f)];
    let mut chunks = src.chunks_exact(3);
    for c in &mut chunks {
        out.extend_from_slice(&[
            sym(c[0] >> 2),
            sym((c[0] << 4) | (c[1] >> 4)),
            sym((c[1] << 2) | (c[2] >> 6)),
            sym(c[2]),
        ]);
    }
    match *chunks.remainder() {
        [a] => out.extend_from_slice(&[sym(a >> 2), sym(a << 4), b'=', b'=']),
        [a, b] => {
            out.extend_from_slice(&[sym(a >> 2), sym((a << 4) | (b >> 4)), sym(b << 2), b'='])
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(src: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode(src, &mut out);
        out
    }

    #[test]
    fn round_trips_every_length() {
        let data: Vec<u8> = (0..=255).collect();
        for n in 1..data.len() {
            assert_eq!(decode(&enc(&data[..n])).as_deref(), Some(&data[..n]), "{n}");
        }
        assert_eq!(enc(b"foo"), b"Zm9v");
        assert_eq!(enc(b"fo"), b"Zm8=");
        assert_eq!(enc(b"f"), b"Zg==");
    }

    #[test]
    fn decodes_as_memcached_does() {
        // Bytes outside the alphabet are skipped.
        assert_eq!(decode(b"Zm-9v").as_deref(), Some(&b"foo"[..]));
        // Decoding stops after the first padded group.
        assert_eq!(decode(b"Zg==Zm9v").as_deref(), Some(&b"f"[..]));
        // Failures: nothing, not a multiple of four, three pads, an empty result.
        for bad in [&b""[..], b"-", b"Zm9", b"Z===", b"===="] {
            assert_eq!(decode(bad), None, "{bad:?}");
        }
    }
}
