//! keel-loadgen against a deliberately misbehaving in-test server: stalls must show up at the
//! right percentile in open loop (and be called out in closed loop), wrong data must fail the run
//! loudly, and a silent server must not hang it.

mod common;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::*;

/// The tests of this file run one at a time: each measures timing against an in-test server,
/// and on a 2-core machine the others' load threads would add their own delays to it.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn alone() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// One connection at 400 req/s to a server that sleeps 50 ms on every 100th request. Open loop:
/// each stall delays the 20 requests scheduled during it (400/s x 50 ms), by 50, 47.5, ... 2.5 ms:
/// 20 % of requests are late, the fraction later than x ms is (50 - x) * 0.4 %. So p75 is fast,
/// p90 is about 25 ms, p99 about 47.5 ms, max about 50 ms.
#[test]
fn open_loop_shows_the_stall_at_the_right_percentile() {
    let _alone = alone();
    let srv = TestServer::start(Faults {
        stall_every: 100,
        stall: Duration::from_millis(50),
        ..Default::default()
    });
    let out = out_dir("stall-open");
    let addr = srv.addr();
    let s = run_ok(
        &[
            "run",
            "--server",
            &addr,
            "--rate",
            "400",
            "--duration",
            "2500ms",
            "--out",
            out.to_str().unwrap(),
            "--threads",
            "1",
            "--connections",
            "1",
            "--pipeline",
            "64",
            "--keys",
            "100",
            "--prefill",
            "--mix",
            "get=9,set=1",
        ],
        &out,
    );
    let p = |k| lat(&s, "all", k) / 1000.0; // ms
    let p75 = s["commands"]["all"]["latency"]["curve"]
        .as_array()
        .unwrap()
        .iter()
        .find(|pt| pt[0].as_f64().unwrap() >= 75.0)
        .map(|pt| pt[1].as_f64().unwrap() / 1000.0)
        .unwrap();
    assert!(p75 < 5.0, "p75 {p75} ms: below the stalled fifth");
    assert!(
        p("p90_us") > 15.0 && p("p90_us") < 35.0,
        "p90 {} ms, expected ~25",
        p("p90_us")
    );
    assert!(
        p("p99_us") > 40.0 && p("p99_us") < 60.0,
        "p99 {} ms, expected ~47.5",
        p("p99_us")
    );
    assert!(
        p("max_us") >= 49.0 && p("max_us") < 100.0,
        "max {} ms",
        p("max_us")
    );
    // The sender kept its schedule (pipeline 64 is deep enough): the delay is the server's.
    let lag_p99 = s["send_lag"]["p99_us"].as_f64().unwrap() / 1000.0;
    assert!(lag_p99 < 10.0, "send lag p99 {lag_p99} ms");
    assert_eq!(u(&s, "mismatches"), 0);
}

/// Closed loop on the same server: the stall only delays the one request in flight, so the tail
/// looks small, but the report must say so instead of hiding it.
#[test]
fn closed_loop_reports_the_stall_in_its_notes() {
    let _alone = alone();
    let srv = TestServer::start(Faults {
        stall_every: 100,
        stall: Duration::from_millis(50),
        ..Default::default()
    });
    let out = out_dir("stall-closed");
    let addr = srv.addr();
    let s = run_ok(
        &[
            "run",
            "--server",
            &addr,
            "--requests",
            "600",
            "--out",
            out.to_str().unwrap(),
            "--threads",
            "1",
            "--connections",
            "1",
            "--keys",
            "100",
            "--prefill",
            "--mix",
            "get",
        ],
        &out,
    );
    assert!(lat(&s, "all", "p90_us") < 5000.0);
    assert!(lat(&s, "all", "max_us") >= 49_000.0);
    let notes: Vec<String> = s["notes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap().to_string())
        .collect();
    assert!(
        notes.iter().any(|n| n.contains("coordinated omission")),
        "{notes:?}"
    );
    assert!(notes.iter().any(|n| n.contains("stall")), "{notes:?}");
}

#[test]
fn wrong_data_fails_the_run_loudly() {
    let _alone = alone();
    let srv = TestServer::start(Faults {
        corrupt_every: 50,
        ..Default::default()
    });
    let out = out_dir("corrupt");
    let addr = srv.addr();
    let o = loadgen(
        &[
            "run",
            "--server",
            &addr,
            "--requests",
            "1000",
            "--out",
            out.to_str().unwrap(),
            "--keys",
            "100",
            "--prefill",
            "--mix",
            "get=1,mg=1",
            "--connections",
            "1",
        ],
        Duration::from_secs(30),
    );
    assert_eq!(
        o.status.code(),
        Some(3),
        "stderr: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("WRONG DATA"), "{err}");
    assert!(err.contains("differs from what was written"), "{err}");
    let s = summary(&out);
    assert!(u(&s, "mismatches") >= 10);
}

#[test]
fn a_silent_server_cannot_hang_the_run() {
    let _alone = alone();
    let srv = TestServer::start(Faults {
        silent: true,
        ..Default::default()
    });
    let out = out_dir("silent");
    let addr = srv.addr();
    let t0 = Instant::now();
    let o = loadgen(
        &[
            "run",
            "--server",
            &addr,
            "--duration",
            "500ms",
            "--timeout",
            "300ms",
            "--out",
            out.to_str().unwrap(),
            "--connections",
            "2",
        ],
        Duration::from_secs(20),
    );
    assert_eq!(
        o.status.code(),
        Some(2),
        "stderr: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t0.elapsed()
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("no reply"));
}
