//! One worker thread: its connections (non-blocking sockets driven by one mio `Poll`), request
//! issue for closed loop, open loop and prefill, reply parsing, value checks and measurement.
//!
//! Timing rules (the point of this module):
//! - Closed loop keeps `pipeline` requests in flight per connection; latency runs from the moment
//!   the request was written. A stalled server also stalls the senders, so this under-reports
//!   tails (coordinated omission); the report says so.
//! - Open loop gives each connection a fixed schedule (`interval = connections_total / rate`) and
//!   measures latency from each request's *intended* send time. A request that cannot be sent on
//!   time (server stalled, pipeline full) still counts from its slot, so a stall shows up as latency,
//!   not as a lower send rate.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpStream as StdTcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

use crate::config::Workload;
use crate::dist::{KeyChooser, Rng};
use crate::protocol::{parse_reply_spans, Cmd, Encoder, Outcome, ValueSpan};
use crate::stats::Stats;
use crate::value::{verify_value, KeyFormat};

/// Requests in flight per connection while prefilling.
pub const PREFILL_PIPELINE_DEPTH: usize = 32;
/// Read buffer: initial size and the most one connection may buffer (a reply larger than this is
/// a protocol error rather than unbounded memory).
const READ_BUFFER_INITIAL: usize = 64 << 10;
const READ_BUFFER_MAX: usize = 512 << 20;
/// Longest poll sleep: bounds how stale the timeout checks and progress counters can get.
const POLL_SLEEP_MAX: Duration = Duration::from_millis(20);
/// Below this distance to the next open-loop send the thread spins instead of sleeping, because
/// mio rounds poll timeouts up to whole milliseconds.
const SPIN_BELOW: Duration = Duration::from_micros(1500);

/// Counters one worker publishes for the progress line (relaxed: display only). Each worker's
/// sits on cache lines of its own: they are stored on every turn of the loop, and threads that
/// shared a line would slow each other down (false sharing) as threads are added.
#[derive(Default, Debug)]
#[repr(align(128))]
pub struct Progress {
    pub requests: AtomicU64,
    pub errors: AtomicU64,
    pub misses: AtomicU64,
    pub mismatches: AtomicU64,
    pub timeouts: AtomicU64,
}

/// Shared times of the measured phase.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    pub start: Instant,
    pub warmup_end: Instant,
    /// When issuing stops (None: the request budget alone bounds a closed-loop run).
    pub end: Option<Instant>,
}

struct InFlight {
    cmd: Cmd,
    nkeys: u32,
    intended: Instant,
    sent: Instant,
    measured: bool,
}

struct Conn {
    stream: TcpStream,
    server: usize,
    wbuf: Vec<u8>,
    wpos: usize,
    rbuf: Vec<u8>,
    rlen: usize,
    inflight: VecDeque<InFlight>,
    keys: VecDeque<u64>,
    /// Open loop: the intended send time of the next request.
    next_due: Instant,
    /// No more requests will be issued on this connection.
    done: bool,
    dead: bool,
}

/// Everything request choice needs, apart from the connections (so both can be borrowed at once).
struct Gen<'a> {
    w: &'a Workload,
    kf: KeyFormat,
    rng: Rng,
    keys: KeyChooser,
    mix_cumulative: Vec<(Cmd, u64)>,
    mix_total: u64,
    version_seq: u64,
    version_base: u64,
}

impl Gen<'_> {
    fn pick_cmd(&mut self) -> Cmd {
        let p = self.rng.below(self.mix_total);
        self.mix_cumulative
            .iter()
            .find(|(_, c)| p < *c)
            .map(|x| x.0)
            .expect("p < total")
    }

    /// Appends one request of type `cmd` to `conn`'s write buffer.
    fn encode(&mut self, conn: &mut Conn, cmd: Cmd) -> u32 {
        let enc = Encoder {
            keys: &self.kf,
            ttl_s: self.w.ttl_s,
        };
        let out = &mut conn.wbuf;
        match cmd {
            Cmd::Mget => {
                let start = conn.keys.len();
                for _ in 0..self.w.mget_width {
                    let k = self.keys.next(&mut self.rng);
                    conn.keys.push_back(k);
                }
                enc.mget(out, conn.keys.range(start..).copied());
                return self.w.mget_width;
            }
            _ => {
                let k = self.keys.next(&mut self.rng);
                conn.keys.push_back(k);
                match cmd {
                    Cmd::Get => enc.get(out, k),
                    Cmd::Mg => enc.mg(out, k),
                    Cmd::Delete => enc.delete(out, k),
                    Cmd::Incr => enc.incr(out, k),
                    Cmd::Set | Cmd::Ms => {
                        let len = self.w.value_size.sample(&mut self.rng);
                        self.version_seq += 1;
                        let v = self.version_base | self.version_seq;
                        if cmd == Cmd::Set {
                            enc.set(out, k, v, len)
                        } else {
                            enc.ms(out, k, v, len)
                        }
                    }
                    Cmd::Mget => unreachable!(),
                }
            }
        }
        1
    }
}

pub struct Worker<'a> {
    gen: Gen<'a>,
    thread_idx: u32,
    poll: Poll,
    events: Events,
    conns: Vec<Conn>,
    scratch: Vec<u8>,
    /// Where the values of the reply being checked lie (reused: no allocation per reply).
    spans: Vec<ValueSpan>,
}

/// One connection's slice of the prefill: value keys, then counter keys.
struct PrefillCursor {
    next: u64,
    end: u64,
    counter_next: u64,
    counter_end: u64,
}

enum Issue {
    Prefill(Vec<PrefillCursor>),
    Closed,
    Open { interval: Duration },
}

impl<'a> Worker<'a> {
    /// Opens this thread's connections (each with the connect timeout).
    pub fn connect(w: &'a Workload, thread_idx: u32) -> Result<Worker<'a>, String> {
        let poll = Poll::new().map_err(|e| format!("creating poll: {e}"))?;
        let mut conns = Vec::new();
        for i in 0..w.connections {
            let g = thread_idx as usize * w.connections as usize + i as usize;
            let server = g % w.servers.len();
            let addr_s = &w.servers[server];
            let addr = addr_s
                .to_socket_addrs()
                .map_err(|e| format!("resolving {addr_s}: {e}"))?
                .next()
                .ok_or_else(|| format!("resolving {addr_s}: no address"))?;
            let s = StdTcpStream::connect_timeout(&addr, w.timeout)
                .map_err(|e| format!("connecting to {addr_s}: {e} (is the server running?)"))?;
            s.set_nodelay(true)
                .map_err(|e| format!("TCP_NODELAY on {addr_s}: {e}"))?;
            s.set_nonblocking(true)
                .map_err(|e| format!("non-blocking {addr_s}: {e}"))?;
            let mut stream = TcpStream::from_std(s);
            poll.registry()
                .register(
                    &mut stream,
                    Token(i as usize),
                    Interest::READABLE | Interest::WRITABLE,
                )
                .map_err(|e| format!("registering {addr_s}: {e}"))?;
            let now = Instant::now();
            conns.push(Conn {
                stream,
                server,
                wbuf: Vec::with_capacity(16 << 10),
                wpos: 0,
                rbuf: vec![0; READ_BUFFER_INITIAL],
                rlen: 0,
                inflight: VecDeque::new(),
                keys: VecDeque::new(),
                next_due: now,
                done: false,
                dead: false,
            });
        }
        let mut mix_cumulative = Vec::new();
        let mut total = 0u64;
        for &(c, wt) in &w.mix {
            total += wt as u64;
            mix_cumulative.push((c, total));
        }
        let seed = w.seed ^ (thread_idx as u64 + 1).wrapping_mul(0xA076_1D64_78BD_642F);
        let gen = Gen {
            w,
            kf: KeyFormat {
                prefix: w.key_prefix.clone(),
                key_size: w.key_size as usize,
            },
            rng: Rng::new(seed),
            keys: KeyChooser::new(&w.dist, w.keys, thread_idx as u64, w.threads as u64),
            mix_cumulative,
            mix_total: total,
            version_seq: 0,
            version_base: (thread_idx as u64 + 1) << 40,
        };
        Ok(Worker {
            gen,
            thread_idx,
            poll,
            events: Events::with_capacity(1024),
            conns,
            scratch: Vec::new(),
            spans: Vec::new(),
        })
    }

    /// Loads the key space (and the counters, when `incr` is in the mix) onto every server: the
    /// connections to a server, across all threads, each write an equal slice. Bounded: each
    /// request has the timeout; a dead connection stops its slice (and the run reports it).
    pub fn prefill(&mut self, progress: &Progress) -> Stats {
        let w = self.gen.w;
        let servers = w.servers.len() as u64;
        let total_conns = w.threads as u64 * w.connections as u64;
        let cursors = (0..self.conns.len() as u64)
            .map(|i| {
                let g = self.thread_idx as u64 * w.connections as u64 + i;
                // Connection g talks to server g % servers and is number g / servers of the
                // ceil((total - s) / servers) connections to it.
                let s = g % servers;
                let (rank, count) = (g / servers, (total_conns - s).div_ceil(servers));
                let slice = |total: u64| (total * rank / count, total * (rank + 1) / count);
                let (next, end) = slice(w.keys);
                let (counter_next, counter_end) = if w.has(Cmd::Incr) {
                    slice(w.keys)
                } else {
                    (0, 0)
                };
                PrefillCursor {
                    next,
                    end,
                    counter_next,
                    counter_end,
                }
            })
            .collect();
        let now = Instant::now();
        let plan = Plan {
            start: now,
            warmup_end: now,
            end: None,
        };
        self.drive(Issue::Prefill(cursors), &plan, None, Some(progress))
    }

    /// The measured phase (warm-up included; requests sent before `warmup_end` are not recorded).
    pub fn run(&mut self, plan: &Plan, budget: Option<u64>, progress: &Progress) -> Stats {
        let w = self.gen.w;
        let issue = match w.rate {
            None => Issue::Closed,
            Some(rate) => {
                let total_conns = (w.threads * w.connections) as f64;
                let interval = Duration::from_secs_f64(total_conns / rate);
                for (i, c) in self.conns.iter_mut().enumerate() {
                    // Stagger the connections' schedules evenly over one interval.
                    let g = self.thread_idx as f64 * w.connections as f64 + i as f64;
                    c.next_due = plan.start + interval.mul_f64(g / total_conns);
                }
                Issue::Open { interval }
            }
        };
        for c in &mut self.conns {
            c.done = false;
        }
        self.drive(issue, plan, budget, Some(progress))
    }

    fn drive(
        &mut self,
        mut issue: Issue,
        plan: &Plan,
        budget: Option<u64>,
        progress: Option<&Progress>,
    ) -> Stats {
        let w = self.gen.w;
        let mut stats = Stats::default();
        let pipeline = match issue {
            Issue::Prefill(_) => PREFILL_PIPELINE_DEPTH,
            _ => w.pipeline as usize,
        };
        // Closed loop sends each request when it is due, so the service histogram would repeat
        // the latency one: it is kept for open loop only.
        let open_loop = matches!(issue, Issue::Open { .. });
        let mut issued_measured = 0u64;
        let mut stopped_at: Option<Instant> = None;
        loop {
            let now = Instant::now();
            // 1. Issue.
            let budget_left = |issued: u64| budget.is_none_or(|b| issued < b);
            for (ci, conn) in self.conns.iter_mut().enumerate() {
                if conn.dead || conn.done {
                    continue;
                }
                match &mut issue {
                    Issue::Prefill(cursors) => {
                        let cur = &mut cursors[ci];
                        while conn.inflight.len() < pipeline {
                            let enc = Encoder {
                                keys: &self.gen.kf,
                                ttl_s: w.ttl_s,
                            };
                            let (key, counter) = if cur.next < cur.end {
                                cur.next += 1;
                                (cur.next - 1, false)
                            } else if cur.counter_next < cur.counter_end {
                                cur.counter_next += 1;
                                (cur.counter_next - 1, true)
                            } else {
                                conn.done = true;
                                break;
                            };
                            if counter {
                                enc.set_counter(&mut conn.wbuf, key);
                            } else {
                                let len = w.value_size.sample(&mut self.gen.rng);
                                enc.set(&mut conn.wbuf, key, 0, len);
                            }
                            conn.keys.push_back(key);
                            conn.inflight.push_back(InFlight {
                                cmd: Cmd::Set,
                                nkeys: 1,
                                intended: now,
                                sent: now,
                                measured: false,
                            });
                        }
                    }
                    Issue::Closed => {
                        while conn.inflight.len() < pipeline {
                            let measured = now >= plan.warmup_end;
                            if plan.end.is_some_and(|e| now >= e)
                                || (measured && !budget_left(issued_measured))
                            {
                                conn.done = true;
                                break;
                            }
                            issued_measured += measured as u64;
                            let cmd = self.gen.pick_cmd();
                            let nkeys = self.gen.encode(conn, cmd);
                            conn.inflight.push_back(InFlight {
                                cmd,
                                nkeys,
                                intended: now,
                                sent: now,
                                measured,
                            });
                        }
                    }
                    Issue::Open { interval } => {
                        while conn.next_due <= now && conn.inflight.len() < pipeline {
                            let due = conn.next_due;
                            let measured = due >= plan.warmup_end;
                            if plan.end.is_some_and(|e| due >= e)
                                || (measured && !budget_left(issued_measured))
                            {
                                conn.done = true;
                                break;
                            }
                            issued_measured += measured as u64;
                            conn.next_due += *interval;
                            let cmd = self.gen.pick_cmd();
                            let nkeys = self.gen.encode(conn, cmd);
                            conn.inflight.push_back(InFlight {
                                cmd,
                                nkeys,
                                intended: due,
                                sent: now,
                                measured,
                            });
                            if measured {
                                stats
                                    .send_lag
                                    .saturating_record((now - due).as_nanos() as u64);
                            }
                        }
                        // A connection whose next slot lies past the end is finished even if it
                        // is idle right now.
                        if plan.end.is_some_and(|e| conn.next_due >= e)
                            || (due_is_measured(conn.next_due, plan)
                                && !budget_left(issued_measured))
                        {
                            conn.done = true;
                        }
                    }
                }
                if conn.wpos < conn.wbuf.len() {
                    flush(conn, &mut stats, &w.servers);
                }
            }
            // 2. Finished?
            let all_idle = self
                .conns
                .iter()
                .all(|c| c.dead || (c.done && c.inflight.is_empty()));
            if all_idle {
                break;
            }
            let issuing_over = self.conns.iter().all(|c| c.dead || c.done);
            if issuing_over && stopped_at.is_none() {
                stopped_at = Some(now);
            }
            // Open loop: the sender may lag its schedule; give the backlog one timeout to drain.
            let drain_deadline = match (&issue, plan.end) {
                (Issue::Open { .. }, Some(e)) => Some(e.max(stopped_at.unwrap_or(e)) + w.timeout),
                _ => stopped_at.map(|t| t + w.timeout),
            };
            if drain_deadline.is_some_and(|d| now >= d) {
                for i in 0..self.conns.len() {
                    if let Issue::Open { interval } = &issue {
                        let c = &mut self.conns[i];
                        if !c.dead && !c.done {
                            if let Some(e) = plan.end {
                                let left = e.saturating_duration_since(c.next_due);
                                stats.unsent +=
                                    (left.as_secs_f64() / interval.as_secs_f64()).ceil() as u64;
                            }
                        }
                    }
                    if !self.conns[i].inflight.is_empty() {
                        let msg = format!(
                            "{}: {} requests unanswered {:?} after the run ended",
                            w.servers[self.conns[i].server],
                            self.conns[i].inflight.len(),
                            w.timeout
                        );
                        kill(&mut self.conns[i], &mut stats, msg);
                    }
                }
                break;
            }
            // 3. Wait for replies or the next send slot.
            let mut sleep = POLL_SLEEP_MAX;
            match &issue {
                Issue::Closed => {
                    if let Some(e) = plan.end {
                        sleep = sleep.min(e.saturating_duration_since(now));
                    }
                }
                Issue::Open { .. } => {
                    for c in self.conns.iter().filter(|c| !c.dead && !c.done) {
                        if c.inflight.len() < pipeline {
                            sleep = sleep.min(c.next_due.saturating_duration_since(now));
                        }
                    }
                    sleep = if sleep < SPIN_BELOW {
                        Duration::ZERO
                    } else {
                        sleep - Duration::from_millis(1)
                    };
                }
                Issue::Prefill(_) => {}
            }
            if let Err(e) = self.poll.poll(&mut self.events, Some(sleep)) {
                if e.kind() != ErrorKind::Interrupted {
                    for c in &mut self.conns {
                        kill(c, &mut stats, format!("poll failed: {e}"));
                    }
                    break;
                }
            }
            let now = Instant::now();
            for ev in self.events.iter() {
                let conn = &mut self.conns[ev.token().0];
                if conn.dead {
                    continue;
                }
                if ev.is_writable() && conn.wpos < conn.wbuf.len() {
                    flush(conn, &mut stats, &w.servers);
                }
                if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                    read_replies(
                        conn,
                        &self.gen.kf,
                        &mut self.scratch,
                        &mut self.spans,
                        open_loop,
                        &mut stats,
                        plan,
                        now,
                        &w.servers,
                    );
                }
            }
            // 4. Per-request timeout: the oldest request of each connection.
            for c in self.conns.iter_mut().filter(|c| !c.dead) {
                if let Some(f) = c.inflight.front() {
                    if now.saturating_duration_since(f.sent) > w.timeout {
                        let msg = format!(
                            "{}: no reply to {} within {:?}",
                            w.servers[c.server],
                            f.cmd.name(),
                            w.timeout
                        );
                        kill(c, &mut stats, msg);
                    }
                }
            }
            if let Some(p) = progress {
                let t = stats.total();
                p.requests
                    .store(t.requests + stats.unmeasured, Ordering::Relaxed);
                p.errors.store(t.errors, Ordering::Relaxed);
                p.misses.store(t.misses, Ordering::Relaxed);
                p.mismatches.store(stats.mismatches, Ordering::Relaxed);
                p.timeouts.store(stats.timeouts, Ordering::Relaxed);
            }
        }
        if let Some(p) = progress {
            let t = stats.total();
            p.requests
                .store(t.requests + stats.unmeasured, Ordering::Relaxed);
        }
        stats
    }
}

fn due_is_measured(due: Instant, plan: &Plan) -> bool {
    due >= plan.warmup_end
}

fn kill(conn: &mut Conn, stats: &mut Stats, msg: String) {
    if conn.dead {
        return;
    }
    stats.timeouts += conn.inflight.len() as u64;
    stats.connection_errors.push(msg);
    conn.inflight.clear();
    conn.keys.clear();
    conn.dead = true;
    conn.done = true;
}

fn flush(conn: &mut Conn, stats: &mut Stats, servers: &[String]) {
    while conn.wpos < conn.wbuf.len() {
        match conn.stream.write(&conn.wbuf[conn.wpos..]) {
            Ok(0) => {
                kill(
                    conn,
                    stats,
                    format!("{}: connection closed on write", servers[conn.server]),
                );
                return;
            }
            Ok(n) => conn.wpos += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => {
                kill(
                    conn,
                    stats,
                    format!("{}: write failed: {e}", servers[conn.server]),
                );
                return;
            }
        }
    }
    if conn.wpos == conn.wbuf.len() {
        conn.wbuf.clear();
        conn.wpos = 0;
    }
}

#[allow(clippy::too_many_arguments)]
fn read_replies(
    conn: &mut Conn,
    kf: &KeyFormat,
    scratch: &mut Vec<u8>,
    spans: &mut Vec<ValueSpan>,
    open_loop: bool,
    stats: &mut Stats,
    plan: &Plan,
    now: Instant,
    servers: &[String],
) {
    let server = &servers[conn.server];
    // Edge-triggered: read until the socket is empty.
    let mut eof = None;
    loop {
        if conn.rbuf.len() - conn.rlen < READ_BUFFER_INITIAL / 4 {
            if conn.rbuf.len() >= READ_BUFFER_MAX {
                kill(
                    conn,
                    stats,
                    format!("{server}: reply larger than {READ_BUFFER_MAX} bytes"),
                );
                return;
            }
            let n = conn.rbuf.len() * 2;
            conn.rbuf.resize(n, 0);
        }
        let room = conn.rbuf.len() - conn.rlen;
        match conn.stream.read(&mut conn.rbuf[conn.rlen..]) {
            Ok(0) => {
                eof = Some("connection closed by the server".to_string());
                break;
            }
            Ok(n) => {
                conn.rlen += n;
                // A short read emptied the socket; bytes arriving later raise a new edge, so the
                // extra read that would only return WouldBlock is skipped (one syscall per reply
                // batch instead of two).
                if n < room {
                    break;
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => {
                eof = Some(format!("read failed: {e}"));
                break;
            }
        }
    }
    let mut pos = 0;
    while pos < conn.rlen {
        let Some(req) = conn.inflight.front() else {
            let msg = format!(
                "{server}: {} bytes of reply nobody asked for",
                conn.rlen - pos
            );
            kill(conn, stats, msg);
            return;
        };
        let cmd = req.cmd;
        let nkeys = req.nkeys as usize;
        let reply = match parse_reply_spans(&conn.rbuf[pos..conn.rlen], cmd, spans) {
            Ok(None) => break,
            Err(e) => {
                kill(conn, stats, format!("{server}: protocol error: {e}"));
                return;
            }
            Ok(Some(reply)) => reply,
        };
        // Check every value: it answers a requested key (replies keep request order; a multi-get
        // skips misses) and is intact.
        let buf = &conn.rbuf[pos..pos + reply.consumed];
        let mut next_key = 0usize;
        for v in spans.iter() {
            stats.values_checked += 1;
            let (key, data) = (&buf[v.key.0..v.key.1], &buf[v.data.0..v.data.1]);
            let idx = if cmd == Cmd::Mg {
                conn.keys[0]
            } else {
                let mut found = None;
                while next_key < nkeys {
                    let k = conn.keys[next_key];
                    next_key += 1;
                    scratch.clear();
                    kf.write_key(scratch, k, false);
                    if scratch.as_slice() == key {
                        found = Some(k);
                        break;
                    }
                }
                match found {
                    Some(k) => k,
                    None => {
                        stats.mismatch(format!(
                            "{server}: {} returned key {:?} that was not asked for (or out of order)",
                            cmd.name(),
                            String::from_utf8_lossy(key)
                        ));
                        continue;
                    }
                }
            };
            if let Err(e) = verify_value(data, idx) {
                scratch.clear();
                kf.write_key(scratch, idx, false);
                stats.mismatch(format!(
                    "{server}: {} {}: {e}",
                    cmd.name(),
                    String::from_utf8_lossy(scratch)
                ));
            }
        }
        if reply.outcome == Outcome::ErrorReply {
            let line = &conn.rbuf[pos..pos + reply.consumed];
            let line = String::from_utf8_lossy(line.trim_ascii_end()).into_owned();
            stats.error_reply(format!("{server}: {} -> {line}", cmd.name()));
        }
        pos += reply.consumed;
        let req = conn.inflight.pop_front().expect("front exists");
        conn.keys.drain(..nkeys);
        if req.measured {
            let c = &mut stats.counters[cmd.index()];
            c.requests += 1;
            match reply.outcome {
                Outcome::Values(n) => {
                    c.hits += n as u64;
                    c.misses += (nkeys as u64).saturating_sub(n as u64);
                }
                Outcome::Stored | Outcome::Deleted | Outcome::Number(_) => c.hits += 1,
                Outcome::NotFound => c.misses += 1,
                Outcome::NotStored | Outcome::ErrorReply => c.errors += 1,
            }
            stats.record_latency(cmd, (now - req.intended).as_nanos() as u64);
            if open_loop {
                stats
                    .service
                    .saturating_record((now - req.sent).as_nanos().max(1) as u64);
            }
            let elapsed = now.saturating_duration_since(plan.warmup_end);
            stats.count_completion(elapsed.as_millis() as u64);
        } else {
            // Warm-up and prefill: checked for correct data, but not in the results.
            stats.unmeasured += 1;
            if matches!(reply.outcome, Outcome::NotStored | Outcome::ErrorReply) {
                stats.unmeasured_errors += 1;
            }
        }
    }
    if pos > 0 {
        conn.rbuf.copy_within(pos..conn.rlen, 0);
        conn.rlen -= pos;
    }
    if let Some(why) = eof {
        kill(conn, stats, format!("{server}: {why}"));
    }
}
