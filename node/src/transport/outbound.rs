//! The writer task of one destination: connects (with back-off) while something is queued,
//! sends the hello, then writes everything queued in one write per wake-up.

use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;

use super::backoff::{backoff_delay, SplitMix64};
use super::wire::{encode_frame, Hello, HELLO_BYTES, MAC_BYTES, NONCE_BYTES};
use super::{Dest, Inner, StatCells};

/// A write buffer that grew past this (one large batch) is given back once written.
const WRITE_BUFFER_KEEP_BYTES: usize = 1 << 20;

/// A connection that wrote nothing for this long is checked for a close by its peer before the
/// next write. A peer that died (or restarted) while the connection was idle left it
/// half-closed: a write into it still succeeds, and only the one after it fails, so its frames
/// would be lost without a trace. Raft resends what it lost, but the reply to a forwarded
/// request is sent once: a restarted node's first forward to a node it had no traffic with
/// would time out. A busy connection meets the peer's reset on its next write instead.
const IDLE_PROBE_AFTER: Duration = Duration::from_millis(50);

pub(super) async fn writer(inner: Rc<Inner>, dest: Rc<Dest>, jitter_seed: u64) {
    let stats = &inner.stats;
    let mut rng = SplitMix64::new(jitter_seed);
    let mut stream: Option<TcpStream> = None;
    let mut failures: u32 = 0;
    let mut buf: Vec<u8> = Vec::new();
    let mut wrote = Instant::now();
    loop {
        if dest.queue.borrow().is_empty() {
            dest.wake.wait().await;
            continue;
        }
        // Let every task that is runnable in this loop iteration queue its payloads first, so
        // one write carries them all.
        futures_lite::future::yield_now().await;
        if (stream.as_ref()).is_some_and(|s| wrote.elapsed() >= IDLE_PROBE_AFTER && closed(s)) {
            StatCells::add(&stats.closed_idle, 1);
            stream = None;
        }
        let s = match stream.as_mut() {
            Some(s) => s,
            None => match connect(&inner, &dest).await {
                Ok(s) => {
                    StatCells::add(&stats.connects, 1);
                    failures = 0;
                    stream.insert(s)
                }
                Err(_) => {
                    // The frames stay queued (up to queue_bytes_max) for the next attempt.
                    StatCells::add(&stats.connect_failures, 1);
                    failures = failures.saturating_add(1);
                    let c = &inner.cfg;
                    let d = backoff_delay(c.backoff_min, c.backoff_max, failures, rng.next_u64());
                    glommio::timer::sleep(d).await;
                    continue;
                }
            },
        };
        let frames = {
            let mut q = dest.queue.borrow_mut();
            let n = q.len() as u64;
            buf.clear();
            for p in q.drain(..) {
                encode_frame(&p, &mut buf);
            }
            n
        };
        debug_assert_eq!(
            buf.len(),
            dest.queued_bytes.get(),
            "queued_bytes counts each payload with its header"
        );
        dest.queued_bytes.set(0);
        wrote = Instant::now();
        match write_counted(&inner, s, &buf).await {
            Ok(()) => {
                StatCells::add(&stats.frames_sent, frames);
                StatCells::add(&stats.bytes_sent, buf.len() as u64);
            }
            Err(_) => {
                // What part of the batch reached the peer is unknown; Raft resends what matters.
                StatCells::add(&stats.dropped_disconnected, frames);
                stream = None;
            }
        }
        if buf.capacity() > WRITE_BUFFER_KEEP_BYTES {
            buf = Vec::new();
        }
    }
}

/// Whether the peer closed `s` (or reset it): a peek that finds the end of the stream, without
/// waiting. The peer sends nothing on a connection it accepted once past the handshake, so any
/// byte waiting means it is open.
fn closed(s: &TcpStream) -> bool {
    let mut b = 0u8;
    // SAFETY: a one-byte buffer on the stack, valid for the call; the descriptor is owned by `s`.
    let n = unsafe {
        libc::recv(
            s.as_raw_fd(),
            (&mut b as *mut u8).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    match n {
        0 => true,
        n if n > 0 => false,
        _ => {
            let e = std::io::Error::last_os_error();
            !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
            )
        }
    }
}

async fn connect(inner: &Inner, dest: &Dest) -> std::io::Result<TcpStream> {
    let mut s = TcpStream::connect_timeout(dest.addr, inner.cfg.io_timeout).await?;
    s.set_nodelay(true)?;
    // A peer that stops reading fails the write after io_timeout instead of holding the queue.
    s.set_write_timeout(Some(inner.cfg.io_timeout))?;
    let hello = Hello {
        from_node: inner.cfg.node_id,
        from_shard: inner.cfg.shard,
        to_node: dest.node,
        to_shard: dest.shard,
        auth: inner.cfg.secret.is_some(),
    };
    let hello = hello.encode();
    write_counted(inner, &mut s, &hello).await?;
    StatCells::add(&inner.stats.bytes_sent, HELLO_BYTES as u64);
    if let Some(secret) = &inner.cfg.secret {
        let mut nonce = [0u8; NONCE_BYTES];
        let read = async { s.read_exact(&mut nonce).await.map_err(Into::into) };
        glommio::timer::timeout(inner.cfg.io_timeout, read)
            .await
            .map_err(std::io::Error::from)?;
        StatCells::add(&inner.stats.bytes_received, NONCE_BYTES as u64);
        write_counted(inner, &mut s, &secret.mac(&hello, &nonce)).await?;
        StatCells::add(&inner.stats.bytes_sent, MAC_BYTES as u64);
    }
    Ok(s)
}

/// `write_all`, counting each write call in `stats.writes`.
async fn write_counted(inner: &Inner, s: &mut TcpStream, mut buf: &[u8]) -> std::io::Result<()> {
    while !buf.is_empty() {
        StatCells::add(&inner.stats.writes, 1);
        let n = s.write(buf).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        buf = &buf[n..];
    }
    Ok(())
}
