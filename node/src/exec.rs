//! Command semantics between the protocol and the engines: a [`Round`] takes the requests parsed
//! from one read, turns each into engine ops routed to the owning shards, and writes the replies
//! in request order once the ops are done.

use std::rc::Rc;

use futures_lite::AsyncWrite;

use crate::engine::{
    self, ConnRow, Member, MemberChange, Op, OpResult, PartitionRow, Pending, StatsGroup, StoreMode,
};
use crate::protocol::{reply, MemberCmd, Request, StoreCmd};
use crate::replica::placed::TableRoute;
use crate::shard::{Counters, Shard};

/// Where one op of a request runs.
enum Part {
    Done(OpResult),
    /// This shard's statistics, read when the reply is written so that the counters of the
    /// requests before `stats` in the same pipeline are included.
    LocalStats(StatsGroup),
    Local(Pending),
    /// A local op that waits (a device read, a Raft commit): index into the round's waits.
    Waiting(usize),
    /// Index into the batch sent to `dest`.
    Remote {
        dest: usize,
        idx: usize,
    },
}

enum Slot<'a> {
    Bytes(&'static [u8]),
    /// Ops whose results nobody is told (the unlink after a refused value).
    Silent(Vec<Part>),
    Req {
        req: Request<'a>,
        parts: Vec<Part>,
    },
}

/// The requests of one read, dispatched together.
pub struct Round<'a> {
    slots: Vec<Slot<'a>>,
    remote: Vec<(usize, Vec<Op>)>,
    now: u32,
}

pub const VERSION: &str = concat!("1.6.18-keel-", env!("CARGO_PKG_VERSION"));

impl<'a> Round<'a> {
    pub fn new(now: u32) -> Round<'a> {
        Round {
            slots: Vec::new(),
            remote: Vec::new(),
            now,
        }
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    pub fn push_bytes(&mut self, b: &'static [u8]) {
        self.slots.push(Slot::Bytes(b));
    }

    pub fn unlink(&mut self, shard: &Shard, key: &[u8]) {
        let part = self.route(
            shard,
            Op::Delete {
                key: key.to_vec(),
                cas: None,
                invalidate: None,
            },
        );
        self.slots.push(Slot::Silent(vec![part]));
    }

    fn route(&mut self, shard: &Shard, op: Op) -> Part {
        match shard.replicas.table_route(&op) {
            None => {}
            Some(TableRoute::Answer(r)) => return Part::Done(r),
            Some(TableRoute::Read { shard: dest, op }) if dest == shard.id => {
                return Part::Local(shard.start_local(op, self.now))
            }
            Some(TableRoute::Read { shard: dest, op }) => return self.send(dest, op),
        }
        let dest = op.key().map_or(shard.id, |k| shard.shard_of(k));
        if dest == shard.id {
            return Part::Local(shard.start_local(op, self.now));
        }
        self.send(dest, op)
    }

    /// Queues `op` in the batch for shard `dest`.
    fn send(&mut self, dest: usize, op: Op) -> Part {
        let i = match self.remote.iter().position(|(d, _)| *d == dest) {
            Some(i) => i,
            None => {
                self.remote.push((dest, Vec::new()));
                self.remote.len() - 1
            }
        };
        let batch = &mut self.remote[i].1;
        batch.push(op);
        Part::Remote {
            dest,
            idx: batch.len() - 1,
        }
    }

    /// An op for every shard (flush_all, stats, membership).
    fn broadcast(&mut self, shard: &Shard, make: impl Fn() -> Op) -> Vec<Part> {
        let first = match make() {
            Op::Stats(g) => Part::LocalStats(g),
            op => Part::Local(shard.start_local(op, self.now)),
        };
        let mut parts = vec![first];
        for dest in (0..shard.nshards).filter(|&d| d != shard.id) {
            parts.push(self.send(dest, make()));
        }
        parts
    }

    /// Starts `req`'s ops. Local ops take effect now; remote ones when `finish` sends them, in
    /// the same order, so two requests on one key from one connection keep their order.
    pub fn dispatch(&mut self, shard: &Shard, req: Request<'a>) {
        let parts = match &req {
            Request::Get { keys, touch, .. } => keys
                .iter()
                .map(|k| {
                    self.route(
                        shard,
                        Op::Get {
                            key: k.to_vec(),
                            touch: *touch,
                            vivify: None,
                            recache: None,
                            want_value: true,
                            bump: true,
                        },
                    )
                })
                .collect(),
            Request::Store {
                cmd,
                key,
                flags,
                exptime,
                cas,
                data,
                ..
            } => {
                // `cas` compares even with 0, which matches nothing (memcached: EXISTS).
                let (mode, cas) = match cmd {
                    StoreCmd::Set => (StoreMode::Set, None),
                    StoreCmd::Add => (StoreMode::Add, None),
                    StoreCmd::Replace => (StoreMode::Replace, None),
                    StoreCmd::Append => (StoreMode::Append, None),
                    StoreCmd::Prepend => (StoreMode::Prepend, None),
                    StoreCmd::Cas => (StoreMode::Set, Some(*cas)),
                };
                let op = Op::Store {
                    mode,
                    key: key.to_vec(),
                    flags: *flags,
                    exptime: *exptime,
                    cas,
                    data: data.to_vec(),
                    invalidate: false,
                };
                vec![self.route(shard, op)]
            }
            Request::Delete { key, .. } => vec![self.route(
                shard,
                Op::Delete {
                    key: key.to_vec(),
                    cas: None,
                    invalidate: None,
                },
            )],
            Request::Arith {
                incr, key, delta, ..
            } => vec![self.route(
                shard,
                Op::Arith {
                    key: key.to_vec(),
                    incr: *incr,
                    delta: *delta,
                    cas: 0,
                    vivify: None,
                    touch: None,
                },
            )],
            Request::Touch { key, exptime, .. } => vec![self.route(
                shard,
                Op::Touch {
                    key: key.to_vec(),
                    exptime: *exptime,
                },
            )],
            Request::FlushAll { delay, .. } => {
                let delay = *delay;
                self.broadcast(shard, || Op::FlushAll { delay })
            }
            Request::Stats { group, .. } => match stats_group(*group) {
                Some(g) => self.broadcast(shard, || Op::Stats(g)),
                None => Vec::new(),
            },
            Request::Version
            | Request::Verbosity { .. }
            | Request::Quit
            | Request::AdminAuth { .. } => Vec::new(),
            Request::Member(MemberCmd::List) => self.broadcast(shard, || Op::Members),
            Request::Member(cmd) => {
                let change = match *cmd {
                    MemberCmd::Add { node, addr } => MemberChange::AddLearner { node, addr },
                    MemberCmd::Promote(node) => MemberChange::Promote { node },
                    MemberCmd::Remove(node) => MemberChange::Remove { node },
                    MemberCmd::List => unreachable!("matched above"),
                };
                self.broadcast(shard, || Op::Member(change.clone()))
            }
            Request::Meta(m) => match crate::meta::to_op(m) {
                Ok(Some(op)) => vec![self.route(shard, op)],
                Ok(None) => Vec::new(),
                Err(e) => vec![Part::Done(e)],
            },
        };
        self.slots.push(Slot::Req { req, parts });
    }

    /// Sends the remote batches, waits for every op, and renders the replies in order into
    /// `out`, which is written to `stream` whenever it holds [`REPLY_FLUSH_BYTES`] (a pipeline
    /// of gets for large values costs a bounded buffer, not their sum); the rest is the
    /// caller's to write. Every op of the round is waited for at once: the device reads of a
    /// multi-get's uncached values (and of a pipeline's gets) are in flight together.
    pub async fn finish(
        mut self,
        shard: &Rc<Shard>,
        stream: &mut (impl AsyncWrite + Unpin),
        out: &mut Vec<u8>,
    ) -> std::io::Result<()> {
        let now = self.now;
        let mut waits = Vec::new();
        for slot in &mut self.slots {
            let (Slot::Silent(parts) | Slot::Req { parts, .. }) = slot else {
                continue;
            };
            for part in parts.iter_mut() {
                if matches!(part, Part::Local(Pending::Later(_))) {
                    let Part::Local(p) = std::mem::replace(part, Part::Waiting(waits.len())) else {
                        unreachable!("matched above")
                    };
                    waits.push(engine::resolve(p));
                }
            }
        }
        let calls = self
            .remote
            .into_iter()
            .map(|(dest, ops)| async move { (dest, shard.call(dest, ops, now).await) });
        let (remote, waited) = futures::join!(
            futures::future::join_all(calls),
            futures::future::join_all(waits)
        );
        let mut remote: Vec<(usize, Vec<Option<OpResult>>)> = remote
            .into_iter()
            .map(|(d, r)| (d, r.into_iter().map(Some).collect()))
            .collect();
        let mut waited: Vec<Option<OpResult>> = waited.into_iter().map(Some).collect();
        for slot in self.slots {
            match slot {
                Slot::Bytes(b) => out.extend_from_slice(b),
                Slot::Silent(_) => {}
                Slot::Req { req, parts } => {
                    let mut results = Vec::with_capacity(parts.len());
                    for p in parts {
                        results.push(match p {
                            Part::Done(r) | Part::Local(Pending::Ready(r)) => r,
                            Part::Local(Pending::Later(_)) => unreachable!("waited above"),
                            Part::Waiting(i) => waited[i].take().expect("each wait taken once"),
                            Part::LocalStats(g) => {
                                shard.resolve(shard.start_local(Op::Stats(g), now)).await
                            }
                            Part::Remote { dest, idx } => remote
                                .iter_mut()
                                .find(|(d, _)| *d == dest)
                                .and_then(|(_, v)| v[idx].take())
                                .expect("every remote op answered once"),
                        });
                    }
                    render(shard, &req, results, self.now, out);
                    if out.len() >= REPLY_FLUSH_BYTES {
                        crate::conn::write_replies(shard, stream, out).await?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// Reply bytes a round holds before it writes them out.
pub const REPLY_FLUSH_BYTES: usize = 256 << 10;

fn server_error(out: &mut Vec<u8>, msg: &str) {
    out.extend_from_slice(b"SERVER_ERROR ");
    out.extend_from_slice(msg.as_bytes());
    out.extend_from_slice(b"\r\n");
}

fn client_error(out: &mut Vec<u8>, msg: &str) {
    out.extend_from_slice(b"CLIENT_ERROR ");
    out.extend_from_slice(msg.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Replies common to the storage commands. Errors are written even under noreply, as memcached
/// does; normal replies are not.
fn simple(out: &mut Vec<u8>, r: &OpResult, noreply: bool) {
    let line: &[u8] = match r {
        OpResult::Stored { .. } => b"STORED\r\n",
        OpResult::NotStored => b"NOT_STORED\r\n",
        OpResult::Exists => b"EXISTS\r\n",
        OpResult::NotFound => b"NOT_FOUND\r\n",
        OpResult::Deleted => b"DELETED\r\n",
        OpResult::Touched => b"TOUCHED\r\n",
        OpResult::Ok => b"OK\r\n",
        OpResult::TooLarge => {
            return out.extend_from_slice(b"SERVER_ERROR object too large for cache\r\n")
        }
        OpResult::ServerError(m) => return server_error(out, m),
        OpResult::ClientError(m) => return client_error(out, m),
        OpResult::NonNumeric => {
            return out.extend_from_slice(
                b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n",
            )
        }
        OpResult::Number { value, .. } => {
            if !noreply {
                reply::number(out, *value);
            }
            return;
        }
        OpResult::Hit(_)
        | OpResult::Miss
        | OpResult::Stats(_)
        | OpResult::Latency(_)
        | OpResult::Conns(_)
        | OpResult::Members(_)
        | OpResult::Partitions(_) => b"SERVER_ERROR unexpected result\r\n",
    };
    if !noreply {
        out.extend_from_slice(line);
    }
}

fn render(shard: &Shard, req: &Request<'_>, results: Vec<OpResult>, now: u32, out: &mut Vec<u8>) {
    let c = &shard.counters;
    match req {
        Request::Get { keys, cas, touch } => {
            render_get(c, keys, *cas, touch.is_some(), results, out)
        }
        Request::Store { cmd, noreply, .. } => {
            let r = &results[0];
            Counters::add(&c.cmd_set, 1);
            if *cmd == StoreCmd::Cas {
                match r {
                    OpResult::Stored { .. } => Counters::add(&c.cas_hits, 1),
                    OpResult::Exists => Counters::add(&c.cas_badval, 1),
                    OpResult::NotFound => Counters::add(&c.cas_misses, 1),
                    _ => {}
                }
            }
            simple(out, r, *noreply);
        }
        Request::Delete { noreply, .. } => {
            let r = &results[0];
            match r {
                OpResult::Deleted => Counters::add(&c.delete_hits, 1),
                _ => Counters::add(&c.delete_misses, 1),
            }
            simple(out, r, *noreply);
        }
        Request::Arith { incr, noreply, .. } => {
            let r = &results[0];
            let (hits, misses) = if *incr {
                (&c.incr_hits, &c.incr_misses)
            } else {
                (&c.decr_hits, &c.decr_misses)
            };
            match r {
                OpResult::Number { .. } => Counters::add(hits, 1),
                OpResult::NotFound => Counters::add(misses, 1),
                _ => {}
            }
            simple(out, r, *noreply);
        }
        Request::Touch { noreply, .. } => {
            Counters::add(&c.cmd_touch, 1);
            let r = &results[0];
            match r {
                OpResult::Touched => Counters::add(&c.touch_hits, 1),
                _ => Counters::add(&c.touch_misses, 1),
            }
            simple(out, r, *noreply);
        }
        Request::FlushAll { noreply, .. } => {
            Counters::add(&c.cmd_flush, 1);
            let failed = results.iter().find(|r| !matches!(r, OpResult::Ok));
            match failed {
                Some(r) => simple(out, r, false),
                None if !noreply => out.extend_from_slice(b"OK\r\n"),
                None => {}
            }
        }
        Request::Version => reply::version(out, VERSION.as_bytes()),
        Request::Verbosity { noreply, .. } => {
            if !noreply {
                out.extend_from_slice(b"OK\r\n");
            }
        }
        Request::Stats { group: None, .. } => render_stats(shard, results, now, out),
        Request::Stats { group: Some(g), .. } => match *g {
            b"latency" => render_latency(results, out),
            b"conns" => render_conns(results, out),
            b"partitions" => render_partitions(results, out),
            b"items" => render_items(results, out),
            b"settings" => {
                for (name, value) in &shard.settings {
                    reply::stat(out, name.as_bytes(), value.as_bytes());
                }
                out.extend_from_slice(b"END\r\n");
            }
            // Groups memcached knows but whose slab-allocator figures Keel does not have.
            b"slabs" | b"sizes" => out.extend_from_slice(b"END\r\n"),
            b"reset" => out.extend_from_slice(b"RESET\r\n"),
            _ => out.extend_from_slice(b"ERROR\r\n"),
        },
        Request::Quit | Request::AdminAuth { .. } => {}
        Request::Meta(m) => crate::meta::render(shard, m, results, now, out),
        Request::Member(MemberCmd::List) => render_members(results, out),
        Request::Member(_) => match results.iter().find(|r| !matches!(r, OpResult::Ok)) {
            Some(r) => simple(out, r, false),
            None => out.extend_from_slice(b"OK\r\n"),
        },
    }
}

/// get/gets/gat/gats: a VALUE per hit in key order, then END. A failed key (a storage failure,
/// no leader) ends the reply at its SERVER_ERROR line with no END, as memcached's failed get
/// does; the VALUEs before it stand.
fn render_get(
    c: &Counters,
    keys: &[&[u8]],
    cas: bool,
    touch: bool,
    results: Vec<OpResult>,
    out: &mut Vec<u8>,
) {
    for (key, r) in keys.iter().zip(results) {
        Counters::add(&c.cmd_get, 1);
        if touch {
            Counters::add(&c.cmd_touch, 1);
        }
        match r {
            OpResult::Hit(item) => {
                Counters::add(&c.get_hits, 1);
                if touch {
                    Counters::add(&c.touch_hits, 1);
                }
                reply::value(out, key, item.flags, &item.value, cas.then_some(item.cas));
            }
            OpResult::ServerError(m) => return server_error(out, &m),
            OpResult::ClientError(m) => return client_error(out, &m),
            _ => {
                Counters::add(&c.get_misses, 1);
                if touch {
                    Counters::add(&c.touch_misses, 1);
                }
            }
        }
    }
    out.extend_from_slice(b"END\r\n");
}

/// `MEMBER <id> <peer addr or -> voter <partitions> learner <partitions>` per node, as the
/// partitions of this node see them, then `END`.
fn render_members(results: Vec<OpResult>, out: &mut Vec<u8>) {
    let mut all: Vec<Member> = Vec::new();
    for r in results {
        match r {
            OpResult::Members(v) => {
                for m in v {
                    match all.iter_mut().find(|a| a.node == m.node) {
                        Some(a) => {
                            a.voter_in += m.voter_in;
                            a.learner_in += m.learner_in;
                            a.addr = a.addr.or(m.addr);
                        }
                        None => all.push(m),
                    }
                }
            }
            other => return simple(out, &other, false),
        }
    }
    all.sort_by_key(|m| m.node);
    for m in all {
        let addr = m.addr.map_or("-".to_string(), |a| a.to_string());
        out.extend_from_slice(
            format!(
                "MEMBER {} {addr} voter {} learner {}\r\n",
                m.node, m.voter_in, m.learner_in
            )
            .as_bytes(),
        );
    }
    out.extend_from_slice(b"END\r\n");
}

/// What every shard asks its peers for to answer `stats <group>`; `None`: nothing (the group is
/// answered from this shard alone, or is unknown).
fn stats_group(group: Option<&[u8]>) -> Option<StatsGroup> {
    match group {
        None | Some(b"items") => Some(StatsGroup::General),
        Some(b"latency") => Some(StatsGroup::Latency),
        Some(b"conns") => Some(StatsGroup::Conns),
        Some(b"partitions") => Some(StatsGroup::Partitions),
        Some(_) => None,
    }
}

/// Stats that are the same kind of figure on every shard (not a share of a total): the node's
/// is the highest shard's.
const MAX_OVER_SHARDS: &[&str] = &["keel_placement_epoch"];

/// The shards' counters of plain `stats`, summed (wrapping), in the first shard's order.
fn sum_stats(results: Vec<OpResult>) -> Vec<(&'static str, u64)> {
    let mut sums: Vec<(&'static str, u64)> = Vec::new();
    for r in results {
        if let OpResult::Stats(v) = r {
            for (name, val) in v {
                match sums.iter_mut().find(|(n, _)| *n == name) {
                    Some((_, s)) if MAX_OVER_SHARDS.contains(&name) => *s = (*s).max(val),
                    Some((_, s)) => *s = s.wrapping_add(val),
                    None => sums.push((name, val)),
                }
            }
        }
    }
    sums
}

/// `stats latency`: every shard's histograms merged (see [`crate::latency::render`]).
fn render_latency(results: Vec<OpResult>, out: &mut Vec<u8>) {
    let mut all = crate::latency::Report::default();
    for r in results {
        if let OpResult::Latency(rep) = r {
            all.merge(&rep);
        }
    }
    crate::latency::render(&all, out);
}

/// `stats partitions` (Keel's own): per partition this node hosts, by id, `<p>:role`,
/// `<p>:term`, `<p>:applied`, `<p>:keys` and `<p>:digest` (equal on every replica of the
/// partition once they have applied the same entries).
fn render_partitions(results: Vec<OpResult>, out: &mut Vec<u8>) {
    let mut rows: Vec<PartitionRow> = Vec::new();
    for r in results {
        if let OpResult::Partitions(v) = r {
            rows.extend(v);
        }
    }
    rows.sort_by_key(|r| r.partition);
    for r in rows {
        let p = r.partition;
        reply::stat(out, format!("{p}:role").as_bytes(), r.role.as_bytes());
        reply::stat_u64(out, format!("{p}:term").as_bytes(), r.term);
        reply::stat_u64(out, format!("{p}:applied").as_bytes(), r.applied);
        reply::stat_u64(out, format!("{p}:keys").as_bytes(), r.keys);
        reply::stat_u64(out, format!("{p}:digest").as_bytes(), r.digest);
    }
    out.extend_from_slice(b"END\r\n");
}

/// `stats conns`, as memcached 1.6.18 shapes it: per open client connection, by descriptor,
/// `<fd>:addr`, `<fd>:listen_addr`, `<fd>:state` and `<fd>:secs_since_last_cmd`. memcached also
/// lists its listening sockets; Keel's (one per shard) are not listed.
fn render_conns(results: Vec<OpResult>, out: &mut Vec<u8>) {
    let mut rows: Vec<ConnRow> = Vec::new();
    for r in results {
        if let OpResult::Conns(v) = r {
            rows.extend(v);
        }
    }
    rows.sort_by_key(|c| c.fd);
    for c in rows {
        let fd = c.fd;
        reply::stat(
            out,
            format!("{fd}:addr").as_bytes(),
            format!("tcp:{}", c.addr).as_bytes(),
        );
        reply::stat(
            out,
            format!("{fd}:listen_addr").as_bytes(),
            format!("tcp:{}", c.listen_addr).as_bytes(),
        );
        reply::stat(out, format!("{fd}:state").as_bytes(), c.state.as_bytes());
        reply::stat_u64(
            out,
            format!("{fd}:secs_since_last_cmd").as_bytes(),
            c.secs_since_last_cmd as u64,
        );
    }
    out.extend_from_slice(b"END\r\n");
}

/// `stats items`: Keel has no slab classes, so every item is in "class 1"; only the figures
/// Keel keeps are printed (memcached's LRU-segment and crawler figures do not exist here).
fn render_items(results: Vec<OpResult>, out: &mut Vec<u8>) {
    let sums = sum_stats(results);
    let get = |k: &str| sums.iter().find(|(n, _)| *n == k).map_or(0, |(_, v)| *v);
    let items = get("curr_items");
    if items > 0 {
        reply::stat_u64(out, b"items:1:number", items);
        reply::stat_u64(out, b"items:1:mem_requested", get("bytes"));
        // Values live on the device: nothing is evicted for memory.
        reply::stat_u64(out, b"items:1:evicted", 0);
        reply::stat_u64(out, b"items:1:outofmemory", 0);
        reply::stat_u64(out, b"items:1:expired_unfetched", get("expired_unfetched"));
    }
    out.extend_from_slice(b"END\r\n");
}

fn render_stats(shard: &Shard, results: Vec<OpResult>, now: u32, out: &mut Vec<u8>) {
    let sums = sum_stats(results);
    let (user, system) = rusage();
    reply::stat_u64(out, b"pid", std::process::id() as u64);
    reply::stat_u64(out, b"uptime", shard.started.elapsed().as_secs());
    reply::stat_u64(out, b"time", now as u64);
    reply::stat(out, b"version", VERSION.as_bytes());
    reply::stat_u64(out, b"pointer_size", 64);
    reply::stat(
        out,
        b"rusage_user",
        format!("{}.{:06}", user / 1_000_000, user % 1_000_000).as_bytes(),
    );
    reply::stat(
        out,
        b"rusage_system",
        format!("{}.{:06}", system / 1_000_000, system % 1_000_000).as_bytes(),
    );
    reply::stat_u64(out, b"threads", shard.nshards as u64);
    for (name, val) in sums {
        reply::stat_u64(out, name.as_bytes(), val);
    }
    out.extend_from_slice(b"END\r\n");
}

/// (user, system) CPU microseconds of the process.
fn rusage() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = text.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = after
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // Fields 14 and 15 (utime, stime) in clock ticks; after the ')' they are at 11 and 12.
    let tick = 100u64; // USER_HZ on Linux
    let get = |i: usize| f.get(i).copied().unwrap_or(0) * 1_000_000 / tick;
    (get(11), get(12))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::engine::Item;

    fn hit(v: &[u8]) -> OpResult {
        OpResult::Hit(Item {
            flags: 3,
            exptime: 0,
            cas: 9,
            value: Arc::from(v),
            value_len: v.len() as u32,
            stale: false,
            win: false,
            already_won: false,
            fetched: false,
            idle_s: 0,
        })
    }

    /// A new user saw `SERVER_ERROR ...` followed by `END` for a failed get; memcached 1.6.18
    /// ends a failed get at the error line, so a client reading its reply would take that END
    /// as the answer to its next request.
    #[test]
    fn a_failed_get_ends_at_its_error_line() {
        let c = Counters::default();
        let mut out = Vec::new();
        let results = vec![
            hit(b"x"),
            OpResult::ServerError("no leader; retry".into()),
            hit(b"y"),
        ];
        render_get(&c, &[b"a", b"b", b"c"], false, false, results, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "VALUE a 3 1\r\nx\r\nSERVER_ERROR no leader; retry\r\n"
        );
        let mut out = Vec::new();
        render_get(
            &c,
            &[b"a", b"b"],
            true,
            false,
            vec![hit(b"x"), OpResult::Miss],
            &mut out,
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "VALUE a 3 1 9\r\nx\r\nEND\r\n"
        );
    }
}
