//! keel-loadgen against a real memcached (started here on a free loopback port): each mode runs
//! briefly, produces sane numbers, passes the value check and writes reports that parse.

mod common;

use common::*;
use keel_loadgen::report::parse_hgrm;

fn check_reports(out: &std::path::Path, s: &serde_json::Value) {
    for f in ["all.hgrm", "latency.svg", "summary.json"] {
        assert!(out.join(f).is_file(), "{f} missing in {}", out.display());
    }
    let rows = parse_hgrm(&std::fs::read_to_string(out.join("all.hgrm")).unwrap()).unwrap();
    assert_eq!(
        rows.last().unwrap().2,
        u(s, "requests"),
        "hgrm total count = requests"
    );
    let svg = std::fs::read_to_string(out.join("latency.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("<polyline"));
    assert_eq!(u(s, "mismatches"), 0);
    assert_eq!(u(s, "timeouts"), 0);
    let p50 = lat(s, "all", "p50_us");
    let p99 = lat(s, "all", "p99_us");
    let max = lat(s, "all", "max_us");
    assert!(
        p50 > 1.0 && p50 <= p99 && p99 <= max,
        "p50 {p50} p99 {p99} max {max}"
    );
    assert!(s["cpu"]["ns_per_request"].as_f64().unwrap() > 0.0);
}

#[test]
fn closed_loop_every_command_with_prefill_and_warmup() {
    let m = Memcached::start();
    let out = out_dir("closed");
    let addr = m.addr();
    let s = run_ok(
        &[
            "run",
            "--server",
            &addr,
            "--duration",
            "1500ms",
            "--warmup",
            "300ms",
            "--out",
            out.to_str().unwrap(),
            "--threads",
            "2",
            "--connections",
            "2",
            "--pipeline",
            "4",
            "--keys",
            "2000",
            "--value-size",
            "uniform:20-2000",
            "--prefill",
            "--mix",
            "get=6,set=1,mget=1,delete=1,incr=1,mg=1,ms=1",
            "--mget-width",
            "8",
            "--ttl",
            "300",
        ],
        &out,
    );
    check_reports(&out, &s);
    assert_eq!(s["mode"], "closed");
    let requests = u(&s, "requests");
    assert!(requests > 2000, "only {requests} requests in 1.5 s");
    assert!(u(&s, "values_checked") > 1000);
    assert_eq!(
        s["prefill"]["keys_written"], 4000,
        "2000 values + 2000 counters"
    );
    for cmd in ["get", "set", "mget", "delete", "incr", "mg", "ms"] {
        assert!(
            s["commands"][cmd]["requests"].as_u64().unwrap() > 0,
            "{cmd} never ran"
        );
        assert!(out.join(format!("{cmd}.hgrm")).is_file());
    }
    assert_eq!(u(&s, "errors"), 0);
    let per_second: u64 = s["throughput_per_second"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(per_second, requests);

    // compare and plot read the summary back.
    let sj = out.join("summary.json");
    let o = loadgen(
        &["compare", sj.to_str().unwrap(), sj.to_str().unwrap()],
        std::time::Duration::from_secs(10),
    );
    assert!(o.status.success());
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("throughput/s") && text.contains("1.000") && text.contains("all p99.9"),
        "{text}"
    );
    let svg = out.join("two.svg");
    let o = loadgen(
        &[
            "plot",
            sj.to_str().unwrap(),
            sj.to_str().unwrap(),
            "--out",
            svg.to_str().unwrap(),
        ],
        std::time::Duration::from_secs(10),
    );
    assert!(o.status.success());
    assert_eq!(
        std::fs::read_to_string(&svg)
            .unwrap()
            .matches("<polyline")
            .count(),
        2
    );
}

#[test]
fn open_loop_holds_the_target_rate() {
    let m = Memcached::start();
    let out = out_dir("open");
    let addr = m.addr();
    let s = run_ok(
        &[
            "run",
            "--server",
            &addr,
            "--duration",
            "2s",
            "--rate",
            "3000",
            "--out",
            out.to_str().unwrap(),
            "--connections",
            "4",
            "--keys",
            "1000",
            "--prefill",
        ],
        &out,
    );
    check_reports(&out, &s);
    assert_eq!(s["mode"], "open");
    let requests = u(&s, "requests") as f64;
    assert!(
        (requests - 6000.0).abs() < 300.0,
        "{requests} requests, expected 6000 +- 5 %"
    );
    assert_eq!(u(&s, "unsent"), 0);
    // An idle memcached on loopback answers in well under 5 ms at the median.
    assert!(lat(&s, "all", "p50_us") < 5000.0);
    assert!(s["service_latency"]["p50_us"].as_f64().unwrap() > 0.0);
    assert_eq!(
        s["misses"], 0,
        "every key was prefilled and nothing deletes"
    );
}

#[test]
fn multiget_from_a_workload_file_hits_every_key() {
    let m = Memcached::start();
    let out = out_dir("mget");
    let wl = out_dir("mget-workload").with_extension("toml");
    std::fs::write(
        &wl,
        format!(
            "server = [\"{}\"]\nout = \"{}\"\nrequests = 2000\nkeys = 500\nvalue_size = 100\nmix = \"mget\"\nmget_width = 20\nprefill = true\ndist = \"zipfian:0.99\"\npipeline = 2\n",
            m.addr(),
            out.display()
        ),
    )
    .unwrap();
    let s = run_ok(&["run", "--workload", wl.to_str().unwrap()], &out);
    check_reports(&out, &s);
    assert_eq!(u(&s, "requests"), 2000);
    assert_eq!(s["commands"]["mget"]["hits"], 40_000);
    assert_eq!(u(&s, "misses"), 0);
    assert_eq!(u(&s, "values_checked"), 40_000);
    let _ = std::fs::remove_file(wl);
}

#[test]
fn set_only_run_stops_at_the_request_count() {
    let m = Memcached::start();
    let out = out_dir("set");
    let addr = m.addr();
    let s = run_ok(
        &[
            "run",
            "--server",
            &addr,
            "--requests",
            "5000",
            "--mix",
            "set",
            "--out",
            out.to_str().unwrap(),
            "--threads",
            "2",
            "--pipeline",
            "8",
            "--value-size",
            "list:100=9,10000=1",
            "--dist",
            "sequential",
        ],
        &out,
    );
    check_reports(&out, &s);
    assert_eq!(u(&s, "requests"), 5000);
    assert_eq!(s["commands"]["set"]["hits"], 5000, "every set STORED");
    assert_eq!(u(&s, "errors"), 0);
}

#[test]
fn a_server_that_is_not_there_fails_fast() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = out_dir("noserver");
    let addr = format!("127.0.0.1:{port}");
    let o = loadgen(
        &[
            "run",
            "--server",
            &addr,
            "--duration",
            "1s",
            "--out",
            out.to_str().unwrap(),
        ],
        std::time::Duration::from_secs(10),
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("connecting to"));
}

/// Two servers, one connection per thread: each server sees only one thread, yet prefill must
/// load every key on both (regression: prefill once split keys by thread, leaving each server
/// with half the keys).
#[test]
fn two_servers_each_get_the_whole_key_space() {
    let (m1, m2) = (Memcached::start(), Memcached::start());
    let out = out_dir("two-servers");
    let (a1, a2) = (m1.addr(), m2.addr());
    let s = run_ok(
        &[
            "run",
            "--server",
            &a1,
            "--server",
            &a2,
            "--requests",
            "3000",
            "--threads",
            "2",
            "--connections",
            "1",
            "--keys",
            "700",
            "--prefill",
            "--mix",
            "get",
            "--out",
            out.to_str().unwrap(),
        ],
        &out,
    );
    assert_eq!(s["prefill"]["keys_written"], 1400);
    assert_eq!(u(&s, "misses"), 0);
    assert_eq!(u(&s, "requests"), 3000);
}

/// Progress lines go to stderr about once a second, for the prefill and the measured phase, with
/// done/total, rate and time; a pipe (a script's log) gets none unless --progress asks for them.
#[test]
fn progress_lines_only_on_a_terminal_or_with_progress() {
    let m = Memcached::start();
    let addr = m.addr();
    let out = out_dir("progress");
    let args = |progress: bool| {
        let mut a = vec![
            "run",
            "--server",
            &addr,
            "--out",
            out.to_str().unwrap(),
            "--duration",
            "2200ms",
            "--keys",
            "1000",
            "--prefill",
            "--connections",
            "2",
        ];
        if progress {
            a.push("--progress");
        }
        a.into_iter().map(str::to_string).collect::<Vec<_>>()
    };
    let run = |progress: bool| {
        let a = args(progress);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        let o = loadgen(&a, std::time::Duration::from_secs(30));
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    let quiet = run(false);
    assert!(
        !quiet.contains("req/s") && !quiet.contains("prefill:"),
        "stderr is a pipe: no progress lines, got:\n{quiet}"
    );
    let loud = run(true);
    assert!(
        loud.contains("prefill: 1000 sets (1000 keys on 1 server(s))"),
        "{loud}"
    );
    let lines: Vec<&str> = loud.lines().filter(|l| l.starts_with("[")).collect();
    assert!(
        (1..=3).contains(&lines.len()),
        "about one line a second over 2.2 s: {loud}"
    );
    assert!(
        lines[0].contains("s/2s]") && lines[0].contains("req/s  total "),
        "{loud}"
    );
}
