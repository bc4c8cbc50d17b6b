//! One client connection: read, parse every complete request in the buffer, dispatch them all
//! (so a pipeline's requests run together and cross-shard ops go out in one message per shard),
//! then write all their replies with one write. With `net.tls_cert` the connection is TLS from
//! its first byte. Admin commands are served only on an admin connection: without
//! `net.admin_token`, any loopback client; with it, a connection that sent `admin_auth <token>`.

use std::cell::Cell;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use glommio::net::TcpListener;

use crate::exec::Round;
use crate::latency::Timer;
use crate::protocol::{self, Parse, Request};
use crate::shard::{Counters, Shard};

/// An open connection as `stats conns` shows it.
pub struct ConnInfo {
    pub addr: SocketAddr,
    pub listen_addr: SocketAddr,
    /// memcached's names: `conn_waiting` (for a read), `conn_parse_cmd` (parsing and running
    /// requests), `conn_mwrite` (writing replies).
    pub state: Cell<&'static str>,
    /// When the connection last read requests (or was accepted).
    pub last_cmd: Cell<Instant>,
}

pub async fn accept_loop(shard: Rc<Shard>, listener: TcpListener) {
    loop {
        let mut stream = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning; the listener stays open.
                eprintln!("keel-node: shard {}: accept failed: {e}", shard.id);
                glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let c = &shard.counters;
        if shard.conns_open.fetch_add(1, Ordering::Relaxed) >= shard.conns_max {
            shard.conns_open.fetch_sub(1, Ordering::Relaxed);
            Counters::add(&c.rejected_connections, 1);
            let _ = stream
                .write_all(b"SERVER_ERROR too many open connections\r\n")
                .await;
            continue;
        }
        Counters::add(&c.curr_connections, 1);
        Counters::add(&c.total_connections, 1);
        let unknown = SocketAddr::from(([0, 0, 0, 0], 0));
        let fd = stream.as_raw_fd();
        let info = Rc::new(ConnInfo {
            addr: stream.peer_addr().unwrap_or(unknown),
            listen_addr: stream.local_addr().unwrap_or(unknown),
            state: Cell::new("conn_waiting"),
            last_cmd: Cell::new(Instant::now()),
        });
        shard.conns.borrow_mut().insert(fd, info.clone());
        let shard = shard.clone();
        let task = async move {
            let _ = stream.set_nodelay(true);
            let _ = stream.set_write_timeout(Some(WRITE_STALL_MAX));
            let _ = match shard.tls.clone() {
                None => serve(&shard, stream, &info).await,
                // Boxed: a plain connection's task need not hold room for a TLS handshake.
                Some(tls) => Box::pin(serve_tls(&shard, stream, &info, tls)).await,
            };
            Counters::add(&shard.counters.curr_connections, u64::MAX); // wrapping -1
            shard.conns_open.fetch_sub(1, Ordering::Relaxed);
            let mut conns = shard.conns.borrow_mut();
            // The descriptor may already name a newer connection.
            if conns.get(&fd).is_some_and(|c| Rc::ptr_eq(c, &info)) {
                conns.remove(&fd);
            }
        };
        glommio::spawn_local(task).detach();
    }
}

/// A TLS connection: the handshake (bounded by [`crate::tls::HANDSHAKE_MAX`]), then [`serve`].
async fn serve_tls(
    shard: &Rc<Shard>,
    stream: glommio::net::TcpStream,
    info: &ConnInfo,
    tls: futures_rustls::TlsAcceptor,
) -> std::io::Result<()> {
    let handshake = async { tls.accept(stream).await.map_err(Into::into) };
    match glommio::timer::timeout(crate::tls::HANDSHAKE_MAX, handshake).await {
        Ok(stream) => serve(shard, stream, info).await,
        Err(_) => {
            Counters::add(&shard.counters.ssl_handshake_errors, 1);
            Ok(())
        }
    }
}

/// How long a reply may wait for a client to read before the connection is closed: a client
/// that sends and never reads would otherwise hold its replies (and the requests behind them)
/// forever.
pub const WRITE_STALL_MAX: Duration = Duration::from_secs(10);

/// Writes the replies in `out` to the client and empties it; the one place replies are
/// written (the end of a round, and a round that has filled its buffer). A write that timed out
/// (the client stopped reading for [`WRITE_STALL_MAX`]) is counted; its error closes the
/// connection.
pub async fn write_replies(
    shard: &Shard,
    stream: &mut (impl AsyncWrite + Unpin),
    out: &mut Vec<u8>,
) -> std::io::Result<()> {
    // flush: a TLS stream may hold the last record until it is flushed (a no-op for TCP).
    if let Err(e) = async {
        stream.write_all(out).await?;
        stream.flush().await
    }
    .await
    {
        if e.kind() == std::io::ErrorKind::TimedOut {
            Counters::add(&shard.counters.keel_write_stall_closes, 1);
        }
        return Err(e);
    }
    Counters::add(&shard.counters.bytes_written, out.len() as u64);
    out.clear();
    Ok(())
}

/// Read room a new connection starts with (memcached's first read buffer is 2 KiB too).
const READ_START_BYTES: usize = 2048;

/// The reply to a refused admin command.
const ADMIN_REFUSED: &[u8] =
    b"CLIENT_ERROR admin commands need admin_auth <net.admin_token> (or, with no token, a loopback client)\r\n";

/// `admin_auth <token>`: the reply, and whether the connection must close (a wrong token, so a
/// guess costs a connection). Constant time in the token's bytes.
fn admin_auth(shard: &Shard, token: &[u8], admin: &mut bool) -> (&'static [u8], bool) {
    let want = &shard.admin_token;
    if want.is_empty() {
        return (
            b"CLIENT_ERROR admin_auth is off: net.admin_token is empty\r\n",
            false,
        );
    }
    let diff = (want.iter().zip(token.iter().cycle()))
        .fold(want.len() ^ token.len(), |d, (a, b)| d | (a ^ b) as usize);
    if diff == 0 {
        *admin = true;
        (b"OK\r\n", false)
    } else {
        Counters::add(&shard.counters.keel_admin_auth_failures, 1);
        (b"CLIENT_ERROR bad admin token\r\n", true)
    }
}

async fn serve(
    shard: &Rc<Shard>,
    mut stream: impl AsyncRead + AsyncWrite + Unpin,
    info: &ConnInfo,
) -> std::io::Result<()> {
    // With a token, loopback is no proof either (other tenants of the host share it).
    let mut admin = shard.admin_token.is_empty() && info.addr.ip().to_canonical().is_loopback();
    let chunk = shard.read_buffer_bytes;
    // Requests read so far are rbuf[..filled]; the rest is room for the next read, zeroed once
    // when the buffer grows rather than before every read. A connection starts with room for a
    // few requests (an idle one of 10,000 should cost little) and reads `chunk` at a time once
    // a read has filled its room (a client that pipelines).
    let mut room = READ_START_BYTES.min(chunk);
    let mut rbuf: Vec<u8> = Vec::new();
    let mut filled = 0;
    let mut out: Vec<u8> = Vec::new();
    // Bytes of a refused value still to discard (they may arrive in later reads).
    let mut swallow = 0usize;
    let mut parsed_all = true;
    // (command, when it was parsed) of each request of the round, timed once its reply is
    // written; at most one per slot of a round (pipeline_depth_max).
    let mut timed: Vec<(Timer, Instant)> = Vec::new();
    loop {
        if parsed_all {
            if rbuf.len() < filled + room {
                rbuf.resize(filled + room, 0);
            }
            info.state.set("conn_waiting");
            let n = stream.read(&mut rbuf[filled..]).await?;
            if n == rbuf.len() - filled {
                room = chunk;
            }
            filled += n;
            if n == 0 {
                return Ok(());
            }
            Counters::add(&shard.counters.bytes_read, n as u64);
        }
        info.state.set("conn_parse_cmd");
        // One clock read per round: the requests of a read are parsed within microseconds of
        // it, so it stands for each one's parse time.
        let parsed_at = Instant::now();
        info.last_cmd.set(parsed_at);
        let now = crate::engine::Engine::<keel_nvme::AnyDevice>::now();
        let mut pos = 0;
        let mut close = false;
        parsed_all = true;
        {
            let mut round = Round::new(now);
            loop {
                if swallow > 0 {
                    let k = swallow.min(filled - pos);
                    pos += k;
                    swallow -= k;
                    if swallow > 0 {
                        break;
                    }
                }
                if round.len() >= shard.pipeline_depth_max {
                    // Answer what we have before parsing more: bounds this connection's memory.
                    parsed_all = false;
                    break;
                }
                match protocol::parse(&rbuf[pos..filled], &shard.limits) {
                    Parse::Incomplete => break,
                    Parse::Done { req, consumed } => {
                        pos += consumed;
                        match req {
                            Request::Quit => {
                                close = true;
                                break;
                            }
                            Request::AdminAuth { token } => {
                                let (reply, c) = admin_auth(shard, token, &mut admin);
                                round.push_bytes(reply);
                                if c {
                                    close = true;
                                    break;
                                }
                                continue;
                            }
                            Request::Member(_) if !admin => {
                                Counters::add(&shard.counters.keel_admin_refused, 1);
                                round.push_bytes(ADMIN_REFUSED);
                                continue;
                            }
                            _ => {}
                        }
                        if let Some(t) = Timer::of(&req) {
                            timed.push((t, parsed_at));
                        }
                        round.dispatch(shard, req);
                    }
                    Parse::Invalid {
                        err,
                        consumed,
                        swallow: s,
                        close: c,
                        silent,
                        unlink_key,
                    } => {
                        if !silent {
                            round.push_bytes(err.reply());
                        }
                        if let Some(key) = unlink_key {
                            // memcached unlinks the key when it refuses a too-large value, so
                            // the old value cannot be read after a failed set.
                            round.unlink(shard, key);
                        }
                        pos += consumed;
                        swallow = s;
                        if c {
                            close = true;
                            break;
                        }
                    }
                }
            }
            round.finish(shard, &mut stream, &mut out).await?;
        }
        if !out.is_empty() {
            info.state.set("conn_mwrite");
            write_replies(shard, &mut stream, &mut out).await?;
        }
        let written = Instant::now();
        for (t, parsed) in timed.drain(..) {
            shard.latency().record(t, written - parsed);
        }
        rbuf.copy_within(pos..filled, 0);
        filled -= pos;
        if close {
            return Ok(());
        }
        // A large value grew the buffer; give the memory back once it is handled.
        if rbuf.len() > 4 * chunk && filled < chunk {
            rbuf.truncate(chunk);
            rbuf.shrink_to(chunk);
        }
        if out.capacity() > 4 * chunk {
            out.shrink_to(chunk);
        }
    }
}
