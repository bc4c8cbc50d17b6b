//! The accept task and one reader task per inbound connection: check the hello, then hand every
//! verified frame to `on_frame` in arrival order. A connection that misbehaves is closed and
//! counted; the transport carries on and the peer reconnects.

use std::rc::Rc;
use std::time::Instant;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};

use super::wire::{
    decode_frame, nonce, Decoded, Hello, FRAME_HEADER_BYTES, HELLO_BYTES, MAC_BYTES, NONCE_BYTES,
};
use super::{Inbound, Inner, StatCells};

/// Bytes asked of each read. A larger frame grows the buffer to its own size (at most
/// frame_bytes_max plus header); the buffer shrinks back once it is handled.
const READ_CHUNK_BYTES: usize = 64 << 10;

pub(super) async fn accept_loop(inner: Rc<Inner>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok(stream) => {
                let open = inner.inbound_conns.get();
                if open >= inner.cfg.inbound_conns_max {
                    StatCells::add(&inner.stats.rejected_connections, 1);
                    drop(stream);
                    continue;
                }
                inner.inbound_conns.set(open + 1);
                let inner2 = inner.clone();
                inner.spawn_owned(async move {
                    let _open = OpenConn(&inner2);
                    read_conn(&inner2, stream).await;
                });
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning; the listener stays open.
                eprintln!(
                    "keel-node: transport node {} shard {}: accept failed: {e}",
                    inner.cfg.node_id, inner.cfg.shard
                );
                glommio::timer::sleep(inner.cfg.backoff_min).await;
            }
        }
    }
}

/// The challenge, when this node has the cluster secret: a fresh nonce out, its MAC back within
/// io_timeout. A hello whose flag does not match this node's mode fails at once.
async fn authenticated(
    inner: &Inner,
    stream: &mut TcpStream,
    hello: &[u8; HELLO_BYTES],
    flagged: bool,
) -> bool {
    let secret = match (&inner.cfg.secret, flagged) {
        (None, false) => return true,
        (Some(secret), true) => secret,
        _ => return false,
    };
    let nonce = nonce();
    let mut mac = [0u8; MAC_BYTES];
    let exchange = async {
        stream.write_all(&nonce).await?;
        stream.read_exact(&mut mac).await
    };
    let answered = glommio::timer::timeout(inner.cfg.io_timeout, async {
        exchange.await.map_err(Into::into)
    })
    .await;
    let stats = &inner.stats;
    StatCells::add(&stats.bytes_sent, NONCE_BYTES as u64);
    answered.is_ok() && {
        StatCells::add(&stats.bytes_received, MAC_BYTES as u64);
        secret.verify(hello, &nonce, &mac)
    }
}

/// Counts one inbound connection for as long as its reader lives (also when it is aborted).
struct OpenConn<'a>(&'a Inner);

impl Drop for OpenConn<'_> {
    fn drop(&mut self) {
        let n = self.0.inbound_conns.get();
        debug_assert!(n > 0);
        self.0.inbound_conns.set(n - 1);
    }
}

async fn read_conn(inner: &Inner, mut stream: TcpStream) {
    let stats = &inner.stats;
    let _ = stream.set_nodelay(true);
    let mut hello = [0u8; HELLO_BYTES];
    let read_hello = async { stream.read_exact(&mut hello).await.map_err(Into::into) };
    match glommio::timer::timeout(inner.cfg.io_timeout, read_hello).await {
        Ok(()) => {}
        Err(glommio::GlommioError::TimedOut(_)) => {
            StatCells::add(&stats.bad_frames, 1);
            return;
        }
        // Closed or reset before a whole hello: nothing to hold against the peer.
        Err(_) => return,
    }
    StatCells::add(&stats.bytes_received, HELLO_BYTES as u64);
    let from = match Hello::decode(&hello) {
        Ok(h) if h.to_node == inner.cfg.node_id && h.to_shard == inner.cfg.shard => h,
        _ => {
            StatCells::add(&stats.bad_frames, 1);
            return;
        }
    };
    if !authenticated(inner, &mut stream, &hello, from.auth).await {
        StatCells::add(&stats.bad_auth, 1);
        return;
    }
    let max = inner.cfg.frame_bytes_max;
    let mut buf: Vec<u8> = Vec::with_capacity(READ_CHUNK_BYTES);
    let mut need = FRAME_HEADER_BYTES;
    loop {
        // Read at least one chunk, or up to the whole of a frame larger than a chunk.
        let len = buf.len();
        let want = READ_CHUNK_BYTES.max(need.saturating_sub(len));
        buf.resize(len + want, 0);
        let n = match stream.read(&mut buf[len..]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.truncate(len + n);
        StatCells::add(&stats.bytes_received, n as u64);
        let mut pos = 0;
        let mut passed = false;
        loop {
            match decode_frame(&buf[pos..], max) {
                Ok(Decoded::Frame { consumed }) => {
                    debug_assert!(
                        consumed >= FRAME_HEADER_BYTES && consumed - FRAME_HEADER_BYTES <= max
                    );
                    let payload = buf[pos + FRAME_HEADER_BYTES..pos + consumed].to_vec();
                    pos += consumed;
                    StatCells::add(&stats.frames_received, 1);
                    if inner.is_partitioned(from.from_node) {
                        StatCells::add(&stats.dropped_faults, 1);
                        continue;
                    }
                    passed = true;
                    (inner.on_frame)(Inbound {
                        from_node: from.from_node,
                        from_shard: from.from_shard,
                        payload,
                    });
                }
                Ok(Decoded::Incomplete { need: n }) => {
                    need = n;
                    break;
                }
                Err(_) => {
                    StatCells::add(&stats.bad_frames, 1);
                    return;
                }
            }
        }
        if passed {
            inner
                .heard
                .borrow_mut()
                .insert(from.from_node, Instant::now());
        }
        buf.drain(..pos);
        if buf.capacity() > 4 * READ_CHUNK_BYTES && buf.len() < READ_CHUNK_BYTES {
            buf.shrink_to(READ_CHUNK_BYTES);
        }
    }
}
