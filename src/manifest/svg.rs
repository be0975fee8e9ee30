//! The report's chart: perplexity against size, one labelled point per
//! artifact, the reference's perplexity as a dashed line. A few lines of
//! SVG written by hand: deterministic text, no plotting crate.

use std::fmt::Write as _;

use super::report::{fmt_bytes, fmt_num, Report};

const W: f64 = 640.0;
const H: f64 = 400.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 30.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 60.0;

/// Escapes text for SVG.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// "Nice" tick values covering [lo, hi]: about five, steps of 1, 2 or 5
/// times a power of ten.
fn ticks(lo: f64, hi: f64) -> Vec<f64> {
    let span = (hi - lo).max(f64::EPSILON);
    let raw = span / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| span / s <= 6.0)
        .unwrap_or(10.0 * mag);
    let first = (lo / step).ceil() as i64;
    let last = (hi / step + 1e-9).floor() as i64;
    // Multiplying the step's integer count (not adding steps up) keeps
    // labels like 0.3 free of float drift.
    (first..=last)
        .map(|k| {
            let t = k as f64 * step;
            (t / mag).round() * mag
        })
        .collect()
}

/// Pads a range by 10% each side (or by 1 around a single value).
fn padded(lo: f64, hi: f64) -> (f64, f64) {
    if hi - lo < f64::EPSILON * hi.abs().max(1.0) {
        let d = (lo.abs() * 0.1).max(1e-3);
        return (lo - d, hi + d);
    }
    let d = (hi - lo) * 0.1;
    (lo - d, hi + d)
}

/// The chart for `report`.
pub fn chart(report: &Report) -> String {
    let points: Vec<(&str, f64, f64, bool)> = report
        .artifacts
        .iter()
        .filter_map(|a| {
            let ppl = a.verify.as_ref()?.measurements.ppl?;
            Some((a.name.as_str(), a.size? as f64, ppl, a.pass))
        })
        .collect();
    let reference = report.artifacts.iter().find_map(|a| {
        let m = &a.verify.as_ref()?.measurements;
        Some(m.ppl? / m.ppl_ratio.filter(|r| *r > 0.0)?)
    });
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="15">{}: perplexity against size</text>"#,
        W / 2.0,
        esc(&report.title)
    );
    if points.is_empty() {
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">no artifact has a measured perplexity</text>"#,
            W / 2.0,
            H / 2.0
        );
        s.push_str("</svg>\n");
        return s;
    }
    let (x_lo, x_hi) = padded(
        points.iter().map(|p| p.1).fold(f64::INFINITY, f64::min),
        points.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max),
    );
    let ys = points.iter().map(|p| p.2).chain(reference);
    let (y_lo, y_hi) = padded(
        ys.clone().fold(f64::INFINITY, f64::min),
        ys.fold(f64::NEG_INFINITY, f64::max),
    );
    let px = |x: f64| LEFT + (x - x_lo) / (x_hi - x_lo) * (W - LEFT - RIGHT);
    let py = |y: f64| H - BOTTOM - (y - y_lo) / (y_hi - y_lo) * (H - TOP - BOTTOM);
    let _ = writeln!(
        s,
        r##"<rect x="{LEFT}" y="{TOP}" width="{}" height="{}" fill="none" stroke="#888"/>"##,
        W - LEFT - RIGHT,
        H - TOP - BOTTOM
    );
    for t in ticks(x_lo, x_hi) {
        let x = px(t);
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{}" x2="{x:.1}" y2="{}" stroke="#888"/><text x="{x:.1}" y="{}" text-anchor="middle">{}</text>"##,
            H - BOTTOM,
            H - BOTTOM + 5.0,
            H - BOTTOM + 20.0,
            esc(&fmt_bytes(t.max(0.0) as u64))
        );
    }
    for t in ticks(y_lo, y_hi) {
        let y = py(t);
        let _ = writeln!(
            s,
            r##"<line x1="{}" y1="{y:.1}" x2="{LEFT}" y2="{y:.1}" stroke="#888"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            LEFT - 5.0,
            LEFT - 8.0,
            y + 4.0,
            fmt_num(t)
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">size on disk</text>"#,
        LEFT + (W - LEFT - RIGHT) / 2.0,
        H - 15.0
    );
    let _ = writeln!(
        s,
        r#"<text x="18" y="{}" text-anchor="middle" transform="rotate(-90 18 {})">perplexity (lower is better)</text>"#,
        TOP + (H - TOP - BOTTOM) / 2.0,
        TOP + (H - TOP - BOTTOM) / 2.0
    );
    if let Some(r) = reference {
        let y = py(r);
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#555" stroke-dasharray="6 4"/><text x="{}" y="{:.1}" text-anchor="end" fill="#555">reference {}</text>"##,
            W - RIGHT,
            W - RIGHT - 4.0,
            y - 5.0,
            fmt_num(r)
        );
    }
    for (name, x, y, pass) in &points {
        let color = if *pass { "#1a7f37" } else { "#cf222e" };
        let (cx, cy) = (px(*x), py(*y));
        let _ = writeln!(
            s,
            r#"<circle cx="{cx:.1}" cy="{cy:.1}" r="5" fill="{color}"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            cx + 8.0,
            cy - 8.0,
            esc(name)
        );
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_ticks() {
        assert_eq!(ticks(0.0, 10.0), [0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        assert_eq!(ticks(12.3, 14.9), [12.5, 13.0, 13.5, 14.0, 14.5]);
    }

    #[test]
    fn text_is_escaped() {
        assert_eq!(esc("a<b & \"c\""), "a&lt;b &amp; &quot;c&quot;");
    }
}
