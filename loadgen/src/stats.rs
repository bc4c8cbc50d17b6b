//! Per-thread measurements, merged once at the end of a run: an HDR histogram of latency per
//! command (nanoseconds), counters, and completions per second.

use hdrhistogram::Histogram;

use crate::protocol::Cmd;

/// Highest latency the histograms track; longer ones are clamped (and a run that long has already
/// hit its per-request timeout).
pub const LATENCY_NS_MAX: u64 = 60_000_000_000;
pub const SIGNIFICANT_DIGITS: u8 = 3;
/// Width of one throughput-over-time sample: fine enough to show a stall of a few hundred
/// milliseconds, coarse enough that an hour's run keeps 36 000 numbers.
pub const THROUGHPUT_INTERVAL_MS: u64 = 100;
/// First data-mismatch messages kept for the report; the rest are only counted.
pub const MISMATCH_MESSAGES_MAX: usize = 10;

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_NS_MAX, SIGNIFICANT_DIGITS).expect("valid bounds")
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Completed requests (a multi-get counts once).
    pub requests: u64,
    /// Keys found / not found (a multi-get of N keys adds N between them).
    pub hits: u64,
    pub misses: u64,
    /// Error replies (ERROR, CLIENT_ERROR, SERVER_ERROR, NOT_STORED).
    pub errors: u64,
}

impl Counters {
    fn add(&mut self, o: &Counters) {
        self.requests += o.requests;
        self.hits += o.hits;
        self.misses += o.misses;
        self.errors += o.errors;
    }
}

#[derive(Clone, Debug)]
pub struct Stats {
    /// Latency per command, indexed by `Cmd::index()`: from the intended send time in open loop,
    /// from the actual send in closed loop.
    pub latency: Vec<Histogram<u64>>,
    /// Open loop only: actual send to reply (what a closed-loop tool would report).
    pub service: Histogram<u64>,
    /// Open loop only: intended to actual send (how far the sender fell behind its schedule).
    pub send_lag: Histogram<u64>,
    pub counters: Vec<Counters>,
    /// Completions in each THROUGHPUT_INTERVAL_MS of the measured phase.
    pub per_interval: Vec<u64>,
    pub values_checked: u64,
    pub mismatches: u64,
    pub mismatch_messages: Vec<String>,
    /// First error replies (ERROR, CLIENT_ERROR, SERVER_ERROR lines), for the report.
    pub error_messages: Vec<String>,
    /// Requests that got no reply within the timeout, or whose connection broke.
    pub timeouts: u64,
    pub connection_errors: Vec<String>,
    /// Open loop: scheduled requests never sent because the run had to stop.
    pub unsent: u64,
    /// Warm-up and prefill replies (not in the latency or counters above) and their error replies.
    pub unmeasured: u64,
    pub unmeasured_errors: u64,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            latency: Cmd::ALL.iter().map(|_| new_histogram()).collect(),
            service: new_histogram(),
            send_lag: new_histogram(),
            counters: vec![Counters::default(); Cmd::ALL.len()],
            per_interval: Vec::new(),
            values_checked: 0,
            mismatches: 0,
            mismatch_messages: Vec::new(),
            error_messages: Vec::new(),
            timeouts: 0,
            connection_errors: Vec::new(),
            unsent: 0,
            unmeasured: 0,
            unmeasured_errors: 0,
        }
    }
}

impl Stats {
    pub fn record_latency(&mut self, cmd: Cmd, ns: u64) {
        self.latency[cmd.index()].saturating_record(ns.max(1));
    }

    /// Counts one completion `elapsed_ms` after the measured phase began.
    pub fn count_completion(&mut self, elapsed_ms: u64) {
        let i = (elapsed_ms / THROUGHPUT_INTERVAL_MS) as usize;
        if self.per_interval.len() <= i {
            self.per_interval.resize(i + 1, 0);
        }
        self.per_interval[i] += 1;
    }

    /// Completions in each whole second (the last one partial), summed from the intervals.
    pub fn per_second(&self) -> Vec<u64> {
        let per = (1000 / THROUGHPUT_INTERVAL_MS) as usize;
        self.per_interval
            .chunks(per)
            .map(|c| c.iter().sum())
            .collect()
    }

    pub fn mismatch(&mut self, msg: String) {
        self.mismatches += 1;
        if self.mismatch_messages.len() < MISMATCH_MESSAGES_MAX {
            self.mismatch_messages.push(msg);
        }
    }

    pub fn error_reply(&mut self, msg: String) {
        if self.error_messages.len() < MISMATCH_MESSAGES_MAX {
            self.error_messages.push(msg);
        }
    }

    pub fn merge(&mut self, o: &Stats) {
        for (a, b) in self.latency.iter_mut().zip(&o.latency) {
            a.add(b).expect("histograms share bounds");
        }
        self.service
            .add(&o.service)
            .expect("histograms share bounds");
        self.send_lag
            .add(&o.send_lag)
            .expect("histograms share bounds");
        for (a, b) in self.counters.iter_mut().zip(&o.counters) {
            a.add(b);
        }
        if self.per_interval.len() < o.per_interval.len() {
            self.per_interval.resize(o.per_interval.len(), 0);
        }
        for (a, b) in self.per_interval.iter_mut().zip(&o.per_interval) {
            *a += b;
        }
        self.values_checked += o.values_checked;
        self.mismatches += o.mismatches;
        for m in &o.mismatch_messages {
            if self.mismatch_messages.len() < MISMATCH_MESSAGES_MAX {
                self.mismatch_messages.push(m.clone());
            }
        }
        for m in &o.error_messages {
            self.error_reply(m.clone());
        }
        self.timeouts += o.timeouts;
        self.connection_errors
            .extend(o.connection_errors.iter().cloned());
        self.unsent += o.unsent;
        self.unmeasured += o.unmeasured;
        self.unmeasured_errors += o.unmeasured_errors;
    }

    /// All commands in one histogram.
    pub fn all_latency(&self) -> Histogram<u64> {
        let mut h = new_histogram();
        for l in &self.latency {
            h.add(l).expect("histograms share bounds");
        }
        h
    }

    pub fn total(&self) -> Counters {
        let mut c = Counters::default();
        for x in &self.counters {
            c.add(x);
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merging_adds_counts_and_keeps_percentiles() {
        let mut a = Stats::default();
        let mut b = Stats::default();
        // a: 900 fast gets; b: 100 slow gets. Merged p90 is fast, p99 is slow.
        for _ in 0..900 {
            a.record_latency(Cmd::Get, 100_000);
            a.count_completion(50);
        }
        for _ in 0..100 {
            b.record_latency(Cmd::Get, 50_000_000);
            b.count_completion(2_150);
        }
        b.record_latency(Cmd::Set, 1_000);
        a.counters[Cmd::Get.index()].requests = 900;
        b.counters[Cmd::Get.index()].requests = 100;
        b.mismatch("x".into());
        a.merge(&b);
        let g = &a.latency[Cmd::Get.index()];
        assert_eq!(g.len(), 1000);
        assert!(g.value_at_quantile(0.90) < 110_000);
        assert!(g.value_at_quantile(0.99) > 49_000_000);
        assert_eq!(a.latency[Cmd::Set.index()].len(), 1);
        assert_eq!(a.all_latency().len(), 1001);
        assert_eq!(a.per_interval.len(), 22);
        assert_eq!((a.per_interval[0], a.per_interval[21]), (900, 100));
        assert_eq!(a.per_second(), vec![900, 0, 100]);
        assert_eq!(a.total().requests, 1000);
        assert_eq!(a.mismatches, 1);
        // Merge is order-independent.
        let mut c = b.clone();
        let mut a0 = Stats::default();
        for _ in 0..900 {
            a0.record_latency(Cmd::Get, 100_000);
        }
        c.merge(&a0);
        assert_eq!(c.latency[Cmd::Get.index()], a.latency[Cmd::Get.index()]);
    }

    #[test]
    fn out_of_range_latencies_are_clamped_not_lost() {
        let mut s = Stats::default();
        s.record_latency(Cmd::Get, 0);
        s.record_latency(Cmd::Get, LATENCY_NS_MAX * 10);
        assert_eq!(s.latency[Cmd::Get.index()].len(), 2);
    }
}
