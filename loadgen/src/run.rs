//! `keel-loadgen run`: starts the worker threads, prints a progress line each second (on a
//! terminal, or with `--progress`), merges the results, writes the reports and decides the exit
//! status.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Barrier, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::config::Workload;
use crate::engine::{Plan, Progress, Worker};
use crate::protocol::Cmd;
use crate::report::{self, CommandSummary, Cpu, Latency, Prefill, Summary};
use crate::stats::Stats;
use crate::{html, plot};

/// Exit statuses scripts can act on.
pub const EXIT_OK: i32 = 0;
/// Timeouts, lost connections or nothing completed: the numbers are not trustworthy.
pub const EXIT_RUN_FAILED: i32 = 2;
/// A value read back was not what was written.
pub const EXIT_WRONG_DATA: i32 = 3;

fn cpu_seconds() -> (f64, f64) {
    use nix::sys::resource::{getrusage, UsageWho};
    match getrusage(UsageWho::RUSAGE_SELF) {
        Ok(u) => {
            let tv = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
            (tv(u.user_time()), tv(u.system_time()))
        }
        Err(_) => (0.0, 0.0),
    }
}

/// How often the main thread looks at the workers' counters, and how often it prints.
const PROGRESS_POLL: Duration = Duration::from_millis(50);
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// Sets the prefill issues: every key on every server, and a counter per key when `incr` is in
/// the mix.
fn prefill_total(w: &Workload) -> u64 {
    let per_server = if w.has(Cmd::Incr) { 2 * w.keys } else { w.keys };
    per_server * w.servers.len() as u64
}

/// When the next progress line is due, and the rate since the last one.
struct Ticker {
    next: Instant,
    last: (Instant, u64),
}

impl Ticker {
    fn new(start: Instant) -> Ticker {
        Ticker {
            next: start + PROGRESS_EVERY,
            last: (start, 0),
        }
    }

    fn due(&mut self, now: Instant) -> bool {
        if now < self.next {
            return false;
        }
        // Skip ticks that were missed (a descheduled main thread) instead of printing a burst.
        while self.next <= now {
            self.next += PROGRESS_EVERY;
        }
        true
    }

    /// Completions per second since the previous call; records `done` for the next one.
    fn rate(&mut self, now: Instant, done: u64) -> f64 {
        let secs = (now - self.last.0).as_secs_f64();
        let rate = if secs > 0.0 {
            done.saturating_sub(self.last.1) as f64 / secs
        } else {
            0.0
        };
        self.last = (now, done);
        rate
    }
}

fn prefill_line(done: u64, total: u64, rate: f64, elapsed: Duration) -> String {
    let pct = if total > 0 {
        100.0 * done as f64 / total as f64
    } else {
        100.0
    };
    format!(
        "prefill: {done}/{total} sets ({pct:.0}%)  {rate:.0}/s  {:.0}s elapsed",
        elapsed.as_secs_f64()
    )
}

/// `[warmup 2s/5s]`, `[  12s/30s]` or `[  12s]`, then the rate and the requests done (of the
/// `--requests` budget when there is one).
fn run_line(
    elapsed: Duration,
    warmup: Duration,
    duration: Option<Duration>,
    done: u64,
    budget: Option<u64>,
    rate: f64,
) -> String {
    let secs = elapsed.as_secs();
    let clock = if elapsed < warmup {
        format!("warmup {secs}s/{}s", warmup.as_secs())
    } else {
        let measured = (elapsed - warmup).as_secs();
        match duration {
            Some(d) => format!("{measured:>4}s/{}s", d.as_secs()),
            None => format!("{measured:>4}s"),
        }
    };
    let total = match budget {
        Some(b) => format!("{done}/{b}"),
        None => done.to_string(),
    };
    format!("[{clock}] {rate:>10.0} req/s  total {total}")
}

struct ThreadResult {
    stats: Stats,
    prefill: Option<(Stats, Duration)>,
}

/// Runs the workload and writes the reports; returns the summary and the exit status.
pub fn run(w: &Workload) -> anyhow::Result<(Summary, i32)> {
    std::fs::create_dir_all(&w.out)
        .with_context(|| format!("creating output directory {}", w.out.display()))?;
    // The cores this process may use (respects taskset); thread t is pinned to cores[t % n].
    let cores = if w.pin {
        core_affinity::get_core_ids().unwrap_or_default()
    } else {
        Vec::new()
    };
    let threads = w.threads as usize;
    let barrier = Barrier::new(threads + 1);
    let plan_cell: OnceLock<Plan> = OnceLock::new();
    let abort = AtomicBool::new(false);
    let progress: Vec<Progress> = (0..threads).map(|_| Progress::default()).collect();
    let prefill_progress: Vec<Progress> = (0..threads).map(|_| Progress::default()).collect();
    // Threads past their prefill (or their failed connect), so the main thread knows when to stop
    // printing prefill progress and meet them at the barrier.
    let prefilled = AtomicUsize::new(0);
    let show_progress = w.progress || std::io::stderr().is_terminal();
    let mut results: Vec<Result<ThreadResult, String>> = Vec::new();
    let (mut cpu_start, mut cpu_end) = ((0.0, 0.0), (0.0, 0.0));
    let mut measured_s = 0.0;
    std::thread::scope(|s| {
        let mut handles = Vec::new();
        for t in 0..threads {
            let (barrier, plan_cell, abort, progress, cores) =
                (&barrier, &plan_cell, &abort, &progress, &cores);
            let (prefill_progress, prefilled) = (&prefill_progress, &prefilled);
            let budget = w
                .requests
                .map(|n| n * (t as u64 + 1) / threads as u64 - n * t as u64 / threads as u64);
            handles.push(s.spawn(move || -> Result<ThreadResult, String> {
                if !cores.is_empty() {
                    core_affinity::set_for_current(cores[t % cores.len()]);
                }
                let mut worker = Worker::connect(w, t as u32);
                let mut prefill = None;
                if let Ok(wk) = worker.as_mut() {
                    if w.prefill {
                        let t0 = Instant::now();
                        let st = wk.prefill(&prefill_progress[t]);
                        prefill = Some((st, t0.elapsed()));
                    }
                } else {
                    abort.store(true, Ordering::Relaxed);
                }
                prefilled.fetch_add(1, Ordering::Release);
                barrier.wait(); // everyone connected (and prefilled)
                barrier.wait(); // the plan is set
                let mut wk = worker?;
                if abort.load(Ordering::Relaxed) {
                    return Err("another thread failed to connect".into());
                }
                let plan = plan_cell.get().expect("plan set before the second barrier");
                let stats = wk.run(plan, budget, &progress[t]);
                Ok(ThreadResult { stats, prefill })
            }));
        }
        if w.prefill {
            let total = prefill_total(w);
            if show_progress {
                eprintln!(
                    "prefill: {total} sets ({} keys on {} server(s))...",
                    w.keys,
                    w.servers.len()
                );
            }
            // Until every thread is past its prefill (each bounds its own: a request that gets
            // no reply within the timeout closes its connection).
            let t0 = Instant::now();
            let mut ticker = Ticker::new(t0);
            while prefilled.load(Ordering::Acquire) < threads {
                std::thread::sleep(PROGRESS_POLL);
                let now = Instant::now();
                if show_progress && ticker.due(now) {
                    let done = prefill_progress
                        .iter()
                        .map(|p| p.requests.load(Ordering::Relaxed))
                        .sum::<u64>();
                    let rate = ticker.rate(now, done);
                    eprintln!("{}", prefill_line(done, total, rate, now - t0));
                }
            }
        }
        barrier.wait();
        let start = Instant::now();
        let warmup_end = start + w.warmup;
        let plan = Plan {
            start,
            warmup_end,
            end: w.duration.map(|d| warmup_end + d),
        };
        plan_cell.set(plan).expect("set once");
        cpu_start = cpu_seconds();
        let mut cpu_start_taken = w.warmup.is_zero();
        barrier.wait();
        // Progress line each second until the threads finish (each bounds itself).
        let mut ticker = Ticker::new(start);
        while !handles.iter().all(|h| h.is_finished()) {
            std::thread::sleep(PROGRESS_POLL);
            let now = Instant::now();
            if !cpu_start_taken && now >= warmup_end {
                cpu_start = cpu_seconds();
                cpu_start_taken = true;
            }
            if show_progress && ticker.due(now) && !abort.load(Ordering::Relaxed) {
                let sum = |f: fn(&Progress) -> u64| progress.iter().map(f).sum::<u64>();
                let done = sum(|p| p.requests.load(Ordering::Relaxed));
                let rate = ticker.rate(now, done);
                eprintln!(
                    "{}  misses {}  errors {}  timeouts {}  mismatches {}",
                    run_line(now - start, w.warmup, w.duration, done, w.requests, rate),
                    sum(|p| p.misses.load(Ordering::Relaxed)),
                    sum(|p| p.errors.load(Ordering::Relaxed)),
                    sum(|p| p.timeouts.load(Ordering::Relaxed)),
                    sum(|p| p.mismatches.load(Ordering::Relaxed)),
                );
            }
        }
        for h in handles {
            results.push(
                h.join()
                    .unwrap_or_else(|_| Err("worker thread panicked".into())),
            );
        }
        measured_s = Instant::now()
            .saturating_duration_since(warmup_end)
            .as_secs_f64();
        cpu_end = cpu_seconds();
    });
    let mut stats = Stats::default();
    let mut prefill_stats: Option<(Stats, Duration)> = None;
    let mut failures = Vec::new();
    for r in results {
        match r {
            Ok(tr) => {
                stats.merge(&tr.stats);
                if let Some((ps, d)) = tr.prefill {
                    let e = prefill_stats.get_or_insert_with(|| (Stats::default(), Duration::ZERO));
                    e.0.merge(&ps);
                    e.1 = e.1.max(d);
                }
            }
            Err(e) => failures.push(e),
        }
    }
    if !failures.is_empty() {
        failures.dedup();
        anyhow::bail!("run failed before measuring: {}", failures.join("; "));
    }
    // Mismatches and broken connections during prefill count too: the run is about the data.
    if let Some((ps, _)) = &prefill_stats {
        stats.mismatches += ps.mismatches;
        stats
            .mismatch_messages
            .extend(ps.mismatch_messages.iter().cloned());
        stats.timeouts += ps.timeouts;
        stats
            .connection_errors
            .extend(ps.connection_errors.iter().map(|e| format!("prefill: {e}")));
    }
    let cpu = Cpu {
        user_s: cpu_end.0 - cpu_start.0,
        system_s: cpu_end.1 - cpu_start.1,
        ns_per_request: 0.0,
    };
    let summary = summarize(w, &stats, prefill_stats.as_ref(), measured_s, cpu);
    write_reports(&w.out, &summary, &stats)?;
    print!("{}", report::table(&summary));
    let code = verdict(&summary);
    Ok((summary, code))
}

fn verdict(s: &Summary) -> i32 {
    if s.mismatches > 0 {
        eprintln!("!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!");
        eprintln!(
            "!!! WRONG DATA: {} of {} values read back differ from what was written",
            s.mismatches, s.values_checked
        );
        for m in &s.mismatch_examples {
            eprintln!("!!!   {m}");
        }
        eprintln!("!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!");
        return EXIT_WRONG_DATA;
    }
    if s.timeouts > 0 || !s.connection_errors.is_empty() {
        eprintln!(
            "run failed: {} requests timed out or lost their connection:",
            s.timeouts
        );
        for e in s.connection_errors.iter().take(10) {
            eprintln!("  {e}");
        }
        return EXIT_RUN_FAILED;
    }
    if s.requests == 0 {
        eprintln!("run failed: no request completed in the measured phase");
        return EXIT_RUN_FAILED;
    }
    EXIT_OK
}

fn summarize(
    w: &Workload,
    stats: &Stats,
    prefill: Option<&(Stats, Duration)>,
    measured_s: f64,
    mut cpu: Cpu,
) -> Summary {
    let total = stats.total();
    let mut commands = BTreeMap::new();
    for cmd in Cmd::ALL {
        let c = &stats.counters[cmd.index()];
        if c.requests == 0 && !w.has(cmd) {
            continue;
        }
        commands.insert(
            cmd.name().to_string(),
            CommandSummary {
                requests: c.requests,
                hits: c.hits,
                misses: c.misses,
                errors: c.errors,
                latency: Latency::from_histogram(&stats.latency[cmd.index()]),
            },
        );
    }
    let all = stats.all_latency();
    let all_lat = Latency::from_histogram(&all);
    commands.insert(
        "all".into(),
        CommandSummary {
            requests: total.requests,
            hits: total.hits,
            misses: total.misses,
            errors: total.errors,
            latency: all_lat.clone(),
        },
    );
    let throughput = if measured_s > 0.0 {
        total.requests as f64 / measured_s
    } else {
        0.0
    };
    cpu.ns_per_request = if total.requests > 0 {
        (cpu.user_s + cpu.system_s) * 1e9 / total.requests as f64
    } else {
        0.0
    };
    let open = w.rate.is_some();
    let mut notes = Vec::new();
    let ms = |us: f64| format!("{:.2} ms", us / 1e3);
    if open {
        let svc = Latency::from_histogram(&stats.service);
        let lag = Latency::from_histogram(&stats.send_lag);
        notes.push(format!(
            "open loop: latency counts from each request's intended send time (no coordinated omission); measured from the actual send instead, p99 would read {} and p99.9 {}",
            ms(svc.p99_us),
            ms(svc.p999_us)
        ));
        if lag.p99_us > 1000.0 {
            notes.push(format!(
                "the sender ran behind its schedule (send lag p99 {}, max {}): the server, --pipeline {} per connection or the loadgen limited the rate; those requests still count from their intended time",
                ms(lag.p99_us),
                ms(lag.max_us),
                w.pipeline
            ));
        }
        if let Some(r) = w.rate {
            if throughput < 0.95 * r {
                notes.push(format!(
                    "achieved {throughput:.0} req/s, below the target {r:.0}/s"
                ));
            }
        }
    } else {
        notes.push(
            "closed loop: latency counts from each request's actual send; while the server stalls the senders wait, so stalls are under-represented (coordinated omission). Use --rate N for an open loop."
                .into(),
        );
        if !all.is_empty() && all_lat.max_us > 10.0 * all_lat.p50_us.max(1.0) {
            // HdrHistogram's correction: what the tail would look like had each connection kept
            // sending at its usual pace through the stalls.
            let interval_ns = (all.value_at_quantile(0.5) / w.pipeline as u64).max(1);
            let corrected = Latency::from_histogram(&all.clone_correct(interval_ns));
            notes.push(format!(
                "max latency {} is {:.0}x the median: a stall (server or scheduling). Corrected for coordinated omission (expected interval {:.1} us), p99 would be {} and p99.9 {} instead of {} and {}",
                ms(all_lat.max_us),
                all_lat.max_us / all_lat.p50_us.max(1.0),
                interval_ns as f64 / 1e3,
                ms(corrected.p99_us),
                ms(corrected.p999_us),
                ms(all_lat.p99_us),
                ms(all_lat.p999_us)
            ));
        }
    }
    if stats.unsent > 0 {
        notes.push(format!(
            "{} scheduled requests were never sent before the run had to stop",
            stats.unsent
        ));
    }
    let total_misses = total.misses;
    if total_misses > 0 && !w.prefill {
        notes.push("misses are expected without --prefill until the keys have been set".into());
    }
    let mut workload = BTreeMap::new();
    let mut put = |k: &str, v: String| {
        workload.insert(k.to_string(), v);
    };
    put("servers", w.servers.join(","));
    put(
        "duration",
        w.duration
            .map(|d| format!("{:?}", d))
            .unwrap_or_else(|| "-".into()),
    );
    put(
        "requests",
        w.requests
            .map(|n| n.to_string())
            .unwrap_or_else(|| "-".into()),
    );
    put("threads", w.threads.to_string());
    put("connections_per_thread", w.connections.to_string());
    put("pipeline", w.pipeline.to_string());
    put("keys", w.keys.to_string());
    put("key_size", w.key_size.to_string());
    put("key_prefix", w.key_prefix.clone());
    put("value_size", w.value_size.to_string());
    put("dist", w.dist.to_string());
    put("mix", w.mix_string());
    put("mget_width", w.mget_width.to_string());
    put("ttl", w.ttl_s.to_string());
    put("prefill", w.prefill.to_string());
    put("warmup", format!("{:?}", w.warmup));
    put("timeout", format!("{:?}", w.timeout));
    put("seed", w.seed.to_string());
    put("pinned", w.pin.to_string());
    Summary {
        format_version: report::SUMMARY_FORMAT_VERSION,
        tool: format!("keel-loadgen {}", env!("CARGO_PKG_VERSION")),
        label: w.label.clone(),
        mode: if open { "open" } else { "closed" }.into(),
        target_rate: w.rate,
        workload,
        measured_s,
        requests: total.requests,
        throughput_rps: throughput,
        throughput_per_second: stats.per_second(),
        throughput_interval_ms: crate::stats::THROUGHPUT_INTERVAL_MS,
        throughput_per_interval: stats.per_interval.clone(),
        hits: total.hits,
        misses: total.misses,
        errors: total.errors,
        timeouts: stats.timeouts,
        unsent: stats.unsent,
        values_checked: stats.values_checked,
        mismatches: stats.mismatches,
        mismatch_examples: stats.mismatch_messages.clone(),
        error_examples: stats.error_messages.clone(),
        connection_errors: stats.connection_errors.clone(),
        prefill: prefill.map(|(p, d)| Prefill {
            keys_written: p.unmeasured,
            errors: p.unmeasured_errors,
            seconds: d.as_secs_f64(),
        }),
        cpu,
        commands,
        service_latency: open.then(|| Latency::from_histogram(&stats.service)),
        send_lag: open.then(|| Latency::from_histogram(&stats.send_lag)),
        notes,
    }
}

fn write_reports(dir: &Path, s: &Summary, stats: &Stats) -> anyhow::Result<()> {
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))
    };
    write("summary.json", &serde_json::to_string_pretty(s)?)?;
    write("all.hgrm", &report::hgrm(&stats.all_latency()))?;
    for cmd in Cmd::ALL {
        let h = &stats.latency[cmd.index()];
        if !h.is_empty() {
            write(&format!("{}.hgrm", cmd.name()), &report::hgrm(h))?;
        }
    }
    let series: Vec<plot::Series> = s
        .commands
        .iter()
        .filter(|(_, c)| c.latency.count > 0)
        .map(|(name, c)| plot::Series {
            label: name.clone(),
            points: c.latency.curve.clone(),
        })
        .collect();
    write(
        "latency.svg",
        &plot::svg(&format!("{} ({} loop)", s.label, s.mode), &series),
    )?;
    Ok(())
}

/// `keel-loadgen plot`: one line per run (its "all" latency).
pub fn plot_files(inputs: &[std::path::PathBuf], out: &Path) -> anyhow::Result<()> {
    let mut series = Vec::new();
    for p in inputs {
        let s = load_summary(p)?;
        let all = s
            .all()
            .with_context(|| format!("{}: no \"all\" command summary", p.display()))?;
        series.push(plot::Series {
            label: format!("{} ({})", s.label, s.mode),
            points: all.latency.curve.clone(),
        });
    }
    std::fs::write(out, plot::svg("latency by percentile", &series))
        .with_context(|| format!("writing {}", out.display()))?;
    Ok(())
}

/// `keel-loadgen report`: every summary is read (and checked) before anything is written.
pub fn report_files(inputs: &[std::path::PathBuf], out: &Path) -> anyhow::Result<()> {
    let mut runs = Vec::new();
    for p in inputs {
        runs.push(html::Run {
            file: p.display().to_string(),
            summary: load_summary(p)?,
        });
    }
    std::fs::write(out, html::page(&runs)).with_context(|| format!("writing {}", out.display()))?;
    Ok(())
}

pub fn load_summary(p: &Path) -> anyhow::Result<Summary> {
    Ok(report::load_summary(p)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_lines_say_done_of_total_rate_and_time() {
        let s = Duration::from_secs;
        assert_eq!(
            prefill_line(2500, 10000, 1234.4, s(3)),
            "prefill: 2500/10000 sets (25%)  1234/s  3s elapsed"
        );
        assert_eq!(
            run_line(s(2), s(5), Some(s(30)), 10, None, 5.0),
            "[warmup 2s/5s]          5 req/s  total 10"
        );
        assert_eq!(
            run_line(s(17), s(5), Some(s(30)), 900, None, 100.0),
            "[  12s/30s]        100 req/s  total 900"
        );
        assert_eq!(
            run_line(s(4), Duration::ZERO, None, 400, Some(1000), 100.0),
            "[   4s]        100 req/s  total 400/1000"
        );
    }

    #[test]
    fn ticker_fires_once_a_second_and_skips_missed_ticks() {
        let t0 = Instant::now();
        let mut t = Ticker::new(t0);
        assert!(!t.due(t0 + Duration::from_millis(999)));
        assert!(t.due(t0 + Duration::from_millis(1000)));
        assert!(!t.due(t0 + Duration::from_millis(1500)));
        // The main thread slept 3.5 s: one line, then the next at 5 s.
        assert!(t.due(t0 + Duration::from_millis(4500)));
        assert!(!t.due(t0 + Duration::from_millis(4900)));
        assert!(t.due(t0 + Duration::from_millis(5000)));
        assert_eq!(t.rate(t0 + Duration::from_secs(2), 500), 250.0);
        assert_eq!(t.rate(t0 + Duration::from_secs(3), 800), 300.0);
    }
}
