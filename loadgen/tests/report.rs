//! `keel-loadgen report`: two real runs against memcached, their page rendered by a real headless
//! browser (Chromium), and the plots and the table checked in the DOM the browser built and laid
//! out, not only in the file's text. Bad inputs give an error that names the file.
//!
//! The browser test needs `chromium` on PATH (Debian: `apt-get install chromium`; .ci/run installs
//! it). Without it that one test says so on stderr and passes without checking: a developer box
//! need not carry a browser, CI always does.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Longest a headless browser may take to load and dump the page.
const BROWSER_LIMIT: Duration = Duration::from_secs(90);

fn find_browser() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    for dir in std::env::split_paths(&path) {
        for name in ["chromium", "chromium-browser", "google-chrome"] {
            let p = dir.join(name);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

/// Two short runs (closed loop with prefill, open loop at a fixed rate) and their report.
fn two_runs_and_report(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let m = Memcached::start();
    let addr = m.addr();
    let closed = dir.join("closed");
    let open = dir.join("open");
    run_ok(
        &[
            "run",
            "--server",
            &addr,
            "--out",
            closed.to_str().unwrap(),
            "--duration",
            "1200ms",
            "--connections",
            "4",
            "--pipeline",
            "8",
            "--keys",
            "2000",
            "--prefill",
        ],
        &closed,
    );
    run_ok(
        &[
            "run",
            "--server",
            &addr,
            "--out",
            open.to_str().unwrap(),
            "--duration",
            "1200ms",
            "--rate",
            "5000",
            "--keys",
            "2000",
        ],
        &open,
    );
    let html = dir.join("report.html");
    let (a, b) = (closed.join("summary.json"), open.join("summary.json"));
    let o = loadgen(
        &[
            "report",
            a.to_str().unwrap(),
            b.to_str().unwrap(),
            "-o",
            html.to_str().unwrap(),
        ],
        Duration::from_secs(30),
    );
    assert!(
        o.status.success(),
        "report failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    (a, b, html)
}

/// Runs in the page once it is laid out and writes what it found into `<pre id="check">`, which
/// `--dump-dom` then prints: the curves of each plot with their drawn length, the table's rows,
/// and every element that would fetch something.
const CHECK_SCRIPT: &str = r#"<script>
(function () {
  function curves(fig) {
    return Array.from(document.querySelectorAll('#' + fig + ' svg polyline.curve')).map(function (p) {
      var b = p.getBBox();
      return { label: p.getAttribute('data-label'), length: p.getTotalLength(), width: b.width, points: p.points.numberOfItems };
    });
  }
  var rows = Array.from(document.querySelectorAll('#comparison tbody tr')).map(function (r) {
    return { run: r.getAttribute('data-run'), ratios: Array.from(r.cells).map(function (c) {
      var span = c.querySelector('.r');
      return span ? span.textContent : null;
    }) };
  });
  var fetching = Array.from(document.querySelectorAll('[src],[href],link,iframe,object,embed,img')).length;
  var pre = document.createElement('pre');
  pre.id = 'check';
  pre.textContent = JSON.stringify({
    svgs: document.querySelectorAll('svg').length,
    latency: curves('latency'),
    throughput: curves('throughput'),
    rows: rows,
    fetching: fetching,
    scripts: document.scripts.length
  });
  document.body.appendChild(pre);
})();
</script>"#;

fn dump_dom(browser: &Path, page: &Path, dir: &Path) -> String {
    let dom = dir.join("dom.html");
    let err = dir.join("browser.stderr");
    let mut child = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-extensions",
            &format!("--user-data-dir={}", dir.join("profile").display()),
            "--dump-dom",
            &format!("file://{}", page.display()),
        ])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&dom).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .expect("start the browser");
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t0.elapsed() > BROWSER_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{} did not dump the page within {BROWSER_LIMIT:?}; stderr:\n{}",
                browser.display(),
                std::fs::read_to_string(&err).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = std::fs::read_to_string(&dom).unwrap();
    assert!(
        status.success() && !out.is_empty(),
        "{} failed ({status:?}); stderr:\n{}",
        browser.display(),
        std::fs::read_to_string(&err).unwrap_or_default()
    );
    out
}

#[test]
fn report_renders_in_a_real_browser_with_a_curve_per_run_and_a_row_per_run() {
    let Some(browser) = find_browser() else {
        eprintln!(
            "SKIPPED report_renders_in_a_real_browser...: no chromium on PATH \
             (apt-get install chromium; CI installs it in .ci/run)"
        );
        return;
    };
    let dir = out_dir("report-browser");
    std::fs::create_dir_all(&*dir).unwrap();
    let (_, _, html) = two_runs_and_report(&dir);
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(
        !page.contains("<script"),
        "the report itself carries no script"
    );
    // The check runs in a copy, so the report under test stays as written.
    let checked = dir.join("checked.html");
    std::fs::write(
        &checked,
        page.replace("</body>", &format!("{CHECK_SCRIPT}\n</body>")),
    )
    .unwrap();
    let dom = dump_dom(&browser, &checked, &dir);
    let json = dom
        .split("<pre id=\"check\">")
        .nth(1)
        .and_then(|s| s.split("</pre>").next())
        .unwrap_or_else(|| panic!("the check script did not run; DOM:\n{dom}"));
    let json = json
        .replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&");
    let c: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(c["svgs"], 2, "{c}");
    assert_eq!(c["fetching"], 0, "the page must fetch nothing: {c}");
    assert_eq!(c["scripts"], 1, "only the test's check script: {c}");
    for plot in ["latency", "throughput"] {
        let curves = c[plot].as_array().unwrap();
        let labels: Vec<&str> = curves
            .iter()
            .map(|k| k["label"].as_str().unwrap())
            .collect();
        assert_eq!(
            labels,
            ["closed (closed)", "open (open)"],
            "{plot}: one curve per run: {c}"
        );
        for k in curves {
            // Drawn across the plot, not a dot: the browser laid out several points of it.
            assert!(k["points"].as_u64().unwrap() >= 5, "{plot}: {k}");
            assert!(k["length"].as_f64().unwrap() > 100.0, "{plot}: {k}");
            assert!(k["width"].as_f64().unwrap() > 100.0, "{plot}: {k}");
        }
    }
    let rows = c["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{c}");
    assert_eq!(rows[0]["run"], "closed");
    assert_eq!(rows[1]["run"], "open");
    // The first run is the base: every ratio 1.00x (throughput, six percentiles, CPU). The open
    // run at 5000 req/s has a lower throughput than the unthrottled closed one.
    let ratios = |i: usize| -> Vec<String> {
        rows[i]["ratios"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect()
    };
    let (base, open) = (ratios(0), ratios(1));
    assert_eq!(base.len(), 8, "{base:?}");
    assert!(base.iter().all(|r| r == "1.00x"), "{base:?}");
    let throughput_ratio: f64 = open[0].trim_end_matches('x').parse().unwrap();
    assert!(
        throughput_ratio > 0.0 && throughput_ratio < 1.0,
        "open loop at 5000 req/s against an unthrottled closed loop: {open:?}"
    );
}

#[test]
fn bad_inputs_name_the_file() {
    let dir = out_dir("report-bad");
    std::fs::create_dir_all(&*dir).unwrap();
    let html = dir.join("r.html");
    let fail = |file: &Path, want: &str| {
        let o = loadgen(
            &[
                "report",
                file.to_str().unwrap(),
                "-o",
                html.to_str().unwrap(),
            ],
            Duration::from_secs(10),
        );
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert!(
            err.contains(file.to_str().unwrap()),
            "names the file: {err}"
        );
        assert!(err.contains(want), "{want:?} in {err}");
        assert!(!html.exists(), "nothing written on a bad input");
    };
    fail(&dir.join("missing.json"), "No such file");
    let not_json = dir.join("not-json.json");
    std::fs::write(&not_json, "hello").unwrap();
    fail(&not_json, "not a keel-loadgen summary.json (not JSON");
    let other = dir.join("other.json");
    std::fs::write(&other, r#"{"name": "something else"}"#).unwrap();
    fail(&other, "no format_version field");
    let future = dir.join("future.json");
    std::fs::write(&future, r#"{"format_version": 99}"#).unwrap();
    fail(
        &future,
        "summary format version 99; this keel-loadgen reads versions 1 to 2",
    );
    let broken = dir.join("broken.json");
    std::fs::write(&broken, r#"{"format_version": 2, "label": "x"}"#).unwrap();
    fail(&broken, "not a keel-loadgen summary.json (missing field");
}

#[test]
fn a_version_1_summary_is_still_read() {
    let m = Memcached::start();
    let dir = out_dir("report-v1");
    let out = dir.join("run");
    run_ok(
        &[
            "run",
            "--server",
            &m.addr(),
            "--out",
            out.to_str().unwrap(),
            "--duration",
            "1200ms",
        ],
        &out,
    );
    // What keel-loadgen wrote before version 2: no interval series.
    let mut s = summary(&out);
    assert_eq!(s["format_version"], 2);
    assert!(s["throughput_interval_ms"].as_u64().unwrap() > 0);
    let intervals: u64 = s["throughput_per_interval"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(
        intervals,
        u(&s, "requests"),
        "every completion in one interval"
    );
    let o = s.as_object_mut().unwrap();
    o.insert("format_version".into(), 1.into());
    o.remove("throughput_interval_ms");
    o.remove("throughput_per_interval");
    let v1 = dir.join("v1.json");
    std::fs::write(&v1, serde_json::to_string(&s).unwrap()).unwrap();
    let html = dir.join("r.html");
    let o = loadgen(
        &["report", v1.to_str().unwrap(), "-o", html.to_str().unwrap()],
        Duration::from_secs(10),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let page = std::fs::read_to_string(&html).unwrap();
    // One whole second of per-second throughput: a curve of one point in the throughput plot.
    assert_eq!(page.matches("<polyline class=\"curve\"").count(), 2);
    assert_eq!(page.matches("<tr data-run=").count(), 1);
}
