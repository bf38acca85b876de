//! The throughput chart: attempts started, tasks succeeded and attempts
//! failed per second over the last 15 minutes, as inline SVG (one point
//! per second), with its legend.

use std::fmt::Write as _;

use crate::throughput::Second;

use super::html::count;

const WIDTH: usize = 900;
const HEIGHT: u32 = 180;
/// Room left of the plot for the scale, and below it for the time axis.
const LEFT: usize = 44;
const BOTTOM: u32 = 22;

/// How a series reads its value from a second.
type Value = fn(&Second) -> u32;

/// The series: (label, CSS class, value of a second).
const SERIES: &[(&str, &str, Value)] = &[
    ("started", "started", |s| s.started),
    ("succeeded", "succeeded", |s| s.succeeded),
    ("failed", "failed", |s| s.failed),
];

/// The smallest "round" number (1, 2 or 5 times a power of ten) at least `n`.
fn round_up(n: u32) -> u32 {
    let mut step = 1u32;
    loop {
        for m in [1, 2, 5] {
            if let Some(v) = step.checked_mul(m)
                && v >= n
            {
                return v;
            }
        }
        match step.checked_mul(10) {
            Some(s) => step = s,
            None => return u32::MAX,
        }
    }
}

/// The chart of `seconds` (oldest first, one per second) and its legend.
pub(crate) fn throughput(seconds: &[Second]) -> String {
    let peak = seconds
        .iter()
        .flat_map(|s| SERIES.iter().map(move |(_, _, f)| f(s)))
        .max()
        .unwrap_or(0);
    let top = round_up(peak.max(1));
    let plot_h = HEIGHT - BOTTOM;
    let n = seconds.len().max(1);
    let mut svg = String::new();
    let _ = write!(
        svg,
        "<svg class=chart viewBox=\"0 0 {w} {HEIGHT}\" role=img \
         aria-label=\"Tasks per second over the last 15 minutes\" preserveAspectRatio=none>",
        w = LEFT + WIDTH
    );
    // Grid: the top, the middle and the base line, with their values.
    for (frac, value) in [(0.0, top), (0.5, top / 2), (1.0, 0)] {
        let y = 4.0 + frac * f64::from(plot_h - 4);
        let _ = write!(
            svg,
            "<line class=grid x1={LEFT} x2={x2} y1={y:.1} y2={y:.1} />\
             <text class=axis x={tx} y={ty:.1} text-anchor=end>{value}/s</text>",
            x2 = LEFT + WIDTH,
            tx = LEFT - 6,
            ty = y + 4.0,
        );
    }
    for (i, label) in ["−15 min", "−10 min", "−5 min", "now"].iter().enumerate() {
        let x = LEFT + i * WIDTH / 3;
        let anchor = match i {
            0 => "start",
            3 => "end",
            _ => "middle",
        };
        let _ = write!(
            svg,
            "<text class=axis x={x} y={y} text-anchor={anchor}>{label}</text>",
            y = HEIGHT - 6
        );
    }
    for (_, class, value) in SERIES {
        let _ = write!(svg, "<polyline class=\"line {class}\" points=\"");
        for (i, s) in seconds.iter().enumerate() {
            let x = LEFT + i * WIDTH / n;
            let v = f64::from(value(s).min(top)) / f64::from(top);
            let y = 4.0 + (1.0 - v) * f64::from(plot_h - 4);
            let _ = write!(svg, "{x},{y:.1} ");
        }
        svg.push_str("\" />");
    }
    svg.push_str("</svg>");

    // The legend: each series' total over the window and over the last
    // minute, per second.
    let mut legend = String::from("<ul class=legend>");
    for (label, class, value) in SERIES {
        let total: u64 = seconds.iter().map(|s| u64::from(value(s))).sum();
        let minute: u64 = seconds
            .iter()
            .rev()
            .take(60)
            .map(|s| u64::from(value(s)))
            .sum();
        let _ = write!(
            legend,
            "<li><span class=\"swatch {class}\"></span>{label} <b>{}</b> in 15 min \
             <span class=muted>· {:.1}/s over the last minute</span></li>",
            count(total),
            minute as f64 / 60.0
        );
    }
    legend.push_str("</ul>");
    format!("<figure class=chart-box>{svg}{legend}</figure>")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scale_is_round_and_covers_the_peak() {
        assert_eq!(round_up(1), 1);
        assert_eq!(round_up(3), 5);
        assert_eq!(round_up(7), 10);
        assert_eq!(round_up(11), 20);
        assert_eq!(round_up(4_001), 5_000);
        assert_eq!(round_up(u32::MAX), u32::MAX);
    }

    #[test]
    fn the_chart_draws_every_second_of_each_series() {
        let mut seconds = vec![Second::default(); 900];
        seconds[899].succeeded = 7;
        seconds[10].failed = 2;
        let html = throughput(&seconds);
        assert_eq!(html.matches("<polyline").count(), 3);
        assert!(html.contains(">10/s<"), "{html}");
        assert!(html.contains("succeeded <b>7</b>"), "{html}");
        // 900 points per line.
        let first = html.split("points=\"").nth(1).unwrap();
        let points = first.split('"').next().unwrap();
        assert_eq!(points.split_whitespace().count(), 900);
    }
}
