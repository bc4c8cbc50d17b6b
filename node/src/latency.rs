//! Server-side latency: one HDR histogram per memcached command (from the moment a request is
//! parsed to the moment its reply is written to the socket) and per stage of the write path
//! (raftlog flush, Raft commit, apply, device read), in microseconds.
//!
//! Each shard records into its own histograms (a `RefCell`: shards are single-threaded, so the
//! hot path takes no lock and allocates nothing); `stats latency` and `/metrics` take a copy of
//! every shard's non-empty histograms over the shard mesh and merge them only then.

use std::cell::RefCell;
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::protocol::{MemberCmd, MetaCmd, Request, StoreCmd};

/// Longest latency tracked (60 s); longer ones are recorded as 60 s.
pub const LATENCY_US_MAX: u64 = 60_000_000;
/// Two significant digits: each value within 1%, about 20 KiB per histogram (three digits
/// would be ten times that, per command and per shard).
pub const SIGNIFICANT_DIGITS: u8 = 2;

/// What a histogram times: a command (Prometheus label `command`) or a write-path stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Command,
    Stage,
}

macro_rules! timers {
    ($($id:ident = $name:literal $kind:ident,)*) => {
        /// Everything timed, in the order `stats latency` prints it.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        #[repr(u8)]
        pub enum Timer { $($id,)* }
        /// (name in `stats latency` and in the `command` label, kind) per [`Timer`].
        pub const TIMERS: &[(&str, Kind)] = &[$(($name, Kind::$kind),)*];
    };
}

timers! {
    Get = "get" Command,
    Gets = "gets" Command,
    Gat = "gat" Command,
    Gats = "gats" Command,
    Set = "set" Command,
    Add = "add" Command,
    Replace = "replace" Command,
    Append = "append" Command,
    Prepend = "prepend" Command,
    Cas = "cas" Command,
    Delete = "delete" Command,
    Incr = "incr" Command,
    Decr = "decr" Command,
    Touch = "touch" Command,
    FlushAll = "flush_all" Command,
    Mg = "mg" Command,
    Ms = "ms" Command,
    Md = "md" Command,
    Ma = "ma" Command,
    Mn = "mn" Command,
    Me = "me" Command,
    Stats = "stats" Command,
    Version = "version" Command,
    Verbosity = "verbosity" Command,
    Members = "members" Command,
    MemberAdd = "member_add" Command,
    MemberPromote = "member_promote" Command,
    MemberRemove = "member_remove" Command,
    // One write + fdatasync of a raftlog batch.
    RaftlogFlush = "raftlog_flush" Stage,
    // A write's Raft entry, from its proposal to its apply on this (the leader's) replica.
    RaftCommit = "raft_commit" Stage,
    // Applying one committed entry to the engine (with the disk read an op may wait for).
    RaftApply = "raft_apply" Stage,
    // One value-log read from the device (a cache miss).
    DeviceRead = "device_read" Stage,
}

const TIMERS_COUNT: usize = TIMERS.len();
const _: () = assert!(Timer::DeviceRead as usize == TIMERS_COUNT - 1);

impl Timer {
    /// The command a request is timed under (`quit` answers nothing, so it is not timed).
    pub fn of(req: &Request<'_>) -> Option<Timer> {
        Some(match req {
            Request::Get { cas, touch, .. } => match (touch.is_some(), *cas) {
                (false, false) => Timer::Get,
                (false, true) => Timer::Gets,
                (true, false) => Timer::Gat,
                (true, true) => Timer::Gats,
            },
            Request::Store { cmd, .. } => match cmd {
                StoreCmd::Set => Timer::Set,
                StoreCmd::Add => Timer::Add,
                StoreCmd::Replace => Timer::Replace,
                StoreCmd::Append => Timer::Append,
                StoreCmd::Prepend => Timer::Prepend,
                StoreCmd::Cas => Timer::Cas,
            },
            Request::Delete { .. } => Timer::Delete,
            Request::Arith { incr: true, .. } => Timer::Incr,
            Request::Arith { incr: false, .. } => Timer::Decr,
            Request::Touch { .. } => Timer::Touch,
            Request::FlushAll { .. } => Timer::FlushAll,
            Request::Version => Timer::Version,
            Request::Verbosity { .. } => Timer::Verbosity,
            Request::Stats { .. } => Timer::Stats,
            Request::Quit | Request::AdminAuth { .. } => return None,
            Request::Meta(m) => match m.cmd {
                MetaCmd::Get => Timer::Mg,
                MetaCmd::Set => Timer::Ms,
                MetaCmd::Delete => Timer::Md,
                MetaCmd::Arith => Timer::Ma,
                MetaCmd::Noop => Timer::Mn,
                MetaCmd::Debug => Timer::Me,
            },
            Request::Member(c) => match c {
                MemberCmd::List => Timer::Members,
                MemberCmd::Add { .. } => Timer::MemberAdd,
                MemberCmd::Promote(_) => Timer::MemberPromote,
                MemberCmd::Remove(_) => Timer::MemberRemove,
            },
        })
    }

    pub fn name(self) -> &'static str {
        TIMERS[self as usize].0
    }
}

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, SIGNIFICANT_DIGITS).expect("valid bounds")
}

/// One shard's histograms. Allocated once, at start; recording never allocates.
pub struct Latency {
    hists: [RefCell<Histogram<u64>>; TIMERS_COUNT],
}

impl Default for Latency {
    fn default() -> Self {
        Latency {
            hists: std::array::from_fn(|_| RefCell::new(new_histogram())),
        }
    }
}

impl Latency {
    pub fn record(&self, t: Timer, d: Duration) {
        let us = d.as_micros().min(LATENCY_US_MAX as u128) as u64;
        self.hists[t as usize].borrow_mut().saturating_record(us);
    }

    /// Copies of the non-empty histograms, to send to the shard that answers `stats latency`.
    pub fn report(&self) -> Report {
        Report {
            hists: self
                .hists
                .iter()
                .enumerate()
                .filter(|(_, h)| !h.borrow().is_empty())
                .map(|(i, h)| (i as u8, h.borrow().clone()))
                .collect(),
        }
    }
}

/// Histograms by [`Timer`] index, only those with a count: one shard's, or several merged.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub hists: Vec<(u8, Histogram<u64>)>,
}

impl Report {
    /// Adds `other`'s counts to this report's (histograms of equal bounds always merge).
    pub fn merge(&mut self, other: &Report) {
        for (t, h) in &other.hists {
            match self.hists.iter_mut().find(|(u, _)| u == t) {
                Some((_, mine)) => mine.add(h).expect("histograms share their bounds"),
                None => self.hists.push((*t, h.clone())),
            }
        }
        self.hists.sort_by_key(|(t, _)| *t);
    }

    /// (name, kind, histogram) in `stats latency` order.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, Kind, &Histogram<u64>)> {
        self.hists.iter().map(|(t, h)| {
            let (name, kind) = TIMERS[*t as usize];
            (name, kind, h)
        })
    }
}

/// The quantiles `stats latency` prints for each histogram, with their name suffixes.
pub const QUANTILES: &[(&str, f64)] = &[
    ("p50_us", 0.5),
    ("p90_us", 0.9),
    ("p99_us", 0.99),
    ("p999_us", 0.999),
    ("p9999_us", 0.9999),
];

/// `STAT <name>:count N`, `STAT <name>:p50_us ...`, ..., `STAT <name>:max_us ...` per
/// histogram with a count, then `END`.
pub fn render(report: &Report, out: &mut Vec<u8>) {
    use crate::protocol::reply::stat_u64;
    let mut name_buf = Vec::with_capacity(64);
    for (name, _, h) in report.iter() {
        let mut put = |suffix: &str, v: u64| {
            name_buf.clear();
            name_buf.extend_from_slice(name.as_bytes());
            name_buf.push(b':');
            name_buf.extend_from_slice(suffix.as_bytes());
            stat_u64(out, &name_buf, v);
        };
        put("count", h.len());
        for (suffix, q) in QUANTILES {
            put(suffix, h.value_at_quantile(*q));
        }
        put("max_us", h.max());
    }
    out.extend_from_slice(b"END\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    #[test]
    fn timer_table_and_enum_agree() {
        assert_eq!(Timer::Get.name(), "get");
        assert_eq!(Timer::FlushAll.name(), "flush_all");
        assert_eq!(Timer::MemberRemove.name(), "member_remove");
        assert_eq!(Timer::RaftlogFlush.name(), "raftlog_flush");
        assert_eq!(Timer::DeviceRead.name(), "device_read");
        assert_eq!(TIMERS[Timer::RaftCommit as usize].1, Kind::Stage);
        assert_eq!(TIMERS[Timer::Me as usize].1, Kind::Command);
    }

    /// Merging shards' reports gives the counts and extremes of all their samples together, as
    /// if one histogram had recorded them; an empty histogram is never sent.
    #[test]
    fn merged_reports_are_the_union_of_the_shards() {
        let a = Latency::default();
        let b = Latency::default();
        for i in 1..=100 {
            a.record(Timer::Set, us(i));
        }
        for i in 901..=1000 {
            b.record(Timer::Set, us(i));
        }
        b.record(Timer::Get, us(7));
        a.record(Timer::RaftlogFlush, us(3000));
        let ra = a.report();
        assert_eq!(ra.hists.len(), 2, "only the timers that recorded something");
        let mut merged = Report::default();
        merged.merge(&ra);
        merged.merge(&b.report());
        let names: Vec<&str> = merged.iter().map(|(n, _, _)| n).collect();
        assert_eq!(names, ["get", "set", "raftlog_flush"], "in table order");
        let set = merged.iter().find(|(n, _, _)| *n == "set").unwrap().2;
        assert_eq!(set.len(), 200);
        assert_eq!(set.min(), 1);
        assert!((995..=1010).contains(&set.max()), "{}", set.max());
        let p50 = set.value_at_quantile(0.5);
        assert!(
            (99..=101).contains(&p50),
            "p50 {p50}: the 100th of 200 samples"
        );
        let p99 = set.value_at_quantile(0.99);
        assert!((985..=1000).contains(&p99), "p99 {p99}");
        // Merging is order-free: b then a gives the same counts.
        let mut other = Report::default();
        other.merge(&b.report());
        other.merge(&ra);
        let set2 = other.iter().find(|(n, _, _)| *n == "set").unwrap().2;
        assert_eq!(set, set2);
    }

    #[test]
    fn render_prints_ordered_percentiles_for_nonzero_timers_only() {
        let l = Latency::default();
        for i in 0..1000u64 {
            l.record(Timer::Get, us(10 + i % 100));
        }
        l.record(Timer::Get, Duration::from_secs(3600)); // clamped to 60 s
        let mut out = Vec::new();
        render(&l.report(), &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.ends_with("END\r\n"));
        let vals: Vec<(String, u64)> = text
            .lines()
            .filter_map(|l| l.strip_prefix("STAT "))
            .map(|l| {
                let (n, v) = l.split_once(' ').unwrap();
                (n.to_string(), v.parse().unwrap())
            })
            .collect();
        let names: Vec<&str> = vals.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "get:count",
                "get:p50_us",
                "get:p90_us",
                "get:p99_us",
                "get:p999_us",
                "get:p9999_us",
                "get:max_us"
            ]
        );
        assert_eq!(vals[0].1, 1001);
        for w in vals[1..].windows(2) {
            assert!(w[0].1 <= w[1].1, "{w:?}");
        }
        assert!(vals[6].1 >= LATENCY_US_MAX && vals[6].1 <= LATENCY_US_MAX * 101 / 100);
    }
}
