//! The bytes on a peer connection, as pure functions over slices (no I/O), so the reader's and
//! the writer's framing is tested without sockets.
//!
//! A connection starts with one hello from the connecting side, then carries frames one way:
//!
//! ```text
//! hello (32 bytes): magic u32 | version u16 | flags u16 | from_node u64 | from_shard u32
//!                   | to_node u64 | to_shard u32
//! frame:            payload length u32 | CRC32C of the payload u32 | payload
//! ```
//!
//! With the cluster secret (`node.cluster_secret`) the hello carries [`FLAG_AUTH`] and a
//! challenge follows it before any frame: the accepting side answers a random 16-byte nonce,
//! the connecting side sends HMAC-SHA256(secret, [`AUTH_CONTEXT`] | hello | nonce), 32 bytes.
//! A node without the secret refuses a flagged hello and one with it refuses an unflagged one,
//! so a cluster is either all-secret or all-open. All integers little-endian.

use thiserror::Error;

/// "KEEL" read as a little-endian u32: the first bytes on the wire spell it.
pub const MAGIC: u32 = u32::from_le_bytes(*b"KEEL");
/// Bumped on any change to the hello or the frame layout; peers of another version are refused.
pub const VERSION: u16 = 1;
pub const HELLO_BYTES: usize = 32;
pub const FRAME_HEADER_BYTES: usize = 8;
/// Hello flag: the connecting side proves it knows the cluster secret (the challenge follows).
pub const FLAG_AUTH: u16 = 1;
pub const NONCE_BYTES: usize = 16;
pub const MAC_BYTES: usize = 32;
/// Bound into every MAC, so a MAC made for something else under the same secret never passes.
pub const AUTH_CONTEXT: &[u8] = b"keel-peer-hello-v1";

/// The cluster secret as an HMAC-SHA256 key. Its Debug output never shows the secret.
#[derive(Clone)]
pub struct PeerSecret(ring::hmac::Key);

impl PeerSecret {
    pub fn new(secret: &[u8]) -> PeerSecret {
        PeerSecret(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret))
    }

    /// The connecting side's answer to `nonce`.
    pub fn mac(&self, hello: &[u8; HELLO_BYTES], nonce: &[u8; NONCE_BYTES]) -> [u8; MAC_BYTES] {
        let mut ctx = ring::hmac::Context::with_key(&self.0);
        ctx.update(AUTH_CONTEXT);
        ctx.update(hello);
        ctx.update(nonce);
        ctx.sign()
            .as_ref()
            .try_into()
            .expect("HMAC-SHA256 is 32 bytes")
    }

    /// Whether `mac` answers `nonce` for `hello` (constant time).
    pub fn verify(&self, hello: &[u8; HELLO_BYTES], nonce: &[u8; NONCE_BYTES], mac: &[u8]) -> bool {
        let mut msg = Vec::with_capacity(AUTH_CONTEXT.len() + HELLO_BYTES + NONCE_BYTES);
        msg.extend_from_slice(AUTH_CONTEXT);
        msg.extend_from_slice(hello);
        msg.extend_from_slice(nonce);
        ring::hmac::verify(&self.0, &msg, mac).is_ok()
    }
}

impl std::fmt::Debug for PeerSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PeerSecret(<redacted>)")
    }
}

/// A fresh random nonce for one challenge.
pub fn nonce() -> [u8; NONCE_BYTES] {
    use ring::rand::SecureRandom;
    let mut n = [0u8; NONCE_BYTES];
    ring::rand::SystemRandom::new()
        .fill(&mut n)
        .expect("the system's random source works");
    n
}

const _: () = assert!(HELLO_BYTES == 4 + 2 + 2 + 8 + 4 + 8 + 4);

/// Who is connecting to whom: one connection per (shard, peer shard) pair per direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello {
    pub from_node: u64,
    pub from_shard: u32,
    pub to_node: u64,
    pub to_shard: u32,
    /// [`FLAG_AUTH`]: the challenge follows.
    pub auth: bool,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum WireError {
    #[error("bad magic {found:#010x} (expected {MAGIC:#010x}): not a Keel peer")]
    BadMagic { found: u32 },
    #[error("protocol version {found} (this node speaks {VERSION})")]
    BadVersion { found: u16 },
    #[error("hello flags {found:#06x} name a flag this node does not know")]
    BadFlags { found: u16 },
    #[error("frame of {len} bytes is over frame_bytes_max = {max}")]
    TooLong { len: u64, max: usize },
    #[error("frame CRC32C {found:#010x} does not match its payload ({computed:#010x})")]
    BadCrc { found: u32, computed: u32 },
}

impl Hello {
    pub fn encode(&self) -> [u8; HELLO_BYTES] {
        let mut b = [0u8; HELLO_BYTES];
        b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        b[4..6].copy_from_slice(&VERSION.to_le_bytes());
        let flags = if self.auth { FLAG_AUTH } else { 0 };
        b[6..8].copy_from_slice(&flags.to_le_bytes());
        b[8..16].copy_from_slice(&self.from_node.to_le_bytes());
        b[16..20].copy_from_slice(&self.from_shard.to_le_bytes());
        b[20..28].copy_from_slice(&self.to_node.to_le_bytes());
        b[28..32].copy_from_slice(&self.to_shard.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8; HELLO_BYTES]) -> Result<Hello, WireError> {
        let magic = u32::from_le_bytes(b[0..4].try_into().unwrap());
        if magic != MAGIC {
            return Err(WireError::BadMagic { found: magic });
        }
        let version = u16::from_le_bytes(b[4..6].try_into().unwrap());
        if version != VERSION {
            return Err(WireError::BadVersion { found: version });
        }
        let flags = u16::from_le_bytes(b[6..8].try_into().unwrap());
        if flags & !FLAG_AUTH != 0 {
            return Err(WireError::BadFlags { found: flags });
        }
        Ok(Hello {
            from_node: u64::from_le_bytes(b[8..16].try_into().unwrap()),
            from_shard: u32::from_le_bytes(b[16..20].try_into().unwrap()),
            to_node: u64::from_le_bytes(b[20..28].try_into().unwrap()),
            to_shard: u32::from_le_bytes(b[28..32].try_into().unwrap()),
            auth: flags & FLAG_AUTH != 0,
        })
    }
}

/// Appends one frame carrying `payload` to `out`.
pub fn encode_frame(payload: &[u8], out: &mut Vec<u8>) {
    // The sender refuses payloads over frame_bytes_max, which config validation keeps <= u32::MAX.
    let len = u32::try_from(payload.len()).expect("payload length checked against frame_bytes_max");
    out.reserve(FRAME_HEADER_BYTES + payload.len());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// What the front of a read buffer holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// A verified frame: its payload is `buf[FRAME_HEADER_BYTES..consumed]`.
    Frame { consumed: usize },
    /// Not a whole frame yet; `need` bytes in all make one (so the reader can size its buffer).
    Incomplete { need: usize },
}

/// Decodes the frame at the front of `buf`. The length is checked before the payload has
/// arrived, so an over-long frame is refused without buffering it.
pub fn decode_frame(buf: &[u8], frame_bytes_max: usize) -> Result<Decoded, WireError> {
    if buf.len() < FRAME_HEADER_BYTES {
        return Ok(Decoded::Incomplete {
            need: FRAME_HEADER_BYTES,
        });
    }
    let len = u32::from_le_bytes(buf[0..4].try_into().unwrap()) as usize;
    if len > frame_bytes_max {
        return Err(WireError::TooLong {
            len: len as u64,
            max: frame_bytes_max,
        });
    }
    let need = FRAME_HEADER_BYTES + len;
    if buf.len() < need {
        return Ok(Decoded::Incomplete { need });
    }
    let found = u32::from_le_bytes(buf[4..8].try_into().unwrap());
    let computed = crc32c::crc32c(&buf[FRAME_HEADER_BYTES..need]);
    if found != computed {
        return Err(WireError::BadCrc { found, computed });
    }
    Ok(Decoded::Frame { consumed: need })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello() -> Hello {
        Hello {
            from_node: 1,
            from_shard: 2,
            to_node: u64::MAX,
            to_shard: 7,
            auth: false,
        }
    }

    #[test]
    fn hello_round_trips_and_starts_with_the_magic() {
        let b = hello().encode();
        assert_eq!(&b[0..4], b"KEEL");
        assert_eq!(
            &b[6..8],
            &[0, 0],
            "an open cluster's hello is version 1's, unchanged"
        );
        assert_eq!(Hello::decode(&b), Ok(hello()));
        let auth = Hello {
            auth: true,
            ..hello()
        };
        assert_eq!(Hello::decode(&auth.encode()), Ok(auth));
    }

    #[test]
    fn the_mac_binds_the_secret_the_hello_and_the_nonce() {
        let (a, b) = (
            PeerSecret::new(b"0123456789abcdef"),
            PeerSecret::new(b"0123456789abcdeX"),
        );
        let h = Hello {
            auth: true,
            ..hello()
        }
        .encode();
        let n = nonce();
        assert_ne!(n, nonce(), "nonces repeat");
        let mac = a.mac(&h, &n);
        assert!(a.verify(&h, &n, &mac));
        assert!(!b.verify(&h, &n, &mac), "another secret");
        let mut n2 = n;
        n2[0] ^= 1;
        assert!(
            !a.verify(&h, &n2, &mac),
            "a replayed answer to another nonce"
        );
        let mut h2 = h;
        h2[8] ^= 1;
        assert!(!a.verify(&h2, &n, &mac), "another sender");
        assert!(!a.verify(&h, &n, &mac[..31]));
        assert_eq!(format!("{a:?}"), "PeerSecret(<redacted>)");
    }

    #[test]
    fn hello_refuses_wrong_magic_version_flags() {
        let mut b = hello().encode();
        b[0] = b'X';
        assert!(matches!(Hello::decode(&b), Err(WireError::BadMagic { .. })));
        let mut b = hello().encode();
        b[4] = 9;
        assert_eq!(Hello::decode(&b), Err(WireError::BadVersion { found: 9 }));
        let mut b = hello().encode();
        b[7] = 1;
        assert_eq!(Hello::decode(&b), Err(WireError::BadFlags { found: 256 }));
    }

    #[test]
    fn frames_decode_in_order_from_any_split() {
        let mut buf = Vec::new();
        let payloads: Vec<Vec<u8>> = (0..20u8).map(|i| vec![i; i as usize * 3]).collect();
        for p in &payloads {
            encode_frame(p, &mut buf);
        }
        // Every prefix of the stream either decodes whole frames or asks for more, never errs.
        for cut in 0..buf.len() {
            let mut pos = 0;
            while let Decoded::Frame { consumed } = decode_frame(&buf[pos..cut], 64).unwrap() {
                pos += consumed;
            }
        }
        let mut pos = 0;
        for p in &payloads {
            let Decoded::Frame { consumed } = decode_frame(&buf[pos..], 64).unwrap() else {
                panic!("whole frame expected at {pos}");
            };
            assert_eq!(&buf[pos + FRAME_HEADER_BYTES..pos + consumed], &p[..]);
            pos += consumed;
        }
        assert_eq!(pos, buf.len());
    }

    #[test]
    fn over_long_frame_is_refused_from_its_header_alone() {
        let mut buf = Vec::new();
        encode_frame(&[0u8; 100], &mut buf);
        assert_eq!(
            decode_frame(&buf[..FRAME_HEADER_BYTES], 99),
            Err(WireError::TooLong { len: 100, max: 99 })
        );
        assert_eq!(
            decode_frame(&buf[..FRAME_HEADER_BYTES], 100),
            Ok(Decoded::Incomplete { need: 108 })
        );
    }

    #[test]
    fn flipped_payload_bit_fails_the_crc() {
        let mut buf = Vec::new();
        encode_frame(b"hello raft", &mut buf);
        buf[FRAME_HEADER_BYTES + 3] ^= 0x10;
        assert!(matches!(
            decode_frame(&buf, 64),
            Err(WireError::BadCrc { .. })
        ));
    }
}
