//! Plots in SVG, written by hand (a few dozen elements each) to keep the dependency tree small:
//! latency by percentile in the shape of the HdrHistogram plotter (x is the percentile on a log
//! scale of 1/(1-p): 0 %, 90 %, 99 %, 99.9 % ...; y is latency), and throughput over time. Each
//! curve is a `<polyline class="curve">` whose `data-label` names its series, so the report test
//! can find them in a browser's DOM.

use std::fmt::Write as _;

const W: f64 = 900.0;
const H: f64 = 540.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 30.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 60.0;
/// The plot area inside the margins.
const PW: f64 = W - LEFT - RIGHT;
const PH: f64 = H - TOP - BOTTOM;
/// Percentiles past 99.9999 % are drawn at 99.9999 %.
const X_DECADES_MAX: f64 = 6.0;
const COLORS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

pub struct Series {
    pub label: String,
    /// (percentile 0..=100, latency in microseconds)
    pub points: Vec<(f64, f64)>,
}

fn x_of(pct: f64) -> f64 {
    let q = (pct / 100.0).clamp(0.0, 1.0);
    if q >= 1.0 {
        return X_DECADES_MAX;
    }
    (1.0 / (1.0 - q)).log10().min(X_DECADES_MAX)
}

pub(crate) fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A "nice" axis maximum (1, 2 or 5 times a power of ten) at or above `v`.
fn nice_max(v: f64) -> f64 {
    if v <= 0.0 {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 5.0, 10.0] {
        if m * p >= v {
            return m * p;
        }
    }
    10.0 * p
}

/// Latency by percentile with a linear latency axis (latency.svg of one run).
pub fn svg(title: &str, series: &[Series]) -> String {
    latency_svg(title, series, false)
}

/// Latency by percentile; with `log_latency` the latency axis is logarithmic too (decades of
/// microseconds), so runs whose latencies differ by orders of magnitude stay readable together.
pub fn latency_svg(title: &str, series: &[Series], log_latency: bool) -> String {
    let max_us = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(0.0, f64::max);
    let min_us = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .filter(|&v| v > 0.0)
        .fold(f64::INFINITY, f64::min);
    // Milliseconds once the tail passes 2 ms, microseconds below.
    let (unit, div) = if max_us >= 2000.0 && !log_latency {
        ("ms", 1000.0)
    } else {
        ("us", 1.0)
    };
    let y_max = nice_max(max_us / div);
    // Log axis: whole decades from below the fastest point to above the slowest.
    let (dec_lo, dec_hi) = if min_us.is_finite() && max_us > 0.0 {
        let lo = min_us.log10().floor();
        (lo, max_us.log10().ceil().max(lo + 1.0))
    } else {
        (0.0, 1.0)
    };
    let x_decades = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| x_of(p.0)))
        .fold(2.0f64, f64::max)
        .ceil()
        .min(X_DECADES_MAX);
    let (pw, ph) = (PW, PH);
    let px = |x: f64| LEFT + x / x_decades * pw;
    let py = |y: f64| {
        if log_latency {
            let d = y.max(10f64.powf(dec_lo)).log10();
            TOP + ph - (d - dec_lo) / (dec_hi - dec_lo) * ph
        } else {
            TOP + ph - y / y_max * ph
        }
    };
    let mut o = open(title);
    // Grid and axes.
    for i in 0..=(x_decades as usize) {
        let x = px(i as f64);
        let label = match i {
            0 => "0%".to_string(),
            1 => "90%".to_string(),
            2 => "99%".to_string(),
            n => format!("99.{}%", "9".repeat(n - 2)),
        };
        x_tick(&mut o, x, &label);
    }
    let ticks: Vec<(f64, String)> = if log_latency {
        (dec_lo as i32..=dec_hi as i32)
            .map(|d| {
                let us = 10f64.powi(d);
                (us, fmt_decade(us))
            })
            .collect()
    } else {
        (0..=5)
            .map(|i| {
                let v = y_max * i as f64 / 5.0;
                (v, trim_num(v))
            })
            .collect()
    };
    for (v, text) in ticks {
        let y = py(v);
        y_tick(&mut o, y, &text);
    }
    let y_label = format!("latency ({})", if log_latency { "log scale" } else { unit });
    frame(&mut o, "percentile", &y_label);
    // Series.
    for (i, s) in series.iter().enumerate() {
        let mut pts = String::new();
        for &(p, us) in &s.points {
            let _ = write!(pts, "{:.1},{:.1} ", px(x_of(p)), py(us / div));
        }
        curve(&mut o, i, &s.label, &pts);
    }
    o.push_str("</svg>\n");
    o
}

/// A plot's document, background and title.
fn open(title: &str) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(o, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        o,
        r#"<text x="{}" y="25" text-anchor="middle" font-size="16">{}</text>"#,
        W / 2.0,
        esc(title)
    );
    o
}

/// A vertical grid line at `x` with its label under the plot.
fn x_tick(o: &mut String, x: f64, label: &str) {
    let _ = writeln!(
        o,
        r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" stroke="#ddd"/>"##,
        TOP + PH
    );
    let _ = writeln!(
        o,
        r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle">{label}</text>"#,
        TOP + PH + 18.0
    );
}

/// A horizontal grid line at `y` with its label left of the plot.
fn y_tick(o: &mut String, y: f64, label: &str) {
    let _ = writeln!(
        o,
        r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/>"##,
        LEFT + PW
    );
    let _ = writeln!(
        o,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{label}</text>"#,
        LEFT - 6.0,
        y + 4.0,
    );
}

/// The plot's border and its axis names.
fn frame(o: &mut String, x_label: &str, y_label: &str) {
    let _ = writeln!(
        o,
        r##"<rect x="{LEFT}" y="{TOP}" width="{PW}" height="{PH}" fill="none" stroke="#333"/>"##
    );
    let _ = writeln!(
        o,
        r#"<text x="{}" y="{}" text-anchor="middle">{x_label}</text>"#,
        LEFT + PW / 2.0,
        H - 15.0
    );
    let _ = writeln!(
        o,
        r#"<text x="20" y="{}" text-anchor="middle" transform="rotate(-90 20 {})">{y_label}</text>"#,
        TOP + PH / 2.0,
        TOP + PH / 2.0
    );
}

/// Series `i`'s curve through `pts` ("x,y x,y ..."), and its legend entry.
fn curve(o: &mut String, i: usize, label: &str, pts: &str) {
    let color = COLORS[i % COLORS.len()];
    let _ = writeln!(
        o,
        r#"<polyline class="curve" data-label="{}" fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
        esc(label),
        pts.trim_end()
    );
    legend(o, i, color, label);
}

fn legend(o: &mut String, i: usize, color: &str, label: &str) {
    let ly = TOP + 18.0 + 18.0 * i as f64;
    let _ = writeln!(
        o,
        r#"<line x1="{:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{color}" stroke-width="3"/>"#,
        LEFT + 12.0,
        LEFT + 36.0
    );
    let _ = writeln!(
        o,
        r#"<text x="{:.1}" y="{:.1}">{}</text>"#,
        LEFT + 42.0,
        ly + 4.0,
        esc(label)
    );
}

/// Throughput over time: one curve per series of (seconds since the measured phase began,
/// requests/s) points, both axes linear from zero.
pub fn throughput_svg(title: &str, series: &[Series]) -> String {
    let t_max = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .fold(0.0, f64::max);
    let r_max = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(0.0, f64::max);
    let x_max = nice_max(t_max);
    let y_max = nice_max(r_max);
    let (pw, ph) = (PW, PH);
    let px = |x: f64| LEFT + x / x_max * pw;
    let py = |y: f64| TOP + ph - y / y_max * ph;
    let mut o = open(title);
    for i in 0..=5 {
        let (xv, yv) = (x_max * i as f64 / 5.0, y_max * i as f64 / 5.0);
        let (x, y) = (px(xv), py(yv));
        x_tick(&mut o, x, &trim_num(xv));
        y_tick(&mut o, y, &trim_num(yv));
    }
    frame(
        &mut o,
        "seconds since the measured phase began",
        "requests/s",
    );
    for (i, s) in series.iter().enumerate() {
        let mut pts = String::new();
        for &(t, r) in &s.points {
            let _ = write!(pts, "{:.1},{:.1} ", px(t), py(r));
        }
        curve(&mut o, i, &s.label, &pts);
    }
    o.push_str("</svg>\n");
    o
}

/// A decade of microseconds as a tick label: 1us, 10us, 100us, 1ms, ..., 1s, 10s.
fn fmt_decade(us: f64) -> String {
    if us >= 1e6 {
        format!("{}s", trim_num(us / 1e6))
    } else if us >= 1e3 {
        format!("{}ms", trim_num(us / 1e3))
    } else {
        format!("{}us", trim_num(us))
    }
}

fn trim_num(v: f64) -> String {
    let s = format!("{v:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn svg_has_one_polyline_per_series_and_percentile_ticks() {
        let s = |label: &str, k: f64| Series {
            label: label.into(),
            points: vec![
                (0.0, 10.0 * k),
                (90.0, 20.0 * k),
                (99.0, 50.0 * k),
                (99.9, 900.0 * k),
                (100.0, 3000.0 * k),
            ],
        };
        let out = svg("t <1>", &[s("a", 1.0), s("b", 2.0)]);
        assert!(out.starts_with("<svg"));
        assert!(out.trim_end().ends_with("</svg>"));
        assert_eq!(out.matches("<polyline").count(), 2);
        assert!(out.contains(">99.9%<"));
        assert!(out.contains(">99%<"));
        assert!(out.contains("t &lt;1&gt;"));
        assert!(out.contains("latency (ms)"));
        assert_eq!(nice_max(3.2), 5.0);
        assert_eq!(nice_max(10.0), 10.0);
        assert!((x_of(99.0) - 2.0).abs() < 1e-9);
        // Log latency axis: decades from 10 us (below the fastest point) to 10 ms.
        let log = latency_svg("t", &[s("a", 1.0), s("b", 2.0)], true);
        for tick in [">10us<", ">100us<", ">1ms<", ">10ms<"] {
            assert!(log.contains(tick), "{tick} missing");
        }
        assert!(!log.contains(">1us<") && !log.contains(">100ms<"));
        assert!(log.contains("latency (log scale)"));
    }
}
