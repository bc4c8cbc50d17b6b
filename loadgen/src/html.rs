//! `keel-loadgen report`: several runs' summaries on one self-contained HTML page. It fetches
//! nothing (the plots are inline SVG, the style an inline `<style>`, no script), so it opens the
//! same from a CI artifact, a mail attachment or a machine without network.
//!
//! The page: latency by percentile (log percentile and latency axes, one curve per run), throughput over time
//! (one curve per run), and a comparison table with throughput, percentiles and loadgen CPU per
//! request as ratios against the first run, then each run's workload and notes.

use std::fmt::Write as _;

use crate::plot::{self, esc};
use crate::report::{Summary, PERCENTILES};

/// One run on the page: where its summary came from and what it says.
pub struct Run {
    pub file: String,
    pub summary: Summary,
}

fn label(r: &Run) -> String {
    format!("{} ({})", r.summary.label, r.summary.mode)
}

fn fmt_us(us: f64) -> String {
    if us >= 1e6 {
        format!("{:.2} s", us / 1e6)
    } else if us >= 1e3 {
        format!("{:.2} ms", us / 1e3)
    } else {
        format!("{us:.1} us")
    }
}

/// `x / base` to two decimals, or "-" when the base is zero (nothing to compare with).
fn ratio(base: f64, x: f64) -> String {
    if base > 0.0 && x.is_finite() {
        format!("{:.2}x", x / base)
    } else {
        "-".into()
    }
}

const STYLE: &str = "body{font-family:sans-serif;margin:2em;color:#222}\
table{border-collapse:collapse;margin:1em 0}\
th,td{border:1px solid #bbb;padding:4px 8px;text-align:right;white-space:nowrap}\
th:first-child,td:first-child{text-align:left}\
td .r{color:#666;font-size:85%;margin-left:.4em}\
figure{margin:1em 0}dt{font-weight:bold}dd{margin:0 0 .5em 1.5em}";

/// The whole page for `runs` (at least one; ratios are against `runs[0]`).
pub fn page(runs: &[Run]) -> String {
    assert!(!runs.is_empty(), "a report needs at least one run");
    let mut o = String::new();
    o.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    let _ = writeln!(
        o,
        "<title>keel-loadgen report: {}</title>",
        esc(&names(runs))
    );
    let _ = writeln!(o, "<style>{STYLE}</style>\n</head>\n<body>");
    let _ = writeln!(o, "<h1>keel-loadgen report</h1>");
    let _ = writeln!(
        o,
        "<p>{} run(s); ratios are against the first, <b>{}</b>.</p>",
        runs.len(),
        esc(&label(&runs[0]))
    );

    let latency: Vec<plot::Series> = runs
        .iter()
        .map(|r| plot::Series {
            label: label(r),
            points: r
                .summary
                .all()
                .map(|a| a.latency.curve.clone())
                .unwrap_or_default(),
        })
        .collect();
    let _ = writeln!(o, "<h2>Latency by percentile</h2>\n<figure id=\"latency\">");
    o.push_str(&plot::latency_svg(
        "latency by percentile (all commands)",
        &latency,
        true,
    ));
    o.push_str("</figure>\n");

    let throughput: Vec<plot::Series> = runs
        .iter()
        .map(|r| plot::Series {
            label: label(r),
            points: r.summary.throughput_over_time(),
        })
        .collect();
    let _ = writeln!(
        o,
        "<h2>Throughput over time</h2>\n<figure id=\"throughput\">"
    );
    o.push_str(&plot::throughput_svg("throughput over time", &throughput));
    o.push_str("</figure>\n");

    comparison(&mut o, runs);
    details(&mut o, runs);
    o.push_str("</body>\n</html>\n");
    o
}

fn names(runs: &[Run]) -> String {
    runs.iter()
        .map(|r| r.summary.label.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn comparison(o: &mut String, runs: &[Run]) {
    let base = &runs[0].summary;
    let _ = writeln!(
        o,
        "<h2>Comparison</h2>\n<table id=\"comparison\">\n<thead><tr>"
    );
    o.push_str("<th>run</th><th>requests</th><th>throughput req/s</th>");
    for (name, _) in PERCENTILES {
        let _ = write!(o, "<th>{name}</th>");
    }
    o.push_str("<th>loadgen CPU ns/req</th><th>errors</th><th>timeouts</th><th>mismatches</th>");
    o.push_str("</tr></thead>\n<tbody>\n");
    let all = |s: &Summary, p: &str| s.all().map(|a| a.latency.get(p)).unwrap_or(f64::NAN);
    for r in runs {
        let s = &r.summary;
        let _ = write!(
            o,
            "<tr data-run=\"{}\"><td>{}</td><td>{}</td>",
            esc(&s.label),
            esc(&label(r)),
            s.requests
        );
        let _ = write!(
            o,
            "<td>{:.0}<span class=\"r\">{}</span></td>",
            s.throughput_rps,
            ratio(base.throughput_rps, s.throughput_rps)
        );
        for (p, _) in PERCENTILES {
            let v = all(s, p);
            let _ = write!(
                o,
                "<td>{}<span class=\"r\">{}</span></td>",
                fmt_us(v),
                ratio(all(base, p), v)
            );
        }
        let _ = write!(
            o,
            "<td>{:.0}<span class=\"r\">{}</span></td>",
            s.cpu.ns_per_request,
            ratio(base.cpu.ns_per_request, s.cpu.ns_per_request)
        );
        let _ = writeln!(
            o,
            "<td>{}</td><td>{}</td><td>{}</td></tr>",
            s.errors, s.timeouts, s.mismatches
        );
    }
    o.push_str("</tbody>\n</table>\n");
}

fn details(o: &mut String, runs: &[Run]) {
    let _ = writeln!(o, "<h2>Runs</h2>");
    for r in runs {
        let s = &r.summary;
        let _ = writeln!(
            o,
            "<h3>{}</h3>\n<p>{}: {} loop, {:.1} s measured, {}{}</p>\n<dl>",
            esc(&label(r)),
            esc(&r.file),
            esc(&s.mode),
            s.measured_s,
            esc(&s.tool),
            s.target_rate
                .map(|t| format!(", target {t:.0} req/s"))
                .unwrap_or_default()
        );
        let workload: Vec<String> = s.workload.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let _ = writeln!(o, "<dt>workload</dt><dd>{}</dd>", esc(&workload.join(" ")));
        for n in &s.notes {
            let _ = writeln!(o, "<dt>note</dt><dd>{}</dd>", esc(n));
        }
        o.push_str("</dl>\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{CommandSummary, Cpu, Latency};
    use std::collections::BTreeMap;

    fn summary(label: &str, k: f64) -> Summary {
        let lat = Latency {
            count: 100,
            mean_us: 10.0 * k,
            p50_us: 10.0 * k,
            p90_us: 20.0 * k,
            p99_us: 40.0 * k,
            p999_us: 80.0 * k,
            p9999_us: 90.0 * k,
            max_us: 100.0 * k,
            curve: vec![
                (0.0, 5.0 * k),
                (50.0, 10.0 * k),
                (99.0, 40.0 * k),
                (100.0, 100.0 * k),
            ],
        };
        let mut commands = BTreeMap::new();
        commands.insert(
            "all".to_string(),
            CommandSummary {
                requests: 100,
                hits: 100,
                misses: 0,
                errors: 0,
                latency: lat,
            },
        );
        Summary {
            format_version: crate::report::SUMMARY_FORMAT_VERSION,
            tool: "keel-loadgen test".into(),
            label: label.into(),
            mode: "closed".into(),
            target_rate: None,
            workload: BTreeMap::from([("mix".to_string(), "get=1".to_string())]),
            measured_s: 1.0,
            requests: 100,
            throughput_rps: 1000.0 / k,
            throughput_per_second: vec![100],
            throughput_interval_ms: 100,
            throughput_per_interval: vec![10; 11],
            hits: 100,
            misses: 0,
            errors: 0,
            timeouts: 0,
            unsent: 0,
            values_checked: 100,
            mismatches: 0,
            mismatch_examples: vec![],
            error_examples: vec![],
            connection_errors: vec![],
            prefill: None,
            cpu: Cpu {
                user_s: 0.1,
                system_s: 0.1,
                ns_per_request: 2000.0 * k,
            },
            commands,
            service_latency: None,
            send_lag: None,
            notes: vec!["a <note> & more".into()],
        }
    }

    #[test]
    fn page_has_both_plots_a_row_per_run_and_ratios_against_the_first() {
        let runs = vec![
            Run {
                file: "a/summary.json".into(),
                summary: summary("a<1>", 1.0),
            },
            Run {
                file: "b/summary.json".into(),
                summary: summary("b", 2.0),
            },
        ];
        let html = page(&runs);
        assert!(html.starts_with("<!DOCTYPE html>"));
        // Self-contained: nothing to fetch.
        for fetch in ["src=", "href=", "@import", "url("] {
            assert!(!html.contains(fetch), "{fetch} in the page");
        }
        assert_eq!(html.matches("<svg").count(), 2);
        assert_eq!(html.matches("<polyline class=\"curve\"").count(), 4);
        assert_eq!(html.matches("<tr data-run=").count(), 2);
        // The second run: half the throughput, twice the latency and CPU.
        assert!(html.contains("500<span class=\"r\">0.50x</span>"));
        assert!(html.contains("40.0 us<span class=\"r\">1.00x</span>"));
        assert!(html.contains("80.0 us<span class=\"r\">2.00x</span>"));
        assert!(html.contains("4000<span class=\"r\">2.00x</span>"));
        // Labels and notes are escaped.
        assert!(html.contains("a&lt;1&gt;"));
        assert!(html.contains("a &lt;note&gt; &amp; more"));
        assert!(!html.contains("<1>"));
        // Ten whole 100 ms intervals of 10 completions: 100 req/s each; the partial one left out.
        let t = runs[0].summary.throughput_over_time();
        assert_eq!(t.len(), 10);
        assert!((t[0].0 - 0.1).abs() < 1e-9 && (t[0].1 - 100.0).abs() < 1e-9);
    }

    #[test]
    fn version_1_summaries_plot_their_per_second_throughput() {
        let mut s = summary("old", 1.0);
        s.format_version = 1;
        s.throughput_interval_ms = 0;
        s.throughput_per_interval.clear();
        s.throughput_per_second = vec![500, 700, 20];
        assert_eq!(s.throughput_over_time(), vec![(1.0, 500.0), (2.0, 700.0)]);
    }
}
